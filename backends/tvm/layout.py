"""The CPU build's layout decision: float 2-D convolutions in NHWC with HWIO weights.

ONNX models are NCHW. On a CPU, vectorising an NCHW convolution along the output width leaves most vector
lanes idle on the 14x14 and 7x7 maps of a CNN's late stages; with channels innermost, every convolution
(pointwise, depthwise, 3x3) vectorises along the output channels and reads its weights, re-laid out once at
build time (constants), as contiguous vectors. Relax's ConvertLayout moves the convolutions and the ops
between them (elementwise, pools, concat, reductions) to NHWC and transposes only where the graph needs the
plain layout again; it has no layout rule for ``clip`` (ReLU6), so the transpose pairs it leaves around
each clip are cancelled here (an elementwise op commutes with any transpose).
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax
from tvm.relax import dpl

DESIRED = {"relax.nn.conv2d": ["NHWC", "HWIO"]}


def _is_float_conv2d(call: relax.Call) -> bool:
    sinfo = call.args[0].ty
    return getattr(sinfo, "dtype", "") == "float32" and str(call.attrs.data_layout) == "NCHW"


#: ops whose layout rule would follow their input into NHWC but whose TOPI lowering is NCHW-only: kept NCHW
KEEP_NCHW = {"relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}


def _layout_cb(call: relax.Call) -> dict[str, list[str]]:
    name = getattr(call.op, "name", "")
    if name == "relax.nn.conv2d" and _is_float_conv2d(call):
        return DESIRED
    if name in KEEP_NCHW:
        return {name: KEEP_NCHW[name]}
    return {}


def _cancel_transposes_around_clip(func: relax.Function) -> relax.Function:
    x = dpl.wildcard()
    inner = dpl.is_op("relax.permute_dims")(x)
    mid = dpl.is_op("relax.clip")(inner, dpl.wildcard(), dpl.wildcard())
    outer = dpl.is_op("relax.permute_dims")(mid)

    def rewrite(expr: relax.Expr, m: dict[Any, relax.Expr]) -> relax.Expr:
        a = [int(v) for v in m[inner].attrs.axes]
        b = [int(v) for v in m[outer].attrs.axes]
        if len(a) != len(b) or [a[i] for i in b] != list(range(len(a))):
            return expr
        clip = m[mid]
        return relax.op.clip(m[x], clip.args[1], clip.args[2])

    return dpl.rewrite_call(outer, rewrite, func)


def channels_last(mod: tvm.IRModule) -> tvm.IRModule:
    """Float conv2d (and what ConvertLayout can carry along) in NHWC with HWIO weights; transposes of
    constants fold at build time. ``mod`` itself when it has no float conv2d, or when an op that ConvertLayout
    moved to NHWC has no NHWC lowering (the build must not fail for a layout choice)."""
    if not _has_float_conv2d(mod):
        return mod
    out = relax.transform.ConvertLayout(DESIRED, layout_cb=_layout_cb)(mod)
    updates = {gv: _cancel_transposes_around_clip(f) for gv, f in out.functions_items()
               if isinstance(f, relax.Function)}
    for gv, f in updates.items():
        out[gv] = f
    out = relax.transform.DeadCodeElimination()(out)
    return out if not _unlowered_ops(relax.transform.LegalizeOps()(out)) else mod


def _calls(mod: tvm.IRModule) -> list[relax.Call]:
    found: list[relax.Call] = []
    for _, f in mod.functions_items():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, lambda e: found.append(e) if isinstance(e, relax.Call) else None)
    return found


def _has_float_conv2d(mod: tvm.IRModule) -> bool:
    return any(getattr(c.op, "name", "") == "relax.nn.conv2d" and _is_float_conv2d(c) for c in _calls(mod))


def _unlowered_ops(mod: tvm.IRModule) -> set[str]:
    """Relax operators LegalizeOps left as they are (other than the VM's own calls)."""
    names = {getattr(c.op, "name", "") for c in _calls(mod) if isinstance(c.op, tvm.ir.Op)}
    return {n for n in names if n.startswith("relax.") and not n.startswith(("relax.call_", "relax.vm.",
                                                                              "relax.builtin", "relax.memory"))}
