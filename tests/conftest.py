"""Shared fixtures: the bundled example model and real models exported once per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def digits_onnx() -> Path:
    return EXAMPLES / "digits_cnn.onnx"
