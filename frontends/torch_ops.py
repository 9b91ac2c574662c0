"""ATen -> IR converters: one function per core ATen op, all in the CONVERTERS table.

A converter receives a :class:`Ctx` and the FX node's arguments, with tensors
already mapped to IR values and Python scalars and lists as they are. It builds
IR nodes through ``ctx.op`` (typed by the op registry) and returns the result
value (or a list of values for ops with several results). The caller checks
the result against the shape and dtype torch recorded, so a converter that
gets semantics wrong fails loudly at import, naming the op. Adding an op is one
entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from nasc.errors import UnsupportedModelError
from nasc.ir import dtypes
from nasc.ir.core import Graph, Value
from nasc.ir.ops.registry import type_node
from nasc.ir.types import TensorType

Converter = Callable[..., Any]
CONVERTERS: dict[str, Converter] = {}

_TORCH_DTYPES = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8",
    torch.bool: "bool", torch.complex64: "c64", torch.complex128: "c128",
}
INT64_MAX = 2**63 - 1


def dtype_from_torch(dt: torch.dtype) -> str:
    if dt not in _TORCH_DTYPES:
        raise UnsupportedModelError(f"torch dtype {dt} is not supported")
    return _TORCH_DTYPES[dt]


#: sub-byte integers have no torch dtype: their constants are held widened (int4 values in an int8 tensor)
WIDENED = {"i4": "i8", "u4": "u8", "i2": "i8", "u2": "u8"}


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype that holds IR dtype ``dtype`` (sub-byte integers widened, see ``WIDENED``)."""
    return torch.from_numpy(np.zeros(1, dtypes.to_numpy(WIDENED.get(dtype, dtype)))).dtype


def target_name(target: Any) -> str:
    """'aten.add.Tensor' for an OpOverload, 'getitem' for operator.getitem, else the callable's name."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


def aten(*names: str) -> Callable[[Converter], Converter]:
    """Register a converter under one or more ATen overload names ('aten.add.Tensor')."""

    def deco(fn: Converter) -> Converter:
        for n in names:
            if n in CONVERTERS:
                raise ValueError(f"converter for {n} registered twice")
            CONVERTERS[n] = fn
        return fn

    return deco


class Ctx:
    """What a converter builds with: the graph, the FX node being converted, and its scope."""

    def __init__(self, graph: Graph, node: Any, scope: str) -> None:
        self.graph = graph
        self.node = node
        self.scope = scope
        self._count = 0

    # ---- facts about the FX node ----
    @property
    def val(self) -> Any:
        return self.node.meta.get("val")

    @property
    def out_dtype(self) -> str:
        v = self.val[0] if isinstance(self.val, list | tuple) else self.val
        return dtype_from_torch(v.dtype)

    @property
    def out_shape(self) -> tuple[int, ...]:
        from nasc.frontends.torch import _concrete

        v = self.val[0] if isinstance(self.val, list | tuple) else self.val
        return tuple(_concrete(d) for d in v.shape)

    # ---- building ----
    def op(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None, n_out: int = 1,
           domain: str = "") -> Any:
        """Add an IR node typed by the registry; returns its result (a list when ``n_out`` > 1)."""
        # FX names never contain ".", so the extra nodes of one conversion cannot collide with another FX node
        name = self.node.name if self._count == 0 else f"{self.node.name}.{self._count}"
        self._count += 1
        inputs = list(inputs)
        while inputs and inputs[-1] is None:  # omitted trailing optional inputs (ONNX Runtime rejects some as "")
            inputs.pop()
        node = self.graph.make_node(op, inputs, [TensorType("f32", None)] * n_out, attrs or {}, domain=domain,
                                    scope=self.scope, name=name, out_names=[name] if n_out == 1 else None)
        type_node(node)
        return node.outputs[0] if n_out == 1 else list(node.outputs)

    def const(self, array: Any, dtype: str | None = None) -> Value:
        arr = np.asarray(array)
        if dtype is not None:
            arr = arr.astype(dtypes.to_numpy(dtype))
        return self.graph.add_constant(arr, f"{self.node.name}_const{len(self.graph.constants)}")

    def ints(self, values: Sequence[int]) -> Value:
        return self.const(np.array([int(v) for v in values], np.int64))

    def scalar(self, value: Any, dtype: str) -> Value:
        return self.const(np.array(value), dtype)

    def tensor(self, x: Any, dtype: str) -> Value:
        """``x`` as a value of element type ``dtype`` (scalars become constants; tensors are cast if needed)."""
        if isinstance(x, Value):
            return self.cast(x, dtype)
        return self.scalar(x, dtype)

    def cast(self, v: Value, dtype: str) -> Value:
        return v if v.dtype == dtype else self.op("Cast", [v], {"to": dtype})

    def check(self, result: Any) -> None:
        """Compare converted values with torch's recorded shapes and dtypes."""
        vals = self.val if isinstance(self.val, list | tuple) else [self.val]
        res = result if isinstance(result, list | tuple) else [result]
        for v, r in zip(vals, res):
            if not isinstance(v, torch.Tensor) or not isinstance(r, Value):
                continue
            from nasc.frontends.torch import _concrete

            want = TensorType(dtype_from_torch(v.dtype), tuple(_concrete(d) for d in v.shape))
            if r.type != want:
                raise AssertionError(
                    f"converter for {target_name(self.node.target)} (node '{self.node.name}', scope '{self.scope}') "
                    f"produced {r.type}, torch says {want}"
                )


def _rank(v: Value) -> int:
    return len(v.shape)


def _axis(d: int, rank: int) -> int:
    return d % rank if rank else 0


def _promote(ctx: Ctx, *xs: Any) -> str:
    """The IR element type torch computes in for these operands."""
    tensors = [x for x in xs if isinstance(x, Value)]
    dt = dtype_from_torch(torch.result_type(*[_meta(x) if isinstance(x, Value) else x for x in xs])) \
        if len(xs) == 2 else tensors[0].dtype
    return dt


def _meta(v: Value) -> torch.Tensor:
    np_dt = dtypes.to_numpy(v.dtype) if v.dtype != "bf16" else None
    tdt = torch.bfloat16 if np_dt is None else torch.from_numpy(np.zeros(0, np_dt)).dtype
    return torch.empty((), dtype=tdt)


# ---- pass-through and bookkeeping -------------------------------------------------


@aten("aten.clone.default", "aten.alias.default", "aten.lift_fresh_copy.default", "aten.detach.default",
      "aten.contiguous.default", "aten._assert_tensor_metadata.default", "aten.dropout.default")
def _identity(ctx: Ctx, x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


@aten("getitem")
def _getitem(ctx: Ctx, xs: Any, i: int) -> Any:
    return xs[i]


@aten("aten._to_copy.default", "aten.to.dtype")
def _to_copy(ctx: Ctx, x: Value, *args: Any, **kwargs: Any) -> Value:
    return ctx.cast(x, ctx.out_dtype)


@aten("aten.sym_size.int")
def _sym_size(ctx: Ctx, x: Value, dim: int) -> int:
    return x.shape[dim]


# ---- creation (folded to constants: their arguments are Python values) ---------------


@aten("aten.arange.start_step", "aten.arange.default", "aten.arange.start")
def _arange(ctx: Ctx, *args: Any, **kwargs: Any) -> Value:
    nums = [a for a in args if isinstance(a, int | float)]
    return ctx.const(np.arange(*nums), ctx.out_dtype)


@aten("aten.full.default", "aten.zeros.default", "aten.ones.default", "aten.empty.memory_format",
      "aten.scalar_tensor.default", "aten.full_like.default", "aten.zeros_like.default", "aten.ones_like.default")
def _full(ctx: Ctx, *args: Any, **kwargs: Any) -> Value:
    name = target_name(ctx.node.target)
    if "zeros" in name or "empty" in name:
        fill: Any = 0
    elif "ones" in name:
        fill = 1
    elif "scalar_tensor" in name:
        fill = args[0]
    else:
        fill = args[1] if len(args) > 1 else kwargs["fill_value"]
    return ctx.const(np.full(ctx.out_shape, fill), ctx.out_dtype)


# ---- elementwise ----------------------------------------------------------------------


def _binary(onnx_op: str) -> Converter:
    def conv(ctx: Ctx, a: Any, b: Any, *, alpha: Any = 1, **kwargs: Any) -> Value:
        dt = ctx.out_dtype
        x, y = ctx.tensor(a, dt), ctx.tensor(b, dt)
        if alpha != 1:
            y = ctx.op("Mul", [y, ctx.scalar(alpha, dt)])
        return ctx.op(onnx_op, [x, y])

    return conv


for _names, _op in (
    (("aten.add.Tensor", "aten.add.Scalar"), "Add"),
    (("aten.sub.Tensor", "aten.sub.Scalar"), "Sub"),
    (("aten.mul.Tensor", "aten.mul.Scalar"), "Mul"),
    (("aten.div.Tensor", "aten.div.Scalar"), "Div"),
    (("aten.pow.Tensor_Tensor", "aten.pow.Tensor_Scalar"), "Pow"),
    (("aten.maximum.default",), "Max"),
    (("aten.minimum.default",), "Min"),
):
    aten(*_names)(_binary(_op))


@aten("aten.remainder.Tensor", "aten.remainder.Scalar")
def _remainder(ctx: Ctx, a: Any, b: Any) -> Value:
    """Python-style modulo (the result takes the divisor's sign). ONNX Mod does that for integers only; floats
    need fmod=1, then ATen's correction: add the divisor where the remainder is non-zero and the signs differ."""
    dt = ctx.out_dtype
    x, y = ctx.tensor(a, dt), ctx.tensor(b, dt)
    if dt not in dtypes.FLOAT_DTYPES:
        return ctx.op("Mod", [x, y])
    m = ctx.op("Mod", [x, y], {"fmod": 1})
    zero = ctx.scalar(0, dt)
    differ = ctx.op("Xor", [ctx.op("Less", [m, zero]), ctx.op("Less", [y, zero])])
    fix = ctx.op("And", [ctx.op("Not", [ctx.op("Equal", [m, zero])]), differ])
    return ctx.op("Where", [fix, ctx.op("Add", [m, y]), m])


@aten("aten.fmod.Tensor", "aten.fmod.Scalar")
def _fmod(ctx: Ctx, a: Any, b: Any) -> Value:
    """C-style remainder (the dividend's sign): ONNX Mod with fmod=1, for integers and floats alike."""
    dt = ctx.out_dtype
    return ctx.op("Mod", [ctx.tensor(a, dt), ctx.tensor(b, dt)], {"fmod": 1})


@aten("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(ctx: Ctx, a: Any, b: Any, alpha: Any = 1) -> Value:
    dt = ctx.out_dtype
    x = ctx.tensor(a, dt)
    if alpha != 1:
        x = ctx.op("Mul", [x, ctx.scalar(alpha, dt)])
    return ctx.op("Sub", [ctx.tensor(b, dt), x])


@aten("aten.div.Tensor_mode")
def _div_mode(ctx: Ctx, a: Any, b: Any, *, rounding_mode: str | None = None) -> Value:
    dt = ctx.out_dtype
    work = dt if dt in dtypes.FLOAT_DTYPES else "f64"
    q = ctx.op("Div", [ctx.tensor(a, work), ctx.tensor(b, work)])
    if rounding_mode == "floor":
        q = ctx.op("Floor", [q])
    elif rounding_mode == "trunc":
        q = ctx.op("Mul", [ctx.op("Sign", [q]), ctx.op("Floor", [ctx.op("Abs", [q])])])
    return ctx.cast(q, dt)


def _compare(onnx_op: str, negate: bool = False) -> Converter:
    def conv(ctx: Ctx, a: Any, b: Any) -> Value:
        dt = _promote(ctx, a, b)
        r = ctx.op(onnx_op, [ctx.tensor(a, dt), ctx.tensor(b, dt)])
        return ctx.op("Not", [r]) if negate else r

    return conv


for _names, _op, _neg in (
    (("aten.eq.Tensor", "aten.eq.Scalar"), "Equal", False),
    (("aten.ne.Tensor", "aten.ne.Scalar"), "Equal", True),
    (("aten.lt.Tensor", "aten.lt.Scalar"), "Less", False),
    (("aten.le.Tensor", "aten.le.Scalar"), "LessOrEqual", False),
    (("aten.gt.Tensor", "aten.gt.Scalar"), "Greater", False),
    (("aten.ge.Tensor", "aten.ge.Scalar"), "GreaterOrEqual", False),
):
    aten(*_names)(_compare(_op, _neg))


def _logical(onnx_op: str) -> Converter:
    def conv(ctx: Ctx, a: Any, b: Any) -> Value:
        dt = ctx.out_dtype
        if dt == "bool":
            return ctx.op(onnx_op, [ctx.tensor(a, "bool"), ctx.tensor(b, "bool")])
        bitwise = {"And": "BitwiseAnd", "Or": "BitwiseOr", "Xor": "BitwiseXor"}[onnx_op]
        return ctx.op(bitwise, [ctx.tensor(a, dt), ctx.tensor(b, dt)])

    return conv


aten("aten.bitwise_and.Tensor", "aten.logical_and.default")(_logical("And"))
aten("aten.bitwise_or.Tensor", "aten.logical_or.default")(_logical("Or"))
aten("aten.bitwise_xor.Tensor", "aten.logical_xor.default")(_logical("Xor"))


@aten("aten.bitwise_not.default", "aten.logical_not.default")
def _not(ctx: Ctx, x: Value) -> Value:
    return ctx.op("Not", [ctx.cast(x, "bool")]) if ctx.out_dtype == "bool" else ctx.op("BitwiseNot", [x])


def _unary(onnx_op: str) -> Converter:
    def conv(ctx: Ctx, x: Value) -> Value:
        return ctx.op(onnx_op, [ctx.cast(x, ctx.out_dtype)])

    return conv


for _name, _op in {
    "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "neg": "Neg",
    "abs": "Abs", "erf": "Erf", "reciprocal": "Reciprocal", "floor": "Floor", "ceil": "Ceil", "sin": "Sin",
    "cos": "Cos", "sign": "Sign", "round": "Round", "hardswish": "HardSwish", "tan": "Tan", "asin": "Asin",
    "acos": "Acos", "atan": "Atan", "sinh": "Sinh", "cosh": "Cosh", "asinh": "Asinh", "acosh": "Acosh",
    "atanh": "Atanh",
}.items():
    aten(f"aten.{_name}.default")(_unary(_op))


def _predicate(onnx_op: str) -> Converter:
    def conv(ctx: Ctx, x: Value) -> Value:  # the operand keeps its type; the result is bool
        return ctx.op(onnx_op, [x])

    return conv


aten("aten.isnan.default")(_predicate("IsNaN"))
aten("aten.isinf.default")(_predicate("IsInf"))


@aten("aten.expm1.default", "aten.log1p.default")
def _expm1_log1p(ctx: Ctx, x: Value) -> Value:
    x = ctx.cast(x, ctx.out_dtype)
    one = ctx.scalar(1, x.dtype)
    if "expm1" in target_name(ctx.node.target):
        return ctx.op("Sub", [ctx.op("Exp", [x]), one])
    return ctx.op("Log", [ctx.op("Add", [x, one])])


@aten("aten.log2.default", "aten.log10.default")
def _log_base(ctx: Ctx, x: Value) -> Value:
    base = 2.0 if "log2" in target_name(ctx.node.target) else 10.0
    return ctx.op("Div", [ctx.op("Log", [ctx.cast(x, ctx.out_dtype)]), ctx.scalar(math.log(base), ctx.out_dtype)])


@aten("aten.trunc.default")
def _trunc(ctx: Ctx, x: Value) -> Value:
    if x.dtype not in dtypes.FLOAT_DTYPES:
        return x
    neg = ctx.op("Less", [x, ctx.scalar(0, x.dtype)])
    return ctx.op("Where", [neg, ctx.op("Ceil", [x]), ctx.op("Floor", [x])])


@aten("aten.elu.default")
def _elu(ctx: Ctx, x: Value, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> Value:
    """ELU, SELU and CELU: scale * (x if x > 0 else alpha * (exp(x * input_scale) - 1))."""
    if input_scale == 1 and scale == 1:
        return ctx.op("Elu", [x], {"alpha": float(alpha)})
    if input_scale == 1:
        return ctx.op("Selu", [x], {"alpha": float(alpha), "gamma": float(scale)})
    dt = x.dtype
    neg = ctx.op("Mul", [ctx.op("Sub", [ctx.op("Exp", [ctx.op("Mul", [x, ctx.scalar(input_scale, dt)])]),
                                        ctx.scalar(1, dt)]), ctx.scalar(alpha, dt)])
    y = ctx.op("Where", [ctx.op("Greater", [x, ctx.scalar(0, dt)]), x, neg])
    return ctx.op("Mul", [y, ctx.scalar(scale, dt)])


@aten("aten.rsqrt.default")
def _rsqrt(ctx: Ctx, x: Value) -> Value:
    return ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.cast(x, ctx.out_dtype)])])


@aten("aten.hardsigmoid.default")
def _hardsigmoid(ctx: Ctx, x: Value) -> Value:
    return ctx.op("HardSigmoid", [x], {"alpha": 1.0 / 6.0, "beta": 0.5})


@aten("aten.silu.default")
def _silu(ctx: Ctx, x: Value) -> Value:
    return ctx.op("Mul", [x, ctx.op("Sigmoid", [x])])


@aten("aten.gelu.default")
def _gelu(ctx: Ctx, x: Value, approximate: str = "none") -> Value:
    return ctx.op("Gelu", [x], {"approximate": approximate})


@aten("aten.leaky_relu.default")
def _leaky_relu(ctx: Ctx, x: Value, negative_slope: float = 0.01) -> Value:
    return ctx.op("LeakyRelu", [x], {"alpha": float(negative_slope)})


@aten("aten._prelu_kernel.default")
def _prelu(ctx: Ctx, x: Value, weight: Value) -> Value:
    # torch's weight is [C]; ONNX broadcasts from the right, so give it shape [C, 1, ...]
    if _rank(x) > 2 and _rank(weight) == 1 and weight.shape[0] > 1:
        weight = ctx.op("Reshape", [weight, ctx.ints([weight.shape[0]] + [1] * (_rank(x) - 2))])
    return ctx.op("PRelu", [x, weight])


@aten("aten.hardtanh.default", "aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default")
def _clamp(ctx: Ctx, x: Value, lo: Any = None, hi: Any = None) -> Value:
    name = target_name(ctx.node.target)
    if name == "aten.hardtanh.default":
        lo = -1.0 if lo is None else lo
        hi = 1.0 if hi is None else hi
    if name == "aten.clamp_max.default":
        lo, hi = None, lo
    dt = ctx.out_dtype
    return ctx.op("Clip", [x, None if lo is None else ctx.scalar(lo, dt), None if hi is None else ctx.scalar(hi, dt)])


@aten("aten.clamp.Tensor")
def _clamp_tensor(ctx: Ctx, x: Value, lo: Any = None, hi: Any = None) -> Value:
    dt = ctx.out_dtype
    y = ctx.cast(x, dt)
    if lo is not None:
        y = ctx.op("Max", [y, ctx.tensor(lo, dt)])
    if hi is not None:
        y = ctx.op("Min", [y, ctx.tensor(hi, dt)])
    return y


@aten("aten.where.self")
def _where(ctx: Ctx, cond: Value, a: Any, b: Any) -> Value:
    dt = ctx.out_dtype
    return ctx.op("Where", [ctx.cast(cond, "bool"), ctx.tensor(a, dt), ctx.tensor(b, dt)])


@aten("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(ctx: Ctx, x: Value, mask: Value, value: Any) -> Value:
    return ctx.op("Where", [ctx.cast(mask, "bool"), ctx.tensor(value, x.dtype), x])


# ---- linear algebra and convolution ---------------------------------------------------------


@aten("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _mm(ctx: Ctx, a: Value, b: Value) -> Value:
    return ctx.op("MatMul", [a, b])


@aten("aten.addmm.default")
def _addmm(ctx: Ctx, bias: Value, a: Value, b: Value, *, beta: float = 1, alpha: float = 1) -> Value:
    return ctx.op("Gemm", [a, b, bias], {"alpha": float(alpha), "beta": float(beta)})


@aten("aten.convolution.default")
def _convolution(ctx: Ctx, x: Value, w: Value, b: Value | None, stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int], transposed: bool, output_padding: Sequence[int], groups: int) -> Value:
    k = _rank(w) - 2
    attrs: dict[str, Any] = {
        "strides": tuple(stride) * (k if len(stride) == 1 else 1),
        "dilations": tuple(dilation) * (k if len(dilation) == 1 else 1),
        "pads": tuple(padding) * (k if len(padding) == 1 else 1) * 2,
        "group": int(groups),
        "kernel_shape": tuple(w.shape[2:]),
    }
    if transposed:
        if any(output_padding):
            attrs["output_padding"] = tuple(output_padding) * (k if len(output_padding) == 1 else 1)
        return ctx.op("ConvTranspose", [x, w, b], attrs)
    return ctx.op("Conv", [x, w, b], attrs)


# ---- shapes and data movement --------------------------------------------------------------------


@aten("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
def _view(ctx: Ctx, x: Value, shape: Sequence[int]) -> Value:
    return ctx.op("Reshape", [x, ctx.ints(ctx.out_shape)])


@aten("aten.permute.default")
def _permute(ctx: Ctx, x: Value, dims: Sequence[int]) -> Value:
    return ctx.op("Transpose", [x], {"perm": tuple(_axis(d, _rank(x)) for d in dims)})


@aten("aten.t.default")
def _t(ctx: Ctx, x: Value) -> Value:
    return x if _rank(x) < 2 else ctx.op("Transpose", [x], {"perm": (1, 0)})


@aten("aten.transpose.int")
def _transpose(ctx: Ctx, x: Value, a: int, b: int) -> Value:
    perm = list(range(_rank(x)))
    a, b = _axis(a, len(perm)), _axis(b, len(perm))
    perm[a], perm[b] = perm[b], perm[a]
    return ctx.op("Transpose", [x], {"perm": tuple(perm)})


@aten("aten.expand.default")
def _expand(ctx: Ctx, x: Value, size: Sequence[int], *, implicit: bool = False) -> Value:
    return ctx.op("Expand", [x, ctx.ints(ctx.out_shape)])


@aten("aten.unsqueeze.default")
def _unsqueeze(ctx: Ctx, x: Value, dim: int) -> Value:
    return ctx.op("Unsqueeze", [x, ctx.ints([_axis(dim, _rank(x) + 1)])])


@aten("aten.squeeze.dims", "aten.squeeze.dim", "aten.squeeze.default")
def _squeeze(ctx: Ctx, x: Value, dims: Any = None) -> Value:
    r = _rank(x)
    if dims is None:
        dims = [k for k, d in enumerate(x.shape) if d == 1]
    elif isinstance(dims, int):
        dims = [dims]
    axes = [_axis(d, r) for d in dims if x.shape[_axis(d, r)] == 1]  # torch ignores non-1 dims
    return x if not axes else ctx.op("Squeeze", [x, ctx.ints(axes)])


@aten("aten.cat.default")
def _cat(ctx: Ctx, xs: Sequence[Value], dim: int = 0) -> Value:
    dt = ctx.out_dtype
    parts = [ctx.cast(x, dt) for x in xs if not (x.shape and 0 in x.shape and _rank(x) == 1)]
    return ctx.op("Concat", parts, {"axis": _axis(dim, len(ctx.out_shape))})


@aten("aten.split_with_sizes.default", "aten.split.Tensor")
def _split(ctx: Ctx, x: Value, sizes: Any, dim: int = 0) -> list[Value]:
    axis = _axis(dim, _rank(x))
    if isinstance(sizes, int):
        n = x.shape[axis]
        sizes = [sizes] * (n // sizes) + ([n % sizes] if n % sizes else [])
    out = ctx.op("Split", [x, ctx.ints(sizes)], {"axis": axis}, n_out=len(sizes))
    return out if isinstance(out, list) else [out]


@aten("aten.slice.Tensor")
def _slice(ctx: Ctx, x: Value, dim: int = 0, start: int | None = None, end: int | None = None,
           step: int = 1) -> Value:
    start = 0 if start is None else start
    end = INT64_MAX if end is None else min(end, INT64_MAX)
    if start == 0 and end >= x.shape[_axis(dim, _rank(x))] and step == 1:
        return x
    return ctx.op("Slice", [x, ctx.ints([start]), ctx.ints([end]), ctx.ints([_axis(dim, _rank(x))]),
                            ctx.ints([step])])


@aten("aten.select.int")
def _select(ctx: Ctx, x: Value, dim: int, index: int) -> Value:
    return ctx.op("Gather", [x, ctx.const(np.array(index, np.int64))], {"axis": _axis(dim, _rank(x))})


@aten("aten.index.Tensor")
def _index(ctx: Ctx, x: Value, indices: Sequence[Value | None]) -> Value:
    """Advanced indexing: index tensors broadcast together; gathered with GatherND over the indexed dims."""
    given = [(k, i) for k, i in enumerate(indices) if i is not None]
    if any(i.dtype == "bool" for _, i in given):
        raise UnsupportedModelError(
            f"boolean-mask indexing at node '{ctx.node.name}' (scope '{ctx.scope}') has a data-dependent shape; "
            "use via='onnx'"
        )
    r = _rank(x)
    if len(given) == 1:
        k, idx = given[0]
        return ctx.op("Gather", [x, ctx.cast(idx, "i64")], {"axis": k})
    dims = [k for k, _ in given]
    bshape = tuple(np.broadcast_shapes(*[i.shape for _, i in given]))
    rest = [k for k in range(r) if k not in dims]
    if dims != list(range(len(dims))):
        x = ctx.op("Transpose", [x], {"perm": tuple(dims + rest)})
    cols = []
    for _, idx in given:
        idx = ctx.cast(idx, "i64")
        if idx.shape != bshape:
            idx = ctx.op("Expand", [idx, ctx.ints(bshape)])
        cols.append(ctx.op("Unsqueeze", [idx, ctx.ints([len(bshape)])]))
    y = ctx.op("GatherND", [x, ctx.op("Concat", cols, {"axis": -1})])
    adjacent = dims == list(range(dims[0], dims[0] + len(dims)))
    if adjacent and dims[0] > 0:  # torch keeps the broadcast dims where the indexed dims were
        nb, before = len(bshape), dims[0]
        perm = list(range(nb, nb + before)) + list(range(nb)) + list(range(nb + before, nb + len(rest)))
        y = ctx.op("Transpose", [y], {"perm": tuple(perm)})
    return y


@aten("aten.index_select.default")
def _index_select(ctx: Ctx, x: Value, dim: int, index: Value) -> Value:
    return ctx.op("Gather", [x, ctx.cast(index, "i64")], {"axis": _axis(dim, _rank(x))})


@aten("aten.gather.default")
def _gather(ctx: Ctx, x: Value, dim: int, index: Value, *, sparse_grad: bool = False) -> Value:
    return ctx.op("GatherElements", [x, ctx.cast(index, "i64")], {"axis": _axis(dim, _rank(x))})


@aten("aten.repeat.default")
def _repeat(ctx: Ctx, x: Value, repeats: Sequence[int]) -> Value:
    extra = len(repeats) - _rank(x)  # torch prepends dims of size 1 when given more repeats than dims
    if extra > 0:
        x = ctx.op("Reshape", [x, ctx.ints([1] * extra + list(x.shape))])
    return ctx.op("Tile", [x, ctx.ints(repeats)])


@aten("aten.flip.default")
def _flip(ctx: Ctx, x: Value, dims: Sequence[int]) -> Value:
    axes = [_axis(d, _rank(x)) for d in dims]
    if not axes:
        return x
    n = len(axes)
    return ctx.op("Slice", [x, ctx.ints([-1] * n), ctx.ints([-INT64_MAX - 1] * n), ctx.ints(axes), ctx.ints([-1] * n)])


@aten("aten.embedding.default")
def _embedding(ctx: Ctx, weight: Value, ids: Value, *args: Any) -> Value:
    return ctx.op("Gather", [weight, ids], {"axis": 0})


@aten("aten.constant_pad_nd.default")
def _pad(ctx: Ctx, x: Value, pad: Sequence[int], value: float = 0.0) -> Value:
    r = _rank(x)
    n = len(pad) // 2
    begins = [0] * r
    ends = [0] * r
    for i in range(n):  # torch lists (begin, end) pairs from the last dim backwards
        begins[r - 1 - i] = pad[2 * i]
        ends[r - 1 - i] = pad[2 * i + 1]
    return ctx.op("Pad", [x, ctx.ints(begins + ends), ctx.scalar(value, x.dtype)], {"mode": "constant"})


# ---- Python scalar arithmetic, runtime assertions, data-dependent shapes --------------------------------


@aten("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "eq", "ne", "lt", "le", "gt", "ge",
      "and_", "or_", "not_", "sym_not", "sym_float", "sym_int", "sym_max", "sym_min")
def _python_scalar(ctx: Ctx, *args: Any) -> Any:
    """operator.* / torch.sym_* on Python scalars (the shapes are static, so they are constants)."""
    import builtins
    import operator

    name = target_name(ctx.node.target)
    fn = {"sym_not": operator.not_, "sym_float": float, "sym_int": int, "sym_max": builtins.max,
          "sym_min": builtins.min}.get(name) or getattr(operator, name)
    return fn(*args)


@aten("aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default", "aten.sym_constrain_range.default",
      "aten._assert_async.msg")
def _assertion(ctx: Ctx, *args: Any, **kwargs: Any) -> None:
    return None


@aten("aten.nonzero.default", "aten.masked_select.default", "aten._local_scalar_dense.default",
      "aten.unique_consecutive.default", "aten._unique2.default")
def _data_dependent(ctx: Ctx, *args: Any, **kwargs: Any) -> Any:
    raise UnsupportedModelError(
        f"{target_name(ctx.node.target)} at node '{ctx.node.name}' (scope '{ctx.scope or '<root>'}') has a "
        "data-dependent result shape (or value), which a static-shape IR cannot hold; use via='onnx'"
    )


import nasc.frontends.torch_ops_nn  # noqa: E402,F401  (registers the normalization, pooling and resize converters)
