"""Build an IR graph with TVM for a CPU or GPU target: Relax lowering, default schedules, a shared library."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from nasc.backends.tvm.lower import to_relax, tvm_dtype
from nasc.backends.tvm.target import TvmTarget
from nasc.ir.core import Graph


def build(graph: Graph, target: TvmTarget) -> tuple[Any, dict[str, Any]]:
    """The compiled executable and build facts (times, how kernels were scheduled)."""
    t0 = time.perf_counter()
    mod = to_relax(graph)
    t_lower = time.perf_counter() - t0
    tgt = target.tvm()
    facts: dict[str, Any] = {"lower_s": round(t_lower, 3)}
    if target.kind == "cpu":
        mod, sched = _schedule_cpu(mod, tgt)
        facts["schedules"] = sched
    t1 = time.perf_counter()
    with tgt:
        ex = tvm.compile(mod, target=tgt)
    facts["codegen_s"] = round(time.perf_counter() - t1, 3)
    return ex, facts


def _schedule_cpu(mod: tvm.IRModule, tgt: Any) -> tuple[tvm.IRModule, dict[str, Any]]:
    """Legalize and fuse, then give every fused kernel nasc's default CPU schedule (schedules.py).

    The schedules must come after FuseTIR (fusion would discard them); tvm.compile then lowers the
    scheduled kernels as they are.
    """
    from nasc.backends.tvm.schedules import apply_default_schedules, schedule_report

    seq = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                    relax.transform.CanonicalizeBindings(), relax.transform.FoldConstant()])
    with tgt:
        fused = relax.get_pipeline("zero")(seq(mod))
    scheduled = apply_default_schedules(fused, tgt)
    report = schedule_report(scheduled)
    counts: dict[str, int] = {}
    for template in report.values():
        counts[template] = counts.get(template, 0) + 1
    return scheduled, {"templates": counts, "kernels": report}


def write_artifact(ex: Any, graph: Graph, target: TvmTarget, out: Path, pipeline: str) -> list[str]:
    """``model.so`` (TVM export_library) and ``model.json`` (I/O names, shapes, dtypes, target, pipeline)."""
    ex.export_library(str(out / "model.so"))
    meta = {
        "format": "nasc-tvm-1",
        "target": target.spec,
        "device": target.kind,
        "pipeline": pipeline,
        "inputs": [{"name": v.name, "shape": list(v.shape), "dtype": tvm_dtype(v.dtype)} for v in graph.inputs],
        "outputs": [{"name": v.name, "shape": list(v.shape), "dtype": tvm_dtype(v.dtype)} for v in graph.outputs],
    }
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    files = ["model.so", "model.json"]
    if target.kind == "gpu":  # the CUDA C that the library carries, for reading and for offline nvcc checks
        src = cuda_source(ex)
        if src:
            (out / "kernels.cu").write_text(src)
            files.append("kernels.cu")
    return files


def cuda_source(ex: Any) -> str:
    """The CUDA C source inside a GPU build ('' when there is none)."""
    stack = [ex.mod]
    while stack:
        m = stack.pop()
        if getattr(m, "kind", "") == "cuda":
            return str(m.inspect_source("cuda"))
        stack.extend(m.imports)
    return ""


def vm_for(ex: Any, kind: str) -> Any:
    dev = tvm.cpu() if kind == "cpu" else tvm.cuda()
    return relax.VirtualMachine(ex, dev), dev
