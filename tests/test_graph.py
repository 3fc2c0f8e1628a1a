"""Deep graphs and memory: a 10,000-op chain realizes and backpropagates without
recursion and in linear time; the graph behind a loss is freed after backward(),
so memory stays flat over a training loop."""
import gc
import sys
import time
import weakref

import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor
from minigrad.autograd import Function
from minigrad.lazy import LazyBuffer


def _chain(n, device, x0):
    x = Tensor(x0, requires_grad=True, device=device)
    y = x
    for _ in range(n):
        y = y * 1.0001 + 0.0001
    return x, y


def _expected(n, x0):
    a = np.float64(np.float32(1.0001))
    b = np.float64(np.float32(0.0001))
    value = x0.astype(np.float64) * a ** n + b * (a ** n - 1) / (a - 1)
    return value, a ** n


def test_10k_chain_realize_and_backward(device):
    n = 10_000
    x0 = np.array([0.5, -1.0, 2.0], np.float32)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)       # a recursive walk of the graph would fail
    try:
        x, y = _chain(n, device, x0)
        value, slope = _expected(n, x0)
        np.testing.assert_allclose(y.numpy(), value, rtol=2e-3)
        y.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), np.full(3, slope), rtol=2e-3)
    finally:
        sys.setrecursionlimit(old)


def test_10k_chain_backward_before_forward_realize(device):
    # realize forward and gradient in one schedule, the way an optimizer step does
    x, y = _chain(10_000, device, np.array([1.0], np.float32))
    loss = y.sum()
    loss.backward()
    mg.realize(loss, x.grad)
    _, slope = _expected(10_000, np.array([1.0]))
    np.testing.assert_allclose(x.grad.numpy(), [slope], rtol=2e-3)


def test_deep_graph_freed_without_recursion_error(device):
    # dropping the last reference to a deep, never-realized graph must not overflow
    x, y = _chain(10_000, device, np.array([1.0], np.float32))
    ref = weakref.ref(y)
    del y
    gc.collect()
    assert ref() is None


def _time_chain(n, device):
    # the CPU path is timed in process CPU time: under a loaded machine (pytest -n 12)
    # the wall clock measures the neighbours, not the algorithm
    clock = time.process_time if device == "cpu" else time.perf_counter
    best = float("inf")
    for _ in range(2):
        t0 = clock()
        x, y = _chain(n, device, np.array([1.0, 2.0], np.float32))
        y.sum().backward()
        mg.realize(y, x.grad)
        mg.synchronize()
        best = min(best, clock() - t0)
        del x, y
    return best


def test_chain_time_is_linear(device):
    _time_chain(500, device)          # warm-up (imports, caches, first kernels)
    small, big = _time_chain(2_500, device), _time_chain(10_000, device)
    ratio = big / small
    # linear: ~4; quadratic: ~16
    assert ratio < 8, f"2,500 ops: {small:.3f}s, 10,000 ops: {big:.3f}s (ratio {ratio:.1f})"


# ---------------------------------------------------------------- memory ----

def test_graph_freed_after_backward_by_refcount(device, rng):
    """With the cyclic GC off, intermediates and contexts die as soon as backward has
    run, the update is realized and the loss is dropped: no reference cycles."""
    w = Tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True,
               device=device)
    x = Tensor(rng.standard_normal((5, 4)).astype(np.float32), device=device)
    gc.collect()
    gc.disable()
    try:
        h = (x @ w).tanh()
        loss = (h * h).mean()
        refs = [weakref.ref(h), weakref.ref(h._ctx), weakref.ref(loss._ctx),
                weakref.ref(h.lazydata)]
        del h
        loss.backward()
        w.assign(w.detach() - 0.1 * w.grad)
        w.grad = None
        mg.realize(w)
        del loss
        alive = [r() for r in refs if r() is not None]
        assert not alive, f"still alive without gc: {alive}"
        assert w.lazydata.srcs == ()        # the realized parameter holds no graph
    finally:
        gc.enable()


def test_user_function_ctx_freed(device):
    class Square(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * g * x

    x = Tensor([1.0, 2.0], requires_grad=True, device=device)
    gc.disable()
    try:
        y = Square.apply(x)
        ctx_ref = weakref.ref(y._ctx)
        y.sum().backward()
        del y
        assert ctx_ref() is None
    finally:
        gc.enable()
    assert x.grad.tolist() == [2.0, 4.0]


def _count(cls):
    return sum(1 for o in gc.get_objects() if isinstance(o, cls))


def test_memory_flat_over_training_loop(device):
    """50 steps of a small MLP with manual SGD: the numbers of live LazyBuffers,
    Tensors and autograd contexts do not grow (with and without the cyclic GC)."""
    rng = np.random.default_rng(0)
    xs = Tensor(rng.standard_normal((16, 4)).astype(np.float32), device=device)
    ys = Tensor(rng.integers(0, 3, 16), device=device)
    params = [Tensor(rng.standard_normal(s).astype(np.float32) * 0.5, requires_grad=True,
                     device=device)
              for s in [(4, 16), (16,), (16, 3), (3,)]]
    lr = 0.1

    def step():
        w1, b1, w2, b2 = params
        loss = ((xs @ w1 + b1).gelu() @ w2 + b2).cross_entropy(ys)
        loss.backward()
        for p in params:
            p.assign(p.detach() - lr * p.grad)
            p.grad = None
        mg.realize(loss, *params)
        return loss.item()

    counts, losses = [], []
    gc.collect()
    gc.disable()
    try:
        for i in range(50):
            losses.append(step())
            if i in (9, 29, 49):
                counts.append((_count(LazyBuffer), _count(Tensor), _count(Function)))
    finally:
        gc.enable()
    assert losses[-1] < losses[0] * 0.8, "the loop did not train"
    assert counts[0] == counts[1] == counts[2], f"live objects grew: {counts}"
    gc.collect()
    after = (_count(LazyBuffer), _count(Tensor), _count(Function))
    assert all(a <= c for a, c in zip(after, counts[-1])), (after, counts)
    for p in params:
        assert p.lazydata.srcs == () and p.lazydata.realized is not None
    assert all(p.is_leaf and p.requires_grad for p in params)


def test_parameter_chain_does_not_grow_without_backward_graph(device):
    # p.assign(p - lr * g) keeps p a leaf: no autograd history builds up across steps
    p = Tensor(np.ones(3, np.float32), requires_grad=True, device=device)
    for _ in range(5):
        (p * p).sum().backward()
        p.assign(p.detach() - 0.1 * p.grad)
        p.grad = None
        p.realize()
        assert p._ctx is None and p.lazydata.srcs == ()
    np.testing.assert_allclose(p.numpy(), np.full(3, 0.8 ** 5), rtol=1e-6)


@pytest.mark.parametrize("retain", [False, True])
def test_saved_tensors_released_after_backward(device, retain):
    x = Tensor([1.0, 2.0], requires_grad=True, device=device)
    y = x.exp()
    ctx = y._ctx
    y.sum().backward(retain_graph=retain)
    assert (ctx.saved_tensors == ()) is (not retain)
    assert (ctx.parents == ()) is (not retain)


FORWARD_OPS = {
    "exp": lambda t: t.exp(), "sqrt": lambda t: t.abs().sqrt(), "recip": lambda t: 1 / t,
    "tanh": lambda t: t.tanh(), "sigmoid": lambda t: t.sigmoid(), "pow": lambda t: t ** 2.5,
    "pow_tensor": lambda t: t.abs() ** t, "max": lambda t: t.max(0), "log": lambda t: t.log(),
    "softmax": lambda t: t.softmax(-1), "layernorm": lambda t: t.layernorm(),
    "index": lambda t: t[[0, 1, 1]], "matmul": lambda t: t @ t.T, "cat": lambda t: Tensor.cat([t, t]),
    "where": lambda t: (t > 1).where(t, 0.0), "cross_entropy": lambda t: t.cross_entropy(Tensor([0, 1, 1, 0], device=t.device)),
}


@pytest.mark.parametrize("name", list(FORWARD_OPS))
def test_forward_graph_without_backward_freed_by_refcount(device, name):
    """A graph built with grad on but never backpropagated (e.g. evaluation without
    no_grad) must not hold reference cycles (ctx -> output -> ctx): dropping the
    output frees its context at once."""
    x = Tensor(np.linspace(0.5, 2.0, 12, dtype=np.float32).reshape(4, 3), requires_grad=True,
               device=device)
    gc.collect()
    gc.disable()
    try:
        y = FORWARD_OPS[name](x)
        refs = [weakref.ref(y), weakref.ref(y._ctx), weakref.ref(y.lazydata)]
        y.realize()
        del y
        alive = [r() for r in refs if r() is not None]
        assert not alive, f"still alive without gc: {alive}"
    finally:
        gc.enable()


def _qkv_inputs(device, rng):
    x = rng.standard_normal((5, 64)).astype(np.float16)
    ws = [rng.integers(-127, 128, (64, 24), dtype=np.int8) for _ in range(3)]
    return Tensor(x, device=device), [Tensor(w, device=device) for w in ws]


def test_realizing_the_outputs_of_one_kernel_together(device, monkeypatch):
    """mg.realize(*outputs) of a multi-output op (its "select" nodes) runs that op once
    without a graph walk, as one output's realize() does; repeated outputs, outputs left
    for later and outputs realized one by one give the same values."""
    rng = np.random.default_rng(0)
    x, ws = _qkv_inputs(device, rng)
    want = [o.numpy() for o in mg.ops.qkv_project_int8(x, *ws, 0.01, 0.02, 0.03)]
    from minigrad import lazy
    walks = []
    real_schedule = lazy.schedule
    monkeypatch.setattr(lazy, "schedule", lambda roots: walks.append(1) or real_schedule(roots))
    q, k, v = mg.ops.qkv_project_int8(x, *ws, 0.01, 0.02, 0.03)
    mg.realize(q, k, q, v)                          # q twice: run once
    assert walks == []
    for got, w in zip((q, k, v), want):
        np.testing.assert_array_equal(got.numpy(), w)
    q, k, v = mg.ops.qkv_project_int8(x, *ws, 0.01, 0.02, 0.03)
    mg.realize(q)                                   # one output first, the others later
    mg.realize(k, v)
    for got, w in zip((q, k, v), want):
        np.testing.assert_array_equal(got.numpy(), w)
    q, k, v = mg.ops.qkv_project_int8(x, *ws, 0.01, 0.02, 0.03)
    mg.realize(q, k * 2)                            # not all selects: the general path
    assert walks
    np.testing.assert_array_equal(q.numpy(), want[0])
    np.testing.assert_array_equal(k.numpy(), want[1])


SHALLOW = {   # (minigrad, NumPy) of graphs at most two levels deep over realized tensors
    "broadcast add": (lambda w, x, a: w + x, lambda w, x, a: w + x),       # expand, add
    "sum over an axis": (lambda w, x, a: w.sum(1), lambda w, x, a: w.sum(1)),  # reduce, reshape
    "matmul with a transposed view": (lambda w, x, a: w @ a.T,             # permute, product
                                      lambda w, x, a: w @ a.T),
    "sum of a product": (lambda w, x, a: (w * w).sum(0, keepdim=True),     # elementwise
                         lambda w, x, a: (w * w).sum(0, keepdims=True)),   # under a reduce
}


@pytest.mark.parametrize("name", SHALLOW)
def test_shallow_graphs_run_without_a_graph_walk(device, name, monkeypatch, rng):
    """An op whose sources are realized, or are views / kernels / an elementwise node
    under a non-elementwise op of realized tensors, runs without schedule() and fuse()
    (eager-style use), with the same values as NumPy."""
    from minigrad import lazy
    w_, x_, a_ = (rng.standard_normal(s).astype(np.float32) for s in ((4, 6), (6,), (5, 6)))
    w, x, a = (Tensor(v, device=device).realize() for v in (w_, x_, a_))
    ours, numpy_fn = SHALLOW[name]
    walks = []
    real_schedule = lazy.schedule
    monkeypatch.setattr(lazy, "schedule", lambda roots: walks.append(1) or real_schedule(roots))
    out = ours(w, x, a).realize()
    assert walks == []
    np.testing.assert_allclose(out.numpy(), numpy_fn(w_, x_, a_), rtol=1e-5, atol=1e-5)
    # two roots sharing a source (the permute): each node runs once
    t = a.T
    p, q = w @ t, (w * w) @ t
    mg.realize(p, q)
    assert walks == []
    np.testing.assert_allclose(p.numpy(), w_ @ a_.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(q.numpy(), (w_ * w_) @ a_.T, rtol=1e-5, atol=1e-5)


def test_elementwise_chains_still_fuse(device, monkeypatch):
    """x * 2 + y is one fused kernel: the eager shortcut leaves fusable graphs to fuse()."""
    from minigrad import lazy
    x, y = (Tensor(np.arange(4, dtype=np.float32), device=device).realize() for _ in range(2))
    fused = []
    real_fuse = lazy.fuse
    monkeypatch.setattr(lazy, "fuse", lambda order, roots: fused.append(len(order)) or
                        real_fuse(order, roots))
    out = x * 2 + y
    out.realize()
    assert fused and out.lazydata.op == "fused"        # mul and add in one kernel
    np.testing.assert_array_equal(out.numpy(), np.arange(4) * 3)
