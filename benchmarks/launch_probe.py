"""Where the host time of one small CUDA op goes, piece by piece (GPU machine).

Each row is a Python loop of n iterations that ends with a device synchronize,
divided by n; the median of 5 repetitions. The kernel is a one-line `o = a * b` on 16
floats (GPU time ~2 us, shorter than any row), so the rows measure host cost:

  loop                      an empty Python loop (the floor)
  pool alloc+free           PyCUDA DeviceMemoryPool.allocate(64) and its release
  backend.empty             minigrad's allocation of a 16-float buffer and its release
  pack args                 packing the kernel's arguments (PyCUDA's struct)
  runtime.launch            minigrad's launch (pack + PyCUDA's _launch_kernel)
  PyCUDA ...                PyCUDA's own launch paths on the same cubin
  cuda.bindings / ctypes    the driver's cuLaunchKernel without PyCUDA (a module
                            loaded through cuda-python, arguments as a prebuilt void**)
  backend.binary            minigrad's CUDA backend (alloc + kernel lookup + launch)
  eager op                  `(y * 1.0001).realize()` through the whole stack
  torch eager mul           PyTorch `y * 1.0001`, for scale

Then cProfile of the eager op loop (top functions by own time).
Usage: python benchmarks/launch_probe.py
"""
from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import minigrad as mg  # noqa: E402
from common import HAVE_TORCH, torch  # noqa: E402


def per_iter_us(body, n=5000, reps=5):
    from minigrad.backend.cuda import runtime
    body(100)
    runtime.synchronize()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        body(n)
        runtime.synchronize()
        out.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(out)


def main():
    x = mg.Tensor(np.random.default_rng(0).standard_normal(16).astype(np.float32), device="cuda")
    x.realize()
    be = mg.device.get_backend("cuda")
    from minigrad.backend.cuda import compiler, runtime
    import pycuda.driver as drv
    from pycuda._pvt_struct import pack
    a = be.from_numpy(np.full(16, 2.0, np.float32))
    b = be.from_numpy(np.full(16, 3.0, np.float32))
    out = be.empty((16,), a.dtype)
    src = ('extern "C" __global__ void probe_mul(long long n, float* o, const float* a, '
           'const float* b) { long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; '
           'if (i < n) o[i] = a[i] * b[i]; }')
    cubin = compiler.compile_to_cubin(src, runtime.arch, name="probe.cu")
    fmt, args = "qPPP", [16, out.ptr, a.ptr, b.ptr]
    kern = runtime.get_function(runtime.load_module(cubin), "probe_mul", fmt)
    pyc = drv.module_from_buffer(cubin).get_function("probe_mul")
    pyc.prepare(fmt)
    packed = pack(fmt, *args)
    stream = runtime.stream
    rows = []

    def loop(n):
        for _ in range(n):
            pass
    rows.append(("loop", per_iter_us(loop)))

    def alloc(n):
        p = runtime.pool
        for _ in range(n):
            p.allocate(64)
    rows.append(("pool alloc+free", per_iter_us(alloc)))

    def ralloc(n):
        for _ in range(n):
            be.empty((16,), a.dtype)
    rows.append(("backend.empty (alloc + CudaBuffer) + free", per_iter_us(ralloc)))

    def do_pack(n):
        for _ in range(n):
            pack(fmt, *args)
    rows.append(("pack args (PyCUDA _pvt_struct)", per_iter_us(do_pack)))

    def rl(n):
        for _ in range(n):
            runtime.launch(kern, 1, 256, args)
    runtime.memset(out.ptr, 0xFF, 64)
    rows.append(("runtime.launch (" + type(kern).__name__ + ")", per_iter_us(rl)))
    res = runtime.dtoh(np.empty(16, np.float32), out.ptr)
    print("runtime.launch result ok:", bool(np.all(res == 6.0)))

    def lk(n):
        f = pyc._launch_kernel
        for _ in range(n):
            f((1, 1, 1), (256, 1, 1), packed, 0, stream)
    rows.append(("PyCUDA _launch_kernel (pre-packed)", per_iter_us(lk)))

    def lkp(n):
        f = pyc._launch_kernel
        for _ in range(n):
            f((1, 1, 1), (256, 1, 1), pack(fmt, *args), 0, stream)
    rows.append(("PyCUDA pack + _launch_kernel", per_iter_us(lkp)))

    def pac(n):
        for _ in range(n):
            pyc.prepared_async_call((1, 1), (256, 1, 1), stream, *args)
    rows.append(("PyCUDA prepared_async_call", per_iter_us(pac)))

    # the driver's cuLaunchKernel without PyCUDA, on a module loaded through the same
    # binding: arguments as a void** array built once (what a launcher could cache)
    import ctypes
    holders = [ctypes.c_int64(16), ctypes.c_uint64(out.ptr), ctypes.c_uint64(a.ptr),
               ctypes.c_uint64(b.ptr)]
    params = (ctypes.c_void_p * 4)(*[ctypes.addressof(h) for h in holders])
    addr = ctypes.addressof(params)
    shandle = stream.handle
    try:
        from cuda.bindings import driver as cbd
        err, mod = cbd.cuModuleLoadData(cubin)
        err, cfn = cbd.cuModuleGetFunction(mod, b"probe_mul")
        cst = cbd.CUstream(shandle)

        def cb(n):
            L = cbd.cuLaunchKernel
            for _ in range(n):
                L(cfn, 1, 1, 1, 256, 1, 1, 0, cst, addr, 0)
        rows.append(("cuda.bindings cuLaunchKernel (void** prebuilt)", per_iter_us(cb)))
        vals = (16, out.ptr, a.ptr, b.ptr)
        types = (ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64)

        def cbt(n):
            L = cbd.cuLaunchKernel
            for _ in range(n):
                L(cfn, 1, 1, 1, 256, 1, 1, 0, cst, (vals, types), 0)
        rows.append(("cuda.bindings cuLaunchKernel (args tuple, packed per call)",
                     per_iter_us(cbt)))
        raw = pack(fmt, *args)
        pbuf = ctypes.create_string_buffer(raw, len(raw))
        psize = ctypes.c_size_t(len(raw))
        extra = (ctypes.c_void_p * 5)(1, ctypes.addressof(pbuf), 2, ctypes.addressof(psize), 0)
        eaddr = ctypes.addressof(extra)

        def cbe(n):
            L = cbd.cuLaunchKernel
            for _ in range(n):
                L(cfn, 1, 1, 1, 256, 1, 1, 0, cst, 0, eaddr)
        try:
            rows.append(("cuda.bindings cuLaunchKernel (extra: packed buffer)",
                         per_iter_us(cbe)))
        except Exception as e:     # noqa: BLE001 - a probe: report and go on
            print("cuda.bindings with extra= failed:", repr(e))
        fh = int(cfn)
        for libname, loader in (("CDLL", ctypes.CDLL), ("PyDLL", ctypes.PyDLL)):
            lib = loader("libcuda.so.1")
            L = lib.cuLaunchKernel
            L.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
            L.restype = ctypes.c_int

            def ct(n, L=L):
                for _ in range(n):
                    L(fh, 1, 1, 1, 256, 1, 1, 0, shandle, addr, None)
            rows.append((f"ctypes.{libname} cuLaunchKernel (void** prebuilt)", per_iter_us(ct)))
    except Exception as e:     # noqa: BLE001 - a probe: report and go on
        print("raw driver launch failed:", repr(e))

    be.binary("mul", a, b)

    def bb(n):
        for _ in range(n):
            be.binary("mul", a, b)
    rows.append(("backend.binary", per_iter_us(bb)))

    def eager(n):
        y = x
        for _ in range(n):
            y = (y * 1.0001).realize()
    rows.append(("eager op (whole stack)", per_iter_us(eager, n=2000)))

    if HAVE_TORCH:
        t = torch.randn(16, device="cuda")

        def tm(n):
            y = t
            for _ in range(n):
                y = y * 1.0001
            torch.cuda.synchronize()
        rows.append(("torch eager mul", per_iter_us(tm)))

    print("\n| piece | us per iteration |\n|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")

    pr = cProfile.Profile()
    pr.enable()
    eager(3000)
    runtime.synchronize()
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()
