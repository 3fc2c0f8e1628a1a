"""SGD and AdamW against PyTorch's update formulas, written out in NumPy float64
(PyTorch need not be installed), on fixed sequences of gradients."""
import math

import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor
from minigrad.optim import SGD, AdamW

STEPS = 8


# -- PyTorch's update rules, formula by formula (torch/optim/sgd.py, adamw.py) ----------

class RefSGD:
    def __init__(self, lr, momentum=0.0, weight_decay=0.0, dampening=0.0, nesterov=False):
        self.lr, self.momentum, self.wd = lr, momentum, weight_decay
        self.dampening, self.nesterov, self.buf = dampening, nesterov, None

    def step(self, p, g):
        d_p = g + self.wd * p if self.wd != 0 else g
        if self.momentum != 0:
            if self.buf is None:
                self.buf = d_p.copy()                       # first step: buf = d_p
            else:
                self.buf = self.momentum * self.buf + (1 - self.dampening) * d_p
            d_p = d_p + self.momentum * self.buf if self.nesterov else self.buf
        return p - self.lr * d_p


class RefAdamW:
    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.m = self.v = None
        self.t = 0

    def step(self, p, g):
        if self.m is None:
            self.m, self.v = np.zeros_like(p), np.zeros_like(p)
        self.t += 1
        p = p * (1 - self.lr * self.wd)                     # decoupled weight decay first
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        bc1, bc2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        denom = np.sqrt(self.v) / math.sqrt(bc2) + self.eps
        return p - (self.lr / bc1) * self.m / denom


# -- harness --------------------------------------------------------------------------

def fixed_run(shapes, seed=0):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) * (0.1 + k % 3) for s in shapes] for k in range(STEPS)]
    return init, grads


def run(make_opt, refs, dtype, shapes=((3, 4), (5,)), grad_none=(), lr_schedule=None, seed=0):
    """Step a minigrad optimizer and the references through the same gradients and
    compare the parameters after every step. `grad_none` lists (step, param) pairs
    whose gradient is None; `lr_schedule(step, opt, refs)` may change learning rates."""
    init, grads = fixed_run(shapes, seed)
    # the references start from the same (rounded) numbers the optimizer sees
    init = [x.astype(dtype.np).astype(np.float64) for x in init]
    grads = [[g.astype(dtype.np).astype(np.float64) for g in gs] for gs in grads]
    params = [Tensor(x, dtype=dtype, requires_grad=True) for x in init]
    opt = make_opt(params)
    ref_p = [x.copy() for x in init]
    worst = 0.0
    for k in range(STEPS):
        if lr_schedule:
            lr_schedule(k, opt, refs)
        for i, p in enumerate(params):
            if (k, i) in grad_none:
                p.grad = None
            else:
                p.grad = Tensor(grads[k][i], dtype=dtype)
                ref_p[i] = refs[i].step(ref_p[i], grads[k][i])
        opt.step()
        for p, r in zip(params, ref_p):     # error relative to max(1, |p|)
            err = np.abs(p.numpy().astype(np.float64) - r) / np.maximum(1, np.abs(r))
            worst = max(worst, float(err.max()))
        opt.zero_grad()
        assert all(p.grad is None for p in params)
    return worst


TOL = {mg.float64: 1e-12, mg.float32: 1e-6}


@pytest.mark.parametrize("dtype", [mg.float64, mg.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kw", [
    dict(lr=0.1),
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01, dampening=0.3),
    dict(lr=0.05, momentum=0.8, weight_decay=0.01, nesterov=True),
], ids=["plain", "wd", "momentum", "momentum-wd-dampening", "nesterov"])
def test_sgd_matches_pytorch_formulas(kw, dtype):
    worst = run(lambda ps: SGD(ps, **kw), [RefSGD(**kw) for _ in range(2)], dtype)
    assert worst <= TOL[dtype]


@pytest.mark.parametrize("dtype", [mg.float64, mg.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kw", [
    dict(),
    dict(lr=1e-2, weight_decay=0.0),
    dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
], ids=["defaults", "no-wd", "custom"])
def test_adamw_matches_pytorch_formulas(kw, dtype):
    worst = run(lambda ps: AdamW(ps, **kw), [RefAdamW(**kw) for _ in range(2)], dtype)
    assert worst <= TOL[dtype]


def test_adamw_defaults_are_pytorchs():
    opt = AdamW([Tensor.zeros(2, requires_grad=True)])
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-8,
                                                                    1e-2)


@pytest.mark.parametrize("dtype", [mg.float64, mg.float32], ids=["f64", "f32"])
def test_param_groups_and_lr_change_mid_run(dtype):
    group_opts = [dict(lr=1e-2, weight_decay=0.1), dict(lr=5e-2, betas=(0.5, 0.9))]

    def make(ps):
        return AdamW([{"params": [ps[0]], **group_opts[0]},
                      {"params": [ps[1], ps[2]], **group_opts[1]}], eps=1e-7,
                     weight_decay=0.0)
    refs = [RefAdamW(eps=1e-7, **group_opts[0]),
            RefAdamW(eps=1e-7, **{"weight_decay": 0.0, **group_opts[1]}),
            RefAdamW(eps=1e-7, **{"weight_decay": 0.0, **group_opts[1]})]

    def schedule(k, opt, refs):          # a scheduler: change lr between steps
        if k == 3:
            opt.param_groups[0]["lr"] = refs[0].lr = 3e-3
            opt.param_groups[1]["lr"] = refs[1].lr = refs[2].lr = 0.2
    worst = run(make, refs, dtype, shapes=((3, 4), (5,), (2, 2)), lr_schedule=schedule)
    assert worst <= TOL[dtype]

    sgd_opts = [dict(lr=0.1), dict(lr=0.01, momentum=0.9, weight_decay=0.05)]
    worst = run(lambda ps: SGD([{"params": [ps[0]], **sgd_opts[0]},
                                {"params": [ps[1]], **sgd_opts[1]}], lr=1.0),
                [RefSGD(**o) for o in sgd_opts], dtype)
    assert worst <= TOL[dtype]


def test_params_without_grad_are_skipped():
    # PyTorch skips a parameter whose .grad is None: no decay, no moment update, and its
    # step count (hence bias correction) does not advance
    skip = {(1, 0), (2, 0), (4, 1)}
    worst = run(lambda ps: AdamW(ps, lr=1e-2), [RefAdamW(lr=1e-2) for _ in range(2)],
                mg.float64, grad_none=skip)
    assert worst <= 1e-12
    worst = run(lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
                [RefSGD(lr=0.1, momentum=0.9, weight_decay=0.1) for _ in range(2)],
                mg.float64, grad_none=skip)
    assert worst <= 1e-12


def test_step_realizes_everything_in_one_schedule(monkeypatch):
    import minigrad.optim as optim_module
    calls = []
    real = optim_module.realize
    monkeypatch.setattr(optim_module, "realize", lambda *ts: (calls.append(len(ts)),
                                                                real(*ts)))
    lin = mg.nn.Linear(4, 3)
    opt = AdamW(lin.parameters(), lr=0.1)
    before = lin.weight.numpy()
    lin(Tensor.randn(5, 4)).square().mean().backward()      # gradients are lazy
    assert lin.weight.grad.lazydata.realized is None
    weight = lin.weight
    opt.step()
    # one realize: per parameter p, its gradient and its 2 moments (the fused update
    # then runs on those buffers)
    assert calls == [8]
    assert lin.weight is weight and lin.weight.lazydata.realized is not None
    assert all(t.lazydata.realized is not None for st in opt.state.values()
               for k, t in st.items() if k != "step")
    assert not np.allclose(lin.weight.numpy(), before)
    opt.zero_grad()
    opt.step()                                              # no grads: nothing to do
    assert calls == [8]


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    shapes = ((3, 4), (5,))
    init, grads = fixed_run(shapes, seed=3)

    def make(values):
        ps = [Tensor(v, requires_grad=True) for v in values]
        return ps, AdamW([{"params": [ps[0]], "lr": 1e-2}, {"params": [ps[1]], "lr": 2e-2,
                                                           "weight_decay": 0.0}])

    def steps(ps, opt, ks):
        for k in ks:
            for p, g in zip(ps, grads[k]):
                p.grad = Tensor(g, dtype=p.dtype)
            opt.step()
            opt.zero_grad()

    ps, opt = make(init)
    steps(ps, opt, range(3))
    opt.param_groups[1]["lr"] = 5e-3
    mg.save(opt.state_dict(), tmp_path / "opt.safetensors")
    snapshot = [p.numpy() for p in ps]
    steps(ps, opt, range(3, STEPS))

    ps2, opt2 = make(snapshot)
    opt2.load_state_dict(mg.load(tmp_path / "opt.safetensors", device="cpu"))
    assert opt2.param_groups[1]["lr"] == 5e-3 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    steps(ps2, opt2, range(3, STEPS))
    for a, b in zip(ps, ps2):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    sd = SGD(ps2, lr=0.1, momentum=0.9)
    for p, g in zip(ps2, grads[0]):
        p.grad = Tensor(g, dtype=p.dtype)
    sd.step()
    state = sd.state_dict()
    assert set(state) >= {"state.0.step", "state.0.momentum_buffer", "param_groups.0.lr"}
    with pytest.raises(ValueError, match="unexpected keys"):
        opt2.load_state_dict(state)
    bad = dict(opt.state_dict())
    bad["state.0.exp_avg"] = Tensor.zeros(2, 2)
    with pytest.raises(ValueError, match="shape"):
        opt2.load_state_dict(bad)


def test_optimizer_argument_errors():
    p = Tensor.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([])
    with pytest.raises(ValueError, match="unknown options"):
        AdamW([{"params": [p], "momentum": 0.9}])
    with pytest.raises(ValueError, match="appears twice"):
        SGD([p, p], lr=0.1)
    with pytest.raises(TypeError, match="float Tensors"):
        SGD([Tensor([1, 2])], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        AdamW([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr"):
        SGD([p], lr=-1.0)


def test_trains_a_linear_regression():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = x @ np.array([[1.5], [-2.0], [0.5]], dtype=np.float32) + 0.3
    for make in (lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: AdamW(ps, lr=0.05,
                                                                          weight_decay=0)):
        mg.manual_seed(0)
        lin = mg.nn.Linear(3, 1)
        opt = make(lin.parameters())
        for _ in range(200):
            loss = ((lin(Tensor(x)) - Tensor(y)) ** 2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        assert loss.item() < 1e-3
        np.testing.assert_allclose(lin.bias.numpy(), [0.3], atol=0.02)


@pytest.mark.parametrize("dtype", [mg.float16, mg.bfloat16], ids=["f16", "bf16"])
def test_half_precision_params_update_in_float32(dtype):
    # gradients of 1e-4: g*g = 1e-8 and eps = 1e-8 underflow to 0 in float16, where a
    # naive half-precision AdamW would divide 0 by 0
    rng = np.random.default_rng(0)
    init = rng.standard_normal((4, 5)).astype(dtype.np).astype(np.float64)
    p = Tensor(init, dtype=dtype, requires_grad=True)
    opt, ref = AdamW([p], lr=1e-3), RefAdamW(lr=1e-3)
    r = init.copy()
    for _ in range(5):
        g = (rng.standard_normal((4, 5)) * 1e-4).astype(dtype.np).astype(np.float64)
        p.grad = Tensor(g, dtype=dtype)
        opt.step()
        r = ref.step(r, g)
        assert p.dtype == dtype
    assert opt.state[id(p)]["exp_avg"].dtype == mg.float32
    got = p.numpy().astype(np.float64)
    assert np.isfinite(got).all()
    # each step rounds p to the half-precision grid once: a few ulps after 5 steps
    ulp = 2.0 ** (-10 if dtype == mg.float16 else -7)
    np.testing.assert_allclose(got, r, rtol=0, atol=5 * ulp * np.abs(r).max())


# -- the fused AdamW step (one backend `adamw` call per parameter) ------------------------------

def _adamw_steps(dtype, shapes, fused, device="cpu", steps=5, seed=0, transpose_grads=False,
                 **kw):
    """Parameters and moments (NumPy) after `steps` AdamW steps on fixed random data,
    with a learning-rate change midway and one parameter skipped at step 2."""
    rng = np.random.default_rng(seed)
    params = [Tensor(rng.standard_normal(s).astype(np.float32), dtype=dtype, device=device,
                     requires_grad=True) for s in shapes]
    opt = AdamW([{"params": params[:1], "weight_decay": 0.0}, {"params": params[1:]}],
                fused=fused, **kw)
    for k in range(steps):
        if k == 3:
            opt.param_groups[1]["lr"] *= 0.5
        for i, (p, s) in enumerate(zip(params, shapes)):
            g = (rng.standard_normal(s) * 10.0 ** rng.integers(-6, 2)).astype(np.float32)
            if k == 2 and i == len(params) - 1:
                p.grad = None
            elif transpose_grads and len(s) == 2:     # a non-contiguous (permuted) grad
                p.grad = Tensor(np.ascontiguousarray(g.T), dtype=dtype, device=device).T
            else:
                p.grad = Tensor(g, dtype=dtype, device=device)
        opt.step()
        opt.zero_grad()
    out = [p.numpy() for p in params]
    for p in params:
        st = opt.state[id(p)]
        out += [st["exp_avg"].numpy(), st["exp_avg_sq"].numpy()]
    return out


SHAPES = ((1,), (7,), (3, 5), (), (64, 33))


def _bits(a):
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


@pytest.mark.parametrize("dtype", [mg.float32, mg.float16, mg.bfloat16],
                         ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("kw", [dict(), dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6,
                                             weight_decay=0.1)], ids=["defaults", "custom"])
def test_fused_adamw_is_bit_identical_to_composed(dtype, kw):
    fused = _adamw_steps(dtype, SHAPES, True, **kw)
    composed = _adamw_steps(dtype, SHAPES, False, **kw)
    for a, b in zip(fused, composed):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(_bits(a), _bits(b))
    fused_t = _adamw_steps(dtype, SHAPES, True, transpose_grads=True, **kw)
    for a, b in zip(fused_t, composed):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_fused_adamw_is_one_backend_call_per_parameter(monkeypatch):
    # the update builds no graph node: step() realizes the gradients and moments, then
    # calls the backend's adamw once per parameter on their buffers
    from minigrad import lazy
    from minigrad.device import get_backend
    ps = [Tensor.randn(4, 3, requires_grad=True).realize(),
          Tensor.randn(3, requires_grad=True).realize()]
    opt = AdamW(ps, weight_decay=0.1, fused=True)
    backend = get_backend(ps[0].device)
    real_run, real_adamw = lazy._run, backend.adamw
    for first in (True, False):
        for p in ps:
            p.grad = Tensor.randn(*p.shape).realize()
        before = [p.numpy() for p in ps]
        ops, calls = [], []
        with monkeypatch.context() as m:    # (undo() would also drop the CPU pin)
            m.setattr(lazy, "_run", lambda lb: (ops.append(lb.op), real_run(lb))[1])
            m.setattr(backend, "adamw", lambda *a: (calls.append(a[5].shape), real_adamw(*a))[1])
            opt.step()
        assert sorted(ops) == (["full"] * 4 if first else [])    # the zero moments, once
        assert calls == [(4, 3), (3,)]
        for p, b in zip(ps, before):       # updated, and held as realized buffers
            assert p.lazydata.realized is not None and not np.array_equal(p.numpy(), b)
            for k in ("exp_avg", "exp_avg_sq"):
                assert opt.state[id(p)][k].lazydata.realized is not None


def test_step_rejects_a_gradient_of_another_shape_or_device():
    p = Tensor.randn(3, requires_grad=True)
    opt = AdamW([p])
    p.grad = Tensor.randn(4)
    with pytest.raises(ValueError, match=r"AdamW.step: a gradient of shape \(4,\)"):
        opt.step()


@pytest.mark.cuda
def test_step_rejects_a_gradient_on_another_device():
    p = Tensor.randn(3, requires_grad=True, device="cpu")
    opt = AdamW([p])
    p.grad = Tensor.randn(3, device="cuda")
    with pytest.raises(ValueError, match="on cuda for a parameter of shape"):
        opt.step()


def test_fused_adamw_falls_back_for_float64_and_flag(monkeypatch):
    import minigrad.optim as optim_module
    p = Tensor.randn(3, dtype=mg.float64, requires_grad=True)
    opt = AdamW([p])
    p.grad = Tensor.randn(3, dtype=mg.float64)
    opt.step()
    assert p.dtype == mg.float64 and opt.state[id(p)]["exp_avg"].dtype == mg.float64
    monkeypatch.setattr(optim_module, "FUSED", False)
    assert AdamW([p]).fused is False and AdamW([p], fused=True).fused is True


def test_fused_adamw_state_dict_resumes_on_composed(tmp_path):
    # moments written by the fused step are ordinary Tensors: save, load into an
    # optimizer of the other kind, and continue bit for bit
    rng = np.random.default_rng(5)
    init = rng.standard_normal((4, 6)).astype(np.float32)
    grads = [rng.standard_normal((4, 6)).astype(np.float32) for _ in range(6)]

    def run_steps(p, opt, gs):
        for g in gs:
            p.grad = Tensor(g)
            opt.step()
            opt.zero_grad()

    p = Tensor(init, requires_grad=True)
    opt = AdamW([p], lr=1e-2, fused=True)
    run_steps(p, opt, grads[:3])
    mg.save(opt.state_dict(), tmp_path / "opt.safetensors")
    snap = p.numpy()
    run_steps(p, opt, grads[3:])
    for fused in (True, False):
        p2 = Tensor(snap, requires_grad=True)
        opt2 = AdamW([p2], lr=1e-2, fused=fused)
        opt2.load_state_dict(mg.load(tmp_path / "opt.safetensors", device="cpu"))
        run_steps(p2, opt2, grads[3:])
        np.testing.assert_array_equal(p.numpy(), p2.numpy())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [mg.float32, mg.float16, mg.bfloat16],
                         ids=["f32", "f16", "bf16"])
def test_fused_adamw_cuda_matches_cpu(dtype):
    # the CUDA kernel uses round-to-nearest intrinsics (no FMA contraction), so it is
    # meant to be bit-identical to the NumPy backend (itself bit-identical to the
    # composed graph); the 1e-6 relative check first, so a failure shows the size
    shapes = ((1,), (7,), (1000003,), (33, 65), ())
    kw = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    cpu = _adamw_steps(dtype, shapes, True, "cpu", **kw)
    for transpose in (False, True):          # contiguous and permuted gradients
        gpu = _adamw_steps(dtype, shapes, True, "cuda", transpose_grads=transpose, **kw)
        for a, b in zip(gpu, cpu):
            assert a.dtype == b.dtype and a.shape == b.shape
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            err = np.abs(a64 - b64) / np.maximum(np.abs(b64), 1e-12)
            assert float(err.max(initial=0.0)) <= 1e-6, (a.shape, float(err.max()))
            np.testing.assert_array_equal(_bits(a), _bits(b))
