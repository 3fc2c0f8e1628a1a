#!/usr/bin/env python3
"""Standalone check and benchmark of kernels/flash_attention_tf32.cu (3xTF32 tensor cores,
D <= 128), kernels/flash_attention.cu (FFMA, any D <= 256) and kernels/attention_tc.cu.

Runs from the repository root with PYTHONPATH=. ; needs PyCUDA, NumPy, ml_dtypes and
cuda-python's NVRTC (`cuda.bindings.nvrtc`; falls back to nvcc through PyCUDA); PyTorch
only for the baseline timings (the script runs without it, minus that column).  It uses
none of minigrad's CUDA runtime: kernels are compiled here to a cubin for the device's
exact arch, loaded with `module_from_buffer` and launched with `prepared_async_call`,
so it tests the kernel files alone.

    python3 benchmarks/attention_kernels_standalone.py --check          # correctness
    python3 benchmarks/attention_kernels_standalone.py --bench          # timings vs torch
    python3 benchmarks/attention_kernels_standalone.py --sanitize       # tiny shapes, for
        compute-sanitizer --tool memcheck|racecheck python3 ... --sanitize
    --variants       with --bench: also time the -DFA_ALT_TILES tile set of the FFMA file and,
                     for D <= 64, the tf32 instances of the other block size (4 vs 8 warps)
    --impl tf32|ffma with --check/--sanitize: the flash path checked; tf32 (default) routes
                     D <= 128 to flash_attention_tf32.cu and larger D to flash_attention.cu,
                     as the minigrad host does; ffma uses flash_attention.cu for every D
    --no-tc          with --bench/--check: skip attention_tc
    --compile-only   build every module with NVRTC into the cubin cache and exit
    --prebuild DIR   build every module with the local nvcc into DIR (no GPU needed);
                     a run with MG_ATT_PREBUILT=DIR loads those instead of compiling
    --out DIR        write run.log / sanitize.log / bench.json there (default: no files)

Correctness: fresh random inputs per case, every output poisoned with NaN before the
launch, compared with the NumPy oracles of minigrad/backend/reference.py (flash: inputs
upcast to float64; attention_tc: the oracle's own f32 / f16-rounding steps).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KDIR = ROOT / "kernels"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from minigrad.backend import reference as ref  # noqa: E402

CACHE = Path(os.environ.get("MG_ATT_CACHE", "/tmp/mg_att_cubins"))
DPS = (32, 64, 128, 256)
BR = 64
NT = 128

# ------------------------------------------------------------------------- configuration --
# Mirrors the tile tables at the top of the .cu files (defaults) so the host can size grids
# and dynamic shared memory; FA_CFG_<DP> overrides reproduce the -D tuning variants.
FA_DEFAULT = {32: (64, 64, 64, 32), 64: (64, 32, 64, 64), 128: (32, 32, 32, 32), 256: (32, 16, 32, 32)}
FA_ALT = {64: (32, 64, 64, 32), 128: (32, 32, 32, 64)}      # -DFA_ALT_TILES (--variants)


# flash_attention_tf32.cu: (dp, warps per block) instances and their dynamic shared memory
FA3_NWS = {32: (4, 8), 64: (4, 8), 128: (8,)}


def fa3_smem(dp, nw):
    ld, bcq = dp + 4, (32 if dp == 128 else 64)
    return {"fwd": 4 * (16 * nw * ld + 256 * ld), "lse": 4 * (16 * nw * ld + 128 * ld),
            "dq": 4 * (32 * nw * ld + 4 * bcq * ld), "dkdv": 4 * (32 * nw * ld + 4 * bcq * ld + 4 * bcq)}


def fa_smem(dp, cfg):
    fb, qb, kb, kr = cfg
    return {"fwd": 4 * (BR * (dp + 4) + fb * (dp + 4) + fb * dp + BR * (fb + 4)),
            "dq": 4 * (2 * BR * (dp + 4) + 2 * qb * (dp + 4) + BR * (qb + 4)),
            "dkdv": 4 * (2 * kb * (dp + 4) + 2 * kr * (dp + 4) + 2 * kb * (kr + 4)),
            "lse": 4 * (BR + fb) * (dp + 4)}


def tc_bc(dp):
    return 32 if dp == 256 else 64


def tc_smem(dp, split=False):
    rows = BR // 2 if split else BR
    return 2 * (rows * (dp + 8) + 4 * tc_bc(dp) * (dp + 8)) + (512 if split else 0)


def pick_dp(d):
    for dp in DPS:
        if d <= dp:
            return dp
    raise ValueError(f"head dim {d} > 256")


# ------------------------------------------------------------------------------ compile --
def _nvrtc_compile(src, name, opts):
    from cuda.bindings import nvrtc
    err, prog = nvrtc.nvrtcCreateProgram(src.encode(), name.encode(), 0, [], [])
    assert int(err) == 0, err
    try:
        bopts = [o.encode() for o in opts]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(bopts), bopts)
        _, n = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * n
        nvrtc.nvrtcGetProgramLog(prog, log)
        if int(err) != 0:
            raise RuntimeError(f"NVRTC failed on {name} {opts}:\n{log.decode(errors='replace')}")
        _, n = nvrtc.nvrtcGetCUBINSize(prog)
        cubin = b" " * n
        nvrtc.nvrtcGetCUBIN(prog, cubin)
        return cubin, log.decode(errors="replace")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _compiler_tag():
    try:
        from cuda.bindings import nvrtc
        _, a, b = nvrtc.nvrtcVersion()
        return f"nvrtc{a}.{b}"
    except Exception:
        return "nvcc"


def _src_key(fname, defines, lineinfo):
    src = (KDIR / fname).read_text()
    common = (KDIR / "common.cuh").read_text()
    return src, hashlib.sha256(repr((src, common, tuple(defines), lineinfo)).encode()).hexdigest()[:24]


def prebuilt_path(fname, arch, defines=(), lineinfo=False, d=None):
    d = d or os.environ.get("MG_ATT_PREBUILT")
    if not d:
        return None
    return Path(d) / f"{fname}.sm_{arch}.{_src_key(fname, defines, lineinfo)[1]}.cubin"


def prebuild_nvcc(outdir, arch, fname, defines=(), lineinfo=False):
    """Build a cubin with the local nvcc into outdir (named by the source hash); the device
    run picks it up through MG_ATT_PREBUILT=outdir and otherwise compiles with NVRTC."""
    import subprocess
    path = prebuilt_path(fname, arch, defines, lineinfo, str(outdir))
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["nvcc", "-cubin", f"-arch=sm_{arch}", "-std=c++17", f"-I{KDIR}", "-o", str(path),
           str(KDIR / fname)] + [f"-D{d}" for d in defines] + (["-lineinfo"] if lineinfo else [])
    t0 = time.time()
    subprocess.run(cmd, check=True)
    print(f"[prebuild] {path.name}: {time.time() - t0:.1f} s", flush=True)


def _prebuild_job(args):
    prebuild_nvcc(*args)


def build(fname, arch, defines=(), lineinfo=False):
    """cubin bytes of kernels/<fname> for sm_<arch>, cached on disk by a hash of everything."""
    pre = prebuilt_path(fname, arch, defines, lineinfo)
    if pre is not None and pre.is_file():
        return pre.read_bytes()
    src = (KDIR / fname).read_text()
    common = (KDIR / "common.cuh").read_text()
    opts = ["-std=c++17", f"-arch=sm_{arch}", f"-I{KDIR}", "-I/usr/local/cuda/include"]
    opts += [f"-D{d}" for d in defines] + (["-lineinfo"] if lineinfo else [])
    tag = _compiler_tag()
    key = hashlib.sha256(repr((src, common, opts, tag)).encode()).hexdigest()[:24]
    path = CACHE / f"{fname}.{arch}.{key}.cubin"
    if path.is_file():
        return path.read_bytes()
    t0 = time.time()
    if tag.startswith("nvrtc"):
        cubin, log = _nvrtc_compile(src, fname, opts)
    else:
        from pycuda.compiler import compile as nvcc_compile
        cubin = nvcc_compile(src, arch=f"sm_{arch}", options=[o for o in opts if not o.startswith("-arch")],
                             include_dirs=[str(KDIR)], target="cubin", no_extern_c=True)
        log = ""
    if log.strip():
        print(f"[compile {fname} {defines}] log:\n{log.strip()}")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(cubin)
    os.replace(tmp, path)
    print(f"[compile] {fname} sm_{arch} {' '.join(defines) or 'default'}{' lineinfo' if lineinfo else ''}: "
          f"{time.time() - t0:.1f} s, {len(cubin)} B ({tag})", flush=True)
    return cubin


def _build_job(args):
    build(*args)
    return args


ALT_DEFINES = ("FA_ALT_TILES",)   # kernels/flash_attention.cu's tuning set == FA_ALT


def build_all(arch, variants=False, lineinfo=False):
    jobs = [("flash_attention.cu", arch, (), lineinfo), ("attention_tc.cu", arch, (), lineinfo),
            ("flash_attention_tf32.cu", arch, (), lineinfo)]
    if variants:
        jobs.append(("flash_attention.cu", arch, ALT_DEFINES, False))

    with ProcessPoolExecutor(len(jobs)) as ex:
        list(ex.map(_build_job, jobs))


# ------------------------------------------------------------------------------- device --
class Dev:
    def __init__(self):
        import pycuda.driver as drv
        self.drv = drv
        drv.init()
        self.dev = drv.Device(0)
        self.ctx = self.dev.retain_primary_context()
        self.ctx.push()
        cc = self.dev.compute_capability()
        self.arch = f"{cc[0]}{cc[1]}"
        self.name = self.dev.name()
        self.funcs = {}

    def close(self):
        self.ctx.pop()

    def load(self, fname, defines=(), lineinfo=False):
        try:
            return self.drv.module_from_buffer(build(fname, self.arch, defines, lineinfo))
        except self.drv.Error as e:   # a prebuilt cubin the driver rejects: compile here
            pre = prebuilt_path(fname, self.arch, defines, lineinfo)
            if pre is None or not pre.is_file():
                raise
            print(f"# prebuilt {pre.name} rejected ({e}); compiling with NVRTC", flush=True)
            os.environ.pop("MG_ATT_PREBUILT")
            return self.drv.module_from_buffer(build(fname, self.arch, defines, lineinfo))

    def func(self, mod, name, fmt, smem):
        key = (id(mod), name)
        if key not in self.funcs:
            f = mod.get_function(name)
            f.prepare(fmt)
            if smem > 48 * 1024:
                f.set_attribute(self.drv.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES, smem)
            self.funcs[key] = f
        return self.funcs[key]

    # memory
    def to_dev(self, a):
        a = np.ascontiguousarray(a)
        g = self.drv.mem_alloc(max(a.nbytes, 4))
        self.drv.memcpy_htod(g, a)
        return g

    def empty(self, nbytes, poison=True):
        g = self.drv.mem_alloc(max(nbytes, 4))
        if poison:   # f32 quiet NaN in every 4-byte word
            self.drv.memset_d32(g, 0x7FC00000, max(nbytes, 4) // 4)
        return g

    def get(self, g, shape, dtype=np.float32):
        out = np.empty(shape, dtype)
        self.drv.memcpy_dtoh(out, g)
        return out

    def sync(self):
        self.ctx.synchronize()


class Flash:
    """Launchers of flash_attention.cu (grid/smem rules of its header)."""

    def __init__(self, dev, defines=(), cfgs=FA_DEFAULT, lineinfo=False):
        self.dev, self.cfgs = dev, cfgs
        self.mod = dev.load("flash_attention.cu", defines, lineinfo)

    def _cfg(self, dp):
        return self.cfgs.get(dp, FA_DEFAULT[dp])

    def _f(self, kind, dp, causal):
        c = "_causal" if causal else ""
        name = {"fwd": f"flash_attention_fwd{c}_d{dp}", "dq": f"flash_attention_bwd_dq{c}_d{dp}",
                "dkdv": f"flash_attention_bwd_dkdv{c}_d{dp}", "lse": f"flash_attention_lse{c}_d{dp}"}[kind]
        fmt = {"fwd": "PPPPPiiif", "dq": "PPPPPPPiiif", "dkdv": "PPPPPPPPiiif", "lse": "PPPiiif"}[kind]
        smem = fa_smem(dp, self._cfg(dp))[kind]
        return self.dev.func(self.mod, name, fmt, smem), smem

    def fwd(self, q, k, v, o, lse, B, S, D, causal):
        dp = pick_dp(D)
        f, smem = self._f("fwd", dp, causal)
        grid = (math.ceil(S / BR) * B, 1, 1)
        f.prepared_async_call(grid, (NT, 1, 1), None, int(q), int(k), int(v), int(o),
                              int(lse) if lse is not None else 0, B, S, D,
                              np.float32(1 / math.sqrt(D)), shared_size=smem)

    def lse(self, q, k, lse, B, S, D, causal):
        dp = pick_dp(D)
        f, smem = self._f("lse", dp, causal)
        f.prepared_async_call((math.ceil(S / BR) * B, 1, 1), (NT, 1, 1), None, int(q), int(k), int(lse),
                              B, S, D, np.float32(1 / math.sqrt(D)), shared_size=smem)

    def preprocess(self, do, o, dd, B, S, D):
        f = self.dev.func(self.mod, "flash_attention_bwd_preprocess", "PPPqi", 0)
        rows = B * S
        f.prepared_async_call((math.ceil(rows / 8), 1, 1), (256, 1, 1), None, int(do), int(o), int(dd),
                              rows, D)

    def dkdv(self, q, k, v, do, lse, dd, dk, dv, B, S, D, causal):
        dp = pick_dp(D)
        f, smem = self._f("dkdv", dp, causal)
        grid = (math.ceil(S / self._cfg(dp)[2]) * B, 1, 1)
        f.prepared_async_call(grid, (NT, 1, 1), None, int(q), int(k), int(v), int(do), int(lse), int(dd),
                              int(dk), int(dv), B, S, D, np.float32(1 / math.sqrt(D)), shared_size=smem)

    def dq(self, q, k, v, do, lse, dd, dq, B, S, D, causal):
        dp = pick_dp(D)
        f, smem = self._f("dq", dp, causal)
        grid = (math.ceil(S / BR) * B, 1, 1)
        f.prepared_async_call(grid, (NT, 1, 1), None, int(q), int(k), int(v), int(do), int(lse), int(dd),
                              int(dq), B, S, D, np.float32(1 / math.sqrt(D)), shared_size=smem)

    def backward(self, q, k, v, o, do, lse, dd, dq, dk, dv, B, S, D, causal, recompute="stats"):
        """The autograd order of OPS.md: stats forward (recomputes L; o is rewritten with the
        same values, as the real backward would write a scratch), preprocess, dK/dV, dQ.
        recompute="lse": the L-only kernel instead of the stats forward."""
        if recompute == "stats":
            self.fwd(q, k, v, o, lse, B, S, D, causal)
        elif recompute == "lse":
            self.lse(q, k, lse, B, S, D, causal)
        self.preprocess(do, o, dd, B, S, D)
        self.dkdv(q, k, v, do, lse, dd, dk, dv, B, S, D, causal)
        self.dq(q, k, v, do, lse, dd, dq, B, S, D, causal)


class Flash3:
    """Launchers of flash_attention_tf32.cu (3xTF32; D <= 128; grid/smem rules of its header).
    nw: None = the host's rule (ops_attention._nw), or 4 / 8 forced where both exist."""

    def __init__(self, dev, nw=None, lineinfo=False):
        self.dev, self.nw = dev, nw
        self.sms = dev.dev.get_attribute(dev.drv.device_attribute.MULTIPROCESSOR_COUNT)
        self.mod = dev.load("flash_attention_tf32.cu", (), lineinfo)

    def pick_nw(self, dp, S, B, kind="fwd", causal=False):
        """ops_attention._nw: d128 8; d32/d64 4, but 8 for the causal dq/dkdv of large grids."""
        if dp == 128:
            return 8
        if self.nw in (4, 8):
            return self.nw
        big = math.ceil(S / 128) * B >= 2 * self.sms
        return 8 if kind in ("dq", "dkdv") and causal and big else 4

    def _launch(self, kind, S, B, D, causal, *ptrs):
        dp = pick_dp(D)
        nw = self.pick_nw(dp, S, B, kind, causal)
        c = "_causal" if causal else ""
        name = {"fwd": f"flash_tf32_fwd{c}", "dq": f"flash_tf32_bwd_dq{c}",
                "dkdv": f"flash_tf32_bwd_dkdv{c}", "lse": f"flash_tf32_lse{c}"}[kind] + f"_d{dp}_w{nw}"
        fmt = {"fwd": "PPPPPiiif", "dq": "PPPPPPPiiif", "dkdv": "PPPPPPPPiiif", "lse": "PPPiiif"}[kind]
        tiles = math.ceil(S / (16 * nw)) * B
        # the non-causal forward's and dQ pass's tail split (minigrad's host rule): none here
        split = {"fwd": [tiles, 1, 0, 0], "dq": [tiles, 1, 0]}.get(kind, []) if not causal else []
        smem = fa3_smem(dp, nw)[kind]
        f = self.dev.func(self.mod, name, fmt + "iiPP"[:len(split)], smem)
        f.prepared_async_call((tiles, 1, 1), (32 * nw, 1, 1), None,
                              *[int(x) if x is not None else 0 for x in ptrs],
                              B, S, D, np.float32(1 / math.sqrt(D)), *split, shared_size=smem)

    def fwd(self, q, k, v, o, lse, B, S, D, causal):
        self._launch("fwd", S, B, D, causal, q, k, v, o, lse)

    def lse(self, q, k, lse, B, S, D, causal):
        self._launch("lse", S, B, D, causal, q, k, lse)

    def preprocess(self, do, o, dd, B, S, D):
        f = self.dev.func(self.mod, "flash_tf32_bwd_preprocess", "PPPqi", 0)
        rows = B * S
        f.prepared_async_call((math.ceil(rows / 8), 1, 1), (256, 1, 1), None, int(do), int(o), int(dd),
                              rows, D)

    def dkdv(self, q, k, v, do, lse, dd, dk, dv, B, S, D, causal):
        self._launch("dkdv", S, B, D, causal, q, k, v, do, lse, dd, dk, dv)

    def dq(self, q, k, v, do, lse, dd, dq, B, S, D, causal):
        self._launch("dq", S, B, D, causal, q, k, v, do, lse, dd, dq)

    backward = Flash.backward


class Router:
    """What the minigrad host does: the tf32 kernels for D <= 128, the FFMA ones above."""

    def __init__(self, tf32, ffma):
        self.tf32, self.ffma = tf32, ffma

    def __getattr__(self, name):
        fn3, fn1 = getattr(self.tf32, name), getattr(self.ffma, name)

        def call(*args):
            D = args[-2] if name in ("fwd", "lse", "dkdv", "dq") else args[-1]
            return (fn3 if D <= 128 else fn1)(*args)
        return call

    def backward(self, *args, **kw):
        return (self.tf32 if args[12] <= 128 else self.ffma).backward(*args, **kw)


class TC:
    def __init__(self, dev, lineinfo=False):
        self.dev = dev
        self.mod = dev.load("attention_tc.cu", (), lineinfo)
        self.sms = dev.dev.get_attribute(dev.drv.device_attribute.MULTIPROCESSOR_COUNT)

    def use_split(self, B, Sq):
        """The header's rule: split when ceil(Sq/64)*B < 2 * SMs."""
        return math.ceil(Sq / BR) * B < 2 * self.sms

    def __call__(self, q, k, v, out, B, Sq, Sk, Dk, Dv, causal, split=None):
        if split is None:
            split = self.use_split(B, Sq)
        dp = pick_dp(max(Dk, Dv))
        smem = tc_smem(dp, split)
        name = f"attention_tc{'_causal' if causal else ''}{'_split' if split else ''}_d{dp}"
        f = self.dev.func(self.mod, name, "PPPPiiiiif", smem)
        rows = BR // 2 if split else BR
        f.prepared_async_call((math.ceil(Sq / rows) * B, 1, 1), (NT, 1, 1), None, int(q), int(k), int(v),
                              int(out), B, Sq, Sk, Dk, Dv, np.float32(1 / math.sqrt(Dk)), shared_size=smem)


# -------------------------------------------------------------------------- correctness --
def rel(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (nb if nb > 0 else 1.0))


def contract_ok(g, r, rtol=1e-2, atol=1e-3):
    """OPS.md's flash-backward rule, elementwise: rel < rtol or abs < atol; NaN fails."""
    g = g.astype(np.float64)
    r = r.astype(np.float64)
    err = np.abs(g - r)
    return bool(np.all(np.isfinite(g)) and np.all((err < atol) | (err < rtol * np.abs(r))))


def flash_inputs(seed, S, D, lead, hot):
    rng = np.random.default_rng(seed)
    shp = (*lead, S, D)
    q = (rng.standard_normal(shp) * hot).astype(np.float32)
    k, v, do = (rng.standard_normal(shp).astype(np.float32) for _ in range(3))
    return q, k, v, do


def flash_reference(job):
    """float64 oracle of one flash case (runs in a worker; regenerates the inputs)."""
    seed, S, D, causal, lead, hot = job
    q, k, v, do = (x.astype(np.float64) for x in flash_inputs(seed, S, D, lead, hot))
    o_ref, l_ref = ref.attention_flash_with_stats(q, k, v, causal)
    dq, dk, dv = ref.attention_flash_backward(q, k, v, o_ref.astype(np.float64), do,
                                              l_ref.astype(np.float64), causal)
    # float64 log-sum-exp of the masked scaled scores: sum_j exp(s_ij - L_i) = exp(lse_i - L_i)
    s64 = np.matmul(q, np.swapaxes(k, -1, -2)) * np.float64(np.float32(1 / math.sqrt(D)))
    if causal:
        s64 = np.where(np.arange(S)[None, :] > np.arange(S)[:, None], -np.inf, s64)
    m = s64.max(-1, keepdims=True)
    lse64 = (m + np.log(np.exp(s64 - m).sum(-1, keepdims=True)))[..., 0]
    dd = (do * o_ref.astype(np.float64)).sum(-1)
    return {"o": o_ref, "L": l_ref, "lse64": lse64, "dq": dq, "dk": dk, "dv": dv, "dd": dd}


def flash_gpu(dev, fl, job):
    seed, S, D, causal, lead, hot = job
    q, k, v, do = flash_inputs(seed, S, D, lead, hot)
    B = int(np.prod(lead))
    shp = (*lead, S, D)
    gq, gk, gv, gdo = (dev.to_dev(x) for x in (q, k, v, do))
    n = B * S * D * 4
    go, go2, glse, gdd = dev.empty(n), dev.empty(n), dev.empty(B * S * 4), dev.empty(B * S * 4)
    gdq, gdk, gdv, go3, glse3 = dev.empty(n), dev.empty(n), dev.empty(n), dev.empty(n), dev.empty(B * S * 4)
    glse4 = dev.empty(B * S * 4)
    fl.fwd(gq, gk, gv, go, glse, B, S, D, causal)          # _with_stats forward
    fl.fwd(gq, gk, gv, go2, None, B, S, D, causal)         # plain forward
    fl.lse(gq, gk, glse4, B, S, D, causal)                 # L-only kernel
    # backward as the autograd function runs it: stats forward again (into scratch), then
    # preprocess -> dK/dV -> dQ
    fl.backward(gq, gk, gv, go3, gdo, glse3, gdd, gdq, gdk, gdv, B, S, D, causal)
    dev.sync()
    out = {"o": dev.get(go, shp), "o2": dev.get(go2, shp), "L": dev.get(glse, (*lead, S)),
           "L3": dev.get(glse3, (*lead, S)), "L4": dev.get(glse4, (*lead, S)), "dd": dev.get(gdd, (*lead, S)),
           "dq": dev.get(gdq, shp), "dk": dev.get(gdk, shp), "dv": dev.get(gdv, shp)}
    if S == 1:
        out["do"], out["v"] = do, v
    for g in (gq, gk, gv, gdo, go, go2, glse, gdd, gdq, gdk, gdv, go3, glse3, glse4):
        g.free()
    return out


def flash_compare(job, g, r):
    seed, S, D, causal, lead, hot = job
    res = {
        "case": f"flash {list(lead) + [S, D]} {'causal' if causal else 'full'}{' hot' if hot != 1 else ''}",
        "o_rel": rel(g["o"], r["o"]), "o_plain_identical": bool(np.array_equal(g["o"], g["o2"])),
        "lse_kernel_identical": bool(np.array_equal(g["L"], g["L4"])),
        "L_maxabs": float(np.max(np.abs(g["L"].astype(np.float64) - r["lse64"]))),
        "rowsum_maxdev": float(np.max(np.abs(np.exp(r["lse64"] - g["L"].astype(np.float64)) - 1))),
        "D_rel": rel(g["dd"], r["dd"]),
        "dq_rel": rel(g["dq"], r["dq"]), "dk_rel": rel(g["dk"], r["dk"]), "dv_rel": rel(g["dv"], r["dv"]),
    }
    finite = all(np.all(np.isfinite(g[x])) for x in ("o", "o2", "L", "L3", "dd", "dq", "dk", "dv"))
    res["contract"] = bool(finite and res["o_plain_identical"] and np.array_equal(g["L"], g["L3"])
                           and res["lse_kernel_identical"]
                           and res["L_maxabs"] < 1e-5 and res["rowsum_maxdev"] < 1e-5
                           and contract_ok(g["o"], r["o"], 1e-4, 1e-5) and contract_ok(g["dq"], r["dq"])
                           and contract_ok(g["dk"], r["dk"]) and contract_ok(g["dv"], r["dv"]))
    res["tight"] = bool(res["contract"] and max(res["o_rel"], res["dq_rel"], res["dk_rel"], res["dv_rel"]) < 1e-5)
    if S == 1:   # closed form: P = 1, so dV = dO and dQ = dK = 0
        res["S1_dv_eq_do_maxabs"] = float(np.max(np.abs(g["dv"] - g["do"])))
        res["S1_dq_dk_maxabs"] = float(max(np.max(np.abs(g["dq"])), np.max(np.abs(g["dk"]))))
        res["contract"] &= res["S1_dv_eq_do_maxabs"] < 1e-5 and res["S1_dq_dk_maxabs"] < 1e-5
    return res


def tc_inputs(seed, Sq, Sk, Dk, Dv, lead):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((*lead, Sq, Dk)).astype(np.float16)
    k = rng.standard_normal((*lead, Sk, Dk)).astype(np.float16)
    v = rng.standard_normal((*lead, Sk, Dv)).astype(np.float16)
    return q, k, v


def tc_nocast(q, k, v, causal):
    s = np.matmul(q.astype(np.float32), np.swapaxes(k.astype(np.float32), -1, -2)) \
        * np.float32(1 / math.sqrt(q.shape[-1]))
    if causal:
        s = np.where(np.arange(s.shape[-1])[None, :] > np.arange(s.shape[-2])[:, None], -np.inf, s)
    e = np.exp(s - s.max(-1, keepdims=True))
    return np.matmul(e / e.sum(-1, keepdims=True), v.astype(np.float32))


def tc_reference(job):
    seed, Sq, Sk, Dk, Dv, causal, lead = job[:7]
    q, k, v = tc_inputs(seed, Sq, Sk, Dk, Dv, lead)
    return {"oracle": ref.attention_tc(q, k, v, causal), "nocast": tc_nocast(q, k, v, causal)}


def tc_gpu(dev, tc, job):
    """Runs the plain and the split kernel on the same inputs (both must match the oracle)."""
    seed, Sq, Sk, Dk, Dv, causal, lead = job[:7]
    q, k, v = tc_inputs(seed, Sq, Sk, Dk, Dv, lead)
    B = int(np.prod(lead))
    gq, gk, gv = dev.to_dev(q), dev.to_dev(k), dev.to_dev(v)
    go, go2 = dev.empty(B * Sq * Dv * 4), dev.empty(B * Sq * Dv * 4)
    tc(gq, gk, gv, go, B, Sq, Sk, Dk, Dv, causal, split=False)
    tc(gq, gk, gv, go2, B, Sq, Sk, Dk, Dv, causal, split=True)
    dev.sync()
    o, o2 = dev.get(go, (*lead, Sq, Dv)), dev.get(go2, (*lead, Sq, Dv))
    for x in (gq, gk, gv, go, go2):
        x.free()
    return o, o2


def tc_compare(job, outs, r):
    seed, Sq, Sk, Dk, Dv, causal, lead = job[:7]
    res = {"case": f"tc {list(lead)} Sq={Sq} Sk={Sk} Dk={Dk} Dv={Dv} {'causal' if causal else 'full'}"}
    ok = True
    for tag, o in zip(("", "split_"), outs):
        err = np.abs(o.astype(np.float64) - r["nocast"])
        res[tag + "rel_vs_oracle"] = rel(o, r["oracle"])
        res[tag + "maxabs_vs_oracle"] = float(np.max(np.abs(o - r["oracle"])))
        res[tag + "rel_vs_nocast"] = rel(o, r["nocast"])
        res[tag + "kaio_rule_ok"] = bool(np.all((err < 5e-3) | (err < 2e-2 * np.abs(r["nocast"]))))
        ok &= bool(np.all(np.isfinite(o)) and res[tag + "kaio_rule_ok"] and res[tag + "rel_vs_oracle"] < 2e-3)
    res["contract"] = ok
    return res


FLASH_CASES = (
    # every D at small S; the large S at the benchmark head dims and the extremes of D
    [(S, D) for S in (1, 2, 17, 64, 255) for D in (16, 32, 64, 100, 128, 256)]
    + [(1024, D) for D in (16, 64, 100, 128, 256)] + [(4097, 64), (4097, 128)]
)
TC_CASES = [  # (Sq, Sk, Dk, Dv)
    (1, 1, 16, 16), (2, 2, 32, 32), (17, 17, 64, 64), (64, 100, 64, 32), (100, 64, 40, 72),
    (31, 45, 33, 17), (255, 255, 128, 128), (128, 1024, 64, 64), (1024, 1024, 64, 64),
    (7, 4100, 100, 100), (300, 4096, 64, 64), (65, 4097, 128, 128), (130, 257, 256, 256),
    (4096, 4096, 64, 64), (50, 20, 8, 256),
]


class _Inline:
    """Stand-in for a process pool: computes at result() time (used under the sanitizer)."""

    class _F:
        def __init__(self, fn, arg):
            self.fn, self.arg = fn, arg

        def result(self):
            return self.fn(self.arg)

    def submit(self, fn, arg):
        return self._F(fn, arg)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def run_cases(dev, log, flash_jobs, tc_jobs, fl, tc, workers=None):
    """GPU runs in this process while the NumPy oracles run in a pool of fresh ('spawn')
    processes, which never touch CUDA; workers=0 computes them inline.  fl: one flash
    launcher, or a list of (tag, launcher, job filter) checked against the same references."""
    fls = fl if isinstance(fl, list) else [("", fl, lambda j: True)]
    import multiprocessing as mp
    if workers is None:
        workers = max(1, min(14, (os.cpu_count() or 2) - 1))
    results = []
    t0 = time.time()
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) if workers else _Inline()
    with pool as ex:
        # biggest first, so the pool finishes evenly
        fr = {j: ex.submit(flash_reference, j) for j in sorted(flash_jobs, key=lambda j: -j[1] ** 2 * j[2])}
        tr = {j: ex.submit(tc_reference, j) for j in sorted(tc_jobs, key=lambda j: -j[1] * j[2] * j[3])}
        fg = {(tag, j): flash_gpu(dev, f, j) for tag, f, keep in fls for j in flash_jobs if keep(j)}
        tg = {j: tc_gpu(dev, tc, j) for j in tc_jobs}
        log(f"# GPU runs done after {time.time() - t0:.1f} s; waiting for the references")
        for (tag, j), g in fg.items():
            r = flash_compare(j, g, fr[j].result())
            if tag:
                r["case"] += f" [{tag}]"
            log(json.dumps(r))
            results.append(r)
        for j in tc_jobs:
            r = tc_compare(j, tg[j], tr[j].result())
            log(json.dumps(r))
            results.append(r)
    log(f"# checks took {time.time() - t0:.1f} s")
    return results


def summarize(results, log):
    bad = [r["case"] for r in results if not r["contract"]]
    loose = [r["case"] for r in results if r["case"].startswith("flash") and not r.get("tight")
             and ", 1," not in r["case"]]   # S = 1: dQ = dK = 0 exactly, so rel is meaningless
    log(f"# CHECK SUMMARY: {len(results) - len(bad)}/{len(results)} pass the contract; "
        f"failures: {bad or 'none'}; flash cases above 1e-5 rel: {loose or 'none'}")
    worst = {}
    nz = [r for r in results if not (r["case"].startswith("flash") and ", 1," in r["case"])]
    for key in ("o_rel", "dq_rel", "dk_rel", "dv_rel", "D_rel", "L_maxabs", "rowsum_maxdev",
                "rel_vs_oracle", "maxabs_vs_oracle", "rel_vs_nocast", "split_rel_vs_oracle",
                "split_maxabs_vs_oracle", "S1_dv_eq_do_maxabs", "S1_dq_dk_maxabs"):
        vals = [r[key] for r in (results if key.startswith("S1") else nz) if key in r]
        worst[key] = max(vals) if vals else None
    log("# worst (flash rel excl. S=1, whose dQ = dK = 0): " + json.dumps(worst))
    return bad


def make_flash(dev, impl, lineinfo=False, nw=None):
    """The flash launcher checked/timed: "tf32" = the host's routing (tf32 file for D <= 128,
    FFMA file above; nw forces the tf32 block size), "ffma" = flash_attention.cu for every D."""
    ffma = Flash(dev, lineinfo=lineinfo)
    return ffma if impl == "ffma" else Router(Flash3(dev, nw, lineinfo=lineinfo), ffma)


def run_check(dev, log, impl="tf32", tc=True):
    base = int.from_bytes(os.urandom(4), "little")   # fresh inputs every run
    log(f"# input seed base {base}")
    seeds = iter(range(base, base + 10**6))
    flash_jobs = [(next(seeds), S, D, c, (2, 3), 1.0) for S, D in FLASH_CASES for c in (False, True)]
    flash_jobs += [(next(seeds), 255, 64, c, (2, 3), 3.0) for c in (False, True)]   # large logits
    flash_jobs += [(next(seeds), 70, 33, True, (2, 3), 1.0), (next(seeds), 33, 7, False, (2, 3), 1.0)]
    # 15 slices: the causal grids' groups of 8 slices (mg_block_tile), one full and one short
    flash_jobs += [(next(seeds), 1000, D, True, (3, 5), 1.0) for D in (32, 64, 128, 256)]
    tc_jobs = [(next(seeds), *c, causal, (2, 3)) for c in TC_CASES for causal in (False, True)] if tc else []
    tc_jobs += [(next(seeds), 1000, 1000, 64, 64, True, (3, 5))] if tc else []
    log(f"# flash impl: {impl}")
    fls = make_flash(dev, impl)
    if impl == "tf32":   # the shapes here give small grids (host rule: 4 warps); also force 8
        fls = [("", fls, lambda j: True), ("w8", make_flash(dev, impl, nw=8), lambda j: j[2] <= 64)]
    results = run_cases(dev, log, flash_jobs, tc_jobs, fls, TC(dev) if tc else None)
    return results, summarize(results, log)


def run_sanitize(dev, log, impl="tf32", tc=True):
    """Tiny shapes covering every padded head dim, both masks, partial tiles, the scalar
    (unaligned D) load path and cross-attention; meant to run under compute-sanitizer."""
    seeds = iter(range(1000, 2000))
    flash_jobs = [(next(seeds), S, D, c, (2,), 1.0) for S, D in ((17, 16), (70, 64), (70, 100), (33, 256), (40, 33),
                                                                  (130, 128), (150, 64))
                  for c in (False, True)]
    # 9 slices of >= 8 tiles: two causal groups (mg_block_tile), the second of one slice
    flash_jobs += [(next(seeds), S, D, True, (9,), 1.0) for S, D in ((520, 64), (900, 128), (520, 256))]
    tc_jobs = [(next(seeds), *x, c, (2,)) for x in ((17, 70, 40, 72), (70, 17, 64, 64), (33, 33, 256, 256),
                                                    (5, 9, 33, 17)) for c in (False, True)] if tc else []
    tc_jobs += [(next(seeds), 520, 520, 64, 64, True, (9,))] if tc else []
    fls = make_flash(dev, impl, lineinfo=True)
    if impl == "tf32":
        fls = [("", fls, lambda j: True), ("w8", make_flash(dev, impl, True, nw=8), lambda j: j[2] <= 64)]
    results = run_cases(dev, log, flash_jobs, tc_jobs, fls, TC(dev, lineinfo=True) if tc else None, workers=0)
    summarize(results, log)
    log("# sanitize run finished")


# ---------------------------------------------------------------------------- benchmark --
BENCH_SHAPES = [(1, 4096, 64), (128, 2048, 64), (64, 4096, 128), (384, 256, 64)]


def timeit(dev, fn, reps=20, warm=3):
    drv = dev.drv
    for _ in range(warm):
        fn()
    st, en = drv.Event(), drv.Event()
    ts = []
    for _ in range(reps):
        st.record()
        fn()
        en.record()
        en.synchronize()
        ts.append(st.time_till(en))
    return statistics.median(ts), min(ts), max(ts)


def run_bench(dev, log, variants=False, reps=20, with_tc=True):
    try:
        import torch
        import torch.nn.functional as F
        assert torch.cuda.is_available()
        torch.cuda.init()
        assert torch.cuda.current_stream().cuda_stream == 0   # same (legacy) stream as PyCUDA
    except Exception as e:   # noqa: BLE001
        log(f"# torch unavailable for the baseline: {e!r}")
        torch = None
    if torch is not None:   # ceilings on this card, and which kernels SDPA f32 runs
        for dt, name, tf32 in ((torch.float32, "f32 (no TF32) cuBLAS", False),
                               (torch.float32, "f32 with TF32 (1xTF32) cuBLAS", True),
                               (torch.float16, "f16 cuBLAS", False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(8192, 8192, device="cuda", dtype=dt)
            b = torch.randn(8192, 8192, device="cuda", dtype=dt)
            t = timeit(dev, lambda: torch.mm(a, b), 5, 2)
            log(f"# ceiling: {name} 8192^3 matmul {2 * 8192**3 / t[0] / 1e9:.1f} TFLOP/s ({t[0]:.2f} ms)")
            del a, b
        torch.backends.cuda.matmul.allow_tf32 = False
        x = torch.empty(2**30 // 4, device="cuda")
        y = torch.empty_like(x)
        t = timeit(dev, lambda: y.copy_(x), 10, 2)
        log(f"# ceiling: device copy {2 * 2**30 / t[0] / 1e6:.0f} GB/s (read + write)")
        del x, y
        try:
            from torch.profiler import profile, ProfilerActivity
            tq = torch.randn(1, 128, 2048, 64, device="cuda", requires_grad=True)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                F.scaled_dot_product_attention(tq, tq, tq).sum().backward()
                torch.cuda.synchronize()
            names = sorted({e.name for e in prof.events() if "fmha" in e.name or "attention" in e.name.lower()
                            or "flash" in e.name.lower()})
            log(f"# SDPA f32 kernels: {[n[:90] for n in names][:6]}")
            del tq
        except Exception as e:   # noqa: BLE001
            log(f"# SDPA kernel probe failed: {e!r}")
        torch.cuda.empty_cache()
    ffma = Flash(dev)
    impls = [("tf32", Router(Flash3(dev), ffma)), ("ffma", ffma)]
    alt = {nw: Flash3(dev, nw) for nw in (4, 8)} if variants else None
    tc = TC(dev) if with_tc else None
    rng = np.random.default_rng(7)
    rows = []

    def row(name, shape, ours, ref_name, ref_t, extra=None):
        r = {"name": name, "shape": shape, "ours_ms": ours[0], "ours_min": ours[1], "ours_max": ours[2],
             "ref": ref_name, "ref_ms": ref_t[0] if ref_t else None,
             "speedup": (ref_t[0] / ours[0]) if ref_t else None}
        if extra:
            r.update(extra)
        rows.append(r)
        log(json.dumps(r))

    for BH, S, D in BENCH_SHAPES:
        n = BH * S * D
        host = [rng.standard_normal(n, dtype=np.float32) for _ in range(4)]
        gq, gk, gv, gdo = (dev.to_dev(x) for x in host)
        go, glse, gdd, gdq, gdk, gdv = (dev.empty(n * 4), dev.empty(BH * S * 4), dev.empty(BH * S * 4),
                                        dev.empty(n * 4), dev.empty(n * 4), dev.empty(n * 4))
        for causal in (False, True):
            shape = f"bh={BH} s={S} d={D}{' causal' if causal else ''}"
            rf = rfb = None
            if torch is not None:
                tq, tk, tv, tdo = (torch.from_numpy(x.reshape(1, BH, S, D)).cuda() for x in host)
                rf = timeit(dev, lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal), reps)
                tq.requires_grad_(True)
                tk.requires_grad_(True)
                tv.requires_grad_(True)

                def sdpa_fb():
                    out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
                    torch.autograd.grad(out, (tq, tk, tv), tdo)
                rfb = timeit(dev, sdpa_fb, reps)
                del tq, tk, tv, tdo
                torch.cuda.empty_cache()
            for tag, fl in impls:
                t_fwd = timeit(dev, lambda: fl.fwd(gq, gk, gv, go, None, BH, S, D, causal), reps)
                t_fb = timeit(dev, lambda: (fl.fwd(gq, gk, gv, go, None, BH, S, D, causal),
                                            fl.backward(gq, gk, gv, go, gdo, glse, gdd, gdq, gdk, gdv,
                                                        BH, S, D, causal)), reps)
                t_fb_lse = timeit(dev, lambda: (fl.fwd(gq, gk, gv, go, None, BH, S, D, causal),
                                                fl.backward(gq, gk, gv, go, gdo, glse, gdd, gdq, gdk, gdv,
                                                            BH, S, D, causal, recompute="lse")), reps)
                parts = {
                    "stats_fwd_ms": timeit(dev, lambda: fl.fwd(gq, gk, gv, go, glse, BH, S, D, causal), reps)[0],
                    "lse_only_ms": timeit(dev, lambda: fl.lse(gq, gk, glse, BH, S, D, causal), reps)[0],
                    "preprocess_ms": timeit(dev, lambda: fl.preprocess(gdo, go, gdd, BH, S, D), reps)[0],
                    "dkdv_ms": timeit(dev, lambda: fl.dkdv(gq, gk, gv, gdo, glse, gdd, gdk, gdv, BH, S, D,
                                                           causal), reps)[0],
                    "dq_ms": timeit(dev, lambda: fl.dq(gq, gk, gv, gdo, glse, gdd, gdq, BH, S, D, causal),
                                    reps)[0],
                }
                flops = 4 * BH * S * S * D * (0.5 if causal else 1.0)
                parts["fwd_tflops"] = flops / t_fwd[0] / 1e9
                parts["dkdv_tflops"] = 2 * flops / parts["dkdv_ms"] / 1e9
                parts["dq_tflops"] = 1.5 * flops / parts["dq_ms"] / 1e9
                parts["bwd_over_fwd"] = (t_fb[0] - t_fwd[0]) / t_fwd[0]
                if tag == "tf32" and alt is not None and D <= 64:   # the other block size (of dq/dkdv)
                    other = alt[4 if fl.tf32.pick_nw(pick_dp(D), S, BH, "dq", causal) == 8 else 8]
                    parts["alt_nw"] = other.nw
                    parts["alt_fwd_ms"] = timeit(dev, lambda: other.fwd(gq, gk, gv, go, None, BH, S, D, causal),
                                                 reps)[0]
                    parts["alt_dkdv_ms"] = timeit(dev, lambda: other.dkdv(gq, gk, gv, gdo, glse, gdd, gdk, gdv,
                                                                          BH, S, D, causal), reps)[0]
                    parts["alt_dq_ms"] = timeit(dev, lambda: other.dq(gq, gk, gv, gdo, glse, gdd, gdq, BH, S, D,
                                                                      causal), reps)[0]
                row(f"flash fwd f32 [{tag}]", shape, t_fwd, "torch SDPA f32 fwd", rf, parts)
                row(f"flash fwd+bwd f32 [{tag}]", shape, t_fb, "torch SDPA f32 fwd+bwd", rfb)
                row(f"flash fwd+bwd f32 [{tag}] (L-only recompute)", shape, t_fb_lse, "torch SDPA f32 fwd+bwd",
                    rfb)
        for g in (gq, gk, gv, gdo, go, glse, gdd, gdq, gdk, gdv):
            g.free()
        if tc is None:
            continue
        # attention_tc at the same shapes (f16 in, f32 out)
        h16 = [rng.standard_normal(n, dtype=np.float32).astype(np.float16) for _ in range(3)]
        gq, gk, gv = (dev.to_dev(x) for x in h16)
        go = dev.empty(n * 4)
        for causal in (False, True):
            shape = f"bh={BH} s={S} d={D}{' causal' if causal else ''}"
            t = timeit(dev, lambda: tc(gq, gk, gv, go, BH, S, S, D, D, causal), reps)
            split = tc.use_split(BH, S)
            t_other = timeit(dev, lambda: tc(gq, gk, gv, go, BH, S, S, D, D, causal, split=not split), reps)
            rt = None
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(x.reshape(BH, S, D)).cuda() for x in h16)
                scale = 1 / math.sqrt(D)
                if causal:
                    bias = torch.full((S, S), float("-inf"), device="cuda", dtype=torch.float16).triu_(1)[None]
                else:
                    bias = torch.empty((1, 1, 1), device="cuda", dtype=torch.float16)
                beta = 1.0 if causal else 0.0

                def three_ops():
                    s = torch.baddbmm(bias, tq, tk.transpose(1, 2), beta=beta, alpha=scale)
                    return torch.bmm(torch.softmax(s, dim=-1), tv)
                rt = timeit(dev, three_ops, reps)
                del tq, tk, tv, bias
                torch.cuda.empty_cache()
            flops = 6 * BH * S * S * D * (0.5 if causal else 1.0)   # 3 products (2 passes)
            row("attention_tc f16" + (" (split)" if split else ""), shape, t, "torch f16 baddbmm+softmax+bmm", rt,
                {"tc_tflops_3products": flops / t[0] / 1e9, "other_variant_ms": t_other[0],
                 "other_variant": "plain" if split else "split"})
        for g in (gq, gk, gv, go):
            g.free()
    # table
    log("\n| op | shape | ours ms | ref | ref ms | speedup |")
    log("|---|---|---:|---|---:|---:|")
    for r in rows:
        rm = f"{r['ref_ms']:.3f}" if r["ref_ms"] else "-"
        sp = f"{r['speedup']:.2f}" if r["speedup"] else "-"
        log(f"| {r['name']} | {r['shape']} | {r['ours_ms']:.3f} | {r['ref']} | {rm} | {sp} |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--variants", action="store_true", help="also time the FA_ALT tile variant")
    ap.add_argument("--sanitize", action="store_true")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--prebuild", default=None, metavar="DIR",
                    help="build every module with the local nvcc into DIR (no GPU needed); a run with "
                         "MG_ATT_PREBUILT=DIR loads those cubins instead of compiling")
    ap.add_argument("--arch", default=None, help="with --compile-only: sm number, e.g. 90")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--impl", default="tf32", choices=("tf32", "ffma"))
    ap.add_argument("--no-tc", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    outdir = Path(a.out) if a.out else None
    if outdir:
        outdir.mkdir(parents=True, exist_ok=True)
    logf = open(outdir / ("sanitize.log" if a.sanitize else "run.log"), "a") if outdir else None

    def log(s):
        print(s, flush=True)
        if logf:
            logf.write(s + "\n")
            logf.flush()

    if a.prebuild:
        arch = a.arch or "90"
        jobs = [(a.prebuild, arch, "flash_attention.cu", (), False), (a.prebuild, arch, "attention_tc.cu", (), False),
                (a.prebuild, arch, "flash_attention.cu", ALT_DEFINES, False),
                (a.prebuild, arch, "flash_attention.cu", (), True), (a.prebuild, arch, "attention_tc.cu", (), True),
                (a.prebuild, arch, "flash_attention_tf32.cu", (), False),
                (a.prebuild, arch, "flash_attention_tf32.cu", (), True)]
        with ProcessPoolExecutor(len(jobs)) as ex:
            list(ex.map(_prebuild_job, [(j[0], j[1], j[2], j[3], j[4]) for j in jobs]))
        return 0
    if a.compile_only:
        arch = a.arch
        if arch is None:
            import pycuda.driver as drv
            drv.init()
            arch = "%d%d" % drv.Device(0).compute_capability()
        t0 = time.time()
        build_all(arch, variants=a.variants, lineinfo=False)
        build_all(arch, variants=False, lineinfo=True)
        log(f"# compiled in {time.time() - t0:.1f} s")
        return 0
    dev = Dev()
    import datetime
    log(f"# device: {dev.name} sm_{dev.arch}; date {datetime.datetime.now().isoformat(timespec='seconds')}")
    rc = 0
    try:
        if a.sanitize:
            run_sanitize(dev, log, a.impl, not a.no_tc)
        if a.check:
            _, bad = run_check(dev, log, a.impl, not a.no_tc)
            rc |= bool(bad)
        if a.bench:
            rows = run_bench(dev, log, a.variants, a.reps, not a.no_tc)
            if outdir:
                (outdir / "bench.json").write_text(json.dumps({
                    "card": dev.name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "rows": rows}, indent=1))
    finally:
        dev.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
