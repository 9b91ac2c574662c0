"""report/page.py without a browser: what each build's page holds, `nasc report DIR`, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nasc
from nasc.cli import main
from nasc.report import render

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nasc.compile(DIGITS, "onnx", tmp_path_factory.mktemp("r") / "out").out


def test_compile_writes_the_page_beside_the_report(built: Path) -> None:
    report = json.loads((built / "report.json").read_text())
    page = (built / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "digits_cnn.onnx" in page
    assert [p.name for p in built.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    # one row per compute node of the built graph, with its cost
    assert [r["op"] for r in report["layers"]] == ["Conv", "Relu", "Conv", "Relu", "Add", "Conv", "Relu",
                                                   "GlobalAveragePool", "Flatten", "Gemm"]
    assert sum(r["macs"] for r in report["layers"]) == report["summary"]["macs"]
    assert sum(r["params"] for r in report["layers"]) == report["summary"]["params"]
    assert {r["bits"] for r in report["layers"] if r["params"]} == {32}


def test_an_uninformative_certificate_is_marked_on_the_page(built: Path) -> None:
    report = json.loads((built / "report.json").read_text())
    assert "(uninformative)" not in render(report)
    report["fidelity"]["uninformative"] = "the original model's outputs are all zero on these inputs"
    report["warnings"] = ["the fidelity figures certify nothing: ..."]
    page = render(report)
    assert "(uninformative)" in page and "certify nothing" in page


def test_nasc_report_renders_the_page_again(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (built / "report.html").unlink()
    assert main(["report", str(built)]) == 0
    assert f"wrote {built / 'report.html'}" in capsys.readouterr().out
    assert 'data-section="layers"' in (built / "report.html").read_text()


def test_nasc_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "has no report.json: give the directory `nasc compile -o DIR` wrote" in capsys.readouterr().err
    (tmp_path / "report.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    (tmp_path / "report.json").write_text("[1, 2]")
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a nasc build report" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_a_cpu_build_times_each_kernel(tmp_path: Path) -> None:
    report = nasc.compile(DIGITS, "cpu", tmp_path / "cpu").report
    kernels = report["kernel_ms"]
    names = [k["kernel"] for k in kernels]
    assert any(n.startswith("fused_conv2d") for n in names) and not any(n.startswith("vm.builtin") for n in names)
    assert all(k["calls"] >= 1 and k["ms"] > 0 for k in kernels)
    # the kernels are part of one inference: their sum is of the order of the measured latency, not above it by far
    assert sum(k["ms"] for k in kernels) < 5 * report["latency_ms"]["nasc"] + 0.05


def test_a_quantized_build_reports_each_layers_weight_width(tmp_path: Path) -> None:
    report = nasc.compile(DIGITS, "onnx", tmp_path / "q", passes="simplify,fuse,quant-policy{bits=8,4 flash=6KB},quantize",
                          calib=str(ROOT / "examples" / "digits_test.npz")).report
    rows = {r["name"]: r for r in report["layers"]}
    assert not any(r["op"] in ("QuantizeLinear", "DequantizeLinear") for r in rows.values())
    for layer, entry in report["quant_policy"].items():
        assert rows[layer]["bits"] == entry["bits"]  # the integer width behind each layer's DequantizeLinear
    assert {rows[k]["bits"] for k in report["quant_policy"]} == {8, 4}


def test_an_mcu_builds_layers_name_their_step_and_arena_slot(tmp_path: Path) -> None:
    report = nasc.compile(DIGITS, "mcu:stm32f411", tmp_path / "m", passes="simplify,fuse,quantize",
                          calib=str(ROOT / "examples" / "digits_test.npz"), verify_on="none").report
    rows = {r["name"]: r for r in report["layers"]}
    convs = [r for r in rows.values() if r["op"] in ("Conv", "Gemm")]
    assert len(convs) == 4 and all("step" in r for r in convs)
    steps = {s["step"]: s for s in report["steps"]}
    for r in convs:
        assert r["name"] in steps[r["step"]]["nodes"]
        assert r["name"] in steps[r["step"]]["layer"]  # the label names the layer, not its DequantizeLinear
    inner = [r for r in convs if isinstance(r.get("arena_offset"), int)]
    assert inner and all(0 <= r["arena_offset"] < report["arena_bytes"] and r["arena_bytes"] > 0 for r in inner)
    page = (tmp_path / "m" / "report.html").read_text()
    assert "arena offset" in page
