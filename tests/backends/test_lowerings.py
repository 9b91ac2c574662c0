"""Every lowering in the tables is built and run on the cpu and on the mcu (host gcc), against expected outputs.

The cases are node tests of the onnx backend suite (the ONNX project's models, inputs and expected outputs,
compared at the suite's tolerances: rtol 1e-3, atol 1e-7 unless a test sets its own), and small IR models for
the ops no node test reaches: nasc's own ops, and the shape ops the importer folds away. Their expected outputs
come from ONNX Runtime on nasc's exported graph, or bit-exact from the integer reference for the quantized ops.
One family of cases is merged into one graph, so each family costs one build per target; when a family fails,
its cases are rebuilt one by one to name the culprits. Each build also checks that the lowering of every op
its cases claim really ran (an op the importer folded away would otherwise pass untested), and
test_every_lowering_has_a_case fails when a lowering is added without a case here. The MCU backend builds
through the same table (build_mcu lowers with to_relax), so the table is both targets' supported set; the MCU
also refuses half-precision tensors, so the cases here are float32 and integer.
The same families also run through nasc.to_torch (target "torch": the merged graph, integerized as the TVM
lowering does, as a torch.fx module under no_grad, compared at the same tolerances), each family whose every op
has a torch lowering; TORCH_MISSING lists the TVM-lowered ops that still lack one, TORCH_ONLY_CASES holds the
cases of the ops only torch lowers, and TORCH_ONLY_FORMS those of forms of shared ops only torch takes.
The whole ONNX node suite on the targets: tools/onnx_conformance.py --target cpu,mcu,torch (docs/conformance.md).
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nasc.backends.pytorch import nn as _torch_nn  # noqa: F401  (these register the torch lowerings)
from nasc.backends.pytorch import ops as _torch_ops  # noqa: F401
from nasc.backends.pytorch import quant as _torch_quant  # noqa: F401
from nasc.backends.pytorch import shape as _torch_shape  # noqa: F401
from nasc.backends.pytorch.lower import LOWERINGS as TORCH_LOWERINGS
from nasc.backends.pytorch.run import run_torch
from nasc.backends.tvm import ops as _ops  # noqa: F401  (registers the lowerings)
from nasc.backends.tvm import qops as _qops  # noqa: F401
from nasc.backends.tvm.lower import LOWERINGS
from nasc.ir.core import Graph
from nasc.ir.dtypes import to_numpy

TOOL = Path(__file__).resolve().parents[2] / "tools" / "onnx_conformance.py"
_spec = importlib.util.spec_from_file_location("onnx_conformance", TOOL)
conf = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules.setdefault("onnx_conformance", conf)
_spec.loader.exec_module(conf)  # type: ignore[union-attr]

# family -> op -> cases: node tests of the onnx suite ("test_abs"), or generated IR models ("gen:<name>": GENERATED_TEXT
# below, or "gen:quantized", QUANTIZED quantized by nasc's own pass)
CASES: dict[str, dict[str, tuple[str, ...]]] = {
    "unary": {
        "Abs": ("test_abs",), "Neg": ("test_neg",), "Exp": ("test_exp",), "Log": ("test_log",),
        "Sqrt": ("test_sqrt",), "Reciprocal": ("test_reciprocal",), "Floor": ("test_floor",), "Ceil": ("test_ceil",),
        "Round": ("test_round",), "Sign": ("test_sign",), "Sin": ("test_sin",), "Cos": ("test_cos",),
        "Tanh": ("test_tanh",), "Erf": ("test_erf",), "Sigmoid": ("test_sigmoid",), "Relu": ("test_relu",),
        "LeakyRelu": ("test_leakyrelu",), "PRelu": ("test_prelu_broadcast",), "HardSigmoid": ("test_hardsigmoid",),
        "HardSwish": ("test_hardswish",), "Gelu": ("test_gelu_default_2", "test_gelu_tanh_2"),
        "Clip": ("test_clip", "test_clip_default_int8_min"), "IsNaN": ("test_isnan",),
        "IsInf": ("test_isinf", "test_isinf_negative"), "Not": ("test_not_2d",), "BitwiseNot": ("test_bitwise_not_2d", "test_bitwise_not_3d"),
        "Identity": ("gen:identity",), "Dropout": ("test_dropout_default_mask",),
        "nasc.SiLU": ("gen:nasc_activations",), "nasc.Relu6": ("gen:nasc_activations",),
        "Cast": ("test_cast_FLOAT_to_DOUBLE", "test_cast_DOUBLE_to_FLOAT"), "CastLike": ("test_castlike_FLOAT_to_DOUBLE",),
    },
    "binary": {
        # (the uint16/32/64 cases: torch has few kernels for them, its lowerings compute those in int64)
        "Add": ("test_add_bcast", "test_add_uint8", "test_add_uint64"), "Sub": ("test_sub_bcast", "test_sub_uint32"),
        "Mul": ("test_mul_int16",),
        "Div": ("test_div_bcast", "test_div_int8", "test_div_uint64"),
        "Mod": ("test_mod_mixed_sign_int32", "test_mod_mixed_sign_float32", "test_mod_float_edge_cases_fmod_0_float32",
                "test_mod_uint64"),
        "Pow": ("test_pow_bcast_array", "test_pow_types_int32_int32"), "Max": ("test_max_example", "test_max_uint32"),
        "Min": ("test_min_example", "test_min_uint64"), "Sum": ("test_sum_example",), "Mean": ("test_mean_example",),
        "Equal": ("test_equal_bcast",), "Less": ("test_less", "test_less_uint16"), "Greater": ("test_greater",),
        "LessOrEqual": ("test_less_equal",), "GreaterOrEqual": ("test_greater_equal_bcast", "test_greater_equal_uint64"),
        "And": ("test_and_bcast3v1d",), "Or": ("test_or2d",), "Xor": ("test_xor3d",),
        "BitwiseAnd": ("test_bitwise_and_i32_2d",), "BitwiseOr": ("test_bitwise_or_ui8_bcast_4v3d",),
        "BitwiseXor": ("test_bitwise_xor_i16_3d",), "Where": ("test_where_long_example",),
    },
    "shape": {
        "Reshape": ("test_reshape_negative_dim", "test_reshape_allowzero_reordered"),
        "Flatten": ("test_flatten_axis2",), "Squeeze": ("test_squeeze_negative_axes",),
        "Unsqueeze": ("test_unsqueeze_two_axes",), "Expand": ("test_expand_dim_changed",),
        "Transpose": ("test_transpose_all_permutations_4",), "Concat": ("test_concat_3d_axis_negative_2",),
        "Split": ("test_split_2d_uneven_split_opset18",), "Slice": ("test_slice_neg_steps", "test_slice_negative_axes"),
        "Gather": ("test_gather_negative_indices", "test_gather_2d_indices"),
        "GatherElements": ("test_gather_elements_negative_indices",), "GatherND": ("test_gathernd_example_int32_batch_dim1",),
        "Tile": ("test_tile",), "Pad": ("test_edge_pad", "test_reflect_pad", "test_wrap_pad", "test_constant_pad_axes"),
        "Shape": ("gen:shape_ops",), "Size": ("gen:shape_ops",), "ConstantOfShape": ("gen:shape_ops",),
        "Range": ("gen:shape_ops",), "EyeLike": ("gen:shape_ops",),
    },
    "reduce": {
        "ReduceMean": ("test_reduce_mean_negative_axes_keepdims_random",),
        "ReduceSum": ("test_reduce_sum_do_not_keepdims_random", "test_reduce_sum_empty_set"),
        "ReduceMax": ("test_reduce_max_keepdims_random", "test_reduce_max_bool_inputs",
                      "test_attention_23_boolmask_fullymasked_row_nan_robustness_expanded"),  # a row of -inf
        "ReduceMin": ("test_reduce_min_empty_set",), "ReduceProd": ("test_reduce_prod_keepdims_random",),
        "ReduceL1": ("test_reduce_l1_keep_dims_random",), "ReduceL2": ("test_reduce_l2_do_not_keepdims_random",),
        "ReduceSumSquare": ("test_reduce_sum_square_default_axes_keepdims_random",),
        "ReduceLogSumExp": ("test_reduce_log_sum_exp_negative_axes_keepdims_random",),
        "ArgMax": ("test_argmax_negative_axis_keepdims_random", "test_argmax_keepdims_example_select_last_index"),
        "ArgMin": ("test_argmin_no_keepdims_random",),
        "CumSum": ("test_cumsum_2d_negative_axis", "test_cumsum_1d_reverse_exclusive"), "Softmax": ("test_softmax_axis_1",),
        "LogSoftmax": ("test_logsoftmax_axis_0",), "Einsum": ("test_einsum_batch_diagonal", "test_einsum_sum"),
    },
    "nn": {
        "Conv": ("test_conv_with_strides_and_asymmetric_padding", "test_conv_with_autopad_same"),
        "ConvTranspose": ("test_convtranspose_pads", "test_convtranspose_autopad_same", "test_convtranspose_3d"), "MatMul": ("test_matmul_4d",),
        "Gemm": ("test_gemm_all_attributes",), "BatchNormalization": ("test_batchnorm_epsilon",),
        "LayerNormalization": ("test_layer_normalization_3d_axis1_epsilon",),
        "MaxPool": ("test_maxpool_2d_ceil", "test_maxpool_3d_default"),
        "AveragePool": ("test_averagepool_2d_pads_count_include_pad", "test_averagepool_1d_default"),
        "GlobalAveragePool": ("test_globalaveragepool",), "GlobalMaxPool": ("test_globalmaxpool",),
        "Resize": ("test_resize_upsample_scales_linear", "test_resize_downsample_scales_cubic",
                   "test_resize_upsample_sizes_nearest_ceil_half_pixel", "test_resize_tf_crop_and_resize"),
        "LSTM": ("test_lstm_with_peepholes",), "nasc.Attention": ("gen:attention",),
    },
    "quantized": {
        "QuantizeLinear": ("test_quantizelinear_axis", "gen:quantized"), "DequantizeLinear": ("test_dequantizelinear",),
        "nasc.QConv": ("gen:quantized",), "nasc.QAdd": ("gen:quantized",), "nasc.QGemm": ("gen:quantized",),
        "nasc.QGlobalAveragePool": ("gen:quantized",), "nasc.QMatMul": ("gen:quantized",),
    },
}

TARGETS = ("cpu", "mcu")

# ops with a torch lowering but none for TVM: run on torch only
TORCH_ONLY_CASES: dict[str, dict[str, tuple[str, ...]]] = {
    "torch_only": {
        "Tan": ("test_tan",), "Atan": ("test_atan",), "Asin": ("test_asin",), "Acos": ("test_acos",),
        "Sinh": ("test_sinh",), "Cosh": ("test_cosh",), "Asinh": ("test_asinh",), "Acosh": ("test_acosh",),
        "Atanh": ("test_atanh",), "Mish": ("test_mish",), "Softsign": ("test_softsign",), "Softplus": ("test_softplus",),
        "Elu": ("test_elu",), "Celu": ("test_celu",), "Selu": ("test_selu",), "ThresholdedRelu": ("test_thresholdedrelu",),
        "Shrink": ("test_shrink_soft", "test_shrink_hard"), "Hardmax": ("test_hardmax_one_hot", "test_hardmax_negative_axis"),
        "TopK": ("test_top_k_same_values_2d", "test_top_k_smallest"),
        "DepthToSpace": ("test_depthtospace_crd_mode_example", "test_depthtospace_example"),
        "SpaceToDepth": ("test_spacetodepth_crd_mode_example", "test_spacetodepth_example"),
        "Trilu": ("test_tril_neg", "test_triu_out_pos"),
        "OneHot": ("test_onehot_negative_indices", "test_onehot_with_axis", "test_onehot_out_of_range_indices"),
        "ScatterElements": ("test_scatter_elements_with_negative_indices", "test_scatter_elements_with_reduction_mul"),
        "ScatterND": ("test_scatternd_add", "test_scatternd_max"),
        "InstanceNormalization": ("test_instancenorm_epsilon",), "GroupNormalization": ("test_group_normalization_epsilon",),
        "LpNormalization": ("test_l1normalization_axis_0", "test_l2normalization_axis_0"),
        "MatMulInteger": ("test_matmulinteger",), "ConvInteger": ("test_convinteger_with_padding",),
        "RMSNormalization": ("test_rms_normalization_3d_axis1_epsilon",), "MeanVarianceNormalization": ("test_mvn",),
        "LRN": ("test_lrn",), "CumProd": ("test_cumprod_1d_reverse_exclusive", "test_cumprod_2d_int32"),
        "Swish": ("test_swish",), "NegativeLogLikelihoodLoss": ("test_nllloss_NCd1d2_with_weight_reduction_sum_ii",),
        "SoftmaxCrossEntropyLoss": ("test_sce_mean_weight_ii_3d_log_prob",),
        "Det": ("test_det_nd",),
        "GRU": ("test_gru_seq_length", "test_gru_bidirectional"), "RNN": ("test_simple_rnn_batchwise", "test_rnn_seq_length"),
        "GridSample": ("test_gridsample_bicubic_align_corners_1_additional_1",
                       "test_gridsample_volumetric_bilinear_align_corners_0", "test_gridsample_reflection_padding"),
    },
}
# ops both lower, in forms only the torch lowerings take (the TVM lowering needs the operand constant)
TORCH_ONLY_FORMS: dict[str, dict[str, tuple[str, ...]]] = {
    "torch_only_forms": {"Pad": ("gen:pad_computed_value",)},
}
ALL_CASES = {**CASES, **TORCH_ONLY_CASES, **TORCH_ONLY_FORMS}

# nasc.to_torch runs every family whose every op has a torch lowering; the TVM-lowered ops that still lack one
# (test_torch_lowerings_still_missing keeps this list exact: adding a torch lowering shrinks it)
TORCH_FAMILIES = [f for f in ALL_CASES if set(ALL_CASES[f]) <= set(TORCH_LOWERINGS)]
TORCH_MISSING: set[str] = set()


@dataclass
class Case:
    """A graph, its feed and expected outputs, and the tolerance they are compared at."""

    name: str
    graph: Graph
    feed: dict[str, np.ndarray]
    expected: list[np.ndarray]
    rtol: float
    atol: float
    bound: list[str] = field(default_factory=list)


# ---- generated cases: IR text; expected outputs from ONNX Runtime on nasc's exported graph ----------------

SHAPE_OPS = '''graph "shape_ops" opsets {"": 21}
input %x : f32[2,3]
const %dims : i64[2] = dense[3, 2]
const %start : i32[] = dense[10]
const %limit : i32[] = dense[1]
const %delta : i32[] = dense[-3]
%s : i64[2] = Shape(%x)
%n : i64[] = Size(%x)
%c : f32[3,2] = ConstantOfShape(%dims) {value=dense<f32[1]>[1.5]}
%r : i32[3] = Range(%start, %limit, %delta)
%e : f32[2,3] = EyeLike(%x) {k=1}
output %s, %n, %c, %r, %e
'''

GENERATED_TEXT = {
    "identity": '''graph "identity" opsets {"": 21}
input %x : f32[3,4]
%y : f32[3,4] = Identity(%x)
output %y
''',
    "shape_ops": SHAPE_OPS,
    # a padding value the graph computes (as the expanded Attention function's Cast of -inf)
    "pad_computed_value": '''graph "pad_value" opsets {"": 21}
input %x : f32[2,3]
input %v : f32[1]
const %pads : i64[4] = dense[1, 0, 0, 2]
%w : f32[1] = Neg(%v)
%y : f32[3,5] = Pad(%x, %pads, %w)
output %y
''',
    "nasc_activations": '''graph "act" opsets {"": 21}
input %x : f32[2,16]
%s : f32[2,16] = nasc.SiLU(%x)
%r : f32[2,16] = nasc.Relu6(%x)
output %s, %r
''',
    "attention": '''graph "attention" opsets {"": 21}
input %q : f32[1,2,5,8]
input %k : f32[1,2,7,8]
input %v : f32[1,2,7,4]
input %m : f32[1,1,5,7]
%a : f32[1,2,5,4] = nasc.Attention(%q, %k, %v, %m)
output %a
''',
}

# a float model whose quantization gives every integer op: conv, residual add, global pool, linear, and a
# matmul whose output stays float (QMatMul)
QUANTIZED = '''graph "quantized" opsets {"": 21}
input %x : f32[1,3,8,8]
input %t : f32[1,6,8]
const %w1 : f32[8,3,3,3] = random(1)
const %b1 : f32[8] = random(2)
const %w2 : f32[8,8,1,1] = random(3)
const %wf : f32[4,8] = random(4)
const %bf : f32[4] = random(5)
const %wm : f32[8,5] = random(6)
%c1 : f32[1,8,8,8] = Conv(%x, %w1, %b1) {pads=[1, 1, 1, 1]}
%r1 : f32[1,8,8,8] = Relu(%c1)
%c2 : f32[1,8,8,8] = Conv(%r1, %w2)
%s : f32[1,8,8,8] = Add(%c2, %r1)
%g : f32[1,8,1,1] = GlobalAveragePool(%s)
%f : f32[1,8] = Flatten(%g)
%y : f32[1,4] = Gemm(%f, %wf, %bf) {transB=1}
%mm : f32[1,6,5] = MatMul(%t, %wm)
output %y, %mm
'''


def _random_inputs(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: rng.normal(size=v.shape).astype(to_numpy(v.dtype)) for v in graph.inputs}


def _with_random_constants(text: str) -> str:
    """IR text with ``random(seed)`` constants spelled out (weights in [-0.5, 0.5))."""
    import re

    def dense(m: re.Match[str]) -> str:
        shape = [int(d) for d in m.group(2).split(",")]
        vals = np.random.default_rng(int(m.group(3))).uniform(-0.5, 0.5, size=shape).reshape(-1)
        return f"{m.group(1)} = dense[{', '.join(f'{v:.6f}' for v in vals)}]"

    return re.sub(r"(const %\w+ : f32\[([\d,]+)\]) = random\((\d+)\)", dense, text)


def generated(name: str) -> Case:
    from nasc.backends.fidelity import run_graph
    from nasc.ir import parse

    if name == "quantized":
        return _quantized()
    graph = parse(GENERATED_TEXT[name])
    feed = _random_inputs(graph, 0)
    return Case(f"gen:{name}", graph, feed, [np.asarray(o) for o in run_graph(graph, [feed])[0]], 1e-4, 1e-5)


def _quantized() -> Case:
    """Quantized by nasc's own pass; compared bit for bit with the integer reference (qint.reference_run)."""
    import nasc
    from nasc.backends.tvm.qint import integerize, reference_run
    from nasc.ir import parse

    graph = parse(_with_random_constants(QUANTIZED))
    calib = [_random_inputs(graph, s) for s in range(8)]
    q = nasc.optimize(graph, "quantize", calib)
    ig, report = integerize(q)
    assert {"QConv", "QAdd", "QGlobalAveragePool", "QGemm", "QMatMul"} <= set(report.integer), report.integer
    feed = _random_inputs(graph, 100)
    return Case("gen:quantized", q, feed, [np.asarray(o) for o in reference_run(ig, [feed])[0]], 0.0, 1e-6)


# ---- node tests of the onnx suite -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_cases() -> dict[str, Any]:
    from onnx.backend.test.loader import load_node_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generating the node tests warns about the casts they exercise
        return {c.name: c for c in load_node_model_tests()}


def node_case(name: str, cases: dict[str, Any]) -> Case:
    from onnx.backend.test.runner import _normalize_tensor  # (TensorProto -> array, as the suite's runner does)

    from nasc.frontends.onnx import load_onnx

    test = cases[name]
    inputs, outputs = ([np.asarray(_normalize_tensor(a)) for a in arrays] for arrays in test.data_sets[0])
    feed = dict(zip(conf._real_inputs(test.model), inputs))
    model, feed, bound = conf.bind_operands(test.model, feed)
    graph = load_onnx(model, {k: v.shape for k, v in feed.items()})
    return Case(name, graph, feed, outputs, test.rtol, test.atol, bound)


def make_case(name: str, cases: dict[str, Any]) -> Case:
    return generated(name[4:]) if name.startswith("gen:") else node_case(name, cases)


# ---- one graph per family ---------------------------------------------------------------------------------


def merge(cases: list[Case]) -> tuple[Graph, dict[str, np.ndarray]]:
    """One graph computing every case side by side (values renamed c<i>_...), and its feed."""
    merged = Graph(name="cases", opsets=dict(cases[0].graph.opsets))
    feed: dict[str, np.ndarray] = {}
    for i, case in enumerate(cases):
        env: dict[int, Any] = {}
        for v in case.graph.inputs:
            env[id(v)] = merged.add_input(f"c{i}_{v.name}", v.type)
            feed[f"c{i}_{v.name}"] = case.feed[v.name]
        for c in case.graph.constants:
            env[id(c)] = merged.add_constant(c.const, f"c{i}_{c.name}", c.type)
        for n in case.graph.nodes:
            new = merged.make_node(n.op, [env[id(v)] if v is not None else None for v in n.inputs],
                                   [o.type for o in n.outputs], dict(n.attrs), domain=n.domain, scope=n.scope,
                                   name=f"c{i}_{n.name}", out_names=[f"c{i}_{o.name}" for o in n.outputs])
            env.update({id(o): no for o, no in zip(n.outputs, new.outputs)})
        merged.outputs.extend(env[id(v)] for v in case.graph.outputs)
    return merged, feed


def compare(cases: list[Case], got: list[np.ndarray]) -> dict[str, str]:
    """Case name -> why its outputs are not the expected ones (the onnx runner's own comparison)."""
    from onnx.backend.test.runner import Runner

    bad: dict[str, str] = {}
    pos = 0
    for case in cases:
        outs = got[pos:pos + len(case.expected)]
        pos += len(case.expected)
        try:
            Runner.assert_similar_outputs(case.expected, outs, rtol=case.rtol, atol=case.atol)
        except AssertionError as e:
            bad[case.name] = " ".join(str(e).split())[:400]
    return bad


@pytest.fixture
def lowered(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The ops whose lowering runs while the test builds."""
    seen: set[str] = set()

    def recording(op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def lower(lx: Any, node: Any) -> Any:
            seen.add(op)
            return fn(lx, node)

        return lower

    for table in (LOWERINGS, TORCH_LOWERINGS):
        for op, fn in list(table.items()):
            monkeypatch.setitem(table, op, recording(op, fn))
    return seen


def build_and_check(cases: list[Case], target: str) -> dict[str, str]:
    graph, feed = merge(cases)
    got = (run_torch(graph, [feed]) if target == "torch" else conf.build_and_run(graph, [feed], target))[0]
    return compare(cases, got)


@pytest.mark.parametrize(("family", "target"), [(f, t) for f in CASES for t in TARGETS]
                         + [(f, "torch") for f in TORCH_FAMILIES])
def test_family_builds_and_matches(family: str, target: str, node_cases: dict[str, Any], lowered: set[str]) -> None:
    names = list(dict.fromkeys(c for op_cases in ALL_CASES[family].values() for c in op_cases))
    cases = [make_case(n, node_cases) for n in names]
    try:
        bad = build_and_check(cases, target)
    except Exception as whole:  # name the cases that fail alone
        alone = {}
        for case in cases:
            try:
                alone.update(build_and_check([case], target))
            except Exception as e:
                alone[case.name] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        raise AssertionError(f"the {family} build for {target} failed ({type(whole).__name__}); "
                             f"alone: {alone or 'every case builds'}") from whole
    assert bad == {}, f"{family} on {target}: outputs differ"
    assert set(ALL_CASES[family]) - lowered == set(), "these ops' lowerings never ran (folded away on import?)"


def test_every_lowering_has_a_case() -> None:
    covered = {op for family in CASES.values() for op in family}
    assert set(LOWERINGS) - covered == set(), "lowerings without a case in CASES (add a node test or a generated model)"
    assert covered - set(LOWERINGS) == set(), "CASES names ops that have no lowering"


def test_torch_lowerings_still_missing() -> None:
    """The TVM-lowered ops without a torch lowering (their families are not run on torch), listed exactly."""
    assert set(LOWERINGS) - set(TORCH_LOWERINGS) == TORCH_MISSING


def test_every_torch_only_lowering_has_a_case() -> None:
    covered = {op for family in TORCH_ONLY_CASES.values() for op in family}
    assert set(TORCH_LOWERINGS) - set(LOWERINGS) == covered, "torch lowerings without a case in TORCH_ONLY_CASES"


def test_the_merged_graph_keeps_each_case_apart(node_cases: dict[str, Any]) -> None:
    """The batching itself: two cases merged compute what each computes alone, and a wrong output is caught."""
    cases = [make_case("test_abs", node_cases), make_case("test_neg", node_cases)]
    graph, feed = merge(cases)
    assert [v.name for v in graph.inputs] == ["c0_x", "c1_x"] and len(graph.outputs) == 2
    from nasc.backends.fidelity import run_graph

    got = [np.asarray(o) for o in run_graph(graph, [feed])[0]]
    assert compare(cases, got) == {}
    assert set(compare(cases, [got[0], got[0]])) == {"test_neg"}
