"""Targets as objects: one per kind (onnx, cpu/gpu through TVM, mcu boards), parsed from text in one place.

A target knows its name, its budgets (what passes may plan against, through the PassContext) and, where it
has one, a cheap ``estimator`` (graph -> figures) that needs no build (an MCU's arena and weight bytes come from the planner exactly).
``api.compile`` parses the target text here once and dispatches on the object; passes never import a
backend for budgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from nasc.errors import UsageError
from nasc.ir.core import Graph
from nasc.passes.manager import Budgets

NAMES = "onnx, cpu, cpu:<llvm-mcpu>, gpu, gpu:sm_XX, mcu[:BOARD] or a JSON TVM target"


@dataclass(frozen=True)
class Target:
    """A build target: ``text`` as the user wrote it, its kind, and what passes may know of it."""

    text: str
    kind: ClassVar[str] = ""

    @property
    def budgets(self) -> Budgets:
        """Flash, SRAM and clock where the target has them (none for onnx, cpu and gpu)."""
        return Budgets()

    @property
    def estimator(self) -> Callable[[Graph], dict[str, int]] | None:
        """``graph -> figures`` on this target without building it (what lossy passes report), or None."""
        return None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class OnnxTarget(Target):
    """The optimized graph as an ONNX file (any runtime)."""

    kind: ClassVar[str] = "onnx"


@dataclass(frozen=True)
class TvmTarget(Target):
    """A CPU or GPU through TVM Relax; ``tvm`` is the parsed TVM target (backends/tvm/target.py)."""

    tvm: Any = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return str(self.tvm.kind)


@dataclass(frozen=True)
class McuTarget(Target):
    """A microcontroller board: plain C on a static arena (backends/mcu/)."""

    board: Any = None
    kind: ClassVar[str] = "mcu"

    @property
    def budgets(self) -> Budgets:
        b = self.board
        return Budgets(flash_bytes=b.flash_bytes, sram_bytes=b.sram_bytes, clock_hz=b.clock_mhz * 1e6, name=b.name)

    @property
    def estimator(self) -> Callable[[Graph], dict[str, int]]:
        return self.estimate

    def estimate(self, graph: Graph) -> dict[str, int]:
        """The planner's arena and the weights' flash bytes, exact, without compiling C."""
        from nasc.backends.mcu.build import estimate

        return estimate(graph, self.board)


def parse_target(text: Any) -> Target:
    """The target object for ``onnx``, ``cpu[:mcpu]``, ``gpu[:sm_XX]``, ``mcu[:BOARD]`` or a JSON TVM target."""
    if isinstance(text, Target):
        return text
    if not isinstance(text, str):
        raise UsageError(f"target {text!r} is not a string; targets: {NAMES}")
    name = text.strip().partition(":")[0]
    if text.strip() == "onnx":
        return OnnxTarget(text)
    if name == "mcu":
        from nasc.backends.mcu.boards import parse_board

        return McuTarget(text, board=parse_board(text))
    from nasc.backends.tvm.target import parse_target as parse_tvm

    return TvmTarget(text, tvm=parse_tvm(text))
