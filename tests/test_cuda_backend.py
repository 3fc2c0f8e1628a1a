"""CudaBackend against the NumPy backend, method by method of the backend contract.

Fresh random inputs (never zeros), strided views (permuted, sliced with steps,
reversed, broadcast), shapes with 1s, primes and large sizes; every new device
buffer is poisoned (NaN / -1) before the kernel writes it, so an unwritten element
fails. Floats: f16/bf16 are computed in f32 and rounded once on both backends, so
they agree to an ulp of the 16-bit type; integers agree exactly.
"""
import math

import numpy as np
import pytest

import minigrad as mg
from minigrad.backend import BINARY_OPS, BITWISE_OPS
from minigrad.backend.numpy import NumpyBackend
from minigrad.dtype import ALL

pytestmark = pytest.mark.cuda
DTYPES = {d.name: d for d in ALL if d.name != "float64"}
F32, F16, BF16 = DTYPES["float32"], DTYPES["float16"], DTYPES["bfloat16"]
I8, I32, I64, U32, B = (DTYPES[n] for n in ("int8", "int32", "int64", "uint32", "bool"))
NPB = NumpyBackend()
RTOL = {"float32": 2e-6, "float16": 2e-3, "bfloat16": 1.6e-2}


@pytest.fixture(scope="module")
def cb():
    if not mg.cuda_available():
        pytest.skip("CUDA is unavailable")
    from minigrad.backend.cuda import backend as bm, get_backend
    bm.POISON = True
    yield get_backend()
    bm.POISON = False


def rand(rng, shape, dt, lo=-100, hi=100):
    if dt.is_float:
        return (rng.standard_normal(shape) * 3).astype(dt.np)
    if dt is B:
        return rng.random(shape) < 0.5
    if dt is U32:
        lo = max(lo, 0)
    return rng.integers(lo, hi, shape).astype(dt.np)


def check(cb, ref, got, dt=None, rtol=None, norm=False):
    got = cb.to_numpy(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    if ref.dtype.kind not in "fV" and ref.dtype != BF16.np:
        assert np.array_equal(got, ref), f"{np.sum(got != ref)} of {ref.size} differ"
        return
    g, r = got.astype(np.float64), ref.astype(np.float64)
    assert np.array_equal(np.isnan(g), np.isnan(r)), "NaNs differ (unwritten output?)"
    ok = ~np.isnan(r)
    g, r = g[ok], r[ok]
    rtol = rtol or RTOL[(dt or DTYPES[str(ref.dtype)]).name]
    if norm:
        err = np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30)
        assert err <= rtol, f"relative error {err:.3g} > {rtol}"
    else:
        scale = np.abs(r[np.isfinite(r)]).max(initial=0) or 1.0
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * 1e-3 * scale)


def both(cb, arr):
    return arr, cb.from_numpy(arr)


def views(rng, x_np, x_cb, cb):
    """The same strided views of x on both backends: permuted, stepped, reversed."""
    out = [("plain", x_np, x_cb)]
    nd = x_np.ndim
    if nd >= 2:
        order = tuple(reversed(range(nd)))
        out.append(("permuted", NPB.permute(order, x_np), cb.permute(order, x_cb)))
    sl = tuple((0, d, 2) if d > 2 else (0, d, 1) for d in x_np.shape)
    out.append(("stepped", NPB.shrink(sl, x_np), cb.shrink(sl, x_cb)))
    rv = tuple((d - 1, None, -1) for d in x_np.shape)
    out.append(("reversed", NPB.shrink(rv, x_np), cb.shrink(rv, x_cb)))
    return out


SHAPES = [(), (1,), (7,), (3, 1, 5), (13, 17), (2, 3, 5, 7), (1000003,)]


# -- elementwise -------------------------------------------------------------------
@pytest.mark.parametrize("dt", [F32, F16, BF16], ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["neg", "exp", "log", "sqrt", "recip", "sin", "cos", "tanh",
                                "sigmoid", "abs", "sign", "not"])
def test_unary_float(cb, rng, op, dt):
    for shape in SHAPES:
        x, xc = both(cb, rand(rng, shape, dt))
        for name, xv, xcv in views(rng, x, xc, cb):
            check(cb, NPB.unary(op, xv), cb.unary(op, xcv), dt)


@pytest.mark.parametrize("dt", [I8, I32, I64, U32, B], ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["neg", "abs", "sign", "not"])
def test_unary_int(cb, rng, op, dt):
    if dt is B and op in ("neg", "sign"):
        pytest.skip("NumPy has no such op on bool")
    for shape in [(5,), (13, 17), (4, 1, 9)]:
        x, xc = both(cb, rand(rng, shape, dt))
        with np.errstate(all="ignore"):
            ref = NPB.unary(op, x)
        check(cb, ref, cb.unary(op, xc))


def _binary_cases():
    for op in BINARY_OPS:          # &, |, ^ take integers and bool; the rest numbers
        for dt in (I8, I32, I64, U32, B) if op in BITWISE_OPS else \
                (F32, F16, BF16, I8, I32, I64, U32):
            yield op, dt


@pytest.mark.parametrize("op,dt", list(_binary_cases()), ids=lambda x: getattr(x, "name", x))
def test_binary(cb, rng, op, dt):
    for shape in [(1,), (7, 11), (2, 3, 4, 5), (100003,)]:
        a, b = rand(rng, shape, dt), rand(rng, shape, dt)
        if op == "pow":
            b = np.abs(b) % 4 if not dt.is_float else b
            a = a if not dt.is_float else np.abs(a).astype(dt.np)
        if op in ("eq", "ne"):
            b = np.where(rng.random(shape) < 0.5, a, b).astype(dt.np)   # some equal pairs
        ac, bc = cb.from_numpy(a), cb.from_numpy(b)
        with np.errstate(all="ignore"):
            ref = NPB.binary(op, a, b)
        check(cb, ref, cb.binary(op, ac, bc), dt)


def test_binary_broadcast_and_views(cb, rng):
    """Broadcasting is stride 0: expand views of different shapes, mixed with
    permuted / reversed views, in one kernel."""
    a, ac = both(cb, rand(rng, (5, 1, 7), F32))
    b, bc = both(cb, rand(rng, (1, 6, 7), F32))
    shape = (5, 6, 7)
    ae, aec = NPB.expand(shape, a), cb.expand(shape, ac)
    be, bec = NPB.expand(shape, b), cb.expand(shape, bc)
    check(cb, NPB.binary("mul", ae, be), cb.binary("mul", aec, bec))
    c, cc = both(cb, rand(rng, (7, 6, 5), F32))
    cp, ccp = NPB.permute((2, 1, 0), c), cb.permute((2, 1, 0), cc)
    check(cb, NPB.binary("sub", cp, ae), cb.binary("sub", ccp, aec))
    rv = ((4, None, -1), (5, None, -1), (6, None, -1))
    check(cb, NPB.binary("add", NPB.shrink(rv, cp), be),
          cb.binary("add", cb.shrink(rv, ccp), bec))
    # a scalar broadcast from `full` (a stride-0 view of one element)
    check(cb, NPB.binary("div", cp, NPB.full(shape, 3.0, F32)),
          cb.binary("div", ccp, cb.full(shape, 3.0, F32)))


@pytest.mark.parametrize("dt", [F32, BF16, I32, B], ids=lambda d: d.name)
def test_where(cb, rng, dt):
    shape = (9, 1, 13)
    cond, condc = both(cb, rng.random(shape) < 0.4)
    a, ac = both(cb, rand(rng, (9, 4, 13), dt))
    b, bc = both(cb, rand(rng, (1, 4, 13), dt))
    full = (9, 4, 13)
    check(cb, NPB.where(NPB.expand(full, cond), a, NPB.expand(full, b)),
          cb.where(cb.expand(full, condc), ac, cb.expand(full, bc)), dt)


@pytest.mark.parametrize("src", list(DTYPES.values()), ids=lambda d: d.name)
def test_cast_every_pair(cb, rng, src):
    x = rand(rng, (3, 37), src, lo=-100, hi=100)
    if src.is_float:
        x = np.clip(x.astype(np.float32) * 30, -100, 100).astype(src.np)   # in every range
        x[0, :3] = [0.0, -0.0, 0.5]
    for dst in DTYPES.values():
        xs = np.abs(x) if (dst is U32 and src.is_float) else x   # negative float -> uint: UB
        xs_c = cb.from_numpy(xs)
        for name, xv, xcv in views(rng, xs, xs_c, cb):
            check(cb, NPB.cast(dst, xv), cb.cast(dst, xcv), dst if dst.is_float else None)


# -- creation ----------------------------------------------------------------------
@pytest.mark.parametrize("dt,value", [(F32, 1.5), (F32, -np.inf), (F16, 0.1), (BF16, -3.25),
                                      (I64, 2 ** 40 + 7), (I32, -5), (I8, 3), (U32, 2 ** 31 + 1),
                                      (B, True), (F32, 0.0)])
def test_full(cb, dt, value):
    for shape in [(), (1,), (4, 5)]:
        check(cb, NPB.full(shape, value, dt), cb.full(shape, value, dt), dt)
    # dense fills (memset or kernel) through pad
    x = np.ones((2, 3), dt.np)
    check(cb, NPB.pad(((1, 2), (0, 3)), value, x), cb.pad(((1, 2), (0, 3)), value,
                                                          cb.from_numpy(x)), dt)


@pytest.mark.parametrize("args", [(0, 10, 1, I64), (5, -7, -3, I32), (0.5, 3.0, 0.25, F32),
                                  (-1, 1, 0.1, F32), (0, 100, 1, F16), (3, 3, 1, I64)])
def test_arange(cb, args):
    check(cb, NPB.arange(*args), cb.arange(*args), args[3] if args[3].is_float else None)


@pytest.mark.parametrize("dt", [F32, F16, BF16], ids=lambda d: d.name)
def test_random(cb, dt):
    n = 1 << 20
    u = cb.to_numpy(cb.random("uniform", (n,), dt, 1234, 7)).astype(np.float64)
    assert u.min() >= 0 and u.max() <= 1 and abs(u.mean() - 0.5) < 3e-3
    assert abs(u.var() - 1 / 12) < 3e-3
    z = cb.to_numpy(cb.random("normal", (1024, 1024), dt, 1234, 8)).astype(np.float64)
    assert abs(z.mean()) < 5e-3 and abs(z.std() - 1) < 5e-3
    assert np.isfinite(z).all()
    again = cb.to_numpy(cb.random("uniform", (n,), dt, 1234, 7)).astype(np.float64)
    assert np.array_equal(u, again)                                   # same seed, counter
    other = cb.to_numpy(cb.random("uniform", (n,), dt, 1234, 9)).astype(np.float64)
    assert np.mean(u == other) < 0.05          # another counter (16-bit: some equal by chance)
    seed2 = cb.to_numpy(cb.random("uniform", (n,), dt, 1235, 7)).astype(np.float64)
    assert np.mean(u == seed2) < 0.05


# -- reductions --------------------------------------------------------------------
RED_CASES = [((7,), (0,)), ((13, 17), (1,)), ((13, 17), (0,)), ((13, 17), (0, 1)),
             ((3, 1, 5), (1,)), ((2, 3, 5, 7), (0, 2)), ((2, 3, 5, 7), (1, 3)),
             ((1000003,), (0,)), ((4097, 3), (0,)), ((3, 40961), (1,)), ((64, 96, 33), (2,)),
             ((300, 200), (0,)), ((1, 1), (0, 1)), ((5, 4), ())]


@pytest.mark.parametrize("dt", [F32, F16, BF16, I8, I32, I64, U32, B], ids=lambda d: d.name)
@pytest.mark.parametrize("op", ["sum", "max", "min"])
def test_reduce(cb, rng, op, dt):
    for shape, axes in RED_CASES:
        x, xc = both(cb, rand(rng, shape, dt))
        for name, xv, xcv in views(rng, x, xc, cb):
            ax = tuple(a for a in axes if a < xv.ndim)
            check(cb, NPB.reduce(op, ax, xv), cb.reduce(op, ax, xcv), dt,
                  rtol=None if op != "sum" or not dt.is_float else
                  {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}[dt.name], norm=True)


def test_reduce_large_split(cb, rng):
    """A full reduction of many elements (split into partial sums, then summed)."""
    x, xc = both(cb, rand(rng, (1 << 24) + 3, F32))
    check(cb, NPB.reduce("sum", (0,), x), cb.reduce("sum", (0,), xc), rtol=1e-5, norm=True)
    check(cb, NPB.reduce("max", (0,), x), cb.reduce("max", (0,), xc))
    y, yc = both(cb, rand(rng, (1 << 20, 3), BF16))
    check(cb, NPB.reduce("sum", (0,), y), cb.reduce("sum", (0,), yc), BF16, rtol=1.6e-2, norm=True)


def test_reduce_nan_propagates(cb, rng):
    x = rand(rng, (4, 1000), F32)
    x[1, 500] = np.nan
    xc = cb.from_numpy(x)
    for op in ("sum", "max", "min"):
        check(cb, NPB.reduce(op, (1,), x), cb.reduce(op, (1,), xc))


@pytest.mark.parametrize("dt", [F32, F16, BF16, I8, I32, I64], ids=lambda d: d.name)
def test_argmax(cb, rng, dt):
    for shape, axis in [((7,), 0), ((13, 17), 1), ((13, 17), 0), ((3, 1, 5), 1),
                        ((2, 3, 5, 7), 2), ((8, 50257), 1), ((1000, 3), 0)]:
        x = rand(rng, shape, dt, lo=-3, hi=3)       # many ties: the first index wins
        xc = cb.from_numpy(x)
        for name, xv, xcv in views(rng, x, xc, cb):
            check(cb, NPB.argmax(axis, xv), cb.argmax(axis, xcv))
    x = rand(rng, (5, 9), F32)
    x[2, 4], x[2, 6], x[3, 0] = np.nan, np.nan, np.nan
    check(cb, NPB.argmax(1, x), cb.argmax(1, cb.from_numpy(x)))


# -- matmul ------------------------------------------------------------------------
@pytest.mark.parametrize("dt", [F32, F16, BF16, I32], ids=lambda d: d.name)
def test_matmul(cb, rng, dt):
    for bshape, M, K, N in [((), 1, 1, 1), ((), 7, 13, 5), ((), 64, 64, 64), ((), 127, 129, 67),
                            ((2, 3), 65, 31, 129), ((4,), 1, 300, 1), ((), 5, 0, 3)]:
        a = rand(rng, bshape + (M, K), dt, lo=-5, hi=5)
        b = rand(rng, bshape + (N, K), dt, lo=-5, hi=5)       # used transposed: a view
        ac, bc = cb.from_numpy(a), cb.from_numpy(b)
        order = tuple(range(len(bshape))) + (len(bshape) + 1, len(bshape))
        bt, btc = NPB.permute(order, b), cb.permute(order, bc)
        check(cb, NPB.matmul(a, bt), cb.matmul(ac, btc), dt,
              rtol={"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}.get(dt.name),
              norm=True)


def test_matmul_broadcast_batch(cb, rng):
    """A batch operand broadcast with stride 0 (expand) and a permuted batch."""
    a = rand(rng, (3, 1, 9, 11), F32)
    b = rand(rng, (1, 4, 11, 6), F32)
    shape_a, shape_b = (3, 4, 9, 11), (3, 4, 11, 6)
    ae, aec = NPB.expand(shape_a, a), cb.expand(shape_a, cb.from_numpy(a))
    be, bec = NPB.expand(shape_b, b), cb.expand(shape_b, cb.from_numpy(b))
    check(cb, NPB.matmul(ae, be), cb.matmul(aec, bec), F32, rtol=1e-5, norm=True)


# -- movement ----------------------------------------------------------------------
def test_movement_views_and_copies(cb, rng):
    x, xc = both(cb, rand(rng, (4, 6, 10), F32))
    # reshape of a dense buffer and of a view that needs no copy
    check(cb, NPB.reshape((24, 10), x), cb.reshape((24, 10), xc))
    s, sc = NPB.shrink(((1, 3, 1), (0, 6, 1), (0, 10, 1)), x), \
        cb.shrink(((1, 3, 1), (0, 6, 1), (0, 10, 1)), xc)
    r = cb.reshape((2, 60), sc)
    assert r.alloc is xc.alloc                              # a view, no copy
    check(cb, NPB.reshape((2, 60), s), r)
    # reshape of a permuted view: a copy
    p, pc = NPB.permute((2, 0, 1), x), cb.permute((2, 0, 1), xc)
    check(cb, NPB.reshape((10, 24), p), cb.reshape((10, 24), pc))
    check(cb, NPB.reshape((5, 2, 4, 6), p), cb.reshape((5, 2, 4, 6), pc))
    # contiguous of expand / stepped / reversed views
    e, ec = NPB.expand((3, 4, 6, 10), NPB.reshape((1, 4, 6, 10), x)), \
        cb.expand((3, 4, 6, 10), cb.reshape((1, 4, 6, 10), xc))
    check(cb, NPB.contiguous(e), cb.contiguous(ec))
    sl = ((3, None, -1), (0, 6, 4), (9, 0, -3))
    check(cb, NPB.contiguous(NPB.shrink(sl, x)), cb.contiguous(cb.shrink(sl, xc)))
    assert cb.contiguous(xc) is xc


@pytest.mark.parametrize("dt", [F32, BF16, I64, B], ids=lambda d: d.name)
def test_pad_and_cat(cb, rng, dt):
    x, xc = both(cb, rand(rng, (3, 5, 7), dt))
    for pads, value in [(((0, 0), (1, 2), (3, 0)), 0), (((2, 1), (0, 0), (0, 1)), 1)]:
        check(cb, NPB.pad(pads, value, x), cb.pad(pads, value, xc), dt)
        p, pc = NPB.permute((2, 1, 0), x), cb.permute((2, 1, 0), xc)
        check(cb, NPB.pad(pads, value, p), cb.pad(pads, value, pc), dt)
    if dt.is_float:
        check(cb, NPB.pad(((1, 1),) * 3, -np.inf, x), cb.pad(((1, 1),) * 3, -np.inf, xc), dt)
    ys = [rand(rng, (3, n, 7), dt) for n in (1, 4, 0, 9)]
    check(cb, NPB.cat(1, x, *ys), cb.cat(1, xc, *[cb.from_numpy(y) for y in ys]), dt)
    p = NPB.permute((1, 0, 2), x)
    check(cb, NPB.cat(0, p, p), cb.cat(0, *[cb.permute((1, 0, 2), xc)] * 2), dt)
    check(cb, NPB.cat(-1, x, x), cb.cat(-1, xc, xc), dt)


@pytest.mark.parametrize("dt", [F32, F16, BF16, I32, I64], ids=lambda d: d.name)
def test_gather_scatter_add(cb, rng, dt):
    for xshape, axis, ishape in [((100, 16), 0, (8, 12)), ((5, 7, 3), 1, (4, 2)),
                                 ((5, 7, 3), 2, (6,)), ((11,), 0, (30,)), ((6, 50), 1, (6,))]:
        x, xc = both(cb, rand(rng, xshape, dt))
        size = xshape[axis]
        idx = rng.integers(-size, size, ishape)              # negatives count from the end
        for idt in (I64, I32):
            ic = cb.from_numpy(idx.astype(idt.np))
            g = NPB.gather(axis, x, idx)
            check(cb, g, cb.gather(axis, xc, ic), dt)
            src = rand(rng, g.shape, dt)
            check(cb, NPB.scatter_add(axis, size, src, idx.astype(idt.np)),
                  cb.scatter_add(axis, size, cb.from_numpy(src), ic), dt,
                  rtol={"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}.get(dt.name),
                  norm=True)
    # a gather from a permuted view (made dense first)
    x, xc = both(cb, rand(rng, (9, 4), dt))
    idx = rng.integers(0, 4, 5)
    check(cb, NPB.gather(0, NPB.permute((1, 0), x), idx),
          cb.gather(0, cb.permute((1, 0), xc), cb.from_numpy(idx)), dt)


# -- large and 64-bit indexing -------------------------------------------------------
def test_large_elementwise(cb, rng):
    n = (1 << 26) + 5
    x, xc = both(cb, rand(rng, n, F32))
    check(cb, NPB.binary("mul", x, x), cb.binary("mul", xc, xc))


@pytest.mark.slow
def test_index_64bit(cb):
    """More than 2**31 elements: the 64-bit index variants (a 2 GiB int8 output)."""
    n = 2 ** 31 + 13
    one = cb.full((n,), 1, I8)
    two = cb.binary("add", one, one)                       # dense, 2 GiB
    assert cb.to_numpy(cb.shrink(((n - 3, n, 1),), two)).tolist() == [2, 2, 2]
    s = cb.reduce("sum", (0,), two)                        # int64 partial sums, wrapped to int8
    assert int(cb.to_numpy(s)[0]) == np.array(2 * n).astype(np.int8)
    m = cb.reduce("max", (0,), cb.binary("add", two, cb.expand((n,), cb.full((1,), 0, I8))))
    assert int(cb.to_numpy(m)[0]) == 2
    del two


# -- through the Tensor API ------------------------------------------------------------
def test_tensor_api_on_cuda_matches_cpu(rng):
    if not mg.cuda_available():
        pytest.skip("CUDA is unavailable")
    x = rng.standard_normal((8, 33)).astype(np.float32)
    w = rng.standard_normal((33, 5)).astype(np.float32)
    t = rng.integers(0, 5, 8)
    out = {}
    for dev in ("cpu", "cuda"):
        xt = mg.Tensor(x, device=dev, requires_grad=True)
        wt = mg.Tensor(w, device=dev, requires_grad=True)
        loss = (xt @ wt).log_softmax().cross_entropy(mg.Tensor(t, device=dev)) + \
            xt.tanh().var() + xt[:, ::3].max() + xt.layernorm().sum() * 0.1
        loss.backward()
        out[dev] = (loss.numpy(), xt.grad.numpy(), wt.grad.numpy())
    for c, g in zip(out["cpu"], out["cuda"]):
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5)
    assert math.isfinite(float(out["cuda"][0]))
