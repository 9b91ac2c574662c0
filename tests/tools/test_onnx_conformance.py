"""A curated subset of the onnx backend test suite (written by the ONNX project, not us) passes through nasc.

Each case loads the suite's model into the IR, verifies it, exports it back and
runs it under ONNX Runtime against the suite's expected outputs with the suite's
tolerances. Each case is first checked to pass under ONNX Runtime alone, so the
subset cannot silently drift to tests that prove nothing. The full run
(tools/onnx_conformance.py) is reported in docs/conformance.md.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "onnx_conformance.py"
_spec = importlib.util.spec_from_file_location("onnx_conformance", TOOL)
conf = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["onnx_conformance"] = conf
_spec.loader.exec_module(conf)  # type: ignore[union-attr]

# node tests of the ops the op registry covers, plus whole models from the suite
OPS = (
    "conv", "convtranspose", "gemm", "matmul", "relu", "clip", "sigmoid", "hardsigmoid", "hardswish", "tanh", "erf",
    "gelu", "prelu", "leakyrelu", "softmax", "batchnorm", "layer_normalization", "maxpool", "averagepool",
    "globalaveragepool", "reshape", "flatten", "transpose", "squeeze", "unsqueeze", "concat", "split", "slice",
    "gather", "pad", "resize", "expand", "where", "cast", "reduce_mean", "reduce_sum", "reduce_max", "pow", "sqrt",
    "shape", "constantofshape", "range", "quantizelinear", "dequantizelinear", "add", "sub", "mul", "div", "equal",
    "less", "greater", "einsum", "topk", "cumsum", "tile", "if", "loop", "scan",
)
NODE = re.compile(r"^test_(" + "|".join(OPS) + r")(_|$)")
MODELS = re.compile(r"^test_(operator_|gradient_of|sequence_model|single_relu|bvlc_alexnet|densenet121|inception_v1|"
                    r"resnet50|shufflenet|squeezenet|vgg19|zfnet512|conv_|gru|lstm|rnn)")
# ORT passes these, nasc does not, for reasons written in docs/conformance.md
KNOWN = {"test_affine_grid_2d_expanded_cpu", "test_affine_grid_2d_align_corners_expanded_cpu", "test_scan_sum_cpu"}


def _curated(kind: str) -> str:
    """A regex naming the curated tests of one kind (node tests by op, every model test)."""
    return NODE.pattern if kind == "node" else MODELS.pattern if kind == "pytorch-operator" else r"^test_"


KNOWN_WITH_PASSES = KNOWN | {"test_affine_grid_3d_expanded_cpu", "test_affine_grid_3d_align_corners_expanded_cpu"}


@pytest.mark.parametrize("kind", conf.KINDS)
def test_nasc_passes_every_curated_test_onnxruntime_passes(kind):
    check_kind(kind, "", KNOWN)


@pytest.mark.parametrize("kind", ["node", "pytorch-converted"])
def test_simplify_and_fuse_keep_the_curated_tests_passing(kind, monkeypatch):
    """The exact passes, run on models nobody here wrote, must not change a result beyond the suite's tolerance."""
    monkeypatch.setattr(conf, "PIPELINE", "simplify,fuse")
    check_kind(kind, "simplify,fuse", KNOWN_WITH_PASSES)


def check_kind(kind: str, pipeline: str, known: set[str]) -> None:
    results = conf.run((kind,), _curated(kind))
    ort, nasc = results["ort"], results["nasc"]
    ort_passed = {t for t, (st, _) in ort.items() if st == "pass"}
    assert len(ort_passed) >= {"node": 450, "light": 5}.get(kind, 10), "the subset shrank: is the onnx pin right?"
    failures = {t: nasc[t][1] for t in sorted(ort_passed - known) if nasc[t][0] != "pass"}
    assert failures == {}, f"with pipeline {pipeline!r}"


# ---- --target cpu / mcu ---------------------------------------------------------------------------------------


def test_target_runs_classify_and_bind_operands():
    """Two node tests in the worker processes: Relu passes on both targets; Slice's starts, ends, axes and steps
    (graph inputs in the suite) are bound to the test's values; the string test is a clear refusal."""
    results, records = conf.run_targets(("cpu", "mcu"), ("node",), r"^test_(relu|slice|equal_string)_cpu$", jobs=2)
    assert set(results) == {"ort", "cpu", "mcu"}
    for target in ("cpu", "mcu"):
        assert results[target]["test_relu_cpu"] == ("pass", "")
        assert results[target]["test_slice_cpu"] == ("pass", "")
        status, why = results[target]["test_equal_string_cpu"]
        assert status == "unsupported" and "element type str" in why
    bound = {r["test"]: r["bound"] for r in records if r["mode"] == "cpu"}
    assert bound["test_slice_cpu"] == ["starts", "ends", "axes", "steps"] and bound["test_relu_cpu"] == []


def test_a_hung_test_is_a_crash_and_the_worker_restarts():
    """With no time allowed, a build (seconds: TVM is imported first) is killed once the driver sees it started:
    recorded as a crash, and a new worker runs what is left (ONNX Runtime's run may finish between two polls)."""
    results, _ = conf.run_targets(("cpu",), ("node",), r"^test_(abs|neg)_cpu$", jobs=1, timeout_s=0.0)
    for test in ("test_abs_cpu", "test_neg_cpu"):
        status, why = results["cpu"][test]
        assert status == "crash" and why.startswith("timed out"), (test, status, why)
        assert results["ort"][test][0] in ("pass", "crash")


def test_outcomes_tell_wrong_numbers_from_internal_errors():
    import numpy as np
    from onnx.backend.test.runner import Runner

    from nasc.backends.mcu.verify import McuRunError
    from nasc.errors import UnsupportedModelError

    def err(fn):
        try:
            fn()
        except BaseException:
            return sys.exc_info()
        raise AssertionError("no error")

    def wrong():
        Runner.assert_similar_outputs([np.ones(2)], [np.zeros(2)], rtol=1e-3, atol=1e-7)

    def bare_assert():  # an internal assert, not the suite's comparison
        raise AssertionError("an invariant inside nasc")

    def refused():
        raise UnsupportedModelError("no lowering")

    def c_failed():
        raise McuRunError("make host failed")

    assert conf.outcome(err(wrong)) == "fail"
    assert conf.outcome(err(bare_assert)) == "crash"
    assert conf.outcome(err(refused)) == "unsupported"
    assert conf.outcome(err(c_failed)) == "crash"
    assert conf.outcome(err(lambda: {}["x"])) == "crash"


def test_the_report_keeps_the_other_run_section(tmp_path):
    doc = tmp_path / "conformance.md"
    conf.write_report(doc, "# onnx run\n\nfirst", targets=False)
    conf.write_report(doc, "## targets\n\none", targets=True)
    conf.write_report(doc, "# onnx run\n\nsecond", targets=False)
    text = doc.read_text()
    assert text.startswith("# onnx run\n\nsecond") and "## targets\n\none" in text and "first" not in text
    conf.write_report(doc, "## targets\n\ntwo", targets=True)
    text = doc.read_text()
    assert "second" in text and "two" in text and "one" not in text.replace("second", "")


def test_torch_target_runs_and_classifies():
    """--target torch: nasc.to_torch of the loaded graph under no_grad. Relu passes, Slice's operands are bound as
    on the other targets, uint64 division (which torch has no kernel for; computed in int64) is exact, and a string
    test is a clear refusal."""
    results, records = conf.run_targets(("torch",), ("node",), r"^test_(relu|slice|div_uint64|equal_string)_cpu$",
                                        jobs=1)
    assert set(results) == {"ort", "torch"}
    for test in ("test_relu_cpu", "test_slice_cpu", "test_div_uint64_cpu"):
        assert results["torch"][test] == ("pass", ""), test
    status, why = results["torch"]["test_equal_string_cpu"]
    assert status == "unsupported" and "element type str" in why
    bound = {r["test"]: r["bound"] for r in records if r["mode"] == "torch"}
    assert bound["test_slice_cpu"] == ["starts", "ends", "axes", "steps"]


def test_a_target_row_merges_into_an_earlier_run():
    """--merge keeps an earlier run's rows of the targets not run now, and the report names each row's command."""
    ort = {"test_relu_cpu": ("pass", ""), "test_abs_cpu": ("pass", "")}
    earlier = {"results": {"ort": ort, "nasc": dict(ort), "cpu": {**ort, "test_abs_cpu": ("unsupported", "x")}},
               "records": [{"test": t, "mode": m, "status": "pass", "reason": "", "bound": [], "s": 1.0}
                           for t in ort for m in ("ort", "onnx", "cpu")],
               "commands": {"ort": "A", "nasc": "A", "cpu": "A"}}
    now = {"ort": dict(ort), "torch": {**ort, "test_relu_cpu": ("crash", "boom")}}
    recs = [{"test": t, "mode": m, "status": "pass", "reason": "", "bound": [], "s": 2.0}
            for t in ort for m in ("ort", "torch")]
    results, records, commands = conf.merge_runs(now, recs, {"ort": "B", "torch": "B"}, earlier)
    assert list(results) == ["ort", "nasc", "cpu", "torch"]
    assert results["cpu"]["test_abs_cpu"] == ("unsupported", "x") and results["torch"] == now["torch"]
    assert commands == {"ort": "B", "nasc": "A", "cpu": "A", "torch": "B"}
    assert sorted({r["mode"] for r in records}) == ["cpu", "onnx", "ort", "torch"]
    assert len([r for r in records if r["mode"] == "ort"]) == 2  # this run's ORT, not the earlier one's too
    text = conf.target_markdown(results, records, "B", commands)
    assert "Produced by `B` (rows ort, torch) and `A` (rows nasc, cpu)" in text
    assert "| nasc, torch target (nasc.to_torch, torch.fx under no_grad) | 1 | 0 | 0 | 1 | 0 | 2 | 1 of 2 |" in text
    assert "### torch: tests that fail or crash (1)" in text
    with pytest.raises(SystemExit):
        conf.merge_runs({"ort": {"test_neg_cpu": ("pass", "")}}, [], {"ort": "B"}, earlier)
