"""Backends: where lazy graph nodes are turned into buffers.

A backend is an object with the methods below. The scheduler (`minigrad.lazy`)
calls them in topological order as `backend.<op>(*args, *source_buffers)`:
plain arguments first, then the buffers. The frontend (`Tensor`, autograd) never
changes per backend. Buffers are whatever the backend likes (the NumPy backend
uses `np.ndarray`, the CUDA backend a device allocation with shape and strides).

    from_numpy(arr) / to_numpy(buf)            host <-> backend
    full(shape, value, dtype)                  constant
    arange(start, stop, step, dtype)
    random(dist, shape, dtype, seed, counter)  dist: "uniform" [0,1) or "normal"
    unary(op, x)                               op in UNARY_OPS, same dtype out
    binary(op, a, b)                           same shapes and dtypes; op in BINARY_OPS
                                               (comparisons return bool)
    where(cond, a, b)                          cond bool; a, b same dtype
    cast(dtype, x)
    fused(tree, *xs)                           a group of the four ops above (lazy.fuse):
                                               tree = (op, arg, dtype, *children), a
                                               child a tree or an index into xs
    reduce(op, axes, x)                        op in REDUCE_OPS; keeps reduced axes as 1
    argmax(axis, x)                            int64, keeps the axis as 1
    matmul(a, b)                               (..., M, K) @ (..., K, N), batch dims equal
    reshape(shape, x) permute(order, x)
    expand(shape, x)                           broadcast; may add leading dims
    shrink(slices, x)                          slices: ((start, stop, step), ...) per axis
    pad(pads, value, x)                        pads: ((before, after), ...) per axis
    contiguous(x)                              a dense copy (or x if already dense)
    cat(axis, *xs)
    gather(axis, x, idx)                       x.take(idx, axis)
    scatter_add(axis, size, src, idx)          inverse of gather: sums slices of src into
                                               zeros of length `size` on `axis`
    kernel(name, params, *bufs)                the twelve ops of `minigrad.ops` (params a
                                               dict); returns a buffer or tuple of buffers
    synchronize()
"""

UNARY_OPS = ("neg", "exp", "log", "sqrt", "recip", "sin", "cos", "tanh", "sigmoid",
             "abs", "sign", "not")
BINARY_OPS = ("add", "sub", "mul", "div", "pow", "maximum", "minimum",
              "lt", "le", "gt", "ge", "eq", "ne",
              "and", "or", "xor")
BITWISE_OPS = ("and", "or", "xor")          # bool and integer dtypes only
COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
REDUCE_OPS = ("sum", "max", "min")


def const_key(value):
    """The cache key of a constant's value (`full`): one rule for both caches of
    constants, the frontend's scalar operands (tensor._scalar) and the CUDA backend's
    one-element buffers. Equal keys make equal constants. For a nonzero, non-NaN int or
    float (bool and NumPy's float64 included) the key is (type, value); else it is
    (type, repr(value)): 0.0 == -0.0 yet they are different constants, NaN is unequal
    to itself, and a repr tells both apart and is hashable whatever the value. (A
    float's repr costs ~0.4 us: too much for every op.)"""
    if isinstance(value, (int, float)) and value and value == value:
        return type(value), value
    return type(value), repr(value)
