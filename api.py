"""The Python API: load, export_onnx, compile. Re-exported by the ``nasc`` package."""

from __future__ import annotations

import json
import numbers
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nasc.errors import UsageError
from nasc.ir.core import Graph
from nasc.passes.metrics import accuracy
from nasc.report.layers import attach_steps, layer_rows
from nasc.report.page import write as write_page


def load(model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None, *,
         max_tensor_bytes: int | None = None) -> Graph:
    """Load a model as a verified IR graph.

    ``model``: a path to an ``.onnx`` file, its bytes, an ``onnx.ModelProto``, or
    an ``ir.Graph`` (returned as is). ``input_shapes`` fixes dynamic input dims.
    ``max_tensor_bytes`` bounds each tensor of an ONNX model, and each input of a .pt2 that
    ``input_shapes`` sets (default $NASC_MAX_TENSOR_BYTES, else 16 GiB).
    """
    if isinstance(model, Graph):
        return model
    from nasc.frontends import check_input_shape

    for name, shape in (input_shapes or {}).items():
        check_input_shape(name, shape)
    if _is_pt2(model):
        from nasc.frontends.torch import load_pt2

        return load_pt2(model, input_shapes, max_tensor_bytes=max_tensor_bytes)
    if type(model).__module__.startswith("torch") or hasattr(model, "forward"):
        raise UsageError("a torch module needs example inputs: use nasc.from_torch(module, example_inputs)")
    from nasc.frontends.onnx import load_onnx

    return load_onnx(model, input_shapes, max_tensor_bytes=max_tensor_bytes)


def _is_pt2(model: Any) -> bool:
    return isinstance(model, str | os.PathLike) and Path(model).suffix == ".pt2"


def from_torch(
    module: Any,
    example_inputs: Any,
    dynamic_shapes: Any = None,
    *,
    via: str = "export",
    strict: bool = False,
    output_names: Sequence[str] | None = None,
) -> Graph:
    """Import a torch ``nn.Module`` through torch.export (see :func:`nasc.frontends.torch.from_torch`).

    ``example_inputs``: a tuple of positional inputs or a dict of keyword
    inputs; the graph is static at their shapes. ``via="onnx"`` routes through
    ``torch.onnx.export(dynamo=True)`` and the ONNX frontend instead.
    """
    from nasc.frontends.torch import from_torch as _from_torch

    return _from_torch(module, example_inputs, dynamic_shapes, via=via, strict=strict, output_names=output_names)


def to_torch(graph: Graph) -> Any:
    """``graph`` as a ``torch.fx.GraphModule`` that computes it: floating-point constants are parameters named
    after their IR values (a constant several nodes read is one parameter), other constants buffers; ``forward``
    takes the inputs and returns the outputs as a tuple. Ops without a torch lowering are an error that lists them."""
    from nasc.backends.pytorch.lower import to_torch as _to_torch

    return _to_torch(graph)


def export_onnx(graph: Graph, path: str | os.PathLike[str]) -> Path:
    """Write ``graph`` as an ONNX model at ``path`` (checked with the full onnx.checker)."""
    from nasc.backends.onnx import export_onnx as _export

    return _export(graph, path)


def optimize(
    graph: Graph,
    pipeline: str | Any,
    calib: Sequence[Mapping[str, Any]] | None = None,
    target: Any = None,
    *,
    seed: int = 0,
    verify: bool = True,
    print_ir_after_all: bool = False,
    log: Any = None,
    labels: Any = None,
    estimate: Any = None,
    label_output: str | None = None,
) -> Graph:
    """Run a pass pipeline (text like ``"simplify,fuse"`` or a Pipeline) on a copy of ``graph``.

    ``calib`` is a list of feeds (input name -> array) for passes that measure;
    ``labels`` (one class per feed) lets lossy passes report accuracy, and
    ``estimate`` (graph -> {"arena_bytes": ..., "flash_bytes": ...}) their target figures; ``label_output``
    names the output the labels score (default: the first).
    The verifier runs after every pass unless ``verify=False``. The returned
    graph's ``meta["passes"]`` holds each pass's report section.
    """
    from nasc.backends.fidelity import run_graph
    from nasc.passes.manager import Budgets, PassContext, Pipeline

    pipe = pipeline if isinstance(pipeline, Pipeline) else Pipeline.parse(str(pipeline))
    tgt = None
    if target is not None:
        from nasc.backends.targets import parse_target

        tgt = parse_target(target)
    out = graph.clone()
    ctx = PassContext(target=tgt, budgets=tgt.budgets if tgt is not None else Budgets(),
                      calib=[dict(f) for f in calib] if calib is not None else None, seed=seed,
                      runner=run_graph, verify=verify, print_ir_after_all=print_ir_after_all,
                      log=log or (lambda _m: None),
                      estimate=estimate if estimate is not None or tgt is None else tgt.estimator,
                      labels=None if labels is None else np.asarray(labels).reshape(-1),
                      label_output=output_index(graph, label_output), original=graph, trainer=_trainer())
    pipe.run(out, ctx)
    out.meta["pipeline"] = str(pipe)
    out.meta["passes"] = ctx.report.to_dict()
    return out


def search(model: Any, target: str = "onnx", out: str | os.PathLike[str] = "search", **options: Any) -> Any:
    """Search pipelines for ``target`` with Optuna: see :func:`nasc.hw_search.run.search` for the options."""
    from nasc.hw_search.run import search as run_search

    return run_search(model, target, out, **options)


def output_index(graph: Graph, name: str | None) -> int:
    """The position of output ``name`` (None: the first), or a UsageError listing the outputs."""
    names = [v.name for v in graph.outputs]
    if name is None or name == "":
        return 0
    if name not in names:
        raise UsageError(f"label output {name!r} is not an output of the model; outputs: {names}")
    return names.index(name)


class _Trainer:
    """The torch trainer for passes that need gradients (recover, importance=taylor, sensitivity=fisher), imported
    on first use: a pipeline without them never loads torch."""

    def _torch(self) -> Any:
        try:
            from nasc.backends.pytorch.train import TorchTrainer
        except ImportError as e:
            raise UsageError(f"this pass trains through the graph and needs torch ({e}): pip install torch==2.13.0"
                             ) from None
        return TorchTrainer()

    def distill(self, job: Any) -> Any:
        return self._torch().distill(job)

    def probe_gradients(self, *args: Any) -> Any:
        return self._torch().probe_gradients(*args)


def _trainer() -> Any:
    return _Trainer()


@dataclass
class Artifact:
    """What ``compile`` produced: the output directory, its files and the report; ``run`` executes it."""

    out: Path
    files: list[str]
    report: dict[str, Any] = field(default_factory=dict)
    _runner: Any = field(default=None, repr=False)

    def run(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        """Run the built model on a dict by input name or a list in input order."""
        if self._runner is None:
            from nasc.backends.targets import load_runner

            self._runner = load_runner(self.out)
        return list(self._runner(inputs))


def compile(
    model: Any,
    target: str = "onnx",
    out: str | os.PathLike[str] | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    passes: str | None = None,
    calib: str | Sequence[Mapping[str, Any]] | None = None,
    tune_trials: int = 0,
    seed: int = 0,
    fidelity_batches: int = 2,
    measure_latency: bool = True,
    tuning_db: str | os.PathLike[str] | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    verify: bool = True,
    print_ir_after_all: bool = False,
    log: Any = None,
    verify_on: str | Sequence[str] | None = None,
    budget_check: bool = True,
    allow_random_calib: bool = False,
    max_tensor_bytes: int | None = None,
    label_output: str | None = None,
) -> Artifact:
    """Load ``model``, build it for ``target`` into directory ``out``, and check it against the original.

    ``target``: ``onnx``, ``cpu`` (this host), ``cpu:<llvm-mcpu>``, ``gpu[:sm_XX]``, a JSON TVM target, or
    ``mcu[:BOARD]`` (a C project; ``verify_on`` = ``host`` (default, when gcc is here), ``qemu``, both
    (``"host,qemu"``) or ``none`` says where it is built and run to check it; ``budget_check=False`` builds a
    model that exceeds the board's SRAM or flash). Quantization passes need ``calib``; with
    ``allow_random_calib=True`` they run on seeded random inputs instead (with a warning).
    The directory is written whole or not at all: it is assembled next to
    ``out`` and moved into place only when the build and its checks succeed
    (a failure, Ctrl-C included, also removes the parents it created). An
    existing ``out`` is replaced only when it is empty or a previous nasc build
    holding nothing but its own files. A GPU build is run and checked only on a
    CUDA device of its architecture (else a warning says it was not run).
    ``passes`` is a pipeline run before the build; ``calib`` an ``.npz`` path
    or a list of feeds. ``report.json`` holds the pipeline, each pass's report,
    the fidelity against the original model on the calibration inputs (or on
    seeded random inputs when there are none: a warning says that lossy passes
    need real data), for CPU builds the latency of nasc and ONNX Runtime on the
    same inputs, sizes and the graph summary. ``max_tensor_bytes`` bounds each tensor, as in :func:`load`.
    ``label_output`` names the output the calibration labels score (default: the first).
    """
    out = _output_dir(out)
    from nasc.backends.targets import BuildJob, McuTarget, OnnxTarget, TvmTarget, parse_target, qdq_outputs

    tgt = parse_target(target)
    target = tgt.text
    _check_numbers(seed=seed, tune_trials=tune_trials, fidelity_batches=fidelity_batches)
    _check_calib_arg(calib)
    modes = _verify_modes(verify_on) if isinstance(tgt, McuTarget) else []
    if not isinstance(tgt, TvmTarget) and tune_trials:
        raise UsageError(f"--tune-trials applies to the cpu and gpu targets, not {tgt.kind}")
    if not isinstance(tgt, McuTarget) and verify_on is not None:
        raise UsageError(f"--verify applies to mcu targets (where the C project is built and run to check it), not "
                         f"{target}: nasc checks that build itself")
    t0 = time.perf_counter()
    from nasc.backends import fidelity
    from nasc.passes.manager import Pipeline

    log = log or (lambda _m: None)
    graph = load(model, input_shapes, max_tensor_bytes=max_tensor_bytes)
    reference = _reference(model)
    k_label = output_index(graph, label_output)
    pipeline = Pipeline.parse(passes or "")
    feeds_calib = fidelity.load_calibration(calib, graph) if isinstance(calib, str | os.PathLike) else (
        [dict(f) for f in calib] if calib is not None else None)
    labelled = _labelled(calib, feeds_calib)
    warnings: list[str] = list(graph.meta.get("load_warnings", []))
    pass_calib = feeds_calib
    if pipeline.lossy and not feeds_calib:
        warnings.append("lossy passes ran without calibration data (--calib): their choices and this fidelity "
                        "check used random inputs, which say little about real accuracy")
        if allow_random_calib:
            pass_calib = fidelity.random_inputs(graph, seed, 8)
    params_before = graph.summary()["param_bytes"]
    if pipeline.passes:
        graph = optimize(graph, pipeline, pass_calib, tgt, seed=seed, verify=verify,
                         print_ir_after_all=print_ir_after_all, log=log,
                         labels=labelled[1] if labelled is not None and pass_calib is feeds_calib else None,
                         label_output=label_output)
    if out.exists():
        log(f"replacing the previous build in {out}/")
    created: list[Path] = []  # missing parents of out made for the staging directory: removed on failure
    tmp: Path | None = None
    try:
        tmp = _make_tmp(out, created)
        if feeds_calib:
            feeds, inputs_label = feeds_calib[:64], f"{min(len(feeds_calib), 64)} calibration samples"
        else:
            feeds, inputs_label = fidelity.random_inputs(graph, seed, fidelity_batches), "random"
        summary = graph.summary()
        report: dict[str, Any] = {
            "target": target,
            "model": str(model) if isinstance(model, str | os.PathLike) else type(model).__name__,
            "input_shapes": {v.name: list(v.shape) for v in graph.inputs},
            "pipeline": str(pipeline),
            "passes": graph.meta.get("passes", []),
            "warnings": warnings,
            "summary": {k: v for k, v in summary.items() if k in ("nodes", "params", "macs", "ops")},
            "param_bytes": {"before": params_before, "after": summary["param_bytes"]},
        }
        for key in ("quant_policy", "quantization"):
            if key in graph.meta:
                report[key] = graph.meta[key]
        job = BuildJob(report, feeds, inputs_label, reference, labelled, log, tune_trials, tuning_db, rpc_tracker,
                       rpc_key, modes, budget_check, k_label)
        runner = tgt.build(graph, tmp, job)  # None: cannot run here, or checked itself (mcu)
        if not isinstance(tgt, McuTarget):
            if reference is not None and runner is not None:
                run_ref, ref_label = reference
                ref = [run_ref(f) for f in feeds]
                got = [runner(f) for f in feeds]
                report["fidelity"] = {**fidelity.compare(ref, got), "inputs": inputs_label, "seed": seed,
                                      "batches": fidelity_batches, "reference": ref_label}
                nonfinite = fidelity.nonfinite_warning(report["fidelity"])
                if nonfinite is not None:
                    warnings.append(nonfinite)
                qdq = qdq_outputs(graph, feeds)
                if qdq is not None:
                    vs = fidelity.compare(qdq, got)
                    report["fidelity"]["vs_quantized_graph"] = vs
                    if isinstance(tgt, OnnxTarget) and vs["cosine"] < 0.9999:
                        warnings.append(
                            f"ONNX Runtime's int8 kernels on this CPU differ from the model's QDQ definition (max abs "
                            f"err {vs['max_abs_err']:.3g}, cosine {vs['cosine']:.5f}): on x86 without VNNI its u8 x s8 "
                            "kernels saturate with full-range weights; quantize{reduce-range=true} avoids it")
                if labelled is not None:
                    lab_feeds, labels = labelled
                    report["accuracy"] = {"nasc": accuracy([runner(f)[k_label] for f in lab_feeds], labels),
                                          "reference": accuracy([run_ref(f)[k_label] for f in lab_feeds], labels),
                                          "samples": len(lab_feeds)}
            elif runner is None:
                report["fidelity"] = None
        uninformative = fidelity.uninformative_warning(report.get("fidelity"))  # mcu's verification sets it too
        if uninformative is not None:
            warnings.append(uninformative)
        report["compile_time_s"] = round(time.perf_counter() - t0, 3)
        if measure_latency and tgt.kind == "cpu" and runner is not None:
            from nasc.runtime import load as load_compiled

            built = load_compiled(tmp)
            report["latency_ms"] = _latency(built, model, graph, feeds[0])
            report["kernel_ms"] = built.kernel_ms(feeds[0])
            from nasc.hw_search.profile import record_build

            record_build(tmp, feeds[0], report["latency_ms"]["nasc"], model=_model_label(model),
                         pipeline=str(pipeline), macs=int(summary["macs"]), kernel_ms=report["kernel_ms"],
                         warn=warnings.append)
        report["layers"] = layer_rows(graph)
        if "steps" in report:
            attach_steps(report["layers"], report["steps"], report.get("buffers", []))
        report["files"] = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        if isinstance(model, str | os.PathLike) and Path(model).is_file():
            report["model_file_bytes"] = Path(model).stat().st_size
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        write_page(tmp, report)
        _replace_dir(tmp, out)
    except BaseException:  # KeyboardInterrupt and SystemExit (SIGTERM in the CLI) too: nothing is left behind
        _discard(tmp, created)
        raise
    return Artifact(out, sorted(p.name for p in out.iterdir()), report)


def _output_dir(out: Any) -> Path:
    """``out`` as given (normalized), checked before any work: it must name a directory nasc may create or replace.

    An existing directory is replaced whole, so it must be empty or a previous nasc build that holds only the
    files its report.json lists; anything else is refused rather than deleted.
    """
    try:
        return _checked_output_dir(out)
    except OSError as e:  # a name too long for the file system, a loop of links, a permission on the way
        raise UsageError(f"cannot write the output directory '{out}': {e.strerror or e}; choose another -o") from None


def _checked_output_dir(out: Any) -> Path:
    if out is None:
        raise UsageError("compile needs an output directory (out=...)")
    if not str(out).strip():
        raise UsageError("output directory '' is an empty path: name a directory, e.g. -o build")
    path = Path(os.path.normpath(out))
    if path.is_symlink():  # replace the directory it points to, not the link
        path = Path(os.path.realpath(path))
    absolute, cwd = Path(os.path.abspath(path)), Path.cwd()
    if absolute == cwd or absolute in cwd.parents:
        raise UsageError(f"output directory '{out}' is or contains the current directory, which nasc would replace "
                         "whole: name a new directory, e.g. -o build")
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"output '{out}' exists and is a file, not a directory: remove it or choose another -o")
        foreign = _foreign_files(path)
        if foreign:
            raise UsageError(f"output directory '{out}' exists and holds files nasc did not write "
                             f"({', '.join(foreign)}): nasc replaces the directory whole and would delete them; "
                             "choose a new directory or empty it")
        return path
    ancestor = absolute.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"cannot write the output directory '{out}': '{ancestor}' is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write the output directory '{out}': '{ancestor}' is not writable; choose a "
                         "writable location")
    return path


def _foreign_files(directory: Path, most: int = 5) -> list[str]:
    """Up to ``most`` files under ``directory`` that the nasc build there did not write (per its report.json)."""
    try:
        listed = json.loads((directory / "report.json").read_text()).get("files", {})
        written = {str(name) for name in listed} | {"report.json", "report.html"}
    except (OSError, ValueError, AttributeError):
        written = set()
    foreign: list[str] = []
    for root, dirs, files in os.walk(directory):
        for name in sorted(files) + sorted(d for d in dirs if Path(root, d).is_symlink()):
            rel = os.path.relpath(os.path.join(root, name), directory)
            if rel not in written:
                foreign.append(rel)
                if len(foreign) == most:
                    return foreign
    return foreign


def _check_numbers(**values: Any) -> None:
    """``seed`` and ``tune_trials`` are integers >= 0, ``fidelity_batches`` >= 1."""
    why = {"seed": "numpy's random generators take seeds >= 0",
           "tune_trials": "0 builds with nasc's default schedules",
           "fidelity_batches": "the fidelity check needs at least one batch"}
    for name, value in values.items():
        lowest = 1 if name == "fidelity_batches" else 0
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lowest:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {value!r}: expected an integer >= {lowest} ({why[name]})")


def _check_calib_arg(calib: Any) -> None:
    """A calibration path must be an existing file; a list of feeds must not be empty."""
    if calib is None:
        return
    if isinstance(calib, str | os.PathLike):
        p = Path(calib)
        if not p.exists():
            raise UsageError(f"calibration file '{calib}' does not exist; --calib takes an .npz with one array per "
                             "model input, first axis = samples")
        if not p.is_file():
            raise UsageError(f"calibration file '{calib}' is a directory, not an .npz file; --calib takes an .npz "
                             "with one array per model input, first axis = samples")
    elif len(calib) == 0:
        raise UsageError("calib is an empty list: give at least one feed (input name -> array), or calib=None "
                         "for seeded random inputs")


def _verify_modes(verify_on: str | Sequence[str] | None) -> list[str]:
    import shutil

    if verify_on is None:
        return ["host"] if shutil.which("gcc") and shutil.which("make") else []
    modes = [m.strip() for m in (verify_on.split(",") if isinstance(verify_on, str) else verify_on) if m.strip()]
    bad = [m for m in modes if m not in ("host", "qemu", "none")]
    if bad:
        raise UsageError(f"--verify {','.join(bad)}: expected host, qemu, host,qemu or none")
    if "none" in modes:
        return []
    from nasc.backends.mcu.verify import require_tools

    for m in modes:
        require_tools(m)
    return modes


def _labelled(calib: Any, feeds: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]], Any] | None:
    """Calibration feeds with their class labels, when the .npz has a ``label`` (or ``labels``) array: one per
    sample, else a UsageError."""

    from nasc.backends.fidelity import npz_array

    if not isinstance(calib, str | os.PathLike) or not feeds:
        return None
    with np.load(calib, allow_pickle=False) as data:
        key = next((k for k in ("label", "labels") if k in data.files), None)
        if key is None:
            return None
        labels = npz_array(data, key, calib)
    if labels.ndim == 0 or len(labels) != len(feeds):
        raise UsageError(f"calibration file '{calib}': array '{key}' has {labels.size if labels.ndim else 'a scalar'} "
                         f"label(s) for {len(feeds)} samples; give one class label per sample, or leave '{key}' out")
    return feeds, labels


def _make_tmp(out: Path, created: list[Path]) -> Path:
    """The staging directory next to ``out``; each missing parent it makes is appended to ``created``."""
    missing = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    try:
        for p in reversed(missing):
            p.mkdir()
            created.append(p)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise UsageError(f"cannot write the output directory '{out}': {e.strerror or e}; choose a writable "
                         "location") from None


def _discard(tmp: Path | None, created: list[Path]) -> None:
    """Undo ``_make_tmp``: the staging directory and the parents it made (those still empty), deepest first."""
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            pass


def _latency(built: Any, model: Any, graph: Graph, feed: Mapping[str, Any]) -> dict[str, float]:
    """Median ms of the built model (a loaded :class:`nasc.runtime.CompiledModel`) and of ONNX Runtime (the original
    ONNX model, else nasc's export) on ``feed``."""
    from nasc.backends import fidelity

    result = {"nasc": round(built.latency_ms(feed), 4)}
    if (isinstance(model, str | os.PathLike) and not _is_pt2(model)) or _is_onnx_proto(model):
        src = str(model) if isinstance(model, str | os.PathLike) else model
    else:
        from nasc.backends.onnx import to_onnx

        src = to_onnx(graph)
    result["onnxruntime"] = round(fidelity.ort_latency_ms(src, feed), 4)
    return result


def _model_label(model: Any) -> str:
    """A model's name in the cost model's dataset: its file's stem, else its graph's name."""
    if isinstance(model, str | os.PathLike):
        return Path(model).stem
    return str(getattr(model, "name", "") or type(model).__name__)


def _is_onnx_proto(model: Any) -> bool:
    return type(model).__name__ == "ModelProto" or isinstance(model, bytes | bytearray)


def _reference(model: Any) -> tuple[Any, str] | None:
    """How to run the model as the user gave it, for the fidelity check (a Graph has no original)."""
    if isinstance(model, Graph):
        return None
    if _is_pt2(model):
        from nasc.frontends.torch import pt2_reference

        return pt2_reference(model), "torch on the original program"
    from nasc.backends import fidelity

    sess = fidelity.reference_session(str(model) if isinstance(model, str | os.PathLike) else model)
    return (lambda feed: fidelity.run_ort(sess, feed)), "onnxruntime on the original model"


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"'{out}' exists and is not a directory")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            old.rename(out)  # the previous build stays as it was
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
