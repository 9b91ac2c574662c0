"""The op registry: one entry per op, holding everything the IR knows about it.

An entry is an :class:`OpDef` subclass registered under its op name (and
domain). It answers four questions about a node of that op:

- ``infer(node)``: the result types from the operand types and attributes
  (shape and dtype inference, ONNX semantics);
- ``cost(node)``: multiply-accumulates and bytes moved;
- ``channels(node)``: which operand/result axes are coupled channels, for
  structured pruning;
- ``fold(node, arrays)``: optionally, the results computed in numpy from
  constant operands. Only cheap ops that shape subgraphs use fold; general
  constant folding runs in ONNX Runtime (the ``simplify`` pass).

Backends attach their lowerings to the same names. An op without an entry is
carried as an opaque node whose types come from the frontend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nasc.errors import ShapeError
from nasc.ir.core import Graph, Node, Value
from nasc.ir.types import UNKNOWN, Dim, Shape, TensorType, Type


class InferenceError(ShapeError):
    """Operands or attributes of a node are inconsistent with its op."""


# A port is an operand ("in", slot) or a result ("out", slot); an AxisRef adds an axis.
AxisRef = tuple[str, int, int]


@dataclass(frozen=True)
class AxisGroup:
    """Axes whose channels must be pruned together inside one node, and how their indices correspond.

    ``mode`` says which index of one member is which index of another:

    - "same": index ``i`` of every member is the same channel;
    - "concat": the first member is the members that follow laid end to end along their axes;
    - "digit" (two members, ``param=(radix, size)``): index ``i`` of the first is index
      ``(i // radix) % size`` of the second: a reshape that splits or merges an axis (heads
      from a hidden axis, a flattened feature axis), or a depthwise conv's channel multiplier;
    - "gather" (result then operand, ``param`` = the operand index each result index reads):
      a slice or a constant-index gather; operand channels it does not read are free to go;
    - "block" (``param=(b,)``): indices ``i`` and ``j`` of every member go together when
      ``i // b == j // b`` (GroupNorm's groups);
    - "modulo" (``param=(p,)``): indices congruent modulo ``p`` go together (a grouped conv's
      channels, which must stay equal in number per group).

    ``inexact`` is empty when removing a channel from these axes leaves the others' values
    as they were (zero-invariance); otherwise it says why not (LayerNorm's statistics over
    the axis), and a pruner removes them only when told to approximate.
    Every axis a node has that no group names is a barrier: its channels cannot be removed.
    """

    members: tuple[AxisRef, ...]
    mode: str = "same"
    param: tuple[int, ...] = ()
    inexact: str = ""


@dataclass(frozen=True)
class Cost:
    macs: int = 0
    bytes: int = 0


class OpDef:
    """Base of registry entries; subclasses override what their op needs."""

    name: ClassVar[str] = ""
    domain: ClassVar[str] = ""
    #: ops whose results may be computed at import time by ``fold``
    foldable: ClassVar[bool] = False
    #: attributes holding an element type: IR element type names ("f32") in the
    #: IR, converted from and to the format's enum by frontends and exporters
    dtype_attrs: ClassVar[tuple[str, ...]] = ()

    def infer(self, node: Node) -> list[Type]:
        raise NotImplementedError

    def cost(self, node: Node) -> Cost:
        """Default: no arithmetic; bytes = operands read + results written."""
        return Cost(0, io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        """Default: no channel coupling is known (a pruning barrier)."""
        return []

    def prune(self, graph: Graph, node: Node, kept: Callable[[AxisRef], np.ndarray | None]) -> None:
        """Update attributes and shape operands after channels were removed from the node's axes.

        ``kept(ref)`` gives the indices (in the old numbering) that remain on that axis, or
        None when it lost none. It is called before any type changes: the operand and result
        types still have the old shapes (:func:`pruned_shape` gives the new ones). The default
        suits ops whose attributes do not count channels.
        """

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        """Results from constant operands, or None when this op does not fold."""
        return None

    def decompose(self, graph: Graph, node: Node) -> list[Value] | None:
        """For ops outside ONNX (domain "nasc"): emit standard ops before ``node`` computing its results."""
        return None


_REGISTRY: dict[tuple[str, str], OpDef] = {}

#: Fallback inference for opaque nodes; a frontend installs one (ONNX shape inference).
opaque_inference: Callable[[Node], list[Type] | None] | None = None


def register(cls: type[OpDef]) -> type[OpDef]:
    """Class decorator: register an op entry under ``cls.name`` (and ``cls.domain``)."""
    key = (_norm_domain(cls.domain), cls.name)
    if key in _REGISTRY:
        raise ValueError(f"op {cls.name!r} is registered twice")
    _REGISTRY[key] = cls()
    return cls


def register_many(names: Sequence[str], base: type[OpDef], domain: str = "") -> None:
    """Register one entry class under several op names (elementwise families)."""
    for n in names:
        sub = type(n, (base,), {"name": n, "domain": domain})
        register(sub)


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def lookup(op: str, domain: str = "") -> OpDef | None:
    return _REGISTRY.get((_norm_domain(domain), op))


def lookup_node(node: Node) -> OpDef | None:
    return lookup(node.op, node.domain)


def registered_ops() -> list[str]:
    return sorted(f"{d}.{n}" if d else n for d, n in _REGISTRY)


def infer_node(node: Node) -> list[Type] | None:
    """Result types of ``node`` by its entry, or by the opaque fallback; None if unknown."""
    entry = lookup_node(node)
    if entry is not None:
        return entry.infer(node)
    if opaque_inference is not None:
        return opaque_inference(node)
    return None


def fold_node(entry: OpDef, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """``entry.fold(node, args)``, with what numpy raises on operands that break the op (an index out of
    range, a shape that does not fit) turned into an InferenceError naming the node.

    Callers check the results' sizes from inference first: a fold never allocates a large array.
    """
    try:
        return entry.fold(node, args)
    except (IndexError, ValueError, ZeroDivisionError, OverflowError, FloatingPointError) as e:
        raise InferenceError(f"{node.describe()}: its constant operands do not fit the op: "
                             f"{type(e).__name__}: {e}") from None


def emit(graph: Graph, anchor: Node, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None,
         *, domain: str = "", name: str = "", n_out: int = 1) -> Any:
    """Insert a node before ``anchor`` (inheriting its scope), typed by the registry; returns its result(s)."""
    k = anchor.meta.get("emitted", 0)
    anchor.meta["emitted"] = k + 1
    node = graph.make_node(op, list(inputs), [TensorType("f32", None)] * n_out, attrs or {}, domain=domain,
                           scope=anchor.scope, name=name or f"{anchor.name}/{op}" + (f"_{k}" if k else ""),
                           before=anchor)
    type_node(node)
    return node.outputs[0] if n_out == 1 else list(node.outputs)


def type_node(node: Node) -> None:
    """Set ``node``'s result types from its op's inference (for nodes built with placeholder types)."""
    types = infer_node(node)
    if types is None:
        raise InferenceError(f"{node.describe()} cannot be typed")
    for out, t in zip(node.outputs, types):
        out.type = t


# ---- helpers shared by entries ---------------------------------------------


def ttype(node: Node, i: int) -> TensorType:
    """Operand ``i``'s tensor type."""
    v = node.input(i)
    if not isinstance(v.type, TensorType):
        raise InferenceError(f"{node.describe()}: operand {i} must be a tensor, got {v.type}")
    return v.type


def shape_of(node: Node, i: int) -> Shape:
    t = ttype(node, i)
    if t.shape is None:
        raise InferenceError(f"{node.describe()}: operand {i} has unknown rank")
    return t.shape


def const_value(node: Node, i: int) -> np.ndarray | None:
    """Operand ``i``'s contents if it is a constant (None if absent or computed)."""
    if not node.has_input(i):
        return None
    v = node.input(i)
    return v.data if v.is_const else None


def const_ints(node: Node, i: int) -> list[int] | None:
    arr = const_value(node, i)
    return None if arr is None else [int(x) for x in np.asarray(arr).reshape(-1)]


def norm_axis(node: Node, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise InferenceError(f"{node.describe()}: axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def broadcast(node: Node, shapes: Sequence[Shape]) -> Shape:
    """Multidirectional (numpy) broadcasting of static or partly unknown shapes."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for k in range(rank):
        dims = [s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0]
        ints = {d for d in dims if isinstance(d, int) and d != 1}
        if len(ints) > 1:
            raise InferenceError(f"{node.describe()}: shapes {', '.join(map(str, shapes))} do not broadcast")
        if ints:
            out.append(ints.pop())
        elif any(isinstance(d, str) for d in dims):
            syms = [d for d in dims if isinstance(d, str)]
            out.append(syms[0] if len(set(syms)) == 1 else UNKNOWN)
        else:
            out.append(1)
    return tuple(out)


def numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        if not isinstance(d, int):
            return 0
        n *= d
    return n


def value_bytes(v: Value | None) -> int:
    if v is None or not isinstance(v.type, TensorType) or not v.type.is_static:
        return 0
    return v.type.nbytes


def io_bytes(node: Node) -> int:
    return sum(value_bytes(v) for v in node.inputs) + sum(value_bytes(v) for v in node.outputs)


def pruned_shape(node: Node, port: str, slot: int, kept: Callable[[AxisRef], np.ndarray | None]) -> tuple[int, ...]:
    """The static shape of a node's operand or result once the channels not in ``kept`` are gone."""
    v = node.input(slot) if port == "in" else node.outputs[slot]
    old = v.shape
    return tuple(d if (k := kept((port, slot, a))) is None else len(k) for a, d in enumerate(old))


def set_const_operand(graph: Graph, node: Node, slot: int, data: np.ndarray) -> None:
    """Give operand ``slot`` a new constant (its own: the old one may be shared with other nodes)."""
    old = node.input(slot)
    graph.set_input(node, slot, graph.add_constant(np.asarray(data, dtype=old.data.dtype), old.name))


def same_axes(node: Node, in_slots: Sequence[int], out_rank: int) -> list[AxisGroup]:
    """Elementwise coupling: each result axis with the aligned axis of every broadcasting operand."""
    groups = []
    for k in range(out_rank):
        members: list[AxisRef] = [("out", 0, k)]
        for s in in_slots:
            if not node.has_input(s):
                continue
            shp = ttype(node, s).shape
            if shp is None:
                return []
            j = len(shp) - out_rank + k
            if j >= 0 and shp[j] != 1:
                members.append(("in", s, j))
        groups.append(AxisGroup(tuple(members)))
    return groups
