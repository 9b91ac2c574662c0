"""Named targets for the TVM backends: ``cpu`` (this host), ``cpu:<mcpu>``, a JSON target, ``gpu[:sm_XX]``.

Names are checked against what TVM's LLVM knows (CPU names for the host's triple, ``sm_XX`` for NVPTX):
left alone, TVM prints a warning per LLVM instance and quietly builds for a generic CPU instead.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nasc.errors import UsageError

NVPTX_TRIPLE = "nvptx64-nvidia-cuda"
DEFAULT_GPU_ARCH = "sm_80"


@dataclass(frozen=True)
class TvmTarget:
    """A resolved target: its kind ("cpu" | "gpu"), the TVM target dict, and a key for tuning databases."""

    kind: str
    spec: dict[str, Any]

    @property
    def key(self) -> str:
        parts = [self.spec.get("kind", "?"), self.spec.get("mcpu", "") or self.spec.get("arch", "")]
        return "-".join(p for p in parts if p)

    def tvm(self) -> Any:
        import tvm

        return tvm.target.Target(self.spec)

    def int8_dot_product(self) -> str | None:
        """The CPU's integer dot-product extension LLVM uses for uint8 x int8 -> int32 (``avx512vnni``,
        ``avxvnni``, Arm ``dotprod``), or None where it has none (then int8 products go through 16-bit
        multiplies). GPUs: not asked (None)."""
        if self.kind != "cpu":
            return None
        from tvm.target import codegen

        features = {str(f) for f in codegen.llvm_get_cpu_features(self.tvm())}
        return next((f for f in ("avx512vnni", "avxvnni", "dotprod") if f in features), None)


_ISA_FEATURE = re.compile(r"^(avx|sse|ssse|fma|f16c|bmi|amx|vpclmulqdq|gfni|vaes|sha|aes|pclmul|popcnt|lzcnt|movbe|"
                          r"adx|cx16|xop|sm[34]|neon|sve|dotprod|i8mm|bf16|fullfp16|crc)")


def cpu_unavailable(target: TvmTarget) -> str | None:
    """Why a CPU build for ``target`` cannot run on this host (instruction-set features the host's CPU lacks:
    running it would die with SIGILL), or None where it can."""
    if target.kind != "cpu":
        return None
    from tvm.target import codegen

    def isa(t: TvmTarget) -> set[str]:  # instruction sets only: LLVM also lists tuning hints ("fast-gather")
        return {str(f) for f in codegen.llvm_get_cpu_features(t.tvm()) if _ISA_FEATURE.match(str(f))}

    missing = sorted(isa(target) - isa(TvmTarget("cpu", {"kind": "llvm", "mcpu": host_cpu()})))
    if not missing:
        return None
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return f"this host's CPU ({host_cpu()}) lacks {shown}"


def host_cpu() -> str:
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def host_triple() -> str:
    import tvm

    return str(tvm.target.codegen.llvm_get_system_triple())


def cuda_device() -> Any:
    """This host's first CUDA device, or None (no GPU, no driver, or a TVM without the CUDA runtime)."""
    import tvm

    dev = tvm.cuda(0)
    try:
        return dev if dev.exist else None
    except Exception:  # a driver that answers with an error is no usable device
        return None


def cuda_arch(dev: Any) -> str:
    """``sm_XX`` of a CUDA device (compute capability 9.0 -> ``sm_90``)."""
    return "sm_" + str(dev.compute_version).replace(".", "")


def gpu_unavailable(arch: str) -> str | None:
    """Why a build for ``arch`` cannot run on this host (no CUDA device, or a GPU of another architecture), or
    None when it can."""
    dev = cuda_device()
    if dev is None:
        return "no CUDA device is available here"
    here = cuda_arch(dev)
    if here.rstrip("af") != arch.rstrip("af"):  # sm_90a and sm_100f run on sm_90 and sm_100 devices
        return f"the GPU here is {here} (rebuild with --target gpu:{here})"
    return None


def parse_target(text: str) -> TvmTarget:
    """``cpu`` | ``cpu:<llvm mcpu>`` | ``gpu`` | ``gpu:sm_80`` | a JSON TVM target dict (kind llvm or cuda).

    ``cpu:native`` is this host's CPU; ``gpu`` is this host's GPU, or sm_80 where there is none.
    """
    t = text.strip()
    if t.startswith("{"):
        return _parse_json(text, t)
    name, _, arg = t.partition(":")
    if name == "cpu":
        mcpu = host_cpu() if arg in ("", "native") else arg
        _check_mcpu(mcpu, host_triple(), f"target {text!r}")
        return TvmTarget("cpu", {"kind": "llvm", "mcpu": mcpu, "num-cores": os.cpu_count() or 1})
    if name == "gpu":
        dev = None if arg else cuda_device()
        arch = arg or (cuda_arch(dev) if dev is not None else DEFAULT_GPU_ARCH)
        _check_gpu_arch(arch, f"target {text!r}")
        return TvmTarget("gpu", {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
                                 "max_shared_memory_per_block": 49152, "thread_warp_size": 32,
                                 "host": {"kind": "llvm", "mcpu": host_cpu()}})
    raise UsageError(f"unknown target {text!r}; targets: onnx, cpu, cpu:<llvm-mcpu>, gpu, gpu:sm_XX, mcu[:BOARD] "
                     "or a JSON TVM target")


def _parse_json(text: str, t: str) -> TvmTarget:
    try:
        spec = json.loads(t)
    except json.JSONDecodeError as e:
        raise UsageError(f"target {text!r} is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise UsageError(f"JSON target {text!r} is not an object; expected e.g. {{\"kind\": \"llvm\", \"mcpu\": "
                         f"\"{host_cpu()}\"}}")
    kind_name = spec.get("kind")
    kind = {"llvm": "cpu", "cuda": "gpu"}.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise UsageError(f"JSON target kind {kind_name!r}: expected 'llvm' or 'cuda'")
    what = f"JSON target {text!r}"
    if kind == "cpu":
        if spec.get("mcpu") == "native":
            spec["mcpu"] = host_cpu()
        triple = spec.get("mtriple") or host_triple()
        _check_triple(str(triple), what)
        if "mcpu" in spec:
            _check_mcpu(str(spec["mcpu"]), str(triple), what)
    else:
        if "arch" not in spec:
            raise UsageError(f"{what} has no \"arch\": TVM would guess sm_50, which current CUDA no longer "
                             f"builds; add e.g. \"arch\": \"{DEFAULT_GPU_ARCH}\"")
        _check_gpu_arch(str(spec["arch"]), what)
    try:
        with quiet_stderr():
            TvmTarget(kind, spec).tvm()
    except Exception as e:  # TVM's own check of the options: its first line names the bad one
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{what}: {first}") from None
    return TvmTarget(kind, spec)


def _check_triple(triple: str, what: str) -> None:
    """A foreign triple would build a library this host cannot link or run; an unknown one crashes LLVM."""
    from tvm.target import codegen

    arch = triple.split("-")[0]
    host = host_triple().split("-")[0]
    if arch != host:
        known = sorted(str(a) for a in codegen.llvm_get_targets())
        if arch not in known:
            raise UsageError(f"{what}: unknown architecture {arch!r} in mtriple {triple!r}; LLVM here knows "
                             f"{', '.join(known)}")
        raise UsageError(f"{what}: mtriple {triple!r} is not this host ({host}); nasc's cpu target builds and "
                         f"checks the model on this host: cross-compiling is not supported")


#: the -mcpu names an unknown CPU's error shows (those LLVM knows for the triple): the x86-64 levels and the
#: common server and desktop x86 and Arm cores; other triples show their first MAX_CPUS_SHOWN names
COMMON_CPUS = ("generic", "x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4", "haswell", "skylake", "skylake-avx512",
               "cascadelake", "icelake-server", "sapphirerapids", "alderlake", "znver2", "znver3", "znver4", "znver5",
               "cortex-a53", "cortex-a72", "cortex-a76", "neoverse-n1", "neoverse-v1", "neoverse-n2", "apple-m1")
MAX_CPUS_SHOWN = 16


def _check_mcpu(mcpu: str, triple: str, what: str) -> None:
    from tvm.target import codegen

    with quiet_stderr():
        if codegen.llvm_is_valid_cpu(mcpu, triple):
            return
    names = _cpu_names(triple)
    close = difflib.get_close_matches(mcpu, names, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    shown = [n for n in COMMON_CPUS if n in names] or names[:MAX_CPUS_SHOWN]
    more = len(names) - len(shown)
    rest = f", and {more} more (python -m nasc.backends.tvm.target lists them all)" if more > 0 else ""
    raise UsageError(f"{what}: LLVM does not know the CPU {mcpu!r} for {triple}; {hint}this host is "
                     f"{host_cpu()} (--target cpu); valid -mcpu names include {', '.join(shown)}{rest}")


def _check_gpu_arch(arch: str, what: str) -> None:
    from tvm.target import codegen

    with quiet_stderr():
        if arch.startswith("sm_") and codegen.llvm_is_valid_cpu(arch, NVPTX_TRIPLE):
            return
    names = _cpu_names(NVPTX_TRIPLE, probe=DEFAULT_GPU_ARCH)
    names.sort(key=lambda n: (int("".join(c for c in n[3:] if c.isdigit()) or 0), n))
    raise UsageError(f"{what}: {arch!r} is not an NVIDIA architecture LLVM knows; expected gpu:sm_XX, one of "
                     f"{', '.join(names)} (e.g. gpu:sm_90 for H100)")


def _cpu_names(triple: str, probe: str | None = None) -> list[str]:
    """The ``-mcpu`` names LLVM knows for ``triple`` (sorted; a probing TVM target prints nothing)."""
    import tvm
    from tvm.target import codegen

    spec = {"kind": "llvm", "mtriple": triple, "mcpu": probe or "generic"}
    with quiet_stderr():
        return sorted({str(n) for n in codegen.llvm_get_cpu_archlist(tvm.target.Target(spec))})


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (TVM's C++ log lines bypass Python) for the duration of the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


if __name__ == "__main__":  # python -m nasc.backends.tvm.target [TRIPLE]: the -mcpu names LLVM knows
    _triple = sys.argv[1] if len(sys.argv) > 1 else host_triple()
    print(f"-mcpu names LLVM knows for {_triple} (this host: {host_cpu()}):")
    print("\n".join(_cpu_names(_triple)))
