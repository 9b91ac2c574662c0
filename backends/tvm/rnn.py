"""Lowerings of recurrent ops: LSTM, unrolled over its static sequence into matmuls and elementwise gates."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm.relax import op as R

from nasc.backends.tvm.lower import Lx, ints, lowering
from nasc.errors import UnsupportedModelError
from nasc.ir.core import Node


@lowering("LSTM")
def _lstm(lx: Lx, node: Node) -> Any:
    """ONNX LSTM (gates i, o, f, c; forward, reverse or bidirectional; optional peepholes; sequence-first), unrolled
    over the static sequence: one matmul of all steps' inputs, then per step one matmul of the hidden state."""
    acts = [a.lower() for a in node.attr("activations", None) or []]
    if any(a != d for a, d in zip(acts, ["sigmoid", "tanh", "tanh"] * 2)) or node.attr("clip", None) is not None \
            or int(node.attr("input_forget", 0)) or int(node.attr("layout", 0)):
        # batch-first layout too: ONNX Runtime does not run it, so nasc could not check the build
        raise UnsupportedModelError(f"{node.describe()}: LSTM with custom activations, clip, input_forget or "
                                    "layout=1 has no TVM lowering")
    consts = [node.inputs[i] if node.has_input(i) else None for i in (1, 2, 3, 7)]
    if any(c is not None and not c.is_const for c in consts):
        raise UnsupportedModelError(f"{node.describe()}: LSTM weights must be constants for the TVM lowering")
    w, r, b, p = (None if c is None else np.asarray(c.data, np.float64) for c in consts)
    assert w is not None and r is not None
    x = lx.x(node)
    seq, batch = node.input(0).shape[:2]
    if node.has_input(4):
        lens = ints(node.inputs[4])
        if lens is None or any(n != seq for n in lens):
            raise UnsupportedModelError(f"{node.describe()}: LSTM with sequence_lens shorter than the sequence "
                                        "has no TVM lowering")
    dirs, hidden = w.shape[0], int(node.attr("hidden_size"))
    dt = node.outputs[0].dtype if node.outputs else node.input(0).dtype
    ys, hs, cs = [], [], []
    for d in range(dirs):
        bias = (b[d, : 4 * hidden] + b[d, 4 * hidden :]) if b is not None else np.zeros(4 * hidden)
        xw = R.add(R.matmul(R.reshape(x, [seq * batch, w.shape[2]]), lx.const(w[d].T, dt)), lx.const(bias, dt))
        xw = lx.emit(R.reshape(xw, [seq, batch, 4 * hidden]))
        h = _lstm_state(lx, node, 5, d, [batch, hidden], dt)
        c = _lstm_state(lx, node, 6, d, [batch, hidden], dt)
        rt = lx.const(r[d].T, dt)
        direction = node.attr("direction", "forward")
        backward = direction == "reverse" or (direction == "bidirectional" and d == 1)
        steps = range(seq - 1, -1, -1) if backward else range(seq)
        out: dict[int, Any] = {}
        for t in steps:
            g = R.add(R.reshape(R.strided_slice(xw, [0], [t], [t + 1]), [batch, 4 * hidden]), R.matmul(h, rt))
            gi, go, gf, gc = (lx.emit(R.strided_slice(g, [1], [k * hidden], [(k + 1) * hidden])) for k in range(4))
            if p is not None:
                gi = R.add(gi, R.multiply(c, lx.const(p[d, :hidden], dt)))
                gf = R.add(gf, R.multiply(c, lx.const(p[d, 2 * hidden :], dt)))
            c = lx.emit(R.add(R.multiply(R.sigmoid(gf), c), R.multiply(R.sigmoid(gi), R.tanh(gc))))
            if p is not None:
                go = R.add(go, R.multiply(c, lx.const(p[d, hidden : 2 * hidden], dt)))
            h = lx.emit(R.multiply(R.sigmoid(go), R.tanh(c)))
            out[t] = R.reshape(h, [1, 1, batch, hidden])
        ys.append(R.concat([out[t] for t in range(seq)], axis=0) if seq > 1 else out[0])
        hs.append(R.reshape(h, [1, batch, hidden]))
        cs.append(R.reshape(c, [1, batch, hidden]))
    results = [R.concat(v, axis=a) if dirs > 1 else v[0] for v, a in ((ys, 1), (hs, 0), (cs, 0))]
    return [lx.emit(e) for e in results][: len(node.outputs)]


def _lstm_state(lx: Lx, node: Node, i: int, d: int, shape: list[int], dt: str) -> Any:
    """Direction ``d``'s initial hidden (i=5) or cell (i=6) state as [batch, hidden]; zeros when not given."""
    if not node.has_input(i):
        return lx.const(np.zeros(shape), dt)
    return lx.emit(R.reshape(R.strided_slice(lx.x(node, i), [0], [d], [d + 1]), shape))
