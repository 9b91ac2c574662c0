"""Pad channel counts up to a vector multiple: pruning in reverse, for a CPU build.

A pruned layer keeps whatever count the MAC target left (17, 113, 233 channels); a CPU
kernel that vectorizes over channels then runs at a fraction of its lanes (a pruned
MobileNetV2 at 75% MACs ran 3.7x slower than the unpruned one). This adds zero channels
to each such group, found by the same channel analysis as ``prune``
(:mod:`nasc.passes.prune_groups`): zero rows in the producing weights, zero columns in the
consuming ones and in per-channel biases, ones in quantization scales and variances. The
added channels carry finite values that every consumer multiplies by zero, so the graph's
outputs do not change.

Only groups that are safe by construction are padded: one channel per unit, the whole of
every space they touch, and every node on them an op of ZERO_SAFE (which map a zero channel
to a finite one: no Div, Log or Reciprocal) whose shape update needs only the new count
(no Slice, Gather or Concat). The rest are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nasc.ir.analysis import summarize
from nasc.ir.core import Graph
from nasc.ir.ops.registry import OpDef, lookup_node
from nasc.passes.prune_apply import Plan, apply_plan
from nasc.passes.prune_groups import Group, channel_groups

#: the default multiple: float32 lanes of AVX2 (the CPU build asks for its target's lanes, 16 with AVX-512)
MULTIPLE = 8

#: channel counts the convolution schedules already run at full speed (8-wide vectors where 16-wide do not
#: divide): on AVX-512, unpruned MobileNetV2 ran 3.86 ms as it is and 3.95 ms with its 24s padded to 32;
#: the matmul schedule wants whole vectors (a pruned MiniLM: 62 ms at multiples of 8, 19.8 ms at 16)
CONV_ALIGNED = 8

#: ops that turn a channel of zeros (and zero per-channel constants) into a finite channel
ZERO_SAFE = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Sum", "Max", "Min", "Neg", "Abs",
    "Relu", "Relu6", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu", "SiLU", "Mish",
    "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Softplus", "Softsign", "BatchNormalization", "Identity",
    "Dropout", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "GlobalAveragePool", "GlobalMaxPool",
    "AveragePool", "MaxPool", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast",
    "QuantizeLinear", "DequantizeLinear",
})
#: (op, operand) whose padded entries are 1, not 0: quantization scales and variances (divisors)
_ONES = frozenset({("QuantizeLinear", 1), ("DequantizeLinear", 1), ("BatchNormalization", 4)})
#: ops whose ``prune`` hook reads only how many channels remain (others index the kept ones)
_COUNTING_HOOKS = frozenset({"Conv", "Reshape"})


@dataclass
class Padding:
    """What :func:`pad_channels` did: the groups padded (name, channels before, after) and the MACs."""

    groups: list[tuple[str, int, int]]
    macs_before: int
    macs_after: int
    multiple: int = MULTIPLE

    def to_dict(self) -> dict[str, Any]:
        return {"multiple": self.multiple, "groups_padded": len(self.groups),
                "channels_added": sum(b - a for _, a, b in self.groups), "macs_before": self.macs_before,
                "macs_after": self.macs_after, "examples": [f"{n}: {a}->{b}" for n, a, b in self.groups[:5]]}


def _unsafe(nodes: list[Any]) -> str:
    """Why a group cannot be padded at one of its nodes ('' when it can)."""
    for node in nodes:
        entry = lookup_node(node)
        if entry is None or node.op not in ZERO_SAFE or node.domain not in ("", "ai.onnx", "nasc"):
            return f"{node.describe()} is not known to keep a zero channel finite"
        if type(entry).prune is not OpDef.prune and node.op not in _COUNTING_HOOKS:
            return f"{node.describe()} renumbers channels"
    return ""


def _worth_padding(count: int, multiple: int, matmul: bool) -> bool:
    """A count off the multiple, above half of it, and where no matmul reads it, not a multiple of 8 already
    (CONV_ALIGNED)."""
    return count % multiple != 0 and 2 * count > multiple and (matmul or count % CONV_ALIGNED != 0)


def paddable(g: Group, multiple: int = MULTIPLE) -> bool:
    """Whether padding ``g`` is safe and worth it (:func:`_worth_padding`)."""
    if not g.prunable or g.inexact or g.width != 1:
        return False
    if not _worth_padding(g.size, multiple, any(m.node.op in ("MatMul", "Gemm") for m in g.members)):
        return False
    if any(k != 1 or sp.size != g.size for sp, k in g.spaces):
        return False
    return not _unsafe(list({id(m.node): m.node for m in g.members}.values()))


def needs_padding(graph: Graph, multiple: int = MULTIPLE) -> bool:
    """A cheap first look, before the channel analysis: does a constant weight of a Conv, Gemm or MatMul have a
    count that :func:`_worth_padding` would pad if a matmul read it (a superset of what :func:`paddable` pads)?"""
    for node in graph.nodes:
        if node.op in ("Conv", "Gemm", "MatMul") and node.has_input(1):
            w = node.input(1)
            if w.producer is not None and w.producer.op == "DequantizeLinear":  # a quantized weight
                w = w.producer.input(0)
            if w.is_const and any(isinstance(d, int) and _worth_padding(d, multiple, matmul=True) for d in w.shape[:2]):
                return True
    return False


def pad_channels(graph: Graph, multiple: int = MULTIPLE) -> Padding:
    """Pad, in place, every :func:`paddable` channel group of ``graph`` up to a multiple of ``multiple``."""
    macs_before = int(summarize(graph, None)["macs"])
    analysis = channel_groups(graph)
    plan: Plan = {}
    padded: list[tuple[str, int, int]] = []
    for g in analysis.groups:
        if not paddable(g, multiple):
            continue
        extra = -g.size % multiple
        for sp, _ in g.spaces:
            plan[(sp.pos, sp.axis)] = np.concatenate([np.arange(sp.size), np.full(extra, -1)])
        padded.append((g.name(), g.size, g.size + extra))
    if not plan:
        return Padding([], macs_before, macs_before, multiple)
    position = {id(v): pos for pos, v in enumerate(graph.values())}
    ones = {position[id(node.input(slot))]: 1.0 for node in graph.nodes for op, slot in _ONES
            if node.op == op and node.has_input(slot) and node.input(slot).is_const}
    apply_plan(graph, plan, fill=ones)
    return Padding(padded, macs_before, int(summarize(graph, None)["macs"]), multiple)
