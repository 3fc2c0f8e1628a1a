"""NumPy references of the twelve kernel ops: the CPU implementation and the oracle
the CUDA kernels are tested against. Each reproduces the rounding steps of
../shared/OPS.md (f16/bf16 inputs widened exactly to f32, f32 sums, the casts the
kernels make), not just the math. Shapes were validated by `minigrad.ops`.
"""
from __future__ import annotations

import math

import numpy as np

f16, f32, i32 = np.float16, np.float32, np.int32


# ---------------------------------------------------------------- matmul family --
def matmul_tc(a, b):
    """[..., M, K] @ [K, N] (or batched b) of f16/bf16, f32 accumulate and out."""
    return np.matmul(a.astype(f32), b.astype(f32))


matmul_tc_bf16 = matmul_tc_async = matmul_tc_bf16_async = matmul_tc


# -------------------------------------------------------------- quantized family --
def matmul_int8(a, b, scale):
    """Exact int32 accumulate, then f32(acc) * f32(scale)."""
    acc = np.matmul(a.astype(i32), b.astype(i32))
    return acc.astype(f32) * f32(scale)


def unpack_int4(packed):
    """uint32 [N, K//8], nibble k%8 of word k//8 -> int8 values [K, N] in -8..7."""
    shifts = np.arange(8, dtype=np.uint32) * 4
    nibbles = (packed[:, :, None] >> shifts) & 0xF                     # [N, K//8, 8]
    q = nibbles.astype(np.int8)
    q = np.where(q >= 8, q - 16, q).astype(np.int8)
    return q.reshape(packed.shape[0], -1).T                            # [K, N]


def dequantize_int4(packed, scales, group_size):
    """W[k, n] = f16(f16(q[k, n]) * scales[k // G, n]) as f16 [K, N]."""
    q = unpack_int4(packed).astype(f16)
    s = np.repeat(scales.astype(f16), group_size, axis=0)
    return (q.astype(f32) * s.astype(f32)).astype(f16)    # exact product, one rounding


def matmul_int4(a, b_packed, scales, group_size):
    w = dequantize_int4(b_packed, scales, group_size)
    return np.matmul(a.astype(f32), w.astype(f32))


def qkv_project_int8(x, wq, wk, wv, scales):
    x32 = x.astype(f32)
    return tuple((np.matmul(x32, w.astype(f32)) * f32(s)).astype(f16)
                 for w, s in zip((wq, wk, wv), scales))


def qkv_project_int4(x, wq, wk, wv, sq, sk, sv, group_size):
    x32 = x.astype(f32)
    return tuple(np.matmul(x32, dequantize_int4(w, s, group_size).astype(f32)).astype(f16)
                 for w, s in ((wq, sq), (wk, sk), (wv, sv)))


# -------------------------------------------------------------- attention family --
def _causal_mask(sq, sk):
    """True where key j > query i (masked), top-left aligned."""
    return np.arange(sk)[None, :] > np.arange(sq)[:, None]


def _scores(q, k, causal):
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * f32(1 / math.sqrt(q.shape[-1]))
    if causal:
        s = np.where(_causal_mask(s.shape[-2], s.shape[-1]), -np.inf, s)
    return s


def _softmax_rows(s):
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    return e / e.sum(-1, keepdims=True)


def attention_tc(q, k, v, causal=False):
    """f16 in, f32 scores and softmax, P rounded to f16 before P.V, f32 out."""
    p = _softmax_rows(_scores(q.astype(f32), k.astype(f32), causal))
    return np.matmul(p.astype(f16).astype(f32), v.astype(f32))


def attention_flash_with_stats(q, k, v, causal=False):
    """f32 attention and L = logsumexp of each row's scaled scores."""
    s = _scores(q, k, causal)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    l_sum = e.sum(-1, keepdims=True)
    out = np.matmul(e / l_sum, v).astype(f32)
    return out, (m + np.log(l_sum))[..., 0].astype(f32)


def attention_flash(q, k, v, causal=False):
    return attention_flash_with_stats(q, k, v, causal)[0]


def attention_flash_backward(q, k, v, o, do, lse, causal=False):
    """The FlashAttention-2 backward formulas of OPS.md, returns (dq, dk, dv)."""
    scale = f32(1 / math.sqrt(q.shape[-1]))
    s = _scores(q, k, causal)
    p = np.exp(s - lse[..., None])                         # masked entries: exp(-inf) = 0
    d = (do * o).sum(-1, keepdims=True)                    # preprocess
    dv = np.matmul(np.swapaxes(p, -1, -2), do)
    ds = p * (np.matmul(do, np.swapaxes(v, -1, -2)) - d)
    dk = scale * np.matmul(np.swapaxes(ds, -1, -2), q)
    dq = scale * np.matmul(ds, k)
    return dq.astype(f32), dk.astype(f32), dv.astype(f32)
