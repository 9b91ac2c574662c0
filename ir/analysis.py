"""Whole-graph figures: parameter and MAC counts, the largest activation, per-scope totals."""

from __future__ import annotations

from collections import Counter
from typing import Any

from nasc.ir.core import Graph, Node, Value
from nasc.ir.ops.registry import Cost, InferenceError, lookup_node
from nasc.ir.types import TensorType


def node_cost(node: Node) -> Cost:
    """The registry's cost of ``node``; opaque nodes and unknown shapes cost 0 MACs."""
    entry = lookup_node(node)
    if entry is None:
        return Cost()
    try:
        return entry.cost(node)
    except (ValueError, TypeError, KeyError, IndexError, InferenceError):  # unknown shapes or non-tensors
        return Cost()


def _type_dict(v: Value) -> dict[str, Any]:
    t = v.type
    if isinstance(t, TensorType):
        shape = None if t.shape is None else list(t.shape)
        return {"name": v.name, "dtype": t.dtype, "shape": shape}
    return {"name": v.name, "type": str(t)}


def scope_prefix(scope: str, depth: int | None) -> str:
    """The first ``depth`` dotted parts of a scope, keeping numeric parts with their parent ("encoder.layer.0")."""
    if depth is None or not scope:
        return scope or "<root>"
    parts = scope.split(".")
    out: list[str] = []
    taken = 0
    for p in parts:
        out.append(p)
        if not p.isdigit():
            taken += 1
        if taken >= depth and not (len(out) < len(parts) and parts[len(out)].isdigit()):
            break
    return ".".join(out)


def common_scope(scopes: list[str]) -> str:
    """The longest common dotted prefix of ``scopes`` ("encoder.layer.3" of "encoder.layer.3.attention.q" and
    "encoder.layer.3.output"); "" when they share none."""
    out: list[str] = []
    for level in zip(*(s.split(".") for s in scopes), strict=False):
        if len(set(level)) != 1:
            break
        out.append(level[0])
    return ".".join(out)


def summarize(graph: Graph, scope_depth: int | None = 3) -> dict[str, Any]:
    """Counts and costs of ``graph`` as a JSON-ready dict.

    Keys: ``nodes``, ``ops`` (op -> count), ``opaque_ops``, ``params`` (elements in
    constants), ``param_bytes``, ``macs``, ``inputs``, ``outputs``,
    ``largest_activation`` and ``scopes`` (per scope prefix: nodes, params, macs).
    """
    ops = Counter(n.qualified_op for n in graph.nodes)
    opaque = sorted({n.qualified_op for n in graph.nodes if lookup_node(n) is None})
    params = sum(int(c.tensor_type.numel) for c in graph.constants if c.tensor_type.is_static)
    param_bytes = sum(c.tensor_type.nbytes for c in graph.constants if c.tensor_type.is_static)

    scopes: dict[str, dict[str, int]] = {}
    counted: set[int] = set()
    macs = 0
    largest: tuple[int, Value | None, Node | None] = (0, None, None)
    for node in graph.nodes:
        cost = node_cost(node)
        macs += cost.macs
        row = scopes.setdefault(scope_prefix(node.scope, scope_depth), {"nodes": 0, "params": 0, "macs": 0})
        row["nodes"] += 1
        row["macs"] += cost.macs
        for v in node.inputs:
            if v is not None and v.is_const and id(v) not in counted and v.tensor_type.is_static:
                counted.add(id(v))
                row["params"] += v.tensor_type.numel
        for out in node.outputs:
            if isinstance(out.type, TensorType) and out.type.is_static and out.type.nbytes > largest[0]:
                largest = (out.type.nbytes, out, node)

    big: dict[str, Any] | None = None
    if largest[1] is not None and largest[2] is not None:
        big = {**_type_dict(largest[1]), "bytes": largest[0], "node": largest[2].name, "op": largest[2].qualified_op,
               "scope": largest[2].scope}
    return {
        "name": graph.name,
        "opsets": dict(graph.opsets),
        "nodes": len(graph.nodes),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "opaque_ops": opaque,
        "params": params,
        "param_bytes": param_bytes,
        "macs": macs,
        "inputs": [_type_dict(v) for v in graph.inputs],
        "outputs": [_type_dict(v) for v in graph.outputs],
        "largest_activation": big,
        "scopes": scopes,
    }
