"""prune: structured channel pruning on the IR; coupled channels (whole heads, FFN units) go together.

Groups come from the op registry's ``channels`` rules (``prune_groups.py``); the pass
chooses which units of each group to keep by importance, removes the others for real
(weights sliced, shape operands rewritten, every value re-typed: see ``prune_apply.py``)
and reports what it cost. Optionally it refits the layers that lost inputs by least
squares (``reconstruct=true``) and checks zero-invariance on the result (``check=true``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasc.errors import UsageError, VerificationError
from nasc.ir.analysis import summarize
from nasc.ir.core import Graph
from nasc.passes import lossy
from nasc.passes.manager import Feed, Pass, PassContext, register_pass
from nasc.passes.prune_apply import Plan, apply_plan, zero_plan
from nasc.passes.prune_groups import Analysis, Group, channel_groups
from nasc.passes.prune_importance import IMPORTANCE, normalized, scores

DEFAULT_RATIO = 0.3
#: channel multiple that vector units and TVM's schedules want; a note suggests round-to when kept counts miss it
SIMD_CHANNELS = 8
#: calibration inputs the least-squares refit reads (a Gemm head gets one row per input)
RECONSTRUCT_FEEDS = 128
#: groups the zero-invariance check samples (``check=true``), and its tolerance
CHECK_GROUPS = 8
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5


@register_pass
@dataclass(frozen=True)
class Prune(Pass):
    """Remove channels, attention heads and FFN units by importance, in coupled groups; weights shrink for real.

    Lossy: the report gives params and MACs before and after and the error against the
    unpruned graph on the calibration inputs. ``ratio`` removes that fraction of every group
    (default 0.3 when no target is given); ``macs``/``params`` keep that fraction of the
    graph's total by ranking units globally. Groups on LayerNorm-normalized axes are left
    alone unless ``approximate=true`` (removing them changes the kept channels' statistics).
    """

    name = "prune"
    lossy = True
    ratio: float | None = None
    macs: float | None = None
    params: float | None = None
    importance: str = "l2"
    round_to: int = 1
    min_channels: int = 1
    keep: str = ""
    reconstruct: bool = False
    check: bool = False
    approximate: bool = False

    def __post_init__(self) -> None:
        r = self.ratio
        self.check_option("ratio", r is None or (math.isfinite(r) and 0.0 <= r < 1.0),
                          "a fraction of each group's channels to remove, in [0, 1)")
        for opt in ("macs", "params"):
            v = getattr(self, opt)
            self.check_option(opt, v is None or (math.isfinite(v) and 0.0 < v <= 1.0),
                              f"the fraction of the graph's {opt.upper() if opt == 'macs' else opt} to keep, in (0, 1]")
        targets = [o for o in ("ratio", "macs", "params") if getattr(self, o) is not None]
        self.check_option(targets[-1] if targets else "ratio", len(targets) <= 1,
                          "one of ratio, macs or params (not several)")
        self.check_option("importance", self.importance in IMPORTANCE, ", ".join(IMPORTANCE))
        self.check_option("round_to", self.round_to >= 1, "a positive multiple, e.g. 8")
        self.check_option("min_channels", self.min_channels >= 1, "a positive channel count")
        if self.keep:
            try:
                re.compile(self.keep)
            except re.error as e:
                self.check_option("keep", False, f"a Python regular expression matched against scopes and node names: {e}")

    # ---- choosing ---------------------------------------------------------------------------

    def _candidates(self, a: Analysis) -> list[Group]:
        groups = [g for g in a.prunable if self.approximate or not g.inexact]
        if self.keep:
            pat = re.compile(self.keep)
            kept = [g for g in groups if any(pat.search(m.node.scope) or pat.search(m.node.name) for m in g.members)]
            if not kept:
                scopes = sorted({m.node.scope for g in groups for m in g.members if m.node.scope})[:8]
                raise UsageError(f"prune: keep={self.keep!r} matches no prunable group's scope or node name; "
                                 f"scopes look like: {', '.join(scopes) or '(none: the graph has no scopes)'}")
            if len(kept) == len(groups):
                raise UsageError(f"prune: keep={self.keep!r} matches all {len(groups)} prunable groups, so nothing is "
                                 "left to prune; match fewer scopes (nasc inspect --groups lists them)")
            groups = [g for g in groups if g not in kept]
        if not groups:
            raise UsageError(no_group_message(a, self.approximate))
        return groups

    def _min_kept(self, g: Group) -> tuple[int, int]:
        """(fewest units to keep, the multiple kept units are rounded up to)."""
        step = self.round_to // math.gcd(self.round_to, g.width)
        least = max(1, -(-self.min_channels // g.width))
        return min(least, g.size), step

    def _kept_count(self, g: Group, remove: int) -> int:
        least, step = self._min_kept(g)
        kept = g.size - remove
        kept = min(g.size, -(-kept // step) * step)
        return max(kept, least)

    def _select(self, a: Analysis, groups: list[Group], imp: dict[str, np.ndarray], graph: Graph
                ) -> dict[str, np.ndarray]:
        """Unit indices to remove, per group id."""
        if self.macs is None and self.params is None:
            ratio = DEFAULT_RATIO if self.ratio is None else self.ratio
            return {g.id: self._lowest(g, imp, self._kept_count(g, int(g.size * ratio))) for g in groups}
        key, frac = ("macs", self.macs) if self.macs is not None else ("params", self.params)
        assert frac is not None
        order = sorted(((float(s), g.id, i) for g in groups for i, s in enumerate(normalized(imp[g.id]))))
        by_id = {g.id: g for g in groups}
        base = summarize(graph, None)[key]
        goal = frac * base

        def kept_for(m: int) -> dict[str, int]:
            counts: dict[str, int] = {}
            for _, gid, _ in order[:m]:
                counts[gid] = counts.get(gid, 0) + 1
            return {gid: self._kept_count(by_id[gid], c) for gid, c in counts.items()}

        def removal(kept: dict[str, int]) -> dict[str, np.ndarray]:
            return {gid: self._lowest(by_id[gid], imp, k) for gid, k in kept.items()}

        def size(kept: dict[str, int]) -> int:
            trial = graph.clone()
            apply_plan(trial, self._plan(a, removal(kept)), data=False)
            return int(summarize(trial, None)[key])

        lo, hi = 0, len(order)
        if size(kept_for(hi)) > goal:
            raise UsageError(f"prune: {key}={frac:g} cannot be met: removing every removable unit leaves "
                             f"{size(kept_for(hi)) / base:.1%} of the graph's {key} (min-channels={self.min_channels}, "
                             f"round-to={self.round_to}; the rest sits behind barriers: see nasc inspect --groups)")
        while lo < hi:  # the fewest removals that meet the goal
            mid = (lo + hi) // 2
            if size(kept_for(mid)) <= goal:
                hi = mid
            else:
                lo = mid + 1
        kept = kept_for(lo)
        # rounding moves in steps: the prefix that meets the goal may overshoot it; give steps back, most
        # important removed unit first, while the goal still holds
        worth = {gid: max((s for s, g2, _ in order[:lo] if g2 == gid), default=0.0) for gid in kept}
        for gid in sorted(kept, key=lambda g_: -worth[g_]):
            step = self._min_kept(by_id[gid])[1]
            while kept[gid] + step <= by_id[gid].size:
                trial = {**kept, gid: kept[gid] + step}
                if size(trial) > goal:
                    break
                kept = trial
        return removal(kept)

    @staticmethod
    def _lowest(g: Group, imp: dict[str, np.ndarray], kept: int) -> np.ndarray:
        order = np.argsort(imp[g.id], kind="stable")
        return np.sort(order[: g.size - kept])

    @staticmethod
    def _plan(a: Analysis, removed: dict[str, np.ndarray]) -> Plan:
        return a.removal(a.group(gid).units[i] for gid, idx in removed.items() for i in idx)

    # ---- running ----------------------------------------------------------------------------

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if self.ratio == 0.0:
            return False
        q = next((n for n in graph.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")), None)
        if q is not None:
            raise UsageError(f"prune: the graph is already quantized ({q.describe()}); put prune before quantize "
                             "in the pipeline, e.g. simplify,fuse,prune{ratio=0.3},quantize")
        a = channel_groups(graph)
        groups = self._candidates(a)
        if self.reconstruct:
            lossy.need_calib(ctx, "prune: reconstruct=true", "least-squares refits")
        imp = scores(a, graph, groups, self.importance, ctx)
        removed = {gid: idx for gid, idx in self._select(a, groups, imp, graph).items() if idx.size}
        if not removed:
            ctx.note("nothing to remove at these settings")
            return False
        before = lossy.snapshot(graph, ctx)
        original = graph.clone()
        plan = self._plan(a, removed)
        apply_plan(graph, plan)
        details: dict[str, Any] = {}
        if self.reconstruct:
            from nasc.passes.prune_reconstruct import reconstruct, refit_summary

            details["error_without_reconstruct"] = lossy.error(before, lossy.outputs(graph, ctx), ctx)
            details["reconstruct"] = reconstruct(original, graph, plan, ctx, max_feeds=RECONSTRUCT_FEEDS)
            ctx.note(refit_summary(details["reconstruct"]))
        if self.check:
            details["zero_invariance"] = check_zero_invariance(original, a, removed, check_feeds(original, ctx),
                                                               ctx.evaluate)
        details.update(lossy.cost_details(before, graph, ctx))
        details["groups"] = [_group_row(g, imp[g.id], removed.get(g.id)) for g in groups]
        ctx.details.update(details)
        units = sum(len(v) for v in removed.values())
        ctx.count("prune-units", units)
        ctx.count("pruned-groups", len(removed))
        ctx.note(f"{units} units removed from {len(removed)} of {len(groups)} groups "
                 f"({len(a.groups) - len(a.prunable)} groups are barriers)")
        ctx.note(lossy.error_line(details))
        odd = [g for g in groups if g.id in removed and ((g.size - len(removed[g.id])) * g.width) % SIMD_CHANNELS]
        if odd and self.round_to % SIMD_CHANNELS:
            ctx.note(f"{len(odd)} group(s) keep channel counts that are not multiples of {SIMD_CHANNELS} (e.g. "
                     f"{(odd[0].size - len(removed[odd[0].id])) * odd[0].width} in {odd[0].name()}): a cpu build "
                     f"pads them back to whole vectors with zero channels (a few % of MACs), a gpu build runs "
                     f"them slower; round-to={SIMD_CHANNELS} avoids both (docs/benchmarks.md)")
        return True


def _group_row(g: Group, imp: np.ndarray, removed: np.ndarray | None) -> dict[str, Any]:
    gone = set(() if removed is None else removed.tolist())
    kept_imp = [float(s) for i, s in enumerate(imp) if i not in gone]
    gone_imp = [float(imp[i]) for i in sorted(gone)]
    return {"id": g.id, "name": g.name(), "scope": g.scope, "units": g.size, "width": g.width,
            "kept": g.size - len(gone), "removed": len(gone),
            "importance_kept_min": round(min(kept_imp), 6) if kept_imp else None,
            "importance_removed_max": round(max(gone_imp), 6) if gone_imp else None}


def no_group_message(a: Analysis, approximate: bool = False) -> str:
    """Why nothing can be pruned: the barriers that block the most channels."""
    counts: dict[str, int] = {}
    for g in a.groups:
        if g.prunable and (approximate or not g.inexact):
            continue
        why = g.barrier[0] if g.barrier else g.inexact + " (prune{approximate=true} removes them anyway)"
        counts[why] = counts.get(why, 0) + g.size
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
    lines = "; ".join(f"{n} channel(s): {why}" for why, n in top) or "the graph has no weights with channels"
    return f"prune: no group of channels can be removed from this graph. Barriers: {lines}"


def check_feeds(graph: Graph, ctx: PassContext) -> list[Feed]:
    """Calibration inputs for the check, else seeded random ones (:func:`lossy.random_inputs`)."""
    return ctx.calib[:4] if ctx.calib else lossy.random_inputs(graph, ctx.seed, 2)


def check_zero_invariance(original: Graph, a: Analysis, removed: dict[str, np.ndarray], feeds: list[Feed],
                          run: Callable[[Graph, list[Feed]], list[list[np.ndarray]]]) -> dict[str, Any]:
    """For up to CHECK_GROUPS pruned groups, one at a time: the original with the group's channels zeroed and
    the original with them removed give the same outputs (``run`` evaluates a graph on feeds). A
    VerificationError names the first group that fails. Inexact groups (``approximate=true``) change the
    kept channels by design: they are listed as skipped, not checked."""
    worst = 0.0
    checked = []
    inexact = [gid for gid in removed if a.group(gid).inexact]
    for gid in [gid for gid in removed if gid not in inexact][:CHECK_GROUPS]:
        plan = Prune._plan(a, {gid: removed[gid]})
        zeroed, pruned = original.clone(), original.clone()
        zero_plan(zeroed, plan)
        apply_plan(pruned, plan)
        for za, pa in zip(run(zeroed, feeds), run(pruned, feeds), strict=True):
            for z, p in zip(za, pa, strict=True):
                err = float(np.max(np.abs(z - p))) if z.size else 0.0
                worst = max(worst, err)
                if not np.allclose(z, p, rtol=CHECK_RTOL, atol=CHECK_ATOL):
                    raise VerificationError(f"prune: group {gid} ({a.group(gid).name()}) is not zero-invariant: "
                                            f"zeroing its channels and removing them differ by {err:.3g} "
                                            "(a wrong pruning rule; please report it with the model)")
        checked.append(gid)
    return {"groups_checked": checked, "skipped_inexact": inexact, "max_abs_diff": worst, "rtol": CHECK_RTOL,
            "atol": CHECK_ATOL}
