#!/usr/bin/env python3
"""Standalone check + benchmark of the quantized-family kernels (no minigrad runtime).

    kernels/matmul_int8.cu   matmul_int8_tn_v / _tn_s / _wgmma (sm_90a) / _transpose
    kernels/matmul_int4.cu   matmul_int4_gemv_r{1,2,4}_t{1,2} / matmul_int4_gemm
    kernels/qkv_project.cu   qkv_project_int{4,8}_gemv_* / _gemm_* / qkv_project_int8_one_*

Compiles the .cu files with NVRTC (cuda.bindings.nvrtc) to a cubin for the device's exact
arch (sm_90a for the wgmma entry), loads them with PyCUDA (primary context, module_from_buffer,
prepared_async_call) and

  --check     compares every kernel with the NumPy oracle of minigrad/backend/reference.py on
              fresh random inputs with NaN-poisoned outputs: int8 bit-exact, int4/QKV
              rel = |g - w| / max(|w|, 1) < 1e-3; M in {1,3,17,64,1000}, N in {1,7,130,4096},
              K in {32,96,4096} (+ odd K for int8), group sizes 32/64/128, batched and strided x.
  --sanitize  a few small shapes per kernel (tails included), for
              compute-sanitizer --tool memcheck|racecheck python3 <this> --sanitize
  --bench     CUDA-event timings (warm-up, L2 flushed before each rep - by default with a
              512 MB read, --flush write for the zero_() flush of runs 1-2 - median) against
              torch._int_mm (both B layouts), torch f16 matmul / F.linear, our matmul_tc f16,
              and three separate calls for the fused QKV ops. Prints a markdown table and
              writes JSON to --out.

  --suite     everything for one GPU call, one process per step (checks, wgmma checks, bench,
              memcheck, racecheck), with a time budget; --suite-int8 adds the int8 checks.
  --dry ARCH  no GPU: compiles for real, validates every launch's argument types, launches
              nothing (tests the harness itself on a CPU machine).

Run from the repository root (GPU machine: `. .gpu/setup.sh` first):
    python3 benchmarks/quant_kernels_standalone.py --suite --suite-int8 --out $OUT
    python3 benchmarks/quant_kernels_standalone.py --check --bench --families i4,qkv4 --out $OUT
    compute-sanitizer --tool racecheck python3 benchmarks/quant_kernels_standalone.py --sanitize
Families: i8 (int8 mma.sync + transpose), i8w (int8 wgmma), i4 (int4 gemv + mma.sync gemm),
i4w (int4 wgmma gemm), qkv4, qkv8 (fused gemv + mma.sync gemm), qkvw (fused wgmma gemm).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KDIR = ROOT / "kernels"
f16, f32 = np.float16, np.float32

# The NumPy oracle, loaded from its file (no minigrad package import needed).
_spec = importlib.util.spec_from_file_location("mg_reference", ROOT / "minigrad/backend/reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def pack_int4(q):
    """int values in -8..7, [K, N] -> uint32 [N, K//8] (minigrad.quant.pack_int4's layout)."""
    k, n = q.shape
    nib = (q.T.astype(np.int64) & 0xF).astype(np.uint32).reshape(n, k // 8, 8)
    return np.ascontiguousarray(np.bitwise_or.reduce(nib << (np.arange(8, dtype=np.uint32) * 4), axis=2)
                                .astype(np.uint32))


def ceil_div(a, b):
    return -(-a // b)


def round_up(a, b):
    return ceil_div(a, b) * b


# ============================================================== compilation ==
def _nvrtc_compile(path: Path, arch: str) -> bytes:
    from cuda.bindings import nvrtc
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    src = path.read_bytes()
    err, prog = nvrtc.nvrtcCreateProgram(src, path.name.encode(), 0, [], [])
    assert err == ok, err
    opts = [f"--gpu-architecture={arch}".encode(), b"-I" + str(KDIR).encode(),
            b"-I/usr/local/cuda/include", b"--std=c++17", b"-lineinfo"]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    _, lsz = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * lsz
    nvrtc.nvrtcGetProgramLog(prog, log)
    if err != ok:
        raise RuntimeError(f"NVRTC failed on {path.name} for {arch}:\n{log.decode(errors='replace')}")
    err, size = nvrtc.nvrtcGetCUBINSize(prog)
    assert err == ok, err
    cubin = b" " * size
    (err,) = nvrtc.nvrtcGetCUBIN(prog, cubin)
    assert err == ok, err
    nvrtc.nvrtcDestroyProgram(prog)
    return cubin


def _nvcc_compile(path: Path, arch: str) -> bytes:
    out = Path("/tmp") / f"mgq_{path.stem}_{arch}.cubin"
    gen = (f"-gencode=arch=compute_{arch[3:]},code={arch}")
    subprocess.run(["nvcc", gen, "-cubin", "-lineinfo", "-I", str(KDIR), "-o", str(out), str(path)],
                   check=True, capture_output=True)
    return out.read_bytes()


# Other engineers' kernels, used only as comparison baselines, may come prebuilt
# (nvcc of the device's CUDA version, --prebuilt DIR/<stem>_<arch>.cubin) to save device
# time; the quantized kernels are always compiled here with NVRTC (or nvcc as a fallback).
PREBUILT_OK = {"matmul_tc.cu", "matmul_tc_wgmma.cu"}
PREBUILT_DIR = None
SUITE_INT8 = False


def compile_cubin(name: str, arch: str, cache_dir: Path) -> tuple[bytes, str]:
    path = KDIR / name
    if PREBUILT_DIR is not None and name in PREBUILT_OK:
        pre = Path(PREBUILT_DIR) / f"{path.stem}_{arch}.cubin"
        if pre.exists():
            return pre.read_bytes(), "prebuilt"
    deps = [path] + sorted(KDIR.glob("*.cuh"))     # the headers it may include
    key = hashlib.sha256(b"".join(p.read_bytes() for p in deps) + arch.encode()).hexdigest()[:16]
    cached = cache_dir / f"{path.stem}_{arch}_{key}.cubin"
    if cached.exists():
        return cached.read_bytes(), "cache"
    try:
        cubin, how = _nvrtc_compile(path, arch), "nvrtc"
    except ImportError:
        cubin, how = _nvcc_compile(path, arch), "nvcc"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(cubin)
    return cubin, how


# ================================================================== device ==
class Device:
    """PyCUDA on the primary context; allocations tracked for freeing."""

    def __init__(self):
        import pycuda.driver as drv
        self.drv = drv
        drv.init()
        self.dev = drv.Device(0)
        self.ctx = self.dev.retain_primary_context()
        self.ctx.push()
        self.cc = self.dev.compute_capability()
        self.arch = f"sm_{self.cc[0]}{self.cc[1]}"
        self.name = self.dev.name()
        self.mods = {}

    def load(self, name, arch, cache_dir):
        t0 = time.time()
        cubin, how = compile_cubin(name, arch, cache_dir)
        self.mods[(name, arch)] = self.drv.module_from_buffer(cubin)
        return how, time.time() - t0

    def func(self, name, arch, entry, fmt, smem=0):
        f = self.mods[(name, arch)].get_function(entry)
        f.prepare(fmt)
        if smem > 48 * 1024:
            f.set_attribute(self.drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
        return Kernel(f, smem, entry, fmt)

    def to_dev(self, arr):
        arr = np.ascontiguousarray(arr)
        buf = self.drv.mem_alloc(max(arr.nbytes, 1))
        if arr.nbytes:
            self.drv.memcpy_htod(buf, arr)
        return buf

    def empty_poisoned(self, nbytes):
        buf = self.drv.mem_alloc(max(nbytes, 1))
        self.drv.memset_d8(buf, 0xFF, max(nbytes, 1))   # NaN in f16 and f32
        return buf

    def get(self, buf, shape, dtype):
        out = np.empty(shape, dtype)
        self.drv.memcpy_dtoh(out, buf)
        return out

    def sync(self):
        self.drv.Context.synchronize()


class FakeDevice(Device):
    """--dry: compiles for real (NVRTC), checks entry names and argument types, launches
    nothing; outputs read back as NaN. Tests the harness plumbing without a GPU."""

    class Buf:
        _next = 1 << 20

        def __init__(self, n):
            self.addr, self.n = FakeDevice.Buf._next, n
            FakeDevice.Buf._next += (n + 255) // 256 * 256

        def __int__(self):
            return self.addr

        def free(self):
            pass

    def __init__(self, arch="sm_90"):
        self.cc = (int(arch[3]), int(arch[4]))
        self.arch, self.name, self.mods, self.launches = arch, "fake", {}, 0

    def load(self, name, arch, cache_dir):
        cubin, how = compile_cubin(name, arch, cache_dir)
        self.mods[(name, arch)] = cubin
        return how, 0.0

    def func(self, name, arch, entry, fmt, smem=0):
        assert entry.encode() + b"\0" in self.mods[(name, arch)], f"{entry} not in {name}"
        dev = self

        class F:
            def prepared_async_call(self, grid, block, stream, *args, shared_size=0):
                assert all(isinstance(g, int) and g >= 1 for g in grid + block), (entry, grid, block)
                assert grid[1] <= 65535 and grid[2] <= 65535
                for a, c in zip(args, fmt):
                    ok = {"P": isinstance(a, int) and a > 0, "q": isinstance(a, (int, np.integer)),
                          "i": isinstance(a, (int, np.integer)) and -2**31 <= a < 2**31,
                          "f": isinstance(a, (float, np.floating))}[c]
                    assert ok, (entry, fmt, args)
                dev.launches += 1
        return Kernel(F(), smem, entry, fmt)

    def to_dev(self, arr):
        return FakeDevice.Buf(np.asarray(arr).nbytes)

    def empty_poisoned(self, nbytes):
        return FakeDevice.Buf(nbytes)

    def get(self, buf, shape, dtype):
        out = np.empty(shape, dtype)
        out.view(np.uint8)[...] = 0xFF
        return out

    def sync(self):
        pass


class Kernel:
    def __init__(self, f, smem, name, fmt):
        self.f, self.smem, self.name, self.fmt = f, smem, name, fmt

    def __call__(self, grid, block, *args, stream=None):
        assert len(args) == len(self.fmt), (self.name, len(args), self.fmt)
        self.f.prepared_async_call(grid, block, stream, *args, shared_size=self.smem)


def P(x):
    """A device pointer argument (pycuda allocation or int address)."""
    return int(x)


# ========================================================= kernel wrappers ==
I8_FMT, I8T_FMT = "PPPqqqiiif", "PPqqii"
I4_FMT = "PPPPqqiiii"
Q4_FMT, Q8_FMT = "PPPPPPPPPPqqiiii", "PPPPPPPqqqiiifff"
MI8_SMEM, MI8W_SMEM = 81920, 197632
GM_SMEM_I4, GM_SMEM_I8 = 69632, 86016
WG_SMEM_I4, WG_SMEM_I8 = 189440, 230400


class Kernels:
    def __init__(self, dev: Device, cache_dir: Path, want_wgmma: bool, log=print):
        self.dev = dev
        arch = dev.arch
        # matmul_int8.cu declares sm_90a for cc 9.0 (as minigrad's compiler would build it)
        a8 = "sm_90a" if dev.cc == (9, 0) else arch
        self.has_wgmma = want_wgmma and a8 == "sm_90a"
        arch = a8   # matmul_int4.cu / qkv_project.cu declare sm_90a too
        jobs = [("matmul_int8.cu", a8), ("matmul_int4.cu", a8), ("qkv_project.cu", a8)]
        # compile in parallel (NVRTC programs are independent), then load in this thread
        with cf.ThreadPoolExecutor(len(jobs)) as ex:
            list(ex.map(lambda j: compile_cubin(j[0], j[1], cache_dir), jobs))
        for n, a in jobs:
            how, dt = dev.load(n, a, cache_dir)
            log(f"# loaded {n} for {a} ({how}, {dt:.1f} s)")
        F = dev.func
        self.i8 = {"v": F("matmul_int8.cu", a8, "matmul_int8_tn_v", I8_FMT, MI8_SMEM),
                   "s": F("matmul_int8.cu", a8, "matmul_int8_tn_s", I8_FMT, MI8_SMEM)}
        if self.has_wgmma:
            self.i8["wgmma"] = F("matmul_int8.cu", a8, "matmul_int8_wgmma", I8_FMT, MI8W_SMEM)
        self.i8t = F("matmul_int8.cu", a8, "matmul_int8_transpose", I8T_FMT)
        self.i4gemv = {(r, t): F("matmul_int4.cu", arch, f"matmul_int4_gemv_r{r}_t{t}", I4_FMT)
                       for r in (1, 2) for t in (1, 2)}
        self.i4gemv1 = F("matmul_int4.cu", arch, "matmul_int4_gemv1", I4_FMT)
        self.i4gemm = F("matmul_int4.cu", arch, "matmul_int4_gemm", I4_FMT, GM_SMEM_I4)
        self.has_wg = arch == "sm_90a"
        if self.has_wg:
            self.i4gemm_wg = F("matmul_int4.cu", arch, "matmul_int4_gemm_wgmma", I4_FMT, WG_SMEM_I4)
            self.q4gemm_wg = F("qkv_project.cu", arch, "qkv_project_int4_gemm_wgmma", Q4_FMT, WG_SMEM_I4)
            self.q8gemm_wg = F("qkv_project.cu", arch, "qkv_project_int8_gemm_wgmma", Q8_FMT, WG_SMEM_I8)
        q = "qkv_project.cu"
        self.q4gemv = {t: F(q, arch, f"qkv_project_int4_gemv_t{t}", Q4_FMT) for t in (1, 2)}
        self.q4gemm = F(q, arch, "qkv_project_int4_gemm", Q4_FMT, GM_SMEM_I4)
        self.q8gemv = {(t, v): F(q, arch, f"qkv_project_int8_gemv_t{t}_{v}", Q8_FMT)
                       for t in (1, 2) for v in ("v", "s")}
        self.q8gemm = {v: F(q, arch, f"qkv_project_int8_gemm_{v}", Q8_FMT, GM_SMEM_I8) for v in ("v", "s")}
        self.q8one = {t: F(q, arch, f"qkv_project_int8_one_gemv_t{t}_v", Q8_FMT) for t in (1, 2)}

    # ---- host launch rules (what the minigrad runtime implements) ----
    def matmul_int8(self, var, A, Bt, C, lda, ldb, ldc, M, N, K, scale):
        if var == "wgmma":
            grid, block = (ceil_div(M, 128) * ceil_div(N, 256), 1, 1), (256, 1, 1)
        else:
            grid, block = (ceil_div(M, 128) * ceil_div(N, 128), 1, 1), (128, 1, 1)
        self.i8[var](grid, block, P(A), P(Bt), P(C), lda, ldb, ldc, M, N, K, np.float32(scale))

    def transpose_int8(self, B, Bt, ldb_in, ldb_out, K, N):
        self.i8t((ceil_div(N, 64), ceil_div(ldb_out, 64), 1), (256, 1, 1), P(B), P(Bt),
                 ldb_in, ldb_out, K, N)

    @staticmethod
    def tokens_t(M):
        return 1 if M <= 8 else 2

    @staticmethod
    def gemv_r(N, K):
        """Row tiles per gemv block (16 R output columns): R = 2 unless K >= N (then R = 1
        gives twice the blocks); from the H200 sweep in notes_quant.md."""
        return 1 if K >= N else 2

    def matmul_int4(self, kind, A, Wp, S, C, lda, ldc, M, N, K, G, r=None, t=None):
        r = r or self.gemv_r(N, K)
        gs = int(math.log2(G))
        if kind == "gemv1":                    # one token (the host runs it when K <= N)
            self.i4gemv1((ceil_div(N, 16), 1, 1), (256, 1, 1),
                         P(A), P(Wp), P(S), P(C), lda, ldc, M, N, K, gs)
        elif kind == "gemv":
            t = t or self.tokens_t(M)
            self.i4gemv[(r, t)]((ceil_div(N, 16 * r), ceil_div(M, 8 * t), 1), (256, 1, 1),
                                P(A), P(Wp), P(S), P(C), lda, ldc, M, N, K, gs)
        elif kind == "gemm_wgmma":
            self.i4gemm_wg((ceil_div(M, 128) * ceil_div(N, 256), 1, 1), (256, 1, 1),
                           P(A), P(Wp), P(S), P(C), lda, ldc, M, N, K, gs)
        else:
            self.i4gemm((ceil_div(M, 128) * ceil_div(N, 128), 1, 1), (128, 1, 1),
                        P(A), P(Wp), P(S), P(C), lda, ldc, M, N, K, gs)

    def prefill_kind(self):
        return "gemm_wgmma" if self.has_wg else "gemm"

    def matmul_int4_auto(self, A, Wp, S, C, lda, ldc, M, N, K, G):
        self.matmul_int4("gemv" if M <= 64 else self.prefill_kind(), A, Wp, S, C, lda, ldc, M, N, K, G)

    def qkv_int4(self, kind, x, W, S, O, ldx, ldo, M, N, K, G):
        gs = int(math.log2(G))
        args = (P(x), *map(P, W), *map(P, S), *map(P, O), ldx, ldo, M, N, K, gs)
        if kind == "gemv":
            t = self.tokens_t(M)
            self.q4gemv[t]((ceil_div(N, 16), ceil_div(M, 8 * t), 1), (256, 1, 1), *args)
        elif kind == "gemm_wgmma":
            self.q4gemm_wg((ceil_div(M, 128) * ceil_div(N, 256), 3, 1), (256, 1, 1), *args)
        else:
            self.q4gemm((ceil_div(M, 128) * ceil_div(N, 128), 3, 1), (128, 1, 1), *args)

    def qkv_int8(self, kind, var, x, W, O, ldx, ldw, ldo, M, N, K, sc, nproj=3):
        args = (P(x), *map(P, W), *map(P, O), ldx, ldw, ldo, M, N, K, *map(np.float32, sc))
        if kind == "gemv":
            t = self.tokens_t(M)
            k = self.q8gemv[(t, var)] if nproj == 3 else self.q8one[t]
            k((ceil_div(N, 16), ceil_div(M, 8 * t), 1), (256, 1, 1), *args)
        elif kind == "gemm_wgmma":
            self.q8gemm_wg((ceil_div(M, 128) * ceil_div(N, 256), nproj, 1), (256, 1, 1), *args)
        else:
            self.q8gemm[var]((ceil_div(M, 128) * ceil_div(N, 128), nproj, 1), (128, 1, 1), *args)


# ============================================================= correctness ==
def rel_err(got, want):
    got = got.astype(np.float64)
    want = want.astype(np.float64)
    if np.isnan(got).any():
        return float("nan")
    return float((np.abs(got - want) / np.maximum(np.abs(want), 1.0)).max()) if want.size else 0.0


class Checker:
    def __init__(self, ks: Kernels, seed, log):
        self.ks, self.dev, self.log = ks, ks.dev, log
        self.rng = np.random.default_rng(seed)
        self.rows, self.fails = [], 0
        self.wcache = {}

    def record(self, family, kernel, shape, ok, err):
        self.rows.append({"family": family, "kernel": kernel, "shape": shape, "ok": bool(ok), "err": err})
        if not ok:
            self.fails += 1
            self.log(f"FAIL {family} {kernel} {shape} err={err}")

    # ---- int8 ----
    def int8_case(self, M, N, K, variants, tag=""):
        d, rng = self.dev, self.rng
        A = rng.integers(-128, 128, (M, K), dtype=np.int8)
        B = rng.integers(-128, 128, (K, N), dtype=np.int8)
        scale = float(rng.uniform(1e-4, 1e-2))
        if M * N * K <= 1 << 26:
            want = ref.matmul_int8(A, B, scale)
        else:  # exact int32 sums through float64 BLAS (|sum| < 2^53), then the oracle's rounding
            acc = (A.astype(np.float64) @ B.astype(np.float64)).astype(np.int32)
            want = acc.astype(f32) * f32(scale)
        ldb = round_up(K, 16)
        dB = d.to_dev(B)
        dBt = d.empty_poisoned(N * ldb)
        self.ks.transpose_int8(dB, dBt, N, ldb, K, N)
        dA = d.to_dev(A)
        lda_pad = round_up(K, 16)
        Apad = np.zeros((M, lda_pad), np.int8)
        Apad[:, :K] = A
        dApad = d.to_dev(Apad) if lda_pad != K else dA
        bt_host = d.get(dBt, (N, ldb), np.int8)
        self.record("int8", "transpose", f"K={K} N={N}", np.array_equal(bt_host[:, :K], B.T)
                    and not bt_host[:, K:].any(), 0)
        a_layouts = [(dA, K)] + ([(dApad, lda_pad)] if lda_pad != K else [])
        for var in variants:
            for a_buf, lda in a_layouts:
                if var != "s" and lda % 16:
                    continue
                dC = d.empty_poisoned(M * N * 4)
                self.ks.matmul_int8(var, a_buf, dBt, dC, lda, ldb, N, M, N, K, scale)
                got = d.get(dC, (M, N), f32)
                ok = np.array_equal(got, want)   # bit-exact (NaN never equal)
                err = 0.0 if ok else ("nan" if np.isnan(got).any() else float(np.abs(got - want).max()))
                self.record("int8", var, f"M={M} N={N} K={K} lda={lda}{tag}", ok, err)
                dC.free()
        # B passed directly as an [N, K] tensor (a transposed view; ldb = K)
        if "s" in variants and K % 16:
            dBt2 = d.to_dev(np.ascontiguousarray(B.T))
            dC = d.empty_poisoned(M * N * 4)
            self.ks.matmul_int8("s", dA, dBt2, dC, K, K, N, M, N, K, scale)
            got = d.get(dC, (M, N), f32)
            self.record("int8", "s", f"M={M} N={N} K={K} Bt-view ldb={K}", np.array_equal(got, want), 0)
            dC.free()
            dBt2.free()
        for b in (dA, dB, dBt):
            b.free()
        if dApad is not dA:
            dApad.free()

    # ---- int4 ----
    def int4_weights(self, K, N, G, idx=0):
        """Fresh random packed weights + scales for (K, N, G), drawn once per shape family and
        reused across the M values (each case still gets fresh activations): returns
        (packed, scales, dequantised f32 [K,N] from the oracle, device packed, device scales)."""
        key = (K, N, G, idx)
        if key not in self.wcache:
            if any(k[:3] != key[:3] for k in self.wcache):   # a new shape: drop the old
                self.clear_wcache()
            q = self.rng.integers(-8, 8, (K, N), dtype=np.int8)
            s = self.rng.uniform(0.002, 0.05, (K // G, N)).astype(f16)
            pk = pack_int4(q)
            w32 = ref.dequantize_int4(pk, s, G).astype(f32)
            self.wcache[key] = (pk, s, w32, self.dev.to_dev(pk), self.dev.to_dev(s))
        return self.wcache[key]

    def clear_wcache(self):
        for v in self.wcache.values():
            v[3].free()
            v[4].free()
        self.wcache.clear()

    def int4_case(self, M, N, K, G, kinds, batch=None, ldx_pad=0, gemv_rs=(1,)):
        d = self.dev
        Mtot = M if batch is None else int(np.prod(batch)) * M
        ldx = K + ldx_pad
        xfull = self.rng.standard_normal((Mtot, ldx)).astype(f16)
        x = xfull[:, :K]
        pk, s, w32, dW, dS = self.int4_weights(K, N, G)
        if batch is not None:   # oracle on the batched shape, kernel on the flattened rows
            want = ref.matmul_int4(x.reshape(*batch, M, K), pk, s, G).reshape(Mtot, N)
        elif M * N * K <= 1 << 24:
            want = ref.matmul_int4(x, pk, s, G)
        else:                   # the oracle's own steps, with its dequantised weight cached
            want = np.matmul(x.astype(f32), w32)
        dx = d.to_dev(xfull)
        tag = f"M={Mtot} N={N} K={K} G={G}" + (f" batch={batch}" if batch else "") + \
              (f" ldx={ldx}" if ldx_pad else "")
        for kind in kinds:
            if kind == "gemv1" and Mtot != 1:
                continue
            for r in (gemv_rs if kind == "gemv" else (0,)):
                dC = d.empty_poisoned(Mtot * N * 4)
                self.ks.matmul_int4(kind, dx, dW, dS, dC, ldx, N, Mtot, N, K, G, r=r or None)
                got = d.get(dC, (Mtot, N), f32)
                e = rel_err(got, want)
                name = f"gemv_r{r}_t{self.ks.tokens_t(Mtot)}" if kind == "gemv" else kind
                self.record("int4", name, tag, e < 1e-3, e)
                dC.free()
        dx.free()

    # ---- qkv ----
    def qkv4_case(self, M, N, K, G, kinds, ldx_pad=0):
        d = self.dev
        ldx = K + ldx_pad
        xfull = self.rng.standard_normal((M, ldx)).astype(f16)
        x = xfull[:, :K]
        ws = [self.int4_weights(K, N, G, idx=i + 1) for i in range(3)]
        if M * N * K <= 1 << 24:
            want = ref.qkv_project_int4(x, ws[0][0], ws[1][0], ws[2][0], ws[0][1], ws[1][1], ws[2][1], G)
        else:
            x32 = x.astype(f32)
            want = tuple(np.matmul(x32, w[2]).astype(f16) for w in ws)
        dx = d.to_dev(xfull)
        dW = [w[3] for w in ws]
        dS = [w[4] for w in ws]
        for kind in kinds:
            dO = [d.empty_poisoned(M * N * 2) for _ in range(3)]
            self.ks.qkv_int4(kind, dx, dW, dS, dO, ldx, N, M, N, K, G)
            e = max(rel_err(d.get(o, (M, N), f16), w) for o, w in zip(dO, want))
            self.record("qkv_int4", f"{kind}_t{self.ks.tokens_t(M)}" if kind == "gemv" else kind,
                        f"M={M} N={N} K={K} G={G}" + (f" ldx={ldx}" if ldx_pad else ""), e < 1e-3, e)
            for o in dO:
                o.free()
        dx.free()

    def qkv8_case(self, M, N, K, kinds):
        d = self.dev
        x = self.rng.standard_normal((M, K)).astype(f16)
        ws = [self.rng.integers(-127, 128, (K, N), dtype=np.int8) for _ in range(3)]
        sc = [float(self.rng.uniform(1e-3, 2e-2)) for _ in range(3)]
        want = ref.qkv_project_int8(x, *ws, sc)
        ldw = round_up(K, 16)
        dWt = []
        for w in ws:   # [K, N] -> [N, ldw] once, as the host would for a weight
            dw = d.to_dev(w)
            dt = d.empty_poisoned(N * ldw)
            self.ks.transpose_int8(dw, dt, N, ldw, K, N)
            dw.free()
            dWt.append(dt)
        ldxp = round_up(K, 8)
        xpad = np.zeros((M, ldxp), f16)
        xpad[:, :K] = x
        dx, dxp = d.to_dev(x), d.to_dev(xpad)
        for kind in kinds:
            for var in (("v",) if kind == "gemm_wgmma" else ("v", "s")):
                xb, ldx = (dx, K) if (var == "s" or K % 8 == 0) else (dxp, ldxp)
                dO = [d.empty_poisoned(M * N * 2) for _ in range(3)]
                self.ks.qkv_int8(kind, var, xb, dWt, dO, ldx, ldw, N, M, N, K, sc)
                e = max(rel_err(d.get(o, (M, N), f16), w) for o, w in zip(dO, want))
                self.record("qkv_int8", kind if kind == "gemm_wgmma" else f"{kind}_{var}",
                            f"M={M} N={N} K={K} ldx={ldx}", e < 1e-3, e)
                for o in dO:
                    o.free()
        # the one-projection kernel (baseline of the benchmark)
        if M <= 64 and "gemv" in kinds:
            dO = [d.empty_poisoned(M * N * 2) for _ in range(3)]
            self.ks.qkv_int8("gemv", "v", dx if K % 8 == 0 else dxp, [dWt[1]] * 3, dO,
                             K if K % 8 == 0 else ldxp, ldw, N, M, N, K, [sc[1]] * 3, nproj=1)
            e = rel_err(d.get(dO[0], (M, N), f16), want[1])
            self.record("qkv_int8", "one_gemv_v", f"M={M} N={N} K={K}", e < 1e-3, e)
            for o in dO:
                o.free()
        for b in [dx, dxp, *dWt]:
            b.free()


def run_checks(ks, families, sanitize, seed, log):
    ch = Checker(ks, seed, log)
    Ms, Ns = (1, 3, 17, 64, 1000), (1, 7, 130, 4096)
    if sanitize:
        Ms, Ns = (1, 3, 130), (7, 130)
    t0 = time.time()
    if "i8" in families or "i8w" in families:
        variants = (["v", "s"] if "i8" in families else []) + \
                   (["wgmma"] if "i8w" in families and "wgmma" in ks.i8 else [])
        for K in ((33, 300) if sanitize else (32, 96, 4096, 33)):
            for M in Ms:
                for N in Ns:
                    ch.int8_case(M, N, K, variants)
        if not sanitize:
            ch.int8_case(300, 520, 8192, variants, tag=" (2 K blocks of wgmma tails)")
        log(f"# int8 checks done ({time.time() - t0:.1f} s)")
    # i4 / qkv4 / qkv8: gemv + mma.sync gemm; i4w / qkvw: the wgmma prefill kernels (own family,
    # own process in --suite: a faulting new kernel cannot hide the others' results)
    k4 = (["gemv", "gemv1", "gemm"] if "i4" in families else []) + \
         (["gemm_wgmma"] if "i4w" in families and ks.has_wg else [])
    if k4:
        KG = ((96, 32), (512, 64)) if sanitize else ((32, 32), (96, 32), (4096, 32), (4096, 64), (4096, 128))
        for K, G in KG:
            for N in Ns:
                for M in Ms:
                    rs = (1, 2) if (K == 4096 and N == 4096 and M <= 64) or sanitize else (1,)
                    ch.int4_case(M, N, K, G, k4, gemv_rs=rs)
        ch.int4_case(5, 130, 256, 64, k4, batch=(2, 3))      # batched x [2,3,5,K]
        ch.int4_case(70, 130, 256, 128, k4, ldx_pad=40)      # strided x rows
        if "gemm_wgmma" in k4 and not sanitize:
            ch.int4_case(300, 600, 1024, 128, ["gemm_wgmma"])   # 16 K tiles through the ring
        log(f"# int4 checks done ({time.time() - t0:.1f} s)")
    kq4 = (["gemv", "gemm"] if "qkv4" in families else []) + \
          (["gemm_wgmma"] if "qkvw" in families and ks.has_wg else [])
    if kq4:
        KG = ((448, 32),) if sanitize else ((32, 32), (96, 32), (4096, 128), (4096, 32))
        for K, G in KG:
            for N in Ns:
                for M in Ms:
                    ch.qkv4_case(M, N, K, G, kq4)
        ch.qkv4_case(19, 136, 256, 64, kq4, ldx_pad=24)
        log(f"# qkv_int4 checks done ({time.time() - t0:.1f} s)")
    kq8 = (["gemv", "gemm"] if "qkv8" in families else []) + \
          (["gemm_wgmma"] if "qkvw" in families and ks.has_wg else [])
    if kq8:
        for K in ((33, 520) if sanitize else (32, 96, 4096, 33)):
            for M in Ms:
                for N in Ns:
                    ch.qkv8_case(M, N, K, kq8)
        log(f"# qkv_int8 checks done ({time.time() - t0:.1f} s)")
    ks.dev.sync()
    return ch


# =============================================================== benchmark ==
def run_bench(ks: Kernels, families, log, reps=30, flush_mode="read"):
    import torch
    import torch.nn.functional as Fn
    tdev = torch.device("cuda")
    flush = torch.ones(512 * 2**20, dtype=torch.uint8, device=tdev)
    flush_sink = torch.zeros((), dtype=torch.int64, device=tdev)
    log(f"# L2 flush before each timed rep: {flush_mode} 512 MB")
    rows = []

    def do_flush():
        # 'read': sum a 512 MB buffer, leaving L2 full of clean lines (the cold-weights state);
        # 'write' (zero_, runs 1-2 of notes_quant.md) leaves ~L2-size of dirty lines whose
        # write-back the next memory-bound kernel pays. Either keeps the GPU busy while the
        # host enqueues the start event and the launch.
        if flush_mode == "write":
            flush.zero_()
        else:
            flush_sink.copy_(flush.view(torch.int32).sum(dtype=torch.int64))

    def t_gpu(fn, n=reps, warm=3):
        """Median GPU ms of fn() with L2 flushed before each rep."""
        for _ in range(warm):
            fn()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for s, e in ev:
            do_flush()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        return float(np.median([s.elapsed_time(e) for s, e in ev]))

    def t_host(fn, n=200):
        """Per-call ms of n back-to-back calls (launch overhead included, warm L2)."""
        for _ in range(5):
            fn()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        s.record()
        for _ in range(n):
            fn()
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / n

    def t_safe(fn, **kw):
        try:
            return t_gpu(fn, **kw)
        except Exception as ex:   # a baseline that cannot run here must not stop the others
            log(f"# baseline failed: {str(ex)[:200]}")
            return float("inf")

    def row(name, shape, ours, ref_name, ref_ms, **kw):
        r = {"name": name, "shape": shape, "ours_ms": round(ours, 5), "ref": ref_name,
             "ref_ms": None if ref_ms is None else round(ref_ms, 5),
             "speedup": None if ref_ms is None else round(ref_ms / ours, 3), **kw}
        rows.append(r)
        log(f"  {name:34s} {shape:26s} ours {ours:9.4f} ms  {ref_name:28s} "
            f"{'' if ref_ms is None else f'{ref_ms:9.4f} ms  x{ref_ms / ours:6.2f}'} "
            + " ".join(f"{k}={v}" for k, v in kw.items()))

    # copy bandwidth (bytes read + written)
    src = torch.empty(2**30, dtype=torch.uint8, device=tdev)
    dst = torch.empty_like(src)
    cp_ms = t_gpu(lambda: dst.copy_(src), n=10)
    copy_bw = 2 * 2**30 / cp_ms / 1e6          # GB/s, bytes read + written
    log(f"# device copy bandwidth {copy_bw:.0f} GB/s ({cp_ms:.3f} ms to copy 1 GiB)")
    src = dst = None   # not `del`: the lambdas above name them (pyflakes)
    rows.append({"name": "copy_bandwidth_GBps", "value": round(copy_bw, 1)})

    if "i8" in families or "i8w" in families:
        for S in (4096, 8192):
            M = N = K = S
            a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device=tdev)
            bt = torch.randint(-128, 128, (N, K), dtype=torch.int8, device=tdev)
            b_row = bt.t().contiguous()
            c = torch.empty(M, N, dtype=torch.float32, device=tdev)
            ops = 2 * M * N * K
            t_rr = t_safe(lambda: torch._int_mm(a, b_row), n=20)
            t_rc = t_safe(lambda: torch._int_mm(a, bt.t()), n=20)
            tref = min(t_rr, t_rc)
            lay = "B row-major" if t_rr <= t_rc else "B col-major"
            log(f"# torch._int_mm {S}^3: B row-major {t_rr:.4f} ms, B col-major (=[N,K]) {t_rc:.4f} ms")
            # the reference's full op is _int_mm then * scale; we time _int_mm alone (favours torch)
            for var in [v for v in ("v", "wgmma") if v in ks.i8]:
                if var == "wgmma" and "i8w" not in families:
                    continue
                if var == "v" and "i8" not in families:
                    continue
                ms = t_gpu(lambda: ks.matmul_int8(var, a.data_ptr(), bt.data_ptr(), c.data_ptr(),
                                                  K, K, N, M, N, K, 0.01), n=20)
                row(f"matmul_int8_{var}", f"{S}^3", ms, f"torch._int_mm ({lay})", tref,
                    TOPS=round(ops / ms / 1e9, 1), torch_TOPS=round(ops / tref / 1e9, 1))
            if "i8" in families:
                btp = torch.empty(N, K, dtype=torch.int8, device=tdev)
                ms = t_gpu(lambda: ks.transpose_int8(b_row.data_ptr(), btp.data_ptr(), N, K, K, N), n=10)
                row("matmul_int8_transpose (one-time)", f"{S}x{S}", ms, "-", None,
                    GBps=round(2 * N * K / ms / 1e6, 1))
            a = bt = b_row = c = None
            torch.cuda.empty_cache()

    # the wgmma prefill kernels only where their families are in (i.e. their check did not crash)
    ks.has_wg = ks.has_wg and ("i4w" in families or "qkvw" in families)
    prefill = []
    if "i4" in families:
        G = 128
        for (N, K) in ((4096, 4096), (11008, 4096), (4096, 11008)):
            wp = torch.randint(-2**31, 2**31 - 1, (N, K // 8), dtype=torch.int32, device=tdev)
            sc = (torch.rand(K // G, N, device=tdev) * 0.01 + 0.001).half()
            w16 = (torch.randn(N, K, device=tdev) * 0.02).half()
            wkn = w16.t().contiguous()
            wbytes = N * K // 2 + sc.numel() * 2
            for M in (1, 16):
                x = torch.randn(M, K, device=tdev).half()
                c = torch.empty(M, N, dtype=torch.float32, device=tdev)
                t_lin = t_safe(lambda: Fn.linear(x, w16))
                t_mm = t_safe(lambda: torch.matmul(x, wkn))
                tref = min(t_lin, t_mm)
                best = None
                for r in (1, 2):
                    ms = t_gpu(lambda: ks.matmul_int4("gemv", x.data_ptr(), wp.data_ptr(), sc.data_ptr(),
                                                      c.data_ptr(), K, N, M, N, K, G, r=r))
                    row(f"matmul_int4_gemv_r{r}", f"M={M} N={N} K={K}", ms,
                        "torch f16 " + ("F.linear" if t_lin <= t_mm else "matmul"), tref,
                        weight_GBps=round(wbytes / ms / 1e6, 0),
                        frac_copy_bw=round(wbytes / ms / 1e6 / copy_bw, 2))
                if M == 1:
                    ms = t_gpu(lambda: ks.matmul_int4("gemv1", x.data_ptr(), wp.data_ptr(),
                                                      sc.data_ptr(), c.data_ptr(), K, N, M, N,
                                                      K, G))
                    row("matmul_int4_gemv1", f"M={M} N={N} K={K}", ms,
                        "torch f16 " + ("F.linear" if t_lin <= t_mm else "matmul"), tref,
                        weight_GBps=round(wbytes / ms / 1e6, 0),
                        frac_copy_bw=round(wbytes / ms / 1e6 / copy_bw, 2))
            # prefill
            M = 2048
            x = torch.randn(M, K, device=tdev).half()
            c = torch.empty(M, N, dtype=torch.float32, device=tdev)
            t_t = t_safe(lambda: torch.matmul(x, wkn), n=20)
            t_l = t_safe(lambda: Fn.linear(x, w16), n=20)
            fl = 2 * M * N * K
            kinds = ["gemm"] + (["gemm_wgmma"] if ks.has_wg and "i4w" in families else [])
            best = None
            for kind in kinds:
                ms = t_gpu(lambda: ks.matmul_int4(kind, x.data_ptr(), wp.data_ptr(), sc.data_ptr(),
                                                  c.data_ptr(), K, N, M, N, K, G), n=20)
                row(f"matmul_int4_{kind}", f"M={M} N={N} K={K}", ms, "torch f16 matmul/linear",
                    min(t_t, t_l), TFLOPS=round(fl / ms / 1e9, 1),
                    torch_TFLOPS=round(fl / min(t_t, t_l) / 1e9, 1))
                best = (kind, ms) if best is None or ms < best[1] else best
            prefill.append((M, N, K, best))
            wp = sc = w16 = wkn = x = c = None
            torch.cuda.empty_cache()

    if "qkv4" in families or "qkv8" in families:
        G = 128
        for d in (4096, 768):
            K = N = d
            for bits in (4, 8):
                fam = "qkv4" if bits == 4 else "qkv8"
                if fam not in families:
                    continue
                if bits == 4:
                    W = [torch.randint(-2**31, 2**31 - 1, (N, K // 8), dtype=torch.int32, device=tdev)
                         for _ in range(3)]
                    S = [(torch.rand(K // G, N, device=tdev) * 0.01 + 0.001).half() for _ in range(3)]
                else:
                    W = [torch.randint(-127, 128, (N, K), dtype=torch.int8, device=tdev) for _ in range(3)]
                for M in (1, 16, 64, 2048):
                    x = torch.randn(M, K, device=tdev).half()
                    O = [torch.empty(M, N, dtype=torch.float16, device=tdev) for _ in range(3)]
                    C = [torch.empty(M, N, dtype=torch.float32, device=tdev) for _ in range(3)]
                    kind = "gemv" if M <= 64 else ks.prefill_kind()
                    if kind == "gemm_wgmma" and "qkvw" not in families:
                        kind = "gemm"
                    if bits == 4:
                        fused = lambda: ks.qkv_int4(kind, x.data_ptr(), [w.data_ptr() for w in W],
                                                    [s.data_ptr() for s in S], [o.data_ptr() for o in O],
                                                    K, N, M, N, K, G)

                        def sep():
                            for i in range(3):
                                ks.matmul_int4_auto(x.data_ptr(), W[i].data_ptr(), S[i].data_ptr(),
                                                    C[i].data_ptr(), K, N, M, N, K, G)
                        sep_name = "3 x matmul_int4"
                    else:
                        fused = lambda: ks.qkv_int8(kind, "v", x.data_ptr(), [w.data_ptr() for w in W],
                                                    [o.data_ptr() for o in O], K, K, N, M, N, K,
                                                    (0.01, 0.02, 0.03))

                        def sep():
                            for i in range(3):
                                ks.qkv_int8(kind, "v", x.data_ptr(), [W[i].data_ptr()] * 3,
                                            [O[i].data_ptr()] * 3, K, K, N, M, N, K, (0.01,) * 3, nproj=1)
                        sep_name = "3 x one-projection W8A16"
                    g_f, g_s = t_gpu(fused), t_gpu(sep)
                    row(f"qkv_project_int{bits}_{kind}", f"M={M} K=N={d}", g_f, sep_name + " (GPU time)", g_s)
                    h_f, h_s = t_host(fused), t_host(sep)
                    row(f"qkv_project_int{bits}_{kind}", f"M={M} K=N={d}", h_f,
                        sep_name + " (per call, launches incl.)", h_s)
                del W
                torch.cuda.empty_cache()

    # our own f16 tensor-core matmuls on the prefill shapes (someone else's files: last)
    for M, N, K, (pkind, ms) in prefill:
        x = torch.randn(M, K, device=tdev).half()
        w16 = (torch.randn(N, K, device=tdev) * 0.02).half()
        c = torch.empty(M, N, dtype=torch.float32, device=tdev)
        fl = 2 * M * N * K
        for attr, label, bn, nt in (("mtc", "our matmul_tc_async f16 nt (mma.sync)", 128, 128),
                                    ("mtw", "our matmul_tc_wgmma f16 nt n256", 256, 256)):
            k = getattr(ks, attr, None)
            if k is None:
                continue
            tc_ms = t_safe(lambda: k(((ceil_div(M, 128) * ceil_div(N, bn)), 1, 1), (nt, 1, 1),
                                     x.data_ptr(), w16.data_ptr(), c.data_ptr(), K, K, N,
                                     0, 0, 0, M, N, K, 1), n=20)
            row(f"matmul_int4_{pkind}", f"M={M} N={N} K={K}", ms, label, tc_ms,
                f16_TFLOPS=round(fl / tc_ms / 1e9, 1))
        x = w16 = c = None
    return rows


# =================================================================== suite ==
def run_suite(out: Path, budget_s: float, dry: str = ""):
    """Everything for one GPU call, each step its own process (a faulting kernel cannot take
    the others down), with time limits; logs under `out`."""
    import shutil
    me = [sys.executable, str(Path(__file__).resolve())]
    san = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    t_start = time.time()
    steps = [
        ("check", me + ["--check", "--families", "i4,qkv4,qkv8"], 120),
        ("check_wgprefill", me + ["--check", "--families", "i4w,qkvw"], 90),
        ("bench", me + ["--bench", "--families", "i8,i8w,i4,i4w,qkv4,qkv8,qkvw"], 150),
        ("memcheck", [san, "--tool", "memcheck", "--error-exitcode", "9"] + me +
         ["--sanitize", "--families", "i4,qkv4,qkv8"], 60),
        ("racecheck", [san, "--tool", "racecheck", "--error-exitcode", "9"] + me +
         ["--sanitize", "--families", "i4,qkv4,qkv8"], 60),
        ("memcheck_wgprefill", [san, "--tool", "memcheck", "--error-exitcode", "9"] + me +
         ["--sanitize", "--families", "i4w,qkvw"], 60),
        ("racecheck_wgprefill", [san, "--tool", "racecheck", "--error-exitcode", "9"] + me +
         ["--sanitize", "--families", "i4w,qkvw"], 60),
    ]
    if SUITE_INT8:   # the int8 kernels' own checks (run 1); --suite-int8 repeats them
        steps[1:1] = [("check_int8", me + ["--check", "--families", "i8"], 120),
                      ("check_wgmma", me + ["--check", "--families", "i8w"], 70)]
        steps += [("memcheck_int8", [san, "--tool", "memcheck", "--error-exitcode", "9"] + me +
                   ["--sanitize", "--families", "i8,i8w"], 60),
                  ("racecheck_int8", [san, "--tool", "racecheck", "--error-exitcode", "9"] + me +
                   ["--sanitize", "--families", "i8,i8w"], 60)]
    status = {}
    for name, cmd, limit in steps:
        left = budget_s - (time.time() - t_start)
        if left < 15:
            status[name] = "skipped (time)"
            continue
        if name == "bench":   # leave out a family whose check crashed (0: passed, 3: failed)
            drop = {"i4w", "qkvw"} if status.get("check_wgprefill", 0) not in (0, 3) else set()
            drop |= {"i8w"} if status.get("check_wgmma", 0) not in (0, 3) else set()
            cmd = [",".join(f for f in c.split(",") if f not in drop) if c.startswith("i8,") else c
                   for c in cmd]
        cmd = cmd + ["--out", str(out), "--tag", name] + \
            (["--prebuilt", PREBUILT_DIR] if PREBUILT_DIR else []) + (["--dry", dry] if dry else [])
        t0 = time.time()
        with open(out / f"{name}.stdout", "w") as f:
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=min(limit, left)).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        status[name] = rc
        print(f"### {name}: rc={rc} ({time.time() - t0:.0f} s)", flush=True)
        text = (out / f"{name}.stdout").read_text(errors="replace")
        if name.startswith(("memcheck", "racecheck")):
            tail = [l for l in text.splitlines() if "ERROR SUMMARY" in l or "RACECHECK SUMMARY" in l
                    or "checks:" in l or "Error" in l][-6:]
        else:
            lines = text.splitlines()
            tail = [l for l in lines if l.startswith(("FAIL", "| ", "# checks", "# device", "# torch", "Traceback"))]
            tail = tail[:12] + ["..."] + tail[-60:] if len(tail) > 80 else tail
            if rc not in (0, 3):
                tail += lines[-15:]
        print("\n".join(tail), flush=True)
    print("### suite status:", json.dumps(status), f"total {time.time() - t_start:.0f} s", flush=True)
    return 0


# ==================================================================== main ==
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--sanitize", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--families", default="i8,i8w,i4,i4w,qkv4,qkv8,qkvw")
    ap.add_argument("--no-wgmma", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--cache", default="/tmp/mgq_cubins")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--tag", default="")
    ap.add_argument("--suite", action="store_true", help="check + bench + sanitizers, one process each")
    ap.add_argument("--budget", type=float, default=330.0, help="--suite: seconds for all steps")
    ap.add_argument("--dry", default="", help="no GPU: compile for this arch (e.g. sm_90), fake launches")
    ap.add_argument("--prebuilt", default=None, help="dir of prebuilt baseline cubins (matmul_tc*)")
    ap.add_argument("--suite-int8", action="store_true", help="--suite: also check/sanitize int8")
    ap.add_argument("--flush", choices=("read", "write"), default="read",
                    help="L2 flush between timed reps (runs 1-2 of notes_quant.md used 'write')")
    args = ap.parse_args()
    global PREBUILT_DIR, SUITE_INT8
    PREBUILT_DIR = args.prebuilt
    SUITE_INT8 = args.suite_int8
    fams = set(args.families.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.suite:
        return run_suite(out, args.budget, args.dry)

    logf = open(out / f"quant_{args.tag or ('sanitize' if args.sanitize else 'run')}.log", "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    if args.bench:
        import torch   # initialise the runtime first; PyCUDA then shares its primary context
        torch.cuda.init()
        torch.zeros(1, device="cuda")
    dev = FakeDevice(args.dry) if args.dry else Device()
    log(f"# {dev.name} {dev.arch} | {time.strftime('%Y-%m-%d %H:%M:%S')} | python {platform.python_version()}")
    ks = Kernels(dev, Path(args.cache), want_wgmma=("i8w" in fams and not args.no_wgmma), log=log)
    if args.bench and "i4" in fams:
        for attr, fname, arch, entry, smem in (
                ("mtc", "matmul_tc.cu", dev.arch, "matmul_tc_async_f16_nt_v", 81920),
                ("mtw", "matmul_tc_wgmma.cu", "sm_90a", "matmul_tc_wgmma_f16_nt_n256", 197632)):
            if not (KDIR / fname).exists() or (arch == "sm_90a" and dev.cc != (9, 0)):
                continue
            try:   # someone else's file; the comparison is optional
                dev.load(fname, arch, Path(args.cache))
                setattr(ks, attr, dev.func(fname, arch, entry, "PPPqqqqqqiiii", smem))
            except Exception as e:
                log(f"# {fname} unavailable: {str(e)[:300]}")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    result = {"card": dev.name, "arch": dev.arch, "date": time.strftime("%Y-%m-%d"), "seed": seed}
    rc = 0
    if args.check or args.sanitize:
        t0 = time.time()
        ch = run_checks(ks, fams, args.sanitize, seed, log)
        n = len(ch.rows)
        log(f"# checks: {n - ch.fails}/{n} passed ({time.time() - t0:.1f} s, seed {seed})")
        # summary per (family, kernel)
        summ = {}
        for r in ch.rows:
            k = (r["family"], r["kernel"])
            s = summ.setdefault(k, [0, 0, 0.0])
            s[0] += 1
            s[1] += r["ok"]
            if isinstance(r["err"], float) and not math.isnan(r["err"]):
                s[2] = max(s[2], r["err"])
        log("| family | kernel | cases | passed | max err |")
        log("|---|---|---|---|---|")
        for (fam, k), (c, p, e) in sorted(summ.items()):
            log(f"| {fam} | {k} | {c} | {p} | {e:.2e} |")
        result["checks"] = ch.rows
        rc = 3 if ch.fails else 0     # 3: some checks failed (1 would be a Python error)
    if args.bench:
        log("# benchmarks (median ms, CUDA events, L2 flushed before each rep unless 'per call')")
        result["rows"] = run_bench(ks, fams, log, flush_mode=args.flush)
        result["flush"] = args.flush
        log("| name | shape | ours ms | reference | ref ms | speedup | extra |")
        log("|---|---|---|---|---|---|---|")
        for r in result["rows"]:
            if "ours_ms" not in r:
                continue
            extra = ", ".join(f"{k}={v}" for k, v in r.items()
                              if k not in ("name", "shape", "ours_ms", "ref", "ref_ms", "speedup"))
            ref_ms = "" if r["ref_ms"] is None else f"{r['ref_ms']:.4f}"
            spd = "" if r["speedup"] is None else r["speedup"]
            log(f"| {r['name']} | {r['shape']} | {r['ours_ms']:.4f} | {r['ref']} | {ref_ms} | {spd} | {extra} |")
    with open(out / f"quant_{args.tag or ('sanitize' if args.sanitize else 'run')}.json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    dev.sync()
    if args.dry:
        log(f"# dry run: {dev.launches} launches validated")
    else:
        dev.ctx.pop()
    return rc


if __name__ == "__main__":
    sys.exit(main())
