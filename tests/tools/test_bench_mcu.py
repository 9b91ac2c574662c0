"""tools/bench_mcu.py measures what it says: one model end to end, and its table lands between the markers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_mcu.py"


def test_bench_mcu_writes_its_table(tmp_path: Path) -> None:
    doc = tmp_path / "bench.md"
    doc.write_text("# hand-written\n\n<!-- bench_mcu:begin -->\nold\n<!-- bench_mcu:end -->\n\ntail\n")
    out = subprocess.run([sys.executable, str(TOOL), "--models", "digits", "--verify", "host", "--write", str(doc)],
                         capture_output=True, text=True, check=True)
    assert "arena 8192 B, lower bound 8192 B" in out.stdout
    text = doc.read_text()
    assert text.startswith("# hand-written") and text.rstrip().endswith("tail") and "old" not in text
    row = next(line for line in text.splitlines() if line.startswith("| example digits CNN"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    arena, bound, tvm_plan, naive = (float(c) for c in cells[1:5])
    assert arena == bound == 8.0 and tvm_plan >= arena and naive > arena
    assert float(cells[-1]) < 1e-4  # max abs err vs ORT, from the host run
    int8 = next(line for line in text.splitlines() if line.startswith("| example digits CNN, 1x1x8x8 int8"))
    cells8 = [c.strip() for c in int8.strip("|").split("|")]
    assert float(cells8[1]) == float(cells8[2]) < arena / 2  # int8 arena at its bound, under half the float one
    assert float(cells8[5]) < float(cells[5]) / 3  # weights
