"""The CUDA backend: PyCUDA runtime + NVRTC-compiled kernels.

Nothing here is imported by `import minigrad`; `minigrad.device` calls
`get_backend()` the first time the "cuda" device is touched.

    runtime.py   context, stream, memory pool, copies, launches (PyCUDA)
    compiler.py  CUDA C -> cubin with NVRTC (nvcc fallback) and a disk cache; no GPU needed
    codegen.py   the primitive kernels, generated from small templates
    backend.py   CudaBackend: the backend contract on strided device buffers
    views.py     stride arithmetic (collapse dims, copy-free reshape); pure Python
    doctor.py    `python -m minigrad.device`: what works here and what does not
"""
from __future__ import annotations

import importlib.util

_backend = None


class CudaUnavailable(RuntimeError):
    """CUDA cannot be used here; the message says why."""


def _check_cheaply():
    """Fail fast, without importing PyCUDA, on machines that cannot work."""
    if importlib.util.find_spec("pycuda") is None:
        raise CudaUnavailable("PyCUDA is not installed (pip install 'minigrad[cuda]')")
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")   # the driver, as PyCUDA will load it (~1 ms)
    except OSError:
        raise CudaUnavailable("no CUDA driver (libcuda.so.1 cannot be loaded): this machine "
                              "has no usable NVIDIA GPU") from None


def get_backend():
    """The CudaBackend (started once). Raises CudaUnavailable saying why CUDA is
    unusable: no PyCUDA, no driver, no device, a driver error."""
    global _backend
    if _backend is not None:
        return _backend
    _check_cheaply()
    try:
        from . import runtime  # noqa: F401  (starts CUDA: context, stream, pool)
    except ImportError as e:      # pycuda present, but libcuda.so missing
        raise CudaUnavailable(f"PyCUDA could not load the CUDA driver: {e}") from e
    except Exception as e:        # pycuda.driver.Error, no device, ...
        raise CudaUnavailable(f"CUDA failed to start: {type(e).__name__}: {e}") from e
    from .backend import CudaBackend
    _backend = CudaBackend()
    return _backend
