"""``recover``: distil the original model into the transformed graph on the calibration inputs.

The student is the current graph (pruned, tied, quantized: whatever the pipeline did so far), the teacher the
model as loaded. Both run in torch (the trainer comes from the API layer through ``PassContext.trainer``); the
loss matches the outputs, the features at block boundaries that both graphs still have (numbered scopes such as
``encoder.layer.3``, where the block's result keeps its shape), and the labels when the calibration data has
them. A seeded slice of the calibration feeds is held out: it picks the best step (early stopping) and gives
the figures reported. The trained values go back into the IR: a shared constant stays one value, and a
quantized weight is requantized to its integers (with its trained scale when scales train).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from nasc.errors import UsageError
from nasc.ir import dtypes
from nasc.ir.core import Graph, LazyArray, Node, Value
from nasc.passes import lossy
from nasc.passes.manager import Duration, Pass, PassContext, register_pass
from nasc.passes.recover_job import LOSSES, PRECISIONS, DistillJob, QuantWeight, describe, quantized_weights
from nasc.passes.tie_find import scope_copies

#: which constants train: everything trainable, the low-rank corrections of tie-layers, norms and biases, or
#: the quantization scales
TRAIN = ("all", "corrections", "norms", "scales")
_KIND_OF = {"corrections": "correction", "norms": "norm-or-bias", "scales": "scale"}
_NORMS = ("LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
          "RMSNormalization", "SimplifiedLayerNormalization", "nasc.RMSNorm")
#: operands that set a shape, a bound or an exponent rather than a value to learn
_NOT_LEARNED = ("Clip", "Pow", "Resize", "Pad", "Range", "ConstantOfShape", "Where", "Expand")


@register_pass
@dataclass(frozen=True)
class Recover(Pass):
    """Train the graph's parameters to match the original model on the calibration inputs (distillation).

    ``train``: all, corrections (tie-layers' low-rank paths), norms (norm scales and shifts, biases) or scales
    (quantization scales, LSQ); ``learn-scales`` adds the scales to ``all``, ``embeddings`` the embedding
    tables (Gather from a constant: left out by default, as their gradient is a dense table per sample). Quantized weights train through
    fake quantization and are requantized. ``features`` weighs block-boundary features, ``labels`` the
    cross-entropy against calibration labels; ``holdout`` of the feeds (seeded) pick the best step; ``mask``
    names an input (an attention mask) whose zeros drop padded positions from the loss. ``precision`` (auto,
    fp32, bf16) is the student's training forward: auto takes bf16 on CPUs with native bfloat16 unless the
    graph is quantized (about 1.7x the steps per second on MiniLM). Moves
    results toward the original model's, never away on the held-out slice (step 0 is kept if nothing helps).
    """

    name: ClassVar[str] = "recover"
    lossy: ClassVar[bool] = True
    train: str = "all"
    learn_scales: bool = False
    embeddings: bool = False
    steps: int = 300
    batch: int = 16
    lr: float = 1e-4
    holdout: float = 0.2
    eval_every: int = 25
    patience: int = 4
    loss: str = "auto"
    mask: str = ""
    features: float = 1.0
    labels: float = 1.0
    time: Duration | None = None
    freeze: str = ""
    precision: str = "auto"

    def __post_init__(self) -> None:
        self.check_option("train", self.train in TRAIN, ", ".join(TRAIN))
        self.check_option("loss", self.loss in LOSSES, ", ".join(LOSSES))
        self.check_option("precision", self.precision in PRECISIONS, ", ".join(PRECISIONS))
        self.check_option("steps", self.steps >= 1, "a positive number of optimizer steps")
        self.check_option("batch", self.batch >= 1, "a positive batch size")
        self.check_option("lr", self.lr > 0, "a positive learning rate")
        self.check_option("holdout", 0 < self.holdout < 1, "a fraction in (0, 1) of the calibration feeds")
        self.check_option("eval_every", self.eval_every >= 1, "a positive number of steps")
        self.check_option("patience", self.patience >= 1, "a positive number of evaluations")
        self.check_option("features", self.features >= 0, "a weight >= 0 (0: outputs only)")
        self.check_option("labels", self.labels >= 0, "a weight >= 0 (0: ignore labels)")
        try:
            re.compile(self.freeze)
        except re.error as e:
            self.check_option("freeze", False, f"a regular expression over constant names and scopes: {e}")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        feeds = lossy.need_calib(ctx, "recover", "distillation from the original model")
        if len(feeds) < 2:
            raise UsageError(f"recover: needs at least 2 calibration feeds (one to train, one held out); got "
                             f"{len(feeds)}")
        if ctx.original is None or ctx.trainer is None:
            raise UsageError("recover: needs the original model and torch; run it through nasc.optimize or "
                             "nasc compile (pip install torch==2.13.0 if torch is missing)")
        names = [v.name for v in graph.inputs]
        if self.mask and self.mask not in names:
            raise UsageError(f"recover: mask={self.mask!r} is not an input of the graph; inputs: {', '.join(names)}")
        trainable = trainable_values(graph, self.train, self.learn_scales, self.freeze, self.embeddings)
        if not trainable:
            raise UsageError(f"recover: nothing to train with train={self.train} in this graph: "
                             + _nothing_hint(self.train))
        pairs = boundaries(graph, ctx.original) if self.features else []
        rng = np.random.default_rng(ctx.seed)
        perm = rng.permutation(len(feeds))
        n_held = min(max(1, round(self.holdout * len(feeds))), len(feeds) - 1)
        held, train = perm[:n_held], perm[n_held:]
        labels = ctx.labels if ctx.labels is not None and len(ctx.labels) == len(feeds) else None
        job = DistillJob(graph, ctx.original, trainable, pairs, [feeds[i] for i in train], [feeds[i] for i in held],
                         None if labels is None else labels[train], None if labels is None else labels[held],
                         self.loss, self.mask, self.features, self.labels, self.lr, self.steps, self.batch, self.eval_every,
                         self.patience, ctx.seed, None if self.time is None else float(self.time), ctx.log,
                         ctx.label_output, self.precision)
        result = ctx.trainer.distill(job)
        changed = result.best_step > 0
        if changed:
            write_back(graph, {id(v): v for v in trainable}, result.values)
        n_params = sum(int(np.prod(v.shape)) for v in trainable)
        ctx.details.update(describe(result) | {"train": self.train, "trained_values": len(trainable),
                                               "trained_params": n_params, "features": [s.name for s, _ in pairs],
                                               "train_feeds": len(train), "held_feeds": len(held)})
        for v in trainable:
            ctx.count(f"train-{_kind(v)}")
        ctx.note(_summary(result.before, result.after) + f"; {result.steps} steps ({result.stopped}, best at "
                 f"{result.best_step}), {len(trainable)} tensors / {n_params} params trained on {len(train)} feeds, "
                 f"{len(held)} held out, {len(pairs)} block features, {result.precision}, {result.time_s:.1f} s"
                 + ("" if changed else "; no step beat the start, graph unchanged"))
        return changed


def _summary(before: dict[str, float], after: dict[str, float]) -> str:
    keys = [k for k in ("loss", "cosine", "agreement", "accuracy") if k in before]
    return "held-out " + ", ".join(f"{k} {before[k]:.4g} → {after[k]:.4g}" for k in keys)


def _nothing_hint(train: str) -> str:
    return {"corrections": "no low-rank corrections (run tie-layers first)",
            "scales": "no quantization scales (run quantize first)",
            "norms": "no norm parameters or biases"}.get(train, "no floating-point weights or quantized weights")


# ---- what trains ------------------------------------------------------------------------------------------


def _readers(v: Value) -> list[Node]:
    return [n for n, _ in v.uses]


def _is_scale(v: Value) -> bool:
    """A quantization scale (not an int32 bias's, which follows from the input's and the weight's)."""
    return any(n.op in ("QuantizeLinear", "DequantizeLinear") and i == 1 and n.input(0).dtype != "i32"
               for n, i in v.uses)


def _is_norm_or_bias(v: Value) -> bool:
    for n, i in v.uses:
        if n.qualified_op in _NORMS and i >= 1:
            return True
        if n.op in ("Conv", "ConvTranspose", "Gemm") and i == 2:
            return True
        if n.op in ("Add", "Sub") and sum(d > 1 for d in v.shape) <= 1:
            return True
        if n.op == "DequantizeLinear" and i == 0 and v.dtype == "i32":  # a quantized bias
            return True
    return False


def _is_table(v: Value) -> bool:
    """An embedding table: the data Gather reads (directly or dequantized)."""
    return any((n.op == "Gather" and i == 0) or (n.op == "DequantizeLinear" and i == 0 and _is_table(n.outputs[0]))
               for n, i in v.uses)


def _kind(v: Value) -> str:
    if _is_scale(v):
        return "scale"
    if any(n.meta.get("tie.correction") for n in _readers(v)):
        return "correction"
    if _is_norm_or_bias(v):
        return "norm-or-bias"
    return "weight"


def trainable_values(graph: Graph, which: str, learn_scales: bool = False, freeze: str = "",
                     embeddings: bool = False) -> list[Value]:
    """The constants ``recover{train=which}`` trains: floating-point tensors of more than one element (finite,
    not a shape, bound or exponent), and integer weights behind DequantizeLinear (through their float shadow);
    embedding tables (read by Gather as its data) only with ``embeddings``."""
    rx = re.compile(freeze) if freeze else None
    qw = quantized_weights(graph)
    out = []
    for v in graph.constants:
        if not v.uses or (v.dtype not in dtypes.FLOAT_DTYPES and id(v) not in qw):
            continue
        scalar = int(np.prod(v.shape)) <= 1 and not _is_scale(v)
        if v.dtype in dtypes.FLOAT_DTYPES and (scalar or not np.all(np.isfinite(v.data))):
            continue
        if any(n.op in _NOT_LEARNED for n in _readers(v)) or any(n.op == "DequantizeLinear" and i == 2
                                                                for n, i in v.uses):
            continue
        if not embeddings and _is_table(v):
            continue
        if rx is not None and (rx.search(v.name) or any(rx.search(n.scope or "") for n in _readers(v))):
            continue
        kind = _kind(v)
        if which == "all":
            if kind != "scale" or learn_scales:
                out.append(v)
        elif kind == _KIND_OF[which]:
            out.append(v)
    return out


# ---- block boundaries ------------------------------------------------------------------------------------


def _block_outputs(graph: Graph) -> dict[str, Value]:
    """Numbered scope (``blocks.3``) -> the last value its nodes produce that something outside reads."""
    outs = {id(v) for v in graph.outputs}
    found: dict[str, Value] = {}
    for stem, by_index in scope_copies(graph).items():
        for i, nodes in by_index.items():
            inside = {id(n) for n in nodes}
            for n in reversed(nodes):
                v = next((o for o in n.outputs if id(o) in outs or any(id(u) not in inside for u, _ in o.uses)), None)
                if v is not None:
                    found[f"{stem}.{i}" if stem else str(i)] = v
                    break
    return found


def boundaries(student: Graph, teacher: Graph) -> list[tuple[Value, Value]]:
    """(student value, teacher value) at the block boundaries both graphs have with one float shape, in the
    student's order; graph outputs are left to the output loss."""
    s, t = _block_outputs(student), _block_outputs(teacher)
    outs = {id(v) for v in student.outputs}
    pairs = []
    for scope, sv in s.items():
        tv = t.get(scope)
        if tv is None or id(sv) in outs or sv.dtype not in dtypes.FLOAT_DTYPES or tv.dtype != sv.dtype:
            continue
        try:
            if sv.shape == tv.shape:
                pairs.append((sv, tv))
        except ValueError:
            continue
    return pairs


# ---- writing back ----------------------------------------------------------------------------------------


def _set(v: Value, arr: np.ndarray) -> None:
    arr = np.array(arr, dtype=np.asarray(v.data).dtype).reshape(v.shape)  # (0-d stays 0-d)
    v.const = LazyArray(arr.shape, v.dtype, lambda a=arr: a)  # type: ignore[misc]


def write_back(graph: Graph, trainable: dict[int, Value], values: dict[int, np.ndarray]) -> None:
    """Put trained contents into the constants: floats as they are, integer weights requantized with their
    (possibly trained) scales; int32 biases then follow the scales of their input and weight."""
    qw = quantized_weights(graph)
    for key, arr in values.items():
        v = trainable[key]
        if key not in qw and v.dtype in dtypes.FLOAT_DTYPES:
            _set(v, arr)
    for key, arr in values.items():
        if key in qw:
            w = qw[key]
            _set(w.q, w.requantized(arr, np.asarray(w.scale.data)))
    for n in graph.nodes:
        if n.op in ("Conv", "Gemm") and n.has_input(2):
            _rescale_bias(n, qw)


def _rescale_bias(n: Node, qw: dict[int, QuantWeight]) -> None:
    """Keep an int32 bias at scale s_x * s_w (integer kernels add it to the accumulator) when those moved."""
    b, w = n.input(2).producer, n.input(1).producer
    x = n.input(0).producer
    if b is None or w is None or x is None or b.op != "DequantizeLinear" or w.op != "DequantizeLinear" \
            or x.op != "DequantizeLinear" or id(b.input(0)) not in qw or not x.input(1).is_const:
        return
    bias = qw[id(b.input(0))]
    want = (np.float32(np.asarray(x.input(1).data).reshape(-1)[0]) * np.asarray(w.input(1).data,
                                                                                  np.float32)).astype(np.float32)
    have = np.asarray(bias.scale.data, np.float32)
    if want.shape == have.shape and np.array_equal(want, have):
        return
    real = bias.dequantized()
    if len(bias.scale.uses) == 1:
        _set(bias.scale, want)
        _set(bias.q, np.clip(np.round(real / want.astype(np.float32)), bias.lo, bias.hi))
