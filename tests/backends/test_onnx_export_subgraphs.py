"""Exporting control flow: If, Loop and Scan bodies come back with complete types and the same numbers.

Every model here is loaded with nasc, exported (``nasc.export_onnx``, with and
without ``simplify,fuse`` in between, and through ``nasc compile --target
onnx``), passed through the full onnx.checker, and run under ONNX Runtime
beside the original on the same inputs. The exporter copies the operators of a
body unchanged, so the results must be equal: the tolerance is ATOL below.

Inside every exported body, each formal input, each output and each value a
node defines carries a type; with static input shapes that type has a static
shape, except where the value's size really changes (a dim that grows from one
loop iteration to the next) or where branches disagree.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

import nasc
from nasc.backends.fidelity import ort_session, run_ort
from nasc.backends.onnx import to_onnx
from nasc.errors import ExportError

ATOL = 1e-6  # the same kernels on the same inputs: ~exact
F = TP.FLOAT

# how a source model types the outputs (and formal inputs) of its bodies
STYLES = ["full", "elem-only", "no-type", "empty-type"]
# opset 21 is nasc's own, so the model is read as written; an older opset goes through onnx's
# version converter first, whose shape inference types some body values (not Loop bodies) on the way
SOURCES = [*((s, 21) for s in STYLES), ("no-type", 15)]


# ---- building models ---------------------------------------------------------------------------


def vi(name: str, elem: int = F, shape: list | None = None) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, elem, shape)


def styled(name: str, style: str, elem: int = F, shape: list | None = None) -> onnx.ValueInfoProto:
    """A body input/output typed as ``style`` says: completely, element type only, not at all, or ``type {}``."""
    if style == "full":
        return vi(name, elem, shape)
    if style == "elem-only":
        return vi(name, elem, None)
    v = onnx.ValueInfoProto(name=name)
    if style == "empty-type":
        v.type.SetInParent()
    return v


def const(name: str, value) -> onnx.NodeProto:
    return oh.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(value), name))


def model(nodes, inputs, outputs, inits=(), opset: int = 21) -> onnx.ModelProto:
    m = oh.make_model(oh.make_graph(nodes, "g", inputs, outputs, list(inits)),
                      opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = 10 if opset >= 21 else 8
    onnx.checker.check_model(m, full_check=True)
    return m


def if_with_captures(style: str, opset: int = 21) -> onnx.ModelProto:
    """An If whose branches read outer values (a node result, a graph input, an initializer) with different ops.

    The second result has shape [2,3] in one branch and [3,2] in the other: only its rank is known.
    """
    then = oh.make_graph(
        [const("two", np.float32(2)), oh.make_node("Add", ["h", "w"], ["t0"]), oh.make_node("Mul", ["t0", "two"], ["t1"]),
         oh.make_node("Identity", ["h"], ["t2"])],
        "then", [], [styled("t1", style, F, [2, 3]), styled("t2", style, F, [2, 3])])
    other = oh.make_graph(
        [oh.make_node("Sub", ["h", "x"], ["e0"]), oh.make_node("Tanh", ["e0"], ["e1"]),
         oh.make_node("Transpose", ["h"], ["e2"], perm=[1, 0])],
        "else", [], [styled("e1", style, F, [2, 3]), styled("e2", style, F, [3, 2])])
    return model(
        [oh.make_node("Relu", ["x"], ["h"]),
         oh.make_node("If", ["c"], ["y", "z"], then_branch=then, else_branch=other)],
        [vi("x", F, [2, 3]), vi("c", TP.BOOL, [])], [vi("y", F, [2, 3]), vi("z", F, ["a", "b"])],
        [onnx.numpy_helper.from_array(np.array([1, -2, 3], np.float32), "w")], opset)


def conditional_squeeze(cond_from_input: bool = False) -> onnx.ModelProto:
    """torch's scripted ``x.squeeze(0) if x.size(0) == 1 else x``: the branches differ in rank.

    With a static input the condition folds, so the taken branch gives the type;
    with the condition a graph input the rank is not known.
    """
    then = oh.make_graph([const("ax", np.array([0], np.int64)), oh.make_node("Squeeze", ["x", "ax"], ["s"])],
                         "then", [], [styled("s", "no-type")])
    other = oh.make_graph([oh.make_node("Identity", ["x"], ["i"])], "else", [], [styled("i", "no-type")])
    nodes = [] if cond_from_input else [
        oh.make_node("Shape", ["x"], ["shp"]), const("zero", np.array(0, np.int64)),
        oh.make_node("Gather", ["shp", "zero"], ["n"]), const("one", np.array(1, np.int64)),
        oh.make_node("Equal", ["n", "one"], ["c"])]
    nodes += [oh.make_node("If", ["c"], ["sq"], then_branch=then, else_branch=other),
              const("k", np.float32(1)), oh.make_node("Add", ["sq", "k"], ["y"])]
    inputs = [vi("x", F, [1, 4])] + ([vi("c", TP.BOOL, [])] if cond_from_input else [])
    return model(nodes, inputs, [vi("y", F, [4])])


def loop_with_state_and_scans(style: str, trip_input: bool = False, opset: int = 21) -> onnx.ModelProto:
    """A Loop with two carried values (one keeps its shape, one grows a row per iteration) and two scan outputs."""
    body = oh.make_graph(
        [oh.make_node("Identity", ["cond_in"], ["cond_out"]),
         oh.make_node("Cast", ["i"], ["fi"], to=F),
         const("half", np.float32(0.5)),
         oh.make_node("Mul", ["acc", "half"], ["a0"]), oh.make_node("Mul", ["x", "fi"], ["a1"]),
         oh.make_node("Add", ["a0", "a1"], ["acc_out"]),
         const("row", np.array([0], np.int64)), oh.make_node("Gather", ["acc_out", "row"], ["r"], axis=0),
         oh.make_node("Concat", ["rows", "r"], ["rows_out"], axis=0),
         const("ax1", np.array([1], np.int64)),
         oh.make_node("ReduceSum", ["acc_out", "ax1"], ["sum"], keepdims=0),
         oh.make_node("Neg", ["r"], ["neg"])],
        "body",
        [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, []), styled("acc", style, F, [2, 3]),
         styled("rows", style, F, ["n", 3])],
        [vi("cond_out", TP.BOOL, []), styled("acc_out", style, F, [2, 3]), styled("rows_out", style, F, ["n1", 3]),
         styled("sum", style, F, [2]), styled("neg", style, F, [1, 3])])
    inits = [onnx.numpy_helper.from_array(np.array(True), "cond0"), onnx.numpy_helper.from_array(np.zeros((2, 3), np.float32), "acc0"),
             onnx.numpy_helper.from_array(np.zeros((1, 3), np.float32), "rows0")]
    inputs = [vi("x", F, [2, 3])]
    if trip_input:
        inputs.append(vi("m", TP.INT64, []))
    else:
        inits.append(onnx.numpy_helper.from_array(np.array(4, np.int64), "m"))
    return model([oh.make_node("Loop", ["m", "cond0", "acc0", "rows0"], ["acc", "rows", "sums", "negs"], body=body)],
                 inputs, [vi("acc", F, [2, 3]), vi("rows", F, ["r", 3]), vi("sums", F, ["t", 2]), vi("negs", F, ["t", 1, 3])],
                 inits, opset)


def scan(style: str, opset: int = 21) -> onnx.ModelProto:
    """A Scan with a state, two scanned inputs (axes 0 and 1), a captured weight and outputs stacked on axes 0 and 1."""
    body = oh.make_graph(
        [oh.make_node("Add", ["s", "xt"], ["s_out"]), oh.make_node("Mul", ["s_out", "w"], ["y_t"]),
         oh.make_node("Sub", ["s_out", "ut"], ["z_t"])],
        "body", [styled("s", style, F, [3]), styled("xt", style, F, [3]), styled("ut", style, F, [3])],
        [styled("s_out", style, F, [3]), styled("y_t", style, F, [3]), styled("z_t", style, F, [3])])
    return model(
        [oh.make_node("Scan", ["s0", "x", "u"], ["s", "ys", "zs"], body=body, num_scan_inputs=2,
                      scan_input_axes=[0, 1], scan_output_axes=[0, 1])],
        [vi("s0", F, [3]), vi("x", F, [4, 3]), vi("u", F, [3, 4])],
        [vi("s", F, [3]), vi("ys", F, [4, 3]), vi("zs", F, [3, 4])],
        [onnx.numpy_helper.from_array(np.array([0.5, -1, 2], np.float32), "w")], opset)


def nested_if_in_loop(style: str, opset: int = 21) -> onnx.ModelProto:
    """A Loop whose body branches on the iteration's parity; the branches read the main graph's input two levels up."""
    even = oh.make_graph([oh.make_node("Add", ["acc", "x"], ["ev"])], "even", [], [styled("ev", style, F, [2, 3])])
    odd = oh.make_graph([const("three", np.float32(3)), oh.make_node("Mul", ["x", "three"], ["x3"]),
                         oh.make_node("Sub", ["acc", "x3"], ["od"])], "odd", [], [styled("od", style, F, [2, 3])])
    body = oh.make_graph(
        [const("two", np.array(2, np.int64)), oh.make_node("Mod", ["i", "two"], ["par"]),
         const("zero", np.array(0, np.int64)), oh.make_node("Equal", ["par", "zero"], ["is_even"]),
         oh.make_node("If", ["is_even"], ["acc_out"], then_branch=even, else_branch=odd),
         oh.make_node("Identity", ["cond_in"], ["cond_out"]), oh.make_node("Sigmoid", ["acc_out"], ["sig"])],
        "body", [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, []), styled("acc", style, F, [2, 3])],
        [vi("cond_out", TP.BOOL, []), styled("acc_out", style, F, [2, 3]), styled("sig", style, F, [2, 3])])
    inits = [onnx.numpy_helper.from_array(np.array(5, np.int64), "m"), onnx.numpy_helper.from_array(np.array(True), "c0")]
    return model([oh.make_node("Loop", ["m", "c0", "a0"], ["acc", "sigs"], body=body)],
                 [vi("x", F, [2, 3]), vi("a0", F, [2, 3])], [vi("acc", F, [2, 3]), vi("sigs", F, [5, 2, 3])], inits, opset)


# ---- checking -----------------------------------------------------------------------------------


def body_types(m: onnx.ModelProto) -> list[tuple[str, str, onnx.TypeProto | None]]:
    """(body path, value name, its type or None) for every input, output and node result of every body."""
    found: list[tuple[str, str, onnx.TypeProto | None]] = []

    def visit(g: onnx.GraphProto, path: str) -> None:
        typed = {v.name: v.type for v in (*g.input, *g.output, *g.value_info) if v.HasField("type")}
        names = [i.name for i in g.input] + [o for n in g.node for o in n.output if o] + [o.name for o in g.output]
        for name in dict.fromkeys(names):
            found.append((path, name, typed.get(name)))
        for n in g.node:
            for a in n.attribute:
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    visit(sub, f"{path}/{n.op_type}.{a.name}")

    for n in m.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                visit(a.g, f"{n.op_type}.{a.name}")
    return found


def dims(tp: onnx.TypeProto) -> list[int | None] | None:
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]


def assert_complete(m: onnx.ModelProto, loose: set[str] = frozenset()) -> None:
    """Every body value has an element type and a static shape (values named in ``loose`` may miss dims)."""
    entries = body_types(m)
    assert entries, "the model has no bodies"
    for path, name, tp in entries:
        assert tp is not None and tp.tensor_type.elem_type, f"{path}: '{name}' has no type"
        d = dims(tp)
        if name in loose:
            continue
        assert d is not None and None not in d, f"{path}: '{name}' has shape {d}"


def roundtrip(src: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], tmp_path: Path, passes: str | None = None,
              name: str = "out") -> onnx.ModelProto:
    """Load, optionally optimize, export with the full checker; outputs equal the original's under ORT."""
    path = tmp_path / f"{name}_src.onnx"
    onnx.save(src, str(path))
    graph = nasc.load(path)
    if passes:
        graph = nasc.optimize(graph, passes)
    out = nasc.export_onnx(graph, tmp_path / f"{name}.onnx")  # raises if the full checker fails
    exported = onnx.load(str(out))
    want, got = ort_session(str(path)), ort_session(str(out))
    for feed in feeds:
        for a, b in zip(run_ort(want, feed), run_ort(got, feed), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(b, a, rtol=0, atol=ATOL)
    return exported


def randn(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# ---- the synthetic models ------------------------------------------------------------------------


@pytest.mark.parametrize("passes", [None, "simplify,fuse"])
@pytest.mark.parametrize(("style", "opset"), SOURCES)
def test_if_with_captured_values(style, opset, passes, tmp_path):
    rng = np.random.default_rng(0)
    feeds = [{"x": randn(rng, 2, 3), "c": np.array(c)} for c in (True, False, True, False)]
    m = roundtrip(if_with_captures(style, opset=opset), feeds, tmp_path, passes)
    assert_complete(m, loose={"z"})
    out = {o.name: dims(o.type) for o in m.graph.output}
    assert out == {"y": [2, 3], "z": [None, None]}  # the branches agree on y; on z only about the rank


def test_if_with_a_constant_condition_has_the_type_of_its_branch(tmp_path):
    g = nasc.load(conditional_squeeze())
    assert str(g.outputs[0].type) == "f32[4]"
    m = roundtrip(conditional_squeeze(), [{"x": randn(np.random.default_rng(1), 1, 4)}], tmp_path)
    assert_complete(m)
    assert dims(m.graph.output[0].type) == [4]


def test_an_output_of_unknown_rank_is_a_clear_export_error(tmp_path):
    g = nasc.load(conditional_squeeze(cond_from_input=True))
    with pytest.raises(ExportError, match=r"graph output 'y' has no known rank.*lost at 'If'.*branches give results of different ranks"):
        nasc.export_onnx(g, tmp_path / "y.onnx")
    # ONNX Runtime runs such a graph (nasc reads intermediate values back this way)
    x = randn(np.random.default_rng(7), 1, 4)
    (y,) = run_ort(ort_session(to_onnx(g).SerializeToString()), {"x": x, "c": np.array(True)})
    np.testing.assert_array_equal(y, x[0] + 1)


@pytest.mark.parametrize("passes", [None, "simplify,fuse"])
@pytest.mark.parametrize(("style", "opset"), SOURCES)
def test_loop_with_carried_state_and_scan_outputs(style, opset, passes, tmp_path):
    rng = np.random.default_rng(2)
    feeds = [{"x": randn(rng, 2, 3)} for _ in range(3)]
    m = roundtrip(loop_with_state_and_scans(style, opset=opset), feeds, tmp_path, passes)
    # 'rows' grows by one row per iteration: its first dim is not one size
    assert_complete(m, loose={"rows", "rows_out"})
    body = m.graph.node[0].attribute[0].g
    assert [dims(i.type) for i in body.input] == [[], [], [2, 3], [None, 3]]
    out = {o.name: dims(o.type) for o in m.graph.output}
    assert out == {"acc": [2, 3], "rows": [None, 3], "sums": [4, 2], "negs": [4, 1, 3]}


def test_loop_with_a_trip_count_from_an_input(tmp_path):
    rng = np.random.default_rng(3)
    feeds = [{"x": randn(rng, 2, 3), "m": np.array(k, np.int64)} for k in (1, 3, 6)]
    m = roundtrip(loop_with_state_and_scans("no-type", trip_input=True), feeds, tmp_path)
    assert_complete(m, loose={"rows", "rows_out"})
    assert {o.name: dims(o.type) for o in m.graph.output}["sums"] == [None, 2]
    # no iteration at all: ORT can shape empty scan outputs only from the body's types, which the source
    # left out ((0,) instead of (0, 2)); the export has them, and runs as the fully typed source does
    feed = {"x": randn(rng, 2, 3), "m": np.array(0, np.int64)}
    typed = run_ort(ort_session(loop_with_state_and_scans("full", trip_input=True).SerializeToString()), feed)
    got = run_ort(ort_session(m.SerializeToString()), feed)
    assert [a.shape for a in got] == [a.shape for a in typed] == [(2, 3), (1, 3), (0, 2), (0, 1, 3)]


@pytest.mark.parametrize("passes", [None, "simplify,fuse"])
@pytest.mark.parametrize(("style", "opset"), SOURCES)
def test_scan_with_state_axes_and_a_captured_weight(style, opset, passes, tmp_path):
    rng = np.random.default_rng(4)
    feeds = [{"s0": randn(rng, 3), "x": randn(rng, 4, 3), "u": randn(rng, 3, 4)} for _ in range(3)]
    m = roundtrip(scan(style, opset=opset), feeds, tmp_path, passes)
    assert_complete(m)
    assert {o.name: dims(o.type) for o in m.graph.output} == {"s": [3], "ys": [4, 3], "zs": [3, 4]}


@pytest.mark.parametrize("passes", [None, "simplify,fuse"])
@pytest.mark.parametrize(("style", "opset"), SOURCES)
def test_if_nested_in_a_loop(style, opset, passes, tmp_path):
    rng = np.random.default_rng(5)
    feeds = [{"x": randn(rng, 2, 3), "a0": randn(rng, 2, 3)} for _ in range(3)]
    m = roundtrip(nested_if_in_loop(style, opset=opset), feeds, tmp_path, passes)
    assert_complete(m)
    paths = {p for p, _, _ in body_types(m)}
    assert {"Loop.body", "Loop.body/If.then_branch", "Loop.body/If.else_branch"} <= paths


def test_names_defined_in_bodies_are_not_reused_outside(tmp_path):
    # after a rewrite the main graph may hold a value named like one inside a body
    g = nasc.load(if_with_captures("full"))
    relu = next(n for n in g.nodes if n.op == "Relu")
    relu.outputs[0].name = "t0"  # 't0' is defined inside the then branch; the branch reads the Relu as 'h'
    m = to_onnx(g)
    onnx.checker.check_model(m, full_check=True)
    main_names = {o for n in m.graph.node for o in n.output}
    assert "t0" not in main_names
    feed = {"x": randn(np.random.default_rng(6), 2, 3), "c": np.array(True)}
    src = ort_session(if_with_captures("full").SerializeToString())
    for a, b in zip(run_ort(src, feed), run_ort(ort_session(m.SerializeToString()), feed)):
        np.testing.assert_allclose(b, a, rtol=0, atol=ATOL)


def nasc_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasc.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize(("make", "passes"), [
    (lambda: if_with_captures("no-type"), []),
    (lambda: loop_with_state_and_scans("empty-type"), []),  # the reported failure: "Field 'shape' ... missing"
    (lambda: loop_with_state_and_scans("empty-type"), ["--passes", "simplify,fuse"]),
    (lambda: scan("elem-only"), ["--passes", "simplify,fuse"]),
    (lambda: nested_if_in_loop("no-type"), ["--passes", "simplify,fuse"]),
], ids=["if", "loop", "loop-simplify-fuse", "scan-simplify-fuse", "nested-simplify-fuse"])
def test_cli_compile_to_onnx(make, passes, tmp_path):
    src, out = tmp_path / "src.onnx", tmp_path / "build"
    onnx.save(make(), str(src))
    r = nasc_cmd("compile", str(src), "--target", "onnx", "-o", str(out), *passes)
    assert r.returncode == 0, r.stderr
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    assert json.loads((out / "report.json").read_text())["fidelity"]["max_abs_err"] <= ATOL


# ---- Silero VAD (PyPI silero-vad): an LSTM state, torch's conditional squeezes, an If on the sample rate ----


def silero(name: str) -> Path:
    spec = importlib.util.find_spec("silero_vad")
    assert spec is not None and spec.origin, "silero-vad is a test dependency (make venv installs it)"
    return Path(spec.origin).parent / "data" / name


def audio_chunks(sr: int, chunk: int, context: int, n: int, seed: int) -> list[np.ndarray]:
    """n chunks of a tone with a noise floor, each preceded by the previous chunk's tail (silero's OnnxWrapper)."""
    rng = np.random.default_rng(seed)
    t = np.arange(chunk * n + context) / sr
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 1.5 * t)) + 0.02 * rng.standard_normal(t.size)
    wave[:context] = 0
    return [wave[k * chunk : k * chunk + chunk + context].astype(np.float32)[None] for k in range(n)]


def stream(sess, chunks: list[np.ndarray], sr: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Run chunk after chunk, feeding the recurrent state back: the probabilities and the last state."""
    state = np.zeros((2, 1, 128), np.float32)
    probs = []
    for x in chunks:
        prob, state = run_ort(sess, {"input": x, "state": state, "sr": np.array(sr, np.int64)})
        probs.append(prob)
    return probs, state


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def silero_sessions(name: str, samples: int, passes: str | None, tmp_path) -> tuple:
    """ONNX Runtime on the original Silero file and on nasc's export of it (checked complete) at ``samples``."""
    src = silero(name)
    graph = nasc.load(src, {"input": (1, samples), "state": (2, 1, 128)})
    assert [str(v.type) for v in graph.outputs] == ["f32[1,1]", "f32[2,1,128]"]
    if passes:
        graph = nasc.optimize(graph, passes)
    out = nasc.export_onnx(graph, tmp_path / "vad.onnx")
    assert_complete(onnx.load(str(out)))
    return ort_session(str(src)), ort_session(str(out))


@pytest.mark.parametrize("passes", [None, "simplify,fuse"])
def test_silero_vad_16k_opset15_streams_like_the_original(passes, tmp_path):
    want, got = silero_sessions("silero_vad_16k_op15.onnx", 576, passes, tmp_path)  # 512 samples + 64 of context
    for sr in (16000, 8000):  # this model takes sr but computes at 16 kHz whatever it says
        chunks = audio_chunks(16000, 512, 64, 12, seed=sr)
        (p0, s0), (p1, s1) = stream(want, chunks, sr), stream(got, chunks, sr)
        assert max_diff(p0, p1) <= ATOL and max_diff([s0], [s1]) <= ATOL
        assert np.ptp(np.concatenate(p0)) > 1e-3  # the state matters: the probabilities move


@pytest.mark.parametrize("passes", [None, "simplify,fuse"])
def test_silero_vad_both_sample_rate_branches(passes, tmp_path):
    # the If on sr: the 16 kHz branch and the 8 kHz branch; both accept 256 + 32 samples
    want, got = silero_sessions("silero_vad.onnx", 288, passes, tmp_path)
    for sr in (8000, 16000):
        chunks = audio_chunks(sr, 256, 32, 12, seed=sr)
        (p0, s0), (p1, s1) = stream(want, chunks, sr), stream(got, chunks, sr)
        assert max_diff(p0, p1) <= ATOL and max_diff([s0], [s1]) <= ATOL


def test_silero_vad_with_a_shape_one_branch_cannot_take_is_a_clear_error(tmp_path):
    # 576 samples suit the 16 kHz branch only: the 8 kHz branch does not type, and ONNX Runtime would refuse
    # the model (it refuses the original with these static shapes too); nasc says so instead of crashing
    graph = nasc.load(silero("silero_vad.onnx"), {"input": (1, 576), "state": (2, 1, 128)})
    with pytest.raises(ExportError, match=r"fails onnx\.checker.*If_0.*choose input shapes that every branch accepts"):
        nasc.export_onnx(graph, tmp_path / "vad.onnx")


def test_silero_vad_cli_compile(tmp_path):
    out = tmp_path / "build"
    r = nasc_cmd("compile", str(silero("silero_vad_16k_op15.onnx")), "--target", "onnx", "-o", str(out),
                 "--input-shape", "input=1,576", "--input-shape", "state=2,1,128", "--passes", "simplify,fuse")
    assert r.returncode == 0, r.stderr
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    assert json.loads((out / "report.json").read_text())["fidelity"]["max_abs_err"] <= ATOL
