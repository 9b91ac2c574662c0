"""Every misuse of the `nasc` command ends in exit 2 with one `nasc: error:` line that names the culprit and
what to do, and leaves nothing on disk: bad command lines, output paths, numbers, targets and calibration files.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import nasc

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODEL = str(EXAMPLES / "digits_cnn.onnx")


def nasc_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasc.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def tree(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def images(n: int, dtype: type = np.float32) -> np.ndarray:
    return np.zeros((n, 1, 1, 8, 8), dtype)


def calib(**arrays: np.ndarray) -> Callable[[Path], None]:
    return lambda d: np.savez(d / "c.npz", **arrays)


def with_value(index: tuple[int, ...], value: float) -> np.ndarray:
    a = images(4)
    a[index] = value
    return a


def two_input_model(d: Path) -> None:
    from onnx import TensorProto as T
    from onnx import helper

    a, b = (helper.make_tensor_value_info(n, T.FLOAT, [1, 4]) for n in "ab")
    y = helper.make_tensor_value_info("y", T.FLOAT, [1, 4])
    m = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y]),
                          opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    onnx.save(m, str(d / "add.onnx"))
    np.savez(d / "c.npz", a=np.zeros((3, 1, 4), np.float32), b=np.zeros((4, 1, 4), np.float32))


def a_file(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text("not a build")


def a_dir_with(name: str) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / name).mkdir()
        (d / name / "notes.txt").write_text("mine")

    return make


COMPILE = ("compile", MODEL, "-o", "out/sub/build")
JSON_CPU = '{"kind": "llvm", "mcpu": "bogus"}'

# (id, command line, setup of the working directory or None, what the one error line must contain)
CASES = [
    # the command line itself: argparse errors as one line, no usage block
    ("no-command", (), None, ["COMMAND", "'nasc --help'"]),
    ("unknown-command", ("frob",), None, ["'frob'", "'nasc --help'"]),
    ("missing-output", ("compile", MODEL), None, ["-o/--output", "'nasc compile --help'"]),
    ("missing-model", ("compile", "-o", "out"), None, ["model", "'nasc compile --help'"]),
    ("unknown-option", (*COMPILE, "--bogus"), None, ["--bogus"]),
    ("bad-int", (*COMPILE, "--seed", "abc"), None, ["--seed", "'abc'"]),
    ("scope-depth", ("inspect", MODEL, "--scope-depth", "-1"), None, ["--scope-depth", "-1", ">= 1"]),
    # numbers and shapes
    ("negative-seed", (*COMPILE, "--seed", "-1"), None, ["--seed -1", ">= 0"]),
    ("negative-tune-trials", (*COMPILE, "--target", "cpu", "--tune-trials", "-5"), None,
     ["--tune-trials -5", ">= 0"]),
    ("zero-dim", (*COMPILE, "--input-shape", "image=0x1x8x8"), None, ["image=0x1x8x8", ">= 1"]),
    ("negative-dim", (*COMPILE, "--input-shape", "image=-1x1x8x8"), None, ["image=-1x1x8x8", ">= 1"]),
    ("dim-over-int64", (*COMPILE, "--input-shape", "image=99999999999999999999x1x8x8"), None,
     ["image=99999999999999999999x1x8x8", "<= 2147483647", "got 99999999999999999999"]),
    # pass options: checked when the pipeline is read, naming the pass, option, value and the valid values
    ("quant-policy-bits", (*COMPILE, "--passes", "quant-policy{bits=3}"), None,
     ["pass 'quant-policy'", "bits=3", "8 and 4"]),
    ("quantize-bits", (*COMPILE, "--passes", "quantize{bits=16}"), None, ["pass 'quantize'", "bits=16", "8 or 4"]),
    ("quantize-calib", (*COMPILE, "--passes", "quantize{calib=foo}"), None,
     ["pass 'quantize'", "calib='foo'", "minmax, percentile or mse"]),
    ("quantize-percentile", (*COMPILE, "--passes", "quantize{percentile=nan}"), None,
     ["pass 'quantize'", "percentile=nan", "(0, 100]"]),
    ("quantize-keep-float", (*COMPILE, "--passes", "quantize{keep-float=conv(}"), None,
     ["pass 'quantize'", "keep-float='conv('", "regular expression"]),
    ("quant-policy-negative-flash", (*COMPILE, "--passes", "quant-policy{flash=-1KB}"), None,
     ["pass 'quant-policy'", "'flash'", "'-1KB'"]),
    ("quant-policy-zero-sram", (*COMPILE, "--passes", "quant-policy{sram=0}"), None,
     ["pass 'quant-policy'", "sram=0", "positive size"]),
    ("simplify-iterations", (*COMPILE, "--passes", "simplify{max-iterations=-1}"), None,
     ["pass 'simplify'", "max-iterations=-1", ">= 1"]),
    # the output directory
    ("empty-output", ("compile", MODEL, "-o", ""), None, ["''", "-o build"]),
    ("output-is-cwd", ("compile", MODEL, "-o", "."), None, ["current directory", "-o build"]),
    ("output-is-a-file", ("compile", MODEL, "-o", "taken"), a_file("taken"), ["'taken'", "is a file"]),
    ("output-under-a-file", ("compile", MODEL, "-o", "taken/out"), a_file("taken"),
     ["cannot write the output directory 'taken/out'", "is a file"]),
    ("output-holds-other-files", ("compile", MODEL, "-o", "mine"), a_dir_with("mine"),
     ["'mine'", "notes.txt", "would delete"]),
    # targets: names checked against TVM's LLVM, and no TVM log lines
    ("unknown-cpu", (*COMPILE, "--target", "cpu:nosuchcpu"), None,
     ["'nosuchcpu'", "valid -mcpu names include", "haswell", "more (python -m nasc.backends.tvm.target"]),
    ("misspelt-cpu", (*COMPILE, "--target", "cpu:haswel"), None, ["'haswel'", "did you mean haswell"]),
    ("json-unknown-cpu", (*COMPILE, "--target", JSON_CPU), None, ["'bogus'", "valid -mcpu names"]),
    ("json-unknown-option", (*COMPILE, "--target", '{"kind": "llvm", "bogus": 1}'), None,
     ["Unknown config option 'bogus'", "mcpu"]),
    ("json-foreign-triple", (*COMPILE, "--target", '{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}'), None,
     ["aarch64-linux-gnu", "cross-compiling"]),
    ("json-cuda-without-arch", (*COMPILE, "--target", '{"kind": "cuda"}'), None, ['"arch"', "sm_80"]),
    ("gpu-arch-number", (*COMPILE, "--target", "gpu:sm_1"), None, ["'sm_1'", "sm_90"]),
    ("gpu-arch-name", (*COMPILE, "--target", "gpu:foo"), None, ["'foo'", "sm_90"]),
    # calibration files
    ("calib-no-samples", (*COMPILE, "--calib", "c.npz"), calib(image=images(0)), ["'c.npz'", "no samples"]),
    ("calib-extra-array", (*COMPILE, "--calib", "c.npz"), calib(image=images(4), imgae=images(4)),
     ["['imgae']", "not model inputs", "['image']"]),
    ("calib-dtype", (*COMPILE, "--calib", "c.npz"), calib(image=images(4, np.int32)),
     ["'image'", "int32", "astype(np.float32)"]),
    ("calib-nan", (*COMPILE, "--calib", "c.npz"), calib(image=with_value((1, 0, 0, 2, 3), np.nan)),
     ["'image'", "NaN", "sample 1"]),
    ("calib-inf", (*COMPILE, "--calib", "c.npz"), calib(image=with_value((2, 0, 0, 0, 0), -np.inf)),
     ["'image'", "inf", "sample 2"]),
    ("calib-labels", (*COMPILE, "--calib", "c.npz"), calib(image=images(4), label=np.zeros(3, np.int64)),
     ["'label'", "3 label(s) for 4 samples"]),
    ("calib-missing-file", (*COMPILE, "--calib", "nope.npz"), None, ["'nope.npz'", "does not exist"]),
    ("calib-directory", (*COMPILE, "--calib", "data"), lambda d: (d / "data").mkdir(),
     ["'data'", "is a directory"]),
    ("calib-counts-differ", ("compile", "add.onnx", "-o", "out/sub/build", "--calib", "c.npz"), two_input_model,
     ["'a' has 3", "'b' has 4"]),
    # options that belong to other targets or commands
    ("verify-without-mcu", (*COMPILE, "--verify", "qemu"), None, ["--verify", "mcu"]),
    ("bench-onnx-target", ("bench", MODEL, "--target", "onnx"), None, ["bench --target onnx", "cpu"]),
    ("bench-negative-tune-trials", ("bench", MODEL, "--tune-trials", "-1"), None, ["--tune-trials -1", ">= 0"]),
]


@pytest.mark.parametrize(("args", "setup", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_misuse_is_one_error_line_exit_2_and_nothing_written(tmp_path, args, setup, expected):
    if setup is not None:
        setup(tmp_path)
    before = tree(tmp_path)
    r = nasc_cmd(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("nasc: error: ") and r.stderr.count("\n") == 1, r.stderr
    for text in expected:
        assert text in r.stderr, (text, r.stderr)
    assert tree(tmp_path) == before  # no output, staging or parent directory left behind


@pytest.mark.parametrize("cpu", ["nosuchcpu", "haswel"])
def test_an_unknown_cpu_error_is_short_and_names_the_host_and_close_names(tmp_path, cpu):
    """LLVM knows ~130 x86 names: the error shows the common ones and how to list the rest, not all of them."""
    from nasc.backends.tvm.target import host_cpu

    r = nasc_cmd(*COMPILE, "--target", f"cpu:{cpu}", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert len(r.stderr) < 600, r.stderr
    assert f"this host is {host_cpu()}" in r.stderr
    assert ("did you mean haswell?" in r.stderr) == (cpu == "haswel")
    assert "i486" not in r.stderr  # one of the names left out


FAILING_BUILD = """
import signal, sys, time
import nasc.backends.targets
from nasc.errors import ExportError

def build(*args, **kwargs):
    if sys.argv[1] == "fail":
        raise ExportError("the build failed")
    for _ in range(1200):  # until a signal arrives (short sleeps: another thread may take the signal)
        time.sleep(0.1)

nasc.backends.targets.OnnxTarget.build = build  # the default target's
# a shell starts background jobs with SIGINT ignored (CI may run us so): take it as a terminal would deliver it
signal.signal(signal.SIGINT, signal.default_int_handler)
from nasc.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_failed_build_removes_the_parent_directories_it_created(tmp_path):
    r = subprocess.run([sys.executable, "-c", FAILING_BUILD, "fail", "compile", MODEL, "-o", "a/b/c"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and r.stderr == "nasc: error: the build failed\n", r.stderr
    assert tree(tmp_path) == set()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_interrupted_build_leaves_nothing_behind(tmp_path, sig, code):
    p = subprocess.Popen([sys.executable, "-c", FAILING_BUILD, "wait", "compile", MODEL, "-o", "a/b/c"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not [q for q in (tmp_path / "a" / "b").glob(".c.*")]:  # the staging directory: the build is under way
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    # The signal is sent again every few seconds until the process ends: once in two clean-clone CI runs the child
    # outlived one SIGTERM (never reproduced here); what this test holds is the cleanup, and the note says so.
    err = ""
    for _ in range(20):
        p.send_signal(sig)
        try:
            _, err = p.communicate(timeout=3)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        p.kill()
        _, err = p.communicate()
        pytest.fail(f"the build did not stop on {sig!r} within 60 s; stderr: {err}")
    assert p.returncode == code, err
    assert "Traceback" not in err and err.count("\n") <= 1
    assert tree(tmp_path) == set()


def test_a_previous_build_is_replaced_whole_and_says_so(tmp_path):
    first = nasc_cmd("compile", MODEL, "-o", "b", "--seed", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = nasc_cmd("compile", MODEL, "-o", "b", "--seed", "2", cwd=tmp_path)
    assert second.returncode == 0 and second.stderr == "", second.stderr
    assert "replacing the previous build in b/" in second.stdout
    assert tree(tmp_path) == {"b", "b/model.onnx", "b/report.html", "b/report.json"}
    assert '"seed": 2' in (tmp_path / "b" / "report.json").read_text()


def test_debug_is_accepted_after_the_command_and_help_still_prints_usage(tmp_path):
    r = nasc_cmd("compile", MODEL, "-o", "b", "--debug", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    h = nasc_cmd("compile", "--help", cwd=tmp_path)
    assert h.returncode == 0 and h.stdout.startswith("usage: nasc compile") and "--output" in h.stdout


def test_gpu_build_runs_only_on_a_cuda_device(tmp_path):
    """A --target gpu build generates CUDA code on any host; running it needs a GPU of its architecture: without
    one, a DeviceError that says so; on an H100 (sm_90), the outputs of ONNX Runtime."""
    from nasc import runtime
    from nasc.backends.tvm.target import gpu_unavailable

    art = nasc.compile(MODEL, "gpu:sm_90", tmp_path / "g", measure_latency=False)
    assert (tmp_path / "g" / "kernels.cu").is_file()
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    why = gpu_unavailable("sm_90")
    if why is None:
        from nasc.backends.fidelity import ort_session, run_ort

        (ref,) = run_ort(ort_session(MODEL), {"image": x})
        (got,) = art.run({"image": x})
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
        assert art.report["fidelity"]["max_abs_err"] < 1e-4
        return
    message = f"'{tmp_path / 'g'}' is a build for an NVIDIA GPU (sm_90); {why}: run it on a machine with one"
    with pytest.raises(nasc.DeviceError) as e:
        art.run({"image": x})
    assert str(e.value) == message
    with pytest.raises(nasc.DeviceError):
        runtime.load(tmp_path / "g")
    assert any("not run" in w and why in w for w in art.report["warnings"]) and art.report["fidelity"] is None
