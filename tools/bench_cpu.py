"""CPU benchmark: ONNX Runtime vs torch eager vs nasc's default-schedule build, one table per model.

    python tools/bench_cpu.py [--models mobilenet_v2,resnet18,efficientnet_lite,transformer,minilm] [--write docs/benchmarks.md]
    python tools/bench_cpu.py --models transformer --export-onnx DIR    # DIR/transformer.onnx, for nasc compile
    python tools/bench_cpu.py --models mobilenet_v2 --profile [--write-profile docs/benchmarks.md]
    python tools/bench_cpu.py --prune 0.6 [--write-pruned docs/benchmarks.md]   # pruned models, padded or not

``--profile``: where the time goes, kernel by kernel: nasc's build (each compiled kernel timed through the VM's
instrumentation hook, as report.html shows it) beside ONNX Runtime's own profiler (per node, summed by op type).

All numbers are medians of one batch-1 run, measured in this process on the same
inputs after warm-up; ONNX Runtime runs with all graph optimizations and one thread per core.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_tables import write_between_markers

MODELS = ("mobilenet_v2", "resnet18", "efficientnet_lite", "transformer", "minilm")


def _model(name: str) -> tuple[Any, Any, str]:
    import torch

    from nasc.examples import zoo

    torch.manual_seed(0)
    if name == "mobilenet_v2":
        return zoo.mobilenet_v2(), (torch.zeros(1, 3, 224, 224),), "MobileNetV2, ImageNet weights, 1x3x224x224"
    if name == "resnet18":
        return zoo.resnet18(), (torch.zeros(1, 3, 224, 224),), "ResNet-18 (torchvision layout, seeded), 1x3x224x224"
    if name == "efficientnet_lite":
        return (zoo.efficientnet_lite(), (torch.zeros(1, 3, 224, 224),),
                "EfficientNet-lite0-style (9 MBConv blocks, depthwise 3x3 and 5x5, ReLU6, seeded), 1x3x224x224")
    if name == "transformer":
        layer = torch.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True)
        enc = torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False).eval()
        return enc, (torch.randn(1, 64, 256),), "Transformer encoder, 4 layers, d=256, 4 heads, seq 64"
    if name == "minilm":
        module, inputs = zoo.minilm(max_length=128)
        return module, inputs, "all-MiniLM-L6-v2, seq 128"
    raise SystemExit(f"unknown model {name}")


def _save_pt2(name: str, path: Path) -> str:
    import torch

    module, inputs, title = _model(name)
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, dict) else (tuple(inputs), {})
    torch.export.save(torch.export.export(module.eval(), args, kwargs), str(path))
    return title


def run(name: str) -> tuple[str, list[dict[str, Any]], float]:
    from nasc.bench import bench

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pt2"
        title = _save_pt2(name, path)
        rows = bench(path, "cpu")
    return title, rows, time.perf_counter() - t0


def export_onnx(name: str, out_dir: Path) -> Path:
    """The model as the benchmark sees it (torch.export, nasc's import), written by nasc's ONNX exporter:
    the ONNX model ONNX Runtime runs in the table, and an input for ``nasc compile``."""
    import nasc

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pt2"
        _save_pt2(name, path)
        return nasc.export_onnx(nasc.load(str(path)), out_dir / f"{name}.onnx")


def pruned(name: str, macs: float, tmp: Path) -> list[tuple[str, float]]:
    """The model and ``prune{macs=...}`` of it, built by nasc with channel padding (the default), without it
    (NASC_PAD_CHANNELS=0), and with round-to at the vector width, beside ONNX Runtime on both ONNX files; all
    timed in turns (runtime.interleaved_ms)."""
    import nasc
    from nasc import runtime
    from nasc.backends.fidelity import ort_session, random_inputs
    from nasc.backends.tvm.schedules import vector_lanes
    from nasc.backends.tvm.target import TvmTarget, host_cpu

    lanes = vector_lanes(TvmTarget("cpu", {"kind": "llvm", "mcpu": host_cpu()}).tvm())
    src = export_onnx(name, tmp)
    base = nasc.optimize(nasc.load(str(src)), "simplify,fuse")
    feed = random_inputs(base, 0, 1)[0]
    graphs = {"unpruned": base, f"prune{{macs={macs}}}": nasc.optimize(base, f"prune{{macs={macs}}}"),
              f"prune{{macs={macs} round-to={lanes}}}": nasc.optimize(base, f"prune{{macs={macs} round-to={lanes}}}")}
    fns: list[tuple[str, Any]] = []
    for label, g in graphs.items():
        onnx_path = nasc.export_onnx(g, tmp / f"{name}-{len(fns)}.onnx")
        sess = ort_session(str(onnx_path))
        fns.append((f"onnxruntime, {label}", lambda s=sess: s.run(None, feed)))
        pads = (True, False) if label.endswith(f"{macs}}}") else (True,)
        for pad in pads:
            out = tmp / f"{name}-{len(fns)}"
            os.environ["NASC_PAD_CHANNELS"] = "1" if pad else "0"
            try:
                nasc.compile(g, "cpu", out, measure_latency=False)
            finally:
                os.environ.pop("NASC_PAD_CHANNELS")
            m = runtime.load(out)
            what = "" if label == "unpruned" or "round-to" in label else (
                ", channels padded" if pad else ", NASC_PAD_CHANNELS=0")
            fns.append((f"nasc cpu, {label}{what}", lambda m=m: m.run(feed)))
    ms = runtime.interleaved_ms([f for _, f in fns])
    return [(label, t) for (label, _), t in zip(fns, ms, strict=True)]


def profile(name: str, top: int = 15) -> list[str]:
    """Markdown: nasc's costliest kernels and ONNX Runtime's time per op type on the same ONNX model."""
    import numpy as np

    import nasc

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(name, Path(tmp))
        graph = nasc.load(str(onnx_path))
        rng = np.random.default_rng(0)
        feed = {v.name: rng.standard_normal(v.shape).astype(np.float32) if v.dtype == "f32"
                else np.zeros(v.shape, np.int64) for v in graph.inputs}
        nasc.compile(onnx_path, "cpu", Path(tmp) / "build", passes="simplify,fuse", measure_latency=False)
        return [f"### {_model(name)[2]}", "", *profile_tables(Path(tmp) / "build", onnx_path, feed,
                                                                "`simplify,fuse`, default schedules", top), ""]


def profile_tables(build_dir: Path, onnx_path: Path, feed: dict[str, Any], what: str, top: int = 15) -> list[str]:
    """Markdown: the costliest kernels of the nasc build in ``build_dir`` and ONNX Runtime's time per op type
    on ``onnx_path`` (its own profiler), both on ``feed``."""
    import json

    import onnxruntime as ort

    from nasc.runtime import load as load_compiled

    built = load_compiled(build_dir)
    total_ms = built.latency_ms(feed)
    kernels = sorted(built.kernel_ms(feed, repeat=30), key=lambda k: -k["ms"])
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(build_dir / "ort")
    opts.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    for _ in range(5):
        sess.run(None, feed)
    t0 = time.perf_counter()
    runs = 30
    for _ in range(runs):
        sess.run(None, feed)
    ort_ms = (time.perf_counter() - t0) * 1e3 / runs
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + e["dur"] / 1e3 / (runs + 5)
    kern_total = sum(k["ms"] for k in kernels)
    lines = [f"nasc ({what}): {total_ms:.2f} ms per inference; its kernels sum to {kern_total:.2f} ms. "
             f"ONNX Runtime: {ort_ms:.2f} ms per inference (profiling on).", "",
             f"| nasc kernel (the {top} costliest of {len(kernels)}) | calls | ms | share |", "|---|---:|---:|---:|"]
    lines += [f"| `{k['kernel']}` | {k['calls']} | {k['ms']:.3f} | {k['ms'] / kern_total:.1%} |" for k in kernels[:top]]
    ort_total = sum(by_op.values())
    lines += ["", "| ONNX Runtime op type | ms | share |", "|---|---:|---:|"]
    lines += [f"| {op} | {ms:.3f} | {ms / ort_total:.1%} |" for op, ms in sorted(by_op.items(), key=lambda x: -x[1])]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--write", type=Path, default=None)
    p.add_argument("--profile", action="store_true", help="per-kernel time of nasc's build beside ONNX Runtime's")
    p.add_argument("--write-profile", type=Path, default=None, help="write the profile between bench_cpu_profile "
                   "markers")
    p.add_argument("--export-onnx", type=Path, default=None, metavar="DIR",
                   help="write DIR/<model>.onnx for each model (as benchmarked) and exit")
    p.add_argument("--prune", type=float, default=None, metavar="MACS",
                   help="time prune{macs=MACS} of each model: padded (default), unpadded, round-to, and ONNX Runtime")
    p.add_argument("--write-pruned", type=Path, default=None, help="write that table between bench_cpu_pruned markers")
    args = p.parse_args()
    if args.prune is not None:
        import tvm

        out = [f"Produced by `python tools/bench_cpu.py --models {args.models} --prune {args.prune}` on "
               f"{platform.machine()}, {os.cpu_count()} cores, LLVM mcpu `{tvm.target.codegen.llvm_get_system_cpu()}`"
               f". Median ms of one batch-1 run, all rows of a model timed in turns; no tuning.", ""]
        for name in args.models.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                rows = pruned(name, args.prune, Path(tmp))
            base = rows[1][1]
            out += [f"## {name}", "", "| runtime, model | ms | vs nasc unpruned |", "|---|---:|---:|"]
            out += [f"| {label} | {t:.3f} | {t / base:.2f}x |" for label, t in rows] + [""]
            print("\n".join(out[-len(rows) - 3:]))
        if args.write_pruned:
            write_between_markers(args.write_pruned, "\n".join(out), "bench_cpu_pruned")
        return
    if args.export_onnx:
        for name in args.models.split(","):
            print(export_onnx(name, args.export_onnx))
        return
    import tvm

    if args.profile:
        out = [f"Produced by `python tools/bench_cpu.py --models {args.models} --profile` on {platform.machine()}, "
               f"{os.cpu_count()} cores, LLVM mcpu `{tvm.target.codegen.llvm_get_system_cpu()}`, batch 1.", ""]
        for name in args.models.split(","):
            out += profile(name)
        print("\n".join(out))
        if args.write_profile:
            write_between_markers(args.write_profile, "\n".join(out), "bench_cpu_profile")
        return
    lines = [f"Produced by `python tools/bench_cpu.py` on {platform.machine()}, "
             f"{os.cpu_count()} cores, LLVM mcpu `{tvm.target.codegen.llvm_get_system_cpu()}`, "
             f"TVM {tvm.__version__}. Median ms of one batch-1 run; no tuning (default schedules).", ""]
    for name in args.models.split(","):
        title, rows, secs = run(name)
        print(f"\n{title} ({secs:.0f} s)")
        lines += [f"## {title}", "", "| runtime | ms | vs ONNX Runtime |", "|---|---:|---:|"]
        for r in rows:
            print(f"  {r['runtime']:<60} {r['ms']:9.3f} ms  {r['ratio']:6.2f}x")
            lines.append(f"| {r['runtime']} | {r['ms']:.3f} | {r['ratio']:.2f}x |")
        lines.append("")
    if args.write:
        write_between_markers(args.write, "\n".join(lines), "bench_cpu")


if __name__ == "__main__":
    main()
