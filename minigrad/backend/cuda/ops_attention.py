"""Host side of the attention family (kernels/flash_attention_tf32.cu,
flash_attention.cu, attention_tc.cu).

Flash attention (f32) runs on tensor cores in error-compensated 3xTF32
(flash_attention_tf32.cu: f32-level accuracy, ~1e-6 relative on the products) for head
dims D <= 128, and on the plain-FFMA kernels of flash_attention.cu for 128 < D <= 256
(or everywhere when the env MINIGRAD_FLASH_TF32=0, or `TF32 = False` here, e.g. to
compare the two). Plain 1xTF32 is never used.

The files template their kernels on a padded head dim DP in {32, 64, 128(, 256)} (the
smallest DP >= D); each DP is compiled on first use only (-DFA3_ONLY_DP / -DFA_ONLY_DP /
-DATC_ONLY_DP), which keeps NVRTC's time per compile short. Grids, block sizes and the
dynamic shared-memory bytes below are the launch tables of the kernel files' headers.
Inputs are made dense [B, S, D] (B = all leading dims); every op is one launch for
all B slices (the backward: preprocess, then the dK/dV pass and, beside it on the
runtime's side stream, the dQ pass). The non-causal 3xTF32 forward and dQ pass may run
the tiles of a partly filled last wave as key ranges plus a merge (_tail_split). Each
pass takes the kernel that fits the card's shared memory per block (3xTF32, else FFMA,
else a clear error: _kernel_choice).

Attention dropout (dropout_p > 0, a seed): the `_dropout` kernels of the same file, which
take one struct fa::DropArgs after the usual arguments (the 14 Philox round keys of the
seed, the keep threshold, f32 1/(1-p): 16 words "I"*15 + "f"); they are compiled with
-DFA_DROPOUT=1 / -DFA3_DROPOUT=1 (the dropout kernels only), the others with =0.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ...dtype import float32
from . import runtime

DPS = (32, 64, 128, 256)
# flash: dp -> (key tile, bytes) of the forward; bytes of dq; (key tile, bytes) of dkdv
FWD = {32: (64, 44032), 64: (64, 68608), 128: (32, 76288), 256: (32, 141824)}
DQ = {32: 54272, 64: 61440, 128: 110592, 256: 171520}
DKDV = {32: (64, 46080), 64: (64, 104448), 128: (32, 76800), 256: (32, 142336)}
# attention_tc: dp -> (bytes plain, bytes split)
ATC = {32: (25600, 23552), 64: (46080, 41984), 128: (87040, 78848), 256: (101376, 84992)}
ROWS = 64           # query rows per block (fwd, dq, attention_tc; split: 32)
# flash_attention_tf32.cu (3xTF32 tensor cores, D <= 128): (dp, warps per block) -> dynamic
# shared-memory bytes of (fwd, lse, dq, dkdv); a block has 32*NW threads and owns 16*NW query
# rows (fwd, lse, dq) or keys (dkdv). d128 has NW = 8 only.
TF32 = os.environ.get("MINIGRAD_FLASH_TF32", "1") != "0"
T_SMEM = {(32, 4): (46080, 27648, 55296, 56320), (32, 8): (55296, 36864, 73728, 74752),
          (64, 4): (87040, 52224, 104448, 105472), (64, 8): (104448, 69632, 139264, 140288),
          (128, 8): (202752, 135168, 202752, 203264)}
FWD_KEYS = 64       # key tile of the tf32 forward (FWD_BC)
DQ_KEYS = {32: 64, 64: 64, 128: 32}     # key tile of the tf32 dQ pass (BCQ)
FORCE_NW = None     # tests/benchmarks: 4 or 8 forces the block size where both exist
CONCURRENT_DQ = True    # the backward's dQ pass beside dK/dV (False: after it; for A/B runs)
TAIL_SPLIT = True       # the non-causal tf32 forward's and dQ pass's last wave split
                        # (False: none; for A/B runs)
MAX_PARTS = 8           # flash_tf32_merge's FA3_MAX_PARTS


def _dp(d):
    return next(p for p in DPS if p >= d)


def _fn(be, file, entry, fmt, smem, defines):
    fn = be.function(file, entry, fmt, defines)
    if smem > 48 * 1024 and not getattr(fn, "mg_smem_raised", False):
        runtime.set_max_dynamic_shared(fn, smem)
        fn.mg_smem_raised = True
    return fn


def _scale(d):
    return float(np.float32(1 / math.sqrt(d)))


def _drop(dropout_p, seed):
    """(entry-name suffix, extra argument format, extra arguments, dropout flag 0/1)."""
    if not dropout_p:
        return "", "", [], 0
    from ..reference import dropout_threshold, philox7_round_keys
    keys = [word for pair in philox7_round_keys(seed) for word in pair]
    return ("_dropout", "I" * 15 + "f",
            keys + [dropout_threshold(dropout_p), float(np.float32(1 / (1 - dropout_p)))], 1)


def _redrawn(args, dropout_p, seed):
    """While mg.jit captures a dropout launch: replay arguments whose seed is drawn anew
    at each replay (`args` without the dropout words)."""
    cap = runtime.capture
    if not dropout_p or cap is None:
        return None
    return lambda: args + _drop(dropout_p, cap.flash_seed(seed))[2]


def _tf32(d):
    """True when head dim d runs on the 3xTF32 tensor-core kernels (where they fit)."""
    return TF32 and d <= 128


def _fits(*nbytes):
    """Kernels asking these dynamic shared-memory bytes per block run on this GPU (sm_90
    allows 227 KB, sm_80 163 KB, sm_86 / sm_89 99 KB: the d128 3xTF32 kernels need 198 KB,
    so smaller cards take the FFMA kernels where those fit)."""
    return max(nbytes) <= runtime.max_shared_per_block


def _kernel_choice(d, s, b, backward=False, causal=False):
    """Which kernels a pass at head dim d runs on this card: the 3xTF32 ones' warps per block
    (the host rule _nw, or 4 where its choice does not fit), 0 for the FFMA ones, None where
    neither fits. backward: the dQ and dK/dV passes together."""
    dp = _dp(d)
    if _tf32(d):
        for nw in (_nw(dp, s, b, backward, causal), 4):
            if (dp, nw) in T_SMEM and _fits(*T_SMEM[dp, nw][2:] if backward else
                                            T_SMEM[dp, nw][:1]):
                return nw
    return 0 if _fits(*(DQ[dp], DKDV[dp][1]) if backward else (FWD[dp][1],)) else None


def flash_fits(d):
    """The flash ops' forward and backward at head dim d have kernels that fit this card
    (else they raise _no_kernel's error): what nn.attention's impl="auto" asks first."""
    return _kernel_choice(d, 1, 1) is not None and \
        _kernel_choice(d, 1, 1, backward=True) is not None


def _no_kernel(op, d, what, need):
    raise RuntimeError(
        f"{op}: no flash-attention kernel for head dim D={d} fits this GPU: the {what} "
        f"needs {need} bytes of shared memory per block, {runtime.name} ({runtime.arch}) "
        f"allows {runtime.max_shared_per_block}. CausalSelfAttention(impl='naive') (composed "
        f"ops) runs on any GPU.")


def _nw(dp, s, b, backward=False, causal=False):
    """Warps per block of the tf32 kernels: 8 for d128 (its only instance); for d32/d64 the
    forward takes 4, the backward 8 when causal and blocks of 128 rows still give two waves
    (ceil(S/128)*B >= 2*SMs), else 4 (H200, notes_attention.md run 4: 4 warps were as fast or
    faster everywhere except the causal dq / dkdv passes of large grids, 9-18 % faster with 8)."""
    if dp == 128:
        return 8
    if FORCE_NW in (4, 8):
        return FORCE_NW
    big = math.ceil(s / 128) * b >= 2 * runtime.multiprocessors
    return 8 if backward and causal and big else 4


def _flash_fn(be, entry, fmt, smem, dp, drop):
    """A kernel of head-dim class dp: flash_attention_tf32.cu for the flash_tf32_* entries,
    flash_attention.cu for the others (each compiled with or without the dropout kernels)."""
    if entry.startswith("flash_tf32"):
        return _fn(be, "flash_attention_tf32.cu", entry, fmt, smem,
                   {"FA3_ONLY_DP": dp, "FA3_DROPOUT": drop})
    return _fn(be, "flash_attention.cu", entry, fmt, smem, {"FA_ONLY_DP": dp, "FA_DROPOUT": drop})


def _tail_split(tiles, slots, key_tiles):
    """(first, parts): how the non-causal tf32 forward or dQ pass runs `tiles` equal query
    tiles on `slots` = SMs x blocks per SM. Tiles from `first` on each run as `parts` blocks
    over key ranges, which flash_tf32_merge combines; parts = 1: no split.

    Why: the grid's last wave holds `tail` = tiles mod slots tiles and the rest of the card
    waits for them (64 x 4096 x 128 on 132 SMs: 68 tiles, 64 SMs idle for a tile's time).
    In parts, that wave takes ceil(tail·p / slots) rounds of 1/p + c tile-times, where
    c = 2 / key_tiles is a part's own cost (its Q load, pipeline fill and stores, about two
    key tiles). The best p is used when it saves at least 15 % of a wave; a part keeps at
    least 4 key tiles."""
    full, tail = divmod(tiles, slots)
    if not full or not tail:
        return tiles, 1
    cost, parts = 0.85, 1
    for p in range(2, min(MAX_PARTS, key_tiles // 4) + 1):
        t = math.ceil(tail * p / slots) * (1 / p + 2 / key_tiles)
        if t < cost:
            cost, parts = t, p
    return (tiles - tail, parts) if parts > 1 else (tiles, 1)


class _Split:
    """The tail split of one launch: `grid`, the kernel's extra arguments `args` (none where
    the kernel takes no split: causal or FFMA), the parts' buffers, and `merge(out, lse)`
    queuing flash_tf32_merge. with_l: the ranges also write their log-sum-exps and are
    merged by them (the forward); else their partial sums are added (dQ)."""

    def __init__(self, be, fn, nt, smem, tiles, rows, d, key_tiles, takes_split, with_l, drop):
        self.be, self.rows, self.d, self.drop, self.first, self.parts = be, rows, d, drop, tiles, 1
        if takes_split and TAIL_SPLIT:
            slots = runtime.multiprocessors * runtime.blocks_per_sm(fn, nt, smem)
            self.first, self.parts = _tail_split(tiles, slots, key_tiles)
        self.ntail = tiles - self.first
        self.grid = self.first + self.parts * self.ntail
        self.args = [tiles, 1, 0] + [0] * with_l if takes_split else []
        if self.parts > 1:      # buffers of the key ranges' outputs (and log-sum-exps)
            n = self.parts * self.ntail * rows
            self.part_o = be.empty((n, d), float32)
            self.part_l = be.empty((n,), float32) if with_l else None
            self.args = [self.first, self.parts, self.part_o.ptr] + \
                ([self.part_l.ptr] if with_l else [])

    def merge(self, out, lse=None, side=False):
        if self.parts > 1:
            fn = _flash_fn(self.be, "flash_tf32_merge", "PPPPiiiiii", 0, _dp(self.d), self.drop)
            part_l = self.part_l.ptr if self.part_l is not None else 0
            runtime.launch(fn, math.ceil(self.ntail * self.rows / 8), 256,
                           [self.part_o.ptr, part_l, out.ptr, lse.ptr if lse is not None else 0,
                            out.shape[-2], self.d, self.rows, self.first, self.ntail,
                            self.parts], side=side)


def flash_forward(be, q, k, v, causal=False, with_stats=False, dropout_p=0.0, seed=None):
    q, k, v = be._dense(q), be._dense(k), be._dense(v)
    *lead, s, d = q.shape
    b = math.prod(lead)
    out = be.empty(q.shape, float32)
    lse = be.empty(q.shape[:-1], float32) if with_stats else None
    if out.size:
        dp = _dp(d)
        c = "_causal" if causal else ""
        sfx, dfmt, dargs, drop = _drop(dropout_p, seed)
        args = [q.ptr, k.ptr, v.ptr, out.ptr, lse.ptr if lse is not None else 0,
                b, s, d, _scale(d)]
        nw = _kernel_choice(d, s, b)
        if nw is None:
            _no_kernel("attention_flash", d, "forward", FWD[dp][1])
        tiled = bool(nw) and not causal      # the kernels that take a tail split
        if nw:
            nt, rows, smem = 32 * nw, 16 * nw, T_SMEM[dp, nw][0]
            name = f"flash_tf32_fwd{c}{sfx}_d{dp}_w{nw}"
        else:
            nt, rows, smem = 128, ROWS, FWD[dp][1]
            name = f"flash_attention_fwd{c}{sfx}_d{dp}"
        fn = _flash_fn(be, name, "PPPPPiiif" + ("iiPP" if tiled else "") + dfmt, smem, dp, drop)
        tiles = math.ceil(s / rows) * b
        split = _Split(be, fn, nt, smem, tiles, rows, d, math.ceil(s / FWD_KEYS), tiled, True,
                       drop)
        runtime.launch(fn, split.grid, nt, args + split.args + dargs, smem,
                       _redrawn(args + split.args, dropout_p, seed))
        split.merge(out, lse)
    return (out, lse) if with_stats else out


def flash_backward(be, q, k, v, o, do, lse, causal=False, dropout_p=0.0, seed=None):
    q, k, v, o, do, lse = (be._dense(x) for x in (q, k, v, o, do, lse))
    *lead, s, d = q.shape
    b = math.prod(lead)
    dq, dk, dv = (be.empty(q.shape, float32) for _ in range(3))
    if not dq.size:
        return dq, dk, dv
    dp, c, scale = _dp(d), "_causal" if causal else "", _scale(d)
    dd = be.empty(q.shape[:-1], float32)
    sfx, dfmt, dargs, drop = _drop(dropout_p, seed)
    nw = _kernel_choice(d, s, b, backward=True, causal=causal)
    if nw is None:
        _no_kernel("attention_flash backward", d, "dK/dV or dQ pass", max(DQ[dp], DKDV[dp][1]))
    if nw:
        pfx, w = "flash_tf32", f"_w{nw}"
        kv_nt, kv_rows, kv_smem = 32 * nw, 16 * nw, T_SMEM[dp, nw][3]
        dq_nt, dq_rows, dq_smem = 32 * nw, 16 * nw, T_SMEM[dp, nw][2]
    else:
        pfx, w, (kv_nt, kv_rows, kv_smem) = "flash_attention", "", (128,) + DKDV[dp]
        dq_nt, dq_rows, dq_smem = 128, ROWS, DQ[dp]
    tiled = bool(nw) and not causal          # the dQ kernels that take a tail split
    dq_fn = _flash_fn(be, f"{pfx}_bwd_dq{c}{sfx}_d{dp}{w}", "PPPPPPPiiif" + "iiP" * tiled + dfmt,
                      dq_smem, dp, drop)
    # (its buffers are allocated before the fork: the side stream's work is ordered after
    # what the main stream queued before it, a poisoning fill included)
    split = _Split(be, dq_fn, dq_nt, dq_smem, math.ceil(s / dq_rows) * b, dq_rows, d,
                   math.ceil(s / DQ_KEYS.get(dp, 64)), tiled, False, drop)
    pre = _flash_fn(be, f"{pfx}_bwd_preprocess", "PPPqi", 0, dp, drop)
    runtime.launch(pre, math.ceil(b * s / 8), 256, [do.ptr, o.ptr, dd.ptr, b * s, d])
    # dK/dV and dQ both need only q, k, v, dO, L and D, not each other: dQ runs on the side
    # stream beside dK/dV, so the longer pass (issued first) has its last, partly empty
    # wave filled by the other's blocks, and grids too small to fill the card run both
    # passes at once. Every buffer here lives until join().
    if CONCURRENT_DQ:
        runtime.fork()
    fn = _flash_fn(be, f"{pfx}_bwd_dkdv{c}{sfx}_d{dp}{w}", "PPPPPPPPiiif" + dfmt, kv_smem, dp, drop)
    args = [q.ptr, k.ptr, v.ptr, do.ptr, lse.ptr, dd.ptr, dk.ptr, dv.ptr, b, s, d, scale]
    runtime.launch(fn, math.ceil(s / kv_rows) * b, kv_nt, args + dargs, kv_smem,
                   _redrawn(args, dropout_p, seed))
    args = [q.ptr, k.ptr, v.ptr, do.ptr, lse.ptr, dd.ptr, dq.ptr, b, s, d, scale] + split.args
    runtime.launch(dq_fn, split.grid, dq_nt, args + dargs, dq_smem,
                   _redrawn(args, dropout_p, seed), side=CONCURRENT_DQ)
    split.merge(dq, side=CONCURRENT_DQ)
    if CONCURRENT_DQ:
        runtime.join()
    return dq, dk, dv


def attention_tc(be, q, k, v, causal=False):
    q, k, v = be._dense(q), be._dense(k), be._dense(v)
    *lead, sq, dk = q.shape
    sk, dv = v.shape[-2:]
    b = math.prod(lead)
    out = be.empty(q.shape[:-1] + (dv,), float32)
    if not out.size:
        return out
    dp = _dp(max(dk, dv))
    split = math.ceil(sq / ROWS) * b < 2 * runtime.multiprocessors
    name = f"attention_tc{'_causal' if causal else ''}{'_split' if split else ''}_d{dp}"
    smem = ATC[dp][split]
    fn = _fn(be, "attention_tc.cu", name, "PPPPiiiiif", smem, {"ATC_ONLY_DP": dp})
    runtime.launch(fn, math.ceil(sq / (ROWS // 2 if split else ROWS)) * b, 128,
                   [q.ptr, k.ptr, v.ptr, out.ptr, b, sq, sk, dk, dv, _scale(dk)], smem)
    return out


def register(be):
    be.kernels.update({
        "attention_flash": lambda q, k, v, causal=False, dropout_p=0.0, seed=None:
            flash_forward(be, q, k, v, causal, False, dropout_p, seed),
        "attention_flash_with_stats": lambda q, k, v, causal=False, dropout_p=0.0, seed=None:
            flash_forward(be, q, k, v, causal, True, dropout_p, seed),
        "attention_flash_backward":
            lambda q, k, v, o, do, lse, causal=False, dropout_p=0.0, seed=None:
            flash_backward(be, q, k, v, o, do, lse, causal, dropout_p, seed),
        "attention_tc": lambda q, k, v: attention_tc(be, q, k, v, False),
        "attention_tc_causal": lambda q, k, v: attention_tc(be, q, k, v, True),
    })
