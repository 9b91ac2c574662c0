"""Types of control-flow nodes (If, Loop, Scan) and of the values inside their bodies.

The IR carries a body opaquely (a :class:`~nasc.ir.core.SubGraph`), but its
values are typed by importing it as a graph of its own: its formal inputs get
the types the op gives them (a Loop's iteration number and condition and its
carried values, a Scan's states and one slice of each scanned tensor), the
outer values it reads come from the node's captures (constants stay constants,
so that shape conditions inside the body fold as they do in the main graph),
and the frontend imports its nodes as it imports the main graph, recursing
into nested bodies.

- An If whose condition is a constant has the types of the branch it takes;
  otherwise the types both branches agree on (a dim they disagree on becomes
  unknown; a rank they disagree on, an unknown rank).
- Loop-carried values and Scan states are iterated to a fixed point: a dim
  that changes from one iteration to the next becomes unknown.
- A Loop's scan outputs have the trip count as their first dim when the loop
  surely runs ``M`` times; a Scan's have the scanned length on their axis.

Typing is best effort and sound: a body that cannot be imported (an op whose
inference fails for these shapes, say) types nothing, and the result falls
back to ONNX shape inference. The exporter writes the body types back into
the subgraphs with :func:`typed_bodies`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from nasc.frontends.onnx_proto import lazy_tensor, sparse_to_array, type_to_onnx
from nasc.ir.core import Graph, Node, SubGraph, Value, captured_names
from nasc.ir.types import UNKNOWN, OpaqueType, TensorType, Type

CONTROL_FLOW = ("If", "Loop", "Scan")
MAX_FIXPOINT_STEPS = 8  # each step can only forget something; past this, carried values keep their dtype only

_I64_SCALAR = TensorType("i64", ())
_BOOL_SCALAR = TensorType("bool", ())
_UNKNOWN = OpaqueType("unknown")


@dataclass
class Body:
    """One body imported with given input types: its values by name, or why the import failed."""

    proto: onnx.GraphProto
    env: dict[str, Value] = field(default_factory=dict)
    error: str = ""

    def output_types(self) -> list[Type]:
        if self.error:
            return [_UNKNOWN] * len(self.proto.output)
        return [self.env[o.name].type for o in self.proto.output]

    def output_value(self, i: int) -> Value | None:
        return None if self.error else self.env.get(self.proto.output[i].name)


def infer_control_flow(node: Node, opsets: Mapping[str, int]) -> list[Type] | None:
    """Result types of an If, Loop or Scan node from its bodies; None for other nodes.

    An entry is the unknown opaque type (or a tensor of unknown rank) where the
    bodies say nothing; the caller may fill it from ONNX shape inference.
    """
    typed = _type_node(node, opsets)
    return None if typed is None else typed[0]


def infer_with_fallback(node: Node, opsets: Mapping[str, int]) -> list[Type]:
    """:func:`infer_control_flow`, with what it leaves open filled from ONNX shape inference."""
    from nasc.frontends.onnx_infer import infer_opaque

    ours = infer_control_flow(node, opsets)
    if ours is not None and all(_complete(t) for t in ours):
        return ours
    theirs = infer_opaque(node, dict(opsets), bodies=False)
    return theirs if ours is None else [_meet(a, b) for a, b in zip(ours, theirs)]


def typed_bodies(node: Node, opsets: Mapping[str, int]) -> dict[str, Any]:
    """The node's graph attributes with every value inside typed, nested bodies included.

    Returns attribute name -> SubGraph (same ``captured`` names, new payload),
    only for the attributes of If, Loop and Scan nodes; the types written are
    the body's formal inputs, its outputs and every value its nodes define,
    each as complete as nasc knows it (an element type without a shape where
    the rank is unknown, nothing where even that is unknown).
    """
    typed = _type_node(node, opsets)
    if typed is None:
        return {}
    out: dict[str, Any] = {}
    for attr, body in typed[1].items():
        sg = node.attrs[attr]
        proto = _annotate(body, opsets)
        out[attr] = SubGraph(proto.SerializeToString(), sg.captured)
    return out


def clean_types(g: onnx.GraphProto) -> None:
    """Drop empty TypeProtos (a ``type`` with nothing set, a tensor type without an element type) in ``g``."""
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.HasField("type") and not _meaningful(vi.type):
            vi.ClearField("type")
    empty = [vi for vi in g.value_info if not vi.HasField("type")]
    for vi in empty:
        g.value_info.remove(vi)
    for n in g.node:
        for a in n.attribute:
            for sub in _graphs(a):
                clean_types(sub)


# ---- typing ----------------------------------------------------------------------------------------


def _type_node(node: Node, opsets: Mapping[str, int]) -> tuple[list[Type], dict[str, Body]] | None:
    if node.domain not in ("", "ai.onnx") or node.op not in CONTROL_FLOW:
        return None
    if node.op == "Scan" and opsets.get("", 21) < 9:
        return None  # Scan-8 has a batch axis and sequence lengths; left to ONNX inference
    outer = dict(zip(captured_names(node.attrs), node.captures))
    if node.op == "If":
        return _type_if(node, outer, opsets)
    if node.op == "Loop":
        return _type_loop(node, outer, opsets)
    return _type_scan(node, outer, opsets)


def _type_if(node: Node, outer: dict[str, Value], opsets: Mapping[str, int]) -> tuple[list[Type], dict[str, Body]] | None:
    then_sg, else_sg = node.attrs.get("then_branch"), node.attrs.get("else_branch")
    if not isinstance(then_sg, SubGraph) or not isinstance(else_sg, SubGraph):
        return None
    bodies = {"then_branch": _import_body(then_sg, [], outer, opsets),
              "else_branch": _import_body(else_sg, [], outer, opsets)}
    n = len(node.outputs)
    cond = node.inputs[0] if node.inputs else None
    taken = _constant_truth(cond)
    if taken is not None:
        types = bodies["then_branch" if taken else "else_branch"].output_types()
    else:
        types = [_merge(a, b) for a, b in zip(bodies["then_branch"].output_types(), bodies["else_branch"].output_types())]
    return _pad(types, n), bodies


def _type_loop(node: Node, outer: dict[str, Value], opsets: Mapping[str, int]) -> tuple[list[Type], dict[str, Body]] | None:
    sg = node.attrs.get("body")
    if not isinstance(sg, SubGraph):
        return None
    ins = list(node.inputs) + [None] * max(0, 2 - len(node.inputs))
    carried_in = [v.type if v is not None else _UNKNOWN for v in ins[2:]]
    n_carried = len(carried_in)
    body, carried = _fixpoint(sg, [_I64_SCALAR, _BOOL_SCALAR], carried_in, 1, outer, opsets)
    per_iter = body.output_types()[1 + n_carried :]
    trips = _loop_trip_count(ins[0], ins[1], body)
    scans = [_stacked(t, trips, 0) for t in per_iter]
    return _pad([*carried, *scans], len(node.outputs)), {"body": body}


def _type_scan(node: Node, outer: dict[str, Value], opsets: Mapping[str, int]) -> tuple[list[Type], dict[str, Body]] | None:
    sg = node.attrs.get("body")
    n_scan = node.attrs.get("num_scan_inputs")
    if not isinstance(sg, SubGraph) or not isinstance(n_scan, int):
        return None
    ins = list(node.inputs)
    n_state = len(ins) - n_scan
    if n_state < 0 or any(v is None for v in ins):
        return None
    states = [v.type for v in ins[:n_state]]  # type: ignore[union-attr]
    in_axes = list(node.attrs.get("scan_input_axes", ())) or [0] * n_scan
    slices: list[Type] = []
    length: int | str = UNKNOWN
    for k, v in enumerate(ins[n_state:]):
        t = v.type  # type: ignore[union-attr]
        if not isinstance(t, TensorType) or t.shape is None:
            slices.append(TensorType(t.dtype, None) if isinstance(t, TensorType) else _UNKNOWN)
            continue
        axis = in_axes[k] + len(t.shape) if in_axes[k] < 0 else in_axes[k]
        if not 0 <= axis < len(t.shape):
            return None
        slices.append(TensorType(t.dtype, t.shape[:axis] + t.shape[axis + 1 :]))
        if k == 0 or length == UNKNOWN:
            length = t.shape[axis]
    body, final = _fixpoint(sg, [], states, 0, outer, opsets, extra_inputs=slices)
    per_iter = body.output_types()[n_state:]
    out_axes = list(node.attrs.get("scan_output_axes", ())) or [0] * len(per_iter)
    scans = [_stacked(t, length, a) for t, a in zip(per_iter, out_axes)]
    return _pad([*final, *scans], len(node.outputs)), {"body": body}


def _fixpoint(sg: SubGraph, head: list[Type], carried: list[Type], out_offset: int, outer: dict[str, Value],
              opsets: Mapping[str, int], extra_inputs: Sequence[Type] = ()) -> tuple[Body, list[Type]]:
    """Import a loop body until its carried types are stable; the body and the carried types."""
    types = list(carried)
    for _ in range(MAX_FIXPOINT_STEPS):
        body = _import_body(sg, [*head, *types, *extra_inputs], outer, opsets)
        after = body.output_types()[out_offset : out_offset + len(types)]
        merged = [_merge(a, b) for a, b in zip(types, after)]
        if merged == types:
            return body, types
        types = merged
    types = [TensorType(t.dtype, None) if isinstance(t, TensorType) else _UNKNOWN for t in types]
    return _import_body(sg, [*head, *types, *extra_inputs], outer, opsets), types


def _import_body(sg: SubGraph, in_types: Sequence[Type], outer: Mapping[str, Value], opsets: Mapping[str, int]) -> Body:
    """The body of ``sg`` imported as a graph of its own (see the module docstring)."""
    from nasc.frontends.onnx import _import_node  # that module imports this one (through onnx_infer)

    proto = onnx.GraphProto()
    proto.ParseFromString(sg.payload)
    body = Body(proto)
    if len(in_types) != len(proto.input):
        body.error = f"the body has {len(proto.input)} inputs, the op gives it {len(in_types)}"
        return body
    graph = Graph(name=proto.name or "body", opsets=dict(opsets))
    env = body.env
    try:
        for name in sg.captured:
            v = outer[name]
            env[name] = graph.add_constant(v.const, name, type=v.type) if v.is_const else graph.add_input(name, v.type)  # type: ignore[arg-type]
        for vi, t in zip(proto.input, in_types):
            env[vi.name] = graph.add_input(vi.name, t)
        for t in proto.initializer:
            env[t.name] = graph.add_constant(lazy_tensor(t), t.name)
        for sp in proto.sparse_initializer:
            env[sp.values.name] = graph.add_constant(sparse_to_array(sp), sp.values.name)
        for n in proto.node:
            _import_node(graph, n, env, f"subgraph '{proto.name or '?'}'", {})
        graph.outputs = [env[o.name] for o in proto.output]
    except Exception as e:  # a body that does not type with these shapes: the caller falls back
        body.error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return body


def _constant_truth(v: Value | None) -> bool | None:
    if v is None or not v.is_const:
        return None
    arr = np.asarray(v.data)
    return bool(arr.reshape(-1)[0]) if arr.size == 1 else None


def _loop_trip_count(m: Value | None, cond: Value | None, body: Body) -> int | str:
    """``M`` when the loop surely runs ``M`` times: its condition starts true and the body passes it on."""
    if m is None or not m.is_const or np.asarray(m.data).size != 1:
        return UNKNOWN
    if cond is not None and _constant_truth(cond) is not True:
        return UNKNOWN
    out = body.output_value(0)
    if out is None:
        return UNKNOWN
    cond_in = body.env.get(body.proto.input[1].name)
    while out.producer is not None and out.producer.op == "Identity" and out.producer.inputs:
        out = out.producer.inputs[0]  # type: ignore[assignment]
    if out is not cond_in and _constant_truth(out) is not True:
        return UNKNOWN
    return max(0, int(np.asarray(m.data).reshape(-1)[0]))


def _stacked(t: Type, length: int | str, axis: int) -> Type:
    """The type of per-iteration values of type ``t`` stacked along ``axis``."""
    if not isinstance(t, TensorType):
        return _UNKNOWN
    if t.shape is None:
        return TensorType(t.dtype, None)
    rank = len(t.shape) + 1
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        return TensorType(t.dtype, None)
    return TensorType(t.dtype, (*t.shape[:axis], length, *t.shape[axis:]))


def _merge(a: Type, b: Type) -> Type:
    """The most a value known to be of type ``a`` or of type ``b`` is known to be."""
    if a == b:
        return a
    if isinstance(a, TensorType) and isinstance(b, TensorType) and a.dtype == b.dtype:
        if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
            return TensorType(a.dtype, None)
        return TensorType(a.dtype, tuple(x if x == y else UNKNOWN for x, y in zip(a.shape, b.shape)))
    return _UNKNOWN


def _meet(ours: Type, theirs: Type) -> Type:
    """Both facts about one value together (ours where they contradict each other)."""
    if isinstance(ours, OpaqueType) and not ours.payload:
        return theirs
    if not (isinstance(ours, TensorType) and isinstance(theirs, TensorType)) or ours.dtype != theirs.dtype:
        return ours
    if ours.shape is None:
        return theirs
    if theirs.shape is None or len(theirs.shape) != len(ours.shape):
        return ours
    return ours.with_shape(tuple(a if isinstance(a, int) or not isinstance(b, int) else b
                                 for a, b in zip(ours.shape, theirs.shape)))


def _complete(t: Type) -> bool:
    if isinstance(t, TensorType):
        return t.is_static
    return bool(t.payload)


def _pad(types: list[Type], n: int) -> list[Type]:
    return (types + [_UNKNOWN] * n)[:n]


# ---- writing the types back ----------------------------------------------------------------------


def _annotate(body: Body, opsets: Mapping[str, int]) -> onnx.GraphProto:
    """A copy of the body's proto with its values typed (nested bodies too)."""
    g = onnx.GraphProto()
    g.CopyFrom(body.proto)
    for vi in (*g.input, *g.output):
        _set_type(vi, body.env.get(vi.name))
    outputs = {o.name for o in g.output}
    inputs = {i.name for i in g.input}
    del g.value_info[:]
    for n in g.node:
        for name in n.output:
            if name and name not in outputs and name not in inputs:
                tp = _known(body.env.get(name))
                if tp is not None:
                    g.value_info.add(name=name).type.CopyFrom(tp)
        nested = _ir_node(body, n)
        typed = typed_bodies(nested, opsets) if nested is not None else {}
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH and a.name in typed:
                a.g.ParseFromString(typed[a.name].payload)
    clean_types(g)
    return g


def _ir_node(body: Body, n: onnx.NodeProto) -> Node | None:
    """The IR node imported for proto node ``n`` (None if it was folded away or the import failed)."""
    first = next((o for o in n.output if o), None)
    v = body.env.get(first) if first else None
    node = v.producer if v is not None else None
    return node if node is not None and node.op == n.op_type else None


def _set_type(vi: onnx.ValueInfoProto, v: Value | None) -> None:
    tp = _known(v)
    if tp is not None:
        vi.type.CopyFrom(tp)
    elif vi.HasField("type") and vi.type.HasField("tensor_type"):
        # what the source said may be stale under the static shapes: keep its element type only
        vi.type.tensor_type.ClearField("shape")


def _known(v: Value | None) -> onnx.TypeProto | None:
    if v is None:
        return None
    t = v.type
    if isinstance(t, TensorType):
        t = TensorType(t.dtype, t.shape)  # quantization parameters are not a type in ONNX
    tp = type_to_onnx(t)
    return tp if tp is not None and _meaningful(tp) else None


def _meaningful(tp: onnx.TypeProto) -> bool:
    kind = tp.WhichOneof("value")
    if kind is None:
        return False
    if kind == "tensor_type":
        return bool(tp.tensor_type.elem_type)
    return True


def _graphs(a: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if a.type == onnx.AttributeProto.GRAPH:
        return [a.g]
    if a.type == onnx.AttributeProto.GRAPHS:
        return list(a.graphs)
    return []
