"""Per-op Python overhead, measured without a GPU.

Two numbers, per op, for the eager tiny op of overhead.py (`y = (y * 1.0001).realize()`
on 16 floats) and a few neighbours:

  cpu       the whole op on the NumPy backend, and the NumPy backend's own share
            (`backend.binary` / `backend.full`), so the difference is the frontend
            (Tensor -> Function.apply -> LazyBuffer -> realize)
  cuda stub the CUDA backend's Python path with PyCUDA replaced by stubs (no driver,
            no compile: launches and allocations do nothing), so what is measured is
            the frontend plus the backend's Python (shapes, strides, kernel lookup,
            argument packing with `struct.pack` standing in for PyCUDA's `_pack`)

Usage: python benchmarks/overhead_cpu.py [--profile NAME]   (NAME: a row's key)
"""
from __future__ import annotations

import cProfile
import pstats
import struct
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# -- a fake PyCUDA: enough for runtime.py and backend.py, touching no GPU ----------
def install_fake_pycuda():
    class _Alloc:
        __slots__ = ("ptr",)

        def __init__(self, ptr):
            self.ptr = ptr

        def __int__(self):
            return self.ptr

        def free(self):
            pass

        __index__ = __int__

    class _Pool:
        active_bytes = managed_bytes = active_blocks = held_blocks = 0

        def allocate(self, n):
            return _Alloc(0x10000)

        def free_held(self):
            pass

        def stop_holding(self):
            pass

    class _Function:
        def __init__(self, name):
            self.name = name

        def prepare(self, fmt):
            self.arg_format = fmt

        def _launch_kernel(self, grid, block, args, shared, stream):
            pass

        def set_attribute(self, *a):
            pass

        def get_attribute(self, a):    # registers per thread, static shared memory
            return {4: 128, 1: 0}[a]

    class _Module:
        def get_function(self, name):
            return _Function(name)

    class _Device:
        @staticmethod
        def count():
            return 1

        def __init__(self, ordinal):
            pass

        def retain_primary_context(self):
            return types.SimpleNamespace(push=lambda: None, pop=lambda: None)

        def compute_capability(self):
            return (9, 0)

        def name(self):
            return "fake GPU (stubbed PyCUDA)"

        def get_attribute(self, a):    # an H100's / H200's numbers
            return {"MULTIPROCESSOR_COUNT": 132, "MAX_REGISTERS_PER_MULTIPROCESSOR": 65536,
                    "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR": 233472,
                    "MAX_THREADS_PER_MULTIPROCESSOR": 2048,
                    "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN": 232448}[a]

    class _Stream:
        def synchronize(self):
            pass

        def wait_for_event(self, event):
            pass

    class _Event:
        def __init__(self, flags=0):
            pass

        def record(self, stream=None):
            pass

    nop = lambda *a, **k: None  # noqa: E731
    drv = types.ModuleType("pycuda.driver")
    drv.init, drv.Device, drv.Stream, drv.Function = nop, _Device, _Stream, _Function
    drv.Event, drv.event_flags = _Event, types.SimpleNamespace(DISABLE_TIMING=2)
    drv.Error = drv.MemoryError = RuntimeError
    drv.device_attribute = types.SimpleNamespace(**{a: a for a in (
        "MULTIPROCESSOR_COUNT", "MAX_REGISTERS_PER_MULTIPROCESSOR",
        "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR", "MAX_THREADS_PER_MULTIPROCESSOR",
        "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN")})
    drv.function_attribute = types.SimpleNamespace(MAX_DYNAMIC_SHARED_SIZE_BYTES=8,
                                                   NUM_REGS=4, SHARED_SIZE_BYTES=1)
    drv.memcpy_htod_async = drv.memcpy_dtoh_async = drv.memcpy_dtod_async = nop
    drv.memset_d8_async = drv.memset_d8 = drv.memcpy_dtoh = nop
    drv.mem_alloc = lambda n: _Alloc(0x20000)
    drv.mem_get_info = lambda: (0, 0)
    drv.module_from_buffer = lambda cubin: _Module()
    pvt = types.ModuleType("pycuda._pvt_struct")
    pvt.pack = struct.pack
    tools = types.ModuleType("pycuda.tools")
    tools.DeviceMemoryPool, tools.clear_context_caches = _Pool, nop
    pkg = types.ModuleType("pycuda")
    pkg.driver, pkg._pvt_struct, pkg.tools = drv, pvt, tools
    sys.modules.update({"pycuda": pkg, "pycuda.driver": drv, "pycuda._pvt_struct": pvt,
                        "pycuda.tools": tools})

    from minigrad.backend.cuda import codegen, compiler, ops_matmul
    compiler.compile_to_cubin = lambda *a, **k: b""
    # the driver's tensor-map encoder accepts every map (zeros), so that the async matmuls
    # take the sm_90 TMA launchers, as on the GPU, not the cp.async fallback
    ops_matmul._LIBCUDA = types.SimpleNamespace(cuTensorMapEncodeTiled=lambda *a: 0)
    import minigrad.backend.cuda as cuda_pkg
    from minigrad import device
    from minigrad.backend.cuda.backend import CudaBackend
    cuda_pkg._backend = device._backends["cuda"] = CudaBackend()
    cuda_pkg._backend.tma_param_pad = 48     # (read from the cubin on the GPU)
    return codegen


# -- timing ---------------------------------------------------------------------
def per_op_us(fn, n, reps=15):
    """The best of `reps` runs, per op, in CPU time of this thread (on a busy machine
    wall time counts other processes too; on an idle one the two agree)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        times.append((time.thread_time() - t0) / n * 1e6)
    return min(times)


def cases(mg, device, n=2000):
    from minigrad.device import get_backend
    b = get_backend(device)
    rng = np.random.default_rng(0)
    x = mg.Tensor(rng.standard_normal(16).astype(np.float32), device=device).realize()
    y2 = mg.Tensor(rng.standard_normal(16).astype(np.float32), device=device).realize()
    xb, yb = x.lazydata.realized, y2.lazydata.realized
    cb = b.full((16,), 1.0001, x.dtype)
    w = mg.Tensor(rng.standard_normal((8, 16)).astype(np.float32), device=device).realize()

    def eager():
        y = x
        for _ in range(n):
            y = (y * 1.0001).realize()

    def lazy_chain():
        y = x
        for _ in range(n):
            y = y * 1.0001
        y.realize()

    def add():
        for _ in range(n):
            (x + y2).realize()

    def build_only():          # graph building, nothing run
        for _ in range(n):
            x * 1.0001

    def backend_mul():
        y = xb
        for _ in range(n):
            y = b.binary("mul", y, cb)

    def backend_full_mul():    # what the eager op asks of the backend: full + binary
        y = xb
        for _ in range(n):
            y = b.binary("mul", y, b.full((16,), 1.0001, x.dtype))

    def backend_add():
        for _ in range(n):
            b.binary("add", xb, yb)

    def bcast_add():           # (8,16) + (16,): expand path
        for _ in range(n):
            (w + x).realize()

    def sum_():
        for _ in range(n):
            w.sum(1).realize()

    def matmul():
        for _ in range(n):
            (w @ w.T).realize()

    return {"eager": eager, "lazy": lazy_chain, "add": add, "build": build_only,
            "be_mul": backend_mul, "be_full_mul": backend_full_mul, "be_add": backend_add,
            "bcast_add": bcast_add, "sum": sum_, "matmul": matmul}, n


def main():
    prof = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else None
    install_fake_pycuda()
    import minigrad as mg
    results = {}
    for device in ("cpu", "cuda"):
        cs, n = cases(mg, device)
        for name, fn in cs.items():
            results[(device, name)] = per_op_us(fn, n)
        if prof and device == ("cuda" if not prof.startswith("cpu:") else "cpu"):
            key = prof.split(":")[-1]
            pr = cProfile.Profile()
            pr.enable()
            cs[key]()
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(25)
    print(f"{'case':<12} {'cpu (numpy) us/op':>18} {'cuda (stubbed) us/op':>21}")
    for name in cs:
        print(f"{name:<12} {results[('cpu', name)]:>18.2f} {results[('cuda', name)]:>21.2f}")
    fe_cpu = results[("cpu", "eager")] - results[("cpu", "be_full_mul")]
    fe_cuda = results[("cuda", "eager")] - results[("cuda", "be_full_mul")]
    print(f"\nfrontend share of the eager op (eager - be_full_mul): cpu {fe_cpu:.2f} us, "
          f"cuda stub {fe_cuda:.2f} us")
    print(f"stubbed CUDA backend, binary mul alone: {results[('cuda', 'be_mul')]:.2f} us; "
          f"eager op total (Python, no driver): {results[('cuda', 'eager')]:.2f} us")


if __name__ == "__main__":
    main()
