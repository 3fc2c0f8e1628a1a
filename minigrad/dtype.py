"""dtypes: eight named objects, their NumPy twins and the promotion rule."""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True, eq=False)   # singletons: compared by identity (fast)
class DType:
    name: str
    itemsize: int
    kind: str          # "f" float, "i" signed int, "u" unsigned int, "b" bool
    rank: int          # position in the promotion order
    np: type           # the NumPy scalar type that stores it

    def __post_init__(self):
        # a plain attribute, not a property: it is read several times per op
        object.__setattr__(self, "is_float", self.kind == "f")

    def __repr__(self) -> str:
        return f"minigrad.{self.name}"


bool_ = DType("bool", 1, "b", 0, np.bool_)
int8 = DType("int8", 1, "i", 1, np.int8)
uint32 = DType("uint32", 4, "u", 2, np.uint32)
int32 = DType("int32", 4, "i", 3, np.int32)
int64 = DType("int64", 8, "i", 4, np.int64)
float16 = DType("float16", 2, "f", 5, np.float16)
bfloat16 = DType("bfloat16", 2, "f", 5, ml_dtypes.bfloat16)
float32 = DType("float32", 4, "f", 6, np.float32)
float64 = DType("float64", 8, "f", 7, np.float64)   # CPU only: gradcheck and references

ALL = (bool_, int8, uint32, int32, int64, float16, bfloat16, float32, float64)
_BY_NP = {np.dtype(d.np): d for d in ALL}
_BY_NAME = {d.name: d for d in ALL}
_NP_FALLBACK = {np.dtype(np.int16): int32,
                np.dtype(np.uint8): int32, np.dtype(np.uint16): int32,
                np.dtype(np.uint64): int64}


def to_dtype(x) -> DType:
    """Accept a DType, a name ("float16"), or a NumPy dtype/type; return the DType."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str) and x in _BY_NAME:
        return _BY_NAME[x]
    try:
        npd = np.dtype(x)
    except TypeError:
        raise TypeError(f"dtype: {x!r} is not a dtype; use one of "
                        f"{', '.join(d.name for d in ALL)}") from None
    if npd in _BY_NP:
        return _BY_NP[npd]
    if npd in _NP_FALLBACK:
        return _NP_FALLBACK[npd]
    raise TypeError(f"dtype: NumPy dtype {npd} has no minigrad equivalent; use one of "
                    f"{', '.join(d.name for d in ALL)}")


def promote(a: DType, b: DType) -> DType:
    """Result dtype of a binary op: the higher of the two; f16 with bf16 gives f32."""
    if a == b:
        return a
    if {a, b} == {float16, bfloat16}:
        return float32
    return a if a.rank > b.rank else b
