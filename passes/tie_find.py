"""Finding repeated blocks: copies of one structure whose weights have the same shapes (a transformer's layers).

Two ways in, one check:

- **by scope**: a scope part that is a number (``encoder.layer.3``, ``blocks.5``) makes a
  *stem* (``encoder.layer``) and an index; the nodes under ``stem.i`` are copy ``i``.
- **by structure**, for graphs whose nodes carry no module path: nodes get labels (op,
  attributes, constant shapes) refined over their neighbourhoods by networkx's
  Weisfeiler-Lehman hashes; a label that occurs on weighted nodes at a regular period in the
  node order anchors the copies, and each copy is the period's run of nodes.

Either way, copies are compared node by node: same ops, attributes and constant shapes and the
same wiring inside the copy (first in graph order, then, if the orders differ, by networkx's
labelled subgraph isomorphism). Copies that match form a :class:`Repeat`; those that do not are
near misses, each with the reason it differs.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasc.ir import dtypes
from nasc.ir.core import Graph, Node, Value
from nasc.ir.types import TensorType

#: constants up to this many elements are part of a node's label by value (shapes, scales), larger ones by shape
SMALL_CONST = 16
#: the stem of top-level numbered scopes ("0.attn", "1.attn": an nn.Sequential of blocks)
TOP = "<top>"
#: Weisfeiler-Lehman refinement rounds for the structural search
WL_ITERATIONS = 3


@dataclass
class Copy:
    """One copy of a repeated block: its scope (``encoder.layer.3``, or "" when found by structure) and nodes."""

    index: int
    scope: str
    nodes: list[Node]

    @property
    def label(self) -> str:
        if self.scope:
            return self.scope
        first, last = self.nodes[0], self.nodes[-1]
        return f"nodes {first.name or '?'} .. {last.name or '?'}"


@dataclass
class Repeat:
    """Copies with the same structure; ``match[i]`` maps each node of ``copies[0]`` to its twin in ``copies[i]``."""

    stem: str
    how: str  # "scope" or "structure"
    copies: list[Copy]
    match: list[dict[Node, Node]]
    near_misses: list[tuple[str, str]] = field(default_factory=list)  # (copy label, why it differs)

    @property
    def template(self) -> Copy:
        return self.copies[0]

    def weights(self) -> list[tuple[Node, int]]:
        """(template node, operand slot) of every weight matrix (a constant of rank ≥ 2) in the block."""
        return [(n, k) for n in self.template.nodes for k, v in enumerate(n.inputs)
                if v is not None and v.is_const and len(v.shape) >= 2]

    def twins(self, node: Node) -> list[Node]:
        """``node`` (of the template) and its twin in every copy, in copy order."""
        return [m[node] for m in self.match]

    def params_per_copy(self) -> int:
        """Elements of the floating-point constants one copy reads."""
        seen: dict[int, int] = {}
        for n in self.template.nodes:
            for v in n.inputs:
                if v is not None and v.is_const and isinstance(v.type, TensorType) and v.type.is_static \
                        and v.type.dtype in dtypes.FLOAT_DTYPES:  # weights, not shape operands
                    seen[id(v)] = v.type.numel
        return sum(seen.values())

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary: stem, how found, copies, nodes and params per copy, near misses."""
        return {"stem": self.stem, "how": self.how, "copies": [c.label for c in self.copies],
                "count": len(self.copies), "nodes_per_copy": len(self.template.nodes),
                "params_per_copy": self.params_per_copy(), "weights": len(self.weights()),
                "near_misses": [{"copy": c, "why": w} for c, w in self.near_misses]}


@dataclass
class Candidate:
    """A stem (or structural anchor) that gave no repeat of two or more matching copies, and why."""

    stem: str
    copies: int
    why: str


@dataclass
class Repeats:
    """What :func:`find_repeats` found: repeats, largest first (by params they cover), and failed candidates."""

    repeats: list[Repeat]
    candidates: list[Candidate]

    def describe(self) -> dict[str, Any]:
        return {"repeats": [r.describe() for r in self.repeats],
                "candidates": [{"stem": c.stem, "copies": c.copies, "why": c.why} for c in self.candidates]}

    def closest(self, limit: int = 5) -> str:
        """The closest candidates, for an error message."""
        rows = [f"{r.stem}: {len(r.copies)} copies, but {r.near_misses[0][0]} differs: {r.near_misses[0][1]}"
                for r in self.repeats if r.near_misses][:limit]
        rows += [f"{c.stem} ({c.copies} copies): {c.why}" for c in self.candidates][: max(0, limit - len(rows))]
        return "; ".join(rows) or "no scope has numbered parts and no weighted node repeats at a regular period"


# ---- labels ------------------------------------------------------------------------------------


def _const_label(v: Value) -> str:
    t = v.type
    if isinstance(t, TensorType) and t.is_static and t.numel <= SMALL_CONST:
        return f"c{t.dtype}{list(t.shape)}={np.asarray(v.data).ravel().tolist()}"
    return f"w{t}"


def _attr_label(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype}{list(a.shape)}={a.ravel().tolist()[:SMALL_CONST]}"
    return repr(a)


def node_label(n: Node) -> str:
    """What must agree between twins: op, attributes, which operands are constants and their shapes (or
    values, for small ones), and the number of results."""
    ins = ",".join("-" if v is None else _const_label(v) if v.is_const else "x" for v in n.inputs)
    attrs = ";".join(f"{k}={_attr_label(a)}" for k, a in sorted(n.attrs.items()))
    return f"{n.qualified_op}({ins})[{attrs}]->{len(n.outputs)}"


def _signature(nodes: list[Node]) -> list[tuple[str, tuple[Any, ...]]]:
    """Each node's label and where its activation operands come from: ("n", position, result) inside the
    copy or ("e", k) for the copy's k-th distinct outside value, in graph order."""
    pos = {id(out): (i, j) for i, n in enumerate(nodes) for j, out in enumerate(n.outputs)}
    ext: dict[int, int] = {}
    sig = []
    for n in nodes:
        wires: list[Any] = []
        for v in n.inputs:
            if v is None or v.is_const:
                wires.append(None)
            elif id(v) in pos:
                wires.append(("n", *pos[id(v)]))
            else:
                wires.append(("e", ext.setdefault(id(v), len(ext))))
        sig.append((node_label(n), tuple(wires)))
    return sig


def _iso_match(a: list[Node], b: list[Node]) -> dict[Node, Node] | None:
    """Twins by labelled subgraph isomorphism (networkx VF2), for copies whose node orders differ."""
    import networkx as nx

    def digraph(nodes: list[Node]) -> Any:
        g = nx.DiGraph()
        pos = {id(out): (n, j) for n in nodes for j, out in enumerate(n.outputs)}
        for n in nodes:
            g.add_node(n, label=node_label(n))
        for n in nodes:
            for k, v in enumerate(n.inputs):
                if v is not None and id(v) in pos:
                    src, j = pos[id(v)]
                    g.add_edge(src, n, port=(j, k))
        return g

    gm = nx.algorithms.isomorphism.DiGraphMatcher(
        digraph(a), digraph(b), node_match=lambda x, y: x["label"] == y["label"],
        edge_match=lambda x, y: x["port"] == y["port"])
    if not gm.is_isomorphic():
        return None
    return dict(gm.mapping)


def _why_differs(a: Copy, b: Copy) -> str:
    """A short reason ``b`` is not a copy of ``a``: node counts, then the first labels one has and not the other."""
    if not b.nodes:
        return "it has no nodes"
    la, lb = Counter(node_label(n) for n in a.nodes), Counter(node_label(n) for n in b.nodes)
    only_a, only_b = la - lb, lb - la
    parts = []
    if len(a.nodes) != len(b.nodes):
        parts.append(f"{len(b.nodes)} nodes where {a.label} has {len(a.nodes)}")
    if only_b:
        n = next(n for n in b.nodes if node_label(n) in only_b)
        twin = next((m for m in a.nodes if m.qualified_op == n.qualified_op and node_label(m) in only_a), None)
        what = f"{n.describe()} is {node_label(n)}"
        parts.append(what + (f", its counterpart {twin.describe()} is {node_label(twin)}" if twin else
                             f" and {a.label} has no such node"))
    elif only_a:
        n = next(n for n in a.nodes if node_label(n) in only_a)
        parts.append(f"it lacks a counterpart of {n.describe()} ({node_label(n)})")
    if not parts:
        parts.append("the same nodes are wired differently")
    return "; ".join(parts)


def match_copies(stem: str, how: str, copies: list[Copy]) -> tuple[Repeat | None, list[tuple[str, str]]]:
    """The largest class of matching copies as a Repeat (None when no two match), and the near misses."""
    classes: list[tuple[Copy, list[Copy], list[dict[Node, Node]]]] = []
    sigs: dict[int, list[Any]] = {}
    for c in copies:
        sigs[c.index] = _signature(c.nodes)
        for rep, members, maps in classes:
            if sigs[rep.index] == sigs[c.index]:
                members.append(c)
                maps.append(dict(zip(rep.nodes, c.nodes, strict=True)))
                break
            if len(rep.nodes) == len(c.nodes) and Counter(s[0] for s in sigs[rep.index]) == \
                    Counter(s[0] for s in sigs[c.index]):
                iso = _iso_match(rep.nodes, c.nodes)
                if iso is not None:
                    members.append(c)
                    maps.append(iso)
                    break
        else:
            classes.append((c, [c], [{n: n for n in c.nodes}]))
    rep_, members, maps = max(classes, key=lambda t: (len(t[1]), -t[0].index))
    misses = [(c.label, _why_differs(rep_, c)) for c in copies if c not in members]
    if len(members) < 2:
        return None, misses
    return Repeat(stem, how, members, maps, misses), misses


# ---- by scope -------------------------------------------------------------------------------------


_NUMBERED = re.compile(r"^\d+$")


def scope_copies(graph: Graph) -> dict[str, dict[int, list[Node]]]:
    """stem -> index -> nodes under ``stem.index`` (in graph order), for every numbered scope part."""
    stems: dict[str, dict[int, list[Node]]] = {}
    for n in graph.nodes:
        parts = n.scope.split(".") if n.scope else []
        for j in range(len(parts)):  # j = 0: top-level numbered modules (an nn.Sequential's "0", "1", ...)
            if _NUMBERED.match(parts[j]):
                stems.setdefault(".".join(parts[:j]), {}).setdefault(int(parts[j]), []).append(n)
    return {s: d for s, d in stems.items() if len(d) >= 2}


def _by_scope(graph: Graph) -> tuple[list[Repeat], list[Candidate]]:
    repeats, cands = [], []
    for stem, by_index in scope_copies(graph).items():
        copies = [Copy(i, f"{stem}.{i}" if stem else str(i), nodes) for i, nodes in sorted(by_index.items())]
        rep, misses = match_copies(stem or TOP, "scope", copies)
        if rep is not None and rep.weights():
            repeats.append(rep)
        elif rep is None:
            cands.append(Candidate(stem or TOP, len(copies), "no two copies match: " + (misses[0][1] if misses else "?")))
    return repeats, cands


# ---- by structure --------------------------------------------------------------------------------


def _wl_labels(graph: Graph) -> dict[Node, str]:
    """Node labels refined by their neighbourhoods (networkx Weisfeiler-Lehman subgraph hashes)."""
    import networkx as nx

    g = nx.Graph()
    owner = {id(out): n for n in graph.nodes for out in n.outputs}
    for n in graph.nodes:
        g.add_node(n, label=node_label(n))
    for n in graph.nodes:
        for k, v in enumerate(n.inputs):
            if v is not None and id(v) in owner:
                g.add_edge(owner[id(v)], n, port=f"{v.index}>{k}")
    hashes = nx.weisfeiler_lehman_subgraph_hashes(g, node_attr="label", edge_attr="port", iterations=WL_ITERATIONS)
    return {n: h[-1] for n, h in hashes.items()}


def _by_structure(graph: Graph) -> tuple[list[Repeat], list[Candidate]]:
    """Copies anchored on weighted nodes whose refined labels recur at one regular period in the node order."""
    nodes = graph.nodes
    if len(nodes) < 4:
        return [], []
    wl = _wl_labels(graph)
    plain = [node_label(n) for n in nodes]
    where: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        if any(v is not None and v.is_const and len(v.shape) >= 2 for v in n.inputs):
            where.setdefault(wl[n], []).append(i)
    repeats: list[Repeat] = []
    cands: list[Candidate] = []
    tried: set[tuple[int, int]] = set()
    for pos in sorted(where.values(), key=lambda p: -len(p)):
        if len(pos) < 2:
            continue
        gaps = {b - a for a, b in itertools.pairwise(pos)}
        if len(gaps) != 1:
            cands.append(Candidate(f"structure:{nodes[pos[0]].qualified_op}", len(pos),
                                   f"its {len(pos)} occurrences are not evenly spaced in the node order "
                                   f"(gaps {sorted(gaps)[:4]})"))
            continue
        period = gaps.pop()
        # slide the copies' start back while every copy still agrees, then take one period from there
        shift = 0
        while shift + 1 < period and pos[0] - shift - 1 >= 0 and \
                len({plain[p - shift - 1] for p in pos}) == 1:
            shift += 1
        start = pos[0] - shift
        key = (start % period, period)
        if key in tried or start + len(pos) * period > len(nodes):
            continue
        tried.add(key)
        copies = [Copy(i, "", nodes[start + i * period: start + (i + 1) * period]) for i in range(len(pos))]
        rep, misses = match_copies(f"structure@{nodes[start].name or start}", "structure", copies)
        if rep is not None and rep.weights():
            repeats.append(rep)
        elif misses:
            cands.append(Candidate(f"structure:{nodes[pos[0]].qualified_op}", len(pos), misses[0][1]))
    return repeats, cands


def _overlaps(a: Repeat, b: Repeat) -> bool:
    na = {id(n) for c in a.copies for n in c.nodes}
    return any(id(n) in na for c in b.copies for n in c.nodes)


def find_repeats(graph: Graph, by: str = "auto") -> Repeats:
    """Repeated blocks of ``graph``, largest (by params covered) first.

    ``by``: "scope", "structure", or "auto" (scopes where they give a repeat, else structure).
    Structural repeats that overlap a larger one are dropped.
    """
    if by not in ("auto", "scope", "structure"):
        raise ValueError(f"by must be auto, scope or structure, not {by!r}")
    repeats: list[Repeat] = []
    cands: list[Candidate] = []
    if by in ("auto", "scope"):
        repeats, cands = _by_scope(graph)
    if by == "structure" or (by == "auto" and not repeats):
        srep, scand = _by_structure(graph)
        kept: list[Repeat] = []
        for r in sorted(srep, key=lambda r: -len(r.copies) * r.params_per_copy()):
            if not any(_overlaps(r, k) for k in kept):
                kept.append(r)
        repeats += kept
        cands += [] if kept else scand  # with a structural repeat found, the other anchors are its own parts
    repeats.sort(key=lambda r: (-len(r.copies) * r.params_per_copy(), r.stem))
    return Repeats(repeats, cands)


def select(found: Repeats, stem: str | None) -> Repeat | None:
    """The repeat named ``stem`` (exactly, or the only one containing it), else the largest; None if none."""
    if not found.repeats:
        return None
    if not stem:
        return found.repeats[0]
    exact = [r for r in found.repeats if r.stem == stem]
    if exact:
        return exact[0]
    loose = [r for r in found.repeats if stem in r.stem]
    return loose[0] if len(loose) == 1 else None


def stems(found: Iterable[Repeat]) -> str:
    """"encoder.layer (×6), blocks (×4)": the repeats, for messages."""
    return ", ".join(f"{r.stem} (×{len(r.copies)})" for r in found)
