"""Run fuzz cases through ``nasc.cli.main`` in a long-lived child process, which a hang or a crash cannot take down.

The child (``python fuzz_worker.py --seeds DIR --scratch DIR``) imports nasc once
and then, per request, writes the case's files into a fresh directory, runs the
command there in-process with file descriptors 1 and 2 captured (so that
messages from C libraries count too), and reports the exit status, the output,
the paths the command created, and whether the pickle marker appeared. For an
exit 3 it reruns the command with ``--debug`` to find the raising frame. The
parent (:class:`Worker`) kills and restarts the child when a case outlives its
timeout, reading the stack that ``faulthandler`` dumped just before.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the nasc package (the repository root)


def nasc_frame(frames: list[tuple[str, int, str]]) -> str:
    """``file:function`` of the innermost frame inside nasc (not its tests), else of the innermost frame."""
    outside = [ROOT / d for d in (".venv", "tests", "build", "tools")]
    for path, _line, func in reversed(frames):
        if not path.startswith("/"):  # "<frozen posixpath>" and the like
            continue
        p = Path(path).resolve()
        if p.is_relative_to(ROOT) and not any(p.is_relative_to(d) for d in outside):
            return f"{p.relative_to(ROOT)}:{func}"
    if frames:
        path, _line, func = frames[-1]
        return f"{Path(path).name}:{func}"
    return "?"


def parse_dump(text: str) -> tuple[str, str]:
    """(where, stack) from a faulthandler dump: the main thread's frames, innermost last."""
    blocks = [b for b in text.split("\n\n") if "most recent call first" in b]
    main = next((b for b in blocks if "fuzz_worker.py" in b), blocks[-1] if blocks else text)  # the case's thread
    frames = []
    for line in main.splitlines():
        line = line.strip()
        if line.startswith('File "'):
            path = line.split('"')[1]
            func = line.rsplit(" in ", 1)[-1] if " in " in line else "?"
            frames.append((path, 0, func))
    frames.reverse()  # faulthandler prints the most recent call first
    return nasc_frame(frames), main


# ---- the child -------------------------------------------------------------------------------------


def _snapshot(root: Path) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            found.add(name if rel == "." else f"{rel}/{name}")
    return found


def _trim_lines(text: str, width: int = 2000, head: int = 40, tail: int = 10) -> str:
    """``text`` with each line cut to ``width`` characters and only the first and last lines kept.

    Cuts never add or remove a line break inside what is kept, so the oracle still counts lines
    (it is told the full count separately) and still sees how each line starts.
    """
    lines = text.splitlines()
    cut = [ln if len(ln) <= width else ln[: width - 20] + f" …[{len(ln)} chars]" for ln in lines]
    if len(cut) > head + tail:
        cut = [*cut[:head], f"…[{len(cut) - head - tail} more lines]", *cut[-tail:]]
    return "\n".join(cut) + ("\n" if text.endswith("\n") else "")


def _cache(name: str) -> bool:
    """Files libraries keep in $TMPDIR on purpose: ONNX Runtime's session id, torch's compile cache."""
    return name == ".ses" or name.startswith("torchinductor_")


def _remove_new(root: Path, paths: list[str]) -> None:
    for rel in sorted(paths, key=len):
        p = root / rel
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


class _Child:
    def __init__(self, seeds: Path, scratch: Path) -> None:
        import faulthandler
        import tempfile
        import warnings

        self.seeds, self.scratch = seeds, scratch
        self.tmp = scratch / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        os.environ["TMPDIR"] = str(self.tmp)
        tempfile.tempdir = None
        self.faulthandler, self.warnings = faulthandler, warnings
        self.filters = list(warnings.filters)
        self.run_timeout_fixed = "NASC_RUN_TIMEOUT_S" in os.environ  # set by whoever runs the fuzzer: kept

    def invoke(self, argv: list[str], cwd: Path, timeout: float) -> tuple[Any, str, str, Any]:
        """Run ``nasc.cli.main(argv)`` in ``cwd``: (exit status, stdout, stderr, escaped exception)."""
        from nasc.cli import main

        if not self.run_timeout_fixed:
            # nasc stops an ONNX Runtime run of the model after $NASC_RUN_TIMEOUT_S (default 300 s): well inside
            # the case's own limit, so that a model that runs forever is the one-line error, not a hang
            os.environ["NASC_RUN_TIMEOUT_S"] = f"{max(1.0, min(5.0, timeout / 3)):g}"
        self.warnings.resetwarnings()  # a warning shown once in an earlier case must show again
        self.warnings.filters[:] = self.filters
        out_p, err_p = self.scratch / "stdout", self.scratch / "stderr"
        escaped = None
        with open(out_p, "w+b") as fo, open(err_p, "w+b") as fe, open(self.scratch / "hang.txt", "w") as hang:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(fo.fileno(), 1)
            os.dup2(fe.fileno(), 2)
            old = os.getcwd()
            os.chdir(cwd)
            self.faulthandler.dump_traceback_later(timeout, exit=False, file=hang)
            try:
                rc: Any = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except BaseException as e:  # with --debug: the internal error itself
                rc, escaped = None, e
            finally:
                self.faulthandler.cancel_dump_traceback_later()
                sys.stdout.flush()
                sys.stderr.flush()
                os.chdir(old)
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
        return rc, out_p.read_bytes().decode(errors="replace"), err_p.read_bytes().decode(errors="replace"), escaped

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        import fuzz_families  # noqa: F401  (registers every op)
        from fuzz_core import MARKER, Case, materialize

        case = Case.from_json(req["case"])
        workdir = Path(req["workdir"])
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            model = materialize(case, self.seeds, workdir)
        except Exception as e:
            return {"materialize_error": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"}
        argv = case.flat_argv(model)
        for p in self.tmp.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        before = _snapshot(workdir)
        with open(self.scratch / "crash.txt", "w") as crash:
            self.faulthandler.enable(file=crash)
            t0 = time.perf_counter()
            rc, out, err, escaped = self.invoke(argv, workdir, case.timeout)
            seconds = time.perf_counter() - t0
            self.faulthandler.disable()
        new = sorted(_snapshot(workdir) - before)
        res: dict[str, Any] = {
            "rc": rc, "stdout": out[-4000:], "stderr": _trim_lines(err), "new_paths": new, "argv": argv, "model": model,
            "marker": (workdir / MARKER).exists(), "tmp_left": sorted(p.name for p in self.tmp.iterdir() if not _cache(p.name)),
            "seconds": round(seconds, 3), "stderr_lines": sum(1 for ln in err.splitlines() if ln.strip()),
            "stderr_longest": max((len(ln) for ln in err.splitlines()), default=0),
        }
        if rc == 3 or escaped is not None:
            _remove_new(workdir, new)
            if escaped is None:
                _, _, _, escaped = self.invoke(["--debug", *argv], workdir, case.timeout)
                _remove_new(workdir, sorted(_snapshot(workdir) - before))
            if escaped is not None:
                frames = [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_tb(escaped.__traceback__)]
                res["error"] = {"exc": type(escaped).__name__, "where": nasc_frame(frames),
                                "message": str(escaped)[:500],
                                "frames": "".join(traceback.format_list(traceback.extract_tb(escaped.__traceback__)[-6:]))}
        return res


def serve(argv: list[str]) -> None:
    import argparse
    import resource

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", required=True, type=Path)
    ap.add_argument("--scratch", required=True, type=Path)
    ap.add_argument("--mem-gb", type=float, default=4.0)
    args = ap.parse_args(argv)
    requests = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # a command that reads stdin must not eat the requests
    os.dup2(null, 1)
    # nasc refuses models with a tensor over this size; keeping it under the address-space limit below means a
    # MemoryError is an allocation nasc did not check, not just a small machine
    os.environ.setdefault("NASC_MAX_TENSOR_BYTES", str(max(int(args.mem_gb * (1 << 30)) // 8, 64 << 20)))
    if args.mem_gb > 0:
        limit = int(args.mem_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, str(HERE))
    child = _Child(args.seeds, args.scratch)
    import nasc.cli  # noqa: F401  (warm: the first case should not pay for the imports)

    if (args.seeds / "pt2").is_dir():
        import torch  # noqa: F401

    replies.write("ready\n")
    for line in requests:
        try:
            res = child.run(json.loads(line))
        except BaseException as e:  # the worker's own failure, reported rather than fatal
            res = {"materialize_error": f"worker: {type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"}
        replies.write(json.dumps(res) + "\n")


# ---- the parent side -------------------------------------------------------------------------------


class Worker:
    """A handle on one child process; ``run`` never raises for what the case does to the child."""

    def __init__(self, seeds: Path, scratch: Path, mem_gb: float = 4.0) -> None:
        self.seeds, self.scratch, self.mem_gb = seeds, scratch, mem_gb
        self.proc: subprocess.Popen[bytes] | None = None
        self.buf = b""
        self.restarts = 0

    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        log = open(self.scratch / "worker.log", "ab")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fuzz_worker.py"), "--seeds", str(self.seeds), "--scratch", str(self.scratch),
             "--mem-gb", str(self.mem_gb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=self.scratch, env=env,
            start_new_session=True)
        log.close()
        self.buf = b""
        if self._readline(300) != "ready":
            raise RuntimeError(f"fuzz worker did not start; see {self.scratch / 'worker.log'}")

    def _readline(self, timeout: float) -> str | None:
        """One reply line, or None on timeout or EOF (the child died)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def run(self, case: Any, workdir: Path) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        for stale in ("hang.txt", "crash.txt"):
            (self.scratch / stale).unlink(missing_ok=True)
        self.proc.stdin.write((json.dumps({"case": case.to_json(), "workdir": str(workdir)}) + "\n").encode())
        self.proc.stdin.flush()
        line = self._readline(case.timeout + 5)  # the child dumps its stack at case.timeout
        if line is not None:
            return json.loads(line)
        died = self.proc.poll()
        time.sleep(0.2)
        dump_file = self.scratch / ("crash.txt" if died is not None else "hang.txt")
        dump = dump_file.read_text(errors="replace") if dump_file.exists() else ""
        where, stack = parse_dump(dump)
        self.stop()
        self.restarts += 1
        res: dict[str, Any] = {"where": where, "stack": stack, "rc": None, "argv": [],
                               "marker": (workdir / "PWNED_BY_PICKLE").exists()}
        if died is None:
            res["timeout"] = True
        else:
            res["crash"] = f"signal {-died}" if died < 0 else f"exit {died}"
        return res


if __name__ == "__main__":
    serve(sys.argv[1:])
