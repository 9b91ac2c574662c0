"""The torch target: a ``torch.export`` program (``.pt2``) of ``to_torch(graph)``, and nasc's graph read back from it.

torch.export lowers the module to ATen ops, and importing those through the torch frontend does not give the same
nodes back (Gemm returns as Transpose+MatMul+Add, names are sanitized). So the archive also holds nasc's own IR as
two text members under ``extra/``: the printed graph with every constant referenced by name (no weights), and a
JSON map from each constant's name to the parameter or buffer of the program that holds it. ``graph_from_pt2``
parses the text with the constants taken from the program's state, so the weights exist once in the file and are
those of the program; the program's inputs and outputs must agree with the IR's, else ``ModelLoadError``.

Sub-byte integer constants (int4 weights) have no torch dtype: ``to_torch`` holds them as int8/uint8 buffers with
the same values (``stored_as`` in the JSON names their IR dtype), and they are narrowed back on reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasc.backends.pytorch.lower import _WIDENED, _attr_name, to_torch, torch_dtype
from nasc.errors import Error, ExportError, ModelLoadError
from nasc.ir import dtypes, verify
from nasc.ir.core import Graph
from nasc.ir.text import POLICY_KEY, parse, print_graph
from nasc.ir.types import TensorType

#: the members (under ``extra/`` in the archive) that carry nasc's graph
IR_MEMBER, MAP_MEMBER = "nasc/graph.ir", "nasc/graph.json"
FORMAT = 1


def has_nasc_graph(extras: Mapping[str, str]) -> bool:
    """Whether a ``.pt2``'s extra members (name -> text) hold a graph written by :func:`export_pt2`."""
    return IR_MEMBER in extras or MAP_MEMBER in extras


def input_names(graph: Graph) -> list[str]:
    """The names ``to_torch`` gives the graph's inputs: the program's user inputs."""
    used: set[str] = set()
    return [_attr_name(v, 0, used) for v in graph.inputs]


def example_args(graph: Graph, feed: Mapping[str, Any] | None = None) -> tuple[Any, ...]:
    """One tensor per graph input: from ``feed`` where it names the input, else zeros of its static type."""
    import torch

    args = []
    for v in graph.inputs:
        t = v.type
        if not isinstance(t, TensorType) or not t.is_static:  # the program is exported for one shape
            raise ExportError(f"torch target: input '{v.name}' has type {t}, not a static tensor; fix its shape "
                              "with input_shapes (--input-shape)")
        if feed is not None and v.name in feed:
            args.append(torch.as_tensor(np.asarray(feed[v.name])))
        else:
            args.append(torch.zeros(t.static_shape, dtype=torch_dtype(t.dtype)))
    return tuple(args)


def export_pt2(graph: Graph, path: str | os.PathLike[str], feed: Mapping[str, Any] | None = None) -> Any:
    """Write ``torch.export.export(to_torch(graph))`` to ``path`` with nasc's graph as extra members; return the
    ExportedProgram. ``feed`` (input name -> array) gives the example inputs saved with it (default zeros)."""
    import torch

    from nasc.frontends.torch import torch_quiet

    text = print_graph(graph, inline_max=-1)  # every constant by name: the weights live in the program only
    keys = const_keys(text)
    module = to_torch(graph)
    by_value = {id(v): name for name, v in module.nasc_values.items()}
    names = [by_value[id(c)] for c in graph.constants]
    try:
        with torch_quiet():
            ep = torch.export.export(module, example_args(graph, feed), strict=False)
    except Exception as e:  # torch.export's errors are many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"torch target: torch.export.export failed on nasc's module: {first}") from e
    kept = {**ep.state_dict, **ep.constants}
    lost = [n for n in names if n not in kept]
    if lost:
        raise ExportError(f"torch target: the exported program lacks the constants {lost[:5]}")
    info = {
        "format": FORMAT,
        "constants": dict(zip(keys, names, strict=True)),
        "stored_as": {k: c.dtype for k, c in zip(keys, graph.constants, strict=True) if c.dtype in _WIDENED},
        "meta": _json_meta(graph.meta),
        "node_meta": {str(i): m for i, n in enumerate(graph.nodes) if (m := _json_meta(n.meta))},
    }
    torch.export.save(ep, str(path), extra_files={IR_MEMBER: text, MAP_MEMBER: json.dumps(info, indent=1)})
    return ep


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


def _json_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a ``meta`` dict that JSON keeps as they are (the rest are dropped), less what the IR text
    prints itself (the quantization policy)."""
    kept = {}
    for key, value in meta.items():
        if key == POLICY_KEY:
            continue
        try:
            if json.loads(json.dumps(value)) == value:
                kept[str(key)] = value
        except (TypeError, ValueError):
            continue
    return kept


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
    if narrow_to not in _WIDENED or arr.dtype != dtypes.to_numpy(_WIDENED[narrow_to]):
        return None
    narrow = arr.astype(dtypes.to_numpy(narrow_to))
    return narrow if np.array_equal(narrow.astype(arr.dtype), arr) else None


def pt2_runner(path: Path, names: Sequence[str]) -> Callable[[Any], list[np.ndarray]]:
    """A function inputs -> outputs that runs the saved ``.pt2`` at ``path``, read back through nasc's safe reader
    (so a fidelity check runs the file itself); ``names`` orders a feed's inputs."""
    import torch

    from nasc.frontends.torch import read_pt2, torch_quiet

    module = read_pt2(path).module()

    def run(inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray]:
        args = [inputs[n] for n in names] if isinstance(inputs, Mapping) else list(inputs)
        with torch.no_grad(), torch_quiet():
            outs = module(*[torch.as_tensor(np.asarray(a)) for a in args])
        return [o.detach().numpy() for o in outs]

    return run


def artifact_facts(ep: Any, path: Path) -> dict[str, Any]:
    """What report.json says of a torch build: file size, parameters and buffers, ATen ops."""
    ops: dict[str, int] = {}
    for node in ep.graph.nodes:
        if node.op == "call_function":
            name = str(getattr(node.target, "__name__", node.target))
            ops[name] = ops.get(name, 0) + 1
    params = {k: v for k, v in ep.state_dict.items() if k in set(ep.graph_signature.parameters)}
    buffers = {k: v for k, v in {**ep.state_dict, **ep.constants}.items() if k not in params}
    return {
        "artifact": path.name,
        "artifact_bytes": path.stat().st_size,
        "parameters": len(params),
        "parameter_elements": int(sum(v.numel() for v in params.values())),
        "buffers": len(buffers),
        "weight_bytes": int(sum(v.numel() * v.element_size() for v in (*params.values(), *buffers.values()))),
        "aten_ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "torch": _torch_version(),
    }


def _torch_version() -> str:
    import torch

    return str(torch.__version__).split("+")[0]
