"""Elementwise ops: unary math and activations, binary arithmetic and comparison, variadic Sum/Max/Min/Mean, Where, Cast."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from nasc.ir import dtypes
from nasc.ir.core import Graph, Node, Value
from nasc.ir.ops.registry import (
    AxisGroup,
    Cost,
    InferenceError,
    OpDef,
    broadcast,
    emit,
    io_bytes,
    numel,
    register,
    register_many,
    same_axes,
    shape_of,
    ttype,
)
from nasc.ir.types import TensorType, Type


class Unary(OpDef):
    """Same type out as in; one op per element."""

    #: arithmetic per element, for the cost model
    flops_per_elem: ClassVar[int] = 1
    np_fn: ClassVar[str | None] = None

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        return [TensorType(t.dtype, t.shape)]

    def cost(self, node: Node) -> Cost:
        return Cost(numel(shape_of(node, 0)) * self.flops_per_elem, io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        return same_axes(node, [0], len(shape_of(node, 0)))


class FoldableUnary(Unary):
    foldable = True

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        if self.np_fn is None or args[0] is None:
            return None
        return [np.asarray(getattr(np, self.np_fn)(args[0])).astype(args[0].dtype)]


register_many(
    ["Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Reciprocal", "Softplus", "Softsign", "Sin", "Cos",
     "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Round", "Sign", "Selu", "Elu", "Celu", "LeakyRelu", "ThresholdedRelu", "HardSigmoid", "HardSwish", "Mish",
     "Shrink", "BitwiseNot", "Gelu", "Clip"],
    Unary,
)


class Predicate(Unary):
    """IsNaN / IsInf: a bool per element."""

    def infer(self, node: Node) -> list[Type]:
        return [TensorType("bool", ttype(node, 0).shape)]


register_many(["IsNaN", "IsInf"], Predicate)


_FOLDABLE_UNARY = {"Neg": "negative", "Abs": "abs", "Floor": "floor", "Ceil": "ceil", "Sqrt": "sqrt", "Not": "logical_not"}
for _name, _fn in _FOLDABLE_UNARY.items():
    register(type(_name, (FoldableUnary,), {"name": _name, "np_fn": _fn}))


@register
class Identity(Unary):
    name = "Identity"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        return [node.input(0).type]

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        return [args[0]] if args[0] is not None else None


@register
class Dropout(Unary):
    """Inference-mode dropout: the input, plus an all-true mask when asked for."""

    name = "Dropout"

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        out: list[Type] = [TensorType(t.dtype, t.shape)]
        if len(node.outputs) > 1:
            out.append(TensorType("bool", t.shape))
        return out


@register
class PRelu(OpDef):
    name = "PRelu"

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        broadcast(node, [shape_of(node, 0), shape_of(node, 1)])  # slope must broadcast to x
        return [TensorType(t.dtype, t.shape)]

    def cost(self, node: Node) -> Cost:
        return Cost(numel(shape_of(node, 0)), io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        return same_axes(node, [0, 1], len(shape_of(node, 0)))


@register
class Softmax(Unary):
    name = "Softmax"
    flops_per_elem = 4

    def channels(self, node: Node) -> list[AxisGroup]:
        rank = len(shape_of(node, 0))
        axis = int(node.attr("axis", -1)) % max(rank, 1)
        return [g for g in same_axes(node, [0], rank) if g.members[0][2] != axis]


register(type("LogSoftmax", (Softmax,), {"name": "LogSoftmax"}))
register(type("Hardmax", (Softmax,), {"name": "Hardmax"}))


class Binary(OpDef):
    """Two operands, numpy broadcasting, result type = first operand's element type."""

    np_fn: ClassVar[str | None] = None
    result_dtype: ClassVar[str | None] = None  # e.g. "bool" for comparisons
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        a, b = ttype(node, 0), ttype(node, 1)
        if a.dtype != b.dtype and self.result_dtype is None and self.name not in ("Pow", "BitShift"):
            raise InferenceError(f"{node.describe()}: operand types {a.dtype} and {b.dtype} differ")
        if a.shape is None or b.shape is None:
            return [TensorType(self.result_dtype or a.dtype, None)]
        return [TensorType(self.result_dtype or a.dtype, broadcast(node, [a.shape, b.shape]))]

    def cost(self, node: Node) -> Cost:
        out = node.outputs[0].type
        n = numel(out.shape) if isinstance(out, TensorType) and out.shape is not None else 0
        return Cost(n, io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        out = node.outputs[0].type
        if not isinstance(out, TensorType) or out.shape is None:
            return []
        return same_axes(node, [0, 1], len(out.shape))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        a, b = args[0], args[1]
        if self.np_fn is None or a is None or b is None:
            return None
        integer = np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)
        if integer and self.name in ("Div", "Mod") and not np.all(b):
            return None  # integer division by zero: ONNX leaves the result undefined, so it is not folded
        if integer and self.name == "Pow" and np.any(b < 0):
            return None  # numpy refuses negative integer powers
        # float division by zero gives inf/nan silently, as ONNX Runtime does
        with np.errstate(all="ignore"):
            if self.name == "Div" and integer:
                # ONNX integer Div truncates toward zero
                return [np.trunc(a.astype(np.float64) / b.astype(np.float64)).astype(a.dtype)]
            if self.name == "Mod" and int(node.attr("fmod", 0)) == 1:
                return [np.fmod(a, b).astype(a.dtype)]
            res = getattr(np, self.np_fn)(a, b)
            dt = np.dtype(bool) if self.result_dtype == "bool" else a.dtype
            return [np.asarray(res).astype(dt)]


_BINARY: dict[str, str | None] = {
    "Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide", "Pow": "power", "Mod": "mod",
    "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor", "BitShift": None,
}
for _bname, _bfn in _BINARY.items():
    register(type(_bname, (Binary,), {"name": _bname, "np_fn": _bfn}))

_COMPARE = {
    "Equal": "equal", "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
    "GreaterOrEqual": "greater_equal", "And": "logical_and", "Or": "logical_or", "Xor": "logical_xor",
}
for _name, _fn in _COMPARE.items():
    register(type(_name, (Binary,), {"name": _name, "np_fn": _fn, "result_dtype": "bool"}))


class Variadic(Binary):
    """Sum/Max/Min/Mean: any number of broadcasting operands."""

    def infer(self, node: Node) -> list[Type]:
        ts = [ttype(node, i) for i in range(len(node.inputs))]
        if any(t.shape is None for t in ts):
            return [TensorType(ts[0].dtype, None)]
        return [TensorType(ts[0].dtype, broadcast(node, [t.shape for t in ts]))]  # type: ignore[misc]

    def channels(self, node: Node) -> list[AxisGroup]:
        out = node.outputs[0].type
        if not isinstance(out, TensorType) or out.shape is None:
            return []
        return same_axes(node, list(range(len(node.inputs))), len(out.shape))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        if any(a is None for a in args) or self.np_fn is None:
            return None
        arrs = [a for a in args if a is not None]
        res = arrs[0]
        for a in arrs[1:]:
            res = getattr(np, self.np_fn)(res, a)
        if self.name == "Mean":
            res = res / len(arrs)
        return [np.asarray(res).astype(arrs[0].dtype)]


for _name, _fn in {"Sum": "add", "Max": "maximum", "Min": "minimum", "Mean": "add"}.items():
    register(type(_name, (Variadic,), {"name": _name, "np_fn": _fn}))


@register
class Where(OpDef):
    name = "Where"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        c, x, y = ttype(node, 0), ttype(node, 1), ttype(node, 2)
        if c.shape is None or x.shape is None or y.shape is None:
            return [TensorType(x.dtype, None)]
        return [TensorType(x.dtype, broadcast(node, [c.shape, x.shape, y.shape]))]

    def channels(self, node: Node) -> list[AxisGroup]:
        return same_axes(node, [0, 1, 2], len(node.outputs[0].tensor_type.shape or ()))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        c, x, y = args[0], args[1], args[2]
        if c is None or x is None or y is None:
            return None
        return [np.asarray(np.where(c, x, y)).astype(x.dtype)]


@register
class Cast(Unary):
    """Cast to ``to`` (an element type name in the IR)."""

    name = "Cast"
    foldable = True
    dtype_attrs = ("to",)

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        to = node.attr("to")
        if not isinstance(to, str) or not dtypes.is_dtype(to):
            raise InferenceError(f"{node.describe()}: attribute 'to' must be an element type, got {to!r}")
        return [TensorType(to, t.shape)]

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        if args[0] is None or node.attr("to") == "str":
            return None
        try:
            return [args[0].astype(dtypes.to_numpy(node.attr("to")))]
        except (TypeError, ValueError):
            return None


@register
class CastLike(Unary):
    name = "CastLike"

    def infer(self, node: Node) -> list[Type]:
        return [TensorType(ttype(node, 1).dtype, ttype(node, 0).shape)]


# ---- nasc activations: idioms the fuse pass names so that backends can fuse them ----------------


@register
class Relu6(Unary):
    """nasc.Relu6: min(max(x, 0), 6), which ONNX spells Clip(x, 0, 6)."""

    name = "Relu6"
    domain = "nasc"

    def decompose(self, graph: Graph, node: Node) -> list[Value] | None:
        x = node.input(0)
        npdt = dtypes.to_numpy(x.dtype)
        lo = graph.add_constant(np.array(0, npdt), f"{node.name}/zero")
        hi = graph.add_constant(np.array(6, npdt), f"{node.name}/six")
        return [emit(graph, node, "Clip", [x, lo, hi])]


@register
class SiLU(Unary):
    """nasc.SiLU: x * sigmoid(x) (swish)."""

    name = "SiLU"
    domain = "nasc"
    flops_per_elem = 4

    def decompose(self, graph: Graph, node: Node) -> list[Value] | None:
        x = node.input(0)
        return [emit(graph, node, "Mul", [x, emit(graph, node, "Sigmoid", [x])])]
