"""Distributed search for real: a throw-away PostgreSQL server, and two ``nasc search`` workers of one study."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import nasc

EXAMPLES = Path(nasc.__file__).parent / "examples"
MODEL = str(EXAMPLES / "digits_cnn.onnx")
CALIB = str(EXAMPLES / "digits_test.npz")
# every point of this space is feasible (unpruned int8 needs 8,304 bytes of flash): the workers draw seeded by their
# pid, and a space with infeasible corners once had all three of the first worker's trials refused
SPACE = "simplify,fuse,prune?{macs=0.6..1.0/0.2 reconstruct=true},quant-policy{bits=8|8,4 flash=9KB..12KB},quantize"


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    assert found, "PostgreSQL is missing: `make test` installs the Debian package postgresql"
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server in a temporary directory (as ``nobody`` when run as root: the server refuses root),
    stopped after the module; yields its URL."""
    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="nasc-pg-"))
    data, port = root / "data", _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
        os.chmod(root, 0o700)
        as_user = ["runuser", "-u", "nobody", "--"]

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "nasc", "--auth=trust", "-E", "UTF8")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "start", "-o",
        f"-k {root} -p {port} -c listen_addresses=127.0.0.1")
    try:
        yield f"postgresql://nasc@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study(postgres: str, tmp_path: Path) -> None:
    import optuna

    def worker(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "nasc.cli", "search", MODEL, "--target", "mcu:stm32f411", "-o",
             str(tmp_path / name), "--calib", CALIB, "--space", SPACE, "--trials", "3", "--sampler", "random",
             "--storage", postgres, "--study", "digits-pg", "--estimate-only"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [worker("a"), worker("b")]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="digits-pg", storage=postgres)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert study.user_attrs["target"] == "mcu:stm32f411" and study.user_attrs["space"] == SPACE
    # each worker wrote the front of the whole study as it stood when it finished; the last one saw all 6 trials
    counts = sorted(json.loads((tmp_path / n / "pareto.json").read_text())["trials"] for n in ("a", "b"))
    assert counts[-1] == 6 and counts[0] >= 3
    # not the SQLite default: no search.db in the workers' directories
    assert not (tmp_path / "a" / "search.db").exists()
    # a third worker with another space is refused: the study's space is fixed
    bad = subprocess.run([sys.executable, "-m", "nasc.cli", "search", MODEL, "--target", "mcu:stm32f411", "-o",
                          str(tmp_path / "c"), "--calib", CALIB, "--space", "prune{macs=0.5..1.0}", "--trials", "1",
                          "--storage", postgres, "--study", "digits-pg", "--estimate-only"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "was started with another space" in bad.stderr, bad.stderr
    assert not (tmp_path / "c").exists()
