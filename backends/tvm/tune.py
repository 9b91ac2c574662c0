"""Autotuning with MetaSchedule: an on-disk database per target, reused across builds and models.

Tasks (fused kernels) already in the database are not tuned again: a second
build of the same model, or of another model that shares kernels, spends no
trials on them. Before tuning a kernel, nasc's default schedule of it is
measured the same way and stored as a record, so the build takes the faster of
the two for every kernel: a small budget cannot make a kernel slower than the
untuned build. Records are appended as they are measured, so interrupting
tuning keeps what was found. Measurement runs locally, or on devices registered
with TVM's RPC tracker (TVM's own RPC; nasc writes no transport).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from nasc.errors import UsageError


def default_db_dir(target_key: str) -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nasc" / "tuning" / target_key


@dataclass(frozen=True)
class RpcConfig:
    tracker_host: str
    tracker_port: int
    key: str

    @classmethod
    def parse(cls, tracker: str, key: str | None) -> RpcConfig:
        host, sep, port = tracker.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise UsageError(f"--rpc-tracker {tracker!r}: expected HOST:PORT")
        if not key:
            raise UsageError("--rpc-tracker needs --rpc-key, the key the devices registered with")
        return cls(host, int(port), key)


def _build_module(mod: tvm.IRModule, target: tvm.target.Target, _params: Any) -> Any:
    """Candidate builder: the stock one without its import of tensor intrinsics (20-40 s per fresh worker)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def open_database(db_dir: Path) -> ms.database.JSONDatabase:
    """The JSON database in ``db_dir``, with the x86 integer intrinsics registered: its records of integer
    matmuls tensorize with them by name."""
    from nasc.backends.tvm.x86_int8 import register_intrinsics

    register_intrinsics()
    db_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=str(db_dir))


def tune(fused: tvm.IRModule, target: tvm.target.Target, trials: int, db_dir: Path, rpc: RpcConfig | None = None,
         log: Any = None) -> dict[str, Any]:
    """Tune the kernels of a legalized+fused Relax module that the database lacks; returns what was done."""
    log = log or (lambda _m: None)
    database = open_database(db_dir)
    tasks = ms.relax_integration.extract_tasks(fused, target)
    todo = [t for t in tasks if not database.has_workload(t.dispatched[0])]
    facts: dict[str, Any] = {"database": str(db_dir), "tasks": len(tasks), "reused": len(tasks) - len(todo),
                             "tuned": len(todo), "trials": 0, "default_records": 0}
    if not todo or trials <= 0:
        return facts
    from nasc.runtime import use_all_cores

    use_all_cores()  # before the runner's workers start: candidates run with the threads the build will use
    work_dir = str(db_dir / "logs")
    with _meta_schedule_logging():
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(todo, work_dir)
    runner: Any = ms.runner.LocalRunner()
    if rpc is not None:
        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=rpc.tracker_host, tracker_port=rpc.tracker_port,
                                           tracker_key=rpc.key, session_timeout_sec=60),
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50))
    builder = ms.builder.LocalBuilder(f_build=_build_module, timeout_sec=60)
    facts["default_records"] = commit_default_schedules([t.dispatched[0] for t in todo], target, database,
                                                        builder, runner)
    progress = _Progress(trials, log)
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), progress]
    try:
        ms.relax_integration.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=trials,
            num_trials_per_iter=min(64, max(8, trials // max(len(todo), 1))),
            builder=builder, runner=runner, database=database, measure_callbacks=callbacks)
    finally:
        progress.close()
    facts["trials"] = progress.done
    return facts


def commit_default_schedules(kernels: list[tvm.IRModule], target: tvm.target.Target, database: Any, builder: Any,
                             runner: Any) -> int:
    """Build and measure nasc's default schedule of each kernel (``IRModule`` with a ``main`` PrimFunc) with
    the tuning ``builder`` and ``runner``, and commit it to ``database`` as a tuning record (its trace replays
    the template). Returns how many were committed; kernels no template fits, or that fail to build or run,
    get none."""
    from nasc.backends.tvm.schedules import default_schedule

    scheduled = [(mod, sch) for mod in kernels if (sch := default_schedule(mod, target)[0]) is not None]
    if not scheduled:
        return 0
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch in scheduled])
    device = "cpu" if target.kind.name == "llvm" else target.kind.name
    inputs, kept = [], []
    for (mod, sch), b in zip(scheduled, built, strict=True):
        if b.error_msg is None:
            args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
            inputs.append(ms.runner.RunnerInput(b.artifact_path, device, args_info))
            kept.append((mod, sch, args_info))
    # measured twice, the faster run kept: the first run in a fresh runner worker also pays for starting its
    # thread pool (a 0.16 ms matmul measured 0.46 ms), which MetaSchedule's later candidates do not
    runs = [[f.result() for f in runner.run(inputs)] for _ in range(2)]
    committed = 0
    for (mod, sch, args_info), results in zip(kept, zip(*runs, strict=True), strict=True):
        ok = [r for r in results if r.error_msg is None]
        if ok:
            best = min(ok, key=lambda r: sum(float(t) for t in r.run_secs) / len(r.run_secs))
            database.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, database.commit_workload(mod), list(best.run_secs), target, args_info))
            committed += 1
    return committed


@contextlib.contextmanager
def _meta_schedule_logging() -> Iterator[None]:
    """MetaSchedule rebuilds its logging config from the handlers on its logger and fails on unnamed ones
    (which test runners and other libraries attach): detach those while it does, and keep its console
    quiet (the per-task logs still go to the database's logs/ folder)."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    foreign = [h for h in logger.handlers if not h.get_name()]
    for h in foreign:
        logger.removeHandler(h)
    try:
        yield
    finally:
        for h in foreign:
            logger.addHandler(h)
        for h in logger.handlers:
            if (h.get_name() or "").endswith(".console"):
                h.setLevel(logging.WARNING)


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """A rich progress bar over measured candidates."""

    def __init__(self, total: int, log: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.done = 0
        self._bar = Progress(TextColumn("tuning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             transient=True)
        self._task = self._bar.add_task("tuning", total=total)
        self._bar.start()

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any, builder_results: Any,
              runner_results: Any) -> None:
        self.done += len(measure_candidates)
        self._bar.update(self._task, completed=self.done)

    def close(self) -> None:
        self._bar.stop()
