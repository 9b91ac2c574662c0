"""The report of a target run of tools/onnx_conformance.py: the section of docs/conformance.md with the pass
counts beside ONNX Runtime's, the outcome per op, and what fails and why."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import onnx

SECTION = "conformance-targets"  # the markers of the target runs' section in docs/conformance.md

# Why a target fails a test ONNX Runtime passes, where that is understood and accepted (test -> why).
EXPLAINED_TARGETS: dict[str, str] = {
    "test_attention_4d_causal_fp16_expanded_cpu": "float16 throughout: 2 of 192 outputs are 2 half-precision steps "
    "(4.9e-4) from the reference, just past rtol 1e-3; the matmuls and softmax already compute in float32, the "
    "rest of the body rounds to float16 after every op",
}


def test_ops() -> dict[str, str]:
    """The op each node test ("test_relu_cpu") is about: its one node's op; "Op (expanded)" for a function
    body expanded into several nodes, named after its one-node twin."""
    from onnx.backend.test.loader import load_node_model_tests

    cases = {c.name: c for c in load_node_model_tests()}
    single = {n: c.model.graph.node[0].op_type for n, c in cases.items() if len(c.model.graph.node) == 1}
    ops = {}
    for n, c in cases.items():
        twin = re.sub(r"_expanded(_ver\d+)?$", "", n)
        ops[f"{n}_cpu"] = single.get(n) or f"{single.get(twin) or c.model.graph.node[-1].op_type} (expanded)"
    return ops


def _cell(statuses: list[str]) -> str:
    c = Counter(statuses)
    rest = ", ".join(f"{n} {st}" for st, n in sorted(c.items()) if st != "pass")
    return f"{c['pass']}" + (f" ({rest})" if rest else "")


def target_markdown(results: dict[str, dict[str, tuple[str, str]]], records: list[dict], command: str) -> str:
    """The section of docs/conformance.md for a target run: counts beside ORT's, per op, and what fails."""
    from nasc.backends.tvm import ops as _ops  # noqa: F401  (registers the lowerings)
    from nasc.backends.tvm.lower import LOWERINGS

    labels = list(results)
    names = sorted(results["ort"])
    title = {"ort": "ONNX Runtime alone", "nasc": "nasc, onnx target (exported, run by ONNX Runtime)",
             "cpu": "nasc, cpu target (TVM, this host's CPU)", "mcu": "nasc, mcu target (C for cortex-m4, host gcc)"}
    bound = sorted({r["test"] for r in records if r.get("bound")})
    minutes: Counter[str] = Counter()
    for r in records:
        minutes[{"onnx": "nasc"}.get(r["mode"], r["mode"])] += r["s"]
    lines = ["## The node tests built for the targets", "",
             f"Produced by `{command}` (onnx {onnx.__version__}, onnxruntime {__import__('onnxruntime').__version__}).",
             "",
             "Every node test of the suite is built with nasc for each target and run on the test's inputs; the",
             "outputs are compared with the suite's expected outputs at the suite's tolerances (rtol 1e-3, atol 1e-7",
             "unless a test sets its own, as onnx's backend runner does; shapes and dtypes must match). cpu: the",
             "build `nasc compile --target cpu` makes (backends/tvm/build.py, default schedules), run in TVM's VM;",
             "mcu: the C project `--target mcu` writes for the default board (cortex-m4), built and run by its",
             "Makefile's host target (gcc -O2 -Wall -Werror). Outcomes: *fail* wrong numbers, shape or dtype; *unsupported* a nasc",
             "error that says what is not supported (no lowering for the op, a dynamic shape, an attribute",
             "combination); *crash* any other error (an internal error, C that does not compile, a dead worker).",
             "Operands a static build must know (Slice's starts, Reshape's shape, Pad's pads, Clip's bounds, ...:",
             f"`BIND` in the tool) are bound to the test data's values: {len(bound)} of {len(names)} tests.",
             "Worker time, builds and runs included: " + ", ".join(
                 f"{lab} {minutes.get(lab, 0) / 60:.0f} min" for lab in labels) + " (two nice'd workers, two cores).",
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
    ops = test_ops()
    by_op: dict[str, list[str]] = {}
    for t in names:
        by_op.setdefault(ops.get(t, "(model)"), []).append(t)
    targets = [lab for lab in labels if lab in ("cpu", "mcu")]

    def row(op: str) -> str:
        ts = by_op[op]
        return f"| {op} | {len(ts)} | " + " | ".join(
            _cell([results[lab].get(t, ("missing", ""))[0] for t in ts]) for lab in labels) + " |"

    def ran(op: str) -> bool:  # some test of the op got past the refusal on a target
        return any(results[lab].get(t, ("", ""))[0] != "unsupported" for t in by_op[op] for lab in targets)

    head = ["| op | tests | " + " | ".join(labels) + " |", "|---|---:|" + "---:|" * len(labels)]
    lowered = sorted((op for op in by_op if op in LOWERINGS), key=str.lower)
    expanded = sorted((op for op in by_op if op.endswith(" (expanded)") and ran(op)), key=str.lower)
    refused = sorted((op for op in by_op if op not in lowered and op not in expanded), key=str.lower)
    lines += ["### Ops with a TVM lowering", "",
              "Passing tests per op, and how the others ended. The cpu and mcu targets lower through the same",
              "table (backends/tvm/ops.py, qops.py, rnn.py); the MCU refuses half-precision tensors.", "", *head,
              *map(row, lowered), "", "### Function bodies expanded into lowered ops", "",
              "The suite's expanded tests (a function op written out as its body) that some target builds:", "",
              *head, *map(row, expanded), "", "### The rest", "",
              "Every test of these is refused on both targets (an op with no TVM lowering, or an expanded body using "
              "one), tests per op in brackets: " + ", ".join(f"{op} ({len(by_op[op])})" for op in refused) + "."]
    for lab in targets:
        bad = {t: results[lab][t] for t in names if results[lab].get(t, ("", ""))[0] in ("fail", "crash")}
        lines += ["", f"### {lab}: tests that fail or crash ({len(bad)})", ""]
        if bad:
            lines += ["| test | ORT | outcome | error | why |", "|---|---|---|---|---|"]
            for t, (st, why) in bad.items():
                lines.append(f"| `{t}` | {results['ort'].get(t, ('?', ''))[0]} | {st} | {why[:200].replace('|', '/')} | "
                             f"{EXPLAINED_TARGETS.get(t, 'not yet understood')} |")
        refusals = [why for st, why in results[lab].values() if st == "unsupported"]
        unsup = Counter(_pattern(why) for why in refusals if "have no TVM lowering: " not in why)
        missing = len(refusals) - sum(unsup.values())
        lines += ["", f"{lab}: {missing} tests refused for an op without a TVM lowering (see The rest); the "
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
