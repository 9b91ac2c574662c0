"""Graph mutation keeps use lists exact; identity semantics; shared constants; networkx view; clone."""

from __future__ import annotations

import numpy as np
import pytest

from nasc.ir import Graph, TensorType, parse, verify
from nasc.ir.text import structural_diff

F = TensorType("f32", (1, 4))


def small_graph() -> tuple[Graph, dict]:
    g = Graph()
    x = g.add_input("x", F)
    w = g.add_constant(np.ones((4, 4), np.float32), "w")
    a = g.make_node("MatMul", [x, w], [F], name="mm0", scope="layer.0").outputs[0]
    b = g.make_node("MatMul", [a, w], [F], name="mm1", scope="layer.1").outputs[0]
    r = g.make_node("Relu", [b], [F], name="relu").outputs[0]
    g.outputs = [r]
    return g, {"x": x, "w": w, "a": a, "b": b, "r": r}


def uses(v) -> list[tuple[str, int]]:
    return sorted((n.name, s) for n, s in v.uses)


def test_use_lists_follow_construction_and_shared_weight_is_one_value():
    g, v = small_graph()
    verify(g)
    assert uses(v["w"]) == [("mm0", 1), ("mm1", 1)]
    assert v["w"].users() == [g.find_node("mm0"), g.find_node("mm1")]
    assert len(g.constants) == 1


def test_values_compare_by_identity_not_name():
    g, v = small_graph()
    twin = g.add_constant(np.ones((4, 4), np.float32), "w")
    assert twin != v["w"] and twin.name == v["w"].name
    assert len({v["w"], twin}) == 2


def test_replace_all_uses_with_updates_nodes_outputs_and_use_lists():
    g, v = small_graph()
    w2 = g.add_constant(np.zeros((4, 4), np.float32), "w2")
    g.replace_all_uses_with(v["w"], w2)
    assert v["w"].uses == [] and uses(w2) == [("mm0", 1), ("mm1", 1)]
    g.replace_all_uses_with(v["r"], v["b"])
    assert g.outputs == [v["b"]]
    g.erase(g.find_node("relu"))
    g.remove_dead()
    verify(g)
    assert [c.name for c in g.constants] == ["w2"]


def test_set_input_and_erase_refuses_used_node():
    g, v = small_graph()
    mm1 = g.find_node("mm1")
    g.set_input(mm1, 0, v["x"])
    assert uses(v["a"]) == [] and ("mm1", 0) in uses(v["x"])
    with pytest.raises(ValueError, match="still used"):
        g.erase(mm1)
    removed = g.remove_dead()
    assert removed == 1 and [n.name for n in g.nodes] == ["mm1", "relu"]
    verify(g)


def test_insert_before_and_sort():
    g, v = small_graph()
    relu = g.find_node("relu")
    node = g.make_node("Neg", [v["b"]], [F], name="neg", before=relu)
    g.set_input(relu, 0, node.outputs[0])
    verify(g)
    assert [n.name for n in g.nodes] == ["mm0", "mm1", "neg", "relu"]
    g.nodes.reverse()
    g.sort()
    assert [n.name for n in g.nodes] == ["mm0", "mm1", "neg", "relu"]


def test_to_networkx_has_one_edge_per_operand():
    g, _ = small_graph()
    nxg = g.to_networkx()
    ops = sorted(d["op"] for _, d in nxg.nodes(data=True))
    assert ops == ["<const>", "<input>", "MatMul", "MatMul", "Relu"]
    assert nxg.number_of_edges() == 5
    mm1 = g.find_node("mm1")
    preds = {nxg.nodes[p]["op"] for p in nxg.predecessors(id(mm1))}
    assert preds == {"MatMul", "<const>"}


def test_clone_is_independent_but_shares_weights():
    g, _v = small_graph()
    c = g.clone()
    assert structural_diff(g, c) is None
    c.nodes[0].attrs["x"] = 1
    assert "x" not in g.nodes[0].attrs
    assert c.constants[0].const is g.constants[0].const
    verify(c)


def test_lazy_constant_is_not_loaded_until_read():
    from nasc.ir import LazyArray

    calls = []

    def load() -> np.ndarray:
        calls.append(1)
        return np.arange(6, dtype=np.float32)

    g = Graph()
    c = g.add_constant(LazyArray((2, 3), "f32", load), "big")
    assert c.type == TensorType("f32", (2, 3)) and not calls
    assert c.data.shape == (2, 3) and calls == [1]
    c.data  # noqa: B018
    assert calls == [1]


def test_summary_counts_params_macs_and_largest_activation():
    g, _ = small_graph()
    s = g.summary()
    assert s["params"] == 16 and s["param_bytes"] == 64
    assert s["macs"] == 2 * 16 + 4  # two 1x4x4 matmuls, one relu
    assert s["ops"] == {"MatMul": 2, "Relu": 1}
    assert set(s["scopes"]) == {"layer.0", "layer.1", "<root>"}


def test_parse_builds_same_graph_as_api():
    g, _ = small_graph()
    text = str(g)
    g2 = parse(text, constants={"w": np.ones((4, 4), np.float32)})
    assert structural_diff(g, g2) is None
