"""Checks of an ONNX model against the ONNX spec and nasc's limits, before the IR is built from it.

What ONNX Runtime refuses when it loads a model, the frontend refuses here, naming
the node, its op and scope: opsets outside the ones ONNX defines, operand types
outside an op's type constraints, If branches that disagree, a declared output
type that contradicts the op, and every other error of ONNX's own strict type and
shape inference (the functions ONNX Runtime runs at load). Also here: external
data that leaves the model's directory or lies past the end of its file, dims
written as negative numbers, and the size limit on one tensor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import cache

import numpy as np
import onnx

from nasc.errors import ModelLoadError, ShapeError, UnsupportedModelError, UsageError
from nasc.ir.types import TensorType, Type

#: the largest tensor (input, constant or result) nasc accepts by default: 16 GiB
DEFAULT_MAX_TENSOR_BYTES = 16 << 30
MAX_TENSOR_ENV = "NASC_MAX_TENSOR_BYTES"
SKELETON_MAX_ELEMENTS = 4096  # constants up to this size keep their values for inference (shape operands)

A = onnx.AttributeProto


# ---- text fields ---------------------------------------------------------------------


@cache
def _text_fields(desc: object) -> tuple[tuple[str, bool, bool], ...]:
    """(name, is_string, is_repeated) of a message type's string and message fields."""
    from google.protobuf.descriptor import FieldDescriptor as F

    out = []
    for f in desc.fields:  # type: ignore[attr-defined]
        if f.type in (F.TYPE_STRING, F.TYPE_MESSAGE, F.TYPE_GROUP):
            repeated = getattr(f, "is_repeated", None)
            if repeated is None:
                repeated = f.label == F.LABEL_REPEATED
            out.append((f.name, f.type == F.TYPE_STRING, bool(repeated)))
    return tuple(out)


def _where(msg: object, path: str) -> str:
    """A readable place for a message: a node by its index, name and op where those are text."""
    if isinstance(msg, onnx.NodeProto):
        name = msg.name if isinstance(msg.name, str) else ""
        op = msg.op_type if isinstance(msg.op_type, str) else ""
        return f"node '{name or '?'}'" + (f" ({op})" if op else "")
    return path


def check_text(proto: onnx.ModelProto, label: str) -> None:
    """Refuse string fields that are not valid UTF-8 (names, op types, domains, metadata, in every subgraph).

    ONNX declares them as text; protobuf hands invalid ones over as bytes, which
    every later step (the checker, ONNX Runtime, the exporter) would choke on.
    """
    stack: list[tuple[object, str, str]] = [(proto, "model", "the model")]
    while stack:
        msg, path, where = stack.pop()
        for name, is_string, repeated in _text_fields(msg.DESCRIPTOR):  # type: ignore[attr-defined]
            if is_string:
                values = list(getattr(msg, name)) if repeated else [getattr(msg, name)]
                for i, v in enumerate(values):
                    if isinstance(v, bytes):
                        field = f"{path}.{name}" + (f"[{i}]" if repeated else "")
                        shown = v.decode("utf-8", "backslashreplace")
                        if len(shown) > 60:
                            shown = shown[:60] + "..."
                        raise ModelLoadError(
                            f"{label}: field '{field}' of {where} is not valid UTF-8 text ('{shown}'); ONNX "
                            "requires names, op types, domains and metadata to be UTF-8. Fix the exporter or "
                            "the model.")
                continue
            if repeated:
                for i, sub in enumerate(getattr(msg, name)):
                    p = f"{path}.{name}[{i}]"
                    stack.append((sub, p, _where(sub, p) if isinstance(sub, onnx.NodeProto) else where))
            elif msg.HasField(name):  # type: ignore[attr-defined]
                sub = getattr(msg, name)
                p = f"{path}.{name}"
                stack.append((sub, p, where))


# ---- the tensor size limit -------------------------------------------------------------


def parse_size(text: str, what: str = "a size") -> int:
    """Bytes from ``"16G"``, ``"16GiB"``, ``"1.5T"``, ``"4096"``; units are binary (K = 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgtpe]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(f"{what} {text!r}: expected a number of bytes with an optional unit, e.g. 64G or 1.5T")
    scale = 1 << (10 * "_kmgtpe".index(m.group(2).lower() or "_"))
    return int(float(m.group(1)) * scale)


def max_tensor_bytes(explicit: int | None = None) -> int:
    """The limit in force: ``explicit``, else $NASC_MAX_TENSOR_BYTES, else DEFAULT_MAX_TENSOR_BYTES."""
    if explicit is not None:
        if int(explicit) <= 0:
            raise UsageError(f"max_tensor_bytes must be positive, got {explicit}")
        return int(explicit)
    env = os.environ.get(MAX_TENSOR_ENV, "").strip()
    return parse_size(env, f"${MAX_TENSOR_ENV}") if env else DEFAULT_MAX_TENSOR_BYTES


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def check_tensor_size(label: str, what: str, t: Type, limit: int, hint: str = "") -> None:
    """Refuse a static tensor type over ``limit`` bytes; ``what`` names the value and where it comes from."""
    if not isinstance(t, TensorType) or not t.is_static:
        return
    size = t.nbytes
    if size <= limit:
        return
    raise ShapeError(
        f"{label}: {what} is {t} = {human_bytes(size)}, over the limit of {human_bytes(limit)} for one tensor. "
        f"{hint}If the model really needs it, raise the limit: max_tensor_bytes= in nasc.load or nasc.compile, "
        f"--max-tensor-size on the command line, or ${MAX_TENSOR_ENV}."
    )


# ---- dims written as negative numbers --------------------------------------------------


def _graph_types(g: onnx.GraphProto) -> Iterator[onnx.TypeProto]:
    for vi in (*g.input, *g.output, *g.value_info):
        yield vi.type
    for node in g.node:
        for a in node.attribute:
            for sub in [a.g] if a.type == A.GRAPH else list(a.graphs) if a.type == A.GRAPHS else []:
                yield from _graph_types(sub)


def _dims(tp: onnx.TypeProto) -> Iterator[onnx.TensorShapeProto.Dimension]:
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        tt = getattr(tp, kind)
        if tt.HasField("shape"):
            yield from tt.shape.dim
    elif kind == "sequence_type":
        yield from _dims(tp.sequence_type.elem_type)
    elif kind == "optional_type":
        yield from _dims(tp.optional_type.elem_type)
    elif kind == "map_type":
        yield from _dims(tp.map_type.value_type)


def _negative_dims(proto: onnx.ModelProto) -> list[onnx.TensorShapeProto.Dimension]:
    return [d for tp in _graph_types(proto.graph) for d in _dims(tp) if d.HasField("dim_value") and d.dim_value < 0]


def clear_negative_dims(proto: onnx.ModelProto, *, owned: bool) -> onnx.ModelProto:
    """The model with every negative ``dim_value`` made an unknown dim (in the graph and its subgraphs).

    paddle2onnx and some other exporters write ``dim_value: -1`` for a dynamic dim
    where ONNX has an unset dim or a ``dim_param``. A proto the caller still owns
    (``owned=False``) is copied before it is changed.
    """
    if not _negative_dims(proto):
        return proto
    if not owned:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        proto = copy
    for d in _negative_dims(proto):
        d.ClearField("dim_value")
    return proto


# ---- opsets ------------------------------------------------------------------------------------


@cache
def _newest_opsets() -> dict[str, int]:
    newest: dict[str, int] = {}
    for s in onnx.defs.get_all_schemas_with_history():
        newest[s.domain] = max(newest.get(s.domain, 1), int(s.since_version))
    newest[""] = max(newest.get("", 1), onnx.defs.onnx_opset_version())
    return newest


def check_opsets(proto: onnx.ModelProto, label: str) -> None:
    """Refuse opset versions of ONNX's own domains that ONNX does not define (0, or newer than this release)."""
    newest = _newest_opsets()
    for imp in proto.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        if domain not in newest:
            continue  # a vendor's domain: its ops are carried opaquely
        name = f"domain '{domain}'" if domain else "the default ONNX domain"
        if imp.version > newest[domain]:
            raise UnsupportedModelError(
                f"{label} imports opset {imp.version} of {name}; ONNX {onnx.__version__} defines opsets up to "
                f"{newest[domain]}. Re-export the model at an opset ONNX Runtime and nasc know (21 for the default domain)."
            )
        if imp.version < 1:
            raise ModelLoadError(f"{label} imports opset {imp.version} of {name}; opset versions start at 1")


# ---- ONNX's own strict type and shape inference ------------------------------------------------


def _input_for(name: str, t: onnx.TensorProto | onnx.SparseTensorProto) -> onnx.ValueInfoProto:
    if isinstance(t, onnx.SparseTensorProto):
        return onnx.helper.make_tensor_value_info(name, t.values.data_type, list(t.dims))
    return onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims))


def _small_inline(t: onnx.TensorProto) -> bool:
    return t.data_location != onnx.TensorProto.EXTERNAL and int(np.prod(t.dims, dtype=np.float64)) <= SKELETON_MAX_ELEMENTS


def _skeleton(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its weights, declared value_info and declared output shapes.

    Large constants become graph inputs of the same type, so that the copy stays
    small. Declared intermediate types and output shapes are left out because
    ONNX Runtime merges them leniently (a wrong declared shape is a warning there);
    declared output element types stay, because it refuses those.
    """
    g = proto.graph
    m = onnx.ModelProto(ir_version=proto.ir_version)
    m.opset_import.extend(proto.opset_import)
    m.functions.extend(proto.functions)
    sk = m.graph
    sk.name = g.name
    sk.input.extend(g.input)
    names = {i.name for i in g.input}
    for t in g.initializer:
        if _small_inline(t):
            sk.initializer.append(t)
        elif t.name not in names:
            sk.input.append(_input_for(t.name, t))
            names.add(t.name)
    for sp in g.sparse_initializer:
        if sp.values.name not in names:
            sk.input.append(_input_for(sp.values.name, sp))
            names.add(sp.values.name)
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 and node.output:
            a = node.attribute[0]
            if a.type == A.SPARSE_TENSOR or (a.type == A.TENSOR and not _small_inline(a.t)):
                sk.input.append(_input_for(node.output[0], a.sparse_tensor if a.type == A.SPARSE_TENSOR else a.t))
                continue
        sk.node.append(node)
    for o in g.output:
        vi = sk.output.add()
        vi.name = o.name
        if o.type.WhichOneof("value") == "tensor_type":
            vi.type.tensor_type.elem_type = o.type.tensor_type.elem_type
        elif o.type.WhichOneof("value") is not None:
            vi.type.CopyFrom(o.type)
    return m


# an error line of ONNX inference: "(op_type:Conv, node name: conv): [TypeInferenceError] message"
_ERROR = re.compile(r"\(op_type:([^,)]*)(?:, node name: (.*?))?\):\s*(?:\[(\w+)\]\s*)?")
# what strict inference says about declared shapes (lenient in ONNX Runtime) and about the
# inputs of nodes after a failed one
_CONTROL_FLOW = ("If", "Loop", "Scan", "SequenceMap")
_NOT_AN_ERROR = ("Inferred shape and existing shape differ", "expected to have type but instead is null")


def _problems(text: str) -> Iterator[tuple[list[tuple[str, str]], str, str]]:
    """(nodes from outermost to innermost as (op, name), error kind, message) for each error line.

    A message that names no node at all is one problem with an empty path.
    """
    ignored = False
    for line in text.splitlines():
        path: list[tuple[str, str]] = []
        kind, rest = "", line
        while (m := _ERROR.search(rest)) is not None:
            path.append((m.group(1).strip(), (m.group(2) or "").strip()))
            kind, rest = m.group(3) or "", rest[m.end():]
            rest = re.sub(r"^Inference error\(s\):\s*", "", rest)
        if not path or not rest.strip():
            continue
        if any(s in rest for s in _NOT_AN_ERROR) or any(op not in _CONTROL_FLOW for op, _ in path[:-1]):
            # the second: inside the function body of an op ONNX Runtime implements itself (MeanVarianceNormalization)
            ignored = True
            continue
        yield path, kind, rest.strip()
    if not ignored and "op_type:" not in text and text.strip():
        m = re.match(r"\s*(?:\[(\w+)\]\s*)?(.*)", text.strip().splitlines()[0])
        yield [], m.group(1) or "" if m else "", (m.group(2) if m else text).strip()


def _elem_names(msg: str) -> str:
    def name(m: re.Match[str]) -> str:
        a, b = (int(m.group(k)) for k in (1, 2))
        known = onnx.TensorProto.DataType.values()
        if a not in known or b not in known:
            return m.group(0)
        return f"the op gives {onnx.TensorProto.DataType.Name(a).lower()}, the model declares {onnx.TensorProto.DataType.Name(b).lower()}"

    return re.sub(r"\((\d+)\) vs \((\d+)\)", name, msg)


def _explain_type(msg: str, node: onnx.NodeProto | None, opsets: dict[str, int]) -> str:
    """ONNX's "X typestr: T, has unsupported type: tensor(string)" with the types the op accepts."""
    m = re.match(r"(\S+) typestr: (\S+), has unsupported type: (\S+)", msg)
    if m is None or node is None:
        return msg
    param, constraint, got = m.groups()
    domain = "" if node.domain == "ai.onnx" else node.domain
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
    except onnx.defs.SchemaError:
        return msg
    allowed = next((list(c.allowed_type_strs) for c in schema.type_constraints if c.type_param_str == constraint), [])
    accepts = f"; it accepts {', '.join(allowed)}" if allowed else ""
    return f"{node.op_type}'s operand {param} is {got}, outside its type constraint {constraint}{accepts}"


def find_node(g: onnx.GraphProto, name: str | None, op: str | None = None) -> onnx.NodeProto | None:
    """The node of ``g`` (or of its subgraphs) with this name (any, for None) and op, if exactly one has them."""
    found = [n for n in _all_nodes(g) if (op is None or n.op_type == op) and (name is None or n.name == name)]
    return found[0] if len(found) == 1 else None


def _all_nodes(g: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for n in g.node:
        yield n
        for a in n.attribute:
            for sub in [a.g] if a.type == A.GRAPH else list(a.graphs) if a.type == A.GRAPHS else []:
                yield from _all_nodes(sub)


def _check_element_types(g: onnx.GraphProto, label: str) -> None:
    """Declared element types must be ones ONNX defines (inference reports others without naming the value)."""
    known = onnx.TensorProto.DataType.values()
    for kind, vis in (("input", g.input), ("output", g.output), ("value_info", g.value_info)):
        for v in vis:
            tp = v.type
            while tp.WhichOneof("value") in ("sequence_type", "optional_type"):
                tp = getattr(tp, tp.WhichOneof("value")).elem_type
            kind_of = tp.WhichOneof("value")
            elem = getattr(tp, kind_of).elem_type if kind_of in ("tensor_type", "sparse_tensor_type") else 0
            if elem not in known:
                raise ModelLoadError(f"{label}: {kind} '{v.name}' has element type {elem}, which ONNX does not define. "
                                     "Fix the exporter or the model.")


def _check_before_inference(g: onnx.GraphProto, label: str) -> None:
    """What ONNX's inference functions (in onnx and in ONNX Runtime) read out of bounds on, aborting the process."""
    from nasc.frontends.onnx import scope_of

    for n in _all_nodes(g):
        if n.op_type == "Split" and n.domain in ("", "ai.onnx"):
            num = next((a.i for a in n.attribute if a.name == "num_outputs"), None)
            if num is not None and num != len(n.output):
                scope = scope_of(n)
                raise ShapeError(f"{label}: 'Split' at node '{n.name or '?'}'" + (f" (scope '{scope}')" if scope else "")
                                 + f" has num_outputs={num} but {len(n.output)} results. Fix the model or its exporter.")


def check_spec(proto: onnx.ModelProto, label: str) -> None:
    """Run ONNX's strict type and shape inference (with type-constraint checks) on the model's skeleton.

    Raises ModelLoadError (a type error: an operand type outside the op's type
    constraints, If branches that disagree, a declared output type the op does not
    give) or ShapeError (the op's shape rules), naming the innermost node.
    """
    from nasc.frontends.onnx import scope_of

    _check_element_types(proto.graph, label)
    _check_before_inference(proto.graph, label)
    skeleton = _skeleton(proto)
    if skeleton.ByteSize() >= (1 << 31) - 1:
        return  # a protobuf this large cannot be passed to inference; ONNX Runtime will check it
    try:
        onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True, data_prop=False)
    except onnx.shape_inference.InferenceError as e:
        problem = next(_problems(str(e)), None)
        if problem is None:
            return
        path, kind, msg = problem
        node, where = None, "the model"
        if path:
            op, name = path[-1]
            node = find_node(proto.graph, name, op)
            scope = scope_of(node) if node is not None else ""
            where = f"'{op}' at node '{name or '?'}'" + (f" (scope '{scope}')" if scope else "")
            for outer_op, outer_name in reversed(path[:-1]):
                where += f", in a body of '{outer_op}' at node '{outer_name or '?'}'"
        opsets = {("" if i.domain == "ai.onnx" else i.domain): int(i.version) for i in proto.opset_import}
        msg = _explain_type(_elem_names(msg), node, opsets)
        error = ShapeError if kind == "ShapeInferenceError" else ModelLoadError
        raise error(
            f"{label}: {where} is invalid: {msg} (ONNX type and shape inference, as ONNX Runtime runs it). "
            "Fix the model or its exporter."
        ) from None
    except ValueError as e:  # a malformed type ONNX cannot name, such as element type 0
        raise ModelLoadError(f"{label} is not a valid ONNX model: {str(e).strip() or type(e).__name__}") from None


# ---- external data ------------------------------------------------------------------------------


def _tensor_protos(g: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a graph: initializers (sparse ones' values and indices too) and tensor attributes."""
    yield from g.initializer
    for sp in g.sparse_initializer:
        yield from (sp.values, sp.indices)
    for node in g.node:
        for a in node.attribute:
            if a.type == A.TENSOR:
                yield a.t
            elif a.type == A.TENSORS:
                yield from a.tensors
            elif a.type == A.SPARSE_TENSOR:
                yield from (a.sparse_tensor.values, a.sparse_tensor.indices)
            elif a.type == A.SPARSE_TENSORS:
                for sp in a.sparse_tensors:
                    yield from (sp.values, sp.indices)
            elif a.type == A.GRAPH:
                yield from _tensor_protos(a.g)
            elif a.type == A.GRAPHS:
                for sub in a.graphs:
                    yield from _tensor_protos(sub)


def _data_bytes(t: onnx.TensorProto) -> int | None:
    """Bytes the contents of ``t`` take in raw form (None for strings and unknown element types)."""
    n = int(np.prod(t.dims, dtype=object)) if len(t.dims) else 1
    bits: dict[int, int] = {onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT4: 4, onnx.TensorProto.FLOAT4E2M1: 4}
    for name in ("UINT2", "INT2"):
        if hasattr(onnx.TensorProto, name):
            bits[getattr(onnx.TensorProto, name)] = 2
    if t.data_type in bits:
        return (n * bits[t.data_type] + 7) // 8
    if t.data_type == onnx.TensorProto.STRING:
        return None
    try:
        return n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def check_external_data(proto: onnx.ModelProto, base_dir: str, label: str) -> None:
    """Refuse external data outside the model's directory, missing, or not inside its file."""
    root = os.path.realpath(base_dir)
    for t in _tensor_protos(proto.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if "\x00" in loc:
            raise ModelLoadError(f"{label}: tensor '{t.name}' stores its data at {loc!r}, a path with a NUL byte, "
                                 "which no file can have. Fix the tensor's external data 'location'.")
        target = os.path.realpath(os.path.join(root, loc))
        if not loc or os.path.isabs(loc) or os.path.commonpath([root, target]) != root:
            raise ModelLoadError(
                f"{label}: tensor '{t.name}' stores its data at {loc!r}, outside the model's directory; "
                "nasc refuses such paths. Move the data file next to the model and point 'location' at it."
            )
        if not os.path.isfile(target):
            raise ModelLoadError(f"{label}: external data file {loc!r} of tensor '{t.name}' is missing")
        try:
            offset, length = int(info.get("offset") or 0), (int(info["length"]) if info.get("length") else None)
        except ValueError:
            raise ModelLoadError(f"{label}: tensor '{t.name}' has a non-integer external data offset or length "
                                 f"({info.get('offset')!r}, {info.get('length')!r})") from None
        size, want = os.path.getsize(target), _data_bytes(t)
        need = length if length is not None else want
        if offset < 0 or (need is not None and need < 0):
            raise ModelLoadError(f"{label}: tensor '{t.name}' has a negative external data offset or length")
        if offset > size or (need is not None and offset + need > size):
            span = f"bytes {offset}..{offset + need}" if need is not None else f"offset {offset}"
            raise ModelLoadError(
                f"{label}: tensor '{t.name}' reads {span} of external data file {loc!r}, which has {size} bytes. "
                "The file is truncated or not the one saved with the model: save the model and its data again."
            )
        if length is not None and want is not None and length != want:
            raise ModelLoadError(
                f"{label}: tensor '{t.name}' is {list(t.dims)} of {onnx.TensorProto.DataType.Name(t.data_type)} "
                f"({want} bytes), but its external data in {loc!r} has length {length}"
            )
