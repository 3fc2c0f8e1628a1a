"""Module: the base class of layers and models (as torch.nn.Module, without the hooks).

A module's parameters are the Tensors found in its attributes, directly, inside
sub-Modules, or inside lists/tuples of them, named by their dotted path
("transformer.h.0.attn.c_attn.weight"). Attributes whose names begin with "_"
are private and never discovered (keep caches and constants there). Attributes
named by `register_buffer`, and Tensors that are not floating point (an index table,
a mask), are buffers: state (in state_dict, moved by .to(device)) that is not a
parameter, since it can have no gradient.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from ..autograd import no_grad
from ..dtype import to_dtype
from ..tensor import Tensor, realize, to_args


class IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class Module:
    training = True         # the class default; train()/eval() set it per instance

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------ discovery --
    def _children(self) -> Iterator[tuple]:
        """(name, Tensor or Module) for the public attributes, lists expanded."""
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, (Tensor, Module)):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, (Tensor, Module)):
                        yield f"{name}.{i}", item

    def named_modules(self, prefix: str = "", _seen=None) -> Iterator[tuple]:
        """(dotted name, module) for this module ("") and every sub-module, once each."""
        seen = set() if _seen is None else _seen
        if id(self) in seen:
            return
        seen.add(id(self))
        yield prefix, self
        for name, value in self._children():
            if isinstance(value, Module):
                yield from value.named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def modules(self) -> Iterator["Module"]:
        return (m for _, m in self.named_modules())

    def _named_tensors(self, which: str = "all") -> Iterator[tuple]:
        """Every (dotted name, Tensor), a shared (tied) Tensor under each of its names;
        `which` = "all", "parameters" or "buffers"."""
        for prefix, module in self.named_modules():
            buffers = vars(module).get("_buffers", ())
            for name, value in module._children():
                if isinstance(value, Tensor) and (which == "all" or (which == "buffers") == (
                        name in buffers or not value.dtype.is_float)):
                    yield (f"{prefix}.{name}" if prefix else name), value

    def _unique(self, which: str) -> Iterator[tuple]:
        seen = set()
        for name, t in self._named_tensors(which):
            if id(t) not in seen:
                seen.add(id(t))
                yield name, t

    def named_parameters(self) -> Iterator[tuple]:
        """(dotted name, Tensor), each Tensor once (a tied weight under its first name);
        buffers are not parameters."""
        return self._unique("parameters")

    def parameters(self) -> list:
        return [t for _, t in self.named_parameters()]

    def register_buffer(self, name: str, tensor: Tensor) -> None:
        """Set attribute `name` to a Tensor that is state but not a parameter (as in
        PyTorch): it is in state_dict() and moves with .to(device), but parameters()
        leaves it out (no optimizer, no gradient) and .to(dtype) keeps its dtype (e.g.
        the int8 weights and f16 scales of mg.nn.QuantLinear)."""
        if "_buffers" not in vars(self):
            self._buffers = set()
        self._buffers.add(name)
        setattr(self, name, tensor)

    def named_buffers(self) -> Iterator[tuple]:
        return self._unique("buffers")

    def buffers(self) -> list:
        return [t for _, t in self.named_buffers()]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------- state dict --
    def state_dict(self) -> dict:
        """{dotted name: Tensor} for every name, tied weights under each of their names
        (as PyTorch does). The Tensors share the parameters' data but not their
        future updates: an optimizer step gives the parameter new data."""
        return {name: t.detach() for name, t in self._named_tensors()}

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values (Tensors or NumPy arrays) into the existing parameters, moving them
        to each parameter's device. Everything is checked before anything is copied:
        missing or unexpected keys (when strict), and any shape or dtype mismatch, raise
        one RuntimeError listing every problem. Returns (missing_keys, unexpected_keys)."""
        own = dict(self._named_tensors())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {', '.join(map(str, unexpected))}")
        values = {}
        for name, param in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            if isinstance(value, np.ndarray):
                value = Tensor(value, dtype=to_dtype(value.dtype), device=param.device)
            if not isinstance(value, Tensor):
                problems.append(f"{name}: expected a Tensor or NumPy array, got "
                                f"{type(value).__name__}")
            elif value.shape != param.shape:
                problems.append(f"{name}: shape {value.shape} in the state dict, "
                                f"{param.shape} in the model")
            elif value.dtype != param.dtype:
                problems.append(f"{name}: dtype {value.dtype.name} in the state dict, "
                                f"{param.dtype.name} in the model (cast it with .to())")
            else:
                values[name] = value
        if problems:
            raise RuntimeError(f"load_state_dict for {type(self).__name__}: "
                               + "; ".join(problems))
        with no_grad():
            for name, value in values.items():
                own[name].assign(value.detach().to(own[name].device))
            realize(*own.values())
        return IncompatibleKeys(missing, unexpected)

    # ---------------------------------------------------------------- modes --
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, flag: bool = True) -> "Module":
        """Freeze (False) or unfreeze every parameter, as PyTorch's."""
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    # PyTorch's shorthands for .to()
    def cpu(self): return self.to("cpu")
    def cuda(self): return self.to("cuda")
    def half(self): return self.to(to_dtype("float16"))
    def bfloat16(self): return self.to(to_dtype("bfloat16"))
    def float(self): return self.to(to_dtype("float32"))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (PyTorch's default), or with set_to_none=False
        set it to zeros."""
        for p in self.parameters():
            p.grad = None if set_to_none or p.grad is None else Tensor.zeros_like(p.grad)

    def to(self, arg=None, *, device=None, dtype=None) -> "Module":
        """Move every parameter and buffer to a device ("cpu", "cuda") or cast the float
        parameters to a dtype, keeping the same Tensor objects (an optimizer holding them
        stays valid). Buffers keep their dtype. As in PyTorch, `.to(device=..., dtype=...)`
        (either or both) works too."""
        device, dtype = to_args(f"{type(self).__name__}.to", arg, device, dtype)
        if dtype is not None and not dtype.is_float:
            raise TypeError(f"{type(self).__name__}.to: only floating-point dtypes cast a "
                            f"module's parameters, got {dtype.name}")
        if device is not None and dtype is not None:
            return self.to(device).to(dtype)
        with no_grad():
            if device is not None:
                for b in self.buffers():
                    if b.device != device:
                        b.lazydata = b.detach().to(device).realize().lazydata
            for p in self.parameters():
                if device is not None and p.device != device:
                    p.lazydata = p.detach().to(device).realize().lazydata
                    if p.grad is not None:
                        p.grad = p.grad.detach().to(device)
                elif dtype is not None and p.dtype.is_float and p.dtype != dtype:
                    p.lazydata = p.detach().cast(dtype).realize().lazydata
                    p.grad = None
        return self

    def __repr__(self):
        lines = [f"  ({name}): {repr(m).replace(chr(10), chr(10) + '  ')}"
                 for name, m in self._children() if isinstance(m, Module)]
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        return f"{type(self).__name__}({extra}\n" + "\n".join(lines) + "\n)"

    def extra_repr(self) -> str:
        return ""


class ModuleDict(Module):
    """Named sub-modules as attributes: `ModuleDict(wte=..., h=[...])`, `d.wte` or `d["wte"]`."""

    def __init__(self, modules=None, **kwargs):
        for name, value in {**(modules or {}), **kwargs}.items():
            setattr(self, name, value)

    def __getitem__(self, name):
        return getattr(self, name)
