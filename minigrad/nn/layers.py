"""Basic layers: Linear, Embedding, LayerNorm, Dropout (PyTorch layouts and initialisations).

Parameters are drawn with `Tensor.rand/randn`, so `mg.manual_seed` decides them.
"""
from __future__ import annotations

import math

from .. import ops
from ..dtype import bfloat16, float16
from ..tensor import Tensor
from .module import Module


def _param(t: Tensor) -> Tensor:
    """An initial value, computed now and marked trainable."""
    return t.realize().requires_grad_(True)


class Linear(Module):
    """y = x @ weight.T + bias, weight (out_features, in_features). Both are initialised
    U(-1/sqrt(in_features), 1/sqrt(in_features)), as in PyTorch.

    `compute` picks the precision of the product (the weights stay float32):
    "auto" (the default, `Linear.default_compute`) is bfloat16 tensor cores on CUDA
    (`mg.ops.matmul_tc_bf16_async`, f32 accumulate and output) and float32 on the CPU;
    "float32", "bfloat16" or "float16" force one everywhere. Set
    `mg.nn.Linear.default_compute = "float32"` to switch every layer."""

    default_compute = "auto"

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 compute: str | None = None):
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: in_features and out_features must be positive, got "
                             f"{in_features} and {out_features}")
        if compute not in (None, *_COMPUTE):
            raise ValueError(f"Linear: compute must be one of {tuple(_COMPUTE)}, got "
                             f"{compute!r}")
        self.in_features, self.out_features, self.compute = in_features, out_features, compute
        bound = 1 / math.sqrt(in_features)
        self.weight = _param(Tensor.rand(out_features, in_features) * (2 * bound) - bound)
        self.bias = _param(Tensor.rand(out_features) * (2 * bound) - bound) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"Linear: input of shape {x.shape} needs a last dimension of "
                             f"{self.in_features}")
        compute = self.compute or Linear.default_compute
        if compute == "auto":
            compute = "bfloat16" if x.device == "cuda" else "float32"
        op = _COMPUTE[compute]
        if op is None:
            y = x @ self.weight.T
        else:       # tensor cores read weight.T in place (a transposed view, no copy)
            dtype = bfloat16 if op is ops.matmul_tc_bf16_async else float16
            y = op(x.cast(dtype), self.weight.cast(dtype).T)
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


_COMPUTE = {"auto": None, "float32": None, "bfloat16": ops.matmul_tc_bf16_async,
            "float16": ops.matmul_tc_async}


class Embedding(Module):
    """A table of `num` vectors of size `dim`, initialised N(0, 1); forward is weight[idx]."""

    def __init__(self, num: int, dim: int):
        if num <= 0 or dim <= 0:
            raise ValueError(f"Embedding: num and dim must be positive, got {num} and {dim}")
        self.num, self.dim = num, dim
        self.weight = _param(Tensor.randn(num, dim))

    def forward(self, idx) -> Tensor:
        return self.weight[idx]

    def extra_repr(self):
        return f"{self.num}, {self.dim}"


class LayerNorm(Module):
    """Normalise the last axis (or, for a tuple `dim`, the last len(dim) axes, as PyTorch's
    normalized_shape), then scale by `.weight` (ones) and shift by `.bias` (zeros)."""

    def __init__(self, dim, eps: float = 1e-5, bias: bool = True):
        shape = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
        if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0
                            for d in shape):
            raise ValueError(f"LayerNorm: dim must be a positive int or a tuple of them, "
                             f"got {dim!r}")
        self.dim, self.eps, self._shape = dim, eps, shape
        self.weight = _param(Tensor.ones(*shape))
        self.bias = _param(Tensor.zeros(*shape)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        n = len(self._shape)
        if x.shape[-n:] != self._shape or x.ndim < n:
            raise ValueError(f"LayerNorm: input of shape {x.shape} needs last dimensions "
                             f"{self._shape}")
        y = x.layernorm(-1 if n == 1 else tuple(range(-n, 0)), self.eps) * self.weight
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    """Zero elements with probability p (scaling the rest by 1/(1-p)) while training."""

    def __init__(self, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return x.dropout(self.p, training=self.training)

    def extra_repr(self):
        return f"p={self.p}"
