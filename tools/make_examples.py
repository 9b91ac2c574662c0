"""Train and export the example models shipped in examples/ (deterministic, CPU).

    python tools/make_examples.py                 # all examples
    python tools/make_examples.py --only digits   # examples/digits_cnn.onnx, digits_test.npz, digits_cnn.json
    python tools/make_examples.py --only fashion  # examples/fashion_cnn.onnx, fashion_test.npz, fashion_cnn.json
    python tools/make_examples.py --only vit      # examples/fashion_vit.onnx, fashion_vit.json

digits_cnn: a small CNN (Conv-BN-ReLU blocks, a residual add, global pooling, a
linear head) trained on scikit-learn's 8x8 handwritten digits (1,797 real
images). 80/20 stratified split; the held-out 20% is shipped as the labelled
test set, and the accuracy measured on it here is recorded in digits_cnn.json.
Under a minute.

fashion_cnn: a ResNet-style CNN (stem, three stages of two basic blocks at
32/64/128 channels, strided blocks with a 1x1 conv on the skip, global pooling,
a linear head) trained on Fashion-MNIST's 60,000 training images (Debian
dataset-fashion-mnist, read by examples/datasets.py). The first 1,000 of the
10,000 test images are shipped; fashion_cnn.json records the accuracy on the
full test set and on the shipped 1,000, in torch and ONNX Runtime. Two epochs:
about 7 minutes on two otherwise idle cores (one batch-128 step takes ~0.46 s),
longer when other jobs share them.

fashion_vit: a small timm-style pre-norm Vision Transformer on the same data and the same input ([1, 1, 28, 28]
scaled to [-1, 1], named "image"), so the shipped fashion_test.npz serves both: 7x7 patches (16 tokens) embedded
to 64 by a strided conv, a learned cls token and position embedding, six encoder blocks in ``blocks`` (ONNX
scopes ``blocks.0`` ... ``blocks.5``; examples/zoo.py's Block: LayerNorm, 4-head attention, residual, LayerNorm,
GELU MLP 64->128->64, residual), a final LayerNorm and a linear head on the cls token; about 206k params. AdamW
with a linear warm-up and a cosine schedule; fashion_vit.json records the accuracies, like fashion_cnn.json. It
reuses fashion_test.npz (build --only fashion first; it is shipped). Ten epochs: one batch-128 step takes ~0.05 s
on two idle cores (~25 s an epoch), 40-45 s an epoch with other jobs on them; the recorded run took 18 minutes.
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


def make_digits() -> None:
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


# ---- fashion_cnn ----------------------------------------------------------------------------------------------

FASHION_SHIPPED = 1000  # the first test images, shipped as examples/fashion_test.npz


def build_fashion_model():  # type: ignore[no-untyped-def]
    """ResNet-style: stem conv-BN-ReLU (1->32), stages of two basic blocks at 32 (28x28), 64 (14x14), 128 (7x7)
    channels, the first block of stages 2 and 3 strided with a 1x1 strided conv-BN on the skip; global average
    pool, Linear(128, 10). Module names follow torchvision's ResNet (``layer2.0.downsample.0``)."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class FashionCNN(nn.Module):
        def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), num_classes: int = 10) -> None:
            super().__init__()
            w1, w2, w3 = widths
            self.conv1 = nn.Conv2d(1, w1, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w1)
            self.relu = nn.ReLU()
            self.layer1 = nn.Sequential(BasicBlock(w1, w1, 1), BasicBlock(w1, w1, 1))
            self.layer2 = nn.Sequential(BasicBlock(w1, w2, 2), BasicBlock(w2, w2, 1))
            self.layer3 = nn.Sequential(BasicBlock(w2, w3, 2), BasicBlock(w3, w3, 1))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(w3, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return FashionCNN()


def train_epochs(model, opt, sched, xtr: np.ndarray, ytr: np.ndarray, epochs: int, batch: int,  # type: ignore[no-untyped-def]
                 clip: float | None = None) -> tuple[object, float]:
    """Cross-entropy training in seeded random batches, the scheduler stepped per batch; (model, seconds)."""
    import torch

    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        print(f"epoch {epoch + 1}/{epochs}: train loss {total / seen:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval(), time.perf_counter() - t0


def train_fashion(epochs: int = 2, batch: int = 128) -> tuple[object, float]:
    """SGD (Nesterov momentum 0.9, weight decay 5e-4) with a one-cycle schedule peaking at lr 0.1; seed 0.

    Returns the model in eval mode and the training wall time in seconds.
    """
    import torch

    from nasc.examples.datasets import load_fashion_mnist

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    xtr, ytr, _, _ = load_fashion_mnist()
    model = build_fashion_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * ((len(xtr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.25)
    return train_epochs(model, opt, sched, xtr, ytr, epochs, batch)


def torch_accuracy(model, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        preds = np.concatenate([model(torch.from_numpy(x[i : i + batch])).argmax(1).numpy()
                                for i in range(0, len(x), batch)])
    return float(np.mean(preds == y))


def cpu_model() -> str:
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def fashion_record(model, onnx_path: Path, epochs: int, train_seconds: float,  # type: ignore[no-untyped-def]
                   test: tuple[np.ndarray, np.ndarray], shipped: tuple[np.ndarray, np.ndarray],
                   **after_data: object) -> dict[str, object]:
    """What examples/<model>.json records for a Fashion-MNIST example: data, size, training, accuracies."""
    import nasc

    (xte, yte), (xs, ys) = test, shipped
    return {
        "model": onnx_path.name,
        "data": "Fashion-MNIST (Debian dataset-fashion-mnist), 28x28 grayscale scaled to [-1, 1]; trained on the "
                "60,000 training images, tested on the 10,000 test images; fashion_test.npz holds the first 1,000",
        **after_data,
        "params": int(sum(p.numel() for p in model.parameters())),
        "macs": int(nasc.load(onnx_path).summary()["macs"]),
        "epochs": epochs,
        "train_seconds": round(train_seconds, 1),
        "cpu": f"{cpu_model()}, torch.set_num_threads(2)",
        "test_samples": len(yte),
        "accuracy_torch": round(torch_accuracy(model, xte, yte), 4),
        "accuracy_onnxruntime": round(onnx_accuracy(onnx_path, xte, yte), 4),
        "shipped_test_samples": len(ys),
        "shipped_accuracy_torch": round(torch_accuracy(model, xs, ys), 4),
        "shipped_accuracy_onnxruntime": round(onnx_accuracy(onnx_path, xs, ys), 4),
        "onnx_bytes": onnx_path.stat().st_size,
    }


def make_fashion(epochs: int = 2) -> None:
    import torch

    from nasc.examples.datasets import load_fashion_mnist

    model, train_seconds = train_fashion(epochs)
    _, _, xte, yte = load_fashion_mnist()
    EXAMPLES.mkdir(exist_ok=True)
    onnx_path = EXAMPLES / "fashion_cnn.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(onnx_path), input_names=["image"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    xs, ys = xte[:FASHION_SHIPPED], yte[:FASHION_SHIPPED]
    npz_path = EXAMPLES / "fashion_test.npz"
    np.savez_compressed(npz_path, image=xs, label=ys)
    info = fashion_record(model, onnx_path, epochs, train_seconds, (xte, yte), (xs, ys))
    info["test_npz_bytes"] = npz_path.stat().st_size
    (EXAMPLES / "fashion_cnn.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


# ---- fashion_vit ----------------------------------------------------------------------------------------------

VIT_CONFIG = {"patch": 7, "dim": 64, "depth": 6, "heads": 4, "mlp_ratio": 2.0}


def build_fashion_vit(patch: int = 7, dim: int = 64, depth: int = 6, heads: int = 4, mlp_ratio: float = 2.0):  # type: ignore[no-untyped-def]
    """timm-style ViT for 1x28x28: ``patch_embed`` Conv2d(1, dim, patch, stride patch), a learned ``cls_token``
    prepended and ``pos_embed`` added, ``blocks`` (an nn.ModuleList of examples/zoo.py's pre-norm Block, so ONNX
    node scopes read ``blocks.0.attn.qkv``), a final LayerNorm ``norm`` and a Linear ``head`` on the cls token."""
    import torch
    from torch import nn

    from nasc.examples.zoo import _vit_classes

    *_, Block = _vit_classes()

    class FashionViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            tokens = (28 // patch) ** 2
            self.patch_embed = nn.Conv2d(1, dim, patch, patch)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
            self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, 10)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [b, tokens, dim]
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x)[:, 0])

    return FashionViT()


def train_fashion_vit(epochs: int = 10, batch: int = 128, lr: float = 2e-3) -> tuple[object, float]:
    """AdamW (weight decay 0.05) with one epoch of linear warm-up then a per-step cosine decay to 0; seed 0.

    Returns the model in eval mode and the training wall time in seconds.
    """
    import torch

    from nasc.examples.datasets import load_fashion_mnist

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    xtr, ytr, _, _ = load_fashion_mnist()
    model = build_fashion_vit(**VIT_CONFIG)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "cls_token" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n and "cls_token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=lr)
    per_epoch = (len(xtr) + batch - 1) // batch
    warmup, steps = per_epoch, epochs * per_epoch
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps - warmup),
    ], milestones=[warmup])
    return train_epochs(model, opt, sched, xtr, ytr, epochs, batch, clip=1.0)


def make_fashion_vit(epochs: int = 10) -> None:
    import torch

    from nasc.examples.datasets import load_fashion_mnist
    from nasc.examples.zoo import export_onnx

    npz_path = EXAMPLES / "fashion_test.npz"
    if not npz_path.is_file():
        raise SystemExit(f"{npz_path} missing: build it with --only fashion first")
    model, train_seconds = train_fashion_vit(epochs)
    _, _, xte, yte = load_fashion_mnist()
    data = np.load(npz_path)
    xs, ys = data["image"], data["label"]
    np.testing.assert_array_equal(xs, xte[:FASHION_SHIPPED])  # the same images, the same [-1, 1] scaling
    onnx_path = export_onnx(model, (torch.zeros(1, 1, 28, 28),), EXAMPLES / "fashion_vit.onnx", dynamo=False,
                            input_names=["image"], output_names=["logits"], opset=17)
    info = fashion_record(model, onnx_path, epochs, train_seconds, (xte, yte), (xs, ys), architecture={
        **VIT_CONFIG, "tokens": (28 // VIT_CONFIG["patch"]) ** 2 + 1, "num_classes": 10})
    (EXAMPLES / "fashion_vit.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("digits", "fashion", "vit"), help="build just this example")
    parser.add_argument("--fashion-epochs", type=int, default=2, help="training epochs of fashion_cnn (default 2)")
    parser.add_argument("--vit-epochs", type=int, default=10, help="training epochs of fashion_vit (default 10)")
    args = parser.parse_args(argv)
    if args.only in (None, "digits"):
        make_digits()
    if args.only in (None, "fashion"):
        make_fashion(args.fashion_epochs)
    if args.only in (None, "vit"):
        make_fashion_vit(args.vit_epochs)


if __name__ == "__main__":
    main()
