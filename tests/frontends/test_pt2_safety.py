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
