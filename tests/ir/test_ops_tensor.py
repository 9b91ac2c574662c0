"""Registry entries of ir/ops/tensor.py and ir/ops/shape_reduce.py against ONNX shape inference and ONNX Runtime.

Every case is built twice: as a one-node IR graph (the entry's infer/fold/channels/cost are called on it) and
as a one-node ONNX model (opset 21, constant operands as initializers) run through
``onnx.shape_inference.infer_shapes(strict_mode=True, data_prop=True)``; shapes and element types must agree.
Foldable ops fold their all-constant cases, and the results must equal ONNX Runtime's on the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import nasc.ir.ops.shape_reduce
import nasc.ir.ops.tensor  # noqa: F401
from nasc.ir import dtypes
from nasc.ir.core import Graph, Node
from nasc.ir.ops.registry import AxisGroup, InferenceError, lookup
from nasc.ir.types import UNKNOWN, TensorType

I64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class In:
    """A graph input (not a constant) of this type; None dims are unknown, shape None is unknown rank."""

    dtype: str
    shape: tuple[int | None, ...] | None


def arr(*shape: int, dtype: Any = np.float32) -> np.ndarray:
    n = int(np.prod(shape)) if shape else 1
    return (np.arange(n) % 7 - 2).reshape(shape).astype(dtype)


def i64(*vals: int) -> np.ndarray:
    return np.array(vals, dtype=np.int64)


def ir_node(op: str, operands: list[Any], attrs: dict[str, Any] | None, n_out: int) -> Node:
    g = Graph()
    vals = []
    for i, o in enumerate(operands):
        if o is None:
            vals.append(None)
        elif isinstance(o, In):
            shp = None if o.shape is None else tuple(UNKNOWN if d is None else d for d in o.shape)
            vals.append(g.add_input(f"x{i}", TensorType(o.dtype, shp)))
        else:
            vals.append(g.add_constant(np.asarray(o), f"c{i}"))
    return g.make_node(op, vals, [TensorType("f32", None)] * n_out, attrs or {}, name="n0")


def _onnx_attr(op: str, key: str, v: Any) -> Any:
    if key in lookup(op).dtype_attrs:  # type: ignore[union-attr]
        return helper.np_dtype_to_tensor_dtype(dtypes.to_numpy(v))
    if isinstance(v, np.ndarray):
        return numpy_helper.from_array(v, key)
    return list(v) if isinstance(v, tuple) else v


def onnx_model(op: str, operands: list[Any], attrs: dict[str, Any] | None, n_out: int,
               all_inputs: bool = False) -> onnx.ModelProto:
    inputs, inits, names = [], [], []
    for i, o in enumerate(operands):
        if o is None:
            names.append("")
            continue
        name = f"x{i}"
        names.append(name)
        if isinstance(o, In) or all_inputs:
            dt, shp = (o.dtype, o.shape) if isinstance(o, In) else (dtypes.from_numpy(o.dtype), o.shape)
            elem = helper.np_dtype_to_tensor_dtype(dtypes.to_numpy(dt))
            inputs.append(helper.make_tensor_value_info(name, elem, None if shp is None else list(shp)))
        else:
            inits.append(numpy_helper.from_array(np.asarray(o), name))
    while names and names[-1] == "":
        names.pop()
    outs = [f"y{j}" for j in range(n_out)]
    kw = {k: _onnx_attr(op, k, v) for k, v in (attrs or {}).items()}
    node = helper.make_node(op, names, outs, **kw)
    graph = helper.make_graph([node], "g", inputs, [helper.make_empty_tensor_value_info(o) for o in outs],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def onnx_types(model: onnx.ModelProto) -> list[tuple[str, tuple[int | None, ...] | None]]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    found = {v.name: v.type.tensor_type for v in [*inferred.graph.value_info, *inferred.graph.output]
             if v.type.tensor_type.elem_type}
    res = []
    for out in model.graph.output:
        tt = found[out.name]
        dt = dtypes.from_numpy(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shp = None if not tt.HasField("shape") else tuple(
            d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        res.append((dt, shp))
    return res


def run_ort(op: str, operands: list[Any], attrs: dict[str, Any] | None, n_out: int) -> list[np.ndarray]:
    model = onnx_model(op, operands, attrs, n_out, all_inputs=True)
    feeds = {}
    for i, o in enumerate(operands):
        if isinstance(o, In):
            assert o.shape is not None
            feeds[f"x{i}"] = arr(*(2 if d is None else d for d in o.shape), dtype=dtypes.to_numpy(o.dtype))
        elif o is not None:
            feeds[f"x{i}"] = np.asarray(o)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check(op: str, operands: list[Any], attrs: dict[str, Any] | None = None, n_out: int = 1,
          *, exact: bool = True, expect_fold: bool | None = None) -> list[TensorType]:
    """Infer with the entry, compare with ONNX shape inference, and check fold against ORT."""
    entry = lookup(op)
    assert entry is not None, op
    node = ir_node(op, operands, attrs, n_out)
    types = entry.infer(node)
    assert len(types) == n_out
    ref = onnx_types(onnx_model(op, operands, attrs, n_out))
    for t, (rdt, rshp) in zip(types, ref, strict=True):
        assert isinstance(t, TensorType)
        assert t.dtype == rdt, (op, t, rdt)
        if t.shape is None or rshp is None:
            assert not exact or (t.shape is None and rshp is None), (op, t, rshp)
            continue
        assert len(t.shape) == len(rshp), (op, t, rshp)
        for d, r in zip(t.shape, rshp, strict=True):
            if isinstance(d, int) and r is not None:
                assert d == r, (op, t, rshp)
            elif exact:
                assert not isinstance(d, int) and r is None, (op, t, rshp)
    # channels and cost must not raise on any case with known shapes
    if all(t.shape is not None for t in types) and all(o is None or not isinstance(o, In) or o.shape is not None
                                                      for o in operands):
        for g in entry.channels(node):
            assert isinstance(g, AxisGroup) and all(a >= 0 for _, _, a in g.members)
        entry.cost(node)
    if all(t.is_static for t in types) and all(not isinstance(o, In) or (o.shape is not None and None not in o.shape)
                                               for o in operands):
        for t, got in zip(types, run_ort(op, operands, attrs, n_out), strict=True):  # the runtime agrees too
            assert got.shape == t.shape and dtypes.from_numpy(got.dtype) == t.dtype, (op, got.shape, t)
    if entry.foldable:
        args = [None if o is None or isinstance(o, In) else np.asarray(o) for o in operands]
        res = entry.fold(node, args)
        if expect_fold is None:
            expect_fold = all(not isinstance(o, In) for o in operands) or op in ("Shape", "Size")
        assert (res is not None) == expect_fold, (op, res)
        if res is not None:
            want = run_ort(op, operands, attrs, n_out)
            for r, w, t in zip(res, want, types, strict=True):
                np.testing.assert_array_equal(r, w)
                assert r.dtype == w.dtype, (op, r.dtype, w.dtype)
                assert r.shape == t.shape and dtypes.from_numpy(r.dtype) == t.dtype, (op, r.shape, t)
    return types  # type: ignore[return-value]


def shapes(types: list[TensorType]) -> list[Any]:
    return [t.shape for t in types]


# ---- static cases: (op, operands, attrs, expected result shapes) ----------------------------------

X = arr(2, 3, 4)
CASES: list[tuple[str, list[Any], dict[str, Any], list[tuple[int, ...]]]] = [
    ("Reshape", [X, i64(4, -1)], {}, [(4, 6)]),
    ("Reshape", [X, i64(0, -1)], {}, [(2, 12)]),
    ("Reshape", [X, i64(-1)], {}, [(24,)]),
    ("Reshape", [X, i64(0, 0, 2, 2)], {}, [(2, 3, 2, 2)]),
    ("Reshape", [arr(0, 3), i64(3, 0)], {"allowzero": 1}, [(3, 0)]),
    ("Reshape", [In("f32", (2, 3, 4)), i64(-1, 4)], {}, [(6, 4)]),
    ("Reshape", [i64(5, 6), i64(1, 2)], {}, [(1, 2)]),
    ("Flatten", [X], {}, [(2, 12)]),
    ("Flatten", [X], {"axis": 0}, [(1, 24)]),
    ("Flatten", [X], {"axis": -1}, [(6, 4)]),
    ("Flatten", [X], {"axis": 3}, [(24, 1)]),
    ("Transpose", [X], {}, [(4, 3, 2)]),
    ("Transpose", [X], {"perm": (0, 2, 1)}, [(2, 4, 3)]),
    ("Squeeze", [arr(1, 3, 1, 2)], {}, [(3, 2)]),
    ("Squeeze", [arr(1, 3, 1, 2), i64(-2)], {}, [(1, 3, 2)]),
    ("Squeeze", [arr(1, 3, 1, 2), i64(0, 2)], {}, [(3, 2)]),
    ("Squeeze", [i64(7)], {}, [()]),
    ("Unsqueeze", [arr(3, 4), i64(0, -1)], {}, [(1, 3, 4, 1)]),
    ("Unsqueeze", [arr(3, 4), i64(1)], {}, [(3, 1, 4)]),
    ("Unsqueeze", [np.array(5, np.int64), i64(0)], {}, [(1,)]),
    ("Concat", [arr(2, 3), arr(2, 5)], {"axis": -1}, [(2, 8)]),
    ("Concat", [arr(2, 0), arr(2, 3)], {"axis": 1}, [(2, 3)]),
    ("Concat", [i64(1, 2), i64(3), i64(-1, 4, 5)], {"axis": 0}, [(6,)]),
    ("Split", [arr(6, 4)], {"num_outputs": 3}, [(2, 4)] * 3),
    ("Split", [arr(7, 4)], {"num_outputs": 3}, [(3, 4), (3, 4), (1, 4)]),
    ("Split", [arr(2, 4), i64(1, 3)], {"axis": -1}, [(2, 1), (2, 3)]),
    ("Split", [i64(1, 2, 3, 4), i64(2, 0, 2)], {}, [(2,), (0,), (2,)]),
    ("Slice", [arr(10, 5), i64(2), i64(100), i64(0)], {}, [(8, 5)]),
    ("Slice", [arr(10, 5), i64(-1), i64(-1000), i64(1), i64(-1)], {}, [(10, 5)]),
    ("Slice", [arr(10, 5), i64(1, 0), i64(-1, 5), None, i64(2, 2)], {}, [(4, 3)]),
    ("Slice", [arr(10, 5), i64(8, 4), i64(1, -10), i64(0, -1), i64(-3, -2)], {}, [(3, 3)]),
    ("Slice", [arr(10, 5), i64(0), i64(I64_MAX), i64(-1)], {}, [(10, 5)]),
    ("Slice", [arr(10, 5), i64(5), i64(2)], {}, [(0, 5)]),
    ("Slice", [arr(10, 5), i64(100), i64(-100), i64(0), i64(-2)], {}, [(5, 5)]),
    ("Slice", [arr(10, 5), i64(-3, 1), i64(-100, 4), i64(0, 1), i64(-4, 2)], {}, [(2, 2)]),
    ("Slice", [i64(3, 4, 5, 6), i64(-2), i64(I64_MAX)], {}, [(2,)]),
    ("Gather", [arr(5, 4), i64(0, 2, 1, -1).reshape(2, 2)], {}, [(2, 2, 4)]),
    ("Gather", [arr(5, 4), np.array(1, np.int64)], {"axis": -1}, [(5,)]),
    ("Gather", [i64(2, 3, 4), i64(0)], {}, [(1,)]),
    ("Gather", [i64(2, 3, 4), np.array(-1, np.int64)], {}, [()]),
    ("GatherElements", [arr(3, 3), i64(0, 1, 2, 2, 1, 0).reshape(2, 3)], {}, [(2, 3)]),
    ("GatherND", [arr(2, 2), i64(0, 0, 1, 1).reshape(2, 2)], {}, [(2,)]),
    ("GatherND", [arr(2, 2, 2), i64(1, 0).reshape(2, 1)], {"batch_dims": 1}, [(2, 2)]),
    ("ScatterElements", [arr(3, 3), i64(1, 0).reshape(1, 2), arr(1, 2)], {"axis": 1}, [(3, 3)]),
    ("ScatterND", [arr(4, 4), i64(1, 2).reshape(2, 1), arr(2, 4)], {}, [(4, 4)]),
    ("Pad", [arr(2, 3), i64(1, 1, 0, 2)], {}, [(3, 6)]),
    ("Pad", [arr(2, 3), i64(2, 3), None, i64(-1)], {}, [(2, 8)]),
    ("Pad", [arr(2, 3), i64(0, 1, 0, 1)], {"mode": "reflect"}, [(2, 5)]),
    ("Pad", [arr(2, 3), i64(0, -1, 0, 0), np.array(1.5, np.float32)], {}, [(2, 2)]),
    ("Resize", [arr(1, 1, 4, 4), None, np.array([1, 1, 2, 2], np.float32)], {}, [(1, 1, 8, 8)]),
    ("Resize", [arr(1, 1, 4, 4), None, np.array([1, 1, 0.5, 1.5], np.float32)], {}, [(1, 1, 2, 6)]),
    ("Resize", [arr(1, 1, 4, 4), None, np.array([0.6, 1.7], np.float32)], {"axes": (2, -1)}, [(1, 1, 2, 6)]),
    ("Resize", [arr(1, 1, 4, 4), None, None, i64(1, 1, 3, 5)], {"mode": "linear"}, [(1, 1, 3, 5)]),
    ("Resize", [arr(1, 1, 3, 5), np.zeros((0,), np.float32), np.array([1, 1, 1 / 3, 0.7], np.float32)], {},
     [(1, 1, 1, 3)]),
    ("Resize", [arr(1, 1, 4, 6), None, None, i64(3, 10)], {"axes": (2, 3), "keep_aspect_ratio_policy": "not_larger"},
     [(1, 1, 3, 5)]),
    ("Resize", [arr(1, 1, 4, 4), np.zeros((0,), np.float32), None, i64(1, 1, 2, 2)], {"mode": "cubic"},
     [(1, 1, 2, 2)]),
    ("Resize", [arr(1, 1, 4, 4), None, None, i64(3, 5)], {"axes": (2, 3), "keep_aspect_ratio_policy": "not_larger"},
     [(1, 1, 3, 3)]),
    ("Resize", [arr(1, 1, 4, 6), None, None, i64(3, 5)], {"axes": (2, 3), "keep_aspect_ratio_policy": "not_smaller"},
     [(1, 1, 3, 5)]),
    ("Resize", [arr(1, 1, 4, 6), None, None, i64(3, 10)], {"axes": (2, 3), "keep_aspect_ratio_policy": "not_smaller"},
     [(1, 1, 7, 10)]),
    ("Expand", [arr(3, 1), i64(2, 1, 4)], {}, [(2, 3, 4)]),
    ("Expand", [arr(3, 4), i64(1, 1)], {}, [(3, 4)]),
    ("Expand", [i64(7), i64(3)], {}, [(3,)]),
    ("Tile", [arr(2, 3), i64(2, 1)], {}, [(4, 3)]),
    ("Tile", [i64(1, 2), i64(3)], {}, [(6,)]),
    ("Shape", [In("f32", (2, 3, 4))], {}, [(3,)]),
    ("Shape", [In("f32", (2, 3, 4))], {"start": 1}, [(2,)]),
    ("Shape", [In("f32", (2, 3, 4))], {"start": -1, "end": 10}, [(1,)]),
    ("Shape", [In("f32", (2, 3, 4))], {"start": 2, "end": 1}, [(0,)]),
    ("Shape", [In("f32", (2, 3, 4))], {"start": -10, "end": -1}, [(2,)]),
    ("Size", [In("f32", (2, 3, 4))], {}, [()]),
    ("ConstantOfShape", [i64(2, 3)], {}, [(2, 3)]),
    ("ConstantOfShape", [i64(4)], {"value": np.array([7], np.int64)}, [(4,)]),
    ("ConstantOfShape", [np.zeros((0,), np.int64)], {"value": np.array([1.5], np.float32)}, [()]),
    ("Range", [np.array(0, np.int64), np.array(10, np.int64), np.array(3, np.int64)], {}, [(4,)]),
    ("Range", [np.array(10, np.int32), np.array(0, np.int32), np.array(-3, np.int32)], {}, [(4,)]),
    ("Range", [np.array(1, np.float32), np.array(2, np.float32), np.array(0.25, np.float32)], {}, [(4,)]),
    ("Range", [np.array(5, np.int64), np.array(0, np.int64), np.array(1, np.int64)], {}, [(0,)]),
    ("Range", [np.array(0, np.float32), np.array(1, np.float32), np.array(0.1, np.float32)], {}, [(10,)]),
    ("Range", [np.array(0.3, np.float32), np.array(-7.1, np.float32), np.array(-0.7, np.float32)], {}, [(11,)]),
    ("EyeLike", [In("f32", (3, 4))], {"dtype": "i64", "k": 1}, [(3, 4)]),
    ("EyeLike", [In("i32", (2, 2))], {}, [(2, 2)]),
    ("Trilu", [arr(3, 4), np.array(1, np.int64)], {"upper": 0}, [(3, 4)]),
    ("CumSum", [arr(3, 4), np.array(-1, np.int64)], {"exclusive": 1}, [(3, 4)]),
    ("TopK", [arr(3, 5), i64(2)], {}, [(3, 2), (3, 2)]),
    ("TopK", [arr(3, 5), i64(3)], {"axis": 0, "largest": 0}, [(3, 5), (3, 5)]),
    ("ArgMax", [arr(3, 4)], {"axis": 1, "keepdims": 0}, [(3,)]),
    ("ArgMax", [arr(3, 4)], {"axis": -1}, [(3, 1)]),
    ("ArgMin", [arr(3, 4)], {}, [(1, 4)]),
    ("OneHot", [In("i64", (2, 3)), np.array(5, np.int64), np.array([0, 1], np.float32)], {}, [(2, 3, 5)]),
    ("OneHot", [In("i64", (2, 3)), np.array([4.0], np.float32), np.array([0, 1], np.float32)], {"axis": 0},
     [(4, 2, 3)]),
    ("OneHot", [In("i64", (2, 3)), np.array(3, np.int64), np.array([0, 1], np.int64)], {"axis": -2}, [(2, 3, 3)]),
    ("DepthToSpace", [arr(1, 8, 2, 3)], {"blocksize": 2}, [(1, 2, 4, 6)]),
    ("DepthToSpace", [arr(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}, [(1, 2, 4, 6)]),
    ("SpaceToDepth", [arr(1, 2, 4, 6)], {"blocksize": 2}, [(1, 8, 2, 3)]),
    ("Einsum", [arr(2, 3, 4), arr(2, 4, 5)], {"equation": "bij,bjk->bik"}, [(2, 3, 5)]),
    ("Einsum", [arr(3, 3)], {"equation": "ii->i"}, [(3,)]),
    ("Einsum", [arr(3, 4), arr(4, 5)], {"equation": "ij,jk"}, [(3, 5)]),
    ("Einsum", [arr(2, 5, 3, 4)], {"equation": "...ij->...ji"}, [(2, 5, 4, 3)]),
    ("Einsum", [arr(3), arr(3)], {"equation": "i,i"}, [()]),
    ("Einsum", [arr(5, 2, 3), arr(3, 4)], {"equation": "...j,jk->...k"}, [(5, 2, 4)]),
]

REDUCE_OPS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSumExp", "ReduceSumSquare"]
REDUCE_CASES: list[tuple[list[Any], dict[str, Any], tuple[int, ...]]] = [
    ([X, i64(1)], {}, (2, 1, 4)),
    ([X, i64(-1)], {"keepdims": 0}, (2, 3)),
    ([X, i64(0, 2)], {"keepdims": 0}, (3,)),
    ([X], {}, (1, 1, 1)),
    ([X], {"keepdims": 0}, ()),
    ([X], {"noop_with_empty_axes": 1}, (2, 3, 4)),
    ([X, np.zeros((0,), np.int64)], {"keepdims": 0}, ()),
    ([i64(2, 3, 4), i64(0)], {"keepdims": 0}, ()),
]
for _op in REDUCE_OPS:
    for _ops, _attrs, _shape in REDUCE_CASES:
        if _op in ("ReduceLogSumExp", "ReduceL2") and _ops[0].dtype == np.int64:
            continue
        CASES.append((_op, _ops, _attrs, [_shape]))


def _case_id(c: tuple) -> str:
    return f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[2].items() if not isinstance(v, np.ndarray))}"


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{_case_id(c)}" for i, c in enumerate(CASES)])
def test_static_case(case: tuple) -> None:
    op, operands, attrs, expected = case
    types = check(op, operands, attrs, len(expected))
    assert shapes(types) == expected


# ---- non-constant shape operands: UNKNOWN dims, or unknown rank --------------------------------------


def test_reshape_nonconst_shape_gives_unknown_dims() -> None:
    types = check("Reshape", [arr(2, 3, 4), In("i64", (2,))])
    assert types[0].shape == (UNKNOWN, UNKNOWN)
    types = check("Reshape", [arr(2, 3, 4), In("i64", (None,))])
    assert types[0].shape is None and types[0].dtype == "f32"


def test_reshape_partly_unknown_input() -> None:
    types = check("Reshape", [In("f32", (None, 3, 4)), i64(0, -1)])
    assert types[0].shape == (UNKNOWN, 12)
    types = check("Reshape", [In("f32", (None, 3, 4)), i64(-1, 4)], exact=False)
    assert types[0].shape == (UNKNOWN, 4)


def test_reshape_bad_raises_naming_node() -> None:
    node = ir_node("Reshape", [arr(3, 4), i64(5, -1)], {}, 1)
    with pytest.raises(InferenceError, match=r"cannot reshape f32\[3,4\] \(12 elements\) to \(5,-1\)") as e:
        lookup("Reshape").infer(node)  # type: ignore[union-attr]
    assert "'Reshape' at node 'n0'" in str(e.value)
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx_types(onnx_model("Reshape", [arr(3, 4), i64(5, -1)], {}, 1))
    for bad in (i64(5, 5), i64(-1, -1), i64(0, 0, 0, 0)):
        with pytest.raises(InferenceError, match="'Reshape' at node 'n0'"):
            lookup("Reshape").infer(ir_node("Reshape", [arr(3, 4), bad], {}, 1))  # type: ignore[union-attr]


@pytest.mark.parametrize(("op", "operands", "attrs", "n_out", "expected"), [
    ("Squeeze", [In("f32", (1, None, 3))], {}, 1, [None]),
    ("Squeeze", [In("f32", (1, None, 3)), i64(0)], {}, 1, [(UNKNOWN, 3)]),
    ("Squeeze", [arr(1, 3, 1), In("i64", (2,))], {}, 1, [(UNKNOWN,)]),
    ("Unsqueeze", [arr(3, 4), In("i64", (2,))], {}, 1, [(UNKNOWN,) * 4]),
    ("Slice", [arr(10, 5), In("i64", (1,)), i64(3), i64(1)], {}, 1, [(10, UNKNOWN)]),
    ("Slice", [In("f32", (None, 5)), i64(1), i64(3), i64(1)], {}, 1, [(UNKNOWN, 2)]),
    ("Expand", [arr(3, 1), In("i64", (3,))], {}, 1, [(UNKNOWN, 3, UNKNOWN)]),
    ("Tile", [arr(3, 1), In("i64", (2,))], {}, 1, [(UNKNOWN,) * 2]),
    ("Split", [arr(6, 4), In("i64", (2,))], {}, 2, [(UNKNOWN, 4)] * 2),
    ("ConstantOfShape", [In("i64", (3,))], {}, 1, [(UNKNOWN,) * 3]),
    ("Range", [np.array(0, np.int64), In("i64", ()), np.array(1, np.int64)], {}, 1, [(UNKNOWN,)]),
    ("Pad", [arr(2, 3), In("i64", (4,))], {}, 1, [(UNKNOWN, UNKNOWN)]),
    ("Resize", [arr(1, 1, 4, 4), None, In("f32", (4,))], {}, 1, [(UNKNOWN,) * 4]),
    ("TopK", [arr(3, 5), In("i64", (1,))], {}, 2, [(3, UNKNOWN)] * 2),
    ("OneHot", [In("i64", (2,)), In("i64", ()), np.array([0, 1], np.float32)], {}, 1, [(2, UNKNOWN)]),
    ("ReduceSum", [X, In("i64", (1,))], {}, 1, [(UNKNOWN,) * 3]),
    ("ReduceMax", [X, In("i64", (1,))], {"keepdims": 0}, 1, [(UNKNOWN,) * 2]),
    ("Shape", [In("f32", None)], {}, 1, [(UNKNOWN,)]),
    ("Shape", [In("f32", (None, 3))], {"start": 1}, 1, [(1,)]),
    ("Size", [In("f32", (None, 3))], {}, 1, [()]),
    ("NonZero", [In("f32", (2, 3))], {}, 1, [(2, UNKNOWN)]),
    ("Concat", [In("f32", (2, None)), arr(2, 3)], {"axis": 1}, 1, [(2, UNKNOWN)]),
    ("Transpose", [In("f32", (None, 3))], {}, 1, [(3, UNKNOWN)]),
    ("Flatten", [In("f32", (None, 3, 4))], {}, 1, [(UNKNOWN, 12)]),
])
def test_nonconst_operands(op: str, operands: list[Any], attrs: dict[str, Any], n_out: int,
                           expected: list[Any]) -> None:
    # ONNX's symbolic inference may know more (or less) than we do here; agree where both know a dim
    folds = op == "Shape" and operands[0].shape is not None  # Shape folds from the static dims it returns
    types = check(op, operands, attrs, n_out, exact=False, expect_fold=folds)
    assert shapes(types) == expected


def test_shape_folds_from_static_type_and_size() -> None:
    node = ir_node("Shape", [In("f32", (2, 3, 4))], {"start": 1}, 1)
    res = lookup("Shape").fold(node, [None])  # type: ignore[union-attr]
    assert res is not None and res[0].dtype == np.int64
    np.testing.assert_array_equal(res[0], [3, 4])
    node = ir_node("Size", [In("f32", (2, None))], {}, 1)
    assert lookup("Size").fold(node, [None]) is None  # type: ignore[union-attr]


def test_fold_needs_constants() -> None:
    node = ir_node("Reshape", [arr(2, 3), In("i64", (1,))], {}, 1)
    assert lookup("Reshape").fold(node, [arr(2, 3), None]) is None  # type: ignore[union-attr]
    node = ir_node("Concat", [arr(2), In("f32", (2,))], {"axis": 0}, 1)
    assert lookup("Concat").fold(node, [arr(2), None]) is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("op", "operands", "attrs", "n_out"), [
    ("Concat", [arr(2, 3), arr(3, 3)], {"axis": 1}, 1),
    ("Concat", [arr(2, 3), arr(2, 3).astype(np.int64)], {"axis": 0}, 1),
    ("Split", [arr(6, 4), i64(2, 3)], {}, 2),
    ("Squeeze", [arr(1, 3), i64(1)], {}, 1),
    ("Unsqueeze", [arr(3), i64(0, 0)], {}, 1),
    ("Transpose", [arr(2, 3)], {"perm": (0, 0)}, 1),
    ("Expand", [arr(3, 2), i64(4)], {}, 1),
    ("Tile", [arr(3, 2), i64(2)], {}, 1),
    ("DepthToSpace", [arr(1, 6, 2, 2)], {"blocksize": 2}, 1),
    ("TopK", [arr(3, 2), i64(3)], {}, 2),
    ("Einsum", [arr(2, 3), arr(4, 5)], {"equation": "ij,jk->ik"}, 1),
    ("Gather", [arr(2, 3), i64(0)], {"axis": 2}, 1),
    ("ReduceSum", [arr(2, 3), i64(2)], {}, 1),
    ("Pad", [arr(2, 3), i64(1, 1)], {}, 1),
    ("Resize", [arr(1, 1, 2, 2)], {}, 1),
])
def test_inconsistent_operands_raise(op: str, operands: list[Any], attrs: dict[str, Any], n_out: int) -> None:
    with pytest.raises(InferenceError, match=f"'{op}' at node 'n0'"):
        lookup(op).infer(ir_node(op, operands, attrs, n_out))  # type: ignore[union-attr]


# ---- channels and cost -------------------------------------------------------------------------------


def groups(op: str, operands: list[Any], attrs: dict[str, Any] | None = None, n_out: int = 1) -> list[AxisGroup]:
    return lookup(op).channels(ir_node(op, operands, attrs, n_out))  # type: ignore[union-attr]


def same(*members: tuple[str, int, int]) -> AxisGroup:
    return AxisGroup(tuple(members))


def test_channels_layout() -> None:
    assert groups("Transpose", [X], {"perm": (0, 2, 1)}) == [
        same(("in", 0, 0), ("out", 0, 0)), same(("in", 0, 2), ("out", 0, 1)), same(("in", 0, 1), ("out", 0, 2))]
    assert groups("Squeeze", [arr(1, 3, 1, 2), i64(2)]) == [
        same(("in", 0, 0), ("out", 0, 0)), same(("in", 0, 1), ("out", 0, 1)), same(("in", 0, 3), ("out", 0, 2))]
    assert groups("Unsqueeze", [arr(3, 4), i64(0)]) == [
        same(("in", 0, 0), ("out", 0, 1)), same(("in", 0, 1), ("out", 0, 2))]
    # a merge couples the merged axis with its outermost factor: channel i of [2, 12] is row i // 4 of [2, 3, 4]
    assert groups("Reshape", [X, i64(2, 12)]) == [same(("in", 0, 0), ("out", 0, 0)),
                                                  AxisGroup((("out", 0, 1), ("in", 0, 1)), "digit", (4, 3))]
    assert groups("Reshape", [X, i64(2, 3, 2, 2)]) == [same(("in", 0, 0), ("out", 0, 0)),
                                                       same(("in", 0, 1), ("out", 0, 1)),
                                                       AxisGroup((("in", 0, 2), ("out", 0, 2)), "digit", (2, 2))]
    assert groups("Reshape", [X, i64(6, 4)]) == [AxisGroup((("out", 0, 0), ("in", 0, 0)), "digit", (3, 2)),
                                                 same(("in", 0, 2), ("out", 0, 1))]
    node = ir_node("Reshape", [X, i64(2, 3, 2, 2)], {}, 1)
    node.meta["prune.factor"] = -1  # the innermost factor instead: channel i of the 4 is index i % 2
    assert AxisGroup((("in", 0, 2), ("out", 0, 3)), "digit", (1, 2)) in lookup("Reshape").channels(node)  # type: ignore[union-attr]
    assert groups("Reshape", [arr(6, 4), i64(4, 6)]) == []  # no axis survives as a factor
    assert groups("Flatten", [arr(2, 3)]) == [same(("in", 0, 0), ("out", 0, 0)), same(("in", 0, 1), ("out", 0, 1))]
    assert groups("Shape", [In("f32", (2, 3))]) == []
    assert groups("ConstantOfShape", [i64(2)]) == []


def test_channels_concat_split() -> None:
    g = groups("Concat", [arr(2, 3), arr(2, 5)], {"axis": 1})
    assert g == [same(("out", 0, 0), ("in", 0, 0), ("in", 1, 0)),
                 AxisGroup((("out", 0, 1), ("in", 0, 1), ("in", 1, 1)), mode="concat")]
    g = groups("Split", [arr(2, 4), i64(1, 3)], {"axis": -1}, 2)
    assert g == [same(("in", 0, 0), ("out", 0, 0), ("out", 1, 0)),
                 AxisGroup((("in", 0, 1), ("out", 0, 1), ("out", 1, 1)), mode="concat")]


def test_channels_untouched_axes() -> None:
    # a unit-step slice reads channels 2..9: result i is operand channel 2 + i; a strided one is a barrier
    assert groups("Slice", [arr(10, 5), i64(2), i64(100), i64(0)]) == [
        same(("in", 0, 1), ("out", 0, 1)), AxisGroup((("out", 0, 0), ("in", 0, 0)), "gather", tuple(range(2, 10)))]
    assert groups("Slice", [arr(10, 5), i64(0), i64(100), i64(0), i64(2)]) == [same(("in", 0, 1), ("out", 0, 1))]
    assert groups("Gather", [arr(5, 4, 3), i64(0, 1).reshape(1, 2)], {"axis": 1}) == [
        same(("in", 0, 0), ("out", 0, 0)), same(("in", 0, 2), ("out", 0, 3))]
    assert groups("Gather", [arr(5, 4, 3), i64(3, -4)], {"axis": 1})[-1] == AxisGroup(
        (("out", 0, 1), ("in", 0, 1)), "gather", (3, 0))
    assert groups("Pad", [arr(2, 3), i64(0, 1, 0, 1)]) == [same(("in", 0, 0), ("out", 0, 0))]
    assert groups("Resize", [arr(1, 3, 4, 4), None, np.array([1, 1, 2, 2], np.float32)]) == [
        same(("in", 0, 0), ("out", 0, 0)), same(("in", 0, 1), ("out", 0, 1))]
    assert groups("Expand", [arr(3, 1), i64(2, 1, 4)]) == [
        same(("out", 0, 0)), same(("out", 0, 1), ("in", 0, 0)), same(("out", 0, 2))]
    assert groups("Tile", [arr(2, 3), i64(2, 1)]) == [same(("in", 0, 1), ("out", 0, 1))]


def test_channels_reduce_and_index() -> None:
    assert groups("ReduceSum", [X, i64(1)], {"keepdims": 0}) == [
        same(("in", 0, 0), ("out", 0, 0)), same(("in", 0, 2), ("out", 0, 1))]
    assert groups("ReduceMean", [X, i64(-1)]) == [
        same(("in", 0, 0), ("out", 0, 0)), same(("in", 0, 1), ("out", 0, 1))]
    assert groups("ReduceMax", [X], {"noop_with_empty_axes": 1}) == [
        same(("in", 0, k), ("out", 0, k)) for k in range(3)]
    assert groups("TopK", [arr(3, 5), i64(2)], n_out=2) == [same(("in", 0, 0), ("out", 0, 0), ("out", 1, 0))]
    assert groups("ArgMax", [X], {"axis": 1, "keepdims": 0}) == [
        same(("in", 0, 0), ("out", 0, 0)), same(("in", 0, 2), ("out", 0, 1))]
    g = groups("Einsum", [arr(2, 3, 4), arr(2, 4, 5)], {"equation": "bij,bjk->bik"})
    assert same(("in", 0, 2), ("in", 1, 1)) in g
    assert same(("in", 0, 0), ("in", 1, 0), ("out", 0, 0)) in g


def test_cost() -> None:
    node = ir_node("Einsum", [arr(2, 3, 4), arr(2, 4, 5)], {"equation": "bij,bjk->bik"}, 1)
    assert lookup("Einsum").cost(node).macs == 2 * 3 * 4 * 5  # type: ignore[union-attr]
    node = ir_node("ReduceMean", [X, i64(1)], {}, 1)
    node.outputs[0].type = lookup("ReduceMean").infer(node)[0]  # type: ignore[union-attr]
    c = lookup("ReduceMean").cost(node)  # type: ignore[union-attr]
    assert c.macs == 24 and c.bytes == 24 * 4 + 8 + 8 * 4
    node = ir_node("Reshape", [X, i64(4, 6)], {}, 1)
    assert lookup("Reshape").cost(node).macs == 0  # type: ignore[union-attr]


def test_foldable_flags() -> None:
    folding = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
               "Expand", "Tile", "Shape", "Size", "ConstantOfShape", "Range", "ReduceProd", "ReduceSum",
               "ReduceMax", "ReduceMin", "ReduceMean"}
    for op in {c[0] for c in CASES} | {"NonZero"}:
        assert lookup(op).foldable == (op in folding), op  # type: ignore[union-attr]
