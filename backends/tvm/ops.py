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

from nasc.backends.tvm.lower import ChannelsLast, Lx, ints, lowering, out_shape, scalar, tvm_dtype
from nasc.errors import UnsupportedModelError
from nasc.ir.core import Node
from nasc.ir.ops.registry import lookup_node
from nasc.ir.ops.resize import resize_coords

# ---- pass-through and shape movement --------------------------------------------------------


def _used(node: Node, i: int) -> bool:
    """Whether result ``i`` of ``node`` is read by a node or is a graph output."""
    if i >= len(node.outputs):
        return False
    v = node.outputs[i]
    return bool(v.uses) or (node.graph is not None and any(o is v for o in node.graph.outputs))


@lowering("Identity")
def _identity(lx: Lx, node: Node) -> Any:
    return lx.x(node)


@lowering("Dropout")
def _dropout(lx: Lx, node: Node) -> Any:
    """Inference: the input, and an all-true mask. Training mode with a nonzero ratio is random: refused."""
    training = scalar(node.inputs[2]) if node.has_input(2) else 0.0
    ratio = scalar(node.inputs[1]) if node.has_input(1) else 0.5
    if training and ratio:
        raise UnsupportedModelError(f"{node.describe()}: training-mode Dropout (random) has no TVM lowering")
    if not _used(node, 1):
        return lx.x(node)
    return [lx.x(node), lx.emit(R.ones(node.input(0).shape, "bool"))]


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
    x = node.input(0)
    axis = int(node.attr("axis", 0)) % len(x.shape)
    return lx.emit(R.take(lx.x(node), _wrap_negative(lx, node, 1, x.shape[axis]), axis=axis))


def _wrap_negative(lx: Lx, node: Node, i: int, dim: int) -> Any:
    """Index operand ``i`` with negative entries counted from the end of an axis of size ``dim``."""
    idx = node.input(i)
    if idx.is_const:
        return lx.const(np.where(idx.data < 0, idx.data + dim, idx.data), idx.dtype)
    ie = lx.x(node, i)
    zero, size = lx.const(np.array(0), idx.dtype), lx.const(np.array(dim), idx.dtype)
    return R.where(R.less(ie, zero), R.add(ie, size), ie)


@lowering("GatherElements")
def _gather_elements(lx: Lx, node: Node) -> Any:
    x = node.input(0)
    axis = int(node.attr("axis", 0)) % len(x.shape)
    return lx.emit(R.gather_elements(lx.x(node), _wrap_negative(lx, node, 1, x.shape[axis]), axis=axis))


@lowering("GatherND")
def _gather_nd(lx: Lx, node: Node) -> Any:
    x, idx = node.input(0), node.input(1)
    b = int(node.attr("batch_dims", 0))
    ie = lx.x(node, 1)
    dims = np.array(x.shape[b:b + idx.shape[-1]])
    if idx.is_const:
        ie = lx.const(np.where(idx.data < 0, idx.data + dims, idx.data), idx.dtype)
    else:  # negative indices count from the end of the axis each column indexes
        zero, size = lx.const(np.array(0), idx.dtype), lx.const(dims, idx.dtype)
        ie = R.where(R.less(ie, zero), R.add(ie, size), ie)
    return lx.emit(R.gather_nd(lx.x(node), ie, batch_dims=b))


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
    before, after = [0] * rank, [0] * rank
    for i, ax in enumerate(axes):
        before[ax % rank], after[ax % rank] = pads[i], pads[i + len(axes)]
    mode = node.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise UnsupportedModelError(f"{node.describe()}: Pad mode {mode!r} has no TVM lowering")
    y = lx.x(node)
    if any(p < 0 for p in before + after):  # negative pads crop
        cut = [ax for ax in range(rank) if before[ax] < 0 or after[ax] < 0]
        y = R.strided_slice(y, cut, [max(-before[ax], 0) for ax in cut],
                            [x.shape[ax] - max(-after[ax], 0) for ax in cut])
    shape = [x.shape[ax] - max(-before[ax], 0) - max(-after[ax], 0) for ax in range(rank)]
    before, after = [max(p, 0) for p in before], [max(p, 0) for p in after]
    if mode == "constant":
        value = scalar(node.inputs[2]) if node.has_input(2) else 0.0
        width = [w for ax in range(rank) for w in (before[ax], after[ax])]
        return lx.emit(R.nn.pad(y, width, pad_value=value or 0.0) if any(width) else y)
    # TVM's pad legalizes every mode as constant padding: edge, reflect and wrap gather along each axis,
    # by the index map numpy's pad gives for the mode
    for ax in range(rank):
        if before[ax] or after[ax]:
            idx = np.pad(np.arange(shape[ax]), (before[ax], after[ax]), mode=mode)
            y = R.take(y, lx.const(idx, "i64"), axis=ax)
    return lx.emit(y)


@lowering("EyeLike")
def _eye_like(lx: Lx, node: Node) -> Any:
    """Ones on diagonal k: fixed by the operand's static shape, whatever its values."""
    rows, cols = node.input(0).shape
    dt = node.outputs[0].dtype
    return lx.const(np.eye(rows, cols, k=int(node.attr("k", 0))), dt)


@lowering("Shape", "Size", "ConstantOfShape", "Range")
def _static(lx: Lx, node: Node) -> Any:
    """Results fixed by static shapes or constants: compute them here (simplify usually folded them)."""
    entry = lookup_node(node)
    args = [v.data if v is not None and v.is_const else None for v in node.inputs]
    results = entry.fold(node, args) if entry is not None else None
    if results is None:
        raise UnsupportedModelError(f"{node.describe()}: operands must be constants for the TVM lowering")
    return [lx.const(np.asarray(r).reshape(o.shape), o.dtype) for r, o in zip(results, node.outputs)]


@lowering("Cast")
def _cast(lx: Lx, node: Node) -> Any:
    return lx.emit(R.astype(lx.x(node), tvm_dtype(node.outputs[0].dtype)))


@lowering("CastLike")
def _cast_like(lx: Lx, node: Node) -> Any:
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
    if node.op == "Pow":
        base, expo = node.input(0).dtype, node.input(1).dtype
        if not base.startswith(("f", "bf")):  # TVM's power is float only: integers go through float64
            y = R.power(R.astype(a, "float64"), R.astype(b, "float64"))
            if not expo.startswith(("f", "bf")):
                y = R.round(y)  # exact integer powers; a float exponent truncates, as ONNX's reference casts
            return lx.emit(R.astype(y, tvm_dtype(base)))
        if expo != base:
            b = R.astype(b, tvm_dtype(base))
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
    a, b = lx.x(node, 0), lx.x(node, 1)
    dt = node.outputs[0].dtype
    r = R.mod(a, b)  # C's fmod (truncated), exact for floats too
    if int(node.attr("fmod", 0)):
        return lx.emit(r)
    if not dt.startswith(("f", "bf")):
        return lx.emit(R.floor_mod(a, b))
    # floats with fmod=0: numpy's mod, the sign of the divisor; fmod's result moved by one divisor where the
    # signs differ, zeros signed like the divisor
    r = lx.emit(r)
    zero = lx.const(np.array(0.0), dt)
    b_neg = R.less(b, zero)
    moved = R.where(R.logical_and(R.not_equal(r, zero), R.logical_xor(R.less(r, zero), b_neg)), R.add(r, b), r)
    signed_zero = R.where(b_neg, lx.const(np.array(-0.0), dt), zero)
    return lx.emit(R.where(R.equal(r, zero), signed_zero, moved))


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
          "nasc.SiLU": R.nn.silu, "BitwiseNot": R.bitwise_not}


def _unary(lx: Lx, node: Node) -> Any:
    return lx.emit(_UNARY[node.qualified_op](lx.x(node)))


for _name in _UNARY:
    lowering(_name)(_unary)


@lowering("IsInf")
def _isinf(lx: Lx, node: Node) -> Any:
    pos, neg = int(node.attr("detect_positive", 1)), int(node.attr("detect_negative", 1))
    if pos and neg:
        return lx.emit(R.isinf(lx.x(node)))
    if not (pos or neg):
        return lx.emit(R.zeros(node.input(0).shape, "bool"))
    inf = lx.const(np.array(np.inf if pos else -np.inf), node.input(0).dtype)
    return lx.emit(R.equal(lx.x(node), inf))


@lowering("Reciprocal")
def _reciprocal(lx: Lx, node: Node) -> Any:
    return lx.emit(R.divide(lx.const(np.array(1), node.outputs[0].dtype), lx.x(node)))


def _clip_to(lx: Lx, x: Any, lo: float | None, hi: float | None, dtype: str) -> Any:
    if lo is None and hi is None:
        return x
    np_dtype = np.dtype(tvm_dtype(dtype))
    info = np.finfo(np_dtype) if np_dtype.kind == "f" else np.iinfo(np_dtype)
    lo = info.min if lo is None else lo
    hi = info.max if hi is None else hi
    if lo > hi:  # ONNX: every element becomes max
        lo = hi
    cast = float if np_dtype.kind == "f" else int
    return R.clip(x, cast(lo), cast(hi))


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


_HALF = ("f16", "bf16")


def _in_f32(lx: Lx, node: Node, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` computed in float32 when the node's result is half precision (as ONNX Runtime does: half
    sums and exponentials lose a digit against the suite's tolerance), cast back."""
    dt = node.outputs[0].dtype
    if dt not in _HALF:
        return lx.emit(fn(*args))
    return lx.emit(R.astype(fn(*(R.astype(a, "float32") for a in args)), tvm_dtype(dt)))


@lowering("Softmax", "LogSoftmax")
def _softmax(lx: Lx, node: Node) -> Any:
    axis = int(node.attr("axis", -1))
    fn = R.nn.log_softmax if node.op == "LogSoftmax" else R.nn.softmax
    return _in_f32(lx, node, lambda x: fn(x, axis=axis), lx.x(node))


# ---- linear algebra and convolution ---------------------------------------------------------------


@lowering("MatMul")
def _matmul(lx: Lx, node: Node) -> Any:
    dt = node.outputs[0].dtype
    if dt in _HALF:  # accumulate in float32
        return lx.emit(R.astype(R.matmul(lx.x(node, 0), lx.x(node, 1), out_dtype="float32"), tvm_dtype(dt)))
    return lx.emit(R.matmul(lx.x(node, 0), lx.x(node, 1)))


@lowering("Gemm")
def _gemm(lx: Lx, node: Node) -> Any:
    a, b = lx.x(node, 0), lx.x(node, 1)
    if int(node.attr("transA", 0)):
        a = R.permute_dims(a, [1, 0])
    if int(node.attr("transB", 0)):
        w = node.input(1)
        b = lx.transposed_const(w) if w.is_const and len(w.shape) == 2 else R.permute_dims(b, [1, 0])
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
    dt = node.outputs[0].dtype
    y = _CONV[k](lx.x(node, 0), lx.x(node, 1), strides=strides, padding=pads, dilation=dilations,
                 groups=int(node.attr("group", 1)), data_layout=layout[0], kernel_layout=layout[1],
                 out_dtype="float32" if dt in _HALF else None)  # half precision accumulates in float32
    if node.has_input(2):
        b = lx.x(node, 2)
        y = R.add(y, R.reshape(R.astype(b, "float32") if dt in _HALF else b, [1, w.shape[0]] + [1] * k))
    return lx.emit(R.astype(y, tvm_dtype(dt)) if dt in _HALF else y)


_CONV_T = {1: (R.nn.conv1d_transpose, "NCW", "IOW"), 2: (R.nn.conv2d_transpose, "NCHW", "IOHW"),
           3: (R.nn.conv3d_transpose, "NCDHW", "IODHW")}


@lowering("ConvTranspose")
def _conv_transpose(lx: Lx, node: Node) -> Any:
    """The full transposed convolution (no padding), then the window ONNX asks for: it starts at the begin pad
    (explicit, or by auto_pad) and is as long as the inferred output, zero-extended past the full result (where
    output_padding or output_shape reach beyond it)."""
    x, w = node.input(0), node.input(1)
    k = len(w.shape) - 2
    if k not in _CONV_T:
        raise UnsupportedModelError(f"{node.describe()}: {k}-D transposed convolution has no TVM lowering")
    strides = list(node.attr("strides", (1,) * k))
    dilations = list(node.attr("dilations", (1,) * k))
    out = out_shape(node)[2:]
    full = [strides[i] * (x.shape[2 + i] - 1) + (w.shape[2 + i] - 1) * dilations[i] + 1 for i in range(k)]
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        extra = list(node.attr("output_padding", (0,) * k))
        total = [full[i] + extra[i] - out[i] for i in range(k)]
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
    else:
        begin = list(node.attr("pads", (0,) * 2 * k))[:k] if auto == "NOTSET" else [0] * k
    if any(b < 0 for b in begin):
        raise UnsupportedModelError(f"{node.describe()}: negative ConvTranspose padding has no TVM lowering")
    fn, data_layout, kernel_layout = _CONV_T[k]
    conv = {"strides": strides, "dilation": dilations, "groups": int(node.attr("group", 1)),
            "data_layout": data_layout, "kernel_layout": kernel_layout}
    end = [max(f - b - o, 0) for b, o, f in zip(begin, out, full)]
    extra = [o - (f - b - e) for b, o, f, e in zip(begin, out, full, end)]
    if all(0 <= p < s for p, s in zip(extra, strides)):  # what TVM's output_padding can say
        y = fn(lx.x(node, 0), lx.x(node, 1), padding=begin + end, output_padding=extra, **conv)
    else:
        y = fn(lx.x(node, 0), lx.x(node, 1), padding=[0] * 2 * k, **conv)
        beyond = [max(b + o - f, 0) for b, o, f in zip(begin, out, full)]
        if any(beyond):
            y = R.nn.pad(y, [0, 0, 0, 0] + [w for e in beyond for w in (0, e)])
        y = R.strided_slice(y, list(range(2, 2 + k)), begin, [b + o for b, o in zip(begin, out)])
    if node.has_input(2):
        y = R.add(y, R.reshape(lx.x(node, 2), [1, node.outputs[0].shape[1]] + [1] * k))
    return lx.emit(y)


@lowering("BatchNormalization")
def _batch_norm(lx: Lx, node: Node) -> Any:
    x = node.input(0)
    if int(node.attr("training_mode", 0)) or _used(node, 1) or _used(node, 2):
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
    eps = float(node.attr("epsilon", 1e-5))
    y = lx.emit(R.nn.layer_norm(lx.x(node), gamma, beta, axes=axes, epsilon=eps))
    if not (_used(node, 1) or _used(node, 2)):
        return y
    # the statistics ONNX also returns (in stash_type): the mean and 1 / sqrt(var + eps) over the axes
    xs = R.astype(lx.x(node), tvm_dtype(node.outputs[1].dtype))
    mean = lx.emit(R.mean(xs, axis=axes, keepdims=True))
    centred = R.subtract(xs, mean)
    var = R.mean(R.multiply(centred, centred), axis=axes, keepdims=True)
    one, e = lx.const(np.array(1), node.outputs[1].dtype), lx.const(np.array(eps), node.outputs[1].dtype)
    return [y, mean, lx.emit(R.divide(one, R.sqrt(R.add(var, e))))][:len(node.outputs)]


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
    if _used(node, 1):
        raise UnsupportedModelError(f"{node.describe()}: MaxPool's indices output has no TVM lowering")
    k = len(node.input(0).shape) - 2
    if k == 2 and lx.is_nhwc(node, 0):  # an integer region's channels-last map: pooled as it is, no transposes
        return ChannelsLast(lx.emit(R.nn.max_pool2d(lx.nhwc(node, 0), **_pool_args(node), layout="NHWC")))
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


def _reduce_axes(node: Node) -> list[int]:
    """The reduced axes; [] when none are (noop_with_empty_axes): then only the elementwise part applies."""
    rank = len(node.input(0).shape)
    axes = ints(node.inputs[1]) if node.has_input(1) else node.attr("axes")
    if not axes:
        return [] if int(node.attr("noop_with_empty_axes", 0)) else list(range(rank))
    return sorted({int(a) % rank for a in axes})


_REDUCE = {"ReduceMean": R.mean, "ReduceSum": R.sum, "ReduceMax": R.max, "ReduceMin": R.min, "ReduceProd": R.prod}


def _empty_reduction(op: str, dtype: str) -> Any:
    """What a reduction over no elements gives (ONNX's reference: the identity of the reduction)."""
    np_dtype = np.dtype(tvm_dtype(dtype))
    if op in ("ReduceMax", "ReduceMin"):
        if np_dtype.kind == "b":
            return op == "ReduceMin"
        info = np.iinfo(np_dtype) if np_dtype.kind in "iu" else None
        if info is None:
            return -np.inf if op == "ReduceMax" else np.inf
        return info.min if op == "ReduceMax" else info.max
    return {"ReduceProd": 1, "ReduceLogSumExp": -np.inf, "ReduceMean": np.nan}.get(op, 0)


def _float_extreme(lx: Lx, node: Node, axes: list[int], keep: bool) -> Any:
    """Float max / min starting from -inf / +inf: TVM's start from the largest finite value, so a row of
    infinities (a fully masked attention row) reduced to -FLT_MAX instead of -inf."""
    from tvm import te, tirx

    is_max = node.op == "ReduceMax"
    rank = len(node.input(0).shape)
    reducer = te.comm_reducer(lambda a, b: tirx.max(a, b) if is_max else tirx.min(a, b),
                              lambda t: tirx.const(-np.inf if is_max else np.inf, t), name="extreme")

    def compute(data: te.Tensor) -> te.Tensor:
        red = {a: te.reduce_axis((0, data.shape[a]), f"k{a}") for a in axes}
        shape = [1 if a in red else data.shape[a] for a in range(rank) if keep or a not in red]

        def body(*idx: Any) -> Any:
            it = iter(idx)
            full = []
            for a in range(rank):
                if a in red:
                    full.append(red[a])
                    if keep:
                        next(it)
                else:
                    full.append(next(it))
            return reducer(data[tuple(full)], axis=list(red.values()))

        return te.compute(shape, body, name="reduce_extreme")

    return lx.bb.emit(lx.bb.call_te(compute, lx.x(node), primfunc_name_hint="reduce_" + ("max" if is_max else "min")))


@lowering(*_REDUCE, "ReduceL2", "ReduceSumSquare", "ReduceL1", "ReduceLogSumExp")
def _reduce(lx: Lx, node: Node) -> Any:
    axes = _reduce_axes(node)
    x = lx.x(node)
    shape = node.input(0).shape
    dt = node.outputs[0].dtype
    if any(shape[a] == 0 for a in axes):
        return lx.const(np.full(out_shape(node), _empty_reduction(node.op, dt)), dt)
    keep = bool(node.attr("keepdims", 1))

    def red(fn: Any, e: Any) -> Any:
        return fn(e, axis=axes, keepdims=keep) if axes else e

    if node.op in _REDUCE:
        if dt == "bool":  # TVM's max/min have no bool identity: reduce as uint8
            return lx.emit(R.astype(red(_REDUCE[node.op], R.astype(x, "uint8")), "bool"))
        if node.op in ("ReduceMax", "ReduceMin") and dt.startswith("f") and axes:
            return _float_extreme(lx, node, axes, keep)
        return lx.emit(red(_REDUCE[node.op], x))
    if node.op == "ReduceL1":
        return lx.emit(red(R.sum, R.abs(x)))
    if node.op == "ReduceLogSumExp":
        if not axes:
            return x
        top = lx.emit(R.max(x, axis=axes, keepdims=True))  # log(sum(exp(x - max))) + max does not overflow
        y = R.log(R.sum(R.exp(R.subtract(x, top)), axis=axes, keepdims=keep))
        return lx.emit(R.add(y, top if keep else R.squeeze(top, axes)))
    sq = red(R.sum, R.multiply(x, x))
    return lx.emit(R.sqrt(sq) if node.op == "ReduceL2" else sq)


@lowering("ArgMax", "ArgMin")
def _argmax(lx: Lx, node: Node) -> Any:
    fn = R.argmax if node.op == "ArgMax" else R.argmin
    axis = int(node.attr("axis", 0)) % len(node.input(0).shape)
    keep = bool(node.attr("keepdims", 1))
    if not int(node.attr("select_last_index", 0)):
        return lx.emit(R.astype(fn(lx.x(node), axis=axis, keepdims=keep), "int64"))
    # the last of equal extremes: the first one along the reversed axis, counted back from the end
    y = R.astype(fn(R.flip(lx.x(node), axis), axis=axis, keepdims=keep), "int64")
    return lx.emit(R.subtract(lx.const(np.array(node.input(0).shape[axis] - 1), "i64"), y))


def _floats(node: Node, i: int) -> list[float]:
    """The contents of constant float operand ``i`` ([] when it is absent or empty)."""
    if not node.has_input(i):
        return []
    v = node.input(i)
    if not v.is_const:
        raise UnsupportedModelError(f"{node.describe()}: operand %{v.name} must be a constant for the TVM lowering")
    return [float(f) for f in np.asarray(v.data).reshape(-1)]


_CTM = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "asymmetric", "tf_half_pixel_for_nn",
        "align_corners")


def _nearest_index(coords: np.ndarray, n_in: int, rounding: str) -> np.ndarray:
    base = np.floor(coords)
    frac = coords - base
    step = {"round_prefer_floor": frac > 0.5, "round_prefer_ceil": frac >= 0.5, "floor": frac < 0,
            "ceil": frac > 0}[rounding]
    return np.clip(base + step, 0, n_in - 1).astype(np.int64)


def _roi_for(node: Node, ctm: str, scale: list[float], n_in: list[int], n_out: list[int]) -> tuple[float, ...] | None:
    """None where TVM's own map for ``ctm`` (by n_out / n_in) is ONNX's; else the tf_crop_and_resize roi (start_h,
    start_w, end_h, end_w) whose map is ONNX's (TVM: x = start (n_in - 1) + x_out (end - start) (n_in - 1) /
    (n_out - 1)), which holds while no coordinate falls outside the input (tf_crop_and_resize extrapolates)."""
    coords = [resize_coords(ctm, s, i, o) for s, i, o in zip(scale, n_in, n_out)]
    if ctm != "half_pixel_symmetric" and all(
            np.allclose(c, resize_coords(ctm, o / i, i, o), rtol=0, atol=1e-6) for c, i, o in zip(coords, n_in, n_out)):
        return None
    start, end = [], []
    for c, i, o in zip(coords, n_in, n_out):
        if i == 1 < o:  # every coordinate reads the one input pixel
            start.append(0.0)
            end.append(1.0)
            continue
        if o == 1 or c.min() < -1e-6 or c.max() > i - 1 + 1e-6:  # (TVM divides by o - 1)
            raise UnsupportedModelError(f"{node.describe()}: Resize by scales {scale} to {n_out} with "
                                        f"coordinate_transformation_mode {ctm!r} has no TVM lowering (a size of 1, "
                                        "or coordinates outside the input)")
        start.append(c[0] / (i - 1))
        end.append(start[-1] + (c[-1] - c[0]) / (i - 1))
    return (start[0], start[1], end[0], end[1])


@lowering("Resize")
def _resize(lx: Lx, node: Node) -> Any:
    x = node.input(0)
    rank = len(x.shape)
    out = out_shape(node)
    if out[:rank - 2] != list(x.shape[:rank - 2]):
        raise UnsupportedModelError(f"{node.describe()}: Resize over batch or channels has no TVM lowering")
    if int(node.attr("antialias", 0)):
        raise UnsupportedModelError(f"{node.describe()}: antialiased Resize has no TVM lowering")
    mode = node.attr("mode", "nearest")
    ctm = node.attr("coordinate_transformation_mode", "half_pixel")
    if ctm not in (*_CTM, "tf_crop_and_resize"):
        raise UnsupportedModelError(f"{node.describe()}: Resize coordinate_transformation_mode {ctm!r} has no TVM "
                                    "lowering")
    axes = [int(a) % rank for a in node.attr("axes", range(rank))]
    scale = [1.0] * rank  # the scale ONNX maps coordinates by
    given, sizes = _floats(node, 2), _floats(node, 3)
    ratios = [sz / x.shape[a] for a, sz in zip(axes, sizes)]
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    for i, a in enumerate(axes):
        scale[a] = given[i] if given else ratios[i] if policy == "stretch" else (
            min(ratios) if policy == "not_larger" else max(ratios))
    rounding = node.attr("nearest_mode", "round_prefer_floor")
    if mode == "nearest" and ctm != "tf_crop_and_resize":  # a gather per resized axis, by ONNX's own indices
        y = lx.x(node)
        for a in range(rank):
            if scale[a] != 1.0 or out[a] != x.shape[a]:
                idx = _nearest_index(resize_coords(ctm, scale[a], x.shape[a], out[a]), x.shape[a], rounding)
                y = R.take(y, lx.const(idx, "i64"), axis=a)
        return lx.emit(y)
    if rank != 4:
        raise UnsupportedModelError(f"{node.describe()}: only 4-D (NCHW) {mode} Resize has a TVM lowering")
    roi: tuple[float, ...] | None
    if ctm == "tf_crop_and_resize":
        given_roi = _floats(node, 1)
        start, end = [0.0] * rank, [1.0] * rank
        for i, a in enumerate(axes):
            start[a], end[a] = given_roi[i], given_roi[i + len(axes)]
        roi = (start[2], start[3], end[2], end[3])
    else:
        roi = _roi_for(node, ctm, scale[2:], list(x.shape[2:]), out[2:])
        if roi is not None:
            ctm = "tf_crop_and_resize"
        elif ctm == "align_corners" and any(out[a] == 1 < x.shape[a] for a in (2, 3)):
            raise UnsupportedModelError(f"{node.describe()}: align_corners Resize to a size of 1 has no TVM lowering")
        elif ctm == "half_pixel_symmetric":  # the same map as half_pixel at these sizes
            ctm = "half_pixel"
    method = {"linear": "linear", "cubic": "cubic", "nearest": "nearest_neighbor"}[mode]
    return lx.emit(R.image.resize2d(lx.x(node), out[2:], roi=roi or (0.0, 0.0, 1.0, 1.0), layout="NCHW",
                                    method=method, coordinate_transformation_mode=ctm,
                                    rounding_method=rounding if mode == "nearest" else "",
                                    cubic_alpha=float(node.attr("cubic_coeff_a", -0.75)),
                                    cubic_exclude=int(node.attr("exclude_outside", 0)),
                                    extrapolation_value=float(node.attr("extrapolation_value", 0.0))))


@lowering("Einsum")
def _einsum(lx: Lx, node: Node) -> Any:
    return lx.emit(R.einsum([lx(v) for v in node.inputs], node.attr("equation")))


@lowering("CumSum")
def _cumsum(lx: Lx, node: Node) -> Any:
    """As a masked sum over the axis, a plain reduction that every target schedules and prints as C (TVM's own
    cumsum is an opaque IR-builder kernel the MCU path cannot take); quadratic in the axis length."""
    from tvm import te

    axis = ints(node.input(1))
    assert axis is not None
    x = node.input(0)
    ax = axis[0] % len(x.shape)
    n = x.shape[ax]
    exclusive, reverse = int(node.attr("exclusive", 0)), int(node.attr("reverse", 0))

    def compute(data: te.Tensor) -> te.Tensor:
        j = te.reduce_axis((0, n), "j")

        def body(*idx: Any) -> Any:
            i = idx[ax]
            take = (j > i if exclusive else j >= i) if reverse else (j < i if exclusive else j <= i)
            src = [*idx[:ax], j, *idx[ax + 1:]]
            return te.sum(te.if_then_else(take, data[tuple(src)], te.const(0, data.dtype)), axis=j)

        return te.compute(data.shape, body, name="cumsum")

    return lx.bb.emit(lx.bb.call_te(compute, lx.x(node), primfunc_name_hint="cumsum"))


# recurrent ops live in their own module; importing it registers them with the others
from nasc.backends.tvm import rnn  # noqa: E402, F401
