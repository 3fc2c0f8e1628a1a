"""Stand-ins for a CUDA device buffer and a loaded kernel, shared by the emulated host-rule
tests (test_matmul_tc.py, test_quant.py): each file's `_FakeGPU` hands these to the
minigrad.backend.cuda host code, which only reads their pointers, shapes and strides, so
the host side runs on a CPU against a NumPy byte arena. Not a test module (no `test_`
prefix): pytest does not collect it; the test files import it from this folder."""
import math

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
