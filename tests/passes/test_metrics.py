"""passes/metrics.py: the fidelity figures, and when they certify nothing."""

from __future__ import annotations

import numpy as np

from nasc.passes.metrics import compare, uninformative


def _batches(*arrays: np.ndarray) -> list[list[np.ndarray]]:
    return [[a] for a in arrays]


def test_uninformative_names_zero_constant_and_nonfinite_references() -> None:
    rng = np.random.default_rng(0)
    zeros = _batches(*(np.zeros((1, 10), np.float32) for _ in range(3)))
    assert uninformative(zeros) == "the original model's outputs are all zero on these inputs"
    const = _batches(*(np.full((1, 10), 3.0, np.float32) for _ in range(3)))
    assert uninformative(const) == "the original model's outputs are the same for every input used"
    assert uninformative(_batches(np.full((4, 10), 2.5, np.float32))) == (  # the rows of one batch are inputs too
        "the original model's outputs are the same for every input used")
    nan = _batches(np.full((2, 3), np.nan, np.float32))
    assert uninformative(nan) == "the original model's outputs are NaN or infinite everywhere on these inputs"
    # outputs that vary, one sample (nothing to compare across), and one varying output beside a constant one
    assert uninformative(_batches(*(rng.standard_normal((1, 10)) for _ in range(3)))) is None
    assert uninformative(_batches(rng.standard_normal((1, 10)))) is None
    mixed = [[np.ones((1, 4)), rng.standard_normal((1, 4))] for _ in range(3)]
    assert uninformative(mixed) is None
    # compare carries the reason; a perfect cosine against a constant reference is marked, not trusted
    fig = compare(const, const)
    assert fig["cosine"] == 1.0 and fig["uninformative"].endswith("same for every input used")
    assert "uninformative" not in compare(mixed, mixed)
