"""The torch target: ``nasc compile --target torch`` writes a torch.export program (model.pt2) that computes the
optimized graph (checked against ONNX Runtime) and carries nasc's graph, so ``nasc.load`` gives the same graph back
with the program's own weights; a file whose IR and program disagree is refused by name."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import nasc
from nasc.backends import fidelity
from nasc.backends.targets import NAMES, TorchTarget, parse_target
from nasc.errors import ModelLoadError, UsageError
from nasc.frontends.nasc_pt2 import IR_MEMBER, MAP_MEMBER
from nasc.ir.text import print_graph, structural_diff

EXAMPLES = Path(nasc.__file__).parent / "examples"
DIGITS, DIGITS_TEST = EXAMPLES / "digits_cnn.onnx", EXAMPLES / "digits_test.npz"
VIT, FASHION_TEST = EXAMPLES / "fashion_vit.onnx", EXAMPLES / "fashion_test.npz"
# max abs difference of the saved program to ONNX Runtime: float32 summation order (the program computes the
# same graph; QDQ is exact in both, observed 0)
TOL = 1e-5

CASES = {
    "digits": (DIGITS, "", DIGITS_TEST),
    "vit": (VIT, "simplify,fuse", FASHION_TEST),
    "int8": (DIGITS, "simplify,fuse,quantize", DIGITS_TEST),
    "int4": (DIGITS, "simplify,fuse,quantize{bits=4}", DIGITS_TEST),
    "tied": (VIT, "simplify,fuse,tie-layers{blocks=2 rank=8}", FASHION_TEST),
}


def _feeds(case: str, n: int) -> list[dict[str, np.ndarray]]:
    model, _, data = CASES[case]
    return fidelity.load_calibration(str(data), nasc.load(model))[:n]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, nasc.Graph]]:
    """Each case compiled with the Python API, and the graph nasc optimized (what the file must give back)."""
    out = {}
    for case, (model, passes, _) in CASES.items():
        d = tmp_path_factory.mktemp(case) / "build"
        calib = _feeds(case, 32)  # calibration data for the passes, and the fidelity check's inputs
        nasc.compile(model, "torch", d, passes=passes or None, calib=calib)
        g = nasc.load(model)
        out[case] = (d, nasc.optimize(g, passes, calib) if passes else g)
    return out


def test_torch_is_a_target_listed_by_name() -> None:
    t = parse_target("torch")
    assert isinstance(t, TorchTarget) and t.kind == "torch" and str(t) == "torch"
    assert "torch" in NAMES.split(", ")


@pytest.mark.parametrize("case", list(CASES))
def test_the_build_writes_a_program_and_a_report_with_fidelity(built: Any, case: str) -> None:
    d, g = built[case]
    assert sorted(p.name for p in d.iterdir()) == ["model.pt2", "report.html", "report.json"]
    rep = json.loads((d / "report.json").read_text())
    assert rep["target"] == "torch" and rep["fidelity"]["reference"] == "onnxruntime on the original model"
    b = rep["build"]
    assert b["artifact"] == "model.pt2" and b["artifact_bytes"] == (d / "model.pt2").stat().st_size
    assert b["parameters"] + b["buffers"] == len(g.constants)
    if case in ("digits", "vit"):
        assert rep["fidelity"]["max_abs_err"] <= TOL
    if case in ("int8", "int4"):
        assert rep["fidelity"]["vs_quantized_graph"]["max_abs_err"] <= TOL


@pytest.mark.parametrize("case", list(CASES))
def test_torch_export_load_runs_it_as_onnxruntime_runs_the_graph(built: Any, case: str) -> None:
    """The lossless builds against ONNX Runtime on the original model; the lossy ones (quantized, tied) against
    ONNX Runtime on the graph nasc built (their distance to the original is report.json's fidelity)."""
    d, g = built[case]
    module = torch.export.load(d / "model.pt2").module()
    feeds = _feeds(case, 4)
    model = CASES[case][0]
    ref = [fidelity.run_ort(fidelity.ort_session(str(model)), f) for f in feeds] if case in ("digits", "vit") \
        else fidelity.run_graph(g, feeds)
    for f, r in zip(feeds, ref, strict=True):
        with torch.no_grad():
            got = module(*[torch.from_numpy(f[v.name]) for v in g.inputs])
        assert len(got) == len(r)
        for a, b in zip(got, r, strict=True):
            assert float(np.max(np.abs(a.numpy() - b))) <= TOL


@pytest.mark.parametrize("case", list(CASES))
def test_nasc_load_gives_the_same_graph_back(built: Any, case: str) -> None:
    d, g = built[case]
    back = nasc.load(d / "model.pt2")
    assert print_graph(back) == print_graph(g)
    assert structural_diff(g, back) is None
    for a, b in zip(g.constants, back.constants, strict=True):  # bitwise, in their IR dtype (int4 included)
        assert (a.name, a.dtype, a.data.dtype) == (b.name, b.dtype, b.data.dtype)
        assert a.data.tobytes() == b.data.tobytes()
    assert [n.meta for n in back.nodes] == [n.meta for n in g.nodes]
    assert back.meta.get("quant_policy") == g.meta.get("quant_policy")
    assert [p["summary"].split(":")[0] for p in back.meta.get("passes", [])] == [  # times differ between runs
        p["summary"].split(":")[0] for p in g.meta.get("passes", [])]
    feeds = _feeds(case, 2)
    for x, y in zip(fidelity.run_graph(g, feeds), fidelity.run_graph(back, feeds), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_quantized_graph_keeps_its_int4_weights_and_policy(built: Any) -> None:
    _, g = built["int4"]
    back = nasc.load(built["int4"][0] / "model.pt2")
    assert {c.dtype for c in back.constants} == {c.dtype for c in g.constants} and "i4" in {
        c.dtype for c in back.constants}


def test_a_tied_weight_is_one_value_read_by_several_nodes_after_the_round_trip(built: Any) -> None:
    d, g = built["tied"]
    back = nasc.load(d / "model.pt2")
    shared = [(c.name, len(c.uses)) for c in g.constants if len(c.uses) > 1 and c.dtype == "f32" and c.data.ndim == 2]
    assert len(shared) >= 4 and all(k >= 3 for _, k in shared)  # blocks=2: six blocks read one pair of weights
    assert [(c.name, len(c.uses)) for c in back.constants if len(c.uses) > 1 and c.dtype == "f32"
            and c.data.ndim == 2] == shared
    assert sum(n.meta.get("tie.correction", False) for n in back.nodes) > 0


@pytest.mark.parametrize("case", ["vit", "int4"])
def test_the_archive_holds_the_weights_once(built: Any, case: str) -> None:
    """nasc's members are text: the IR prints every constant by name, so the weights are the program's alone."""
    d, g = built[case]
    with zipfile.ZipFile(d / "model.pt2") as z:
        names = z.namelist()
        extra = {n.split("/extra/", 1)[1]: z.read(n) for n in names if "/extra/" in n}
        raw = [n for n in names if "/data/weights/weight_" in n or "/data/constants/tensor_" in n]
        held = [fqn for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))
                for fqn in json.loads(z.read(n))["config"]]
    assert sorted(extra) == sorted([IR_MEMBER, MAP_MEMBER])
    text = extra[IR_MEMBER].decode()
    assert "dense[" not in text and text.count("\nconst ") == len(g.constants)
    assert len(raw) == len(g.constants)  # one payload per constant, a shared one included
    info = json.loads(extra[MAP_MEMBER])
    assert sorted(info["constants"].values()) == sorted(held)  # each IR constant is one tensor of the program


def test_the_cli_compiles_for_torch_and_load_reads_it_back(tmp_path: Path) -> None:
    out, calib = tmp_path / "build", tmp_path / "calib.npz"
    np.savez(calib, image=np.load(DIGITS_TEST)["image"][:32])
    r = subprocess.run([sys.executable, "-m", "nasc.cli", "compile", str(DIGITS), "--target", "torch", "-o", str(out),
                        "--passes", "simplify,fuse,quantize", "--calib", str(calib)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "fidelity vs original" in r.stdout and "model.pt2" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["fidelity"]["vs_quantized_graph"]["max_abs_err"] <= TOL and rep["build"]["buffers"] > 0
    g = nasc.load(DIGITS)
    expected = nasc.optimize(g, "simplify,fuse,quantize", fidelity.load_calibration(str(calib), g))
    assert print_graph(nasc.load(out / "model.pt2")) == print_graph(expected)
    assert "torch" in subprocess.run([sys.executable, "-m", "nasc.cli", "compile", "--help"], capture_output=True,
                                     text=True).stdout


def _resave(src: Path, dst: Path, text: str | None = None, info: dict[str, Any] | None = None) -> None:
    """A copy of ``src`` with nasc's members replaced (the program and its weights as they were)."""
    extra = {IR_MEMBER: "", MAP_MEMBER: ""}
    ep = torch.export.load(src, extra_files=extra)
    torch.export.save(ep, dst, extra_files={IR_MEMBER: extra[IR_MEMBER] if text is None else text,
                                            MAP_MEMBER: extra[MAP_MEMBER] if info is None else json.dumps(info)})


def _members(path: Path) -> tuple[str, dict[str, Any]]:
    extra = {IR_MEMBER: "", MAP_MEMBER: ""}
    torch.export.load(path, extra_files=extra)
    return extra[IR_MEMBER], json.loads(extra[MAP_MEMBER])


def test_an_ir_that_disagrees_with_the_program_is_refused(built: Any, tmp_path: Path) -> None:
    src = built["digits"][0] / "model.pt2"
    text, info = _members(src)
    renamed = tmp_path / "renamed.pt2"
    _resave(src, renamed, text=text.replace("%image", "%img"))
    with pytest.raises(ModelLoadError, match=r"disagrees with its program: input 0 is 'image' in the program but "
                                             r"'img' in the IR; the file was altered"):
        nasc.load(renamed)
    key = next(iter(info["constants"]))
    moved = tmp_path / "moved.pt2"
    _resave(src, moved, info={**info, "constants": {**info["constants"], key: "no_such_weight"}})
    with pytest.raises(ModelLoadError, match=f"constant '{key}' maps to 'no_such_weight', which the program does "
                                             "not hold"):
        nasc.load(moved)
    lost = tmp_path / "lost.pt2"
    _resave(src, lost, info={**info, "constants": {k: v for k, v in info["constants"].items() if k != key}})
    with pytest.raises(ModelLoadError, match=rf"constants \['{key}'\] are in one of the IR text and the constant map"):
        nasc.load(lost)
    out = tmp_path / "out.pt2"
    _resave(src, out, text=text.replace("f32[1,10]", "f32[1,11]"))
    with pytest.raises(ModelLoadError, match="disagrees with its program"):
        nasc.load(out)


def test_a_nasc_program_keeps_its_static_input_shapes(built: Any) -> None:
    path = built["digits"][0] / "model.pt2"
    assert [v.shape for v in nasc.load(path, {"image": [1, 1, 8, 8]}).inputs] == [(1, 1, 8, 8)]
    with pytest.raises(UsageError, match="static shapes"):
        nasc.load(path, {"image": [2, 1, 8, 8]})


def test_a_pt2_without_nasc_members_still_loads_through_the_frontend(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU()).eval()
    x = torch.randn(2, 6)
    path = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(module, (x,)), path)
    g = nasc.load(path)
    assert g.nodes and {n.op for n in g.nodes} & {"Gemm", "MatMul"}
    (y,) = fidelity.run_graph(g, [{g.inputs[0].name: x.numpy()}])[0]
    np.testing.assert_allclose(y, module(x).detach().numpy(), atol=TOL)


class _Mkdir:
    """A pickle that creates the directory ``path`` when unpickled: its absence proves nothing unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (os.mkdir, (str(self.path),))


def test_nasc_members_are_read_as_text_never_unpickled(built: Any, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Mkdir(marker), protocol=0).decode("ascii")  # protocol 0 is text
    src = built["digits"][0] / "model.pt2"
    text, info = _members(src)
    ep = torch.export.load(src)
    for i, members in enumerate([(payload, json.dumps(info)), (text, payload)]):
        bad = tmp_path / f"pickled{i}.pt2"
        torch.export.save(ep, bad, extra_files=dict(zip([IR_MEMBER, MAP_MEMBER], members, strict=True)))
        with pytest.raises(ModelLoadError, match="disagrees with its program"):
            nasc.load(bad)
    assert not marker.exists()


def test_a_nasc_program_compiles_again(built: Any, tmp_path: Path) -> None:
    """model.pt2 is a model nasc takes: the reloaded graph, checked against torch running the program."""
    art = nasc.compile(built["digits"][0] / "model.pt2", "onnx", tmp_path / "again")
    assert art.report["fidelity"]["reference"] == "torch on the original program"
    assert art.report["fidelity"]["max_abs_err"] <= TOL
