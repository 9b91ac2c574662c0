"""uint8 x int8 -> int32 matmul kernels for x86 CPUs, tensorized by hand.

Left to LLVM, nasc's integer matmuls (vectorized along the columns) become 16-bit multiplies of one product
per lane, about half the speed of the float32 kernels. The ``qmatmul_x86`` template instead tensorizes the
inner 8 (16) columns x ``G`` reduction steps with one exact intrinsic:

* with AVX-512 VNNI: ``vpdpbusd`` (16 columns, ``G = 4``; its 256-bit form, 8 columns, where 16 do not divide
  the columns), uint8 x int8 quadruples summed into int32;

* ``vpmaddubsw`` + ``vpmaddwd`` (``G = 4``): uint8 x int8 pairs summed in int16, then pairs of those in int32.
  vpmaddubsw saturates an int16 pair sum, so this is used only where every pair of weights that it sums
  satisfies ``255 * (|w0| + |w1|) <= 32767`` (always true for 7-bit weights, ``quantize{reduce-range=true}``).
  The lowering (``qops._qmatmul_te``) checks the weight values and names the compute block ``qmatmul_pairs16``;
* ``vpmaddwd`` (``G = 2``): operands widened to int16, pairs summed in int32; exact for any int8 weight.

The weight is read in ``[K/G, P, G]`` panels (the reduction step's ``G`` weights of one column next to each
other), so that one vector load feeds the intrinsic; ``P`` columns per panel, a few rows per register tile. A
constant weight is packed once at build time, panel after panel; any other each parallel task packs itself. A
convolution's patches may be copied inside the kernel, a row tile at a time (qops._patches_in_kernel).
Results equal the numpy reference bit for bit (tests/backends).
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

PAIRS16_BLOCK = "qmatmul_pairs16"  # the compute block name of a matmul whose weight pairs fit vpmaddubsw
#: the register tile: at most this many rows, and rows x column vectors accumulators at most MAX_ACC
ROW_TILE = 8
MAX_ACC = 16
_SHORT = {"uint8": "u8", "int8": "i8"}


def _intrinsic(kind: str, a_dtype: str, b_dtype: str) -> tuple[str, int, int]:
    """Register (once) and name the intrinsic ``kind`` ("pairs16" | "widen16" | "vnni" | "vnni8") for ``c[w] +=
    sum_g a[g] * b[w, g]`` with a (the broadcast operand) and b (the packed panel) of the given dtypes, one
    uint8 and one int8; returns (name, width w, group g)."""
    width, group = {"pairs16": (8, 4), "widen16": (8, 2), "vnni": (16, 4), "vnni8": (8, 4)}[kind]
    name = f"nasc_{_SHORT[a_dtype]}{_SHORT[b_dtype]}i32_{width}x{group}_{kind}"
    if name in _REGISTERED:
        return name, width, group
    a_unsigned = a_dtype == "uint8"

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((group,), a_dtype, offset_factor=1), b: T.Buffer((width, group), b_dtype, offset_factor=1),
             c: T.Buffer((width,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:width], a[0:group], b[0:width, 0:group])
            T.writes(c[0:width])
            for i in T.serial(0, width):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    def body(a: Any, b: Any, c: Any) -> Any:
        """The ``width`` int32 results (``c`` plus the products) by the instructions of ``kind``."""
        acc = c.vload([0], dtype=f"int32x{width}")
        if kind == "widen16":  # both widened to int16 (zero- or sign-extended by dtype), vpmaddwd: pairs -> int32
            pair = T.reinterpret(T.cast(a.vload([0], a_dtype + "x2"), "int16x2"), dtype="int32")
            return acc + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), T.reinterpret(T.broadcast(pair, 8), dtype="int16x16"),
                T.cast(b.vload([0, 0], dtype=b_dtype + "x16"), "int16x16"), dtype="int32x8")
        lanes = width * group
        quad = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], a_dtype + "x4"), dtype="int32"), width),
                             dtype=f"int8x{lanes}")
        panel = T.reinterpret(b.vload([0, 0], dtype=f"{b_dtype}x{lanes}"), dtype=f"int8x{lanes}")
        unsigned, signed = (quad, panel) if a_unsigned else (panel, quad)
        if kind in ("vnni", "vnni8"):  # vpdpbusd: unsigned x signed byte quadruples summed into int32
            return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(f"llvm.x86.avx512.vpdpbusd.{8 * lanes}"),
                                           acc, unsigned, signed, dtype=f"int32x{width}")
        # vpmaddubsw: unsigned x signed byte pairs -> int16; vpmaddwd by 1: pairs of those -> int32
        pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), unsigned, signed,
                                        dtype="int16x16")
        return acc + T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs,
                                             T.broadcast(T.int16(1), 16), dtype="int32x8")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((group,), a_dtype, offset_factor=1), b: T.Buffer((width, group), b_dtype, offset_factor=1),
             c: T.Buffer((width,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:width], a[0:group], b[0:width, 0:group])
            T.writes(c[0:width])
            c[T.ramp(T.int32(0), 1, width)] = body(a, b, c)

    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED.add(name)
    return name, width, group


_REGISTERED: set[str] = set()


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
    _template(sch, ("pairs16",) if sch.get(_qmatmul_block(sch)).name_hint.startswith(PAIRS16_BLOCK) else ("widen16",),
              lanes)


def template_qmatmul_vnni(sch: s_tir.Schedule, lanes: int) -> None:
    """AVX-512 VNNI: vpdpbusd, 16 columns x 4 reduction steps (8 columns, the 256-bit form, for a column count
    that 16 does not divide: MobileNetV2's 24-channel layers)."""
    _template(sch, ("vnni", "vnni8"), lanes)


def _qmatmul_block(sch: s_tir.Schedule) -> s_tir.schedule.SBlockRV:
    """The kernel's single reduction block when it is an integer matmul (``qmatmul*``); ValueError if not."""
    from nasc.backends.tvm.schedules import _blocks, _is_reduction

    reds = [b for b in _blocks(sch) if _is_reduction(sch, b)]
    if len(reds) != 1 or not sch.get(reds[0]).name_hint.startswith("qmatmul"):
        raise ValueError("not an integer matmul")
    return reds[0]


def _template(sch: s_tir.Schedule, kinds: tuple[str, ...], lanes: int) -> None:
    """[M, K] x [K, N] (block ``qmatmul*``, one operand uint8 and the other int8) with its elementwise
    epilogue, tensorized with the first of the ``kinds`` intrinsics whose width divides N; raises ValueError
    where the kernel does not fit (the caller falls back to the float templates)."""
    from nasc.backends.tvm.schedules import (
        _blocks,
        _copy_runs,
        _divisor_at_most,
        _epilogue_of,
        _extents,
        _inline_spatial,
        _prepack,
        _read_index,
        _rhs,
        _schedule_spatial_block,
    )

    red = _qmatmul_block(sch)
    w_buf = _rhs(sch, red)
    dtypes = {str(r.source.dtype) for r in sch.get(red).reads if not r.source.same_as(w_buf)}
    if len(dtypes) != 1 or {*dtypes, str(w_buf.dtype)} != {"uint8", "int8"}:
        raise ValueError("operands are not one uint8 and one int8")
    a_dtype = dtypes.pop()
    # a convolution's patches copied in the kernel (qops._patches_in_kernel): the copy and its padded input stay
    # blocks of their own, the copy placed under each row tile
    patches = [b for b in _blocks(sch) if sch.get(b).name_hint.startswith("im2col_r")]
    _inline_spatial(sch, keep=(*patches, *(p for b in patches for p in sch.get_producers(b))))
    epi = _epilogue_of(sch, red)
    if sch.get(epi).name_hint.endswith("_local"):
        raise ValueError("no epilogue to tile under")
    i, j = sch.get_loops(epi) if len(sch.get_loops(epi)) == 2 else (None, None)
    if i is None or j is None:
        raise ValueError("the integer matmul is not 2-D")
    m, n = _extents(sch, [i, j])
    fits = [_intrinsic(kind, a_dtype, str(w_buf.dtype)) for kind in kinds]
    k_ext = int(sch.get(red).iter_vars[-1].dom.extent)
    intrin, width, group = next((f for f in fits if n % f[1] == 0), fits[-1])
    if n % width or k_ext % group:
        raise ValueError("columns or reduction not a multiple of the intrinsic's")
    vectors = 2 if n % (2 * width) == 0 else 1
    panel_cols = width * vectors
    rows = _divisor_at_most(m, min(ROW_TILE, MAX_ACC // vectors))
    i_o, i_i = sch.split(i, factors=[None, rows])
    j_o, j_i = sch.split(j, factors=[None, panel_cols])
    sch.reorder(j_o, i_o, i_i, j_i)
    # a weight that is not a constant, packed by each task as [K/group, P, group]: each step's group x width
    # block contiguous
    def grouped(k: Any, c: Any) -> tuple[Any, Any, Any]:
        return k // group, c, k % group

    # packed once at build time when it is a constant, panel by panel ([N/P, K/G, P, G]: a task streams its
    # panel from contiguous memory; in [K/G, N, G] order each reduction step jumped N*G bytes, and ResNet-18's
    # 7x7x512 layers (a 2.4 MB weight) ran 0.40 against 0.18 ms). The tasks then split panels x row tiles, the
    # bigger operand's loop outermost so that it is read once: the rows when the patches outweigh the weight
    # (ResNet-18's 56x56x64 layers, two panels; panels outermost, each core read all 1.8 MB of patches and the
    # int8 net ran 5.5 against 4.7 ms), else the panels, each staying in cache across every row tile.
    # A weight that is not a constant is packed by each task, its own column panel.
    prepacked = _prepack(sch, red, w_buf, lambda k, c: (c // panel_cols, k // group, c % panel_cols, k % group))
    rows_outer = m > n
    if patches and not (prepacked and rows_outer):  # (qops copies patches in the kernel only then)
        raise ValueError("patches copied in the kernel need a constant weight and more rows than columns")
    if prepacked and rows_outer:
        sch.reorder(i_o, j_o)
    if patches:  # row tiles in parallel, each tile's patches copied once for all its panels
        sch.parallel(i_o)
        tile = j_o
    elif prepacked:
        tile = sch.fuse(*((i_o, j_o) if rows_outer else (j_o, i_o)))
        sch.parallel(tile)
    else:
        tile = i_o
        if n // panel_cols > 1:
            sch.parallel(j_o)
    sch.compute_at(red, tile)
    if patches:
        sch.compute_at(patches[0], i_o)
        _copy_runs(sch, patches[0], sch.get_loops(patches[0])[-1])
        for pad in sch.get_producers(patches[0]):
            _schedule_spatial_block(sch, pad, lanes)
    # under the tile loop(s): row, column, k; no row loop for a 1-row tile
    inner = sch.get_loops(red)[1 if prepacked and not patches else 2:]
    ri, (rj, rk) = (inner[0] if len(inner) == 3 else None), inner[-2:]
    k_o, k_g = sch.split(rk, factors=[None, group])
    j_v, j_8 = sch.split(rj, factors=[vectors, width])
    sch.reorder(*[lp for lp in (k_o, ri, j_v, j_8, k_g) if lp is not None])
    if not prepacked:
        panel = sch.cache_read(red, _read_index(sch, red, w_buf), "global")
        sch.compute_at(panel, j_o)
        sch.transform_layout(panel, ("write", 0), grouped)
    init = sch.decompose_reduction(red, k_o)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(j_8, intrin)
    if ri is not None:
        sch.unroll(ri)
    sch.unroll(j_v)
    sch.unroll(i_i)
    sch.vectorize(j_i)


def is_qmatmul(sch: s_tir.Schedule) -> bool:
    try:
        _qmatmul_block(sch)
    except ValueError:
        return False
    return True


def register_intrinsics() -> None:
    """Register every intrinsic of this module (about 2 s of TVMScript parsing; the templates register what
    they use): needed before tuning records that tensorize with them are replayed."""
    for kind in ("pairs16", "widen16", "vnni", "vnni8"):
        for a, b in (("uint8", "int8"), ("int8", "uint8")):
            _intrinsic(kind, a, b)
