"""The tensor-core matmul family (mg.ops.matmul_tc*): results against the NumPy
reference of the rounded inputs, gradients, wiring into Tensor/@ and nn.Linear, and
bad input. On CUDA every output buffer is poisoned before the kernel writes it."""
import ml_dtypes
import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor

from cuda_stand_ins import FakeBuf, FakeFn     # tests/cuda_stand_ins.py

OPS = {"matmul_tc": np.float16, "matmul_tc_bf16": ml_dtypes.bfloat16,
       "matmul_tc_async": np.float16, "matmul_tc_bf16_async": ml_dtypes.bfloat16}
SHAPES = [(1, 1, 1), (17, 9, 13), (127, 255, 33), (64, 64, 64), (1000, 1000, 1000),
          (4096, 4096, 4096),
          # the TMA-store epilogue with M % 16 == 8 (a warp's second 8 rows past M) on 2-CTA
          # clusters: a race between a store still reading a buffer half and its refill
          # once gave wrong rows 992-999 here (session 14)
          (1000, 4096, 32)]


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
    so the analytic formula is the check), arriving in f32 at the f32 leaves without a
    second rounding to 16 bits on the way back through the casts."""
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
    ref_a = g @ r(b32).T                    # f32 sums of exact products: ~1e-7 relative
    ref_b = np.einsum("bmk,bmn->kn", r(a32), g)
    for dev, (ga, gb) in grads.items():     # (a rounding to 16 bits would be ~1e-3)
        assert _rel(ga, ref_a) < 1e-5 and _rel(gb, ref_b) < 1e-5, dev
    if device == "cuda":
        for x, y in zip(grads["cpu"], grads["cuda"]):
            assert _rel(y, x) < 1e-5


@pytest.mark.parametrize("name", OPS)
def test_without_gradients_the_op_is_its_node_alone(name, device, rng):
    """With no gradient to record (operands that need none, or mg.no_grad) the op builds
    its kernel node without the Function (ops._matmul_op): the node the Function builds,
    the same values, no autograd context."""
    dt = mg.float16 if OPS[name] is np.float16 else mg.bfloat16
    a32, b32 = rng.standard_normal((3, 7, 10)), rng.standard_normal((10, 6))
    op = getattr(mg.ops, name)

    def run(grad, no_grad=False):
        a = Tensor(a32.astype(np.float32), device=device, requires_grad=grad)
        b = Tensor(b32.astype(np.float32), device=device, requires_grad=grad)
        if no_grad:
            with mg.no_grad():
                return op(a.cast(dt), b.cast(dt))
        return op(a.cast(dt), b.cast(dt))
    plain, tracked, under_no_grad = run(False), run(True), run(True, no_grad=True)
    assert plain._ctx is None and under_no_grad._ctx is None and tracked._ctx is not None
    for t in (plain, under_no_grad):
        lb, ref = t.lazydata, tracked.lazydata
        assert (lb.op, lb.arg, lb.shape, lb.dtype, lb.device) == \
            (ref.op, ref.arg, ref.shape, ref.dtype, ref.device) == \
            ("kernel", (name, {}), (3, 7, 6), mg.float32, device)
        np.testing.assert_array_equal(t.numpy(), tracked.numpy())


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


# ============================================================== split-K ==
# ops_matmul.py cuts a long K into chunks when the output has too few tiles to fill the
# SMs (dB = Aᵀ·dC of nn.Linear). The heuristic and the chunk arithmetic are pure
# functions; the launcher itself runs below against a stand-in GPU whose memory is a
# NumPy byte arena (poisoned on allocation) and whose launches check each call against
# the kernel headers' contracts (argument format, grid, block, shared memory, 16-byte
# rule, every element read or written inside an allocation) and then compute the
# kernel's result from the pointers, strides and leading dims they were given.

def _om():
    from minigrad.backend.cuda import ops_matmul
    return ops_matmul


# (m, n, k) of the products of one nn.Linear layer at 16384 tokens: forward,
# dA = dC·Bᵀ and dB = Aᵀ·dC for the transformer shapes of issue 4.
TRANSFORMER = [(16384, 1152, 384), (16384, 384, 384), (16384, 1536, 384), (16384, 384, 1536)]


def test_split_chunk_arithmetic():
    om = _om()
    for kt in (32, 64):
        for k in list(range(1, 300)) + [1023, 1024, 1025, 4099, 16384, 20000]:
            for s in range(1, 20):
                kc, full, rem = om.chunks(k, s, kt)
                n = full + (rem > 0)
                assert kc % kt == 0 and kc >= kt
                assert full * kc + rem == k and 0 <= rem < kc
                assert 1 <= n <= s and (n - 1) * kc < k     # no empty chunk
                assert kc - kt < -(-k // s)                 # kc is ceil(k/s) rounded up


@pytest.mark.parametrize("kernel,kt,slots", [("tma", 64, 132), ("wgmma", 64, 132),
                                              ("mma", 32, 264)])
def test_split_plan_transformer_shapes(kernel, kt, slots):
    """At the transformer shapes (132 SMs: H100 SXM and H200) dB splits; the forward and
    dA (M = 16384 rows of tiles) never split. Chunk counts that leave a short last chunk
    lose where it is a second launch, and are chosen where it is not (TMA): 36 tiles of
    the 1536 x 384 weight gradients in 3 chunks (108 blocks) rather than 2 (72)."""
    om = _om()
    for m, n, k in TRANSFORMER:
        for mm, nn_, kk, splits in ((m, n, k, False), (m, k, n, False), (k, n, m, True)):
            bn, s, kc = om.plan(mm, nn_, kk, 1, 132, kernel)
            assert bn in ((128,) if kernel == "mma" else (128, 256))
            if not splits:
                assert s == 1 and kc == kk
                continue
            full, rem = divmod(kk, kc)
            tiles = -(-mm // 128) * -(-nn_ // bn)
            assert s >= 2 and s == full + (rem > 0) and s <= om.SPLIT_MAX and bn == 128
            assert kc % kt == 0 and kc >= om.SPLIT_KMIN
            assert tiles < slots / 2 and tiles * s <= slots * 4  # < half full; <= 4 waves
            if kernel != "tma":
                assert rem == 0      # K = 16384: a chunk count that divides it wins
            else:
                assert tiles * s <= slots                       # one wave
                assert tiles != 36 or s == 3


def test_split_plan_leaves_full_outputs_alone():
    om = _om()
    assert om.plan(4096, 4096, 4096, 1, 132, "wgmma")[1] == 1
    assert om.plan(2048, 2048, 8192, 1, 132, "wgmma")[1] == 1        # 128 of 132 SMs busy
    assert om.plan(1024, 1024, 65536, 1, 132, "wgmma")[1] > 1        # 32 (n256) or 64 tiles
    assert om.plan(128, 128, 1023, 1, 132, "wgmma")[1] == 1          # too short for 2 x 512
    assert om.plan(128, 128, 1024, 1, 132, "wgmma")[1:] == (2, 512)
    assert om.plan(2048, 2048, 65536, 1, 132, "mma_w8")[1] == 1
    assert om.plan(64, 64, 65536, 9, 132, "wgmma")[1] == 1           # batch > SPLIT_BATCH_MAX
    assert om.plan(64, 64, 65536, 8, 132, "wgmma")[1] == 16
    assert om.plan(50, 40, 2000, 3, 132, "wgmma")[1] == 1            # 3 serial launches lose


def test_split_plan_force(monkeypatch):
    om = _om()
    monkeypatch.setattr(om, "FORCE_SPLIT", 2)
    assert om.plan(130, 70, 65, 1, 132, "wgmma") == (128, 2, 64)      # K = Kc + 1
    assert om.plan(33, 20, 40, 1, 132, "wgmma") == (128, 1, 40)       # K < one K tile x 2
    assert om.plan(33, 20, 40, 1, 132, "mma") == (128, 2, 32)
    monkeypatch.setattr(om, "FORCE_SPLIT", 1)
    assert om.plan(384, 384, 16384, 1, 132, "wgmma")[1] == 1


class _FakeGPU:
    """Backend (the methods ops_matmul uses) and runtime stand-in."""
    BASE = 1 << 20
    tma_param_pad = 48              # bytes before the first tensor map (sm_90 cubins)

    def __init__(self, arch, sms=132, arena=96 << 20):
        self.arch, self.multiprocessors, self.kernels, self.launches = arch, sms, {}, []
        self.mem = np.zeros(arena, np.uint8)
        self.allocs, self.top, self.maps, self.cmaps = [], 0, 0, []

    def empty(self, shape, dtype):
        nbytes = int(np.prod(shape)) * dtype.itemsize
        start = self.top
        self.top = -(-(start + max(nbytes, 1)) // 256) * 256
        assert self.top <= self.mem.size, "arena full"
        self.mem[start:start + nbytes] = 0xFF                 # poison: f32 NaN
        self.allocs.append((self.BASE + start, self.BASE + start + nbytes))
        return FakeBuf(self.BASE + start, shape, dtype)

    def arr(self, ptr, np_dtype, shape, strides):
        it = np.dtype(np_dtype).itemsize
        hi = ptr + sum((d - 1) * s for d, s in zip(shape, strides)) * it + it
        assert all(s >= 0 for s in strides)
        assert any(a <= ptr and hi <= b for a, b in self.allocs), \
            f"[{ptr:#x}, {hi:#x}) is outside every allocation"
        return np.ndarray(shape, np_dtype, buffer=self.mem.data, offset=ptr - self.BASE,
                          strides=tuple(s * it for s in strides))

    def buf_arr(self, b):
        return self.arr(b.ptr, b.dtype.np, b.shape, b.strides)

    def upload(self, a, dtype):
        b = self.empty(a.shape, dtype)
        self.buf_arr(b)[...] = a
        return b

    def _dense(self, x):
        if x.contig:
            return x
        out = self.empty(x.shape, x.dtype)
        self.buf_arr(out)[...] = self.buf_arr(x)
        return out

    def _fill(self, out, value):
        self.buf_arr(out)[...] = value
        return out

    def function(self, file, entry, fmt):
        return FakeFn(file, entry, fmt)

    def set_max_dynamic_shared(self, fn, nbytes):
        fn.max_smem = nbytes

    def launch(self, fn, grid, block, args, smem=0):
        import re
        om = _om()
        e = fn.entry
        assert len(args) == len(fn.fmt) and smem <= fn.max_smem
        assert all(isinstance(a, int) for a in args)
        assert grid[1] <= 65535 and grid[2] <= 65535
        self.launches.append((e, grid, tuple(args)))
        cd = lambda a, b: -(-a // b)        # noqa: E731
        if "splitk_sum" in e:
            assert fn.file == "matmul_tc.cu" and fn.fmt == om.SUM_ARGS and block == 256
            W, C, n, S, batch = args
            if e.endswith("4"):
                assert n % 4 == 0 and W % 16 == 0 and C % 16 == 0
            w = self.arr(W, np.float32, (batch, S, n), (S * n, n, 1))
            acc = w[:, 0].copy()
            for s in range(1, S):           # the kernel's order, f32 adds
                acc += w[:, s]
            self.arr(C, np.float32, (batch, n), (n, 1))[...] = acc
            return
        mw = re.fullmatch(r"matmul_tc_(tma|wgsync)_(f16|bf16)_([nt])([nt])_n(256|128)c([12])", e)
        if mw:
            self._launch_ws(fn, mw.groups(), grid, block, args, smem)
            return
        mt = re.fullmatch(r"matmul_tc_(?:(wgmma|async)_)?(f16|bf16)_([nt])([nt])_"
                          r"(v_w8|v|s|n128|n256)", e)
        assert mt, e
        kind, dt, la, lb, var = mt.groups()
        A, B, C, lda, ldb, ldc, sA, sB, sC, M, N, K, batch = args
        assert fn.fmt == om.ARGS and fn.file == ("matmul_tc_wgmma.cu" if kind == "wgmma"
                                                 else "matmul_tc.cu")
        bn = 256 if var in ("v_w8", "n256") else 128
        threads = 256 if var in ("v_w8", "n128", "n256") else 128
        want_smem = {"wgmma": 197632, "async": 81920}.get(kind, 61440 if var == "v_w8" else 0)
        assert grid == (cd(M, 128) * cd(N, bn), 1, min(batch, 65535)) and block == threads
        assert smem == want_smem and K >= 1 and batch >= 1 and ldc >= N
        if kind == "wgmma":
            assert self.arch.startswith("sm_90")
        if var != "s":                      # the 16-byte rule
            assert lda % 8 == 0 and ldb % 8 == 0 and sA % 8 == 0 and sB % 8 == 0
            assert A % 16 == 0 and B % 16 == 0
        npdt = np.float16 if dt == "f16" else ml_dtypes.bfloat16
        for bat in range(batch):
            a = self.arr(A + 2 * bat * sA, npdt, (M, K), (lda, 1) if la == "n" else (1, lda))
            b = self.arr(B + 2 * bat * sB, npdt, (K, N), (ldb, 1) if lb == "n" else (1, ldb))
            c = self.arr(C + 4 * bat * sC, np.float32, (M, N), (ldc, 1))
            c[...] = a.astype(np.float64) @ b.astype(np.float64)

    # TMA tensor maps: the stand-in "encodes" its arguments into the 16 words after
    # checking the driver's documented rules; the launch decodes them.
    CODES = {"f16": 6, "bf16": 9, "f32": 7}

    def tensor_map(self, ptr, dt, dims, strides, box):
        size = {"f32": 4}.get(dt, 2)
        assert dt in self.CODES and len(dims) == 3 and len(strides) == 2 and len(box) == 3
        assert ptr % 16 == 0 and all(1 <= d <= 2 ** 32 for d in dims)
        assert all(x % 16 == 0 and 0 < x < 2 ** 40 for x in strides)
        assert all(1 <= b <= 256 for b in box) and box[0] * size <= 128   # 128-byte swizzle
        self.maps += dt != "f32"        # (operand maps; C's is counted by the launch)
        return (ptr, self.CODES[dt], *dims, *strides, *box, 0, 0, 0, 0, 0, 0)

    def _map_view(self, words, npdt, bat):
        ptr, code, d0, d1, d2, s1, s2, b0, b1, b2 = words[:10]
        it = np.dtype(npdt).itemsize
        assert code == {np.float16: 6, np.float32: 7}.get(npdt, 9) and bat < d2 and b2 == 1
        assert s1 % it == 0
        return self.arr(ptr + bat * s2, npdt, (d1, d0), (s1 // it, 1)), (b0, b1)

    def _launch_ws(self, fn, groups, grid, block, args, smem):
        om = _om()
        kind, dt, la, lb, bn, cm = groups
        bn, cm = int(bn), int(cm)
        assert self.arch.startswith("sm_90") and fn.file == "matmul_tc_wgmma.cu"
        assert block == om.WS_THREADS and smem == om.WS_SMEM[bn] and smem <= fn.max_smem
        npdt = np.float16 if dt == "f16" else ml_dtypes.bfloat16
        if kind == "tma":
            pad = self.tma_param_pad // 8
            assert fn.fmt == "Q" * pad + om.TMA_ARGS and len(args) == pad + 60
            assert args[:pad] == [0] * pad
            args = args[pad:]
            ma, mb, mc = args[:16], args[16:32], args[32:48]
            C, ldc, sC, M, N, K, batch, batA, batB, group, cmap, kchunk = args[48:]
            if kchunk:      # split-K in the kernel: batch = the chunks, each with its slab
                assert kchunk % 64 == 0 and batch == -(-K // kchunk) and batA == batB == 0
                assert sC == M * N
            # TMA stores of C exactly where the kernel stages its epilogue (its header)
            assert cmap == int(-(-(kchunk or K) // 64) <= 16 and N >= 512 and ldc % 4 == 0
                               and C % 16 == 0)
            self.cmaps.append(cmap)
            if not cmap:
                assert mc == [0] * 16
        else:
            assert fn.fmt == om.WGSYNC_ARGS and (cm == 1 or bn == 256)   # n256c2, n*c1
            A, B, C, lda, ldb, ldc, sA, sB, sC, M, N, K, batch, group = args
            assert lda % 8 == 0 and ldb % 8 == 0 and sA % 8 == 0 and sB % 8 == 0
            assert A % 16 == 0 and B % 16 == 0
        assert group >= 1 and K >= 1 and batch >= 1 and ldc >= N
        units = -(-(-(-M // 128)) // cm) * -(-N // bn) * batch
        assert grid == (cm * min(units, self.multiprocessors // cm), 1, 1)
        for bat in range(batch):
            if kind == "tma":
                a, box = self._map_view(ma, npdt, bat * batA)
                assert box == ((64, 128) if la == "n" else (64, 64))
                a = a if la == "n" else a.T              # map dims: 'n' (K, M), 't' (M, K)
                b, box = self._map_view(mb, npdt, bat * batB)
                assert box == ((64, bn // cm) if lb == "t" else (64, 64))
                b = b.T if lb == "t" else b              # 't' (K, N) -> [N, K]; 'n' (N, K)
                assert a.shape == (M, K) and b.shape == (K, N)
                if kchunk:
                    a, b = a[:, bat * kchunk:][:, :kchunk], b[bat * kchunk:][:kchunk]
            else:
                a = self.arr(A + 2 * bat * sA, npdt, (M, K), (lda, 1) if la == "n" else (1, lda))
                b = self.arr(B + 2 * bat * sB, npdt, (K, N), (ldb, 1) if lb == "n" else (1, ldb))
            c = self.arr(C + 4 * bat * sC, np.float32, (M, N), (ldc, 1))
            if kind == "tma" and cmap:      # written through the map: it must be C
                c, box = self._map_view(mc, np.float32, bat)
                assert box == (32, 8) and mc[:3] == [C, 7, N] and mc[3:6] == [M, batch, 4 * ldc]
                assert batch == 1 or mc[6] == 4 * sC
            c[...] = a.astype(np.float64) @ b.astype(np.float64)


def _stored(gpu, x, dtype, how):
    """Upload x [..., R, C] as a row-major buffer ('n'), as the transpose of a row-major
    [C, R] buffer ('t', a transposed view), or with an odd leading dim ('odd', _s path)."""
    if how == "n":
        return gpu.upload(x, dtype)
    if how == "t":
        buf = gpu.upload(np.ascontiguousarray(np.swapaxes(x, -1, -2)), dtype)
        st = list(buf.strides)
        st[-1], st[-2] = st[-2], st[-1]
        return buf.view(x.shape, tuple(st))
    r, c = x.shape[-2:]
    pad = np.zeros(x.shape[:-1] + (c + 1,), x.dtype)
    pad[..., :c] = x
    buf = gpu.upload(pad, dtype)
    return buf.view(x.shape, buf.strides[:-2] + (c + 1, 1))


# (a shape, b shape, a storage, b storage, forced chunk count or None for the heuristic)
SPLIT_CASES = {
    "K-prime": ((100, 4099), (4099, 100), "n", "n", None),
    "K-prime-wgmma": ((96, 4099), (4099, 104), "t", "n", None),
    "K=Kc+1": ((130, 65), (65, 70), "n", "n", 2),
    "K<Kc": ((33, 40), (40, 20), "n", "n", 4),
    "Ksmall-many": ((40, 300), (300, 24), "n", "t", 7),
    "dB-like": ((64, 20000), (20000, 24), "t", "n", None),      # Aᵀ·dC, 't' A
    "batched": ((2, 64, 8192), (8192, 72), "n", "n", None),
    "transposed-b": ((96, 5000), (5000, 40), "n", "t", None),
    "odd-ld": ((50, 3001), (3001, 30), "odd", "n", None),          # _s kernels
}


@pytest.mark.parametrize("arch,pipelined", [("sm_90", True), ("sm_90", False),
                                            ("sm_80", True)])
@pytest.mark.parametrize("case", SPLIT_CASES)
def test_split_launcher_emulated(case, arch, pipelined, monkeypatch, rng):
    om = _om()
    sa, sb, how_a, how_b, force = SPLIT_CASES[case]
    monkeypatch.setattr(om, "FORCE_SPLIT", force)
    gpu = _FakeGPU(arch)
    dtype = mg.float16
    a = rng.standard_normal(sa).astype(np.float16)
    b = rng.standard_normal(sb).astype(np.float16)
    out = om.tc_matmul(gpu, _stored(gpu, a, dtype, how_a), _stored(gpu, b, dtype, how_b),
                       pipelined, runtime=gpu)
    got = gpu.buf_arr(out)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert got.shape == ref.shape and _rel(got, ref) < _bound(sa[-1], np.float16)
    mm = [(e, g, args) for e, g, args in gpu.launches if "splitk" not in e]
    sums = [args for e, g, args in gpu.launches if "splitk" in e]
    batch = int(np.prod(sa[:-2]))
    m, k, n = sa[-2], sa[-1], sb[-1]
    e0 = mm[0][0]
    hopper = arch == "sm_90" and not e0.endswith("_s")     # and the 16-byte rule holds
    kernel = ("wgmma" if "wgmma" in e0 or "_tma_" in e0 else "mma_w8" if e0.endswith("w8")
              else "mma")
    assert ("wgmma" in e0 or "_tma_" in e0) == (pipelined and hopper)
    bn, s, kc = om.plan(m, n, k, batch, 132, "tma" if "_tma_" in e0 else kernel)
    # sm_90 products run the warp-specialized kernels: TMA ones for the pipelined ops,
    # split or not; synchronous-load ones for the sync ops when unsplit
    assert ("_tma_" in e0) == (pipelined and hopper)
    assert ("_wgsync_" in e0) == (not pipelined and hopper and s == 1)
    k_arg = 59 if "_tma_" in e0 else 11             # after the TMA kernels' 6 padding words
    if force is None:
        assert s > 1 or kernel == "mma_w8", "these shapes are meant to split"
    if s == 1:
        assert len(mm) == 1 and not sums and mm[0][2][k_arg] == k
        assert gpu.maps == (2 if "_tma_" in e0 else 0)
        return
    full, rem = divmod(k, kc)
    assert len(sums) == 1 and sums[0][2:] == (m * n, s, batch)
    if "_tma_" in e0:       # one launch per batch entry: the kernel cuts K into s chunks
        assert len(mm) == batch and gpu.maps == 2 * batch
        assert all(args[k_arg] == k and args[k_arg + 6] == kc and args[k_arg + 1] == s
                   for _, _, args in mm)
        return
    assert len(mm) == batch * ((full > 0) + (rem > 0))
    ks = sorted({args[k_arg] for _, _, args in mm})
    assert ks == sorted({kc} | ({rem} if rem else set()))


# (a shape, b shape, a storage, b storage): unsplit products on sm_90 with the 16-byte rule
WS_CASES = {
    "nn": ((130, 72), (72, 264), "n", "n"),
    "nt": ((130, 72), (72, 264), "n", "t"),
    "tn": ((136, 72), (72, 264), "t", "n"),
    "tt": ((136, 72), (72, 264), "t", "t"),
    "n256": ((2048, 16), (16, 2048), "n", "t"),                  # wide enough for 128 x 256
    "n256-odd-rows": ((800, 16), (16, 4096), "n", "n"),          # 7 row tiles: no cluster
    "batched-B-shared": ((3, 40, 24), (24, 136), "n", "n"),
    "batched-B": ((2, 3, 40, 24), (2, 3, 24, 136), "t", "t"),
    # the staged epilogue's shapes (K <= 1024, N >= 512): C by TMA stores when N % 4 == 0
    "staged-tma-store": ((300, 200), (200, 532), "n", "t"),
    "staged-batched-tma-store": ((2, 40, 72), (72, 520), "t", "n"),
    "staged-ldc-not-16-bytes": ((300, 200), (200, 530), "n", "t"),
    "long-k": ((1024, 1088), (1088, 520), "n", "n"),
}
WS_TMA_STORE = {"staged-tma-store": 1, "staged-batched-tma-store": 1, "n256": 1,
                "n256-odd-rows": 1}


@pytest.mark.parametrize("pipelined", [True, False], ids=["async-tma", "sync-wgsync"])
@pytest.mark.parametrize("case", WS_CASES)
def test_ws_launcher_emulated(case, pipelined, rng):
    """The warp-specialized sm_90 launches (TMA kernels with their host-encoded tensor
    maps, synchronous-load kernels) against the stand-in GPU: argument formats, maps,
    persistent grid, shared memory, tile rule, result."""
    om = _om()
    sa, sb, how_a, how_b = WS_CASES[case]
    gpu = _FakeGPU("sm_90")
    a = rng.standard_normal(sa).astype(np.float16)
    b = rng.standard_normal(sb).astype(np.float16)
    out = om.tc_matmul(gpu, _stored(gpu, a, mg.float16, how_a),
                       _stored(gpu, b, mg.float16, how_b), pipelined, runtime=gpu)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    got = gpu.buf_arr(out)
    assert got.shape == ref.shape and _rel(got, ref) < _bound(sa[-1], np.float16)
    (e, grid, args), = gpu.launches
    m, n, batch = sa[-2], sb[-1], int(np.prod(sa[:-2]))
    bn, cm = om.ws_tile(m, n, batch, 132, sync=not pipelined)
    want = (f"matmul_tc_tma_f16_{how_a}{how_b}_n{bn}c{cm}" if pipelined
            else f"matmul_tc_wgsync_f16_{how_a}{how_b}_n{bn}c{cm}")
    assert e == want and gpu.maps == (2 if pipelined else 0)
    assert gpu.cmaps == ([WS_TMA_STORE.get(case, 0)] if pipelined else [])


KEPT_CASES = {**{f"ws-{k}": v + (None,) for k, v in WS_CASES.items()},
              "odd-ld": ((50, 70), (70, 30), "odd", "n", None),
              "wide-w8": ((2048, 64), (64, 2048), "n", "n", None),
              # split-K (forced chunk counts): chunks, a short last chunk, the ordered sum
              "split-tn": ((96, 200), (200, 40), "t", "n", 3),
              "split-K=Kc+1": ((130, 65), (65, 70), "n", "n", 2),
              "split-batched-B": ((2, 3, 40, 150), (2, 3, 150, 24), "n", "t", 2),
              "split-odd-ld": ((50, 70), (70, 30), "odd", "n", 3)}


@pytest.mark.parametrize("arch,pipelined", [("sm_90", True), ("sm_90", False),
                                            ("sm_80", True), ("sm_80", False)])
@pytest.mark.parametrize("case", KEPT_CASES)
def test_launcher_kept_per_layout_emulated(case, arch, pipelined, monkeypatch, rng):
    """The second product of a layout (same shapes, strides, alignment; other data at
    other addresses) runs the launcher the first one kept, without the kernel rules:
    the same kernels with the same grids, its own pointers, the right result. Split-K
    products too (their chunk launches and the ordered sum)."""
    om = _om()
    sa, sb, how_a, how_b, split = KEPT_CASES[case]
    monkeypatch.setattr(om, "FORCE_SPLIT", split)
    gpu = _FakeGPU(arch)
    runs = []
    for i in range(2):
        if i == 1:      # the rules must not run again
            for rule in ("plan", "ws_tile", "_operand", "_function", "_split_k"):
                monkeypatch.setattr(om, rule, lambda *a, **k: pytest.fail("rules re-run"))
        a = rng.standard_normal(sa).astype(np.float16)
        b = rng.standard_normal(sb).astype(np.float16)
        gpu.launches.clear()
        out = om.tc_matmul(gpu, _stored(gpu, a, mg.float16, how_a),
                           _stored(gpu, b, mg.float16, how_b), pipelined, runtime=gpu)
        ref = a.astype(np.float64) @ b.astype(np.float64)
        got = gpu.buf_arr(out)
        assert got.shape == ref.shape and _rel(got, ref) < _bound(sa[-1], np.float16)
        runs.append([(e, grid, len(args)) for e, grid, args in gpu.launches])
    assert runs[0] == runs[1]
    if split:
        assert len(runs[0]) >= 2 and runs[0][-1][0].startswith("matmul_tc_splitk_sum")
    else:
        assert len(runs[0]) == 1


def _kept_then_refused(monkeypatch, rng, a_shape, b_shape):
    """Two products of one layout on the stand-in sm_90 GPU, the driver refusing every tensor
    map from the second on (after the first kept its TMA launcher): each correct; the kernel
    names each one queued."""
    om = _om()
    gpu = _FakeGPU("sm_90")
    names = []
    for i in range(2):
        if i == 1:
            monkeypatch.setattr(gpu, "tensor_map", lambda *args, **kw: None, raising=False)
        a = rng.standard_normal(a_shape).astype(np.float16)
        b = rng.standard_normal(b_shape).astype(np.float16)
        gpu.launches.clear()
        out = om.tc_matmul(gpu, gpu.upload(a, mg.float16), gpu.upload(b, mg.float16), True,
                           runtime=gpu)
        assert _rel(gpu.buf_arr(out), a.astype(np.float64) @ b.astype(np.float64)) < 1e-5
        names.append([e for e, _, _ in gpu.launches])
    return names


def test_kept_split_k_tma_launcher_falls_back_when_a_map_is_refused(monkeypatch, rng):
    """A kept split-K TMA launcher whose maps the driver refuses for new pointers queues
    nothing (no chunk, no sum); the product falls back to the cp.async wgmma chunks."""
    monkeypatch.setattr(_om(), "FORCE_SPLIT", 3)
    names = _kept_then_refused(monkeypatch, rng, (130, 200), (200, 72))
    assert names[0][:-1] == ["matmul_tc_tma_f16_nn_n128c1"] * (len(names[0]) - 1)
    assert names[1][:-1] == ["matmul_tc_wgmma_f16_nn_n128"] * (len(names[1]) - 1)
    assert names[0][-1].startswith("matmul_tc_splitk_sum") and names[1][-1] == names[0][-1]


def test_kept_tma_launcher_falls_back_when_a_map_is_refused(monkeypatch, rng):
    """A kept TMA launcher whose maps the driver refuses for new pointers queues nothing;
    the product falls back to the cp.async wgmma kernel, correctly."""
    names = _kept_then_refused(monkeypatch, rng, (130, 72), (72, 264))
    assert sum(names, []) == ["matmul_tc_tma_f16_nn_n128c1", "matmul_tc_wgmma_f16_nn_n128"]


def test_ws_tile_rule():
    om = _om()
    assert om.ws_tile(4096, 4096, 1, 132) == (256, 2)
    assert om.ws_tile(8192, 8192, 1, 132) == (256, 2)
    assert om.ws_tile(16384, 1152, 1, 132) == (128, 2)      # a wave tie goes to 128
    assert om.ws_tile(16384, 1536, 1, 132) == (256, 2)
    assert om.ws_tile(16384, 384, 1, 132) == (128, 1)       # narrow N: no cluster
    assert om.ws_tile(100, 64, 3, 132) == (128, 1)
    # an odd number (< 8) of 128-row tiles: no cluster (its last CTA would idle)
    assert om.ws_tile(384, 1152, 4, 132) == (128, 1)
    assert om.ws_tile(384, 1536, 8, 132) == (128, 1)
    assert om.ws_tile(640, 4096, 1, 132) == (256, 1)
    assert om.ws_tile(1152, 4096, 1, 132)[1] == 2          # 9 row tiles: 1/18 idle
    # the synchronous-load kernels: the same, clusters for 256-wide tiles only
    assert om.ws_tile(4096, 4096, 1, 132, sync=True) == (256, 2)
    assert om.ws_tile(16384, 1152, 1, 132, sync=True) == (128, 1)
    assert om.ws_tile(640, 4096, 1, 132, sync=True) == (256, 1)


def _matmul_refusing_maps(monkeypatch, a, b, how_a):
    """a @ b (f16, a stored as `how_a`, see _stored) by tc_matmul on an sm_90 stand-in
    whose driver refuses every tensor map; checks the product and returns the names of
    the kernels launched."""
    om = _om()
    gpu = _FakeGPU("sm_90")
    monkeypatch.setattr(gpu, "tensor_map", lambda *args, **kw: None, raising=False)
    out = om.tc_matmul(gpu, _stored(gpu, a, mg.float16, how_a), gpu.upload(b, mg.float16),
                       True, runtime=gpu)
    assert _rel(gpu.buf_arr(out), a.astype(np.float64) @ b.astype(np.float64)) < 1e-5
    return [e for e, _, _ in gpu.launches]


def test_tma_refused_map_falls_back(monkeypatch, rng):
    """A tensor map the driver refuses sends the product to the cp.async wgmma kernel."""
    a = rng.standard_normal((130, 72)).astype(np.float16)
    b = rng.standard_normal((72, 264)).astype(np.float16)
    names = _matmul_refusing_maps(monkeypatch, a, b, "n")
    assert names == ["matmul_tc_wgmma_f16_nn_n128"]


def test_tma_refused_map_split_k_falls_back(monkeypatch, rng):
    """Split-K too: a refused map queues no TMA launch; the chunks run on cp.async wgmma."""
    a = rng.standard_normal((64, 20000)).astype(np.float16)
    b = rng.standard_normal((20000, 24)).astype(np.float16)
    names = _matmul_refusing_maps(monkeypatch, a, b, "t")
    assert names[-1].startswith("matmul_tc_splitk_sum") and len(names) >= 2
    assert all(e == "matmul_tc_wgmma_f16_tn_n128" for e in names[:-1]), names


def test_tensor_map_without_a_loadable_driver_is_refused(monkeypatch):
    """No driver library for ctypes (another OS, a stubbed runtime): tensor_map answers
    None, as for a refused map, so the launcher falls back instead of raising."""
    import ctypes
    om = _om()

    def no_driver(name, *a, **k):
        raise OSError(f"{name}: cannot open shared object file")
    monkeypatch.setattr(om, "_LIBCUDA", None)
    monkeypatch.setattr(om, "_TMAPS", {})
    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    assert om.tensor_map(0x10000, "f16", (64, 128, 1), (128, 16384), (64, 128, 1)) is None
    assert om._LIBCUDA is False


def test_tma_param_padding_from_cubin():
    """The TMA kernels' first tensor map sits 48 bytes into the parameter buffer on sm_90
    (read from the compiled cubin's parameter table, which the launcher pads to match)."""
    from minigrad.backend.cuda import compiler
    if compiler.compiler_name() == "none":
        pytest.skip("no CUDA compiler")
    om = _om()
    assert om._tma_pad_for("sm_90") == 48
    path = compiler.kernels_dir() / "matmul_tc_wgmma.cu"
    cubin = compiler.compile_file(path, "sm_90a")
    offs = om.kparam_offsets(cubin, "matmul_tc_tma_bf16_tn_n128c1")
    assert offs[0] == (48, 128) and offs[1] == (176, 128) and offs[2] == (304, 128)
    assert offs[3] == (432, 8)                      # C after the three maps
    assert om.kparam_offsets(cubin, "matmul_tc_wgsync_f16_nn_n256c2")[0] == (0, 8)


def _tensor_stored(x, how, device):
    """x as a device tensor stored like _stored() does: row-major, a transposed view,
    or a slice of a buffer with an odd row length (the kernels' _s path)."""
    if how == "n":
        return Tensor(x, device=device)
    if how == "t":
        return Tensor(np.ascontiguousarray(np.swapaxes(x, -1, -2)), device=device).T
    pad = np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype)
    pad[..., :-1] = x
    return Tensor(pad, device=device)[..., :x.shape[-1]]


def _spy_launches(monkeypatch):
    from minigrad.backend.cuda import runtime
    names, real = [], runtime.launch

    def launch(fn, *args, **kw):
        names.append(getattr(fn, "mg_name", "?"))
        return real(fn, *args, **kw)
    monkeypatch.setattr(runtime, "launch", launch)
    return names


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("case", SPLIT_CASES)
def test_split_k_matches_reference(name, case, poisoned_device, monkeypatch, rng):
    """Split-K on the GPU at awkward shapes, NaN-poisoned outputs and workspaces, against
    the float64 product of the rounded inputs; the same bits on a second run."""
    if poisoned_device == "cpu":
        pytest.skip("split-K is a path of the CUDA launcher (emulated on CPU above)")
    om = _om()
    sa, sb, how_a, how_b, force = SPLIT_CASES[case]
    monkeypatch.setattr(om, "FORCE_SPLIT", force)
    a, b = _inputs(rng, sa, sb, OPS[name])
    op = getattr(mg.ops, name)
    launched = _spy_launches(monkeypatch)
    outs = [op(_tensor_stored(a, how_a, poisoned_device),
               _tensor_stored(b, how_b, poisoned_device)).numpy() for _ in range(2)]
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert outs[0].shape == ref.shape and _rel(outs[0], ref) < _bound(sa[-1], OPS[name])
    assert np.array_equal(outs[0], outs[1]), "split-K must be deterministic"
    if force is None and not any("w8" in n for n in launched):
        assert any("splitk_sum" in n for n in launched), launched


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("n,k", [(1152, 384), (384, 384)], ids=str)
def test_split_k_transformer_weight_grad(name, n, k, poisoned_device, monkeypatch, rng):
    """dB = Aᵀ·dC of nn.Linear at 16384 tokens (the backward's own call: a transposed
    view of A, layout tn): split by the heuristic, deterministic, within the f32 bound."""
    if poisoned_device == "cpu":
        pytest.skip("CUDA only (the CPU path is the reference)")
    a, g = _inputs(rng, (16384, k), (16384, n), OPS[name])
    op = getattr(mg.ops, name)
    launched = _spy_launches(monkeypatch)
    at, gt = Tensor(a, device=poisoned_device).T, Tensor(g, device=poisoned_device)
    outs = [op(at, gt).numpy() for _ in range(2)]
    ref = a.T.astype(np.float64) @ g.astype(np.float64)
    assert _rel(outs[0], ref) < _bound(16384, OPS[name])
    assert np.array_equal(outs[0], outs[1])
    assert any("splitk_sum" in x for x in launched), launched


def test_operand_map_boxes_are_128_bytes_of_k_for_every_element_type():
    """A stage is 128 bytes of K for the 16-bit and the int8 kernels alike (matmul_int8's
    TMA kernel): 64 f16 / bf16 or 128 int8 elements, strides in bytes."""
    om = _om()
    assert om.operand_map("f16", False, 1000, 520, 528, 0, 1, 128) == \
        ("f16", (520, 1000, 1), (1056, 1056 * 1000), (64, 128, 1))
    assert om.operand_map("i8", False, 1000, 520, 528, 0, 1, 128) == \
        ("i8", (520, 1000, 1), (528, 528 * 1000), (128, 128, 1))
    assert om.TMA_TYPES["i8"] == (0, 1)      # CU_TENSOR_MAP_DATA_TYPE_UINT8, one byte
