"""Quantization tools (`mg.quant`): the recipes and the int4 packing of docs/ops.md.

int8, per tensor:   s = max|w| / 127,  q = clip(round(w / s), -127, 127)
int4, per (group of `group_size` rows of K, column n):
                    s = max|w| / 7,    q = clip(round(w / s), -8, 7)
int4 packing: a [K, N] weight becomes uint32 [N, K//8]; word k//8 of row n holds
q[k, n] in bits 4*(k%8) .. 4*(k%8)+3 (two's complement nibbles, nibble 0 lowest).
Rounding is NumPy's (half to even); every element satisfies |w - ŵ| <= s/2.
Quantization runs on the host (it is done once per weight).
"""
from __future__ import annotations

import numpy as np

from .backend import reference
from .ops import check_int4_group
from .tensor import Tensor


def _host(w, name, ndim=None):
    arr = w.float().numpy() if isinstance(w, Tensor) else np.asarray(w, dtype=np.float32)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: need a {ndim}-D weight, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: the weight has NaN or inf entries")
    return arr


def _device(w, device):
    return device or (w.device if isinstance(w, Tensor) else "cpu")


def quantize_int8(w, device=None):
    """-> (int8 Tensor of w's shape, scale: float) with w ≈ q * scale."""
    arr = _host(w, "quantize_int8")
    scale = float(np.abs(arr).max()) / 127 if arr.size else 0.0
    scale = scale or 1.0                      # an all-zero weight: any scale works
    q = np.clip(np.round(arr / np.float32(scale)), -127, 127).astype(np.int8)
    return Tensor(q, device=_device(w, device)), scale


def quantize_int4(w, group_size=128, device=None):
    """[K, N] weight -> (packed uint32 [N, K//8], scales float16 [K//group_size, N])."""
    arr = _host(w, "quantize_int4", ndim=2)
    k, n = arr.shape
    check_int4_group("quantize_int4", k, group_size)
    groups = arr.reshape(k // group_size, group_size, n)
    scales = (np.abs(groups).max(axis=1) / 7).astype(np.float16)       # [K//G, N]
    # the kernel multiplies by the f16 scale, so quantize against that exact value
    s = scales.astype(np.float32)
    s = np.where(s == 0, 1, s)
    q = np.clip(np.round(groups / s[:, None, :]), -8, 7).astype(np.int8).reshape(k, n)
    return (Tensor(pack_int4(q), device=_device(w, device)),
            Tensor(scales, device=_device(w, device)))


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int values in -8..7, [K, N] -> uint32 [N, K//8] (the layout above)."""
    k, n = q.shape
    if k % 8:
        raise ValueError(f"pack_int4: K={k} must be a multiple of 8")
    nibbles = (q.T.astype(np.int64) & 0xF).astype(np.uint32).reshape(n, k // 8, 8)
    shifts = np.arange(8, dtype=np.uint32) * 4
    return np.bitwise_or.reduce(nibbles << shifts, axis=2).astype(np.uint32)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """uint32 [N, K//8] -> int8 [K, N] in -8..7."""
    return reference.unpack_int4(np.asarray(packed, dtype=np.uint32))


def dequantize_int4(packed, scales, group_size=128):
    """-> float32 [K, N]: f16(f16(q) * scale), the exact weight matmul_int4 uses."""
    p = packed.numpy() if isinstance(packed, Tensor) else np.asarray(packed, np.uint32)
    s = scales.numpy() if isinstance(scales, Tensor) else np.asarray(scales, np.float16)
    k = p.shape[1] * 8
    check_int4_group("dequantize_int4", k, group_size)
    if s.shape != (k // group_size, p.shape[0]):
        raise ValueError(f"dequantize_int4: scales must be [K//group_size, N] = "
                         f"[{k // group_size}, {p.shape[0]}], got {s.shape}")
    w = reference.dequantize_int4(p, s.astype(np.float16), group_size).astype(np.float32)
    return Tensor(w, device=packed.device if isinstance(packed, Tensor) else "cpu")
