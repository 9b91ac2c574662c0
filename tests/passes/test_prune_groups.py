"""Channel groups for pruning on golden IR: which channels go together, how wide a unit is, and why a barrier is one.

Every prunable group found here is also checked for zero-invariance: zeroing the removed channels in the
original graph and removing them give the same outputs under ONNX Runtime (rtol 1e-5, atol 1e-5 times the
largest output magnitude: float32 sums of a few hundred terms cancel to that).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import nasc
from nasc.backends.fidelity import random_inputs, run_graph
from nasc.ir import parse, verify
from nasc.passes.prune_apply import apply_plan, zero_plan
from nasc.passes.prune_groups import Analysis, Group, Space, channel_groups

RTOL, ATOL = 1e-5, 1e-5


def build(text: str, seed: int = 0) -> nasc.Graph:
    """Parse IR text, giving every named f32 constant (``const %w : f32[..] = "w"``) seeded normal values."""
    rng = np.random.default_rng(seed)
    consts = {name: rng.standard_normal([int(d) for d in shape.split(",")] if shape else []).astype(np.float32)
              for name, shape in re.findall(r'const %(\w+) : f32\[([\d,]*)\] = "', text)}
    return parse(text, consts)


def members(g: Group) -> set[tuple[str, str, int, int, int]]:
    """(node, port, slot, axis, channels per unit) of every member."""
    return {(m.node.name, m.port, m.slot, m.axis, m.per_unit) for m in g.members}


def weights(g: Group) -> dict[str, tuple[int, int]]:
    """The group's constant operands: name -> (axis, slots per unit)."""
    return {sp.value.name: (sp.axis, k) for sp, k in g.weights}


def by_weight(a: Analysis, name: str, axis: int) -> Group:
    """The group that owns axis ``axis`` of constant ``name`` (exactly one must)."""
    found = [g for g in a.groups if weights(g).get(name, (None,))[0] == axis]
    assert len(found) == 1, f"{len(found)} groups hold %{name}[axis {axis}]: {[g.id for g in found]}"
    return found[0]


def pruned(graph: nasc.Graph, a: Analysis, removed: dict[str, list[int]]) -> nasc.Graph:
    out = graph.clone()
    apply_plan(out, a.removal(a.group(gid).units[i] for gid, idx in removed.items() for i in idx))
    return out


def assert_zero_invariant(graph: nasc.Graph, a: Analysis, removed: dict[str, list[int]], changes: bool = True
                          ) -> nasc.Graph:
    """Zeroing the removed units' weights equals removing them (rtol/atol above); returns the pruned graph.
    ``changes``: also check that zeroing changed the outputs (not so for channels nothing reads)."""
    plan = a.removal(a.group(gid).units[i] for gid, idx in removed.items() for i in idx)
    zeroed, cut = graph.clone(), graph.clone()
    zero_plan(zeroed, plan)
    apply_plan(cut, plan)
    verify(cut)
    feeds = random_inputs(graph, seed=1, batches=2)
    for z, p in zip(run_graph(zeroed, feeds), run_graph(cut, feeds), strict=True):
        for zo, po in zip(z, p, strict=True):
            np.testing.assert_allclose(po, zo, rtol=RTOL, atol=ATOL * max(1.0, float(np.max(np.abs(zo)))))
    if not changes:
        return cut
    # the zeroed graph is not the original: the check compares something that changed
    ref = run_graph(graph, feeds)
    assert any(not np.allclose(r, zo) for r, zo in zip(ref[0], run_graph(zeroed, feeds)[0], strict=True))
    return cut


def local(unit: np.ndarray, sp: Space) -> list[int]:
    """The indices a unit (global slot ids) has on one space."""
    return sorted(int(s) - sp.offset for s in unit if sp.offset <= s < sp.offset + sp.size)


def shape(g: nasc.Graph, name: str) -> tuple[int, ...]:
    return tuple(next(v for v in g.values() if v.name == name).shape)


def node(g: nasc.Graph, name: str):
    return next(n for n in g.nodes if n.name == name)


# ---- residual add ------------------------------------------------------------------------------

RESIDUAL = '''graph "g" opsets {"": 21}
input %x : f32[1,3,8,8]
const %w1 : f32[8,3,3,3] = "w1"
const %b1 : f32[8] = "b1"
const %w2 : f32[8,3,1,1] = "w2"
const %w3 : f32[4,8,1,1] = "w3"
%a : f32[1,8,8,8] = Conv(%x, %w1, %b1) {pads=[1, 1, 1, 1]} @"res.a" #"conv_a"
%b : f32[1,8,8,8] = Conv(%x, %w2) @"res.b" #"conv_b"
%s : f32[1,8,8,8] = Add(%a, %b) @"res" #"add"
%r : f32[1,8,8,8] = Relu(%s) @"res" #"relu"
%y : f32[1,4,8,8] = Conv(%r, %w3) @"head" #"conv_out"
output %y
'''


def test_residual_add_couples_both_convs_and_the_consumer():
    g = build(RESIDUAL)
    a = channel_groups(g)
    grp = by_weight(a, "w1", 0)
    assert grp.prunable and grp.size == 8 and grp.width == 1 and grp.inexact == ""
    assert weights(grp) == {"w1": (0, 1), "b1": (0, 1), "w2": (0, 1), "w3": (1, 1)}
    assert {("conv_a", "out", 0, 1, 1), ("conv_b", "out", 0, 1, 1), ("add", "in", 0, 1, 1), ("add", "in", 1, 1, 1),
            ("relu", "out", 0, 1, 1), ("conv_out", "in", 0, 1, 1)} <= members(grp)
    assert grp.scope == "" and grp.name() == "conv_a"
    # the input's channels and the output's are barriers, with the reason
    assert by_weight(a, "w1", 1).barrier == ["graph input 'x'"]
    assert by_weight(a, "w3", 0).barrier == ["graph output 'y'"]
    assert [x.id for x in a.prunable] == [grp.id]
    cut = assert_zero_invariant(g, a, {grp.id: [0, 3, 5]})
    assert shape(cut, "w1")[0] == shape(cut, "w2")[0] == shape(cut, "w3")[1] == 5
    assert shape(cut, "s") == (1, 5, 8, 8)


def test_residual_add_with_a_broadcast_per_channel_operand():
    text = RESIDUAL.replace('const %w3', 'const %sc : f32[8,1,1] = "sc"\nconst %w3').replace(
        '%r : f32[1,8,8,8] = Relu(%s)', '%m : f32[1,8,8,8] = Mul(%s, %sc) #"scale"\n%r : f32[1,8,8,8] = Relu(%m)')
    g = build(text)
    a = channel_groups(g)
    grp = by_weight(a, "w1", 0)
    assert weights(grp)["sc"] == (0, 1) and grp.prunable
    cut = assert_zero_invariant(g, a, {grp.id: [1, 2]})
    assert shape(cut, "sc") == (6, 1, 1)


# ---- concat, split, slice: offsets -------------------------------------------------------------

CONCAT = '''graph "g" opsets {"": 21}
input %x : f32[1,3,8,8]
const %wa : f32[4,3,1,1] = "wa"
const %wb : f32[6,3,1,1] = "wb"
const %wc : f32[5,10,1,1] = "wc"
%a : f32[1,4,8,8] = Conv(%x, %wa) #"conv_a"
%b : f32[1,6,8,8] = Conv(%x, %wb) #"conv_b"
%c : f32[1,10,8,8] = Concat(%a, %b) {axis=1} #"cat"
%y : f32[1,5,8,8] = Conv(%c, %wc) #"conv_c"
output %y
'''


def test_concat_splits_the_consumers_columns_across_the_producers_groups():
    g = build(CONCAT)
    a = channel_groups(g)
    ga, gb = by_weight(a, "wa", 0), by_weight(a, "wb", 0)
    assert ga is not gb and (ga.size, gb.size) == (4, 6) and ga.prunable and gb.prunable
    assert ("cat", "in", 0, 1, 1) in members(ga) and ("cat", "in", 1, 1, 1) in members(gb)
    assert ("cat", "in", 1, 1, 1) not in members(ga)
    # unit i of conv_b is column 4 + i of conv_c: the offset is the first operand's width
    wc = next(sp for sp in a.spaces if sp.value.name == "wc" and sp.axis == 1)
    assert [local(u, wc) for u in gb.units] == [[i] for i in range(4, 10)]
    assert [local(u, wc) for u in ga.units] == [[i] for i in range(4)]
    cut = assert_zero_invariant(g, a, {ga.id: [1], gb.id: [0, 5]})
    assert shape(cut, "c") == (1, 7, 8, 8) and shape(cut, "wc") == (5, 7, 1, 1)
    ref = g.clone()
    np.testing.assert_array_equal(next(v for v in cut.values() if v.name == "wc").data,
                                  next(v for v in ref.values() if v.name == "wc").data[:, [0, 2, 3, 5, 6, 7, 8]])


SPLIT = '''graph "g" opsets {"": 21}
input %x : f32[1,3,8,8]
const %wa : f32[8,3,1,1] = "wa"
const %sp : i64[2] = dense[3, 5]
const %wb : f32[4,3,1,1] = "wb"
const %wc : f32[4,5,1,1] = "wc"
const %st : i64[1] = dense[1]
const %en : i64[1] = dense[7]
const %ax : i64[1] = dense[1]
const %wd : f32[4,6,1,1] = "wd"
%a : f32[1,8,8,8] = Conv(%x, %wa) #"conv_a"
%p : f32[1,3,8,8], %q : f32[1,5,8,8] = Split(%a, %sp) {axis=1} #"split"
%b : f32[1,4,8,8] = Conv(%p, %wb) #"conv_b"
%c : f32[1,4,8,8] = Conv(%q, %wc) #"conv_c"
%s : f32[1,6,8,8] = Slice(%a, %st, %en, %ax) #"slice"
%d : f32[1,4,8,8] = Conv(%s, %wd) #"conv_d"
%e : f32[1,4,8,8] = Add(%b, %c) #"add"
%y : f32[1,4,8,8] = Add(%e, %d) #"add2"
output %y
'''


def test_split_and_slice_cut_one_conv_into_groups_by_offset():
    """conv_a's 8 channels: 0 (split part 0, not sliced), 1-2 (part 0, sliced), 3-6 (part 1, sliced), 7."""
    g = build(SPLIT)
    a = channel_groups(g)
    owners = [x for x in a.groups if "wa" in weights(x) and weights(x)["wa"][0] == 0]
    wa = next(sp for sp in a.spaces if sp.value.name == "wa" and sp.axis == 0)
    split_of = {tuple(i for u in x.units for i in local(u, wa)): x for x in owners}
    assert sorted(split_of) == [(0,), (1, 2), (3, 4, 5, 6), (7,)]
    assert all(x.prunable and x.width == 1 for x in owners)
    assert {("conv_d", "in", 1, 1, 1), ("split", "out", 0, 1, 1)} <= members(split_of[(1, 2)])
    assert ("conv_d", "in", 1, 1, 1) not in members(split_of[(0,)])  # the slice does not read channel 0
    assert ("split", "out", 1, 1, 1) in members(split_of[(3, 4, 5, 6)])
    removed = {split_of[(0,)].id: [0], split_of[(1, 2)].id: [1], split_of[(3, 4, 5, 6)].id: [0, 3]}
    cut = assert_zero_invariant(g, a, removed)
    assert shape(cut, "p") == (1, 1, 8, 8) and shape(cut, "q") == (1, 3, 8, 8) and shape(cut, "s") == (1, 3, 8, 8)
    sp = node(cut, "split").input(1).data.tolist()
    st, en = node(cut, "slice").input(1).data.tolist(), node(cut, "slice").input(2).data.tolist()
    assert sp == [1, 3] and (st, en) == ([0], [3])


def test_split_by_num_outputs_gets_a_split_operand_when_parts_become_unequal():
    text = SPLIT.replace("const %sp : i64[2] = dense[3, 5]\n", "").replace(
        "Split(%a, %sp) {axis=1}", "Split(%a) {axis=1, num_outputs=2}").replace(
        "%p : f32[1,3,8,8], %q : f32[1,5,8,8]", "%p : f32[1,4,8,8], %q : f32[1,4,8,8]").replace(
        "f32[4,3,1,1]", "f32[4,4,1,1]").replace("const %wc : f32[4,5,1,1]", "const %wc : f32[4,4,1,1]")
    g = build(text)
    a = channel_groups(g)
    part0 = next(x for x in a.prunable if ("split", "out", 0, 1, 1) in members(x) and x.size == 3)
    cut = assert_zero_invariant(g, a, {part0.id: [0]})
    assert shape(cut, "p") == (1, 3, 8, 8) and shape(cut, "q") == (1, 4, 8, 8)
    assert node(cut, "split").input(1).data.tolist() == [3, 4] and "num_outputs" not in node(cut, "split").attrs


# ---- depthwise and grouped convs ---------------------------------------------------------------

DEPTHWISE = '''graph "g" opsets {"": 21}
input %x : f32[1,3,8,8]
const %w1 : f32[8,3,1,1] = "w1"
const %wd : f32[8,1,3,3] = "wd"
const %bd : f32[8] = "bd"
const %w3 : f32[4,8,1,1] = "w3"
%a : f32[1,8,8,8] = Conv(%x, %w1) #"conv1"
%d : f32[1,8,8,8] = Conv(%a, %wd, %bd) {group=8, pads=[1, 1, 1, 1]} #"dw"
%y : f32[1,4,8,8] = Conv(%d, %w3) #"conv3"
output %y
'''


def test_depthwise_conv_couples_its_input_and_output_and_shrinks_its_group():
    g = build(DEPTHWISE)
    a = channel_groups(g)
    grp = by_weight(a, "wd", 0)
    assert grp is by_weight(a, "w1", 0) is by_weight(a, "w3", 1)
    assert grp.prunable and grp.size == 8 and weights(grp) == {"w1": (0, 1), "wd": (0, 1), "bd": (0, 1), "w3": (1, 1)}
    assert {("dw", "in", 0, 1, 1), ("dw", "out", 0, 1, 1)} <= members(grp)
    cut = assert_zero_invariant(g, a, {grp.id: [0, 2, 4]})
    assert node(cut, "dw").attrs["group"] == 5 and shape(cut, "wd") == (5, 1, 3, 3)


def test_depthwise_conv_with_a_channel_multiplier_moves_whole_input_channels():
    text = DEPTHWISE.replace("f32[8,1,3,3]", "f32[16,1,3,3]").replace("const %bd : f32[8]", "const %bd : f32[16]")
    text = text.replace("f32[4,8,1,1]", "f32[4,16,1,1]").replace("%d : f32[1,8,8,8]", "%d : f32[1,16,8,8]")
    g = build(text)
    a = channel_groups(g)
    inner, outer = by_weight(a, "w1", 0), by_weight(a, "w3", 1)
    # input channel c feeds outputs 2c and 2c+1: one unit of the conv before, two outputs each
    assert inner is outer and inner.size == 8 and weights(inner)["wd"] == (0, 2) and weights(inner)["w3"] == (1, 2)
    cut = assert_zero_invariant(g, a, {inner.id: [1, 6]})
    # group stays the number of input channels; the multiplier is unchanged
    assert node(cut, "dw").attrs["group"] == 6 and shape(cut, "wd") == (12, 1, 3, 3)


GROUPED = '''graph "g" opsets {"": 21}
input %x : f32[1,3,8,8]
const %w1 : f32[8,3,1,1] = "w1"
const %wg : f32[8,4,3,3] = "wg"
const %w3 : f32[4,8,1,1] = "w3"
%a : f32[1,8,8,8] = Conv(%x, %w1) #"conv1"
%d : f32[1,8,8,8] = Conv(%a, %wg) {group=2, pads=[1, 1, 1, 1]} #"gconv"
%y : f32[1,4,8,8] = Conv(%d, %w3) #"conv3"
output %y
'''


def test_grouped_conv_removes_the_same_count_from_every_group():
    g = build(GROUPED)
    a = channel_groups(g)
    before, after = by_weight(a, "wg", 1), by_weight(a, "wg", 0)
    # a unit is local channel j of each of the 2 groups: two input (resp. output) channels at a time
    assert (before.size, before.width) == (4, 2) and (after.size, after.width) == (4, 2)
    assert weights(before) == {"w1": (0, 2), "wg": (1, 1)} and weights(after) == {"wg": (0, 2), "w3": (1, 2)}
    wsp = next(sp for sp in a.spaces if sp.value.name == "w1" and sp.axis == 0)
    assert [local(u, wsp) for u in before.units] == [
        [0, 4], [1, 5], [2, 6], [3, 7]]
    cut = assert_zero_invariant(g, a, {before.id: [1], after.id: [0, 3]})
    assert node(cut, "gconv").attrs["group"] == 2 and shape(cut, "wg") == (4, 3, 3, 3)


# ---- flatten into gemm ---------------------------------------------------------------------------

FLATTEN = '''graph "g" opsets {"": 21}
input %x : f32[1,1,3,3]
const %w1 : f32[4,1,1,1] = "w1"
const %wf : f32[5,36] = "wf"
const %bf : f32[5] = "bf"
%a : f32[1,4,3,3] = Conv(%x, %w1) #"conv"
%f : f32[1,36] = Flatten(%a) {axis=1} #"flat"
%y : f32[1,5] = Gemm(%f, %wf, %bf) {transB=1} #"fc"
output %y
'''


def test_flatten_makes_a_channel_a_contiguous_block_of_the_gemms_k():
    g = build(FLATTEN)
    a = channel_groups(g)
    grp = by_weight(a, "w1", 0)
    assert grp.prunable and grp.size == 4 and grp.width == 9
    assert weights(grp) == {"w1": (0, 1), "wf": (1, 9)}
    wf = next(sp for sp in a.spaces if sp.value.name == "wf" and sp.axis == 1)
    assert [local(u, wf) for u in grp.units][2] == list(range(18, 27))
    cut = assert_zero_invariant(g, a, {grp.id: [0, 2]})
    assert shape(cut, "f") == (1, 18) and shape(cut, "wf") == (5, 18)


# ---- attention heads ----------------------------------------------------------------------------

ATTENTION = '''graph "g" opsets {"": 21}
input %x : f32[1,4,8]
const %wq : f32[8,8] = "wq"
const %wk : f32[8,8] = "wk"
const %wv : f32[8,8] = "wv"
const %wo : f32[8,8] = "wo"
const %w2 : f32[8,3] = "w2"
const %heads : i64[4] = dense[1, 4, 2, 4]
const %merged : i64[3] = dense[1, 4, 8]
const %scale : f32[] = dense[0.5]
%q : f32[1,4,8] = MatMul(%x, %wq) @"attn.q" #"q_proj"
%k : f32[1,4,8] = MatMul(%x, %wk) @"attn.k" #"k_proj"
%v : f32[1,4,8] = MatMul(%x, %wv) @"attn.v" #"v_proj"
%q4 : f32[1,4,2,4] = Reshape(%q, %heads) @"attn" #"q_heads"
%k4 : f32[1,4,2,4] = Reshape(%k, %heads) @"attn" #"k_heads"
%v4 : f32[1,4,2,4] = Reshape(%v, %heads) @"attn" #"v_heads"
%qt : f32[1,2,4,4] = Transpose(%q4) {perm=[0, 2, 1, 3]} @"attn" #"q_t"
%kt : f32[1,2,4,4] = Transpose(%k4) {perm=[0, 2, 3, 1]} @"attn" #"k_t"
%vt : f32[1,2,4,4] = Transpose(%v4) {perm=[0, 2, 1, 3]} @"attn" #"v_t"
%s : f32[1,2,4,4] = MatMul(%qt, %kt) @"attn" #"scores"
%ss : f32[1,2,4,4] = Mul(%s, %scale) @"attn" #"scaled"
%p : f32[1,2,4,4] = Softmax(%ss) {axis=-1} @"attn" #"softmax"
%o : f32[1,2,4,4] = MatMul(%p, %vt) @"attn" #"context"
%ot : f32[1,4,2,4] = Transpose(%o) {perm=[0, 2, 1, 3]} @"attn" #"o_t"
%om : f32[1,4,8] = Reshape(%ot, %merged) @"attn" #"o_merge"
%y0 : f32[1,4,8] = MatMul(%om, %wo) @"attn.out" #"o_proj"
%r : f32[1,4,8] = Add(%x, %y0) #"residual"
%y : f32[1,4,3] = MatMul(%r, %w2) #"head"
output %y
'''


def test_attention_heads_are_units_of_head_dim_across_q_k_v_and_out():
    g = build(ATTENTION)
    a = channel_groups(g)
    heads = by_weight(a, "wq", 1)
    assert heads is by_weight(a, "wk", 1) is by_weight(a, "wv", 1) is by_weight(a, "wo", 0)
    assert heads.prunable and heads.size == 2 and heads.width == 4 and heads.scope == "attn"
    assert weights(heads) == {"wq": (1, 4), "wk": (1, 4), "wv": (1, 4), "wo": (0, 4)}
    assert {("q_heads", "out", 0, 2, 1), ("scores", "out", 0, 1, 1), ("softmax", "in", 0, 1, 1),
            ("o_merge", "out", 0, 2, 4)} <= members(heads)
    # the model width runs into the graph input through the residual add
    hidden = by_weight(a, "wq", 0)
    assert hidden is by_weight(a, "wo", 1) and hidden.barrier == ["graph input 'x'"]
    cut = assert_zero_invariant(g, a, {heads.id: [0]})
    assert node(cut, "q_heads").input(1).data.tolist() == [1, 4, 1, 4]
    assert node(cut, "o_merge").input(1).data.tolist() == [1, 4, 4]
    assert shape(cut, "wq") == (8, 4) and shape(cut, "wo") == (4, 8) and shape(cut, "p") == (1, 1, 4, 4)


def test_fused_attention_heads_are_units_too():
    """nasc.Attention (what fuse makes of the decomposed form) couples q, k, v and its result by head."""
    text = ATTENTION.replace('''%s : f32[1,2,4,4] = MatMul(%qt, %kt) @"attn" #"scores"
%ss : f32[1,2,4,4] = Mul(%s, %scale) @"attn" #"scaled"
%p : f32[1,2,4,4] = Softmax(%ss) {axis=-1} @"attn" #"softmax"
%o : f32[1,2,4,4] = MatMul(%p, %vt) @"attn" #"context"''', '''%o : f32[1,2,4,4] = nasc.Attention(%qt, %k4t, %vt) {scale=0.5} @"attn" #"attention"''').replace(
        '%kt : f32[1,2,4,4] = Transpose(%k4) {perm=[0, 2, 3, 1]} @"attn" #"k_t"',
        '%k4t : f32[1,2,4,4] = Transpose(%k4) {perm=[0, 2, 1, 3]} @"attn" #"k_t"').replace('{"": 21}', '{"": 21, "nasc": 1}')
    g = build(text)
    a = channel_groups(g)
    heads = by_weight(a, "wq", 1)
    assert heads is by_weight(a, "wk", 1) is by_weight(a, "wv", 1) is by_weight(a, "wo", 0)
    assert heads.prunable and (heads.size, heads.width) == (2, 4)
    assert {("attention", "in", 0, 1, 1), ("attention", "in", 1, 1, 1), ("attention", "out", 0, 1, 1)} <= members(heads)
    cut = assert_zero_invariant(g, a, {heads.id: [1]})
    assert shape(cut, "o") == (1, 1, 4, 4) and shape(cut, "wo") == (4, 8)


def test_fused_attention_without_a_scale_keeps_it_when_head_dims_go():
    """One head: its dims are the channels (q with k, v with the output). The default scale is 1/sqrt(head size),
    so removing q/k dims must pin the old one."""
    text = '''graph "g" opsets {"": 21, "nasc": 1}
input %x : f32[1,4,1,8]
const %wq : f32[8,6] = "wq"
const %wk : f32[8,6] = "wk"
const %wv : f32[8,6] = "wv"
const %wo : f32[6,3] = "wo"
%q : f32[1,4,1,6] = MatMul(%x, %wq) #"q_proj"
%k : f32[1,4,1,6] = MatMul(%x, %wk) #"k_proj"
%v : f32[1,4,1,6] = MatMul(%x, %wv) #"v_proj"
%qt : f32[1,1,4,6] = Transpose(%q) {perm=[0, 2, 1, 3]} #"q_t"
%kt : f32[1,1,4,6] = Transpose(%k) {perm=[0, 2, 1, 3]} #"k_t"
%vt : f32[1,1,4,6] = Transpose(%v) {perm=[0, 2, 1, 3]} #"v_t"
%o : f32[1,1,4,6] = nasc.Attention(%qt, %kt, %vt) #"attention"
%y : f32[1,1,4,3] = MatMul(%o, %wo) #"o_proj"
output %y
'''
    g = build(text)
    a = channel_groups(g)
    qk, vo = by_weight(a, "wq", 1), by_weight(a, "wv", 1)
    assert qk is by_weight(a, "wk", 1) and vo is by_weight(a, "wo", 0) and qk is not vo
    assert (qk.size, vo.size) == (6, 6) and qk.prunable and vo.prunable
    cut = assert_zero_invariant(g, a, {qk.id: [0, 2, 3], vo.id: [5]})
    assert node(cut, "attention").attrs["scale"] == pytest.approx(1 / np.sqrt(6))


GQA = '''graph "g" opsets {"": 21}
input %x : f32[1,4,8]
const %wq : f32[8,8] = "wq"
const %wk : f32[8,4] = "wk"
const %wv : f32[8,4] = "wv"
const %wo : f32[8,8] = "wo"
const %w2 : f32[8,3] = "w2"
const %qh : i64[4] = dense[1, 4, 4, 2]
const %kvh : i64[4] = dense[1, 4, 2, 2]
const %ax2 : i64[1] = dense[2]
const %rep : i64[5] = dense[1, 2, 2, 4, 2]
const %flat : i64[4] = dense[1, 4, 4, 2]
const %merged : i64[3] = dense[1, 4, 8]
%q : f32[1,4,8] = MatMul(%x, %wq) #"q_proj"
%k : f32[1,4,4] = MatMul(%x, %wk) #"k_proj"
%v : f32[1,4,4] = MatMul(%x, %wv) #"v_proj"
%q4 : f32[1,4,4,2] = Reshape(%q, %qh) #"q_heads"
%k4 : f32[1,4,2,2] = Reshape(%k, %kvh) #"k_heads"
%v4 : f32[1,4,2,2] = Reshape(%v, %kvh) #"v_heads"
%qt : f32[1,4,4,2] = Transpose(%q4) {perm=[0, 2, 1, 3]} #"q_t"
%kt : f32[1,2,4,2] = Transpose(%k4) {perm=[0, 2, 1, 3]} #"k_t"
%vt : f32[1,2,4,2] = Transpose(%v4) {perm=[0, 2, 1, 3]} #"v_t"
%ku : f32[1,2,1,4,2] = Unsqueeze(%kt, %ax2) #"k_unsq"
%vu : f32[1,2,1,4,2] = Unsqueeze(%vt, %ax2) #"v_unsq"
%ke : f32[1,2,2,4,2] = Expand(%ku, %rep) #"k_expand"
%ve : f32[1,2,2,4,2] = Expand(%vu, %rep) #"v_expand"
%kr : f32[1,4,4,2] = Reshape(%ke, %flat) #"k_repeat"
%vr : f32[1,4,4,2] = Reshape(%ve, %flat) #"v_repeat"
%ktt : f32[1,4,2,4] = Transpose(%kr) {perm=[0, 1, 3, 2]} #"k_T"
%s : f32[1,4,4,4] = MatMul(%qt, %ktt) #"scores"
%p : f32[1,4,4,4] = Softmax(%s) {axis=-1} #"softmax"
%o : f32[1,4,4,2] = MatMul(%p, %vr) #"context"
%ot : f32[1,4,4,2] = Transpose(%o) {perm=[0, 2, 1, 3]} #"o_t"
%om : f32[1,4,8] = Reshape(%ot, %merged) #"o_merge"
%h : f32[1,4,8] = MatMul(%om, %wo) #"o_proj"
%y : f32[1,4,3] = MatMul(%h, %w2) #"head"
output %y
'''


def test_grouped_query_attention_unit_is_a_kv_head_with_its_query_heads():
    """4 query heads, 2 KV heads of size 2, repeated by Unsqueeze/Expand/Reshape (repeat_kv)."""
    g = build(GQA)
    a = channel_groups(g)
    grp = by_weight(a, "wk", 1)
    assert grp is by_weight(a, "wq", 1) is by_weight(a, "wv", 1) is by_weight(a, "wo", 0)
    assert grp.prunable and grp.size == 2 and grp.width == 4
    # per unit: one KV head (2 columns of wk, wv) and two query heads (4 columns of wq, 4 rows of wo)
    assert weights(grp) == {"wq": (1, 4), "wk": (1, 2), "wv": (1, 2), "wo": (0, 4)}
    assert {("k_expand", "out", 0, 1, 1), ("k_repeat", "out", 0, 1, 2), ("scores", "out", 0, 1, 2)} <= members(grp)
    wq = next(sp for sp in a.spaces if sp.value.name == "wq" and sp.axis == 1)
    assert [local(u, wq) for u in grp.units] == [
        [0, 1, 2, 3], [4, 5, 6, 7]]
    cut = assert_zero_invariant(g, a, {grp.id: [1]})
    assert node(cut, "k_expand").input(1).data.tolist() == [1, 1, 2, 4, 2]
    assert node(cut, "k_repeat").input(1).data.tolist() == [1, 2, 4, 2]
    assert node(cut, "q_heads").input(1).data.tolist() == [1, 4, 2, 2]
    assert shape(cut, "wq") == (8, 4) and shape(cut, "wk") == (8, 2) and shape(cut, "wo") == (4, 8)


# ---- channel shuffle ---------------------------------------------------------------------------

SHUFFLE = '''graph "g" opsets {"": 21}
input %x : f32[1,3,4,4]
const %w1 : f32[8,3,1,1] = "w1"
const %s5 : i64[5] = dense[1, 2, 4, 4, 4]
const %s4 : i64[4] = dense[1, 8, 4, 4]
const %w3 : f32[4,8,1,1] = "w3"
%a : f32[1,8,4,4] = Conv(%x, %w1) #"conv1"
%r : f32[1,2,4,4,4] = Reshape(%a, %s5) #"split_groups"
%t : f32[1,4,2,4,4] = Transpose(%r) {perm=[0, 2, 1, 3, 4]} #"swap"
%s : f32[1,8,4,4] = Reshape(%t, %s4) #"merge"
%y : f32[1,4,4,4] = Conv(%s, %w3) #"conv3"
output %y
'''


def test_channel_shuffle_prunes_channel_j_of_every_branch_together():
    """The outer factor of the first reshape maps nothing (the shuffle interleaves the branches), so the
    inner factor is tried and kept: channel j of branch 0 and of branch 1 (conv1 channels j and 4 + j)
    are one unit, which lands at shuffled positions 2j and 2j + 1."""
    g = build(SHUFFLE)
    a = channel_groups(g)
    grp = by_weight(a, "w1", 0)
    assert grp is by_weight(a, "w3", 1) and grp.prunable and (grp.size, grp.width) == (4, 2)
    # recorded on the node: factor 1 (the inner one) of the split, the merge as it was
    assert node(g, "split_groups").meta.get("prune.factor") == 1 and "prune.factor" not in node(g, "merge").meta
    w1 = next(sp for sp in a.spaces if sp.value.name == "w1" and sp.axis == 0)
    w3 = next(sp for sp in a.spaces if sp.value.name == "w3" and sp.axis == 1)
    unit = grp.units[1]
    assert local(unit, w1) == [1, 5] and local(unit, w3) == [2, 3]
    cut = assert_zero_invariant(g, a, {grp.id: [1, 2]})
    assert node(cut, "split_groups").input(1).data.tolist() == [1, 2, 2, 4, 4]
    assert node(cut, "merge").input(1).data.tolist() == [1, 4, 4, 4]
    # a second analysis of the pruned graph sees the same choice
    again = channel_groups(cut)
    assert by_weight(again, "w1", 0).size == 2


def test_a_reshape_that_mixes_channels_with_space_is_a_barrier_with_its_reason():
    """[1, 8, 4, 4] -> [1, 2, 16, 4]: no channel of either side is a block of the other's."""
    text = '''graph "g" opsets {"": 21}
input %x : f32[1,3,4,4]
const %w1 : f32[8,3,1,1] = "w1"
const %s4 : i64[4] = dense[1, 2, 16, 4]
const %w3 : f32[4,2,1,1] = "w3"
%a : f32[1,8,4,4] = Conv(%x, %w1) #"conv1"
%r : f32[1,2,16,4] = Reshape(%a, %s4) #"mix"
%y : f32[1,4,16,4] = Conv(%r, %w3) #"conv3"
output %y
'''
    g = build(text)
    a = channel_groups(g)
    assert by_weight(a, "w1", 0).barrier == [
        "'Reshape' at node 'mix' does not map axis 1 of its operand 0 (%a) to a channel it can remove"]
    assert by_weight(a, "w3", 1).barrier == [
        "'Reshape' at node 'mix' does not map axis 1 of its result 0 (%r) to a channel it can remove"]
    assert a.prunable == [] and "prune.factor" not in node(g, "mix").meta


# ---- inexact, unknown ops, graph outputs -------------------------------------------------------

LAYERNORM = '''graph "g" opsets {"": 21}
input %x : f32[1,4,8]
const %w1 : f32[8,16] = "w1"
const %g : f32[16] = "g"
const %b : f32[16] = "b"
const %w2 : f32[16,8] = "w2"
%h : f32[1,4,16] = MatMul(%x, %w1) #"up"
%n : f32[1,4,16] = LayerNormalization(%h, %g, %b) {axis=-1} #"ln"
%y : f32[1,4,8] = MatMul(%n, %w2) #"down"
output %y
'''


def test_layernorm_over_channels_is_an_inexact_group_pruned_only_when_approximating():
    g = build(LAYERNORM)
    a = channel_groups(g)
    grp = by_weight(a, "w1", 1)
    assert grp.prunable and grp.size == 16 and weights(grp) == {"w1": (1, 1), "g": (0, 1), "b": (0, 1), "w2": (0, 1)}
    assert "'LayerNormalization' at node 'ln' normalizes over this axis" in grp.inexact
    with pytest.raises(nasc.UsageError, match=r"normalizes over this axis.*approximate=true"):
        nasc.optimize(g.clone(), "prune{ratio=0.5}")
    out = nasc.optimize(g.clone(), "prune{ratio=0.5 approximate=true check=true}")
    assert shape(out, "w1") == (8, 8) and shape(out, "g") == (8,)
    # not zero-invariant by design: the check skips it rather than failing
    zi = out.meta["passes"][-1]["details"]["zero_invariance"]
    assert zi["groups_checked"] == [] and zi["skipped_inexact"] == [grp.id]


def test_an_op_without_a_rule_is_a_barrier_naming_it():
    text = '''graph "g" opsets {"": 21, "acme": 1}
input %x : f32[1,3,8,8]
const %w1 : f32[8,3,1,1] = "w1"
const %w2 : f32[4,8,1,1] = "w2"
%a : f32[1,8,8,8] = Conv(%x, %w1) #"conv1"
%b : f32[1,8,8,8] = acme.Mystery(%a) #"mystery"
%y : f32[1,4,8,8] = Conv(%b, %w2) #"conv2"
output %y
'''
    a = channel_groups(build(text))
    why = "'acme.Mystery' at node 'mystery' has no pruning rule (an op nasc does not know)"
    assert by_weight(a, "w1", 0).barrier == [why] and by_weight(a, "w2", 1).barrier == [why]
    assert a.prunable == []


def test_a_graph_output_is_a_barrier_even_in_the_middle_of_a_chain():
    text = RESIDUAL.replace("output %y", "output %y, %r")
    a = channel_groups(build(text))
    assert by_weight(a, "w1", 0).barrier == ["graph output 'r'"]
    assert a.prunable == []


def test_a_conv_whose_spatial_taps_are_not_channels():
    """Kernel taps are weight-only: no group, not even a barrier."""
    a = channel_groups(build(RESIDUAL))
    assert all(not (sp.value.name == "w1" and sp.axis >= 2 and any(sp is s for x in a.groups for s, _ in x.spaces))
               for sp in a.spaces)
