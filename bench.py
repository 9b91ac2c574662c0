"""``nasc bench``: one latency table for a model — ONNX Runtime, torch eager (for .pt2), nasc's build."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def bench(model: Any, target: str = "cpu", *, input_shapes: Mapping[str, Sequence[int]] | None = None,
          passes: str = "simplify,fuse", seed: int = 0, tune_trials: int = 0,
          tuning_db: str | None = None, calib: str | None = None) -> list[dict[str, Any]]:
    """Rows of (runtime, median ms, ratio to ONNX Runtime), all measured in this process on the same inputs:
    every runtime is built first, then they are timed in turns (5 rounds of a block of runs each), so that
    background load and clock changes fall on all of them alike.

    With ``calib`` (an .npz of calibration inputs) it adds int8: ONNX Runtime's ``quantize_static`` (QDQ,
    per-channel int8 weights, uint8 activations) and nasc's builds with ``quantize`` and
    ``quantize{reduce-range=true}`` (7-bit weights) appended to ``passes`` (integer kernels), all calibrated
    on the same samples.
    """
    from nasc.api import _check_calib_arg, _check_numbers, _is_pt2, compile, load
    from nasc.backends import fidelity
    from nasc.backends.onnx import to_onnx
    from nasc.runtime import interleaved_ms
    from nasc.runtime import load as load_compiled

    _check_target(target)
    _check_numbers(seed=seed, tune_trials=tune_trials)
    _check_calib_arg(calib)
    graph = load(model, input_shapes)
    feed = fidelity.random_inputs(graph, seed)[0]
    timed: list[tuple[str, Callable[[], Any]]] = []  # every runtime is built first, then all are timed in turns
    onnx_src = to_onnx(graph) if _is_pt2(model) or not isinstance(model, str | os.PathLike) else str(model)
    timed.append((f"onnxruntime (all optimizations, {os.cpu_count()} threads)", fidelity.ort_runner(onnx_src, feed)))
    if _is_pt2(model):
        import torch

        from nasc.frontends.torch import pt2_inputs, read_pt2, torch_quiet

        ep = read_pt2(model)
        with torch_quiet():
            mod = ep.module()
        args, kwargs = pt2_inputs(ep, feed)

        def eager() -> None:
            with torch.no_grad(), torch_quiet():
                mod(*args, **kwargs)

        timed.append(("torch eager", eager))
    with tempfile.TemporaryDirectory() as tmp:
        art = compile(graph, target, os.path.join(tmp, "build"), passes=passes, measure_latency=False)
        timed.append((f"nasc {target} (default schedules, passes {passes})", load_compiled(art.out).runner(feed)))
        builds = [(len(timed) - 1, art.out, passes)]  # (row, build directory, pipeline): nasc's rows
        if tune_trials:
            t0 = time.perf_counter()
            art = compile(graph, target, os.path.join(tmp, "tuned"), passes=passes, measure_latency=False,
                          tune_trials=tune_trials, tuning_db=tuning_db)
            tuning = art.report["build"]["tuning"]
            timed.append((f"nasc {target} tuned ({tuning['trials']} new trials, {tuning['reused']} of "
                          f"{tuning['tasks']} kernels from the database, {time.perf_counter() - t0:.0f} s)",
                          load_compiled(art.out).runner(feed)))
            builds.append((len(timed) - 1, art.out, passes))
        if calib:
            rows, int8_builds = _int8_runners(graph, onnx_src, target, passes, calib, feed, tmp)
            builds += [(len(timed) + i, out, pipeline) for i, out, pipeline in int8_builds]
            timed += rows
        ms = interleaved_ms([fn for _, fn in timed])
        from nasc.api import _model_label
        from nasc.hw_search.profile import record_build

        for i, out, pipeline in builds:  # what was measured feeds the cost model (hw_search/perfdata.py)
            record_build(out, feed, ms[i], model=_model_label(model), pipeline=pipeline)
    return [{"runtime": label, "ms": m, "ratio": m / ms[0]} for (label, _), m in zip(timed, ms, strict=True)]


def _check_target(target: str) -> None:
    """bench times nasc's build here: a CPU target, or a GPU one on a host with a CUDA device."""
    from nasc.backends.targets import TvmTarget, parse_target
    from nasc.backends.tvm.target import cuda_device
    from nasc.errors import UsageError

    try:
        tgt = parse_target(target)
    except UsageError:
        if str(target).strip().split(":")[0] in ("cpu", "gpu") or str(target).strip().startswith("{"):
            raise  # a CPU or GPU target with a bad mcpu or arch: its own message
        tgt = None
    if isinstance(tgt, TvmTarget) and (tgt.kind == "cpu" or cuda_device() is not None):
        return
    raise UsageError(f"bench --target {target}: bench times nasc's TVM build against ONNX Runtime on this host; "
                     "use cpu or cpu:<llvm-mcpu> (gpu on a host with a CUDA device)")


def ort_int8(onnx_src: Any, feeds: Sequence[Mapping[str, Any]], tmp: str) -> str:
    """ONNX Runtime's int8 model of ``onnx_src`` (a path or ModelProto) calibrated on ``feeds``: quantize_static,
    QDQ, per-channel int8 weights, uint8 activations; its path under ``tmp``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    src = os.path.join(tmp, "float.onnx")
    onnx.save(onnx_src if not isinstance(onnx_src, str) else onnx.load(onnx_src), src)
    dst = os.path.join(tmp, "ort_int8.onnx")
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


def _int8_runners(graph: Any, onnx_src: Any, target: str, passes: str, calib: str, feed: Mapping[str, Any],
                  tmp: str) -> tuple[list[tuple[str, Callable[[], Any]]], list[tuple[int, Any, str]]]:
    """The rows of ONNX Runtime's int8 and nasc's two int8 builds, and the builds as (row, directory, pipeline)."""
    from nasc.api import compile
    from nasc.backends import fidelity
    from nasc.runtime import load as load_compiled

    feeds = fidelity.load_calibration(calib, graph, limit=64)
    dst = ort_int8(onnx_src, feeds, tmp)
    rows = [("onnxruntime int8 (quantize_static: QDQ, per-channel)", fidelity.ort_runner(dst, feed))]
    builds = []
    # full-range int8 weights, and 7-bit ones (reduce-range: on AVX2 without VNNI the uint8 x int8 pair sums
    # then fit int16, so the matmuls use vpmaddubsw; see backends/tvm/x86_int8.py)
    for i, quantize in enumerate(("quantize", "quantize{reduce-range=true}")):
        q_passes = f"{passes},{quantize}" if passes else quantize
        art = compile(graph, target, os.path.join(tmp, f"int8_{i}"), passes=q_passes, calib=feeds,
                      measure_latency=False)
        integer = art.report.get("build", {}).get("integer", {})
        left = f", {len(integer['float_ops'])} ops in float" if integer.get("float_ops") else ""
        rows.append((f"nasc {target} int8 (passes {q_passes}, integer kernels{left})",
                     load_compiled(art.out).runner(feed)))
        builds.append((len(rows) - 1, art.out, q_passes))
    return rows, builds
