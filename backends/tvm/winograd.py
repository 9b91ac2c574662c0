"""Winograd F(2x2, 3x3) for the CPU build's dense 3x3 convolutions (NHWC, stride 1, constant weights).

A 3x3 convolution computed on 2x2 output tiles from 4x4 input tiles takes 16 multiplies per tile instead of
36: the convolution becomes 16 independent matmuls ``[tiles, Ci] x [Ci, Co]`` (one per position in the 4x4
transformed tile) between an input transform and an output transform, each a few additions per element:

    V[ab, p, ci] = (B^T d_p B)[a, b]          d_p: the 4x4 input tile p (zero padding read as 0)
    M[ab]        = V[ab] @ U[ab]              U = G w G^T, the transformed weights, computed at build time
    y[tile p]    = A^T M_p A                  2x2 outputs, then the convolution's epilogue (bias, ReLU, add)

The matmuls run on nasc's matmul template (weights packed at build time); the transforms are elementwise
kernels with their coefficients as constants (0, +-1: exact in float32; the weight transform's halves are
exact too), so the result differs from the direct convolution by float32 rounding only. See Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks" (2016).

Used where it measured faster: at least ``MIN_CHANNELS`` channels in and out, at least ``MIN_TILES`` output
tiles, and tiles x channels at least ``MIN_TILES_X_CHANNELS``. Four 3x3 convolutions in a row, direct against
Winograd (ms, AVX-512 Xeon, 2 cores): 64 channels on 28x28 0.90 / 0.61, 96 on 28x28 2.00 / 1.12, 256 on 14x14
3.53 / 2.47, 128 on 14x14 0.91 / 0.85, 96 on 14x14 0.52 / 0.51; but 64 on 14x14 0.27 / 0.30, 48 on 14x14
0.18 / 0.20, 32 on 56x56 0.91 / 0.93 (thin matmuls, transforms that cost as much as they save). On the deep
7x7 maps the transformed weights (16/9 the size) and a quarter-empty tile grid lose to the direct kernel.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tvm
from tvm import relax

#: F(2x2, 3x3)'s matrices (Lavin & Gray): input transform B^T, weight transform G, output transform A^T.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
ALPHA = 4
TILE = 2
#: output tiles (2x2 each) a convolution needs at least (14x14 maps: 49 tiles) ...
MIN_TILES = 49
#: ... channels in and out ...
MIN_CHANNELS = 64
#: ... and tiles x channels (the fewer of in and out): 14x14 maps need 96 channels, 28x28 ones 64
MIN_TILES_X_CHANNELS = 49 * 96
#: TVM's fusion patterns (relay/op pattern kinds): opaque kernels fuse with nothing; an out-elementwise-fusable
#: one takes the elementwise ops after it
OUT_ELEMWISE_FUSABLE = 4
OPAQUE = 8


def transformed_weights(w_hwio: np.ndarray) -> np.ndarray:
    """U = G w G^T for every (input, output) channel pair: [16, Ci, Co] (row a*4+b of the 4x4 tile)."""
    u = np.einsum("ai,ijck,bj->abck", G, w_hwio.astype(np.float64), G)
    return u.reshape(ALPHA * ALPHA, *w_hwio.shape[2:]).astype(np.float32)


def _input_transform(x: Any, pads: tuple[int, int], tiles: tuple[int, int]) -> Any:
    """V[a*4+b, p, c] = (B^T d B)[a, b] for the 4x4 input tile d of tile p (n, ty, tx), zero padded.

    Row a of B^T has two non-zeros: +1 at f(a) = (0, 1, 2, 1)[a] and s(a) = (-1, +1, -1, -1)[a] at
    g(a) = (2, 2, 1, 3)[a], so each value is four taps, with their indices and signs computed per (a, b) and
    tile: nothing depends on the channel but the taps' address (channel vectors stay contiguous loads)."""
    from tvm import te, tirx

    n, h, w, c = (int(v) for v in x.shape)
    th, tw = tiles
    pt, pl = pads

    def f(a: Any) -> Any:
        return a - 2 * (a // 3)

    def g(a: Any) -> Any:
        return 2 + (a // 2) * (2 * (a % 2) - 1)

    def sign(a: Any) -> Any:
        return tirx.Select(a == 1, tirx.const(1.0, "float32"), tirx.const(-1.0, "float32"))

    def tap(nn: Any, ty: Any, tx: Any, i: Any, j: Any, cc: Any) -> Any:
        y, xx = ty * TILE + i - pt, tx * TILE + j - pl
        inside = tirx.all(y >= 0, y < h, xx >= 0, xx < w)
        return tirx.if_then_else(inside, x[nn, y, xx, cc], tirx.const(0.0, "float32"))

    def value(ab: Any, p: Any, cc: Any) -> Any:
        a, b = ab // ALPHA, ab % ALPHA
        nn, rest = p // (th * tw), p % (th * tw)
        ty, tx = rest // tw, rest % tw
        return (tap(nn, ty, tx, f(a), f(b), cc) + sign(b) * tap(nn, ty, tx, f(a), g(b), cc)
                + sign(a) * (tap(nn, ty, tx, g(a), f(b), cc) + sign(b) * tap(nn, ty, tx, g(a), g(b), cc)))

    return te.compute((ALPHA * ALPHA, n * th * tw, c), value, name="winograd_input")


def _output_transform(m: Any, shape: tuple[int, int, int, int], tiles: tuple[int, int]) -> Any:
    """y[n, h, w, k] = (A^T M_p A)[i, j] for the tile p holding (h, w), i = h % 2, j = w % 2.

    Row i of A^T is +1 at i and s(i) = 1 - 2i at i+1 and i+2: nine terms M[i+da, j+db] per output, with
    coefficients 1, s(i), s(j) or s(i)s(j), all computed per pixel."""
    from tvm import te, tirx

    _, _h, _w, _k = shape
    th, tw = tiles

    def value(nn: Any, yy: Any, xx: Any, kk: Any) -> Any:
        p = (nn * th + yy // TILE) * tw + xx // TILE
        i, j = yy % TILE, xx % TILE
        si = tirx.Cast("float32", 1 - 2 * i)
        sj = tirx.Cast("float32", 1 - 2 * j)
        rows = []
        for da in range(3):
            row = m[(i + da) * ALPHA + j, p, kk] + sj * (m[(i + da) * ALPHA + j + 1, p, kk]
                                                         + m[(i + da) * ALPHA + j + 2, p, kk])
            rows.append(row)
        return rows[0] + si * (rows[1] + rows[2])

    return te.compute(shape, value, name="winograd_output")


def _eligible(call: relax.Call) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(HWIO weights, top and left padding) of an NHWC float 3x3 stride-1 dense convolution with constant weights and a
    map and channel counts that pay for the transforms; None otherwise."""
    attrs = call.attrs
    if (str(attrs.data_layout) != "NHWC" or str(attrs.kernel_layout) != "HWIO" or int(attrs.groups) != 1
            or str(attrs.out_layout) not in ("NHWC", "")
            or any(int(s) != 1 for s in attrs.strides) or any(int(d) != 1 for d in attrs.dilation)):
        return None
    weight = call.args[1]
    if not isinstance(weight, tvm.ir.expr.Constant) or weight.value.dtype != "float32":
        return None
    w = weight.value.numpy()
    dims = list(call.ty.shape) if call.ty.shape is not None else []
    if w.shape[:2] != (3, 3) or len(dims) != 4 or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None  # (a symbolic batch or map: the tile grid must be known at build time)
    out_shape = [int(d) for d in dims]
    ci, co = w.shape[2:]
    tiles = -(-out_shape[1] // TILE) * -(-out_shape[2] // TILE)  # per image
    if min(ci, co) < MIN_CHANNELS or tiles < MIN_TILES or tiles * min(ci, co) < MIN_TILES_X_CHANNELS:
        return None
    top, left = (int(p) for p in list(attrs.padding)[:2])  # (bottom and right: the output shape has them)
    return w, (top, left)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if getattr(call.op, "name", "") != "relax.nn.conv2d":
            return call
        found = _eligible(call)
        if found is None:
            return call
        w, (pt, pl) = found
        shape = tuple(int(v) for v in call.ty.shape)
        tiles = (-(-shape[1] // TILE), -(-shape[2] // TILE))
        v = self._emit(_input_transform, OPAQUE, call.args[0], (pt, pl), tiles, primfunc_name_hint="winograd_input")
        prod = self.builder_.emit(relax.op.matmul(v, relax.const(transformed_weights(w))))
        self.count += 1
        return self._emit(_output_transform, OUT_ELEMWISE_FUSABLE, prod, shape, tiles,
                          primfunc_name_hint="winograd_output")

    def _emit(self, te_func: Any, pattern: int, *args: Any, primfunc_name_hint: str) -> relax.Expr:
        """emit_te, with the kernel's fusion pattern fixed: FuseOps must not fuse an input transform into the
        kernel before it (a previous output transform: each of its taps would recompute nine products), nor
        a transpose into the output transform (its reads would lose their channel-vector order); the
        output transform takes the convolution's elementwise epilogue."""
        var = self.builder_.emit_te(te_func, *args, primfunc_name_hint=primfunc_name_hint)
        gv = self.builder_.lookup_binding(var).args[0]
        func = self.builder_.get()[gv]
        self.builder_.update_func(gv, func.with_attr("op_pattern", pattern))
        return var


def winograd(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``mod`` with its eligible convolutions (see the module doc) computed by Winograd F(2x2, 3x3), and how
    many; ``NASC_WINOGRAD=0`` leaves every convolution direct (to compare)."""
    if os.environ.get("NASC_WINOGRAD", "1") == "0":
        return mod, 0
    mod = relax.transform.FoldConstant()(mod)
    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    if not rewriter.count:
        return mod, 0
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get()), rewriter.count
