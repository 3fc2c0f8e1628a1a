"""CUDA C source -> cubin, with a disk cache. Needs no GPU.

    compile_to_cubin(source, arch="sm_90", options=(), name="kernel.cu") -> bytes
    kparam_offsets(cubin, kernel_name) -> {ordinal: (offset, size)} of its parameters

The compiler is NVRTC from cuda-python (`cuda.bindings.nvrtc`); where that is
missing, nvcc through PyCUDA (`pycuda.compiler.compile`). The output is always a
cubin for one exact architecture ("sm_80", "sm_90", "sm_90a"), never PTX: a newer
NVRTC writes PTX that an older driver rejects, while a cubin of the same major
CUDA version loads.

Cache: one file per compile in `cache_dir()` (env MINIGRAD_CACHE_DIR, else
~/.cache/minigrad/kernels), named by a SHA-256 of everything that decides the
output: source, in-memory headers, defines, options, arch, include dirs, the
compiler and its version. A file is MAGIC + sha256(cubin) + cubin, written to a
temporary name and renamed into place (atomic). A file that fails the check
(truncated, overwritten) is compiled again and replaced. `stats` counts
compiles and hits, so tests can see that a second start compiles nothing.

Env: MINIGRAD_COMPILER=nvrtc|nvcc forces a compiler; MINIGRAD_CUDA_INCLUDE adds
an include dir in front of the ones found.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

MAGIC = b"MGCUBIN1"
CACHE_FORMAT = 1
DEFAULT_OPTIONS = ("-std=c++17",)
stats = {"compiled": 0, "disk_hits": 0, "corrupt": 0}


class CompileError(RuntimeError):
    """A kernel failed to compile; carries the name, options and compiler log."""

    def __init__(self, name, arch, options, log, compiler="NVRTC"):
        self.name, self.arch, self.options, self.log = name, arch, list(options), log
        super().__init__(f"{compiler} failed to compile {name} for {arch}\n"
                         f"options: {' '.join(self.options)}\n--- compiler log ---\n"
                         f"{log.strip()}")


# -- which compiler ----------------------------------------------------------
@functools.lru_cache(None)
def _nvrtc():
    """The cuda-python NVRTC module, or None if it (or libnvrtc) is missing."""
    for mod in ("cuda.bindings.nvrtc", "cuda.nvrtc"):
        try:
            if importlib.util.find_spec(mod.rsplit(".", 1)[0]) is None:
                continue
            m = importlib.import_module(mod)
            err, _, _ = m.nvrtcVersion()   # loads libnvrtc: fails here if absent
            if int(err) == 0:
                return m
        except Exception:
            continue
    return None


def nvrtc_version():
    """(major, minor) of the NVRTC in use, or None."""
    m = _nvrtc()
    if m is None:
        return None
    _, major, minor = m.nvrtcVersion()
    return (major, minor)


@functools.lru_cache(None)
def nvcc_version():
    """nvcc's version line, or None when nvcc is not on PATH (or CUDA_HOME/bin)."""
    nvcc = _nvcc_path()
    if nvcc is None:
        return None
    import subprocess
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except Exception:
        return None
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return lines[-1] if lines else None


def _nvcc_path():
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def compiler_name() -> str:
    """'nvrtc' or 'nvcc' (what compile_to_cubin will use), or 'none'."""
    forced = os.environ.get("MINIGRAD_COMPILER", "").lower()
    if forced in ("nvrtc", "nvcc"):
        return forced
    if _nvrtc() is not None:
        return "nvrtc"
    return "nvcc" if _nvcc_path() else "none"


def describe_compiler() -> str:
    c = compiler_name()
    if c == "nvrtc":
        v = nvrtc_version()
        return f"NVRTC {v[0]}.{v[1]} (cuda-python)" if v else "NVRTC (forced) not loadable"
    if c == "nvcc":
        return f"nvcc via PyCUDA ({nvcc_version() or 'nvcc not found'})"
    return "none"


# -- include dirs ------------------------------------------------------------
def _has_headers(d) -> bool:
    return bool(d) and os.path.isfile(os.path.join(d, "cuda_fp16.h"))


@functools.lru_cache(None)
def include_dir():
    """The CUDA include dir (holding cuda_fp16.h, cuda_bf16.h) passed with -I, or None.

    Only one: mixing two toolkits' headers breaks builds.

    Order: MINIGRAD_CUDA_INCLUDE; CUDA_HOME / CUDA_PATH; the folder beside the
    libnvrtc in use (so headers match the compiler); /usr/local/cuda/include; the
    nvidia-cuda-runtime wheel's include folder (found by cuda.pathfinder).
    """
    cands = [os.environ.get("MINIGRAD_CUDA_INCLUDE")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            cands.append(os.path.join(os.environ[var], "include"))
    pf = None
    try:
        import cuda.pathfinder as pf
    except Exception:
        pass
    if pf is not None and compiler_name() == "nvrtc":
        try:   # the include folder beside libnvrtc (wheel: nvidia/cu13/{lib,include})
            lib = pf.load_nvidia_dynamic_lib("nvrtc").abs_path
            if lib:
                cands.append(os.path.join(os.path.dirname(os.path.dirname(lib)), "include"))
        except Exception:
            pass
    cands.append("/usr/local/cuda/include")
    if pf is not None:
        try:
            cands.append(pf.find_nvidia_header_directory("cudart"))
        except Exception:
            pass
    for d in cands:
        if _has_headers(d):
            return os.path.realpath(d)
    return None


# -- cache -------------------------------------------------------------------
def cache_dir() -> Path:
    d = os.environ.get("MINIGRAD_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "minigrad", "kernels")
    return Path(d)


def _cache_read(path: Path):
    try:
        data = path.read_bytes()
    except OSError:
        return None
    body = data[len(MAGIC) + 32:]
    if data[:len(MAGIC)] != MAGIC or hashlib.sha256(body).digest() != data[len(MAGIC):len(MAGIC) + 32] \
            or not body:
        stats["corrupt"] += 1
        return None
    return body


def _cache_write(path: Path, cubin: bytes):
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + hashlib.sha256(cubin).digest() + cubin)
        os.replace(tmp, path)
    except OSError:   # a read-only cache is no reason to fail
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def _key(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()


# -- compile -----------------------------------------------------------------
_ARCH = re.compile(r"^sm_(\d+)([a-z]?)$")


def compile_to_cubin(source: str, arch: str = "sm_90", options=(), name: str = "kernel.cu",
                     headers: dict | None = None, defines: dict | None = None,
                     cache: bool = True) -> bytes:
    """Compile CUDA C to a cubin for `arch` ("sm_80", "sm_90", "sm_90a", ...).

    `headers` maps include names to source text (`#include "common.cuh"`);
    `defines` become -D options. Raises CompileError with the log on failure.
    """
    if not _ARCH.match(arch):
        raise ValueError(f"arch must look like 'sm_90' or 'sm_90a', got {arch!r}")
    headers = dict(sorted((headers or {}).items()))
    opts = list(DEFAULT_OPTIONS) + [f"-D{k}={v}" for k, v in sorted((defines or {}).items())] \
        + list(options)
    comp = compiler_name()
    if comp == "none":
        raise RuntimeError("no CUDA compiler: install cuda-python and nvidia-cuda-nvrtc "
                           "(pip install 'minigrad[cuda]'), or put nvcc on PATH")
    version = nvrtc_version() if comp == "nvrtc" else nvcc_version()
    key = _key(CACHE_FORMAT, comp, version, arch, opts, include_dir(), source, headers)
    path = cache_dir() / f"{key}.cubin"
    if cache:
        hit = _memory.get(key) or _cache_read(path)
        if hit is not None:
            if key not in _memory:
                stats["disk_hits"] += 1
            _memory[key] = hit
            return hit
    inc = [f"-I{include_dir()}"] if include_dir() else []
    cubin = (_nvrtc_compile if comp == "nvrtc" else _nvcc_compile)(
        source, arch, opts + inc, name, headers)
    stats["compiled"] += 1
    if cache:
        _memory[key] = cubin
        _cache_write(path, cubin)
    return cubin


_memory: dict = {}


def _nvrtc_compile(source, arch, opts, name, headers) -> bytes:
    nvrtc = _nvrtc()
    if nvrtc is None:
        raise RuntimeError("MINIGRAD_COMPILER=nvrtc but cuda-python's NVRTC is not loadable")

    def check(res, what):
        err = res[0] if isinstance(res, tuple) else res
        if int(err) != 0:
            raise RuntimeError(f"NVRTC {what} failed: {err}")
        return res[1] if isinstance(res, tuple) and len(res) > 1 else None

    all_opts = [f"--gpu-architecture={arch}"] + opts
    prog = check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), len(headers),
                                          [h.encode() for h in headers.values()],
                                          [k.encode() for k in headers]), "create")
    try:
        enc = [o.encode() for o in all_opts]
        res = nvrtc.nvrtcCompileProgram(prog, len(enc), enc)
        n = check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = bytearray(n)   # never b" " * n: for n == 1 that is a shared interned object
        check(nvrtc.nvrtcGetProgramLog(prog, log), "log")
        log = log.rstrip(b"\0 ").decode(errors="replace")
        if int(res[0]) != 0:
            raise CompileError(name, arch, all_opts, log)
        n = check(nvrtc.nvrtcGetCUBINSize(prog), "cubin size")
        if not n:
            raise CompileError(name, arch, all_opts, log + "\n(no cubin: is arch an sm_XY?)")
        cubin = bytearray(n)
        check(nvrtc.nvrtcGetCUBIN(prog, cubin), "get cubin")
        return bytes(cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _nvcc_compile(source, arch, opts, name, headers) -> bytes:
    """nvcc through PyCUDA (needs the CUDA driver, as importing pycuda does)."""
    from pycuda.compiler import compile as pycuda_compile
    from pycuda.driver import CompileError as PyCompileError
    m = _ARCH.match(arch)
    with tempfile.TemporaryDirectory() as tmp:
        for hname, text in headers.items():
            Path(tmp, hname).write_text(text)
        try:
            return pycuda_compile(source, nvcc=_nvcc_path() or "nvcc", options=opts,
                                  no_extern_c=True, arch=f"compute_{m[1]}{m[2]}", code=arch,
                                  cache_dir=False, include_dirs=[tmp])
        except PyCompileError as e:
            log = e.stderr or str(e)
            log = log.decode(errors="replace") if isinstance(log, bytes) else log
            raise CompileError(name, arch, opts, log, compiler="nvcc") from None


# -- kernel files (top-level kernels/, or the package minigrad.kernels) -------
def kernels_dir() -> Path:
    """Where the .cu files live (minigrad.kernelfiles decides: wheel or checkout)."""
    try:
        from ...kernelfiles import kernel_dir
        return kernel_dir()
    except (ImportError, FileNotFoundError):
        return Path(__file__).resolve().parents[3] / "kernels"


def kernel_headers(directory: Path | None = None) -> dict:
    """All .cuh files of the kernels folder, by name (passed as in-memory headers)."""
    d = directory or kernels_dir()
    return {p.name: p.read_text() for p in sorted(d.glob("*.cuh"))}


_ARCH_LINE = re.compile(r"//\s*minigrad-arch:\s*([\w, ]+)")


def kernel_file_archs(text: str):
    """The archs a kernel file declares in its first 30 lines, e.g.
    `// minigrad-arch: sm_90a`, or None when it builds for any sm_80+."""
    for line in text.splitlines()[:30]:
        m = _ARCH_LINE.search(line)
        if m:
            return [a.strip() for a in m[1].split(",") if a.strip()]
    return None


def arch_for_file(text: str, device_arch: str) -> str:
    """The arch to build a kernel file with on a device of `device_arch` ("sm_90"):
    the device's own, or its 'a' variant when the file asks for that (wgmma)."""
    want = kernel_file_archs(text)
    if not want:
        return device_arch
    for a in want:
        if a.rstrip("a") == device_arch.rstrip("a"):
            return a
    raise RuntimeError(f"this kernel needs {', '.join(want)}; the device is {device_arch}")


def compile_file(path, arch: str, defines: dict | None = None, options=()) -> bytes:
    """Compile one kernels/*.cu file (with its folder's .cuh headers) to a cubin."""
    path = Path(path)
    text = path.read_text()
    return compile_to_cubin(text, arch=arch, options=options, name=path.name,
                            headers=kernel_headers(path.parent), defines=defines)


def kparam_offsets(cubin, kname):
    """{ordinal: (offset, size)} of kernel `kname`'s parameters, read from the cubin's
    .nv.info.<kname> section (EIATTR_KPARAM_INFO records); None if not found. The TMA
    matmul kernels need it: their 64-byte-aligned __grid_constant__ tensor maps do not
    start at parameter offset 0, and PyCUDA packs the parameter buffer from byte 0, so
    the launcher pads it (ops_matmul.tma_pad)."""
    import struct
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        return None
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)

    def sh(i):
        name, _, _, _, off, size = struct.unpack_from("<IIQQQQ", cubin, shoff + i * shentsize)
        return name, off, size
    stroff = sh(shstrndx)[1]
    want = (".nv.info." + kname).encode()
    for i in range(shnum):
        name, off, size = sh(i)
        if cubin[stroff + name:cubin.index(b"\0", stroff + name)] != want:
            continue
        out, q = {}, off
        while q + 4 <= off + size:
            fmt, attr = cubin[q], cubin[q + 1]
            if fmt == 0x04:                     # EIFMT_SVAL: u16 size, then the payload
                n, = struct.unpack_from("<H", cubin, q + 2)
                if attr == 0x17 and n >= 12:    # EIATTR_KPARAM_INFO
                    _, ordinal, offset, info = struct.unpack_from("<IHHI", cubin, q + 4)
                    out[ordinal] = (offset, (info >> 18) & 0x3FFF)
                q += 4 + n
            else:                               # EIFMT_NVAL / BVAL / HVAL: 4 bytes
                q += 4
        return out
    return None
