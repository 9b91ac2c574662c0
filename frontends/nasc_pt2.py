"""Reading back what nasc's torch target wrote: the graph stored as text members beside a ``torch.export`` program.

torch.export lowers nasc's module to ATen ops, and importing those through the torch frontend does not give the
same nodes back (Gemm returns as Transpose+MatMul+Add, names are sanitized). So the archive also holds nasc's own
IR as two text members under ``extra/``: the printed graph with every constant referenced by name (no weights),
and a JSON map from each constant's name to the parameter or buffer of the program that holds it.
:func:`graph_from_pt2` parses the text with the constants taken from the program's state, so the weights exist
once in the file and are those of the program; the program's inputs and outputs must agree with the IR's, else
``ModelLoadError``. The writer is ``nasc.backends.pytorch.export``; what both sides must agree on (member names,
format, input names, widened dtypes) lives here, so the frontend needs nothing from the backends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nasc.errors import Error, ModelLoadError
from nasc.frontends.torch_ops import WIDENED, torch_dtype
from nasc.ir import dtypes, verify
from nasc.ir.core import Graph, Value
from nasc.ir.text import parse

#: the members (under ``extra/`` in the archive) that carry nasc's graph
IR_MEMBER, MAP_MEMBER = "nasc/graph.ir", "nasc/graph.json"
FORMAT = 1


def attr_name(v: Value, i: int, used: set[str]) -> str:
    base = re.sub(r"\W", "_", v.name).strip("_") or f"const_{i}"
    if base[0].isdigit():
        base = f"c_{base}"
    name, k = base, 1
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def has_nasc_graph(extras: Mapping[str, str]) -> bool:
    """Whether a ``.pt2``'s extra members (name -> text) hold a graph written by :func:`export_pt2`."""
    return IR_MEMBER in extras or MAP_MEMBER in extras


def input_names(graph: Graph) -> list[str]:
    """The names ``to_torch`` gives the graph's inputs: the program's user inputs."""
    used: set[str] = set()
    return [attr_name(v, 0, used) for v in graph.inputs]


def graph_from_pt2(ep: Any, extras: Mapping[str, str], where: str) -> Graph:
    """The graph :func:`export_pt2` stored in a ``.pt2``, its constants taken from ``ep``'s parameters and buffers.

    Raises ``ModelLoadError`` naming what disagrees when the IR and the program differ (inputs, outputs,
    constants), which only an altered file shows."""
    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"'{where}': nasc's graph in the archive disagrees with its program: {why}; the file "
                              "was altered after nasc wrote it")

    if IR_MEMBER not in extras or MAP_MEMBER not in extras:
        raise bad(f"it has only one of the members extra/{IR_MEMBER} and extra/{MAP_MEMBER}")
    text = extras[IR_MEMBER]
    try:
        info = json.loads(extras[MAP_MEMBER])
        mapping, stored_as = dict(info["constants"]), dict(info.get("stored_as", {}))
        fmt = info["format"]
    except (ValueError, KeyError, TypeError):
        raise bad(f"extra/{MAP_MEMBER} is not nasc's JSON constant map") from None
    if fmt != FORMAT:
        raise ModelLoadError(f"'{where}': nasc's graph is in format {fmt!r}; this nasc reads format {FORMAT}")
    keys = const_keys(text)
    if set(keys) != set(mapping):
        diff = sorted(set(keys) ^ set(mapping))
        raise bad(f"constants {diff[:5]} are in one of the IR text and the constant map but not the other")
    state = {**ep.state_dict, **ep.constants}
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        name = mapping[key]
        if name not in state:
            raise bad(f"constant '{key}' maps to '{name}', which the program does not hold")
        arr = _numpy(state[name], stored_as.get(key))
        if arr is None:
            raise bad(f"constant '{key}' ('{name}' in the program) does not hold {stored_as[key]} values")
        arrays[key] = arr
    try:
        graph = parse(text, arrays)
    except Error as e:
        raise bad(f"extra/{IR_MEMBER} does not parse ({e})") from None
    for c in graph.constants:
        if c.const is not None and c.data.dtype != dtypes.to_numpy(c.dtype):
            raise bad(f"constant '{c.name}' is {c.dtype} in the IR, {c.data.dtype} in the program")
    _check_signature(graph, ep, bad)
    try:
        verify(graph)
    except Error as e:
        raise bad(f"extra/{IR_MEMBER} is not a valid graph ({e})") from None
    for key, value in info.get("meta", {}).items():
        graph.meta.setdefault(key, value)
    for i, meta in info.get("node_meta", {}).items():
        if str(i).isdigit() and int(i) < len(graph.nodes) and isinstance(meta, dict):
            graph.nodes[int(i)].meta.update(meta)
    return graph


def const_keys(text: str) -> list[str]:
    """The keys of the constants printed by reference, in order (``const %v : T = "key"``; a JSON string holds no
    bare quote, so the last ``= "`` on the line starts the key)."""
    keys = []
    for line in text.splitlines():
        if line.startswith("const ") and line.endswith('"'):
            keys.append(str(json.loads('"' + line.rpartition(' = "')[2])))
    return keys


def program_io(ep: Any) -> tuple[list[tuple[str, tuple[int, ...], Any]], list[tuple[tuple[int, ...], Any]]]:
    """The program's user inputs (name, shape, dtype) and outputs (shape, dtype)."""
    sig = ep.graph_signature
    user = set(sig.user_inputs)
    ins, outs = [], []
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and node.name in user:
            ins.append((node.name, _shape(val), getattr(val, "dtype", None)))
        if node.op == "output":
            vals = [a.meta.get("val") if hasattr(a, "meta") else None for a in node.args[0]]
            outs = [(_shape(v), getattr(v, "dtype", None)) for v in vals][: len(sig.user_outputs)]
    return ins, outs


def _check_signature(graph: Graph, ep: Any, bad: Any) -> None:
    names = input_names(graph)
    ins, outs = program_io(ep)
    if len(ins) != len(graph.inputs):
        raise bad(f"the program has {len(ins)} inputs, the IR {len(graph.inputs)}")
    for i, (v, name, (pname, shape, dtype)) in enumerate(zip(graph.inputs, names, ins, strict=True)):
        if pname != name:
            raise bad(f"input {i} is '{pname}' in the program but '{v.name}' in the IR")
        if (shape, dtype) != (v.shape, torch_dtype(v.dtype)):
            raise bad(f"input '{v.name}' is {_typ(shape, dtype)} in the program but {v.type} in the IR")
    if len(outs) != len(graph.outputs):
        raise bad(f"the program has {len(outs)} outputs, the IR {len(graph.outputs)}")
    for i, (v, (shape, dtype)) in enumerate(zip(graph.outputs, outs, strict=True)):
        if (shape, dtype) != (v.shape, torch_dtype(v.dtype)):
            raise bad(f"output {i} ('{v.name}') is {_typ(shape, dtype)} in the program but {v.type} in the IR")


def _typ(shape: Sequence[int], dtype: Any) -> str:
    return f"{str(dtype).removeprefix('torch.')}[{','.join(map(str, shape))}]"


def _shape(val: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(val, "shape", ()))


def _numpy(t: Any, narrow_to: str | None) -> np.ndarray | None:
    """``t`` as numpy (bfloat16 through ml_dtypes); with ``narrow_to``, the sub-byte type its int8/uint8 values
    hold, or None when a value does not fit it."""
    import torch

    t = t.detach().cpu()
    arr = t.view(torch.int16).numpy().view(dtypes.to_numpy("bf16")) if t.dtype == torch.bfloat16 else t.numpy()
    if narrow_to is None:
        return arr
    if narrow_to not in WIDENED or arr.dtype != dtypes.to_numpy(WIDENED[narrow_to]):
        return None
    narrow = arr.astype(dtypes.to_numpy(narrow_to))
    return narrow if np.array_equal(narrow.astype(arr.dtype), arr) else None
