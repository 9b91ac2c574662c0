"""Repeated layers in model.c: one block function per repeated run of steps, a pointer table per copy.

The run finder on key sequences; the emission on a hand-written program (kernels with a workspace, C run
on the host gcc, blocks on and off bit-identical); and six ViT blocks end to end: one block function
called once per copy, outputs against ONNX Runtime on host and QEMU, and less code flash than the
one-call-per-step emission (``emit.BLOCKS = False``).
"""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.backends.mcu import emit
from nasc.backends.mcu.blocks import Run, calls_saved, find_runs
from nasc.backends.mcu.boards import BOARDS
from nasc.backends.mcu.kernels import Kernels, Weight
from nasc.backends.mcu.plan import Buffer, Program, Step, check_plan, plan
from nasc.backends.mcu.verify import run_project

TOL = 1e-4  # max abs error against ONNX Runtime on the original model


# ----------------------------------------------------------------------------------------------
# find_runs
# ----------------------------------------------------------------------------------------------

def test_finds_consecutive_copies_of_a_unit() -> None:
    assert find_runs(list("xABCABCABCy")) == [Run(1, 3, 3)]
    assert Run(1, 3, 3).copies() == [1, 4, 7] and Run(1, 3, 3).end == 10


def test_units_shorter_than_three_and_single_copies_are_left_alone() -> None:
    assert find_runs(list("ABABAB")) == []  # a unit of 2 (ABAB twice would be a unit of 4)
    assert find_runs(list("ABCDEFG")) == []
    assert find_runs(list("ABABAB"), min_len=2) == [Run(0, 2, 3)]


def test_none_steps_are_never_inside_a_run() -> None:
    keys: list[str | None] = list("ABCABC")
    keys[4] = None  # a step that takes a model input or output
    assert find_runs(keys) == []
    assert find_runs([None, *"ABCABCABC", None]) == [Run(1, 3, 3)]


def test_greedy_takes_the_best_run_then_looks_at_the_rest() -> None:
    keys = list("ABCDABCDABCD") + list("xyz") + list("EFGEFG")
    assert find_runs(keys) == [Run(0, 4, 3), Run(15, 3, 2)]
    # a gain that refuses a run: its steps stay calls
    assert find_runs(keys, gain=lambda r: -1 if r.length == 3 else calls_saved(r)) == [Run(0, 4, 3)]
    # a period of two layers wins when it saves more
    assert find_runs(list("ABCABC"), gain=lambda r: r.count) == [Run(0, 3, 2)]


def test_random_key_sequences_give_disjoint_runs_of_equal_copies() -> None:
    rng = random.Random(0)
    for _ in range(300):
        unit = [rng.choice("ABCD") for _ in range(rng.randint(3, 6))]
        keys: list[str | None] = []
        while len(keys) < 60:
            keys += unit * rng.randint(1, 4) if rng.random() < 0.5 else [rng.choice([*"ABCDE", None])]
        taken: set[int] = set()
        for r in find_runs(keys):
            assert r.length >= 3 and r.count >= 2 and calls_saved(r) > 0
            span = set(range(r.start, r.end))
            assert not span & taken
            taken |= span
            first = keys[r.start:r.start + r.length]
            assert None not in first
            assert all(keys[c:c + r.length] == first for c in r.copies())


# ----------------------------------------------------------------------------------------------
# Emission on a hand-written program, run with the host gcc
# ----------------------------------------------------------------------------------------------

N = 8  # floats per tensor
LAYERS = 6

KERNELS_C = """#include "nasc_shim.h"
/* y = x * w, through a workspace copy of x (checks the LIFO allocator inside a block) */
TVM_DLL int32_t k_scale(float* x, float* w, float* y) {
  float* t = (float*)TVMBackendAllocWorkspace(1, 0, 8 * sizeof(float), 2, 32);
  if (t == NULL) return -1;
  for (int i = 0; i < 8; i++) t[i] = x[i];
  for (int i = 0; i < 8; i++) y[i] = t[i] * w[i];
  if (TVMBackendFreeWorkspace(1, 0, t) != 0) return -1;
  NASC_KERNEL_OK();
}
TVM_DLL int32_t k_add(float* x, float* b, float* y) {
  for (int i = 0; i < 8; i++) y[i] = x[i] + b[i];
  NASC_KERNEL_OK();
}
TVM_DLL int32_t k_mix(float* a, float* b, float* y) {
  for (int i = 0; i < 8; i++) y[i] = 0.5f * a[i] - b[i];
  NASC_KERNEL_OK();
}
"""


def _layers_program(tied: bool = False) -> tuple[Kernels, dict[str, np.ndarray]]:
    """``LAYERS`` layers of h1 = h * W_l (with a workspace), h2 = h1 + b (b shared), h = 0.5 h2 - h1;
    ``tied``: one W for all layers."""
    rng = np.random.default_rng(0)
    nb = N * 4
    bufs = {"x": Buffer("x", nb, "input"), "y": Buffer("y", nb, "output"), "b": Buffer("b", nb, "weight")}
    weights = {"b": Weight("b", rng.standard_normal(N).astype(np.float32))}
    steps: list[Step] = []
    calls: dict[str, list[str]] = {}
    h = "x"
    for i in range(LAYERS):
        w, h1, h2 = "w0" if tied else f"w{i}", f"h1_{i}", f"h2_{i}"
        out = "y" if i == LAYERS - 1 else f"h_{i}"
        if w not in weights:
            weights[w] = Weight(w, rng.standard_normal(N).astype(np.float32))
            bufs[w] = Buffer(w, nb, "weight")
        for name in (h1, h2, out):
            bufs.setdefault(name, Buffer(name, nb))
        for sname, kern, args, ws in ((f"a{i}", "k_scale", [h, w, h1], nb), (f"b{i}", "k_add", [h1, "b", h2], 0),
                                      (f"c{i}", "k_mix", [h2, h1, out], 0)):
            steps.append(Step(sname, kern, args[:2], [args[2]], ws, label=f"layer{i}.{kern}"))
            calls[sname] = args
            for r in args[:2]:
                if r in weights:
                    weights[r].users.append(sname)
        h = out
    names = list(bufs)
    k = Kernels(KERNELS_C, Program(bufs, steps), weights, calls, {n: "float32" for n in names},
                {n: [N] for n in names}, ["x"], ["y"], {"k_scale": 0, "k_add": 0, "k_mix": 0})
    return k, {n: w.array for n, w in weights.items()}


def _reference(x: np.ndarray, ws: dict[str, np.ndarray]) -> np.ndarray:
    h = x
    for i in range(LAYERS):
        h1 = h * ws.get(f"w{i}", ws["w0"])
        h = np.float32(0.5) * (h1 + ws["b"]) - h1
    return h


def _project(out: Path, k: Kernels, blocks: bool, spread: bool = False) -> tuple[str, list[emit.Port], list[emit.Port]]:
    p = plan(k.program)
    check_plan(k.program, p)
    if spread:  # each workspace at its own offset past the planned arena: then they differ between copies
        for s in k.program.steps:
            if s.workspace:
                p.intervals[f"{s.name}.workspace"].offset = p.arena_bytes
                p.arena_bytes += p.intervals[f"{s.name}.workspace"].nbytes
    ins, outs = emit.ports(k, ["x"], ["y"])
    emit.write_project(out, k, p, BOARDS["cortex-m4"], ins, outs, {}, "layers", 0)
    if not blocks:  # write_project follows emit.BLOCKS; the parameter overrides it
        (out / "model.c").write_text(emit.model_c(k, p, ins, outs, {}, "layers", blocks=False))
    return (out / "model.c").read_text(), ins, outs


@pytest.mark.parametrize(("spread", "tied"), [(False, False), (True, False), (False, True)],
                         ids=["shared-workspace", "workspace-per-copy", "tied-weights"])
def test_block_function_with_workspaces_runs_like_the_plain_calls(tmp_path: Path, spread: bool, tied: bool) -> None:
    k, ws = _layers_program(tied)
    src, ins, outs = _project(tmp_path / "blocks", k, blocks=True, spread=spread)
    plain, _, _ = _project(tmp_path / "plain", k, blocks=False, spread=spread)
    assert "nasc_block" not in plain and len(re.findall(r"rc = k_\w+\(", plain)) == 3 * LAYERS
    # step 0 reads the model input and step 17 writes the output; steps 1-16 are five copies of
    # (k_add, k_mix, k_scale): a unit need not start where a layer does
    assert len(re.findall(r"static int32_t nasc_block_\d+\(", src)) == 1
    body = src[src.index("static int32_t nasc_block_0("):src.index("int nasc_run(")]
    assert "(float*)nasc_weights[0]" in body  # the shared b is fixed in the function
    if tied:  # every pointer is the same in every copy (a unit of whole periods of the arena's reuse)
        assert "nasc_block_0(void)" in src and "_args_" not in src
        assert src.count("rc = nasc_block_0();") >= 2
    else:  # each W_l in the tables
        assert len(re.findall(r"rc = nasc_block_0\(nasc_block_0_args_\d\);", src)) == 5
        assert body.count("nasc_workspace_set(") == 1 and body.count("rc = k_") == 3
        assert ("nasc_workspace_set((void*)p[" in body) == spread  # from the table only where copies differ
    assert all(f"step {i}:" in src for i in range(3 * LAYERS))  # every step still labelled in nasc_run
    for cc, flags in (("gcc", []), ("arm-none-eabi-gcc", list(BOARDS["cortex-m4"].cflags))):
        subprocess.run([cc, *flags, "-std=c99", "-Os", "-Wall", "-Wextra", "-Werror", "-I", str(tmp_path / "blocks"),
                        "-c", str(tmp_path / "blocks" / "model.c"), "-o", str(tmp_path / "m.o")], check=True)
    feeds = [{"x": np.random.default_rng(s).standard_normal(N).astype(np.float32)} for s in range(3)]
    got = run_project(tmp_path / "blocks", "host", ins, outs, feeds)
    want = run_project(tmp_path / "plain", "host", ins, outs, feeds)
    for f, g, w in zip(feeds, got, want):
        assert g[0].tobytes() == w[0].tobytes()
        np.testing.assert_allclose(g[0], _reference(f["x"], ws), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Six ViT blocks end to end
# ----------------------------------------------------------------------------------------------

def _vit(tmp_path: Path, n: int) -> Path:
    import torch

    from nasc.examples import zoo

    blocks = [zoo.vit_block(dim=32, heads=2, mlp_ratio=2) for _ in range(n)]
    torch.manual_seed(1)
    for b in blocks:  # distinct weights per layer (vit_block seeds itself: all would be equal)
        for p in b.parameters():
            torch.nn.init.normal_(p, std=0.1)
    return zoo.export_onnx(torch.nn.Sequential(*blocks).eval(), (torch.randn(1, 8, 32),), tmp_path / f"v{n}.onnx",
                           dynamo=False)


def test_six_vit_blocks_call_one_block_function_and_take_less_code(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = _vit(tmp_path, 6)
    art = nasc.compile(path, "mcu:cortex-m4", tmp_path / "blocks", passes="simplify,fuse", verify_on="host,qemu")
    rep = art.report
    for mode in ("host", "qemu"):
        assert rep["verify"][mode]["max_abs_err"] <= TOL, rep["verify"]
    src = (tmp_path / "blocks" / "model.c").read_text()
    assert re.findall(r"static int32_t (nasc_block_\d+)\(", src) == ["nasc_block_0"]
    copies = re.findall(r"rc = nasc_block_0\((nasc_block_0_args_\d+)\);", src)
    assert len(copies) == len(set(copies)) >= 4  # each copy once, with its own table
    per_layer = len(rep["steps"]) // 6
    body = src[src.index("static int32_t nasc_block_0("):src.index("int nasc_run(")]
    assert body.count("rc = nasc_k_") == per_layer
    run = src[src.index("int nasc_run("):]
    assert len(re.findall(r"rc = nasc_k_\w+\(", run)) == len(rep["steps"]) - len(copies) * per_layer
    tables = re.findall(r"static const void\* const nasc_block_0_args_\d+\[(\d+)\]", src)
    assert len(tables) == len(copies) and all(int(t) < 20 for t in tables)  # only each layer's weights vary
    for cc, flags in (("gcc", []), ("arm-none-eabi-gcc", list(BOARDS["cortex-m4"].cflags))):
        subprocess.run([cc, *flags, "-std=c99", "-Os", "-Wall", "-Wextra", "-Werror", "-I", str(tmp_path / "blocks"),
                        "-c", str(tmp_path / "blocks" / "model.c"), "-o", str(tmp_path / "m.o")], check=True)

    monkeypatch.setattr(emit, "BLOCKS", False)
    plain = nasc.compile(path, "mcu:cortex-m4", tmp_path / "plain", passes="simplify,fuse", verify_on="none").report
    assert "nasc_block" not in (tmp_path / "plain" / "model.c").read_text()
    assert plain["objects"]["kernels.o"] == rep["objects"]["kernels.o"]
    # measured (arm-none-eabi-gcc -Os, cortex-m4): model.o text 1828 -> 900, code_bytes 3386 -> 2458
    assert rep["objects"]["model.o"]["text"] < 0.6 * plain["objects"]["model.o"]["text"]
    assert rep["code_bytes"] < 0.85 * plain["code_bytes"]
