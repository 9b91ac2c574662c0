"""Small architectures that break module-level structured pruners, for the pruning tests and benchmarks.

Each function returns ``(module.eval(), example_inputs)`` with seeded random weights (deterministic, CPU,
well under 1 M parameters, exported in seconds). They are the cases Torch-Pruning gets wrong or skips
(issue 14): channel shuffle, Swin's window partition and patch merging by strided slices, grouped-query
attention, PixelShuffle, ConvNeXt's channels-last LayerNorm and bare layer-scale parameter, and a language
model whose head is tied to its token embedding. ``BLOCKS`` names them all. Export with
:func:`nasc.examples.zoo.export_onnx` (TorchScript exporter, opset 17, ``dynamo=False``).

torch is an optional dependency: it is imported inside the functions, so importing this module needs nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from nasc.examples.zoo import _vit_classes

if TYPE_CHECKING:
    import torch

__all__ = [
    "BLOCKS",
    "convnext_block",
    "gqa_block",
    "pixelshuffle_upsampler",
    "shufflenet_block",
    "swin_block",
    "tied_lm",
]

Block = tuple["torch.nn.Module", tuple[Any, ...]]


def _randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and norm affine parameters (the defaults, ones and zeros, hide bugs)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            if isinstance(m, nn.BatchNorm2d | nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@functools.cache
def _classes() -> SimpleNamespace:
    """Build the nn.Module classes on first use (torch is an optional dependency)."""
    import torch
    from torch import nn

    # ---- ShuffleNetV2 ------------------------------------------------------------------------------------

    def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
        """torchvision's ``channel_shuffle``: view -> transpose(1, 2) -> contiguous -> view."""
        b, c, h, w = x.size()
        x = x.view(b, groups, c // groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(b, -1, h, w)

    class ShuffleUnit(nn.Module):
        """torchvision's ShuffleNetV2 ``InvertedResidual`` with stride 1: split, branch on one half, cat, shuffle."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            bf = channels // 2
            self.branch2 = nn.Sequential(
                nn.Conv2d(bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True),
                nn.Conv2d(bf, bf, 3, 1, 1, groups=bf, bias=False), nn.BatchNorm2d(bf),
                nn.Conv2d(bf, bf, 1, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x1, x2 = x.chunk(2, dim=1)
            return channel_shuffle(torch.cat((x1, self.branch2(x2)), dim=1), 2)

    class ShuffleNet(nn.Module):
        def __init__(self, channels: int = 48, num_classes: int = 10) -> None:
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels),
                                       nn.ReLU(inplace=True))
            self.stage = nn.Sequential(ShuffleUnit(channels), ShuffleUnit(channels))
            self.fc = nn.Linear(channels, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.stage(self.conv1(x)).mean([2, 3]))

    # ---- Swin ---------------------------------------------------------------------------------------------

    def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
        """[B, H, W, C] -> [B * H/ws * W/ws, ws, ws, C], as in Swin."""
        b, h, w, c = x.shape
        x = x.view(b, h // ws, ws, w // ws, ws, c)
        return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)

    def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
        b = windows.shape[0] // ((h // ws) * (w // ws))
        x = windows.view(b, h // ws, w // ws, ws, ws, -1)
        return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)

    # Swin's window attention without the relative position bias is a ViT's: qkv Linear, per-head softmax, proj
    WindowAttention = _vit_classes()[0]

    class PatchMerging(nn.Module):
        """Swin's patch merging: 2x2 neighbours by strided slices, cat on channels, LayerNorm(4C), Linear(4C, 2C)."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(4 * dim)
            self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x0 = x[:, 0::2, 0::2, :]
            x1 = x[:, 1::2, 0::2, :]
            x2 = x[:, 0::2, 1::2, :]
            x3 = x[:, 1::2, 1::2, :]
            return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], -1)))

    class SwinStage(nn.Module):
        def __init__(self, dim: int = 48, heads: int = 3, window: int = 4, num_classes: int = 10) -> None:
            super().__init__()
            self.window = window
            self.patch_embed = nn.Conv2d(3, dim, 4, 4)
            self.norm1 = nn.LayerNorm(dim)
            self.attn = WindowAttention(dim, heads)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            self.downsample = PatchMerging(dim)
            self.head = nn.Linear(2 * dim, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch_embed(x).permute(0, 2, 3, 1)  # channels-last [B, H, W, C]
            _, h, w, c = x.shape
            ws = self.window
            windows = window_partition(self.norm1(x), ws).view(-1, ws * ws, c)
            x = x + window_reverse(self.attn(windows).view(-1, ws, ws, c), ws, h, w)
            x = x + self.mlp(self.norm2(x))
            return self.head(self.downsample(x).mean([1, 2]))

    # ---- Llama decoder layer with grouped-query attention ------------------------------------------------

    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float = 1e-6) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.eps = eps

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
        """HF Llama's ``repeat_kv``: [B, KV, S, D] -> [B, KV * n_rep, S, D] by expand + reshape."""
        b, kv, s, d = x.shape
        return x[:, :, None, :, :].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    class GQAttention(nn.Module):
        causal_mask: torch.Tensor
        cos: torch.Tensor
        sin: torch.Tensor

        def __init__(self, hidden: int, heads: int, kv_heads: int, seq: int, rope: bool) -> None:
            super().__init__()
            self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
            self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=False)
            self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
            self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)
            mask = torch.full((seq, seq), torch.finfo(torch.float32).min).triu(1)
            self.register_buffer("causal_mask", mask[None, None], persistent=False)
            self.rope = rope
            if rope:  # HF Llama's rotary tables (base 10000), precomputed for the fixed sequence length
                inv = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
                freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
                emb = torch.cat((freqs, freqs), dim=-1)
                self.register_buffer("cos", emb.cos()[None, None], persistent=False)
                self.register_buffer("sin", emb.sin()[None, None], persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            if self.rope:
                q = q * self.cos + rotate_half(q) * self.sin
                k = k * self.cos + rotate_half(k) * self.sin
            n_rep = self.heads // self.kv_heads
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
            attn = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim) + self.causal_mask[:, :, :s, :s]
            attn = nn.functional.softmax(attn, dim=-1, dtype=torch.float32)
            out = torch.matmul(attn, v).transpose(1, 2).reshape(b, s, -1)
            return self.o_proj(out)

    class SwiGLU(nn.Module):
        def __init__(self, hidden: int, inter: int) -> None:
            super().__init__()
            self.gate_proj = nn.Linear(hidden, inter, bias=False)
            self.up_proj = nn.Linear(hidden, inter, bias=False)
            self.down_proj = nn.Linear(inter, hidden, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    class DecoderLayer(nn.Module):
        def __init__(self, hidden: int, heads: int, kv_heads: int, inter: int, seq: int, rope: bool) -> None:
            super().__init__()
            self.input_layernorm = RMSNorm(hidden)
            self.self_attn = GQAttention(hidden, heads, kv_heads, seq, rope)
            self.post_attention_layernorm = RMSNorm(hidden)
            self.mlp = SwiGLU(hidden, inter)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.self_attn(self.input_layernorm(x))
            return x + self.mlp(self.post_attention_layernorm(x))

    class GQADecoder(nn.Module):
        def __init__(self, hidden: int = 128, heads: int = 8, kv_heads: int = 2, inter: int = 256, layers: int = 2,
                     seq: int = 16, rope: bool = False) -> None:
            super().__init__()
            self.layers = nn.ModuleList(DecoderLayer(hidden, heads, kv_heads, inter, seq, rope) for _ in range(layers))
            self.norm = RMSNorm(hidden)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return self.norm(x)

    # ---- ConvNeXt -----------------------------------------------------------------------------------------

    class ConvNeXtBlock(nn.Module):
        """Depthwise 7x7, channels-last LayerNorm, Linear(C, 4C), GELU, Linear(4C, C), layer scale, residual."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.pwconv1 = nn.Linear(dim, 4 * dim)
            self.act = nn.GELU()
            self.pwconv2 = nn.Linear(4 * dim, dim)
            # ConvNeXt initialises the layer scale to 1e-6; 0.5 + U(0, 1) makes the branch matter numerically.
            self.gamma = nn.Parameter(0.5 + torch.rand(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.dwconv(x).permute(0, 2, 3, 1)
            y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
            return x + y.permute(0, 3, 1, 2)

    class ConvNeXt(nn.Module):
        def __init__(self, dim: int = 32, depth: int = 2, num_classes: int = 10) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, dim, 4, 4)
            self.stages = nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.stages(self.stem(x)).mean([-2, -1])))

    # ---- PixelShuffle upsampler and tied-head language model ----------------------------------------------

    class Upsampler(nn.Module):
        """ESPCN-like x2 super-resolution: conv, ReLU, conv to 4 * 12 channels, PixelShuffle(2), conv to RGB."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(32, 12 * 4, 3, padding=1)
            self.shuffle = nn.PixelShuffle(2)
            self.conv3 = nn.Conv2d(12, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv3(self.shuffle(self.conv2(self.relu(self.conv1(x)))))

    class TiedLM(nn.Module):
        def __init__(self, vocab: int = 512, dim: int = 64, seq: int = 16, hidden: int = 256) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.pos = nn.Parameter(torch.randn(1, seq, dim) * 0.5)
            self.ln1 = nn.LayerNorm(dim)
            self.fc1 = nn.Linear(dim, hidden)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(hidden, dim)
            self.ln_f = nn.LayerNorm(dim)
            self.lm_head = nn.Linear(dim, vocab, bias=False)
            self.lm_head.weight = self.embed.weight  # tied: one tensor, two uses

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids) + self.pos[:, : ids.shape[1]]
            x = x + self.fc2(self.act(self.fc1(self.ln1(x))))
            return self.lm_head(self.ln_f(x))

    classes = SimpleNamespace(ShuffleUnit=ShuffleUnit, ShuffleNet=ShuffleNet, WindowAttention=WindowAttention,
                              PatchMerging=PatchMerging, SwinStage=SwinStage, RMSNorm=RMSNorm,
                              GQAttention=GQAttention, SwiGLU=SwiGLU, DecoderLayer=DecoderLayer,
                              GQADecoder=GQADecoder, ConvNeXtBlock=ConvNeXtBlock, ConvNeXt=ConvNeXt,
                              Upsampler=Upsampler, TiedLM=TiedLM)
    for cls in vars(classes).values():
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return classes


def shufflenet_block() -> Block:
    """Stem conv 3->48 stride 2, two ShuffleNetV2 stride-1 units (chunk, branch, cat, channel shuffle), pool, linear."""
    import torch

    torch.manual_seed(10)
    model = _classes().ShuffleNet()
    _randomize_norms(model, 10)
    return model.eval(), (_image(1, 3, 32, 32),)


def swin_block() -> Block:
    """Swin stage: 4x4 patch embed to 48 channels, window attention (window 4, 3 heads) and MLP, patch merging."""
    import torch

    torch.manual_seed(11)
    model = _classes().SwinStage()
    _randomize_norms(model, 11)
    return model.eval(), (_image(1, 3, 32, 32),)


def gqa_block(rope: bool = False) -> Block:
    """Two Llama decoder layers (RMSNorm, 8 query / 2 KV heads via repeat_kv, causal softmax, SwiGLU) on [1, 16, 128].

    ``rope=True`` adds Llama's rotary position embedding to q and k (rotate_half couples the two halves of each
    head's dimensions).
    """
    import torch

    torch.manual_seed(12)
    model = _classes().GQADecoder(rope=rope)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _classes().RMSNorm):
                m.weight.uniform_(0.5, 1.5)
    return model.eval(), (_image(1, 16, 128),)


def pixelshuffle_upsampler() -> Block:
    """x2 upsampler: conv 3->32, ReLU, conv 32->48, PixelShuffle(2) to 12 channels, conv 12->3; input [1, 3, 16, 16]."""
    import torch

    torch.manual_seed(13)
    return _classes().Upsampler().eval(), (_image(1, 3, 16, 16),)


def convnext_block() -> Block:
    """Stem conv 3->32 (4x4 stride 4), two ConvNeXt blocks with a layer-scale gamma, pool, LayerNorm, linear."""
    import torch

    torch.manual_seed(14)
    model = _classes().ConvNeXt()
    _randomize_norms(model, 14)
    return model.eval(), (_image(1, 3, 32, 32),)


def tied_lm() -> Block:
    """Tiny LM: embedding (512 x 64) tied to the LM head, position parameter, one residual MLP, final LN; ids [1, 16]."""
    import torch

    torch.manual_seed(15)
    model = _classes().TiedLM()
    _randomize_norms(model, 15)
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(15))
    return model.eval(), (ids,)


BLOCKS: dict[str, Callable[[], Block]] = {
    "shufflenet_block": shufflenet_block,
    "swin_block": swin_block,
    "gqa_block": gqa_block,
    "pixelshuffle_upsampler": pixelshuffle_upsampler,
    "convnext_block": convnext_block,
    "tied_lm": tied_lm,
}
"""Every block by its function's name."""
