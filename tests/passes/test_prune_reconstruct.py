"""reconstruct: least-squares refit of the layers that lost input channels, on the digits CNN and small IR graphs.

Pruning here is by hand (the first units of a group), so that each test states exactly what was removed.
The refit is checked against ONNX Runtime: the errors it reports are the errors the graph really has, each
refit layer's error falls, and the whole model is closer to the unpruned one than without reconstruction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nasc
from nasc.backends.fidelity import load_calibration, random_inputs, run_graph
from nasc.errors import UsageError
from nasc.ir import parse, verify
from nasc.passes.manager import PassContext
from nasc.passes.prune_apply import apply_plan
from nasc.passes.prune_groups import Analysis, Group, channel_groups
from nasc.passes.prune_reconstruct import RIDGES, reconstruct

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
DIGITS_NPZ = ROOT / "examples" / "digits_test.npz"

# three Gemm layers: fc2 loses input and output channels, fc3 (alpha=0.5, transB) only input channels
MLP = '''graph "mlp" opsets {"": 21}
input %x : f32[16,12]
const %w1 : f32[32,12] = "w1"
const %b1 : f32[32] = "b1"
const %w2 : f32[32,24] = "w2"
const %b2 : f32[24] = "b2"
const %w3 : f32[10,24] = "w3"
const %b3 : f32[10] = "b3"
%h1 : f32[16,32] = Gemm(%x, %w1, %b1) {transB=1} @"fc1" #"fc1"
%r1 : f32[16,32] = Relu(%h1) @"act1" #"act1"
%h2 : f32[16,24] = Gemm(%r1, %w2, %b2) @"fc2" #"fc2"
%r2 : f32[16,24] = Relu(%h2) @"act2" #"act2"
%y : f32[16,10] = Gemm(%r2, %w3, %b3) {alpha=0.5, transB=1} @"fc3" #"fc3"
output %y
'''

# MatMul + Add bias on [B, S, K] tokens; %w3 is tied (read by two MatMuls), so it must not be refit
TOKENS = '''graph "tokens" opsets {"": 21}
input %x : f32[2,6,12]
const %w1 : f32[12,32] = "w1"
const %b1 : f32[32] = "b1"
const %w2 : f32[32,12] = "w2"
const %b2 : f32[12] = "b2"
const %w3 : f32[32,8] = "w3"
%h : f32[2,6,32] = MatMul(%x, %w1) @"up" #"up"
%hb : f32[2,6,32] = Add(%h, %b1) @"up" #"up_bias"
%r : f32[2,6,32] = Relu(%hb) @"act" #"act"
%s : f32[2,6,32] = Sigmoid(%hb) @"gate" #"gate"
%o : f32[2,6,12] = MatMul(%r, %w2) @"down" #"down"
%y : f32[2,6,12] = Add(%o, %b2) @"down" #"down_bias"
%t1 : f32[2,6,8] = MatMul(%r, %w3) @"tied.a" #"tied_a"
%t2 : f32[2,6,8] = MatMul(%s, %w3) @"tied.b" #"tied_b"
%z : f32[2,6,8] = Add(%t1, %t2) #"tied_sum"
output %y, %z
'''

# the second conv has no bias (reconstruct adds one) and the geometry under test
CONVS = '''graph "convs" opsets {"": 21}
input %x : f32[1,3,10,10]
const %w1 : f32[8,3,3,3] = "w1"
const %b1 : f32[8] = "b1"
const %w2 : f32[6,8,3,3] = "w2"
%h : f32[1,8,10,10] = Conv(%x, %w1, %b1) {pads=[1, 1, 1, 1]} @"conv1" #"conv1"
%r : f32[1,8,10,10] = Relu(%h) @"act" #"act"
%y : f32[1,6,OH,OW] = Conv(%r, %w2) {ATTRS} @"conv2" #"conv2"
output %y
'''


def consts(graph_text: str, seed: int = 0) -> dict[str, np.ndarray]:
    """He-scaled random weights (fan-in: the widest axis but the first, or the first of MatMul [K, N]) and biases."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in parse(graph_text).constants:
        shape = c.shape
        fan_in = shape[0] if graph_text is TOKENS else int(np.prod(shape[1:]))
        scale = np.sqrt(2.0 / fan_in) if len(shape) > 1 else 0.3
        out[c.name] = (scale * rng.standard_normal(shape)).astype(np.float32)
    return out


def ctx_for(feeds: list[dict[str, np.ndarray]] | None, seed: int = 0) -> PassContext:
    """The context nasc.api.optimize builds: ONNX Runtime as the runner, the feeds as calibration data."""
    return PassContext(calib=feeds, seed=seed, runner=run_graph)


def group_through(a: Analysis, node: str) -> Group:
    """The prunable group of ``node``'s result channels."""
    for g in a.prunable:
        if any(m.node.name == node and m.port == "out" for m in g.members):
            return g
    raise AssertionError(f"no prunable group through the result of {node}")


def pruned(g: nasc.Graph, groups: list[tuple[str, int]]) -> tuple[nasc.Graph, dict]:
    """A clone of ``g`` without the first ``k`` units of the group through each named node; and the plan."""
    a = channel_groups(g)
    units = [u for node, k in groups for u in group_through(a, node).units[:k]]
    plan = a.removal(units)
    after = g.clone()
    apply_plan(after, plan)
    return after, plan


def outputs(g: nasc.Graph, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    per_feed = run_graph(g, feeds)
    return [np.concatenate([f[i] for f in per_feed]) for i in range(len(per_feed[0]))]


def max_err(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return max(float(np.abs(r - o).max()) for r, o in zip(ref, got, strict=True))


def refit(report: list[dict]) -> dict[str, dict]:
    return {e["node"]: e for e in report if "skipped" not in e}


# ---- the digits CNN ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[nasc.Graph, list[dict[str, np.ndarray]], np.ndarray, list[np.ndarray]]:
    g = nasc.load(str(DIGITS))
    feeds = load_calibration(str(DIGITS_NPZ), g)
    labels = np.load(DIGITS_NPZ)["label"]
    return g, feeds, labels, outputs(g, feeds)


# (group through which node, units removed): the group's input-losing layers, and the measured figures on
# the 360 test digits (reconstruct fits on the first 32): accuracy 98.9% unpruned;
#   /down/conv 16 of 32: head refit 0.573 -> 0.075; accuracy 93.9% -> 98.6%, max |logit error| 6.03 -> 2.58
#   /stem/conv 8 of 16: res conv 0.899 -> 0.347, down conv 1.633 -> 0.663; accuracy 15.6% -> 71.4%,
#                       max |logit error| 15.5 -> 8.4
DIGITS_CASES = [
    ("/down/conv/Conv", 16, {"/head/Gemm"}, 0.03, 0.97, 0.6),
    ("/stem/conv/Conv", 8, {"/res/conv/Conv", "/down/conv/Conv"}, 0.40, 0.6, 0.7),
]


@pytest.mark.parametrize(("node", "k", "layers", "acc_gain", "acc_min", "err_ratio"), DIGITS_CASES)
def test_digits_reconstruction_beats_plain_pruning(digits, node, k, layers, acc_gain, acc_min, err_ratio):
    g, feeds, labels, ref = digits
    after, plan = pruned(g, [(node, k)])
    plain = outputs(after, feeds)
    report = reconstruct(g, after, plan, ctx_for(feeds))
    verify(after)
    done = refit(report)
    assert set(done) == layers and len(report) == len(layers)
    for e in done.values():  # each refit lowers its layer's error on its fitting rows by at least a third
        assert e["error_after"] < 0.67 * e["error_before"], e
        assert e["in_kept"] == e["in_total"] - k
    rebuilt = outputs(after, feeds)
    acc_plain = float((plain[0].argmax(1) == labels).mean())
    acc_rebuilt = float((rebuilt[0].argmax(1) == labels).mean())
    assert acc_rebuilt >= acc_plain + acc_gain and acc_rebuilt >= acc_min, (acc_plain, acc_rebuilt)
    assert max_err(ref, rebuilt) < err_ratio * max_err(ref, plain)


def test_digits_full_rank_changes_nothing(digits):
    g, feeds, _, ref = digits
    a = channel_groups(g)
    assert a.removal([]) == {}
    after = g.clone()
    assert reconstruct(g, after, {}, ctx_for(feeds)) == []
    # a plan that names the spaces but keeps every index: no layer lost input channels
    _, plan = pruned(g, [("/down/conv/Conv", 16)])
    values = list(g.values())
    full = {(pos, axis): np.arange(values[pos].shape[axis]) for pos, axis in plan}
    assert len(full) > 3 and reconstruct(g, after, full, ctx_for(feeds)) == []
    assert max_err(ref, outputs(after, feeds)) < 1e-6


def test_reconstruct_needs_calibration_data(digits):
    g = digits[0]
    after, plan = pruned(g, [("/down/conv/Conv", 8)])
    for calib in (None, []):
        with pytest.raises(UsageError, match=r"reconstruct=true needs calibration data \(--calib\)"):
            reconstruct(g, after, plan, ctx_for(calib))


# ---- small graphs: Gemm, MatMul + Add on tokens, tied weights, conv geometry --------------------------------


def test_mlp_gemm_layers_are_refit_in_order():
    g = parse(MLP, consts(MLP))
    feeds = random_inputs(g, seed=1, batches=64)  # fit on the first 32, judge on the last 32
    after, plan = pruned(g, [("fc1", 12), ("fc2", 10)])
    plain = outputs(after, feeds[32:])
    report = reconstruct(g, after, plan, ctx_for(feeds))
    verify(after)
    done = refit(report)
    assert list(done) == ["fc2", "fc3"]
    assert (done["fc2"]["in_kept"], done["fc2"]["in_total"], done["fc3"]["in_kept"]) == (20, 32, 14)
    for e in done.values():
        assert e["error_after"] < 0.8 * e["error_before"], e
    # sequential: fc3 was fit on the refitted fc2's output, so its reported error is the model's
    fit_ref = outputs(g, feeds[:32])[0]
    real = np.linalg.norm(outputs(after, feeds[:32])[0] - fit_ref) / np.linalg.norm(fit_ref)
    np.testing.assert_allclose(done["fc3"]["error_after"], real, rtol=1e-4)
    ref = outputs(g, feeds[32:])
    # measured on held-out inputs: max abs error 3.10 -> 1.93 (seed 0 weights, seed 1 inputs)
    assert max_err(ref, outputs(after, feeds[32:])) < 0.75 * max_err(ref, plain)
    assert after.find_node("fc3").input(1).shape == (10, 14)  # transB layout kept


def test_matmul_bias_add_is_refit_and_tied_weights_are_skipped():
    g = parse(TOKENS, consts(TOKENS))
    feeds = random_inputs(g, seed=2, batches=40)  # fit on the first 32, judge on the last 8
    after, plan = pruned(g, [("up", 12)])
    ref, plain = outputs(g, feeds[32:])[0], outputs(after, feeds[32:])[0]
    before_bias = after.find_node("down_bias").input(1)
    report = reconstruct(g, after, plan, ctx_for(feeds))
    verify(after)
    done = refit(report)
    assert list(done) == ["down"] and done["down"]["rows"] == 32 * 2 * 6  # B*S tokens per feed
    assert done["down"]["error_after"] < 0.8 * done["down"]["error_before"]
    skipped = {e["node"]: e["skipped"] for e in report if "skipped" in e}
    assert set(skipped) == {"tied_a", "tied_b"} and all("shared" in why for why in skipped.values())
    new_bias = after.find_node("down_bias").input(1)
    assert new_bias is not before_bias and new_bias.shape == (12,)
    assert after.find_node("tied_a").input(1) is after.find_node("tied_b").input(1)
    # %y is down's biased result: the reported error is its real error on the fitting feeds
    fit_ref, fit_got = outputs(g, feeds[:32])[0], outputs(after, feeds[:32])[0]
    real = np.linalg.norm(fit_got - fit_ref) / np.linalg.norm(fit_ref)
    np.testing.assert_allclose(done["down"]["error_after"], real, rtol=1e-4)
    # measured on held-out inputs, output %y: max abs error 3.77 -> 2.79
    assert max_err([ref], outputs(after, feeds[32:])[:1]) < 0.85 * max_err([ref], [plain])


@pytest.mark.parametrize(("attrs", "oh", "ow"), [("strides=[2, 2], dilations=[2, 2], pads=[2, 1, 0, 2]", 4, 5),
                                               ('auto_pad="SAME_UPPER", strides=[2, 2]', 5, 5)])  # pads 0 / 1
def test_conv_rows_are_the_layer_output(attrs, oh, ow):
    """With every row used, the errors reconstruct reports are the conv's real output errors (im2col checked
    against ONNX Runtime, for strides, dilations, asymmetric and automatic padding)."""
    text = CONVS.replace("ATTRS", attrs).replace("OH", str(oh)).replace("OW", str(ow))
    g = parse(text, consts(text))
    feeds = random_inputs(g, seed=3, batches=8)
    after, plan = pruned(g, [("conv1", 3)])
    y_ref = outputs(g, feeds)[0]
    err_plain = np.linalg.norm(outputs(after, feeds)[0] - y_ref) / np.linalg.norm(y_ref)
    report = reconstruct(g, after, plan, ctx_for(feeds), max_rows=10**6)
    verify(after)
    (e,) = report
    assert e["node"] == "conv2" and e["rows"] == 8 * oh * ow and (e["in_kept"], e["in_total"]) == (5, 8)
    err_refit = np.linalg.norm(outputs(after, feeds)[0] - y_ref) / np.linalg.norm(y_ref)
    np.testing.assert_allclose([e["error_before"], e["error_after"]], [err_plain, err_refit], rtol=1e-4)
    assert err_refit < 0.9 * err_plain and after.find_node("conv2").has_input(2)  # a bias was added


def test_row_sampling_is_seeded():
    g = parse(MLP, consts(MLP))
    feeds = random_inputs(g, seed=4, batches=32)
    runs = []
    for seed in (0, 0, 1):
        after, plan = pruned(g, [("fc2", 8)])
        runs.append(reconstruct(g, after, plan, ctx_for(feeds, seed), max_rows=100)[0]["error_after"])
    assert runs[0] == runs[1] != runs[2]


def test_gemm_reported_errors_are_the_graph_errors():
    """fc3 (alpha=0.5, transB) is the output layer: its reported errors are the model's, before and after."""
    g = parse(MLP, consts(MLP))
    feeds = random_inputs(g, seed=5, batches=32)
    after, plan = pruned(g, [("fc2", 10)])
    ref = outputs(g, feeds)[0]
    err_plain = np.linalg.norm(outputs(after, feeds)[0] - ref) / np.linalg.norm(ref)
    (e,) = reconstruct(g, after, plan, ctx_for(feeds))
    err_refit = np.linalg.norm(outputs(after, feeds)[0] - ref) / np.linalg.norm(ref)
    assert e["node"] == "fc3" and e["rows"] == 32 * 16
    np.testing.assert_allclose([e["error_before"], e["error_after"]], [err_plain, err_refit], rtol=1e-4)


def test_a_huge_ridge_keeps_the_pruned_weights():
    """The ridge pulls the fit towards the pruned layer's own weights: a huge one leaves them as they are
    (to 1e-4), and only the unpenalized bias moves."""
    g = parse(MLP, consts(MLP))
    feeds = random_inputs(g, seed=6, batches=8)
    after, plan = pruned(g, [("fc2", 1)])
    w = after.find_node("fc3").input(1).data.copy()
    (e,) = reconstruct(g, after, plan, ctx_for(feeds), ridge=1e6)
    if "skipped" not in e:
        np.testing.assert_allclose(after.find_node("fc3").input(1).data, w, atol=1e-4)
    assert e["error_after"] <= e["error_before"] if "error_after" in e else "skipped" in e


def test_the_ridge_is_chosen_on_held_out_inputs():
    """Without a given ridge, each layer's comes from RIDGES by the error on the last quarter of the inputs."""
    g = parse(MLP, consts(MLP))
    feeds = random_inputs(g, seed=6, batches=8)
    after, plan = pruned(g, [("fc2", 1)])
    (e,) = reconstruct(g, after, plan, ctx_for(feeds))
    assert e.get("ridge") in (*RIDGES, None)


def test_nodes_that_apply_plan_finds_dead_are_skipped_over():
    text = MLP.replace('%h1 :', '%dead : f32[16,12] = Relu(%x) #"dead"\n%h1 :')
    g = parse(text, consts(MLP))
    feeds = random_inputs(g, seed=7, batches=8)
    after, plan = pruned(g, [("fc2", 4)])
    assert len(after.nodes) == len(g.nodes) - 1
    assert list(refit(reconstruct(g, after, plan, ctx_for(feeds)))) == ["fc3"]
