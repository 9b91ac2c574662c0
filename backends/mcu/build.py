"""Build an IR graph for a microcontroller: kernels, memory plan, budget check, C project, report facts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from nasc.backends.mcu import emit
from nasc.backends.mcu.boards import Board
from nasc.backends.mcu.kernels import Kernels, build_kernels
from nasc.backends.mcu.plan import Plan, check_plan, plan
from nasc.backends.mcu.verify import object_sizes
from nasc.errors import Error, UnsupportedModelError
from nasc.ir.core import Graph, Node


class BudgetError(Error):
    """The model does not fit the board's SRAM or flash."""


@dataclass
class McuBuild:
    kernels: Kernels
    plan: Plan
    inputs: list[emit.Port]
    outputs: list[emit.Port]
    labels: dict[str, str]
    facts: dict[str, Any]


def c_target(board: Board) -> tvm.target.Target:
    return tvm.target.Target({"kind": "c", "mcpu": board.core, "keys": ["arm_cpu", "cpu"]})


def build_mcu(graph: Graph, board: Board, out: Path, *, model: str, pipeline: str, budget_check: bool = True,
              orders: str = "auto", profile: bool = False) -> McuBuild:
    """Write the C project for ``graph`` into ``out`` and return what the report needs.

    Raises :class:`BudgetError` before writing anything when the arena or the weights exceed the board
    (unless ``budget_check`` is False). ``profile``: a project whose QEMU harness times every step
    (verify.step_instructions), for the cost model.
    """
    integer: dict[str, Any] = {}
    k, p = kernels_and_plan(graph, board, orders, integer)
    layers = step_layers(graph, k)
    labels = layer_labels(k, layers)
    weight_bytes = sum(int(w.array.nbytes) for w in k.weights.values())
    ins, outs = emit.ports(k, [v.name for v in graph.inputs], [v.name for v in graph.outputs])
    if budget_check:
        check_budget(k, p, board, labels, weight_bytes, pipeline)
    files = emit.write_project(out, k, p, board, ins, outs, labels, model, weight_bytes, profile)
    sizes = object_sizes(out)
    flash = sum(s["text"] + s["data"] for s in sizes.values()) if sizes else None
    # code flash: everything but weights.o, whose flash is the weight arrays (weights_bytes) and their pointer table
    code = sum(s["text"] + s["data"] for name, s in sizes.items() if name != "weights.o") if sizes else None
    if budget_check and flash is not None and code is not None and flash > board.flash_bytes:
        raise BudgetError(f"the model needs {_kb(flash)} of flash (code {_kb(code)} + weights {_kb(flash - code)}, "
                          "measured with arm-none-eabi-size) "
                          f"but {board.name} has {_kb(board.flash_bytes)}. {_flash_hint(k, labels, pipeline)}")
    steps = []
    writer = {w: labels.get(s.name, s.label) for s in k.program.steps for w in s.writes}
    for pos, i in enumerate(p.order):
        s = k.program.steps[i]
        steps.append({"step": pos, "kernel": s.kernel, "layer": labels.get(s.name, s.label),
                      "nodes": [n.name for n in layers.get(s.name, [])],
                      "live_bytes": p.live_bytes[pos], "workspace_bytes": s.workspace,
                      "outputs": {w: _where(k, p, w) for w in s.writes}})
    facts = {
        "board": {"name": board.name, "core": board.core, "sram_bytes": board.sram_bytes,
                  "flash_bytes": board.flash_bytes, "cflags": list(board.cflags), "note": board.note},
        "arena_bytes": p.arena_bytes,
        "arena_lower_bound_bytes": p.lower_bound_bytes,
        "naive_bytes": sum(b.nbytes for b in k.program.buffers.values() if b.kind == "arena" and b.alias_of is None),
        "weights_bytes": weight_bytes,
        "flash_bytes": flash,
        "code_bytes": code,
        "objects": sizes,
        "stack_bytes_max_kernel": max(k.stack_bytes.values(), default=0),
        "sram_bytes": p.arena_bytes + max(k.stack_bytes.values(), default=0),
        "plan": p.strategy,
        **integer,
        "kernels": len({s.kernel for s in k.program.steps}),
        "steps": steps,
        # each arena tensor (and kernel workspace) where and when it lives, in steps of the order above; a tensor
        # computed in place shares its input's buffer and is listed under it
        "buffers": [{"name": iv.name, "offset": iv.offset, "bytes": iv.nbytes, "first": iv.start, "last": iv.end,
                     "written_by": writer.get(iv.name, "")}
                    for iv in sorted(p.intervals.values(), key=lambda iv: (iv.start, iv.offset))],
        "files": files,
    }
    return McuBuild(k, p, ins, outs, labels, facts)


def kernels_and_plan(graph: Graph, board: Board, orders: str = "auto", facts: dict[str, Any] | None = None
                     ) -> tuple[Kernels, Plan]:
    """The C kernels for ``graph`` and their static arena plan (nothing written to disk)."""
    from nasc.backends.tvm.lower import to_relax

    check_element_types(graph)
    k = build_kernels(to_relax(graph, facts=facts if facts is not None else {}), c_target(board))
    p = plan(k.program, orders)
    check_plan(k.program, p)
    return k, p


def estimate(graph: Graph, board: Board) -> dict[str, int]:
    """The arena and the weights' flash bytes ``graph`` needs on ``board``, exact from the planner, without
    compiling C (code size is not included: it needs the cross compiler)."""
    k, p = kernels_and_plan(graph, board)
    return {"arena_bytes": p.arena_bytes, "weights_bytes": sum(int(w.array.nbytes) for w in k.weights.values())}


def check_element_types(graph: Graph) -> None:
    """Refuse half-precision tensors, which the generated C has no type for, naming the first node that has one."""
    for v in graph.values():
        if getattr(v.type, "dtype", None) in ("f16", "bf16"):
            where = f"{v.producer.describe()}: " if isinstance(v.producer, Node) else ""
            raise UnsupportedModelError(f"{where}{v.dtype} tensors (%{v.name}) have no MCU lowering (the generated C "
                                        "has no half-precision type); use a float32 model")


def _where(k: Kernels, p: Plan, name: str) -> str:
    root = k.program.root(name)
    kind = k.program.buffers[root].kind
    return f"arena+{p.offset(root)}" if kind == "arena" else kind


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def step_layers(graph: Graph, k: Kernels) -> dict[str, list[Node]]:
    """Each step's IR nodes, found through the weights it reads (a weight behind a DequantizeLinear belongs to the
    node that reads the dequantized value)."""
    by_content: dict[tuple, list[Node]] = {}
    for node in graph.nodes:
        for v in node.inputs:
            if v is not None and v.is_const and np.asarray(v.data).size > 1:
                readers = [node]
                if node.op == "DequantizeLinear" and v is node.inputs[0]:
                    readers = [u for u in node.outputs[0].users() if u.op != "QuantizeLinear"] or [node]
                arr = np.asarray(v.data)
                for key in {_content_key(arr), *([_content_key(arr.T)] if arr.ndim == 2 else [])}:
                    lst = by_content.setdefault(key, [])  # a matmul's kernel may hold its weight transposed
                    lst += [r for r in readers if r not in lst]
    out: dict[str, list[Node]] = {}
    for s in k.program.steps:
        found: list[Node] = []
        for r in s.reads:
            if r in k.weights:
                nodes = by_content.get(_content_key(k.weights[r].array), [])
                users = k.weights[r].users
                if len(nodes) > 1 and len(users) == len(nodes):  # a shared weight, one step per reading node:
                    nodes = [nodes[users.index(s.name)]]  # both in graph order, so the n-th step is the n-th node
                found += [n for n in nodes if n not in found]
        out[s.name] = found
    return out


def layer_labels(k: Kernels, layers: dict[str, list[Node]]) -> dict[str, str]:
    """Each step's IR layers as text, e.g. ``conv1 (Conv) in scope``; the kernel's name where none is known."""
    labels: dict[str, str] = {}
    for s in k.program.steps:
        found = [f"{n.name or '?'} ({n.op})" + (f" in {n.scope}" if n.scope else "") for n in layers.get(s.name, [])]
        labels[s.name] = ", ".join(found[:3]) + (" ..." if len(found) > 3 else "") if found else s.label
    return labels


def _content_key(arr: np.ndarray) -> tuple:
    a = np.ascontiguousarray(arr)
    return (a.shape, str(a.dtype), hashlib.sha1(a.tobytes()).hexdigest())


def check_budget(k: Kernels, p: Plan, board: Board, labels: dict[str, str], weight_bytes: int, pipeline: str) -> None:
    sram = p.arena_bytes + max(k.stack_bytes.values(), default=0)
    if sram > board.sram_bytes:
        worst = sorted(range(len(p.order)), key=lambda pos: -p.live_bytes[pos])[:3]
        rows = "; ".join(f"{labels.get(k.program.steps[p.order[pos]].name)}: {_kb(p.live_bytes[pos])} live"
                         for pos in worst)
        raise BudgetError(f"the model needs {_kb(sram)} of SRAM (arena {_kb(p.arena_bytes)} + kernel stack) but "
                          f"{board.name} has {_kb(board.sram_bytes)}. Costliest steps: {rows}. {_hint(pipeline)} "
                          "Or use --no-budget-check to build anyway.")
    if weight_bytes > board.flash_bytes:
        raise BudgetError(f"the model's weights need {_kb(weight_bytes)} of flash but {board.name} has "
                          f"{_kb(board.flash_bytes)}. {_flash_hint(k, labels, pipeline)}")


def _flash_hint(k: Kernels, labels: dict[str, str], pipeline: str) -> str:
    biggest = sorted(k.weights.values(), key=lambda w: -w.array.nbytes)[:3]
    rows = "; ".join(f"{', '.join(labels.get(s, s) for s in w.users[:1])}: {_kb(int(w.array.nbytes))}"
                     for w in biggest)
    return f"Largest weights: {rows}. {_hint(pipeline)} Or use --no-budget-check to build anyway."


def _hint(pipeline: str) -> str:
    from nasc.passes.manager import registered_passes

    have = set(registered_passes())
    ran = {p.split("{")[0] for p in pipeline.split(",") if p}
    helpful = [p for p in ("fuse", "prune", "quant-policy", "quantize") if p in have and p not in ran]
    if not helpful:
        return "No available pass would shrink it further; pick a board with more memory."
    return f"Passes that would help: --passes {','.join(['simplify', *helpful])}."
