"""The fuzzer's vocabulary: draws, mutation ops, cases, and turning a case into files on disk.

A case is data: a seed model, a list of named ops with concrete parameters, and
an argv. Every op reads its integer parameters modulo the size of what it
indexes, so any op applies to any model and stays applicable when the ops
before it are removed (which is how reproducers are minimized). The same
generators run under hypothesis (tests/fuzz) and under ``random.Random``
(tools/fuzz.py) through the small :class:`Draw` interface.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# What a malicious pickle creates, relative to the directory the command runs in.
MARKER = "PWNED_BY_PICKLE"
BIG = 1 << 30  # the range of index parameters; ops take them modulo what they index
BAD_UTF8_PLACEHOLDER, BAD_UTF8 = b"@@BAD_UTF8@@", b"@@BAD\xc2\xc2UTF8@"


class Draw:
    """Where choices come from: a seeded ``random.Random`` or a hypothesis ``data`` object."""

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def pick(self, seq: Sequence[T]) -> T:
        return seq[self.int(0, len(seq) - 1)]

    def chance(self, percent: int) -> bool:
        return self.int(0, 99) < percent


class RandomDraw(Draw):
    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd

    def int(self, lo: int, hi: int) -> int:
        return self.rnd.randint(lo, hi)


class HypothesisDraw(Draw):
    """Draws through ``st.data()``, so hypothesis can shrink every choice."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def int(self, lo: int, hi: int) -> int:
        return int(self.data.draw(self.st.integers(lo, hi)))


# ---- ops ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """A named mutation. ``kind``: onnx (a ModelProto), bytes (the model file), zip (a .pt2 archive), file (extra files)."""

    name: str
    kind: str
    params: dict[str, Any]  # param -> ("int", lo, hi) or a list of choices
    fn: Callable[..., Any]

    def draw(self, d: Draw) -> list[Any]:
        chosen: dict[str, Any] = {}
        for p, spec in self.params.items():
            chosen[p] = d.int(spec[1], spec[2]) if isinstance(spec, tuple) else d.pick(spec)
        return [self.name, chosen]


OPS: dict[str, Op] = {}
IDX = ("int", 0, BIG)


def op(op_kind: str, /, **params: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as a mutation op of ``op_kind``; the keyword arguments say how to draw each parameter."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        OPS[fn.__name__] = Op(fn.__name__, op_kind, params, fn)
        return fn

    return register


def ops_of(kind: str) -> list[str]:
    return sorted(n for n, o in OPS.items() if o.kind == kind)


def at(seq: Sequence[T], i: int) -> T | None:
    """``seq[i % len(seq)]``, or None for an empty sequence."""
    return seq[i % len(seq)] if len(seq) else None


@dataclass
class Ctx:
    """What an op may touch besides its main object: extra files (relative to ``in/``) and the seed's facts."""

    files: dict[str, bytes | Path] = field(default_factory=dict)  # a Path value makes a symlink to it
    seed: dict[str, Any] = field(default_factory=dict)
    model: Path | None = None  # the model file as the onnx and zip ops left it


# ---- byte ops --------------------------------------------------------------------------


@op("bytes", offset=IDX, bit=("int", 0, 7))
def flip_bit(data: bytearray, offset: int, bit: int) -> bytearray:
    if data:
        data[offset % len(data)] ^= 1 << bit
    return data


@op("bytes", offset=IDX, value=("int", 0, 255), count=("int", 1, 8))
def overwrite_bytes(data: bytearray, offset: int, value: int, count: int) -> bytearray:
    if data:
        i = offset % len(data)
        data[i : i + count] = bytes([value]) * len(data[i : i + count])
    return data


@op("bytes", offset=IDX, value=[0, 0xFF, 0x7F, 0x80, 0x0A, 0x12, 0x1A], count=("int", 1, 64))
def insert_bytes(data: bytearray, offset: int, value: int, count: int) -> bytearray:
    i = offset % (len(data) + 1)
    data[i:i] = bytes([value]) * count
    return data


@op("bytes", offset=IDX, count=("int", 1, 256))
def delete_bytes(data: bytearray, offset: int, count: int) -> bytearray:
    if data:
        i = offset % len(data)
        del data[i : i + count]
    return data


@op("bytes", keep=("int", 0, 1000))
def truncate(data: bytearray, keep: int) -> bytearray:
    """Keep the first ``keep`` per mille of the file (0 leaves it empty)."""
    return data[: len(data) * keep // 1000]


@op("bytes", offset=IDX, count=("int", 1, 4096))
def duplicate_span(data: bytearray, offset: int, count: int) -> bytearray:
    if data:
        i = offset % len(data)
        data[i:i] = data[i : i + count]
    return data


# ---- cases -----------------------------------------------------------------------------


@dataclass
class Case:
    """One fuzz input: a seed model, ops applied to it in order, and the command line (token groups)."""

    family: str
    seed: str
    ops: list[list[Any]]  # [[op name, {param: value}], ...]
    argv: list[list[str]]  # groups of tokens; "{model}" is the seed's model path
    timeout: float = 30.0

    def to_json(self) -> str:
        return json.dumps({"family": self.family, "seed": self.seed, "ops": self.ops, "argv": self.argv,
                           "timeout": self.timeout}, sort_keys=True)

    @staticmethod
    def from_json(text: str | dict[str, Any]) -> Case:
        d = json.loads(text) if isinstance(text, str) else text
        return Case(d["family"], d["seed"], [list(o) for o in d["ops"]], [list(g) for g in d["argv"]],
                    float(d.get("timeout", 30.0)))

    def flat_argv(self, model_path: str) -> list[str]:
        return [model_path if t == "{model}" else t for g in self.argv for t in g]

    def describe(self, model_path: str = "{model}") -> str:
        ops = ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in p.items())})" for n, p in self.ops) or "no ops"
        return f"[{self.family}] seed {self.seed} + {ops}; nasc {' '.join(map(_quote, self.flat_argv(model_path)))}"


def _quote(tok: str) -> str:
    import shlex

    return shlex.quote(tok)


def seed_info(seeds_dir: Path, seed: str) -> dict[str, Any]:
    return json.loads((seeds_dir / seed / "seed.json").read_text())


def materialize(case: Case, seeds_dir: Path, workdir: Path) -> str:
    """Write the case's input files under ``workdir/in``; return the model path relative to ``workdir``."""
    import onnx

    info = seed_info(seeds_dir, case.seed)
    src = seeds_dir / case.seed / "files"
    dest = workdir / "in"
    shutil.copytree(src, dest, symlinks=True)
    model = dest / info["model"]
    ctx = Ctx(seed=info)
    ops = [(OPS[name], params) for name, params in case.ops]
    onnx_ops = [(o, p) for o, p in ops if o.kind == "onnx"]
    if onnx_ops:
        proto = onnx.ModelProto()
        proto.ParseFromString(model.read_bytes())
        for o, p in onnx_ops:
            o.fn(proto, ctx, **p)
        # protobuf will not store invalid UTF-8 in a string field; ops write this placeholder and it is swapped for
        # invalid bytes of the same length after serializing, so every length prefix stays right
        model.write_bytes(proto.SerializeToString().replace(BAD_UTF8_PLACEHOLDER, BAD_UTF8))
    zip_ops = [(o, p) for o, p in ops if o.kind == "zip"]
    if zip_ops:
        from fuzz_pt2_ops import Archive

        archive = Archive.read(model.read_bytes())
        for o, p in zip_ops:
            o.fn(archive, ctx, **p)
        model.write_bytes(archive.write())
    ctx.model = model
    for o, p in ops:
        if o.kind == "file":
            o.fn(ctx, **p)
    data = bytearray(model.read_bytes())
    for o, p in ops:
        if o.kind == "bytes":
            data = o.fn(data, **p)
    model.write_bytes(bytes(data))
    for rel, content in ctx.files.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            if path.exists() or path.is_symlink():
                path.unlink()
            os.symlink(content, path)
        else:
            path.write_bytes(content)
    return f"in/{info['model']}"
