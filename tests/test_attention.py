"""The attention family: flash forward, its log-sum-exp statistics and its backward
against float64 references; attention_tc (f16, P rounded to f16) and its backward;
multi-head leading dims in one launch; CausalSelfAttention's kernel paths; bad input.
On CUDA every new buffer is poisoned before a kernel writes it."""
import math

import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor
from minigrad.backend import reference


def ref_attention64(q, k, v, causal):
    """float64 softmax attention and its logsumexp, [..., S, D]."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.triu(np.ones(s.shape[-2:], bool), 1), -np.inf, s)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    lse = (m + np.log(e.sum(-1, keepdims=True)))[..., 0]
    p = e / e.sum(-1, keepdims=True)
    return p @ v, lse, p


def ref_grads64(q, k, v, do, causal):
    """Analytic float64 gradients of sum(out * do)."""
    out, _, p = ref_attention64(q, k, v, causal)
    q, k, v, do = (x.astype(np.float64) for x in (q, k, v, do))
    scale = 1 / math.sqrt(q.shape[-1])
    dv = np.swapaxes(p, -1, -2) @ do
    dp = do @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, dv


def close(got, ref, rel=1e-4, abs_=1e-5):
    assert not np.isnan(got).any(), "NaN in output (an element was not written?)"
    err = np.abs(got - ref)
    assert (err <= abs_ + rel * np.abs(ref)).mean() > 0.999 and \
        np.linalg.norm(got - ref) <= rel * max(np.linalg.norm(ref), 1e-12) + abs_ * math.sqrt(ref.size), \
        f"max abs err {err.max():.3g}"


FLASH_CASES = [(s, d) for s in (1, 2, 17, 64, 255) for d in (16, 32, 64, 100, 128, 256)] + \
    [(1024, 64), (1024, 100), (1024, 256), (4097, 64), (4097, 128)]


def _lead(s):
    return (2, 3) if s <= 255 else (1,)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("s,d", FLASH_CASES, ids=lambda v: str(v))
def test_flash_forward_stats_and_backward(s, d, causal, poisoned_device, rng):
    if poisoned_device == "cpu" and s > 1024:
        pytest.skip("a float64 reference of S=4097 on the CPU path is the same NumPy code")
    shape = _lead(s) + (s, d)
    q, k, v, do = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    ref_out, ref_lse, _ = ref_attention64(q, k, v, causal)
    qt, kt, vt = (Tensor(x, device=poisoned_device, requires_grad=True) for x in (q, k, v))
    op = mg.ops.attention_flash_causal if causal else mg.ops.attention_flash
    out = op(qt, kt, vt)
    out_s, lse = mg.ops.attention_flash_with_stats(qt.detach(), kt.detach(), vt.detach(),
                                                   causal)
    close(out.numpy(), ref_out)
    assert np.array_equal(out.numpy(), out_s.numpy()), "stats forward must give the same out"
    assert np.abs(lse.numpy() - ref_lse).max() < 1e-5
    # P rebuilt from L sums to 1 in every row
    sc = q.astype(np.float64) @ np.swapaxes(k, -1, -2).astype(np.float64) / math.sqrt(d)
    if causal:
        sc = np.where(np.triu(np.ones((s, s), bool), 1), -np.inf, sc)
    assert np.abs(np.exp(sc - lse.numpy()[..., None].astype(np.float64)).sum(-1) - 1).max() < 1e-4
    (out * Tensor(do, device=poisoned_device)).sum().backward()
    for got, ref in zip((qt.grad, kt.grad, vt.grad), ref_grads64(q, k, v, do, causal)):
        close(got.numpy(), ref, rel=1e-3, abs_=1e-4)


def test_flash_s1_closed_form(device, rng):
    q, k, v, do = (rng.standard_normal((2, 3, 1, 40)).astype(np.float32) for _ in range(4))
    qt, kt, vt = (Tensor(x, device=device, requires_grad=True) for x in (q, k, v))
    out = mg.ops.attention_flash_causal(qt, kt, vt)
    np.testing.assert_allclose(out.numpy(), v, rtol=1e-6)
    (out * Tensor(do, device=device)).sum().backward()
    np.testing.assert_allclose(vt.grad.numpy(), do, rtol=1e-5)
    assert np.abs(qt.grad.numpy()).max() < 1e-5 and np.abs(kt.grad.numpy()).max() < 1e-5


TC_CASES = [(1, 1, 16, 16), (17, 17, 64, 64), (64, 200, 32, 48), (130, 77, 100, 72),
            (255, 255, 128, 128), (33, 4100, 64, 64), (1000, 1000, 256, 256)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sq,sk,dk,dv", TC_CASES, ids=lambda v: str(v))
def test_attention_tc(sq, sk, dk, dv, causal, poisoned_device, rng):
    lead = (2, 3) if sq * sk <= 70000 else (1,)
    q = rng.standard_normal(lead + (sq, dk)).astype(np.float16)
    k = rng.standard_normal(lead + (sk, dk)).astype(np.float16)
    v = rng.standard_normal(lead + (sk, dv)).astype(np.float16)
    qt, kt, vt = (Tensor(x, device=poisoned_device, requires_grad=True) for x in (q, k, v))
    op = mg.ops.attention_tc_causal if causal else mg.ops.attention_tc
    out = op(qt, kt, vt)
    assert out.dtype == mg.float32 and out.shape == lead + (sq, dv)
    got = out.numpy()
    ref_cast = reference.attention_tc(q, k, v, causal)       # P rounded to f16
    assert not np.isnan(got).any()
    assert np.abs(got - ref_cast).max() <= 2e-3 * max(1.0, np.abs(ref_cast).max())
    ref64 = ref_attention64(q, k, v, causal)[0]                          # KAIO's rule
    err = np.abs(got - ref64)
    assert ((err < 5e-3) | (err < 2e-2 * np.abs(ref64))).all()
    if sq * sk <= 70000:
        do = rng.standard_normal(out.shape).astype(np.float32)
        (out * Tensor(do, device=poisoned_device)).sum().backward()
        for got_g, ref_g in zip((qt.grad, kt.grad, vt.grad), ref_grads64(q, k, v, do, causal)):
            g = got_g.numpy().astype(np.float64)
            assert np.linalg.norm(g - ref_g) <= 2e-2 * np.linalg.norm(ref_g) + 1e-6


def test_self_attention_step_matches_cpu(rng):
    """One training step of CausalSelfAttention on the GPU (flash kernels) gives the CPU
    gradients (composed ops)."""
    if not mg.cuda_available():
        pytest.skip("needs CUDA")
    x = rng.standard_normal((2, 37, 48)).astype(np.float32)
    grads = {}
    for dev, impl in (("cpu", "naive"), ("cuda", "flash")):
        mg.manual_seed(3)
        attn = mg.nn.CausalSelfAttention(48, 4, impl=impl).to(dev)
        for lin in (attn.c_attn, attn.c_proj):
            lin.compute = "float32"
        xt = Tensor(x, device=dev, requires_grad=True)
        (attn(xt) ** 2).mean().backward()
        grads[dev] = [xt.grad.numpy()] + [p.grad.numpy() for p in attn.parameters()]
    for a, b in zip(grads["cpu"], grads["cuda"]):
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a) + 1e-7


test_self_attention_step_matches_cpu = pytest.mark.cuda(test_self_attention_step_matches_cpu)


def test_bad_input(device):
    f = lambda *s: Tensor.randn(*s, device=device)                      # noqa: E731
    with pytest.raises(ValueError, match=r"attention_flash: q, k, v must have the same shape"):
        mg.ops.attention_flash(f(2, 8, 16), f(2, 9, 16), f(2, 9, 16))
    with pytest.raises(ValueError, match=r"head dim D=300 is larger than 256"):
        mg.ops.attention_flash_causal(f(4, 300), f(4, 300), f(4, 300))
    with pytest.raises(TypeError, match=r"attention_flash: q must be float32, got float16"):
        mg.ops.attention_flash(f(4, 8).half(), f(4, 8), f(4, 8))
    with pytest.raises(ValueError, match=r"attention_tc: q and k need the same Dk"):
        mg.ops.attention_tc(f(4, 8).half(), f(5, 16).half(), f(5, 8).half())
    with pytest.raises(ValueError, match=r"attention_tc_causal: k and v need the same Sk"):
        mg.ops.attention_tc_causal(f(4, 8).half(), f(5, 8).half(), f(6, 8).half())
    with pytest.raises(TypeError, match=r"attention_tc: v must be float16, got float32"):
        mg.ops.attention_tc(f(4, 8).half(), f(5, 8).half(), f(5, 8))
