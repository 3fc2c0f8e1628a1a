"""The NumPy backend: runs anywhere, and is the oracle the CUDA backend is tested against.

Buffers are `np.ndarray`s. Movement ops return NumPy views where NumPy can.
bf16 is `ml_dtypes.bfloat16`; arithmetic on f16/bf16 is done in f32 and rounded
back, so every op rounds once, as a GPU kernel computing in f32 does.
"""
from __future__ import annotations

import numpy as np

from ..dtype import DType, bfloat16
from . import reference

_LOW_FLOATS = (np.dtype(np.float16), np.dtype(bfloat16.np))


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype in _LOW_FLOATS else x


def _check_index(idx: np.ndarray, n: int):
    """gather / scatter_add: every index in [-n, n) (the CUDA kernels flag the same)."""
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)]
        raise IndexError(
            f"index {bad.flat[0]} is out of range for an axis of size {n} ({bad.size} such): "
            f"x[idx] or weight[idx] (an Embedding) with an index >= the axis size, or a "
            f"cross_entropy target outside [0, classes) that is not ignore_index")


def _sigmoid(x):
    # exp of a negative number only: no overflow warnings for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


_UNARY = {
    "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "recip": np.reciprocal, "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
    "sigmoid": _sigmoid, "abs": np.abs, "sign": np.sign, "not": np.logical_not,
}
_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum,
    "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "eq": np.equal, "ne": np.not_equal,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
}
_REDUCE = {"sum": np.sum, "max": np.max, "min": np.min}


def _divide(a, b):
    if a.dtype.kind in "iu":   # integer division truncates toward zero, like C
        return np.trunc(np.divide(a, np.where(b == 0, 1, b))).astype(a.dtype)
    return np.divide(a, b)


def _keep_freed_memory():
    """Ask glibc to keep freed large blocks instead of returning them to the OS: a
    training step frees and reallocates the same few-MB arrays every step, and with
    glibc's adaptive mmap threshold that can mean thousands of page faults per step
    (measured: 83 ms instead of 36 ms a step). No effect elsewhere."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)     # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)       # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


class NumpyBackend:
    name = "cpu"

    def __init__(self):
        _keep_freed_memory()

    # -- host <-> buffer ------------------------------------------------------
    def from_numpy(self, arr: np.ndarray) -> np.ndarray:
        return arr

    def to_numpy(self, buf: np.ndarray) -> np.ndarray:
        return np.array(buf, order="C")     # a copy: the caller may write to it

    def synchronize(self):
        pass

    # -- creation -------------------------------------------------------------
    def full(self, shape, value, dtype: DType):
        return np.broadcast_to(np.array(value, dtype=dtype.np), shape)   # a free view

    def arange(self, start, stop, step, dtype: DType):
        return np.arange(start, stop, step).astype(dtype.np)

    def random(self, dist, shape, dtype: DType, seed: int, counter: int):
        # counter-based: (seed, counter) names the stream, so results do not depend on
        # what else was drawn before or in which order graphs are realized
        gen = np.random.Generator(np.random.Philox(key=seed, counter=counter))
        out = gen.random(shape, dtype=np.float32) if dist == "uniform" else \
            gen.standard_normal(shape, dtype=np.float32)
        return out.astype(dtype.np)

    # -- elementwise ----------------------------------------------------------
    def unary(self, op, x):
        with np.errstate(all="ignore"):
            return _UNARY[op](_f32(x)).astype(x.dtype, copy=False)

    def binary(self, op, a, b):
        with np.errstate(all="ignore"):
            fn = _divide if op == "div" else _BINARY[op]
            out = fn(_f32(a), _f32(b))
        return out if out.dtype == np.bool_ else out.astype(a.dtype, copy=False)

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def cast(self, dtype: DType, x):
        with np.errstate(all="ignore"):       # overflow to inf is the defined result
            if dtype.kind in "iu" and x.dtype.kind == "f":
                x = np.trunc(_f32(x))
            return x.astype(dtype.np)

    def fused(self, tree, *bufs):
        """A fused elementwise group (lazy.fuse), op by op: results as unfused."""
        if isinstance(tree, int):
            return bufs[tree]
        op, arg, _, *kids = tree
        return getattr(self, op)(*arg, *[self.fused(k, *bufs) for k in kids])

    # -- reductions -----------------------------------------------------------
    def reduce(self, op, axes, x):
        out = _REDUCE[op](_f32(x), axis=axes, keepdims=True)
        return out.astype(x.dtype, copy=False)

    def argmax(self, axis, x):
        return np.expand_dims(np.argmax(_f32(x), axis=axis), axis).astype(np.int64)

    def matmul(self, a, b):
        out = np.matmul(_f32(a), _f32(b))
        return out.astype(a.dtype, copy=False)

    # -- movement -------------------------------------------------------------
    def reshape(self, shape, x):
        return x.reshape(shape)

    def permute(self, order, x):
        return x.transpose(order)

    def expand(self, shape, x):
        return np.broadcast_to(x, shape)

    def shrink(self, slices, x):
        return x[tuple(slice(*s) for s in slices)]

    def pad(self, pads, value, x):
        return np.pad(x, pads, constant_values=value)

    def contiguous(self, x):
        return x if x.flags.c_contiguous else np.array(x, order="C")

    def cat(self, axis, *xs):
        return np.concatenate(xs, axis=axis)

    def gather(self, axis, x, idx):
        _check_index(idx, x.shape[axis])
        return np.take(x, idx, axis=axis)

    def scatter_add(self, axis, size, src, idx):
        _check_index(idx, size)
        shape = src.shape[:axis] + (size,) + src.shape[axis + idx.ndim:]
        out = np.zeros(shape, dtype=np.float32 if src.dtype in _LOW_FLOATS else src.dtype)
        # move the indexed axis to the front so np.add.at sees (idx..., rest...)
        src_f = np.moveaxis(_f32(src), tuple(range(axis, axis + idx.ndim)),
                            tuple(range(idx.ndim)))
        np.add.at(np.moveaxis(out, axis, 0), idx, src_f)
        return out.astype(src.dtype, copy=False)

    # -- the twelve ops -------------------------------------------------------
    def kernel(self, name, params, *bufs):
        if name.endswith("_causal"):
            return getattr(reference, name[:-len("_causal")])(*bufs, causal=True, **params)
        return getattr(reference, name)(*bufs, **params)

    # -- fused optimizer step -------------------------------------------------
    def adamw(self, c1, c2, decay, step, eps, p, g, m, v):
        """(p', m', v') of one AdamW step in float32: the float32 operations of
        optim.AdamW's composed graph, in its order (so results are bit-identical):
        m' = m + (g - m)*c1, v' = v + (g*g - v)*c2,
        p' = p*decay - (m'*step) / (sqrt(v') + eps), rounded once to p's dtype."""
        f = np.float32
        c1, c2, decay, step, eps = f(c1), f(c2), f(decay), f(step), f(eps)
        g, m, v = _f32(g), m.astype(np.float32, copy=False), v.astype(np.float32, copy=False)
        with np.errstate(all="ignore"):
            m = m + (g - m) * c1
            v = v + (g * g - v) * c2
            w = _f32(p)
            if decay != 1:
                w = w * decay
            out = w - m * step / (np.sqrt(v) + eps)
        return out.astype(p.dtype, copy=False), m, v
