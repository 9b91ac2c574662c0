"""Torch lowerings of convolutions, matmuls, pooling, norms, resizing, attention and LSTM (ONNX semantics)."""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nasc.backends.pytorch.lower import Lx, const_of, result_used, torch_lowering
from nasc.errors import UnsupportedModelError
from nasc.ir.core import Node
from nasc.ir.ops.registry import lookup_node
from nasc.ir.ops.resize import resize_coords

# ---- linear algebra and nn ------------------------------------------------------------------------------


@torch_lowering("MatMul")
def _matmul(lx: Lx, node: Node) -> Any:
    return lx.call(torch.matmul, lx.x(node, 0), lx.x(node, 1))


def gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, alpha: float, beta: float, trans_a: bool,
         trans_b: bool) -> torch.Tensor:
    y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


@torch_lowering("Gemm")
def _gemm(lx: Lx, node: Node) -> Any:
    return lx.call(gemm, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), float(node.attr("alpha", 1.0)),
                   float(node.attr("beta", 1.0)), bool(node.attr("transA", 0)), bool(node.attr("transB", 0)))


def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, strides: list[int], pads: list[int],
         dilations: list[int], group: int) -> torch.Tensor:
    k = w.dim() - 2
    begin, end = pads[:k], pads[k:]
    if begin != end:  # asymmetric: pad explicitly (F.pad takes the last axis first)
        x = F.pad(x, [p for i in reversed(range(k)) for p in (begin[i], end[i])])
        begin = [0] * k
    fn = (F.conv1d, F.conv2d, F.conv3d)[k - 1]
    return fn(x, w, b, strides, begin, dilations, group)


def _conv_pads(node: Node, spatial_in: list[int], kernel: list[int], strides: list[int], dilations: list[int],
               out: list[int]) -> list[int]:
    """Explicit begin + end pads, auto_pad SAME_* resolved against the static output shape."""
    auto = str(node.attr("auto_pad", "NOTSET"))
    k = len(kernel)
    if auto in ("NOTSET", "VALID"):
        return list(node.attr("pads") or [0] * 2 * k) if auto == "NOTSET" else [0] * 2 * k
    begins, ends = [], []
    for i in range(k):
        total = max((out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial_in[i], 0)
        begins.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
        ends.append(total - begins[-1])
    return begins + ends


def conv_geometry(node: Node) -> tuple[list[int], list[int], list[int]]:
    """A convolution node's strides, explicit pads (auto_pad resolved) and dilations."""
    x, w = node.input(0), node.input(1)
    k = len(w.shape) - 2
    strides = list(node.attr("strides") or [1] * k)
    dilations = list(node.attr("dilations") or [1] * k)
    pads = _conv_pads(node, list(x.shape[2:]), list(w.shape[2:]), strides, dilations,
                      list(node.outputs[0].shape[2:]))
    return strides, pads, dilations


@torch_lowering("Conv")
def _conv(lx: Lx, node: Node) -> Any:
    strides, pads, dilations = conv_geometry(node)
    return lx.call(conv, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), strides, pads, dilations,
                   int(node.attr("group", 1)))


def conv_transpose(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, strides: list[int],
                   dilations: list[int], group: int, window: list[int]) -> torch.Tensor:
    """The full transposed convolution, then the window ONNX asks for (F.pad's pairs, last axis first: negative
    crops, positive zero-extends)."""
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[w.dim() - 3]
    y = F.pad(fn(x, w, None, strides, 0, 0, group, dilations), window)
    return y if b is None else y + b.reshape(1, -1, *[1] * (w.dim() - 2))


@torch_lowering("ConvTranspose")
def _conv_transpose(lx: Lx, node: Node) -> Any:
    x, w = node.input(0), node.input(1)
    k = len(w.shape) - 2
    strides = list(node.attr("strides") or [1] * k)
    dilations = list(node.attr("dilations") or [1] * k)
    out = list(node.outputs[0].shape[2:])
    full = [strides[i] * (x.shape[2 + i] - 1) + (w.shape[2 + i] - 1) * dilations[i] + 1 for i in range(k)]
    auto = str(node.attr("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        extra = list(node.attr("output_padding") or [0] * k)
        total = [full[i] + extra[i] - out[i] for i in range(k)]
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
    else:
        begin = list(node.attr("pads") or [0] * 2 * k)[:k] if auto == "NOTSET" else [0] * k
    window = [p for i in reversed(range(k)) for p in (-begin[i], begin[i] + out[i] - full[i])]
    return lx.call(conv_transpose, lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), strides, dilations,
                   int(node.attr("group", 1)), window)


def _pool_window(node: Node) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """kernel, strides, dilations, explicit pads (F.pad order), and the pads that make the input exactly as long
    as the static output's windows reach (ceil_mode's extra included, or a crop), F.pad order."""
    x = node.input(0)
    k = len(x.shape) - 2
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides") or [1] * k)
    dilations = list(node.attr("dilations") or [1] * k)
    out = list(node.outputs[0].shape[2:])
    pads = _conv_pads(node, list(x.shape[2:]), kernel, strides, dilations, out)
    reach = [(out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 for i in range(k)]
    explicit = [p for i in reversed(range(k)) for p in (pads[i], pads[k + i])]
    total = [p for i in reversed(range(k)) for p in (pads[i], reach[i] - x.shape[2 + i] - pads[i])]
    return kernel, strides, dilations, explicit, total


def max_pool(x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int],
             total: list[int]) -> torch.Tensor:
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[x.dim() - 3]
    low = -math.inf if x.dtype.is_floating_point else torch.iinfo(x.dtype).min
    return fn(F.pad(x, total, value=low), kernel, strides, 0, dilations)


@torch_lowering("MaxPool")
def _max_pool(lx: Lx, node: Node) -> Any:
    if len(node.outputs) > 1 and result_used(node, 1):
        raise UnsupportedModelError(f"to_torch: {node.describe()}: MaxPool's indices output has no torch lowering")
    if int(node.attr("storage_order", 0)):
        raise UnsupportedModelError(f"to_torch: {node.describe()}: MaxPool storage_order=1 has no torch lowering")
    kernel, strides, dilations, _, total = _pool_window(node)
    return lx.call(max_pool, lx.x(node, 0), kernel, strides, dilations, total)


def avg_pool(x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int], explicit: list[int],
             total: list[int], include_pad: bool) -> torch.Tensor:
    """Window sums over the zero-padded input, divided by how many of the window's elements count: those of the
    input, and with count_include_pad those of the explicit pads (never ceil_mode's extra)."""
    k = x.dim() - 2
    fn = (F.conv1d, F.conv2d, F.conv3d)[k - 1]
    c = x.shape[1]
    ones = torch.ones(c, 1, *kernel, dtype=x.dtype, device=x.device)
    sums = fn(F.pad(x, total), ones, None, strides, 0, dilations, c)
    mask = torch.ones(1, 1, *x.shape[2:], dtype=x.dtype, device=x.device)
    if include_pad:
        mask = F.pad(mask, explicit, value=1.0)
        rest = [t - e for t, e in zip(total, explicit)]
    else:
        rest = total
    counts = fn(F.pad(mask, rest), ones[:1], None, strides, 0, dilations)
    return sums / counts


@torch_lowering("AveragePool")
def _avg_pool(lx: Lx, node: Node) -> Any:
    kernel, strides, dilations, explicit, total = _pool_window(node)
    return lx.call(avg_pool, lx.x(node, 0), kernel, strides, dilations, explicit, total,
                   bool(node.attr("count_include_pad", 0)))


def layer_norm(x: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None, axis: int,
               eps: float) -> torch.Tensor:
    shape = x.shape[axis % x.dim():]
    if (scale is None or scale.shape == shape) and (bias is None or bias.shape == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    dims = tuple(range(axis % x.dim(), x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if scale is not None:
        y = y * scale
    return y + bias if bias is not None else y


def layer_norm_stats(x: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None, axis: int,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNormalization with its mean and inverse standard deviation (kept dims over the normalized axes)."""
    dims = tuple(range(axis % x.dim(), x.dim()))
    mean = x.mean(dims, keepdim=True)
    inv = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + eps)
    y = (x - mean) * inv
    if scale is not None:
        y = y * scale
    return (y + bias if bias is not None else y), mean, inv


@torch_lowering("LayerNormalization")
def _layer_norm(lx: Lx, node: Node) -> Any:
    args = (lx.x(node, 0), lx.opt(node, 1), lx.opt(node, 2), int(node.attr("axis", -1)),
            float(node.attr("epsilon", 1e-5)))
    if len(node.outputs) == 1:
        return lx.call(layer_norm, *args)
    parts = lx.call(layer_norm_stats, *args)
    return [lx.call(operator.getitem, parts, i) for i in range(len(node.outputs))]


def instance_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@torch_lowering("InstanceNormalization")
def _instance_norm(lx: Lx, node: Node) -> Any:
    return lx.call(instance_norm, lx.x(node, 0), lx.x(node, 1), lx.x(node, 2), float(node.attr("epsilon", 1e-5)))


def group_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """ONNX GroupNormalization: scale and bias per channel (opset 21) or per group (opset 18)."""
    n, c = x.shape[0], x.shape[1]
    g = x.reshape(n, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    if scale.shape[0] != c:
        scale, bias = scale.repeat_interleave(c // groups), bias.repeat_interleave(c // groups)
    shape = [1, c] + [1] * (x.dim() - 2)
    return y * scale.reshape(shape) + bias.reshape(shape)


@torch_lowering("GroupNormalization")
def _group_norm(lx: Lx, node: Node) -> Any:
    return lx.call(group_norm, lx.x(node, 0), lx.x(node, 1), lx.x(node, 2), int(node.attr("num_groups")),
                   float(node.attr("epsilon", 1e-5)))


def lp_normalization(x: torch.Tensor, axis: int, p: int) -> torch.Tensor:
    """x divided by its Lp norm along ``axis`` (a zero norm divides by one)."""
    norm = x.abs().sum(axis, keepdim=True) if p == 1 else torch.sqrt((x * x).sum(axis, keepdim=True))
    return x / torch.where(norm == 0, torch.ones_like(norm), norm)


@torch_lowering("LpNormalization")
def _lp_normalization(lx: Lx, node: Node) -> Any:
    p = int(node.attr("p", 2))
    if p not in (1, 2):
        raise UnsupportedModelError(f"to_torch: {node.describe()}: LpNormalization p={p} has no torch lowering")
    return lx.call(lp_normalization, lx.x(node, 0), int(node.attr("axis", -1)), p)


def batch_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
               eps: float) -> torch.Tensor:
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


@torch_lowering("BatchNormalization")
def _batch_norm(lx: Lx, node: Node) -> Any:
    if any(result_used(node, i) for i in range(1, len(node.outputs))):
        raise UnsupportedModelError(f"to_torch: {node.describe()}: training-mode BatchNormalization (running "
                                    "statistics) has no torch lowering")
    return lx.call(batch_norm, *(lx.x(node, i) for i in range(5)), float(node.attr("epsilon", 1e-5)))


@torch_lowering("GlobalAveragePool", "GlobalMaxPool")
def _gap(lx: Lx, node: Node) -> Any:
    dims = tuple(range(2, len(node.input(0).shape)))
    return lx.call(torch.mean if node.op == "GlobalAveragePool" else torch.amax, lx.x(node, 0), dims, keepdim=True)


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    d = np.abs(d)
    return np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                    np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0))


def _resize_matrix(coords: np.ndarray, n_in: int, mode: str, rounding: str, a: float,
                   exclude: bool) -> np.ndarray:
    """(n_out, n_in) weights: the output along one axis is this matrix times the input (edge values repeat)."""
    m = np.zeros((len(coords), n_in))
    base = np.floor(coords)
    frac = coords - base
    if mode == "nearest":
        step = {"round_prefer_floor": frac > 0.5, "round_prefer_ceil": frac >= 0.5, "floor": frac < 0,
                "ceil": frac > 0}[rounding]
        m[np.arange(len(coords)), np.clip(base + step, 0, n_in - 1).astype(np.int64)] = 1.0
        return m
    offsets = np.array([0, 1]) if mode == "linear" else np.array([-1, 0, 1, 2])
    for o, (b, f) in enumerate(zip(base, frac)):
        pts = b + offsets
        w = np.array([1 - f, f]) if mode == "linear" else _cubic(pts - (b + f), a)
        if exclude:
            w = np.where((pts < 0) | (pts > n_in - 1), 0.0, w)
            w = w / w.sum()
        for p, wt in zip(np.clip(pts, 0, n_in - 1).astype(np.int64), w):
            m[o, p] += wt
    return m


def resize(x: torch.Tensor, mats: list[Any], outside: list[Any], value: float) -> torch.Tensor:
    """Axis by axis: the output along axis a is mats[a] (n_out, n_in) times the input; where any axis reads
    outside the input (outside[a]: one flag per output position), ``value``."""
    for a, m in enumerate(mats):
        if m is not None:
            w = torch.tensor(m, dtype=torch.float64, device=x.device).to(x.dtype)
            x = torch.movedim(torch.tensordot(x, w, dims=([a], [1])), -1, a)
    rank = x.dim()
    for a, flags in enumerate(outside):
        if flags is not None:
            f = torch.tensor(flags, dtype=torch.bool, device=x.device).reshape([-1 if i == a else 1 for i in range(rank)])
            x = torch.where(f, torch.full((), value, dtype=x.dtype, device=x.device), x)
    return x


@torch_lowering("Resize")
def _resize(lx: Lx, node: Node) -> Any:
    x = node.input(0)
    rank = len(x.shape)
    out = list(node.outputs[0].shape)
    if int(node.attr("antialias", 0)):
        raise UnsupportedModelError(f"to_torch: {node.describe()}: antialiased Resize has no torch lowering")
    mode = str(node.attr("mode", "nearest"))
    ctm = str(node.attr("coordinate_transformation_mode", "half_pixel"))
    if mode != "nearest" and not node.outputs[0].dtype.startswith("f"):
        raise UnsupportedModelError(f"to_torch: {node.describe()}: {mode} Resize of integers has no torch lowering")

    def floats(i: int) -> list[float]:
        return [float(f) for f in const_of(node, i).reshape(-1)] if node.has_input(i) else []

    axes = [int(a) % rank for a in (node.attr("axes") or range(rank))]
    scale = [1.0] * rank
    given, sizes = floats(2), floats(3)
    ratios = [sz / x.shape[a] for a, sz in zip(axes, sizes)]
    policy = str(node.attr("keep_aspect_ratio_policy", "stretch"))
    for i, a in enumerate(axes):
        scale[a] = given[i] if given else ratios[i] if policy == "stretch" else (
            min(ratios) if policy == "not_larger" else max(ratios))
    roi = [(0.0, 1.0)] * rank
    if ctm == "tf_crop_and_resize":
        r = floats(1)
        for i, a in enumerate(axes):
            roi[a] = (r[i], r[i + len(axes)])
    mats: list[Any] = [None] * rank
    outside: list[Any] = [None] * rank
    for a in range(rank):
        if scale[a] == 1.0 and out[a] == x.shape[a] and ctm != "tf_crop_and_resize":
            continue
        c = resize_coords(ctm, scale[a], x.shape[a], out[a], roi[a])
        mats[a] = _resize_matrix(c, x.shape[a], mode, str(node.attr("nearest_mode", "round_prefer_floor")),
                                 float(node.attr("cubic_coeff_a", -0.75)), bool(node.attr("exclude_outside", 0)))
        mats[a] = mats[a].tolist()
        if ctm == "tf_crop_and_resize" and ((c < 0) | (c > x.shape[a] - 1)).any():
            outside[a] = ((c < 0) | (c > x.shape[a] - 1)).tolist()
    return lx.call(resize, lx.x(node, 0), mats, outside, float(node.attr("extrapolation_value", 0.0)))


def lstm(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None, h0: torch.Tensor | None,
         c0: torch.Tensor | None, p: torch.Tensor | None, hidden: int, direction: str,
         batch_first: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX LSTM (gates i, o, f, c; default activations; optional peepholes), step by step over the sequence:
    Y [seq, dirs, batch, hidden], Y_h and Y_c [dirs, batch, hidden] (batch first with layout=1)."""
    if batch_first:
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
        c0 = c0.transpose(0, 1) if c0 is not None else None
    seq, batch = x.shape[0], x.shape[1]
    ys, hs, cs = [], [], []
    for d in range(w.shape[0]):
        gx = x @ w[d].t()
        if b is not None:
            gx = gx + b[d, :4 * hidden] + b[d, 4 * hidden:]
        h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
        c = c0[d] if c0 is not None else x.new_zeros(batch, hidden)
        backward = direction == "reverse" or (direction == "bidirectional" and d == 1)
        out: list[Any] = [None] * seq
        for t in (range(seq - 1, -1, -1) if backward else range(seq)):
            gi, go, gf, gc = torch.split(gx[t] + h @ r[d].t(), hidden, -1)
            if p is not None:
                gi = gi + c * p[d, :hidden]
                gf = gf + c * p[d, 2 * hidden:]
            c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gc)
            if p is not None:
                go = go + c * p[d, hidden:2 * hidden]
            h = torch.sigmoid(go) * torch.tanh(c)
            out[t] = h
        ys.append(torch.stack(out))
        hs.append(h)
        cs.append(c)
    y, yh, yc = torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)
    if batch_first:
        return y.permute(2, 0, 1, 3), yh.transpose(0, 1), yc.transpose(0, 1)
    return y, yh, yc


def _whole_sequences(node: Node) -> bool:
    """An LSTM/GRU/RNN's ``layout`` (batch first), refusing sequence_lens other than the whole sequence."""
    batch_first = bool(int(node.attr("layout", 0)))
    seq = node.input(0).shape[1 if batch_first else 0]
    if node.has_input(4):
        v = node.input(4)
        if not v.is_const or any(int(n) != seq for n in np.asarray(v.data).reshape(-1)):
            raise UnsupportedModelError(f"to_torch: {node.describe()}: {node.op} with sequence_lens other than the "
                                        "whole sequence has no torch lowering")
    return batch_first


@torch_lowering("LSTM")
def _lstm(lx: Lx, node: Node) -> Any:
    acts = [str(a).lower() for a in node.attr("activations", None) or []]
    if any(a != d for a, d in zip(acts, ["sigmoid", "tanh", "tanh"] * 2)) or node.attr("clip", None) is not None \
            or int(node.attr("input_forget", 0)):
        raise UnsupportedModelError(f"to_torch: {node.describe()}: LSTM with custom activations, clip or "
                                    "input_forget has no torch lowering")
    batch_first = _whole_sequences(node)
    parts = lx.call(lstm, lx.x(node, 0), lx.x(node, 1), lx.x(node, 2), lx.opt(node, 3), lx.opt(node, 5),
                    lx.opt(node, 6), lx.opt(node, 7), int(node.attr("hidden_size")),
                    str(node.attr("direction", "forward")), batch_first)
    return [lx.call(operator.getitem, parts, i) for i in range(len(node.outputs))]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              scale: float) -> torch.Tensor:
    """nasc.Attention: softmax(q @ k^T * scale + mask) @ v."""
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask
    return torch.softmax(s, dim=-1) @ v


@torch_lowering("nasc.Attention")
def _attention(lx: Lx, node: Node) -> Any:
    entry = lookup_node(node)
    scale = entry.scale(node) if entry is not None else 1 / math.sqrt(node.input(0).shape[-1])  # type: ignore[attr-defined]
    return lx.call(attention, lx.x(node, 0), lx.x(node, 1), lx.x(node, 2), lx.opt(node, 3), float(scale))





# ---- more normalizations and the losses ------------------------------------------------------------------


def rms_norm(x: torch.Tensor, scale: torch.Tensor, axis: int, eps: float, stash: torch.dtype) -> torch.Tensor:
    """ONNX RMSNormalization: x / sqrt(mean(x^2) + eps) over axes [axis, rank) in the stash type, back in x's
    type, times scale."""
    xs = x.to(stash)
    dims = tuple(range(axis % x.dim(), x.dim()))
    return (xs * torch.rsqrt((xs * xs).mean(dims, keepdim=True) + eps)).to(x.dtype) * scale


@torch_lowering("RMSNormalization")
def _rms_norm(lx: Lx, node: Node) -> Any:
    from nasc.backends.pytorch.lower import torch_dtype

    st = node.attr("stash_type", 1)
    stash = torch_dtype(st) if isinstance(st, str) else {1: torch.float32, 11: torch.float64}.get(int(st))
    if stash is None:
        raise UnsupportedModelError(f"to_torch: {node.describe()}: stash_type {st!r} has no torch lowering")
    return lx.call(rms_norm, lx.x(node, 0), lx.x(node, 1), int(node.attr("axis", -1)),
                   float(node.attr("epsilon", 1e-5)), stash)


def mean_variance_norm(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    """ONNX MeanVarianceNormalization's body: (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)."""
    mean = x.mean(axes, keepdim=True)
    std = torch.sqrt((x * x).mean(axes, keepdim=True) - mean * mean)
    return (x - mean) / (std + 1e-9)


@torch_lowering("MeanVarianceNormalization")
def _mvn(lx: Lx, node: Node) -> Any:
    rank = len(node.input(0).shape)
    return lx.call(mean_variance_norm, lx.x(node, 0), [int(a) % rank for a in node.attr("axes") or (0, 2, 3)])


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:
    """ONNX LRN: x / (bias + alpha / size * the sum of squares over channels [c - (size-1)//2, c + ceil((size-1)/2)])
    ^ beta."""
    lo = (size - 1) // 2
    sq = F.pad((x * x).movedim(1, -1), (lo, size - 1 - lo)).movedim(-1, 1)
    total = sq.narrow(1, 0, x.shape[1])
    for i in range(1, size):
        total = total + sq.narrow(1, i, x.shape[1])
    return x / (bias + alpha / size * total) ** beta


@torch_lowering("LRN")
def _lrn(lx: Lx, node: Node) -> Any:
    return lx.call(lrn, lx.x(node, 0), int(node.attr("size")), float(node.attr("alpha", 1e-4)),
                   float(node.attr("beta", 0.75)), float(node.attr("bias", 1.0)))


def nll_loss(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str,
             ignore_index: int) -> torch.Tensor:
    """ONNX NegativeLogLikelihoodLoss (``mean``: divided by the summed weights of the targets not ignored)."""
    return F.nll_loss(x, target.long(), weight, ignore_index=ignore_index, reduction=reduction)


def softmax_cross_entropy(x: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str,
                          ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX SoftmaxCrossEntropyLoss: the loss, and the log-probabilities (log_softmax over axis 1)."""
    log_prob = torch.log_softmax(x, 1)
    return nll_loss(log_prob, target, weight, reduction, ignore_index), log_prob


@torch_lowering("NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss")
def _losses(lx: Lx, node: Node) -> Any:
    # without ignore_index every target must be a class: torch's default (-100) is then never a target
    ignore = int(node.attr("ignore_index", -100))
    args = (lx.x(node, 0), lx.x(node, 1), lx.opt(node, 2), str(node.attr("reduction", "mean")), ignore)
    if node.op == "NegativeLogLikelihoodLoss":
        return lx.call(nll_loss, *args)
    parts = lx.call(softmax_cross_entropy, *args)
    return [lx.call(operator.getitem, parts, i) for i in range(len(node.outputs))]


_GRID_MODES = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest", "cubic": "bicubic",
               "bicubic": "bicubic"}


def grid_sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, align: bool) -> torch.Tensor:
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align)


@torch_lowering("GridSample")
def _grid_sample(lx: Lx, node: Node) -> Any:
    """ONNX GridSample is torch's grid_sample (4-d and 5-d inputs; cubic only 4-d)."""
    mode = _GRID_MODES.get(str(node.attr("mode", "linear")))
    padding = str(node.attr("padding_mode", "zeros"))
    rank = len(node.input(0).shape)
    if mode is None or padding not in ("zeros", "border", "reflection") or rank not in (4, 5) or (
            mode == "bicubic" and rank != 4):
        raise UnsupportedModelError(f"to_torch: {node.describe()}: GridSample mode {node.attr('mode', 'linear')!r}"
                                    f" with padding {padding!r} on rank {rank} has no torch lowering")
    return lx.call(grid_sample, lx.x(node, 0), lx.x(node, 1), mode, padding, bool(int(node.attr("align_corners", 0))))


@torch_lowering("Det")
def _det(lx: Lx, node: Node) -> Any:
    return lx.call(torch.linalg.det, lx.x(node, 0))


def gru_rnn(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None, h0: torch.Tensor | None,
            hidden: int, direction: str, batch_first: bool, gru: bool,
            linear_before_reset: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX GRU (gates z, r, h; default activations) or RNN (tanh), step by step over the sequence:
    Y [seq, dirs, batch, hidden] and Y_h [dirs, batch, hidden] (batch first with layout=1)."""
    if batch_first:
        x = x.transpose(0, 1)
        h0 = h0.transpose(0, 1) if h0 is not None else None
    seq, batch = x.shape[0], x.shape[1]
    gates = 3 if gru else 1
    ys, hs = [], []
    for d in range(w.shape[0]):
        gx = x @ w[d].t()
        rb: Any = 0
        if b is not None:
            gx, rb = gx + b[d, :gates * hidden], b[d, gates * hidden:]
        h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
        backward = direction == "reverse" or (direction == "bidirectional" and d == 1)
        out: list[Any] = [None] * seq
        for t in (range(seq - 1, -1, -1) if backward else range(seq)):
            if not gru:
                h = torch.tanh(gx[t] + h @ r[d].t() + rb)
            else:
                xz, xr, xh = torch.split(gx[t], hidden, -1)
                rz, rr, rh = torch.split(r[d], hidden, 0)
                bz, br, bh = torch.split(rb, hidden, -1) if b is not None else (0, 0, 0)
                z = torch.sigmoid(xz + h @ rz.t() + bz)
                rt = torch.sigmoid(xr + h @ rr.t() + br)
                hh = torch.tanh(xh + rt * (h @ rh.t() + bh)) if linear_before_reset else \
                    torch.tanh(xh + (rt * h) @ rh.t() + bh)
                h = (1 - z) * hh + z * h
            out[t] = h
        ys.append(torch.stack(out))
        hs.append(h)
    y, yh = torch.stack(ys, 1), torch.stack(hs)
    if batch_first:
        return y.permute(2, 0, 1, 3), yh.transpose(0, 1)
    return y, yh


@torch_lowering("GRU", "RNN")
def _gru_rnn(lx: Lx, node: Node) -> Any:
    gru = node.op == "GRU"
    acts = [str(a).lower() for a in node.attr("activations", None) or []]
    defaults = ["sigmoid", "tanh"] * 2 if gru else ["tanh"] * 2
    if any(a != d for a, d in zip(acts, defaults)) or node.attr("clip", None) is not None:
        raise UnsupportedModelError(f"to_torch: {node.describe()}: {node.op} with custom activations or clip has no "
                                    "torch lowering")
    batch_first = _whole_sequences(node)
    parts = lx.call(gru_rnn, lx.x(node, 0), lx.x(node, 1), lx.x(node, 2), lx.opt(node, 3), lx.opt(node, 5),
                    int(node.attr("hidden_size")), str(node.attr("direction", "forward")), batch_first, gru,
                    bool(int(node.attr("linear_before_reset", 0))))
    return [lx.call(operator.getitem, parts, i) for i in range(len(node.outputs))]
