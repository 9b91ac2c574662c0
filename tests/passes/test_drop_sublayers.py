"""drop-sublayers: which Adds are residual sublayers (golden IR), the drop itself, then MiniLM-L6 and the digits CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from golden import count

import nasc
from nasc.backends.fidelity import load_calibration, run_graph
from nasc.errors import UsageError
from nasc.examples.datasets import docstring_sentences
from nasc.ir import parse
from nasc.ir.text import structural_diff
from nasc.passes.drop_sublayers import find_sublayers, token_cosines
from nasc.passes.metrics import accuracy

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
DIGITS_NPZ = ROOT / "examples" / "digits_test.npz"
RNG = np.random.default_rng(0)

# two residual MLP sublayers on [1, 4, 8] tokens: layer.0's branch is scaled by 1e-3, so x + f ~ x (cosine ~1)
TWO_RESIDUALS = '''graph "g" opsets {"": 21}
input %x : f32[1,4,8]
const %w1 : f32[8,8] = "w1"
const %w2 : f32[8,16] = "w2"
const %w3 : f32[16,8] = "w3"
%h1 : f32[1,4,8] = MatMul(%x, %w1) @"layer.0.small.fc" #"fc"
%y1 : f32[1,4,8] = Add(%x, %h1) @"layer.0" #"add0"
%h2 : f32[1,4,16] = MatMul(%y1, %w2) @"layer.1.mlp.up" #"up"
%r2 : f32[1,4,16] = Relu(%h2) @"layer.1.mlp.act" #"act"
%f2 : f32[1,4,8] = MatMul(%r2, %w3) @"layer.1.mlp.down" #"down"
%y2 : f32[1,4,8] = Add(%f2, %y1) @"layer.1" #"add1"
output %y2
'''

AFTER_DROPPING_LAYER_0 = '''graph "g" opsets {"": 21}
input %x : f32[1,4,8]
const %w2 : f32[8,16] = "w2"
const %w3 : f32[16,8] = "w3"
%h2 : f32[1,4,16] = MatMul(%x, %w2) @"layer.1.mlp.up" #"up"
%r2 : f32[1,4,16] = Relu(%h2) @"layer.1.mlp.act" #"act"
%f2 : f32[1,4,8] = MatMul(%r2, %w3) @"layer.1.mlp.down" #"down"
%y2 : f32[1,4,8] = Add(%f2, %x) @"layer.1" #"add1"
output %y2
'''


def two_residual_consts() -> dict[str, np.ndarray]:
    return {"w1": (1e-3 * RNG.standard_normal((8, 8))).astype(np.float32),
            "w2": RNG.standard_normal((8, 16)).astype(np.float32),
            "w3": RNG.standard_normal((16, 8)).astype(np.float32)}


def random_feeds(n: int, shape: tuple[int, ...], seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def test_the_sublayer_closest_to_identity_is_dropped_first() -> None:
    consts = two_residual_consts()
    g = parse(TWO_RESIDUALS, consts)
    feeds = random_feeds(8, (1, 4, 8))
    out = nasc.optimize(g, "drop-sublayers{n=1}", feeds)
    want = parse(AFTER_DROPPING_LAYER_0, consts)
    diff = structural_diff(want, out)
    assert diff is None, f"{diff}\n--- got ---\n{out}"
    assert [n.name for n in out.nodes] == ["up", "act", "down", "add1"]
    section = out.meta["passes"][-1]
    rows = {r["scope"]: r for r in section["details"]["sublayers"]}
    assert set(rows) == {"layer.0.small.fc", "layer.1.mlp"}
    assert rows["layer.0.small.fc"]["dropped"] and not rows["layer.1.mlp"]["dropped"]
    assert rows["layer.0.small.fc"]["score"] > 0.999 > rows["layer.1.mlp"]["score"]
    assert rows["layer.0.small.fc"]["kind"] == rows["layer.1.mlp"]["kind"] == "mlp"
    assert rows["layer.0.small.fc"]["params"] == 64 and rows["layer.1.mlp"]["params"] == 256
    assert section["rewrites"] == {"drop-mlp": 1}
    assert section["details"]["macs"][1] < section["details"]["macs"][0]
    assert section["notes"][0] == (f"dropped mlp 'layer.0.small.fc' (score {rows['layer.0.small.fc']['score']:.4f}, "
                                   "288 MACs, 64 params)")  # 4x8x8 MatMul + the 32-element Add
    assert any(n.startswith("error vs before on 8 calibration inputs") for n in section["notes"])
    # dropping a sublayer is zeroing its branch: the original with w1 = 0 gives the same outputs (ONNX Runtime)
    zeroed = parse(TWO_RESIDUALS, {**consts, "w1": np.zeros((8, 8), np.float32)})
    for (ref,), (got,) in zip(run_graph(zeroed, feeds), run_graph(out, feeds), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_without_n_or_macs_the_pass_only_reports() -> None:
    g = parse(TWO_RESIDUALS, two_residual_consts())
    out = nasc.optimize(g, "drop-sublayers", random_feeds(4, (1, 4, 8)))
    section = out.meta["passes"][-1]
    assert not section["changed"] and len(out.nodes) == len(g.nodes)
    assert [r["dropped"] for r in section["details"]["sublayers"]] == [False, False]


def test_keep_protects_a_sublayer_and_sequential_drops_chain() -> None:
    consts = two_residual_consts()
    g = parse(TWO_RESIDUALS, consts)
    out = nasc.optimize(g, "drop-sublayers{n=1 keep=^layer\\.0}", random_feeds(4, (1, 4, 8)))
    assert [n.name for n in out.nodes] == ["fc", "add0"]
    both = nasc.optimize(g, "drop-sublayers{n=2}", random_feeds(4, (1, 4, 8)))
    assert both.nodes == [] and both.outputs == both.inputs  # y2 -> y1 -> x: the model is the identity


# a GPT-2-style pre-LN block: x + attn(ln_1(x)), then + mlp(ln_2(.)); the norms are inside the branches
PRE_LN_BLOCK = '''graph "g" opsets {"": 21}
input %x : f32[1,4,8]
const %g1 : f32[8] = "g1"
const %b1 : f32[8] = "b1"
const %g2 : f32[8] = "g2"
const %b2 : f32[8] = "b2"
const %wq : f32[8,8] = "wq"
const %wk : f32[8,8] = "wk"
const %wv : f32[8,8] = "wv"
const %wo : f32[8,8] = "wo"
const %wu : f32[8,16] = "wu"
const %wd : f32[16,8] = "wd"
%n1 : f32[1,4,8] = LayerNormalization(%x, %g1, %b1) {axis=-1} @"h.0.ln_1" #"ln_1"
%q : f32[1,4,8] = MatMul(%n1, %wq) @"h.0.attn.q" #"q"
%k : f32[1,4,8] = MatMul(%n1, %wk) @"h.0.attn.k" #"k"
%v : f32[1,4,8] = MatMul(%n1, %wv) @"h.0.attn.v" #"v"
%kt : f32[1,8,4] = Transpose(%k) {perm=[0, 2, 1]} @"h.0.attn" #"kt"
%s : f32[1,4,4] = MatMul(%q, %kt) @"h.0.attn" #"scores"
%p : f32[1,4,4] = Softmax(%s) {axis=-1} @"h.0.attn" #"softmax"
%a : f32[1,4,8] = MatMul(%p, %v) @"h.0.attn" #"pv"
%o : f32[1,4,8] = MatMul(%a, %wo) @"h.0.attn.c_proj" #"o"
%y1 : f32[1,4,8] = Add(%x, %o) @"h.0" #"add_attn"
%n2 : f32[1,4,8] = LayerNormalization(%y1, %g2, %b2) {axis=-1} @"h.0.ln_2" #"ln_2"
%u : f32[1,4,16] = MatMul(%n2, %wu) @"h.0.mlp.c_fc" #"up"
%gl : f32[1,4,16] = Relu(%u) @"h.0.mlp.act" #"act"
%d : f32[1,4,8] = MatMul(%gl, %wd) @"h.0.mlp.c_proj" #"down"
%y2 : f32[1,4,8] = Add(%y1, %d) @"h.0" #"add_mlp"
output %y2
'''


def test_pre_ln_attention_and_mlp_are_found_and_named_without_their_norms() -> None:
    g = parse(PRE_LN_BLOCK)
    found = find_sublayers(g)
    assert [(s.scope, s.kind, s.add.name, len(s.branch)) for s in found] == [
        ("h.0.attn", "attention", "add_attn", 9), ("h.0.mlp", "mlp", "add_mlp", 4)]
    out = nasc.optimize(g, "drop-sublayers{n=1 kind=attention}", random_feeds(4, (1, 4, 8)))
    assert [n.name for n in out.nodes] == ["ln_2", "up", "act", "down", "add_mlp"]
    assert out.find_node("ln_2").input(0) is out.inputs[0]


NOT_CANDIDATES = '''graph "g" opsets {"": 21}
input %x : f32[1,4,8]
const %wp : f32[8,8] = "wp"
const %w1 : f32[8,8] = "w1"
const %w2 : f32[8,8] = "w2"
const %w3 : f32[8,8] = "w3"
const %w4 : f32[8,8] = "w4"
const %c : f32[8] = "c"
%p : f32[1,4,8] = MatMul(%x, %wp) @"proj" #"proj"
%h : f32[1,4,8] = MatMul(%x, %w1) @"block0.fc1" #"fc1"
%r : f32[1,4,8] = Relu(%h) @"block0.act" #"act"
%f : f32[1,4,8] = MatMul(%r, %w2) @"block0.fc2" #"fc2"
%y : f32[1,4,8] = Add(%p, %f) @"block0" #"add_proj"
%h3 : f32[1,4,8] = MatMul(%y, %w3) @"block1.fc1" #"fc3"
%f3 : f32[1,4,8] = MatMul(%h3, %w4) @"block1.fc2" #"fc4"
%y3 : f32[1,4,8] = Add(%y, %f3) @"block1" #"add_escape"
%cube : f32[1,4,8] = Mul(%y3, %y3) #"cube"
%y4 : f32[1,4,8] = Add(%y3, %cube) #"add_no_layer"
%b : f32[1,4,8] = Add(%y4, %c) #"add_bias"
%s : f32[1,4,8] = Relu(%h3) #"escape"
output %b, %s
'''


def test_projection_shortcuts_escaping_values_and_layerless_branches_are_not_sublayers() -> None:
    g = parse(NOT_CANDIDATES)
    assert find_sublayers(g) == []
    # the control: once fc3's result no longer escapes, block1 is a residual sublayer
    s = g.find_node("escape")
    g.outputs = [g.outputs[0]]
    g.erase(s)
    assert [(x.scope, x.add.name, x.kind) for x in find_sublayers(g)] == [("block1", "add_escape", "mlp")]
    with pytest.raises(UsageError, match=r"option n=2 asks for more sublayers than there are: 1 sublayer\(s\)"):
        nasc.optimize(g, "drop-sublayers{n=2}", random_feeds(2, (1, 4, 8)))


def test_token_cosines_use_the_channel_axis_of_nchw_and_the_last_axis_otherwise() -> None:
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = x.copy()
    y[:, :, 0, 0] *= -1  # the token at position (0, 0) of each image turns around
    cos = token_cosines(x, y)
    assert cos.shape == (2 * 4 * 5,) and np.isclose(cos.min(), -1) and np.sum(np.isclose(cos, -1)) == 2
    t = RNG.standard_normal((1, 6, 8))
    assert np.allclose(token_cosines(t, 3 * t), 1) and token_cosines(t, -t).shape == (6,)
    z = np.zeros((1, 2, 8))
    assert token_cosines(z, z).tolist() == [1.0, 1.0] and token_cosines(z, z + 1).tolist() == [0.0, 0.0]


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pipeline", "message"), [
    ("drop-sublayers{macs=0}", r"option macs=0.0 is not valid; expected a fraction in \(0, 1\]"),
    ("drop-sublayers{macs=1.5}", r"option macs=1.5 is not valid"),
    ("drop-sublayers{n=-1}", r"option n=-1 is not valid"),
    ("drop-sublayers{n=1 macs=0.5}", r"option macs=0.5 is not valid; expected none when n is given"),
    ("drop-sublayers{kind=ffn}", r"option kind='ffn' is not valid; expected any, attention, mlp or block"),
])
def test_bad_options_are_refused_when_the_pipeline_is_read(pipeline: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        nasc.optimize(parse(TWO_RESIDUALS), pipeline, random_feeds(1, (1, 4, 8)))


def test_errors_that_need_the_graph_name_the_option(digits: tuple[nasc.Graph, list]) -> None:
    g, feeds = digits
    with pytest.raises(UsageError, match=r"drop-sublayers needs calibration data \(--calib"):
        nasc.optimize(g, "drop-sublayers{n=1}")
    with pytest.raises(UsageError, match=r"option n=2 asks for more sublayers than there are: 1 sublayer\(s\) found "
                                         r"\(1 residual-block in all\); give n <= 1"):
        nasc.optimize(g, "drop-sublayers{n=2}", feeds)
    with pytest.raises(UsageError, match=r"option n=1 asks .*: 0 attention sublayer\(s\) found"):
        nasc.optimize(g, "drop-sublayers{n=1 kind=attention}", feeds)
    with pytest.raises(UsageError, match=r"option keep='encoder.\*' matches no sublayer's scope; the sublayers' "
                                         r"scopes: res"):
        nasc.optimize(g, "drop-sublayers{n=1 keep=encoder.*}", feeds)
    with pytest.raises(UsageError, match=r"option macs=0.1 is out of reach: dropping all 1 sublayer\(s\) keeps 36.3% "
                                         r"of the graph's MACs \(85312 of 234816\); give macs >= 0.364"):
        nasc.optimize(g, "drop-sublayers{macs=0.1}", feeds)


# ---- the digits CNN: one residual block ------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[nasc.Graph, list]:
    g = nasc.load(DIGITS)
    return g, load_calibration(str(DIGITS_NPZ), g)


def test_digits_residual_block_is_found_and_dropped_under_a_macs_budget(digits: tuple[nasc.Graph, list]) -> None:
    g, feeds = digits
    labels = np.load(DIGITS_NPZ)["label"]
    out = nasc.optimize(g, "simplify,fuse,drop-sublayers{macs=0.9}", feeds, labels=labels)
    section = out.meta["passes"][-1]
    (row,) = section["details"]["sublayers"]
    assert (row["scope"], row["kind"], row["dropped"], row["params"]) == ("res", "residual-block", True, 2320)
    assert section["rewrites"] == {"drop-block": 1}
    assert count(out, "Add") == 0 and [n.scope for n in out.nodes_by_op("Conv")] == ["stem.conv", "down.conv"]
    macs_before, macs_after = section["details"]["macs"]
    assert macs_after <= 0.9 * macs_before
    # the report's accuracy (on the last 64 calibration inputs) is the one ONNX Runtime gives
    err = section["details"]["error"]
    first = section["details"]["error_feeds_from"]
    assert first == len(feeds) - 64 and section["details"]["error_feeds"] == 64
    assert err["accuracy_after"] == accuracy([o[0] for o in run_graph(out, feeds[first:])], labels[first:])
    acc = {name: accuracy([o[0] for o in run_graph(m, feeds)], labels) for name, m in (("before", g), ("after", out))}
    print(f"digits CNN, residual block 'res' (score {row['score']:.4f}) dropped: accuracy on {len(feeds)} test "
          f"images {acc['before']:.2%} -> {acc['after']:.2%}, MACs {macs_before} -> {macs_after}")
    assert acc["before"] > 0.95 and acc["after"] < acc["before"]  # this small CNN needs its only block


def test_digits_compile_runs_the_pass_before_quantize_and_reports_it(tmp_path: Path) -> None:
    art = nasc.compile(DIGITS, "onnx", tmp_path / "out", passes="simplify,fuse,drop-sublayers{n=1},quantize",
                       calib=str(DIGITS_NPZ))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (section,) = [s for s in report["passes"] if s["pass"] == "drop-sublayers{n=1}"]
    assert section["details"]["sublayers"][0]["scope"] == "res" and section["details"]["sublayers"][0]["dropped"]
    assert section["rewrites"] == {"drop-block": 1} and "error" in section["details"]
    assert report["pipeline"] == "simplify,fuse,drop-sublayers{n=1},quantize"
    assert (tmp_path / "out" / "model.onnx").is_file() and art.report["fidelity"] is not None


# ---- all-MiniLM-L6-v2: 6 attention + 6 MLP sublayers (post-LN BERT) --------------------------------



@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[nasc.Graph, list, list]:
    from nasc.examples import zoo

    module, inputs = zoo.minilm(max_length=16, sentences=zoo.SENTENCES[:1])
    path = zoo.export_onnx(module, inputs, tmp_path_factory.mktemp("minilm") / "minilm.onnx", dynamo=False,
                           output_names=["last_hidden_state"])
    sentences = docstring_sentences()
    assert len(sentences) > 500
    return nasc.load(path), zoo.minilm_feeds(sentences[:16], 16), zoo.minilm_feeds(sentences[16:32], 16)


def embedding_cosines(ref: nasc.Graph, got: nasc.Graph, feeds: list) -> list[float]:
    from nasc.examples import zoo

    return [float(zoo.sentence_embedding(r[0], f["attention_mask"])[0] @ zoo.sentence_embedding(o[0], f["attention_mask"])[0])
            for f, r, o in zip(feeds, run_graph(ref, feeds), run_graph(got, feeds), strict=True)]


def attention_ops(g: nasc.Graph) -> int:
    return count(g, "nasc.Attention") + count(g, "Softmax")


def test_minilm_two_most_redundant_attention_sublayers_go_at_a_small_cost(minilm) -> None:
    g, calib, held_out = minilm
    out = nasc.optimize(g, "simplify,fuse,drop-sublayers{n=2 kind=attention}", calib)
    section = out.meta["passes"][-1]
    rows = section["details"]["sublayers"]
    assert [r["kind"] for r in rows] == ["attention", "mlp"] * 6
    assert [r["scope"] for r in rows[:4]] == ["encoder.layer.0.attention", "encoder.layer.0",
                                              "encoder.layer.1.attention", "encoder.layer.1"]
    print("\n".join(f"{r['scope']:28s} {r['kind']:9s} score {r['score']:.4f} MACs {r['macs']:>9d} params "
                    f"{r['params']:>8d}{'  dropped' if r['dropped'] else ''}" for r in rows))
    attention = sorted((r for r in rows if r["kind"] == "attention"), key=lambda r: -r["score"])
    assert [r["dropped"] for r in attention] == [True, True, False, False, False, False]
    assert section["rewrites"] == {"drop-attention": 2}
    assert attention_ops(g) == 6 and attention_ops(out) == 4
    assert section["details"]["macs"][1] < section["details"]["macs"][0]
    assert section["details"]["params"][0] - section["details"]["params"][1] == 2 * attention[0]["params"]
    cos = embedding_cosines(g, out, held_out)
    print(f"MiniLM-L6 without 2 of 6 attention sublayers: sentence-embedding cosine on 16 held-out sentences "
          f"mean {np.mean(cos):.4f}, min {min(cos):.4f}; MACs {section['details']['macs']}")
    # measured: mean 0.8876, min 0.7887 on these 16 (mean 0.912 on 256 held-out sentences, 16-sentence means
    # from 0.888 to 0.930); dropping the two lowest-scoring ones instead: mean 0.705
    assert np.mean(cos) > 0.85 and min(cos) > 0.7
    # the ranking matters: dropping the two lowest-scoring attention sublayers instead costs more
    assert {r["scope"] for r in attention[-2:]} == {"encoder.layer.4.attention", "encoder.layer.5.attention"}
    worst = nasc.optimize(g, "simplify,fuse,drop-sublayers{n=2 kind=attention keep=encoder.layer.[0-3].attention}",
                          calib)
    dropped = [r["scope"] for r in worst.meta["passes"][-1]["details"]["sublayers"] if r["dropped"]]
    assert dropped == ["encoder.layer.4.attention", "encoder.layer.5.attention"]
    cos_worst = embedding_cosines(g, worst, held_out)
    print(f"dropping layers 4 and 5's attention instead: mean {np.mean(cos_worst):.4f}")
    assert np.mean(cos_worst) < np.mean(cos)
