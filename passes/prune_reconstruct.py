"""Reconstruction without training: refit each layer that lost input channels by least squares.

After pruning, a Conv/Gemm/MatMul whose contraction axis lost channels computes its output from fewer
inputs. With its input X taken from the pruned graph and its target Y from the unpruned one (both on
calibration inputs), the closed-form ridge fit  min ||X W' + b' - Y||^2 + lam ||W' - W||^2  gives the weights
(and bias) that best replace what the removed channels contributed. Layers are refit in graph order, so
each fit sees the already refitted layers above it. Only a layer's own weight is rewritten: a weight
that other nodes share (tied) is left alone and reported as skipped.

Lossy by nature, but the refit never raises a layer's error on its fitting rows: a fit that would is
dropped (reported as skipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasc.errors import UsageError
from nasc.ir.core import Graph, Node, Value
from nasc.passes.manager import PassContext

Plan = dict[tuple[int, int], np.ndarray]

#: ops refit by this module
LAYER_OPS = ("Conv", "Gemm", "MatMul")
#: ops that are reported as skipped when they lose input channels
NOT_REFIT = {"ConvTranspose": 0}
#: ridges tried per layer (relative to the mean squared input), the one that predicts held-out inputs best wins
RIDGES = (1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class _Layer:
    """One layer to refit: the node, and where its rows, target and bias come from."""

    node: Node  # in ``after``
    target: Value  # in ``before``: the output Y is read from (the bias Add's result for MatMul + Add)
    out_kept: np.ndarray | None  # kept output channels of ``target`` (None: all)
    kin: tuple[int, int]  # input channels kept, total
    bias_node: Node | None  # the node holding the bias (the layer, or the Add after a MatMul); None: no bias
    bias_slot: int


def _in_axis(node: Node, w: Value) -> int:
    if node.op in NOT_REFIT:
        return NOT_REFIT[node.op]
    if node.op == "Conv":
        return 1
    if node.op == "Gemm":
        return 1 if int(node.attr("transB", 0)) else 0
    return len(w.shape) - 2


def bias_add(node: Node) -> tuple[Node, int] | None:
    """The Add of a constant per-column bias that alone reads a MatMul's result: (add, its constant's slot)."""
    out = node.outputs[0]
    if len(out.uses) != 1:
        return None
    add, slot = out.uses[0]
    if add.op != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None
    c = add.input(1 - slot)
    shape = c.shape if c.is_const else None
    if shape is None or len(shape) > len(out.shape) or any(d != 1 for d in shape[:-1]):
        return None
    return (add, 1 - slot) if not shape or shape[-1] in (1, out.shape[-1]) else None


def _candidate(nb: Node, na: Node, plan: Plan, pos: dict[int, int]) -> _Layer | str | None:
    """The node (``nb`` in before, ``na`` in after) as a layer to refit, the reason it is skipped, or None
    when it lost no input channels."""
    wb = nb.input(1) if nb.has_input(1) else None
    if wb is None or not wb.is_const:
        return None
    axis = _in_axis(nb, wb)
    kept = plan.get((pos[id(wb)], axis))
    if kept is None or len(kept) == wb.shape[axis]:
        return None
    if na.op in NOT_REFIT:
        return f"{na.op} is not refit (only {', '.join(LAYER_OPS)} are)"
    wa = na.input(1)
    if wa.uses != [(na, 1)]:
        return "its weight is shared with other nodes (tied): refitting it would change them too"
    if wa.dtype != "f32" or na.input(0).dtype != "f32":
        return f"its weight and input are {wa.dtype} and {na.input(0).dtype}, not f32"
    if na.input(0).is_const:
        return "its input is a constant"
    if na.op == "Conv" and int(na.attr("group", 1)) != 1:
        return "grouped or depthwise conv (not refit)"
    if na.op == "MatMul" and (len(wa.shape) != 2 or len(na.input(0).shape) < 2):
        return "MatMul weight is not a 2-D [K, N] matrix or the input is 1-D"
    target, bias_node, bias_slot = nb.outputs[0], na, 2
    if na.op == "Gemm":
        c = na.input(2) if na.has_input(2) else None
        if float(na.attr("beta", 1.0)) == 0.0:
            bias_node = None
        elif c is not None and not (c.is_const and len(c.shape) <= 2 and all(d == 1 for d in c.shape[:-1])):
            return "its C operand is not a constant per-column bias"
    elif na.op == "MatMul":
        found = bias_add(na)
        bias_node = None
        if found is not None:
            bias_node, bias_slot = found
            target = nb.outputs[0].uses[0][0].outputs[0]
    elif na.has_input(2) and not na.input(2).is_const:
        return "its bias is not a constant"
    out_axis = 1 if na.op == "Conv" else len(target.shape) - 1
    out_kept = plan.get((pos[id(target)], out_axis))
    return _Layer(na, target, out_kept, (len(kept), int(wb.shape[axis])), bias_node, bias_slot)


# ---- the layer as a matrix product: rows of X, Y and the [K, N] weight ------------------------------------


def _weight(layer: _Layer) -> np.ndarray:
    """The effective [K, N] matrix of the layer's current weight (float64)."""
    node = layer.node
    w = np.asarray(node.input(1).data, dtype=np.float64)
    if node.op == "Conv":
        return w.reshape(w.shape[0], -1).T
    if node.op == "Gemm":
        return float(node.attr("alpha", 1.0)) * (w.T if int(node.attr("transB", 0)) else w)
    return w


def _bias(layer: _Layer, n: int) -> np.ndarray:
    """The current effective bias, one per output column (zeros when there is none)."""
    b = layer.bias_node
    if b is None or not b.has_input(layer.bias_slot):
        return np.zeros(n)
    scale = float(b.attr("beta", 1.0)) if b.op == "Gemm" else 1.0
    return np.broadcast_to(scale * np.asarray(b.input(layer.bias_slot).data, np.float64).reshape(-1), (n,))


def _conv_geometry(node: Node) -> tuple[list[int], list[int], list[int], list[tuple[int, int]]]:
    """(kernel, strides, dilations, (pad before, pad after) per spatial axis), auto_pad resolved."""
    x, w, y = node.input(0).shape, node.input(1).shape, node.outputs[0].shape
    n = len(x) - 2
    kernel = [int(d) for d in w[2:]]
    strides = [int(s) for s in node.attr("strides", [1] * n)]
    dil = [int(d) for d in node.attr("dilations", [1] * n)]
    pads = [int(p) for p in node.attr("pads", [0] * (2 * n))]
    auto = str(node.attr("auto_pad", "NOTSET"))
    out = []
    for i in range(n):
        ek = (kernel[i] - 1) * dil[i] + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, (y[2 + i] - 1) * strides[i] + ek - x[2 + i])
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto == "SAME_UPPER" else (big, small))
        else:
            out.append((pads[i], pads[i + n]) if auto != "VALID" else (0, 0))
    return kernel, strides, dil, out


def _row_grid(layer: _Layer) -> tuple[int, ...]:
    """The shape whose cells are the layer's rows: (N, spatial...) for Conv, (M,) for Gemm, out[:-1] for MatMul."""
    out = layer.node.outputs[0].shape
    return (out[0], *out[2:]) if layer.node.op == "Conv" else tuple(out[:-1])


def _channels_at(cells: tuple[np.ndarray, ...]) -> tuple[Any, ...]:
    """Index of an NC... array that takes all channels at each (n, spatial...) cell: rows first."""
    return (cells[0], slice(None), *cells[1:])


def _rows_x(layer: _Layer, x: np.ndarray, cells: tuple[np.ndarray, ...]) -> np.ndarray:
    node = layer.node
    if node.op == "Conv":
        kernel, strides, dil, pads = _conv_geometry(node)
        n = len(kernel)
        xp = np.pad(x, [(0, 0), (0, 0), *pads])
        ek = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
        win = np.lib.stride_tricks.sliding_window_view(xp, ek, axis=tuple(range(2, 2 + n)))
        win = win[(slice(None), slice(None), *(slice(None, None, s) for s in strides),
                   *(slice(None, None, d) for d in dil))]
        patches = win[_channels_at(cells)]  # [R, C, k...]
        return patches.reshape(len(cells[0]), -1)
    if node.op == "Gemm" and int(node.attr("transA", 0)):
        x = x.T
    return x.reshape(-1, x.shape[-1])[np.ravel_multi_index(cells, _row_grid(layer))]


def _rows_y(layer: _Layer, y: np.ndarray, cells: tuple[np.ndarray, ...]) -> np.ndarray:
    if layer.node.op == "Conv":
        rows = y[_channels_at(cells)]
    else:
        rows = y.reshape(-1, y.shape[-1])[np.ravel_multi_index(cells, _row_grid(layer))]
    return rows if layer.out_kept is None else rows[:, layer.out_kept]


# ---- fitting and writing back -----------------------------------------------------------------------------


def _fit(x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray, with_bias: bool, ridge: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """Least squares for W [K, N] and b [N], pulled towards the pruned layer's own weights ``w0``:
    min ||X W + b - Y||^2 + lam ||W - w0||^2. With few rows for many inputs (a transformer's FFN on a
    handful of sentences) the fit stays near the weights it starts from instead of fitting noise. ``ridge``
    is relative to the mean squared input, so that it does not depend on the activations' scale; the bias is
    not penalized."""
    n, k = x.shape
    xa = np.hstack([x, np.ones((n, 1))]) if with_bias else x
    gram = xa.T @ xa
    lam = ridge * max(float(np.trace(gram[:k, :k])) / max(k, 1), 1e-12)
    gram[np.arange(k), np.arange(k)] += lam
    rhs = xa.T @ y
    rhs[:k] += lam * w0
    try:
        sol = np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    return sol[:k], (sol[k] if with_bias else b0)


def _choose_ridge(xs: list[np.ndarray], ys: list[np.ndarray], w0: np.ndarray, b0: np.ndarray, with_bias: bool
                  ) -> float | None:
    """The ridge (from RIDGES) whose fit on the first calibration inputs best predicts the held-out last
    quarter of them, or None when none beats the pruned weights as they are (then the layer is left alone)."""
    cut = len(xs) - max(1, len(xs) // 4)
    if cut < 1:
        return RIDGES[0]
    xf, yf = np.concatenate(xs[:cut]), np.concatenate(ys[:cut])
    xv, yv = np.concatenate(xs[cut:]), np.concatenate(ys[cut:])
    best, best_err = None, _rel(xv, w0, b0, yv)
    for ridge in RIDGES:
        w, b = _fit(xf, yf, w0, b0, with_bias, ridge)
        err = _rel(xv, w, b, yv)
        if err < best_err:
            best, best_err = ridge, err
    return best


def _rel(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    return float(np.linalg.norm(x @ w + b - y) / max(float(np.linalg.norm(y)), 1e-30))


def _write(graph: Graph, layer: _Layer, w: np.ndarray, b: np.ndarray) -> None:
    """Put the fitted [K, N] matrix and bias into the layer as new f32 constants (the old ones die)."""
    node = layer.node
    old = node.input(1)
    if node.op == "Conv":
        arr = w.T.reshape(old.shape)
    elif node.op == "Gemm":
        arr = w / float(node.attr("alpha", 1.0))
        arr = arr.T if int(node.attr("transB", 0)) else arr
    else:
        arr = w
    graph.set_input(node, 1, graph.add_constant(arr.astype(np.float32), old.name))
    bn = layer.bias_node
    if bn is not None:
        prev = bn.input(layer.bias_slot) if bn.has_input(layer.bias_slot) else None
        if bn.op == "Gemm":
            b = b / float(bn.attr("beta", 1.0))
        shape = (*prev.shape[:-1], len(b)) if prev is not None and prev.shape else (len(b),)
        name = prev.name if prev is not None else f"{node.name or 'layer'}.bias"
        graph.set_input(bn, layer.bias_slot, graph.add_constant(b.reshape(shape).astype(np.float32), name))
    graph.remove_dead()


def _entry(node: Node, **fields: Any) -> dict[str, Any]:
    return {"node": node.name, "op": node.op, "scope": node.scope, **fields}


def _align(before: Graph, after: Graph) -> list[tuple[Node, Node]]:
    """Pair each node of ``after`` with its node in ``before``: a clone keeps the order, and apply_plan only
    erases dead nodes, so ``after`` is a subsequence of ``before``."""
    pairs: list[tuple[Node, Node]] = []
    rest = iter(before.nodes)
    for na in after.nodes:
        key = (na.op, na.domain, na.name, na.scope, len(na.inputs), len(na.outputs))
        nb = next((n for n in rest if (n.op, n.domain, n.name, n.scope, len(n.inputs), len(n.outputs)) == key), None)
        if nb is None:
            raise ValueError(f"reconstruct: {na.describe()} of the pruned graph has no counterpart in the unpruned "
                             "one (the pruned graph must be apply_plan on a clone of it)")
        pairs.append((nb, na))
    return pairs


def reconstruct(before: Graph, after: Graph, plan: Plan, ctx: PassContext, *, max_rows: int = 20000,
                ridge: float | None = None, max_feeds: int = 32) -> list[dict[str, Any]]:
    """Refit, in ``after``, every Conv/Gemm/MatMul that lost input channels so that it matches ``before``.

    ``before`` is the unpruned graph, ``after`` the result of ``apply_plan(after, plan)`` on a clone of it
    (its nodes in the same order, less any that apply_plan found dead); ``plan`` is keyed by value positions
    of ``before``. Each layer's fit uses up to ``max_rows`` rows (pixels or tokens, sampled with
    ``ctx.seed``) of the first ``max_feeds`` calibration inputs; ``ridge`` (relative to the mean squared
    input of the layer; it pulls the fit towards the pruned weights) is chosen per layer from ``RIDGES`` by
    the error on the last quarter of the inputs when not given. A Conv or Gemm without a bias gets one. Returns one entry per layer that lost input
    channels, in graph order: its node, op, scope, input channels kept/total, and the relative error
    ||XW + b - Y|| / ||Y|| on the fitting rows before and after the refit, or ``skipped`` with the reason
    it was not refit.
    """
    if not ctx.calib:
        raise UsageError("reconstruct=true needs calibration data (--calib)")
    feeds = ctx.calib[:max_feeds]
    pos = {id(v): i for i, v in enumerate(before.values())}
    index = {id(n): i for i, n in enumerate(after.nodes)}
    layers: list[_Layer] = []
    report: list[tuple[int, dict[str, Any]]] = []  # (node index, entry), to return in graph order
    for nb, na in _align(before, after):
        if (nb.op not in LAYER_OPS and nb.op not in NOT_REFIT) or nb.domain not in ("", "ai.onnx"):
            continue
        found = _candidate(nb, na, plan, pos)
        if isinstance(found, str):
            report.append((index[id(na)], _entry(na, skipped=found)))
        elif found is not None:
            layers.append(found)
    targets = ctx.evaluate(before, feeds, [layer.target for layer in layers]) if layers else []
    rng = np.random.default_rng(ctx.seed)
    for i, layer in enumerate(layers):
        node = layer.node
        xs = [got[0] for got in ctx.evaluate(after, feeds, [node.input(0)])]
        grid = _row_grid(layer)
        per = int(np.prod(grid))
        total = per * len(feeds)
        pick = np.sort(rng.choice(total, max_rows, replace=False)) if total > max_rows else np.arange(total)
        xr, yr = [], []
        for f, (x, got) in enumerate(zip(xs, targets, strict=True)):
            local = pick[(pick >= f * per) & (pick < (f + 1) * per)] - f * per
            if local.size:
                cells = np.unravel_index(local, grid)
                xr.append(_rows_x(layer, np.asarray(x, np.float64), cells))
                yr.append(_rows_y(layer, np.asarray(got[i], np.float64), cells))
        x, y = np.concatenate(xr), np.concatenate(yr)
        w0 = _weight(layer)
        if w0.shape != (x.shape[1], y.shape[1]):
            why = f"its weight is {w0.shape} as a matrix, the rows give {(x.shape[1], y.shape[1])}"
            report.append((index[id(node)], _entry(node, skipped=why + " (the plan and the graph disagree)")))
            continue
        b0 = _bias(layer, y.shape[1])
        with_bias = layer.bias_node is not None
        chosen = _choose_ridge(xr, yr, w0, b0, with_bias) if ridge is None else ridge
        fields: dict[str, Any] = {"in_kept": layer.kin[0], "in_total": layer.kin[1], "rows": len(x),
                                  "ridge": chosen, "error_before": _rel(x, w0, b0, y)}
        if chosen is None:
            report.append((index[id(node)], _entry(node, skipped="no refit predicted held-out calibration inputs "
                                                   "better than the pruned weights", **fields)))
            continue
        w1, b1 = _fit(x, y, w0, b0, with_bias, chosen)
        e0, e1 = fields["error_before"], _rel(x, w1, b1, y)
        fields["error_after"] = e1
        if not e1 < e0:
            report.append((index[id(node)], _entry(node, skipped="the refit did not lower its error", **fields)))
            continue
        _write(after, layer, w1, b1)
        report.append((index[id(node)], _entry(node, **fields)))
    return [e for _, e in sorted(report, key=lambda r: r[0])]


def refit_summary(entries: Sequence[dict[str, Any]]) -> str:
    """One line for a pass note: layers refit and the mean relative error before → after."""
    done = [e for e in entries if "skipped" not in e]
    if not done:
        return f"reconstruct: no layer refit ({len(entries)} skipped)"
    e0 = float(np.mean([e["error_before"] for e in done]))
    e1 = float(np.mean([e["error_after"] for e in done]))
    skipped = len(entries) - len(done)
    return f"reconstruct: {len(done)} layers refit, mean error {e0:.4f} → {e1:.4f}; {skipped} skipped"
