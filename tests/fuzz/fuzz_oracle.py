"""The oracle: what a fuzz case's run must look like, and how failures are bucketed.

Every case must end in exit 0, or in exit 2 with exactly one stderr line that
starts ``nasc: error:``; never a traceback, a hang, a crash, exit 3, files left
behind by a failed command (the output, parent directories it created, temp
directories), or a pickle payload that ran. A problem's key names its class so
that cases with the same cause count together; exit 3 and hangs are keyed by
the innermost nasc frame (``file:function``), which says who has to fix it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from fuzz_core import MARKER, Case


@dataclass(frozen=True)
class Problem:
    key: str  # the failure class
    detail: str  # this case's specifics (message, leftover paths, stack)
    fatal: bool = True  # notes (stray stderr on success) are reported but do not fail a case


def norm(text: str, width: int = 150) -> str:
    """A message with quoted names, paths and numbers blanked, so messages of one cause compare equal."""
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r'"[^"]*"', '"…"', text)
    text = re.sub(r"(?<![\w.])(?:/|in/)[^\s'\",:;)]*", "PATH", text)
    text = re.sub(r"0x[0-9a-fA-F]+|\d+", "N", text)
    text = " ".join(text.split())
    return text[:width]


def output_path(argv: list[str]) -> str | None:
    """The ``-o`` argparse would take (the last one), normalized relative to the case's directory."""
    out = None
    for i, tok in enumerate(argv):
        if tok in ("-o", "--output") and i + 1 < len(argv):
            out = argv[i + 1]
        elif tok.startswith("--output="):
            out = tok.split("=", 1)[1]
        elif tok.startswith("-o") and len(tok) > 2 and not tok.startswith("--"):
            out = tok[2:]
    if out is None or out == "" or os.path.isabs(out):
        return out
    return os.path.normpath(out)


def _top_level(paths: list[str]) -> list[str]:
    keep: list[str] = []
    for p in sorted(paths):
        if not any(p.startswith(k + "/") for k in keep):
            keep.append(p)
    return keep


def _leftover_kind(path: str, out: str | None) -> str:
    if out and (path == out or path.startswith(out + "/")):
        return "the output directory"
    if out and out.startswith(path + "/"):
        return "parent directories that -o made"
    if os.path.basename(path).startswith("."):
        return "a temporary directory"
    return "other files"


def judge(case: Case, res: dict[str, Any]) -> list[Problem]:
    """The problems of one run (an empty list: the case passed)."""
    if res.get("materialize_error"):
        return [Problem("fuzzer: cannot build the case", res["materialize_error"])]
    rc = res.get("rc")
    argv = res.get("argv", [])
    out, err = res.get("stdout", ""), res.get("stderr", "")
    problems: list[Problem] = []
    if res.get("marker"):
        problems.append(Problem(f"a pickle payload ran ({MARKER} created)", case.describe()))
    if res.get("timeout"):
        where = res.get("where") or "?"
        return [*problems, Problem(f"hang: no exit within the case's time limit, in {where}",
                                   f"no exit within {case.timeout:g} s; stack:\n{res.get('stack', '')[-3000:]}")]
    if res.get("crash") is not None:
        where = res.get("where") or "?"
        return [*problems, Problem(f"crash: the process died ({res['crash']}) in {where}", res.get("stack", "")[-3000:])]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if rc == 3 or rc is None:
        e = res.get("error") or {}
        where = e.get("where", "?")
        problems.append(Problem(f"exit {rc}: {e.get('exc', '?')} in {where}",
                                f"{lines[-1] if lines else ''}\n{e.get('frames', '')}"))
    elif rc == 2:
        count = res.get("stderr_lines", len(lines))
        if any(ln.startswith("usage:") for ln in lines):
            problems.append(Problem(f"exit 2 from argparse (usage text, {len(lines)} lines): {norm(lines[-1])}", err))
        elif count != 1:
            foreign = next((ln for ln in lines if not ln.startswith("nasc: ")), lines[0] if lines else "")
            problems.append(Problem(f"exit 2 with {'no' if not lines else 'extra'} stderr lines: {norm(foreign)}", err))
        elif not lines[0].startswith("nasc: error:"):
            problems.append(Problem(f"exit 2 without 'nasc: error:': {norm(lines[0])}", err))
        elif res.get("stderr_longest", 0) > 1000:
            problems.append(Problem(f"note: exit 2 with a message of over 1000 characters: {norm(lines[0], 100)}",
                                    err[:3000], fatal=False))
    elif rc != 0:
        problems.append(Problem(f"exit {rc}: {norm(lines[-1] if lines else '')}", err))
    if "Traceback (most recent call last)" in err + out:
        problems.append(Problem(f"a traceback was printed (exit {rc})", err[-3000:]))
    outp = output_path(argv)
    new = _top_level(res.get("new_paths", []))
    if rc == 0:
        allowed = [p for p in new if outp and (p == outp or p.startswith(outp + "/") or outp.startswith(p + "/"))]
        stray = [p for p in new if p not in allowed and p != MARKER]
        if stray:
            problems.append(Problem("left behind after exit 0: files besides the output", ", ".join(stray)))
        foreign = [ln for ln in lines if not ln.startswith("nasc: warning:")]
        if foreign:
            problems.append(Problem(f"note: exit 0 with stray stderr: {norm(foreign[0])}", err, fatal=False))
    else:
        kinds: dict[str, list[str]] = {}
        for p in new:
            if p != MARKER:
                kinds.setdefault(_leftover_kind(p, outp), []).append(p)
        for kind, paths in sorted(kinds.items()):
            problems.append(Problem(f"left behind after exit {rc}: {kind}", ", ".join(paths)))
    if res.get("tmp_left"):
        problems.append(Problem(f"left behind in $TMPDIR after exit {rc}", ", ".join(res["tmp_left"][:10])))
    return problems


def fatal(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.fatal]


def explain(case: Case, res: dict[str, Any], problems: list[Problem]) -> str:
    """A failure message: the case (as JSON, for ``tools/fuzz.py --replay``), what ran, and each problem."""
    parts = [case.describe(res.get("model", "{model}")), f"replay: {case.to_json()}", f"exit {res.get('rc')}",
             "stderr: " + res.get("stderr", "")[-1500:]]
    for p in problems:
        parts.append(f"PROBLEM {p.key}\n  {p.detail[-1500:]}")
    return "\n".join(parts)
