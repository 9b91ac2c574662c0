"""The `nasc` command as a user runs it: inspect, compile --target onnx, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from nasc.backends.fidelity import ort_session, run_ort


def nasc_cmd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasc.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_inspect_json_has_the_promised_keys(digits_onnx):
    r = nasc_cmd("inspect", str(digits_onnx), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"nodes", "params", "macs", "ops", "inputs", "outputs"} <= d.keys()
    assert d["inputs"] == [{"name": "image", "dtype": "f32", "shape": [1, 1, 8, 8]}]
    assert d["outputs"] == [{"name": "logits", "dtype": "f32", "shape": [1, 10]}]
    assert d["ops"]["Conv"] == 3 and d["params"] == 7450
    # conv MACs: 16*64*9 + 16*64*144 + 32*16*144, head 320, plus elementwise work
    assert d["macs"] >= 9216 + 147456 + 73728 + 320
    assert d["largest_activation"]["shape"] == [1, 16, 8, 8]


def test_inspect_table_output(digits_onnx):
    r = nasc_cmd("inspect", str(digits_onnx))
    assert r.returncode == 0, r.stderr
    for text in ("image", "f32[1,1,8,8]", "logits", "nodes 10", "per scope", "res.conv", "largest activation"):
        assert text in r.stdout


def test_compile_onnx_writes_model_and_report_with_fidelity(digits_onnx, tmp_path):
    out = tmp_path / "build"
    r = nasc_cmd("compile", str(digits_onnx), "--target", "onnx", "-o", str(out), "--seed", "7")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.html", "report.json"]
    rep = json.loads((out / "report.json").read_text())
    fid = rep["fidelity"]
    assert fid["seed"] == 7 and fid["max_abs_err"] <= 1e-6 and fid["cosine"] > 0.999999
    assert "fidelity vs original" in r.stdout
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    # the compiled model classifies the shipped test set as the original does
    test = np.load(Path(digits_onnx).with_name("digits_test.npz"))
    a, b = ort_session(str(digits_onnx)), ort_session(str(out / "model.onnx"))
    x = test["image"][:50]
    pa = [int(np.argmax(run_ort(a, {"image": x[i : i + 1]})[0])) for i in range(len(x))]
    pb = [int(np.argmax(run_ort(b, {"image": x[i : i + 1]})[0])) for i in range(len(x))]
    assert pa == pb and np.mean(np.array(pa) == test["label"][:50]) > 0.9


def test_compile_with_input_shape_for_dynamic_model(tmp_path):
    from onnx import TensorProto as T
    from onnx import helper

    x = helper.make_tensor_value_info("x", T.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", T.FLOAT, ["batch", 4])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    p = tmp_path / "dyn.onnx"
    onnx.save(m, str(p))
    r = nasc_cmd("compile", str(p), "-o", str(tmp_path / "o1"))
    assert r.returncode == 2 and "dynamic dims" in r.stderr and "--input-shape x=Nx4" in r.stderr
    r = nasc_cmd("compile", str(p), "-o", str(tmp_path / "o2"), "--input-shape", "x=3x4")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert rep["input_shapes"] == {"x": [3, 4]}


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda d: d / "missing.onnx", (), "no such file"),
        (lambda d: (d / "t.txt").write_text("hello") and d / "t.txt", (),
         "t.txt' is not a readable ONNX model (truncated or another format?)"),
        (lambda d: (d / "trunc.onnx").write_bytes(b"\x08\x07\x12\x04ab") and d / "trunc.onnx", (),
         "trunc.onnx' is not a readable ONNX model (truncated or another format?)"),
        (None, ("--input-shape", "image=1x1x8"),
         "input 'image' has rank 4 (f32[1,1,8,8]), but the shape given has rank 3: 1x1x8"),
        (None, ("--input-shape", "image:1x1x8x8"), "expected NAME=DxDxD"),
        (None, ("--target", "fpga"), "unknown target 'fpga'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output_dir(tmp_path, digits_onnx, make, args, message):
    model = make(tmp_path) if make else digits_onnx
    out = tmp_path / "out"
    r = nasc_cmd("compile", str(model), "-o", str(out), *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("nasc: error: ") and message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no half-written temp dir left


def test_failed_build_leaves_an_existing_output_untouched(tmp_path, digits_onnx):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous build")
    r = nasc_cmd("compile", str(digits_onnx), "-o", str(out), "--input-shape", "image=2x1x8")
    assert r.returncode == 2
    assert (out / "keep.txt").read_text() == "previous build"


def test_passes_lists_every_pass_with_options():
    r = nasc_cmd("passes")
    assert r.returncode == 0, r.stderr
    for text in ("simplify (exact)", "fuse (exact)", "max-iterations", "transformer", "pipeline syntax"):
        assert text in r.stdout


def test_compile_runs_a_pipeline_on_calibration_data(digits_onnx, tmp_path):
    out = tmp_path / "b"
    calib = Path(digits_onnx).with_name("digits_test.npz")
    r = nasc_cmd("compile", str(digits_onnx), "-o", str(out), "--passes", "simplify,fuse", "--calib", str(calib),
                 "--print-ir-after-all")
    assert r.returncode == 0, r.stderr
    assert "simplify: " in r.stdout and "fuse: " in r.stdout and "// ----- IR after fuse -----" in r.stdout
    assert "fidelity vs original (64 calibration samples)" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["pipeline"] == "simplify,fuse" and [p["pass"] for p in rep["passes"]] == ["simplify", "fuse"]
    assert rep["fidelity"]["inputs"] == "64 calibration samples" and rep["fidelity"]["top1_agreement"] == 1.0


@pytest.mark.parametrize(("arrays", "message"), [
    ({"img": np.zeros((4, 1, 8, 8), np.float32)}, "no array for input(s) ['image']"),
    ({"image": np.zeros((4, 3, 8, 8), np.float32)}, "expected [samples, 1, 1, 8, 8]"),
])
def test_bad_calibration_files_are_clear_errors(digits_onnx, tmp_path, arrays, message):
    calib = tmp_path / "c.npz"
    np.savez(calib, **arrays)
    r = nasc_cmd("compile", str(digits_onnx), "-o", str(tmp_path / "o"), "--calib", str(calib))
    assert r.returncode == 2 and message in r.stderr and not (tmp_path / "o").exists()


def test_a_bad_pipeline_is_a_clear_error(digits_onnx, tmp_path):
    r = nasc_cmd("compile", str(digits_onnx), "-o", str(tmp_path / "o"), "--passes", "simplify,fusee")
    assert r.returncode == 2 and "unknown pass 'fusee' (did you mean 'fuse'?)" in r.stderr


def test_bench_prints_one_table_with_onnxruntime_and_nasc(digits_onnx):
    r = nasc_cmd("bench", str(digits_onnx))
    assert r.returncode == 0, r.stderr
    assert "onnxruntime (all optimizations" in r.stdout and "nasc cpu (default schedules" in r.stdout
    assert r.stdout.count("x │") >= 2 or r.stdout.count("x ") >= 2


def test_bench_with_calibration_adds_the_int8_rows(digits_onnx):
    calib = Path(digits_onnx).parent / "digits_test.npz"
    r = nasc_cmd("bench", str(digits_onnx), "--calib", str(calib))
    assert r.returncode == 0, r.stderr
    out = r.stdout  # rich wraps the runtime column: look for words, not phrases
    assert "quantize_static" in out and "reduce-range=true}" in out
    assert out.count("integer") == 2  # nasc's two int8 builds: full-range and 7-bit weights


def _zeros_model(path: Path) -> Path:
    """y = Relu(-|x|): zero for every input, like a randomly initialised model whose outputs collapse."""
    from onnx import TensorProto
    from onnx import helper as h

    g = h.make_graph([h.make_node("Abs", ["x"], ["a"]), h.make_node("Neg", ["a"], ["n"]),
                      h.make_node("Relu", ["n"], ["y"])], "zeros",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_a_certificate_that_tested_nothing_says_so(tmp_path: Path, digits_onnx: Path) -> None:
    model = _zeros_model(tmp_path / "zeros.onnx")
    r = nasc_cmd("compile", str(model), "--target", "onnx", "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "top1 agreement 1.000 (uninformative: see the warning)" in r.stdout
    assert ("the fidelity figures certify nothing: the original model's outputs are all zero on these inputs"
            in r.stderr) and "--calib" in r.stderr
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["fidelity"]["uninformative"] == "the original model's outputs are all zero on these inputs"
    assert any("certify nothing" in w for w in rep["warnings"])
    # a model whose outputs vary gets no such mark
    r = nasc_cmd("compile", str(digits_onnx), "--target", "onnx", "-o", str(tmp_path / "d"))
    assert r.returncode == 0 and "uninformative" not in r.stdout + r.stderr
