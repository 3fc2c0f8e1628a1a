"""Reverse-mode autodiff at the level of Functions (as in torch.autograd.Function).

Every differentiable op is a `Function` subclass with `forward(ctx, *args)` and
`backward(ctx, *grads)` side by side. `Function.apply` runs `forward` with
gradient recording off, then — when an input needs a gradient — links the
outputs to the `ctx`, which remembers the inputs (`ctx.parents`).

`backward()` walks those contexts in reverse topological order and calls each
`backward`, which is written with ordinary Tensor ops: the gradients it returns
are lazy tensors, realized later together with the optimizer's update.
"""
from __future__ import annotations

import contextlib
import functools
import threading

class _State(threading.local):
    grad_enabled = True     # a class default: reading it is fast in every thread


_state = _State()


def is_grad_enabled() -> bool:
    return _state.grad_enabled


class _GradMode(contextlib.ContextDecorator):
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def _recreate_cm(self):
        # a decorated function's every call gets its own context (its own `prev`): a
        # recursive call, or two threads in one function, must not restore each other's mode
        return _GradMode(self.enabled)

    def __enter__(self):
        self.prev = is_grad_enabled()
        _state.grad_enabled = self.enabled

    def __exit__(self, *exc):
        _state.grad_enabled = self.prev


def no_grad(fn=None):
    """`with mg.no_grad():` or `@mg.no_grad` (with or without parentheses)."""
    if callable(fn):
        return functools.wraps(fn)(_GradMode(False)(fn))
    return _GradMode(False)


def enable_grad():
    return _GradMode(True)


class Function:
    """Subclass with static `forward(ctx, *args)` and `backward(ctx, *grads)`;
    call as `MyFn.apply(*args)`. `backward` returns one gradient (or None) per
    positional argument of `forward`."""

    def __init__(self, parents):
        self.parents = parents
        self.needs_input_grad = tuple([getattr(p, "requires_grad", False) for p in parents])
        self.saved_tensors = ()

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = cls(args)
        if not (_state.grad_enabled and any(ctx.needs_input_grad)):
            # nothing will flow back: no graph to record, nothing to keep alive
            ctx.parents = ()
            return cls.forward(ctx, *args, **kwargs)
        # forward records no graph of its own (what `with _GradMode(False)` does, without
        # the context manager's cost on every op: grad mode was on, we just checked)
        _state.grad_enabled = False
        try:
            out = cls.forward(ctx, *args, **kwargs)
        finally:
            _state.grad_enabled = True
        outs = out if isinstance(out, tuple) else (out,)
        ctx.n_outputs = len(outs)
        for i, o in enumerate(outs):
            if not hasattr(o, "lazydata"):
                raise TypeError(f"{cls.__name__}.forward must return Tensors (or a tuple of "
                                f"them), got a {type(o).__name__}")
            for a in args:
                if o is a:
                    # forward returned an input as it is (x.float() of a float32 x, a
                    # reshape to the same shape): the output gets a Tensor of its own, as
                    # in PyTorch, so the input keeps its place (a leaf stays a leaf)
                    o = o._from_lazy(o.lazydata)
                    out = o if not isinstance(out, tuple) else out[:i] + (o,) + out[i + 1:]
                    break
            if o.dtype.is_float:
                o.requires_grad, o._ctx, o._out_index = True, ctx, i
        return out


def _contexts_in_order(root_ctx) -> list:
    """All contexts behind `root_ctx`, users before their inputs (iterative)."""
    order, seen, stack = [], set(), [(root_ctx, False)]
    while stack:
        ctx, expanded = stack.pop()
        if expanded:
            order.append(ctx)
            continue
        if id(ctx) in seen:
            continue
        seen.add(id(ctx))
        stack.append((ctx, True))
        for p in ctx.parents:
            c = getattr(p, "_ctx", None)
            if c is not None and getattr(p, "requires_grad", False) and id(c) not in seen:
                stack.append((c, False))
    return order[::-1]


def _undoes_cast(parent, dtype) -> bool:
    """Whether `parent` is a Cast from `dtype`, seen through permutes and reshapes (as
    nn.Linear's `weight.cast(bf16).T`). A gradient of `dtype` bound for it goes on
    unrounded: rounding it to the narrow dtype only for the Cast's backward to widen it
    again would lose precision and cost two kernels at every such layer."""
    from .functions import Cast, Permute, Reshape
    ctx = parent._ctx
    while type(ctx) in (Permute, Reshape):
        ctx = getattr(ctx.parents[0], "_ctx", None) if ctx.parents else None
    return type(ctx) is Cast and ctx.in_dtype == dtype


def backward(tensor, gradient, retain_graph: bool = False) -> None:
    from .tensor import Tensor
    root = tensor._ctx
    if root is None and tensor.requires_grad:      # a leaf: its gradient is the seed itself
        g = gradient.cast(tensor.dtype)
        tensor.grad = g if tensor.grad is None else tensor.grad + g
        return
    if root is None:
        raise RuntimeError("backward: this tensor was not produced by an op that "
                           "needs gradients (does any input have requires_grad=True?)")
    pending = {id(root): [None] * root.n_outputs}
    pending[id(root)][tensor._out_index] = gradient
    with _GradMode(False):
        for ctx in _contexts_in_order(root):
            if not ctx.parents and ctx.needs_input_grad:
                raise RuntimeError("backward: trying to go back through the graph a "
                                   "second time; pass retain_graph=True the first time")
            grads = pending.pop(id(ctx), None)
            if grads is None or all(g is None for g in grads):
                continue
            in_grads = type(ctx).backward(ctx, *grads)
            if not isinstance(in_grads, tuple):
                in_grads = (in_grads,)
            n = len(ctx.parents)
            if len(in_grads) != n and (any(g is not None for g in in_grads[n:]) or any(
                    getattr(p, "requires_grad", False) for p in ctx.parents[len(in_grads):])):
                # (a missing or an extra None, for an argument that takes no gradient, is fine)
                raise RuntimeError(f"backward of {type(ctx).__name__}: returned {len(in_grads)} "
                                   f"gradients, but forward took {len(ctx.parents)} positional "
                                   f"arguments (one gradient, or None, per argument)")
            for parent, g in zip(ctx.parents, in_grads):
                if g is None or not isinstance(parent, Tensor) or not parent.requires_grad:
                    continue
                gl, pl = g.lazydata, parent.lazydata    # (the nodes: cheaper than properties)
                if gl.shape != pl.shape:
                    raise RuntimeError(f"backward of {type(ctx).__name__}: gradient shape "
                                       f"{g.shape} does not match input shape {parent.shape}")
                if gl.dtype != pl.dtype and not _undoes_cast(parent, gl.dtype):
                    g = g.cast(parent.dtype)
                if parent._ctx is None:      # a leaf: accumulate into .grad
                    parent.grad = g if parent.grad is None else parent.grad + g
                else:
                    slots = pending.setdefault(id(parent._ctx), [None] * parent._ctx.n_outputs)
                    i = parent._out_index
                    slots[i] = g if slots[i] is None else slots[i] + g
            if not retain_graph:
                ctx.parents, ctx.saved_tensors = (), ()
