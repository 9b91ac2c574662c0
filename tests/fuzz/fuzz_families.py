"""Case families: which seeds, which ops and which command line each kind of fuzz case uses.

``FAMILIES[name].gen(draw)`` makes one :class:`fuzz_core.Case`. The command
grammar of the ``cli`` family is built from the real flags of ``nasc inspect``,
``compile`` and ``bench`` with bad values mixed in; the other families run
``inspect`` or ``compile --target onnx`` on a mutated model.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fuzz_onnx_nodes  # noqa: F401  (registers its ops)
import fuzz_onnx_ops  # noqa: F401
import fuzz_pt2_ops  # noqa: F401
import numpy as np
from fuzz_core import OPS, Case, Ctx, Draw, op, ops_of
from fuzz_seeds import _BUILDERS, ONNX_SEEDS

OUT = "model_out"  # -o for the model families: its parent (the case's directory) exists


# ---- extra files for the cli family ------------------------------------------------------------

CALIB_KINDS = ["ok", "zero_samples", "wrong_name", "wrong_shape", "int", "nan", "truncated", "text", "scalar",
               "complex", "bool", "empty_zip", "many_samples"]


def _npz(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _calib_array(kind: str, a: np.ndarray) -> Any:
    if kind == "int":
        return a.astype(np.int64)
    if kind == "nan":
        return np.full_like(a, np.nan)
    if kind == "complex":
        return a.astype(np.complex64)
    if kind == "bool":
        return a > 0
    if kind == "wrong_shape":
        return a.reshape(len(a), -1)[:, :1]
    if kind == "scalar":
        return np.float32(1)
    return a


@op("file", kind=CALIB_KINDS)
def calib_file(ctx: Ctx, kind: str) -> None:
    """``in/calib_<kind>.npz`` for the seed's inputs: good, empty, misnamed, misshapen, mistyped or not an npz."""
    rng = np.random.default_rng(0)
    inputs = ctx.seed.get("inputs", [])
    arrays: dict[str, Any] = {}
    for inp in inputs:
        shape = tuple(inp["shape"])
        n = {"zero_samples": 0, "many_samples": 20000}.get(kind, 4)
        arrays[inp["name"]] = _calib_array(kind, rng.standard_normal((n, *shape)).astype(np.float32))
    if kind == "wrong_name":
        arrays = {f"not_{k}": v for k, v in arrays.items()}
    data = {"truncated": _npz(arrays)[:50], "text": b"image,1,2,3\n", "empty_zip": _npz({})}.get(kind) or _npz(arrays)
    ctx.files[f"calib_{kind}.npz"] = data


@op("file", kind=["empty", "garbage", "as_pt2", "as_onnx", "dir_pt2", "dir_onnx", "zip_not_pt2"])
def aux_file(ctx: Ctx, kind: str) -> None:
    """Files a user might point nasc at by mistake."""
    model = ctx.model.read_bytes() if ctx.model else b""
    files: dict[str, Any] = {
        "empty": {"empty.onnx": b""},
        "garbage": {"garbage.onnx": b"this is not a model\n" * 50},
        "as_pt2": {"model_as.pt2": model},
        "as_onnx": {"model_as.onnx": model},
        "dir_pt2": {"dir.pt2/readme": b"x"},
        "dir_onnx": {"dir.onnx/readme": b"x"},
        "zip_not_pt2": {"other.pt2": _npz({"a": np.zeros(3)})},
    }[kind]
    ctx.files.update(files)


# ---- commands ------------------------------------------------------------------------------------


def model_command(d: Draw, seed: str, passes: bool = True) -> list[list[str]]:
    """``inspect`` or ``compile --target onnx`` on the seed's model, with the flags the seed needs."""
    extra = [list(g) for g in _BUILDERS[seed][3]]
    if d.chance(45):
        return [["inspect", "{model}"], *([["--json"]] if d.chance(50) else []), *extra]
    groups = [["compile", "{model}"], ["--target", "onnx"], ["-o", OUT], *extra]
    if passes and d.chance(40):
        pipeline = d.pick(["simplify", "simplify,fuse", "fuse", "simplify,fuse,quantize"])
        groups.append(["--passes", pipeline])
        if "quantize" in pipeline:
            groups.append(["--allow-random-calib"])
    return groups


BAD_MODELS = ["in/missing.onnx", "in", "in/empty.onnx", "in/garbage.onnx", "", "-", "/dev/null", "/dev/zero",
              "in/dir.pt2", "in/dir.onnx", "in/other.pt2", "in/missing.pt2", "in/model.onnx/x", "in/model_as.pt2",
              "in/model_as.onnx"]
AUX_FOR = {"in/empty.onnx": "empty", "in/garbage.onnx": "garbage", "in/dir.pt2": "dir_pt2", "in/dir.onnx": "dir_onnx",
           "in/other.pt2": "zip_not_pt2", "in/model_as.pt2": "as_pt2", "in/model_as.onnx": "as_onnx"}
OUTPUTS = ["out_dir", "nested/a/b/out", "", ".", "in/model.onnx", "in/model.onnx/sub", "/proc/nasc_fuzz", "x" * 300,
           "out dir", "in", "/", "..", "-", "nested/../out2"]
TARGETS_FAST = ["onnx", "mcu:nosuchboard", "mcu:", "{", '{"kind": "llvm", "mcpu": 5}', "", ":", "onnx:x", "ONNX",
                "mcu:cortex-m4:extra", "nosuch", '{"kind": "nosuch"}', "[]"]
TARGETS_SLOW = ["cpu:nosuchcpu", "gpu:sm_0", "cpu:", "gpu", '{"kind": "llvm"}', "mcu:stm32f411"]
PASSES = ["", "simplify", "nosuch", "simplify{x=1}", "simplify{", "fuse,,", "quantize", "quant-policy{bits=3}",
          "simplify{max-iterations=-1}", "simplify{max-iterations=99999999999999999999}", "quantize{bits=0}",
          "quantize{calib=nosuch}", "quantize{percentile=nan}", "simplify{fold=maybe}", "}", ",",
          "quant-policy{flash=-1KB}", "quant-policy{flash=1TB}", "simplify,simplify,simplify", "quantize{bits=4}",
          "quantize{act-bits=1}", "quant-policy{bits=8,4 flash=1B}", "simplify{fold=true fold=false}", "fuse{=}"]
SHAPES = ["x", "=1x2", "{input}=", "{input}=1x-1x8x8", "{input}=abc", "{input}=99999999999999999999", "nosuch=1",
          "{input}=0x1x8x8", "{input}=1x1x8x8x1", "{input}=1e3", "{input}={shape}", "{input}={shape},",
          "{input}=2x{tail}", "{input}=1x1x100000x100000", "{input}==1", " {input}={shape}"]
SCALARS = ["-1", str(1 << 64), "x", "0", "1e3", str(1 << 32), "", " 7"]


def _flag(d: Draw, cmd: str, seed: str, ops: list[list[Any]], slow: bool) -> list[str]:
    info = _BUILDERS[seed][2][0]
    shape = "x".join(map(str, info["shape"]))
    tail = "x".join(map(str, info["shape"][1:]))
    junk = ["--nosuch", "-x", "extra_positional", "--", "--json"]
    per_cmd = {
        "inspect": ["--json", "--scope-depth", "--max-tensor-size"],
        "compile": ["--target", "--passes", "--calib", "--seed", "--tune-trials", "--tuning-db", "--rpc-tracker",
                    "--rpc-key", "--print-ir-after-all", "--no-verify", "--verify", "--allow-random-calib",
                    "--no-budget-check", "-o", "--output=", "--max-tensor-size"],
        "bench": ["--target", "--passes", "--calib", "--tune-trials"],
    }.get(cmd, [])
    flag = d.pick(junk) if d.chance(10) else d.pick(["--input-shape", *per_cmd])
    if flag == "--input-shape":
        return [flag, d.pick(SHAPES).format(input=info["name"], shape=shape, tail=tail)]
    if flag == "--target":
        return [flag, d.pick(TARGETS_FAST + (TARGETS_SLOW if slow else []))]
    if flag == "--passes":
        return [flag, d.pick(PASSES)]
    if flag == "--calib":
        kind = d.pick([*CALIB_KINDS, "pickle", "missing", "dir"])
        if kind == "pickle":
            ops.append(OPS["pickle_calibration"].draw(d))
            return [flag, "in/calib_pickle.npz"]
        if kind in ("missing", "dir"):
            return [flag, {"missing": "in/missing.npz", "dir": "in"}[kind]]
        ops.append(["calib_file", {"kind": kind}])
        return [flag, f"in/calib_{kind}.npz"]
    if flag in ("--seed", "--tune-trials", "--scope-depth"):
        return [flag, d.pick(SCALARS)]
    if flag == "--max-tensor-size":
        return [flag, d.pick(["0", "-1", "1K", "1", "abc", "1E", "1.5T", "", "99999999999999999999999G", "64 MiB"])]
    if flag == "--tuning-db":
        return [flag, d.pick(["in/model.onnx", "/proc/nasc_fuzz", "tdb", ""])]
    if flag == "--rpc-tracker":
        return [flag, d.pick(["nohost", "host:port", ":", "localhost:1", ""])]
    if flag == "--rpc-key":
        return [flag, d.pick(["", "key"])]
    if flag == "--verify":
        return [flag, d.pick(["bogus", "qemu", "none", "host,qemu", "", "host"])]
    if flag == "-o":
        return [d.pick(["-o", "--output"]), d.pick(OUTPUTS)]
    if flag == "--output=":
        return [f"--output={d.pick(OUTPUTS)}"]
    if flag == "--":
        return ["--", d.pick(["{model}", "-o"])]
    return [flag]


def cli_case(d: Draw, slow: bool = False, family: str = "cli") -> Case:
    """A command line from the grammar of the real flags, with bad values and missing or extra parts."""
    seed = d.pick(["digits", "digits", "dynamic", "pt2", "mixed"])
    cmd = d.pick(["inspect", "inspect", "compile", "compile", "compile", "compile", "bench", "passes", "", "nosuch",
                  "--help"])
    ops: list[list[Any]] = []
    groups: list[list[str]] = [[cmd]] if cmd else []
    if cmd in ("inspect", "compile", "bench", "nosuch") and d.chance(95):
        model = d.pick(BAD_MODELS) if cmd == "bench" or d.chance(25) else "{model}"
        if model in AUX_FOR:
            ops.append(["aux_file", {"kind": AUX_FOR[model]}])
        groups.append([model])
        if model == "{model}":
            groups += [list(g) for g in _BUILDERS[seed][3]]
    if cmd == "compile" and d.chance(85):
        groups.append(["-o", d.pick(OUTPUTS) if d.chance(40) else "out_dir"])
    if cmd == "bench":
        groups.append(["--target", d.pick(TARGETS_FAST)])
    for _ in range(d.int(0, 4)):
        groups.append(_flag(d, cmd, seed, ops, slow))
    return Case(family, seed, ops, groups, timeout=240.0 if slow else 30.0)


# ---- families ------------------------------------------------------------------------------------

# ops that make sense on every ONNX seed (subgraph and external-data ops have families of their own)
_SUB_OPS = {"subgraph"}
_EXT_OPS = {"external_location", "external_range", "external_misc"}
STRUCT_OPS = [n for n in ops_of("onnx") if n not in _SUB_OPS | _EXT_OPS]
ZIP_OPS = [n for n in ops_of("zip") if not n.startswith("pickle_")]
PICKLE_OPS = [n for n in ops_of("zip") if n.startswith("pickle_")]
GENERIC_ON_SUBGRAPHS = ["undefined_input", "cycle", "bad_attribute", "drop_attribute", "rename_op", "arity",
                        "duplicate_output", "value_info_conflict", "node_domain"]


def _ops(d: Draw, names: list[str], lo: int, hi: int) -> list[list[Any]]:
    return [OPS[d.pick(names)].draw(d) for _ in range(d.int(lo, hi))]


def bytes_case(d: Draw) -> Case:
    seed = d.pick([*ONNX_SEEDS, "pt2"])
    byte_ops = [n for n in ops_of("bytes") if n != "truncate"]
    return Case("bytes", seed, _ops(d, byte_ops, 1, 4), model_command(d, seed, passes=False))


def truncate_case(d: Draw) -> Case:
    seed = d.pick([*ONNX_SEEDS, "pt2"])
    return Case("truncate", seed, [OPS["truncate"].draw(d)], model_command(d, seed, passes=False))


def structure_case(d: Draw) -> Case:
    seed = d.pick(["digits", "digits", "mixed", "mixed", "ctrl", "dynamic"])
    return Case("onnx-structure", seed, _ops(d, STRUCT_OPS, 1, 3), model_command(d, seed))


def subgraph_case(d: Draw) -> Case:
    ops = [OPS["subgraph"].draw(d)] if d.chance(70) else []
    for _ in range(d.int(0 if ops else 1, 2)):
        o = OPS[d.pick(GENERIC_ON_SUBGRAPHS)].draw(d)
        if "graph" in o[1]:
            o[1]["graph"] = d.int(1, 4)  # a subgraph, not the main graph
        ops.append(o)
    return Case("onnx-subgraph", "ctrl", ops, model_command(d, "ctrl"))


def external_case(d: Draw) -> Case:
    seed = d.pick(["extdata", "extdata", "extdata", "digits", "ctrl"])
    return Case("external-data", seed, _ops(d, sorted(_EXT_OPS), 1, 2), model_command(d, seed, passes=False))


def pt2_archive_case(d: Draw) -> Case:
    ops = _ops(d, ZIP_OPS, 1, 3)
    return Case("pt2-archive", "pt2", ops, model_command(d, "pt2", passes=False))


def pt2_pickle_case(d: Draw) -> Case:
    ops = [OPS[d.pick(PICKLE_OPS)].draw(d), *_ops(d, ZIP_OPS, 0, 1)]
    return Case("pt2-pickle", "pt2", ops, model_command(d, "pt2", passes=False))


def targets_case(d: Draw) -> Case:
    """Slow: real builds for the cpu and mcu targets of (mostly valid) models."""
    seed = d.pick(["digits", "mixed", "ctrl", "pt2", "extdata"])
    ops = _ops(d, ["weight_data", "input_dim", "cast_to", "shape_op", "gather_out_of_range"], 0, 1) if seed != "pt2" else []
    target = d.pick([["--target", "cpu"], ["--target", "mcu", "--verify", "none"], ["--target", "mcu"],
                     ["--target", "mcu:stm32f411", "--verify", "none"], ["--target", "cpu:nosuchcpu"]])
    argv = [["compile", "{model}"], target, ["-o", OUT], *[list(g) for g in _BUILDERS[seed][3]]]
    if d.chance(40):
        argv.append(["--passes", d.pick(["simplify,fuse", "simplify,fuse,quantize"])])
        argv.append(["--allow-random-calib"])
    return Case("targets", seed, ops, argv, timeout=240.0)


@dataclass(frozen=True)
class Family:
    gen: Callable[[Draw], Case]
    weight: int  # share of tools/fuzz.py's cases
    ci_examples: int  # hypothesis examples in the CI slice


FAMILIES: dict[str, Family] = {
    "bytes": Family(bytes_case, 16, 20),
    "truncate": Family(truncate_case, 8, 12),
    "onnx-structure": Family(structure_case, 24, 40),
    "onnx-subgraph": Family(subgraph_case, 10, 30),
    "external-data": Family(external_case, 8, 25),
    "pt2-archive": Family(pt2_archive_case, 10, 8),
    "pt2-pickle": Family(pt2_pickle_case, 6, 12),
    "cli": Family(lambda d: cli_case(d, slow=False), 14, 40),
    "cli-slow": Family(lambda d: cli_case(d, slow=True, family="cli-slow"), 2, 0),
    "targets": Family(targets_case, 2, 0),
}
