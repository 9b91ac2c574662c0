"""The PyTorch frontend, one tiny module per common op: torch's output vs ONNX Runtime on the exported IR.

Each case is a module, its example inputs and the IR op its conversion must contain (so a case cannot pass
through a different path than the one it is meant to test). Tolerance: rtol 1e-4, atol 1e-5 in fp32;
integer and boolean results must be equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasc.backends.fidelity import ort_session, run_ort
from nasc.backends.onnx import to_onnx
from nasc.errors import UnsupportedModelError
from nasc.frontends.torch import from_torch
from nasc.ir import verify
from nasc.ir.core import Graph

RTOL, ATOL = 1e-4, 1e-5


class Fn(nn.Module):
    """A module whose forward is ``fn(*inputs)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs: torch.Tensor) -> Any:
        return self.fn(*xs)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _seeded(make: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = make()
    with torch.no_grad():  # non-default affine parameters and running statistics
        for name, p in m.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return m.eval()


X4 = _randn(1, 4, 8, 8)  # a small NCHW image
X3 = _randn(2, 5, 6)
IMG = _randn(1, 3, 9, 11, seed=1)  # odd sizes: exercises ceil_mode and the resize coordinate maps


class _Sdpa(nn.Module):
    def __init__(self, causal: bool = False, masked: bool = False) -> None:
        super().__init__()
        self.causal, self.masked = causal, masked

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.masked:
            mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal)


class _Mha(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class _MhaWeights(_Mha):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attn(x, x, x, need_weights=True)


class _MhaPadded(_Mha):
    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]


def _encoder_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(64, 4, 128, batch_first=True, norm_first=True).eval()


QKV = (_randn(2, 3, 10, 16, seed=1), _randn(2, 3, 12, 16, seed=2), _randn(2, 3, 12, 16, seed=3))
QKV_SQUARE = (_randn(2, 3, 10, 16, seed=1), _randn(2, 3, 10, 16, seed=2), _randn(2, 3, 10, 16, seed=3))
PAD = torch.zeros(2, 10, dtype=torch.bool)
PAD[1, 7:] = True

# (id, module, inputs, an IR op the conversion must contain)
CASES: list[tuple[str, nn.Module, tuple[torch.Tensor, ...], str]] = [
    # activations
    ("silu", nn.SiLU(), (X4,), "Sigmoid"),
    ("hardswish", nn.Hardswish(), (X4 * 4,), "HardSwish"),
    ("hardsigmoid", nn.Hardsigmoid(), (X4 * 4,), "HardSigmoid"),
    ("relu6", nn.ReLU6(), (X4 * 8,), "Clip"),
    ("leaky_relu", nn.LeakyReLU(0.2), (X4,), "LeakyRelu"),
    ("prelu_channel", _seeded(lambda: nn.PReLU(4)), (X4,), "PRelu"),
    ("prelu_single", nn.PReLU(), (X4,), "PRelu"),
    ("elu", nn.ELU(0.7), (X4,), "Elu"),
    ("selu", nn.SELU(), (X4,), "Selu"),
    ("celu", nn.CELU(1.3), (X4,), "Exp"),
    ("gelu", nn.GELU(), (X4,), "Gelu"),
    ("gelu_tanh", nn.GELU(approximate="tanh"), (X4,), "Gelu"),
    ("softplus", nn.Softplus(), (X4 * 10,), "Log"),
    ("softplus_beta", nn.Softplus(beta=2.0, threshold=5.0), (X4 * 10,), "Log"),
    ("mish", nn.Mish(), (X4,), "Tanh"),
    ("tanh", nn.Tanh(), (X4,), "Tanh"),
    ("sigmoid", nn.Sigmoid(), (X4,), "Sigmoid"),
    ("hardtanh", nn.Hardtanh(-0.5, 0.5), (X4,), "Clip"),
    ("softsign", nn.Softsign(), (X4,), "Div"),
    # pooling
    ("max_pool2d", nn.MaxPool2d(3, 2, 1), (IMG,), "MaxPool"),
    ("max_pool2d_ceil", nn.MaxPool2d(2, 2, ceil_mode=True), (IMG,), "MaxPool"),
    ("max_pool2d_dilated", nn.MaxPool2d(3, 1, 1, dilation=2), (IMG,), "MaxPool"),
    ("avg_pool2d_incl_pad", nn.AvgPool2d(3, 2, 1, count_include_pad=True), (IMG,), "AveragePool"),
    ("avg_pool2d_excl_pad", nn.AvgPool2d(3, 2, 1, count_include_pad=False), (IMG,), "AveragePool"),
    ("avg_pool2d_ceil", nn.AvgPool2d(2, 2, ceil_mode=True), (IMG,), "AveragePool"),
    ("avg_pool2d_ceil_pad", nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=True), (IMG,), "AveragePool"),
    ("avg_pool2d_ceil_excl", nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (IMG,), "AveragePool"),
    ("avg_pool1d", nn.AvgPool1d(3, 2), (X3,), "AveragePool"),
    ("adaptive_avg_pool2d_7", nn.AdaptiveAvgPool2d(7), (_randn(1, 4, 14, 14),), "AveragePool"),
    ("adaptive_avg_pool2d_1", nn.AdaptiveAvgPool2d(1), (X4,), "ReduceMean"),
    ("adaptive_avg_pool2d_uneven", nn.AdaptiveAvgPool2d((3, 4)), (IMG,), "ReduceMean"),
    ("adaptive_max_pool2d", nn.AdaptiveMaxPool2d((2, 2)), (X4,), "MaxPool"),
    ("adaptive_max_pool2d_uneven", nn.AdaptiveMaxPool2d((4, 3)), (IMG,), "ReduceMax"),
    ("adaptive_avg_pool2d_none", nn.AdaptiveAvgPool2d((None, 3)), (IMG,), "ReduceMean"),
    ("adaptive_avg_pool1d_uneven", nn.AdaptiveAvgPool1d(4), (X3,), "ReduceMean"),
    # resize
    ("upsample_nearest", nn.Upsample(scale_factor=2, mode="nearest"), (IMG,), "Resize"),
    ("interpolate_nearest_size", Fn(lambda x: F.interpolate(x, size=(5, 17), mode="nearest")), (IMG,), "Resize"),
    ("upsample_bilinear", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), (IMG,), "Resize"),
    ("upsample_bilinear_ac", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), (IMG,), "Resize"),
    ("interpolate_bilinear_size", Fn(lambda x: F.interpolate(x, size=(4, 20), mode="bilinear")), (IMG,), "Resize"),
    ("interpolate_bilinear_size_ac",
     Fn(lambda x: F.interpolate(x, size=(4, 20), mode="bilinear", align_corners=True)), (IMG,), "Resize"),
    ("interpolate_bilinear_frac",
     Fn(lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear")), (IMG,), "Resize"),
    ("interpolate_nearest_frac", Fn(lambda x: F.interpolate(x, scale_factor=1.5, mode="nearest")), (IMG,), "Resize"),
    ("upsample_nearest2d_default", Fn(lambda x: torch.ops.aten.upsample_nearest2d.default(x, [18, 22])), (IMG,),
     "Resize"),
    ("upsample_bilinear2d_default_scales",
     Fn(lambda x: torch.ops.aten.upsample_bilinear2d.default(x, [13, 16], False, 1.5, 1.5)), (IMG,), "GatherND"),
    ("interpolate_nearest_exact", Fn(lambda x: F.interpolate(x, scale_factor=1.7, mode="nearest-exact")), (IMG,),
     "GatherND"),
    ("interpolate_bicubic", Fn(lambda x: F.interpolate(x, scale_factor=2, mode="bicubic")), (IMG,), "GatherND"),
    ("interpolate_nearest_1d", Fn(lambda x: F.interpolate(x, scale_factor=2, mode="nearest")), (X3,), "Gather"),
    ("interpolate_linear_1d",
     Fn(lambda x: F.interpolate(x, size=9, mode="linear", align_corners=False)), (X3,), "Gather"),
    # padding, shapes, data movement
    ("pad_constant", Fn(lambda x: F.pad(x, (1, 2, 0, 3), value=0.5)), (X4,), "Pad"),
    ("pad_negative", Fn(lambda x: F.pad(x, (-1, 2))), (X4,), "Pad"),
    ("pad_reflect", Fn(lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect")), (X4,), "Gather"),
    ("pad_replicate", Fn(lambda x: F.pad(x, (2, 1, 1, 2), mode="replicate")), (X4,), "Gather"),
    ("cat", Fn(lambda x, y: torch.cat([x, y, x], dim=1)), (X4, X4 + 1), "Concat"),
    ("stack", Fn(lambda x, y: torch.stack([x, y], dim=-1)), (X3, X3 * 2), "Concat"),
    ("split", Fn(lambda x: torch.split(x, [1, 3], dim=1)), (X4,), "Split"),
    ("split_uneven", Fn(lambda x: torch.split(x, 2, dim=-1)), (X3,), "Split"),
    ("chunk", Fn(lambda x: torch.chunk(x, 2, dim=2)), (X4,), "Split"),
    ("unbind", Fn(lambda x: torch.unbind(x, dim=1)), (X3,), "Squeeze"),
    ("flatten", Fn(lambda x: torch.flatten(x, 1)), (X4,), "Reshape"),
    ("transpose", Fn(lambda x: x.transpose(1, 3)), (X4,), "Transpose"),
    ("slice_step", Fn(lambda x: x[:, 1:, ::2, -3:]), (X4,), "Slice"),
    ("index_select", Fn(lambda x: x.index_select(1, torch.tensor([2, 0]))), (X4,), "Gather"),
    ("repeat", Fn(lambda x: x.repeat(2, 1, 3)), (X3,), "Tile"),
    ("repeat_more_dims", Fn(lambda x: x.repeat(2, 1, 1, 3)), (X3,), "Tile"),
    ("roll", Fn(lambda x: torch.roll(x, 2, dims=-1)), (X3,), "Gather"),
    ("flip", Fn(lambda x: torch.flip(x, dims=[1])), (X3,), "Slice"),
    ("flip_dims", Fn(lambda x: torch.flip(x, dims=[0, 2])), (X3,), "Slice"),
    ("pixel_shuffle", nn.PixelShuffle(2), (X4,), "Transpose"),
    # linear algebra, convolution, normalization
    ("matmul_broadcast", Fn(lambda x, y: x @ y), (_randn(2, 1, 5, 6), _randn(3, 6, 4, seed=1)), "MatMul"),
    ("matmul_vector", Fn(lambda x, y: x @ y), (_randn(2, 5, 6), _randn(6, seed=1)), "ReduceSum"),
    ("linear_3d", _seeded(lambda: nn.Linear(6, 3)), (X3,), "Gemm"),
    ("linear_no_bias", _seeded(lambda: nn.Linear(6, 3, bias=False)), (X3,), "MatMul"),
    ("conv1d", _seeded(lambda: nn.Conv1d(5, 3, 3, stride=2, padding=1)), (X3,), "Conv"),
    ("conv2d_dilated_groups", _seeded(lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)), (X4,), "Conv"),
    ("conv_transpose2d", _seeded(lambda: nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)),
     (X4,), "ConvTranspose"),
    ("conv_transpose2d_groups", _seeded(lambda: nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2)), (X4,),
     "ConvTranspose"),
    ("conv_transpose1d", _seeded(lambda: nn.ConvTranspose1d(5, 2, 4, stride=2, padding=1)), (X3,), "ConvTranspose"),
    ("layer_norm", _seeded(lambda: nn.LayerNorm(6)), (X3,), "LayerNormalization"),
    ("layer_norm_no_affine", nn.LayerNorm(6, elementwise_affine=False), (X3,), "LayerNormalization"),
    ("layer_norm_2d", _seeded(lambda: nn.LayerNorm([5, 6])), (X3,), "LayerNormalization"),
    ("batch_norm_batch_stats", Fn(lambda x: F.batch_norm(x, None, None, training=True)), (_randn(2, 4, 5, 5),),
     "ReduceMean"),
    ("instance_norm_batch2", nn.InstanceNorm2d(4), (_randn(2, 4, 5, 5),), "InstanceNormalization"),
    ("group_norm_2d_input", _seeded(lambda: nn.GroupNorm(2, 6)), (_randn(3, 6),), "GroupNormalization"),
    ("group_norm", _seeded(lambda: nn.GroupNorm(2, 4)), (X4,), "GroupNormalization"),
    ("group_norm_no_affine", nn.GroupNorm(4, 4, affine=False), (X4,), "GroupNormalization"),
    ("instance_norm", _seeded(lambda: nn.InstanceNorm2d(4, affine=True)), (X4,), "InstanceNormalization"),
    ("batch_norm1d_2d", _seeded(lambda: nn.BatchNorm1d(6)), (_randn(3, 6),), "BatchNormalization"),
    ("batch_norm1d_3d", _seeded(lambda: nn.BatchNorm1d(5)), (X3,), "BatchNormalization"),
    ("batch_norm2d", _seeded(lambda: nn.BatchNorm2d(4)), (X4,), "BatchNormalization"),
    ("embedding", _seeded(lambda: nn.Embedding(10, 4)), (torch.tensor([[1, 3, 9], [0, 0, 2]]),), "Gather"),
    # elementwise and selection
    ("masked_fill", Fn(lambda x: x.masked_fill(x > 0.5, -1.0)), (X3,), "Where"),
    ("where_scalar", Fn(lambda x: torch.where(x > 0, x, 0.0)), (X3,), "Where"),
    ("where_scalars", Fn(lambda x: torch.where(x > 0, 1.0, -2.0)), (X3,), "Where"),
    ("clamp", Fn(lambda x: x.clamp(-0.5, 0.7)), (X3,), "Clip"),
    ("clamp_min", Fn(lambda x: x.clamp(min=0.1)), (X3,), "Clip"),
    ("clamp_tensor", Fn(lambda x, y: torch.clamp(x, min=y)), (X3, _randn(6, seed=1)), "Max"),
    ("exp", Fn(torch.exp), (X3,), "Exp"),
    ("log", Fn(lambda x: torch.log(x.abs() + 0.1)), (X3,), "Log"),
    ("log1p", Fn(lambda x: torch.log1p(x.abs())), (X3,), "Log"),
    ("sqrt", Fn(lambda x: torch.sqrt(x.abs())), (X3,), "Sqrt"),
    ("rsqrt", Fn(lambda x: torch.rsqrt(x.abs() + 0.1)), (X3,), "Sqrt"),
    ("pow", Fn(lambda x: x.abs() ** 1.5), (X3,), "Pow"),
    ("remainder_float", Fn(lambda x: torch.remainder(x, 0.7) + torch.remainder(x, -0.6)), (X3 * 3,), "Mod"),
    ("remainder_tensor", Fn(lambda x, y: x % y), (X3 * 3, _randn(6, seed=1)), "Mod"),
    ("fmod", Fn(lambda x: torch.fmod(x, -0.7)), (X3 * 3,), "Mod"),
    ("fmod_int", Fn(lambda x: torch.fmod(x, 3)), (torch.tensor([[7, -7, 5, -1]]),), "Mod"),
    ("trunc", Fn(torch.trunc), (X3 * 3,), "Ceil"),
    ("expm1", Fn(torch.expm1), (X3,), "Exp"),
    ("log2_log10", Fn(lambda x: torch.log2(x.abs() + 0.1) - torch.log10(x.abs() + 0.1)), (X3,), "Log"),
    ("inverse_trig", Fn(lambda x: torch.asin(x.tanh()) + torch.atan(x) + torch.asinh(x)), (X3,), "Asin"),
    ("elu_input_scale", Fn(lambda x: torch.ops.aten.elu.default(x, 1.5, 2.0, 0.5)), (X3,), "Where"),
    ("isnan", Fn(lambda x: torch.isnan(torch.log(x))), (X3,), "IsNaN"),
    ("square", Fn(lambda x: x * x - x.pow(2) + torch.square(x)), (X3,), "Mul"),
    ("div_floor", Fn(lambda x: torch.div(x, 0.3, rounding_mode="floor")), (X3,), "Floor"),
    ("atan2_free_trig", Fn(lambda x: torch.sin(x) + torch.cos(x) - torch.tan(x * 0.1)), (X3,), "Sin"),
    ("erf", Fn(torch.erf), (X3,), "Erf"),
    ("isinf", Fn(lambda x: torch.isinf(x / (x > 0).float())), (X3,), "IsInf"),
    ("logical_ops", Fn(lambda x: ((x > 0) & (x < 1)) | ~(x > -0.5)), (X3,), "Or"),
    ("maximum", Fn(torch.maximum), (X3, _randn(5, 1, seed=1)), "Max"),
    # reductions
    ("mean_keepdim", Fn(lambda x: x.mean(dim=(2, 3), keepdim=True)), (X4,), "ReduceMean"),
    ("sum_dim", Fn(lambda x: x.sum(dim=1)), (X4,), "ReduceSum"),
    ("sum_all", Fn(lambda x: x.sum()), (X4,), "ReduceSum"),
    ("amax_keepdim", Fn(lambda x: x.amax(dim=-1, keepdim=True)), (X4,), "ReduceMax"),
    ("amin", Fn(lambda x: x.amin(dim=(0, 2))), (X3,), "ReduceMin"),
    ("max_dim", Fn(lambda x: x.max(dim=1)), (X3,), "ReduceMax"),
    ("min_dim_keepdim", Fn(lambda x: x.min(dim=-1, keepdim=True)), (X3,), "ReduceMin"),
    ("max_all", Fn(lambda x: x.max()), (X3,), "ReduceMax"),
    ("var_mean", Fn(lambda x: torch.var_mean(x, dim=-1, keepdim=True)), (X3,), "ReduceMean"),
    ("std", Fn(lambda x: x.std(dim=1)), (X3,), "Sqrt"),
    ("norm", Fn(lambda x: torch.linalg.vector_norm(x, dim=-1)), (X3,), "ReduceL2"),
    ("norm_orders", Fn(lambda x: torch.stack([torch.linalg.vector_norm(x, o, dim=(0, 2)) for o in
                                              (1, 3, float("inf"), float("-inf"), 0)])), (X3,), "ReduceL1"),
    ("var_all", Fn(lambda x: x.var()), (X3,), "ReduceSum"),
    ("var_correction0", Fn(lambda x: torch.var(x, dim=(0, 2), correction=0, keepdim=True)), (X3,), "ReduceSum"),
    ("normalize", Fn(lambda x: F.normalize(x, dim=-1)), (X3,), "Div"),
    ("logsumexp", Fn(lambda x: torch.logsumexp(x, dim=-1)), (X3,), "Log"),
    ("prod", Fn(lambda x: x.prod(dim=1)), (X3,), "ReduceProd"),
    ("any_all", Fn(lambda x: torch.stack([(x > 1).any(dim=-1), (x > -3).all(dim=-1)])), (X3,), "ReduceMax"),
    ("any_all_float", Fn(lambda x: torch.stack([x.any(), x.all()])), (torch.tensor([[0.0, 1.5], [0.0, 0.0]]),),
     "ReduceMax"),
    ("sum_bool", Fn(lambda x: (x > 0).sum(dim=-1)), (X3,), "ReduceSum"),
    ("prod_int", Fn(lambda x: x.prod()), (torch.tensor([[2, -3], [1, 4]]),), "ReduceProd"),
    ("softmax", nn.Softmax(dim=1), (X3,), "Softmax"),
    ("log_softmax", nn.LogSoftmax(dim=-1), (X3,), "LogSoftmax"),
    ("argmax", Fn(lambda x: x.argmax(dim=1)), (X3,), "ArgMax"),
    ("argmax_keepdim", Fn(lambda x: x.argmax(dim=-1, keepdim=True)), (X3,), "ArgMax"),
    ("argmin_flat", Fn(lambda x: x.argmin()), (X3,), "ArgMin"),
    ("cumsum", Fn(lambda x: torch.cumsum(x, dim=1)), (X3,), "CumSum"),
    ("cumsum_int", Fn(lambda x: torch.cumsum(x, dim=-1)), (torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]]),), "CumSum"),
    ("topk", Fn(lambda x: torch.topk(x, 3, dim=-1)), (X3,), "TopK"),
    ("topk_smallest", Fn(lambda x: torch.topk(x, 2, dim=1, largest=False)), (X3,), "TopK"),
    ("sort", Fn(lambda x: torch.sort(x, dim=-1, descending=True)), (X3,), "TopK"),
    ("sort_stable_ties", Fn(lambda x: torch.sort(x, dim=1, stable=True)),
     (torch.tensor([[3.0, 1.0, 3.0, 1.0, 2.0, 1.0]]),), "TopK"),
    ("gather", Fn(lambda x, i: torch.gather(x, 2, i)), (X3, torch.tensor([[[0, 5]] * 5, [[3, 3]] * 5])), "GatherElements"),
    ("tril", Fn(lambda x: torch.tril(x, diagonal=1)), (X3,), "Where"),
    # integer ops: arange, comparisons, casts
    ("arange_positions", Fn(lambda x: x + torch.arange(x.shape[1]).unsqueeze(0)), (torch.tensor([[3, 1, 4]]),), "Add"),
    ("arange_float", Fn(lambda x: x * torch.arange(0, 1.5, 0.25)), (_randn(2, 6),), "Mul"),
    ("compare_cast", Fn(lambda x: (x >= 2).to(torch.int32) * 3 + (x != 4).long()), (torch.tensor([[3, 1, 4, 2]]),),
     "GreaterOrEqual"),
    ("float_to_int", Fn(lambda x: (x * 10).to(torch.int64)), (X3,), "Cast"),
    ("int_div_floor", Fn(lambda x: x // 3 + x % 3), (torch.tensor([[7, -7, 5, -1]]),), "Floor"),
    ("int_mean", Fn(lambda x: x.float().mean(dim=-1)), (torch.tensor([[7, -7, 5, -1]]),), "ReduceMean"),
    # attention
    ("sdpa", _Sdpa(), QKV, "Softmax"),
    ("sdpa_causal", _Sdpa(causal=True), QKV_SQUARE, "Softmax"),
    ("sdpa_bool_mask", _Sdpa(masked=True), QKV, "Softmax"),
    ("multihead_attention", _Mha().eval(), (_randn(2, 10, 64),), "Softmax"),
    ("multihead_attention_weights", _MhaWeights().eval(), (_randn(2, 10, 64),), "Softmax"),
    ("multihead_attention_padding", _MhaPadded().eval(), (_randn(2, 10, 64), PAD), "Softmax"),
    ("transformer_encoder_layer", _encoder_layer(), (_randn(2, 10, 64),), "LayerNormalization"),
]


class Bundle(nn.Module):
    """Every case as a child module named after it, so the whole table is exported and converted once: each
    from_torch call costs most of a second in torch.export's decomposition alone, whatever the module's size."""

    def __init__(self, cases: list[tuple[str, nn.Module, tuple[torch.Tensor, ...], str]]) -> None:
        super().__init__()
        self.names = [c[0] for c in cases]
        self.arity = [len(c[2]) for c in cases]
        for name, module, _, _ in cases:
            self.add_module(name, module)

    def forward(self, *xs: torch.Tensor) -> tuple[Any, ...]:
        outs, k = [], 0
        for name, n in zip(self.names, self.arity):
            outs.append(getattr(self, name)(*xs[k : k + n]))
            k += n
        return tuple(outs)


def _as_list(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, tuple | list) else [out]


def convert_and_run(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[Graph, list[np.ndarray],
                                                                                   list[np.ndarray]]:
    """(graph, torch's outputs, ONNX Runtime's outputs of the converted graph), flattened."""
    graph = from_torch(module, inputs)
    verify(graph)
    with torch.no_grad():
        ref = [r.numpy() for out in _as_list(module(*inputs)) for r in _as_list(out)]
    assert len(graph.inputs) == len(inputs)
    feeds = {v.name: x.numpy() for v, x in zip(graph.inputs, inputs)}
    return graph, ref, run_ort(ort_session(to_onnx(graph)), feeds)


Bundled = dict[str, tuple[set[str], list[np.ndarray], list[np.ndarray]]]


@pytest.fixture(scope="module")
def bundle() -> Bundled | Exception:
    """Per case: (IR ops in its scope, torch's outputs, ONNX Runtime's outputs), from one conversion of all cases.
    The exception when that conversion fails: each case then converts on its own, pinning the failure to it."""
    # clones: torch.export would merge inputs that are the same tensor object
    inputs = tuple(x.clone() for _, _, xs, _ in CASES for x in xs)
    try:
        graph, ref, got = convert_and_run(Bundle(CASES), inputs)
    except Exception as e:
        return e
    with torch.no_grad():
        counts = [len(_as_list(m(*xs))) for _, m, xs, _ in CASES]
    result, k = {}, 0
    for (name, *_), n in zip(CASES, counts):
        ops = {node.op for node in graph.nodes if node.scope == name or node.scope.startswith(name + ".")}
        result[name] = (ops, ref[k : k + n], got[k : k + n])
        k += n
    assert k == len(got)
    return result


def test_all_cases_convert_together(bundle: Bundled | Exception) -> None:
    if isinstance(bundle, Exception):
        raise bundle


@pytest.mark.parametrize(("name", "module", "inputs", "ir_op"), CASES, ids=[c[0] for c in CASES])
def test_op_matches_torch(bundle: Bundled | Exception, name: str, module: nn.Module,
                          inputs: tuple[torch.Tensor, ...], ir_op: str) -> None:
    if isinstance(bundle, Exception):
        graph, refs, got = convert_and_run(module, inputs)
        ops = {n.op for n in graph.nodes}
    else:
        ops, refs, got = bundle[name]
    assert len(got) == len(refs)
    for g, r in zip(got, refs):
        assert g.shape == r.shape and g.dtype == r.dtype, (g.shape, g.dtype, r.shape, r.dtype)
        if np.issubdtype(r.dtype, np.floating):
            np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL)
        else:
            np.testing.assert_array_equal(g, r)
    assert ir_op in ops, sorted(ops)


def test_case_ids_are_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_one_case_converts_on_its_own() -> None:
    """The bundle shares one graph; a case converted alone gives the same answer."""
    _, refs, got = convert_and_run(_encoder_layer(), (_randn(2, 10, 64),))
    np.testing.assert_allclose(got[0], refs[0], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("fn", "inputs", "what"),
    [
        (lambda x: x[x > 0], (X3,), "boolean-mask indexing at node 'index'"),
        (lambda x: torch.nonzero(x > 0), (X3,), "aten.nonzero.default at node 'nonzero'"),
        (lambda x: F.max_pool2d(x, 2, return_indices=True)[1].float(), (X4,), "its indices are used"),
    ],
    ids=["bool_mask_index", "nonzero", "max_pool_indices"],
)
def test_unconvertible_ops_raise_with_onnx_hint(fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...],
                                                what: str) -> None:
    with pytest.raises(UnsupportedModelError, match="via='onnx'") as e:
        from_torch(Fn(fn), inputs)
    assert what in str(e.value)
