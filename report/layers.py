"""The per-layer rows of report.json: each compute node of the built graph with its cost and weight width.

IR only (no torch, onnx or TVM): ``api.compile`` calls it on the graph it builds."""

from __future__ import annotations

from typing import Any

import numpy as np

from nasc.ir.analysis import node_cost
from nasc.ir.core import Graph, Node, Value

#: nodes that only carry quantization: their weights and widths show on the layer that reads them
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_BITS = {"i8": 8, "u8": 8, "i4": 4, "u4": 4, "i16": 16, "u16": 16, "f16": 16, "bf16": 16, "f32": 32, "f64": 64}


def layer_rows(graph: Graph) -> list[dict[str, Any]]:
    """One row per node that is not a Q/DQ node: name, op, scope, first output's shape, MACs, parameter count and
    the width of its weights (the integer width behind a DequantizeLinear, else the constant's float width)."""
    rows = []
    for n in graph.nodes:
        if n.op in _QDQ:
            continue
        consts = [c for c in (_weight(v) for v in n.inputs if v is not None) if c is not None]
        out = n.outputs[0] if n.outputs else None
        shape = list(out.shape) if out is not None and out.tensor_type.is_static else None
        weights = [c for c in consts if len(c.shape) >= 2] or consts
        rows.append({
            "name": n.name, "op": n.op, "scope": n.scope, "shape": shape, "macs": int(node_cost(n).macs),
            "params": int(sum(int(np.prod(c.shape)) for c in consts)),
            "bits": _BITS.get(weights[0].dtype) if weights else None,
        })
    return rows


def attach_steps(rows: list[dict[str, Any]], steps: list[dict[str, Any]], buffers: list[dict[str, Any]]) -> None:
    """Give each layer row of an MCU build the step of the call sequence that computes it and where that step's
    output sits in the arena (``arena_offset``, ``arena_bytes``; a model output is the caller's buffer)."""
    sizes = {b["name"]: b for b in buffers}
    by_name = {r["name"]: r for r in rows}
    for s in steps:
        for node in s.get("nodes", []):
            row = by_name.get(node)
            if row is None or "step" in row:
                continue
            row["step"] = s["step"]
            for buf, where in s.get("outputs", {}).items():
                if where.startswith("arena+") and buf in sizes:
                    row["arena_offset"], row["arena_bytes"] = int(where[len("arena+"):]), sizes[buf]["bytes"]
                elif not where.startswith("arena"):
                    row["arena_offset"] = where  # "output": the caller's buffer


def _weight(v: Value) -> Value | None:
    """The constant ``v`` is, or that a DequantizeLinear producing ``v`` reads."""
    if v.is_const:
        return v
    p: Node | None = v.producer
    if p is not None and p.op == "DequantizeLinear" and p.inputs and p.inputs[0] is not None and p.inputs[0].is_const:
        return p.inputs[0]
    return None
