"""Write a benchmark's generated table into a Markdown file between ``<!-- NAME:begin -->`` / ``<!-- NAME:end -->``."""

from __future__ import annotations

from pathlib import Path


def write_between_markers(path: Path, body: str, name: str) -> None:
    """Replace the generated part of ``path`` (between the markers), keeping the hand-written rest."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    if begin not in text or end not in text:
        text = f"{text.rstrip()}\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
