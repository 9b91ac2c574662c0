"""Quantization quality: float vs nasc int8 vs nasc's mixed int8/int4 policy vs ONNX Runtime's quantize_static.

    python tools/bench_quant.py [--models digits,mobilenet_v2,minilm] [--flash-fraction 0.3,0.2] [--write docs/benchmarks.md]

Every row is an ONNX model run by ONNX Runtime (CPU) on the same inputs, so the figures differ only by how
the model was quantized. Rows:

* float: the model as exported (the reference);
* nasc int8: ``simplify,fuse,quantize{bits=8}`` (per-channel symmetric int8 weights, per-tensor uint8
  activations, min/max calibration, int32 biases, bias correction);
* nasc mixed: ``simplify,fuse,quant-policy{bits=8,4 flash=<F x float param bytes>B},quantize``, one row per
  ``--flash-fraction`` F (param bytes as ``nasc.load(model).summary()["param_bytes"]``);
* ORT: ``onnxruntime.quantization.quantize_static`` after ``quant_pre_process``, QDQ format, per-channel QInt8
  weights, QUInt8 activations, min/max calibration, fed the same calibration samples as nasc; once with its
  default op types, once restricted to Conv/Gemm/MatMul (the ops nasc quantizes).

The accuracy figures run each QDQ model with ORT's graph optimizations off, i.e. as the ONNX spec defines it
(quantize/dequantize rounding, float arithmetic between): they measure the quantization, not a kernel. The
"ORT optimized" column repeats the main figure with all optimizations on, where ORT turns the QDQ groups it
recognises into integer kernels ("ORT int kernels" counts them among the conv/matmul ops): on x86 without VNNI
its u8s8 kernels can saturate, which costs accuracy that is ORT's, not the quantization's.

"weight bytes" is the storage of every initializer and Constant tensor in the ONNX file (int4 packed two per
byte), computed the same way for every row: quantized weights plus their scales and zero points, int32 biases
and whatever float tensors remain. "file" is the size of ``model.onnx``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("digits", "mobilenet_v2", "minilm")
MARKER = "bench_quant"
OPT = "ORT optimized"  # figure key: the primary figure with ORT's graph optimizations (integer kernels) on

Feed = dict[str, np.ndarray]
Outputs = dict[str, list[list[np.ndarray]]]  # eval set name -> per-feed outputs


@dataclass
class Case:
    """One model: its float ONNX file, calibration feeds, evaluation sets and how outputs become figures."""

    key: str
    title: str
    path: Path
    calib: list[Feed]
    eval_sets: dict[str, list[Feed]]
    columns: list[str]
    score: Callable[[Outputs, Outputs], dict[str, float]]  # (outputs, float outputs) -> column -> value
    primary: str  # the accuracy figure the goal checks compare
    tol: float  # "at least as accurate": not below the other by more than this
    equal_tol: float  # "equal accuracy" for the mixed policy
    notes: list[str] = field(default_factory=list)


@dataclass
class Row:
    kind: str  # float, nasc8, mixed, ort
    label: str
    path: Path | None = None
    figures: dict[str, float] = field(default_factory=dict)
    weight_bytes: int = 0
    file_bytes: int = 0
    seconds: float = 0.0
    kernels: tuple[int, int] = (0, 0)  # (integer, all) conv/matmul kernels ORT ran with optimizations on
    detail: str = ""
    error: str = ""


# ---- weight bytes -----------------------------------------------------------------------------------------


def tensor_bytes(t: Any) -> int:
    """Storage of one TensorProto from its dims and element type (int4/uint4/float4 packed two per byte)."""
    import onnx
    from onnx import helper

    n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    packed = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    packed |= {onnx.TensorProto.FLOAT4E2M1} if hasattr(onnx.TensorProto, "FLOAT4E2M1") else set()
    if t.data_type in packed:
        return (n + 1) // 2
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def weight_bytes(model: Any) -> int:
    """Sum of the storage of the initializers and Constant-node tensors of ``model`` (an onnx.ModelProto)."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    return sum(tensor_bytes(t) for t in tensors)


# ---- the quantizers ---------------------------------------------------------------------------------------


def nasc_quantize(src: Path, out: Path, passes: str, calib: list[Feed]) -> tuple[Path, str]:
    import nasc

    art = nasc.compile(str(src), "onnx", out, passes=passes, calib=calib, measure_latency=False)
    return art.out / "model.onnx", _policy_detail(art.report)


def _policy_detail(report: dict[str, Any]) -> str:
    """'int8 x3, int4 x1 layers': the weight widths the quantize pass applied, from its report."""
    counts: dict[str, int] = {}
    for entry in report.get("passes", []):
        if isinstance(entry, dict) and str(entry.get("pass", "")).split("{")[0] == "quantize":
            for k, v in (entry.get("rewrites") or {}).items():
                bits, _, rest = str(k).partition("-")
                if bits in ("int8", "int4") and not rest.startswith("act"):
                    counts[bits] = counts.get(bits, 0) + int(v)
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), reverse=True)) + (" layers" if counts else "")


class _Reader:
    """An onnxruntime CalibrationDataReader over a list of feeds (restricted to the model's inputs)."""

    def __init__(self, feeds: list[Feed], names: set[str]) -> None:
        self._it = iter([{k: v for k, v in f.items() if k in names} for f in feeds])

    def get_next(self) -> Feed | None:
        return next(self._it, None)


ORT_OPS = ("Conv", "Gemm", "MatMul")  # the ops nasc's quantize pass quantizes (for the restricted ORT row)


def ort_quantize(src: Path, out: Path, calib: list[Feed], ops: Sequence[str] | None = None) -> tuple[Path, str]:
    """quantize_static (QDQ, per-channel QInt8 weights, QUInt8 activations, min/max) after quant_pre_process;
    ``ops`` restricts it to those op types (default: every op type ORT's QDQ quantizer handles)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.mkdir(parents=True, exist_ok=True)
    pre, dst = out / "preprocessed.onnx", out / "model.onnx"
    if Path(src).parent != out:  # quant_pre_process leaves scratch files beside its input: keep them in out
        shutil.copy(src, out / "float.onnx")
        src = out / "float.onnx"
    try:
        quant_pre_process(str(src), str(pre))
        model_in, detail = pre, ""
    except Exception as e:  # the tool reports it and goes on
        model_in, detail = src, f"quant_pre_process failed ({type(e).__name__}), quantized as exported"
    names = {i.name for i in onnx.load(str(model_in), load_external_data=False).graph.input}
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(calib, names)
    quantize_static(str(model_in), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=list(ops) if ops else None)
    pre.unlink(missing_ok=True)
    return dst, detail


# ---- the models -------------------------------------------------------------------------------------------


def digits_case(tmp: Path) -> Case:
    data = np.load(ROOT / "examples" / "digits_test.npz")
    images, labels = data["image"].astype(np.float32), data["label"]
    feeds = [{"image": images[i : i + 1]} for i in range(len(images))]
    n_cal = 120

    def score(out: Outputs, ref: Outputs) -> dict[str, float]:
        pred = np.array([int(np.argmax(o[0])) for o in out["test"]])
        return {"accuracy (360)": float(np.mean(pred == labels)),
                "held-out accuracy (240)": float(np.mean(pred[n_cal:] == labels[n_cal:]))}

    return Case("digits", "example digits CNN (examples/digits_cnn.onnx, 8x8 digits)",
                ROOT / "examples" / "digits_cnn.onnx", feeds[:n_cal], {"test": feeds},
                ["accuracy (360)", "held-out accuracy (240)"], score, "accuracy (360)", 0.0, 0.01,
                [f"Calibration: test samples 0..{n_cal - 1}; accuracy on all {len(feeds)} test samples and on the "
                 f"{len(feeds) - n_cal} not used for calibration ({n_cal}..{len(feeds) - 1})."])


def _preprocess(img: np.ndarray, size: int = 224) -> np.ndarray:
    """zoo.imagenet_photos' preprocessing (resize shorter side to size*256/224, center crop, normalise) for
    an arbitrary HxW[xC] uint8 image."""
    import skimage.transform

    from nasc.examples import zoo

    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3].astype(np.float32) / 255.0
    resize_to = round(size * 256 / 224)
    h, w = img.shape[:2]
    scale = resize_to / min(h, w)
    nh, nw = max(resize_to, round(h * scale)), max(resize_to, round(w * scale))
    img = skimage.transform.resize(img, (nh, nw), order=1, anti_aliasing=True, preserve_range=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    img = (img[top : top + size, left : left + size] - zoo.IMAGENET_MEAN) / zoo.IMAGENET_STD
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def mobilenet_case(tmp: Path) -> Case:
    import skimage.data
    import torch

    from nasc.examples import zoo

    path = zoo.export_onnx(zoo.mobilenet_v2(), (torch.zeros(1, 3, 224, 224),), tmp / "mobilenet_v2.onnx",
                           dynamo=False, input_names=["image"], output_names=["logits"])
    photos, names = zoo.imagenet_photos(224)
    big, _ = zoo.imagenet_photos(256)  # 292-pixel resize, 256 center crop: room for shifted 224 crops
    calib = [photos[i : i + 1] for i in range(len(photos))]
    calib += [np.ascontiguousarray(photos[i : i + 1, :, :, ::-1]) for i in range(len(photos))]  # h-flips
    calib += [np.ascontiguousarray(big[i : i + 1, :, y : y + 224, x : x + 224])
              for i in range(len(big)) for y, x in ((0, 0), (32, 32))]  # top-left, bottom-right crops
    held = [_preprocess(skimage.data.camera()), _preprocess(skimage.data.stereo_motorcycle()[0])]
    held += [np.ascontiguousarray(h[:, :, :, ::-1]) for h in held]

    def score(out: Outputs, ref: Outputs) -> dict[str, float]:
        res = {}
        for name, label in (("photos", "4 photos"), ("held", "held-out (4)")):
            top = [int(np.argmax(o[0])) == int(np.argmax(r[0])) for o, r in zip(out[name], ref[name], strict=True)]
            cos = [_cosine(o[0], r[0]) for o, r in zip(out[name], ref[name], strict=True)]
            res[f"top-1 agree, {label}"] = float(np.mean(top))
            res[f"logit cosine, {label}"] = float(np.mean(cos))
        return res

    cols = ["top-1 agree, 4 photos", "logit cosine, 4 photos", "top-1 agree, held-out (4)",
            "logit cosine, held-out (4)"]
    return Case("mobilenet_v2", "MobileNetV2, ImageNet weights, 1x3x224x224", path,
                [{"image": c} for c in calib],
                {"photos": [{"image": p} for p in calib[:4]], "held": [{"image": h} for h in held]},
                cols, score, "logit cosine, 4 photos", 1e-4, 0.005,
                [f"Calibration: {len(calib)} images: the 4 scikit-image photos ({', '.join(names)}), their "
                 "horizontal flips, and top-left / bottom-right 224 crops of the same photos preprocessed at 256. "
                 "Figures vs the float model: top-1 agreement and mean cosine of the logits, on the 4 photos "
                 "(also in the calibration set) and on 4 held-out images (scikit-image camera and "
                 "stereo_motorcycle left view, and their flips). No labelled ImageNet data is available offline, "
                 "so there is no accuracy figure."])


HELD_OUT_SENTENCES = [
    "A woman is slicing an onion.",
    "Children are playing football in the park.",
    "The stock market fell sharply today.",
    "A cat sleeps on the warm windowsill.",
    "He plays the guitar at night.",
    "The train arrived late at the station.",
    "A chef is cooking pasta in a kitchen.",
    "Rain is expected for the weekend.",
]


def minilm_case(tmp: Path, seq: int = 32) -> Case:
    from nasc.examples import zoo

    module, example = zoo.minilm(max_length=seq, sentences=zoo.SENTENCES[:1])
    path = zoo.export_onnx(module, example, tmp / "minilm.onnx", dynamo=False, output_names=["last_hidden_state"])
    sets = {"seen": zoo.minilm_feeds(zoo.SENTENCES, seq), "held": zoo.minilm_feeds(HELD_OUT_SENTENCES, seq)}

    def score(out: Outputs, ref: Outputs) -> dict[str, float]:
        res = {}
        for name, label in (("seen", "8 sentences"), ("held", "held-out (8)")):
            cos = [_cosine(zoo.sentence_embedding(o[0], f["attention_mask"]),
                           zoo.sentence_embedding(r[0], f["attention_mask"]))
                   for o, r, f in zip(out[name], ref[name], sets[name], strict=True)]
            res[f"embedding cosine mean, {label}"] = float(np.mean(cos))
            res[f"min, {label}"] = float(np.min(cos))
        return res

    cols = ["embedding cosine mean, 8 sentences", "min, 8 sentences", "embedding cosine mean, held-out (8)",
            "min, held-out (8)"]
    return Case("minilm", f"all-MiniLM-L6-v2, batch 1, seq {seq} (TorchScript exporter, opset 17)", path,
                sets["seen"], sets, cols, score, "embedding cosine mean, 8 sentences", 1e-4, 0.005,
                [f"Calibration: the {len(zoo.SENTENCES)} sentences of zoo.SENTENCES, one per run, padded to {seq}. "
                 "Figures: cosine between the quantized and float sentence embeddings (mean-pooled over the mask, "
                 f"L2-normalised), mean and min over those sentences and over {len(HELD_OUT_SENTENCES)} held-out "
                 "sentences (in tools/bench_quant.py)."])


CASES: dict[str, Callable[[Path], Case]] = {"digits": digits_case, "mobilenet_v2": mobilenet_case,
                                            "minilm": minilm_case}


# ---- running a case ---------------------------------------------------------------------------------------


INT_KERNELS = {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "QAttention",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits", "QLinearConvTranspose"}
FLOAT_KERNELS = {"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
                 "Attention", "MultiHeadAttention"}


def _evaluate(path: Path, case: Case, optimized: bool) -> tuple[Outputs, tuple[int, int]]:
    """Outputs on the case's evaluation sets under ONNX Runtime, and (integer, all) conv/matmul kernels of the
    graph it ran. ``optimized=False`` (graph optimizations off) evaluates a QDQ model as the ONNX spec defines
    it (quantize/dequantize rounding, float math in between) whatever ORT's kernels would do with it;
    ``optimized=True`` is how ORT deploys it by default (QDQ groups it recognises become integer kernels)."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else
                                     ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    ran = path.with_name(path.stem + (".ort_opt.onnx" if optimized else ".ort_noopt.onnx"))
    opts.optimized_model_filepath = str(ran)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    out = {name: [[np.asarray(o) for o in sess.run(None, {k: v for k, v in f.items() if k in names})] for f in feeds]
           for name, feeds in case.eval_sets.items()}
    ops = [n.op_type for n in onnx.load(str(ran), load_external_data=False).graph.node]
    ran.unlink(missing_ok=True)
    n_int = sum(op in INT_KERNELS for op in ops)
    return out, (n_int, n_int + sum(op in FLOAT_KERNELS for op in ops))


def _measure(row: Row, case: Case, ref: Outputs, ref_opt: Outputs) -> tuple[Outputs, Outputs]:
    import onnx

    assert row.path is not None
    row.weight_bytes = weight_bytes(onnx.load(str(row.path)))
    row.file_bytes = row.path.stat().st_size
    out, _ = _evaluate(row.path, case, optimized=False)
    row.figures = case.score(out, ref or out)
    out_opt, row.kernels = _evaluate(row.path, case, optimized=True)
    row.figures[OPT] = case.score(out_opt, ref_opt or out_opt)[case.primary]
    return out, out_opt


def _mixed(case: Case, flash: int) -> Callable[[Path], tuple[Path, str]]:
    passes = f"simplify,fuse,quant-policy{{bits=8,4 flash={flash}B}},quantize"
    return lambda d: nasc_quantize(case.path, d, passes, case.calib)


def run_case(case: Case, tmp: Path, fractions: Sequence[float], log: Callable[[str], None] = print) -> list[Row]:
    import nasc

    float_params = int(nasc.load(str(case.path)).summary()["param_bytes"])
    rows = [Row("float", "float (as exported)", case.path)]
    ref, ref_opt = _measure(rows[0], case, {}, {})
    methods: list[tuple[str, str, Callable[[Path], tuple[Path, str]]]] = [
        ("nasc8", "nasc int8", lambda d: nasc_quantize(case.path, d, "simplify,fuse,quantize{bits=8}", case.calib))]
    for fraction in fractions:
        flash = round(fraction * float_params)
        methods.append(("mixed", f"nasc mixed int8/int4, flash {flash:,} B ({fraction:.0%} of float)",
                        _mixed(case, flash)))
    methods.append(("ort", "ONNX Runtime quantize_static int8", lambda d: ort_quantize(case.path, d, case.calib)))
    methods.append(("ort_ops", f"ONNX Runtime quantize_static int8, {'/'.join(ORT_OPS)} only",
                    lambda d: ort_quantize(case.path, d, case.calib, ORT_OPS)))
    for i, (kind, label, fn) in enumerate(methods):
        row = Row(kind, label)
        t0 = time.perf_counter()
        try:
            row.path, row.detail = fn(tmp / f"{case.key}_{i}")
            row.seconds = time.perf_counter() - t0
            _measure(row, case, ref, ref_opt)
        except Exception as e:  # a failed row is reported; the others still run
            row.seconds = time.perf_counter() - t0
            msg = str(e).splitlines()[0] if str(e) else ""
            row.error = f"{type(e).__name__}: {msg[:240]}"
            log(f"  {label}: FAILED {row.error}")
        rows.append(row)
    return rows


def goal_checks(case: Case, rows: list[Row]) -> list[str]:
    """Where the stated goals do not hold: nasc int8 at least as accurate as ONNX Runtime's int8 at the same
    size, and the mixed policy smaller than uniform int8 at equal accuracy (within ``case.equal_tol``)."""
    ok = [r for r in rows if not r.error]
    nasc8 = next((r for r in ok if r.kind == "nasc8"), None)
    orts = [r for r in ok if r.kind.startswith("ort")]
    p, misses = case.primary, []

    def name(r: Row) -> str:
        return "nasc int8" if r.kind == "nasc8" else r.label.replace(" quantize_static", "")

    for ort in orts if nasc8 else []:
        assert nasc8 is not None
        a, b = nasc8.figures[p], ort.figures[p]
        if a < b - case.tol:
            misses.append(f"{case.key}: nasc int8 is less accurate than {name(ort)}: {p} {a:.4f} vs {b:.4f} "
                          f"({a - b:+.4f})")
        if nasc8.weight_bytes > 1.02 * ort.weight_bytes:
            misses.append(f"{case.key}: nasc int8 weights are larger than {name(ort)}'s: {nasc8.weight_bytes:,} vs "
                          f"{ort.weight_bytes:,} B ({nasc8.weight_bytes / ort.weight_bytes - 1:+.1%})")
    for mixed in (r for r in rows if r.kind == "mixed"):
        what = f"the mixed policy at {mixed.label.split('flash ', 1)[-1]}"
        if mixed.error:
            misses.append(f"{case.key}: {what} did not build: {mixed.error}")
            continue
        for r in [nasc8, *orts] if nasc8 else orts:
            if mixed.figures[p] < r.figures[p] - case.equal_tol:
                misses.append(f"{case.key}: {what} is less accurate than {name(r)} by more than "
                              f"{case.equal_tol:g}: {p} {mixed.figures[p]:.4f} vs {r.figures[p]:.4f}")
            elif mixed.weight_bytes >= r.weight_bytes and r.figures[p] >= mixed.figures[p] - case.equal_tol:
                misses.append(f"{case.key}: {what} is not smaller than {name(r)} at equal accuracy: "
                              f"{mixed.weight_bytes:,} vs {r.weight_bytes:,} B")
    return misses


# ---- output -----------------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def _kb(n: int) -> str:
    return f"{n / 1000:,.1f}"


def table(case: Case, rows: list[Row]) -> list[str]:
    float_w = rows[0].weight_bytes
    head = ["quantization", *case.columns, "weight KB", "vs float", "file KB",
            f"{case.primary.split(',')[0]}, ORT optimized", "ORT int kernels"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        label = r.label + (f" ({r.detail})" if r.detail else "")
        if r.error:
            msg = r.error.split(": ", 1)[-1].replace("|", "/")
            lines.append(f"| {label} | failed: {msg} |" + " |" * (len(head) - 2))
            continue
        cells = [_fmt(r.figures[c]) for c in case.columns]
        cells += [_kb(r.weight_bytes), f"{r.weight_bytes / float_w:.1%}", _kb(r.file_bytes), _fmt(r.figures[OPT]),
                  f"{r.kernels[0]}/{r.kernels[1]}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--flash-fraction", default="0.30,0.20",
                   help="flash budget(s) of the mixed policy, as fractions of the float param bytes, comma-separated: "
                        "one mixed row each (default 0.30,0.20: uniform int8 is ~27-29%% of float, so 30%% often "
                        "leaves it all int8, and 20%% shows the int4 trade-off)")
    p.add_argument("--write", type=Path, default=None, help="write the tables between the bench_quant markers")
    args = p.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    fractions = [float(f) for f in args.flash_fraction.split(",") if f.strip()]
    bad = [m for m in names if m not in CASES]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {','.join(MODELS)}")
    import onnxruntime

    import nasc

    lines = [f"Produced by `python tools/bench_quant.py` on {platform.machine()}, {os.cpu_count()} cores, "
             f"nasc {nasc.__version__}, ONNX Runtime {onnxruntime.__version__}. Every row is an ONNX model run by "
             "ONNX Runtime (CPU) on the same inputs. The figures run it with graph optimizations off, i.e. the QDQ "
             "model as the ONNX spec defines it: they measure the quantization, not a kernel. The \"ORT optimized\" "
             "column repeats the main figure with all optimizations on, where ORT turns the QDQ groups it "
             "recognises into integer kernels (\"ORT int kernels\": how many of the conv/matmul ops). "
             "weight KB = storage of all initializers and constants in the ONNX file (quantized weights with their "
             "scales and zero points, int32 biases, tensors left float; int4 packed two per byte), computed the "
             "same way for every row; file KB = model.onnx. nasc and ONNX Runtime (`quantize_static` after "
             "`quant_pre_process`, QDQ, per-channel QInt8 weights, QUInt8 activations) both calibrate min/max on "
             "the same samples.", ""]
    misses: list[str] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_quant_") as tmpdir:
        tmp = Path(tmpdir)
        for name in names:
            t0 = time.perf_counter()
            case = CASES[name](tmp)
            print(f"\n{case.title}")
            rows = run_case(case, tmp, fractions)
            secs = time.perf_counter() - t0
            body = table(case, rows)
            print("\n".join(body))
            print("  quantization time: " + "; ".join(f"{r.label.split(' (')[0]} {r.seconds:.1f} s"
                                                      for r in rows[1:]) + f"; model total {secs:.0f} s")
            case_misses = goal_checks(case, rows)
            misses += case_misses
            lines += [f"## {case.title}", "", *body, "", *case.notes, ""]
            if case_misses:
                lines += ["Goals not met here:", "", *[f"- {m.split(': ', 1)[1]}" for m in case_misses], ""]
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if misses:
        print("\nGoals not met (nasc int8 >= ORT int8 accuracy at the same size; mixed policy smaller at equal "
              "accuracy):")
        for m in misses:
            print(f"  - {m}")
    else:
        print("\nAll goals hold: nasc int8 at least as accurate as ORT int8 at no larger size; "
              "the mixed policy smaller at equal accuracy.")
    if args.write:
        from doc_tables import write_between_markers

        write_between_markers(args.write, "\n".join(lines).rstrip(), MARKER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
