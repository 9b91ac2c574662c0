"""CPU int8 latency: ONNX Runtime float and int8 (quantize_static) vs nasc float and int8 (integer kernels).

    python tools/bench_int8.py [--models digits,fashion,mobilenet_v2,resnet18,efficientnet_lite,minilm] [--write docs/benchmarks.md]
    python tools/bench_int8.py --profile [--write-profile docs/benchmarks.md]

Each table is ``nasc bench MODEL --calib CALIB`` (nasc.bench.bench): medians of one batch-1 run in this
process, the same inputs for every row; both int8 builds are calibrated on the same samples.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_tables import write_between_markers

ROOT = Path(__file__).resolve().parents[1]


#: the 1x3x224x224 models (tools/bench_cpu.py builds them) and their titles here
_IMAGENET = {"mobilenet_v2": "MobileNetV2 (ImageNet weights), 1x3x224x224",
             "resnet18": "ResNet-18 (seeded weights), 1x3x224x224",
             "efficientnet_lite": "EfficientNet-lite0-style (seeded weights), 1x3x224x224"}


def _model(name: str, tmp: Path) -> tuple[Path, Path, str]:
    if name == "digits":
        return ROOT / "examples" / "digits_cnn.onnx", ROOT / "examples" / "digits_test.npz", "example digits CNN"
    if name == "fashion":
        return (ROOT / "examples" / "fashion_cnn.onnx", ROOT / "examples" / "fashion_test.npz",
                "example Fashion-MNIST residual CNN (3x3 convolutions, 32-128 channels)")
    if name in _IMAGENET:
        from bench_cpu import _model as cpu_model  # the same modules as the float table: seeded weights

        from nasc.examples import zoo

        module, inputs, _ = cpu_model(name)
        path = zoo.export_onnx(module, inputs, tmp / f"{name}.onnx", dynamo=False, input_names=["image"],
                               output_names=["logits"])
        photos, _ = zoo.imagenet_photos(224)
        calib = np.concatenate([photos, photos[:, :, :, ::-1]]).astype(np.float32)  # the photos and their mirrors
        np.savez(tmp / "photos.npz", image=calib)
        return path, tmp / "photos.npz", _IMAGENET[name]
    if name == "minilm":
        from nasc.examples import zoo

        module, inputs = zoo.minilm(max_length=128, sentences=zoo.SENTENCES[:1])
        path = zoo.export_onnx(module, inputs, tmp / "minilm.onnx", dynamo=False, output_names=["last_hidden_state"])
        feeds = zoo.minilm_feeds(zoo.SENTENCES, 128)
        np.savez(tmp / "sentences.npz", **{k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]})
        return path, tmp / "sentences.npz", "all-MiniLM-L6-v2, sequence 128"
    raise SystemExit(f"unknown model {name}")


def profile(name: str, tmp: Path, top: int = 12) -> list[str]:
    """Markdown: the costliest kernels of nasc's int8 build and ONNX Runtime int8's time per op type, both
    calibrated as in the latency table (the first 64 calibration samples)."""
    from bench_cpu import profile_tables

    import nasc
    from nasc.backends import fidelity
    from nasc.bench import ort_int8

    path, calib, title = _model(name, tmp)
    graph = nasc.load(str(path))
    feeds = fidelity.load_calibration(str(calib), graph, limit=64)
    out = tmp / name
    out.mkdir()
    passes = "simplify,fuse,quantize"
    nasc.compile(graph, "cpu", out / "build", passes=passes, calib=feeds, measure_latency=False)
    ort_path = Path(ort_int8(str(path), feeds, str(out)))
    return [f"### {title}, int8", "", *profile_tables(out / "build", ort_path, dict(feeds[0]),
                                                      f"`{passes}`, integer kernels", top), ""]


def _cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return ", ".join(found) or "none of avx2/avx512/vnni"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="digits,fashion,mobilenet_v2,resnet18,efficientnet_lite,minilm")
    p.add_argument("--write", type=Path, default=None)
    p.add_argument("--profile", action="store_true",
                   help="per-kernel time of nasc's int8 build beside ONNX Runtime int8's per op type")
    p.add_argument("--write-profile", type=Path, default=None,
                   help="write the profile between bench_int8_profile markers of this file")
    args = p.parse_args()
    if args.profile:
        lines = [f"Produced by `python tools/bench_int8.py --profile` on {platform.machine()}, {os.cpu_count()} "
                 f"cores (CPU features: {_cpu_flags()}): one feed, batch 1.", ""]
        with tempfile.TemporaryDirectory() as d:
            for name in args.models.split(","):
                lines += profile(name, Path(d))
        print("\n".join(lines))
        if args.write_profile:
            write_between_markers(args.write_profile, "\n".join(lines), "bench_int8_profile")
        return
    from nasc.bench import bench

    lines = [f"Produced by `python tools/bench_int8.py` on {platform.machine()}, {os.cpu_count()} cores "
             f"(CPU features: {_cpu_flags()}). Median ms, batch 1.", ""]
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            path, calib, title = _model(name, Path(d))
            rows: list[dict[str, Any]] = bench(path, "cpu", calib=str(calib))
            lines += [f"### {title}", "", "| runtime | ms | vs ONNX Runtime float |", "|---|---:|---:|"]
            for r in rows:
                lines.append(f"| {r['runtime']} | {r['ms']:.3f} | {r['ratio']:.2f}x |")
                print(f"{title}: {r['runtime']:<70} {r['ms']:9.3f} ms {r['ratio']:6.2f}x")
            lines.append("")
    if args.write:
        write_between_markers(args.write, "\n".join(lines), "bench_int8")


if __name__ == "__main__":
    main()
