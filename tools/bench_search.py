"""Search efficiency: NSGA-II, TPE and random search against the exhaustive front of a space small enough to
enumerate (issue 17), as hypervolume against the number of trials.

    python tools/bench_search.py [--write docs/benchmarks.md] [--plot docs/search-hypervolume.png]
    python tools/bench_search.py --quick        # a 6-point space, 2 seeds (the test)

Every point of the space (the digits CNN: optional pruning at five MAC ratios, then a mixed int8/int4 policy
under eleven flash budgets, ``quantize``) is built once with the real passes and measured as ``nasc search``
measures a trial for ``mcu:stm32f411`` (accuracy on the held-out quarter of examples/digits_test.npz, the
planner's weight and arena bytes). Points the passes refuse (a flash budget no width mix reaches after that
pruning) are failed evaluations. Each sampler, configured as ``nasc search`` configures it
(``hw_search.study.make_sampler``), then runs seeded studies that look the figures up in that table, so the
samplers are compared on identical, deterministic evaluations. Hypervolume: of the feasible points found so far,
objectives as losses (-accuracy, weight bytes, arena bytes), against a reference point 10% beyond the worst of
the whole table; reported as a share of the exhaustive front's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

MARKER = "bench_search"
TARGET = "mcu:stm32f411"
SPACE = ("simplify,fuse,prune?{macs=0.5..0.9/0.1 reconstruct=true},"
         "quant-policy{bits=8,4 flash=4000..9000/500},quantize")
SAMPLERS = ("nsga2", "tpe", "random")
SEEDS = 5
POPULATION = 8
#: the trial counts at which the samplers are compared, as shares of the exhaustive table's size
BUDGETS = (0.1, 0.25, 0.5)
GOAL = (0.95, 0.25)  # >= 95% of the exhaustive hypervolume with <= 25% of its evaluations
QUICK = {"space": "simplify,fuse,prune?{macs=0.8 reconstruct=true},quant-policy{bits=8,4 "
                  "flash=5000..7000/1000},quantize", "seeds": 2, "population": 3}


def table(space: Any, log: Any) -> tuple[dict[str, dict[str, float] | None], Any]:
    """Every pipeline of the space -> its figures (None when the passes refuse it), and the search problem."""
    import nasc
    from nasc.backends import fidelity
    from nasc.backends.targets import parse_target
    from nasc.hw_search.study import Problem, evaluate, limits_for, objectives_for, split

    model = ROOT / "examples" / "digits_cnn.onnx"
    calib = ROOT / "examples" / "digits_test.npz"
    graph = nasc.load(model)
    feeds = fidelity.load_calibration(str(calib), graph)
    with np.load(calib) as d:
        labels = d["label"]
    fit, fit_labels, held, held_labels = split(feeds, labels, 0.25, 0)
    tgt = parse_target(TARGET)
    problem = Problem(model, graph, tgt, space, fit, fit_labels, held, held_labels, fidelity.run_graph(graph, held),
                      0, objectives_for(tgt, True), limits_for(tgt, None))
    out: dict[str, dict[str, float] | None] = {}
    for params in space.grid():
        pipe = space.pipeline(params)
        if pipe in out:
            continue
        try:
            out[pipe] = evaluate(problem, pipe)
        except nasc.Error as e:
            out[pipe] = None
            log(f"  refused: {pipe}: {str(e)[:120]}")
        else:
            log(f"  {pipe}: " + ", ".join(f"{k} {v:.4g}" for k, v in out[pipe].items()))
    return out, problem


def losses(values: dict[str, float], objectives: Sequence[Any]) -> list[float]:
    return [-values[o.name] if o.direction == "maximize" else values[o.name] for o in objectives]


def hypervolume(points: list[list[float]], ref: np.ndarray) -> float:
    from optuna._hypervolume import compute_hypervolume

    inside = [p for p in points if all(np.asarray(p) < ref)]
    return float(compute_hypervolume(np.asarray(inside), ref)) if inside else 0.0


def run_sampler(kind: str, seed: int, n_trials: int, space: Any, figures: dict[str, dict[str, float] | None],
                problem: Any, ref: np.ndarray, population: int) -> list[float]:
    """Hypervolume after each trial of one seeded study that reads the figures from the table."""
    import optuna

    from nasc.hw_search.study import make_sampler, violations

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=[o.direction for o in problem.objectives],
                                sampler=make_sampler(kind, space, population, seed))
    found: list[list[float]] = []
    curve = []
    for _ in range(n_trials):
        trial = study.ask()
        pipe, _ = space.sample(trial)
        values = figures[pipe]
        if values is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            viol = violations(values, problem.limits)
            for k, v in viol.items():
                trial.set_constraint(k, v)
            study.tell(trial, [values[o.name] for o in problem.objectives])
            if all(v <= 0 for v in viol.values()):
                found.append(losses(values, problem.objectives))
        curve.append(hypervolume(found, ref))
    return curve


def main(argv: Sequence[str] | None = None) -> int:
    from nasc.hw_search.space import Space
    from nasc.hw_search.study import violations

    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a 6-point space and 2 seeds")
    p.add_argument("--write", type=Path, default=None, help="write the section between the bench_search markers")
    p.add_argument("--plot", type=Path, default=None, help="save hypervolume against trials as a PNG")
    args = p.parse_args(argv)
    import bench_tie

    log = lambda m: print(m, file=sys.stderr, flush=True)
    started = time.perf_counter()
    space = Space.parse(QUICK["space"] if args.quick else SPACE)
    seeds = int(QUICK["seeds"] if args.quick else SEEDS)
    population = int(QUICK["population"] if args.quick else POPULATION)
    log(f"exhaustive: {space.size()} points of {space.text}")
    t0 = time.perf_counter()
    figures, problem = table(space, log)
    table_s = time.perf_counter() - t0
    ok = {k: v for k, v in figures.items() if v is not None}
    feasible = [losses(v, problem.objectives) for v in ok.values()
                if all(x <= 0 for x in violations(v, problem.limits).values())]
    worst = np.max(np.asarray([losses(v, problem.objectives) for v in ok.values()]), axis=0)
    ref = worst + 0.1 * np.abs(worst) + 1e-9
    full = hypervolume(feasible, ref)
    n = len(figures)
    curves: dict[str, list[list[float]]] = {}
    for kind in SAMPLERS:
        curves[kind] = [run_sampler(kind, s, n, space, figures, problem, ref, population) for s in range(seeds)]
        log(f"{kind}: " + ", ".join(f"{b:.0%}: {statistics.median(c[max(1, round(b * n)) - 1] for c in curves[kind]) / full:.3f}"
                                    for b in BUDGETS))
    lines = [f"Measured on {bench_tie.machine()} by `python tools/bench_search.py{' --quick' if args.quick else ''}` "
             f"({time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s, of which {table_s:.0f} s building "
             f"and measuring the {n} pipelines once).", "",
             f"Space: `{space.text}` for `{TARGET}` — {n} distinct pipelines, {len(ok)} built ({n - len(ok)} refused "
             f"by quant-policy: flash below what any width mix reaches after that pruning), {len(feasible)} within the "
             f"board's budgets; the exhaustive front has hypervolume {full:.4g} (objectives as losses: -accuracy, "
             f"weight bytes, arena bytes; reference point 10% beyond the worst measured). Each sampler: {seeds} seeded "
             f"studies, population / start-up trials {population}, trials looked up in the table (so every sampler "
             "sees the same deterministic figures); the cells are the median share of the exhaustive hypervolume "
             "reached after that many trials (a trial that proposes a pipeline already tried still counts).", "",
             "| sampler | " + " | ".join(f"{max(1, round(b * n))} trials ({b:.0%})" for b in BUDGETS)
             + " | trials to reach 95% (median) |",
             "|---|" + "---:|" * (len(BUDGETS) + 1)]
    for kind in SAMPLERS:
        cells = [statistics.median(c[max(1, round(b * n)) - 1] for c in curves[kind]) / full for b in BUDGETS]
        reach = [next((i + 1 for i, h in enumerate(c) if h >= GOAL[0] * full), None) for c in curves[kind]]
        got = [r for r in reach if r is not None]
        med = f"{statistics.median(got):.0f} ({len(got)} of {seeds} seeds)" if got else f"not within {n}"
        lines.append(f"| {kind} | " + " | ".join(f"{c:.1%}" for c in cells) + f" | {med} |")
    goal_n = max(1, round(GOAL[1] * n))
    best = {k: statistics.median(c[goal_n - 1] for c in curves[k]) / full for k in SAMPLERS}
    winner = max(best, key=lambda k: best[k])
    met = best[winner] >= GOAL[0]
    lines += ["", f"Goal: ≥ {GOAL[0]:.0%} of the exhaustive hypervolume with ≤ {GOAL[1]:.0%} of its evaluations "
                  f"({goal_n} trials): **{'met' if met else 'not met'}** (best: {winner}, {best[winner]:.1%}; "
                  + ", ".join(f"{k} {v:.1%}" for k, v in best.items()) + ")."]
    text = "\n".join(lines)
    print(text)
    if args.plot:
        _plot(args.plot, curves, full, n)
    if args.write:
        from doc_tables import write_between_markers

        write_between_markers(args.write, text, MARKER)
    return 0


def _plot(path: Path, curves: dict[str, list[list[float]]], full: float, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    xs = np.arange(1, n + 1)
    for kind, cs in curves.items():
        arr = np.asarray(cs) / full
        ax.plot(xs, np.median(arr, axis=0), label=f"{kind} (median)")
        ax.fill_between(xs, arr.min(axis=0), arr.max(axis=0), alpha=0.15)
    ax.axhline(GOAL[0], color="0.5", linestyle=":", label=f"{GOAL[0]:.0%} of exhaustive")
    ax.axvline(GOAL[1] * n, color="tab:red", linestyle="--", label=f"{GOAL[1]:.0%} of the evaluations")
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume / exhaustive front's")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Search efficiency on the digits CNN for mcu:stm32f411")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
