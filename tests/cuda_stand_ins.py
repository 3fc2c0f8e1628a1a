"""Stand-ins for a CUDA device buffer and a loaded kernel, shared by the emulated host-rule
tests (test_matmul_tc.py, test_quant.py): each file's `_FakeGPU` hands these to the
minigrad.backend.cuda host code, which only reads their pointers, shapes and strides, so
the host side runs on a CPU against a NumPy byte arena. Not a test module (no `test_`
prefix): pytest does not collect it; the test files import it from this folder. Also the
runner of stubbed-PyCUDA subprocesses (test_jit.py, test_attention.py)."""
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from minigrad.backend.cuda.views import contig_strides, is_contig


class FakeBuf:
    """What the host code reads of a CudaBuffer: pointer, shape, element strides, views."""
    def __init__(self, base, shape, dtype, strides=None, offset=0):
        self.alloc = self.base = base
        self.shape, self.dtype, self.offset = tuple(shape), dtype, offset
        self.strides = contig_strides(self.shape) if strides is None else tuple(strides)
        self.contig = is_contig(self.shape, self.strides)
        self.size = math.prod(self.shape)

    ptr = property(lambda self: self.base + self.offset * self.dtype.itemsize)
    ndim = property(lambda self: len(self.shape))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def view(self, shape, strides, offset=None):
        return FakeBuf(self.base, shape, self.dtype, strides,
                       self.offset if offset is None else offset)


class FakeFn:
    """A kernel as the runtime returns it; `launch` checks smem against `max_smem`
    (48 KB until `set_max_dynamic_shared` raises it, as on the device)."""
    def __init__(self, file, entry, fmt):
        self.file, self.entry, self.fmt, self.max_smem = file, entry, fmt, 48 * 1024


# A subprocess with PyCUDA replaced by benchmarks/overhead_cpu.py's stubs (so the stubs never
# meet the rest of the suite); `log` collects every launch as (kernel, grid, block, non-pointer
# arguments, stream) and every stream wait as ("wait", stream).
STUB_PRELUDE = """
import struct, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from overhead_cpu import install_fake_pycuda
install_fake_pycuda()
import numpy as np
import minigrad as mg
from minigrad.backend.cuda import runtime

log = []
def logged(self, grid, block, args, shared, stream):
    vals = struct.unpack(self.arg_format, args)       # pointers differ run to run: drop them
    name = "adamw" if "adamw" in self.name else self.name   # (in-place variant under jit)
    log.append((name, tuple(grid), tuple(block),
                tuple(v for c, v in zip(self.arg_format, vals) if c != "P"),
                "side" if stream is runtime.side_stream else "main"))
runtime.drv.Function._launch_kernel = logged
# runtime.fork() makes the side stream wait for the main one, join() the reverse
runtime.drv.Stream.wait_for_event = lambda self, event: log.append(
    ("wait", "side" if self is runtime.side_stream else "main"))
"""


def run_stubbed(body: str, env=None) -> str:
    """Run STUB_PRELUDE + `body` (dedented) with MINIGRAD_DEVICE=cuda; its stdout."""
    root = Path(__file__).resolve().parents[1]
    code = STUB_PRELUDE.format(root=str(root), bench=str(root / "benchmarks")) + \
        textwrap.dedent(body)
    env = {**os.environ, "MINIGRAD_DEVICE": "cuda", **(env or {})}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout
