"""gradcheck (float64, CPU) for every differentiable op.

Each case builds float64 leaves from fresh random NumPy values (never zeros) and
compares autograd's gradient with central differences via `mg.gradcheck`, which
contracts the outputs with a random weight: a wrong gradient in any element fails.
Inputs stay small (<= ~30 elements) because gradcheck runs two forward passes per
input element. Values are kept away from kinks (abs, relu, max ties, clip bounds)
so the finite differences are valid.
"""
import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor
from minigrad.autograd import Function
from minigrad.gradcheck import GradcheckError


def leaf(arr):
    return Tensor(np.asarray(arr, dtype=np.float64), dtype=mg.float64, requires_grad=True)


def check(fn, *arrays, **kw):
    """gradcheck `fn` over float64 leaves made from `arrays`."""
    assert mg.gradcheck(fn, [leaf(a) for a in arrays], **kw)


def away_from_zero(rng, shape, lo=0.2, hi=2.0):
    """Random values with |x| in [lo, hi] and random signs."""
    mag = rng.uniform(lo, hi, size=shape)
    return mag * rng.choice([-1.0, 1.0], size=shape)


# ------------------------------------------------------------ sanity of the tool ----

class _Cube(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x * x


class _WrongCube(_Cube):
    """_Cube's forward with a wrong backward, for gradcheck to catch."""
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 2 * x * x          # deliberately wrong: should be 3 x^2


class _ScaledMul(Function):
    """Two tensor inputs and a non-tensor argument (whose gradient is None)."""
    @staticmethod
    def forward(ctx, a, b, scale):
        ctx.save_for_backward(a, b)
        ctx.scale = scale
        return a * b * scale

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return (g * b * ctx.scale if ctx.needs_input_grad[0] else None,
                g * a * ctx.scale if ctx.needs_input_grad[1] else None, None)


class _SinCos(Function):
    """A Function with two outputs."""
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin(), x.cos()

    @staticmethod
    def backward(ctx, gs, gc):
        (x,) = ctx.saved_tensors
        out = 0
        if gs is not None:
            out = out + gs * x.cos()
        if gc is not None:
            out = out - gc * x.sin()
        return out


def test_user_function_passes(rng):
    check(lambda x: _Cube.apply(x), rng.standard_normal((3, 4)))


def test_user_function_saved_tensors_and_extra_arg(rng):
    check(lambda a, b: _ScaledMul.apply(a, b, 1.5),
          rng.standard_normal((2, 3)), rng.standard_normal((2, 3)))


def test_user_function_two_outputs(rng):
    check(lambda x: _SinCos.apply(x), rng.standard_normal(5))
    # only one output used: the other's gradient arrives as None
    check(lambda x: _SinCos.apply(x)[1] * 2, rng.standard_normal(5))


class _PassThrough(Function):
    """forward returns its input object itself (x.float() of a float32 x is x)."""
    @staticmethod
    def forward(ctx, x):
        return x.float()

    @staticmethod
    def backward(ctx, g):
        return g * 2


class _SecondOf(Function):
    @staticmethod
    def forward(ctx, a, b):
        return b

    @staticmethod
    def backward(ctx, g):
        return None, g


def test_user_function_returning_its_input_keeps_the_leaf():
    x = Tensor([1.0, -2.0], requires_grad=True)
    y = _PassThrough.apply(x)
    assert y is not x and x.is_leaf and x._ctx is None and not y.is_leaf
    np.testing.assert_array_equal(y.numpy(), [1.0, -2.0])
    (y * 3).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0])
    # an input that needs no gradient, returned as it is, is left alone as well
    a, b = Tensor([1.0], requires_grad=True), Tensor([2.0])
    out = _SecondOf.apply(a, b)
    assert out is not b and out.requires_grad
    assert b.is_leaf and b._ctx is None and not b.requires_grad


def test_user_function_values():
    x = Tensor([1.0, 2.0, -3.0], requires_grad=True)
    y = _Cube.apply(x)
    assert y._ctx is not None and y.requires_grad
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 12.0, 27.0], rtol=1e-6)


def test_gradcheck_fails_for_wrong_backward(rng):
    x = leaf(rng.standard_normal((3, 2)))
    with pytest.raises(GradcheckError, match="differ"):
        mg.gradcheck(lambda t: _WrongCube.apply(t), [x])
    assert mg.gradcheck(lambda t: _WrongCube.apply(t), [x], raise_exception=False) is False
    assert issubclass(GradcheckError, AssertionError)


def test_gradcheck_fails_for_wrong_builtin_gradient(rng, monkeypatch):
    # a broken op in functions.py must be caught too: swap Sin's backward for cos -> -cos
    from minigrad import functions as F
    monkeypatch.setattr(F.Sin, "backward", staticmethod(lambda ctx, g: -g * ctx.saved_tensors[0].cos()))
    with pytest.raises(GradcheckError):
        mg.gradcheck(lambda t: t.sin(), [leaf(rng.standard_normal(4))])


def test_gradcheck_needs_an_input_with_grad():
    with pytest.raises(ValueError):
        mg.gradcheck(lambda t: t * 2, [Tensor([1.0, 2.0], dtype=mg.float64)])


# ------------------------------------------------------------------ elementwise ----

BROADCAST_PAIRS = [
    ((3, 4), (3, 4)),
    ((3, 4), (4,)),
    ((3, 1), (1, 4)),
    ((2, 1, 3), (4, 1)),
    ((), (2, 3)),
    ((5,), ()),
]


@pytest.mark.parametrize("sa,sb", BROADCAST_PAIRS, ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow", "maximum", "minimum"])
def test_binary_broadcast(op, sa, sb, rng):
    fns = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
           "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
           "pow": lambda a, b: a ** b,
           "maximum": lambda a, b: a.maximum(b), "minimum": lambda a, b: a.minimum(b)}
    a = rng.standard_normal(sa)
    b = rng.standard_normal(sb)
    if op == "div":
        b = away_from_zero(rng, sb, 0.5, 2.0)
    if op == "pow":
        a = rng.uniform(0.5, 2.0, sa)          # positive base: a**b and ln(a) defined
    if op in ("maximum", "minimum"):
        # no ties (or near-ties) between the broadcast operands
        b = np.round(rng.standard_normal(sb), 1) + 0.05
        a = np.round(rng.standard_normal(sa), 1)
    check(fns[op], a, b)


@pytest.mark.parametrize("name,fn", [
    ("radd", lambda x: 2.5 + x), ("rsub", lambda x: 2.5 - x), ("rmul", lambda x: 2.5 * x),
    ("rdiv", lambda x: 2.5 / x), ("add_s", lambda x: x + 3), ("sub_s", lambda x: x - 0.5),
    ("mul_s", lambda x: x * -2), ("div_s", lambda x: x / 4.0),
    ("np_left", lambda x: np.float64(2.0) * x),
    ("rpow", lambda x: 2.0 ** x),
    ("max_s", lambda x: x.maximum(0.05)), ("min_s", lambda x: x.minimum(-0.05)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_binary_with_python_scalar(name, fn, rng):
    check(fn, away_from_zero(rng, (3, 4)))


@pytest.mark.parametrize("exponent", [2, 3, 0.5, -1, 1.5, -2.5, 0, 1, -0.5])
def test_pow_scalar_exponent(exponent, rng):
    check(lambda x: x ** exponent, rng.uniform(0.3, 2.0, (3, 4)))


def test_pow_integer_exponent_negative_base(rng):
    check(lambda x: x ** 3, away_from_zero(rng, (3, 4)))
    check(lambda x: x ** 2, away_from_zero(rng, (3, 4)))


def test_pow_tensor_exponent_only(rng):
    base = Tensor(rng.uniform(0.5, 2.0, (3, 4)), dtype=mg.float64)     # no grad for base
    assert mg.gradcheck(lambda e: base ** e, [leaf(rng.standard_normal((3, 4)))])


UNARY = {
    "neg": (lambda x: -x, "any"),
    "exp": (lambda x: x.exp(), "any"),
    "log": (lambda x: x.log(), "pos"),
    "sqrt": (lambda x: x.sqrt(), "pos"),
    "rsqrt": (lambda x: x.rsqrt(), "pos"),
    "reciprocal": (lambda x: x.reciprocal(), "nonzero"),
    "sin": (lambda x: x.sin(), "any"),
    "cos": (lambda x: x.cos(), "any"),
    "tanh": (lambda x: x.tanh(), "any"),
    "sigmoid": (lambda x: x.sigmoid(), "any"),
    "relu": (lambda x: x.relu(), "nonzero"),
    "gelu": (lambda x: x.gelu(), "any"),
    "abs": (lambda x: x.abs(), "nonzero"),
    "square": (lambda x: x.square(), "any"),
}


@pytest.mark.parametrize("name", list(UNARY))
def test_unary(name, rng):
    fn, domain = UNARY[name]
    shape = (3, 5)
    x = {"any": lambda: rng.standard_normal(shape) * 1.5,
         "pos": lambda: rng.uniform(0.2, 3.0, shape),
         "nonzero": lambda: away_from_zero(rng, shape)}[domain]()
    check(fn, x)


def test_unary_of_composite_graph(rng):
    # a diamond: x feeds several branches whose gradients must add up
    check(lambda x: x * x.exp() + x.sin() * x - (x * 2).tanh() / (x * x + 1),
          rng.standard_normal((2, 3)))


@pytest.mark.parametrize("cond_shape,a_shape,b_shape", [
    ((3, 4), (3, 4), (3, 4)),
    ((3, 1), (1, 4), (4,)),
    ((2, 3, 1), (3, 4), ()),
])
def test_where_broadcast(cond_shape, a_shape, b_shape, rng):
    cond = Tensor(rng.random(cond_shape) > 0.5)
    check(lambda a, b: Tensor.where(cond, a, b),
          rng.standard_normal(a_shape), rng.standard_normal(b_shape))


def test_where_with_scalar_branches(rng):
    cond = Tensor(rng.random((3, 4)) > 0.5)
    check(lambda a: cond.where(a, 0.0), rng.standard_normal((3, 4)))
    check(lambda b: cond.where(1.5, b), rng.standard_normal((3, 4)))


def test_where_cond_from_data(rng):
    check(lambda x: (x > 0).where(x * 2, x.exp()), away_from_zero(rng, (3, 4)))


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (-0.5, None), (None, 0.5)])
def test_clip(lo, hi, rng):
    x = away_from_zero(rng, (4, 5), 0.05, 1.5)
    for bound in (lo, hi):            # keep clear of the bounds (the kinks)
        if bound is not None:
            x = np.where(np.abs(x - bound) < 0.05, x + 0.1, x)
    check(lambda t: t.clip(lo, hi), x)


def test_maximum_minimum_tensor_vs_tensor_broadcast_both_ways(rng):
    a = np.round(rng.standard_normal((3, 1)), 1)
    b = np.round(rng.standard_normal((1, 4)), 1) + 0.05
    check(lambda x, y: x.maximum(y) * 2 + x.minimum(y), a, b)


# ------------------------------------------------------------------- reductions ----

AXES = [None, 0, -1, 1, (0, 2), (-1, -3), (0, 1, 2), (-2,)]


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "var", "std"])
def test_reduction(op, axis, keepdim, rng):
    x = rng.standard_normal((2, 3, 4))
    check(lambda t: getattr(t, op)(axis, keepdim=keepdim), x)


def test_reduction_of_1d_and_scalar(rng):
    check(lambda t: t.sum(), rng.standard_normal(7))
    check(lambda t: t.max(0), rng.standard_normal(7))
    check(lambda t: t.mean(-1, keepdim=True), rng.standard_normal(7))


def test_var_correction_zero(rng):
    check(lambda t: t.var(1, correction=0), rng.standard_normal((3, 4)))


def test_max_ties_share_gradient():
    # not gradcheck-able (a kink), so pin the convention: ties share equally
    x = Tensor([1.0, 3.0, 3.0, 2.0], requires_grad=True)
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0, 0.5, 0.5, 0])
    y = Tensor([[2.0, 2.0], [1.0, 0.0]], requires_grad=True)
    y.min(1).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), [[0.5, 0.5], [0, 1]])


# ------------------------------------------------------------------- shape ops ----

SHAPE_OPS = {
    "reshape": ((2, 3, 4), lambda t: t.reshape(4, 6)),
    "reshape_tuple_neg1": ((2, 3, 4), lambda t: t.reshape((3, -1))),
    "reshape_to_scalar": ((1, 1), lambda t: t.reshape(())),
    "view": ((2, 3, 4), lambda t: t.view(6, 4)),
    "permute": ((2, 3, 4), lambda t: t.permute(2, 0, 1)),
    "permute_neg": ((2, 3, 4), lambda t: t.permute(-1, -3, -2)),
    "transpose": ((2, 3, 4), lambda t: t.transpose(0, 2)),
    "transpose_default": ((2, 3, 4), lambda t: t.transpose()),
    "T": ((3, 5), lambda t: t.T),
    "T_3d": ((2, 3, 4), lambda t: t.T),
    "expand": ((3, 1), lambda t: t.expand(3, 4)),
    "expand_new_dims": ((1, 4), lambda t: t.expand(2, 3, 4)),
    "expand_neg1": ((3, 1), lambda t: t.expand(2, -1, 5)),
    "flatten": ((2, 3, 4), lambda t: t.flatten()),
    "flatten_range": ((2, 3, 2, 2), lambda t: t.flatten(1, 2)),
    "flatten_neg": ((2, 3, 4), lambda t: t.flatten(-2)),
    "unsqueeze": ((3, 4), lambda t: t.unsqueeze(1)),
    "unsqueeze_neg": ((3, 4), lambda t: t.unsqueeze(-1)),
    "squeeze_all": ((1, 3, 1, 4), lambda t: t.squeeze()),
    "squeeze_dim": ((1, 3, 1, 4), lambda t: t.squeeze(2)),
    "squeeze_neg": ((3, 4, 1), lambda t: t.squeeze(-1)),
    "pad_pairs": ((3, 4), lambda t: t.pad(((1, 2), (0, 3)))),
    "pad_pairs_none": ((3, 4), lambda t: t.pad((None, (2, 1)))),
    "pad_flat_torch": ((2, 3, 4), lambda t: t.pad((1, 2, 0, 1))),
    "pad_value": ((3, 4), lambda t: t.pad(((1, 1), (1, 1)), value=2.5)),
    "shrink": ((4, 5), lambda t: t.shrink(((1, 3), (0, 4)))),
    "shrink_none": ((4, 5), lambda t: t.shrink((None, (2, 5)))),
    "contiguous": ((3, 4), lambda t: t.T.contiguous()),
    "chain": ((2, 3, 4), lambda t: t.permute(1, 0, 2).reshape(3, 8)[1:].T.unsqueeze(0)),
}


@pytest.mark.parametrize("name", list(SHAPE_OPS))
def test_shape_op(name, rng):
    shape, fn = SHAPE_OPS[name]
    check(fn, rng.standard_normal(shape))


# -------------------------------------------------------------------- indexing ----

INDEX_CASES = {
    "int": lambda t: t[1],
    "neg_int": lambda t: t[-1],
    "int_int": lambda t: t[1, -2],
    "slice": lambda t: t[1:3],
    "slice_2d": lambda t: t[:, 1:4],
    "slice_neg_bounds": lambda t: t[-3:-1, :-1],
    "step": lambda t: t[::2],
    "step_3": lambda t: t[:, 1::3],
    "neg_step": lambda t: t[::-1],
    "neg_step_2": lambda t: t[:, ::-2],
    "neg_step_bounds": lambda t: t[3:0:-2, 4:1:-1],
    "none": lambda t: t[None],
    "none_middle": lambda t: t[:, None, 1:],
    "ellipsis": lambda t: t[..., 1],
    "ellipsis_none": lambda t: t[1, ..., None],
    "mixed": lambda t: t[None, 1:, ..., ::-2, None],
    "int_array": lambda t: t[[0, 2, 3]],
    "int_array_neg_repeat": lambda t: t[[0, -1, 2, 2, -1]],
    "int_array_axis1": lambda t: t[:, [4, 0, 0, -2]],
    "np_array": lambda t: t[np.array([3, 1, -4])],
    "np_array_2d": lambda t: t[np.array([[0, 1], [3, 3]])],
    "tensor_index": lambda t: t[Tensor([2, 0, -1, 2])],
    "tensor_index_axis1": lambda t: t[1:, Tensor([[1, 1], [-5, 3]])],
    "slice_then_array": lambda t: t[::-1, [1, 2, 1]],
}


@pytest.mark.parametrize("name", list(INDEX_CASES))
def test_indexing(name, rng):
    check(INDEX_CASES[name], rng.standard_normal((4, 5)))


def test_indexing_3d(rng):
    x = rng.standard_normal((2, 3, 4))
    check(lambda t: t[1, ::-1, 1:3], x)
    check(lambda t: t[..., [0, 3, 3]], x)
    check(lambda t: t[:, 2], x)


def test_embedding_style_gather(rng):
    idx = Tensor(np.array([[1, 0, 4], [4, 4, 2]]))
    check(lambda w: w[idx], rng.standard_normal((5, 3)))
    check(lambda w: w.embedding(idx), rng.standard_normal((5, 3)))


# ---------------------------------------------------------- cat / stack / split ----

def test_cat(rng):
    a, b, c = rng.standard_normal((2, 3)), rng.standard_normal((1, 3)), rng.standard_normal((3, 3))
    check(lambda x, y, z: Tensor.cat([x, y, z], 0), a, b, c)
    check(lambda x, y: Tensor.cat([x, y], dim=-1),
          rng.standard_normal((2, 3)), rng.standard_normal((2, 2)))
    check(lambda x: Tensor.cat([x, x * 2], 1), rng.standard_normal((2, 3)))   # same input twice


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack(dim, rng):
    check(lambda x, y: Tensor.stack([x, y, x], dim),
          rng.standard_normal((2, 3)), rng.standard_normal((2, 3)))


@pytest.mark.parametrize("size,dim", [(2, 0), (2, 1), ([1, 3, 1], 1), (4, -1)])
def test_split(size, dim, rng):
    check(lambda t: tuple(p * (i + 1) for i, p in enumerate(t.split(size, dim))),
          rng.standard_normal((3, 5)))


@pytest.mark.parametrize("n,dim", [(2, 0), (3, 1), (5, -1)])
def test_chunk(n, dim, rng):
    check(lambda t: tuple(p.exp() for p in t.chunk(n, dim)), rng.standard_normal((4, 5)))


def test_split_partially_used(rng):
    check(lambda t: t.split(2, 1)[1], rng.standard_normal((3, 5)))


def test_split_backward_is_one_cat(monkeypatch, rng):
    # the pieces' gradients are joined by one cat (a zero piece for the unused one), not
    # padded to x's shape piece by piece and summed
    from minigrad import lazy
    x = Tensor(rng.standard_normal((2, 9)).astype(np.float32), requires_grad=True)
    a, b, c = x.split(3, 1)
    (a * 2 + c * 3).sum().backward()
    ops, real = [], lazy._run
    monkeypatch.setattr(lazy, "_run", lambda lb: (ops.append(lb.op), real(lb))[1])
    g = x.grad.numpy()
    assert ops.count("cat") == 1 and "pad" not in ops, ops
    np.testing.assert_array_equal(g, np.repeat([[2.0, 0.0, 3.0]], 3, axis=1).repeat(2, 0))
    assert x.split(9, 1)[0] is x                                # one piece: x itself
    ints = Tensor(np.arange(6).reshape(2, 3))
    assert [p.numpy().tolist() for p in ints.split(1, 1)] == [[[0], [3]], [[1], [4]], [[2], [5]]]


# ------------------------------------------------------------- neural-net funcs ----

@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(axis, rng):
    check(lambda t: t.softmax(axis), rng.standard_normal((3, 4)) * 2)


@pytest.mark.parametrize("axis", [-1, 0])
def test_log_softmax(axis, rng):
    check(lambda t: t.log_softmax(axis), rng.standard_normal((3, 4)) * 2)


def test_softmax_large_logits(rng):
    check(lambda t: t.softmax(-1), rng.standard_normal((2, 5)) + 500.0)


def test_cross_entropy_2d(rng):
    target = Tensor(rng.integers(0, 5, 4))
    check(lambda t: t.cross_entropy(target), rng.standard_normal((4, 5)))


def test_cross_entropy_3d(rng):
    target = Tensor(rng.integers(0, 4, (2, 3)))
    check(lambda t: t.cross_entropy(target), rng.standard_normal((2, 3, 4)))


def test_cross_entropy_ignore_index(rng):
    tgt = rng.integers(0, 5, 6)
    tgt[[1, 4]] = -100
    check(lambda t: t.cross_entropy(Tensor(tgt)), rng.standard_normal((6, 5)))
    tgt2 = rng.integers(0, 4, (2, 3))
    tgt2[0, 1] = 7
    check(lambda t: t.cross_entropy(Tensor(tgt2), ignore_index=7),
          rng.standard_normal((2, 3, 4)))


def test_cross_entropy_ignored_rows_get_zero_grad(rng):
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    x.cross_entropy(Tensor([1, -100, 2])).backward()
    g = x.grad.numpy()
    assert np.all(g[1] == 0) and np.abs(g[0]).sum() > 0


@pytest.mark.parametrize("axis", [-1, 0, (-2, -1)], ids=str)
def test_layernorm(axis, rng):
    check(lambda t: t.layernorm(axis), rng.standard_normal((3, 5)))


def test_layernorm_affine(rng):
    check(lambda x, w, b: x.layernorm() * w + b,
          rng.standard_normal((2, 3, 4)), rng.standard_normal(4), rng.standard_normal(4))


def test_gelu_wide_range(rng):
    check(lambda t: t.gelu(), rng.uniform(-5, 5, 20))


def test_dropout_with_fixed_seed(rng):
    def fn(t):
        mg.manual_seed(1234)          # the same mask on every re-evaluation
        return t.dropout(0.4, training=True)
    check(fn, rng.standard_normal((4, 5)))
    # and the mask is not trivial
    mg.manual_seed(1234)
    y = Tensor(np.ones((4, 5))).dropout(0.4, training=True).numpy()
    assert 0 < (y == 0).sum() < 20
    np.testing.assert_allclose(y[y != 0], 1 / 0.6, rtol=1e-6)


def test_dropout_eval_is_identity(rng):
    check(lambda t: t.dropout(0.5, training=False), rng.standard_normal((3, 3)))


# ----------------------------------------------------------------------- matmul ----

MATMUL_SHAPES = [
    ((3, 4), (4, 2)),
    ((1, 4), (4, 1)),
    ((4,), (4, 3)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((2, 3, 4), (2, 4, 2)),
    ((2, 3, 4), (4, 2)),
    ((3, 4), (2, 4, 2)),
    ((2, 1, 3, 2), (3, 2, 2)),
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (4,)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=str)
def test_matmul(sa, sb, rng):
    check(lambda a, b: a @ b, rng.standard_normal(sa), rng.standard_normal(sb))


def test_matmul_one_side_constant(rng):
    w = Tensor(rng.standard_normal((4, 3)), dtype=mg.float64)
    check(lambda a: a @ w, rng.standard_normal((2, 4)))
    check(lambda b: w.T @ b, rng.standard_normal((4, 2)))


def test_linear_layer(rng):
    check(lambda x, w, b: (x @ w.T + b).relu().sum(-1),
          rng.standard_normal((3, 4)), rng.standard_normal((5, 4)),
          rng.uniform(1.0, 2.0, 5))


# ------------------------------------------------------------------ casts, devices ----

def test_cast_float32_roundtrip(rng):
    # linear in x, so a large eps is exact up to float32 rounding
    check(lambda t: (t.float() * 3).cast(mg.float64), rng.standard_normal((3, 4)),
          eps=1e-3, atol=1e-3)


@pytest.mark.parametrize("dt", ["half", "bfloat16"])
def test_cast_low_precision_roundtrip(dt, rng):
    check(lambda t: (getattr(t, dt)() * 2).to(mg.float64), rng.uniform(-1, 1, (3, 4)),
          eps=0.1, atol=0.05)


def test_cast_grad_dtype_matches_input():
    x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x.half() * 2).float().sum().backward()
    assert x.grad.dtype == mg.float32
    np.testing.assert_array_equal(x.grad.numpy(), [2, 2, 2])


def test_to_cpu(rng):
    check(lambda t: t.to("cpu") * 2, rng.standard_normal((2, 3)))
    check(lambda t: t.to("cpu").exp(), rng.standard_normal(3))


# ------------------------------------------------------------------- whole models ----

def test_mlp_loss(rng):
    tgt = Tensor(rng.integers(0, 3, 4))

    def fn(x, w1, w2):
        return ((x @ w1).gelu() @ w2).log_softmax(-1).cross_entropy(tgt)
    check(fn, rng.standard_normal((4, 3)), rng.standard_normal((3, 5)),
          rng.standard_normal((5, 3)))


def test_attention_like(rng):
    def fn(q, k, v):
        att = (q @ k.transpose(-1, -2)) * (1 / np.sqrt(4))
        mask = Tensor(np.tril(np.ones((3, 3), dtype=bool)))
        att = mask.where(att, -1e9).softmax(-1)
        return att @ v
    check(fn, *(rng.standard_normal((2, 3, 4)) for _ in range(3)))
