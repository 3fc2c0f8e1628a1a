"""Tensor: the user-facing object. It holds a lazy graph node (`lazydata`) and, when it
came from a differentiable op, the autograd context that made it (`_ctx`).

Everything here is either a thin call into a `Function` from `functions.py`, or a
composite written with other Tensor methods (softmax, layernorm, cross-entropy,
indexing, ...), which then gets its gradient for free. Shape and dtype errors are
raised here, while the expression is built.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import autograd, lazy
from . import functions as F
from .backend import const_key
from .device import canonical, get_backend
from .dtype import (DType, bool_, bfloat16, float16, float32, int32, int64, promote,
                    to_dtype)

_random_state = {"seed": 0, "calls": 0}


def manual_seed(seed: int) -> None:
    """Make rand/randn/dropout reproducible: the same seed gives the same numbers."""
    if lazy.capture is not None:
        raise RuntimeError("mg.jit: manual_seed inside a captured function is not supported "
                           "(a replay would not reseed); call it before the jitted function")
    _random_state["seed"], _random_state["calls"] = int(seed), 0


def draw_seed() -> int:
    """A 64-bit seed for a kernel that makes its own random numbers (flash attention's
    dropout): the next draw of the generator that rand/randn/dropout use, so
    manual_seed makes it reproducible."""
    _random_state["calls"] += 1
    return mix_seed(_random_state["seed"], _random_state["calls"])


def mix_seed(seed: int, call: int) -> int:
    """draw_seed's value for draw number `call` after manual_seed(seed): (seed, call)
    mixed by two splitmix64 rounds."""
    m64 = 0xFFFFFFFFFFFFFFFF
    x = (seed * 0x9E3779B97F4A7C15 + call * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & m64
    for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x = ((x ^ (x >> shift)) * mul) & m64
    return x ^ (x >> 31)


_SCALARS: dict = {}     # (device, dtype, shape, const_key(value)) -> Tensor of its "full" node


def _scalar(shape: tuple, value, dtype: DType, device: str) -> "Tensor":
    """A Python scalar operand broadcast to `shape`: a Tensor of a "full" node, shared by
    every op with the same constant. Once one schedule has run the node (a stride-0 view
    of one element on either backend), `x * 1.0001` in a loop schedules and runs only the
    multiply. Sharing is safe: a node never changes once realized, and the Tensor stays
    inside the ops (operands of Functions and nodes; `_const` gives callers their own)."""
    # const_key: the same rule as the CUDA backend's cache of constants (0.0 and -0.0
    # apart, NaN equal to itself)
    key = (device, dtype, shape, const_key(value))
    t = _SCALARS.get(key)
    if t is None:
        if len(_SCALARS) >= 4096:
            _SCALARS.clear()
        t = _SCALARS[key] = Tensor._from_lazy(
            lazy.node("full", (shape, value, dtype), (), shape, dtype, device))
    return t


def _shape_arg(shape) -> tuple:
    """Accept f(2, 3) and f((2, 3)) alike."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(map(int, shape))


def _new_shape(shape, name) -> tuple:
    """A shape for a new tensor: non-negative ints."""
    shape = _shape_arg(shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"{name}: shape {shape} has a negative dimension")
    return shape


class Tensor:
    __slots__ = ("lazydata", "requires_grad", "grad", "_ctx", "_out_index", "__weakref__")
    __array_priority__ = 100          # numpy_array + tensor -> Tensor.__radd__
    training = True                   # global default for Tensor.dropout

    def __init__(self, data, dtype=None, device=None, requires_grad=False):
        device = canonical(device)
        dtype = None if dtype is None else to_dtype(dtype)
        if isinstance(data, Tensor):
            data = data.numpy()
        if isinstance(data, lazy.LazyBuffer):
            self.lazydata = data
        else:
            arr = np.asarray(data)
            if dtype is None:
                # float64 data becomes float32 unless asked for, as in torch.tensor
                dtype = float32 if arr.dtype == np.float64 else to_dtype(arr.dtype) \
                    if arr.dtype.kind in "biuf" or arr.dtype == bfloat16.np else None
                if dtype is None:
                    raise TypeError(f"Tensor: cannot make a tensor from data of NumPy "
                                    f"dtype {arr.dtype}")
            arr = np.array(arr, dtype=dtype.np, copy=True)
            buf = get_backend(device).from_numpy(arr)
            self.lazydata = lazy.constant(buf, arr.shape, dtype, device)
        self.grad: Tensor | None = None
        self._ctx = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _from_lazy(cls, lb) -> "Tensor":
        t = cls.__new__(cls)
        t.lazydata, t.grad, t._ctx, t.requires_grad = lb, None, None, False
        return t

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and not self.dtype.is_float:
            raise TypeError(f"requires_grad: only float tensors can require gradients, "
                            f"this one is {self.dtype.name}")
        self.requires_grad = flag
        return self

    # ------------------------------------------------------------ factories --
    @staticmethod
    def full(shape, value, dtype=None, device=None, requires_grad=False) -> "Tensor":
        shape = _new_shape((shape,) if isinstance(shape, int) else (shape,), "full")
        dtype = to_dtype(dtype) if dtype is not None else \
            (bool_ if isinstance(value, bool) else int64 if isinstance(value, int) else float32)
        device = canonical(device)
        t = Tensor._from_lazy(lazy.node("full", (shape, value, dtype), [], shape, dtype, device))
        return t.requires_grad_(requires_grad)

    @staticmethod
    def zeros(*shape, dtype=None, device=None, requires_grad=False) -> "Tensor":
        return Tensor.full(_shape_arg(shape), 0, dtype or float32, device, requires_grad)

    @staticmethod
    def ones(*shape, dtype=None, device=None, requires_grad=False) -> "Tensor":
        return Tensor.full(_shape_arg(shape), 1, dtype or float32, device, requires_grad)

    @staticmethod
    def empty(*shape, dtype=None, device=None, requires_grad=False) -> "Tensor":
        return Tensor.zeros(*shape, dtype=dtype, device=device, requires_grad=requires_grad)

    @staticmethod
    def zeros_like(t, dtype=None, device=None, requires_grad=False) -> "Tensor":
        return Tensor.zeros(*t.shape, dtype=dtype or t.dtype, device=device or t.device,
                            requires_grad=requires_grad)

    @staticmethod
    def ones_like(t, dtype=None, device=None, requires_grad=False) -> "Tensor":
        return Tensor.ones(*t.shape, dtype=dtype or t.dtype, device=device or t.device,
                           requires_grad=requires_grad)

    @staticmethod
    def arange(start, stop=None, step=1, dtype=None, device=None) -> "Tensor":
        if stop is None:
            start, stop = 0, start
        if step == 0:
            raise ValueError("arange: step must not be zero")
        if dtype is None:
            dtype = int64 if all(isinstance(v, int) for v in (start, stop, step)) else float32
        dtype, device = to_dtype(dtype), canonical(device)
        n = max(0, math.ceil((stop - start) / step))
        return Tensor._from_lazy(lazy.node("arange", (start, stop, step, dtype), [], (n,),
                                           dtype, device))

    @staticmethod
    def _random(dist, shape, dtype, device, requires_grad) -> "Tensor":
        dtype, device = to_dtype(dtype or float32), canonical(device)
        if not dtype.is_float:
            raise TypeError(f"{'rand' if dist == 'uniform' else 'randn'}: dtype must be a "
                            f"float dtype, got {dtype.name}")
        _random_state["calls"] += 1
        arg = (dist, shape, dtype, _random_state["seed"], _random_state["calls"])
        t = Tensor._from_lazy(lazy.node("random", arg, [], shape, dtype, device))
        return t.requires_grad_(requires_grad)

    @staticmethod
    def rand(*shape, dtype=None, device=None, requires_grad=False) -> "Tensor":
        """Uniform on [0, 1)."""
        return Tensor._random("uniform", _new_shape(shape, "rand"), dtype, device, requires_grad)

    @staticmethod
    def randn(*shape, dtype=None, device=None, requires_grad=False) -> "Tensor":
        """Standard normal."""
        return Tensor._random("normal", _new_shape(shape, "randn"), dtype, device, requires_grad)

    # ----------------------------------------------------------- attributes --
    shape = property(lambda self: self.lazydata.shape)
    dtype = property(lambda self: self.lazydata.dtype)
    device = property(lambda self: self.lazydata.device)
    ndim = property(lambda self: len(self.lazydata.shape))
    is_leaf = property(lambda self: self._ctx is None)

    def numel(self) -> int:
        return math.prod(self.shape)

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    # -------------------------------------------------- leaving the graph --
    def realize(self) -> "Tensor":
        lazy.realize(self.lazydata)
        return self

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (bf16 as ml_dtypes.bfloat16)."""
        self.realize()
        return get_backend(self.device).to_numpy(self.lazydata.realized)

    def __array__(self, dtype=None, copy=None):
        """np.asarray(t), np.array([t1, t2]), Tensor([t1, t2]): the values (a copy)."""
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def item(self):
        if self.numel() != 1:
            raise ValueError(f"item: only one-element tensors convert to a Python "
                             f"scalar, this one has shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        arr = self.numpy()
        return (arr.astype(np.float32) if self.dtype == bfloat16 else arr).tolist()

    def __repr__(self):
        state = "realized" if self.lazydata.realized is not None else \
            f"lazy, op={self.lazydata.describe()}"
        grad = ", requires_grad=True" if self.requires_grad else ""
        return (f"<Tensor shape={self.shape} dtype={self.dtype.name} device={self.device} "
                f"{state}{grad}>")

    def __str__(self):
        with np.printoptions(precision=4, threshold=200, edgeitems=3):
            return f"tensor({self.numpy()}, dtype={self.dtype.name}, device={self.device})"

    def __bool__(self):
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __hash__(self):
        return id(self)

    def detach(self) -> "Tensor":
        return Tensor._from_lazy(self.lazydata)

    def assign(self, x) -> "Tensor":
        """Replace this tensor's data (same shape, dtype, device), keeping the object:
        how optimizers update parameters in place."""
        x = x if isinstance(x, Tensor) else Tensor(x, dtype=self.dtype, device=self.device)
        if x.shape != self.shape or x.device != self.device:
            raise ValueError(f"assign: need shape {self.shape} on {self.device}, got "
                             f"{x.shape} on {x.device}")
        if lazy.assigned is not None:   # mg.jit: the new value must land in the old buffer
            lazy.assigned.append((self, self.lazydata.realized))
        self.lazydata = (x.cast(self.dtype) if x.dtype != self.dtype else x).lazydata
        return self

    def to(self, arg=None, *, device=None, dtype=None) -> "Tensor":
        """`.to("cuda")`, `.to("cpu")` or `.to(mg.float16)`; also, as in PyTorch,
        `.to(device=..., dtype=...)` (either or both)."""
        device, dtype = to_args("to", arg, device, dtype)
        out = self if dtype is None else self.cast(dtype)
        if device is None or device == out.device:
            return out
        get_backend(device)         # an unusable device fails here, when built, saying why
        return _Transfer.apply(out, device)

    def cast(self, dtype) -> "Tensor":
        dtype = to_dtype(dtype)
        return self if dtype is self.lazydata.dtype else F.Cast.apply(self, dtype)

    def float(self): return self.cast(float32)
    def half(self): return self.cast(float16)
    def bfloat16(self): return self.cast(bfloat16)
    def long(self): return self.cast(int64)
    def int(self): return self.cast(int32)
    def contiguous(self): return F.Contiguous.apply(self)

    # ------------------------------------------------------------ autograd --
    def backward(self, gradient=None, retain_graph=False) -> None:
        if gradient is None:
            if self.numel() != 1:
                raise RuntimeError(f"backward: gradient can be implicit only for a "
                                   f"one-element output, this one has shape {self.shape}")
            gradient = Tensor.ones_like(self)
        elif not isinstance(gradient, Tensor):
            gradient = Tensor(gradient, dtype=self.dtype, device=self.device)
        if gradient.shape != self.shape:
            raise ValueError(f"backward: gradient shape {gradient.shape} does not match "
                             f"tensor shape {self.shape}")
        autograd.backward(self, gradient, retain_graph)

    # ----------------------------------------------------- broadcasting --
    def _scalar_dtype(self, value) -> DType:
        """Python scalars do not raise a tensor's dtype: float16 * 2.5 stays float16,
        int * 2.5 becomes float32, bool + 1 becomes int64."""
        dtype = self.lazydata.dtype
        if isinstance(value, bool):
            return dtype
        if isinstance(value, int):
            return dtype if dtype is not bool_ else int64
        return dtype if dtype.is_float else float32

    def _const(self, value, dtype=None, shape=()) -> "Tensor":
        """A Python scalar as a tensor on this one's device."""
        lb = _scalar(tuple(shape), value, dtype or self._scalar_dtype(value), self.device).lazydata
        return Tensor._from_lazy(lb)

    def _pair(self, other, name) -> tuple:
        """Both operands as tensors of one dtype and one (broadcast) shape."""
        if not isinstance(other, Tensor):
            if isinstance(other, np.generic) and other.dtype.kind in "biuf":
                other = other.item()        # a NumPy scalar counts as a Python one (PyTorch)
            if isinstance(other, (int, float, bool)):     # fast path: no broadcasting
                dtype = self._scalar_dtype(other)
                a = self if dtype is self.lazydata.dtype else self.cast(dtype)
                la = a.lazydata
                return a, _scalar(la.shape, other, dtype, la.device)
            else:
                other = Tensor(other, device=self.device)
        la, lb = self.lazydata, other.lazydata
        if lb.device != la.device:
            raise ValueError(f"{name}: operands are on different devices "
                             f"({self.device} and {other.device}); move one with .to()")
        if la.dtype is lb.dtype and la.shape == lb.shape:   # fast path: nothing to do
            return self, other
        dtype = la.dtype if la.dtype is lb.dtype else promote(la.dtype, lb.dtype)
        shape = la.shape if la.shape == lb.shape else broadcast_shape(la.shape, lb.shape, name)
        return self.cast(dtype)._broadcast_to(shape), other.cast(dtype)._broadcast_to(shape)

    def _broadcast_to(self, shape: tuple) -> "Tensor":
        """expand() to a shape broadcast_shape() has already checked (no re-validation)."""
        return self if self.lazydata.shape == shape else \
            self._movement(F.Expand, "expand", shape, shape)

    def _binary(self, fn, other, name, reverse=False, float_only=False):
        a, b = self._pair(other, name)
        if reverse:
            a, b = b, a
        if float_only and not a.lazydata.dtype.is_float:
            a, b = a.float(), b.float()
        if (a.requires_grad or b.requires_grad) and autograd._state.grad_enabled:
            return fn.apply(a, b)
        # no gradient will flow: just the node fn.forward makes (op `name`), without the
        # Function's bookkeeping: a quarter of a small op's Python, in eager scripts and
        # under no_grad
        la = a.lazydata
        return Tensor._from_lazy(lazy.node("binary", (name,), (la, b.lazydata), la.shape,
                                           la.dtype, la.device))

    def _movement(self, fn, op, arg, shape) -> "Tensor":
        """The view `op` (reshape, permute, expand) with argument `arg`, giving `shape`:
        through the Function `fn` when a gradient will flow, else just the node fn.forward
        makes, as _binary does (a `.T` or a broadcast costs a third of its Function)."""
        if self.requires_grad and autograd._state.grad_enabled:
            return fn.apply(self, arg)
        lb = self.lazydata
        return self._from_lazy(lazy.node(op, (arg,), (lb,), shape, lb.dtype, lb.device))

    def _compare(self, other, op):
        a, b = self._pair(other, op)
        return F._node("binary", (op,), [a, b], dtype=bool_)

    def _bitwise(self, other, op):
        """&, |, ^ of bool (logical) or integer (bitwise) tensors; no gradient."""
        a, b = self._pair(other, op)
        if a.dtype.is_float:
            sym = {"and": "&", "or": "|", "xor": "^"}[op]
            raise TypeError(f"'{sym}' needs bool or integer tensors, got {a.dtype.name}")
        return F._node("binary", (op,), [a, b])

    # ---------------------------------------------------------- arithmetic --
    def __add__(self, o): return self._binary(F.Add, o, "add")
    def __radd__(self, o): return self._binary(F.Add, o, "add", True)
    def __sub__(self, o): return self._binary(F.Sub, o, "sub")
    def __rsub__(self, o): return self._binary(F.Sub, o, "sub", True)
    def __mul__(self, o): return self._binary(F.Mul, o, "mul")
    def __rmul__(self, o): return self._binary(F.Mul, o, "mul", True)
    def __truediv__(self, o): return self._binary(F.Div, o, "div", float_only=True)
    def __rtruediv__(self, o): return self._binary(F.Div, o, "div", True, float_only=True)
    def __neg__(self):
        if self.dtype is bool_:
            raise TypeError("neg: '-' on a bool tensor is not supported; use ~t (logical not)")
        return F.Neg.apply(self)
    def __matmul__(self, o): return self.matmul(o)
    def __rmatmul__(self, o): return Tensor(o, device=self.device).matmul(self)
    def __lt__(self, o): return self._compare(o, "lt")
    def __le__(self, o): return self._compare(o, "le")
    def __gt__(self, o): return self._compare(o, "gt")
    def __ge__(self, o): return self._compare(o, "ge")
    # (None is no operand: `t == None` is False and `t != None` True, as in PyTorch)
    def __eq__(self, o): return NotImplemented if o is None else self._compare(o, "eq")
    def __ne__(self, o): return NotImplemented if o is None else self._compare(o, "ne")
    def __and__(self, o): return self._bitwise(o, "and")
    def __or__(self, o): return self._bitwise(o, "or")
    def __xor__(self, o): return self._bitwise(o, "xor")
    __rand__, __ror__, __rxor__ = __and__, __or__, __xor__       # (they commute)
    def __invert__(self): return F._node("unary", ("not",), [self.cast(bool_)])

    def __pow__(self, o):
        if isinstance(o, int) and not isinstance(o, bool) and o >= 0 and \
                not self.dtype.is_float:                    # int ** non-negative int stays int
            return self._binary(F.Pow, o, "pow")
        if isinstance(o, (int, float)) and not isinstance(o, bool):
            if o == 0.5:
                return self.sqrt()
            if o == int(o) and 1 <= abs(o) <= 4:    # x**3 as x*x*x: exact and much faster
                out = self
                for _ in range(int(abs(o)) - 1):
                    out = out * self
                return out if o > 0 else out.reciprocal()
        return self._binary(F.Pow, o, "pow", float_only=True)

    def __rpow__(self, o): return self._binary(F.Pow, o, "pow", True, float_only=True)

    def add(self, o): return self + o
    def sub(self, o): return self - o
    def mul(self, o): return self * o
    def div(self, o): return self / o
    def pow(self, o): return self ** o
    def maximum(self, o): return self._binary(F.Maximum, o, "maximum")
    def minimum(self, o): return self._binary(F.Minimum, o, "minimum")

    def where(self, a, b) -> "Tensor":
        """`Tensor.where(cond, a, b)`: a where cond is true, else b (cond is self)."""
        cond = self if self.dtype == bool_ else self != 0
        ref = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else cond
        a = a if isinstance(a, Tensor) else ref._const(a) if ref is not cond else \
            cond._const(a, float32 if isinstance(a, float) else None)
        b = b if isinstance(b, Tensor) else a._const(b)
        a, b = a._pair(b, "where")
        shape = broadcast_shape(cond.shape, a.shape, "where")
        return F.Where.apply(cond._broadcast_to(shape), a._broadcast_to(shape),
                             b._broadcast_to(shape))

    # --------------------------------------------------------------- unary --
    def _unary(self, fn):
        return fn.apply(self if self.dtype.is_float else self.float())

    def exp(self): return self._unary(F.Exp)
    def log(self): return self._unary(F.Log)
    def sqrt(self): return self._unary(F.Sqrt)
    def rsqrt(self): return self.sqrt().reciprocal()
    def reciprocal(self): return self._unary(F.Recip)
    def sin(self): return self._unary(F.Sin)
    def cos(self): return self._unary(F.Cos)
    def tanh(self): return self._unary(F.Tanh)
    def sigmoid(self): return self._unary(F.Sigmoid)
    def abs(self): return F.Abs.apply(self) if self.dtype.is_float else \
        F._node("unary", ("abs",), [self])
    def sign(self): return F._node("unary", ("sign",), [self])
    def relu(self): return self.maximum(0) if not self.dtype.is_float else \
        (self > 0).where(self, 0.0)
    def square(self): return self * self
    def clip(self, lo=None, hi=None):
        out = self if lo is None else self.maximum(lo)
        return out if hi is None else out.minimum(hi)

    def gelu(self) -> "Tensor":
        """GELU, tanh approximation (as in GPT-2)."""
        return 0.5 * self * (1 + (math.sqrt(2 / math.pi) * (self + 0.044715 * self ** 3)).tanh())

    # ---------------------------------------------------------- reductions --
    def _axes(self, axis, name) -> tuple:
        nd = self.ndim
        if axis is None:
            return tuple(range(nd))
        if type(axis) is int and -nd <= axis < nd:      # the common case, checked at once
            return (axis % nd,)
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        out = []
        for a in axes:
            if not -max(nd, 1) <= a < max(nd, 1):
                raise ValueError(f"{name}: axis {a} is out of range for a tensor of "
                                 f"shape {self.shape}")
            out.append(a % nd if nd else 0)
        if len(set(out)) != len(out):
            raise ValueError(f"{name}: repeated axis in {axis}")
        return tuple(sorted(out)) if nd else ()

    def _reduced_shape(self, axes, keepdim) -> tuple:
        return tuple(1 if i in axes else s for i, s in enumerate(self.shape)
                     if keepdim or i not in axes)

    def _squeeze_reduced(self, out, axes, keepdim) -> "Tensor":
        """A reduction's keepdim result `out` as the caller asked for it (no re-validation:
        the shape is the reduced one)."""
        if keepdim:
            return out
        shape = self._reduced_shape(axes, False)
        return out._movement(F.Reshape, "reshape", shape, shape)

    def sum(self, axis=None, keepdim=False, dtype=None, *, dim=None) -> "Tensor":
        axis = _dim_arg(axis, dim, "sum")
        axes = self._axes(axis, "sum")
        x = self.cast(dtype) if dtype is not None else \
            self.cast(int64) if not self.dtype.is_float else self
        return self._squeeze_reduced(F.Sum.apply(x, axes), axes, keepdim) if axes else x

    def _minmax(self, axis, keepdim, op) -> "Tensor":
        axes = self._axes(axis, op)
        if any(self.shape[a] == 0 for a in axes):
            raise ValueError(f"{op}: cannot reduce over an empty axis (shape {self.shape})")
        return self._squeeze_reduced(F.Max.apply(self, axes, op), axes, keepdim) if axes \
            else self

    def max(self, axis=None, keepdim=False, *, dim=None):
        return self._minmax(_dim_arg(axis, dim, "max"), keepdim, "max")

    def min(self, axis=None, keepdim=False, *, dim=None):
        return self._minmax(_dim_arg(axis, dim, "min"), keepdim, "min")

    def mean(self, axis=None, keepdim=False, *, dim=None) -> "Tensor":
        axis = _dim_arg(axis, dim, "mean")
        axes = self._axes(axis, "mean")
        n = math.prod(self.shape[a] for a in axes)
        x = self if self.dtype.is_float else self.float()
        return x.sum(axis, keepdim) * (1 / n if n else math.nan)

    def var(self, axis=None, keepdim=False, correction=1, *, dim=None, unbiased=None) -> "Tensor":
        """Variance; `correction=1` (the default, as in PyTorch) divides by n - 1
        (`unbiased=False`, PyTorch's older spelling, is correction=0)."""
        axis = _dim_arg(axis, dim, "var")
        if unbiased is not None:
            correction = int(bool(unbiased))
        axes = self._axes(axis, "var")
        n = math.prod(self.shape[a] for a in axes)
        x = self if self.dtype.is_float else self.float()
        dev = x - x.mean(axes, keepdim=True)
        return (dev * dev).sum(axes, keepdim) * (1 / max(n - correction, 0) if n > correction
                                                  else math.nan)

    def std(self, axis=None, keepdim=False, correction=1, *, dim=None, unbiased=None):
        return self.var(axis, keepdim, correction, dim=dim, unbiased=unbiased).sqrt()

    def argmax(self, axis=None, keepdim=False, *, dim=None) -> "Tensor":
        axis = _dim_arg(axis, dim, "argmax")
        if axis is None:
            return self.flatten().argmax(0)
        (a,) = self._axes(axis, "argmax")
        out = F._node("argmax", (a,), [self], self._reduced_shape((a,), True), dtype=int64)
        return self._squeeze_reduced(out, (a,), keepdim)

    def argmin(self, axis=None, keepdim=False, *, dim=None):
        axis = _dim_arg(axis, dim, "argmin")
        return (-self if self.dtype.is_float else -(self.cast(int64))).argmax(axis, keepdim)

    # -------------------------------------------------------------- shapes --
    def reshape(self, *shape) -> "Tensor":
        shape = _shape_arg(shape)
        if shape == self.lazydata.shape:        # fast path: nothing to do
            return self
        shape = list(shape)
        if shape.count(-1) > 1:
            raise ValueError(f"reshape: only one dimension can be -1, got {tuple(shape)}")
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            if known == 0 or self.numel() % known:
                raise ValueError(f"reshape: cannot reshape {self.shape} into {tuple(shape)}")
            shape[shape.index(-1)] = self.numel() // known
        shape = tuple(shape)
        if math.prod(shape) != self.numel() or any(s < 0 for s in shape):
            raise ValueError(f"reshape: cannot reshape {self.shape} ({self.numel()} "
                             f"elements) into {shape}")
        return self if shape == self.shape else self._movement(F.Reshape, "reshape", shape, shape)

    view = reshape

    def permute(self, *order) -> "Tensor":
        nd = len(self.lazydata.shape)
        order = tuple([a % nd for a in _shape_arg(order)]) if nd else ()
        identity = tuple(range(nd))
        if order == identity:
            return self
        if tuple(sorted(order)) != identity:
            raise ValueError(f"permute: {order} is not a permutation of the "
                             f"{nd} axes of shape {self.shape}")
        shape = self.lazydata.shape
        return self._movement(F.Permute, "permute", order, tuple([shape[i] for i in order]))

    def transpose(self, d0=-2, d1=-1) -> "Tensor":
        order = list(range(self.ndim))
        a, b = self._axes(d0, "transpose")[0], self._axes(d1, "transpose")[0]
        order[a], order[b] = order[b], order[a]
        return self.permute(*order)

    @property
    def T(self) -> "Tensor":
        shape = self.lazydata.shape
        if len(shape) == 2:
            return self._movement(F.Permute, "permute", (1, 0), (shape[1], shape[0]))
        return self.permute(*range(len(shape))[::-1])

    def expand(self, *shape) -> "Tensor":
        shape = _shape_arg(shape)
        if shape == self.lazydata.shape:        # fast path: nothing to do
            return self
        if len(shape) < self.ndim:
            raise ValueError(f"expand: cannot expand shape {self.shape} to {shape}")
        if any(s == -1 for s in shape[:len(shape) - self.ndim]):
            raise ValueError(f"expand: -1 is not allowed for a new leading dimension "
                             f"(shape {self.shape} to {shape})")
        shape = tuple(s if s != -1 else (self.shape[i - len(shape) + self.ndim])
                      for i, s in enumerate(shape))
        for s, t in zip(self.shape, shape[len(shape) - self.ndim:]):
            if s != t and s != 1:
                raise ValueError(f"expand: cannot expand shape {self.shape} to {shape}")
        if shape == self.shape:     # -1s (or sizes) that keep every axis: no node, as reshape
            return self
        return self._movement(F.Expand, "expand", shape, shape)   # (new leading dims too)

    def flatten(self, start=0, end=-1, *, start_dim=None, end_dim=None) -> "Tensor":
        start = _dim_arg(start, start_dim, "flatten", 0)
        end = _dim_arg(end, end_dim, "flatten", -1)
        if self.ndim == 0:
            return self.reshape(1)
        s, e = start % self.ndim, end % self.ndim
        return self.reshape(self.shape[:s] + (-1,) + self.shape[e + 1:])

    def unsqueeze(self, d=None, *, dim=None) -> "Tensor":
        """A new axis of size 1 at position d (`dim=` as in PyTorch)."""
        dim = _dim_arg(d, dim, "unsqueeze", required=True)
        dim = dim if dim >= 0 else dim + self.ndim + 1
        if not 0 <= dim <= self.ndim:
            raise ValueError(f"unsqueeze: dim {dim} is out of range for shape {self.shape}")
        return self.reshape(self.shape[:dim] + (1,) + self.shape[dim:])

    def squeeze(self, d=None, *, dim=None) -> "Tensor":
        """Drop axis d (an int or tuple) if its size is 1, or every size-1 axis when d is
        None (`dim=` as in PyTorch)."""
        dim = _dim_arg(d, dim, "squeeze")
        if dim is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        axes = self._axes(dim, "squeeze")
        return self.reshape(tuple(s for i, s in enumerate(self.shape)
                                  if not (i in axes and s == 1)))

    def shrink(self, bounds) -> "Tensor":
        """Keep [start, stop) on every axis (None keeps the whole axis)."""
        bounds = tuple((0, s) if b is None else tuple(b) for b, s in zip(bounds, self.shape))
        if bounds == tuple((0, s) for s in self.shape):
            return self
        return F.Shrink.apply(self, bounds)

    def pad(self, pads, value=0.0) -> "Tensor":
        """Constant padding. `pads` is either one (before, after) pair per axis
        (NumPy style, None for no padding) or a flat tuple as in torch.nn.functional.pad
        (last axis first: (left, right, top, bottom, ...))."""
        pads = tuple(pads)
        if pads and all(isinstance(p, int) for p in pads):
            if len(pads) % 2 or len(pads) // 2 > self.ndim:
                raise ValueError(f"pad: flat pads {pads} need an even length of at most "
                                 f"2*{self.ndim}")
            pairs = [(pads[i], pads[i + 1]) for i in range(0, len(pads), 2)][::-1]
            pads = ((0, 0),) * (self.ndim - len(pairs)) + tuple(pairs)
        pads = tuple((0, 0) if p is None else (int(p[0]), int(p[1])) for p in pads)
        if len(pads) != self.ndim or any(b < 0 or a < 0 for b, a in pads):
            raise ValueError(f"pad: need {self.ndim} non-negative (before, after) pairs "
                             f"for shape {self.shape}, got {pads}")
        if all(p == (0, 0) for p in pads):
            return self
        return F.Pad.apply(self, pads, value)

    @staticmethod
    def cat(tensors: Sequence["Tensor"], dim=0) -> "Tensor":
        tensors = _tensor_list(tensors, "cat")
        first = tensors[0]
        if first.ndim == 0:
            raise ValueError("cat: zero-dimensional tensors cannot be concatenated; "
                             "use Tensor.stack")
        axis = first._axes(dim, "cat")[0]
        for t in tensors[1:]:
            if t.ndim != first.ndim or any(a != b for i, (a, b) in
                                           enumerate(zip(t.shape, first.shape)) if i != axis):
                raise ValueError(f"cat: shapes {first.shape} and {t.shape} differ outside "
                                 f"dim {axis}")
            if t.device != first.device:
                raise ValueError(f"cat: tensors on different devices ({first.device} and "
                                 f"{t.device})")
        dtype = first.dtype
        for t in tensors[1:]:
            dtype = promote(dtype, t.dtype)
        tensors = [t.cast(dtype) for t in tensors]
        return tensors[0] if len(tensors) == 1 else F.Cat.apply(axis, *tensors)

    @staticmethod
    def stack(tensors: Sequence["Tensor"], dim=0) -> "Tensor":
        tensors = _tensor_list(tensors, "stack")
        for t in tensors[1:]:
            if t.shape != tensors[0].shape:
                raise ValueError(f"stack: shapes {tensors[0].shape} and {t.shape} differ")
        return Tensor.cat([t.unsqueeze(dim) for t in tensors], dim)

    def split(self, size, dim=0) -> list:
        """Pieces of `size` along dim (the last may be smaller), or of the listed sizes."""
        axis = self._axes(dim, "split")[0]
        n = self.shape[axis]
        if isinstance(size, int) and size <= 0:
            raise ValueError(f"split: size must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else []) \
            if isinstance(size, int) else list(size)
        if sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} do not add up to {n} (dim {axis})")
        if len(sizes) <= 1:             # one piece (an empty dim too, as in PyTorch)
            return [self]
        return list(F.Split.apply(self, axis, tuple(sizes)))

    def chunk(self, n, dim=0) -> list:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"chunk: the number of chunks must be a positive int, got {n!r}")
        axis = self._axes(dim, "chunk")[0]
        return self.split(max(1, math.ceil(self.shape[axis] / n)), axis)

    # ------------------------------------------------------------ indexing --
    def __getitem__(self, index) -> "Tensor":
        """ints, slices (with steps, negative too), None, ..., and one integer
        tensor/array/list index on one axis."""
        index = list(index) if isinstance(index, tuple) else [index]
        is_array = [isinstance(i, (Tensor, np.ndarray, list)) for i in index]
        ellipses = [k for k, i in enumerate(index) if not is_array[k] and i is Ellipsis]
        n_real = sum(1 for k, i in enumerate(index) if is_array[k] or
                     (i is not None and i is not Ellipsis))
        if len(ellipses) > 1:
            raise IndexError("index: only one ellipsis (...) is allowed")
        if n_real > self.ndim:
            raise IndexError(f"index: too many indices ({n_real}) for a tensor of shape "
                             f"{self.shape}")
        fill = [slice(None)] * (self.ndim - n_real)
        if ellipses:
            at = ellipses[0]
            index, is_array = index[:at] + fill + index[at + 1:], \
                is_array[:at] + [False] * len(fill) + is_array[at + 1:]
        else:
            index, is_array = index + fill, is_array + [False] * len(fill)
        bounds, out_shape, strided, array_index, axis = [], [], [], None, 0
        for i, arr in zip(index, is_array):
            if not arr and i is None:
                out_shape.append(1)
                continue
            size = self.shape[axis]
            if arr:
                if array_index is not None:
                    raise IndexError("index: only one integer tensor/array index is "
                                     "supported")
                array_index = (len(out_shape), i)
                bounds.append((0, size))
                out_shape.append(size)
            elif isinstance(i, slice):
                start, stop, step = i.indices(size)
                positions = range(start, stop, step)
                if step == 1 or len(positions) <= 1:
                    bounds.append((start, start + len(positions)))
                else:       # steps and reversals: shrink to the span, then gather
                    lo, hi = min(positions), max(positions) + 1
                    bounds.append((lo, hi))
                    strided.append((len(out_shape), [p - lo for p in positions]))
                out_shape.append(len(positions))
            elif isinstance(i, (int, np.integer)) and not isinstance(i, bool):
                if not -size <= i < size:
                    raise IndexError(f"index: {i} is out of range for axis {axis} of "
                                     f"size {size}")
                bounds.append((i % size, i % size + 1))
            else:
                raise IndexError(f"index: unsupported index {i!r} (use ints, slices, None, "
                                 f"..., or an integer tensor)")
            axis += 1
        x = self.shrink(bounds)
        x = x.reshape(_result_shape(x.shape, index, is_array))
        for out_axis, positions in strided:
            x = x._take(positions, out_axis)
        if array_index is not None:
            x = x._take(array_index[1], array_index[0])
        return x

    def _take(self, idx, axis) -> "Tensor":
        """Index one axis with an integer tensor (negative entries count from the end)."""
        n = self.shape[axis]
        if not isinstance(idx, Tensor):
            arr = np.asarray(idx)
            if arr.dtype.kind not in "iu" and arr.size:
                raise IndexError(f"index: index arrays must be integers, got {arr.dtype}")
            if arr.size and (arr.min() < -n or arr.max() >= n):
                raise IndexError(f"index: values in [{arr.min()}, {arr.max()}] are out of "
                                 f"range for axis {axis} of size {n}")
            idx = Tensor(np.where(arr < 0, arr + n, arr).astype(np.int64), device=self.device)
        else:
            if idx.dtype.is_float or idx.dtype == bool_:
                raise IndexError(f"index: index tensors must be integers, got {idx.dtype.name}")
            if idx.device != self.device:
                raise ValueError(f"index: index on {idx.device} for a tensor on {self.device}")
            # the backends count [-n, 0) from the end; below -n goes past the end instead, so
            # the gather reports it (int64 first: -n, or n, may not fit an int8 index)
            idx = idx.cast(int64)
            idx = (idx < -n).where(n, idx)
        return F.Gather.apply(self, idx, axis=axis)

    # ------------------------------------------------------------- matmul --
    def matmul(self, other) -> "Tensor":
        other = other if isinstance(other, Tensor) else Tensor(other, device=self.device)
        a, b = self, other
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: both operands need at least one dimension, got "
                             f"shapes {a.shape} and {b.shape}")
        if a.device != b.device:
            raise ValueError(f"matmul: operands are on different devices ({a.device} and "
                             f"{b.device})")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else -1]:
            raise ValueError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
        dtype = promote(a.dtype, b.dtype)
        if not dtype.is_float:
            dtype = float32
        a, b = a.cast(dtype), b.cast(dtype)
        if a.ndim == 1 and b.ndim == 1:     # dot product: a 0-d result
            return a.unsqueeze(0).matmul(b.unsqueeze(-1)).reshape(())
        if a.ndim == 1:
            return a.unsqueeze(0).matmul(b).squeeze(-2)
        if b.ndim == 1:
            return a.matmul(b.unsqueeze(-1)).squeeze(-1)
        if b.ndim == 2:     # one big GEMM over all leading dims of a
            out = F.Matmul.apply(a.reshape(-1, a.shape[-1]), b)
            return out.reshape(a.shape[:-1] + b.shape[-1:])
        batch = broadcast_shape(a.shape[:-2], b.shape[:-2], "matmul")
        return F.Matmul.apply(a._broadcast_to(batch + a.shape[-2:]),
                              b._broadcast_to(batch + b.shape[-2:]))

    # ---------------------------------------------------------- nn funcs --
    def softmax(self, axis=-1, *, dim=None) -> "Tensor":
        axis = _dim_arg(axis, dim, "softmax", -1)
        e = (self - self.max(axis, keepdim=True).detach()).exp()
        return e / e.sum(axis, keepdim=True)

    def log_softmax(self, axis=-1, *, dim=None) -> "Tensor":
        axis = _dim_arg(axis, dim, "log_softmax", -1)
        shifted = self - self.max(axis, keepdim=True).detach()
        return shifted - shifted.exp().sum(axis, keepdim=True).log()

    def cross_entropy(self, target, ignore_index=-100) -> "Tensor":
        """Mean negative log-likelihood of integer `target` under logits `self`
        ([N, C] or [..., C] with target [...]); targets equal to ignore_index are skipped."""
        target = target if isinstance(target, Tensor) else Tensor(target, device=self.device)
        if target.dtype.is_float or target.dtype == bool_:
            raise TypeError(f"cross_entropy: target must be an integer tensor, got "
                            f"{target.dtype.name}")
        if target.shape != self.shape[:-1]:
            raise ValueError(f"cross_entropy: logits {self.shape} need target shape "
                             f"{self.shape[:-1]}, got {target.shape}")
        n_classes = self.shape[-1]
        logp = self.reshape(-1, n_classes).log_softmax(-1)
        target = target.reshape(-1).cast(int64)
        keep = target != ignore_index
        safe_target = keep.where(target, 0)
        flat_index = Tensor.arange(target.shape[0], device=self.device) * n_classes + safe_target
        # a target outside [0, C) would pick a neighbouring row's logit: send it past the end
        # instead, so the gather reports it (an IndexError; on CUDA at the next sync)
        outside = (safe_target < 0).where(True, safe_target >= n_classes)
        flat_index = outside.where(logp.numel(), flat_index)
        picked = logp.reshape(-1)._take(flat_index, 0)
        return -(picked * keep.cast(picked.dtype)).sum() / keep.sum().cast(picked.dtype)

    def layernorm(self, axis=-1, eps=1e-5) -> "Tensor":
        """(x - mean) / sqrt(var + eps) over `axis`, biased variance (as in PyTorch)."""
        mean = self.mean(axis, keepdim=True)
        centred = self - mean
        var = (centred * centred).mean(axis, keepdim=True)
        return centred * (var + eps).rsqrt()

    def dropout(self, p=0.5, training=None) -> "Tensor":
        """Zero each element with probability p and scale the rest by 1/(1-p); a no-op
        when not training (`training` defaults to the global `Tensor.training`)."""
        if not 0 <= p <= 1:
            raise ValueError(f"dropout: p must be in [0, 1], got {p}")
        if not (Tensor.training if training is None else training) or p == 0:
            return self
        if p == 1:
            return self * 0
        keep = Tensor.rand(*self.shape, device=self.device) >= p
        return keep.where(self * (1 / (1 - p)), 0.0)

    def embedding(self, weight) -> "Tensor":
        """Embedding lookup, weight[idx], either way round: `idx.embedding(weight)` (an
        integer tensor called with a float table, the order of PyTorch's
        F.embedding(idx, weight)) or `weight.embedding(idx)` (a table called with indices)."""
        if not self.dtype.is_float:
            table = weight if isinstance(weight, Tensor) else Tensor(weight, device=self.device)
            if table.dtype.is_float:
                return table._take(self, 0)
        return self._take(weight, 0)


def to_args(who, arg, device, dtype) -> tuple:
    """(device, dtype) of a `.to(...)` call of a Tensor or Module, either None: the positional
    argument is a dtype or a device, or both come by keyword (PyTorch's forms)."""
    if arg is not None:
        try:
            dtype, keyword = to_dtype(arg), dtype
        except TypeError:
            device, keyword = arg, device
        if keyword is not None:
            raise TypeError(f"{who}: {arg!r} given both positionally and by keyword")
    return (None if device is None else canonical(device),
            None if dtype is None else to_dtype(dtype))


def _result_shape(shrunk_shape, index, is_array) -> tuple:
    """The shape after basic indexing: int-indexed axes dropped, a 1 for each None."""
    it, out = iter(shrunk_shape), []
    for i, arr in zip(index, is_array):
        if not arr and i is None:
            out.append(1)
        elif arr or isinstance(i, slice):
            out.append(next(it))
        else:
            next(it)
    return tuple(out)


def _dim_arg(axis, dim, name, default=None, required=False):
    """An axis given by minigrad's name for it (`axis`; squeeze's `d`, flatten's `start`)
    or by PyTorch's (`dim`, `start_dim`): one of the two, else `default`."""
    if dim is not None:
        if axis != default:
            raise TypeError(f"{name}: got both {axis!r} and dim={dim!r}; give one")
        axis = dim
    if required and axis is None:
        raise TypeError(f"{name}: missing the axis argument (d or dim)")
    return axis


def _tensor_list(tensors, name) -> list:
    """cat/stack's first argument: a non-empty sequence of Tensors (a Tensor itself is
    refused, not iterated over its first axis)."""
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name}: expected a list or tuple of Tensors, got "
                        f"{type(tensors).__name__}; e.g. Tensor.{name}([a, b], dim=0)")
    if not tensors:
        raise ValueError(f"{name}: need at least one tensor")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: element {i} is a {type(t).__name__}, not a Tensor")
    return list(tensors)


def broadcast_shape(a: tuple, b: tuple, name="broadcast") -> tuple:
    """NumPy broadcasting of two shapes, or a ValueError naming the op."""
    n = max(len(a), len(b))
    a0, b0 = tuple(a), tuple(b)     # as the user gave them, for the message
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"{name}: shapes {a0} and {b0} cannot be broadcast together")
        out.append(y if x == 1 else x)
    return tuple(out)


class _Transfer(autograd.Function):
    """Copy to another device; the gradient is copied back."""
    @staticmethod
    def forward(ctx, x, device):
        ctx.src = x.device
        return Tensor._from_lazy(lazy.node("transfer", (), [x.lazydata], x.shape, x.dtype,
                                           device))

    @staticmethod
    def backward(ctx, g):
        return g.to(ctx.src), None


def realize(*tensors: Tensor) -> None:
    """Run the graphs of several tensors in one schedule."""
    lazy.realize(*(t.lazydata for t in tensors))
