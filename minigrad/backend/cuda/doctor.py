"""`python -m minigrad.device`: one line per check, OK or why it failed.

Checks: Python packages, driver and CUDA versions, device and compute capability,
compiler (NVRTC or nvcc), CUDA include dir, kernel cache dir, and a tiny kernel
compiled, launched and checked. Returns 0 when everything works, else 1. Runs
(and reports) on machines without a GPU too.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys

TEST_KERNEL = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
extern "C" __global__ void mg_doctor(float* out, const float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __bfloat162float(__float2bfloat16_rn(2.0f * x[i])) + __half2float(__float2half(1.0f));
}
"""


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _line(ok, what, detail, out):
    out.append(ok)
    print(f"{'OK  ' if ok else 'FAIL'}  {what:<18} {detail}", flush=True)


def main(argv=None) -> int:
    results = []
    print(f"minigrad CUDA doctor (python {sys.version.split()[0]})")

    # 1. packages
    pyc = _version("pycuda") if importlib.util.find_spec("pycuda") else None
    cp = _version("cuda-python") or _version("cuda-bindings")
    bind = importlib.util.find_spec("cuda") is not None and _version("cuda-bindings")
    _line(bool(pyc), "pycuda", pyc or "not installed: pip install 'minigrad[cuda]'", results)
    from . import compiler
    nvcc_ok = compiler.nvcc_version() is not None
    _line(bool(cp) or nvcc_ok, "cuda-python", f"{cp} (cuda-bindings {bind})" if cp else
          "not installed: no NVRTC (pip install cuda-python nvidia-cuda-nvrtc)" +
          ("; nvcc will be used" if nvcc_ok else ""), results)

    # 2-3. driver, device
    drv = dev = None
    if pyc:
        try:
            import pycuda.driver as drv
            drv.init()
            v = drv.get_driver_version()
            built = ".".join(map(str, drv.get_version()))
            _line(True, "driver", f"CUDA driver {v // 1000}.{v % 1000 // 10}; PyCUDA built "
                  f"for CUDA {built}", results)
        except Exception as e:
            drv = None
            _line(False, "driver", f"{type(e).__name__}: {e}", results)
    else:
        _line(False, "driver", "not checked (needs pycuda)", results)
    if drv is not None:
        try:
            if drv.Device.count() == 0:
                raise RuntimeError("the driver sees no GPU")
            dev = drv.Device(int(os.environ.get("MINIGRAD_CUDA_DEVICE", "0")))
            cc = dev.compute_capability()
            mem = dev.total_memory() / 2 ** 30
            _line(True, "device", f"{dev.name()}, compute capability {cc[0]}.{cc[1]} "
                  f"(sm_{cc[0]}{cc[1]}), {mem:.0f} GiB", results)
        except Exception as e:
            dev = None
            _line(False, "device", f"{type(e).__name__}: {e}", results)
    else:
        _line(False, "device", "no driver", results)

    # 4-6. compiler, include dir, cache (no GPU needed)
    name = compiler.compiler_name()
    _line(name != "none", "compiler", compiler.describe_compiler() if name != "none" else
          "neither NVRTC (pip install cuda-python nvidia-cuda-nvrtc) nor nvcc found", results)
    inc = compiler.include_dir()
    _line(inc is not None, "include dir", inc or "cuda_fp16.h not found: set CUDA_HOME or "
          "pip install nvidia-cuda-runtime", results)
    cdir = compiler.cache_dir()
    try:
        cdir.mkdir(parents=True, exist_ok=True)
        probe = cdir / f".probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        n = len(list(cdir.glob("*.cubin")))
        _line(True, "cache dir", f"{cdir} ({n} kernels; MINIGRAD_CACHE_DIR overrides)", results)
    except OSError as e:
        _line(False, "cache dir", f"{cdir} is not writable: {e}", results)

    # 7. a test kernel: compiled (even without a GPU), then launched and checked
    arch = "sm_%d%d" % dev.compute_capability() if dev is not None else "sm_90"
    try:
        cubin = compiler.compile_to_cubin(TEST_KERNEL, arch=arch, name="mg_doctor.cu")
        compiled = f"compiled for {arch} ({len(cubin)} bytes)"
    except Exception as e:
        cubin, compiled = None, None
        _line(False, "test kernel", f"compile for {arch} failed: {e}", results)
    if cubin is not None and dev is None:
        _line(False, "test kernel", f"{compiled}; not run (no GPU)", results)
    elif cubin is not None:
        try:
            import numpy as np
            from .runtime import alloc, dtoh, get_function, htod, launch, load_module, synchronize
            n = 1000
            x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
            dx, dy = alloc(4 * n), alloc(4 * n)
            htod(int(dx), x)
            f = get_function(load_module(cubin), "mg_doctor", "PPi")
            launch(f, (n + 127) // 128, 128, [int(dy), int(dx), n])
            synchronize()
            y = dtoh(np.empty(n, np.float32), int(dy))
            import ml_dtypes
            ref = (2 * x).astype(ml_dtypes.bfloat16).astype(np.float32) + 1
            err = float(np.max(np.abs(y - ref)))
            _line(err == 0, "test kernel", f"{compiled}, launched, result "
                  f"{'matches' if err == 0 else f'WRONG (max error {err})'}", results)
        except Exception as e:
            _line(False, "test kernel", f"{compiled}; launch failed: {type(e).__name__}: {e}",
                  results)

    ok = all(results)
    print("all checks passed: device='cuda' works" if ok else
          "some checks failed: device='cuda' is unusable here; device='cpu' works")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
