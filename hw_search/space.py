"""A search space written as a pipeline with ranges and choices, and the concrete pipelines drawn from it.

    simplify,fuse,prune{macs=0.3..1.0},tie-layers?{blocks=1..3 rank=0,8,32},quant-policy{bits=8|8,4},quantize

An option value is one of:

* ``lo..hi``: a range, integer when the option is an int or a size (``flash=64KB..256KB``), else float; float
  ranges move in steps of a round number near 1/20 of the span (``0.3..1.0`` -> 0.05), integer ones by 1;
  ``lo..hi/step`` gives the step;
* ``a|b|c``: a choice among whole values (``bits=8|8,4``: a list option's choices);
* ``a,b,c``: a choice too, when the option takes one value (``rank=0,8,32``); for a list option (quant-policy's
  ``bits=8,4``) it is that one list;
* anything else: fixed.

A pass name ending in ``?`` is optional: the search decides whether it runs. Each range or choice is one
parameter named ``<index>.<pass>.<option>`` (``2.prune.macs``), an optional pass ``<index>.<pass>``. Every value a
range or choice can take is checked against the pass's option type when the space is read, so a malformed
space fails before any trial runs.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nasc.errors import UsageError
from nasc.passes.manager import ByteSize, Duration, _parse_value, _split_top, _type_name, registered_passes

#: how many values a float range has at most by default (its step is a round number near span / this)
FLOAT_STEPS = 20


@dataclass(frozen=True)
class Dim:
    """One searched parameter: a range (``low``..``high``, ``step`` for floats) or a choice among ``choices``
    (texts as written in a pipeline)."""

    name: str
    kind: str  # "int", "float" or "choice"
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""  # for sizes and durations: how a value is written back ("" for plain numbers)

    def values(self) -> list[Any]:
        """Every value this parameter can take (finite: int ranges, stepped floats and choices)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        assert self.step is not None
        n = math.floor((self.high - self.low) / self.step + 1e-9)
        return [_round(self.low + i * self.step, self.step) for i in range(n + 1)]

    def text(self, value: Any) -> str:
        """``value`` as written in a pipeline."""
        if self.kind == "choice":
            return str(value)
        if self.kind == "int":
            return str(ByteSize(int(value))) if self.unit else str(int(value))
        return repr(_round(float(value), self.step or 0.0))


@dataclass(frozen=True)
class PassSpace:
    """One pass of the space: its fixed options (texts), its searched ones, and whether it is optional."""

    index: int
    name: str
    optional: bool
    fixed: tuple[tuple[str, str], ...]
    dims: tuple[tuple[str, Dim], ...]

    @property
    def switch(self) -> str:
        return f"{self.index}.{self.name}"


@dataclass(frozen=True)
class Space:
    """A parsed search space; :meth:`pipeline` turns parameter values into the pipeline text they stand for."""

    text: str
    passes: tuple[PassSpace, ...] = field(default=())

    @classmethod
    def parse(cls, text: str) -> Space:
        if not isinstance(text, str) or not text.strip():
            raise UsageError("the search space is empty: write a pipeline with ranges and choices, e.g. "
                             "\"simplify,fuse,prune{macs=0.3..1.0},quant-policy{bits=8|8,4},quantize\"")
        passes = tuple(_parse_pass(i, part, text) for i, part in enumerate(_split_top(text)))
        space = cls(text.strip(), passes)
        if not space.dims():
            raise UsageError(f"the search space {text.strip()!r} has nothing to search: give an option a range "
                             "(lo..hi), a choice (a|b or a,b) or make a pass optional (name?)")
        for params in (space.corner(0), space.corner(-1)):  # every pass parses with its extreme values
            space.pipeline(params)
        return space

    def dims(self) -> list[Dim]:
        """Every searched parameter, optional-pass switches included (choices ``on``/``off``)."""
        out: list[Dim] = []
        for p in self.passes:
            if p.optional:
                out.append(Dim(p.switch, "choice", choices=("on", "off")))
            out.extend(d for _, d in p.dims)
        return out

    def corner(self, end: int) -> dict[str, Any]:
        """The parameters at one end of every range and choice (0: first, -1: last)."""
        return {d.name: d.values()[end] for d in self.dims()}

    def size(self) -> int:
        """How many parameter combinations there are (pipelines can coincide: an optional pass that is off)."""
        return math.prod(len(d.values()) for d in self.dims())

    def grid(self) -> Iterator[dict[str, Any]]:
        """Every combination of the parameters, in order."""
        dims = self.dims()
        for combo in itertools.product(*(d.values() for d in dims)):
            yield dict(zip((d.name for d in dims), combo, strict=True))

    def pipeline(self, params: Mapping[str, Any]) -> str:
        """The pipeline text for ``params`` (one value per :meth:`dims` name), as ``str(Pipeline)`` prints it."""
        parts = []
        for p in self.passes:
            if p.optional and params[p.switch] == "off":
                continue
            opts = [f"{k}={v}" for k, v in p.fixed] + [f"{k}={d.text(params[d.name])}" for k, d in p.dims]
            parts.append(f"{p.name}{{{' '.join(opts)}}}" if opts else p.name)
        text = ",".join(parts)
        from nasc.passes.manager import Pipeline

        try:  # the canonical text (defaults left out), so one pipeline is one text: the build cache's key
            return str(Pipeline.parse(text))
        except UsageError as e:
            raise UsageError(f"the search space {self.text!r} gives the pipeline {text!r}, which nasc cannot "
                             f"read: {e}") from None

    def sample(self, trial: Any) -> tuple[str, dict[str, Any]]:
        """Draw one point with an Optuna trial: (pipeline text, parameters)."""
        params: dict[str, Any] = {}
        for d in self.dims():
            if d.kind == "choice":
                params[d.name] = trial.suggest_categorical(d.name, list(d.choices))
            elif d.kind == "int":
                params[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), step=int(d.step or 1))
            else:
                params[d.name] = trial.suggest_float(d.name, d.low, d.high, step=d.step)
        return self.pipeline(params), params


def _parse_pass(index: int, part: str, whole: str) -> PassSpace:
    m = re.fullmatch(r"\s*([A-Za-z0-9_-]+)(\?)?\s*(?:\{(.*)\})?\s*", part, re.S)
    if not m:
        raise UsageError(f"search space {whole!r}: cannot read {part.strip()!r}: expected name, name? or "
                         "name{option=value ...} with ranges lo..hi and choices a|b")
    name, optional, body = m.group(1), bool(m.group(2)), m.group(3) or ""
    passes = registered_passes()
    if name not in passes:
        raise UsageError(f"search space {whole!r}: unknown pass '{name}'; passes: {', '.join(passes)}")
    types = passes[name].option_types()
    fixed: list[tuple[str, str]] = []
    dims: list[tuple[str, Dim]] = []
    for item in body.split():
        key, sep, value = item.partition("=")
        field_name = key.replace("-", "_")
        if not sep or field_name not in types or not value:
            raise UsageError(f"search space {whole!r}: pass '{name}' has no option {item!r} (write option=value; "
                             f"options: {', '.join(o.replace('_', '-') for o in types)})")
        tp = types[field_name]
        dim_name = f"{index}.{name}.{key}"
        dim = _dim(dim_name, tp, value, f"search space {whole!r}: {name}{{{key}}}")
        if dim is None:
            fixed.append((key, value))
        else:
            dims.append((key, dim))
    return PassSpace(index, name, optional, tuple(fixed), tuple(dims))


def _dim(name: str, tp: Any, value: str, where: str) -> Dim | None:
    scalar = _scalar(tp)
    if ".." in value:
        if scalar not in (int, float, ByteSize, Duration):
            raise UsageError(f"{where}: a range needs a numeric option, and this one is a {_type_name(tp)}")
        span, _, step_text = value.partition("/")
        lo_text, _, hi_text = span.partition("..")
        try:
            lo, hi = (float(_parse_value(scalar, t)) for t in (lo_text, hi_text))
            step = float(_parse_value(scalar, step_text)) if step_text else None
        except ValueError:
            raise UsageError(f"{where}: cannot read the range {value!r} as {_type_name(tp)} values lo..hi") from None
        if not lo < hi:
            raise UsageError(f"{where}: the range {value!r} is empty (lo must be below hi)")
        if scalar in (int, ByteSize):
            if step is not None and (step < 1 or not step.is_integer()):
                raise UsageError(f"{where}: the step of the integer range {value!r} must be a whole number >= 1")
            return Dim(name, "int", lo, hi, step=step, unit="B" if scalar is ByteSize else "")
        step = step if step is not None else _nice_step((hi - lo) / FLOAT_STEPS)
        if step <= 0:
            raise UsageError(f"{where}: the step of {value!r} must be positive")
        return Dim(name, "float", lo, hi, step=step)
    if "|" in value or ("," in value and scalar is tp_of_one(tp)):
        choices = tuple(value.split("|") if "|" in value else value.split(","))
        if len(set(choices)) < 2 or "" in choices:
            raise UsageError(f"{where}: the choice {value!r} needs two or more different values")
        for c in choices:
            try:
                _parse_value(tp, c)
            except ValueError:
                raise UsageError(f"{where}: choice {c!r} is not a {_type_name(tp)}") from None
        return Dim(name, "choice", choices=choices)
    try:
        _parse_value(tp, value)
    except ValueError:
        raise UsageError(f"{where}: {value!r} is not a {_type_name(tp)}") from None
    return None


def tp_of_one(tp: Any) -> Any:
    """The option's type when it takes one value (not a list), else a sentinel no scalar equals."""
    import typing

    return object if typing.get_origin(tp) is tuple else _scalar(tp)


def _scalar(tp: Any) -> Any:
    """The value type of an option, without ``| None``; a list option stays a list type."""
    import types
    import typing

    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar(args[0])
    return tp


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at least ``raw``."""
    k = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10**k >= raw - 1e-12:
            return _round(m * 10.0**k, m * 10.0**k)
    return 10.0 ** (k + 1)


def _round(v: float, step: float) -> float:
    digits = max(0, -math.floor(math.log10(step)) + 1) if step > 0 else 6
    return round(v, digits)


def describe(space: Space) -> list[str]:
    """One line per searched parameter: its name and the values it takes."""
    lines = []
    for d in space.dims():
        vals = d.values()
        shown = ", ".join(map(str, vals)) if len(vals) <= 8 else f"{vals[0]} .. {vals[-1]} ({len(vals)} values)"
        lines.append(f"{d.name}: {shown}")
    return lines


def default_space(target_kind: str, repeats: bool, has_calib: bool) -> str:
    """The space searched when none is given: pruning over a range of MACs, tying when the model has repeated
    blocks, and (with calibration data) int8 or a mixed int8/int4 policy under a flash budget relative to the
    weights (``flash-share``: it stays reachable after pruning or tying), then quantization, for targets that run
    integers."""
    # cpu and gpu kernels vectorise channel counts in multiples of 16 (int8 dot products in 4s and 16s): pruning to
    # other counts made MiniLM int8 two to three times slower than unpruned (docs/benchmarks.md, search)
    rounding = " round-to=16" if target_kind in ("cpu", "gpu") else ""
    parts = ["simplify", "fuse", f"prune?{{macs=0.4..1.0 reconstruct=true{rounding}}}"]
    if repeats:
        parts.append("tie-layers?{blocks=1..3 rank=0,8,32}")
    if has_calib and target_kind in ("mcu", "cpu", "onnx"):
        parts += ["quant-policy?{bits=8,4 flash-share=0.15..0.25/0.025}", "quantize"]
    return ",".join(parts)


__all__: Sequence[str] = ("Dim", "PassSpace", "Space", "default_space", "describe")
