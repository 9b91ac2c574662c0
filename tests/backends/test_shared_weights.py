"""A constant read by several nodes (tied layers: one IR value) is stored once by every backend.

The models: four residual layers ``x = x + x @ W`` (or ``Gemm(transB=1)``, as torch exports nn.Linear)
with one shared W, or with four distinct W's, or shared W plus a per-layer low-rank path
``(x @ A_l) @ B_l`` (what tie-layers leaves). The ONNX file and the CPU library hold W once; the MCU
project holds one ``const`` array for W, and the repeated layers call one C kernel with each layer's
pointers. Every build is checked against ONNX Runtime on the original model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

import nasc

D = 128  # W is D x D float32: 64 KiB
T = 4  # tokens
LAYERS = 4
RANK = 8
W_BYTES = D * D * 4
TOL = 1e-4  # max abs error against ONNX Runtime on the original model


def _model(kind: str, op: str = "MatMul") -> onnx.ModelProto:
    """``kind``: "shared" (one W), "distinct" (a W per layer) or "tied" (one W plus a rank-8 path per layer)."""
    rng = np.random.default_rng(0)

    def const(name: str, shape: tuple[int, ...]) -> str:
        inits.append(nh.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name))
        return name

    inits: list[onnx.TensorProto] = []
    nodes = []
    shared = const("W", (D, D)) if kind != "distinct" else None
    bias = const("bias", (D,)) if op == "Gemm" and kind != "distinct" else None
    x = "x"
    for i in range(LAYERS):
        w = shared or const(f"W{i}", (D, D))
        if op == "Gemm":
            nodes.append(h.make_node("Gemm", [x, w, bias or const(f"bias{i}", (D,))], [f"m{i}"], transB=1,
                                     name=f"gemm{i}"))
        else:
            nodes.append(h.make_node("MatMul", [x, w], [f"m{i}"], name=f"mm{i}"))
        y = f"m{i}"
        if kind == "tied":
            nodes += [h.make_node("MatMul", [x, const(f"A{i}", (D, RANK))], [f"u{i}"], name=f"lora_a{i}"),
                      h.make_node("MatMul", [f"u{i}", const(f"B{i}", (RANK, D))], [f"d{i}"], name=f"lora_b{i}"),
                      h.make_node("Add", [y, f"d{i}"], [f"c{i}"], name=f"delta{i}")]
            y = f"c{i}"
        out = "y" if i == LAYERS - 1 else f"x{i}"
        nodes.append(h.make_node("Add", [x, y], [out], name=f"res{i}"))
        x = out
    g = h.make_graph(nodes, f"{kind}_{op}", [h.make_tensor_value_info("x", TensorProto.FLOAT, [T, D])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, [T, D])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8  # what ONNX Runtime reads
    return m


def _weight_arrays(weights_c: str) -> list[int]:
    """Element counts of the const arrays in weights.c."""
    return [int(n) for n in re.findall(r"static const \w+ nasc_w\d+\[(\d+)\]", weights_c)]


def _kernel_defs(kernels_c: str) -> list[str]:
    return re.findall(r"^TVM_DLL int32_t (\w+)\([^)]*\) \{", kernels_c, re.M)


def test_ir_reads_one_value_and_onnx_file_holds_it_once(tmp_path: Path) -> None:
    from nasc.backends.onnx import export_onnx

    sizes = {}
    for kind in ("shared", "distinct"):
        g = nasc.load(_model(kind))
        consts = [v for v in g.values() if v.is_const]
        assert len(consts) == (1 if kind == "shared" else LAYERS)
        if kind == "shared":
            assert len(consts[0].uses) == LAYERS  # one value, read by the four MatMuls
        path = export_onnx(g, tmp_path / f"{kind}.onnx")
        proto = onnx.load(str(path))
        inits = proto.graph.initializer
        assert len(inits) == len(consts)
        if kind == "shared":
            assert [t.name for t in inits] == ["W"]
            assert sum(len(t.raw_data) for t in inits) == W_BYTES
            used = [n.input[1] for n in proto.graph.node if n.op_type == "MatMul"]
            assert used == ["W"] * LAYERS
        sizes[kind] = path.stat().st_size
    assert W_BYTES <= sizes["shared"] < W_BYTES + 4096
    assert abs((sizes["distinct"] - sizes["shared"]) - 3 * W_BYTES) < 4096


def test_onnx_target_report_gives_the_file_size(tmp_path: Path) -> None:
    art = nasc.compile(_model("shared"), "onnx", tmp_path / "o")
    assert art.report["files"]["model.onnx"] == (tmp_path / "o" / "model.onnx").stat().st_size
    assert W_BYTES <= art.report["files"]["model.onnx"] < W_BYTES + 4096
    assert art.report["fidelity"]["max_abs_err"] <= TOL


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_cpu_library_holds_a_shared_weight_once(tmp_path: Path, op: str) -> None:
    """Gemm(transB=1): the lowering transposes a constant W once per value (Lx.transposed_const), and TVM's VM
    executable keeps equal constants once besides."""
    so = {}
    for kind in ("shared", "distinct"):
        art = nasc.compile(_model(kind, op), "cpu", tmp_path / kind, measure_latency=False)
        assert art.report["fidelity"]["max_abs_err"] <= TOL, art.report["fidelity"]
        so[kind] = art.report["files"]["model.so"]
        assert so[kind] == (tmp_path / kind / "model.so").stat().st_size
    saved = 3 * (W_BYTES + (D * 4 if op == "Gemm" else 0))
    # within a page (the library's sections are page-aligned) plus 2%: three weights, not four
    assert abs((so["distinct"] - so["shared"]) - saved) <= 4096 + 0.02 * saved, so


def _mcu(tmp_path: Path, model: onnx.ModelProto, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    out = tmp_path / name
    art = nasc.compile(model, "mcu:cortex-m4", out, verify_on="host")
    rep = art.report
    assert rep["verify"]["host"]["max_abs_err"] <= TOL, rep["verify"]
    return rep, {f: (out / f).read_text() for f in ("weights.c", "kernels.c", "model.c")}


def _flash_split(rep: dict[str, Any]) -> None:
    """code_bytes + weights.o's flash == flash_bytes, and weights.o holds the weights and a pointer each."""
    objs = rep["objects"]
    wflash = objs["weights.o"]["text"] + objs["weights.o"]["data"]
    assert rep["code_bytes"] == sum(o["text"] + o["data"] for n, o in objs.items() if n != "weights.o") > 0
    assert rep["flash_bytes"] == rep["code_bytes"] + wflash
    assert rep["weights_bytes"] <= wflash <= rep["weights_bytes"] + 16 * (len(rep["steps"]) + 1)


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_mcu_keeps_one_array_and_calls_one_kernel(tmp_path: Path, op: str) -> None:
    rep, src = _mcu(tmp_path, _model("shared", op), "shared")
    bias = D * 4 if op == "Gemm" else 0
    # one array for W (before, Gemm(transB=1) gave one folded W^T array per layer)
    assert _weight_arrays(src["weights.c"]).count(D * D) == 1
    assert rep["weights_bytes"] == W_BYTES + bias
    kernels = _kernel_defs(src["kernels.c"])
    assert len(kernels) == 1 and rep["kernels"] == 1
    calls = re.findall(rf"rc = {kernels[0]}\(([^;]*)\);", src["model.c"])
    assert len(calls) == LAYERS
    assert len({re.search(r"nasc_weights\[\d+\]", c).group(0) for c in calls}) == 1  # type: ignore[union-attr]
    # each step is labelled with its own layer, not with every node that reads W
    node = "gemm" if op == "Gemm" else "mm"
    assert [s["layer"] for s in rep["steps"]] == [f"{node}{i} ({op})" for i in range(LAYERS)]
    _flash_split(rep)

    rep_d, src_d = _mcu(tmp_path, _model("distinct", op), "distinct")
    assert _weight_arrays(src_d["weights.c"]).count(D * D) == LAYERS
    assert rep_d["weights_bytes"] == LAYERS * (W_BYTES + bias)
    # untied but identical layers: one kernel too, called with each layer's weights
    kernels_d = _kernel_defs(src_d["kernels.c"])
    assert len(kernels_d) == 1
    calls_d = re.findall(rf"rc = {kernels_d[0]}\(([^;]*)\);", src_d["model.c"])
    assert len({re.search(r"nasc_weights\[\d+\]", c).group(0) for c in calls_d}) == LAYERS  # type: ignore[union-attr]
    _flash_split(rep_d)
    assert abs(rep_d["code_bytes"] - rep["code_bytes"]) <= 16  # model.c's pointers differ, nothing else
    saved = rep_d["objects"]["weights.o"]["text"] - rep["objects"]["weights.o"]["text"]
    assert 3 * (W_BYTES + bias) <= saved <= 3 * (W_BYTES + bias) + 64


def test_mcu_tied_layers_with_low_rank_paths(tmp_path: Path) -> None:
    """What tie-layers leaves: W once, each layer's A_l, B_l once, and each kernel emitted once for all layers."""
    rep, src = _mcu(tmp_path, _model("tied"), "tied")
    arrays = _weight_arrays(src["weights.c"])
    assert arrays.count(D * D) == 1
    assert arrays.count(D * RANK) == 2 * LAYERS  # A_l and B_l
    assert rep["weights_bytes"] == W_BYTES + 2 * LAYERS * D * RANK * 4
    kernels = _kernel_defs(src["kernels.c"])
    assert len(kernels) == rep["kernels"] <= 3
    steps = re.findall(r"rc = (\w+)\(", src["model.c"])
    assert len(steps) == LAYERS * len(kernels)
    assert all(steps.count(k) == LAYERS for k in kernels)
    _flash_split(rep)


def test_mcu_repeated_transformer_layers_share_their_kernels(tmp_path: Path) -> None:
    """Untied transformer layers of equal shapes: four layers compile to the kernels of one (TVM merges equal
    functions), so kernels.c and its code flash do not grow with depth; only the weights and model.c's calls do."""
    import torch

    from nasc.examples import zoo

    reps = {}
    for n in (1, 4):
        blocks = [zoo.vit_block(dim=32, heads=2, mlp_ratio=2) for _ in range(n)]
        torch.manual_seed(1)
        for b in blocks:  # distinct weights per layer (vit_block seeds itself: all would be equal)
            for p in b.parameters():
                torch.nn.init.normal_(p, std=0.1)
        path = zoo.export_onnx(torch.nn.Sequential(*blocks).eval(), (torch.randn(1, 8, 32),), tmp_path / f"v{n}.onnx",
                               dynamo=False)
        art = nasc.compile(path, "mcu:cortex-m4", tmp_path / f"b{n}", passes="simplify,fuse",
                           verify_on="host" if n == 4 else "none")
        reps[n] = art.report
        reps[n]["defs"] = _kernel_defs((tmp_path / f"b{n}" / "kernels.c").read_text())
    one, four = reps[1], reps[4]
    assert four["verify"]["host"]["max_abs_err"] <= TOL
    assert len(four["steps"]) == 4 * len(one["steps"])
    assert four["kernels"] == one["kernels"] == len(four["defs"]) and sorted(four["defs"]) == sorted(one["defs"])
    assert four["objects"]["kernels.o"] == one["objects"]["kernels.o"]
    assert 3.9 * one["weights_bytes"] <= four["weights_bytes"] <= 4 * one["weights_bytes"]
