"""A tampered .pt2 or .npz never runs code: each way torch's loader would unpickle an object is refused with a
`nasc: error:` that names the member.

Every archive here is a real `torch.export.save` of a small module with members rewritten the way an
attacker would; each payload runs `touch MARKER` when unpickled, so a marker file on disk means code ran.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nasc.cli import main
from nasc.errors import ModelLoadError
from nasc.frontends import pt2_archive
from nasc.frontends.torch import read_pt2


class _Payload:
    """Unpickles as ``os.system("touch MARKER")``: stands for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., int], tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class _Net(nn.Module):
    """A parameter (raw weight member), a buffer and a lifted constant (raw constant member)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("shift", torch.tensor([0.5, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.shift + torch.tensor([1.0, 2.0])


@pytest.fixture(scope="module")
def legit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = _Net().eval()
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(1, 3),)), str(path))
    ep = read_pt2(path)  # the untampered archive loads, so each refusal below is the tampering's doing
    x = torch.randn(1, 3)
    torch.testing.assert_close(ep.module()(x), net(x), rtol=0, atol=0)
    return path


def _torch_save(obj: object, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=protocol)
    return buf.getvalue()


def _rewrite(src: Path, dst: Path, edits: dict[str, bytes | Callable[[bytes], bytes] | None]) -> None:
    """Copy the archive ``src`` to ``dst``; ``edits`` maps a member (without the archive's folder) to new bytes,
    a function of the old bytes, or None to drop it; members that ``src`` lacks are added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        folder = zin.namelist()[0].split("/", 1)[0]
        for name in zin.namelist():
            member = name.split("/", 1)[1]
            edit = edits.get(member, zin.read(name))
            data = edit(zin.read(name)) if callable(edit) else edit
            if data is not None:
                zout.writestr(name, data)
        for member, data in edits.items():
            if f"{folder}/{member}" not in zin.namelist():
                assert isinstance(data, bytes)
                zout.writestr(f"{folder}/{member}", data)


def _config(fqn_index: int, **entry: object) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        config = json.loads(data)
        fqn = list(config["config"])[fqn_index]
        config["config"][fqn].update(entry)
        return json.dumps(config).encode()

    return edit


def _old_format(legit: Path, dst: Path, marker: Path) -> None:
    """The pre-2.7 layout, which torch.export.load still reads (unpickling with a weights_only=False fallback)."""
    from torch._export.serde.schema import SCHEMA_VERSION

    with zipfile.ZipFile(legit) as zin, zipfile.ZipFile(dst, "w") as zout:
        folder = zin.namelist()[0].split("/", 1)[0]
        zout.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        zout.writestr("serialized_exported_program.json", zin.read(f"{folder}/models/model.json"))
        zout.writestr("serialized_state_dict.pt", _torch_save(_Payload(marker)))
        zout.writestr("serialized_constants.pt", _torch_save({}))
        zout.writestr("serialized_example_inputs.pt", zin.read(f"{folder}/data/sample_inputs/model.pt"))


# kind -> (edits given the marker, the member the error must name). Each is a way torch 2.13's loader unpickles.
TAMPERINGS: dict[str, tuple[Callable[[Path], dict[str, bytes | Callable[[bytes], bytes] | None]], str]] = {
    # torch.load(weights_only=True) refuses the payload, then deserialize_torch_artifact retries weights_only=False
    "weights-only fallback": (lambda m: {"data/sample_inputs/model.pt": _torch_save(((_Payload(m),), {}))},
                              "data/sample_inputs/model.pt"),
    "weights-only fallback, protocol 4": (
        lambda m: {"data/sample_inputs/model.pt": _torch_save(((_Payload(m),), {}), protocol=4)},
        "data/sample_inputs/model.pt"),
    # a payload marked use_pickle is read with torch.load(weights_only=False)
    "use_pickle weight": (lambda m: {"data/weights/model_weights_config.json": _config(0, use_pickle=True),
                                     "data/weights/weight_0": _torch_save(_Payload(m))},
                          "data/weights/weight_0"),
    # an opaque constant is read with pickle.loads
    "opaque constant": (lambda m: {"data/constants/model_constants_config.json":
                                   _config(0, path_name="opaque_obj_0", use_pickle=True, tensor_meta=None),
                                   "data/constants/tensor_0": None,
                                   "data/constants/opaque_obj_0": pickle.dumps(_Payload(m))},
                        "data/constants/opaque_obj_0"),
    # a custom object constant is read with TorchScript's unpickler
    "custom object constant": (lambda m: {"data/constants/model_constants_config.json":
                                          _config(0, path_name="custom_obj_0", use_pickle=True, tensor_meta=None),
                                          "data/constants/tensor_0": None,
                                          "data/constants/custom_obj_0": pickle.dumps(_Payload(m))},
                               "data/constants/custom_obj_0"),
    # a raw pickle as the legacy weights member: its bytes go to torch.load, and on to the fallback
    "raw pickle member": (lambda m: {"data/weights/model.pt": pickle.dumps(_Payload(m))}, "data/weights/model.pt"),
    # a config entry that points a 'raw tensor' at the legacy weights member, to have it skipped
    "raw tensor at a pickled member": (
        lambda m: {"data/weights/model_weights_config.json": _config(0, path_name="model.pt"),
                   "data/weights/model.pt": _torch_save(_Payload(m))},
        "data/weights/model.pt"),
    # a member this torch does not read: a newer loader might
    "unknown member": (lambda m: {"data/future/state.pt": _torch_save(_Payload(m))}, "data/future/state.pt"),
    # native code the loader would dlopen
    "AOTInductor library": (lambda m: {"data/aotinductor/model/model.so": b"\x7fELF"}, "data/aotinductor/model/model.so"),
}


def _tampered(legit: Path, tmp_path: Path, kind: str) -> tuple[Path, Path, str]:
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt2"
    if kind == "old format":
        _old_format(legit, evil, marker)
        return evil, marker, "serialized_exported_program.json"
    edits, member = TAMPERINGS[kind]
    _rewrite(legit, evil, edits(marker))
    return evil, marker, member


KINDS = [*TAMPERINGS, "old format"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_tampered_pt2_is_refused_naming_the_member(legit, tmp_path, kind):
    evil, marker, member = _tampered(legit, tmp_path, kind)
    with pytest.raises(ModelLoadError) as e:
        read_pt2(evil)
    assert not marker.exists(), "the payload ran"
    assert f"member '{member}'" in str(e.value)


def test_an_archive_saved_with_pickle_protocol_4_is_refused_with_the_fix(tmp_path):
    """torch's weights-only unpickler cannot read protocol 4, so torch would load it only by unpickling freely."""
    path = tmp_path / "p4.pt2"
    torch.export.save(torch.export.export(_Net().eval(), (torch.randn(1, 3),)), str(path), pickle_protocol=4)
    with pytest.raises(ModelLoadError, match=r"member 'data/sample_inputs/model.pt' \(its data.pkl\) uses the pickle "
                                             r"opcode FRAME.*save it again with torch.export.save's default pickle_protocol"):
        read_pt2(path)


@pytest.mark.parametrize("kind", ["weights-only fallback", "use_pickle weight", "opaque constant",
                                  "raw pickle member"])
def test_the_loader_runs_with_unpickling_refused(legit, tmp_path, monkeypatch, kind):
    """The second layer alone: with the member check switched off, torch's loader still unpickles nothing."""
    evil, marker, _ = _tampered(legit, tmp_path, kind)
    monkeypatch.setattr(pt2_archive, "check_archive", lambda f, path: None)
    with pytest.raises(ModelLoadError, match=r"the loader tried to unpickle '(posix|os)\.system' from a member"):
        read_pt2(evil)
    assert not marker.exists(), "the payload ran"


def _cli_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(list(args))
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("kind", KINDS)
def test_the_cli_refuses_a_tampered_pt2(legit, tmp_path, capsys, kind):
    evil, marker, member = _tampered(legit, tmp_path, kind)
    out = tmp_path / "out"
    for args in (["inspect", str(evil)], ["compile", str(evil), "--target", "onnx", "-o", str(out)]):
        rc, err = _cli_in_process(capsys, *args)
        assert (rc, err.count("\n")) == (2, 1) and err.startswith("nasc: error: "), err
        assert member in err
    assert not marker.exists(), "the payload ran"
    assert not out.exists()


@pytest.mark.parametrize("command", ["inspect", "compile"])
def test_nasc_as_a_process_refuses_a_pickled_constant(legit, tmp_path, command):
    evil, marker, member = _tampered(legit, tmp_path, "opaque constant")
    out = tmp_path / "out"
    args = [str(evil)] + (["--target", "onnx", "-o", str(out)] if command == "compile" else [])
    r = subprocess.run([sys.executable, "-m", "nasc.cli", command, *args], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("nasc: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert f"member '{member}'" in r.stderr
    assert not marker.exists() and not out.exists()


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # savez pickles object arrays
    return path


def _calib_cases(tmp_path: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """name -> (.npz, what the error must say)."""
    x = np.random.default_rng(0).standard_normal((4, 1, 3)).astype(np.float32)
    good = _npz(tmp_path / "good.npz", x=x)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    at = corrupt.index(b"\x93NUMPY") + 140  # inside x's values: the zip's CRC no longer matches
    corrupt[at:at + 8] = b"\xff" * 8
    (tmp_path / "corrupt.npz").write_bytes(bytes(corrupt))
    payload = np.array([_Payload(marker)] * 4, dtype=object)
    return {
        "pickled input": (_npz(tmp_path / "obj.npz", x=payload), "array 'x' in"),
        "pickled labels": (_npz(tmp_path / "objlabel.npz", x=x, label=payload), "array 'label' in"),
        "truncated": (truncated, "is not a readable .npz"),
        "corrupt member": (tmp_path / "corrupt.npz", "array 'x' in"),
    }


@pytest.mark.parametrize("case", ["pickled input", "pickled labels", "truncated", "corrupt member"])
def test_a_bad_calibration_npz_is_a_user_error(legit, tmp_path, capsys, case):
    marker = tmp_path / "MARKER"
    npz, says = _calib_cases(tmp_path, marker)[case]
    out = tmp_path / "out"
    rc, err = _cli_in_process(capsys, "compile", str(legit), "--target", "onnx", "-o", str(out), "--calib", str(npz))
    assert (rc, err.count("\n")) == (2, 1) and err.startswith("nasc: error: "), err
    assert says in err and npz.name in err
    assert not marker.exists(), "the payload ran"
    assert not out.exists()


# ---- malformed or oversized inputs: one error line, no torch log, nothing allocated -----------------


def _nasc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasc.cli", *args], capture_output=True, text=True, timeout=300)


def _zero_sizes(data: bytes) -> bytes:
    config = json.loads(data)
    entry = next(iter(config["config"].values()))
    entry["tensor_meta"]["sizes"] = [{"as_int": 0} for _ in entry["tensor_meta"]["sizes"]]
    return json.dumps(config).encode()


@pytest.mark.parametrize("command", ["inspect", "compile"])
def test_a_weight_of_size_zero_is_one_error_line_without_torch_log(legit, tmp_path, command):
    """torch's fake-tensor propagation logs a traceback for the op that then fails; nasc reports the failure."""
    bad = tmp_path / "zero.pt2"
    _rewrite(legit, bad, {"data/weights/model_weights_config.json": _zero_sizes})
    out = tmp_path / "out"
    r = _nasc(command, str(bad), *(["--target", "onnx", "-o", str(out)] if command == "compile" else []))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("nasc: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert not out.exists()


def test_a_clean_pt2_compile_writes_nothing_on_stderr(legit, tmp_path):
    """No FutureWarning from torch's own internals (treespec LeafSpec) on a successful run."""
    r = _nasc("compile", str(legit), "--target", "onnx", "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


class _Rows(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.fixture(scope="module")
def dynamic_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "rows.pt2"
    rows = torch.export.Dim("rows", min=1, max=1 << 40)
    ep = torch.export.export(_Rows().eval(), (torch.zeros(4, 3),), dynamic_shapes={"x": {0: rows}})
    torch.export.save(ep, str(path))
    return path


def test_input_shapes_over_the_tensor_limit_are_refused_before_torch(dynamic_rows):
    import nasc
    from nasc.errors import ShapeError

    with pytest.raises(ShapeError, match=r"input 'x'.*x=2000000000x3.*22\.4 GiB, over the limit of 16\.0 GiB.*"
                                         r"max_tensor_bytes="):
        nasc.load(dynamic_rows, {"x": (2_000_000_000, 3)})
    with pytest.raises(ShapeError, match=r"over the limit of 1\.0 KiB"):
        nasc.load(dynamic_rows, {"x": (100, 3)}, max_tensor_bytes=1024)


def test_input_shapes_are_specialised_without_allocating_the_inputs(dynamic_rows):
    """22 GiB of input, allowed by a raised limit: torch.export sees fake tensors, so nothing is allocated."""
    import nasc

    g = nasc.load(dynamic_rows, {"x": (2_000_000_000, 3)}, max_tensor_bytes=1 << 40)
    assert g.inputs[0].type.shape == (2_000_000_000, 3)
    assert nasc.load(dynamic_rows, {"x": (7, 3)}).outputs[0].type.shape == (7, 2)


@pytest.mark.parametrize("dim", [99999999999999999999, 2**31, 0, -1])
def test_input_shape_dims_out_of_range_are_a_usage_error(dynamic_rows, dim):
    import nasc
    from nasc.errors import UsageError
    from nasc.frontends.torch import load_pt2

    for load in (nasc.load, load_pt2):
        with pytest.raises(UsageError, match=rf"x={dim}x3: dims must be integers >= 1 and <= 2147483647, got {dim}"):
            load(dynamic_rows, {"x": (dim, 3)})


@pytest.mark.parametrize("shape", ["99999999999999999999x3", "1x1x100000x100000"])
def test_the_cli_refuses_an_input_shape_out_of_range_in_one_line(legit, tmp_path, capsys, shape):
    rc, err = _cli_in_process(capsys, "compile", str(legit), "--target", "onnx", "-o", str(tmp_path / "out"),
                              "--input-shape", f"x={shape}")
    assert (rc, err.count("\n")) == (2, 1) and err.startswith("nasc: error: "), err
    assert shape in err
    assert ("over the limit of 16.0 GiB" in err) == (shape == "1x1x100000x100000")


def test_torch_messages_are_cut_to_one_short_line() -> None:
    from nasc.frontends.torch import _first_line

    long = ValueError("Failed deserializing node Node(" + "target=aten.add, " * 200 + ")\nsecond line")
    line = _first_line(long)
    assert line.startswith("Failed deserializing node") and line.endswith(" ...") and len(line) <= 304
    assert _first_line(ValueError("short\nmore")) == "short"
