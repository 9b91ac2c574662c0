"""fuse: each rewrite on golden IR (and the cases where it must not fire), then real models."""

from __future__ import annotations

import math

import numpy as np
import pytest
from golden import count, run_golden

import nasc
from nasc.ir import parse

RNG = np.random.default_rng(0)


def bn_consts(c: int) -> dict[str, np.ndarray]:
    return {"s": RNG.uniform(0.5, 2, c).astype(np.float32), "t": RNG.standard_normal(c).astype(np.float32),
            "m": RNG.standard_normal(c).astype(np.float32), "v": RNG.uniform(0.5, 2, c).astype(np.float32)}


CONV_BN = '''graph "g" opsets {"": 21}
input %x : f32[1,3,8,8]
const %w : f32[16,3,3,3] = "w"
const %b : f32[16] = "b"
const %s : f32[16] = "s"
const %t : f32[16] = "t"
const %m : f32[16] = "m"
const %v : f32[16] = "v"
%h : f32[1,16,8,8] = Conv(%x, %w, %b) {pads=[1, 1, 1, 1]} @"block.conv" #"conv"
%y : f32[1,16,8,8] = BatchNormalization(%h, %s, %t, %m, %v) {epsilon=0.001} @"block.bn" #"bn"
output %y
'''


def test_batchnorm_folds_into_the_conv_before_it():
    out = run_golden(CONV_BN, "fuse", constants=bn_consts(16), rtol=1e-4, atol=1e-5)
    assert [n.op for n in out.nodes] == ["Conv"]
    assert out.nodes[0].name == "conv" and out.nodes[0].input(1).name == "w"
    assert out.meta["passes"][0]["rewrites"] == {"fold-batchnorm": 1}


def test_batchnorm_does_not_fold_when_the_conv_output_has_another_user():
    text = CONV_BN.replace("output %y", "%z : f32[1,16,8,8] = Relu(%h) #\"side\"\noutput %y, %z")
    out = run_golden(text, "fuse", constants=bn_consts(16))
    assert count(out, "BatchNormalization") == 1 and out.meta["passes"][0]["rewrites"] == {}


@pytest.mark.parametrize("pads", ["[0, 0, 0, 0]", "[1, 1, 1, 1]"])
def test_batchnorm_before_a_conv_folds_only_without_padding(pads):
    text = '''graph "g" opsets {"": 21}
input %x : f32[1,16,6,6]
const %w : f32[8,16,3,3] = "w"
const %s : f32[16] = "s"
const %t : f32[16] = "t"
const %m : f32[16] = "m"
const %v : f32[16] = "v"
%h : f32[1,16,6,6] = BatchNormalization(%x, %s, %t, %m, %v) #"bn"
%y : f32[1,8,OUT,OUT] = Conv(%h, %w) {pads=PADS} #"conv"
output %y
'''.replace("PADS", pads).replace("OUT", "4" if pads.startswith("[0") else "6")
    out = run_golden(text, "fuse", constants=bn_consts(16), rtol=1e-4, atol=1e-5)
    assert count(out, "BatchNormalization") == (0 if pads.startswith("[0") else 1)


PAD_CONV = '''graph "g" opsets {"": 21}
input %x : f32[1,4,7,7]
const %w : f32[8,4,3,3] = "w"
const %pads : i64[8] = "pads"
const %zero : f32[] = "zero"
%p : f32[1,4,PH,PW] = Pad(%x, %pads, %zero) {mode="MODE"} #"pad"
%y : f32[1,8,OH,OW] = Conv(%p, %w) {pads=[0, 1, 0, 1], strides=[2, 2]} #"conv"
output %y
'''


def _pad_conv(pads: list[int], mode: str = "constant", value: float = 0.0) -> tuple[str, dict[str, np.ndarray]]:
    ph, pw = 7 + pads[2] + pads[6], 7 + pads[3] + pads[7]
    oh, ow = (ph + 0 - 3) // 2 + 1, (pw + 2 - 3) // 2 + 1
    text = (PAD_CONV.replace("PH", str(ph)).replace("PW", str(pw)).replace("OH", str(oh)).replace("OW", str(ow))
            .replace("MODE", mode).replace("%p : f32[1,4,", f"%p : f32[1,{4 + pads[1] + pads[5]},"))
    consts = {"w": RNG.standard_normal((8, 4, 3, 3)).astype(np.float32),
              "pads": np.asarray(pads, np.int64), "zero": np.asarray(value, np.float32)}
    return text, consts


def test_a_zero_pad_folds_into_the_convolution_after_it():
    text, consts = _pad_conv([0, 0, 1, 0, 0, 0, 1, 2])  # 'same'-style asymmetric padding, as TF exporters write it
    out = run_golden(text, "fuse", constants=consts, rtol=1e-5, atol=1e-5)
    assert [n.op for n in out.nodes] == ["Conv"]
    assert out.nodes[0].attr("pads") == [1, 1, 1, 3] and out.nodes[0].name == "conv"
    assert out.meta["passes"][0]["rewrites"] == {"fold-pad": 1}


@pytest.mark.parametrize("case", ["reflect", "nonzero", "channels"])
def test_a_pad_that_is_not_a_spatial_zero_pad_stays(case):
    pads = [0, 1, 1, 1, 0, 0, 1, 1] if case == "channels" else [0, 0, 1, 1, 0, 0, 1, 1]
    text, consts = _pad_conv(pads, "reflect" if case == "reflect" else "constant", 0.5 if case == "nonzero" else 0)
    if case == "channels":  # a pad of the channel axis changes what the conv reads: its weights would not fit
        text = text.replace("const %w : f32[8,4,3,3]", "const %w : f32[8,5,3,3]")
        consts["w"] = RNG.standard_normal((8, 5, 3, 3)).astype(np.float32)
    out = run_golden(text, "fuse", constants=consts, rtol=1e-5, atol=1e-5)
    assert count(out, "Pad") == 1 and "fold-pad" not in out.meta["passes"][0]["rewrites"]


@pytest.mark.parametrize("include", [0, 1])
def test_a_zero_pad_folds_into_an_average_pool_only_when_it_counts_the_padding(include):
    text = f'''graph "g" opsets {{"": 21}}
input %x : f32[1,4,6,6]
const %pads : i64[8] = "pads"
%p : f32[1,4,8,8] = Pad(%x, %pads) #"pad"
%y : f32[1,4,4,4] = AveragePool(%p) {{kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], count_include_pad={include}}} #"pool"
output %y
'''
    out = run_golden(text, "fuse", constants={"pads": np.asarray([0, 0, 1, 1, 0, 0, 1, 1], np.int64)})
    assert count(out, "Pad") == 1 - include


@pytest.mark.parametrize("linear", ["Gemm(%x, %w, %b) {transB=1}", "MatMul(%x, %wt)"])
def test_batchnorm_folds_into_gemm_and_matmul(linear):
    text = f'''graph "g" opsets {{"": 21}}
input %x : f32[4,8]
const %w : f32[6,8] = "w"
const %wt : f32[8,6] = "wt"
const %b : f32[6] = "b"
const %s : f32[6] = "s"
const %t : f32[6] = "t"
const %m : f32[6] = "m"
const %v : f32[6] = "v"
%h : f32[4,6] = {linear} #"fc"
%y : f32[4,6] = BatchNormalization(%h, %s, %t, %m, %v) #"bn"
output %y
'''
    out = run_golden(text, "fuse", constants=bn_consts(6), rtol=1e-4, atol=1e-5)
    assert count(out, "BatchNormalization") == 0


def test_matmul_add_becomes_gemm_in_2d_only():
    text = '''graph "g" opsets {"": 21}
input %x : f32[4,8]
input %x3 : f32[2,4,8]
const %w : f32[8,6] = "w"
const %b : f32[6] = "b"
%h : f32[4,6] = MatMul(%x, %w) #"mm"
%y : f32[4,6] = Add(%b, %h) #"add"
%h3 : f32[2,4,6] = MatMul(%x3, %w) #"mm3"
%y3 : f32[2,4,6] = Add(%h3, %b) #"add3"
output %y, %y3
'''
    out = run_golden(text, "fuse", rtol=1e-5, atol=1e-5)
    assert [n.op for n in out.nodes] == ["Gemm", "MatMul", "Add"]


def test_activation_idioms_are_named():
    text = '''graph "g" opsets {"": 21}
input %x : f32[2,8]
const %zero : f32[] = dense[0.0]
const %six : f32[] = dense[6.0]
const %one : f32[] = dense[1.0]
%r6 : f32[2,8] = Clip(%x, %zero, %six) #"relu6"
%sg : f32[2,8] = Sigmoid(%r6) #"sig"
%silu : f32[2,8] = Mul(%sg, %r6) #"silu"
%hs : f32[2,8] = HardSigmoid(%silu) {alpha=0.16666666666666666, beta=0.5} #"hsig"
%hsw : f32[2,8] = Mul(%silu, %hs) #"hswish"
%y : f32[2,8] = Clip(%hsw, %zero, %one) #"not-relu6"
output %y
'''
    out = run_golden(text, "fuse")
    assert [n.qualified_op for n in out.nodes] == ["nasc.Relu6", "nasc.SiLU", "HardSwish", "Clip"]


LAYERNORM = '''graph "g" opsets {"": 21}
input %x : f32[2,5,16]
const %axes : i64[1] = dense[-1]
const %two : f32[] = dense[2.0]
const %eps : f32[] = dense[1e-05]
const %gamma : f32[16] = "gamma"
const %beta : f32[16] = "beta"
%mean : f32[2,5,1] = ReduceMean(%x, %axes) #"mean"
%d : f32[2,5,16] = Sub(%x, %mean) #"sub"
%sq : f32[2,5,16] = Pow(%d, %two) #"pow"
%var : f32[2,5,1] = ReduceMean(%sq, %axes) #"var"
%ve : f32[2,5,1] = Add(%var, %eps) #"add_eps"
%std : f32[2,5,1] = Sqrt(%ve) #"sqrt"
%n : f32[2,5,16] = Div(%d, %std) #"div"
%sc : f32[2,5,16] = Mul(%n, %gamma) #"mul"
%y : f32[2,5,16] = Add(%sc, %beta) @"encoder.ln" #"add"
output %y
'''


def test_decomposed_layernorm_becomes_one_op():
    out = run_golden(LAYERNORM, "fuse", rtol=1e-4, atol=1e-5)
    (ln,) = out.nodes
    assert ln.op == "LayerNormalization" and ln.attrs == {"axis": 2, "epsilon": pytest.approx(1e-5)}
    assert ln.scope == "encoder.ln" and ln.input(1).name == "gamma"


def test_layernorm_with_a_second_reader_of_the_mean_does_not_fire():
    text = LAYERNORM.replace("output %y", "output %y, %mean")
    out = run_golden(text, "fuse")
    assert count(out, "LayerNormalization") == 0


GELU_ERF = '''graph "g" opsets {"": 21}
input %x : f32[2,8]
const %sqrt2 : f32[] = dense[1.4142135381698608]
const %one : f32[] = dense[1.0]
const %half : f32[] = dense[0.5]
%a : f32[2,8] = Div(%x, %sqrt2) #"div"
%b : f32[2,8] = Erf(%a) #"erf"
%c : f32[2,8] = Add(%b, %one) #"add"
%d : f32[2,8] = Mul(%x, %c) #"mul"
%y : f32[2,8] = Mul(%d, %half) #"mul_half"
output %y
'''


def test_erf_gelu_becomes_gelu():
    out = run_golden(GELU_ERF, "fuse", rtol=1e-5, atol=1e-6)
    assert [(n.op, n.attrs) for n in out.nodes] == [("Gelu", {})]


def test_tanh_gelu_becomes_gelu_tanh():
    text = f'''graph "g" opsets {{"": 21}}
input %x : f32[2,8]
const %three : f32[] = dense[3.0]
const %k : f32[] = dense[0.044715]
const %c : f32[] = dense[{math.sqrt(2 / math.pi)}]
const %one : f32[] = dense[1.0]
const %half : f32[] = dense[0.5]
%x3 : f32[2,8] = Pow(%x, %three) #"pow"
%kx3 : f32[2,8] = Mul(%k, %x3) #"mul_k"
%inner : f32[2,8] = Add(%x, %kx3) #"add_inner"
%sc : f32[2,8] = Mul(%inner, %c) #"mul_c"
%t : f32[2,8] = Tanh(%sc) #"tanh"
%t1 : f32[2,8] = Add(%one, %t) #"add_one"
%hx : f32[2,8] = Mul(%half, %x) #"mul_half"
%y : f32[2,8] = Mul(%hx, %t1) #"mul"
output %y
'''
    out = run_golden(text, "fuse", rtol=1e-5, atol=1e-6)
    assert [(n.op, n.attrs) for n in out.nodes] == [("Gelu", {"approximate": "tanh"})]


ATTENTION = '''graph "g" opsets {"": 21}
input %q : f32[1,2,4,8]
input %k : f32[1,2,4,8]
input %v : f32[1,2,4,8]
input %mask : f32[1,1,1,4]
const %scale : f32[] = dense[2.8284270763397217]
%kt : f32[1,2,8,4] = Transpose(%k) {perm=[0, 1, 3, 2]} #"kt"
%s : f32[1,2,4,4] = MatMul(%q, %kt) #"qk"
%ss : f32[1,2,4,4] = Div(%s, %scale) #"scale"
%sm : f32[1,2,4,4] = Add(%ss, %mask) #"mask"
%p : f32[1,2,4,4] = Softmax(%sm) {axis=-1} #"softmax"
%y : f32[1,2,4,8] = MatMul(%p, %v) @"layer.0.attention" #"pv"
output %y
'''


def test_scaled_dot_product_attention_becomes_one_op():
    out = run_golden(ATTENTION, "fuse", rtol=1e-5, atol=1e-6)
    assert [n.qualified_op for n in out.nodes] == ["nasc.Attention"]  # the two transposes cancel
    att = out.nodes[0]
    assert att.attrs["scale"] == pytest.approx(1 / math.sqrt(8)) and att.scope == "layer.0.attention"
    assert att.input(1) is out.inputs[1] and att.input(3) is out.inputs[3]


def test_attention_with_a_computed_scale_does_not_fire():
    text = ATTENTION.replace("input %mask : f32[1,1,1,4]", "input %mask : f32[1,1,1,4]\ninput %t : f32[]").replace(
        "Div(%s, %scale)", "Div(%s, %t)")
    g = parse(text)
    out = nasc.optimize(g, "fuse")
    assert count(out, "nasc.Attention") == 0 and count(out, "Softmax") == 1


def test_attention_exports_as_onnx_attention_when_the_opset_has_it():
    from nasc.backends.onnx import to_onnx

    text = ATTENTION.replace('opsets {"": 21}', 'opsets {"": 23}').replace("%mask : f32[1,1,1,4]",
                                                                           "%mask : f32[1,1,4,4]")
    out = run_golden(text, "fuse", rtol=1e-5, atol=1e-6)
    assert [n.qualified_op for n in out.nodes] == ["nasc.Attention"]
    assert [n.op_type for n in to_onnx(out).graph.node] == ["Attention"]
    # a mask that leaves the query length to broadcasting is written as the decomposition instead
    out = run_golden(ATTENTION.replace('opsets {"": 21}', 'opsets {"": 23}'), "fuse", rtol=1e-5, atol=1e-6)
    assert "Attention" not in [n.op_type for n in to_onnx(out).graph.node]


def test_the_report_line_says_what_happened():
    out = nasc.optimize(parse(CONV_BN, bn_consts(16)), "fuse")
    line = out.meta["passes"][0]["summary"]
    assert line.startswith("fuse: fold-batchnorm ×1; nodes 2 → 1")


# ---- real models ---------------------------------------------------------------------------------


def test_fuse_on_mobilenet_v2_leaves_no_batchnorm():
    import torch

    from nasc.backends.fidelity import run_graph
    from nasc.examples import zoo

    m = zoo.mobilenet_v2()
    photos, _ = zoo.imagenet_photos(224)
    g = nasc.from_torch(m, (torch.from_numpy(photos[:1]),))
    assert count(g, "BatchNormalization") == 52
    out = nasc.optimize(g, "simplify,fuse")
    assert count(out, "BatchNormalization") == 0 and count(out, "nasc.Relu6") == 35
    assert out.meta["passes"][1]["rewrites"] == {"fold-batchnorm": 52, "relu6": 35}
    feeds = [{"x": photos[i : i + 1]} for i in range(len(photos))]
    for (ref,), (got,) in zip(run_graph(g, feeds), run_graph(out, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
        assert np.argmax(got) == np.argmax(ref)


def test_fuse_on_minilm_torchscript_export_finds_every_block(tmp_path):
    from nasc.backends.fidelity import run_graph
    from nasc.examples import zoo

    module, inputs = zoo.minilm(max_length=16)
    path = zoo.export_onnx(module, inputs, tmp_path / "minilm.onnx", dynamo=False,
                           output_names=["last_hidden_state"])
    g = nasc.load(path)
    out = nasc.optimize(g, "simplify,fuse")
    rewrites = out.meta["passes"][1]["rewrites"]
    assert rewrites["attention"] == 6 and rewrites["gelu"] == 6
    assert count(out, "nasc.Attention") == 6 and count(out, "LayerNormalization") == 13 and count(out, "Gelu") == 6
    assert count(out, "Softmax") == 0 and count(out, "Erf") == 0
    feed = [{k: v.numpy() for k, v in inputs.items()}]
    (ref,), (got,) = run_graph(g, feed)[0], run_graph(out, feed)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
