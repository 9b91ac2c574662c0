"""CPU benchmark: ONNX Runtime vs torch eager vs nasc's default-schedule build, one table per model.

    python tools/bench_cpu.py [--models mobilenet_v2,resnet18,transformer,minilm] [--write docs/benchmarks.md]
    python tools/bench_cpu.py --models transformer --export-onnx DIR    # DIR/transformer.onnx, for nasc compile

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

MODELS = ("mobilenet_v2", "resnet18", "transformer", "minilm")


def _model(name: str) -> tuple[Any, Any, str]:
    import torch

    from nasc.examples import zoo

    torch.manual_seed(0)
    if name == "mobilenet_v2":
        return zoo.mobilenet_v2(), (torch.zeros(1, 3, 224, 224),), "MobileNetV2, ImageNet weights, 1x3x224x224"
    if name == "resnet18":
        return zoo.resnet18(), (torch.zeros(1, 3, 224, 224),), "ResNet-18 (torchvision layout, seeded), 1x3x224x224"
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--write", type=Path, default=None)
    p.add_argument("--export-onnx", type=Path, default=None, metavar="DIR",
                   help="write DIR/<model>.onnx for each model (as benchmarked) and exit")
    args = p.parse_args()
    if args.export_onnx:
        for name in args.models.split(","):
            print(export_onnx(name, args.export_onnx))
        return
    import tvm

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
