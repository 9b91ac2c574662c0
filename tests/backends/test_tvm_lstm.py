"""The LSTM lowering (unrolled over the static sequence) against ONNX Runtime, in every direction."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

import nasc
from nasc.backends.fidelity import ort_session, run_ort
from nasc.errors import UnsupportedModelError

SEQ, BATCH, IN, HID = 3, 2, 5, 4


def lstm_model(direction: str = "forward", peepholes: bool = False, states: bool = True,
               outputs: tuple[str, ...] = ("y", "yh", "yc"), **attrs: object) -> onnx.ModelProto:
    rng = np.random.default_rng(len(direction) + 100 * peepholes + 1000 * states)
    d = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n) for n, s in
             (("W", (d, 4 * HID, IN)), ("R", (d, 4 * HID, HID)), ("B", (d, 8 * HID)), ("P", (d, 3 * HID)))]
    xs, ss = (SEQ, BATCH, IN), (d, BATCH, HID)
    ins = [helper.make_tensor_value_info("x", T.FLOAT, xs)]
    if states:
        ins += [helper.make_tensor_value_info(n, T.FLOAT, ss) for n in ("h0", "c0")]
    names = ["x", "W", "R", "B", "", "h0" if states else "", "c0" if states else "", "P" if peepholes else ""]
    while names[-1] == "":
        names.pop()
    all_outs = {"y": (SEQ, d, BATCH, HID), "yh": ss, "yc": ss}
    node = helper.make_node("LSTM", names, [o if o in outputs else "" for o in ("y", "yh", "yc")],
                            hidden_size=HID, direction=direction, **attrs)
    graph = helper.make_graph([node], "lstm", ins, [helper.make_tensor_value_info(o, T.FLOAT, all_outs[o])
                                                   for o in outputs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def feeds(model: onnx.ModelProto, n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


@pytest.mark.parametrize("case", [
    {"direction": "forward"},
    {"direction": "reverse", "states": False},
    {"direction": "bidirectional", "peepholes": True},
    {"direction": "bidirectional", "outputs": ("yh",)},
])
def test_lstm_matches_onnxruntime_on_cpu(case, tmp_path):
    model = lstm_model(**case)
    fs = feeds(model)
    art = nasc.compile(model, "cpu", tmp_path / "b", calib=fs, measure_latency=False)
    sess = ort_session(model)
    for f in fs:
        for got, ref in zip(art.run(f), run_ort(sess, f), strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_lstm_with_custom_activations_is_a_clear_error(tmp_path):
    model = lstm_model(activations=["Sigmoid", "Relu", "Tanh"])
    with pytest.raises(UnsupportedModelError, match="LSTM with custom activations"):
        nasc.compile(model, "cpu", tmp_path / "b", measure_latency=False)
