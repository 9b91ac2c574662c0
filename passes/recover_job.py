"""What the ``recover`` pass asks of a trainer, and what it gets back (no torch here: the trainer that
implements :class:`Trainer` lives in backends/pytorch/train.py and reaches passes through the PassContext).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from nasc.ir.core import Graph, Value

Feed = dict[str, np.ndarray]

#: how the student's outputs are compared with the teacher's: ``kl`` on class logits (softmax), ``mse``
#: divided by the teacher's variance, ``cosine`` along the last axis; ``auto`` takes kl for outputs shaped
#: [1, C] (logits) and mse otherwise
LOSSES = ("auto", "mse", "kl", "cosine")
#: the precision of the student's forward pass while it trains: ``bf16`` (torch autocast: matmuls and
#: convolutions in bfloat16, parameters, losses and gradients' accumulation in float32), ``fp32``, or ``auto``:
#: bf16 when the CPU computes bfloat16 natively (AVX-512 BF16 or AMX) and the student has no fake quantization
#: (whose rounding boundaries need float32), fp32 otherwise. Held-out figures and the teacher run in float32.
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class DistillJob:
    """Train ``trainable`` (constants of ``student``) so that the student matches ``teacher`` on ``train``.

    ``features`` pairs a student value with the teacher value it should match (block boundaries); ``held``
    (and its labels) decide early stopping and the figures reported. Labels are one class per feed. ``mask``
    names an input (a transformer's attention mask) whose zeros mark positions of the outputs and features
    that the loss and the figures leave out (padding).
    """

    student: Graph
    teacher: Graph
    trainable: list[Value]
    features: list[tuple[Value, Value]]
    train: list[Feed]
    held: list[Feed]
    train_labels: np.ndarray | None = None
    held_labels: np.ndarray | None = None
    loss: str = "auto"
    mask: str = ""
    feature_weight: float = 1.0
    label_weight: float = 1.0
    lr: float = 1e-4
    steps: int = 300
    batch: int = 16
    eval_every: int = 25
    patience: int = 4
    seed: int = 0
    time_limit: float | None = None
    log: Callable[[str], None] = field(default=lambda _m: None)
    label_output: int = 0  # the output the labels score (its logits get the cross-entropy and the accuracy)
    precision: str = "auto"


@dataclass
class DistillResult:
    """Trained contents by value id (float arrays; an integer weight's entry is its trained float shadow), the
    held-out figures before and after (loss; cosine to the teacher; top-1 agreement and accuracy for logits),
    and how training went."""

    values: dict[int, np.ndarray]
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, float]]
    steps: int
    best_step: int
    stopped: str
    time_s: float
    batched: bool
    precision: str = "fp32"  # what the student's training forward ran in (``auto`` resolved)


class Trainer(Protocol):
    """Gradients through the graph (the API layer supplies the torch one)."""

    def distill(self, job: DistillJob) -> DistillResult: ...

    def probe_gradients(self, graph: Graph, feeds: list[Feed], values: list[Value], seed: int,
                        batch: int) -> Iterator[list[np.ndarray]]:
        """Per batch of ``feeds``: the gradients, with respect to ``values`` (constants), of a random projection
        of the outputs <r, y / std(y)> with r ~ N(0, 1) drawn per sample (seeded)."""
        ...


def describe(result: DistillResult) -> dict[str, Any]:
    """The JSON-ready details of a recovery for the report."""
    return {"before": result.before, "after": result.after, "steps": result.steps, "best_step": result.best_step,
            "stopped": result.stopped, "time_s": round(result.time_s, 2), "batched": result.batched,
            "precision": result.precision, "history": result.history}


# ---- integer weights behind DequantizeLinear ------------------------------------------------------------------

_INT_WEIGHT = ("i8", "u8", "i4", "u4", "i16", "u16", "i32")
_RANGES = {"i4": (-8, 7), "u4": (0, 15), "i8": (-128, 127), "u8": (0, 255), "i16": (-(1 << 15), (1 << 15) - 1),
           "u16": (0, (1 << 16) - 1), "i32": (-(1 << 31), (1 << 31) - 1)}


@dataclass(frozen=True)
class QuantWeight:
    """An integer constant that only DequantizeLinear reads, with one constant scale (and zero point): a
    quantized weight or bias. Its integer range is symmetric ±max|q| for a signed weight without zero point
    (nasc's per-channel weights: every channel reaches the bound), else the dtype's."""

    q: Value
    scale: Value
    zp: Value | None
    axis: int
    block: int
    lo: int
    hi: int

    def expand(self, p: np.ndarray) -> np.ndarray:
        """A per-tensor, per-channel or per-block parameter broadcast against the weight."""
        p = np.asarray(p, dtype=np.float64)
        shape = self.q.shape
        if p.size == 1 and not self.block:
            return p.reshape(())
        if self.block:
            return np.repeat(p, self.block, axis=self.axis).take(range(shape[self.axis]), axis=self.axis)
        return p.reshape([-1 if i == self.axis else 1 for i in range(len(shape))])

    def dequantized(self) -> np.ndarray:
        """(q - zp) * scale in float32, as DequantizeLinear computes it."""
        q = np.asarray(self.q.data).astype(np.float32)
        if self.zp is not None:
            q = q - self.expand(self.zp.data).astype(np.float32)
        return (q * self.expand(self.scale.data).astype(np.float32)).astype(np.float32)

    def requantized(self, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """clip(round(w / scale) + zp, lo, hi) (half to even, as QuantizeLinear) in the weight's dtype."""
        y = np.round(np.asarray(w, np.float32) / self.expand(scale).astype(np.float32))
        if self.zp is not None:
            y = y + self.expand(self.zp.data)
        return np.clip(y, self.lo, self.hi).astype(np.asarray(self.q.data).dtype)


def quantized_weights(graph: Graph) -> dict[int, QuantWeight]:
    """The :class:`QuantWeight` s of ``graph``, by id of their integer constant."""
    out: dict[int, QuantWeight] = {}
    for c in graph.constants:
        if c.dtype not in _INT_WEIGHT or not c.uses or any(n.op != "DequantizeLinear" or i != 0 for n, i in c.uses):
            continue
        first = c.uses[0][0]
        if any(n.inputs[1:] != first.inputs[1:] or n.attrs != first.attrs for n, _ in c.uses):
            continue
        zp = first.input(2) if first.has_input(2) else None
        if not first.input(1).is_const or (zp is not None and not zp.is_const):
            continue
        rank = len(c.shape)
        axis = int(first.attr("axis", 1)) % rank if rank else 0
        lo, hi = _RANGES[c.dtype]
        if c.dtype.startswith("i") and c.dtype != "i32" and (zp is None or not np.any(zp.data)):
            top = int(np.abs(np.asarray(c.data).astype(np.int64)).max()) if c.data.size else hi
            lo, hi = -max(top, 1), max(top, 1)
        out[id(c)] = QuantWeight(c, first.input(1), zp, axis, int(first.attr("block_size", 0) or 0), lo, hi)
    return out
