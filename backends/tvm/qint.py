"""QDQ patterns -> integer ops, their Relax lowerings, and a numpy reference of the integer graph.

TVM 0.27 legalizes quantize/dequantize to float arithmetic, so a QDQ model compiled as it is computes in
float. :func:`integerize` rewrites, on a copy of the graph:

- ``Q(act(Conv(DQ(x), DQ(w), DQ(b))))`` -> ``nasc.QConv`` (also Gemm, and MatMul by a constant weight,
  -> ``nasc.QGemm``), ReLU / ReLU6 / Clip folded into the output clamp;
- ``MatMul(DQ(x), DQ(w))`` (+ a constant bias) whose output stays float -> ``nasc.QMatMul`` (the int32
  accumulator, bias folded in) and a DequantizeLinear by ``s_x * s_w``: a transformer's projections;
- ``Q(act(Add(DQ(a), DQ(b))))`` -> ``nasc.QAdd``; ``Q(GlobalAveragePool(DQ(x)))`` (or an AveragePool over the
  whole map) -> ``nasc.QGlobalAveragePool``;
- ``Q(Flatten|Reshape|MaxPool(DQ(x)))`` with equal quantization -> the op on the uint8 data;
- ``Q(DQ(x))`` with equal quantization -> ``x``.

What is left runs in float between a DequantizeLinear and a QuantizeLinear; :func:`integerize` lists those
ops. The arithmetic (zero points, int32 accumulation, fixed-point requantization, rounding) is defined
once, in ``nasc.ir.ops.quant``, whose numpy ``fold`` is the reference: :func:`reference_run`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasc.backends.tvm.x86_int8 import pairs_fit_int16
from nasc.ir.core import Graph, Node, Value
from nasc.ir.ops.quant import quantize_multiplier
from nasc.ir.ops.registry import lookup_node, type_node
from nasc.ir.types import TensorType
from nasc.passes.quantize import FOLDED_ACTIVATIONS

_ACTS = FOLDED_ACTIVATIONS


@dataclass
class IntegerReport:
    integer: dict[str, int] = field(default_factory=dict)  # integer op -> count
    float_ops: list[str] = field(default_factory=list)  # "Softmax at node 'x'" for ops left in float
    # integer matmuls (QGemm, QMatMul, 1x1 QConv) and those whose weight pairs could saturate int16 (so the
    # AVX2 kernels use vpmaddwd instead of vpmaddubsw, see x86_int8)
    matmuls: int = 0
    wide_pairs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"integer_ops": self.integer, "float_ops": self.float_ops, "matmuls": self.matmuls,
                "matmuls_with_wide_weight_pairs": self.wide_pairs}


@dataclass
class _QParams:
    q: Value
    scale: np.ndarray
    zp: np.ndarray
    axis: int

    @property
    def scalar(self) -> bool:
        return self.scale.size == 1 and self.zp.size <= 1


def _const(v: Value | None) -> np.ndarray | None:
    return np.asarray(v.data) if v is not None and v.is_const else None


def _dq(v: Value | None) -> _QParams | None:
    p = v.producer if v is not None else None
    if p is None or p.qualified_op != "DequantizeLinear":
        return None
    s = _const(p.input(1))
    z = _const(p.input(2)) if p.has_input(2) else np.zeros(1, np.int64)
    if s is None or z is None:
        return None
    return _QParams(p.input(0), s.astype(np.float64).reshape(-1), z.astype(np.int64).reshape(-1),
                    int(p.attr("axis", 1)))


def _q_of(v: Value) -> tuple[Node, float, int, list[Node]] | None:
    """The QuantizeLinear that ``v`` reaches through a single-reader chain of activations."""
    chain: list[Node] = []
    while len(v.uses) == 1:
        node, _ = v.uses[0]
        if node.qualified_op == "QuantizeLinear":
            s, z = _const(node.input(1)), _const(node.input(2)) if node.has_input(2) else None
            if s is None or s.size != 1 or node.outputs[0].dtype != "u8":
                return None
            return node, float(s.reshape(-1)[0]), int(z.reshape(-1)[0]) if z is not None else 0, chain
        if node.qualified_op not in _ACTS:
            return None
        chain.append(node)
        v = node.outputs[0]
    return None


def _bias_add(v: Value, channels: int) -> tuple[Node, np.ndarray] | None:
    """The ``Add(v, b)`` that is ``v``'s only reader, with b a constant vector over the last axis."""
    if len(v.uses) != 1 or v.uses[0][0].qualified_op != "Add":
        return None
    add = v.uses[0][0]
    other = add.input(1 - v.uses[0][1])
    b = _const(other)
    if b is None or other.dtype != "f32" or b.size != channels or (b.ndim and b.shape[-1] != channels):
        return None
    if add.outputs[0].shape != v.shape:
        return None
    return add, b.astype(np.float64).reshape(-1)


def _clamp(chain: list[Node], scale: float, zp: int) -> tuple[int, int]:
    lo, hi = 0, 255
    for n in chain:
        if n.qualified_op == "Relu":
            lo_f, hi_f = 0.0, None
        elif n.qualified_op == "nasc.Relu6":
            lo_f, hi_f = 0.0, 6.0
        else:
            a, b = _const(n.input(1)) if n.has_input(1) else None, _const(n.input(2)) if n.has_input(2) else None
            lo_f = float(a.reshape(-1)[0]) if a is not None else None
            hi_f = float(b.reshape(-1)[0]) if b is not None else None
        if lo_f is not None:
            lo = max(lo, min(255, zp + int(np.round(lo_f / scale))))
        if hi_f is not None:
            hi = min(hi, max(0, zp + int(np.round(hi_f / scale))))
    return lo, hi


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b))


class _Integerizer:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.report = IntegerReport()

    def run(self) -> None:
        changed = True
        while changed:
            changed = False
            for node in list(self.g.nodes):
                if node.graph is None:
                    continue
                fn = getattr(self, "_" + node.qualified_op.replace(".", "_"), None)
                if fn is not None and fn(node):
                    changed = True
            self.g.remove_dead()
        self._list_float_ops()

    def _emit(self, anchor: Node, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any]) -> Value:
        w = inputs[1].data if op in ("QGemm", "QMatMul", "QConv") and inputs[1] is not None else None
        if w is not None and (op != "QConv" or w.shape[2:] == (1, 1)):
            self.report.matmuls += 1
            self.report.wide_pairs += not pairs_fit_int16(np.asarray(w).reshape(w.shape[0], -1).T)
        node = self.g.make_node(op, list(inputs), [TensorType("u8", None)], attrs, domain="nasc" if op.startswith(
            "Q") else "", scope=anchor.scope, name=f"{anchor.name}/int", before=anchor)
        type_node(node)
        self.report.integer[op] = self.report.integer.get(op, 0) + 1
        return node.outputs[0]

    def _take_over(self, old: Value, new: Value) -> bool:
        """``new`` replaces ``old`` for every reader (and keeps its name where it is a graph output)."""
        self.g.replace_all_uses_with(old, new)
        if any(o is new for o in self.g.outputs):
            new.name = old.name
        return True

    def _consts(self, anchor: Node, **arrays: np.ndarray) -> list[Value]:
        return [self.g.add_constant(a, f"{anchor.name}/{k}") for k, a in arrays.items()]

    # ---- patterns ------------------------------------------------------------------------------

    def _weight(self, n: Node, op: str) -> tuple[_QParams, _QParams, np.ndarray] | None:
        """The uint8 input, the int8 / int4 weight and its values laid out as the integer op stores them
        ([N, K] for QGemm / QMatMul), or None where the node does not fit."""
        x, w = _dq(n.input(0)), _dq(n.input(1))
        if x is None or w is None or not x.scalar or x.q.dtype != "u8" or not w.q.is_const:
            return None
        if w.q.dtype not in ("i8", "i4") or np.any(w.zp != 0):
            return None
        wq = np.asarray(w.q.data).astype(np.int8)
        if n.op == "MatMul":  # x [..., K] @ w [K, N]
            if wq.ndim != 2 or (w.scale.size > 1 and w.axis % 2 != 1):
                return None
            wq = wq.T.copy()
        elif op == "QGemm":
            if int(n.attr("transA", 0)) or float(n.attr("alpha", 1.0)) != 1.0 or float(n.attr("beta", 1.0)) != 1.0:
                return None
            if len(n.input(0).shape) != 2:
                return None
            if not int(n.attr("transB", 0)):
                wq = wq.T.copy()
        elif w.scale.size > 1 and w.axis % wq.ndim != 0:
            return None
        return x, w, wq

    def _linear(self, n: Node, op: str) -> bool:
        got = self._weight(n, op)
        if got is None:
            return False
        x, w, wq = got
        channels = wq.shape[0]
        acc_scale = float(x.scale[0]) * np.broadcast_to(w.scale, (channels,)).astype(np.float64)
        out_v, bias = n.outputs[0], self._bias(n, acc_scale, channels)
        if n.op == "MatMul":  # a following Add of a constant vector is the bias
            add = _bias_add(out_v, channels)
            folded = np.round(add[1] / acc_scale) if add is not None else None
            if add is not None and np.all(np.abs(folded) < 2**30):
                out_v, bias = add[0].outputs[0], np.asarray(folded, np.int32)
        if bias is False:
            return False
        attrs: dict[str, Any] = {"x_zp": int(x.zp[0]), "weight_bits": 4 if w.q.dtype == "i4" else 8}
        arrays = {"weight": wq} if bias is None else {"weight": wq, "bias": bias}
        out = _q_of(out_v)
        if out is None:
            return n.op == "MatMul" and self._accumulate(n, x.q, arrays, attrs, acc_scale, out_v)
        qnode, s_y, z_y, chain = out
        mults = [quantize_multiplier(sc / s_y) for sc in acc_scale]
        lo, hi = _clamp(chain, s_y, z_y)
        attrs.update({"y_zp": z_y, "qmin": lo, "qmax": hi})
        if op == "QConv":
            if n.attr("auto_pad", "NOTSET") != "NOTSET":
                return False
            attrs.update({k: n.attrs[k] for k in ("pads", "strides", "dilations", "group", "kernel_shape", "auto_pad")
                          if k in n.attrs})
        wv, mv, sv = self._consts(n, weight=wq, multiplier=np.array([m for m, _ in mults], np.int64),
                                  shift=np.array([s for _, s in mults], np.int64))
        bv = self._consts(n, bias=bias)[0] if bias is not None else None
        return self._take_over(qnode.outputs[0], self._emit(n, op, [x.q, wv, bv, mv, sv], attrs))

    def _accumulate(self, n: Node, x: Value, arrays: dict[str, np.ndarray], attrs: dict[str, Any],
                    acc_scale: np.ndarray, out: Value) -> bool:
        """A MatMul whose output stays float: QMatMul (the int32 accumulator) and a DequantizeLinear."""
        acc = self._emit(n, "QMatMul", [x, *self._consts(n, **arrays)], attrs)
        (sv,) = self._consts(n, acc_scale=acc_scale.astype(np.float32))
        dq = self.g.make_node("DequantizeLinear", [acc, sv], [TensorType("f32", None)], {"axis": -1},
                              scope=n.scope, name=f"{n.name}/dequantize", before=n)
        type_node(dq)
        return self._take_over(out, dq.outputs[0])

    def _bias(self, n: Node, scale: np.ndarray, channels: int) -> np.ndarray | bool | None:
        if not n.has_input(2):
            return None
        b = _dq(n.input(2))
        if b is not None and b.q.is_const and b.q.dtype == "i32" and np.all(b.zp == 0):
            bs, bq = np.broadcast_to(b.scale, (channels,)), np.asarray(b.q.data, np.int32).reshape(-1)
            # a zero entry is zero at any scale (a channel padded by passes.prune_pad has scale 1)
            if not np.allclose(bs[bq != 0], scale[bq != 0], rtol=1e-5):
                return False
            return bq
        f = _const(n.input(2))
        if f is None or f.size != channels:
            return False
        return np.round(f.reshape(-1) / scale).astype(np.int32)

    def _Conv(self, n: Node) -> bool:
        return len(n.input(1).shape) == 4 and self._linear(n, "QConv")

    def _Gemm(self, n: Node) -> bool:
        return self._linear(n, "QGemm")

    def _MatMul(self, n: Node) -> bool:
        """MatMul by a constant weight (+ a constant bias Add): QGemm where the output is quantized, else
        QMatMul and a DequantizeLinear."""
        return self._linear(n, "QGemm")

    def _Add(self, n: Node) -> bool:
        a, b = _dq(n.input(0)), _dq(n.input(1))
        out = _q_of(n.outputs[0])
        if a is None or b is None or out is None or not (a.scalar and b.scalar) or n.input(0).shape != n.input(1).shape:
            return False
        if a.q.dtype != "u8" or b.q.dtype != "u8":
            return False
        qnode, s_y, z_y, chain = out
        ma, mb = float(a.scale[0]) / s_y, float(b.scale[0]) / s_y
        big, shift = quantize_multiplier(max(ma, mb))
        a_mult = big if ma >= mb else round(ma * 2.0**shift)
        b_mult = big if mb > ma else round(mb * 2.0**shift)
        lo, hi = _clamp(chain, s_y, z_y)
        attrs = {"a_zp": int(a.zp[0]), "b_zp": int(b.zp[0]), "y_zp": z_y, "a_mult": int(a_mult),
                 "b_mult": int(b_mult), "shift": shift, "qmin": lo, "qmax": hi}
        return self._take_over(qnode.outputs[0], self._emit(n, "QAdd", [a.q, b.q], attrs))

    def _GlobalAveragePool(self, n: Node) -> bool:
        x = _dq(n.input(0))
        out = _q_of(n.outputs[0])
        if x is None or out is None or not x.scalar or x.q.dtype != "u8" or out[3]:
            return False
        qnode, s_y, z_y, _ = out
        count = int(np.prod(n.input(0).shape[2:]))
        mult, shift = quantize_multiplier(float(x.scale[0]) / (s_y * count))
        attrs = {"x_zp": int(x.zp[0]), "y_zp": z_y, "mult": mult, "shift": shift}
        return self._take_over(qnode.outputs[0], self._emit(n, "QGlobalAveragePool", [x.q], attrs))

    def _AveragePool(self, n: Node) -> bool:
        """An AveragePool whose window is the whole (unpadded) feature map is a global one."""
        spatial = list(n.input(0).shape[2:])
        if list(n.attr("kernel_shape", [])) != spatial or any(int(p) for p in n.attr("pads", [])):
            return False
        return self._GlobalAveragePool(n)

    def _passthrough(self, n: Node) -> bool:
        """Flatten / Reshape / MaxPool between a DQ and a Q of the same quantization run on the uint8 data."""
        x = _dq(n.input(0))
        out = _q_of(n.outputs[0])
        if x is None or out is None or not x.scalar or out[3] or x.q.dtype != "u8":
            return False
        qnode, s_y, z_y, _ = out
        if not _close(float(x.scale[0]), s_y) or int(x.zp[0]) != z_y:
            return False
        node = self.g.make_node(n.op, [x.q, *n.inputs[1:]], [TensorType("u8", None)], dict(n.attrs), scope=n.scope,
                                name=f"{n.name}/u8", before=n)
        type_node(node)
        self.report.integer[n.op] = self.report.integer.get(n.op, 0) + 1
        return self._take_over(qnode.outputs[0], node.outputs[0])

    _Flatten = _passthrough
    _Reshape = _passthrough
    _MaxPool = _passthrough

    def _QuantizeLinear(self, n: Node) -> bool:
        """Q(DQ(x)) with the same quantization is x."""
        x = _dq(n.input(0))
        s, z = _const(n.input(1)), _const(n.input(2)) if n.has_input(2) else np.zeros(1)
        if x is None or s is None or z is None or not x.scalar or s.size != 1 or x.q.dtype != n.outputs[0].dtype:
            return False
        if not _close(float(x.scale[0]), float(s.reshape(-1)[0])) or int(x.zp[0]) != int(z.reshape(-1)[0]):
            return False
        return self._take_over(n.outputs[0], x.q)

    def _list_float_ops(self) -> None:
        for n in self.g.nodes:
            if n.qualified_op in ("QuantizeLinear", "DequantizeLinear") or (n.domain == "nasc" and n.op.startswith("Q")):
                continue
            if n.outputs and n.outputs[0].dtype == "u8":
                continue
            if any(_dq(v) is not None for v in n.inputs if v is not None and not v.is_const):
                self.report.float_ops.append(f"{n.qualified_op} at node '{n.name}'")


def integerize(graph: Graph) -> tuple[Graph, IntegerReport]:
    """A copy of ``graph`` with its QDQ patterns turned into integer ops (nothing to do without QDQ)."""
    g = graph.clone()
    it = _Integerizer(g)
    if any(n.qualified_op == "QuantizeLinear" for n in g.nodes):
        it.run()
    return g, it.report


# ---- the numpy reference ---------------------------------------------------------------------------


def reference_run(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Evaluate an integerized graph in numpy: integer ops by their registry reference, QDQ by ONNX's
    definition, shape ops by numpy, float ops by their registry fold. Raises NotImplementedError on an op
    with none."""
    results = []
    for feed in feeds:
        env: dict[int, np.ndarray] = {id(v): np.asarray(feed[v.name]) for v in graph.inputs}
        for c in graph.constants:
            env[id(c)] = np.asarray(c.data)
        for n in graph.nodes:
            args = [env[id(v)] if v is not None else None for v in n.inputs]
            env[id(n.outputs[0])] = _ref_node(n, args)
        results.append([env[id(v)] for v in graph.outputs])
    return results


def _ref_node(n: Node, args: list[np.ndarray | None]) -> np.ndarray:
    op = n.qualified_op
    if n.domain == "nasc" and n.op.startswith("Q"):
        entry = lookup_node(n)
        assert entry is not None
        out = entry.fold(n, args)
        assert out is not None
        return out[0]
    if op in ("QuantizeLinear", "DequantizeLinear"):
        x, s, z = args[0], args[1], args[2] if len(args) > 2 and args[2] is not None else np.zeros((), np.int64)
        assert x is not None and s is not None
        shape = [1] * x.ndim
        if s.size > 1:
            shape[int(n.attr("axis", 1)) % x.ndim] = -1
        s, z = s.reshape(shape) if s.size > 1 else s, z.reshape(shape) if z.size > 1 else z
        if op == "DequantizeLinear":
            return ((x.astype(np.float32) - z.astype(np.float32)) * s).astype(np.float32)
        info = np.iinfo(np.uint8 if n.outputs[0].dtype == "u8" else np.int8)
        q = np.clip(np.round(x.astype(np.float32) / s) + z.astype(np.float32), info.min, info.max)
        return q.astype(info.dtype)
    if op == "Flatten":
        x = args[0]
        assert x is not None
        axis = int(n.attr("axis", 1)) % max(x.ndim, 1)
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    if op == "Reshape":
        assert args[0] is not None
        return args[0].reshape(n.outputs[0].shape)
    if op == "MaxPool" and n.attr("auto_pad", "NOTSET") == "NOTSET" and len(n.attr("kernel_shape", [])) == 2:
        assert args[0] is not None
        return _max_pool_u8(args[0], list(n.attr("kernel_shape")), list(n.attr("strides", [1, 1])),
                            list(n.attr("pads", [0, 0, 0, 0])), list(n.attr("dilations", [1, 1])))
    entry = lookup_node(n)  # a float op between a dequantize and a quantize: its numpy fold, where it has one
    out = entry.fold(n, args) if entry is not None else None
    if out is None:
        raise NotImplementedError(f"the integer reference has no {op} (node '{n.name}')")
    return out[0]


def _max_pool_u8(x: np.ndarray, kernel: list[int], strides: list[int], pads: list[int], dil: list[int]) -> np.ndarray:
    """MaxPool on uint8: padding with 0 (the smallest code) never wins over a real value, as -inf does not."""
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - dil[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    ow = (xp.shape[3] - dil[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    out = np.zeros((*x.shape[:2], oh, ow), x.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            win = xp[:, :, i * dil[0]: i * dil[0] + strides[0] * (oh - 1) + 1: strides[0],
                     j * dil[1]: j * dil[1] + strides[1] * (ow - 1) + 1: strides[1]]
            out = np.maximum(out, win)
    return out
