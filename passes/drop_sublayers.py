"""drop-sublayers: remove the residual sublayers (attention, MLP, CNN residual blocks) that change their input least.

A residual sublayer is an ``Add`` y = x + F(x) with an identity shortcut: the skip operand is x itself, F's
computation starts from x, and nothing F computes is read outside it. Its redundancy score is the one of "What
Matters in Transformers" (He et al., 2024): the mean over tokens of cos(x, x + F(x)), a token being the vector
along the hidden axis (the last axis of [B, S, H], the channel axis of NCHW). A score near 1 means F hardly
turns its input, and y = x is a small change. Dropping rewires y's readers to x; F's nodes then die.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nasc.errors import UsageError
from nasc.ir.analysis import common_scope, node_cost
from nasc.ir.core import Graph, Node, Value
from nasc.ir.types import TensorType
from nasc.passes import lossy
from nasc.passes.manager import Feed, Pass, PassContext, register_pass

#: calibration inputs the scores are measured on (the first ones)
SCORE_FEEDS = 64
#: ops that make a branch a layer worth dropping; a branch without one (x + 0.044715 * x^3 inside an unfused
#: tanh-GELU, say) is arithmetic within a layer, not a sublayer
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MatMul", "Gemm", "MatMulInteger",
                       "QLinearMatMul", "Attention", "nasc.Attention", "nasc.QGemm"})
#: ops that make a branch an attention sublayer
ATTENTION_OPS = frozenset({"Softmax", "Attention", "nasc.Attention"})
#: the ``kind`` option's names for each kind of sublayer
KINDS = {"attention": "attention", "mlp": "mlp", "block": "residual-block"}
#: the report's rewrite counter for each kind
COUNTERS = {"attention": "drop-attention", "mlp": "drop-mlp", "residual-block": "drop-block"}


@dataclass
class Sublayer:
    """One residual sublayer: ``add`` computes x + f, ``branch`` the nodes on paths from x to f (topological)."""

    add: Node
    skip_slot: int
    branch: list[Node]
    scope: str
    kind: str
    macs: int
    params: int
    score: float | None = None

    @property
    def x(self) -> Value:
        return self.add.input(self.skip_slot)

    @property
    def y(self) -> Value:
        return self.add.outputs[0]

    def row(self, dropped: bool) -> dict[str, Any]:
        score = None if self.score is None else round(self.score, 6)
        return {"scope": self.scope, "kind": self.kind, "score": score, "macs": self.macs, "params": self.params,
                "nodes": len(self.branch), "add": self.add.name, "dropped": dropped}


# ---- finding residual sublayers --------------------------------------------------------------------


def find_sublayers(graph: Graph) -> list[Sublayer]:
    """Every ``Add`` of the graph that is an identity-shortcut residual around a layer, in graph order.

    Conditions: x and f have the same static float shape (no broadcasting); x reaches f; the skip operand is x
    itself (``proj(x) + F(x)`` is not one: neither operand reaches the other); no value computed in the branch
    is read outside it or is a graph output; the branch holds a linear layer (``LAYER_OPS``).
    """
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    outputs = {id(v) for v in graph.outputs}
    found: list[Sublayer] = []
    for add in graph.nodes:
        if add.op != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2 or len(add.outputs) != 1:
            continue
        a, b = add.inputs
        if a is None or b is None or a is b or not _same_float_shape(a, b):
            continue
        for skip_slot, (x, f) in enumerate(((a, b), (b, a))):
            branch = _branch(x, f, index)
            if branch is not None and _closed(branch, add, f, outputs) and _has_layer(branch):
                found.append(_describe(add, skip_slot, branch))
                break
    return found


def _same_float_shape(a: Value, b: Value) -> bool:
    ta, tb = a.type, b.type
    if not (isinstance(ta, TensorType) and isinstance(tb, TensorType)) or not (ta.is_static and tb.is_static):
        return False
    return ta.shape == tb.shape and ta.dtype == tb.dtype and ta.dtype.startswith(("f", "bf"))


def _branch(x: Value, f: Value, index: dict[int, int]) -> list[Node] | None:
    """The nodes on paths from x to f (f's producer included), or None when x does not reach f."""
    if f.producer is None or x.is_const:
        return None
    start = index[id(x.producer)] if x.producer is not None else -1
    # f's ancestors after x's producer: only those can lie on a path from x
    ancestors: dict[int, Node] = {}
    stack = [f.producer]
    while stack:
        node = stack.pop()
        if id(node) in ancestors:
            continue
        ancestors[id(node)] = node
        for v in (*node.inputs, *node.captures):
            if v is not None and v.producer is not None and index[id(v.producer)] > start:
                stack.append(v.producer)
    reached: dict[int, Node] = {}
    frontier = [u for u in x.users() if id(u) in ancestors]
    while frontier:
        node = frontier.pop()
        if id(node) in reached:
            continue
        reached[id(node)] = node
        frontier += [u for out in node.outputs for u in out.users() if id(u) in ancestors]
    if id(f.producer) not in reached:
        return None
    return sorted(reached.values(), key=lambda n: index[id(n)])


def _closed(branch: list[Node], add: Node, f: Value, outputs: set[int]) -> bool:
    """No branch value escapes: each is read only by branch nodes, and f only by the Add."""
    inside = {id(n) for n in branch}
    for node in branch:
        for out in node.outputs:
            if id(out) in outputs:
                return False
            for user, _slot in out.uses:
                if id(user) not in inside and not (user is add and out is f):
                    return False
    return True


def _has_layer(branch: list[Node]) -> bool:
    return any(n.qualified_op in LAYER_OPS for n in branch)


def _describe(add: Node, skip_slot: int, branch: list[Node]) -> Sublayer:
    rank = len(add.outputs[0].shape)
    if any(n.qualified_op in ATTENTION_OPS for n in branch):
        kind = "attention"
    else:
        kind = "residual-block" if rank >= 4 else "mlp"
    nodes = [*branch, add]
    inside = {id(n) for n in nodes}
    params: dict[int, int] = {}
    for node in branch:
        for v in node.inputs:
            # a weight counts when dropping frees it: read by this branch alone (tied weights are not freed)
            if v is not None and v.is_const and all(id(u) in inside for u, _ in v.uses):
                params[id(v)] = v.tensor_type.numel if v.tensor_type.is_static else 0
    macs = sum(node_cost(n).macs for n in nodes)
    return Sublayer(add, skip_slot, branch, _scope(branch, add), kind, int(macs), int(sum(params.values())))


def _scope(branch: list[Node], add: Node) -> str:
    """The longest common dotted prefix of the scopes of the branch's nodes from its first layer on.

    A pre-LN block's norm ("h.0.ln_1") comes before its first layer and is left out, so that the attention
    and MLP of one block get their own names ("h.0.attn", "h.0.mlp") rather than both the block's ("h.0").
    """
    after: set[int] = set()
    for node in branch:  # topological: a node is after a layer when it is one or reads one's result
        if node.qualified_op in LAYER_OPS or any(v is not None and v.producer is not None
                                                 and id(v.producer) in after for v in node.inputs):
            after.add(id(node))
    scopes = [n.scope for n in branch if n.scope and id(n) in after] or [n.scope for n in branch if n.scope]
    if not scopes:
        return add.scope or add.name or "<unnamed add>"
    return common_scope(scopes) or add.scope or add.name or "<root>"


# ---- scoring --------------------------------------------------------------------------------------


def token_cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """cos(x, y) per token: along axis 1 for rank >= 4 (NCHW: each position is a token), else the last axis.

    A token where x and y are both zero did not change (cosine 1); one where only one of them is zero, 0.
    """
    axis = 1 if x.ndim >= 4 else -1
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    dot = np.sum(x64 * y64, axis=axis)
    nx, ny = np.linalg.norm(x64, axis=axis), np.linalg.norm(y64, axis=axis)
    norms = nx * ny
    both_zero = (nx == 0) & (ny == 0)
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos).reshape(-1)


def score(sublayers: Sequence[Sublayer], graph: Graph, ctx: PassContext, feeds: Sequence[Feed]) -> None:
    """Set each sublayer's score: mean over tokens and inputs of cos(x, x + f), read in one run of the graph."""
    values: list[Value] = []
    for s in sublayers:
        for v in (s.x, s.y):
            if all(v is not u for u in values):
                values.append(v)
    if not values:
        return
    pos = {id(v): i for i, v in enumerate(values)}
    per_feed = ctx.evaluate(graph, feeds, values)
    for s in sublayers:
        cosines = [token_cosines(np.asarray(got[pos[id(s.x)]]), np.asarray(got[pos[id(s.y)]])) for got in per_feed]
        s.score = float(np.mean(np.concatenate(cosines)))


# ---- the pass -------------------------------------------------------------------------------------


@register_pass
@dataclass(frozen=True)
class DropSublayers(Pass):
    """Drop the residual sublayers (attention, MLP, CNN blocks) whose output is most similar to their input.

    Score (He et al., "What Matters in Transformers", 2024): mean over tokens of cos(x, x + F(x)) on the
    calibration inputs; the highest scores go first. ``n`` drops that many; ``macs`` drops until the graph keeps
    at most that fraction of its MACs; with neither, the pass only reports the scores. ``kind`` (any, attention,
    mlp, block) restricts the candidates and ``keep`` (a regular expression searched in sublayer scopes, as prune's and quantize's) protects some.
    Needs calibration data. Lossy, and it grows with each drop: the report gives the error against the graph
    before the pass (a BERT's attention sublayers often go at little cost; its MLPs and CNN blocks less so).
    """

    name: ClassVar[str] = "drop-sublayers"
    lossy: ClassVar[bool] = True
    n: int = 0
    macs: float | None = None
    kind: str = "any"
    keep: str = ""

    def __post_init__(self) -> None:
        self.check_option("n", self.n >= 0, "a count >= 0 of sublayers to drop")
        self.check_option("macs", self.macs is None or 0.0 < self.macs <= 1.0,
                          "a fraction in (0, 1] of the graph's MACs to keep")
        self.check_option("macs", self.macs is None or self.n == 0,
                          "none when n is given (drop n sublayers, or down to a MACs budget, not both)")
        self.check_option("kind", self.kind == "any" or self.kind in KINDS, "any, attention, mlp or block")
        try:
            re.compile(self.keep)
        except re.error as e:
            self.check_option("keep", False, f"a Python regular expression searched in sublayer scopes: {e}")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        feeds = lossy.need_calib(ctx, self.name, "scores of how much each sublayer changes its input")[:SCORE_FEEDS]
        found = find_sublayers(graph)
        candidates = self._candidates(found)
        score(found, graph, ctx, feeds)
        chosen = self._plan(sorted(candidates, key=lambda s: -(s.score or 0.0)), graph)
        before = lossy.snapshot(graph, ctx) if chosen else None
        for s in chosen:
            graph.replace_all_uses_with(s.y, s.x)  # s.x is read now: an earlier drop may have rewired it
        if chosen:
            graph.remove_dead()
        dropped = {id(s.add) for s in chosen}
        details: dict[str, Any] = {
            "criterion": "mean over tokens of cos(x, x + F(x)) on the calibration inputs; highest = most redundant",
            "score_feeds": len(feeds),
            "sublayers": [s.row(id(s.add) in dropped) for s in found],
        }
        if before is not None:
            details.update(lossy.cost_details(before, graph, ctx))
        ctx.details.update(details)
        for s in chosen:
            ctx.note(f"dropped {s.kind} '{s.scope}' (score {s.score:.4f}, {s.macs} MACs, {s.params} params)")
            ctx.count(COUNTERS[s.kind])
        if chosen:
            ctx.note(lossy.error_line(details))
        elif not self.n and self.macs is None:
            ctx.note(f"scored {len(found)} sublayer(s) ({_tally(found)}); nothing dropped (give n=N or macs=F "
                     "to drop some)")
        return bool(chosen)

    def _candidates(self, found: list[Sublayer]) -> list[Sublayer]:
        """The sublayers ``kind`` and ``keep`` allow; refuses a keep that matches nothing and too large an n."""
        if self.keep and not any(re.search(self.keep, s.scope) for s in found):
            scopes = ", ".join(s.scope for s in found) or "none (no residual sublayer was found)"
            raise UsageError(f"pass '{self.name}': option keep={self.keep!r} matches no sublayer's scope; "
                             f"the sublayers' scopes: {scopes}")
        out = [s for s in found if (self.kind == "any" or s.kind == KINDS[self.kind])
               and not (self.keep and re.search(self.keep, s.scope))]
        if self.n > len(out):
            raise UsageError(f"pass '{self.name}': option n={self.n} asks for more sublayers than there are: "
                             f"{len(out)} {self._what()} found ({_tally(found)} in all); give n <= {len(out)}")
        return out

    def _what(self) -> str:
        what = f"{self.kind} sublayer(s)" if self.kind != "any" else "sublayer(s)"
        return what + (f" outside keep={self.keep!r}" if self.keep else "")

    def _plan(self, ranked: list[Sublayer], graph: Graph) -> list[Sublayer]:
        """The sublayers to drop, best-scoring first; one nested in an earlier choice's branch goes with it."""
        if self.macs is None:
            return _take(ranked, lambda chosen, _removed: len(chosen) >= self.n)[0]
        total = sum(node_cost(nd).macs for nd in graph.nodes)
        budget = self.macs * total
        chosen, removed = _take(ranked, lambda _chosen, removed: total - removed <= budget)
        left = total - removed
        if left > budget:
            share = left / max(total, 1)
            raise UsageError(f"pass '{self.name}': option macs={self.macs:g} is out of reach: dropping all "
                             f"{len(chosen)} {self._what()} keeps {share:.1%} of the graph's MACs ({left} of "
                             f"{total}); give macs >= {np.ceil(share * 1000) / 1000:g}")
        return chosen


def _take(ranked: list[Sublayer], done: Callable[[list[Sublayer], int], bool]) -> tuple[list[Sublayer], int]:
    """Sublayers from the front of ``ranked`` until ``done(chosen, macs removed)``; skips one already inside a
    chosen branch (it goes with that branch)."""
    chosen: list[Sublayer] = []
    gone: set[int] = set()
    removed = 0
    for s in ranked:
        if done(chosen, removed):
            break
        if id(s.add) in gone:
            continue
        chosen.append(s)
        new = [nd for nd in (*s.branch, s.add) if id(nd) not in gone]
        removed += sum(node_cost(nd).macs for nd in new)
        gone.update(id(nd) for nd in new)
    return chosen, removed


def _tally(found: list[Sublayer]) -> str:
    counts = {k: sum(s.kind == k for s in found) for k in ("attention", "mlp", "residual-block")}
    return ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "none"
