"""Microcontroller boards: named presets with memory budgets, compiler flags and an emulator to run on."""

from __future__ import annotations

from dataclasses import dataclass

from nasc.errors import UsageError

KB = 1024


@dataclass(frozen=True)
class Board:
    """A board: its core, SRAM and flash budgets, the arm-none-eabi-gcc flags for it, and the QEMU machine
    that runs its code (the board itself when QEMU models it, else an MPS2 board with the same core)."""

    name: str
    core: str
    sram_bytes: int
    flash_bytes: int
    cflags: tuple[str, ...]
    qemu_machine: str
    clock_mhz: int
    note: str = ""

    @property
    def emulated_exactly(self) -> bool:
        return self.name in ("cortex-m4", "cortex-m7", "cortex-m4-softfp")


_M4F = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
_M7 = ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16")
_M7SP = ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16")

# QEMU's MPS2 boards map 4 MiB of SSRAM at 0x0 (code) and 4 MiB at 0x20000000 (data).
BOARDS: dict[str, Board] = {b.name: b for b in [
    Board("cortex-m4", "cortex-m4", 4096 * KB, 4096 * KB, _M4F, "mps2-an386", 25,
          "Arm MPS2 AN386 (Cortex-M4F) as QEMU models it"),
    Board("cortex-m4-softfp", "cortex-m4", 4096 * KB, 4096 * KB, ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft"),
          "mps2-an386", 25, "Cortex-M4 without an FPU (software floating point)"),
    Board("cortex-m7", "cortex-m7", 4096 * KB, 4096 * KB, _M7, "mps2-an500", 25,
          "Arm MPS2 AN500 (Cortex-M7, double-precision FPU) as QEMU models it"),
    Board("stm32f746", "cortex-m7", 320 * KB, 1024 * KB, _M7SP, "mps2-an500", 216,
          "ST STM32F746 (Cortex-M7F); verified on QEMU's MPS2 AN500 with the same core"),
    Board("stm32f411", "cortex-m4", 128 * KB, 512 * KB, _M4F, "mps2-an386", 100,
          "ST STM32F411 (Cortex-M4F); verified on QEMU's MPS2 AN386 with the same core"),
    Board("nrf52840", "cortex-m4", 256 * KB, 1024 * KB, _M4F, "mps2-an386", 64,
          "Nordic nRF52840 (Cortex-M4F); verified on QEMU's MPS2 AN386 with the same core"),
]}


def parse_board(text: str) -> Board:
    """``mcu`` (cortex-m4) or ``mcu:<board>``."""
    name, _, arg = text.strip().partition(":")
    if name != "mcu":
        raise UsageError(f"target {text!r} is not an mcu target")
    board = arg or "cortex-m4"
    if board not in BOARDS:
        raise UsageError(f"unknown board {board!r} in target {text!r}; boards: {', '.join(BOARDS)}")
    return BOARDS[board]
