"""Torch lowerings of the elementwise ops and reductions, one per op, with ONNX semantics (shape ops: shape.py;
nn ops: nn.py; quantization: quant.py).

Helpers that fx calls are module-level functions, so a GraphModule's generated code can name them.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nasc.backends.pytorch.lower import Lx, const_of, constant_node, torch_dtype, torch_lowering
from nasc.errors import UnsupportedModelError
from nasc.ir.core import Node

# ---- elementwise ---------------------------------------------------------------------------------------

_BINARY: dict[str, Callable[..., Any]] = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "And": torch.logical_and,
           "Or": torch.logical_or, "Xor": torch.logical_xor, "Equal": torch.eq, "Less": torch.lt,
           "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge, "BitwiseAnd": torch.bitwise_and,
           "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor}
_UNARY = {"Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp, "Log": torch.log,
          "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs, "Erf": torch.erf, "Not": torch.logical_not,
          "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Sin": torch.sin,
          "Cos": torch.cos, "Identity": torch.clone, "Sign": torch.sign, "Round": torch.round,
          "IsNaN": torch.isnan, "BitwiseNot": torch.bitwise_not, "HardSwish": F.hardswish, "nasc.SiLU": F.silu,
          "Tan": torch.tan, "Atan": torch.atan, "Asin": torch.asin, "Acos": torch.acos, "Sinh": torch.sinh,
          "Cosh": torch.cosh, "Asinh": torch.asinh, "Acosh": torch.acosh, "Atanh": torch.atanh, "Mish": F.mish,
          "Softsign": F.softsign}


# torch has few kernels for uint16/32/64 (no add, compare, max, div, ...): those ops compute in int64
_UNSIGNED = ("u16", "u32", "u64")
_SIGN = -(2**63)  # flipping the sign bit orders uint64 bit patterns held in int64 as signed order does
_ORDERED = {"Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
            "Max": torch.maximum, "Min": torch.minimum}
_WIDE: dict[str, Callable[..., Any]] = {**_BINARY, "Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "BitwiseNot": torch.bitwise_not,
         "Div": lambda a, b: torch.div(a, b, rounding_mode="trunc"), "Mod": torch.remainder}


def divu(n: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """uint64 ``n // d`` on their bit patterns held in int64 (Hacker's Delight's divlu by a signed division)."""
    big = d < 0  # d >= 2**63: the quotient is 0 or 1
    ds = torch.where(big, torch.ones_like(d), d)
    q = (((n >> 1) & (2**63 - 1)) // ds) << 1  # a logical shift: half of n fits int64, then doubled
    q = q + (((n - q * ds) ^ _SIGN) >= (ds ^ _SIGN)).to(torch.int64)  # the remainder is in [0, 2d): one more step
    return torch.where(big, ((n ^ _SIGN) >= (d ^ _SIGN)).to(torch.int64), q)


def unsigned_op(op: str, *xs: torch.Tensor) -> torch.Tensor:
    """``op`` on uint16/32/64 operands: in int64 (uint64 bit for bit, ordered by its flipped sign bit), the
    result cast back with ONNX's wrap-around."""
    dt = xs[0].dtype
    w = [x.to(torch.int64) for x in xs]
    if dt == torch.uint64 and op in _ORDERED:
        y = _ORDERED[op](*(x ^ _SIGN for x in w))
        return y if y.dtype == torch.bool else (y ^ _SIGN).to(dt)
    if dt == torch.uint64 and op in ("Div", "Mod"):
        q = divu(w[0], w[1])
        return (q if op == "Div" else w[0] - q * w[1]).to(dt)
    y = _WIDE[op](*w)
    return y if y.dtype == torch.bool else y.to(dt)


def _is_unsigned(node: Node) -> bool:
    return node.input(0).dtype in _UNSIGNED


@torch_lowering(*_BINARY)
def _binary(lx: Lx, node: Node) -> Any:
    if node.op != "Pow" and _is_unsigned(node):
        return lx.call(unsigned_op, node.op, lx.x(node, 0), lx.x(node, 1))
    y = lx.call(_BINARY[node.op], lx.x(node, 0), lx.x(node, 1))
    if node.op == "Pow" and node.input(1).dtype != node.outputs[0].dtype:  # the base's type (int ** float)
        y = lx.call(torch.Tensor.to, y, torch_dtype(node.outputs[0].dtype))
    return y


@torch_lowering(*_UNARY)
def _unary(lx: Lx, node: Node) -> Any:
    if node.op == "BitwiseNot" and _is_unsigned(node):
        return lx.call(unsigned_op, node.op, lx.x(node, 0))
    return lx.call(_UNARY[node.qualified_op], lx.x(node, 0))


_VARIADIC = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}


def mean_of(x: torch.Tensor, n: int) -> torch.Tensor:
    return x / n


@torch_lowering(*_VARIADIC)
def _variadic(lx: Lx, node: Node) -> Any:
    acc = lx.x(node, 0)
    for i in range(1, len(node.inputs)):
        if node.op != "Mean" and _is_unsigned(node):
            acc = lx.call(unsigned_op, node.op, acc, lx.x(node, i))
        else:
            acc = lx.call(_VARIADIC[node.op], acc, lx.x(node, i))
    return lx.call(mean_of, acc, len(node.inputs)) if node.op == "Mean" else acc


def mod(a: torch.Tensor, b: torch.Tensor, fmod: bool) -> torch.Tensor:
    """ONNX Mod: fmod=1 truncates (C fmod); fmod=0 takes the divisor's sign (numpy's mod, signed zeros too)."""
    if fmod:
        return torch.fmod(a, b)
    if not a.dtype.is_floating_point:
        return torch.remainder(a, b)
    r = torch.fmod(a, b)
    moved = torch.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)
    return torch.where(r == 0, torch.where(b < 0, -torch.zeros_like(r), torch.zeros_like(r)), moved)


@torch_lowering("Mod")
def _mod(lx: Lx, node: Node) -> Any:
    if _is_unsigned(node):
        return lx.call(unsigned_op, node.op, lx.x(node, 0), lx.x(node, 1))
    return lx.call(mod, lx.x(node, 0), lx.x(node, 1), bool(node.attr("fmod", 0)))


def isinf(x: torch.Tensor, pos: bool, neg: bool) -> torch.Tensor:
    if pos and neg:
        return torch.isinf(x)
    if not (pos or neg):
        return torch.zeros_like(x, dtype=torch.bool)
    return x == (math.inf if pos else -math.inf)


@torch_lowering("IsInf")
def _isinf(lx: Lx, node: Node) -> Any:
    return lx.call(isinf, lx.x(node, 0), bool(node.attr("detect_positive", 1)), bool(node.attr("detect_negative", 1)))


def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, x * slope, x)


@torch_lowering("PRelu")
def _prelu(lx: Lx, node: Node) -> Any:
    return lx.call(prelu, lx.x(node, 0), lx.x(node, 1))


def hard_sigmoid(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


@torch_lowering("HardSigmoid")
def _hard_sigmoid(lx: Lx, node: Node) -> Any:
    return lx.call(hard_sigmoid, lx.x(node, 0), float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5)))


def softplus(x: torch.Tensor) -> torch.Tensor:
    """ONNX Softplus: log(exp(x) + 1), without overflow."""
    return torch.logaddexp(x, torch.zeros_like(x))


@torch_lowering("Softplus")
def _softplus(lx: Lx, node: Node) -> Any:
    return lx.call(softplus, lx.x(node, 0))


def selu(x: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


def thresholded_relu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.where(x > alpha, x, torch.zeros_like(x))


def shrink(x: torch.Tensor, bias: float, lambd: float) -> torch.Tensor:
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, torch.zeros_like(x)))


@torch_lowering("Elu", "Celu", "Selu", "ThresholdedRelu", "Shrink")
def _alpha_activations(lx: Lx, node: Node) -> Any:
    x = lx.x(node, 0)
    if node.op == "Elu":
        return lx.call(F.elu, x, float(node.attr("alpha", 1.0)))
    if node.op == "Celu":
        return lx.call(F.celu, x, float(node.attr("alpha", 1.0)))
    if node.op == "Selu":
        return lx.call(selu, x, float(node.attr("alpha", 1.67326319217681884765625)),
                       float(node.attr("gamma", 1.05070102214813232421875)))
    if node.op == "ThresholdedRelu":
        return lx.call(thresholded_relu, x, float(node.attr("alpha", 1.0)))
    return lx.call(shrink, x, float(node.attr("bias", 0.0)), float(node.attr("lambd", 0.5)))


def hardmax(x: torch.Tensor, axis: int) -> torch.Tensor:
    """1 at the first maximum along ``axis``, 0 elsewhere."""
    idx = torch.argmax(x, axis, keepdim=True)
    return torch.zeros_like(x).scatter(axis, idx, 1.0)


@torch_lowering("Hardmax")
def _hardmax(lx: Lx, node: Node) -> Any:
    return lx.call(hardmax, lx.x(node, 0), int(node.attr("axis", -1)) % len(node.input(0).shape))


def swish(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return x * torch.sigmoid(alpha * x)


@torch_lowering("Swish")
def _swish(lx: Lx, node: Node) -> Any:
    return lx.call(swish, lx.x(node, 0), float(node.attr("alpha", 1.0)))


@torch_lowering("nasc.Relu6")
def _relu6(lx: Lx, node: Node) -> Any:
    return lx.call(F.relu6, lx.x(node, 0))


def dropout_mask(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x, dtype=torch.bool)


@torch_lowering("Dropout")
def _dropout(lx: Lx, node: Node) -> Any:
    """Inference: the input, and an all-true mask. Training mode with a nonzero ratio is random: refused."""
    training = float(const_of(node, 2).reshape(-1)[0]) if node.has_input(2) else 0.0
    ratio = float(const_of(node, 1).reshape(-1)[0]) if node.has_input(1) else 0.5
    if training and ratio:
        raise UnsupportedModelError(f"to_torch: {node.describe()}: training-mode Dropout (random) has no lowering")
    x = lx.call(torch.clone, lx.x(node, 0))
    return [x, lx.call(dropout_mask, lx.x(node, 0))] if len(node.outputs) > 1 else x


def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Div: integer division truncates."""
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


@torch_lowering("Div")
def _div(lx: Lx, node: Node) -> Any:
    if _is_unsigned(node):
        return lx.call(unsigned_op, node.op, lx.x(node, 0), lx.x(node, 1))
    return lx.call(div, lx.x(node, 0), lx.x(node, 1))


@torch_lowering("Where")
def _where(lx: Lx, node: Node) -> Any:
    return lx.call(torch.where, lx.x(node, 0), lx.x(node, 1), lx.x(node, 2))


_SUB_BYTE = {"i4": (4, True), "u4": (4, False), "i2": (2, True), "u2": (2, False)}  # bits, signed


def cast_sub_byte(x: torch.Tensor, bits: int, signed: bool, dtype: torch.dtype) -> torch.Tensor:
    """A cast to a 4- or 2-bit integer (held in 8 bits): the low bits kept, as ONNX casts integers out of range
    (a float is truncated first; ONNX leaves its cast out of range undefined)."""
    y = x.to(torch.int64) & ((1 << bits) - 1)
    if signed:
        y = torch.where(y >= 1 << (bits - 1), y - (1 << bits), y)
    return y.to(dtype)


@torch_lowering("Cast", "CastLike")
def _cast(lx: Lx, node: Node) -> Any:
    out = node.outputs[0].dtype
    if out in _SUB_BYTE and node.input(0).dtype not in _SUB_BYTE:
        return lx.call(cast_sub_byte, lx.x(node, 0), *_SUB_BYTE[out], torch_dtype(out))
    return lx.call(torch.Tensor.to, lx.x(node, 0), torch_dtype(out))


@torch_lowering("Gelu")
def _gelu(lx: Lx, node: Node) -> Any:
    return lx.call(F.gelu, lx.x(node, 0), approximate=str(node.attr("approximate", "none")))


@torch_lowering("LeakyRelu")
def _leaky(lx: Lx, node: Node) -> Any:
    return lx.call(F.leaky_relu, lx.x(node, 0), float(node.attr("alpha", 0.01)))


@torch_lowering("Clip")
def _clip(lx: Lx, node: Node) -> Any:
    lo, hi = lx.opt(node, 1), lx.opt(node, 2)
    if lo is None and hi is None:
        return lx.call(torch.clone, lx.x(node, 0))
    return lx.call(torch.clamp, lx.x(node, 0), lo, hi)


@torch_lowering("Softmax")
def _softmax(lx: Lx, node: Node) -> Any:
    return lx.call(torch.softmax, lx.x(node, 0), int(node.attr("axis", -1)))


# ---- reductions -----------------------------------------------------------------------------------------


def _reduce_axes(node: Node) -> list[int]:
    """The reduced axes; [] when none are (noop_with_empty_axes): then only the elementwise part applies."""
    rank = len(node.input(0).shape)
    axes = [int(a) for a in const_of(node, 1).reshape(-1)] if node.has_input(1) else node.attr("axes")
    if not axes:
        return [] if int(node.attr("noop_with_empty_axes", 0)) else list(range(rank))
    return sorted({int(a) % rank for a in axes})


def _empty_reduction(op: str, dtype: np.dtype) -> Any:
    """What a reduction over no elements gives (ONNX's reference: the identity of the reduction)."""
    if op in ("ReduceMax", "ReduceMin"):
        if dtype.kind == "b":
            return op == "ReduceMin"
        if dtype.kind in "iu":
            return np.iinfo(dtype).min if op == "ReduceMax" else np.iinfo(dtype).max
        return -np.inf if op == "ReduceMax" else np.inf
    return {"ReduceProd": 1, "ReduceLogSumExp": -np.inf, "ReduceMean": np.nan}.get(op, 0)


def reduce(x: torch.Tensor, op: str, axes: list[int], keep: bool) -> torch.Tensor:
    """ONNX Reduce* over ``axes`` (none: the elementwise part only)."""
    if op == "ReduceL1":
        x = x.abs()
    elif op in ("ReduceL2", "ReduceSumSquare"):
        x = x * x
    if not axes:
        return x
    if op in ("ReduceMax", "ReduceMin") and x.dtype == torch.bool:
        return reduce(x.to(torch.uint8), op, axes, keep).to(torch.bool)
    if op == "ReduceMax":
        return torch.amax(x, axes, keepdim=keep)
    if op == "ReduceMin":
        return torch.amin(x, axes, keepdim=keep)
    if op == "ReduceMean":
        return torch.mean(x, axes, keepdim=keep)
    if op == "ReduceProd":
        for a in reversed(axes):
            x = torch.prod(x, a, keepdim=keep)
        return x
    if op == "ReduceLogSumExp":
        return torch.logsumexp(x, axes, keepdim=keep)
    y = torch.sum(x, axes, keepdim=keep, dtype=x.dtype)
    return torch.sqrt(y) if op == "ReduceL2" else y


_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
           "ReduceSumSquare", "ReduceLogSumExp")


@torch_lowering(*_REDUCE)
def _reduce(lx: Lx, node: Node) -> Any:
    from nasc.ir.dtypes import to_numpy

    axes = _reduce_axes(node)
    out = node.outputs[0]
    if any(node.input(0).shape[a] == 0 for a in axes):
        dt = np.dtype(to_numpy(out.dtype))
        return constant_node(lx, np.full(out.shape, _empty_reduction(node.op, dt), dt), out.dtype)
    return lx.call(reduce, lx.x(node, 0), node.op, axes, bool(node.attr("keepdims", 1)))


def argmax(x: torch.Tensor, is_max: bool, axis: int, keep: bool, last: bool) -> torch.Tensor:
    fn = torch.argmax if is_max else torch.argmin
    if not last:
        return fn(x, axis, keepdim=keep)
    return (x.shape[axis] - 1) - fn(torch.flip(x, (axis,)), axis, keepdim=keep)


@torch_lowering("ArgMax", "ArgMin")
def _argmax(lx: Lx, node: Node) -> Any:
    return lx.call(argmax, lx.x(node, 0), node.op == "ArgMax", int(node.attr("axis", 0)) % len(node.input(0).shape),
                   bool(node.attr("keepdims", 1)), bool(node.attr("select_last_index", 0)))


def cumulative(x: torch.Tensor, axis: int, exclusive: bool, reverse: bool, product: bool) -> torch.Tensor:
    """ONNX CumSum (CumProd with ``product``): ``exclusive`` shifts by one along the axis, the identity first."""
    if reverse:
        x = torch.flip(x, (axis,))
    if exclusive:
        first = (torch.ones_like if product else torch.zeros_like)(x.narrow(axis, 0, 1))
        x = torch.cat([first, x.narrow(axis, 0, x.shape[axis] - 1)], axis)
    y = (torch.cumprod if product else torch.cumsum)(x, axis, dtype=x.dtype)
    return torch.flip(y, (axis,)) if reverse else y


@torch_lowering("CumSum", "CumProd")
def _cumsum(lx: Lx, node: Node) -> Any:
    axis = int(const_of(node, 1).reshape(-1)[0]) % len(node.input(0).shape)
    return lx.call(cumulative, lx.x(node, 0), axis, bool(node.attr("exclusive", 0)), bool(node.attr("reverse", 0)),
                   node.op == "CumProd")


@torch_lowering("LogSoftmax")
def _log_softmax(lx: Lx, node: Node) -> Any:
    return lx.call(torch.log_softmax, lx.x(node, 0), int(node.attr("axis", -1)))


@torch_lowering("Einsum")
def _einsum(lx: Lx, node: Node) -> Any:
    return lx.call(torch.einsum, str(node.attr("equation")), *(lx.x(node, i) for i in range(len(node.inputs))))


def topk(x: torch.Tensor, k: int, axis: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX TopK, sorted; equal values keep their order (the lower index first), by a stable sort."""
    values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
    return values.narrow(axis, 0, k), indices.narrow(axis, 0, k)


@torch_lowering("TopK")
def _topk(lx: Lx, node: Node) -> Any:
    axis = int(node.attr("axis", -1)) % len(node.input(0).shape)
    parts = lx.call(topk, lx.x(node, 0), int(node.outputs[0].shape[axis]), axis, bool(node.attr("largest", 1)))
    return [lx.call(operator.getitem, parts, i) for i in range(len(node.outputs))]


