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
  pipelined ops    on sm_90: cp.async + wgmma (`matmul_tc_wgmma_*`), tile 128 or 256
                   wide by wave quantisation; elsewhere the 4-stage cp.async kernel.

`register(backend)` makes these the CUDA kernels of mg.ops.matmul_tc{,_bf16}{,_async}.
"""
from __future__ import annotations

import math

from ...dtype import float32
from . import runtime

ARGS = "PPPqqqqqqiiii"
_FILES = {False: "matmul_tc.cu", True: "matmul_tc_wgmma.cu"}


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


def _function(be, name, smem):
    fn = be.function(_FILES["wgmma" in name], name, ARGS)
    if smem > 48 * 1024 and not getattr(fn, "mg_smem_raised", False):
        runtime.set_max_dynamic_shared(fn, smem)
        fn.mg_smem_raised = True
    return fn


def tc_matmul(be, a, b, pipelined: bool):
    """f32 [batch..., M, N] = a [batch..., M, K] @ b ([K, N] or [batch..., K, N])."""
    dt = {"float16": "f16", "bfloat16": "bf16"}[a.dtype.name]
    m, k = a.shape[-2:]
    n = b.shape[-1]
    batch_shape = a.shape[:-2]
    batch = math.prod(batch_shape)
    out = be.empty(batch_shape + (m, n), float32)
    if out.size == 0:
        return out
    if k == 0:
        return be._fill(out, 0.0)
    a, la, lda, sa = _operand(be, a)
    b, lb, ldb, sb = _operand(be, b)
    if b.ndim == 2 or batch == 1:
        sb = 0
    if batch == 1:
        sa = 0
    layout = la + lb
    vec = (lda % 8 == 0 and ldb % 8 == 0 and sa % 8 == 0 and sb % 8 == 0
           and a.ptr % 16 == 0 and b.ptr % 16 == 0)
    sms = runtime.multiprocessors
    path = "v" if vec else "s"
    if pipelined and vec and be.arch.startswith("sm_90"):
        tile = _wgmma_tile(m, n, batch, sms)
        name, threads, smem, bn = f"matmul_tc_wgmma_{dt}_{layout}_n{tile}", 256, 197632, tile
    elif pipelined:
        name, threads, smem, bn = f"matmul_tc_async_{dt}_{layout}_{path}", 128, 81920, 128
    elif vec and math.ceil(n / 256) * 2 == math.ceil(n / 128) and \
            math.ceil(m / 128) * math.ceil(n / 256) * batch >= sms / 2:
        name, threads, smem, bn = f"matmul_tc_{dt}_{layout}_v_w8", 256, 61440, 256
    else:
        name, threads, smem, bn = f"matmul_tc_{dt}_{layout}_{path}", 128, 0, 128
    fn = _function(be, name, smem)
    grid = (math.ceil(m / 128) * math.ceil(n / bn), 1, min(batch, 65535))
    runtime.launch(fn, grid, threads, [a.ptr, b.ptr, out.ptr, lda, ldb, n, sa, sb, m * n,
                                       m, n, k, batch], smem)
    return out


def register(be):
    for name, pipelined in (("matmul_tc", False), ("matmul_tc_bf16", False),
                            ("matmul_tc_async", True), ("matmul_tc_bf16_async", True)):
        be.kernels[name] = (lambda p: lambda a, b: tc_matmul(be, a, b, p))(pipelined)
