"""Quantization passes: ``quant-policy`` (choose a weight width per layer under budgets) and ``quantize``
(realise it as QDQ pairs: int8 / packed int4 weights, uint8 activations, int32 biases).

Both are lossy. Their accuracy is measured, never assumed: the policy is chosen from sensitivities
measured on the calibration inputs, and every build reports its error against the float model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasc.errors import UsageError
from nasc.ir import dtypes
from nasc.ir.analysis import node_cost
from nasc.ir.core import Graph, Node, Value
from nasc.ir.ops.registry import emit
from nasc.ir.text import POLICY_KEY
from nasc.ir.types import TensorType
from nasc.passes import lossy
from nasc.passes import quant_math as qm
from nasc.passes.manager import Budgets, ByteSize, Duration, Pass, PassContext, register_pass

SENSITIVITY_SAMPLES = 16


@dataclass
class Layer:
    """A quantizable node: its weight operand (None for a matmul of two activations), the weight's channel
    axis, and the operands quantized as activations."""

    node: Node
    key: str
    weight: int | None
    axis: int
    acts: list[int]
    macs: int = 0

    @property
    def weight_value(self) -> Value | None:
        return self.node.input(self.weight) if self.weight is not None else None


def _is_float_const(v: Value | None) -> bool:
    return v is not None and v.is_const and v.dtype in ("f32", "f16", "bf16") and v.tensor_type.is_static


def find_layers(graph: Graph, keep_float: str = "") -> list[Layer]:
    """Conv, ConvTranspose, Gemm and MatMul with a constant float weight, Gather from a constant table (an
    embedding); MatMul of two activations and nasc.Attention (their activation operands only). Layers whose scope or name matches ``keep_float`` stay
    float."""
    rx = re.compile(keep_float) if keep_float else None
    layers: list[Layer] = []
    seen: set[str] = set()
    for i, n in enumerate(graph.nodes):
        if rx is not None and (rx.search(n.scope or "") or rx.search(n.name or "")):
            continue
        layer = _layer_of(n)
        if layer is None:
            continue
        key = n.name or f"{n.op}_{i}"
        while key in seen:
            key += "'"
        seen.add(key)
        layer.key = key
        layer.macs = node_cost(n).macs
        layers.append(layer)
    return layers


def _layer_of(n: Node) -> Layer | None:
    op = n.qualified_op
    if op == "Gather" and _is_float_const(n.input(0)) and len(n.input(0).shape) == 2 and int(n.attr("axis", 0)) == 0:
        return Layer(n, "", 0, 0, [])  # an embedding table: one scale per row, nothing to quantize on its input
    if op in ("Conv", "ConvTranspose") and _is_float_const(n.input(1)) and not n.input(0).is_const:
        if op == "ConvTranspose" and int(n.attr("group") or 1) != 1:
            return None
        return Layer(n, "", 1, 0 if op == "Conv" else 1, [0])
    if op == "Gemm" and _is_float_const(n.input(1)) and not int(n.attr("transA") or 0):
        return Layer(n, "", 1, 0 if int(n.attr("transB") or 0) else 1, [0])
    if op == "MatMul":
        a, b = n.input(0), n.input(1)
        if _is_float_const(b) and not a.is_const and len(b.shape) >= 2:
            return Layer(n, "", 1, len(b.shape) - 1, [0])
        if not a.is_const and not b.is_const and a.dtype == "f32" and b.dtype == "f32":
            return Layer(n, "", None, 0, [0, 1])
    if op == "nasc.Attention":
        return Layer(n, "", None, 0, [0, 1, 2])
    return None


#: ops whose inputs and output quantize when ``outputs`` is on, so that integer kernels can cover them
INTEGER_OPS = ("Add", "GlobalAveragePool", "AveragePool", "MaxPool")


def integer_ops(graph: Graph, keep_float: str = "") -> list[Layer]:
    """Add of two activations and pooling: they stay float in QDQ form but join integer regions."""
    rx = re.compile(keep_float) if keep_float else None
    out = []
    for n in graph.nodes:
        if n.op not in INTEGER_OPS or n.domain or (rx is not None and (rx.search(n.scope or "") or
                                                                       rx.search(n.name or ""))):
            continue
        acts = [i for i, v in enumerate(n.inputs) if v is not None and not v.is_const and v.dtype == "f32"]
        # only where every input comes from an integer-capable op: a transformer's mask Add or a residual
        # from a LayerNorm would be quantized over ranges that make no sense for uint8
        if not acts or (n.op == "Add" and len(acts) != 2) or not all(_from_integer_op(n.input(i)) for i in acts):
            continue
        out.append(Layer(n, n.name or n.op, None, 0, acts))
    return out


#: activations that integer kernels fold into their output clamp (also read by backends/tvm/qint.py)
FOLDED_ACTIVATIONS = ("Relu", "Clip", "nasc.Relu6")


def _from_integer_op(v: Value) -> bool:
    p = v.producer
    while p is not None and p.qualified_op in FOLDED_ACTIVATIONS:
        p = p.input(0).producer
    return p is not None and not p.domain and p.op in ("Conv", "Gemm", *INTEGER_OPS)


def chain_end(v: Value) -> Value:
    """``v`` followed through a single-reader chain of Relu / Clip (the activations integer kernels fold in)."""
    while len(v.uses) == 1 and v.uses[0][0].qualified_op in FOLDED_ACTIVATIONS:
        node = v.uses[0][0]
        if node.op == "Clip" and not all(x is None or x.is_const for x in node.inputs[1:]):
            break
        if any(o is v for o in node.graph.outputs) if node.graph is not None else False:
            break
        v = node.outputs[0]
    return v


# ---- measuring -------------------------------------------------------------------------------------


#: calibration feeds evaluated at a time: the activations of one chunk are held, never those of every feed
#: (MobileNetV2 has about 25 MB of them per image)
CALIB_CHUNK = 16
#: values kept per activation for the percentile and mse methods: all of them up to this many, else an even
#: share of each feed's (every k-th value)
CALIB_KEEP = 1 << 21


class _RangeStats:
    """One activation's extremes, mean per channel and kept values, accumulated feed by feed."""

    def __init__(self, n_feeds: int, keep: bool) -> None:
        self.lo, self.hi, self.n_feeds, self.keep = np.inf, -np.inf, n_feeds, keep
        self.channel_sum: np.ndarray | None = None
        self.kept: list[np.ndarray] = []

    def add(self, arr: np.ndarray) -> None:
        a = np.asarray(arr, dtype=np.float32)
        if a.size:
            self.lo, self.hi = min(self.lo, float(a.min())), max(self.hi, float(a.max()))
        # mean per channel: axis 1 for rank-4 (NCHW) tensors, the last axis otherwise
        m = a.mean(axis=(0, 2, 3)) if a.ndim == 4 else a.reshape(-1, a.shape[-1]).mean(axis=0)
        self.channel_sum = m if self.channel_sum is None else self.channel_sum + m
        if self.keep:
            flat = a.reshape(-1)
            share = max(1, CALIB_KEEP // self.n_feeds)
            self.kept.append(flat if flat.size <= share else flat[::-(-flat.size // share)].copy())

    def result(self, method: str, percentile: float) -> tuple[float, float, np.ndarray]:
        assert self.channel_sum is not None
        means = self.channel_sum / self.n_feeds
        if not np.isfinite(self.lo):  # empty tensors
            return 0.0, 1.0, means
        x = np.concatenate(self.kept) if self.kept else np.zeros(0, np.float32)
        return (*qm.act_range_of(x, self.lo, self.hi, method, percentile), means)


def activation_ranges(graph: Graph, layers: list[Layer], ctx: PassContext, feeds: list[dict[str, np.ndarray]],
                      method: str, percentile: float, extra: list[Value] | None = None
                      ) -> dict[int, tuple[float, float, np.ndarray]]:
    """Per activation value (by id): its calibrated range and its per-channel mean (for bias correction),
    evaluated CALIB_CHUNK feeds at a time (memory does not grow with the number of feeds)."""
    values: list[Value] = []
    candidates = [layer.node.input(i) for layer in layers for i in layer.acts] + list(extra or [])
    for v in candidates:
        if v is not None and not v.is_const and all(v is not u for u in values):
            values.append(v)
    if not values:
        return {}
    stats = [_RangeStats(len(feeds), method != "minmax") for _ in values]
    for start in range(0, len(feeds), CALIB_CHUNK):
        for per_feed in ctx.evaluate(graph, feeds[start:start + CALIB_CHUNK], values):
            for st, arr in zip(stats, per_feed, strict=True):
                st.add(arr)
    return {id(v): st.result(method, percentile) for v, st in zip(values, stats, strict=True)}


# ---- realising QDQ ---------------------------------------------------------------------------------


@dataclass
class _Rewriter:
    graph: Graph
    ranges: dict[int, tuple[float, float, np.ndarray]]
    bias_correction: bool
    reduce_range: bool = False
    act_cache: dict[int, Value] = field(default_factory=dict)
    weight_cache: dict[tuple[int, int], tuple[Value, np.ndarray, np.ndarray]] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0

    def act(self, layer: Layer, i: int) -> None:
        x = layer.node.input(i)
        if x is None or x.is_const or id(x) not in self.ranges:
            return
        if id(x) not in self.act_cache:
            lo, hi, _ = self.ranges[id(x)]
            scale, zp = qm.act_qparams(lo, hi)
            g = self.graph
            s = g.add_constant(np.array(scale, dtype=np.float32), name=f"{x.name}_scale")
            z = g.add_constant(np.array(zp, dtype=np.uint8), name=f"{x.name}_zero_point")
            q = emit(g, layer.node, "QuantizeLinear", [x, s, z], name=f"{x.name}/QuantizeLinear")
            self.act_cache[id(x)] = emit(g, layer.node, "DequantizeLinear", [q, s, z], name=f"{x.name}/DequantizeLinear")
        self.graph.set_input(layer.node, i, self.act_cache[id(x)])

    def output(self, v: Value) -> None:
        """QDQ after ``v`` for all its readers (graph outputs included: the DQ result takes over its name)."""
        if id(v) not in self.ranges or v.producer is None:
            return
        lo, hi, _ = self.ranges[id(v)]
        scale, zp = qm.act_qparams(lo, hi)
        g = self.graph
        s = g.add_constant(np.array(scale, dtype=np.float32), name=f"{v.name}_scale")
        z = g.add_constant(np.array(zp, dtype=np.uint8), name=f"{v.name}_zero_point")
        prod = v.producer
        q = g.make_node("QuantizeLinear", [v, s, z], [TensorType("u8", v.shape)], scope=prod.scope,
                        name=f"{v.name}/QuantizeLinear", after=prod)
        dq = g.make_node("DequantizeLinear", [q.outputs[0], s, z], [v.type], scope=prod.scope,
                         name=f"{v.name}/DequantizeLinear", after=q)
        for node, i in [(n, i) for n, i in v.uses if n is not q and i >= 0]:
            g.set_input(node, i, dq.outputs[0])
        if any(o is v for o in g.outputs):
            g.outputs = [dq.outputs[0] if o is v else o for o in g.outputs]
            dq.outputs[0].name, v.name = v.name, f"{v.name}_float"

    def weight(self, layer: Layer, bits: int) -> None:
        w = layer.weight_value
        assert w is not None and layer.weight is not None
        key = (id(w), bits)
        if key not in self.weight_cache:
            data = np.asarray(w.data, dtype=np.float32)
            q, scale = qm.quantize_weight(data, bits, layer.axis, self.reduce_range)
            dt = qm.weight_dtype(bits)
            g = self.graph
            qv = g.add_constant(q.astype(dtypes.to_numpy(dt)), name=f"{w.name}_quantized")
            sv = g.add_constant(scale, name=f"{w.name}_scale")
            # symmetric: the zero point is 0, ONNX's default when the operand is left out
            deq = emit(g, layer.node, "DequantizeLinear", [qv, sv], {"axis": layer.axis},
                       name=f"{w.name}/DequantizeLinear")
            self.weight_cache[key] = (deq, qm.dequantize_weight(q, scale, layer.axis) - data, scale)
            self.bytes_before += w.tensor_type.nbytes
            self.bytes_after += qv.tensor_type.nbytes + sv.tensor_type.nbytes
        deq, delta, scale = self.weight_cache[key]
        self.graph.set_input(layer.node, layer.weight, deq)
        self.bias(layer, delta, scale)

    def bias(self, layer: Layer, delta: np.ndarray, w_scale: np.ndarray) -> None:
        """Bias correction (remove the mean shift the weight rounding causes on calibration data) and an
        int32 bias at scale s_x * s_w, for Conv and Gemm."""
        n = layer.node
        if n.qualified_op not in ("Conv", "Gemm"):
            return
        x = n.input(0)
        src = _source_of(x)
        info = self.ranges.get(id(src)) if src is not None else None
        b = n.input(2) if n.has_input(2) else None
        if info is None or (b is not None and not _is_float_const(b)):
            return
        out_ch = delta.shape[layer.axis]
        bias = np.zeros(out_ch, dtype=np.float32) if b is None else np.asarray(b.data, np.float32).reshape(-1)
        if bias.size != out_ch:
            return
        if self.bias_correction:
            bias = bias - _mean_shift(n, delta, info[2])
        lo, hi, _ = info
        s_x, _ = qm.act_qparams(lo, hi)
        scale = (np.float32(s_x) * w_scale).astype(np.float32)
        qb = np.clip(np.round(bias / scale), -(2**31) + 1, 2**31 - 1).astype(np.int32)
        g = self.graph
        base = b.name if b is not None else f"{n.name}_bias"
        bq = g.add_constant(qb, name=f"{base}_quantized")
        bs = g.add_constant(scale, name=f"{base}_scale")
        deq = emit(g, n, "DequantizeLinear", [bq, bs], {"axis": 0}, name=f"{base}/DequantizeLinear")
        if b is not None:
            self.bytes_before += b.tensor_type.nbytes
        self.bytes_after += bq.tensor_type.nbytes + bs.tensor_type.nbytes
        if len(n.inputs) < 3:
            g.set_inputs(n, [*n.inputs, deq])
        else:
            g.set_input(n, 2, deq)


def _source_of(x: Value) -> Value | None:
    """The float activation behind a DequantizeLinear(QuantizeLinear(a)) pair."""
    p = x.producer
    if p is None or p.op != "DequantizeLinear":
        return x
    q = p.input(0).producer
    return q.input(0) if q is not None and q.op == "QuantizeLinear" else None


def _mean_shift(n: Node, delta: np.ndarray, mean_x: np.ndarray) -> np.ndarray:
    """E[(W_q - W) x] per output channel from the per-channel input means."""
    if n.op == "Gemm":
        return (delta @ mean_x) if int(n.attr("transB") or 0) else (mean_x @ delta)
    groups = int(n.attr("group") or 1)
    co, ci_g = delta.shape[0], delta.shape[1]
    per = delta.reshape(co, ci_g, -1).sum(axis=2)  # [Co, Ci/g]
    out = np.zeros(co, dtype=np.float32)
    for c in range(co):
        gi = c // (co // groups)
        out[c] = float(per[c] @ mean_x[gi * ci_g:(gi + 1) * ci_g])
    return out


def realise(graph: Graph, layers: list[Layer], bits: dict[str, int], ranges: dict[int, tuple[float, float, np.ndarray]],
            bias_correction: bool, reduce_range: bool = False) -> _Rewriter:
    """Insert the QDQ pairs of ``layers`` (weight width per layer key, 0 = keep float)."""
    return realise_with(_Rewriter(graph, ranges, bias_correction, reduce_range), layers, bits)


def realise_with(rw: _Rewriter, layers: list[Layer], bits: dict[str, int]) -> _Rewriter:
    for layer in layers:
        b = bits.get(layer.key, 0)
        if layer.weight is not None and b == 0:
            continue
        for i in layer.acts:
            rw.act(layer, i)
        if layer.weight is not None:
            rw.weight(layer, b)
    return rw


# ---- the passes ------------------------------------------------------------------------------------

#: the ``calib`` methods of quantize: how activation ranges are taken from the calibration samples
CALIB_METHODS = ("minmax", "percentile", "mse")


def _check_regex(p: Pass, option: str) -> None:
    try:
        re.compile(getattr(p, option))
    except re.error as e:
        p.check_option(option, False, f"a Python regular expression (matched against layer scopes and names): {e}")


@register_pass
@dataclass(frozen=True)
class Quantize(Pass):
    """Quantize weights (int8 / packed int4 per channel) and activations (uint8 per tensor) as QDQ pairs.

    Biases become int32 at scale s_x * s_w, with bias correction. Realises the policy of a preceding quant-policy pass, else ``bits`` for every layer. Needs calibration
    inputs for the activation ranges (``calib``: minmax, percentile or mse). Lossy: int8 typically moves
    outputs by ~1% of their range; the report measures it. ``reduce-range`` keeps weights to 7 (3) bits:
    for ONNX Runtime on x86 CPUs without VNNI, whose u8 x s8 kernels saturate on full-range weights.
    """

    name = "quantize"
    lossy = True
    bits: int = 8
    act_bits: int = 8
    calib: str = "minmax"
    percentile: float = 99.99
    bias_correction: bool = True
    keep_float: str = ""
    reduce_range: bool = False
    outputs: bool = True

    def __post_init__(self) -> None:
        self.check_option("bits", self.bits in qm.WEIGHT_BITS, "8 or 4 (the weight widths quantize stores)")
        self.check_option("act_bits", self.act_bits == 8, "8 (activations are quantized to uint8)")
        self.check_option("calib", self.calib in CALIB_METHODS, "minmax, percentile or mse")
        self.check_option("percentile", 0.0 < self.percentile <= 100.0, "a number in (0, 100], e.g. 99.99")
        _check_regex(self, "keep_float")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        feeds = lossy.need_calib(ctx, "quantize", "quantization ranges and sensitivities")
        layers = find_layers(graph, self.keep_float)
        policy = graph.meta.get(POLICY_KEY)
        if policy:
            bits = {k: int(v["bits"]) for k, v in policy.items()}
            layers = [lay for lay in layers if lay.key in bits]
        else:
            bits = {lay.key: self.bits for lay in layers}
        joined = integer_ops(graph, self.keep_float) if self.outputs else []
        ends = [chain_end(lay.node.outputs[0]) for lay in layers + joined
                if self.outputs and lay.node.op in ("Conv", "Gemm", *INTEGER_OPS)
                and (lay.weight is None or bits.get(lay.key))]
        ranges = activation_ranges(graph, layers + joined, ctx, feeds, self.calib, self.percentile, ends)
        for v in ends:  # a max pool's output takes its input's quantization: it then runs on the uint8 values
            src = v.producer.input(0) if v.producer is not None and v.producer.op == "MaxPool" else None
            if src is not None and id(src) in ranges and id(v) in ranges:
                ranges[id(v)] = (*ranges[id(src)][:2], ranges[id(v)][2])
        rw = _Rewriter(graph, ranges, self.bias_correction, self.reduce_range)
        for v in ends:  # outputs first: a later layer then reads their DQ and needs no pair of its own
            if all(u is not v for u in ends[:ends.index(v)]):
                rw.output(v)
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        realise_with(rw, sorted(layers + joined, key=lambda lay: order[id(lay.node)]), bits)
        for lay in layers:
            if lay.weight is not None and bits.get(lay.key):
                ctx.count(f"int{bits[lay.key]}-{lay.node.op}")
            elif lay.weight is None:
                ctx.count(f"int8-act-{lay.node.op}")
        graph.remove_dead()
        graph.meta["quantization"] = {"weights_bytes_before": rw.bytes_before, "weights_bytes_after": rw.bytes_after,
                                      "calib": self.calib, "samples": len(feeds), "layers": len(layers)}
        ctx.note(f"quantized weights {rw.bytes_before} → {rw.bytes_after} bytes; activation ranges from "
                 f"{len(feeds)} calibration samples ({self.calib})")
        return bool(layers)


# ---- the policy -------------------------------------------------------------------------------------

# Estimated cycles per MAC by weight width, for the latency budget (documented as an estimate: Cortex-M4/M7
# single-cycle FP MAC; two 8-bit MACs per cycle with SMLAD; int4 adds unpacking). CPU: per ns at 2 cores.
_CYCLES_PER_MAC = {32: 1.0, 8: 0.5, 4: 0.6}
_CPU_MACS_PER_S = {32: 50e9, 8: 100e9, 4: 80e9}


def _latency_s(macs: int, bits: int, budgets: Budgets) -> float:
    if budgets.clock_hz:
        return macs * _CYCLES_PER_MAC[bits] / budgets.clock_hz
    return macs / _CPU_MACS_PER_S[bits]


def _weight_bytes(w: Value, bits: int, axis: int) -> int:
    """What ``quantize`` stores for a weight: the packed integers and one f32 scale per channel."""
    channels = int(w.shape[axis % len(w.shape)])
    numel = int(np.prod(w.shape))
    return (numel * bits + 7) // 8 + 4 * channels


def _score(metric: str, ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    errs = []
    for r, g in zip(ref, got):
        for a, b in zip(r, g):
            a = np.asarray(a, np.float64).reshape(-1)
            b = np.asarray(b, np.float64).reshape(-1)
            rel = float(np.sum((a - b) ** 2) / max(np.sum(a * a), 1e-30))
            if metric == "mse":
                errs.append(rel)
            elif metric == "cosine":
                errs.append(1.0 - float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-30))
            else:  # top1: flips, with the relative error to break ties
                errs.append(float(np.argmax(a) != np.argmax(b)) + 1e-3 * rel)
    return float(np.mean(errs)) if errs else 0.0


def _clone_mapped(graph: Graph) -> tuple[Graph, dict[int, Value], dict[int, Node]]:
    g2 = graph.clone()
    vals = dict(zip((id(v) for v in graph.values()), g2.values()))
    nodes = dict(zip((id(n) for n in graph.nodes), g2.nodes))
    return g2, vals, nodes


def _sensitivity(graph: Graph, layer: Layer, bits: int, ranges: dict[int, tuple[float, float, np.ndarray]],
                 ctx: PassContext, feeds: list[dict[str, np.ndarray]], ref: list[list[np.ndarray]],
                 metric: str) -> float:
    """The metric between the float model and the model with only ``layer`` quantized (weight at ``bits``,
    its activation inputs at 8 bits)."""
    g2, vals, nodes = _clone_mapped(graph)
    mapped = {id(vals[k]) if k in vals else k: r for k, r in ranges.items()}
    lay2 = Layer(nodes[id(layer.node)], layer.key, layer.weight, layer.axis, layer.acts, layer.macs)
    realise(g2, [lay2], {layer.key: bits}, mapped, bias_correction=True)
    return _score(metric, ref, ctx.evaluate(g2, feeds))


#: how quant-policy rates a layer's width: by measuring the outputs, or by the Fisher-weighted rounding error
SENSITIVITIES = ("measured", "fisher")
FISHER_BATCH = 4


def _fisher(graph: Graph, layers: list[Layer], ctx: PassContext,
            feeds: list[dict[str, np.ndarray]]) -> dict[int, np.ndarray]:
    """Per weight (by id): the diagonal Fisher estimate E[g^2], g the gradient of a random projection of the
    outputs (so that E[g^2] = diag(J^T J) / var(y)): the rounding error d then costs about sum(F * d^2)."""
    if ctx.trainer is None:
        raise UsageError("quant-policy: sensitivity=fisher needs gradients through the graph (torch); run it "
                         "through nasc.optimize or nasc compile with torch installed")
    weights = list({id(w): w for lay in layers if (w := lay.weight_value) is not None}.values())
    sums = [np.zeros(w.shape, np.float64) for w in weights]
    n = 0
    for grads in ctx.trainer.probe_gradients(graph, feeds, weights, ctx.seed, FISHER_BATCH):
        for acc, g in zip(sums, grads, strict=True):
            acc += np.asarray(g, np.float64) ** 2
        n += 1
    return {id(w): acc / max(n, 1) for w, acc in zip(weights, sums, strict=True)}


@register_pass
@dataclass(frozen=True)
class QuantPolicy(Pass):
    """Choose each layer's weight width, minimising measured sensitivity under flash/SRAM/latency budgets.

    The ``quantize`` pass that follows realises it (scipy milp picks the widths). Sensitivity
    (``sensitivity=measured``): the output error (``metric``) with that layer alone quantized, on up to 16
    calibration inputs; ``fisher``: the weight rounding error weighted by the diagonal Fisher (squared
    gradients of random output projections, one backward pass per batch for all layers at once). Budgets default
    to the target board's SRAM and flash. ``flash-share=0.2`` sets the flash budget relative to the graph as this
    pass sees it: 0.2 of the float bytes of the weights it chooses widths for (int8 everywhere is about 0.25,
    int4 about 0.125), plus what no width choice changes (other constants, biases, scales), so a budget keeps its
    meaning after pruning or tying has shrunk the weights (what a search over budgets needs).
    Activations are 8-bit. The policy is stored on the graph and printed in its text form. Changes no numbers
    itself.
    """

    name = "quant-policy"
    lossy = True
    bits: tuple[int, ...] = (8, 4)
    act_bits: int = 8
    flash: ByteSize | None = None
    flash_share: float | None = None
    sram: ByteSize | None = None
    latency: Duration | None = None
    keep_float: str = ""
    metric: str = "mse"
    sensitivity: str = "measured"

    def __post_init__(self) -> None:
        self.check_option("sensitivity", self.sensitivity in SENSITIVITIES, ", ".join(SENSITIVITIES))
        self.check_option("bits", bool(self.bits) and all(b in qm.WEIGHT_BITS for b in self.bits),
                          "one or more of the weight widths 8 and 4, e.g. bits=8,4")
        self.check_option("act_bits", self.act_bits == 8, "8 (activations are quantized to uint8)")
        self.check_option("metric", self.metric in ("mse", "cosine", "top1"), "mse, cosine or top1")
        for budget in ("flash", "sram"):
            value = getattr(self, budget)
            self.check_option(budget, value is None or value > 0, "a positive size, e.g. 512KB, or none")
        self.check_option("flash_share", self.flash_share is None or 0 < self.flash_share <= 1,
                          "a share of the float weights' bytes in (0, 1], e.g. 0.2, or none")
        self.check_option("flash_share", self.flash_share is None or self.flash is None,
                          "none when flash= is given (one flash budget)")
        self.check_option("latency", self.latency is None or (math.isfinite(self.latency) and self.latency > 0),
                          "a positive duration, e.g. 5ms, or none")
        _check_regex(self, "keep_float")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        feeds = lossy.need_calib(ctx, "quant-policy", "quantization ranges and sensitivities")[:SENSITIVITY_SAMPLES]
        limits = ctx.budgets
        layers = find_layers(graph, self.keep_float)
        widths = sorted(set(self.bits), reverse=True)
        budgets, fixed, weight_bytes = self._budgets(graph, layers, limits)
        # layers that read one weight (tied layers) get one width: one choice, its bytes counted once
        groups: dict[int, list[Layer]] = {}
        for lay in layers:
            if lay.weight is not None:
                groups.setdefault(id(lay.weight_value), []).append(lay)
        costs_of = {g[0].key: self._costs(g, widths, limits) for g in groups.values()}
        # the budget is checked before anything is measured: an impossible one fails at once
        try:
            qm.solve([qm.Choice(k, widths, [0.0] * len(widths), c) for k, c in costs_of.items()], budgets, fixed)
        except qm.Infeasible as e:
            raise UsageError(self._infeasible(e.smallest, budgets, fixed, weight_bytes)) from None
        ranges = activation_ranges(graph, layers, ctx, feeds, "minmax", 99.99)
        ref = ctx.evaluate(graph, feeds)
        sens_of: dict[str, list[float]] = {}
        policy: dict[str, dict[str, Any]] = {}
        fisher = _fisher(graph, layers, ctx, feeds) if self.sensitivity == "fisher" else {}
        for i, lay in enumerate(layers):
            ctx.log(f"quant-policy: measuring layer {i + 1}/{len(layers)} {lay.key}")
            if lay.weight is None:
                s = _sensitivity(graph, lay, 8, ranges, ctx, feeds, ref, self.metric)
                policy[lay.key] = {"op": lay.node.op, "bits": self.act_bits, "weightless": True, "sensitivity": s}
                continue
            if fisher:
                w = np.asarray(lay.weight_value.data, np.float32)  # type: ignore[union-attr]
                f = fisher[id(lay.weight_value)]
                sens_of[lay.key] = [float(np.sum(f * (qm.fake_quant_weight(w, b, lay.axis) - w) ** 2)) for b in widths]
            else:
                sens_of[lay.key] = [_sensitivity(graph, lay, b, ranges, ctx, feeds, ref, self.metric) for b in widths]
        choices = [qm.Choice(g[0].key, widths, [sum(sens_of[lay.key][j] for lay in g) for j in range(len(widths))],
                             costs_of[g[0].key]) for g in groups.values()]
        try:
            picks = qm.solve(choices, budgets, fixed)
        except qm.Infeasible as e:
            raise UsageError(self._infeasible(e.smallest, budgets, fixed, weight_bytes)) from None
        for g, c, p in zip(groups.values(), choices, picks, strict=True):
            for k, lay in enumerate(g):
                sens = sens_of[lay.key]
                policy[lay.key] = {"op": lay.node.op, "bits": c.options[p], "sensitivity": sens[p],
                                   "bytes": int(c.costs["flash"][p]) if k == 0 else 0,
                                   "candidates": {str(b): s for b, s in zip(c.options, sens)},
                                   **({"shares_weight_with": g[0].key} if k else {})}
        policy = {lay.key: policy[lay.key] for lay in layers}  # in the graph's order
        graph.meta[POLICY_KEY] = policy
        total = fixed.get("flash", 0.0) + sum(c.costs["flash"][p] for c, p in zip(choices, picks))
        counts = {b: sum(len(g) for g, c, p in zip(groups.values(), choices, picks) if c.options[p] == b)
                  for b in widths}
        for b, n in counts.items():
            if n:
                ctx.count(f"int{b}", n)
        ctx.note(f"policy: {', '.join(f'{n} layers int{b}' for b, n in counts.items() if n)}; weights "
                 f"{int(total)} bytes" + (f" (budget {budgets['flash']:.0f})" if "flash" in budgets else "") +
                 f"; summed sensitivity ({self.metric}) "
                 f"{sum(c.sensitivity[p] for c, p in zip(choices, picks)):.3g}")
        return False

    @staticmethod
    def _costs(group: list[Layer], widths: list[int], limits: Budgets) -> dict[str, list[float]]:
        """Flash of the layers' one weight at each width (stored once), and the latency of all of them."""
        w = group[0].weight_value
        assert w is not None
        return {"flash": [float(_weight_bytes(w, b, group[0].axis)) for b in widths],
                "latency": [sum(_latency_s(lay.macs, b, limits) for lay in group) for b in widths]}

    def _budgets(self, graph: Graph, layers: list[Layer], limits: Budgets
                 ) -> tuple[dict[str, float], dict[str, float], int]:
        """The budgets, the costs no width choice changes, and the float bytes of the weights the policy chooses
        widths for (what ``flash-share`` is a share of)."""
        weights = {id(lay.weight_value) for lay in layers if lay.weight is not None}
        weight_bytes = sum({id(lay.weight_value): lay.weight_value.tensor_type.nbytes  # type: ignore[union-attr]
                            for lay in layers if lay.weight is not None}.values())
        biases = {id(lay.node.input(2)) for lay in layers if lay.weight is not None and lay.node.op in ("Conv", "Gemm")
                  and lay.node.has_input(2) and _is_float_const(lay.node.input(2))}
        joined = integer_ops(graph, self.keep_float)
        acts = {id(lay.node.input(i)) for lay in layers + joined for i in lay.acts if not lay.node.input(i).is_const}
        acts |= {id(chain_end(lay.node.outputs[0])) for lay in layers + joined  # quantize's outputs=true
                 if lay.node.op in ("Conv", "Gemm", *INTEGER_OPS)}
        # what quantize leaves: other constants as they are, int32 biases with an f32 scale per channel
        # (twice the float bias), and an f32 scale + u8 zero point per quantized activation
        other = sum(c.tensor_type.nbytes * (2 if id(c) in biases else 1) for c in graph.constants
                    if id(c) not in weights and c.tensor_type.is_static) + 5 * len(acts)
        flash: float | None = self.flash if self.flash is not None else limits.flash_bytes
        if self.flash_share is not None:
            flash = other + self.flash_share * weight_bytes
        budgets: dict[str, float] = {}
        fixed: dict[str, float] = {}
        if flash is not None:
            budgets["flash"] = float(flash)
            fixed["flash"] = float(other)
        if self.latency is not None:
            budgets["latency"] = float(self.latency)
            quantized = {id(lay.node) for lay in layers if lay.weight is not None}
            fixed["latency"] = sum(_latency_s(node_cost(n).macs, 32, limits) for n in graph.nodes
                                   if id(n) not in quantized)
        sram = self.sram if self.sram is not None else limits.sram_bytes
        if sram is not None:
            need = _activation_peak_bytes(graph, self.act_bits)
            if need > sram:
                raise UsageError(f"quant-policy: activations need at least {need} bytes of SRAM at "
                                 f"{self.act_bits} bits (the largest layer's intermediate inputs and outputs), over the budget "
                                 f"sram={sram}; no choice of weight widths changes that")
        return budgets, fixed, weight_bytes

    def _infeasible(self, smallest: dict[str, float], budgets: dict[str, float], fixed: dict[str, float],
                    weight_bytes: int) -> str:
        parts = []
        for k, limit in budgets.items():
            if smallest[k] > limit:
                unit = "bytes" if k == "flash" else "s"
                what = f"{k}={limit:g} {unit}"
                reach = f"{smallest[k]:.6g} {unit}"
                if k == "flash" and self.flash_share is not None:
                    what = (f"flash-share={self.flash_share:g} ({limit:.0f} bytes: {self.flash_share:g} of the "
                            f"{weight_bytes} float bytes of the weights it chooses widths for, plus "
                            f"{fixed['flash']:.0f} for everything else)")
                    reach += f" (flash-share={(smallest[k] - fixed['flash']) / max(weight_bytes, 1):.3f})"
                parts.append(f"{what} is infeasible: the smallest reachable with bits="
                             f"{','.join(map(str, self.bits))} is {reach}")
        return "quant-policy: " + "; ".join(parts) + ". Raise the budget, allow narrower widths, or prune first"


def _activation_peak_bytes(graph: Graph, act_bits: int) -> int:
    """A lower bound on the activation arena at act_bits: the largest node's intermediate inputs plus outputs.

    The model's inputs and outputs are the caller's buffers, not the arena's, and are not counted. A node whose
    result has the shape of one of its inputs (an activation, a residual add) may run in place or fused into its
    producer, so only its inputs count. Anything larger would refuse budgets the compiled arena meets."""
    boundary = {id(v) for v in (*graph.inputs, *graph.outputs)}

    def size(vs: Sequence[Value | None]) -> int:
        return sum(int(np.prod(v.shape)) for v in vs
                   if v is not None and not v.is_const and v.tensor_type.is_static and id(v) not in boundary)

    best = 0
    for n in graph.nodes:
        ins = [v for v in n.inputs if v is not None and not v.is_const]
        shapes = {tuple(v.shape) for v in ins if v.tensor_type.is_static}
        inplace = len(n.outputs) == 1 and n.outputs[0].tensor_type.is_static and tuple(n.outputs[0].shape) in shapes
        best = max(best, (size(ins) if inplace else size([*ins, *n.outputs])) * act_bits // 8)
    return best
