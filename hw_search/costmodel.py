"""``nasc predict``: train a target's cost model on its dataset, and predict a model's latency and memory with it.

The dataset and the model live side by side under the user cache (perfdata.target_dir): ``samples.jsonl`` and
``model.json`` + ``trees.json``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nasc.errors import UsageError
from nasc.hw_search import kernel_tables, perfdata
from nasc.hw_search.predictor import MIN_OWN_MODELS, CostModel, activation_peak_bytes, load_model, train


def _features_version() -> int:
    from nasc.backends.tvm.kernels import FEATURES_VERSION

    return FEATURES_VERSION


def model_for(tgt: Any, root: Path | None = None) -> CostModel:
    """The trained cost model of the target object ``tgt`` (kernel_tables.resolve); a UsageError that says how to
    train one when there is none."""
    key = kernel_tables.key(tgt)
    return load_model(perfdata.target_dir(key, root), key, _features_version())


def related(target_key: str, root: Path | None = None) -> str | None:
    """Another target of the same kind (``llvm-*``) with a trained model and the most samples, or None."""
    kind = target_key.split("-", 1)[0]
    best: tuple[int, str] | None = None
    for key in perfdata.datasets(root):
        d = perfdata.target_dir(key, root)
        if key == target_key or not key.startswith(kind + "-") or not (d / "model.json").is_file():
            continue
        n = len(perfdata.read_samples(d / perfdata.SAMPLES))
        if best is None or n > best[0]:
            best = (n, key)
    return best[1] if best else None


def train_target(target: str = "cpu", *, seed: int = 0, root: Path | None = None, base: str | None = None,
                 log: Any = None) -> tuple[CostModel, Path]:
    """Fit the cost model of ``target`` on its dataset and save it next to the data. With ``base`` (a target
    key), or automatically when the target has fewer than MIN_OWN_MODELS measured models and a related target
    has a model, start from that model and refit it on this target's samples."""
    log = log or (lambda _m: None)
    key = kernel_tables.key(kernel_tables.resolve(target))
    version = _features_version()
    samples = perfdata.load(key, root, version)
    if not samples:
        raise UsageError(f"the dataset of target '{key}' has no samples of this nasc's features (version "
                         f"{version}); profile again with 'nasc profile --corpus --target {target}'")
    if base is None and len(samples) < MIN_OWN_MODELS:
        base = related(key, root)
        if base is not None:
            log(f"{len(samples)} models measured on {key} (fewer than {MIN_OWN_MODELS}): refitting {base}'s model")
    start = load_model(perfdata.target_dir(base, root), base, version) if base is not None else None
    model = train(samples, seed=seed, base=start,
                  meta={"target": key, "features_version": version, "hosts": sorted({s["host"] for s in samples})})
    path = model.save(perfdata.target_dir(key, root))
    return model, path


def predict(model: Any, target: str = "cpu", *, passes: str = "simplify,fuse",
            input_shapes: Mapping[str, Sequence[int]] | None = None, calib: Any = None, seed: int = 0,
            root: Path | None = None, graph: Any = None, cost_model: CostModel | None = None) -> dict[str, Any]:
    """The predicted cost of ``model`` built with ``passes`` for ``target`` (no code compiled): one dict with
    ``latency`` in the target's ``unit`` (also as ``latency_ms`` on cpu, ``instructions`` on mcu), ``kernels`` (each
    kernel's predicted cost, costliest first) and the memory: ``weights_bytes`` and ``activations_peak_bytes``
    (activations alive at once, nodes in order; on mcu ``arena_bytes``, the planner's exact arena)."""
    import nasc
    from nasc.backends import fidelity

    tgt = kernel_tables.resolve(target)
    key = kernel_tables.key(tgt)
    if cost_model is None:
        cost_model = model_for(tgt, root)
    if graph is None:
        g = nasc.load(model, input_shapes)
        feeds = (fidelity.load_calibration(str(calib), g) if isinstance(calib, str | os.PathLike)
                 else fidelity.random_inputs(g, seed, 8) if calib is None else list(calib))
        graph = nasc.optimize(g, passes, feeds, target, seed=seed)
    kernels = kernel_tables.planned(graph, tgt)
    p = cost_model.predict(kernels)
    s = graph.summary()
    unit = kernel_tables.unit(tgt)
    memory = tgt.estimate(graph) if tgt.kind == "mcu" else {}
    return {"target": key, "unit": unit, "latency": round(p["latency"], 5),
            **({"latency_ms": round(p["latency"], 5)} if unit == "ms" else {unit: round(p["latency"])}),
            "kernels_cost": round(p["kernels_sum"], 5), "overhead": round(p["overhead"], 5), "calls": p["calls"],
            "kernels": p["kernels"],
            "weights_bytes": int(s["param_bytes"]), "activations_peak_bytes": activation_peak_bytes(graph),
            **memory,  # mcu: the planner's exact arena and (packed) weight bytes
            "macs": int(s["macs"]), "model_samples": cost_model.meta.get("samples"),
            "refit_from": cost_model.meta.get("refit_from")}
