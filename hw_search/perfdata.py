"""Measured kernel times: one JSON line per profiled build, in a dataset per target under the user cache.

A sample is a build's whole-model latency and each of its kernels with the features nasc's lowering gave it
(backends/tvm/kernels.py) and its measured time. ``nasc profile``, ``nasc compile`` (cpu builds that ran here),
``nasc bench`` and ``nasc search`` append samples; ``nasc predict --train`` fits the cost model on them. The
files are JSON (no pickles), carry their format and feature version, and may be copied between machines: a
sample says which host measured it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from nasc.errors import UsageError

FORMAT = "nasc-perf-1"
DIR_ENV = "NASC_PERF_DIR"
SAMPLES = "samples.jsonl"
#: A cpu sample whose whole-model time and kernel times disagree by more than this ratio was measured while
#: something else ran: it is not ``steady``, and training leaves it out
STEADY_RATIO = 1.5
#: what timing one kernel call adds to it (the runtime's instrumentation hook: 1.5-2.3 us a call measured here)
HOOK_MS = 0.0025


def perf_root() -> Path:
    """``$NASC_PERF_DIR``, else ``$XDG_CACHE_HOME/nasc/perf`` (``~/.cache/nasc/perf``)."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nasc" / "perf"


def target_dir(target_key: str, root: Path | None = None) -> Path:
    """The folder of one target's dataset and model, keyed like the tuning database (``cpu-sapphirerapids``)."""
    return (root or perf_root()) / target_key


def host() -> str:
    """This machine as a sample records it: CPU model name and core count."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def make_sample(*, target_key: str, model: str, family: str, latency_ms: float, kernels: list[dict[str, Any]],
                kernel_ms: Iterable[Mapping[str, Any]], features_version: int, pipeline: str = "",
                unit: str = "ms") -> dict[str, Any]:
    """One sample: ``kernels`` (kernel table: ``kernel``, ``calls``, ``features``) joined with ``kernel_ms`` (the
    runtime's ``kernel`` and its ``ms`` per inference, or ``cost`` in the sample's ``unit``) as each kernel's
    ``cost`` per inference, and the whole model's ``latency`` in the same unit. A kernel that was not timed keeps
    ``cost`` None."""
    measured = {k["kernel"]: float(k["cost"] if "cost" in k else k["ms"]) for k in kernel_ms}
    rows = [{**k, "cost": measured.get(k["kernel"])} for k in kernels]
    return {"format": FORMAT, "features_version": features_version, "target": target_key, "host": host(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": model, "family": family,
            "pipeline": pipeline, "unit": unit, "latency": float(latency_ms), "kernels": rows,
            "steady": unit != "ms" or disagreement(float(latency_ms), sum(measured.values()),
                                                   sum(k["calls"] for k in kernels)) < STEADY_RATIO}


def disagreement(latency: float, kernels: float, calls: int = 0) -> float:
    """How far apart (a ratio >= 1) a whole-model time and the sum of its kernels' times, measured one after the
    other, are, after crediting the sum with the timing hook's cost of each of its ``calls`` (HOOK_MS)."""
    kernels = max(latency, kernels - HOOK_MS * calls) if kernels > latency else kernels
    lo, hi = sorted((max(latency, 1e-12), max(kernels, 1e-12)))
    return hi / lo


def append(sample: Mapping[str, Any], root: Path | None = None) -> Path:
    """Add ``sample`` to its target's dataset; returns the dataset's path. One write of one line, so samples that
    two processes append at once stay whole lines."""
    path = target_dir(str(sample["target"]), root) / SAMPLES
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(sample, separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return path


def load(target_key: str, root: Path | None = None, features_version: int | None = None) -> list[dict[str, Any]]:
    """The samples of ``target_key``'s dataset (of ``features_version`` when given; lines of another format or
    feature version are skipped). A UsageError that says how to collect data when there are none."""
    path = target_dir(target_key, root) / SAMPLES
    if not path.is_file():
        raise UsageError(f"no measurements for target '{target_key}' yet (no {path}); collect them with "
                         f"'nasc profile --corpus --target <target>' or 'nasc profile MODEL --target <target>'")
    return read_samples(path, features_version)


def read_samples(path: Path, features_version: int | None = None) -> list[dict[str, Any]]:
    samples = []
    for line in path.read_text().splitlines():
        try:
            s = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed process
            continue
        if s.get("format") != FORMAT:
            continue
        if features_version is not None and s.get("features_version") != features_version:
            continue
        samples.append(s)
    return samples


def datasets(root: Path | None = None) -> list[str]:
    """The target keys that have a dataset under ``root``."""
    base = root or perf_root()
    return sorted(p.name for p in base.glob("*") if (p / SAMPLES).is_file()) if base.is_dir() else []


def kernel_doc(build_dir: Path) -> dict[str, Any] | None:
    """A cpu build's kernel table (``kernels.json``: its target, feature version and kernels), None without one."""
    path = build_dir / "kernels.json"
    return json.loads(path.read_text()) if path.is_file() else None


def sample_of(doc: Mapping[str, Any], *, model: str, family: str, pipeline: str, latency_ms: float,
              kernel_ms: Iterable[Mapping[str, Any]], macs: int | None = None) -> dict[str, Any]:
    """The sample of a cpu build of kernel table ``doc`` (:func:`kernel_doc`) joined with ``kernel_ms`` (the
    runtime's per-kernel times)."""
    from nasc.backends.tvm.target import TvmTarget

    key = TvmTarget("cpu", doc["target"]).key
    sample = make_sample(target_key=key, model=model, family=family, latency_ms=latency_ms,
                         kernels=doc["kernels"], kernel_ms=kernel_ms, features_version=int(doc["features_version"]),
                         pipeline=pipeline)
    if macs is not None:
        sample["macs"] = int(macs)
    return sample


def cpu_sample(build_dir: Path, *, model: str, family: str, pipeline: str, latency_ms: float,
               kernel_ms: Iterable[Mapping[str, Any]], macs: int | None = None) -> dict[str, Any] | None:
    """The sample of a cpu build in ``build_dir`` (:func:`sample_of` its ``kernels.json``); None when the build has
    no kernel table."""
    doc = kernel_doc(build_dir)
    return None if doc is None else sample_of(doc, model=model, family=family, pipeline=pipeline,
                                              latency_ms=latency_ms, kernel_ms=kernel_ms, macs=macs)


def record(build_dir: Path, *, model: str, family: str, pipeline: str, latency_ms: float,
           kernel_ms: Iterable[Mapping[str, Any]], macs: int | None = None, root: Path | None = None
           ) -> Path | None:
    """Append the sample of a cpu build in ``build_dir`` (:func:`cpu_sample`) to its target's dataset; None when
    the build has no kernel table."""
    sample = cpu_sample(build_dir, model=model, family=family, pipeline=pipeline, latency_ms=latency_ms,
                        kernel_ms=kernel_ms, macs=macs)
    return None if sample is None else append(sample, root)
