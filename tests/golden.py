"""Golden-IR helper for pass tests: run a pipeline on IR text and compare with expected text, and check
numerics against ONNX Runtime on the input graph."""

from __future__ import annotations

import numpy as np

import nasc
from nasc.backends.fidelity import random_inputs, run_graph
from nasc.ir import parse
from nasc.ir.text import structural_diff


def run_golden(before: str, pipeline: str, after: str | None = None, *, constants: dict | None = None,
               rtol: float = 1e-5, atol: float = 1e-6) -> nasc.Graph:
    """``pipeline`` on ``before`` must give ``after`` (structurally) and the same outputs (rtol/atol)."""
    g = parse(before, constants)
    out = nasc.optimize(g, pipeline)
    if after is not None:
        want = parse(after, {**{c.name: c.data for c in out.constants}, **(constants or {})})
        diff = structural_diff(want, out)
        assert diff is None, f"{diff}\n--- got ---\n{out}"
    feeds = random_inputs(g, seed=0, batches=2)
    for ref, got in zip(run_graph(g, feeds), run_graph(out, feeds)):
        for r, o in zip(ref, got):
            np.testing.assert_allclose(o, r, rtol=rtol, atol=atol)
    return out


def count(graph: nasc.Graph, op: str) -> int:
    return sum(n.qualified_op == op for n in graph.nodes)
