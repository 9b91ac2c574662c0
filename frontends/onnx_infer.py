"""ONNX shape inference for opaque nodes (ops the registry has no entry for).

Each opaque node is typed alone: a one-node model whose inputs carry the
operand types (small constant operands as initializers, so that inference can
read them) is run through ``onnx.shape_inference``. Importing this module
installs it as the registry's fallback, so the verifier re-checks opaque nodes
the same way.
"""

from __future__ import annotations

import numpy as np
import onnx

from nasc.frontends import onnx_control
from nasc.frontends.onnx_proto import array_to_tensor, attr_to_onnx, type_from_onnx, value_info
from nasc.ir.core import Node, captured_names
from nasc.ir.ops import registry
from nasc.ir.types import OpaqueType, Type

_SMALL = 1 << 12
UNKNOWN_TYPE = OpaqueType("unknown")


def attr_schema_types(op: str, domain: str, opset: int) -> dict[str, int]:
    """Attribute name -> AttributeProto type from the op's schema (empty when there is none)."""
    try:
        schema = onnx.defs.get_schema(op, opset, domain)
    except onnx.defs.SchemaError:
        return {}
    return {name: int(a.type) for name, a in schema.attributes.items()}


def node_to_onnx(node: Node, in_names: list[str], out_names: list[str], opsets: dict[str, int],
                 capture_names: dict[str, str] | None = None) -> onnx.NodeProto:
    """A NodeProto for an IR node (dtype attributes converted back to ONNX enums)."""
    from nasc.frontends.onnx_proto import dtype_to_onnx

    entry = registry.lookup_node(node)
    dtype_attrs = entry.dtype_attrs if entry is not None else ()
    expected = attr_schema_types(node.op, node.domain, opsets.get(node.domain, opsets.get("", 21)))
    attrs = []
    for k in sorted(node.attrs):
        v = node.attrs[k]
        if k in dtype_attrs and isinstance(v, str):
            v = dtype_to_onnx(v)
        attrs.append(attr_to_onnx(k, v, expected.get(k), capture_names))
    proto = onnx.helper.make_node(node.op, in_names, out_names, name=node.name, domain=node.domain)
    proto.attribute.extend(attrs)
    return proto


def infer_opaque(node: Node, opsets: dict[str, int], *, bodies: bool = True) -> list[Type]:
    """Result types of an opaque node by ONNX shape inference (UNKNOWN_TYPE where it says nothing).

    Control flow (If, Loop, Scan) is typed from its bodies first (``bodies``), ONNX filling the gaps.
    """
    if bodies and node.op in onnx_control.CONTROL_FLOW:
        return onnx_control.infer_with_fallback(node, opsets)
    in_names = [f"in{i}" if v is not None else "" for i, v in enumerate(node.inputs)]
    inputs, inits = [], []
    for name, v in zip(in_names, node.inputs):
        if v is None:
            continue
        if v.is_const and int(np.prod(v.const.shape)) <= _SMALL:  # type: ignore[union-attr]
            inits.append(array_to_tensor(v.data, name, v.dtype))
        inputs.append(value_info(name, v.type))
    for outer, c in zip(captured_names(node.attrs), node.captures):
        inputs.append(value_info(outer, c.type))
    out_names = [f"out{i}" for i in range(len(node.outputs))]
    proto = node_to_onnx(node, in_names, out_names, opsets)
    graph = onnx.helper.make_graph([proto], "infer", inputs, [onnx.ValueInfoProto(name=o) for o in out_names], inits)
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()]
    )
    model.ir_version = onnx.IR_VERSION
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference errors on ops it cannot type: fall back to unknown
        return [UNKNOWN_TYPE] * len(node.outputs)
    known = {vi.name: vi.type for vi in (*inferred.graph.value_info, *inferred.graph.output)}
    types: list[Type] = []
    for o in out_names:
        tp = known.get(o)
        if tp is None or tp.WhichOneof("value") is None:
            types.append(UNKNOWN_TYPE)
            continue
        try:
            types.append(type_from_onnx(tp))
        except ValueError:
            types.append(UNKNOWN_TYPE)
    return types


def _hook(node: Node) -> list[Type] | None:
    opsets = node.graph.opsets if node.graph is not None else {"": 21}
    return infer_opaque(node, opsets)


registry.opaque_inference = _hook
