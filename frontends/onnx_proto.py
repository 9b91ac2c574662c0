"""Conversions between ONNX protos and IR pieces (element types, types, attributes, tensors).

Shared by the ONNX frontend and the ONNX exporter, so that each mapping is
written once and both directions stay in step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from nasc.ir import dtypes
from nasc.ir.core import LazyArray, SubGraph
from nasc.ir.types import UNKNOWN, OpaqueType, TensorType, Type

_ONNX_TO_IR: dict[int, str] = {
    onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.UINT8: "u8", onnx.TensorProto.INT8: "i8",
    onnx.TensorProto.UINT16: "u16", onnx.TensorProto.INT16: "i16", onnx.TensorProto.INT32: "i32",
    onnx.TensorProto.INT64: "i64", onnx.TensorProto.STRING: "str", onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.FLOAT16: "f16", onnx.TensorProto.DOUBLE: "f64", onnx.TensorProto.UINT32: "u32",
    onnx.TensorProto.UINT64: "u64", onnx.TensorProto.COMPLEX64: "c64", onnx.TensorProto.COMPLEX128: "c128",
    onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.FLOAT8E4M3FN: "f8e4m3fn",
    onnx.TensorProto.FLOAT8E4M3FNUZ: "f8e4m3fnuz", onnx.TensorProto.FLOAT8E5M2: "f8e5m2",
    onnx.TensorProto.FLOAT8E5M2FNUZ: "f8e5m2fnuz", onnx.TensorProto.UINT4: "u4", onnx.TensorProto.INT4: "i4",
    onnx.TensorProto.FLOAT4E2M1: "f4e2m1",
}
for _name, _ir in (("FLOAT8E8M0", "f8e8m0"), ("UINT2", "u2"), ("INT2", "i2")):
    if hasattr(onnx.TensorProto, _name):
        _ONNX_TO_IR[getattr(onnx.TensorProto, _name)] = _ir
_IR_TO_ONNX = {v: k for k, v in _ONNX_TO_IR.items()}


class ElementTypeError(ValueError):
    """An element type code that ONNX does not define (``known=False``), or that nasc does not support."""

    def __init__(self, elem: int) -> None:
        self.elem = elem
        self.known = elem in onnx.TensorProto.DataType.values()
        what = (f"ONNX element type {onnx.TensorProto.DataType.Name(elem)} is not supported by nasc" if self.known
                else f"{elem} is not an ONNX element type")
        super().__init__(what)


def dtype_from_onnx(elem: int) -> str:
    """The IR element type of an ONNX element type code; raises ElementTypeError for others."""
    if elem not in _ONNX_TO_IR:
        raise ElementTypeError(elem)
    return _ONNX_TO_IR[elem]


def dtype_to_onnx(dtype: str) -> int:
    return _IR_TO_ONNX[dtype]


# ---- types -------------------------------------------------------------------


def type_from_onnx(tp: onnx.TypeProto) -> Type:
    """IR type of an ONNX TypeProto; unknown dims become UNKNOWN or the dim_param name.

    A negative ``dim_value`` is unknown too: paddle2onnx (and others) write ``-1`` for a dynamic dim.
    """
    if tp.HasField("tensor_type") and tp.tensor_type.elem_type:
        tt = tp.tensor_type
        shape: tuple[int | str, ...] | None = None
        if tt.HasField("shape"):
            dims: list[int | str] = []
            for d in tt.shape.dim:
                if d.HasField("dim_value") and d.dim_value >= 0:
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param") and d.dim_param:
                    dims.append(d.dim_param)
                else:
                    dims.append(UNKNOWN)
            shape = tuple(dims)
        return TensorType(dtype_from_onnx(tt.elem_type), shape)
    return OpaqueType(_type_desc(tp), tp.SerializeToString())


def _type_desc(tp: onnx.TypeProto) -> str:
    kind = tp.WhichOneof("value")
    if kind == "sequence_type":
        return f"seq({_type_desc(tp.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_type_desc(tp.optional_type.elem_type)})"
    if kind == "map_type":
        return f"map({dtype_from_onnx(tp.map_type.key_type)},{_type_desc(tp.map_type.value_type)})"
    if kind == "tensor_type":
        tt = tp.tensor_type
        return dtype_from_onnx(tt.elem_type) if tt.elem_type else "tensor"
    if kind == "sparse_tensor_type":
        return "sparse"
    return kind or "unknown"


def type_to_onnx(t: Type) -> onnx.TypeProto | None:
    """The TypeProto for an IR type; None when nothing is known (an 'unknown' opaque type)."""
    if isinstance(t, OpaqueType):
        if not t.payload:
            return None
        tp = onnx.TypeProto()
        tp.ParseFromString(t.payload)
        return tp
    shape = None if t.shape is None else [None if d == UNKNOWN else d for d in t.shape]
    return onnx.helper.make_tensor_type_proto(dtype_to_onnx(t.dtype), shape)


def value_info(name: str, t: Type) -> onnx.ValueInfoProto:
    tp = type_to_onnx(t)
    vi = onnx.ValueInfoProto(name=name)
    if tp is not None:
        vi.type.CopyFrom(tp)
    return vi


# ---- tensors -----------------------------------------------------------------


def tensor_to_array(t: onnx.TensorProto, base_dir: str | None = None) -> np.ndarray:
    """Decode a TensorProto (loading its external data from ``base_dir`` first if it has any)."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        from onnx.external_data_helper import load_external_data_for_tensor

        t2 = onnx.TensorProto()
        t2.CopyFrom(t)
        load_external_data_for_tensor(t2, base_dir or ".")
        t = t2
    arr = numpy_helper.to_array(t)
    if t.data_type == onnx.TensorProto.STRING:
        arr = arr.astype(object)
    return arr


def lazy_tensor(t: onnx.TensorProto, base_dir: str | None = None) -> LazyArray:
    """A LazyArray that decodes ``t`` on first access and remembers it as its source."""
    dtype = dtype_from_onnx(t.data_type)
    source = t if t.data_location != onnx.TensorProto.EXTERNAL else None
    return LazyArray(tuple(t.dims), dtype, lambda: tensor_to_array(t, base_dir), source=source)


def array_to_tensor(arr: np.ndarray, name: str, dtype: str | None = None) -> onnx.TensorProto:
    """Encode an array as a TensorProto of IR element type ``dtype`` (default: the array's)."""
    dtype = dtype or dtypes.from_numpy(arr.dtype)
    if dtype == "str":
        return onnx.helper.make_tensor(name, onnx.TensorProto.STRING, arr.shape,
                                       [x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1)])
    want = dtypes.to_numpy(dtype)
    if arr.dtype != want:
        arr = arr.astype(want)
    return numpy_helper.from_array(arr, name)


def sparse_to_array(sp: onnx.SparseTensorProto, base_dir: str | None = None) -> np.ndarray:
    """Densify a SparseTensorProto (linear or coordinate indices; either may be external data under ``base_dir``).

    onnx.checker has checked the indices against ``dims``; this raises ValueError for shapes that do not fit.
    """
    values = tensor_to_array(sp.values, base_dir)
    indices = tensor_to_array(sp.indices, base_dir).astype(np.int64)
    dense = np.zeros(tuple(sp.dims), dtype=values.dtype)
    n = len(indices) if indices.ndim else 0
    if values.ndim != 1 or indices.ndim not in (1, 2) or n != len(values):
        raise ValueError(f"sparse tensor '{sp.values.name}': {len(values)} values, indices of shape {indices.shape}")
    if indices.ndim == 1:
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense


# ---- attributes --------------------------------------------------------------

A = onnx.AttributeProto


def outer_names(g: onnx.GraphProto) -> list[str]:
    """Names a subgraph reads from enclosing scopes, in first-use order."""
    defined: set[str] = {i.name for i in g.input} | {t.name for t in g.initializer}
    defined |= {t.values.name for t in g.sparse_initializer}
    found: dict[str, None] = {}
    for node in g.node:
        for name in node.input:
            if name and name not in defined:
                found.setdefault(name)
        for attr in node.attribute:
            subs = [attr.g] if attr.type == A.GRAPH else list(attr.graphs) if attr.type == A.GRAPHS else []
            for sub in subs:
                for name in outer_names(sub):
                    if name not in defined:
                        found.setdefault(name)
        defined.update(o for o in node.output if o)
    for o in g.output:
        if o.name not in defined:
            found.setdefault(o.name)
    return list(found)


def attr_from_onnx(a: onnx.AttributeProto, base_dir: str | None = None) -> Any:
    """The IR value of an attribute (dtype attributes are converted by the caller).

    Tensors stored as external data are read relative to ``base_dir``, the model's directory.
    """
    if a.type == A.FLOAT:
        return float(a.f)
    if a.type == A.INT:
        return int(a.i)
    if a.type == A.STRING:
        return _decode(a.s)
    if a.type == A.TENSOR:
        return tensor_to_array(a.t, base_dir)
    if a.type == A.SPARSE_TENSOR:
        return sparse_to_array(a.sparse_tensor, base_dir)
    if a.type == A.GRAPH:
        return SubGraph(a.g.SerializeToString(), tuple(outer_names(a.g)))
    if a.type == A.FLOATS:
        return tuple(float(x) for x in a.floats)
    if a.type == A.INTS:
        return tuple(int(x) for x in a.ints)
    if a.type == A.STRINGS:
        return tuple(_decode(x) for x in a.strings)
    if a.type == A.TENSORS:
        return tuple(tensor_to_array(t, base_dir) for t in a.tensors)
    if a.type == A.GRAPHS:
        return tuple(SubGraph(g.SerializeToString(), tuple(outer_names(g))) for g in a.graphs)
    if a.type == A.TYPE_PROTO:
        return type_from_onnx(a.tp)
    if a.type == A.TYPE_PROTOS:
        return tuple(type_from_onnx(tp) for tp in a.type_protos)
    raise ValueError(f"attribute {a.name!r} has an unsupported type {A.AttributeType.Name(a.type)}")


def _decode(b: bytes) -> str:
    return b.decode("utf-8", errors="surrogateescape")


def attr_to_onnx(name: str, value: Any, expected: int | None = None, rename: dict[str, str] | None = None) -> A:
    """An AttributeProto for an IR attribute value.

    ``expected`` is the schema's attribute type when known; it settles the kind
    of empty lists and of ints given where floats are due. ``rename`` maps
    captured outer names inside subgraphs to the names they are exported as.
    """
    if isinstance(value, SubGraph):
        return onnx.helper.make_attribute(name, _subgraph(value, rename))
    if isinstance(value, OpaqueType | TensorType):
        tp = type_to_onnx(value)
        return onnx.helper.make_attribute(name, tp, attr_type=A.TYPE_PROTO)
    if isinstance(value, np.ndarray):
        return onnx.helper.make_attribute(name, array_to_tensor(value, ""))
    if isinstance(value, tuple | list):
        items = list(value)
        if items and all(isinstance(v, SubGraph) for v in items):
            return onnx.helper.make_attribute(name, [_subgraph(v, rename) for v in items])
        if items and all(isinstance(v, np.ndarray) for v in items):
            return onnx.helper.make_attribute(name, [array_to_tensor(v, "") for v in items])
        if items and all(isinstance(v, OpaqueType | TensorType) for v in items):
            return onnx.helper.make_attribute(name, [type_to_onnx(v) for v in items], attr_type=A.TYPE_PROTOS)
        if expected == A.FLOATS:
            items = [float(v) for v in items]
        if not items:
            return onnx.helper.make_attribute(name, [], attr_type=expected or A.INTS)
        if all(isinstance(v, str) for v in items):
            return onnx.helper.make_attribute(name, [v.encode("utf-8", errors="surrogateescape") for v in items])
        return onnx.helper.make_attribute(name, items)
    if isinstance(value, str):
        return onnx.helper.make_attribute(name, value.encode("utf-8", errors="surrogateescape"))
    if expected == A.FLOAT and isinstance(value, int | np.integer):
        value = float(value)
    if isinstance(value, bool | np.bool_):
        value = int(value)
    return onnx.helper.make_attribute(name, value)


def _subgraph(sg: SubGraph, rename: dict[str, str] | None) -> onnx.GraphProto:
    g = onnx.GraphProto()
    g.ParseFromString(sg.payload)
    if rename:
        _rename_outer(g, {k: v for k, v in rename.items() if k != v})
    return g


def _rename_outer(g: onnx.GraphProto, rename: dict[str, str]) -> None:
    if not rename:
        return
    defined: set[str] = {i.name for i in g.input} | {t.name for t in g.initializer}
    defined |= {t.values.name for t in g.sparse_initializer}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename and name not in defined:
                node.input[i] = rename[name]
        for attr in node.attribute:
            subs = [attr.g] if attr.type == A.GRAPH else list(attr.graphs) if attr.type == A.GRAPHS else []
            for sub in subs:
                _rename_outer(sub, {k: v for k, v in rename.items() if k not in defined})
        defined.update(node.output)
    for o in g.output:
        if o.name in rename and o.name not in defined:
            o.name = rename[o.name]
