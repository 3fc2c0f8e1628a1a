"""NumPy references of the twelve kernel ops: the CPU implementation and the oracle
the CUDA kernels are tested against. Each reproduces the rounding steps of
docs/ops.md (f16/bf16 inputs widened exactly to f32, f32 sums, the casts the
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


# Attention dropout of the flash ops (an extension beyond the KAIO contract of docs/ops.md): P = softmax(S) as
# without dropout (L unchanged); keep-mask M_ij = u(seed, b, i, j) >= p with u a 16-bit
# uniform from Philox-4x32-7 (the mirror of kernels/flash_attention.cu's philox7 and
# keep_bits, bit-exact); out_i = sum_j P_ij M_ij/(1-p) v_j.  b indexes the flattened
# leading dims.
_PHILOX_M0, _PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_U32 = np.uint64(0xFFFFFFFF)


def philox7_round_keys(seed) -> list:
    """The 7 (k0, k1) round keys of Philox-4x32-7 under key (seed low, seed high): the
    kernels get them as arguments (ops_attention), the mirror below uses them too."""
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    return [((k0 + r * _PHILOX_W0) & 0xFFFFFFFF, (k1 + r * _PHILOX_W1) & 0xFFFFFFFF)
            for r in range(7)]


def _philox4x32_7(c0, c1, c2, seed):
    """Philox-4x32 with 7 rounds of counter (c0, c1, c2, 0) (broadcast uint32 arrays) under
    key (seed low, seed high); returns the four uint32 output words."""
    c0, c1, c2 = (np.asarray(c, dtype=np.uint64) for c in np.broadcast_arrays(c0, c1, c2))
    c3 = np.zeros_like(c0)
    for k0, k1 in philox7_round_keys(seed):
        p0, p1 = _PHILOX_M0 * c0, _PHILOX_M1 * c2                   # exact in 64 bits
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & _U32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & _U32)
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def dropout_threshold(p):
    """Element kept iff its 16-bit uniform u16 >= thr: u16 / 65536 >= p."""
    return min(math.ceil(p * 65536), 65536)


def dropout_keep(seed, lead, s, p):
    """bool keep-mask [*lead, S, S] of attention dropout with probability p, as the kernels
    make it: one Philox call per counter (j & ~24, i & ~16, b) gives the 8 elements
    {i, i|16} x {j, j|8, j|16, j|24}; word 2*bit4(i) + bit4(j), low 16 bits if bit3(j) = 0."""
    nb = math.prod(lead)
    idx = np.arange(s, dtype=np.int64)
    grow, ri = np.unique(idx & ~16, return_inverse=True)
    gcol, ci = np.unique(idx & ~24, return_inverse=True)
    words = np.stack(_philox4x32_7(gcol[None, None, :], grow[None, :, None],
                                   np.arange(nb, dtype=np.int64)[:, None, None], int(seed)),
                     -1)                                                   # [B, R, C, 4]
    w = 2 * ((idx >> 4) & 1)[:, None] + ((idx >> 4) & 1)[None, :]
    half = (16 * ((idx >> 3) & 1)).astype(np.uint32)[None, :]
    u = (words[:, ri[:, None], ci[None, :], w] >> half) & np.uint32(0xFFFF)  # [B, S, S]
    return (u >= dropout_threshold(p)).reshape(tuple(lead) + (s, s))


def attention_flash_with_stats(q, k, v, causal=False, dropout_p=0.0, seed=0):
    """f32 attention and L = logsumexp of each row's scaled scores (L without dropout)."""
    s = _scores(q, k, causal)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    l_sum = e.sum(-1, keepdims=True)
    p = e / l_sum
    if dropout_p > 0:
        keep = dropout_keep(seed, q.shape[:-2], q.shape[-2], dropout_p)
        p = np.where(keep, p * (1 / (1 - dropout_p)), 0)
    out = np.matmul(p, v).astype(f32)
    return out, (m + np.log(l_sum))[..., 0].astype(f32)


def attention_flash(q, k, v, causal=False, dropout_p=0.0, seed=0):
    return attention_flash_with_stats(q, k, v, causal, dropout_p, seed)[0]


def attention_flash_backward(q, k, v, o, do, lse, causal=False, dropout_p=0.0, seed=0):
    """The FlashAttention-2 backward formulas of docs/ops.md, returns (dq, dk, dv). With
    dropout: dV = (P M/(1-p))^T dO, dP = M/(1-p) (dO V^T), dS = P (dP - D)."""
    scale = f32(1 / math.sqrt(q.shape[-1]))
    s = _scores(q, k, causal)
    p = np.exp(s - lse[..., None])                         # masked entries: exp(-inf) = 0
    d = (do * o).sum(-1, keepdims=True)                    # preprocess
    dp = np.matmul(do, np.swapaxes(v, -1, -2))
    pd = p
    if dropout_p > 0:
        keep = dropout_keep(seed, q.shape[:-2], q.shape[-2], dropout_p)
        rp = 1 / (1 - dropout_p)
        pd = np.where(keep, p * rp, 0)
        dp = np.where(keep, dp * rp, 0)
    dv = np.matmul(np.swapaxes(pd, -1, -2), do)
    ds = p * (dp - d)
    dk = scale * np.matmul(np.swapaxes(ds, -1, -2), q)
    dq = scale * np.matmul(ds, k)
    return dq.astype(f32), dk.astype(f32), dv.astype(f32)
