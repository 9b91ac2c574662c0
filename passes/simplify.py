"""simplify: constant and shape folding, dead code, no-op removal, common subexpressions. Exact."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasc.ir.core import Graph, Node, SubGraph, Value
from nasc.ir.ops.registry import InferenceError, fold_node, infer_node, lookup_node
from nasc.ir.types import TensorType
from nasc.passes.manager import Pass, PassContext, register_pass

#: ops whose results differ from run to run: never folded or merged
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})
SMALL = 4096  # elements: constants this small are deduplicated, and folds may grow to this size


@register_pass
@dataclass(frozen=True)
class Simplify(Pass):
    """Fold constants and shape computations, drop no-ops and dead code, merge duplicates.

    Exact: results are bit-identical up to the runtime's own rounding of folded ops.
    Folding evaluates constant subgraphs in numpy (registry folds) or ONNX Runtime.
    """

    name = "simplify"
    fold: bool = True
    cse: bool = True
    max_iterations: int = 4

    def __post_init__(self) -> None:
        self.check_option("max_iterations", self.max_iterations >= 1, "an int >= 1")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        changed = False
        for _ in range(self.max_iterations):
            step = False
            if self.fold:
                step |= fold_constants(graph, ctx)
                step |= refine_types(graph, ctx)
            step |= remove_noops(graph, ctx)
            if self.cse:
                step |= dedupe_constants(graph, ctx) | eliminate_common_subexpressions(graph, ctx)
            dead = graph.remove_dead()
            if dead:
                ctx.count("dead-code", dead)
                step = True
            changed |= step
            if not step:
                break
        return changed


def _erase_if_unused(graph: Graph, node: Node) -> None:
    """Drop a node whose results were all replaced, so dead-code counts only code that was dead before."""
    if all(not o.uses and not any(o is g for g in graph.outputs) for o in node.outputs):
        graph.erase(node)


# ---- folding ------------------------------------------------------------------------------------


def _numel(v: Value | None) -> int:
    if v is None or not isinstance(v.type, TensorType) or not v.type.is_static:
        return 1 << 62
    return v.type.numel


def _foldable(node: Node, const_ids: set[int]) -> bool:
    if node.op in NONDETERMINISTIC or not node.outputs:
        return False
    operands = [v for v in (*node.inputs, *node.captures) if v is not None]
    if not all(id(v) in const_ids for v in operands):
        return False
    budget = max(SMALL, sum(_numel(v) for v in operands))
    return all(_numel(o) <= budget for o in node.outputs)  # folding must not blow a small constant up


def _breaks_tie(node: Node, const_ids: set[int]) -> bool:
    """Whether folding ``node`` would copy a large weight that other nodes also read (a tied embedding and LM
    head): the copy would break the sharing that layer tying and backends rely on, and double the weights."""
    return any(v is not None and id(v) in const_ids and _numel(v) > SMALL and len(v.users()) > 1 for v in node.inputs)


def fold_constants(graph: Graph, ctx: PassContext) -> bool:
    """Replace nodes computed from constants alone (and Shape/Size of static tensors) by constants."""
    const_ids = {id(c) for c in graph.constants}
    pending_ids: set[int] = set()  # results of nodes left for the runner
    changed = False
    pending: list[Node] = []
    for node in list(graph.nodes):
        entry = lookup_node(node)
        if _breaks_tie(node, const_ids):
            continue
        if entry is not None and entry.foldable and node.op not in NONDETERMINISTIC:
            args = [v.data if v is not None and id(v) in const_ids and _numel(v) <= (1 << 24) else None
                    for v in node.inputs]
            if all(a is not None for a, v in zip(args, node.inputs) if v is not None) or node.op in ("Shape", "Size"):
                budget = max(SMALL, sum(_numel(v) for v in node.inputs if v is not None and id(v) in const_ids))
                results = fold_node(entry, node, args) if _results_fit(node, budget) else None
                if results is not None and all(r.size <= budget for r in results):
                    for out, arr in zip(node.outputs, results):
                        c = graph.add_constant(arr, out.name, type=TensorType(out.tensor_type.dtype, arr.shape))
                        graph.replace_all_uses_with(out, c)
                        const_ids.add(id(c))
                    _erase_if_unused(graph, node)
                    ctx.count("fold-shape" if node.op in ("Shape", "Size") else "fold-numpy")
                    changed = True
                    continue
        if _foldable(node, const_ids | pending_ids):
            pending.append(node)
            pending_ids.update(id(o) for o in node.outputs)
    if pending and ctx.runner is not None:
        changed |= _fold_with_runner(graph, pending, ctx)
    elif pending:
        ctx.note(f"{len(pending)} constant nodes not folded: no runner (ONNX Runtime) in this context")
    return changed


def _results_fit(node: Node, budget: int) -> bool:
    """Whether inference says every result is static and at most ``budget`` elements: checked before
    folding, so that a fold never allocates a large array (a ConstantOfShape of terabytes, say)."""
    try:
        types = infer_node(node)
    except InferenceError:
        return False
    return types is not None and all(isinstance(t, TensorType) and t.is_static and t.numel <= budget
                                     for t in types[: len(node.outputs)])


def _fold_with_runner(graph: Graph, nodes: list[Node], ctx: PassContext) -> bool:
    """Evaluate a set of constant-only nodes in one ONNX Runtime session and substitute the results."""
    inside = {id(n) for n in nodes}
    wanted = [o for n in nodes for o in n.outputs
              if any(id(u) not in inside for u, _ in o.uses) or any(o is g for g in graph.outputs)]
    if not wanted:
        return False
    sub = Graph(name="fold", opsets=dict(graph.opsets))
    vmap: dict[int, Value] = {}
    for n in nodes:
        for v in (*n.inputs, *n.captures):
            if v is not None and id(v) not in vmap and v.is_const:
                assert v.const is not None
                vmap[id(v)] = sub.add_constant(v.const, v.name, type=v.tensor_type)
        copy = sub.make_node(n.op, [None if v is None else vmap[id(v)] for v in n.inputs], [o.type for o in n.outputs],
                             dict(n.attrs), domain=n.domain, name=n.name, out_names=[o.name for o in n.outputs],
                             captures=[vmap[id(c)] for c in n.captures])
        for o, co in zip(n.outputs, copy.outputs):
            vmap[id(o)] = co
    sub.outputs = [vmap[id(o)] for o in wanted]
    try:
        results = ctx.evaluate(sub, [{}])[0]
    except Exception as e:  # a runtime that cannot evaluate them: keep the nodes, say so
        ctx.note(f"constant folding of {len(nodes)} nodes skipped: {str(e).splitlines()[0][:200]}")
        return False
    for o, arr in zip(wanted, results):
        c = graph.add_constant(np.asarray(arr), o.name, type=TensorType(o.tensor_type.dtype, np.asarray(arr).shape))
        graph.replace_all_uses_with(o, c)
    for n in reversed(nodes):
        _erase_if_unused(graph, n)
    ctx.count("fold-constant", len(nodes))
    return True


def refine_types(graph: Graph, ctx: PassContext) -> bool:
    """Re-infer result types where folding made shapes known (a Reshape whose shape became a constant)."""
    changed = False
    for node in graph.nodes:
        if lookup_node(node) is None or all(isinstance(o.type, TensorType) and o.type.is_static for o in node.outputs):
            continue
        try:
            types = infer_node(node)
        except InferenceError:
            continue
        for out, t in zip(node.outputs, types or []):
            if isinstance(t, TensorType) and t.is_static and t != out.type:
                out.type = t
                changed = True
                ctx.count("refine-shape")
    return changed


# ---- no-ops ---------------------------------------------------------------------------------------


def _noop_result(node: Node) -> Value | None:
    """The operand a no-op node passes through unchanged, or None if it is not a no-op."""
    op = node.op
    if node.domain:
        return None
    x = node.inputs[0] if node.inputs else None
    if x is None or not node.outputs:
        return None
    out = node.outputs[0]
    if op == "Identity":
        return x
    if op == "Dropout":
        return x if len(node.outputs) == 1 or not node.outputs[1].uses else None
    if not isinstance(x.type, TensorType) or not x.type.is_static or x.type != out.type:
        return None  # unknown dims compare equal without being equal
    if op in ("Cast", "Reshape", "Expand", "Squeeze", "Unsqueeze", "Flatten", "CastLike"):
        return x  # same type in and out: nothing moved
    if op == "Transpose":
        perm = node.attr("perm")
        return x if perm is not None and list(perm) == sorted(perm) else None
    if op in ("Concat", "Sum", "Max", "Min", "Mean") and len(node.inputs) == 1:
        return x
    if op == "Slice":  # same shape with unit steps takes everything (a negative step would reverse)
        steps = node.inputs[4] if len(node.inputs) > 4 else None
        unit = steps is None or (steps.is_const and bool(np.all(steps.data == 1)))
        return x if unit else None
    if op == "Pad":
        pads = node.inputs[1] if len(node.inputs) > 1 else None
        return x if pads is not None and pads.is_const and not np.any(pads.data) else None
    return None


def remove_noops(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in list(graph.nodes):
        keep = _noop_result(node)
        if keep is None:
            continue
        graph.replace_all_uses_with(node.outputs[0], keep)
        _erase_if_unused(graph, node)
        ctx.count(f"remove-{node.op.lower()}")
        changed = True
    return changed


# ---- duplicates -------------------------------------------------------------------------------------


def _array_key(a: np.ndarray) -> tuple[Any, ...]:
    # the shape is taken before ascontiguousarray, which turns a 0-d array into a 1-d one
    return (a.dtype.str, a.shape, hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest())


def dedupe_constants(graph: Graph, ctx: PassContext) -> bool:
    """Merge small constants with identical type and contents."""
    seen: dict[tuple[Any, ...], Value] = {}
    changed = False
    for c in list(graph.constants):
        if _numel(c) > SMALL or c.dtype == "str":
            continue
        key = (c.dtype, *_array_key(c.data))
        first = seen.setdefault(key, c)
        if first is not c:
            graph.replace_all_uses_with(c, first)
            ctx.count("cse-constant")
            changed = True
    return changed


def _attr_key(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return ("array", *_array_key(v))
    if isinstance(v, SubGraph):
        return ("graph", hashlib.sha1(v.payload).hexdigest(), v.captured)
    if isinstance(v, tuple):
        return tuple(_attr_key(x) for x in v)
    if isinstance(v, float) and np.isnan(v):
        return ("nan",)
    return v


def eliminate_common_subexpressions(graph: Graph, ctx: PassContext) -> bool:
    """Merge nodes with the same op, attributes and operands."""
    seen: dict[Any, Node] = {}
    changed = False
    for node in list(graph.nodes):
        if node.op in NONDETERMINISTIC or not node.outputs:
            continue
        key = (node.domain, node.op, tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items())),
               tuple(None if v is None else id(v) for v in node.inputs), tuple(id(c) for c in node.captures),
               len(node.outputs))
        first = seen.setdefault(key, node)
        if first is node:
            continue
        for a, b in zip(node.outputs, first.outputs):
            graph.replace_all_uses_with(a, b)
        _erase_if_unused(graph, node)
        ctx.count("cse")
        changed = True
    return changed
