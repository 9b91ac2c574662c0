"""fuse: fold BatchNorm into neighbouring linear ops and zero Pads into convolutions, MatMul+Add -> Gemm, name
activation idioms.

The transformer rewrites (LayerNorm, GELU, attention) live in ``fuse_transformer.py``;
this file holds the pass itself and the rewrites every CNN needs. Exact to fp32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nasc.ir.core import Graph, Value
from nasc.ir.ops.registry import emit
from nasc.passes.manager import Pass, PassContext, register_pass
from nasc.passes.pattern import Match, Rule, alt, any_, const, op, opt_const, rewrite_greedy, scalar


@register_pass
@dataclass(frozen=True)
class Fuse(Pass):
    """Fold BatchNorm and zero Pads, form Gemm, and recognise ReLU6/SiLU/HardSwish, LayerNorm, GELU and attention.

    Exact to fp32 rounding. Each rewrite is counted by name in the report.
    """

    name = "fuse"
    batchnorm: bool = True
    activations: bool = True
    transformer: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        from nasc.passes.fuse_transformer import TRANSFORMER_RULES

        rules: list[Rule] = [TRANSPOSE_TRANSPOSE, *PAD_RULES]
        if self.batchnorm:
            rules += BATCHNORM_RULES
        rules.append(MATMUL_ADD)
        if self.activations:
            rules += ACTIVATION_RULES
        if self.transformer:
            rules += TRANSFORMER_RULES
        return rewrite_greedy(graph, rules, ctx)


def new_const(graph: Graph, like: Value, array: np.ndarray, suffix: str) -> Value:
    """A constant in ``like``'s element type, named after it (so weights keep their state-dict names)."""
    return graph.add_constant(array.astype(like.data.dtype), like.name or suffix)


# ---- BatchNorm folding ------------------------------------------------------------------------


def _bn_affine(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm as y = x * f + t, computed in float64."""
    bn = m.node("bn")
    eps = float(bn.attr("epsilon", 1e-5))
    f = m.array("scale").astype(np.float64) / np.sqrt(m.array("var").astype(np.float64) + eps)
    t = m.array("bias").astype(np.float64) - m.array("mean").astype(np.float64) * f
    return f, t


def _single_output(m: Match) -> bool:
    return len(m.node("bn").outputs) == 1


def _bn_operands() -> list[Any]:
    return [const("scale"), const("bias"), const("mean"), const("var")]


def fold_bn_into_conv(graph: Graph, m: Match, ctx: Any) -> Value | None:
    conv, bn = m.node("conv"), m.node("bn")
    if not _single_output(m):
        return None
    w = m.value("w")
    f, t = _bn_affine(m)
    wd = w.data.astype(np.float64)
    if conv.op == "ConvTranspose":
        if int(conv.attr("group", 1)) != 1:
            return None
        w_new = wd * f.reshape((1, -1) + (1,) * (wd.ndim - 2))
    else:
        w_new = wd * f.reshape((-1,) + (1,) * (wd.ndim - 1))
    b_old = m.array("b").astype(np.float64) if "b" in m else np.zeros_like(f)
    b_new = b_old * f + t
    ins = [m.value("x"), new_const(graph, w, w_new, "w"), new_const(graph, m.value("bias"), b_new, "b")]
    return emit(graph, bn, conv.op, ins, dict(conv.attrs), name=conv.name)


def fold_bn_into_gemm(graph: Graph, m: Match, ctx: Any) -> Value | None:
    gemm, bn = m.node("gemm"), m.node("bn")
    if not _single_output(m) or len(bn.inputs[0].shape) != 2:  # type: ignore[union-attr]
        return None
    f, t = _bn_affine(m)
    b = m.value("w")
    bd = b.data.astype(np.float64)
    if gemm.op == "Gemm" and int(gemm.attr("transB", 0)):
        b_new = bd * f[:, None]
    else:
        b_new = bd * f[None, :]
    if gemm.op == "MatMul":
        mm = emit(graph, bn, "MatMul", [m.value("a"), new_const(graph, b, b_new, "w")], name=gemm.name)
        return emit(graph, bn, "Add", [mm, new_const(graph, m.value("bias"), t, "b")], name=bn.name)
    beta = float(gemm.attr("beta", 1.0))
    c_old = m.array("c").astype(np.float64) * beta if "c" in m else np.zeros_like(f)
    c_new = np.broadcast_to(c_old, np.broadcast_shapes(c_old.shape, f.shape)) * f + t
    attrs = {**gemm.attrs, "beta": 1.0}
    ins = [m.value("a"), new_const(graph, b, b_new, "w"), new_const(graph, m.value("bias"), c_new, "c")]
    return emit(graph, bn, "Gemm", ins, attrs, name=gemm.name)


def fold_bn_before_conv(graph: Graph, m: Match, ctx: Any) -> Value | None:
    """conv(bn(x)) = conv'(x) when the conv has no padding (padding would see bn's shift) and one group."""
    conv = m.node("conv")
    bn_node = m.node("bn")
    if len(bn_node.outputs) != 1 or int(conv.attr("group", 1)) != 1 or any(conv.attr("pads", ())) \
            or conv.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    f, t = _bn_affine(m)
    w = m.value("w")
    wd = w.data.astype(np.float64)
    w_new = wd * f.reshape((1, -1) + (1,) * (wd.ndim - 2))
    b_old = m.array("b").astype(np.float64) if "b" in m else np.zeros(wd.shape[0])
    b_new = b_old + (wd * t.reshape((1, -1) + (1,) * (wd.ndim - 2))).sum(axis=tuple(range(1, wd.ndim)))
    ins = [m.value("x"), new_const(graph, w, w_new, "w"), new_const(graph, m.value("bias"), b_new, "b")]
    return emit(graph, conv, "Conv", ins, dict(conv.attrs), name=conv.name)


def _conv_like(name: str) -> Any:
    return op(name, any_("x"), const("w"), opt_const("b"), name="conv")


BATCHNORM_RULES = [
    Rule("fold-batchnorm", op("BatchNormalization", alt(_conv_like("Conv"), _conv_like("ConvTranspose")),
                              *_bn_operands(), name="bn"), fold_bn_into_conv),
    Rule("fold-batchnorm", op("BatchNormalization",
                              alt(op("Gemm", any_("a"), const("w"), opt_const("c"), name="gemm"),
                                  op("MatMul", any_("a"), const("w", lambda a: a.ndim == 2), name="gemm")),
                              *_bn_operands(), name="bn"), fold_bn_into_gemm),
    Rule("fold-batchnorm-before-conv",
         op("Conv", op("BatchNormalization", any_("x"), *_bn_operands(), name="bn"), const("w"), opt_const("b"),
            name="conv"), fold_bn_before_conv),
]


# ---- Pad folding ----------------------------------------------------------------------------------


def fold_pad(graph: Graph, m: Match, ctx: Any) -> Value | None:
    """Conv(Pad(x)) = Conv(x) with the pad added to its pads, when the Pad is a constant zero pad of the spatial
    axes only (what exporters emit for 'same' padding); likewise AveragePool when it counts the padding
    (count_include_pad=1: the zeros are averaged either way)."""
    pad, node = m.node("pad"), m.node("conv")
    if str(pad.attr("mode", "constant")) != "constant" or ("value" in m and np.any(m.array("value") != 0)):
        return None
    if str(node.attr("auto_pad", "NOTSET")) != "NOTSET":
        return None
    if node.op == "AveragePool" and int(node.attr("count_include_pad", 0)) != 1:
        return None
    x = m.value("x")
    rank = len(x.shape)
    pads = [int(v) for v in m.array("pads").reshape(-1)]
    if len(pads) != 2 * rank or any(v < 0 for v in pads) or any(pads[i] or pads[rank + i] for i in (0, 1)):
        return None
    spatial = rank - 2
    old = [int(v) for v in node.attr("pads", ())] or [0] * (2 * spatial)
    new = [old[i] + pads[2 + i] for i in range(spatial)] + [old[spatial + i] + pads[rank + 2 + i]
                                                             for i in range(spatial)]
    ins = [x, *node.inputs[1:]]
    return emit(graph, node, node.op, ins, {**node.attrs, "pads": new}, name=node.name)


_ZERO_PAD = op("Pad", any_("x"), const("pads"), opt_const("value"), name="pad")
PAD_RULES = [
    Rule("fold-pad", op("Conv", _ZERO_PAD, const("w"), opt_const("b"), name="conv"), fold_pad),
    Rule("fold-pad", op("AveragePool", _ZERO_PAD, name="conv"), fold_pad),
]


# ---- MatMul + Add -> Gemm -----------------------------------------------------------------------


def matmul_add_to_gemm(graph: Graph, m: Match, ctx: Any) -> Value | None:
    a, w, c = m.value("a"), m.value("w"), m.value("c")
    if len(a.shape) != 2 or len(w.shape) != 2 or len(c.shape) > 2:
        return None
    out = (a.shape[0], w.shape[1])
    if np.broadcast_shapes(c.shape, out) != out:
        return None
    return emit(graph, m.node("add"), "Gemm", [a, w, c], name=m.node("mm").name)


MATMUL_ADD = Rule("matmul-add-gemm", op("Add", op("MatMul", any_("a"), const("w"), name="mm"), const("c"),
                                        name="add", commutative=True), matmul_add_to_gemm)


# ---- activations --------------------------------------------------------------------------------


def to_relu6(graph: Graph, m: Match, ctx: Any) -> Value | None:
    return emit(graph, m.node("clip"), "Relu6", [m.value("x")], domain="nasc", name=m.node("clip").name)


def to_silu(graph: Graph, m: Match, ctx: Any) -> Value | None:
    return emit(graph, m.node("mul"), "SiLU", [m.value("x")], domain="nasc", name=m.node("mul").name)


def to_hardswish(graph: Graph, m: Match, ctx: Any) -> Value | None:
    hs = m.node("hs")
    if not (np.isclose(hs.attr("alpha", 0.2), 1 / 6) and np.isclose(hs.attr("beta", 0.5), 0.5)):
        return None
    return emit(graph, m.node("mul"), "HardSwish", [m.value("x")], name=m.node("mul").name)


ACTIVATION_RULES = [
    Rule("relu6", op("Clip", any_("x"), scalar(value=0.0), scalar(value=6.0), name="clip"), to_relu6),
    Rule("silu", op("Mul", any_("x"), op("Sigmoid", any_("x")), name="mul", commutative=True), to_silu),
    Rule("hardswish", op("Mul", any_("x"), op("HardSigmoid", any_("x"), name="hs"), name="mul", commutative=True),
         to_hardswish),
]


# ---- layout -------------------------------------------------------------------------------------


def merge_transposes(graph: Graph, m: Match, ctx: Any) -> Value | None:
    inner, outer = m.node("inner").attr("perm"), m.node("outer").attr("perm")
    if inner is None or outer is None:
        return None
    perm = tuple(inner[p] for p in outer)
    x = m.value("x")
    if list(perm) == sorted(perm):
        return x
    return emit(graph, m.node("outer"), "Transpose", [x], {"perm": perm}, name=m.node("outer").name)


TRANSPOSE_TRANSPOSE = Rule("transpose-transpose",
                           op("Transpose", op("Transpose", any_("x"), name="inner"), name="outer"), merge_transposes)
