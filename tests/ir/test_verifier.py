"""The verifier catches each kind of broken graph and names it, printing the nodes around the failure."""

from __future__ import annotations

import numpy as np
import pytest

from nasc.errors import VerificationError
from nasc.ir import Graph, TensorType, Value, verify
from nasc.ir.core import Node

F = TensorType("f32", (1, 4))


def chain() -> Graph:
    g = Graph()
    x = g.add_input("x", F)
    a = g.make_node("Relu", [x], [F], name="relu", out_names=["a"]).outputs[0]
    b = g.make_node("Neg", [a], [F], name="neg", out_names=["b"]).outputs[0]
    g.outputs = [g.make_node("Abs", [b], [F], name="abs", out_names=["c"]).outputs[0]]
    return g


def test_a_good_graph_passes():
    verify(chain())


def test_out_of_order_nodes():
    g = chain()
    g.nodes[0], g.nodes[1] = g.nodes[1], g.nodes[0]
    with pytest.raises(VerificationError, match=r"operand 0 of 'Neg' at node 'neg', %a, is defined later") as e:
        verify(g)
    assert ">> %b : f32[1,4] = Neg(%a)" in str(e.value)  # the failing node, marked, with its neighbours
    assert "%c : f32[1,4] = Abs(%b)" in str(e.value)


def test_undefined_operand():
    g = chain()
    stray = Value(F, "stray")
    g.set_input(g.find_node("neg"), 0, stray)
    with pytest.raises(VerificationError, match=r"operand 0 of 'Neg' at node 'neg', %stray, is undefined"):
        verify(g)


def test_node_of_another_graph_is_not_owned():
    g, other = chain(), chain()
    node = g.find_node("abs")
    node.graph = other
    with pytest.raises(VerificationError, match=r"'Abs' at node 'abs' does not belong to this graph"):
        verify(g)


def test_value_defined_twice():
    g = chain()
    relu = g.find_node("relu")
    dup = Node("Neg", [g.inputs[0]], [Value(F, "dup")], name="dup")
    dup.outputs = [relu.outputs[0]]
    g.append(dup)
    with pytest.raises(VerificationError, match=r"defined twice|does not point back"):
        verify(g)


def test_stale_use_list():
    g = chain()
    g.inputs[0].uses.clear()  # an edit that bypassed the Graph methods
    with pytest.raises(VerificationError, match=r"use list of %x is stale: 0 recorded, 1 real"):
        verify(g)


def test_wrong_recorded_type_is_caught_by_inference():
    g = chain()
    g.find_node("neg").outputs[0].type = TensorType("f32", (1, 5))
    with pytest.raises(VerificationError, match=r"result 0 of 'Neg' at node 'neg' is recorded as f32\[1,5\] but inference gives f32\[1,4\]"):
        verify(g)


def test_inconsistent_operands_fail_inference_with_the_node_named():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (1, 3, 8, 8)))
    w = g.add_constant(np.zeros((4, 2, 3, 3), np.float32), "w")
    g.outputs = [g.make_node("Conv", [x, w], [TensorType("f32", (1, 4, 6, 6))], name="conv").outputs[0]]
    with pytest.raises(VerificationError, match=r"type inference failed: .*'Conv' at node 'conv'.*3 channels"):
        verify(g)


def test_undefined_graph_output():
    g = chain()
    g.outputs = [Value(F, "ghost")]
    with pytest.raises(VerificationError, match=r"graph output %ghost is not defined"):
        verify(g)


def test_constant_contents_disagree_with_type():
    g = chain()
    c = g.add_constant(np.zeros((2,), np.float32), "c")
    c.type = TensorType("f32", (3,))
    with pytest.raises(VerificationError, match=r"constant %c is typed f32\[3\] but holds shape \(2,\)"):
        verify(g)


def test_types_check_can_be_switched_off():
    g = chain()
    g.find_node("neg").outputs[0].type = TensorType("f32", (1, 5))
    verify(g, types=False)
