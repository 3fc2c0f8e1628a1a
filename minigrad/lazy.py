"""The lazy graph and its scheduler.

A `LazyBuffer` is one node: an op name, its plain arguments, its source nodes,
and the shape/dtype/device of its result. Building nodes computes nothing;
`realize()` walks the unrealized part of the graph in topological order and asks
each node's backend to run it (`backend.<op>(*arg, *source_buffers)`).

Once a node has run it keeps its buffer and forgets its sources, so the graph
behind it can be freed: memory stays flat over a training loop.

Environment: LAZY=0 runs every node as soon as it is built (handy in a debugger);
DEBUG=1 prints a line per schedule, DEBUG=2 a line per op run with its time,
DEBUG=3 also prints each schedule's nodes before running them.
"""
from __future__ import annotations

import os
import time

from .device import get_backend

LAZY = os.environ.get("LAZY", "1") != "0"
DEBUG = int(os.environ.get("DEBUG", "0") or 0)


class LazyBuffer:
    __slots__ = ("op", "arg", "srcs", "shape", "dtype", "device", "realized", "__weakref__")

    def __init__(self, op, arg, srcs, shape, dtype, device, realized=None):
        self.op, self.arg, self.srcs = op, arg, srcs
        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        self.realized = realized

    def __repr__(self):
        state = "realized" if self.realized is not None else f"{len(self.srcs)} srcs"
        return f"<{self.op} {self.shape} {self.dtype.name} {self.device} {state}>"

    def describe(self) -> str:
        """A short label for the op, e.g. 'binary:add' or 'reduce:sum'."""
        if self.op in ("unary", "binary", "reduce"):
            return f"{self.op}:{self.arg[0]}"
        if self.op == "kernel":
            return f"kernel:{self.arg[0]}"
        return self.op


def node(op, arg, srcs, shape, dtype, device) -> LazyBuffer:
    """Make a graph node (and run it at once when LAZY=0)."""
    lb = LazyBuffer(op, arg, tuple(srcs), shape, dtype, device)
    if not LAZY:
        realize(lb)
    return lb


def constant(buf, shape, dtype, device) -> LazyBuffer:
    """A node that already holds a backend buffer."""
    return LazyBuffer("buffer", (), (), shape, dtype, device, realized=buf)


def schedule(roots) -> list:
    """Unrealized nodes reachable from `roots`, sources before users (iterative DFS,
    so a 10,000-op chain needs no recursion)."""
    order, seen = [], set()
    stack = [(r, False) for r in roots if r.realized is None]
    while stack:
        lb, expanded = stack.pop()
        if expanded:
            order.append(lb)
            continue
        if id(lb) in seen:
            continue
        seen.add(id(lb))
        stack.append((lb, True))
        stack.extend((s, False) for s in lb.srcs if s.realized is None and id(s) not in seen)
    return order


def _run(lb: LazyBuffer):
    srcs = [s.realized for s in lb.srcs]
    if lb.op == "select":               # one output of a multi-output kernel
        return srcs[0][lb.arg[0]]
    if lb.op == "transfer":             # device -> host -> device
        host = get_backend(lb.srcs[0].device).to_numpy(srcs[0])
        return get_backend(lb.device).from_numpy(host)
    return getattr(get_backend(lb.device), lb.op)(*lb.arg, *srcs)


def realize(*roots: LazyBuffer) -> None:
    root = roots[0] if len(roots) == 1 else None
    if root is not None and root.realized is None and \
            all(s.realized is not None or not s.srcs for s in root.srcs):
        # fast path (eager-style use): one op whose inputs are ready or are constants
        order = [s for s in root.srcs if s.realized is None] + [root]
    else:
        order = schedule(roots)
    if not order:
        return
    if DEBUG >= 1:
        print(f"[minigrad] schedule: {len(order)} ops for {len(roots)} outputs")
    if DEBUG >= 3:
        for i, lb in enumerate(order):
            print(f"[minigrad]   {i:4d} {lb.describe():24s} {lb.shape} {lb.dtype.name} {lb.device}")
    for lb in order:
        t0 = time.perf_counter() if DEBUG >= 2 else 0.0
        lb.realized = _run(lb)
        if DEBUG >= 2:
            get_backend(lb.device).synchronize()
            ms = (time.perf_counter() - t0) * 1e3
            print(f"[minigrad] {lb.device:4s} {lb.describe():24s} -> {lb.shape} "
                  f"{lb.dtype.name}  {ms:.3f} ms")
        lb.srcs = ()                    # free the graph behind this node
