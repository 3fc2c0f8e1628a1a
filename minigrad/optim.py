"""Optimizers with PyTorch's update rules: SGD (momentum, dampening, Nesterov, weight
decay) and AdamW (decoupled weight decay).

`step()` builds every parameter's update as lazy Tensor ops and runs them, together with
whatever forward/backward graph the gradients still need, in ONE `mg.realize(...)`.
Parameters are updated in place with `p.assign(new)`, so modules keep their Tensors.
Parameters whose `.grad` is None are skipped (their step count does not advance).
float16/bfloat16 parameters are updated in float32 (moments too) and rounded once at
the end: in half precision AdamW's eps (1e-8) and small g*g underflow to 0 and the
update divides by zero.

Options live in `opt.param_groups[i]` (a dict per group) and are read at every step,
so a scheduler changes the learning rate with `opt.param_groups[i]["lr"] = ...`.

AdamW's update of a float32/float16/bfloat16 parameter is ONE backend call (`adamw`:
one kernel on CUDA) instead of ~19 elementwise graph nodes: `step()` first realizes the
gradients (with the forward/backward graph behind them) and the moments in one
schedule, then calls the backend op per parameter on those buffers and assigns its
three outputs (p, m, v), which arrive already computed. No graph node is built for
the update itself: a training step's ~300 update and output-selecting nodes would
cost more Python than the kernels they launch. The step's scalars are the call's
arguments, not part of any kernel source. It does the same float32 operations in the
same order as the composed graph, so results are bit-identical to it.
`AdamW(..., fused=False)` (or env MINIGRAD_FUSED_OPTIM=0) builds the composed graph
instead; float64 parameters always use it.
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np

from . import lazy
from .autograd import no_grad
from .device import get_backend
from .dtype import float32, float64, int64
from .tensor import Tensor, realize

FUSED = os.environ.get("MINIGRAD_FUSED_OPTIM", "1") != "0"   # default of AdamW(fused=)


class Optimizer:
    """Base class. `params` is an iterable of Tensors, or of dicts
    `{"params": [...], "lr": ..., ...}` (param groups) whose options override `defaults`."""

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self._direct = []        # updates step() runs on realized buffers (AdamW's fused one)
        params = [params] if isinstance(params, Tensor) else list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups, self.state, seen = [], {}, set()
        for i, g in enumerate(groups):
            if not isinstance(g, dict) or "params" not in g:
                raise TypeError(f"{type(self).__name__}: param group {i} must be a dict with "
                                f"a 'params' key (or pass a plain list of Tensors)")
            unknown = set(g) - set(self.defaults) - {"params"}
            if unknown:
                raise ValueError(f"{type(self).__name__}: param group {i} has unknown "
                                 f"options {sorted(unknown)}; known: {sorted(self.defaults)}")
            ps = g["params"]
            ps = [ps] if isinstance(ps, Tensor) else list(ps)
            for p in ps:
                if not isinstance(p, Tensor) or not p.dtype.is_float:
                    raise TypeError(f"{type(self).__name__}: parameters must be float "
                                    f"Tensors, got {p!r}")
                if id(p) in seen:
                    raise ValueError(f"{type(self).__name__}: a parameter appears twice "
                                     f"(shape {p.shape}); list each Tensor once")
                seen.add(id(p))
            self.param_groups.append({**self.defaults, **g, "params": ps})

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (PyTorch's default), or with set_to_none=False
        set it to zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None if set_to_none or p.grad is None else Tensor.zeros_like(p.grad)

    def step(self) -> None:
        out, self._direct, n_updates = [], [], 0
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        if p.grad.device != p.device or p.grad.shape != p.shape:
                            raise ValueError(
                                f"{type(self).__name__}.step: a gradient of shape "
                                f"{p.grad.shape} on {p.grad.device} for a parameter of shape "
                                f"{p.shape} on {p.device}; they must match")
                        state = self.state.setdefault(id(p), {"step": 0})
                        state["step"] += 1
                        out.extend(self._update(p, p.grad.detach(), group, state))
                        n_updates += 1
        if lazy.capture is not None and len(self._direct) != n_updates:
            raise RuntimeError(
                f"mg.jit: {type(self).__name__}.step() inside a captured function needs every "
                "update to be AdamW's fused one (float32/float16/bfloat16 parameters, "
                "fused=True): a composed update would replay with the learning rate and step "
                "count of the captured call")
        if out:
            realize(*out)
        direct, self._direct = self._direct, []
        for run in direct:              # updates that run on realized buffers (AdamW)
            run()

    def _update(self, p: Tensor, g: Tensor, group: dict, state: dict) -> list:
        """Assign p's new value (`g` is p's gradient, in any float dtype); return the
        Tensors to realize (p and its moments)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- state --
    _moments: tuple = ()        # names of the per-parameter state Tensors

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        """A flat {name: Tensor} dict that `mg.save` can store: per-parameter state
        `state.<i>.<name>` (i counts parameters across groups in order; `step` is an
        int64 scalar) and the groups' options `param_groups.<g>.<option>` (float64,
        on the CPU)."""
        out = {}
        for i, p in enumerate(self._params()):
            st = self.state.get(id(p))
            if st is None:
                continue
            out[f"state.{i}.step"] = Tensor(np.int64(st["step"]), dtype=int64, device="cpu")
            for name in self._moments:
                if name in st:
                    out[f"state.{i}.{name}"] = st[name].detach()
        for gi, group in enumerate(self.param_groups):
            for k, v in group.items():
                if k != "params":
                    out[f"param_groups.{gi}.{k}"] = Tensor(np.asarray(v, dtype=np.float64),
                                                           dtype=float64, device="cpu")
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what `state_dict()` returned (for the same parameters, in the same
        groups). Moments move to each parameter's device and dtype."""
        name = type(self).__name__
        params = self._params()
        new_state, used = {}, set()

        def value(key):
            used.add(key)
            v = state_dict[key]
            return v if isinstance(v, Tensor) else Tensor(np.asarray(v), device="cpu")

        for i, p in enumerate(params):
            if f"state.{i}.step" not in state_dict:
                continue
            st = {"step": int(value(f"state.{i}.step").item())}
            for m in self._moments:
                key = f"state.{i}.{m}"
                if key in state_dict:
                    t = value(key)
                    if t.shape != p.shape:
                        raise ValueError(f"{name}.load_state_dict: {key} has shape {t.shape},"
                                         f" parameter {i} has shape {p.shape}")
                    st[m] = t.detach().to(p.device).cast(_work_dtype(p))
            new_state[id(p)] = st
        options = []
        for gi, group in enumerate(self.param_groups):
            for k, current in group.items():
                key = f"param_groups.{gi}.{k}"
                if k != "params" and key in state_dict:
                    v = value(key).numpy()
                    v = tuple(type(c)(x) for c, x in zip(current, v.reshape(-1))) \
                        if isinstance(current, (tuple, list)) else type(current)(v.item())
                    options.append((group, k, v))
        unexpected = [k for k in state_dict if k not in used]
        if unexpected:
            raise ValueError(f"{name}.load_state_dict: unexpected keys {unexpected} (a "
                             f"state dict of another optimizer or other parameters?)")
        for group, k, v in options:
            group[k] = v
        self.state = new_state
        realize(*(t for st in new_state.values() for k, t in st.items() if k != "step"))


def _work_dtype(p: Tensor):
    """The dtype updates and moments of p are computed in: float32 for 16-bit floats."""
    return float32 if p.dtype.itemsize < 4 else p.dtype


class SGD(Optimizer):
    """PyTorch's SGD: g += wd*p; with momentum, buf = g on the first step, else
    buf = momentum*buf + (1-dampening)*g; g = g + momentum*buf (Nesterov) or buf;
    p -= lr*g."""
    _moments = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, dampening=0.0,
                 nesterov=False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got "
                             f"{lr}, {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      dampening=dampening, nesterov=nesterov))

    def _update(self, p, g, group, state):
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        g = g.cast(_work_dtype(p))
        w = p.cast(g.dtype)
        if wd:
            g = g + w * wd
        out = [p]
        if momentum:
            buf = state.get("momentum_buffer")
            buf = g if buf is None else \
                buf * momentum + (g * (1 - group["dampening"]) if group["dampening"] else g)
            state["momentum_buffer"] = buf
            out.append(buf)
            g = g + buf * momentum if group["nesterov"] else buf
        p.assign(w - g * lr)               # assign rounds to p's dtype
        return out


class AdamW(Optimizer):
    """PyTorch's AdamW (amsgrad off):
        p   -= lr * weight_decay * p                      (decoupled decay, first)
        m    = beta1 * m + (1 - beta1) * g
        v    = beta2 * v + (1 - beta2) * g*g
        p   -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - beta_i**step
    written with few ops: m += (g - m)*(1-beta1), v += (g*g - v)*(1-beta2), and
    p = p*(1 - lr*wd) - m * (lr*sqrt(bc2)/bc1) / (sqrt(v) + eps*sqrt(bc2)).
    The scalars (1 - beta1, 1 - beta2, 1 - lr*wd, lr*sqrt(bc2)/bc1, eps*sqrt(bc2)) are
    computed in Python float64 and rounded once to float32; the elementwise math is
    float32 (for float16/bfloat16 parameters too, rounded to p's dtype once at the end).
    `fused` (default: env MINIGRAD_FUSED_OPTIM, on): one backend `adamw` call per
    parameter (one kernel on CUDA; no graph node, see the module docstring) instead of
    the composed elementwise graph; same results, bit for bit."""
    _moments = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 fused=None):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"AdamW: lr, eps and weight_decay must be >= 0, got "
                             f"{lr}, {eps}, {weight_decay}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay))
        self.fused = FUSED if fused is None else bool(fused)   # not an option: not saved

    def _update(self, p, g, group, state):
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], \
            group["weight_decay"]
        work = _work_dtype(p)
        if "exp_avg" not in state:
            state["exp_avg"] = Tensor.zeros_like(p, dtype=work)
            state["exp_avg_sq"] = Tensor.zeros_like(p, dtype=work)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if self.fused and work is float32 and g.dtype.itemsize <= 4 and \
                m.dtype is float32 and v.dtype is float32:
            self._direct.append(functools.partial(_adamw_direct, p, g, group, state))
            return [p, g, m, v]         # realized by step() before the call
        bc1, bc2_sqrt = 1 - beta1 ** state["step"], math.sqrt(1 - beta2 ** state["step"])
        g = g.cast(work)
        m = state["exp_avg"] = m + (g - m) * (1 - beta1)
        v = state["exp_avg_sq"] = v + (g * g - v) * (1 - beta2)
        w = p.cast(g.dtype)
        decayed = w * (1 - lr * wd) if wd else w
        p.assign(decayed - m * (lr * bc2_sqrt / bc1) / (v.sqrt() + eps * bc2_sqrt))
        return [p, m, v]


def _adamw_consts(group: dict, step: int) -> tuple:
    """The fused update's scalars (c1, c2, decay, step size, eps) as the composed graph
    rounds them (computed in Python float64, rounded once to float32)."""
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], \
        group["weight_decay"]
    bc1, bc2_sqrt = 1 - beta1 ** step, math.sqrt(1 - beta2 ** step)
    return tuple(float(np.float32(c)) for c in (
        1 - beta1, 1 - beta2, 1 - lr * wd if wd else 1.0, lr * bc2_sqrt / bc1, eps * bc2_sqrt))


def _adamw_direct(p: Tensor, g: Tensor, group: dict, state: dict):
    """The fused AdamW update of one parameter: the backend's `adamw` on the realized
    buffers of p, g and the moments; p takes the new value, the state the new moments.

    While mg.jit captures, the update runs in place (a replay must find this step's
    result where the next step reads it) and each replay advances the step count and
    reads the group's options again (a scheduler's learning rate)."""
    m, v = state["exp_avg"], state["exp_avg_sq"]
    backend, consts = get_backend(p.device), _adamw_consts(group, state["step"])
    if lazy.capture is None:
        new_p, new_m, new_v = backend.adamw(*consts, *(t.lazydata.realized for t in (p, g, m, v)))
        shape, device = p.shape, p.device
        state["exp_avg"] = Tensor._from_lazy(lazy.constant(new_m, shape, float32, device))
        state["exp_avg_sq"] = Tensor._from_lazy(lazy.constant(new_v, shape, float32, device))
        p.lazydata = lazy.constant(new_p, shape, p.dtype, device)
        return
    for name, t in (("p", p), ("exp_avg", m), ("exp_avg_sq", v)):   # dense buffers of their own
        if not t.lazydata.realized.contig:
            t = Tensor._from_lazy(lazy.constant(backend._dense(t.lazydata.realized),
                                                t.shape, t.dtype, t.device))
            if name == "p":
                p.lazydata = t.lazydata
            else:
                state[name] = t
    bufs = [t.lazydata.realized for t in (p, g, state["exp_avg"], state["exp_avg_sq"])]

    def unchanged():
        if p.lazydata.realized is not bufs[0] or state["exp_avg"].lazydata.realized is not bufs[2] \
                or state["exp_avg_sq"].lazydata.realized is not bufs[3]:
            raise RuntimeError("mg.jit: a parameter or its optimizer state was replaced after "
                               "the step was captured (load_state_dict?); call .reset() on the "
                               "jitted function")

    def replay_consts():
        state["step"] += 1
        return _adamw_consts(group, state["step"])

    lazy.capture.checks.append(unchanged)
    backend.adamw(*consts, *bufs, in_place=True, replay_consts=replay_consts)
