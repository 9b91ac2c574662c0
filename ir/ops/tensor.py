"""Layout and data-movement ops: Reshape/Flatten/Transpose/Squeeze/Unsqueeze, Concat/Split/Slice
(ONNX opset 21 semantics); Pad/Resize/Expand/Tile live in resize.py, indexing ops in index.py.

Shape-valued operands (Reshape's shape, Slice's starts/ends, ...) are read when they are constants;
otherwise the dims they decide are ``UNKNOWN``, and the shape is None when even the rank is unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from nasc.ir.core import Graph, Node
from nasc.ir.ops.registry import (
    AxisGroup,
    AxisRef,
    InferenceError,
    OpDef,
    const_ints,
    const_value,
    norm_axis,
    pruned_shape,
    register,
    set_const_operand,
    shape_of,
    ttype,
)
from nasc.ir.types import UNKNOWN, Dim, Shape, TensorType, Type

# ---- helpers shared with shape_reduce ------------------------------------------------


def prod(dims: Iterable[Dim]) -> Dim:
    """Product of dims, UNKNOWN when any is not an int."""
    n = 1
    for d in dims:
        if not isinstance(d, int):
            return UNKNOWN
        n *= d
    return n


def len_1d(node: Node, i: int) -> int | None:
    """Length of 1-D operand ``i`` when its type says so statically."""
    if not node.has_input(i):
        return None
    t = node.input(i).type
    if isinstance(t, TensorType) and t.shape is not None and len(t.shape) == 1 and isinstance(t.shape[0], int):
        return t.shape[0]
    return None


def out_shape(entry: OpDef, node: Node, i: int = 0) -> Shape | None:
    t = entry.infer(node)[i]
    return t.shape if isinstance(t, TensorType) else None


def pairs(node: Node, links: Iterable[tuple[int, int]], outs: Sequence[int] = (0,)) -> list[AxisGroup]:
    """One "same" group per (operand-0 axis, result axis) link, over the results in ``outs``."""
    return [AxisGroup((("in", 0, a), *(("out", o, b) for o in outs))) for a, b in links]


def arg(args: Sequence[np.ndarray | None], i: int) -> np.ndarray | None:
    """``args[i]``, or None when the operand list is shorter (trailing operands omitted)."""
    return args[i] if i < len(args) else None


def norm_axes(node: Node, axes: Iterable[int], rank: int) -> list[int]:
    res = [norm_axis(node, a, rank) for a in axes]
    if len(set(res)) != len(res):
        raise InferenceError(f"{node.describe()}: repeated axis in {list(axes)}")
    return res


def reshape_groups(node: Node, a: Shape | None, b: Shape | None) -> list[AxisGroup]:
    """How a row-major reshape from ``a`` to ``b`` carries channels.

    The shapes are cut into blocks of axes with equal products. A block of one axis on each
    side is the same channel space. One axis split into several (heads from a hidden axis) or
    several merged into one (a flattened feature map) is a "digit" group between the single
    axis and one factor: the outermost factor of size > 1 (whole heads, whole feature maps),
    or factor ``node.meta["prune.factor"]`` (counting factors of size > 1 from 0; -1 is the
    innermost), which a pruner sets where the outer choice leaves nothing prunable: the channel
    shuffle's first reshape, Swin's [3, heads, head_dim] split of a fused qkv). Other axes
    of a block, and blocks that are several axes on both sides, are barriers.
    """
    if a is None or b is None or not all(isinstance(d, int) and d > 0 for d in (*a, *b)):
        return pairs(node, _prefix_links(a, b))
    factor = int(node.meta.get("prune.factor", 0))
    groups: list[AxisGroup] = []
    i = j = 0
    while i < len(a) or j < len(b):
        i0, j0 = i, j
        pa = a[i] if i < len(a) else 1
        pb = b[j] if j < len(b) else 1
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                pa, i = pa * a[i], i + 1  # type: ignore[operator]
            elif pb < pa and j < len(b):
                pb, j = pb * b[j], j + 1  # type: ignore[operator]
            else:
                return groups
        ins = [k for k in range(i0, min(i, len(a))) if a[k] != 1]
        outs = [k for k in range(j0, min(j, len(b))) if b[k] != 1]
        if len(ins) == 1 and len(outs) == 1:
            groups.append(AxisGroup((("in", 0, ins[0]), ("out", 0, outs[0]))))
        elif len(ins) == 1 or len(outs) == 1:
            one, many, mport, dims = (("in", 0, ins[0]), outs, "out", b) if len(ins) == 1 else (
                ("out", 0, outs[0]), ins, "in", a)
            t = max(-len(many), min(factor, len(many) - 1)) % len(many)
            radix = prod(dims[k] for k in many[t + 1:])
            groups.append(AxisGroup((one, (mport, 0, many[t])), "digit", (int(radix), int(dims[many[t]]))))  # type: ignore[call-overload]
    return groups


def _prefix_links(a: Shape | None, b: Shape | None) -> list[tuple[int, int]]:
    """Leading axes whose (static) dims agree: unchanged by a row-major reshape."""
    if a is None or b is None:
        return []
    links = []
    for k, (x, y) in enumerate(zip(a, b, strict=False)):
        if not (isinstance(x, int) and x == y):
            break
        links.append((k, k))
    return links


# ---- reshapes ----------------------------------------------------------------------


def _reshape(node: Node, t: TensorType, in_shape: Shape | None, target: list[int]) -> tuple[Dim, ...]:
    allowzero = int(node.attr("allowzero", 0))

    def bad(why: str = "") -> InferenceError:
        n = prod(in_shape) if in_shape is not None else UNKNOWN
        tgt = ",".join(map(str, target))
        return InferenceError(f"{node.describe()}: cannot reshape {t.with_shape(in_shape)} ({n} elements) to ({tgt}){why}")

    out: list[Dim] = []
    neg = -1
    for i, d in enumerate(target):
        if d == -1:
            if neg >= 0:
                raise bad(": more than one -1")
            neg = i
            out.append(-1)
        elif d == 0 and not allowzero:
            if in_shape is None:
                out.append(UNKNOWN)
            elif i >= len(in_shape):
                raise bad(f": 0 at position {i} copies no input dim")
            else:
                out.append(in_shape[i])
        elif d < -1:
            raise bad()
        else:
            out.append(d)
    if allowzero and neg >= 0 and 0 in target:
        raise bad(": allowzero=1 with both 0 and -1")
    # dims copied by 0 cancel out, so that -1 is known even when a copied dim is not
    copied = set() if allowzero else {i for i, d in enumerate(target) if d == 0}
    total = prod(d for i, d in enumerate(in_shape) if i not in copied) if in_shape is not None else UNKNOWN
    rest = prod(d for i, d in enumerate(out) if i != neg and i not in copied)
    if neg >= 0:
        if isinstance(total, int) and isinstance(rest, int):
            if rest == 0 or total % rest:
                raise bad()
            out[neg] = total // rest
        else:
            out[neg] = UNKNOWN
    elif isinstance(total, int) and isinstance(rest, int) and total != rest:
        raise bad()
    return tuple(out)


@register
class Reshape(OpDef):
    name = "Reshape"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        target = const_ints(node, 1)
        if target is None:
            n = len_1d(node, 1)
            return [TensorType(t.dtype, None if n is None else (UNKNOWN,) * n)]
        return [TensorType(t.dtype, _reshape(node, t, t.shape, target))]

    def channels(self, node: Node) -> list[AxisGroup]:
        return reshape_groups(node, ttype(node, 0).shape, out_shape(self, node))

    def prune(self, graph: Graph, node: Node, kept: Callable[[AxisRef], np.ndarray | None]) -> None:
        set_const_operand(graph, node, 1, np.array(pruned_shape(node, "out", 0, kept), dtype=np.int64))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x, s = args[0], args[1]
        if x is None or s is None:
            return None
        shp = _reshape(node, ttype(node, 0), x.shape, [int(v) for v in s.reshape(-1)])
        return [x.reshape(shp)]  # type: ignore[arg-type]


def _flatten(node: Node, shape: Shape | None) -> Shape:
    if shape is None:
        return (UNKNOWN, UNKNOWN)
    r = len(shape)
    axis = int(node.attr("axis", 1))
    if not -r <= axis <= r:
        raise InferenceError(f"{node.describe()}: axis {axis} is out of range for rank {r}")
    axis = axis + r if axis < 0 else axis
    return (prod(shape[:axis]), prod(shape[axis:]))


@register
class Flatten(OpDef):
    name = "Flatten"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        return [TensorType(t.dtype, _flatten(node, t.shape))]

    def channels(self, node: Node) -> list[AxisGroup]:
        return reshape_groups(node, ttype(node, 0).shape, out_shape(self, node))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x = args[0]
        return None if x is None else [x.reshape(_flatten(node, x.shape))]  # type: ignore[arg-type]


@register
class Transpose(OpDef):
    name = "Transpose"
    foldable = True

    def _perm(self, node: Node, rank: int) -> list[int]:
        perm = list(node.attr("perm", range(rank - 1, -1, -1)))
        if sorted(perm) != list(range(rank)):
            raise InferenceError(f"{node.describe()}: perm {perm} is not a permutation of {rank} axes")
        return perm

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        return [TensorType(t.dtype, tuple(t.shape[p] for p in self._perm(node, len(t.shape))))]

    def channels(self, node: Node) -> list[AxisGroup]:
        perm = self._perm(node, len(shape_of(node, 0)))
        return pairs(node, ((p, k) for k, p in enumerate(perm)))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x = args[0]
        return None if x is None else [np.transpose(x, self._perm(node, x.ndim))]


@register
class Squeeze(OpDef):
    name = "Squeeze"
    foldable = True

    def _axes(self, node: Node, shape: Shape, axes: list[int] | None) -> list[int] | None:
        """Removed axes, or None when they cannot be known (unknown dims and no axes)."""
        if axes is None:
            if any(not isinstance(d, int) for d in shape):
                return None
            return [k for k, d in enumerate(shape) if d == 1]
        res = sorted(norm_axes(node, axes, len(shape)))
        for k in res:
            if isinstance(shape[k], int) and shape[k] != 1:
                raise InferenceError(f"{node.describe()}: cannot squeeze axis {k} of shape {list(shape)}")
        return res

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if node.has_input(1) and const_value(node, 1) is None:
            n = len_1d(node, 1)
            return [TensorType(t.dtype, None if t.shape is None or n is None else (UNKNOWN,) * (len(t.shape) - n))]
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        removed = self._axes(node, t.shape, const_ints(node, 1))
        if removed is None:
            return [TensorType(t.dtype, None)]
        return [TensorType(t.dtype, tuple(d for k, d in enumerate(t.shape) if k not in removed))]

    def channels(self, node: Node) -> list[AxisGroup]:
        shape = shape_of(node, 0)
        if node.has_input(1) and const_value(node, 1) is None:
            return []
        removed = self._axes(node, shape, const_ints(node, 1))
        if removed is None:
            return []
        kept = [k for k in range(len(shape)) if k not in removed]
        return pairs(node, ((k, j) for j, k in enumerate(kept)))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x = args[0]
        a = arg(args, 1)
        if x is None or (node.has_input(1) and a is None):
            return None
        axes = None if a is None else [int(v) for v in a.reshape(-1)]
        removed = self._axes(node, x.shape, axes)
        return [np.squeeze(x, axis=tuple(removed or ()))]


def _unsqueeze(node: Node, shape: Shape, axes: list[int]) -> tuple[Shape, list[int]]:
    r = len(shape) + len(axes)
    ins = set(norm_axes(node, axes, r))
    it = iter(shape)
    return tuple(1 if k in ins else next(it) for k in range(r)), sorted(ins)


@register
class Unsqueeze(OpDef):
    name = "Unsqueeze"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        axes = const_ints(node, 1)
        if axes is None:
            n = len_1d(node, 1)
            return [TensorType(t.dtype, None if t.shape is None or n is None else (UNKNOWN,) * (len(t.shape) + n))]
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        return [TensorType(t.dtype, _unsqueeze(node, t.shape, axes)[0])]

    def channels(self, node: Node) -> list[AxisGroup]:
        shape, axes = shape_of(node, 0), const_ints(node, 1)
        if axes is None:
            return []
        ins = _unsqueeze(node, shape, axes)[1]
        kept = [k for k in range(len(shape) + len(axes)) if k not in ins]
        return pairs(node, enumerate(kept))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x, a = args[0], args[1]
        if x is None or a is None:
            return None
        return [x.reshape(_unsqueeze(node, x.shape, [int(v) for v in a.reshape(-1)])[0])]  # type: ignore[arg-type]


# ---- concat, split, slice --------------------------------------------------------------


@register
class Concat(OpDef):
    name = "Concat"
    foldable = True

    def infer(self, node: Node) -> list[Type]:
        ts = [ttype(node, i) for i in range(len(node.inputs))]
        if len({t.dtype for t in ts}) > 1:
            raise InferenceError(f"{node.describe()}: operand types {', '.join(str(t) for t in ts)} differ")
        shapes = [t.shape for t in ts if t.shape is not None]
        if len(shapes) < len(ts) or not shapes:
            return [TensorType(ts[0].dtype, None)]
        r = len(shapes[0])
        if "axis" not in node.attrs:
            raise InferenceError(f"{node.describe()}: attribute 'axis' is required")
        axis = norm_axis(node, int(node.attr("axis")), r)
        if any(len(s) != r for s in shapes):
            raise InferenceError(f"{node.describe()}: operand ranks differ: {', '.join(map(str, ts))}")
        out: list[Dim] = []
        for k in range(r):
            dims = [s[k] for s in shapes]
            if k == axis:
                out.append(_sum(dims))
                continue
            ints = {d for d in dims if isinstance(d, int)}
            if len(ints) > 1:
                raise InferenceError(f"{node.describe()}: operand shapes {', '.join(map(str, ts))} differ off axis {axis}")
            out.append(ints.pop() if ints else dims[0])
        return [TensorType(ts[0].dtype, tuple(out))]

    def channels(self, node: Node) -> list[AxisGroup]:
        n = len(node.inputs)
        r = len(shape_of(node, 0))
        axis = norm_axis(node, int(node.attr("axis")), r)
        groups = [AxisGroup((("out", 0, k), *(("in", i, k) for i in range(n)))) for k in range(r) if k != axis]
        groups.append(AxisGroup((("out", 0, axis), *(("in", i, axis) for i in range(n))), mode="concat"))
        return groups

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        if any(a is None for a in args):
            return None
        arrs = [a for a in args if a is not None]
        return [np.concatenate(arrs, axis=int(node.attr("axis")))]


def _sum(dims: Sequence[Dim]) -> Dim:
    return sum(dims) if all(isinstance(d, int) for d in dims) else UNKNOWN  # type: ignore[arg-type]


@register
class Split(OpDef):
    """Split along ``axis`` by the ``split`` operand, or into ``num_outputs`` (last part smaller) parts.

    channels: the split axis is a mode="concat" group whose first member is the operand
    ("in", 0, axis) followed by the results ("out", i, axis): the operand is the results laid end to end.
    """

    name = "Split"
    foldable = True

    def _sizes(self, node: Node, dim: Dim) -> list[Dim]:
        n = len(node.outputs)
        if node.has_input(1):
            split = const_ints(node, 1)
            if split is None:
                return [UNKNOWN] * n
            if len(split) != n or (isinstance(dim, int) and sum(split) != dim) or min(split, default=0) < 0:
                raise InferenceError(f"{node.describe()}: split {split} does not cut dim {dim} into {n} results")
            return list(split)
        parts = int(node.attr("num_outputs", n))
        if parts != n:
            raise InferenceError(f"{node.describe()}: num_outputs={parts} but the node has {n} results")
        if not isinstance(dim, int):
            return [UNKNOWN] * n
        chunk = -(-dim // n)
        if chunk * (n - 1) > dim:
            raise InferenceError(f"{node.describe()}: cannot split dim {dim} into {n} parts")
        return [chunk] * (n - 1) + [dim - chunk * (n - 1)]

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if t.shape is None:
            return [TensorType(t.dtype, None) for _ in node.outputs]
        axis = norm_axis(node, int(node.attr("axis", 0)), len(t.shape))
        sizes = self._sizes(node, t.shape[axis])
        return [TensorType(t.dtype, (*t.shape[:axis], s, *t.shape[axis + 1 :])) for s in sizes]

    def channels(self, node: Node) -> list[AxisGroup]:
        r = len(shape_of(node, 0))
        axis = norm_axis(node, int(node.attr("axis", 0)), r)
        outs = range(len(node.outputs))
        groups = pairs(node, ((k, k) for k in range(r) if k != axis), outs)
        groups.append(AxisGroup((("in", 0, axis), *(("out", i, axis) for i in outs)), mode="concat"))
        return groups

    def prune(self, graph: Graph, node: Node, kept: Callable[[AxisRef], np.ndarray | None]) -> None:
        axis = norm_axis(node, int(node.attr("axis", 0)), len(shape_of(node, 0)))
        sizes = [pruned_shape(node, "out", i, kept)[axis] for i in range(len(node.outputs))]
        if node.has_input(1):
            set_const_operand(graph, node, 1, np.array(sizes, dtype=np.int64))
        elif sizes != [t.shape[axis] for t in self.infer(node)]:  # type: ignore[union-attr]
            graph.set_input(node, 1, graph.add_constant(np.array(sizes, dtype=np.int64), f"{node.name}/split"))
            node.attrs.pop("num_outputs", None)

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x = args[0]
        if x is None or (node.has_input(1) and arg(args, 1) is None):
            return None
        types = self.infer(node)
        axis = norm_axis(node, int(node.attr("axis", 0)), x.ndim)
        cuts = np.cumsum([t.shape[axis] for t in types])[:-1]  # type: ignore[union-attr,index]
        return list(np.split(x, cuts, axis=axis))


def _slice_plan(node: Node, shape: Shape, starts: list[int], ends: list[int],
                axes: list[int] | None, steps: list[int] | None) -> dict[int, tuple[int, int, int, int] | None]:
    """axis -> (start, end, step, length) with ONNX clamping, or None when the dim is unknown."""
    r = len(shape)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise InferenceError(f"{node.describe()}: starts, ends, axes and steps differ in length")
    plan: dict[int, tuple[int, int, int, int] | None] = {}
    for ax, s, e, st in zip(norm_axes(node, axes, r), starts, ends, steps, strict=True):
        d = shape[ax]
        if st == 0:
            raise InferenceError(f"{node.describe()}: slice step is 0")
        if not isinstance(d, int):
            plan[ax] = None
            continue
        s, e = s + d if s < 0 else s, e + d if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        plan[ax] = (s, e, st, max(0, -(-(e - s) // st)))
    return plan


@register
class Slice(OpDef):
    name = "Slice"
    foldable = True

    def _plan(self, node: Node, shape: Shape, vals: Sequence[list[int] | None]) -> dict | None:
        starts, ends, axes, steps = vals
        if starts is None or ends is None or (node.has_input(3) and axes is None) or (node.has_input(4) and steps is None):
            return None
        return _slice_plan(node, shape, starts, ends, axes, steps)

    def infer(self, node: Node) -> list[Type]:
        t = ttype(node, 0)
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        plan = self._plan(node, t.shape, [const_ints(node, i) for i in range(1, 5)])
        if plan is None:
            axes = const_ints(node, 3)
            unknown = range(len(t.shape)) if axes is None else norm_axes(node, axes, len(t.shape))
            return [TensorType(t.dtype, tuple(UNKNOWN if k in unknown else d for k, d in enumerate(t.shape)))]
        out = tuple(d if k not in plan else (UNKNOWN if plan[k] is None else plan[k][3])  # type: ignore[index]
                    for k, d in enumerate(t.shape))
        return [TensorType(t.dtype, out)]

    def channels(self, node: Node) -> list[AxisGroup]:
        shape = shape_of(node, 0)
        plan = self._plan(node, shape, [const_ints(node, i) for i in range(1, 5)])
        if plan is None:
            return []
        same = [k for k in range(len(shape)) if k not in plan or plan[k] == (0, shape[k], 1, shape[k])]
        groups = pairs(node, ((k, k) for k in same))
        for k, p in plan.items():  # a unit step keeps a range that stays a range once channels go
            if k not in same and p is not None and abs(p[2]) == 1 and p[3] > 0:
                groups.append(AxisGroup((("out", 0, k), ("in", 0, k)), "gather", tuple(range(p[0], p[1], p[2]))))
        return groups

    def prune(self, graph: Graph, node: Node, kept: Callable[[AxisRef], np.ndarray | None]) -> None:
        shape = shape_of(node, 0)
        vals = [const_ints(node, i) for i in range(1, 5)]
        plan = self._plan(node, shape, vals)
        starts, ends = list(vals[0] or []), list(vals[1] or [])
        axes = vals[2] if vals[2] is not None else list(range(len(starts)))
        changed = False
        for n, ax in enumerate(axes):
            k = ax % len(shape)
            kin, kout = kept(("in", 0, k)), kept(("out", 0, k))
            if kin is None and kout is None:
                continue
            s0, e0, st, _ = plan[k]  # type: ignore[index,misc]
            sel = np.arange(s0, e0, st)
            sel = sel if kout is None else sel[kout]
            pos = np.searchsorted(kin, sel) if kin is not None else sel
            starts[n] = int(pos[0])
            ends[n] = int(pos[-1]) + st if st > 0 or pos[-1] > 0 else -(int(shape[k]) + 1)  # type: ignore[arg-type]
            changed = True
        if changed:
            set_const_operand(graph, node, 1, np.array(starts, dtype=np.int64))
            set_const_operand(graph, node, 2, np.array(ends, dtype=np.int64))

    def fold(self, node: Node, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
        x = args[0]
        if x is None:
            return None
        vals = [None if a is None else [int(v) for v in a.reshape(-1)] for a in args[1:5]]
        vals += [None] * (4 - len(vals))
        plan = self._plan(node, x.shape, vals)
        if plan is None:
            return None
        idx: list[slice] = [slice(None)] * x.ndim
        for k, p in plan.items():
            assert p is not None
            s, e, st, _ = p
            idx[k] = slice(s, e if e >= 0 else None, st)
        return [np.ascontiguousarray(x[tuple(idx)])]
