"""Devices: the names "cpu" and "cuda", the default device, and their backends.

The CUDA backend is imported the first time a CUDA device is touched, never at
`import minigrad`, so the CPU path needs no CUDA package.
`python -m minigrad.device` prints what works on this machine.
"""
from __future__ import annotations

import os

_backends: dict = {}
_cuda_error: str | None = None


def canonical(device) -> str:
    """'cpu' or 'cuda'; None means the default device."""
    if device is None:
        return default_device()
    d = str(device).lower()
    if d == "cpu":
        return "cpu"
    if d in ("cuda", "cuda:0", "gpu"):
        return "cuda"
    raise ValueError(f"device: {device!r} is not a device; use 'cpu' or 'cuda' ('cuda:0')")


def get_backend(device: str):
    """The backend object of a canonical device name (created once)."""
    backend = _backends.get(device)     # (one lookup: this runs for every op)
    if backend is not None:
        return backend
    if device == "cpu":
        from ..backend.numpy import NumpyBackend
        _backends["cpu"] = NumpyBackend()
    else:
        _backends["cuda"] = _load_cuda()
    return _backends[device]


def _load_cuda():
    global _cuda_error
    try:
        from ..backend.cuda import get_backend as cuda_backend
        return cuda_backend()
    except Exception as e:  # any reason: no driver, no pycuda, no GPU, ...
        _cuda_error = f"{type(e).__name__}: {e}"
        raise RuntimeError(
            f"device 'cuda' is unusable here ({_cuda_error}). "
            "Run `python -m minigrad.device` to see what works, or use device='cpu'.") from e


def cuda_available() -> bool:
    """True when the CUDA backend starts; never raises."""
    if "cuda" in _backends:
        return True
    if _cuda_error is not None:
        return False
    try:
        get_backend("cuda")
        return True
    except Exception:
        return False


def default_device() -> str:
    """MINIGRAD_DEVICE if set, else "cuda" when it works, else "cpu"."""
    env = os.environ.get("MINIGRAD_DEVICE")
    if env:
        return canonical(env)
    return "cuda" if cuda_available() else "cpu"


def synchronize():
    """Wait for all queued GPU work (a no-op on CPU)."""
    for b in list(_backends.values()):
        b.synchronize()

