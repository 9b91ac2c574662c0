"""The ``nasc`` command: inspect and compile models.

User errors print one line (``nasc: error: ...``) and exit with status 2;
``--debug`` shows the traceback of an internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from nasc.errors import Error, UsageError
from nasc.frontends import check_input_shape


def parse_input_shapes(items: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x=1x3x224x224", "mask=1,16"]`` -> ``{"x": (1, 3, 224, 224), "mask": (1, 16)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.replace(",", "x").split("x") if d != "")
        except ValueError:
            raise UsageError(f"--input-shape {item!r}: expected NAME=DxDxD, e.g. x=1x3x224x224") from None
        if name in shapes:
            raise UsageError(f"--input-shape gives input '{name}' twice")
        check_input_shape(name, shape, what="--input-shape")
        shapes[name] = shape
    return shapes


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}" if unit else f"{int(n)}"
        n /= 1000
    return f"{n:.3g}P"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def _shape(d: dict[str, Any]) -> str:
    if "shape" not in d:
        return d.get("type", "?")
    shape = "[*]" if d["shape"] is None else "[" + ",".join(str(x) for x in d["shape"]) + "]"
    return f"{d['dtype']}{shape}"


def _print_groups(groups: list[dict[str, Any]]) -> None:
    """The channel groups prune{...} sees: one row per group, the barriers with their reasons."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="channel groups (prune)", title_justify="left", show_lines=False)
    for col in ("id", "scope", "units × width", "status", "layers (out: produce, in: read) / why not"):
        t.add_column(col, overflow="fold")
    for g in groups:
        layers = g["layers"]
        shown = ", ".join(layers[:4]) + (f", … {len(layers) - 4} more" if len(layers) > 4 else "")
        why = g["why"][0] + (f" (and {len(g['why']) - 1} more: --json lists them)" if len(g["why"]) > 1 else "") \
            if g["why"] else ""
        t.add_row(g["id"], g["scope"] or g["name"], f"{g['units']} × {g['width']}", g["status"],
                  shown + (f"\n[dim]{why}[/]" if why else ""))
    con.print(t)
    n = {s: sum(g["units"] for g in groups if g["status"] == s) for s in ("prunable", "inexact", "barrier")}
    con.print(f"{len(groups)} groups: {n['prunable']} prunable units, {n['inexact']} on normalized axes "
              f"(prune{{approximate=true}}), {n['barrier']} behind barriers")


def _print_repeats(found: dict[str, Any]) -> None:
    """The repeated blocks tie-layers{...} sees: copies, params per copy, near misses and failed candidates."""
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title="repeated blocks (tie-layers)", title_justify="left")
    for col in ("block", "found by", "copies", "nodes/copy", "params/copy", "weights", "copies / near misses"):
        t.add_column(col, overflow="fold")
    for r in found["repeats"]:
        copies = r["copies"]
        shown = ", ".join(copies[:3]) + (f", … {len(copies) - 3} more" if len(copies) > 3 else "")
        misses = "".join(f"\n[dim]{m['copy']} differs: {m['why']}[/]" for m in r["near_misses"][:3])
        t.add_row(r["stem"], r["how"], str(r["count"]), str(r["nodes_per_copy"]), f"{r['params_per_copy']:,}",
                  str(r["weights"]), shown + misses)
    con.print(t)
    if not found["repeats"]:
        con.print("no repeated blocks: tie-layers has nothing to tie")
    for c in found["candidates"][:5]:
        con.print(f"[dim]not a repeat: {c['stem']} ({c['copies']} copies): {c['why']}[/]")


def cmd_inspect(args: argparse.Namespace) -> int:
    """Summarize a model after the checks ``compile`` runs before it builds: a model those refuse is an error.

    Those are the loader's (the ONNX checker, ONNX's strict type and shape inference,
    the tensor size limit, the IR verifier) and ONNX Runtime loading the original
    model, which every build is checked against. What only some targets refuse is
    a warning line.
    """
    import nasc
    from nasc.ir.analysis import summarize
    from nasc.ir.types import TensorType

    graph = nasc.load(args.model, parse_input_shapes(args.input_shape), max_tensor_bytes=args.max_tensor_size)
    if not str(args.model).endswith(".pt2"):
        from nasc.backends.fidelity import reference_session

        reference_session(str(args.model))
    warnings = []
    dynamic = [v for v in graph.values() if not (isinstance(v.type, TensorType) and v.type.is_static)]
    if dynamic:
        v = dynamic[0]
        origin = f" from {v.producer.describe()}" if v.producer is not None else ""
        warnings.append(f"{len(dynamic)} value(s) have no static tensor shape (first: %{v.name} {v.type}{origin}): "
                        "the onnx target keeps them, but cpu, gpu and mcu builds need static shapes")
    if args.passes:
        graph = nasc.optimize(graph, args.passes)
    summary = summarize(graph, args.scope_depth)
    for w in warnings:
        print(f"nasc: warning: {w}", file=sys.stderr)
    groups = None
    if args.groups:
        from nasc.passes.prune_groups import channel_groups, describe

        groups = describe(channel_groups(graph))
    repeats = None
    if args.repeats:
        from nasc.passes.tie_find import find_repeats

        repeats = find_repeats(graph, args.repeats).describe()
    if args.json:
        extra = {k: v for k, v in (("groups", groups), ("repeats", repeats)) if v is not None}
        print(json.dumps({**summary, "warnings": warnings, **extra}, indent=2))
        return 0
    if groups is not None or repeats is not None:
        if groups is not None:
            _print_groups(groups)
        if repeats is not None:
            _print_repeats(repeats)
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{args.model}[/]  graph '{summary['name']}', opsets {summary['opsets']}")
    io = Table(title="inputs and outputs", title_justify="left")
    for col in ("", "name", "type"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for d in summary[kind]:
            io.add_row(kind[:-1], d["name"], _shape(d))
    con.print(io)
    con.print(
        f"nodes {summary['nodes']}   params {_human(summary['params'])} ({_bytes(summary['param_bytes'])})   "
        f"MACs {_human(summary['macs'])}"
    )
    big = summary["largest_activation"]
    if big:
        con.print(f"largest activation: {_shape(big)} = {_bytes(big['bytes'])} from {big['op']} '{big['node']}'"
                  + (f" in {big['scope']}" if big["scope"] else ""))
    con.print("ops: " + ", ".join(f"{op}×{n}" for op, n in summary["ops"].items()))
    if summary["opaque_ops"]:
        con.print(f"[yellow]carried opaquely (no nasc entry): {', '.join(summary['opaque_ops'])}[/]")
    scopes = Table(title="per scope", title_justify="left")
    for col in ("scope", "nodes", "params", "MACs"):
        scopes.add_column(col, justify="left" if col == "scope" else "right")
    for name, row in summary["scopes"].items():
        scopes.add_row(name, str(row["nodes"]), _human(row["params"]), _human(row["macs"]))
    con.print(scopes)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    import nasc

    art = nasc.compile(args.model, args.target, args.output, input_shapes=parse_input_shapes(args.input_shape),
                       passes=args.passes, calib=args.calib, seed=args.seed, verify=not args.no_verify,
                       tune_trials=args.tune_trials, tuning_db=args.tuning_db, rpc_tracker=args.rpc_tracker,
                       rpc_key=args.rpc_key, verify_on=args.verify, budget_check=not args.no_budget_check,
                       allow_random_calib=args.allow_random_calib, max_tensor_bytes=args.max_tensor_size,
                       print_ir_after_all=args.print_ir_after_all, log=print, label_output=args.label_output)
    rep = art.report
    for w in rep.get("warnings", []):
        print(f"nasc: warning: {w}", file=sys.stderr)
    print(f"wrote {art.out}/ ({', '.join(art.files)})")
    if "arena_bytes" in rep:
        _print_mcu(rep)
    fid = rep.get("fidelity")
    if fid and "verify" not in rep:  # mcu builds printed theirs per machine above
        extra = f", top1 agreement {fid['top1_agreement']:.3f}" if "top1_agreement" in fid else ""
        inputs = "random inputs, seed " + str(fid["seed"]) if fid["inputs"] == "random" else fid["inputs"]
        print(f"fidelity vs original ({inputs}): max abs err {fid['max_abs_err']:.3g}, "
              f"max rel err {fid['max_rel_err']:.3g}, cosine {fid['cosine']:.6f}{extra}"
              + (" (uninformative: see the warning)" if fid.get("uninformative") else ""))
    tuning = rep.get("build", {}).get("tuning")
    if tuning:
        print(f"tuning: {tuning['tasks']} kernels, {tuning['reused']} from the database, {tuning['tuned']} tuned now "
              f"with {tuning['trials']} trials ({tuning['time_s']} s); database {tuning['database']}")
    pad = rep.get("build", {}).get("channel_padding")
    if pad:
        print(f"channels padded to multiples of {pad['multiple']} (whole vectors): {pad['groups_padded']} groups, "
              f"+{pad['channels_added']} zero channels, MACs run {pad['macs_after'] / pad['macs_before'] - 1:+.1%}")
    wino = rep.get("build", {}).get("winograd_convs")
    if wino:
        print(f"{wino} 3x3 convolution{'s' if wino > 1 else ''} computed by Winograd F(2x2, 3x3) "
              "(NASC_WINOGRAD=0: direct)")
    lat = rep.get("latency_ms")
    if lat:
        print(f"latency (median, batch as built): nasc {lat['nasc']:.3f} ms, onnxruntime {lat['onnxruntime']:.3f} ms "
              f"({lat['nasc'] / lat['onnxruntime']:.2f}x)")
    acc = rep.get("accuracy")
    if acc:
        print(f"accuracy on {acc['samples']} labelled samples: {acc['nasc']:.2%} (original {acc['reference']:.2%})")
    if "quantization" in rep:
        pb = rep["param_bytes"]
        print(f"weights {_bytes(pb['before'])} -> {_bytes(pb['after'])}"
              + (f"; policy: {_policy_line(rep['quant_policy'])}" if rep.get("quant_policy") else ""))
    s = rep["summary"]
    files = ", ".join(f"{name} {_bytes(size)}" for name, size in rep["files"].items() if name != "report.json")
    print(f"nodes {s['nodes']}, params {_human(s['params'])}, MACs {_human(s['macs'])}; {files}")
    return 0


def _policy_line(policy: dict) -> str:
    counts: dict[str, int] = {}
    for entry in policy.values():
        if not entry.get("weightless"):
            counts[f"int{entry['bits']}"] = counts.get(f"int{entry['bits']}", 0) + 1
    return ", ".join(f"{n} layers {b}" for b, n in sorted(counts.items(), reverse=True))


def _print_mcu(rep: dict) -> None:
    b = rep["board"]
    flash = rep["flash_bytes"]
    print(f"board {b['name']} ({b['core']}): SRAM {_bytes(rep['sram_bytes'])} of {_bytes(b['sram_bytes'])} "
          f"(arena {_bytes(rep['arena_bytes'])}, lower bound {_bytes(rep['arena_lower_bound_bytes'])}, "
          f"all tensors {_bytes(rep['naive_bytes'])}); flash "
          + (f"{_bytes(flash)} of {_bytes(b['flash_bytes'])}" if flash is not None else "not measured (no arm-none-eabi-gcc)")
          + f" (weights {_bytes(rep['weights_bytes'])})")
    for v in rep.get("verify", {}).values():
        acc = v.get("accuracy")
        acc_text = (f"; accuracy {acc['nasc']:.2%} on {acc['samples']} labelled samples "
                    f"(reference {acc['reference']:.2%})") if acc else ""
        qdq = v.get("vs_quantized_graph")
        qdq_text = f"; max abs err {qdq['max_abs_err']:.3g} vs the QDQ graph under onnxruntime" if qdq else ""
        print(f"ran on {v['ran_on']}: max abs err {v['max_abs_err']:.3g} vs {v['reference']} "
              f"({v['inputs']}){acc_text}{qdq_text}")


def cmd_passes(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nasc.passes.manager import describe_pass, registered_passes

    con = Console()
    for name, cls in registered_passes().items():
        kind = "lossy" if cls.lossy else "exact"
        con.print(f"[bold]{name}[/] ({kind}): {cls.summary()}")
        rows = describe_pass(cls)
        if rows:
            t = Table(show_header=True, box=None, padding=(0, 2))
            for col in ("option", "type", "default"):
                t.add_column(col)
            for row in rows:
                t.add_row(*row)
            con.print(t)
    con.print('pipeline syntax: pass,pass{option=value option=value},...  e.g. "simplify,fuse"')
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nasc.bench import bench

    rows = bench(args.model, args.target, input_shapes=parse_input_shapes(args.input_shape), passes=args.passes,
                 tune_trials=args.tune_trials, tuning_db=args.tuning_db, calib=args.calib)
    t = Table(title=f"{args.model}: median latency, batch as built")
    for col in ("runtime", "ms", "vs onnxruntime"):
        t.add_column(col, justify="left" if col == "runtime" else "right")
    for r in rows:
        t.add_row(r["runtime"], f"{r['ms']:.3f}", f"{r['ratio']:.2f}x")
    Console().print(t)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import webbrowser

    from nasc.report import write

    d = Path(args.dir)
    src = d / "report.json"
    if not src.is_file():
        raise UsageError(f"'{d}' has no report.json: give the directory `nasc compile -o DIR` wrote")
    try:
        report = json.loads(src.read_text())
    except ValueError as e:
        raise UsageError(f"'{src}' is not valid JSON ({e}); rebuild with nasc compile") from None
    if not isinstance(report, dict) or "target" not in report:
        raise UsageError(f"'{src}' is not a nasc build report (no target); rebuild with nasc compile")
    page = write(d, report)
    print(f"wrote {page}")
    if args.open:
        webbrowser.open(page.resolve().as_uri())
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from nasc.hw_search.run import search

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    r = search(args.model, args.target, args.output, space=args.space, calib=args.calib, trials=args.trials,
               sampler=args.sampler, population=args.population, storage=args.storage, study=args.study,
               seed=args.seed, holdout=args.holdout, latency_budget_ms=args.latency_budget,
               label_output=args.label_output, input_shapes=parse_input_shapes(args.input_shape), pick=args.pick,
               timeout=args.timeout, log=log, estimate_only=args.estimate_only, screen=args.screen,
               screen_margin=args.screen_margin)
    d = r.data
    screened = f", {d['screened']} not built (the cost model screened them out)" if d.get("screened") else ""
    print(f"{d['trials']} trials in the study ({d['complete']} complete, {d['failed']} failed, {d['infeasible']} over "
          f"budget, {d['cached']} reused a build{screened}); the front ({len(d['points'])} points):")
    print("\n".join(r.table))
    print(f"wrote {r.out}/pareto.json, pareto.md, pareto.png")
    if r.picked is not None:
        print(f"picked trial {r.picked['trial']}: {r.picked['pipeline']}; built into {r.out}/build")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from nasc.hw_search.profile import profile, profile_corpus

    if args.corpus == (args.model is not None):
        raise UsageError("nasc profile takes a MODEL or --corpus (one of them)")
    if args.corpus:
        only = set(args.families.split(",")) if args.families else None
        done = profile_corpus(args.target, budget_s=args.budget, only=only, log=print)
        if not done:
            raise UsageError("no corpus model was profiled (see the messages above)")
        print(f"{len(done)} models profiled into {done[-1]['dataset']}; next: nasc predict --train --target "
              f"{args.target}")
        return 0
    s = profile(args.model, args.target, passes=args.passes, calib=args.calib, family=args.family,
                input_shapes=parse_input_shapes(args.input_shape), repeat=args.repeat)
    timed = sorted((k for k in s["kernels"] if k["cost"] is not None), key=lambda k: -k["cost"])
    print(f"{s['model']} on {s['target']} ({s['host']}): {_cost(s['latency'], s['unit'])} per inference, {len(s['kernels'])} "
          f"kernels, {sum(k['calls'] for k in s['kernels'])} calls")
    for k in timed[:args.top]:
        print(f"  {_cost(k['cost'], s['unit'])}  x{k['calls']}  {k['kernel']}")
    print(f"added to {s['dataset']}")
    return 0


def _cost(value: float, unit: str) -> str:
    return f"{value:9.4f} ms" if unit == "ms" else f"{value:12,.0f} {unit}"


def cmd_predict(args: argparse.Namespace) -> int:
    from nasc.hw_search.costmodel import predict, train_target

    if args.train == (args.model is not None):
        raise UsageError("nasc predict takes a MODEL to predict or --train (one of them)")
    if args.train:
        model, path = train_target(args.target, seed=args.seed, base=args.refit_from, log=print)
        m = model.meta
        print(f"trained on {m['samples']} models ({m['kernels']} timed kernels, families: "
              f"{', '.join(m['families'])}) of {m['target']}"
              + (f", refitted from {m['refit_from']}" if m.get("refit_from") else "") + f"; wrote {path}")
        return 0
    r = predict(args.model, args.target, passes=args.passes, input_shapes=parse_input_shapes(args.input_shape),
                calib=args.calib, seed=args.seed)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    u = r["unit"]
    print(f"{args.model} with {args.passes} on {r['target']}: predicted {_cost(r['latency'], u).strip()} per "
          f"inference ({len(r['kernels'])} kernels {_cost(r['kernels_cost'], u).strip()}, {r['calls']} calls "
          f"{'+' if r['overhead'] >= 0 else '-'}{_cost(abs(r['overhead']), u).strip()})")
    memory = (f"arena {_bytes(r['arena_bytes'])} (the planner's, exact)" if "arena_bytes" in r else
              f"activations at most {_bytes(r['activations_peak_bytes'])} at once")
    print(f"memory: weights {_bytes(r['weights_bytes'])}, {memory}; the costliest kernels:")
    for k in r["kernels"][:args.top]:
        print(f"  {_cost(k['cost'], r['unit'])}  x{k['calls']}  {k['kernel']}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``nasc: error:`` line (a UsageError), not a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _at_least(lowest: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{value} is below {lowest}; expected an integer >= {lowest}")
        return value

    return parse


def _max_tensor_size_arg(sp: argparse.ArgumentParser) -> None:
    def parse(text: str) -> int:
        from nasc.frontends.onnx_check import parse_size

        return parse_size(text, "--max-tensor-size")

    sp.add_argument("--max-tensor-size", type=parse, default=None, metavar="SIZE",
                    help="refuse models with a tensor larger than this, e.g. 64G (default $NASC_MAX_TENSOR_BYTES, "
                         "else 16G)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nasc", description="A model compiler for deployment.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of internal errors")
        sp.add_argument("model", help="an .onnx file or a torch.export .pt2 file")
        sp.add_argument("--input-shape", action="append", metavar="NAME=DxD...",
                        help="fix an input's dynamic dims, e.g. x=1x3x224x224 (repeat per input)")

    sp = sub.add_parser("inspect", help="show a model's inputs, outputs, ops, params and MACs")
    common(sp)
    sp.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    sp.add_argument("--scope-depth", type=_at_least(1), default=3,
                    help="roll scopes up to this many named parts (default 3)")
    sp.add_argument("--groups", action="store_true",
                    help="list the channel groups prune{...} would work on: size, members, and why barriers are")
    sp.add_argument("--repeats", nargs="?", const="auto", choices=("auto", "scope", "structure"),
                    help="list the repeated blocks tie-layers{...} would tie: copies, params per copy, near misses "
                         "(found by scope, by graph structure, or auto: scope where it finds any)")
    sp.add_argument("--passes", metavar="PIPELINE", default="",
                    help="run these passes first, e.g. simplify,fuse (what a compile would prune after)")
    _max_tensor_size_arg(sp)
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("compile", help="build a model for a target into a directory")
    common(sp)
    _max_tensor_size_arg(sp)
    sp.add_argument("--target", default="onnx",
                    help="onnx, torch (a torch.export .pt2 that nasc.load reads back), cpu (this host), cpu:<llvm-mcpu>, "
                         "gpu, gpu:sm_XX, a JSON TVM target, or mcu[:BOARD] "
                         "(boards: cortex-m4, cortex-m7, stm32f746, stm32f411, nrf52840, ...)")
    sp.add_argument("-o", "--output", required=True, help="output directory (written whole or not at all)")
    sp.add_argument("--passes", default="", metavar="PIPELINE", help='passes to run first, e.g. "simplify,fuse"')
    sp.add_argument("--calib", default=None, metavar="FILE.npz",
                    help="calibration inputs: one array per model input, first axis = samples")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random inputs used when there is no --calib")
    sp.add_argument("--tune-trials", type=int, default=0, metavar="N",
                    help="MetaSchedule trials for kernels the tuning database lacks (0: nasc's default schedules)")
    sp.add_argument("--tuning-db", default=None, metavar="DIR", help="tuning database (default ~/.cache/nasc/tuning/<target>)")
    sp.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="measure on devices of a TVM RPC tracker")
    sp.add_argument("--rpc-key", default=None, metavar="KEY", help="the device key registered with the tracker")
    sp.add_argument("--print-ir-after-all", action="store_true", help="print the IR after each pass")
    sp.add_argument("--no-verify", action="store_true", help="skip the IR verifier between passes")
    sp.add_argument("--verify", default=None, metavar="WHERE",
                    help="mcu: build and run the C project to check it on host (gcc; the default), qemu "
                         "(arm-none-eabi-gcc + the emulated board), host,qemu, or none")
    sp.add_argument("--allow-random-calib", action="store_true",
                    help="let quantization passes calibrate on random inputs when there is no --calib "
                         "(their ranges then say little about real data)")
    sp.add_argument("--label-output", default=None, metavar="NAME",
                    help="the output the calibration labels score (default: the first): accuracy, recover's "
                         "cross-entropy and the lossy passes' reports use it")
    sp.add_argument("--no-budget-check", action="store_true",
                    help="mcu: build even when the model exceeds the board's SRAM or flash")
    sp.set_defaults(func=cmd_compile)

    sp = sub.add_parser("bench", help="median latency of ONNX Runtime, torch (for .pt2) and nasc's build")
    common(sp)
    sp.add_argument("--target", default="cpu", help="cpu (this host) or cpu:<llvm-mcpu>")
    sp.add_argument("--passes", default="simplify,fuse", metavar="PIPELINE", help="passes before the build")
    sp.add_argument("--tune-trials", type=int, default=0, metavar="N", help="also build and time a tuned model")
    sp.add_argument("--tuning-db", default=None, metavar="DIR", help="tuning database directory")
    sp.add_argument("--calib", default=None, metavar="FILE.npz",
                    help="also time int8: ONNX Runtime quantize_static and nasc's integer build, calibrated on it")
    sp.set_defaults(func=cmd_bench)

    from nasc.hw_search.study import SCREEN_MARGIN

    sp = sub.add_parser("search", help="search pipelines (pruning, tying, quantization) for a target's budgets")
    common(sp)
    sp.add_argument("--target", default="onnx", help="as for compile; mcu boards' flash and SRAM are constraints")
    sp.add_argument("-o", "--output", required=True, help="directory for search.db, pareto.json/.md/.png and --pick")
    sp.add_argument("--space", default=None, metavar="PIPELINE",
                    help='a pipeline with ranges lo..hi and choices a|b, e.g. "simplify,fuse,prune?{macs=0.3..1.0},'
                         'quant-policy{bits=8|8,4},quantize" (default: pruning, tying where the model repeats '
                         'blocks, and a mixed int8/int4 policy)')
    sp.add_argument("--calib", default=None, metavar="FILE.npz",
                    help="samples the passes calibrate on, a held-out share of them scores each trial (with a "
                         "'label' array: accuracy, else fidelity to the original model)")
    sp.add_argument("--trials", type=_at_least(0), default=20, help="trials this run adds to the study (default 20)")
    sp.add_argument("--sampler", default="tpe", choices=("nsga2", "tpe", "random", "grid"),
                    help="Optuna sampler (default tpe: it reached the exhaustive front fastest, "
                         "docs/benchmarks.md#search)")
    sp.add_argument("--population", type=_at_least(2), default=10,
                    help="NSGA-II population / TPE's random start-up trials (default 10)")
    sp.add_argument("--storage", default=None, metavar="URL",
                    help="Optuna storage, e.g. postgresql://user:pass@host/db, shared by workers (default: SQLite "
                         "in the output directory)")
    sp.add_argument("--study", default=None, metavar="NAME", help="study name in the storage (default nasc-search)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the sampler and of the held-out split")
    sp.add_argument("--holdout", type=float, default=0.25, help="share of --calib that scores trials (default 0.25)")
    sp.add_argument("--latency-budget", type=float, default=None, metavar="MS", help="cpu: the most latency allowed")
    sp.add_argument("--label-output", default=None, metavar="NAME",
                    help="the output the calibration labels score (default: the first)")
    sp.add_argument("--pick", default=None, metavar="RULE",
                    help='compile the front point a rule chooses into OUTPUT/build, e.g. "accuracy>=0.98 '
                         'minimize=flash"')
    sp.add_argument("--timeout", type=float, default=None, metavar="S", help="stop starting trials after S seconds")
    sp.add_argument("--estimate-only", action="store_true",
                    help="mcu: score trials by the planner's exact arena and weight bytes without compiling C (no "
                         "code size, no QEMU instruction count; much faster)")
    sp.add_argument("--screen", action=argparse.BooleanOptionalAction, default=None,
                    help="cpu: skip building trials the target's cost model predicts off the front (default: on "
                         "where 'nasc predict --train' made a model)")
    sp.add_argument("--screen-margin", type=float, default=SCREEN_MARGIN, metavar="F",
                    help="--screen: credit each (calibrated) prediction this much lower latency before judging it "
                         f"(default {SCREEN_MARGIN})")
    sp.set_defaults(func=cmd_search)

    sp = sub.add_parser("profile", help="measure each kernel of a cpu or mcu build and add it to the cost model's "
                        "dataset")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of internal "
                    "errors")
    sp.add_argument("model", nargs="?", default=None, help="an .onnx or .pt2 file (or --corpus)")
    sp.add_argument("--corpus", action="store_true", help="profile nasc's own corpus of model variants instead")
    sp.add_argument("--target", default="cpu", help="cpu (this host), cpu:<llvm-mcpu> this host runs, or mcu:BOARD "
                    "(instructions per kernel under QEMU)")
    sp.add_argument("--passes", default="simplify,fuse", metavar="PIPELINE", help="passes before the build")
    sp.add_argument("--calib", default=None, metavar="FILE.npz", help="calibration samples (quantize, prune)")
    sp.add_argument("--family", default=None, help="the architecture family the sample belongs to (default: "
                    "the model's file name)")
    sp.add_argument("--input-shape", action="append", metavar="NAME=DxD...", help="fix an input's dynamic dims")
    sp.add_argument("--repeat", type=_at_least(5), default=30, help="timed runs (default 30)")
    sp.add_argument("--top", type=_at_least(0), default=10, help="kernels to list (default 10)")
    sp.add_argument("--budget", type=float, default=None, metavar="S",
                    help="--corpus: stop starting models after S seconds (default 780)")
    sp.add_argument("--families", default=None, metavar="A,B", help="--corpus: only these families")
    sp.set_defaults(func=cmd_profile)

    sp = sub.add_parser("predict", help="predicted latency and memory of a build (or --train the target's model)")
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of internal "
                    "errors")
    sp.add_argument("model", nargs="?", default=None, help="an .onnx or .pt2 file (or --train)")
    sp.add_argument("--train", action="store_true", help="fit the target's cost model on its profiled dataset")
    sp.add_argument("--refit-from", default=None, metavar="KEY",
                    help="--train: start from this target's model (e.g. llvm-znver4) and refit it on this "
                         "target's samples (default: automatic when this target has few)")
    sp.add_argument("--target", default="cpu", help="cpu (this host) or cpu:<llvm-mcpu>")
    sp.add_argument("--passes", default="simplify,fuse", metavar="PIPELINE", help="passes before the build")
    sp.add_argument("--calib", default=None, metavar="FILE.npz", help="calibration samples (quantize, prune)")
    sp.add_argument("--input-shape", action="append", metavar="NAME=DxD...", help="fix an input's dynamic dims")
    sp.add_argument("--seed", type=int, default=0, help="seed of training (and of random calibration inputs)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument("--top", type=_at_least(0), default=8, help="kernels to list (default 8)")
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("passes", help="list the passes with their options")
    sp.set_defaults(func=cmd_passes)

    sp = sub.add_parser("report", help="render DIR/report.html again from DIR/report.json")
    sp.add_argument("dir", help="a directory nasc compile wrote")
    sp.add_argument("--open", action="store_true", help="open the page in the default browser")
    sp.set_defaults(func=cmd_report)
    return p


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: compile removes its half-written output


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    debug = False
    sigterm = None
    try:
        args = parser.parse_args(argv)
        debug = args.debug
        if threading.current_thread() is threading.main_thread():
            sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
        return int(args.func(args))
    except Error as e:
        msg = " ".join(str(e).split("\n")[0].split())
        print(f"nasc: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nasc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nasc inspect ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except Exception as e:  # an internal error: one line unless --debug
        if debug:
            raise
        lines = str(e).strip().splitlines() or [""]
        first = lines[0] + (" ..." if len(lines) > 1 else "")
        print(f"nasc: internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 3
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)


if __name__ == "__main__":
    sys.exit(main())
