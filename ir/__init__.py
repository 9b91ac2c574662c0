"""nasc's graph IR. Depends on numpy and networkx only (never torch, onnx or tvm)."""

from nasc.ir import ops  # noqa: F401  (registers every op)
from nasc.ir.core import Graph, LazyArray, Node, SubGraph, Value
from nasc.ir.text import parse, print_graph
from nasc.ir.types import UNKNOWN, OpaqueType, QuantParams, TensorType
from nasc.ir.verifier import verify

__all__ = [
    "UNKNOWN",
    "Graph",
    "LazyArray",
    "Node",
    "OpaqueType",
    "QuantParams",
    "SubGraph",
    "TensorType",
    "Value",
    "parse",
    "print_graph",
    "verify",
]
