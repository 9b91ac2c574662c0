"""What a search leaves in its directory: ``pareto.json``, ``pareto.md`` (the front as a table), ``pareto.png``
(the front as a plot), and the point ``--pick`` chooses."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nasc.errors import UsageError
from nasc.hw_search.study import Objective, Problem, quick_str

#: names a --pick may use for the figures
ALIASES = {"weights": "weights_bytes", "arena": "arena_bytes", "sram": "arena_bytes",
           "latency": "latency_ms", "size": "weights_bytes"}


def point(t: Any, problem: Problem, model: str, calib: str) -> dict[str, Any]:
    pipe = t.user_attrs["pipeline"]
    cmd = (f"nasc compile {shlex.quote(model)} --target {shlex.quote(problem.target.text)} --passes "
           f"{shlex.quote(pipe)} --calib {shlex.quote(calib)} -o build")
    if problem.label_output:
        cmd += f" --label-output {shlex.quote(problem.graph.outputs[problem.label_output].name)}"
    return {"trial": t.number, "pipeline": pipe, "values": t.user_attrs["values"],
            "feasible": bool(t.user_attrs.get("feasible", True)), "compile": cmd}


def summary(study: Any, problem: Problem, points: list[dict[str, Any]]) -> dict[str, Any]:
    import optuna

    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "trials": len(study.trials),
        "complete": len(complete),
        "failed": sum(s == optuna.trial.TrialState.FAIL for s in states),
        "infeasible": sum(not t.user_attrs.get("feasible", True) for t in complete),
        "cached": sum(bool(t.user_attrs.get("cached")) for t in complete),
        # screened out by the cost model: figures predicted, never built (study.evaluate)
        "screened": sum(bool(t.user_attrs.get("values", {}).get("predicted")) and not t.user_attrs.get("cached")
                        for t in complete),
        "target": problem.target.text,
        "space": problem.space.text,
        "objectives": {o.name: o.direction for o in problem.objectives},
        "limits": problem.limits,
        "points": points,
        "measured": [{"trial": t.number, "pipeline": t.user_attrs.get("pipeline"), "values": t.user_attrs["values"],
                      "feasible": bool(t.user_attrs.get("feasible", True))} for t in complete if "values" in t.user_attrs],
    }


def write(out: Path, data: Mapping[str, Any], objectives: Sequence[Objective]) -> list[str]:
    """pareto.json, pareto.md and pareto.png in ``out``; returns the table's lines."""
    (out / "pareto.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = table(data, objectives)
    (out / "pareto.md").write_text("\n".join(lines) + "\n")
    plot(out / "pareto.png", data, objectives)
    return lines


def table(data: Mapping[str, Any], objectives: Sequence[Objective]) -> list[str]:
    head = "| trial | " + " | ".join(o.name for o in objectives) + " | feasible | pipeline |"
    lines = [head, "|---:|" + "---:|" * len(objectives) + "---|---|"]
    for p in data["points"]:
        cells = " | ".join(quick_str(p["values"][o.name], o.unit) for o in objectives)
        lines.append(f"| {p['trial']} | {cells} | {'yes' if p['feasible'] else 'no'} | `{p['pipeline']}` |")
    return lines


def plot(path: Path, data: Mapping[str, Any], objectives: Sequence[Objective]) -> None:
    """Quality against the first cost, every point of the front, each labelled by its trial number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q, cost = objectives[0], objectives[1]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for feasible, style in ((True, dict(color="0.7", marker="o", label="measured")),
                            (False, dict(color="tab:red", marker="x", label="over budget"))):
        ms = [m for m in data.get("measured", []) if m["feasible"] == feasible]
        if ms:
            ax.scatter([_plot_unit(m["values"][cost.name], cost.unit) for m in ms],
                       [m["values"][q.name] for m in ms], s=18, zorder=2, **style)  # type: ignore[arg-type]
    pts = sorted(data["points"], key=lambda p: p["values"][cost.name])
    xs = [_plot_unit(p["values"][cost.name], cost.unit) for p in pts]
    ys = [p["values"][q.name] for p in pts]
    ax.plot(xs, ys, "o-", drawstyle="steps-post", color="tab:blue", zorder=3, label="Pareto front")
    for p, x, y in zip(pts, xs, ys, strict=True):
        ax.annotate(str(p["trial"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    limit = data.get("limits", {}).get(cost.name)
    all_x = [_plot_unit(m["values"][cost.name], cost.unit) for m in data.get("measured", [])] or xs
    if limit is not None and _plot_unit(limit, cost.unit) <= 2 * max(all_x):  # a budget far off would hide the points
        ax.axvline(_plot_unit(limit, cost.unit), color="tab:red", linestyle="--", label=f"budget ({cost.name})")
    elif limit is not None:
        ax.text(0.02, 0.02, f"budget {quick_str(limit, cost.unit)} (off the chart)", transform=ax.transAxes,
                fontsize=8, color="tab:red")
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"{cost.name} ({_unit_name(cost.unit)})")
    ax.set_ylabel(q.name)
    ax.set_title(f"Pareto front: {data['trials']} trials on {data['target']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_unit(v: float, unit: str) -> float:
    return v / 1024 if unit == "B" else v


def _unit_name(unit: str) -> str:
    return {"B": "KiB", "ms": "ms"}.get(unit, "count")


def figure_names(problem: Problem) -> set[str]:
    """The figures every trial of ``problem`` has (what a --pick rule may name)."""
    names = {o.name for o in problem.objectives} | {"fidelity", "weights_bytes", "macs"}
    if problem.held_labels is not None:
        names.add("accuracy")
    if problem.target.kind == "mcu":
        names |= {"arena_bytes"} | ({"flash_bytes", "code_bytes", "instructions"} if problem.build else set())
    return names


def check_pick(rule: str, problem: Problem) -> None:
    """A UsageError for a --pick rule that cannot be read or names a figure the trials will not have, before any
    trial runs."""
    fake = {n: 0.0 for n in figure_names(problem)}
    try:
        pick([{"values": fake, "feasible": True}], rule, problem.objectives)
    except UsageError as e:
        if "no point of the front meets it" not in str(e):
            raise


def pick(points: Sequence[Mapping[str, Any]], rule: str, objectives: Sequence[Objective]) -> Mapping[str, Any]:
    """The point a rule like ``"accuracy>=0.98 minimize=flash"`` chooses: conditions (``name>=v``, ``name<=v``)
    filter the front, ``minimize=``/``maximize=`` orders it (default: the best quality)."""
    names = {o.name for o in objectives} | set(points[0]["values"]) if points else {o.name for o in objectives}
    conds: list[tuple[str, str, float]] = []
    order: tuple[str, str] = ("maximize", objectives[0].name)
    for item in rule.split():
        m = re.fullmatch(r"(minimize|maximize)=([\w-]+)", item)
        if m:
            order = (m.group(1), _name(m.group(2), names, rule))
            continue
        m = re.fullmatch(r"([\w-]+)(>=|<=)([-+0-9.eE]+)", item)
        if not m:
            raise UsageError(f"--pick {rule!r}: cannot read {item!r}; write conditions like accuracy>=0.98 or "
                             "flash<=500000 and minimize=NAME or maximize=NAME")
        conds.append((_name(m.group(1), names, rule), m.group(2), float(m.group(3))))
    ok = [p for p in points if p["feasible"] and all(
        p["values"][k] >= v if op == ">=" else p["values"][k] <= v for k, op, v in conds)]
    if not ok:
        best = {k: max(p["values"][k] for p in points) if op == ">=" else min(p["values"][k] for p in points)
                for k, op, _ in conds} if points else {}
        raise UsageError(f"--pick {rule!r}: no point of the front meets it (the front reaches {best}); relax it or "
                         "search longer")
    sign = 1 if order[0] == "minimize" else -1
    return min(ok, key=lambda p: sign * p["values"][order[1]])


def _name(name: str, names: set[str], rule: str) -> str:
    full = ALIASES.get(name, name)
    if name == "flash":  # the flash with code when trials were built, else the weights' bytes
        full = "flash_bytes" if "flash_bytes" in names else "weights_bytes"
    if full not in names:
        raise UsageError(f"--pick {rule!r}: no figure named {name!r}; figures: {', '.join(sorted(names))}")
    return full
