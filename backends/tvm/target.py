"""Named targets for the TVM backends: ``cpu`` (this host), ``cpu:<mcpu>``, a JSON target, ``gpu[:sm_XX]``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from nasc.errors import UsageError


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


def host_cpu() -> str:
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def parse_target(text: str) -> TvmTarget:
    """``cpu`` | ``cpu:<llvm mcpu>`` | ``gpu`` | ``gpu:sm_80`` | a JSON TVM target dict."""
    t = text.strip()
    if t.startswith("{"):
        try:
            spec = json.loads(t)
        except json.JSONDecodeError as e:
            raise UsageError(f"target {text!r} is not valid JSON: {e}") from None
        kind = {"llvm": "cpu", "cuda": "gpu"}.get(spec.get("kind", ""))
        if kind is None:
            raise UsageError(f"JSON target kind {spec.get('kind')!r}: expected 'llvm' or 'cuda'")
        return TvmTarget(kind, spec)
    name, _, arg = t.partition(":")
    if name == "cpu":
        mcpu = arg or host_cpu()
        return TvmTarget("cpu", {"kind": "llvm", "mcpu": mcpu, "num-cores": os.cpu_count() or 1})
    if name == "gpu":
        arch = arg or "sm_80"
        if not arch.startswith("sm_") or not arch[3:].isdigit():
            raise UsageError(f"target {text!r}: expected gpu:sm_XX, e.g. gpu:sm_90")
        return TvmTarget("gpu", {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
                                 "max_shared_memory_per_block": 49152, "thread_warp_size": 32,
                                 "host": {"kind": "llvm", "mcpu": host_cpu()}})
    raise UsageError(f"unknown target {text!r}; targets: onnx, cpu, cpu:<llvm-mcpu>, gpu, gpu:sm_XX, or a JSON target")
