"""Targets as objects (backends/targets.py): parsing in one place, budgets for passes, the MCU's estimator."""

from __future__ import annotations

from pathlib import Path

import pytest

import nasc
from nasc.backends.targets import McuTarget, OnnxTarget, TvmTarget, parse_target
from nasc.errors import UsageError
from nasc.passes.manager import Budgets

DIGITS = Path(nasc.__file__).parent / "examples" / "digits_cnn.onnx"


def test_parse_gives_one_object_per_kind() -> None:
    onnx_t = parse_target("onnx")
    assert isinstance(onnx_t, OnnxTarget) and onnx_t.kind == "onnx" and onnx_t.budgets == Budgets()
    assert onnx_t.estimator is None
    cpu = parse_target("cpu")
    assert isinstance(cpu, TvmTarget) and cpu.kind == "cpu" and cpu.tvm.kind == "cpu" and cpu.estimator is None
    mcu = parse_target("mcu:stm32f746")
    assert isinstance(mcu, McuTarget) and mcu.kind == "mcu" and str(mcu) == "mcu:stm32f746"
    assert mcu.budgets == Budgets(flash_bytes=mcu.board.flash_bytes, sram_bytes=mcu.board.sram_bytes,
                                  clock_hz=mcu.board.clock_mhz * 1e6, name="stm32f746")
    assert mcu.budgets.sram_bytes == 320 * 1024 and mcu.budgets.flash_bytes == 1024 * 1024
    assert parse_target(mcu) is mcu
    assert parse_target("mcu").board.name == "cortex-m4"


@pytest.mark.parametrize("text, message", [
    ("tpu", r"unknown target 'tpu'; targets: onnx, cpu"),
    ("mcu:esp32", r"unknown board 'esp32'"),
    (7, r"target 7 is not a string"),
])
def test_bad_targets_are_named(text: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_target(text)


def test_the_mcu_estimator_is_what_the_build_reports(tmp_path: Path) -> None:
    """The planner's arena and weight bytes, without compiling C, equal those of a real build."""
    mcu = parse_target("mcu:cortex-m4")
    g = nasc.load(DIGITS)
    assert mcu.estimator is not None
    est = mcu.estimator(g)
    art = nasc.compile(DIGITS, mcu, tmp_path / "out", verify_on="none")
    assert est == {"arena_bytes": art.report["arena_bytes"], "weights_bytes": art.report["weights_bytes"]}


def test_passes_see_the_budgets_through_the_context() -> None:
    """quant-policy's flash budget defaults to the target's: a board too small for any policy is refused with
    its flash size, through optimize(target=...) and through a Target object alike."""
    data = __import__("numpy").load(Path(nasc.__file__).parent / "examples" / "digits_test.npz")
    feeds = [{"image": data["image"][i:i + 1]} for i in range(16)]
    g = nasc.load(DIGITS)
    import dataclasses

    tiny = McuTarget("mcu:tiny", board=dataclasses.replace(parse_target("mcu").board, name="tiny", flash_bytes=1000))
    with pytest.raises(UsageError, match=r"flash=1000 bytes is infeasible"):
        nasc.optimize(g, "quant-policy{bits=8,4}", feeds, target=tiny)
    q = nasc.optimize(g, "quant-policy{bits=8,4}", feeds, target="mcu:cortex-m4")
    assert q.meta["passes"][-1]["pass"].startswith("quant-policy")
