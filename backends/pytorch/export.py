"""The torch target: a ``torch.export`` program (``.pt2``) of ``to_torch(graph)`` with nasc's graph beside it.

The archive also holds nasc's own IR as two text members under ``extra/`` (the format, and reading it back, are
in ``nasc.frontends.nasc_pt2``): the printed graph with every constant referenced by name (no weights), and a
JSON map from each constant's name to the parameter or buffer of the program that holds it.

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

from nasc.backends.pytorch.lower import to_torch
from nasc.errors import ExportError
from nasc.frontends.nasc_pt2 import FORMAT, IR_MEMBER, MAP_MEMBER, const_keys
from nasc.frontends.torch_ops import WIDENED, torch_dtype
from nasc.ir.core import Graph
from nasc.ir.text import POLICY_KEY, print_graph
from nasc.ir.types import TensorType


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
        "stored_as": {k: c.dtype for k, c in zip(keys, graph.constants, strict=True) if c.dtype in WIDENED},
        "meta": _json_meta(graph.meta),
        "node_meta": {str(i): m for i, n in enumerate(graph.nodes) if (m := _json_meta(n.meta))},
    }
    torch.export.save(ep, str(path), extra_files={IR_MEMBER: text, MAP_MEMBER: json.dumps(info, indent=1)})
    return ep


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
