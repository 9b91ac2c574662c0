"""Output error figures (numpy only): how far one set of model outputs is from another.

Shared by lossy passes (their report sections) and the backends' fidelity checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def compare(ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]]) -> dict[str, Any]:
    """Error figures over all outputs and batches: max_abs_err, max_rel_err, cosine, top1_agreement.

    The figures are over the elements finite in both; where there are NaN or infinite
    values, ``nonfinite`` counts them (elements non-finite in either) and
    ``nonfinite_mismatch`` those where the two disagree (not both NaN, not the same inf).
    """
    max_abs = 0.0
    max_rel = 0.0
    dots = nr = ng = 0.0
    top1_hits = top1_total = 0
    nonfinite = mismatched = 0
    for rb, gb in zip(ref, got, strict=True):
        for r, g in zip(rb, gb, strict=True):
            if r.shape != g.shape:
                raise ValueError(f"output shapes differ: {r.shape} vs {g.shape}")
            if r.dtype.kind not in "fiub":
                continue
            r64, g64 = r.astype(np.float64), g.astype(np.float64)
            both = np.isfinite(r64) & np.isfinite(g64)
            bad = int(both.size - np.count_nonzero(both))
            if bad:
                nonfinite += bad
                same = (np.isnan(r64) & np.isnan(g64)) | (r64 == g64)
                mismatched += int(np.count_nonzero(~both & ~same))
                r64, g64 = r64[both], g64[both]
            diff = np.abs(r64 - g64)
            if diff.size:
                max_abs = max(max_abs, float(np.max(diff)))
                max_rel = max(max_rel, float(np.max(diff / np.maximum(np.abs(r64), 1e-6))))
            with np.errstate(over="ignore", invalid="ignore"):
                dots += float(np.sum(r64 * g64))
                nr += float(np.sum(r64 * r64))
                ng += float(np.sum(g64 * g64))
            if r.dtype.kind == "f" and r.ndim == 2 and r.shape[1] >= 2:  # class scores [batch, classes]
                top1_hits += int(np.sum(np.argmax(r, 1) == np.argmax(g, 1)))
                top1_total += r.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):
        cosine = 1.0 if nr == 0 and ng == 0 else dots / max(np.sqrt(nr) * np.sqrt(ng), 1e-30)
    out: dict[str, Any] = {"max_abs_err": max_abs, "max_rel_err": max_rel, "cosine": float(cosine)}
    if top1_total:
        out["top1_agreement"] = top1_hits / top1_total
    if nonfinite:
        out["nonfinite"] = nonfinite
        out["nonfinite_mismatch"] = mismatched
    why = uninformative(ref)
    if why:
        out["uninformative"] = why
    return out


def uninformative(ref: Sequence[Sequence[np.ndarray]]) -> str | None:
    """Why figures against these reference outputs certify nothing, or None: outputs that are nowhere finite, all
    zero, or the same for every input (any build that outputs that constant would score a perfect cosine)."""
    floats = [[np.asarray(r).astype(np.float64) for r in rb if np.asarray(r).dtype.kind in "fiub"] for rb in ref]
    arrays = [a for rb in floats for a in rb]
    if not arrays:
        return None
    finite = [a[np.isfinite(a)] for a in arrays]
    if not any(f.size for f in finite):
        return "the original model's outputs are NaN or infinite everywhere on these inputs"
    if not any(np.any(f) for f in finite):
        return "the original model's outputs are all zero on these inputs"
    if len({len(rb) for rb in floats}) != 1:
        return None
    for k in range(len(floats[0])):  # every output the same for every sample (the batch rows of every batch)
        rows = [np.nan_to_num(row) for rb in floats for row in (rb[k] if rb[k].ndim > 1 else rb[k][None])]
        if len(rows) < 2 or len({r.shape for r in rows}) != 1:
            return None
        stack = np.stack(rows)
        spread = float(np.max(stack.max(axis=0) - stack.min(axis=0)))
        if spread > 1e-6 * max(float(np.max(np.abs(stack))), 1e-30):
            return None
    return "the original model's outputs are the same for every input used"


def accuracy(outputs: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Top-1 accuracy of per-sample class scores (each output flattened; argmax) against integer labels."""
    pred = np.array([int(np.argmax(np.asarray(o).reshape(-1))) for o in outputs])
    return round(float(np.mean(pred == np.asarray(labels).reshape(-1)[: len(pred)])), 4)
