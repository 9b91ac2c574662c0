"""The ONNX frontend on small hand-built models: opsets, Constant nodes, dynamic dims, folding, and bad input."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import nasc
from nasc.backends.fidelity import ort_session, run_ort
from nasc.errors import ModelLoadError, ShapeError, UsageError
from nasc.ir import verify


def make_model(graph: onnx.GraphProto, opset: int = 21) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10  # what onnxruntime 1.31 reads (helper defaults to onnx's newest)
    return m


def conv_model(opset: int = 17, dims=("N", 3, 8, 8), constant_weight: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    x = helper.make_tensor_value_info("x", T.FLOAT, list(dims))
    y = helper.make_tensor_value_info("y", T.FLOAT, None)
    nodes, inits = [], []
    if constant_weight:
        nodes.append(helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes += [
        helper.make_node("Conv", ["x", "w"], ["h"], name="/features/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="/features/act/Relu"),
        helper.make_node("Shape", ["r"], ["s"], name="/shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="/gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"], name="/unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], name="/concat", axis=0),
        helper.make_node("Reshape", ["r", "shape"], ["y"], name="/flatten/Reshape"),
    ]
    inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"),
              numpy_helper.from_array(np.array([0], np.int64), "zero1"),
              numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    g = helper.make_graph(nodes, "convnet", [x], [y], inits)
    m = make_model(g, opset)
    m.graph.output[0].type.tensor_type.ClearField("shape")
    m.graph.output[0].type.tensor_type.shape.dim.add().dim_param = "N"
    m.graph.output[0].type.tensor_type.shape.dim.add().dim_param = "K"
    return m


def random_input(seed: int, shape: tuple[int, ...] = (1, 3, 8, 8)) -> np.ndarray:
    """Seeded N(0, 1) values: unlike all-ones, they make a transposed or permuted weight change the output."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def check_exact(model: onnx.ModelProto, graph: nasc.Graph, tmp_path, feed) -> None:
    """The exported graph matches ONNX Runtime on the original model within rtol 1e-5, atol 1e-6."""
    out = nasc.export_onnx(graph, tmp_path / "out.onnx")
    ref = run_ort(ort_session(model), feed)
    got = run_ort(ort_session(str(out)), feed)
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_dynamic_dims_need_input_shapes_and_error_names_them():
    with pytest.raises(ShapeError, match=r"input 'x' \(f32\[\?N,3,8,8\]\) has dynamic dims \[0: 'N'\].*--input-shape x=Nx3x8x8"):
        nasc.load(conv_model())


def test_input_shapes_fix_dims_and_shape_subgraph_folds_to_static(tmp_path):
    m = conv_model()
    g = nasc.load(m, input_shapes={"x": (2, 3, 8, 8)})
    verify(g)
    assert [n.op for n in g.nodes] == ["Conv", "Relu", "Reshape"]  # Shape/Gather/Unsqueeze/Concat folded
    assert g.outputs[0].type.shape == (2, 256)
    assert g.find_node("/features/conv/Conv").scope == "features.conv"
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    check_exact(m, g, tmp_path, {"x": x})


@pytest.mark.parametrize(("shapes", "error", "message"), [
    ({"x": (1, 3, 8)}, ShapeError, r"input 'x' has rank 4 \(f32\[\?N,3,8,8\]\), but the shape given has rank 3: 1x3x8"),
    ({"x": (1, 4, 8, 8)}, ShapeError, r"input 'x' has dim 1 = 3 \(f32\[\?N,3,8,8\]\); the shape given says 4"),
    ({"y": (1,)}, UsageError, r"input_shapes names \['y'\], which are not inputs; the inputs are \['x'\]"),
])
def test_wrong_input_shapes_are_clear_errors(shapes, error, message):
    with pytest.raises(error, match=message):
        nasc.load(conv_model(), input_shapes=shapes)


def test_constant_node_weights_become_constants(tmp_path):
    m = conv_model(constant_weight=True, dims=(1, 3, 8, 8))
    g = nasc.load(m)
    assert "Constant" not in {n.op for n in g.nodes}
    assert g.find_value("w").data.shape == (4, 3, 3, 3)
    check_exact(m, g, tmp_path, {"x": random_input(1)})


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_opsets_are_normalised_to_21(opset, tmp_path):
    m = conv_model(opset=opset, dims=(1, 3, 8, 8))
    if opset < 13:  # Unsqueeze took axes as an attribute before opset 13
        node = next(n for n in m.graph.node if n.op_type == "Unsqueeze")
        del node.input[1]
        node.attribute.append(helper.make_attribute("axes", [0]))
    g = nasc.load(m)
    assert g.opsets[""] == 21
    check_exact(m, g, tmp_path, {"x": random_input(opset)})


def test_shared_initializer_is_one_value(tmp_path):
    w = numpy_helper.from_array(random_input(3, (4, 4)), "w")  # not symmetric: a transposed use would show
    x = helper.make_tensor_value_info("x", T.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", T.FLOAT, [1, 4])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["y"])]
    m = make_model(helper.make_graph(nodes, "g", [x], [y], [w]))
    g = nasc.load(m)
    assert len(g.constants) == 1 and len(g.constants[0].uses) == 2
    check_exact(m, g, tmp_path, {"x": random_input(4, (1, 4))})


def test_unknown_op_is_carried_opaquely_and_round_trips(tmp_path):
    x = helper.make_tensor_value_info("x", T.FLOAT, [3, 3])
    y = helper.make_tensor_value_info("y", T.FLOAT, [])
    m = make_model(helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="det")], "g", [x], [y]))
    g = nasc.load(m)
    assert g.summary()["opaque_ops"] == ["Det"]
    assert g.outputs[0].type.shape == ()
    check_exact(m, g, tmp_path, {"x": np.diag([1.0, 2.0, 3.0]).astype(np.float32)})


# ---- bad input -----------------------------------------------------------------


def test_truncated_file(tmp_path):
    data = conv_model().SerializeToString()
    p = tmp_path / "t.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"not a readable ONNX model|not an ONNX model|not a valid ONNX"):
        nasc.load(p)


def test_non_onnx_file(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is a text file, not a model\n")
    with pytest.raises(ModelLoadError, match="ONNX model"):
        nasc.load(p)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        nasc.load(tmp_path / "nope.onnx")


def test_cycle_is_named():
    x = helper.make_tensor_value_info("x", T.FLOAT, [1])
    y = helper.make_tensor_value_info("y", T.FLOAT, [1])
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Identity", ["a"], ["y"], name="out")]
    m = make_model(helper.make_graph(nodes, "g", [x], [y]))
    with pytest.raises(ModelLoadError, match=r"cycle: 'first' \(Add\) -> 'second' \(Relu\)|cycle: 'second' \(Relu\) -> 'first' \(Add\)"):
        nasc.load(m)


def test_undefined_input_name_is_named():
    x = helper.make_tensor_value_info("x", T.FLOAT, [1])
    y = helper.make_tensor_value_info("y", T.FLOAT, [1])
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")]
    m = make_model(helper.make_graph(nodes, "g", [x], [y]))
    with pytest.raises(ModelLoadError, match=r"node 'adder' \(Add\) reads 'ghost', which no node"):
        nasc.load(m)


def test_unsorted_nodes_are_sorted():
    x = helper.make_tensor_value_info("x", T.FLOAT, [1])
    y = helper.make_tensor_value_info("y", T.FLOAT, [1])
    nodes = [helper.make_node("Relu", ["a"], ["y"], name="second"), helper.make_node("Neg", ["x"], ["a"], name="first")]
    m = make_model(helper.make_graph(nodes, "g", [x], [y]))
    assert [n.name for n in nasc.load(m).nodes] == ["first", "second"]


def _external_model(tmp_path, location: str) -> str:
    m = conv_model(dims=(1, 3, 8, 8))
    sub = tmp_path / "model"
    sub.mkdir()
    path = sub / "m.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    if location != "w.bin":
        m2 = onnx.load(str(path), load_external_data=False)
        for t in m2.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        onnx.save_model(m2, str(path))
    return str(path)


def test_external_data_inside_the_model_directory_loads_lazily(tmp_path):
    path = _external_model(tmp_path, "w.bin")
    g = nasc.load(path)
    w = g.find_value("w")
    assert not w.const.loaded
    assert w.data.shape == (4, 3, 3, 3) and w.const.loaded
    check_exact(onnx.load(path), g, tmp_path, {"x": random_input(2)})


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd"])
def test_external_data_outside_the_model_directory_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(os.urandom(4096))
    path = _external_model(tmp_path, location)
    with pytest.raises(ModelLoadError, match="outside the model's directory"):
        nasc.load(path)
