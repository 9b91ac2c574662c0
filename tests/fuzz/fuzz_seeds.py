"""Seed models the fuzzer mutates: the bundled example, small models built here, and a torch.export .pt2.

``build_seeds(dir)`` writes each seed as ``dir/<name>/files/...`` plus ``seed.json``
(the model's path inside ``files``, its inputs, and argv every command needs,
such as ``--input-shape`` for a dynamic input). Every seed is valid: the
unmutated seed must inspect and compile (tests/fuzz/test_fuzz_regressions.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

ROOT = Path(__file__).resolve().parents[2]
ONNX_SEEDS = ("digits", "ctrl", "mixed", "dynamic", "extdata")
PT2_SEEDS = ("pt2",)
SEEDS = ONNX_SEEDS + PT2_SEEDS


def _vi(name: str, elem: int, shape: list[Any] | None) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, elem, shape)


def control_flow_model() -> onnx.ModelProto:
    """If (on the sign of the input's sum) then Loop (three steps adding a weight): both kinds of subgraph."""
    then_g = h.make_graph([h.make_node("Mul", ["x", "two"], ["t_out"], name="then_mul")], "then", [],
                          [_vi("t_out", TP.FLOAT, [2, 3])])
    else_g = h.make_graph([h.make_node("Sub", ["x", "one"], ["e_out"], name="else_sub")], "else", [],
                          [_vi("e_out", TP.FLOAT, [2, 3])])
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond"),
         h.make_node("Add", ["acc_in", "w"], ["acc_out"], name="body_add")],
        "body",
        [_vi("iter", TP.INT64, []), _vi("cond_in", TP.BOOL, []), _vi("acc_in", TP.FLOAT, [2, 3])],
        [_vi("cond_out", TP.BOOL, []), _vi("acc_out", TP.FLOAT, [2, 3])])
    nodes = [
        h.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        h.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
        h.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="if"),
        h.make_node("Loop", ["trip", "", "y"], ["z"], body=body, name="loop"),
        h.make_node("Relu", ["z"], ["out"], name="relu"),
    ]
    inits = [nh.from_array(np.array(2, np.float32), "two"), nh.from_array(np.array(1, np.float32), "one"),
             nh.from_array(np.array(0, np.float32), "zero"), nh.from_array(np.array(3, np.int64), "trip"),
             nh.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")]
    g = h.make_graph(nodes, "ctrl", [_vi("x", TP.FLOAT, [2, 3])], [_vi("out", TP.FLOAT, [2, 3])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10)


def mixed_model() -> onnx.ModelProto:
    """Tensor plumbing: Gather from an embedding, Shape/Concat/Reshape, MatMul, Cast, Softmax, Transpose, Slice."""
    rng = np.random.default_rng(0)
    nodes = [
        h.make_node("Gather", ["emb", "ids"], ["g"], axis=0, name="gather"),  # [1,5,4]
        h.make_node("Shape", ["g"], ["gshape"], name="shape"),
        h.make_node("Slice", ["gshape", "s0", "s1"], ["batch"], name="slice"),
        h.make_node("Concat", ["batch", "minus1"], ["newshape"], axis=0, name="concat"),
        h.make_node("Reshape", ["g", "newshape"], ["flat"], name="reshape"),  # [1,20]
        h.make_node("MatMul", ["flat", "w"], ["mm"], name="matmul"),  # [1,3]
        h.make_node("Add", ["mm", "b"], ["lin"], name="add"),
        h.make_node("Cast", ["lin"], ["half"], to=TP.FLOAT16, name="cast16"),
        h.make_node("Cast", ["half"], ["lin32"], to=TP.FLOAT, name="cast32"),
        h.make_node("Mul", ["lin32", "scale"], ["scaled"], name="mul"),
        h.make_node("Softmax", ["scaled"], ["probs"], axis=-1, name="softmax"),
        h.make_node("Transpose", ["probs"], ["out"], perm=[1, 0], name="transpose"),
    ]
    inits = [
        nh.from_array(rng.standard_normal((10, 4)).astype(np.float32), "emb"),
        nh.from_array(np.array([[1, 3, 5, 7, 9]], np.int64), "ids"),
        nh.from_array(np.array([0], np.int64), "s0"), nh.from_array(np.array([1], np.int64), "s1"),
        nh.from_array(np.array([-1], np.int64), "minus1"),
        nh.from_array(rng.standard_normal((20, 3)).astype(np.float32), "w"),
        nh.from_array(rng.standard_normal(3).astype(np.float32), "b"),
    ]
    g = h.make_graph(nodes, "mixed", [_vi("scale", TP.FLOAT, [1, 3])], [_vi("out", TP.FLOAT, [3, 1])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10)


def _digits() -> onnx.ModelProto:
    return onnx.load(str(ROOT / "examples" / "digits_cnn.onnx"))


def dynamic_model() -> onnx.ModelProto:
    """The digits CNN with a symbolic batch dim, so every command needs ``--input-shape``."""
    m = _digits()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    return m


def _write_onnx(files: Path, model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    (files / "model.onnx").write_bytes(model.SerializeToString())


def _extdata(files: Path) -> None:
    """The mixed model with its two weight matrices in ``weights.bin`` next to it (the small int64 operands stay inline)."""
    m = mixed_model()
    onnx.save(m, str(files / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=100)


def _pt2(files: Path) -> None:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 4 * 4, 5)
            self.register_buffer("offset", torch.linspace(-1, 1, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.conv(x)).flatten(1)
            return self.fc(y) + self.offset

    torch.manual_seed(0)
    ep = torch.export.export(Tiny().eval(), (torch.randn(1, 1, 4, 4),))
    torch.export.save(ep, str(files / "model.pt2"))


_BUILDERS: dict[str, tuple[str, Callable[[Path], None], list[dict[str, Any]], list[list[str]]]] = {
    "digits": ("model.onnx", lambda f: (f / "model.onnx").write_bytes((ROOT / "examples/digits_cnn.onnx").read_bytes()),
               [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32"}], []),
    "ctrl": ("model.onnx", lambda f: _write_onnx(f, control_flow_model()),
             [{"name": "x", "shape": [2, 3], "dtype": "float32"}], []),
    "mixed": ("model.onnx", lambda f: _write_onnx(f, mixed_model()),
              [{"name": "scale", "shape": [1, 3], "dtype": "float32"}], []),
    "dynamic": ("model.onnx", lambda f: _write_onnx(f, dynamic_model()),
                [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32"}],
                [["--input-shape", "image=1x1x8x8"]]),
    "extdata": ("model.onnx", _extdata, [{"name": "scale", "shape": [1, 3], "dtype": "float32"}], []),
    "pt2": ("model.pt2", _pt2, [{"name": "x", "shape": [1, 1, 4, 4], "dtype": "float32"}], []),
}


def build_seeds(dest: Path, names: tuple[str, ...] = SEEDS) -> Path:
    """Write the seeds under ``dest`` (skipping ones already there); return ``dest``."""
    for name in names:
        model, build, inputs, argv = _BUILDERS[name]
        root = dest / name
        if (root / "seed.json").is_file():
            continue
        files = root / "files"
        files.mkdir(parents=True, exist_ok=True)
        build(files)
        (root / "seed.json").write_text(json.dumps({"name": name, "model": model, "inputs": inputs, "argv": argv}))
    return dest
