"""Relax lowerings of QuantizeLinear / DequantizeLinear and of nasc's integer ops (``nasc.ir.ops.quant``).

The integer ops compute exactly as their numpy reference: activations widened to int16 minus their zero
point, int8 weights widened to int16, int32 accumulation (``out_dtype="int32"``), int32 bias, then
requantization in int64: ``((acc * M + 2^(n-1)) >> n) + zp``, clipped, cast to uint8. No floating point.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from nasc.backends.tvm.lower import Lx, lowering, out_shape
from nasc.backends.tvm.ops import _conv_pads
from nasc.ir.core import Node


def _axis_shape(node: Node, size: int, rank: int) -> list[int]:
    shape = [1] * rank
    if size > 1:
        shape[int(node.attr("axis", 1)) % rank] = size
    return shape


def _qparam(lx: Lx, node: Node, i: int, dtype: str, rank: int) -> relax.Expr:
    v = node.input(i)
    arr = np.asarray(v.data).astype(dtype) if v is not None else np.zeros((), dtype)
    return lx.const(arr.reshape(_axis_shape(node, arr.size, rank)), _IR[dtype])


_IR = {"float32": "f32", "int32": "i32", "int64": "i64", "int16": "i16"}


@lowering("DequantizeLinear")
def _dequantize(lx: Lx, node: Node) -> Any:
    rank = len(node.input(0).shape)
    src = node.input(0).producer
    if src is not None and src.domain == "nasc" and src.op.startswith("Q"):
        return _dequantize_apart(lx, node, rank)
    x = R.astype(lx.x(node, 0), "float32")
    if node.has_input(2):
        x = R.subtract(x, _qparam(lx, node, 2, "float32", rank))
    return lx.emit(R.multiply(x, _qparam(lx, node, 1, "float32", rank)))


def _dequantize_apart(lx: Lx, node: Node, rank: int) -> Any:
    """The dequantize after an integer op as a kernel of its own (marked opaque, so that fusion cannot pull
    float arithmetic into the integer kernel before it)."""
    from tvm import te, topi

    scale = np.asarray(node.input(1).data, np.float32).reshape(_axis_shape(node, node.input(1).tensor_type.numel, rank))
    zp = (np.asarray(node.input(2).data, np.float32) if node.has_input(2) else np.zeros((), np.float32)).reshape(
        _axis_shape(node, node.input(2).tensor_type.numel if node.has_input(2) else 1, rank))

    def compute(x: te.Tensor, s: te.Tensor, z: te.Tensor) -> te.Tensor:
        return topi.multiply(topi.subtract(topi.cast(x, "float32"), z), s)

    return lx.bb.emit(lx.bb.call_te(compute, lx.x(node, 0), lx.const(scale, "f32"), lx.const(zp, "f32"),
                                    primfunc_name_hint="dequantize", primfunc_attrs={"op_pattern": 8}))


@lowering("QuantizeLinear")
def _quantize(lx: Lx, node: Node) -> Any:
    rank = len(node.input(0).shape)
    out = node.outputs[0].dtype
    lo, hi = (0, 255) if out == "u8" else (-128, 127)
    y = R.round(R.divide(lx.x(node, 0), _qparam(lx, node, 1, "float32", rank)))
    if node.has_input(2):
        y = R.add(y, _qparam(lx, node, 2, "float32", rank))
    return lx.emit(R.astype(R.clip(y, lo, hi), "uint8" if out == "u8" else "int8"))


def _requantize(acc: relax.Expr, mult: relax.Expr, shift: relax.Expr, zp: int, lo: int, hi: int) -> relax.Expr:
    a = R.astype(acc, "int64")
    rounding = R.left_shift(relax.const(1, "int64"), R.subtract(shift, relax.const(1, "int64")))
    y = R.right_shift(R.add(R.multiply(a, mult), rounding), shift)
    y = R.add(y, relax.const(zp, "int64"))
    return R.astype(R.clip(y, lo, hi), "uint8")


def _centered(lx: Lx, node: Node, i: int, zp: int) -> relax.Expr:
    return R.subtract(R.astype(lx.x(node, i), "int16"), relax.const(zp, "int16"))


def _per_channel(lx: Lx, node: Node, i: int, shape: list[int]) -> relax.Expr:
    return lx.const(np.asarray(node.input(i).data, np.int64).reshape(shape), "i64")


@lowering("nasc.QConv")
def _qconv(lx: Lx, node: Node) -> Any:
    x, w = node.input(0), node.input(1)
    strides = list(node.attr("strides", (1, 1)))
    dilations = list(node.attr("dilations", (1, 1)))
    pads = _conv_pads(node, list(x.shape[2:]), list(w.shape[2:]), strides, dilations, out_shape(node)[2:])
    c = int(w.shape[0])
    acc = R.nn.conv2d(_centered(lx, node, 0, int(node.attr("x_zp"))), lx.const(np.asarray(w.data), "i16"),
                      strides=strides, padding=pads, dilation=dilations, groups=int(node.attr("group", 1)),
                      data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32")
    if node.has_input(2):
        acc = R.add(acc, lx.const(np.asarray(node.input(2).data, np.int32).reshape(1, c, 1, 1), "i32"))
    y = _requantize(acc, _per_channel(lx, node, 3, [1, c, 1, 1]), _per_channel(lx, node, 4, [1, c, 1, 1]),
                    int(node.attr("y_zp")), int(node.attr("qmin")), int(node.attr("qmax")))
    return lx.emit(y)


@lowering("nasc.QGemm")
def _qgemm(lx: Lx, node: Node) -> Any:
    w = np.asarray(node.input(1).data)
    n = w.shape[0]
    acc = R.matmul(_centered(lx, node, 0, int(node.attr("x_zp"))), lx.const(w.T.copy(), "i16"), out_dtype="int32")
    if node.has_input(2):
        acc = R.add(acc, lx.const(np.asarray(node.input(2).data, np.int32).reshape(1, n), "i32"))
    y = _requantize(acc, _per_channel(lx, node, 3, [1, n]), _per_channel(lx, node, 4, [1, n]),
                    int(node.attr("y_zp")), int(node.attr("qmin")), int(node.attr("qmax")))
    return lx.emit(y)


@lowering("nasc.QAdd")
def _qadd(lx: Lx, node: Node) -> Any:
    def term(i: int, zp: str, mult: str) -> relax.Expr:
        centered = R.subtract(R.astype(lx.x(node, i), "int64"), relax.const(int(node.attr(zp)), "int64"))
        return R.multiply(centered, relax.const(int(node.attr(mult)), "int64"))

    acc = R.add(term(0, "a_zp", "a_mult"), term(1, "b_zp", "b_mult"))
    shift = relax.const(int(node.attr("shift")), "int64")
    return lx.emit(_requantize(acc, relax.const(1, "int64"), shift, int(node.attr("y_zp")), int(node.attr("qmin")),
                               int(node.attr("qmax"))))


@lowering("nasc.QGlobalAveragePool")
def _qgap(lx: Lx, node: Node) -> Any:
    axes = list(range(2, len(node.input(0).shape)))
    centered = R.subtract(R.astype(lx.x(node, 0), "int32"), relax.const(int(node.attr("x_zp")), "int32"))
    acc = R.sum(centered, axis=axes, keepdims=True)
    return lx.emit(_requantize(acc, relax.const(int(node.attr("mult")), "int64"),
                               relax.const(int(node.attr("shift")), "int64"), int(node.attr("y_zp")), 0, 255))
