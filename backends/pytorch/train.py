"""The torch trainer behind ``recover`` and the gradient-based importances: distillation of a transformed graph
from the original one, and gradients of output projections.

Both graphs go through ``to_torch`` (the student with ``train=True``: QDQ as fake quantization). Calibration
feeds are single samples of a statically shaped graph, so a batch runs the module once per sample under
``torch.func.vmap`` (one batched computation); a graph whose ops vmap cannot batch runs sample by sample.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from nasc.backends.pytorch.lower import to_torch
from nasc.errors import UsageError
from nasc.ir.core import Graph, Value
from nasc.passes.recover_job import DistillJob, DistillResult, Feed

clock: Callable[[], float] = time.perf_counter  # the time limit's clock (a test replaces it with a fake one)

_QDQ = ("QuantizeLinear", "DequantizeLinear")

#: the teacher's results are kept per feed while all of them fit in this many bytes
TEACHER_CACHE_BYTES = 4 << 30


class _Runner:
    """A graph as a batched function of (parameters, stacked inputs) -> list of stacked results."""

    def __init__(self, graph: Graph, outputs: Sequence[Value], train: bool) -> None:
        self.module = to_torch(graph, train=train, outputs=outputs)
        self.module.train(False)
        self.names = [v.name for v in graph.inputs]
        self.batched = True

    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.module.named_parameters())

    def __call__(self, params: dict[str, torch.Tensor], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        buffers = dict(self.module.named_buffers())

        def one(*x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out: tuple[torch.Tensor, ...] = torch.func.functional_call(self.module, (params, buffers), x)
            return out

        if self.batched:
            try:
                return list(torch.func.vmap(one, in_dims=tuple(0 for _ in xs))(*xs))
            except Exception:  # an op without a batching rule: fall back to one sample at a time
                self.batched = False
        per = [one(*(x[i] for x in xs)) for i in range(xs[0].shape[0])]
        return [torch.stack([p[k] for p in per]) for k in range(len(per[0]))]

    def stack(self, feeds: Sequence[Feed]) -> list[torch.Tensor]:
        return [torch.from_numpy(np.stack([np.asarray(f[n]) for f in feeds])) for n in self.names]


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX), where autocast pays."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def precision(job: DistillJob) -> str:
    """``job.precision`` with ``auto`` resolved: bf16 on a CPU with native bfloat16 for a student without
    fake quantization, fp32 otherwise."""
    if job.precision != "auto":
        return job.precision
    quantized = any(n.op in _QDQ for n in job.student.nodes)
    return "bf16" if native_bf16() and not quantized else "fp32"


def _is_logits(t: torch.Tensor) -> bool:
    """[batch, 1, C] or [batch, C] with C > 1: one row of class scores per sample."""
    per = t.shape[1:]
    return t.is_floating_point() and len(per) in (1, 2) and per[-1] > 1 and math.prod(per) == per[-1]


def _weights(mask: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor | None:
    """The mask [batch, ...] as weights over ``t`` 's positions ([batch, ..., 1]) when its size per sample is
    that of ``t`` 's leading axes (all but the last); None when it does not apply."""
    if mask is None or t.dim() < 2 or math.prod(mask.shape[1:]) != math.prod(t.shape[1:-1]):
        return None
    return (mask != 0).to(torch.float32).reshape(*t.shape[:-1], 1)


def _match(kind: str, s: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    s, t = s.float(), t.float()
    if kind == "auto":
        kind = "kl" if _is_logits(t) else "mse"
    if kind == "kl":
        s2, t2 = s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1)
        return torch.nn.functional.kl_div(torch.log_softmax(s2, -1), torch.log_softmax(t2, -1), log_target=True,
                                          reduction="batchmean")
    if w is None and kind != "cosine":  # unweighted: the fused loss and the teacher's spread (no gradient)
        with torch.no_grad():
            spread = torch.sum((t - t.mean()) ** 2) + 1e-12 * t.numel()
        return torch.nn.functional.mse_loss(s, t, reduction="sum") / spread
    if w is None:
        w = torch.ones((*t.shape[:-1], 1))
    if kind == "cosine":
        c = torch.nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8).unsqueeze(-1)
        return torch.sum((1 - c) * w) / torch.sum(w).clamp_min(1)
    n = torch.sum(w).clamp_min(1) * t.shape[-1]
    mean = torch.sum(t * w) / n
    return torch.sum((s - t) ** 2 * w) / (torch.sum((t - mean) ** 2 * w) + 1e-12 * n)


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = _weights(mask, x)
    return x if w is None else x * w


class _Distill:
    """One distillation: the loss, held-out figures and the training loop of a :class:`DistillJob`."""

    def __init__(self, job: DistillJob) -> None:
        self.job = job
        n_out = len(job.student.outputs)
        self.n_out = n_out
        self.student = _Runner(job.student, [*job.student.outputs, *(s for s, _ in job.features)], train=True)
        self.teacher = _Runner(job.teacher, [*job.teacher.outputs, *(t for _, t in job.features)], train=False)
        values = self.student.module.nasc_values
        wanted = {id(v) for v in job.trainable}
        self.params = self.student.params()
        self.trained = {n: p for n, p in self.params.items() if id(values[n]) in wanted}
        for p in self.params.values():
            p.requires_grad_(False)
        for p in self.trained.values():
            p.requires_grad_(True)
        if not self.trained:
            raise UsageError("recover: none of the chosen parameters is a parameter of the torch module")
        self.precision = precision(job)
        self.teacher_params = self.teacher.params()
        self.cache: dict[int, list[torch.Tensor]] = {}  # feed key (train i, held -1 - i) -> teacher results
        self.caching: bool | None = None
        for p in self.teacher_params.values():
            p.requires_grad_(False)

    def losses(self, feeds: Sequence[Feed], labels: np.ndarray | None, grad: bool,
               ids: Sequence[int]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The loss on ``feeds`` (``ids``: their keys in the teacher cache) and the (masked) outputs of student and
        teacher."""
        job = self.job
        xs = self.student.stack(feeds)
        t = self._teacher(xs, ids)
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if grad and self.precision == "bf16" else None
        with contextlib.nullcontext() if grad else torch.no_grad(), cast or contextlib.nullcontext():
            s = self.student(self.params, xs)
        mask = xs[self.student.names.index(job.mask)] if job.mask else None
        loss = sum((_match(job.loss, a, b, _weights(mask, b)) for a, b in zip(s[:self.n_out], t[:self.n_out],
                                                                              strict=True)), torch.zeros(()))
        feats = list(zip(s[self.n_out:], t[self.n_out:], strict=True))
        if feats and job.feature_weight:
            loss = loss + job.feature_weight * sum((_match("mse", a, b, _weights(mask, b)) for a, b in feats),
                                                   torch.zeros(())) / len(feats)
        k = job.label_output
        if labels is not None and job.label_weight and _is_logits(s[k]):
            y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
            loss = loss + job.label_weight * torch.nn.functional.cross_entropy(s[k].reshape(len(y), -1).float(), y)
        if mask is not None:  # the figures compare the positions the mask keeps
            s, t = [_masked(a, mask) for a in s], [_masked(b, mask) for b in t]
        return loss, s[:self.n_out], t[:self.n_out]

    def _teacher(self, xs: list[torch.Tensor], ids: Sequence[int]) -> list[torch.Tensor]:
        """The teacher's results on a batch; per sample, they are computed once while the cache of all the feeds'
        results fits in TEACHER_CACHE_BYTES (most recoveries see each feed several times)."""
        missing = [k for k, i in enumerate(ids) if i not in self.cache]
        if not missing:
            return [torch.stack([self.cache[i][m] for i in ids]) for m in range(len(self.cache[ids[0]]))]
        with torch.no_grad():
            got = self.teacher(self.teacher_params, [x[missing] for x in xs])
        if self.caching is None:  # the first batch decides
            per = sum(r[0].numel() * r.element_size() for r in got)
            self.caching = per * (len(self.job.train) + len(self.job.held)) <= TEACHER_CACHE_BYTES
        if not self.caching:
            return got
        for j, k in enumerate(missing):
            self.cache[ids[k]] = [r[j] for r in got]
        return self._teacher(xs, ids)

    def figures(self) -> dict[str, float]:
        """Held-out loss, mean cosine of every output to the teacher's, top-1 agreement and accuracy (logits)."""
        job = self.job
        total, cos, agree, correct, n = 0.0, 0.0, 0, 0, 0
        for start in range(0, len(job.held), job.batch):
            feeds = job.held[start:start + job.batch]
            labels = job.held_labels[start:start + len(feeds)] if job.held_labels is not None else None
            ids = [-1 - i for i in range(start, start + len(feeds))]
            loss, s, t = self.losses(feeds, labels, grad=False, ids=ids)
            total += float(loss) * len(feeds)
            k = job.label_output  # the output the labels score; the first one when there are none
            a, b = s[k].reshape(len(feeds), -1).float(), t[k].reshape(len(feeds), -1).float()
            cos += float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8).sum())
            if _is_logits(t[k]):
                agree += int((a.argmax(-1) == b.argmax(-1)).sum())
                if labels is not None:
                    correct += int((a.argmax(-1) == torch.from_numpy(np.asarray(labels))).sum())
            n += len(feeds)
        out = {"loss": total / max(n, 1), "cosine": cos / max(n, 1)}
        if _is_logits(t[job.label_output]):
            out["agreement"] = agree / max(n, 1)
            if job.held_labels is not None:
                out["accuracy"] = correct / max(n, 1)
        return {k: round(v, 6) for k, v in out.items()}

    def run(self) -> DistillResult:
        job = self.job
        t0 = clock()
        torch.manual_seed(job.seed)
        rng = np.random.default_rng(job.seed)
        opt = torch.optim.Adam(list(self.trained.values()), lr=job.lr)
        warm = max(1, job.steps // 20)

        def progress(k: int) -> float:
            """How far training is: by steps, or by the clock when a time limit will end it first (so the
            cosine decay still anneals the rate before a time-limited run stops)."""
            done = k / job.steps
            if job.time_limit is not None:
                done = max(done, (clock() - t0) / job.time_limit)
            return min(done, 1.0)

        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: min(1.0, (k + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress(k)))))
        t_eval = clock()
        before = self.figures()
        eval_s = clock() - t_eval  # the closing evaluation must fit in the time limit too
        step_s = 0.0  # the longest training step so far
        best, best_step, best_state, bad = before["loss"], 0, self._state(), 0
        history: list[dict[str, float]] = [{"step": 0, "held_loss": before["loss"]}]
        order = rng.permutation(len(job.train))
        pos, step, stopped, running = 0, 0, "steps", None
        with _progress(job.steps) as tick:
            while step < job.steps:
                if job.time_limit is not None:
                    # stop before a step that would leave no time for its held-out check (when one is due)
                    # and the closing evaluation
                    due = (step + 1) % job.eval_every == 0 or step + 1 == job.steps
                    if clock() - t0 + step_s + eval_s * (1 + due) > job.time_limit:
                        stopped = "time limit"
                        break
                t_step = clock()
                if pos + job.batch > len(order):
                    order, pos = rng.permutation(len(job.train)), 0
                idx = order[pos:pos + job.batch]
                pos += job.batch
                labels = job.train_labels[idx] if job.train_labels is not None else None
                loss, _, _ = self.losses([job.train[i] for i in idx], labels, grad=True, ids=[int(i) for i in idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                value = loss.item()
                running = value if running is None else 0.9 * running + 0.1 * value
                tick(step, running)
                step_s = max(step_s, clock() - t_step)
                if step % job.eval_every == 0 or step == job.steps:
                    held = self.figures()["loss"]
                    history.append({"step": step, "train_loss": round(running, 6), "held_loss": held})
                    job.log(f"  recover step {step}/{job.steps}: train loss {running:.4g}, held-out loss {held:.4g}")
                    if held < best:
                        best, best_step, best_state, bad = held, step, self._state(), 0
                    else:
                        bad += 1
                        if bad >= job.patience:
                            stopped = "early stop"
                            break
        with torch.no_grad():
            for n, p in self.trained.items():
                p.copy_(best_state[n])
        after = self.figures()
        values = self.student.module.nasc_values
        arrays = {id(values[n]): p.detach().numpy().copy() for n, p in self.trained.items()}
        return DistillResult(arrays, before, after, history, step, best_step, stopped, clock() - t0,
                             self.student.batched, self.precision)

    def _state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trained.items()}


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[int, float], None]]:
    """A rich progress bar with the running loss (on stderr, shown when it is a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("recover"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                  TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("recover", total=total, loss="-")
        yield lambda step, loss: bar.update(task, completed=step, loss=f"{loss:.4g}")


class TorchTrainer:
    """nasc's :class:`nasc.passes.recover_job.Trainer`, on torch (CPU)."""

    def distill(self, job: DistillJob) -> DistillResult:
        return _Distill(job).run()

    def probe_gradients(self, graph: Graph, feeds: list[Feed], values: list[Value], seed: int,
                        batch: int) -> Iterator[list[np.ndarray]]:
        runner = _Runner(graph, graph.outputs, train=True)
        names = runner.module.nasc_values
        by_id = {id(v): n for n, v in names.items()}
        params = runner.params()
        for p in params.values():
            p.requires_grad_(False)
        wanted = [params[by_id[id(v)]] for v in values]
        for p in wanted:
            p.requires_grad_(True)
        gen = torch.Generator().manual_seed(seed)
        for start in range(0, len(feeds), batch):
            outs = runner(params, runner.stack(feeds[start:start + batch]))
            probe = sum((torch.sum(y.float() * torch.randn(y.shape, generator=gen) / (y.detach().float().std() + 1e-12))
                         for y in outs if y.is_floating_point()), torch.zeros(()))
            grads = torch.autograd.grad(probe, wanted, allow_unused=True)
            yield [np.zeros(tuple(p.shape), np.float32) if g is None else g.numpy() for g, p in
                   zip(grads, wanted, strict=True)]


def trainer() -> Any:
    return TorchTrainer()
