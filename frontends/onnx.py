"""ONNX frontend: a model file, bytes or ModelProto -> a verified, typed ir.Graph.

Steps: read (with external data confined to the model's directory and inside
its files), make negative dims unknown, check the structure (outputs, every name
defined, no cycles), the opsets, onnx.checker and ONNX's strict type and shape
inference (what ONNX Runtime refuses at load: see onnx_check), convert the
default domain to the canonical opset, fix dynamic input dims from the caller,
then build the IR node by node: registered ops are typed by the op registry
and cheap shape subgraphs are folded to constants on the way; other ops are
carried opaquely and typed by ONNX shape inference. No tensor may exceed the
size limit (``max_tensor_bytes``).

Malformed input raises a :class:`nasc.Error` naming the node, its op and scope;
any other exception is a bug in nasc.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from nasc.errors import ModelLoadError, ShapeError, UnsupportedModelError, UsageError
from nasc.frontends import onnx_infer
from nasc.frontends.onnx_check import (
    check_external_data,
    check_opsets,
    check_spec,
    check_tensor_size,
    check_text,
    clear_negative_dims,
)
from nasc.frontends.onnx_check import max_tensor_bytes as tensor_limit
from nasc.frontends.onnx_proto import (
    ElementTypeError,
    attr_from_onnx,
    dtype_from_onnx,
    lazy_tensor,
    sparse_to_array,
    tensor_to_array,
    type_from_onnx,
)
from nasc.ir import verify
from nasc.ir.core import Graph, LazyArray, Node, Value, captured_names
from nasc.ir.ops.registry import InferenceError, fold_node, lookup
from nasc.ir.types import TensorType

CANONICAL_OPSET = 21
FOLD_MAX_ELEMENTS = 1 << 16  # larger constant results are left to the simplify pass
SHARED_MIN_ELEMENTS = 4096  # a weight this large read by several nodes is not copied by folding (ties stay ties)

ModelLike = str | os.PathLike[str] | bytes | onnx.ModelProto


def load_onnx(
    model: ModelLike,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    verify_graph: bool = True,
    max_tensor_bytes: int | None = None,
) -> Graph:
    """Import an ONNX model as an IR graph with static shapes.

    ``input_shapes`` fixes dynamic input dims, one full shape per input that has
    any (``{"x": (1, 3, 224, 224)}``); a dim written as a negative number (``-1``,
    as paddle2onnx writes them) is dynamic. ``max_tensor_bytes`` bounds every
    input, constant and result (default: $NASC_MAX_TENSOR_BYTES, else 16 GiB).
    Raises a :class:`nasc.Error` subclass naming the problem for unreadable,
    invalid or unsupported models: whatever ONNX's checker and its strict type
    and shape inference refuse (as ONNX Runtime does), and tensors over the limit.
    """
    import warnings

    # onnx warns on stderr for what it tolerates (unknown external data keys, ...): those go to the
    # graph's load warnings (the compile report lists them), so that an error stays one line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = _load_onnx(model, input_shapes, verify_graph=verify_graph, max_tensor_bytes=max_tensor_bytes)
    notes = list(dict.fromkeys(f"loading the model: {' '.join(str(w.message).split())}" for w in caught
                              if not issubclass(w.category, DeprecationWarning | PendingDeprecationWarning | FutureWarning)))
    if notes:
        graph.meta.setdefault("load_warnings", []).extend(notes)
    return graph


def _load_onnx(model: ModelLike, input_shapes: Mapping[str, Sequence[int]] | None, *, verify_graph: bool,
               max_tensor_bytes: int | None) -> Graph:
    limit = tensor_limit(max_tensor_bytes)
    proto, base_dir, label = read_model(model)
    proto = clear_negative_dims(proto, owned=not isinstance(model, onnx.ModelProto))
    check_opsets(proto, label)
    check_structure(proto, label, str(model) if isinstance(model, str | os.PathLike) else None)
    check_spec(proto, label)
    # the opset converter drops node metadata (where torch.onnx keeps scopes): read scopes first
    scopes = {o: scope_of(n) for n in proto.graph.node for o in n.output if o}
    proto = to_canonical_opset(proto, label)
    return build_graph(proto, input_shapes or {}, base_dir, label, verify_graph=verify_graph, scopes=scopes,
                       max_tensor_bytes=limit)


# ---- reading -----------------------------------------------------------------


def read_model(model: ModelLike) -> tuple[onnx.ModelProto, str | None, str]:
    """The ModelProto, the directory its external data is relative to, and a label for messages."""
    if isinstance(model, onnx.ModelProto):
        check_text(model, "model <proto>")
        return model, None, f"model '{model.graph.name or '<proto>'}'"
    if isinstance(model, bytes | bytearray):
        proto = _parse_bytes(bytes(model), "<bytes>")
        check_text(proto, "model <bytes>")
        return proto, None, "model <bytes>"
    path = Path(model)
    label = f"'{path}'"
    if not path.is_file():
        raise ModelLoadError(f"{label}: no such file")
    proto = _parse_bytes(path.read_bytes(), label)
    check_text(proto, label)
    base_dir = str(path.resolve().parent)
    check_external_data(proto, base_dir, label)
    return proto, base_dir, label


def _parse_bytes(data: bytes, label: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{label} is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{label} is not a readable ONNX model (truncated or another format?): {e}") from None
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelLoadError(f"{label} is not an ONNX model: it has no IR version or no graph")
    return proto


# ---- structure and opset -------------------------------------------------------


def check_structure(proto: onnx.ModelProto, label: str, path: str | None = None) -> None:
    """Every operand defined, nodes sortable (no cycle); then onnx.checker. Sorts in place if needed."""
    g = proto.graph
    if not g.output:
        raise ModelLoadError(f"{label}: the graph has no outputs, so it computes nothing. Fix the exporter or the model.")
    defined = {i.name for i in g.input} | {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    producers: dict[str, int] = {}
    for idx, node in enumerate(g.node):
        for o in node.output:
            if o:
                producers[o] = idx
    for node in g.node:
        for name in (*node.input, *_outer_reads(node)):
            if name and name not in defined and name not in producers:
                raise ModelLoadError(
                    f"{label}: node '{node.name or '?'}' ({node.op_type}) reads '{name}', which no node, graph input "
                    "or initializer defines. Fix the exporter or the model."
                )
    for o in g.output:
        if o.name not in defined and o.name not in producers:
            raise ModelLoadError(f"{label}: graph output '{o.name}' is not produced by any node")
    order = _toposort(g, defined, producers, label)
    resorted = order != list(range(len(g.node)))
    if resorted:
        nodes = [g.node[i] for i in order]
        del g.node[:]
        g.node.extend(nodes)
    try:
        # a file is checked from its path, so that external data resolves next to it
        onnx.checker.check_model(path if path is not None and not resorted else proto)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid model"
        if resorted and "should be stored in" in first:
            return  # external data of a re-sorted in-memory copy; its locations were checked already
        raise ModelLoadError(f"{label} is not a valid ONNX model: {first}") from None


def _outer_reads(node: onnx.NodeProto) -> list[str]:
    from nasc.frontends.onnx_proto import outer_names

    names: list[str] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            names += outer_names(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for sub in a.graphs:
                names += outer_names(sub)
    return names


def _toposort(g: onnx.GraphProto, defined: set[str], producers: dict[str, int], label: str) -> list[int]:
    import networkx as nx

    dg = nx.DiGraph()
    dg.add_nodes_from(range(len(g.node)))
    for idx, node in enumerate(g.node):
        for name in (*node.input, *_outer_reads(node)):
            if name and name not in defined:
                dg.add_edge(producers[name], idx)
    try:
        return list(nx.lexicographical_topological_sort(dg))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(dg)
        names = " -> ".join(f"'{g.node[a].name or '?'}' ({g.node[a].op_type})" for a, _ in cycle[:CYCLE_SHOWN])
        if len(cycle) > CYCLE_SHOWN:
            names += f" -> ... and {len(cycle) - CYCLE_SHOWN} more node(s)"
        raise ModelLoadError(f"{label}: the graph has a cycle: {names} -> back to the first") from None


#: the most nodes an error message lists
CYCLE_SHOWN = 10


def default_opset(proto: onnx.ModelProto) -> int | None:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def to_canonical_opset(proto: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Convert the default domain to opset 21 (newer opsets, and models without it, are kept as they are)."""
    version = default_opset(proto)
    if version is None or version >= CANONICAL_OPSET:
        return proto
    from onnx import version_converter

    try:
        return version_converter.convert_version(proto, CANONICAL_OPSET)
    except Exception as e:  # the converter raises bare RuntimeErrors and C++ errors
        raise UnsupportedModelError(
            f"{label}: converting opset {version} to {CANONICAL_OPSET} failed ({str(e).splitlines()[0]}). "
            f"Re-export the model at opset {CANONICAL_OPSET} (or at least 17)."
        ) from None


# ---- building the IR ---------------------------------------------------------------


def scope_of(node: onnx.NodeProto) -> str:
    """The module path a node came from: nasc's own metadata, torch.export's name scopes, or the node name."""
    meta = {p.key: p.value for p in node.metadata_props}
    if "nasc.scope" in meta:
        return meta["nasc.scope"]
    scopes = meta.get("pkg.torch.onnx.name_scopes")
    if scopes:
        # torch.onnx (dynamo): a list of full module paths from the root, ending with the fx node's name
        try:
            import ast

            parts = list(ast.literal_eval(scopes))
        except (ValueError, SyntaxError):
            parts = []
        if len(parts) >= 2:
            return str(parts[-2])
    name = node.name
    if name.startswith("/") and name.count("/") >= 2:
        return _torchscript_scope([p for p in name.split("/")[1:-1] if p])
    return ""


def _torchscript_scope(segments: list[str]) -> str:
    """Rebuild a module path from TorchScript-exporter name segments.

    Each segment is the module's name cut back to its last non-numeric part plus
    the numbers after it: ``features.3.conv.0.0`` is written ``/features/features.3/conv/conv.0/conv.0.0``.
    A segment that extends the previous one adds only its suffix.
    """
    path: list[str] = []
    prev = ""
    for seg in segments:
        if prev and seg.startswith(prev + "."):
            path.extend(seg[len(prev) + 1 :].split("."))
        else:
            path.extend(seg.split("."))
        prev = seg
    return ".".join(path)


def _fixed_input_type(vi: onnx.ValueInfoProto, shapes: Mapping[str, Sequence[int]], label: str) -> Any:
    try:
        t = type_from_onnx(vi.type)
    except ElementTypeError as e:
        raise _element_type_error(e, f"{label}: input '{vi.name}'") from None
    if not isinstance(t, TensorType):
        return t
    given = shapes.get(vi.name)
    if given is not None:
        given = tuple(int(d) for d in given)
        if t.shape is not None:
            if len(given) != len(t.shape):
                raise ShapeError(
                    f"{label}: input '{vi.name}' has rank {len(t.shape)} ({t}), but the shape given has "
                    f"rank {len(given)}: {'x'.join(map(str, given))}"
                )
            for k, (d, g) in enumerate(zip(t.shape, given)):
                if isinstance(d, int) and d != g:
                    raise ShapeError(f"{label}: input '{vi.name}' has dim {k} = {d} ({t}); the shape given says {g}")
        if any(d < 0 for d in given):
            raise ShapeError(f"{label}: input '{vi.name}': dims cannot be negative, got {given}")
        return TensorType(t.dtype, given)
    if t.shape is None or not t.is_static:
        dyn = "unknown rank" if t.shape is None else ", ".join(
            f"{k}: {d!r}" for k, d in enumerate(t.shape) if not isinstance(d, int)
        )
        example = "x".join(str(d) if isinstance(d, int) else "N" for d in (t.shape or ("N",)))
        raise ShapeError(
            f"{label}: input '{vi.name}' ({t}) has dynamic dims [{dyn}]; fix them with "
            f"input_shapes={{'{vi.name}': (...)}} or --input-shape {vi.name}={example}"
        )
    return t


def build_graph(
    proto: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]],
    base_dir: str | None,
    label: str,
    *,
    verify_graph: bool = True,
    scopes: Mapping[str, str] | None = None,
    max_tensor_bytes: int | None = None,
) -> Graph:
    """The IR graph of a checked, canonical-opset model; ``scopes`` maps result names to known scopes."""
    limit = tensor_limit(max_tensor_bytes)
    g = proto.graph
    init_names = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    real_inputs = [vi for vi in g.input if vi.name not in init_names]
    unknown = set(input_shapes) - {vi.name for vi in real_inputs}
    if unknown:
        raise UsageError(
            f"{label}: input_shapes names {sorted(unknown)}, which are not inputs; the inputs are "
            f"{[vi.name for vi in real_inputs]}"
        )
    graph = Graph(
        name=g.name or "main",
        opsets={("" if i.domain == "ai.onnx" else i.domain): int(i.version) for i in proto.opset_import},
        meta={"producer": proto.producer_name, "doc_string": proto.doc_string,
              "metadata_props": {p.key: p.value for p in proto.metadata_props}},
    )
    env: dict[str, Value] = {}
    for vi in real_inputs:
        t = _fixed_input_type(vi, input_shapes, label)
        check_tensor_size(label, f"input '{vi.name}'", t, limit, "Give it a smaller shape. ")
        env[vi.name] = graph.add_input(vi.name, t)
    for t in g.initializer:
        env[t.name] = graph.add_constant(_tensor_constant(t, base_dir, label, limit), t.name)
    for sp in g.sparse_initializer:
        env[sp.values.name] = graph.add_constant(_sparse_constant(sp, base_dir, label, limit), sp.values.name)

    uses: dict[str, int] = {}
    for nproto in g.node:
        for name in nproto.input:
            uses[name] = uses.get(name, 0) + 1
    shared = {t.name for t in g.initializer if uses.get(t.name, 0) > 1 and math.prod(t.dims) > SHARED_MIN_ELEMENTS}
    for nproto in g.node:
        _import_node(graph, nproto, env, label, scopes or {}, max_tensor_bytes=limit, base_dir=base_dir,
                     shared=shared)

    outs = []
    for o in g.output:
        outs.append(env[o.name])
    graph.outputs = outs
    graph.remove_dead()
    if verify_graph:
        verify(graph)
    return graph


def _element_type_error(e: ElementTypeError, where: str) -> Exception:
    if e.known:
        return UnsupportedModelError(f"{where}: {e}")
    return ModelLoadError(f"{where}: {e}. Fix the exporter or the model.")


def _tensor_constant(t: onnx.TensorProto, base_dir: str | None, label: str, limit: int) -> LazyArray:
    """An initializer as a lazily loaded constant (its size checked against ``limit`` first)."""
    try:
        arr = lazy_tensor(t, base_dir)
    except ElementTypeError as e:
        raise _element_type_error(e, f"{label}: initializer '{t.name}'") from None
    check_tensor_size(label, f"initializer '{t.name}'", TensorType(arr.dtype, arr.shape), limit)
    return arr


def _sparse_constant(sp: onnx.SparseTensorProto, base_dir: str | None, label: str, limit: int) -> np.ndarray:
    """A sparse initializer densified (ONNX Runtime densifies them too)."""
    name = sp.values.name
    try:
        dense_type = TensorType(dtype_from_onnx(sp.values.data_type), tuple(int(d) for d in sp.dims))
    except ElementTypeError as e:
        raise _element_type_error(e, f"{label}: sparse initializer '{name}'") from None
    check_tensor_size(label, f"sparse initializer '{name}' (dense)", dense_type, limit)
    try:
        return sparse_to_array(sp, base_dir)
    except (ValueError, IndexError) as e:
        raise ModelLoadError(f"{label}: sparse initializer '{name}' cannot be densified: {e}") from None


def _constant_node_value(n: onnx.NodeProto, base_dir: str | None) -> np.ndarray:
    a = n.attribute[0]
    kind = a.name
    if kind == "value":
        return tensor_to_array(a.t, base_dir)
    if kind == "sparse_value":
        return sparse_to_array(a.sparse_tensor, base_dir)
    if kind == "value_float":
        return np.array(a.f, np.float32)
    if kind == "value_floats":
        return np.array(list(a.floats), np.float32)
    if kind == "value_int":
        return np.array(a.i, np.int64)
    if kind == "value_ints":
        return np.array(list(a.ints), np.int64)
    if kind == "value_string":
        return np.array(a.s.decode("utf-8", errors="surrogateescape"), dtype=object)
    if kind == "value_strings":
        return np.array([s.decode("utf-8", errors="surrogateescape") for s in a.strings], dtype=object)
    raise UnsupportedModelError(f"Constant node '{n.name}' has an unsupported attribute {kind!r}")


def _where(n: onnx.NodeProto, domain: str, scope: str) -> str:
    """How messages name a node before its IR node exists (as Node.describe does)."""
    op = f"{domain}.{n.op_type}" if domain else n.op_type
    return f"'{op}' at node '{n.name or '?'}'" + (f" (scope '{scope}')" if scope else "")


def _node_attrs(n: onnx.NodeProto, entry: Any, label: str, where: str, base_dir: str | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for a in n.attribute:
        if a.ref_attr_name:
            raise UnsupportedModelError(f"{label}: {where} uses a function attribute reference")
        try:
            val = attr_from_onnx(a, base_dir)
            if entry is not None and a.name in entry.dtype_attrs and isinstance(val, int):
                val = dtype_from_onnx(val) if val else val
        except ElementTypeError as e:
            raise _element_type_error(e, f"{label}: {where}: attribute '{a.name}'") from None
        except ValueError as e:
            raise ModelLoadError(f"{label}: {where}: attribute '{a.name}' cannot be read: {e}") from None
        attrs[a.name] = val
    return attrs


def _import_node(graph: Graph, n: onnx.NodeProto, env: dict[str, Value], label: str, scopes: Mapping[str, str],
                 *, max_tensor_bytes: int | None = None, base_dir: str | None = None,
                 shared: frozenset[str] | set[str] = frozenset()) -> None:
    """Append the IR of ``n`` (or, for a foldable node of constants, bind its results to constants).

    ``base_dir``: the model's directory, which external data in attributes is relative to. A node reading
    a weight in ``shared`` (one that several nodes read: a tied embedding and LM head) is not folded, so that
    the weight stays one value instead of gaining a transformed copy.
    """
    domain = "" if n.domain == "ai.onnx" else n.domain
    scope = scope_of(n) or next((scopes[o] for o in n.output if scopes.get(o)), "")
    where = _where(n, domain, scope)
    if n.op_type == "Constant" and domain == "" and len(n.attribute) == 1:
        try:
            arr = _constant_node_value(n, base_dir)
            ctype = None
            if n.attribute[0].name == "value":
                ctype = TensorType(dtype_from_onnx(n.attribute[0].t.data_type), tuple(arr.shape))
        except ElementTypeError as e:
            raise _element_type_error(e, f"{label}: {where}") from None
        except (ValueError, IndexError) as e:
            raise ModelLoadError(f"{label}: {where}: its value cannot be read: {e}") from None
        env[n.output[0]] = graph.add_constant(arr, n.output[0], type=ctype)
        return
    entry = lookup(n.op_type, domain)
    attrs = _node_attrs(n, entry, label, where, base_dir)
    inputs = [env[name] if name else None for name in n.input]
    # trailing omitted operands are dropped, as ONNX allows
    while inputs and inputs[-1] is None:
        inputs.pop()
    captures = [env[name] for name in captured_names(attrs)]
    outs = [Value(TensorType("f32", None), name) for name in n.output]
    node = Node(n.op_type, inputs, outs, attrs, domain=domain, scope=scope, name=n.name, captures=captures)
    try:
        if entry is not None and entry.foldable and not shared.intersection(n.input) and _fold(graph, node, entry, env):
            return
        types = entry.infer(node) if entry is not None else onnx_infer.infer_opaque(node, graph.opsets)
    except InferenceError as e:
        raise ShapeError(f"{label}: {e}") from None
    except (ValueError, IndexError, ZeroDivisionError, OverflowError) as e:
        # what inference raises on operands or attributes that break the op's rules
        raise ShapeError(f"{label}: {where}: its operands or attributes do not fit the op "
                         f"({type(e).__name__}: {e}). Fix the model or its exporter.") from None
    limit = tensor_limit(max_tensor_bytes)
    for i, (out, t) in enumerate(zip(outs, types)):
        check_tensor_size(label, f"result {i} ('{out.name}') of {where}", t, limit)
        out.type = t
    graph.append(node)
    for name, out in zip(n.output, outs):
        if name:
            env[name] = out


def _fold(graph: Graph, node: Node, entry: Any, env: dict[str, Value]) -> bool:
    """Replace a node of constants (or a Shape of a static tensor) by its constant results."""
    args = []
    for v in node.inputs:
        if v is not None and v.is_const:
            if math.prod(v.const.shape) > FOLD_MAX_ELEMENTS:  # type: ignore[union-attr]
                return False
            args.append(v.data)
        else:
            args.append(None)
    types = entry.infer(node)
    # inference knows the results' sizes before they are computed: never allocate a large one
    if not all(isinstance(t, TensorType) and t.is_static and t.numel <= FOLD_MAX_ELEMENTS
               for t in types[: len(node.outputs)]):
        return False
    results = fold_node(entry, node, args)
    if results is None or any(r.size > FOLD_MAX_ELEMENTS for r in results):
        return False
    for out, arr, t in zip(node.outputs, results, types):
        if out.name:
            ctype = TensorType(t.dtype, tuple(arr.shape)) if isinstance(t, TensorType) else None
            env[out.name] = graph.add_constant(arr, out.name, type=ctype)
    return True
