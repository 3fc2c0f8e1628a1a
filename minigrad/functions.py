"""The differentiable primitive ops: one `Function` each, forward and backward side by side.

Forward builds lazy graph nodes (`_node`); backward is written with ordinary
Tensor ops, so gradients are lazy too. Inputs arrive already broadcast and
promoted to a common dtype by `Tensor`, so each Function sees equal shapes.
Composite ops (softmax, layernorm, cross-entropy, ...) live in `tensor.py` and
get their gradients from these.
"""
from __future__ import annotations

from . import lazy
from .autograd import Function


def _node(op, arg, srcs, shape=None, dtype=None):
    first = srcs[0].lazydata
    lb = lazy.node(op, arg, [s.lazydata for s in srcs],
                   first.shape if shape is None else shape,
                   first.dtype if dtype is None else dtype, first.device)
    return type(srcs[0])._from_lazy(lb)


def _keep(t):
    """A handle on t's data without its autograd history (avoids ctx<->output cycles)."""
    return type(t)._from_lazy(t.lazydata)


# ---------------------------------------------------------------- unary ------

class Neg(Function):
    @staticmethod
    def forward(ctx, x): return _node("unary", ("neg",), [x])
    @staticmethod
    def backward(ctx, g): return -g


class Exp(Function):
    @staticmethod
    def forward(ctx, x):
        out = _node("unary", ("exp",), [x])
        ctx.save_for_backward(_keep(out))
        return out
    @staticmethod
    def backward(ctx, g): return g * ctx.saved_tensors[0]


class Log(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _node("unary", ("log",), [x])
    @staticmethod
    def backward(ctx, g): return g / ctx.saved_tensors[0]


class Sqrt(Function):
    @staticmethod
    def forward(ctx, x):
        out = _node("unary", ("sqrt",), [x])
        ctx.save_for_backward(_keep(out))
        return out
    @staticmethod
    def backward(ctx, g): return g / (ctx.saved_tensors[0] * 2)


class Recip(Function):
    @staticmethod
    def forward(ctx, x):
        out = _node("unary", ("recip",), [x])
        ctx.save_for_backward(_keep(out))
        return out
    @staticmethod
    def backward(ctx, g):
        out = ctx.saved_tensors[0]
        return -g * out * out


class Sin(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _node("unary", ("sin",), [x])
    @staticmethod
    def backward(ctx, g): return g * ctx.saved_tensors[0].cos()


class Cos(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _node("unary", ("cos",), [x])
    @staticmethod
    def backward(ctx, g): return -g * ctx.saved_tensors[0].sin()


class Tanh(Function):
    @staticmethod
    def forward(ctx, x):
        out = _node("unary", ("tanh",), [x])
        ctx.save_for_backward(_keep(out))
        return out
    @staticmethod
    def backward(ctx, g):
        out = ctx.saved_tensors[0]
        return g * (1 - out * out)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, x):
        out = _node("unary", ("sigmoid",), [x])
        ctx.save_for_backward(_keep(out))
        return out
    @staticmethod
    def backward(ctx, g):
        out = ctx.saved_tensors[0]
        return g * out * (1 - out)


class Abs(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _node("unary", ("abs",), [x])
    @staticmethod
    def backward(ctx, g): return g * ctx.saved_tensors[0].sign()


class Cast(Function):
    @staticmethod
    def forward(ctx, x, dtype):
        ctx.in_dtype = x.dtype
        return _node("cast", (dtype,), [x], dtype=dtype)
    @staticmethod
    def backward(ctx, g): return g.cast(ctx.in_dtype), None


# --------------------------------------------------------------- binary ------

class Add(Function):
    @staticmethod
    def forward(ctx, a, b): return _node("binary", ("add",), [a, b])
    @staticmethod
    def backward(ctx, g): return g, g


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b): return _node("binary", ("sub",), [a, b])
    @staticmethod
    def backward(ctx, g): return g, -g


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _node("binary", ("mul",), [a, b])
    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return (g * b if ctx.needs_input_grad[0] else None,
                g * a if ctx.needs_input_grad[1] else None)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _node("binary", ("div",), [a, b])
    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return (g / b if ctx.needs_input_grad[0] else None,
                -g * a / (b * b) if ctx.needs_input_grad[1] else None)


class Pow(Function):
    @staticmethod
    def forward(ctx, a, b):
        out = _node("binary", ("pow",), [a, b])
        ctx.save_for_backward(a, b, _keep(out))
        return out
    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        ga = g * b * a ** (b - 1) if ctx.needs_input_grad[0] else None
        # d(a^b)/db = a^b ln a; 0 where a == 0 (the limit used by PyTorch)
        gb = g * out * (a > 0).where(a, 1).log() if ctx.needs_input_grad[1] else None
        return ga, gb


class Maximum(Function):
    """max(a, b); on ties the gradient is split evenly, as in PyTorch."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _node("binary", ("maximum",), [a, b])
    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        share = (a > b).cast(g.dtype) + (a == b).cast(g.dtype) * 0.5
        return g * share, g * (1 - share)


class Minimum(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _node("binary", ("minimum",), [a, b])
    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        share = (a < b).cast(g.dtype) + (a == b).cast(g.dtype) * 0.5
        return g * share, g * (1 - share)


class Where(Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        return _node("where", (), [cond, a, b], dtype=a.dtype)
    @staticmethod
    def backward(ctx, g):
        (cond,) = ctx.saved_tensors
        zero = g.zeros_like(g)
        return None, cond.where(g, zero), cond.where(zero, g)


# ----------------------------------------------------------- reductions ------

class Sum(Function):
    @staticmethod
    def forward(ctx, x, axes):
        ctx.in_shape = x.shape
        shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
        return _node("reduce", ("sum", axes), [x], shape)
    @staticmethod
    def backward(ctx, g): return g.expand(*ctx.in_shape), None


class Max(Function):
    """max over axes (keepdim); the gradient is shared among tied maxima."""
    @staticmethod
    def forward(ctx, x, axes, op="max"):
        shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
        out = _node("reduce", (op, axes), [x], shape)
        ctx.save_for_backward(x, _keep(out))
        ctx.axes = axes
        return out
    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        hit = (x == out.expand(*x.shape)).cast(g.dtype)
        share = hit / hit.sum(ctx.axes, keepdim=True).expand(*x.shape)
        return share * g.expand(*x.shape), None


class Matmul(Function):
    """(..., M, K) @ (..., K, N) with equal batch dims."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _node("matmul", (), [a, b], a.shape[:-1] + b.shape[-1:])
    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return (g @ b.transpose(-1, -2) if ctx.needs_input_grad[0] else None,
                a.transpose(-1, -2) @ g if ctx.needs_input_grad[1] else None)


# ------------------------------------------------------------- movement ------

class Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return _node("reshape", (shape,), [x], shape)
    @staticmethod
    def backward(ctx, g): return g.reshape(ctx.in_shape), None


class Permute(Function):
    @staticmethod
    def forward(ctx, x, order):
        ctx.order = order
        shape = x.lazydata.shape
        return _node("permute", (order,), [x], tuple([shape[i] for i in order]))
    @staticmethod
    def backward(ctx, g):
        inverse = [0] * len(ctx.order)
        for i, o in enumerate(ctx.order):
            inverse[o] = i
        return g.permute(*inverse), None


class Expand(Function):
    """Broadcast x to `shape` (which may add leading dims); backward sums the gradient
    over the new and the broadcast axes."""
    @staticmethod
    def forward(ctx, x, shape):
        ctx.in_shape = x.shape
        return _node("expand", (shape,), [x], shape)
    @staticmethod
    def backward(ctx, g):
        lead = g.ndim - len(ctx.in_shape)
        axes = tuple(range(lead)) + tuple(lead + i for i, (a, b) in
                                          enumerate(zip(ctx.in_shape, g.shape[lead:])) if a != b)
        if not axes:
            return g, None
        g = g.sum(axes, keepdim=True)
        return (g.reshape(ctx.in_shape) if lead else g), None


class Shrink(Function):
    """x[start:stop] on every axis (step 1); steps and reversals go through Gather."""
    @staticmethod
    def forward(ctx, x, bounds):
        ctx.pads = tuple((b, s - e) for (b, e), s in zip(bounds, x.shape))
        return _node("shrink", (tuple((b, e, 1) for b, e in bounds),), [x],
                     tuple(e - b for b, e in bounds))
    @staticmethod
    def backward(ctx, g): return g.pad(ctx.pads), None


class Split(Function):
    """Consecutive pieces of x along one axis (views, as Shrink makes them); the backward
    is one `cat` of the pieces' gradients (zeros where a piece got none), not a padded
    copy of x per piece summed."""
    @staticmethod
    def forward(ctx, x, axis, sizes):
        ctx.axis, ctx.sizes = axis, sizes
        outs, start = [], 0
        for size in sizes:
            bounds = [(0, d, 1) for d in x.shape]
            bounds[axis] = (start, start + size, 1)
            shape = list(x.shape)
            shape[axis] = size
            outs.append(_node("shrink", (tuple(bounds),), [x], tuple(shape)))
            start += size
        return tuple(outs)
    @staticmethod
    def backward(ctx, *grads):
        ref = next(g for g in grads if g is not None)
        parts = []
        for g, size in zip(grads, ctx.sizes):
            if g is None:
                shape = list(ref.shape)
                shape[ctx.axis] = size
                g = type(ref).zeros(*shape, dtype=ref.dtype, device=ref.device)
            parts.append(g)
        return type(ref).cat(parts, ctx.axis), None, None


class Pad(Function):
    @staticmethod
    def forward(ctx, x, pads, value=0.0):
        ctx.bounds = tuple((b, b + s) for (b, _), s in zip(pads, x.shape))
        return _node("pad", (pads, value), [x],
                     tuple(b + s + a for (b, a), s in zip(pads, x.shape)))
    @staticmethod
    def backward(ctx, g): return g.shrink(ctx.bounds), None, None


class Contiguous(Function):
    @staticmethod
    def forward(ctx, x): return _node("contiguous", (), [x])
    @staticmethod
    def backward(ctx, g): return g


class Cat(Function):
    @staticmethod
    def forward(ctx, axis, *xs):
        ctx.axis, ctx.sizes = axis, [x.shape[axis] for x in xs]
        shape = list(xs[0].shape)
        shape[axis] = sum(ctx.sizes)
        return _node("cat", (axis,), list(xs), tuple(shape))
    @staticmethod
    def backward(ctx, g):
        out, start = [None], 0
        for size in ctx.sizes:
            bounds = [(0, s) for s in g.shape]
            bounds[ctx.axis] = (start, start + size)
            out.append(g.shrink(bounds))
            start += size
        return tuple(out)


class Gather(Function):
    """x.take(idx, axis): idx an integer tensor of any shape."""
    @staticmethod
    def forward(ctx, x, idx, axis):
        ctx.save_for_backward(idx)
        ctx.axis, ctx.size = axis, x.shape[axis]
        shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
        return _node("gather", (axis,), [x, idx], shape)
    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        shape = g.shape[:ctx.axis] + (ctx.size,) + g.shape[ctx.axis + idx.ndim:]
        return _node("scatter_add", (ctx.axis, ctx.size), [g, idx], shape), None, None


