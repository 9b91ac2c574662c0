"""Fast math for nasc's CPU build: a legalization choice, made before fusion.

LegalizeOps overrides (:func:`fast_math_legalize_map`) that compute float32 exp/erf/tanh, and softmax, GELU,
sigmoid and SiLU built on them, with TVM's polynomial approximations, which vectorize, instead of libm calls,
which LLVM emits one lane at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax, te, tirx, topi

__all__ = ["fast_math_legalize_map"]


_Legalize = Callable[[relax.BlockBuilder, relax.Call], relax.Expr]


def _fast_sigmoid(x: te.Tensor) -> te.Tensor:
    e = topi.fast_exp(topi.negative(x))
    return te.compute(x.shape, lambda *i: tirx.const(1.0, "float32") / (tirx.const(1.0, "float32") + e(*i)),
                      name="T_sigmoid")


def _fast_gelu(x: te.Tensor) -> te.Tensor:
    erf = topi.fast_erf(topi.multiply(x, tirx.const(0.5**0.5, "float32")))
    half = tirx.const(0.5, "float32")
    return te.compute(x.shape, lambda *i: x(*i) * (half + erf(*i) * half), name="T_gelu")


def _fast_gelu_tanh(x: te.Tensor) -> te.Tensor:
    c, k = tirx.const((2.0 / 3.141592653589793) ** 0.5, "float32"), tirx.const(0.044715, "float32")
    inner = te.compute(x.shape, lambda *i: c * x(*i) * (tirx.const(1.0, "float32") + k * x(*i) * x(*i)),
                       name="T_gelu_inner")
    t = topi.fast_tanh(inner)
    half = tirx.const(0.5, "float32")
    return te.compute(x.shape, lambda *i: half * x(*i) * (tirx.const(1.0, "float32") + t(*i)), name="T_gelu")


def _fast(op_name: str, fn: Callable[..., te.Tensor], hint: str, with_axis: bool = False) -> _Legalize:
    """Legalize float32 calls of ``op_name`` with ``fn``; other dtypes keep TVM's own legalization."""
    default = tvm.ir.Op.get(op_name).get_attr("FLegalize")

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if getattr(call.ty, "dtype", None) != "float32":
            return default(bb, call)
        if with_axis:
            return bb.call_te(fn, call.args[0], int(call.attrs.axis), primfunc_name_hint=hint)
        return bb.call_te(fn, call.args[0], primfunc_name_hint=hint)

    return legalize


def fast_math_legalize_map() -> dict[str, _Legalize]:
    """``LegalizeOps(customize_legalize_map=...)`` overrides that compute float32 ``exp``, ``erf``, ``tanh``
    and what is built on them (softmax, GELU in both forms, sigmoid, SiLU) with TVM's polynomial
    approximations (``topi.fast_exp``: range reduction to 2^n * e^f and a degree-7 polynomial, inputs
    clamped to +-88.38; ``topi.fast_erf`` and ``topi.fast_tanh``: Eigen's rational approximations, inputs
    clamped to +-4 and +-9). These are plain arithmetic, so they vectorize; the libm calls they replace are
    emitted one lane at a time. Measured accuracy (float32, against float64): exp within 3.1e-7 relative on
    [-87.3, 88.37], 0 below -87.68 (true value < 1.2e-38), inf from 88.38 (float32 overflows at 88.72);
    erf within 3.3e-7 and tanh within 2.7e-7 absolute; sigmoid within 9e-8.
    """
    return {
        "relax.exp": _fast("relax.exp", topi.fast_exp, "fast_exp"),
        "relax.erf": _fast("relax.erf", topi.fast_erf, "fast_erf"),
        "relax.tanh": _fast("relax.tanh", topi.fast_tanh, "fast_tanh"),
        "relax.sigmoid": _fast("relax.sigmoid", _fast_sigmoid, "fast_sigmoid"),
        "relax.nn.silu": _fast("relax.nn.silu", lambda x: topi.multiply(x, _fast_sigmoid(x)), "fast_silu"),
        "relax.nn.gelu": _fast("relax.nn.gelu", _fast_gelu, "fast_gelu"),
        "relax.nn.gelu_tanh": _fast("relax.nn.gelu_tanh", _fast_gelu_tanh, "fast_gelu_tanh"),
        "relax.nn.softmax": _fast("relax.nn.softmax", topi.nn.fast_softmax, "fast_softmax", with_axis=True),
    }
