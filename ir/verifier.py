"""The verifier: structural invariants, then a re-run of type inference on every node.

A failure raises :class:`nasc.errors.VerificationError` whose message names the
broken rule and prints the nodes around the failure in the text form.
"""

from __future__ import annotations

from nasc.errors import VerificationError
from nasc.ir.core import Graph, Node, Value
from nasc.ir.ops.registry import InferenceError, infer_node
from nasc.ir.text import _Namer, node_str
from nasc.ir.types import UNKNOWN, OpaqueType, TensorType, Type


def verify(graph: Graph, *, types: bool = True) -> None:
    """Check ``graph``; raise VerificationError describing the first problem found.

    Structure: every operand is defined before use (SSA, topological order),
    each value has one origin, nodes belong to this graph, use lists match the
    operands exactly. Types (``types=True``): inference re-run on each node
    agrees with the recorded result types.
    """
    namer = _Namer()
    _check_structure(graph, namer)
    if types:
        _check_types(graph, namer)


def _context(graph: Graph, idx: int, namer: _Namer, radius: int = 2) -> str:
    lo, hi = max(0, idx - radius), min(len(graph.nodes), idx + radius + 1)
    lines = []
    for i in range(lo, hi):
        mark = ">>" if i == idx else "  "
        lines.append(f"{mark} {node_str(graph.nodes[i], namer)}")
    return "\n".join(lines)


def _fail(graph: Graph, idx: int | None, namer: _Namer, msg: str) -> VerificationError:
    if idx is None:
        return VerificationError(f"graph '{graph.name}': {msg}")
    return VerificationError(f"graph '{graph.name}': {msg}\n{_context(graph, idx, namer)}")


def _check_structure(graph: Graph, namer: _Namer) -> None:
    origin: dict[int, str] = {}

    def claim(v: Value, what: str, idx: int | None) -> None:
        if id(v) in origin:
            raise _fail(graph, idx, namer, f"value %{namer(v)} is defined twice ({origin[id(v)]} and {what})")
        origin[id(v)] = what

    for v in graph.inputs:
        claim(v, "a graph input", None)
        if v.producer is not None or v.is_const:
            raise _fail(graph, None, namer, f"graph input %{namer(v)} has a producer or contents")
    for v in graph.constants:
        claim(v, "a constant", None)
        if v.const is None:
            raise _fail(graph, None, namer, f"constant %{namer(v)} has no contents")
        if isinstance(v.type, TensorType) and v.type.shape != v.const.shape:
            raise _fail(graph, None, namer, f"constant %{namer(v)} is typed {v.type} but holds shape {v.const.shape}")

    expected_uses: dict[int, list[tuple[int, int]]] = {}
    seen_nodes: set[int] = set()
    for idx, node in enumerate(graph.nodes):
        if node.graph is not graph:
            raise _fail(graph, idx, namer, f"node {node.describe()} does not belong to this graph")
        if id(node) in seen_nodes:
            raise _fail(graph, idx, namer, f"node {node.describe()} appears twice in the node list")
        seen_nodes.add(id(node))
        for slot, v in [*enumerate(node.inputs), *((-1 - i, c) for i, c in enumerate(node.captures))]:
            if v is None:
                continue
            if id(v) not in origin:
                kind = "defined later (not in topological order)" if v.producer is not None else "undefined"
                if v.producer is not None and v.producer.graph is not graph:
                    kind = "produced by a node outside this graph"
                raise _fail(graph, idx, namer, f"operand {slot} of {node.describe()}, %{namer(v)}, is {kind}")
            expected_uses.setdefault(id(v), []).append((id(node), slot))
        for i, out in enumerate(node.outputs):
            if out.producer is not node or out.index != i:
                raise _fail(graph, idx, namer, f"result {i} of {node.describe()} does not point back to its node")
            claim(out, f"result {i} of {node.describe()}", idx)

    for v in graph.values():
        got = sorted((id(n), s) for n, s in v.uses)
        want = sorted(expected_uses.get(id(v), []))
        if got != want:
            raise _fail(graph, None, namer, f"use list of %{namer(v)} is stale: {len(got)} recorded, {len(want)} real")
    if not graph.outputs:
        raise _fail(graph, None, namer, "the graph has no outputs (ONNX requires at least one)")
    for v in graph.outputs:
        if id(v) not in origin:
            raise _fail(graph, None, namer, f"graph output %{namer(v)} is not defined in the graph")


def _compatible(recorded: Type, inferred: Type) -> bool:
    if isinstance(recorded, OpaqueType) or isinstance(inferred, OpaqueType):
        return type(recorded) is type(inferred)
    if recorded.dtype != inferred.dtype:
        return False
    if inferred.shape is None or recorded.shape is None:
        return True
    if len(recorded.shape) != len(inferred.shape):
        return False
    # an unknown inferred dim accepts any recorded one (the frontend may know more)
    return all(b == UNKNOWN or isinstance(b, str) or a == b for a, b in zip(recorded.shape, inferred.shape))


def _check_types(graph: Graph, namer: _Namer) -> None:
    for idx, node in enumerate(graph.nodes):
        try:
            inferred = _infer(node)
        except InferenceError as e:
            raise _fail(graph, idx, namer, f"type inference failed: {e}") from None
        if inferred is None:
            continue
        if len(inferred) < len(node.outputs):
            raise _fail(graph, idx, namer, f"{node.describe()} has {len(node.outputs)} results, its op gives {len(inferred)}")
        for i, (out, t) in enumerate(zip(node.outputs, inferred)):
            if not _compatible(out.type, t):
                raise _fail(
                    graph, idx, namer,
                    f"result {i} of {node.describe()} is recorded as {out.type} but inference gives {t}",
                )


def _infer(node: Node) -> list[Type] | None:
    return infer_node(node)
