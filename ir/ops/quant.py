"""Integer ops (domain "nasc") that the TVM backends make from QDQ patterns, and their numpy reference.

The requantizing ops take uint8 activations with a zero point, accumulate exactly in int32/int64 and requantize to
uint8 by a fixed-point multiplier and shift:

    y = clip(((acc * M + 2^(n-1)) >> n) + zp_out, qmin, qmax)

where ``M`` (int, in [2^30, 2^31)) and ``n`` approximate the real scale ratio ``m = M * 2^-n`` and ``>>`` is an
arithmetic shift (floor), so the rounding rule is round half up (towards +infinity). ONNX Runtime's
QuantizeLinear rounds half to even on the float product, so results may differ by 1 LSB.
ReLU and ReLU6 are folded into ``qmin``/``qmax``. ``fold`` is the numpy reference that generated code is
checked against bit for bit.

- ``nasc.QConv(x u8, w i8, bias i32, M i64[C], n i64[C])`` {Conv attributes, x_zp, y_zp, qmin, qmax}
- ``nasc.QGemm(x u8 [..., K], w i8 [N,K], bias i32 [N], M i64[N], n i64[N])`` {x_zp, y_zp, qmin, qmax}
- ``nasc.QMatMul(x u8 [..., K], w i8 [N,K], bias i32 [N])`` {x_zp}: the int32 accumulator ``(x - x_zp) w^T + bias``
  itself, for a linear layer whose output stays float (a transformer's projections feed LayerNorm, GELU,
  Softmax); a DequantizeLinear by ``s_x * s_w`` follows it
- ``nasc.QAdd(a u8, b u8)`` {a_zp, b_zp, y_zp, a_mult, b_mult, shift, qmin, qmax}
- ``nasc.QGlobalAveragePool(x u8)`` {x_zp, y_zp, mult, shift}
"""

from __future__ import annotations

import math

import numpy as np

from nasc.ir.core import Node
from nasc.ir.ops.nn import _ConvBase
from nasc.ir.ops.registry import Cost, InferenceError, OpDef, io_bytes, numel, register, ttype
from nasc.ir.types import TensorType, Type


def quantize_multiplier(m: float) -> tuple[int, int]:
    """(M, n) with M in [2^30, 2^31) and m ~= M * 2^-n; m must be in (2^-31, 2^30)."""
    if not (m > 2.0**-31 and m < 2.0**30):
        raise ValueError(f"scale ratio {m!r} is out of the fixed-point range")
    e = math.floor(math.log2(m))
    n = 30 - e
    big = round(m * 2.0**n)
    if big >= 2**31:
        big //= 2
        n -= 1
    return int(big), int(n)


def requantize(acc: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int, zp: int, qmin: int,
               qmax: int) -> np.ndarray:
    """The rounding rule of every integer op (see the module docstring), on int64."""
    a = np.asarray(acc, dtype=np.int64)
    m = np.asarray(mult, dtype=np.int64)
    n = np.asarray(shift, dtype=np.int64)
    y = ((a * m + (np.int64(1) << (n - 1))) >> n) + zp
    return np.clip(y, qmin, qmax).astype(np.uint8)


def _requantize_node(node: Node, acc: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int,
                     clamp: bool = True) -> np.ndarray:
    """``requantize`` with the node's output zero point and (unless ``clamp`` is off) its qmin/qmax."""
    lo, hi = (int(node.attr("qmin")), int(node.attr("qmax"))) if clamp else (0, 255)
    return requantize(acc, mult, shift, int(node.attr("y_zp")), lo, hi)


def _channel(v: np.ndarray, rank: int) -> np.ndarray:
    """Per-channel vector [C] shaped to broadcast over axis 1 of a rank-``rank`` tensor."""
    return np.asarray(v).reshape((1, -1) + (1,) * (rank - 2))


def conv_int(x: np.ndarray, w: np.ndarray, x_zp: int, pads: list[int], strides: list[int], dilations: list[int],
             group: int) -> np.ndarray:
    """Exact 2-D convolution of (x - x_zp) with w in int64; padding is real zero (x_zp in uint8)."""
    xs = np.asarray(x, np.int64) - x_zp
    w64 = np.asarray(w, np.int64)
    n, _, h, wd = xs.shape
    co, cig, kh, kw = w64.shape
    xp = np.pad(xs, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((n, co, oh, ow), np.int64)
    cog = co // group
    for g in range(group):
        xg = xp[:, g * cig:(g + 1) * cig]
        wg = w64[g * cog:(g + 1) * cog]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * dilations[0]: i * dilations[0] + strides[0] * (oh - 1) + 1: strides[0],
                           j * dilations[1]: j * dilations[1] + strides[1] * (ow - 1) + 1: strides[1]]
                out[:, g * cog:(g + 1) * cog] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return out


def _ints(node: Node, name: str, n: int, default: int) -> list[int]:
    v = node.attr(name)
    return [int(x) for x in v] if v is not None else [default] * n


@register
class QConv(_ConvBase):
    name = "QConv"
    domain = "nasc"
    out_dtype = "u8"
    bias_slot = 2
    foldable = True

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x, w, b, mult, shift = args
        if x is None or w is None or mult is None or shift is None:
            return None
        pads = _ints(node, "pads", 4, 0)
        acc = conv_int(x, w, int(node.attr("x_zp")), pads, _ints(node, "strides", 2, 1),
                       _ints(node, "dilations", 2, 1), int(node.attr("group", 1)))
        if b is not None:
            acc = acc + _channel(b, 4)
        return [_requantize_node(node, acc, _channel(mult, 4), _channel(shift, 4))]


def linear_int(node: Node, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Exact ``(x - x_zp) w^T + b`` in int64 over the last axis of x."""
    acc = (np.asarray(x, np.int64) - int(node.attr("x_zp"))) @ np.asarray(w, np.int64).T
    return acc + np.asarray(b, np.int64) if b is not None else acc


@register
class QGemm(OpDef):
    name = "QGemm"
    domain = "nasc"
    foldable = True
    out_dtype = "u8"

    def infer(self, node: Node) -> list[Type]:
        x, w = ttype(node, 0), ttype(node, 1)
        if x.shape is None or w.shape is None:
            return [TensorType(self.out_dtype, None)]
        if len(x.shape) < 2 or len(w.shape) != 2 or x.shape[-1] != w.shape[1]:
            raise InferenceError(f"{node.describe()}: expects x [..., K] and w [N, K], got {x.shape} and {w.shape}")
        return [TensorType(self.out_dtype, (*x.shape[:-1], w.shape[0]))]

    def cost(self, node: Node) -> Cost:
        x, w = ttype(node, 0).shape, ttype(node, 1).shape
        return Cost(numel(x) * (w[0] if w is not None and isinstance(w[0], int) else 0) if x else 0, io_bytes(node))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x, w, b, mult, shift = args
        if x is None or w is None or mult is None or shift is None:
            return None
        return [_requantize_node(node, linear_int(node, x, w, b), np.asarray(mult), np.asarray(shift))]


@register
class QMatMul(QGemm):
    """QGemm without the requantization: the int32 accumulator."""

    name = "QMatMul"
    out_dtype = "i32"

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x, w = args[0], args[1]
        if x is None or w is None:
            return None
        acc = linear_int(node, x, w, args[2] if len(args) > 2 else None)
        if np.any(np.abs(acc) >= 2**31):
            raise OverflowError(f"{node.describe()}: the int32 accumulator overflows")
        return [acc.astype(np.int32)]


@register
class QAdd(OpDef):
    name = "QAdd"
    domain = "nasc"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        a, b = ttype(node, 0), ttype(node, 1)
        if a.shape != b.shape:
            raise InferenceError(f"{node.describe()}: operands must have one shape, got {a.shape} and {b.shape}")
        return [TensorType("u8", a.shape)]

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        a, b = args
        if a is None or b is None:
            return None
        acc = ((np.asarray(a, np.int64) - int(node.attr("a_zp"))) * int(node.attr("a_mult"))
               + (np.asarray(b, np.int64) - int(node.attr("b_zp"))) * int(node.attr("b_mult")))
        return [_requantize_node(node, acc, 1, int(node.attr("shift")))]


@register
class QGlobalAveragePool(OpDef):
    name = "QGlobalAveragePool"
    domain = "nasc"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        x = ttype(node, 0)
        if x.shape is None:
            return [TensorType("u8", None)]
        return [TensorType("u8", (*x.shape[:2], *([1] * (len(x.shape) - 2))))]

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        (x,) = args
        if x is None:
            return None
        axes = tuple(range(2, np.ndim(x)))
        acc = np.sum(np.asarray(x, np.int64) - int(node.attr("x_zp")), axis=axes, keepdims=True)
        return [_requantize_node(node, acc, int(node.attr("mult")), int(node.attr("shift")), clamp=False)]
