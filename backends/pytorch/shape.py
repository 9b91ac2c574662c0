"""Torch lowerings of the shape and indexing ops (ONNX semantics; shapes are static in the IR)."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nasc.backends.pytorch.lower import Lx, const_of, constant_node, torch_lowering
from nasc.errors import UnsupportedModelError
from nasc.ir.core import Node
from nasc.ir.ops.registry import lookup_node

# ---- shapes ---------------------------------------------------------------------------------------------


@torch_lowering("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(lx: Lx, node: Node) -> Any:
    return lx.call(torch.reshape, lx.x(node, 0), tuple(node.outputs[0].shape))


@torch_lowering("Expand")
def _expand(lx: Lx, node: Node) -> Any:
    return lx.call(torch.broadcast_to, lx.x(node, 0), tuple(node.outputs[0].shape))


@torch_lowering("Transpose")
def _transpose(lx: Lx, node: Node) -> Any:
    rank = len(node.input(0).shape)
    perm = node.attr("perm")
    return lx.call(torch.permute, lx.x(node, 0), tuple(perm) if perm is not None else tuple(reversed(range(rank))))


@torch_lowering("Concat")
def _concat(lx: Lx, node: Node) -> Any:
    return lx.call(torch.cat, [lx.x(node, i) for i in range(len(node.inputs))], int(node.attr("axis")))


def gather(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Gather (numpy ``take`` along ``axis``; negative indices count from the end)."""
    axis %= x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1:])


@torch_lowering("Gather")
def _gather(lx: Lx, node: Node) -> Any:
    return lx.call(gather, lx.x(node, 0), lx.x(node, 1), int(node.attr("axis", 0)))


def gather_nd(x: torch.Tensor, idx: torch.Tensor, batch_dims: int, shape: list[int]) -> torch.Tensor:
    """ONNX GatherND: the leading ``batch_dims`` axes of ``x`` and ``idx`` pair up (negative indices count from
    the end, as torch's advanced indexing does)."""
    idx = idx.long()
    if not batch_dims:
        return x[tuple(idx.unbind(-1))]
    nb = math.prod(x.shape[:batch_dims])
    xf = x.reshape(nb, *x.shape[batch_dims:])
    idf = idx.reshape(nb, -1, idx.shape[-1])
    b = torch.arange(nb, device=x.device).reshape(nb, 1).expand(nb, idf.shape[1])
    return xf[(b, *idf.unbind(-1))].reshape(shape)


@torch_lowering("GatherND")
def _gather_nd(lx: Lx, node: Node) -> Any:
    return lx.call(gather_nd, lx.x(node, 0), lx.x(node, 1), int(node.attr("batch_dims", 0)),
                   list(node.outputs[0].shape))


def gather_elements(x: torch.Tensor, idx: torch.Tensor, axis: int) -> torch.Tensor:
    idx = idx.long()
    return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))


@torch_lowering("GatherElements")
def _gather_elements(lx: Lx, node: Node) -> Any:
    axis = int(node.attr("axis", 0)) % len(node.input(0).shape)
    return lx.call(gather_elements, lx.x(node, 0), lx.x(node, 1), axis)


def split(x: torch.Tensor, sizes: list[int], axis: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.split(x, sizes, axis))


@torch_lowering("Split")
def _split(lx: Lx, node: Node) -> Any:
    axis = int(node.attr("axis", 0)) % len(node.input(0).shape)
    parts = lx.call(split, lx.x(node, 0), [int(o.shape[axis]) for o in node.outputs], axis)
    return [lx.call(operator.getitem, parts, i) for i in range(len(node.outputs))]


def strided(x: torch.Tensor, index: list[list[int]]) -> torch.Tensor:
    """``x`` taking, along each axis, the listed positions (a slice with any step, negative included)."""
    for ax, idx in enumerate(index):
        if idx is not None:
            x = torch.index_select(x, ax, torch.tensor(idx, dtype=torch.long, device=x.device))
    return x


@torch_lowering("Slice")
def _slice(lx: Lx, node: Node) -> Any:
    shape = node.input(0).shape
    starts, ends = const_of(node, 1).reshape(-1), const_of(node, 2).reshape(-1)
    axes = const_of(node, 3).reshape(-1) if node.has_input(3) else range(len(starts))
    steps = const_of(node, 4).reshape(-1) if node.has_input(4) else [1] * len(starts)
    index: list[Any] = [None] * len(shape)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = int(ax) % len(shape)
        index[ax] = list(range(shape[ax]))[slice(int(st), int(en), int(sp))]
    return lx.call(strided, lx.x(node, 0), index)


@torch_lowering("Tile")
def _tile(lx: Lx, node: Node) -> Any:
    return lx.call(torch.tile, lx.x(node, 0), tuple(int(r) for r in const_of(node, 1).reshape(-1)))


def pad_constant(x: torch.Tensor, width: list[int], value: float | torch.Tensor) -> torch.Tensor:
    """F.pad with ``value``, a number or a one-element tensor computed by the graph."""
    if not isinstance(value, torch.Tensor):
        return F.pad(x, width, "constant", value)
    inside = F.pad(torch.ones_like(x, dtype=torch.bool), width, "constant", False)
    return torch.where(inside, F.pad(x, width, "constant", 0), value.reshape(()).to(x.dtype))


@torch_lowering("Pad")
def _pad(lx: Lx, node: Node) -> Any:
    """Every mode as the gather numpy's pad gives along each axis (negative pads crop); constant by F.pad."""
    shape = node.input(0).shape
    rank = len(shape)
    pads = [int(p) for p in const_of(node, 1).reshape(-1)]
    axes = [int(a) for a in const_of(node, 3).reshape(-1)] if node.has_input(3) else list(range(rank))
    before, after = [0] * rank, [0] * rank
    for i, ax in enumerate(axes):
        before[ax % rank], after[ax % rank] = pads[i], pads[i + len(axes)]
    mode = str(node.attr("mode", "constant"))
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise UnsupportedModelError(f"to_torch: {node.describe()}: Pad mode {mode!r} has no torch lowering")
    y = lx.x(node, 0)
    if any(p < 0 for p in before + after):
        y = lx.call(strided, y, [list(range(max(-before[a], 0), shape[a] - max(-after[a], 0)))
                                 if before[a] < 0 or after[a] < 0 else None for a in range(rank)])
    cropped = [shape[a] - max(-before[a], 0) - max(-after[a], 0) for a in range(rank)]
    before, after = [max(p, 0) for p in before], [max(p, 0) for p in after]
    if mode == "constant":
        value: Any = 0.0
        if node.has_input(2):  # a constant, or a value the graph computes (a function body's Cast)
            v = node.input(2)
            value = float(np.asarray(v.data).reshape(-1)[0]) if v.is_const else lx.x(node, 2)
        width = [w for a in reversed(range(rank)) for w in (before[a], after[a])]
        return lx.call(pad_constant, y, width, value)
    index = [[int(i) for i in np.pad(np.arange(cropped[a]), (before[a], after[a]), mode=mode)]  # type: ignore[call-overload]
             if before[a] or after[a] else None for a in range(rank)]
    return lx.call(strided, y, index)


@torch_lowering("EyeLike", "Shape", "Size", "ConstantOfShape", "Range")
def _static(lx: Lx, node: Node) -> Any:
    """Results fixed by static shapes or constants: computed here (simplify usually folds them)."""
    from nasc.ir.dtypes import to_numpy

    out = node.outputs[0]
    if node.op == "EyeLike":
        rows, cols = node.input(0).shape
        return constant_node(lx, np.eye(rows, cols, k=int(node.attr("k", 0))).astype(to_numpy(out.dtype)), out.dtype)
    entry = lookup_node(node)
    args = [v.data if v is not None and v.is_const else None for v in node.inputs]
    results = entry.fold(node, args) if entry is not None else None
    if results is None:
        raise UnsupportedModelError(f"to_torch: {node.describe()}: operands must be constants")
    return [constant_node(lx, np.asarray(r).astype(to_numpy(o.dtype)).reshape(o.shape), o.dtype)
            for r, o in zip(results, node.outputs)]


def depth_to_space(x: torch.Tensor, bs: int, crd: bool) -> torch.Tensor:
    b, c, h, w = x.shape
    if crd:
        y = x.reshape(b, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(b, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(b, c // (bs * bs), h * bs, w * bs)


def space_to_depth(x: torch.Tensor, bs: int, crd: bool) -> torch.Tensor:
    b, c, h, w = x.shape
    y = x.reshape(b, c, h // bs, bs, w // bs, bs).permute(*((0, 1, 3, 5, 2, 4) if crd else (0, 3, 5, 1, 2, 4)))
    return y.reshape(b, c * bs * bs, h // bs, w // bs)


@torch_lowering("DepthToSpace")
def _depth_to_space(lx: Lx, node: Node) -> Any:
    return lx.call(depth_to_space, lx.x(node, 0), int(node.attr("blocksize")), str(node.attr("mode", "DCR")) == "CRD")


@torch_lowering("SpaceToDepth")
def _space_to_depth(lx: Lx, node: Node) -> Any:
    return lx.call(space_to_depth, lx.x(node, 0), int(node.attr("blocksize")), str(node.attr("mode", "DCR")) == "CRD")


@torch_lowering("Trilu")
def _trilu(lx: Lx, node: Node) -> Any:
    k = int(const_of(node, 1).reshape(-1)[0]) if node.has_input(1) else 0
    return lx.call(torch.triu if int(node.attr("upper", 1)) else torch.tril, lx.x(node, 0), k)


def one_hot(idx: torch.Tensor, values: torch.Tensor, depth: int, axis: int) -> torch.Tensor:
    """ONNX OneHot: negative indices count from depth; indices outside [-depth, depth) give all off values."""
    idx = idx.long()
    idx = torch.where(idx < 0, idx + depth, idx).unsqueeze(axis)
    shape = [1] * idx.dim()
    shape[axis] = depth
    hot = idx == torch.arange(depth, device=idx.device).reshape(shape)
    return torch.where(hot, values[1], values[0])


@torch_lowering("OneHot")
def _one_hot(lx: Lx, node: Node) -> Any:
    depth = int(node.outputs[0].shape[int(node.attr("axis", -1)) % len(node.outputs[0].shape)])
    axis = int(node.attr("axis", -1)) % len(node.outputs[0].shape)
    return lx.call(one_hot, lx.x(node, 0), lx.x(node, 2), depth, axis)


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def scatter_elements(x: torch.Tensor, idx: torch.Tensor, upd: torch.Tensor, axis: int,
                     reduction: str) -> torch.Tensor:
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    if reduction == "none":
        return torch.scatter(x, axis, idx, upd)
    return torch.scatter_reduce(x, axis, idx, upd, _SCATTER_REDUCE[reduction], include_self=True)


@torch_lowering("ScatterElements")
def _scatter_elements(lx: Lx, node: Node) -> Any:
    return lx.call(scatter_elements, lx.x(node, 0), lx.x(node, 1), lx.x(node, 2),
                   int(node.attr("axis", 0)) % len(node.input(0).shape), str(node.attr("reduction", "none")))


def scatter_nd(x: torch.Tensor, idx: torch.Tensor, upd: torch.Tensor, reduction: str) -> torch.Tensor:
    """ONNX ScatterND, its updates applied in order (as the reference does)."""
    out = x.clone()
    k = idx.shape[-1]
    flat_idx = idx.long().reshape(-1, k)
    flat_upd = upd.reshape(-1, *x.shape[k:])
    for i in range(flat_idx.shape[0]):
        at = tuple(flat_idx[i].tolist())
        if reduction == "none":
            out[at] = flat_upd[i]
        elif reduction == "add":
            out[at] = out[at] + flat_upd[i]
        elif reduction == "mul":
            out[at] = out[at] * flat_upd[i]
        elif reduction == "max":
            out[at] = torch.maximum(out[at], flat_upd[i])
        else:
            out[at] = torch.minimum(out[at], flat_upd[i])
    return out


@torch_lowering("ScatterND")
def _scatter_nd(lx: Lx, node: Node) -> Any:
    return lx.call(scatter_nd, lx.x(node, 0), lx.x(node, 1), lx.x(node, 2), str(node.attr("reduction", "none")))


