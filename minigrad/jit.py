"""`mg.jit`: record a function's GPU work once, then replay the record.

A GPT training step builds about 1,200 graph nodes and launches about 850 kernels. On
the GPU, building, scheduling and launching them from Python takes longer than the
kernels run, so the GPU waits for Python. `step = mg.jit(step)` fixes that:

  call 1      runs `step` as usual (a warm-up: kernels compile, optimizer state appears);
  call 2      runs it again while the CUDA runtime records every kernel launch, copy and
              memset it queues, and keeps every buffer involved alive (runtime.capture);
  call 3, ... do not run `step` at all: they copy the tensor arguments into the recorded
              input buffers and queue the recorded launches again (runtime.replay), a few
              microseconds each.

What a replay gets right, so it computes what an eager call would have:
  * tensor arguments: each call's values (same shapes, dtypes and device required);
  * outputs: returned as new tensors (copies), so a result kept from one call is not
    overwritten by the next;
  * randomness: rand/randn/dropout and flash-attention dropout use the draws an eager
    call would make from minigrad's generator (`mg.manual_seed` still decides them);
  * AdamW (fused): each replay advances the step count and reads the param groups'
    options again, so a learning-rate schedule works. While captured, the update is
    done in place: a replay must find one step's parameters where the next step reads
    them;
  * `Tensor.assign` of a tensor that holds a buffer: the new value is copied back into
    that buffer at the end of each call, so state kept that way carries over (call 1
    realizes its outputs and assigned tensors, so they hold buffers by call 2).

What is frozen at the capture, as with CUDA graphs in PyTorch or tinygrad's TinyJit: every
other Python value the function computes (constants, shapes, branches, `Tensor.training`)
and non-tensor arguments (a different value raises). Not allowed inside (a clear error at
capture): reading a tensor on the host (`.item()`, `.numpy()`, `print`), nesting jitted
functions, `manual_seed`, optimizer steps other than AdamW's fused update, assigning to
a tensor whose value is not computed yet. The recorded buffers stay allocated until
`reset()`, and none of them is reused within the step, so the captured call needs more
device memory than an eager one (the shakespeare_char step: 15.8 against 15.3 GB).

On the CPU there is nothing to replay (NumPy runs each op at once): the function simply
runs at every call. `MINIGRAD_JIT=0` makes every call run the function (for debugging).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from . import lazy
from .device import default_device, get_backend
from .tensor import Tensor, _random_state, mix_seed, realize

ENABLED = os.environ.get("MINIGRAD_JIT", "1") != "0"


class _Capture:
    """One recorded call: the runtime's entries (launches and copies, in stream order),
    the allocations and buffers it keeps alive, and what the call drew at random."""

    def __init__(self):
        self.entries, self.held = [], []
        self.checks = []                # callables run before each replay (they raise)
        self.seed, self.calls0 = _random_state["seed"], _random_state["calls"]
        self.draws = 0                  # generator draws one call makes (known at the end)
        self.base = self.calls0         # the generator's draw count when this run began
        self._mixed = None              # flash seed drawn in the capture -> its draw number
        self.inputs = self.outputs = self.template = None

    # -- randomness: the capture's draw i becomes draw base + i of the current replay --
    def random_args(self, seed: int, counter: int) -> tuple:
        """(seed, counter) of a rand/randn node, as this replay draws it."""
        i = counter - self.calls0
        if seed != self.seed or not 0 < i <= self.draws:
            return seed, counter        # drawn before the call: the same numbers each time
        return _random_state["seed"], self.base + i

    def flash_seed(self, seed: int) -> int:
        """A flash-attention dropout seed (tensor.draw_seed), as this replay draws it."""
        if self._mixed is None:
            self._mixed = {mix_seed(self.seed, self.calls0 + i): i
                           for i in range(1, self.draws + 1)}
        i = self._mixed.get(seed)
        return seed if i is None else mix_seed(_random_state["seed"], self.base + i)

    def finish(self, outputs: list, assigned: list) -> None:
        """Realize the outputs and the assigned tensors inside the capture, and copy each
        assigned tensor's new value back into its buffer from before the call."""
        self.draws = _random_state["calls"] - self.calls0
        first = {}
        for t, old in assigned:
            first.setdefault(id(t), (t, old))
        for t, old in first.values():
            if old is None:
                raise RuntimeError(
                    "mg.jit: the captured function assigned a tensor whose value was not "
                    f"computed yet (shape {t.shape}); only tensors holding a buffer can be "
                    "updated across replays: mg.realize() it before the call")
        realize(*outputs, *(t for t, _ in first.values()))
        be = get_backend("cuda")
        for t, old in first.values():
            if t.lazydata.realized is not old:
                be._copy_into(old, t.lazydata.realized)
                t.lazydata = lazy.constant(old, t.shape, t.dtype, t.device)
            self.held.append(old)


def _flatten(value, tensors: list):
    """A hashable description of an argument or a result: tensors become
    ("tensor", shape, dtype name, device) and are appended to `tensors` in order."""
    if isinstance(value, Tensor):
        tensors.append(value)
        return ("tensor", value.shape, value.dtype.name, value.device)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_flatten(v, tensors) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _flatten(v, tensors)) for k, v in value.items()))
    if isinstance(value, np.ndarray):     # (not comparable with ==: refused on the GPU)
        return ("array", value.shape, value.dtype.str)
    return ("value", value)


def _has_array(desc) -> bool:
    if desc[0] in ("list", "tuple"):
        return any(_has_array(d) for d in desc[1])
    if desc[0] == "dict":
        return any(_has_array(d) for _, d in desc[1])
    return desc[0] == "array"


def _rebuild(desc, tensors):
    """The inverse of _flatten: the described structure with `tensors` (an iterator)."""
    kind = desc[0]
    if kind == "tensor":
        return next(tensors)
    if kind in ("list", "tuple"):
        items = [_rebuild(d, tensors) for d in desc[1]]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: _rebuild(d, tensors) for k, d in desc[1]}
    return desc[1]


def _copies(buffers) -> list:
    """New tensors holding copies of `buffers` (queued on the stream like any op)."""
    be = get_backend("cuda")
    return [Tensor._from_lazy(lazy.constant(be._copy_into(be.empty(b.shape, b.dtype), b),
                                            b.shape, b.dtype, "cuda")) for b in buffers]


class jit:
    """Decorator: `@mg.jit def step(x, y): ...`. See the module docstring.

    `.reset()` drops the record (and its buffers); the next call starts again with a
    warm-up. `.captured` is the number of recorded launches and copies (0 before)."""

    def __init__(self, fn):
        self.fn = fn
        self._calls, self._capture, self._signature = 0, None, None
        functools.update_wrapper(self, fn)

    @property
    def captured(self) -> int:
        return len(self._capture.entries) if self._capture else 0

    def reset(self) -> None:
        self._calls, self._capture, self._signature = 0, None, None

    def __call__(self, *args, **kwargs):
        tensors = []
        signature = _flatten((args, kwargs), tensors)
        if not ENABLED or not self._wants_cuda(tensors):
            return self.fn(*args, **kwargs)
        if lazy.capture is not None:
            raise RuntimeError(f"mg.jit: {self.__name__} was called inside another captured "
                               "function; jitted functions cannot be nested")
        if _has_array(signature):
            raise TypeError(f"mg.jit: {self.__name__} got a NumPy array; pass it as a Tensor "
                            "(its values then change per call) or as a plain Python value "
                            "(frozen at the capture)")
        if self._capture is not None:
            if signature != self._signature:
                raise ValueError(
                    f"mg.jit: {self.__name__} was captured for arguments {self._signature[1]} "
                    f"and now got {signature[1]}; tensor shapes, dtypes, devices and other "
                    "argument values must stay the same (or call .reset())")
            return self._replay(tensors)
        self._calls += 1
        if self._calls == 1:
            return self._warm_up(args, kwargs)
        return self._record(args, kwargs, tensors, signature)

    def _warm_up(self, args, kwargs):
        """Call 1: the function as usual (kernels compile, optimizer state appears), then
        its outputs and assigned tensors are realized, so call 2 starts from buffers."""
        lazy.assigned = assigned = []
        try:
            result = self.fn(*args, **kwargs)
        finally:
            lazy.assigned = None
        outputs = []
        _flatten(result, outputs)
        realize(*outputs, *(t for t, _ in assigned))
        return result

    def _wants_cuda(self, tensors) -> bool:
        devices = {t.device for t in tensors}
        if "cuda" in devices and len(devices) > 1:
            raise ValueError(f"mg.jit: {self.__name__} got tensors on {sorted(devices)}; a "
                             "captured function takes its tensor arguments on the GPU only")
        return devices == {"cuda"} if devices else default_device() == "cuda"

    def _record(self, args, kwargs, tensors, signature):
        from .backend.cuda import runtime
        realize(*tensors)
        # private input buffers: each replay copies its arguments here, so the caller's
        # tensors are never written by a later call
        inputs = _copies(t.lazydata.realized for t in tensors)
        for t, new in zip(tensors, inputs):
            new.requires_grad = t.requires_grad
        it = iter(inputs)
        args, kwargs = _rebuild(signature, it)
        cap = _Capture()
        runtime.capture = lazy.capture = cap
        lazy.assigned = assigned = []
        try:
            result = self.fn(*args, **kwargs)
            outputs = []
            cap.template = _flatten(result, outputs)
            cap.finish(outputs, assigned)
        finally:
            runtime.capture = lazy.capture = lazy.assigned = None
        cap.inputs = [t.lazydata.realized for t in inputs]
        cap.outputs = [t.lazydata.realized for t in outputs]
        cap.held += cap.inputs + cap.outputs
        self._capture, self._signature = cap, signature
        if lazy.DEBUG >= 1:
            rebuilt = sum(e[0] == runtime._LAUNCH and callable(e[4]) for e in cap.entries)
            print(f"[minigrad] jit {self.__name__}: captured {len(cap.entries)} launches and "
                  f"copies ({rebuilt} with arguments rebuilt per replay), {cap.draws} random "
                  f"draws")
        return _rebuild(cap.template, iter(_copies(cap.outputs)))

    def _replay(self, tensors):
        from .backend.cuda import runtime
        cap, be = self._capture, get_backend("cuda")
        for check in cap.checks:        # before anything is queued
            check()
        realize(*tensors)
        for dst, t in zip(cap.inputs, tensors):
            be._copy_into(dst, t.lazydata.realized)
        cap.base = _random_state["calls"]
        runtime.replay(cap.entries)
        _random_state["calls"] = cap.base + cap.draws
        if lazy.DEBUG >= 2:
            print(f"[minigrad] jit {self.__name__}: replayed {len(cap.entries)} launches and copies")
        return _rebuild(cap.template, iter(_copies(cap.outputs)))
