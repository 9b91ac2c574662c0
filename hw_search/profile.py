"""``nasc profile``: build a model for a target, time each kernel and the whole model, add it to the dataset.

And ``nasc profile --corpus``: the same for every model of the corpus (corpus.py) within a time budget, so that a
new machine gets a working cost model with two commands (this, then ``nasc predict --train``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasc.errors import Error, UsageError
from nasc.hw_search import kernel_tables, perfdata

#: a cpu profile times the whole model and then its kernels, up to this many times while the two disagree
#: (perfdata.STEADY_RATIO)
STEADY_TRIES = 3
#: ``$NASC_PERF_RECORD=0``: compile, bench and search do not add their measurements to the dataset
RECORD_ENV = "NASC_PERF_RECORD"
#: Timing rounds of a cpu profile; the sample keeps the least disturbed (CpuTiming)
ROUNDS = 3
#: Seconds ``nasc profile --corpus`` spends at most on ``cpu`` by default (about 15 minutes with the last build).
CORPUS_BUDGET_S = 780.0


def profile(model: Any, target: str = "cpu", *, passes: str = "simplify,fuse", calib: Any = None,
            family: str | None = None, name: str | None = None, input_shapes: Mapping[str, Any] | None = None,
            repeat: int = 30, root: Path | None = None, seed: int = 0, rounds: int = ROUNDS) -> dict[str, Any]:
    """Build ``model`` with ``passes`` for ``target`` and measure it whole and kernel by kernel on one input (the
    first calibration sample, else seeded random): on cpu the time of each kernel in the running build (the least
    disturbed of ``rounds`` timing rounds, :class:`CpuTiming`), on ``mcu:BOARD`` each step's instructions on QEMU.
    Appends the sample to the target's dataset and returns it with ``dataset`` (its path) added."""
    tgt = kernel_tables.resolve(target, here=True)
    measured = _prepare(model, tgt, target, passes, calib, input_shapes, repeat, seed)
    if isinstance(measured, CpuTiming):
        for _ in range(rounds - 1):
            measured.time_round()
    return _finish(measured.sample(), model, family, name, root)


def _finish(sample: dict[str, Any], model: Any, family: str | None, name: str | None, root: Path | None
            ) -> dict[str, Any]:
    label = name or (Path(model).stem if isinstance(model, str | os.PathLike) else "model")
    sample.update(model=label, family=family or label)
    sample["dataset"] = str(perfdata.append(sample, root))
    return sample


def _prepare(model: Any, tgt: Any, target: str, passes: str, calib: Any, input_shapes: Mapping[str, Any] | None,
             repeat: int, seed: int) -> McuResult | CpuTiming:
    """The build of ``model`` for ``tgt``: on mcu its measured sample (:class:`McuResult`), on cpu a
    :class:`CpuTiming` that has timed one round. The build folder is gone when this returns."""
    import nasc
    from nasc.backends import fidelity

    graph = nasc.load(model, input_shapes)
    feeds = (fidelity.load_calibration(str(calib), graph) if isinstance(calib, str | os.PathLike)
             else fidelity.random_inputs(graph, seed, 8))
    tmp = Path(tempfile.mkdtemp(prefix="nasc-profile-"))
    try:
        if tgt.kind == "mcu":
            return McuResult(_profile_mcu(graph, tgt, feeds, passes, tmp, seed))
        return CpuTiming.build(model, target, feeds, passes, input_shapes, tmp, repeat, seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class McuResult:
    """An mcu build's sample: instruction counts are exact, one run is the measurement."""

    measured: dict[str, Any]

    def sample(self) -> dict[str, Any]:
        return self.measured


@dataclass
class CpuTiming:
    """A loaded cpu build and its timing rounds. A round times the whole model, then each kernel, again while the
    two disagree (the machine was busy, STEADY_TRIES). The sample keeps, of every round, the lowest whole-model
    time and each kernel's lowest time: the least disturbed measurement. On a shared machine the median of one
    round moves by 5-30% when a neighbour's burst falls on it (a memory-bound MiniLM most); rounds minutes apart
    (``nasc profile --corpus`` times each model again after the others) rarely all fall on one."""

    built: Any
    feed: Mapping[str, Any]
    kernels_doc: dict[str, Any]
    passes: str
    macs: int
    repeat: int
    rounds: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)
    seconds: float = 0.0  # the time the rounds took

    @classmethod
    def build(cls, model: Any, target: str, feeds: list[dict[str, Any]], passes: str,
              input_shapes: Mapping[str, Any] | None, tmp: Path, repeat: int, seed: int) -> CpuTiming:
        import nasc
        from nasc.runtime import load as load_compiled

        art = nasc.compile(model, target, tmp / "build", input_shapes=input_shapes, passes=passes, calib=feeds,
                           seed=seed, verify=False, measure_latency=False)
        doc = perfdata.kernel_doc(art.out)
        if doc is None:
            raise Error(f"the cpu build in {art.out} has no kernel table (kernels.json)")
        # the loaded library stays mapped once its folder is removed
        timing = cls(load_compiled(art.out), feeds[0], doc, passes, int(art.report["summary"]["macs"]), repeat)
        timing.time_round()
        return timing

    def time_round(self) -> None:
        t0 = time.perf_counter()
        best: tuple[float, float, list[dict[str, Any]]] | None = None
        for _ in range(STEADY_TRIES):
            latency = self.built.latency_ms(self.feed, repeat=self.repeat, warmup=3, min_seconds=0.2)
            kernels = self.built.kernel_ms(self.feed, repeat=max(5, self.repeat // 2))
            off = perfdata.disagreement(latency, sum(k["ms"] for k in kernels), sum(k["calls"] for k in kernels))
            if best is None or off < best[0]:
                best = (off, latency, kernels)
            if off < perfdata.STEADY_RATIO:
                break
        assert best is not None
        self.rounds.append(best[1:])
        self.seconds += time.perf_counter() - t0

    def sample(self) -> dict[str, Any]:
        latency = min(r[0] for r in self.rounds)
        lowest: dict[str, dict[str, Any]] = {}
        for _, kernels in self.rounds:
            for k in kernels:
                if k["kernel"] not in lowest or k["ms"] < lowest[k["kernel"]]["ms"]:
                    lowest[k["kernel"]] = k
        # the MACs of the graph as built (after pruning, say)
        sample = perfdata.sample_of(self.kernels_doc, model="", family="", pipeline=self.passes, latency_ms=latency,
                                    kernel_ms=list(lowest.values()), macs=self.macs)
        sample["rounds"] = len(self.rounds)
        # each round's whole-model time: how far apart the same build times minutes apart (the measurement's own
        # repeatability, which bounds any prediction's: tools/bench_predictor.py)
        sample["latency_rounds"] = [r[0] for r in self.rounds]
        return sample


def _profile_mcu(graph: Any, tgt: Any, feeds: list[dict[str, Any]], passes: str, tmp: Path, seed: int
                 ) -> dict[str, Any]:
    import nasc
    from nasc.backends.mcu.build import build_mcu
    from nasc.backends.mcu.verify import step_instructions
    from nasc.backends.tvm.kernels import FEATURES_VERSION

    g = nasc.optimize(graph, passes, feeds, tgt.text, seed=seed)
    m = build_mcu(g, tgt.board, tmp, model="profile", pipeline=passes, budget_check=False, profile=True)
    total, per_step = step_instructions(tmp, m.inputs, feeds[0])
    table = kernel_tables.mcu_table(m.kernels, m.plan.order, per_step)
    sample = perfdata.make_sample(target_key=kernel_tables.key(tgt), model="", family="", latency_ms=total,
                                  kernels=[{k: v for k, v in r.items() if k != "cost"} for r in table],
                                  kernel_ms=table, features_version=FEATURES_VERSION, pipeline=passes,
                                  unit="instructions")
    sample["macs"] = int(g.summary()["macs"])
    return sample


def profile_corpus(target: str = "cpu", *, budget_s: float | None = None, root: Path | None = None,
                   only: set[str] | None = None, log: Callable[[str], None] | None = None,
                   cache: Path | None = None) -> list[dict[str, Any]]:
    """Profile the corpus models (``only``: those families) round-robin by family until ``budget_s`` has passed.
    The exported ONNX files are kept in ``cache`` (default: under the dataset folder) for the next run."""
    from nasc.hw_search import corpus

    tgt = kernel_tables.resolve(target, here=True)
    budget_s = CORPUS_BUDGET_S if budget_s is None else budget_s
    log = log or (lambda _m: None)
    entries = [e for e in corpus.entries(tgt.kind) if only is None or e.family in only]
    if only is not None and not entries:
        raise UsageError(f"no corpus family among {sorted(only)}; families: {', '.join(corpus.families(corpus.entries()))}")
    models_dir = cache or perfdata.target_dir(kernel_tables.key(tgt), root) / "corpus"
    models_dir.mkdir(parents=True, exist_ok=True)
    built: list[tuple[corpus.Entry, Any]] = []
    t0 = time.perf_counter()
    timing_s = 0.0  # what the first timing rounds took: the later rounds take as long again each
    try:
        for e in corpus.round_robin(entries):
            if time.perf_counter() - t0 + (ROUNDS - 1) * timing_s > budget_s:
                log(f"time budget of {budget_s:.0f} s reached: {len(built)} of {len(entries)} corpus models built")
                break
            t1 = time.perf_counter()
            try:
                path = e.make(models_dir / f"{e.name}.onnx")
                m = _prepare(path, tgt, target, e.passes, None, None, 30, 0)
            except Exception as exc:  # one model that does not export or build is reported, the corpus goes on
                log(f"{e.label}: skipped ({type(exc).__name__}: {exc})")
                continue
            built.append((e, m))
            if isinstance(m, CpuTiming):
                timing_s += m.seconds
            s = m.sample()
            log(f"[{len(built)}/{len(entries)}] {e.label}: {_cost(s)}, {len(s['kernels'])} kernels "
                f"({time.perf_counter() - t1:.1f} s)")
        timings = [m for _, m in built if isinstance(m, CpuTiming)]
        for r in range(1, ROUNDS if timings else 1):  # each model again, minutes after its first round
            t1 = time.perf_counter()
            for m in timings:
                m.time_round()
            log(f"timing round {r + 1} of {ROUNDS}: {len(timings)} models ({time.perf_counter() - t1:.1f} s)")
    finally:  # what was built is kept, also when the run is stopped
        done = [_finish(m.sample(), "", e.family, e.label, root) for e, m in built]
    return done


def _cost(s: Mapping[str, Any]) -> str:
    return f"{s['latency']:.3f} ms" if s["unit"] == "ms" else f"{s['latency']:,.0f} {s['unit']}"


def record_build(build_dir: Path, feed: Mapping[str, Any], latency_ms: float, *, model: str, pipeline: str,
                 macs: int | None = None, kernel_ms: list[dict[str, Any]] | None = None,
                 warn: Callable[[str], None] | None = None) -> Path | None:
    """Add what a compile, bench or search measured of the cpu build in ``build_dir`` to its target's dataset
    (timing its kernels on ``feed`` when ``kernel_ms`` is not given). A dataset that cannot be written is a
    warning, not a failed build."""
    if not (build_dir / "kernels.json").is_file():  # a gpu build, or a cross-built one: nothing to add
        return None
    if os.environ.get(RECORD_ENV, "1") == "0":
        return None
    try:
        if kernel_ms is None:
            from nasc.runtime import load as load_compiled

            kernel_ms = load_compiled(build_dir).kernel_ms(feed, repeat=10, warmup=2)
        return perfdata.record(build_dir, model=model, family=model, pipeline=pipeline, latency_ms=latency_ms,
                               kernel_ms=kernel_ms, macs=macs)
    except OSError as exc:
        if warn is not None:
            warn(f"the cost model's dataset was not updated: {exc}")
        return None
