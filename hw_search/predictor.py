"""The learned cost model: gradient-boosted trees (xgboost) per target, predicting each kernel's time.

A graph's predicted latency is the sum of its kernels' predictions (per call x calls) plus the call overhead,
``a + b * calls``, fitted on the whole-model measurements. Trained on a target's dataset (perfdata.py); a target
with few samples starts from a related target's model and adds trees fitted to its own samples (the HELP idea,
simply). The model is saved as xgboost's JSON plus a JSON description: no pickles, safe to share.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasc.errors import UsageError

MODEL_FORMAT = "nasc-costmodel-1"
MODEL_FILE = "model.json"
TREES_FILE = "trees.json"
#: A target with fewer measured models than this is refitted from a related target's model when one exists.
MIN_OWN_MODELS = 20
ROUNDS = 400
REFIT_ROUNDS = 60
#: Derived features: the arithmetic intensity and size of a kernel's traffic (trees split on one feature at a time).
#: The widest vector (up to 16 lanes) that divides the innermost output extent: what a schedule can tile a pruned
#: width with (42 -> 14, 43 -> 1: scalar code).
DERIVED = ("bytes_total", "work_per_byte", "work_per_out", "inner_spatial_div16")


def _widest_divisor(n: int, cap: int) -> int:
    return next((d for d in range(min(n, cap), 0, -1) if n % d == 0), 1) if n > 0 else 1


def _derived(f: Mapping[str, float]) -> dict[str, float]:
    total = f.get("bytes_in", 0.0) + f.get("bytes_weights", 0.0) + f.get("bytes_out", 0.0)
    work = f.get("work_total", 0.0)
    return {"bytes_total": total, "work_per_byte": work / max(total, 1.0),
            "work_per_out": work / max(f.get("bytes_out", 0.0), 1.0),
            "inner_spatial_div16": float(_widest_divisor(int(f.get("inner_spatial", 1)), 16))}


def steady(samples: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The samples whose whole-model and kernel timings agree (perfdata: ``steady``, absent means yes)."""
    return [s for s in samples if s.get("steady", True)]


def inputs(kernel: Mapping[str, Any]) -> dict[str, float]:
    """What the trees read of a kernel-table row: its features and how many times the build calls it (a kernel
    that layers of one shape share runs its calls back to back, each on the previous one's output: held-out
    models within 10% +1 to +3 points on three datasets)."""
    return {**kernel["features"], "calls": float(kernel["calls"])}


def rows(samples: Sequence[Mapping[str, Any]]) -> list[tuple[dict[str, float], float, int]]:
    """(inputs, measured cost per call, calls) of every measured kernel of ``samples``."""
    out = []
    for s in samples:
        for k in s["kernels"]:
            if k.get("cost") is not None and k["calls"] > 0 and k["cost"] > 0:
                out.append((inputs(k), float(k["cost"]) / k["calls"], int(k["calls"])))
    return out


def scale(f: Mapping[str, float]) -> float:
    """A kernel's size: its work (loop iterations of all its blocks) or its activations' traffic in 4-byte words,
    whichever is larger (weights are left out: a gather reads a few rows of a large table, and the work of a
    matmul already counts its weights). The trees predict the log of the time per unit of size (how efficiently
    the kernel runs), which carries over to sizes the corpus has not seen better than the time itself: trees do
    not extrapolate."""
    words = (f.get("bytes_in", 0.0) + f.get("bytes_out", 0.0)) / 4
    return max(f.get("work_total", 0.0), words, 1.0)


def matrix(feats: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    x = np.zeros((len(feats), len(names)), dtype=np.float32)
    index = {n: i for i, n in enumerate(names)}
    for r, f in enumerate(feats):
        for k, v in {**f, **_derived(f)}.items():
            i = index.get(k)
            if i is not None:
                x[r, i] = v
    return x


def _params(seed: int) -> dict[str, Any]:
    # hist is deterministic for a seed whatever the thread count; nthread 1 keeps training off the other core
    return {"objective": "reg:squarederror", "tree_method": "hist", "max_depth": 6, "eta": 0.08,
            "subsample": 0.85, "colsample_bytree": 0.85, "min_child_weight": 1.0, "seed": seed, "nthread": 1}


@dataclass
class CostModel:
    """A trained model of one target: the trees, the feature names they read, and the call overhead."""

    booster: Any
    names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def overhead(self) -> tuple[float, float]:
        a, b = self.meta.get("overhead", (0.0, 0.0))
        return float(a), float(b)

    def kernel_costs(self, kernels: Sequence[Mapping[str, Any]]) -> list[float]:
        """Predicted cost per inference (per call x calls, in the unit of the samples) of each kernel of a table."""
        if not kernels:
            return []
        x = matrix([inputs(k) for k in kernels], self.names)
        sizes = np.array([scale(k["features"]) for k in kernels])
        per_call = np.exp(self.log_efficiency(x)) * sizes
        return [float(p) * int(k["calls"]) for p, k in zip(per_call, kernels)]

    def log_efficiency(self, x: np.ndarray) -> np.ndarray:
        """The trees' output for a feature matrix: log(cost per call / scale) of each row."""
        import xgboost as xgb

        return np.asarray(self.booster.predict(xgb.DMatrix(x, feature_names=self.names)))

    def predict(self, kernels: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``latency`` (the target's unit, ms on cpu) of a whole build and each kernel's share, costliest first."""
        per = self.kernel_costs(kernels)
        calls = sum(int(k["calls"]) for k in kernels)
        a, b = self.overhead
        total = max(sum(per) + a + b * calls, 0.5 * sum(per))
        ranked = sorted(({"kernel": k["kernel"], "calls": k["calls"], "cost": round(p, 5)}
                         for k, p in zip(kernels, per)), key=lambda r: -r["cost"])
        return {"latency": total, "kernels_sum": sum(per), "overhead": total - sum(per), "calls": calls,
                "kernels": ranked}

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(directory / TREES_FILE))
        doc = {"format": MODEL_FORMAT, "names": self.names, **self.meta}
        (directory / MODEL_FILE).write_text(json.dumps(doc, indent=1) + "\n")
        return directory / MODEL_FILE


def load_model(directory: Path, target_key: str, features_version: int) -> CostModel:
    """The model saved in ``directory``; a UsageError that says how to train one when there is none (or it is
    of another format or feature version)."""
    import xgboost as xgb

    path = directory / MODEL_FILE
    how = "train one with 'nasc predict --train --target <target>' (after 'nasc profile --corpus')"
    if not path.is_file():
        raise UsageError(f"no cost model for target '{target_key}' yet ({path} is missing); {how}")
    doc = json.loads(path.read_text())
    if doc.get("format") != MODEL_FORMAT or doc.get("features_version") != features_version:
        raise UsageError(f"the cost model in {directory} is of another version ({doc.get('format')}, features "
                         f"{doc.get('features_version')}; this nasc reads {MODEL_FORMAT}, features "
                         f"{features_version}); {how}")
    booster = xgb.Booster()
    booster.load_model(str(directory / TREES_FILE))
    names = list(doc.pop("names"))
    return CostModel(booster, names, doc)


def feature_names(samples: Sequence[Mapping[str, Any]]) -> list[str]:
    names = {k for s in samples for kern in s["kernels"] for k in kern["features"]}
    return sorted(names | set(DERIVED) | {"calls"})


def fit_overhead(samples: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """``latency - sum(measured kernels) = a + b * calls`` over whole-model samples: ``a`` 0 and ``b`` the per-call
    residual that minimises the summed relative error, ``sum |kernels + b * calls - latency| / latency``: the
    median of the per-call residuals weighted by ``calls / latency``. Robust to a sample whose whole-model time was
    disturbed, and it weighs the small models, whose time is mostly calls, as much as the large ones (a plain
    median of the per-call residuals put 96% of the models' measured kernels plus overhead within 10% of their
    latency, this 100%). ``b`` is negative where timing each kernel (the runtime's hook, about a microsecond a
    call) costs more than the runtime's own dispatch; on mcu it is the calls' own instructions."""
    per_call, weight = [], []
    for s in samples:
        timed = [k for k in s["kernels"] if k.get("cost") is not None]
        calls = sum(k["calls"] for k in timed)
        if s["latency"] > 0 and calls > 0:
            per_call.append((s["latency"] - sum(k["cost"] for k in timed)) / calls)
            weight.append(calls / s["latency"])
    return 0.0, _weighted_median(per_call, weight) if per_call else 0.0


def _weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    order = np.argsort(values)
    v, w = np.asarray(values, dtype=float)[order], np.asarray(weights, dtype=float)[order]
    cum = np.cumsum(w)
    return float(v[int(np.searchsorted(cum, 0.5 * cum[-1]))])


def training_set(samples: Sequence[Mapping[str, Any]], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The feature matrix of every timed kernel of ``samples`` and its target, log(cost per call / scale)."""
    data = rows(samples)
    if not data:
        raise UsageError("no timed kernels to train on; profile some models first ('nasc profile')")
    x = matrix([d[0] for d in data], names)
    return x, np.log(np.array([d[1] / scale(d[0]) for d in data], dtype=np.float64))


def train(samples: Sequence[Mapping[str, Any]], *, seed: int = 0, base: CostModel | None = None,
          rounds: int | None = None, meta: Mapping[str, Any] | None = None) -> CostModel:
    """Fit per-kernel log-time trees on ``samples`` (deterministic for ``seed``). With ``base``, start from its
    trees and add ``rounds`` (default REFIT_ROUNDS) fitted to these samples' residuals: a related target's model
    adapted to this one from a few samples."""
    import xgboost as xgb

    samples = steady(samples) or list(samples)  # a machine busy throughout: train on what there is
    names = list(base.names) if base is not None else feature_names(samples)
    x, y = training_set(samples, names)
    dtrain = xgb.DMatrix(x, label=y, feature_names=names)
    n = rounds or (REFIT_ROUNDS if base is not None else ROUNDS)
    booster = xgb.train(_params(seed), dtrain, num_boost_round=n,
                        xgb_model=base.booster.copy() if base is not None else None)
    info = dict(meta or {})
    info.update(overhead=list(fit_overhead(samples)), samples=len(samples), kernels=len(y), seed=seed,
                unit=str(samples[0].get("unit", "ms")),
                rounds=n, families=sorted({str(s.get("family", "")) for s in samples}))
    if base is not None:
        info["refit_from"] = base.meta.get("target")
        info["rounds"] = int(base.meta.get("rounds", 0)) + n
    return CostModel(booster, names, info)


# ----------------------------------------------------------------------------------------------
# Scores (tools/bench_predictor.py, tests)
# ----------------------------------------------------------------------------------------------


def scores(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """Spearman and Kendall rank correlation, mean absolute percentage error, and the share within 10%."""
    from scipy import stats

    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    rel = np.abs(p - m) / m
    rho = stats.spearmanr(p, m).statistic if len(p) > 2 else float("nan")
    tau = stats.kendalltau(p, m).statistic if len(p) > 2 else float("nan")
    return {"spearman": float(rho), "kendall": float(tau), "mape": float(rel.mean()),
            "within_10pct": float((rel <= 0.10).mean()), "n": len(p)}


def macs_baseline(train: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]]) -> list[float]:
    """The MACs baseline: latency = c * MACs, c the median ratio on ``train``."""
    ratios = [s["latency"] / s["macs"] for s in train if s.get("macs")]
    c = float(np.median(ratios)) if ratios else 0.0
    return [c * float(s.get("macs") or 0) for s in test]


def activation_peak_bytes(graph: Any) -> int:
    """The most bytes of activations alive at once when the graph's nodes run in order (each freed after its
    last reader; inputs until their last reader, outputs to the end): the memory a build needs beyond weights."""
    last: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and not v.is_const:
                last[id(v)] = i
    keep = {id(v) for v in graph.outputs}
    live: dict[int, int] = {id(v): _nbytes(v) for v in graph.inputs}
    peak = sum(live.values())
    for i, node in enumerate(graph.nodes):
        for v in node.outputs:
            live[id(v)] = _nbytes(v)
        peak = max(peak, sum(live.values()))
        for v in list(node.inputs) + list(node.outputs):
            if v is not None and id(v) in live and last.get(id(v), -1) <= i and id(v) not in keep:
                del live[id(v)]
    return peak


def _nbytes(v: Any) -> int:
    t = v.type
    nb = getattr(t, "nbytes", None)
    return int(nb) if isinstance(nb, int | float) and not math.isnan(nb) else 0
