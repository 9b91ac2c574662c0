"""Real pretrained models, exported from torch with both exporters, load into the IR and round-trip exactly.

MobileNetV2 with its ImageNet weights on real photos; all-MiniLM-L6-v2 on real
sentences (attention-mask path included). "Exactly": the exported model's
outputs under ONNX Runtime equal the original's within rtol 1e-5, atol 1e-6.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.backends.fidelity import ort_session, run_ort
from nasc.examples import zoo
from nasc.ir import verify

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def mobilenet(request, tmp_path_factory) -> tuple[str, Path]:
    import torch

    path = tmp_path_factory.mktemp("mnv2") / f"mobilenet_v2_{request.param}.onnx"
    zoo.export_onnx(zoo.mobilenet_v2(), (torch.zeros(1, 3, 224, 224),), path, dynamo=request.param == "dynamo",
                    input_names=["image"], output_names=["logits"])
    return request.param, path


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def minilm(request, tmp_path_factory) -> tuple[str, Path, dict[str, np.ndarray]]:
    module, inputs = zoo.minilm(max_length=16)
    path = tmp_path_factory.mktemp("minilm") / f"minilm_{request.param}.onnx"
    zoo.export_onnx(module, inputs, path, dynamo=request.param == "dynamo", output_names=["last_hidden_state"])
    return request.param, path, {k: v.numpy() for k, v in inputs.items()}


def roundtrip_outputs(path: Path, feeds: list[dict[str, np.ndarray]], tmp_path: Path):
    graph = nasc.load(path)
    verify(graph)
    out = nasc.export_onnx(graph, tmp_path / "roundtrip.onnx")
    ref_sess, new_sess = ort_session(str(path)), ort_session(str(out))
    return graph, [(run_ort(ref_sess, f), run_ort(new_sess, f)) for f in feeds]


def test_mobilenet_v2_round_trip_is_exact_on_photos(mobilenet, tmp_path):
    exporter, path = mobilenet
    photos, names = zoo.imagenet_photos(224)
    graph, results = roundtrip_outputs(path, [{"image": photos[i : i + 1]} for i in range(len(photos))], tmp_path)
    for (ref,), (got,) in results:
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    # the weights are real: chelsea is a cat (ImageNet classes 281-285)
    assert 281 <= int(np.argmax(results[0][0][0])) <= 285, names[0]
    s = graph.summary()
    assert 3_400_000 < s["params"] < 3_600_000
    assert s["ops"]["Conv"] == 52
    assert 290e6 < s["macs"] < 320e6  # MobileNetV2 at 224: ~300 M MACs
    scopes = {n.scope for n in graph.nodes_by_op("Conv")}
    expected = "features.3.conv.0.0" if exporter == "torchscript" else "features.3.conv.0.1"  # dynamo fuses BN into conv
    assert expected in scopes, sorted(scopes)[:10]


def test_minilm_round_trip_is_exact_with_attention_mask(minilm, tmp_path):
    _exporter, path, inputs = minilm
    assert inputs["attention_mask"].min() == 0  # padding present: the mask path is exercised
    graph, results = roundtrip_outputs(path, [inputs], tmp_path)
    (ref,), (got,) = results[0]
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    emb = zoo.sentence_embedding(got, inputs["attention_mask"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert 22_000_000 < graph.summary()["params"] < 23_500_000


def test_minilm_has_six_identical_layer_scopes(minilm):
    _, path, _ = minilm
    graph = nasc.load(path)
    per_layer: dict[str, Counter] = {}
    for n in graph.nodes:
        parts = n.scope.split(".")
        if len(parts) >= 3 and parts[:2] == ["encoder", "layer"]:
            per_layer.setdefault(".".join(parts[:3]), Counter())[n.op] += 1
    assert sorted(per_layer) == [f"encoder.layer.{i}" for i in range(6)]
    first = per_layer["encoder.layer.0"]
    assert first["MatMul"] >= 6 and first["Softmax"] == 1
    assert all(c == first for c in per_layer.values())


def test_export_keeps_input_output_names_and_scopes(minilm, tmp_path):
    import onnx

    _, path, _ = minilm
    graph = nasc.load(path)
    out = onnx.load(str(nasc.export_onnx(graph, tmp_path / "m.onnx")))
    orig = onnx.load(str(path))
    assert [i.name for i in out.graph.input] == [i.name for i in orig.graph.input if i.name not in
                                                 {t.name for t in orig.graph.initializer}]
    assert [o.name for o in out.graph.output] == ["last_hidden_state"]
    back = nasc.load(tmp_path / "m.onnx")
    assert [n.scope for n in back.nodes] == [n.scope for n in graph.nodes]
    assert [n.name for n in back.nodes] == [n.name for n in graph.nodes]
    assert sorted(c.name for c in back.constants) == sorted(c.name for c in graph.constants)
