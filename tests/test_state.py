"""Checkpoints (minigrad.state): safetensors format, exact round trips, atomic writes,
clear errors on bad files, interop with the reference `safetensors` library."""
import json
import os
import pickle
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigrad import state

# minigrad dtype name -> (NumPy dtype, safetensors name)
DTYPES = {
    "bool": (np.dtype(np.bool_), "BOOL"),
    "int8": (np.dtype(np.int8), "I8"),
    "uint32": (np.dtype(np.uint32), "U32"),
    "int32": (np.dtype(np.int32), "I32"),
    "int64": (np.dtype(np.int64), "I64"),
    "float16": (np.dtype(np.float16), "F16"),
    "bfloat16": (np.dtype(ml_dtypes.bfloat16), "BF16"),
    "float32": (np.dtype(np.float32), "F32"),
}
SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (2, 3, 5), (4, 1, 3, 2)]
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def random_array(dtype, shape, rng):
    """Random values over the whole bit range: for floats that includes NaNs with
    payloads, infinities, subnormals and -0.0; specials are planted when there is room."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if dtype == np.bool_:
        return np.asarray(rng.integers(0, 2, size=shape).astype(np.bool_))
    bits = rng.integers(0, 2 ** (8 * dtype.itemsize), size=n, dtype=_UINT[dtype.itemsize])
    flat = bits.view(dtype)
    if dtype.kind == "f" or dtype == ml_dtypes.bfloat16:
        specials = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0], np.float32)
        k = min(n, len(specials))
        flat[:k] = specials[:k].astype(dtype)
    return flat.reshape(shape)


def assert_same_bits(a, b):
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def header_of(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8:8 + n]), raw[8 + n:]


def raw(path, content: bytes):
    path.write_bytes(content)
    return path


def write_raw(path, header, data=b"", pad=True):
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        h = h.ljust(len(h) + -len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


# -- round trips: NumPy layer -------------------------------------------------------

@pytest.mark.parametrize("name", DTYPES)
def test_numpy_round_trip_every_dtype_bit_exact(tmp_path, name):
    rng = np.random.default_rng(0)
    np_dtype, st_name = DTYPES[name]
    arrays = {f"t{i}": random_array(np_dtype, s, rng) for i, s in enumerate(SHAPES)}
    path = tmp_path / "a.safetensors"
    state._write_arrays(arrays, path)
    back = state._read_arrays(path)
    assert list(back) == list(arrays)
    for k in arrays:
        assert_same_bits(back[k], arrays[k])
        assert back[k].flags.writeable and back[k].flags.c_contiguous
    _, header, _ = header_of(path)
    assert {v["dtype"] for v in header.values()} == {st_name}


def test_numpy_round_trip_mixed_dtypes_layout(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for i, (name, (np_dtype, _)) in enumerate(DTYPES.items()):
        arrays[f"{name}.a"] = random_array(np_dtype, (3, 5), rng)
        arrays[f"{name}.s"] = random_array(np_dtype, (), rng)
        arrays[f"{name}.e"] = random_array(np_dtype, (0, 4), rng)
    path = tmp_path / "mixed.safetensors"
    state._write_arrays(arrays, path)
    n, header, data = header_of(path)
    assert n % 8 == 0                       # data region 8-byte aligned
    assert list(header) == list(arrays)     # header keeps the caller's order
    for k, info in header.items():
        b, e = info["data_offsets"]
        assert b % arrays[k].itemsize == 0  # each tensor aligned to its item size
        assert e - b == arrays[k].nbytes
    assert max(v["data_offsets"][1] for v in header.values()) == len(data)
    back = state._read_arrays(path)
    for k in arrays:
        assert_same_bits(back[k], arrays[k])


def test_non_contiguous_and_big_endian_inputs(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4, 6)).astype(np.float32)
    arrays = {"t": base.T, "step": base[:, ::2], "be": base.astype(">f4"),
              "be_i": np.arange(5, dtype=">i8")}
    path = tmp_path / "x.safetensors"
    state._write_arrays(arrays, path)
    back = state._read_arrays(path)
    np.testing.assert_array_equal(back["t"], base.T)
    np.testing.assert_array_equal(back["step"], base[:, ::2])
    assert back["be"].dtype == np.float32 and back["be"].dtype.isnative
    np.testing.assert_array_equal(back["be"], base)
    np.testing.assert_array_equal(back["be_i"], np.arange(5))


def test_metadata_round_trip_and_empty_file(tmp_path):
    path = tmp_path / "m.safetensors"
    state._write_arrays({}, path, metadata={"step": "100", "note": "héllo"})
    assert state._read_arrays(path) == {}
    assert state.load_metadata(path) == {"step": "100", "note": "héllo"}
    state._write_arrays({"x": np.zeros(2, np.float32)}, path)
    assert state.load_metadata(path) == {}


# -- round trips: Tensor layer ------------------------------------------------------

@pytest.mark.parametrize("name", DTYPES)
def test_tensor_round_trip_every_dtype_bit_exact(tmp_path, name):
    import minigrad as mg
    rng = np.random.default_rng(3)
    np_dtype, _ = DTYPES[name]
    dtype = getattr(mg, name)
    sd = {f"t{i}": mg.Tensor(random_array(np_dtype, s, rng), dtype=dtype, device="cpu")
          for i, s in enumerate(SHAPES)}
    path = tmp_path / "t.safetensors"
    mg.save(sd, path)
    back = mg.load(path, device="cpu")
    assert list(back) == list(sd)
    for k, t in sd.items():
        assert isinstance(back[k], mg.Tensor)
        assert back[k].dtype == dtype and back[k].shape == t.shape
        assert back[k].device == "cpu" and not back[k].requires_grad
        assert_same_bits(back[k].numpy(), t.numpy())


def test_tensor_save_accepts_lazy_results_params_and_numpy(tmp_path):
    import minigrad as mg
    w = mg.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    lazy = (w * 2 + 1).sum(axis=0)          # not realized yet
    sd = {"w": w, "lazy": lazy, "np": np.array([1, 2], np.int64), "scalar": np.float32(1.5)}
    path = tmp_path / "t.safetensors"
    mg.save(sd, str(path), metadata={"format": "pt"})
    back = mg.load(str(path))
    np.testing.assert_array_equal(back["w"].numpy(), w.numpy())
    np.testing.assert_array_equal(back["lazy"].numpy(), [8.0, 12.0, 16.0])
    assert back["np"].dtype == mg.int64 and back["np"].tolist() == [1, 2]
    assert back["scalar"].shape == () and back["scalar"].item() == 1.5
    assert state.load_metadata(path) == {"format": "pt"}


def test_load_widens_foreign_integer_dtypes(tmp_path):
    import minigrad as mg
    path = tmp_path / "u.safetensors"
    state._write_arrays({"u8": np.array([0, 255], np.uint8),
                         "i16": np.array([-300, 7], np.int16)}, path)
    back = mg.load(path, device="cpu")
    assert back["u8"].dtype == mg.int32 and back["u8"].tolist() == [0, 255]
    assert back["i16"].dtype == mg.int32 and back["i16"].tolist() == [-300, 7]
    x = np.array([0.1, -np.inf, 2.0 ** -1074])
    state._write_arrays({"f64": x}, path)
    f64 = mg.load(path, device="cpu")["f64"]
    assert f64.dtype == mg.float64
    assert_same_bits(f64.numpy(), x)
    state._write_arrays({"u64": np.array([2 ** 64 - 1], np.uint64)}, path)
    with pytest.raises(ValueError, match="u64.*do not fit"):
        mg.load(path, device="cpu")


# -- bad values: TypeError naming the key, nothing written ---------------------------

@pytest.mark.parametrize("value", [[1.0, 2.0], 3.0, "w", None,
                                   np.array([1 + 2j]), np.array(["a"], dtype=object)])
def test_save_rejects_non_tensor_value(tmp_path, value):
    import minigrad as mg
    path = tmp_path / "ckpt.safetensors"
    state._write_arrays({"old": np.ones(3, np.float32)}, path)
    before = path.read_bytes()
    sd = {"good": mg.Tensor([1.0, 2.0]), "layer.bad": value}
    with pytest.raises(TypeError, match="layer.bad"):
        mg.save(sd, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]


def test_save_rejects_bad_keys_and_metadata(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="keys must be str"):
        state.save({1: np.zeros(1)}, path)
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        state.save([np.zeros(1)], path)
    with pytest.raises(TypeError, match="metadata"):
        state.save({"a": np.zeros(1)}, path, metadata={"step": 1})
    with pytest.raises(ValueError, match="reserved"):
        state.save({"__metadata__": np.zeros(1)}, path)
    assert os.listdir(tmp_path) == []


# -- atomic writes ---------------------------------------------------------------

class _FailingFile:
    """Wraps a file object; the write after `ok_writes` writes half its bytes, then fails."""

    def __init__(self, f, ok_writes, exc):
        self._f, self._left, self._exc = f, ok_writes, exc

    def write(self, b):
        if self._left == 0:
            self._f.write(bytes(memoryview(b)[: len(memoryview(b)) // 2]))
            self._f.flush()
            raise self._exc
        self._left -= 1
        return self._f.write(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return self._f.__exit__(*a)


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_keeps_old_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "ckpt.safetensors"
    rng = np.random.default_rng(4)
    state._write_arrays({"w": random_array(np.float32, (64, 64), rng)}, path)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(state.os, "fdopen",
                        lambda fd, *a, **k: _FailingFile(real_fdopen(fd, *a, **k), 2, exc))
    new = {"w": random_array(np.float32, (64, 64), rng), "b": np.ones(64, np.float32)}
    with pytest.raises(type(exc)):
        state._write_arrays(new, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]   # no temp file left
    state._write_arrays(new, path)                         # and a later save works
    assert_same_bits(state._read_arrays(path)["w"], new["w"])


def test_failed_fsync_keeps_old_file_and_new_file_not_created(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    state._write_arrays({"w": np.arange(4, dtype=np.int32)}, path)
    before = path.read_bytes()

    def boom(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(state.os, "fsync", boom)
    with pytest.raises(OSError):
        state._write_arrays({"w": np.arange(8, dtype=np.int32)}, path)
    with pytest.raises(OSError):
        state._write_arrays({"w": np.arange(8, dtype=np.int32)}, tmp_path / "new.safetensors")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]


def test_save_replaces_and_respects_umask(tmp_path):
    path = tmp_path / "c.safetensors"
    old = os.umask(0o022)
    try:
        state._write_arrays({"a": np.zeros(3, np.float16)}, path)
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
    state._write_arrays({"b": np.ones(2, np.int8)}, path)
    assert list(state._read_arrays(path)) == ["b"]
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_save_through_a_symlink_keeps_the_link_and_the_mode(tmp_path):
    target = tmp_path / "real.safetensors"
    state._write_arrays({"a": np.zeros(3, np.float32)}, target)
    os.chmod(target, 0o600)
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    state._write_arrays({"b": np.ones(2, np.int8)}, link)          # through the link
    assert link.is_symlink() and list(state._read_arrays(target)) == ["b"]
    assert (target.stat().st_mode & 0o777) == 0o600                # the file's own mode kept
    assert sorted(os.listdir(tmp_path)) == ["link.safetensors", "real.safetensors"]
    with pytest.raises(IsADirectoryError, match="is a directory; give a file name"):
        state._write_arrays({"a": np.zeros(1, np.float32)}, tmp_path)


# -- bad files: ValueError naming the file and the problem, nothing executed ---------------

def _valid(tmp_path):
    path = tmp_path / "ok.safetensors"
    state._write_arrays({"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                         "b": np.arange(3, dtype=np.int64)}, path)
    return path


def _corrupt_cases(tmp_path):
    ok = _valid(tmp_path).read_bytes()
    n = struct.unpack("<Q", ok[:8])[0]
    hdr = lambda **t: {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, **t}  # noqa: E731
    p = lambda name: tmp_path / name  # noqa: E731
    yield "empty", raw(p("empty.st"), b""), "too short"
    yield "short", raw(p("short.st"), b"\x05\x00\x00"), "too short"
    yield "truncated header", raw(p("trunc_hdr.st"), ok[: 8 + n // 2]), "past the end"
    yield "truncated data", raw(p("trunc_data.st"), ok[:-5]), "truncated"
    yield "huge header length", raw(p("huge.st"), struct.pack("<Q", 2 ** 62) + b"{}"), "limit"
    yield "not json", write_raw(p("nj.st"), b"{not json at all"), "not valid UTF-8 JSON"
    yield "not utf8", write_raw(p("nu.st"), b'{"\xff\xfe": 1}'), "not valid UTF-8 JSON"
    yield "json list", write_raw(p("jl.st"), [1, 2]), "not an object"
    yield "duplicate key", write_raw(
        p("dup.st"), b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                     b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8), "duplicate"
    yield "unknown dtype", write_raw(
        p("ud.st"), {"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), \
        "unknown dtype 'C64'"
    yield "bad shape", write_raw(
        p("bs.st"), {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), \
        "shape"
    yield "bad offsets", write_raw(
        p("bo.st"), {"a": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}}, b"\0" * 4), \
        "data_offsets"
    yield "missing field", write_raw(
        p("mf.st"), {"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "exactly"
    yield "offsets out of range", write_raw(p("oor.st"), hdr(), b"\0" * 4), "outside"
    yield "size mismatch", write_raw(
        p("sm.st"), {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), \
        "needs 12 bytes"
    yield "gap", write_raw(
        p("gap.st"), {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "gap"
    yield "overlap", write_raw(
        p("ov.st"), hdr(b={"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}), b"\0" * 8), \
        "overlaps"
    yield "trailing bytes", write_raw(p("tb.st"), hdr(), b"\0" * 12), "cover 8 bytes"
    yield "bad metadata", write_raw(
        p("bm.st"), {"__metadata__": {"step": 3}}, b""), "__metadata__"
    yield "deep json", write_raw(p("deep.st"), b"[" * 100000 + b"]" * 100000), "JSON"


@pytest.fixture
def corrupt_files(tmp_path):
    return list(_corrupt_cases(tmp_path))


def test_corrupt_files_raise_clear_value_error(corrupt_files):
    assert len(corrupt_files) >= 20
    for what, path, needle in corrupt_files:
        with pytest.raises(ValueError) as e:
            state._read_arrays(path)
        msg = str(e.value)
        assert str(path) in msg, (what, msg)
        assert needle in msg, (what, msg)
        assert "not a valid safetensors file" in msg, (what, msg)


def test_tensor_load_of_truncated_file(tmp_path):
    import minigrad as mg
    path = _valid(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"ok\.safetensors.*truncated"):
        mg.load(path)
    with pytest.raises(ValueError, match="too short"):
        state.load_metadata(raw(tmp_path / "e", b""))


class _Evil:
    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickle_file_is_rejected_without_running_it(tmp_path):
    import minigrad as mg
    evil = _Evil()
    evil.target = str(tmp_path / "pwned")
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"w": evil}))
    with pytest.raises(ValueError, match="model.pt"):
        mg.load(path)
    assert not (tmp_path / "pwned").exists()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_load_or_raise_value_error(tmp_path, data):
    """Flip, cut or extend a valid file anywhere: loading returns arrays or raises
    ValueError, never another exception."""
    ok = _valid(tmp_path).read_bytes()
    buf = bytearray(ok)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "extend"]))
        if op == "flip" and buf:
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del buf[data.draw(st.integers(0, len(buf))):]
        else:
            buf += data.draw(st.binary(max_size=16))
    path = tmp_path / "fuzz.st"
    path.write_bytes(bytes(buf))
    try:
        out = state._read_arrays(path)
    except ValueError as e:
        assert "fuzz.st" in str(e)
    else:
        assert all(isinstance(v, np.ndarray) for v in out.values())


# -- interop with the reference implementation ---------------------------------------

def _lib_supports_bf16():
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    return "BF16" in getattr(safetensors_numpy, "_TYPES", {}) or _roundtrips_bf16(safetensors_numpy)


def _roundtrips_bf16(sn):
    """safetensors >= 0.6 reads and writes BF16 through ml_dtypes in load_file/save_file."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        try:
            f = os.path.join(d, "bf16.safetensors")
            sn.save_file({"x": np.ones(2, ml_dtypes.bfloat16)}, f)
            return sn.load_file(f)["x"].dtype == ml_dtypes.bfloat16
        except Exception:
            return False


def _interop_arrays(rng):
    dts = [d for name, (d, _) in DTYPES.items() if name != "bfloat16" or _lib_supports_bf16()]
    dts += [np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.float64)]
    out = {}
    for d in dts:
        out[f"{d.name}.m"] = random_array(d, (3, 4), rng) if d.kind != "f" \
            else rng.standard_normal((3, 4)).astype(d)
        out[f"{d.name}.s"] = random_array(d, (), rng) if d.kind != "f" else np.array(-0.0, d)
        out[f"{d.name}.e"] = np.zeros((0, 2), d)
    return out


def test_files_we_write_load_in_safetensors(tmp_path):
    sn = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open
    arrays = _interop_arrays(np.random.default_rng(5))
    path = tmp_path / "ours.safetensors"
    state._write_arrays(arrays, path, metadata={"who": "minigrad"})
    theirs = sn.load_file(str(path))
    assert set(theirs) == set(arrays)
    for k in arrays:
        assert_same_bits(np.asarray(theirs[k]), arrays[k])
    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"who": "minigrad"}


def test_files_safetensors_writes_load_in_minigrad(tmp_path):
    sn = pytest.importorskip("safetensors.numpy")
    arrays = _interop_arrays(np.random.default_rng(6))
    path = tmp_path / "theirs.safetensors"
    sn.save_file(arrays, str(path), metadata={"format": "np", "step": "7"})
    ours = state._read_arrays(path)
    assert set(ours) == set(arrays)
    for k in arrays:
        assert_same_bits(ours[k], arrays[k])
    assert state.load_metadata(path) == {"format": "np", "step": "7"}


def test_bf16_bytes_are_the_standard_encoding(tmp_path):
    """BF16 is the top half of the float32 bits, as PyTorch and safetensors store it."""
    x = np.array([1.0, -2.5, np.inf, 3.140625], np.float32)
    path = tmp_path / "bf.safetensors"
    state._write_arrays({"x": x.astype(ml_dtypes.bfloat16)}, path)
    _, header, data = header_of(path)
    assert header["x"]["dtype"] == "BF16"
    assert data == (x.view(np.uint32) >> 16).astype("<u2").tobytes()
