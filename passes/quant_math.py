"""The arithmetic of quantization, shared by the quant-policy and quantize passes (numpy and scipy only).

- weights: per-channel symmetric, ``q = clip(round(w / s), -qmax, qmax)`` with ``s = max|w| / qmax``
  along every axis but the channel axis, ``qmax = 2^(bits-1) - 1`` (so -2^(bits-1) is never used and the
  grid is symmetric, which integer kernels rely on);
- activations: per-tensor asymmetric uint8, ``q = clip(round(x / s) + zp, 0, 255)``, the range from
  calibration by min/max, a percentile of |x|, or the clip that minimises the quantization MSE;
- the policy: one weight width per layer, minimising the summed sensitivity under byte and latency
  budgets, as a 0/1 program solved by ``scipy.optimize.milp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def qmax(bits: int, reduce_range: bool = False) -> int:
    """Largest weight magnitude: 127 / 7, or 63 / 3 with ``reduce_range`` (one bit less, so that u8 x s8
    pair sums fit int16: ONNX Runtime's int8 kernels on x86 without VNNI saturate otherwise)."""
    return (1 << (bits - (2 if reduce_range else 1))) - 1


#: the weight widths nasc quantizes to (int8, packed int4)
WEIGHT_BITS = (8, 4)


def weight_dtype(bits: int) -> str:
    if bits == 8:
        return "i8"
    if bits == 4:
        return "i4"
    raise ValueError(f"weight bits {bits}: supported widths are 8 and 4")


def quantize_weight(w: np.ndarray, bits: int, axis: int, reduce_range: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric quantization of ``w`` along ``axis``: (integer values as int8, scales as f32)."""
    w = np.asarray(w, dtype=np.float32)
    axis = axis % w.ndim
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=red) if red else np.abs(w)
    top = qmax(bits, reduce_range)
    scale = (amax / top).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero channel: any scale represents it exactly
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -top, top).astype(np.int8)
    return q, scale


def dequantize_weight(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    shape[axis % q.ndim] = -1
    return (q.astype(np.float32) * scale.reshape(shape)).astype(np.float32)


def fake_quant_weight(w: np.ndarray, bits: int, axis: int) -> np.ndarray:
    q, s = quantize_weight(w, bits, axis)
    return dequantize_weight(q, s, axis)


# ---- activations --------------------------------------------------------------------------------


def act_range(samples: Sequence[np.ndarray], method: str, percentile: float = 99.99) -> tuple[float, float]:
    """The float range [lo, hi] (lo <= 0 <= hi) that uint8 activations cover, from calibration samples."""
    x = np.concatenate([np.asarray(s, dtype=np.float32).reshape(-1) for s in samples])
    if x.size == 0:
        return 0.0, 1.0
    return act_range_of(x, float(x.min()), float(x.max()), method, percentile)


def act_range_of(x: np.ndarray, lo: float, hi: float, method: str, percentile: float = 99.99) -> tuple[float, float]:
    """:func:`act_range` from the extremes ``lo``, ``hi`` of all the samples and the values ``x`` kept of them
    (all, or an even share of each sample where they are too many to hold; minmax reads only the extremes)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if method == "minmax":
        pass
    elif method == "percentile":
        lo = float(min(np.percentile(x, 100 - percentile), 0.0))
        hi = float(max(np.percentile(x, percentile), 0.0))
    elif method == "mse":
        lo, hi = _mse_range(x, lo, hi)
    else:
        raise ValueError(f"calibration method {method!r}: expected minmax, percentile or mse")
    if hi - lo < 1e-12:
        hi = lo + 1e-6
    return lo, hi


def _mse_range(x: np.ndarray, lo: float, hi: float, steps: int = 48) -> tuple[float, float]:
    """Shrink the min/max range by a common factor; keep the one with the least quantization MSE."""
    sample = x if x.size <= 200_000 else np.random.default_rng(0).choice(x, 200_000, replace=False)
    best, best_err = (lo, hi), np.inf
    for f in np.linspace(1.0, 0.3, steps):
        s, zp = act_qparams(lo * f, hi * f)
        err = float(np.mean((fake_quant_act(sample, s, zp) - sample) ** 2))
        if err < best_err:
            best, best_err = (lo * f, hi * f), err
    return best


def act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 scale and zero point for the range [lo, hi] (zero exactly representable)."""
    scale = max((hi - lo) / 255.0, 1e-12)
    zp = int(np.clip(np.round(-lo / scale), 0, 255))
    return float(np.float32(scale)), zp


def fake_quant_act(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    q = np.clip(np.round(x / np.float32(scale)) + zp, 0, 255)
    return ((q - zp) * np.float32(scale)).astype(np.float32)


# ---- the policy solver ---------------------------------------------------------------------------


class Infeasible(Exception):
    """No choice of widths meets the budgets; ``smallest`` holds the least each budgeted cost can be."""

    def __init__(self, smallest: dict[str, float]) -> None:
        super().__init__(smallest)
        self.smallest = smallest


@dataclass
class Choice:
    """Per layer, per candidate: sensitivity (to minimise) and costs (one entry per budget)."""

    layer: str
    options: list[int]
    sensitivity: list[float]
    costs: dict[str, list[float]]


def solve(choices: Sequence[Choice], budgets: dict[str, float], fixed: dict[str, float] | None = None) -> list[int]:
    """The option index per layer minimising total sensitivity with, for each budget ``k``,
    ``fixed[k] + sum(costs[k]) <= budgets[k]``. Raises :class:`Infeasible`."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    fixed = fixed or {}
    smallest = {k: fixed.get(k, 0.0) + sum(min(c.costs[k]) for c in choices) for k in budgets}
    if any(smallest[k] > budgets[k] * (1 + 1e-12) for k in budgets):
        raise Infeasible(smallest)
    if not choices:
        return []
    sizes = [len(c.options) for c in choices]
    n = sum(sizes)
    obj = np.concatenate([np.asarray(c.sensitivity, dtype=np.float64) for c in choices])
    one_each = np.zeros((len(choices), n))
    start = 0
    for i, size in enumerate(sizes):
        one_each[i, start:start + size] = 1
        start += size
    cons = [LinearConstraint(one_each, 1, 1)]
    for budget, limit in budgets.items():
        row = np.concatenate([np.asarray(c.costs[budget], dtype=np.float64) for c in choices])
        cons.append(LinearConstraint(row[None, :], -np.inf, limit - fixed.get(budget, 0.0)))
    res = milp(obj, constraints=cons, integrality=np.ones(n), bounds=Bounds(0, 1))
    if res.x is None:
        raise Infeasible(smallest)
    picks = []
    start = 0
    for k in sizes:
        picks.append(int(np.argmax(res.x[start:start + k])))
        start += k
    return picks
