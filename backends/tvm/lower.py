"""IR -> Relax: a table of lowerings keyed by op name, applied node by node with a BlockBuilder.

A lowering is registered with ``@lowering("Conv")`` (qualified names for other
domains: ``@lowering("nasc.Attention")``), so an op's inference (``ir/ops``) and
its lowering are found by the same name. Constants become ``relax.const`` once
each, however many nodes read them. Ops without a lowering are reported all at
once, with node names and scopes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax

from nasc.errors import UnsupportedModelError
from nasc.ir.core import Graph, Node, Value
from nasc.ir.types import TensorType

Lowering = Callable[["Lx", Node], Any]
LOWERINGS: dict[str, Lowering] = {}


class ChannelsLast:
    """A lowering's 4-D result laid out NHWC (``expr``), for IR values that are NCHW: the next integer
    convolutions read it as it is, other readers get it transposed back (see :meth:`Lx.nhwc`)."""

    def __init__(self, expr: relax.Expr) -> None:
        self.expr = expr


_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i8": "int8", "i16": "int16",
           "i32": "int32", "i64": "int64", "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
           "bool": "bool"}


def tvm_dtype(dtype: str) -> str:
    if dtype not in _DTYPES:
        raise UnsupportedModelError(f"element type {dtype} has no TVM lowering")
    return _DTYPES[dtype]


def lowering(*names: str) -> Callable[[Lowering], Lowering]:
    def deco(fn: Lowering) -> Lowering:
        for n in names:
            if n in LOWERINGS:
                raise ValueError(f"lowering for {n} registered twice")
            LOWERINGS[n] = fn
        return fn

    return deco


class Lx:
    """What a lowering works with: the block builder and the Relax expression of every IR value."""

    def __init__(self, bb: relax.BlockBuilder, int8_nhwc: bool = False) -> None:
        self.bb = bb
        self.env: dict[int, relax.Expr] = {}
        # 4-D values also (or only) held channels-last: the integer convolutions' layout on x86
        self.env_nhwc: dict[int, relax.Expr] = {}
        # integer convolutions channels-last, pointwise ones as the tensorized integer matmuls (x86_int8)
        self.int8_nhwc = int8_nhwc

    def __call__(self, v: Value | None) -> relax.Expr | None:
        if v is None:
            return None
        if id(v) not in self.env:
            if id(v) in self.env_nhwc:  # computed channels-last: transposed back once, where a reader needs it
                self.env[id(v)] = self.bb.emit(relax.op.permute_dims(self.env_nhwc[id(v)], [0, 3, 1, 2]))
            elif not v.is_const:
                raise KeyError(f"value %{v.name} has no Relax expression")
            else:
                self.env[id(v)] = relax.const(_np(v), tvm_dtype(v.dtype))
        return self.env[id(v)]

    def nhwc(self, node: Node, i: int = 0) -> relax.Expr:
        """Input ``i`` (4-D, NCHW in the IR) laid out NHWC: as its producer computed it, else transposed once."""
        v = node.input(i)
        if id(v) not in self.env_nhwc:
            self.env_nhwc[id(v)] = self.bb.emit(relax.op.permute_dims(self.x(node, i), [0, 2, 3, 1]))
        return self.env_nhwc[id(v)]

    def is_nhwc(self, node: Node, i: int = 0) -> bool:
        """Whether input ``i`` is at hand channels-last."""
        return id(node.input(i)) in self.env_nhwc

    def set(self, v: Value, expr: relax.Expr | ChannelsLast) -> None:
        """Record ``v``'s expression as a lowering returned it (NCHW, or NHWC wrapped in ChannelsLast)."""
        if isinstance(expr, ChannelsLast):
            self.env_nhwc[id(v)] = expr.expr
        else:
            self.env[id(v)] = expr

    def transposed_const(self, v: Value) -> relax.Expr:
        """A 2-D constant transposed, once per value: a weight that several Gemm(transB=1) read (tied layers)
        stays one constant instead of one folded transpose per reader."""
        key = -id(v)  # beside self.env's keys: ids are positive
        if key not in self.env:
            self.env[key] = relax.const(np.ascontiguousarray(_np(v).T), tvm_dtype(v.dtype))
        return self.env[key]

    def x(self, node: Node, i: int = 0) -> relax.Expr:
        e = self(node.input(i))
        assert e is not None
        return e

    def emit(self, expr: relax.Expr) -> relax.Expr:
        return self.bb.emit(expr)

    def const(self, array: Any, dtype: str) -> relax.Expr:
        return relax.const(np.asarray(array).astype(tvm_dtype(dtype)), tvm_dtype(dtype))


def _np(v: Value) -> np.ndarray:
    arr = v.data
    if v.dtype == "bf16":
        return arr.astype(np.float32)
    return np.require(arr, requirements="C")  # (ascontiguousarray would make a 0-d array 1-d)


def check_coverage(graph: Graph) -> None:
    from nasc.backends.tvm import ops, qops  # noqa: F401  (registration side effects)

    missing = [n for n in graph.nodes if n.qualified_op not in LOWERINGS]
    if missing:
        rows = "; ".join(f"{n.qualified_op} at node '{n.name or '?'}'" + (f" (scope '{n.scope}')" if n.scope else "")
                         for n in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        ops = sorted({n.qualified_op for n in missing})
        raise UnsupportedModelError(
            f"{len(missing)} node(s) of {len(ops)} op(s) {ops} have no TVM lowering: {rows}{more}. "
            "Use --target onnx for this model, or simplify it first (--passes simplify)"
        )
    bad_types = [v for v in graph.values() if not isinstance(v.type, TensorType) or not v.type.is_static]
    if bad_types:
        v = bad_types[0]
        raise UnsupportedModelError(f"value %{v.name} has type {v.type}; TVM builds need static tensor shapes")


def to_relax(graph: Graph, func_name: str = "main", facts: dict[str, Any] | None = None,
             int8_nhwc: bool = False) -> tvm.IRModule:
    """The Relax module computing ``graph`` (one function, inputs in graph order, a tuple of outputs if several).

    QDQ patterns become integer ops first (qint.integerize); ``facts["integer"]`` then says which ops run
    in integers and which stay in float between a dequantize and a quantize. ``int8_nhwc`` (x86 CPUs): integer
    convolutions run channels-last, pointwise ones as the tensorized integer matmuls; the values between them
    (residual adds, the pooling) stay channels-last, and a reader that needs NCHW gets one transpose. Off
    (microcontrollers): NCHW convolutions, no transposes in the arena.
    """
    from nasc.backends.tvm.qint import integerize

    graph, report = integerize(graph)
    if facts is not None and report.integer:
        facts["integer"] = report.to_dict() | {"conv_layout": "NHWC" if int8_nhwc else "NCHW"}
    check_coverage(graph)
    bb = relax.BlockBuilder()
    lx = Lx(bb, int8_nhwc)
    params = []
    for v in graph.inputs:
        var = relax.Var(v.name or f"input{len(params)}", relax.TensorType(v.shape, tvm_dtype(v.dtype)))
        lx.env[id(v)] = var
        params.append(var)
    with bb.function(func_name, params):
        with bb.dataflow():
            for node in graph.nodes:
                empty = [o.type.is_static and 0 in o.shape for o in node.outputs]
                if all(empty):  # zero-size results need no computing (TVM's reshape reads a 0 as "keep this dim")
                    outs = [lx.emit(relax.op.builtin.alloc_tensor(relax.ShapeExpr(list(o.shape)),
                                                                 tvm_dtype(o.dtype), 0)) for o in node.outputs]
                else:
                    out = LOWERINGS[node.qualified_op](lx, node)
                    outs = list(out) if isinstance(out, list | tuple) else [out]
                for o, e in zip(node.outputs, outs):
                    lx.set(o, e)
            results = [lx(v) for v in graph.outputs]
            ret = bb.emit_output(results[0] if len(results) == 1 else relax.Tuple(results))
        bb.emit_func_output(ret)
    return bb.get()


def ints(v: Value | None) -> list[int] | None:
    """The contents of a constant integer operand."""
    if v is None:
        return None
    if not v.is_const:
        raise UnsupportedModelError(f"operand %{v.name} must be a constant for the TVM lowering (run --passes simplify)")
    return [int(x) for x in np.asarray(v.data).reshape(-1)]


def scalar(v: Value | None) -> float | None:
    if v is None:
        return None
    if not v.is_const:
        raise UnsupportedModelError(f"operand %{v.name} must be a constant for the TVM lowering")
    return float(np.asarray(v.data).reshape(-1)[0])


def out_shape(node: Node, i: int = 0) -> list[int]:
    return list(node.outputs[i].shape)


def seq(values: Sequence[int]) -> list[int]:
    return [int(v) for v in values]
