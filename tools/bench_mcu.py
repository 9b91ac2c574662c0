"""MCU memory benchmark: nasc's arena vs the lower bound vs TVM's StaticPlanBlockMemory vs all tensors.

    python tools/bench_mcu.py [--models digits,mobilenet_v2_035,ds_cnn,transformer] [--verify host]
                              [--write docs/benchmarks.md]

Each model is compiled with ``nasc compile --target mcu:cortex-m4 --passes simplify,fuse`` and checked
on the host (``--verify``, default host; ``qemu`` runs it on the emulated Cortex-M4). Flash is text + data
of the model's objects from ``arm-none-eabi-size`` (weights included; no harness, no libc).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_tables import write_between_markers

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("digits", "mobilenet_v2_035", "ds_cnn", "transformer")


def _export(name: str, tmp: Path) -> tuple[Path, str]:
    if name == "digits":
        return ROOT / "examples" / "digits_cnn.onnx", "example digits CNN, 1x1x8x8"
    import torch

    from nasc.examples import zoo

    torch.manual_seed(0)
    if name == "mobilenet_v2_035":
        model = zoo._mobilenet_classes()[2](num_classes=1000, width_mult=0.35).eval()
        zoo._randomize_bn_stats(model, 1)
        x: tuple[Any, ...] = (torch.randn(1, 3, 96, 96),)
        title = "MobileNetV2-0.35, 1x3x96x96 (seeded weights)"
    elif name == "ds_cnn":
        model, x, title = zoo.ds_cnn(), (torch.randn(1, 1, 49, 10),), "DS-CNN-S keyword spotting, 1x1x49x10"
    elif name == "transformer":
        model, x = zoo.vit_block(dim=96, heads=3), (torch.randn(1, 49, 96),)
        title = "transformer block (ViT, d=96, 3 heads, 49 tokens)"
    else:
        raise SystemExit(f"unknown model {name}; models: {', '.join(MODELS)}")
    return zoo.export_onnx(model, x, tmp / f"{name}.onnx", dynamo=False), title


def run(name: str, verify: str, int8: bool = False) -> dict[str, Any]:
    import nasc
    from nasc.backends.mcu.boards import BOARDS
    from nasc.backends.mcu.build import c_target
    from nasc.backends.mcu.kernels import tvm_static_plan_bytes
    from nasc.backends.tvm.lower import to_relax

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path, title = _export(name, tmp)
        passes = "simplify,fuse,quantize" if int8 else "simplify,fuse"
        calib = _calibration(name, path) if int8 else None
        t0 = time.perf_counter()
        art = nasc.compile(path, "mcu:cortex-m4", tmp / "out", passes=passes, verify_on=verify, budget_check=False,
                           calib=calib)
        secs = time.perf_counter() - t0
        graph = nasc.optimize(nasc.load(path), passes, calib)
        tvm_plan = tvm_static_plan_bytes(to_relax(graph), c_target(BOARDS["cortex-m4"]))
    r = art.report
    err = max(v["max_abs_err"] for v in r["verify"].values()) if r.get("verify") else None
    return {"title": title + (" int8" if int8 else ""), "arena": r["arena_bytes"], "bound": r["arena_lower_bound_bytes"], "tvm": tvm_plan,
            "naive": r["naive_bytes"], "weights": r["weights_bytes"], "flash": r["flash_bytes"],
            "kernels": r["kernels"], "steps": len(r["steps"]), "err": err, "secs": secs, "plan": r["plan"]}


def _calibration(name: str, path: Path) -> Any:
    """The digits' test images; seeded random inputs elsewhere (memory does not depend on the ranges)."""
    import nasc
    from nasc.backends import fidelity

    graph = nasc.load(path)
    if name == "digits":
        return fidelity.load_calibration(str(ROOT / "examples" / "digits_test.npz"), graph)
    return fidelity.random_inputs(graph, 0, 8)


def _kb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1024:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--verify", default="host", help="host, qemu, host,qemu or none")
    p.add_argument("--write", type=Path, default=None)
    p.add_argument("--no-int8", action="store_true", help="float32 rows only")
    args = p.parse_args()
    rows = []
    for name in args.models.split(","):
        for int8 in (False, True) if not args.no_int8 else (False,):
            row = run(name, args.verify, int8)
            rows.append(row)
            print(f"{row['title']}: arena {row['arena']} B, lower bound {row['bound']} B, TVM {row['tvm']} B, "
                  f"all tensors {row['naive']} B, weights {row['weights']} B, flash {row['flash']} B, "
                  f"max abs err {row['err']}, {row['secs']:.0f} s ({row['plan']})")
    lines = [
        f"Produced by `python tools/bench_mcu.py --verify {args.verify}` (`--target mcu:cortex-m4 --passes "
        "simplify,fuse`; *int8* rows add `quantize`, compiled to integer kernels: uint8 activations, int8 "
        "weights, int32 bias, int64 per-channel multipliers and shifts). KiB; max abs err of int8 rows is the "
        "quantization error against the float original. *arena*: nasc's static arena (kernel workspaces included); *lower "
        "bound*: the most bytes live at one step of the chosen order; *TVM*: the storage TVM's "
        "StaticPlanBlockMemory allocates for the same fused module (workspaces not counted); *all tensors*: "
        "every intermediate in its own buffer. Flash: text + data of the model's objects "
        "(`arm-none-eabi-size`, -Os).", "",
        "| model | arena | lower bound | TVM plan | all tensors | weights | flash | kernels | max abs err vs ORT |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        err = "n/a" if r["err"] is None else f"{r['err']:.1e}"
        lines.append(f"| {r['title']} | {_kb(r['arena'])} | {_kb(r['bound'])} | {_kb(r['tvm'])} | {_kb(r['naive'])} "
                     f"| {_kb(r['weights'])} | {_kb(r['flash'])} | {r['kernels']} | {err} |")
    print("\n".join(lines))
    if args.write:
        write_between_markers(args.write, "\n".join(lines), "bench_mcu")


if __name__ == "__main__":
    main()
