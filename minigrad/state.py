"""Checkpoints: `save(state_dict, path)` / `load(path)` in the safetensors format.

The format (https://github.com/huggingface/safetensors) is short enough to write
here, with no extra dependency and no pickle, so loading a file never runs code:

    8 bytes      N, the header length, unsigned little-endian
    N bytes      a JSON object, UTF-8, padded with spaces:
                   {"__metadata__": {str: str},                        (optional)
                    "<name>": {"dtype": "F32", "shape": [2, 3],
                               "data_offsets": [begin, end]}, ...}
    the rest     the tensors' raw little-endian bytes; offsets are relative to
                 the start of this region, which they cover without gap or overlap.

Every minigrad dtype round-trips bit for bit (NaN payloads, -0.0, bf16 included).
NumPy arrays of the other safetensors dtypes (F64, U8, I16, U16, U64) are saved as
they are; `load` gives F64 as minigrad.float64 (a CPU-only dtype) and widens the
integers to the dtype `minigrad.dtype.to_dtype` names (U8/I16/U16 -> int32,
U64 -> int64), refusing values that do not fit.

Writes are atomic: the file is written to a temporary file in the same folder,
flushed to disk and renamed over `path`; a save that fails leaves the old file
as it was and no temporary file behind.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Mapping

import ml_dtypes
import numpy as np

# safetensors dtype name <-> NumPy dtype (stored little-endian)
_NP_BY_ST = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16), "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32), "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64), "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32), "F64": np.dtype(np.float64),
}
_ST_BY_NP = {v: k for k, v in _NP_BY_ST.items()}
_MAX_HEADER = 100_000_000      # the limit the reference implementation enforces
_METADATA = "__metadata__"


# -- public API: Tensors ------------------------------------------------------------

def save(state_dict, path, metadata=None) -> None:
    """Write a {name: Tensor or NumPy array} mapping to `path` (safetensors, atomic).

    `metadata` is an optional {str: str} dict stored in the header
    (read it back with `load_metadata`)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"save: state_dict must be a dict of name -> Tensor, "
                        f"got {type(state_dict).__name__}")
    _write_arrays({k: _to_numpy(k, v) for k, v in state_dict.items()}, path, metadata)


def load(path, device=None) -> dict:
    """Read a safetensors file into a {name: Tensor} dict on `device` (default device if None).

    A corrupt, truncated or non-safetensors file raises ValueError naming the file."""
    from .dtype import to_dtype
    from .tensor import Tensor
    out = {}
    for k, arr in _read_arrays(path).items():
        dt = to_dtype(arr.dtype)
        if np.dtype(dt.np) != arr.dtype:      # U8, I16, U16, U64: widen, exactly
            info = np.iinfo(dt.np)
            if arr.size and not (info.min <= int(arr.min()) and int(arr.max()) <= info.max):
                raise ValueError(f"{os.fspath(path)}: tensor {k!r} of dtype {arr.dtype} "
                                 f"has values that do not fit minigrad.{dt.name}")
            arr = arr.astype(dt.np)
        out[k] = Tensor(arr, dtype=dt, device=device)
    return out


def load_metadata(path) -> dict:
    """The {str: str} metadata stored in a safetensors file ({} if none)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        meta, _ = _read_header(f, size, os.fspath(path))
    return meta


def _to_numpy(key, v) -> np.ndarray:
    if not isinstance(key, str):
        raise TypeError(f"save: key {key!r} is a {type(key).__name__}; keys must be str")
    if isinstance(v, (np.ndarray, np.generic)):
        return np.asarray(v)
    from .tensor import Tensor     # imported here: state.py stays free of import cycles
    if isinstance(v, Tensor):
        arr = np.asarray(v.numpy())
        want = np.dtype(v.dtype.np)
        # bf16 comes back from .numpy() as float32 when ml_dtypes is missing; the
        # values are exact bf16 numbers, so casting back loses nothing.
        return arr if arr.dtype == want else arr.astype(want)
    raise TypeError(f"save: value for key {key!r} is a {type(v).__name__}, "
                    f"not a Tensor or NumPy array")


# -- the format: NumPy arrays <-> file ---------------------------------------------

def _write_arrays(arrays: dict, path, metadata=None) -> None:
    """Write {str: np.ndarray} to `path` atomically in the safetensors format."""
    path = os.fspath(path)
    header: dict = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("save: metadata must be a dict of str -> str")
        header[_METADATA] = dict(metadata)

    prepared = []
    for key, arr in arrays.items():
        if not isinstance(key, str):
            raise TypeError(f"save: key {key!r} is a {type(key).__name__}; keys must be str")
        if key == _METADATA:
            raise ValueError(f"save: {_METADATA!r} is reserved and cannot name a tensor")
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"save: value for key {key!r} is a {type(arr).__name__}, "
                            f"not a NumPy array")
        native = arr.dtype.newbyteorder("=")
        if native not in _ST_BY_NP:
            raise TypeError(f"save: value for key {key!r} has dtype {arr.dtype}, which "
                            f"safetensors cannot store; use one of "
                            f"{', '.join(str(d) for d in _ST_BY_NP)}")
        little = native.newbyteorder("<")
        arr = np.asarray(arr, dtype=little, order="C")  # copies only if needed; keeps 0-d
        prepared.append((key, _ST_BY_NP[native], arr))

    # Lay the data out by decreasing item size (then insertion order) so that every
    # tensor starts at an offset aligned to its item size; the header keeps the
    # caller's order.
    offsets, pos = {}, 0
    for key, _, arr in sorted(prepared, key=lambda p: -p[2].itemsize):
        offsets[key] = (pos, pos + arr.nbytes)
        pos += arr.nbytes
    for key, st, arr in prepared:
        header[key] = {"dtype": st, "shape": list(arr.shape),
                       "data_offsets": list(offsets[key])}
    hbytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hbytes = hbytes.ljust(len(hbytes) + -len(hbytes) % 8)   # pad with spaces: the data
    # region starts 8-byte aligned. (ljust, not `b" " * k`: C code that writes into
    # the interpreter's cached one-byte b" " object would corrupt every file.)

    chunks = [len(hbytes).to_bytes(8, "little"), hbytes]
    chunks += [_bytes_view(arr) for _, _, arr in
               sorted(prepared, key=lambda p: offsets[p[0]][0])]
    _atomic_write(path, chunks)


def _bytes_view(arr: np.ndarray):
    """A flat uint8 view of a C-contiguous array, without copying."""
    return memoryview(arr.reshape(-1).view(np.uint8))


def _atomic_write(path: str, chunks) -> None:
    # a symlink's target is replaced (the link stays a link), and an existing file keeps
    # its permission bits: saving changes the contents, nothing else
    path = os.path.realpath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"save: {path} is a directory; give a file name")
    mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else None
    folder, name = os.path.split(path)
    while True:      # O_EXCL: never reuse a name; 0o666 lets the umask decide the mode
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (POSIX); best effort elsewhere."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_arrays(path) -> dict:
    """Read a safetensors file into {str: np.ndarray} (writable, native byte order)."""
    name = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        _, entries = _read_header(f, size, name)
        start = f.tell()
        out = {}
        for key, (np_dtype, shape, begin, end) in entries.items():
            try:
                arr = np.empty(shape, dtype=np_dtype.newbyteorder("<"))
            except (ValueError, OverflowError, MemoryError) as e:
                _bad(name, f"tensor {key!r}: cannot make an array of shape {list(shape)} ({e})")
            if end > begin:
                f.seek(start + begin)
                got = f.readinto(_bytes_view(arr))
                if got != end - begin:
                    _bad(name, f"tensor {key!r}: expected {end - begin} bytes, read {got}")
            if sys.byteorder == "big":
                arr = arr.astype(np_dtype)
            out[key] = arr
    return out


def _bad(name: str, problem: str):
    raise ValueError(f"{name}: not a valid safetensors file: {problem}")


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _read_header(f, size: int, name: str):
    """Parse and check the header; returns (metadata, {key: (dtype, shape, begin, end)})
    and leaves `f` at the start of the data region."""
    if size < 8:
        _bad(name, f"the file is {size} bytes, too short for the 8-byte header length")
    n = int.from_bytes(f.read(8), "little")
    if n > _MAX_HEADER:
        _bad(name, f"header length {n} is larger than the {_MAX_HEADER}-byte limit")
    if 8 + n > size:
        _bad(name, f"header length {n} runs past the end of the file "
                   f"({size} bytes; truncated?)")
    raw = f.read(n)
    try:
        text = raw.decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        _bad(name, f"the header is not valid UTF-8 JSON ({e})")
    if not isinstance(header, dict):
        _bad(name, f"the header is a JSON {type(header).__name__}, not an object")

    metadata = header.pop(_METADATA, {})
    if not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values()):
        _bad(name, f"{_METADATA!r} must be an object of string values")

    data_len = size - 8 - n
    entries = {}
    for key, info in header.items():
        where = f"tensor {key!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            _bad(name, f"{where}: expected an object with exactly 'dtype', 'shape' and "
                       f"'data_offsets', got {info!r}"[:300])
        st, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(st, str) or st not in _NP_BY_ST:
            _bad(name, f"{where}: unknown dtype {st!r}; this reader knows "
                       f"{', '.join(_NP_BY_ST)}")
        if not isinstance(shape, list) or not all(
                type(d) is int and d >= 0 for d in shape):
            _bad(name, f"{where}: shape {shape!r} is not a list of non-negative ints")
        if not (isinstance(offs, list) and len(offs) == 2
                and all(type(o) is int for o in offs)):
            _bad(name, f"{where}: data_offsets {offs!r} is not a pair of ints")
        begin, end = offs
        if not 0 <= begin <= end <= data_len:
            _bad(name, f"{where}: data_offsets [{begin}, {end}] are outside the "
                       f"{data_len}-byte data region (truncated?)")
        np_dtype = _NP_BY_ST[st]
        want = int(np.prod(shape, dtype=object)) * np_dtype.itemsize
        if end - begin != want:
            _bad(name, f"{where}: shape {shape} of {st} needs {want} bytes but "
                       f"data_offsets [{begin}, {end}] hold {end - begin}")
        entries[key] = (np_dtype, tuple(shape), begin, end)

    # The tensors must tile the data region exactly: no holes, no overlaps.
    pos = 0
    for key, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a gap at byte {pos}"
            _bad(name, f"tensor {key!r} starts at byte {begin} and {what}")
        pos = end
    if pos != data_len:
        _bad(name, f"the tensors cover {pos} bytes but the data region is {data_len} bytes")
    return metadata, entries
