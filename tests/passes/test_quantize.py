"""The quant-policy and quantize passes end to end: accuracy, QDQ export under ONNX Runtime, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h

import nasc
from nasc.backends import fidelity
from nasc.errors import UsageError
from nasc.ir import parse
from nasc.passes import quant_math as qm

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
DIGITS_TEST = ROOT / "examples" / "digits_test.npz"


@pytest.fixture(scope="module")
def digits() -> tuple[nasc.ir.Graph, list[dict[str, np.ndarray]], np.ndarray]:
    g = nasc.load(DIGITS)
    feeds = fidelity.load_calibration(str(DIGITS_TEST), g)
    return g, feeds, np.load(DIGITS_TEST)["label"]


def _accuracy(graph: nasc.ir.Graph, feeds: list[dict[str, np.ndarray]], labels: np.ndarray) -> float:
    outs = fidelity.run_graph(graph, feeds)
    return float(np.mean([int(np.argmax(o[0])) == int(y) for o, y in zip(outs, labels)]))


def test_int8_keeps_the_example_cnn_accuracy(digits) -> None:
    g, feeds, labels = digits
    calib = feeds[:120]  # calibrate on a third of the test digits, score on all 360
    q = nasc.optimize(g, "simplify,fuse,quantize", calib)
    float_acc, int8_acc = _accuracy(g, feeds, labels), _accuracy(q, feeds, labels)
    assert float_acc == pytest.approx(0.9889, abs=1e-4)
    assert abs(int8_acc - float_acc) <= 0.01
    info = q.meta["quantization"]
    assert info["weights_bytes_after"] < info["weights_bytes_before"] / 3
    ops = q.summary()["ops"]
    # activations: the input, each layer's output after its ReLU, the Add, the pool, the flattened features,
    # the logits; plus a DequantizeLinear per weight and per bias
    assert ops["QuantizeLinear"] == 8 and ops["DequantizeLinear"] == 8 + 4 + 4
    assert q.outputs[0].name == "logits" and q.outputs[0].producer.op == "DequantizeLinear"
    assert {c.dtype for c in q.constants if c.name.endswith("_quantized")} == {"i8", "i32"}
    assert not [c for c in q.constants if c.dtype == "f32" and len(c.shape) >= 2]  # no float weights left


def test_qdq_export_runs_in_onnxruntime_and_matches_nasc(digits, tmp_path: Path) -> None:
    g, feeds, _ = digits
    art = nasc.compile(DIGITS, "onnx", tmp_path / "out", passes="simplify,fuse,quantize{bits=4}",
                       calib=str(DIGITS_TEST))
    model = onnx.load(tmp_path / "out" / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert any(t.data_type == TensorProto.INT4 for t in model.graph.initializer)
    assert model.opset_import[0].version >= 21
    sess = fidelity.ort_session(str(tmp_path / "out" / "model.onnx"))
    q = nasc.optimize(g, "simplify,fuse,quantize{bits=4}", feeds)
    ours = fidelity.run_graph(q, feeds[:20])
    for f, o in zip(feeds[:20], ours):
        np.testing.assert_allclose(fidelity.run_ort(sess, f)[0], o[0], rtol=1e-5, atol=1e-5)
    rep = art.report
    assert rep["param_bytes"]["after"] < rep["param_bytes"]["before"] / 4
    assert rep["files"]["model.onnx"] < rep["model_file_bytes"] / 2
    assert rep["accuracy"]["samples"] == 360 and rep["accuracy"]["nasc"] > 0.97


def test_qdq_semantics_against_numpy() -> None:
    """One quantized Gemm under ONNX Runtime equals the numpy model of what quantize promises: uint8
    activations, per-channel int8 weights, int32 bias at s_x * s_w (bias correction off)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 5)).astype(np.float32)  # Gemm transB=1: [N, K]
    b = rng.normal(size=6).astype(np.float32)
    graph = h.make_graph([h.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])],
                         [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    feeds = [{"x": rng.normal(size=(4, 5)).astype(np.float32)} for _ in range(8)]
    q = nasc.optimize(nasc.load(m), "quantize{bias-correction=false outputs=false}", feeds)
    x = feeds[0]["x"]
    lo, hi = qm.act_range([f["x"] for f in feeds], "minmax")
    s_x, zp = qm.act_qparams(lo, hi)
    wq, s_w = qm.quantize_weight(w, 8, 0)
    bq = np.round(b / (np.float32(s_x) * s_w)).astype(np.int32)
    expect = qm.fake_quant_act(x, s_x, zp) @ qm.dequantize_weight(wq, s_w, 0).T + bq * (np.float32(s_x) * s_w)
    np.testing.assert_allclose(fidelity.run_graph(q, feeds[:1])[0][0], expect, rtol=1e-5, atol=1e-5)


def test_policy_meets_the_flash_budget_and_prints_in_the_ir(digits) -> None:
    g, feeds, labels = digits
    budget = 6000
    q = nasc.optimize(g, f"simplify,fuse,quant-policy{{bits=8,4 flash={budget}}}", feeds[:120])
    policy = q.meta["quant_policy"]
    assert set(policy) == {"/stem/conv/Conv", "/res/conv/Conv", "/down/conv/Conv", "/head/Gemm"}
    assert {e["bits"] for e in policy.values()} == {8, 4}  # the budget forces a mix
    for e in policy.values():  # the choice took the less sensitive width wherever it kept int8
        assert e["sensitivity"] == e["candidates"][str(e["bits"])]
    text = str(q)
    assert 'quant-policy "/res/conv/Conv" {"bits": ' in text
    assert parse(text).meta["quant_policy"] == policy
    full = nasc.optimize(q, "quantize", feeds[:120])
    dts = {c.dtype for c in full.constants if c.name.endswith("_quantized") and c.dtype in ("i4", "i8")}
    assert dts == {"i4", "i8"}
    assert budget * 0.9 < full.summary()["param_bytes"] <= budget  # the policy's byte count is what quantize stores
    assert abs(_accuracy(full, feeds, labels) - 0.9889) <= 0.02


def test_flash_share_is_a_budget_relative_to_the_weights_the_pass_sees(digits) -> None:
    g, feeds, _ = digits
    weights = sum(c.tensor_type.nbytes for c in nasc.optimize(g, "simplify,fuse").constants if len(c.shape) >= 2)
    q = nasc.optimize(g, "simplify,fuse,quant-policy{bits=8,4 flash-share=0.2},quantize", feeds[:120])
    assert {e["bits"] for e in q.meta["quant_policy"].values()} == {8, 4}
    quantized = sum(c.tensor_type.nbytes for c in q.constants if c.dtype in ("i4", "i8") and len(c.shape) >= 2)
    assert 0.15 * weights < quantized <= 0.2 * weights
    # after pruning, the same share is of the pruned weights: still reachable, and smaller in bytes
    p = nasc.optimize(g, "simplify,fuse,prune{macs=0.7},quant-policy{bits=8,4 flash-share=0.2},quantize", feeds[:120])
    assert p.summary()["param_bytes"] < q.summary()["param_bytes"]
    with pytest.raises(UsageError, match=r"flash-share=0.05 \(\d+ bytes: 0.05 of the \d+ float bytes of the weights it "
                                          r"chooses widths for, plus \d+ for everything else\) is infeasible: the "
                                          r"smallest reachable with bits=8,4 is \d+ bytes \(flash-share=0.1\d\d\)"):
        nasc.optimize(g, "simplify,fuse,quant-policy{flash-share=0.05}", feeds[:20])
    with pytest.raises(UsageError, match=r"option flash-share=1.5 is not valid"):
        nasc.optimize(g, "quant-policy{flash-share=1.5}", feeds[:20])
    with pytest.raises(UsageError, match=r"option flash-share=0.2 is not valid; expected none when flash= is given"):
        nasc.optimize(g, "quant-policy{flash=6KB flash-share=0.2}", feeds[:20])


def test_keep_float_leaves_matching_layers_alone(digits) -> None:
    g, feeds, _ = digits
    q = nasc.optimize(g, "quantize{keep-float=head}", feeds[:50])
    gemm = next(n for n in q.nodes if n.op == "Gemm")
    assert gemm.input(1).is_const and gemm.input(1).dtype == "f32"
    assert q.summary()["ops"]["QuantizeLinear"] == 6  # input, 3 conv outputs, the Add, the pool: no Gemm


def test_errors(digits, tmp_path: Path) -> None:
    g, feeds, _ = digits
    with pytest.raises(UsageError, match=r"flash=3000 bytes is infeasible: the smallest reachable with bits=8,4 is \d+"):
        nasc.optimize(g, "quant-policy{flash=3KB}", feeds[:20])
    with pytest.raises(UsageError, match="flash"):
        nasc.optimize(g, "quant-policy{flash=12XB}", feeds[:20])
    with pytest.raises(UsageError, match=r"needs calibration data.*--allow-random-calib"):
        nasc.optimize(g, "quantize", None)
    with pytest.raises(UsageError, match="metric='l1'"):
        nasc.optimize(g, "quant-policy{metric=l1}", feeds[:20])
    with pytest.raises(UsageError, match=r"pass 'quantize': option bits=3 is not valid; expected 8 or 4"):
        nasc.optimize(g, "quantize{bits=3}", feeds[:20])
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(UsageError, match=r"has no array for input.*'image'"):
        nasc.compile(DIGITS, "onnx", tmp_path / "o", passes="quantize", calib=str(bad))
    np.savez(bad, image=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(UsageError, match="has shape \\(4, 3, 8, 8\\)"):
        nasc.compile(DIGITS, "onnx", tmp_path / "o", passes="quantize", calib=str(bad))
    art = nasc.compile(DIGITS, "onnx", tmp_path / "o", passes="quantize", allow_random_calib=True)
    assert any("random inputs" in w for w in art.report["warnings"])


def test_minilm_int8_keeps_sentence_embeddings(tmp_path: Path) -> None:
    from nasc.examples import zoo

    module, inputs = zoo.minilm(max_length=16, sentences=zoo.SENTENCES[:1])
    path = zoo.export_onnx(module, inputs, tmp_path / "minilm.onnx", dynamo=False, output_names=["last_hidden_state"])
    feeds = zoo.minilm_feeds(zoo.SENTENCES, 16)
    g = nasc.load(path)
    q = nasc.optimize(g, "simplify,fuse,quantize", feeds)
    ref = fidelity.run_graph(g, feeds)
    got = fidelity.run_graph(q, feeds)
    cos = []
    for f, r, o in zip(feeds, ref, got):
        a = zoo.sentence_embedding(r[0], f["attention_mask"])[0]
        b = zoo.sentence_embedding(o[0], f["attention_mask"])[0]
        cos.append(float(a @ b))
    assert min(cos) >= 0.99, cos
    counts = q.meta["passes"][-1]["rewrites"]
    assert counts.get("int8-MatMul", 0) + counts.get("int8-Gemm", 0) >= 36  # 6 layers x (q, k, v, o, ffn1, ffn2)
    assert counts.get("int8-Gather", 0) >= 2  # the embedding tables left after simplify, one scale per row
    info = q.meta["quantization"]
    assert info["weights_bytes_after"] < 0.3 * info["weights_bytes_before"]


def test_reduce_range_keeps_onnxruntime_int8_kernels_exact(digits) -> None:
    """With 7-bit weights, ONNX Runtime's fused int8 kernels (all graph optimizations) agree with the QDQ
    semantics on any x86 CPU; full-range weights can saturate its u8 x s8 pair sums where VNNI is missing."""
    from nasc.backends.onnx import to_onnx

    g, feeds, _ = digits
    q = nasc.optimize(g, "simplify,fuse,quantize{reduce-range=true}", feeds[:100])
    assert max(int(np.abs(np.asarray(c.data, np.int32)).max()) for c in q.constants if c.dtype == "i8") <= 63
    fast, exact = fidelity.ort_session(to_onnx(q)), fidelity.ort_session(to_onnx(q), exact=True)
    for f in feeds[:30]:
        np.testing.assert_allclose(fidelity.run_ort(fast, f)[0], fidelity.run_ort(exact, f)[0], rtol=1e-4, atol=1e-4)


def _expand_project(path: Path) -> Path:
    """input [1,8,48,48] -> 1x1 Conv to 48 channels -> Clip(0, 6) -> 3x3 stride-2 Conv to 8 channels -> Relu: the
    arena must hold the 48-channel activation (110,592 B at 8 bits) and the reduced one (4,608 B) at once."""
    rng = np.random.default_rng(0)
    inits = [h.make_tensor("w1", TensorProto.FLOAT, [48, 8, 1, 1], rng.standard_normal(384).astype(np.float32)),
             h.make_tensor("w2", TensorProto.FLOAT, [8, 48, 3, 3], rng.standard_normal(3456).astype(np.float32) / 20),
             h.make_tensor("lo", TensorProto.FLOAT, [], [0.0]), h.make_tensor("hi", TensorProto.FLOAT, [], [6.0])]
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], name="expand"),
             h.make_node("Clip", ["a", "lo", "hi"], ["b"], name="relu6"),
             h.make_node("Conv", ["b", "w2"], ["c"], name="reduce", strides=[2, 2], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = h.make_graph(nodes, "expand", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 48, 48])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 24, 24])], inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), path)
    return path


def test_sram_lower_bound_counts_the_arena_not_the_callers_buffers_or_in_place_ops(tmp_path: Path) -> None:
    path = _expand_project(tmp_path / "expand.onnx")
    g = nasc.load(path)
    feeds = fidelity.random_inputs(g, 0, 4)
    need = 48 * 48 * 48 + 8 * 24 * 24  # the reduce conv's input and output; the Clip runs in place
    with pytest.raises(UsageError, match=f"activations need at least {need} bytes of SRAM at 8 bits"):
        nasc.optimize(g, f"simplify,fuse,quant-policy{{sram={need - 1}B}},quantize", feeds)
    q = nasc.optimize(g, f"simplify,fuse,quant-policy{{sram={need}B}},quantize", feeds)
    # the bound is a lower bound: the planner's arena for the compiled C is no smaller
    art = nasc.compile(q, "mcu:cortex-m4", tmp_path / "c", verify_on="none", budget_check=False)
    assert art.report["arena_bytes"] >= need


def test_tied_layers_get_one_width_and_their_shared_weight_is_counted_once() -> None:
    from nasc.examples.datasets import load_fashion_mnist

    g = nasc.load(ROOT / "examples" / "fashion_vit.onnx")
    x = load_fashion_mnist()[2][:24]
    feeds = [{"image": x[i:i + 1]} for i in range(len(x))]
    tied = nasc.optimize(g, "simplify,fuse,tie-layers{blocks=2 rank=8}", feeds)
    q = nasc.optimize(tied, "quant-policy{bits=8,4 flash-share=0.2}", feeds)  # unreachable if shared bytes counted twice
    policy = q.meta["quant_policy"]
    sharing = {k: v["shares_weight_with"] for k, v in policy.items() if "shares_weight_with" in v}
    assert len(sharing) >= 8
    for k, first in sharing.items():
        assert policy[k]["bits"] == policy[first]["bits"] and policy[k]["bytes"] == 0 < policy[first]["bytes"]
    full = nasc.optimize(q, "quantize", feeds)
    stored = full.summary()["param_bytes"]
    assert sum(v.get("bytes", 0) for v in policy.values()) <= stored  # what quantize stores holds each weight once


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_calibration_streams_its_feeds_in_chunks(digits, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """Calibration evaluates CALIB_CHUNK feeds at a time (the activations of all of them need not fit in
    memory: MobileNetV2 has ~25 MB per image) and gives the graph it gives with everything at once; past
    CALIB_KEEP values per activation, percentile and mse read an even share of each feed's."""
    from nasc.passes import quantize as qz

    g, feeds, _ = digits
    pipe = f"simplify,fuse,quantize{{calib={method}}}"
    whole = nasc.optimize(g, pipe, feeds[:40])
    seen: list[int] = []
    real = fidelity.run_graph

    def counting(graph, fs, values=None):  # type: ignore[no-untyped-def]
        seen.append(len(fs))
        return real(graph, fs, values)

    monkeypatch.setattr(qz, "CALIB_CHUNK", 7)
    monkeypatch.setattr(fidelity, "run_graph", counting)
    chunked = nasc.optimize(g, pipe, feeds[:40])
    assert seen and max(seen) <= 7
    for a, b in zip(whole.constants, chunked.constants, strict=True):
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    monkeypatch.setattr(qz, "CALIB_KEEP", 4096)  # far fewer than the 40 feeds' values: a share of each
    sampled = nasc.optimize(g, pipe, feeds[:40])
    out = [fidelity.run_graph(x, feeds[40:60]) for x in (g, sampled)]
    err = np.mean([np.abs(a[0] - b[0]).max() / np.abs(a[0]).max() for a, b in zip(*out)])
    assert err < 0.1, err
