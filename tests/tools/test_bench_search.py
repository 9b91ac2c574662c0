"""tools/bench_search.py --quick: the exhaustive table of a small space, the samplers' hypervolume shares, the goal
line and the plot, written between the markers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tables import cells

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "bench_search.py"


def test_quick_run_writes_the_table_the_goal_and_the_plot(tmp_path: Path) -> None:
    doc = tmp_path / "bench.md"
    doc.write_text("# Search\n\n<!-- bench_search:begin -->\nold\n<!-- bench_search:end -->\n\nafter\n")
    png = tmp_path / "hv.png"
    proc = subprocess.run([sys.executable, str(TOOL), "--quick", "--write", str(doc), "--plot", str(png)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    assert "old" not in text and text.endswith("after\n")
    rows = [cells(ln) for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("|---")]
    assert rows[0][:2] == ["sampler", "budget"]
    assert [r[0] for r in rows[1:]] == ["nsga2", "nsga2", "tpe", "tpe", "random", "random"]
    assert [r[1] for r in rows[1:]] == ["trials", "evaluations"] * 3
    for r in rows[1:]:
        shares = [float(c.rstrip("%")) for c in r[2:5]]
        assert all(0 <= s <= 100 for s in shares) and shares == sorted(shares)  # hypervolume never shrinks
    assert "6 distinct pipelines" in text
    for budget in ("trials", "evaluations"):
        assert f"Goal: ≥ 95% of the exhaustive hypervolume with ≤ 25% of its evaluations (2 {budget})" in text
    assert png.read_bytes()[:4] == b"\x89PNG"
