"""A small pattern API with named captures, and the greedy rewrite driver passes use.

    pat = op("BatchNormalization", op("Conv", any_("x"), const("w"), opt_const("b"), name="conv"),
             const("scale"), const("bias"), const("mean"), const("var"), name="bn")
    rule = Rule("fold-batchnorm", pat, rewrite_fn)

A pattern is matched at a node (its root) and walks the producers of the
operands. Interior nodes must be read only by the matched subgraph and must
not be graph outputs, so a rewrite never drops work another reader needs.
Captures name values (``any_``, ``const``) and nodes (``op(..., name=)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasc.ir.core import Graph, Node, Value
from nasc.ir.types import TensorType


class Match(dict[str, Any]):
    """Captures by name: values for ``any_``/``const``, nodes for named ``op`` patterns.

    ``nodes`` holds every node the pattern matched (by id), named or not.
    """

    nodes: dict[int, Node]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.nodes = {}

    def value(self, name: str) -> Value:
        v = self[name]
        assert isinstance(v, Value)
        return v

    def node(self, name: str) -> Node:
        n = self[name]
        assert isinstance(n, Node)
        return n

    def array(self, name: str) -> np.ndarray:
        return self.value(name).data


class Pattern:
    def match(self, v: Value | None, m: Match, root: bool = False) -> bool:
        raise NotImplementedError


@dataclass
class AnyValue(Pattern):
    name: str | None = None
    optional: bool = False  # also matches an omitted operand

    def match(self, v: Value | None, m: Match, root: bool = False) -> bool:
        if v is None:
            return self.optional
        return _bind(m, self.name, v)


@dataclass
class ConstValue(Pattern):
    name: str | None = None
    pred: Callable[[np.ndarray], bool] | None = None
    optional: bool = False

    def match(self, v: Value | None, m: Match, root: bool = False) -> bool:
        if v is None:
            return self.optional
        if not v.is_const or (self.pred is not None and not self.pred(v.data)):
            return False
        return _bind(m, self.name, v)


@dataclass
class OpPattern(Pattern):
    op: str
    inputs: Sequence[Pattern]
    name: str | None = None
    domain: str = ""
    attrs: Callable[[Node], bool] | None = None
    commutative: bool = False
    output: int = 0  # which result of the node the parent reads

    def match(self, v: Value | None, m: Match, root: bool = False) -> bool:
        if v is None or v.producer is None:
            return False
        node = v.producer
        if node.op != self.op or node.domain != self.domain or v.index != self.output:
            return False
        if not root and _is_output(node, v):
            return False
        if self.attrs is not None and not self.attrs(node):
            return False
        ins = list(node.inputs) + [None] * max(0, len(self.inputs) - len(node.inputs))
        if len(ins) > len(self.inputs) and any(x is not None for x in ins[len(self.inputs):]):
            return False
        orders = [list(range(len(self.inputs)))]
        if self.commutative and len(self.inputs) == 2:
            orders.append([1, 0])
        for order in orders:
            trial = Match(m)
            trial.nodes = dict(m.nodes)
            trial.nodes[id(node)] = node
            if all(p.match(ins[i], trial) for p, i in zip(self.inputs, order)) and _bind(trial, self.name, node):
                m.clear()
                m.update(trial)
                m.nodes = trial.nodes
                return True
        return False


@dataclass
class Alt(Pattern):
    """The first of several patterns that matches."""

    options: Sequence[Pattern]

    def match(self, v: Value | None, m: Match, root: bool = False) -> bool:
        for p in self.options:
            trial = Match(m)
            trial.nodes = dict(m.nodes)
            if p.match(v, trial, root):
                m.clear()
                m.update(trial)
                m.nodes = trial.nodes
                return True
        return False


def _is_output(node: Node, v: Value) -> bool:
    g = node.graph
    return g is not None and any(o is v for o in g.outputs)


def _bind(m: Match, name: str | None, obj: Any) -> bool:
    if name is None:
        return True
    if name in m:
        return m[name] is obj  # the same name twice must be the same value
    m[name] = obj
    return True


# ---- constructors ----------------------------------------------------------------------------


def any_(name: str | None = None) -> AnyValue:
    return AnyValue(name)


def opt(name: str | None = None) -> AnyValue:
    """Any value, or an omitted optional operand."""
    return AnyValue(name, optional=True)


def const(name: str | None = None, pred: Callable[[np.ndarray], bool] | None = None) -> ConstValue:
    return ConstValue(name, pred)


def opt_const(name: str | None = None) -> ConstValue:
    return ConstValue(name, None, optional=True)


def scalar(name: str | None = None, value: float | None = None, rtol: float = 1e-6) -> ConstValue:
    """A constant with one element (any shape), optionally close to ``value``."""

    def pred(a: np.ndarray) -> bool:
        if a.size != 1 or a.dtype.kind not in "fiu":
            return False
        return value is None or bool(np.isclose(float(a.reshape(-1)[0]), value, rtol=rtol, atol=0))

    return ConstValue(name, pred)


def op(name_: str, *inputs: Pattern, name: str | None = None, domain: str = "",
       attrs: Callable[[Node], bool] | None = None, commutative: bool = False, output: int = 0) -> OpPattern:
    return OpPattern(name_, inputs, name, domain, attrs, commutative, output)


def alt(*options: Pattern) -> Alt:
    return Alt(options)


def match(pattern: OpPattern, node: Node) -> Match | None:
    """Captures when ``pattern`` matches at ``node``, else None.

    Every matched node other than the root must be read only by matched nodes
    (and not be a graph output): the rewrite replaces the whole subgraph, so a
    value another reader needs must not be swallowed.
    """
    if len(node.outputs) <= pattern.output:
        return None
    m = Match()
    if not pattern.match(node.outputs[pattern.output], m, root=True):
        return None
    for inner in m.nodes.values():
        if inner is node:
            continue
        for out in inner.outputs:
            if any(id(user) not in m.nodes for user, _ in out.uses) or _is_output(inner, out):
                return None
    return m


# ---- rewriting ----------------------------------------------------------------------------------

Rewrite = Callable[[Graph, Match, Any], Value | None]


@dataclass
class Rule:
    """A named rewrite: where ``pattern`` matches, ``rewrite`` returns the value that replaces the root's
    result (built before the root), or None to decline."""

    name: str
    pattern: OpPattern
    rewrite: Rewrite
    doc: str = field(default="")


def rewrite_greedy(graph: Graph, rules: Sequence[Rule], ctx: Any, max_sweeps: int = 8) -> bool:
    """Apply rules until none fires (at most ``max_sweeps`` sweeps); counts each firing in ``ctx``."""
    changed = False
    for _ in range(max_sweeps):
        fired = False
        # last node first: where patterns nest (LayerNorm with or without its affine tail) the larger match,
        # which ends later, gets the first try
        for node in reversed(list(graph.nodes)):
            if node.graph is not graph:
                continue
            for rule in rules:
                m = match(rule.pattern, node)
                if m is None:
                    continue
                new = rule.rewrite(graph, m, ctx)
                if new is None:
                    continue
                old = node.outputs[rule.pattern.output]
                if isinstance(new.type, TensorType) and isinstance(old.type, TensorType):
                    assert new.type.dtype == old.type.dtype and new.type.shape == old.type.shape, (
                        f"rule {rule.name} changed {old.type} to {new.type} at {node.describe()}")
                if not new.name:
                    new.name = old.name
                graph.replace_all_uses_with(old, new)
                ctx.count(rule.name)
                fired = True
                break
        if fired:
            graph.remove_dead()
            changed = True
        else:
            return changed
    ctx.note(f"rewrites still firing after {max_sweeps} sweeps; stopped")
    return changed
