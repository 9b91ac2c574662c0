"""The MCU memory planner: operator order, liveness, placement (pure Python, no TVM)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nasc.backends.mcu.plan import ALIGN, Buffer, Program, Step, check_plan, intervals_for, live_profile, plan


def _prog(sizes: dict[str, int], steps: list[tuple[list[str], str]], inputs: tuple[str, ...] = ("x",),
          outputs: tuple[str, ...] = (), workspace: dict[int, int] | None = None,
          inplace: dict[int, list[str]] | None = None) -> Program:
    bufs = {n: Buffer(n, b, "input" if n in inputs else "output" if n in outputs else "arena") for n, b in sizes.items()}
    return Program(bufs, [Step(f"s{i}", f"k{i}", reads, [w], (workspace or {}).get(i, 0), (inplace or {}).get(i, []))
                          for i, (reads, w) in enumerate(steps)])


def test_chain_reuses_memory_and_hits_the_lower_bound() -> None:
    # x -> a (64) -> b (32) -> c (64) -> y: at most two tensors live at once.
    p = _prog({"x": 16, "a": 64, "b": 32, "c": 64, "y": 16}, [(["x"], "a"), (["a"], "b"), (["b"], "c"), (["c"], "y")],
              outputs=("y",))
    res = plan(p)
    check_plan(p, res)
    assert res.live_bytes == [64, 96, 96, 64]  # a; a+b; b+c; c
    assert res.lower_bound_bytes == 96
    assert res.arena_bytes == res.lower_bound_bytes
    assert res.offset("a") != res.offset("b")


def test_inputs_and_outputs_of_a_step_never_overlap() -> None:
    p = _prog({"x": 16, "a": 256, "b": 256, "y": 16}, [(["x"], "a"), (["a"], "b"), (["b"], "y")], outputs=("y",))
    res = plan(p)
    check_plan(p, res)
    assert res.arena_bytes == 512
    assert {res.offset("a"), res.offset("b")} == {0, 256}


def test_inplace_step_reuses_its_dying_input() -> None:
    p = _prog({"x": 16, "a": 256, "b": 256, "y": 16}, [(["x"], "a"), (["a"], "b"), (["b"], "y")], outputs=("y",),
              inplace={1: ["a"]})
    res = plan(p)
    check_plan(p, res)
    assert res.aliases == {"b": "a"}
    assert res.arena_bytes == 256 == res.lower_bound_bytes
    assert res.offset("b") == res.offset("a")


def test_inplace_is_refused_when_the_input_is_still_needed() -> None:
    # b = relu(a) marked in-place, but a is read again by the last step: b must not overwrite it.
    p = _prog({"x": 16, "a": 256, "b": 256, "y": 16}, [(["x"], "a"), (["a"], "b"), (["a", "b"], "y")],
              outputs=("y",), inplace={1: ["a"]})
    res = plan(p)
    check_plan(p, res)
    assert res.aliases == {}
    assert res.arena_bytes == 512


def test_workspace_counts_toward_the_arena() -> None:
    p = _prog({"x": 16, "a": 64, "y": 16}, [(["x"], "a"), (["a"], "y")], outputs=("y",), workspace={1: 100})
    res = plan(p)
    check_plan(p, res)
    assert res.lower_bound_bytes == 64 + 112  # the workspace, aligned to 16, is live at step 1 with a
    assert res.arena_bytes == res.lower_bound_bytes


def test_operator_order_lowers_the_peak_on_branches() -> None:
    # Two branches from x joined at the end. Program order interleaves them and holds both big
    # intermediates at once; finishing one branch before starting the other holds one big tensor
    # plus the small results.
    sizes = {"x": 16, "a1": 1024, "a2": 1024, "b1": 16, "b2": 16, "y": 16}
    steps = [(["x"], "a1"), (["x"], "a2"), (["a1"], "b1"), (["a2"], "b2"), (["b1", "b2"], "y")]
    p = _prog(sizes, steps, outputs=("y",))
    program_only = plan(p, orders="program")
    best = plan(p)
    check_plan(p, best)
    assert program_only.lower_bound_bytes == 2048 + 16
    assert best.lower_bound_bytes == 1024 + 16 + 16
    assert best.arena_bytes == best.lower_bound_bytes
    assert best.order != [0, 1, 2, 3, 4]


def test_reshape_alias_extends_the_lifetime() -> None:
    bufs = {"x": Buffer("x", 16, "input"), "a": Buffer("a", 64), "a2": Buffer("a2", 64, "arena", alias_of="a"),
            "b": Buffer("b", 64), "y": Buffer("y", 16, "output")}
    p = Program(bufs, [Step("s0", "k", ["x"], ["a"]), Step("s1", "k", ["x"], ["b"]), Step("s2", "k", ["a2", "b"], ["y"])])
    res = plan(p, orders="program")
    check_plan(p, res)
    assert res.intervals["a"].end == 2  # read through its alias at the last step
    assert res.arena_bytes == 128


@st.composite
def random_programs(draw: st.DrawFn) -> Program:
    n = draw(st.integers(1, 14))
    sizes = {"x": 64}
    steps: list[tuple[list[str], str]] = []
    produced = ["x"]
    inplace: dict[int, list[str]] = {}
    workspace: dict[int, int] = {}
    for i in range(n):
        k = draw(st.integers(1, min(3, len(produced))))
        reads = draw(st.lists(st.sampled_from(produced), min_size=1, max_size=k, unique=True))
        name = f"t{i}"
        sizes[name] = draw(st.integers(1, 4096))
        if draw(st.booleans()) and reads[0] != "x":
            sizes[name] = sizes[reads[0]]
            inplace[i] = [reads[0]]
        if draw(st.integers(0, 4)) == 0:
            workspace[i] = draw(st.integers(1, 2048))
        steps.append((reads, name))
        produced.append(name)
    return _prog(sizes, steps, outputs=(f"t{n - 1}",), workspace=workspace, inplace=inplace)


@settings(max_examples=300, deadline=None)
@given(random_programs())
def test_planner_property(p: Program) -> None:
    """On random graphs: no two simultaneously live buffers overlap, offsets are aligned, and the arena is at
    least the lower bound, which is at least what any single step needs."""
    res = plan(p)
    check_plan(p, res)
    assert res.arena_bytes >= res.lower_bound_bytes
    assert all(v.offset % ALIGN == 0 for v in res.intervals.values())
    iv, _ = intervals_for(p, res.order)
    assert max(live_profile(iv, len(p.steps)), default=0) == res.lower_bound_bytes
    for pos, i in enumerate(res.order):  # every step's reads and writes fit in what is live at it
        s = p.steps[i]
        need = {p.root(b) for b in s.reads + s.writes if p.buffers[p.root(b)].kind == "arena"}
        need = {res.aliases.get(b, b) for b in need}
        assert sum(res.intervals[b].nbytes for b in need) <= res.live_bytes[pos]


def test_check_plan_catches_overlap() -> None:
    p = _prog({"x": 16, "a": 64, "b": 64, "y": 16}, [(["x"], "a"), (["a"], "b"), (["b"], "y")], outputs=("y",))
    res = plan(p)
    res.intervals["b"].offset = res.intervals["a"].offset
    with pytest.raises(AssertionError, match="overlap"):
        check_plan(p, res)
