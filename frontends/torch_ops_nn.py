"""ATen -> IR converters for softmax, reductions, sorting, normalization, pooling and resizing: part of the
CONVERTERS table of ``frontends/torch_ops.py`` (same conventions), split out to keep each file one readable table.
Imported at the bottom of ``frontends/torch_ops.py``, so the table is complete whenever torch_ops is imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nasc.errors import UnsupportedModelError
from nasc.frontends.torch_ops import Converter, Ctx, _axis, _rank, aten, target_name
from nasc.ir.core import Value

# ---- softmax and reductions ---------------------------------------------------------------------


@aten("aten._softmax.default", "aten._log_softmax.default")
def _softmax(ctx: Ctx, x: Value, dim: int, half_to_float: bool = False) -> Value:
    op = "LogSoftmax" if "log" in target_name(ctx.node.target) else "Softmax"
    return ctx.cast(ctx.op(op, [x], {"axis": _axis(dim, _rank(x))}), ctx.out_dtype)


def _dims(x: Value, dims: int | Sequence[int] | None) -> list[int]:
    """torch's reduction dims as non-negative axes; None or [] mean all of them."""
    if isinstance(dims, int):
        dims = [dims]
    return list(range(_rank(x))) if not dims else [_axis(d, _rank(x)) for d in dims]


def _reduce(onnx_op: str) -> Converter:
    def conv(ctx: Ctx, x: Value, dims: int | Sequence[int] | None = None, keepdim: bool = False,
             **kwargs: Any) -> Value:
        if onnx_op in ("ReduceSum", "ReduceMean", "ReduceProd"):  # torch accumulates ints and bools in int64
            x = ctx.cast(x, ctx.out_dtype)
        return ctx.op(onnx_op, [x, ctx.ints(_dims(x, dims))], {"keepdims": int(bool(keepdim))})

    return conv


aten("aten.mean.dim", "aten.mean.default")(_reduce("ReduceMean"))
aten("aten.sum.dim_IntList", "aten.sum.default")(_reduce("ReduceSum"))
aten("aten.amax.default", "aten.max.default")(_reduce("ReduceMax"))
aten("aten.amin.default", "aten.min.default")(_reduce("ReduceMin"))
aten("aten.prod.dim_int", "aten.prod.default")(_reduce("ReduceProd"))


@aten("aten.max.dim", "aten.min.dim")
def _max_dim(ctx: Ctx, x: Value, dim: int, keepdim: bool = False) -> list[Value]:
    """(values, indices); ONNX ArgMax/ArgMin pick the first of equal elements, as torch does."""
    is_max = "max" in target_name(ctx.node.target)
    axis, keep = _axis(dim, _rank(x)), int(bool(keepdim))
    values = ctx.op("ReduceMax" if is_max else "ReduceMin", [x, ctx.ints([axis])], {"keepdims": keep})
    return [values, ctx.op("ArgMax" if is_max else "ArgMin", [x], {"axis": axis, "keepdims": keep})]


@aten("aten.any.dim", "aten.any.dims", "aten.any.default", "aten.all.dim", "aten.all.dims", "aten.all.default")
def _any_all(ctx: Ctx, x: Value, dims: int | Sequence[int] | None = None, keepdim: bool = False) -> Value:
    """Reduce the truth values (non-zero, NaN included) as 0/1 int32 with ReduceMax (any) or ReduceMin (all)."""
    op = "ReduceMax" if ".any." in target_name(ctx.node.target) else "ReduceMin"
    flags = ctx.cast(ctx.cast(x, "bool"), "i32")
    r = ctx.op(op, [flags, ctx.ints(_dims(x, dims))], {"keepdims": int(bool(keepdim))})
    return ctx.cast(r, ctx.out_dtype)


def _var(ctx: Ctx, x: Value, dims: int | Sequence[int] | None, correction: float | None,
         keepdim: bool) -> tuple[Value, Value]:
    """(variance, mean): sum((x - mean)^2) / (N - correction), correction 1 unless given."""
    axes = _dims(x, dims)
    n = math.prod(x.shape[a] for a in axes)
    mean = ctx.op("ReduceMean", [x, ctx.ints(axes)], {"keepdims": 1})
    d = ctx.op("Sub", [x, mean])
    ss = ctx.op("ReduceSum", [ctx.op("Mul", [d, d]), ctx.ints(axes)], {"keepdims": int(bool(keepdim))})
    var = ctx.op("Div", [ss, ctx.scalar(n - (1 if correction is None else correction), x.dtype)])
    if not keepdim:
        mean = ctx.op("Squeeze", [mean, ctx.ints(axes)])
    return var, mean


@aten("aten.var.correction")
def _var_correction(ctx: Ctx, x: Value, dims: Any = None, *, correction: float | None = None,
                    keepdim: bool = False) -> Value:
    return _var(ctx, x, dims, correction, keepdim)[0]


@aten("aten.var_mean.correction")
def _var_mean(ctx: Ctx, x: Value, dims: Any = None, *, correction: float | None = None,
              keepdim: bool = False) -> list[Value]:
    return list(_var(ctx, x, dims, correction, keepdim))


@aten("aten.linalg_vector_norm.default")
def _vector_norm(ctx: Ctx, x: Value, ord: float = 2, dims: Any = None, keepdim: bool = False, *,
                 dtype: Any = None) -> Value:
    x = ctx.cast(x, ctx.out_dtype)
    axes, keep = ctx.ints(_dims(x, dims)), {"keepdims": int(bool(keepdim))}
    if ord == 2:
        return ctx.op("ReduceL2", [x, axes], keep)
    if ord == 1:
        return ctx.op("ReduceL1", [x, axes], keep)
    if math.isinf(ord):
        return ctx.op("ReduceMax" if ord > 0 else "ReduceMin", [ctx.op("Abs", [x]), axes], keep)
    if ord == 0:
        nonzero = ctx.cast(ctx.op("Not", [ctx.op("Equal", [x, ctx.scalar(0, x.dtype)])]), x.dtype)
        return ctx.op("ReduceSum", [nonzero, axes], keep)
    p = ctx.scalar(ord, x.dtype)
    total = ctx.op("ReduceSum", [ctx.op("Pow", [ctx.op("Abs", [x]), p]), axes], keep)
    return ctx.op("Pow", [total, ctx.op("Reciprocal", [p])])


@aten("aten.cumsum.default")
def _cumsum(ctx: Ctx, x: Value, dim: int, *, dtype: Any = None) -> Value:
    return ctx.op("CumSum", [ctx.cast(x, ctx.out_dtype), ctx.const(np.array(_axis(dim, _rank(x)), np.int64))])


@aten("aten.topk.default")
def _topk(ctx: Ctx, x: Value, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> list[Value]:
    attrs = {"axis": _axis(dim, _rank(x)), "largest": int(bool(largest)), "sorted": 1}
    return ctx.op("TopK", [x, ctx.ints([k])], attrs, n_out=2)


@aten("aten.sort.default", "aten.sort.stable")
def _sort(ctx: Ctx, x: Value, *args: Any, dim: int = -1, descending: bool = False, stable: bool | None = None
          ) -> list[Value]:
    """A full TopK; ONNX orders equal elements by index, which is a stable sort."""
    if target_name(ctx.node.target) == "aten.sort.default":
        dim, descending = (list(args) + [dim, descending][len(args):])[:2]
    axis = _axis(dim, _rank(x))
    attrs = {"axis": axis, "largest": int(bool(descending)), "sorted": 1}
    return ctx.op("TopK", [x, ctx.ints([x.shape[axis]])], attrs, n_out=2)


@aten("aten.argmax.default", "aten.argmin.default")
def _argmax(ctx: Ctx, x: Value, dim: int | None = None, keepdim: bool = False) -> Value:
    op = "ArgMax" if "argmax" in target_name(ctx.node.target) else "ArgMin"
    if dim is None:
        x = ctx.op("Reshape", [x, ctx.ints([-1])])
        dim = 0
    return ctx.op(op, [x], {"axis": _axis(dim, _rank(x)), "keepdims": int(bool(keepdim))})


# ---- normalization ----------------------------------------------------------------------------


def _per_channel(ctx: Ctx, v: Value | None, c: int, fill: float, dtype: str) -> Value:
    return v if v is not None else ctx.const(np.full(c, fill), dtype)


def _channel_affine(ctx: Ctx, y: Value, w: Value | None, b: Value | None) -> Value:
    """``y * w + b`` with per-channel [C] ``w`` and ``b`` broadcast over axis 1 of ``y``."""
    r = _rank(y)
    for v, op in ((w, "Mul"), (b, "Add")):
        if v is not None:
            if r > 2:
                v = ctx.op("Reshape", [v, ctx.ints([v.shape[0]] + [1] * (r - 2))])
            y = ctx.op(op, [y, v])
    return y


@aten("aten._native_batch_norm_legit_no_training.default")
def _batch_norm(ctx: Ctx, x: Value, w: Value | None, b: Value | None, mean: Value, var: Value, momentum: float,
                eps: float) -> list[Any]:
    c = x.shape[1]
    w, b = _per_channel(ctx, w, c, 1.0, x.dtype), _per_channel(ctx, b, c, 0.0, x.dtype)
    y = ctx.op("BatchNormalization", [x, w, b, mean, var], {"epsilon": float(eps)})
    return [y, None, None]


@aten("aten._native_batch_norm_legit.no_stats", "aten._native_batch_norm_legit.default")
def _batch_norm_batch_stats(ctx: Ctx, x: Value, w: Value | None, b: Value | None, *args: Any) -> list[Any]:
    """Batch norm with the batch's own statistics (training=True, or instance norm, which torch decomposes into
    this over an [1, N*C, ...] view). The running statistics are not updated: the IR is an inference graph."""
    *_, training, _momentum, eps = args
    if not training:  # the .default overload in eval mode: running statistics are args[0], args[1]
        return _batch_norm(ctx, x, w, b, args[0], args[1], _momentum, eps)
    r, c = _rank(x), x.shape[1]
    if r >= 3 and x.shape[0] == 1:  # statistics over the spatial dims only: exactly InstanceNormalization
        w, b = _per_channel(ctx, w, c, 1.0, x.dtype), _per_channel(ctx, b, c, 0.0, x.dtype)
        return [ctx.op("InstanceNormalization", [x, w, b], {"epsilon": float(eps)}), None, None]
    axes = ctx.ints([0, *range(2, r)])
    mean = ctx.op("ReduceMean", [x, axes], {"keepdims": 1})
    d = ctx.op("Sub", [x, mean])
    var = ctx.op("ReduceMean", [ctx.op("Mul", [d, d]), axes], {"keepdims": 1})
    rstd = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [var, ctx.scalar(eps, x.dtype)])])])
    return [_channel_affine(ctx, ctx.op("Mul", [d, rstd]), w, b), None, None]


@aten("aten.native_layer_norm.default")
def _layer_norm(ctx: Ctx, x: Value, normalized_shape: Sequence[int], w: Value | None, b: Value | None,
                eps: float) -> list[Any]:
    shape = list(normalized_shape)
    w = w if w is not None else ctx.const(np.ones(shape), x.dtype)
    y = ctx.op("LayerNormalization", [x, w, b], {"axis": -len(shape), "epsilon": float(eps)})
    return [y, None, None]


@aten("aten.native_group_norm.default")
def _group_norm(ctx: Ctx, x: Value, w: Value | None, b: Value | None, n: int, c: int, hxw: int, groups: int,
                eps: float) -> list[Any]:
    shape = x.shape
    if _rank(x) < 3:  # GroupNormalization wants spatial dims
        x = ctx.op("Unsqueeze", [x, ctx.ints([2])])
    w, b = _per_channel(ctx, w, c, 1.0, x.dtype), _per_channel(ctx, b, c, 0.0, x.dtype)
    y = ctx.op("GroupNormalization", [x, w, b], {"num_groups": int(groups), "epsilon": float(eps)})
    if len(shape) < 3:
        y = ctx.op("Reshape", [y, ctx.ints(shape)])
    return [y, None, None]


# ---- pooling ---------------------------------------------------------------------------------


def _pool_attrs(k: int, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                ceil_mode: bool) -> dict[str, Any]:
    kernel = tuple(kernel) * (k if len(kernel) == 1 else 1)
    stride = tuple(stride or kernel) * (k if len(stride or kernel) == 1 else 1)
    padding = tuple(padding) * (k if len(padding) == 1 else 1)
    return {"kernel_shape": kernel, "strides": stride, "pads": padding * 2, "ceil_mode": int(bool(ceil_mode))}


def _unused_result(ctx: Ctx, index: int, what: str) -> None:
    """Raise if result ``index`` of this multi-result node (e.g. pooling indices) feeds anything."""
    for user in ctx.node.users:
        if target_name(user.target) == "getitem" and user.args[1] == index and user.users:
            raise UnsupportedModelError(
                f"{target_name(ctx.node.target)} at node '{ctx.node.name}' (scope '{ctx.scope}'): its {what} are "
                "used, which nasc does not convert; use via='onnx'"
            )


@aten("aten.max_pool2d_with_indices.default", "aten.max_pool1d_with_indices.default",
      "aten.max_pool3d_with_indices.default")
def _max_pool(ctx: Ctx, x: Value, kernel: Sequence[int], stride: Sequence[int] = (), padding: Sequence[int] = (0,),
              dilation: Sequence[int] = (1,), ceil_mode: bool = False) -> list[Any]:
    _unused_result(ctx, 1, "indices")
    k = _rank(x) - 2
    attrs = _pool_attrs(k, kernel, stride, padding, ceil_mode)
    attrs["dilations"] = tuple(dilation) * (k if len(dilation) == 1 else 1)
    return [ctx.op("MaxPool", [x], attrs), None]


@aten("aten.avg_pool2d.default", "aten.avg_pool1d.default", "aten.avg_pool3d.default")
def _avg_pool(ctx: Ctx, x: Value, kernel: Sequence[int], stride: Sequence[int] = (), padding: Sequence[int] = (0,),
              ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None) -> Value:
    if divisor_override is not None:
        raise UnsupportedModelError(f"avg_pool with divisor_override at node '{ctx.node.name}'; use via='onnx'")
    attrs = _pool_attrs(_rank(x) - 2, kernel, stride, padding, ceil_mode)
    attrs["count_include_pad"] = int(bool(count_include_pad))
    return ctx.op("AveragePool", [x], attrs)


def _adaptive(ctx: Ctx, x: Value, output_size: Sequence[int], pool: str, reduce: str) -> Value:
    """Adaptive pooling: one pooling op when every window is the same; otherwise one axis at a time, each
    output cell a Slice of torch's window [floor(i*in/out), ceil((i+1)*in/out)) reduced, then Concat.
    Mean and max over a box are exactly the mean (max) over one axis of the means (maxima) over the other."""
    spatial = x.shape[2:]
    out = tuple(output_size) * (len(spatial) if len(output_size) == 1 else 1)
    out = tuple(s if o is None else o for s, o in zip(spatial, out))
    if all(s % o == 0 for s, o in zip(spatial, out)):
        if all(o == 1 for o in out):
            return ctx.op(f"Global{pool}", [x])
        kernel = tuple(s // o for s, o in zip(spatial, out))
        return ctx.op(pool, [x], {"kernel_shape": kernel, "strides": kernel})
    for k, (s, o) in enumerate(zip(spatial, out)):
        if s == o:
            continue
        axis = 2 + k
        cells = []
        for i in range(o):
            start, end = (i * s) // o, -((-(i + 1) * s) // o)
            part = ctx.op("Slice", [x, ctx.ints([start]), ctx.ints([end]), ctx.ints([axis])])
            cells.append(ctx.op(reduce, [part, ctx.ints([axis])], {"keepdims": 1}))
        x = ctx.op("Concat", cells, {"axis": axis})
    return x


@aten("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool1d.default", "aten._adaptive_avg_pool3d.default")
def _adaptive_avg_pool(ctx: Ctx, x: Value, output_size: Sequence[int]) -> Value:
    return _adaptive(ctx, x, output_size, "AveragePool", "ReduceMean")


@aten("aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool1d.default", "aten.adaptive_max_pool3d.default")
def _adaptive_max_pool(ctx: Ctx, x: Value, output_size: Sequence[int]) -> list[Any]:
    _unused_result(ctx, 1, "indices")
    return [_adaptive(ctx, x, output_size, "MaxPool", "ReduceMax"), None]


# ---- resizing ------------------------------------------------------------------------------------


def _resize(ctx: Ctx, x: Value, mode: str, scales: Sequence[float | None] | None, align_corners: bool = False) -> Value:
    """torch's upsampling as ONNX Resize at opset 21.

    nearest: torch reads source index floor(dst * s), with s = 1/scale_factor when a scale factor was given, else
    in/out: Resize's 'asymmetric' map with nearest_mode 'floor', given the same scales (or the sizes).
    (bi)linear: align_corners=False is 'half_pixel' ((dst + 0.5) * s - 0.5, clamped at 0 like torch), again with
    the scale factor itself when one was given; align_corners=True is Resize's 'align_corners'.
    """
    out = ctx.out_shape
    attrs: dict[str, Any] = {"mode": mode}
    if mode == "nearest":
        attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    else:
        attrs["coordinate_transformation_mode"] = "align_corners" if align_corners else "half_pixel"
    spatial = x.shape[2:]
    if scales and all(s is not None for s in scales) and not align_corners:
        sc = [float(s) for s in scales]  # type: ignore[arg-type]
        sc = sc * len(spatial) if len(sc) == 1 else sc
        if all(int(np.floor(np.float32(d) * np.float32(s))) == o for d, s, o in zip(spatial, sc, out[2:])):
            return ctx.op("Resize", [x, None, ctx.const(np.array([1.0, 1.0, *sc], np.float32))], attrs)
        if mode == "linear" or any(o / d != s for d, s, o in zip(spatial, sc, out[2:])):
            raise UnsupportedModelError(
                f"{target_name(ctx.node.target)} at node '{ctx.node.name}' (scope '{ctx.scope}'): scale factors "
                f"{sc} do not give output size {out[2:]} under ONNX Resize's rounding; use via='onnx'"
            )
    return ctx.op("Resize", [x, None, None, ctx.ints(out)], attrs)


@aten("aten.upsample_nearest2d.vec", "aten.upsample_nearest1d.vec", "aten.upsample_nearest3d.vec")
def _upsample_nearest_vec(ctx: Ctx, x: Value, output_size: Sequence[int] | None,
                          scale_factors: Sequence[float] | None) -> Value:
    return _resize(ctx, x, "nearest", None if output_size is not None else scale_factors)


@aten("aten.upsample_bilinear2d.vec", "aten.upsample_linear1d.vec", "aten.upsample_trilinear3d.vec")
def _upsample_linear_vec(ctx: Ctx, x: Value, output_size: Sequence[int] | None, align_corners: bool,
                         scale_factors: Sequence[float] | None) -> Value:
    return _resize(ctx, x, "linear", None if output_size is not None else scale_factors, align_corners)


@aten("aten.upsample_nearest2d.default", "aten.upsample_nearest1d.default", "aten.upsample_nearest3d.default")
def _upsample_nearest(ctx: Ctx, x: Value, output_size: Sequence[int], *scales: float | None) -> Value:
    return _resize(ctx, x, "nearest", scales)


@aten("aten.upsample_bilinear2d.default", "aten.upsample_linear1d.default", "aten.upsample_trilinear3d.default")
def _upsample_linear(ctx: Ctx, x: Value, output_size: Sequence[int], align_corners: bool,
                     *scales: float | None) -> Value:
    return _resize(ctx, x, "linear", scales, align_corners)
