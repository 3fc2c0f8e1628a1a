"""Stride arithmetic for strided views (pure Python: no GPU, tested in CI).

Shapes and strides are tuples of ints, strides counted in elements.
"""
from __future__ import annotations

import math


def contig_strides(shape):
    st, acc = [], 1
    for d in reversed(shape):
        st.append(acc)
        acc *= d
    return tuple(reversed(st))


def is_contig(shape, strides) -> bool:
    acc = 1
    for d, s in zip(reversed(shape), reversed(strides)):
        if d == 0:
            return True
        if d != 1 and s != acc:
            return False
        acc *= d
    return True


def collapse(shape, strides_list):
    """Drop size-1 dims and merge neighbours that are contiguous in every operand."""
    dims, sts = [], [[] for _ in strides_list]
    for j, d in enumerate(shape):
        if d == 1:
            continue
        if dims and all(st[-1] == s[j] * d for st, s in zip(sts, strides_list)):
            dims[-1] *= d
            for st, s in zip(sts, strides_list):
                st[-1] = s[j]
        else:
            dims.append(d)
            for st, s in zip(sts, strides_list):
                st.append(s[j])
    if not dims:
        return [1], [[0] for _ in strides_list]
    return dims, sts


def needs_idx64(n, dims, sts) -> bool:
    lim = 2 ** 31 - 1
    return n > lim or any(sum(abs(s) * (d - 1) for s, d in zip(st, dims)) > lim for st in sts)


def reshape_strides(shape, strides, new_shape):
    """Strides that view (shape, strides) as new_shape without a copy, or None
    (NumPy's _attempt_nocopy_reshape)."""
    if math.prod(shape) == 0 or math.prod(new_shape) == 0:
        return contig_strides(new_shape)
    old = [(d, s) for d, s in zip(shape, strides) if d != 1]
    od, os_ = [d for d, _ in old], [s for _, s in old]
    nd = list(new_shape)
    new_st = [0] * len(nd)
    oi, oj, ni, nj = 0, 1, 0, 1
    while ni < len(nd) and oi < len(od):
        np_, op = nd[ni], od[oi]
        while np_ != op:
            if np_ < op:
                np_ *= nd[nj]
                nj += 1
            else:
                op *= od[oj]
                oj += 1
        for ok in range(oi, oj - 1):
            if os_[ok] != od[ok + 1] * os_[ok + 1]:
                return None
        new_st[nj - 1] = os_[oj - 1]
        for nk in range(nj - 1, ni, -1):
            new_st[nk - 1] = new_st[nk] * nd[nk]
        ni, nj, oi, oj = nj, nj + 1, oj, oj + 1
    for nk in range(ni, len(nd)):   # trailing dims of size 1
        new_st[nk] = 1
    return tuple(new_st)
