"""nasc search on the digits CNN for an MCU board, in SQLite: the front, its reproduction, resuming, errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.backends import fidelity
from nasc.backends.mcu.boards import BOARDS
from nasc.backends.targets import McuTarget
from nasc.cli import main
from nasc.errors import UsageError

EXAMPLES = Path(nasc.__file__).parent / "examples"
MODEL = str(EXAMPLES / "digits_cnn.onnx")
CALIB = str(EXAMPLES / "digits_test.npz")
TARGET = "mcu:stm32f411"
SPACE = "simplify,fuse,prune?{macs=0.6..1.0/0.2 reconstruct=true},quant-policy{bits=8|8,4 flash=4KB..9KB},quantize"


def _optuna_trials(out: Path) -> list:
    import optuna

    study = optuna.load_study(study_name="nasc-search", storage=f"sqlite:///{out / 'search.db'}")
    return study.get_trials(deepcopy=False)


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "digits"
    assert main(["search", MODEL, "--target", TARGET, "-o", str(out), "--calib", CALIB, "--space", SPACE,
                 "--trials", "6", "--sampler", "tpe", "--population", "3", "--estimate-only"]) == 0
    return out


def test_the_front_is_written_and_every_point_fits_the_board(searched: Path) -> None:
    data = json.loads((searched / "pareto.json").read_text())
    assert data["trials"] == 6 and data["complete"] + data["failed"] == 6
    assert data["objectives"] == {"accuracy": "maximize", "weights_bytes": "minimize", "arena_bytes": "minimize"}
    board = BOARDS["stm32f411"]
    assert data["limits"] == {"weights_bytes": board.flash_bytes, "arena_bytes": board.sram_bytes}
    assert data["points"]
    for p in data["points"]:
        assert p["feasible"] and p["values"]["arena_bytes"] <= board.sram_bytes
        assert 0 <= p["values"]["accuracy"] <= 1
    accs = [p["values"]["accuracy"] for p in data["points"]]
    assert accs == sorted(accs, reverse=True)
    png = (searched / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "| trial | accuracy | weights_bytes | arena_bytes |" in (searched / "pareto.md").read_text()


def test_each_front_point_reproduces_with_its_pipeline(searched: Path, tmp_path: Path) -> None:
    data = json.loads((searched / "pareto.json").read_text())
    g0 = nasc.load(MODEL)
    fit = fidelity.load_calibration(str(searched / "calib_fit.npz"), g0)
    with np.load(searched / "calib_fit.npz") as d:
        fit_labels = d["label"]
    held = fidelity.load_calibration(str(searched / "calib_heldout.npz"), g0)
    with np.load(searched / "calib_heldout.npz") as d:
        held_labels = d["label"]
    assert len(fit) + len(held) == 360
    for p in data["points"]:
        g = nasc.optimize(g0, p["pipeline"], fit, TARGET, labels=fit_labels)
        acc = float(np.mean([np.argmax(o[0]) == y for o, y in zip(fidelity.run_graph(g, held), held_labels)]))
        assert acc == p["values"]["accuracy"]
        est = McuTarget(TARGET, board=BOARDS["stm32f411"]).estimate(g)
        assert (est["arena_bytes"], est["weights_bytes"]) == (p["values"]["arena_bytes"], p["values"]["weights_bytes"])
    # the compile command pareto.json gives builds the same figures
    first = data["points"][0]
    argv = shlex.split(first["compile"])[1:]
    argv[argv.index("-o") + 1] = str(tmp_path / "build")
    assert main([*argv, "--verify", "none"]) == 0
    report = json.loads((tmp_path / "build" / "report.json").read_text())
    assert report["arena_bytes"] == first["values"]["arena_bytes"]
    assert report["weights_bytes"] == first["values"]["weights_bytes"]


def test_a_second_run_adds_its_trials_and_reuses_measured_pipelines(searched: Path, capsys) -> None:
    assert main(["search", MODEL, "--target", TARGET, "-o", str(searched), "--calib", CALIB, "--space", SPACE,
                 "--trials", "3", "--sampler", "tpe", "--population", "3", "--estimate-only",
                 "--pick", "accuracy>=0.9 minimize=flash"]) == 0
    data = json.loads((searched / "pareto.json").read_text())
    assert data["trials"] == 9
    out = capsys.readouterr().out
    assert "picked trial" in out
    chosen = [p for p in data["points"] if p["values"]["accuracy"] >= 0.9]
    best = min(chosen, key=lambda p: p["values"]["weights_bytes"])
    report = json.loads((searched / "build" / "report.json").read_text())
    assert report["pipeline"] == best["pipeline"] and report["weights_bytes"] == best["values"]["weights_bytes"]
    # the pick's report carries the front it came from, and its page shows it
    assert report["search"]["chosen"] == best["trial"] and report["search"]["trials"] == 9
    assert report["search"]["points"] == data["points"]
    page = (searched / "build" / "report.html").read_text()
    assert 'data-section="search"' in page and 'data-plot="search-front"' in page


def test_a_killed_worker_loses_no_completed_trial(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    env = {**os.environ, "NASC_SEARCH_HEARTBEAT_S": "1"}
    cmd = [sys.executable, "-m", "nasc.cli", "search", MODEL, "--target", TARGET, "-o", str(out), "--calib", CALIB,
           "--space", SPACE, "--estimate-only", "--trials", "40", "--sampler", "random"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import optuna

    deadline = time.monotonic() + 240
    done: list = []
    while time.monotonic() < deadline:
        time.sleep(1)
        if (out / "search.db").exists():
            try:
                done = [t for t in _optuna_trials(out) if t.state == optuna.trial.TrialState.COMPLETE]
            except Exception:  # the study is being created
                continue
            if len(done) >= 2:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(done) >= 2, "the worker completed no trials in time"
    at_kill = _optuna_trials(out)
    before = {t.number: t.values for t in at_kill if t.state == optuna.trial.TrialState.COMPLETE}
    time.sleep(4)  # past the grace period of three heartbeats: the trial it was running is stale
    proc2 = subprocess.run([*cmd[:-4], "--trials", "2", "--sampler", "random"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert proc2.returncode == 0, proc2.stderr
    trials = _optuna_trials(out)
    after = {t.number: t.values for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert all(after.get(n) == v for n, v in before.items())  # every completed trial is still there
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    data = json.loads((out / "pareto.json").read_text())
    assert data["trials"] == len(trials) >= len(at_kill) + 2 and data["complete"] >= len(before)


def test_a_budget_no_point_meets_names_the_smallest_values(tmp_path: Path) -> None:
    tiny = McuTarget("mcu:tiny", board=dataclasses.replace(BOARDS["stm32f411"], sram_bytes=1000, name="tiny"))
    with pytest.raises(UsageError, match=r"no point of the 2 measured meets the budgets of mcu:tiny; the smallest "
                                         r"values reached: .*arena_bytes \d+\.\d KB \(limit 1\.0 KB\)"):
        nasc.search(MODEL, tiny, tmp_path / "tiny", space="simplify,fuse,prune?{macs=0.6..1.0/0.2}", calib=CALIB,
                    trials=2, sampler="grid", estimate_only=True)


def test_unreachable_storage_is_an_error_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    rc = main(["search", MODEL, "-o", str(out), "--calib", CALIB, "--space", "prune{macs=0.5..1.0}",
               "--storage", "postgresql://nasc:secret@127.0.0.1:1/nasc", "--trials", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot open the search storage postgresql://nasc:***@127.0.0.1:1/nasc" in err
    assert "secret" not in err and not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--space", "simplify,fuse"], "has nothing to search"),
    (["--space", "prune{macs=0.5..1.0}", "--label-output", "nope"], "is not an output of the model"),
    (["--space", "prune{macs=0.5..1.0}", "--pick", "speed>=3"], "no figure named 'speed'"),
    (["--space", "prune{macs=0.5..1.0}", "--latency-budget", "1"], "a latency budget needs"),
])
def test_bad_arguments_are_one_error_line(tmp_path: Path, capsys, argv, message) -> None:
    rc = main(["search", MODEL, "--target", TARGET, "-o", str(tmp_path / "o"), "--calib", CALIB, "--trials", "1",
               "--estimate-only", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before any trial: nothing written


def test_built_trials_count_instructions_under_qemu_and_reproduce(tmp_path: Path) -> None:
    """Without --estimate-only every mcu trial is a C build: flash with code, and one inference's instruction
    count under QEMU -icount, which a second build of the same point reproduces exactly."""
    out = tmp_path / "built"
    r = nasc.search(MODEL, TARGET, out, space="simplify,fuse,prune?{macs=0.8 reconstruct=true},quantize",
                    calib=CALIB, trials=2, sampler="grid", pick="accuracy>=0.5 minimize=instructions")
    assert list(r.data["objectives"]) == ["accuracy", "flash_bytes", "arena_bytes", "instructions"]
    assert r.data["limits"] == {"flash_bytes": BOARDS["stm32f411"].flash_bytes,
                                "arena_bytes": BOARDS["stm32f411"].sram_bytes}
    for p in r.points:
        v = p["values"]
        assert v["flash_bytes"] > v["weights_bytes"] > 0 and v["instructions"] > 100_000
        assert v["instructions"] % 40 == 0  # the MPS2 timer's 40-instruction tick
    pruned = [p for p in r.points if "prune" in p["pipeline"]]
    whole = [p for p in r.points if "prune" not in p["pipeline"]]
    if pruned and whole:
        assert pruned[0]["values"]["instructions"] < whole[0]["values"]["instructions"]
    chosen = r.picked
    assert chosen is not None
    g = nasc.optimize(nasc.load(MODEL), chosen["pipeline"],
                      fidelity.load_calibration(str(out / "calib_fit.npz"), nasc.load(MODEL)), TARGET,
                      labels=np.load(out / "calib_fit.npz")["label"])
    held = fidelity.load_calibration(str(out / "calib_heldout.npz"), g)
    again = McuTarget(TARGET, board=BOARDS["stm32f411"]).measure(g, held[0])
    assert again["instructions"] == chosen["values"]["instructions"]
    assert again["flash_bytes"] == chosen["values"]["flash_bytes"]
    assert r.artifact is not None and r.artifact.report["flash_bytes"] == chosen["values"]["flash_bytes"]


def test_a_cpu_search_times_the_compiled_trials_and_retimes_the_front(tmp_path: Path) -> None:
    r = nasc.search(MODEL, "cpu", tmp_path / "cpu", space="simplify,fuse,prune?{macs=0.7 reconstruct=true}",
                    calib=CALIB, trials=2, sampler="grid")
    assert list(r.data["objectives"]) == ["accuracy", "latency_ms", "weights_bytes"]
    assert r.data["limits"] == {}
    for p in r.points:
        v = p["values"]
        assert v["latency_ms"] > 0 and v["latency_ms_search"] > 0  # timed briefly per trial, then properly
    with pytest.raises(UsageError, match=r"latency_ms .* \(limit 0\.001 ms\)\..*raise --latency-budget"):
        nasc.search(MODEL, "cpu", tmp_path / "cpu2", space="simplify,fuse,prune?{macs=0.7 reconstruct=true}",
                    calib=CALIB, trials=1, sampler="grid", latency_budget_ms=0.001)


def test_the_cost_model_screens_trials_it_predicts_off_the_front(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    from nasc.hw_search import perfdata
    from nasc.hw_search.costmodel import train_target
    from nasc.hw_search.profile import profile

    monkeypatch.setenv(perfdata.DIR_ENV, str(tmp_path / "perf"))
    space = "simplify,fuse,prune?{macs=0.5..0.9/0.1}"
    with pytest.raises(UsageError, match="no cost model"):
        nasc.search(MODEL, "cpu", tmp_path / "none", space=space, calib=CALIB, trials=1, screen=True)
    for passes in ("simplify,fuse", "simplify,fuse,prune{macs=0.5}", "simplify,fuse,prune{macs=0.8}"):
        profile(MODEL, "cpu", passes=passes, repeat=10)
    train_target("cpu")
    r = nasc.search(MODEL, "cpu", tmp_path / "s", space=space, calib=CALIB, trials=6, sampler="random")
    trials = r.data["measured"]
    screened = [t for t in trials if t["values"].get("predicted")]
    built = [t for t in trials if not t["values"].get("predicted")]
    assert r.data["screened"] <= len(screened) and len(built) + len(screened) == len(trials)
    assert built and all(t["values"]["latency_ms_predicted"] > 0 for t in built)  # predicted, then measured
    assert r.points and not any(p["values"].get("predicted") for p in r.points)  # the front: built points only
    # a budget every prediction is over: no trial is built, and the search says none met the budget
    with pytest.raises(UsageError, match=r"no point of the \d+ measured meets the budgets"):
        nasc.search(MODEL, "cpu", tmp_path / "tight", space=space, calib=CALIB, trials=3, sampler="random",
                    latency_budget_ms=1e-6)
    study = optuna.load_study(study_name="nasc-search", storage=f"sqlite:///{tmp_path / 'tight' / 'search.db'}")
    values = [t.user_attrs["values"] for t in study.trials]
    assert len(values) == 3 and all(v.get("predicted") == 1.0 for v in values)
    assert nasc.search(MODEL, "cpu", tmp_path / "off", space=space, calib=CALIB, trials=1, sampler="random",
                       screen=False).data["screened"] == 0


def test_promising_points_are_within_budget_and_not_dominated() -> None:
    from nasc.hw_search.study import Objective, Problem, promising

    objectives = [Objective("accuracy", "maximize"), Objective("latency_ms", "minimize", "ms"),
                  Objective("weights_bytes", "minimize", "B")]
    problem = Problem(None, None, None, None, [], None, [], None, [], 0, objectives, {"latency_ms": 2.0})  # type: ignore[arg-type]
    measured = [{"accuracy": 0.9, "latency_ms": 1.0, "weights_bytes": 100.0},
                {"accuracy": 0.99, "latency_ms": 3.0, "weights_bytes": 100.0}]  # over budget: dominates nothing
    assert not promising({"accuracy": 0.9, "latency_ms": 1.5, "weights_bytes": 100.0}, measured, problem)
    assert promising({"accuracy": 0.95, "latency_ms": 1.5, "weights_bytes": 100.0}, measured, problem)
    assert promising({"accuracy": 0.8, "latency_ms": 0.5, "weights_bytes": 100.0}, measured, problem)
    assert not promising({"accuracy": 0.99, "latency_ms": 2.5, "weights_bytes": 50.0}, measured, problem)
    assert promising({"accuracy": 0.9, "latency_ms": 1.0, "weights_bytes": 100.0}, measured, problem)  # equal


def test_the_front_is_decided_on_timings_in_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cpu search times each trial briefly; at its end the front and the trials within SETTLE_MARGIN of it are
    timed again in rounds, and the front is taken again on those timings (a trial the quick timing put on it by
    chance leaves, one it kept off by chance joins; a screened-out trial is never offered)."""
    import optuna

    from nasc.hw_search import study as st

    objectives = [st.Objective("accuracy", "maximize"), st.Objective("latency_ms", "minimize", "ms"),
                  st.Objective("weights_bytes", "minimize", "B")]

    class Cpu:
        kind = "cpu"
        rounds = 0
        proper = {"a": 1.0, "b": 1.3, "c": 0.95, "d": 5.0}  # what the proper timings say

        def measure_all(self, graphs: list[str], feed: object, rounds: int = 1) -> list[dict[str, float]]:
            Cpu.rounds = rounds
            return [{"latency_ms": self.proper[g]} for g in graphs]

    problem = st.Problem(None, None, Cpu(), None, [], None, [{}], None, [], 0, objectives, {})  # type: ignore[arg-type]
    monkeypatch.setattr(st, "candidate", lambda _problem, pipeline: pipeline)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    quick = {"a": (0.9, 1.0, 100.0),  # on the front
             "b": (0.95, 1.2, 100.0),  # on the quick front; properly 1.3 ms
             "c": (0.9, 1.1, 100.0),  # 10% behind a: off the quick front, properly faster than a
             "d": (0.5, 5.0, 100.0),  # far behind: not timed again
             "e": (0.99, 0.1, 10.0)}  # screened out: never built
    for pipe, (acc, lat, wb) in quick.items():
        values = {"accuracy": acc, "latency_ms": lat, "weights_bytes": wb, **({"predicted": 1.0} if pipe == "e" else {})}
        study.add_trial(optuna.trial.create_trial(values=[acc, lat, wb], user_attrs={"pipeline": pipe, "values": values}))
    got = st.settled_front(study, problem)
    assert Cpu.rounds == st.SETTLE_ROUNDS
    assert [(t.user_attrs["pipeline"], v["latency_ms"], v["latency_ms_search"]) for t, v in got] == [
        ("b", 1.3, 1.2), ("c", 0.95, 1.1)]
    # under a 1 ms budget: b is over it once timed properly, and c (over it by its quick timing alone) is within
    problem.limits = {"latency_ms": 1.0}
    budget = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for pipe in ("a", "b", "c"):
        acc, lat, wb = quick[pipe]
        budget.add_trial(optuna.trial.create_trial(values=[acc, lat, wb], user_attrs={
            "pipeline": pipe, "values": {"accuracy": acc, "latency_ms": lat, "weights_bytes": wb},
            "feasible": lat <= 1.0}))
    got = st.settled_front(budget, problem)
    assert [(t.user_attrs["pipeline"], v["latency_ms"]) for t, v in got] == [("c", 0.95)]


def test_predictions_are_calibrated_on_the_trials_built_so_far() -> None:
    """The median of measured over predicted latency of the built trials scales the next prediction: the cost
    model's error on one model's variants is mostly one factor."""
    from nasc.hw_search.study import calibration

    assert calibration([]) == 1.0
    built = [{"latency_ms": 1.2, "latency_ms_predicted": 1.0}, {"latency_ms": 2.6, "latency_ms_predicted": 2.0},
             {"latency_ms": 0.5, "latency_ms_predicted": 0.5}, {"latency_ms": 0.7}]  # (a trial built unscreened)
    assert calibration(built) == pytest.approx(1.2)
    assert calibration([{"latency_ms": 10.0, "latency_ms_predicted": 1.0}]) == 3.0  # kept within 3x


def test_a_study_description_another_worker_is_writing_is_waited_for() -> None:
    """Two workers starting one study: the one that loads it while the other is still writing its description
    (one attribute at a time) waits for all of it instead of seeing target=None (a failure seen on PostgreSQL)."""
    from nasc.hw_search import study as st

    class Writing:
        def __init__(self) -> None:
            self.attrs: dict[str, object] = {"space": SPACE}
            self.reads = 0

        @property
        def user_attrs(self) -> dict[str, object]:
            self.reads += 1
            if self.reads == 3:  # the other worker's remaining attributes land
                self.attrs.update(target=TARGET, objectives=["accuracy"], limits={})
            return dict(self.attrs)

    keys = ["space", "target", "objectives", "limits"]
    w = Writing()
    assert st._problem_attrs(w, keys) == {"space": SPACE, "target": TARGET, "objectives": ["accuracy"], "limits": {}}
    assert w.reads == 3

    class Empty:
        user_attrs: dict[str, object] = {"someone_elses": 1}

    assert st._problem_attrs(Empty(), keys) is None  # no description yet: the caller writes its own
