"""The Python API: load, export_onnx, compile. Re-exported by the ``nasc`` package."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasc.errors import UsageError
from nasc.ir.core import Graph

TARGETS = ("onnx",)


def load(model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Load a model as a verified IR graph.

    ``model``: a path to an ``.onnx`` file, its bytes, an ``onnx.ModelProto``, or
    an ``ir.Graph`` (returned as is). ``input_shapes`` fixes dynamic input dims.
    """
    if isinstance(model, Graph):
        return model
    if isinstance(model, str | os.PathLike):
        p = Path(model)
        if p.suffix == ".pt2":
            raise UsageError(f"'{p}': torch.export files are not supported yet; export the model to ONNX first")
    from nasc.frontends.onnx import load_onnx

    return load_onnx(model, input_shapes)


def export_onnx(graph: Graph, path: str | os.PathLike[str]) -> Path:
    """Write ``graph`` as an ONNX model at ``path`` (checked with the full onnx.checker)."""
    from nasc.backends.onnx import export_onnx as _export

    return _export(graph, path)


@dataclass
class Artifact:
    """What ``compile`` produced: the output directory, its files and the report."""

    out: Path
    files: list[str]
    report: dict[str, Any] = field(default_factory=dict)


def compile(
    model: Any,
    target: str = "onnx",
    out: str | os.PathLike[str] | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    fidelity_batches: int = 2,
) -> Artifact:
    """Load ``model``, build it for ``target`` into directory ``out``, and check it against the original.

    The directory is written whole or not at all: it is assembled next to
    ``out`` and moved into place only when the build and its checks succeed.
    ``report.json`` holds the fidelity against the original model under ONNX
    Runtime on seeded random inputs (``seed``), sizes and the graph summary.
    """
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r}; targets: {', '.join(TARGETS)}")
    if out is None:
        raise UsageError("compile needs an output directory (out=...)")
    out = Path(out)
    t0 = time.perf_counter()
    from nasc.backends import fidelity
    from nasc.backends.onnx import export_onnx as _export

    graph = load(model, input_shapes)
    # the reference is the original model as the user gave it (a Graph has none)
    original = None if isinstance(model, Graph) else str(model) if isinstance(model, str | os.PathLike) else model
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        path = _export(graph, tmp / "model.onnx")
        feeds = fidelity.random_inputs(graph, seed, fidelity_batches)
        report: dict[str, Any] = {
            "target": target,
            "model": str(model) if isinstance(model, str | os.PathLike) else type(model).__name__,
            "input_shapes": {v.name: list(v.shape) for v in graph.inputs},
            "pipeline": "",
            "summary": {k: v for k, v in graph.summary().items() if k in ("nodes", "params", "macs", "ops")},
            "files": {"model.onnx": path.stat().st_size},
        }
        if original is not None:
            ref_sess = fidelity.ort_session(original)
            new_sess = fidelity.ort_session(str(path))
            ref = [fidelity.run_ort(ref_sess, f) for f in feeds]
            got = [fidelity.run_ort(new_sess, f) for f in feeds]
            report["fidelity"] = {**fidelity.compare(ref, got), "inputs": "random", "seed": seed,
                                  "batches": fidelity_batches, "reference": "onnxruntime on the original model"}
        report["compile_time_s"] = round(time.perf_counter() - t0, 3)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(out, sorted(p.name for p in out.iterdir()), report)


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"'{out}' exists and is not a directory")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
