"""The Tensor API against NumPy, on every device: forward values (hypothesis-driven
shapes and fresh random values), dtypes and promotion, factories, conversions,
laziness, debugging aids, build-time errors, and autograd bookkeeping."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
from minigrad import Tensor
from minigrad import lazy
from minigrad.device import get_backend

ROOT = Path(__file__).resolve().parents[1]
# the laziness checks make no sense when the suite itself runs with LAZY=0
lazy_only = pytest.mark.skipif(not lazy.LAZY, reason="LAZY=0: every op runs at once")

# `device` is a plain value, safe to share across hypothesis examples.
# MINIGRAD_HYPOTHESIS_EXAMPLES=500 runs a deeper search (the default keeps CI fast).
HYP = settings(max_examples=int(os.environ.get("MINIGRAD_HYPOTHESIS_EXAMPLES", "25")),
               deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])

ALL_DTYPES = [mg.float32, mg.float16, mg.bfloat16, mg.int8, mg.int32, mg.int64,
              mg.uint32, mg.bool]


def randn(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def close(t, ref, rtol=1e-5, atol=1e-6):
    out = t.numpy() if isinstance(t, Tensor) else t
    ref = np.asarray(ref)
    assert out.shape == ref.shape, f"shape {out.shape} != {ref.shape}"
    np.testing.assert_allclose(out.astype(np.float64), ref.astype(np.float64),
                               rtol=rtol, atol=atol, equal_nan=True)


seeds = st.integers(0, 2 ** 32 - 1)


# ================================================================ forward vs NumPy ==

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "pow": (lambda a, b: a ** b, np.power),
    "maximum": (lambda a, b: a.maximum(b), np.maximum),
    "minimum": (lambda a, b: a.minimum(b), np.minimum),
}
COMPARE = {
    "lt": (lambda a, b: a < b, np.less), "le": (lambda a, b: a <= b, np.less_equal),
    "gt": (lambda a, b: a > b, np.greater), "ge": (lambda a, b: a >= b, np.greater_equal),
    "eq": (lambda a, b: a == b, np.equal), "ne": (lambda a, b: a != b, np.not_equal),
}


@pytest.mark.parametrize("op", list(BINARY))
@HYP
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4,
                                                min_side=1, max_side=5),
       seed=seeds, reflect=st.booleans())
def test_binary_broadcast_matches_numpy(device, op, shapes, seed, reflect):
    (sa, sb), _ = shapes.input_shapes, shapes.result_shape
    a, b = randn(seed, sa), randn(seed + 1, sb)
    if op == "div":
        b = np.where(np.abs(b) < 0.1, 0.5, b).astype(np.float32)
    if op == "pow":
        a = np.abs(a) + 0.1
    if reflect:   # the other operand order, to exercise broadcasting both ways
        a, b = (b, a) if op not in ("div", "pow") else (a, b)
    fn, ref = BINARY[op]
    out = fn(Tensor(a, device=device), Tensor(b, device=device))
    assert out.shape == np.broadcast_shapes(a.shape, b.shape)
    assert out.dtype == mg.float32 and out.device == device
    close(out, ref(a, b), rtol=1e-5 if op != "pow" else 1e-4, atol=1e-6)


@pytest.mark.parametrize("op", list(COMPARE))
@HYP
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4),
       seed=seeds)
def test_comparisons_match_numpy(device, op, shapes, seed):
    sa, sb = shapes.input_shapes
    # small integers so that equality happens often
    a = np.random.default_rng(seed).integers(-2, 3, sa).astype(np.float32)
    b = np.random.default_rng(seed + 1).integers(-2, 3, sb)
    fn, ref = COMPARE[op]
    out = fn(Tensor(a, device=device), Tensor(b, device=device))
    assert out.dtype == mg.bool
    np.testing.assert_array_equal(out.numpy(), ref(a, b))
    assert not out.requires_grad


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "radd", "rsub", "rmul", "rdiv"])
def test_python_scalar_operands(device, op, rng):
    a = rng.standard_normal((3, 4)).astype(np.float32)
    t = Tensor(a, device=device)
    s = 1.7
    out = {"add": t + s, "sub": t - s, "mul": t * s, "div": t / s,
           "radd": s + t, "rsub": s - t, "rmul": s * t, "rdiv": s / t}[op]
    ref = {"add": a + s, "sub": a - s, "mul": a * s, "div": a / s,
           "radd": s + a, "rsub": s - a, "rmul": s * a, "rdiv": s / a}[op]
    close(out, ref, rtol=1e-6)


def test_scalar_constants_one_node_per_value(device):
    """Equal Python scalar operands share one constant node, and on CUDA one buffer:
    tensor._scalar and the CUDA backend's `full` key them by one rule
    (backend.const_key). 0.0 and -0.0 stay apart, NaN finds its own node again, and
    2 and 2.0 are different constants (their nodes keep the value as given)."""
    x = Tensor([1.0, -2.0], device=device)
    node = lambda c: (x * c).lazydata.srcs[1]
    assert node(0.5) is node(0.5) and node(float("nan")) is node(float("nan"))
    assert node(0.0) is not node(-0.0) and node(2) is not node(2.0)
    assert np.signbit((x * 0.0).numpy()).tolist() == [False, True]
    assert np.signbit((x * -0.0).numpy()).tolist() == [True, False]     # not 0.0's constant
    assert np.isnan((x + float("nan")).numpy()).all()


def test_numpy_array_operand(device, rng):
    a, b = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    t = Tensor(a, device=device)
    close(t + b, a + b)
    close(b * t, a * b)      # NumPy on the left defers to Tensor (__array_priority__)
    assert isinstance(b * t, Tensor)


@pytest.mark.parametrize("exponent", [2, 3, 0.5, -1, -2, 1.5, 0])
def test_pow_scalar(device, exponent, rng):
    a = rng.uniform(0.2, 3, (4, 5)).astype(np.float32)
    close(Tensor(a, device=device) ** exponent, a.astype(np.float64) ** exponent, rtol=1e-5)
    close(2.0 ** Tensor(a, device=device), 2.0 ** a.astype(np.float64), rtol=1e-5)


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


UNARY = {
    "neg": (lambda t: -t, np.negative, "any"),
    "exp": (lambda t: t.exp(), np.exp, "any"),
    "log": (lambda t: t.log(), np.log, "pos"),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, "pos"),
    "rsqrt": (lambda t: t.rsqrt(), lambda x: 1 / np.sqrt(x), "pos"),
    "reciprocal": (lambda t: t.reciprocal(), np.reciprocal, "pos"),
    "sin": (lambda t: t.sin(), np.sin, "any"),
    "cos": (lambda t: t.cos(), np.cos, "any"),
    "tanh": (lambda t: t.tanh(), np.tanh, "any"),
    "sigmoid": (lambda t: t.sigmoid(), lambda x: 1 / (1 + np.exp(-x)), "any"),
    "relu": (lambda t: t.relu(), lambda x: np.maximum(x, 0), "any"),
    "gelu": (lambda t: t.gelu(), _gelu, "any"),
    "abs": (lambda t: t.abs(), np.abs, "any"),
    "square": (lambda t: t.square(), np.square, "any"),
    "clip": (lambda t: t.clip(-0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7), "any"),
}


@pytest.mark.parametrize("op", list(UNARY))
@HYP
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=6), seed=seeds)
def test_unary_matches_numpy(device, op, shape, seed):
    fn, ref, domain = UNARY[op]
    x = randn(seed, shape) * 3
    if domain == "pos":
        x = np.abs(x) + 0.05
    out = fn(Tensor(x, device=device))
    assert out.dtype == mg.float32
    close(out, ref(x.astype(np.float64)), rtol=2e-5, atol=1e-6)


def test_sigmoid_extremes(device):
    x = np.array([-100.0, -30.0, 0.0, 30.0, 100.0], np.float32)
    out = Tensor(x, device=device).sigmoid().numpy()
    assert np.all(np.isfinite(out))
    close(out, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-5, atol=1e-30)


@HYP
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=4),
       seed=seeds)
def test_where_matches_numpy(device, shapes, seed):
    sc, sa, sb = shapes.input_shapes
    rng = np.random.default_rng(seed)
    cond, a, b = rng.random(sc) > 0.5, randn(seed, sa), randn(seed + 1, sb)
    out = Tensor.where(Tensor(cond, device=device), Tensor(a, device=device),
                       Tensor(b, device=device))
    np.testing.assert_array_equal(out.numpy(), np.where(cond, a, b))


def test_where_scalars_and_nonbool_cond(device, rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    t = Tensor(x, device=device)
    np.testing.assert_array_equal((t > 0).where(t, 0.0).numpy(), np.where(x > 0, x, 0))
    np.testing.assert_array_equal((t > 0).where(1.0, -1.0).numpy(), np.where(x > 0, 1.0, -1.0))
    m = Tensor((x > 0).astype(np.int32), device=device)      # nonzero ints count as true
    np.testing.assert_array_equal(m.where(t, 2.0).numpy(), np.where(x > 0, x, 2.0))


@st.composite
def shape_and_axes(draw, max_dims=4):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=5))
    n = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]))
    if kind == "none":
        return shape, None
    axes = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    axes = [a - n if draw(st.booleans()) else a for a in axes]    # negative too
    return shape, (axes[0] if kind == "int" else tuple(axes))


REDUCE = {
    "sum": (lambda t, ax, kd: t.sum(ax, keepdim=kd), lambda x, ax, kd: x.sum(ax, keepdims=kd)),
    "mean": (lambda t, ax, kd: t.mean(ax, keepdim=kd), lambda x, ax, kd: x.mean(ax, keepdims=kd)),
    "max": (lambda t, ax, kd: t.max(ax, keepdim=kd), lambda x, ax, kd: x.max(ax, keepdims=kd)),
    "min": (lambda t, ax, kd: t.min(ax, keepdim=kd), lambda x, ax, kd: x.min(ax, keepdims=kd)),
    "var": (lambda t, ax, kd: t.var(ax, keepdim=kd),
            lambda x, ax, kd: x.var(ax, keepdims=kd, ddof=1)),
    "std": (lambda t, ax, kd: t.std(ax, keepdim=kd),
            lambda x, ax, kd: x.std(ax, keepdims=kd, ddof=1)),
}


@pytest.mark.parametrize("op", list(REDUCE))
@HYP
@given(sa=shape_and_axes(), keepdim=st.booleans(), seed=seeds)
def test_reductions_match_numpy(device, op, sa, keepdim, seed):
    shape, axis = sa
    x = randn(seed, shape)
    fn, ref = REDUCE[op]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")          # var/std of one element: nan, as here
        expected = ref(x.astype(np.float64), axis, keepdim)
    out = fn(Tensor(x, device=device), axis, keepdim)
    assert out.shape == np.shape(expected)
    close(out, expected, rtol=1e-4, atol=1e-5)


def test_reduction_of_0d_and_int(device):
    assert Tensor(3.0, device=device).sum().item() == 3.0
    t = Tensor(np.arange(12).reshape(3, 4), device=device)
    s = t.sum(0)
    assert s.dtype == mg.int64
    np.testing.assert_array_equal(s.numpy(), np.arange(12).reshape(3, 4).sum(0))
    assert t.mean().dtype == mg.float32 and t.mean().item() == 5.5
    assert t.max().item() == 11 and t.min(1).tolist() == [0, 4, 8]


@HYP
@given(sa=shape_and_axes(), keepdim=st.booleans(), seed=seeds)
def test_argmax_matches_numpy(device, sa, keepdim, seed):
    shape, axis = sa
    if isinstance(axis, tuple):
        axis = axis[0]
    x = randn(seed, shape)
    out = Tensor(x, device=device).argmax(axis, keepdim=keepdim)
    ref = np.argmax(x, axis=axis, keepdims=keepdim) if axis is not None else np.argmax(x)
    assert out.dtype == mg.int64
    np.testing.assert_array_equal(out.numpy(), ref)
    if axis is not None:
        np.testing.assert_array_equal(Tensor(x, device=device).argmin(axis).numpy(),
                                      np.argmin(x, axis=axis))


def test_argmax_ties_first_index(device):
    t = Tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], device=device)
    assert t.argmax(1).tolist() == [1, 0]


# ---- movement ----------------------------------------------------------------

@HYP
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), data=st.data(), seed=seeds)
def test_permute_transpose_T(device, shape, data, seed):
    x = randn(seed, shape)
    t = Tensor(x, device=device)
    order = data.draw(st.permutations(range(len(shape))))
    np.testing.assert_array_equal(t.permute(*order).numpy(), x.transpose(order))
    np.testing.assert_array_equal(t.permute(order).numpy(), x.transpose(order))
    d0, d1 = data.draw(st.integers(-len(shape), len(shape) - 1)), \
        data.draw(st.integers(-len(shape), len(shape) - 1))
    np.testing.assert_array_equal(t.transpose(d0, d1).numpy(), np.swapaxes(x, d0, d1))
    np.testing.assert_array_equal(t.T.numpy(), x.T)
    np.testing.assert_array_equal(t.T.contiguous().numpy(), x.T)


@HYP
@given(shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=5), data=st.data(), seed=seeds)
def test_reshape_flatten_squeeze_unsqueeze(device, shape, data, seed):
    x = randn(seed, shape)
    t = Tensor(x, device=device)
    # reshape into a random factorisation of numel (with -1 sometimes)
    n, new = x.size, []
    while n > 1:
        f = data.draw(st.sampled_from([d for d in range(2, n + 1) if n % d == 0]))
        new.append(f)
        n //= f
    new = data.draw(st.permutations(new)) + [1] * data.draw(st.integers(0, 2))
    np.testing.assert_array_equal(t.reshape(*new).numpy(), x.reshape(new))
    np.testing.assert_array_equal(t.reshape(tuple(new)).numpy(), x.reshape(new))
    np.testing.assert_array_equal(t.view(-1).numpy(), x.reshape(-1))
    if new:
        neg = list(new)
        neg[data.draw(st.integers(0, len(neg) - 1))] = -1
        np.testing.assert_array_equal(t.reshape(neg).numpy(), x.reshape(neg))
    np.testing.assert_array_equal(t.flatten().numpy(), x.reshape(-1))
    if x.ndim >= 2:
        s = data.draw(st.integers(0, x.ndim - 1))
        e = data.draw(st.integers(s, x.ndim - 1))
        ref = x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:])
        np.testing.assert_array_equal(t.flatten(s, e).numpy(), ref)
    d = data.draw(st.integers(-x.ndim - 1, x.ndim))
    np.testing.assert_array_equal(t.unsqueeze(d).numpy(), np.expand_dims(x, d))
    np.testing.assert_array_equal(t.squeeze().numpy(), np.squeeze(x))
    ones = [i for i, s in enumerate(x.shape) if s == 1]
    if ones:
        np.testing.assert_array_equal(t.squeeze(ones[0]).numpy(), np.squeeze(x, ones[0]))


def test_squeeze_non_one_axis_is_noop(device):
    t = Tensor(np.ones((2, 3)), device=device)
    assert t.squeeze(0).shape == (2, 3)


@HYP
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=1, max_dims=4, max_side=4),
       seed=seeds)
def test_expand_matches_broadcast_to(device, shapes, seed):
    (s,), target = shapes.input_shapes, shapes.result_shape
    x = randn(seed, s)
    np.testing.assert_array_equal(Tensor(x, device=device).expand(*target).numpy(),
                                  np.broadcast_to(x, target))


def test_expand_with_new_leading_dims_is_one_node():
    # broadcasting a bias (N,) to (B, T, N) is one expand node, with no reshape before it;
    # its gradient sums over the new and the broadcast axes
    b = Tensor(np.arange(3.0, dtype=np.float32), requires_grad=True)
    y = b.expand(2, 4, 3)
    assert y.lazydata.op == "expand" and y.lazydata.srcs[0] is b.lazydata
    (y * 2).sum().backward()
    np.testing.assert_array_equal(b.grad.numpy(), np.full(3, 16.0, np.float32))
    c = Tensor(np.ones((1, 3), np.float32), requires_grad=True)
    c.expand(5, 2, 3).sum().backward()
    assert c.grad.shape == (1, 3) and np.all(c.grad.numpy() == 10.0)


def test_shape_ops_that_change_nothing_add_no_node():
    # expand to the tensor's own shape, spelled with -1 or not, returns the tensor itself
    # (as reshape, permute, squeeze and transpose do): no node for the scheduler and the
    # backward to walk. A real expand, even if only -1 and new leading dims, still is one.
    x = Tensor(np.ones((2, 1, 3), np.float32), requires_grad=True)
    for y in (x.expand(2, 1, 3), x.expand(-1, -1, -1), x.expand(2, -1, 3),
              x.reshape(-1, 1, 3), x.permute(0, 1, 2), x.transpose(1, 1), x.squeeze(0)):
        assert y is x, y.lazydata
    assert x.expand(2, 4, -1).lazydata.srcs[0] is x.lazydata
    y = x.expand(5, -1, -1, -1)
    assert y.shape == (5, 2, 1, 3) and y.lazydata.op == "expand"
    y.sum().backward()
    assert np.all(x.grad.numpy() == 5.0)


@HYP
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), data=st.data(), seed=seeds)
def test_pad_both_styles(device, shape, data, seed):
    x = randn(seed, shape)
    t = Tensor(x, device=device)
    pads = [tuple(data.draw(st.integers(0, 2)) for _ in range(2)) for _ in shape]
    value = data.draw(st.sampled_from([0.0, -1.5]))
    ref = np.pad(x, pads, constant_values=value)
    np.testing.assert_array_equal(t.pad(pads, value=value).numpy(), ref)
    # torch.nn.functional.pad style: last axis first, possibly fewer axes
    k = data.draw(st.integers(1, len(shape)))
    flat = tuple(v for p in pads[::-1][:k] for v in p)
    ref2 = np.pad(x, [(0, 0)] * (len(shape) - k) + pads[len(shape) - k:],
                  constant_values=value)
    np.testing.assert_array_equal(t.pad(flat, value=value).numpy(), ref2)


def test_shrink(device, rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(Tensor(x, device=device).shrink(((1, 3), None)).numpy(),
                                  x[1:3])


@HYP
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), data=st.data(), seed=seeds)
def test_cat_stack_split_chunk(device, shape, data, seed):
    rng = np.random.default_rng(seed)
    nd = len(shape)
    dim = data.draw(st.integers(-nd, nd - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    xs = []
    for s in sizes:
        sh = list(shape)
        sh[dim] = s
        xs.append(rng.standard_normal(sh).astype(np.float32))
    ts = [Tensor(x, device=device) for x in xs]
    cat = Tensor.cat(ts, dim)
    ref = np.concatenate(xs, axis=dim)
    np.testing.assert_array_equal(cat.numpy(), ref)
    sdim = data.draw(st.integers(-nd - 1, nd))
    np.testing.assert_array_equal(Tensor.stack([Tensor(xs[0], device=device)] * 2, sdim).numpy(),
                                  np.stack([xs[0]] * 2, sdim))
    # split into equal pieces (last smaller), and into listed sizes
    n = ref.shape[dim]
    size = data.draw(st.integers(1, n))
    parts = cat.split(size, dim)
    ref_parts = np.split(ref, list(range(size, n, size)), axis=dim)
    assert len(parts) == len(ref_parts)
    for p, r in zip(parts, ref_parts):
        np.testing.assert_array_equal(p.numpy(), r)
    for p, r in zip(cat.split(sizes, dim), xs):
        np.testing.assert_array_equal(p.numpy(), r)
    k = data.draw(st.integers(1, n))
    chunk = -(-n // k)    # torch.chunk: pieces of ceil(n / k)
    ref_chunks = np.split(ref, list(range(chunk, n, chunk)), axis=dim)
    got = cat.chunk(k, dim)
    assert len(got) == len(ref_chunks)
    for p, r in zip(got, ref_chunks):
        np.testing.assert_array_equal(p.numpy(), r)


def test_cat_promotes_dtypes(device):
    out = Tensor.cat([Tensor([1, 2], device=device), Tensor([0.5], device=device)])
    assert out.dtype == mg.float32 and out.tolist() == [1.0, 2.0, 0.5]


def test_cat_stack_refuse_a_tensor_and_bad_elements(device):
    a = Tensor(np.ones((2, 3), np.float32), device=device)
    with pytest.raises(TypeError, match="cat: expected a list or tuple of Tensors"):
        Tensor.cat(a)                      # would otherwise iterate over a's rows
    with pytest.raises(TypeError, match="cat: expected a list or tuple"):
        a.cat(a, dim=0)
    with pytest.raises(TypeError, match="stack: element 1 is a int"):
        Tensor.stack([a, 3])
    with pytest.raises(ValueError, match="cat: zero-dimensional"):
        Tensor.cat([Tensor(1.0, device=device), Tensor(2.0, device=device)])


def test_chunk_and_split_edge_cases(device):
    a = Tensor(np.arange(6, dtype=np.float32), device=device)
    for n in (0, -1, 1.5):
        with pytest.raises(ValueError, match="chunk: the number of chunks must be a positive"):
            a.chunk(n)
    empty = Tensor.zeros(0, 3, device=device)
    pieces = empty.split(2)                # one empty piece, as in PyTorch
    assert len(pieces) == 1 and pieces[0].shape == (0, 3)


# ---- indexing ----------------------------------------------------------------

@HYP
@given(shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5), data=st.data(),
       seed=seeds)
def test_basic_indexing_matches_numpy(device, shape, data, seed):
    x = randn(seed, shape)
    idx = data.draw(hnp.basic_indices(shape, min_dims=0, allow_newaxis=True,
                                      allow_ellipsis=True))
    ref = x[idx]
    out = Tensor(x, device=device)[idx]
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.numpy(), ref)


@HYP
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5), data=st.data(),
       seed=seeds)
def test_integer_array_indexing_matches_numpy(device, shape, data, seed):
    x = randn(seed, shape)
    axis = data.draw(st.integers(0, len(shape) - 1))
    n = shape[axis]
    idx = data.draw(hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
                               elements=st.integers(-n, n - 1)))
    kind = data.draw(st.sampled_from(["numpy", "list", "tensor"]))
    index = {"numpy": idx, "list": idx.tolist(), "tensor": Tensor(idx, device=device)}[kind]
    full = (slice(None),) * axis + (index,)
    ref = x[(slice(None),) * axis + (idx,)]
    out = Tensor(x, device=device)[full]
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.numpy(), ref)


def test_index_with_int32_tensor_and_negative(device, rng):
    x = rng.standard_normal((5, 3)).astype(np.float32)
    idx = np.array([-1, 0, -5, 2], np.int32)
    np.testing.assert_array_equal(Tensor(x, device=device)[Tensor(idx, device=device)].numpy(),
                                  x[idx])


def test_slice_then_array_index(device, rng):
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    t = Tensor(x, device=device)
    np.testing.assert_array_equal(t[1:, [0, -1, 0]].numpy(), x[1:, [0, -1, 0]])
    np.testing.assert_array_equal(t[::-2, 2, [1, 1]].numpy(), x[::-2, 2, [1, 1]])


def test_embedding_gather(device, rng):
    w = rng.standard_normal((10, 4)).astype(np.float32)
    idx = rng.integers(0, 10, (2, 6))
    np.testing.assert_array_equal(Tensor(w, device=device).embedding(Tensor(idx, device=device))
                                  .numpy(), w[idx])


def test_embedding_called_on_the_indices(device, rng):
    """API.md's `.embedding(weight)`: the index tensor called with the table, the order
    of PyTorch's F.embedding(idx, weight); the gradient reaches the table."""
    w = rng.standard_normal((10, 4)).astype(np.float32)
    idx = rng.integers(0, 10, (2, 6))
    tw = Tensor(w, device=device, requires_grad=True)
    out = Tensor(idx, device=device).embedding(tw)
    np.testing.assert_array_equal(out.numpy(), w[idx])
    np.testing.assert_array_equal(Tensor(idx, device=device).embedding(weight=w).numpy(), w[idx])
    out.sum().backward()
    np.testing.assert_array_equal(tw.grad.numpy(), np.bincount(idx.ravel(), minlength=10)
                                  [:, None].repeat(4, 1).astype(np.float32))


# ---- matmul and nn functions -------------------------------------------------

@pytest.mark.parametrize("sa,sb", [
    ((3, 4), (4, 5)), ((1, 7), (7, 1)), ((4,), (4, 3)), ((3, 4), (4,)), ((4,), (4,)),
    ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 2)), ((4,), (2, 4, 3)), ((2, 3, 4), (4,)),
    ((17, 33), (33, 9)),
], ids=str)
def test_matmul_matches_numpy(device, sa, sb, rng):
    a = rng.standard_normal(sa).astype(np.float32)
    b = rng.standard_normal(sb).astype(np.float32)
    out = Tensor(a, device=device) @ Tensor(b, device=device)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert out.shape == ref.shape
    close(out, ref, rtol=1e-4, atol=1e-4)
    close(Tensor(a, device=device).matmul(b), ref, rtol=1e-4, atol=1e-4)


def test_matmul_int_inputs_give_float(device):
    out = Tensor([[1, 2], [3, 4]], device=device) @ Tensor([[1], [1]], device=device)
    assert out.dtype.is_float
    assert out.numpy().ravel().tolist() == [3.0, 7.0]


def _np_log_softmax(x, axis):
    m = x.max(axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis, keepdims=True))


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_log_softmax(device, axis, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32) * 3
    ref = _np_log_softmax(x.astype(np.float64), axis)
    close(Tensor(x, device=device).log_softmax(axis), ref, rtol=1e-5, atol=1e-5)
    close(Tensor(x, device=device).softmax(axis), np.exp(ref), rtol=1e-5, atol=1e-6)
    # large logits stay finite
    close(Tensor(x + 1000, device=device).softmax(axis), np.exp(ref), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.bool_, np.int32, np.int64, np.int8], ids=str)
def test_bitwise_and_or_xor(device, dtype, rng):
    a = rng.integers(-50, 50, (3, 5)).astype(dtype)
    b = rng.integers(-50, 50, (5,)).astype(dtype)               # broadcast
    ta, tb = Tensor(a, device=device), Tensor(b, device=device)
    c6, c3 = (True, False) if dtype is np.bool_ else (6, 3)    # scalars keep the dtype
    for got, ref in (((ta & tb), a & b), ((ta | tb), a | b), ((ta ^ tb), a ^ b),
                     ((ta & c6), a & dtype(c6)), ((c3 | ta), dtype(c3) | a),
                     (((ta ^ tb) & (ta | tb)), (a ^ b) & (a | b))):       # fused too
        assert got.dtype.np == ref.dtype
        np.testing.assert_array_equal(got.numpy(), ref)
    with pytest.raises(TypeError, match="'&' needs bool or integer tensors, got float32"):
        Tensor([1.0], device=device) & 1


def test_pytorch_dim_keywords(device, rng):
    # PyTorch spells the axis `dim` (and flatten's `start_dim` / `end_dim`, var's `unbiased`)
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    t = Tensor(x, device=device)
    close(t.sum(dim=1), x.sum(1), rtol=1e-5)
    close(t.mean(dim=(0, 2), keepdim=True), x.mean((0, 2), keepdims=True), rtol=1e-5)
    close(t.max(dim=-1), x.max(-1))
    close(t.min(dim=0), x.min(0))
    close(t.var(dim=2, unbiased=False), x.var(2), rtol=1e-4)
    close(t.std(dim=2), x.std(2, ddof=1), rtol=1e-4)
    assert t.argmax(dim=1).tolist() == x.argmax(1).tolist()
    assert t.argmin(dim=2).tolist() == x.argmin(2).tolist()
    close(t.softmax(dim=0), np.exp(_np_log_softmax(x.astype(np.float64), 0)), rtol=1e-5)
    close(t.log_softmax(dim=1), _np_log_softmax(x.astype(np.float64), 1), rtol=1e-5)
    assert t.flatten(start_dim=1).shape == (3, 20) and t.flatten(end_dim=1).shape == (12, 5)
    with pytest.raises(TypeError, match="sum: got both 0 and dim=1"):
        t.sum(0, dim=1)


@pytest.mark.parametrize("bad", [5, 7, -1, -5], ids=str)
def test_cross_entropy_target_out_of_range_raises(device, bad, rng):
    # [2, 5] logits: a target of 5 used to read the next row's class 0 and -1 the previous
    # row's last class (a wrong loss, silently); now the gather reports it (on CUDA at the
    # next synchronize: here .numpy())
    logits = Tensor(rng.standard_normal((2, 5)).astype(np.float32), device=device)
    loss = logits.cross_entropy(Tensor([0, bad], device=device))
    with pytest.raises(IndexError, match="cross_entropy target outside"):
        loss.numpy()
    # the error is reported once: the next (valid) computation runs normally
    good = logits.cross_entropy(Tensor([0, -100], device=device)).numpy()
    ref = -_np_log_softmax(logits.numpy().astype(np.float64), -1)[0, 0]
    np.testing.assert_allclose(good, ref, rtol=1e-5)


def test_index_tensor_below_minus_n_raises_and_int8_indices_work(device):
    x = Tensor(np.arange(200, dtype=np.float32), device=device)
    for bad in (-201, -400):          # -201 + 200 = -1 used to wrap a second time: x[199]
        with pytest.raises(IndexError, match="out of range"):
            x[Tensor([bad], device=device)].numpy()
    idx8 = Tensor(np.array([100, -3], np.int8), device=device)    # idx + 200 overflowed int8
    np.testing.assert_array_equal(x[idx8].numpy(), [100.0, 197.0])


def test_index_tensor_and_embedding_out_of_range_raise(device):
    x = Tensor(np.arange(6, dtype=np.float32), device=device)
    with pytest.raises(IndexError, match="out of range"):
        x[Tensor([2, 6], device=device)].numpy()
    emb = mg.nn.Embedding(4, 3).to(device)
    out = emb(Tensor([[1, 4]], device=device))
    with pytest.raises(IndexError, match="out of range"):
        out.numpy()
    # the backward's scatter reports a bad index too (x requires grad: gather, then scatter)
    w = Tensor(np.ones((4, 2), np.float32), device=device, requires_grad=True)
    with pytest.raises(IndexError, match="out of range"):
        w[Tensor([0, 9], device=device)].sum().backward()
        w.grad.numpy()
    np.testing.assert_array_equal(x[Tensor([-1, 0], device=device)].numpy(), [5.0, 0.0])


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4)], ids=str)
def test_cross_entropy_matches_numpy(device, shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    tgt = rng.integers(0, shape[-1], shape[:-1])
    tgt.reshape(-1)[0] = -100
    logp = _np_log_softmax(x.astype(np.float64), -1).reshape(-1, shape[-1])
    flat = tgt.reshape(-1)
    keep = flat != -100
    ref = -logp[np.arange(flat.size)[keep], flat[keep]].mean()
    out = Tensor(x, device=device).cross_entropy(Tensor(tgt, device=device))
    assert out.shape == ()
    close(out, ref, rtol=1e-5)
    # a custom ignore_index
    flat2 = flat.copy()
    flat2[flat2 == -100] = 1
    keep2 = flat2 != 1
    ref2 = -logp[np.arange(flat2.size)[keep2], flat2[keep2]].mean()
    out2 = Tensor(x, device=device).cross_entropy(Tensor(flat2.reshape(tgt.shape), device=device),
                                                  ignore_index=1)
    close(out2, ref2, rtol=1e-5)


def test_layernorm_matches_numpy(device, rng):
    x = rng.standard_normal((3, 8)).astype(np.float32) * 2 + 1
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    close(Tensor(x, device=device).layernorm(), ref, rtol=1e-4, atol=1e-5)


def test_dropout(device):
    mg.manual_seed(0)
    x = Tensor.ones(2000, device=device)
    y = x.dropout(0.25, training=True).numpy()
    kept = y != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(x.dropout(0.25, training=False).numpy(), x.numpy())
    mg.manual_seed(5)
    a = x.dropout(0.5, training=True).numpy()
    mg.manual_seed(5)
    b = x.dropout(0.5, training=True).numpy()
    np.testing.assert_array_equal(a, b)


# ============================================================== dtypes, promotion ==

@pytest.mark.parametrize("dt", ALL_DTYPES, ids=lambda d: d.name)
def test_all_dtypes_roundtrip(device, dt):
    data = [1, 0, 3] if dt != mg.bool else [True, False, True]
    t = Tensor(data, dtype=dt, device=device)
    assert t.dtype is dt
    arr = t.numpy()
    assert arr.dtype == np.dtype(dt.np)
    assert arr.tolist() == ([1, 0, 3] if dt != mg.bool else [True, False, True])
    assert t.tolist() == arr.tolist()
    # from a NumPy array of that dtype, the dtype is kept
    t2 = Tensor(np.array(data, dtype=dt.np), device=device)
    assert t2.dtype is dt


def test_dtype_names_and_objects():
    assert mg.bool is mg.bool_
    names = [d.name for d in ALL_DTYPES]
    assert names == ["float32", "float16", "bfloat16", "int8", "int32", "int64",
                     "uint32", "bool"]
    assert len(set(ALL_DTYPES)) == 8


def test_default_dtypes(device):
    assert Tensor([1.5, 2], device=device).dtype == mg.float32
    assert Tensor(np.array([1.5]), device=device).dtype == mg.float32   # float64 data -> f32
    assert Tensor([1, 2], device=device).dtype == mg.int64
    assert Tensor(True, device=device).dtype == mg.bool
    assert Tensor(2.5, device=device).shape == ()


def test_bf16_numpy_is_ml_dtypes(device):
    t = Tensor([1.5, -2.25, 3.0], dtype=mg.bfloat16, device=device)
    arr = t.numpy()
    assert arr.dtype == ml_dtypes.bfloat16
    assert arr.astype(np.float32).tolist() == [1.5, -2.25, 3.0]
    assert t.tolist() == [1.5, -2.25, 3.0]
    assert all(isinstance(v, float) for v in t.tolist())
    # bf16 rounding happens: 1 + 2^-9 is not representable
    assert Tensor([1 + 2 ** -9], device=device).bfloat16().float().item() == 1.0


def T(data, dt, device):
    return Tensor(np.array(data), dtype=dt, device=device)


@pytest.mark.parametrize("a,b,expected", [
    (mg.int64, mg.float32, mg.float32),
    (mg.int32, mg.float32, mg.float32),
    (mg.int8, mg.float32, mg.float32),
    (mg.float16, mg.float16, mg.float16),
    (mg.bfloat16, mg.bfloat16, mg.bfloat16),
    (mg.float16, mg.bfloat16, mg.float32),
    (mg.float16, mg.float32, mg.float32),
    (mg.bfloat16, mg.float32, mg.float32),
    (mg.int32, mg.int64, mg.int64),
    (mg.int8, mg.int32, mg.int32),
    (mg.bool, mg.int32, mg.int32),
    (mg.bool, mg.float16, mg.float16),
], ids=lambda v: getattr(v, "name", None))
def test_promotion_tensor_tensor(device, a, b, expected):
    x, y = T([1, 2], a, device), T([1, 1], b, device)
    for out in (x + y, y + x, x * y, x - y):
        assert out.dtype == expected


def test_numpy_interop_through_array_protocol(device):
    a, b = Tensor(1.5, device=device), Tensor(2.5, device=device)
    t = Tensor([a, b], device=device)                      # a list of 0-d tensors, as torch
    assert t.tolist() == [1.5, 2.5] and t.dtype == mg.float32
    m = Tensor([[1, 2], [3, 4]], device=device)
    arr = np.asarray(m)
    np.testing.assert_array_equal(arr, [[1, 2], [3, 4]])
    arr[0, 0] = 99                                         # a copy: the tensor is unchanged
    assert m.tolist() == [[1, 2], [3, 4]]
    assert np.asarray(m, dtype=np.float64).dtype == np.float64
    x = np.ones(2, np.float32)                             # NumPy operands still give Tensors
    assert isinstance(x + Tensor([1.0, 2.0], device=device), Tensor)


def test_numpy_scalars_count_as_python_scalars(device):
    h = Tensor([1.0, 2.0], dtype=mg.float16, device=device)
    assert (h * np.float32(2)).dtype == mg.float16 and (np.float32(2) * h).dtype == mg.float16
    i = Tensor([1, 2], dtype=mg.int32, device=device)
    assert (i + np.int64(3)).dtype == mg.int32 and (i + np.int64(3)).tolist() == [4, 5]
    assert (i * np.float32(0.5)).dtype == mg.float32


def test_promotion_with_python_scalars(device):
    f16 = T([1.5, 2.0], mg.float16, device)
    bf16 = T([1.5, 2.0], mg.bfloat16, device)
    i32 = T([1, 2], mg.int32, device)
    i8 = T([1, 2], mg.int8, device)
    assert (f16 * 2.5).dtype == mg.float16          # python floats don't upcast f16
    assert (2.5 * f16).dtype == mg.float16
    assert (f16 + 1).dtype == mg.float16
    assert (bf16 * 3.0).dtype == mg.bfloat16
    assert (i32 * 2.5).dtype == mg.float32           # int tensor * float -> f32
    assert (i32 + 1).dtype == mg.int32               # int scalar keeps the int dtype
    assert (i8 + 1).dtype == mg.int8
    np.testing.assert_allclose((f16 * 2.5).numpy().astype(np.float32), [3.75, 5.0])
    assert (i32 * 2.5).tolist() == [2.5, 5.0]


def test_int_division_gives_float32(device):
    a = T([7, -7, 1], mg.int64, device)
    b = T([2, 2, 3], mg.int64, device)
    out = a / b
    assert out.dtype == mg.float32
    close(out, np.array([3.5, -3.5, 1 / 3]), rtol=1e-6)
    assert (T([7], mg.int32, device) / 2).dtype == mg.float32
    assert (T([7], mg.int32, device) / 2).item() == 3.5


def test_comparisons_give_bool(device):
    for dt in (mg.float32, mg.float16, mg.int32, mg.int64):
        x = T([1, 2, 3], dt, device)
        for out in (x < 2, x <= 2, x > 2, x >= 2, x == 2, x != 2, x < x):
            assert out.dtype == mg.bool
    assert (T([1, 2, 3], mg.int32, device) == 2).tolist() == [False, True, False]
    assert (T([1.0, 2.0], mg.float32, device) < T([2, 1], mg.int64, device)).tolist() == \
        [True, False]


def test_low_precision_arithmetic_rounds(device, rng):
    x = rng.standard_normal(64).astype(np.float16)
    y = rng.standard_normal(64).astype(np.float16)
    out = (Tensor(x, device=device) * Tensor(y, device=device)).numpy()
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, (x.astype(np.float32) * y.astype(np.float32))
                                  .astype(np.float16))


@pytest.mark.parametrize("src", [mg.float32, mg.float16, mg.bfloat16], ids=lambda d: d.name)
@pytest.mark.parametrize("dst", [mg.float32, mg.float16, mg.bfloat16, mg.int32, mg.int64,
                                 mg.int8, mg.bool], ids=lambda d: d.name)
def test_casts(device, src, dst, rng):
    x = np.clip(rng.standard_normal(20) * 20, -100, 100).astype(np.float32)   # fits int8
    x = x.astype(src.np).astype(np.float32)     # exactly representable in src
    t = Tensor(x, dtype=src, device=device)
    out = t.to(dst) if dst != mg.bool else t.cast(dst)
    assert out.dtype == dst
    if dst.is_float:
        ref = x.astype(dst.np)
    elif dst == mg.bool:
        ref = x != 0
    else:
        ref = np.trunc(x).astype(dst.np)            # toward zero, as in C and PyTorch
    np.testing.assert_array_equal(out.numpy(), ref)


def test_float_half_bfloat16_methods(device):
    t = Tensor([1, 2], device=device)
    assert t.float().dtype == mg.float32
    assert t.half().dtype == mg.float16
    assert t.bfloat16().dtype == mg.bfloat16
    assert t.to(mg.float16).dtype == mg.float16
    f = Tensor([1.0], device=device)
    assert f.float() is f                    # no-op cast returns the same tensor


# ======================================================================= factories ==

def test_zeros_ones_full_empty(device):
    z = Tensor.zeros(2, 3, device=device)
    assert z.shape == (2, 3) and z.dtype == mg.float32 and z.device == device
    assert z.tolist() == [[0, 0, 0], [0, 0, 0]]
    assert Tensor.zeros((2, 3), device=device).shape == (2, 3)
    o = Tensor.ones(4, dtype=mg.int32, device=device)
    assert o.dtype == mg.int32 and o.tolist() == [1, 1, 1, 1]
    f = Tensor.full((2, 2), 7.5, device=device)
    assert f.dtype == mg.float32 and f.numpy().tolist() == [[7.5, 7.5], [7.5, 7.5]]
    assert Tensor.full((3,), 7, device=device).dtype == mg.int64
    assert Tensor.full(3, True, device=device).dtype == mg.bool
    assert Tensor.full((2,), 2, dtype=mg.float16, device=device).dtype == mg.float16
    e = Tensor.empty(3, 4, dtype=mg.float16, device=device)
    assert e.shape == (3, 4) and e.dtype == mg.float16 and e.numpy().shape == (3, 4)
    assert Tensor.zeros(0, 3, device=device).numpy().shape == (0, 3)
    r = Tensor.zeros(2, requires_grad=True, device=device)
    assert r.requires_grad and r.is_leaf


def test_zeros_like_ones_like(device):
    t = Tensor(np.ones((2, 5), np.float16), device=device)
    z, o = Tensor.zeros_like(t), Tensor.ones_like(t)
    for x in (z, o):
        assert x.shape == t.shape and x.dtype == mg.float16 and x.device == device
    assert z.numpy().sum() == 0 and o.numpy().sum() == 10
    assert Tensor.zeros_like(t, dtype=mg.int32).dtype == mg.int32


def test_arange(device):
    a = Tensor.arange(5, device=device)
    assert a.dtype == mg.int64 and a.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(Tensor.arange(2, 9, 3, device=device).numpy(),
                                  np.arange(2, 9, 3))
    np.testing.assert_array_equal(Tensor.arange(10, 0, -3, device=device).numpy(),
                                  np.arange(10, 0, -3))
    f = Tensor.arange(1, 2, 0.25, device=device)
    assert f.dtype == mg.float32 and f.tolist() == [1.0, 1.25, 1.5, 1.75]
    assert Tensor.arange(3, dtype=mg.float16, device=device).dtype == mg.float16
    assert Tensor.arange(0, device=device).shape == (0,)


def test_rand_range_and_randn_moments(device):
    mg.manual_seed(123)
    u = Tensor.rand(200_000, device=device).numpy()
    assert u.dtype == np.float32
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - np.sqrt(1 / 12)) < 0.01
    n = Tensor.randn(200_000, device=device).numpy()
    assert abs(n.mean()) < 0.01 and abs(n.std() - 1) < 0.01
    assert len(np.unique(n[:1000])) == 1000
    assert Tensor.randn(2, 3, device=device).shape == (2, 3)
    assert Tensor.rand((4, 2), dtype=mg.float16, device=device).dtype == mg.float16
    with pytest.raises(TypeError):
        Tensor.rand(3, dtype=mg.int32, device=device)


def test_manual_seed_reproducible(device):
    mg.manual_seed(7)
    a1, b1 = Tensor.rand(50, device=device).numpy(), Tensor.randn(50, device=device).numpy()
    mg.manual_seed(7)
    a2, b2 = Tensor.rand(50, device=device).numpy(), Tensor.randn(50, device=device).numpy()
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(a1, Tensor.rand(50, device=device).numpy())   # successive differ
    mg.manual_seed(8)
    assert not np.array_equal(a1, Tensor.rand(50, device=device).numpy())   # seeds differ


def test_manual_seed_independent_of_realize_order(device):
    mg.manual_seed(3)
    a, b = Tensor.rand(10, device=device), Tensor.rand(10, device=device)
    bn, an = b.numpy(), a.numpy()
    mg.manual_seed(3)
    a2, b2 = Tensor.rand(10, device=device), Tensor.rand(10, device=device)
    np.testing.assert_array_equal(a2.numpy(), an)
    np.testing.assert_array_equal(b2.numpy(), bn)


# ================================================================== conversions ==

def test_item_tolist_realize(device):
    t = Tensor([[1.5, 2.0], [3.0, 4.0]], device=device)
    assert t[1, 0].item() == 3.0 and isinstance(t[1, 0].item(), float)
    assert Tensor([7], device=device).item() == 7 and isinstance(Tensor([7]).item(), int)
    assert Tensor(True, device=device).item() is True
    assert t.tolist() == [[1.5, 2.0], [3.0, 4.0]]
    with pytest.raises(ValueError, match="item"):
        t.item()
    y = t * 2
    assert y.realize() is y
    assert y.lazydata.realized is not None
    assert float(Tensor(2.5, device=device)) == 2.5 and int(Tensor(3, device=device)) == 3


def test_numpy_returns_a_copy(device):
    t = Tensor([1.0, 2.0], device=device)
    arr = t.numpy()
    arr[0] = 100
    assert t.tolist() == [1.0, 2.0]
    src = np.array([1.0, 2.0], np.float32)
    t2 = Tensor(src, device=device)
    src[0] = 100               # the tensor copied its data at construction
    assert t2.tolist() == [1.0, 2.0]


def test_detach(device):
    x = Tensor([1.0, 2.0], requires_grad=True, device=device)
    y = x * 3
    d = y.detach()
    assert d._ctx is None and not d.requires_grad and d.is_leaf
    assert d.tolist() == [3.0, 6.0]
    (d * x).sum().backward()
    assert x.grad.tolist() == [3.0, 6.0]        # nothing flowed through d


def test_contiguous_numel_ndim_is_leaf(device, rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    t = Tensor(x, device=device, requires_grad=True)
    c = t.permute(2, 0, 1).contiguous()
    np.testing.assert_array_equal(c.numpy(), x.transpose(2, 0, 1))
    assert t.numel() == 24 and t.ndim == 3 and Tensor(1.0).ndim == 0 and Tensor(1.0).numel() == 1
    assert t.is_leaf and not c.is_leaf
    assert Tensor([1.0], device=device).is_leaf
    assert len(t) == 2 and t.size() == (2, 3, 4) and t.size(1) == 3


def test_to_device_same_is_noop(device):
    t = Tensor([1.0, 2.0], device=device)
    assert t.to(device).device == device
    assert t.to("cpu").device == "cpu" and t.to("cpu").tolist() == [1.0, 2.0]


def test_to_device_and_dtype_keywords(device):
    """`.to(device=...)` and `.to(dtype=...)`, as a PyTorch user writes them."""
    t = Tensor([1.5, 2.0], device=device)
    assert t.to(device=device) is t and t.to(dtype=mg.float32) is t
    h = t.to(dtype=mg.float16)
    assert h.dtype is mg.float16 and h.device == device and h.tolist() == [1.5, 2.0]
    c = t.to(device="cpu", dtype=mg.bfloat16)
    assert c.dtype is mg.bfloat16 and c.device == "cpu" and c.tolist() == [1.5, 2.0]
    assert t.to("cpu", dtype=mg.float16).dtype is mg.float16
    assert t.to(mg.float16, device="cpu").device == "cpu"
    with pytest.raises(TypeError, match="positionally and by keyword"):
        t.to(mg.float16, dtype=mg.float32)
    with pytest.raises(ValueError, match="not a device"):
        t.to(device="tpu")


def test_squeeze_unsqueeze_axis_keywords(device):
    """API.md names the axis `d` (`.unsqueeze(d)`, `.squeeze(d=None)`); PyTorch's `dim=`
    works too."""
    t = Tensor.zeros(1, 3, 1, device=device)
    assert t.squeeze(d=0).shape == (3, 1) and t.squeeze(dim=2).shape == (1, 3)
    assert t.squeeze(d=(0, 2)).shape == (3,) and t.squeeze(d=None).shape == (3,)
    assert t.unsqueeze(d=1).shape == (1, 1, 3, 1) and t.unsqueeze(dim=-1).shape == (1, 3, 1, 1)
    with pytest.raises(TypeError, match="both"):
        t.squeeze(0, dim=0)
    with pytest.raises(TypeError, match="missing"):
        t.unsqueeze()


@pytest.mark.cuda
def test_to_cuda_and_back(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    t = Tensor(x, requires_grad=True)
    g = t.to("cuda")
    assert g.device == "cuda"
    (g * 2).to("cpu").sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), np.full((3, 4), 2.0, np.float32))
    np.testing.assert_array_equal(g.to("cpu").numpy(), x)


def test_device_names():
    assert Tensor([1.0], device="cpu").device == "cpu"
    with pytest.raises(ValueError, match="device"):
        Tensor([1.0], device="tpu")
    assert mg.cuda_available() in (True, False)
    mg.synchronize()


# ====================================================================== laziness ==

COMPUTE_OPS = ["full", "arange", "random", "unary", "binary", "where", "cast", "reduce",
               "argmax", "matmul", "reshape", "permute", "expand", "shrink", "pad",
               "contiguous", "cat", "gather", "scatter_add", "kernel"]


@pytest.fixture
def spy(device, monkeypatch):
    """Counts calls to the backend's compute methods (on the instance only)."""
    backend = get_backend(device)
    calls = []
    for name in COMPUTE_OPS:
        fn = getattr(backend, name, None)
        if fn is None:
            continue

        def wrapper(*args, _fn=fn, _name=name, **kw):
            calls.append(_name)
            return _fn(*args, **kw)
        monkeypatch.setattr(backend, name, wrapper, raising=False)
    return calls


def _expression(device):
    x = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4), device=device)
    w = Tensor.randn(4, 2, device=device)
    y = ((x * 2 + 1).exp().log() @ w).relu().sum(0) / 3
    return x, y[::-1, None].T.reshape(2) + Tensor.arange(2, device=device)


@lazy_only
def test_building_computes_nothing(device, spy):
    x, y = _expression(device)
    z = Tensor.cat([y, y.softmax(0)]).max()
    assert spy == [] and y.lazydata.realized is None and z.lazydata.realized is None
    assert "lazy" in repr(z).lower()
    z.realize()
    assert z.lazydata.realized is not None and len(spy) > 10


@lazy_only
def test_backward_is_lazy(device, spy):
    w = Tensor(np.ones((3, 2), np.float32), requires_grad=True, device=device)
    x = Tensor(np.ones((4, 3), np.float32), device=device)
    loss = (x @ w).tanh().mean()
    loss.backward()
    assert spy == [] and w.grad is not None and w.grad.lazydata.realized is None
    w.grad.realize()
    assert spy and w.grad.lazydata.realized is not None


@lazy_only
@pytest.mark.parametrize("how", ["realize", "numpy", "item", "print", "str", "mg.realize",
                                 "tolist"])
def test_what_runs_the_graph(device, spy, how, capsys):
    _, y = _expression(device)
    s = y.sum()
    assert spy == []
    if how == "realize":
        s.realize()
    elif how == "numpy":
        s.numpy()
    elif how == "item":
        s.item()
    elif how == "print":
        print(s)
        assert capsys.readouterr().out.strip()
    elif how == "str":
        str(s)
    elif how == "tolist":
        s.tolist()
    else:
        mg.realize(s, y)
        assert y.lazydata.realized is not None
    assert s.lazydata.realized is not None and spy


@lazy_only
def test_mg_realize_shares_common_work(device, spy):
    x = Tensor(np.ones(5, np.float32), device=device)
    c = x.exp()
    a, b = c + 1, c * 2
    mg.realize(a, b)
    assert spy.count("unary") == 1
    assert a.lazydata.realized is not None and b.lazydata.realized is not None
    n = len(spy)
    (a + b).realize()            # only the new node runs
    assert len(spy) == n + 1
    np.testing.assert_allclose((a + b).numpy(), 3 * np.e + 1, rtol=1e-6)


@lazy_only
def test_realized_results_are_reused(device, spy):
    _, y = _expression(device)
    y.realize()
    n = len(spy)
    y.numpy()
    y.realize()
    assert len(spy) == n


def _run_py(code, **env):
    e = dict(os.environ)
    e.pop("DEBUG", None)
    e.pop("LAZY", None)
    e.update(env)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("MINIGRAD_DEVICE", "cpu")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                       cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_lazy0_runs_each_op_at_once():
    code = ("import minigrad as mg\n"
            "x = mg.Tensor([1.0, 2.0])\n"
            "y = (x * 2 + 1).exp()\n"
            "z = y.sum()\n"
            "print(y.lazydata.realized is not None, z.lazydata.realized is not None)\n")
    assert _run_py(code, LAZY="0").split() == ["True", "True"]
    assert _run_py(code, LAZY="1").split() == ["False", "False"]


def test_debug2_prints_a_line_per_op():
    code = ("import minigrad as mg\n"
            "x = mg.Tensor([1.0, 2.0])\n"
            "y = (x * 2 + 1).exp()\n"
            "print('BUILT')\n"
            "y.realize()\n")
    out = _run_py(code, DEBUG="2")
    before, after = out.split("BUILT")
    assert "mul" not in before               # nothing runs while building
    lines = [ln for ln in after.splitlines() if ln.strip()]
    for op in ("mul", "add", "exp"):
        assert sum(op in ln for ln in lines) == 1, (op, out)
    assert len(lines) >= 3
    assert _run_py(code, DEBUG="0").strip() == "BUILT"


@lazy_only
def test_repr(device):
    t = Tensor(np.ones((2, 3), np.float16), device=device) * 2
    r = repr(t)
    assert "(2, 3)" in r and "float16" in r and device in r
    assert "lazy" in r.lower()
    t.realize()
    r2 = repr(t)
    assert r2 != r and "realized" in r2 and "lazy" not in r2.lower()
    assert "requires_grad" in repr(Tensor([1.0], requires_grad=True))


# ============================================================ build-time errors ==

def _raises_at_build(spy, exc, *fragments):
    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(exc)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *a):
            ok = self.cm.__exit__(*a)
            msg = str(self.info.value)
            for f in fragments:
                assert f in msg, f"{f!r} not in {msg!r}"
            if lazy.LAZY:
                assert spy == [], "the error was raised only after computing"
            return ok
    return _Ctx()


def test_error_matmul_inner(device, spy):
    a, b = Tensor.ones(2, 3, device=device), Tensor.ones(4, 5, device=device)
    with _raises_at_build(spy, ValueError, "matmul", "(2, 3)", "(4, 5)"):
        a @ b
    with _raises_at_build(spy, ValueError, "matmul", "(3,)", "(2, 4, 5)"):
        Tensor.ones(3, device=device) @ Tensor.ones(2, 4, 5, device=device)
    with _raises_at_build(spy, ValueError, "matmul"):
        Tensor.ones(2, 3, 4, device=device) @ Tensor.ones(3, 4, 2, device=device)


def test_error_broadcast(device, spy):
    a, b = Tensor.ones(2, 3, device=device), Tensor.ones(4, device=device)
    with _raises_at_build(spy, ValueError, "add", "(2, 3)", "(4,)"):
        a + b
    with _raises_at_build(spy, ValueError, "mul"):
        a * Tensor.ones(3, 2, device=device)
    with _raises_at_build(spy, ValueError, "where"):
        Tensor.where(Tensor.ones(2, 3, dtype=mg.bool, device=device), a, b)


def test_error_reshape(device, spy):
    t = Tensor.ones(2, 3, device=device)
    with _raises_at_build(spy, ValueError, "reshape", "(2, 3)", "(4, 2)"):
        t.reshape(4, 2)
    with _raises_at_build(spy, ValueError, "reshape"):
        t.reshape(-1, -1)
    with _raises_at_build(spy, ValueError, "reshape", "(2, 3)"):
        t.reshape(4, -1)


def test_error_axis(device, spy):
    t = Tensor.ones(2, 3, device=device)
    with _raises_at_build(spy, ValueError, "sum", "3", "(2, 3)"):
        t.sum(3)
    with _raises_at_build(spy, ValueError, "mean", "-3"):
        t.mean(-3)
    with _raises_at_build(spy, ValueError, "max"):
        t.max((0, 5))
    with _raises_at_build(spy, ValueError, "transpose"):
        t.transpose(0, 2)
    with _raises_at_build(spy, ValueError, "permute"):
        t.permute(0, 0)
    with _raises_at_build(spy, ValueError, "unsqueeze"):
        t.unsqueeze(4)
    with _raises_at_build(spy, ValueError, "expand", "(2, 3)"):
        t.expand(2, 4)
    with _raises_at_build(spy, ValueError, "expand", "-1"):
        Tensor.ones(3, device=device).expand(-1, 3)       # -1 for a new leading dim


def test_error_index(device, spy):
    t = Tensor.ones(3, 4, device=device)
    with _raises_at_build(spy, IndexError, "5", "3"):
        t[5]
    with _raises_at_build(spy, IndexError, "-4"):
        t[-4]
    with _raises_at_build(spy, IndexError, "too many"):
        t[0, 0, 0]
    with _raises_at_build(spy, IndexError, "index"):
        t[1.5]
    with _raises_at_build(spy, IndexError, "out of range"):
        t[[0, 3]]
    with _raises_at_build(spy, IndexError, "out of range"):
        t[:, np.array([-5])]
    with _raises_at_build(spy, IndexError, "integer"):
        t[np.array([0.0, 1.0])]


def test_error_cat(device, spy):
    a, b = Tensor.ones(2, 3, device=device), Tensor.ones(2, 4, device=device)
    with _raises_at_build(spy, ValueError, "cat", "(2, 3)", "(2, 4)"):
        Tensor.cat([a, b], 0)
    with _raises_at_build(spy, ValueError, "stack"):
        Tensor.stack([a, b])
    with _raises_at_build(spy, ValueError, "cat"):
        Tensor.cat([a, Tensor.ones(2, 3, 1, device=device)], 1)
    with _raises_at_build(spy, ValueError, "split"):
        a.split([1, 1], 1)


def test_error_requires_grad_on_int(device):
    with pytest.raises(TypeError, match="requires_grad.*int64"):
        Tensor([1, 2], requires_grad=True, device=device)
    with pytest.raises(TypeError, match="requires_grad"):
        Tensor.zeros(3, dtype=mg.int32, requires_grad=True, device=device)


def test_error_dtypes(device, spy):
    with _raises_at_build(spy, TypeError, "cross_entropy", "float32"):
        Tensor.ones(2, 3, device=device).cross_entropy(Tensor([0.0, 1.0], device=device))
    with _raises_at_build(spy, ValueError, "cross_entropy", "(2, 3)"):
        Tensor.ones(2, 3, device=device).cross_entropy(Tensor([0, 1, 1], device=device))
    with pytest.raises(TypeError, match="dtype"):
        Tensor([1.0], dtype="complex64", device=device)
    with pytest.raises(TypeError):
        Tensor(np.array(["a", "b"]), device=device)
    with _raises_at_build(spy, TypeError, "neg", "bool"):
        -Tensor([True, False], device=device)


def test_error_unusable_device_at_build(monkeypatch):
    # .to() of a device whose backend cannot start fails when built, not when run
    from minigrad import device as dev
    monkeypatch.setitem(dev._backends, "cuda", None)
    monkeypatch.setattr(dev, "_load_cuda", lambda: (_ for _ in ()).throw(
        RuntimeError("device 'cuda' is unusable here (stand-in)")))
    x = Tensor([1.0], device="cpu")
    with pytest.raises(RuntimeError, match="unusable"):
        x.to("cuda")


# ====================================================================== autograd ==

def test_no_grad_context_manager(device):
    x = Tensor([1.0, 2.0], requires_grad=True, device=device)
    with mg.no_grad():
        y = x * 2 + x.exp()
    assert y._ctx is None and not y.requires_grad
    z = x * 2
    assert z._ctx is not None and z.requires_grad      # re-enabled on exit


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "**", "maximum", "minimum"])
def test_binary_ops_without_gradients_compute_the_same_op(device, op):
    # a binary op whose operands need no gradient builds its node without the Function;
    # that node must be the op the Function would build (same values, scalar operands too)
    rng = np.random.default_rng(5)
    a_np = rng.uniform(0.5, 2.0, (3, 4)).astype(np.float32)
    b_np = rng.uniform(0.5, 2.0, (3, 4)).astype(np.float32)
    fns = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a / b, "**": lambda a, b: a ** b,
           "maximum": lambda a, b: a.maximum(b), "minimum": lambda a, b: a.minimum(b)}
    f = fns[op]
    for b_val in (b_np, 1.5):
        plain = f(Tensor(a_np, device=device), b_val if isinstance(b_val, float)
                  else Tensor(b_val, device=device))
        tracked_a = Tensor(a_np, device=device, requires_grad=True)
        tracked = f(tracked_a, b_val if isinstance(b_val, float) else Tensor(b_val, device=device))
        assert plain._ctx is None and not plain.requires_grad
        assert tracked._ctx is not None
        np.testing.assert_allclose(plain.numpy(), tracked.numpy(), rtol=1e-6)
        expected = {"maximum": np.maximum, "minimum": np.minimum}.get(op, f)(a_np, b_val)
        np.testing.assert_allclose(plain.numpy(), expected, rtol=1e-5)


VIEW_OPS = {
    "permute": lambda t: t.permute(2, 0, 1), "T": lambda t: t.T,
    "transpose": lambda t: t.transpose(0, 1), "reshape": lambda t: t.reshape(4, -1),
    "expand": lambda t: t[:, :1].expand(2, 3, 5, 4), "broadcast": lambda t: t + t[:1],
    "sum (squeezed)": lambda t: t.sum(1), "mean": lambda t: t.mean((0, 2))}


@pytest.mark.parametrize("op", list(VIEW_OPS))
def test_view_ops_without_gradients_build_the_same_nodes(device, op):
    # reshape, permute and expand skip their Function when no gradient will flow
    # (Tensor._movement): the nodes must be the ones the Function builds, op, argument,
    # shape and dtype, and compute the same values
    x_np = np.random.default_rng(6).standard_normal((3, 5, 4)).astype(np.float32)
    f = VIEW_OPS[op]

    def nodes(t):           # the graph behind t, sources first, as (op, arg, shape, dtype)
        out, stack = [], [t.lazydata]
        while stack:
            lb = stack.pop()
            out.append((lb.op, lb.arg, lb.shape, lb.dtype))
            stack.extend(lb.srcs)
        return out[::-1]
    plain = f(Tensor(x_np, device=device))
    tracked = f(Tensor(x_np, device=device, requires_grad=True))
    with mg.no_grad():
        under_no_grad = f(Tensor(x_np, device=device, requires_grad=True))
    assert plain._ctx is None and under_no_grad._ctx is None and tracked._ctx is not None
    assert nodes(plain) == nodes(tracked) == nodes(under_no_grad)
    np.testing.assert_array_equal(plain.numpy(), tracked.numpy())


def test_no_grad_decorator(device):
    x = Tensor([1.0, 2.0], requires_grad=True, device=device)

    @mg.no_grad
    def f(t):
        return (t * 3).sum()

    @mg.no_grad()
    def g(t):
        return t.exp()

    assert f(x)._ctx is None and g(x)._ctx is None
    assert f.__name__ == "f"
    assert (x * 3)._ctx is not None


def test_no_grad_decorator_recursive_call_restores_grad_mode(device):
    # the decorator's context must not be one object shared by nested calls: the inner call
    # would overwrite the outer's saved mode and leave gradients off for good
    x = Tensor([1.0], requires_grad=True, device=device)

    @mg.no_grad()
    def depth(n):
        assert not mg.autograd.is_grad_enabled()
        return depth(n - 1) if n else (x * 2)

    assert depth(3)._ctx is None
    assert mg.autograd.is_grad_enabled() and (x * 2).requires_grad


def test_compare_with_none_is_identity(device):
    t = Tensor([1.0], device=device)
    assert (t == None) is False and (t != None) is True      # noqa: E711 (the point)


def test_backward_of_a_leaf_seeds_its_grad(device):
    x = Tensor(2.0, requires_grad=True, device=device)     # as in PyTorch: x.grad = 1
    x.backward()
    x.backward(Tensor(3.0, device=device))
    assert x.grad.item() == 4.0
    with pytest.raises(RuntimeError, match="not produced by an op that needs gradients"):
        Tensor(2.0, device=device).backward()


def test_function_backward_gradient_count_and_forward_outputs_are_checked(device):
    class TooFew(mg.autograd.Function):
        @staticmethod
        def forward(ctx, a, b): return a * b
        @staticmethod
        def backward(ctx, g): return g          # b's gradient is missing

    class NotATensor(mg.autograd.Function):
        @staticmethod
        def forward(ctx, a): return a * 2, 5
        @staticmethod
        def backward(ctx, g, _): return g

    a = Tensor([1.0, 2.0], requires_grad=True, device=device)
    b = Tensor([3.0, 4.0], requires_grad=True, device=device)
    with pytest.raises(RuntimeError, match="backward of TooFew: returned 1 gradients, but "
                                           "forward took 2"):
        TooFew.apply(a, b).sum().backward()
    with pytest.raises(TypeError, match="NotATensor.forward must return Tensors.*got a int"):
        NotATensor.apply(a)


def test_no_grad_restored_after_exception(device):
    x = Tensor([1.0], requires_grad=True, device=device)
    with pytest.raises(ZeroDivisionError):
        with mg.no_grad():
            1 / 0
    assert (x * 2).requires_grad


def test_enable_grad_inside_no_grad(device):
    x = Tensor([1.0], requires_grad=True, device=device)
    with mg.no_grad():
        with mg.enable_grad():
            y = x * 2
        assert y._ctx is not None


def test_grad_only_for_requires_grad_leaves(device, rng):
    a = Tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True, device=device)
    b = Tensor(rng.standard_normal(3).astype(np.float32), device=device)
    (a * b).sum().backward()
    assert b.grad is None
    np.testing.assert_allclose(a.grad.numpy(), b.numpy())
    assert (b * 2)._ctx is None      # no input needs grad: no graph


def test_gradient_accumulates(device, rng):
    xv = rng.standard_normal(4).astype(np.float32)
    x = Tensor(xv, requires_grad=True, device=device)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * xv, rtol=1e-6)
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * xv + 3, rtol=1e-6)
    x.grad = None
    x.sin().sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.cos(xv), rtol=1e-5)


def test_shared_subexpression_gradients_add(device, rng):
    xv = rng.standard_normal(4).astype(np.float32)
    x = Tensor(xv, requires_grad=True, device=device)
    h = x * 2
    (h * h + h).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 8 * xv + 2, rtol=1e-5)


def test_backward_twice_needs_retain_graph(device, rng):
    x = Tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True, device=device)
    loss = (x.exp() * 2).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()
    y = Tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True, device=device)
    loss2 = (y.exp() * 2).sum()
    loss2.backward(retain_graph=True)
    loss2.backward()
    np.testing.assert_allclose(y.grad.numpy(), 4 * np.exp(y.numpy()), rtol=1e-5)


def test_backward_through_freed_subgraph_raises(device):
    x = Tensor([1.0, 2.0], requires_grad=True, device=device)
    h = x.exp()
    h.sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 2).sum().backward()


def test_nonscalar_backward_needs_gradient(device, rng):
    xv = rng.standard_normal((2, 3)).astype(np.float32)
    x = Tensor(xv, requires_grad=True, device=device)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"gradient.*\(2, 3\)"):
        y.backward()
    gv = rng.standard_normal((2, 3)).astype(np.float32)
    y.backward(Tensor(gv, device=device))
    np.testing.assert_allclose(x.grad.numpy(), 2 * gv, rtol=1e-6)
    z = x.sum(1)
    z.backward(np.array([1.0, 2.0], np.float32))
    np.testing.assert_allclose(x.grad.numpy(), 2 * gv + np.array([[1.0], [2.0]]), rtol=1e-6)
    with pytest.raises(ValueError, match="gradient"):
        (x * 1).backward(Tensor.ones(3, device=device))


def test_scalar_backward_of_one_element(device):
    x = Tensor([[3.0]], requires_grad=True, device=device)
    (x * x).backward()             # one element: implicit gradient allowed
    assert x.grad.tolist() == [[6.0]]


def test_backward_without_graph_raises(device):
    with pytest.raises(RuntimeError, match="backward"):
        Tensor([1.0], device=device).sum().backward()


def test_int_outputs_have_no_grad(device):
    x = Tensor([1.5, -2.0], requires_grad=True, device=device)
    assert not (x > 0).requires_grad
    assert not x.argmax().requires_grad
    assert not x.cast(mg.int32).requires_grad


def test_grad_dtype_of_low_precision_leaf(device):
    x = Tensor([1.0, 2.0], dtype=mg.float16, requires_grad=True, device=device)
    (x * x).sum().backward()
    assert x.grad.dtype == mg.float16 and x.grad.tolist() == [2.0, 4.0]
