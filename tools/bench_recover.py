"""Recovery: what ``recover`` (distillation from the original model) wins back after pruning, tying and
mixed int8/int4 quantization, and how long it takes on this machine (issue 16).

    python tools/bench_recover.py [--cases cnn,minilm,vit,qat,sensitivity] [--write docs/benchmarks.md]
    python tools/bench_recover.py --quick        # tiny settings: cnn, vit and digits only (the test)

Cases (settings are the constants below; every pipeline is printed with its table):

* cnn: ``examples/fashion_cnn.onnx`` pruned to 50% of its MACs (``importance=taylor`` and ``l2``), then
  recovered on a seeded sample of Fashion-MNIST training images with their labels; accuracy on the 10,000
  test images under ONNX Runtime.
* minilm: all-MiniLM-L6-v2 (as in tools/bench_tie.py: TorchScript export, ``simplify,fuse``, 32 tokens)
  tied by ``tie-layers`` and recovered on the stdlib docstring sentences less a fixed seeded 200 held out;
  encoder unique params, and on the 200 held-out sentences the embedding cosine to the original's and the
  nearest-neighbour agreement.
* vit: ``examples/fashion_vit.onnx`` tied to 2 unique blocks with rank-8 corrections, recovered on training
  images with labels; accuracy on the test set.
* qat: the digits CNN and MobileNetV2 under a mixed int8/int4 policy (``quant-policy{bits=8,4 flash=...}``),
  then quantization-aware recovery through fake quantization (weights only, and with ``learn-scales``);
  "gap closed" = (recovered - quantized) / (float - quantized).
* sensitivity: the same mixed policies chosen by ``sensitivity=measured`` and ``sensitivity=fisher``
  (no recovery): the figures after ``quantize`` and quant-policy's own time.

Every figure runs the graph under ONNX Runtime (``nasc.backends.fidelity.run_graph``: basic optimizations,
QDQ as the ONNX spec defines it). Recovery times are the pass's own ``time_s`` (its report section).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

MARKER = "bench_recover"
CASES = ("cnn", "minilm", "vit", "qat", "sensitivity")
QUICK_CASES = ("cnn", "vit", "qat", "sensitivity")  # qat and sensitivity on the digits CNN only
SEED = 0

# ---- cnn: Fashion-MNIST CNN pruned to 50% of its MACs ---------------------------------------------------------
CNN_CALIB = 4000  # training images (with labels), seeded sample
CNN_IMPORTANCES = ("l2", "taylor")
CNN_PRUNE = "prune{{macs=0.5 importance={importance} reconstruct=true}}"
CNN_RECOVER = "recover{steps=600 batch=32 lr=1e-4 eval-every=50 patience=6}"

# ---- minilm: all-MiniLM-L6-v2 tied -----------------------------------------------------------------------------
MINILM_HELD = 200  # held-out sentences (the last 200 of bench_tie's seeded permutation)
MINILM_CALIB: int | None = None  # calibration sentences (None: all ~5,000 of the wide pool not held out)
MINILM_TIES = ("tie-layers{blocks=2 rank=40 fit=activation}",)  # 2.04x fewer encoder params
MINILM_RECOVER = ("recover{mask=attention_mask steps=9000 batch=16 lr=5e-4 eval-every=100 patience=6 holdout=0.05 "
                  "time=1800s}")

# ---- vit: Fashion-MNIST ViT tied -------------------------------------------------------------------------------
VIT_CALIB = 4000
VIT_TIE = "tie-layers{blocks=2 rank=8}"
VIT_RECOVER = "recover{steps=1200 batch=32 lr=1e-3 eval-every=50 patience=6}"

# ---- qat / sensitivity: mixed int8/int4 -------------------------------------------------------------------------
QAT_MODELS = ("digits", "mobilenet_v2")
#: the flash budget of quant-policy as a fraction of the float param bytes (small enough for a real int4 gap)
QAT_FLASH = {"digits": 0.16, "mobilenet_v2": 0.18}  # digits: 0.155 is all int4
SENS_FLASH = {"digits": (0.16, 0.18), "mobilenet_v2": (0.18, 0.20)}
QAT_RECOVER = {"digits": "recover{steps=1500 batch=32 lr=1e-3 labels=0 patience=12 loss=mse}",
               "mobilenet_v2": "recover{steps=3000 batch=8 lr=3e-5 eval-every=50 patience=4 loss=mse holdout=0.1 "
                               "time=900s}"}
QAT_LEARN_SCALES = " learn-scales=true"  # added inside the braces for the second recovered row
#: MobileNetV2: seeded random crops (scale, position, flip) of scikit-image's photos added to bench_quant's 16
#: calibration images, so that quantization-aware recovery has more than a dozen images to learn from
MOBILENET_CROPS = 1000
MOBILENET_CROP_IMAGES = ("chelsea", "coffee", "astronaut", "rocket", "cat", "immunohistochemistry",
                         "hubble_deep_field", "retina", "colorwheel", "horse", "brick", "grass", "gravel", "coins",
                         "clock", "moon")
#: held-out crops, the same way, of pictures that no calibration image comes from (stereo_motorcycle's left view)
MOBILENET_HELD_CROPS = 32
MOBILENET_HELD_IMAGES = ("camera", "stereo_motorcycle", "cell")

# ---- --quick -------------------------------------------------------------------------------------------------
QUICK: dict[str, Any] = {"cnn_calib": 96, "vit_calib": 64, "test": 500, "importances": ("taylor",),
                         "cnn_recover": "recover{steps=4 batch=16 lr=1e-3 eval-every=2}",
                         "vit_recover": "recover{steps=3 batch=8 lr=1e-3 eval-every=3}",
                         "qat_recover": "recover{steps=10 batch=16 lr=1e-4 eval-every=5}", "digits_calib": 128}

Feed = dict[str, np.ndarray]
Log = Callable[[str], None]


@dataclass
class Row:
    label: str
    pipeline: str
    figures: dict[str, float] = field(default_factory=dict)
    recover: dict[str, Any] | None = None  # the recover pass's details (time_s, steps, best_step, ...)
    pass_time: float | None = None  # another pass's time_s (quant-policy in the sensitivity case)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the whole optimize call
    error: str = ""  # the first line of the exception when the pipeline failed (the other rows still run)


@dataclass
class Section:
    title: str
    table: list[str]
    notes: list[str]
    rows: list[Row]
    case: str
    extra: dict[str, Any] = field(default_factory=dict)


# ---- running pipelines ---------------------------------------------------------------------------------------


def _section(g: Any, prefix: str) -> dict[str, Any] | None:
    return next((e for e in g.meta.get("passes", []) if str(e.get("pass", "")).startswith(prefix)), None)


def run(g0: Any, label: str, pipeline: str, calib: list[Feed], labels: np.ndarray | None, log: Log) -> tuple[Any, Row]:
    """``nasc.optimize(g0, pipeline)`` with the report sections of recover (and quant-policy) kept on the row."""
    import nasc

    t0 = time.perf_counter()
    g = nasc.optimize(g0, pipeline, calib=calib, labels=labels, log=lambda m: log(f"    {m}"))
    row = Row(label, pipeline, seconds=time.perf_counter() - t0)
    rec = _section(g, "recover")
    if rec is not None:
        d = rec.get("details", {})
        row.recover = {k: d.get(k) for k in ("before", "after", "steps", "best_step", "stopped", "trained_params",
                                             "train_feeds", "held_feeds", "features")}
        row.recover["time_s"] = d.get("time_s", rec.get("time_s"))
    pol = _section(g, "quant-policy")
    if pol is not None:
        row.pass_time = float(pol.get("time_s", 0.0))
        row.details["policy"] = _policy_counts(g)
    for prefix in ("prune", "tie-layers"):
        sec = _section(g, prefix)
        if sec is not None:
            row.details[prefix] = sec.get("details", {})
    return g, row


def _policy_counts(g: Any) -> str:
    from nasc.passes.quantize import POLICY_KEY

    policy = g.meta.get(POLICY_KEY) or {}
    counts: dict[int, int] = {}
    for p in policy.values():
        if not p.get("weightless"):
            counts[int(p["bits"])] = counts.get(int(p["bits"]), 0) + 1
    return ", ".join(f"int{b} ×{n}" for b, n in sorted(counts.items(), reverse=True))


def run_scored(g0: Any, label: str, pipeline: str, calib: list[Feed], labels: np.ndarray | None, log: Log,
               score: Callable[[Any], dict[str, float]]) -> Row:
    """:func:`run` then ``score`` on the result; a failure becomes a row with ``error`` set (and is logged)."""
    t0 = time.perf_counter()
    try:
        g, row = run(g0, label, pipeline, calib, labels, log)
        row.figures = score(g)
    except Exception as e:  # a failed row is reported; the others still run
        msg = " ".join(str(e).split())
        row = Row(label, pipeline, seconds=time.perf_counter() - t0, error=f"{type(e).__name__}: {msg[:300]}")
        log(f"  {label}: FAILED {row.error}")
    return row


def _failed(row: Row, n_cells: int) -> str:
    return f"| {row.label} | failed: {row.error.replace('|', '/')} |" + " |" * (n_cells - 2)


def outputs(g: Any, feeds: list[Feed]) -> np.ndarray:
    """The first output of ``g`` for every feed, stacked (ONNX Runtime)."""
    from nasc.backends.fidelity import run_graph

    return np.concatenate([np.asarray(o[0]).reshape(1, -1) for o in run_graph(g, feeds)])


def _recover_pipeline(base: str, recover: str, more: str = "") -> str:
    return f"{base},{recover[:-1]}{more}}}" if more else f"{base},{recover}"


def _log_row(log: Log, case: str, row: Row) -> None:
    figs = ", ".join(f"{k} {v:.4f}" for k, v in row.figures.items())
    rec = f"; recover {row.recover['time_s']:.0f} s, {row.recover['steps']} steps" if row.recover else ""
    log(f"{case} {row.label}: {figs}{rec} ({row.seconds:.0f} s)")


# ---- figures -------------------------------------------------------------------------------------------------


def _pct(v: float) -> str:
    return f"{v:.2%}"


def _pt(v: float) -> str:
    return f"{v * 100:+.2f} pt"


def _rec_cells(row: Row) -> str:
    """'time | steps (best, why) | trained params' cells of a row (blank without recover)."""
    r = row.recover
    if r is None:
        return "| - | - | - |"
    return (f"| {r['time_s']:.0f} s | {r['steps']} (best {r['best_step']}, {r['stopped']}) | "
            f"{int(r['trained_params'] or 0):,} |")


def _m(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def _test_set(n: int, total: int) -> str:
    return f"all {total:,} test images" if n == total else f"the first {n:,} test images"


def fashion_case(model: str, n_cal: int, quick: bool) -> tuple[Any, list[Feed], np.ndarray, list[Feed], np.ndarray,
                                                               int]:
    """A shipped Fashion-MNIST model after ``simplify,fuse``, ``n_cal`` seeded training images with labels, the
    test images (the first few hundred with --quick) with labels, and the size of the whole test set."""
    import nasc
    from nasc.examples.datasets import load_fashion_mnist

    xtr, ytr, xte, yte = load_fashion_mnist()
    idx = np.sort(np.random.default_rng(SEED).choice(len(xtr), n_cal, replace=False))
    n_test = int(QUICK["test"]) if quick else len(xte)
    g0 = nasc.optimize(nasc.load(ROOT / "examples" / f"{model}.onnx"), "simplify,fuse")
    return (g0, [{"image": xtr[i:i + 1]} for i in idx], ytr[idx], [{"image": xte[i:i + 1]} for i in range(n_test)],
            yte[:n_test], len(xte))


# ---- cnn -----------------------------------------------------------------------------------------------------


def case_cnn(quick: bool, log: Log) -> Section:

    n_cal = QUICK["cnn_calib"] if quick else CNN_CALIB
    recover = str(QUICK["cnn_recover"] if quick else CNN_RECOVER)
    importances: Sequence[str] = QUICK["importances"] if quick else CNN_IMPORTANCES  # type: ignore[assignment]
    g0, calib, labels, test, y, n_total = fashion_case("fashion_cnn", n_cal, quick)
    n_test = len(test)
    s0 = g0.summary()

    def acc(g: Any) -> float:
        return float(np.mean(np.argmax(outputs(g, test), axis=1) == y))

    base = Row("original", "simplify,fuse", {"accuracy": acc(g0)})
    base.details.update(macs=s0["macs"], params=s0["params"])
    rows = [base]
    _log_row(log, "cnn", base)
    for imp in importances:
        prune = CNN_PRUNE.format(importance=imp)
        for label, pipe in ((f"pruned ({imp})", prune), (f"pruned ({imp}) + recover", f"{prune},{recover}")):
            g, row = run(g0, label, pipe, calib, labels, log)
            s = g.summary()
            row.details.update(macs=s["macs"], params=s["params"])
            row.figures["accuracy"] = acc(g)
            rows.append(row)
            _log_row(log, "cnn", row)
    table = ["| model | MACs | params | accuracy | vs original | recover time | steps (best) | trained params |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        table.append(f"| {r.label} | {_m(r.details['macs'])} ({r.details['macs'] / base.details['macs']:.0%}) | "
                     f"{_m(r.details['params'])} | {_pct(r.figures['accuracy'])} | "
                     f"{_pt(r.figures['accuracy'] - base.figures['accuracy'])} {_rec_cells(r)}")
    notes = [f"Calibration (prune's importances and error report, recover's training and its held-out 20%): "
             f"{n_cal:,} Fashion-MNIST training images drawn with numpy seed {SEED}, with their labels. Accuracy "
             f"on {_test_set(n_test, n_total)} (ONNX Runtime). Pipelines, after `simplify,fuse`: "
             + "; ".join(f"`{r.pipeline}`" for r in rows[1:]) + "."]
    return Section("Fashion-MNIST CNN pruned to 50% of its MACs (examples/fashion_cnn.onnx)", table, notes, rows, "cnn")


# ---- vit -----------------------------------------------------------------------------------------------------


def case_vit(quick: bool, log: Log) -> Section:

    n_cal = QUICK["vit_calib"] if quick else VIT_CALIB
    recover = str(QUICK["vit_recover"] if quick else VIT_RECOVER)
    g0, calib, labels, test, y, n_total = fashion_case("fashion_vit", n_cal, quick)
    n_test = len(test)

    def acc(g: Any) -> float:
        return float(np.mean(np.argmax(outputs(g, test), axis=1) == y))

    base = Row("original", "simplify,fuse", {"accuracy": acc(g0)})
    rows = [base]
    _log_row(log, "vit", base)
    for label, pipe in (("tied", VIT_TIE), ("tied + recover", f"{VIT_TIE},{recover}")):
        g, row = run(g0, label, pipe, calib, labels, log)
        row.figures["accuracy"] = acc(g)
        rows.append(row)
        _log_row(log, "vit", row)
    before, after = rows[1].details["tie-layers"]["encoder_params"]
    base.details["encoder_params"] = before
    for r in rows[1:]:
        r.details["encoder_params"] = after
    table = ["| model | encoder params | × fewer | accuracy | vs original | recover time | steps (best) | "
             "trained params |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        table.append(f"| {r.label} | {_m(r.details['encoder_params'])} | {before / r.details['encoder_params']:.2f} | "
                     f"{_pct(r.figures['accuracy'])} | {_pt(r.figures['accuracy'] - base.figures['accuracy'])} "
                     f"{_rec_cells(r)}")
    notes = [f"Calibration: {n_cal:,} Fashion-MNIST training images (numpy seed {SEED}) with labels; tie-layers "
             f"fits on the first 128. Accuracy on {_test_set(n_test, n_total)}. Pipelines, after "
             f"`simplify,fuse`: " + "; ".join(f"`{r.pipeline}`" for r in rows[1:]) + "."]
    return Section("Fashion-MNIST ViT (examples/fashion_vit.onnx) tied to 2 unique blocks", table, notes, rows,
                   "vit")


# ---- minilm --------------------------------------------------------------------------------------------------


def case_minilm(tmp: Path, quick: bool, log: Log, ties: Sequence[str] = MINILM_TIES,
                recover: str = MINILM_RECOVER, n_calib: int | None = MINILM_CALIB) -> Section:
    import bench_tie

    from nasc.examples import zoo
    from nasc.examples.datasets import STDLIB_MODULES_WIDE, docstring_sentences
    from nasc.passes.tie_find import find_repeats

    g0, _, _ = bench_tie.minilm_case(tmp)
    sentences = docstring_sentences()
    order = np.random.default_rng(SEED).permutation(len(sentences))  # bench_tie's: the same held-out sentences
    held = zoo.minilm_feeds([sentences[i] for i in order[-MINILM_HELD:]], bench_tie.MINILM_TOKENS)
    held_set = {sentences[i] for i in order[-MINILM_HELD:]}
    pool = [t for t in docstring_sentences(STDLIB_MODULES_WIDE, methods=True) if t not in held_set]
    calib = zoo.minilm_feeds(pool[:n_calib], bench_tie.MINILM_TOKENS)
    ref = bench_tie.embeddings(g0, held)
    ref_nn = bench_tie.nearest(ref)
    enc0 = bench_tie._encoder_params(find_repeats(g0).repeats[0])

    def figures(g: Any) -> dict[str, float]:
        e = bench_tie.embeddings(g, held)
        return {"cosine": float(np.mean(np.sum(e * ref, axis=1))),
                "nn agreement": float(np.mean(bench_tie.nearest(e) == ref_nn))}

    base = Row("original", "simplify,fuse", {"cosine": 1.0, "nn agreement": 1.0}, details={"encoder_params": enc0})
    rows = [base]
    for tie in ties:
        for label, pipe in ((tie, tie), (f"{tie} + recover", f"{tie},{recover}")):
            row = run_scored(g0, label, pipe, calib, None, log, figures)
            rows.append(row)
            if not row.error:
                row.details["encoder_params"] = row.details["tie-layers"]["encoder_params"][1]
                _log_row(log, "minilm", row)
    table = ["| model | encoder params | × fewer | cosine (held-out) | NN agreement | recover time | steps (best) | "
             "trained params |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if r.error:
            table.append(_failed(r, 8))
            continue
        table.append(f"| {r.label.replace('|', chr(92) + '|')} | {_m(r.details['encoder_params'])} | "
                     f"{enc0 / r.details['encoder_params']:.2f} | {r.figures['cosine']:.4f} | "
                     f"{r.figures['nn agreement']:.1%} {_rec_cells(r)}")
    notes = [f"Sentences: stdlib docstrings (`examples/datasets.docstring_sentences`), {bench_tie.MINILM_TOKENS} "
             f"tokens; the last {MINILM_HELD} of a numpy-seed-{SEED} permutation of the default pool (20 modules) "
             f"are held out (the same as tools/bench_tie.py); {len(calib):,} sentences of the wide pool "
             f"(`STDLIB_MODULES_WIDE`, methods' docstrings too) that are not among them calibrate (tie-layers fits "
             f"on the first 128; recover trains on them, holding out the slice its `holdout` says for early "
             f"stopping). Cosine: mean cosine of the sentence "
             f"embeddings (mean-pooled, L2-normalised) to the original's on the held-out sentences; NN agreement: "
             f"how often each held-out sentence's nearest neighbour among the others stays the same. Pipelines, "
             f"after `simplify,fuse`: " + "; ".join(f"`{r.pipeline}`" for r in rows[1:]) + "."]
    return Section("all-MiniLM-L6-v2 tied", table, notes, rows, "minilm", {"encoder_params": enc0})


# ---- qat and sensitivity -------------------------------------------------------------------------------------


@dataclass
class QuantModel:
    key: str
    title: str
    graph: Any  # as loaded (the teacher of recover)
    calib: list[Feed]
    labels: np.ndarray | None
    score: Callable[[Any], dict[str, float]]
    primary: str
    #: the figures the goal reads, the issue's measure first (accuracy, or top-1 agreement without labels): the
    #: first with a gap between float and quantized decides
    goal: tuple[str, ...]
    float_bytes: int
    notes: list[str]


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the cosine between the rows of ``a`` and ``b`` (float64)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)))


def digits_model(quick: bool) -> QuantModel:
    from make_examples import load_digits_split

    import nasc

    xtr, _, ytr, _ = load_digits_split()
    n_cal = int(QUICK["digits_calib"]) if quick else len(xtr)
    xtr = xtr.reshape(-1, 1, 8, 8).astype(np.float32)
    idx = np.sort(np.random.default_rng(SEED).permutation(len(xtr))[:n_cal])
    calib, labels = [{"image": xtr[i:i + 1]} for i in idx], np.asarray(ytr)[idx]
    data = np.load(ROOT / "examples" / "digits_test.npz")
    test = [{"image": data["image"][i:i + 1].astype(np.float32)} for i in range(len(data["image"]))]
    y = data["label"]
    g = nasc.load(ROOT / "examples" / "digits_cnn.onnx")

    ref = outputs(g, test)

    def score(gr: Any) -> dict[str, float]:
        out = outputs(gr, test)
        return {"accuracy (360)": float(np.mean(np.argmax(out, axis=1) == y)),
                "top-1 agree (360)": float(np.mean(np.argmax(out, axis=1) == np.argmax(ref, axis=1))),
                "logit cosine (360)": _mean_cosine(out, ref)}

    return QuantModel("digits", "digits CNN (examples/digits_cnn.onnx)", g, calib, labels, score, "logit cosine (360)",
                      ("accuracy (360)", "logit cosine (360)"), int(g.summary()["param_bytes"]),
                      [f"digits: calibration = {n_cal:,} images of the digits training split (tools/make_examples.py's "
                       "80/20 stratified split, with labels; quant-policy measures on the first 16); accuracy on "
                       "the 360 test images (examples/digits_test.npz), none of them seen."])


def mobilenet_model(tmp: Path) -> QuantModel:
    import bench_quant

    import nasc

    case = bench_quant.mobilenet_case(tmp)
    g = nasc.load(str(case.path))
    ev = case.eval_sets
    calib = list(case.calib) + [{"image": c} for c in random_crops(MOBILENET_CROPS, MOBILENET_CROP_IMAGES)]
    ev = {**ev, "crops": [{"image": c} for c in random_crops(MOBILENET_HELD_CROPS, MOBILENET_HELD_IMAGES,
                                                             seed=SEED + 1)]}
    ref = {name: outputs(g, feeds) for name, feeds in ev.items()}

    def score(gr: Any) -> dict[str, float]:
        out = {}
        res = {name: outputs(gr, feeds) for name, feeds in ev.items()}
        for name, label in (("photos", "4 photos"), ("held", "held-out (4)"),
                            ("crops", f"held-out crops ({MOBILENET_HELD_CROPS})")):
            a, b = res[name], ref[name]
            out[f"top-1 agree, {label}"] = float(np.mean(np.argmax(a, 1) == np.argmax(b, 1)))
            out[f"logit cosine, {label}"] = _mean_cosine(a, b)
        return out

    return QuantModel("mobilenet_v2", "MobileNetV2, ImageNet weights", g, calib, None, score,
                      f"logit cosine, held-out crops ({MOBILENET_HELD_CROPS})",
                      (f"top-1 agree, held-out crops ({MOBILENET_HELD_CROPS})",
                       f"logit cosine, held-out crops ({MOBILENET_HELD_CROPS})", "top-1 agree, held-out (4)",
                       "logit cosine, held-out (4)"), int(g.summary()["param_bytes"]),
                      [f"MobileNetV2: calibration data is scarce offline (no labelled ImageNet): the 16 images of "
                       f"tools/bench_quant.py (4 scikit-image photos, their flips, two shifted crops of each) and "
                       f"{MOBILENET_CROPS} seeded random crops (shorter side 224-400, random position, random "
                       f"flip) of {len(MOBILENET_CROP_IMAGES)} scikit-image pictures ({', '.join(MOBILENET_CROP_IMAGES)}"
                       "), none of them the held-out ones; recover holds out 10% of them; figures vs the float "
                       "model on the 4 photos, on 4 held-out images (camera, stereo_motorcycle and their "
                       f"flips), and on {MOBILENET_HELD_CROPS} held-out crops, made the same way, of pictures no "
                       f"calibration image comes from ({', '.join(MOBILENET_HELD_IMAGES)})."])


def random_crops(n: int, names: tuple[str, ...], size: int = 224, seed: int = SEED) -> list[np.ndarray]:
    """``n`` seeded ``size`` x ``size`` crops of the scikit-image pictures ``names`` at random scales, positions
    and flips, preprocessed like torchvision's ImageNet eval transform (as zoo.imagenet_photos)."""
    import skimage.data
    import skimage.transform

    from nasc.examples import zoo

    rng = np.random.default_rng(seed)
    images = []
    for name in names:
        img = getattr(skimage.data, name)()
        img = np.asarray(img[0] if isinstance(img, tuple) else img)  # (a stereo pair: its left view)
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
        images.append(img.astype(np.float32) / 255.0)
    out = []
    for _ in range(n):
        img = images[int(rng.integers(len(images)))]
        short = int(rng.integers(size, size * 400 // 224 + 1))
        h, w = img.shape[:2]
        nh, nw = max(short, round(h * short / min(h, w))), max(short, round(w * short / min(h, w)))
        big = skimage.transform.resize(img, (nh, nw), order=1, anti_aliasing=True, preserve_range=True)
        y, x = int(rng.integers(nh - size + 1)), int(rng.integers(nw - size + 1))
        crop = big[y:y + size, x:x + size]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = (crop - zoo.IMAGENET_MEAN) / zoo.IMAGENET_STD
        out.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32))
    return out


def _quant_pipeline(m: QuantModel, fraction: float, sensitivity: str = "") -> str:
    flash = round(fraction * m.float_bytes)
    sens = f" sensitivity={sensitivity}" if sensitivity else ""
    return f"simplify,fuse,quant-policy{{bits=8,4 flash={flash}B{sens}}},quantize"


def _gap(row: Row, fl: Row, q: Row, key: str) -> float | None:
    d = fl.figures[key] - q.figures[key]
    return None if abs(d) < 1e-12 else (row.figures[key] - q.figures[key]) / d


def case_qat(models: list[QuantModel], quick: bool, log: Log) -> list[Section]:
    out = []
    for m in models:
        recover = str(QUICK["qat_recover"]) if quick else QAT_RECOVER[m.key]
        quant = _quant_pipeline(m, QAT_FLASH[m.key])
        fl = Row("float", "(as loaded)", m.score(m.graph))
        rows = [fl]
        _log_row(log, m.key, fl)
        for label, pipe in (("quantized (mixed int8/int4)", quant),
                            ("QAT recover", _recover_pipeline(quant, recover)),
                            ("QAT recover, learn-scales", _recover_pipeline(quant, recover, QAT_LEARN_SCALES))):
            row = run_scored(m.graph, label, pipe, m.calib, m.labels, log, m.score)
            rows.append(row)
            if not row.error:
                _log_row(log, m.key, row)
        cols = list(fl.figures)
        table = ["| model | policy | " + " | ".join(cols) + f" | gap closed ({m.primary}) | recover time | "
                 "steps (best) | trained params |", "|---|---|" + "---:|" * (len(cols) + 2) + "---|---:|"]
        q = rows[1]
        for r in rows:
            if r.error or q.error:
                table.append(_failed(r, len(cols) + 6) if r.error else f"| {r.label} | failed: see above |"
                             + " |" * (len(cols) + 4))
                continue
            gap = _gap(r, fl, q, m.primary) if r.recover else None
            gap_s = "-" if r.recover is None else ("no gap" if gap is None else f"{gap:.0%}")
            table.append(f"| {r.label} | {r.details.get('policy', 'float')} | "
                         + " | ".join(f"{r.figures[c]:.4f}" for c in cols) + f" | {gap_s} {_rec_cells(r)}")
        notes = [*m.notes[:1], f"Flash budget {QAT_FLASH[m.key]:.0%} of the float param bytes "
                 f"({m.float_bytes:,} B). Pipelines: " + "; ".join(f"`{r.pipeline}`" for r in rows[1:]) + "."]
        out.append(Section(f"{m.title}: mixed int8/int4, quantization-aware recovery", table, notes, rows, "qat",
                           {"model": m.key, "primary": m.primary, "goal": list(m.goal)}))
    return out


def case_sensitivity(models: list[QuantModel], log: Log) -> Section:
    table = ["| model | flash budget | sensitivity | policy | figure | value | quant-policy time |",
             "|---|---|---|---|---|---:|---:|"]
    rows = []
    for m in models:
        fl = m.score(m.graph)
        for fraction in SENS_FLASH[m.key]:
            for sens in ("measured", "fisher"):
                row = run_scored(m.graph, f"{m.key} {fraction:.0%} {sens}", _quant_pipeline(m, fraction, sens),
                                 m.calib, m.labels, log, m.score)
                row.details.update(model=m.key, fraction=fraction, sensitivity=sens, primary=m.primary,
                                   float=fl[m.primary])
                rows.append(row)
                if row.error:
                    table.append(f"| {m.key} | {fraction:.0%} | {sens} | failed: {row.error.replace('|', '/')} | | | |")
                    continue
                _log_row(log, "sensitivity", row)
                table.append(f"| {m.key} | {fraction:.0%} ({round(fraction * m.float_bytes):,} B) | {sens} | "
                             f"{row.details['policy']} | {m.primary} | {row.figures[m.primary]:.4f} "
                             f"(float {fl[m.primary]:.4f}) | {row.pass_time:.2f} s |")
    notes = ["Pipelines: `simplify,fuse,quant-policy{bits=8,4 flash=<budget> sensitivity=<measured|fisher>},quantize`"
             ", no recovery; calibration as in the QAT tables. measured: each layer quantized alone, output error "
             "on 16 calibration inputs; fisher: rounding error weighted by squared gradients of random output "
             "projections."]
    return Section("quant-policy: measured vs Fisher sensitivity", table, notes, rows, "sensitivity")


# ---- goals ---------------------------------------------------------------------------------------------------


def goals(sections: list[Section]) -> list[str]:
    out = []

    def met(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    for s in sections:
        if s.case == "cnn":
            base = s.rows[0].figures["accuracy"]
            for r in s.rows:
                if r.recover is not None:
                    acc = r.figures["accuracy"]
                    out.append(f"- CNN {r.label} within 1 point of the original: {met(base - acc <= 0.01)} "
                               f"({_pct(acc)} vs {_pct(base)}, {_pt(acc - base)}; recover {r.recover['time_s']:.0f} s)")
        elif s.case == "minilm":
            enc0 = s.extra["encoder_params"]
            cands = [r for r in s.rows if r.recover is not None and not r.error]
            out += [f"- MiniLM {r.label}: failed ({r.error[:200]})" for r in s.rows if r.error]
            for r in cands:
                ratio = enc0 / r.details["encoder_params"]
                t = float(r.recover["time_s"])  # type: ignore[index]
                ok = ratio >= 2 and r.figures["cosine"] >= 0.95 and t <= 1800
                out.append(f"- MiniLM {r.label.replace('|', chr(92) + '|')}: ≥ 2× fewer encoder params at "
                           f"embedding cosine ≥ 0.95 within 30 min of recovery: {met(ok)} ({ratio:.2f}× fewer, "
                           f"cosine {r.figures['cosine']:.4f}, {t / 60:.1f} min)")
        elif s.case == "vit":
            v0, v1, v2 = (r.figures["accuracy"] for r in s.rows)
            out.append(f"- ViT (no stated goal): tying costs {_pt(v1 - v0)}, recover leaves {_pt(v2 - v0)} "
                       f"vs the original")
        elif s.case == "qat":
            fl, q = s.rows[0], s.rows[1]
            keys = s.extra.get("goal") or [s.extra["primary"]]
            for r in s.rows[2:]:
                if r.error or q.error:
                    out.append(f"- {s.extra['model']} {r.label} closes at least half of the int4 policy's gap to "
                               f"float: **not measured** (failed: {(r.error or q.error)[:200]})")
                    continue
                gaps = {k: _gap(r, fl, q, k) for k in keys if k in r.figures}
                deciding = next((k for k, g in gaps.items() if g is not None), None)
                figures = "; ".join(
                    f"{k}: float {fl.figures[k]:.4f}, quantized {q.figures[k]:.4f}, recovered {r.figures[k]:.4f}, "
                    + ("no gap" if g is None else f"{g:.0%} of the gap") for k, g in gaps.items())
                verdict = met(deciding is not None and (gaps[deciding] or 0) >= 0.5)
                out.append(f"- {s.extra['model']} {r.label} closes at least half of the int4 policy's gap to float: "
                           f"{verdict}, by {deciding or 'no figure with a gap'} ({figures})")
        elif s.case == "sensitivity":
            for i in range(0, len(s.rows), 2):
                a, b = s.rows[i], s.rows[i + 1]
                key = a.details["primary"]
                if a.error or b.error:
                    out.append(f"- quant-policy sensitivity, {a.details['model']} at {a.details['fraction']:.0%}: "
                               f"not measured (failed: {(a.error or b.error)[:200]})")
                    continue
                fa, fb = a.figures[key], b.figures[key]
                won = "measured wins" if fa > fb else "fisher wins" if fb > fa else "neither wins"
                same = " (the same policy)" if a.details["policy"] == b.details["policy"] else ""
                out.append(f"- quant-policy sensitivity, {a.details['model']} at {a.details['fraction']:.0%}: "
                           f"{won}{same} ({key} measured {fa:.4f} in {a.pass_time:.2f} s, fisher {fb:.4f} in "
                           f"{b.pass_time:.2f} s)")
    return out


# ---- main ----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--qat-models", default=",".join(QAT_MODELS),
                   help=f"models of the qat and sensitivity cases: subset of {','.join(QAT_MODELS)}")
    p.add_argument("--quick", action="store_true", help="tiny settings; cnn, vit, and qat/sensitivity on digits only")
    p.add_argument("--write", type=Path, default=None, help="write the section between the bench_recover markers")
    p.add_argument("--save", type=Path, default=None, help="also save the measured sections as JSON (for --combine)")
    p.add_argument("--combine", default="", help="comma-separated --save files of separate runs: render them as one "
                   "section (with each run's command) instead of measuring")
    args = p.parse_args(argv)
    if args.combine:
        return render([json.loads(Path(f).read_text()) for f in args.combine.split(",")], args.write)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if args.quick:
        cases = [c for c in cases if c in QUICK_CASES]
    bad = [c for c in cases if c not in CASES]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {','.join(CASES)}")
    qat_models = ["digits"] if args.quick else [m.strip() for m in args.qat_models.split(",") if m.strip()]
    import bench_tie

    log: Log = lambda m: print(m, file=sys.stderr, flush=True)
    started = time.perf_counter()
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="bench_recover_") as td:
        tmp = Path(td)
        def done(new: list[Section]) -> None:  # each table on stderr as soon as it is measured
            sections.extend(new)
            for s in new:
                log("\n".join(["", f"## {s.title}", "", *s.table, "", *s.notes, ""]))

        if "cnn" in cases:
            done([case_cnn(args.quick, log)])
        if "minilm" in cases:
            done([case_minilm(tmp, args.quick, log)])
        if "vit" in cases:
            done([case_vit(args.quick, log)])
        if "qat" in cases or "sensitivity" in cases:
            models = [digits_model(args.quick) if k == "digits" else mobilenet_model(tmp) for k in qat_models]
            if "qat" in cases:
                done(case_qat(models, args.quick, log))
            if "sensitivity" in cases:
                done([case_sensitivity(models, log)])
    cmd = " ".join(["python tools/bench_recover.py", *(argv if argv is not None else sys.argv[1:])])
    run_ = {"command": cmd, "machine": bench_tie.machine(), "date": time.strftime("%Y-%m-%d"),
            "seconds": round(time.perf_counter() - started), "sections": [dataclasses.asdict(s) for s in sections]}
    if args.save:
        args.save.write_text(json.dumps(run_, default=float))
    return render([run_], args.write)


def render(runs: list[dict[str, Any]], write: Path | None) -> int:
    """The doc section of one or more runs (their sections in order, the goals over all of them)."""
    sections = [Section(**{**d, "rows": [Row(**r) for r in d["rows"]]}) for run_ in runs for d in run_["sections"]]
    machines = sorted({r["machine"] for r in runs})
    cmds = " and ".join(f"`{r['command']}` ({r['seconds']} s)" for r in runs)
    lines = [f"Measured on {', '.join(machines)} by {cmds} ({runs[0]['date']}); recover trains on the CPU (torch).",
             ""]
    for s in sections:
        lines += [f"## {s.title}", "", *s.table, "", *s.notes, ""]
    lines += ["## Goals", "", *goals(sections)]
    text = "\n".join(lines)
    print(text)
    if write:
        from doc_tables import write_between_markers

        write_between_markers(write, text, MARKER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
