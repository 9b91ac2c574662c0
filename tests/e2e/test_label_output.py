"""Labels that score an output other than the first (a detector's scores beside its boxes): compile's accuracy,
the lossy passes' reports and recover use the output ``label_output`` names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nasc
from nasc.cli import main
from nasc.errors import UsageError


def _two_heads(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(16, 32)).astype(np.float32), "w")
    w_box = numpy_helper.from_array(rng.normal(size=(32, 4)).astype(np.float32), "w_box")
    w_cls = numpy_helper.from_array(rng.normal(size=(32, 3)).astype(np.float32), "w_cls")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"]),
         helper.make_node("MatMul", ["h", "w_box"], ["boxes"]), helper.make_node("MatMul", ["h", "w_cls"], ["scores"])],
        "two_heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])], [w, w_box, w_cls])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.fixture
def model_and_calib(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    model = _two_heads(tmp_path / "two_heads.onnx")
    x = np.random.default_rng(1).normal(size=(40, 1, 16)).astype(np.float32)
    m = onnx.load(model)
    w, w_cls = (numpy_helper.to_array(m.graph.initializer[i]) for i in (0, 2))
    labels = np.argmax(np.maximum(x[:, 0] @ w, 0) @ w_cls, axis=1)
    labels[::4] = (labels[::4] + 1) % 3  # 75% right, so the figure says which output was scored
    np.savez(tmp_path / "calib.npz", x=x, label=labels)
    return model, tmp_path / "calib.npz", labels


def test_compile_scores_the_named_output(model_and_calib, tmp_path: Path) -> None:
    model, calib, _ = model_and_calib
    assert main(["compile", str(model), "-o", str(tmp_path / "a"), "--calib", str(calib), "--label-output",
                 "scores"]) == 0
    acc = json.loads((tmp_path / "a" / "report.json").read_text())["accuracy"]
    assert acc["reference"] == 0.75
    nasc.compile(str(model), "onnx", tmp_path / "b", calib=str(calib))
    first = json.loads((tmp_path / "b" / "report.json").read_text())["accuracy"]
    assert first["reference"] != 0.75  # the boxes' argmax scored against class labels: meaningless, and different


def test_recover_and_the_lossy_reports_use_it(model_and_calib) -> None:
    model, calib, labels = model_and_calib
    from nasc.backends import fidelity

    g0 = nasc.load(str(model))
    feeds = fidelity.load_calibration(str(calib), g0)
    g = nasc.optimize(g0, "prune{ratio=0.25},recover{steps=4 batch=8 eval-every=2 holdout=0.25}", feeds,
                      labels=labels, label_output="scores")
    rec = next(e for e in g.meta["passes"] if e["pass"].startswith("recover"))["details"]
    assert "accuracy" in rec["before"]  # the scores are logits with labels: recover reports their accuracy


def test_an_unknown_output_is_refused_by_name(model_and_calib, tmp_path: Path) -> None:
    model, calib, _ = model_and_calib
    with pytest.raises(UsageError, match=r"label output 'logits' is not an output of the model; outputs: "
                                         r"\['boxes', 'scores'\]"):
        nasc.compile(str(model), "onnx", tmp_path / "c", calib=str(calib), label_output="logits")
    assert not (tmp_path / "c").exists()
