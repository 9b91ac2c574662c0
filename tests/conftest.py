"""Shared fixtures: the bundled example model and real models exported once per test module."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Builds that run here add their kernel times to the cost model's dataset (hw_search/perfdata.py): the tests'
# go to a folder of their own, not the user's cache.
os.environ.setdefault("NASC_PERF_DIR", tempfile.mkdtemp(prefix="nasc-perf-tests-"))
# One TVM runtime thread per test worker: two workers with a thread per core each would oversubscribe the cores, and
# TVM's spinning thread pool then runs parallel kernels up to a hundred times slower (the timings the cost model's
# tests check; no test asserts a speed)
os.environ.setdefault("TVM_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def digits_onnx() -> Path:
    return EXAMPLES / "digits_cnn.onnx"
