"""Run a graph through ``nasc.to_torch`` the way the checks do (tests/backends/test_lowerings.py's torch target and
tools/onnx_conformance.py ``--target torch``): the graph the TVM targets lower, its QDQ patterns integerized into
nasc's integer ops (bit-exact against their reference), as a ``torch.fx`` module run without autograd."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nasc.ir.core import Graph


def run_torch(graph: Graph, feeds: Sequence[Mapping[str, Any]]) -> list[list[np.ndarray]]:
    """``graph``'s outputs on each feed (graph input name -> array), computed by ``to_torch`` of its integerized
    copy under ``torch.no_grad``. Sub-byte integers (int4, ...), which torch holds widened to 8 bits, are widened
    on the way in and narrowed back on the way out."""
    import torch

    from nasc.backends.pytorch.lower import to_torch, torch_dtype
    from nasc.backends.tvm.qint import integerize
    from nasc.ir.dtypes import to_numpy

    module = to_torch(integerize(graph)[0])

    def held(v: Any) -> np.dtype:  # the numpy dtype of the tensors holding v's values (int8 for int4)
        return torch.empty(0, dtype=torch_dtype(v.dtype)).numpy().dtype

    widened = {id(v): (held(v), to_numpy(v.dtype)) for v in (*graph.inputs, *graph.outputs)
               if held(v) != to_numpy(v.dtype)}

    def arg(v: Any, a: Any) -> torch.Tensor:
        a = np.array(a)
        return torch.from_numpy(a.astype(widened[id(v)][0]) if id(v) in widened else a)

    def result(v: Any, t: torch.Tensor) -> np.ndarray:
        a = t.detach().numpy()
        return a.astype(widened[id(v)][1]) if id(v) in widened and a.dtype == widened[id(v)][0] else a

    results = []
    with torch.no_grad():
        for feed in feeds:
            outs = module(*[arg(v, feed[v.name]) for v in graph.inputs])
            results.append([result(v, o) for o, v in zip(outs, graph.outputs, strict=True)])
    return results
