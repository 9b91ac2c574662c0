"""nasc.to_torch: the IR as a torch.fx.GraphModule that computes it (checked against ONNX Runtime), with
constants as named parameters, shared constants as one parameter, and every missing lowering named at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import nasc
from nasc.backends.fidelity import run_graph
from nasc.backends.pytorch.lower import to_torch
from nasc.errors import UnsupportedModelError
from nasc.examples import zoo

EXAMPLES = Path(nasc.__file__).parent / "examples"
TOL = 1e-5  # max abs difference to ONNX Runtime on the same graph (float32 summation order)


def _max_err(g: nasc.Graph, feeds: list[dict[str, np.ndarray]]) -> float:
    m = nasc.to_torch(g)
    worst = 0.0
    for f, ref in zip(feeds, run_graph(g, feeds), strict=True):
        with torch.no_grad():
            got = m(*[torch.from_numpy(f[v.name]) for v in g.inputs])
        worst = max(worst, *(float(np.max(np.abs(r - o.numpy()))) for r, o in zip(ref, got, strict=True)))
    return worst


@pytest.mark.parametrize("model", ["digits_cnn", "fashion_cnn", "fashion_vit"])
@pytest.mark.parametrize("passes", ["", "simplify,fuse"])
def test_example_models_match_onnxruntime(model: str, passes: str) -> None:
    data = np.load(EXAMPLES / ("digits_test.npz" if model == "digits_cnn" else "fashion_test.npz"))
    feeds = [{"image": data["image"][i:i + 1]} for i in range(4)]
    g = nasc.load(EXAMPLES / f"{model}.onnx")
    assert _max_err(nasc.optimize(g, passes) if passes else g, feeds) <= TOL


@pytest.mark.parametrize("dynamo", [False, True])
def test_minilm_matches_onnxruntime(tmp_path: Path, dynamo: bool) -> None:
    module, inputs = zoo.minilm(max_length=16, sentences=zoo.SENTENCES[:1])
    g = nasc.load(zoo.export_onnx(module, inputs, tmp_path / "m.onnx", dynamo=dynamo))
    feeds = zoo.minilm_feeds(zoo.SENTENCES[:2], 16)  # the second sentence is padded: the mask path runs
    assert _max_err(g, feeds) <= 1e-4
    assert _max_err(nasc.optimize(g, "simplify,fuse"), feeds) <= 1e-4


def test_constants_are_named_parameters_and_a_shared_one_stays_one() -> None:
    """tie-layers makes six ViT blocks read two shared weights per matrix: the module holds each once, its
    gradient collects every reader's, and an optimizer step changes what all of them read."""
    data = np.load(EXAMPLES / "fashion_test.npz")
    calib = [{"image": data["image"][i:i + 1]} for i in range(8)]
    g = nasc.optimize(nasc.load(EXAMPLES / "fashion_vit.onnx"), "simplify,fuse,tie-layers{blocks=2 rank=4}",
                      calib=calib)
    m = nasc.to_torch(g)
    floats = [c for c in g.constants if c.dtype == "f32"]
    params = dict(m.named_parameters())
    assert len(params) == len(floats)
    shared = next(c for c in floats if c.name.startswith("blocks.tied0.attn.qkv"))
    name = next(n for n in params if n.startswith("blocks_tied0_attn_qkv"))
    assert sum(1 for n in g.nodes for v in n.inputs if v is shared) == 3  # layers 0, 2, 4
    np.testing.assert_array_equal(params[name].detach().numpy(), shared.data)
    out = m(torch.from_numpy(calib[0]["image"]))[0]
    out.square().sum().backward()
    assert params[name].grad is not None and float(params[name].grad.abs().sum()) > 0
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    opt.step()
    assert len(dict(m.named_parameters())) == len(floats)  # still one tensor per shared weight


def test_missing_lowerings_are_listed_with_their_nodes() -> None:
    from nasc.ir.core import Graph
    from nasc.ir.types import TensorType

    gr = Graph()
    x = gr.add_input("x", TensorType("f32", (4,)))
    t = gr.make_node("LpPool", [x], [TensorType("f32", (2,))], {"kernel_shape": [2], "strides": [2]}, name="pool0")
    e = gr.make_node("NonZero", [x], [TensorType("i64", (1, 4))], name="nz0")
    r = gr.make_node("Relu", [t.outputs[0]], [TensorType("f32", (2,))], name="relu0")
    gr.outputs += [r.outputs[0], e.outputs[0]]
    with pytest.raises(UnsupportedModelError, match=r"2 op\(s\) have no torch lowering: LpPool \(1: pool0\); "
                                                    r"NonZero \(1: nz0\)"):
        nasc.to_torch(gr)


ZOO = {  # the zoo's CNNs and blocks, at small input sizes (weights random where the zoo ships none)
    "mobilenet_v2": (lambda: zoo.mobilenet_v2(pretrained=True), (1, 3, 96, 96)),
    "resnet18": (lambda: zoo.resnet18(num_classes=10), (1, 3, 64, 64)),
    "efficientnet_lite_se": (lambda: zoo.efficientnet_lite(num_classes=10, se=True), (1, 3, 64, 64)),
    "ds_cnn": (lambda: zoo.ds_cnn(), (1, 1, 49, 10)),
    "vit_block": (lambda: zoo.vit_block(dim=64, heads=4), (1, 17, 64)),
}


@pytest.mark.parametrize("model", sorted(ZOO))
def test_zoo_models_match_onnxruntime(tmp_path: Path, model: str) -> None:
    make, shape = ZOO[model]
    torch.manual_seed(0)
    module = make().eval()
    g = nasc.load(zoo.export_onnx(module, (torch.randn(*shape),), tmp_path / "m.onnx", dynamo=False,
                                  input_names=["x"]))
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    assert _max_err(g, feeds) <= 1e-4
    assert _max_err(nasc.optimize(g, "simplify,fuse"), feeds) <= 1e-4


def test_training_lowering_of_a_quantized_graph_is_exact() -> None:
    """train=True (fake quantization with LSQ gradients, float shadows of integer weights) computes the same
    numbers as the exact lowering, int4 included."""
    data = np.load(EXAMPLES / "digits_test.npz")
    feeds = [{"image": data["image"][i:i + 1]} for i in range(16)]
    for bits in (8, 4):
        g = nasc.optimize(nasc.load(EXAMPLES / "digits_cnn.onnx"), f"simplify,fuse,quantize{{bits={bits}}}",
                          calib=feeds)
        exact, train = nasc.to_torch(g), to_torch(g, train=True)
        assert train.nasc_shadows and not exact.nasc_shadows
        x = torch.from_numpy(feeds[0]["image"])
        np.testing.assert_array_equal(train(x)[0].detach().numpy(), exact(x)[0].detach().numpy())
        ref = run_graph(g, feeds[:1])[0][0]
        np.testing.assert_allclose(exact(x)[0].detach().numpy(), ref, rtol=0, atol=1e-5)
