"""The graph IR: SSA values with use lists, nodes with scopes, and the graph that owns both.

Invariants (checked by :func:`nasc.ir.verify`):

- every value has exactly one origin: a graph input, a constant, or one output
  slot of one node;
- ``value.uses`` lists exactly the (node, slot) pairs that read it; slots >= 0
  are operand positions, slots < 0 are subgraph captures (``-1 - i``);
- ``graph.nodes`` is in topological order and every node is owned by the graph.

Every edit goes through :class:`Graph` methods so that the use lists cannot drift.
Values and nodes compare by identity; names are hints for printing and export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasc.ir import dtypes
from nasc.ir.types import OpaqueType, TensorType, Type

Use = tuple["Node", int]


class LazyArray:
    """A constant's contents, loaded on first access (large weights stay on disk or in the model proto)."""

    __slots__ = ("_array", "_loader", "dtype", "shape", "source")

    def __init__(
        self, shape: Sequence[int], dtype: str, loader: Callable[[], np.ndarray], source: Any = None
    ) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self._loader: Callable[[], np.ndarray] | None = loader
        self._array: np.ndarray | None = None
        #: the frontend's own record of the contents (an ONNX TensorProto, say), which
        #: an exporter to the same format may copy instead of re-encoding the array
        self.source = source

    @property
    def loaded(self) -> bool:
        return self._array is not None

    def load(self) -> np.ndarray:
        if self._array is None:
            assert self._loader is not None
            arr = np.asarray(self._loader())
            if tuple(arr.shape) != self.shape:
                arr = arr.reshape(self.shape)
            self._array = arr
            self._loader = None
        return self._array


@dataclass(frozen=True)
class SubGraph:
    """A graph-valued attribute (If/Loop/Scan bodies) carried opaquely.

    ``payload`` is the frontend's serialized form; ``captured`` names the
    outer-scope values it reads, which the owning node lists in ``captures``.
    """

    payload: bytes
    captured: tuple[str, ...] = ()


def captured_names(attrs: dict[str, Any]) -> list[str]:
    """Outer-scope names the SubGraph attributes in ``attrs`` read, once each, in order.

    A node's ``captures`` list its values in exactly this order.
    """
    names: dict[str, None] = {}
    for a in attrs.values():
        for sg in (a,) if isinstance(a, SubGraph) else a if isinstance(a, tuple) else ():
            if isinstance(sg, SubGraph):
                names.update(dict.fromkeys(sg.captured))
    return list(names)


class Value:
    """One SSA value: a graph input, a constant, or a node output."""

    __slots__ = ("__weakref__", "const", "index", "name", "producer", "type", "uses")

    def __init__(self, type: Type, name: str = "") -> None:
        self.type: Type = type
        self.name = name
        self.producer: Node | None = None
        self.index = -1
        self.const: LazyArray | None = None
        self.uses: list[Use] = []

    # identity semantics: the defaults of object, stated for readers
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def tensor_type(self) -> TensorType:
        if not isinstance(self.type, TensorType):
            raise TypeError(f"value %{self.name} is not a tensor ({self.type})")
        return self.type

    @property
    def shape(self) -> tuple[int, ...]:
        """The static shape (raises ValueError when a dim is unknown)."""
        return self.tensor_type.static_shape

    @property
    def dtype(self) -> str:
        return self.tensor_type.dtype

    @property
    def data(self) -> np.ndarray:
        """The contents of a constant (loaded now if it was lazy)."""
        if self.const is None:
            raise ValueError(f"value %{self.name} is not a constant")
        return self.const.load()

    def users(self) -> list[Node]:
        seen: dict[int, Node] = {}
        for node, _ in self.uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def __repr__(self) -> str:
        kind = "const" if self.is_const else ("out" if self.producer is not None else "in")
        return f"<Value %{self.name} {self.type} {kind}>"


class Node:
    """One operation: op name (with domain), typed attributes, operands, results, and a scope."""

    __slots__ = ("_captures", "_inputs", "attrs", "domain", "graph", "meta", "name", "op", "outputs", "scope")

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None],
        outputs: Sequence[Value],
        attrs: dict[str, Any] | None = None,
        *,
        domain: str = "",
        scope: str = "",
        name: str = "",
        captures: Sequence[Value] = (),
    ) -> None:
        self.op = op
        self.domain = domain
        self.attrs: dict[str, Any] = dict(attrs or {})
        self._inputs: list[Value | None] = list(inputs)
        self.outputs: list[Value] = list(outputs)
        self.scope = scope
        self.name = name
        self.meta: dict[str, Any] = {}
        self.graph: Graph | None = None
        self._captures: list[Value] = list(captures)
        for i, out in enumerate(self.outputs):
            out.producer = self
            out.index = i

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        """Operands in order; None marks an omitted optional operand. Edit with Graph.set_input."""
        return tuple(self._inputs)

    @property
    def captures(self) -> tuple[Value, ...]:
        """Outer-scope values read by this node's subgraph attributes."""
        return tuple(self._captures)

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}.{self.op}" if self.domain and self.domain != "ai.onnx" else self.op

    def input(self, i: int) -> Value:
        """Operand ``i``, which must be present."""
        v = self._inputs[i] if i < len(self._inputs) else None
        if v is None:
            raise ValueError(f"node {self.describe()} has no operand {i}")
        return v

    def has_input(self, i: int) -> bool:
        return i < len(self._inputs) and self._inputs[i] is not None

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def describe(self) -> str:
        """'op' at node 'name' (scope 'a.b') — for error messages."""
        where = f" (scope '{self.scope}')" if self.scope else ""
        return f"'{self.qualified_op}' at node '{self.name or '?'}'{where}"

    def __repr__(self) -> str:
        return f"<Node {self.qualified_op} {self.name!r} scope={self.scope!r}>"


@dataclass
class Graph:
    """A model: inputs, constants, nodes in topological order, outputs, and opset versions."""

    name: str = "main"
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    constants: list[Value] = field(default_factory=list)
    opsets: dict[str, int] = field(default_factory=lambda: {"": 21})
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- creation -------------------------------------------------------------

    def add_input(self, name: str, type: Type) -> Value:
        v = Value(type, name)
        self.inputs.append(v)
        return v

    def add_constant(self, data: np.ndarray | LazyArray, name: str = "", type: TensorType | None = None) -> Value:
        """A new constant value; pass a LazyArray to defer loading its contents."""
        if not isinstance(data, LazyArray):
            arr = np.asarray(data)
            dt = dtypes.from_numpy(arr.dtype)
            data = LazyArray(arr.shape, dt, lambda a=arr: a)  # type: ignore[misc]
            data.load()
        v = Value(type or TensorType(data.dtype, data.shape), name)
        v.const = data
        self.constants.append(v)
        return v

    def make_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        out_types: Sequence[Type],
        attrs: dict[str, Any] | None = None,
        *,
        domain: str = "",
        scope: str = "",
        name: str = "",
        out_names: Sequence[str] | None = None,
        captures: Sequence[Value] = (),
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node with fresh output values and insert it (at the end, or before/after a node)."""
        names = list(out_names) if out_names is not None else [""] * len(out_types)
        outs = [Value(t, n) for t, n in zip(out_types, names, strict=True)]
        node = Node(op, inputs, outs, attrs, domain=domain, scope=scope, name=name, captures=captures)
        if before is not None:
            self.insert_before(before, node)
        elif after is not None:
            self.insert_after(after, node)
        else:
            self.append(node)
        return node

    # ---- structural edits -----------------------------------------------------

    def _attach(self, node: Node) -> None:
        if node.graph is not None:
            raise ValueError(f"node {node.describe()} already belongs to a graph")
        node.graph = self
        for i, v in enumerate(node._inputs):
            if v is not None:
                v.uses.append((node, i))
        for i, v in enumerate(node._captures):
            v.uses.append((node, -1 - i))

    def append(self, node: Node) -> None:
        self._attach(node)
        self.nodes.append(node)

    def insert_before(self, anchor: Node, node: Node) -> None:
        idx = self._index(anchor)
        self._attach(node)
        self.nodes.insert(idx, node)

    def insert_after(self, anchor: Node, node: Node) -> None:
        idx = self._index(anchor)
        self._attach(node)
        self.nodes.insert(idx + 1, node)

    def _index(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise ValueError(f"node {node.describe()} is not in graph '{self.name}'")

    def set_input(self, node: Node, i: int, value: Value | None) -> None:
        """Make operand ``i`` of ``node`` read ``value`` (None to omit it)."""
        old = node._inputs[i] if i < len(node._inputs) else None
        if old is not None:
            old.uses.remove((node, i))
        while len(node._inputs) <= i:
            node._inputs.append(None)
        node._inputs[i] = value
        if value is not None and node.graph is self:
            value.uses.append((node, i))

    def set_inputs(self, node: Node, values: Sequence[Value | None]) -> None:
        """Replace all operands of ``node``."""
        for i, old in enumerate(node._inputs):
            if old is not None:
                old.uses.remove((node, i))
        node._inputs = list(values)
        for i, v in enumerate(node._inputs):
            if v is not None:
                v.uses.append((node, i))

    def replace_all_uses_with(self, old: Value, new: Value) -> None:
        """Every reader of ``old`` (nodes and graph outputs) reads ``new`` instead."""
        if old is new:
            return
        for node, slot in list(old.uses):
            if slot >= 0:
                node._inputs[slot] = new
            else:
                node._captures[-1 - slot] = new
            new.uses.append((node, slot))
        old.uses.clear()
        self.outputs = [new if o is old else o for o in self.outputs]

    def erase(self, node: Node) -> None:
        """Remove a node whose results are unused (replace them first)."""
        for out in node.outputs:
            if out.uses or any(o is out for o in self.outputs):
                raise ValueError(f"cannot erase {node.describe()}: its result %{out.name} is still used")
        del self.nodes[self._index(node)]
        for i, v in enumerate(node._inputs):
            if v is not None:
                v.uses.remove((node, i))
        for i, v in enumerate(node._captures):
            v.uses.remove((node, -1 - i))
        node.graph = None

    def remove_dead(self) -> int:
        """Erase nodes and constants that no output depends on; returns how many nodes went."""
        live = {id(v) for v in self.outputs}
        keep: list[Node] = []
        for node in reversed(self.nodes):
            if any(id(o) in live for o in node.outputs) or node.meta.get("side_effects"):
                keep.append(node)
                for v in (*node._inputs, *node._captures):
                    if v is not None:
                        live.add(id(v))
        kept = {id(n) for n in keep}
        removed = [n for n in self.nodes if id(n) not in kept]
        gone = {id(n) for n in removed}
        for node in removed:
            for v in (*node._inputs, *node._captures):
                if v is not None:
                    v.uses = [(u, s) for u, s in v.uses if id(u) not in gone]
            node.graph = None
        self.nodes = [n for n in self.nodes if id(n) in kept]
        outs = {id(o) for o in self.outputs}
        self.constants = [c for c in self.constants if c.uses or id(c) in outs]
        return len(removed)

    def sort(self) -> None:
        """Re-order nodes topologically (stable: keeps the current order where it is legal)."""
        order: list[Node] = []
        ready = {id(v) for v in (*self.inputs, *self.constants)}
        pending = list(self.nodes)
        while pending:
            progressed = False
            rest: list[Node] = []
            for node in pending:
                if all(v is None or id(v) in ready for v in (*node._inputs, *node._captures)):
                    order.append(node)
                    ready.update(id(o) for o in node.outputs)
                    progressed = True
                else:
                    rest.append(node)
            if not progressed:
                from nasc.errors import VerificationError

                names = ", ".join(n.describe() for n in rest[:5])
                raise VerificationError(f"graph '{self.name}' has a cycle or an undefined value among: {names}")
            pending = rest
        self.nodes = order

    # ---- queries --------------------------------------------------------------

    def values(self) -> Iterator[Value]:
        """Inputs, constants, then every node result, in order."""
        yield from self.inputs
        yield from self.constants
        for node in self.nodes:
            yield from node.outputs

    def find_node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def find_value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def nodes_by_op(self, op: str) -> list[Node]:
        return [n for n in self.nodes if n.op == op]

    def to_networkx(self) -> Any:
        """A networkx.MultiDiGraph: one graph node per IR node, one edge per operand.

        Graph nodes are ``id(node)`` with attributes ``node`` (the IR node), ``op`` and
        ``scope``; edges carry ``value`` and ``slot``. Inputs and constants are
        sources keyed ``("input", i)`` / ``("const", i)`` (their positions) with ``value`` set.
        """
        import networkx as nx

        g = nx.MultiDiGraph(name=self.name)
        src: dict[int, Any] = {}
        for i, v in enumerate(self.inputs):
            g.add_node(("input", i), value=v, op="<input>", scope="")
            src[id(v)] = ("input", i)
        for i, v in enumerate(self.constants):
            g.add_node(("const", i), value=v, op="<const>", scope="")
            src[id(v)] = ("const", i)
        for node in self.nodes:
            g.add_node(id(node), node=node, op=node.qualified_op, scope=node.scope)
            for out in node.outputs:
                src[id(out)] = id(node)
        for node in self.nodes:
            for slot, operand in enumerate(node._inputs):
                if operand is not None and id(operand) in src:
                    g.add_edge(src[id(operand)], id(node), value=operand, slot=slot)
            for i, cap in enumerate(node._captures):
                if id(cap) in src:
                    g.add_edge(src[id(cap)], id(node), value=cap, slot=-1 - i)
        return g

    def clone(self) -> Graph:
        """A deep copy of the structure; constant contents are shared (they are never mutated in place)."""
        from nasc.ir.text import clone_graph

        return clone_graph(self)

    def summary(self) -> dict[str, Any]:
        """Counts and costs: see :func:`nasc.ir.analysis.summarize`."""
        from nasc.ir.analysis import summarize

        return summarize(self)

    def __str__(self) -> str:
        from nasc.ir.text import print_graph

        return print_graph(self)


__all__ = ["Graph", "LazyArray", "Node", "OpaqueType", "SubGraph", "TensorType", "Use", "Value"]
