"""The lowering table: one entry per IR op, IR node -> Relax expression(s).

Shapes in the IR are static, so shape-moving ops (Reshape, Flatten, Squeeze,
Unsqueeze, Expand) lower to a reshape or broadcast to the node's known result
shape, and operands that carry shapes (Slice's starts, Pad's pads, ...) are read
from their constants.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tvm import relax
from tvm.relax import op as R

from nasc.backends.tvm.lower import Lx, ints, lowering, out_shape, scalar, tvm_dtype
from nasc.errors import UnsupportedModelError
from nasc.ir.core import Node
from nasc.ir.ops.registry import lookup_node

# ---- pass-through and shape movement --------------------------------------------------------


@lowering("Identity", "Dropout")
def _identity(lx: Lx, node: Node) -> Any:
    return lx.x(node)


@lowering("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(lx: Lx, node: Node) -> Any:
    return lx.emit(R.reshape(lx.x(node), out_shape(node)))


@lowering("Expand")
def _expand(lx: Lx, node: Node) -> Any:
    return lx.emit(R.broadcast_to(lx.x(node), out_shape(node)))


@lowering("Transpose")
def _transpose(lx: Lx, node: Node) -> Any:
    rank = len(node.input(0).shape)
    perm = node.attr("perm") or tuple(reversed(range(rank)))
    return lx.emit(R.permute_dims(lx.x(node), list(perm)))


@lowering("Concat")
def _concat(lx: Lx, node: Node) -> Any:
    rank = len(node.outputs[0].shape)
    return lx.emit(R.concat([lx(v) for v in node.inputs], axis=int(node.attr("axis")) % rank))


@lowering("Split")
def _split(lx: Lx, node: Node) -> Any:
    x = node.input(0)
    axis = int(node.attr("axis", 0)) % len(x.shape)
    sizes = [o.shape[axis] for o in node.outputs]
    cuts = list(np.cumsum(sizes)[:-1])
    tup = lx.emit(R.split(lx.x(node), [int(c) for c in cuts], axis=axis))
    return [lx.emit(relax.TupleGetItem(tup, i)) for i in range(len(sizes))]


@lowering("Slice")
def _slice(lx: Lx, node: Node) -> Any:
    x = node.input(0)
    shape = x.shape
    starts, ends = ints(node.input(1)), ints(node.input(2))
    assert starts is not None and ends is not None
    axes = ints(node.inputs[3]) if node.has_input(3) else list(range(len(starts)))
    steps = ints(node.inputs[4]) if node.has_input(4) else [1] * len(starts)
    assert axes is not None and steps is not None
    b, e, a, s = [], [], [], []
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax %= len(shape)
        lo, hi = slice(st, en, sp).indices(shape[ax])[:2]
        b.append(lo)
        e.append(hi if sp > 0 or hi >= 0 else -shape[ax] - 1)
        a.append(ax)
        s.append(sp)
    return lx.emit(R.strided_slice(lx.x(node), a, b, e, s, assume_inbound=False))


@lowering("Gather")
def _gather(lx: Lx, node: Node) -> Any:
    x, idx = node.input(0), node.input(1)
    axis = int(node.attr("axis", 0)) % len(x.shape)
    if idx.is_const:
        fixed = np.where(idx.data < 0, idx.data + x.shape[axis], idx.data).astype(np.int64)
        ie = lx.const(fixed, "i64")
    else:
        ie = lx.x(node, 1)
        dim = lx.const(np.array(x.shape[axis]), idx.dtype)
        zero = lx.const(np.array(0), idx.dtype)
        ie = lx.emit(R.where(R.less(ie, zero), R.add(ie, dim), ie))
    return lx.emit(R.take(lx.x(node), ie, axis=axis))


@lowering("GatherElements")
def _gather_elements(lx: Lx, node: Node) -> Any:
    return lx.emit(R.gather_elements(lx.x(node), lx.x(node, 1), axis=int(node.attr("axis", 0))))


@lowering("GatherND")
def _gather_nd(lx: Lx, node: Node) -> Any:
    return lx.emit(R.gather_nd(lx.x(node), lx.x(node, 1), batch_dims=int(node.attr("batch_dims", 0))))


@lowering("Tile")
def _tile(lx: Lx, node: Node) -> Any:
    reps = ints(node.input(1))
    assert reps is not None
    return lx.emit(R.tile(lx.x(node), reps))


@lowering("Pad")
def _pad(lx: Lx, node: Node) -> Any:
    x = node.input(0)
    rank = len(x.shape)
    pads = ints(node.input(1))
    assert pads is not None
    axes = ints(node.inputs[3]) if node.has_input(3) else list(range(rank))
    assert axes is not None
    width = [0] * (2 * rank)
    for i, ax in enumerate(axes):
        ax %= rank
        width[2 * ax], width[2 * ax + 1] = pads[i], pads[i + len(axes)]
    mode = node.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise UnsupportedModelError(f"{node.describe()}: Pad mode {mode!r} has no TVM lowering")
    value = scalar(node.inputs[2]) if node.has_input(2) else 0.0
    return lx.emit(R.nn.pad(lx.x(node), width, pad_mode=mode, pad_value=value or 0.0))


@lowering("Shape", "Size", "ConstantOfShape", "Range", "EyeLike")
def _static(lx: Lx, node: Node) -> Any:
    """Results fixed by static shapes or constants: compute them here (simplify usually folded them)."""
    entry = lookup_node(node)
    args = [v.data if v is not None and v.is_const else None for v in node.inputs]
    results = entry.fold(node, args) if entry is not None else None
    if results is None:
        raise UnsupportedModelError(f"{node.describe()}: operands must be constants for the TVM lowering")
    return [lx.const(r, o.dtype) for r, o in zip(results, node.outputs)]


@lowering("Cast")
def _cast(lx: Lx, node: Node) -> Any:
    return lx.emit(R.astype(lx.x(node), tvm_dtype(node.outputs[0].dtype)))


@lowering("Where")
def _where(lx: Lx, node: Node) -> Any:
    return lx.emit(R.where(lx.x(node, 0), lx.x(node, 1), lx.x(node, 2)))


# ---- elementwise ---------------------------------------------------------------------------------

_BINARY = {"Add": R.add, "Sub": R.subtract, "Mul": R.multiply, "Pow": R.power, "Equal": R.equal, "Less": R.less,
           "Greater": R.greater, "LessOrEqual": R.less_equal, "GreaterOrEqual": R.greater_equal,
           "And": R.logical_and, "Or": R.logical_or, "Xor": R.logical_xor, "BitwiseAnd": R.bitwise_and,
           "BitwiseOr": R.bitwise_or, "BitwiseXor": R.bitwise_xor}


def _binary(lx: Lx, node: Node) -> Any:
    a, b = lx.x(node, 0), lx.x(node, 1)
    if node.op == "Pow" and node.input(1).dtype != node.input(0).dtype:
        b = R.astype(b, tvm_dtype(node.input(0).dtype))
    return lx.emit(_BINARY[node.op](a, b))


for _name in _BINARY:
    lowering(_name)(_binary)


@lowering("Div")
def _div(lx: Lx, node: Node) -> Any:
    dt = node.outputs[0].dtype
    if dt.startswith(("f", "bf")):
        return lx.emit(R.divide(lx.x(node, 0), lx.x(node, 1)))
    # ONNX integer division truncates toward zero
    q = R.divide(R.astype(lx.x(node, 0), "float64"), R.astype(lx.x(node, 1), "float64"))
    return lx.emit(R.astype(R.multiply(R.sign(q), R.floor(R.abs(q))), tvm_dtype(dt)))


@lowering("Mod")
def _mod(lx: Lx, node: Node) -> Any:
    if int(node.attr("fmod", 0)):
        a, b = lx.x(node, 0), lx.x(node, 1)
        return lx.emit(R.subtract(a, R.multiply(R.trunc(R.divide(a, b)), b)))
    return lx.emit(R.floor_mod(lx.x(node, 0), lx.x(node, 1)))


def _variadic(fn: Any) -> Any:
    def lower(lx: Lx, node: Node) -> Any:
        acc = lx.x(node, 0)
        for v in node.inputs[1:]:
            acc = fn(acc, lx(v))
        if node.op == "Mean":
            acc = R.divide(acc, lx.const(np.array(len(node.inputs)), node.outputs[0].dtype))
        return lx.emit(acc)

    return lower


lowering("Max")(_variadic(R.maximum))
lowering("Min")(_variadic(R.minimum))
lowering("Sum", "Mean")(_variadic(R.add))

_UNARY = {"Relu": R.nn.relu, "Sigmoid": R.sigmoid, "Tanh": R.tanh, "Exp": R.exp, "Log": R.log, "Sqrt": R.sqrt,
          "Abs": R.abs, "Neg": R.negative, "Erf": R.erf, "Floor": R.floor, "Ceil": R.ceil, "Sin": R.sin,
          "Cos": R.cos, "Sign": R.sign, "Round": R.round, "Not": R.logical_not, "IsNaN": R.isnan,
          "IsInf": R.isinf, "nasc.SiLU": R.nn.silu, "BitwiseNot": R.bitwise_not}


def _unary(lx: Lx, node: Node) -> Any:
    return lx.emit(_UNARY[node.qualified_op](lx.x(node)))


for _name in _UNARY:
    lowering(_name)(_unary)


@lowering("Reciprocal")
def _reciprocal(lx: Lx, node: Node) -> Any:
    return lx.emit(R.divide(lx.const(np.array(1), node.outputs[0].dtype), lx.x(node)))


def _clip_to(lx: Lx, x: Any, lo: float | None, hi: float | None, dtype: str) -> Any:
    if lo is None and hi is None:
        return x
    info = np.finfo(np.float32) if dtype.startswith("f") else np.iinfo(np.int64)
    lo = float(info.min) if lo is None else lo
    hi = float(info.max) if hi is None else hi
    return R.clip(x, lo, hi)


@lowering("Clip")
def _clip(lx: Lx, node: Node) -> Any:
    lo = scalar(node.inputs[1]) if node.has_input(1) else None
    hi = scalar(node.inputs[2]) if node.has_input(2) else None
    return lx.emit(_clip_to(lx, lx.x(node), lo, hi, node.outputs[0].dtype))


@lowering("nasc.Relu6")
def _relu6(lx: Lx, node: Node) -> Any:
    return lx.emit(_clip_to(lx, lx.x(node), 0.0, 6.0, node.outputs[0].dtype))


@lowering("LeakyRelu")
def _leaky_relu(lx: Lx, node: Node) -> Any:
    return lx.emit(R.nn.leakyrelu(lx.x(node), float(node.attr("alpha", 0.01))))


@lowering("PRelu")
def _prelu(lx: Lx, node: Node) -> Any:
    x, slope = lx.x(node, 0), lx.x(node, 1)
    zero = lx.const(np.array(0), node.outputs[0].dtype)
    return lx.emit(R.where(R.less(x, zero), R.multiply(x, slope), x))


def _hardsigmoid(lx: Lx, x: Any, alpha: float, beta: float, dtype: str) -> Any:
    y = R.add(R.multiply(x, lx.const(np.array(alpha), dtype)), lx.const(np.array(beta), dtype))
    return _clip_to(lx, y, 0.0, 1.0, dtype)


@lowering("HardSigmoid")
def _hard_sigmoid(lx: Lx, node: Node) -> Any:
    dt = node.outputs[0].dtype
    return lx.emit(_hardsigmoid(lx, lx.x(node), float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5)), dt))


@lowering("HardSwish")
def _hard_swish(lx: Lx, node: Node) -> Any:
    x = lx.x(node)
    return lx.emit(R.multiply(x, _hardsigmoid(lx, x, 1 / 6, 0.5, node.outputs[0].dtype)))


@lowering("Gelu")
def _gelu(lx: Lx, node: Node) -> Any:
    fn = R.nn.gelu_tanh if node.attr("approximate", "none") == "tanh" else R.nn.gelu
    return lx.emit(fn(lx.x(node)))


@lowering("Softmax", "LogSoftmax")
def _softmax(lx: Lx, node: Node) -> Any:
    axis = int(node.attr("axis", -1))
    fn = R.nn.log_softmax if node.op == "LogSoftmax" else R.nn.softmax
    return lx.emit(fn(lx.x(node), axis=axis))


# ---- linear algebra and convolution ---------------------------------------------------------------


@lowering("MatMul")
def _matmul(lx: Lx, node: Node) -> Any:
    return lx.emit(R.matmul(lx.x(node, 0), lx.x(node, 1)))


@lowering("Gemm")
def _gemm(lx: Lx, node: Node) -> Any:
    a, b = lx.x(node, 0), lx.x(node, 1)
    if int(node.attr("transA", 0)):
        a = R.permute_dims(a, [1, 0])
    if int(node.attr("transB", 0)):
        b = R.permute_dims(b, [1, 0])
    dt = node.outputs[0].dtype
    y = R.matmul(a, b)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if alpha != 1.0:
        y = R.multiply(y, lx.const(np.array(alpha), dt))
    if node.has_input(2):
        c = lx.x(node, 2)
        if beta != 1.0:
            c = R.multiply(c, lx.const(np.array(beta), dt))
        y = R.add(y, c)
    return lx.emit(y)


def _conv_pads(node: Node, spatial_in: list[int], kernel: list[int], strides: list[int], dilations: list[int],
               out: list[int]) -> list[int]:
    auto = node.attr("auto_pad", "NOTSET")
    k = len(kernel)
    if auto in ("NOTSET", "VALID"):
        pads = list(node.attr("pads", (0,) * 2 * k)) if auto == "NOTSET" else [0] * 2 * k
        return pads
    begins, ends = [], []
    for i in range(k):
        total = max((out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial_in[i], 0)
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends


_CONV = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}


@lowering("Conv")
def _conv(lx: Lx, node: Node) -> Any:
    x, w = node.input(0), node.input(1)
    k = len(w.shape) - 2
    if k not in _CONV:
        raise UnsupportedModelError(f"{node.describe()}: {k}-D convolution has no TVM lowering")
    strides = list(node.attr("strides", (1,) * k))
    dilations = list(node.attr("dilations", (1,) * k))
    pads = _conv_pads(node, list(x.shape[2:]), list(w.shape[2:]), strides, dilations, out_shape(node)[2:])
    layout = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}[k]
    y = _CONV[k](lx.x(node, 0), lx.x(node, 1), strides=strides, padding=pads, dilation=dilations,
                 groups=int(node.attr("group", 1)), data_layout=layout[0], kernel_layout=layout[1])
    if node.has_input(2):
        y = R.add(y, R.reshape(lx.x(node, 2), [1, w.shape[0]] + [1] * k))
    return lx.emit(y)


@lowering("ConvTranspose")
def _conv_transpose(lx: Lx, node: Node) -> Any:
    x, w = node.input(0), node.input(1)
    k = len(w.shape) - 2
    if k not in (1, 2):
        raise UnsupportedModelError(f"{node.describe()}: {k}-D transposed convolution has no TVM lowering")
    strides = list(node.attr("strides", (1,) * k))
    dilations = list(node.attr("dilations", (1,) * k))
    group = int(node.attr("group", 1))
    pads = list(node.attr("pads", (0,) * 2 * k))
    out = out_shape(node)[2:]
    # output_padding makes up whatever the explicit pads leave out of the output shape ONNX promised
    natural = [strides[i] * (x.shape[2 + i] - 1) + (w.shape[2 + i] - 1) * dilations[i] + 1 - pads[i] - pads[k + i]
               for i in range(k)]
    out_pad = [o - n for o, n in zip(out, natural)]
    if any(p < 0 for p in out_pad) or node.attr("auto_pad", "NOTSET") not in ("NOTSET",):
        raise UnsupportedModelError(f"{node.describe()}: this ConvTranspose padding has no TVM lowering")
    fn = R.nn.conv2d_transpose if k == 2 else R.nn.conv1d_transpose
    y = fn(lx.x(node, 0), lx.x(node, 1), strides=strides, padding=pads, output_padding=out_pad, dilation=dilations,
           groups=group, data_layout="NCHW" if k == 2 else "NCW", kernel_layout="IOHW" if k == 2 else "IOW")
    if node.has_input(2):
        y = R.add(y, R.reshape(lx.x(node, 2), [1, node.outputs[0].shape[1]] + [1] * k))
    return lx.emit(y)


@lowering("BatchNormalization")
def _batch_norm(lx: Lx, node: Node) -> Any:
    x = node.input(0)
    if len(node.outputs) > 1 and any(o.uses for o in node.outputs[1:]):
        raise UnsupportedModelError(f"{node.describe()}: training-mode BatchNormalization has no TVM lowering")
    consts = [node.input(i) for i in range(1, 5)]
    shape = [1, x.shape[1]] + [1] * (len(x.shape) - 2)
    dt = node.outputs[0].dtype
    eps = float(node.attr("epsilon", 1e-5))
    if all(c.is_const for c in consts):  # inference: one multiply and one add
        s, b, m, v = (c.data.astype(np.float64) for c in consts)
        f = s / np.sqrt(v + eps)
        return lx.emit(R.add(R.multiply(lx.x(node), lx.const(f.reshape(shape), dt)),
                             lx.const((b - m * f).reshape(shape), dt)))
    s, b, m, v = (R.reshape(lx(c), shape) for c in consts)  # type: ignore[arg-type]
    norm = R.divide(R.subtract(lx.x(node), m), R.sqrt(R.add(v, lx.const(np.array(eps), dt))))
    return lx.emit(R.add(R.multiply(norm, s), b))


@lowering("LayerNormalization")
def _layer_norm(lx: Lx, node: Node) -> Any:
    x = node.input(0)
    rank = len(x.shape)
    axis = int(node.attr("axis", -1)) % rank
    axes = list(range(axis, rank))
    dt = node.outputs[0].dtype
    gamma = lx.x(node, 1)
    beta = lx.x(node, 2) if node.has_input(2) else lx.const(np.zeros(x.shape[axis:]), dt)
    if len(node.input(1).shape) != rank - axis:
        gamma = R.broadcast_to(gamma, list(x.shape[axis:]))
    if node.has_input(2) and len(node.input(2).shape) != rank - axis:
        beta = R.broadcast_to(beta, list(x.shape[axis:]))
    return lx.emit(R.nn.layer_norm(lx.x(node), gamma, beta, axes=axes, epsilon=float(node.attr("epsilon", 1e-5))))


@lowering("nasc.Attention")
def _attention(lx: Lx, node: Node) -> Any:
    q, k, v = lx.x(node, 0), lx.x(node, 1), lx.x(node, 2)
    entry = lookup_node(node)
    scale = entry.scale(node) if entry is not None else 1 / math.sqrt(node.input(0).shape[-1])  # type: ignore[attr-defined]
    dt = node.outputs[0].dtype
    s = R.multiply(R.matmul(q, R.permute_dims(k, [0, 1, 3, 2])), lx.const(np.array(scale), dt))
    if node.has_input(3):
        s = R.add(s, lx.x(node, 3))
    return lx.emit(R.matmul(R.nn.softmax(s, axis=-1), v))


# ---- pooling and reductions -------------------------------------------------------------------------


def _pool_args(node: Node) -> dict[str, Any]:
    x = node.input(0)
    k = len(x.shape) - 2
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides", (1,) * k))
    dilations = list(node.attr("dilations", (1,) * k))
    pads = _conv_pads(node, list(x.shape[2:]), kernel, strides, dilations, out_shape(node)[2:])
    return {"pool_size": kernel, "strides": strides, "padding": pads, "dilation": dilations,
            "ceil_mode": bool(node.attr("ceil_mode", 0))}


@lowering("MaxPool")
def _max_pool(lx: Lx, node: Node) -> Any:
    if len(node.outputs) > 1 and node.outputs[1].uses:
        raise UnsupportedModelError(f"{node.describe()}: MaxPool's indices output has no TVM lowering")
    k = len(node.input(0).shape) - 2
    fn = {1: R.nn.max_pool1d, 2: R.nn.max_pool2d, 3: R.nn.max_pool3d}[k]
    return lx.emit(fn(lx.x(node), **_pool_args(node)))


@lowering("AveragePool")
def _avg_pool(lx: Lx, node: Node) -> Any:
    k = len(node.input(0).shape) - 2
    fn = {1: R.nn.avg_pool1d, 2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d}[k]
    return lx.emit(fn(lx.x(node), **_pool_args(node), count_include_pad=bool(node.attr("count_include_pad", 0))))


@lowering("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(lx: Lx, node: Node) -> Any:
    axes = list(range(2, len(node.input(0).shape)))
    fn = R.mean if node.op == "GlobalAveragePool" else R.max
    return lx.emit(fn(lx.x(node), axis=axes, keepdims=True))


def _reduce_axes(node: Node) -> list[int] | None:
    rank = len(node.input(0).shape)
    axes = ints(node.inputs[1]) if node.has_input(1) else node.attr("axes")
    if not axes:
        return None if int(node.attr("noop_with_empty_axes", 0)) else list(range(rank))
    return [int(a) % rank for a in axes]


_REDUCE = {"ReduceMean": R.mean, "ReduceSum": R.sum, "ReduceMax": R.max, "ReduceMin": R.min, "ReduceProd": R.prod}


@lowering(*_REDUCE, "ReduceL2", "ReduceSumSquare", "ReduceL1", "ReduceLogSumExp")
def _reduce(lx: Lx, node: Node) -> Any:
    axes = _reduce_axes(node)
    x = lx.x(node)
    if axes is None:
        return x
    keep = bool(node.attr("keepdims", 1))
    if node.op in _REDUCE:
        return lx.emit(_REDUCE[node.op](x, axis=axes, keepdims=keep))
    if node.op == "ReduceL1":
        return lx.emit(R.sum(R.abs(x), axis=axes, keepdims=keep))
    if node.op == "ReduceLogSumExp":
        return lx.emit(R.log(R.sum(R.exp(x), axis=axes, keepdims=keep)))
    sq = R.sum(R.multiply(x, x), axis=axes, keepdims=keep)
    return lx.emit(R.sqrt(sq) if node.op == "ReduceL2" else sq)


@lowering("ArgMax", "ArgMin")
def _argmax(lx: Lx, node: Node) -> Any:
    if int(node.attr("select_last_index", 0)):
        raise UnsupportedModelError(f"{node.describe()}: select_last_index has no TVM lowering")
    fn = R.argmax if node.op == "ArgMax" else R.argmin
    y = fn(lx.x(node), axis=int(node.attr("axis", 0)), keepdims=bool(node.attr("keepdims", 1)))
    return lx.emit(R.astype(y, "int64"))


@lowering("Resize")
def _resize(lx: Lx, node: Node) -> Any:
    x = node.input(0)
    if len(x.shape) != 4:
        raise UnsupportedModelError(f"{node.describe()}: only 4-D (NCHW) Resize has a TVM lowering")
    out = out_shape(node)
    if out[:2] != list(x.shape[:2]):
        raise UnsupportedModelError(f"{node.describe()}: Resize over batch or channels has no TVM lowering")
    mode = node.attr("mode", "nearest")
    method = {"nearest": "nearest_neighbor", "linear": "linear", "cubic": "cubic"}[mode]
    ctm = node.attr("coordinate_transformation_mode", "half_pixel")
    rounding = {"round_prefer_floor": "round_prefer_floor", "round_prefer_ceil": "round_prefer_ceil",
                "floor": "floor", "ceil": "ceil"}[node.attr("nearest_mode", "round_prefer_floor")]
    return lx.emit(R.image.resize2d(lx.x(node), out[2:], layout="NCHW", method=method,
                                    coordinate_transformation_mode=ctm,
                                    rounding_method=rounding if mode == "nearest" else "",
                                    cubic_alpha=float(node.attr("cubic_coeff_a", -0.75)),
                                    cubic_exclude=int(node.attr("exclude_outside", 0))))


@lowering("Einsum")
def _einsum(lx: Lx, node: Node) -> Any:
    return lx.emit(R.einsum([lx(v) for v in node.inputs], node.attr("equation")))


@lowering("CumSum")
def _cumsum(lx: Lx, node: Node) -> Any:
    if int(node.attr("exclusive", 0)) or int(node.attr("reverse", 0)):
        raise UnsupportedModelError(f"{node.describe()}: exclusive or reverse CumSum has no TVM lowering")
    axis = ints(node.input(1))
    assert axis is not None
    return lx.emit(R.cumsum(lx.x(node), axis=axis[0]))
