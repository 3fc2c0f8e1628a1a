"""CudaBackend: the backend contract (minigrad/backend/__init__.py) on the GPU.

A buffer is a `CudaBuffer`: a pooled device allocation plus shape, strides and
offset in elements. Movement ops (reshape, permute, expand, shrink, and `full`)
make views without copying where they can; every kernel reads strided views, so
broadcasting is stride 0 and copies happen only where a dense layout is needed
(`contiguous`, `to_numpy`, a reshape that no strides can express).
Buffers are never written after the op that made them, so views can share memory.

The kernels come from codegen.py; this file only works out shapes, strides and
launch sizes.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from .. import const_key
from ...dtype import DType, bfloat16, bool_, float16, float32, int64, to_dtype
from . import codegen as cg
from . import compiler
from . import ops_attention, ops_matmul, ops_quant, runtime
from .views import collapse, contig_strides, is_contig, needs_idx64, reshape_strides

_BLOCK = 256
_PER_BLOCK = _BLOCK * cg.UNROLL   # elements per block of an elementwise kernel
_I32 = 2 ** 31 - 1
POISON = os.environ.get("MINIGRAD_CUDA_POISON") == "1"   # NaN/-1-fill new buffers (tests)


_DENSE: dict = {}     # shape -> (C-contiguous strides, size) (shapes repeat in a training loop)


def _dense_layout(shape):
    """(C-contiguous strides, number of elements) of `shape` (a tuple), cached."""
    lay = _DENSE.get(shape)
    if lay is None:
        if len(_DENSE) > 10000:
            _DENSE.clear()
        lay = _DENSE[shape] = (contig_strides(shape), math.prod(shape))
    return lay


def _dense_strides(shape):
    return _dense_layout(shape)[0]


_STRIDED: dict = {}   # (shape, strides of out and ins) -> _ew's (dims, flat strides, idx64)


def _strided_layout(out, ins):
    """The collapsed dims, every operand's strides over them (flat, operand after
    operand) and whether offsets need 64 bits, for an elementwise op on strided views;
    cached, since a training loop meets the same few layouts at every step."""
    key = (out.shape, out.strides, *[x.strides for x in ins])
    lay = _STRIDED.get(key)
    if lay is None:
        if len(_STRIDED) > 10000:
            _STRIDED.clear()
        dims, sts = collapse(out.shape, [out.strides] + [x.strides for x in ins])
        lay = _STRIDED[key] = (tuple(dims), [s for st in sts for s in st],
                               needs_idx64(out.size, dims, sts))
    return lay


class CudaBuffer:
    """A strided view of device memory. `ptr` is the address of element 0 (kept as an
    attribute: launchers read it for every operand)."""
    __slots__ = ("alloc", "base", "shape", "strides", "offset", "dtype", "contig", "size", "ptr")

    def __init__(self, alloc, base, shape: tuple, dtype: DType, strides=None, offset=0):
        self.alloc, self.base, self.dtype, self.shape, self.offset = alloc, base, dtype, shape, offset
        self.ptr = base + offset * dtype.itemsize if offset else base
        if strides is None:
            self.strides, self.size = _DENSE.get(shape) or _dense_layout(shape)
            self.contig = True
        else:
            self.strides = tuple(strides)
            self.contig = is_contig(shape, self.strides)
            self.size = math.prod(shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def view(self, shape, strides, offset=None) -> "CudaBuffer":
        return CudaBuffer(self.alloc, self.base, tuple(shape), self.dtype, strides,
                          self.offset if offset is None else offset)

    def __repr__(self):
        return (f"CudaBuffer({self.shape}, {self.dtype.name}, strides={self.strides}, "
                f"offset={self.offset}, ptr={self.ptr:#x})")


def _shrink(x: CudaBuffer, slices) -> CudaBuffer:
    """The view x[start:stop:step, ...] (NumPy slice semantics, negative steps too)."""
    shape, strides, off = [], [], x.offset
    for (start, stop, step), d, s in zip(slices, x.shape, x.strides):
        start, stop, step = slice(start, stop, step).indices(d)
        n = len(range(start, stop, step))
        if n:
            off += start * s
        shape.append(n)
        strides.append(s * step)
    return x.view(shape, strides, off)


_COMPARISONS = frozenset(("lt", "le", "gt", "ge", "eq", "ne"))


def _acc_dtype(dt: DType) -> DType:
    return float32 if dt.is_float else int64


class CudaBackend:
    name = "cuda"

    def __init__(self):
        self.kernels = {}            # name -> fn(*bufs, **params): the twelve ops
        self._warned = set()
        self._modules, self._functions = {}, {}
        self._consts = {}            # (dtype, const_key(value)) -> one-element buffer, for `full`
        self._full_views = {}        # (dtype, const_key(value), shape) -> its stride-0 view
        self._reduce_plans = {}      # (op, axes, shape, strides, dtypes) -> _reduce_plan()
        self._ew_fns = {}            # elementwise kernels by (expr, dtypes, ..., ndim, idx64)
        self.device_name, self.arch = runtime.name, runtime.arch
        ops_matmul.register(self)
        ops_quant.register(self)
        ops_attention.register(self)

    # -- buffers ------------------------------------------------------------------
    def empty(self, shape, dtype: DType) -> CudaBuffer:
        shape = shape if type(shape) is tuple else tuple(int(d) for d in shape)
        nbytes = (_DENSE.get(shape) or _dense_layout(shape))[1] * dtype.itemsize
        a = runtime.alloc(nbytes)
        if POISON:
            runtime.memset(int(a), 0xFF, nbytes)
        return CudaBuffer(a, int(a), shape, dtype)

    def from_numpy(self, arr) -> CudaBuffer:
        arr = np.asarray(arr)
        dt = to_dtype(arr.dtype)
        if dt.name not in cg.CTYPE:
            raise TypeError(f"device 'cuda': dtype {dt.name} is CPU-only; cast first, "
                            "e.g. .to(mg.float32)")
        buf = self.empty(arr.shape, dt)
        runtime.htod(buf.ptr, np.ascontiguousarray(arr, dtype=dt.np))
        return buf

    def to_numpy(self, buf: CudaBuffer) -> np.ndarray:
        x = self._dense(buf)
        return runtime.dtoh(np.empty(x.shape, dtype=x.dtype.np), x.ptr)

    def synchronize(self):
        runtime.synchronize()

    def memory_stats(self) -> dict:
        return runtime.memory_stats()

    def flash_attention_fits(self, head_dim: int) -> bool:
        """The flash ops' kernels (forward and backward) fit this card's shared memory."""
        return ops_attention.flash_fits(head_dim)

    # -- the elementwise engine ---------------------------------------------------
    def _ew(self, expr, out: CudaBuffer, ins=(), scalars=(), replay_scalars=None):
        """out[...] = expr(ins[...]) over equal shapes; scalars: (ctype, value).
        replay_scalars: while mg.jit captures, a callable giving the scalars' values
        for a replay (see runtime.launch)."""
        n = out.size
        if n == 0:
            return out
        # one loop over the operands, no comprehensions: a tiny op's cost here is all
        # Python (args: n, out, in0.., c0.., dims[1:], then every operand's strides)
        args, key, strides = [n, out.ptr], [expr, out.dtype], [1]
        flat = out.contig   # the common case: dense operands and broadcast scalars (stride 0)
        for x in ins:
            args.append(x.ptr)
            key.append(x.dtype)
            if flat:
                if x.contig:
                    strides.append(1)
                elif any(x.strides):
                    flat = False
                else:
                    strides.append(0)
        for ctype, value in scalars:
            key.append(ctype)
            args.append(value)
        if flat:
            ndim, idx64 = 1, n > _I32
        else:
            dims, strides, idx64 = _strided_layout(out, ins)
            ndim = len(dims)
            args += dims[1:]
        key = (*key, ndim, idx64)
        fn = self._ew_fns.get(key)
        if fn is None:
            fn = self._ew_fns[key] = cg.elementwise(
                expr, out.dtype, [x.dtype for x in ins], tuple(t for t, _ in scalars),
                ndim, idx64)
        args += strides
        replay = None
        if replay_scalars is not None and runtime.capture is not None:
            k = 2 + len(ins)
            replay = lambda: args[:k] + list(replay_scalars()) + args[k + len(scalars):]  # noqa: E731
        runtime.launch(fn, min(-(-n // _PER_BLOCK), 1 << 20), _BLOCK, args, replay_args=replay)
        return out

    def _new(self, shape, dtype, expr, ins=(), scalars=(), replay_scalars=None):
        return self._ew(expr, self.empty(shape, dtype), ins, scalars, replay_scalars)

    def _fill(self, out: CudaBuffer, value):
        """Fill a dense buffer: memset when the bytes allow, else a kernel."""
        raw = np.array(value, dtype=out.dtype.np).tobytes()
        if len(set(raw)) == 1:
            runtime.memset(out.ptr, raw[0], out.nbytes)
        else:
            c = ("float", float(value)) if out.dtype.is_float else ("long long", int(value))
            self._ew("c0", out, (), [c])
        return out

    def _copy_into(self, dst: CudaBuffer, src: CudaBuffer):
        return self._ew("a0", dst, [src])

    # -- creation -----------------------------------------------------------------
    def full(self, shape, value, dtype: DType):
        """A stride-0 view of one element; the elements are cached per value (buffers
        are immutable), so a Python scalar in a loop costs no copy after the first."""
        shape = tuple(shape)
        key = (dtype, const_key(value), shape)
        view = self._full_views.get(key)             # the view too: it is immutable
        if view is None:
            one = self._consts.get(key[:2])
            if one is None:
                if len(self._consts) >= 4096:
                    self._consts.clear()
                one = self._consts[key[:2]] = self.from_numpy(np.array(value, dtype=dtype.np))
            if len(self._full_views) >= 4096:
                self._full_views.clear()
            view = self._full_views[key] = CudaBuffer(one.alloc, one.base, shape, dtype,
                                                      (0,) * len(shape))
        return view

    def arange(self, start, stop, step, dtype: DType):
        n = max(0, math.ceil((stop - start) / step))
        if dtype.is_float:
            return self._new((n,), dtype, "c0 + (double)i * c1",
                             scalars=[("double", float(start)), ("double", float(step))])
        return self._new((n,), dtype, "c0 + (long long)i * c1",
                         scalars=[("long long", int(start)), ("long long", int(step))])

    def random(self, dist, shape, dtype: DType, seed: int, counter: int):
        fn = "mg_uniform" if dist == "uniform" else "mg_normal"
        m = (1 << 64) - 1
        cap = runtime.capture          # mg.jit: each replay draws the numbers anew
        return self._new(shape, dtype, f"{fn}(c0, c1, i)",
                         scalars=[("unsigned long long", int(seed) & m),
                                  ("unsigned long long", int(counter) & m)],
                         replay_scalars=cap and (lambda: [v & m for v in
                                                          cap.random_args(seed, counter)]))

    # -- elementwise --------------------------------------------------------------
    def unary(self, op, x):
        return self._new(x.shape, x.dtype, cg.unary_expr(op, x.dtype), [x])

    def binary(self, op, a, b):
        out_dt = bool_ if op in _COMPARISONS else a.dtype
        return self._ew(cg.binary_expr(op, a.dtype), self.empty(a.shape, out_dt), (a, b))

    def where(self, cond, a, b):
        return self._new(a.shape, a.dtype, "a0 ? a1 : a2", [cond, a, b])

    def cast(self, dtype: DType, x):
        return x if dtype is x.dtype else self._new(x.shape, dtype, "a0", [x])

    def fused(self, tree, *xs):
        """A fused elementwise group (lazy.fuse) as one kernel; tree[2] is its dtype."""
        expr = cg.fused_expr(tree, tuple(x.dtype for x in xs))
        return self._new(xs[0].shape, tree[2], expr, xs)

    # -- reductions ---------------------------------------------------------------
    def reduce(self, op, axes, x):
        return self._reduce(op, axes, x)

    def _reduce(self, op, axes, x, out_dtype=None):
        out_dt = out_dtype or x.dtype
        key = (op, axes if type(axes) is int else tuple(axes), x.shape, x.strides, x.dtype,
               out_dt)
        plan = self._reduce_plans.get(key)
        if plan is None:       # shapes repeat in a training loop: plan each layout once
            if len(self._reduce_plans) >= 4096:
                self._reduce_plans.clear()
            plan = self._reduce_plans[key] = self._reduce_plan(op, key[1], x, out_dt)
        out_shape, how, launch = plan
        out = self.empty(out_shape, out_dt)
        if how == "fill":              # NumPy: sum of nothing is 0 (max raises)
            return self._fill(out, launch)
        if how == "copy":              # only size-1 axes: a copy (and maybe a cast)
            return self._copy_into(out, x)
        fn, grid, threads, S, M, part_dt, ostr, rest = launch
        dst = out if S == 1 else self.empty((M, S), part_dt)
        runtime.launch(fn, grid, threads, [dst.ptr, x.ptr, *rest])
        if S == 1:
            return out
        fin = self._reduce(op, (1,), dst, out_dtype=out_dt)    # partials (M, S) -> (M, 1)
        return fin.view(out_shape, ostr)

    def _reduce_plan(self, op, axes, x, out_dt):
        """(out_shape, "fill", value) | (out_shape, "copy", None) | (out_shape, "launch",
        (kernel, grid, block, S, M, partials dtype, out strides, args after the two
        pointers)) for reducing x (its shape, strides and dtype) over axes."""
        nd = x.ndim
        axes = sorted({a % nd for a in ((axes,) if isinstance(axes, int) else axes)}) \
            if nd else []
        out_shape = tuple(1 if j in axes else d for j, d in enumerate(x.shape))
        R = math.prod(x.shape[j] for j in axes)
        if x.size == 0:
            return out_shape, "fill", ({"sum": 0, "max": -np.inf, "min": np.inf}[op]
                                       if out_dt.is_float else 0)
        if R == 1:
            return out_shape, "copy", None
        outer = [j for j in range(nd) if j not in axes]
        ostr = contig_strides(out_shape)
        odims, (oxs, _) = collapse([x.shape[j] for j in outer],
                                    [[x.strides[j] for j in outer], [ostr[j] for j in outer]])
        rdims, (rxs,) = collapse([x.shape[j] for j in axes], [[x.strides[j] for j in axes]])
        M = math.prod(x.shape[j] for j in outer)
        rows = abs(rxs[-1]) == 1 or (abs(oxs[-1]) != 1 and M < 4096) or M < 64
        if rows:
            S = 1 if M >= 512 else max(1, min(-(-R // 2048), -(-1024 // M)))
        else:
            S = 1 if M >= 65536 else max(1, min(-(-R // 32), -(-131072 // M)))
        chunk = -(-R // S)
        S = -(-R // chunk)
        part_dt = out_dt if S == 1 else _acc_dtype(x.dtype)
        idx64 = needs_idx64(max(M * S, R), odims + rdims, [oxs + rxs])
        fn = cg.reduce(op, x.dtype, part_dt, len(odims), len(rdims),
                       "rows" if rows else "cols", idx64)
        rest = (M, R, S, chunk, *odims[1:], *oxs, *rdims[1:], *rxs)
        if rows:
            grid, threads = M * S, min(_BLOCK, max(32, 1 << (chunk - 1).bit_length()))
        else:
            grid, threads = -(-M * S // _BLOCK), _BLOCK
        return out_shape, "launch", (fn, grid, threads, S, M, part_dt, ostr, rest)

    def argmax(self, axis, x):
        axis %= x.ndim
        out_shape = x.shape[:axis] + (1,) + x.shape[axis + 1:]
        out = self.empty(out_shape, int64)
        outer = [j for j in range(x.ndim) if j != axis]
        M, R = math.prod(x.shape[j] for j in outer), x.shape[axis]
        if M == 0:
            return out
        odims, (oxs,) = collapse([x.shape[j] for j in outer], [[x.strides[j] for j in outer]])
        idx64 = needs_idx64(max(M, R), odims + [R], [oxs + [x.strides[axis]]])
        fn = cg.argmax(x.dtype, len(odims), idx64)
        threads = min(_BLOCK, max(32, 1 << (max(R, 1) - 1).bit_length()))
        runtime.launch(fn, M, threads, [out.ptr, x.ptr, M, R, *odims[1:], *oxs, x.strides[axis]])
        return out

    def matmul(self, a, b):
        if a.dtype in (float16, bfloat16):    # tensor cores, f32 accumulate, one rounding
            return self.cast(a.dtype, ops_matmul.tc_matmul(self, a, b, pipelined=True))
        *batch, M, K = a.shape
        N = b.shape[-1]
        out = self.empty((*batch, M, N), a.dtype)
        if out.size == 0:
            return out
        nb = len(batch)
        bdims, (sa, sb, _) = collapse(batch, [a.strides[:nb], b.strides[:nb], out.strides[:nb]])
        if len(bdims) > 1:   # batch dims that no single stride walks: make them dense
            a, b = self._dense(a), self._dense(b)
            bdims, (sa, sb, _) = collapse(batch, [a.strides[:nb], b.strides[:nb],
                                                    out.strides[:nb]])
        B = bdims[0]
        fn = cg.matmul(a.dtype, b.dtype, out.dtype)
        isz = [a.dtype.itemsize, b.dtype.itemsize, out.dtype.itemsize]
        for z0 in range(0, B, 65535):           # gridDim.z is at most 65535
            z = min(65535, B - z0)
            runtime.launch(fn, (-(-N // 64), -(-M // 64), z), _BLOCK,
                           [out.ptr + z0 * M * N * isz[2], a.ptr + z0 * sa[0] * isz[0],
                            b.ptr + z0 * sb[0] * isz[1], M, N, K,
                            sa[0], a.strides[-2], a.strides[-1],
                            sb[0], b.strides[-2], b.strides[-1]])
        return out

    # -- movement -----------------------------------------------------------------
    def reshape(self, shape, x):
        shape = tuple(shape)
        if x.contig:
            return x.view(shape, None)
        st = reshape_strides(x.shape, x.strides, shape)
        return self._dense(x).view(shape, None) if st is None else x.view(shape, st)

    def permute(self, order, x):
        shape, strides = x.shape, x.strides
        return x.view(tuple([shape[i] for i in order]), tuple([strides[i] for i in order]))

    def expand(self, shape, x):
        shape = tuple(shape)
        lead = len(shape) - x.ndim
        st = [0] * lead + [s if d == n else 0 for d, n, s in zip(x.shape, shape[lead:], x.strides)]
        return x.view(shape, st)

    def shrink(self, slices, x):
        return _shrink(x, slices)

    def pad(self, pads, value, x):
        shape = tuple(b + d + a for (b, a), d in zip(pads, x.shape))
        out = self._fill(self.empty(shape, x.dtype), value)
        inner = _shrink(out, tuple((b, b + d, 1) for (b, _), d in zip(pads, x.shape)))
        self._copy_into(inner, x)
        return out

    def contiguous(self, x):
        return self._dense(x)

    def _dense(self, x):
        return x if x.contig else self._new(x.shape, x.dtype, "a0", [x])

    def cat(self, axis, *xs):
        axis %= xs[0].ndim
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        out = self.empty(shape, xs[0].dtype)
        start = 0
        for x in xs:
            sl = [(0, d, 1) for d in shape]
            sl[axis] = (start, start + x.shape[axis], 1)
            self._copy_into(_shrink(out, sl), x)
            start += x.shape[axis]
        return out

    def gather(self, axis, x, idx):
        axis %= x.ndim
        x, idx = self._dense(x), self._dense(idx)
        A, Q = x.shape[axis], math.prod(x.shape[axis + 1:])
        out = self.empty(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)
        n = out.size
        if n:
            fn = cg.gather(x.dtype, idx.dtype)
            runtime.launch(fn, min(-(-n // _BLOCK), 1 << 20), _BLOCK,
                           [out.ptr, x.ptr, idx.ptr, n, idx.size, Q, A, runtime.index_flag])
            runtime.index_checked()
        return out

    def scatter_add(self, axis, size, src, idx):
        axis %= src.ndim
        src, idx = self._dense(src), self._dense(idx)
        shape = src.shape[:axis] + (size,) + src.shape[axis + idx.ndim:]
        acc_dt = _acc_dtype(src.dtype)
        acc = self.empty(shape, acc_dt)
        runtime.memset(acc.ptr, 0, acc.nbytes)
        n = src.size
        if n:
            Q = math.prod(src.shape[axis + idx.ndim:])
            fn = cg.scatter_add(src.dtype, idx.dtype)
            runtime.launch(fn, min(-(-n // _BLOCK), 1 << 20), _BLOCK,
                           [acc.ptr, src.ptr, idx.ptr, n, idx.size, Q, size,
                            runtime.index_flag])
            runtime.index_checked()
        return acc if acc_dt is src.dtype else self._new(shape, src.dtype, "a0", [acc])

    # -- the twelve ops -----------------------------------------------------------
    def function(self, file: str, entry: str, arg_format: str, defines: dict | None = None):
        """A prepared kernel `entry` of kernels/<file>, compiled for this device (its
        `// minigrad-arch:` line may ask for e.g. sm_90a) and cached; launch it with
        `runtime.launch(fn, grid, block, args, shared_mem)`."""
        key = (file, entry, arg_format, tuple(sorted((defines or {}).items())))
        fn = self._functions.get(key)
        if fn is None:
            mkey = (file, key[3])
            if mkey not in self._modules:
                path = compiler.kernels_dir() / file
                arch = compiler.arch_for_file(path.read_text(), self.arch)
                self._modules[mkey] = runtime.load_module(
                    compiler.compile_file(path, arch, defines=defines))
            fn = self._functions[key] = runtime.get_function(self._modules[mkey], entry,
                                                             arg_format)
        return fn

    def kernel(self, name, params, *bufs):
        fn = self.kernels.get(name)
        if fn is not None:
            return fn(*bufs, **params)
        # no CUDA kernel registered yet: the NumPy reference through the host
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"minigrad: no CUDA kernel for {name!r} yet; running the NumPy "
                          "reference on the host", RuntimeWarning, stacklevel=2)
        from ..numpy import NumpyBackend
        out = NumpyBackend().kernel(name, params, *[self.to_numpy(b) for b in bufs])
        if isinstance(out, tuple):
            return tuple(self.from_numpy(o) for o in out)
        return self.from_numpy(out)

    # -- fused optimizer step -----------------------------------------------------
    def adamw(self, c1, c2, decay, step, eps, p, g, m, v, in_place=False, replay_consts=None):
        """(p', m', v') of one AdamW step (codegen.adamw) in one kernel; m and v are
        float32, p' has p's dtype. Inputs that are neither dense nor a broadcast
        scalar are made dense first. in_place: write p', m', v' over p, m, v (dense).
        replay_consts: while mg.jit captures, a callable giving (c1, ..., eps) for a replay."""
        if in_place:
            if not (p.contig and m.contig and v.contig):
                raise ValueError("adamw: in_place needs dense p, m and v")
            outs = (p, m, v)
        else:
            outs = (self.empty(p.shape, p.dtype), self.empty(p.shape, float32),
                    self.empty(p.shape, float32))
        n = p.size
        if n == 0:
            return outs
        ins, sts = [], []
        for x in (p, g, m, v):
            if x.contig or any(x.strides):
                x = self._dense(x)
                sts.append(1)
            else:
                sts.append(0)           # stride-0 view of one element (e.g. Tensor.zeros)
            ins.append(x)
        fn = cg.adamw(p.dtype, g.dtype, n > _I32, in_place)
        args = [n, *(o.ptr for o in outs), *(x.ptr for x in ins), *sts]
        runtime.launch(fn, min(-(-n // _BLOCK), 1 << 20), _BLOCK,
                       args + [c1, c2, decay, step, eps],
                       replay_args=replay_consts and (lambda: args + list(replay_consts())))
        return outs
