"""Build an IR graph with TVM for a CPU or GPU target: Relax lowering, default schedules, a shared library."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import tvm
from tvm import relax

from nasc.backends.tvm.kernels import FEATURES_VERSION, kernel_table
from nasc.backends.tvm.lower import to_relax, tvm_dtype
from nasc.backends.tvm.schedules import int8_kind, vector_lanes
from nasc.backends.tvm.target import TvmTarget
from nasc.ir.core import Graph


def build(graph: Graph, target: TvmTarget, *, tune_trials: int = 0, tuning_db: Path | None = None,
          rpc: Any = None, log: Any = None) -> tuple[Any, dict[str, Any]]:
    """The compiled executable and build facts (times, tuning, how kernels were scheduled).

    With ``tune_trials`` > 0 (or an explicit ``tuning_db``), kernels come from the MetaSchedule
    database for the target (tuning first what it lacks); the rest get nasc's default schedules.
    """
    t0 = time.perf_counter()
    facts: dict[str, Any] = {}
    tgt = target.tvm()
    mod = _lower(graph, target, tgt, facts)
    facts["lower_s"] = round(time.perf_counter() - t0, 3)
    database = None
    if tune_trials > 0 or tuning_db is not None:
        from nasc.backends.tvm.tune import default_db_dir, open_database, tune

        db_dir = tuning_db or default_db_dir(target.key)
        t1 = time.perf_counter()
        with tgt:
            fused = legalize_and_fuse(_prepare(mod), fast_math=target.kind == "cpu")
        facts["tuning"] = tune(fused, tgt, tune_trials, db_dir, rpc, log)
        facts["tuning"]["time_s"] = round(time.perf_counter() - t1, 2)
        database = open_database(db_dir)
    if target.kind == "cpu":
        mod, sched, facts["kernel_table"] = _schedule_cpu(mod, tgt, database)
        facts["schedules"] = sched
    t1 = time.perf_counter()
    with tgt:
        ex = tvm.compile(mod, target=tgt)
    facts["codegen_s"] = round(time.perf_counter() - t1, 3)
    return ex, facts


def _lower(graph: Graph, target: TvmTarget, tgt: Any, facts: dict[str, Any]) -> tvm.IRModule:
    if target.kind == "cpu":
        graph = _padded(graph, vector_lanes(tgt), facts)
    mod = to_relax(graph, facts=facts, int8_nhwc=target.kind == "cpu" and int8_kind(tgt) is not None)
    if target.kind == "cpu":
        from nasc.backends.tvm.layout import channels_last
        from nasc.backends.tvm.winograd import winograd

        converted = channels_last(mod)
        facts["conv_layout"] = "NCHW" if converted.same_as(mod) else "NHWC"
        mod, count = winograd(converted)
        if count:
            facts["winograd_convs"] = count
    return mod


def _padded(graph: Graph, lanes: int, facts: dict[str, Any]) -> Graph:
    """A copy of ``graph`` with pruned channel counts padded to whole float32 vectors of the target (passes.prune_pad);
    ``graph`` itself when nothing needs it. The outputs are the same.

    Whole vectors, not half ones: on AVX-512 a pruned MiniLM (FFN widths 737-1097) ran 62 ms padded to 8
    channels and 19.8 ms padded to 16 (25.8 ms unpruned); CNNs gained 0-8% more (tools/bench_cpu.py notes)."""
    from nasc.passes.prune_pad import needs_padding, pad_channels

    if os.environ.get("NASC_PAD_CHANNELS", "1") == "0" or not needs_padding(graph, lanes):  # 0: off, to compare
        return graph
    graph = graph.clone()
    padding = pad_channels(graph, lanes)
    if padding.groups:
        facts["channel_padding"] = padding.to_dict()
    return graph


def planned_kernels(graph: Graph, target: TvmTarget) -> list[dict[str, Any]]:
    """The kernels a CPU build of ``graph`` would run, with their features (kernels.kernel_table), from lowering
    and scheduling alone: no code is generated (what the cost model predicts from)."""
    tgt = target.tvm()
    _mod, _sched, table = _schedule_cpu(_lower(graph, target, tgt, {}), tgt)
    return table


def _prepare(mod: tvm.IRModule) -> tvm.IRModule:
    seq = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                    relax.transform.CanonicalizeBindings(), relax.transform.FoldConstant()])
    return seq(mod)


def legalize_and_fuse(mod: tvm.IRModule, fast_math: bool = True) -> tvm.IRModule:
    """TVM's "zero" pipeline (LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR, then the
    records of the current MetaSchedule database, if any), with float32 exp/erf/tanh and the ops built on
    them legalized to polynomial approximations when ``fast_math`` (fast_math.fast_math_legalize_map).
    Call it inside ``with target:``; tuning and the build must legalize alike, or records do not match.
    """
    from tvm.s_tir import meta_schedule as ms

    from nasc.backends.tvm.fast_math import fast_math_legalize_map

    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps(customize_legalize_map=fast_math_legalize_map() if fast_math else None),
        relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(), relax.transform.FuseOps(),
        relax.transform.FuseTIR()])
    mod = seq(mod)
    if ms.Database.current():
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    return mod


def _schedule_cpu(mod: tvm.IRModule, tgt: Any, database: Any = None
                  ) -> tuple[tvm.IRModule, dict[str, Any], list[dict[str, Any]]]:
    """Legalize (with fast math) and fuse, applying tuned records when a database is given, then give every
    kernel without a record nasc's default CPU schedule (schedules.py). Returns the scheduled module, the
    templates used, and the kernel table (kernels.kernel_table: each kernel's calls and features).

    The schedules must come after FuseTIR (fusion would discard them); tvm.compile then lowers the
    scheduled kernels as they are.
    """
    from nasc.backends.tvm.schedules import schedule_report

    with tgt:
        if database is not None:
            with database:
                fused = legalize_and_fuse(_prepare(mod))
        else:
            fused = legalize_and_fuse(_prepare(mod))
    fused = relax.transform.AttachAttrLayoutFreeBuffers()(fused)
    scheduled = schedule_with_packed_weights(fused, tgt)
    report = schedule_report(scheduled)
    counts: dict[str, int] = {}
    for template in report.values():
        counts[template] = counts.get(template, 0) + 1
    cores = int(tgt.attrs.get("num-cores", 1) or 1)
    return scheduled, {"templates": counts, "kernels": report}, kernel_table(fused, scheduled, report, cores)


def schedule_with_packed_weights(fused: tvm.IRModule, tgt: Any) -> tvm.IRModule:
    """nasc's default schedules on a legalized, fused module, with the weights that a template reads through
    a layout-rewrite block (packed panels: schedules._prepack) re-laid out once here, at build time: the
    rewrite becomes a kernel of its own (SplitLayoutRewritePreproc) that FoldConstant runs on the constant."""
    from nasc.backends.tvm.schedules import apply_default_schedules

    fused = relax.transform.AttachAttrLayoutFreeBuffers()(fused)
    scheduled = apply_default_schedules(fused, tgt)
    scheduled = relax.transform.SplitLayoutRewritePreproc()(scheduled)
    with tgt:
        return relax.transform.DeadCodeElimination()(relax.transform.FoldConstant()(scheduled))


def write_artifact(ex: Any, graph: Graph, target: TvmTarget, out: Path, pipeline: str,
                   kernels: list[dict[str, Any]] | None = None) -> list[str]:
    """``model.so`` (TVM export_library), ``model.json`` (I/O names, shapes, dtypes, target, pipeline) and,
    for a CPU build, ``kernels.json`` (each kernel's calls and features: what ``nasc profile`` times and the
    cost model reads)."""
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
    if kernels is not None:
        doc = {"format": "nasc-kernels-1", "features_version": FEATURES_VERSION, "target": target.spec,
               "kernels": kernels}
        (out / "kernels.json").write_text(json.dumps(doc) + "\n")
        files.append("kernels.json")
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
