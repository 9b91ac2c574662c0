"""tie-layers: repeated blocks share one set of weights, each layer keeping an explicit low-rank correction.

The copies of a repeated block (``passes/tie_find.py``: ``encoder.layer.0..5``) are mapped onto K
unique blocks, in a cycle (0,1,2,0,1,2) or in sequence (0,0,1,1,2,2). For every weight matrix of
the block, the layers mapped to one unique block read **one constant value** (the IR's own sharing,
which every backend stores once), and each layer adds its own correction as an explicit path,
``x·W_shared + (x·A_l)·B_l``, fitted by truncated SVD of its difference from the shared weight or,
with calibration data, by least squares on its real input activations (``passes/tie_fit.py``).
Norms and biases stay per layer unless ``share-norms`` / ``share-biases`` ask otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasc.errors import UsageError
from nasc.ir.analysis import summarize
from nasc.ir.core import Graph, Node, Value
from nasc.ir.types import TensorType
from nasc.passes import lossy
from nasc.passes.manager import Pass, PassContext, register_pass
from nasc.passes.prune_reconstruct import bias_add
from nasc.passes.tie_find import Repeat, find_repeats, select, stems
from nasc.passes.tie_fit import (
    Correction,
    Inputs,
    activation_correction,
    from_matrix,
    shared_weight,
    svd_correction,
    weight_matrix,
)

#: calibration inputs the activation fit reads (the first ones; the error is measured on the last ones)
FIT_FEEDS = 128
#: feeds evaluated at once while gathering activations
FEED_CHUNK = 32
NORM_OPS = ("LayerNormalization", "BatchNormalization", "GroupNormalization", "InstanceNormalization",
            "SimplifiedLayerNormalization", "RMSNormalization")


def _tieable(node: Node, slot: int) -> bool:
    if slot != 1 or (node.has_input(0) and node.input(0).is_const):
        return False
    w = node.input(1)
    if w.dtype not in ("f32", "f16", "f64"):
        return False
    if node.op == "MatMul":
        return len(w.shape) == 2
    if node.op == "Gemm":
        return not node.attr("transA", 0)
    return node.op == "Conv" and int(node.attr("group", 1)) == 1


@dataclass
class _Slot:
    """One weight of the template block and its twins in every copy."""

    rel: str
    twins: list[Node]
    bias: tuple[Node, int] | None  # the template's bias (node, slot), found before corrections come between


@register_pass
@dataclass(frozen=True)
class TieLayers(Pass):
    """Share the weights of repeated blocks (K unique blocks for N layers) with a per-layer low-rank correction.

    Lossy unless ``rank=full`` (exact: each layer's difference from the shared weight kept whole). The
    report lists, per unique block, the layers it serves, the correction rank and the energy of each
    layer's difference that the correction keeps, the unique and total params, and the error against the
    graph before on the calibration inputs. ``blocks``: unique blocks to keep (must divide the copies);
    ``mapping``: cycle or sequence; ``init``: the shared weight is the mean of the tied layers', ``fit``
    (the mean weighted by each layer's inputs; needs calibration) or the k-th tied layer's (``init=0``);
    ``rank``: 0 (strict sharing), a rank, or full; ``fit``: svd or activation (least squares on the
    layer's calibration inputs); ``scope``: which repeat (default: the largest); ``weights``: a regex on
    the weights' block-relative scope (``attention``); ``by``: find repeats by scope, structure or auto.
    """

    name = "tie-layers"
    lossy = True
    blocks: int = 0
    rank: str = "0"
    mapping: str = "cycle"
    init: str = "mean"
    fit: str = "svd"
    scope: str = ""
    weights: str = ""
    share_norms: bool = False
    share_biases: bool = False
    by: str = "auto"

    def __post_init__(self) -> None:
        self.check_option("blocks", self.blocks >= 0, "the number of unique blocks to keep, e.g. 2")
        self.check_option("rank", self.rank == "full" or self.rank.isdigit(),
                          "0 (strict sharing), a rank such as 16, or full (exact)")
        self.check_option("mapping", self.mapping in ("cycle", "sequence"),
                          "cycle (0,1,2,0,1,2) or sequence (0,0,1,1,2,2)")
        self.check_option("init", self.init in ("mean", "fit") or self.init.isdigit(),
                          "mean, fit, or the index of the tied layer to start from (0 = the first)")
        self.check_option("fit", self.fit in ("svd", "activation"), "svd or activation")
        self.check_option("by", self.by in ("auto", "scope", "structure"), "auto, scope or structure")
        if self.weights:
            try:
                re.compile(self.weights)
            except re.error as e:
                self.check_option("weights", False, f"a Python regular expression on the weights' scopes: {e}")

    @property
    def _rank(self) -> int | None:
        return None if self.rank == "full" else int(self.rank)

    # ---- choosing -----------------------------------------------------------------------------

    def _repeat(self, graph: Graph) -> Repeat:
        found = find_repeats(graph, self.by)
        rep = select(found, self.scope)
        if rep is None and found.repeats:
            raise UsageError(f"tie-layers: scope={self.scope!r} names none of the repeats found: "
                             + stems(found.repeats))
        if rep is None:
            raise UsageError("tie-layers: the graph has no repeated blocks (copies with the same structure and "
                             f"weight shapes). Closest candidates: {found.closest()}")
        return rep

    def _assignment(self, rep: Repeat) -> list[int]:
        n = len(rep.copies)
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        if self.blocks == 0:
            raise UsageError(f"tie-layers needs blocks=K, the number of unique blocks to keep: {rep.stem} has {n} "
                             f"copies, so K can be {', '.join(map(str, divisors))}, e.g. tie-layers{{blocks="
                             f"{divisors[len(divisors) // 2 - 1] if len(divisors) > 2 else 1} rank=16}}")
        if n % self.blocks:
            raise UsageError(f"tie-layers: blocks={self.blocks} does not divide the {n} copies of {rep.stem} "
                             f"({', '.join(c.label for c in rep.copies[:3])}, ...); use one of "
                             f"{', '.join(map(str, divisors))}")
        if self.init.isdigit() and int(self.init) >= n // self.blocks:
            raise UsageError(f"tie-layers: init={self.init} but each unique block serves {n // self.blocks} layers; "
                             f"use an index below {n // self.blocks}, mean or fit")
        per = n // self.blocks
        return [i % self.blocks if self.mapping == "cycle" else i // per for i in range(n)]

    def _slots(self, rep: Repeat) -> list[_Slot]:
        pat = re.compile(self.weights) if self.weights else None
        out: list[_Slot] = []
        for node, k in rep.weights():
            rel = _relative(rep, node)
            if not _tieable(node, k) or (pat is not None and not pat.search(rel)):
                continue
            twins = rep.twins(node)
            if len({id(t.input(k)) for t in twins}) == 1:
                continue  # already one value
            out.append(_Slot(rel, twins, _bias_of(node)))
        if not out:
            raise UsageError(f"tie-layers: no weight matrix of {rep.stem} can be tied"
                             + (f" (weights={self.weights!r} matches none of: "
                                f"{', '.join(sorted({_relative(rep, n) for n, _ in rep.weights()}))})" if pat else
                                " (MatMul, Gemm and Conv weights are tied; these are already shared or of another kind)"))
        return out

    # ---- running ------------------------------------------------------------------------------

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        q = next((n for n in graph.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")), None)
        if q is not None:
            raise UsageError(f"tie-layers: the graph is already quantized ({q.describe()}); put tie-layers before "
                             "quantize in the pipeline")
        rep = self._repeat(graph)
        assign = self._assignment(rep)
        if self.blocks == len(rep.copies):
            ctx.note(f"blocks={self.blocks} keeps every copy of {rep.stem}: nothing to tie")
            return False
        slots = self._slots(rep)
        if self.init == "fit" or self.fit == "activation":
            lossy.need_calib(ctx, f"tie-layers{{{'init=fit' if self.init == 'fit' else 'fit=activation'}}}",
                             "least-squares fits of the corrections")
        before = lossy.snapshot(graph, ctx)
        region_before = _params_of(rep)
        bytes_before = summarize(graph, None)["param_bytes"]  # what the file, .so and flash hold in weights
        inputs = self._inputs(graph, slots, ctx) if (self.fit == "activation" or self.init == "fit") else None
        blocks: list[dict[str, Any]] = []
        for b in range(self.blocks):
            layers = [i for i, a in enumerate(assign) if a == b]
            blocks.append(self._tie_block(graph, rep, slots, b, layers, inputs))
        if self.share_norms or self.share_biases:
            self._share_small(graph, rep, slots, assign)
        graph.remove_dead()
        details = lossy.cost_details(before, graph, ctx)
        region_after = _params_of(rep, graph)
        details.update({
            "repeat": rep.describe(), "mapping": self.mapping, "assignment": assign,
            "blocks": blocks, "encoder_params": [region_before, region_after],
            "params_unique": _unique_params(graph), "params_total": _total_params(graph),
            "param_bytes": [bytes_before, summarize(graph, None)["param_bytes"]]})
        ctx.details.update(details)
        ctx.count("tied-weights", sum(len(s.twins) for s in slots))
        rank = "full" if self._rank is None else str(self._rank)
        ctx.note(f"{len(rep.copies)} copies of {rep.stem} → {self.blocks} unique block(s) ({self.mapping}); "
                 f"{len(slots)} weights per block tied, correction rank {rank}, fit {self.fit}; "
                 f"block params {region_before:,} → {region_after:,}")
        for blk in blocks:
            ctx.note(f"unique block {blk['block']} serves {', '.join(blk['layers'])}: {blk['shared_params']:,} shared "
                     f"+ {blk['correction_params']:,} correction params; energy of the layers' differences kept "
                     f"{blk['energy_mean']:.1%} on average, {blk['energy_min']:.1%} at least")
        ctx.note(lossy.error_line(details))
        return True

    def _inputs(self, graph: Graph, slots: list[_Slot], ctx: PassContext) -> dict[int, Inputs]:
        """Input statistics of every twin's activation operand, from the first calibration feeds."""
        calib = lossy.need_calib(ctx, "tie-layers", "activation fits")
        # keep the inputs the error is measured on (the last ones) out of the fit when there are enough
        spare = len(calib) - lossy.ERROR_FEEDS
        feeds = calib[:min(FIT_FEEDS, spare if spare >= 16 else len(calib))]
        values: dict[int, Value] = {}
        for s in slots:
            for t in s.twins:
                if t.op != "Conv":
                    values.setdefault(id(t.input(0)), t.input(0))
        order = list(values.values())
        rows: dict[int, list[np.ndarray]] = {id(v): [] for v in order}
        for start in range(0, len(feeds), FEED_CHUNK):
            for outs in ctx.evaluate(graph, feeds[start:start + FEED_CHUNK], order):
                for v, arr in zip(order, outs, strict=True):
                    rows[id(v)].append(np.asarray(arr, dtype=np.float32).reshape(-1, arr.shape[-1]))
        held_from = len(feeds) - len(feeds) // 4 if len(feeds) >= 4 else len(feeds)
        return {k: Inputs.of(r, held_from) for k, r in rows.items()}

    def _tie_block(self, graph: Graph, rep: Repeat, slots: list[_Slot], b: int, layers: list[int],
                   inputs: dict[int, Inputs] | None) -> dict[str, Any]:
        rank = self._rank
        rows: list[dict[str, Any]] = []
        shared_params = corr_params = 0
        for s in slots:
            twins = [s.twins[i] for i in layers]
            node0 = twins[0]
            ws = [t.input(1).data for t in twins]
            mats = [weight_matrix(t, w).astype(np.float64) for t, w in zip(twins, ws, strict=True)]
            xs = [inputs[id(t.input(0))] for t in twins] if inputs is not None and node0.op != "Conv" else None
            init = "mean" if self.init == "fit" and xs is None else self.init
            shared = shared_weight(mats, init, xs)
            value = graph.add_constant(from_matrix(node0, shared, ws[0]),
                                       name=_const_name(rep, b, s.rel))
            shared_params += int(value.tensor_type.numel)
            act = xs if self.fit == "activation" else None
            for j, (i, t) in enumerate(zip(layers, twins, strict=True)):
                delta = mats[j] - shared
                corr = activation_correction(delta, rank, act[j]) if act else svd_correction(delta, rank)
                graph.set_input(t, 1, value)
                bias = _bias_of(t)  # before the correction's Add comes between the layer and its bias
                _add_correction(graph, t, corr, ws[0].dtype)
                if act and bias is not None and corr.rank:  # the least-squares fit's intercept
                    _adjust_bias(graph, t, bias, act[j].mean @ (delta - corr.product(delta.shape)))
                corr_params += corr.params
                rows.append({"layer": rep.copies[i].label, "weight": s.rel, "rank": corr.rank,
                             "energy": round(corr.energy, 6), "params": corr.params,
                             **({"ridge": corr.ridge} if corr.ridge is not None else {})})
        energies = [r["energy"] for r in rows]
        return {"block": b, "layers": [rep.copies[i].label for i in layers], "weights": len(slots),
                "rank": "full" if rank is None else rank, "shared_params": shared_params,
                "correction_params": corr_params, "energy_mean": round(float(np.mean(energies)), 6),
                "energy_min": round(float(np.min(energies)), 6), "corrections": rows}

    def _share_small(self, graph: Graph, rep: Repeat, slots: list[_Slot], assign: list[int]) -> None:
        """Norm parameters and biases of the layers mapped to one block become one value (their mean)."""
        picks: list[tuple[Node, int]] = []
        if self.share_norms:
            picks += [(n, k) for n in rep.template.nodes if n.op in NORM_OPS
                      for k in range(1, len(n.inputs)) if n.has_input(k) and n.input(k).is_const]
        if self.share_biases:
            picks += [s.bias for s in slots if s.bias is not None]
        for node, k in picks:
            twins = rep.twins(node)
            for b in range(self.blocks):
                group = [twins[i] for i, a in enumerate(assign) if a == b]
                vals = [t.input(k) for t in group]
                if len({v.shape for v in vals}) != 1:
                    continue
                mean = np.mean(np.stack([v.data for v in vals]), axis=0).astype(vals[0].data.dtype)
                value = graph.add_constant(mean, name=_const_name(rep, b, f"{_relative(rep, node)}.{k}"))
                for t in group:
                    graph.set_input(t, k, value)


# ---- graph edits ---------------------------------------------------------------------------------


def _relative(rep: Repeat, node: Node) -> str:
    """A template node's place in its block: its scope below the copy's (``attention.self.query``), else name."""
    base = rep.template.scope
    if base and node.scope.startswith(base + "."):
        return node.scope[len(base) + 1:]
    return node.name or node.op


def _const_name(rep: Repeat, b: int, rel: str) -> str:
    return re.sub(r"[^\w.]", "_", f"{rep.stem}.tied{b}.{rel}")


def _add_correction(graph: Graph, node: Node, corr: Correction, dtype: np.dtype[Any]) -> None:
    """Add ``x·Δ`` or ``(x·A)·B`` to ``node``'s result, as nodes placed right after it."""
    if corr.delta is None and corr.a is None:
        return
    x, y = node.input(0), node.outputs[0]
    scope, name = node.scope, node.name or node.op
    alpha = float(node.attr("alpha", 1.0)) if node.op == "Gemm" else 1.0
    after = node
    if node.op == "Conv":
        w = node.input(1).data
        if corr.delta is not None:
            chain = [(from_matrix(node, corr.delta, w), dict(node.attrs))]
        else:
            assert corr.a is not None and corr.b is not None
            a = corr.a.T.reshape((corr.rank, *w.shape[1:]))
            b = corr.b.T.reshape(w.shape[0], corr.rank, *([1] * (w.ndim - 2)))
            chain = [(a, dict(node.attrs)), (b, {})]
        op = "Conv"
    else:
        mats = [corr.delta] if corr.delta is not None else [corr.a, corr.b]
        chain = [(np.asarray(m) * (alpha if i == 0 else 1.0), {}) for i, m in enumerate(mats)]
        op = "MatMul"
    cur = x
    for i, (m, attrs) in enumerate(chain):
        c = graph.add_constant(np.asarray(m, dtype=dtype), name=f"{name}.tie_{'ab'[i] if len(chain) == 2 else 'd'}")
        out_t = y.type if i == len(chain) - 1 else _partial_type(node, cur, m)
        if op == "Conv" and i == 1:
            attrs = {"kernel_shape": list(m.shape[2:])} if "kernel_shape" in node.attrs else {}
        nd = graph.make_node(op, [cur, c], [out_t], attrs, scope=scope, name=f"{name}/tie_{i}", after=after)
        nd.meta["tie.correction"] = True
        after, cur = nd, nd.outputs[0]
    add = graph.make_node("Add", [y, cur], [y.type], scope=scope, name=f"{name}/tie_add", after=after)
    add.meta["tie.correction"] = True
    graph.replace_all_uses_with(y, add.outputs[0])
    graph.set_input(add, 0, y)


def _partial_type(node: Node, x: Value, m: np.ndarray) -> TensorType:
    """The type of the first factor's result: the node's result with its channel axis at the rank."""
    out = node.outputs[0].tensor_type
    shape = list(out.shape)
    if node.op == "Conv":
        shape[1] = m.shape[0]
    else:
        shape[-1] = m.shape[-1]
    return TensorType(out.dtype, tuple(shape))


def _bias_of(node: Node) -> tuple[Node, int] | None:
    """(node, slot) holding ``node``'s per-output bias: a Gemm's C, a Conv's B, or the Add after a MatMul."""
    if node.op in ("Gemm", "Conv") and node.has_input(2) and node.input(2).is_const:
        return node, 2
    if node.op == "MatMul":
        found = bias_add(node)
        if found is not None:
            return found
    return None


def _adjust_bias(graph: Graph, node: Node, holder: tuple[Node, int], shift: np.ndarray) -> None:
    """Add ``shift`` [out] to the layer's own bias (the mean of the error its correction leaves)."""
    owner, k = holder
    c = owner.input(k)
    if c.shape[-1:] != shift.shape or (node.op == "Gemm" and float(node.attr("beta", 1.0)) == 0.0):
        return
    beta = float(node.attr("beta", 1.0)) if node.op == "Gemm" else 1.0
    new = (c.data + shift.astype(np.float64) / beta).astype(c.data.dtype)
    graph.set_input(owner, k, graph.add_constant(new, name=c.name))


def _params_of(rep: Repeat, graph: Graph | None = None) -> int:
    """Distinct constant elements read by the repeat's nodes (with ``graph``: after the pass, correction
    paths included, found as the nodes whose scope lies under a copy's)."""
    if graph is None:
        nodes = [n for c in rep.copies for n in c.nodes]
    else:
        scopes = tuple(c.scope + "." for c in rep.copies if c.scope)
        members = {id(n) for c in rep.copies for n in c.nodes}
        nodes = [n for n in graph.nodes if id(n) in members or (n.meta.get("tie.correction")
                 and (not scopes or n.scope.startswith(scopes)))]
    seen: dict[int, int] = {}
    for n in nodes:
        for v in n.inputs:
            if v is not None and v.is_const and isinstance(v.type, TensorType) and v.type.is_static:
                seen[id(v)] = v.type.numel
    return sum(seen.values())


def _unique_params(graph: Graph) -> int:
    return sum(c.tensor_type.numel for c in graph.constants if c.tensor_type.is_static)


def _total_params(graph: Graph) -> int:
    """Params as if every node held its own copy of the constants it reads."""
    return sum(v.tensor_type.numel for n in graph.nodes for v in n.inputs
               if v is not None and v.is_const and v.tensor_type.is_static)
