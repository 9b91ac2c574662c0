"""The ONNX exporter: full checker, exact numerics, names, scopes, shared weights and tricky outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import nasc
from nasc.backends.fidelity import ort_session, run_ort
from nasc.backends.onnx import to_onnx
from nasc.errors import ExportError
from nasc.ir import Graph, TensorType, parse

F = TensorType("f32", (2, 4))
RTOL, ATOL = 1e-5, 1e-6  # float32 matmuls: ONNX Runtime and numpy may sum in different orders


def rand(seed: int, shape: tuple[int, ...] = (2, 4), scale: float = 1.0) -> np.ndarray:
    """Seeded N(0, scale²) values: not symmetric, so a transposed or permuted weight changes the result."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def run(graph: Graph, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    return run_ort(ort_session(model), feed)


def test_parsed_graph_exports_and_runs():
    g = parse('''graph "g" opsets {"": 21}
input %x : f32[2,4]
const %w : f32[4,4] = "w"
const %b : f32[4] = dense[1.0, 2.0, 3.0, 4.0]
%h : f32[2,4] = MatMul(%x, %w) @"layer.0" #"mm"
%y : f32[2,4] = Add(%h, %b) @"layer.0" #"add"
output %y
''', {"w": (w := rand(1, (4, 4)))})
    x = rand(2)
    (y,) = run(g, {"x": x})
    np.testing.assert_allclose(y, x @ w + np.array([1, 2, 3, 4], np.float32), rtol=RTOL, atol=ATOL)
    m = to_onnx(g)
    assert [n.name for n in m.graph.node] == ["mm", "add"]
    assert {p.key: p.value for p in m.graph.node[0].metadata_props} == {"nasc.scope": "layer.0"}
    assert sorted(t.name for t in m.graph.initializer) == ["b", "w"]


def test_shared_weight_is_one_initializer():
    g = Graph()
    x = g.add_input("x", F)
    w_np = rand(3, (4, 4))
    w = g.add_constant(w_np, "shared.weight")
    a = g.make_node("MatMul", [x, w], [F]).outputs[0]
    g.outputs = [g.make_node("MatMul", [a, w], [F], out_names=["y"]).outputs[0]]
    m = to_onnx(g)
    assert [t.name for t in m.graph.initializer] == ["shared.weight"]
    x_in = rand(4)
    (y,) = run(g, {"x": x_in})
    np.testing.assert_allclose(y, x_in @ w_np @ w_np, rtol=RTOL, atol=ATOL)


def test_outputs_that_are_inputs_constants_or_repeated_go_through_identity():
    g = Graph()
    x = g.add_input("x", F)
    c_np = rand(5)
    c = g.add_constant(c_np, "c")
    r = g.make_node("Relu", [x], [F], out_names=["r"]).outputs[0]
    g.outputs = [x, c, r, r]
    r.name = "r"
    with pytest.raises(ExportError, match="duplicate names"):
        to_onnx(g)
    g.outputs = [x, c, r]
    x_in = rand(6)  # both signs, so Relu's output is neither x nor zeros
    got = run(g, {"x": x_in})
    np.testing.assert_array_equal(got[0], x_in)  # exact: Identity and Relu do no arithmetic
    np.testing.assert_array_equal(got[1], c_np)
    np.testing.assert_array_equal(got[2], np.maximum(x_in, 0))


def test_duplicate_value_names_are_made_unique():
    g = Graph()
    x = g.add_input("x", F)
    a = g.make_node("Relu", [x], [F], out_names=["t"]).outputs[0]
    b = g.make_node("Neg", [a], [F], out_names=["t"]).outputs[0]
    g.outputs = [g.make_node("Abs", [b], [F], out_names=["y"]).outputs[0]]
    x_in = rand(7)
    (y,) = run(g, {"x": x_in})
    np.testing.assert_array_equal(y, np.maximum(x_in, 0))  # exact: |-relu(x)|


def test_dtype_attributes_go_back_to_onnx_enums():
    g = Graph()
    x = g.add_input("x", F)
    g.outputs = [g.make_node("Cast", [x], [TensorType("i64", (2, 4))], {"to": "i64"}, out_names=["y"]).outputs[0]]
    m = to_onnx(g)
    assert m.graph.node[0].attribute[0].i == onnx.TensorProto.INT64
    x_in = rand(8, scale=10)
    (y,) = run(g, {"x": x_in})
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, np.trunc(x_in).astype(np.int64))  # exact: Cast truncates toward zero
    back = nasc.load(m)
    assert back.nodes[0].attrs["to"] == "i64"


def test_nasc_ops_export_as_their_standard_decomposition():
    g = Graph(opsets={"": 21, "nasc": 1})
    q = g.add_input("q", TensorType("f32", (1, 2, 4, 8)))
    k = g.add_input("k", TensorType("f32", (1, 2, 5, 8)))
    v = g.add_input("v", TensorType("f32", (1, 2, 5, 3)))
    mask = g.add_constant(np.triu(np.full((4, 5), -1e4, np.float32), 1), "mask")
    att = g.make_node("Attention", [q, k, v, mask], [TensorType("f32", (1, 2, 4, 3))], {"scale": 0.25},
                      domain="nasc", name="att").outputs[0]
    r6 = g.make_node("Relu6", [att], [TensorType("f32", (1, 2, 4, 3))], domain="nasc").outputs[0]
    g.outputs = [g.make_node("SiLU", [r6], [TensorType("f32", (1, 2, 4, 3))], domain="nasc",
                             out_names=["y"]).outputs[0]]
    m = to_onnx(g)
    assert {n.domain for n in m.graph.node} == {""} and "nasc" not in {o.domain for o in m.opset_import}
    assert len(g.nodes) == 3  # the graph itself is untouched
    rng = np.random.default_rng(0)
    feed = {"q": rng.standard_normal((1, 2, 4, 8), np.float32) * 3, "k": rng.standard_normal((1, 2, 5, 8), np.float32),
            "v": rng.standard_normal((1, 2, 5, 3), np.float32) * 4}
    s_ = feed["q"] @ feed["k"].transpose(0, 1, 3, 2) * 0.25 + mask.data
    p = np.exp(s_ - s_.max(-1, keepdims=True))
    ref = np.clip((p / p.sum(-1, keepdims=True)) @ feed["v"], 0, 6)
    ref = ref / (1 + np.exp(-ref))
    (y,) = run(g, feed)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
