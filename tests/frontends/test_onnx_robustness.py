"""Malformed and unusual ONNX models: each is a one-line nasc error naming what to fix (never an internal
error), through ``nasc.load`` and through ``nasc inspect``; and the unusual but valid ones load and match
ONNX Runtime (negative dims, sparse initializers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper
from onnx.external_data_helper import set_external_data

import nasc
from nasc.backends.fidelity import ort_session, reference_session, run_ort
from nasc.cli import main
from nasc.errors import Error, ModelLoadError, ShapeError, UnsupportedModelError
from nasc.ir import TensorType


def make_model(nodes, inputs, outputs, inits=(), opset: int = 21, sparse=()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits), sparse_initializer=list(sparse))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10  # what onnxruntime 1.31 reads
    return m


def vi(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def save(m: onnx.ModelProto, tmp_path: Path, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(m, str(path))
    return path


def inspect(path: Path, *args: str) -> tuple[int, str, str]:
    """``nasc inspect`` in this process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["inspect", str(path), "--json", *args])
    return rc, out.getvalue(), err.getvalue()


def refused(m: onnx.ModelProto, tmp_path: Path, error: type[Error], match: str, *args: str) -> None:
    """``m`` is refused with ``error`` matching ``match`` by nasc.load, and by nasc inspect with exit status 2."""
    path = save(m, tmp_path)
    with pytest.raises(error, match=match):
        nasc.load(str(path))
    rc, _, err = inspect(path, *args)
    assert rc == 2 and err.startswith("nasc: error: "), err
    assert len(err.strip().splitlines()) == 1, err


def relu_model(opset: int = 21, out_elem: int = T.FLOAT) -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x", T.FLOAT, [2])],
                      [vi("y", out_elem, [2])], opset=opset)


# ---- dims written as -1 (paddle2onnx) -------------------------------------------------------------------


def paddle_like_model() -> onnx.ModelProto:
    """A Conv classifier with dynamic dims written as ``dim_value: -1``, also in value_info and an If body."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    then = helper.make_graph([helper.make_node("Relu", ["h"], ["t"])], "then", [], [vi("t", T.FLOAT, [-1, 4, -1, -1])])
    other = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [], [vi("e", T.FLOAT, [-1, 4, -1, -1])])
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then, else_branch=other)]
    m = make_model(nodes, [vi("x", T.FLOAT, [-1, 3, -1, -1])], [vi("y", T.FLOAT, [-1, 4, -1, -1])],
                   [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(True), "flag")])
    m.graph.value_info.append(vi("h", T.FLOAT, [-1, 4, -1, -1]))
    return m


def test_negative_dims_are_dynamic_and_fixed_by_input_shapes(tmp_path):
    m = paddle_like_model()
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1
    path = save(m, tmp_path)
    # like a dim_param input: an error naming the input and its dims, with the fix
    with pytest.raises(ShapeError, match=r"input 'x' \(f32\[\?,3,\?,\?\]\) has dynamic dims \[0: '\?', 2: '\?', 3: '\?'\]"
                                         r".*--input-shape x=Nx3xNxN"):
        nasc.load(str(path))
    g = nasc.load(str(path), {"x": (1, 3, 8, 12)})
    assert g.inputs[0].type.shape == (1, 3, 8, 12) and g.outputs[0].type.shape == (1, 4, 8, 12)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 12)).astype(np.float32)
    out = nasc.export_onnx(g, tmp_path / "out.onnx")
    np.testing.assert_allclose(run_ort(ort_session(str(out)), {"x": x})[0], run_ort(ort_session(m), {"x": x})[0],
                               rtol=1e-5, atol=1e-6)
    rc, stdout, err = inspect(path, "--input-shape", "x=1x3x48x192")
    assert rc == 0, err
    assert json.loads(stdout)["inputs"] == [{"name": "x", "dtype": "f32", "shape": [1, 3, 48, 192]}]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1  # the caller's proto is left as it was
    rc, _, err = inspect(path)
    assert rc == 2 and "--input-shape x=Nx3xNxN" in err


def test_the_ir_refuses_negative_dims_and_graphs_without_outputs():
    from nasc.errors import ParseError, VerificationError
    from nasc.ir import Graph, parse, verify

    with pytest.raises(ValueError, match=r"negative dim in shape \[-1, 3\]"):
        TensorType("f32", (-1, 3))
    with pytest.raises(ParseError, match="negative dim"):
        parse('graph "g" opsets {"": 21}\ninput %x : f32[-1,3]\noutput %x\n')
    g = Graph()
    g.add_input("x", TensorType("f32", (2,)))
    with pytest.raises(VerificationError, match="the graph has no outputs"):
        verify(g)


# ---- the tensor size limit ----------------------------------------------------------------------------


def test_huge_input_dims_are_refused_naming_the_input(tmp_path, monkeypatch):
    m = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x", T.FLOAT, [1 << 40])],
                   [vi("y", T.FLOAT, [None])])
    refused(m, tmp_path, ShapeError, r"input 'x' is f32\[1099511627776\] = 4\.0 TiB, over the limit of 16\.0 GiB.*"
                                     r"max_tensor_bytes=.*--max-tensor-size.*NASC_MAX_TENSOR_BYTES")
    g = nasc.load(m, max_tensor_bytes=1 << 50)
    assert g.inputs[0].type.shape == (1 << 40,)
    assert inspect(save(m, tmp_path), "--max-tensor-size", "5T")[0] == 0
    monkeypatch.setenv("NASC_MAX_TENSOR_BYTES", "8T")
    assert nasc.load(m).inputs[0].type.shape == (1 << 40,)
    with pytest.raises(ShapeError, match=r"over the limit of 1\.0 KiB"):
        nasc.load(m, input_shapes=None, max_tensor_bytes=1024)


def test_constant_of_shape_of_terabytes_is_refused_without_allocating_it(tmp_path):
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["c"], name="fill"),
             helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    m = make_model(nodes, [vi("x", T.FLOAT, [1])], [vi("y", T.FLOAT, [None])],
                   [numpy_helper.from_array(np.array([1 << 40], np.int64), "s")])
    refused(m, tmp_path, ShapeError, r"result 0 \('c'\) of 'ConstantOfShape' at node 'fill' is f32\[1099511627776\]")
    # with the limit raised the node stays a node: neither the loader nor simplify folds it
    g = nasc.load(m, max_tensor_bytes=1 << 50)
    assert [n.op for n in g.nodes] == ["ConstantOfShape", "Add"]
    g = nasc.optimize(g, "simplify")
    assert [n.op for n in g.nodes] == ["ConstantOfShape", "Add"]


# ---- what the ONNX spec (and ONNX Runtime) refuses ------------------------------------------------------


def test_opset_newer_than_onnx_is_refused(tmp_path):
    refused(relu_model(opset=99), tmp_path, UnsupportedModelError, r"opset 99 of the default ONNX domain; ONNX .* "
                                                                    r"defines opsets up to \d+")


def test_graph_without_outputs_is_refused(tmp_path):
    m = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x", T.FLOAT, [2])], [])
    refused(m, tmp_path, ModelLoadError, "the graph has no outputs")


@pytest.mark.parametrize("case", ["count", "type"])
def test_if_branches_that_disagree_are_refused(tmp_path, case):
    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [], [vi("t", T.FLOAT, [2])])
    if case == "count":
        other = helper.make_graph([helper.make_node("Identity", ["a"], ["e"]), helper.make_node("Neg", ["a"], ["f"])],
                                  "else", [], [vi("e", T.FLOAT, [2]), vi("f", T.FLOAT, [2])])
        match = r"'If' at node 'branch' is invalid: then_branch and else_branch produce different number of outputs"
    else:
        other = helper.make_graph([helper.make_node("Cast", ["a"], ["e"], to=T.INT64)], "else", [],
                                  [vi("e", T.INT64, [2])])
        match = r"'If' at node 'branch' is invalid: Mismatched tensor element type: inferred=int64 declared=float"
    m = make_model([helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)],
                   [vi("c", T.BOOL, []), vi("a", T.FLOAT, [2])], [vi("y", T.FLOAT, [2])])
    refused(m, tmp_path, ModelLoadError, match)


def test_operand_type_outside_the_op_schema_is_refused(tmp_path):
    m = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [vi("x", T.STRING, [1, 1, 3, 3])],
                   [vi("y", T.FLOAT, [None] * 4)], [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")])
    refused(m, tmp_path, ModelLoadError, r"'Conv' at node 'conv' is invalid: Conv's operand X is tensor\(string\), "
                                         r"outside its type constraint T; it accepts tensor\(float16\), tensor\(float\)")


def test_error_inside_an_if_body_names_the_inner_and_outer_nodes(tmp_path):
    then = helper.make_graph([helper.make_node("Softmax", ["a"], ["t"], name="inner", axis=5)], "then", [],
                             [vi("t", T.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["a"], ["e"])], "else", [], [vi("e", T.FLOAT, [2])])
    m = make_model([helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)],
                   [vi("c", T.BOOL, []), vi("a", T.FLOAT, [2])], [vi("y", T.FLOAT, [2])])
    refused(m, tmp_path, ShapeError, r"'Softmax' at node 'inner', in a body of 'If' at node 'branch' is invalid: 'axis'")


def test_declared_output_type_that_contradicts_the_op_is_refused(tmp_path):
    refused(relu_model(out_elem=T.INT64), tmp_path, ModelLoadError,
            r"'Relu' at node 'relu' is invalid: .*the op gives float, the model declares int64")
    # a contradicting declared shape is not refused: ONNX Runtime merges shapes leniently (a warning); nasc
    # takes the op's own
    m = relu_model()
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 3
    assert nasc.load(m).outputs[0].type.shape == (2,)


def test_input_of_an_element_type_onnx_does_not_define_is_refused(tmp_path):
    m = relu_model()
    m.graph.input[0].type.tensor_type.elem_type = 99
    refused(m, tmp_path, ModelLoadError, r"input 'x' has element type 99, which ONNX does not define")


@pytest.mark.parametrize("opset", [18, 21])
def test_split_with_num_outputs_unlike_its_results_is_an_error_not_a_crash(tmp_path, opset):
    # ONNX's own Split inference (run by the opset converter and by ONNX Runtime) reads out of bounds on it
    # and aborts the process
    outs = ["a", "b", "c", "d"]
    m = make_model([helper.make_node("Split", ["x"], outs, name="split", num_outputs=1)], [vi("x", T.FLOAT, [8])],
                   [vi(o, T.FLOAT, [2]) for o in outs], opset=opset)
    refused(m, tmp_path, ShapeError, r"'Split' at node 'split' has num_outputs=1 but 4 results")


# ---- folding at load -------------------------------------------------------------------------------------


def test_constant_gather_index_out_of_range_names_the_node(tmp_path):
    nodes = [helper.make_node("Gather", ["d", "i"], ["g"], name="pick", axis=0),
             helper.make_node("Add", ["x", "g"], ["y"], name="add")]
    m = make_model(nodes, [vi("x", T.FLOAT, [])], [vi("y", T.FLOAT, [])],
                   [numpy_helper.from_array(np.arange(3, dtype=np.float32), "d"),
                    numpy_helper.from_array(np.array(7, np.int64), "i")])
    refused(m, tmp_path, ShapeError, r"'Gather' at node 'pick': index 7 is out of range for axis 0 of size 3")


def test_cast_to_an_unknown_element_type_names_the_node(tmp_path):
    m = make_model([helper.make_node("Cast", ["x"], ["y"], name="cast", to=999)], [vi("x", T.FLOAT, [2])],
                   [vi("y", T.FLOAT, [2])])
    refused(m, tmp_path, ModelLoadError, r"'Cast' at node 'cast' is invalid: Attribute to does not specify a valid type")


def test_cast_attribute_conversion_names_the_node_even_past_the_spec_check():
    from nasc.frontends.onnx import _import_node
    from nasc.ir.core import Graph

    g = Graph()
    env = {"x": g.add_input("x", TensorType("f32", (2,)))}
    with pytest.raises(ModelLoadError, match=r"'Cast' at node 'cast': attribute 'to': 999 is not an ONNX element type"):
        _import_node(g, helper.make_node("Cast", ["x"], ["y"], name="cast", to=999), env, "m", {})


# ---- external data and sparse initializers -----------------------------------------------------------------


def external_model(tmp_path: Path, offset: int, length: int | None, file_bytes: int = 16) -> Path:
    m = make_model([helper.make_node("Add", ["x", "w"], ["y"], name="add")], [vi("x", T.FLOAT, [4])],
                   [vi("y", T.FLOAT, [4])], [numpy_helper.from_array(np.ones(4, np.float32), "w")])
    (tmp_path / "w.bin").write_bytes(np.ones(file_bytes // 4, np.float32).tobytes())
    t = m.graph.initializer[0]
    set_external_data(t, "w.bin", offset=offset, length=length)
    t.ClearField("raw_data")
    t.data_location = T.EXTERNAL
    return save(m, tmp_path)


@pytest.mark.parametrize(("offset", "length", "match"), [
    (4096, 16, r"tensor 'w' reads bytes 4096\.\.4112 of external data file 'w\.bin', which has 16 bytes"),
    (8, 16, r"tensor 'w' reads bytes 8\.\.24 of external data file 'w\.bin', which has 16 bytes"),
    (8, None, r"tensor 'w' reads bytes 8\.\.24 of external data file 'w\.bin'"),
])
def test_external_data_past_the_end_of_its_file_is_refused(tmp_path, offset, length, match):
    path = external_model(tmp_path, offset, length)
    with pytest.raises(ModelLoadError, match=match):
        nasc.load(str(path))
    rc, _, err = inspect(path)
    assert rc == 2 and "tensor 'w'" in err and "w.bin" in err
    # the same model with a data file long enough loads
    (tmp_path / "w.bin").write_bytes(np.ones(offset // 4 + 4, np.float32).tobytes())
    np.testing.assert_array_equal(nasc.load(str(path)).find_value("w").data, np.ones(4, np.float32))


def test_external_data_of_a_constant_node_is_read_next_to_the_model_not_the_working_directory(tmp_path,
                                                                                              monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "c.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    t = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    set_external_data(t, "c.bin", offset=0, length=16)
    t.ClearField("raw_data")
    t.data_location = T.EXTERNAL
    m = make_model([helper.make_node("Constant", [], ["c"], name="const", value=t),
                    helper.make_node("Add", ["x", "c"], ["y"], name="add")], [vi("x", T.FLOAT, [4])],
                   [vi("y", T.FLOAT, [4])])
    path = save(m, tmp_path / "model")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    np.testing.assert_array_equal(nasc.load(str(path)).find_value("c").data, [0, 1, 2, 3])


def sparse_model() -> onnx.ModelProto:
    values = numpy_helper.from_array(np.array([1.5, -2.0, 3.25], np.float32), "w")
    indices = numpy_helper.from_array(np.array([1, 4, 5], np.int64), "w_indices")
    sp = helper.make_sparse_tensor(values, indices, [2, 3])
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [vi("x", T.FLOAT, [4, 2])],
                      [vi("y", T.FLOAT, [4, 3])], sparse=[sp])


def test_sparse_initializer_loads_dense_and_matches_onnxruntime(tmp_path):
    m = sparse_model()
    path = save(m, tmp_path)
    g = nasc.load(str(path))
    np.testing.assert_array_equal(g.find_value("w").data, [[0, 1.5, 0], [0, -2.0, 3.25]])
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    out = nasc.export_onnx(g, tmp_path / "out.onnx")
    np.testing.assert_allclose(run_ort(ort_session(str(out)), {"x": x})[0], run_ort(ort_session(m), {"x": x})[0],
                               rtol=1e-6)
    assert inspect(path)[0] == 0


def test_external_data_of_sparse_initializers_is_read_and_checked(tmp_path):
    m = sparse_model()
    values = m.graph.sparse_initializer[0].values
    (tmp_path / "v.bin").write_bytes(np.array([1.5, -2.0, 3.25], np.float32).tobytes())
    set_external_data(values, "v.bin", offset=0, length=12)
    values.ClearField("raw_data")
    values.data_location = T.EXTERNAL
    path = save(m, tmp_path)
    np.testing.assert_array_equal(nasc.load(str(path)).find_value("w").data, [[0, 1.5, 0], [0, -2.0, 3.25]])
    next(e for e in values.external_data if e.key == "location").value = "../v.bin"
    save(m, tmp_path)
    with pytest.raises(ModelLoadError, match=r"tensor 'w' stores its data at '\.\./v\.bin', outside the model's directory"):
        nasc.load(str(path))


# ---- ONNX Runtime's refusals, and what inspect says -------------------------------------------------------


def lrn_model() -> onnx.ModelProto:
    """Valid by ONNX's inference, refused by ONNX Runtime's LRN kernel (size must be positive)."""
    return make_model([helper.make_node("LRN", ["x"], ["y"], name="norm", size=0)], [vi("x", T.FLOAT, [1, 2, 3, 3])],
                      [vi("y", T.FLOAT, [1, 2, 3, 3])])


def cumsum_model() -> onnx.ModelProto:
    """Loads everywhere; ONNX Runtime fails when it runs (axis out of range)."""
    return make_model([helper.make_node("CumSum", ["x", "a"], ["y"], name="acc")], [vi("x", T.FLOAT, [2, 3])],
                      [vi("y", T.FLOAT, [2, 3])], [numpy_helper.from_array(np.array(9, np.int64), "a")])


def test_onnxruntime_refusing_the_original_model_is_a_nasc_error_naming_the_node(tmp_path):
    path = save(lrn_model(), tmp_path)
    with pytest.raises(ModelLoadError, match=r"ONNX Runtime cannot load the model at node 'norm' \(LRN\): .*size_ > 0"):
        reference_session(str(path))
    rc, _, err = inspect(path)  # inspect runs the checks compile runs before it builds
    assert rc == 2 and "node 'norm' (LRN)" in err


def test_onnxruntime_failing_on_the_original_model_is_a_nasc_error_naming_the_node(tmp_path):
    path = save(cumsum_model(), tmp_path)
    sess = reference_session(str(path))
    with pytest.raises(ModelLoadError, match=r"ONNX Runtime failed running the model at node 'acc' \(CumSum\): .*axis 9"):
        run_ort(sess, {"x": np.ones((2, 3), np.float32)})
    rc = main(["compile", str(path), "--target", "onnx", "-o", str(tmp_path / "out")])
    assert rc == 2 and not (tmp_path / "out").exists()


def test_inspect_warns_about_values_without_static_shapes(tmp_path):
    m = make_model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [vi("x", T.FLOAT, [2, 3])],
                   [vi("y", T.INT64, [2, None])])
    rc, stdout, err = inspect(save(m, tmp_path))
    assert rc == 0, err
    assert "nasc: warning: 1 value(s) have no static tensor shape (first: %y i64[2,?] from 'NonZero' at node 'nz')" in err
    assert json.loads(stdout)["warnings"] and "cpu, gpu and mcu builds need static shapes" in err


# ---- found by fuzzing (tests/fuzz): text fields, external data paths, folding, long messages, run time -------


def _identity_model(node_name: str = "NAMEXX") -> onnx.ModelProto:
    return make_model([helper.make_node("Relu", ["x"], ["y"], name=node_name)],
                      [vi("x", T.FLOAT, [2])], [vi("y", T.FLOAT, [2])])


@pytest.mark.parametrize("field", ["name", "op_type", "graph"])
def test_invalid_utf8_in_a_string_field_is_named(field: str) -> None:
    m = _identity_model()
    if field == "op_type":
        m.graph.node[0].op_type = "RELUXX"
    if field == "graph":
        m.graph.name = "GRAPHXX"
    data = m.SerializeToString()
    token = {"name": b"NAMEXX", "op_type": b"RELUXX", "graph": b"GRAPHXX"}[field]
    data = data.replace(token, token[:2] + b"\xc2\xc2" + token[4:])
    with pytest.raises(ModelLoadError, match="not valid UTF-8") as e:
        nasc.load(data)
    want = {"name": "graph.node[0].name", "op_type": "graph.node[0].op_type", "graph": "graph.name"}[field]
    assert want in str(e.value) and "b'" not in str(e.value)


def test_invalid_utf8_in_metadata_is_refused_at_load() -> None:
    m = _identity_model()
    m.metadata_props.add(key="KEYXX", value="v")
    data = m.SerializeToString().replace(b"KEYXX", b"KE\xc2\xc2X")
    with pytest.raises(ModelLoadError, match=r"metadata_props\[0\]\.key"):
        nasc.load(data)


def test_nul_byte_in_an_external_data_location(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    m = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", T.FLOAT, [2])], [vi("y", T.FLOAT, [2])],
                   [w])
    set_external_data(m.graph.initializer[0], location="weights.bin\x00x")
    m.graph.initializer[0].data_location = T.EXTERNAL
    m.graph.initializer[0].ClearField("raw_data")
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(ModelLoadError, match=r"tensor 'w'.*NUL byte"):
        nasc.load(str(path))


def test_a_long_cycle_is_one_short_line() -> None:
    n = 200
    nodes = [helper.make_node("Relu", [f"v{(i - 1) % n}"], [f"v{i}"], name=f"n{i}") for i in range(n)]
    nodes.append(helper.make_node("Add", ["x", f"v{n - 1}"], ["y"], name="out"))
    m = make_model(nodes, [vi("x", T.FLOAT, [2])], [vi("y", T.FLOAT, [2])])
    with pytest.raises(ModelLoadError, match="cycle") as e:
        nasc.load(m)
    assert len(str(e.value)) < 1000 and "and 190 more" in str(e.value)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_division_by_a_constant_zero_folds_without_numpy_warnings(dtype) -> None:
    import warnings

    a = numpy_helper.from_array(np.array([1, 0, -1], dtype), "a")
    b = numpy_helper.from_array(np.zeros(3, dtype), "b")
    elem = T.FLOAT if dtype == np.float32 else T.INT32
    m = make_model([helper.make_node("Div", ["a", "b"], ["q"], name="div"), helper.make_node("Add", ["x", "q"], ["y"])],
                   [vi("x", elem, [3])], [vi("y", elem, [3])], [a, b])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = nasc.load(m)
    assert not g.meta.get("load_warnings")  # the loader records warnings there rather than printing them
    if dtype == np.int32:  # undefined in ONNX: left for the runtime (which refuses it), not folded
        assert any(n.op == "Div" for n in g.nodes)


def test_compare_with_nan_outputs_warns_nothing_and_counts_them() -> None:
    import warnings

    from nasc.backends.fidelity import compare, nonfinite_warning

    ref = [[np.array([np.nan, np.nan], np.float32), np.array([1.0, np.inf], np.float32)]]
    got = [[np.array([np.nan, np.nan], np.float32), np.array([1.5, 2.0], np.float32)]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid = compare(ref, got)
    assert fid["nonfinite"] == 3 and fid["nonfinite_mismatch"] == 1 and fid["max_abs_err"] == 0.5
    assert "NaN or infinite" in (nonfinite_warning(fid) or "")
    assert "nonfinite" not in compare(got[:0], ref[:0])


def test_a_reference_run_that_does_not_finish_is_stopped(monkeypatch) -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body", [vi("i", T.INT64, []), vi("c_in", T.BOOL, []), vi("v_in", T.FLOAT, [1])],
        [vi("c_out", T.BOOL, []), vi("v_out", T.FLOAT, [1])],
        [numpy_helper.from_array(np.ones(1, np.float32), "one")])
    m = make_model([helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body, name="loop")],
                   [vi("x", T.FLOAT, [1])], [vi("y", T.FLOAT, [1])],
                   [numpy_helper.from_array(np.array(2 ** 62, np.int64), "trips"),
                    numpy_helper.from_array(np.array(True), "cond")])
    monkeypatch.setenv("NASC_RUN_TIMEOUT_S", "0.5")
    sess = reference_session(m)
    with pytest.raises(ModelLoadError, match=r"did not finish in 0\.5 s.*Loop.*NASC_RUN_TIMEOUT_S"):
        run_ort(sess, {"x": np.zeros(1, np.float32)})


def test_onnx_warnings_while_loading_go_to_the_graph_not_stderr(tmp_path: Path, capfd) -> None:
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    m = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", T.FLOAT, [2])], [vi("y", T.FLOAT, [2])],
                   [w])
    (tmp_path / "weights.bin").write_bytes(np.ones(2, np.float32).tobytes())
    t = m.graph.initializer[0]
    set_external_data(t, location="weights.bin", offset=0, length=8)
    t.external_data.add(key="fuzz", value="1")
    t.data_location = T.EXTERNAL
    t.ClearField("raw_data")
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    try:
        g = nasc.load(str(path))
    except Error:  # refusing the model is fine too; printing onnx's warning is not
        g = None
    assert "Warning" not in capfd.readouterr().err
    if g is not None:
        assert any("fuzz" in n for n in g.meta.get("load_warnings", []))
