"""The quantized family end to end: mg.ops.matmul_int8 / matmul_int4 / qkv_project_int8 /
qkv_project_int4 against the NumPy oracle, mg.quant's recipes and packing, mg.nn.QuantLinear,
QuantCausalSelfAttention and GPT.quantize, bad input, and (on the CPU, by emulation) the
host rules of minigrad/backend/cuda/ops_quant.py.

Criteria (../shared/OPS.md): int8 bit-exact against the exact int32 product then the f32
scale; int4 and QKV within rel = |g - w| / max(|w|, 1) < 1e-3 on fresh random inputs.
On CUDA every new buffer is poisoned (NaN / -1) before a kernel writes it. The shape
sweep runs the whole product M x N x K on CUDA and a sample on the CPU (where the op *is*
the reference, and NumPy's int32 matmul is slow).
"""
import functools
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor
from minigrad.backend import reference as ref
from minigrad.quant import pack_int4, unpack_int4

from cuda_stand_ins import FakeBuf, FakeFn     # tests/cuda_stand_ins.py

f16, f32 = np.float16, np.float32
Ms, Ns, Ks = (1, 3, 17, 64, 1000), (1, 7, 130, 4096), (32, 96, 4096)
INT4_KG = [(32, 32), (96, 32), (4096, 32), (4096, 64), (4096, 128)]   # K values each G allows
CPU_WORK = 1 << 24          # CPU cases: M * N * K at most this


def _cases(shapes, cpu_ok):
    """pytest params (device, *shape): every shape on CUDA, those cpu_ok() accepts on CPU."""
    out = []
    for s in shapes:
        sid = "-".join(map(str, s))
        out.append(pytest.param("cuda", *s, marks=pytest.mark.cuda, id=f"cuda-{sid}"))
        if cpu_ok(*s):
            out.append(pytest.param("cpu", *s, id=f"cpu-{sid}"))
    return out


def _small(M, N, K, *_):
    return M * N * K <= CPU_WORK


def _small4(M, N, K, *_):          # int4: also skip the 4096 x 4096 weights on the CPU
    return M * N * K <= CPU_WORK and N * K < 4096 * 4096


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert not np.isnan(got).any(), "NaN in the output (an element was not written?)"
    return float((np.abs(got - want) / np.maximum(np.abs(want), 1.0)).max(initial=0.0))


def int8_exact(a, b, scale):
    """The oracle of matmul_int8, with the int32 sums through float64 BLAS (exact: every
    |sum| < 2^53) so large shapes stay fast; then f32(acc) * f32(scale)."""
    acc = np.matmul(a.astype(np.float64), b.astype(np.float64))
    assert np.abs(acc).max(initial=0) < 2 ** 31
    return acc.astype(np.int32).astype(f32) * f32(scale)


def int4_weight(rng, K, N, G):
    """Random int4 weight: (packed uint32 [N, K/8], scales f16 [K/G, N], W f32 [K, N])."""
    q = rng.integers(-8, 8, (K, N), dtype=np.int8)
    s = rng.uniform(0.002, 0.05, (K // G, N)).astype(f16)
    packed = pack_int4(q)
    return packed, s, ref.dequantize_int4(packed, s, G).astype(f32)


# ================================================================ the ops ==
@pytest.mark.parametrize("device,M,N,K", _cases(
    [(m, n, k) for k in Ks + (33,) for m in Ms for n in Ns], _small))
def test_matmul_int8_bit_exact(poisoned_device, M, N, K, rng):
    dev = poisoned_device
    a = rng.integers(-128, 128, (M, K), dtype=np.int8)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    scale = float(rng.uniform(1e-4, 1e-2))
    want = int8_exact(a, b, scale)
    # b row-major [K, N] (the GPU copies it once into the K-major layout) ...
    out = mg.ops.matmul_int8(Tensor(a, device=dev), Tensor(b, device=dev), scale).numpy()
    assert out.dtype == np.float32 and np.array_equal(out, want)
    # ... and as a transposed view of an [N, K] tensor (read in place)
    bt = Tensor(np.ascontiguousarray(b.T), device=dev)
    out = mg.ops.matmul_int8(Tensor(a, device=dev), bt.T, scale).numpy()
    assert np.array_equal(out, want)


@pytest.mark.parametrize("device,M,N,K,G", _cases(
    [(m, n, k, g) for k, g in INT4_KG for n in Ns for m in Ms], _small4))
def test_matmul_int4(poisoned_device, M, N, K, G, rng):
    dev = poisoned_device
    packed, s, w = int4_weight(rng, K, N, G)
    a = rng.standard_normal((M, K)).astype(f16)
    out = mg.ops.matmul_int4(Tensor(a, device=dev), Tensor(packed, device=dev),
                             Tensor(s, device=dev), group_size=G).numpy()
    assert out.dtype == np.float32
    assert rel_err(out, a.astype(np.float64) @ w.astype(np.float64)) < 1e-3


@pytest.mark.parametrize("device,M,N,K", _cases(
    [(m, n, k) for k in Ks + (33,) for m in Ms for n in Ns], _small))
def test_qkv_project_int8(poisoned_device, M, N, K, rng):
    dev = poisoned_device
    x = rng.standard_normal((M, K)).astype(f16)
    ws = [rng.integers(-127, 128, (K, N), dtype=np.int8) for _ in range(3)]
    sc = [float(rng.uniform(1e-3, 2e-2)) for _ in range(3)]
    want = ref.qkv_project_int8(x, *ws, sc)
    # w_q as a transposed [N, K] view, w_k and w_v row-major: both layouts in one call
    wts = [Tensor(np.ascontiguousarray(ws[0].T), device=dev).T] + \
        [Tensor(w, device=dev) for w in ws[1:]]
    outs = mg.ops.qkv_project_int8(Tensor(x, device=dev), *wts, *sc)
    assert len(outs) == 3
    for o, w in zip(outs, want):
        assert o.dtype == mg.float16 and o.shape == (M, N)
        assert rel_err(o.numpy(), w) < 1e-3


@pytest.mark.parametrize("device,M,N,K,G", _cases(
    [(m, n, k, g) for k, g in ((32, 32), (96, 32), (4096, 128), (4096, 32))
     for n in Ns for m in Ms], _small4))
def test_qkv_project_int4(poisoned_device, M, N, K, G, rng):
    dev = poisoned_device
    x = rng.standard_normal((M, K)).astype(f16)
    ws = [int4_weight(rng, K, N, G) for _ in range(3)]
    outs = mg.ops.qkv_project_int4(Tensor(x, device=dev),
                                   *[Tensor(w[0], device=dev) for w in ws],
                                   *[Tensor(w[1], device=dev) for w in ws], group_size=G)
    x64 = x.astype(np.float64)
    for o, w in zip(outs, ws):
        assert o.dtype == mg.float16 and o.shape == (M, N)
        assert rel_err(o.numpy(), (x64 @ w[2].astype(np.float64)).astype(f16)) < 1e-3


def test_batched_and_strided_operands(poisoned_device, rng):
    """Leading batch dims, non-contiguous activations, weights in several layouts
    (transposed views, padded rows, column steps, offsets that break 16-byte alignment)."""
    dev = poisoned_device
    T = lambda arr: Tensor(arr, device=dev)
    # int8: a [2, 3, 5, K] (K = 40: no 16-byte rows), b in five layouts
    K, N = 40, 70
    a = rng.integers(-128, 128, (2, 3, 5, K), dtype=np.int8)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    want = int8_exact(a.reshape(-1, K), b, 0.01).reshape(2, 3, 5, N)
    bpad = np.zeros((N, 48), np.int8)
    bpad[:, :K] = b.T
    bwide = np.zeros((K, 2 * N + 1), np.int8)
    bwide[:, 1::2] = b
    layouts = {"row-major": T(b), "transposed": T(np.ascontiguousarray(b.T)).T,
               "padded rows": T(bpad)[:, :K].T, "column step 2, offset 1": T(bwide)[:, 1::2],
               "transposed, offset 3": T(np.concatenate([np.zeros((N, 3), np.int8), b.T],
                                                        1))[:, 3:].T}
    for name, bb in layouts.items():
        out = mg.ops.matmul_int8(T(a), bb, 0.01).numpy()
        assert out.shape == (2, 3, 5, N) and np.array_equal(out, want), name
    # a non-contiguous: a [K, M] transposed, and rows with a step
    at = np.ascontiguousarray(a.reshape(-1, K).T)
    assert np.array_equal(mg.ops.matmul_int8(T(at).T, T(b), 0.01).numpy(),
                          want.reshape(-1, N))
    a2 = np.repeat(a.reshape(-1, K), 2, axis=0)
    assert np.array_equal(mg.ops.matmul_int8(T(a2)[::2], T(b), 0.01).numpy(),
                          want.reshape(-1, N))

    # int4: x [2, 3, 5, K] batched and a sliced (row stride K + 40) view
    K, N, G = 256, 130, 64
    packed, s, w = int4_weight(rng, K, N, G)
    x = rng.standard_normal((2, 3, 5, K)).astype(f16)
    out = mg.ops.matmul_int4(T(x), T(packed), T(s), G).numpy()
    assert out.shape == (2, 3, 5, N)
    assert rel_err(out, x.astype(np.float64) @ w.astype(np.float64)) < 1e-3
    xw = rng.standard_normal((70, K + 40)).astype(f16)
    out = mg.ops.matmul_int4(T(xw)[:, 8:K + 8], T(packed), T(s), G).numpy()
    assert rel_err(out, xw[:, 8:K + 8].astype(np.float64) @ w) < 1e-3
    # fused QKV on batched x (M = 30: gemv; M = 90: gemm), x with a column offset
    ws = [int4_weight(rng, K, N, G) for _ in range(3)]
    for lead in ((2, 3, 5), (2, 45)):
        x = rng.standard_normal(lead + (K + 8,)).astype(f16)
        xs = T(x)[..., 8:]
        outs = mg.ops.qkv_project_int4(xs, *[T(v[0]) for v in ws], *[T(v[1]) for v in ws],
                                       group_size=G)
        for o, v in zip(outs, ws):
            assert o.shape == lead + (N,)
            want4 = (x[..., 8:].astype(np.float64) @ v[2].astype(np.float64)).astype(f16)
            assert rel_err(o.numpy(), want4) < 1e-3
        x8 = rng.standard_normal(lead + (K,)).astype(f16)
        w8 = [rng.integers(-127, 128, (K, N), dtype=np.int8) for _ in range(3)]
        sc = [0.01, 0.02, 0.005]
        want8 = ref.qkv_project_int8(x8.reshape(-1, K), *w8, sc)
        w8t = [T(np.ascontiguousarray(w8[0].T)).T, T(w8[1]), T(w8[2])[:, :]]
        outs = mg.ops.qkv_project_int8(T(x8), *w8t, *sc)
        for o, w_ in zip(outs, want8):
            assert rel_err(o.numpy().reshape(-1, N), w_) < 1e-3


# ================================================== quantization recipes ==
def test_quantize_dequantize_error_bounds(rng):
    """int8: q = clip(round(w/s), ±127), s = max|w|/127, so |w - q·s| <= s/2 (w/s is
    computed in f32: a relative error of at most 2^-24 on |w/s| <= 127 widens the bound by
    127·2^-24·s, i.e. s/2 · (1 + 2^-16) covers it).
    int4: s = f16(max|w|/7) per (group, column), q = clip(round(w/s), -8, 7); |w/s| <= 7
    up to the f16 rounding of s (|w/s| < 7.004), so the clip never cuts and
    |w - q·s| <= s/2 · (1 + 2^-16) as well. The weight the kernels use is
    ŵ = f16(q·s): rounding a normal f16 value changes it by at most 2^-11 of itself
    (half an ulp; 11 significant bits), so |w - ŵ| <= s/2 · (1 + 2^-16) + 2^-11·|q·s|
    <= s · (1/2 + 2^-8) since |q| <= 8 (plus 2^-25 where q·s is an f16 subnormal)."""
    K, N, G = 256, 40, 32
    w = rng.standard_normal((K, N)).astype(f32) * 0.05
    w *= np.exp(rng.uniform(-4, 2, (K // G, 1, N))).astype(f32).repeat(G, 0).reshape(K, N)
    q8, s8 = mg.quant.quantize_int8(w)
    q8 = q8.numpy().astype(np.float64)
    assert np.abs(q8).max() == 127
    assert np.abs(w - q8 * s8).max() <= s8 / 2 * (1 + 2 ** -16)

    packed, scales = mg.quant.quantize_int4(w, group_size=G)
    q4 = unpack_int4(packed.numpy()).astype(np.float64)              # [K, N]
    s = np.repeat(scales.numpy().astype(np.float64), G, axis=0)      # [K, N]
    assert q4.min() >= -8 and q4.max() <= 7
    err = np.abs(w - q4 * s)
    assert (err <= s / 2 * (1 + 2 ** -16)).all(), (err / s).max()
    w_hat = mg.quant.dequantize_int4(packed, scales, G).numpy().astype(np.float64)
    assert np.array_equal(w_hat, (q4 * s).astype(f16).astype(np.float64))
    bound = s / 2 * (1 + 2 ** -16) + 2 ** -11 * np.abs(q4 * s) + 2 ** -25
    assert (np.abs(w - w_hat) <= bound).all()
    assert (np.abs(w - w_hat) <= s * (0.5 + 2 ** -8) + 2 ** -25).all()
    # each group's largest |w| lands on ±7 (the scale is max|w|/7)
    assert (np.abs(q4).reshape(K // G, G, N).max(axis=1) == 7).all()


def test_dequantize_int4_checks_group_size(rng):
    """A group size the packing could not have used is refused by name, not by a NumPy
    broadcasting error (K = 128 with group_size=100 gives one group, like 128)."""
    packed, scales = mg.quant.quantize_int4(rng.standard_normal((128, 8)).astype(f32))
    for g in (100, 96, 256):
        with pytest.raises(ValueError, match="dequantize_int4: .*group_size"):
            mg.quant.dequantize_int4(packed, scales, group_size=g)
    assert mg.quant.dequantize_int4(packed, scales).shape == (128, 8)


def test_int4_packing_hand_computed(device):
    """Two output columns, K = 16: the words written out by hand (nibble k%8 of word
    k//8 holds q[k] in two's complement, nibble 0 in the lowest bits)."""
    col0 = [1, -1, 2, -2, 3, -3, 7, -8] + [0, 1, 2, 3, 4, 5, 6, 7]
    col1 = [-1] * 8 + [-8, 0, 0, 0, 0, 0, 0, 7]
    q = np.array([col0, col1], np.int8).T                            # [K=16, N=2]
    want = np.array([[0x87D3E2F1, 0x76543210],                      # column 0
                     [0xFFFFFFFF, 0x70000008]], np.uint32)           # column 1
    assert np.array_equal(pack_int4(q), want)
    assert np.array_equal(unpack_int4(want), q)
    # quantize_int4 of w = q·s (each group's max |q| is 7, so its scale is exactly s)
    K, G = 32, 32
    qg = np.tile(np.array([7, -7, 3, -7, 0, 5, -2, 1], np.int8), 4)[:, None] \
        * np.array([[1, -1]], np.int8)                               # [32, 2]
    s = np.array([[0.25, 0.0625]], f16)
    packed, scales = mg.quant.quantize_int4(qg.astype(f32) * s.astype(f32), G, device=device)
    assert packed.dtype == mg.uint32 and scales.dtype == mg.float16
    assert np.array_equal(packed.numpy(), pack_int4(qg)) and np.array_equal(scales.numpy(), s)
    # by hand: column 0 is 7,-7,3,-7,0,5,-2,1 -> nibbles 7,9,3,9,0,5,E,1 (nibble 0 lowest),
    # column 1 is its negation -7,7,-3,7,0,-5,2,-1 -> 9,7,D,7,0,B,2,F
    assert packed.numpy().tolist() == [[0x1E509397] * 4, [0xF2B07D79] * 4]
    # the device's dequantize (the backward's weight) reproduces q·s exactly
    wd = mg.ops.dequantize_int4_tensor(packed, scales, G)
    assert wd.dtype == mg.float16 and wd.shape == (K, 2)
    assert np.array_equal(wd.numpy(), (qg * s).astype(f16))


def test_dequantize_int4_matches_reference(poisoned_device, rng):
    dev = poisoned_device
    for K, N, G in ((64, 3, 32), (256, 130, 64), (384, 17, 128)):
        packed, s, _ = int4_weight(rng, K, N, G)
        got = mg.ops.dequantize_int4_tensor(Tensor(packed, device=dev), Tensor(s, device=dev),
                                            G).numpy()
        assert np.array_equal(got, ref.dequantize_int4(packed, s, G))
    # strided operands: a packed weight sliced from a wider one
    packed, s, _ = int4_weight(rng, 128, 40, 32)
    wide = np.concatenate([packed, packed], axis=1)
    got = mg.ops.dequantize_int4_tensor(Tensor(wide, device=dev)[:, 16:],
                                        Tensor(s, device=dev), 32).numpy()
    assert np.array_equal(got, ref.dequantize_int4(packed, s, 32))


def test_activation_quantization_recipe(device, rng):
    """x_q = clip(rint(x / s), ±127), s = max|x|/127, ties to even (np.round's rule)."""
    from minigrad.nn.quant import quantize_activations_int8
    x = np.array([127.0, 2.5, -2.5, 3.5, 0.5, -0.5, 1.5, -126.5, 0.49999997], f32)
    q, s = quantize_activations_int8(Tensor(x, device=device))
    assert s.item() == 1.0
    assert q.dtype == mg.int8
    assert q.numpy().tolist() == [127, 2, -2, 4, 0, 0, 2, -126, 0]
    x = (rng.standard_normal((4, 33, 50)) * 3).astype(f32)
    q, s = quantize_activations_int8(Tensor(x, device=device))
    s_np = np.abs(x).max() / f32(127)
    assert s.item() == s_np
    assert np.array_equal(q.numpy(), np.clip(np.round(x / s_np), -127, 127).astype(np.int8))
    q, s = quantize_activations_int8(Tensor(np.zeros((2, 3), f32), device=device))
    assert not q.numpy().any() and s.item() > 0


# ========================================================== nn layers ==
def _linear(rng, k, n, device):
    lin = mg.nn.Linear(k, n, compute="float32").to(device)
    lin.weight.assign(Tensor(rng.standard_normal((n, k)).astype(f32) * 0.1, device=device))
    lin.bias.assign(Tensor(rng.standard_normal(n).astype(f32) * 0.1, device=device))
    return lin


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_linear_forward(device, bits, rng):
    k, n = (96, 70) if bits == 8 else (128, 70)
    lin = _linear(rng, k, n, device)
    ql = mg.nn.QuantLinear.from_linear(lin, bits=bits, group_size=64)
    assert ql.bits == bits and all(b.device == device for b in ql.buffers())
    x = rng.standard_normal((2, 5, k)).astype(f32)
    y = ql(Tensor(x, device=device)).numpy()
    assert y.shape == (2, 5, n) and y.dtype == np.float32
    b = lin.bias.numpy()
    if bits == 8:                        # W8A8, the recipe step by step, in NumPy
        wq = ql.weight_q.numpy()[:, :k].astype(np.int64)
        sw = np.float32(ql.weight_scale.numpy()[0])
        sx = np.abs(x).max() / f32(127)
        xq = np.clip(np.round(x / sx), -127, 127).astype(np.int64)
        want = (xq @ wq.T).astype(f32) * (sx * sw) + b
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    else:                                # W4A16: f16 x times the f16-rounded weight
        wd = ql.dequantized_weight().numpy()
        want = x.astype(f16).astype(np.float64) @ wd.T.astype(np.float64) + b
        assert rel_err(y, want) < 1e-5
    # close to the float layer (quantization error only)
    yf = lin(Tensor(x, device=device)).numpy()
    assert np.abs(y - yf).max() < (0.05 if bits == 8 else 0.15) * np.abs(yf).max()


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_linear_gradients(device, bits, rng):
    """dL/dx through QuantLinear equals dL/dx through a float Linear holding the
    dequantized weight (int8: straight-through for the rounding of x; int4: the op's
    backward, which rounds dL/dy to f16); weights and scales get no gradient."""
    k, n = 64, 48
    ql = mg.nn.QuantLinear.from_linear(_linear(rng, k, n, device), bits=bits, group_size=32)
    ref_lin = mg.nn.Linear(k, n, compute="float32").to(device)
    ref_lin.weight.assign(ql.dequantized_weight())
    ref_lin.bias.assign(ql.bias.detach())
    x = rng.standard_normal((3, 4, k)).astype(f32)
    r = rng.standard_normal((3, 4, n)).astype(f32)
    grads = []
    for layer in (ql, ref_lin):
        xt = Tensor(x, device=device, requires_grad=True)
        (layer(xt) * Tensor(r, device=device)).sum().backward()
        grads.append(xt.grad.numpy())
    tol = 1e-5 if bits == 8 else 2e-3
    assert rel_err(grads[0], grads[1]) < tol
    bufs = ql.buffers()
    assert len(bufs) == 2 and all(b.grad is None and not b.requires_grad for b in bufs)
    assert ql.parameters() == [ql.bias] and ql.bias.grad is not None
    np.testing.assert_allclose(ql.bias.grad.numpy(), r.sum((0, 1)), rtol=1e-5, atol=1e-5)
    assert set(ql.state_dict()) == ({"weight_q", "weight_scale", "bias"} if bits == 8 else
                                    {"weight_packed", "weight_scales", "bias"})


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_attention_matches_float_with_dequantized_weights(device, bits, rng):
    C, H = 64, 4
    mg.manual_seed(1)
    attn = mg.nn.CausalSelfAttention(C, H).to(device)
    attn.c_attn.compute = attn.c_proj.compute = "float32"
    attn.c_attn.weight.assign(Tensor(rng.standard_normal((3 * C, C)).astype(f32) * 0.1,
                                     device=device))
    attn.c_attn.bias.assign(Tensor(rng.standard_normal(3 * C).astype(f32) * 0.1,
                                   device=device))
    qa = mg.nn.QuantCausalSelfAttention.from_attention(attn, bits=bits, group_size=32)
    # the float reference with the weights the quantized layer really multiplies by
    if bits == 8:
        parts = [qa.w_q, qa.w_k, qa.w_v]
        wd = [p.numpy()[:, :C].astype(f32) * s for p, s in zip(parts, qa.qkv_scale.numpy())]
    else:
        wd = [mg.quant.dequantize_int4(w, s, 32).numpy().T for w, s in
              ((qa.wq_packed, qa.sq), (qa.wk_packed, qa.sk), (qa.wv_packed, qa.sv))]
    fa = mg.nn.CausalSelfAttention(C, H).to(device)
    fa.c_attn.compute = fa.c_proj.compute = "float32"
    fa.c_attn.weight.assign(Tensor(np.concatenate(wd, 0), device=device))
    fa.c_attn.bias.assign(attn.c_attn.bias.detach())
    fa.c_proj.weight.assign(qa.c_proj.dequantized_weight())
    fa.c_proj.bias.assign(attn.c_proj.bias.detach())
    x = rng.standard_normal((2, 9, C)).astype(f32)
    outs, grads = [], []
    for layer in (qa, fa):
        xt = Tensor(x, device=device, requires_grad=True)
        y = layer(xt)
        (y * y).sum().backward()
        outs.append(y.numpy())
        grads.append(xt.grad.numpy())
    # differences: x and q/k/v rounded to f16 (and, int8, the W8A8 c_proj's rounding of x)
    tol = 2e-2 if bits == 8 else 5e-3
    assert rel_err(outs[0], outs[1]) < tol
    assert np.abs(grads[0] - grads[1]).max() < 5 * tol * np.abs(grads[1]).max()
    assert all(b.grad is None for b in qa.buffers())


def test_quantize_keeps_the_float_model_and_ties(device):
    mg.manual_seed(0)
    model = mg.nn.GPT(50, 16, n_layer=2, n_head=2, n_embd=64).to(device)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    qm = model.quantize(bits=4, group_size=64)
    assert isinstance(qm.transformer.h[0].attn, mg.nn.QuantCausalSelfAttention)
    assert isinstance(qm.transformer.h[1].mlp.c_fc, mg.nn.QuantLinear)
    assert isinstance(qm.transformer.h[1].mlp.c_proj, mg.nn.QuantLinear)
    assert isinstance(qm.lm_head, mg.nn.Linear)                        # tied: kept float
    assert qm.lm_head.weight is qm.transformer.wte.weight
    assert qm.lm_head.weight is not model.lm_head.weight
    assert isinstance(model.transformer.h[0].attn, mg.nn.CausalSelfAttention)
    for k, v in model.state_dict().items():
        assert np.array_equal(v.numpy(), before[k])
    # parameters: embeddings, LayerNorms, biases; the quantized tensors are buffers
    assert all(p.dtype == mg.float32 for p in qm.parameters())
    assert {b.dtype for b in qm.buffers()} == {mg.uint32, mg.float16}
    # .to(dtype) casts parameters only; buffers keep their exact formats
    qm.to(mg.float16)
    assert all(p.dtype == mg.float16 for p in qm.parameters())
    assert {b.dtype for b in qm.buffers()} == {mg.uint32, mg.float16}
    with pytest.raises(ValueError, match=r"quantize: transformer\.h\.0\.attn: .*group_size"):
        model.quantize(bits=4, group_size=128)                         # n_embd = 64
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        model.quantize(bits=2)


# ======================================================= the trained GPT ==
GPT_CFG = dict(n_layer=2, n_head=4, n_embd=64)
BLOCK, BATCH, STEPS = 32, 32, 300


def _gpt_data():
    from test_train import TEXT
    chars = sorted(set(TEXT))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in TEXT], dtype=np.int64)
    split = int(len(data) * 0.9)
    return len(chars), data[:split], data[split:]


def _windows(d, step):
    st = np.arange(0, len(d) - BLOCK - 1, step)
    return (np.stack([d[i:i + BLOCK] for i in st]), np.stack([d[i + 1:i + BLOCK + 1]
                                                              for i in st]))


def _train_and_save(path):
    """Run in a fresh interpreter with one BLAS thread (see test_train.py): train the tiny
    GPT on the first 90% of the text and save its state dict."""
    vocab, train, _ = _gpt_data()
    mg.manual_seed(0)
    rng = np.random.default_rng(0)
    model = mg.nn.GPT(vocab, BLOCK, **GPT_CFG)
    opt = mg.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.0)
    for _ in range(STEPS):
        ix = rng.integers(0, len(train) - BLOCK - 1, BATCH)
        x = Tensor(np.stack([train[i:i + BLOCK] for i in ix]))
        y = Tensor(np.stack([train[i + 1:i + BLOCK + 1] for i in ix]))
        model(x, y)[1].backward()
        opt.step()
        opt.zero_grad()
    mg.save(model.state_dict(), path)


@pytest.fixture(scope="session")
def trained_gpt(tmp_path_factory):
    """A function device -> the trained tiny GPT (eval mode) on that device. Trained once
    per test process, in a subprocess with one BLAS thread (as test_train.py does)."""
    from test_train import _env
    root, env = _env()
    path = tmp_path_factory.mktemp("quant_gpt") / "gpt.safetensors"
    env["PYTHONPATH"] = os.pathsep.join([str(root / "tests"), env["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-c", "import sys, test_quant; "
                           "test_quant._train_and_save(sys.argv[1])", str(path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vocab = _gpt_data()[0]

    def load(device):
        model = mg.nn.GPT(vocab, BLOCK, **GPT_CFG)
        model.load_state_dict(mg.load(path))
        for m in model.modules():          # float32 products on CUDA too (not bf16), so
            if isinstance(m, mg.nn.Linear):    # the float layers add no error of their own
                m.compute = "float32"
        return model.to(device).eval()
    return load


@pytest.mark.slow
def test_trained_gpt_quantized_keeps_validation_loss(device, trained_gpt):
    """A tiny GPT trained for 300 steps on CPU (the text of test_train.py, 90/10 split):
    the validation loss of its int8 and int4 (group 64) forms stays within 0.05 and 0.15
    of the float32 model's (evaluated on the CPU in f32)."""
    vocab, train, val = _gpt_data()
    vx, vy = (Tensor(a, device="cpu") for a in _windows(val, BLOCK // 4))
    with mg.no_grad():
        f32_loss = trained_gpt("cpu")(vx, vy)[1].item()
        model = trained_gpt(device)
        vxd, vyd = vx.to(device), vy.to(device)
        losses = {}
        for bits, group, bound in ((8, 128, 0.05), (4, 64, 0.15)):
            qm = model.quantize(bits=bits, group_size=group)
            loss = qm(vxd, vyd)[1].item()
            losses[bits] = loss
            assert abs(loss - f32_loss) <= bound, (bits, loss, f32_loss)
            # the quantized model really is another function (not the float one)
            lq = qm(vxd[:2])[0].numpy()
            lf = model(vxd[:2])[0].numpy()
            assert np.abs(lq - lf).max() > 1e-4
    print(f"\nval loss f32 {f32_loss:.4f}  int8 {losses[8]:.4f} ({losses[8] - f32_loss:+.4f})"
          f"  int4 {losses[4]:.4f} ({losses[4] - f32_loss:+.4f}) on {device}")
    assert f32_loss < math.log(vocab) - 0.5         # it did learn something


@pytest.mark.slow
def test_quantized_gpt_state_dict_round_trip(device, tmp_path, trained_gpt):
    """Buffers are saved and loaded: a quantized model loads into another (the int8 QKV
    scales, which the op takes as host floats, are re-read after the load)."""
    vocab, _, val = _gpt_data()
    vx, vy = (Tensor(a, device=device) for a in _windows(val, BLOCK))
    for bits in (8, 4):
        qa = trained_gpt(device).quantize(bits=bits, group_size=64)
        mg.manual_seed(5)
        qb = mg.nn.GPT(vocab, BLOCK, **GPT_CFG).to(device).eval().quantize(bits=bits,
                                                                          group_size=64)
        # the precision of the float layers (lm_head) is a setting, not state: match qa's
        # (trained_gpt sets float32; the default on CUDA would be bf16 and differ by ~1e-4)
        for m in qb.modules():
            if isinstance(m, mg.nn.Linear):
                m.compute = "float32"
        with mg.no_grad():
            lb0 = qb(vx, vy)[1].item()
            mg.save(qa.state_dict(), tmp_path / f"q{bits}.safetensors")
            qb.load_state_dict(mg.load(tmp_path / f"q{bits}.safetensors"))
            la, lb = qa(vx, vy)[1].item(), qb(vx, vy)[1].item()
        assert la == lb and lb != lb0


# ============================================================ bad input ==
def test_bad_input_errors(device):
    T = lambda arr: Tensor(np.asarray(arr), device=device)
    x16 = T(np.zeros((4, 64), f16))
    packed = T(np.zeros((8, 8), np.uint32))           # N = 8, K = 64
    sc = T(np.zeros((2, 8), f16))                      # G = 32
    # int4: K not a multiple of the group size
    with pytest.raises(ValueError, match=r"matmul_int4: K=48 must be a multiple of "
                                         r"group_size=32"):
        mg.ops.matmul_int4(T(np.zeros((4, 48), f16)), T(np.zeros((8, 6), np.uint32)),
                           T(np.zeros((1, 8), f16)), group_size=32)
    # unsupported group size
    with pytest.raises(ValueError, match=r"matmul_int4: group_size must be one of "
                                         r"\(32, 64, 128\), got 16"):
        mg.ops.matmul_int4(x16, packed, T(np.zeros((4, 8), f16)), group_size=16)
    with pytest.raises(ValueError, match="quantize_int4: group_size must be one of"):
        mg.quant.quantize_int4(np.zeros((64, 8), f32), group_size=48)
    # scales of the wrong shape, and of the wrong dtype
    with pytest.raises(ValueError, match=r"matmul_int4: scales of b_packed must be float16 "
                                         r"\[K//group_size, N\] = \[2, 8\] \(K = 64, the activations' "
                                         r"last dim\), got \(8, 2\)"):
        mg.ops.matmul_int4(x16, packed, T(np.zeros((8, 2), f16)), group_size=32)
    with pytest.raises(TypeError, match="matmul_int4: scales of b_packed must be float16, "
                                        "got float32"):
        mg.ops.matmul_int4(x16, packed, T(np.zeros((2, 8), f32)), group_size=32)
    # packed weight of the wrong shape (K//8 = 8 words per row needed) and dtype
    with pytest.raises(ValueError, match=r"matmul_int4: b_packed must be uint32 \[N, K//8\] "
                                         r"= \[8, 8\] \(K = 64, the activations' last dim\), "
                                         r"got \(8, 4\)"):
        mg.ops.matmul_int4(x16, T(np.zeros((8, 4), np.uint32)), sc, group_size=32)
    with pytest.raises(TypeError, match="matmul_int4: b_packed must be uint32, got int32"):
        mg.ops.matmul_int4(x16, T(np.zeros((8, 8), np.int32)), sc, group_size=32)
    with pytest.raises(TypeError, match="matmul_int4: a must be float16, got float32"):
        mg.ops.matmul_int4(T(np.zeros((4, 64), f32)), packed, sc, group_size=32)
    # the fused ops: N differs across the three weights
    with pytest.raises(ValueError, match=r"qkv_project_int4: wq_packed, wk_packed, wv_packed "
                                         r"need the same N, got 8, 7, 8"):
        mg.ops.qkv_project_int4(x16, packed, T(np.zeros((7, 8), np.uint32)), packed,
                                sc, T(np.zeros((2, 7), f16)), sc, group_size=32)
    w8 = T(np.zeros((64, 8), np.int8))
    with pytest.raises(ValueError, match=r"qkv_project_int8: w_q, w_k, w_v need the same N, "
                                         r"got 8, 8, 9"):
        mg.ops.qkv_project_int8(x16, w8, w8, T(np.zeros((64, 9), np.int8)), 1.0, 1.0, 1.0)
    with pytest.raises(TypeError, match="qkv_project_int4: scales of wv_packed must be "
                                        "float16, got float32"):
        mg.ops.qkv_project_int4(x16, packed, packed, packed, sc, sc,
                                T(np.zeros((2, 8), f32)), group_size=32)
    with pytest.raises(ValueError, match=r"qkv_project_int8: w_k must be int8 \[K, N\] with "
                                         r"K=64, got \(32, 8\)"):
        mg.ops.qkv_project_int8(x16, w8, T(np.zeros((32, 8), np.int8)), w8, 1.0, 1.0, 1.0)
    with pytest.raises(TypeError, match="qkv_project_int8: scale_v must be a finite real "
                                        "number"):
        mg.ops.qkv_project_int8(x16, w8, w8, w8, 1.0, 1.0, float("nan"))
    # int8 matmul
    a8 = T(np.zeros((4, 64), np.int8))
    with pytest.raises(ValueError, match=r"matmul_int8: inner dimensions differ"):
        mg.ops.matmul_int8(a8, T(np.zeros((32, 8), np.int8)), 1.0)
    with pytest.raises(TypeError, match="matmul_int8: b must be int8, got float32"):
        mg.ops.matmul_int8(a8, T(np.zeros((64, 8), f32)), 1.0)
    with pytest.raises(TypeError, match="matmul_int8: scale must be a finite real number"):
        mg.ops.matmul_int8(a8, w8, T(np.ones(1, f32)))
    # the layers
    lin = mg.nn.Linear(64, 8).to(device)
    with pytest.raises(ValueError, match=r"QuantLinear.from_linear: bits must be 8 or 4"):
        mg.nn.QuantLinear.from_linear(lin, bits=2)
    with pytest.raises(ValueError, match=r"QuantLinear.from_linear: in_features=64 is not a "
                                         r"multiple of group_size=128 .* \[32, 64\]"):
        mg.nn.QuantLinear.from_linear(lin, bits=4, group_size=128)
    with pytest.raises(ValueError, match="QuantLinear: input of shape"):
        mg.nn.QuantLinear.from_linear(lin, bits=8)(T(np.zeros((2, 63), f32)))


# ======================================== CUDA host rules, emulated on CPU ==
# ops_quant.py decides kernels, layouts, leading dims, grids and shared memory. Here it
# runs against a stand-in backend whose device memory is a NumPy byte arena and whose
# "launches" check the call against the kernel headers' contracts (argument formats,
# alignment and leading-dimension rules, grid and block, shared-memory attribute, every
# byte read or written inside an allocation) and then compute the kernel's result with the
# NumPy oracle from the pointers and leading dimensions it was given.

class _FakeGPU:
    """Backend (the methods ops_quant uses) + runtime stand-in. It refuses TMA tensor maps,
    so matmul_int8 on sm_90 takes matmul_int8_wgmma here (its TMA kernel runs in the CUDA
    tests on an sm_90 GPU)."""
    BASE = 1 << 20
    multiprocessors = 132

    def tensor_map(self, *args):
        return None

    def __init__(self, arch):
        self.arch, self.kernels, self.launches = arch, {}, []
        self.mem = np.zeros(64 << 20, np.uint8)
        self.allocs, self.top = [], 0

    # -- memory
    def empty(self, shape, dtype):
        nbytes = math.prod(shape) * dtype.itemsize
        start = self.top
        self.top = -(-(start + max(nbytes, 1)) // 256) * 256
        assert self.top <= self.mem.size, "arena full"
        self.mem[start:start + nbytes] = 0xFF                       # poison
        self.allocs.append((self.BASE + start, self.BASE + start + nbytes))
        return FakeBuf(self.BASE + start, shape, dtype)

    def check(self, lo, hi):
        assert any(a <= lo and hi <= b for a, b in self.allocs), \
            f"bytes [{lo:#x}, {hi:#x}) are outside every allocation"

    def arr(self, ptr, np_dtype, shape, strides):
        """The device memory at ptr as an array (element strides), bounds-checked."""
        it = np.dtype(np_dtype).itemsize
        lo = hi = ptr
        for d, s in zip(shape, strides):
            if d:
                lo, hi = (lo + (d - 1) * s * it, hi) if s < 0 else (lo, hi + (d - 1) * s * it)
        if math.prod(shape):
            self.check(lo, hi + it)
        return np.ndarray(shape, np_dtype, buffer=self.mem.data, offset=ptr - self.BASE,
                          strides=tuple(s * it for s in strides))

    def buf_arr(self, b):
        return self.arr(b.ptr, b.dtype.np, b.shape, b.strides)

    def upload(self, a, dtype=None):
        a = np.asarray(a)
        from minigrad.dtype import to_dtype
        b = self.empty(a.shape, dtype or to_dtype(a.dtype))
        self.buf_arr(b)[...] = a
        return b

    def _copy_into(self, dst, src):
        self.buf_arr(dst)[...] = self.buf_arr(src)
        return dst

    def _dense(self, x):
        return x if x.contig else self._copy_into(self.empty(x.shape, x.dtype), x)

    def reshape(self, shape, x):
        from minigrad.backend.cuda.views import reshape_strides
        if x.contig:
            return x.view(shape, None)
        st = reshape_strides(x.shape, x.strides, shape)
        return self._dense(x).view(shape, None) if st is None else x.view(shape, st)

    def _ew(self, expr, out, ins, scalars):
        from minigrad.backend.cuda.ops_quant import DEQUANT_INT4_EXPR
        assert expr == DEQUANT_INT4_EXPR and len(ins) == 2 and scalars[0][0] == "long long"
        a0 = self.buf_arr(ins[0]).astype(np.int64)
        a1 = self.buf_arr(ins[1]).astype(f32)
        i = np.arange(out.size).reshape(out.shape)
        val = ((((a0 >> (4 * ((i // scalars[0][1]) & 7))) & 15) ^ 8) - 8).astype(f32) * a1
        self.buf_arr(out)[...] = val.astype(f16)
        return out

    # -- runtime
    def function(self, file, entry, fmt):
        return FakeFn(file, entry, fmt)

    def set_max_dynamic_shared(self, fn, nbytes):
        fn.max_smem = nbytes

    def memset(self, ptr, byte, nbytes):
        self.check(ptr, ptr + nbytes)
        self.mem[ptr - self.BASE:ptr - self.BASE + nbytes] = byte

    def launch(self, fn, grid, block, args, smem=0):
        e = fn.entry
        assert len(args) == len(fn.fmt), (e, args)
        struct.pack("<" + fn.fmt.replace("P", "Q"), *args)          # types and ranges
        assert all(isinstance(a, int) and a > 0 for a, c in zip(args, fn.fmt) if c == "P")
        assert all(isinstance(a, float) for a, c in zip(args, fn.fmt) if c == "f")
        assert smem <= fn.max_smem and grid[1] <= 65535 and grid[2] <= 65535, (e, smem)
        self.launches.append(e)
        wgmma = "wgmma" in e
        if wgmma:
            assert self.arch == "sm_90", e
        cd = lambda a, b: -(-a // b)
        if e == "matmul_int8_transpose":
            B, Bt, ld_in, ld_out, K, N = args
            assert grid == (cd(N, 64), cd(ld_out, 64), 1) and block == (256, 1, 1)
            out = np.zeros((N, ld_out), np.int8)
            out[:, :K] = self.arr(B, np.int8, (K, N), (ld_in, 1)).T
            self.arr(Bt, np.int8, (N, ld_out), (ld_out, 1))[...] = out
        elif e.startswith("matmul_int8"):
            A, Bt, C, lda, ldb, ldc, M, N, K, scale = args
            assert smem == (197632 if wgmma else 81920)
            if not e.endswith("_s"):
                assert lda % 16 == 0 and ldb % 16 == 0 and A % 16 == 0 and Bt % 16 == 0
            bn, nt = (256, 256) if wgmma else (128, 128)
            assert grid == (cd(M, 128) * cd(N, bn), 1, 1) and block == (nt, 1, 1)
            a = self.arr(A, np.int8, (M, K), (lda, 1))
            b = self.arr(Bt, np.int8, (N, K), (ldb, 1))
            self.arr(C, f32, (M, N), (ldc, 1))[...] = ref.matmul_int8(a, b.T, scale)
        elif e.startswith("matmul_int4"):
            A, W, S, C, lda, ldc, M, N, K, gs = args
            G = 1 << gs
            assert G in (32, 64, 128) and K % G == 0
            assert lda % 8 == 0 and A % 16 == 0 and W % 16 == 0
            if M == 1 and K <= N:                     # one token: rows read like a copy
                assert e == "matmul_int4_gemv1" and smem == 0
                assert grid == (cd(N, 16), 1, 1) and block == (256, 1, 1)
            elif "gemv" in e:
                r, t = (1 if K >= N else 2), (1 if M <= 8 else 2)
                assert M <= 64 and e == f"matmul_int4_gemv_r{r}_t{t}" and smem == 0
                assert grid == (cd(N, 16 * r), cd(M, 8 * t), 1) and block == (256, 1, 1)
            else:
                assert M > 64 and (wgmma or self.arch != "sm_90")
                bn, nt = (256, 256) if wgmma else (128, 128)
                assert smem == (189440 if wgmma else 69632)
                assert grid == (cd(M, 128) * cd(N, bn), 1, 1) and block == (nt, 1, 1)
            a = self.arr(A, f16, (M, K), (lda, 1))
            w = self.arr(W, np.uint32, (N, K // 8), (K // 8, 1))
            s = self.arr(S, f16, (K // G, N), (N, 1))
            self.arr(C, f32, (M, N), (ldc, 1))[...] = ref.matmul_int4(a, w, s, G)
        elif e.startswith("qkv_project"):
            int8 = "int8" in e
            if int8:
                x, *ptrs = args[:7]
                ldx, ldw, ldo, M, N, K = args[7:13]
                scales = args[13:]
                W, O = ptrs[:3], ptrs[3:]
                assert ldw % 16 == 0 and all(p % 16 == 0 for p in W)
                vec = e.endswith("_v") or wgmma
                ws = [self.arr(p, np.int8, (N, K), (ldw, 1)) for p in W]
                for p in W:                      # whole 16-byte chunks of every row are read
                    self.check(p, p + (N - 1) * ldw + -(-K // 16) * 16)
            else:
                x, *ptrs = args[:10]
                ldx, ldo, M, N, K, gs = args[10:]
                G = 1 << gs
                W, S, O = ptrs[:3], ptrs[3:6], ptrs[6:]
                assert all(p % 16 == 0 for p in W)
                vec = True
                ws = [self.arr(p, np.uint32, (N, K // 8), (K // 8, 1)) for p in W]
                ss = [self.arr(p, f16, (K // G, N), (N, 1)) for p in S]
            if vec:
                assert ldx % 8 == 0 and x % 16 == 0, e
            if "gemv" in e:
                t = 1 if M <= 8 else 2
                assert M <= 64 and f"_t{t}" in e and smem == 0
                assert grid == (cd(N, 16), cd(M, 8 * t), 1) and block == (256, 1, 1)
            else:
                assert M > 64 and (wgmma or self.arch != "sm_90" or (int8 and not vec))
                bn, nt = (256, 256) if wgmma else (128, 128)
                want_smem = {(True, True): 230400, (True, False): 86016,
                             (False, True): 189440, (False, False): 69632}[(int8, wgmma)]
                assert smem == want_smem
                assert grid == (cd(M, 128) * cd(N, bn), 3, 1) and block == (nt, 1, 1)
            xa = self.arr(x, f16, (M, K), (ldx, 1))
            outs = ref.qkv_project_int8(xa, *[w.T for w in ws], scales) if int8 else \
                ref.qkv_project_int4(xa, *ws, *ss, G)
            for p, o in zip(O, outs):
                self.arr(p, f16, (M, N), (ldo, 1))[...] = o
        else:
            raise AssertionError(f"unknown entry {e}")


@functools.lru_cache(None)
def _entries(file, arch):
    """The kernel names in the cubin of `file` (NVRTC, disk-cached), or None without NVRTC."""
    from minigrad.backend.cuda import compiler
    if compiler.nvrtc_version() is None:
        return None
    return compiler.compile_file(compiler.kernels_dir() / file, arch)


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_cuda_host_rules_emulated(arch, rng):
    from minigrad.backend.cuda import ops_quant
    gpu = _FakeGPU(arch)
    names = ops_quant.register(gpu, runtime=gpu)
    assert set(names) == {"matmul_int8", "matmul_int4", "dequantize_int4",
                          "qkv_project_int8", "qkv_project_int4"}
    k = gpu.kernels
    up = gpu.upload
    i8 = lambda *s: rng.integers(-128, 128, s, dtype=np.int8)
    h16 = lambda *s: rng.standard_normal(s).astype(f16)

    # matmul_int8: layouts of b, batch dims, K tails, misaligned and strided views
    for M, N, K in ((1, 7, 33), (3, 130, 96), (64, 1, 32), (130, 300, 40), (200, 5, 1)):
        a, b = i8(2, M, K), i8(K, N)
        want = int8_exact(a.reshape(-1, K), b, 0.5).reshape(2, M, N)
        bt = up(np.ascontiguousarray(b.T))
        bpad = up(np.concatenate([np.zeros((N, 5), np.int8), b.T, np.zeros((N, 11), np.int8)],
                                 1))
        views = [up(b), bt.view((K, N), (1, K)),
                 bpad.view((K, N), (1, K + 16), 5),                  # misaligned: _s
                 up(np.repeat(b, 2, axis=1)).view((K, N), (2 * N, 2))]
        for bv in views:
            out = k["matmul_int8"](up(a), bv, scale=0.5)
            assert out.shape == (2, M, N) and np.array_equal(gpu.buf_arr(out), want)
        at = up(np.ascontiguousarray(a.reshape(-1, K).T))            # a read transposed
        out = k["matmul_int8"](at.view((2 * M, K), (1, 2 * M)), views[1], scale=0.5)
        assert np.array_equal(gpu.buf_arr(out), want.reshape(-1, N))

    # matmul_int4 and dequantize_int4: gemv (r, t) and gemm choices, strided x
    for M, N, K, G in ((1, 7, 64, 32), (1, 130, 128, 64), (3, 128, 128, 64), (9, 4096, 128, 64),
                       (64, 40, 256, 128), (65, 130, 96, 32), (300, 260, 128, 128)):
        packed, s, w = int4_weight(rng, K, N, G)
        x = h16(M, K + 8)
        xv = up(x).view((M, K), (K + 8, 1), 8)                       # ldx = K + 8: a copy
        out = k["matmul_int4"](xv, up(packed), up(s), group_size=G)
        assert rel_err(gpu.buf_arr(out), ref.matmul_int4(x[:, 8:], packed, s, G)) < 1e-6
        out = k["matmul_int4"](up(x[:, :K].reshape(1, M, K)), up(packed), up(s), group_size=G)
        assert out.shape == (1, M, N)
        wd = k["dequantize_int4"](up(packed), up(s), group_size=G)
        assert np.array_equal(gpu.buf_arr(wd), ref.dequantize_int4(packed, s, G))
        wide = up(np.concatenate([packed, packed], 1)).view((N, K // 8), (K // 4, 1), K // 8)
        wd = k["dequantize_int4"](wide, up(s), group_size=G)
        assert np.array_equal(gpu.buf_arr(wd), ref.dequantize_int4(packed, s, G))

    # qkv_project_int8: _v / _s x, weights transposed views (ld % 16 == 0 or not) and
    # row-major; different ld across the three weights
    for M, N, K in ((1, 7, 33), (3, 7, 40), (17, 130, 96), (64, 16, 40), (100, 300, 64),
                    (300, 8, 33)):
        x = h16(M, K)
        ws = [rng.integers(-127, 128, (K, N), dtype=np.int8) for _ in range(3)]
        sc = (0.01, 0.02, 0.03)
        want = ref.qkv_project_int8(x, *ws, sc)
        kp = -(-K // 16) * 16 + 16           # w_q: ld differs from the others (a copy)
        pad = np.zeros((N, kp), np.int8)
        pad[:, :K] = ws[0].T
        wv = [up(pad).view((K, N), (1, kp)), up(np.ascontiguousarray(ws[1].T)).view(
            (K, N), (1, K)), up(ws[2])]
        for xb in (up(x), up(np.concatenate([np.zeros((M, 1), f16), x], 1)).view(
                (M, K), (K + 1, 1), 1)):
            outs = k["qkv_project_int8"](xb, *wv, scales=sc)
            for o, w_ in zip(outs, want):
                assert rel_err(gpu.buf_arr(o), w_) < 1e-3     # f16 of f32 sums, other order

    # qkv_project_int4
    for M, N, K, G in ((3, 7, 32, 32), (40, 130, 128, 64), (65, 260, 256, 128)):
        x = h16(2, M, K)
        ws = [int4_weight(rng, K, N, G) for _ in range(3)]
        outs = k["qkv_project_int4"](up(x), *[up(w[0]) for w in ws], *[up(w[1]) for w in ws],
                                     group_size=G)
        want = ref.qkv_project_int4(x.reshape(-1, K), *[w[0] for w in ws],
                                    *[w[1] for w in ws], G)
        for o, w_ in zip(outs, want):
            assert o.shape == (2, M, N) and o.ptr % 256 == 0      # views of one allocation
            assert rel_err(gpu.buf_arr(o).reshape(-1, N), w_) < 1e-3

    # every launched entry exists in the file built for this arch (sm_90 -> sm_90a)
    expected = {"matmul_int8_transpose", "matmul_int8_tn_s",
                "matmul_int4_gemv1", "matmul_int4_gemv_r1_t1", "matmul_int4_gemv_r2_t2",
                "qkv_project_int8_gemv_t1_v",
                "qkv_project_int8_gemv_t2_s", "qkv_project_int4_gemv_t1"}
    expected |= {"matmul_int8_wgmma", "matmul_int4_gemm_wgmma", "qkv_project_int8_gemm_wgmma",
                 "qkv_project_int8_gemm_s", "qkv_project_int4_gemm_wgmma"} if arch == "sm_90" \
        else {"matmul_int8_tn_v", "matmul_int4_gemm", "qkv_project_int8_gemm_v",
              "qkv_project_int8_gemm_s",
              "qkv_project_int4_gemm"}
    launched = set(gpu.launches)
    assert expected <= launched, expected - launched
    assert arch == "sm_90" or not any("wgmma" in e for e in launched)
    files = {"matmul_int8": "matmul_int8.cu", "matmul_int4": "matmul_int4.cu",
             "qkv_project": "qkv_project.cu"}
    for e in launched:
        f = files[next(p for p in files if e.startswith(p))]
        cubin = _entries(f, "sm_90a" if arch == "sm_90" else arch)
        if cubin is not None:
            assert e.encode() + b"\0" in cubin, f"{e} is not an entry of {f}"


def test_cuda_host_rules_unsupported_arch():
    """An arch the kernel files do not declare gets only the generated dequantize kernel
    (the backend runs the others' NumPy references on the host, with a warning)."""
    from minigrad.backend.cuda import ops_quant
    gpu = _FakeGPU("sm_75")
    assert ops_quant.register(gpu, runtime=gpu) == ["dequantize_int4"]


def test_dequantize_kernel_expression_compiles():
    from minigrad.backend.cuda import codegen as cg
    from minigrad.backend.cuda import compiler
    from minigrad.backend.cuda.ops_quant import DEQUANT_INT4_EXPR
    if compiler.nvrtc_version() is None:
        pytest.skip("NVRTC is not available")
    srcs = cg.sources(lambda: [cg.elementwise(DEQUANT_INT4_EXPR, mg.float16,
                                              [mg.uint32, mg.float16], ("long long",), nd, w)
                               for nd, w in ((4, False), (2, True))])
    for name, src in srcs:
        assert compiler.compile_to_cubin(src, arch="sm_80", name=name + ".cu",
                                         cache=False)[:4] == b"\x7fELF"
