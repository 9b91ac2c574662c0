"""simplify: each kind of simplification, golden IR in and out, outputs unchanged."""

from __future__ import annotations

import numpy as np
from golden import count, run_golden


def test_constant_subgraph_folds_through_numpy_and_onnxruntime():
    before = '''graph "g" opsets {"": 21}
input %x : f32[2,3]
const %w : f32[3,2] = "w"
const %two : f32[] = dense[2.0]
%wt : f32[2,3] = Transpose(%w) {perm=[1, 0]} #"t"
%w2 : f32[2,3] = Mul(%wt, %two) #"scale"
%e : f32[2,3] = Exp(%w2) #"exp"
%y : f32[2,3] = Add(%x, %e) #"add"
output %y
'''
    out = run_golden(before, "simplify")
    assert [n.op for n in out.nodes] == ["Add"]  # Transpose and Mul folded in numpy, Exp by ONNX Runtime
    assert out.meta["passes"][0]["rewrites"]["fold-constant"] == 1


def test_shape_subgraph_folds_to_a_static_reshape():
    before = '''graph "g" opsets {"": 21}
input %x : f32[2,3,4]
const %zero : i64[1] = dense[0]
const %minus1 : i64[1] = dense[-1]
%s : i64[3] = Shape(%x) #"shape"
%n : i64[1] = Gather(%s, %zero) {axis=0} #"gather"
%shape : i64[2] = Concat(%n, %minus1) {axis=0} #"concat"
%y : f32[?,?] = Reshape(%x, %shape) #"reshape"
output %y
'''
    out = run_golden(before, "simplify")
    assert [n.op for n in out.nodes] == ["Reshape"]
    assert out.nodes[0].input(1).data.tolist() == [2, -1]


def test_identity_dropout_and_noop_casts_go():
    before = '''graph "g" opsets {"": 21}
input %x : f32[2,3]
%a : f32[2,3] = Identity(%x) #"id"
%b : f32[2,3] = Dropout(%a) #"drop"
%c : f32[2,3] = Cast(%b) {to="f32"} #"cast"
%d : f32[2,3] = Transpose(%c) {perm=[0, 1]} #"perm"
%y : f32[2,3] = Relu(%d) #"relu"
output %y
'''
    after = '''graph "g" opsets {"": 21}
input %x : f32[2,3]
%y : f32[2,3] = Relu(%x) #"relu"
output %y
'''
    out = run_golden(before, "simplify", after)
    assert out.meta["passes"][0]["rewrites"] == {"remove-identity": 1, "remove-dropout": 1, "remove-cast": 1,
                                                 "remove-transpose": 1}


def test_reversing_slice_is_not_a_noop():
    before = '''graph "g" opsets {"": 21}
input %x : f32[4]
const %s : i64[1] = dense[-1]
const %e : i64[1] = dense[-9223372036854775807]
const %a : i64[1] = dense[0]
const %st : i64[1] = dense[-1]
%y : f32[4] = Slice(%x, %s, %e, %a, %st) #"reverse"
output %y
'''
    out = run_golden(before, "simplify")
    assert count(out, "Slice") == 1


def test_common_subexpressions_and_duplicate_constants_merge():
    before = '''graph "g" opsets {"": 21}
input %x : f32[2,2]
const %c1 : f32[2] = dense[1.0, 2.0]
const %c2 : f32[2] = dense[1.0, 2.0]
%a : f32[2,2] = Add(%x, %c1) #"a"
%b : f32[2,2] = Add(%x, %c2) #"b"
%y : f32[2,2] = Mul(%a, %b) #"mul"
output %y
'''
    after = '''graph "g" opsets {"": 21}
input %x : f32[2,2]
const %c1 : f32[2] = dense[1.0, 2.0]
%a : f32[2,2] = Add(%x, %c1) #"a"
%y : f32[2,2] = Mul(%a, %a) #"mul"
output %y
'''
    out = run_golden(before, "simplify", after)
    assert out.meta["passes"][0]["rewrites"] == {"cse-constant": 1, "cse": 1}


def test_dead_code_and_random_ops_are_not_merged():
    before = '''graph "g" opsets {"": 21}
input %x : f32[2]
%unused : f32[2] = Exp(%x) #"dead"
%r1 : f32[2] = RandomUniformLike(%x) #"r1"
%r2 : f32[2] = RandomUniformLike(%x) #"r2"
%y : f32[2] = Sub(%r1, %r2) #"sub"
output %y
'''
    from nasc import optimize
    from nasc.ir import parse

    out = optimize(parse(before), "simplify")
    assert [n.name for n in out.nodes] == ["r1", "r2", "sub"]
    assert out.meta["passes"][0]["rewrites"] == {"dead-code": 1}


def test_big_constant_expansions_are_not_folded():
    before = '''graph "g" opsets {"": 21}
input %x : f32[512,512]
const %shape : i64[2] = dense[512, 512]
const %v : f32[1] = dense[0.5]
%big : f32[512,512] = Expand(%v, %shape) #"expand"
%y : f32[512,512] = Add(%x, %big) #"add"
output %y
'''
    out = run_golden(before, "simplify")
    assert count(out, "Expand") == 1 and max(c.tensor_type.numel for c in out.constants) == 2
    assert np.isfinite(out.constants[0].data).all()


def test_a_scalar_and_a_one_element_vector_are_different_constants():
    before = '''graph "g" opsets {"": 21}
input %x : f32[3,4]
const %i0 : i64[] = dense[0]
const %i1 : i64[1] = dense[0]
%a : f32[4] = Gather(%x, %i0) {axis=0} #"scalar_index"
%b : f32[1,4] = Gather(%x, %i1) {axis=0} #"vector_index"
%y : f32[1,4] = Add(%a, %b) #"add"
output %y
'''
    out = run_golden(before, "simplify")
    assert len(out.constants) == 2
