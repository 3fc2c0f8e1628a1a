"""minigrad: a small, readable autodiff framework (lazy tensors, reverse-mode autodiff,
a NumPy backend that runs anywhere and a CUDA backend of hand-written kernels)."""
from . import autograd
from .autograd import enable_grad, no_grad
from .device import cuda_available, default_device, synchronize
from .dtype import (DType, bfloat16, bool_, float16, float32, float64, int8, int32, int64,
                    uint32)
from .gradcheck import gradcheck
from .jit import jit
from .tensor import Tensor, manual_seed, realize

bool = bool_  # noqa: A001  (mg.bool, as in the API)

__version__ = "0.1.0"


def __getattr__(name):
    # nn, optim, ops, quant load on first use, keeping `import minigrad` light
    import importlib
    if name in ("nn", "optim", "ops", "quant"):
        return importlib.import_module(f".{name}", __name__)
    if name in ("save", "load"):
        return getattr(importlib.import_module(".state", __name__), name)
    raise AttributeError(f"module 'minigrad' has no attribute {name!r}")
