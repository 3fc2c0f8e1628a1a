"""The CUDA runtime, compiler cache and doctor.

Tests without a mark need no GPU (NVRTC from pip only) and run in CI; tests marked
`cuda` run on the GPU machine and are skipped elsewhere.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import minigrad as mg
from minigrad.backend.cuda import compiler
from minigrad.backend.cuda.views import collapse, contig_strides, is_contig, reshape_strides

ROOT = Path(__file__).resolve().parents[1]
needs_nvrtc = pytest.mark.skipif(compiler.nvrtc_version() is None and not os.environ.get("CI"),
                                 reason="NVRTC (cuda-python) is not installed")


def _run_py(code, cache_dir=None, env=None, check=True):
    """Run `code` in a fresh interpreter (the project importable), return stdout."""
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if cache_dir is not None:
        e["MINIGRAD_CACHE_DIR"] = str(cache_dir)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, env=e, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"subprocess failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


SOURCES = ['extern "C" __global__ void k%d(float* x) { x[threadIdx.x] += %d.0f; }' % (i, i)
           for i in range(3)]
COMPILE_3 = """
import json
from minigrad.backend.cuda import compiler
srcs = %r
cubins = [compiler.compile_to_cubin(s, arch="sm_90", name="k.cu") for s in srcs]
assert all(c[:4] == b"\\x7fELF" for c in cubins)
print(json.dumps(compiler.stats))
""" % (SOURCES,)


# -- no GPU needed -------------------------------------------------------------------
@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "sm_90a"])
def test_compile_to_cubin_without_gpu(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path))
    src = ('#include <cuda_bf16.h>\nextern "C" __global__ void k(__nv_bfloat16* y, const float* x)'
           ' { y[threadIdx.x] = __float2bfloat16_rn(x[threadIdx.x]); }')
    cubin = compiler.compile_to_cubin(src, arch=arch, name="bf16.cu")
    assert cubin[:4] == b"\x7fELF"            # a cubin (ELF), not PTX text
    assert list(tmp_path.glob("*.cubin"))


@needs_nvrtc
def test_second_process_compiles_nothing(tmp_path):
    first = json.loads(_run_py(COMPILE_3, tmp_path).stdout)
    assert first["compiled"] == 3
    second = json.loads(_run_py(COMPILE_3, tmp_path).stdout)
    assert second == {"compiled": 0, "disk_hits": 3, "corrupt": 0}
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


@needs_nvrtc
@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_cache_entry_is_rebuilt(damage, tmp_path):
    _run_py(COMPILE_3, tmp_path)
    files = sorted(tmp_path.glob("*.cubin"))
    assert len(files) == 3
    victim = files[0]
    good = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        bad = bytearray(good)
        bad[len(bad) // 2] ^= 0xFF
        victim.write_bytes(bytes(bad))
    elif damage == "garbage":
        victim.write_bytes(b"not a cubin at all")
    else:
        victim.write_bytes(b"")
    stats = json.loads(_run_py(COMPILE_3, tmp_path).stdout)
    assert stats == {"compiled": 1, "disk_hits": 2, "corrupt": 1}
    assert victim.read_bytes() == good          # rewritten whole


@needs_nvrtc
def test_cache_key_covers_options_arch_and_headers(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path))
    src = '#include "h.cuh"\nextern "C" __global__ void k(float* x) { x[0] = V; }'
    before = compiler.stats["compiled"]
    compiler.compile_to_cubin(src, "sm_90", headers={"h.cuh": "#define V 1.0f"})
    compiler.compile_to_cubin(src, "sm_90", headers={"h.cuh": "#define V 2.0f"})
    compiler.compile_to_cubin(src, "sm_80", headers={"h.cuh": "#define V 2.0f"})
    compiler.compile_to_cubin(src, "sm_80", headers={"h.cuh": "#define V 2.0f"},
                              options=("-lineinfo",))
    compiler.compile_to_cubin(src, "sm_80", headers={"h.cuh": "#define V 2.0f"},
                              options=("-lineinfo",))                    # a hit
    assert compiler.stats["compiled"] - before == 4
    assert len(list(tmp_path.glob("*.cubin"))) == 4


@needs_nvrtc
def test_compile_error_carries_name_options_and_log(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path))
    with pytest.raises(compiler.CompileError) as e:
        compiler.compile_to_cubin('extern "C" __global__ void k(float* x) { undefined_fn(x); }',
                                  arch="sm_80", name="my_kernel.cu", defines={"TILE": 64})
    msg = str(e.value)
    assert "my_kernel.cu" in msg and "sm_80" in msg and "-DTILE=64" in msg
    assert "undefined_fn" in msg and "undefined_fn" in e.value.log
    assert not list(tmp_path.glob("*.cubin"))   # failures are not cached


@needs_nvrtc
def test_include_dir_found():
    d = compiler.include_dir()
    assert d and (Path(d) / "cuda_bf16.h").is_file()


def test_cuda_unusable_error_says_why():
    if mg.cuda_available():
        pytest.skip("CUDA works here")
    with pytest.raises(RuntimeError, match="python -m minigrad.device") as e:
        mg.Tensor([1.0, 2.0], device="cuda")
    assert "unusable" in str(e.value)


def test_pycuda_without_driver_fails_fast(tmp_path):
    """PyCUDA installed but no libcuda: a clear error, before importing pycuda."""
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("this machine has a CUDA driver")
    except OSError:
        pass
    (tmp_path / "pycuda").mkdir()
    (tmp_path / "pycuda" / "__init__.py").write_text("raise ImportError('fake pycuda imported')")
    p = _run_py("""
        from minigrad.backend.cuda import get_backend, CudaUnavailable
        try:
            get_backend()
        except CudaUnavailable as e:
            print("ERR", e)
        """, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert "ERR" in p.stdout and "libcuda" in p.stdout and "fake" not in p.stdout


def test_doctor_reports_every_check():
    p = _run_py("import minigrad.backend.cuda.doctor as d; raise SystemExit(d.main())",
                check=False)
    lines = [ln for ln in p.stdout.splitlines()[1:-1]]
    names = [ln.split()[1] for ln in lines]
    for what in ("pycuda", "cuda-python", "driver", "device", "compiler", "include",
                 "cache", "test"):
        assert what in names, p.stdout
    assert all(ln.startswith(("OK", "FAIL")) for ln in lines), p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == (0 if mg.cuda_available() else 1), p.stdout


def test_python_m_minigrad_device_runs():
    p = subprocess.run([sys.executable, "-m", "minigrad.device"], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert "compiler" in p.stdout and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert p.returncode in (0, 1)


# -- stride arithmetic (pure Python) -------------------------------------------------
@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.1.0",
                    reason="np.reshape(copy=False) needs NumPy 2.1")
def test_views_match_numpy():
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = tuple(int(d) for d in rng.integers(1, 5, rng.integers(0, 5)))
        a = np.arange(int(np.prod(shape)) or 1)[: int(np.prod(shape))].reshape(shape)
        # a random view: permute, slice with steps
        a = a.transpose(rng.permutation(a.ndim))
        a = a[tuple(slice(None, None, int(rng.integers(1, 3))) for _ in range(a.ndim))]
        st = tuple(s // a.itemsize for s in a.strides)
        assert is_contig(a.shape, st) == a.flags.c_contiguous or a.size <= 1
        # collapse keeps the element order of every operand
        dims, (cs,) = collapse(a.shape, [st])
        flat = np.lib.stride_tricks.as_strided(a, dims, [s * a.itemsize for s in cs])
        assert np.array_equal(flat.reshape(-1), a.reshape(-1))
        # reshape without copy where NumPy can
        new = tuple(int(d) for d in rng.permutation(list(a.shape) + [1]))
        rs = reshape_strides(a.shape, st, new)
        try:
            np.reshape(a, new, copy=False)    # NumPy raises if no copy-free view exists
            np_ok = True
        except ValueError:
            np_ok = False
        assert (rs is not None) == np_ok or a.size <= 1, (a.shape, st, new)
        if rs is not None and a.size:
            got = np.lib.stride_tricks.as_strided(a, new, [s * a.itemsize for s in rs])
            assert np.array_equal(got, a.reshape(new))
    assert contig_strides((2, 3, 4)) == (12, 4, 1)


# -- on the GPU ----------------------------------------------------------------------
@pytest.mark.cuda
def test_doctor_all_ok():
    from minigrad.backend.cuda import doctor
    assert doctor.main() == 0


@pytest.mark.cuda
def test_primary_context_shared_with_cuda_python():
    from cuda.bindings import driver as cu
    from minigrad.backend.cuda import get_backend, runtime
    get_backend()
    err, current = cu.cuCtxGetCurrent()
    assert int(err) == 0
    cu.cuInit(0)
    err, dev = cu.cuDeviceGet(runtime.ordinal)
    err, primary = cu.cuDevicePrimaryCtxRetain(dev)
    assert int(err) == 0
    try:
        assert int(current) == int(primary), "PyCUDA's context is not the primary context"
        assert int(current) == int(runtime.context.handle)
    finally:
        cu.cuDevicePrimaryCtxRelease(dev)


@pytest.mark.cuda
def test_memory_pool_statistics():
    from minigrad.backend.cuda import get_backend, runtime
    b = get_backend()
    runtime.synchronize()
    s0 = runtime.memory_stats()
    bufs = [b.from_numpy(np.ones(1 << 20, np.float32)) for _ in range(4)]
    s1 = runtime.memory_stats()
    assert s1["active_bytes"] - s0["active_bytes"] >= 4 * 4 << 20
    assert s1["peak_active_bytes"] >= s1["active_bytes"]
    del bufs
    s2 = runtime.memory_stats()
    assert s2["active_bytes"] == s0["active_bytes"]
    assert s2["held_bytes"] >= 4 * 4 << 20           # kept by the pool for reuse
    again = [b.from_numpy(np.ones(1 << 20, np.float32)) for _ in range(4)]
    assert runtime.memory_stats()["managed_bytes"] == s2["managed_bytes"]   # reused
    del again
    runtime.free_cached()
    assert runtime.memory_stats()["held_bytes"] == 0


@pytest.mark.cuda
def test_copies_roundtrip_every_dtype():
    from minigrad.backend.cuda import get_backend
    from minigrad.dtype import ALL
    b = get_backend()
    rng = np.random.default_rng(1)
    for d in ALL:
        if d.name == "float64":
            continue
        x = (rng.standard_normal((3, 5, 7)) * 50).astype(d.np)
        assert np.array_equal(b.to_numpy(b.from_numpy(x)).view(np.uint8), x.view(np.uint8))
    with pytest.raises(TypeError, match="CPU-only"):
        b.from_numpy(np.ones(3))


@pytest.mark.cuda
def test_second_process_start_compiles_nothing_on_gpu(tmp_path):
    code = """
    import json, numpy as np, minigrad as mg
    from minigrad.backend.cuda import compiler, codegen
    x = mg.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4), device="cuda")
    y = ((x * 2 + 1).exp().sum(axis=1) / 3).numpy()
    assert np.allclose(y, (np.exp(np.arange(12).reshape(3, 4) * 2 + 1).sum(1) / 3), rtol=1e-5)
    print(json.dumps({**compiler.stats, "built": codegen.stats["built"]}))
    """
    first = json.loads(_run_py(code, tmp_path).stdout.splitlines()[-1])
    assert first["compiled"] >= 3 and first["built"] == first["compiled"]
    second = json.loads(_run_py(code, tmp_path).stdout.splitlines()[-1])
    assert second["compiled"] == 0 and second["disk_hits"] == first["compiled"]
    for f in tmp_path.glob("*.cubin"):                 # every entry corrupted: rebuilt
        f.write_bytes(f.read_bytes()[:100])
    third = json.loads(_run_py(code, tmp_path).stdout.splitlines()[-1])
    assert third["compiled"] == first["compiled"] and third["corrupt"] == first["compiled"]


@pytest.mark.cuda
def test_compile_error_on_device_shows_log():
    from minigrad.backend.cuda import runtime
    with pytest.raises(compiler.CompileError, match="identifier \"nope\" is undefined"):
        compiler.compile_to_cubin('extern "C" __global__ void k() { nope(); }',
                                  arch=runtime.arch, name="bad_kernel.cu")


@pytest.mark.cuda
def test_nvcc_fallback(tmp_path):
    """Without NVRTC, nvcc (through PyCUDA) compiles the same kernels."""
    code = """
    import json, numpy as np, minigrad as mg
    from minigrad.backend.cuda import compiler
    assert compiler.compiler_name() == "nvcc"
    x = mg.Tensor(np.arange(5, dtype=np.float32), device="cuda")
    assert np.allclose((x * x).sum().numpy(), 30)
    print(json.dumps(compiler.stats))
    """
    import shutil
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("no nvcc")
    out = json.loads(_run_py(code, tmp_path, env={"MINIGRAD_COMPILER": "nvcc"}
                             ).stdout.splitlines()[-1])
    assert out["compiled"] >= 2


@pytest.mark.cuda
def test_no_warnings_at_exit(tmp_path):
    """The primary context is popped cleanly; freeing buffers at exit prints nothing."""
    p = _run_py("""
        import numpy as np, minigrad as mg
        keep = [mg.Tensor(np.ones(1000, np.float32), device="cuda") * 2 for _ in range(3)]
        mg.realize(*keep)
        """, tmp_path)
    assert "PyCUDA WARNING" not in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.cuda
def test_device_mismatch_names_both():
    a = mg.Tensor([1.0, 2.0], device="cpu")
    b = mg.Tensor([1.0, 2.0], device="cuda")
    with pytest.raises(Exception) as e:
        a + b
    assert "cpu" in str(e.value) and "cuda" in str(e.value)


@pytest.mark.cuda
@pytest.mark.slow
def test_training_loop_memory_is_flat():
    """1,000 steps of a small MLP: the pool's active and held bytes do not grow, and
    the steady state compiles no kernel."""
    from minigrad.backend.cuda import codegen, runtime
    rng = np.random.default_rng(0)
    X = mg.Tensor(rng.standard_normal((64, 32)).astype(np.float32), device="cuda")
    Y = mg.Tensor(rng.integers(0, 10, 64), device="cuda")
    w1 = mg.Tensor(rng.standard_normal((32, 64)).astype(np.float32) * 0.1, device="cuda",
                   requires_grad=True)
    w2 = mg.Tensor(rng.standard_normal((64, 10)).astype(np.float32) * 0.1, device="cuda",
                   requires_grad=True)
    opt = mg.optim.SGD([w1, w2], lr=0.1, momentum=0.9)
    losses, marks = [], {}
    for step in range(1000):
        loss = (X @ w1).relu().matmul(w2).cross_entropy(Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            losses.append(loss.item())
        if step in (20, 999):
            runtime.synchronize()
            marks[step] = (runtime.memory_stats(), codegen.stats["built"])
    (m20, k20), (m999, k999) = marks[20], marks[999]
    print("pool after step 20:", m20, "\npool after step 999:", m999)
    assert m999["active_bytes"] == m20["active_bytes"], (m20, m999)
    # the pool may settle a few small blocks differently; it must not grow with steps
    assert m999["managed_bytes"] - m20["managed_bytes"] <= 64 * 1024, (m20, m999)
    assert k999 == k20, "kernels were built after the warm-up"
    assert losses[-1] < losses[0]
