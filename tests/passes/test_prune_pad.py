"""Channel padding (passes.prune_pad): pruned counts padded to a multiple of 8 with zero channels, outputs unchanged.

Float graphs are compared under ONNX Runtime (basic optimizations) to rtol/atol 1e-5; a QDQ graph is compared by
the ONNX semantics of its QDQ pairs, where the padded channels must not move any output at all.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_prune_groups import build

import nasc
from nasc.backends.fidelity import load_calibration, random_inputs, run_graph
from nasc.passes.prune_pad import MULTIPLE, needs_padding, pad_channels

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TOL = 1e-5


def _pruned(name: str, passes: str = "simplify,fuse,prune{ratio=0.3}") -> nasc.Graph:
    return nasc.optimize(nasc.load(EXAMPLES / f"{name}.onnx"), passes, verify=False)


def _widths(g: nasc.Graph) -> list[tuple[int, ...]]:
    return [tuple(n.input(1).shape) for n in g.nodes if n.op in ("Conv", "Gemm", "MatMul") and n.input(1).is_const]


@pytest.mark.parametrize("name", ["digits_cnn", "fashion_cnn", "fashion_vit"])
def test_padding_keeps_the_outputs_and_rounds_the_counts(name: str) -> None:
    g = _pruned(name)
    assert needs_padding(g)
    padded = g.clone()
    p = pad_channels(padded)
    assert p.groups and p.macs_after > p.macs_before
    for gname, before, after in p.groups:
        assert after % MULTIPLE == 0 and before < after < before + MULTIPLE, gname
    # the pruned layers' odd counts are gone (the classes and the input channels are not the graph's to change)
    odd_before = sum(d % MULTIPLE != 0 and d > MULTIPLE // 2 for s in _widths(g) for d in s[:2])
    odd_after = sum(d % MULTIPLE != 0 and d > MULTIPLE // 2 for s in _widths(padded) for d in s[:2])
    assert odd_after < odd_before
    assert [v.shape for v in padded.outputs] == [v.shape for v in g.outputs]
    feeds = random_inputs(g, 0, 2)
    for a, b in zip(run_graph(g, feeds), run_graph(padded, feeds), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(y, x, rtol=TOL, atol=TOL)
    assert not needs_padding(padded) or pad_channels(padded.clone()).groups == []  # idempotent


def test_quantized_graph_is_padded_with_unit_scales_and_stays_exact() -> None:
    calib = load_calibration(str(EXAMPLES / "digits_test.npz"), nasc.load(EXAMPLES / "digits_cnn.onnx"), limit=8)
    g = nasc.optimize(nasc.load(EXAMPLES / "digits_cnn.onnx"), "simplify,fuse,prune{ratio=0.3},quantize",
                      calib=calib, verify=False)
    padded = g.clone()
    assert needs_padding(padded) and pad_channels(padded).groups
    scales = [n.input(1).data for n in padded.nodes if n.op == "DequantizeLinear" and n.input(1).is_const
              and n.input(1).data.size > 1]
    assert scales and all(np.all(s > 0) for s in scales)  # padded entries are 1, never a zero divisor
    for a, b in zip(run_graph(g, calib[:4]), run_graph(padded, calib[:4]), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(y, x)


def test_a_group_that_divides_by_a_per_channel_constant_is_not_padded() -> None:
    g = build('''graph "g" opsets {"": 21}
input %x : f32[1,4,8,8]
const %w1 : f32[13,4,1,1] = "w1"
const %d : f32[1,13,1,1] = "d"
const %w2 : f32[4,13,1,1] = "w2"
%a : f32[1,13,8,8] = Conv(%x, %w1) #"conv_a"
%b : f32[1,13,8,8] = Div(%a, %d) #"div"
%y : f32[1,4,8,8] = Conv(%b, %w2) #"conv_b"
output %y
''')
    assert needs_padding(g)
    assert pad_channels(g).groups == []
    assert g.nodes[0].input(1).shape == (13, 4, 1, 1)


def test_the_cpu_build_pads_and_says_so(tmp_path: Path) -> None:
    """The build pads (its report says how much) and matches ONNX Runtime on the unpadded pruned graph."""
    from nasc import runtime

    g = _pruned("fashion_cnn")
    src = nasc.export_onnx(g, tmp_path / "pruned.onnx")
    cli = subprocess.run([sys.executable, "-m", "nasc.cli", "compile", str(src), "--target", "cpu", "-o",
                          str(tmp_path / "b"), "--passes", "simplify"], capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr
    assert re.search(r"channels padded to multiples of (8|16) \(whole vectors\): \d+ groups", cli.stdout), cli.stdout
    feeds = random_inputs(g, 1, 2)
    built = runtime.load(tmp_path / "b")
    for feed, want in zip(feeds, run_graph(g, feeds), strict=True):
        np.testing.assert_allclose(built.run(feed)[0], want[0], rtol=1e-4, atol=1e-4)
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    padding = report["build"]["channel_padding"]
    assert padding["groups_padded"] >= 5 and padding["macs_after"] > padding["macs_before"]
    # the convolutions that run vectorize over whole vectors: 23, 45 and 90 channels became 24, 48 and 96
    kernels = json.loads((tmp_path / "b" / "kernels.json").read_text())["kernels"]
    # (the 3x3 ones that run as Winograd matmuls: their input transforms, one per convolution, over its channels)
    convs = [k["features"]["inner_spatial"] for k in kernels if k["features"].get("nhwc")
             or k["kernel"].startswith("winograd_input") for _ in range(k["calls"])]
    assert len(convs) == sum(n.op == "Conv" for n in g.nodes) and all(c % MULTIPLE == 0 for c in convs), convs


def test_a_pruned_int8_build_keeps_every_op_integer(tmp_path: Path) -> None:
    """Padded channels carry a zero int32 bias whose scale is 1, not the accumulator's: the integer lowering
    must still take those convolutions (before, every padded one fell back to float)."""
    from nasc import runtime

    digits = nasc.load(EXAMPLES / "digits_cnn.onnx")
    calib = load_calibration(str(EXAMPLES / "digits_test.npz"), digits, limit=8)
    g = nasc.optimize(digits, "simplify,fuse,prune{ratio=0.3},quantize", calib=calib, verify=False)
    nasc.compile(g, "cpu", tmp_path / "b", measure_latency=False)
    build = json.loads((tmp_path / "b" / "report.json").read_text())["build"]
    assert build["channel_padding"]["groups_padded"] == 2
    assert build["integer"]["float_ops"] == [] and build["integer"]["integer_ops"]["QConv"] == 3
    built = runtime.load(tmp_path / "b")
    for feed, want in zip(calib[:4], run_graph(g, calib[:4]), strict=True):
        got = built.run(feed)[0]
        cos = float(np.dot(got.ravel(), want[0].ravel()) / np.linalg.norm(got) / np.linalg.norm(want[0]))
        assert cos > 0.999, cos  # integer kernels round where the QDQ definition does too: a step or two apart
