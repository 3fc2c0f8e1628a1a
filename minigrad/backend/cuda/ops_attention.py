"""Host side of the attention family (kernels/flash_attention.cu, attention_tc.cu).

Both files template their kernels on a padded head dim DP in {32, 64, 128, 256} (the
smallest DP >= D); each DP is compiled on first use only (-DFA_ONLY_DP / -DATC_ONLY_DP),
which keeps NVRTC's time per compile short. Grids, block sizes and the dynamic
shared-memory bytes below are the launch tables of the kernel files' headers.
Inputs are made dense [B, S, D] (B = all leading dims); every op is one launch for
all B slices (the backward: preprocess, dK/dV pass, dQ pass).

Attention dropout (dropout_p > 0, a seed): the `_dropout` kernels of the same file, which
take one struct fa::DropArgs after the usual arguments (the 14 Philox round keys of the
seed, the keep threshold, f32 1/(1-p): 16 words "I"*15 + "f"); they are compiled with
-DFA_DROPOUT=1 (the dropout kernels only), the others with -DFA_DROPOUT=0.
"""
from __future__ import annotations

import math

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
    """(entry-name suffix, extra argument format, extra arguments, defines) of dropout."""
    if not dropout_p:
        return "", "", [], {"FA_DROPOUT": 0}
    from ..reference import dropout_threshold, philox7_round_keys
    keys = [word for pair in philox7_round_keys(seed) for word in pair]
    return ("_dropout", "I" * 15 + "f",
            keys + [dropout_threshold(dropout_p), float(np.float32(1 / (1 - dropout_p)))],
            {"FA_DROPOUT": 1})


def _flash_fn(be, entry, fmt, smem, dp, defines):
    """A flash_attention.cu kernel of head-dim class dp (plus the dropout define)."""
    return _fn(be, "flash_attention.cu", entry, fmt, smem, {"FA_ONLY_DP": dp, **defines})


def flash_forward(be, q, k, v, causal=False, with_stats=False, dropout_p=0.0, seed=None):
    q, k, v = be._dense(q), be._dense(k), be._dense(v)
    *lead, s, d = q.shape
    b = math.prod(lead)
    out = be.empty(q.shape, float32)
    lse = be.empty(q.shape[:-1], float32) if with_stats else None
    if out.size:
        dp = _dp(d)
        bc, smem = FWD[dp]
        c = "_causal" if causal else ""
        sfx, dfmt, dargs, defs = _drop(dropout_p, seed)
        fn = _flash_fn(be, f"flash_attention_fwd{c}{sfx}_d{dp}", "PPPPPiiif" + dfmt, smem, dp, defs)
        runtime.launch(fn, math.ceil(s / ROWS) * b, 128,
                       [q.ptr, k.ptr, v.ptr, out.ptr, lse.ptr if lse is not None else 0,
                        b, s, d, _scale(d)] + dargs, smem)
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
    sfx, dfmt, dargs, defs = _drop(dropout_p, seed)
    pre = _flash_fn(be, "flash_attention_bwd_preprocess", "PPPqi", 0, dp, defs)
    runtime.launch(pre, math.ceil(b * s / 8), 256, [do.ptr, o.ptr, dd.ptr, b * s, d])
    bck, smem = DKDV[dp]
    fn = _flash_fn(be, f"flash_attention_bwd_dkdv{c}{sfx}_d{dp}", "PPPPPPPPiiif" + dfmt, smem, dp,
              defs)
    runtime.launch(fn, math.ceil(s / bck) * b, 128, [q.ptr, k.ptr, v.ptr, do.ptr, lse.ptr,
                                                     dd.ptr, dk.ptr, dv.ptr, b, s, d, scale]
                   + dargs, smem)
    fn = _flash_fn(be, f"flash_attention_bwd_dq{c}{sfx}_d{dp}", "PPPPPPPiiif" + dfmt, DQ[dp], dp,
              defs)
    runtime.launch(fn, math.ceil(s / ROWS) * b, 128, [q.ptr, k.ptr, v.ptr, do.ptr, lse.ptr,
                                                      dd.ptr, dq.ptr, b, s, d, scale] + dargs,
                   DQ[dp])
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
