"""``nasc search``: an Optuna study over a pipeline space, each trial built with the real passes and measured.

Objectives: the quality on a held-out slice of the calibration data (``accuracy`` with labels, else ``fidelity``,
the cosine of the outputs to the original model's; maximized) and the target's costs (minimized): on ``mcu:*``
the flash (code and weights) and the instruction count of one inference under QEMU ``-icount`` of the built C
project, and the planner's exact arena (``build=False``: the planner's arena and weight bytes only, no C
compiled); on ``cpu`` the compiled artifact's latency and the weight bytes; elsewhere the weight bytes and MACs. The board's flash and SRAM (and ``latency_budget_ms``) are constraints:
an infeasible trial is recorded with its violation and never joins the front. Trials whose pipeline was
already measured reuse its figures (the cache is the study itself, so it holds across workers and resumes).
Storage defaults to SQLite in the output directory; a killed worker's running trial is failed by the next
worker's heartbeat check and retried with the same parameters.
"""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasc.errors import Error, UsageError
from nasc.hw_search.space import Space
from nasc.ir.core import Graph

SAMPLERS = ("nsga2", "tpe", "random", "grid")
#: timing repeats of a cpu latency during the search (the front is re-measured with the defaults of median_ms)
QUICK_REPEATS = 5
#: At the end of a cpu search, the built trials whose quick latency is within this share of joining the front are
#: timed again with the front, properly and in SETTLE_ROUNDS rounds, and the front is decided on those timings
SETTLE_MARGIN = 0.15
SETTLE_ROUNDS = 3
#: The latency a screened trial's (calibrated) prediction is credited before it is judged: about the cost model's
#: error on variants of one model once calibrated (docs/costmodel.md, "Search")
SCREEN_MARGIN = 0.15
DEFAULT_STUDY = "nasc-search"
#: seconds between a running trial's heartbeats ($NASC_SEARCH_HEARTBEAT_S); a trial silent for three of them is
#: failed (and retried with its parameters) by the next worker that starts a trial
HEARTBEAT_S = 10


def _heartbeat() -> int:
    try:
        return max(1, int(os.environ.get("NASC_SEARCH_HEARTBEAT_S", HEARTBEAT_S)))
    except ValueError:
        raise UsageError("$NASC_SEARCH_HEARTBEAT_S must be a whole number of seconds") from None


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "maximize" or "minimize"
    unit: str = ""


@dataclass
class Problem:
    """What every trial of one search shares: the model, its target, the data split and the objectives."""

    model: Any
    graph: Graph
    target: Any  # nasc.backends.targets.Target
    space: Space
    fit: list[dict[str, np.ndarray]]
    fit_labels: np.ndarray | None
    held: list[dict[str, np.ndarray]]
    held_labels: np.ndarray | None
    reference: list[list[np.ndarray]]
    label_output: int
    objectives: list[Objective]
    limits: dict[str, float]  # objective name -> the most it may be (constraints)
    seed: int = 0
    build: bool = True  # measure real builds (cpu latency; mcu flash and instructions), not only the planner
    log: Callable[[str], None] = field(default=lambda _m: None)
    # cpu: the target's cost model (hw_search/predictor.py); a trial whose predicted latency, less ``margin``,
    # cannot reach the front of the trials measured so far is not built (its figures say "predicted")
    screen: Any = None
    margin: float = SCREEN_MARGIN

    @property
    def quality(self) -> str:
        return self.objectives[0].name


def objectives_for(target: Any, labelled: bool, build: bool = True) -> list[Objective]:
    """Quality first, then the target's costs; ``build=False`` (mcu) keeps to what the planner gives exactly
    without compiling C."""
    quality = Objective("accuracy" if labelled else "fidelity", "maximize")
    if target.kind == "mcu" and build:
        return [quality, Objective("flash_bytes", "minimize", "B"), Objective("arena_bytes", "minimize", "B"),
                Objective("instructions", "minimize")]
    if target.kind == "mcu":
        return [quality, Objective("weights_bytes", "minimize", "B"), Objective("arena_bytes", "minimize", "B")]
    if target.kind == "cpu":
        return [quality, Objective("latency_ms", "minimize", "ms"), Objective("weights_bytes", "minimize", "B")]
    return [quality, Objective("weights_bytes", "minimize", "B"), Objective("macs", "minimize")]


def limits_for(target: Any, latency_budget_ms: float | None, build: bool = True) -> dict[str, float]:
    b = target.budgets
    out: dict[str, float] = {}
    if b.flash_bytes is not None:
        out["flash_bytes" if build else "weights_bytes"] = float(b.flash_bytes)
    if b.sram_bytes is not None:
        out["arena_bytes"] = float(b.sram_bytes)
    if latency_budget_ms is not None:
        if target.kind != "cpu":
            raise UsageError(f"a latency budget needs a target whose latency nasc measures (cpu), not {target.text}")
        out["latency_ms"] = float(latency_budget_ms)
    return out


def candidate(problem: Problem, pipeline: str) -> Graph:
    """The graph a trial of ``pipeline`` measures: the passes run on the fit slice of the calibration data."""
    import nasc

    return nasc.optimize(problem.graph, pipeline, problem.fit, problem.target, seed=problem.seed,
                         labels=problem.fit_labels, label_output=problem.graph.outputs[problem.label_output].name)


def evaluate(problem: Problem, pipeline: str, measured: Sequence[Mapping[str, float]] = ()) -> dict[str, float]:
    """Build ``pipeline`` on the model and measure every objective (the figures of one trial). With a cost model
    (``problem.screen``) a point that the prediction (times :func:`calibration`) says cannot join the front of
    ``measured`` (the figures of the trials built so far) is not built: its latency is the predicted one and
    ``predicted`` is 1."""
    from nasc.backends import fidelity

    g = candidate(problem, pipeline)
    got = fidelity.run_graph(g, problem.held)
    values: dict[str, float] = {}
    if problem.held_labels is not None:
        k = problem.label_output
        pred = np.array([int(np.argmax(np.asarray(o[k]).reshape(-1))) for o in got])
        values["accuracy"] = float(np.mean(pred == problem.held_labels.reshape(-1)))
    values["fidelity"] = float(fidelity.compare(problem.reference, got)["cosine"])
    s = g.summary()
    values["weights_bytes"], values["macs"] = float(s["param_bytes"]), float(s["macs"])
    if problem.screen is not None:
        from nasc.hw_search.kernel_tables import planned

        raw = float(problem.screen.predict(planned(g, problem.target))["latency"])
        predicted = raw * calibration(measured)
        if not promising({**values, "latency_ms": predicted * (1 - problem.margin)}, measured, problem):
            return {**values, "latency_ms": predicted, "predicted": 1.0}
        values["latency_ms_predicted"] = raw
    values.update({k: float(v) for k, v in problem.target.measure(g, problem.held[0], QUICK_REPEATS,
                                                                  build=problem.build).items()})
    return values


def calibration(measured: Sequence[Mapping[str, float]]) -> float:
    """The factor the cost model's predictions are off by on this search's model: the median of measured over
    predicted latency of the trials built so far (1.0 before the first). The variants of one model share most
    of their kernels, so most of the model's error on one of them is a factor common to all (kept within 3x)."""
    ratios = [m["latency_ms"] / m["latency_ms_predicted"] for m in measured
              if m.get("latency_ms_predicted", 0) > 0 and m.get("latency_ms", 0) > 0]
    return float(np.clip(np.median(ratios), 1 / 3, 3)) if ratios else 1.0


def promising(values: Mapping[str, float], measured: Sequence[Mapping[str, float]], problem: Problem) -> bool:
    """Whether a point with (optimistic) ``values`` is within the limits and not dominated by a feasible
    ``measured`` point."""
    if not within(values, problem.limits):
        return False
    feasible = [m for m in measured if within(m, problem.limits)]
    return not dominated(values, feasible, problem.objectives)


def losses(values: Sequence[Mapping[str, float]], objectives: Sequence[Objective]) -> np.ndarray:
    """One row per point: each objective as a figure to minimise (a maximised one negated)."""
    return np.array([[(1.0 if o.direction == "minimize" else -1.0) * v[o.name] for o in objectives] for v in values])


def _dominated_by(me: np.ndarray, others: np.ndarray) -> bool:
    """Whether a row of ``others`` is at least as good as ``me`` on every objective and better on one."""
    return bool(np.any(np.all(others <= me, axis=1) & np.any(others < me, axis=1)))


def dominated(values: Mapping[str, float], others: Sequence[Mapping[str, float]],
              objectives: Sequence[Objective]) -> bool:
    """Whether one of ``others`` dominates ``values`` on ``objectives``."""
    return bool(others) and _dominated_by(losses([values], objectives)[0], losses(others, objectives))


def violations(values: Mapping[str, float], limits: Mapping[str, float]) -> dict[str, float]:
    """How far each limited figure is over its limit (<= 0: within)."""
    return {k: values[k] - lim for k, lim in limits.items() if k in values}


def within(values: Mapping[str, float], limits: Mapping[str, float]) -> bool:
    """Whether every limited figure of ``values`` is within its limit."""
    return all(v <= 0 for v in violations(values, limits).values())


def open_study(storage: str, name: str, problem: Problem, sampler: str, population: int, seed: int | None,
               log: Callable[[str], None]) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # nasc logs each trial itself
    rdb = _storage(storage)
    directions: list[Any] = [o.direction for o in problem.objectives]
    try:
        study = optuna.create_study(storage=rdb, study_name=name, directions=directions,
                                    sampler=make_sampler(sampler, problem.space, population, seed), load_if_exists=True)
    except ValueError as e:  # the stored study has other objectives (directions)
        raise UsageError(f"study '{name}' in {_redact(storage)} cannot be resumed with the objectives "
                         f"{[o.name for o in problem.objectives]}: {e}; resume it with the same arguments "
                         "(target, labels, --estimate-only) or name a new study (--study)") from None
    mine = {"space": problem.space.text, "target": problem.target.text,
            "objectives": [o.name for o in problem.objectives], "limits": problem.limits}
    attrs = _problem_attrs(study, list(mine))
    if attrs is None:  # a new study: ours (two workers starting together write the same, or one is told below)
        for k, v in mine.items():
            study.set_user_attr(k, v)
        attrs = _problem_attrs(study, list(mine))
        resumed = False
    else:
        resumed = True
    theirs = {k: (attrs or {}).get(k) for k in mine}
    if theirs != json.loads(json.dumps(mine)):
        diff = [k for k in mine if theirs.get(k) != json.loads(json.dumps(mine[k]))]
        raise UsageError(f"study '{name}' in {_redact(storage)} was started with another {', '.join(diff)} "
                         f"({', '.join(f'{k}={theirs[k]!r}' for k in diff)}); resume it with the same arguments or "
                         "name a new study (--study)")
    if resumed:
        log(f"resuming study '{name}': {len(study.trials)} trials so far")
    return study


#: how long a worker waits for the study's description that another worker is writing (one attribute at a time)
ATTRS_WAIT_S = 30.0


def _problem_attrs(study: Any, keys: list[str]) -> dict[str, Any] | None:
    """The study's stored description (``keys``), None when it has none yet. A description that another worker
    is still writing (some keys present, not all) is waited for, then read whole."""
    import time

    deadline = time.monotonic() + ATTRS_WAIT_S
    while True:
        attrs = study.user_attrs
        if not any(k in attrs for k in keys):
            return None
        if all(k in attrs for k in keys) or time.monotonic() > deadline:
            return dict(attrs)
        time.sleep(0.2)


def _storage(url: str) -> Any:
    import optuna
    import sqlalchemy.exc

    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5 (and since 2.8)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        url, heartbeat_interval=_heartbeat(), grace_period=3 * _heartbeat(),
                        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                        engine_kwargs={"pool_pre_ping": True})
            except sqlalchemy.exc.IntegrityError:  # workers starting together both created the tables: again
                if attempt == 4:
                    raise
                time.sleep(0.5 + random.random())
        raise AssertionError("unreachable")
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"cannot open the search storage {_redact(url)}: {first}; check the URL, that the server "
                         "runs and accepts this user (e.g. postgresql://user:pass@host:5432/db), or leave --storage "
                         "out for a SQLite file in the output directory") from None


def _redact(url: str) -> str:
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def make_sampler(kind: str, space: Space, population: int, seed: int | None) -> Any:
    import optuna

    # the budgets reach the samplers as each trial's constraints (Trial.set_constraint: <= 0 is feasible)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if kind == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=population)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        if space.size() > 100_000:
            raise UsageError(f"the space has {space.size():,} points, too many for --sampler grid; use nsga2 or tpe")
        grid = {d.name: d.values() for d in space.dims()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise UsageError(f"unknown sampler {kind!r}; samplers: {', '.join(SAMPLERS)}")


def run_trials(study: Any, problem: Problem, n_trials: int, timeout: float | None, progress: Any) -> None:
    """Run ``n_trials`` trials of ``study`` in this process (one worker)."""

    def objective(trial: Any) -> Sequence[float]:
        pipeline, _ = problem.space.sample(trial)
        trial.set_user_attr("pipeline", pipeline)
        cached = _cached(study, pipeline, trial.number)
        t0 = time.perf_counter()
        if cached is not None:
            values = cached
            trial.set_user_attr("cached", True)
        else:
            try:
                values = evaluate(problem, pipeline, _measured(study) if problem.screen is not None else ())
            except Error as e:  # a point the passes refuse (e.g. blocks that do not divide the layers)
                msg = " ".join(str(e).split())[:500]
                trial.set_user_attr("error", msg)
                raise
        trial.set_user_attr("values", values)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        viol = violations(values, problem.limits)
        trial.set_user_attr("violations", viol)
        for key, over in viol.items():
            trial.set_constraint(key, over)
        trial.set_user_attr("feasible", all(v <= 0 for v in viol.values()))
        return [values[o.name] for o in problem.objectives]

    def after(study: Any, trial: Any) -> None:
        progress(study, trial)

    study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(Error,), callbacks=[after],
                   gc_after_trial=True)


def _measured(study: Any) -> list[dict[str, float]]:
    """The figures of the study's trials that were built and measured (not screened out by the cost model)."""
    import optuna

    return [dict(t.user_attrs["values"]) for t in study.get_trials(deepcopy=False,
                                                                   states=(optuna.trial.TrialState.COMPLETE,))
            if "values" in t.user_attrs and not t.user_attrs["values"].get("predicted")]


def _cached(study: Any, pipeline: str, number: int) -> dict[str, float] | None:
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number != number and t.user_attrs.get("pipeline") == pipeline and "values" in t.user_attrs:
            return dict(t.user_attrs["values"])
    return None


def front(study: Any, problem: Problem) -> list[Any]:
    """The feasible Pareto-optimal trials among those built (a screened-out trial's figures are a prediction: it
    is not a point to offer, nor one that hides a built point), one per set of figures, best quality first."""
    seen: set[tuple[float, ...]] = set()
    built = []
    for t in sorted(_built(study), key=lambda t: t.number):
        key = tuple(t.user_attrs["values"][o.name] for o in problem.objectives)
        if t.user_attrs.get("feasible", True) and key not in seen:  # a pipeline measured twice: the first one
            seen.add(key)
            built.append(t)
    keep = nondominated([t.user_attrs["values"] for t in built], problem.objectives)
    q = problem.objectives[0]
    return sorted((built[i] for i in keep), key=lambda t: -t.user_attrs["values"][q.name])


def nondominated(values: Sequence[Mapping[str, float]], objectives: Sequence[Objective]) -> list[int]:
    """The indices of ``values`` that no other one dominates on ``objectives``."""
    if not values:
        return []
    m = losses(values, objectives)
    return [i for i, row in enumerate(m) if not _dominated_by(row, m)]


def settled_front(study: Any, problem: Problem) -> list[tuple[Any, dict[str, float]]]:
    """The front decided on proper timings: (trial, figures) of each point, best quality first. A search times
    each trial briefly (QUICK_REPEATS), so a point within a few percent of another joins the front or not by
    chance. On cpu, the front's trials and every built trial within SETTLE_MARGIN of joining it are built again
    and timed in SETTLE_ROUNDS rounds (:meth:`TvmTarget.measure_all`); each keeps its lowest median as
    ``latency_ms`` (the quick one as ``latency_ms_search``), and the front is taken again among them. Elsewhere
    (and when a re-timing gives nothing) the front is the trials' own figures."""
    best = front(study, problem)
    if problem.target.kind != "cpu" or not problem.build or not best:
        return [(t, dict(t.user_attrs["values"])) for t in best]
    front_values = [t.user_attrs["values"] for t in best]
    picked, seen = list(best), {t.user_attrs["pipeline"] for t in best}
    for t in sorted(_built(study), key=lambda t: t.number):
        v, pipe = t.user_attrs["values"], t.user_attrs["pipeline"]
        if pipe in seen:  # the front's own, or a repeat (an infeasible one: promising says if only its latency was)
            continue
        if promising({**v, "latency_ms": v["latency_ms"] * (1 - SETTLE_MARGIN)}, front_values, problem):
            picked.append(t)
            seen.add(pipe)
    problem.log(f"timing the front's {len(best)} points and {len(picked) - len(best)} close to it again, in "
                f"{SETTLE_ROUNDS} rounds")
    timed = problem.target.measure_all([candidate(problem, t.user_attrs["pipeline"]) for t in picked],
                                       problem.held[0], rounds=SETTLE_ROUNDS)
    points = []
    for t, got in zip(picked, timed):
        v = dict(t.user_attrs["values"])
        if got:
            v["latency_ms_search"] = v["latency_ms"]
            v.update(got)
        if within(v, problem.limits):
            points.append((t, v))
    keep = nondominated([v for _, v in points], problem.objectives)
    return sorted((points[i] for i in keep), key=lambda p: -p[1][problem.quality])


def _built(study: Any) -> list[Any]:
    """The complete trials that were built and measured (not screened out by the cost model)."""
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "values" in t.user_attrs
            and not t.user_attrs["values"].get("predicted")]


def split(feeds: list[dict[str, np.ndarray]], labels: np.ndarray | None, holdout: float, seed: int
          ) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None, list[dict[str, np.ndarray]], np.ndarray | None]:
    """(fit feeds, their labels, held-out feeds, their labels): a seeded ``holdout`` share is held out."""
    if not 0 < holdout < 1:
        raise UsageError(f"holdout must be between 0 and 1 (a share of the calibration samples), got {holdout}")
    if len(feeds) < 2:
        raise UsageError(f"search needs at least 2 calibration samples (some to fit, some to measure on); got "
                         f"{len(feeds)}")
    order = np.random.default_rng(seed).permutation(len(feeds))
    n_held = min(len(feeds) - 1, max(1, round(len(feeds) * holdout)))
    held, fit = sorted(order[:n_held]), sorted(order[n_held:])
    lab = None if labels is None else np.asarray(labels)
    return ([feeds[i] for i in fit], None if lab is None else lab[fit],
            [feeds[i] for i in held], None if lab is None else lab[held])


def save_feeds(path: Path, feeds: list[dict[str, np.ndarray]], labels: np.ndarray | None) -> None:
    """An .npz that ``nasc compile --calib`` reads back into the same feeds (and labels)."""
    arrays = {k: np.stack([np.asarray(f[k]) for f in feeds]) for k in feeds[0]}
    if labels is not None:
        arrays["label"] = np.asarray(labels)
    np.savez(path, **arrays)  # type: ignore[arg-type]


def quick_str(v: float, unit: str) -> str:
    if unit == "B":
        return f"{v / 1024:.1f} KB" if v < 1024**2 else f"{v / 1024**2:.2f} MB"
    if unit == "ms":
        return f"{v:.3f} ms"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} M"
    return f"{v:.4f}" if not float(v).is_integer() else f"{int(v)}"


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'search.db').resolve()}"
