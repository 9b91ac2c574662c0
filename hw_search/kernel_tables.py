"""The targets the cost model knows and the kernel table of a graph on each: ``cpu`` (TVM builds, kernels timed in
ms) and ``mcu:BOARD`` (the C project's steps, instructions counted under QEMU ``-icount``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nasc.errors import UsageError
from nasc.ir.core import Graph

UNITS = {"cpu": "ms", "mcu": "instructions"}


def resolve(target: str, here: bool = False) -> Any:
    """The target object of ``target`` (cpu or mcu); with ``here``, also that its builds can be measured on this
    machine (a cpu this host runs; QEMU for a board)."""
    from nasc.backends.targets import McuTarget, TvmTarget, parse_target

    tgt = parse_target(target)
    if not (isinstance(tgt, McuTarget) or (isinstance(tgt, TvmTarget) and tgt.kind == "cpu")):
        raise UsageError(f"the cost model covers cpu builds and mcu boards; target '{target}' is {tgt.kind}")
    if here and isinstance(tgt, TvmTarget):
        from nasc.backends.tvm.target import cpu_unavailable

        why = cpu_unavailable(tgt.tvm)
        if why is not None:
            raise UsageError(f"target '{target}' cannot be profiled here: {why}")
    if here and isinstance(tgt, McuTarget):
        from nasc.backends.mcu.verify import require_tools

        require_tools("qemu", "profiling an mcu build (instructions per kernel under QEMU)")
    return tgt


def key(tgt: Any) -> str:
    """The dataset's key: the tuning database's for cpu (``llvm-<mcpu>``), ``mcu-<board>`` for a board."""
    return f"mcu-{tgt.board.name}" if tgt.kind == "mcu" else str(tgt.tvm.key)


def unit(tgt: Any) -> str:
    return UNITS[tgt.kind]


def planned(graph: Graph, tgt: Any) -> list[dict[str, Any]]:
    """The kernels a build of ``graph`` for ``tgt`` runs, with their features and calls (no code compiled)."""
    if tgt.kind == "mcu":
        from nasc.backends.mcu.build import kernels_and_plan

        k, p = kernels_and_plan(graph, tgt.board)
        return mcu_table(k, p.order)
    from nasc.backends.tvm.build import planned_kernels

    return planned_kernels(graph, tgt.tvm)


def mcu_table(k: Any, order: Sequence[int], per_step: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The kernel table of an mcu build (``k``: backends.mcu.kernels.Kernels, its steps run in ``order``): one row
    per C kernel with its calls, and with ``per_step`` (instructions of each step, in order) its ``cost``."""
    rows: dict[str, dict[str, Any]] = {}
    for pos, i in enumerate(order):
        name = k.program.steps[i].kernel
        row = rows.setdefault(name, {"kernel": name, "calls": 0, "features": k.features[name]})
        row["calls"] += 1
        if per_step is not None:
            row["cost"] = row.get("cost", 0) + int(per_step[pos])
    return list(rows.values())
