"""Elementwise fusion (lazy.fuse): chains of unary/binary/where/cast nodes run as one
`fused` node, with results bit-identical to running them one by one (FUSE=0), and
only nodes that nothing else can read are folded away."""
import collections
import gc
import weakref

import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor, lazy, tensor


@pytest.fixture(autouse=True)
def _fusion_on(monkeypatch):
    """These tests are about fusion: on, even when the environment says FUSE=0."""
    monkeypatch.setattr(lazy, "FUSE", True)


@pytest.fixture
def ran(monkeypatch):
    """A Counter of the ops run (LazyBuffer.describe() labels), filled as nodes run."""
    counts = collections.Counter()
    run = lazy._run

    def counting(lb):
        counts[lb.describe()] += 1
        return run(lb)
    monkeypatch.setattr(lazy, "_run", counting)
    return counts


def _both(fn, monkeypatch):
    """fn() -> list of Tensors, computed with fusion and without: two lists of arrays."""
    out = []
    for fuse in (True, False):
        monkeypatch.setattr(lazy, "FUSE", fuse)
        ts = fn()
        mg.realize(*ts)
        out.append([t.numpy() for t in ts])
    return out


def _assert_bits_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), f"not bit-identical:\n{a}\n{b}"


def _gelu_input(device="cpu", shape=(4, 7), dtype=mg.float32, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3
    return Tensor(x, device=device).cast(dtype).realize()


def test_gelu_is_one_kernel(ran):
    x = _gelu_input()
    y = x.gelu().realize()
    assert sum(ran.values()) == 1 + ran["full"], ran           # constants are views
    (label,) = [k for k in ran if k.startswith("fused:")]
    assert "tanh" in label and y.lazydata.describe() == label
    assert y.lazydata.srcs == ()


def test_counts_layernorm_and_adam_like_chain(ran, monkeypatch):
    x = _gelu_input(shape=(3, 8))
    m, v, g = (_gelu_input(shape=(3, 8), seed=s) for s in (1, 2, 3))
    counts = []
    for fuse in (True, False):
        monkeypatch.setattr(lazy, "FUSE", fuse)
        ran.clear()
        x.layernorm().realize()
        m2 = m * 0.9 + g * 0.1
        v2 = v * 0.99 + g * g * 0.01
        (x - 0.01 * m2 / ((v2 * 1000).sqrt() + 1e-8)).realize()
        counts.append(collections.Counter(ran))

    def launches(c):
        return sum(n for k, n in c.items() if k not in ("full", "expand", "reshape"))
    fused, unfused = counts
    assert launches(fused) <= launches(unfused) // 2, counts     # 10 vs 23 when written
    assert fused["fused:mul+add+sqrt+recip"] == 1, fused           # (var + eps).rsqrt()


DTYPE_CASES = {
    "f32": lambda x, y: ((x * y + 1.5).tanh() * (x - y).exp() / (y.abs() + 1)),
    "f16": lambda x, y: ((x.half() * y.half() + 0.5).sigmoid() - x.half() * 3).sqrt(),
    "bf16": lambda x, y: (x.bfloat16() * 1.1 + y.bfloat16() * y.bfloat16()).float() * 1e-3,
    "int_and_bool": lambda x, y: (((x * 10).long() * 3 + (y * 10).int()) > 2).where(
        (x * 100).int() * 7, -((y * 100).int().maximum(3) - 5)),
    "compare_where_cast": lambda x, y: (x > y).where(x.half(), y.half()).float() +
        (x <= 0).float() * 2 - (~(y > 1)).cast(mg.float32),
    "broadcast": lambda x, y: (x * y[:1] + y.sum(1, keepdim=True)).maximum(x[:, :1] * 2),
    "views": lambda x, y: (x.permute(1, 0) * 2 + y.permute(1, 0)[::-1]).exp() - 1,
    "mixed_rounding": lambda x, y: ((x.half() * x.half()).float() + x * x).bfloat16() * 3,
}


@pytest.mark.parametrize("case", list(DTYPE_CASES))
def test_bit_identical_to_unfused(case, monkeypatch, ran):
    x, y = _gelu_input(shape=(5, 6)), _gelu_input(shape=(5, 6), seed=1)
    fused, plain = _both(lambda: [DTYPE_CASES[case](x, y)], monkeypatch)
    _assert_bits_equal(fused[0], plain[0])
    assert any(k.startswith("fused:") for k in ran), ran


def test_node_used_twice_is_not_inlined(ran):
    x = _gelu_input()
    a = (x * 2).exp()           # used by both the add and the mul below
    out = (a + 1) * a
    del a
    out.realize()
    assert ran["fused:mul+exp"] == 1 and ran["fused:add+mul"] == 1, ran
    np.testing.assert_array_equal(out.numpy(), (np.exp(x.numpy() * 2) + 1) * np.exp(x.numpy() * 2))


def test_node_held_by_a_tensor_is_realized(ran):
    x = _gelu_input()
    a = x * 2                   # a live Tensor: may be read after out is realized
    out = (a + 1).exp()
    out.realize()
    assert a.lazydata.realized is not None and ran["binary:mul"] == 1, ran
    assert ran["fused:add+exp"] == 1
    np.testing.assert_array_equal(a.numpy(), x.numpy() * 2)
    np.testing.assert_array_equal(out.numpy(), np.exp(x.numpy() * 2 + 1))


def test_roots_are_realized(ran):
    x = _gelu_input()
    a = x * 2
    c = a * (x + 1)
    mg.realize(c, a)            # a is a root, x + 1 is not
    assert a.lazydata.realized is not None and ran["fused:add+mul"] == 1, ran
    np.testing.assert_array_equal(c.numpy(), (x.numpy() * 2) * (x.numpy() + 1))


def test_unscheduled_user_keeps_its_source(ran):
    x = _gelu_input()
    a = x * 3
    other = a.exp()             # an unrealized node outside the next schedule uses a
    out = (a + 1).lazydata
    del a
    lazy.realize(out)
    lazy.realize(other.lazydata)
    np.testing.assert_array_equal(other.numpy(), np.exp(x.numpy() * 3))


def test_fused_away_nodes_are_freed():
    x = _gelu_input()
    gc.disable()
    try:
        a = x * 2
        ref = weakref.ref(a.lazydata)
        out = (a + 1).tanh()
        del a                   # only the graph holds a now: it is fused away
        out.realize()
        assert ref() is None and out.lazydata.srcs == ()
    finally:
        gc.enable()


def test_long_chain_is_split(ran, monkeypatch):
    x = _gelu_input()
    monkeypatch.setattr(lazy, "MAX_FUSED_OPS", 8)
    y = x
    for i in range(50):
        y = y * 1.01 + 0.01 if i % 2 else (y - 0.5).abs()
    y.realize()
    fused = {k: n for k, n in ran.items() if k.startswith("fused:")}
    assert all(len(k.split("+")) <= 8 for k in fused)
    assert 8 <= sum(fused.values()) <= 20, ran
    monkeypatch.setattr(lazy, "FUSE", False)
    z = x
    for i in range(50):
        z = z * 1.01 + 0.01 if i % 2 else (z - 0.5).abs()
    _assert_bits_equal(y.numpy(), z.numpy())


def test_gradients_bit_identical(monkeypatch):
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(s).astype(np.float32) for s in [(8, 6), (6, 5), (5,)]]

    def step():
        x, w, b = (Tensor(d, requires_grad=True) for d in data)
        h = (x @ w + b).gelu().layernorm()
        loss = (h * h.sigmoid() - (h > 0).where(h, 0.0)).mean()
        loss.backward()
        return [loss, x.grad, w.grad, b.grad]
    fused, plain = _both(step, monkeypatch)
    for f, p in zip(fused, plain):
        _assert_bits_equal(f, p)


def test_describe_and_debug_output(capsys, monkeypatch):
    monkeypatch.setattr(lazy, "DEBUG", 3)
    # constants not yet realized (a realized one is shared by later ops: not scheduled)
    monkeypatch.setattr(tensor, "_SCALARS", {})
    x = _gelu_input()
    capsys.readouterr()
    ((x * 2 + 1).tanh()).realize()
    outp = capsys.readouterr().out
    assert "fused:mul+add+tanh" in outp and "fused 5 ops into 3" in outp   # 2 fulls stay


def test_fuse_off(ran, monkeypatch):
    monkeypatch.setattr(lazy, "FUSE", False)
    _gelu_input().gelu().realize()
    assert not any(k.startswith("fused:") for k in ran)


# -- CUDA: fused kernels against unfused ones (bit-identical) and against the CPU --------
SHAPES = [(1,), (0, 3), (7, 13), (3, 1, 257), (2, 3, 5, 7), (1025, 33)]


@pytest.mark.cuda
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", list(DTYPE_CASES))
def test_cuda_fused_matches_unfused_and_cpu(case, shape, monkeypatch):
    if case in ("broadcast", "views") and len(shape) != 2:
        shape = (shape[0] + 2, 5)
    results = {}
    for dev in ("cuda", "cpu"):
        x, y = (_gelu_input(dev, shape, seed=s) for s in (0, 1))
        results[dev] = _both(lambda: [DTYPE_CASES[case](x, y)], monkeypatch)
    (cf,), (cu,) = results["cuda"]
    _assert_bits_equal(cf, cu)           # fusion changes nothing on the GPU either
    cpu = results["cpu"][0][0]
    tol = 1e-2 if cpu.dtype.itemsize == 2 else 1e-5
    np.testing.assert_allclose(cf.astype(np.float64), cpu.astype(np.float64), rtol=tol, atol=tol)


@pytest.mark.cuda
def test_cuda_fused_gradients_match_unfused(monkeypatch):
    rng = np.random.default_rng(1)
    data = [rng.standard_normal(s).astype(np.float32) for s in [(33, 17), (17, 9), (9,)]]

    def step():
        x, w, b = (Tensor(d, requires_grad=True, device="cuda") for d in data)
        h = (x @ w + b).gelu().layernorm()
        loss = (h.half() * h.half().sigmoid()).float().mean()
        loss.backward()
        return [loss, x.grad, w.grad, b.grad]
    fused, plain = _both(step, monkeypatch)
    for f, p in zip(fused, plain):
        _assert_bits_equal(f, p)
