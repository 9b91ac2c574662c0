"""Op rules at the edges of group finding: ops whose shape operands or attributes count channels (their prune
hooks rewrite them), and channels that an axis of size 1 holds (no space of their own, so they must stay).
Zero-invariance tolerances as in test_prune_groups.
"""

from __future__ import annotations

import pytest
from test_prune_groups import assert_zero_invariant, build, weights

from nasc.passes.prune_groups import channel_groups

# ---- ops whose shape operands or attributes count channels --------------------------------------

AFTER_CONV = {  # what reads conv1's 8 channels (%a : f32[1,8,6,6]) into %s, which conv9 reads
    "resize by sizes": ('''const %sz : i64[4] = dense[1, 8, 12, 12]
%s : f32[1,8,12,12] = Resize(%a, _, _, %sz) {mode="nearest"} #"op"''', 8, "12,12"),
    "resize by sizes of axes": ('''const %sz : i64[2] = dense[12, 12]
%s : f32[1,8,12,12] = Resize(%a, _, _, %sz) {mode="nearest", axes=[2, 3]} #"op"''', 8, "12,12"),
    "slice to the end": ('''const %st : i64[1] = dense[2]
const %en : i64[1] = dense[9223372036854775807]
const %ax : i64[1] = dense[1]
%s : f32[1,6,6,6] = Slice(%a, %st, %en, %ax) #"op"''', 6, "6,6"),
    "slice reversed": ('''const %st : i64[1] = dense[-1]
const %en : i64[1] = dense[-9223372036854775807]
const %ax : i64[1] = dense[1]
const %sp : i64[1] = dense[-1]
%s : f32[1,8,6,6] = Slice(%a, %st, %en, %ax, %sp) #"op"''', 8, "6,6"),
    "gather with repeats": ('''const %ix : i64[5] = dense[7, 0, -3, 2, 2]
%s : f32[1,5,6,6] = Gather(%a, %ix) {axis=1} #"op"''', 5, "6,6"),
    "expand a per-channel constant": ('''const %sc : f32[8,1,1] = "sc"
const %tg : i64[4] = dense[1, 8, 6, 6]
%e : f32[1,8,6,6] = Expand(%sc, %tg) #"expand"
%s : f32[1,8,6,6] = Add(%a, %e) #"op"''', 8, "6,6"),
    "group norm": ('''const %gs : f32[8] = "gs"
const %gb : f32[8] = "gb"
%s : f32[1,8,6,6] = GroupNormalization(%a, %gs, %gb) {num_groups=4} #"op"''', 8, "6,6"),
    "pixel shuffle": ('''%s : f32[1,2,12,12] = DepthToSpace(%a) {blocksize=2, mode="CRD"} #"op"''', 2, "12,12"),
    "transposed conv": ('''const %wt : f32[8,5,2,2] = "wt"
%s : f32[1,5,12,12] = ConvTranspose(%a, %wt) {strides=[2, 2]} #"op"''', 5, "12,12"),
}


@pytest.mark.parametrize("reader", list(AFTER_CONV))
def test_ops_that_count_channels_are_rewritten(reader):
    """Every prunable group, first and last unit removed: the graph stays consistent and zero-invariant."""
    snippet, c, hw = AFTER_CONV[reader]
    text = f'''graph "g" opsets {{"": 21}}
input %x : f32[1,3,6,6]
const %w1 : f32[8,3,1,1] = "w1"
const %w9 : f32[4,{c},1,1] = "w9"
%a : f32[1,8,6,6] = Conv(%x, %w1) #"conv1"
{snippet}
%y : f32[1,4,{hw}] = Conv(%s, %w9) #"conv9"
output %y
'''
    g = build(text)
    a = channel_groups(g)
    assert any("w1" in weights(x) for x in a.prunable)
    for grp in a.prunable:
        if grp.size > 1:
            assert_zero_invariant(g, a, {grp.id: sorted({0, grp.size - 1})[: grp.size - 1]}, changes=False)


# ---- one-channel axes ------------------------------------------------------------------------------

ONE_CHANNEL = {  # the producer conv1 [1, 2, 6, 6], what reads one of its channels alone, then conv9 (2 channels in)
    "concat": '''%p : f32[1,1,6,6] = Conv(%x, %w0) #"conv0"
%s : f32[1,3,6,6] = Concat(%p, %a) {axis=1} #"cat"''',
    "split": '''const %sp : i64[2] = dense[1, 1]
%p : f32[1,1,6,6], %q : f32[1,1,6,6] = Split(%a, %sp) {axis=1} #"split"
%s : f32[1,2,6,6] = Concat(%q, %p) {axis=1} #"cat"''',
    "slice": '''const %st : i64[1] = dense[0]
const %en : i64[1] = dense[1]
const %ax : i64[1] = dense[1]
%p : f32[1,1,6,6] = Slice(%a, %st, %en, %ax) #"slice"
%s : f32[1,2,6,6] = Concat(%p, %p) {axis=1} #"cat"''',
    "gather": '''const %ix : i64[1] = dense[1]
%p : f32[1,1,6,6] = Gather(%a, %ix) {axis=1} #"gather"
%s : f32[1,2,6,6] = Concat(%p, %p) {axis=1} #"cat"''',
    "pixel shuffle": '''%p : f32[1,1,6,6] = DepthToSpace(%a) {blocksize=1, mode="CRD"} #"d2s"
%s : f32[1,2,6,6] = Concat(%p, %p) {axis=1} #"cat"''',
}


@pytest.mark.parametrize("reader", list(ONE_CHANNEL))
def test_a_channel_that_a_one_channel_axis_holds_stays(reader):
    """An axis of size 1 is not a channel space: the channel it holds must not be removed through the
    producer's group (the concat or split part, the slice, would be left empty or read the wrong channel)."""
    c = 3 if reader == "concat" else 2
    text = f'''graph "g" opsets {{"": 21}}
input %x : f32[1,3,6,6]
const %w0 : f32[1,3,1,1] = "w0"
const %w1 : f32[2,3,1,1] = "w1"
const %w9 : f32[4,{c},1,1] = "w9"
%a : f32[1,2,6,6] = Conv(%x, %w1) #"conv1"
{ONE_CHANNEL[reader]}
%y : f32[1,4,6,6] = Conv(%s, %w9) #"conv9"
output %y
'''
    g = build(text)
    a = channel_groups(g)
    for grp in a.prunable:  # whatever stays prunable is zero-invariant
        assert_zero_invariant(g, a, {grp.id: [0]}, changes=False)
    why = "has a single channel on axis 1, which cannot be removed"
    held = [x for x in a.groups if any(why in b for b in x.barrier)]
    assert held, [x.barrier for x in a.groups]
