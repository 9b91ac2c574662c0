"""The shipped Fashion-MNIST CNN (examples/fashion_cnn.onnx, built by tools/make_examples.py --only fashion): nasc
loads it, ONNX Runtime on the shipped 1,000 test images gives the accuracy that fashion_cnn.json records, and the
data loader (examples/datasets.py) reads the Debian package's full 60,000 + 10,000 images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

import nasc
from nasc.examples.datasets import load_fashion_mnist

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_shipped_accuracy_matches_the_json() -> None:
    info = json.loads((EXAMPLES / "fashion_cnn.json").read_text())
    data = np.load(EXAMPLES / "fashion_test.npz")
    x, y = data["image"], data["label"]
    assert x.shape == (1000, 1, 28, 28) and x.dtype == np.float32 and y.shape == (1000,) and y.dtype == np.int64
    assert info["shipped_test_samples"] == len(y)

    graph = nasc.load(EXAMPLES / "fashion_cnn.onnx")
    assert [v.shape for v in graph.inputs] == [(1, 1, 28, 28)] and [v.shape for v in graph.outputs] == [(1, 10)]
    assert graph.summary()["macs"] == info["macs"]

    sess = ort.InferenceSession(str(EXAMPLES / "fashion_cnn.onnx"), providers=["CPUExecutionProvider"])
    preds = np.array([int(np.argmax(sess.run(None, {"image": x[i : i + 1]})[0])) for i in range(len(x))])
    acc = float(np.mean(preds == y))
    assert abs(acc - info["shipped_accuracy_onnxruntime"]) <= 0.001
    assert acc > 0.88


def test_load_fashion_mnist() -> None:
    xtr, ytr, xte, yte = load_fashion_mnist()
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    assert xtr.dtype == xte.dtype == np.float32 and ytr.dtype == yte.dtype == np.int64
    assert xtr.min() == -1.0 and xtr.max() == 1.0
    assert sorted(set(ytr.tolist())) == sorted(set(yte.tolist())) == list(range(10))
    assert np.bincount(ytr).tolist() == [6000] * 10 and np.bincount(yte).tolist() == [1000] * 10
    # the shipped test images are the first 1,000 of the test set, unchanged
    data = np.load(EXAMPLES / "fashion_test.npz")
    np.testing.assert_array_equal(data["image"], xte[:1000])
    np.testing.assert_array_equal(data["label"], yte[:1000])
