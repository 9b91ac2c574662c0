"""``nasc.search``: the whole search of one model for one target, from the space text to ``DIR/pareto.json``."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasc.errors import UsageError
from nasc.hw_search import front as front_mod
from nasc.hw_search.space import Space, default_space, describe
from nasc.hw_search.study import (
    DEFAULT_STUDY,
    SAMPLERS,
    SCREEN_MARGIN,
    Problem,
    default_storage,
    front,
    limits_for,
    objectives_for,
    open_study,
    quick_str,
    run_trials,
    save_feeds,
    settled_front,
    split,
)


@dataclass
class SearchResult:
    """What a search wrote: the directory, ``pareto.json``'s contents, and the compiled pick (if asked)."""

    out: Path
    data: dict[str, Any]
    table: list[str] = field(default_factory=list)
    picked: Mapping[str, Any] | None = None
    artifact: Any = None

    @property
    def points(self) -> list[dict[str, Any]]:
        return list(self.data["points"])


def search(model: Any, target: str = "onnx", out: str | os.PathLike[str] = "search", *, space: str | None = None,
           calib: str | os.PathLike[str] | None = None, trials: int = 20, sampler: str = "tpe",
           population: int = 10, storage: str | None = None, study: str | None = None, seed: int = 0,
           holdout: float = 0.25, latency_budget_ms: float | None = None, label_output: str | None = None,
           input_shapes: Mapping[str, Sequence[int]] | None = None, pick: str | None = None,
           timeout: float | None = None, log: Any = None, progress: bool | None = None,
           estimate_only: bool = False, screen: bool | None = None, screen_margin: float = SCREEN_MARGIN) -> SearchResult:
    """Search ``space`` (a pipeline with ranges and choices; default: :func:`default_space`) for ``target``.

    Each of ``trials`` trials (added to the study: a second call continues it) builds a pipeline with the real
    passes on the calibration samples less a seeded ``holdout`` share, and measures it on that share against the
    original model (accuracy when the .npz has labels; ``label_output`` names the output they score) and on the
    target. ``storage`` is an Optuna RDB URL (default ``sqlite:///<out>/search.db``) and ``study`` its name, so
    several machines can each run this as workers of one study. Writes ``pareto.json``, ``pareto.md``,
    ``pareto.png``, ``calib_fit.npz`` (the samples the passes saw, for reproducing a point with ``nasc compile``)
    and ``calib_heldout.npz`` (those that scored it) into ``out``; ``pick`` (e.g. ``"accuracy>=0.98
    minimize=flash"``) compiles the chosen point into ``out/build``. On ``cpu``, where the target has a trained cost
    model (``nasc predict --train``), a trial whose predicted latency less ``screen_margin`` cannot join the front of
    the trials built so far is not built (``screen``: default on where a model exists). On ``mcu`` each trial builds the C project and counts one inference's instructions under
    QEMU; ``estimate_only`` keeps to the planner's exact arena and weight bytes (no C compiled, much faster).
    """
    from nasc.api import _check_numbers, _labelled, compile, load, output_index
    from nasc.backends import fidelity
    from nasc.backends.targets import parse_target

    log = log or (lambda _m: None)
    _check_numbers(seed=seed)
    if not isinstance(trials, int) or trials < 0:
        raise UsageError(f"trials must be a whole number >= 0, got {trials!r}")
    if sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {sampler!r}; samplers: {', '.join(SAMPLERS)}")
    if not isinstance(population, int) or population < 2:
        raise UsageError(f"population must be a whole number >= 2, got {population!r}")
    tgt = parse_target(target)
    graph = load(model, input_shapes)
    if calib is not None:
        feeds = fidelity.load_calibration(str(calib), graph)
        lab = _labelled(str(calib), feeds)
        labels = None if lab is None else np.asarray(lab[1])
    else:
        log("warning: no calibration data (--calib): trials are measured on seeded random inputs against the "
            "original model's outputs, which says little about accuracy on real data")
        feeds, labels = fidelity.random_inputs(graph, seed, 16), None
    k_out = output_index(graph, label_output)
    fit, fit_labels, held, held_labels = split(feeds, labels, holdout, seed)
    if space is None:
        from nasc.passes.tie_find import find_repeats

        space = default_space(tgt.kind, bool(find_repeats(graph).repeats), calib is not None)
    parsed = Space.parse(space)
    build = not estimate_only
    if build and tgt.kind == "mcu":
        from nasc.backends.mcu.verify import require_tools

        require_tools("qemu", "measuring mcu trials (flash with code, instructions under QEMU; or --estimate-only)")
    problem = Problem(model, graph, tgt, parsed, fit, fit_labels, held, held_labels,
                      fidelity.run_graph(graph, held), k_out, objectives_for(tgt, held_labels is not None, build),
                      limits_for(tgt, latency_budget_ms, build), seed=seed, log=log, build=build,
                      screen=_cost_model(tgt, build, screen, log), margin=screen_margin)
    if held_labels is None:
        from nasc.passes.metrics import uninformative

        why = uninformative(problem.reference)
        if why:
            log(f"warning: the fidelity objective measures nothing: {why} on the held-out slice, so every trial "
                "scores the same; give --calib inputs on which the model's outputs vary (or labels)")
    if pick:
        front_mod.check_pick(pick, problem)
    outdir = Path(out)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"output '{outdir}' exists and is not a directory")
    made = not outdir.exists()
    outdir.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(outdir)
    name = study or DEFAULT_STUDY
    log(f"searching {parsed.size():,} points of {parsed.text!r} for {tgt.text}: " + "; ".join(describe(parsed)))
    worker_seed = seed if storage is None else seed + os.getpid()  # workers of one study draw different points
    try:
        st = open_study(url, name, problem, sampler, population, worker_seed, log)
    except BaseException:
        if made:  # nothing of this search is left behind when it could not start
            shutil.rmtree(outdir, ignore_errors=True)
        raise
    with _progress(trials, problem, progress) as tick:
        run_trials(st, problem, trials, timeout, tick)
    best = settled_front(st, problem)  # on cpu: timed again properly, with the points close to it
    if not best:
        raise UsageError(_nothing_feasible(st, problem))
    calib_fit = outdir / "calib_fit.npz"
    save_feeds(calib_fit, fit, fit_labels)
    save_feeds(outdir / "calib_heldout.npz", held, held_labels)
    # (a trial over the latency budget by its quick timing alone can be on the settled front: within every limit)
    points = [{**front_mod.point(t, problem, str(model), str(calib_fit)), "values": v, "feasible": True}
              for t, v in best]
    data = front_mod.summary(st, problem, points)
    data.update(study=name, storage=url if storage is None else "(given)")
    lines = front_mod.write(outdir, data, problem.objectives)
    result = SearchResult(outdir, data, lines)
    if pick:
        chosen = front_mod.pick(points, pick, problem.objectives)
        result.picked = chosen
        log(f"--pick {pick!r}: trial {chosen['trial']}: {chosen['pipeline']}")
        result.artifact = compile(model, tgt.text, outdir / "build", input_shapes=input_shapes,
                                  passes=chosen["pipeline"], calib=str(calib_fit), seed=seed, log=log,
                                  label_output=label_output)
        _add_front(result.artifact, data, pick, chosen, problem.quality)
    return result


def _cost_model(tgt: Any, build: bool, screen: bool | None, log: Any) -> Any:
    """The cpu target's cost model for screening trials (None: every trial is built)."""
    if tgt.kind != "cpu" or not build or screen is False:
        if screen and tgt.kind != "cpu":
            raise UsageError(f"screening trials with the cost model needs a cpu target, not {tgt.text}")
        return None
    from nasc.hw_search.costmodel import model_for

    try:
        model = model_for(tgt)
    except UsageError as e:
        if screen:
            raise
        log(f"every trial is built and timed: {e}")
        return None
    log(f"screening trials with the cost model of {tgt.tvm.key} ({model.meta.get('samples')} models): a trial "
        "whose predicted latency cannot reach the front is not built")
    return model


def _add_front(artifact: Any, data: Mapping[str, Any], rule: str, chosen: Mapping[str, Any], quality: str) -> None:
    """Put the front the pick came from into the build's report (report.json), and render its report.html again."""
    import json

    from nasc.report import write

    artifact.report["search"] = {"trials": data["trials"], "rule": rule, "chosen": chosen["trial"],
                                 "quality": quality, "points": data["points"]}
    (artifact.out / "report.json").write_text(json.dumps(artifact.report, indent=2) + "\n")
    write(artifact.out, artifact.report)


def _nothing_feasible(study: Any, problem: Problem) -> str:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "values" in t.user_attrs]
    if not done:
        errors = [t.user_attrs["error"] for t in study.trials if "error" in t.user_attrs]
        why = f"; the first error: {errors[0]}" if errors else ""
        return f"no trial of the search completed ({len(study.trials)} tried){why}"
    lows = {k: min(t.user_attrs["values"][k] for t in done) for k in problem.limits}
    reach = ", ".join(f"{k} {quick_str(v, 'B' if k.endswith('bytes') else 'ms')} (limit "
                      f"{quick_str(problem.limits[k], 'B' if k.endswith('bytes') else 'ms')})" for k, v in lows.items())
    larger = "raise --latency-budget" if set(problem.limits) == {"latency_ms"} else "choose a board with more memory"
    return (f"no point of the {len(done)} measured meets the budgets of {problem.target.text}; the smallest values "
            f"reached: {reach}. Widen the space (e.g. lower prune{{macs=...}}, int4 in quant-policy{{bits=8|8,4}}) "
            f"or {larger}")


class _progress:
    """A rich progress bar of the trials with the best feasible quality and the front size (on a terminal)."""

    def __init__(self, total: int, problem: Problem, show: bool | None) -> None:
        self.total, self.problem = total, problem
        self.show = sys.stderr.isatty() if show is None else show
        self.bar: Any = None

    def __enter__(self) -> Any:
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[info]}"), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("trials", total=self.total, info="")
        return self.tick

    def tick(self, study: Any, trial: Any) -> None:
        q = self.problem.quality
        vals = trial.user_attrs.get("values")
        state = "failed" if vals is None else ("cached" if trial.user_attrs.get("cached") else
                                               "screened (predicted)" if vals.get("predicted") else "built")
        figures = trial.user_attrs.get("error", "") if vals is None else ", ".join(
            f"{o.name} {quick_str(vals[o.name], o.unit)}" for o in self.problem.objectives)
        feasible = "" if vals is None or trial.user_attrs.get("feasible", True) else " (over budget)"
        self.problem.log(f"trial {trial.number} {state}: {figures}{feasible}: {trial.user_attrs.get('pipeline')}")
        if self.bar is not None:
            best = front(study, self.problem)
            top = max((t.user_attrs["values"][q] for t in best), default=float("nan"))
            self.bar.update(self.task, advance=1, info=f"best feasible {q} {top:.4f}, front {len(best)}")

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
