"""The side-by-side half of tools/bench_prune.py: the model cases (trained module, ONNX file, calibration and
evaluation data, how outputs become figures), pruning each by nasc and by Torch-Pruning, and measuring the results
(MACs, params, figures, latency). tools/bench_prune.py renders the tables, runs the coverage and writes the docs.

Torch-Pruning is a bench-only tool, never a dependency of nasc: ``tp_module()`` is None without it.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGETS = (0.7, 0.5)  # fraction of MACs kept
TP_VERSION = "1.6.1"
TP_MISSING = f"Torch-Pruning not installed (bench only: pip install torch-pruning=={TP_VERSION} --no-deps)"
MACS_TOL = 0.01  # Torch-Pruning's bisection stops within 1% of the target fraction
SEED = 0

Feed = dict[str, np.ndarray]


def log(msg: str) -> None:
    print(msg, flush=True)


def tp_module() -> Any:
    """torch_pruning, or None when it is not installed (or ``--no-torch-pruning`` says to act as if)."""
    if os.environ.get("BENCH_PRUNE_NO_TP"):
        return None
    try:
        return importlib.import_module("torch_pruning")
    except ImportError:
        return None


def tp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-pruning")
    except PackageNotFoundError:
        return "not installed"


def first_line(e: BaseException, limit: int = 220) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


# ---- torch modules and their ONNX files ------------------------------------------------------------------------


def _module_path(onnx_node_name: str) -> str:
    """``/layer2/layer2.0/downsample/downsample.0/Conv`` -> ``layer2.0.downsample.0`` (TorchScript exporter scopes)."""
    parts: list[str] = []
    for seg in onnx_node_name.strip("/").split("/")[:-1]:
        if parts and seg.startswith(parts[-1] + "."):
            parts[-1] = seg
        else:
            parts.append(seg)
    return ".".join(parts)


def load_folded_onnx_weights(module: Any, onnx_path: Path) -> Any:
    """Give ``module`` (Conv-BN pairs, Linear) the weights of its TorchScript export, where BN is folded into the
    conv: each conv takes the folded weight, and the BatchNorm after it (in registration order) becomes the
    identity plus the folded bias. Exact: the module computes what the ONNX file computes."""
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    modules = dict(module.named_modules())
    order = list(modules)
    with torch.no_grad():
        for node in model.graph.node:
            if node.op_type not in ("Conv", "Gemm"):
                continue
            path = _module_path(node.name)
            m = modules[path]
            w = inits[node.input[1]]
            b = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                w = w if trans_b else w.T
            m.weight.copy_(torch.from_numpy(np.array(w, dtype=np.float32)))
            if m.bias is not None:
                bias = b if b is not None else np.zeros(m.weight.shape[0])
                m.bias.copy_(torch.from_numpy(np.array(bias, dtype=np.float32)))
                continue
            bn = next((modules[n] for n in order[order.index(path) + 1:]
                       if isinstance(modules[n], torch.nn.BatchNorm2d)), None)
            if bn is None:
                raise ValueError(f"{path}: a conv without bias and no BatchNorm after it to hold the folded bias")
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bias = b if b is not None else np.zeros(bn.num_features)
            bn.bias.copy_(torch.from_numpy(np.array(bias, dtype=np.float32)))
    return module.eval()


def export(module: Any, example: Any, path: Path, input_names: list[str] | None = None,
           output_names: list[str] | None = None) -> Path:
    from nasc.examples import zoo

    return zoo.export_onnx(module, example, path, dynamo=False, input_names=input_names, output_names=output_names)


def output_module(module: Any, example: Any) -> Any:
    """The leaf module whose output is the model's output (Torch-Pruning must leave its outputs alone), or None."""
    import torch

    seen: dict[int, Any] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out: seen.__setitem__(id(out), mod))
             for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = module(**example) if isinstance(example, dict) else module(*example)
    finally:
        for h in hooks:
            h.remove()
    out = out[0] if isinstance(out, tuple | list) else out
    return seen.get(id(out))


def run_module(module: Any, example: Any) -> Any:
    import torch

    with torch.no_grad():
        out = module(**example) if isinstance(example, dict) else module(*example)
    return out[0] if isinstance(out, tuple | list) else out


# ---- the side-by-side cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    """One model: its ONNX file, the torch module it came from, data, and how outputs become figures."""

    key: str
    title: str
    path: Path
    make_module: Callable[[], Any]  # a fresh copy of the trained torch module (Torch-Pruning edits it in place)
    example: Any  # example inputs of the torch module (tuple, or dict of keyword inputs)
    input_names: list[str]
    output_names: list[str]
    calib: list[Feed]
    eval_feeds: list[Feed]
    columns: list[str]
    score: Callable[[list[np.ndarray], list[np.ndarray]], dict[str, float]]  # (outputs, unpruned outputs)
    primary: str
    reconstruct: bool  # also run the reconstruct=true rows
    tp_setup: Callable[[Any, Any], dict[str, Any]] | None = None  # module -> extra MetaPruner options
    tp_after: Callable[[Any, Any], None] | None = None  # (module, pruner) -> fix-ups after pruning
    extra: list[tuple[str, str]] = field(default_factory=list)  # (label, nasc pipeline) rows beside prune
    labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def _ort_outputs(path: Path, feeds: Sequence[Feed]) -> list[np.ndarray]:
    """The first output of ``path`` under ONNX Runtime (CPU, all optimizations) for each feed."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return [np.asarray(sess.run(None, {k: v for k, v in f.items() if k in names})[0]) for f in feeds]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def _classifier_score(labels: np.ndarray | None, label: str) -> Callable[[list[np.ndarray], list[np.ndarray]],
                                                                               dict[str, float]]:
    def score(out: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, float]:
        pred = np.array([int(np.argmax(o)) for o in out])
        ref_pred = np.array([int(np.argmax(r)) for r in ref])
        res = {"top-1 agreement": float(np.mean(pred == ref_pred))}
        if labels is not None:
            res = {label: float(np.mean(pred == labels)), **res}
        return res

    return score


def digits_case(tmp: Path) -> Case:
    """The 8x8 digits CNN shipped in examples/ (for --quick and the test)."""
    from make_examples import build_model

    path = ROOT / "examples" / "digits_cnn.onnx"
    data = np.load(ROOT / "examples" / "digits_test.npz")
    images, labels = data["image"].astype(np.float32), data["label"]
    feeds = [{"image": images[i:i + 1]} for i in range(len(images))]
    master = load_folded_onnx_weights(build_model(), path)
    import torch

    return Case("digits", "digits CNN (examples/digits_cnn.onnx, 8x8 digits)", path,
                lambda: copy.deepcopy(master), (torch.zeros(1, 1, 8, 8),), ["image"], ["logits"],
                feeds[:120], feeds, ["accuracy (360)", "top-1 agreement"],
                _classifier_score(labels, "accuracy (360)"), "accuracy (360)", True, labels=labels,
                notes=["Calibration: digits_test.npz samples 0..119; accuracy on all 360. The torch module for "
                       "Torch-Pruning carries the ONNX file's weights (BatchNorm folded into the convs, as "
                       "exported)."])


def fashion_case(tmp: Path) -> Case:
    import torch
    from make_examples import build_fashion_model

    from nasc.examples.datasets import load_fashion_mnist

    path = ROOT / "examples" / "fashion_cnn.onnx"
    pt = ROOT / "examples" / "fashion_cnn.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run python tools/make_examples.py --only fashion")
    xtr, _, xte, yte = load_fashion_mnist()
    if pt.is_file():
        master = build_fashion_model()
        master.load_state_dict(torch.load(pt, weights_only=True, map_location="cpu"))
        master.eval()
        origin = "examples/fashion_cnn.pt (BatchNorm as trained)"
    else:
        master = load_folded_onnx_weights(build_fashion_model(), path)
        origin = ("the ONNX file's weights loaded into tools/make_examples.py's module (BatchNorm folded into "
                  "the convs, as exported; examples/fashion_cnn.pt was not there)")
    idx = np.random.default_rng(SEED).choice(len(xtr), 1000, replace=False)
    calib = [{"image": xtr[i:i + 1]} for i in np.sort(idx)]
    feeds = [{"image": xte[i:i + 1]} for i in range(len(xte))]
    return Case("fashion", "Fashion-MNIST residual CNN (examples/fashion_cnn.onnx), 1x1x28x28", path,
                lambda: copy.deepcopy(master), (torch.zeros(1, 1, 28, 28),), ["image"], ["logits"],
                calib, feeds, ["accuracy (10k test)", "top-1 agreement"],
                _classifier_score(yte, "accuracy (10k test)"), "accuracy (10k test)", True, labels=yte,
                notes=[f"Calibration (reconstruct, and the pass's own error report): 1,000 training images drawn "
                       f"with numpy seed {SEED}. Accuracy on the 10,000 test images. Torch-Pruning prunes {origin}."])


def _photos() -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[str]]:
    """(calibration images, evaluation images, names seen in calibration, held-out names): scikit-image and
    matplotlib photos with ImageNet preprocessing. Calibration: a 3x3 grid of 224 crops (offsets 0, 16, 32) of
    zoo.PHOTOS preprocessed at 256, and their flips. Evaluation: the center 224 crop of zoo.PHOTOS (seen in
    calibration at other crops) and of other photos (held out), and their flips, held-out ones last."""
    import skimage.data
    from bench_quant import _preprocess

    from nasc.examples import zoo

    photos, names = zoo.imagenet_photos(224)
    big, _ = zoo.imagenet_photos(256)
    calib = [np.ascontiguousarray(big[i:i + 1, :, y:y + 224, x:x + 224])
             for i in range(len(big)) for y in (0, 16, 32) for x in (0, 16, 32)]
    calib += [np.ascontiguousarray(c[:, :, :, ::-1]) for c in calib]
    more = {"camera": skimage.data.camera(), "motorcycle": skimage.data.stereo_motorcycle()[0],
            "cat": skimage.data.cat(), "horse": skimage.data.horse(), "coins": skimage.data.coins()}
    try:
        import matplotlib.cbook
        import matplotlib.image

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            more["grace_hopper"] = matplotlib.image.imread(f, format="jpg")
    except Exception:  # matplotlib's sample data is optional
        pass
    seen = [photos[i:i + 1] for i in range(len(photos))]
    held = []
    for img in more.values():
        im = np.asarray(img)
        held.append(_preprocess((im * 255).astype(np.uint8) if im.dtype == bool else im))
    flip = lambda xs: [np.ascontiguousarray(x[:, :, :, ::-1]) for x in xs]
    return calib, [*seen, *flip(seen), *held, *flip(held)], names, list(more)


def mobilenet_case(tmp: Path) -> Case:
    import torch

    from nasc.examples import zoo

    master = zoo.mobilenet_v2()
    example = (torch.zeros(1, 3, 224, 224),)
    path = export(master, example, tmp / "mobilenet_v2.onnx", ["image"], ["logits"])
    calib, evals, seen, held = _photos()
    n_held = 2 * len(held)
    all_, ho = f"all {len(evals)}", f"held-out {n_held}"

    def score(out: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, float]:
        top = np.array([int(np.argmax(o)) == int(np.argmax(r)) for o, r in zip(out, ref, strict=True)])
        cos = np.array([_cosine(o, r) for o, r in zip(out, ref, strict=True)])
        return {f"top-1 agreement, {all_}": float(top.mean()), f"logit cosine, {all_}": float(cos.mean()),
                f"top-1 agreement, {ho}": float(top[-n_held:].mean()),
                f"logit cosine, {ho}": float(cos[-n_held:].mean())}

    cols = [f"top-1 agreement, {all_}", f"logit cosine, {all_}", f"top-1 agreement, {ho}", f"logit cosine, {ho}"]
    return Case("mobilenet_v2", "MobileNetV2, ImageNet weights, 1x3x224x224", path, lambda: copy.deepcopy(master),
                example, ["image"], ["logits"], [{"image": c} for c in calib], [{"image": e} for e in evals],
                cols, score, cols[0], True,
                notes=[f"Figures vs the unpruned model (no labelled ImageNet data offline: agreement, not accuracy) "
                       f"on {len(evals)} images: center crops of {', '.join(seen)} (also in the calibration set, at "
                       f"other crops) and of the held-out {', '.join(held)}, each also flipped. Calibration "
                       f"(reconstruct): {len(calib)} images, a 3x3 grid of 224 crops of {', '.join(seen)} "
                       "preprocessed at 256, and their flips."])


MINILM_SEQ, MINILM_CALIB, MINILM_EVAL = 32, 400, 200


def _bert_heads(module: Any, example: Any) -> dict[str, Any]:
    """Torch-Pruning's options for HF BERT (its examples/transformers/prune_hf_bert.py): whole heads of every
    BertSelfAttention (num_heads, prune_num_heads), FFN units; the hidden size stays (its LayerNorms are ignored,
    as nasc leaves LayerNorm-normalized axes alone by default)."""
    import torch

    num_heads = {}
    for m in module.modules():
        if type(m).__name__ == "BertSelfAttention":
            for lin in (m.query, m.key, m.value):
                num_heads[lin] = m.num_attention_heads
    ignored = [m for m in module.modules() if isinstance(m, torch.nn.LayerNorm | torch.nn.Embedding)]
    return {"num_heads": num_heads, "prune_num_heads": True, "prune_head_dims": False, "ignored": ignored}


def _bert_after(module: Any, pruner: Any) -> None:
    for m in module.modules():
        if type(m).__name__ == "BertSelfAttention":
            m.num_attention_heads = pruner.num_heads[m.query]
            m.all_head_size = m.query.out_features
            m.attention_head_size = m.all_head_size // max(m.num_attention_heads, 1)


def minilm_case(tmp: Path) -> Case:
    from nasc.examples import zoo
    from nasc.examples.datasets import docstring_sentences

    sentences = docstring_sentences()
    calib_s, eval_s = sentences[:MINILM_CALIB], sentences[MINILM_CALIB:MINILM_CALIB + MINILM_EVAL]
    master, example = zoo.minilm(max_length=MINILM_SEQ, sentences=calib_s[:1])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    path = export(master, example, tmp / "minilm.onnx", names, ["last_hidden_state"])
    calib, evals = zoo.minilm_feeds(calib_s, MINILM_SEQ), zoo.minilm_feeds(eval_s, MINILM_SEQ)

    def score(out: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, float]:
        emb = zoo.sentence_embedding
        cos = [float(emb(o, f["attention_mask"])[0] @ emb(r, f["attention_mask"])[0])
               for o, r, f in zip(out, ref, evals, strict=True)]
        return {"embedding cosine, mean": float(np.mean(cos)), "min": float(np.min(cos))}

    return Case("minilm", f"all-MiniLM-L6-v2, batch 1, seq {MINILM_SEQ} (TorchScript exporter, opset 17)", path,
                lambda: copy.deepcopy(master), example, names, ["last_hidden_state"], calib, evals,
                ["embedding cosine, mean", "min"], score, "embedding cosine, mean", True,
                tp_setup=_bert_heads, tp_after=_bert_after,
                extra=[("drop-sublayers{n=2 kind=attention}", "drop-sublayers{n=2 kind=attention}")],
                notes=[f"English sentences from stdlib docstrings ({len(sentences)} of them, seeded order as in "
                       f"nasc.examples.datasets.docstring_sentences): the first {MINILM_CALIB} calibrate (reconstruct; "
                       f"drop-sublayers scores the first 64), the next {MINILM_EVAL} are held out for the figures: "
                       "cosine between the pruned and unpruned sentence embeddings (mean-pooled over the mask, "
                       "L2-normalised), mean and min. Both tools prune attention heads and FFN units and leave the "
                       "hidden size (LayerNorm axes) alone; Torch-Pruning with num_heads, prune_num_heads=True, "
                       "prune_head_dims=False and every LayerNorm and Embedding ignored."])


CASES: dict[str, Callable[[Path], Case]] = {"digits": digits_case, "fashion": fashion_case,
                                            "mobilenet_v2": mobilenet_case, "minilm": minilm_case}


# ---- rows ------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    tool: str  # "-", "nasc", "Torch-Pruning"
    setting: str
    path: Path | None = None
    macs: int = 0
    params: int = 0
    tp_macs_kept: float | None = None  # Torch-Pruning's own count, as a fraction of its count of the original
    figures: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    detail: str = ""
    error: str = ""
    seconds: float = 0.0


def nasc_prune(case: Case, pipeline: str, out: Path) -> tuple[Path, str]:
    import nasc

    g = nasc.optimize(nasc.load(str(case.path)), pipeline, case.calib, labels=None)
    sec = g.meta["passes"][-1]
    detail = ""
    d = sec.get("details", {})
    if "error_without_reconstruct" in d and "error" in d:
        detail = (f"calibration cosine {d['error_without_reconstruct'].get('cosine', float('nan')):.3f} -> "
                  f"{d['error'].get('cosine', float('nan')):.3f} by reconstruct")
    return nasc.export_onnx(g, out), detail


def _tp_pruner(tp: Any, module: Any, case: Case, ratio: float, round_to: int | None) -> Any:
    opts = case.tp_setup(module, case.example) if case.tp_setup else {}
    ignored = list(opts.pop("ignored", []))
    head = output_module(module, case.example)
    if head is not None and head not in ignored:
        ignored.append(head)
    if opts.get("prune_num_heads"):
        opts["head_pruning_ratio"] = ratio
    return tp.pruner.MetaPruner(module, case.example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                global_pruning=True, pruning_ratio=ratio, ignored_layers=ignored,
                                round_to=round_to, **opts)


def tp_prune_at(case: Case, ratio: float, round_to: int | None = None) -> tuple[Any, int, int]:
    """A fresh module pruned by Torch-Pruning at ``ratio``: (module, its MACs, its params) by TP's counter."""
    tp = tp_module()
    module = case.make_module()
    pruner = _tp_pruner(tp, module, case, ratio, round_to)
    pruner.step()
    if case.tp_after:
        case.tp_after(module, pruner)
    macs, params = tp.utils.count_ops_and_params(module, case.example)
    return module, int(macs), int(params)


def tp_prune_to(case: Case, keep: float, round_to: int | None = None) -> tuple[Any, float, float, int]:
    """Bisect Torch-Pruning's pruning_ratio until its MACs are ``keep`` of the original's (within MACS_TOL):
    (module, MACs kept, ratio, steps)."""
    tp = tp_module()
    base, _ = tp.utils.count_ops_and_params(case.make_module(), case.example)
    lo, hi = 0.0, 0.95
    best: tuple[Any, float, float] | None = None
    steps = 0
    for _ in range(14):
        steps += 1
        mid = (lo + hi) / 2
        module, macs, _ = tp_prune_at(case, mid, round_to)
        kept = macs / base
        if best is None or abs(kept - keep) < abs(best[1] - keep):
            best = (module, kept, mid)
        if abs(kept - keep) <= MACS_TOL * keep:
            break
        lo, hi = (mid, hi) if kept > keep else (lo, mid)
    assert best is not None
    return best[0], best[1], best[2], steps


def tp_export(case: Case, module: Any, out: Path) -> Path:
    return export(module, case.example, out, case.input_names, case.output_names)


#: timing: rounds over every build of a case, interleaved; each round a median of LATENCY_REPEAT runs; the
#: fastest round counts (this machine is shared: the quietest window is the closest to an idle machine)
LATENCY_ROUNDS, LATENCY_REPEAT = 8, 20


def measure(case: Case, row: Row, ref: list[np.ndarray], latency: bool, builds: dict[tuple[int, int], Path],
            tmp: Path) -> None:
    """MACs, params and figures of ``row.path``; with ``latency``, also build it for the cpu (once per shape)."""
    import nasc

    assert row.path is not None
    s = nasc.load(str(row.path)).summary()
    row.macs, row.params = int(s["macs"]), int(s["params"])
    outs = _ort_outputs(row.path, case.eval_feeds)
    row.figures = case.score(outs, ref or outs)
    key = (row.macs, row.params)
    if latency and key not in builds:
        out = tmp / f"{row.path.stem}_cpu"
        nasc.compile(str(row.path), "cpu", out, passes="simplify,fuse", calib=case.calib[:1], measure_latency=False,
                     fidelity_batches=1)
        builds[key] = out


def _ort_ms(path: Path, feed: Feed, threads: int) -> float:
    """Median ms of one ONNX Runtime run (all graph optimizations, ``threads`` intra-op threads)."""
    import onnxruntime as ort

    from nasc.runtime import median_ms

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    f = {k: v for k, v in feed.items() if k in names}
    return median_ms(lambda: sess.run(None, f), LATENCY_REPEAT, 2, 0.1)


def time_builds(case: Case, rows: list[Row], builds: dict[tuple[int, int], Path]) -> None:
    """Latency of every build, nasc and ONNX Runtime (on the same ONNX file, as many threads as nasc's runtime):
    the fastest of LATENCY_ROUNDS interleaved rounds, each the median of LATENCY_REPEAT runs."""
    from nasc.runtime import load as load_compiled

    feed = case.calib[0]
    threads = int(os.environ.get("TVM_NUM_THREADS", "0")) or (os.cpu_count() or 1)
    best: dict[tuple[int, int], dict[str, float]] = {}
    paths = {(r.macs, r.params): r.path for r in rows if r.path is not None and not r.error}
    models = {key: load_compiled(out) for key, out in builds.items()}
    for _ in range(LATENCY_ROUNDS):
        for key, model in models.items():
            ms = {"nasc": model.latency_ms(feed, repeat=LATENCY_REPEAT, warmup=2, min_seconds=0.1),
                  "onnxruntime": _ort_ms(paths[key], feed, threads)}
            cur = best.setdefault(key, ms)
            for k, v in ms.items():
                cur[k] = min(cur[k], v)
    for r in rows:
        r.latency = best.get((r.macs, r.params), {})


def run_case(case: Case, tmp: Path, latency: bool, round_tos: Sequence[int] = (8,),
             targets: Sequence[float] = TARGETS) -> list[Row]:
    rows = [Row("-", "unpruned", case.path)]
    cache: dict[tuple[int, int], Path] = {}
    t0 = time.perf_counter()
    measure(case, rows[0], [], latency, cache, tmp)
    rows[0].seconds = time.perf_counter() - t0
    ref = _ort_outputs(case.path, case.eval_feeds)
    tp = tp_module()
    jobs: list[tuple[str, str, Callable[[Path], tuple[Path, str]]]] = []
    for keep in targets:
        variants = [""] + (["reconstruct=true"] if case.reconstruct else [])
        for v in variants:
            pipe = f"prune{{macs={keep:g}{' ' + v if v else ''}}}"
            jobs.append(("nasc", pipe, lambda out, p=pipe: nasc_prune(case, p, out)))
        for rt in round_tos:
            pipe = f"prune{{macs={keep:g} round-to={rt}{' reconstruct=true' if case.reconstruct else ''}}}"
            jobs.append(("nasc", pipe, lambda out, p=pipe: nasc_prune(case, p, out)))
        jobs.append(("Torch-Pruning", f"MetaPruner, L2 group magnitude, global, MACs {keep:g}",
                     (lambda out, k=keep: _tp_job(case, k, None, out)) if tp else None))
        for rt in round_tos:
            jobs.append(("Torch-Pruning", f"MetaPruner, L2 group magnitude, global, MACs {keep:g}, round_to={rt}",
                         (lambda out, k=keep, r=rt: _tp_job(case, k, r, out)) if tp else None))
    for label, pipe in case.extra:
        jobs.append(("nasc", label, lambda out, p=pipe: nasc_prune(case, p, out)))
    for i, (tool, setting, fn) in enumerate(jobs):
        row = Row(tool, setting)
        t0 = time.perf_counter()
        if fn is None:
            row.error = TP_MISSING
        else:
            try:
                res = fn(tmp / f"{case.key}_{i}.onnx")
                row.path, row.detail = res[0], res[1]
                if len(res) > 2:
                    row.tp_macs_kept = res[2]
                measure(case, row, ref, latency, cache, tmp)
            except Exception as e:  # a failed row is reported; the others still run
                row.error = first_line(e)
                log(f"  {setting}: FAILED {row.error}")
                if os.environ.get("BENCH_PRUNE_TRACE"):
                    traceback.print_exc()
        row.seconds = time.perf_counter() - t0
        rows.append(row)
        log(f"  {tool} {setting}: {row.macs:,} MACs {row.figures} ({row.seconds:.0f} s)")
    if latency:
        t0 = time.perf_counter()
        time_builds(case, rows, cache)
        log(f"  timed {len(cache)} builds x {LATENCY_ROUNDS} rounds ({time.perf_counter() - t0:.0f} s)")
    return rows


def _tp_job(case: Case, keep: float, round_to: int | None, out: Path) -> tuple[Path, str, float]:
    module, kept, ratio, steps = tp_prune_to(case, keep, round_to)
    return tp_export(case, module, out), f"pruning_ratio {ratio:.4f} ({steps} bisection steps)", kept
