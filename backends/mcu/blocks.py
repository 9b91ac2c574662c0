"""Repeated runs of steps in the MCU call sequence (transformer layers), emitted once as a block function.

N equal layers call the same kernels (TVM merges equal functions), but the ahead-of-time call sequence
still holds N copies of the calls, each loading its pointers. :func:`find_runs` finds the repeats, so
model.c can call one ``nasc_block_K`` per copy with that copy's table of pointers instead.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

MIN_LEN = 3  # shorter units save too little: the call of the block and its table cost about what they replace


@dataclass(frozen=True)
class Run:
    """``count`` consecutive copies of the ``length`` steps at ``start`` (positions in the call sequence)."""

    start: int
    length: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.length * self.count

    def copies(self) -> list[int]:
        return [self.start + c * self.length for c in range(self.count)]


def calls_saved(run: Run) -> int:
    """The calls a block saves: the copies' calls, less the block calls and the block function's own calls."""
    return run.length * run.count - run.count - run.length


def find_runs(keys: Sequence[Hashable | None], min_len: int = MIN_LEN,
              gain: Callable[[Run], float] = calls_saved) -> list[Run]:
    """Non-overlapping runs of ``count >= 2`` consecutive copies of a unit of ``>= min_len`` equal keys.

    ``keys[i]`` says what step ``i`` needs from a shared function (its kernel, the kinds of its pointers,
    its workspace); ``None`` marks a step that cannot be in one. Greedy: take the run of the largest
    positive ``gain`` (by default :func:`calls_saved`; model.c passes its estimate of code bytes), each
    start with its most copies, then look again in what is left. Sorted by start.
    """
    n = len(keys)
    ids: list[int] = []
    seen: dict[Hashable, int] = {}
    for key in keys:  # small ints compare faster than the keys, and None gets a unique id each time
        ids.append(-1 - len(ids) if key is None else seen.setdefault(key, len(seen)))
    free = [k is not None for k in keys]
    runs: list[Run] = []
    while True:
        best: tuple[float, int, Run] | None = None  # (gain, -start, run)
        for i in range(n):
            if not free[i]:
                continue
            stop = i
            while stop < n and free[stop]:
                stop += 1
            for length in range(min_len, (stop - i) // 2 + 1):
                unit = ids[i:i + length]
                count = 1
                while i + (count + 1) * length <= stop and ids[i + count * length:i + (count + 1) * length] == unit:
                    count += 1
                if count < 2:
                    continue
                run = Run(i, length, count)
                g = gain(run)
                if g > 0 and (best is None or (g, -i) > best[:2]):
                    best = (g, -i, run)
        if best is None:
            break
        run = best[2]
        runs.append(run)
        for j in range(run.start, run.end):
            free[j] = False
    return sorted(runs, key=lambda r: r.start)
