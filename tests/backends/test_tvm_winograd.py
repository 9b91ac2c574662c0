"""Winograd F(2x2, 3x3) for the CPU build's 3x3 convolutions: the algebra, then builds against torch (and
`nasc compile`'s own check against ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import nasc
from nasc.backends.tvm import winograd
from nasc.examples import zoo


def _direct(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Valid 3x3 correlation of an HWC map with HWIO weights, in float64."""
    h, wd = x.shape[0] - 2, x.shape[1] - 2
    out = np.zeros((h, wd, w.shape[3]))
    for i in range(3):
        for j in range(3):
            out += x[i : i + h, j : j + wd] @ w[i, j]
    return out


def test_transforms_compute_the_convolution():
    # one 4x4 input tile, through B^T d B, the transformed weights and A^T M A: the 2x2 outputs of the direct
    # convolution, to float64 rounding
    rng = np.random.default_rng(0)
    d, w = rng.standard_normal((4, 4, 5)), rng.standard_normal((3, 3, 5, 7))
    v = np.einsum("ai,ijc,bj->abc", winograd.B_T, d, winograd.B_T)
    u = winograd.transformed_weights(w).astype(np.float64).reshape(4, 4, 5, 7)
    m = np.einsum("abc,abck->abk", v, u)
    y = np.einsum("ia,abk,jb->ijk", winograd.A_T, m, winograd.A_T)
    np.testing.assert_allclose(y, _direct(d, w), rtol=1e-5, atol=1e-5)


def _net(torch, c_in: int, c_mid: int, pad: int):
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(c_in, c_mid, 3, padding=pad)
            self.b = torch.nn.Conv2d(c_mid, c_mid, 3, padding=1)
            self.c = torch.nn.Conv2d(c_mid, c_mid, 3, padding=1, bias=False)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return torch.relu(self.c(torch.relu(self.b(y))) + y)  # residual add in the epilogue

    torch.manual_seed(0)
    return Net().eval()


@pytest.mark.parametrize(("c_in", "c_mid", "size", "pad", "batch"), [
    (64, 96, 28, 1, 1),  # even map, channels a multiple of 16
    (70, 65, 27, 1, 1),  # odd map (a half-empty last tile), channels no vector divides
    (64, 64, 30, 0, 2),  # no padding on the first conv (28x28 out), two images
])
def test_builds_match_torch(tmp_path, c_in, c_mid, size, pad, batch):
    torch = pytest.importorskip("torch")
    net = _net(torch, c_in, c_mid, pad)
    path = tmp_path / "net.onnx"
    zoo.export_onnx(net, (torch.zeros(batch, c_in, size, size),), path, dynamo=False, input_names=["x"])
    art = nasc.compile(path, "cpu", tmp_path / "out", measure_latency=False)
    assert art.report["build"]["winograd_convs"] == 3
    x = np.random.default_rng(1).standard_normal((batch, c_in, size, size)).astype(np.float32)
    (got,) = art.run({"x": x})
    want = net(torch.from_numpy(x)).detach().numpy()
    # float32 rounding of the transforms: a few ulps of the outputs' scale
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize(("channels", "size", "stride"), [
    (64, 12, 1),  # 36 tiles
    (64, 14, 1),  # 49 tiles, but 64 channels on them: measured slower
    (48, 28, 1),  # too few channels
    (64, 28, 2),  # strided
])
def test_small_thin_and_strided_convolutions_stay_direct(tmp_path, channels, size, stride):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, padding=1, stride=stride)).eval()
    path = tmp_path / "net.onnx"
    zoo.export_onnx(net, (torch.zeros(1, channels, size, size),), path, dynamo=False, input_names=["x"])
    art = nasc.compile(path, "cpu", tmp_path / "out", measure_latency=False)
    assert "winograd_convs" not in art.report["build"]


def test_can_be_turned_off(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("NASC_WINOGRAD", "0")
    path = tmp_path / "net.onnx"
    zoo.export_onnx(_net(torch, 64, 64, 1), (torch.zeros(1, 64, 28, 28),), path, dynamo=False, input_names=["x"])
    art = nasc.compile(path, "cpu", tmp_path / "out", measure_latency=False)
    assert "winograd_convs" not in art.report["build"]
