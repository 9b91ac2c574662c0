"""Normalizations, pooling and quantization (ONNX opset 21), plus the window arithmetic shared with convolutions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from nasc.ir import dtypes
from nasc.ir.core import Graph, Node
from nasc.ir.ops.registry import (
    AxisGroup,
    AxisRef,
    Cost,
    InferenceError,
    OpDef,
    io_bytes,
    lookup_node,
    norm_axis,
    numel,
    register,
    register_many,
    shape_of,
    ttype,
)
from nasc.ir.types import UNKNOWN, Dim, Shape, TensorType, Type

# ---- shared helpers ----------------------------------------------------------


def attr_ints(node: Node, name: str, n: int, default: int) -> list[int]:
    """A per-spatial-axis int list attribute (``n`` entries), or ``default`` repeated."""
    val = node.attr(name)
    if val is None:
        return [default] * n
    vals = [int(v) for v in (val if isinstance(val, (tuple, list)) else [val])]
    if len(vals) != n:
        raise InferenceError(f"{node.describe()}: attribute '{name}' has {len(vals)} entries, expected {n}")
    return vals


def unify(node: Node, dims: Sequence[Dim], what: str) -> Dim:
    """One dim that several operands must agree on: the known size, a shared symbol, or UNKNOWN."""
    ints = {d for d in dims if isinstance(d, int)}
    if len(ints) > 1:
        raise InferenceError(f"{node.describe()}: {what} disagree ({', '.join(str(d) for d in dims)})")
    if ints:
        return ints.pop()
    return dims[0] if dims and len(set(dims)) == 1 else UNKNOWN


def check_dim(node: Node, dim: Dim, want: Dim, what: str) -> None:
    if isinstance(dim, int) and isinstance(want, int) and dim != want:
        raise InferenceError(f"{node.describe()}: {what} has size {dim}, expected {want}")


def window_pads(node: Node, in_dims: Shape, eff_kernel: Sequence[int], strides: Sequence[int]) -> list[int]:
    """Begin and end pads (``2n`` entries) from ``pads`` or ``auto_pad``, as ONNX shape inference derives them."""
    n = len(in_dims)
    if node.attr("pads") is not None:
        return attr_ints(node, "pads", 2 * n, 0)
    pads = [0] * (2 * n)
    auto = str(node.attr("auto_pad", "NOTSET"))
    if auto in ("NOTSET", "VALID"):
        return pads
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise InferenceError(f"{node.describe()}: unknown auto_pad {auto!r}")
    for i, d in enumerate(in_dims):
        if not isinstance(d, int):
            continue
        residual = d % strides[i]
        total = max(0, eff_kernel[i] - (strides[i] if residual == 0 else residual))
        small, big = total // 2, total - total // 2
        pads[i], pads[i + n] = (small, big) if auto == "SAME_UPPER" else (big, small)
    return pads


def window_out(node: Node, in_dims: Shape, kernel: Sequence[int], *, ceil_mode: bool = False) -> list[Dim]:
    """Spatial result dims of a sliding window (conv or pool) over ``in_dims``."""
    n = len(in_dims)
    if len(kernel) != n:
        raise InferenceError(f"{node.describe()}: kernel has {len(kernel)} spatial dims, input has {n}")
    strides = attr_ints(node, "strides", n, 1)
    dil = attr_ints(node, "dilations", n, 1)
    if any(s < 1 for s in strides) or any(d < 1 for d in dil):
        raise InferenceError(f"{node.describe()}: strides {strides} and dilations {dil} must be positive")
    ek = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    pads = window_pads(node, in_dims, ek, strides)
    out: list[Dim] = []
    for i, d in enumerate(in_dims):
        if not isinstance(d, int):
            out.append(UNKNOWN)
            continue
        eff = d + pads[i] + pads[i + n]
        if eff < ek[i]:
            raise InferenceError(
                f"{node.describe()}: window {ek[i]} (kernel {kernel[i]}, dilation {dil[i]}) is larger than "
                f"padded input {eff} on spatial axis {i}"
            )
        size = (eff - ek[i] + (strides[i] - 1 if ceil_mode else 0)) // strides[i] + 1
        if ceil_mode and (size - 1) * strides[i] >= d + pads[i]:
            size -= 1  # the last window may not start inside the end padding
        out.append(size)
    return out


def out_shape(node: Node, slot: int = 0) -> Shape | None:
    t = node.outputs[slot].type if slot < len(node.outputs) else None
    return t.shape if isinstance(t, TensorType) else None


def known(node: Node, *slots: int) -> bool:
    """Whether the present operands among ``slots`` all have a known rank (channels() returns [] otherwise)."""
    return all(ttype(node, i).shape is not None for i in slots if node.has_input(i))


def infer_shape(node: Node, slot: int = 0) -> Shape | None:
    """Result ``slot``'s shape by the node's own entry (falls back to the recorded type)."""
    entry = lookup_node(node)
    if entry is not None:
        t = entry.infer(node)[slot]
        if isinstance(t, TensorType):
            return t.shape
    return out_shape(node, slot)


# ---- normalizations ----------------------------------------------------------

_ONNX_FLOAT_ENUMS = {1: "f32", 10: "f16", 11: "f64", 16: "bf16"}


def _stash(node: Node) -> str:
    st = node.attr("stash_type", "f32")
    if isinstance(st, int):
        st = _ONNX_FLOAT_ENUMS.get(st, "f32")
    if not dtypes.is_dtype(st):
        raise InferenceError(f"{node.describe()}: stash_type {st!r} is not an element type")
    return st


class _Norm(OpDef):
    """Result 0 has the input's type; about one multiply-accumulate per element."""

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        return [TensorType(t.dtype, t.shape)]

    def cost(self, node: Node) -> Cost:
        t = ttype(node, 0)
        return Cost(numel(t.shape) if t.shape is not None else 0, io_bytes(node))

    def _per_channel(self, node: Node, slots: Sequence[int]) -> None:
        """Check that 1-D parameter operands ``slots`` have the input's channel count."""
        x = ttype(node, 0).shape
        c: Dim = UNKNOWN if x is None else (x[1] if len(x) > 1 else 1)
        for s in slots:
            if not node.has_input(s):
                continue
            p = ttype(node, s).shape
            if p is None:
                continue
            if len(p) != 1:
                raise InferenceError(f"{node.describe()}: operand {s} must be 1-D, got rank {len(p)}")
            check_dim(node, p[0], c, f"operand {s} (per-channel)")


@register
class BatchNormalization(_Norm):
    """Inference-form batch norm; running mean/var results (training form) are typed [C] when present."""

    name = "BatchNormalization"

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        self._per_channel(node, [1, 2, 3, 4])
        out: list[Type] = [TensorType(t.dtype, t.shape)]
        c: Dim = UNKNOWN if t.shape is None else (t.shape[1] if len(t.shape) > 1 else 1)
        for k in (1, 2):
            if len(node.outputs) > k:
                out.append(TensorType(ttype(node, 2 + k).dtype, (c,)))
        return out

    def channels(self, node: Node) -> list[AxisGroup]:
        if not known(node, 0, 1, 2, 3, 4):
            return []
        rank = len(shape_of(node, 0))
        groups = []
        for k in range(rank):
            m: list[AxisRef] = [("in", 0, k), ("out", 0, k)]
            if k == 1:
                m += [("in", s, 0) for s in range(1, 5) if node.has_input(s)]
                m += [("out", s, 0) for s in (1, 2) if s < len(node.outputs)]
            groups.append(AxisGroup(tuple(m)))
        return groups


@register
class InstanceNormalization(_Norm):
    name = "InstanceNormalization"

    def infer(self, node: Node) -> list[Type]:
        self._per_channel(node, [1, 2])
        return super().infer(node)

    def channels(self, node: Node) -> list[AxisGroup]:
        if not known(node, 0):
            return []
        return [
            AxisGroup((("in", 0, 0), ("out", 0, 0))),
            AxisGroup((("in", 0, 1), ("out", 0, 1), ("in", 1, 0), ("in", 2, 0))),
        ]


@register
class GroupNormalization(_Norm):
    """Opset 21 form: scale and bias are per channel [C]."""

    name = "GroupNormalization"
    dtype_attrs = ("stash_type",)

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        g = node.attr("num_groups")
        if g is None:
            raise InferenceError(f"{node.describe()}: attribute 'num_groups' is required")
        if t.shape is not None and len(t.shape) > 1 and isinstance(t.shape[1], int) and t.shape[1] % int(g):
            raise InferenceError(f"{node.describe()}: {t.shape[1]} channels do not split into {g} groups")
        self._per_channel(node, [1, 2])
        _stash(node)
        return [TensorType(t.dtype, t.shape)]

    def channels(self, node: Node) -> list[AxisGroup]:
        if not known(node, 0, 1, 2) or len(shape_of(node, 0)) < 2 or not isinstance(shape_of(node, 0)[1], int):
            return []
        cpg = int(shape_of(node, 0)[1]) // int(node.attr("num_groups"))  # type: ignore[arg-type]
        # statistics are per group: a whole group goes, or nothing of it (then zeroing it gives zeros)
        return [AxisGroup((("in", 0, 0), ("out", 0, 0))),
                AxisGroup((("in", 0, 1), ("out", 0, 1), ("in", 1, 0), ("in", 2, 0)), "block", (cpg,))]

    def prune(self, graph: Graph, node: Node, kept: Callable[[AxisRef], np.ndarray | None]) -> None:
        kin = kept(("in", 0, 1))
        if kin is not None:
            cpg = int(shape_of(node, 0)[1]) // int(node.attr("num_groups"))  # type: ignore[arg-type]
            node.attrs["num_groups"] = len(kin) // cpg


@register
class LayerNormalization(_Norm):
    """Normalizes axes [axis, rank); Mean and InvStdDev have those dims set to 1, typed by stash_type."""

    name = "LayerNormalization"
    dtype_attrs = ("stash_type",)

    def _axis(self, node: Node, rank: int) -> int:
        return norm_axis(node, int(node.attr("axis", -1)), rank)

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        stash = _stash(node)
        red: Shape | None = None
        if t.shape is not None:
            axis = self._axis(node, len(t.shape))
            red = tuple(t.shape[:axis]) + (1,) * (len(t.shape) - axis)
            norm = t.shape[axis:]
            for s in (1, 2):
                p = ttype(node, s).shape if node.has_input(s) else None
                if p is None:
                    continue
                if len(p) > len(norm):
                    raise InferenceError(f"{node.describe()}: operand {s} has rank {len(p)} > normalized rank")
                for d, want in zip(p, norm[len(norm) - len(p):], strict=True):
                    if isinstance(d, int) and d != 1:
                        check_dim(node, d, want, f"operand {s}")
        out: list[Type] = [TensorType(t.dtype, t.shape)]
        out += [TensorType(stash, red) for _ in node.outputs[1:3]]
        return out

    def channels(self, node: Node) -> list[AxisGroup]:
        if not known(node, 0, 1, 2, 3, 4):
            return []
        rank = len(shape_of(node, 0))
        axis = self._axis(node, rank)
        outs = range(min(len(node.outputs), 3))
        groups = [AxisGroup((("in", 0, k), *(("out", o, k) for o in outs))) for k in range(axis)]
        why = (f"{node.describe()} normalizes over this axis: removing channels changes the mean and variance "
               "the others are normalized by")
        for k in range(axis, rank):  # scale and bias broadcast against the normalized axes
            m: list[AxisRef] = [("in", 0, k), ("out", 0, k)]
            for s in (1, 2):
                if node.has_input(s):
                    ps = shape_of(node, s)
                    j = len(ps) - rank + k
                    if j >= 0 and ps[j] != 1:
                        m.append(("in", s, j))
            groups.append(AxisGroup(tuple(m), inexact=why))
        return groups


@register
class LpNormalization(_Norm):
    name = "LpNormalization"

    def channels(self, node: Node) -> list[AxisGroup]:
        if not known(node, 0, 1, 2, 3, 4):
            return []
        rank = len(shape_of(node, 0))
        axis = norm_axis(node, int(node.attr("axis", -1)), rank)
        return [AxisGroup((("in", 0, k), ("out", 0, k))) for k in range(rank) if k != axis]


# ---- pooling -------------------------------------------------------------------


class _Pool(OpDef):
    """Windowed pooling over the spatial axes of [N, C, D1, ...]."""

    def _kernel(self, node: Node) -> list[int]:
        k = node.attr("kernel_shape")
        if k is None:
            raise InferenceError(f"{node.describe()}: attribute 'kernel_shape' is required")
        return [int(v) for v in k]

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        kernel = self._kernel(node)
        shape: Shape | None = None
        if t.shape is not None:
            if len(t.shape) < 3:
                raise InferenceError(f"{node.describe()}: input must have rank >= 3, got {len(t.shape)}")
            sp = window_out(node, t.shape[2:], kernel, ceil_mode=bool(node.attr("ceil_mode", 0)))
            shape = (t.shape[0], t.shape[1], *sp)
        out: list[Type] = [TensorType(t.dtype, shape)]
        if len(node.outputs) > 1:
            out.append(TensorType("i64", shape))
        return out

    def cost(self, node: Node) -> Cost:
        shape = infer_shape(node)
        return Cost(numel(shape) * math.prod(self._kernel(node)) if shape is not None else 0, io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        if not known(node, 0) or len(shape_of(node, 0)) < 2:
            return []
        outs = range(len(node.outputs))
        return [AxisGroup((("in", 0, k), *(("out", o, k) for o in outs))) for k in (0, 1)]


@register
class MaxPool(_Pool):
    name = "MaxPool"


register_many(["AveragePool", "LpPool"], _Pool)


class _GlobalPool(_Pool):
    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        if len(t.shape) < 2:
            raise InferenceError(f"{node.describe()}: input must have rank >= 2, got {len(t.shape)}")
        return [TensorType(t.dtype, (t.shape[0], t.shape[1]) + (1,) * (len(t.shape) - 2))]

    def cost(self, node: Node) -> Cost:
        t = ttype(node, 0)
        return Cost(numel(t.shape) if t.shape is not None else 0, io_bytes(node))


register_many(["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"], _GlobalPool)


# ---- quantization ----------------------------------------------------------------


class _QDQ(OpDef):
    """Shared checks: scale / zero point are per tensor, per axis (1-D) or blocked (same rank)."""

    def _layout(self, node: Node) -> tuple[str, int]:
        """("tensor" | "axis" | "block", normalized axis); validates the scale's shape against x."""
        x = ttype(node, 0).shape
        s = ttype(node, 1).shape
        block = int(node.attr("block_size", 0))
        if x is None or s is None:
            return ("tensor" if s is not None and numel(s) == 1 and not block else "unknown", 0)
        if not block and (len(s) == 0 or (len(s) == 1 and s[0] == 1)):
            return ("tensor", 0)  # per-tensor: ``axis`` is ignored, even when x has no such axis
        axis = norm_axis(node, int(node.attr("axis", 1)), len(x)) if x else 0
        if node.has_input(2):
            zs = ttype(node, 2).shape
            if zs is not None and zs != s:
                raise InferenceError(f"{node.describe()}: zero point shape {zs} differs from scale shape {s}")
        if block:
            if len(s) != len(x):
                raise InferenceError(f"{node.describe()}: blocked scale must have rank {len(x)}, got {len(s)}")
            for k, (d, xd) in enumerate(zip(s, x, strict=True)):
                want = -(-xd // block) if k == axis and isinstance(xd, int) else (UNKNOWN if k == axis else xd)
                check_dim(node, d, want, f"scale axis {k} (block_size {block})")
            return ("block", axis)
        if len(s) != 1:
            raise InferenceError(f"{node.describe()}: scale must be a scalar or 1-D, got shape {s}")
        check_dim(node, s[0], x[axis], f"per-axis scale (axis {axis})")
        return ("axis", axis)

    def cost(self, node: Node) -> Cost:
        t = ttype(node, 0)
        return Cost(numel(t.shape) if t.shape is not None else 0, io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        if not known(node, 0, 1, 2, 3, 4):
            return []
        rank = len(shape_of(node, 0))
        layout, axis = self._layout(node)
        if layout == "unknown":
            return []
        params = [s for s in (1, 2) if node.has_input(s)]
        groups = []
        for k in range(rank):
            m: list[AxisRef] = [("in", 0, k), ("out", 0, k)]
            if layout == "axis" and k == axis:
                m += [("in", s, 0) for s in params]
            elif layout == "block":
                if k == axis:
                    continue  # one scale per block: not a channel-for-channel coupling
                m += [("in", s, k) for s in params]
            groups.append(AxisGroup(tuple(m)))
        return groups


@register
class QuantizeLinear(_QDQ):
    """Result type: zero point's type, else ``output_dtype``, else u8; shape = input's."""

    name = "QuantizeLinear"
    dtype_attrs = ("output_dtype",)

    def infer(self, node: Node) -> list[Type]:
        x = ttype(node, 0)
        self._layout(node)
        od = node.attr("output_dtype")
        od = od if isinstance(od, str) and od else None
        if od is not None and not dtypes.is_dtype(od):
            raise InferenceError(f"{node.describe()}: output_dtype {od!r} is not an element type")
        dt = od or "u8"
        if node.has_input(2):
            zdt = ttype(node, 2).dtype
            if od is not None and zdt != od:
                raise InferenceError(f"{node.describe()}: output_dtype {od} differs from zero point type {zdt}")
            dt = zdt
        return [TensorType(dt, x.shape)]


@register
class DequantizeLinear(_QDQ):
    """Result type: the scale's element type; shape = input's."""

    name = "DequantizeLinear"

    def infer(self, node: Node) -> list[Type]:
        x = ttype(node, 0)
        self._layout(node)
        if node.has_input(2) and ttype(node, 2).dtype != x.dtype:
            raise InferenceError(
                f"{node.describe()}: zero point type {ttype(node, 2).dtype} differs from input type {x.dtype}"
            )
        return [TensorType(ttype(node, 1).dtype, x.shape)]
