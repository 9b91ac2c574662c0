"""The PyTorch frontend's promises: scopes, state-dict names, tied parameters, .pt2 files, the
unconverted-op error and the via='onnx' route."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

import nasc
from nasc.backends.fidelity import ort_session, run_ort
from nasc.backends.onnx import to_onnx
from nasc.errors import UnsupportedModelError
from nasc.examples import zoo


def run_ir(graph: nasc.Graph, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return run_ort(ort_session(to_onnx(graph)), feed)


class TiedLM(nn.Module):
    """An embedding and an output head that share one weight, as language models do."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.GELU())
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.emb(ids)))


def test_tied_parameter_is_one_constant_used_twice():
    torch.manual_seed(0)
    m = TiedLM().eval()
    ids = torch.tensor([[1, 5, 7, 49]])
    g = nasc.from_torch(m, (ids,))
    weights = [c for c in g.constants if c.shape == (50, 16)]
    assert len(weights) == 1
    assert {n.op for n in weights[0].users()} == {"Gather", "Transpose"}  # embedding lookup and the head
    assert weights[0].name in ("emb.weight", "head.weight")
    np.testing.assert_allclose(run_ir(g, {"ids": ids.numpy()})[0], m(ids).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_constant_names_are_state_dict_keys_and_scopes_are_module_paths():
    m = zoo.ds_cnn() if hasattr(zoo, "ds_cnn") else nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    m.eval()
    x = torch.randn(1, 1, 49, 10)
    g = nasc.from_torch(m, (x,))
    keys = set(m.state_dict())
    assert {c.name for c in g.constants if c.name in keys} >= {k for k in keys if k.endswith(".weight")}
    conv_scopes = [n.scope for n in g.nodes_by_op("Conv")]
    assert conv_scopes and all(s and s.split(".")[0] in dict(m.named_children()) for s in conv_scopes)


def test_minilm_has_six_identical_layer_scopes_through_torch_export():
    module, inputs = zoo.minilm(max_length=16)
    g = nasc.from_torch(module, inputs)
    per_layer: dict[str, Counter] = {}
    for n in g.nodes:
        parts = n.scope.split(".")
        if parts[:2] == ["encoder", "layer"] and len(parts) >= 3:
            per_layer.setdefault(".".join(parts[:3]), Counter())[n.op] += 1
    assert sorted(per_layer) == [f"encoder.layer.{i}" for i in range(6)]
    assert all(c == per_layer["encoder.layer.0"] for c in per_layer.values())
    assert "encoder.layer.3.attention.self.query.weight" in {c.name for c in g.constants}
    feed = {k: v.numpy() for k, v in inputs.items()}
    np.testing.assert_allclose(run_ir(g, feed)[0], module(**inputs).detach().numpy(), rtol=1e-4, atol=1e-5)


class _Det(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.det(x)


class _Bessel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(x)


class _TwoGaps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.det = _Det()
        self.bessel = _Bessel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.det(self.lin(x)) + self.bessel(x).sum()


def test_unconverted_ops_are_listed_together_with_module_paths():
    with pytest.raises(UnsupportedModelError) as e:
        nasc.from_torch(_TwoGaps(), (torch.randn(3, 3),))
    msg = str(e.value)
    assert "2 ATen op(s) have no nasc converter" in msg
    assert "aten._linalg_det.default (in det)" in msg and "aten.i0.default (in bessel)" in msg
    assert "via='onnx'" in msg


def test_via_onnx_loads_what_the_converters_lack():
    x = torch.randn(3, 3)
    g = nasc.from_torch(_Det(), (x,), via="onnx")
    assert g.summary()["ops"] == {"Det": 1}
    np.testing.assert_allclose(run_ir(g, {"x": x.numpy()})[0], torch.det(x).numpy(), rtol=1e-4, atol=1e-5)


def _nasc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasc.cli", *args], capture_output=True, text=True)


def test_pt2_through_the_cli(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.Flatten(), nn.Linear(512, 10))
    m.eval()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(1, 3, 8, 8),)), str(path))
    r = _nasc("inspect", str(path), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["inputs"][0]["shape"] == [1, 3, 8, 8] and info["ops"]["Conv"] == 1
    out = tmp_path / "build"
    r = _nasc("compile", str(path), "--target", "onnx", "-o", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["fidelity"]["reference"] == "torch on the original program"
    assert rep["fidelity"]["max_abs_err"] < 1e-4 and rep["fidelity"]["cosine"] > 0.99999


def test_dynamic_pt2_takes_input_shapes(tmp_path):
    class Scale(nn.Module):
        def forward(self, x: torch.Tensor, *, mask: torch.Tensor) -> torch.Tensor:
            return torch.relu(x) * mask

    b = torch.export.Dim("b")
    ep = torch.export.export(Scale(), (torch.randn(2, 3),), {"mask": torch.ones(2, 3)},
                             dynamic_shapes={"x": {0: b}, "mask": {0: b}})
    path = tmp_path / "dyn.pt2"
    torch.export.save(ep, str(path))
    assert nasc.load(path).inputs[0].shape == (2, 3)  # the example's size by default
    g = nasc.load(path, input_shapes={"x": (5, 3), "mask": (5, 3)})
    assert [v.shape for v in g.inputs] == [(5, 3), (5, 3)]
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(run_ir(g, {"x": x, "mask": np.full((5, 3), 2, np.float32)})[0], np.maximum(x, 0) * 2)


def test_a_non_pt2_file_is_a_clear_error(tmp_path):
    p = tmp_path / "junk.pt2"
    p.write_bytes(b"not a zip")
    r = _nasc("inspect", str(p))
    assert r.returncode == 2 and "not a readable torch.export program" in r.stderr
    assert "Traceback" not in r.stderr
