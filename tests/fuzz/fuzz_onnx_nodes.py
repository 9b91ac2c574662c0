"""ONNX mutations that add nodes (bad indices, casts, absurd shapes, malformed constants, local functions),
break If/Loop subgraphs, or point external data where it must not go. See fuzz_onnx_ops for the conventions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from fuzz_core import IDX, Ctx, at, op
from fuzz_onnx_ops import A, _append_after_output, _first_output, graphs
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

# ---- inserted nodes: bad indices, casts, shapes ------------------------------------------------


@op("onnx", index=[1000, -1000, 1 << 40, -(1 << 40), 9], axis=[0, 1, 5, -7], source=["output", "constant_data"])
def gather_out_of_range(m: onnx.ModelProto, ctx: Ctx, index: int, axis: int, source: str) -> None:
    out = _first_output(m)
    if out is None:
        return
    m.graph.initializer.append(nh.from_array(np.array([0, index], np.int64), "fuzz_idx"))
    if source == "constant_data":
        m.graph.initializer.append(nh.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "fuzz_data"))
        m.graph.node.append(h.make_node("Gather", ["fuzz_data", "fuzz_idx"], ["fuzz_g"], axis=axis, name="fuzz_gather"))
        m.graph.node.append(h.make_node("ReduceSum", ["fuzz_g"], ["fuzz_gs"], keepdims=0, name="fuzz_sum"))
        m.graph.node.append(h.make_node("Add", [out, "fuzz_gs"], ["fuzz_out"], name="fuzz_add"))
        m.graph.output[0].name = "fuzz_out"
        return
    _append_after_output(m, h.make_node("Gather", [out, "fuzz_idx"], ["fuzz_out"], axis=axis, name="fuzz_gather"))


@op("onnx", to=[999, 0, TP.STRING, TP.BFLOAT16, TP.FLOAT4E2M1, -1, TP.COMPLEX64, TP.INT4, TP.BOOL], existing=[True, False])
def cast_to(m: onnx.ModelProto, ctx: Ctx, to: int, existing: bool) -> None:
    casts = [n for g in graphs(m) for n in g.node if n.op_type == "Cast"]
    if existing and casts:
        for n in casts:
            for a in n.attribute:
                if a.name == "to":
                    a.i = to
        return
    out = _first_output(m)
    if out is not None:
        _append_after_output(m, h.make_node("Cast", [out], ["fuzz_cast"], to=to, name="fuzz_cast"))


# (op, attributes, constant operands): shape-making nodes with absurd sizes and invalid values
_SHAPE_OPS: dict[str, tuple[str, dict[str, object], list[np.ndarray]]] = {
    "reshape_huge": ("Reshape", {}, [np.array([1 << 40, -1], np.int64)]),
    "reshape_two_minus1": ("Reshape", {}, [np.array([-1, -1], np.int64)]),
    "reshape_negative": ("Reshape", {}, [np.array([-5, 2], np.int64)]),
    "reshape_zero_allowzero": ("Reshape", {"allowzero": 1}, [np.array([0, 7], np.int64)]),
    "expand_huge": ("Expand", {}, [np.array([1 << 20, 1 << 20, 1], np.int64)]),
    "tile_huge": ("Tile", {}, [np.array([1 << 30, 1], np.int64)]),
    "tile_negative": ("Tile", {}, [np.array([-1, 2], np.int64)]),
    "transpose_bad_perm": ("Transpose", {"perm": [0, 0]}, []),
    "transpose_perm_range": ("Transpose", {"perm": [7, -9]}, []),
    "slice_huge": ("Slice", {}, [np.array([1 << 62], np.int64), np.array([-(1 << 62)], np.int64),
                                 np.array([0], np.int64), np.array([0], np.int64)]),
    "slice_zero_step": ("Slice", {}, [np.array([0], np.int64), np.array([5], np.int64), np.array([0], np.int64),
                                      np.array([0], np.int64)]),
    "pad_huge": ("Pad", {}, [np.array([0, 1 << 40, 0, 0], np.int64)]),
    "pad_negative": ("Pad", {}, [np.array([-100, -100, -100, -100], np.int64)]),
    "concat_axis": ("Concat", {"axis": 99}, []),
    "split_wrong": ("Split", {"axis": 1}, [np.array([7, 9, 1000], np.int64)]),
    "flatten_axis": ("Flatten", {"axis": 99}, []),
    "squeeze_wrong": ("Squeeze", {}, [np.array([5, 5], np.int64)]),
    "unsqueeze_many": ("Unsqueeze", {}, [np.arange(70, dtype=np.int64)]),
    "topk_huge": ("TopK", {"axis": -1}, [np.array([1 << 40], np.int64)]),
    "onehot_huge": ("OneHot", {}, [np.array(1 << 40, np.int64), np.array([0, 1], np.float32)]),
    "reduce_axes": ("ReduceSum", {}, [np.array([3, 3, 100], np.int64)]),
    "softmax_axis": ("Softmax", {"axis": -99}, []),
    "conv_big_kernel": ("Conv", {"kernel_shape": [99, 99]}, [np.zeros((1, 1, 99, 99), np.float32)]),
    "maxpool_zero": ("MaxPool", {"kernel_shape": [0, 0], "strides": [0, 0]}, []),
    "resize_huge": ("Resize", {}, [np.zeros(0, np.float32), np.array([1, 1, 1e9, 1e9], np.float32)]),
    "depth_to_space": ("DepthToSpace", {"blocksize": 0}, []),
    "matmul_wrong": ("MatMul", {}, [np.zeros((7, 7, 7), np.float32)]),
    "gemm_wrong": ("Gemm", {"transA": 1, "transB": 5}, [np.zeros((3, 9), np.float32)]),
    "einsum_bad": ("Einsum", {"equation": "ij,jk->ikz"}, [np.zeros((3, 3), np.float32)]),
}
_SOURCE_OPS: dict[str, tuple[str, dict[str, object], list[np.ndarray]]] = {
    "constant_of_shape_huge": ("ConstantOfShape", {}, [np.array([1 << 20, 1 << 20], np.int64)]),
    "constant_of_shape_negative": ("ConstantOfShape", {}, [np.array([-2, 3], np.int64)]),
    "range_huge": ("Range", {}, [np.array(0, np.int64), np.array(1 << 40, np.int64), np.array(1, np.int64)]),
    "range_zero_delta": ("Range", {}, [np.array(0, np.int64), np.array(10, np.int64), np.array(0, np.int64)]),
    "eye_like_huge": ("EyeLike", {"k": 1 << 40}, [np.zeros((3, 3), np.float32)]),
    "random_normal_huge": ("RandomNormal", {"shape": [1 << 20, 1 << 20]}, []),
}


@op("onnx", which=sorted(_SHAPE_OPS))
def shape_op(m: onnx.ModelProto, ctx: Ctx, which: str) -> None:
    """Append a node with absurd sizes or invalid values, reading the first output: inference and folding see it."""
    out = _first_output(m)
    if out is None:
        return
    op_type, attrs, consts = _SHAPE_OPS[which]
    names = [f"fuzz_{which}_{i}" for i in range(len(consts))]
    m.graph.initializer.extend(nh.from_array(c, n) for c, n in zip(consts, names))
    if op_type == "Resize":
        names = ["", *names]
    outs = ["fuzz_out", "fuzz_out2"] if op_type in ("TopK",) else ["fuzz_out"]
    _append_after_output(m, h.make_node(op_type, [out, *names], outs, name=f"fuzz_{which}", **attrs))


@op("onnx", which=sorted(_SOURCE_OPS))
def source_op(m: onnx.ModelProto, ctx: Ctx, which: str) -> None:
    """A node of constants only (foldable at load) producing a huge or invalid tensor, added to the output."""
    out = _first_output(m)
    if out is None:
        return
    op_type, attrs, consts = _SOURCE_OPS[which]
    names = [f"fuzz_{which}_{i}" for i in range(len(consts))]
    m.graph.initializer.extend(nh.from_array(c, n) for c, n in zip(consts, names))
    m.graph.node.append(h.make_node(op_type, names, ["fuzz_src"], name=f"fuzz_{which}", **attrs))
    m.graph.node.append(h.make_node("ReduceSum", ["fuzz_src"], ["fuzz_srcsum"], keepdims=0, name="fuzz_srcsum"))
    m.graph.node.append(h.make_node("Add", [out, "fuzz_srcsum"], ["fuzz_out"], name="fuzz_add"))
    m.graph.output[0].name = "fuzz_out"


@op("onnx", how=["no_attribute", "two_attributes", "value_string", "huge_dims_no_data", "sparse_bad", "value_ints_empty"])
def constant_node(m: onnx.ModelProto, ctx: Ctx, how: str) -> None:
    """A Constant node with a malformed payload, added to the first output."""
    out = _first_output(m)
    if out is None:
        return
    huge = onnx.TensorProto(data_type=TP.FLOAT, dims=[1 << 20, 1 << 20])  # no data at all
    attrs = {
        "no_attribute": lambda: [],
        "two_attributes": lambda: [h.make_attribute("value_float", 1.0), h.make_attribute("value_int", 2)],
        "value_string": lambda: [h.make_attribute("value_string", b"fuzz")],
        "huge_dims_no_data": lambda: [h.make_attribute("value", huge)],
        "sparse_bad": lambda: [h.make_attribute("sparse_value", h.make_sparse_tensor(
            nh.from_array(np.ones(3, np.float32), "v"), nh.from_array(np.array([0, 99, 2], np.int64), "i"), [4]))],
        "value_ints_empty": lambda: [h.make_attribute("value_ints", [], attr_type=A.INTS)],
    }[how]()
    n = h.make_node("Constant", [], ["fuzz_const"], name="fuzz_const")
    n.attribute.extend(attrs)
    m.graph.node.append(n)
    m.graph.node.append(h.make_node("Add", [out, "fuzz_const"], ["fuzz_out"], name="fuzz_add"))
    m.graph.output[0].name = "fuzz_out"


@op("onnx", how=["recursive", "undefined_input", "valid", "missing_opset", "wrong_outputs"])
def local_function(m: onnx.ModelProto, ctx: Ctx, how: str) -> None:
    """A model-local function used on the first output; some call themselves or are broken."""
    out = _first_output(m)
    if out is None:
        return
    body_op = {"recursive": ("FuzzFn", "fuzz.local"), "undefined_input": ("Relu", ""), "valid": ("Relu", ""),
               "missing_opset": ("Relu", ""), "wrong_outputs": ("Relu", "")}[how]
    body_in = "nowhere" if how == "undefined_input" else "a"
    outputs = ["b", "c"] if how == "wrong_outputs" else ["b"]
    fn = h.make_function("fuzz.local", "FuzzFn", ["a"], outputs,
                         [h.make_node(body_op[0], [body_in], ["b"], domain=body_op[1])],
                         [] if how == "missing_opset" else [h.make_opsetid("", 21), h.make_opsetid("fuzz.local", 1)])
    m.functions.append(fn)
    m.opset_import.append(h.make_opsetid("fuzz.local", 1))
    _append_after_output(m, h.make_node("FuzzFn", [out], ["fuzz_out"], domain="fuzz.local", name="fuzz_fn"))


@op("onnx", how=["gather_index_input", "int_div_zero_input", "int_div_zero_const", "reshape_shape_input",
                  "float_div_zero_const"])
def runtime_error(m: onnx.ModelProto, ctx: Ctx, how: str) -> None:
    """A side branch, added to the first output, that fails (or divides by zero) only when run or folded.

    The ``*_input`` kinds read a new int64 graph input, which the fidelity check fills with 0 and 1: an index
    out of range for a 1-row table, a zero divisor, a shape of the wrong size.
    """
    out = _first_output(m)
    if out is None:
        return
    g = m.graph
    if how.endswith("_input"):
        g.input.append(h.make_tensor_value_info("fuzz_in", TP.INT64, [2]))
    if how == "gather_index_input":
        g.initializer.append(nh.from_array(np.ones((1, 3), np.float32), "fuzz_table"))
        g.node.append(h.make_node("Gather", ["fuzz_table", "fuzz_in"], ["fuzz_side"], axis=0, name="fuzz_gather"))
    elif how == "int_div_zero_input":
        g.initializer.append(nh.from_array(np.array([7, 7], np.int64), "fuzz_num"))
        g.node.append(h.make_node("Div", ["fuzz_num", "fuzz_in"], ["fuzz_q"], name="fuzz_div"))
        g.node.append(h.make_node("Cast", ["fuzz_q"], ["fuzz_side"], to=TP.FLOAT, name="fuzz_cast"))
    elif how in ("int_div_zero_const", "float_div_zero_const"):
        dt = np.int64 if how.startswith("int") else np.float32
        g.initializer.append(nh.from_array(np.array([7, 7], dt), "fuzz_num"))
        g.initializer.append(nh.from_array(np.array([0, 1], dt), "fuzz_den"))
        g.node.append(h.make_node("Div", ["fuzz_num", "fuzz_den"], ["fuzz_q"], name="fuzz_div"))
        g.node.append(h.make_node("Cast", ["fuzz_q"], ["fuzz_side"], to=TP.FLOAT, name="fuzz_cast"))
    elif how == "reshape_shape_input":
        g.initializer.append(nh.from_array(np.ones(6, np.float32), "fuzz_six"))
        g.node.append(h.make_node("Reshape", ["fuzz_six", "fuzz_in"], ["fuzz_side"], name="fuzz_reshape"))
    g.node.append(h.make_node("ReduceSum", ["fuzz_side"], ["fuzz_sum"], keepdims=0, name="fuzz_sum"))
    g.node.append(h.make_node("Add", [out, "fuzz_sum"], ["fuzz_out"], name="fuzz_add"))
    g.output[0].name = "fuzz_out"


# ---- subgraphs (If / Loop) -----------------------------------------------------------------------

_SUB = ["then_extra_output", "then_no_output", "then_int_output", "else_missing", "then_rank_mismatch",
        "body_missing_input", "body_extra_input", "body_no_cond_output", "body_output_type", "outer_undefined",
        "graphs_attr", "loop_trip_huge", "loop_trip_negative", "loop_cond_string", "loop_no_inputs",
        "nested_deep", "body_cycle", "body_shadows_outer", "if_cond_float", "if_cond_shape"]


def _sub_attr(m: onnx.ModelProto, names: tuple[str, ...]) -> onnx.AttributeProto | None:
    for g in graphs(m):
        for n in g.node:
            for a in n.attribute:
                if a.name in names and a.type == A.GRAPH:
                    return a
    return None


def _node(m: onnx.ModelProto, op_type: str) -> onnx.NodeProto | None:
    return next((n for g in graphs(m) for n in g.node if n.op_type == op_type), None)


@op("onnx", how=_SUB)
def subgraph(m: onnx.ModelProto, ctx: Ctx, how: str) -> None:
    """Break an If branch or a Loop body: counts, types, outer names, nesting (a no-op without If/Loop)."""
    then = _sub_attr(m, ("then_branch",))
    body = _sub_attr(m, ("body",))
    if_node, loop = _node(m, "If"), _node(m, "Loop")
    if how == "then_extra_output" and then:
        then.g.output.append(then.g.output[0])
    elif how == "then_no_output" and then:
        del then.g.output[:]
    elif how == "then_int_output" and then:
        then.g.output[0].type.tensor_type.elem_type = TP.INT64
    elif how == "then_rank_mismatch" and then:
        then.g.output[0].CopyFrom(h.make_tensor_value_info(then.g.output[0].name, TP.FLOAT, [1, 1, 1, 1, 1]))
    elif how == "else_missing" and if_node:
        keep = [a for a in if_node.attribute if a.name != "else_branch"]
        del if_node.attribute[:]
        if_node.attribute.extend(keep)
    elif how == "body_missing_input" and body and len(body.g.input):
        del body.g.input[-1]
    elif how == "body_extra_input" and body:
        body.g.input.append(h.make_tensor_value_info("fuzz_extra", TP.FLOAT, [1]))
    elif how == "body_no_cond_output" and body and len(body.g.output):
        del body.g.output[0]
    elif how == "body_output_type" and body and len(body.g.output):
        body.g.output[-1].type.tensor_type.elem_type = TP.STRING
    elif how == "outer_undefined" and (then or body):
        g = (then or body).g  # type: ignore[union-attr]
        if len(g.node) and len(g.node[0].input):
            g.node[0].input[0] = "fuzz_outer_nowhere"
        elif len(g.node):
            g.node[0].input.append("fuzz_outer_nowhere")
    elif how == "graphs_attr" and (then or body):
        a = then or body
        gs = [a.g, a.g]  # type: ignore[union-attr]
        new = h.make_attribute(a.name, gs)  # type: ignore[union-attr]
        a.CopyFrom(new)  # type: ignore[union-attr]
    elif how in ("loop_trip_huge", "loop_trip_negative", "loop_cond_string", "loop_no_inputs") and loop:
        if how == "loop_no_inputs":
            del loop.input[:]
            return
        value = {"loop_trip_huge": np.array(1 << 62, np.int64), "loop_trip_negative": np.array(-5, np.int64),
                 "loop_cond_string": np.array("yes", dtype=object)}[how]
        name = "fuzz_trip" if how != "loop_cond_string" else "fuzz_cond"
        m.graph.initializer.append(nh.from_array(value, name))
        while len(loop.input) < 2:
            loop.input.append("")
        loop.input[0 if how != "loop_cond_string" else 1] = name
    elif how == "nested_deep" and then:
        g = then.g
        other = onnx.GraphProto()
        other.CopyFrom(g)
        for depth in range(24):  # 24 Ifs deep in the then branches (protobuf's nesting limit is 100 messages)
            inner = h.make_node("If", ["c"], [g.output[0].name if depth == 0 else f"nest_{depth - 1}"],
                                then_branch=g, else_branch=other, name=f"nest_{depth}")
            inner.output[0] = f"nest_{depth}"
            g = h.make_graph([inner], f"nest_{depth}", [], [h.make_tensor_value_info(f"nest_{depth}", TP.FLOAT, [2, 3])])
        then.g.CopyFrom(g)
    elif how == "body_cycle" and body and len(body.g.node) >= 2:
        body.g.node[0].input[0] = body.g.node[-1].output[0]
        body.g.node[-1].input.append(body.g.node[0].output[0])
    elif how == "body_shadows_outer" and body and len(body.g.node):
        body.g.node[-1].output[0] = m.graph.input[0].name if len(m.graph.input) else "x"
    elif how in ("if_cond_float", "if_cond_shape") and if_node:
        value = np.array(1.5, np.float32) if how == "if_cond_float" else np.array([True, False])
        m.graph.initializer.append(nh.from_array(value, "fuzz_cond"))
        if_node.input[0] = "fuzz_cond"


# ---- external data ------------------------------------------------------------------------------

_LOCATIONS = ["../outside.bin", "/etc/hostname", "missing.bin", "", "sub/../weights.bin", ".", "weights.bin\x00x",
              "x" * 300, "link.bin", "dirlink/weights.bin", "file:///etc/hostname", "..", "~/weights.bin"]


def _external(m: onnx.ModelProto, ctx: Ctx, init: int) -> onnx.TensorProto | None:
    """An external initializer; a model with none gets one (its bytes go to weights.bin) so every seed can play."""
    ext = [t for g in graphs(m) for t in g.initializer if t.data_location == TP.EXTERNAL]
    if ext:
        return at(ext, init)
    t = at(m.graph.initializer, init)
    if t is None or not t.raw_data:
        return None
    ctx.files["weights.bin"] = t.raw_data
    t.data_location = TP.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(len(t.raw_data)))):
        t.external_data.add(key=k, value=v)
    t.ClearField("raw_data")
    return t


def _set_ext(t: onnx.TensorProto, key: str, value: str) -> None:
    for e in t.external_data:
        if e.key == key:
            e.value = value
            return
    t.external_data.add(key=key, value=value)


@op("onnx", init=IDX, location=_LOCATIONS)
def external_location(m: onnx.ModelProto, ctx: Ctx, init: int, location: str) -> None:
    t = _external(m, ctx, init)
    if t is None:
        return
    ctx.files["link.bin"] = Path("/etc/hostname")
    ctx.files["dirlink"] = Path("/etc")
    _set_ext(t, "location", location)


@op("onnx", init=IDX, key=["offset", "length"], value=["999999", "-1", str(1 << 62), "abc", "0", "1", "", "3"])
def external_range(m: onnx.ModelProto, ctx: Ctx, init: int, key: str, value: str) -> None:
    """Offsets and lengths past the end of the file, negative, unparsable, or not matching the dims."""
    t = _external(m, ctx, init)
    if t is None:
        return
    _set_ext(t, key, value)


@op("onnx", init=IDX, how=["no_entries", "unknown_key", "duplicate_location", "in_subgraph", "on_constant_node",
                           "sparse_values", "truncated_file", "empty_file"])
def external_misc(m: onnx.ModelProto, ctx: Ctx, init: int, how: str) -> None:
    """External data in the places a loader forgets: subgraphs, Constant nodes, sparse tensors; and broken files."""
    outside = [("location", "../outside.bin"), ("offset", "0"), ("length", "4")]
    if how in ("in_subgraph", "on_constant_node", "sparse_values"):
        t = onnx.TensorProto(name="fuzz_ext", data_type=TP.FLOAT, dims=[1], data_location=TP.EXTERNAL)
        for k, v in outside:
            t.external_data.add(key=k, value=v)
        subs = graphs(m)[1:]
        if how == "in_subgraph" and subs:
            subs[0].initializer.append(t)
        elif how == "on_constant_node" and m.graph.output:
            out = _first_output(m)
            m.graph.node.append(h.make_node("Constant", [], ["fuzz_c"], value=t, name="fuzz_c"))
            m.graph.node.append(h.make_node("Add", [out, "fuzz_c"], ["fuzz_out"], name="fuzz_add"))
            m.graph.output[0].name = "fuzz_out"
        elif how == "sparse_values":
            t.name = "fuzz_sparse"
            m.graph.sparse_initializer.append(h.make_sparse_tensor(t, nh.from_array(np.array([0], np.int64), ""), [4]))
        return
    t = _external(m, ctx, init)
    if t is None:
        return
    if how == "no_entries":
        del t.external_data[:]
    elif how == "unknown_key":
        t.external_data.add(key="fuzz", value="1")
    elif how == "duplicate_location":
        t.external_data.add(key="location", value="../outside.bin")
    elif how == "truncated_file":
        ctx.files["weights.bin"] = b"\0" * 3
    elif how == "empty_file":
        ctx.files["weights.bin"] = b""

