"""The lazy graph and its scheduler.

A `LazyBuffer` is one node: an op name, its plain arguments, its source nodes,
and the shape/dtype/device of its result. Building nodes computes nothing;
`realize()` walks the unrealized part of the graph in topological order and asks
each node's backend to run it (`backend.<op>(*arg, *source_buffers)`).

Once a node has run it keeps its buffer and forgets its sources, so the graph
behind it can be freed: memory stays flat over a training loop.

Elementwise fusion: before a schedule runs, `fuse()` folds chains of elementwise
nodes (unary, binary, where, cast) into one `fused` node each, so e.g. gelu's
mul/add/tanh chain is one kernel launch instead of eight. A node is folded into its
user only when nothing else can ever read it (see `fuse`).

Environment: LAZY=0 runs every node as soon as it is built (handy in a debugger);
FUSE=0 turns elementwise fusion off (every node runs on its own, as unfused);
DEBUG=1 prints a line per schedule, DEBUG=2 a line per op run with its time,
DEBUG=3 also prints each schedule's nodes before running them.
"""
from __future__ import annotations

import collections
import os
import sys
import time

from .device import get_backend

LAZY = os.environ.get("LAZY", "1") != "0"
DEBUG = int(os.environ.get("DEBUG", "0") or 0)
FUSE = os.environ.get("FUSE", "1") != "0"
MAX_FUSED_OPS = 32        # longer elementwise chains are split over several kernels
ELEMENTWISE = ("unary", "binary", "where", "cast")
capture = None    # the mg.jit recording in progress: its .held keeps every buffer read
assigned = None   # while mg.jit runs its function: [(tensor, buffer before) per Tensor.assign]


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
        if self.op == "fused":
            return "fused:" + "+".join(_tree_ops(self.arg[0]))
        return self.op


def _tree_ops(tree) -> list:
    """The op names of a fused tree in the order they are computed."""
    if isinstance(tree, int):
        return []
    op, arg, _, *kids = tree
    return [o for k in kids for o in _tree_ops(k)] + [arg[0] if op in ("unary", "binary") else op]


def node(op, arg, srcs, shape, dtype, device) -> LazyBuffer:
    """Make a graph node (and run it at once when LAZY=0)."""
    lb = LazyBuffer(op, arg, tuple(srcs), shape, dtype, device)
    if not LAZY:
        realize(lb)
    return lb


def outputs(parent: LazyBuffer, shapes, dtypes) -> list:
    """The outputs of a multi-output node (its backend op returns a tuple): one
    "select" node each, which runs no kernel (see _run)."""
    return [node("select", (i,), [parent], s, d, parent.device)
            for i, (s, d) in enumerate(zip(shapes, dtypes))]


def constant(buf, shape, dtype, device) -> LazyBuffer:
    """A node that already holds a backend buffer."""
    return LazyBuffer("buffer", (), (), shape, dtype, device, realized=buf)


def schedule(roots) -> list:
    """Unrealized nodes reachable from `roots`, sources before users (iterative DFS,
    so a 10,000-op chain needs no recursion)."""
    order, seen = [], set()
    stack = [r for r in roots if r.realized is None]   # a node to visit, or (node,):
    while stack:                                       # its sources are all in `order`
        lb = stack.pop()
        if type(lb) is tuple:
            order.append(lb[0])
            continue
        if id(lb) in seen:
            continue
        seen.add(id(lb))
        stack.append((lb,))
        for s in lb.srcs:
            if s.realized is None and id(s) not in seen:
                stack.append(s)
    return order


def _refcounts(nodes) -> list:
    return [sys.getrefcount(x) for x in nodes]


_OWN_REFS = _refcounts([object()])[0]   # the references _refcounts itself adds


def fuse(order: list, roots) -> list:
    """Elementwise fusion of a schedule; returns the schedule to run.

    An elementwise node is *inlined* into its user when
      * it is not a root (the caller asked for its buffer),
      * it is used once in this schedule, by an elementwise node (so of the same
        shape and device: the backend contract), and
      * nothing else references it: no Tensor, autograd context, optimizer or
        unscheduled node, which could read it later (`sys.getrefcount` tells).
    A node that is not inlined but has inlined sources becomes the root of a group:
    op "fused", arg (tree,), srcs the group's inputs. A tree is `(op, arg, dtype,
    *children)` copied from the nodes (e.g. ("binary", ("mul",), float32, 0, 1)), a
    child either a tree or the index of an input. Trees hold no buffers, so they are
    hashable and a backend can cache one kernel per tree structure."""
    # (no loop variable of this function may hold a node while the references are counted)
    uses = collections.Counter(id(s) for lb in order for s in lb.srcs)
    refs = _refcounts(order)
    free = {id(lb) for lb, r in zip(order, refs)              # referenced only by its user
            if lb.op in ELEMENTWISE and uses.get(id(lb)) == 1 and r - _OWN_REFS == 1}
    free -= {id(r) for r in roots}
    out, waiting = [], {}     # waiting: id(inlined node) -> (its tree, op count)
    for lb in order:
        if not waiting or waiting.keys().isdisjoint(map(id, lb.srcs)):
            # fast path (most nodes): no source was inlined, so nothing to group
            if id(lb) in free:          # (free nodes are elementwise)
                waiting[id(lb)] = ((lb.op, lb.arg, lb.dtype, *lb.srcs), 1)
            else:
                out.append(lb)
            continue
        kids = [waiting.pop(id(s), None) for s in lb.srcs]
        n = 1 + sum(k[1] for k in kids if k)
        if lb.op not in ELEMENTWISE or n > MAX_FUSED_OPS:   # the sources run on their own
            out += [_group(s, k[0]) for s, k in zip(lb.srcs, kids) if k]
            kids, n = [None] * len(kids), 1
        if lb.op not in ELEMENTWISE:
            out.append(lb)
            continue
        tree = (lb.op, lb.arg, lb.dtype, *[k[0] if k else s for s, k in zip(lb.srcs, kids)])
        if id(lb) in free:
            waiting[id(lb)] = (tree, n)
        else:
            out.append(_group(lb, tree))
    return out


def _group(lb: LazyBuffer, tree) -> LazyBuffer:
    """Turn `lb` into a fused node computing `tree` (whose leaves are LazyBuffers),
    unless nothing was inlined into it."""
    if all(isinstance(k, LazyBuffer) for k in tree[3:]):
        return lb
    srcs = {}                           # id(input) -> (index, input)
    lb.op, lb.arg = "fused", (_number(tree, srcs),)
    lb.srcs = tuple(t for _, t in srcs.values())
    return lb


def _number(t, srcs: dict):
    """`t` with its LazyBuffer leaves replaced by their index in `srcs` (module level,
    not a closure: a recursive closure is a reference cycle that would keep the inputs
    alive until the cyclic GC runs)."""
    if type(t) is LazyBuffer:
        hit = srcs.get(id(t))
        if hit is None:
            hit = srcs[id(t)] = (len(srcs), t)
        return hit[0]
    op, arg, dtype, *kids = t
    return (op, arg, dtype, *[_number(k, srcs) for k in kids])


def _run(lb: LazyBuffer):
    op, srcs = lb.op, [s.realized for s in lb.srcs]
    if op in _NOT_BACKEND_OPS:
        if op == "select":              # one output of a multi-output kernel
            return srcs[0][lb.arg[0]]
        host = get_backend(lb.srcs[0].device).to_numpy(srcs[0])    # "transfer": device ->
        return get_backend(lb.device).from_numpy(host)              # host -> device
    return getattr(get_backend(lb.device), op)(*lb.arg, *srcs)


_NOT_BACKEND_OPS = frozenset(("select", "transfer"))


def _sources_ran(lb) -> bool:
    # (a function, not a loop in realize: a loop variable left holding a source would
    # count as a reference and keep fuse() from inlining it)
    for s in lb.srcs:
        if s.realized is None:
            return False
    return True


def _eager_order(roots):
    """The schedule when there is nothing to walk or fuse, else None: every root is one
    op (or an output of one multi-output op) whose sources are realized, or are nodes
    whose own sources are realized and that fusion would leave alone (views, constants,
    other kernels, or an elementwise node under a non-elementwise op). That covers
    eager-style use - `x * 2`, `w + b` with b broadcast, `a @ b.T`, `x.sum(0)` on realized
    tensors, `mg.realize(*outputs)` - without schedule() and fuse()."""
    order, seen = [], set()
    for r in roots:
        if r.realized is not None or id(r) in seen:
            continue
        head = r.srcs[0] if r.op == "select" else r
        if head.realized is None and id(head) not in seen:
            for s in head.srcs:
                if s.realized is not None or id(s) in seen:
                    continue
                if s.op in ELEMENTWISE and head.op in ELEMENTWISE:
                    return None
                for x in s.srcs:
                    if x.realized is None:
                        return None
                seen.add(id(s))
                order.append(s)
            seen.add(id(head))
            order.append(head)
        if head is not r:
            seen.add(id(r))
            order.append(r)
    return order


def realize(*roots: LazyBuffer) -> None:
    if len(roots) == 1 and not DEBUG and capture is None:
        # eager style, `(x * 2).realize()`: one node whose sources have all run is the
        # whole schedule
        r = roots[0]
        if r.realized is not None:
            return
        if _sources_ran(r):
            r.realized = _run(r)
            r.srcs = ()
            return
    order = _eager_order(roots)
    if order is None:
        order = schedule(roots)
        if FUSE and order:
            n = len(order)
            order = fuse(order, roots)
            if DEBUG >= 1 and n > len(order):
                print(f"[minigrad] fused {n} ops into {len(order)}")
    if not order:
        return
    if not DEBUG and capture is None:      # the common case: run, then free the graph
        for lb in order:
            lb.realized = _run(lb)
            lb.srcs = ()
        return
    if DEBUG >= 1:
        print(f"[minigrad] schedule: {len(order)} ops for {len(roots)} outputs")
    if DEBUG >= 3:
        for i, lb in enumerate(order):
            print(f"[minigrad]   {i:4d} {lb.describe():24s} {lb.shape} {lb.dtype.name} {lb.device}")
    if capture is not None:       # a replay reads these buffers again: keep them alive
        capture.held.extend(s.realized for lb in order for s in lb.srcs if s.realized is not None)
    for lb in order:
        t0 = time.perf_counter() if DEBUG >= 2 else 0.0
        lb.realized = _run(lb)
        if DEBUG >= 2:
            get_backend(lb.device).synchronize()
            ms = (time.perf_counter() - t0) * 1e3
            print(f"[minigrad] {lb.device:4s} {lb.describe():24s} -> {lb.shape} "
                  f"{lb.dtype.name}  {ms:.3f} ms")
        lb.srcs = ()                    # free the graph behind this node
