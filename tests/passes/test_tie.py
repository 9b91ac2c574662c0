"""tie-layers: shared constants, explicit correction paths, exactness at full rank on every target, fits, errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import nasc
from nasc.errors import UsageError
from nasc.examples import zoo
from nasc.ir.core import Graph, Node
from nasc.passes.tie_find import find_repeats

BLOCKS, DIM, TOKENS = 6, 32, 8
EXACT = 1e-4  # rank=full against ONNX Runtime on the original model
MATRICES = {"attn.qkv": (DIM, 3 * DIM), "attn.proj": (DIM, DIM), "mlp.fc1": (DIM, 2 * DIM), "mlp.fc2": (2 * DIM, DIM)}


def _encoder() -> Any:
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(zoo.vit_block(dim=DIM, heads=2, mlp_ratio=2) for _ in range(BLOCKS))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for b in self.blocks:
                x = b(x)
            return x

    torch.manual_seed(1)
    m = Encoder()
    with torch.no_grad():  # related but distinct layers, as after training from one init
        base = [p.clone() for p in m.blocks[0].parameters()]
        for b in m.blocks:
            for p, p0 in zip(b.parameters(), base, strict=True):
                p.copy_(p0 + 0.5 * torch.randn_like(p0) * p0.std())
    return m.eval()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, np.ndarray]]]:
    """A six-block pre-norm ViT encoder (ONNX, TorchScript exporter) and 24 calibration inputs."""
    import torch

    path = zoo.export_onnx(_encoder(), (torch.randn(1, TOKENS, DIM),), tmp_path_factory.mktemp("enc") / "enc.onnx",
                           dynamo=False, input_names=["x"])
    rng = np.random.default_rng(0)
    return path, [{"x": rng.standard_normal((1, TOKENS, DIM)).astype(np.float32)} for _ in range(24)]


def _tie(path: Path, calib: list[dict[str, np.ndarray]], options: str) -> Graph:
    return nasc.optimize(nasc.load(path), f"simplify,fuse,tie-layers{{{options}}}", calib=calib)


def _details(g: Graph) -> dict[str, Any]:
    return g.meta["passes"][-1]["details"]


def _tied(g: Graph, rel: str) -> list[Node]:
    return [n for n in g.nodes if n.op == "MatMul" and n.scope.endswith(rel) and not n.meta.get("tie.correction")]


# ---- the graph ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mapping, blocks_of", [("cycle", [0, 1, 0, 1, 0, 1]), ("sequence", [0, 0, 0, 1, 1, 1])])
def test_strict_sharing_reads_one_value_per_block(encoder: Any, mapping: str, blocks_of: list[int]) -> None:
    path, calib = encoder
    original = nasc.load(path)
    g = _tie(path, calib, f"blocks=2 mapping={mapping} init=0")
    d = _details(g)
    assert d["assignment"] == blocks_of
    for rel, shape in MATRICES.items():
        nodes = _tied(g, rel)
        assert len(nodes) == BLOCKS
        values = [n.input(1) for n in nodes]
        for b in (0, 1):
            mine = {id(v) for v, a in zip(values, blocks_of, strict=True) if a == b}
            assert len(mine) == 1  # one constant value per unique block
        assert values[0] is not values[blocks_of.index(1)] and values[0].shape == shape
        # init=0: each block starts from (and, at rank 0, is) its first layer's weights
        for b in (0, 1):
            first = blocks_of.index(b)
            w0 = next(n for n in _tied(nasc.optimize(original, "simplify,fuse"), rel)
                      if n.scope.startswith(f"blocks.{first}.")).input(1).data
            np.testing.assert_array_equal(values[first].data, w0)
    assert not any(n.meta.get("tie.correction") for n in g.nodes)  # rank 0: no correction paths
    before, after = d["encoder_params"]
    per_layer = sum(a * b for a, b in MATRICES.values())
    assert before - after == (BLOCKS - 2) * per_layer
    assert d["params_unique"] < d["params_total"]
    assert all(b["rank"] == 0 and b["energy_min"] == 0.0 for b in d["blocks"])  # (its init layer: nothing lost)
    assert d["error"]["max_abs_err"] > 1e-3  # lossy, and said so


def test_low_rank_corrections_are_explicit_paths(encoder: Any) -> None:
    path, calib = encoder
    g = _tie(path, calib, "blocks=1 rank=4")
    d = _details(g)
    for rel, (k, n_out) in MATRICES.items():
        for node in _tied(g, rel):
            (add, _), = node.outputs[0].uses  # x·W_shared + (x·A)·B
            assert add.op == "Add" and add.meta["tie.correction"]
            b = add.input(1).producer
            assert b is not None and b.op == "MatMul" and b.input(1).shape == (4, n_out)
            a = b.input(0).producer
            assert a is not None and a.op == "MatMul" and a.input(1).shape == (k, 4)
            assert a.input(0) is node.input(0)  # the correction reads the layer's own input
    (block,) = d["blocks"]
    assert block["layers"] == [f"blocks.{i}" for i in range(BLOCKS)] and block["rank"] == 4
    assert len(block["corrections"]) == BLOCKS * len(MATRICES)
    assert all(0.0 < c["energy"] < 1.0 for c in block["corrections"])
    strict = _details(_tie(path, calib, "blocks=1"))
    assert d["error"]["max_abs_err"] < strict["error"]["max_abs_err"]


def test_weights_option_ties_only_matching_matrices(encoder: Any) -> None:
    path, calib = encoder
    g = _tie(path, calib, "blocks=3 weights=mlp")
    assert len({id(n.input(1)) for n in _tied(g, "mlp.fc1")}) == 3
    assert len({id(n.input(1)) for n in _tied(g, "attn.qkv")}) == BLOCKS


def _qkv_biases(g: Graph) -> set[int]:
    """The constant each layer's qkv bias Add reads (behind the correction's Add when there is one)."""
    out = set()
    for n in g.nodes:
        if n.op == "Add" and n.scope.endswith("attn.qkv") and not n.meta.get("tie.correction"):
            out.add(id(next(v for v in n.inputs if v is not None and v.is_const)))
    return out


def test_share_norms_and_biases(encoder: Any) -> None:
    path, calib = encoder
    g = _tie(path, calib, "blocks=2 rank=4 share-norms=true share-biases=true")
    norms = [n for n in g.nodes if n.op == "LayerNormalization" and n.scope.endswith("norm1")]
    assert len({id(n.input(1)) for n in norms}) == 2
    assert len(_qkv_biases(g)) == 2
    kept = _tie(path, calib, "blocks=2")
    norms = [n for n in kept.nodes if n.op == "LayerNormalization" and n.scope.endswith("norm1")]
    assert len({id(n.input(1)) for n in norms}) == BLOCKS  # by default they stay per layer
    assert len(_qkv_biases(kept)) == BLOCKS


# ---- exact at full rank, and stored once, on every target ----------------------------------------------------


@pytest.mark.parametrize("target", ["onnx", "cpu", "mcu:cortex-m4"])
def test_full_rank_is_exact(encoder: Any, tmp_path: Path, target: str) -> None:
    path, calib = encoder
    art = nasc.compile(path, target, tmp_path / "out", passes="simplify,fuse,tie-layers{blocks=2 rank=full}",
                       calib=calib, measure_latency=False, verify_on="host" if target.startswith("mcu") else None)
    assert art.report["fidelity"]["max_abs_err"] <= EXACT, art.report["fidelity"]
    if target.startswith("mcu"):
        assert art.report["verify"]["host"]["max_abs_err"] <= EXACT


def test_shared_weights_are_stored_once(encoder: Any, tmp_path: Path) -> None:
    """rank 4, two unique blocks: the ONNX file and the C project hold each shared matrix once."""
    path, calib = encoder
    passes = "simplify,fuse,tie-layers{blocks=2 rank=4}"
    art = nasc.compile(path, "onnx", tmp_path / "onnx", passes=passes, calib=calib)
    m = onnx.load(tmp_path / "onnx" / "model.onnx")
    shapes = [tuple(t.dims) for t in m.graph.initializer]
    for k, n_out in MATRICES.values():
        assert shapes.count((k, n_out)) == 2  # one per unique block
    data = [onnx.numpy_helper.to_array(t).tobytes() for t in m.graph.initializer]
    big = [b for b in data if len(b) >= 256]
    assert len(set(big)) == len(big)  # no weight duplicates another

    mcu = nasc.compile(path, "mcu:cortex-m4", tmp_path / "mcu", passes=passes, calib=calib, verify_on="host")
    weights_c = (tmp_path / "mcu" / "weights.c").read_text()
    arrays = [int(n) for n in re.findall(r"static const \w+ nasc_w\d+\[(\d+)\]", weights_c)]
    for size in {k * n for k, n in MATRICES.values()}:  # two unique blocks of each matrix (fc1, fc2: same size)
        assert arrays.count(size) == 2 * sum(k * n == size for k, n in MATRICES.values())
    g = nasc.optimize(nasc.load(path), passes, calib=calib)
    unique = _details(g)["params_unique"]
    assert mcu.report["weights_bytes"] <= 4 * unique + 64 * len(arrays)
    nasc.compile(path, "onnx", tmp_path / "untied", passes="simplify,fuse")
    untied = [onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "untied" / "model.onnx").graph.initializer]
    fewer = sum(a.size for a in untied) - unique
    # the file's weights shrink by exactly the params the pass removed (the rest is the correction nodes' names)
    assert fewer > 0 and abs(sum(len(b) for b in data) - (sum(a.nbytes for a in untied) - 4 * fewer)) <= 64
    assert art.report["files"]["model.onnx"] < onnx.load(tmp_path / "untied" / "model.onnx").ByteSize()


def test_conv_blocks_of_a_resnet_stage(tmp_path: Path) -> None:
    """fashion_cnn's stage 1: two basic blocks of 3x3 convs; full rank exact, rank 4 as two convs (k×k to 4
    channels, then 1×1 back)."""
    path = Path(nasc.__file__).parent / "examples" / "fashion_cnn.onnx"
    data = np.load(Path(nasc.__file__).parent / "examples" / "fashion_test.npz")
    calib = [{"image": data["image"][i:i + 1]} for i in range(16)]
    exact = nasc.optimize(nasc.load(path), "tie-layers{blocks=1 rank=full}", calib=calib)
    assert _details(exact)["error"]["max_abs_err"] <= EXACT
    g = nasc.optimize(nasc.load(path), "tie-layers{blocks=1 rank=4}", calib=calib)
    convs = [n for n in g.nodes if n.op == "Conv" and n.meta.get("tie.correction")]
    assert len(convs) == 2 * 2 * 2  # 2 layers × 2 convs × (k×k, 1×1)
    assert sorted({tuple(n.input(1).shape[2:]) for n in convs}) == [(1, 1), (3, 3)]
    assert {n.outputs[0].shape[1] for n in convs if n.input(1).shape[2:] == (3, 3)} == {4}
    shared = [n for n in g.nodes if n.op == "Conv" and n.scope.startswith("layer1.") and not n.meta.get("tie.correction")]
    assert len({id(n.input(1)) for n in shared}) == 2  # conv1 and conv2, each shared by both blocks


# ---- fits ---------------------------------------------------------------------------------------------------


def test_activation_fit_beats_svd_on_minilm_sentences(tmp_path: Path) -> None:
    """MiniLM, attention projections tied to 2 blocks at rank 16 (3× fewer of their params): fitting the
    corrections on real sentences' activations keeps held-out sentence embeddings closer than SVD."""
    from nasc.backends.fidelity import run_graph
    from nasc.examples.datasets import docstring_sentences

    module, inputs = zoo.minilm(max_length=16, sentences=zoo.SENTENCES[:1])
    g0 = nasc.optimize(nasc.load(zoo.export_onnx(module, inputs, tmp_path / "m.onnx", dynamo=False)), "simplify,fuse")
    sentences = docstring_sentences()
    calib, held = zoo.minilm_feeds(sentences[:48], 16), zoo.minilm_feeds(sentences[-32:], 16)

    def embeddings(g: Graph) -> np.ndarray:
        outs = run_graph(g, held)
        return np.concatenate([zoo.sentence_embedding(o[0], f["attention_mask"]) for o, f in zip(outs, held)])

    ref = embeddings(g0)
    cos = {}
    for fit in ("svd", "activation"):
        g = nasc.optimize(g0, f"tie-layers{{blocks=2 rank=16 weights=attention fit={fit}}}", calib=calib)
        cos[fit] = float(np.mean(np.sum(embeddings(g) * ref, axis=1)))
        d = _details(g)
        assert d["encoder_params"][1] < d["encoder_params"][0]
    assert cos["activation"] > cos["svd"] + 0.02, cos


# ---- errors -------------------------------------------------------------------------------------------------


def test_blocks_must_divide_the_layers(encoder: Any) -> None:
    path, calib = encoder
    with pytest.raises(UsageError, match=r"blocks=4 does not divide the 6 copies of blocks \(blocks.0, .*\); use one of 1, 2, 3, 6"):
        _tie(path, calib, "blocks=4")
    with pytest.raises(UsageError, match=r"needs blocks=K.*can be 1, 2, 3, 6"):
        _tie(path, calib, "rank=4")
    with pytest.raises(UsageError, match=r"fit=activation.*needs calibration data"):
        nasc.optimize(nasc.load(path), "tie-layers{blocks=2 rank=4 fit=activation}")
    with pytest.raises(UsageError, match=r"option rank='half' is not valid"):
        _tie(path, calib, "blocks=2 rank=half")


def test_no_repeats_lists_the_closest_candidates(tmp_path: Path) -> None:
    """Blocks of differing widths are not repeats: the error names them and what differs."""
    import torch

    class Ragged(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(16, 16), torch.nn.Linear(16, 24),
                                               torch.nn.Linear(24, 8)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = torch.relu(layer(x))
            return x

    path = zoo.export_onnx(Ragged().eval(), (torch.randn(2, 16),), tmp_path / "r.onnx", dynamo=False)
    g = nasc.load(path)
    assert find_repeats(g).repeats == []
    with pytest.raises(UsageError, match=r"no repeated blocks.*Closest candidates: layers \(3 copies\): no two "
                                         r"copies match: .*Gemm.*\[24,16\]"):
        nasc.optimize(g, "tie-layers{blocks=1}")
