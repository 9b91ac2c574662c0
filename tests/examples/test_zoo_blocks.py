"""The pruning zoo (examples/zoo_blocks.py) through the TorchScript exporter (opset 17), nasc's ONNX frontend and
nasc's ONNX exporter: ONNX Runtime on the exported file and on nasc's re-export both match torch within 1e-4
absolute on the example input, and each ONNX graph really holds the structure the block is there for
(channel shuffle, strided-slice patch merging, repeat_kv's Expand, DepthToSpace, a depthwise Conv, a tied weight).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import nasc
from nasc.examples import zoo
from nasc.examples.zoo_blocks import BLOCKS, Block, gqa_block
from nasc.ir.core import Graph

ATOL = 1e-4  # absolute, on outputs of magnitude ~1-10 (the largest seen is 1.5e-5, tied_lm's logits)

CASES: dict[str, Callable[[], Block]] = {**BLOCKS, "gqa_block_rope": lambda: gqa_block(rope=True)}


@dataclass
class Exported:
    model: onnx.ModelProto  # the TorchScript exporter's file
    graph: Graph  # nasc.load of that file
    ref: np.ndarray  # torch's output
    ort: np.ndarray  # ONNX Runtime on the exported file
    ort_nasc: np.ndarray  # ONNX Runtime on nasc.export_onnx(graph)
    params: int


def run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


@pytest.fixture(scope="module", params=list(CASES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    module, inputs = CASES[request.param]()
    tmp = tmp_path_factory.mktemp(request.param)
    path = zoo.export_onnx(module, inputs, tmp / "block.onnx", dynamo=False)
    graph = nasc.load(path)
    again = nasc.export_onnx(graph, tmp / "nasc.onnx")
    with torch.no_grad():
        ref = module(*inputs).numpy()
    x = inputs[0].numpy()
    return Exported(onnx.load(str(path)), graph, ref, run(path, x), run(again, x),
                    sum(p.numel() for p in module.parameters()))


def test_onnx_runtime_matches_torch(exported: Exported) -> None:
    assert exported.ort.shape == exported.ref.shape and exported.ort_nasc.shape == exported.ref.shape
    np.testing.assert_allclose(exported.ort, exported.ref, rtol=0, atol=ATOL)
    np.testing.assert_allclose(exported.ort_nasc, exported.ref, rtol=0, atol=ATOL)
    assert 1_000 < exported.params < 1_000_000
    assert not exported.graph.summary()["opaque_ops"]


# ---- structure, read from the ONNX file -----------------------------------------------------------------------


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant node outputs by name."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def attr(node: onnx.NodeProto, name: str) -> object:
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def test_structure(exported: Exported, request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.params["exported"]
    m, prod, const = exported.model, producers(exported.model), constants(exported.model)
    if name == "shufflenet_block":
        # channel shuffle: Reshape [1, 2, 24, H, W] -> Transpose(1, 2) -> Reshape [1, 48, H, W], once per unit
        shuffles = [t for t in nodes(m, "Transpose")
                    if prod[t.input[0]].op_type == "Reshape"
                    and any(n.op_type == "Reshape" and t.output[0] in n.input for n in m.graph.node)]
        assert len(shuffles) == 2
        assert all(list(attr(t, "perm")) == [0, 2, 1, 3, 4] for t in shuffles)  # type: ignore[call-overload]
        assert len(nodes(m, "Concat")) == 2 and len(nodes(m, "Slice")) == 4  # chunk -> two Slices, cat
    elif name == "swin_block":
        # patch merging: four Slices with step 2 on H, then on W, and a Concat of the four on the channel axis
        steps = [const[s.input[4]] for s in nodes(m, "Slice") if len(s.input) > 4]
        assert sum(int(np.all(st == 2)) for st in steps) == 6
        (cat,) = nodes(m, "Concat")
        assert len(cat.input) == 4 and attr(cat, "axis") == -1
        assert len(nodes(m, "Softmax")) == 1 and len(nodes(m, "LayerNormalization")) == 3
    elif name.startswith("gqa_block"):
        # repeat_kv: an Expand for k and one for v in each of the two layers; k/v projections have 2 heads of 16
        assert len(nodes(m, "Expand")) == 4 and len(nodes(m, "Softmax")) == 2
        widths = sorted(const[n.input[1]].shape[1] for n in nodes(m, "MatMul") if n.input[1] in const)
        assert widths.count(32) == 4 and widths.count(128) == 6 and widths.count(256) == 4
        assert len(nodes(m, "Neg")) == (4 if name.endswith("rope") else 0)  # rotate_half of q and k per layer
    elif name == "pixelshuffle_upsampler":
        (d2s,) = nodes(m, "DepthToSpace")
        assert attr(d2s, "blocksize") == 2 and attr(d2s, "mode") == b"CRD"
        assert prod[d2s.input[0]].op_type == "Conv" and exported.ref.shape == (1, 3, 32, 32)
    elif name == "convnext_block":
        depthwise = [c for c in nodes(m, "Conv") if attr(c, "group") == 32]
        assert len(depthwise) == 2 and all(const[c.input[1]].shape == (32, 1, 7, 7) for c in depthwise)
        # the layer scale: a Mul by a [32] parameter between the second Linear and the permute back
        gammas = [n for n in nodes(m, "Mul") if any(const.get(i, np.empty(0)).shape == (32,) for i in n.input)]
        assert len(gammas) == 2
    elif name == "tied_lm":
        (gather,) = nodes(m, "Gather")
        assert const[gather.input[0]].shape == (512, 64) and exported.ref.shape == (1, 16, 512)
    else:
        pytest.fail(f"no structural check for {name}")


# ---- the tied weight --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tied_unfolded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tied_lm exported without constant folding, so the file keeps the tie (folding writes a transposed copy)."""
    module, inputs = BLOCKS["tied_lm"]()
    path = tmp_path_factory.mktemp("tied") / "tied_lm.onnx"
    with torch.no_grad():
        torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=17, do_constant_folding=False)
    return path


def test_tied_weight_is_one_initializer_in_the_file(tied_unfolded: Path) -> None:
    m = onnx.load(str(tied_unfolded))
    (weight,) = [t.name for t in m.graph.initializer if tuple(t.dims) == (512, 64)]
    users = [n for n in m.graph.node if weight in n.input]
    assert sorted(n.op_type for n in users) == ["Gather", "Transpose"]
    (transpose,) = (n for n in users if n.op_type == "Transpose")
    (head,) = (n for n in m.graph.node if transpose.output[0] in n.input)
    assert head.op_type == "MatMul" and head.output[0] == m.graph.output[0].name


def test_default_export_duplicates_the_tied_weight(tmp_path: Path) -> None:
    """zoo.export_onnx folds constants: the head's weight becomes a separate, transposed initializer."""
    module, inputs = BLOCKS["tied_lm"]()
    m = onnx.load(str(zoo.export_onnx(module, inputs, tmp_path / "tied_lm.onnx", dynamo=False)))
    shapes = sorted(tuple(t.dims) for t in m.graph.initializer if 512 in t.dims)
    assert shapes == [(64, 512), (512, 64)]


def test_tied_weight_is_one_value_in_the_ir(tied_unfolded: Path) -> None:
    """The frontend does not fold a node that reads a shared weight (nor does simplify): the tie survives."""
    graph = nasc.optimize(nasc.load(tied_unfolded), "simplify,fuse")
    (gather,) = graph.nodes_by_op("Gather")
    weight = gather.input(0)
    assert weight.is_const and weight.shape == (512, 64)
    head = next(n for n in graph.nodes if n.op == "MatMul" and n.outputs[0] in graph.outputs)
    reaches = {weight}  # the head's weight is `weight` itself, or `weight` through layout-only ops
    for n in graph.nodes:
        if n.op in ("Transpose", "Reshape") and n.inputs and n.inputs[0] in reaches:
            reaches.add(n.outputs[0])
    assert head.input(1) in reaches
