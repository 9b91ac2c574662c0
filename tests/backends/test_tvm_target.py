"""A CPU build for instruction sets this host lacks is built but never run here (it would die with SIGILL)."""

from __future__ import annotations

from pathlib import Path

import pytest

import nasc
from nasc.backends.tvm import target as tt

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits_cnn.onnx"


def test_missing_instruction_sets_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tt, "host_cpu", lambda: "x86-64")  # a baseline host: SSE2 only
    why = tt.cpu_unavailable(tt.parse_target("cpu:skylake-avx512"))
    assert why is not None and "x86-64" in why and "avx512f" in why and "avx2" in why
    assert "fast-" not in why  # LLVM's tuning hints are not instruction sets


def test_the_host_can_run_its_own_build() -> None:
    assert tt.cpu_unavailable(tt.parse_target("cpu")) is None
    assert tt.cpu_unavailable(tt.parse_target("cpu:x86-64")) is None


def test_compile_for_a_cpu_beyond_this_host_warns_and_does_not_run(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = tt.host_cpu
    monkeypatch.setattr(tt, "host_cpu", lambda: "x86-64")
    target = f"cpu:{real()}"  # this machine's CPU, seen from a pretended baseline host
    if tt.cpu_unavailable(tt.parse_target(target)) is None:
        target = "cpu:skylake-avx512"
    art = nasc.compile(str(EXAMPLE), target, tmp_path / "out")
    assert art.report["fidelity"] is None and "latency_ms" not in art.report
    assert any("it was not run" in w and "x86-64" in w for w in art.report["warnings"])
    assert (tmp_path / "out" / "model.so").is_file()
