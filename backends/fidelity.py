"""Fidelity: how far a built model's outputs are from the original model's, both under ONNX Runtime."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from nasc.ir import dtypes
from nasc.ir.core import Graph
from nasc.ir.types import TensorType


def random_inputs(graph: Graph, seed: int, batches: int = 1) -> list[dict[str, np.ndarray]]:
    """Seeded random inputs for every graph input: floats ~ N(0, 1); integers and bools in {0, 1}.

    Integer inputs are usually ids or masks, whose valid range nasc cannot know:
    {0, 1} is valid for both, and lossy passes need real calibration data anyway.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        feed: dict[str, np.ndarray] = {}
        for v in graph.inputs:
            t = v.type
            if not isinstance(t, TensorType):
                raise ValueError(f"input '{v.name}' is not a tensor ({t}); give real inputs")
            shape = t.static_shape
            npdt = dtypes.to_numpy(t.dtype)
            if t.dtype in dtypes.FLOAT_DTYPES:
                feed[v.name] = rng.standard_normal(shape).astype(npdt)
            elif t.dtype == "bool":
                feed[v.name] = rng.integers(0, 2, shape).astype(bool)
            elif t.dtype == "str":
                feed[v.name] = np.full(shape, "a", dtype=object)
            else:
                feed[v.name] = rng.integers(0, 2, shape).astype(npdt)
        out.append(feed)
    return out


def ort_session(model: onnx.ModelProto | str | bytes, *, exact: bool = False) -> Any:
    """An ONNX Runtime CPU session. ``exact``: basic graph optimizations only, so that QDQ pairs keep their
    ONNX semantics (ORT's fused int8 kernels round and, on x86 without VNNI, saturate differently)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def ort_latency_ms(model: onnx.ModelProto | str | bytes, feed: Mapping[str, np.ndarray], repeat: int = 50,
                   warmup: int = 5, min_seconds: float = 0.5) -> float:
    """Median ms of one ONNX Runtime run (all graph optimizations, one thread per core), warm-up excluded."""
    import os

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = os.cpu_count() or 1
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    f = {k: v for k, v in feed.items() if k in names}
    from nasc.runtime import median_ms

    return median_ms(lambda: sess.run(None, f), repeat, warmup, min_seconds)


def run_ort(session: Any, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return [np.asarray(o) for o in session.run(None, {k: v for k, v in feed.items() if k in names})]


def compare(ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]]) -> dict[str, Any]:
    """Error figures over all outputs and batches: max_abs_err, max_rel_err, cosine, top1_agreement."""
    max_abs = 0.0
    max_rel = 0.0
    dots = nr = ng = 0.0
    top1_hits = top1_total = 0
    for rb, gb in zip(ref, got, strict=True):
        for r, g in zip(rb, gb, strict=True):
            if r.shape != g.shape:
                raise ValueError(f"output shapes differ: {r.shape} vs {g.shape}")
            if r.dtype.kind not in "fiub":
                continue
            r64, g64 = r.astype(np.float64), g.astype(np.float64)
            diff = np.abs(r64 - g64)
            if diff.size:
                max_abs = max(max_abs, float(np.nanmax(diff)))
                max_rel = max(max_rel, float(np.nanmax(diff / np.maximum(np.abs(r64), 1e-6))))
            dots += float(np.sum(r64 * g64))
            nr += float(np.sum(r64 * r64))
            ng += float(np.sum(g64 * g64))
            if r.dtype.kind == "f" and r.ndim == 2 and r.shape[1] >= 2:  # class scores [batch, classes]
                top1_hits += int(np.sum(np.argmax(r, 1) == np.argmax(g, 1)))
                top1_total += r.shape[0]
    cosine = 1.0 if nr == 0 and ng == 0 else dots / max(np.sqrt(nr) * np.sqrt(ng), 1e-30)
    out: dict[str, Any] = {"max_abs_err": max_abs, "max_rel_err": max_rel, "cosine": float(cosine)}
    if top1_total:
        out["top1_agreement"] = top1_hits / top1_total
    return out


def run_graph(graph: Any, feeds: Sequence[Mapping[str, np.ndarray]], values: Sequence[Any] | None = None
              ) -> list[list[np.ndarray]]:
    """Run an IR graph under ONNX Runtime: the graph's outputs, or the given values (read as extra outputs).

    This is the reference runtime passes use (through PassContext.runner) to read
    intermediate activations: the graph is exported with those values as outputs. It runs with basic
    graph optimizations only (``ort_session(exact=True)``): a quantized graph is evaluated by the ONNX
    semantics of its QDQ pairs, not by whatever int8 kernels ORT picks on this CPU.
    """
    from nasc.backends.onnx import to_onnx

    g = graph
    if values is not None:
        g = graph.clone()
        # the clone keeps values in order: map the requested ones by position
        pos = {id(v): i for i, v in enumerate(graph.values())}
        clone_vals = list(g.values())
        g.outputs = [clone_vals[pos[id(v)]] for v in values]
        for i, v in enumerate(g.outputs):
            if not v.name:
                v.name = f"probe_{i}"
        names = [v.name for v in g.outputs]
        if len(set(names)) != len(names):
            for i, v in enumerate(g.outputs):
                v.name = f"{v.name}__probe{i}"
    sess = ort_session(to_onnx(g), exact=True)
    return [run_ort(sess, f) for f in feeds]


def load_calibration(path: str, graph: Any, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Calibration feeds from an .npz: one array per model input, first axis = samples.

    Each sample has the input's shape; for an input whose batch dim is 1 the
    samples may also leave it out (``[N, 1, 8, 8]`` for an input ``[1, 1, 8, 8]``).
    """
    from nasc.errors import UsageError

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"calibration file '{path}' is not a readable .npz: {e}") from None
    names = [v.name for v in graph.inputs]
    missing = [n for n in names if n not in data.files]
    if missing:
        raise UsageError(f"calibration file '{path}' has no array for input(s) {missing}; it has {data.files}, "
                         f"the model's inputs are {names}")
    per_input: dict[str, np.ndarray] = {}
    counts = set()
    for v in graph.inputs:
        arr = data[v.name]
        shape = v.tensor_type.static_shape
        if arr.shape[1:] == shape:
            samples = arr
        elif shape and shape[0] == 1 and arr.shape[1:] == shape[1:]:
            samples = arr[:, None]
        else:
            raise UsageError(f"calibration array '{v.name}' has shape {arr.shape}; expected [samples, "
                             f"{', '.join(map(str, shape))}] for input '{v.name}' {v.type}")
        want = dtypes.to_numpy(v.tensor_type.dtype)
        if samples.dtype != want:
            if samples.dtype.kind != np.dtype(want).kind:
                raise UsageError(f"calibration array '{v.name}' is {samples.dtype}, input '{v.name}' is {v.type}")
            samples = samples.astype(want)
        per_input[v.name] = samples
        counts.add(len(samples))
    if len(counts) != 1:
        raise UsageError(f"calibration arrays in '{path}' have different sample counts: {sorted(counts)}")
    n = counts.pop()
    if limit is not None:
        n = min(n, limit)
    return [{k: a[i] for k, a in per_input.items()} for i in range(n)]
