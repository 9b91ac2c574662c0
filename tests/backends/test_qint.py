"""Integer code generation: QDQ -> integer ops, bit-exact against the numpy reference on CPU, host gcc and
QEMU Cortex-M4; no float arithmetic in the quantized layers' MCU kernels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.backends import fidelity
from nasc.backends.mcu.boards import parse_board
from nasc.backends.mcu.build import build_mcu
from nasc.backends.mcu.verify import run_project
from nasc.backends.tvm.qint import integerize, reference_run
from nasc.ir.ops.quant import quantize_multiplier, requantize

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
DIGITS_TEST = ROOT / "examples" / "digits_test.npz"


def _residual_block(tmp: Path) -> tuple[nasc.ir.Graph, list[dict[str, np.ndarray]]]:
    """conv -> ReLU6 -> maxpool -> conv, a quantized residual Add, ReLU, global pool, linear."""
    import torch
    from torch import nn

    from nasc.examples import zoo

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
            self.pool = nn.MaxPool2d(2)
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(self.stem(x))
            y = torch.relu(x + self.dw(torch.relu(self.conv(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    torch.manual_seed(0)
    path = zoo.export_onnx(Block().eval(), (torch.randn(1, 3, 16, 16),), tmp / "block.onnx", dynamo=False)
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(24)]
    g = nasc.load(path)
    feeds = [{g.inputs[0].name: f["input"]} for f in feeds]
    return nasc.optimize(g, "simplify,fuse,quantize", feeds[:16]), feeds


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nasc.ir.Graph, list]]:
    g = nasc.load(DIGITS)
    feeds = fidelity.load_calibration(str(DIGITS_TEST), g)
    digits = nasc.optimize(g, "simplify,fuse,quantize", feeds[:120])
    return {"digits": (digits, feeds), "residual": _residual_block(tmp_path_factory.mktemp("qint"))}


def test_requantize_rounding_rule() -> None:
    m, n = quantize_multiplier(0.3)
    assert 2**30 <= m < 2**31 and abs(m * 2.0**-n - 0.3) < 1e-9
    acc = np.array([-11, -10, -5, 0, 5, 10, 11, 1000], np.int64)
    # 0.5 exactly: round half up (towards +inf), as the docs of nasc.ir.ops.quant say
    got = requantize(acc, 2**30, 31, 10, 0, 255)
    np.testing.assert_array_equal(got, np.clip(np.floor(acc * 0.5 + 0.5) + 10, 0, 255))
    with pytest.raises(ValueError, match="fixed-point range"):
        quantize_multiplier(2.0**31)


@pytest.mark.parametrize("name", ["digits", "residual"])
def test_whole_model_becomes_integer_and_matches_onnx_qdq_semantics(models, name: str) -> None:
    q, feeds = models[name]
    ig, rep = integerize(q)
    assert rep.float_ops == []
    assert rep.integer["QConv"] >= 3 and rep.integer["QAdd"] == 1 and rep.integer["QGemm"] == 1
    assert rep.integer["QGlobalAveragePool"] == 1
    if name == "residual":
        assert rep.integer["MaxPool"] == 1
    ops = {n.qualified_op for n in ig.nodes}
    assert ops <= {"QuantizeLinear", "DequantizeLinear", "nasc.QConv", "nasc.QGemm", "nasc.QAdd",
                   "nasc.QGlobalAveragePool", "Flatten", "Reshape", "MaxPool"}
    ref = reference_run(ig, feeds)
    qdq = fidelity.run_graph(q, feeds)  # ONNX Runtime, QDQ by its ONNX definition
    out_scale = float(np.asarray(ig.outputs[0].producer.input(1).data))
    for r, o in zip(ref, qdq):  # fixed-point vs float requantization: at most 1 LSB of the output
        assert np.max(np.abs(r[0] - o[0])) <= out_scale * 1.001


def test_int8_example_accuracy_within_a_point_of_float(models) -> None:
    q, feeds = models["digits"]
    labels = np.load(DIGITS_TEST)["label"]
    ig, _ = integerize(q)
    acc = np.mean([int(np.argmax(r[0])) == int(y) for r, y in zip(reference_run(ig, feeds), labels)])
    assert acc >= 0.9889 - 0.01


@pytest.mark.parametrize("name", ["digits", "residual"])
def test_cpu_build_is_bit_exact(models, name: str, tmp_path: Path) -> None:
    q, feeds = models[name]
    art = nasc.compile(q, "cpu", tmp_path / "cpu", measure_latency=False)
    ref = reference_run(integerize(q)[0], feeds[:16])
    for f, r in zip(feeds[:16], ref):
        np.testing.assert_array_equal(art.run(f)[0], r[0])
    assert art.report["build"]["integer"]["float_ops"] == []


@pytest.mark.parametrize("name", ["digits", "residual"])
def test_mcu_build_is_bit_exact_on_host_and_qemu(models, name: str, tmp_path: Path) -> None:
    q, feeds = models[name]
    b = build_mcu(q, parse_board("mcu:cortex-m4"), tmp_path, model=name, pipeline="")
    ref = reference_run(integerize(q)[0], feeds[:16])
    for mode in ("host", "qemu"):
        got = run_project(tmp_path, mode, b.inputs, b.outputs, feeds[:16])
        for g_, r in zip(got, ref):
            np.testing.assert_array_equal(g_[0], r[0])
    assert b.facts["integer"]["float_ops"] == []
    f32 = build_mcu(nasc.optimize(nasc.load(DIGITS), "simplify,fuse"), parse_board("mcu"), tmp_path / "f32",
                    model="f", pipeline="")
    if name == "digits":  # int8 weights and uint8 activations: about a quarter of the float bytes
        assert b.facts["weights_bytes"] < f32.facts["weights_bytes"] / 2.5
        assert b.facts["arena_bytes"] < f32.facts["arena_bytes"] / 2


_FLOAT = re.compile(r"\bfloat\b|\bdouble\b|\d\.\d*e[+-]\d+f?|\bexpf?\b|\bsqrtf?\b")


def _kernel_bodies(project: Path, pattern: str) -> dict[str, str]:
    """Name -> source of the kernels in ``project``'s kernels.c whose name matches ``pattern``."""
    bodies = re.split(r"\n(?=TVM_DLL int32_t \w+\([^;]*\) \{)", (project / "kernels.c").read_text())
    named = {re.match(r"TVM_DLL int32_t (\w+)", b).group(1): b for b in bodies if b.startswith("TVM_DLL") and "{" in b}
    return {k: b for k, b in named.items() if re.search(pattern, k)}


def test_quantized_layer_kernels_have_no_float_arithmetic(models, tmp_path: Path) -> None:
    q, _ = models["residual"]
    build_mcu(q, parse_board("mcu"), tmp_path, model="r", pipeline="")
    layer_kernels = _kernel_bodies(tmp_path, r"^nasc_k_\w*(conv2d|matmul)")
    assert len(layer_kernels) >= 4
    for name, body in layer_kernels.items():
        assert not _FLOAT.search(body), f"{name} has float arithmetic"
    # the control: the boundary kernels do convert from and to float
    boundary = _kernel_bodies(tmp_path, r"^nasc_k_dequantize")
    assert boundary and all(_FLOAT.search(b) for b in boundary.values())


def test_ops_without_integer_kernels_are_listed() -> None:
    import onnx
    from onnx import TensorProto
    from onnx import helper as h

    w = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    graph = h.make_graph([h.make_node("Gemm", ["x", "w"], ["z"], transB=1, name="fc"),
                          h.make_node("Relu", ["z"], ["r"], name="relu"),
                          h.make_node("Softmax", ["r"], ["y"], axis=1, name="softmax")], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                         [onnx.numpy_helper.from_array(w, "w")])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    feeds = [{"x": np.random.default_rng(i).normal(size=(1, 6)).astype(np.float32)} for i in range(8)]
    q = nasc.optimize(nasc.load(m), "quantize", feeds)
    _, rep = integerize(q)
    assert rep.integer == {"QGemm": 1}
    assert rep.float_ops == ["Softmax at node 'softmax'"]


def test_int4_weights_stay_packed_in_flash_and_are_unpacked_in_the_kernel(tmp_path: Path) -> None:
    import onnx.numpy_helper
    from ml_dtypes import int4

    from nasc.backends.tvm.qops import pack_int4

    vals = np.array([-8, 7, 3, -1, 0, 5, -3], np.int8)
    assert pack_int4(vals).tobytes() == onnx.numpy_helper.from_array(vals.astype(int4)).raw_data  # ONNX's order

    g = nasc.load(DIGITS)
    feeds = fidelity.load_calibration(str(DIGITS_TEST), g)
    q8 = nasc.optimize(g, "simplify,fuse,quantize", feeds[:100])
    q4 = nasc.optimize(g, "simplify,fuse,quantize{bits=4}", feeds[:100])
    b8 = build_mcu(q8, parse_board("mcu"), tmp_path / "i8", model="8", pipeline="")
    b4 = build_mcu(q4, parse_board("mcu"), tmp_path / "i4", model="4", pipeline="")
    packed = sum(int(np.prod(c.shape)) for c in q4.constants if c.dtype == "i4") // 2
    assert b8.facts["weights_bytes"] - b4.facts["weights_bytes"] >= packed - 8  # half the int8 bytes saved
    assert re.search(r"static const uint8_t nasc_w\d+\[1152\]", (tmp_path / "i4" / "weights.c").read_text())
    ref = reference_run(integerize(q4)[0], feeds[:16])
    for mode in ("host", "qemu"):
        got = run_project(tmp_path / "i4", mode, b4.inputs, b4.outputs, feeds[:16])
        for g_, r in zip(got, ref):
            np.testing.assert_array_equal(g_[0], r[0])


def test_int8_kernels_use_vnni_where_the_target_has_it(tmp_path: Path) -> None:
    """Cross-built for a VNNI CPU (cascadelake), the integer matmuls are tensorized with vpdpbusd; this
    machine need not have VNNI (nothing is run)."""
    from nasc.backends.tvm.build import build
    from nasc.backends.tvm.target import parse_target

    q, _ = _mlp(tmp_path)
    ex, facts = build(q, parse_target("cpu:cascadelake"))
    asm, stack = "", [ex.mod]
    while stack:
        m = stack.pop()
        if getattr(m, "kind", "") == "llvm":
            asm += m.inspect_source("asm")
        stack.extend(m.imports)
    assert facts["schedules"]["templates"].get("qmatmul_vnni") == 2
    assert len(re.findall(r"\bvpdpbusd\b", asm)) >= 2
    assert facts["integer"]["float_ops"] == []


def _mlp(tmp: Path) -> tuple[nasc.ir.Graph, list[dict[str, np.ndarray]]]:
    """Two linear layers over a sequence (3-D input, as in a transformer): x [1, 6, 16] -> 32 -> ReLU -> 16."""
    import torch
    from torch import nn

    from nasc.examples import zoo

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    path = zoo.export_onnx(model, (torch.randn(1, 6, 16),), tmp / "mlp.onnx", dynamo=False)
    g = nasc.load(path)
    rng = np.random.default_rng(1)
    feeds = [{g.inputs[0].name: rng.normal(size=(1, 6, 16)).astype(np.float32)} for _ in range(24)]
    return nasc.optimize(g, "simplify,fuse,quantize", feeds[:16]), feeds


def test_matmul_by_a_constant_weight_becomes_integer(tmp_path: Path) -> None:
    """MatMul + bias Add over a 3-D input: the first layer (its output quantized after ReLU) becomes QGemm
    with the bias in int32 and ReLU in the clamp, the last (float output) QMatMul's int32 accumulator and a
    dequantize. CPU, host gcc and QEMU Cortex-M4 equal the numpy reference bit for bit."""
    q, feeds = _mlp(tmp_path)
    ig, rep = integerize(q)
    assert rep.integer == {"QGemm": 1, "QMatMul": 1} and rep.float_ops == []
    assert {n.qualified_op for n in ig.nodes} == {"QuantizeLinear", "nasc.QGemm", "nasc.QMatMul", "DequantizeLinear"}
    ref = reference_run(ig, feeds)
    qdq = fidelity.run_graph(q, feeds)
    for r, o in zip(ref, qdq):  # a 1-LSB difference in the hidden layer moves the output by a few hundredths
        assert np.max(np.abs(r[0] - o[0])) <= 0.01 * np.max(np.abs(o[0]))
    art = nasc.compile(q, "cpu", tmp_path / "cpu", measure_latency=False)
    for f, r in zip(feeds, ref):
        np.testing.assert_array_equal(art.run(f)[0], r[0])
    b = build_mcu(q, parse_board("mcu:cortex-m4"), tmp_path / "mcu", model="mlp", pipeline="")
    for mode in ("host", "qemu"):
        for g_, r in zip(run_project(tmp_path / "mcu", mode, b.inputs, b.outputs, feeds[:8]), ref):
            np.testing.assert_array_equal(g_[0], r[0])
    kernels = _kernel_bodies(tmp_path / "mcu", r"qmatmul")
    assert len(kernels) == 2
    for name, body in kernels.items():
        assert not _FLOAT.search(body), f"{name} has float arithmetic"


def test_transformer_block_int8_on_the_mcu(tmp_path: Path) -> None:
    """A ViT block: its four projections and two MLP layers run as integer kernels, weights in int8 (under
    a third of the float bytes); LayerNorm, softmax attention and GELU stay float and are listed."""
    import torch

    from nasc.examples import zoo

    torch.manual_seed(0)
    path = zoo.export_onnx(zoo.vit_block(dim=32, heads=2), (torch.randn(1, 16, 32),), tmp_path / "vit.onnx",
                           dynamo=False)
    g = nasc.load(path)
    feeds = fidelity.random_inputs(g, 0, 12)
    q = nasc.optimize(g, "simplify,fuse,quantize", feeds[:8])
    b = build_mcu(q, parse_board("mcu:cortex-m4"), tmp_path / "q", model="vit", pipeline="")
    f = build_mcu(nasc.optimize(g, "simplify,fuse"), parse_board("mcu:cortex-m4"), tmp_path / "f", model="vit",
                  pipeline="")
    integer = b.facts["integer"]
    assert integer["integer_ops"].get("QMatMul", 0) + integer["integer_ops"].get("QGemm", 0) == 4
    assert any(op.startswith("nasc.Attention") for op in integer["float_ops"])
    assert any(op.startswith("Gelu") for op in integer["float_ops"])
    assert b.facts["weights_bytes"] < f.facts["weights_bytes"] / 3
    kernels = _kernel_bodies(tmp_path / "q", r"qmatmul")
    assert len(kernels) == 4
    for name, body in kernels.items():
        assert not _FLOAT.search(body), f"{name} has float arithmetic"
    qdq = fidelity.run_graph(q, feeds[8:])
    for got, o in zip(run_project(tmp_path / "q", "host", b.inputs, b.outputs, feeds[8:]), qdq):
        # the float islands (LayerNorm, softmax, GELU) round differently from ONNX Runtime, which can move a
        # requantized value by one step: at most a few steps of the output
        assert np.max(np.abs(got[0] - o[0])) <= 0.02 * np.max(np.abs(o[0]))


def test_minilm_int8_cpu_build_keeps_sentence_embeddings(tmp_path: Path) -> None:
    """All 36 projections of MiniLM (6 layers x q, k, v, out, ffn1, ffn2) run as integer matmuls on the CPU;
    the sentence embeddings keep a cosine of at least 0.99 to the float model's."""
    from nasc.examples import zoo

    module, inputs = zoo.minilm(max_length=16, sentences=zoo.SENTENCES[:1])
    path = zoo.export_onnx(module, inputs, tmp_path / "minilm.onnx", dynamo=False, output_names=["last_hidden_state"])
    feeds = zoo.minilm_feeds(zoo.SENTENCES, 16)
    g = nasc.load(path)
    art = nasc.compile(nasc.optimize(g, "simplify,fuse,quantize", feeds), "cpu", tmp_path / "cpu",
                       measure_latency=False)
    integer = art.report["build"]["integer"]
    assert integer["integer_ops"].get("QMatMul", 0) + integer["integer_ops"].get("QGemm", 0) == 36
    kernels = art.report["build"]["schedules"]["kernels"]
    qmatmuls = {k: v for k, v in kernels.items() if "qmatmul" in k}
    assert qmatmuls and all(k.endswith("_prepacked") for k in qmatmuls), kernels  # weights packed at build time
    for f, r in zip(feeds, fidelity.run_graph(g, feeds)):
        a = zoo.sentence_embedding(r[0], f["attention_mask"])[0]
        b = zoo.sentence_embedding(art.run(f)[0], f["attention_mask"])[0]
        assert float(a @ b) >= 0.99


def test_cpu_int8_build_says_when_its_kernels_cannot_use_integer_dot_products(models, tmp_path: Path) -> None:
    from nasc.backends.targets import _int8_cpu_warning
    from nasc.backends.tvm.target import parse_target

    assert parse_target("cpu:cascadelake").int8_dot_product() == "avx512vnni"
    assert parse_target("cpu:alderlake").int8_dot_product() == "avxvnni"
    assert parse_target("cpu:haswell").int8_dot_product() is None
    g = nasc.load(DIGITS)
    feeds = fidelity.load_calibration(str(DIGITS_TEST), g)
    q, _ = models["digits"]
    # x86-64 without AVX2: no dot-product instructions at all
    art = nasc.compile(q, "cpu:x86-64", tmp_path / "sse", measure_latency=False)
    assert any("no integer dot-product instructions" in w for w in art.report["warnings"])
    # AVX2 without VNNI: full-range weights cannot all take vpmaddubsw; 7-bit weights can
    integer = art.report["build"]["integer"]
    assert integer["matmuls"] == 1 and integer["matmuls_with_wide_weight_pairs"] == 1  # the classifier
    assert "reduce-range=true" in _int8_cpu_warning(parse_target("cpu:haswell"), integer)
    q7 = nasc.optimize(g, "simplify,fuse,quantize{reduce-range=true}", feeds[:120])
    art7 = nasc.compile(q7, "cpu:haswell", tmp_path / "avx2", measure_latency=False)
    assert art7.report["build"]["integer"]["matmuls_with_wide_weight_pairs"] == 0
    assert not any("int8" in w or "integer" in w for w in art7.report["warnings"])
    assert _int8_cpu_warning(parse_target("cpu:cascadelake"), integer) is None
    f32 = nasc.compile(g, "cpu:x86-64", tmp_path / "f32", measure_latency=False)
    assert not any("dot-product" in w for w in f32.report["warnings"])
