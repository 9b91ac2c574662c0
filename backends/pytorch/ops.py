"""Torch lowerings, one per op, with ONNX semantics (shapes are static in the IR: reshapes use the result's).

Helpers that fx calls are module-level functions, so a GraphModule's generated code can name them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from nasc.backends.pytorch.lower import Lx, torch_dtype, torch_lowering
from nasc.errors import UnsupportedModelError
from nasc.ir.core import Node
from nasc.ir.ops.registry import lookup_node

# ---- elementwise ---------------------------------------------------------------------------------------

_BINARY = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "And": torch.logical_and,
           "Or": torch.logical_or, "Xor": torch.logical_xor, "Equal": torch.eq, "Less": torch.lt,
           "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge, "Max": torch.maximum,
           "Min": torch.minimum}
_UNARY = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
          "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf, "Not": torch.logical_not,
          "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Sin": torch.sin,
          "Cos": torch.cos, "Identity": torch.clone}


@torch_lowering(*_BINARY)
def _binary(lx: Lx, node: Node) -> Any:
    return lx.call(_BINARY[node.op], lx.x(node, 0), lx.x(node, 1))


@torch_lowering(*_UNARY)
def _unary(lx: Lx, node: Node) -> Any:
    return lx.call(_UNARY[node.op], lx.x(node, 0))


def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Div: integer division truncates."""
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


@torch_lowering("Div")
def _div(lx: Lx, node: Node) -> Any:
    return lx.call(div, lx.x(node, 0), lx.x(node, 1))


@torch_lowering("Where")
def _where(lx: Lx, node: Node) -> Any:
    return lx.call(torch.where, lx.x(node, 0), lx.x(node, 1), lx.x(node, 2))


@torch_lowering("Cast")
def _cast(lx: Lx, node: Node) -> Any:
    return lx.call(torch.Tensor.to, lx.x(node, 0), torch_dtype(node.outputs[0].dtype))


@torch_lowering("Gelu")
def _gelu(lx: Lx, node: Node) -> Any:
    return lx.call(F.gelu, lx.x(node, 0), approximate=str(node.attr("approximate", "none")))


@torch_lowering("LeakyRelu")
def _leaky(lx: Lx, node: Node) -> Any:
    return lx.call(F.leaky_relu, lx.x(node, 0), float(node.attr("alpha", 0.01)))


@torch_lowering("Clip")
def _clip(lx: Lx, node: Node) -> Any:
    return lx.call(torch.clamp, lx.x(node, 0), lx.opt(node, 1), lx.opt(node, 2))


@torch_lowering("Softmax")
def _softmax(lx: Lx, node: Node) -> Any:
    return lx.call(torch.softmax, lx.x(node, 0), int(node.attr("axis", -1)))


# ---- shapes ---------------------------------------------------------------------------------------------


@torch_lowering("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(lx: Lx, node: Node) -> Any:
    return lx.call(torch.reshape, lx.x(node, 0), tuple(node.outputs[0].shape))


@torch_lowering("Expand")
def _expand(lx: Lx, node: Node) -> Any:
    return lx.call(torch.broadcast_to, lx.x(node, 0), tuple(node.outputs[0].shape))


@torch_lowering("Transpose")
def _transpose(lx: Lx, node: Node) -> Any:
    rank = len(node.input(0).shape)
    perm = node.attr("perm")
    return lx.call(torch.permute, lx.x(node, 0), tuple(perm) if perm is not None else tuple(reversed(range(rank))))


@torch_lowering("Concat")
def _concat(lx: Lx, node: Node) -> Any:
    return lx.call(torch.cat, [lx.x(node, i) for i in range(len(node.inputs))], int(node.attr("axis")))


def gather(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Gather (numpy ``take`` along ``axis``; negative indices count from the end)."""
    axis %= x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


@torch_lowering("Gather")
def _gather(lx: Lx, node: Node) -> Any:
    return lx.call(gather, lx.x(node, 0), lx.x(node, 1), int(node.attr("axis", 0)))


def gather_nd(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """ONNX GatherND with batch_dims=0."""
    idx = idx.long()
    return x[tuple(idx.unbind(-1))]


@torch_lowering("GatherND")
def _gather_nd(lx: Lx, node: Node) -> Any:
    if int(node.attr("batch_dims", 0)):
        raise UnsupportedModelError(f"to_torch: {node.describe()} has batch_dims={node.attr('batch_dims')}; only 0 "
                                    "has a torch lowering")
    return lx.call(gather_nd, lx.x(node, 0), lx.x(node, 1))


# ---- linear algebra and nn ------------------------------------------------------------------------------


@torch_lowering("MatMul")
def _matmul(lx: Lx, node: Node) -> Any:
    return lx.call(torch.matmul, lx.x(node, 0), lx.x(node, 1))


def gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, alpha: float, beta: float, trans_a: bool,
         trans_b: bool) -> torch.Tensor:
    y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


@torch_lowering("Gemm")
def _gemm(lx: Lx, node: Node) -> Any:
    return lx.call(gemm, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), float(node.attr("alpha", 1.0)),
                   float(node.attr("beta", 1.0)), bool(node.attr("transA", 0)), bool(node.attr("transB", 0)))


def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, strides: list[int], pads: list[int],
         dilations: list[int], group: int) -> torch.Tensor:
    k = w.dim() - 2
    begin, end = pads[:k], pads[k:]
    if begin != end:  # asymmetric: pad explicitly (F.pad takes the last axis first)
        x = F.pad(x, [p for i in reversed(range(k)) for p in (begin[i], end[i])])
        begin = [0] * k
    fn = (F.conv1d, F.conv2d, F.conv3d)[k - 1]
    return fn(x, w, b, strides, begin, dilations, group)


@torch_lowering("Conv")
def _conv(lx: Lx, node: Node) -> Any:
    k = len(node.input(1).shape) - 2
    if str(node.attr("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
        raise UnsupportedModelError(f"to_torch: {node.describe()} uses auto_pad={node.attr('auto_pad')}; "
                                    "run --passes simplify (explicit pads) first")
    pads = list(node.attr("pads") or [0] * 2 * k)
    return lx.call(conv, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), list(node.attr("strides") or [1] * k),
                   pads, list(node.attr("dilations") or [1] * k), int(node.attr("group", 1)))


def layer_norm(x: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None, axis: int,
               eps: float) -> torch.Tensor:
    shape = x.shape[axis % x.dim():]
    if (scale is None or scale.shape == shape) and (bias is None or bias.shape == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    dims = tuple(range(axis % x.dim(), x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    return y * scale + bias if bias is not None else y * scale


@torch_lowering("LayerNormalization")
def _layer_norm(lx: Lx, node: Node) -> Any:
    if any(out.uses for out in node.outputs[1:]):
        raise UnsupportedModelError(f"to_torch: {node.describe()}'s mean and inverse-std results are used; only "
                                    "the normalized result has a torch lowering")
    return lx.call(layer_norm, lx.x(node, 0), lx.opt(node, 1), lx.opt(node, 2), int(node.attr("axis", -1)),
                   float(node.attr("epsilon", 1e-5)))


def batch_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
               eps: float) -> torch.Tensor:
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


@torch_lowering("BatchNormalization")
def _batch_norm(lx: Lx, node: Node) -> Any:
    return lx.call(batch_norm, *(lx.x(node, i) for i in range(5)), float(node.attr("epsilon", 1e-5)))


@torch_lowering("GlobalAveragePool")
def _gap(lx: Lx, node: Node) -> Any:
    dims = tuple(range(2, len(node.input(0).shape)))
    return lx.call(torch.mean, lx.x(node, 0), dims, keepdim=True)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              scale: float) -> torch.Tensor:
    """nasc.Attention: softmax(q @ k^T * scale + mask) @ v."""
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask
    return torch.softmax(s, dim=-1) @ v


@torch_lowering("nasc.Attention")
def _attention(lx: Lx, node: Node) -> Any:
    entry = lookup_node(node)
    scale = entry.scale(node) if entry is not None else 1 / math.sqrt(node.input(0).shape[-1])  # type: ignore[attr-defined]
    return lx.call(attention, lx.x(node, 0), lx.x(node, 1), lx.x(node, 2), lx.opt(node, 3), float(scale))

