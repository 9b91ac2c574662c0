"""Run a compiled nasc artifact: ``nasc.runtime.load(DIR).run(inputs)``.

Needs only numpy and TVM's runtime: no frontend, no torch, no onnx.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nasc.errors import DeviceError, ModelLoadError, UsageError


class CompiledModel:
    """A loaded ``model.so`` with its ``model.json``: run it with a dict by input name or a list in order."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        d = Path(directory)
        meta_path, lib_path = d / "model.json", d / "model.so"
        if not meta_path.is_file() or not lib_path.is_file():
            raise ModelLoadError(f"'{d}' is not a nasc build for cpu/gpu (model.so and model.json are missing)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        import tvm
        from tvm import relax

        self._tvm = tvm
        use_all_cores()
        if self.meta.get("device", "cpu") == "cpu":
            self.device = tvm.cpu()
            lib = tvm.runtime.load_module(str(lib_path))
            self._vm = relax.VirtualMachine(lib, self.device)
        else:
            self.device, self._vm = _load_on_gpu(d, lib_path, self.meta)
        self.input_names = [i["name"] for i in self.meta["inputs"]]
        self.output_names = [o["name"] for o in self.meta["outputs"]]

    def _args(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
        if isinstance(inputs, Mapping):
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise UsageError(f"inputs {missing} are missing; the model takes {self.input_names}")
            values = [inputs[n] for n in self.input_names]
        else:
            values = list(inputs)
            if len(values) != len(self.input_names):
                raise UsageError(f"{len(values)} inputs given; the model takes {self.input_names}")
        args = []
        for spec, v in zip(self.meta["inputs"], values):
            arr = np.require(np.asarray(v, dtype=spec["dtype"]), requirements="C")  # (ascontiguousarray makes 0-d 1-d)
            if list(arr.shape) != spec["shape"]:
                raise UsageError(f"input '{spec['name']}' has shape {list(arr.shape)}; the model takes {spec['shape']}")
            args.append(self._tvm.runtime.tensor(arr, self.device))
        return args

    def run(self, inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray]:
        out = self._vm["main"](*self._args(inputs))
        if hasattr(out, "numpy"):
            return [out.numpy()]
        return [o.numpy() for o in out]

    def latency_ms(self, inputs: Mapping[str, Any] | Sequence[Any], repeat: int = 50, warmup: int = 5,
                   min_seconds: float = 0.5) -> float:
        """Median wall time of one run, after ``warmup`` runs; repeats until ``min_seconds`` have passed."""
        return median_ms(self.runner(inputs), repeat, warmup, min_seconds)

    def runner(self, inputs: Mapping[str, Any] | Sequence[Any]) -> Callable[[], None]:
        """One synchronised run on ``inputs`` (converted once), for timing loops."""
        args = self._args(inputs)
        fn = self._vm["main"]

        def once() -> None:
            fn(*args)
            self.device.sync()

        return once

    def kernel_ms(self, inputs: Mapping[str, Any] | Sequence[Any], repeat: int = 20, warmup: int = 3
                  ) -> list[dict[str, Any]]:
        """Each compiled kernel's median time per inference in ms (``kernel``, ``calls`` per inference, ``ms``),
        timed around every call by the VM's instrumentation hook (its own overhead, about a microsecond per
        call, included). The VM's builtins (allocation, shape checks) are left out."""
        from tvm.runtime.vm import VMInstrumentReturnKind

        args = self._args(inputs)
        fn = self._vm["main"]
        started: dict[str, float] = {}
        runs: list[dict[str, list[float]]] = []

        def hook(_func: Any, name: str, before: bool, _ret: Any, *_args: Any) -> Any:
            if name.startswith("vm.builtin."):
                return VMInstrumentReturnKind.NO_OP
            if before:
                self.device.sync()
                started[name] = time.perf_counter()
            else:
                self.device.sync()
                runs[-1].setdefault(name, []).append(time.perf_counter() - started[name])
            return VMInstrumentReturnKind.NO_OP

        for _ in range(warmup):
            fn(*args)
        self._vm.set_instrument(hook)
        try:
            for _ in range(repeat):
                runs.append({})
                fn(*args)
        finally:  # no hook at all: a no-op Python hook still costs each call of every later run ~20 us
            self._vm.set_instrument(None)
        names = list(runs[0]) if runs else []
        return [{"kernel": n, "calls": len(runs[0][n]),
                 "ms": round(float(np.median([sum(r.get(n, [0.0])) for r in runs])) * 1e3, 5)} for n in names]


def _load_on_gpu(d: Path, lib_path: Path, meta: dict[str, Any]) -> tuple[Any, Any]:
    """The CUDA device and a VM of a GPU build; a DeviceError where this host has no GPU it runs on."""
    import tvm
    from tvm import relax

    from nasc.backends.tvm.target import cuda_device, gpu_unavailable

    arch = str(meta.get("target", {}).get("arch", "sm_XX"))
    why = gpu_unavailable(arch)
    if why is not None:
        raise DeviceError(f"'{d}' is a build for an NVIDIA GPU ({arch}); {why}: run it on a machine with one")
    dev = cuda_device()
    return dev, relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), dev)


def physical_cores() -> int:
    """Physical cores this process may run on (distinct core ids of its CPUs; the CPU count if unknown)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    try:
        for c in cpus:
            topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
    except OSError:
        return max(1, len(cpus))
    return max(1, len(cores))


def use_all_cores() -> None:
    """Give TVM's thread pool one thread per physical core, unless TVM_NUM_THREADS or OMP_NUM_THREADS says.

    Left alone, TVM starts half as many threads as there are logical CPUs on x86 (it assumes 2-way SMT):
    on hosts without SMT, most VMs among them, half the cores sit idle (a 2-core VM ran every kernel on one).
    Takes effect only before the pool starts, i.e. before the first parallel kernel runs in this process.
    """
    if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
        os.environ["TVM_NUM_THREADS"] = str(physical_cores())


def median_ms(fn: Callable[[], Any], repeat: int = 50, warmup: int = 5, min_seconds: float = 0.5) -> float:
    """Median wall time of ``fn()`` in ms after ``warmup`` calls: at least ``repeat`` calls, more (up to 10x)
    until ``min_seconds`` have passed."""
    return interleaved_ms([fn], rounds=1, repeat=repeat, warmup=warmup, min_seconds=min_seconds)[0]


def interleaved_ms(fns: Sequence[Callable[[], Any]], rounds: int = 5, repeat: int = 20, warmup: int = 5,
                   min_seconds: float = 0.1) -> list[float]:
    """Median wall time in ms of each of ``fns``, timed in turns: ``rounds`` rounds in which each function runs
    a block of calls (at least ``repeat``, more, up to 10x, until ``min_seconds`` have passed) after the
    other, so that background load and clock changes fall on all of them alike. The one timing loop of
    nasc's latency figures."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, times, strict=True):
            start, n = time.perf_counter(), 0
            while n < repeat or (time.perf_counter() - start < min_seconds and n < 10 * repeat):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
                n += 1
    return [float(np.median(t) * 1000) for t in times]


def load(directory: str | os.PathLike[str]) -> CompiledModel:
    """Load a ``nasc compile --target cpu|gpu`` output directory."""
    return CompiledModel(directory)
