"""Remove channels for real: slice the weights, let each op fix its shape operands, re-type every value.

A plan maps (value position in ``graph.values()``, axis) to the indices kept on that axis
(see ``Analysis.removal``); an index of -1 is a new channel of zeros (padding, see
:mod:`nasc.passes.prune_pad`). Positions rather than values, so that one plan applies to the
graph it was found on and to its clones (the dry runs that search for a MAC target, the
zero-invariance check).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from nasc.errors import VerificationError
from nasc.ir.core import Graph, LazyArray, Node, Value
from nasc.ir.ops.registry import AxisRef, infer_node, lookup_node
from nasc.ir.types import TensorType

Plan = dict[tuple[int, int], np.ndarray]


def _by_value(graph: Graph, plan: Plan) -> dict[int, dict[int, np.ndarray]]:
    values = list(graph.values())
    out: dict[int, dict[int, np.ndarray]] = {}
    for (pos, axis), kept in plan.items():
        out.setdefault(id(values[pos]), {})[axis] = kept
    return out


def _kept_fn(node: Node, per_value: dict[int, dict[int, np.ndarray]]) -> Callable[[AxisRef], np.ndarray | None]:
    def kept(ref: AxisRef) -> np.ndarray | None:
        port, slot, axis = ref
        v = node.input(slot) if port == "in" else node.outputs[slot]
        return per_value.get(id(v), {}).get(axis)

    return kept


def _new_shape(v: Value, axes: dict[int, np.ndarray]) -> tuple[int, ...]:
    return tuple(len(axes[a]) if a in axes else d for a, d in enumerate(v.shape))


def _take(arr: np.ndarray, kept: np.ndarray, axis: int, fill: float = 0.0) -> np.ndarray:
    """``arr`` at the ``kept`` indices along ``axis``, ``fill`` where an index is -1 (a padded channel)."""
    out = np.take(arr, np.maximum(kept, 0), axis=axis)
    if (kept < 0).any():
        idx: list[slice | np.ndarray] = [slice(None)] * arr.ndim
        idx[axis] = np.flatnonzero(kept < 0)
        out[tuple(idx)] = fill
    return out


def apply_plan(graph: Graph, plan: Plan, *, data: bool = True, fill: Mapping[int, float] | None = None) -> None:
    """Remove the channels ``plan`` does not keep, in place.

    Padded channels (-1 in the plan) of a constant are zeros, or ``fill[position]`` for the
    constant at that position (a quantization scale or a variance: 1).

    With ``data=False`` only types change (constants keep their old contents): a cheap dry
    run whose params and MACs are those of the real result. The graph is re-typed node by
    node; a node whose inferred types disagree with the pruned ones is a bug in its rule,
    reported as a VerificationError naming it.
    """
    per_value = _by_value(graph, plan)
    if not per_value:
        return
    fills = {id(v): fill[pos] for pos, v in enumerate(graph.values()) if pos in fill} if fill else {}
    for node in list(graph.nodes):
        if any(v is not None and id(v) in per_value for v in (*node.inputs, *node.outputs)):
            entry = lookup_node(node)
            if entry is not None:
                entry.prune(graph, node, _kept_fn(node, per_value))
    for v in graph.values():
        axes = per_value.get(id(v))
        if not axes:
            continue
        t = v.tensor_type
        shape = _new_shape(v, axes)
        if v.is_const and data:
            arr = v.data
            for a, kept in sorted(axes.items()):
                arr = _take(arr, kept, a, fills.get(id(v), 0.0))
            arr = np.ascontiguousarray(arr)
            v.const = LazyArray(arr.shape, t.dtype, lambda a=arr: a)  # type: ignore[misc]
            v.const.load()
        v.type = TensorType(t.dtype, shape, t.quant)
    graph.remove_dead()
    for node in graph.nodes:
        if lookup_node(node) is None:
            continue
        types = infer_node(node)
        for out, want in zip(node.outputs, types or [], strict=False):
            if isinstance(want, TensorType) and isinstance(out.type, TensorType) and want.shape != out.type.shape:
                raise VerificationError(f"pruning left {node.describe()} inconsistent: it infers {want} for "
                                        f"%{out.name}, the plan gives {out.type} (a bug in its pruning rule)")


def zero_plan(graph: Graph, plan: Plan) -> None:
    """Set every constant channel the plan removes to zero, in place (shapes unchanged): the model that
    the pruned one must equal if the groups are right (zero-invariance)."""
    values = list(graph.values())
    axes_of: dict[int, dict[int, np.ndarray]] = {}
    for (pos, axis), kept in plan.items():
        if values[pos].is_const:
            axes_of.setdefault(pos, {})[axis] = kept
    for pos, axes in axes_of.items():
        v = values[pos]
        arr = np.array(v.data, copy=True)
        for a, kept in axes.items():
            gone = np.setdiff1d(np.arange(arr.shape[a]), kept)
            idx: list[slice | np.ndarray] = [slice(None)] * arr.ndim
            idx[a] = gone
            arr[tuple(idx)] = 0
        v.const = LazyArray(arr.shape, v.tensor_type.dtype, lambda a=arr: a)  # type: ignore[misc]
        v.const.load()
