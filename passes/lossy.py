"""What every lossy pass reports: sizes before and after, and the error it cost on the calibration inputs.

A lossy pass takes a :func:`snapshot` of the graph before it changes anything and
calls :func:`cost_details` at the end; the result goes into its report section
(``ctx.details``). Figures: params, MACs, the target's estimate when the context
has one (an MCU's arena and flash bytes), and, with calibration data, the error of
the changed graph against the graph before the pass (max abs error, cosine, top-1
agreement) and the top-1 accuracy before and after when the calibration has labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nasc.errors import UsageError
from nasc.ir import dtypes
from nasc.ir.analysis import summarize
from nasc.ir.core import Graph
from nasc.ir.types import TensorType
from nasc.passes.manager import Feed, PassContext
from nasc.passes.metrics import accuracy, compare

#: calibration batches the error is measured on (the last ones)
ERROR_FEEDS = 64


@dataclass
class Snapshot:
    """A graph's figures, and its outputs on the calibration inputs (None without calibration)."""

    figures: dict[str, int]
    outputs: list[list[np.ndarray]] | None


def need_calib(ctx: PassContext, pass_name: str, why: str) -> list[Feed]:
    """The calibration feeds, or a UsageError saying the pass needs them (``why``: what it measures on them)."""
    if not ctx.calib:
        raise UsageError(f"{pass_name} needs calibration data (--calib FILE.npz, or calib=[...] in Python): "
                         f"{why} measured on random inputs are meaningless. Use --allow-random-calib to go ahead "
                         "anyway")
    return list(ctx.calib)


def error_feeds(ctx: PassContext) -> list[Feed]:
    """The *last* calibration inputs: passes fit and score on the first ones (a least-squares refit reads up
    to 128), so with enough calibration data the error is measured on inputs they did not see."""
    return list(ctx.calib or [])[-ERROR_FEEDS:]


def figures(graph: Graph, ctx: PassContext) -> dict[str, int]:
    """params, MACs and the target's estimate (e.g. arena_bytes, flash_bytes) of ``graph``."""
    s = summarize(graph, None)
    out = {"params": int(s["params"]), "macs": int(s["macs"])}
    if ctx.estimate is not None:
        out.update({k: int(v) for k, v in ctx.estimate(graph).items()})
    return out


def outputs(graph: Graph, ctx: PassContext) -> list[list[np.ndarray]] | None:
    feeds = error_feeds(ctx)
    if not feeds or ctx.runner is None:
        return None
    return ctx.evaluate(graph, feeds)


def snapshot(graph: Graph, ctx: PassContext) -> Snapshot:
    return Snapshot(figures(graph, ctx), outputs(graph, ctx))


def error(before: Snapshot, after: list[list[np.ndarray]] | None, ctx: PassContext) -> dict[str, Any] | None:
    """Error figures of ``after`` against the snapshot's outputs, with accuracies when labels are known."""
    if before.outputs is None or after is None:
        return None
    err: dict[str, Any] = compare(before.outputs, after)
    if ctx.labels is not None:
        start = max(0, len(ctx.calib or []) - len(after))  # the labels of error_feeds(ctx)
        labels = ctx.labels[start:start + len(after)]
        k = ctx.label_output
        err["accuracy_before"] = accuracy([o[k] for o in before.outputs], labels)
        err["accuracy_after"] = accuracy([o[k] for o in after], labels)
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in err.items()}


def cost_details(before: Snapshot, graph: Graph, ctx: PassContext) -> dict[str, Any]:
    """Figures before/after (``{"params": [before, after], ...}``) and the error against the graph before."""
    after = figures(graph, ctx)
    out: dict[str, Any] = {k: [before.figures[k], after.get(k)] for k in before.figures}
    err = error(before, outputs(graph, ctx), ctx)
    if err is not None:
        out["error"] = err
        out["error_feeds"] = len(error_feeds(ctx))
        out["error_feeds_from"] = max(0, len(ctx.calib or []) - ERROR_FEEDS)
    return out


def error_line(details: dict[str, Any]) -> str:
    """One line for ctx.note: the error figures in ``cost_details``' output."""
    err = details.get("error")
    if not err:
        return "error: not measured (no calibration data)"
    parts = [f"max abs {err['max_abs_err']:.3g}", f"cosine {err['cosine']:.5f}"]
    if "top1_agreement" in err:
        parts.append(f"top-1 agreement {err['top1_agreement']:.2%}")
    if "accuracy_after" in err:
        parts.append(f"accuracy {err['accuracy_before']:.2%} → {err['accuracy_after']:.2%}")
    first = details.get("error_feeds_from", 0)
    which = f"the last {details['error_feeds']} calibration inputs" if first else \
        f"{details['error_feeds']} calibration inputs"
    return f"error vs before on {which}: " + ", ".join(parts)


def random_inputs(graph: Graph, seed: int, batches: int = 1) -> list[dict[str, np.ndarray]]:
    """Seeded random inputs for every graph input: floats ~ N(0, 1); integers and bools in {0, 1}.

    Integer inputs are usually ids or masks, whose valid range nasc cannot know:
    {0, 1} is valid for both, and lossy passes need real calibration data anyway.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        feed: dict[str, np.ndarray] = {}
        for v in graph.inputs:
            t = v.type
            if not isinstance(t, TensorType):
                raise ValueError(f"input '{v.name}' is not a tensor ({t}); give real inputs")
            shape = t.static_shape
            npdt = dtypes.to_numpy(t.dtype)
            if t.dtype in dtypes.FLOAT_DTYPES:
                feed[v.name] = rng.standard_normal(shape).astype(npdt)
            elif t.dtype == "bool":
                feed[v.name] = rng.integers(0, 2, shape).astype(bool)
            elif t.dtype == "str":
                feed[v.name] = np.full(shape, "a", dtype=object)
            else:
                feed[v.name] = rng.integers(0, 2, shape).astype(npdt)
        out.append(feed)
    return out
