"""The quantized family on the GPU: host side of kernels/matmul_int8.cu, matmul_int4.cu
and qkv_project.cu (their opening comments are the contracts; benchmarks/notes_quant.md
has the measurements behind the choices below).

`register(backend)` puts one function per op into `backend.kernels`:

    matmul_int8(a, b, scale=)                 int8 [..., M, K] x int8 [K, N] -> f32 [..., M, N]
    matmul_int4(a, packed, scales, group_size=)        f16 [..., M, K] -> f32 [..., M, N]
    dequantize_int4(packed, scales, group_size=)       -> f16 [K, N] (the backward's weight)
    qkv_project_int8(x, wq, wk, wv, scales=(sq, sk, sv))       -> three f16 [..., M, N]
    qkv_project_int4(x, wq, wk, wv, sq, sk, sv, group_size=)    -> three f16 [..., M, N]

Each receives strided `CudaBuffer` views (shapes already validated by minigrad.ops) and
returns new dense buffers. Host rules:

* Activations: leading batch dims are flattened into M without a copy when the strides
  allow (one row stride, unit stride along K); otherwise one dense copy.
* int8 B operands (matmul_int8's b, the three QKV weights) are [K, N] in the API, but the
  kernels read them K-major, as Bt = [N, ld] (element (k, n) at Bt[n*ld + k]). A b that
  is a transposed view of an [N, K] tensor (strides (1, ld), as `linear_weight.T`) is used
  as it is; any other b is copied once per call into [N, round_up(K, 16)]
  (`matmul_int8_transpose` for a row-major b, a strided copy otherwise). Callers that
  reuse a weight keep it [N, K] and pass `.T` (mg.nn.QuantLinear does).
* matmul_int8: on compute capability 9.0, `matmul_int8_tma_nt_*` of matmul_tc_wgmma.cu
  (the TMA + wgmma pipeline of matmul_tc_async, s8 wgmma, the same tile rule ws_tile;
  MINIGRAD_MATMUL_TMA=0 turns it off) where the driver accepts the tensor maps, else
  `matmul_int8_wgmma` (cp.async); `_tn_v` elsewhere. All three need lda, ldb % 16 == 0 and
  16-byte aligned A and Bt, else `_tn_s` (byte loads, any layout).
* matmul_int4 / qkv_project_*: M <= 64 -> the gemv (decode) kernels; M > 64 -> the wgmma
  gemm on cc 9.0, the mma.sync gemm elsewhere. int4 gemv: R = 1 row tile per block when
  K >= N, else 2; T = 1 token tile when M <= 8, else 2. matmul_int4 of one token (M == 1)
  with K <= N runs `matmul_int4_gemv1` instead (rows read like a copy; faster there, not
  where K > N).
  x must be 16-byte aligned with a row stride % 8 == 0 (qkv_project_int8 has element-load
  `_s` variants for other x; the int4 kernels get a dense copy, whose row stride K is a
  multiple of the group size).
* The fused QKV ops return three views of ONE allocation (each output 256-byte aligned):
  one pool allocation instead of three (host time); the memory is freed with the last one.
* Kernels are looked up once per entry name (host time); those using more than 48 KB of
  dynamic shared memory get the attribute raised then.
* Architectures the kernel files do not declare (`// minigrad-arch:`) are not registered:
  the backend then runs the NumPy reference on the host (with its one-time warning).
"""
from __future__ import annotations

import math

from ...dtype import float16, float32, int8
from . import compiler, ops_matmul

I8_FILE, I4_FILE, QKV_FILE = "matmul_int8.cu", "matmul_int4.cu", "qkv_project.cu"
I8_FMT, I8T_FMT = "PPPqqqiiif", "PPqqii"
I4_FMT = "PPPPqqiiii"
Q4_FMT, Q8_FMT = "PPPPPPPPPPqqiiii", "PPPPPPPqqqiiifff"
MI8_SMEM, MI8W_SMEM = 81920, 197632          # matmul_int8 _tn_v/_tn_s, wgmma
GM_SMEM_I4, GM_SMEM_I8 = 69632, 86016        # mma.sync gemm, int4 / int8 weights
WG_SMEM_I4, WG_SMEM_I8 = 189440, 230400      # wgmma gemm, int4 / int8 weights
GEMV_MAX_M = 64                              # M <= 64: decode kernels
MAX_GRID_YZ = 65535

# dequantize_int4 as one generated elementwise kernel over the output [K, N] (flat index
# i, k = i / N): nibble k % 8 of the word, two's complement, times the f16 scale. The
# product of a 4-bit integer and an f16 value is exact in f32, so the f16 store rounds
# once, as the NumPy reference does.
DEQUANT_INT4_EXPR = "(float)(((((a0 >> (4 * (((long long)i / c0) & 7))) & 15) ^ 8) - 8)) * a1"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


def supported_files(arch: str) -> dict:
    """{file: the arch it is built with} for the quantized kernel files this device can
    build (a file whose `minigrad-arch` list lacks the device is left out)."""
    out = {}
    for f in (I8_FILE, I4_FILE, QKV_FILE):
        text = (compiler.kernels_dir() / f).read_text()
        try:
            out[f] = compiler.arch_for_file(text, arch)
        except RuntimeError:
            pass
    return out


def register(backend, runtime=None) -> list:
    """Register the quantized ops on `backend` (a CudaBackend); returns their names.
    `runtime` defaults to minigrad.backend.cuda.runtime (tests may pass a stand-in)."""
    if runtime is None:
        from . import runtime
    q = QuantKernels(backend, runtime)
    names = ["dequantize_int4"]                       # a generated kernel: any arch
    if I8_FILE in q.files:
        names.append("matmul_int8")
    if I4_FILE in q.files:
        names.append("matmul_int4")
    if QKV_FILE in q.files:
        names.append("qkv_project_int4")
        if I8_FILE in q.files:          # a row-major int8 weight needs matmul_int8.cu's
            names.append("qkv_project_int8")             # transpose
    for name in names:
        backend.kernels[name] = getattr(q, name)
    return names


class QuantKernels:
    def __init__(self, backend, runtime):
        self.b, self.rt = backend, runtime
        self.files = supported_files(backend.arch)
        self.wgmma = {f: a == "sm_90a" for f, a in self.files.items()}
        self._fns = {}               # entry name -> prepared function (smem attribute raised)
        self._i8_tma = {}            # (M, N, K, lda, ldb) -> matmul_int8's TMA launch plan

    # ------------------------------------------------------------ plumbing --
    def _fn(self, file, entry, fmt, smem=0):
        fn = self._fns.get(entry)
        if fn is None:
            fn = self.b.function(file, entry, fmt)
            if smem > 48 * 1024:     # an entry is always launched with the same smem
                self.rt.set_max_dynamic_shared(fn, smem)
            self._fns[entry] = fn
        return fn

    def _launch(self, file, entry, fmt, grid, block, args, smem=0):
        assert grid[1] <= MAX_GRID_YZ and grid[2] <= MAX_GRID_YZ, (entry, grid)
        fn = self._fns.get(entry) or self._fn(file, entry, fmt, smem)
        self.rt.launch(fn, grid, block, args, smem)

    def _outs3(self, shape, dtype):
        """Three dense outputs of `shape` as views of one allocation, each 256-byte aligned."""
        n = math.prod(shape)
        seg = round_up(max(n, 1), 256 // dtype.itemsize)
        buf = self.b.empty((3 * seg,), dtype)
        return tuple(buf.view(shape, None, buf.offset + i * seg) for i in range(3))

    def _copy(self, x):
        """A fresh dense copy (new allocations are aligned)."""
        return self.b._copy_into(self.b.empty(x.shape, x.dtype), x)

    def _aligned(self, x):
        """x dense, starting at a 16-byte boundary (a copy only when it is not)."""
        if x.contig and x.ptr % 16 == 0:
            return x
        x = self.b._dense(x)
        return x if x.ptr % 16 == 0 else self._copy(x)

    def _zero(self, buf):
        self.rt.memset(buf.ptr, 0, buf.nbytes)
        return buf

    def _rows(self, a, K):
        """a [..., M, K] as (2-D buffer [M, K] with unit stride along K, row stride).
        A single row reports a row stride of K: the vector loaders read a row's last
        16-byte chunk whole, so a row of K bytes passes their rules only when K itself
        does (reporting round_up(K, 16) let matmul_int8_wgmma read past a [1, 33]
        allocation: compute-sanitizer, H200)."""
        M = math.prod(a.shape[:-1])
        x = a if a.ndim == 2 else self.b.reshape((M, K), a)
        sm, sk = x.strides
        if not ((K == 1 or sk == 1) and (M == 1 or sm >= K)):
            x = self._copy(x)
            sm = K
        return x, (K if M == 1 else sm)

    def _x_vec(self, x, ld, mult):
        return ld % mult == 0 and x.ptr % 16 == 0

    def _k_major(self, b, need_aligned):
        """An int8 [K, N] view as (Bt, ld): element (k, n) at Bt.ptr + n*ld + k. Uses b
        as it is when it is already K-major (a transposed [N, K] tensor) and, where the
        kernel needs it (need_aligned), ld % 16 == 0 with a 16-byte aligned start; else
        copies it once into a new [N, round_up(K, 16)] buffer."""
        K, N = b.shape
        sk, sn = b.strides
        if (K == 1 or sk == 1) and (N == 1 or sn >= K):
            ld = sn if N > 1 else K     # one column: K, never a padded stride (see _rows)
            if not need_aligned or (ld % 16 == 0 and b.ptr % 16 == 0):
                return b, ld
        ld = round_up(K, 16)
        if not ((N == 1 or sn == 1) and (K == 1 or sk >= N) and
                ceil_div(ld, 64) <= MAX_GRID_YZ):
            return self._k_major_copy(b)
        # row-major [K, N] (row stride ldb_in): the tiled transpose of matmul_int8.cu,
        # which also zero-fills the padding k in [K, ld)
        bt = self.b.empty((N, ld), int8)
        self._launch(I8_FILE, "matmul_int8_transpose", I8T_FMT,
                     (ceil_div(N, 64), ceil_div(ld, 64), 1), (256, 1, 1),
                     [b.ptr, bt.ptr, sk if K > 1 else N, ld, K, N])
        return bt, ld

    def _k_major_copy(self, b):
        """A new [N, round_up(K, 16)] K-major copy of the int8 [K, N] view b, by one
        strided copy (the padding k in [K, ld) is never used: the kernels zero-fill K
        tails, and x is zero there)."""
        K, N = b.shape
        ld = round_up(K, 16)
        bt = self.b.empty((N, ld), int8)
        self.b._copy_into(bt.view((K, N), (1, ld), bt.offset), b)
        return bt, ld

    # ----------------------------------------------------------------- ops --
    def matmul_int8(self, a, b, scale):
        K, N = b.shape
        lead = a.shape[:-1]
        M = math.prod(lead)
        out = self.b.empty(lead + (N,), float32)
        if out.size == 0:
            return out
        if K == 0:
            return self._zero(out)
        A, lda = self._rows(a, K)
        Bt, ldb = self._k_major(b, need_aligned=False)
        vec = lda % 16 == 0 and ldb % 16 == 0 and A.ptr % 16 == 0 and Bt.ptr % 16 == 0
        if vec and self.wgmma[I8_FILE] and ops_matmul.USE_TMA and \
                self._int8_tma(A, Bt, out, lda, ldb, M, N, K, scale):
            return out
        args = [A.ptr, Bt.ptr, out.ptr, lda, ldb, N, M, N, K, float(scale)]
        if vec and self.wgmma[I8_FILE]:
            self._launch(I8_FILE, "matmul_int8_wgmma", I8_FMT,
                         (ceil_div(M, 128) * ceil_div(N, 256), 1, 1), (256, 1, 1), args,
                         MI8W_SMEM)
        else:
            self._launch(I8_FILE, "matmul_int8_tn_v" if vec else "matmul_int8_tn_s", I8_FMT,
                         (ceil_div(M, 128) * ceil_div(N, 128), 1, 1), (128, 1, 1), args,
                         MI8_SMEM)
        return out

    def _int8_tma(self, A, Bt, out, lda, ldb, M, N, K, scale):
        """matmul_int8 on the TMA + wgmma pipeline of matmul_tc_async (sm_90a;
        matmul_tc_wgmma.cu's matmul_int8_tma_*); False where the driver refuses a tensor map
        (then matmul_int8_wgmma runs)."""
        key = (M, N, K, lda, ldb)
        maps = self._i8_tma.get(key)
        if maps is None:             # planned once per shape (the tile rule, the maps' shapes)
            if len(self._i8_tma) >= 1024:
                self._i8_tma.clear()
            maps = self._i8_tma[key] = ops_matmul.tma_launcher(
                self.b, self.rt, "i8", "nt", lda, ldb, 0, 0, M, N, K, 1, self.rt.multiprocessors)
        launch = maps(A.ptr, Bt.ptr)
        if launch is None:
            return False
        launch(out.ptr, float(scale))
        return True

    def _x_f16(self, x, K):
        """f16 activations [..., M, K] -> (buffer, ldx) meeting the 16-byte load rule of
        the int4 kernels (a dense copy otherwise: its ldx = K is a multiple of 32)."""
        X, ldx = self._rows(x, K)
        if not self._x_vec(X, ldx, 8):
            X, ldx = self._copy(X), K
        return X, ldx

    def matmul_int4(self, a, packed, scales, group_size):
        N, K = packed.shape[0], packed.shape[1] * 8
        lead = a.shape[:-1]
        M = math.prod(lead)
        out = self.b.empty(lead + (N,), float32)
        if out.size == 0:
            return out
        if K == 0:
            return self._zero(out)
        A, lda = self._x_f16(a, K)
        W, S = self._aligned(packed), self._aligned(scales)
        args = [A.ptr, W.ptr, S.ptr, out.ptr, lda, N, M, N, K, int(math.log2(group_size))]
        if M == 1 and K <= N:
            self._launch(I4_FILE, "matmul_int4_gemv1", I4_FMT, (ceil_div(N, 16), 1, 1),
                         (256, 1, 1), args)
        elif M <= GEMV_MAX_M:
            r = 1 if K >= N else 2
            t = 1 if M <= 8 else 2
            self._launch(I4_FILE, f"matmul_int4_gemv_r{r}_t{t}", I4_FMT,
                         (ceil_div(N, 16 * r), ceil_div(M, 8 * t), 1), (256, 1, 1), args)
        elif self.wgmma[I4_FILE]:
            self._launch(I4_FILE, "matmul_int4_gemm_wgmma", I4_FMT,
                         (ceil_div(M, 128) * ceil_div(N, 256), 1, 1), (256, 1, 1), args,
                         WG_SMEM_I4)
        else:
            self._launch(I4_FILE, "matmul_int4_gemm", I4_FMT,
                         (ceil_div(M, 128) * ceil_div(N, 128), 1, 1), (128, 1, 1), args,
                         GM_SMEM_I4)
        return out

    def dequantize_int4(self, packed, scales, group_size):
        N, K, G = packed.shape[0], packed.shape[1] * 8, group_size
        out = self.b.empty((K, N), float16)
        if out.size == 0:
            return out
        # views over (group g, word t of the group, nibble j, column n): k = g*G + 8t + j
        sp_n, sp_w = packed.strides
        ss_g, ss_n = scales.strides
        shape = (K // G, G // 8, 8, N)
        p = packed.view(shape, (sp_w * (G // 8), sp_w, 0, sp_n))
        s = scales.view(shape, (ss_g, 0, 0, ss_n))
        self.b._ew(DEQUANT_INT4_EXPR, out.view(shape, None), [p, s], [("long long", N)])
        return out

    def qkv_project_int8(self, x, wq, wk, wv, scales):
        K, N = wq.shape
        lead = x.shape[:-1]
        M = math.prod(lead)
        outs = self._outs3(lead + (N,), float16)
        if outs[0].size == 0:
            return outs
        if K == 0:
            return tuple(self._zero(o) for o in outs)
        X, ldx = self._rows(x, K)
        ws = [self._k_major(w, need_aligned=True) for w in (wq, wk, wv)]
        if len({ld for _, ld in ws}) > 1:      # the kernel takes one ldw for all three
            ws = [(bt, ld) if ld == round_up(K, 16) else self._k_major_copy(w)
                  for (bt, ld), w in zip(ws, (wq, wk, wv))]
        ldw = ws[0][1]
        vec = self._x_vec(X, ldx, 8)
        args = [X.ptr, ws[0][0].ptr, ws[1][0].ptr, ws[2][0].ptr, outs[0].ptr, outs[1].ptr,
                outs[2].ptr, ldx, ldw, N, M, N, K, float(scales[0]), float(scales[1]),
                float(scales[2])]
        # the wgmma gemm has no element-load variant: an x it cannot load takes _gemm_s
        self._launch_qkv("int8", Q8_FMT, M, N, args, wgmma=vec and self.wgmma[QKV_FILE],
                         smem=(WG_SMEM_I8, GM_SMEM_I8), x_loads="_v" if vec else "_s")
        return tuple(outs)

    def qkv_project_int4(self, x, wq, wk, wv, sq, sk, sv, group_size):
        N, K = wq.shape[0], wq.shape[1] * 8
        lead = x.shape[:-1]
        M = math.prod(lead)
        outs = self._outs3(lead + (N,), float16)
        if outs[0].size == 0:
            return outs
        if K == 0:
            return tuple(self._zero(o) for o in outs)
        X, ldx = self._x_f16(x, K)
        al = self._aligned     # (the list keeps any copies alive until the launch is queued)
        ins = [al(wq), al(wk), al(wv), al(sq), al(sk), al(sv)]
        args = [X.ptr, ins[0].ptr, ins[1].ptr, ins[2].ptr, ins[3].ptr, ins[4].ptr, ins[5].ptr,
                outs[0].ptr, outs[1].ptr, outs[2].ptr, ldx, N, M, N, K,
                int(math.log2(group_size))]
        self._launch_qkv("int4", Q4_FMT, M, N, args, wgmma=self.wgmma[QKV_FILE],
                         smem=(WG_SMEM_I4, GM_SMEM_I4))
        return outs

    def _launch_qkv(self, kind, fmt, M, N, args, wgmma, smem, x_loads=""):
        """Launch qkv_project_{kind} ("int8" or "int4"), one rule for both: the gemv
        (decode) kernel `_gemv_t{T}` when M <= GEMV_MAX_M (T = 1 token tile when M <= 8,
        else 2), else `_gemm_wgmma` where `wgmma` holds, else the mma.sync `_gemm`. Grid y
        of the gemms picks the projection (q, k, v). `smem` is the dynamic shared memory
        of (the wgmma gemm, the mma.sync gemm). `x_loads` ("_v" vector or "_s" element
        loads of x) ends the int8 gemv and mma.sync gemm names; the int4 kernels have
        one variant."""
        name = f"qkv_project_{kind}"
        if M <= GEMV_MAX_M:
            t = 1 if M <= 8 else 2
            self._launch(QKV_FILE, f"{name}_gemv_t{t}{x_loads}", fmt,
                         (ceil_div(N, 16), ceil_div(M, 8 * t), 1), (256, 1, 1), args)
        elif wgmma:
            self._launch(QKV_FILE, f"{name}_gemm_wgmma", fmt,
                         (ceil_div(M, 128) * ceil_div(N, 256), 3, 1), (256, 1, 1), args,
                         smem[0])
        else:
            self._launch(QKV_FILE, f"{name}_gemm{x_loads}", fmt,
                         (ceil_div(M, 128) * ceil_div(N, 128), 3, 1), (128, 1, 1), args,
                         smem[1])
