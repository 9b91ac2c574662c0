"""Tuning: records land in the database, a second build reuses them with zero trials, and measurement
works through TVM's RPC tracker on loopback. Budgets are tiny: these test the plumbing, not the speed."""

from __future__ import annotations

import json

import numpy as np

import nasc
from nasc.ir import parse

TINY = '''graph "tiny" opsets {"": 21}
input %x : f32[16,64]
const %w : f32[64,32] = "w"
%h : f32[16,32] = MatMul(%x, %w) #"mm"
%y : f32[16,32] = Relu(%h) #"relu"
output %y
'''


def valid_records(db) -> int:
    path = db / "database_tuning_record.json"
    return sum(1 for line in path.read_text().splitlines() if json.loads(line)[1][1][0] < 1e9)


def test_second_build_reuses_the_database_with_zero_trials(tmp_path):
    g = parse(TINY)
    db = tmp_path / "db"
    first = nasc.compile(g, "cpu", tmp_path / "a", tune_trials=4, tuning_db=db, measure_latency=False)
    t1 = first.report["build"]["tuning"]
    assert t1["tasks"] >= 1 and t1["tuned"] == t1["tasks"] and t1["trials"] >= 1
    assert valid_records(db) >= 1
    second = nasc.compile(g, "cpu", tmp_path / "b", tune_trials=4, tuning_db=db, measure_latency=False)
    t2 = second.report["build"]["tuning"]
    assert t2["trials"] == 0 and t2["tuned"] == 0 and t2["reused"] == t1["tasks"]
    assert "prescheduled" in second.report["build"]["schedules"]["templates"]  # kernels came from the records
    x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    ref = np.maximum(x @ g.find_value("w").data, 0)
    np.testing.assert_allclose(second.run({"x": x})[0], ref, rtol=1e-4, atol=1e-5)


def test_tuning_measures_through_an_rpc_tracker_on_loopback(tmp_path):
    from tvm import rpc
    from tvm.rpc.tracker import Tracker

    tracker = Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    server = rpc.Server(host="127.0.0.1", port=9300, port_end=9400, key="nasc-test",
                        tracker_addr=("127.0.0.1", tracker.port), silent=True)
    try:
        db = tmp_path / "db"
        art = nasc.compile(parse(TINY), "cpu", tmp_path / "o", tune_trials=2, tuning_db=db, measure_latency=False,
                           rpc_tracker=f"127.0.0.1:{tracker.port}", rpc_key="nasc-test")
        assert art.report["build"]["tuning"]["trials"] >= 1
        assert valid_records(db) >= 1  # measured on the RPC server
    finally:
        server.terminate()
        tracker.terminate()


def test_default_schedules_are_records_so_tuning_never_loses_to_them(tmp_path):
    # before tuning a kernel, nasc measures its default schedule with the same builder and runner and
    # stores it as a record: the database's best record per kernel is at worst the default schedule
    from tvm.s_tir import meta_schedule as ms

    from nasc.backends.tvm.schedules import default_schedule
    from nasc.backends.tvm.target import parse_target

    db = tmp_path / "db"
    art = nasc.compile(parse(TINY), "cpu", tmp_path / "a", tune_trials=2, tuning_db=db, measure_latency=False)
    facts = art.report["build"]["tuning"]
    assert facts["default_records"] == facts["tuned"] == facts["tasks"] >= 1
    target = parse_target("cpu").tvm()
    database = ms.database.JSONDatabase(work_dir=str(db))
    found = 0
    for rec in database.get_all_tuning_records():
        sch, _ = default_schedule(rec.workload.mod, target)
        if sch is not None and str(rec.trace) == str(sch.trace):
            found += 1
            assert all(float(s) < 1e9 for s in rec.run_secs)  # it built and ran
    assert found == facts["tasks"]


def _conv_model() -> tuple[nasc.ir.Graph, list[dict[str, np.ndarray]]]:
    """conv 3x3 (8 -> 16) -> ReLU -> depthwise 3x3 -> ReLU -> conv 1x1 (16 -> 16) on a 1x8x10x10 map."""
    import onnx
    from onnx import TensorProto
    from onnx import helper as h

    rng = np.random.default_rng(3)
    ws = {"w1": rng.normal(size=(16, 8, 3, 3)), "w2": rng.normal(size=(16, 1, 3, 3)), "w3": rng.normal(size=(16, 16, 1, 1))}
    nodes = [h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["a"], ["ra"]),
             h.make_node("Conv", ["ra", "w2"], ["b"], pads=[1, 1, 1, 1], group=16), h.make_node("Relu", ["b"], ["rb"]),
             h.make_node("Conv", ["rb", "w3"], ["y"])]
    graph = h.make_graph(nodes, "convs", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 10, 10])],
                         [onnx.numpy_helper.from_array((w / 4).astype(np.float32), k) for k, w in ws.items()])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])
    m.ir_version = 10
    return nasc.load(m), [{"x": rng.normal(size=(1, 8, 10, 10)).astype(np.float32)} for _ in range(6)]


def test_tuning_replays_on_channels_last_float_and_integer_convolutions(tmp_path):
    """The tuning path on the layouts the cpu build chooses: float convolutions converted to NHWC with packed
    weights, integer ones lowered NHWC (and the tensorized matmul where the host has AVX2). Records land,
    a second build replays them with zero trials, and the results stay: float against ONNX Runtime, integers
    bit for bit against the integer reference."""
    from nasc.backends import fidelity
    from nasc.backends.tvm.qint import integerize, reference_run

    g, feeds = _conv_model()
    q = nasc.optimize(g, "quantize", feeds)
    for name, model in (("float", g), ("int8", q)):
        db = tmp_path / f"db_{name}"
        first = nasc.compile(model, "cpu", tmp_path / f"{name}_a", tune_trials=8, tuning_db=db, measure_latency=False)
        t1 = first.report["build"]["tuning"]
        assert t1["tasks"] >= 2 and t1["tuned"] == t1["tasks"] and valid_records(db) >= t1["tasks"]
        second = nasc.compile(model, "cpu", tmp_path / f"{name}_b", tune_trials=8, tuning_db=db, measure_latency=False)
        t2 = second.report["build"]["tuning"]
        assert t2["trials"] == 0 and t2["reused"] == t1["tasks"]
        if name == "float":
            assert second.report["build"]["conv_layout"] == "NHWC"
            for f, r in zip(feeds, fidelity.run_graph(g, feeds)):
                np.testing.assert_allclose(second.run(f)[0], r[0], rtol=1e-4, atol=1e-4)
        else:
            assert second.report["build"]["integer"]["conv_layout"] == "NHWC"
            for f, r in zip(feeds, reference_run(integerize(q)[0], feeds)):
                np.testing.assert_array_equal(second.run(f)[0], r[0])
