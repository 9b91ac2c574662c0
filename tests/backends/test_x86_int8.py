"""The hand-tensorized x86 integer matmuls (backends/tvm/x86_int8.py): bit-exact against the numpy
reference with both AVX2 intrinsics, and the choice between them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.backends.tvm.build import build
from nasc.backends.tvm.qint import integerize, reference_run
from nasc.backends.tvm.target import parse_target
from nasc.backends.tvm.x86_int8 import pairs_fit_int16

HOST_AVX2 = "avx2" in Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else False


def test_pairs_fit_int16_is_the_saturation_bound() -> None:
    w = np.zeros((8, 3), np.int8)
    w[0, 0], w[1, 0] = 64, -64  # 255 * 128 = 32640 <= 32767
    assert pairs_fit_int16(w)
    w[1, 0] = -65  # 255 * 129 = 32895: vpmaddubsw would saturate
    assert not pairs_fit_int16(w)
    w[1, 0], w[2, 0] = 0, 127  # 127 and 64 in different pairs: fine
    assert pairs_fit_int16(w)
    assert not pairs_fit_int16(np.zeros((6, 3), np.int8))  # K not a multiple of 4: not the 4-step intrinsic


def _linear(tmp: Path, rows: int, k: int, n: int, reduce_range: bool, bits: int = 8) -> tuple[nasc.ir.Graph, list]:
    import onnx
    from onnx import TensorProto
    from onnx import helper as h

    rng = np.random.default_rng(k + n)
    w = rng.normal(size=(k, n)).astype(np.float32)
    b = rng.normal(size=(n,)).astype(np.float32)
    graph = h.make_graph([h.make_node("MatMul", ["x", "w"], ["z"], name="fc"), h.make_node("Add", ["z", "b"], ["y"])],
                         "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, k])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, n])],
                         [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    feeds = [{"x": rng.normal(size=(1, rows, k)).astype(np.float32) * 3} for _ in range(6)]
    passes = "quantize{reduce-range=true}" if reduce_range else f"quantize{{bits={bits}}}"
    return nasc.optimize(nasc.load(m), passes, feeds), feeds


def _asm(ex: object) -> str:
    asm, stack = "", [ex.mod]  # type: ignore[attr-defined]
    while stack:
        m = stack.pop()
        if getattr(m, "kind", "") == "llvm":
            asm += m.inspect_source("asm")
        stack.extend(m.imports)
    return asm


@pytest.mark.skipif(not HOST_AVX2, reason="the AVX2 kernels run only on an AVX2 host")
@pytest.mark.parametrize(("reduce_range", "instruction"), [(True, "vpmaddubsw"), (False, "vpmaddwd")])
@pytest.mark.parametrize(("rows", "k", "n"), [(6, 40, 24), (37, 64, 48), (70, 32, 64)])  # the last: row tiles outermost
def test_avx2_integer_matmul_is_bit_exact(tmp_path: Path, reduce_range: bool, instruction: str, rows: int, k: int,
                                          n: int) -> None:
    q, feeds = _linear(tmp_path, rows, k, n, reduce_range)
    assert pairs_fit_int16(np.asarray(next(c for c in q.constants if c.dtype == "i8").data)) == reduce_range
    art = nasc.compile(q, "cpu:haswell", tmp_path / "cpu", measure_latency=False)
    assert art.report["build"]["schedules"]["templates"].get("qmatmul_avx2") == 1
    ref = reference_run(integerize(q)[0], feeds)
    for f, r in zip(feeds, ref):
        np.testing.assert_array_equal(art.run(f)[0], r[0])
    ex, _ = build(q, parse_target("cpu:haswell"))
    assert re.search(rf"\b{instruction}\b", _asm(ex))


def test_kernels_that_do_not_fit_fall_back_to_the_matmul_template(tmp_path: Path) -> None:
    q, _ = _linear(tmp_path, 3, 6, 10, False)  # 10 columns: not a multiple of 8
    _, facts = build(q, parse_target("cpu:haswell"))
    assert "qmatmul_avx2" not in facts["schedules"]["templates"]
    assert facts["schedules"]["templates"].get("matmul") == 1


def _pointwise(side: int, reduce_range: bool, bits: int = 8) -> tuple[nasc.ir.Graph, list]:
    """conv 3x3 -> ReLU -> conv 1x1 (16 -> 24 channels) -> ReLU on a side x side map."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as h

    rng = np.random.default_rng(side)
    w1 = rng.normal(size=(16, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(24, 16, 1, 1)).astype(np.float32) * 0.3
    b2 = rng.normal(size=(24,)).astype(np.float32)
    graph = h.make_graph([h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["a"], ["r"]),
                          h.make_node("Conv", ["r", "w2", "b2"], ["c"], name="pw"), h.make_node("Relu", ["c"], ["y"])],
                         "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, side, side])],
                         [onnx.numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (b2, "b2"))])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    feeds = [{"x": rng.normal(size=(1, 3, side, side)).astype(np.float32)} for _ in range(6)]
    passes = "quantize{reduce-range=true}" if reduce_range else f"quantize{{bits={bits}}}"
    return nasc.optimize(nasc.load(m), passes, feeds), feeds


@pytest.mark.skipif(not HOST_AVX2, reason="the AVX2 kernels run only on an AVX2 host")
@pytest.mark.parametrize("reduce_range", [True, False])
@pytest.mark.parametrize("side", [8, 7])  # 64 or 49 pixels: the matmul's rows (7 rows per tile for 49)
def test_pointwise_conv_runs_as_an_integer_matmul(tmp_path: Path, side: int, reduce_range: bool) -> None:
    from nasc.backends.mcu.boards import parse_board
    from nasc.backends.mcu.build import build_mcu
    from nasc.backends.mcu.verify import run_project

    q, feeds = _pointwise(side, reduce_range)
    art = nasc.compile(q, "cpu:haswell", tmp_path / "cpu", measure_latency=False)
    # the pointwise layer, and the 3x3 before it as the matmul of its patches
    assert art.report["build"]["schedules"]["templates"].get("qmatmul_avx2") == 2
    ref = reference_run(integerize(q)[0], feeds)
    for f, r in zip(feeds, ref):
        np.testing.assert_array_equal(art.run(f)[0], r[0])
    if not reduce_range:  # the microcontroller keeps the convolution: the same results
        b = build_mcu(q, parse_board("mcu:cortex-m4"), tmp_path / "mcu", model="pw", pipeline="")
        for got, r in zip(run_project(tmp_path / "mcu", "host", b.inputs, b.outputs, feeds[:3]), ref):
            np.testing.assert_array_equal(got[0], r[0])


@pytest.mark.skipif(not HOST_AVX2, reason="the AVX2 kernels run only on an AVX2 host")
@pytest.mark.parametrize("model", ["linear", "pointwise 8x8", "pointwise 7x7"])
def test_int4_weights_are_tensorized_and_exact_on_the_cpu(tmp_path: Path, model: str) -> None:
    """x86 builds hold int4 weights one per byte (microcontrollers keep them packed, test_qint), so that the
    tensorized integer matmuls take them as int8: still bit-exact."""
    q, feeds = _linear(tmp_path, 6, 40, 24, False, bits=4) if model == "linear" else _pointwise(
        int(model[-1]), False, bits=4)
    assert any(c.dtype == "i4" for c in q.constants)
    art = nasc.compile(q, "cpu:haswell", tmp_path / "cpu", measure_latency=False)
    assert art.report["build"]["schedules"]["templates"].get("qmatmul_avx2") == (1 if model == "linear" else 2)
    for f, r in zip(feeds, reference_run(integerize(q)[0], feeds)):
        np.testing.assert_array_equal(art.run(f)[0], r[0])


def _odd_convs(bits: int) -> tuple[nasc.ir.Graph, list]:
    """Integer convolutions in every NHWC shape the x86 lowering meets, each followed by ReLU: a 3-channel
    stem; depthwise 3x3 stride 2 on an odd map; pointwise 24 -> 16 and 24 -> 24 (8-wide vpdpbusd); grouped
    3x3 with dilation 2; two dense 3x3, one with dilation 2 (the matmul of their patches; the digits CNN's
    bit-exact test has a strided one); a residual add; a 3x3 max pool (on the uint8 codes, channels-last);
    depthwise 5x5 stride 2; pointwise to 37 channels (no tensorized width divides it); a strided 1x1 over 37
    channels (not a matmul: 37 is no multiple of 4); the global average pool. Two outputs: the pool, and the
    37-channel map (channels-last inside, NCHW out)."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as h

    rng = np.random.default_rng(7)
    inits, nodes = [], []

    def conv(x: str, y: str, co: int, ci: int, k: int, **attrs: object) -> None:
        w = (rng.normal(size=(co, ci // int(attrs.get("group", 1)), k, k)) / np.sqrt(ci * k)).astype(np.float32)
        inits.extend([onnx.numpy_helper.from_array(w, f"{y}_w"),
                      onnx.numpy_helper.from_array(rng.normal(size=co).astype(np.float32) * 0.1, f"{y}_b")])
        nodes.extend([h.make_node("Conv", [x, f"{y}_w", f"{y}_b"], [f"{y}_c"], name=y, **attrs),
                      h.make_node("Relu", [f"{y}_c"], [y])])

    conv("x", "a", 24, 3, 3, pads=[1, 1, 1, 1])
    conv("a", "b", 24, 24, 3, strides=[2, 2], pads=[1, 1, 1, 1], group=24)
    conv("b", "c", 16, 24, 1)
    conv("c", "d", 24, 16, 3, pads=[2, 2, 2, 2], dilations=[2, 2], group=4)
    conv("d", "d2", 24, 24, 3, pads=[2, 2, 2, 2], dilations=[2, 2])
    conv("d2", "e", 24, 24, 1)
    nodes.append(h.make_node("Add", ["e", "b"], ["f"]))
    nodes.append(h.make_node("MaxPool", ["f"], ["fp"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    conv("fp", "g", 24, 24, 5, strides=[2, 2], pads=[2, 2, 2, 2], group=24)
    conv("g", "g2", 24, 24, 3, pads=[1, 1, 1, 1])
    conv("g2", "hh", 37, 24, 1)
    conv("hh", "i", 19, 37, 1, strides=[2, 2])
    nodes.append(h.make_node("GlobalAveragePool", ["i"], ["y"]))
    graph = h.make_graph(nodes, "odd", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 11, 11])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 19, 1, 1]),
                          h.make_tensor_value_info("hh", TensorProto.FLOAT, [1, 37, 3, 3])], inits)
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    feeds = [{"x": rng.normal(size=(1, 3, 11, 11)).astype(np.float32)} for _ in range(8)]
    return nasc.optimize(nasc.load(m), f"simplify,fuse,quantize{{bits={bits}}}", feeds), feeds


@pytest.mark.skipif(not HOST_AVX2, reason="the AVX2 kernels run only on an AVX2 host")
@pytest.mark.parametrize(("target", "bits"), [("cpu", 8), ("cpu:haswell", 8), ("cpu:haswell", 4)])
def test_channels_last_integer_convolutions_are_bit_exact(tmp_path: Path, target: str, bits: int) -> None:
    q, feeds = _odd_convs(bits)
    ig, _ = integerize(q)
    assert sum(n.op == "QConv" for n in ig.nodes) == 10 and any(n.op == "QAdd" for n in ig.nodes)
    art = nasc.compile(q, target, tmp_path / "cpu", measure_latency=False)
    build_facts = art.report["build"]
    assert build_facts["integer"]["float_ops"] == [] and build_facts["integer"]["conv_layout"] == "NHWC"
    templates = build_facts["schedules"]["templates"]
    assert templates.get("conv2d_nhwc") == 4  # 2 depthwise, grouped, the strided 1x1 over 37 channels
    # 24 -> 16, 24 -> 24, and the 3-channel stem (taps of 4 channels, the 4th holding the zero point) and the
    # two dense 3x3 as the matmul of their patches: the stem's and the 3x3 map's (9 rows, fewer than a row tile
    # for each core) copied by an im2col kernel, the 6x6 map's (36 rows) inside its matmul kernel
    assert sum(v for k, v in templates.items() if k.startswith("qmatmul_")) == 5
    assert sum("im2col" in k for k in build_facts["schedules"]["kernels"]) == 2
    # channels-last from the first convolution on: the input's transpose is fused into its quantization; the
    # 37-channel output is transposed back once
    transposes = [k for k in build_facts["schedules"]["kernels"] if "transpose" in k]
    assert len(transposes) == 2, transposes
    for f, r in zip(feeds, reference_run(ig, feeds)):
        got = art.run(f)
        np.testing.assert_array_equal(got[0], r[0])
        np.testing.assert_array_equal(got[1], r[1])


def test_channels_last_convolutions_cross_built_for_vnni_use_both_vpdpbusd_widths(tmp_path: Path) -> None:
    """Cross-built for a VNNI CPU (nothing runs): the 24 -> 16 pointwise layer takes the 512-bit vpdpbusd, the
    24 -> 24 ones (pointwise, the stem and the two dense 3x3 through their patches) its 256-bit form (8 columns)."""
    q, _ = _odd_convs(8)
    ex, facts = build(q, parse_target("cpu:cascadelake"))
    assert facts["schedules"]["templates"].get("qmatmul_vnni") == 5
    asm = _asm(ex)
    assert re.search(r"\bvpdpbusd\s+[^\n]*zmm", asm) and re.search(r"\bvpdpbusd\s+[^\n]*ymm", asm)


@pytest.mark.skipif(not HOST_AVX2, reason="the AVX2 kernels run only on an AVX2 host")
@pytest.mark.parametrize("target", ["cpu", "cpu:haswell"])
def test_strided_convolution_copies_its_patches_inside_the_matmul_kernel(tmp_path: Path, target: str) -> None:
    """A stride-2 3x3 convolution on a 21x21 map (121 output pixels, more than its 16 channels): its patches are
    copied row tile by row tile inside the tensorized matmul kernel (no im2col kernel), with a ragged last tile
    (121 rows) and the padding on the bottom and right edges read, bit-exact against the integer reference."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as h

    rng = np.random.default_rng(3)
    w = (rng.normal(size=(16, 8, 3, 3)) / 8).astype(np.float32)
    b = (rng.normal(size=16) * 0.1).astype(np.float32)
    graph = h.make_graph([h.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
                          h.make_node("Relu", ["c"], ["y"])], "g",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 21, 21])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 11, 11])],
                         [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    feeds = [{"x": rng.normal(size=(1, 8, 21, 21)).astype(np.float32)} for _ in range(4)]
    q = nasc.optimize(nasc.load(m), "quantize", feeds)
    art = nasc.compile(q, target, tmp_path / "cpu", measure_latency=False)
    kernels = art.report["build"]["schedules"]["kernels"]
    assert not any("im2col" in k for k in kernels)
    assert next(t for k, t in kernels.items() if "qconv2d_patches" in k).startswith("qmatmul_")
    for f, r in zip(feeds, reference_run(integerize(q)[0], feeds)):
        np.testing.assert_array_equal(art.run(f)[0], r[0])
