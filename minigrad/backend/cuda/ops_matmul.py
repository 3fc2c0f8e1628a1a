"""Host side of the tensor-core matmul family (kernels/matmul_tc.cu, matmul_tc_wgmma.cu).

`tc_matmul(be, a, b, pipelined)` computes the f32 product of two f16/bf16 strided
views, choosing a kernel by the host rules stated in the kernel files' headers:

  operand layout   a logical [R, C] view with element strides (s_r, s_c) is read in
                   place: s_c == 1 -> 'n' (ld = s_r); s_r == 1 -> 't' (ld = s_c);
                   anything else is made dense first. Transposed views (backward's
                   Bᵀ and Aᵀ, nn.Linear's weight.T) therefore cost no copy.
  16-byte loads    `_v` kernels (and wgmma) when lda, ldb and the batch strides are
                   multiples of 8 elements and both pointers 16-byte aligned; else `_s`.
  sync ops         128x256 (`_v_w8`) when N fills 256-wide tiles and there are enough
                   blocks for half the SMs; else 128x128.
  pipelined ops    on sm_90: TMA + wgmma, warp-specialized and persistent, 2-CTA clusters
                   sharing B by TMA multicast (`matmul_tc_tma_*_n{256,128}c2`), the tensor
                   maps encoded here (cuTensorMapEncodeTiled through ctypes, cached),
                   split-K chunks included; where the driver refuses a map, cp.async +
                   wgmma (`matmul_tc_wgmma_*`); elsewhere the 4-stage cp.async kernel.
  sync ops         on sm_90: wgmma fed by synchronous ld.global -> st.shared copies in a
                   producer warpgroup (`matmul_tc_wgsync_*`; "sync" = no cp.async, no TMA,
                   the lead's ruling in issue 4), 256-wide tiles in 2-CTA clusters that
                   share B; elsewhere (and for split-K) mma.sync.
  tile width       128 or 256 by wave quantisation (_wgmma_tile; ws_tile for the
                   warp-specialized kernels, which also picks the cluster size).
  split-K          when the output has too few tiles to fill the SMs and K is long
                   (dB = Aᵀ·dC of nn.Linear: a K x N output, a reduction over all
                   tokens), K is cut into S chunks: `plan()` below.

Split-K needs no kernel change. The kernels' batch mechanism (blocks walk entries
`bat` with A + bat*strideA, B + bat*strideB, C + bat*strideC; for the TMA kernels the
tensor maps' third dimension) expresses the chunks directly: chunk s of length Kc is A
advanced by s*Kc along K (strideA = Kc for A 'n', Kc*lda for 't'), B advanced by s*Kc
rows (strideB = Kc*ldb for B 'n', Kc for 't'), and an f32 slab s of a pooled workspace
[S, M, N] (strideC = M*N), launched with K = Kc and batch = the number of full chunks.
Kc is a multiple of the kernel's K tile, so the chunk offsets keep the 16-byte rule (and
a chunk's tensor map, Kc long along K, never reads into the next chunk). When
K % Kc != 0 the short last chunk (K - full*Kc) is a second launch of the same kernel
with K = that length (the kernel zero-fills the K tail as always). The TMA kernels cut
K themselves (their `kchunk` argument: batch entry j reads K from j*Kc through maps of
the whole operands), so all chunks, a short last one too, are one launch, and the plan
may choose a count that does not divide K (16384 in 3: 108 blocks of 132 SMs). Then
`matmul_tc_splitk_sum` adds the slabs in the order s = 0, 1, ..., S-1 into the output:
no atomics, so a given shape on a given card gives the same bits every run (the
chunking depends on the shape and the SM count only). Split-K changes the f32 summation
order, which docs/ops.md allows (the reference is A.astype(f32) @ B.astype(f32), compared
with a tolerance). A batched product ([batch..., M, K] @ [K, N], batch <=
SPLIT_BATCH_MAX) that splits runs these launches once per batch entry; the one
reduction handles all entries.

`register(backend)` makes these the CUDA kernels of mg.ops.matmul_tc{,_bf16}{,_async}.
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
import struct

from ...dtype import float32
from . import compiler
from .compiler import kparam_offsets

ARGS = "PPPqqqqqqiiii"
SUM_ARGS = "PPqii"
TMA_ARGS = "Q" * 48 + "Pqqiiiiiiiii"   # three 128-byte tensor maps (A, B, C), C, ldc,
                                       # strideC, M, N, K, batch, batA, batB, group, cmap,
                                       # kchunk; after tma_pad() bytes of padding (zeros,
                                       # as "Q"s) that the launch prepends
WGSYNC_ARGS = ARGS + "i"               # ARGS, group
_HOPPER_FILE = "matmul_tc_wgmma.cu"
_BM = 128
_SUM_THREADS = 256
WS_THREADS = 384                       # warp-specialized kernels: producer + 2 consumer WGs
WS_SMEM = {256: 215040, 128: 215040}   # MTW_WS_SMEM_N256 / _N128
STAGED_MAX_KT, STAGED_MIN_N = 16, 512  # the kernels' staged-epilogue rule (MTW_STAGED_*):
                                       # K <= 16 steps of 128 bytes and N >= 512
TMA_GROUP = 8                          # unit-rows per raster group (measured, notes)
WGSYNC_GROUP = 16
# switches (tests, benchmark comparisons; env MINIGRAD_MATMUL_TMA=0 / _WGSYNC=0 turn the
# warp-specialized sm_90 kernels off: cp.async wgmma and mma.sync run instead)
USE_TMA = os.environ.get("MINIGRAD_MATMUL_TMA", "1") != "0"
USE_WGSYNC = os.environ.get("MINIGRAD_MATMUL_WGSYNC", "1") != "0"

# ---- split-K heuristic (see plan()) ----
SPLIT_KMIN = 512        # shortest chunk: 8 wgmma / 16 mma.sync K tiles per block
SPLIT_MAX = 16          # most chunks (bounds the workspace and its reduction)
SPLIT_BLOCK_K = 128     # fixed cost of one block (pipeline fill, f32 tile store), as K
SPLIT_LAUNCH_K = 512    # fixed cost of the extra launch for a short last chunk, as K
SPLIT_SLAB_ELEMS = 1536  # each chunk's f32 slab (stored, then read by the sum) costs
                         # M*N / SPLIT_SLAB_ELEMS K steps: a chunk's tile stores run at
                         # ~2 TB/s from the accumulator layout (notes_matmul.md, session
                         # 13), and at 4096 the 1536 x 384 weight gradients took 8 chunks
                         # where 2 were 2-5 us faster (H200)
SPLIT_GAIN = 0.75       # split only if the estimate drops to <= 3/4 of the unsplit one
SPLIT_BATCH_MAX = 8     # batched products split (one launch per entry) up to this batch
FORCE_SPLIT = None      # int: use exactly this many chunks (tests, benchmark sweeps)


def _batch_stride(shape, strides):
    """One stride that walks all leading (batch) dims, or None if they don't collapse."""
    dims = [(d, s) for d, s in zip(shape, strides) if d != 1]
    if not dims:
        return 0
    for (d0, s0), (d1, s1) in zip(dims, dims[1:]):
        if s0 != s1 * d1:
            return None
    return dims[-1][1]


def _operand(be, x):
    """(buffer, layout letter, leading dim, batch stride) for a [..., R, C] view;
    a view no layout can read (or with negative strides) is made dense first."""
    for _ in range(2):
        r, c = x.shape[-2:]
        sr, sc = x.strides[-2:]
        sb = _batch_stride(x.shape[:-2], x.strides[:-2])
        if sb is not None and min(x.strides, default=0) >= 0:
            if sc == 1 or c == 1:           # x[i, j] at i*ld + j
                return x, "n", (sr if r > 1 else c), sb
            if sr == 1 or r == 1:           # x[i, j] at j*ld + i
                return x, "t", (sc if c > 1 else r), sb
        x = be._dense(x)
    raise AssertionError("a dense buffer always has a layout")


def _wgmma_tile(m, n, batch, sms):
    if n <= 128:
        return 128
    b256 = math.ceil(m / 128) * math.ceil(n / 256) * batch
    b128 = math.ceil(m / 128) * math.ceil(n / 128) * batch
    return 256 if math.ceil(b256 / sms) * 1.8 <= math.ceil(b128 / sms) else 128


def ws_tile(m, n, batch, sms, sync=False):
    """(BN, CTAs per cluster) of the TMA kernels (of the synchronous-load ones with
    `sync`), measured on an H200 (notes_matmul.md, session 2): 128 x 256 tiles unless
    128 x 128 ones make fewer wave-quantised units of work (a 256-wide tile counting 1.8
    of a 128-wide one; a tie goes to 128: at 16384x1152x384 n128 was 5 % faster); 2-CTA
    clusters sharing B by multicast (4096^3: 706 vs 604 TFLOP/s without), except 128-wide
    tiles of a narrow N <= 512, where B is small and the single-CTA kernel was 4-7 %
    faster (N = 384), and an odd number of 128-row tiles below 8, where the second CTA of
    the last cluster row idles (>= 1/8 of the CTAs: the split-K weight gradients with a
    384-row output ran 1.3-1.7x slower with clusters, H100, docs/benchmarks.md §4c). The
    synchronous-load kernels use the same rule with clusters for 256-wide tiles only
    (n256c2: each CTA loads half of B; at 4096^3 0.60-0.68 of cuBLAS against 0.55-0.58
    alone, notes_matmul.md session 16; n128 was not measured in clusters)."""
    if n <= 128:
        bn = 128
    else:
        b256 = math.ceil(m / 128) * math.ceil(n / 256) * batch
        b128 = math.ceil(m / 128) * math.ceil(n / 128) * batch
        bn = 256 if math.ceil(b256 / sms) * 1.8 < math.ceil(b128 / sms) else 128
    mt = math.ceil(m / 128)
    one = (bn == 128 and (sync or n <= 512)) or (mt % 2 and mt < 8)
    return bn, (1 if one else 2)


def chunks(k: int, s: int, kt: int):
    """K cut into at most s chunks: (kc, full, rem) with kc = ceil(k/s) rounded up to a
    multiple of the K tile kt, `full` chunks of kc and, if rem > 0, one last chunk of
    rem < kc; full*kc + rem == k."""
    per = -(-k // s)                  # ceil(k / s)
    kc = -(-per // kt) * kt           # rounded up to whole K tiles
    full, rem = divmod(k, kc)
    return kc, full, rem


def _split_cost(tiles, slots, k, s, kt, mn=0, one_launch=False):
    """Estimated time of one product (one batch entry when split), in K steps of one
    block: each wave of blocks costs its chunk length plus SPLIT_BLOCK_K; a short last
    chunk adds its own wave and SPLIT_LAUNCH_K, unless the kernel cuts K itself
    (`one_launch`: the TMA kernels, where it is one more block of the same launch);
    each chunk's slab adds mn / SPLIT_SLAB_ELEMS."""
    waves = lambda blocks: -(-blocks // slots)      # noqa: E731
    if s == 1:
        return waves(tiles) * (k + SPLIT_BLOCK_K)
    kc, full, rem = chunks(k, s, kt)
    if one_launch:
        count = full + (rem > 0)
        return waves(tiles * count) * (kc + SPLIT_BLOCK_K) + count * mn / SPLIT_SLAB_ELEMS
    cost = waves(tiles * full) * (kc + SPLIT_BLOCK_K) if full else 0
    if rem:
        cost += waves(tiles) * (rem + SPLIT_BLOCK_K) + SPLIT_LAUNCH_K
    return cost + (full + (rem > 0)) * mn / SPLIT_SLAB_ELEMS


def plan(m, n, k, batch, sms, kernel):
    """(bn, s, kc): the block tile width, the number of K chunks (1: no split) and the
    chunk length for `kernel` in {"tma", "wgmma", "mma", "mma_w8"} on a card of `sms` SMs
    ("tma": the TMA kernels, which take all chunks, a short last one too, in one launch).

    Unsplit, the tile is the usual one (wgmma: _wgmma_tile; mma.sync: 128, or the
    8-warp 256 kernel, which is chosen only when it already fills half the SMs and
    never splits). A split uses 128-wide tiles (on an H200 the 128x256 wgmma block was
    slower at these shapes, benchmarks/notes_matmul.md). Each chunk count
    s in 2..min(SPLIT_MAX, K // SPLIT_KMIN) gets an estimated time (_split_cost): the
    wave-quantised number of blocks (ceil(blocks / slots), slots = SMs x blocks per
    SM: 1 for wgmma, 2 for the 128x128 mma.sync kernels) times the chunk length plus a
    fixed cost per block, a fixed cost for the extra launch of a short last chunk
    (so chunk counts that divide K into whole K tiles win), and the slab traffic;
    times the batch (one launch per entry). The unsplit estimate counts a 128x256
    block as 1.8 of a 128x128 one, as the tile rule does. The cheapest split is taken
    when it costs at most SPLIT_GAIN of the unsplit estimate; else s = 1; never for
    batch > SPLIT_BATCH_MAX. FORCE_SPLIT = s overrides the count (not the tile rule);
    a k too short for two chunks of the K tile gives s = 1. Cached: it is pure."""
    return _plan(m, n, k, batch, sms, kernel, FORCE_SPLIT)


@functools.lru_cache(maxsize=4096)
def _plan(m, n, k, batch, sms, kernel, force):
    if kernel == "mma_w8":
        return 256, 1, k
    hopper = kernel in ("tma", "wgmma")
    kt, slots = (64, sms) if hopper else (32, 2 * sms)
    bn0 = _wgmma_tile(m, n, batch, sms) if hopper else 128
    if force is not None:
        kc, full, rem = chunks(k, max(1, int(force)), kt)
        return (bn0, 1, k) if full + (rem > 0) < 2 else (128, full + (rem > 0), kc)
    tiles = math.ceil(m / _BM) * math.ceil(n / 128)
    tiles0 = math.ceil(m / _BM) * math.ceil(n / bn0)
    best = ((1.8 if bn0 == 256 else 1.0) * _split_cost(tiles0 * batch, slots, k, 1, kt),
            bn0, 1, k)
    limit = best[0] * SPLIT_GAIN
    if batch <= SPLIT_BATCH_MAX:
        for s in range(2, min(SPLIT_MAX, k // SPLIT_KMIN) + 1):
            cost = batch * _split_cost(tiles, slots, k, s, kt, m * n, kernel == "tma")
            if cost <= limit and cost < best[0]:
                kc, full, rem = chunks(k, s, kt)
                best = (cost, 128, full + (rem > 0), kc)
    return best[1:]


# ---- TMA tensor maps ---------------------------------------------------------------
_LIBCUDA = None
_TMAPS: dict = {}


# tensor-map element types: CUtensorMapDataType, bytes per element
TMA_TYPES = {"f16": (6, 2), "bf16": (9, 2), "i8": (0, 1), "f32": (7, 4)}
_NO_MAP = (0,) * 16


def tensor_map(ptr, dt, dims, strides, box):
    """The 16 uint64 words of a 3-d CUtensorMap (`dt` a key of TMA_TYPES; dims innermost
    first, byte strides of dims 1 and 2, box dims), 128-byte swizzle, zeros outside the
    tensor; None when the driver refuses it (the caller falls back to cp.async).
    cuTensorMapEncodeTiled needs no context; cached by arguments."""
    key = (ptr, dt, dims, strides, box)
    words = _TMAPS.get(key, False)
    if words is not False:
        return words
    global _LIBCUDA
    if _LIBCUDA is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError:         # a driver ctypes cannot open (another OS, a stub): no TMA
            _LIBCUDA = False
            return None
        f = lib.cuTensorMapEncodeTiled
        f.restype = ctypes.c_int
        u64p, u32p = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32)
        f.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, u64p,
                      u64p, u32p, u32p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        _LIBCUDA = lib
    if _LIBCUDA is False:
        return None
    raw = (ctypes.c_uint8 * 192)()
    addr = (ctypes.addressof(raw) + 63) & ~63          # the map must be 64-byte aligned
    r = _LIBCUDA.cuTensorMapEncodeTiled(
        ctypes.c_void_p(addr), TMA_TYPES[dt][0], 3, ctypes.c_void_p(ptr),
        (ctypes.c_uint64 * 3)(*dims), (ctypes.c_uint64 * 2)(*strides),
        (ctypes.c_uint32 * 3)(*box), (ctypes.c_uint32 * 3)(1, 1, 1),
        0, 3, 3, 0)     # no interleave, SWIZZLE_128B, L2 promotion 256 B, OOB zero fill
    words = struct.unpack("<16Q", ctypes.string_at(addr, 128)) if r == 0 else None
    if len(_TMAPS) > 4096:
        _TMAPS.clear()
    _TMAPS[key] = words
    return words


@functools.lru_cache(maxsize=None)
def _tma_pad_for(arch):
    """Bytes before the first tensor map in the TMA kernels' parameter buffer. A
    64-byte-aligned __grid_constant__ CUtensorMap sits at a 64-byte-aligned constant-bank
    address and sm_90 kernel parameters start at bank offset 0x210, so the compiler puts
    the first map at parameter offset 48; PyCUDA packs the buffer from the format alone,
    so the launch prepends that padding. Read from the cubin (the same compile the
    backend loads: a cache hit) and checked against every parameter's offset."""
    path = compiler.kernels_dir() / _HOPPER_FILE
    cubin = compiler.compile_file(path, compiler.arch_for_file(path.read_text(), arch))
    offs = kparam_offsets(cubin, "matmul_tc_tma_f16_nn_n256c2")
    pad = offs[0][0]
    pos, want = pad + 384, [pad, pad + 128, pad + 256]
    for c in TMA_ARGS[48:]:
        sz = struct.calcsize(c)
        pos = -(-pos // sz) * sz
        want.append(pos)
        pos += sz
    if [offs[i][0] for i in sorted(offs)] != want or pad % 8:
        raise RuntimeError(f"unexpected TMA kernel parameter offsets {offs}")
    return pad


def tma_pad(be):
    pad = getattr(be, "tma_param_pad", None)       # stand-ins say it; else the cubin does
    return _tma_pad_for(be.arch) if pad is None else pad


def operand_map(dt, trans, rows, cols, ld, stride, batch, box_outer):
    """tensor_map's arguments after the pointer for a logical [rows, cols] operand ('n':
    (r, c) at r*ld + c; 't': at c*ld + r), batch entries `stride` elements apart (0: one
    matrix for all). The contiguous dim is innermost; boxes are 128 bytes of it (64 16-bit
    or 128 int8 elements) by `box_outer` of the other."""
    inner, outer = (rows, cols) if trans else (cols, rows)
    nb = batch if stride else 1
    s2 = stride if stride else outer * ld
    size = TMA_TYPES[dt][1]
    return dt, (inner, outer, nb), (size * ld, size * s2), (128 // size, box_outer, 1)


def ws_grid(m, n, batch, bn, cm, sms):
    """Persistent grid: one CTA per SM at most, whole clusters."""
    units = math.ceil(math.ceil(m / _BM) / cm) * math.ceil(n / bn) * batch
    return cm * min(units, sms // cm)


def tma_launcher(be, rt, dt, layout, lda, ldb, sa, sb, m, n, k, batch, sms, kchunk=0):
    """A TMA kernel's launch, planned once per layout (maps, in 16-bit elements: A 'n' box
    64 k x 128 m, A 't' 64 m x 64 k, B 't' 64 k x BN/CM n, B 'n' 64 n x 64 k; int8 boxes
    hold 128 of K, the same 128 bytes; see the kernel header; `batch`
    entries sa/sb elements apart, C's m*n apart with ldc n): `maps(pa, pb)` encodes the two
    tensor maps (cached by pointer) and gives `launch(pc)`, which queues the kernel writing C
    at pc; None if the driver refuses a map. dt "i8" is matmul_int8's kernel (layout "nt"
    only), whose launch takes the scale too: `launch(pc, scale)`. With `kchunk` (split-K)
    the `batch` entries are the K chunks of one product, kchunk long (the last one what is
    left: batch = ceil(k / kchunk)), written to slabs m*n apart; then sa = sb = 0.

    Where the kernel stages its epilogue (the STAGED_* rule: short K, wide N), C goes out
    by TMA stores through a third map (f32 {n, m, batch}, box {32, 8, 1}; rows 4n bytes
    apart, so n % 4 == 0, and C 16-byte aligned); otherwise that map is zeros, cmap = 0."""
    bn, cm = ws_tile(m, n, batch, sms)
    at, bt = layout[0] == "t", layout[1] == "t"
    map_a = operand_map(dt, at, m, k, lda, sa, batch, 64 if at else 128)
    map_b = operand_map(dt, bt, k, n, ldb, sb, batch, bn // cm if bt else 64)
    steps = -(-(kchunk or k) // (128 // TMA_TYPES[dt][1]))     # K steps of 128 bytes
    map_c = ("f32", (n, m, batch), (4 * n, 4 * m * n), (32, 8, 1)) \
        if steps <= STAGED_MAX_KT and n >= STAGED_MIN_N and n % 4 == 0 else None
    grid = (ws_grid(m, n, batch, bn, cm, sms), 1, 1)
    tail = [n, m * n, m, n, k, batch, int(sa != 0), int(sb != 0), TMA_GROUP]
    kernel = []     # [fn, pad]: looked up at the first accepted maps (a driver that
                    # refuses them never compiles the TMA kernels)
    last = [None, None]     # [(pa, pb), their launch]: a training loop's operands repeat

    def maps(pa, pb):
        if last[0] == (pa, pb):
            return last[1]
        enc = getattr(rt, "tensor_map", tensor_map)     # (a stand-in's, in tests)
        ma, mb = enc(pa, *map_a), enc(pb, *map_b)
        if ma is None or mb is None:
            return None
        if not kernel:
            pad = tma_pad(be) // 8
            name, extra = (f"matmul_int8_tma_{layout}", "f") if dt == "i8" else \
                (f"matmul_tc_tma_{dt}_{layout}", "")
            kernel[:] = [_function(be, rt, f"{name}_n{bn}c{cm}", WS_SMEM[bn],
                                   fmt="Q" * pad + TMA_ARGS + extra), pad]
        fn, pad = kernel
        head = [0] * pad + [*ma, *mb]

        def launch(pc, *scale):
            mc = enc(pc, *map_c) if map_c is not None and pc % 16 == 0 else None
            rt.launch(fn, grid, WS_THREADS,
                      [*head, *(mc or _NO_MAP), pc, *tail, int(mc is not None), kchunk, *scale],
                      WS_SMEM[bn])
        last[:] = (pa, pb), launch
        return launch
    return maps


def _function(be, rt, name, smem, file=None, fmt=None):
    hopper = any(t in name for t in ("_wgmma_", "_tma_", "_wgsync_"))
    fmt = fmt or (SUM_ARGS if "splitk" in name else WGSYNC_ARGS if "_wgsync_" in name
                  else ARGS)
    fn = be.function(file or (_HOPPER_FILE if hopper else "matmul_tc.cu"), name, fmt)
    if smem > 48 * 1024 and not getattr(fn, "mg_smem_raised", False):
        rt.set_max_dynamic_shared(fn, smem)
        fn.mg_smem_raised = True
    return fn


_FAST: dict = {}   # tc_matmul's layout key -> its launcher (pointers in, output out)


def tc_matmul(be, a, b, pipelined: bool, runtime=None):
    """f32 [batch..., M, N] = a [batch..., M, K] @ b ([K, N] or [batch..., K, N]).
    `runtime` defaults to minigrad.backend.cuda.runtime (tests may pass a stand-in).

    The choice of kernel depends on shapes, strides and pointer alignment only, so the
    first call with a layout remembers, when its operands are read in place, a launcher
    taking just the pointers (`_FAST`; one launch, or split-K's chunks and sum): a
    training loop's matmuls skip the rules below (tens of microseconds of Python per call
    otherwise)."""
    rt = runtime if runtime is not None else _runtime()
    key = (be, rt, pipelined, a.dtype, a.shape, a.strides, b.shape, b.strides,
           a.ptr % 16 == 0, b.ptr % 16 == 0, FORCE_SPLIT, USE_TMA, USE_WGSYNC)
    fast = _FAST.get(key)
    if fast is not None:
        out = fast(a, b)
        if out is not None:
            return out
    dt = {"float16": "f16", "bfloat16": "bf16"}[a.dtype.name]
    m, k = a.shape[-2:]
    n = b.shape[-1]
    batch_shape = a.shape[:-2]
    batch = math.prod(batch_shape)
    out_shape = batch_shape + (m, n)
    if batch * m * n == 0:
        return be.empty(out_shape, float32)
    if k == 0:
        return be._fill(be.empty(out_shape, float32), 0.0)
    a_in, b_in = a, b
    a, la, lda, sa = _operand(be, a)
    b, lb, ldb, sb = _operand(be, b)
    in_place = a is a_in and b is b_in      # no operand was copied: a launcher can be kept
    if b.ndim == 2 or batch == 1:
        sb = 0
    if batch == 1:
        sa = 0
    layout = la + lb
    vec = (lda % 8 == 0 and ldb % 8 == 0 and sa % 8 == 0 and sb % 8 == 0
           and a.ptr % 16 == 0 and b.ptr % 16 == 0)
    sms = rt.multiprocessors
    path = "v" if vec else "s"
    hopper = vec and be.arch.startswith("sm_90")

    def one_launch(fn, grid, threads, tail, smem):
        """Launch fn(a, b, out, *tail) now, and keep the launcher for this layout."""
        def launcher(a, b):
            out = be.empty(out_shape, float32)
            rt.launch(fn, grid, threads, [a.ptr, b.ptr, out.ptr, *tail], smem)
            return out
        if in_place:
            _keep(key, launcher)
        return launcher(a, b)

    if pipelined and hopper:
        bn, s, kc = plan(m, n, k, batch, sms, "tma" if USE_TMA else "wgmma")
        if USE_TMA:
            if s == 1:
                maps = tma_launcher(be, rt, dt, layout, lda, ldb, sa, sb, m, n, k, batch, sms)

                def launcher(a, b):         # None (nothing queued) if a map is refused
                    launch = maps(a.ptr, b.ptr)
                    if launch is None:
                        return None
                    out = be.empty(out_shape, float32)
                    launch(out.ptr)
                    return out
            else:                           # all s chunks in one launch
                launcher = _split_k(be, rt, out_shape, a, b, m, n, s, batch, sa, sb, [(
                    tma_launcher(be, rt, dt, layout, lda, ldb, 0, 0, m, n, k, s, sms, kc),
                    0, 0, 0)])
            out = launcher(a, b)
            if out is not None:
                if in_place:
                    _keep(key, launcher)
                return out
        name, threads, smem = f"matmul_tc_wgmma_{dt}_{layout}_n{bn}", 256, 197632
    elif pipelined:
        bn, s, kc = plan(m, n, k, batch, sms, "mma")
        name, threads, smem = f"matmul_tc_async_{dt}_{layout}_{path}", 128, 81920
    elif hopper and USE_WGSYNC and plan(m, n, k, batch, sms, "mma")[1] == 1:
        bn, cm = ws_tile(m, n, batch, sms, sync=True)
        fn = _function(be, rt, f"matmul_tc_wgsync_{dt}_{layout}_n{bn}c{cm}", WS_SMEM[bn])
        return one_launch(fn, (ws_grid(m, n, batch, bn, cm, sms), 1, 1), WS_THREADS,
                          [lda, ldb, n, sa, sb, m * n, m, n, k, batch, WGSYNC_GROUP],
                          WS_SMEM[bn])
    elif vec and math.ceil(n / 256) * 2 == math.ceil(n / 128) and \
            math.ceil(m / 128) * math.ceil(n / 256) * batch >= sms / 2:
        bn, s, kc = plan(m, n, k, batch, sms, "mma_w8")
        name, threads, smem = f"matmul_tc_{dt}_{layout}_v_w8", 256, 61440
    else:
        bn, s, kc = plan(m, n, k, batch, sms, "mma")
        name, threads, smem = f"matmul_tc_{dt}_{layout}_{path}", 128, 0
    fn = _function(be, rt, name, smem)
    tiles = math.ceil(m / _BM) * math.ceil(n / bn)
    if s == 1:
        return one_launch(fn, (tiles, 1, min(batch, 65535)), threads,
                          [lda, ldb, n, sa, sb, m * n, m, n, k, batch], smem)
    def chunk_maps(kk, count, ca, cb):
        return lambda pa, pb: lambda pc: rt.launch(
            fn, (tiles, 1, min(count, 65535)), threads,
            [pa, pb, pc, lda, ldb, n, ca, cb, m * n, m, n, kk, count], smem)
    full, rem = divmod(k, kc)
    ca = kc if la == "n" else kc * lda        # elements from one chunk of A to the next
    cb = kc * ldb if lb == "n" else kc        # and of B
    parts = ([(chunk_maps(kc, full, ca, cb), 0, 0, 0)] if full else []) + \
        ([(chunk_maps(rem, 1, 0, 0), full, full * ca, full * cb)] if rem else [])
    launcher = _split_k(be, rt, out_shape, a, b, m, n, s, batch, sa, sb, parts)
    if in_place:
        _keep(key, launcher)
    return launcher(a, b)


def _keep(key, launcher):
    if len(_FAST) >= 4096:
        _FAST.clear()
    _FAST[key] = launcher


_RT = None


def _runtime():
    """The CUDA runtime module, imported at the first product (not at import: the host
    rules here run in tests without PyCUDA) and kept (an import statement per call costs
    more than the rest of a kept launch's lookup)."""
    global _RT
    if _RT is None:
        from . import runtime
        _RT = runtime
    return _RT


def _split_k(be, rt, out_shape, a, b, m, n, s, batch, sa, sb, parts):
    """Split-K (module docstring), planned once per layout: returns `launcher(a, b)`, which
    queues the s chunks of batch entry i -> slabs ws[i, :], then the ordered sum into a
    new f32 output, and returns that output; or None, with nothing queued, when a chunk
    cannot be launched (a refused tensor map). `parts`: [(maps, j, da, db)], each
    `maps(pa, pb)` -> `launch(pc)` (or None) queueing the chunks from j on (A and B
    advanced da / db elements, pc their first slab): one part for the TMA kernels (the
    kernel cuts K), else the full chunks and a short last one."""
    ia, ib = a.dtype.itemsize, b.dtype.itemsize
    sums = {}                                 # float4 sum (16-byte aligned)? -> (kernel, grid)
    for v4 in (True, False):
        if v4 and (m * n) % 4:
            continue
        items = (m * n) // 4 if v4 else m * n
        sums[v4] = (_function(be, rt, "matmul_tc_splitk_sum4" if v4 else "matmul_tc_splitk_sum",
                              0, file="matmul_tc.cu"),
                    (max(1, min(-(-items // _SUM_THREADS), 16 * rt.multiprocessors)),
                     min(batch, 65535), 1))

    def launcher(a, b):
        launches = []
        for i in range(batch):
            pa, pb = a.ptr + i * sa * ia, b.ptr + i * sb * ib
            for maps, j, da, db in parts:
                launches.append((maps(pa + da * ia, pb + db * ib), (i * s + j) * m * n))
        if any(go is None for go, _ in launches):
            return None
        out = be.empty(out_shape, float32)
        ws = be.empty((batch, s, m, n), float32)
        for go, slab in launches:
            go(ws.ptr + slab * 4)
        fsum, grid = sums[(m * n) % 4 == 0 and ws.ptr % 16 == 0 and out.ptr % 16 == 0]
        rt.launch(fsum, grid, _SUM_THREADS, [ws.ptr, out.ptr, m * n, s, batch])
        return out
    return launcher


def register(be):
    for name, pipelined in (("matmul_tc", False), ("matmul_tc_bf16", False),
                            ("matmul_tc_async", True), ("matmul_tc_bf16_async", True)):
        be.kernels[name] = (lambda p: lambda a, b: tc_matmul(be, a, b, p))(pipelined)
