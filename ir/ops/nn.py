"""Convolutions, Gemm/MatMul (and their integer forms) and nasc's fused Attention (ONNX opset 21 semantics).

Normalizations, pooling and quantization live in :mod:`nasc.ir.ops.norm_pool`,
which this module imports so that importing ``nn`` registers them too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from nasc.ir.core import Graph, Node, Value
from nasc.ir.dtypes import to_numpy
from nasc.ir.ops.norm_pool import attr_ints, check_dim, infer_shape, known, unify, window_out
from nasc.ir.ops.registry import (
    AxisGroup,
    AxisRef,
    Cost,
    InferenceError,
    OpDef,
    broadcast,
    emit,
    io_bytes,
    numel,
    register,
    shape_of,
    ttype,
)
from nasc.ir.types import UNKNOWN, Dim, Shape, TensorType, Type

# ---- convolutions ---------------------------------------------------------------


def _int_or_none(d: Dim) -> int | None:
    return d if isinstance(d, int) else None


class _ConvBase(OpDef):
    """X [N, C, D...] with weight W; ``transpose`` says W is [C, M/group, k...] instead of [M, C/group, k...]."""

    transpose = False
    out_dtype: str | None = None  # None: the input's element type
    bias_slot: int | None = 2

    def _kernel(self, node: Node, n: int) -> list[int] | None:
        """Kernel spatial dims from ``kernel_shape`` or the weight's shape (None when unknown)."""
        ws = ttype(node, 1).shape
        attr = node.attr("kernel_shape")
        if attr is not None:
            k = [int(v) for v in attr]
            if len(k) != n:
                raise InferenceError(f"{node.describe()}: kernel_shape has {len(k)} dims, input has {n} spatial")
            if ws is not None and len(ws) == n + 2:
                for i, (a, b) in enumerate(zip(k, ws[2:], strict=True)):
                    check_dim(node, b, a, f"weight spatial axis {i} (kernel_shape {k})")
            return k
        if ws is None or not all(isinstance(d, int) for d in ws[2:]):
            return None
        return [int(d) for d in ws[2:]]

    def _check(self, node: Node, xs: Shape) -> Dim:
        """Validate operands; returns the number of result channels."""
        g = int(node.attr("group", 1))
        if g < 1:
            raise InferenceError(f"{node.describe()}: group must be positive, got {g}")
        ws = ttype(node, 1).shape
        if ws is None:
            return UNKNOWN
        if len(ws) != len(xs):
            raise InferenceError(f"{node.describe()}: weight has rank {len(ws)} but input has rank {len(xs)}")
        c = xs[1]
        if self.transpose:
            check_dim(node, ws[0], c, "weight axis 0 (input channels)")
            cout: Dim = ws[1] * g if isinstance(ws[1], int) else UNKNOWN
        else:
            cout = ws[0]
            if isinstance(c, int) and isinstance(ws[1], int) and c != ws[1] * g:
                raise InferenceError(
                    f"{node.describe()}: input has {c} channels but weight expects {ws[1]} (x group {g})"
                )
            if isinstance(cout, int) and cout % g:
                raise InferenceError(f"{node.describe()}: {cout} output channels do not split into {g} groups")
        if self.bias_slot is not None and node.has_input(self.bias_slot):
            bs = ttype(node, self.bias_slot).shape
            if bs is not None:
                if len(bs) != 1:
                    raise InferenceError(f"{node.describe()}: bias must be 1-D, got shape {bs}")
                check_dim(node, bs[0], cout, "bias")
        return cout

    def _spatial(self, node: Node, xs: Shape, kernel: list[int]) -> list[Dim]:
        return window_out(node, xs[2:], kernel)

    def infer(self, node: Node) -> list[Type]:
        x = ttype(node, 0)
        dt = self.out_dtype or x.dtype
        if x.shape is None:
            return [TensorType(dt, None)]
        xs = x.shape
        if len(xs) < 3:
            raise InferenceError(f"{node.describe()}: input must have rank >= 3 ([N, C, D...]), got {len(xs)}")
        cout = self._check(node, xs)
        kernel = self._kernel(node, len(xs) - 2)
        sp = [UNKNOWN] * (len(xs) - 2) if kernel is None else self._spatial(node, xs, kernel)
        return [TensorType(dt, (xs[0], cout, *sp))]

    def cost(self, node: Node) -> Cost:
        xs, ws = ttype(node, 0).shape, ttype(node, 1).shape
        if xs is None or ws is None:
            return Cost(0, io_bytes(node))
        g = int(node.attr("group", 1))
        kernel = math.prod(d if isinstance(d, int) else 0 for d in ws[2:])
        if self.transpose:  # every input pixel scatters into Cout/group x kernel outputs
            macs = numel(xs) * numel(ws[1:2]) * kernel
        else:
            os_ = infer_shape(node)
            macs = numel(os_) * numel(xs[1:2]) // g * kernel if os_ is not None else 0
        return Cost(macs, io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        if not known(node, 0, 1, 2, 3):
            return []
        xs, ws = shape_of(node, 0), shape_of(node, 1)
        g = int(node.attr("group", 1))
        extra: list[AxisRef] = []
        if self.bias_slot is not None and node.has_input(self.bias_slot):
            extra.append(("in", self.bias_slot, 0))
        if not self.transpose and node.has_input(3):  # ConvInteger: per-output-channel weight zero point
            zs = ttype(node, 3).shape
            if zs is not None and len(zs) == 1 and zs[0] != 1:
                extra.append(("in", 3, 0))
        batch = AxisGroup((("in", 0, 0), ("out", 0, 0)))
        w_out, w_in = (1, 0) if self.transpose else (0, 1)
        if g == 1:
            return [
                batch,
                AxisGroup((("out", 0, 1), ("in", 1, w_out), *extra)),
                AxisGroup((("in", 0, 1), ("in", 1, w_in))),
            ]
        cin, per = _int_or_none(xs[1]), _int_or_none(ws[1])
        cout = _int_or_none(ws[0]) if not self.transpose else (per * g if per is not None else None)
        if cin == g and per == 1 and (self.transpose or cout == cin):
            return [batch, AxisGroup((("in", 0, 1), ("out", 0, 1), ("in", 1, 0), *extra))]
        if self.transpose or cin is None or per is None or cout is None:
            return [batch]
        if cin == g and per == 1:  # depthwise with a channel multiplier: input c feeds outputs c*m .. c*m+m-1
            return [batch, AxisGroup((("out", 0, 1), ("in", 1, 0), *extra)),
                    AxisGroup((("out", 0, 1), ("in", 0, 1)), "digit", (cout // cin, cin))]
        # a grouped conv keeps the same count per group: local channel j goes from every group at once
        return [batch, AxisGroup((("in", 0, 1), ("in", 1, 1)), "digit", (1, per)),
                AxisGroup((("out", 0, 1), ("in", 1, 0), *extra), "modulo", (cout // g,))]

    def prune(self, graph: Graph, node: Node, kept: Callable[[AxisRef], np.ndarray | None]) -> None:
        g = int(node.attr("group", 1))
        kin = kept(("in", 0, 1))
        if g > 1 and kin is not None and shape_of(node, 0)[1] == g and shape_of(node, 1)[1] == 1:
            node.attrs["group"] = len(kin)  # depthwise: one group per remaining channel


@register
class Conv(_ConvBase):
    name = "Conv"


@register
class ConvInteger(_ConvBase):
    """Conv on 8-bit operands (x, w, x_zero_point, w_zero_point) with an i32 result."""

    name = "ConvInteger"
    out_dtype = "i32"
    bias_slot = None


@register
class ConvTranspose(_ConvBase):
    """Weight [C, M/group, k...]; result dims from output_shape, else s*(in-1)+output_padding+eff_k-pads."""

    name = "ConvTranspose"
    transpose = True

    def _spatial(self, node: Node, xs: Shape, kernel: list[int]) -> list[Dim]:
        n = len(xs) - 2
        given = node.attr("output_shape")
        if given is not None:
            vals = [int(v) for v in given]
            if len(vals) == n + 2:
                vals = vals[2:]
            if len(vals) != n:
                raise InferenceError(f"{node.describe()}: output_shape has {len(vals)} dims, expected {n}")
            return list(vals)
        strides = attr_ints(node, "strides", n, 1)
        dil = attr_ints(node, "dilations", n, 1)
        opad = attr_ints(node, "output_padding", n, 0)
        ek = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
        pads = attr_ints(node, "pads", 2 * n, 0)
        auto = str(node.attr("auto_pad", "NOTSET"))
        if node.attr("pads") is None and auto in ("SAME_UPPER", "SAME_LOWER"):
            for i in range(n):  # total pad = eff_k - stride, so that out = in * stride
                total = max(0, ek[i] - strides[i])
                small, big = total // 2, total - total // 2
                pads[i], pads[i + n] = (small, big) if auto == "SAME_UPPER" else (big, small)
        out: list[Dim] = []
        for i, d in enumerate(xs[2:]):
            if not isinstance(d, int):
                out.append(UNKNOWN)
                continue
            size = strides[i] * (d - 1) + opad[i] + ek[i] - pads[i] - pads[i + n]
            if size < 1:
                raise InferenceError(f"{node.describe()}: result spatial axis {i} would have size {size}")
            out.append(size)
        return out


# ---- matrix products --------------------------------------------------------------


@register
class Gemm(OpDef):
    """Y = alpha * op(A) @ op(B) + beta * C, with op = transpose by transA/transB; C broadcasts to [M, N]."""

    name = "Gemm"

    def _mnk(self, node: Node) -> tuple[Dim, Dim, Dim] | None:
        a, b = ttype(node, 0).shape, ttype(node, 1).shape
        if a is None or b is None:
            return None
        if len(a) != 2 or len(b) != 2:
            raise InferenceError(f"{node.describe()}: A and B must be 2-D, got shapes {a} and {b}")
        ta, tb = int(node.attr("transA", 0)), int(node.attr("transB", 0))
        m, ka = (a[1], a[0]) if ta else (a[0], a[1])
        kb, n = (b[1], b[0]) if tb else (b[0], b[1])
        if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
            raise InferenceError(f"{node.describe()}: inner dims differ: A gives K={ka}, B gives K={kb}")
        return m, n, ka if isinstance(ka, int) else kb

    def infer(self, node: Node) -> list[Type]:
        dt = ttype(node, 0).dtype
        mnk = self._mnk(node)
        if mnk is None:
            return [TensorType(dt, None)]
        m, n, _ = mnk
        if node.has_input(2):
            cs = ttype(node, 2).shape
            if cs is not None:
                if len(cs) > 2:
                    raise InferenceError(f"{node.describe()}: C must have rank <= 2, got shape {cs}")
                for d, want in zip(cs, (m, n)[2 - len(cs):], strict=True):
                    if d != 1:
                        check_dim(node, d, want, "C (broadcast to [M, N])")
        return [TensorType(dt, (m, n))]

    def cost(self, node: Node) -> Cost:
        mnk = self._mnk(node)
        return Cost(numel(mnk) if mnk is not None else 0, io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        if not known(node, 0, 1, 2):
            return []
        ta, tb = int(node.attr("transA", 0)), int(node.attr("transB", 0))
        m_grp: list[AxisRef] = [("in", 0, 1 if ta else 0), ("out", 0, 0)]
        n_grp: list[AxisRef] = [("in", 1, 0 if tb else 1), ("out", 0, 1)]
        if node.has_input(2):
            cs = shape_of(node, 2)
            if len(cs) >= 1 and cs[-1] != 1:
                n_grp.append(("in", 2, len(cs) - 1))
            if len(cs) == 2 and cs[0] != 1:
                m_grp.append(("in", 2, 0))
        k_grp: tuple[AxisRef, ...] = (("in", 0, 0 if ta else 1), ("in", 1, 1 if tb else 0))
        return [AxisGroup(k_grp), AxisGroup(tuple(n_grp)), AxisGroup(tuple(m_grp))]


class _MatMulBase(OpDef):
    """numpy matmul: 1-D operands are promoted (and the added axis dropped), batch axes broadcast."""

    out_dtype: str | None = None

    def _parts(self, node: Node) -> tuple[Shape, Shape, Shape] | None:
        """(A, B, broadcast batch) shapes, or None when a rank is unknown."""
        a, b = ttype(node, 0).shape, ttype(node, 1).shape
        if a is None or b is None:
            return None
        if not a or not b:
            raise InferenceError(f"{node.describe()}: operands must have rank >= 1, got shapes {a} and {b}")
        a2 = (1, *a) if len(a) == 1 else a
        b2 = (*b, 1) if len(b) == 1 else b
        if isinstance(a2[-1], int) and isinstance(b2[-2], int) and a2[-1] != b2[-2]:
            raise InferenceError(f"{node.describe()}: inner dims differ: {a} @ {b}")
        return a, b, broadcast(node, [a2[:-2], b2[:-2]])

    def infer(self, node: Node) -> list[Type]:
        dt = self.out_dtype or ttype(node, 0).dtype
        parts = self._parts(node)
        if parts is None:
            return [TensorType(dt, None)]
        a, b, batch = parts
        out = list(batch)
        if len(a) > 1:
            out.append(a[-2])
        if len(b) > 1:
            out.append(b[-1])
        return [TensorType(dt, tuple(out))]

    def cost(self, node: Node) -> Cost:
        parts = self._parts(node)
        if parts is None:
            return Cost(0, io_bytes(node))
        a, b, batch = parts
        k = a[-1] if isinstance(a[-1], int) else b[0 if len(b) == 1 else -2]
        m = a[-2] if len(a) > 1 else 1
        n = b[-1] if len(b) > 1 else 1
        return Cost(numel((*batch, m, n, k)), io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        parts = self._parts(node)
        if parts is None:
            return []
        a, b, batch = parts
        ra, rb, nb = len(a), len(b), len(batch)
        ro = nb + (ra > 1) + (rb > 1)
        groups: list[AxisGroup] = []
        for k in range(nb):
            m: list[AxisRef] = [("out", 0, k)]
            for slot, s in ((0, a), (1, b)):
                j = len(s) - 2 - nb + k
                if len(s) > 2 and j >= 0 and s[j] != 1:
                    m.append(("in", slot, j))
            groups.append(AxisGroup(tuple(m)))
        zp_a, zp_b = self._zero_point_axes(node)
        if ra > 1:
            groups.append(AxisGroup((("in", 0, ra - 2), ("out", 0, ro - 1 if rb == 1 else ro - 2), *zp_a)))
        groups.append(AxisGroup((("in", 0, ra - 1), ("in", 1, rb - 2 if rb > 1 else 0))))
        if rb > 1:
            groups.append(AxisGroup((("in", 1, rb - 1), ("out", 0, ro - 1), *zp_b)))
        return groups

    def _zero_point_axes(self, node: Node) -> tuple[list[AxisRef], list[AxisRef]]:
        return [], []


@register
class MatMul(_MatMulBase):
    name = "MatMul"


@register
class MatMulInteger(_MatMulBase):
    """MatMul on 8-bit operands (a, b, a_zero_point, b_zero_point) with an i32 result."""

    name = "MatMulInteger"
    out_dtype = "i32"

    def _zero_point_axes(self, node: Node) -> tuple[list[AxisRef], list[AxisRef]]:
        res: tuple[list[AxisRef], list[AxisRef]] = ([], [])
        for slot, lst in ((2, res[0]), (3, res[1])):
            if node.has_input(slot):
                zs = ttype(node, slot).shape
                if zs is not None and len(zs) == 1 and zs[0] != 1:  # per-row (A) / per-column (B)
                    lst.append(("in", slot, 0))
        return res


# ---- attention ---------------------------------------------------------------------


@register
class Attention(OpDef):
    """nasc fused attention: softmax(q @ k^T * scale + mask) @ v over q, k, v [B, H, S, D] -> [B, H, Sq, Dv]."""

    name = "Attention"
    domain = "nasc"

    def _dims(self, node: Node) -> tuple[Dim, Dim, Dim, Dim, Dim, Dim] | None:
        """(B, H, Sq, Sk, D, Dv), validated; None when a rank is unknown."""
        shapes = [ttype(node, i).shape for i in range(3)]
        if any(s is None for s in shapes):
            return None
        q, k, v = shapes
        assert q is not None and k is not None and v is not None
        for name, s in (("q", q), ("k", k), ("v", v)):
            if len(s) != 4:
                raise InferenceError(f"{node.describe()}: {name} must be [B, H, S, D], got shape {s}")
        b = unify(node, [q[0], k[0], v[0]], "batch sizes of q, k, v")
        h = unify(node, [q[1], k[1], v[1]], "head counts of q, k, v")
        sk = unify(node, [k[2], v[2]], "sequence lengths of k and v")
        d = unify(node, [q[3], k[3]], "head sizes of q and k")
        if node.has_input(3):
            ms = ttype(node, 3).shape
            if ms is not None:
                target = (b, h, q[2], sk)
                if len(ms) > 4:
                    raise InferenceError(f"{node.describe()}: mask has rank {len(ms)} > 4")
                for md, td in zip(ms, target[4 - len(ms):], strict=True):
                    if isinstance(md, int) and isinstance(td, int) and md not in (1, td):
                        raise InferenceError(f"{node.describe()}: mask shape {ms} does not broadcast to {target}")
        return b, h, q[2], sk, d, v[3]

    def infer(self, node: Node) -> list[Type]:
        dt = ttype(node, 0).dtype
        dims = self._dims(node)
        if dims is None:
            return [TensorType(dt, None)]
        b, h, sq, _, _, dv = dims
        return [TensorType(dt, (b, h, sq, dv))]

    def cost(self, node: Node) -> Cost:
        dims = self._dims(node)
        if dims is None:
            return Cost(0, io_bytes(node))
        b, h, sq, sk, d, dv = dims
        dd = d + dv if isinstance(d, int) and isinstance(dv, int) else UNKNOWN
        return Cost(numel((b, h, sq, sk, dd)), io_bytes(node))

    def channels(self, node: Node) -> list[AxisGroup]:
        if self._dims(node) is None or not known(node, 3):
            return []
        mask: list[list[AxisRef]] = [[], [], [], []]
        if node.has_input(3):
            ms = shape_of(node, 3)
            for j, d in enumerate(ms):
                if d != 1:
                    mask[4 - len(ms) + j].append(("in", 3, j))
        return [
            AxisGroup((("in", 0, 0), ("in", 1, 0), ("in", 2, 0), ("out", 0, 0), *mask[0])),
            AxisGroup((("in", 0, 1), ("in", 1, 1), ("in", 2, 1), ("out", 0, 1), *mask[1])),
            AxisGroup((("in", 0, 2), ("out", 0, 2), *mask[2])),
            AxisGroup((("in", 1, 2), ("in", 2, 2), *mask[3])),
            AxisGroup((("in", 0, 3), ("in", 1, 3))),
            AxisGroup((("in", 2, 3), ("out", 0, 3))),
        ]

    def prune(self, graph: Graph, node: Node, kept: Callable[[AxisRef], np.ndarray | None]) -> None:
        if node.attr("scale") is None and kept(("in", 0, 3)) is not None:
            node.attrs["scale"] = self.scale(node)  # the default follows the head size: keep the old one

    def decompose(self, graph: Graph, node: Node) -> list[Value] | None:
        """ONNX Attention where the graph's opset has it (23+), else softmax(q @ k^T * scale + mask) @ v."""
        q, k, v = node.input(0), node.input(1), node.input(2)
        # ONNX Attention (as ORT implements it) wants a 2-4-D mask spelling out the query length
        mask_ok = not node.has_input(3) or (len(shape_of(node, 3)) >= 2
                                            and shape_of(node, 3)[-2] == shape_of(node, 0)[2])
        if graph.opsets.get("", 0) >= 23 and mask_ok:
            onnx_att = graph.make_node("Attention", list(node.inputs), [node.outputs[0].type],
                                       {"scale": self.scale(node)}, scope=node.scope, name=node.name, before=node)
            return list(onnx_att.outputs)
        kt = emit(graph, node, "Transpose", [k], {"perm": (0, 1, 3, 2)})
        scores = emit(graph, node, "MatMul", [q, kt])
        scale = graph.add_constant(np.array(self.scale(node), dtype=to_numpy(q.dtype)), f"{node.name}/scale")
        scores = emit(graph, node, "Mul", [scores, scale])
        if node.has_input(3):
            scores = emit(graph, node, "Add", [scores, node.input(3)])
        probs = emit(graph, node, "Softmax", [scores], {"axis": -1})
        return [emit(graph, node, "MatMul", [probs, v])]

    def scale(self, node: Node) -> float:
        """The softmax scale: the ``scale`` attribute, else 1/sqrt(D)."""
        s = node.attr("scale")
        if s is not None:
            return float(s)
        d = ttype(node, 0).shape
        if d is None or not isinstance(d[-1], int):
            raise InferenceError(f"{node.describe()}: no 'scale' and q's head size is unknown")
        return 1.0 / math.sqrt(d[-1])

