"""Run the onnx package's backend test suite through nasc and through ONNX Runtime alone.

    python tools/onnx_conformance.py [--kinds node,simple,pytorch-converted,pytorch-operator,light]
                                     [-k PATTERN] [--write docs/conformance.md] [--json out.json]
    python tools/onnx_conformance.py --target cpu,mcu,torch [--jobs 2] [-k PATTERN] [--write docs/conformance.md]
                                     [--json out.json] [--merge earlier.json]

"nasc" (``--target onnx``, the default) means: load the test model into the IR
(frontend, opset conversion, shape folding, verifier), export it back to ONNX,
and run that under ONNX Runtime. "ort" runs the original model under ONNX
Runtime. Both run in the same process on the same test data, with the suite's
own tolerances. The script prints both pass counts and every test that ORT
passes and nasc fails, with the reason.

``--target cpu`` builds each test model with TVM for this CPU and runs it in
TVM's VM; ``--target mcu`` builds the C project for the default board
(cortex-m4) and builds and runs it with the host gcc; ``--target torch`` lowers
it with nasc.to_torch (the graph the TVM targets lower, QDQ integerized into
nasc's integer ops) and runs the torch.fx module under torch.no_grad
(backends/pytorch/run.py). All three compare with the suite's expected outputs
at the suite's tolerances (rtol 1e-3, atol 1e-7 unless a test sets its own, as
onnx's backend runner does). Operands that a static
build must know (Slice's starts, Reshape's shape, Pad's pads, ...) are bound to
the test data's values (BIND below); every bound test is counted. Outcomes:
pass, fail (wrong numbers, shape or dtype), unsupported (a nasc error a user can
act on: no lowering for the target, dynamic shapes, ...) and crash (anything
else: an internal error, a C compile error, a dead or hung worker). Tests run in
at most two nice'd worker processes that are restarted after a crash.

``--merge earlier.json`` (the ``--json`` of an earlier target run) keeps that run's
rows for the targets not run now, so that one target can be rerun alone; the
report names the command that produced each row.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import unittest
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.backend.test
from onnx.backend.base import Backend, BackendRep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conformance_report import target_markdown, write_report

KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator", "light")


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _real_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


PIPELINE = ""  # passes run between load and export (--passes), e.g. "simplify,fuse"
MODES = ("onnx", "cpu", "mcu", "torch")  # --target: where nasc's result runs ("onnx": exported, under ONNX Runtime)
BUILT = ("cpu", "mcu", "torch")  # the targets nasc builds itself: their errors are classified (outcome)
LABEL = {"onnx": "nasc", "cpu": "cpu", "mcu": "mcu", "torch": "torch"}  # result keys ("nasc": the onnx target)

# Operands a static-shape build must know when it is built: they set the result's shape or the op's
# parameters, and the lowerings read them as constants. The node tests feed most of them as graph inputs;
# for --target cpu/mcu/torch they are bound to the test data's values (each bound test says so in its record).
BIND = {
    "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "Tile": (1,), "Reshape": (1,), "Expand": (1,), "Squeeze": (1,),
    "Unsqueeze": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "CumSum": (1,), "CumProd": (1,), "ConstantOfShape": (0,),
    "Range": (0, 1, 2), "Split": (1,), "TopK": (1,), "OneHot": (1,), "Clip": (1, 2), "Trilu": (1,),
    "Dropout": (1, 2), "QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "LSTM": (1, 2, 3, 4, 7),
    "CenterCropPad": (1,), "Col2Im": (1, 2), "DFT": (1, 2), "STFT": (1, 2), "ReduceMean": (1,),
    "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL1": (1,),
    "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
}


class _Rep(BackendRep):
    def __init__(self, model: onnx.ModelProto, mode: str | None) -> None:
        self.model = model
        self.mode = mode  # None: the original model under ONNX Runtime

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        names = _real_inputs(self.model)
        if isinstance(inputs, dict):
            feed = dict(inputs)
        else:
            feed = dict(zip(names, inputs))
        model = self.model
        if self.mode in BUILT:
            return tuple(run_on_target(self.model, feed, self.mode))
        if self.mode == "onnx":
            from nasc.backends.onnx import to_onnx
            from nasc.frontends.onnx import load_onnx

            shapes = {k: tuple(np.asarray(v).shape) for k, v in feed.items() if isinstance(v, np.ndarray)}
            graph = load_onnx(self.model, shapes)
            if PIPELINE:
                from nasc.api import optimize

                graph = optimize(graph, PIPELINE)
            model = to_onnx(graph)
            names = _real_inputs(model)
        sess = _session(model)
        wanted = {i.name for i in sess.get_inputs()}
        return tuple(sess.run(None, {k: v for k, v in feed.items() if k in wanted}))


BOUND: list[str] = []  # the inputs the last run_on_target bound to constants (read by the worker)


def bind_operands(model: onnx.ModelProto, feed: dict[str, Any]) -> tuple[onnx.ModelProto, dict[str, Any], list[str]]:
    """``model`` with the graph inputs that feed a BIND position turned into initializers holding the feed's
    values, the rest of the feed, and the names bound."""
    from onnx import numpy_helper

    wanted = {n.input[i] for n in model.graph.node for i in BIND.get(n.op_type, ()) if i < len(n.input)}
    bound = [i.name for i in model.graph.input if i.name in wanted and i.name in feed]
    if not bound:
        return model, feed, []
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [i for i in m.graph.input if i.name not in bound]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for name in bound:
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(feed[name]), name))
    return m, {k: v for k, v in feed.items() if k not in bound}, bound


_CPU_TARGET: list[Any] = []


def run_on_target(model: onnx.ModelProto, feed: dict[str, Any], mode: str) -> list[np.ndarray]:
    """Build ``model`` with nasc for ``mode`` (its BIND operands bound to ``feed``'s values) and run it on the
    rest of ``feed``."""
    from nasc.frontends.onnx import load_onnx

    model, feed, BOUND[:] = bind_operands(model, feed)
    feed = {k: v if isinstance(v, list) else np.asarray(v) for k, v in feed.items()}  # (a list: a sequence)
    graph = load_onnx(model, {k: v.shape for k, v in feed.items() if isinstance(v, np.ndarray)})
    if PIPELINE:
        from nasc.api import optimize

        graph = optimize(graph, PIPELINE)
    return build_and_run(graph, [feed], mode)[0]


def build_and_run(graph: Any, feeds: list[dict[str, Any]], mode: str) -> list[list[np.ndarray]]:
    """Build ``graph`` for ``mode`` and run it on each feed: cpu: TVM for this host, run in TVM's VM; mcu: the
    C project for the default board (cortex-m4), built and run with the host gcc; torch: nasc.to_torch of the
    integerized graph, run under torch.no_grad."""
    import tempfile

    if mode == "torch":
        from nasc.backends.pytorch.run import run_torch

        return run_torch(graph, feeds)
    if mode == "cpu":
        import tvm

        from nasc.backends.tvm.build import build, vm_for
        from nasc.backends.tvm.target import parse_target

        if not _CPU_TARGET:
            _CPU_TARGET.append(parse_target("cpu"))
        ex, _ = build(graph, _CPU_TARGET[0])
        vm, dev = vm_for(ex, "cpu")
        results = []
        for feed in feeds:  # (np.ascontiguousarray would make a 0-d array 1-d)
            out = vm["main"](*[tvm.runtime.tensor(np.require(feed[v.name], requirements="C"), dev)
                               for v in graph.inputs])
            results.append([out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out])
        return results
    from nasc.backends.mcu.boards import parse_board
    from nasc.backends.mcu.build import build_mcu
    from nasc.backends.mcu.verify import run_project

    with tempfile.TemporaryDirectory(prefix="nasc-conf-") as tmp:
        mb = build_mcu(graph, parse_board("mcu"), Path(tmp), model=graph.name, pipeline=PIPELINE)
        return run_project(Path(tmp), "host", mb.inputs, mb.outputs, feeds)


def _make_backend(mode: str | None) -> type[Backend]:
    class _B(Backend):
        @classmethod
        def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> BackendRep:
            super().prepare(model, device, **kwargs)
            return _Rep(model, mode)

        @classmethod
        def supports_device(cls, device: str) -> bool:
            return device == "CPU"

    _B.__name__ = f"Nasc{mode.capitalize()}Backend" if mode else "OrtBackend"
    return _B


class _Collect(unittest.TestResult):
    """Outcomes by test name. ``classify``: a target run's outcomes (pass, fail, unsupported, crash) instead
    of unittest's (pass, fail, error)."""

    def __init__(self, classify: bool = False) -> None:
        super().__init__()
        self.status: dict[str, tuple[str, str]] = {}
        self.classify = classify

    @staticmethod
    def _name(test: Any) -> str:
        return test.id().rsplit(".", 1)[-1]

    def addSuccess(self, test: Any) -> None:
        self.status[self._name(test)] = ("pass", "")

    def addFailure(self, test: Any, err: Any) -> None:
        self.status[self._name(test)] = (outcome(err) if self.classify else "fail", _reason(err))

    def addError(self, test: Any, err: Any) -> None:
        self.status[self._name(test)] = (outcome(err) if self.classify else "error", _reason(err))

    def addSkip(self, test: Any, reason: str) -> None:
        self.status[self._name(test)] = ("skip", reason)


def outcome(err: Any) -> str:
    """fail: the suite's comparison rejected the outputs; unsupported: a nasc error meant for users (other than
    the generated C failing to build or run); crash: anything else (bare asserts inside nasc included)."""
    import traceback

    from nasc.backends.mcu.verify import McuRunError
    from nasc.errors import Error

    etype, _, tb = err
    if issubclass(etype, AssertionError):
        frames = traceback.extract_tb(tb)
        compared = any(f.name == "assert_similar_outputs" for f in frames)
        return "fail" if compared else "crash"
    if issubclass(etype, Error) and not issubclass(etype, McuRunError):
        return "unsupported"
    return "crash"


def _reason(err: Any) -> str:
    etype, value, _ = err
    text = " ".join(str(value).split())
    return f"{etype.__name__}: {text[:300]}"


def _mode(via: bool | str | None) -> str | None:
    return "onnx" if via is True else None if via is False else via


def suite_tests(via: bool | str | None, kinds: tuple[str, ...], pattern: str | None) -> unittest.TestSuite:
    """The suite's CPU tests of ``kinds`` matching ``pattern``, run by ORT alone (``via`` None or False) or
    through nasc for a target (``via`` "onnx" (or True), "cpu", "mcu", "torch")."""
    bt = onnx.backend.test.BackendTest(_make_backend(_mode(via)), __name__)
    rx = re.compile(pattern) if pattern else None
    suite = unittest.TestSuite()
    for name, case in sorted(bt.test_cases.items()):
        if _kind_of(name) not in kinds:
            continue
        for test in unittest.defaultTestLoader.loadTestsFromTestCase(case):
            tname = _Collect._name(test)
            # each test exists once per device; the CPU one is the test, the CUDA twin only skips
            if tname.endswith("_cuda") or (rx is not None and not rx.search(tname)):
                continue
            suite.addTest(test)
    return suite


def run_one(test_name: str, via: bool | str | None) -> tuple[str, str]:
    """Run a single suite test ("test_relu_cpu") one way; returns (status, reason)."""
    suite = suite_tests(via, KINDS, rf"^{re.escape(test_name)}$")
    res = _Collect(classify=_mode(via) in BUILT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        suite.run(res)
    return res.status.get(test_name, ("missing", f"no test named {test_name}"))


def _kind_of(case_name: str) -> str:
    return {
        "OnnxBackendNodeModelTest": "node",
        "OnnxBackendSimpleModelTest": "simple",
        "OnnxBackendPyTorchConvertedModelTest": "pytorch-converted",
        "OnnxBackendPyTorchOperatorModelTest": "pytorch-operator",
        "OnnxBackendRealModelTest": "light",
    }.get(case_name, case_name)


def run(kinds: tuple[str, ...], pattern: str | None) -> dict[str, dict[str, tuple[str, str]]]:
    results: dict[str, dict[str, tuple[str, str]]] = {}
    for label, via in (("ort", False), ("nasc", True)):
        t0 = time.perf_counter()
        res = _Collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            suite_tests(via, kinds, pattern).run(res)
        results[label] = res.status
        print(f"{label}: {sum(s == 'pass' for s, _ in res.status.values())} of {len(res.status)} passed "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return results


# ---- target runs: worker processes, restarted after a crash ---------------------------------------------


def _worker(job: Path) -> None:
    """Run the (test, mode) pairs listed in ``job``/pairs.json, one JSON line per start and per result
    appended to ``job``/results.jsonl (the driver reads it while it grows, to find a crash or a hang)."""
    spec = json.loads((job / "pairs.json").read_text())
    global PIPELINE
    PIPELINE = spec["pipeline"]
    pairs = [tuple(p) for p in spec["pairs"]]
    tests: dict[str, dict[str, Any]] = {}
    for mode in dict.fromkeys(m for _, m in pairs):
        wanted = {t for t, m in pairs if m == mode}
        suite = suite_tests(None if mode == "ort" else mode, tuple(spec["kinds"]), None)
        tests[mode] = {_Collect._name(t): t for t in suite if _Collect._name(t) in wanted}
    with open(job / "results.jsonl", "a") as f:
        for name, mode in pairs:
            f.write(json.dumps({"start": name, "mode": mode}) + "\n")
            f.flush()
            BOUND.clear()
            res = _Collect(classify=mode in BUILT)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tests[mode][name].run(res)
            st, why = res.status.get(name, ("missing", "not run"))
            f.write(json.dumps({"test": name, "mode": mode, "status": st, "reason": why, "bound": list(BOUND),
                                "s": round(time.perf_counter() - t0, 2)}) + "\n")
            f.flush()


def _drive(pairs: list[tuple[str, str]], kinds: tuple[str, ...], timeout_s: float, records: list[dict]) -> None:
    """Run ``pairs`` in a nice'd worker process; a pair that kills its worker or runs past ``timeout_s`` is
    recorded as a crash and the worker restarts with the pairs after it."""
    import subprocess
    import tempfile

    remaining = list(pairs)
    stalls = 0
    while remaining:
        before = len(remaining)
        with tempfile.TemporaryDirectory(prefix="nasc-conf-job-") as tmp:
            job = Path(tmp)
            (job / "pairs.json").write_text(json.dumps({"pairs": remaining, "kinds": kinds, "pipeline": PIPELINE}))
            (job / "results.jsonl").touch()
            env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "ORT_LOGGING_LEVEL": "4"}
            with open(job / "log", "w") as log:
                proc = subprocess.Popen([sys.executable, __file__, "--worker", str(job)], stdout=log, stderr=log,
                                        env=env, preexec_fn=lambda: os.nice(10), start_new_session=True)
            current, since, seen, why = None, time.monotonic(), 0, ""
            while True:
                done = proc.poll() is not None
                lines = (job / "results.jsonl").read_text().split("\n")
                for line in lines[seen:-1]:  # the last piece is an unfinished line (or "")
                    rec = json.loads(line)
                    if "start" in rec:
                        current, since = (rec["start"], rec["mode"]), time.monotonic()
                    else:
                        records.append(rec)
                        remaining.remove((rec["test"], rec["mode"]))
                        current = None
                seen = len(lines) - 1
                if done:
                    why = f"the worker died (exit {proc.returncode})"
                    break
                if current is not None and time.monotonic() - since > timeout_s:
                    os.killpg(proc.pid, 9)
                    proc.wait()
                    why = f"timed out after {timeout_s:.0f} s"
                    break
                time.sleep(0.2)
            if current is None and remaining:  # died between tests, or before the first one
                stalls = stalls + 1 if len(remaining) == before else 0
                if stalls >= 3:
                    tail = (job / "log").read_text()[-2000:]
                    raise RuntimeError(f"conformance workers keep dying outside any test; last log:\n{tail}")
                continue
            if current is not None:
                records.append({"test": current[0], "mode": current[1], "status": "crash", "reason": why,
                                "bound": [], "s": round(time.monotonic() - since, 2)})
                remaining.remove(current)


def run_targets(modes: tuple[str, ...], kinds: tuple[str, ...], pattern: str | None, jobs: int = 2,
                timeout_s: float = 300) -> tuple[dict[str, dict[str, tuple[str, str]]], list[dict]]:
    """Results by label ("ort" and each mode's LABEL) and the raw records, from ``jobs`` (at most 2) workers."""
    import threading

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generating the node tests warns about the casts they exercise
        names = [_Collect._name(t) for t in suite_tests(None, kinds, pattern)]
    jobs = max(1, min(jobs, 2))
    shards = [[(n, m) for n in names[i::jobs] for m in ("ort", *modes)] for i in range(jobs)]
    records: list[dict] = []
    t0 = time.perf_counter()
    threads = [threading.Thread(target=_drive, args=(shard, kinds, timeout_s, records)) for shard in shards]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    results: dict[str, dict[str, tuple[str, str]]] = {"ort": {}, **{LABEL[m]: {} for m in modes}}
    for r in records:
        results["ort" if r["mode"] == "ort" else LABEL[r["mode"]]][r["test"]] = (r["status"], r["reason"])
    for label, res in results.items():
        print(f"{label}: {sum(s == 'pass' for s, _ in res.values())} of {len(res)} passed", file=sys.stderr)
    print(f"({time.perf_counter() - t0:.0f} s with {jobs} workers)", file=sys.stderr)
    return results, records


def merge_runs(results: dict[str, dict[str, tuple[str, str]]], records: list[dict], commands: dict[str, str],
               earlier: dict[str, Any]) -> tuple[dict[str, dict[str, tuple[str, str]]], list[dict], dict[str, str]]:
    """This run's results, records and commands (label -> the command that produced its row) with the rows of
    ``earlier`` (a ``--json`` of a target run on the same tests) for the targets this run did not run."""
    old = earlier["results"]
    if set(old["ort"]) != set(results["ort"]):
        raise SystemExit("--merge: the earlier run covers other tests (its -k / --kinds differ)")
    kept = [lab for lab in old if lab not in results]
    modes = {LABEL[m] if m != "ort" else m: m for m in ("ort", *MODES)}
    order = ["ort", *(LABEL[m] for m in MODES)]
    merged = {lab: results[lab] if lab in results else {t: (st, why) for t, (st, why) in old[lab].items()}
              for lab in sorted({*results, *kept}, key=order.index)}
    old_cmd = earlier.get("commands", {})
    cmds = {lab: commands[lab] if lab in commands else old_cmd.get(lab, "an earlier run") for lab in merged}
    return merged, records + [r for r in earlier["records"] if r["mode"] in {modes[lab] for lab in kept}], cmds


def summarize(results: dict[str, dict[str, tuple[str, str]]]) -> dict[str, Any]:
    ort, nasc = results["ort"], results["nasc"]
    regressions = {t: nasc[t][1] for t in sorted(ort) if ort[t][0] == "pass" and nasc.get(t, ("missing", ""))[0] != "pass"}
    gains = sorted(t for t in nasc if nasc[t][0] == "pass" and ort.get(t, ("", ""))[0] != "pass")
    return {
        "onnx": onnx.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "total": len(ort),
        "ort_pass": sum(s == "pass" for s, _ in ort.values()),
        "nasc_pass": sum(s == "pass" for s, _ in nasc.values()),
        "ort_pass_nasc_fail": regressions,
        "nasc_pass_ort_fail": gains,
    }


# Why nasc fails a test that ONNX Runtime passes, where that is understood and accepted.
EXPLAINED = {
    "test_affine_grid_2d_expanded_cpu": "the expanded AffineGrid function feeds 1-element tensors to Range, which "
    "requires scalars; ORT notices only once nasc has folded the If condition to a constant and ORT inlines the branch",
    "test_affine_grid_2d_align_corners_expanded_cpu": "as test_affine_grid_2d_expanded",
    "test_affine_grid_3d_expanded_cpu": "as test_affine_grid_2d_expanded: the If branches of the expanded function "
    "return different ranks; once simplify folds the constant If, the runtime sees the rank the model declared wrongly",
    "test_affine_grid_3d_align_corners_expanded_cpu": "as test_affine_grid_3d_expanded",
    "test_scan_sum_cpu": "the opset-8 model declares input 'initial' as [2] but the test feeds [1, 2]; ORT runs it "
    "with a warning, nasc refuses a shape that contradicts the model's own declaration",
}


def markdown(summary: dict[str, Any], command: str) -> str:
    via = f"load into the IR, verify, run `{PIPELINE}`, export back to ONNX, run under ONNX Runtime" if PIPELINE \
        else "load into the IR, verify, export back to ONNX, run under ONNX Runtime"
    lines = [
        f"# ONNX backend conformance{f' with {PIPELINE}' if PIPELINE else ''}",
        "",
        f"Produced by `{command}` (onnx {summary['onnx']}, onnxruntime {summary['onnxruntime']}).",
        "",
        "Each test of the onnx package's backend suite (node, simple, pytorch-converted, pytorch-operator and",
        f"the light real models) runs twice in one process: under ONNX Runtime alone, and through nasc ({via}).",
        "",
        "| | passed | of |",
        "|---|---:|---:|",
        f"| ONNX Runtime alone | {summary['ort_pass']} | {summary['total']} |",
        f"| nasc | {summary['nasc_pass']} | {summary['total']} |",
        "",
        f"Tests ONNX Runtime passes and nasc fails: **{len(summary['ort_pass_nasc_fail'])}**.",
        "",
    ]
    if summary["ort_pass_nasc_fail"]:
        lines += ["| test | error | why |", "|---|---|---|"]
        for t, why in summary["ort_pass_nasc_fail"].items():
            lines.append(f"| `{t}` | {why.replace('|', '/')} | {EXPLAINED.get(t, 'not yet understood')} |")
        lines.append("")
    if summary["nasc_pass_ort_fail"]:
        lines += [f"Tests nasc passes and ONNX Runtime alone fails ({len(summary['nasc_pass_ort_fail'])}): models "
                  "at opsets whose kernels ORT no longer has (opset 1-6 Add, Gemm, AveragePool, ...), which nasc "
                  "converts to opset 21 on import:", ""]
        lines += [", ".join(f"`{t}`" for t in summary["nasc_pass_ort_fail"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", default=None, help=f"of {','.join(KINDS)}; default: all (node with --target cpu/mcu)")
    p.add_argument("-k", "--pattern", default=None, help="regex of test names to include")
    p.add_argument("--write", type=Path, default=None, help="write the markdown report here")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--merge", type=Path, default=None,
                   help="with --target: the --json of an earlier target run; its rows of targets not run now are kept")
    p.add_argument("--passes", default="", help="a pipeline to run between load and export, e.g. simplify,fuse")
    p.add_argument("--target", default="onnx", help="onnx (default), or cpu and/or mcu, e.g. onnx,cpu,mcu")
    p.add_argument("--jobs", type=int, default=2, help="worker processes for --target cpu/mcu (at most 2)")
    p.add_argument("--timeout", type=float, default=300, help="seconds one test may take on one target")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global PIPELINE
    PIPELINE = args.passes
    os.environ.setdefault("ORT_LOGGING_LEVEL", "4")
    if args.worker:
        _worker(args.worker)
        return 0
    modes = tuple(m for m in args.target.split(",") if m)
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--target: expected some of {', '.join(MODES)}")
    cmd = "python tools/onnx_conformance.py" + (f" -k '{args.pattern}'" if args.pattern else "") + (
        f" --passes {args.passes}" if args.passes else "")
    if modes != ("onnx",):
        kinds = tuple(k for k in (args.kinds or "node").split(",") if k)
        results, records = run_targets(modes, kinds, args.pattern, args.jobs, args.timeout)
        for lab in results:
            c = Counter(st for st, _ in results[lab].values())
            print(f"{lab:5s} " + ", ".join(f"{st} {n}" for st, n in c.most_common()) + f" (of {len(results[lab])})")
        for lab in (m for m in results if m in BUILT):
            for t, (st, why) in sorted(results[lab].items()):
                if st in ("fail", "crash"):
                    print(f"  {lab} {st}: {t}: {why[:300]}")
        cmd += f" --target {args.target}" + (f" --kinds {args.kinds}" if args.kinds else "")
        commands = dict.fromkeys(results, cmd)
        if args.merge:
            results, records, commands = merge_runs(results, records, commands, json.loads(args.merge.read_text()))
        if args.write:
            write_report(args.write, target_markdown(results, records, cmd, commands), targets=True)
        if args.json:
            args.json.write_text(json.dumps({"results": results, "records": records, "commands": commands}, indent=1))
        return 0
    kinds = tuple(k for k in (args.kinds or ",".join(KINDS)).split(",") if k)
    results = run(kinds, args.pattern)
    summary = summarize(results)
    print(f"ONNX Runtime alone: {summary['ort_pass']} / {summary['total']}")
    print(f"nasc:               {summary['nasc_pass']} / {summary['total']}")
    print(f"ORT passes, nasc fails: {len(summary['ort_pass_nasc_fail'])}")
    reasons = Counter(re.sub(r"'[^']*'", "'…'", why)[:80] for why in summary["ort_pass_nasc_fail"].values())
    for t, why in summary["ort_pass_nasc_fail"].items():
        print(f"  {t}: {why}")
    if reasons:
        print("most common reasons:")
        for why, n in reasons.most_common(10):
            print(f"  {n:4d}  {why}")
    if args.write:
        write_report(args.write, markdown(summary, cmd), targets=False)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
