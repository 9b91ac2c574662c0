"""The report of a target run of tools/onnx_conformance.py: the section of docs/conformance.md with the pass
counts beside ONNX Runtime's, the outcome per op, and what fails and why."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import onnx

SECTION = "conformance-targets"  # the markers of the target runs' section in docs/conformance.md

# Why a target fails a test, where that is understood and accepted (test, or "target:test", -> why).
EXPLAINED_TARGETS: dict[str, str] = {
    "test_attention_4d_causal_fp16_expanded_cpu": "float16 throughout: 2 of 192 outputs are 2 half-precision steps "
    "(4.9e-4) from the reference, just past rtol 1e-3; the matmuls and softmax already compute in float32, the "
    "rest of the body rounds to float16 after every op",
    "torch:test_attention_4d_causal_fp16_expanded_cpu": "as on cpu: float16 throughout, every op's result rounded "
    "to float16 as the model's types say; the same 2 of 192 outputs are 2 half-precision steps (4.9e-4) from the "
    "reference, just past rtol 1e-3",
}
# (target, test-name pattern, why) for families of tests failing for one reason
EXPLAINED_PATTERNS = [
    ("torch", r"^test_castlike_FLOAT(16)?_to_U?INT[24](_expanded)?_cpu$|^test_cast_FLOAT(16)?_to_U?INT[24]_cpu$",
     "ONNX Runtime refuses the model. ONNX leaves a float's cast out of range undefined: the torch lowering "
     "truncates it and keeps the low bits, as ONNX casts integers; the suite's expected outputs hold 0 there "
     "(ml_dtypes' cast of an out-of-range float)"),
]


def explained(target: str, test: str) -> str:
    """Why ``target`` fails ``test``, where that is understood."""
    why = EXPLAINED_TARGETS.get(f"{target}:{test}") or EXPLAINED_TARGETS.get(test)
    return why or next((w for t, rx, w in EXPLAINED_PATTERNS if t == target and re.search(rx, test)),
                       "not yet understood")


def test_ops() -> dict[str, str]:
    """The op each node test ("test_relu_cpu") is about: its one node's op; "Op (expanded)" for a function
    body expanded into several nodes, named after its one-node twin."""
    from onnx.backend.test.loader import load_node_model_tests

    models = {c.name: c.model for c in load_node_model_tests() if c.model is not None}
    single = {n: m.graph.node[0].op_type for n, m in models.items() if len(m.graph.node) == 1}
    ops = {}
    for n, m in models.items():
        twin = re.sub(r"_expanded(_ver\d+)?$", "", n)
        ops[f"{n}_cpu"] = single.get(n) or f"{single.get(twin) or m.graph.node[-1].op_type} (expanded)"
    return ops


def _cell(statuses: list[str]) -> str:
    c = Counter(statuses)
    rest = ", ".join(f"{n} {st}" for st, n in sorted(c.items()) if st != "pass")
    return f"{c['pass']}" + (f" ({rest})" if rest else "")


def _produced_by(labels: list[str], command: str, commands: dict[str, str] | None) -> str:
    """"`cmd`", or, for rows merged from several runs, each command with the rows it produced."""
    by_cmd: dict[str, list[str]] = {}
    for lab in labels:
        by_cmd.setdefault((commands or {}).get(lab, command), []).append(lab)
    if len(by_cmd) == 1:
        return f"`{next(iter(by_cmd))}`"
    return " and ".join(f"`{c}` (rows {', '.join(labs)})" for c, labs in by_cmd.items())


def target_markdown(results: dict[str, dict[str, tuple[str, str]]], records: list[dict], command: str,
                    commands: dict[str, str] | None = None) -> str:
    """The section of docs/conformance.md for a target run: counts beside ORT's, per op, and what fails.
    ``commands``: the command that produced each row, where rows were merged from several runs."""
    from nasc.backends.pytorch import nn as _torch_nn  # noqa: F401  (these register the torch lowerings)
    from nasc.backends.pytorch import ops as _torch_ops  # noqa: F401
    from nasc.backends.pytorch import quant as _torch_quant  # noqa: F401
    from nasc.backends.pytorch import shape as _torch_shape  # noqa: F401
    from nasc.backends.pytorch.lower import LOWERINGS as TORCH_LOWERINGS
    from nasc.backends.tvm import ops as _ops  # noqa: F401  (registers the lowerings)
    from nasc.backends.tvm import qops as _qops  # noqa: F401  (QDQ and the integer ops)
    from nasc.backends.tvm.lower import LOWERINGS

    labels = list(results)
    names = sorted(results["ort"])
    title = {"ort": "ONNX Runtime alone", "nasc": "nasc, onnx target (exported, run by ONNX Runtime)",
             "cpu": "nasc, cpu target (TVM, this host's CPU)", "mcu": "nasc, mcu target (C for cortex-m4, host gcc)",
             "torch": "nasc, torch target (nasc.to_torch, torch.fx under no_grad)"}
    bound = sorted({r["test"] for r in records if r.get("bound")})
    minutes: Counter[str] = Counter()
    for r in records:
        minutes[{"onnx": "nasc"}.get(r["mode"], r["mode"])] += r["s"]
    lines = ["## The node tests built for the targets", "",
             f"Produced by {_produced_by(labels, command, commands)} (onnx {onnx.__version__}, onnxruntime {__import__('onnxruntime').__version__}).",
             "",
             "Every node test of the suite is built with nasc for each target and run on the test's inputs; the",
             "outputs are compared with the suite's expected outputs at the suite's tolerances (rtol 1e-3, atol 1e-7",
             "unless a test sets its own, as onnx's backend runner does; shapes and dtypes must match). cpu: the",
             "build `nasc compile --target cpu` makes (backends/tvm/build.py, default schedules), run in TVM's VM;",
             "mcu: the C project `--target mcu` writes for the default board (cortex-m4), built and run by its",
             "Makefile's host target (gcc -O2 -Wall -Werror)." + (" torch: `nasc.to_torch`, run under `torch.no_grad`"
                                                                   " (below)." if "torch" in labels else "")
             + " Outcomes: *fail* wrong numbers, shape or dtype; *unsupported* a nasc",
             "error that says what is not supported (no lowering for the op, a dynamic shape, an attribute",
             "combination); *crash* any other error (an internal error, C that does not compile, a dead worker).",
             "Operands a static build must know (Slice's starts, Reshape's shape, Pad's pads, Clip's bounds, ...:",
             f"`BIND` in the tool) are bound to the test data's values: {len(bound)} of {len(names)} tests.",
             "Worker time, builds and runs included: " + ", ".join(
                 f"{lab} {minutes.get(lab, 0) / 60:.0f} min" if minutes.get(lab, 0) >= 60 else
                 f"{lab} {minutes.get(lab, 0):.0f} s" for lab in labels) + " (two nice'd workers, two cores).",
             "",
             "| | pass | fail | unsupported | crash | other | of | pass, of the tests ORT passes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ort_pass = {t for t, (st, _) in results["ort"].items() if st == "pass"}
    for lab in labels:
        c = Counter(st for st, _ in results[lab].values())
        other = sum(n for st, n in c.items() if st not in ("pass", "fail", "unsupported", "crash"))
        both = sum(results[lab].get(t, ("", ""))[0] == "pass" for t in ort_pass)
        lines.append(f"| {title.get(lab, lab)} | {c['pass']} | {c['fail']} | {c['unsupported']} | {c['crash']} | "
                     f"{other} | {len(results[lab])} | {both} of {len(ort_pass)} |")
    lines += ["", "(*other* for ONNX Runtime and the onnx target: errors, which they do not classify further.)", ""]
    if "torch" in labels:
        lost = Counter(results["torch"].get(t, ("missing", ""))[0] for t in ort_pass)
        lines += [
            "### The torch target", "",
            "`nasc.to_torch` lowers the loaded graph as the TVM targets get it (QDQ patterns integerized into nasc's",
            "integer ops) op by op (backends/pytorch/) into a `torch.fx.GraphModule`, which runs on the CPU under",
            "`torch.no_grad` (backends/pytorch/run.py, which tests/backends/test_lowerings.py's torch target shares).",
            "It computes in the model's own element types: float16 stays float16, float64 appears only where the",
            "model has it; uint16/32/64 arithmetic, for which torch has few kernels, runs in int64 (bit for bit,",
            "unsigned order and division included), and 4- and 2-bit integers are held in 8-bit tensors. Element",
            "types `to_torch` cannot take from numpy (strings, bfloat16, float8, float4) and sequences or optionals",
            f"are refused. Of the {len(ort_pass)} tests ONNX Runtime passes, torch fails {lost['fail']}, crashes "
            f"{lost['crash']} and refuses {lost['unsupported']}",
            "(the failures are listed with their reasons at the end, and the refusals counted by reason).", ""]
    ops = test_ops()
    by_op: dict[str, list[str]] = {}
    for t in names:
        by_op.setdefault(ops.get(t, "(model)"), []).append(t)
    targets = [lab for lab in labels if lab in ("cpu", "mcu", "torch")]

    def row(op: str) -> str:
        ts = by_op[op]
        return f"| {op} | {len(ts)} | " + " | ".join(
            _cell([results[lab].get(t, ("missing", ""))[0] for t in ts]) for lab in labels) + " |"

    def ran(op: str) -> bool:  # some test of the op got past the refusal on a target
        return any(results[lab].get(t, ("", ""))[0] != "unsupported" for t in by_op[op] for lab in targets)

    head = ["| op | tests | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    lowered = sorted((op for op in by_op if op in LOWERINGS), key=str.lower)
    expanded = sorted((op for op in by_op if op.endswith(" (expanded)") and ran(op)), key=str.lower)
    torch_only = sorted((op for op in by_op if "torch" in labels and op in TORCH_LOWERINGS and op not in lowered),
                        key=str.lower)
    refused = sorted((op for op in by_op if op not in lowered and op not in expanded and op not in torch_only),
                     key=str.lower)
    lines += ["### Ops with a TVM lowering", "",
              "Passing tests per op, and how the others ended. The cpu and mcu targets lower through the same",
              "table (backends/tvm/ops.py, qops.py, rnn.py); the MCU refuses half-precision tensors.", "", *head,
              *map(row, lowered), "", "### Function bodies expanded into lowered ops", "",
              "The suite's expanded tests (a function op written out as its body) that some target builds:", "",
              *head, *map(row, expanded), ""]
    if torch_only:
        lines += ["### Ops only the torch target lowers", "",
                  "Ops with a torch lowering (backends/pytorch/) and none for TVM:", "", *head,
                  *map(row, torch_only), ""]
    if refused:
        lines += ["### The rest", "",
                  "Every test of these is refused on every target (an op with no lowering, or an expanded body using "
                  "one), tests per op in brackets: " + ", ".join(f"{op} ({len(by_op[op])})" for op in refused) + "."]
    for lab in targets:
        bad = {t: results[lab][t] for t in names if results[lab].get(t, ("", ""))[0] in ("fail", "crash")}
        lines += ["", f"### {lab}: tests that fail or crash ({len(bad)})", ""]
        if bad:
            lines += ["| test | ORT | outcome | error | why |", "|---|---|---|---|---|"]
            for t, (st, why) in bad.items():
                lines.append(f"| `{t}` | {results['ort'].get(t, ('?', ''))[0]} | {st} | {why[:200].replace('|', '/')} | "
                             f"{explained(lab, t)} |")
        refusals = [why for st, why in results[lab].values() if st == "unsupported"]
        no_lowering = "have no torch lowering: " if lab == "torch" else "have no TVM lowering: "
        unsup = Counter(_pattern(why) for why in refusals if no_lowering not in why)
        missing = len(refusals) - sum(unsup.values())
        lines += ["", f"{lab}: {missing} tests refused for an op without a {'torch' if lab == 'torch' else 'TVM'} "
                  "lowering; the "
                  f"{sum(unsup.values())} other refusals (names and numbers elided):", ""]
        if unsup:
            lines += ["| tests | message |", "|---:|---|"]
            lines += [f"| {n} | {why.replace('|', '/')} |" for why, n in unsup.most_common()]
    return "\n".join(lines)


def _pattern(why: str) -> str:
    """An error message with its names and counts elided, so that messages of one kind count together."""
    why = why.split(". Use --target")[0]
    why = re.sub(r"'[^']*'", "'…'", why)
    why = re.sub(r"%[\w.]+", "%…", why)
    why = re.sub(r"\b\d+(\.\d+)?\b", "N", why)
    return why[:160]


def write_report(path: Path, text: str, targets: bool) -> None:
    """Write a target run's section into ``path`` between its markers (``targets``), or the onnx run's report
    as the rest of the file, keeping the targets section already there."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from doc_tables import write_between_markers

    if targets:
        write_between_markers(path, text, SECTION)
        return
    old = path.read_text() if path.exists() else ""
    begin, end = f"<!-- {SECTION}:begin -->", f"<!-- {SECTION}:end -->"
    kept = old[old.index(begin):old.index(end) + len(end)] if begin in old and end in old else ""
    path.write_text(text.rstrip("\n") + "\n" + (f"\n{kept}\n" if kept else ""))
