"""Structured pruning: nasc's ``prune`` pass side by side with Torch-Pruning 1.6.1, and what each can prune.

    python tools/bench_prune.py [--models fashion,mobilenet_v2,minilm] [--no-coverage] [--write docs/benchmarks.md]
    python tools/bench_prune.py --quick             # digits CNN only, no latency, small coverage (the test)
    python tools/bench_prune.py --coverage-only     # just the coverage table

Side by side (one table per model): the same trained model, pruned by nasc (``prune{macs=F}`` on the exported ONNX
graph: L2 magnitude summed over every coupled weight, units ranked globally after dividing by their group's mean)
and by Torch-Pruning (``tp.pruner.MetaPruner`` with ``tp.importance.GroupMagnitudeImportance(p=2)``,
``global_pruning=True``, its ``pruning_ratio`` bisected until ``tp.utils.count_ops_and_params`` gives the same
fraction F of the model's MACs within 1%), no fine-tuning, at F = 0.7 and 0.5 (30% and 50% of MACs removed).
Every result is an ONNX file (nasc: ``nasc.export_onnx``; Torch-Pruning: ``torch.onnx.export(dynamo=False)``)
run by ONNX Runtime for its accuracy figures, counted by nasc for its MACs and params, and built by
``nasc.compile(path, "cpu", passes="simplify,fuse")`` for its latency (timed as ``measure_latency=True`` times it,
in interleaved rounds over all builds of a model: see ``time_builds``).

Coverage (one row per model the project has and per block of examples/zoo_blocks.py): the groups nasc finds,
the prunable units, MACs before and after ``prune{ratio=0.3 check=true}`` (the zero-invariance check runs on
the pruned groups), the first reason of each barrier group; and what Torch-Pruning's MetaPruner does with
the torch module at ``pruning_ratio=0.3`` (the module that produces the output ignored, nothing else
model-specific): its MACs, whether the pruned module still runs and gives the right output shape, and whether it
is the original with the removed channels masked out (zero-invariance, the same test nasc's check makes).

Torch-Pruning is a bench-only tool, never a dependency of nasc: without it the tool still runs nasc's side and
says so in the Torch-Pruning cells.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is not a package
from bench_prune_models import (
    CASES,
    LATENCY_REPEAT,
    LATENCY_ROUNDS,
    ROOT,
    SEED,
    TARGETS,
    TP_MISSING,
    Case,
    Row,
    export,
    first_line,
    load_folded_onnx_weights,
    log,
    output_module,
    run_case,
    run_module,
    tp_module,
    tp_version,
)

MODELS = ("fashion", "mobilenet_v2", "minilm")
MARKER, COVERAGE_MARKER = "bench_prune", "bench_prune_coverage"


# ---- the side-by-side table ------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x:.1%}"


def table(case: Case, rows: list[Row], latency: bool) -> list[str]:
    base = rows[0]
    head = ["tool", "setting", "MACs kept", "MACs kept (TP count)", "params", *case.columns]
    if latency:
        head += ["nasc cpu ms", "latency kept", "ORT ms"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        setting = r.setting.replace("|", "/") + (f" ({r.detail})" if r.detail else "")
        if r.error:
            msg = r.error.replace("|", "/")
            lines.append(f"| {r.tool} | {setting} | failed: {msg} |" + " |" * (len(head) - 3))
            continue
        cells = [_pct(r.macs / base.macs), "-" if r.tp_macs_kept is None else _pct(r.tp_macs_kept),
                 f"{r.params:,}", *[f"{r.figures[c]:.4f}" for c in case.columns]]
        if latency:
            ms, ms0 = r.latency.get("nasc"), base.latency.get("nasc")
            cells += ["-" if ms is None else f"{ms:.3f}", "-" if ms is None or not ms0 else _pct(ms / ms0),
                      "-" if r.latency.get("onnxruntime") is None else f"{r.latency['onnxruntime']:.3f}"]
        lines.append(f"| {r.tool} | {setting} | " + " | ".join(cells) + " |")
    return lines


def _lead(nasc: float, tp: float, tol: float = 5e-4) -> str:
    """Who is ahead, a tie when the figures differ by less than ``tol`` (they print to 4 decimals)."""
    return "tie" if abs(nasc - tp) < tol else "nasc ahead" if nasc > tp else "Torch-Pruning ahead"


def goal_lines(case: Case, rows: list[Row], latency: bool) -> list[str]:
    """The issue's goals, checked on this case's rows."""
    base, p = rows[0], case.primary
    ok = [r for r in rows[1:] if not r.error]
    out: list[str] = []
    for keep in TARGETS:
        tag = f"macs={keep:g}"
        nasc_rows = [r for r in ok if r.tool == "nasc" and tag in r.setting and "round-to" not in r.setting]
        tps = [r for r in ok
               if r.tool == "Torch-Pruning" and f"MACs {keep:g}" in r.setting and "round_to" not in r.setting]
        if nasc_rows and tps:
            best = max(nasc_rows, key=lambda r: r.figures[p])
            plain = next((r for r in nasc_rows if "reconstruct" not in r.setting), None)
            tpr = tps[0]
            verdict = "holds" if best.figures[p] >= tpr.figures[p] else "MISSED"
            out.append(f"- {1 - keep:.0%} of MACs removed, nasc >= Torch-Pruning on {p}: {verdict} "
                       f"(nasc `{best.setting}` {best.figures[p]:.4f} at {_pct(best.macs / base.macs)} MACs, "
                       f"Torch-Pruning {tpr.figures[p]:.4f} at {_pct(tpr.macs / base.macs)})")
            if plain is not None and plain is not best:
                out.append(f"  - the same criterion without reconstruct: nasc `{plain.setting}` "
                           f"{plain.figures[p]:.4f} vs Torch-Pruning {tpr.figures[p]:.4f} "
                           f"({_lead(plain.figures[p], tpr.figures[p])})")
        if case.key == "fashion" and keep == 0.5:
            for r in nasc_rows:
                loss = base.figures[p] - r.figures[p]
                want = " (goal: <= 1 point with reconstruct)" if "reconstruct" in r.setting else ""
                out.append(f"- `{r.setting}`: accuracy {base.figures[p]:.4f} -> {r.figures[p]:.4f} "
                           f"({-loss * 100:+.2f} points){want}")
    if latency:
        for r in ok:
            if "round-to=" not in r.setting or not r.latency.get("nasc") or not base.latency.get("nasc"):
                continue
            mac_cut = 1 - r.macs / base.macs
            lat_cut = 1 - r.latency["nasc"] / base.latency["nasc"]
            verdict = "holds" if lat_cut >= 0.8 * mac_cut else "MISSED"
            out.append(f"- `{r.setting}`: latency falls {lat_cut:.1%} for {mac_cut:.1%} fewer MACs "
                       f"(goal >= 0.8x: {verdict})")
    return out


# ---- coverage --------------------------------------------------------------------------------------------------


def _randn(*shape: int) -> Any:
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(SEED))


def coverage_models(quick: bool) -> dict[str, Callable[[], tuple[Any, Any, Path | None]]]:
    """name -> () -> (torch module, example inputs, the ONNX file to use, or None to export the module)."""
    import torch

    from nasc.examples import zoo

    def digits() -> tuple[Any, Any, Path | None]:
        from make_examples import build_model

        path = ROOT / "examples" / "digits_cnn.onnx"
        return load_folded_onnx_weights(build_model(), path), (torch.zeros(1, 1, 8, 8),), path

    if quick:
        return {"digits_cnn": digits}

    def fashion() -> tuple[Any, Any, Path | None]:
        from make_examples import build_fashion_model

        path = ROOT / "examples" / "fashion_cnn.onnx"
        return load_folded_onnx_weights(build_fashion_model(), path), (torch.zeros(1, 1, 28, 28),), path

    def minilm() -> tuple[Any, Any, Path | None]:
        m, ex = zoo.minilm(max_length=16, sentences=zoo.SENTENCES[:2])
        return m, ex, None

    models: dict[str, Callable[[], tuple[Any, Any, Path | None]]] = {
        "digits_cnn": digits,
        "fashion_cnn": fashion,
        "mobilenet_v2": lambda: (zoo.mobilenet_v2(), (torch.zeros(1, 3, 224, 224),), None),
        "minilm": minilm,
        "resnet18": lambda: (zoo.resnet18(), (torch.zeros(1, 3, 224, 224),), None),
        "efficientnet_lite(se=True)": lambda: (zoo.efficientnet_lite(se=True), (torch.zeros(1, 3, 224, 224),), None),
        "vit_block": lambda: (copy.deepcopy(zoo.vit_block()), (_randn(1, 64, 192),), None),
        "ds_cnn": lambda: (copy.deepcopy(zoo.ds_cnn()), (_randn(1, 1, 49, 10),), None),
    }
    try:
        from nasc.examples.zoo_blocks import BLOCKS
    except ImportError as e:
        log(f"examples/zoo_blocks.py not importable ({first_line(e)}): its blocks are left out")
        BLOCKS = {}
    for name, fn in BLOCKS.items():
        models[name] = lambda fn=fn: (*fn(), None)
    return models


@dataclass
class CoverageRow:
    model: str
    nodes: int = 0
    groups: int = 0
    prunable_groups: int = 0
    inexact_groups: int = 0
    units: int = 0
    macs_before: int = 0
    macs_after: int = 0
    invariance: str = ""
    barrier: str = ""
    tp: str = ""
    error: str = ""


def _short_barrier(why: str) -> str:
    """A barrier's reason, short: "graph output", "'Softmax' (layers.0.self_attn) does not map axis 3"."""
    for io in ("graph input", "graph output"):
        if why.startswith(io):
            return io
    m = re.match(r"^'([\w.]+)' at node '[^']*' \(scope '([^']*)'\) (.*?)( of its .*)?$", why)
    return f"'{m.group(1)}' ({m.group(2) or 'root'}) {m.group(3)}" if m else why[:120]


def _barriers(a: Any) -> str:
    """Each distinct first reason of the barrier groups with the channels it blocks; graph inputs/outputs last."""
    counts: dict[str, int] = {}
    for g in a.groups:
        if g.barrier:
            why = _short_barrier(g.barrier[0])
            counts[why] = counts.get(why, 0) + g.size
    if not counts:
        return "none"
    order = sorted(counts.items(), key=lambda kv: (kv[0].startswith("graph "), -kv[1]))
    return "; ".join(f"{why} ({n} ch)" for why, n in order)


def nasc_coverage(name: str, path: Path) -> CoverageRow:
    import nasc
    from nasc.passes.prune_groups import channel_groups

    row = CoverageRow(name)
    g = nasc.load(str(path))
    s = g.summary()
    row.nodes, row.macs_before = int(s["nodes"]), int(s["macs"])
    a = channel_groups(g)
    exact = [x for x in a.prunable if not x.inexact]
    row.groups, row.prunable_groups = len(a.groups), len(exact)
    row.inexact_groups = len(a.prunable) - len(exact)
    row.units = sum(x.size for x in exact)
    row.barrier = _barriers(a)
    try:
        out = nasc.optimize(g, "prune{ratio=0.3 check=true}")
        row.macs_after = int(out.summary()["macs"])
        zi = out.meta["passes"][-1].get("details", {}).get("zero_invariance")
        row.invariance = (f"holds ({len(zi['groups_checked'])} groups, max diff {zi['max_abs_diff']:.1e})"
                          if zi else "nothing pruned")
    except Exception as e:
        row.error = first_line(e, 300)
    return row


def _in_channel_slices(group: Any, module_names: dict[int, str]) -> list[tuple[str, list[int]]]:
    """(module name, input channels) that one Torch-Pruning group removes from each conv and linear."""
    import torch
    from torch_pruning._helpers import to_plain_idxs

    out = []
    for dep, idxs in group:
        target = dep.target.module
        if not group._DG.is_in_channel_pruning_fn(dep.handler) or id(target) not in module_names:
            continue
        if isinstance(target, torch.nn.Linear) or (isinstance(target, torch.nn.Conv1d | torch.nn.Conv2d)
                                                     and target.groups == 1):
            out.append((module_names[id(target)], [int(i) for i in to_plain_idxs(idxs)]))
    return out


def _zero_masked(original: Any, slices: list[tuple[str, list[int]]]) -> Any:
    """A copy of ``original`` with the input channels that Torch-Pruning removes from each layer zeroed: removing
    the channels is correct iff the pruned model computes what this one computes (zero-invariance)."""
    import torch

    masked = copy.deepcopy(original)
    with torch.no_grad():
        for name, idxs in slices:
            masked.get_submodule(name).weight[:, idxs] = 0
    return masked


def tp_coverage(module: Any, example: Any) -> str:
    """What Torch-Pruning's MetaPruner does at pruning_ratio=0.3 (the output's module ignored)."""
    tp = tp_module()
    if tp is None:
        return TP_MISSING
    try:
        ref = run_module(module, example)
        base, _ = tp.utils.count_ops_and_params(module, example)
        names = {id(m): n for n, m in module.named_modules()}
        original = copy.deepcopy(module)
        head = output_module(module, example)
        pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=0.3, ignored_layers=[head] if head is not None else [])
        slices: list[tuple[str, list[int]]] = []
        for group in pruner.step(interactive=True):
            slices += _in_channel_slices(group, names)  # read before prune() changes the modules
            group.prune()
        masked = _zero_masked(original, slices)
    except Exception as e:
        return f"pruning fails: {first_line(e)}"
    try:
        got = run_module(module, example)
    except Exception as e:
        return f"pruned module does not run: {first_line(e)}"
    macs, _ = tp.utils.count_ops_and_params(module, example)
    kept = f"MACs {macs / base:.1%}"
    if tuple(got.shape) != tuple(ref.shape):
        return f"{kept}; WRONG output shape {tuple(got.shape)} (expected {tuple(ref.shape)})"
    if not slices:
        return f"{kept}; runs, right shape; nothing removed"
    want = run_module(masked, example)
    if not got.is_floating_point():
        return f"{kept}; runs, right shape"
    diff = float((got.float() - want.float()).abs().max())
    scale = float(want.float().abs().max())
    if not np.isfinite(diff) or diff > 1e-3 * max(scale, 1.0):
        return (f"{kept}; runs, right shape, but NOT the original with the removed channels masked: max diff "
                f"{diff:.3g} (output max {scale:.3g})")
    return f"{kept}; runs, right shape, equals the masked original (max diff {diff:.1e})"


def run_coverage(tmp: Path, quick: bool) -> list[CoverageRow]:
    rows = []
    for name, fn in coverage_models(quick).items():
        t0 = time.perf_counter()
        try:
            module, example, path = fn()
            if path is None:
                input_names = list(example) if isinstance(example, dict) else None
                path = export(module, example, tmp / f"cov_{re.sub(r'[^a-z0-9_]', '_', name)}.onnx", input_names)
            row = nasc_coverage(name, path)
            row.tp = tp_coverage(module, example)
        except Exception as e:
            row = CoverageRow(name, error=first_line(e, 300))
            if os.environ.get("BENCH_PRUNE_TRACE"):
                traceback.print_exc()
        rows.append(row)
        log(f"  {name}: {row} ({time.perf_counter() - t0:.0f} s)")
    return rows


def coverage_table(rows: list[CoverageRow]) -> list[str]:
    head = ["model", "nodes", "groups (prunable / LayerNorm-axis / all)", "prunable units", "MACs", "MACs at ratio=0.3",
            "zero-invariance (check=true)", "barriers (first reason of each barrier group)",
            "Torch-Pruning 1.6.1, pruning_ratio=0.3"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * 5 + "---|---|---|"]
    for r in rows:
        esc = lambda s: s.replace("|", "/")
        if r.error and not r.groups and not r.nodes:
            lines.append(f"| {r.model} | failed: {esc(r.error)} |" + " |" * (len(head) - 2))
            continue
        after = "-" if r.error else f"{r.macs_after:,} ({r.macs_after / r.macs_before:.1%})"
        inv = f"prune fails: {esc(r.error)}" if r.error else r.invariance
        lines.append(f"| {r.model} | {r.nodes} | {r.prunable_groups} / {r.inexact_groups} / {r.groups} | {r.units:,} | "
                     f"{r.macs_before:,} | {after} | {inv} | {esc(r.barrier)} | {esc(r.tp)} |")
    return lines


# ---- main ------------------------------------------------------------------------------------------------------


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return f"{platform.machine()}, {os.cpu_count()} cores"
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name:")), "?")
    flags = next((line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags:")), [])
    has = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512_vnni"))
    return f"{model} ({platform.machine()}, {os.cpu_count()} cores; {has})"


def header(argv: Sequence[str], latency: bool) -> str:
    import onnxruntime
    import torch

    import nasc

    try:
        import tvm

        tvm_v = f", TVM {tvm.__version__}"
    except ImportError:
        tvm_v = ""
    cmd = " ".join(["python tools/bench_prune.py", *argv])
    return (f"Produced by `{cmd}` on {time.strftime('%Y-%m-%d', time.gmtime())}, {machine()}; nasc {nasc.__version__}, "
            f"torch {torch.__version__}, Torch-Pruning {tp_version()}, ONNX Runtime {onnxruntime.__version__}{tvm_v}."
            + ("" if latency else " Latency not measured (--quick or --no-latency)."))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--coverage", action=argparse.BooleanOptionalAction, default=True,
                   help="also the coverage table (default on)")
    p.add_argument("--coverage-only", action="store_true", help="only the coverage table")
    p.add_argument("--no-latency", action="store_true", help="skip the nasc cpu builds (latency columns)")
    p.add_argument("--quick", action="store_true",
                   help="digits CNN only, no latency, coverage of digits_cnn only (for the test)")
    p.add_argument("--no-torch-pruning", action="store_true", help="run nasc's side only, as if TP were missing")
    p.add_argument("--round-to", default="8",
                   help="comma-separated round-to values: one nasc row (round-to=N) and one Torch-Pruning row "
                        "(round_to=N) each per MACs target (default 8)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads of nasc's runtime (TVM_NUM_THREADS) and ONNX Runtime when timing (default 1: on a "
                        "shared machine, multi-threaded kernels wait for whichever thread lost its core)")
    p.add_argument("--write", type=Path, default=None, help="write the tables between the bench_prune markers")
    args = p.parse_args(argv)
    shown = list(argv if argv is not None else sys.argv[1:])
    shown = [a for i, a in enumerate(shown) if a != "--write" and (i == 0 or shown[i - 1] != "--write")]
    if args.no_torch_pruning:
        os.environ["BENCH_PRUNE_NO_TP"] = "1"
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts: before any build runs
    names = ["digits"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    if args.coverage_only:
        names = []
    bad = [m for m in names if m not in CASES]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {','.join(CASES)}")
    latency = not (args.quick or args.no_latency)
    if tp_module() is None:
        log(TP_MISSING + ": its rows and cells say so; nasc's side runs")
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    head = header(shown, latency)
    method = ["Same trained model, no fine-tuning. nasc: `prune{macs=F}` on the exported ONNX graph (L2 "
              "magnitude summed over each unit's coupled weights, ranked globally after dividing by the group mean). "
              "Torch-Pruning: `MetaPruner(importance=GroupMagnitudeImportance(p=2), global_pruning=True)` on the "
              "torch module, the output layer ignored, `pruning_ratio` bisected until its own MAC count "
              "(`tp.utils.count_ops_and_params`) is F of the original within 1% (or the closest of 14 steps: the "
              "setting says which ratio). \"MACs kept\" and \"params\" are nasc's count of each result's ONNX file "
              "(it also counts elementwise ops; \"MACs kept (TP count)\" is Torch-Pruning's). Latency: each "
              "result's ONNX file built by `nasc.compile(path, \"cpu\", passes=\"simplify,fuse\")` and timed "
              "as `measure_latency=True` times it (`CompiledModel.latency_ms`: median ms of batch-1 runs; \"ORT "
              f"ms\": ONNX Runtime, all optimizations, on the same file), but on {args.threads} thread(s) "
              f"(`--threads`) and as the fastest of {LATENCY_ROUNDS} rounds interleaved over all builds of the "
              f"model, each round the median of {LATENCY_REPEAT} runs: the machine is shared with other jobs, and "
              "the quietest window is the closest to an idle machine; results "
              "with the same MACs and params share one build. "
              "\"latency kept\": nasc cpu ms as a fraction of the unpruned model's."]

    def write(marker: str, body: list[str]) -> None:
        if args.write:
            from doc_tables import write_between_markers

            write_between_markers(args.write, "\n".join(body).rstrip(), marker)

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_prune_") as tmpdir:
        tmp = Path(tmpdir)
        if names:
            write(MARKER, method)
        for name in names:
            t0 = time.perf_counter()
            try:
                case = CASES[name](tmp)
            except Exception as e:
                log(f"\n{name}: not run: {first_line(e)}")
                write(f"{MARKER}_{name}", [f"## {name}", "", head, "", f"Not run: {first_line(e)}"])
                continue
            log(f"\n{case.title}")
            rows = run_case(case, tmp, latency, [int(r) for r in args.round_to.split(",") if r.strip()])
            body = table(case, rows, latency)
            goals = goal_lines(case, rows, latency)
            log("\n".join(body + goals) + f"\n  ({time.perf_counter() - t0:.0f} s)")
            lines = [f"## {case.title}", "", head, "", *body, "", *case.notes, ""]
            if goals:
                lines += ["Goals (issue 14):", "", *goals, ""]
            write(f"{MARKER}_{case.key}", lines)
        if args.coverage or args.coverage_only:
            log("\ncoverage")
            cov = run_coverage(tmp, args.quick)
            cov_lines = ["## Coverage: what each tool can prune", "", header(shown, latency).split(" Latency")[0], "",
                         "nasc: the ONNX file (TorchScript exporter, opset 17) through `channel_groups` and "
                         "`prune{ratio=0.3 check=true}` (random inputs; the check compares, for up to 8 pruned "
                         "groups, the original with the group's channels zeroed against the pruned graph under ONNX "
                         "Runtime). \"LayerNorm-axis\" groups are prunable only with `approximate=true` and are not "
                         "pruned here. Torch-Pruning: `MetaPruner(importance=GroupMagnitudeImportance(p=2), "
                         "pruning_ratio=0.3)` on the torch module, ignoring the module that produces the output and "
                         "nothing else (no num_heads or unwrapped_parameters); then the pruned module is run on the "
                         "example input and compared with the original whose removed input channels (of every conv "
                         "and linear that reads them) are zeroed: equal means the pruning is exact; different means "
                         "Torch-Pruning changed what the kept channels compute (a wrong coupling, or a normalization "
                         "over pruned channels).", "", *coverage_table(cov)]
            log("\n".join(cov_lines))
            write(COVERAGE_MARKER, cov_lines)
    log(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
