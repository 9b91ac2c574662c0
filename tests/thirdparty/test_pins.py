"""The corpus is pinned: each package by exact version (pyproject's corpus extra or the Makefile's NODEPS), each
file by its sha256; a changed file fails loudly; every model is tested and listed in docs/models.md."""

from __future__ import annotations

import dataclasses
import re
import shutil
import tomllib
from pathlib import Path

import pytest
from corpus_cases import GROUPS, mc

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(mc.MODELS))
def test_installed_file_is_the_pinned_one(name):
    model = mc.MODELS[name]
    path = mc.verified(model)
    assert path.suffix == ".onnx" and path.stat().st_size > 10_000


def test_a_changed_file_fails_loudly(tmp_path):
    model = mc.MODELS["mtcnn-pnet"]
    copy = tmp_path / "pnet.onnx"
    shutil.copy(mc.locate(model), copy)
    assert mc.check_sha256(model, copy) == copy
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one weight
    copy.write_bytes(bytes(data))
    with pytest.raises(mc.CorpusError, match=f"has sha256 [0-9a-f]{{64}}, the corpus pins {model.sha256}"):
        mc.check_sha256(model, copy)


def test_another_version_is_refused():
    other = dataclasses.replace(mc.MODELS["magika"], version="0.0.1")
    with pytest.raises(mc.CorpusError, match=re.escape("magika 1.0.3 is installed, the corpus pins 0.0.1")):
        mc.locate(other)


def _pins() -> dict[str, str]:
    """package -> version, from pyproject's corpus extra and the Makefile's NODEPS (names normalized)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "corpus" in extras["dev"][0], "the dev extra must include the corpus"
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    nodeps = re.search(r"^NODEPS\s*:=(.*)$", makefile, re.M)
    assert nodeps is not None
    specs = [*extras["corpus"], *nodeps.group(1).split()]
    pins = {}
    for spec in specs:
        name, _, version = spec.partition("==")
        assert version, f"{spec}: corpus packages are pinned by exact version"
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_every_package_is_pinned_by_exact_version():
    pins = _pins()
    for model in mc.CORPUS:
        assert pins.get(model.package) == model.version, f"{model.name}: pin {model.package}=={model.version}"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    corpus_packages = {m.package for m in mc.CORPUS}
    for spec in extras["corpus"]:  # no stale pins: each package in the extra serves a corpus model
        assert spec.split("==")[0].lower() in corpus_packages, spec


def test_the_test_files_cover_the_whole_corpus():
    listed = [n for names in GROUPS.values() for n in names]
    assert sorted(listed) == sorted(mc.MODELS) and len(set(listed)) == len(listed)
    for model in mc.CORPUS:
        assert "inspect" in model.ci and "onnx" in model.ci, f"{model.name}: CI runs at least load and round trip"
        assert set(model.refuse) <= set(mc.STAGES)


def test_docs_table_lists_every_model_with_its_pin():
    text = (ROOT / "docs" / "models.md").read_text()
    assert "<!-- model_corpus:begin -->" in text and "<!-- model_corpus:end -->" in text
    for model in mc.CORPUS:
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| {model.name} |")), None)
        assert row is not None, f"docs/models.md has no row for {model.name}: run tools/model_corpus.py --write"
        assert f"{model.package}=={model.version}" in row and model.sha256[:12] in row
        assert row.count("|") == 12, row  # every stage has a cell


def test_a_failing_stage_is_a_table_line_with_its_reason():
    results = {
        "mtcnn-pnet": {
            "inspect": mc.Result("inspect", True, "13 nodes", facts={"nodes": 13, "params": 6632, "macs": 7e6,
                                                                   "ops": {"Conv": 5}}),
            "onnx": mc.Result("onnx", False, "fails", "nasc: error: something specific"),
            "mcu": mc.Result("mcu", True, "too big", "the model's weights need 9 KB", expected_refusal=True),
        }
    }
    text = mc.table(results)
    row = next(ln for ln in text.splitlines() if ln.startswith("| mtcnn-pnet |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[7:] == ["ok: 13 nodes", "**FAIL**", "not run", "refused (expected): too big"]
    assert "- **mtcnn-pnet / onnx** (fails): nasc: error: something specific" in text
    assert "- **mtcnn-pnet / mcu** (refused as expected): the model's weights need 9 KB" in text
    assert "  Ops: Conv×5" in text and "mcu (stm32f746) atol" in text
