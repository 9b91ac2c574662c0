"""IR -> ``torch.fx.GraphModule``: constants become parameters (floats) or buffers, named after their IR values.

A constant read by several nodes is one parameter, so tied weights stay tied under training. Every node goes
through the lowering registered for its op (``@torch_lowering("Conv")`` in ops.py, beside the Relax
lowerings of backends/tvm/ops.py); ops without one are reported all at once, with their nodes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from nasc.errors import UnsupportedModelError
from nasc.frontends.nasc_pt2 import attr_name
from nasc.frontends.torch_ops import WIDENED, torch_dtype
from nasc.ir import dtypes
from nasc.ir.core import Graph, Node, Value
from nasc.ir.types import TensorType

LOWERINGS: dict[str, Callable[[Lx, Node], Any]] = {}


def torch_lowering(*ops: str) -> Callable[[Callable[[Lx, Node], Any]], Callable[[Lx, Node], Any]]:
    """Register the torch lowering of ``ops`` (qualified names: ``nasc.Attention``)."""

    def wrap(fn: Callable[[Lx, Node], Any]) -> Callable[[Lx, Node], Any]:
        for op in ops:
            LOWERINGS[op] = fn
        return fn

    return wrap




def const_tensor(v: Value) -> torch.Tensor:
    """A constant's contents as a tensor (sub-byte integers widened to 8 bits, values unchanged)."""
    data = np.asarray(v.data)
    if v.dtype in WIDENED:
        data = data.astype(dtypes.to_numpy(WIDENED[v.dtype]))
    return torch.from_numpy(data.copy()) if data.ndim else torch.tensor(data.item(), dtype=torch_dtype(v.dtype))


class Lx:
    """What a lowering sees: the fx graph under construction and the fx node of every IR value so far."""

    def __init__(self, fx: Any, train: bool = False) -> None:
        self.fx = fx
        self.env: dict[int, Any] = {}
        #: lowering for training: QDQ as fake quantization with straight-through gradients (quant.py)
        self.train = train
        #: (train) QuantizeLinear results lowered as a whole fake-quantize pair, by value id
        self.fake: set[int] = set()
        #: (train) integer constants that have a float shadow parameter, by value id
        self.shadows: dict[int, Any] = {}

    def x(self, node: Node, i: int = 0) -> Any:
        return self.env[id(node.input(i))]

    def opt(self, node: Node, i: int) -> Any:
        """Operand ``i``'s fx node, or None when it is omitted."""
        return self.env[id(node.input(i))] if node.has_input(i) else None

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.fx.call_function(fn, args, kwargs)


def missing_lowerings(graph: Graph) -> dict[str, list[Node]]:
    from nasc.backends.pytorch import nn, ops, quant, shape  # noqa: F401  (registers the lowerings)

    out: dict[str, list[Node]] = {}
    for n in graph.nodes:
        if n.qualified_op not in LOWERINGS:
            out.setdefault(n.qualified_op, []).append(n)
    return out


def check_types(graph: Graph) -> None:
    """Refuse a graph with a value that is not a tensor (a sequence, an optional) or has an element type torch
    has no tensor for (strings, float8, ...)."""
    values = [v for v in (*graph.inputs, *graph.constants, *(o for n in graph.nodes for o in n.outputs))
              if v is not None]
    for v in values:
        if not isinstance(v.type, TensorType):
            kind = re.sub(r":\w*>", ">", str(v.type))  # (without the type's serialized proto)
            raise UnsupportedModelError(f"to_torch: %{v.name} is not a tensor ({kind}): no torch lowering")
    for dtype in sorted({v.type.dtype for v in values if isinstance(v.type, TensorType)}):
        try:
            torch_dtype(dtype)
        except (TypeError, ValueError, KeyError) as e:
            raise UnsupportedModelError(f"to_torch: element type {dtype} has no torch tensor") from e


def to_torch(graph: Graph, *, train: bool = False, outputs: Sequence[Value] | None = None) -> Any:
    """A ``torch.fx.GraphModule`` computing ``graph``: ``forward`` takes the graph's inputs (by position or by
    name) and returns its outputs (or ``outputs``, any values of the graph) as a tuple. Floating-point constants
    are ``nn.Parameter`` s named after their IR values (the names ``named_parameters`` gives); other constants are
    buffers. ``module.nasc_values`` maps each parameter and buffer name to its IR value.

    ``train=True`` lowers for training (the forward stays exact): a QuantizeLinear -> DequantizeLinear pair
    becomes fake quantization whose gradient is straight-through for the input and LSQ's for the scale (torch's
    learnable fake-quantize ops), and a dequantized integer weight becomes a float parameter (its "shadow",
    named like the integer constant) fake-quantized the same way; ``module.nasc_shadows`` describes them."""
    import torch.fx

    from nasc.passes.recover_job import QuantWeight, quantized_weights

    check_types(graph)
    missing = missing_lowerings(graph)
    if missing:
        rows = "; ".join(f"{op} ({len(ns)}: {', '.join(n.name or '?' for n in ns[:3])}"
                         f"{', …' if len(ns) > 3 else ''})" for op, ns in sorted(missing.items()))
        raise UnsupportedModelError(f"to_torch: {len(missing)} op(s) have no torch lowering: {rows}")
    root = torch.nn.Module()
    fx = torch.fx.Graph()
    lx = Lx(fx, train)
    used: set[str] = set()
    values: dict[str, Value] = {}
    lx.shadows = quantized_weights(graph) if train else {}
    shadows: dict[str, QuantWeight] = {}
    for v in graph.inputs:
        lx.env[id(v)] = fx.placeholder(attr_name(v, 0, used))
    for i, c in enumerate(graph.constants):
        name = attr_name(c, i, used)
        values[name] = c
        shadow = lx.shadows.get(id(c))
        if shadow is not None:
            shadows[name] = shadow
            root.register_parameter(name, torch.nn.Parameter(torch.from_numpy(shadow.dequantized())))
        elif c.dtype in dtypes.FLOAT_DTYPES:
            root.register_parameter(name, torch.nn.Parameter(const_tensor(c)))
        else:
            root.register_buffer(name, const_tensor(c))
        lx.env[id(c)] = fx.get_attr(name)
    for node in graph.nodes:
        outs = LOWERINGS[node.qualified_op](lx, node)
        if not isinstance(outs, list | tuple):
            outs = [outs]
        for v, o in zip(node.outputs, outs, strict=False):
            lx.env[id(v)] = o
    fx.output(tuple(lx.env[id(v)] for v in (graph.outputs if outputs is None else outputs)))
    module = torch.fx.GraphModule(root, fx, class_name=re.sub(r"\W", "_", graph.name) or "Graph")
    module.nasc_values = values
    module.nasc_shadows = shadows
    return module


# ---- helpers the lowerings share -------------------------------------------------------------------------


def result_used(node: Node, i: int) -> bool:
    """Whether result ``i`` of ``node`` is read by a node or is a graph output."""
    if i >= len(node.outputs):
        return False
    v = node.outputs[i]
    return bool(v.uses) or (node.graph is not None and any(o is v for o in node.graph.outputs))


def const_of(node: Node, i: int) -> np.ndarray:
    """Operand ``i``'s contents: it must be a constant (shapes are static)."""
    v = node.input(i)
    if not v.is_const:
        raise UnsupportedModelError(f"to_torch: {node.describe()}'s operand %{v.name} must be a constant "
                                    "(run --passes simplify)")
    return np.asarray(v.data)


def constant(values: Any, shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """A tensor spelled out in the generated code (values as nested lists)."""
    return torch.tensor(values, dtype=dtype).reshape(shape)


def constant_node(lx: Lx, value: np.ndarray, dtype: str) -> Any:
    """A constant computed while lowering (a static shape, a folded value) as a node of the fx graph."""
    return lx.call(constant, value.tolist(), list(value.shape), torch_dtype(dtype))
