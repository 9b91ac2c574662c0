"""TVM builds: numerics against ONNX Runtime, the artifact in a fresh process, CUDA codegen, clear errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.backends.fidelity import run_graph
from nasc.errors import UnsupportedModelError, UsageError

ROOT = Path(__file__).resolve().parents[2]


def test_example_cnn_builds_for_cpu_and_matches_onnxruntime(digits_onnx, tmp_path):
    test = np.load(Path(digits_onnx).with_name("digits_test.npz"))
    art = nasc.compile(digits_onnx, "cpu", tmp_path / "b", calib=[{"image": test["image"][i : i + 1]}
                                                                 for i in range(16)])
    assert art.files == ["kernels.json", "model.json", "model.so", "report.html", "report.json"]
    rep = art.report
    assert rep["fidelity"]["max_abs_err"] < 1e-4 and rep["fidelity"]["top1_agreement"] == 1.0
    assert set(rep["latency_ms"]) == {"nasc", "onnxruntime"} and rep["latency_ms"]["nasc"] > 0
    g = nasc.load(digits_onnx)
    for i in range(5):
        feed = {"image": test["image"][i : i + 1]}
        (ref,) = run_graph(g, [feed])[0]
        (got,) = art.run(feed)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert meta["inputs"] == [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32"}]


def test_artifact_loads_in_a_fresh_process_without_frontends(digits_onnx, tmp_path):
    nasc.compile(digits_onnx, "cpu", tmp_path / "b", measure_latency=False)
    # torch and the frontends are made unimportable: the runtime must not need them (tvm_ffi tries torch
    # when it is installed, and copes when it is not)
    code = f"""
import sys
sys.modules['torch'] = None
sys.modules['onnx'] = None
import numpy as np
import nasc.runtime as rt
m = rt.load({str(tmp_path / 'b')!r})
x = np.load({str(Path(digits_onnx).with_name('digits_test.npz'))!r})
print(int(np.argmax(m.run([x['image'][:1]])[0])), int(x['label'][0]))
print(sorted(k for k in ('onnxruntime', 'nasc.frontends') if k in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    pred, label = out[0].split()
    assert pred == label
    assert out[1] == "[]"


@pytest.mark.parametrize("name", ["mobilenet_v2", "minilm"])
def test_real_models_build_for_cpu(name, tmp_path):
    import torch

    from nasc.examples import zoo

    if name == "mobilenet_v2":
        photos, _ = zoo.imagenet_photos(224)
        g = nasc.from_torch(zoo.mobilenet_v2(), (torch.zeros(1, 3, 224, 224),))
        feeds = [{"x": photos[i : i + 1]} for i in range(2)]
    else:
        module, inputs = zoo.minilm(max_length=16)
        g = nasc.from_torch(module, inputs)
        feeds = [{k: v.numpy() for k, v in inputs.items()}]
    art = nasc.compile(g, "cpu", tmp_path / name, passes="simplify,fuse", measure_latency=False)
    for feed in feeds:
        (ref,) = run_graph(g, [feed])[0]
        (got,) = art.run(feed)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_gpu_build_generates_cuda_for_every_kernel(digits_onnx, tmp_path):
    art = nasc.compile(digits_onnx, "gpu:sm_90", tmp_path / "g")
    assert "kernels.cu" in art.files and art.report["fidelity"] is None
    assert any("not run" in w for w in art.report["warnings"])
    src = (tmp_path / "g" / "kernels.cu").read_text()
    kernels = set(re.findall(r'__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(', src))
    # one kernel per fused TIR function of the build: the digits CNN has 3 convs, pooling, reshape and the head
    assert len(kernels) >= 5 and any("conv2d" in k for k in kernels) and any("matmul" in k for k in kernels)
    assert json.loads((tmp_path / "g" / "model.json").read_text())["target"]["arch"] == "sm_90"


def test_op_without_lowering_is_listed_with_its_node(tmp_path):
    from onnx import TensorProto as T
    from onnx import helper

    x = helper.make_tensor_value_info("x", T.FLOAT, [3, 3])
    y = helper.make_tensor_value_info("y", T.FLOAT, [])
    m = helper.make_model(helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="det0")], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    with pytest.raises(UnsupportedModelError, match=r"no TVM lowering: Det at node 'det0'"):
        nasc.compile(m, "cpu", tmp_path / "o")
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("target", "message"), [
    ("tpu", r"unknown target 'tpu'; targets: onnx, cpu, cpu:<llvm-mcpu>, gpu, gpu:sm_XX"),
    ("gpu:ampere", r"target 'gpu:ampere': 'ampere' is not an NVIDIA architecture LLVM knows; expected gpu:sm_XX"),
    ('{"kind": "metal"}', r"JSON target kind 'metal': expected 'llvm' or 'cuda'"),
    ("{not json", r"target '\{not json' is not valid JSON"),
])
def test_unknown_targets_are_clear_errors(digits_onnx, tmp_path, target, message):
    with pytest.raises(UsageError, match=message):
        nasc.compile(digits_onnx, target, tmp_path / "o")


def test_unwritable_output_directory_is_a_clear_error(digits_onnx, tmp_path):
    """A path under a regular file cannot be created, even by root (CI runs as root)."""
    f = tmp_path / "file.txt"
    f.write_text("x")
    r = subprocess.run([sys.executable, "-m", "nasc.cli", "compile", str(digits_onnx), "--target", "cpu",
                        "-o", str(f / "out")], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot write the output directory" in r.stderr and "Traceback" not in r.stderr


def test_runtimes_are_timed_in_turns():
    """nasc bench's timing loop: every function warms up, then each round runs one block of each in turn."""
    from nasc.runtime import interleaved_ms

    calls: list[str] = []
    ms = interleaved_ms([lambda: calls.append("a"), lambda: calls.append("b")], rounds=3, repeat=4, warmup=2,
                        min_seconds=0.0)
    assert len(ms) == 2 and all(m >= 0 for m in ms)
    assert calls == ["a"] * 2 + ["b"] * 2 + (["a"] * 4 + ["b"] * 4) * 3
