"""Channel groups for structured pruning, found from the graph by each op's registry ``channels`` rule.

Every axis of every value (a "space", when its dim is > 1) is a row of channel slots.
Each node's rule says which slots of its operands and results are the same channel
(``AxisGroup``: same index, concatenation offsets, reshape digits, gathers, ...); the
slots are joined into connected components. A component is one *unit*: the channels
that must go together (a conv's output channel, its BatchNorm entry, the next conv's
input column, the residual adds in between; a whole attention head; one FFN hidden
unit). Units that touch the same spaces the same number of times form a *group*
(a layer's channels, a layer's heads).

A unit is a barrier when one of its spaces is: a graph input or output, an operand
or result of an op without a rule, an axis a node's rule does not map (a conv's
spatial axes, a softmax's axis, a reshape that mixes axes), or an unknown shape. The
reason is kept, so that ``nasc inspect --groups`` can say why. Never a guess: an axis
that no rule maps is a barrier. Units on LayerNorm-normalized axes are *inexact*:
removing them changes the statistics of the kept ones (see ``AxisGroup.inexact``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from nasc.ir.analysis import common_scope
from nasc.ir.core import Graph, Node, SubGraph, Value
from nasc.ir.ops.registry import AxisGroup, AxisRef, InferenceError, lookup_node
from nasc.ir.types import TensorType

#: reshapes whose split/merge choice is retried (other factors) when the outer one prunes nothing
MAX_FLIPS = 32


@dataclass
class Space:
    """The channel slots of one axis of one value: global slot ids ``offset .. offset + size - 1``."""

    value: Value
    pos: int  # the value's position in ``graph.values()`` (stable under Graph.clone)
    axis: int
    offset: int
    size: int
    barrier: str = ""
    inexact: str = ""

    def label(self) -> str:
        return f"%{self.value.name}[axis {self.axis}]"


@dataclass
class Member:
    """Where a group shows at a node: the node, its port ("in"/"out"), slot and axis, and channels per unit."""

    node: Node
    port: str
    slot: int
    axis: int
    per_unit: int

    def text(self) -> str:
        where = "operand" if self.port == "in" else "result"
        return f"{self.node.name or '?'} ({self.node.qualified_op}) {where} {self.slot} axis {self.axis}"


@dataclass
class Group:
    """Units (each an array of global slot ids) that touch the same spaces the same way."""

    id: str
    units: list[np.ndarray]
    spaces: list[tuple[Space, int]]  # each space with the number of its slots per unit
    members: list[Member] = field(default_factory=list)
    barrier: list[str] = field(default_factory=list)  # why it is a barrier (empty: prunable)
    inexact: str = ""

    @property
    def size(self) -> int:
        return len(self.units)

    @property
    def prunable(self) -> bool:
        return not self.barrier

    @property
    def weights(self) -> list[tuple[Space, int]]:
        return [(s, k) for s, k in self.spaces if s.value.is_const]

    @property
    def width(self) -> int:
        """Channels per unit on the widest activation axis (1 for a conv channel, the head size for a head)."""
        acts = [k for s, k in self.spaces if not s.value.is_const]
        return max(acts or [k for _, k in self.spaces] or [1])

    @property
    def scope(self) -> str:
        scopes = [m.node.scope for m in self.members if m.node.scope]
        return common_scope(scopes)

    def name(self) -> str:
        """The scope and first weight-bearing node: what a user recognises the group by."""
        owners = [m.node for m in self.members if m.port == "in" and m.node.input(m.slot).is_const]
        first = owners[0] if owners else (self.members[0].node if self.members else None)
        return first.name if first is not None and first.name else self.id


@dataclass
class Analysis:
    """The groups of a graph, and the spaces they are made of."""

    graph: Graph
    spaces: list[Space]
    groups: list[Group]
    slot_space: np.ndarray  # global slot id -> index into spaces

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group(self, gid: str) -> Group:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)

    def removal(self, removed: Iterable[np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
        """Kept indices per (value position, axis) once the given units (arrays of slot ids) are gone."""
        slots = np.unique(np.concatenate([np.asarray(u, dtype=np.int64) for u in removed] or [np.zeros(0, np.int64)]))
        plan: dict[tuple[int, int], np.ndarray] = {}
        if not slots.size:
            return plan
        for si in np.unique(self.slot_space[slots]):
            sp = self.spaces[int(si)]
            local = slots[self.slot_space[slots] == si] - sp.offset
            plan[(sp.pos, sp.axis)] = np.setdiff1d(np.arange(sp.size), local)
        return plan


class _Slots:
    """Union-find over global slot ids, with the spaces they belong to."""

    def __init__(self, graph: Graph) -> None:
        self.spaces: list[Space] = []
        self.index: dict[tuple[int, int], Space] = {}
        self.known: set[int] = set()  # values with a static shape
        offset = 0
        for pos, v in enumerate(graph.values()):
            t = v.type
            if not isinstance(t, TensorType) or not t.is_static:
                continue
            self.known.add(id(v))
            for axis, d in enumerate(t.static_shape):
                if d > 1:
                    sp = Space(v, pos, axis, offset, d)
                    self.spaces.append(sp)
                    self.index[(id(v), axis)] = sp
                    offset += d
        self.parent = list(range(offset))
        self.pinned: dict[int, str] = {}  # slots that must stay, and why (see ``_pin``)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def union(self, a: Iterable[int], b: Iterable[int]) -> None:
        for x, y in zip(a, b, strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def space(self, v: Value | None, axis: int) -> Space | None:
        return None if v is None else self.index.get((id(v), axis))

    def mark(self, sp: Space, why: str) -> None:
        if not sp.barrier:
            sp.barrier = why


def _value(node: Node, ref: AxisRef) -> Value | None:
    port, slot, _ = ref
    if port == "in":
        return node.input(slot) if node.has_input(slot) else None
    return node.outputs[slot] if slot < len(node.outputs) else None


def _ports(node: Node) -> list[tuple[str, int, Value]]:
    ins = [("in", i, v) for i, v in enumerate(node.inputs) if v is not None]
    return ins + [("out", i, v) for i, v in enumerate(node.outputs)]


def _link(slots: _Slots, node: Node, grp: AxisGroup) -> set[tuple[str, int, int]]:
    """Join the slots one AxisGroup couples; returns the refs it covers (the node's axes it maps)."""
    spaces = [slots.space(_value(node, r), r[2]) for r in grp.members]
    unknown = [r for r in grp.members if (v := _value(node, r)) is not None and id(v) not in slots.known]
    if unknown:
        for sp in spaces:
            if sp is not None:
                slots.mark(sp, f"{node.describe()}: the shape of its {unknown[0][0]} {unknown[0][1]} is not static")
        return set()
    if grp.inexact:
        for sp in spaces:
            if sp is not None and not sp.inexact:
                sp.inexact = grp.inexact
    mode, prm = grp.mode, grp.param
    if mode == "same":
        live = [sp for sp in spaces if sp is not None]
        for sp in live[1:]:
            slots.union(range(live[0].offset, live[0].offset + live[0].size), range(sp.offset, sp.offset + sp.size))
    elif mode == "concat":
        whole, parts = spaces[0], spaces[1:]
        at = 0
        for r, sp in zip(grp.members[1:], parts, strict=True):
            v = _value(node, r)
            n = v.shape[r[2]] if v is not None else 0
            if whole is not None and sp is not None:
                slots.union(range(whole.offset + at, whole.offset + at + n), range(sp.offset, sp.offset + n))
            elif whole is not None and n == 1:  # a part with one channel: removing it would leave it empty
                _pin(slots, [whole.offset + at], node, r)
            at += n
    elif mode in ("digit", "gather"):
        big, small = spaces
        if big is not None and small is not None:
            i = np.arange(big.size) if mode == "digit" else np.arange(len(prm))
            j = (i // prm[0]) % prm[1] if mode == "digit" else np.asarray(prm)
            slots.union((big.offset + i).tolist(), (small.offset + j).tolist())
        elif big is not None and mode == "digit":  # every index of big is the small side's single channel
            _pin(slots, range(big.offset, big.offset + big.size), node, grp.members[1])
            slots.union(range(big.offset, big.offset + big.size), [big.offset] * big.size)
        elif small is not None:  # big has one channel: index 0's counterpart on the small side stays
            _pin(slots, [small.offset + (0 if mode == "digit" else prm[0] % small.size)], node, grp.members[0])
    elif mode in ("block", "modulo"):
        live = [sp for sp in spaces if sp is not None]
        for k, sp in enumerate(live):
            i = np.arange(sp.size)
            j = (i // prm[0]) * prm[0] if mode == "block" else i % prm[0]
            slots.union((sp.offset + i).tolist(), (sp.offset + j).tolist())
            if k:
                slots.union(range(live[0].offset, live[0].offset + sp.size), range(sp.offset, sp.offset + sp.size))
    else:
        raise ValueError(f"unknown AxisGroup mode {mode!r}")
    return {r for r, sp in zip(grp.members, spaces, strict=True) if sp is not None}


def _pin(slots: _Slots, ids: Iterable[int], node: Node, ref: AxisRef) -> None:
    """Keep slots whose channel an axis of size 1 also holds (a one-channel part of a concat or split, a
    slice or pixel shuffle down to one channel): that axis is no space, so nothing else would keep them."""
    port, slot, axis = ref
    where = "operand" if port == "in" else "result"
    why = f"{node.describe()}: its {where} {slot} has a single channel on axis {axis}, which cannot be removed"
    for i in ids:
        slots.pinned.setdefault(int(i), why)


def _link_node(slots: _Slots, node: Node) -> None:
    entry = lookup_node(node)
    rules: list[AxisGroup] = []
    why = ""
    if node.captures or any(isinstance(a, SubGraph) for a in node.attrs.values()):
        why = f"{node.describe()} has a subgraph (control flow): its channels are not followed"
    elif entry is None:
        why = f"{node.describe()} has no pruning rule (an op nasc does not know)"
    else:
        try:
            rules = entry.channels(node)
        except (InferenceError, ValueError, TypeError, IndexError, KeyError) as e:
            why = f"{node.describe()}: its pruning rule does not apply ({e})"
    covered: set[tuple[str, int, int]] = set()
    for grp in rules:
        covered |= _link(slots, node, grp)
    for port, slot, v in _ports(node):
        if id(v) not in slots.known:
            continue
        for axis in range(len(v.shape)):
            sp = slots.space(v, axis)
            if sp is not None and (port, slot, axis) not in covered:
                where = "operand" if port == "in" else "result"
                slots.mark(sp, why or f"{node.describe()} does not map axis {axis} of its {where} {slot} "
                                      f"(%{v.name}) to a channel it can remove")


def _build(graph: Graph) -> Analysis:
    slots = _Slots(graph)
    for v in graph.inputs:
        for sp in (slots.space(v, a) for a in range(len(v.shape)) if id(v) in slots.known):
            if sp is not None:
                slots.mark(sp, f"graph input '{v.name}'")
    for v in graph.outputs:
        if id(v) in slots.known:
            for a in range(len(v.shape)):
                sp = slots.space(v, a)
                if sp is not None:
                    slots.mark(sp, f"graph output '{v.name}'")
    for node in graph.nodes:
        _link_node(slots, node)
    n = len(slots.parent)
    spaces = slots.spaces
    slot_space = np.repeat(np.arange(len(spaces)), [sp.size for sp in spaces]).astype(np.int64)
    roots = np.fromiter((slots.find(i) for i in range(n)), dtype=np.int64, count=n)
    const_space = np.array([sp.value.is_const for sp in spaces], dtype=bool)
    # units with a weight slot and an activation slot only: removing anything else saves nothing, and
    # weight-only units are a kernel's spatial taps, not channels
    has_w = np.zeros(n, dtype=bool)
    has_a = np.zeros(n, dtype=bool)
    if n:
        np.logical_or.at(has_w, roots, const_space[slot_space])
        np.logical_or.at(has_a, roots, ~const_space[slot_space])
    has_w &= has_a
    order = np.argsort(roots, kind="stable")
    sorted_roots = roots[order]
    cuts = np.flatnonzero(np.diff(sorted_roots)) + 1
    pinned: dict[int, str] = {}
    for i, why in slots.pinned.items():
        pinned.setdefault(int(roots[i]), why)
    by_sig: dict[tuple[tuple[tuple[int, int], ...], str], list[np.ndarray]] = defaultdict(list)
    for unit in np.split(order, cuts) if n else []:
        if not has_w[roots[unit[0]]]:
            continue
        sp_ids, counts = np.unique(slot_space[unit], return_counts=True)
        sig = tuple(zip(sp_ids.tolist(), counts.tolist(), strict=True))
        by_sig[(sig, pinned.get(int(roots[unit[0]]), ""))].append(np.sort(unit))
    users = _space_members(graph, slots)
    groups: list[Group] = []
    for (sig, pin), units in by_sig.items():
        g_spaces = [(spaces[i], k) for i, k in sig]
        members = [Member(node, port, slot, sp.axis, k) for sp, k in g_spaces for node, port, slot in users[id(sp)]]
        reasons = list(dict.fromkeys([sp.barrier for sp, _ in g_spaces if sp.barrier] + ([pin] if pin else [])))
        inexact = next((sp.inexact for sp, _ in g_spaces if sp.inexact), "")
        groups.append(Group("", sorted(units, key=lambda u: int(u[0])), g_spaces, members, reasons, inexact))
    index = {id(node): k for k, node in enumerate(graph.nodes)}
    for g in groups:
        g.members.sort(key=lambda m: index[id(m.node)])
    groups.sort(key=lambda g: min((index[id(m.node)] for m in g.members), default=0))
    for k, g in enumerate(groups):
        g.id = f"g{k}"
    return Analysis(graph, spaces, groups, slot_space)


def _space_members(graph: Graph, slots: _Slots) -> dict[int, list[tuple[Node, str, int]]]:
    """For each space, the nodes that read or write it (node, port, slot), in graph order."""
    out: dict[int, list[tuple[Node, str, int]]] = defaultdict(list)
    for node in graph.nodes:
        for port, slot, v in _ports(node):
            if id(v) in slots.known:
                for a in range(len(v.shape)):
                    sp = slots.space(v, a)
                    if sp is not None:
                        out[id(sp)].append((node, port, slot))
    return out


def _digit_reshapes(graph: Graph) -> list[Node]:
    out = []
    for node in graph.nodes:
        if node.op in ("Reshape", "Flatten") and node.domain in ("", "ai.onnx"):
            entry = lookup_node(node)
            try:
                if entry is not None and any(g.mode == "digit" for g in entry.channels(node)):
                    out.append(node)
            except (InferenceError, ValueError, TypeError, IndexError, KeyError):
                continue
    return out


def _prunable_units(a: Analysis) -> int:
    return sum(g.size for g in a.prunable)


def channel_groups(graph: Graph) -> Analysis:
    """Find the channel groups of ``graph`` (static shapes needed; others are barriers).

    Where a reshape splits or merges an axis and coupling its outermost factor leaves no unit
    through it prunable, the other factors are tried (a channel shuffle's reshapes then carry
    channel j of every branch together; Swin's fused qkv split [3, heads, head_dim] is pruned
    by heads); the choice that prunes more units is kept and recorded on the node
    (``meta["prune.factor"]``) so that later passes see the same groups.
    """
    best = _build(graph)
    tried = 0
    for node in _digit_reshapes(graph):
        if tried >= MAX_FLIPS or "prune.factor" in node.meta:
            continue
        through = {id(v) for v in (*node.inputs, *node.outputs) if v is not None}
        if any(any(id(sp.value) in through for sp, _ in g.spaces) for g in best.prunable):
            continue
        tried += 1
        choice = 0
        entry = lookup_node(node)
        seen = [entry.channels(node)] if entry is not None else []
        for factor in (1, 2, -1):
            node.meta["prune.factor"] = factor
            rules = entry.channels(node) if entry is not None else []
            if rules in seen:  # a reshape with fewer factors: this choice is one already tried
                continue
            seen.append(rules)
            trial = _build(graph)
            if _prunable_units(trial) > _prunable_units(best):
                best, choice = trial, factor
        if choice:
            node.meta["prune.factor"] = choice
        else:
            del node.meta["prune.factor"]
    return best


def describe(a: Analysis) -> list[dict[str, object]]:
    """Every group as a JSON-ready dict: size, width, scope, member nodes with their axes, and the barrier
    reasons (``status``: "prunable", "inexact" — prunable only with approximate=true — or "barrier")."""
    rows: list[dict[str, object]] = []
    for g in a.groups:
        status = "barrier" if g.barrier else ("inexact" if g.inexact else "prunable")
        rows.append({
            "id": g.id, "name": g.name(), "scope": g.scope, "units": g.size, "width": g.width,
            "status": status, "why": g.barrier or ([g.inexact] if g.inexact else []),
            "members": [{"node": m.node.name, "op": m.node.qualified_op, "scope": m.node.scope, "port": m.port,
                         "slot": m.slot, "axis": m.axis, "channels_per_unit": m.per_unit} for m in g.members],
            "weights": [{"value": sp.value.name, "axis": sp.axis, "per_unit": k} for sp, k in g.weights],
            "layers": _layers(g),
        })
    return rows


def _layers(g: Group) -> list[str]:
    """The weight-bearing nodes of a group and how it meets them: "conv1 (out)" produces its channels,
    "conv2 (in)" reads them; both for a depthwise conv."""
    roles: dict[int, tuple[Node, set[str]]] = {}
    weights = {id(sp.value) for sp, _ in g.weights}
    for m in g.members:
        if any(v is not None and id(v) in weights for v in m.node.inputs):
            _, rs = roles.setdefault(id(m.node), (m.node, set()))
            if m.port == "out":
                rs.add("out")
            elif not m.node.input(m.slot).is_const:
                rs.add("in")
    return [f"{n.name or '?'} ({', '.join(sorted(rs)) or 'weights'})" for n, rs in roles.values()]
