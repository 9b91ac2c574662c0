"""Reading the Markdown tables that the benchmark tools write (tests/tools)."""

from __future__ import annotations


def cells(line: str) -> list[str]:
    """The stripped cells of one Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def rows(lines: list[str], first: str) -> list[list[str]]:
    """The cells of every row whose first cell is ``first``."""
    return [cells(line) for line in lines if line.startswith(f"| {first} ")]
