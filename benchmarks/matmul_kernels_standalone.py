#!/usr/bin/env python3
"""Standalone check and benchmark of the tensor-core matmul kernels
(kernels/matmul_tc.cu, kernels/matmul_tc_wgmma.cu) through PyCUDA alone: of minigrad it
imports only pure functions (the cubin reader, the launcher's tile rule), no runtime.

    # no GPU needed: compile cubins with nvcc (sm_90 + sm_90a, or --arch sm_80)
    python3 benchmarks/matmul_kernels_standalone.py --build build/mtc_cubins
    # on the GPU machine (PyCUDA, NumPy, ml_dtypes; PyTorch optional)
    python3 benchmarks/matmul_kernels_standalone.py --check [--family sm80|wgmma|all] [--no-big]
    python3 benchmarks/matmul_kernels_standalone.py --bench [--quick]
    compute-sanitizer --tool memcheck  python3 benchmarks/matmul_kernels_standalone.py --sanitize
    compute-sanitizer --tool racecheck python3 benchmarks/matmul_kernels_standalone.py --sanitize

Options: --cubin-dir DIR loads cubins made by --build (checked against a hash of the
sources; stale or missing ones are compiled with nvcc through pycuda.compiler.compile);
--build DIR --nvcc-flags="-DNAME=V ..." builds a variant of the kernels' compile-time
switches (e.g. the sync producer's WS_LDG_* split) for an A/B in one GPU call, and the
runtime line of the log names the flags;
--out DIR receives the log and JSON (default benchmarks/results).

Kernel families: sync (matmul_tc_*_{v,s}, 128x128), sync8 (matmul_tc_*_v_w8, 128x256),
async80 (matmul_tc_async_*_{v,s}, cp.async 4-stage), and the sm_90a ones in
matmul_tc_wgmma.cu: wgmma (matmul_tc_wgmma_*_n{256,128}, cp.async), tma
(matmul_tc_tma_*_n{256,128}c{2,1}: TMA, warp-specialized, persistent, c2 = 2-CTA clusters
with B multicast; tensor maps encoded here through ctypes, the parameter buffer padded to
the offsets read from the cubin) and wgsync (matmul_tc_wgsync_*_{n256c2,n256c1,n128c1}:
synchronous ld.global -> st.shared producer, c2 sharing B). host_choice() below mirrors
the launcher's rule (minigrad/backend/cuda/ops_matmul.py). Bench options: --shapes
(cubes, small, targets, tr), --kernels fam[:tile[:group]],... (e.g. tma:n256c2:8,
wgsync:n256c2,wgmma:256,sync8), --tag (file names); --dtypes also limits the bench.

Check: every family x dtype (f16, bf16) x layout (nn, nt, tn, tt) x load path (_v where
the 16-byte rule allows it, _s where the family has one) on fresh random inputs, against
the NumPy reference A.astype(f32) @ B.astype(f32) of the same 16-bit inputs. Outputs are
poisoned with NaN bits before each launch; padding columns of A, B hold NaN (a read
of padding poisons the result) and padding columns of C must still hold the poison
afterwards (no stray writes). Pass: no NaN, ||out-ref||/||ref|| < 1e-4 (only the f32
summation order differs), padding untouched.

Bench: CUDA events around each launch, 5 warm-up launches, then 5 medians of 20
launches each (worst and best median reported), rotating among input sets so
that the sets together exceed twice the L2. Baseline: torch.mm(a, b, out_dtype=
torch.float32) when this PyTorch has it (f16/bf16 in, f32 out, like ours), else
torch.matmul(a, b).float(); torch.matmul with f16/bf16 output is timed too.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minigrad.backend.cuda.compiler import kparam_offsets  # noqa: E402  (pure: reads a cubin)
# the launcher's tile rule and its tensor-map encoder (cuTensorMapEncodeTiled through ctypes,
# no cuda-python needed)
from minigrad.backend.cuda.ops_matmul import tensor_map, ws_tile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KDIR = ROOT / "kernels"
SOURCES = {"matmul_tc": "matmul_tc.cu", "matmul_tc_wgmma": "matmul_tc_wgmma.cu"}
LAYOUTS = ("nn", "nt", "tn", "tt")
DTYPES = ("f16", "bf16")
# family -> (name prefix, name suffix, threads, dynamic shared bytes, block N); "{t}" = tile
FAMILIES = {
    "sync":    ("matmul_tc_", "", 128, 0, 128),            # 128x128, 4 warps, static smem
    "sync8":   ("matmul_tc_", "_w8", 256, 61440, 256),     # 128x256, 8 warps (_v only)
    "async80": ("matmul_tc_async_", "", 128, 81920, 128),  # cp.async, 4 stages
    "wgmma":   ("matmul_tc_wgmma_", "_n{t}", 256, 197632, None),   # sm_90a, cp.async + wgmma
    "tma":     ("matmul_tc_tma_", "_{t}", 384, None, None),        # sm_90a, TMA + wgmma, WS
    "wgsync":  ("matmul_tc_wgsync_", "_{t}", 384, None, None),     # sm_90a, ld/st + wgmma, WS
}
HOPPER = ("wgmma", "tma", "wgsync")
V_ONLY = ("sync8", "wgmma", "tma", "wgsync")
# tiles of each Hopper family: wgmma 128 x t; tma and wgsync n<BN>c<cluster size>
TILES = {"wgmma": (256, 128), "tma": ("n256c2", "n256c1", "n128c2", "n128c1"),
         "wgsync": ("n256c2", "n256c1", "n128c1")}
WS_SMEM = {256: 215040, 128: 215040}      # MTW_WS_SMEM_N256 / _N128
TMA_ARGFMT = "Q" * 48 + "Pqqiiiiiiiii"
# C by TMA stores where the kernels stage their epilogue (K <= 1024, N >= 512) and the map
# is legal (N, ldc multiples of 4, C 16-byte aligned), as ops_matmul.tma_launcher does;
# MTW_TMA_STORE=0 turns it off (then the staged st.global epilogue runs: A/B in one call),
# MTW_TMA_STORE=always uses it wherever the map is legal (a probe of other shapes)
TMA_STORE = os.environ.get("MTW_TMA_STORE", "1")
WGSYNC_ARGFMT = "PPPqqqqqqiiiii"
GROUP = {"tma": 8, "wgsync": 16}          # unit-rows per raster group (overridable: --group)
ARGFMT = "PPPqqqqqqiiii"
TOL = 1e-4
NAN16 = {"f16": 0x7E00, "bf16": 0x7FC0}


# ---------------------------------------------------------------- build -----
def src_hash(name):
    h = hashlib.sha256()
    h.update((KDIR / SOURCES[name]).read_bytes())
    for header in sorted(KDIR.glob("*.cuh")):     # what the .cu files may include
        h.update(header.read_bytes())
    return h.hexdigest()[:16]


def arch_of(name, cc):
    if name == "matmul_tc_wgmma":
        return "sm_90a" if cc == (9, 0) else None
    return "sm_%d%d" % cc


def nvcc_cubin(name, arch, out_path=None, flags=()):
    """Compile kernels/<name>.cu for `arch` with nvcc (extra `flags`, e.g. -D switches);
    returns the cubin bytes."""
    code = arch
    comp = "compute_" + arch[3:]
    cmd = ["nvcc", "-cubin", "-std=c++17", f"-gencode=arch={comp},code={code}", *flags,
           f"-I{KDIR}", "-o", "/dev/stdout" if out_path is None else str(out_path),
           str(KDIR / SOURCES[name])]
    if out_path is None:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}_{arch}_{os.getpid()}.cubin"
        cmd[cmd.index("/dev/stdout")] = str(tmp)
        subprocess.run(cmd, check=True)
        data = tmp.read_bytes()
        tmp.unlink()
        return data
    subprocess.run(cmd, check=True)
    return Path(out_path).read_bytes()


def build(outdir, archs, flags=()):
    """Cubins of every source into outdir, each with the hash of its source (a stale one is
    rebuilt at load) and, when `flags` are given (a variant build), a .flags file naming them:
    the runtime logs it, so a variant's tables say what they measured."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for arch in archs:
        for name in SOURCES:
            if name == "matmul_tc_wgmma" and arch != "sm_90":
                continue
            a = "sm_90a" if name == "matmul_tc_wgmma" else arch
            p = outdir / f"{name}.{a}.cubin"
            t = time.time()
            nvcc_cubin(name, a, p, flags)
            (outdir / f"{name}.{a}.hash").write_text(src_hash(name))
            fp = outdir / f"{name}.{a}.flags"
            if flags:
                fp.write_text(" ".join(flags) + "\n")
            elif fp.exists():
                fp.unlink()
            print(f"built {p} ({p.stat().st_size} B, {time.time() - t:.1f} s)")


def load_cubin(name, arch, cubin_dir):
    if cubin_dir:
        p = Path(cubin_dir) / f"{name}.{arch}.cubin"
        hp = Path(cubin_dir) / f"{name}.{arch}.hash"
        if p.exists() and hp.exists() and hp.read_text().strip() == src_hash(name):
            fp = Path(cubin_dir) / f"{name}.{arch}.flags"
            return p.read_bytes(), ("prebuilt, nvcc " + fp.read_text().strip()
                                    if fp.exists() else "prebuilt")
        log(f"[build] {p} missing or stale: compiling with nvcc")
    try:
        from pycuda.compiler import compile as pycompile
        return pycompile((KDIR / SOURCES[name]).read_text(), no_extern_c=True,
                         arch="compute_" + arch[3:], code=arch,
                         options=["-std=c++17"], include_dirs=[str(KDIR)]), "nvcc"
    except Exception:
        return nvcc_cubin(name, arch), "nvcc"


# ---------------------------------------------------------------- log -------
_LOG = None
_CUBIN_DIR = None


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    if _LOG:
        _LOG.write(s + "\n")
        _LOG.flush()


# ---------------------------------------------------------------- runtime ---
class Runtime:
    def __init__(self, cubin_dir, families):
        import pycuda.driver as drv
        self.drv = drv
        drv.init()
        self.dev = drv.Device(0)
        self.ctx = self.dev.retain_primary_context()
        self.ctx.push()
        self.cc = self.dev.compute_capability()
        self.name = self.dev.name()
        self.sms = self.dev.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT)
        self.stream = drv.Stream()
        self.mods, self.funcs, self.cubins, self.pads = {}, {}, {}, {}
        for fam in families:
            name = "matmul_tc_wgmma" if fam in HOPPER else "matmul_tc"
            if name in self.mods:
                continue
            arch = arch_of(name, self.cc)
            if arch is None:
                log(f"[runtime] {name}: needs sm_90a, device is sm_{self.cc[0]}{self.cc[1]}: skipped")
                continue
            t = time.time()
            cubin, how = load_cubin(name, arch, cubin_dir)
            self.cubins[name] = cubin
            self.mods[name] = drv.module_from_buffer(cubin)
            log(f"[runtime] {name} {arch} ({how}, {len(cubin)} B) loaded in {time.time() - t:.1f} s")

    def close(self):
        self.ctx.synchronize()
        self.ctx.pop()

    def func(self, kname, smem):
        f = self.funcs.get(kname)
        if f is None:
            hopper = any(kname.startswith("matmul_tc_" + h + "_") for h in HOPPER)
            mod = self.mods["matmul_tc_wgmma" if hopper else "matmul_tc"]
            f = mod.get_function(kname)
            if "_tma_" in kname:
                pad = self.pads[kname] = tma_pad(self.cubins["matmul_tc_wgmma"], kname)
                f.prepare("Q" * (pad // 8) + TMA_ARGFMT)
            else:
                f.prepare(WGSYNC_ARGFMT if "_wgsync_" in kname else ARGFMT)
            if smem > 0:
                f.set_attribute(self.drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
            self.funcs[kname] = f
        return f

    def has(self, fam):
        return ("matmul_tc_wgmma" if fam in HOPPER else "matmul_tc") in self.mods


# ------------------------------------------------------- host-side rules ----
def vec_ok(a_ptr, b_ptr, lda, ldb, sA, sB):
    """The rule that makes 16-byte loads legal (the _v kernels and wgmma)."""
    return (lda % 8 == 0 and ldb % 8 == 0 and sA % 8 == 0 and sB % 8 == 0
            and a_ptr % 16 == 0 and b_ptr % 16 == 0)


def sync_family(M, N, batch, sms):
    """_v or _v_w8 for the sync ops (kernels/matmul_tc.cu header)."""
    w8 = (math.ceil(N / 256) * 2 == math.ceil(N / 128)
          and math.ceil(M / 128) * math.ceil(N / 256) * batch >= sms / 2)
    return "sync8" if w8 else "sync"


def host_choice(op_async, M, N, batch, vec, sms, cc):
    """(family, path, tile) the host rules pick for one launch (split-K aside; see
    minigrad/backend/cuda/ops_matmul.py, which this mirrors)."""
    if not vec:
        return ("async80" if op_async else "sync"), "s", 128
    if cc == (9, 0):
        bn, cm = ws_tile(M, N, batch, sms, sync=not op_async)
        return ("tma" if op_async else "wgsync"), "v", f"n{bn}c{cm}"
    if op_async:
        return "async80", "v", 128
    return sync_family(M, N, batch, sms), "v", 128


def kernel_for(fam, dt, layout, path, tile):
    """(name, threads, dynamic shared bytes, block N)."""
    pre, suf, threads, smem, bn = FAMILIES[fam]
    if fam in ("tma", "wgsync"):
        bn = int(tile[1:4])
        return f"{pre}{dt}_{layout}_{tile}", threads, WS_SMEM[bn], bn
    if fam in HOPPER:
        return f"{pre}{dt}_{layout}{suf.format(t=tile)}", threads, smem, bn or tile
    return f"{pre}{dt}_{layout}_{path}{suf}", threads, smem, bn


def operand_map(ptr, dt, trans, rows, cols, ld, stride, batch, box_outer):
    """Tensor map of a logical [rows, cols] operand ('n': element (r, c) at r*ld + c;
    't': at c*ld + r) with batch entries `stride` elements apart (0: shared). The
    contiguous dim is innermost; boxes are 64 of it by box_outer (64 for MN-major)."""
    inner, outer = (rows, cols) if trans else (cols, rows)
    nb = batch if stride else 1
    s2 = stride if stride else outer * ld
    return tensor_map(ptr, dt, (inner, outer, nb), (2 * ld, 2 * s2), (64, box_outer, 1))


def tma_maps(dt, layout, tile, a, b, lda, ldb, sA, sB, M, N, K, batch):
    bn, cm = int(tile[1:4]), int(tile[-1])
    at, bt = layout[0] == "t", layout[1] == "t"
    # A is [M, K]: 'n' K-major (box 64 k x 128 m), 't' MN-major (box 64 m x 64 k)
    ma = operand_map(int(a), dt, at, M, K, lda, sA, batch, 64 if at else 128)
    # B is [K, N]: 't' K-major (box 64 k x BN/CM n), 'n' MN-major (box 64 n x 64 k)
    mb = operand_map(int(b), dt, bt, K, N, ldb, sB, batch, bn // cm if bt else 64)
    return ma, mb


def ws_grid(fam, tile, M, N, batch, slots):
    """Persistent grid of the warp-specialized kernels: one CTA per SM at most."""
    bn = int(tile[1:4])
    cm = int(tile[-1])
    units = math.ceil(math.ceil(M / 128) / cm) * math.ceil(N / bn) * batch
    return cm * min(units, slots // cm)


def launch(rt, fam, dt, layout, path, tile, a, b, c, lda, ldb, ldc, sA, sB, sC, M, N, K, batch,
           group=None, kchunk=0):
    """One launch; with kchunk (tma only: split-K in the kernel) the batch entries are the
    K chunks of one product, kchunk long, into slabs sC apart."""
    kname, threads, smem, bn = kernel_for(fam, dt, layout, path, tile)
    f = rt.func(kname, smem)
    g = group or GROUP.get(fam, 8)
    if fam == "tma":
        ma, mb = tma_maps(dt, layout, tile, a, b, lda, ldb, sA, sB, M, N, K, batch)
        if ma is None or mb is None:
            raise RuntimeError(f"cuTensorMapEncodeTiled refused {kname} {M}x{N}x{K} lda={lda} "
                               f"ldb={ldb} sA={sA} sB={sB}")
        grid = (ws_grid(fam, tile, M, N, batch, rt.sms), 1, 1)
        mc = None
        rule = TMA_STORE == "always" or (-(-(kchunk or K) // 64) <= 16 and N >= 512)
        if TMA_STORE != "0" and rule and N % 4 == 0 and ldc % 4 == 0 and int(c) % 16 == 0:
            mc = tensor_map(int(c), "f32", (N, M, batch), (4 * ldc, 4 * (sC or M * ldc)),
                            (32, 8, 1))
        f.prepared_async_call(grid, (threads, 1, 1), rt.stream, *([0] * (rt.pads[kname] // 8)),
                              *ma, *mb, *(mc or [0] * 16), int(c), ldc, sC,
                              M, N, K, batch, 1 if sA else 0, 1 if sB else 0, g,
                              int(mc is not None), kchunk, shared_size=smem)
        return kname + ("+tmastore" if mc else "")
    if fam == "wgsync":
        grid = (ws_grid(fam, tile, M, N, batch, rt.sms), 1, 1)
        f.prepared_async_call(grid, (threads, 1, 1), rt.stream, int(a), int(b), int(c), lda, ldb,
                              ldc, sA, sB, sC, M, N, K, batch, g, shared_size=smem)
        return kname
    grid = (math.ceil(M / 128) * math.ceil(N / bn), 1, min(batch, 65535))
    f.prepared_async_call(grid, (threads, 1, 1), rt.stream, int(a), int(b), int(c), lda, ldb, ldc,
                          sA, sB, sC, M, N, K, batch, shared_size=smem)
    return kname


def max_active_clusters(rt, kname, smem, threads=384, cluster=2):
    """cuOccupancyMaxActiveClusters for a __cluster_dims__ kernel (cuda-python; None if
    unavailable). Diagnostic only: the module is loaded a second time through cuda-python."""
    try:
        from cuda.bindings import driver as cu
        cubin = load_cubin("matmul_tc_wgmma", "sm_90a", _CUBIN_DIR)[0]
        err, mod = cu.cuModuleLoadData(cubin)
        err, fn = cu.cuModuleGetFunction(mod, kname.encode())
        cu.cuFuncSetAttribute(fn, cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
        cfg = cu.CUlaunchConfig()
        cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = cluster * 66, 1, 1
        cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = threads, 1, 1
        cfg.sharedMemBytes = smem
        err, n = cu.cuOccupancyMaxActiveClusters(fn, cfg)
        return int(n) if int(err) == 0 else f"error {err}"
    except Exception as e:      # noqa: BLE001
        return f"unavailable ({e!r})"[:120]


def tma_pad(cubin, kname):
    """Bytes of padding before the first tensor map (checked against every parameter's
    offset for the natural packing of TMA_ARGFMT after the padding)."""
    import struct
    offs = kparam_offsets(cubin, kname)
    if not offs:
        raise RuntimeError(f"{kname}: no parameter table in the cubin")
    pad = offs[0][0]
    want, pos = [], pad
    for c in TMA_ARGFMT:
        sz = struct.calcsize(c)
        pos = -(-pos // sz) * sz
        want.append(pos)
        pos += sz
    want = [pad, pad + 128, pad + 256] + want[48:]
    got = [offs[i][0] for i in sorted(offs)]
    if got != want:
        raise RuntimeError(f"{kname}: parameter offsets {got}, expected {want}")
    return pad


# ------------------------------------------------------------ data ---------
def to16(x32, dt):
    """f32 array -> (uint16 bits, f32 values of the rounded inputs)."""
    if dt == "f16":
        h = x32.astype(np.float16)
    else:
        import ml_dtypes
        h = x32.astype(ml_dtypes.bfloat16)
    return h.view(np.uint16), h.astype(np.float32)


def storage(bits, trans, pad, dt):
    """Logical [..., R, C] 16-bit bits -> contiguous storage with layout 'n' ([..., R, C+pad])
    or 't' ([..., C, R+pad]); padding holds NaN. Returns (array, ld, batch_stride)."""
    x = np.swapaxes(bits, -1, -2) if trans else bits
    shp = x.shape[:-1] + (x.shape[-1] + pad,)
    s = np.full(shp, NAN16[dt], dtype=np.uint16)
    s[..., : x.shape[-1]] = x
    ld = shp[-1]
    bstride = shp[-2] * shp[-1] if s.ndim > 2 else 0
    return np.ascontiguousarray(s), ld, bstride


class Case:
    def __init__(self, name, M, N, K, abatch=(), bbatched=False, pad=0, cpad=0, kchunk=0):
        self.name, self.M, self.N, self.K = name, M, N, K
        self.abatch, self.bbatched, self.pad, self.cpad = tuple(abatch), bbatched, pad, cpad
        self.batch = int(np.prod(self.abatch)) if self.abatch else 1
        self.kchunk = kchunk        # tma only: one product cut into K chunks, slab each


def check_cases(big):
    cs = [
        Case("1x1x1", 1, 1, 1),
        Case("17x9x13", 17, 9, 13),
        Case("127x255x33", 127, 255, 33),
        Case("1000x1000x1000", 1000, 1000, 1000),
        Case("[4,3,65,129]@[129,70]", 65, 70, 129, abatch=(4, 3)),
        Case("[3,65,129]@[3,129,70]", 65, 70, 129, abatch=(3,), bbatched=True),
        # leading dims padded to multiples of 8 with ragged extents: the _v / wgmma paths
        # with partial 16-byte chunks in every direction; odd ldc (scalar C stores)
        Case("pad8 [2]x100x90x70 ldc+3", 100, 90, 70, abatch=(2,), bbatched=True, pad=8, cpad=3),
        Case("pad8 259x300x200", 259, 300, 200, pad=8),
        Case("64x256x1024", 64, 256, 1024),
        # warp-specialized kernels: batched A with B shared (TMA batch coordinate 0),
        # K < one K tile, several units per persistent CTA (stage/phase wrap across
        # tiles), an odd number of 128-row tiles (a cluster's second CTA past M)
        Case("pad8 [3]x130x264x136 B shared", 130, 264, 136, abatch=(3,), pad=8),
        Case("40x520x24", 40, 520, 24),
        Case("2048x4096x256", 2048, 4096, 256),
        Case("pad8 1160x1000x520", 1160, 1000, 520, pad=8, cpad=1),
        # the staged epilogue (K <= 1024, N >= 512) with an even, not 4-aligned ldc
        # (float2 stores of the row segments) and a last column chunk cut by N
        Case("300x530x200 ldc+4", 300, 530, 200, cpad=4),
        # its TMA stores (ldc % 4 == 0): rows and the last column chunk clipped by the
        # map, padding columns of C untouched, batch entries sC apart
        Case("300x530x200 ldc+6 (TMA store)", 300, 530, 200, cpad=6),
        Case("[3]x70x520x64 B shared (TMA store)", 70, 520, 64, abatch=(3,)),
        Case("[2]x130x600x136 ldc+8 (TMA store)", 130, 600, 136, abatch=(2,), bbatched=True,
             pad=8, cpad=8),
        # M % 16 in 1..8: a warp's second 8-row half lies past M (no store from it; the
        # next block's half-0 refill must wait for half 0's store: a race once, session 14)
        Case("1000x4096x32 (TMA store, rows cut at 8)", 1000, 4096, 32),
        Case("1000x4096x96 (TMA store, rows cut at 8)", 1000, 4096, 96),
        # split-K in the kernel (kchunk): 3 chunks, the last one short and not a whole K
        # step; with the TMA store (chunks <= 1024 of K, N >= 512)
        Case("200x136x1000 kchunk 384", 200, 136, 1000, pad=8, cpad=1, kchunk=384),
        Case("130x520x2100 kchunk 768 (TMA store)", 130, 520, 2100, kchunk=768),
    ]
    if big:
        cs.append(Case("4096x4096x4096", 4096, 4096, 4096))
    return cs


def sanitize_cases():
    return [Case("17x9x13", 17, 9, 13),
            Case("pad8 [2]x100x90x70", 100, 90, 70, abatch=(2,), bbatched=True, pad=8, cpad=3),
            Case("136x264x72", 136, 264, 72),
            Case("[2,3]x33x20x17", 33, 20, 17, abatch=(2, 3)),
            Case("pad8 [3]x130x264x136 B shared", 130, 264, 136, abatch=(3,), pad=8),
            Case("136x520x72 (staged epilogue, TMA store)", 136, 520, 72),
            Case("136x530x72 ldc+2 (staged epilogue)", 136, 530, 72, cpad=2),
            Case("[2]x70x520x64 (TMA store)", 70, 520, 64, abatch=(2,), bbatched=True),
            Case("130x520x1100 kchunk 512 (TMA store)", 130, 520, 1100, kchunk=512),
            Case("200x1024x32 (TMA store, rows cut at 8)", 200, 1024, 32)]


def pad_to(v, m):
    return (v + m - 1) // m * m


def run_checks(rt, cases, families, dtypes, layouts, results, rng):
    drv = rt.drv
    nfail = 0
    for case in cases:
        for dt in dtypes:
            M, N, K = case.M, case.N, case.K
            a32 = rng.standard_normal(case.abatch + (M, K), dtype=np.float32)
            b32 = rng.standard_normal(((case.batch,) if case.bbatched else ()) + (K, N),
                                      dtype=np.float32)
            if case.bbatched:
                b32 = b32.reshape(case.abatch + (K, N))
            abits, af = to16(a32, dt)
            bbits, bf = to16(b32, dt)
            t = time.time()
            kc, nb = case.kchunk, case.batch
            if kc:                      # slab j: the product over K chunk j
                nb = -(-K // kc)
                ref = np.stack([af[:, j * kc:(j + 1) * kc] @ bf[j * kc:(j + 1) * kc]
                                for j in range(nb)])
            else:
                ref = np.matmul(af, bf).reshape(case.batch, M, N)
            tref = time.time() - t
            refn = float(np.linalg.norm(ref.astype(np.float64)))
            ldc = N + case.cpad
            c_elems = nb * M * ldc
            c_gpu = drv.mem_alloc(max(4 * c_elems, 4))
            for layout in layouts:
                at, bt = layout[0] == "t", layout[1] == "t"
                pa = pad_to(K if not at else M, 8) - (K if not at else M) + case.pad if case.pad else 0
                pb = pad_to(N if not bt else K, 8) - (N if not bt else K) + case.pad if case.pad else 0
                As, lda, sA = storage(abits.reshape((case.batch,) + (M, K)) if case.abatch else abits,
                                      at, pa, dt)
                Bs, ldb, sB = storage(bbits.reshape((case.batch,) + (K, N)) if case.bbatched else bbits,
                                      bt, pb, dt)
                if not case.abatch:
                    sA = 0
                if not case.bbatched:
                    sB = 0
                a_gpu = drv.to_device(As)
                b_gpu = drv.to_device(Bs)
                vec = vec_ok(int(a_gpu), int(b_gpu), lda, ldb, sA, sB)
                runs = []
                for fam in families:
                    if not rt.has(fam) or (kc and fam != "tma"):
                        continue
                    if fam in HOPPER:
                        if vec:
                            runs += [(fam, "v", t) for t in TILES[fam]]
                    else:
                        runs += ([(fam, "v", 128)] if vec else [])
                        runs += [] if fam in V_ONLY else [(fam, "s", 128)]
                for fam, path, tile in runs:
                    drv.memset_d32(c_gpu, 0xFFFFFFFF, max(c_elems, 1))   # NaN poison
                    t = time.time()
                    try:
                        kname = launch(rt, fam, dt, layout, path, tile, a_gpu, b_gpu, c_gpu,
                                       lda, ldb, ldc, sA, sB, M * ldc, M, N, K, nb, kchunk=kc)
                        rt.stream.synchronize()
                    except Exception as e:   # a fault kills the context: report and stop
                        log(f"FAIL  {case.name:28s} {dt:4s} {layout} {fam}/{path}/{tile}: {e!r}")
                        raise
                    tk = time.time() - t
                    cbuf = np.empty(max(c_elems, 1), dtype=np.float32)
                    drv.memcpy_dtoh(cbuf, c_gpu)
                    c = cbuf[:c_elems].reshape(nb, M, ldc)
                    out = c[:, :, :N]
                    nan = int(np.count_nonzero(~np.isfinite(out)))
                    padok = bool(np.all(c[:, :, N:].view(np.uint32) == 0xFFFFFFFF))
                    err = out.astype(np.float64) - ref
                    rel = float(np.linalg.norm(np.nan_to_num(err, nan=1e30))) / max(refn, 1e-30)
                    mx = float(np.nanmax(np.abs(err))) if err.size else 0.0
                    ok = nan == 0 and rel < TOL and padok
                    nfail += not ok
                    log(f"{'ok  ' if ok else 'FAIL'}  {case.name:28s} {dt:4s} {layout} "
                        f"{kname:34s} rel={rel:.2e} maxabs={mx:.2e} nan={nan} pad={'ok' if padok else 'WRITTEN'}"
                        f" ({tk * 1e3:.0f} ms)")
                    results.append(dict(case=case.name, dtype=dt, layout=layout, kernel=kname,
                                        family=fam, path=path, rel=rel, maxabs=mx, nan=nan,
                                        pad_ok=padok, ok=ok))
                a_gpu.free()
                b_gpu.free()
            c_gpu.free()
            log(f"      ({case.name} {dt}: reference {tref:.2f} s)")
    return nfail


# ------------------------------------------------------------ bench --------
def bench_shapes(quick):
    cubes = [(n, n, n) for n in ((1024, 4096) if quick else (1024, 2048, 4096, 8192))]
    tr = [(16384, n, k) for n, k in ((1152, 384), (384, 384), (1536, 384), (384, 1536))]
    return cubes, tr


def time_events(drv, stream, fn, nsets, warm=5, reps=20, rounds=5):
    for i in range(warm):
        fn(i % nsets)
    meds = []
    k = 0
    for _ in range(rounds):
        ev = [(drv.Event(), drv.Event()) for _ in range(reps)]
        for s, e in ev:
            s.record(stream)
            fn(k % nsets)
            e.record(stream)
            k += 1
        ev[-1][1].synchronize()
        meds.append(float(np.median([e.time_since(s) for s, e in ev])))
    return max(meds), min(meds)


def time_torch(torch, fn, nsets, warm=5, reps=20, rounds=5):
    for i in range(warm):
        fn(i % nsets)
    meds = []
    k = 0
    for _ in range(rounds):
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
        for s, e in ev:
            s.record()
            fn(k % nsets)
            e.record()
            k += 1
        torch.cuda.synchronize()
        meds.append(float(np.median([s.elapsed_time(e) for s, e in ev])))
    return max(meds), min(meds)


def bench_plan(quick, shapes):
    """[(M, N, K), layout] to time. shapes: 'all' (the historical plan), or a comma list
    of 'cubes' (1024^3..8192^3 nn), 'targets' (4096^3 and 8192^3, nn / nt / tn: the
    issue-4 targets and the backward's layouts), 'tr' (the M = 16384 transformer shapes,
    nn / nt)."""
    cubes, tr = bench_shapes(quick)
    if shapes == "all":
        big = cubes[-1] if quick else (4096, 4096, 4096)
        plan = [(s, "nn") for s in cubes] + [(big, "nt"), (big, "tn")]
        return plan + [(s, lay) for s in tr for lay in ("nn", "nt")]
    plan = []
    for part in shapes.split(","):
        if part == "cubes":
            plan += [(s, "nn") for s in cubes]
        elif part == "small":
            plan += [((n, n, n), "nn") for n in (1024, 2048)]
        elif part == "targets":
            plan += [((n, n, n), lay) for n in (4096, 8192) for lay in ("nn", "nt", "tn")]
        elif part == "tr":
            plan += [(s, lay) for s in tr for lay in ("nn", "nt")]
        else:
            raise SystemExit(f"--shapes: unknown part {part!r}")
    return plan


def parse_kernels(spec):
    """'fam[:tile[:group]],...' -> [(fam, path, tile, group)]."""
    out = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        f, *rest = item.split(":")
        tile = rest[0] if rest else None
        if f == "wgmma" and tile is not None:
            tile = int(tile)
        group = int(rest[1]) if len(rest) > 1 else None
        out.append((f, "v", tile if tile is not None else 128, group))
    return out


def run_bench(rt, quick, rows, rng, bench_families, shapes="all", kernels="", dtypes=DTYPES):
    drv = rt.drv
    try:
        import torch
        torch.cuda.init()
        tver = torch.__version__
    except Exception as e:   # the script still runs without PyTorch
        torch, tver = None, None
        log(f"[bench] no PyTorch ({e!r}): no baseline column")
    l2 = rt.dev.get_attribute(drv.device_attribute.L2_CACHE_SIZE)
    ref_kind = None
    if torch is not None:
        try:
            x = torch.ones(16, 16, dtype=torch.float16, device="cuda")
            torch.mm(x, x, out_dtype=torch.float32)
            ref_kind = "torch.mm(out_dtype=f32)"
        except Exception:
            ref_kind = "torch.matmul(a,b).float()"
        log(f"[bench] torch {tver}, f32-output baseline: {ref_kind}")
    plan = bench_plan(quick, shapes)
    if kernels:
        kern_all = parse_kernels(kernels)
    else:
        kern_all = [(f, "v", 128, None) for f in bench_families if f not in HOPPER]
        kern_all += [(f, "v", t, None) for f in bench_families if f in HOPPER for t in TILES[f]]
    kern_all = [k for k in kern_all if rt.has(k[0])]
    hdr = (f"| shape | layout | dtype | kernel | ours ms (worst/best of 5 medians) | TFLOP/s "
           f"| {ref_kind or 'torch'} ms | TFLOP/s | ours/torch | torch f16-out TFLOP/s |")
    table = [hdr, "|" + "---|" * 10]
    for (M, N, K), layout in plan:
        flop = 2.0 * M * N * K
        at, bt = layout[0] == "t", layout[1] == "t"
        set_bytes = 2 * (M * K + K * N) + 4 * M * N
        nsets = max(1, min(8, math.ceil(2 * l2 / set_bytes)))
        for dt in dtypes:
            sets = []
            for _ in range(nsets):
                a32 = rng.standard_normal((M, K), dtype=np.float32)
                b32 = rng.standard_normal((K, N), dtype=np.float32)
                ab, _ = to16(a32, dt)
                bb, _ = to16(b32, dt)
                As = np.ascontiguousarray(ab.T if at else ab)
                Bs = np.ascontiguousarray(bb.T if bt else bb)
                sets.append((drv.to_device(As), drv.to_device(Bs), drv.mem_alloc(4 * M * N), ab, bb))
            lda = M if at else K
            ldb = K if bt else N
            kern = kern_all
            torch_ms = torch16 = None
            if torch is not None:
                tdt = torch.float16 if dt == "f16" else torch.bfloat16
                tsets = []
                for (_, _, _, ab, bb) in sets:
                    ta = torch.from_numpy(ab.view(np.int16)).cuda().view(tdt)
                    tb = torch.from_numpy(bb.view(np.int16)).cuda().view(tdt)
                    if at:
                        ta = ta.t().contiguous().t()
                    if bt:
                        tb = tb.t().contiguous().t()
                    tsets.append((ta, tb))
                if ref_kind.startswith("torch.mm"):
                    f32 = lambda i: torch.mm(tsets[i][0], tsets[i][1], out_dtype=torch.float32)
                else:
                    f32 = lambda i: torch.matmul(tsets[i][0], tsets[i][1]).float()
                torch_ms = time_torch(torch, f32, nsets)
                torch16 = time_torch(torch, lambda i: torch.matmul(tsets[i][0], tsets[i][1]), nsets)
            for fam, path, tile, group in kern:
                fn = lambda i: launch(rt, fam, dt, layout, path, tile, sets[i][0], sets[i][1],
                                      sets[i][2], lda, ldb, N, 0, 0, 0, M, N, K, 1, group)
                try:
                    worst, best = time_events(drv, rt.stream, fn, nsets)
                except Exception as e:
                    log(f"[bench] {fam} {dt} {layout} {M}x{N}x{K}: {e!r}")
                    raise
                kname = kernel_for(fam, dt, layout, path, tile)[0]
                if group is not None:
                    kname += f" g{group}"
                tf = flop / worst / 1e9
                line = f"| {M}x{N}x{K} | {layout} | {dt} | {kname} | {worst:.4f} / {best:.4f} | {tf:.1f} |"
                row = dict(name=kname, shape=[M, N, K], layout=layout, dtype=dt,
                           ours_ms=worst, ours_best_ms=best, ours_tflops=tf)
                if torch_ms:
                    ttf = flop / torch_ms[0] / 1e9
                    line += (f" {torch_ms[0]:.4f} | {ttf:.1f} | {torch_ms[0] / worst:.2f} |"
                             f" {flop / torch16[0] / 1e9:.1f} |")
                    row.update(ref=ref_kind, ref_ms=torch_ms[0], ref_tflops=ttf,
                               speedup=torch_ms[0] / worst, ref_f16out_ms=torch16[0])
                else:
                    line += " - | - | - | - |"
                picks = [host_choice(a, M, N, 1, True, rt.sms, rt.cc) for a in (False, True)]
                if (fam, path, tile) in picks:
                    line += "  <- host rule (%s)" % ("matmul_tc*_async" if picks[1] == (fam, path, tile)
                                                     else "matmul_tc / _bf16")
                log(line)
                table.append(line)
                rows.append(row)
            for s in sets:
                for m in s[:3]:
                    m.free()
            if torch is not None:
                del tsets
                torch.cuda.empty_cache()
    return table


# ------------------------------------------------------------ main ---------
def main():
    global _LOG
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", metavar="DIR")
    ap.add_argument("--arch", default="sm_90", help="with --build: sm_80, sm_90 (also builds sm_90a)")
    ap.add_argument("--nvcc-flags", default="", help="with --build: extra nvcc flags, e.g. the "
                    "-D switches of a variant (\"-DWS_LDG_N256_PARTS=2 -DWS_LDG_N256_PRODUCER=168 "
                    "-DWS_LDG_N256_CONSUMER=168\")")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--sanitize", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-big", action="store_true", help="skip the 4096^3 check")
    ap.add_argument("--family", default="all", choices=("all", "sm80", "wgmma"))
    ap.add_argument("--families", default="", help="comma list of " + ", ".join(FAMILIES))
    ap.add_argument("--dtypes", default="f16,bf16", help="comma list of f16, bf16")
    ap.add_argument("--cases", default="", help="comma list: keep only cases whose name contains one")
    ap.add_argument("--cubin-dir")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--shapes", default="all", help="bench: all, or a comma list of cubes, "
                    "small, targets, tr")
    ap.add_argument("--kernels", default="", help="bench: fam[:tile[:group]],... instead of "
                    "every tile of --families (e.g. tma:n256c2:8,wgsync:n256c2,wgmma:256)")
    ap.add_argument("--tag", default="", help="suffix of the log / JSON names")
    args = ap.parse_args()
    global _CUBIN_DIR
    _CUBIN_DIR = args.cubin_dir

    if args.build:
        build(args.build, [a.strip() for a in args.arch.split(",")], args.nvcc_flags.split())
        return 0
    if not (args.check or args.bench or args.sanitize):
        ap.error("nothing to do: --build, --check, --bench or --sanitize")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "sanitize" if args.sanitize else ("check" if args.check and not args.bench else
                                            "bench" if args.bench and not args.check else "all")
    if args.family != "all":
        tag += "_" + args.family
    if args.tag:
        tag += "_" + args.tag
    _LOG = open(out / f"matmul_kernels_standalone_{tag}.log", "a")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    families = {"all": tuple(FAMILIES), "sm80": ("sync", "sync8", "async80"),
                "wgmma": HOPPER}[args.family]
    if args.families:
        families = tuple(f.strip() for f in args.families.split(","))
    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    keep = [c.strip() for c in args.cases.split(",") if c.strip()]

    def pick(cases):
        return [c for c in cases if not keep or any(k in c.name for k in keep)]
    rt = Runtime(args.cubin_dir, families)
    info = dict(card=rt.name, cc="%d.%d" % rt.cc, sms=rt.sms,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                driver=rt.drv.get_driver_version(), seed=seed)
    try:
        info["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip() or None
    except Exception:
        info["commit"] = None
    log(f"[info] {json.dumps(info)}")
    if "tma" in families and rt.has("tma") and not args.sanitize:
        for t in ("n256c2", "n128c2"):
            kn, _, sm, _ = kernel_for("tma", "f16", "nn", "v", t)
            log(f"[info] max active 2-CTA clusters of {kn}: {max_active_clusters(rt, kn, sm)}")
    status = 0
    try:
        if args.sanitize:
            res = []
            n = run_checks(rt, pick(sanitize_cases()), families, dtypes, LAYOUTS, res, rng)
            log(f"[sanitize] {len(res) - n} passed, {n} failed")
            status |= n > 0
        if args.check:
            res = []
            n = run_checks(rt, pick(check_cases(not args.no_big)), families, dtypes, LAYOUTS, res, rng)
            log(f"[check] {len(res) - n} passed, {n} failed")
            (out / f"matmul_kernels_standalone_{tag}.json").write_text(
                json.dumps(dict(info, results=res), indent=1))
            status |= n > 0
        if args.bench:
            rows = []
            table = run_bench(rt, args.quick, rows, rng, families, args.shapes, args.kernels, dtypes)
            (out / f"matmul_kernels_standalone_{tag}.json").write_text(
                json.dumps(dict(info, rows=rows), indent=1))
            log(f"\n## matmul kernels vs torch — {rt.name}, {info['date']}\n")
            for line in table:
                log(line)
    finally:
        rt.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
