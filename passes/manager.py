"""The pass manager: a registry of passes by name, text pipelines, the context passes share, and the run loop.

A pass is a frozen dataclass with a kebab-case ``name``, typed fields that are
its options (with defaults), and a docstring whose first line says what it does.
A pipeline is text, ``simplify,fuse,prune{ratio=0.3 min-channels=8}``, that
parses to a :class:`Pipeline` and prints back to the same text. Running a
pipeline verifies the graph after every pass (unless switched off), times each
pass, and adds a report section with the graph's size before and after and
what the pass did.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import time
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from nasc.errors import UsageError, VerificationError
from nasc.ir import verify
from nasc.ir.analysis import summarize
from nasc.ir.core import Graph, Value

# ---- option types ----------------------------------------------------------------------------


class ByteSize(int):
    """A size in bytes, written ``512KB``, ``1MB``, ``2MiB`` or a plain number."""

    _UNITS: ClassVar[dict[str, int]] = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
                                        "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}

    @classmethod
    def parse(cls, text: str) -> ByteSize:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
        if not m or m.group(2).upper() not in cls._UNITS:
            raise ValueError(text)
        return cls(round(float(m.group(1)) * cls._UNITS[m.group(2).upper()]))

    def __str__(self) -> str:
        for unit in ("GB", "MB", "KB"):
            if self and self % self._UNITS[unit] == 0:
                return f"{self // self._UNITS[unit]}{unit}"
        return str(int(self))


class Duration(float):
    """A time in seconds, written ``5ms``, ``200us``, ``1.5s`` or a plain number of seconds."""

    _UNITS: ClassVar[dict[str, float]] = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}

    @classmethod
    def parse(cls, text: str) -> Duration:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-z]*)\s*", text)
        if not m or m.group(2) not in cls._UNITS:
            raise ValueError(text)
        return cls(float(m.group(1)) * cls._UNITS[m.group(2)])

    def __str__(self) -> str:
        for unit, k in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
            if self >= k or unit == "us":
                v = float(self) / k
                return f"{v:g}{unit}"
        return f"{float(self):g}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (typing.Union, __import__("types").UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])} or none"
    return {int: "int", float: "float", bool: "bool", str: "str", ByteSize: "size", Duration: "duration"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _parse_value(tp: Any, text: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, __import__("types").UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if text == "none" else _parse_value(args[0], text)
    if origin is tuple:
        elem = typing.get_args(tp)[0]
        return tuple(_parse_value(elem, t) for t in text.split(",") if t != "")
    if tp is bool:
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise ValueError(text)
    if tp in (ByteSize, Duration):
        return tp.parse(text)
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if tp is str:
        return text
    raise ValueError(f"unsupported option type {tp}")


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(_format_value(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, float) and not isinstance(value, Duration):
        return repr(value)
    return str(value)


# ---- passes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    """Base of all passes. Subclasses are frozen dataclasses whose fields are their options."""

    name: ClassVar[str] = ""
    #: lossy passes change results on purpose; their error is reported, exact passes are held to 1e-5
    lossy: ClassVar[bool] = False

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        """Transform ``graph`` in place; return whether it changed."""
        raise NotImplementedError

    @classmethod
    def option_fields(cls) -> list[dataclasses.Field[Any]]:
        return [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in cls.option_fields()}

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def check_option(self, option: str, ok: bool, valid: str) -> None:
        """Refuse a bad option value at construction: a usage error naming the pass, option, value and the
        valid values (``valid``, e.g. "8 or 4"). Passes call it from ``__post_init__``."""
        if not ok:
            value = getattr(self, option)
            text = repr(value) if isinstance(value, str) else _format_value(value)
            raise UsageError(f"pass '{self.name}': option {option.replace('_', '-')}={text} is not valid; "
                             f"expected {valid}")

    def given_options(self) -> dict[str, Any]:
        """Options that differ from their defaults, in declaration order."""
        return {f.name: getattr(self, f.name) for f in self.option_fields() if getattr(self, f.name) != _default(f)}

    def __str__(self) -> str:
        opts = self.given_options()
        if not opts:
            return self.name
        body = " ".join(f"{k.replace('_', '-')}={_format_value(v)}" for k, v in opts.items())
        return f"{self.name}{{{body}}}"


_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by its name in pipelines."""
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", cls.name):
        raise ValueError(f"pass name {cls.name!r} is not kebab-case")
    if cls.name in _PASSES:
        raise ValueError(f"pass {cls.name!r} is registered twice")
    _PASSES[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    _load_builtin_passes()
    return dict(sorted(_PASSES.items()))


def _load_builtin_passes() -> None:
    from nasc.passes import drop_sublayers, fuse, prune, quantize, recover, simplify, tie  # noqa: F401  (registration side effects)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def describe_pass(cls: type[Pass]) -> list[tuple[str, str, str]]:
    """(option, type, default) rows for ``nasc passes``."""
    types = cls.option_types()
    return [(f.name.replace("_", "-"), _type_name(types[f.name]), _format_value(_default(f)))
            for f in cls.option_fields()]


# ---- pipelines --------------------------------------------------------------------------------


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise UsageError(f"pipeline {text!r}: '}}' without '{{'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise UsageError(f"pipeline {text!r}: '{{' is never closed")
    parts.append("".join(cur))
    return parts


def parse_pass(text: str) -> Pass:
    passes = registered_passes()
    m = re.fullmatch(r"\s*([A-Za-z0-9_-]+)\s*(?:\{(.*)\})?\s*", text, re.S)
    if not m:
        raise UsageError(f"cannot read pass {text.strip()!r}: expected name or name{{option=value ...}}")
    name, body = m.group(1), m.group(2)
    if name not in passes:
        close = difflib.get_close_matches(name, passes, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UsageError(f"unknown pass '{name}'{hint}; passes: {', '.join(passes)}")
    cls = passes[name]
    types = cls.option_types()
    kwargs: dict[str, Any] = {}
    for item in (body or "").split():
        key, sep, value = item.partition("=")
        field_name = key.replace("-", "_")
        if not sep or field_name not in types:
            valid = ", ".join(f"{o} ({t}, default {d})" for o, t, d in describe_pass(cls)) or "none"
            what = f"has no option '{key}'" if sep else f"option {item!r} needs a value (name=value)"
            raise UsageError(f"pass '{name}' {what}; options: {valid}")
        if field_name in kwargs:
            raise UsageError(f"pass '{name}': option '{key}' is given twice")
        try:
            kwargs[field_name] = _parse_value(types[field_name], value)
        except ValueError:
            raise UsageError(
                f"pass '{name}': option '{key}' must be a {_type_name(types[field_name])}, got {value!r}"
            ) from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise UsageError(f"pass '{name}': {e}") from None


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of passes; ``str()`` gives its text, :meth:`parse` reads it back."""

    passes: tuple[Pass, ...] = ()

    def __init__(self, passes: Iterable[Pass] = ()) -> None:
        object.__setattr__(self, "passes", tuple(passes))

    @classmethod
    def parse(cls, text: str) -> Pipeline:
        if not text.strip():
            return cls(())
        return cls(parse_pass(part) for part in _split_top(text))

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    @property
    def lossy(self) -> bool:
        return any(p.lossy for p in self.passes)

    def run(self, graph: Graph, ctx: PassContext | None = None) -> bool:
        """Run every pass on ``graph`` in place; returns whether any changed it."""
        ctx = ctx or PassContext()
        changed_any = False
        for p in self.passes:
            before = _stats(graph)
            ctx.rewrites = Counter()
            ctx.notes = []
            ctx.details = {}
            t0 = time.perf_counter()
            changed = bool(p.run(graph, ctx))
            elapsed = time.perf_counter() - t0
            if ctx.verify:
                try:
                    verify(graph)
                except VerificationError as e:
                    raise VerificationError(f"after pass '{p}': {e}") from None
            section = PassSection(str(p), changed, elapsed, before, _stats(graph), dict(ctx.rewrites), list(ctx.notes),
                                  dict(ctx.details))
            ctx.report.passes.append(section)
            ctx.log(section.line())
            for note in section.notes:
                ctx.log(f"  {note}")
            if ctx.print_ir_after_all:
                ctx.log(f"// ----- IR after {p} -----\n{graph}")
            changed_any |= changed
        return changed_any


def _stats(graph: Graph) -> dict[str, int]:
    s = summarize(graph, None)
    return {"nodes": s["nodes"], "params": s["params"], "macs": s["macs"]}


# ---- context and report ---------------------------------------------------------------------

Feed = dict[str, np.ndarray]
#: runs a graph on inputs and returns the values asked for (graph outputs when None), per input
Runner = Callable[[Graph, Sequence[Feed], Sequence[Value] | None], list[list[np.ndarray]]]


@dataclass
class PassSection:
    """What one pass did: its text, whether it changed the graph, time, sizes before/after, rewrites fired."""

    pass_text: str
    changed: bool
    time_s: float
    before: dict[str, int]
    after: dict[str, int]
    rewrites: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: structured, JSON-ready results of the pass (per-group tables, errors before/after), for report.json
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """e.g. ``fuse: fold-batchnorm ×35, gelu ×6; nodes 669 → 211, MACs 1.2G → 1.2G (0.42 s)``."""
        did = ", ".join(f"{k} ×{v}" for k, v in sorted(self.rewrites.items(), key=lambda kv: (-kv[1], kv[0])))
        if not did:
            did = "changed" if self.changed else "no change"
        sizes = f"nodes {self.before['nodes']} → {self.after['nodes']}"
        if self.before["params"] != self.after["params"]:
            sizes += f", params {self.before['params']} → {self.after['params']}"
        if self.before["macs"] != self.after["macs"]:
            sizes += f", MACs {self.before['macs']} → {self.after['macs']}"
        return f"{self.pass_text}: {did}; {sizes} ({self.time_s:.2f} s)"

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_text, "changed": self.changed, "time_s": round(self.time_s, 4),
                "before": self.before, "after": self.after, "rewrites": self.rewrites, "notes": self.notes,
                "details": self.details, "summary": self.line()}


@dataclass
class Report:
    passes: list[PassSection] = field(default_factory=list)

    def to_dict(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.passes]


@dataclass(frozen=True)
class Budgets:
    """What a target allows, as passes see it (backends fill it in; passes never import a backend for it):
    flash and SRAM bytes and the core clock of a microcontroller; None where the target sets no limit."""

    flash_bytes: int | None = None
    sram_bytes: int | None = None
    clock_hz: float | None = None
    name: str = ""


@dataclass
class PassContext:
    """What passes share: target, calibration inputs, seed, a graph runner, the report and switches.

    ``runner`` evaluates a graph (ONNX Runtime, supplied by the API layer so that
    passes never import a runtime); passes that need numbers use it through
    :meth:`evaluate`. ``estimate`` (also from the API layer, when the target has
    one) gives a graph's target figures without building, e.g. an MCU's arena and
    flash bytes; ``labels`` are the calibration feeds' class labels when known, scoring output ``label_output``. ``original`` is the graph the
    pipeline started from (what ``recover`` distils from) and ``trainer`` computes gradients through a graph
    (a :class:`nasc.passes.recover_job.Trainer`, torch's, from the API layer).
    """

    target: Any = None
    budgets: Budgets = field(default_factory=Budgets)
    calib: list[Feed] | None = None
    seed: int = 0
    runner: Runner | None = None
    estimate: Callable[[Graph], dict[str, int]] | None = None
    labels: np.ndarray | None = None
    label_output: int = 0  # which output the labels score (a face detector's scores, not its boxes)
    original: Graph | None = None
    trainer: Any = None
    report: Report = field(default_factory=Report)
    verify: bool = True
    print_ir_after_all: bool = False
    log: Callable[[str], None] = field(default=lambda _msg: None)
    # per-pass scratch, reset by the pipeline before each pass
    rewrites: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def count(self, rewrite: str, n: int = 1) -> None:
        self.rewrites[rewrite] += n

    def note(self, text: str) -> None:
        self.notes.append(text)

    def evaluate(self, graph: Graph, feeds: Sequence[Feed], values: Sequence[Value] | None = None) -> list[list[np.ndarray]]:
        if self.runner is None:
            raise UsageError("this pass needs a graph runner (nasc.optimize supplies ONNX Runtime)")
        return self.runner(graph, feeds, values)
