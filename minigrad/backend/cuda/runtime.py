"""The CUDA runtime on PyCUDA: context, stream, memory pool, copies, launches.

Imported only when CUDA is first used. One device (MINIGRAD_CUDA_DEVICE, default
0), its **primary context** retained and pushed on this thread (never
`pycuda.autoinit`, which makes a context of its own), so cuda-python driver calls
(e.g. graph capture) see the same context. All work goes on one stream, so a
pooled allocation freed by Python may be reused by the next op without a sync:
stream order keeps the old reader ahead of the new writer.

One exception, inside a single op: `fork()` lets launches with `side=True` run on a
second stream, concurrently with what the op queues next on the main stream, and
`join()` makes the main stream wait for them. The op holds every buffer the side work
touches until it has called `join()`, so the rule above still holds for the pool. (The
flash-attention backward runs its dQ pass beside its dK/dV pass this way: the two are
independent, and each alone leaves SMs idle in its last wave.)

    alloc(nbytes) -> allocation   htod(ptr, array)   dtoh(array, ptr)   memset(ptr, byte, n)
    load_module(cubin) / get_function(module, name)
    launch(function, grid, block, args, shared_mem=0, side=False)   fork()   join()
    synchronize()   memory_stats()   free_cached()   index_flag / index_checked()

Index errors: a kernel cannot raise. Gather and scatter kernels (x[idx], embedding
lookups, cross_entropy's targets) that meet an index out of range stay in bounds and set
the word at `index_flag`; their launcher calls `index_checked()`, and the next
synchronize() or dtoh() reads the word and raises IndexError. Late, as any CUDA error is,
but never a silent wrong answer.

DEBUG>=3 prints one line per launch with its time (synchronizing after it).

Capture (mg.jit): while `capture` is set, every launch, copy and memset queued here is
also appended to `capture.entries`, and every allocation to `capture.held` (kept alive,
so no later tensor gets those addresses); `replay(entries)` queues them again. A launch
may pass `replay_args`, a callable giving fresh arguments at each replay (random seeds,
the optimizer's learning rate). Reading device memory on the host is refused while
capturing: a replay could not repeat it.
"""
from __future__ import annotations

import atexit
import os
import time

import numpy as np
import pycuda.driver as drv
from pycuda._pvt_struct import pack as _pack
from pycuda.tools import DeviceMemoryPool

DEBUG = int(os.environ.get("DEBUG", "0") or 0)

drv.init()
if drv.Device.count() == 0:
    raise RuntimeError("the CUDA driver sees no GPU")
ordinal = int(os.environ.get("MINIGRAD_CUDA_DEVICE", "0"))
device = drv.Device(ordinal)
context = device.retain_primary_context()
context.push()
stream = drv.Stream()
side_stream = drv.Stream()      # fork()/join(): work of one op beside the main stream
_fork_event = drv.Event(drv.event_flags.DISABLE_TIMING)
_join_event = drv.Event(drv.event_flags.DISABLE_TIMING)
pool = DeviceMemoryPool()
cc = device.compute_capability()
arch = "sm_%d%d" % cc
name = device.name()
multiprocessors = device.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT)
_sm_limits = tuple(device.get_attribute(getattr(drv.device_attribute, a)) for a in (
    "MAX_REGISTERS_PER_MULTIPROCESSOR", "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR",
    "MAX_THREADS_PER_MULTIPROCESSOR"))
# the most dynamic shared memory one block may ask for (227 KB on sm_90, 163 KB on sm_80,
# 99 KB on sm_86 / sm_89): kernels are chosen to fit it, or the op says why none does
max_shared_per_block = device.get_attribute(drv.device_attribute.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
_peak = 0
_n_allocs = 0
_index_word = drv.mem_alloc(4)      # set by gather/scatter kernels on a bad index (below)
index_flag = int(_index_word)
drv.memset_d8(index_flag, 0, 4)
_FAST = hasattr(drv.Function, "_launch_kernel")
capture = None          # the mg.jit recording in progress (an object with .entries, .held)


def _finish_up():
    """At exit: wait for the GPU, stop the pool holding blocks, pop the context.

    stop_holding matters: buffers still alive are freed after this, and a pool that
    starts holding a block again needs a current context (PyCUDA aborts otherwise);
    a pool that holds nothing frees straight to the driver, activating the context."""
    global context
    if context is None:
        return
    try:
        stream.synchronize()
        pool.stop_holding()
        _index_word.free()
    except drv.Error:
        pass
    context.pop()
    context = None
    from pycuda.tools import clear_context_caches
    clear_context_caches()


atexit.register(_finish_up)


# -- memory ------------------------------------------------------------------
def alloc(nbytes: int):
    """A device allocation of at least `nbytes` from the pool (freed by GC)."""
    global _peak, _n_allocs
    nbytes = int(nbytes) or 1
    try:
        a = pool.allocate(nbytes)
    except drv.MemoryError:
        pool.free_held()   # give cached blocks back to the driver and retry once
        a = pool.allocate(nbytes)
    _n_allocs += 1
    if capture is not None:
        capture.held.append(a)
    active = pool.active_bytes
    if active > _peak:
        _peak = active
    return a


def memory_stats() -> dict:
    """Pool statistics in bytes: active (in use by buffers), held (cached for reuse),
    peak active, and the driver's free/total memory."""
    free, total = drv.mem_get_info()
    return {"active_bytes": int(pool.active_bytes),
            "held_bytes": int(pool.managed_bytes - pool.active_bytes),
            "managed_bytes": int(pool.managed_bytes),
            "peak_active_bytes": int(_peak), "active_blocks": int(pool.active_blocks),
            "held_blocks": int(pool.held_blocks), "allocations": _n_allocs,
            "device_free_bytes": int(free), "device_total_bytes": int(total)}


def reset_peak():
    global _peak
    _peak = int(pool.active_bytes)


def free_cached():
    """Return the pool's cached blocks to the driver (after the GPU is idle)."""
    stream.synchronize()
    pool.free_held()


# -- copies ------------------------------------------------------------------
def _bytes_view(arr: np.ndarray) -> np.ndarray:
    # a flat uint8 view (of `arr` itself when it is contiguous, 0-d included), so
    # PyCUDA copies any dtype, ml_dtypes' bf16 too
    a = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
    return a.reshape(-1).view(np.uint8)


def htod(dst_ptr: int, arr: np.ndarray):
    """Copy a host array to device memory, queued on the stream. The host data
    is staged by the driver before this returns (pageable memory)."""
    if arr.nbytes:
        data = _bytes_view(arr)
        if capture is not None:
            data = data.copy()          # the replay copies the same bytes again
            capture.entries.append((_HTOD, dst_ptr, data))
        drv.memcpy_htod_async(dst_ptr, data, stream)


def dtoh(out: np.ndarray, src_ptr: int) -> np.ndarray:
    """Copy device memory into the contiguous host array `out`; waits for it."""
    if capture is not None:
        raise RuntimeError(
            "mg.jit: the captured function read a tensor on the host (.item(), .numpy(), "
            "print or a transfer to the CPU); a replay cannot repeat that. Return the "
            "tensor from the function and read it after the call")
    if out.nbytes:
        assert out.flags.c_contiguous
        drv.memcpy_dtoh_async(_bytes_view(out), src_ptr, stream)
        stream.synchronize()
    _raise_index_error()
    return out


def dtod(dst_ptr: int, src_ptr: int, nbytes: int):
    if nbytes:
        if capture is not None:
            capture.entries.append((_DTOD, dst_ptr, src_ptr, nbytes))
        drv.memcpy_dtod_async(dst_ptr, src_ptr, nbytes, stream)


def memset(ptr: int, byte: int, nbytes: int):
    if nbytes:
        if capture is not None:
            capture.entries.append((_MEMSET, ptr, byte, nbytes))
        drv.memset_d8_async(ptr, byte, nbytes, stream)


def synchronize():
    stream.synchronize()
    _raise_index_error()


# -- index errors (see the module docstring) ------------------------------------
_index_pending = False      # a kernel that may set the flag ran since the last look


def index_checked():
    global _index_pending
    _index_pending = True


def _raise_index_error():
    """After a stream synchronize: raise if a gather/scatter kernel met a bad index."""
    global _index_pending
    if not _index_pending:
        return
    _index_pending = False
    word = np.zeros(1, np.uint32)
    drv.memcpy_dtoh(word, index_flag)
    if word[0]:
        drv.memset_d8(index_flag, 0, 4)
        raise IndexError(
            "an integer index was out of range on the GPU: x[idx] or weight[idx] (an "
            "Embedding) with an index >= the axis size, or a cross_entropy target outside "
            "[0, classes) that is not ignore_index. What was computed from it is not valid; "
            "the same code on device='cpu' names the op")


# -- modules and launches ----------------------------------------------------
def load_module(cubin: bytes):
    return drv.module_from_buffer(cubin)


def get_function(module, fname: str, arg_format: str):
    """A kernel of a loaded module, prepared with its argument format (struct
    codes: 'P' pointer, 'q' int64, 'i' int32, 'I' uint32, 'Q' uint64, 'f' float,
    'd' double), so launches pack arguments without inspecting them."""
    f = module.get_function(fname)
    f.prepare(arg_format)
    f.mg_name = fname
    return f


def blocks_per_sm(function, threads: int, shared_mem: int) -> int:
    """How many blocks of `function` (`threads` each, `shared_mem` dynamic bytes) an SM holds
    at once, from its registers, shared memory and threads (the occupancy rule: registers
    by warp in units of 256, 1 KB of shared memory reserved per block). An estimate for
    planning grids (ops_attention's tail split); it never decides a result."""
    known = getattr(function, "mg_blocks_per_sm", None)
    if known is None:
        known = function.mg_blocks_per_sm = {}
    if (threads, shared_mem) not in known:
        attr = drv.function_attribute
        regs = -(-function.get_attribute(attr.NUM_REGS) * 32 // 256) * 256 * -(-threads // 32)
        static = function.get_attribute(attr.SHARED_SIZE_BYTES)
        known[threads, shared_mem] = max(1, min(_sm_limits[0] // max(regs, 1),
                                                _sm_limits[1] // (shared_mem + static + 1024),
                                                _sm_limits[2] // threads, 32))
    return known[threads, shared_mem]


def set_max_dynamic_shared(function, nbytes: int):
    """Allow a kernel more than 48 KB of dynamic shared memory (a clear error where this
    GPU allows less than it needs)."""
    if nbytes > max_shared_per_block:
        raise RuntimeError(f"kernel {getattr(function, 'mg_name', '?')} needs {nbytes} bytes "
                           f"of shared memory per block; {name} ({arch}) allows "
                           f"{max_shared_per_block}")
    function.set_attribute(drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, int(nbytes))


def launch(function, grid, block, args, shared_mem: int = 0, replay_args=None,
           side: bool = False):
    """Queue `function` on the stream (on the side stream with `side=True`, between a
    `fork()` and a `join()`). `function` must come from get_function (prepared);
    `grid`/`block` are ints or tuples; `args` match its format. `replay_args` (used only
    while capturing): a callable returning the arguments a replay of this launch should
    use instead of `args`.

    This is `Function.prepared_async_call` without its per-call checks: pack the
    arguments with the prepared format and launch (~2 us less a launch)."""
    grid = (grid, 1, 1) if type(grid) is int else grid
    block = (block, 1, 1) if type(block) is int else tuple(block) + (1,) * (3 - len(block))
    on = side_stream if side else stream
    if DEBUG >= 3:
        t0 = time.perf_counter()
        function.prepared_async_call(grid, block, on, *args, shared_size=shared_mem)
        on.synchronize()
        print(f"launch {getattr(function, 'mg_name', '?'):<40} grid={grid} block={block[0]} "
              f"{(time.perf_counter() - t0) * 1e6:8.1f} us{' (side stream)' if side else ''}")
    elif _FAST:
        packed = _pack(function.arg_format, *args)
        if capture is not None:
            capture.entries.append((_LAUNCH, function, grid, block, replay_args or packed,
                                    shared_mem, side))
        function._launch_kernel(grid, block, packed, shared_mem, on)
        return
    else:
        function.prepared_async_call(grid, block, on, *args, shared_size=shared_mem)
    if capture is not None:
        capture.entries.append((_LAUNCH, function, grid, block, replay_args or tuple(args),
                                shared_mem, side))


def fork():
    """From here on, launches with side=True run on the side stream, after everything
    queued on the main stream so far and concurrently with what is queued there next.
    Allocate what a side launch writes before the fork: an allocation's fill (and a freed
    block's last use) after it is ordered on the main stream only."""
    if capture is not None:
        capture.entries.append((_FORK,))
    _order(stream, side_stream, _fork_event)


def join():
    """The main stream waits for the side stream's work before anything queued after."""
    if capture is not None:
        capture.entries.append((_JOIN,))
    _order(side_stream, stream, _join_event)


def _order(first, then, event):
    """Stream `then` waits for everything queued on stream `first` so far (fork and join,
    and their replays)."""
    event.record(first)
    then.wait_for_event(event)


_LAUNCH, _HTOD, _DTOD, _MEMSET, _FORK, _JOIN = range(6)


def replay(entries):
    """Queue a capture's entries again, in order (see the module docstring)."""
    index_checked()         # (the record may hold gather kernels: look at the next sync)
    for e in entries:
        kind = e[0]
        if kind == _LAUNCH:
            _, function, grid, block, args, shared_mem, side = e
            on = side_stream if side else stream
            if callable(args):
                args = args()
            if not _FAST:
                function.prepared_async_call(grid, block, on, *args, shared_size=shared_mem)
                continue
            if type(args) is not bytes:
                args = _pack(function.arg_format, *args)
            function._launch_kernel(grid, block, args, shared_mem, on)
        elif kind == _DTOD:
            drv.memcpy_dtod_async(e[1], e[2], e[3], stream)
        elif kind == _MEMSET:
            drv.memset_d8_async(e[1], e[2], e[3], stream)
        elif kind == _FORK:
            _order(stream, side_stream, _fork_event)
        elif kind == _JOIN:
            _order(side_stream, stream, _join_event)
        else:
            drv.memcpy_htod_async(e[1], e[2], stream)
