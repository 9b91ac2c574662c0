"""Fixed fuzz cases: the seeds themselves, every op on every seed, and one case per bug class fuzzing found.

The seeds must inspect and compile cleanly, or the families would fuzz an error path
only. The bug-class cases are the minimized reproducers from ``tools/fuzz.py`` (listed
in docs/reliability.md), kept here so that a fix stays fixed.
"""

from __future__ import annotations

import random
from pathlib import Path

import fuzz_families  # noqa: F401  (registers every op)
import pytest
from fuzz_core import MARKER, OPS, Case, RandomDraw, materialize
from fuzz_pt2_ops import PAYLOADS
from fuzz_seeds import ONNX_SEEDS, SEEDS


def case(seed: str, argv: list[list[str]], ops: list[list] | None = None, timeout: float = 30.0) -> Case:
    return Case("regression", seed, ops or [], argv, timeout)


def compile_argv(*extra: str, out: str = "out") -> list[list[str]]:
    return [["compile", "{model}", "--target", "onnx", "-o", out], list(extra)] if extra else [
        ["compile", "{model}", "--target", "onnx", "-o", out]]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("command", ["inspect", "compile"])
def test_seed_runs_cleanly(fuzz, seed: str, command: str) -> None:
    from fuzz_seeds import _BUILDERS

    argv = [["inspect", "{model}", "--json"]] if command == "inspect" else compile_argv()
    res = fuzz.check(case(seed, [*argv, *_BUILDERS[seed][3]]))
    assert res["rc"] == 0, res["stderr"]


def test_every_op_applies_to_every_seed(fuzz, tmp_path: Path) -> None:
    """The fuzzer's own half: any op with any parameters builds a case (no op raises on any seed)."""
    seeds = fuzz.worker.seeds
    for n, (name, o) in enumerate(sorted(OPS.items())):
        targets = ["pt2"] if o.kind == "zip" else ONNX_SEEDS if o.kind == "onnx" else SEEDS
        for seed in targets:
            params = o.draw(RandomDraw(random.Random(f"{name}/{seed}")))
            materialize(case(seed, [["inspect", "{model}"]], [params]), seeds, tmp_path / f"{n}-{seed}")


# ---- the command line ----------------------------------------------------------------------------

CLI_CASES = {
    "missing -o": [["compile", "{model}"]],
    "-o ''": compile_argv(out=""),
    "-o a name too long for the file system": compile_argv(out="x" * 300),
    "-o under a file": compile_argv(out="in/model.onnx/sub"),
    "--seed -1": compile_argv("--seed", "-1"),
    "unknown flag": [["inspect", "{model}", "--nosuch"]],
    "no command": [],
    "bad --input-shape": [["inspect", "{model}", "--input-shape", "image=1x-1x8x8"]],
    "unknown pass": compile_argv("--passes", "nosuch"),
    "unknown board": [["compile", "{model}", "--target", "mcu:nosuchboard", "-o", "out"]],
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_misuse_is_one_line(fuzz, name: str) -> None:
    res = fuzz.check(case("digits", CLI_CASES[name]))
    assert res["rc"] == 2


def test_unknown_cpu_is_refused_before_building(fuzz) -> None:
    res = fuzz.check(case("digits", [["compile", "{model}", "--target", "cpu:nosuchcpu", "-o", "out"]], timeout=240))
    assert res["rc"] == 2


@pytest.mark.parametrize("kind", ["zero_samples", "wrong_shape", "wrong_name", "int", "truncated", "text", "scalar",
                                  "complex", "empty_zip"])
def test_bad_calibration_file_is_one_line(fuzz, kind: str) -> None:
    res = fuzz.check(case("digits", compile_argv("--calib", f"in/calib_{kind}.npz"), [["calib_file", {"kind": kind}]]))
    assert res["rc"] == 2


def test_failure_after_the_build_started_removes_the_parents_it_made(fuzz) -> None:
    """ONNX Runtime fails on the original model during the fidelity check, after the staging directory exists."""
    res = fuzz.check(case("digits", compile_argv(out="nested/a/b/out"), [["runtime_error", {"how": "gather_index_input"}]]))
    assert res["rc"] == 2 and not res["new_paths"]


# ---- nothing is unpickled --------------------------------------------------------------------------

PICKLE_CASES = [
    *(["pickle_sample_inputs", {"gadget": g}] for g in PAYLOADS),
    *(["pickle_weight", {"weight": 0, "gadget": g}] for g in ("exec", "torch_zip")),
    *(["pickle_constant", {"kind": k, "gadget": "exec"}] for k in ("tensor_", "opaque_obj_", "custom_obj_")),
    *(["pickle_legacy", {"which": w, "gadget": "exec"}] for w in ("weights", "constants")),
]


@pytest.mark.parametrize("op", PICKLE_CASES, ids=lambda o: f"{o[0]}-{'-'.join(map(str, o[1].values()))}")
@pytest.mark.parametrize("command", ["inspect", "compile"])
def test_pt2_pickle_payload_never_runs(fuzz, op: list, command: str) -> None:
    argv = [["inspect", "{model}"]] if command == "inspect" else compile_argv()
    res = fuzz.check(case("pt2", argv, [op]))
    assert not res["marker"], f"{MARKER} was created"


@pytest.mark.parametrize("gadget", ["exec", "path_touch"])
def test_calibration_pickle_never_runs(fuzz, gadget: str) -> None:
    res = fuzz.check(case("digits", compile_argv("--calib", "in/calib_pickle.npz"),
                          [["pickle_calibration", {"gadget": gadget}]]))
    assert res["rc"] == 2 and not res["marker"]


# ---- classes tools/fuzz.py found (docs/reliability.md lists them with their counts) ------------------------

FOUND = {
    # the ONNX loader
    "external data location with a NUL byte": ("ctrl", [["external_location", {"init": 0, "location": "weights.bin\x00x"}]]),
    "unknown external data key (onnx warns on stderr)": ("extdata", [["external_misc", {"init": 0, "how": "unknown_key"}]]),
    "invalid UTF-8 in a node name": ("digits", [["invalid_utf8", {"where": "node_name", "index": 1}]]),
    "invalid UTF-8 in an op type": ("digits", [["invalid_utf8", {"where": "op_type", "index": 1}]]),
    "invalid UTF-8 in a node domain": ("digits", [["invalid_utf8", {"where": "domain", "index": 1}]]),
    "invalid UTF-8 in the graph name": ("digits", [["invalid_utf8", {"where": "graph_name", "index": 0}]]),
    "integer division by zero while folding (numpy warns on stderr)": ("digits", [["runtime_error", {"how": "int_div_zero_const"}]]),
    # the ONNX exporter (the loader keeps the string, the export decodes it)
    "invalid UTF-8 in metadata": ("ctrl", [["invalid_utf8", {"where": "metadata", "index": 0}]]),
    # the .pt2 reader
    "a zero-size weight (torch logs a traceback)": ("pt2", [["zip_weight_meta", {"weight": 3, "field": "sizes", "value": "zero"}]]),
}


@pytest.mark.parametrize("name", list(FOUND))
@pytest.mark.parametrize("command", ["inspect", "compile"])
def test_found_class_is_one_line(fuzz, name: str, command: str) -> None:
    seed, ops = FOUND[name]
    argv = [["inspect", "{model}"]] if command == "inspect" else compile_argv()
    fuzz.check(case(seed, argv, ops))


def test_loop_with_a_huge_trip_count_does_not_hang(fuzz) -> None:
    """The fidelity check runs the original model: a Loop of 2**62 steps must be refused, not run."""
    fuzz.check(case("ctrl", compile_argv(), [["subgraph", {"how": "loop_trip_huge"}]], timeout=10))


@pytest.mark.parametrize("argv", [
    ["compile", "{model}", "-o", "out", "--input-shape", "x=99999999999999999999"],
    ["compile", "{model}", "-o", "out", "--input-shape", "x=1x1x100000x100000"],
    ["compile", "{model}", "-o", "out", "--calib", "in/calib_zero_samples.npz"],
], ids=["dim-overflows-int64", "input-of-40-GB", "calib-zero-samples"])
def test_pt2_command_line_errors_are_one_line(fuzz, argv: list[str]) -> None:
    res = fuzz.check(case("pt2", [argv], [["calib_file", {"kind": "zero_samples"}]]))
    assert res["rc"] == 2


def test_unsupported_quantization_width_is_a_usage_error(fuzz) -> None:
    res = fuzz.check(case("mixed", compile_argv("--passes", "quant-policy{bits=3}")))
    assert res["rc"] == 2


def test_model_failing_in_onnx_runtime_during_calibration_is_one_line(fuzz) -> None:
    """quantize measures activations with ONNX Runtime on nasc's graph; the model itself fails there at run time."""
    res = fuzz.check(case("digits", compile_argv("--passes", "simplify,fuse,quantize", "--allow-random-calib"),
                          [["runtime_error", {"how": "reshape_shape_input"}]]))
    assert res["rc"] == 2
