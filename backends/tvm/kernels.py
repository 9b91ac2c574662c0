"""The kernels a CPU build runs, each described by features the cost model (hw_search/predictor.py) reads.

A kernel is one fused PrimFunc as TVM's FuseOps/FuseTIR made it, before scheduling: its blocks, their loop
extents, the buffers it reads and writes, and the template that schedules it (schedules.py). The features are
plain numbers and names, so a dataset of them is JSON and can be shared between machines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import tvm
from tvm import relax, s_tir, tirx

#: Version of the feature set below (2 added what the schedule made: parallel tasks, their balance, vector width;
#: 3 the patches that an integer convolution copies inside its own kernel, ``patch_blocks``); the cost model
#: refuses data and models of another version.
FEATURES_VERSION = 3

#: Op words taken from a fused kernel's name (``fused_conv2d_add_clip1`` -> conv2d, add, clip), counted.
OP_WORDS = ("conv2d", "matmul", "add", "subtract", "multiply", "divide", "relu", "clip", "sigmoid", "tanh", "exp",
            "erf", "mean", "sum", "max", "min", "softmax", "transpose", "reshape", "concat", "split",
            "strided_slice", "take", "pad", "pool", "power", "sqrt", "rsqrt", "cast", "where", "maximum",
            "minimum", "round", "floor", "right_shift", "left_shift", "astype", "image", "resize", "layer_norm",
            "variance", "broadcast_to", "squeeze", "expand_dims", "permute_dims", "gelu",
            # nasc's integer kernels (backends/tvm/qops.py, qint.py)
            "qconv2d", "qmatmul", "qsum", "requantize", "quantize", "dequantize", "im2col",
            # the transforms of a Winograd convolution (winograd.py)
            "winograd")
#: The templates of schedules.py (and "prescheduled" for a tuned record, "none" for no template).
TEMPLATES = ("conv2d", "conv2d_nhwc", "matmul", "row_reduction", "injective", "generic", "qmatmul_avx2",
             "qmatmul_vnni", "prescheduled", "none")

PREPACKED = "_prepacked"


def _nbytes(buf: Any) -> int:
    return math.prod(int(d) for d in buf.shape) * np.dtype(buf.dtype).itemsize


def _template_key(template: str) -> str:
    return f"template_{template if template in TEMPLATES else 'none'}"


def _words(name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    body = name[len("fused_"):] if name.startswith("fused_") else name
    for token in re.split(r"_+", re.sub(r"\d+(?=_|$)", "", body)):
        counts[token] = counts.get(token, 0) + 1
    out: dict[str, int] = {}
    for word in OP_WORDS:  # two-word ops (strided_slice, right_shift, layer_norm) as written in the name
        n = body.count(word) if "_" in word else counts.get(word, 0)
        if n:
            out[f"op_{word}"] = n
    return out


def _block_stats(sch: s_tir.Schedule) -> dict[str, float]:
    blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))]
    work_total = 0.0
    main: tuple[float, Any, list[int], list[int]] | None = None
    n_red = 0
    pad = patch = 0
    for blk in blocks:
        spatial = [int(iv.dom.extent) for iv in blk.iter_vars if iv.iter_type != tirx.IterVar.CommReduce]
        reduce = [int(iv.dom.extent) for iv in blk.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
        work = float(math.prod(spatial) * math.prod(reduce))
        work_total += work
        n_red += bool(reduce)
        pad += "pad" in blk.name_hint
        patch += blk.name_hint.startswith("im2col")
        if main is None or work > main[0]:
            main = (work, blk, spatial, reduce)
    stats: dict[str, float] = {"blocks": len(blocks), "reduce_blocks": n_red, "pad_blocks": pad,
                               "patch_blocks": patch, "work_total": work_total}
    if main is not None:
        work, blk, spatial, reduce = main
        name = blk.name_hint
        stats.update(work_main=work, spatial_main=float(math.prod(spatial)), reduce_main=float(math.prod(reduce)),
                     inner_spatial=spatial[-1] if spatial else 1, inner_reduce=reduce[-1] if reduce else 1,
                     # what is left over past whole vectors (8 and 16 lanes): odd (pruned) widths run slower
                     inner_spatial_mod8=(spatial[-1] if spatial else 1) % 8,
                     inner_spatial_mod16=(spatial[-1] if spatial else 1) % 16,
                     inner_reduce_mod16=(reduce[-1] if reduce else 1) % 16,
                     reduce_axes=len(reduce), nhwc=float("nhwc" in name),
                     conv_window=float(math.prod(reduce[:-1])) if "conv" in name and len(reduce) >= 2 else 0.0)
    return stats


def kernel_features(name: str, func: tirx.PrimFunc, template: str, weights: set[int] | None = None
                    ) -> dict[str, float]:
    """The features of one fused kernel (unscheduled ``func``) that ``template`` schedules; ``weights``: the
    parameters (by position) that are constants (default: the PrimFunc's ``layout_free_buffers``). A kernel the
    analysis cannot read (a symbolic extent, say) gets its name's op words and ``unanalysed``: describing a
    kernel never fails a build."""
    try:
        return _features(name, func, template, weights)
    except Exception:
        return {**_words(name), _template_key(template): 1.0, "unanalysed": 1.0}


def _features(name: str, func: tirx.PrimFunc, template: str, weights: set[int] | None) -> dict[str, float]:
    params = list(func.params)
    if weights is None:
        weights = {int(i) for i in (func.attrs.get("layout_free_buffers", []) if func.attrs is not None else [])}
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    n_out = max(1, _outputs(sch, func))
    ins, outs = params[:-n_out], params[-n_out:]
    dtypes = {str(p.dtype) for p in params}
    feats: dict[str, float] = {
        "bytes_in": float(sum(_nbytes(p) for i, p in enumerate(ins) if i not in weights)),
        "bytes_weights": float(sum(_nbytes(p) for i, p in enumerate(ins) if i in weights)),
        "bytes_out": float(sum(_nbytes(p) for p in outs)),
        "inputs": len(ins), "integer": float(bool(dtypes & {"int8", "uint8"})),
        "int32": float("int32" in dtypes), "float": float(any(d.startswith("float") for d in dtypes)),
    }
    feats.update(_block_stats(sch))
    feats.update(_words(name))
    feats[_template_key(template)] = 1.0  # (the C of mcu kernels: "none")
    return feats


def _outputs(sch: s_tir.Schedule, func: tirx.PrimFunc) -> int:
    """How many of ``func``'s trailing parameters are outputs: the buffers its root's output blocks write."""
    written = {str(w.source.name) for b in sch.get_output_blocks(sch.get_sblock("root")) for w in sch.get(b).writes}
    n = 0
    for p in reversed(list(func.params)):
        if p.name not in written:
            break
        n += 1
    return n


def is_view(func: tirx.PrimFunc) -> bool:
    """Whether a kernel only moves data in memory order (reshapes, and transposes that move unit axes only): the
    build turns it into a view of its input (TVM's RewriteDataflowReshape), which copies nothing and runs no code."""
    try:
        return _moves_in_order(func)
    except Exception:  # a kernel this cannot read is kept (and predicted like the others)
        return False


def _moves_in_order(func: tirx.PrimFunc) -> bool:
    if relax.analysis.has_reshape_pattern(func):
        return True
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    for b in sch.get_child_blocks(sch.get_sblock("root")):
        blk = sch.get(b)
        if blk.name_hint.startswith("T_reshape"):
            continue
        if not blk.name_hint.startswith("T_transpose") or len(blk.reads) != 1:
            return False
        pos = {iv.var: (i, int(iv.dom.extent)) for i, iv in enumerate(blk.iter_vars)}
        order = []
        for r in blk.reads[0].region:
            if isinstance(r.min, tirx.Var) and r.min in pos:
                i, extent = pos[r.min]
                if extent > 1:
                    order.append(i)
            elif not isinstance(r.min, tirx.IntImm):
                return False
        if order != sorted(order):
            return False
    return True


def calls_per_kernel(mod: tvm.IRModule) -> dict[str, int]:
    """How many times ``main`` calls each PrimFunc (a fused function is shared by layers of one shape)."""
    counts: dict[str, int] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr: relax.Expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            gvar = expr.args[0]
            counts[gvar.name_hint] = counts.get(gvar.name_hint, 0) + 1

    for _gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def schedule_features(func: tirx.PrimFunc, cores: int) -> dict[str, float]:
    """What the schedule made of a kernel: its parallel tasks (the widest parallel loop; 0: serial), how evenly
    they split over ``cores`` threads (``ceil(tasks / cores) * cores / tasks``: 1.0 even, 1.17 for 7 tasks on 2
    cores) and the widest vectorized loop. A failure to read them leaves them out."""
    try:
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        par, vec = [0], [0]
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            for loop in sch.get_loops(block):
                node = sch.get(loop)
                ext = node.extent.value if isinstance(node.extent, tirx.IntImm) else 0
                if node.kind == tirx.ForKind.PARALLEL:
                    par.append(ext)
                elif node.kind == tirx.ForKind.VECTORIZED:
                    vec.append(ext)
    except Exception:
        return {}
    tasks = max(par)
    balance = math.ceil(tasks / cores) * cores / tasks if tasks else float(cores)
    return {"parallel_tasks": float(tasks), "parallel_balance": balance, "vector_width": float(max(vec))}


def kernel_table(fused: tvm.IRModule, scheduled: tvm.IRModule, templates: Mapping[str, str], cores: int = 1
                 ) -> list[dict[str, Any]]:
    """Each kernel that ``scheduled``'s ``main`` calls: ``{"kernel", "calls", "features"}``, the features taken
    from the same kernel in ``fused`` (before scheduling and weight packing), and what its schedule in
    ``scheduled`` made of it for ``cores`` threads (:func:`schedule_features`)."""
    funcs = {gvar.name_hint: func for gvar, func in fused.functions_items() if isinstance(func, tirx.PrimFunc)}
    done = {gvar.name_hint: func for gvar, func in scheduled.functions_items() if isinstance(func, tirx.PrimFunc)}
    table = []
    for name, n in calls_per_kernel(scheduled).items():
        # a kernel whose weights are packed at build time is renamed (SplitLayoutRewritePreproc)
        base = name.removesuffix(PREPACKED)
        # a kernel that only moves data in memory order becomes a view of its input when the build lowers it
        # (TVM's RewriteDataflowReshape): it copies nothing and runs no code
        if base in funcs and not is_view(funcs[base]):
            feats = kernel_features(base, funcs[base], templates.get(name, "none"))
            if name in done:
                feats.update(schedule_features(done[name], cores))
            table.append({"kernel": name, "calls": n, "features": feats})
    return table
