"""Torch lowerings of QDQ (by ONNX's definition) and nasc's integer ops (exactly as their int64 reference)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nasc.backends.pytorch.lower import Lx, torch_dtype, torch_lowering
from nasc.backends.pytorch.nn import conv, conv_geometry
from nasc.errors import UnsupportedModelError
from nasc.ir.core import Node

# ---- quantization: QDQ by ONNX's definition, nasc's integer ops exactly as their int64 reference ----------


def qparam(p: torch.Tensor, axis: int, block: int, rank: int, n: int) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against the rank-``rank`` operand: one value, one per index of
    ``axis`` (of length ``n``), or one per block of ``block`` along it."""
    if p.dim() == 0 or (p.numel() == 1 and not block):
        return p.reshape(())
    if block:
        return torch.repeat_interleave(p, block, dim=axis).narrow(axis, 0, n)
    return p.reshape([-1 if i == axis else 1 for i in range(rank)])


def quantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int, block: int,
             dtype: torch.dtype, lo: int, hi: int) -> torch.Tensor:
    """ONNX QuantizeLinear: saturate(round(x / scale) + zero_point), rounding half to even."""
    rank, n = x.dim(), x.shape[axis] if x.dim() else 1
    y = torch.round(x.float() / qparam(scale, axis, block, rank, n).float())
    if zp is not None:
        y = y + qparam(zp, axis, block, rank, n).float()
    return torch.clamp(y, lo, hi).to(dtype)


def dequantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int, block: int,
               dtype: torch.dtype) -> torch.Tensor:
    """ONNX DequantizeLinear: (x - zero_point) * scale."""
    rank, n = x.dim(), x.shape[axis] if x.dim() else 1
    y = x.float()
    if zp is not None:
        y = y - qparam(zp, axis, block, rank, n).float()
    return (y * qparam(scale, axis, block, rank, n).float()).to(dtype)


def _q_axis(node: Node) -> tuple[int, int]:
    rank = len(node.input(0).shape)
    return (int(node.attr("axis", 1)) % rank if rank else 0), int(node.attr("block_size", 0) or 0)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int, block: int, lo: int,
               hi: int) -> torch.Tensor:
    """DequantizeLinear(QuantizeLinear(x)) exactly as ONNX defines it; when gradients are recorded, they are
    LSQ's (Esser et al. 2020): straight-through for ``x`` inside [lo, hi], zero outside, and for the scale
    round(x/s) - x/s inside, the clamp bound outside, scaled by 1/sqrt(n * hi)."""
    if torch.is_grad_enabled() and not scale.requires_grad and not _is_bias_range(lo, hi):  # x's gradient only
        rank, n = x.dim(), x.shape[axis] if x.dim() else 1
        z = None if zp is None else qparam(zp, axis, block, rank, n).float()
        return _FakeQuant.apply(x.float(), qparam(scale, axis, block, rank, n).float(), z, lo, hi)[0].to(x.dtype)
    exact = dequantize(quantize(x, scale, zp, axis, block, torch.int32, lo, hi), scale, zp, axis, block, x.dtype)
    if not torch.is_grad_enabled():  # (under vmap, requires_grad cannot be read off the batched operands)
        return exact
    surrogate = _lsq(x.float(), scale.float(), zp, axis, block, lo, hi)
    return exact.detach() + (surrogate - surrogate.detach()).to(exact.dtype)


class _FakeQuant(torch.autograd.Function):
    """Quantize-dequantize with a fixed scale, computed as ``dequantize(quantize(x))`` computes it (the same
    float operations, so the same values), with LSQ's gradient for ``x`` alone: straight through where
    ``x / s + z`` lies in [lo, hi], zero outside. One pass over ``x`` instead of the exact result plus the LSQ
    surrogate (about 1.5x the QAT steps per second on MobileNetV2)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, lo: int,  # type: ignore[override]
                hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = x / s
        q = torch.round(r) if z is None else torch.round(r) + z
        u = r if z is None else r + z
        y = torch.clamp(q, lo, hi)
        return (y if z is None else y - z) * s, (u >= lo) & (u <= hi)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _inside: Any) -> tuple[Any, ...]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def _is_bias_range(lo: int, hi: int) -> bool:
    """An int32 range (a quantized bias), not an activation's or a weight's 4 to 16 bits."""
    return hi - lo > 1 << 16


def _lsq(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int, block: int, lo: int,
         hi: int) -> torch.Tensor:
    if _is_bias_range(lo, hi):  # an int32 bias: rounding at its scale is negligible, the gradient is the identity
        return x
    z = torch.zeros_like(scale) if zp is None else zp.float().reshape(scale.shape)
    factor = 1.0 / float(np.sqrt(max(x.numel() // max(scale.numel(), 1), 1) * max(hi, 1)))
    # written out rather than torch's _fake_quantize_learnable_per_{tensor,channel}_affine, which compute the
    # same estimator but have no vmap batching rule (torch 2.13 warns and loops over the batch) and no blocks
    rank, n = x.dim(), x.shape[axis] if x.dim() else 1
    s = qparam(scale, axis, block, rank, n)
    s = s * factor + (s - s * factor).detach()  # LSQ's gradient scale, value unchanged
    zz = qparam(z, axis, block, rank, n)
    v = torch.clamp(x / s + zz, lo, hi) - zz
    return (v + (torch.round(v) - v).detach()) * s


@torch_lowering("QuantizeLinear")
def _quantize(lx: Lx, node: Node) -> Any:
    from nasc.ir.dtypes import to_numpy

    out = node.outputs[0].dtype
    try:
        np_dt = np.dtype(to_numpy(out))
        dt = torch_dtype(out)
    except Exception:
        np_dt = np.dtype("f4")
        dt = None
    if np_dt.kind not in "iu" or dt is None:
        raise UnsupportedModelError(f"to_torch: {node.describe()}: QuantizeLinear to {out} has no torch lowering")
    info = np.iinfo(np_dt)
    lo, hi = (-8, 7) if out == "i4" else (0, 15) if out == "u4" else (int(info.min), int(info.max))
    if lx.train and _fake_pair(node):
        lx.fake.add(id(node.outputs[0]))
        return lx.call(fake_quant, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), *_q_axis(node), lo, hi)
    return lx.call(quantize, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), *_q_axis(node), dt, lo, hi)


def _fake_pair(q: Node) -> bool:
    """Whether every reader of QuantizeLinear ``q`` dequantizes it with the same parameters (so the pair is one
    fake quantization) and it is no graph output."""
    v = q.outputs[0]
    if q.graph is None or any(o is v for o in q.graph.outputs) or not v.uses:
        return False
    return all(n.op == "DequantizeLinear" and i == 0 and n.inputs[1:] == q.inputs[1:] and n.attrs == q.attrs
               for n, i in v.uses)


@torch_lowering("DequantizeLinear")
def _dequantize(lx: Lx, node: Node) -> Any:
    if node.input(0).dtype not in ("u8", "i8", "i16", "u16", "i32", "i4", "u4"):
        raise UnsupportedModelError(f"to_torch: {node.describe()}: DequantizeLinear of {node.input(0).dtype} has "
                                    "no torch lowering")
    if lx.train and id(node.input(0)) in lx.fake:
        return lx.x(node, 0)  # the QuantizeLinear already lowered the pair
    shadow = lx.shadows.get(id(node.input(0))) if lx.train else None
    if shadow is not None:
        return lx.call(fake_quant, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), shadow.axis, shadow.block,
                       shadow.lo, shadow.hi)
    return lx.call(dequantize, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), *_q_axis(node),
                   torch_dtype(node.outputs[0].dtype))


def requantize(acc: torch.Tensor, mult: torch.Tensor | int, shift: torch.Tensor | int, zp: int, lo: int,
               hi: int) -> torch.Tensor:
    """clip(((acc * M + 2^(n-1)) >> n) + zp, lo, hi) in int64 (an arithmetic shift: round half up), as uint8."""
    m = torch.as_tensor(mult, dtype=torch.int64)
    n = torch.as_tensor(shift, dtype=torch.int64)
    y = torch.bitwise_right_shift(acc.long() * m + torch.bitwise_left_shift(torch.ones_like(n), n - 1), n) + zp
    return torch.clamp(y, lo, hi).to(torch.uint8)


def qconv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, mult: torch.Tensor, shift: torch.Tensor,
          x_zp: int, y_zp: int, lo: int, hi: int, strides: list[int], pads: list[int], dilations: list[int],
          group: int) -> torch.Tensor:
    """nasc.QConv: the convolution of (x - x_zp) with w (padding real zero), exact in float64 (every partial sum
    is an integer far below 2^53), plus the int32 bias, requantized per channel."""
    acc = torch.round(conv(x.double() - x_zp, w.double(), None, strides, pads, dilations, group)).long()
    shape = [1, -1] + [1] * (x.dim() - 2)
    if b is not None:
        acc = acc + b.long().reshape(shape)
    return requantize(acc, mult.long().reshape(shape), shift.long().reshape(shape), y_zp, lo, hi)


@torch_lowering("nasc.QConv")
def _qconv(lx: Lx, node: Node) -> Any:
    strides, pads, dilations = conv_geometry(node)
    return lx.call(qconv, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), lx.x(node, 3), lx.x(node, 4),
                   int(node.attr("x_zp")), int(node.attr("y_zp")), int(node.attr("qmin")), int(node.attr("qmax")),
                   strides, pads, dilations, int(node.attr("group", 1)))


def qlinear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, x_zp: int) -> torch.Tensor:
    """(x - x_zp) w^T + b over the last axis of x, exact (float64 holds every partial sum), as int64."""
    acc = torch.round((x.double() - x_zp) @ w.double().t()).long()
    return acc + b.long() if b is not None else acc


def qgemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, mult: torch.Tensor, shift: torch.Tensor,
          x_zp: int, y_zp: int, lo: int, hi: int) -> torch.Tensor:
    return requantize(qlinear(x, w, b, x_zp), mult.long(), shift.long(), y_zp, lo, hi)


@torch_lowering("nasc.QGemm")
def _qgemm(lx: Lx, node: Node) -> Any:
    return lx.call(qgemm, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), lx.x(node, 3), lx.x(node, 4),
                   int(node.attr("x_zp")), int(node.attr("y_zp")), int(node.attr("qmin")), int(node.attr("qmax")))


def qmatmul(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, x_zp: int) -> torch.Tensor:
    return qlinear(x, w, b, x_zp).to(torch.int32)


@torch_lowering("nasc.QMatMul")
def _qmatmul(lx: Lx, node: Node) -> Any:
    return lx.call(qmatmul, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), int(node.attr("x_zp")))


def qadd(a: torch.Tensor, b: torch.Tensor, a_zp: int, b_zp: int, a_mult: int, b_mult: int, shift: int, y_zp: int,
         lo: int, hi: int) -> torch.Tensor:
    acc = (a.long() - a_zp) * a_mult + (b.long() - b_zp) * b_mult
    return requantize(acc, 1, shift, y_zp, lo, hi)


@torch_lowering("nasc.QAdd")
def _qadd(lx: Lx, node: Node) -> Any:
    return lx.call(qadd, lx.x(node, 0), lx.x(node, 1), *(int(node.attr(a)) for a in (
        "a_zp", "b_zp", "a_mult", "b_mult", "shift", "y_zp", "qmin", "qmax")))


def qgap(x: torch.Tensor, x_zp: int, mult: int, shift: int, y_zp: int) -> torch.Tensor:
    acc = torch.sum(x.long() - x_zp, tuple(range(2, x.dim())), keepdim=True)
    return requantize(acc, mult, shift, y_zp, 0, 255)


@torch_lowering("nasc.QGlobalAveragePool")
def _qgap(lx: Lx, node: Node) -> Any:
    return lx.call(qgap, lx.x(node, 0), *(int(node.attr(a)) for a in ("x_zp", "mult", "shift", "y_zp")))


def _zero_point(zp: torch.Tensor | None, rows: bool) -> Any:
    """A MatMulInteger / ConvInteger zero point as float64: one value, or one per row (a_zero_point of
    MatMulInteger; w_zero_point of ConvInteger, per output channel)."""
    if zp is None:
        return 0.0
    z = zp.double()
    return z.reshape(()) if z.numel() == 1 else (z.reshape(-1, 1) if rows else z)


def matmul_integer(a: torch.Tensor, b: torch.Tensor, a_zp: torch.Tensor | None,
                   b_zp: torch.Tensor | None) -> torch.Tensor:
    """(a - a_zp) @ (b - b_zp) exactly (float64 holds every partial sum of 8-bit products), as int32."""
    return torch.round((a.double() - _zero_point(a_zp, True)) @ (b.double() - _zero_point(b_zp, False))).to(torch.int32)


@torch_lowering("MatMulInteger")
def _matmul_integer(lx: Lx, node: Node) -> Any:
    return lx.call(matmul_integer, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), lx.opt(node, 3))


def conv_integer(x: torch.Tensor, w: torch.Tensor, x_zp: torch.Tensor | None, w_zp: torch.Tensor | None,
                 strides: list[int], pads: list[int], dilations: list[int], group: int) -> torch.Tensor:
    """(x - x_zp) convolved with (w - w_zp), padding with x_zp (zero after the shift), exact, as int32."""
    xz = x.double() - (x_zp.double().reshape(()) if x_zp is not None else 0.0)
    wz = w.double()
    if w_zp is not None:
        z = w_zp.double()
        wz = wz - (z.reshape(()) if z.numel() == 1 else z.reshape(-1, *[1] * (w.dim() - 1)))
    return torch.round(conv(xz, wz, None, strides, pads, dilations, group)).to(torch.int32)


@torch_lowering("ConvInteger")
def _conv_integer(lx: Lx, node: Node) -> Any:
    strides, pads, dilations = conv_geometry(node)
    return lx.call(conv_integer, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), lx.opt(node, 3), strides, pads,
                   dilations, int(node.attr("group", 1)))

