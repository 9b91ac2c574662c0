"""Static memory planning for the MCU call sequence: operator order, liveness, arena offsets.

Pure Python (no TVM): a :class:`Program` is a list of steps (kernel calls) over
buffers. Buffers that live in the arena get an offset; model inputs, outputs and
weights live elsewhere. The planner

1. picks an operator order (a topological order of the steps) with a low peak of
   simultaneously live arena bytes, trying a few strategies where the graph has
   branches (residuals, concats),
2. computes the lower bound for that order: the largest total size of buffers
   live at one step (no planner can do better for that order),
3. places buffers greedily by size (TFLite Micro's scheme), with alignment, trying
   a few placement orders and keeping the smallest arena.

An op's inputs and outputs are live at the same step, so they never overlap,
unless the step is marked in-place-safe: then its output may take over the
buffer of an input that dies at that step (same size), which the planner does by
aliasing the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ALIGN = 16


def align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass
class Buffer:
    """A tensor (or a kernel's workspace) the call sequence reads or writes.

    ``kind``: ``arena`` (planned), ``input`` / ``output`` (the caller's pointers),
    ``weight`` (flash). ``alias_of``: this buffer is a view of another (a reshape).
    """

    name: str
    nbytes: int
    kind: str = "arena"
    alias_of: str | None = None


@dataclass
class Step:
    """One kernel call: the buffers it reads and writes, and the workspace it needs during the call."""

    name: str
    kernel: str
    reads: list[str]
    writes: list[str]
    workspace: int = 0
    inplace: list[str] = field(default_factory=list)  # reads whose buffer the output may take over
    label: str = ""


@dataclass
class Program:
    buffers: dict[str, Buffer]
    steps: list[Step]

    def root(self, name: str) -> str:
        b = self.buffers[name]
        while b.alias_of is not None:
            b = self.buffers[b.alias_of]
        return b.name


@dataclass
class Interval:
    name: str
    nbytes: int
    start: int
    end: int  # inclusive
    offset: int = -1


@dataclass
class Plan:
    """A placed program: the step order, each arena buffer's offset and the arena size."""

    order: list[int]
    intervals: dict[str, Interval]
    arena_bytes: int
    lower_bound_bytes: int
    live_bytes: list[int]
    aliases: dict[str, str] = field(default_factory=dict)  # buffer -> buffer whose memory it reuses
    strategy: str = ""

    def offset(self, name: str) -> int:
        return self.intervals[self.aliases.get(name, name)].offset


# ----------------------------------------------------------------------------------------------
# Operator order
# ----------------------------------------------------------------------------------------------


def _deps(prog: Program) -> list[set[int]]:
    writer: dict[str, int] = {}
    for i, s in enumerate(prog.steps):
        for w in s.writes:
            writer[prog.root(w)] = i
    return [{writer[prog.root(r)] for r in s.reads if prog.root(r) in writer} - {i} for i, s in enumerate(prog.steps)]


def _greedy_order(prog: Program, deps: list[set[int]]) -> list[int]:
    """At each point run the ready step that grows live memory least (frees most), ties by program order."""
    n = len(prog.steps)
    users = _users(prog)
    remaining_uses = {b: len(u) for b, u in users.items()}
    done: set[int] = set()
    order: list[int] = []
    while len(order) < n:
        ready = [i for i in range(n) if i not in done and deps[i] <= done]
        best = min(ready, key=lambda i: (_delta(prog, i, remaining_uses), i))
        order.append(best)
        done.add(best)
        for r in {prog.root(x) for x in prog.steps[best].reads}:
            if r in remaining_uses:
                remaining_uses[r] -= 1
    return order


def _delta(prog: Program, i: int, remaining: dict[str, int]) -> int:
    s = prog.steps[i]
    grow = sum(_arena_size(prog, w) for w in {prog.root(x) for x in s.writes})
    free = sum(_arena_size(prog, r) for r in {prog.root(x) for x in s.reads} if remaining.get(r, 0) == 1)
    return grow - free


def _dfs_order(prog: Program, deps: list[set[int]]) -> list[int]:
    """Post-order from the last step, visiting the costlier branch first (Sethi-Ullman style):
    the branch that needs more memory runs while fewer other results are held."""
    n = len(prog.steps)
    cost = [0] * n
    for i in range(n):
        cost[i] = max([cost[d] for d in deps[i]] + [0]) + sum(_arena_size(prog, w) for w in prog.steps[i].writes)
    seen: set[int] = set()
    order: list[int] = []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            node, expanded = stack.pop()
            if node in seen:
                continue
            if expanded:
                seen.add(node)
                order.append(node)
                continue
            stack.append((node, True))
            for d in sorted(deps[node], key=lambda d: cost[d]):  # pushed cheapest first: costliest pops first
                if d not in seen:
                    stack.append((d, False))

    for i in reversed(range(n)):
        visit(i)
    return order


def _users(prog: Program) -> dict[str, list[int]]:
    users: dict[str, list[int]] = {}
    for i, s in enumerate(prog.steps):
        for r in {prog.root(x) for x in s.reads}:
            users.setdefault(r, []).append(i)
    return users


def _arena_size(prog: Program, name: str) -> int:
    b = prog.buffers[prog.root(name)]
    return align(b.nbytes) if b.kind == "arena" else 0


# ----------------------------------------------------------------------------------------------
# Liveness and placement
# ----------------------------------------------------------------------------------------------


def intervals_for(prog: Program, order: Sequence[int]) -> tuple[dict[str, Interval], dict[str, str]]:
    """Live interval (in positions of ``order``) of every arena buffer and step workspace; in-place aliases."""
    pos = {step: p for p, step in enumerate(order)}
    iv: dict[str, Interval] = {}
    aliases: dict[str, str] = {}
    last_use: dict[str, int] = {}
    for i, s in enumerate(prog.steps):
        for r in s.reads:
            root = prog.root(r)
            last_use[root] = max(last_use.get(root, -1), pos[i])
    for p, i in enumerate(order):
        s = prog.steps[i]
        for w in s.writes:
            root = prog.root(w)
            b = prog.buffers[root]
            if b.kind != "arena" or root in iv or root in aliases:
                continue
            end = max(last_use.get(root, p), p)
            target = _inplace_target(prog, s, root, p, iv, aliases, last_use) if s.inplace else None
            if target is not None:
                aliases[root] = target
                iv[target].end = max(iv[target].end, end)
            else:
                iv[root] = Interval(root, align(b.nbytes), p, end)
        if s.workspace > 0:
            ws = f"{s.name}.workspace"
            iv[ws] = Interval(ws, align(s.workspace), p, p)
    return iv, aliases


def _inplace_target(prog: Program, s: Step, out: str, p: int, iv: dict[str, Interval], aliases: dict[str, str],
                    last_use: dict[str, int]) -> str | None:
    for r in s.inplace:
        root = prog.root(r)
        held = aliases.get(root, root)
        if held in iv and last_use.get(root) == p and iv[held].end == p and iv[held].nbytes == align(
                prog.buffers[out].nbytes):
            return held
    return None


def live_profile(intervals: dict[str, Interval], steps: int) -> list[int]:
    live = [0] * steps
    for v in intervals.values():
        for p in range(v.start, v.end + 1):
            live[p] += v.nbytes
    return live


def _place(ivs: list[Interval], key: Callable[[Interval], tuple]) -> int:
    placed: list[Interval] = []
    arena = 0
    for v in sorted(ivs, key=key):
        clash = sorted((u for u in placed if u.start <= v.end and v.start <= u.end), key=lambda u: u.offset)
        offset = 0
        for u in clash:
            if offset + v.nbytes <= u.offset:
                break
            offset = max(offset, u.offset + u.nbytes)
        v.offset = offset
        placed.append(v)
        arena = max(arena, offset + v.nbytes)
    return arena


_PLACEMENTS: dict[str, Callable[[Interval], tuple]] = {
    "size": lambda v: (-v.nbytes, v.start, v.name),
    "start": lambda v: (v.start, -v.nbytes, v.name),
    "area": lambda v: (-v.nbytes * (v.end - v.start + 1), v.start, v.name),
    "length": lambda v: (-(v.end - v.start), -v.nbytes, v.name),
}


def plan(prog: Program, orders: str = "auto") -> Plan:
    """Choose an order and place every arena buffer; the smallest arena over the strategies tried wins.

    ``orders``: ``auto`` (program order, greedy-by-memory and costly-branch-first orders) or
    ``program`` (keep the given order).
    """
    n = len(prog.steps)
    deps = _deps(prog)
    candidates = {"program": list(range(n))}
    if orders == "auto":
        candidates["greedy"] = _greedy_order(prog, deps)
        candidates["branch-first"] = _dfs_order(prog, deps)
    best: Plan | None = None
    for oname, order in candidates.items():
        _check_topological(order, deps)
        for pname, key in _PLACEMENTS.items():
            iv, aliases = intervals_for(prog, order)
            live = live_profile(iv, n)
            arena = _place(list(iv.values()), key)
            cand = Plan(order, iv, arena, max(live, default=0), live, aliases, f"order={oname}, place={pname}")
            if best is None or (cand.arena_bytes, cand.lower_bound_bytes) < (best.arena_bytes, best.lower_bound_bytes):
                best = cand
    assert best is not None
    return best


def _check_topological(order: Sequence[int], deps: list[set[int]]) -> None:
    done: set[int] = set()
    for i in order:
        if not deps[i] <= done:
            raise AssertionError(f"step {i} scheduled before its inputs")
        done.add(i)


def check_plan(prog: Program, p: Plan) -> None:
    """Raise AssertionError if two buffers live at the same step overlap in the arena."""
    ivs = list(p.intervals.values())
    for a_i, a in enumerate(ivs):
        for b in ivs[a_i + 1:]:
            if a.start <= b.end and b.start <= a.end and a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes:
                raise AssertionError(f"{a.name} and {b.name} overlap while both live")
        if a.offset < 0 or a.offset + a.nbytes > p.arena_bytes or a.offset % ALIGN:
            raise AssertionError(f"{a.name} placed badly at {a.offset}")
