"""ONNX exporter: ir.Graph -> a ModelProto that passes the full onnx.checker.

Names survive: graph inputs and outputs keep theirs exactly, other values keep
theirs where unique, constants become initializers named after their values
(the state-dict keys, usually), node names are kept, and each node's scope is
written to its ``nasc.scope`` metadata so that the ONNX frontend reads it back.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from nasc.errors import ExportError
from nasc.frontends.onnx_control import CONTROL_FLOW, clean_types, typed_bodies
from nasc.frontends.onnx_infer import node_to_onnx
from nasc.frontends.onnx_proto import array_to_tensor, value_info
from nasc.ir.core import Graph, Node, SubGraph, Value, captured_names
from nasc.ir.ops.registry import lookup_node
from nasc.ir.types import OpaqueType, TensorType

EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes: protobuf cannot hold 2 GiB


class _Names:
    def __init__(self, reserved: list[str]) -> None:
        self.taken: set[str] = set(reserved)
        self.of: dict[int, str] = {}
        self.counter = 0

    def fresh(self, base: str) -> str:
        base = base or f"v{self.counter}"
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        self.counter += 1
        return name

    def __call__(self, v: Value) -> str:
        if id(v) not in self.of:
            self.of[id(v)] = self.fresh(v.name)
        return self.of[id(v)]


def to_onnx(graph: Graph, *, producer: str = "nasc") -> onnx.ModelProto:
    """The ModelProto for ``graph``. Raises ExportError for what ONNX cannot express.

    nasc's own ops (domain "nasc") are decomposed into standard ops first.
    """
    graph = lower_nasc_ops(graph)
    out_names = [v.name or f"output_{i}" for i, v in enumerate(graph.outputs)]
    if len(set(out_names)) != len(out_names):
        raise ExportError(f"graph outputs have duplicate names {out_names}; give each output its own name")
    # a fresh name must not be one that a subgraph defines (ONNX names are global across nesting)
    names = _Names([v.name for v in graph.inputs] + out_names + sorted(_subgraph_names(graph)))
    for v in graph.inputs:
        names.of[id(v)] = v.name

    # outputs keep their names; a value that already has another exported name (an input,
    # or a value listed twice) reaches its second name through an Identity node
    identity_outputs: list[tuple[str, Value]] = []
    for v, name in zip(graph.outputs, out_names):
        if names.of.get(id(v)) == name:
            continue
        if id(v) in names.of:
            identity_outputs.append((name, v))
        else:
            names.of[id(v)] = name

    initializers = []
    for c in graph.constants:
        assert c.const is not None
        name = names(c)
        src = c.const.source
        if isinstance(src, onnx.TensorProto) and not c.const.loaded:
            t = onnx.TensorProto()
            t.CopyFrom(src)
            t.name = name
        else:
            t = array_to_tensor(c.data, name, c.dtype)
        initializers.append(t)

    nodes = []
    node_names: set[str] = set()
    for node in graph.nodes:
        ins = [names(v) if v is not None else "" for v in node.inputs]
        while ins and ins[-1] == "":  # trailing omitted operands are left out (some runtimes choke on "")
            ins.pop()
        outs = [names(o) if (o.uses or any(o is x for x in graph.outputs)) else names.fresh(o.name) for o in node.outputs]
        subgraph_names = {outer: names(c) for outer, c in zip(captured_names(node.attrs), node.captures)}
        proto = node_to_onnx(_with_typed_bodies(node, graph.opsets), ins, outs, graph.opsets, subgraph_names)
        if proto.name:  # node names must be unique in ONNX; rewrites may repeat one
            base, k = proto.name, 1
            while proto.name in node_names:
                proto.name, k = f"{base}_{k}", k + 1
            node_names.add(proto.name)
        if node.scope:
            proto.metadata_props.add(key="nasc.scope", value=node.scope)
        nodes.append(proto)
    for name, v in identity_outputs:
        nodes.append(onnx.helper.make_node("Identity", [names(v)], [name], name=f"{name}_identity"))

    # types of intermediate values, for readers and runtimes; only where nasc's own
    # inference typed them: registered ops, and control flow typed from its bodies (another
    # opaque node's types came from ONNX inference, which a runtime may refine differently)
    vinfo = [
        value_info(names(o), o.type)
        for node in graph.nodes
        if lookup_node(node) is not None or _is_control_flow(node)
        for o in node.outputs
        if id(o) in names.of and names.of[id(o)] not in out_names and not _unknown(o)
    ]
    onnx_graph = onnx.helper.make_graph(
        nodes,
        graph.name,
        [value_info(v.name, v.type) for v in graph.inputs],
        [value_info(name, v.type) for v, name in zip(graph.outputs, out_names)],
        initializers,
        value_info=vinfo,
    )
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in sorted(graph.opsets.items())]
    model = onnx.helper.make_model(onnx_graph, opset_imports=opsets, producer_name=producer)
    model.ir_version = max(onnx.helper.find_min_ir_version_for(opsets, ignore_unknown=True), 8)
    for k, v in graph.meta.get("metadata_props", {}).items():
        model.metadata_props.add(key=k, value=v)
    return model


def lower_nasc_ops(graph: Graph) -> Graph:
    """``graph`` with every nasc-domain op replaced by its standard decomposition (a copy if any)."""
    if not any(n.domain == "nasc" for n in graph.nodes):
        return graph
    graph = graph.clone()
    for node in [n for n in graph.nodes if n.domain == "nasc"]:
        entry = lookup_node(node)
        outs = entry.decompose(graph, node) if entry is not None else None
        if outs is None:
            raise ExportError(f"{node.describe()} has no ONNX form")
        for old, new in zip(node.outputs, outs):
            new.name = old.name
            graph.replace_all_uses_with(old, new)
        graph.erase(node)
    graph.opsets.pop("nasc", None)
    return graph


def _is_control_flow(node: Node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op in CONTROL_FLOW


def _with_typed_bodies(node: Node, opsets: dict[str, int]) -> Node:
    """``node`` as it is exported: an If/Loop/Scan with every value in its bodies typed.

    The bodies are stored as the source wrote them, whose types may be missing
    (an empty TypeProto), partial, or stale under the static input shapes; the
    types written are the ones nasc derives from the captured values' types.
    Other graph attributes are written as stored, less any empty TypeProto.
    """
    if not any(isinstance(a, SubGraph) or (isinstance(a, tuple) and any(isinstance(x, SubGraph) for x in a))
               for a in node.attrs.values()):
        return node
    attrs = dict(node.attrs)
    typed = typed_bodies(node, opsets) if _is_control_flow(node) else {}
    for k, a in attrs.items():
        if k in typed:
            attrs[k] = typed[k]
        elif isinstance(a, SubGraph):
            attrs[k] = _cleaned(a)
        elif isinstance(a, tuple):
            attrs[k] = tuple(_cleaned(x) if isinstance(x, SubGraph) else x for x in a)
    # a detached stand-in: node_to_onnx reads only the op, domain, name and attributes
    return Node(node.op, [], [], attrs, domain=node.domain, name=node.name)


def _cleaned(sg: SubGraph) -> SubGraph:
    g = onnx.GraphProto()
    g.ParseFromString(sg.payload)
    clean_types(g)
    return SubGraph(g.SerializeToString(), sg.captured)


def _subgraph_names(graph: Graph) -> set[str]:
    """Every name defined inside the graph attributes of ``graph``'s nodes, at any depth."""
    found: set[str] = set()

    def visit(g: onnx.GraphProto) -> None:
        found.update(i.name for i in g.input)
        found.update(t.name for t in g.initializer)
        for n in g.node:
            found.update(o for o in n.output if o)
            for a in n.attribute:
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    visit(sub)

    for node in graph.nodes:
        for a in node.attrs.values():
            for sg in (a,) if isinstance(a, SubGraph) else a if isinstance(a, tuple) else ():
                if isinstance(sg, SubGraph):
                    g = onnx.GraphProto()
                    g.ParseFromString(sg.payload)
                    visit(g)
    return found


def _check_output_types(graph: Graph) -> None:
    """The checker requires a type with a shape (a rank) on every graph output; say which output lacks one and why.

    (ONNX Runtime does not: ``to_onnx`` serves it graphs with such outputs, intermediate values read back.)
    """
    for i, v in enumerate(graph.outputs):
        name = v.name or f"output_{i}"
        t = v.type
        if (isinstance(t, TensorType) and t.shape is not None) or (isinstance(t, OpaqueType) and t.payload):
            continue
        origin = _rank_lost_at(v)
        where = f"; the rank is lost at {origin.describe()}" if origin is not None else ""
        why = (" (its branches give results of different ranks, or its bodies do not type with these shapes)"
               if origin is not None and _is_control_flow(origin) else "")
        raise ExportError(
            f"graph output '{name}' has no known rank ({t}){where}{why}. ONNX needs a rank for every graph output: "
            "fix the input shapes so that the rank is known, or make the output a fixed-rank tensor in the model."
        )


def _rank_lost_at(v: Value) -> Node | None:
    """The first node on the way to ``v`` whose results have no rank though its operands all have one."""
    node = v.producer
    while node is not None:
        up = next((x for x in (*node.inputs, *node.captures) if x is not None and _rankless(x)), None)
        if up is None or up.producer is None:
            return node
        node = up.producer
    return None


def _rankless(v: Value) -> bool:
    return (isinstance(v.type, TensorType) and v.type.shape is None) or _unknown(v)


def _unknown(v: Value) -> bool:
    return isinstance(v.type, OpaqueType) and not v.type.payload


def export_onnx(graph: Graph, path: str | os.PathLike[str], *, check: bool = True) -> Path:
    """Write ``graph`` as an ONNX file (weights as external data past 1.8 GB) and run the full checker."""
    path = Path(path)
    if check:
        _check_output_types(graph)
    model = to_onnx(graph)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))
    if check:
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            hint = ""
            if isinstance(e, onnx.shape_inference.InferenceError) and any(_is_control_flow(n) for n in graph.nodes):
                hint = (". With the fixed input shapes a body of a control-flow node does not type (ONNX Runtime "
                        "refuses such a file too). If it is a branch these inputs never take (an If on an input such "
                        "as a sample rate), choose input shapes that every branch accepts; where none exists, the "
                        "model cannot be exported with static shapes")
            raise ExportError(f"the exported model fails onnx.checker: {str(e).strip().splitlines()[0]}{hint}") from None
    return path
