"""Value types: tensors with (normally static) shapes, and opaque non-tensor types.

Shapes are static after import: every dim is an ``int``. A dim may be a ``str``
only where the size depends on data (the output of ``NonZero``, say); a shape of
``None`` means even the rank is unknown. Both occur only around ops nasc carries
opaquely, and backends refuse them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nasc.ir import dtypes

Dim = int | str
Shape = tuple[Dim, ...]

UNKNOWN = "?"  # a dim whose size depends on data


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of a tensor: real = scale * (q - zero_point).

    ``axis`` is None for per-tensor parameters, else the channel axis that
    ``scale`` and ``zero_point`` run along.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape (and quantization, once quantized)."""

    dtype: str
    shape: Shape | None
    quant: QuantParams | None = None

    def __post_init__(self) -> None:
        if not dtypes.is_dtype(self.dtype):
            raise ValueError(f"unknown element type {self.dtype!r}")
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(self.shape))
            # a negative size is never a shape (frontends read "-1" dims as unknown: UNKNOWN)
            if any(isinstance(d, int) and d < 0 for d in self.shape):
                raise ValueError(f"negative dim in shape {list(self.shape)}")

    @property
    def rank(self) -> int:
        if self.shape is None:
            raise ValueError("rank of a tensor whose rank is unknown")
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def static_shape(self) -> tuple[int, ...]:
        """The shape as ints; raises ValueError when any dim is unknown."""
        if not self.is_static:
            raise ValueError(f"shape {self.shape_str()} is not static")
        return self.shape  # type: ignore[return-value]

    @property
    def numel(self) -> int:
        return math.prod(self.static_shape)

    @property
    def nbytes(self) -> int:
        return dtypes.nbytes(self.dtype, self.numel)

    def with_shape(self, shape: Shape | None) -> TensorType:
        return TensorType(self.dtype, shape, self.quant)

    def shape_str(self) -> str:
        if self.shape is None:
            return "[*]"
        return "[" + ",".join(str(d) if isinstance(d, int) else ("?" if d == UNKNOWN else f"?{d}") for d in self.shape) + "]"

    def __str__(self) -> str:
        text = f"{self.dtype}{self.shape_str()}"
        if self.quant is not None:
            q = self.quant
            axis = "" if q.axis is None else f",axis={q.axis}"
            text += f"q(scale={list(q.scale)},zp={list(q.zero_point)}{axis})"
        return text


@dataclass(frozen=True)
class OpaqueType:
    """A non-tensor type (sequence, map, optional, ...) carried through unchanged.

    ``desc`` is a readable summary; ``payload`` is the frontend's own serialized
    form of the type, used to write it back out.
    """

    desc: str
    payload: bytes = b""

    def __str__(self) -> str:
        return f"opaque<{self.desc}:{self.payload.hex()}>"


Type = TensorType | OpaqueType
