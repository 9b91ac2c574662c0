"""Build the generated C project and run it: with the host gcc, or cross-compiled and on QEMU.

Both run the project's own Makefile (``make host`` / ``make qemu``) in a scratch
copy, feeding samples through ``nasc_in.bin`` and reading ``nasc_out.bin``, so a
user can repeat exactly what nasc checked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasc.backends.mcu.emit import Port
from nasc.errors import Error, UsageError

TOOLS = {"host": ["gcc", "make"], "qemu": ["arm-none-eabi-gcc", "qemu-system-arm", "make"]}
INSTALL_HINT = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm (make test installs them)"


class McuRunError(Error):
    """The generated C did not build or did not run."""


def missing_tools(mode: str) -> list[str]:
    return [t for t in TOOLS[mode] if shutil.which(t) is None]


def require_tools(mode: str, what: str | None = None) -> None:
    """A UsageError naming the missing tools of ``mode`` and how to install them; ``what`` says what needs them
    (default: ``--verify MODE``)."""
    missing = missing_tools(mode)
    if missing:
        raise UsageError(f"{what or f'--verify {mode}'} needs {', '.join(missing)} on PATH: {INSTALL_HINT}")


def run_project(project: Path, mode: str, ins: list[Port], outs: list[Port],
                feeds: Sequence[Mapping[str, Any]], timeout_s: float = 600) -> list[list[np.ndarray]]:
    """Outputs of the compiled project for each feed (input name -> array), built and run by ``mode``."""
    require_tools(mode)
    with tempfile.TemporaryDirectory(prefix="nasc-mcu-") as tmp:
        work = _stage(project, Path(tmp), ins, feeds)
        log = _make(work, mode, timeout_s)
        raw = (work / "nasc_out.bin").read_bytes() if (work / "nasc_out.bin").exists() else b""
    per_sample = sum(p.size * np.dtype(p.dtype).itemsize for p in outs)
    if len(raw) != per_sample * len(feeds):
        raise McuRunError(f"the {mode} run wrote {len(raw)} bytes for {len(feeds)} samples "
                          f"(expected {per_sample * len(feeds)}); its log:\n{log[-2000:]}")
    results = []
    pos = 0
    for _ in feeds:
        sample = []
        for p in outs:
            n = p.size * np.dtype(p.dtype).itemsize
            sample.append(np.frombuffer(raw[pos:pos + n], dtype=p.dtype).reshape(p.shape).copy())
            pos += n
        results.append(sample)
    return results


def instructions(project: Path, ins: list[Port], feed: Mapping[str, Any], timeout_s: float = 600) -> int:
    """How many instructions one ``nasc_run`` on ``feed`` executes on the board's QEMU machine.

    QEMU runs with ``-icount shift=0`` (each instruction advances its virtual clock by 1 ns) and the harness reads
    the MPS2 timer (25 MHz on that clock) around the call: the count is exact to the timer's 40-instruction tick.
    It is deterministic, not cycle-accurate: QEMU models no pipeline, caches or wait states, so it ranks builds
    for one core but is not a latency in cycles."""
    from nasc.backends.mcu.emit import MPS2_TIMER_HZ

    require_tools("qemu")
    with tempfile.TemporaryDirectory(prefix="nasc-mcu-") as tmp:
        work = _stage(project, Path(tmp), ins, [feed])
        log = _make(work, "qemu", timeout_s, "QEMU_ICOUNT=-icount shift=0")
    ticks = [int(m) for m in re.findall(r"^nasc ticks: (\d+)$", log, re.M)]
    if len(ticks) != 1:
        raise McuRunError(f"the QEMU run printed {len(ticks)} timer readings for 1 sample; its log:\n{log[-2000:]}")
    return ticks[0] * (1_000_000_000 // MPS2_TIMER_HZ)


def step_instructions(project: Path, ins: list[Port], feed: Mapping[str, Any], timeout_s: float = 600
                      ) -> tuple[int, list[int]]:
    """The instructions of one ``nasc_run`` on ``feed`` and of each of its steps, in plan order, under QEMU
    ``-icount`` (as :func:`instructions`), for a project built with ``profile`` (build_mcu). Each step's count is
    exact to the timer's 40-instruction tick and includes the two timer reads around it."""
    from nasc.backends.mcu.emit import MPS2_TIMER_HZ

    require_tools("qemu")
    with tempfile.TemporaryDirectory(prefix="nasc-mcu-") as tmp:
        work = _stage(project, Path(tmp), ins, [feed])
        log = _make(work, "qemu", timeout_s, "QEMU_ICOUNT=-icount shift=0")
    per_tick = 1_000_000_000 // MPS2_TIMER_HZ
    total = [int(m) for m in re.findall(r"^nasc ticks: (\d+)$", log, re.M)]
    steps = {int(i): int(t) for i, t in re.findall(r"^nasc step (\d+) ticks: (\d+)$", log, re.M)}
    if len(total) != 1 or not steps:
        raise McuRunError(f"the QEMU run of a profiling build printed {len(total)} totals and {len(steps)} step "
                          f"timings for 1 sample; its log:\n{log[-2000:]}")
    return total[0] * per_tick, [steps[i] * per_tick for i in sorted(steps)]


def _stage(project: Path, tmp: Path, ins: list[Port], feeds: Sequence[Mapping[str, Any]]) -> Path:
    """A copy of ``project`` under ``tmp`` with the feeds written to ``nasc_in.bin`` as the harness reads them."""
    work = tmp / "project"
    shutil.copytree(project, work, ignore=shutil.ignore_patterns("report.json"))
    with open(work / "nasc_in.bin", "wb") as f:
        for feed in feeds:
            for p in ins:
                f.write(np.ascontiguousarray(np.asarray(feed[p.name]), dtype=p.dtype).tobytes())
            if not any(p.size for p in ins):
                f.write(b"\0")  # the harness reads one tick byte per sample when inputs have no bytes
    return work


def _make(work: Path, mode: str, timeout_s: float, *variables: str) -> str:
    try:
        proc = subprocess.run(["make", "-s", mode, *variables], cwd=work, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise McuRunError(f"the {mode} build/run did not finish in {timeout_s:.0f} s") from None
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise McuRunError(f"'make {mode}' failed (exit {proc.returncode}):\n{log[-3000:]}")
    return log


_SIZE_LINE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+[0-9a-f]+\s+(\S+)$", re.M)


def object_sizes(project: Path, timeout_s: float = 600) -> dict[str, dict[str, int]] | None:
    """text/data/bss per object of the model, compiled for the board (None without the ARM toolchain)."""
    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("arm-none-eabi-size") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="nasc-mcu-") as tmp:
        work = Path(tmp) / "project"
        shutil.copytree(project, work, ignore=shutil.ignore_patterns("report.json", "harness"))
        log = _make(work, "size", timeout_s)
    sizes = {}
    for m in _SIZE_LINE.finditer(log):
        sizes[Path(m.group(4)).name] = {"text": int(m.group(1)), "data": int(m.group(2)), "bss": int(m.group(3))}
    return sizes
