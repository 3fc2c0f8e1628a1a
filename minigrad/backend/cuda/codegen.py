"""Primitive kernels generated as CUDA C from small templates.

Every primitive op is one of five templates, filled in with C types and a C
expression; a kernel is compiled once per (template, op, dtypes, ndim, index
width) and cached in memory and on disk (compiler.py), so a training loop that
reached its steady state compiles nothing.

  elementwise  out[i] = EXPR(a0, a1, a2, c0.., i) over strided views of equal shape
               (broadcast = stride 0): unary/binary/where/cast/copy/fill/arange/random;
               each thread loads UNROLL elements before it computes and stores them
  reduce       sum/max/min of `R` strided elements for each of `M` outputs, either a
               block per output ("rows", for contiguous reductions) or a thread per
               output ("cols"), optionally split in `S` partial results
  argmax       a block per output, (value, index) pairs, first index on ties
  matmul       64x64 output tile per block of 256 threads, 4x4 per thread, K in
               steps of 16 through shared memory; batched over blockIdx.z
  gather / scatter_add  x.take(idx, axis) and its adjoint (atomicAdd)

Arithmetic: floats (f32, f16, bf16) load into `float`, integers and bool into
`long long`; the result is rounded once when stored (f16/bf16 round-to-nearest,
bool is `!= 0`, integers wrap), which matches the NumPy backend.
DEBUG>=4 prints each generated source.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re

from ...dtype import DType
from . import compiler

DEBUG = int(os.environ.get("DEBUG", "0") or 0)
stats = {"built": 0}       # kernels built (compiled or read from disk) in this process

CTYPE = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16",
         "bool": "unsigned char", "int8": "signed char", "int32": "int",
         "int64": "long long", "uint32": "unsigned int"}


def ctype(dt: DType) -> str:
    return CTYPE[dt.name]


def ctype_compute(dt: DType) -> str:
    return "float" if dt.is_float else "long long"


def load(dt: DType, e: str) -> str:
    """C expression: the storage value `e` of dtype `dt` in its compute type."""
    if dt.name == "float16":
        return f"__half2float({e})"
    if dt.name == "bfloat16":
        return f"__bfloat162float({e})"
    return e if dt.name == "float32" else f"(long long)({e})"


def store(dt: DType, e: str) -> str:
    """C expression: the compute value `e` (float or long long) rounded to `dt`."""
    n = dt.name
    if n == "float16":
        return f"__float2half_rn((float)({e}))"
    if n == "bfloat16":
        return f"__float2bfloat16_rn((float)({e}))"
    if n == "bool":
        return f"(unsigned char)(({e}) != 0)"
    if n == "float32":
        return f"(float)({e})"
    return f"({CTYPE[n]})(long long)({e})"   # floats truncate toward zero, then wrap


PRELUDE = r"""
#define MG_DEV __device__ __forceinline__
MG_DEV float mg_max(float a, float b) { return (a != a || a > b) ? a : b; }   // NaN wins
MG_DEV float mg_min(float a, float b) { return (a != a || a < b) ? a : b; }
MG_DEV long long mg_max(long long a, long long b) { return a > b ? a : b; }
MG_DEV long long mg_min(long long a, long long b) { return a < b ? a : b; }
MG_DEV float mg_sign(float a) { return a > 0.f ? 1.f : (a < 0.f ? -1.f : a); }
MG_DEV long long mg_sign(long long a) { return (a > 0) - (a < 0); }
MG_DEV float mg_sigmoid(float x) {   // as the NumPy backend: exp of -|x| only
  float e = expf(-fabsf(x));
  return x >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
}
MG_DEV long long mg_div(long long a, long long b) { return b == 0 ? a : a / b; }
MG_DEV long long mg_pow(long long a, long long b) {   // wraps like NumPy's int power
  if (b < 0) return a == 1 ? 1 : (a == -1 ? ((b & 1) ? -1 : 1) : 0);
  unsigned long long r = 1, x = (unsigned long long)a;
  for (; b; b >>= 1, x *= x) if (b & 1) r *= x;
  return (long long)r;
}
// Philox4x32-10 of (seed, counter, index): independent of launch shape and order
MG_DEV uint4 mg_philox(unsigned long long seed, unsigned long long counter,
                       unsigned long long idx) {
  unsigned int k0 = (unsigned int)seed, k1 = (unsigned int)(seed >> 32);
  unsigned int c0 = (unsigned int)idx, c1 = (unsigned int)(idx >> 32);
  unsigned int c2 = (unsigned int)counter, c3 = (unsigned int)(counter >> 32);
#pragma unroll
  for (int r = 0; r < 10; r++) {
    unsigned int h0 = __umulhi(0xD2511F53u, c0), l0 = 0xD2511F53u * c0;
    unsigned int h1 = __umulhi(0xCD9E8D57u, c2), l1 = 0xCD9E8D57u * c2;
    c0 = h1 ^ c1 ^ k0; c1 = l1; c2 = h0 ^ c3 ^ k1; c3 = l0;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  return make_uint4(c0, c1, c2, c3);
}
// argmax: is (v, i) better than (bv, bi)? NaN counts as the largest; ties go to the first
MG_DEV bool mg_better(float v, long long i, float bv, long long bi) {
  bool vn = v != v, bn = bv != bv;
  if (vn || bn) return vn && (!bn || i < bi);
  return v > bv || (v == bv && i < bi);
}
MG_DEV bool mg_better(long long v, long long i, long long bv, long long bi) {
  return v > bv || (v == bv && i < bi);
}
MG_DEV float mg_uniform(unsigned long long s, unsigned long long c, unsigned long long i) {
  return (mg_philox(s, c, i).x >> 8) * (1.0f / 16777216.0f);          // [0, 1)
}
MG_DEV float mg_normal(unsigned long long s, unsigned long long c, unsigned long long i) {
  uint4 r = mg_philox(s, c, i);                                        // Box-Muller
  float u1 = ((r.x >> 8) + 1) * (1.0f / 16777216.0f), u2 = (r.y >> 8) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}
"""


def _headers_for(dtypes, code: str = "") -> str:
    """The includes for these dtypes, or for 16-bit conversions in `code` (a fused
    expression may round intermediates to f16/bf16 that no input or output has)."""
    names = {d.name for d in dtypes}
    inc = "#include <cuda_fp16.h>\n" if "float16" in names or "half" in code else ""
    inc += "#include <cuda_bf16.h>\n" if "bfloat16" in names or "bfloat16" in code else ""
    return inc


# -- op expressions (a0, a1, a2: operands in their compute type) --------------
_FLOAT_FN = {"exp": "expf", "log": "logf", "sqrt": "sqrtf", "sin": "sinf", "cos": "cosf",
             "tanh": "tanhf", "sigmoid": "mg_sigmoid"}


@functools.lru_cache(None)
def unary_expr(op: str, dt: DType) -> str:
    if op in _FLOAT_FN:   # integer inputs: computed in float, truncated when stored
        return f"{_FLOAT_FN[op]}((float)a0)"
    if op == "recip":
        return "1.0f / (float)a0"
    return {"neg": "-a0", "abs": "fabsf(a0)" if dt.is_float else "(a0 < 0 ? -a0 : a0)",
            "sign": "mg_sign(a0)",
            "not": "(a0 == 0)"}[op]


_BINARY = {"add": "a0 + a1", "sub": "a0 - a1", "mul": "a0 * a1", "div": "a0 / a1",
           "pow": "powf(a0, a1)", "maximum": "mg_max(a0, a1)", "minimum": "mg_min(a0, a1)",
           "lt": "a0 < a1", "le": "a0 <= a1", "gt": "a0 > a1", "ge": "a0 >= a1",
           "eq": "a0 == a1", "ne": "a0 != a1", "and": "a0 & a1", "or": "a0 | a1",
           "xor": "a0 ^ a1"}
_BINARY_INT = {**_BINARY, "div": "mg_div(a0, a1)", "pow": "mg_pow(a0, a1)"}


def binary_expr(op: str, dt: DType) -> str:
    # (two tables, not a cached function: this runs for every binary op, and a dict
    # lookup costs a quarter of an lru_cache call)
    return (_BINARY if dt.is_float else _BINARY_INT)[op]


@functools.lru_cache(None)
def fused_expr(tree, in_dts: tuple) -> str:
    """The C expression of a fused elementwise group (lazy.fuse) over inputs a0..:
    each node's unary/binary/where/cast expression with its operands substituted,
    every intermediate rounded to its dtype as storing and loading it would (so f16,
    bf16, bool and integer intermediates round as in separate kernels), and float
    multiplies as __fmul_rn, which nvcc never contracts with an add into an FMA (one
    rounding instead of two): results are bit-identical to the unfused kernels.
    The root is not rounded here: the kernel rounds it when it stores it."""
    op, arg, dt, *kids = tree
    ops = []                            # (C expression in compute type, dtype) per operand
    for k in kids:
        if isinstance(k, int):
            ops.append((f"a{k}", in_dts[k]))
        else:
            ops.append((load(k[2], store(k[2], fused_expr(k, in_dts))), k[2]))
    if op == "unary":
        e = unary_expr(arg[0], ops[0][1])
    elif op == "binary":
        fmul = arg[0] == "mul" and ops[0][1].is_float
        e = "__fmul_rn(a0, a1)" if fmul else binary_expr(arg[0], ops[0][1])
    else:
        e = "a0 ? a1 : a2" if op == "where" else "a0"        # where, cast
    return re.sub(r"\ba(\d+)\b", lambda m: f"({ops[int(m[1])][0]})", e)


# -- building and caching ----------------------------------------------------
_functions: dict = {}


_collect = None   # a list while sources() runs: generate, don't compile


def _build(key, make):
    """The prepared kernel for `key`; `make()` -> (source, kernel name, arg format)."""
    fn = _functions.get(key)
    if fn is None:
        source, fname, fmt = make()
        if _collect is not None:
            _collect.append((fname, source))
            return None
        from . import runtime
        if DEBUG >= 4:
            print(f"--- {fname} ---\n{source}")
        cubin = compiler.compile_to_cubin(source, arch=runtime.arch, name=fname + ".cu")
        fn = _functions[key] = runtime.get_function(runtime.load_module(cubin), fname, fmt)
        stats["built"] += 1
    return fn


def sources(generate) -> list:
    """[(kernel name, CUDA source)] of the kernels that `generate()` asks for,
    without compiling or touching a GPU (for CI's compile test)."""
    global _collect
    _collect = []
    try:
        generate()
        return _collect
    finally:
        _collect = None


def _name(prefix, key) -> str:
    return f"mg_{prefix}_{hashlib.sha1(repr(key).encode()).hexdigest()[:10]}"


def _idx_types(idx64: bool):
    return ("unsigned long long", "long long", "Q", "q") if idx64 else \
        ("unsigned int", "int", "I", "i")


# -- elementwise ---------------------------------------------------------------
def elementwise(expr: str, out_dt: DType, in_dts, scalar_ctypes, ndim: int, idx64: bool):
    """Kernel args: n, out, in0.., scalars c0.., dims[1:], out strides, strides of
    each input (all in elements). EXPR sees a0.. (compute type), c0.., i."""
    key = ("ew", expr, out_dt.name, tuple(d.name for d in in_dts), tuple(scalar_ctypes),
           ndim, idx64)

    def make():
        u, s, uf, sf = _idx_types(idx64)
        fname = _name("ew", key)
        nin = len(in_dts)
        params = [f"{u} n", f"{ctype(out_dt)}* __restrict__ out"]
        params += [f"const {ctype(d)}* __restrict__ in{k}" for k, d in enumerate(in_dts)]
        params += [f"{t} c{k}" for k, t in enumerate(scalar_ctypes)]
        params += [f"{u} d{j}" for j in range(1, ndim)]
        params += [f"{s} so{j}" for j in range(ndim)]
        params += [f"{s} s{k}_{j}" for k in range(nin) for j in range(ndim)]
        offs = ["oo"] + [f"o{k}" for k in range(nin)]
        strides = [[f"so{j}" for j in range(ndim)]] + \
            [[f"s{k}_{j}" for j in range(ndim)] for k in range(nin)]
        # phase 1: offsets and loads of UNROLL elements (independent loads in flight)
        p1 = [f"{u} r = i; {s} " + ", ".join(f"{o} = 0" for o in offs) + ";"]
        for j in range(ndim - 1, 0, -1):
            p1.append(f"{{ {s} c = ({s})(r % d{j}); r /= d{j}; " +
                      " ".join(f"{o} += c * {st[j]};" for o, st in zip(offs, strides)) + " }")
        p1.append(" ".join(f"{o} += ({s})r * {st[0]};" for o, st in zip(offs, strides)))
        p1.append("oo_[k] = oo;")
        p1 += [f"a{k}_[k] = {load(d, f'in{k}[o{k}]')};" for k, d in enumerate(in_dts)]
        # phase 2: compute and store
        p2 = [f"{ctype_compute(d)} a{k} = a{k}_[k];" for k, d in enumerate(in_dts)]
        p2.append(f"out[oo_[k]] = {store(out_dt, expr)};")
        regs = [f"{s} oo_[{UNROLL}];"] + [f"{ctype_compute(d)} a{k}_[{UNROLL}];"
                                         for k, d in enumerate(in_dts)]
        loop = "#pragma unroll\n    for (int k = 0; k < %d; k++) {\n      %s i = base + k * blockDim.x;\n" \
            "      if (i < n) {\n        %s\n      }\n    }\n" % (UNROLL, u, "%s")
        src = (_headers_for([out_dt, *in_dts], expr) + PRELUDE +
               f'extern "C" __global__ void {fname}({", ".join(params)}) {{\n'
               f"  const {u} step = ({u})gridDim.x * blockDim.x * {UNROLL};\n"
               f"  for ({u} base = ({u})blockIdx.x * blockDim.x * {UNROLL} + threadIdx.x; "
               f"base < n; base += step) {{\n    {' '.join(regs)}\n"
               + loop % "\n        ".join(p1) + loop % "\n        ".join(p2) + "  }\n}\n")
        fmt = uf + "P" * (1 + nin) + "".join(_FMT[t] for t in scalar_ctypes) + \
            uf * (ndim - 1) + sf * (ndim * (1 + nin))
        return src, fname, fmt
    return _build(key, make)


UNROLL = 4   # elements a thread handles per step of the elementwise loop

_FMT = {"float": "f", "double": "d", "long long": "q", "unsigned long long": "Q",
        "int": "i", "unsigned int": "I"}

# -- reductions ----------------------------------------------------------------
_IDENTITY = {("sum", "float"): "0.0f", ("max", "float"): "-__int_as_float(0x7f800000)",
             ("min", "float"): "__int_as_float(0x7f800000)",
             ("sum", "long long"): "0LL", ("max", "long long"): "(-9223372036854775807LL - 1)",
             ("min", "long long"): "9223372036854775807LL"}
_COMBINE = {"sum": "({a} + {b})", "max": "mg_max({a}, {b})", "min": "mg_min({a}, {b})"}


def _offset_code(var, u, s, dims, strides, idx):
    """C lines: the element offset `var` of the flat index `idx` over dims/strides."""
    lines = [f"{u} {var}_r = {idx}; {s} {var} = 0;"]
    for j in range(len(dims) - 1, 0, -1):
        lines.append(f"{var} += ({s})({var}_r % {dims[j]}) * {strides[j]}; {var}_r /= {dims[j]};")
    if dims:
        lines.append(f"{var} += ({s}){var}_r * {strides[0]};")
    return " ".join(lines)


def _reduce_params(nout, nred, idx64):
    """Shared by reduce/argmax: outer dims/strides (od, os) and reduced (rd, rs)."""
    u, s, uf, sf = _idx_types(idx64)
    p = [f"{u} od{j}" for j in range(1, nout)] + [f"{s} os{j}" for j in range(nout)]
    p += [f"{u} rd{j}" for j in range(1, nred)] + [f"{s} rs{j}" for j in range(nred)]
    return p, uf * (nout - 1) + sf * nout + uf * (nred - 1) + sf * nred


def _block_reduce(acc_t, combine, identity, lane_result):
    """C: reduce `acc` over the block (blockDim.x a multiple of 32); thread 0 runs
    `lane_result`."""
    c = combine.format(a="acc", b="__shfl_down_sync(0xffffffffu, acc, o)")
    return f"""
  __shared__ {acc_t} sh[32];
  for (int o = 16; o > 0; o >>= 1) acc = {c};
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {{
    acc = threadIdx.x < (blockDim.x >> 5) ? sh[threadIdx.x] : {identity};
    for (int o = 16; o > 0; o >>= 1) acc = {c};
    if (threadIdx.x == 0) {{ {lane_result} }}
  }}"""


def reduce(op: str, in_dt: DType, out_dt: DType, nout: int, nred: int, mode: str, idx64: bool):
    """out[m * S + s] = op over r in chunk s of x[outer(m) + inner(r)].
    Args: out, x, M, R, S, chunk, outer dims/strides, reduced dims/strides.
    mode "rows": block (m, s) = blockIdx.x = m * S + s, threads stride over r;
    mode "cols": thread t = s * M + m loops over its chunk of r."""
    key = ("red", op, in_dt.name, out_dt.name, nout, nred, mode, idx64)

    def make():
        u, s, uf, sf = _idx_types(idx64)
        fname = _name("red", key)
        acc_t = ctype_compute(in_dt)
        ident = _IDENTITY[(op, acc_t)]
        comb = _COMBINE[op]
        p, fmt = _reduce_params(nout, nred, idx64)
        params = [f"{ctype(out_dt)}* __restrict__ out", f"const {ctype(in_dt)}* __restrict__ x",
                  f"{u} M", f"{u} R", f"{u} S", f"{u} chunk"] + p
        outer = _offset_code("ob", u, s, ["0"] + [f"od{j}" for j in range(1, nout)],
                             [f"os{j}" for j in range(nout)], "m")
        inner = _offset_code("ib", u, s, ["0"] + [f"rd{j}" for j in range(1, nred)],
                             [f"rs{j}" for j in range(nred)], "r")
        val = load(in_dt, "x[ob + ib]")
        step = comb.format(a="acc", b=val)
        inner4 = _offset_code("ib", u, s, ["0"] + [f"rd{j}" for j in range(1, nred)],
                              [f"rs{j}" for j in range(nred)], "rk")
        def tree(lo, n):   # combine v[lo..lo+n) pairwise
            return f"v[{lo}]" if n == 1 else comb.format(a=tree(lo, n // 2),
                                                         b=tree(lo + n // 2, n // 2))
        dr = "blockDim.x" if mode == "rows" else "1"
        # 8 independent loads in flight per thread: with 4, a full f32 sum on an H200 read
        # 3.3-3.8 TB/s (too few bytes in flight per SM to cover the memory latency)
        loops = f"""
  {acc_t} acc = {ident};
  {u} r = r0{" + threadIdx.x" if mode == "rows" else ""};
  for (; r + 7 * {dr} < r1; r += 8 * {dr}) {{
    {acc_t} v[8];
#pragma unroll
    for (int k = 0; k < 8; k++) {{ {u} rk = r + k * {dr}; {inner4} v[k] = {val}; }}
    acc = {comb.format(a="acc", b=tree(0, 8))};
  }}
  for (; r < r1; r += {dr}) {{ {inner} acc = {step}; }}"""
        if mode == "rows":
            body = f"""
  {u} m = blockIdx.x / S, sp = blockIdx.x % S;
  {u} r0 = sp * chunk, r1 = r0 + chunk < R ? r0 + chunk : R;
  {outer}{loops}
""" + _block_reduce(acc_t, comb, ident, f"out[blockIdx.x] = {store(out_dt, 'acc')};")
        else:
            body = f"""
  {u} t = ({u})blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= M * S) return;
  {u} m = t % M, sp = t / M;
  {u} r0 = sp * chunk, r1 = r0 + chunk < R ? r0 + chunk : R;
  {outer}{loops}
  out[m * S + sp] = {store(out_dt, 'acc')};
"""
        src = _headers_for([in_dt, out_dt]) + PRELUDE + \
            f'extern "C" __global__ void {fname}({", ".join(params)}) {{{body}\n}}\n'
        return src, fname, "PP" + uf * 4 + fmt
    return _build(key, make)


def argmax(in_dt: DType, nout: int, idx64: bool):
    """out[m] (int64) = first r maximizing x[outer(m) + inner(r)] (NaN counts as
    largest), a block per output. Args: out, x, M, R, outer dims/strides, reduced
    dim/stride (one axis)."""
    key = ("argmax", in_dt.name, nout, idx64)

    def make():
        u, s, uf, sf = _idx_types(idx64)
        fname = _name("argmax", key)
        acc_t = ctype_compute(in_dt)
        p, fmt = _reduce_params(nout, 1, idx64)
        outer = _offset_code("ob", u, s, ["0"] + [f"od{j}" for j in range(1, nout)],
                             [f"os{j}" for j in range(nout)], "m")
        src = _headers_for([in_dt]) + PRELUDE + f"""
extern "C" __global__ void {fname}(long long* __restrict__ out, const {ctype(in_dt)}* __restrict__ x,
                                   {u} M, {u} R, {", ".join(p)}) {{
  {u} m = blockIdx.x;
  {outer}
  {acc_t} bv = 0; long long bi = -1;   // bi < 0: nothing seen yet
  for ({u} r = threadIdx.x; r < R; r += blockDim.x) {{
    {acc_t} v = {load(in_dt, "x[ob + (" + s + ")r * rs0]")};
    if (bi < 0 || mg_better(v, r, bv, bi)) {{ bv = v; bi = r; }}
  }}
  __shared__ {acc_t} shv[256]; __shared__ long long shi[256];   // blockDim <= 256
  shv[threadIdx.x] = bv; shi[threadIdx.x] = bi;
  __syncthreads();
  for (unsigned int o = blockDim.x / 2; o > 0; o >>= 1) {{
    if (threadIdx.x < o) {{
      {acc_t} v = shv[threadIdx.x + o]; long long i = shi[threadIdx.x + o];
      if (i >= 0 && (shi[threadIdx.x] < 0 || mg_better(v, i, shv[threadIdx.x], shi[threadIdx.x]))) {{
        shv[threadIdx.x] = v; shi[threadIdx.x] = i; }}
    }}
    __syncthreads();
  }}
  if (threadIdx.x == 0) out[m] = shi[0] < 0 ? 0 : shi[0];
}}
"""
        return src, fname, "PP" + uf * 2 + fmt
    return _build(key, make)


# -- matmul ------------------------------------------------------------------------
def matmul(a_dt: DType, b_dt: DType, out_dt: DType):
    """c[z, m, n] = sum_k a[z, m, k] b[z, k, n] with any strides for a and b, c dense.
    Args: c, a, b, M, N, K, a strides (batch, m, k), b strides (batch, k, n)."""
    key = ("mm", a_dt.name, b_dt.name, out_dt.name)

    def make():
        fname = _name("mm", key)
        acc = ctype_compute(out_dt)
        src = _headers_for([a_dt, b_dt, out_dt]) + f"""
extern "C" __global__ void __launch_bounds__(256) {fname}(
    {ctype(out_dt)}* __restrict__ c, const {ctype(a_dt)}* __restrict__ a,
    const {ctype(b_dt)}* __restrict__ b, int M, int N, int K,
    long long sab, long long sam, long long sak, long long sbb, long long sbk, long long sbn) {{
  __shared__ {acc} As[16][64 + 1], Bs[16][64 + 1];
  int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  int m0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
  a += blockIdx.z * sab; b += blockIdx.z * sbb; c += (long long)blockIdx.z * M * N;
  {acc} r[4][4] = {{}};
  for (int k0 = 0; k0 < K; k0 += 16) {{
    for (int e = threadIdx.x; e < 16 * 64; e += 256) {{
      int ak = e % 16, am = m0 + e / 16, bk = e / 64, bn = n0 + e % 64;
      As[ak][e / 16] = (am < M && k0 + ak < K) ? ({acc}){load(a_dt, "a[am * sam + (k0 + ak) * sak]")} : 0;
      Bs[bk][e % 64] = (bn < N && k0 + bk < K) ? ({acc}){load(b_dt, "b[(k0 + bk) * sbk + bn * sbn]")} : 0;
    }}
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 16; k++) {{
      {acc} x[4], y[4];
#pragma unroll
      for (int i = 0; i < 4; i++) {{ x[i] = As[k][ty + 16 * i]; y[i] = Bs[k][tx + 16 * i]; }}
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) r[i][j] += x[i] * y[j];
    }}
    __syncthreads();
  }}
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 4; j++) {{
      int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) c[(long long)m * N + n] = {store(out_dt, "r[i][j]")};
    }}
}}
"""
        return src, fname, "PPP" + "iii" + "q" * 6
    return _build(key, make)


# -- gather / scatter-add --------------------------------------------------------
# gather reads x[p, idx[j], q]; scatter_add, its backward, adds into acc[p, idx[j], q].
# The two must read idx the same way (a negative index counts from the end, then it is
# clamped into [0, A)), so the loop head that turns the flat index i into (p, j, q) and
# the row k is written once, here; each kernel's body follows it.
_GATHER_LOOP = """\
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    long long q = i % Q, t = i / Q, j = t % J, p = t / J, k = (long long)idx[j];
    k = k < 0 ? k + A : k;
    if (k < 0 || k >= A) {                 // a bad index: flag it (the host raises), stay in bounds
      atomicOr(err, 1u);
      k = k < 0 ? 0 : A - 1;
    }"""


def gather(x_dt: DType, idx_dt: DType):
    """out[p, j, q] = x[p, idx[j], q] (x, idx dense; negative idx from the end; an index
    out of range sets *err, see runtime.index_flag). Args: out, x, idx, n, J, Q, A, err."""
    key = ("gather", x_dt.name, idx_dt.name)

    def make():
        fname = _name("gather", key)
        src = _headers_for([x_dt]) + f"""
extern "C" __global__ void {fname}({ctype(x_dt)}* __restrict__ out, const {ctype(x_dt)}* __restrict__ x,
    const {ctype(idx_dt)}* __restrict__ idx, long long n, long long J, long long Q, long long A,
    unsigned int* __restrict__ err) {{
{_GATHER_LOOP}
    out[i] = x[(p * A + k) * Q + q];
  }}
}}
"""
        return src, fname, "PPP" + "qqqq" + "P"
    return _build(key, make)


def scatter_add(src_dt: DType, idx_dt: DType):
    """acc[p, idx[j], q] += src[p, j, q], atomically; acc is float (float inputs)
    or 64-bit integer; a bad index sets *err as gather's. Args: acc, src, idx, n, J, Q, A, err."""
    key = ("scatter", src_dt.name, idx_dt.name)

    def make():
        fname = _name("scatter", key)
        fl = src_dt.is_float
        acc_t = "float" if fl else "unsigned long long"
        add = "atomicAdd(acc + o, v);" if fl else "atomicAdd(acc + o, (unsigned long long)v);"
        src = _headers_for([src_dt]) + f"""
extern "C" __global__ void {fname}({acc_t}* __restrict__ acc, const {ctype(src_dt)}* __restrict__ src,
    const {ctype(idx_dt)}* __restrict__ idx, long long n, long long J, long long Q, long long A,
    unsigned int* __restrict__ err) {{
{_GATHER_LOOP}
    long long o = (p * A + k) * Q + q;
    {ctype_compute(src_dt)} v = {load(src_dt, "src[i]")};
    {add}
  }}
}}
"""
        return src, fname, "PPP" + "qqqq" + "P"
    return _build(key, make)


# -- fused optimizer step ----------------------------------------------------------
def adamw(p_dt: DType, g_dt: DType, idx64: bool, in_place: bool = False):
    """One AdamW step per element, in float32 (optim.AdamW's fused path):
        m' = m + (g - m) * c1            v' = v + (g*g - v) * c2
        p' = p * decay - (m' * step) / (sqrt(v') + eps)    (rounded once to p's dtype)
    with the same operations in the same order as the composed graph and the NumPy
    backend. Every operation is an explicit round-to-nearest intrinsic, so nvcc/NVRTC
    cannot contract a multiply and an add into an FMA (which would round differently
    from the CPU): results are bit-identical to the NumPy backend.
    Args: n, p_out, m_out, v_out (dense), p, g, m, v, then each input's stride (1, or 0
    for a broadcast scalar such as the zeros of the first step), then the scalars
    c1, c2, decay, step, eps (float32 kernel arguments: one kernel serves every step).
    in_place: p_out, m_out, v_out are p, m, v themselves (mg.jit), so those pointers are
    not declared __restrict__ (each element is still read before it is written)."""
    key = ("adamw", p_dt.name, g_dt.name, idx64, in_place)

    def make():
        u, s, uf, sf = _idx_types(idx64)
        fname = _name("adamw", key)
        r = "" if in_place else "__restrict__"
        src = _headers_for([p_dt, g_dt]) + f"""
extern "C" __global__ void {fname}({u} n, {ctype(p_dt)}* {r} po,
    float* {r} mo, float* {r} vo, const {ctype(p_dt)}* {r} p,
    const {ctype(g_dt)}* __restrict__ g, const float* {r} m,
    const float* {r} v, {s} sp, {s} sg, {s} sm, {s} sv,
    float c1, float c2, float decay, float step, float eps) {{
  for ({u} i = ({u})blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += ({u})gridDim.x * blockDim.x) {{
    {s} k = ({s})i;
    float w = {load(p_dt, "p[k * sp]")}, gi = {load(g_dt, "g[k * sg]")};
    float mi = m[k * sm], vi = v[k * sv];
    mi = __fadd_rn(mi, __fmul_rn(__fsub_rn(gi, mi), c1));
    vi = __fadd_rn(vi, __fmul_rn(__fsub_rn(__fmul_rn(gi, gi), vi), c2));
    float upd = __fdiv_rn(__fmul_rn(mi, step), __fadd_rn(__fsqrt_rn(vi), eps));
    po[i] = {store(p_dt, "__fsub_rn(__fmul_rn(w, decay), upd)")};
    mo[i] = mi;
    vo[i] = vi;
  }}
}}
"""
        return src, fname, uf + "P" * 7 + sf * 4 + "f" * 5
    return _build(key, make)
