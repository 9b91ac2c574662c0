"""Train and export the example models shipped in examples/ (deterministic, CPU, well under two minutes).

    python tools/make_examples.py            # writes examples/digits_cnn.onnx, digits_test.npz, digits_cnn.json

digits_cnn: a small CNN (Conv-BN-ReLU blocks, a residual add, global pooling, a
linear head) trained on scikit-learn's 8x8 handwritten digits (1,797 real
images). 80/20 stratified split; the held-out 20% is shipped as the labelled
test set, and the accuracy measured on it here is recorded in digits_cnn.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SEED = 0


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.5) / 0.5  # [-1, 1]
    x = x[:, None, :, :]
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)  # type: ignore[return-value]


def build_model():  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = Block(1, 16, 1)
            self.res = Block(16, 16, 1)
            self.down = Block(16, 32, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            h = h + self.res(h)
            h = self.down(h)
            return self.head(torch.flatten(self.pool(h), 1))

    return DigitsCNN()


def train_digits(epochs: int = 30) -> tuple[object, float]:
    import torch

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    xtr, xte, ytr, yte = load_digits_split()
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    return model, acc


def export_digits(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    x = torch.zeros(1, 1, 8, 8)
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits"],
                      opset_version=17, dynamo=False)


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    preds = [int(np.argmax(sess.run(None, {"image": x[i : i + 1]})[0])) for i in range(len(x))]
    return float(np.mean(np.array(preds) == y))


def main() -> None:
    t0 = time.perf_counter()
    model, acc = train_digits()
    _, xte, _, yte = load_digits_split()
    EXAMPLES.mkdir(exist_ok=True)
    onnx_path = EXAMPLES / "digits_cnn.onnx"
    export_digits(model, onnx_path)
    np.savez_compressed(EXAMPLES / "digits_test.npz", image=xte, label=yte)
    ort_acc = onnx_accuracy(onnx_path, xte, yte)
    info = {
        "model": "digits_cnn.onnx",
        "data": "scikit-learn load_digits, 8x8 grayscale scaled to [-1, 1], 80/20 stratified split (seed 0)",
        "test_samples": len(yte),
        "accuracy_torch": round(acc, 4),
        "accuracy_onnxruntime": round(ort_acc, 4),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    (EXAMPLES / "digits_cnn.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
