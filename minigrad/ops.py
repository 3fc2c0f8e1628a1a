"""The twelve kernel ops (`mg.ops.*`): validation, graph nodes and gradients.

Each op checks its inputs while the expression is built (naming the op, the
argument, what it saw and what it needs), then makes a `kernel` graph node. The
node runs on the tensor's device: a hand-written CUDA kernel from `kernels/`, or
the NumPy reference in `backend/reference.py` on the CPU. Contracts and numerics:
docs/ops.md.

The matmul family, `matmul_int4`, the QKV projections (with respect to x) and
both attention families are differentiable. Flash attention saves only q, k, v
and its output; its backward re-runs the forward that writes the log-sum-exp
statistics, then runs the backward kernels.
"""
from __future__ import annotations

import math
import numbers

from . import autograd, lazy
from .autograd import Function
from .dtype import bfloat16, float16, float32, int8, uint32
from .tensor import Tensor, draw_seed

INT4_GROUP_SIZES = (32, 64, 128)


def _kernel(name, inputs, shapes, dtypes, **params):
    """A graph node running kernel `name`; a tuple of tensors when it has several outputs."""
    srcs = [t.lazydata for t in inputs]
    device = srcs[0].device
    if len(shapes) == 1:
        return Tensor._from_lazy(lazy.node("kernel", (name, params), srcs, shapes[0],
                                           dtypes[0], device))
    parent = lazy.node("kernel", (name, params), srcs, shapes[0], dtypes[0], device)
    return tuple(Tensor._from_lazy(o) for o in lazy.outputs(parent, shapes, dtypes))


# ------------------------------------------------------------------ validation --
# (the checks read the graph node, not the Tensor properties: they run at every call, and
# an op's validation should not cost more than building its node)
def _tensor(op, name, t, dtype, min_ndim=0):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a minigrad Tensor, got {type(t).__name__}")
    lb = t.lazydata
    if dtype is not None and lb.dtype is not dtype:
        raise TypeError(f"{op}: {name} must be {dtype.name}, got {lb.dtype.name}")
    if len(lb.shape) < min_ndim:
        raise ValueError(f"{op}: {name} needs at least {min_ndim} dimensions, got shape "
                         f"{lb.shape}")
    return t


def _same_device(op, **tensors):
    devices = [t.lazydata.device for t in tensors.values()]
    if devices.count(devices[0]) != len(devices):
        raise ValueError(f"{op}: inputs are on different devices: " +
                         ", ".join(f"{n} on {d}" for n, d in zip(tensors, devices)))


def _check_matmul(op, a, b, dtype):
    _tensor(op, "a", a, dtype, 2)
    _tensor(op, "b", b, dtype, 2)
    la, lb = a.lazydata, b.lazydata
    sa, sb = la.shape, lb.shape
    if len(sb) != 2:
        raise ValueError(f"{op}: b must be 2-D [K, N], got shape {sb}")
    if sa[-1] != sb[0]:
        raise ValueError(f"{op}: inner dimensions differ: a {sa} (K={sa[-1]}) "
                         f"and b {sb} (K={sb[0]})")
    if la.device != lb.device:
        _same_device(op, a=a, b=b)


# --------------------------------------------------------------- matmul family --
class _MatmulTC(Function):
    """C = A·B in f32; dA = dC·Bᵀ and dB = Aᵀ·dC by the same kernel reading the
    operands transposed (views, no copies); dC is rounded to the input dtype."""
    @staticmethod
    def forward(ctx, a, b, name):
        ctx.save_for_backward(a, b)
        ctx.name = name
        return _matmul_node(name, a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        g = g.cast(a.dtype)
        da = _kernel(ctx.name, [g, b.T], [a.shape], [float32]) \
            if ctx.needs_input_grad[0] else None
        db = None
        if ctx.needs_input_grad[1]:
            a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
            db = _kernel(ctx.name, [a2.T, g2], [b.shape], [float32])
        return da, db, None


def _matmul_node(name, a, b):
    return _kernel(name, [a, b], [a.lazydata.shape[:-1] + b.lazydata.shape[-1:]], [float32])


def _matmul_op(name, dtype):
    def op(a, b):
        _check_matmul(name, a, b, dtype)
        if (a.requires_grad or b.requires_grad) and autograd._state.grad_enabled:
            return _MatmulTC.apply(a, b, name)
        return _matmul_node(name, a, b)     # no gradient will flow: the node alone, as
                                            # Tensor._binary builds it
    op.__name__ = name
    op.__doc__ = (f"{name}(a, b): {dtype.name} [..., M, K] @ {dtype.name} [K, N] -> float32 "
                  f"[..., M, N] on tensor cores (f32 accumulate). Differentiable.")
    return op


matmul_tc = _matmul_op("matmul_tc", float16)
matmul_tc_bf16 = _matmul_op("matmul_tc_bf16", bfloat16)
matmul_tc_async = _matmul_op("matmul_tc_async", float16)
matmul_tc_bf16_async = _matmul_op("matmul_tc_bf16_async", bfloat16)


# ------------------------------------------------------------- quantized family --
def _check_scale(op, name, scale):
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or \
            not math.isfinite(scale):
        raise TypeError(f"{op}: {name} must be a finite real number (a Python or NumPy float or "
                        f"int), got {scale!r}")
    return float(scale)


def matmul_int8(a, b, scale):
    """int8 [..., M, K] @ int8 [K, N], exact int32 accumulate, times `scale` -> float32."""
    op = "matmul_int8"
    _check_matmul(op, a, b, int8)
    return _kernel(op, [a, b], [a.shape[:-1] + b.shape[-1:]], [float32],
                   scale=_check_scale(op, "scale", scale))


def check_int4_group(op, k, group_size):
    """The int4 group rule (docs/ops.md), shared by the ops and mg.quant's helpers."""
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"{op}: group_size must be one of {INT4_GROUP_SIZES}, got "
                         f"{group_size}")
    if k % group_size:
        raise ValueError(f"{op}: K={k} must be a multiple of group_size={group_size}")


def _check_int4_weight(op, name, packed, scales, k, group_size, n=None):
    check_int4_group(op, k, group_size)
    _tensor(op, name, packed, uint32, 2)
    _tensor(op, f"scales of {name}", scales, float16, 2)
    n = packed.shape[0] if n is None else n
    if packed.shape != (n, k // 8):
        raise ValueError(f"{op}: {name} must be uint32 [N, K//8] = [{n}, {k // 8}] (K = {k}, "
                         f"the activations' last dim), got {packed.shape}")
    if scales.shape != (k // group_size, n):
        raise ValueError(f"{op}: scales of {name} must be float16 [K//group_size, N] = "
                         f"[{k // group_size}, {n}] (K = {k}, the activations' last dim), "
                         f"got {scales.shape}")
    return n


class _Int4Matmul(Function):
    """Gradient flows to the f16 activations only: dA = dC·Wᵀ with W dequantized."""
    @staticmethod
    def forward(ctx, a, packed, scales, group_size):
        ctx.save_for_backward(packed, scales)
        ctx.group_size = group_size
        return _kernel("matmul_int4", [a, packed, scales],
                       [a.shape[:-1] + (packed.shape[0],)], [float32], group_size=group_size)

    @staticmethod
    def backward(ctx, g):
        packed, scales = ctx.saved_tensors
        w = dequantize_int4_tensor(packed, scales, ctx.group_size)     # f16 [K, N]
        return matmul_tc(g.cast(float16), w.T), None, None, None


def matmul_int4(a, b_packed, scales, group_size=128):
    """f16 [..., M, K] @ int4 weights (uint32 [N, K//8], f16 scales [K//G, N]) -> f32."""
    op = "matmul_int4"
    _tensor(op, "a", a, float16, 2)
    _check_int4_weight(op, "b_packed", b_packed, scales, a.shape[-1], group_size)
    _same_device(op, a=a, b_packed=b_packed, scales=scales)
    return _Int4Matmul.apply(a, b_packed, scales, group_size)


def dequantize_int4_tensor(packed, scales, group_size=128):
    """The f16 [K, N] weight that matmul_int4 multiplies by."""
    k = packed.shape[1] * 8
    return _kernel("dequantize_int4", [packed, scales], [(k, packed.shape[0])], [float16],
                   group_size=group_size)


def _check_qkv_x(op, x):
    _tensor(op, "x", x, float16, 2)
    return x.shape[-1]


class _QKVInt8(Function):
    @staticmethod
    def forward(ctx, x, wq, wk, wv, scales):
        ctx.save_for_backward(wq, wk, wv)
        ctx.scales = scales
        shape = x.shape[:-1] + (wq.shape[1],)
        return _kernel("qkv_project_int8", [x, wq, wk, wv], [shape] * 3, [float16] * 3,
                       scales=scales)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        dx = None
        for g, w, s in zip((gq, gk, gv), ctx.saved_tensors, ctx.scales):
            if g is not None:
                part = matmul_tc(g.cast(float16), w.cast(float16).T) * s
                dx = part if dx is None else dx + part
        return dx, None, None, None, None


def qkv_project_int8(x, w_q, w_k, w_v, scale_q, scale_k, scale_v):
    """Fused W8A16 Q/K/V projection: f16(x·W_P·scale_P) for P in q, k, v; x read once."""
    op = "qkv_project_int8"
    k = _check_qkv_x(op, x)
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
        _tensor(op, name, w, int8, 2)
        if w.ndim != 2 or w.shape[0] != k:
            raise ValueError(f"{op}: {name} must be int8 [K, N] with K={k}, got {w.shape}")
    if not w_q.shape[1] == w_k.shape[1] == w_v.shape[1]:
        raise ValueError(f"{op}: w_q, w_k, w_v need the same N, got {w_q.shape[1]}, "
                         f"{w_k.shape[1]}, {w_v.shape[1]}")
    _same_device(op, x=x, w_q=w_q, w_k=w_k, w_v=w_v)
    scales = tuple(_check_scale(op, n, s) for n, s in
                   (("scale_q", scale_q), ("scale_k", scale_k), ("scale_v", scale_v)))
    return _QKVInt8.apply(x, w_q, w_k, w_v, scales)


class _QKVInt4(Function):
    @staticmethod
    def forward(ctx, x, wq, wk, wv, sq, sk, sv, group_size):
        ctx.save_for_backward(wq, wk, wv, sq, sk, sv)
        ctx.group_size = group_size
        shape = x.shape[:-1] + (wq.shape[0],)
        return _kernel("qkv_project_int4", [x, wq, wk, wv, sq, sk, sv], [shape] * 3,
                       [float16] * 3, group_size=group_size)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        ws, ss = ctx.saved_tensors[:3], ctx.saved_tensors[3:]
        dx = None
        for g, w, s in zip((gq, gk, gv), ws, ss):
            if g is not None:
                wd = dequantize_int4_tensor(w, s, ctx.group_size)
                part = matmul_tc(g.cast(float16), wd.T)
                dx = part if dx is None else dx + part
        return (dx,) + (None,) * 7


def qkv_project_int4(x, wq_packed, wk_packed, wv_packed, sq, sk, sv, group_size=128):
    """Fused W4A16 Q/K/V projection: f16(x·Wdq_P) for P in q, k, v; x read once."""
    op = "qkv_project_int4"
    k = _check_qkv_x(op, x)
    n = None
    for name, w, s in (("wq_packed", wq_packed, sq), ("wk_packed", wk_packed, sk),
                       ("wv_packed", wv_packed, sv)):
        _tensor(op, name, w, uint32, 2)
        if n is not None and w.shape[0] != n:
            raise ValueError(f"{op}: wq_packed, wk_packed, wv_packed need the same N, got "
                             f"{wq_packed.shape[0]}, {wk_packed.shape[0]}, "
                             f"{wv_packed.shape[0]}")
        n = _check_int4_weight(op, name, w, s, k, group_size, n)
    _same_device(op, x=x, wq_packed=wq_packed, wk_packed=wk_packed, wv_packed=wv_packed,
                 sq=sq, sk=sk, sv=sv)
    return _QKVInt4.apply(x, wq_packed, wk_packed, wv_packed, sq, sk, sv, group_size)


# ------------------------------------------------------------- attention family --
def _nonempty(op, q, k, v):
    if 0 in q.shape + k.shape + v.shape:
        raise ValueError(f"{op}: q, k, v need every dim >= 1 (attention over no keys, or of "
                         f"head dim 0, is undefined), got {q.shape}, {k.shape}, {v.shape}")


def _check_tc_attention(op, q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _tensor(op, name, t, float16, 2)
    _nonempty(op, q, k, v)
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(f"{op}: q, k, v need the same leading dims, got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{op}: q and k need the same Dk, got {q.shape} and {k.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{op}: k and v need the same Sk, got {k.shape} and {v.shape}")
    _same_device(op, q=q, k=k, v=v)


class _AttentionTC(Function):
    """Materialised-score attention. Backward recomputes P (f32) with Tensor ops; the
    forward's cast of P to f16 is treated as identity for the gradient."""
    @staticmethod
    def forward(ctx, q, k, v, causal):
        ctx.save_for_backward(q, k, v)
        ctx.causal = causal
        name = "attention_tc_causal" if causal else "attention_tc"
        return _kernel(name, [q, k, v], [q.shape[:-1] + v.shape[-1:]], [float32])

    @staticmethod
    def backward(ctx, g):
        q, k, v = (t.float() for t in ctx.saved_tensors)
        scale = 1 / math.sqrt(q.shape[-1])
        s = (q @ k.transpose(-1, -2)) * scale
        if ctx.causal:
            sq, sk = s.shape[-2:]
            masked = Tensor.arange(sk, device=s.device).reshape(1, sk) > \
                Tensor.arange(sq, device=s.device).reshape(sq, 1)
            s = masked.where(-math.inf, s)
        p = s.softmax(-1)
        dv = p.half().float().transpose(-1, -2) @ g
        dp = g @ v.transpose(-1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        return ds @ k * scale, ds.transpose(-1, -2) @ q * scale, dv, None


def attention_tc(q, k, v):
    """softmax(Q·Kᵀ/sqrt(Dk))·V with materialised f32 scores; f16 [..., S, D] in, f32 out."""
    _check_tc_attention("attention_tc", q, k, v)
    return _AttentionTC.apply(q, k, v, False)


def attention_tc_causal(q, k, v):
    """attention_tc with key j > query i masked (top-left aligned)."""
    _check_tc_attention("attention_tc_causal", q, k, v)
    return _AttentionTC.apply(q, k, v, True)


MAX_FLASH_D = 256


def _check_flash(op, q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        _tensor(op, name, t, float32, 2)
    if not q.shape == k.shape == v.shape:
        raise ValueError(f"{op}: q, k, v must have the same shape [..., S, D], got "
                         f"{q.shape}, {k.shape}, {v.shape}")
    _nonempty(op, q, k, v)
    if q.shape[-1] > MAX_FLASH_D:
        raise ValueError(f"{op}: head dim D={q.shape[-1]} is larger than {MAX_FLASH_D}")
    _same_device(op, q=q, k=k, v=v)


def _check_dropout(op, dropout_p, seed):
    """(p, seed) of the flash ops' optional attention dropout: p = 0 means none (the node
    is then the plain op's); a seed None is drawn from minigrad's generator (manual_seed)."""
    if not isinstance(dropout_p, numbers.Real) or not 0 <= dropout_p < 1:
        raise ValueError(f"{op}: dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if dropout_p == 0:
        return 0.0, None
    if seed is None:
        seed = draw_seed()
    elif not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"{op}: seed must be an integer in [0, 2**64), got {seed!r}")
    return float(dropout_p), int(seed)


def _drop_params(dropout_p, seed):
    return {"dropout_p": dropout_p, "seed": seed} if dropout_p > 0 else {}


def attention_flash_with_stats(q, k, v, causal=False, *, dropout_p=0.0, seed=None):
    """(out, L): the flash forward and each row's log-sum-exp L = m + ln(l), f32 [..., S].
    With dropout_p > 0, out has attention dropout (see attention_flash); L does not."""
    dropout_p, seed = _check_dropout("attention_flash_with_stats", dropout_p, seed)
    return _kernel("attention_flash_with_stats", [q, k, v], [q.shape, q.shape[:-1]],
                   [float32, float32], causal=causal, **_drop_params(dropout_p, seed))


class _FlashAttention(Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, dropout_p=0.0, seed=None):
        drop = _drop_params(dropout_p, seed)
        out = _kernel("attention_flash", [q, k, v], [q.shape], [float32], causal=causal, **drop)
        ctx.save_for_backward(q, k, v, Tensor._from_lazy(out.lazydata))
        ctx.causal, ctx.drop = causal, drop
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, out = ctx.saved_tensors
        # the recompute: L is defined without dropout, so it needs no mask (out, the
        # forward's dropped output, is saved); the backward kernels regenerate the mask
        _, lse = attention_flash_with_stats(q, k, v, ctx.causal)
        dq, dk, dv = _kernel("attention_flash_backward", [q, k, v, out, g, lse],
                             [q.shape] * 3, [float32] * 3, causal=ctx.causal, **ctx.drop)
        return dq, dk, dv, None, None, None


def attention_flash(q, k, v, *, dropout_p=0.0, seed=None):
    """FlashAttention forward, f32 [..., S, D] (D <= 256), no O(S²) memory.

    Optional attention dropout (an extension beyond the KAIO contract of docs/ops.md): with dropout_p > 0,
    out_i = sum_j P_ij M_ij/(1-p) v_j, P = softmax(scores) and the keep-mask M_ij a pure
    function of (seed, leading index, i, j) (Philox-4x32-7, 16-bit uniforms; the same
    mask in forward and backward, on the GPU and the CPU). seed=None draws one from
    minigrad's generator (mg.manual_seed) when the graph is built. dropout_p=0 is
    exactly the op without dropout."""
    _check_flash("attention_flash", q, k, v)
    dropout_p, seed = _check_dropout("attention_flash", dropout_p, seed)
    return _FlashAttention.apply(q, k, v, False, dropout_p, seed)


def attention_flash_causal(q, k, v, *, dropout_p=0.0, seed=None):
    """attention_flash with key j > query i masked (dropout as there)."""
    _check_flash("attention_flash_causal", q, k, v)
    dropout_p, seed = _check_dropout("attention_flash_causal", dropout_p, seed)
    return _FlashAttention.apply(q, k, v, True, dropout_p, seed)
