"""The cost model's corpus: variants of the zoo's families, pass variants of them, and the bundled models.

Each entry writes one ONNX model (torch export, random weights where the timing does not depend on them) and
names the pipeline it is built with. ``nasc profile --corpus`` builds and times them (profile.py) in a fixed
order, quickest first, until its time budget runs out; ``family`` groups the variants of one architecture, for
leave-one-family-out evaluation (tools/bench_predictor.py).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasc.examples import zoo

EXAMPLES = Path(zoo.__file__).resolve().parent

FLOAT = "simplify,fuse"
INT8 = "simplify,fuse,quantize"
PRUNED = "simplify,fuse,prune{macs=0.5}"


@dataclass(frozen=True)
class Entry:
    """One corpus model: its family, a unique name, how to write it as ONNX, and the pipeline to build it with."""

    family: str
    name: str
    make: Callable[[Path], Path]
    passes: str = FLOAT

    @property
    def label(self) -> str:
        return self.name if self.passes == FLOAT else f"{self.name} [{self.passes.removeprefix('simplify,fuse,')}]"


def _export(module: Any, args: tuple[Any, ...], path: Path, inputs: list[str]) -> Path:
    if not path.is_file():
        zoo.export_onnx(module, args, path, dynamo=False, input_names=inputs, output_names=["out"])
    return path


def _image(make: Callable[[], Any], res: int, channels: int = 3) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        import torch

        return _export(make(), (torch.zeros(1, channels, res, res),), path, ["image"])

    return write


def _mobilenet(width: float, classes: int = 1000) -> Any:
    _, _, cls = zoo._mobilenet_classes()
    import torch

    torch.manual_seed(0)
    return cls(num_classes=classes, width_mult=width).eval()


def _resnet(layers: tuple[int, ...]) -> Any:
    import torch

    _, cls = zoo._resnet_classes()
    torch.manual_seed(0)
    return cls(layers=layers).eval()


def _vit(dim: int, heads: int, mlp: float, seq: int) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        import torch

        return _export(zoo.vit_block(dim, heads, mlp), (torch.zeros(1, seq, dim),), path, ["tokens"])

    return write


def _minilm(layers: int, seq: int) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        if path.is_file():
            return path
        model, inputs = zoo.minilm(max_length=seq)
        model.encoder.layer = model.encoder.layer[:layers]
        model.config.num_hidden_layers = layers
        return _export(model, (inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]), path,
                       ["input_ids", "attention_mask", "token_type_ids"])

    return write


def _ds_cnn(frames: int, channels: int = 64) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        import torch

        torch.manual_seed(0)
        model = zoo._ds_cnn_class()(channels=channels, input_size=(frames, 10)).eval()
        return _export(model, (torch.zeros(1, 1, frames, 10),), path, ["mfcc"])

    return write


def _plain_cnn(widths: tuple[int, ...], kernel: int, res: int) -> Callable[[Path], Path]:
    """A VGG-style stack: per width a conv (``kernel`` x ``kernel``)-BN-ReLU then a 2x2 max pool, a linear head."""

    def write(path: Path) -> Path:
        import torch
        from torch import nn

        torch.manual_seed(0)
        layers: list[nn.Module] = []
        c = 3
        for w in widths:
            layers += [nn.Conv2d(c, w, kernel, padding=kernel // 2), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)).eval()
        return _export(model, (torch.zeros(1, 3, res, res),), path, ["image"])

    return write


def _mlp(widths: tuple[int, ...], tokens: int) -> Callable[[Path], Path]:
    """Linear-GELU layers on ``tokens`` rows (a transformer's feed-forward without the attention)."""

    def write(path: Path) -> Path:
        import torch
        from torch import nn

        torch.manual_seed(0)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.GELU()]
        return _export(nn.Sequential(*layers).eval(), (torch.zeros(1, tokens, widths[0]),), path, ["x"])

    return write


def _conv_layer(cin: int, cout: int, kernel: int, stride: int, res: int, groups: int) -> Callable[[Path], Path]:
    """One convolution-BN-ReLU6 layer (depthwise where ``groups`` is ``cin``): one fused kernel of a CNN."""

    def make() -> Any:
        import torch
        from torch import nn

        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups), nn.BatchNorm2d(cout),
                             nn.ReLU6()).eval()

    return _image(make, res, cin)


def _linear_layer(tokens: int, din: int, dout: int, gelu: bool) -> Callable[[Path], Path]:
    """One linear layer on ``tokens`` rows, with a GELU or not: one fused matmul kernel of a transformer."""

    def write(path: Path) -> Path:
        import torch
        from torch import nn

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(din, dout), *([nn.GELU()] if gelu else [])).eval()
        return _export(model, (torch.zeros(1, tokens, din),), path, ["x"])

    return write


#: Single-layer models of the kernel shapes the families' variants leave out (nn-Meter's kernel sampling): they
#: are training data only (tools/bench_predictor.py never scores them), profiled in turns with the families.
KERNELS = "kernels"
KERNEL_SAMPLES = 96


def kernel_entries(count: int = KERNEL_SAMPLES, seed: int = 0) -> list[Entry]:
    """``count`` single-layer float models with seeded random shapes, in turns: a convolution (1x1 to 7x7, stride
    1 or 2), a depthwise convolution, a linear layer (1 to 256 tokens, 64 to 3072 wide). (Quantized ones, one in
    four, measured slightly worse on held-out models: 80% within 10% against 81% without; the families' int8
    variants cover the integer kernels.)"""
    import random

    rng = random.Random(seed)
    chans = (8, 12, 16, 24, 32, 40, 48, 64, 72, 96, 120, 128, 160, 192, 240, 256, 320, 384, 480, 512)
    widths = (64, 96, 128, 192, 256, 320, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 3072)
    out: list[Entry] = []
    for i in range(count):
        kind = i % 3
        if kind == 2:
            t, a, b = rng.choice((1, 2, 4, 8, 16, 24, 32, 49, 50, 64, 65, 96, 128, 197, 256)), rng.choice(widths), \
                rng.choice(widths)
            gelu = rng.random() < 0.5
            out.append(Entry(KERNELS, f"linear_t{t}_{a}-{b}{'_gelu' if gelu else ''}", _linear_layer(t, a, b, gelu)))
            continue
        c = rng.choice(chans)
        stride = rng.choice((1, 1, 2))
        # keep each layer within about 0.3 G multiply-adds: a few ms at most
        res = rng.choice((7, 10, 14, 20, 28, 40, 56, 80, 112))
        if kind == 1:
            k = rng.choice((3, 3, 5, 7))
            out.append(Entry(KERNELS, f"dwconv_c{c}_k{k}_s{stride}_r{res}", _conv_layer(c, c, k, stride, res, c)))
            continue
        k = rng.choice((1, 1, 3, 3, 5, 7))
        cout = rng.choice(chans)
        while (res // stride) ** 2 * c * cout * k * k > 3e8:
            res //= 2
        out.append(Entry(KERNELS, f"conv_c{c}-{cout}_k{k}_s{stride}_r{res}",
                         _conv_layer(c, cout, k, stride, res, 1)))
    return out


def _bundled(name: str) -> Callable[[Path], Path]:
    return lambda _path: EXAMPLES / f"{name}.onnx"


def entries(kind: str = "cpu") -> list[Entry]:
    """The corpus of a target kind (``cpu`` or ``mcu``), in the order it is profiled: small and quick builds first,
    so that a budget cut keeps every family."""
    if kind == "mcu":
        return mcu_entries()
    out: list[Entry] = [Entry("bundled", "digits_cnn", _bundled("digits_cnn")),
                        Entry("bundled", "fashion_cnn", _bundled("fashion_cnn")),
                        Entry("vit", "fashion_vit", _bundled("fashion_vit")),
                        Entry("bundled", "digits_cnn", _bundled("digits_cnn"), INT8),
                        Entry("bundled", "fashion_cnn", _bundled("fashion_cnn"), INT8)]
    out += [Entry("ds_cnn", f"ds_cnn_f{f}_c{c}", _ds_cnn(f, c)) for f, c in ((49, 64), (98, 64), (49, 172), (98, 128))]
    out += [Entry("ds_cnn", "ds_cnn_f49_c64", _ds_cnn(49), INT8)]
    for width, res in ((0.35, 96), (0.5, 128), (0.75, 128), (1.0, 96), (0.35, 160), (0.5, 224), (1.0, 160),
                       (0.75, 224), (1.0, 224)):
        out.append(Entry("mobilenet_v2", f"mobilenet_v2_w{width}_r{res}",
                         _image(functools.partial(_mobilenet, width), res)))
    out += [Entry("mobilenet_v2", "mobilenet_v2_w0.5_r128", _image(functools.partial(_mobilenet, 0.5), 128), INT8),
            Entry("mobilenet_v2", "mobilenet_v2_w1.0_r160", _image(functools.partial(_mobilenet, 1.0), 160), INT8),
            Entry("mobilenet_v2", "mobilenet_v2_w1.0_r224", _image(functools.partial(_mobilenet, 1.0), 224), INT8),
            Entry("mobilenet_v2", "mobilenet_v2_w1.0_r160", _image(functools.partial(_mobilenet, 1.0), 160), PRUNED)]
    for blocks, res in (((1, 1, 1, 1), 64), ((1, 1, 1, 1), 128), ((2, 2, 2, 2), 96), ((2, 2, 2, 2), 160)):
        tag = "resnet10" if blocks == (1, 1, 1, 1) else "resnet18"
        out.append(Entry("resnet", f"{tag}_r{res}", _image(functools.partial(_resnet, blocks), res)))
    out += [Entry("resnet", "resnet10_r128", _image(functools.partial(_resnet, (1, 1, 1, 1)), 128), INT8),
            Entry("resnet", "resnet18_r160", _image(functools.partial(_resnet, (2, 2, 2, 2)), 160), PRUNED)]
    for res, se in ((128, False), (160, True), (192, False), (224, False)):
        out.append(Entry("efficientnet_lite", f"efficientnet_lite_r{res}{'_se' if se else ''}",
                         _image(functools.partial(zoo.efficientnet_lite, se=se), res)))
    out.append(Entry("efficientnet_lite", "efficientnet_lite_r160", _image(zoo.efficientnet_lite, 160), INT8))
    for dim, heads, seq in ((96, 2, 49), (192, 3, 65), (192, 3, 197), (256, 4, 65), (384, 6, 50)):
        out.append(Entry("vit", f"vit_block_d{dim}_h{heads}_s{seq}", _vit(dim, heads, 4, seq)))
    out.append(Entry("vit", "vit_block_d192_h3_s65", _vit(192, 3, 4, 65), INT8))
    for layers, seq in ((1, 16), (2, 32), (1, 128), (3, 64), (6, 32), (2, 128), (6, 128)):
        out.append(Entry("minilm", f"minilm_l{layers}_s{seq}", _minilm(layers, seq)))
    out += [Entry("minilm", "minilm_l2_s32", _minilm(2, 32), INT8),
            Entry("minilm", "minilm_l6_s128", _minilm(6, 128), INT8)]
    # more of each family, and two plain ones (kernel sizes 3, 5 and 7; widths of every kind)
    for widths, k, res in (((16, 32, 64), 3, 64), ((24, 48, 96), 5, 96), ((32, 64, 128, 256), 3, 128),
                           ((20, 40, 80), 7, 64), ((64, 128, 256), 3, 96), ((12, 36, 108), 5, 128)):
        out.append(Entry("plain_cnn", f"plain_cnn_{'-'.join(map(str, widths))}_k{k}_r{res}",
                         _plain_cnn(widths, k, res)))
    out += [Entry("plain_cnn", "plain_cnn_32-64-128-256_k3_r128", _plain_cnn((32, 64, 128, 256), 3, 128), INT8),
            Entry("plain_cnn", "plain_cnn_64-128-256_k3_r96", _plain_cnn((64, 128, 256), 3, 96),
                  "simplify,fuse,prune{macs=0.6}")]
    for widths, tokens in (((256, 1024, 256), 16), ((384, 1536, 384), 64), ((512, 2048, 512), 8),
                           ((128, 512, 512, 128), 128), ((768, 3072, 768), 32), ((200, 700, 200), 50)):
        out.append(Entry("mlp", f"mlp_{'-'.join(map(str, widths))}_t{tokens}", _mlp(widths, tokens)))
    out += [Entry("mlp", "mlp_384-1536-384_t64", _mlp((384, 1536, 384), 64), INT8)]
    for width, res in ((0.75, 96), (1.4, 160), (0.35, 224)):
        out.append(Entry("mobilenet_v2", f"mobilenet_v2_w{width}_r{res}", _image(functools.partial(_mobilenet, width), res)))
    out += [Entry("mobilenet_v2", "mobilenet_v2_w0.75_r128", _image(functools.partial(_mobilenet, 0.75), 128),
                  "simplify,fuse,prune{macs=0.6 round-to=8}"),
            Entry("mobilenet_v2", "mobilenet_v2_w1.0_r224", _image(functools.partial(_mobilenet, 1.0), 224),
                  "simplify,fuse,prune{macs=0.75}")]
    for blocks, res in (((1, 1, 1, 1), 96), ((2, 2, 2, 2), 64), ((1, 1, 1, 1), 224), ((2, 2, 2, 2), 128)):
        tag = "resnet10" if blocks == (1, 1, 1, 1) else "resnet18"
        out.append(Entry("resnet", f"{tag}_r{res}", _image(functools.partial(_resnet, blocks), res)))
    out += [Entry("resnet", "resnet10_r128", _image(functools.partial(_resnet, (1, 1, 1, 1)), 128),
                  "simplify,fuse,prune{macs=0.5 round-to=16}"),
            Entry("resnet", "resnet18_r96", _image(functools.partial(_resnet, (2, 2, 2, 2)), 96), INT8)]
    for res, se in ((96, False), (128, True), (256, False)):
        out.append(Entry("efficientnet_lite", f"efficientnet_lite_r{res}{'_se' if se else ''}",
                         _image(functools.partial(zoo.efficientnet_lite, se=se), res)))
    out.append(Entry("efficientnet_lite", "efficientnet_lite_r160", _image(zoo.efficientnet_lite, 160), PRUNED))
    for dim, heads, seq in ((128, 4, 65), (192, 3, 50), (320, 5, 65), (384, 6, 197)):
        out.append(Entry("vit", f"vit_block_d{dim}_h{heads}_s{seq}", _vit(dim, heads, 4, seq)))
    out.append(Entry("vit", "vit_block_d384_h6_s50", _vit(384, 6, 4, 50), INT8))
    for layers, seq in ((1, 64), (4, 32), (3, 128)):
        out.append(Entry("minilm", f"minilm_l{layers}_s{seq}", _minilm(layers, seq)))
    out.append(Entry("minilm", "minilm_l3_s64", _minilm(3, 64), INT8))
    out += [Entry("ds_cnn", f"ds_cnn_f{f}_c{c}", _ds_cnn(f, c)) for f, c in ((49, 96), (147, 64))]
    out.append(Entry("ds_cnn", "ds_cnn_f49_c172", _ds_cnn(49, 172), INT8))
    return out + kernel_entries()


def families(corpus: list[Entry]) -> list[str]:
    return sorted({e.family for e in corpus})


def round_robin(corpus: list[Entry]) -> Iterator[Entry]:
    """The entries interleaved by family (each family's first, then each one's second, ...), so a time budget
    that stops early still covers every family."""
    by: dict[str, list[Entry]] = {}
    for e in corpus:
        by.setdefault(e.family, []).append(e)
    for group in itertools.zip_longest(*by.values()):
        yield from (e for e in group if e is not None)


def mcu_entries() -> list[Entry]:
    """The microcontroller corpus: models whose weights and activations fit the QEMU MPS2 machine (4 MiB of code
    and constants, 4 MiB of RAM), each run to the end under QEMU in seconds."""
    mb = functools.partial
    out: list[Entry] = [Entry("bundled", "digits_cnn", _bundled("digits_cnn")),
                        Entry("bundled", "fashion_cnn", _bundled("fashion_cnn")),
                        Entry("vit", "fashion_vit", _bundled("fashion_vit")),
                        Entry("bundled", "digits_cnn", _bundled("digits_cnn"), INT8),
                        Entry("bundled", "fashion_cnn", _bundled("fashion_cnn"), INT8)]
    out += [Entry("ds_cnn", f"ds_cnn_f{f}_c{c}", _ds_cnn(f, c)) for f, c in ((49, 64), (49, 96), (98, 64))]
    out += [Entry("ds_cnn", "ds_cnn_f49_c64", _ds_cnn(49), INT8),
            Entry("ds_cnn", "ds_cnn_f49_c172", _ds_cnn(49, 172), INT8)]
    for width, res, passes in ((0.35, 48, FLOAT), (0.35, 64, FLOAT), (0.35, 96, INT8), (0.5, 64, INT8),
                               (0.35, 64, PRUNED)):
        out.append(Entry("mobilenet_v2", f"mobilenet_v2_w{width}_r{res}_c10",
                         _image(mb(_mobilenet, width, 10), res), passes))
    for widths, k, res, passes in (((8, 16, 32), 3, 32, FLOAT), ((12, 24, 48), 5, 32, FLOAT),
                                   ((16, 32), 3, 48, FLOAT), ((8, 16, 32), 3, 32, INT8),
                                   ((10, 30, 60), 7, 32, FLOAT)):
        out.append(Entry("plain_cnn", f"plain_cnn_{'-'.join(map(str, widths))}_k{k}_r{res}",
                         _plain_cnn(widths, k, res), passes))
    mlps: tuple[tuple[tuple[int, ...], int, str], ...] = (
        ((64, 256, 64), 8, FLOAT), ((128, 512, 128), 16, FLOAT), ((96, 384, 96), 4, FLOAT),
        ((128, 512, 128), 16, INT8), ((48, 200, 200, 48), 12, FLOAT))
    for mlp_widths, tokens, passes in mlps:
        out.append(Entry("mlp", f"mlp_{'-'.join(map(str, mlp_widths))}_t{tokens}", _mlp(mlp_widths, tokens), passes))
    for dim, heads, seq, passes in ((64, 2, 17, FLOAT), (96, 2, 49, FLOAT), (64, 2, 17, INT8), (128, 4, 33, FLOAT)):
        out.append(Entry("vit", f"vit_block_d{dim}_h{heads}_s{seq}", _vit(dim, heads, 4, seq), passes))
    for res, passes in ((64, INT8), (96, INT8), (80, INT8)):  # in float its weights take more than the 4 MiB
        out.append(Entry("efficientnet_lite", f"efficientnet_lite_r{res}_c10",
                         _image(mb(zoo.efficientnet_lite, 10), res), passes))
    return out
