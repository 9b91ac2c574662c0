"""Reading a ``torch.export.save`` archive (``.pt2``) without running code from it.

A ``.pt2`` is a zip of JSON (the program, the payload configs), raw tensor bytes
and ``torch.save`` pickles (the example inputs). ``torch.export.load`` unpickles
more than tensors: it retries a failed ``weights_only`` load of a pickle with
``weights_only=False``; it reads a payload marked ``use_pickle`` with
``torch.load(weights_only=False)``, an opaque constant with ``pickle.loads`` and
a custom-object constant with TorchScript's unpickler; it dlopens AOTInductor
libraries; and on any ``RuntimeError`` it retries the file in the pre-2.7 format,
whose reader also falls back to ``weights_only=False``. Each of these lets a
tampered file run code while it is read. :func:`load` closes them in two layers.

1. :func:`check_archive` reads the archive with torch's own zip reader (so it sees
   the bytes the loader will see) and refuses, naming the member: payload config
   entries that ask for pickle loading; AOTInductor members; the pre-2.7 format;
   and every other member that is not JSON, text or raw tensor bytes unless it is
   a ``torch.save`` archive whose pickle uses only the opcodes and globals that
   torch's weights-only unpickler accepts by default (tensors, storages, dtypes,
   plain containers; never globals a process added with ``add_safe_globals``).
   A pickle restricted so cannot reach any other callable, so it is harmless even
   to the unrestricted unpickler. Unknown members are refused rather than
   ignored: what is safe to skip is only what the loader never unpickles.
2. The loader for the current format runs with every ``pickle.find_class``
   refused by an audit hook. A legitimate archive never reaches the standard
   unpickler (the weights-only unpickler resolves its allowlist without
   ``find_class``), so any call means torch is about to unpickle something
   layer 1 did not foresee, say a member kind of a newer torch. The refusal is a
   ``BaseException``, which torch's ``except Exception`` fallbacks cannot swallow,
   and it is recorded, so the load fails even if something does catch it.

The hook is process-wide and cannot be removed: while a ``.pt2`` loads, the
standard unpickler is refused in every thread (failing closed), and outside a
load it returns at once. The loader called is torch 2.13's
``torch.export.pt2_archive._package.load_pt2`` (what ``torch.export.load`` calls
first), so that no retry in the old format happens; torch is pinned for this.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickletools
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from nasc.errors import ModelLoadError

# The opcodes torch's weights-only unpickler implements (torch/_weights_only_unpickler.py, Unpickler.load).
# Callables reach a pickle's stack only through GLOBAL here, and GLOBAL is checked against torch's allowlist.
_SAFE_OPCODES = frozenset({
    "PROTO", "STOP", "GLOBAL", "REDUCE", "NEWOBJ", "BUILD", "BINPERSID", "MARK",
    "APPEND", "APPENDS", "SETITEM", "SETITEMS", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "NONE", "NEWTRUE", "NEWFALSE",
    "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING",
    "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT",
})
# Members the loader reads as text or JSON, never unpickles.
_TEXT_MEMBERS = frozenset({"archive_format", "archive_version", "byteorder"})
_WEIGHTS_DIR, _CONSTANTS_DIR = "data/weights/", "data/constants/"
_RAW_NAME = {"weight": r"weight_[0-9]+", "constant": r"tensor_[0-9]+"}
_NOT_UNPICKLED = "nasc unpickles nothing but tensors and plain containers, since unpickling anything else can run code"


def load(path: Path) -> Any:
    """The ExportedProgram named ``model`` in the archive at ``path``, read as the module docstring says.

    Raises ``ModelLoadError`` for a refused archive; the loader's own errors (a
    damaged but harmless file) propagate for the caller to report.
    """
    return load_with_extras(path)[0]


def load_with_extras(path: Path) -> tuple[Any, dict[str, str]]:
    """As :func:`load`, with the archive's ``extra/`` members (name without the prefix -> text).

    The loader reads those members as UTF-8 text (``PT2ArchiveReader.read_string``), never unpickles them.
    """
    from torch.export.pt2_archive._package import load_pt2

    with open(path, "rb") as f:  # one open file for both layers: the check sees what the loader reads
        check_archive(f, path)
        f.seek(0)
        with _standard_unpickling_refused() as refused:
            try:
                contents = load_pt2(f)
            except _UnpicklingRefused:
                contents = None
        if refused or contents is None:
            what = refused[0] if refused else "an object"
            raise ModelLoadError(f"'{path}': the loader tried to unpickle '{what}' from a member; "
                                 f"refused: {_NOT_UNPICKLED}")
    if "model" not in contents.exported_programs:
        raise ModelLoadError(f"'{path}' holds no program named 'model' (it has {sorted(contents.exported_programs)}); "
                             "save one with torch.export.save")
    extras = {str(k): v for k, v in contents.extra_files.items() if isinstance(v, str)}
    return contents.exported_programs["model"], extras


def check_archive(f: IO[bytes], path: Path) -> None:
    """Raise ``ModelLoadError`` naming the first member of ``f`` that the loader would unpickle unsafely."""
    try:
        archive = torch._C.PyTorchFileReader(f)
        names = archive.get_all_records()
        ok = "archive_format" in names and archive.get_record("archive_format") == b"pt2"
    except RuntimeError:
        ok = False
    if not ok:
        f.seek(0)
        raise ModelLoadError(_not_current_format(f, path))
    raw = _raw_tensor_members(archive, names, path)
    for name in names:
        if name in raw or name in _TEXT_MEMBERS or name.startswith((".data/", "extra/")) or _is_json(name):
            continue
        if name.startswith("data/aotinductor/"):
            raise ModelLoadError(f"'{path}': member '{name}' is AOTInductor compiled code, which the loader would run "
                                 "as a native library; nasc reads programs saved by torch.export.save")
        _check_torch_save(archive.get_record(name), name, path)


def _is_json(name: str) -> bool:
    return (name.startswith("models/") and name.endswith(".json")) or (
        name.startswith((_WEIGHTS_DIR, _CONSTANTS_DIR)) and name.endswith(("_weights_config.json",
                                                                          "_constants_config.json")))


def _not_current_format(f: IO[bytes], path: Path) -> str:
    import zipfile

    with contextlib.suppress(zipfile.BadZipFile, OSError), zipfile.ZipFile(f) as z:
        old = [n for n in z.namelist() if n in ("version", "serialized_exported_program.json")]
        if old:
            return (f"'{path}' is in the torch.export format of torch < 2.7 (member '{old[-1]}'), which nasc does not "
                    "read: torch loads its pickles without restriction. Save the program again with torch.export.save "
                    f"from torch {torch.__version__.split('+')[0]}")
    return f"'{path}' is not a readable torch.export program (.pt2): it has no 'archive_format' member saying pt2"


def _raw_tensor_members(archive: Any, names: list[str], path: Path) -> set[str]:
    """Members that the payload configs say hold raw tensor bytes; refuse entries that ask for unpickling."""
    raw: set[str] = set()
    for config_name in names:
        if not _is_json(config_name) or config_name.startswith("models/"):
            continue
        folder = _WEIGHTS_DIR if config_name.startswith(_WEIGHTS_DIR) else _CONSTANTS_DIR
        try:
            entries = json.loads(archive.get_record(config_name))["config"]
            items = [(fqn, e["path_name"], bool(e["use_pickle"])) for fqn, e in entries.items()]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelLoadError(f"'{path}': member '{config_name}' is not a torch.export payload config "
                                 "(JSON mapping each tensor to its member)") from None
        kind = "weight" if folder == _WEIGHTS_DIR else "constant"
        for fqn, path_name, use_pickle in items:
            member = folder + str(path_name)
            if use_pickle:
                what = ("a TorchScript object" if str(path_name).startswith("custom_obj_") else
                        "a pickled Python object" if str(path_name).startswith("opaque_obj_") else
                        "a pickle (a tensor subclass, or anything else)")
                raise ModelLoadError(f"'{path}': member '{member}' holds {kind} '{fqn}' as {what}; refused: "
                                     f"{_NOT_UNPICKLED}. Export a model whose {kind}s are plain tensors")
            if not re.fullmatch(_RAW_NAME[kind], str(path_name)):
                # torch.export.save names raw payloads so; anything else may be a member the loader unpickles
                raise ModelLoadError(f"'{path}': member '{config_name}' puts {kind} '{fqn}' in member '{member}', "
                                     "not where torch.export.save puts raw tensors; the archive was altered")
            raw.add(member)
    return raw


def _check_torch_save(data: bytes, name: str, path: Path) -> None:
    """Refuse ``data`` unless it is empty (how torch saves no example inputs) or a ``torch.save`` zip whose pickles
    torch's weights-only unpickler accepts."""
    if not data:
        return
    if not data.startswith(b"PK\x03\x04"):
        raise ModelLoadError(f"'{path}': member '{name}' is neither JSON, raw tensor bytes nor a torch.save archive; "
                             f"refused: {_NOT_UNPICKLED}")
    try:
        inner = torch._C.PyTorchFileReader(io.BytesIO(data))
        pickles = [(n, inner.get_record(n)) for n in inner.get_all_records() if n.endswith(".pkl")]
    except RuntimeError as e:
        raise ModelLoadError(f"'{path}': member '{name}' is a damaged torch.save archive: "
                             f"{(str(e).strip().splitlines() or ['unreadable'])[0]}") from None
    for pkl_name, pkl in pickles:
        problem = _pickle_problem(pkl)
        if problem:
            raise ModelLoadError(f"'{path}': member '{name}' (its {pkl_name}) {problem}; refused: {_NOT_UNPICKLED}. "
                                 "A file you saved yourself: save it again with torch.export.save's default "
                                 "pickle_protocol")


def _pickle_problem(pkl: bytes) -> str | None:
    """Why torch's weights-only unpickler, with its default allowlist, would refuse ``pkl``; None if it would not."""
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING
    from torch._weights_only_unpickler import _blocklisted_modules, _get_allowed_globals

    allowed = _get_allowed_globals()
    try:
        for op, arg, _ in pickletools.genops(pkl):
            if op.name not in _SAFE_OPCODES:
                return f"uses the pickle opcode {op.name}, which torch's weights-only unpickler does not implement"
            if op.name == "GLOBAL":
                module, name = str(arg).split(" ", 1)
                module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
                if module in _blocklisted_modules or f"{module}.{name}" not in allowed:
                    return f"pickles '{module}.{name}', which is not a tensor or a plain container"
    except ValueError as e:  # the C unpickler may parse further than pickletools; do not guess
        return f"is not a pickle nasc can check ({e})"
    return None


class _UnpicklingRefused(BaseException):
    """Raised by the audit hook inside the loader; a BaseException so ``except Exception`` cannot hide it."""


_lock = threading.Lock()
_hook_installed = False
_active: list[list[str]] = []  # one list per load in progress; the hook records each refused global in all


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _active and event == "pickle.find_class":
        name = f"{args[0]}.{args[1]}"
        for refused in list(_active):
            refused.append(name)
        raise _UnpicklingRefused(name)


@contextlib.contextmanager
def _standard_unpickling_refused() -> Iterator[list[str]]:
    """Refuse every ``pickle.find_class`` until exit; yields the list of globals refused meanwhile."""
    global _hook_installed
    refused: list[str] = []
    with _lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True
        _active.append(refused)
    try:
        yield refused
    finally:
        with _lock:
            del _active[next(i for i, r in enumerate(_active) if r is refused)]
