"""Indexing and rearranging ops: Gather/GatherElements/GatherND, ScatterElements/ScatterND,
DepthToSpace/SpaceToDepth and Einsum (ONNX opset 21 semantics)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nasc.ir.core import Graph, Node
from nasc.ir.ops.registry import (
    AxisGroup,
    AxisRef,
    Cost,
    InferenceError,
    OpDef,
    const_value,
    io_bytes,
    norm_axis,
    register,
    set_const_operand,
    shape_of,
    ttype,
)
from nasc.ir.ops.tensor import arg, len_1d, norm_axes, out_shape, pairs, prod
from nasc.ir.types import UNKNOWN, Dim, TensorType, Type


@register
class Gather(OpDef):
    name = "Gather"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        t, i = ttype(node, 0), ttype(node, 1)
        if t.shape is None or i.shape is None:
            return [TensorType(t.dtype, None)]
        axis = norm_axis(node, int(node.attr("axis", 0)), len(t.shape))
        iv = node.input(1)
        if iv.const is not None and prod(iv.const.shape) <= _CHECKED_INDICES and isinstance(t.shape[axis], int):
            _check_indices(node, iv.data, t.shape[axis], axis)
        return [TensorType(t.dtype, t.shape[:axis] + i.shape + t.shape[axis + 1 :])]

    def channels(self, node: Node) -> list[AxisGroup]:
        r, q = len(shape_of(node, 0)), len(shape_of(node, 1))
        axis = norm_axis(node, int(node.attr("axis", 0)), r)
        groups = pairs(node, [(k, k) for k in range(axis)] + [(k, k + q - 1) for k in range(axis + 1, r)])
        idx = const_value(node, 1)
        d = shape_of(node, 0)[axis]
        if idx is not None and idx.ndim == 1 and isinstance(d, int):  # a constant selection of channels
            sel = tuple(int(i) % d for i in idx)
            groups.append(AxisGroup((("out", 0, axis), ("in", 0, axis)), "gather", sel))
        return groups

    def prune(self, graph: Graph, node: Node, kept: Callable[[AxisRef], np.ndarray | None]) -> None:
        axis = norm_axis(node, int(node.attr("axis", 0)), len(shape_of(node, 0)))
        kin, kout = kept(("in", 0, axis)), kept(("out", 0, axis))
        idx = const_value(node, 1)
        if idx is None or idx.ndim != 1 or (kin is None and kout is None):
            return
        d = int(shape_of(node, 0)[axis])  # type: ignore[arg-type]
        sel = idx.astype(np.int64) % d
        sel = sel if kout is None else sel[kout]
        set_const_operand(graph, node, 1, np.searchsorted(kin, sel) if kin is not None else sel)

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x, i = args[0], args[1]
        if x is None or i is None:
            return None
        axis = norm_axis(node, int(node.attr("axis", 0)), x.ndim)
        _check_indices(node, i, x.shape[axis], axis)
        return [np.take(x, i.astype(np.int64), axis=axis)]


_CHECKED_INDICES = 1 << 16  # constant indices up to this many are range-checked by inference


def _check_indices(node: Node, indices: np.ndarray, size: int, axis: int) -> None:
    """Constant indices must lie in [-size, size - 1] (ONNX: anything else is an error)."""
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu" or not idx.size:
        return
    bad = idx[(idx < -size) | (idx >= size)]
    if bad.size:
        raise InferenceError(
            f"{node.describe()}: index {int(bad.reshape(-1)[0])} is out of range for axis {axis} of size {size} "
            f"(valid: {-size} to {size - 1})"
        )


@register
class GatherElements(OpDef):
    name = "GatherElements"

    def infer(self, node: Node) -> list[Type]:
        t, i = ttype(node, 0), ttype(node, 1)
        if t.shape is not None and i.shape is not None and len(t.shape) != len(i.shape):
            raise InferenceError(f"{node.describe()}: data {t} and indices {i} differ in rank")
        return [TensorType(t.dtype, i.shape)]

    def channels(self, node: Node) -> list[AxisGroup]:
        d, i = shape_of(node, 0), shape_of(node, 1)
        axis = norm_axis(node, int(node.attr("axis", 0)), len(d))
        return [AxisGroup((("in", 0, k), ("in", 1, k), ("out", 0, k)))
                for k in range(len(d)) if k != axis and isinstance(d[k], int) and d[k] == i[k]]


@register
class GatherND(OpDef):
    name = "GatherND"

    def infer(self, node: Node) -> list[Type]:
        t, i = ttype(node, 0), ttype(node, 1)
        if t.shape is None or i.shape is None or not i.shape or not isinstance(i.shape[-1], int):
            return [TensorType(t.dtype, None)]
        b, m = int(node.attr("batch_dims", 0)), i.shape[-1]
        if b + m > len(t.shape) or b >= len(i.shape):
            raise InferenceError(f"{node.describe()}: indices {i} with batch_dims={b} do not index data {t}")
        return [TensorType(t.dtype, i.shape[:-1] + t.shape[b + m :])]

    def channels(self, node: Node) -> list[AxisGroup]:
        d, i = shape_of(node, 0), shape_of(node, 1)
        b = int(node.attr("batch_dims", 0))
        if not i or not isinstance(i[-1], int):
            return []
        groups = [AxisGroup((("in", 0, k), ("in", 1, k), ("out", 0, k))) for k in range(b)]
        return groups + [AxisGroup((("in", 0, k), ("out", 0, len(i) - 1 + k - b - i[-1])))
                         for k in range(b + i[-1], len(d))]


class _Scatter(OpDef):
    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        return [TensorType(t.dtype, t.shape)]


register(type("ScatterElements", (_Scatter,), {"name": "ScatterElements"}))
register(type("ScatterND", (_Scatter,), {"name": "ScatterND"}))


# ---- depth/space, einsum -------------------------------------------------------------


class _BlockMove(OpDef):
    to_space: bool = True

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if t.shape is None:
            return [TensorType(t.dtype, (UNKNOWN,) * 4)]
        if len(t.shape) != 4:
            raise InferenceError(f"{node.describe()}: needs a rank-4 (N,C,H,W) operand, got {t}")
        b = int(node.attr("blocksize", 0))
        if b <= 0:
            raise InferenceError(f"{node.describe()}: blocksize must be positive, got {b}")
        n, c, h, w = t.shape
        if self.to_space:
            if isinstance(c, int) and c % (b * b):
                raise InferenceError(f"{node.describe()}: channels of {t} are not divisible by blocksize^2={b * b}")
            return [TensorType(t.dtype, (n, _div(c, b * b), _mul(h, b), _mul(w, b)))]
        for d in (h, w):
            if isinstance(d, int) and d % b:
                raise InferenceError(f"{node.describe()}: spatial dims of {t} are not divisible by blocksize {b}")
        return [TensorType(t.dtype, (n, _mul(c, b * b), _div(h, b), _div(w, b)))]

    def channels(self, node: Node) -> list[AxisGroup]:
        groups = pairs(node, [(0, 0)])
        c = shape_of(node, 0)[1]
        b = int(node.attr("blocksize", 0))
        if not isinstance(c, int):
            return groups
        # the deep side's channel i is the shallow side's channel i // b^2 (CRD: PixelShuffle) or
        # i % C (DCR); the spatial axes are a barrier either way
        deep, shallow = (("in", 0, 1), ("out", 0, 1)) if self.to_space else (("out", 0, 1), ("in", 0, 1))
        c_small = c // (b * b) if self.to_space else c
        crd = self.to_space and node.attr("mode", "DCR") == "CRD"
        groups.append(AxisGroup((deep, shallow), "digit", (b * b, c_small) if crd else (1, c_small)))
        return groups


def _mul(d: Dim, k: int) -> Dim:
    return d * k if isinstance(d, int) else UNKNOWN


def _div(d: Dim, k: int) -> Dim:
    return d // k if isinstance(d, int) else UNKNOWN


register(type("DepthToSpace", (_BlockMove,), {"name": "DepthToSpace", "to_space": True}))
register(type("SpaceToDepth", (_BlockMove,), {"name": "SpaceToDepth", "to_space": False}))


def parse_einsum(node: Node) -> tuple[list[list[str]], list[str], dict[str, Dim]] | None:
    """(labels per operand, result labels, size per label); ellipsis dims get labels '.0', '.1', ..."""
    eq = str(node.attr("equation", "")).replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(node.inputs):
        raise InferenceError(f"{node.describe()}: equation '{eq}' names {len(terms)} operands, got {len(node.inputs)}")
    shapes = [ttype(node, i).shape for i in range(len(terms))]
    if any(s is None for s in shapes):
        return None
    n_ell = max((len(s) - len(t.replace("...", "")) for s, t in zip(shapes, terms, strict=True)  # type: ignore[arg-type]
                 if "..." in t), default=0)

    def expand(term: str, rank: int | None) -> list[str]:
        head, dots, tail = term.partition("...")
        k = (rank - len(head) - len(tail)) if rank is not None else n_ell
        ell = [f".{n_ell - k + j}" for j in range(k)] if dots else []
        return list(head) + ell + list(tail)

    labels = [expand(t, len(s)) for t, s in zip(terms, shapes, strict=True)]  # type: ignore[arg-type]
    sizes: dict[str, Dim] = {}
    for labs, shp in zip(labels, shapes, strict=True):
        assert shp is not None
        if len(labs) != len(shp) or any(not (c.isalpha() or c.startswith(".")) for c in labs):
            raise InferenceError(f"{node.describe()}: equation '{eq}' does not fit operand shape {list(shp)}")
        for c, d in zip(labs, shp, strict=True):
            old = sizes.get(c)
            if old is None or old == d or (c.startswith(".") and old == 1):
                sizes[c] = d
            elif isinstance(old, int) and isinstance(d, int) and not (c.startswith(".") and d == 1):
                raise InferenceError(f"{node.describe()}: index '{c}' of '{eq}' has sizes {old} and {d}")
    if arrow:
        out = expand(rhs, None)
        if any(c not in sizes for c in out):
            raise InferenceError(f"{node.describe()}: result of '{eq}' names an index no operand has")
    else:
        flat = [c for labs in labels for c in labs if c.isalpha()]
        out = [f".{j}" for j in range(n_ell)] + sorted(c for c in set(flat) if flat.count(c) == 1)
    return labels, out, sizes


@register
class Einsum(OpDef):
    name = "Einsum"

    def infer(self, node: Node) -> list[Type]:
        dt = ttype(node, 0).dtype
        parsed = parse_einsum(node)
        if parsed is None:
            return [TensorType(dt, None)]
        _, out, sizes = parsed
        return [TensorType(dt, tuple(sizes[c] for c in out))]

    def cost(self, node: Node) -> Cost:
        parsed = parse_einsum(node)
        n = prod(parsed[2].values()) if parsed else 0
        return Cost(n if isinstance(n, int) else 0, io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        parsed = parse_einsum(node)
        if parsed is None:
            return []
        labels, out, _ = parsed
        groups = []
        for c in dict.fromkeys(c for labs in labels for c in labs if c.isalpha()):
            members: list[AxisRef] = [("in", i, k) for i, labs in enumerate(labels) for k, x in enumerate(labs) if x == c]
            members += [("out", 0, k) for k, x in enumerate(out) if x == c]
            groups.append(AxisGroup(tuple(members)))
        return groups


__all__ = ["arg", "len_1d", "norm_axes", "out_shape", "pairs", "parse_einsum", "prod"]
