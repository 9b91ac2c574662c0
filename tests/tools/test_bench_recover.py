"""tools/bench_recover.py --quick: the pruned Fashion-MNIST CNN, the tied ViT and the mixed int8/int4 digits CNN
before and after ``recover``, the measured-vs-Fisher sensitivity table, and the goals, between the markers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tables import cells, rows

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "bench_recover.py"


def _table(lines: list[str], title: str) -> list[list[str]]:
    """The rows (header included, separator left out) of the first table after the ``## title`` heading."""
    start = next(i for i, ln in enumerate(lines) if ln.startswith("## ") and title in ln)
    out = []
    for ln in lines[start + 1:]:
        if ln.startswith("## "):
            break
        if ln.startswith("|") and not ln.startswith("|---"):
            out.append(cells(ln))
    return out


def _pct(cell: str) -> float:
    return float(cell.rstrip("%")) / 100


def test_bench_recover_quick_writes_its_section(tmp_path: Path) -> None:
    doc = tmp_path / "bench.md"
    doc.write_text("# hand-written\n\n<!-- bench_recover:begin -->\nold\n<!-- bench_recover:end -->\n\ntail\n")
    out = subprocess.run([sys.executable, str(TOOL), "--quick", "--write", str(doc)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    text = doc.read_text()
    assert text.startswith("# hand-written") and text.rstrip().endswith("tail") and "\nold\n" not in text
    assert "by `python tools/bench_recover.py --quick --write" in text
    lines = text.splitlines()

    cnn = _table(lines, "Fashion-MNIST CNN pruned")
    head = {c: i for i, c in enumerate(cnn[0])}
    assert [r[0] for r in cnn[1:]] == ["original", "pruned (taylor)", "pruned (taylor) + recover"]
    base, pruned, rec = cnn[1:]
    recorded = 0.936  # examples/fashion_cnn.onnx on the first 500 test images
    assert _pct(base[head["accuracy"]]) == pytest.approx(recorded, abs=1e-3)
    for r in (pruned, rec):  # 50% of the MACs: the prune pass's own figure
        assert r[head["MACs"]].endswith("(50%)")
        assert 0.0 <= _pct(r[head["accuracy"]]) <= 1.0
    assert rec[head["recover time"]].endswith(" s") and rec[head["steps (best)"]].startswith("4 (best ")
    assert pruned[head["recover time"]] == "-"
    assert "`prune{macs=0.5 importance=taylor reconstruct=true},recover{" in text

    vit = _table(lines, "Fashion-MNIST ViT")
    head = {c: i for i, c in enumerate(vit[0])}
    assert [r[0] for r in vit[1:]] == ["original", "tied", "tied + recover"]
    assert float(vit[2][head["× fewer"]]) > 1.5 and vit[2][head["× fewer"]] == vit[3][head["× fewer"]]
    # recover never leaves the held-out slice worse than it found it; the test set may move a little either way
    assert _pct(vit[3][head["accuracy"]]) >= _pct(vit[2][head["accuracy"]]) - 0.02

    qat = _table(lines, "digits CNN")
    head = {c: i for i, c in enumerate(qat[0])}
    assert [r[0] for r in qat[1:]] == ["float", "quantized (mixed int8/int4)", "QAT recover",
                                       "QAT recover, learn-scales"]
    assert "int4" in qat[2][head["policy"]]
    cos = head["logit cosine (360)"]
    assert float(qat[1][cos]) == 1.0 and float(qat[2][cos]) < 1.0
    gap = next(i for c, i in head.items() if c.startswith("gap closed"))
    assert qat[2][gap] == "-" and qat[3][gap].endswith("%")

    sens = rows(lines, "digits")
    assert [r[2] for r in sens] == ["measured", "fisher"] * 2
    assert all(r[-1].endswith(" s") for r in sens)

    goals = [ln for ln in lines if ln.startswith("- ")]
    assert any(g.startswith("- CNN pruned (taylor) + recover within 1 point") for g in goals)
    assert sum("closes at least half" in g for g in goals) == 2
    assert sum(g.startswith("- quant-policy sensitivity, digits") and " wins " in g for g in goals) == 2
