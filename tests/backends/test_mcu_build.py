"""The MCU backend end to end: C project, host gcc and QEMU Cortex-M runs against ONNX Runtime, budgets.

CI installs gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm (make test); these tests do
not skip without them, they fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.backends.mcu.boards import BOARDS
from nasc.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
DIGITS_TEST = ROOT / "examples" / "digits_test.npz"
TOL = 1e-4  # max abs error against ONNX Runtime on the original model


def _residual_cnn() -> object:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU6())
            self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.head = nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.stem(x))
            y = x + self.a(x)  # residual
            z = torch.cat([y, self.b(x)], dim=1)  # two branches joined
            z = torch.relu(self.down(z))
            return self.head(z.mean(dim=(2, 3)))

    torch.manual_seed(0)
    m = Block().eval()
    with torch.no_grad():
        m.a[1].running_mean.uniform_(-0.2, 0.2)
        m.a[1].running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from nasc.examples import zoo

    d = tmp_path_factory.mktemp("mcu-models")
    paths = {"digits": DIGITS}
    paths["transformer"] = zoo.export_onnx(zoo.vit_block(dim=64, heads=2), (torch.randn(1, 16, 64),),
                                           d / "vit_block.onnx", dynamo=False)
    paths["residual"] = zoo.export_onnx(_residual_cnn(), (torch.randn(1, 3, 16, 16),), d / "residual.onnx",
                                        dynamo=False)
    return paths


CASES = [
    ("digits", "cortex-m4", "host,qemu"),
    ("digits", "cortex-m7", "qemu"),
    ("transformer", "cortex-m4", "host,qemu"),
    ("transformer", "cortex-m7", "qemu"),
    ("residual", "cortex-m4", "host,qemu"),
    ("residual", "cortex-m7", "qemu"),
]


@pytest.mark.parametrize(("model", "board", "where"), CASES, ids=[f"{m}-{b}-{w}" for m, b, w in CASES])
def test_runs_on_host_and_qemu_within_tolerance(models: dict[str, Path], tmp_path: Path, model: str, board: str,
                                                where: str) -> None:
    calib = str(DIGITS_TEST) if model == "digits" else None
    art = nasc.compile(models[model], f"mcu:{board}", tmp_path / "out", passes="simplify,fuse", calib=calib,
                       verify_on=where)
    rep = art.report
    assert set(rep["verify"]) == set(where.split(","))
    for mode, v in rep["verify"].items():
        assert v["max_abs_err"] <= TOL, (mode, v)
        assert v["reference"] == "onnxruntime on the original model"
    if "qemu" in rep["verify"]:
        assert BOARDS[board].qemu_machine in rep["verify"]["qemu"]["ran_on"]
    if model == "digits":  # labelled calibration data: accuracy on all 360 test digits, as in examples/README
        acc = rep["verify"][where.split(",")[0]]["accuracy"]
        assert acc["samples"] == 360
        assert abs(acc["nasc"] - acc["reference"]) < 1e-9
        assert acc["nasc"] > 0.98
    assert rep["arena_bytes"] == rep["arena_lower_bound_bytes"]
    assert rep["arena_bytes"] < rep["naive_bytes"]
    assert rep["flash_bytes"] >= rep["weights_bytes"] > 0
    assert [s["step"] for s in rep["steps"]] == list(range(len(rep["steps"])))
    assert max(s["live_bytes"] for s in rep["steps"]) == rep["arena_lower_bound_bytes"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["arena_bytes"] == rep["arena_bytes"]


def test_project_layout_and_api(tmp_path: Path) -> None:
    art = nasc.compile(DIGITS, "mcu:stm32f746", tmp_path / "out", verify_on="none")
    out = tmp_path / "out"
    for f in ("kernels.c", "model.c", "model.h", "weights.c", "nasc_shim.h", "nasc_shim.c", "Makefile",
              "nasc_model.cmake", "report.json"):
        assert (out / f).is_file(), f
    h = (out / "model.h").read_text()
    assert "int nasc_run(const float* in_image, float* out_logits);" in h
    assert f"#define NASC_ARENA_BYTES {art.report['arena_bytes']}" in h
    assert f"#define NASC_WEIGHT_BYTES {art.report['weights_bytes']}" in h
    assert "#define NASC_INPUT0_SHAPE {1, 1, 8, 8}" in h and "#define NASC_OUTPUT0_SHAPE {1, 10}" in h
    sources = "".join((out / f).read_text() for f in ("kernels.c", "model.c", "weights.c", "nasc_shim.c"))
    assert not re.search(r"\b(malloc|calloc|realloc|free)\s*\(", sources)  # no dynamic allocation
    assert '#include "tvm/' not in sources  # no TVM runtime
    assert re.search(r"static const float nasc_w\d+\[\d+\]", (out / "weights.c").read_text())
    assert "-Wall -Werror" in (out / "Makefile").read_text()
    assert "-mfpu=fpv5-sp-d16" in (out / "Makefile").read_text()
    assert art.report["fidelity"] is None and any("--verify none" in w for w in art.report["warnings"])


def test_generated_c_is_warning_free_with_extra_warnings(tmp_path: Path) -> None:
    """Beyond the Makefile's -Wall -Werror: the model's sources also pass -Wextra on both compilers."""
    nasc.compile(DIGITS, "mcu:cortex-m4", tmp_path / "out", verify_on="none")
    out = tmp_path / "out"
    srcs = [str(out / f) for f in ("kernels.c", "model.c", "weights.c", "nasc_shim.c")]
    for cc, flags in (("gcc", []), ("arm-none-eabi-gcc", list(BOARDS["cortex-m4"].cflags))):
        for src in srcs:
            subprocess.run([cc, *flags, "-std=c99", "-Os", "-Wall", "-Wextra", "-Werror", "-I", str(out), "-c", src,
                            "-o", str(tmp_path / "x.o")], check=True)


def test_over_budget_is_an_error_that_explains_and_writes_nothing(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from nasc.backends.mcu.build import BudgetError
    from nasc.examples import zoo

    torch.manual_seed(0)
    big = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 8, 3, stride=2, padding=1)).eval()
    path = zoo.export_onnx(big, (torch.randn(1, 3, 64, 64),), tmp_path / "big.onnx", dynamo=False)
    with pytest.raises(BudgetError) as e:
        nasc.compile(path, "mcu:stm32f411", tmp_path / "out", verify_on="none")
    msg = str(e.value)
    assert "needs 1024.0 KB of SRAM" in msg and "stm32f411 has 128.0 KB" in msg
    assert msg.count(" live") == 3 and "Costliest steps:" in msg
    assert "(Conv)" in msg and "--no-budget-check" in msg
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    art = nasc.compile(path, "mcu:stm32f411", tmp_path / "out", verify_on="none", budget_check=False)
    assert art.report["arena_bytes"] > BOARDS["stm32f411"].sram_bytes


def test_bad_targets_and_verify_modes(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown board 'stm32h7'.*cortex-m4, .*nrf52840"):
        nasc.compile(DIGITS, "mcu:stm32h7", tmp_path / "o")
    with pytest.raises(UsageError, match="--verify emulator: expected host, qemu"):
        nasc.compile(DIGITS, "mcu", tmp_path / "o", verify_on="emulator")
    with pytest.raises(UsageError, match="--tune-trials applies to the cpu and gpu targets"):
        nasc.compile(DIGITS, "mcu", tmp_path / "o", tune_trials=4, verify_on="none")
    assert not list(tmp_path.iterdir())


def test_cli_prints_the_budget_and_the_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "nasc.cli", "compile", str(DIGITS), "--target", "mcu:nrf52840",
                          "--calib", str(DIGITS_TEST), "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"board nrf52840 \(cortex-m4\): SRAM [\d.]+ KiB of 256\.0 KiB \(arena", out.stdout)
    assert re.search(r"ran on host gcc: max abs err \S+ vs onnxruntime on the original model \(64 calibration "
                     r"samples\); accuracy 98\.89% on 360 labelled samples", out.stdout)
    bad = subprocess.run([sys.executable, "-m", "nasc.cli", "compile", str(DIGITS), "--target", "mcu:pico", "-o",
                          str(tmp_path / "p")], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown board 'pico'" in bad.stderr and "Traceback" not in bad.stderr


def test_weights_round_trip_exactly_through_c(tmp_path: Path) -> None:
    """weights.c prints float32 with 9 significant digits: parsing it back gives the same bits."""
    from nasc.backends.mcu.emit import _array_rows

    vals = np.array([0.1, -1e-38, 3.4e38, 1.0, 0.0, -0.0, 1e-45, 123456.789], dtype=np.float32)
    text = " ".join(_array_rows(vals)).replace("f,", ",")
    back = np.array([float(t) for t in text.replace(",", " ").split()], dtype=np.float32)
    assert back.tobytes() == vals.tobytes()


def test_multi_output_kernel_and_an_output_that_is_an_input(tmp_path: Path) -> None:
    """Split (one kernel, two results) feeding two outputs, and a model output that is the model input."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as h

    outs = [h.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (("a", [1, 3, 4]), ("b", [1, 5, 4]),
                                                                           ("c", [1, 8, 4]))]
    g = h.make_graph([h.make_node("Split", ["x", "split"], ["s0", "s1"], axis=1, name="sp"),
                      h.make_node("Relu", ["s0"], ["a"], name="r"), h.make_node("Sigmoid", ["s1"], ["b"], name="sg"),
                      h.make_node("Identity", ["x"], ["c"], name="id")], "g",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4])], outs,
                     [h.make_tensor("split", TensorProto.INT64, [2], [3, 5])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    onnx.save(m, tmp_path / "split.onnx")
    art = nasc.compile(tmp_path / "split.onnx", "mcu", tmp_path / "out", passes="simplify", verify_on="host")
    assert art.report["verify"]["host"]["max_abs_err"] <= 1e-6
    model_c = (tmp_path / "out" / "model.c").read_text()
    assert "memcpy(" in model_c  # the output that is the input is copied
    assert len(art.report["steps"]) == 3


def test_cmake_snippet_builds_into_a_firmware_project(tmp_path: Path) -> None:
    """nasc_model.cmake dropped into a CMake project (host compiler here) links and runs nasc_run."""
    nasc.compile(DIGITS, "mcu", tmp_path / "model", verify_on="none")
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.13)\nproject(fw C)\n"
        f"include({tmp_path / 'model' / 'nasc_model.cmake'})\n"
        "add_executable(fw main.c)\ntarget_link_libraries(fw PRIVATE nasc_model)\n")
    (app / "main.c").write_text(
        '#include <stdio.h>\n#include "model.h"\n'
        "static float in[NASC_INPUT0_SIZE], out[NASC_OUTPUT0_SIZE];\n"
        'int main(void) { int rc = nasc_run(in, out); printf("rc=%d n=%d\\n", rc, NASC_OUTPUT0_SIZE); return rc; }\n')
    subprocess.run(["cmake", "-S", str(app), "-B", str(app / "build")], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(app / "build")], check=True, capture_output=True)
    out = subprocess.run([str(app / "build" / "fw")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "rc=0 n=10"
