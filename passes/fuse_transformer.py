"""fuse, transformer part: decomposed LayerNorm, erf- and tanh-form GELU, scaled dot-product attention.

Exporters spell these as chains of elementwise ops; the rewrites here turn each
chain back into one op (ONNX LayerNormalization and Gelu, and nasc.Attention,
which export writes as ONNX Attention where the opset has it) so that backends can fuse them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nasc.ir.core import Graph, Value
from nasc.ir.ops.registry import emit
from nasc.passes.pattern import Match, Pattern, Rule, alt, any_, const, op, scalar

# ---- LayerNorm -----------------------------------------------------------------------------------


def _mean(x: Pattern, name: str) -> Pattern:
    return op("ReduceMean", x, const(f"{name}_axes"), name=name,
              attrs=lambda n: int(n.attr("keepdims", 1)) == 1)


def _layernorm(affine: str) -> Pattern:
    x = any_("x")
    d = op("Sub", x, _mean(x, "mean"), name="d")
    var = _mean(op("Pow", d, scalar(value=2.0)), "var")
    std = op("Sqrt", op("Add", var, scalar("eps"), commutative=True))
    y = op("Div", d, std, name="y")
    if affine == "none":
        return y
    scaled = op("Mul", y, const("gamma"), commutative=True, name="scaled")
    if affine == "scale":
        return scaled
    return op("Add", scaled, const("beta"), commutative=True, name="shifted")


def to_layernorm(graph: Graph, m: Match, ctx: Any) -> Value | None:
    x = m.value("x")
    rank = len(x.shape)
    axes = sorted(int(a) % rank for a in m.array("mean_axes").reshape(-1))
    if axes != sorted(int(a) % rank for a in m.array("var_axes").reshape(-1)) or axes != list(range(axes[0], rank)):
        return None  # must normalise the trailing axes, both times over the same ones
    norm_shape = x.shape[axes[0]:]
    dt = m.array("eps").dtype if m.array("eps").dtype.kind == "f" else np.float32
    gamma = m.array("gamma") if "gamma" in m else np.ones(norm_shape, dt)
    beta = m.array("beta") if "beta" in m else np.zeros(norm_shape, dt)
    try:  # the affine parameters must broadcast over the normalised axes only
        gamma = np.broadcast_to(gamma, norm_shape)
        beta = np.broadcast_to(beta, norm_shape)
    except ValueError:
        return None
    if gamma.ndim > len(norm_shape) or beta.ndim > len(norm_shape):
        return None
    root = m.node("shifted") if "shifted" in m else m.node("scaled") if "scaled" in m else m.node("y")
    g = graph.add_constant(np.ascontiguousarray(gamma).astype(x.data.dtype if x.is_const else gamma.dtype),
                           m.value("gamma").name if "gamma" in m else f"{root.name}/gamma")
    b = graph.add_constant(np.ascontiguousarray(beta).astype(g.data.dtype),
                           m.value("beta").name if "beta" in m else f"{root.name}/beta")
    eps = float(m.array("eps").reshape(-1)[0])
    return emit(graph, root, "LayerNormalization", [x, g, b], {"axis": axes[0], "epsilon": eps}, name=root.name)


# ---- GELU ----------------------------------------------------------------------------------------


def _gelu_roots(core: Pattern) -> list[Pattern]:
    """0.5 * x * core, in the three groupings exporters use (Mul is matched both ways round)."""
    x = any_("x")
    half = scalar(value=0.5)
    return [
        op("Mul", op("Mul", x, core, commutative=True), half, commutative=True, name="root"),
        op("Mul", op("Mul", x, half, commutative=True), core, commutative=True, name="root"),
        op("Mul", x, op("Mul", core, half, commutative=True), commutative=True, name="root"),
    ]


def _erf_core() -> Pattern:
    x = any_("x")
    scaled = alt(op("Div", x, scalar(value=math.sqrt(2.0), rtol=1e-4)),
                 op("Mul", x, scalar(value=1 / math.sqrt(2.0), rtol=1e-4), commutative=True))
    return op("Add", op("Erf", scaled), scalar(value=1.0), commutative=True)


def _tanh_core() -> Pattern:
    x = any_("x")
    cube = alt(op("Pow", x, scalar(value=3.0)), op("Mul", x, op("Mul", x, x), commutative=True),
               op("Mul", op("Mul", x, x), x, commutative=True))
    inner = op("Add", x, op("Mul", cube, scalar(value=0.044715, rtol=1e-3), commutative=True), commutative=True)
    t = op("Tanh", op("Mul", inner, scalar(value=math.sqrt(2 / math.pi), rtol=1e-4), commutative=True))
    return op("Add", t, scalar(value=1.0), commutative=True)


def _to_gelu(approximate: str) -> Any:
    def rewrite(graph: Graph, m: Match, ctx: Any) -> Value | None:
        root = m.node("root")
        return emit(graph, root, "Gelu", [m.value("x")], {"approximate": approximate} if approximate != "none" else {},
                    name=root.name)

    return rewrite


# ---- attention -----------------------------------------------------------------------------------


def _attention_pattern() -> Pattern:
    qk = op("MatMul", any_("q"), any_("kt"), name="qk")
    scaled = alt(op("Div", qk, scalar("div")), op("Mul", qk, scalar("mul"), commutative=True), qk)
    scores = alt(op("Add", scaled, any_("mask"), commutative=True), scaled)
    probs = op("Softmax", scores, name="softmax")
    return op("MatMul", probs, any_("v"), name="root")


def to_attention(graph: Graph, m: Match, ctx: Any) -> Value | None:
    q, kt, v = m.value("q"), m.value("kt"), m.value("v")
    if any(len(t.shape) != 4 for t in (q, kt, v)) or q.dtype not in ("f32", "f16", "bf16"):
        return None
    if int(m.node("softmax").attr("axis", -1)) % 4 != 3:
        return None
    b, h, sq, d = q.shape
    if kt.shape[:2] != (b, h) or kt.shape[2] != d or v.shape[:3] != (b, h, kt.shape[3]):
        return None
    if "mask" in m:
        mask = m.value("mask")
        if mask.dtype != q.dtype or len(mask.shape) > 4:
            return None
        try:
            if np.broadcast_shapes(mask.shape, (b, h, sq, kt.shape[3])) != (b, h, sq, kt.shape[3]):
                return None
        except ValueError:
            return None
    scale = 1.0
    if "div" in m:
        scale = 1.0 / float(m.array("div").reshape(-1)[0])
    elif "mul" in m:
        scale = float(m.array("mul").reshape(-1)[0])
    root = m.node("root")
    k = emit(graph, root, "Transpose", [kt], {"perm": (0, 1, 3, 2)})
    inputs = [q, k, v] + ([m.value("mask")] if "mask" in m else [])
    graph.opsets.setdefault("nasc", 1)
    # nasc.Attention in the IR; export writes ONNX Attention where the opset has it (23+), else its decomposition
    return emit(graph, root, "Attention", inputs, {"scale": scale}, domain="nasc", name=root.name)


TRANSFORMER_RULES = [
    *(Rule("layernorm", _layernorm(kind), to_layernorm) for kind in ("affine", "scale", "none")),
    *(Rule("gelu", p, _to_gelu("none")) for p in _gelu_roots(_erf_core())),
    *(Rule("gelu-tanh", p, _to_gelu("tanh")) for p in _gelu_roots(_tanh_core())),
    Rule("attention", _attention_pattern(), to_attention),
]
