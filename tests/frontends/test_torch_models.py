"""Whole models through the PyTorch frontend (torch.export -> core ATen -> IR): ONNX Runtime on the exported IR
matches torch within rtol 1e-4, atol 1e-5 in fp32, the graph verifies, and module scopes survive.

MobileNetV2 with its ImageNet weights on real photos; ResNet-18, EfficientNet-lite (with and without
squeeze-excitation), a ViT encoder block and the DS-CNN keyword spotter randomly initialised (fixed seeds);
all-MiniLM-L6-v2 on padded sentences (the attention-mask path). Each model is converted once per module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from nasc.backends.fidelity import ort_session, run_ort
from nasc.backends.onnx import to_onnx
from nasc.examples import zoo
from nasc.frontends.torch import from_torch
from nasc.ir import verify
from nasc.ir.core import Graph

RTOL, ATOL = 1e-4, 1e-5


@dataclass
class Converted:
    graph: Graph
    ref: np.ndarray  # torch's output
    got: np.ndarray  # ONNX Runtime's output on the converted graph

    def conv_scopes(self) -> set[str]:
        return {n.scope for n in self.graph.nodes_by_op("Conv")}


def convert(module: torch.nn.Module, inputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> Converted:
    graph = from_torch(module, inputs)
    with torch.no_grad():
        ref = module(**inputs) if isinstance(inputs, Mapping) else module(*inputs)
    tensors = dict(inputs) if isinstance(inputs, Mapping) else {v.name: x for v, x in zip(graph.inputs, inputs)}
    feeds = {v.name: tensors[v.name].numpy() for v in graph.inputs}
    (got,) = run_ort(ort_session(to_onnx(graph)), feeds)
    return Converted(graph, ref.numpy(), got)


def image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def assert_close(c: Converted) -> None:
    assert c.got.shape == c.ref.shape and c.got.dtype == c.ref.dtype
    np.testing.assert_allclose(c.got, c.ref, rtol=RTOL, atol=ATOL)
    verify(c.graph)


# ---- MobileNetV2, real weights and photos ------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet() -> Converted:
    photos, _ = zoo.imagenet_photos(224)
    return convert(zoo.mobilenet_v2(), (torch.from_numpy(photos),))


def test_mobilenet_v2_on_photos(mobilenet: Converted) -> None:
    assert_close(mobilenet)
    assert mobilenet.got.shape == (len(zoo.PHOTOS), 1000)
    assert 281 <= int(np.argmax(mobilenet.got[0])) <= 285  # chelsea is still a cat
    assert np.argmax(mobilenet.got, axis=1).tolist() == np.argmax(mobilenet.ref, axis=1).tolist()
    s = mobilenet.graph.summary()
    assert s["ops"]["Conv"] == 52 and s["ops"]["BatchNormalization"] == 52
    assert 3_400_000 < s["params"] < 3_600_000
    assert "features.3.conv.0.0" in mobilenet.conv_scopes()  # the conv's own module, BN not folded into it
    assert {c.name for c in mobilenet.graph.constants} >= {"features.0.0.weight", "classifier.1.bias"}


# ---- ResNet-18 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[224, 64], ids=["224", "64"])
def resnet(request: pytest.FixtureRequest) -> Converted:
    return convert(zoo.resnet18(), (image(1, 3, request.param, request.param),))


def test_resnet18(resnet: Converted) -> None:
    assert_close(resnet)
    assert resnet.got.shape == (1, 1000)
    scopes = resnet.conv_scopes()
    assert {"conv1", "layer1.0.conv1", "layer1.1.conv2", "layer2.0.downsample.0", "layer4.1.conv2"} <= scopes
    ops = resnet.graph.summary()["ops"]
    assert ops["Conv"] == 20 and ops["MaxPool"] == 1 and ops["Gemm"] == 1
    assert 11_600_000 < resnet.graph.summary()["params"] < 11_800_000  # ResNet-18: 11.69 M


# ---- EfficientNet-lite ----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "se"])
def efficientnet(request: pytest.FixtureRequest) -> tuple[bool, Converted]:
    return request.param, convert(zoo.efficientnet_lite(se=request.param), (image(1, 3, 96, 96, seed=1),))


def test_efficientnet_lite(efficientnet: tuple[bool, Converted]) -> None:
    se, c = efficientnet
    assert_close(c)
    assert c.got.shape == (1, 1000)
    assert np.abs(c.ref).max() > 1e-3  # the logits are not vanishingly small
    scopes = c.conv_scopes()
    assert {"stem.0", "blocks.2.block.1.0", "head.0"} <= scopes  # blocks.2: the first 5x5 depthwise, stride 2
    if se:
        assert "blocks.2.block.2.fc1" in scopes
        assert any(n.scope.startswith("blocks.2.block.2") for n in c.graph.nodes_by_op("Sigmoid"))
    else:
        assert not c.graph.nodes_by_op("Sigmoid")


# ---- ViT encoder block -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit() -> Converted:
    return convert(zoo.vit_block(), (image(1, 16, 192, seed=2),))


def test_vit_block(vit: Converted) -> None:
    assert_close(vit)
    ops = vit.graph.summary()["ops"]
    assert ops["LayerNormalization"] == 2 and ops["Softmax"] == 1 and ops["Gelu"] == 1
    assert {n.scope for n in vit.graph.nodes_by_op("Softmax")} == {"attn"}
    assert {n.scope for n in vit.graph.nodes_by_op("Gelu")} == {"mlp.act"}


# ---- all-MiniLM-L6-v2 with padding --------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> tuple[dict[str, torch.Tensor], Converted]:
    module, inputs = zoo.minilm(max_length=16)
    return inputs, convert(module, inputs)


def test_minilm_with_attention_mask(minilm: tuple[dict[str, torch.Tensor], Converted]) -> None:
    inputs, c = minilm
    assert int(inputs["attention_mask"].min()) == 0  # padding present: the mask path is exercised
    assert_close(c)
    assert [v.name for v in c.graph.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    emb = zoo.sentence_embedding(c.got, inputs["attention_mask"])
    np.testing.assert_allclose(emb, zoo.sentence_embedding(c.ref, inputs["attention_mask"]), rtol=RTOL, atol=ATOL)
    layers = {n.scope.split(".")[2] for n in c.graph.nodes_by_op("Softmax") if n.scope.startswith("encoder.layer.")}
    assert layers == {str(i) for i in range(6)}
    assert 22_000_000 < c.graph.summary()["params"] < 23_500_000


# ---- DS-CNN keyword spotter ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ds_cnn() -> Converted:
    return convert(zoo.ds_cnn(), (image(1, 1, 49, 10, seed=3),))


def test_ds_cnn(ds_cnn: Converted) -> None:
    assert_close(ds_cnn)
    assert ds_cnn.got.shape == (1, 12)
    first = ds_cnn.graph.nodes_by_op("Conv")[0]
    assert first.scope == "conv1" and first.attr("kernel_shape") == (10, 4) and first.attr("strides") == (2, 2)
    depthwise = [n for n in ds_cnn.graph.nodes_by_op("Conv") if n.attr("group", 1) == 64]
    assert [n.scope for n in depthwise] == [f"blocks.{i}.0" for i in range(4)]
    assert [n.scope for n in ds_cnn.graph.nodes_by_op("AveragePool")] == ["avgpool"]
