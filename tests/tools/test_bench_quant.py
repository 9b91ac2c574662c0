"""tools/bench_quant.py measures quantization quality: on the digits CNN its table lands between the markers,
with float, nasc int8, the mixed policy and ONNX Runtime's quantize_static, and sane numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tables import cells

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_quant.py"


def _row(lines: list[str], prefix: str) -> list[str]:
    row = next((line for line in lines if line.startswith(f"| {prefix}")), None)
    assert row is not None, f"no row starting with {prefix!r} in:\n" + "\n".join(lines)
    return cells(row)


def test_bench_quant_digits_writes_its_table(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime.quantization")
    doc = tmp_path / "bench.md"
    doc.write_text("# hand-written\n\n<!-- bench_quant:begin -->\nold\n<!-- bench_quant:end -->\n\ntail\n")
    out = subprocess.run([sys.executable, str(TOOL), "--models", "digits", "--write", str(doc)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = doc.read_text()
    assert text.startswith("# hand-written") and text.rstrip().endswith("tail") and "\nold\n" not in text
    lines = text.splitlines()
    header = _row(lines, "quantization")
    col = {name: i for i, name in enumerate(header)}
    acc, wkb = col["accuracy (360)"], col["weight KB"]

    fl = _row(lines, "float")
    n8 = _row(lines, "nasc int8")
    mixed = _row(lines, "nasc mixed int8/int4")
    ort = _row(lines, "ONNX Runtime quantize_static int8")
    assert float(fl[acc]) == pytest.approx(0.9889, abs=1e-4)  # 356 / 360
    assert abs(float(n8[acc]) - float(fl[acc])) <= 0.01  # int8 within 1 point of float
    assert not ort[1].startswith("failed") and 0.9 <= float(ort[acc]) <= 1.0
    assert not mixed[1].startswith("failed"), mixed
    float_kb, int8_kb = float(fl[wkb].replace(",", "")), float(n8[wkb].replace(",", ""))
    assert float_kb == pytest.approx(29.8, abs=0.05)  # 7,450 float32 parameters
    assert int8_kb < float_kb / 3
    assert float(mixed[wkb].replace(",", "")) <= int8_kb * 1.001  # the 30% budget is met (>= int8's ~29%)
    assert "Calibration: test samples 0..119" in text
