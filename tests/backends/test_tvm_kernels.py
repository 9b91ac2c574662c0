"""The kernel table of cpu builds (backends/tvm/kernels.py): what the runtime runs, with sound features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.backends import fidelity
from nasc.backends.targets import parse_target
from nasc.backends.tvm.build import planned_kernels
from nasc.backends.tvm.kernels import FEATURES_VERSION
from nasc.runtime import load as load_compiled

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module", params=["simplify,fuse", "simplify,fuse,quantize"])
def build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("kernels") / "build"
    nasc.compile(EXAMPLES / "fashion_cnn.onnx", "cpu", out, passes=request.param, calib=str(EXAMPLES /
                 "fashion_test.npz"), measure_latency=False, verify=False)
    return out, request.param


def test_table_names_every_kernel_the_runtime_runs(build: tuple[Path, str]) -> None:
    out, _ = build
    doc = json.loads((out / "kernels.json").read_text())
    assert doc["format"] == "nasc-kernels-1" and doc["features_version"] == FEATURES_VERSION
    table = {k["kernel"]: k for k in doc["kernels"]}
    built = load_compiled(out)
    feed = fidelity.random_inputs(nasc.load(EXAMPLES / "fashion_cnn.onnx"), 0, 1)[0]
    timed = {k["kernel"]: k for k in built.kernel_ms(feed, repeat=3)}
    assert set(timed) == set(table)  # views (pure reshapes) are left out of the table: they run no code
    assert all(table[n]["calls"] == timed[n]["calls"] for n in table)


def test_timing_the_kernels_removes_its_hook(build: tuple[Path, str]) -> None:
    """kernel_ms times each call with the VM's instrument hook, then removes it: a hook left in place, even one
    that does nothing, is a Python call around every VM instruction of every later run (the whole-model time of a
    2-kernel MLP went 0.21 -> 0.25 ms)."""
    out, _ = build
    built = load_compiled(out)
    vm = built._vm
    installed: list[object] = []

    class Recording:  # the VM, recording the hooks kernel_ms installs
        def __getitem__(self, name: str) -> object:
            return vm[name]

        def set_instrument(self, hook: object) -> None:
            installed.append(hook)
            vm.set_instrument(hook)

    built._vm = Recording()
    feed = fidelity.random_inputs(nasc.load(EXAMPLES / "fashion_cnn.onnx"), 0, 1)[0]
    assert built.kernel_ms(feed, repeat=2)
    assert len(installed) == 2 and callable(installed[0]) and installed[-1] is None


def test_features_count_the_convolutions_work_and_weights(build: tuple[Path, str]) -> None:
    out, passes = build
    g = nasc.optimize(nasc.load(EXAMPLES / "fashion_cnn.onnx"), "simplify,fuse")
    convs = [n for n in g.nodes if n.op == "Conv"]
    table = json.loads((out / "kernels.json").read_text())["kernels"]
    integer = passes.endswith("quantize")
    word = "op_qconv2d" if integer else "op_conv2d"
    # one row per kernel: layers of one shape share it (calls)
    conv_rows = [k["features"] for k in table for _ in range(k["calls"]) if k["features"].get(word)]
    # float 3x3 convolutions with enough channels and tiles run as Winograd matmuls (backends/tvm/winograd.py):
    # one input transform kernel each (none in this small CNN)
    winograd = json.loads((out / "report.json").read_text())["build"].get("winograd_convs", 0)
    assert sum(k["calls"] for k in table if k["features"].get("op_winograd") and "input" in k["kernel"]) == winograd
    assert len(conv_rows) + winograd == len(convs)
    # MACs, but for the integer stem, whose single input channel is read as 4 (the patches' dot-product step)
    macs = [int(np.prod(c.outputs[0].shape)) * int(np.prod(c.inputs[1].shape[1:])) * (
        4 if integer and c.inputs[1].shape[1] == 1 else 1) for c in convs]
    for f in conv_rows:
        macs.remove(int(f["work_main"]))
    for f in conv_rows:
        assert f["integer"] == float(integer)
        assert f["bytes_weights"] > 0 and f["bytes_out"] > 0
        # x86 float convolutions are channels-last; the integer ones here are the tensorized matmul of their
        # patches (an im2col kernel each)
        assert f["nhwc"] == 1.0 or (integer and f.get("template_qmatmul_vnni", 0) + f.get("template_qmatmul_avx2", 0))
    if integer:  # every convolution goes through patches (the 1-channel stem's taps padded to 4 channels): an
        # im2col kernel's, or copied inside its matmul kernel (the 28x28 and 14x14 maps: more rows than channels)
        copies = [k for k in table for _ in range(k["calls"])
                  if k["features"].get("op_im2col") or k["features"].get("patch_blocks")]
        in_kernel = [k for k in copies if k["features"].get("op_qconv2d")]
        rows_over_channels = [c for c in convs if c.inputs[1].shape[1] >= 4
                              and np.prod(c.outputs[0].shape[2:]) > max(c.outputs[0].shape[1], 32)]
        assert len(copies) == len(convs) and len(in_kernel) == len(rows_over_channels) > 0


def test_planned_kernels_match_the_build_without_generating_code(build: tuple[Path, str]) -> None:
    out, passes = build
    g = nasc.optimize(nasc.load(EXAMPLES / "fashion_cnn.onnx"), passes,
                      fidelity.load_calibration(str(EXAMPLES / "fashion_test.npz"),
                                                nasc.load(EXAMPLES / "fashion_cnn.onnx")))
    planned = planned_kernels(g, parse_target("cpu").tvm)
    built = json.loads((out / "kernels.json").read_text())["kernels"]
    assert planned == built
