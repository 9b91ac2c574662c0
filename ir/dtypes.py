"""Element types: short names used in the IR text form, and their sizes.

The names are nasc's own (``f32``, ``i64``, ...); frontends map their formats'
enums onto them. ``numpy_dtype`` is the numpy type a constant of that element
type is held in (sub-byte and float8 types are held by ``ml_dtypes`` arrays when
that package is present, else as raw unsigned bytes).
"""

from __future__ import annotations

import numpy as np

# name -> (bits, numpy dtype name or None when numpy has none)
_DTYPES: dict[str, tuple[int, str | None]] = {
    "f32": (32, "float32"),
    "f16": (16, "float16"),
    "bf16": (16, "bfloat16"),
    "f64": (64, "float64"),
    "i8": (8, "int8"),
    "i16": (16, "int16"),
    "i32": (32, "int32"),
    "i64": (64, "int64"),
    "u8": (8, "uint8"),
    "u16": (16, "uint16"),
    "u32": (32, "uint32"),
    "u64": (64, "uint64"),
    "bool": (8, "bool"),
    "str": (0, "object"),
    "c64": (64, "complex64"),
    "c128": (128, "complex128"),
    "i4": (4, "int4"),
    "u4": (4, "uint4"),
    "i2": (2, "int2"),
    "u2": (2, "uint2"),
    "f4e2m1": (4, "float4_e2m1fn"),
    "f8e4m3fn": (8, "float8_e4m3fn"),
    "f8e4m3fnuz": (8, "float8_e4m3fnuz"),
    "f8e5m2": (8, "float8_e5m2"),
    "f8e5m2fnuz": (8, "float8_e5m2fnuz"),
    "f8e8m0": (8, "float8_e8m0fnu"),
}

FLOAT_DTYPES = frozenset({"f32", "f16", "bf16", "f64", "f8e4m3fn", "f8e4m3fnuz", "f8e5m2", "f8e5m2fnuz", "f4e2m1", "f8e8m0"})
INT_DTYPES = frozenset({"i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "i4", "u4", "i2", "u2"})


def is_dtype(name: str) -> bool:
    return name in _DTYPES


def all_dtypes() -> list[str]:
    return list(_DTYPES)


def bits(dtype: str) -> int:
    """Storage bits of one element (0 for strings, whose size varies)."""
    return _DTYPES[dtype][0]


def nbytes(dtype: str, numel: int) -> int:
    """Bytes to store ``numel`` packed elements of ``dtype``."""
    return (bits(dtype) * numel + 7) // 8


def from_numpy(dt: np.dtype) -> str:
    """The IR element type of a numpy dtype (``ml_dtypes`` types included)."""
    name = np.dtype(dt).name
    if name.startswith("str") or name == "object" or name.startswith("bytes"):
        return "str"
    for short, (_, npname) in _DTYPES.items():
        if npname == name:
            return short
    raise ValueError(f"numpy dtype {name!r} has no nasc element type")


def to_numpy(dtype: str) -> np.dtype:
    """The numpy dtype that holds ``dtype`` values."""
    npname = _DTYPES[dtype][1]
    assert npname is not None
    try:
        return np.dtype(npname)
    except TypeError:
        import ml_dtypes  # sub-byte and float8 types live there

        return np.dtype(getattr(ml_dtypes, npname))
