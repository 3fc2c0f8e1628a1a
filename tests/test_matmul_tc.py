"""The tensor-core matmul family (mg.ops.matmul_tc*): results against the NumPy
reference of the rounded inputs, gradients, wiring into Tensor/@ and nn.Linear, and
bad input. On CUDA every output buffer is poisoned before the kernel writes it."""
import ml_dtypes
import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor

OPS = {"matmul_tc": np.float16, "matmul_tc_bf16": ml_dtypes.bfloat16,
       "matmul_tc_async": np.float16, "matmul_tc_bf16_async": ml_dtypes.bfloat16}
SHAPES = [(1, 1, 1), (17, 9, 13), (127, 255, 33), (64, 64, 64), (1000, 1000, 1000),
          (4096, 4096, 4096)]


def _inputs(rng, shape_a, shape_b, np_dtype):
    a = rng.standard_normal(shape_a).astype(np.float32).astype(np_dtype)
    b = rng.standard_normal(shape_b).astype(np.float32).astype(np_dtype)
    return a, b


def _rel(out, ref):
    assert not np.isnan(out).any(), "NaN in output (an element was not written?)"
    return np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)


def _bound(k, np_dtype):
    # f32 accumulation of k products: relative error grows like sqrt(k) * 2^-24 per term;
    # the inputs are exact (already rounded), so the bound is the f32 sum's, not f16's
    return 1e-6 * max(1.0, np.sqrt(k))


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("m,n,k", SHAPES, ids=lambda v: str(v))
def test_matches_reference(name, m, n, k, poisoned_device, rng):
    if max(m, n, k) >= 4096 and poisoned_device == "cpu":
        pytest.skip("the CPU path *is* the reference; 4096^3 only checks the GPU")
    a, b = _inputs(rng, (m, k), (k, n), OPS[name])
    out = getattr(mg.ops, name)(Tensor(a, device=poisoned_device),
                                Tensor(b, device=poisoned_device)).numpy()
    assert out.dtype == np.float32 and out.shape == (m, n)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert _rel(out, ref) < _bound(k, OPS[name])


@pytest.mark.parametrize("name", OPS)
def test_batched_and_transposed_b(name, poisoned_device, rng):
    a, b = _inputs(rng, (4, 3, 65, 129), (129, 70), OPS[name])
    op = getattr(mg.ops, name)
    out = op(Tensor(a, device=poisoned_device), Tensor(b, device=poisoned_device)).numpy()
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert out.shape == (4, 3, 65, 70) and _rel(out, ref) < _bound(129, OPS[name])
    # B stored [N, K], read as [K, N] through a transposed view (no copy)
    bt = np.ascontiguousarray(b.T)
    out_t = op(Tensor(a, device=poisoned_device), Tensor(bt, device=poisoned_device).T).numpy()
    assert _rel(out_t, ref) < _bound(129, OPS[name])
    # A transposed too, and unaligned leading dims (K = 33: no 16-byte loads)
    a2, b2 = _inputs(rng, (33, 50), (33, 21), OPS[name])
    out2 = op(Tensor(a2, device=poisoned_device).T, Tensor(b2, device=poisoned_device)).numpy()
    assert _rel(out2, a2.T.astype(np.float64) @ b2.astype(np.float64)) < _bound(33, OPS[name])


@pytest.mark.parametrize("name", OPS)
def test_gradients_match_formula_and_cpu(name, device, rng):
    """dA = dC·Bᵀ and dB = Aᵀ·dC with dC rounded to the input dtype (f32 products of
    16-bit inputs cannot be finite-differenced: the cast to 16 bits is a step function,
    so the analytic formula is the check), arriving in f32 at the f32 leaves."""
    dt = mg.float16 if OPS[name] is np.float16 else mg.bfloat16
    a32 = rng.standard_normal((2, 5, 19)).astype(np.float32)
    b32 = rng.standard_normal((19, 11)).astype(np.float32)
    w = rng.standard_normal((2, 5, 11)).astype(np.float32)
    grads = {}
    for dev in sorted({"cpu", device}):
        a = Tensor(a32, device=dev, requires_grad=True)
        b = Tensor(b32, device=dev, requires_grad=True)
        out = getattr(mg.ops, name)(a.cast(dt), b.cast(dt))
        (out * Tensor(w, device=dev)).sum().backward()
        assert a.grad.dtype == mg.float32 and b.grad.dtype == mg.float32
        grads[dev] = (a.grad.numpy(), b.grad.numpy())
    r = lambda x: x.astype(OPS[name]).astype(np.float64)      # noqa: E731
    g = r(w)
    ref_a = r(g @ r(b32).T)                 # the f32 result is rounded to dt on its way back
    ref_b = r(np.einsum("bmk,bmn->kn", r(a32), g))
    for dev, (ga, gb) in grads.items():
        assert _rel(ga, ref_a) < 1e-2 and _rel(gb, ref_b) < 1e-2, dev
    if device == "cuda":
        for x, y in zip(grads["cpu"], grads["cuda"]):
            assert _rel(y, x) < 1e-2


def test_tensor_matmul_and_linear_use_the_kernels(device, rng):
    """f16 @ f16 is an f16 tensor-core product rounded once; nn.Linear computes in bf16
    on CUDA by default (f32 weights), in f32 on the CPU, and can be switched."""
    a, b = _inputs(rng, (3, 40, 24), (24, 16), np.float16)
    out = (Tensor(a, device=device) @ Tensor(b, device=device)).numpy()
    assert out.dtype == np.float16
    ref = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float16)
    assert np.abs(out.astype(np.float32) - ref.astype(np.float32)).max() <= \
        2 ** -9 * np.abs(ref.astype(np.float32)).max()
    mg.manual_seed(0)
    lin = mg.nn.Linear(24, 16).to(device)
    x = Tensor(rng.standard_normal((5, 24)).astype(np.float32), device=device)
    exact = x.numpy() @ lin.weight.numpy().T + lin.bias.numpy()
    auto = lin(x).numpy()
    err = np.abs(auto - exact).max() / np.abs(exact).max()
    assert (err < 2e-2) if device == "cuda" else (err < 1e-6)
    lin.compute = "float32"
    assert np.abs(lin(x).numpy() - exact).max() / np.abs(exact).max() < 1e-5
    with pytest.raises(ValueError, match="compute must be one of"):
        mg.nn.Linear(2, 2, compute="int3")


def test_bad_input(device):
    f16 = Tensor.randn(4, 8, device=device).half()
    with pytest.raises(TypeError, match=r"matmul_tc: b must be float16, got bfloat16"):
        mg.ops.matmul_tc(f16, Tensor.randn(8, 3, device=device).bfloat16())
    with pytest.raises(TypeError, match=r"matmul_tc_bf16: a must be bfloat16, got float16"):
        mg.ops.matmul_tc_bf16(f16, Tensor.randn(8, 3, device=device).bfloat16())
    with pytest.raises(ValueError, match=r"inner dimensions differ: a \(4, 8\).*b \(7, 3\)"):
        mg.ops.matmul_tc_async(f16, Tensor.randn(7, 3, device=device).half())
    with pytest.raises(ValueError, match=r"a needs at least 2 dimensions, got shape \(8,\)"):
        mg.ops.matmul_tc(Tensor.randn(8, device=device).half(), f16.T)
    other = "cpu" if device == "cuda" else None
    if other:
        with pytest.raises(ValueError, match="different devices"):
            mg.ops.matmul_tc(f16, Tensor.randn(8, 3, device=other).half())
