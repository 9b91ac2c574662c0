"""Shape queries and generators, index ops and reductions (ONNX opset 21 semantics): Shape, Size,
ConstantOfShape, Range, EyeLike, Trilu, CumSum, TopK, ArgMax/ArgMin, OneHot, NonZero and Reduce*.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from nasc.ir import dtypes
from nasc.ir.core import Node
from nasc.ir.ops.registry import (
    AxisGroup,
    Cost,
    InferenceError,
    OpDef,
    const_ints,
    const_value,
    io_bytes,
    norm_axis,
    numel,
    register,
    shape_of,
    ttype,
)
from nasc.ir.ops.tensor import arg, len_1d, norm_axes, pairs
from nasc.ir.types import UNKNOWN, Dim, TensorType, Type

# ---- shape queries and generators -------------------------------------------------------


def _shape_range(node: Node, rank: int) -> tuple[int, int]:
    start, end = int(node.attr("start", 0)), int(node.attr("end", rank))
    start, end = start + rank if start < 0 else start, end + rank if end < 0 else end
    return min(max(start, 0), rank), min(max(end, 0), rank)


@register
class Shape(OpDef):
    name = "Shape"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        shape = ttype(node, 0).shape
        if shape is None:
            return [TensorType("i64", (UNKNOWN,))]
        s, e = _shape_range(node, len(shape))
        return [TensorType("i64", (max(0, e - s),))]

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        shape = ttype(node, 0).shape
        if shape is None:
            return None
        s, e = _shape_range(node, len(shape))
        dims = shape[s:e]
        if not all(isinstance(d, int) for d in dims):
            return None
        return [np.array(dims, dtype=np.int64).reshape(len(dims))]


@register
class Size(OpDef):
    name = "Size"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        return [TensorType("i64", ())]

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        t = ttype(node, 0)
        return [np.array(t.numel, dtype=np.int64)] if t.is_static else None


def _shape_operand(node: Node, i: int) -> tuple[Dim, ...] | None:
    """The shape a 1-D shape operand holds: its contents, or UNKNOWN dims when only its length is known."""
    dims = const_ints(node, i)
    if dims is not None:
        if any(d < 0 for d in dims):
            raise InferenceError(f"{node.describe()}: negative dim in shape {dims}")
        return tuple(dims)
    n = len_1d(node, i)
    return None if n is None else (UNKNOWN,) * n


@register
class ConstantOfShape(OpDef):
    name = "ConstantOfShape"
    foldable = True

    def _value(self, node: Node) -> np.ndarray:
        v = node.attr("value")
        if v is None:
            return np.zeros((1,), np.float32)
        v = np.asarray(v)
        if v.size != 1:
            raise InferenceError(f"{node.describe()}: value must hold one element, got shape {list(v.shape)}")
        return v

    def infer(self, node: Node) -> list[Type]:
        return [TensorType(dtypes.from_numpy(self._value(node).dtype), _shape_operand(node, 0))]

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        if args[0] is None:
            return None
        v = self._value(node)
        return [np.full(tuple(int(d) for d in args[0].reshape(-1)), v.reshape(()), dtype=v.dtype)]


@register
class Range(OpDef):
    name = "Range"
    foldable = True

    def _count(self, node: Node, start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> int:
        s, lim, d = (np.asarray(a).reshape(()).item() for a in (start, limit, delta))
        if d == 0:
            raise InferenceError(f"{node.describe()}: delta is 0")
        if isinstance(s, int) and isinstance(lim, int) and isinstance(d, int):
            return max(0, -(-(lim - s) // d))
        return max(0, int(np.ceil((lim - s) / d)))

    def infer(self, node: Node) -> list[Type]:
        dt = ttype(node, 0).dtype
        vals = [const_value(node, i) for i in range(3)]
        if any(v is None for v in vals):
            return [TensorType(dt, (UNKNOWN,))]
        return [TensorType(dt, (self._count(node, *vals),))]  # type: ignore[arg-type]

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        if any(a is None for a in args[:3]):
            return None
        start, limit, delta = args[0], args[1], args[2]
        n = self._count(node, start, limit, delta)  # type: ignore[arg-type]
        s, d = np.asarray(start).reshape(()), np.asarray(delta).reshape(())
        # accumulate start + delta + delta ... in the element type, as ONNX Runtime does
        steps = np.full(n, d, dtype=s.dtype)
        if n:
            steps[0] = s
        return [np.add.accumulate(steps, dtype=s.dtype)]


@register
class EyeLike(OpDef):
    name = "EyeLike"
    dtype_attrs = ("dtype",)

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if t.shape is not None and len(t.shape) != 2:
            raise InferenceError(f"{node.describe()}: needs a rank-2 operand, got {t}")
        dt = node.attr("dtype", t.dtype)
        if not isinstance(dt, str) or not dtypes.is_dtype(dt):
            raise InferenceError(f"{node.describe()}: attribute 'dtype' must be an element type, got {dt!r}")
        return [TensorType(dt, t.shape)]


# ---- triangular, cumulative, index ops -----------------------------------------------------


@register
class Trilu(OpDef):
    name = "Trilu"

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if t.shape is not None and len(t.shape) < 2:
            raise InferenceError(f"{node.describe()}: needs rank >= 2, got {t}")
        return [TensorType(t.dtype, t.shape)]

    def channels(self, node: Node) -> list[AxisGroup]:
        return pairs(node, ((k, k) for k in range(len(shape_of(node, 0)) - 2)))


@register
class CumSum(OpDef):
    name = "CumSum"

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        return [TensorType(t.dtype, t.shape)]

    def cost(self, node: Node) -> Cost:
        return Cost(numel(shape_of(node, 0)), io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        r, axis = len(shape_of(node, 0)), const_ints(node, 1)
        if axis is None:
            return []
        a = norm_axis(node, axis[0], r)
        return pairs(node, ((k, k) for k in range(r) if k != a))


def _replace_axis(node: Node, t: TensorType, axis: int, dim: Dim | None) -> tuple[tuple[Dim, ...] | None, int]:
    """``t``'s shape with ``axis`` set to ``dim`` (dropped when dim is None), and the normalized axis."""
    if t.shape is None:
        return None, axis
    a = norm_axis(node, axis, len(t.shape))
    mid: tuple[Dim, ...] = () if dim is None else (dim,)
    return (*t.shape[:a], *mid, *t.shape[a + 1 :]), a


@register
class TopK(OpDef):
    name = "TopK"

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        k = const_ints(node, 1)
        kd: Dim = UNKNOWN if k is None else k[0]
        shape, a = _replace_axis(node, t, int(node.attr("axis", -1)), kd)
        if k is not None and t.shape is not None:
            d = t.shape[a]
            if k[0] < 0 or (isinstance(d, int) and k[0] > d):
                raise InferenceError(f"{node.describe()}: k={k[0]} is out of range for axis {a} of {t}")
        return [TensorType(t.dtype, shape), TensorType("i64", shape)]

    def cost(self, node: Node) -> Cost:
        return Cost(numel(shape_of(node, 0)), io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        r = len(shape_of(node, 0))
        a = norm_axis(node, int(node.attr("axis", -1)), r)
        return pairs(node, ((k, k) for k in range(r) if k != a), outs=(0, 1))


class _ArgReduce(OpDef):
    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        keep = int(node.attr("keepdims", 1))
        shape, _ = _replace_axis(node, t, int(node.attr("axis", 0)), 1 if keep else None)
        return [TensorType("i64", shape)]

    def cost(self, node: Node) -> Cost:
        return Cost(numel(shape_of(node, 0)), io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        r = len(shape_of(node, 0))
        a = norm_axis(node, int(node.attr("axis", 0)), r)
        keep = int(node.attr("keepdims", 1))
        return pairs(node, ((k, k if keep or k < a else k - 1) for k in range(r) if k != a))


register(type("ArgMax", (_ArgReduce,), {"name": "ArgMax"}))
register(type("ArgMin", (_ArgReduce,), {"name": "ArgMin"}))


@register
class OneHot(OpDef):
    name = "OneHot"

    def _axis(self, node: Node) -> int | None:
        shape = ttype(node, 0).shape
        return None if shape is None else norm_axis(node, int(node.attr("axis", -1)), len(shape) + 1)

    def infer(self, node: Node) -> list[Type]:
        t, vals = ttype(node, 0), ttype(node, 2)
        axis = self._axis(node)
        if axis is None or t.shape is None:
            return [TensorType(vals.dtype, None)]
        dv = const_value(node, 1)
        depth: Dim = UNKNOWN if dv is None else int(np.asarray(dv).reshape(-1)[0])
        return [TensorType(vals.dtype, (*t.shape[:axis], depth, *t.shape[axis:]))]

    def channels(self, node: Node) -> list[AxisGroup]:
        axis = self._axis(node)
        r = len(shape_of(node, 0))
        return [] if axis is None else pairs(node, ((k, k if k < axis else k + 1) for k in range(r)))


@register
class NonZero(OpDef):
    name = "NonZero"

    def infer(self, node: Node) -> list[Type]:
        shape = ttype(node, 0).shape
        return [TensorType("i64", (UNKNOWN if shape is None else len(shape), UNKNOWN))]


# ---- reductions ----------------------------------------------------------------------------


class Reduce(OpDef):
    """ReduceX(data, axes?) with keepdims and noop_with_empty_axes; macs = operand numel."""

    np_fn: ClassVar[str | None] = None

    def _axes(self, node: Node, rank: int, axes: list[int] | None) -> list[int]:
        """Reduced axes (normalized); [] for a no-op."""
        if axes:
            return sorted(norm_axes(node, axes, rank))
        return [] if int(node.attr("noop_with_empty_axes", 0)) else list(range(rank))

    def _shape(self, node: Node, shape: tuple[Dim, ...], axes: list[int]) -> tuple[Dim, ...]:
        if int(node.attr("keepdims", 1)):
            return tuple(1 if k in axes else d for k, d in enumerate(shape))
        return tuple(d for k, d in enumerate(shape) if k not in axes)

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        axes = const_ints(node, 1)
        if node.has_input(1) and axes is None:
            if int(node.attr("keepdims", 1)):
                return [TensorType(t.dtype, (UNKNOWN,) * len(t.shape))]
            n = len_1d(node, 1)
            return [TensorType(t.dtype, None if n is None or n == 0 else (UNKNOWN,) * (len(t.shape) - n))]
        return [TensorType(t.dtype, self._shape(node, t.shape, self._axes(node, len(t.shape), axes)))]

    def cost(self, node: Node) -> Cost:
        return Cost(numel(shape_of(node, 0)), io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        shape = shape_of(node, 0)
        axes = const_ints(node, 1)
        if node.has_input(1) and axes is None:
            return []
        red = self._axes(node, len(shape), axes)
        kept = [k for k in range(len(shape)) if k not in red]
        keep = int(node.attr("keepdims", 1))
        return pairs(node, ((k, k if keep else j) for j, k in enumerate(kept)))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x = args[0]
        a = arg(args, 1)
        if self.np_fn is None or x is None or (node.has_input(1) and a is None):
            return None
        axes = self._axes(node, x.ndim, None if a is None else [int(v) for v in a.reshape(-1)])
        if not axes and int(node.attr("noop_with_empty_axes", 0)):
            return [x.copy()]
        res = getattr(np, self.np_fn)(x, axis=tuple(axes), keepdims=bool(int(node.attr("keepdims", 1))))
        return [np.asarray(res).astype(x.dtype)]


_REDUCE = {
    "ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod",
    "ReduceL1": None, "ReduceL2": None, "ReduceLogSumExp": None, "ReduceSumSquare": None,
}
for _name, _fn in _REDUCE.items():
    register(type(_name, (Reduce,), {"name": _name, "np_fn": _fn, "foldable": _fn is not None}))


__all__ = ["Reduce"]
