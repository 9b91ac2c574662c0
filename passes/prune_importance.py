"""How much each unit of a channel group matters: weight magnitude, activations or gradients on calibration
data, or chance.

Scores are per unit (one conv channel with everything coupled to it, one attention head,
one FFN hidden unit) and only compared within a group, or across groups after dividing
by the group's mean (see ``normalized``).
"""

from __future__ import annotations

import numpy as np

from nasc.errors import UsageError
from nasc.ir.core import Graph
from nasc.ir.dtypes import FLOAT_DTYPES
from nasc.passes import lossy
from nasc.passes.manager import PassContext
from nasc.passes.prune_groups import Analysis, Group, Space

IMPORTANCE = ("l1", "l2", "activation", "taylor", "random")
#: calibration feeds read for taylor importance, and how many share one random output projection
TAYLOR_FEEDS, TAYLOR_BATCH = 64, 8
#: calibration feeds read for activation importance
ACT_FEEDS = 16
#: ops whose operand 0 is contracted with a constant weight's input channels (operand 1)
_CONTRACTING = ("Conv", "Gemm", "MatMul")


def _slot_scores(a: Analysis, power: int) -> np.ndarray:
    """Per global slot: the sum of |w|^power over the weight slice it indexes (0 for activation slots)."""
    out = np.zeros(len(a.slot_space), dtype=np.float64)
    for sp in a.spaces:
        if not sp.value.is_const:
            continue
        w = np.abs(np.asarray(sp.value.data, dtype=np.float64))
        other = tuple(k for k in range(w.ndim) if k != sp.axis)
        out[sp.offset:sp.offset + sp.size] = np.sum(w**power, axis=other)
    return out


def magnitude(a: Analysis, groups: list[Group], kind: str) -> dict[str, np.ndarray]:
    """Group-summed weight magnitude of every unit: L1, or the L2 norm over all coupled weights."""
    slot = _slot_scores(a, 1 if kind == "l1" else 2)
    out = {}
    for g in groups:
        s = np.array([slot[u].sum() for u in g.units])
        out[g.id] = s if kind == "l1" else np.sqrt(s)
    return out


def _consumers(g: Group) -> list[tuple[Space, Space]]:
    """(activation space, weight space) pairs where a contracting op reads the group with a constant weight."""
    by_value = {id(sp.value): sp for sp, _ in g.spaces}
    pairs = []
    for m in g.members:
        n = m.node
        if m.port != "in" or m.slot != 0 or n.op not in _CONTRACTING or not n.has_input(1) or not n.input(1).is_const:
            continue
        act, w = by_value.get(id(n.input(0))), by_value.get(id(n.input(1)))
        if act is not None and w is not None and act.axis == m.axis:
            pairs.append((act, w))
    return pairs


def activation(a: Analysis, graph: Graph, groups: list[Group], ctx: PassContext) -> dict[str, np.ndarray]:
    """Per unit: sum over the layers that read it of ||input channels|| (RMS on calibration data) times
    ||their weights|| (L2): the size of what the unit contributes to those layers' outputs (as in Wanda).
    Groups no contracting layer reads fall back to L2 magnitude."""
    feeds = lossy.need_calib(ctx, "prune: importance=activation", "activation importances")[:ACT_FEEDS]
    pairs = {g.id: _consumers(g) for g in groups}
    acts = {id(act.value): act for ps in pairs.values() for act, _ in ps}  # the activations read, by value
    values = [act.value for act in acts.values()]
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for start in range(0, len(feeds), 4):  # a few feeds per run keeps the activations read small
        for outs in ctx.evaluate(graph, feeds[start:start + 4], values) if values else []:
            for v, x in zip(values, outs, strict=True):
                x64 = np.asarray(x, dtype=np.float64)
                red = tuple(k for k in range(x64.ndim) if k != acts[id(v)].axis)
                sums[id(v)] = sums.get(id(v), 0.0) + np.sum(x64**2, axis=red)
                counts[id(v)] = counts.get(id(v), 0) + int(np.prod([x64.shape[k] for k in red]))
    l2 = magnitude(a, groups, "l2")
    wslot = _slot_scores(a, 2)
    out: dict[str, np.ndarray] = {}
    for g in groups:
        if not pairs[g.id] or not values:
            out[g.id] = l2[g.id]
            continue
        score = np.zeros(g.size)
        for act, w in pairs[g.id]:
            rms = np.sqrt(sums[id(act.value)] / max(counts[id(act.value)], 1))
            for i, u in enumerate(g.units):
                a_slots = u[(u >= act.offset) & (u < act.offset + act.size)] - act.offset
                w_slots = u[(u >= w.offset) & (u < w.offset + w.size)]
                score[i] += np.sqrt(np.sum(rms[a_slots] ** 2)) * np.sqrt(wslot[w_slots].sum())
        out[g.id] = score
    return out


def taylor(a: Analysis, graph: Graph, groups: list[Group], ctx: PassContext) -> dict[str, np.ndarray]:
    """Per unit: the mean over calibration batches of (sum over its weights of w * dL/dw)^2, the squared
    first-order Taylor estimate of what removing it changes (Molchanov et al. 2019), with L a random projection
    <r, y / std(y)> of the outputs (r ~ N(0, 1) per sample and batch). The distillation loss itself has zero
    gradient while the graph still equals the original model, so its first-order term says nothing there;
    over random r this estimates ||J w_u||^2, the Gauss-Newton (second-order) estimate of the distillation
    loss that removing unit u costs."""
    feeds = lossy.need_calib(ctx, "prune: importance=taylor", "gradient importances")[:TAYLOR_FEEDS]
    if ctx.trainer is None:
        raise UsageError("prune: importance=taylor needs gradients through the graph (torch); run it through "
                         "nasc.optimize or nasc compile with torch installed")
    spaces = [sp for sp in a.spaces if sp.value.is_const and sp.value.dtype in FLOAT_DTYPES]
    values = list({id(sp.value): sp.value for sp in spaces}.values())
    index = {id(v): i for i, v in enumerate(values)}
    totals = {g.id: np.zeros(g.size) for g in groups}
    batches = 0
    for grads in ctx.trainer.probe_gradients(graph, feeds, values, ctx.seed, TAYLOR_BATCH):
        slot = np.zeros(len(a.slot_space), dtype=np.float64)
        for sp in spaces:
            wg = np.asarray(sp.value.data, np.float64) * grads[index[id(sp.value)]].astype(np.float64)
            slot[sp.offset:sp.offset + sp.size] = np.sum(wg, axis=tuple(k for k in range(wg.ndim) if k != sp.axis))
        for g in groups:
            totals[g.id] += np.array([slot[u].sum() for u in g.units]) ** 2
        batches += 1
    return {k: v / max(batches, 1) for k, v in totals.items()}


def scores(a: Analysis, graph: Graph, groups: list[Group], kind: str, ctx: PassContext) -> dict[str, np.ndarray]:
    if kind in ("l1", "l2"):
        return magnitude(a, groups, kind)
    if kind == "activation":
        return activation(a, graph, groups, ctx)
    if kind == "taylor":
        return taylor(a, graph, groups, ctx)
    rng = np.random.default_rng(ctx.seed)
    return {g.id: rng.random(g.size) for g in groups}


def normalized(s: np.ndarray) -> np.ndarray:
    """Scores divided by their group's mean, so that groups of different scale rank together."""
    m = float(np.mean(s)) if s.size else 0.0
    return s / m if m > 0 else np.ones_like(s)
