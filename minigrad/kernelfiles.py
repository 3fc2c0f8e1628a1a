"""Where the CUDA C sources of `kernels/` are, installed or in a checkout.

The repository keeps kernels in the top-level folder `kernels/`; the wheel ships
them as the package `minigrad.kernels` (`minigrad/kernels/*.cu` in site-packages).
Lookup order:
  1. the package `minigrad.kernels` (a wheel install, or an editable install
     whose import hook maps it to the checkout's `kernels/`);
  2. the folder `kernels/` next to the `minigrad/` package (running from a
     checkout with the repository root on `sys.path`, e.g. on the GPU machine).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

_SUFFIXES = (".cu", ".cuh", ".h")


def _candidates():
    try:
        spec = importlib.util.find_spec(__package__ + ".kernels")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        yield from (Path(p) for p in spec.submodule_search_locations)
    here = Path(__file__).resolve().parent
    yield here / "kernels"
    yield here.parent / "kernels"


def kernel_dir() -> Path:
    """The folder holding the kernel sources (usable as an include path for NVRTC)."""
    tried = []
    for d in _candidates():
        if d.is_dir():
            return d
        tried.append(str(d))
    raise FileNotFoundError("minigrad: the CUDA kernel sources were not found; looked in "
                            + ", ".join(tried) + ". Reinstall minigrad or run from a checkout.")


def kernel_names() -> list[str]:
    """File names of all kernel sources and headers, sorted (e.g. 'matmul_tc.cu')."""
    return sorted(p.name for p in kernel_dir().iterdir()
                  if p.is_file() and p.suffix in _SUFFIXES)


def kernel_source(name: str) -> str:
    """The text of one kernel file: `kernel_source("matmul_tc.cu")`; a bare
    `"matmul_tc"` means `"matmul_tc.cu"`."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"kernel_source: {name!r} is not a kernel file name "
                         "(expected e.g. 'matmul_tc.cu')")
    if not name.endswith(_SUFFIXES):
        name += ".cu"
    d = kernel_dir()
    path = d / name
    if not path.is_file():
        raise FileNotFoundError(f"kernel_source: no kernel file {name!r} in {d}; "
                                f"available: {', '.join(kernel_names()) or 'none'}")
    return path.read_text(encoding="utf-8")
