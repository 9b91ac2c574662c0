"""Relax lowerings of QuantizeLinear / DequantizeLinear and of nasc's integer ops (``nasc.ir.ops.quant``).

The integer ops compute exactly as their numpy reference: uint8 activations times int8 weights (both stored
as 8-bit; padding holds the activation zero point), int32 accumulation, an int32 bias that also carries
``-zp * sum(w)``, then requantization in int64: ``((acc * M + 2^(n-1)) >> n) + zp``, clipped, cast to uint8. No floating point.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from nasc.backends.tvm.lower import ChannelsLast, Lx, lowering, out_shape, tvm_dtype
from nasc.backends.tvm.ops import _conv_pads
from nasc.backends.tvm.x86_int8 import PAIRS16_BLOCK, ROW_TILE, pairs_fit_int16
from nasc.errors import UnsupportedModelError
from nasc.ir.core import Node


def _axis_shape(node: Node, size: int, rank: int) -> list[int]:
    shape = [1] * rank
    if size > 1:
        shape[int(node.attr("axis", 1)) % rank] = size
    return shape


def _qparam(lx: Lx, node: Node, i: int, dtype: str, rank: int) -> relax.Expr:
    """Scale or zero point ``i`` shaped to broadcast against operand 0: one value, one per channel of
    ``axis``, or one per block of ``block_size`` along it (repeated here)."""
    v = node.input(i)
    block = int(node.attr("block_size", 0) or 0)
    if not v.is_const:  # computed in the model (dynamic quantization)
        if block:
            raise UnsupportedModelError(f"{node.describe()}: blocked quantization with a computed scale or zero "
                                        "point has no TVM lowering")
        return R.reshape(R.astype(lx(v), dtype), _axis_shape(node, v.tensor_type.numel, rank))
    arr = np.asarray(v.data).astype(dtype)
    if block:
        ax = int(node.attr("axis", 1)) % rank
        arr = np.repeat(arr, block, axis=ax).take(range(node.input(0).shape[ax]), axis=ax)
        return lx.const(arr, _IR[dtype])
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
    y = R.multiply(x, _qparam(lx, node, 1, "float32", rank))
    out = node.outputs[0].dtype
    return lx.emit(y if out == "f32" else R.astype(y, tvm_dtype(out)))


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
    out = tvm_dtype(node.outputs[0].dtype)
    if np.dtype(out).kind not in "iu":
        raise UnsupportedModelError(f"{node.describe()}: QuantizeLinear to {out} has no TVM lowering")
    info = np.iinfo(out)
    x = lx.x(node, 0)
    if node.input(0).dtype != "f32":
        x = R.astype(x, "float32")
    y = R.round(R.divide(x, _qparam(lx, node, 1, "float32", rank)))
    if node.has_input(2):
        y = R.add(y, _qparam(lx, node, 2, "float32", rank))
    return lx.emit(R.astype(R.clip(y, int(info.min), int(info.max)), out))


def _requantize(lx: Lx, acc: relax.Expr, mult: relax.Expr, shift: relax.Expr, zp: int, lo: int, hi: int,
                offset: relax.Expr | None = None) -> Any:
    """``clip(((acc * M + 2^(n-1)) >> n) + zp, lo, hi)`` as uint8, in int64 inside the kernel: the per-channel
    M and n stay int32 in the weights (a relax-level cast would be folded into int64 constants), and the
    product of two sign-extended int32 is one 32x32->64 multiply (vpmuldq on x86, smull on Cortex-M).
    ``offset`` (int64, per channel) replaces the rounding term and the zero point by ``b * M + 2^(n-1) + (zp <<
    n)``: the requantization of ``acc + b`` (:func:`_requantize_node` with a bias)."""
    from tvm import te, topi

    def compute(a: te.Tensor, m: te.Tensor, n: te.Tensor, *off: te.Tensor) -> te.Tensor:
        m64, n64 = topi.cast(m, "int64"), topi.cast(n, "int64")
        rounding = off[0] if off else topi.left_shift(tvm.tirx.const(1, "int64"),
                                                       topi.subtract(n64, tvm.tirx.const(1, "int64")))
        y = topi.right_shift(topi.add(topi.multiply(topi.cast(a, "int64"), m64), rounding), n64)
        if not off:  # (the offset holds the zero point)
            y = topi.add(y, tvm.tirx.const(zp, "int64"))
        return topi.cast(topi.clip(y, lo, hi), "uint8")

    extra = [] if offset is None else [offset]
    return lx.bb.call_te(compute, lx.bb.emit(acc), mult, shift, *extra, primfunc_name_hint="requantize")


def _per_channel(lx: Lx, node: Node, i: int, shape: list[int]) -> relax.Expr:
    """A per-channel multiplier (< 2^31) or shift, stored as int32."""
    return lx.const(np.asarray(node.input(i).data, np.int64).astype(np.int32).reshape(shape), "i32")


def _bias_minus_zero_point(node: Node, w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """sum((x - zp) * w) = sum(x * w) - zp * sum(w): the zero point's share folds into the int32 bias."""
    bias = np.asarray(node.input(2).data, np.int64) if node.has_input(2) else np.zeros(w.shape[0], np.int64)
    return (bias - int(node.attr("x_zp")) * w.astype(np.int64).sum(axis=axes)).astype(np.int32)


def pack_int4(w: np.ndarray) -> np.ndarray:
    """int4 values (held as int8, in [-8, 7]) two per byte, the first in the low nibble (as ONNX packs them)."""
    flat = (np.asarray(w, np.int16).reshape(-1) & 0xF).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def _int4_at(packed: Any, index: Any) -> Any:
    """The signed int4 at flat ``index`` of ``packed``, as int32 (unpacked inside the kernel)."""
    from tvm import te

    byte = packed[index // 2].astype("int32")
    nib = te.if_then_else(index % 2 == 0, byte & 15, (byte >> 4) & 15)
    return nib - te.if_then_else(nib >= 8, 16, 0)


def _weight_operand(lx: Lx, node: Node, w: np.ndarray) -> relax.Expr:
    """int8 weights as they are; int4 weights packed two per byte (half the flash), except on x86 CPUs, whose
    tensorized kernels read whole bytes."""
    if int(node.attr("weight_bits", 8)) == 4 and not lx.int8_nhwc:
        return lx.const(pack_int4(w), "u8")
    return lx.const(w, "i8")


def _conv_out_hw(size: tuple[int, int], kernel: tuple[int, int], strides: list[int], pads: list[int],
                 dil: list[int]) -> tuple[int, int]:
    """A convolution's output rows and columns (ONNX pads: top, left, bottom, right)."""
    oh, ow = ((size[i] + pads[i] + pads[i + 2] - dil[i] * (kernel[i] - 1) - 1) // strides[i] + 1 for i in (0, 1))
    return oh, ow


def _qconv_te(x: Any, w: Any, zp: int, strides: list[int], pads: list[int], dil: list[int], groups: int,
              wshape: tuple[int, int, int, int]) -> Any:
    """uint8 x int8 (or packed int4) convolution accumulating in int32; padding holds the zero point."""
    from tvm import te, topi

    _, _, h, wd = (int(d) for d in x.shape)
    co, cig, kh, kw = wshape
    packed = len(w.shape) == 1
    xp = topi.nn.pad(x, [0, 0, pads[0], pads[1]], [0, 0, pads[2], pads[3]], pad_value=zp)
    oh, ow = _conv_out_hw((h, wd), (kh, kw), strides, pads, dil)
    rc, rh, rw = te.reduce_axis((0, cig), "rc"), te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    cog = co // groups
    return te.compute(
        (int(x.shape[0]), co, oh, ow),
        lambda n, c, y, z: te.sum(
            xp[n, (c // cog) * cig + rc, y * strides[0] + rh * dil[0], z * strides[1] + rw * dil[1]].astype("int32")
            * (_int4_at(w, ((c * cig + rc) * kh + rh) * kw + rw) if packed else w[c, rc, rh, rw].astype("int32")),
            axis=[rc, rh, rw]),
        name="qconv2d")


@lowering("nasc.QConv")
def _qconv(lx: Lx, node: Node) -> Any:
    x, w = node.input(0), node.input(1)
    strides = list(node.attr("strides", (1, 1)))
    dilations = list(node.attr("dilations", (1, 1)))
    pads = _conv_pads(node, list(x.shape[2:]), list(w.shape[2:]), strides, dilations, out_shape(node)[2:])
    wq = np.asarray(w.data, np.int8)
    c = wq.shape[0]
    if lx.int8_nhwc:
        return _qconv_nhwc(lx, node, wq, strides, pads, dilations)
    acc = lx.bb.emit(lx.bb.call_te(_qconv_te, lx.x(node, 0), _weight_operand(lx, node, wq), int(node.attr("x_zp")),
                                   strides, pads, dilations, int(node.attr("group", 1)), tuple(wq.shape),
                                   primfunc_name_hint="qconv2d"))
    acc = R.add(acc, lx.const(_bias_minus_zero_point(node, wq, (1, 2, 3)).reshape(1, c, 1, 1), "i32"))
    return lx.emit(_requantize_node(lx, node, acc, [1, c, 1, 1]))


def _requantize_node(lx: Lx, node: Node, acc: relax.Expr, shape: list[int], bias: np.ndarray | None = None) -> Any:
    """``acc`` (plus ``bias``, int32 per channel, when given) requantized by ``node``'s per-channel multipliers and
    shifts (laid out as ``shape``).

    A bias is folded, with the output zero point, into the rounding term in int64, ``(acc * M + (b * M +
    2^(n-1) + (zp << n))) >> n``: the same integers (adding ``zp << n`` before an arithmetic shift by ``n`` adds
    ``zp`` after it), but the kernel's multiply then reads the accumulator itself and no add follows the shift.
    After an int32 add LLVM no longer sees two sign-extended operands and multiplies in full 64 bits (vpmullq,
    three uops for vpmuldq's one), which made the requantization of a pointwise layer with 16 input channels
    cost more than its products (MobileNetV2 int8 2.30 -> 2.11 ms)."""
    zp = int(node.attr("y_zp"))
    offset = None
    if bias is not None:
        m = np.asarray(node.input(3).data, np.int64).reshape(-1)
        n = np.asarray(node.input(4).data, np.int64).reshape(-1)
        off = np.asarray(bias, np.int64).reshape(-1) * m + (np.int64(1) << (n - 1)) + (np.int64(zp) << n)
        offset = lx.const(off.reshape(shape), "i64")
    return _requantize(lx, acc, _per_channel(lx, node, 3, shape), _per_channel(lx, node, 4, shape), zp,
                       int(node.attr("qmin")), int(node.attr("qmax")), offset)


def _pointwise(node: Node, w: np.ndarray, strides: list[int], pads: list[int], dilations: list[int]) -> bool:
    """A 1x1 convolution of one image with stride 1 and no padding: a matmul ``x [H*W, Ci] x w [Ci, Co]``
    in NHWC."""
    return (w.shape[2:] == (1, 1) and int(node.attr("group", 1)) == 1 and list(strides) == [1, 1]
            and not any(pads) and list(dilations) == [1, 1] and int(node.input(0).shape[0]) == 1)


def _qconv_nhwc_te(x: Any, w: Any, zp: int, strides: list[int], pads: list[int], dil: list[int], groups: int) -> Any:
    """uint8 x [N, H, W, Ci] times int8 w [kh, kw, Ci/groups, Co] (HWIO) accumulating in int32, padding
    holding the zero point; block ``qconv2d_nhwc`` with iterators (n, y, x, co, ky, kx, ci), as the float
    NHWC template (schedules.conv2d_nhwc) schedules it."""
    from tvm import te, topi

    nb, h, wd, _ = (int(d) for d in x.shape)
    kh, kw, cig, co = (int(d) for d in w.shape)
    xp = topi.nn.pad(x, [0, pads[0], pads[1], 0], [0, pads[2], pads[3], 0], pad_value=zp)
    oh, ow = _conv_out_hw((h, wd), (kh, kw), strides, pads, dil)
    rh, rw, rc = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw"), te.reduce_axis((0, cig), "rc")
    cog = co // groups
    return te.compute(
        (nb, oh, ow, co),
        lambda n, y, z, c: te.sum(
            xp[n, y * strides[0] + rh * dil[0], z * strides[1] + rw * dil[1], (c // cog) * cig + rc].astype("int32")
            * w[rh, rw, rc, c].astype("int32"), axis=[rh, rw, rc]),
        name="qconv2d_nhwc")


#: the most bytes of patches (output pixels x window x input channels) that a convolution is lowered through
PATCHES_MAX_BYTES = 4 << 20


def _patches_fit(node: Node, hwio: np.ndarray) -> bool:
    """Whether a dense (ungrouped) one-image convolution goes through patches and the tensorized integer matmul:
    its reduction (window x input channels) a multiple of 4 (the VNNI / vpmadd step; a stem's 1-3 channels are
    read as 4, :func:`_patch_channels`) and its patches at most PATCHES_MAX_BYTES. The direct NHWC template widens every product to int32 and ran the Fashion-MNIST CNN's
    3x3 convolutions at about a third of the speed of its float ones."""
    kh, kw, ci, _ = hwio.shape
    _, h, w = (int(d) for d in out_shape(node)[1:])
    return (int(node.attr("group", 1)) == 1 and int(node.input(0).shape[0]) == 1
            and ((kh * kw * ci) % 4 == 0 or ci < 4) and h * w * kh * kw * _patch_channels(ci) <= PATCHES_MAX_BYTES)


def _patch_channels(ci: int) -> int:
    """Channels per tap in the patches: ``ci``, or 4 for a stem's 1-3 channels (the extra ones hold the zero point
    and meet zero weights), so that the reduction is a multiple of the dot-product step."""
    return 4 if ci < 4 else ci


def _im2col_te(x: Any, zp: int, kernel: tuple[int, int], strides: list[int], pads: list[int], dil: list[int]) -> Any:
    """The windows of uint8 x [1, H, W, Ci] as [OH*OW, kh*kw*Ci] (padding holding the zero point): the rows of a
    matmul by the HWIO weight read as [kh*kw*Ci, Co]. Block ``im2col_r<run>``: the injective template copies it in
    contiguous runs of that many bytes, a kernel row's (kw x Ci) or, dilated, a tap's (schedules._schedule_im2col)."""
    from tvm import te, topi

    _, h, wd, ci = (int(d) for d in x.shape)
    kw, cp = kernel[1], _patch_channels(ci)
    xp = topi.nn.pad(x, [0, pads[0], pads[1], 0], [0, pads[2], pads[3], cp - ci], pad_value=zp)
    oh, ow = _conv_out_hw((h, wd), kernel, strides, pads, dil)
    run = kw * cp if dil[1] == 1 else cp  # the bytes of one kernel row lie side by side without dilation
    return te.compute((oh * ow, kernel[0] * kw * cp), lambda r, k: xp[
        0, (r // ow) * strides[0] + (k // (kw * cp)) * dil[0], (r % ow) * strides[1] + (k // cp % kw) * dil[1],
        k % cp], name=f"im2col_r{run}")


def _qconv_nhwc(lx: Lx, node: Node, wq: np.ndarray, strides: list[int], pads: list[int],
                dilations: list[int]) -> ChannelsLast:
    """The x86 integer convolution, channels-last: a pointwise one is the tensorized integer matmul of the
    image's pixels (rows) by the weight, a dense one the same matmul of its patches (:func:`_patches_fit`), any
    other (depthwise, grouped) the NHWC convolution template over int32; all with the
    bias and requantization fused, the weights packed at build time. int4 weights are held one per byte here
    (as _weight_operand does on x86: flash matters on microcontrollers, which keep NCHW and the packing)."""
    c, ci = int(wq.shape[0]), int(wq.shape[1])
    bias = _bias_minus_zero_point(node, wq, (1, 2, 3)).reshape(1, c)
    _, h, w = (int(d) for d in out_shape(node)[1:])
    if _pointwise(node, wq, strides, pads, dilations):
        x = lx.bb.emit(R.reshape(lx.nhwc(node, 0), [h * w, ci]))
        return _rows_by_weight(lx, node, x, np.ascontiguousarray(wq.reshape(c, ci).T), bias, "qconv2d_1x1")
    hwio = np.ascontiguousarray(wq.transpose(2, 3, 1, 0))
    if _patches_fit(node, hwio):
        kh, kw = hwio.shape[:2]
        hwio = np.pad(hwio, [(0, 0), (0, 0), (0, _patch_channels(ci) - ci), (0, 0)])  # zero weights, extra channels
        ci = hwio.shape[2]
        patch = (int(node.attr("x_zp")), (kh, kw), strides, pads, dilations)
        if _patches_in_kernel(node, int(wq.shape[1]), c):
            return _rows_by_weight(lx, node, lx.nhwc(node, 0), hwio.reshape(kh * kw * ci, c), bias,
                                   "qconv2d_patches", patch)
        x = lx.bb.emit(lx.bb.call_te(_im2col_te, lx.nhwc(node, 0), *patch, primfunc_name_hint="im2col"))
        return _rows_by_weight(lx, node, x, hwio.reshape(kh * kw * ci, c), bias, "qconv2d_patches")
    acc = lx.bb.emit(lx.bb.call_te(_qconv_nhwc_te, lx.nhwc(node, 0), _weight_operand(lx, node, hwio), int(node.attr("x_zp")),
                                   strides, pads, dilations, int(node.attr("group", 1)),
                                   primfunc_name_hint="qconv2d_nhwc"))
    return ChannelsLast(lx.emit(_requantize_node(lx, node, acc, [1, 1, 1, c], bias)))


def _patches_in_kernel(node: Node, ci: int, co: int) -> bool:
    """Whether a convolution's patches are copied inside its matmul kernel, a row tile's at a time, instead of
    by an im2col kernel of their own: where its output pixels (the rows) outnumber its channels, so that the
    template runs row tiles outermost, and there are rows enough for both cores (layers at 7x7 keep the
    separate copy; a stem's 1-3 channels keep it too, fused with the input's quantization). In the kernel, the
    patches never leave L1; apart, ResNet-18's and the Fashion CNN's copies took a tenth and a third of their
    int8 time."""
    _, h, w = (int(d) for d in out_shape(node)[1:])
    return ci >= 4 and h * w > max(co, 4 * ROW_TILE)


def _rows_by_weight(lx: Lx, node: Node, rows: Any, w_kn: np.ndarray, bias: np.ndarray, name: str,
                    patches: tuple | None = None) -> ChannelsLast:
    """A one-image convolution as the tensorized integer matmul of ``rows`` (its pixels, or their patches:
    [OH*OW, K]) by the weight read as [K, Co], with the bias and requantization fused, reshaped to the NHWC map.
    With ``patches`` (_im2col_te's arguments after the map), ``rows`` is the NHWC map and the kernel copies the
    patches itself."""
    c = int(w_kn.shape[1])
    _, h, w = (int(d) for d in out_shape(node)[1:])
    w_op, pairs16 = _weight_operand(lx, node, w_kn), pairs_fit_int16(w_kn)
    if patches is not None:
        acc = lx.bb.emit(lx.bb.call_te(lambda x, wt: _qmatmul_te(_im2col_te(x, *patches), wt, c, pairs16),
                                       rows, w_op, primfunc_name_hint=name))
    else:
        acc = lx.bb.emit(lx.bb.call_te(_qmatmul_te, rows, w_op, c, pairs16, primfunc_name_hint=name))
    y = lx.bb.emit(_requantize_node(lx, node, acc, [1, c], bias))
    return ChannelsLast(lx.emit(R.reshape(y, [1, h, w, c])))


def _qmatmul_te(x: Any, w: Any, n: int, pairs16: bool) -> Any:
    """x [M, K] uint8 times w [K, N] (int8, or int4 packed in that order) accumulating in int32; the columns
    are contiguous, as the CPU matmul templates want. ``pairs16``: the weights' pair sums fit int16 (the
    block name tells the AVX2 template it may use vpmaddubsw, see x86_int8)."""
    from tvm import te

    kk = int(x.shape[1])
    k = te.reduce_axis((0, kk), "k")
    packed = len(w.shape) == 1
    return te.compute((int(x.shape[0]), n), lambda i, j: te.sum(
        x[i, k].astype("int32") * (_int4_at(w, k * n + j) if packed else w[k, j].astype("int32")), axis=k),
        name=PAIRS16_BLOCK if pairs16 else "qmatmul")


def _qlinear_acc(lx: Lx, node: Node) -> tuple[relax.Expr, np.ndarray, int]:
    """The int32 product ``x w^T`` of QGemm / QMatMul as an [M, N] matrix (x [..., K] read as [M, K]) and the
    bias (the zero point's share folded in) that completes ``(x - x_zp) w^T + bias``; the caller reshapes its
    result back with :func:`_unflatten`."""
    w = np.asarray(node.input(1).data, np.int8)
    n = w.shape[0]
    shape = list(node.input(0).shape)
    x = lx.x(node, 0)
    if len(shape) != 2:
        x = lx.bb.emit(R.reshape(x, [int(np.prod(shape[:-1])), shape[-1]]))
    w_kn = np.ascontiguousarray(w.T)
    acc = lx.bb.emit(lx.bb.call_te(_qmatmul_te, x, _weight_operand(lx, node, w_kn), n, pairs_fit_int16(w_kn),
                                   primfunc_name_hint="qmatmul"))
    return acc, _bias_minus_zero_point(node, w, (1,)).reshape(1, n), n


def _unflatten(node: Node, y: relax.Expr) -> relax.Expr:
    shape = list(node.outputs[0].shape)
    return R.reshape(y, shape) if len(shape) != 2 else y


@lowering("nasc.QGemm")
def _qgemm(lx: Lx, node: Node) -> Any:
    acc, bias, n = _qlinear_acc(lx, node)
    return lx.emit(_unflatten(node, lx.bb.emit(_requantize_node(lx, node, acc, [1, n], bias))))


@lowering("nasc.QMatMul")
def _qmatmul(lx: Lx, node: Node) -> Any:
    acc, bias, _ = _qlinear_acc(lx, node)
    return lx.emit(_unflatten(node, R.add(acc, lx.const(bias, "i32"))))


@lowering("nasc.QAdd")
def _qadd(lx: Lx, node: Node) -> Any:
    # channels-last where an operand was computed so (a residual add between NHWC convolutions) and both
    # operands have one 4-D shape: elementwise, the layout does not matter to it
    nhwc = (any(lx.is_nhwc(node, i) for i in (0, 1)) and len(node.input(0).shape) == 4
            and node.input(0).shape == node.input(1).shape)

    def term(i: int, zp: str, mult: str) -> relax.Expr:
        x = lx.nhwc(node, i) if nhwc else lx.x(node, i)
        centered = R.subtract(R.astype(x, "int64"), relax.const(int(node.attr(zp)), "int64"))
        return R.multiply(centered, relax.const(int(node.attr(mult)), "int64"))

    acc = R.add(term(0, "a_zp", "a_mult"), term(1, "b_zp", "b_mult"))
    shift = relax.const(int(node.attr("shift")), "int64")
    y = lx.emit(_requantize(lx, acc, relax.const(1, "int64"), shift, int(node.attr("y_zp")), int(node.attr("qmin")),
                            int(node.attr("qmax"))))
    return ChannelsLast(y) if nhwc else y


def _sum_u8_te(x: Any, zp: int, nhwc: bool) -> Any:
    """Sum over the spatial axes of uint8 x (NCHW, or NHWC with ``nhwc``) minus its zero point, as [N, C, 1, 1],
    reading the uint8 data directly (a cast before the reduction would be fused into the producer and widen the
    tensor between kernels)."""
    from tvm import te

    n, c, h, w = (int(d) for d in x.shape)
    if nhwc:
        c, h, w = w, c, h
    rh, rw = te.reduce_axis((0, h), "rh"), te.reduce_axis((0, w), "rw")
    total = te.compute((n, c, 1, 1), lambda i, j, _a, _b: te.sum(
        (x[i, rh, rw, j] if nhwc else x[i, j, rh, rw]).astype("int32"), axis=[rh, rw]), name="qsum")
    return te.compute((n, c, 1, 1), lambda i, j, a, b: total[i, j, a, b] - zp * h * w, name="qsum_centered")


@lowering("nasc.QGlobalAveragePool")
def _qgap(lx: Lx, node: Node) -> Any:
    if len(node.input(0).shape) == 4:
        nhwc = lx.is_nhwc(node, 0)
        x = lx.nhwc(node, 0) if nhwc else lx.x(node, 0)
        acc = lx.bb.emit(lx.bb.call_te(_sum_u8_te, x, int(node.attr("x_zp")), nhwc, primfunc_name_hint="qsum"))
    else:
        axes = list(range(2, len(node.input(0).shape)))
        centered = R.subtract(R.astype(lx.x(node, 0), "int32"), relax.const(int(node.attr("x_zp")), "int32"))
        acc = R.sum(centered, axis=axes, keepdims=True)
    return lx.emit(_requantize(lx, acc, relax.const(int(node.attr("mult")), "int64"),
                               relax.const(int(node.attr("shift")), "int64"), int(node.attr("y_zp")), 0, 255))
