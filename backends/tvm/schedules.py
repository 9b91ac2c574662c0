"""Default (untuned) CPU schedules for TVM Relax modules.

TVM 0.27's default CPU pipeline lowers every PrimFunc as naive serial loops. ``apply_default_schedules``
gives each PrimFunc of a legalized and fused Relax module a hand-written schedule chosen by inspecting its
blocks:

* ``conv2d``: NCHW conv2d (regular, grouped, depthwise) with its fused elementwise epilogue. Register tile
  of output channels x output columns, the reduction computed at that tile under the epilogue, the tile's
  columns vectorized at the host vector width, the outer (batch, channel-block, row) loops fused and run in
  parallel. Padding stays a separate parallel copy.
* ``conv2d_nhwc``: the CPU build's float convolutions (channels-last, see layout.py) and the x86 integer ones
  that are not matmuls (qops, over int32), regular, grouped and depthwise, with the fused epilogue. Register tile of output columns x output-channel vectors (up to 20
  accumulators with AVX-512, 12 with AVX2; channel counts no full vector divides take 8-wide vectors), the
  window and input channels reduced under it, the outer (row, column-block, channel-block) loops fused and
  parallel. Weights are packed per channel block (``[co/t, ky, kx, ci, t]``) at build time; a depthwise
  convolution reads its zero padding inline, the others from a parallel padded copy.
* ``matmul``: dense / matmul / batch_matmul (``[..., M, K] x [..., K, N]``) with its epilogue. Register tile
  of rows x up to 3 vectors of columns (one vector per unrolled step), reduction under the epilogue tile,
  outer loops parallel. Where the right operand's rows are far apart and a column panel serves several row
  tiles, each parallel task first copies its ``[K, tile]`` panel into a contiguous buffer; a constant right
  operand (a weight) is packed into ``[N/tile, K, tile]`` panels once, at build time, instead.
* ``qmatmul_avx2`` / ``qmatmul_vnni``: nasc's uint8 x int8 matmuls on x86, tensorized with vpmaddubsw /
  vpmaddwd (AVX2) or vpdpbusd (AVX-512 VNNI); see ``x86_int8``.
* ``row_reduction``: softmax, layer norm, mean, ...: the output's leading (row) loops fused and parallel,
  every producer computed at the row, the innermost loop vectorized; the row's max/sum reductions are
  rfactor'ed into one partial per vector lane.
* ``injective``: elementwise / layout kernels: intermediates inlined, outer loops parallel (large kernels
  only), innermost loop vectorized when its extent allows.
* ``generic``: fallback for anything else (and for templates that fail): each block parallel over its outer
  spatial loops, vectorized where legal.
* ``none``: every template failed; the PrimFunc is left unscheduled.

Each scheduled PrimFunc gets ``tirx.is_scheduled = True`` (so later passes keep it) and
``nasc.schedule = <template name>``; :func:`schedule_report` reads the latter back.

:func:`nasc.backends.tvm.fast_math.fast_math_legalize_map` is the other half of nasc's CPU build: LegalizeOps
overrides that replace float32 exp/erf/tanh (and softmax, GELU, sigmoid, SiLU) with vectorizable polynomial
approximations.

Call it after legalization and fusion, e.g.::

    with target:
        mod = relax.get_pipeline("zero")(mod)   # LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR
                                                # (nasc: build.legalize_and_fuse, with the fast-math map)
    mod = apply_default_schedules(mod, target)
    ex = tvm.compile(mod, target)                # the default build pipeline keeps the scheduled PrimFuncs
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import tvm
from tvm import s_tir, tirx
from tvm.sym.pattern import detect_linear_equation

from nasc.backends.tvm.x86_int8 import is_qmatmul, template_qmatmul_avx2, template_qmatmul_vnni

__all__ = ["TEMPLATE_ATTR", "apply_default_schedules", "default_schedule", "schedule_report"]

logger = logging.getLogger(__name__)

_get_sblock_realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")

TEMPLATE_ATTR = "nasc.schedule"
SCHEDULED_ATTR = "tirx.is_scheduled"

# Below this many output elements a kernel runs serially: the thread pool's fork/join costs more. Compute
# kernels (matmul, conv, reductions) parallelise from a quarter of it, a conv's padding copy from it;
# elementwise/copy kernels, a few instructions per element, only from _PARALLEL_MIN_ELEMS_ELEMWISE (on 2
# cores, 16K-64K-element ones ran 2-4x faster serially: ~2 us against ~9 us with the fork/join; padding
# copies between parallel convs did better parallel: MobileNetV2 ~5% faster with them at 4096).
_PARALLEL_MIN_ELEMS = 4096
_PARALLEL_MIN_ELEMS_ELEMWISE = 1 << 17
# Vector accumulators a register tile may use (AVX2 and AVX-512 both have 16+ vector registers).
_MAX_ACC_VECTORS = 12
# ... and an NHWC convolution's with AVX-512's 32 registers (20 measured better than 16, 24 and 28 on
# MobileNetV2, ResNet-18 and the EfficientNet-lite net: 28 spilled, MobileNetV2 1.4x slower)
_NHWC_MAX_ACC_AVX512 = 20


# ----------------------------------------------------------------------------------------------
# Target helpers
# ----------------------------------------------------------------------------------------------


def vector_lanes(target: tvm.target.Target) -> int:
    """float32 lanes of the widest vector unit the target has (16 for AVX-512, 8 for AVX2, 4 otherwise)."""
    try:
        if tvm.target.codegen.target_has_features("avx512f", target):
            return 16
        if tvm.target.codegen.target_has_features("avx2", target) or tvm.target.codegen.target_has_features(
            "avx", target
        ):
            return 8
    except Exception:  # non-x86 or feature query unavailable
        pass
    return 4


# ----------------------------------------------------------------------------------------------
# Block / loop inspection
# ----------------------------------------------------------------------------------------------


def _int(expr: object) -> int | None:
    if isinstance(expr, int):
        return expr
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    return None


def _extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    return _int(sch.get(loop).extent)


def _extents(sch: s_tir.Schedule, loops: list) -> list[int]:
    out = []
    for lp in loops:
        ext = _extent(sch, lp)
        if ext is None:
            raise ValueError("dynamic loop extent")
        out.append(ext)
    return out


def _is_reduction(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_output(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    outs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    return sch.get(block).name_hint in outs


def _vars_in(expr: object) -> list:
    return list(tirx.analysis.undefined_vars(expr))


def _loops_by_iter(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, loops: list) -> dict[int, object]:
    """Map block-iter index -> the loop (among ``loops``) that drives it; unit loops are simply absent."""
    realize = _get_sblock_realize(sch, block)
    values = list(realize.iter_values)
    out: dict[int, object] = {}
    for loop in loops:
        lvar = sch.get(loop).loop_var
        users = [i for i, v in enumerate(values) if any(u.same_as(lvar) for u in _vars_in(v))]
        if len(users) != 1:
            raise ValueError("loop drives several block iters")
        out[users[0]] = loop
    return out


def _divisor_at_most(n: int, cap: int) -> int:
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def _vec_factor(extent: int, lanes: int, max_vectors: int = 2) -> int:
    """Innermost tile for a vectorized loop: a multiple of ``lanes`` dividing ``extent`` where possible."""
    for mult in range(max_vectors, 0, -1):
        if extent % (lanes * mult) == 0:
            return lanes * mult
    if extent <= lanes * max_vectors:
        return extent
    best = _divisor_at_most(extent, lanes * max_vectors)
    return best if best >= lanes // 2 else lanes


# ----------------------------------------------------------------------------------------------
# Shared building blocks
# ----------------------------------------------------------------------------------------------


def _inline_spatial(sch: s_tir.Schedule, keep: tuple = (), single_consumer_only: bool = False) -> None:
    """compute_inline every spatial, non-output block (except ``keep``) that allows it."""
    keep_names = {sch.get(b).name_hint for b in keep}
    changed = True
    while changed:
        changed = False
        for block in _blocks(sch):
            name = sch.get(block).name_hint
            if name in keep_names or _is_reduction(sch, block) or _is_output(sch, block):
                continue
            if single_consumer_only and len(sch.get_consumers(block)) > 1:
                continue
            try:
                sch.compute_inline(block)
                changed = True
            except Exception:  # not inlinable; leave it
                continue


def _schedule_spatial_block(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int,
                            min_parallel: int = _PARALLEL_MIN_ELEMS_ELEMWISE) -> None:
    """Parallel over the outer loops, vectorize the innermost loop when its extent allows."""
    loops = sch.get_loops(block)
    if not loops:
        return
    exts = _extents(sch, loops)
    total = 1
    for e in exts:
        total *= e
    inner = loops[-1]
    outer = list(loops[:-1])
    if exts[-1] % lanes == 0 and exts[-1] >= lanes:
        if exts[-1] > lanes:
            o, i = sch.split(inner, factors=[None, lanes])
            # the vectors of a row stay a serial loop inside the parallel one: fused into it, the vector's index
            # is ``fused % (n / lanes) * lanes + lane``, which TVM lowers to gathers and byte-by-byte stores (a
            # stem's input quantize 0.053 against 0.015 ms); fused only where the outer loops alone are too few
            if math.prod(exts[:-1]) < 8:
                outer.append(o)
            inner = i
        sch.vectorize(inner)
    elif 4 <= exts[-1] <= 2 * lanes:
        sch.vectorize(inner)
    if outer and total >= min_parallel:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        sch.parallel(fused)


def _schedule_reduction_block(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """A standalone reduction block: parallel over the leading spatial loops; the last spatial loop is moved
    inside the reduction loops and vectorized when it is wide enough (pooling, channel-wise means)."""
    loops = sch.get_loops(block)
    ivs = sch.get(block).iter_vars
    if len(loops) != len(ivs):
        raise ValueError("loop / iter mismatch")
    exts = _extents(sch, loops)
    spatial = [lp for lp, iv in zip(loops, ivs, strict=True) if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [lp for lp, iv in zip(loops, ivs, strict=True) if iv.iter_type == tirx.IterVar.CommReduce]
    sp_exts = [e for e, iv in zip(exts, ivs, strict=True) if iv.iter_type == tirx.IterVar.DataPar]
    if not spatial or not reduce:
        raise ValueError("not a spatial+reduction block")
    total = 1
    for e in sp_exts:
        total *= e
    outer = list(spatial[:-1])
    last = spatial[-1]
    vec = None
    if sp_exts[-1] >= lanes and sp_exts[-1] % lanes == 0:
        o, vec = sch.split(last, factors=[None, lanes])
        outer.append(o)
    else:
        outer.append(last)
    order = outer + reduce + ([vec] if vec is not None else [])
    sch.reorder(*order)
    par = None
    if outer:
        par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if total >= _PARALLEL_MIN_ELEMS // 4:
            sch.parallel(par)
    if vec is not None:
        sch.vectorize(vec)
        sch.decompose_reduction(block, reduce[0])


def _epilogue_of(sch: s_tir.Schedule, red: s_tir.schedule.SBlockRV) -> s_tir.schedule.SBlockRV:
    """The single elementwise consumer of ``red`` (after inlining), or a new ``local`` cache_write block."""
    consumers = list(sch.get_consumers(red))
    if not consumers:
        return sch.cache_write(red, 0, "local")
    if len(consumers) != 1:
        raise ValueError("reduction has several consumers")
    epi = consumers[0]
    if _is_reduction(sch, epi):
        raise ValueError("consumer is a reduction")
    return epi


# ----------------------------------------------------------------------------------------------
# Templates
# ----------------------------------------------------------------------------------------------


CONV_MAX_CO = 8


def _conv_w_factor(width: int, lanes: int) -> int:
    """Output columns per register tile: one full vector when ``width`` allows, else the largest divisor
    of ``width`` in [4, lanes) (a short vector beats a ragged pair of full ones), else ``width`` itself."""
    if width % lanes == 0:
        return lanes
    if width <= lanes:
        return width
    for d in range(lanes - 1, 3, -1):
        if width % d == 0:
            return d
    return _divisor_at_most(width, lanes)


def _conv_parts(sch: s_tir.Schedule) -> tuple:
    blocks = _blocks(sch)
    reds = [b for b in blocks if _is_reduction(sch, b)]
    if len(reds) != 1:
        raise ValueError("conv template needs exactly one reduction block")
    red = reds[0]
    ivs = sch.get(red).iter_vars
    kinds = "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in ivs)
    if kinds != "SSSSRRR":
        raise ValueError(f"not a conv2d NCHW block: {kinds}")
    return red


def _conv_stride_w(sch: s_tir.Schedule, red: s_tir.schedule.SBlockRV) -> tuple[int, int]:
    """(read index of the data operand, stride along W) of a conv2d NCHW block."""
    blk = sch.get(red)
    xx = blk.iter_vars[3].var
    for idx, region in enumerate(blk.reads):
        if len(region.region) != 4:
            continue
        w_index = region.region[3].min
        if not any(v.same_as(xx) for v in _vars_in(w_index)):
            continue
        coef = detect_linear_equation(w_index, [xx])
        if len(coef) != 2 or _int(coef[0]) is None:
            raise ValueError("non-linear conv input index")
        return idx, int(_int(coef[0]))
    raise ValueError("no conv data operand")


def _deinterleave_strided_input(sch: s_tir.Schedule, red: s_tir.schedule.SBlockRV, pads: list) -> list:
    """For a W-strided conv, store its (padded) input as ``[n, c, h, w % s, w // s]`` so the vectorized
    output columns read contiguous input. Returns the (possibly new) input-producing blocks."""
    idx, stride = _conv_stride_w(sch, red)
    if stride <= 1:
        return pads
    data = sch.get(red).reads[idx].source
    producer = None
    for blk in pads:
        if any(w.source.same_as(data) for w in sch.get(blk).writes):
            producer = blk
    if producer is None:
        producer = sch.cache_read(red, idx, "global")
        pads = [*pads, producer]
    width = _int(sch.get(producer).writes[0].source.shape[3])
    if width is None or width % stride:
        return pads
    sch.transform_layout(producer, ("write", 0), lambda n, c, h, w: (n, c, h, w % stride, w // stride))
    return pads


def _epilogue_loops_4d(sch: s_tir.Schedule, red: s_tir.schedule.SBlockRV) -> tuple[list, list[int]]:
    """The loops of a convolution's epilogue (or of a local cache write) and their extents."""
    e_loops = sch.get_loops(_epilogue_of(sch, red))
    if len(e_loops) != 4:
        raise ValueError("epilogue is not 4-D")
    return list(e_loops), _extents(sch, e_loops)


def _reduce_outside_tile(sch: s_tir.Schedule, red: s_tir.schedule.SBlockRV, loops: list, row: int,
                         col: int) -> tuple[dict[int, object], list]:
    """Order the loops compute_at made under a convolution's tile (``loops``; by block iter, unit loops
    absent): the reduction (iters 4-6) outside the tile's ``row`` and ``col`` loops, the row loop unrolled.
    Returns the loops by block iter and the reduction loops, outermost first."""
    by_iter = _loops_by_iter(sch, red, loops)
    reduce = [by_iter[i] for i in (4, 5, 6) if i in by_iter]
    if not reduce:
        raise ValueError("no reduction loops")
    sch.reorder(*reduce, *[by_iter[i] for i in (row, col) if i in by_iter])
    if row in by_iter:
        sch.unroll(by_iter[row])
    return by_iter, reduce


def _template_conv2d(sch: s_tir.Schedule, lanes: int) -> None:
    red = _conv_parts(sch)
    if _is_nhwc_conv(sch, red):
        raise ValueError("an NHWC conv (conv2d_nhwc's)")
    pads = [b for b in sch.get_producers(red) if not _is_reduction(sch, b)]
    _inline_spatial(sch, keep=tuple(pads))
    pads = _deinterleave_strided_input(sch, red, pads)
    e_loops, (_, c_out, _, w_out) = _epilogue_loops_4d(sch, red)
    n, co, oh, ow = e_loops
    ow_i = _conv_w_factor(w_out, lanes)
    vectors = -(-ow_i // lanes)
    co_i = _divisor_at_most(c_out, max(1, min(CONV_MAX_CO, _MAX_ACC_VECTORS // vectors)))
    co_o, co_in = sch.split(co, factors=[None, co_i])
    ow_o, ow_in = sch.split(ow, factors=[None, ow_i])
    sch.reorder(n, co_o, oh, ow_o, co_in, ow_in)
    outer = sch.fuse(n, co_o, oh)
    sch.parallel(outer)
    sch.compute_at(red, ow_o)
    # loops compute_at made under the tile, by block iter (n, ff, yy, xx, rc, ry, rx); unit loops are absent
    by_iter, reduce = _reduce_outside_tile(sch, red, sch.get_loops(red)[2:], 1, 3)
    if 3 in by_iter:
        sch.vectorize(by_iter[3])
    if 6 in by_iter and (_extent(sch, by_iter[6]) or 0) <= 7:
        sch.unroll(by_iter[6])
    sch.decompose_reduction(red, reduce[0])
    sch.unroll(co_in)
    sch.vectorize(ow_in)
    for pad in pads:
        _schedule_spatial_block(sch, pad, lanes, _PARALLEL_MIN_ELEMS)


def _is_nhwc_conv(sch: s_tir.Schedule, red: s_tir.schedule.SBlockRV) -> bool:
    """Whether the conv block computes NHWC (TOPI names it ``conv2d_nhwc`` / ``group_conv2d_nhwc``, qops
    ``qconv2d_nhwc``)."""
    return sch.get(red).name_hint.endswith("_nhwc")


def _nhwc_tile(c_out: int, w_out: int, lanes: int, max_acc: int) -> tuple[int, int, int]:
    """(output channels, output columns, vector width) of an NHWC register tile: channel vectors x columns
    accumulators, at most ``max_acc`` of them, minimising loads per multiply-add ((vectors + columns) /
    (vectors x columns): each weight vector serves every column, each input value every vector). Both
    divide their extents. Channel counts that full vectors do not divide take 8-wide ones (24 = 3 x 8, not
    a 16-lane vector and a ragged half, which LLVM shuffles)."""
    # a count 8 does not divide either (a pruned width): its widest divisor that fills at least half a vector
    # (36 -> 12, 42 -> 14, 81 -> 9), else its widest divisor up to two vectors as one ragged vector (43 -> 43)
    vec = lanes if c_out % lanes == 0 else 8 if c_out % 8 == 0 else _divisor_at_most(c_out, lanes)
    if vec < lanes // 2:
        vec = _divisor_at_most(c_out, 2 * lanes)
    regs = -(-vec // lanes)  # registers per vector: a ragged one wider than the lanes takes two
    best: tuple[float, int, int] | None = None
    for v in range(1, 5):
        co = v * vec
        if c_out % co:
            continue
        cols = _divisor_at_most(w_out, max(1, max_acc // (v * regs)))
        cost = (v + cols) / (v * cols)
        if best is None or cost < best[0] - 1e-9:
            best = (cost, co, cols)
    assert best is not None
    return best[1], best[2], vec


def _nbytes(buf: tirx.Buffer) -> int:
    """Bytes of a buffer with a static shape (a dynamic dim counts as 1)."""
    n = 1
    for d in buf.shape:
        n *= _int(d) or 1
    return n * ((buf.dtype.bits * buf.dtype.lanes + 7) // 8)


def _has_condition(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Whether a spatial block stores a conditional value (zero padding), not a plain copy."""
    value = getattr(sch.get(block).body, "value", None)
    return "if_then_else" in str(getattr(getattr(value, "op", None), "name", ""))


def _layout_free(sch: s_tir.Schedule, buf: tirx.Buffer) -> bool:
    """Whether ``buf`` is a parameter that every caller passes a constant for (a weight): Relax's
    AttachAttrLayoutFreeBuffers lists those in the PrimFunc's ``layout_free_buffers``."""
    func = sch.mod["main"]
    free = func.attrs.get("layout_free_buffers", []) if func.attrs is not None else []
    indices = {int(i) for i in free}
    # (TVM 0.27: a PrimFunc's parameters are its buffers; there is no buffer_map)
    return any(i in indices and (p.same_as(buf) or p.data.same_as(buf.data)) for i, p in enumerate(func.params))


def _prepack(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, buf: tirx.Buffer,
             index_map: Callable[..., tuple]) -> bool:
    """Read the weight ``buf`` through a copy laid out by ``index_map`` that is computed once at build time:
    the copy is a MetaSchedule layout-rewrite block, which Relax's SplitLayoutRewritePreproc moves into a
    kernel of its own and FoldConstant runs on the constant weight (build.py). False (nothing changed) when
    ``buf`` is not a weight."""
    if not _layout_free(sch, buf):
        return False
    return _prepack_block(sch, sch.cache_read(block, _read_index(sch, block, buf), "global"), index_map)


def _prepack_block(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, index_map: Callable[..., tuple]) -> bool:
    """Like :func:`_prepack`, for a copy block that already exists (a weight's zero-padded copy): computed
    once at build time, laid out by ``index_map``, when what it copies is a weight."""
    reads = sch.get(block).reads
    if len(reads) != 1 or not _layout_free(sch, reads[0].source):
        return False
    sch.annotate(block, "meta_schedule.layout_rewrite_preproc", True)
    sch.transform_layout(block, ("write", 0), index_map)
    return True


def _template_conv2d_nhwc(sch: s_tir.Schedule, lanes: int) -> None:
    """NHWC convolution (weights HWIO, packed at build time): a register tile of output columns x channel
    vectors, the reduction (kernel rows, columns, input channels: contiguous) under it, the epilogue fused;
    channel tiles or pixels outermost, whichever operand is bigger."""
    red = _conv_parts(sch)
    if not _is_nhwc_conv(sch, red):
        raise ValueError("not an NHWC conv")
    # Zero padding: a depthwise convolution reads it inline (each window tap tests its bounds: cheaper than a
    # copy of the whole map, MobileNetV2 4.4 against 5.7 ms); the others keep a parallel padded copy, which
    # their input-channel loop would otherwise test at every step (ResNet-18 18 against 26 ms).
    depthwise = _int(sch.get(red).iter_vars[6].dom.extent) == 1
    pads = [] if depthwise else [b for b in sch.get_producers(red)
                                 if not _is_reduction(sch, b) and _has_condition(sch, b)]
    _inline_spatial(sch, keep=tuple(pads))
    e_loops, (_, _, w_out, c_out) = _epilogue_loops_4d(sch, red)
    n, oh, ow, co = e_loops
    co_i, ow_i, vec = _nhwc_tile(c_out, w_out, lanes, _NHWC_MAX_ACC_AVX512 if lanes >= 16 else _MAX_ACC_VECTORS)
    weight = sch.get(red).reads[1].source
    if len(weight.shape) == 4 and c_out > co_i:  # each tile's weights contiguous: [co/co_i, ky, kx, ci, co_i]
        _prepack(sch, red, weight, lambda ky, kx, ci, c: (c // co_i, ky, kx, ci, c % co_i))
    co_o, co_in = sch.split(co, factors=[None, co_i])
    ow_o, ow_in = sch.split(ow, factors=[None, ow_i])
    # The tile loop that is outermost streams its operand once: channel tiles outermost when the weights are
    # the bigger operand (deep layers at small maps: each tile's weight panel then stays in cache for every
    # pixel; ResNet-18 22.7 -> 16.0 ms, its 7x7x512 convolutions 2.9 -> 1.25 ms), pixels otherwise.
    co_outer = _nbytes(weight) > _nbytes(sch.get(red).reads[0].source)
    order = (n, co_o, oh, ow_o) if co_outer else (n, oh, ow_o, co_o)
    sch.reorder(*order, ow_in, co_in)
    outer = sch.fuse(*order)
    sch.parallel(outer)
    sch.compute_at(red, outer)
    # block iters (n, yy, xx, ff, ry, rx, rc)
    by_iter, reduce = _reduce_outside_tile(sch, red, sch.get_loops(red)[1:], 2, 3)
    if 3 in by_iter:
        _vectorize_tile(sch, by_iter[3], vec)
    for i in (4, 5):  # small kernel windows unrolled
        if i in by_iter and (_extent(sch, by_iter[i]) or 0) <= 7 and 6 not in by_iter:
            sch.unroll(by_iter[i])
    init = sch.decompose_reduction(red, reduce[0])
    _vectorize_tile(sch, sch.get_loops(init)[-1], vec)
    sch.unroll(ow_in)
    _vectorize_tile(sch, co_in, vec)
    for pad in pads:
        _schedule_spatial_block(sch, pad, lanes, _PARALLEL_MIN_ELEMS)


def _matmul_parts(sch: s_tir.Schedule) -> s_tir.schedule.SBlockRV:
    blocks = _blocks(sch)
    reds = [b for b in blocks if _is_reduction(sch, b)]
    if len(reds) != 1:
        raise ValueError("matmul template needs exactly one reduction block")
    red = reds[0]
    blk = sch.get(red)
    ivs = blk.iter_vars
    kinds = "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in ivs)
    if len(kinds) < 3 or not kinds.endswith("SSR") or "R" in kinds[:-1]:
        raise ValueError(f"not a matmul block: {kinds}")
    if len(blk.reads) != 2:
        raise ValueError("matmul needs two operands")
    j_var = ivs[-2].var
    k_var = ivs[-1].var
    # B must be [..., K, N]: N (vectorized) contiguous.
    ok = False
    for region in blk.reads:
        last = _vars_in(region.region[-1].min)
        has_j = any(v.same_as(j_var) for v in last)
        has_k = any(v.same_as(k_var) for v in last)
        if has_j and not has_k:
            ok = True
    if not ok:
        raise ValueError("matmul with a transposed right operand")
    return red


def _rhs(sch: s_tir.Schedule, red: s_tir.schedule.SBlockRV) -> tirx.Buffer:
    """The right operand ([..., K, N]: its last index uses the column iter and not the reduction iter)."""
    blk = sch.get(red)
    j_var, k_var = blk.iter_vars[-2].var, blk.iter_vars[-1].var
    for region in blk.reads:
        last = _vars_in(region.region[-1].min)
        if any(v.same_as(j_var) for v in last) and not any(v.same_as(k_var) for v in last):
            return region.source
    raise ValueError("no right operand")


def _rhs_depends_on_batch(sch: s_tir.Schedule, red: s_tir.schedule.SBlockRV) -> bool:
    """Whether the right operand ([..., K, N]) is indexed by any batch iter (batch_matmul) or not (dense)."""
    blk = sch.get(red)
    batch_vars = [iv.var for iv in blk.iter_vars[:-3]]
    rhs = _rhs(sch, red)
    for region in blk.reads:
        if region.source.same_as(rhs):
            used = [v for rng in region.region for v in _vars_in(rng.min)]
            return any(u.same_as(b) for u in used for b in batch_vars)
    return True


def _writes(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, buf: tirx.Buffer) -> bool:
    return any(w.source.same_as(buf) for w in sch.get(block).writes)


def _read_index(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, buf: tirx.Buffer) -> int:
    for idx, region in enumerate(sch.get(block).reads):
        if region.source.same_as(buf):
            return idx
    raise ValueError("buffer not read by the block")


def _vectorize_tile(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, lanes: int) -> None:
    """Vectorize a tile's column loop: one vector per ``lanes`` columns (a 3-vector loop vectorized whole
    makes LLVM shuffle lanes), unrolled over the vectors."""
    ext = _extent(sch, loop) or 0
    if ext > lanes and ext % lanes == 0:
        outer, inner = sch.split(loop, factors=[None, lanes])
        sch.unroll(outer)
        sch.vectorize(inner)
    else:
        sch.vectorize(loop)


MATMUL_MAX_VECTORS = 3
# Pack the right operand's column panel (contiguous [K, tile]) when its rows are at least this many floats
# apart (wider rows put the panel's lines in few cache sets: power-of-two-ish strides thrash L1/L2) and
# the panel is reused by at least this many row tiles.
MATMUL_PACK_MIN_N = 64
MATMUL_PACK_MIN_ROW_TILES = 4


def _row_cap(col_tile: int, lanes: int) -> int:
    """The most rows a matmul's register tile takes for a column tile (accumulators: rows x vectors)."""
    vectors = -(-col_tile // lanes)
    return max(1, _MAX_ACC_VECTORS // vectors // 2 * 2 if vectors > 1 else 8)


def _matmul_padding(m: int, n: int, lanes: int) -> tuple[int, int]:
    """(row, column) multiples a matmul's iterations are padded to (1: left as is). Columns: when no column
    tile is a whole number of vectors dividing N (N = 197, 200 or 50 with 16 lanes: tiles of 16 with a tail,
    40, 25), which compile to odd-width LLVM vectors or a predicated tail, 10-20x slower than the padded
    matmul (ViT's 197x197 attention scores, an MLP's 200-wide output); to the vector multiple that adds the
    fewest columns (ties: the wider tile). Narrow ones (N <= lanes: classifier heads) stay. Rows: when the
    widest row tile dividing M is under half the register tile's (M = 197: one row at a time)."""
    col = 1
    tile = _vec_factor(n, lanes, MATMUL_MAX_VECTORS)
    if n > lanes and (tile % lanes != 0 or n % tile != 0):
        col = min((lanes * v for v in range(MATMUL_MAX_VECTORS, 0, -1)), key=lambda t: -(-n // t) * t)
        tile = _vec_factor(-(-n // col) * col, lanes, MATMUL_MAX_VECTORS)
    cap = _row_cap(tile, lanes)
    row = cap if m > cap and _divisor_at_most(m, cap) < cap // 2 else 1
    return row, col


def _pad_matmul(sch: s_tir.Schedule, red: s_tir.schedule.SBlockRV, lanes: int) -> list:
    """Pad the matmul's row and column iterations (:func:`_matmul_padding`) with ``pad_einsum``: the operands
    are read through zero-padded copies, the product lands in a padded buffer whose real part the epilogue
    reads. Returns the operands' padded copy blocks (empty: nothing padded, or not an einsum pattern TVM can
    pad)."""
    ivs = sch.get(red).iter_vars
    m, n = (_int(iv.dom.extent) or 0 for iv in ivs[-3:-1])
    row, col = _matmul_padding(m, n, lanes)
    if row == 1 and col == 1:
        return []
    before = {sch.get(b).name_hint for b in _blocks(sch)}
    operands = [r.source for r in sch.get(red).reads]
    factors = [1] * len(ivs)
    factors[-3], factors[-2] = row, col
    try:
        sch.pad_einsum(red, factors)
    except Exception:
        return []
    return [b for b in _blocks(sch) if sch.get(b).name_hint not in before
            and any(r.source.same_as(o) for r in sch.get(b).reads for o in operands)]


def _template_matmul(sch: s_tir.Schedule, lanes: int) -> None:
    red = _matmul_parts(sch)
    pads = _pad_matmul(sch, red, lanes)
    _inline_spatial(sch, keep=tuple(pads))
    rhs = _rhs(sch, red)
    fold_batch = not _rhs_depends_on_batch(sch, red)
    # padded: the tile is anchored on the padded product (a local accumulator copied out to it); the real
    # epilogue reads its columns afterwards as a kernel step of its own
    rhs_pad = next((b for b in pads if _writes(sch, b, rhs)), None)
    tail = list(sch.get_consumers(red)) if pads else []
    epi = sch.cache_write(red, 0, "local") if pads else _epilogue_of(sch, red)
    e_loops = sch.get_loops(epi)
    n_red = len(sch.get(red).iter_vars) - 1
    if len(e_loops) != n_red:
        raise ValueError("epilogue rank differs from the matmul")
    exts = _extents(sch, e_loops)
    k_ext = _int(sch.get(red).iter_vars[-1].dom.extent) or 0
    total = 1
    for e in exts:
        total *= e
    batch = list(e_loops[:-2])
    i, j = e_loops[-2], e_loops[-1]
    i_ext, n = exts[-2], exts[-1]
    j_i = _vec_factor(n, lanes, MATMUL_MAX_VECTORS)
    cap = _row_cap(j_i, lanes)
    m = i_ext
    if fold_batch and batch:
        # dense with leading dims: rows of all batches form one M dimension (e.g. [seq, 1, d] x [d, n])
        m = total // n
        i_i = _divisor_at_most(i_ext, cap) if i_ext > 1 else _divisor_at_most(m, cap)
        i = sch.fuse(*batch, i)
        batch = []
    else:
        i_i = _divisor_at_most(i_ext, cap)
    i_o, i_in = sch.split(i, factors=[None, i_i])
    j_o, j_in = sch.split(j, factors=[None, j_i])
    sch.reorder(*batch, j_o, i_o, i_in, j_in)
    panels = lambda kk_, nn_: (nn_ // j_i, kk_, nn_ % j_i)
    fits = len(rhs.shape) == 2 and not batch
    if rhs_pad is not None:
        prepacked = fits and _prepack_block(sch, rhs_pad, panels)
    else:
        prepacked = fits and n > j_i and _prepack(sch, red, rhs, panels)
    pack = (not prepacked and n >= MATMUL_PACK_MIN_N and m // i_i >= MATMUL_PACK_MIN_ROW_TILES
            and k_ext >= lanes)
    outer_list = [*batch, j_o] if pack else [*batch, j_o, i_o]
    outer = sch.fuse(*outer_list) if len(outer_list) > 1 else outer_list[0]
    if total >= _PARALLEL_MIN_ELEMS // 4:
        sch.parallel(outer)
    sch.compute_at(red, i_o if pack else outer)
    by_iter = _tile_loops(sch, red, i_o if pack else outer)
    jj, kk = by_iter.pop(n_red - 1, None), by_iter.pop(n_red, None)
    if kk is None:
        raise ValueError("no reduction loop")
    if len(by_iter) > 1:
        raise ValueError("row tile spans several batch dims")
    ii = next(iter(by_iter.values()), None)
    sch.reorder(*[lp for lp in (kk, ii, jj) if lp is not None])
    if pack:
        # each parallel task copies its [K, j_i] panel of the right operand once, contiguously (the padded
        # copy is that panel when there is one)
        panel = rhs_pad if rhs_pad is not None else sch.cache_read(red, _read_index(sch, red, rhs), "global")
        sch.compute_at(panel, outer)
        _vectorize_tile(sch, sch.get_loops(panel)[-1], lanes)
    for block in pads:
        if block is not rhs_pad or not (pack or prepacked):
            _schedule_spatial_block(sch, block, lanes)
    if ii is not None:
        sch.unroll(ii)
    if jj is not None:
        _vectorize_tile(sch, jj, lanes)
    sch.decompose_reduction(red, kk)
    sch.unroll(i_in)
    _vectorize_tile(sch, j_in, lanes)
    for block in tail:
        _schedule_spatial_block(sch, block, lanes)


def _tile_loops(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV,
                anchor: s_tir.schedule.LoopRV) -> dict[int, object]:
    """block-iter index -> loop, for the loops that compute_at made under ``anchor``."""
    target = sch.get(anchor)
    loops = sch.get_loops(block)
    idx = next(k for k, lp in enumerate(loops) if sch.get(lp).same_as(target))
    return _loops_by_iter(sch, block, loops[idx + 1 :])


def _template_row_reduction(sch: s_tir.Schedule, lanes: int) -> None:
    blocks = _blocks(sch)
    if not any(_is_reduction(sch, b) for b in blocks):
        raise ValueError("no reduction")
    _inline_spatial(sch, single_consumer_only=True)
    outs = list(sch.get_output_blocks(sch.get_sblock("root")))
    if len(outs) != 1:
        raise ValueError("row template needs one output block")
    out = outs[0]
    if _is_reduction(sch, out):
        # a single reduction producing the output (mean, pooling, sum)
        if len(_blocks(sch)) != 1:
            raise ValueError("reduction output with producers")
        _schedule_reduction_block(sch, out, lanes)
        return
    loops = sch.get_loops(out)
    if len(loops) < 2:
        raise ValueError("row template needs >= 2 loops")
    exts = _extents(sch, loops)
    partials = [name for b in _blocks(sch) if (name := _split_row_reduction(sch, b, lanes))]
    rows = list(sch.get_loops(out)[:-1])
    row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    total = 1
    for e in exts:
        total *= e
    producers = [b for b in _blocks(sch) if sch.get(b).name_hint != sch.get(out).name_hint]
    for block in reversed(producers):
        sch.compute_at(block, row)
    if total >= _PARALLEL_MIN_ELEMS // 4:
        sch.parallel(row)
    for block in [*producers, out]:
        if _is_reduction(sch, block):
            continue
        b_loops = sch.get_loops(block)
        if len(b_loops) < 2:
            continue
        inner = b_loops[-1]
        ext = _extent(sch, inner) or 0
        if ext >= lanes and ext % lanes == 0:
            if ext > lanes:
                _, inner = sch.split(inner, factors=[None, lanes])
            sch.vectorize(inner)
    for name in partials:
        # the lanes-wide partial reduction: reduction loop outside, the lanes vectorized
        rf = sch.get_sblock(name)
        by_iter = _tile_loops(sch, rf, row)
        ivs = sch.get(rf).iter_vars
        lane = [lp for k, lp in by_iter.items() if ivs[k].iter_type == tirx.IterVar.DataPar]
        red = [lp for k, lp in by_iter.items() if ivs[k].iter_type == tirx.IterVar.CommReduce]
        if len(lane) != 1 or len(red) != 1:
            raise ValueError("unexpected partial-reduction loops")
        sch.reorder(red[0], lane[0])
        sch.vectorize(lane[0])
        sch.decompose_reduction(rf, red[0])


def _split_row_reduction(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> str | None:
    """For a non-output reduction over one axis whose extent is a multiple of ``lanes`` (the max and sum of
    softmax, the mean and variance of a norm): ``rfactor`` it into ``lanes`` partial results (a vector
    accumulator) and a final reduction of those; a serial chain of scalar adds or maxes is latency-bound.
    Returns the partial block's name, or None when the block is left as it is."""
    if not _is_reduction(sch, block) or _is_output(sch, block):
        return None
    ivs = sch.get(block).iter_vars
    if sum(iv.iter_type == tirx.IterVar.CommReduce for iv in ivs) != 1:
        return None
    loops = sch.get_loops(block)
    if len(loops) != len(ivs) or ivs[-1].iter_type != tirx.IterVar.CommReduce:
        return None
    ext = _extent(sch, loops[-1]) or 0
    if ext % lanes or ext < 2 * lanes:
        return None
    try:
        _, lane = sch.split(loops[-1], factors=[None, lanes])
        rf = sch.rfactor(lane, factor_axis=len(ivs) - 1)
    except Exception:  # a combiner rfactor cannot split (argmax's value/index pair); the split is harmless
        return None
    return str(sch.get(rf).name_hint)


def _template_injective(sch: s_tir.Schedule, lanes: int) -> None:
    blocks = _blocks(sch)
    if any(_is_reduction(sch, b) for b in blocks):
        raise ValueError("has a reduction")
    names = {sch.get(b).name_hint for b in blocks}
    patches = [b for b in blocks if sch.get(b).name_hint.startswith("im2col_r")]
    if patches:
        # what feeds the patches (a quantize, a transpose, the padding) is computed once into a buffer of its own:
        # inlined, it would be recomputed for every tap (kh x kw times; a 7x7 stem's quantize took 1.6 ms)
        # and so is a stem's quantize, before its transpose to channels-last: elementwise in NCHW, it vectorizes
        # along the rows (inlined into the transpose's 3-4 channel vectors, each value was divided alone)
        keep = [*sch.get_producers(patches[0]),
                *(p for b in blocks if sch.get(b).name_hint.startswith("T_transpose") for p in sch.get_producers(b))]
        _inline_spatial(sch, keep=tuple(keep))
    else:
        _inline_spatial(sch)
    for block in _blocks(sch):
        if sch.get(block).name_hint.startswith("im2col_r"):
            _schedule_im2col(sch, block, lanes)
        elif _few_channels(sch, block, lanes):
            _schedule_few_channels(sch, block, lanes)
        elif sch.get(block).name_hint == "winograd_input":
            _schedule_winograd_input(sch, block, lanes)
        elif "winograd_output" in names:
            _schedule_rows(sch, block, lanes)
        else:
            _schedule_spatial_block(sch, block, lanes)


def _channel_vectors(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV, lanes: int) -> list:
    """Vectorize a channel loop by the widest whole vectors (``lanes``, 8 or 4 wide) that divide it; a count none
    divides is vectorized whole up to two vectors and left scalar above (an LLVM vector of 65 floats is worse
    than scalar code). Returns the outer loop the split made (empty when none)."""
    ext = _extent(sch, loop) or 0
    width = next((w for w in (lanes, 8, 4) if ext % w == 0), 0)
    if not width or ext == width:
        if 0 < ext <= 2 * lanes:
            sch.vectorize(loop)
        return []
    outer, inner = sch.split(loop, factors=[None, width])
    sch.vectorize(inner)
    return [outer]


def _schedule_winograd_input(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """winograd.py's input transform [16, tiles, C]: tiles in parallel, then channel vectors, then the 16
    positions of the transformed tile unrolled (their tap indices and signs fold to constants; the tile's
    16 input vectors stay in L1 across them). Fused over all three, every vector recomputed its indices."""
    ab, tile, c = sch.get_loops(block)
    sch.reorder(tile, ab, c)
    c_outer = _channel_vectors(sch, c, lanes)
    if c_outer:
        sch.reorder(c_outer[0], ab)
    sch.unroll(ab)
    sch.parallel(tile)


def _schedule_rows(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """An NHWC map computed pixel by pixel with per-pixel index arithmetic (winograd.py's output transform
    and the convolution's epilogue): rows in parallel, each row's pixels in order, channel vectors inside."""
    loops = sch.get_loops(block)
    if len(loops) != 4:
        _schedule_spatial_block(sch, block, lanes)
        return
    n, y, _x, c = loops
    _channel_vectors(sch, c, lanes)
    sch.parallel(sch.fuse(n, y))


def _few_channels(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> bool:
    """Whether ``block`` writes an NHWC map of fewer channels than a vector and rows of at least one vector."""
    loops = sch.get_loops(block)
    if len(loops) != 4:
        return False
    exts = _extents(sch, loops)
    return 0 < exts[3] < lanes <= exts[2]


def _schedule_few_channels(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """An NHWC map of a few channels (an image's channels-last copy, padded or not): rows in parallel, each
    channel's row in whole vectors (read contiguously from an NCHW source), not each pixel's 3-4 channels as one
    short vector."""
    n, y, x, c = sch.get_loops(block)
    sch.reorder(n, y, c, x)
    _, x_in = sch.split(x, factors=[None, lanes])
    sch.vectorize(x_in)
    sch.parallel(sch.fuse(n, y))


def _schedule_im2col(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """qops' patches [pixels, window x Ci]: the columns split into the runs that are contiguous in the padded input
    (a kernel row's kw x Ci bytes, a tap's Ci when dilated; qops names the block ``im2col_r<run>``), each run
    copied vectorized (in 64-byte pieces when longer), pixels in parallel. Vectorized over the flat columns
    instead, every byte's source index was a division (0.09 ms for 225 KB); by runs of Ci, a 3-channel stem
    (read as 4) copied 4 bytes at a time (0.68 ms for ResNet-18's 2.5 MB of patches)."""
    rows, cols = sch.get_loops(block)
    _copy_runs(sch, block, cols)
    sch.parallel(rows)


def _copy_runs(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, cols: s_tir.schedule.LoopRV) -> None:
    """The columns loop of a patches block (``im2col_r<run>``) split into its contiguous runs, each copied
    vectorized (in 64-byte pieces when longer)."""
    run = int(sch.get(block).name_hint.removeprefix("im2col_r"))
    if (_extent(sch, cols) or 0) % run:
        raise ValueError("not a patches block")
    _, inner = sch.split(cols, factors=[None, run])
    piece = run if run <= 64 else next((p for p in (64, 32, 16, 8, 4) if run % p == 0), 0)
    if piece and piece < run:
        _, inner = sch.split(inner, factors=[None, piece])
    if piece and piece % 4 == 0:
        sch.vectorize(inner)


def _template_generic(sch: s_tir.Schedule, lanes: int) -> None:
    _inline_spatial(sch, single_consumer_only=True)
    for block in _blocks(sch):
        try:
            if _is_reduction(sch, block):
                _schedule_reduction_block(sch, block, lanes)
            else:
                _schedule_spatial_block(sch, block, lanes)
        except Exception:  # this block stays as it is (the schedule state is unchanged on error)
            continue


_Template = Callable[[s_tir.Schedule, int], None]

_TEMPLATES: dict[str, _Template] = {
    "conv2d": _template_conv2d,
    "conv2d_nhwc": _template_conv2d_nhwc,
    "matmul": _template_matmul,
    "row_reduction": _template_row_reduction,
    "injective": _template_injective,
    "generic": _template_generic,
    "qmatmul_avx2": template_qmatmul_avx2,
    "qmatmul_vnni": template_qmatmul_vnni,
}


def _candidates(func: tirx.PrimFunc, int8: str | None = None) -> list[str]:
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        blocks = _blocks(sch)
    except Exception:
        return ["generic"]
    reds = [b for b in blocks if _is_reduction(sch, b)]
    if not reds:
        return ["injective", "generic"]
    if int8 and is_qmatmul(sch):
        return [f"qmatmul_{int8}", "matmul", "generic"]
    if len(reds) == 1:
        for name, probe in (("conv2d", _conv_parts), ("matmul", _matmul_parts)):
            try:
                red = probe(sch)
                if name == "conv2d" and _is_nhwc_conv(sch, red):
                    return ["conv2d_nhwc", "generic"]
                return [name, "row_reduction", "generic"]
            except Exception:  # not this kind
                continue
    return ["row_reduction", "generic"]


def _schedule(func: tirx.PrimFunc, lanes: int, int8: str | None = None) -> tuple[s_tir.Schedule | None, str]:
    for name in _candidates(func, int8):
        try:
            sch = s_tir.Schedule(tvm.IRModule({"main": func}))
            _TEMPLATES[name](sch, lanes)
            return sch, name
        except Exception as exc:  # try the next, simpler template
            logger.debug("template %s failed: %s", name, exc)
            continue
    return None, "none"


def _schedule_func(func: tirx.PrimFunc, lanes: int, int8: str | None = None) -> tuple[tirx.PrimFunc, str]:
    sch, name = _schedule(func, lanes, int8)
    return (sch.mod["main"] if sch is not None else func), name


def int8_kind(target: tvm.target.Target) -> str | None:
    """Which hand-tensorized integer matmul (x86_int8) the target gets: "vnni" (AVX-512 VNNI), "avx2", or
    None (other CPUs: the float matmul template, vectorized by LLVM)."""
    try:
        has = tvm.target.codegen.target_has_features
        if has("avx512vnni", target):
            return "vnni"
        return "avx2" if has("avx2", target) else None
    except Exception:  # non-x86
        return None


def default_schedule(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[s_tir.Schedule | None, str]:
    """The default schedule of the kernel ``mod["main"]`` as a traced schedule (its ``trace`` replays the
    template, e.g. as a MetaSchedule tuning record) and the template's name; ``(None, "none")`` when no
    template applies."""
    return _schedule(mod["main"], vector_lanes(target), int8_kind(target))


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def apply_default_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule every PrimFunc of a legalized + fused Relax module for the CPU ``target``.

    PrimFuncs already marked ``tirx.is_scheduled`` (e.g. by MetaSchedule's database) are left alone. The
    result compiles with ``tvm.compile(mod, target)`` (or ``relax.build``); its LegalizeOps finds no Relax
    operators left and the scheduled PrimFuncs are lowered as they are.
    """
    lanes = vector_lanes(target)
    int8 = int8_kind(target)
    updates: dict[tvm.ir.GlobalVar, tirx.PrimFunc] = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        attrs = func.attrs
        if attrs is not None and SCHEDULED_ATTR in attrs and bool(attrs[SCHEDULED_ATTR]):
            continue
        new_func, name = _schedule_func(func, lanes, int8)
        new_func = new_func.with_attr(TEMPLATE_ATTR, name)
        if name != "none":
            new_func = new_func.with_attr(SCHEDULED_ATTR, True)
        updates[gvar] = new_func
    if not updates:
        return mod
    funcs = {gvar: updates.get(gvar, func) for gvar, func in mod.functions_items()}
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


def schedule_report(mod: tvm.IRModule) -> dict[str, str]:
    """PrimFunc name -> template that scheduled it (``"prescheduled"`` if scheduled elsewhere, ``"none"``
    if no template applied, ``"unscheduled"`` if apply_default_schedules never saw it)."""
    report: dict[str, str] = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        attrs = func.attrs
        if attrs is not None and TEMPLATE_ATTR in attrs:
            report[gvar.name_hint] = str(attrs[TEMPLATE_ATTR])
        elif attrs is not None and SCHEDULED_ATTR in attrs and bool(attrs[SCHEDULED_ATTR]):
            report[gvar.name_hint] = "prescheduled"
        else:
            report[gvar.name_hint] = "unscheduled"
    return report
