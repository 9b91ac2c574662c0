"""uint8 x int8 -> int32 matmul kernels for x86 CPUs, tensorized by hand.

Left to LLVM, nasc's integer matmuls (vectorized along the columns) become 16-bit multiplies of one product
per lane, about half the speed of the float32 kernels. The ``qmatmul_x86`` template instead tensorizes the
inner 8 (16) columns x ``G`` reduction steps with one exact intrinsic:

* with AVX-512 VNNI: ``vpdpbusd`` (16 columns, ``G = 4``), uint8 x int8 quadruples summed into int32;

* ``vpmaddubsw`` + ``vpmaddwd`` (``G = 4``): uint8 x int8 pairs summed in int16, then pairs of those in int32.
  vpmaddubsw saturates an int16 pair sum, so this is used only where every pair of weights that it sums
  satisfies ``255 * (|w0| + |w1|) <= 32767`` (always true for 7-bit weights, ``quantize{reduce-range=true}``).
  The lowering (``qops._qmatmul_te``) checks the weight values and names the compute block ``qmatmul_pairs16``;
* ``vpmaddwd`` (``G = 2``): operands widened to int16, pairs summed in int32; exact for any int8 weight.

Each parallel task copies its column panel of the weight into ``[K/G, P, G]`` order (the reduction step's
``G`` weights of one column next to each other), so that one vector load feeds the intrinsic; ``P`` columns
per task, a few rows per register tile. Results equal the numpy reference bit for bit (tests/backends).
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

PAIRS16_BLOCK = "qmatmul_pairs16"  # the compute block name of a matmul whose weight pairs fit vpmaddubsw
INTRIN_PAIRS16 = "nasc_u8i8i32_8x4_avx2_pmaddubsw"
INTRIN_WIDEN16 = "nasc_u8i8i32_8x2_avx2_pmaddwd"
INTRIN_VNNI = "nasc_u8i8i32_16x4_avx512_vpdpbusd"
ROW_TILE = 4


# ---- the two intrinsics (desc: the computation they replace; impl: the instructions) -----------------


@T.prim_func(s_tir=True)
def _desc4(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((8, 4), "int8", offset_factor=1),
           c: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:8], a[0:4], b[0:8, 0:4])
        T.writes(c[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _impl4(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((8, 4), "int8", offset_factor=1),
           c: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:8], a[0:4], b[0:8, 0:4])
        T.writes(c[0:8])
        x4 = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
        pairs = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
            T.reinterpret(T.broadcast(x4, 8), dtype="int8x32"), b.vload([0, 0], dtype="int8x32"), dtype="int16x16")
        c[T.ramp(T.int32(0), 1, 8)] = c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.broadcast(T.int16(1), 16),
            dtype="int32x8")


@T.prim_func(s_tir=True)
def _desc2(a: T.Buffer((2,), "uint8", offset_factor=1), b: T.Buffer((8, 2), "int8", offset_factor=1),
           c: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:8], a[0:2], b[0:8, 0:2])
        T.writes(c[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _impl2(a: T.Buffer((2,), "uint8", offset_factor=1), b: T.Buffer((8, 2), "int8", offset_factor=1),
           c: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:8], a[0:2], b[0:8, 0:2])
        T.writes(c[0:8])
        x2 = T.reinterpret(T.cast(a.vload([0], "uint8x2"), "int16x2"), dtype="int32")
        c[T.ramp(T.int32(0), 1, 8)] = c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), T.reinterpret(T.broadcast(x2, 8), dtype="int16x16"),
            T.cast(b.vload([0, 0], dtype="int8x16"), "int16x16"), dtype="int32x8")


@T.prim_func(s_tir=True)
def _desc16(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
            c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:4], b[0:16, 0:4])
        T.writes(c[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _impl16(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
            c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:4], b[0:16, 0:4])
        T.writes(c[0:16])
        x4 = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
        c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c.vload([0], dtype="int32x16"),
            T.reinterpret(T.broadcast(x4, 16), dtype="int8x64"), b.vload([0, 0], dtype="int8x64"), dtype="int32x16")


TensorIntrin.register(INTRIN_PAIRS16, _desc4, _impl4, override=True)
TensorIntrin.register(INTRIN_VNNI, _desc16, _impl16, override=True)
TensorIntrin.register(INTRIN_WIDEN16, _desc2, _impl2, override=True)


def pairs_fit_int16(w_kn: object) -> bool:
    """Whether vpmaddubsw's int16 pair sums cannot saturate for weights ``w_kn`` ([K, N] int8, K % 4 == 0):
    ``255 * (|w[2k, n]| + |w[2k+1, n]|) <= 32767`` for every pair it sums."""
    import numpy as np

    w = np.abs(np.asarray(w_kn, np.int32))
    if w.ndim != 2 or w.shape[0] % 4:
        return False
    return bool(255 * int((w[0::2] + w[1::2]).max(initial=0)) <= 32767)


# ---- the template -------------------------------------------------------------------------------


def template_qmatmul_avx2(sch: s_tir.Schedule, lanes: int) -> None:
    """AVX2 (no VNNI): vpmaddubsw where the weight pairs allow, else vpmaddwd."""
    group = 4 if _red(sch).startswith(PAIRS16_BLOCK) else 2
    _template(sch, group, 8, INTRIN_PAIRS16 if group == 4 else INTRIN_WIDEN16)


def template_qmatmul_vnni(sch: s_tir.Schedule, lanes: int) -> None:
    """AVX-512 VNNI: vpdpbusd, 16 columns x 4 reduction steps."""
    _red(sch)
    _template(sch, 4, 16, INTRIN_VNNI)


def _red(sch: s_tir.Schedule) -> str:
    from nasc.backends.tvm.schedules import _blocks, _is_reduction

    reds = [b for b in _blocks(sch) if _is_reduction(sch, b)]
    if len(reds) != 1 or not sch.get(reds[0]).name_hint.startswith("qmatmul"):
        raise ValueError("not an integer matmul")
    return str(sch.get(reds[0]).name_hint)


def _template(sch: s_tir.Schedule, group: int, width: int, intrin: str) -> None:
    """[M, K] uint8 x [K, N] int8 (block ``qmatmul*``) with its elementwise epilogue, the intrinsic covering
    ``width`` columns x ``group`` reduction steps; raises ValueError where the kernel does not fit (the
    caller falls back to the float templates)."""
    from nasc.backends.tvm.schedules import (
        _blocks,
        _divisor_at_most,
        _epilogue_of,
        _extents,
        _inline_spatial,
        _is_reduction,
        _read_index,
        _rhs,
    )

    red = next(b for b in _blocks(sch) if _is_reduction(sch, b))
    _inline_spatial(sch)
    epi = _epilogue_of(sch, red)
    if sch.get(epi).name_hint.endswith("_local"):
        raise ValueError("no epilogue to tile under")
    i, j = sch.get_loops(epi) if len(sch.get_loops(epi)) == 2 else (None, None)
    if i is None or j is None:
        raise ValueError("the integer matmul is not 2-D")
    m, n = _extents(sch, [i, j])
    k_ext = int(sch.get(red).iter_vars[-1].dom.extent)
    if n % width or k_ext % group:
        raise ValueError("columns or reduction not a multiple of the intrinsic's")
    vectors = 2 if n % (2 * width) == 0 else 1
    panel_cols = width * vectors
    rows = _divisor_at_most(m, ROW_TILE)
    i_o, i_i = sch.split(i, factors=[None, rows])
    j_o, j_i = sch.split(j, factors=[None, panel_cols])
    sch.reorder(j_o, i_o, i_i, j_i)
    if n // panel_cols > 1:
        sch.parallel(j_o)
    sch.compute_at(red, i_o)
    inner = sch.get_loops(red)[2:]  # under (j_o, i_o): row, column, k; no row loop for a 1-row tile
    ri, (rj, rk) = (inner[0] if len(inner) == 3 else None), inner[-2:]
    k_o, k_g = sch.split(rk, factors=[None, group])
    j_v, j_8 = sch.split(rj, factors=[vectors, width])
    sch.reorder(*[lp for lp in (k_o, ri, j_v, j_8, k_g) if lp is not None])
    w_buf = _rhs(sch, red)
    panel = sch.cache_read(red, _read_index(sch, red, w_buf), "global")
    sch.compute_at(panel, j_o)
    sch.transform_layout(panel, ("write", 0), lambda k, c: (k // group, c, k % group))
    init = sch.decompose_reduction(red, k_o)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(j_8, intrin)
    if ri is not None:
        sch.unroll(ri)
    sch.unroll(j_v)
    sch.unroll(i_i)
    sch.vectorize(j_i)


def is_qmatmul(sch: s_tir.Schedule) -> bool:
    from nasc.backends.tvm.schedules import _blocks, _is_reduction

    reds = [b for b in _blocks(sch) if _is_reduction(sch, b)]
    return len(reds) == 1 and sch.get(reds[0]).name_hint.startswith("qmatmul")
