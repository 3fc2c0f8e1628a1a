"""Quantized inference layers: `QuantLinear`, `QuantCausalSelfAttention` and
`quantize(model, bits)` (also `GPT.quantize`), on the kernels of the quantized family
(mg.ops.matmul_int8 / matmul_int4 / qkv_project_int8 / qkv_project_int4).

bits=8, QuantLinear: W8A8. The weight is quantized once, per tensor
    (mg.quant.quantize_int8: s_w = max|W| / 127, W_q = clip(round(W / s_w), -127, 127)),
    and the activations on every call with the same recipe, on the device with Tensor ops:
        s_x = max|x| / 127 (f32, one scale for the whole input tensor)
        x_q = clip(rint(x / s_x), -127, 127) as int8
    where rint rounds half to even, as NumPy's np.round in mg.quant: it is computed as
    (y + 1.5·2²³) − 1.5·2²³ in f32, exact for |y| < 2²² (here |y| <= 127), on both
    devices (Tensor has no round op; float->int casts truncate). Then
        y = f32(int32(x_q)·int32(W_qᵀ)) · f32(s_x·s_w) + bias        (matmul_int8)
    The kernel's own `scale` argument is 1.0 and s_x·s_w is applied by one f32 multiply
    on the device, because `scale` is a host float and reading s_x back would
    synchronise the host on every call.
bits=4, QuantLinear: W4A16 (matmul_int4): x is cast to f16 (not quantized), the weight
    is int4 with f16 scales per group of `group_size` input features and output feature
    (mg.quant.quantize_int4), y = x_f16 · W_dq + bias in f32.
QuantCausalSelfAttention: c_attn's weight (3·n_embd, n_embd) is split into the Q, K and
    V parts, quantized separately (int8 per tensor, or int4 per group), and one fused
    qkv_project_int8/int4 call (x read once; W8A16 / W4A16: x cast to f16, outputs f16)
    makes q, k, v; c_proj becomes a QuantLinear.

Layouts: weights are kept as nn.Linear keeps them, [out, in] = [N, K] (K contiguous per
output feature): the int8 kernels read B K-major, so the `[K, N]` operand the ops take
is the transposed view `w.T`, used without a copy. For K % 16 != 0 the int8 rows are
zero-padded to a multiple of 16 (so the 16-byte-load kernels apply) and the view is
`w[:, :K].T`. int4 weights are packed [N, K/8] uint32 (the ops' format).

Quantized weights and scales are buffers (Module.register_buffer): in state_dict(),
moved by .to(device), no gradient, not in parameters(). Biases, embeddings and
LayerNorms stay float32 parameters. Gradients flow to the activations: bits=4 and the
QKV projections through the ops' own autograd Functions (dx = g·W_dqᵀ); bits=8 through a
straight-through estimator (the rounding of x counts as identity, so dx = g·(s_w·W_q),
exactly the gradient of a float Linear holding the dequantized weight).
"""
from __future__ import annotations

import copy

import numpy as np

from .. import ops, quant
from ..autograd import Function
from ..dtype import float16, int8, uint32
from ..tensor import Tensor
from .layers import Dropout, Linear
from .module import Module
from .transformer import CausalSelfAttention, _multi_head_attention

BITS = (8, 4)
ROUND_MAGIC = 12582912.0        # 1.5 * 2**23: (y + M) - M = rint(y) in f32 for |y| < 2**22
_TINY = 1e-30                   # s_x of an all-zero input (any positive value works)


def _check_bits(who, bits, group_size, in_features):
    if bits not in BITS:
        raise ValueError(f"{who}: bits must be 8 or 4, got {bits!r}")
    if bits == 4:
        if group_size not in ops.INT4_GROUP_SIZES:
            raise ValueError(f"{who}: group_size must be one of {ops.INT4_GROUP_SIZES}, "
                             f"got {group_size!r}")
        if in_features % group_size:
            fits = [g for g in ops.INT4_GROUP_SIZES if in_features % g == 0]
            raise ValueError(f"{who}: in_features={in_features} is not a multiple of "
                             f"group_size={group_size} (int4 groups run along the input "
                             f"features); group sizes that fit: {fits or 'none'}")


def quantize_activations_int8(x: Tensor):
    """(x_q int8, s_x f32 0-d Tensor), per tensor, on x's device: s_x = max|x| / 127,
    x_q = clip(rint(x / s_x), -127, 127), rint rounding half to even. No gradient."""
    x = x.detach().float()
    s = x.abs().max().maximum(_TINY) / 127.0
    y = x / s
    q = ((y + ROUND_MAGIC) - ROUND_MAGIC).clip(-127.0, 127.0).cast(int8)
    return q, s


class _W8A8Matmul(Function):
    """y = f32(x_q · W_q) · (s_x · s_w) for x [..., K] float and W_q an int8 [K, N] view;
    backward: straight-through for the activation rounding, dx = g · (s_w · W_q)ᵀ."""
    @staticmethod
    def forward(ctx, x, w_kn, w_scale):
        ctx.save_for_backward(w_kn, w_scale)
        q, s = quantize_activations_int8(x)
        return ops.matmul_int8(q, w_kn, 1.0) * (s * w_scale)

    @staticmethod
    def backward(ctx, g):
        w_kn, w_scale = ctx.saved_tensors
        w = w_kn.float() * w_scale                              # dequantized [K, N]
        return g.float() @ w.T, None, None


def _int8_weight(w_nk: np.ndarray, device):
    """Per-tensor int8 of an [N, K] weight -> (int8 [N, round_up(K, 16)] Tensor, scale
    Tensor f32 [1]); the padding columns are zero."""
    q, scale = quant.quantize_int8(w_nk)
    q = q.numpy()
    n, k = q.shape
    kp = -(-k // 16) * 16
    if kp != k:
        q = np.concatenate([q, np.zeros((n, kp - k), np.int8)], axis=1)
    return Tensor(q, device=device), Tensor(np.array([scale], np.float32), device=device)


def _kn_view(w_pad: Tensor, k: int) -> Tensor:
    """The [K, N] operand of the int8 ops: a transposed view of the [N, Kp] weight."""
    return (w_pad if w_pad.shape[1] == k else w_pad[:, :k]).T


def _host(t: Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def _bias_copy(b):
    return None if b is None else b.detach().float().realize().requires_grad_(b.requires_grad)


class QuantLinear(Module):
    """A frozen, quantized nn.Linear for inference: y = x · Wᵀ + bias with W int8 (bits=8,
    W8A8, activations quantized per call) or int4 (bits=4, W4A16, f16 activations);
    see the module docstring. Build one with `QuantLinear.from_linear(linear, bits)`.

    Buffers: bits=8 `weight_q` int8 [out, round_up(in, 16)] and `weight_scale` f32 [1];
    bits=4 `weight_packed` uint32 [out, in/8] and `weight_scales` f16
    [in/group_size, out]. Parameter: `bias` f32 [out] (or None)."""

    def __init__(self, in_features: int, out_features: int, bits: int = 8,
                 group_size: int = 128, bias: bool = True, device=None):
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"QuantLinear: in_features and out_features must be positive, "
                             f"got {in_features} and {out_features}")
        _check_bits("QuantLinear", bits, group_size, in_features)
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, (group_size if bits == 4 else None)
        n, k = out_features, in_features
        if bits == 8:
            kp = -(-k // 16) * 16
            self.register_buffer("weight_q", Tensor.zeros(n, kp, dtype=int8, device=device))
            self.register_buffer("weight_scale", Tensor.ones(1, device=device))
        else:
            self.register_buffer("weight_packed", Tensor.zeros(n, k // 8, dtype=uint32,
                                                               device=device))
            self.register_buffer("weight_scales", Tensor.zeros(k // group_size, n,
                                                               dtype=float16, device=device))
        self.bias = Tensor.zeros(n, device=device, requires_grad=True) if bias else None

    @classmethod
    def from_linear(cls, linear: Linear, bits: int = 8, group_size: int = 128) -> "QuantLinear":
        """Quantize a (trained) nn.Linear; the new layer is on the same device and shares
        nothing with it (the bias is copied, keeping its requires_grad)."""
        if not isinstance(linear, Linear):
            raise TypeError(f"QuantLinear.from_linear: need an nn.Linear, got "
                            f"{type(linear).__name__}")
        k, n = linear.in_features, linear.out_features
        _check_bits("QuantLinear.from_linear", bits, group_size, k)
        dev = linear.weight.device
        self = cls.__new__(cls)
        self.in_features, self.out_features = k, n
        self.bits, self.group_size = bits, (group_size if bits == 4 else None)
        w = _host(linear.weight)                                      # [N, K]
        if bits == 8:
            q, scale = _int8_weight(w, dev)
            self.register_buffer("weight_q", q)
            self.register_buffer("weight_scale", scale)
        else:
            packed, scales = quant.quantize_int4(np.ascontiguousarray(w.T), group_size,
                                                 device=dev)
            self.register_buffer("weight_packed", packed)
            self.register_buffer("weight_scales", scales)
        self.bias = _bias_copy(linear.bias)
        return self

    def dequantized_weight(self) -> Tensor:
        """The float32 [out, in] weight this layer multiplies by (int8: s_w · W_q; int4:
        the f16-rounded dequantized weight of matmul_int4)."""
        if self.bits == 8:
            return _kn_view(self.weight_q, self.in_features).T.float() * self.weight_scale
        return ops.dequantize_int4_tensor(self.weight_packed, self.weight_scales,
                                          self.group_size).float().T

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"QuantLinear: input of shape {x.shape} needs a last dimension "
                             f"of {self.in_features}")
        if x.ndim == 1:
            return self.forward(x.unsqueeze(0))[0]
        if self.bits == 8:
            y = _W8A8Matmul.apply(x, _kn_view(self.weight_q, self.in_features),
                                  self.weight_scale)
        else:
            y = ops.matmul_int4(x.half(), self.weight_packed, self.weight_scales,
                                self.group_size)
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}{g}, bias={self.bias is not None}")


class QuantCausalSelfAttention(Module):
    """CausalSelfAttention with quantized projections: q, k, v from one fused
    qkv_project_int8/int4 call (x cast to f16, f16 outputs, then f32 + c_attn's bias),
    c_proj a QuantLinear. Build with `QuantCausalSelfAttention.from_attention(attn, bits)`.

    Buffers: bits=8 `w_q`, `w_k`, `w_v` int8 [n_embd, round_up(n_embd, 16)] and
    `qkv_scale` f32 [3]; bits=4 `wq_packed`, `wk_packed`, `wv_packed` uint32
    [n_embd, n_embd/8] and `sq`, `sk`, `sv` f16 [n_embd/group_size, n_embd].
    Parameter: `c_attn_bias` f32 [3·n_embd] (or None)."""

    def __init__(self):     # use from_attention
        self._scale_cache = (None, None)

    @classmethod
    def from_attention(cls, attn: CausalSelfAttention, bits: int = 8,
                       group_size: int = 128) -> "QuantCausalSelfAttention":
        if not isinstance(attn, CausalSelfAttention):
            raise TypeError(f"QuantCausalSelfAttention.from_attention: need a "
                            f"CausalSelfAttention, got {type(attn).__name__}")
        c = attn.n_embd
        _check_bits("QuantCausalSelfAttention.from_attention", bits, group_size, c)
        self = cls()
        self.n_embd, self.n_head, self.dropout, self.impl = c, attn.n_head, attn.dropout, \
            attn.impl
        self.bits, self.group_size = bits, (group_size if bits == 4 else None)
        self.training = attn.training
        dev = attn.c_attn.weight.device
        w = _host(attn.c_attn.weight)                                 # [3C, C]: q, k, v rows
        parts = [w[i * c:(i + 1) * c] for i in range(3)]              # each [N=C, K=C]
        if bits == 8:
            scales = []
            for name, p in zip(("w_q", "w_k", "w_v"), parts):
                q, s = _int8_weight(p, dev)
                self.register_buffer(name, q)
                scales.append(s.numpy()[0])
            self.register_buffer("qkv_scale", Tensor(np.array(scales, np.float32), device=dev))
        else:
            for (wn, sn), p in zip((("wq_packed", "sq"), ("wk_packed", "sk"),
                                    ("wv_packed", "sv")), parts):
                packed, sc = quant.quantize_int4(np.ascontiguousarray(p.T), group_size,
                                                 device=dev)
                self.register_buffer(wn, packed)
                self.register_buffer(sn, sc)
        self.c_attn_bias = _bias_copy(attn.c_attn.bias)
        self.c_proj = QuantLinear.from_linear(attn.c_proj, bits, group_size)
        self.resid_dropout = Dropout(attn.resid_dropout.p)
        self.resid_dropout.training = attn.resid_dropout.training
        return self

    def _int8_scales(self):
        """qkv_project_int8 takes host floats: read the `qkv_scale` buffer once (again
        only after it is replaced, e.g. by load_state_dict)."""
        lb = self.qkv_scale.lazydata
        if self._scale_cache[0] is not lb:
            self._scale_cache = (lb, tuple(float(v) for v in self.qkv_scale.numpy()))
        return self._scale_cache[1]

    def qkv(self, x: Tensor):
        """(q, k, v) float32 [..., n_embd] for x [..., n_embd]."""
        xh = x.half()
        if self.bits == 8:
            c = self.n_embd
            outs = ops.qkv_project_int8(xh, _kn_view(self.w_q, c), _kn_view(self.w_k, c),
                                        _kn_view(self.w_v, c), *self._int8_scales())
        else:
            outs = ops.qkv_project_int4(xh, self.wq_packed, self.wk_packed, self.wv_packed,
                                        self.sq, self.sk, self.sv, self.group_size)
        outs = [o.float() for o in outs]
        if self.c_attn_bias is not None:
            c = self.n_embd
            outs = [o + self.c_attn_bias[i * c:(i + 1) * c] for i, o in enumerate(outs)]
        return tuple(outs)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[2] != self.n_embd:
            raise ValueError(f"QuantCausalSelfAttention: input must be (batch, time, "
                             f"{self.n_embd}), got {x.shape}")
        q, k, v = self.qkv(x)
        y = _multi_head_attention(q, k, v, self.n_head, self.dropout, self.training, self.impl)
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self):
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"n_embd={self.n_embd}, n_head={self.n_head}, bits={self.bits}{g}"


def quantize(model: Module, bits: int = 8, group_size: int = 128,
             skip=("lm_head",)) -> Module:
    """A quantized copy of `model` for inference; `model` itself is unchanged.

    Every CausalSelfAttention becomes a QuantCausalSelfAttention (fused Q/K/V, quantized
    c_proj) and every other nn.Linear a QuantLinear, except the modules named in `skip`
    (dotted names, e.g. "lm_head") and Linears whose weight is shared with another module
    (GPT's lm_head is tied to the token embedding): those, and Embeddings, LayerNorms and
    all other modules, are copied in float (their tensors detached from the original, ties
    kept). bits=8: W8A8 Linears and W8A16 Q/K/V; bits=4: W4A16 with `group_size` (32, 64
    or 128; it must divide every quantized layer's input width)."""
    if bits not in BITS:
        raise ValueError(f"quantize: bits must be 8 or 4, got {bits!r}")
    counts = {}
    for _, t in model._named_tensors():
        counts[id(t)] = counts.get(id(t), 0) + 1
    tied = {i for i, c in counts.items() if c > 1}
    memo = {}

    def tensor(t):
        if id(t) not in memo:
            memo[id(t)] = t.detach().requires_grad_(t.requires_grad)
        return memo[id(t)]

    def convert(m, path):
        if id(m) in memo:
            return memo[id(m)]
        try:
            if isinstance(m, CausalSelfAttention) and path not in skip:
                new = QuantCausalSelfAttention.from_attention(m, bits, group_size)
            elif isinstance(m, Linear) and path not in skip and id(m.weight) not in tied:
                new = QuantLinear.from_linear(m, bits, group_size)
                new.training = m.training
            else:
                new = None
        except ValueError as e:
            raise ValueError(f"quantize: {path or type(m).__name__}: {e}") from None
        if new is None:
            new = copy.copy(m)
            for name, value in vars(m).items():
                if name.startswith("_"):
                    continue
                sub = f"{path}.{name}" if path else name
                if isinstance(value, (list, tuple)):
                    setattr(new, name, type(value)(item(v, f"{sub}.{i}")
                                                   for i, v in enumerate(value)))
                else:
                    setattr(new, name, item(value, sub))
        memo[id(m)] = new
        return new

    def item(v, path):
        if isinstance(v, Module):
            return convert(v, path)
        if isinstance(v, Tensor):
            return tensor(v)
        return v

    return convert(model, "")


__all__ = ["QuantLinear", "QuantCausalSelfAttention", "quantize", "quantize_activations_int8"]
