"""Registry entries of nn / norm / pool / quantization ops: inference against ONNX, costs, channel groups, errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import nasc.ir.ops.nn  # noqa: F401  (registers the ops under test)
from nasc.ir.core import Graph, Node
from nasc.ir.ops.registry import AxisGroup, InferenceError, lookup, lookup_node
from nasc.ir.types import UNKNOWN, TensorType

ONNX_DT = {
    "f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "f64": TensorProto.DOUBLE, "bf16": TensorProto.BFLOAT16,
    "u8": TensorProto.UINT8, "i8": TensorProto.INT8, "i32": TensorProto.INT32, "i64": TensorProto.INT64,
    "i4": TensorProto.INT4, "u4": TensorProto.UINT4, "i16": TensorProto.INT16, "u16": TensorProto.UINT16,
}
IR_DT = {v: k for k, v in ONNX_DT.items()}

Operand = tuple[str, tuple[Any, ...] | None] | None


def ir_node(op: str, operands: list[Operand], attrs: dict[str, Any] | None = None, n_out: int = 1,
            domain: str = "") -> Node:
    """A one-node IR graph; operands are (dtype, shape) graph inputs, or None when omitted."""
    g = Graph()
    vals = [None if o is None else g.add_input(f"in{i}", TensorType(o[0], o[1])) for i, o in enumerate(operands)]
    return g.make_node(op, vals, [TensorType("f32", None)] * n_out, attrs or {}, domain=domain, name=f"{op.lower()}0")


def ir_infer(op: str, operands: list[Operand], attrs: dict[str, Any] | None = None, n_out: int = 1,
             domain: str = "") -> list[tuple[str, tuple[Any, ...] | None]]:
    node = ir_node(op, operands, attrs, n_out, domain)
    entry = lookup(op, domain)
    assert entry is not None
    return [(t.dtype, t.shape) for t in entry.infer(node)]  # type: ignore[union-attr]


def onnx_infer(op: str, operands: list[Operand], attrs: dict[str, Any] | None = None,
               n_out: int = 1) -> list[tuple[str, tuple[Any, ...] | None]]:
    """The same node as a one-node ONNX model (opset 21), through strict ONNX shape inference."""
    attrs = dict(attrs or {})
    for k in ("output_dtype", "stash_type"):
        if isinstance(attrs.get(k), str):
            attrs[k] = ONNX_DT[attrs[k]]
    ins, names = [], []
    for i, o in enumerate(operands):
        if o is None:
            names.append("")
            continue
        names.append(f"in{i}")
        ins.append(helper.make_tensor_value_info(f"in{i}", ONNX_DT[o[0]], None if o[1] is None else list(o[1])))
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    graph = helper.make_graph([node], "g", ins, [helper.make_empty_tensor_value_info(n) for n in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {vi.name: vi.type.tensor_type for vi in (*inferred.graph.value_info, *inferred.graph.output)}
    res = []
    for n in outs:
        tt = types[n]
        shape = None
        if tt.HasField("shape"):
            shape = tuple(_dim(d) for d in tt.shape.dim)
        res.append((IR_DT[tt.elem_type], shape))
    return res


def _dim(d: Any) -> Any:
    if d.HasField("dim_value"):
        return d.dim_value
    # anonymous dims come back as fresh symbols "unk__N"; nasc writes UNKNOWN there
    return UNKNOWN if not d.dim_param or d.dim_param.startswith("unk__") else d.dim_param


def agree(op: str, operands: list[Operand], attrs: dict[str, Any] | None = None, n_out: int = 1) -> list[Any]:
    ours = ir_infer(op, operands, attrs, n_out)
    theirs = onnx_infer(op, operands, attrs, n_out)
    assert ours == theirs, f"{op} {attrs}: nasc {ours} vs onnx {theirs}"
    return ours


def f32(*shape: Any) -> Operand:
    return ("f32", tuple(shape))


# ---- inference agrees with ONNX ------------------------------------------------------

CONV_CASES = [
    ([f32(1, 3, 8, 8), f32(4, 3, 3, 3)], {}),
    ([f32(1, 3, 8, 8), f32(4, 3, 3, 3), f32(4)], {"pads": [1, 1, 1, 1]}),
    ([f32(2, 3, 9, 10), f32(8, 3, 3, 3)], {"strides": [2, 2], "pads": [1, 0, 1, 0]}),
    ([f32(1, 3, 16, 16), f32(4, 3, 3, 3)], {"dilations": [2, 2], "strides": [2, 1]}),
    ([f32(1, 3, 15, 16), f32(4, 3, 3, 3)], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ([f32(1, 3, 15, 16), f32(4, 3, 4, 4)], {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ([f32(1, 3, 15, 16), f32(4, 3, 3, 3)], {"auto_pad": "VALID", "strides": [2, 2]}),
    ([f32(1, 8, 8, 8), f32(16, 2, 3, 3)], {"group": 4, "kernel_shape": [3, 3]}),
    ([f32(1, 8, 8, 8), f32(8, 1, 3, 3), f32(8)], {"group": 8, "pads": [1, 1, 1, 1]}),
    ([f32(1, 3, 20), f32(6, 3, 5)], {"strides": [3]}),
    ([f32(1, 3, 6, 6, 6), f32(2, 3, 3, 3, 3)], {"pads": [0, 1, 1, 1, 0, 1]}),
    ([f32("N", 3, 8, 8), f32(4, 3, 3, 3)], {}),
    ([f32("N", 3, "H", 8), f32(4, 3, 3, 3)], {"strides": [2, 2]}),
    (["f16", (1, 3, 8, 8)], None),
]


@pytest.mark.parametrize(("operands", "attrs"), [c for c in CONV_CASES if c[1] is not None])
def test_conv_matches_onnx(operands: list[Operand], attrs: dict[str, Any]) -> None:
    agree("Conv", operands, attrs)


def test_conv_f16_and_unknown_spatial() -> None:
    assert agree("Conv", [("f16", (1, 3, 8, 8)), ("f16", (4, 3, 3, 3))])[0] == ("f16", (1, 4, 6, 6))
    assert ir_infer("Conv", [f32(1, 3, "H", 8), f32(4, 3, 3, 3)]) == [("f32", (1, 4, UNKNOWN, 6))]
    assert ir_infer("Conv", [("f32", None), f32(4, 3, 3, 3)]) == [("f32", None)]
    assert ir_infer("Conv", [f32(1, 3, 8, 8), ("f32", None)]) == [("f32", (1, UNKNOWN, UNKNOWN, UNKNOWN))]


@pytest.mark.parametrize(
    ("operands", "attrs"),
    [
        ([f32(1, 4, 5, 5), f32(4, 2, 3, 3)], {}),
        ([f32(1, 4, 5, 5), f32(4, 2, 3, 3), f32(2)], {"strides": [2, 2]}),
        ([f32(1, 4, 5, 5), f32(4, 2, 3, 3)], {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
        ([f32(1, 4, 5, 6), f32(4, 2, 3, 3)], {"strides": [2, 2], "dilations": [2, 1]}),
        ([f32(1, 4, 5, 5), f32(4, 2, 3, 3)], {"strides": [2, 2], "output_shape": [10, 10]}),
        ([f32(1, 4, 5, 5), f32(4, 2, 4, 4)], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ([f32(1, 4, 5, 5), f32(4, 2, 3, 3)], {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
        ([f32(1, 4, 7), f32(4, 3, 3)], {"group": 2, "strides": [3]}),
        ([f32(2, 6, 4, 4), f32(6, 1, 2, 2)], {"group": 6, "strides": [2, 2]}),
        ([f32("N", 4, "H", 5), f32(4, 2, 3, 3)], {"strides": [2, 2]}),
    ],
)
def test_conv_transpose_matches_onnx(operands: list[Operand], attrs: dict[str, Any]) -> None:
    agree("ConvTranspose", operands, attrs)


def test_conv_transpose_same_doubles() -> None:
    out = ir_infer("ConvTranspose", [f32(1, 4, 5, 5), f32(4, 2, 3, 3)], {"strides": [2, 2], "auto_pad": "SAME_UPPER"})
    assert out == [("f32", (1, 2, 10, 10))]


@pytest.mark.parametrize(
    ("operands", "attrs"),
    [
        ([("u8", (1, 3, 8, 8)), ("u8", (4, 3, 3, 3))], {}),
        ([("u8", (1, 3, 8, 8)), ("i8", (4, 3, 3, 3)), ("u8", ()), ("i8", (4,))], {"pads": [1, 1, 1, 1]}),
        ([("i8", (1, 4, 9, 9)), ("i8", (4, 2, 3, 3))], {"group": 2, "strides": [2, 2]}),
    ],
)
def test_conv_integer_matches_onnx(operands: list[Operand], attrs: dict[str, Any]) -> None:
    assert agree("ConvInteger", operands, attrs)[0][0] == "i32"


@pytest.mark.parametrize(
    ("operands", "attrs"),
    [
        ([f32(4, 5), f32(5, 6)], {}),
        ([f32(5, 4), f32(5, 6), f32(6)], {"transA": 1}),
        ([f32(4, 5), f32(6, 5), f32(4, 6)], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
        ([f32(5, 4), f32(6, 5), f32(1, 6)], {"transA": 1, "transB": 1}),
        ([f32(4, 5), f32(5, 6), f32(4, 1)], {}),
        ([f32(4, 5), f32(5, 6), f32()], {}),
        ([f32("M", 5), f32(5, 6), f32(6)], {}),
    ],
)
def test_gemm_matches_onnx(operands: list[Operand], attrs: dict[str, Any]) -> None:
    agree("Gemm", operands, attrs)


@pytest.mark.parametrize(
    "operands",
    [
        [f32(3, 4), f32(4, 5)],
        [f32(2, 3, 4), f32(4, 5)],
        [f32(4), f32(4, 5)],
        [f32(3, 4), f32(4)],
        [f32(4), f32(4)],
        [f32(2, 1, 3, 4), f32(5, 4, 6)],
        [f32(7, 4), f32(2, 3, 4, 6)],
        [f32(4), f32(2, 3, 4, 6)],
        [f32(2, 3, 3, 4), f32(4)],
        [f32("B", 3, 4), f32(4, 5)],
        [f32("B", "S", 4), f32("B", 4, 5)],
    ],
)
def test_matmul_matches_onnx(operands: list[Operand]) -> None:
    agree("MatMul", operands)


@pytest.mark.parametrize(
    "operands",
    [
        [("u8", (3, 4)), ("u8", (4, 5))],
        [("u8", (2, 3, 4)), ("i8", (4, 5)), ("u8", ()), ("i8", (5,))],
        [("i8", (4,)), ("i8", (2, 4, 5))],
    ],
)
def test_matmul_integer_matches_onnx(operands: list[Operand]) -> None:
    assert agree("MatMulInteger", operands)[0][0] == "i32"


def test_batchnorm_matches_onnx() -> None:
    c = [f32(4)] * 4
    agree("BatchNormalization", [f32(2, 4, 5, 5), *c])
    agree("BatchNormalization", [f32(2, 4), *c])
    agree("BatchNormalization", [f32(2, 4, 7), *c], {"epsilon": 1e-3, "momentum": 0.8})
    agree("BatchNormalization", [("f16", (2, 4, 5)), ("f16", (4,)), ("f16", (4,)), *c[:2]], {"training_mode": 1},
          n_out=3)
    # inference form with the extra outputs present: typed [C] by mean/var's type (ONNX rejects this form)
    out = ir_infer("BatchNormalization", [f32(2, 4, 5, 5), *c], n_out=3)
    assert out == [("f32", (2, 4, 5, 5)), ("f32", (4,)), ("f32", (4,))]


@pytest.mark.parametrize(
    ("operands", "attrs", "n_out"),
    [
        ([f32(2, 5, 8), f32(8), f32(8)], {}, 1),
        ([f32(2, 5, 8), f32(5, 8)], {"axis": 1}, 3),
        ([f32(2, 5, 8), f32(8), f32(8)], {"axis": -1}, 2),
        ([("f16", (2, 5, 8)), ("f16", (8,))], {}, 3),
        ([("f16", (2, 5, 8)), ("f16", (8,))], {"stash_type": "f32"}, 3),
        ([f32(3, 4, 5, 6), f32(4, 5, 6)], {"axis": -3}, 3),
    ],
)
def test_layernorm_matches_onnx(operands: list[Operand], attrs: dict[str, Any], n_out: int) -> None:
    out = agree("LayerNormalization", operands, attrs, n_out)
    for dt, _ in out[1:]:
        assert dt == "f32"


def test_other_norms_match_onnx() -> None:
    agree("InstanceNormalization", [f32(2, 4, 5, 5), f32(4), f32(4)])
    agree("InstanceNormalization", [f32(2, 4, 7), f32(4), f32(4)], {"epsilon": 1e-3})
    # GroupNormalization is an ONNX function without a shape inference of its own: checked by hand
    assert ir_infer("GroupNormalization", [f32(2, 6, 5, 5), f32(6), f32(6)], {"num_groups": 3}) \
        == [("f32", (2, 6, 5, 5))]
    assert ir_infer("GroupNormalization", [("f16", (2, 8, 5)), ("f16", (8,)), ("f16", (8,))],
                    {"num_groups": 2, "epsilon": 1e-3, "stash_type": "f32"}) == [("f16", (2, 8, 5))]
    agree("LpNormalization", [f32(2, 6, 5)], {"axis": 1, "p": 1})
    agree("LpNormalization", [f32(2, 6, 5)])


POOL_CASES = [
    ({"kernel_shape": [2, 2]}, (1, 3, 8, 8)),
    ({"kernel_shape": [3, 3], "strides": [2, 2]}, (1, 3, 8, 8)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, (1, 3, 8, 8)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, (1, 3, 8, 8)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, (1, 3, 9, 8)),
    ({"kernel_shape": [3, 2], "strides": [2, 3], "auto_pad": "SAME_LOWER"}, (1, 3, 9, 8)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}, (1, 3, 9, 8)),
    ({"kernel_shape": [3, 3], "dilations": [2, 2]}, (2, 3, 11, 11)),
    ({"kernel_shape": [2, 3], "dilations": [2, 1], "strides": [2, 1], "ceil_mode": 1}, (1, 3, 10, 9)),
    ({"kernel_shape": [3], "strides": [2]}, (1, 3, 10)),
    ({"kernel_shape": [2, 2, 2], "strides": [2, 2, 2]}, (1, 3, 4, 5, 6)),
    ({"kernel_shape": [2, 2]}, ("N", 3, 8, 8)),
    ({"kernel_shape": [2, 2], "strides": [2, 2]}, ("N", "C", "H", 8)),
]


@pytest.mark.parametrize(("attrs", "shape"), POOL_CASES)
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "LpPool"])
def test_pools_match_onnx(op: str, attrs: dict[str, Any], shape: tuple[Any, ...]) -> None:
    attrs = dict(attrs)
    if op == "AveragePool":
        attrs["count_include_pad"] = 1
    if op == "LpPool":
        attrs["p"] = 3
    agree(op, [f32(*shape)], attrs)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "LpPool"])
def test_pool_ceil_mode_drops_window_starting_in_end_padding(op: str) -> None:
    # ONNX's opset-21 shape inference says 5 here, but ONNX Runtime (at opset 21 too), PyTorch and ONNX's
    # opset-22 inference say 4: the last window would start inside the end padding. nasc follows the runtime.
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}
    assert ir_infer(op, [f32(1, 3, 7, 7)], attrs) == [("f32", (1, 3, 4, 4))]
    assert onnx_infer(op, [f32(1, 3, 7, 7)], attrs) == [("f32", (1, 3, 5, 5))]


def test_maxpool_indices_and_int8() -> None:
    out = agree("MaxPool", [f32(1, 3, 8, 8)], {"kernel_shape": [2, 2], "strides": [2, 2]}, n_out=2)
    assert out == [("f32", (1, 3, 4, 4)), ("i64", (1, 3, 4, 4))]
    agree("MaxPool", [("u8", (1, 3, 8, 8))], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})


def test_global_pools_match_onnx() -> None:
    for op in ("GlobalAveragePool", "GlobalMaxPool"):
        agree(op, [f32(2, 3, 8, 7)])
        agree(op, [f32(2, 3, 8)])
        agree(op, [f32(2, 3, 4, 5, 6)])
        agree(op, [f32("N", 3, 8, 7)])


@pytest.mark.parametrize(
    ("operands", "attrs"),
    [
        ([f32(2, 3, 4), f32()], {}),
        ([f32(2, 3, 4), f32(), ("i8", ())], {}),
        ([f32(2, 3, 4), f32(3), ("u8", (3,))], {"axis": 1}),
        ([f32(2, 3, 4), f32(4), ("i8", (4,))], {"axis": -1}),
        ([f32(2, 3, 4), f32()], {"output_dtype": "i8"}),
        ([f32(2, 3, 4), f32(2, 3, 2), ("i8", (2, 3, 2))], {"axis": 2, "block_size": 2}),
        ([f32(2, 3, 5), f32(2, 3, 2), ("i4", (2, 3, 2))], {"axis": -1, "block_size": 3}),
        ([("f16", (2, 3, 4)), ("f16", (3,))], {"axis": 1, "output_dtype": "u8"}),
    ],
)
def test_quantize_matches_onnx(operands: list[Operand], attrs: dict[str, Any]) -> None:
    agree("QuantizeLinear", operands, attrs)


@pytest.mark.parametrize(
    ("operands", "attrs"),
    [
        ([("u8", (2, 3, 4)), f32()], {}),
        ([("i8", (2, 3, 4)), f32(), ("i8", ())], {}),
        ([("i8", (2, 3, 4)), ("f16", (3,)), ("i8", (3,))], {"axis": 1}),
        ([("i32", (2, 3, 4)), f32(4)], {"axis": 2}),
        ([("i4", (2, 3, 4)), f32(2, 3, 2)], {"axis": 2, "block_size": 2}),
    ],
)
def test_dequantize_matches_onnx(operands: list[Operand], attrs: dict[str, Any]) -> None:
    agree("DequantizeLinear", operands, attrs)


# ---- Graph API with constants, and the nasc Attention op --------------------------------------


def test_conv_from_graph_constants() -> None:
    g = Graph()
    x = g.add_input("x", TensorType("f32", (1, 3, 8, 8)))
    w = g.add_constant(np.zeros((4, 3, 3, 3), np.float32), "w")
    b = g.add_constant(np.zeros((4,), np.float32), "b")
    node = g.make_node("Conv", [x, w, b], [TensorType("f32", None)], {"strides": (2, 2), "pads": (1, 1, 1, 1)})
    entry = lookup("Conv")
    assert entry is not None and lookup_node(node) is entry
    assert entry.infer(node) == [TensorType("f32", (1, 4, 4, 4))]


def test_attention_inference() -> None:
    out = ir_infer("Attention", [f32(2, 8, 10, 64), f32(2, 8, 12, 64), f32(2, 8, 12, 32)], domain="nasc")
    assert out == [("f32", (2, 8, 10, 32))]
    out = ir_infer("Attention", [("f16", (1, 4, 5, 16))] * 3 + [("f16", (1, 1, 5, 5))], {"scale": 0.5},
                   domain="nasc")
    assert out == [("f16", (1, 4, 5, 16))]
    out = ir_infer("Attention", [f32("B", 4, "S", 16), f32("B", 4, 7, 16), f32(1, 4, 7, 8), f32(7)], domain="nasc")
    assert out == [("f32", (1, 4, "S", 8))]
    assert ir_infer("Attention", [("f32", None), f32(1, 4, 7, 16), f32(1, 4, 7, 8)], domain="nasc") == [("f32", None)]
    entry = lookup("Attention", "nasc")
    assert entry is not None and lookup("Attention") is None  # ONNX's Attention is more general: carried opaquely
    node = ir_node("Attention", [f32(2, 8, 10, 64), f32(2, 8, 12, 64), f32(2, 8, 12, 32)], domain="nasc")
    assert entry.cost(node).macs == 2 * 8 * 10 * 12 * (64 + 32)
    assert math.isclose(entry.scale(node), 1 / 8)  # type: ignore[attr-defined]
    groups = entry.channels(node)
    assert AxisGroup((("in", 0, 1), ("in", 1, 1), ("in", 2, 1), ("out", 0, 1))) in groups
    assert AxisGroup((("in", 0, 3), ("in", 1, 3))) in groups
    assert AxisGroup((("in", 2, 3), ("out", 0, 3))) in groups


@pytest.mark.parametrize(
    ("operands", "match"),
    [
        ([f32(1, 4, 5, 16), f32(1, 4, 7, 8), f32(1, 4, 7, 8)], "head sizes"),
        ([f32(1, 4, 5, 16), f32(1, 4, 7, 16), f32(1, 4, 6, 8)], "sequence lengths"),
        ([f32(1, 4, 5, 16), f32(1, 2, 7, 16), f32(1, 4, 7, 8)], "head counts"),
        ([f32(4, 5, 16), f32(1, 4, 7, 16), f32(1, 4, 7, 8)], "must be"),
        ([f32(1, 4, 5, 16), f32(1, 4, 7, 16), f32(1, 4, 7, 8), f32(1, 1, 5, 6)], "mask"),
    ],
)
def test_attention_errors(operands: list[Operand], match: str) -> None:
    with pytest.raises(InferenceError, match=match) as exc:
        ir_infer("Attention", operands, domain="nasc")
    assert "attention0" in str(exc.value)


# ---- costs --------------------------------------------------------------------------------------


def cost(op: str, operands: list[Operand], attrs: dict[str, Any] | None = None, n_out: int = 1) -> tuple[int, int]:
    node = ir_node(op, operands, attrs, n_out)
    entry = lookup(op)
    assert entry is not None
    c = entry.cost(node)
    return c.macs, c.bytes


def test_conv_macs() -> None:
    # out [1, 4, 6, 6]; each output: Cin 3 x 3x3 kernel
    assert cost("Conv", [f32(1, 3, 8, 8), f32(4, 3, 3, 3)])[0] == 1 * 4 * 6 * 6 * 3 * 9
    # grouped: out [2, 16, 4, 4] (stride 2, pad 1), Cin/group = 2
    assert cost("Conv", [f32(2, 8, 8, 8), f32(16, 2, 3, 3)], {"group": 4, "strides": [2, 2], "pads": [1] * 4})[0] \
        == 2 * 16 * 4 * 4 * 2 * 9
    # depthwise
    assert cost("Conv", [f32(1, 8, 8, 8), f32(8, 1, 3, 3)], {"group": 8, "pads": [1] * 4})[0] == 8 * 64 * 9
    # transpose: every input pixel x Cout/group x kernel
    assert cost("ConvTranspose", [f32(1, 4, 5, 5), f32(4, 2, 3, 3)], {"strides": [2, 2]})[0] == 4 * 25 * 2 * 9


def test_conv_bytes() -> None:
    # the result type recorded on the node is unknown (None shape), so bytes count operands only
    assert cost("Conv", [f32(1, 3, 8, 8), f32(4, 3, 3, 3)])[1] == 4 * (3 * 64 + 4 * 27)


def test_gemm_and_matmul_macs() -> None:
    assert cost("Gemm", [f32(4, 5), f32(5, 6)])[0] == 4 * 5 * 6
    assert cost("Gemm", [f32(5, 4), f32(6, 5), f32(6)], {"transA": 1, "transB": 1})[0] == 4 * 5 * 6
    assert cost("MatMul", [f32(3, 4), f32(4, 5)])[0] == 60
    assert cost("MatMul", [f32(2, 1, 3, 4), f32(5, 4, 6)])[0] == 10 * 3 * 4 * 6
    assert cost("MatMul", [f32(4), f32(4, 5)])[0] == 20
    assert cost("MatMul", [f32(4), f32(4)])[0] == 4
    assert cost("MatMul", [f32("B", 3, 4), f32(4, 5)])[0] == 0  # unknown batch: no estimate


def test_other_macs() -> None:
    assert cost("MaxPool", [f32(1, 3, 8, 8)], {"kernel_shape": [2, 2], "strides": [2, 2]})[0] == 3 * 16 * 4
    assert cost("GlobalAveragePool", [f32(1, 3, 8, 8)])[0] == 3 * 64
    assert cost("BatchNormalization", [f32(2, 4, 5, 5)] + [f32(4)] * 4)[0] == 200
    assert cost("LayerNormalization", [f32(2, 5, 8), f32(8)])[0] == 80


# ---- channel groups -----------------------------------------------------------------------------


def groups(op: str, operands: list[Operand], attrs: dict[str, Any] | None = None, n_out: int = 1,
           ) -> list[set[tuple[str, int, int]]]:
    node = ir_node(op, operands, attrs, n_out)
    entry = lookup(op)
    assert entry is not None
    return [set(g.members) for g in entry.channels(node)]


def test_conv_channels() -> None:
    gs = groups("Conv", [f32(1, 3, 8, 8), f32(4, 3, 3, 3), f32(4)])
    assert {("out", 0, 1), ("in", 1, 0), ("in", 2, 0)} in gs
    assert {("in", 0, 1), ("in", 1, 1)} in gs
    gs = groups("Conv", [f32(1, 3, 8, 8), f32(4, 3, 3, 3)])
    assert {("out", 0, 1), ("in", 1, 0)} in gs
    # depthwise: one group through the node
    gs = groups("Conv", [f32(1, 8, 8, 8), f32(8, 1, 3, 3), f32(8)], {"group": 8})
    assert {("in", 0, 1), ("out", 0, 1), ("in", 1, 0), ("in", 2, 0)} in gs
    assert not any(("in", 1, 1) in g for g in gs)
    # grouped: local input channel j of every group with weight column j; outputs equal in number per group
    node = ir_node("Conv", [f32(1, 8, 8, 8), f32(16, 2, 3, 3)], {"group": 4})
    full = lookup("Conv").channels(node)  # type: ignore[union-attr]
    assert AxisGroup((("in", 0, 1), ("in", 1, 1)), "digit", (1, 2)) in full
    assert AxisGroup((("out", 0, 1), ("in", 1, 0)), "modulo", (4,)) in full
    # a channel multiplier: input c feeds outputs 2c and 2c+1
    node = ir_node("Conv", [f32(1, 8, 8, 8), f32(16, 1, 3, 3)], {"group": 8})
    assert AxisGroup((("out", 0, 1), ("in", 0, 1)), "digit", (2, 8)) in lookup("Conv").channels(node)  # type: ignore[union-attr]
    # transpose mirrors: W [Cin, Cout, k...]
    gs = groups("ConvTranspose", [f32(1, 4, 5, 5), f32(4, 2, 3, 3), f32(2)])
    assert {("out", 0, 1), ("in", 1, 1), ("in", 2, 0)} in gs
    assert {("in", 0, 1), ("in", 1, 0)} in gs


def test_gemm_channels() -> None:
    gs = groups("Gemm", [f32(4, 5), f32(5, 6), f32(6)])
    assert {("in", 0, 1), ("in", 1, 0)} in gs
    assert {("in", 1, 1), ("in", 2, 0), ("out", 0, 1)} in gs
    assert {("in", 0, 0), ("out", 0, 0)} in gs
    gs = groups("Gemm", [f32(5, 4), f32(6, 5), f32(1, 6)], {"transA": 1, "transB": 1})
    assert {("in", 0, 0), ("in", 1, 1)} in gs
    assert {("in", 1, 0), ("in", 2, 1), ("out", 0, 1)} in gs
    assert {("in", 0, 1), ("out", 0, 0)} in gs
    gs = groups("Gemm", [f32(4, 5), f32(5, 6), f32(1)])  # broadcast C joins nothing
    assert {("in", 1, 1), ("out", 0, 1)} in gs


def test_matmul_channels() -> None:
    gs = groups("MatMul", [f32(2, 3, 4), f32(4, 5)])
    assert {("in", 0, 1), ("out", 0, 1)} in gs
    assert {("in", 0, 2), ("in", 1, 0)} in gs
    assert {("in", 1, 1), ("out", 0, 2)} in gs
    assert {("in", 0, 0), ("out", 0, 0)} in gs
    gs = groups("MatMul", [f32(2, 1, 3, 4), f32(5, 4, 6)])
    assert {("out", 0, 0), ("in", 0, 0)} in gs
    assert {("out", 0, 1), ("in", 1, 0)} in gs  # A's batch dim is 1 there: broadcast
    assert {("in", 0, 3), ("in", 1, 1)} in gs
    assert {("in", 1, 2), ("out", 0, 3)} in gs
    gs = groups("MatMul", [f32(4), f32(4, 5)])
    assert gs == [{("in", 0, 0), ("in", 1, 0)}, {("in", 1, 1), ("out", 0, 0)}]
    gs = groups("MatMul", [f32(3, 4), f32(4)])
    assert gs == [{("in", 0, 0), ("out", 0, 0)}, {("in", 0, 1), ("in", 1, 0)}]


def test_norm_pool_quant_channels() -> None:
    gs = groups("BatchNormalization", [f32(2, 4, 5, 5)] + [f32(4)] * 4)
    assert {("in", 0, 1), ("out", 0, 1), ("in", 1, 0), ("in", 2, 0), ("in", 3, 0), ("in", 4, 0)} in gs
    gs = groups("LayerNormalization", [f32(2, 5, 8), f32(8), f32(8)])
    assert gs == [{("in", 0, 0), ("out", 0, 0)}, {("in", 0, 1), ("out", 0, 1)},
                  {("in", 0, 2), ("out", 0, 2), ("in", 1, 0), ("in", 2, 0)}]
    node = ir_node("LayerNormalization", [f32(2, 5, 8), f32(8), f32(8)])
    assert "normalizes over this axis" in lookup("LayerNormalization").channels(node)[2].inexact  # type: ignore[union-attr]
    gs = groups("MaxPool", [f32(1, 3, 8, 8)], {"kernel_shape": [2, 2]}, n_out=2)
    assert {("in", 0, 1), ("out", 0, 1), ("out", 1, 1)} in gs
    gs = groups("QuantizeLinear", [f32(2, 3, 4), f32(3), ("i8", (3,))], {"axis": 1})
    assert gs == [{("in", 0, 0), ("out", 0, 0)}, {("in", 0, 1), ("out", 0, 1), ("in", 1, 0), ("in", 2, 0)},
                  {("in", 0, 2), ("out", 0, 2)}]
    gs = groups("DequantizeLinear", [("i8", (2, 3, 4)), f32()])
    assert gs == [{("in", 0, k), ("out", 0, k)} for k in range(3)]


# ---- inconsistent operands ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "operands", "attrs", "match"),
    [
        ("Conv", [f32(1, 3, 8, 8), f32(4, 4, 3, 3)], {}, r"input has 3 channels but weight expects 4 \(x group 1\)"),
        ("Conv", [f32(1, 8, 8, 8), f32(4, 4, 3, 3)], {"group": 4}, "weight expects 4"),
        ("Conv", [f32(1, 3, 8, 8), f32(4, 3, 3, 3), f32(5)], {}, "bias"),
        ("Conv", [f32(1, 3, 8, 8), f32(4, 3, 3)], {}, "rank"),
        ("Conv", [f32(1, 3, 2, 2), f32(4, 3, 3, 3)], {}, "larger than padded input"),
        ("Conv", [f32(1, 3, 8, 8), f32(4, 3, 3, 3)], {"strides": [1, 1, 1]}, "strides"),
        ("ConvTranspose", [f32(1, 4, 5, 5), f32(3, 2, 3, 3)], {}, "input channels"),
        ("Gemm", [f32(4, 5), f32(6, 7)], {}, "inner dims"),
        ("Gemm", [f32(4, 5), f32(6, 5)], {}, "inner dims"),
        ("Gemm", [f32(4, 5), f32(5, 6), f32(3)], {}, "C"),
        ("MatMul", [f32(3, 4), f32(5, 6)], {}, "inner dims"),
        ("MatMul", [f32(2, 3, 4), f32(3, 4, 6)], {}, "broadcast"),
        ("BatchNormalization", [f32(2, 4, 5), f32(3), f32(4), f32(4), f32(4)], {}, "operand 1"),
        ("LayerNormalization", [f32(2, 5, 8), f32(7)], {}, "operand 1"),
        ("GroupNormalization", [f32(2, 6, 5), f32(6), f32(6)], {"num_groups": 4}, "groups"),
        ("MaxPool", [f32(1, 3, 8, 8)], {}, "kernel_shape"),
        ("MaxPool", [f32(1, 3, 8, 8)], {"kernel_shape": [2]}, "kernel"),
        ("QuantizeLinear", [f32(2, 3, 4), f32(4)], {"axis": 1}, "per-axis scale"),
        ("QuantizeLinear", [f32(2, 3, 4), f32(), ("i8", ())], {"output_dtype": "u8"}, "output_dtype"),
        ("DequantizeLinear", [("i8", (2, 3, 4)), f32(2, 3, 3)], {"axis": 2, "block_size": 2}, "block_size"),
    ],
)
def test_inconsistent_operands_raise(op: str, operands: list[Operand], attrs: dict[str, Any], match: str) -> None:
    with pytest.raises(InferenceError, match=match) as exc:
        ir_infer(op, operands, attrs)
    assert f"at node '{op.lower()}0'" in str(exc.value)


def test_unknown_rank_is_graceful() -> None:
    unk: Operand = ("f32", None)
    assert ir_infer("MaxPool", [unk], {"kernel_shape": [2, 2]}) == [("f32", None)]
    assert ir_infer("Gemm", [unk, f32(5, 6)]) == [("f32", None)]
    assert ir_infer("MatMul", [f32(3, 4), unk]) == [("f32", None)]
    assert ir_infer("LayerNormalization", [unk, f32(8)], n_out=2) == [("f32", None), ("f32", None)]
    assert ir_infer("QuantizeLinear", [unk, f32()]) == [("u8", None)]
    assert ir_infer("ConvTranspose", [unk, f32(4, 2, 3, 3)]) == [("f32", None)]
    assert groups("Conv", [unk, f32(4, 3, 3, 3)]) == []
    assert groups("Gemm", [f32(4, 5), unk]) == []
    assert groups("MaxPool", [unk], {"kernel_shape": [2, 2]}) == []
    assert groups("BatchNormalization", [unk] + [f32(4)] * 4) == []
    assert cost("Conv", [unk, f32(4, 3, 3, 3)])[0] == 0
