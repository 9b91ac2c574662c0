"""Targets as objects: one per kind (onnx, torch, cpu/gpu through TVM, mcu boards), parsed from text in one place.

A target knows its name, its budgets (what passes may plan against, through the PassContext) and, where it
has one, a cheap ``estimator`` (graph -> figures) that needs no build (an MCU's arena and weight bytes come from the planner exactly).
``api.compile`` parses the target text here once and dispatches on the object; passes never import a
backend for budgets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nasc.errors import UsageError
from nasc.ir.core import Graph
from nasc.passes.manager import Budgets

NAMES = "onnx, torch, cpu, cpu:<llvm-mcpu>, gpu, gpu:sm_XX, mcu[:BOARD] or a JSON TVM target"


@dataclass
class BuildJob:
    """What a build needs besides the graph: the report it fills, the inputs and reference it is checked on, and
    the options that apply to some targets only (tuning for cpu/gpu, verification and budgets for mcu)."""

    report: dict[str, Any]
    feeds: list[dict[str, Any]]
    inputs_label: str
    reference: tuple[Callable[[Any], list[Any]], str] | None = None
    labelled: tuple[list[dict[str, Any]], Any] | None = None
    log: Callable[[str], None] = field(default=lambda _m: None)
    tune_trials: int = 0
    tuning_db: str | os.PathLike[str] | None = None
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    verify_modes: list[str] = field(default_factory=list)
    budget_check: bool = True
    label_output: int = 0  # the output the labels score


@dataclass(frozen=True)
class Target:
    """A build target: ``text`` as the user wrote it, its kind, and what passes may know of it."""

    text: str
    kind: ClassVar[str] = ""

    @property
    def budgets(self) -> Budgets:
        """Flash, SRAM and clock where the target has them (none for onnx, cpu and gpu)."""
        return Budgets()

    @property
    def estimator(self) -> Callable[[Graph], dict[str, int]] | None:
        """``graph -> figures`` on this target without building it (what lossy passes report), or None."""
        return None

    def build(self, graph: Graph, out: Path, job: BuildJob) -> Callable[[Any], list[Any]] | None:
        """Write the artifact into ``out`` and its facts into ``job.report``; return a function inputs ->
        outputs that runs it here for the fidelity check, or None when it cannot run here or checks itself
        (then ``job.report["fidelity"]`` is set)."""
        raise NotImplementedError

    def measure(self, graph: Graph, feed: Mapping[str, Any], repeat: int = 50, build: bool = True
                ) -> dict[str, float]:
        """What the target costs for ``graph`` beyond its size: exact memory figures where a planner gives them,
        and with ``build``, the figures of a real build in a scratch directory (``latency_ms`` over ``repeat``
        timed runs on cpu; on mcu the flash with code and the instruction count under QEMU). Nothing for targets
        whose builds do not run here."""
        return {}

    def measure_all(self, graphs: Sequence[Graph], feed: Mapping[str, Any], repeat: int = 50, rounds: int = 1
                    ) -> list[dict[str, float]]:
        """:meth:`measure` of each of ``graphs`` (a target that times builds times them in ``rounds``)."""
        return [self.measure(g, feed, repeat) for g in graphs]

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class OnnxTarget(Target):
    """The optimized graph as an ONNX file (any runtime)."""

    kind: ClassVar[str] = "onnx"

    def build(self, graph: Graph, out: Path, job: BuildJob) -> Callable[[Any], list[Any]]:
        from nasc.backends.onnx import export_onnx

        export_onnx(graph, out / "model.onnx")
        return load_runner(out)


@dataclass(frozen=True)
class TorchTarget(Target):
    """The optimized graph as a ``torch.export`` program (``model.pt2``) that also carries nasc's graph, so
    ``nasc.load`` reads the same graph back (backends/pytorch/export.py)."""

    kind: ClassVar[str] = "torch"

    def build(self, graph: Graph, out: Path, job: BuildJob) -> Callable[[Any], list[Any]]:
        from nasc.backends.pytorch.export import artifact_facts, export_pt2, pt2_runner

        path = out / "model.pt2"
        ep = export_pt2(graph, path, job.feeds[0] if job.feeds else None)
        job.report["build"] = artifact_facts(ep, path)
        return pt2_runner(path, [v.name for v in graph.inputs])


@dataclass(frozen=True)
class TvmTarget(Target):
    """A CPU or GPU through TVM Relax; ``tvm`` is the parsed TVM target (backends/tvm/target.py)."""

    tvm: Any = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return str(self.tvm.kind)

    def measure(self, graph: Graph, feed: Mapping[str, Any], repeat: int = 50, build: bool = True
                ) -> dict[str, float]:
        """The median latency of the compiled graph here (cpu targets this host can run; else nothing)."""
        return self.measure_all([graph], feed, repeat)[0] if build else {}

    def measure_all(self, graphs: Sequence[Graph], feed: Mapping[str, Any], repeat: int = 50, rounds: int = 1
                    ) -> list[dict[str, float]]:
        """:meth:`measure` of several graphs: each is built once, then all are timed in turn ``rounds`` times and
        each keeps its lowest median. On a machine whose speed drifts over minutes, a slow spell slows every graph
        in one round rather than one graph in all of them. One build is loaded at a time."""
        import tempfile

        from nasc.hw_search.profile import record_build
        from nasc.runtime import load as load_compiled

        if self.kind != "cpu":
            return [{} for _ in graphs]
        with tempfile.TemporaryDirectory(prefix="nasc-measure-") as tmp:
            dirs: list[Path | None] = []
            for i, graph in enumerate(graphs):
                where = Path(tmp) / str(i)
                where.mkdir()
                job = BuildJob({"pipeline": "", "warnings": []}, [dict(feed)], "measure")
                dirs.append(where if self.build(graph, where, job) is not None else None)
            times: list[list[float]] = [[] for _ in graphs]
            for _ in range(max(1, rounds)):
                for built, t in zip(dirs, times):
                    if built is not None:
                        t.append(load_compiled(built).latency_ms(feed, repeat=repeat, warmup=1,
                                                             min_seconds=0.05 if repeat < 20 else 0.5))
            out: list[dict[str, float]] = []
            for graph, built, t in zip(graphs, dirs, times):
                if built is None:
                    out.append({})
                    continue
                record_build(built, feed, min(t), model=graph.name or "model", pipeline=str(graph.meta.get("pipeline", "")))
                out.append({"latency_ms": min(t)})
            return out

    def build(self, graph: Graph, out: Path, job: BuildJob) -> Callable[[Any], list[Any]] | None:
        from nasc.backends.tvm.build import build, write_artifact

        tvm_target, report = self.tvm, job.report
        rpc = None
        if job.rpc_tracker:
            from nasc.backends.tvm.tune import RpcConfig

            rpc = RpcConfig.parse(job.rpc_tracker, job.rpc_key)
        db = Path(job.tuning_db) if job.tuning_db else None
        ex, facts = build(graph, tvm_target, tune_trials=int(job.tune_trials), tuning_db=db, rpc=rpc, log=job.log)
        write_artifact(ex, graph, tvm_target, out, report["pipeline"], facts.pop("kernel_table", None))
        report["build"] = facts
        warning = _int8_cpu_warning(tvm_target, facts.get("integer", {}))
        if warning:
            report["warnings"].append(warning)
        if tvm_target.kind == "cpu":
            from nasc.backends.tvm.target import cpu_unavailable

            why = cpu_unavailable(tvm_target)
            if why is not None:
                report["warnings"].append(f"the build is for {tvm_target.spec.get('mcpu')} and {why}: it was not "
                                          "run; run it on such a CPU and compare there")
                return None
        if tvm_target.kind == "gpu":
            from nasc.backends.tvm.target import gpu_unavailable

            arch = str(tvm_target.spec.get("arch"))
            why = gpu_unavailable(arch)
            if why is not None:
                report["warnings"].append(f"the build is for an NVIDIA GPU ({arch}) and {why}: it was not run; run "
                                          "it on such a GPU and compare there")
                return None
        return load_runner(out)


@dataclass(frozen=True)
class McuTarget(Target):
    """A microcontroller board: plain C on a static arena (backends/mcu/)."""

    board: Any = None
    kind: ClassVar[str] = "mcu"

    @property
    def budgets(self) -> Budgets:
        b = self.board
        return Budgets(flash_bytes=b.flash_bytes, sram_bytes=b.sram_bytes, clock_hz=b.clock_mhz * 1e6, name=b.name)

    @property
    def estimator(self) -> Callable[[Graph], dict[str, int]]:
        return self.estimate

    def estimate(self, graph: Graph) -> dict[str, int]:
        """The planner's arena and the weights' flash bytes, exact, without compiling C."""
        from nasc.backends.mcu.build import estimate

        return estimate(graph, self.board)

    def measure(self, graph: Graph, feed: Mapping[str, Any], repeat: int = 50, build: bool = True
                ) -> dict[str, float]:
        """The planner's arena and weight bytes (exact, no C compiled); with ``build``, also the C project built
        for the board: ``flash_bytes`` (the model's code and weights, from arm-none-eabi-size) and ``instructions``
        (one inference on ``feed`` under QEMU with ``-icount``: deterministic, not cycle-accurate)."""
        import tempfile

        figures = {k: float(v) for k, v in self.estimate(graph).items()}
        if not build:
            return figures
        from nasc.backends.mcu.build import build_mcu
        from nasc.backends.mcu.verify import instructions, require_tools

        require_tools("qemu", "measuring an mcu build (flash with code, instructions under QEMU)")
        with tempfile.TemporaryDirectory(prefix="nasc-measure-") as tmp:
            m = build_mcu(graph, self.board, Path(tmp), model="measure", pipeline="", budget_check=False)
            figures["flash_bytes"] = float(m.facts["flash_bytes"])
            figures["code_bytes"] = float(m.facts["code_bytes"])
            figures["instructions"] = float(instructions(Path(tmp), m.inputs, feed))
        return figures

    def build(self, graph: Graph, out: Path, job: BuildJob) -> None:
        """The C project; with ``job.verify_modes``, built and run (host gcc, QEMU) against the reference."""
        from nasc.backends.mcu.build import build_mcu

        report = job.report
        mcu = build_mcu(graph, self.board, out, model=report["model"], pipeline=report["pipeline"],
                        budget_check=job.budget_check)
        report.update({k: v for k, v in mcu.facts.items() if k != "files"})
        if job.verify_modes:
            _verify_mcu(mcu, self.board, graph, out, job)
        else:
            report["fidelity"] = None
            report["warnings"].append("the C project was not built or run here (--verify none): its outputs are "
                                      "unchecked")


def parse_target(text: Any) -> Target:
    """The target object for ``onnx``, ``torch``, ``cpu[:mcpu]``, ``gpu[:sm_XX]``, ``mcu[:BOARD]`` or a JSON TVM
    target."""
    if isinstance(text, Target):
        return text
    if not isinstance(text, str):
        raise UsageError(f"target {text!r} is not a string; targets: {NAMES}")
    name = text.strip().partition(":")[0]
    if text.strip() == "onnx":
        return OnnxTarget(text)
    if text.strip() == "torch":
        return TorchTarget(text)
    if name == "mcu":
        from nasc.backends.mcu.boards import parse_board

        return McuTarget(text, board=parse_board(text))
    from nasc.backends.tvm.target import parse_target as parse_tvm

    return TvmTarget(text, tvm=parse_tvm(text))


# ---- shared by the builds ---------------------------------------------------------------------------------


def load_runner(out: Path) -> Any:
    """A function inputs -> outputs that runs a built ``model.so`` or ``model.onnx`` here."""
    if (out / "model.so").is_file():
        from nasc.runtime import load as load_compiled

        return load_compiled(out).run
    from nasc.backends import fidelity

    sess = fidelity.ort_session(str(out / "model.onnx"))
    names = [i.name for i in sess.get_inputs()]

    def run(inputs: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        feed = dict(inputs) if isinstance(inputs, Mapping) else dict(zip(names, inputs))
        return fidelity.run_ort(sess, feed)

    return run


def qdq_outputs(graph: Graph, feeds: list[dict[str, Any]]) -> list[list[Any]] | None:
    """For a quantized graph: its outputs under ONNX Runtime by the QDQ definition (what integer kernels are
    held to; they differ by rounding, about 1 LSB), else None."""
    if not any(n.qualified_op == "QuantizeLinear" for n in graph.nodes):
        return None
    from nasc.backends import fidelity

    return fidelity.run_graph(graph, feeds)


def _verify_mcu(mcu: Any, board: Any, graph: Graph, tmp: Path, job: BuildJob) -> None:
    """Build and run the C project (host gcc and/or QEMU) on the fidelity inputs and compare with the reference
    (the original model; nasc's own graph under ONNX Runtime when there is none); with labelled calibration
    data, also measure accuracy on all of it."""
    from nasc.backends import fidelity
    from nasc.backends.mcu.verify import run_project
    from nasc.passes.metrics import accuracy

    reference, feeds, report, labelled = job.reference, job.feeds, job.report, job.labelled

    if reference is None:
        from nasc.backends.onnx import to_onnx

        sess = fidelity.ort_session(to_onnx(graph), exact=True)
        reference = (lambda f: fidelity.run_ort(sess, f)), "onnxruntime on nasc's graph (no original model given)"
    run_ref, ref_label = reference
    ref = [run_ref(f) for f in feeds]
    qdq = qdq_outputs(graph, feeds)
    report["verify"] = {}
    for mode in job.verify_modes:
        job.log(f"mcu: building and running the C project on {mode}")
        entry: dict[str, Any] = {"ran_on": "host gcc" if mode == "host" else
                                 f"qemu-system-arm -M {board.qemu_machine} ({board.cflags[0]})"}
        got = run_project(tmp, mode, mcu.inputs, mcu.outputs, feeds)
        entry.update({**fidelity.compare(ref, got), "inputs": job.inputs_label, "reference": ref_label})
        if qdq is not None:
            entry["vs_quantized_graph"] = fidelity.compare(qdq, got)
        if labelled is not None:
            lab_feeds, labels = labelled
            outs = run_project(tmp, mode, mcu.inputs, mcu.outputs, lab_feeds)
            k = job.label_output
            entry["accuracy"] = {"nasc": accuracy([o[k] for o in outs], labels),
                                 "reference": accuracy([run_ref(f)[k] for f in lab_feeds], labels),
                                 "samples": len(lab_feeds)}
        report["verify"][mode] = entry
    report["fidelity"] = {**report["verify"][job.verify_modes[0]]}


def _int8_cpu_warning(target: Any, integer: Mapping[str, Any]) -> str | None:
    """What an int8 CPU build should know about its speed on the target (None when nothing)."""
    if target.kind != "cpu" or not integer.get("integer_ops"):
        return None
    from nasc.backends.tvm.schedules import int8_kind

    kernels = int8_kind(target.tvm())  # which tensorized integer matmuls the build used
    if kernels == "vnni" or target.int8_dot_product() == "dotprod":
        return None
    mcpu = target.spec.get("mcpu")
    if kernels is None:
        return (f"the CPU target ({mcpu}) has no integer dot-product instructions (AVX2, AVX-512 VNNI or Arm "
                "dotprod): the int8 kernels are exact but multiply through 16-bit lanes and can be slower than "
                "float32; compile the float model where latency matters more than size")
    wide, total = int(integer.get("matmuls_with_wide_weight_pairs", 0)), int(integer.get("matmuls", 0))
    if not wide:
        return None
    return (f"{wide} of {total} integer matmuls have int8 weight pairs whose uint8 x int8 sums can exceed int16, so "
            f"on this {mcpu} (AVX2 without AVX-512 VNNI) they use vpmaddwd, about float32 speed, instead of "
            "vpmaddubsw; quantize{reduce-range=true} (7-bit weights) makes them eligible (MiniLM: 1.6x faster, "
            "docs/benchmarks.md)")

