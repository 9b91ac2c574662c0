"""The shipped Fashion-MNIST Vision Transformer (examples/fashion_vit.onnx, built by tools/make_examples.py --only
vit): nasc loads it, ONNX Runtime on the shipped 1,000 test images (examples/fashion_test.npz, shared with
fashion_cnn) gives the accuracy that fashion_vit.json records, its six encoder blocks keep their module scopes
(``blocks.0`` ... ``blocks.5``, each the same ops: what the layer-tying pass looks for), and simplify,fuse keeps
its outputs within float rounding of ONNX Runtime."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import nasc
from nasc.backends.fidelity import run_graph
from nasc.ir.analysis import scope_prefix

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODEL = EXAMPLES / "fashion_vit.onnx"
BLOCKS = [f"blocks.{i}" for i in range(6)]


@pytest.fixture(scope="module")
def info() -> dict:
    return json.loads((EXAMPLES / "fashion_vit.json").read_text())


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    d = np.load(EXAMPLES / "fashion_test.npz")
    return d["image"], d["label"]


def test_loads_with_the_recorded_shape_and_size(info: dict) -> None:
    graph = nasc.load(MODEL)
    assert [v.name for v in graph.inputs] == ["image"] and [v.name for v in graph.outputs] == ["logits"]
    assert [v.shape for v in graph.inputs] == [(1, 1, 28, 28)] and [v.shape for v in graph.outputs] == [(1, 10)]
    summary = graph.summary()
    assert summary["macs"] == info["macs"]
    assert info["params"] <= 250_000  # torch's count; nasc's also counts the small shape/index constants
    assert 0 <= summary["params"] - info["params"] < 1000
    assert info["params"] * 4 < 1024 * 1024  # float32 weights fit the STM32F746's 1 MB flash


def test_shipped_accuracy_matches_the_json(info: dict, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    assert x.shape == (1000, 1, 28, 28) and x.dtype == np.float32 and info["shipped_test_samples"] == len(y)
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    preds = np.array([int(np.argmax(sess.run(None, {"image": x[i : i + 1]})[0])) for i in range(len(x))])
    acc = float(np.mean(preds == y))
    assert abs(acc - info["shipped_accuracy_onnxruntime"]) <= 0.001
    assert acc > 0.85 and info["accuracy_onnxruntime"] > 0.85


def test_six_blocks_with_the_same_ops() -> None:
    graph = nasc.load(MODEL)
    per_block: dict[str, Counter[str]] = {}
    for node in graph.nodes:
        prefix = scope_prefix(node.scope, 1)  # "blocks.3" (numeric parts stay with their parent)
        if prefix.startswith("blocks."):
            per_block.setdefault(prefix, Counter())[node.op] += 1
    assert sorted(per_block) == BLOCKS
    first = per_block["blocks.0"]
    assert all(per_block[b] == first for b in BLOCKS)
    assert first["MatMul"] >= 6 and first["Softmax"] == 1  # qkv, q@k^T, @v, proj, fc1, fc2
    assert {scope_prefix(n.scope, 3) for n in graph.nodes if n.scope.startswith("blocks.0.")} >= {
        "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.0.norm1",
        "blocks.0.norm2"}


def test_simplify_fuse_matches_onnxruntime(data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    graph = nasc.optimize(nasc.load(MODEL), "simplify,fuse")
    assert len(graph.nodes) < len(nasc.load(MODEL).nodes)
    feeds = [{"image": x[i : i + 1]} for i in range(32)]
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, f)[0] for f in feeds])
    got = np.concatenate([out[0] for out in run_graph(graph, feeds)])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()
