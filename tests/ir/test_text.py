"""The text form: golden output, round trips, and parse errors that point at the line."""

from __future__ import annotations

import numpy as np
import pytest

import nasc
from nasc.errors import ParseError
from nasc.ir import Graph, SubGraph, TensorType, parse, verify
from nasc.ir.text import structural_diff

GOLDEN = '''graph "tiny" opsets {"": 21}
input %x : f32[1,3,8,8]
const %w : f32[4,3,3,3] = "w"
const %shape : i64[2] = dense[1, -1]
%h : f32[1,4,8,8] = Conv(%x, %w, _) {pads=[1, 1, 1, 1], strides=[1, 1]} @"features.0" #"conv0"
%r : f32[1,4,8,8] = Clip(%h) @"features.0" #"act"
%y : f32[1,256] = Reshape(%r, %shape) #"flat"
output %y
'''


def test_golden_text_parses_verifies_and_prints_back_identically():
    g = parse(GOLDEN)
    verify(g)
    assert str(g) == GOLDEN
    conv = g.find_node("conv0")
    assert conv.scope == "features.0" and conv.inputs[2] is None
    assert conv.attrs == {"pads": (1, 1, 1, 1), "strides": (1, 1)}
    assert g.find_value("shape").data.tolist() == [1, -1]


def test_absent_constants_are_filled_by_shape_and_given_ones_are_used():
    w = np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3)
    assert np.array_equal(parse(GOLDEN, {"w": w}).find_value("w").data, w)
    filled = parse(GOLDEN).find_value("w").data
    assert filled.shape == (4, 3, 3, 3) and filled.dtype == np.float32
    assert np.array_equal(filled, parse(GOLDEN).find_value("w").data)  # seeded by the key


def test_attribute_kinds_round_trip():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2,)))
    attrs = {
        "i": 3, "f": 0.5, "f_whole": 2.0, "s": 'quote " and, comma', "ints": (1, -2), "floats": (1.0, 2.5),
        "strs": ("a", "b"), "empty": (), "t": np.array([[1, 2]], np.int64), "nan": float("nan"),
        "g": SubGraph(b"\x01\x02", ("x",)),
    }
    n = g.make_node("Custom", [x, None], [TensorType("f32", (2,))], attrs, domain="com.example", captures=[x])
    g.outputs = [n.outputs[0]]
    back = parse(str(g))
    assert structural_diff(g, back) is None
    a = back.nodes[0].attrs
    assert isinstance(a["f_whole"], float) and isinstance(a["i"], int) and a["floats"] == (1.0, 2.5)
    assert back.nodes[0].domain == "com.example" and back.nodes[0].captures == (back.inputs[0],)


def test_types_with_unknown_dims_quantization_and_opaque_round_trip():
    text = '''graph "t" opsets {"": 21}
input %x : f32[?,3]
input %q : i8[4]q(scale=[0.5],zp=[0])
input %s : opaque<"seq(f32)">0a02
%y : f32[*] = Foo(%x, %q, %s)
output %y
'''
    g = parse(text)
    assert g.inputs[0].type.shape == ("?", 3)
    assert g.inputs[1].type.quant.scale == (0.5,)
    assert g.inputs[2].type.payload == b"\n\x02"
    assert str(g) == text


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('graph "g" opsets {"": 21}\n%y : f32[1] = Relu(%x)\noutput %y\n', r"line 2: value %x is used before"),
        ('graph "g" opsets {"": 21}\ninput %x : f32[1]\ninput %x : f32[1]\n', r"line 3: value %x is defined twice"),
        ('graph "g" opsets {"": 21}\ninput %x : q32[1]\n', r"line 2: unknown element type 'q32'"),
        ('graph "g" opsets {"": 21}\ninput %x : f32[1]\n%y : f32[1] = Relu(%x\noutput %y\n', r"line 3"),
        ("", r"empty text"),
    ],
)
def test_parse_errors_name_the_line(text, match):
    with pytest.raises(ParseError, match=match):
        parse(text)


def test_real_model_round_trips_through_text(digits_onnx):
    g = nasc.load(digits_onnx)
    consts = {c.name: c.data for c in g.constants}
    back = parse(str(g), consts)
    assert structural_diff(g, back) is None
    verify(back)
