"""Quantization arithmetic: per-channel round trips, int4 packing, activation ranges, the policy solver."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nasc.passes import quant_math as qm


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_round_trip_error_is_at_most_half_a_step(bits: int, axis: int) -> None:
    rng = np.random.default_rng(bits + axis)
    w = rng.normal(size=(6, 5, 3)).astype(np.float32) * rng.uniform(0.01, 10, size=(6, 1, 1)).astype(np.float32)
    w[2] = 0.0  # an all-zero slice
    q, s = qm.quantize_weight(w, bits, axis)
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert s.shape == (w.shape[axis],)
    assert q.min() >= -qm.qmax(bits) and q.max() <= qm.qmax(bits)  # symmetric: -2^(b-1) unused
    back = qm.dequantize_weight(q, s, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    assert np.all(np.abs(back - w) <= s.reshape(shape) / 2 * (1 + 1e-6))
    # the largest magnitude of each channel is exact
    red = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    np.testing.assert_allclose(np.max(np.abs(back), axis=red), np.max(np.abs(w), axis=red), rtol=1e-6)


def test_int4_weights_are_stored_packed_in_onnx() -> None:
    """The IR holds int4 values as ml_dtypes int4; the ONNX initializer packs two per byte and reads back."""
    import ml_dtypes
    import onnx
    from onnx import numpy_helper

    from nasc.backends.onnx import to_onnx
    from nasc.ir import dtypes
    from nasc.ir.core import Graph

    q, _ = qm.quantize_weight(np.linspace(-1, 1, 33, dtype=np.float32).reshape(3, 11), 4, 0)
    g = Graph(name="g", opsets={"": 21})
    c = g.add_constant(q.astype(dtypes.to_numpy("i4")), name="w")
    assert c.dtype == "i4" and c.tensor_type.nbytes == 17  # 33 values, packed
    g.outputs = [c]
    t = next(t for t in to_onnx(g).graph.initializer if t.name == "w")
    assert t.data_type == onnx.TensorProto.INT4 and len(t.raw_data) == 17
    np.testing.assert_array_equal(numpy_helper.to_array(t).astype(np.int8), q)
    assert numpy_helper.to_array(t).dtype == ml_dtypes.int4


def test_activation_ranges() -> None:
    rng = np.random.default_rng(0)
    x = [np.concatenate([rng.normal(size=10_000), [40.0]]).astype(np.float32)]  # one outlier
    lo, hi = qm.act_range(x, "minmax")
    assert hi == 40.0 and lo < 0
    plo, phi = qm.act_range(x, "percentile", 99.9)
    assert lo <= plo <= 0 <= phi < hi
    mlo, mhi = qm.act_range(x, "mse")
    s_mm, z_mm = qm.act_qparams(lo, hi)
    s_mse, z_mse = qm.act_qparams(mlo, mhi)
    err = lambda s, z: float(np.mean((qm.fake_quant_act(x[0], s, z) - x[0]) ** 2))
    assert err(s_mse, z_mse) < err(s_mm, z_mm)
    relu = [np.abs(rng.normal(size=100)).astype(np.float32)]
    s, z = qm.act_qparams(*qm.act_range(relu, "minmax"))
    assert z == 0  # post-ReLU data uses the whole uint8 range
    assert qm.fake_quant_act(np.zeros(1, np.float32), s, z)[0] == 0.0  # zero is exact
    with pytest.raises(ValueError, match="expected minmax, percentile or mse"):
        qm.act_range(relu, "kl")


def _optima(choices: list[qm.Choice], budgets: dict[str, float], fixed: dict[str, float]) -> list[list[int]]:
    """Every feasible policy of least total sensitivity, by enumeration."""
    feasible = [list(p) for p in itertools.product(*(range(len(c.options)) for c in choices))
                if all(fixed.get(k, 0) + sum(c.costs[k][i] for c, i in zip(choices, p)) <= budgets[k] for k in budgets)]
    best = min(sum(c.sensitivity[i] for c, i in zip(choices, p)) for p in feasible)
    return [p for p in feasible if sum(c.sensitivity[i] for c, i in zip(choices, p)) == best]


def test_solver_known_optimum() -> None:
    # three layers, widths (8, 4): sensitivities and bytes chosen so that each budget has one optimum; under
    # 250 bytes one layer drops to int4, and it must be c (error 0.1 + 0.1 + 0.2), not b (0.1 + 0.3 + 0.1)
    choices = [qm.Choice("a", [8, 4], [0.1, 5.0], {"flash": [100, 50]}),
               qm.Choice("b", [8, 4], [0.1, 0.3], {"flash": [100, 50]}),
               qm.Choice("c", [8, 4], [0.1, 0.2], {"flash": [100, 50]})]
    for budget, fixed, expected in [(1e9, {}, [0, 0, 0]), (250, {}, [0, 0, 1]), (200, {}, [0, 1, 1]),
                                    (260, {"flash": 60}, [0, 1, 1])]:  # fixed bytes count against the budget
        assert _optima(choices, {"flash": budget}, fixed) == [expected]  # the optimum is unique
        assert qm.solve(choices, {"flash": budget}, fixed or None) == expected
    with pytest.raises(qm.Infeasible) as e:
        qm.solve(choices, {"flash": 149})
    assert e.value.smallest == {"flash": 150}


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[qm.Choice], dict[str, float]]:
    n = draw(st.integers(1, 5))
    k = draw(st.integers(1, 3))
    choices = []
    for i in range(n):
        sens = draw(st.lists(st.floats(0, 10), min_size=k, max_size=k))
        flash = draw(st.lists(st.integers(1, 100), min_size=k, max_size=k))
        lat = draw(st.lists(st.integers(1, 100), min_size=k, max_size=k))
        choices.append(qm.Choice(f"l{i}", list(range(k)), sens, {"flash": flash, "latency": lat}))
    budgets = {"flash": draw(st.integers(n, 100 * n)), "latency": draw(st.integers(n, 100 * n))}
    return choices, budgets


@settings(max_examples=150, deadline=None)
@given(tables())
def test_solver_matches_brute_force(problem: tuple[list[qm.Choice], dict[str, float]]) -> None:
    choices, budgets = problem
    best = None
    for combo in itertools.product(*(range(len(c.options)) for c in choices)):
        if all(sum(c.costs[k][p] for c, p in zip(choices, combo)) <= budgets[k] for k in budgets):
            val = sum(c.sensitivity[p] for c, p in zip(choices, combo))
            best = val if best is None else min(best, val)
    if best is None:
        with pytest.raises(qm.Infeasible):
            qm.solve(choices, budgets)
        return
    picks = qm.solve(choices, budgets)
    assert all(sum(c.costs[k][p] for c, p in zip(choices, picks)) <= budgets[k] for k in budgets)
    assert sum(c.sensitivity[p] for c, p in zip(choices, picks)) == pytest.approx(best, abs=1e-6)
