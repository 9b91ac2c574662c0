"""Benchmark nasc's default TVM CPU schedules against ONNX Runtime and TVM's unscheduled build.

    python tools/bench_schedules.py [--models resnet18,mobilenetv2,transformer] [--runs 20]
                                    [--default-runs 3] [--no-default] [--cache /tmp/nasc-bench]

For each model (exported from torch with the TorchScript exporter, opset 17, batch 1):

* ORT: onnxruntime, 2 intra-op threads, all graph optimizations;
* TVM default: TVM's ONNX frontend, legalize + fuse ("zero" pipeline), ``tvm.compile`` (naive loops);
* TVM sched: the same import legalized as nasc's CPU build does it (fast-math exp/erf/tanh,
  ``legalize_and_fuse``), then ``apply_default_schedules`` before ``tvm.compile``.

Latency is the median over ``--runs`` runs; ORT and the scheduled build are timed in alternating blocks of
5 runs (each after a warm-up run) so background load hits both alike. The unscheduled build is slow: it
gets ``--default-runs`` runs, timed on its own. Numerics: max abs error of both TVM builds against ORT, and that error relative to
max |ORT output|. The last lines count which template scheduled each PrimFunc.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("resnet18", "mobilenetv2", "transformer")
THREADS = 2


def export(name: str, cache: Path) -> tuple[Path, np.ndarray]:
    """Export ``name`` to ONNX under ``cache`` (once) and return the path and an input."""
    import torch

    path = cache / f"{name}.onnx"
    rng = np.random.default_rng(0)
    if name == "transformer":
        x = rng.standard_normal((1, 64, 256)).astype(np.float32)
    else:
        x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    if path.exists():
        return path, x
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if name == "resnet18":
        from nasc.examples import zoo

        model = zoo.resnet18()
    elif name == "mobilenetv2":
        from nasc.examples import zoo

        model = zoo.mobilenet_v2(pretrained=False)
    elif name == "transformer":
        layer = torch.nn.TransformerEncoderLayer(
            d_model=256, nhead=4, dim_feedforward=1024, dropout=0.0, batch_first=True
        )
        model = torch.nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
    else:
        raise SystemExit(f"unknown model {name}")
    model.eval()
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), opset_version=17, dynamo=False)
    return path, x


def time_it(fn: Any, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_interleaved(fns: list[Any], runs: int, block: int = 5) -> list[float]:
    """Median ms of each of ``fns``, timed in alternating blocks of ``block`` runs (each block after one
    discarded warm-up run), so background load on the machine hits all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    while len(times[0]) < runs:
        for fn, ts in zip(fns, times, strict=True):
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(ts) for ts in times]


def ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def tvm_target() -> Any:
    import tvm

    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": THREADS})


def tvm_fused(path: Path, nasc_legalize: bool = False) -> Any:
    """Import with TVM's ONNX frontend and legalize + fuse (what apply_default_schedules expects): TVM's
    "zero" pipeline, or nasc's (the same with fast-math exp/erf/tanh) when ``nasc_legalize``."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from nasc.backends.tvm.build import legalize_and_fuse

    mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    seq = tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.FoldConstant(),
        ]
    )
    with tvm_target():
        mod = seq(mod)
        return legalize_and_fuse(mod) if nasc_legalize else relax.get_pipeline("zero")(mod)


def tvm_runner(mod: Any, x: np.ndarray) -> tuple[Any, np.ndarray, float]:
    """Compile ``mod``; return a zero-argument runner, the output and the build time in seconds."""
    import tvm
    from tvm import relax

    t0 = time.perf_counter()
    ex = tvm.compile(mod, tvm_target())
    build_s = time.perf_counter() - t0
    vm = relax.VirtualMachine(ex, tvm.cpu())
    inp = tvm.runtime.tensor(x)
    out = vm["main"](inp)
    if not hasattr(out, "numpy"):
        out = out[0]
    return (lambda: vm["main"](inp)), out.numpy(), build_s


def run_tvm(mod: Any, x: np.ndarray, runs: int) -> tuple[float, np.ndarray, float]:
    run, out, build_s = tvm_runner(mod, x)
    return time_it(run, runs, warmup=1 if runs < 5 else 3), out, build_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--default-runs", type=int, default=3)
    ap.add_argument("--no-default", action="store_true", help="skip TVM's unscheduled build")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "nasc-bench")
    args = ap.parse_args(argv)

    from nasc.backends.tvm.schedules import apply_default_schedules, schedule_report

    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    rows = []
    templates: Counter[str] = Counter()
    for name in args.models.split(","):
        path, x = export(name, cache=args.cache)
        sess = ort_session(path)
        in_name = sess.get_inputs()[0].name
        ref = sess.run(None, {in_name: x})[0]
        fused = tvm_fused(path)
        scale = float(np.abs(ref).max()) or 1.0
        if args.no_default:
            def_ms, def_err = float("nan"), float("nan")
        else:
            def_ms, def_out, _ = run_tvm(fused, x, args.default_runs)
            def_err = float(np.abs(def_out - ref).max())
        fused = tvm_fused(path, nasc_legalize=True)
        t0 = time.perf_counter()
        sched = apply_default_schedules(fused, tvm_target())
        sched_s = time.perf_counter() - t0
        report = schedule_report(sched)
        templates.update(report.values())
        tvm_fn, sch_out, build_s = tvm_runner(sched, x)
        ort_ms, sch_ms = time_interleaved([lambda s=sess, feed={in_name: x}: s.run(None, feed), tvm_fn], args.runs)
        sess = None
        gc.collect()
        sch_err = float(np.abs(sch_out - ref).max())
        counts = Counter(report.values())
        rows.append((name, ort_ms, def_ms, sch_ms, def_err, sch_err, scale, sched_s, build_s, counts))
        print(f"[{name}] done: {dict(counts)}", file=sys.stderr, flush=True)

    hdr = (
        f"{'model':<12} {'ORT ms':>8} {'TVM def ms':>11} {'TVM sched ms':>13} {'sched/ORT':>9} "
        f"{'err def':>9} {'err sched':>9} {'rel err':>9} {'sched s':>8} {'build s':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, ort_ms, def_ms, sch_ms, def_err, sch_err, scale, sched_s, build_s, _ in rows:
        print(
            f"{name:<12} {ort_ms:8.2f} {def_ms:11.1f} {sch_ms:13.2f} {sch_ms / ort_ms:8.2f}x "
            f"{def_err:9.2e} {sch_err:9.2e} {sch_err / scale:9.2e} {sched_s:8.1f} {build_s:8.1f}"
        )
    print()
    for name, *_, counts in rows:
        print(f"{name:<12} templates: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
