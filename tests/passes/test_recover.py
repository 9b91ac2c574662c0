"""recover: distillation into pruned, tied and quantized graphs; what trains, write-back, reproducibility, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.backends.fidelity import run_graph
from nasc.errors import UsageError
from nasc.ir.core import Graph, Value
from nasc.ir.text import POLICY_KEY
from nasc.passes.recover import trainable_values
from nasc.passes.recover_job import quantized_weights

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
QUICK = "steps=30 batch=8 lr=1e-3 eval-every=10 patience=3"


@pytest.fixture(scope="module")
def digits() -> tuple[Graph, list[dict[str, np.ndarray]], np.ndarray]:
    d = np.load(EXAMPLES / "digits_test.npz")
    g = nasc.load(EXAMPLES / "digits_cnn.onnx")
    x = d["image"].astype(np.float32)
    return g, [{g.inputs[0].name: x[i:i + 1]} for i in range(96)], d["label"][:96]


@pytest.fixture(scope="module")
def vit() -> tuple[Graph, list[dict[str, np.ndarray]]]:
    d = np.load(EXAMPLES / "fashion_test.npz")
    g = nasc.load(EXAMPLES / "fashion_vit.onnx")
    x = d["image"].astype(np.float32)
    return g, [{g.inputs[0].name: x[i:i + 1]} for i in range(48)]


def _consts(g: Graph) -> dict[str, np.ndarray]:
    return {c.name: np.array(c.data) for c in g.constants}


def _section(g: Graph, name: str = "recover") -> dict:
    return next(s for s in g.meta["passes"] if s["pass"].startswith(name))


def test_quantized_recovery_lowers_the_held_out_loss_and_writes_integers_back(digits):
    g, feeds, labels = digits
    before = nasc.optimize(g, "simplify,fuse,quantize{bits=4}", calib=feeds)
    after = nasc.optimize(g, f"simplify,fuse,quantize{{bits=4}},recover{{{QUICK}}}", calib=feeds, labels=labels)
    sec = _section(after)
    assert sec["details"]["after"]["loss"] < sec["details"]["before"]["loss"]
    assert sec["details"]["train_feeds"] + sec["details"]["held_feeds"] == len(feeds)
    # every quantized weight is still integers in its symmetric int4 grid, and some moved
    qb, qa = quantized_weights(before), quantized_weights(after)
    assert len(qa) == len(qb) > 0
    moved = 0
    for w in qa.values():
        q = np.asarray(w.q.data).astype(np.int64)
        if w.q.dtype == "i4":
            assert np.abs(q).max() <= 7
        old = next(c for c in before.constants if c.name == w.q.name)
        moved += int(np.sum(np.asarray(old.data).astype(np.int64) != q))
    assert moved > 0
    # the QDQ graph exports and runs in ONNX Runtime, and its torch module computes the same (exact lowering)
    import torch

    module = nasc.to_torch(after)
    ref = run_graph(after, feeds[:8], None)
    with torch.no_grad():
        for f, r in zip(feeds[:8], ref, strict=True):
            got = module(torch.from_numpy(f[g.inputs[0].name]))[0].numpy()
            np.testing.assert_allclose(got, r[0], rtol=0, atol=1e-5)


def test_int32_biases_follow_trained_scales(digits):
    g, feeds, labels = digits
    q = nasc.optimize(g, f"simplify,fuse,quantize{{bits=4}},recover{{{QUICK} learn-scales=true}}", calib=feeds,
                      labels=labels)
    assert _section(q)["details"]["best_step"] > 0, "scales trained and were written back"
    before = nasc.optimize(g, "simplify,fuse,quantize{bits=4}", calib=feeds)
    scales = {c.name: np.asarray(c.data) for c in before.constants if c.name.endswith("_scale")}
    moved = [c for c in q.constants if c.name in scales and not np.array_equal(scales[c.name], c.data)]
    assert moved and all(c.data.shape == scales[c.name].shape for c in moved)  # 0-d scales stay 0-d
    checked = 0
    for n in q.nodes:
        if n.op in ("Conv", "Gemm") and n.has_input(2) and n.input(2).producer is not None:
            b, w, x = (n.input(i).producer for i in (2, 1, 0))
            want = np.float32(np.asarray(x.input(1).data).reshape(-1)[0]) * np.asarray(w.input(1).data, np.float32)
            np.testing.assert_array_equal(np.asarray(b.input(1).data, np.float32), want.astype(np.float32))
            checked += 1
    assert checked >= 4


def test_reproducible_for_a_seed(digits):
    g, feeds, _ = digits
    pipe = f"simplify,fuse,quantize{{bits=4}},recover{{{QUICK}}}"
    a, b = (_consts(nasc.optimize(g, pipe, calib=feeds, seed=3)) for _ in range(2))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = _consts(nasc.optimize(g, pipe, calib=feeds, seed=4))
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_precision_bf16_trains_float_graphs_and_auto_keeps_fake_quantization_in_fp32(vit, digits, monkeypatch):
    from nasc.backends.pytorch import train

    g, feeds = vit
    pipe = f"simplify,fuse,tie-layers{{blocks=2 rank=4}},recover{{{QUICK} precision=bf16}}"
    a, b = (nasc.optimize(g, pipe, calib=feeds) for _ in range(2))
    sec = _section(a)["details"]
    assert sec["precision"] == "bf16"
    assert sec["after"]["loss"] < sec["before"]["loss"]  # figures are float32; training ran in bfloat16
    assert all(np.array_equal(x, y) for x, y in zip(_consts(a).values(), _consts(b).values(), strict=True))
    tied = _consts(nasc.optimize(g, "simplify,fuse,tie-layers{blocks=2 rank=4}", calib=feeds))
    trained = [c for c in a.constants if not np.array_equal(tied[c.name], c.data)]
    assert trained and all(c.dtype == "f32" and c.data.dtype == np.float32 for c in trained)  # stay float32
    gd, fd, _ = digits
    for native in (True, False):
        monkeypatch.setattr(train, "native_bf16", lambda native=native: native)
        float_ = _section(nasc.optimize(gd, f"simplify,fuse,recover{{{QUICK}}}", calib=fd))["details"]
        quant = _section(nasc.optimize(gd, f"simplify,fuse,quantize,recover{{{QUICK}}}", calib=fd))["details"]
        assert float_["precision"] == ("bf16" if native else "fp32")
        assert quant["precision"] == "fp32"  # fake quantization's rounding needs float32
    forced = nasc.optimize(gd, f"simplify,fuse,recover{{{QUICK} precision=fp32}}", calib=fd)
    assert _section(forced)["details"]["precision"] == "fp32"
    with pytest.raises(UsageError, match="precision"):
        nasc.optimize(gd, "recover{precision=fp16}", calib=fd)


def test_time_limit_covers_the_closing_evaluation(digits, monkeypatch):
    # A fake clock makes the test independent of the machine's load: each reading advances it 2 ms, and each
    # held-out evaluation costs 0.3 s of it, so a loop that only checked the limit after a step (or forgot
    # the evaluations) would end past 2 s.
    from nasc.backends.pytorch import train

    now = [0.0]

    def clock() -> float:
        now[0] += 0.002
        return now[0]

    figures = train._Distill.figures

    def slow_figures(self: train._Distill) -> dict[str, float]:
        now[0] += 0.3
        return figures(self)

    monkeypatch.setattr(train, "clock", clock)
    monkeypatch.setattr(train._Distill, "figures", slow_figures)
    g, feeds, _ = digits
    out = nasc.optimize(g, "simplify,fuse,quantize{bits=4},recover{steps=1000000 batch=8 lr=1e-4 eval-every=50 "
                           "patience=1000 time=2s}", calib=feeds)
    d = _section(out)["details"]
    assert d["stopped"] == "time limit" and 50 <= d["steps"] < 1000
    assert d["time_s"] <= 2.0  # the loop stops early enough for the held-out figures after it


def _tied_values(g: Graph) -> list[Value]:
    return [c for c in g.constants if len({id(n) for n, _ in c.uses}) > 1 and c.dtype == "f32" and c.data.ndim == 2]


def test_tied_graph_keeps_one_tensor_per_shared_weight(vit):
    g, feeds = vit
    tied = nasc.optimize(g, "simplify,fuse,tie-layers{blocks=2 rank=4}", calib=feeds)
    out = nasc.optimize(g, f"simplify,fuse,tie-layers{{blocks=2 rank=4}},recover{{{QUICK} features=1}}",
                        calib=feeds)
    shared_before, shared_after = _tied_values(tied), _tied_values(out)
    assert len(shared_after) == len(shared_before) >= 8
    assert sorted(len(v.uses) for v in shared_after) == sorted(len(v.uses) for v in shared_before)
    before = _consts(tied)
    assert any(not np.array_equal(before[v.name], v.data) for v in shared_after)  # shared weights trained, once
    assert len(out.constants) == len(tied.constants)
    assert _section(out)["details"]["features"], "block boundaries blocks.0..5 map back by scope"


def test_train_selects_corrections_norms_or_scales(vit, digits):
    g, feeds = vit
    tied = nasc.optimize(g, "simplify,fuse,tie-layers{blocks=2 rank=4}", calib=feeds)
    corr = trainable_values(tied, "corrections")
    assert corr and all(any(n.meta.get("tie.correction") for n, _ in v.uses) for v in corr)
    out = nasc.optimize(g, f"simplify,fuse,tie-layers{{blocks=2 rank=4}},recover{{{QUICK} train=corrections}}",
                        calib=feeds)
    names = {v.name for v in corr}
    before = _consts(tied)
    changed = {c.name for c in out.constants if not np.array_equal(before[c.name], c.data)}
    assert changed and changed <= names
    norms = trainable_values(tied, "norms")
    assert norms and all(v.data.ndim == 1 for v in norms)
    assert not {v.name for v in norms} & names
    gd, fd, _ = digits
    q = nasc.optimize(gd, "simplify,fuse,quantize", calib=fd)
    scales = trainable_values(q, "scales")
    assert scales and all(v.name.endswith("_scale") for v in scales)
    assert not any(v.dtype == "i32" for v in trainable_values(q, "scales"))
    assert set(map(id, scales)).isdisjoint(map(id, trainable_values(q, "all")))
    assert set(map(id, scales)) <= set(map(id, trainable_values(q, "all", learn_scales=True)))


def test_errors_name_what_is_missing(digits):
    g, feeds, _ = digits
    with pytest.raises(UsageError, match="calibration"):
        nasc.optimize(g, "recover")
    with pytest.raises(UsageError, match=r"corrections.*run tie-layers first"):
        nasc.optimize(g, "recover{train=corrections}", calib=feeds)
    with pytest.raises(UsageError, match=r"scales.*run quantize first"):
        nasc.optimize(g, "recover{train=scales}", calib=feeds)
    with pytest.raises(UsageError, match="at least 2 calibration feeds"):
        nasc.optimize(g, "recover", calib=feeds[:1])
    with pytest.raises(UsageError, match="option train='weights' is not valid; expected all, corrections"):
        nasc.optimize(g, "recover{train=weights}", calib=feeds)
    with pytest.raises(UsageError, match="nothing to train"):
        nasc.optimize(g, "recover{freeze=.}", calib=feeds)


def test_train_lowering_is_exact_and_its_gradients_are_lsq():
    import torch

    from nasc.backends.pytorch.quant import fake_quant

    x = torch.tensor([-1.3, -0.26, 0.04, 0.55, 2.0], requires_grad=True)
    s = torch.tensor(0.1, requires_grad=True)
    y = fake_quant(x, s, None, 0, 0, -7, 7)
    np.testing.assert_array_equal(y.detach().numpy(), np.float32([-0.7, -0.3, 0.0, 0.6, 0.7]))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 0])  # straight through inside, zero when clamped
    v = np.float32([-1.3, -0.26, 0.04, 0.55, 2.0]) / np.float32(0.1)
    lsq = np.where(v < -7, -7, np.where(v > 7, 7, np.round(v) - v)).sum() / np.sqrt(5 * 7)
    assert float(s.grad) == pytest.approx(lsq, rel=1e-5)


def test_fixed_scale_fake_quantization_is_exact_and_straight_through_under_vmap():
    """With the scale fixed (not trained) one fused pass computes dequantize(quantize(x)) bit for bit and x's
    LSQ gradient, per channel with zero points too, and under vmap (recover batches the student with it)."""
    import torch

    from nasc.backends.pytorch.quant import dequantize, fake_quant, quantize

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 3, 4, 4, generator=g) * 3).requires_grad_(True)
    s = torch.tensor([0.05, 0.1, 0.2])
    z = torch.tensor([128, 10, 250], dtype=torch.int32)

    def one(xi: torch.Tensor) -> torch.Tensor:
        return fake_quant(xi, s, z, 0, 0, 0, 255)  # xi [3, 4, 4]: channels on axis 0

    y = torch.func.vmap(one)(x)
    exact = dequantize(quantize(x.detach(), s, z, 1, 0, torch.int32, 0, 255), s, z, 1, 0, torch.float32)
    np.testing.assert_array_equal(y.detach().numpy(), exact.numpy())
    y.sum().backward()
    u = x.detach() / s.reshape(1, 3, 1, 1) + z.reshape(1, 3, 1, 1).float()
    np.testing.assert_array_equal(x.grad.numpy(), ((u >= 0) & (u <= 255)).float().numpy())
    assert 0 < float(x.grad.mean()) < 1  # some values clamp, most pass


def test_taylor_importance_ranks_a_dead_channel_first(digits):
    g, feeds, _ = digits
    g = nasc.optimize(g, "simplify,fuse")
    conv = next(n for n in g.nodes if n.op == "Conv")
    w = np.array(conv.input(1).data)
    w[3] = 0
    conv.input(1).const = type(conv.input(1).const)(w.shape, "f32", lambda a=w: a)
    if conv.has_input(2):
        b = np.array(conv.input(2).data)
        b[3] = 0
        conv.input(2).const = type(conv.input(2).const)(b.shape, "f32", lambda a=b: a)
    out = nasc.optimize(g, "prune{ratio=0.1 importance=taylor}", calib=feeds)
    pruned = next(n for n in out.nodes if n.op == "Conv" and n.name == conv.name).input(1)
    assert pruned.shape[0] < w.shape[0]
    assert np.all(np.abs(np.asarray(pruned.data)).reshape(pruned.shape[0], -1).sum(axis=1) > 0)  # the dead one went
    again = nasc.optimize(g, "prune{ratio=0.1 importance=taylor}", calib=feeds)
    assert all(np.array_equal(a.data, b.data) for a, b in zip(out.constants, again.constants, strict=True))


def test_fisher_sensitivity_ranks_widths_and_meets_the_budget(digits):
    g, feeds, _ = digits
    base = nasc.optimize(g, "simplify,fuse")
    full = sum(int(np.prod(c.shape)) * 4 for c in base.constants)
    out = nasc.optimize(g, f"simplify,fuse,quant-policy{{sensitivity=fisher flash={full // 5}}}", calib=feeds)
    policy = out.meta[POLICY_KEY]
    rows = [r for r in policy.values() if "candidates" in r]
    assert rows and all(r["candidates"]["4"] > r["candidates"]["8"] > 0 for r in rows)  # int4 rounds more
    assert {r["bits"] for r in rows} == {8, 4}
    with pytest.raises(UsageError, match="sensitivity='hessian' is not valid; expected measured, fisher"):
        nasc.optimize(g, "quant-policy{sensitivity=hessian}", calib=feeds)
