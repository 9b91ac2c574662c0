"""Ops that pad, resize or repeat a tensor: Pad/Resize/Expand/Tile (ONNX opset 21 semantics)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nasc.ir.core import Graph, Node
from nasc.ir.ops.registry import (
    AxisGroup,
    AxisRef,
    InferenceError,
    OpDef,
    broadcast,
    const_ints,
    const_value,
    pruned_shape,
    register,
    same_axes,
    set_const_operand,
    shape_of,
    ttype,
)
from nasc.ir.ops.tensor import len_1d, norm_axes, out_shape, pairs
from nasc.ir.types import UNKNOWN, Dim, Shape, TensorType, Type

# ---- pad, resize, expand, tile -----------------------------------------------------------


def resize_coords(ctm: str, scale: float, n_in: int, n_out: int, roi: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Where each output position reads the input along one axis, by ONNX's definition (its reference
    implementation): by the scale given, with the resized length n_in * scale before flooring to n_out; ``roi``
    (start, end) for tf_crop_and_resize. Shared by the Relax and torch lowerings."""
    y = np.arange(n_out, dtype=np.float64)
    length = scale * n_in
    if ctm == "tf_crop_and_resize":
        start, end = roi
        if n_out == 1:
            return np.full(n_out, (start + end) * (n_in - 1) / 2)
        return start * (n_in - 1) + y * (end - start) * (n_in - 1) / (n_out - 1)
    if ctm == "align_corners":
        return np.zeros(n_out) if length == 1 else y * (n_in - 1) / (length - 1)
    if ctm == "asymmetric":
        return y / scale
    if ctm == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if ctm == "pytorch_half_pixel" and length == 1:
        return np.full(n_out, -0.5)
    offset = n_in / 2 * (1 - n_out / length) if ctm == "half_pixel_symmetric" else 0.0
    return offset + (y + 0.5) / scale - 0.5



def _untouched(node: Node, shape: Shape | None, out: Shape | None) -> list[AxisGroup]:
    return [] if shape is None or out is None else pairs(
        node, ((k, k) for k in range(len(shape)) if isinstance(shape[k], int) and shape[k] == out[k]))


@register
class Pad(OpDef):
    name = "Pad"

    def _axes(self, node: Node, r: int) -> list[int] | None:
        if not node.has_input(3):
            return list(range(r))
        axes = const_ints(node, 3)
        return None if axes is None else norm_axes(node, axes, r)

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        r = len(t.shape)
        axes, pads = self._axes(node, r), const_ints(node, 1)
        if axes is None:
            return [TensorType(t.dtype, (UNKNOWN,) * r)]
        if pads is None:
            return [TensorType(t.dtype, tuple(UNKNOWN if k in axes else d for k, d in enumerate(t.shape)))]
        n = len(axes)
        if len(pads) != 2 * n:
            raise InferenceError(f"{node.describe()}: pads {pads} must have 2 x {n} entries")
        out = list(t.shape)
        for j, k in enumerate(axes):
            d = t.shape[k]
            if isinstance(d, int):
                out[k] = d + pads[j] + pads[j + n]
                if out[k] < 0:
                    raise InferenceError(f"{node.describe()}: pads {pads} make axis {k} of {t} negative")
            elif pads[j] or pads[j + n]:
                out[k] = UNKNOWN
        return [TensorType(t.dtype, tuple(out))]

    def channels(self, node: Node) -> list[AxisGroup]:
        return _untouched(node, shape_of(node, 0), out_shape(self, node))


@register
class Resize(OpDef):
    name = "Resize"

    def _given(self, node: Node, i: int) -> bool:
        v = const_value(node, i)
        return node.has_input(i) and (v is None or v.size > 0)

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        r = len(t.shape)
        axes = norm_axes(node, node.attr("axes", range(r)), r)
        out = list(t.shape)
        if self._given(node, 3):
            sizes = const_ints(node, 3)
            policy = node.attr("keep_aspect_ratio_policy", "stretch")
            if sizes is not None and len(sizes) != len(axes):
                raise InferenceError(f"{node.describe()}: sizes {sizes} do not match {len(axes)} axes")
            dims = [t.shape[k] for k in axes]
            if sizes is None or (policy != "stretch" and not all(isinstance(d, int) for d in dims)):
                new: list[Dim] = [UNKNOWN] * len(axes)
            elif policy == "stretch":
                new = list(sizes)
            else:
                ratios = [np.float32(s) / np.float32(d) for s, d in zip(sizes, dims, strict=True)]
                scale = min(ratios) if policy == "not_larger" else max(ratios)
                new = [int(np.floor(scale * np.float32(d) + np.float32(0.5))) for d in dims]
        elif self._given(node, 2):
            sv = const_value(node, 2)
            if sv is None:
                new = [UNKNOWN] * len(axes)
            else:
                scales = [np.float32(s) for s in sv.reshape(-1)]
                if len(scales) != len(axes):
                    raise InferenceError(f"{node.describe()}: scales {sv.tolist()} do not match {len(axes)} axes")
                new = [int(np.floor(np.float32(d) * s)) if isinstance(d, int) else UNKNOWN
                       for d, s in zip((t.shape[k] for k in axes), scales, strict=True)]
        else:
            raise InferenceError(f"{node.describe()}: one of scales or sizes must be given")
        for k, d in zip(axes, new, strict=True):
            out[k] = d
        return [TensorType(t.dtype, tuple(out))]

    def channels(self, node: Node) -> list[AxisGroup]:
        if node.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
            return []
        groups = _untouched(node, shape_of(node, 0), out_shape(self, node))
        if self._given(node, 3) and node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            # the sizes of the resized axes depend on each other's ratios: none of them is a channel
            r = len(shape_of(node, 0))
            resized = set(norm_axes(node, node.attr("axes", range(r)), r))
            groups = [g for g in groups if g.members[0][2] not in resized]
        return groups

    def prune(self, graph: Graph, node: Node, kept: Callable[[AxisRef], np.ndarray | None]) -> None:
        sizes = const_ints(node, 3) if self._given(node, 3) else None
        if sizes is None:
            return
        r = len(shape_of(node, 0))
        new = pruned_shape(node, "out", 0, kept)
        want = [new[k] for k in norm_axes(node, node.attr("axes", range(r)), r)]
        if want != sizes:  # a sizes operand that spells out the channel count
            set_const_operand(graph, node, 3, np.array(want, dtype=np.int64))


@register
class Expand(OpDef):
    name = "Expand"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        target = const_ints(node, 1)
        if target is None or t.shape is None:
            n = len_1d(node, 1)
            if n is None or t.shape is None:
                return [TensorType(t.dtype, None)]
            # an input dim other than 1 survives broadcasting whatever the target dim is
            r = max(n, len(t.shape))
            lead = (UNKNOWN,) * (r - len(t.shape))
            return [TensorType(t.dtype, lead + tuple(d if isinstance(d, int) and d != 1 else UNKNOWN for d in t.shape))]
        return [TensorType(t.dtype, broadcast(node, [t.shape, tuple(target)]))]

    def channels(self, node: Node) -> list[AxisGroup]:
        out = out_shape(self, node)
        return [] if out is None else same_axes(node, [0], len(out))

    def prune(self, graph: Graph, node: Node, kept: Callable[[AxisRef], np.ndarray | None]) -> None:
        target = const_ints(node, 1) or []
        new = pruned_shape(node, "out", 0, kept)
        # a target dim of 1 is a dim the operand keeps: leave it so that the broadcast stays as written
        set_const_operand(graph, node, 1, np.array([1 if t == 1 else d for t, d in zip(target, new[len(new) - len(target):],
                                                                                           strict=True)], dtype=np.int64))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x, s = args[0], args[1]
        if x is None or s is None:
            return None
        shp = broadcast(node, [x.shape, tuple(int(v) for v in s.reshape(-1))])
        return [np.broadcast_to(x, shp).copy()]  # type: ignore[arg-type]


@register
class Tile(OpDef):
    name = "Tile"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        reps = const_ints(node, 1)
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        if reps is None:
            return [TensorType(t.dtype, (UNKNOWN,) * len(t.shape))]
        if len(reps) != len(t.shape) or min(reps, default=0) < 0:
            raise InferenceError(f"{node.describe()}: repeats {reps} do not fit {t}")
        return [TensorType(t.dtype, tuple(d * n if isinstance(d, int) else (d if n == 1 else UNKNOWN)
                                           for d, n in zip(t.shape, reps, strict=True)))]

    def channels(self, node: Node) -> list[AxisGroup]:
        reps = const_ints(node, 1)
        return [] if reps is None else pairs(node, ((k, k) for k, n in enumerate(reps) if n == 1))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x, r = args[0], args[1]
        return None if x is None or r is None else [np.tile(x, [int(v) for v in r.reshape(-1)])]
