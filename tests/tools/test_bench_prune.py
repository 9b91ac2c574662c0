"""tools/bench_prune.py --quick: nasc's side on the digits CNN, its tables between the markers, sane numbers.

Torch-Pruning is a bench-only tool that CI does not install: the run passes --no-torch-pruning, so its rows and
cells must say that it is not installed, whether or not it is here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tables import rows

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_prune.py"


def test_bench_prune_quick_writes_both_tables(tmp_path: Path) -> None:
    doc = tmp_path / "bench.md"
    doc.write_text("# hand-written\n\n<!-- bench_prune:begin -->\nold\n<!-- bench_prune:end -->\n\ntail\n")
    out = subprocess.run([sys.executable, str(TOOL), "--quick", "--no-torch-pruning", "--write", str(doc)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = doc.read_text()
    assert text.startswith("# hand-written") and "\nold\n" not in text and "tail" in text
    assert "<!-- bench_prune_coverage:begin -->" in text and "<!-- bench_prune_digits:begin -->" in text
    assert "Produced by `python tools/bench_prune.py --quick --no-torch-pruning`" in text
    lines = text.splitlines()

    header = rows(lines, "tool")[0]
    col = {name: i for i, name in enumerate(header)}
    assert header[:5] == ["tool", "setting", "MACs kept", "MACs kept (TP count)", "params"]
    assert "accuracy (360)" in col and "nasc cpu ms" not in col  # --quick measures no latency
    (base,) = rows(lines, "-")
    assert base[1] == "unpruned" and base[col["MACs kept"]] == "100.0%" and base[col["params"]] == "7,450"
    assert float(base[col["accuracy (360)"]]) == 0.9889 and float(base[col["top-1 agreement"]]) == 1.0

    nasc = {r[1].split(" (")[0]: r for r in rows(lines, "nasc")}
    assert set(nasc) == {f"prune{{macs={f} {v}}}".replace(" }", "}") for f in ("0.7", "0.5")
                         for v in ("", "reconstruct=true", "round-to=8 reconstruct=true")}
    for setting, r in nasc.items():
        kept = float(r[col["MACs kept"]].rstrip("%")) / 100
        target = 0.7 if "macs=0.7" in setting else 0.5
        assert 0.0 < kept <= target + 1e-9, (setting, kept)  # the pass meets the budget
        if "round-to" not in setting:
            assert kept > target - 0.05, (setting, kept)  # ... and does not overshoot it much
        acc = float(r[col["accuracy (360)"]])
        assert 0.0 <= acc <= 1.0
    # least-squares reconstruction recovers most of what magnitude pruning loses on this CNN
    for f in ("0.7", "0.5"):
        plain, recon = nasc[f"prune{{macs={f}}}"], nasc[f"prune{{macs={f} reconstruct=true}}"]
        assert plain[col["MACs kept"]] == recon[col["MACs kept"]]
        assert float(recon[col["accuracy (360)"]]) > float(plain[col["accuracy (360)"]]) + 0.2
        assert float(recon[col["accuracy (360)"]]) > 0.9

    tp = rows(lines, "Torch-Pruning")
    assert len(tp) == 4 and all("failed: Torch-Pruning not installed" in r[2] for r in tp)

    (cov,) = rows(lines, "digits_cnn")
    assert cov[1:5] == ["10", "2 / 0 / 3", "48", "234,816"]
    assert cov[6].startswith("holds (2 groups") and cov[7] == "graph output (10 ch)"
    assert cov[8].startswith("Torch-Pruning not installed")
