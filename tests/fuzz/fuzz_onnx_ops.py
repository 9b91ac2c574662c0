"""Structural mutations of ONNX models, written with the onnx API: names, edges, opsets, attributes, weights, types.

Each op takes the ModelProto, a :class:`fuzz_core.Ctx` and integer or choice
parameters; integer parameters index modulo what exists, so every op applies
to every model (as a no-op when there is nothing to index). ``graph`` picks
among the main graph and every subgraph, so the generic ops also break the
bodies of If and Loop.
"""

from __future__ import annotations

import numpy as np
import onnx
from fuzz_core import BAD_UTF8_PLACEHOLDER, IDX, Ctx, at, op
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

A = onnx.AttributeProto
GRAPH = ("int", 0, 7)  # small: index 0 (the main graph) is the common case


def graphs(m: onnx.ModelProto) -> list[onnx.GraphProto]:
    """The main graph, then every subgraph, depth first."""
    out: list[onnx.GraphProto] = []

    def walk(g: onnx.GraphProto) -> None:
        out.append(g)
        for n in g.node:
            for a in n.attribute:
                if a.type == A.GRAPH:
                    walk(a.g)
                elif a.type == A.GRAPHS:
                    for s in a.graphs:
                        walk(s)

    walk(m.graph)
    return out


def _g(m: onnx.ModelProto, graph: int) -> onnx.GraphProto:
    gs = graphs(m)
    return gs[graph % len(gs)]


def _first_output(m: onnx.ModelProto) -> str | None:
    return m.graph.output[0].name if m.graph.output else None


def _append_after_output(m: onnx.ModelProto, node: onnx.NodeProto, out_type: int = TP.FLOAT) -> None:
    """Make ``node`` (which reads the first graph output) the producer of a new first graph output."""
    m.graph.node.append(node)
    m.graph.output[0].CopyFrom(onnx.ValueInfoProto(name=node.output[0]))
    m.graph.output[0].type.tensor_type.elem_type = out_type


# ---- names and edges ---------------------------------------------------------------


@op("onnx", graph=GRAPH, node=IDX, slot=IDX)
def undefined_input(m: onnx.ModelProto, ctx: Ctx, graph: int, node: int, slot: int) -> None:
    n = at(_g(m, graph).node, node)
    if n is None:
        return
    if len(n.input):
        n.input[slot % len(n.input)] = "fuzz_undefined"
    else:
        n.input.append("fuzz_undefined")


@op("onnx", graph=GRAPH, node=IDX, back=("int", 0, 5))
def cycle(m: onnx.ModelProto, ctx: Ctx, graph: int, node: int, back: int) -> None:
    """Node i reads an output of node i + back (itself when back = 0): a cycle through later nodes."""
    nodes = _g(m, graph).node
    if not len(nodes):
        return
    i = node % len(nodes)
    j = min(i + back, len(nodes) - 1)
    src = next((o for o in nodes[j].output if o), None)
    if src is None:
        return
    if len(nodes[i].input):
        nodes[i].input[0] = src
    else:
        nodes[i].input.append(src)


@op("onnx", graph=GRAPH, node=IDX, other=IDX)
def duplicate_output(m: onnx.ModelProto, ctx: Ctx, graph: int, node: int, other: int) -> None:
    """Two nodes write the same name (SSA broken)."""
    nodes = _g(m, graph).node
    a, b = at(nodes, node), at(nodes, other)
    if a is not None and b is not None and len(a.output) and len(b.output):
        b.output[0] = a.output[0]


@op("onnx", what=["initializer", "input", "input_as_initializer", "node_name", "output"], index=IDX)
def duplicate_name(m: onnx.ModelProto, ctx: Ctx, what: str, index: int) -> None:
    g = m.graph
    if what == "initializer" and len(g.initializer):
        t = onnx.TensorProto()
        t.CopyFrom(at(g.initializer, index))
        t.dims.append(1)  # same name, different shape
        g.initializer.append(t)
    elif what == "input" and len(g.input):
        g.input.append(at(g.input, index))
    elif what == "input_as_initializer" and len(g.input):
        vi = at(g.input, index)
        g.initializer.append(nh.from_array(np.zeros((2, 2), np.int64), vi.name))  # shadows with a wrong shape
    elif what == "node_name" and len(g.node) > 1:
        for n in g.node:
            n.name = "same"
    elif what == "output" and len(g.output):
        g.output.append(at(g.output, index))


@op("onnx", what=["nodes", "nodes_and_outputs", "outputs", "inputs", "initializers", "everything"])
def empty_graph(m: onnx.ModelProto, ctx: Ctx, what: str) -> None:
    g = m.graph
    if what in ("nodes", "nodes_and_outputs", "everything"):
        del g.node[:]
    if what in ("outputs", "nodes_and_outputs", "everything"):
        del g.output[:]
    if what in ("inputs", "everything"):
        del g.input[:]
    if what in ("initializers", "everything"):
        del g.initializer[:]


@op("onnx", what=["input", "initializer", "same_twice", "undefined", "empty_name"], index=IDX)
def extra_output(m: onnx.ModelProto, ctx: Ctx, what: str, index: int) -> None:
    g = m.graph
    name = {"input": at([i.name for i in g.input], index), "initializer": at([t.name for t in g.initializer], index),
            "same_twice": _first_output(m), "undefined": "fuzz_nowhere", "empty_name": ""}[what]
    if name is not None:
        g.output.append(h.make_tensor_value_info(name, TP.FLOAT, None))


@op("onnx", length=[2000, 20000])
def deep_chain(m: onnx.ModelProto, ctx: Ctx, length: int) -> None:
    """A long chain of Identity nodes after the output: recursion and quadratic passes show up here."""
    prev = _first_output(m)
    if prev is None:
        return
    for i in range(length):
        m.graph.node.append(h.make_node("Identity", [prev], [f"chain_{i}"], name=f"chain_{i}"))
        prev = f"chain_{i}"
    m.graph.output[0].name = prev


# ---- ops, domains, opsets -------------------------------------------------------------


@op("onnx", graph=GRAPH, node=IDX, op_type=["FuzzOp", "", "Conv", "Loop", "If", "Scan", "relu", "Identity",
                                             "Constant", "Split", "NonMaxSuppression", "Col2Im"])
def rename_op(m: onnx.ModelProto, ctx: Ctx, graph: int, node: int, op_type: str) -> None:
    n = at(_g(m, graph).node, node)
    if n is not None:
        n.op_type = op_type


@op("onnx", graph=GRAPH, node=IDX, domain=["fuzz.domain", "ai.onnx.ml", "com.microsoft", "ai.onnx", "ai.onnx.preview"])
def node_domain(m: onnx.ModelProto, ctx: Ctx, graph: int, node: int, domain: str) -> None:
    n = at(_g(m, graph).node, node)
    if n is not None:
        n.domain = domain


@op("onnx", version=[0, 1, 6, 7, 12, 22, 26, 99, 10000, -1, 1 << 62], how=["set", "remove", "duplicate", "ai.onnx"])
def opset(m: onnx.ModelProto, ctx: Ctx, version: int, how: str) -> None:
    imports = [i for i in m.opset_import if i.domain in ("", "ai.onnx")]
    if how == "remove":
        keep = [i for i in m.opset_import if i.domain not in ("", "ai.onnx")]
        del m.opset_import[:]
        m.opset_import.extend(keep)
    elif how == "duplicate":
        m.opset_import.append(h.make_opsetid("", version))
    elif how == "ai.onnx":
        for i in imports:
            i.domain, i.version = "ai.onnx", version
    else:
        for i in imports:
            i.version = version


@op("onnx", domain=["fuzz.domain", "com.microsoft", "ai.onnx.ml", ""], version=[0, 1, 99, -5])
def extra_opset(m: onnx.ModelProto, ctx: Ctx, domain: str, version: int) -> None:
    m.opset_import.append(h.make_opsetid(domain, version))


@op("onnx", version=[0, 1, 3, 4, 7, 11, 12, 99, -1])
def ir_version(m: onnx.ModelProto, ctx: Ctx, version: int) -> None:
    m.ir_version = version


# ---- attributes ----------------------------------------------------------------------------

_ATTR_NAMES = ["axis", "perm", "kernel_shape", "to", "group", "pads", "strides", "dilations", "keepdims", "alpha",
               "then_branch", "body", "value", "mode", "epsilon", "transB", "allowzero"]
_BAD_VALUES = ["string", "huge_int", "neg_int", "zero", "empty_ints", "long_ints", "neg_ints", "huge_ints", "float",
               "nan", "graph", "tensor", "ints_for_int", "declared_type_mismatch", "undefined_type", "ref_attr"]


def _bad_attr(name: str, kind: str) -> A:
    if kind == "declared_type_mismatch":
        a = h.make_attribute(name, [1, 2])
        a.type = A.FLOAT
        return a
    if kind == "undefined_type":
        a = h.make_attribute(name, 1)
        a.type = A.UNDEFINED
        return a
    if kind == "ref_attr":
        a = A(name=name, ref_attr_name="outer", type=A.INT)
        return a
    value = {
        "string": b"fuzz", "huge_int": 1 << 62, "neg_int": -7, "zero": 0, "long_ints": [1] * 17,
        "neg_ints": [-3, -3, -3, -3], "huge_ints": [1 << 40, 1 << 40], "float": 2.5, "nan": float("nan"),
        "graph": h.make_graph([], "empty", [], []), "tensor": nh.from_array(np.zeros((2, 2), np.float32)),
        "ints_for_int": [1, 2],
    }.get(kind)
    if kind == "empty_ints":
        return h.make_attribute(name, [], attr_type=A.INTS)
    return h.make_attribute(name, value)


@op("onnx", graph=GRAPH, node=IDX, attr=IDX, kind=_BAD_VALUES)
def bad_attribute(m: onnx.ModelProto, ctx: Ctx, graph: int, node: int, attr: int, kind: str) -> None:
    """Replace an attribute (or add a commonly named one) with a value of the wrong type or range."""
    n = at(_g(m, graph).node, node)
    if n is None:
        return
    if len(n.attribute):
        i = attr % len(n.attribute)
        name = n.attribute[i].name
        del n.attribute[i]
    else:
        name = _ATTR_NAMES[attr % len(_ATTR_NAMES)]
    n.attribute.append(_bad_attr(name, kind))


@op("onnx", graph=GRAPH, node=IDX, attr=IDX)
def drop_attribute(m: onnx.ModelProto, ctx: Ctx, graph: int, node: int, attr: int) -> None:
    n = at(_g(m, graph).node, node)
    if n is not None and len(n.attribute):
        del n.attribute[attr % len(n.attribute)]


@op("onnx", graph=GRAPH, node=IDX, name=["fuzz_attr", "axis", "then_branch", ""])
def unknown_attribute(m: onnx.ModelProto, ctx: Ctx, graph: int, node: int, name: str) -> None:
    n = at(_g(m, graph).node, node)
    if n is not None:
        n.attribute.append(h.make_attribute(name, 1) if name else A(name="", type=A.INT, i=1))


@op("onnx", graph=GRAPH, node=IDX, how=["drop_inputs", "extra_inputs", "drop_outputs", "extra_outputs",
                                        "empty_input", "empty_output"])
def arity(m: onnx.ModelProto, ctx: Ctx, graph: int, node: int, how: str) -> None:
    n = at(_g(m, graph).node, node)
    if n is None:
        return
    if how == "drop_inputs":
        del n.input[:]
    elif how == "extra_inputs":
        n.input.extend([n.input[0] if len(n.input) else "fuzz_undefined"] * 5)
    elif how == "drop_outputs":
        del n.output[:]
    elif how == "extra_outputs":
        n.output.extend([f"fuzz_extra_{i}" for i in range(4)])
    elif how == "empty_input" and len(n.input):
        n.input[0] = ""
    elif how == "empty_output" and len(n.output):
        n.output[0] = ""


# ---- weights and types -----------------------------------------------------------------------


@op("onnx", init=IDX, how=["reverse", "drop_dim", "add_dim", "double", "zero", "huge", "negative", "scalar",
                           "huge_no_data", "many_dims"])
def weight_dims(m: onnx.ModelProto, ctx: Ctx, init: int, how: str) -> None:
    t = at(m.graph.initializer, init)
    if t is None:
        return
    dims = list(t.dims)
    new = {"reverse": dims[::-1], "drop_dim": dims[1:], "add_dim": [*dims, 1], "double": [2 * (dims[0] if dims else 1),
           *dims[1:]], "zero": [0, *dims[1:]], "huge": [1 << 40, *dims[1:]], "negative": [-3, *dims[1:]],
           "scalar": [], "huge_no_data": [1 << 20, 1 << 20], "many_dims": [1] * 40}[how]
    del t.dims[:]
    t.dims.extend(new)
    if how == "huge_no_data":
        t.ClearField("raw_data")
        del t.float_data[:]


@op("onnx", init=IDX, elem=[TP.INT64, TP.STRING, TP.UNDEFINED, 999, TP.BOOL, TP.FLOAT16, TP.COMPLEX128, TP.INT4,
                            TP.FLOAT8E4M3FN, -1])
def weight_dtype(m: onnx.ModelProto, ctx: Ctx, init: int, elem: int) -> None:
    t = at(m.graph.initializer, init)
    if t is not None:
        t.data_type = elem


@op("onnx", init=IDX, how=["truncate_raw", "empty_raw", "double_raw", "float_data_short", "both_fields", "nan",
                           "inf", "int_data_for_float", "string_data"])
def weight_data(m: onnx.ModelProto, ctx: Ctx, init: int, how: str) -> None:
    t = at(m.graph.initializer, init)
    if t is None:
        return
    raw = t.raw_data
    if how == "truncate_raw":
        t.raw_data = raw[: max(len(raw) - 1, 0)]
    elif how == "empty_raw":
        t.raw_data = b""
    elif how == "double_raw":
        t.raw_data = raw + raw
    elif how == "float_data_short":
        t.ClearField("raw_data")
        t.float_data.extend([1.0])
    elif how == "both_fields":
        t.float_data.extend([1.0, 2.0])
    elif how in ("nan", "inf") and t.data_type == TP.FLOAT and raw:
        t.raw_data = np.full(len(raw) // 4, np.nan if how == "nan" else np.inf, np.float32).tobytes()
    elif how == "int_data_for_float":
        t.ClearField("raw_data")
        t.int32_data.extend([1, 2, 3])
    elif how == "string_data":
        t.string_data.extend([b"a", b"b"])


@op("onnx", init=IDX)
def string_weight(m: onnx.ModelProto, ctx: Ctx, init: int) -> None:
    """A STRING tensor where a numeric weight was: strings into numeric ops."""
    t = at(m.graph.initializer, init)
    if t is None:
        return
    n = int(np.prod(t.dims)) if len(t.dims) and all(d > 0 for d in t.dims) else 1
    s = h.make_tensor(t.name, TP.STRING, list(t.dims) if n < 100000 else [1], [b"fuzz"] * min(n, 100000))
    t.CopyFrom(s)


@op("onnx", index=IDX, dim=IDX, value=[1 << 40, -1, 0, (1 << 63) - 1, "N", "", "none", "rank0", "unknown_rank"])
def input_dim(m: onnx.ModelProto, ctx: Ctx, index: int, dim: int, value: object) -> None:
    vi = at(m.graph.input, index)
    if vi is None:
        return
    shape = vi.type.tensor_type.shape
    if value == "rank0":
        del shape.dim[:]
        return
    if value == "unknown_rank":
        vi.type.tensor_type.ClearField("shape")
        return
    d = at(shape.dim, dim)
    if d is None:
        return
    if value == "none":
        d.Clear()
    elif isinstance(value, str):
        d.dim_param = value
    else:
        d.dim_value = int(value)  # type: ignore[call-overload]


@op("onnx", where=["input", "output"], index=IDX, elem=[TP.UNDEFINED, TP.STRING, 999, TP.INT64, TP.BOOL, TP.FLOAT16,
                                                       "sequence", "map", "optional", "sparse", "empty"])
def io_type(m: onnx.ModelProto, ctx: Ctx, where: str, index: int, elem: object) -> None:
    vi = at(m.graph.input if where == "input" else m.graph.output, index)
    if vi is None:
        return
    if elem == "sequence":
        vi.type.CopyFrom(h.make_sequence_type_proto(h.make_tensor_type_proto(TP.FLOAT, [2])))
    elif elem == "map":
        vi.type.CopyFrom(h.make_map_type_proto(TP.STRING, h.make_tensor_type_proto(TP.FLOAT, [1])))
    elif elem == "optional":
        vi.type.CopyFrom(h.make_optional_type_proto(h.make_tensor_type_proto(TP.FLOAT, [1])))
    elif elem == "sparse":
        vi.type.CopyFrom(h.make_sparse_tensor_type_proto(TP.FLOAT, [4, 4]))
    elif elem == "empty":
        vi.ClearField("type")
    else:
        vi.type.tensor_type.elem_type = int(elem)  # type: ignore[call-overload]


@op("onnx", graph=GRAPH, node=IDX, how=["wrong_dtype", "wrong_rank", "huge_dim", "negative_dim"])
def value_info_conflict(m: onnx.ModelProto, ctx: Ctx, graph: int, node: int, how: str) -> None:
    """A value_info entry that contradicts what the producing node makes."""
    n = at(_g(m, graph).node, node)
    if n is None or not len(n.output) or not n.output[0]:
        return
    shape = {"wrong_dtype": [1], "wrong_rank": [1, 2, 3, 4, 5, 6], "huge_dim": [1 << 40], "negative_dim": [-4]}[how]
    elem = TP.INT8 if how == "wrong_dtype" else TP.FLOAT
    _g(m, graph).value_info.append(h.make_tensor_value_info(n.output[0], elem, shape))


@op("onnx", init=IDX, how=["valid", "index_out_of_range", "negative_index", "count_mismatch", "coords_wrong_rank",
                           "dims_mismatch", "values_2d"])
def sparse_initializer(m: onnx.ModelProto, ctx: Ctx, init: int, how: str) -> None:
    """Move an initializer to sparse_initializer (linear indices of its non-zeros), optionally broken."""
    g = m.graph
    t = at(g.initializer, init)
    if t is None or t.data_location == TP.EXTERNAL:
        return
    try:
        arr = nh.to_array(t)
    except Exception:
        return
    if arr.dtype == object:
        return
    flat = arr.reshape(-1)
    idx = np.flatnonzero(flat).astype(np.int64)
    values = flat[idx]
    dims = list(arr.shape)
    if how == "index_out_of_range" and idx.size:
        idx[-1] = flat.size + 100
    elif how == "negative_index" and idx.size:
        idx[0] = -5
    elif how == "count_mismatch":
        idx = np.concatenate([idx, [0]]).astype(np.int64)
    elif how == "coords_wrong_rank":
        idx = np.stack([idx, idx, idx], axis=1)
    elif how == "dims_mismatch":
        dims = [1]
    vals = nh.from_array(values.reshape(-1, 1) if how == "values_2d" else values, t.name)
    sp = h.make_sparse_tensor(vals, nh.from_array(idx, ""), dims)
    g.initializer.remove(t)
    g.sparse_initializer.append(sp)



@op("onnx", where=["node_name", "op_type", "node_input", "node_output", "initializer", "graph_input", "graph_name",
                   "doc_string", "attribute_name", "string_attribute", "metadata", "producer", "domain"], index=IDX)
def invalid_utf8(m: onnx.ModelProto, ctx: Ctx, where: str, index: int) -> None:
    """A string field holding bytes that are not UTF-8 (python's protobuf then hands out bytes, or raises)."""
    bad = BAD_UTF8_PLACEHOLDER.decode()
    g = m.graph
    n = at(g.node, index)
    if where == "node_name" and n is not None:
        n.name = bad
    elif where == "op_type" and n is not None:
        n.op_type = bad
    elif where == "node_input" and n is not None and len(n.input):
        n.input[0] = bad
    elif where == "node_output" and n is not None and len(n.output):
        n.output[0] = bad
    elif where == "initializer" and len(g.initializer):
        at(g.initializer, index).name = bad
    elif where == "graph_input" and len(g.input):
        at(g.input, index).name = bad
    elif where == "graph_name":
        g.name = bad
    elif where == "doc_string" and n is not None:
        n.doc_string = bad
    elif where == "attribute_name" and n is not None and len(n.attribute):
        at(n.attribute, index).name = bad
    elif where == "string_attribute" and n is not None:
        n.attribute.append(h.make_attribute("fuzz_s", BAD_UTF8_PLACEHOLDER))
    elif where == "metadata":
        m.metadata_props.add(key=bad, value=bad)
        if n is not None:
            n.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=bad)
    elif where == "producer":
        m.producer_name = bad
    elif where == "domain" and n is not None:
        n.domain = bad
