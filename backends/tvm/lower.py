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

    def __init__(self, bb: relax.BlockBuilder, int8_columns: int | None = None) -> None:
        self.bb = bb
        self.env: dict[int, relax.Expr] = {}
        # the column multiple of the target's tensorized integer matmuls (x86_int8), None elsewhere
        self.int8_columns = int8_columns

    def __call__(self, v: Value | None) -> relax.Expr | None:
        if v is None:
            return None
        if id(v) not in self.env:
            if not v.is_const:
                raise KeyError(f"value %{v.name} has no Relax expression")
            self.env[id(v)] = relax.const(_np(v), tvm_dtype(v.dtype))
        return self.env[id(v)]

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
             int8_columns: int | None = None) -> tvm.IRModule:
    """The Relax module computing ``graph`` (one function, inputs in graph order, a tuple of outputs if several).

    QDQ patterns become integer ops first (qint.integerize); ``facts["integer"]`` then says which ops run
    in integers and which stay in float between a dequantize and a quantize. ``int8_columns``: the column
    multiple the target's tensorized integer matmuls need (x86: 8, or 16 with VNNI); with it, pointwise
    integer convolutions are laid out as matmuls for them. None (microcontrollers): kept as convolutions.
    """
    from nasc.backends.tvm.qint import integerize

    graph, report = integerize(graph)
    if facts is not None and report.integer:
        facts["integer"] = report.to_dict()
    check_coverage(graph)
    bb = relax.BlockBuilder()
    lx = Lx(bb, int8_columns)
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
                    lx.env[id(o)] = e
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
