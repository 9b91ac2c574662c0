"""Finding repeated blocks (passes/tie_find.py): by scope, by structure, near misses, and the CLI listing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.cli import main as cli_main
from nasc.examples import zoo
from nasc.ir.core import Graph
from nasc.ir.types import TensorType
from nasc.passes.tie_find import find_repeats

EXAMPLES = Path(nasc.__file__).parent / "examples"
LAYERS = [f"encoder.layer.{i}" for i in range(6)]
#: a MiniLM layer's constants: 6 matrices (4 × 384², 2 × 384·1536), their biases, two LayerNorms
LAYER_PARAMS = 4 * 384 * 384 + 2 * 384 * 1536 + 4 * 384 + 1536 + 384 + 4 * 384


@pytest.fixture(scope="module")
def minilm_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Graph]:
    """MiniLM through the three ways in: the TorchScript and dynamo ONNX exporters, and nasc's torch frontend."""
    from nasc.frontends.torch import from_torch

    module, inputs = zoo.minilm(max_length=16, sentences=zoo.SENTENCES[:1])
    d = tmp_path_factory.mktemp("minilm")
    out = {}
    for name, dynamo in (("torchscript", False), ("dynamo", True)):
        out[name] = nasc.optimize(nasc.load(zoo.export_onnx(module, inputs, d / f"{name}.onnx", dynamo=dynamo)),
                                  "simplify,fuse")
    out["torch"] = nasc.optimize(from_torch(module, inputs), "simplify,fuse")
    return out


@pytest.mark.parametrize("way", ["torchscript", "dynamo", "torch"])
def test_minilm_layers_repeat_by_scope(minilm_graphs: dict[str, Graph], way: str) -> None:
    found = find_repeats(minilm_graphs[way])
    rep = found.repeats[0]
    assert (rep.stem, rep.how) == ("encoder.layer", "scope")
    assert [c.scope for c in rep.copies] == LAYERS and not rep.near_misses
    assert len(rep.weights()) == 6
    assert LAYER_PARAMS <= rep.params_per_copy() <= LAYER_PARAMS + 4  # + scalars (an attention scale)
    # twins: the query projection of every layer, in layer order
    q = next(n for n in rep.template.nodes if n.op in ("MatMul", "Gemm") and n.scope.endswith("self.query"))
    assert [t.scope for t in rep.twins(q)] == [f"{s}.attention.self.query" for s in LAYERS]


def test_without_scopes_the_structure_gives_the_same_copies(minilm_graphs: dict[str, Graph]) -> None:
    """An ONNX file whose nodes carry no module path: WL-hash anchors + one period find the six layers."""
    g = minilm_graphs["torchscript"].clone()
    by_scope = find_repeats(g).repeats[0]
    scoped = [{n.name for n in c.nodes} for c in by_scope.copies]
    for n in g.nodes:
        n.scope = ""
    assert find_repeats(g, "scope").repeats == []
    found = find_repeats(g)
    rep = found.repeats[0]
    assert rep.how == "structure" and len(rep.copies) == 6
    assert [{n.name for n in c.nodes} for c in rep.copies] == scoped
    assert len(rep.weights()) == 6 and rep.params_per_copy() == by_scope.params_per_copy()


def test_reordered_copy_is_matched_by_isomorphism() -> None:
    """Copies whose independent nodes come in another order are still twins (networkx VF2), node for node."""
    g = Graph()
    rng = np.random.default_rng(0)
    x = g.add_input("x0", TensorType("f32", (2, 8)))
    for i in range(3):
        wa = g.add_constant(rng.standard_normal((8, 8)).astype("float32"), f"w{i}a")
        wb = g.add_constant(rng.standard_normal((8, 8)).astype("float32"), f"w{i}b")
        t = TensorType("f32", (2, 8))
        order = [("a", wa), ("b", wb)] if i != 1 else [("b", wb), ("a", wa)]
        outs = {}
        for tag, w in order:
            outs[tag] = g.make_node("MatMul", [x, w], [t], scope=f"blocks.{i}.{tag}", name=f"{tag}{i}").outputs[0]
        x = g.make_node("Add", [outs["a"], outs["b"]], [t], scope=f"blocks.{i}", name=f"add{i}").outputs[0]
    g.outputs.append(x)
    rep = find_repeats(g).repeats[0]
    assert len(rep.copies) == 3
    a0 = g.find_node("a0")
    assert [t.name for t in rep.twins(a0)] == ["a0", "a1", "a2"]


def test_near_misses_say_why() -> None:
    """fashion_cnn: stage 1's two basic blocks repeat; in stages 2 and 3 the strided first block has a 1x1
    downsample conv the second lacks, so those are candidates with the reason."""
    found = find_repeats(nasc.load(EXAMPLES / "fashion_cnn.onnx"))
    assert [(r.stem, len(r.copies), len(r.weights())) for r in found.repeats] == [("layer1", 2, 2)]
    stems = {c.stem: c.why for c in found.candidates}
    assert set(stems) == {"layer2", "layer3"}
    assert all("downsample" in why and "5 nodes where" in why for why in stems.values())


def test_cli_lists_repeats(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    module, inputs = zoo.minilm(max_length=8, sentences=zoo.SENTENCES[:1])
    path = zoo.export_onnx(module, inputs, tmp_path / "m.onnx", dynamo=False)
    assert cli_main(["inspect", str(path), "--repeats", "--passes", "simplify,fuse", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["repeats"]["repeats"]
    assert rows[0]["stem"] == "encoder.layer" and rows[0]["count"] == 6
    assert LAYER_PARAMS <= rows[0]["params_per_copy"] <= LAYER_PARAMS + 4 and rows[0]["copies"] == LAYERS
    assert cli_main(["inspect", str(EXAMPLES / "fashion_cnn.onnx"), "--repeats"]) == 0
    out = capsys.readouterr().out
    assert "layer1" in out and "not a repeat: layer2 (2 copies)" in out
