"""The IR's text form: ``print_graph`` writes it, ``parse`` reads it back.

One line per input, constant, node and the outputs::

    graph "main" opsets {"": 21}
    input %x : f32[1,3,8,8]
    const %w : f32[4,3,3,3] = "w"
    const %shape : i64[2] = dense[1, -1]
    %h : f32[1,4,8,8] = Conv(%x, %w, _) {pads=[1,1,1,1]} @"features.0" #"conv0"
    %y : f32[1,256] = Reshape(%h, %shape) #"flat"
    output %y

Small constants are printed inline (``dense[...]``); large ones by a key that
``parse`` looks up in its ``constants`` dict (or fills from a seeded generator
when absent, for tests). ``_`` is an omitted optional operand. A quantization policy
(``graph.meta["quant_policy"]``) prints as ``quant-policy "layer" {"bits": 4, ...}`` lines after the graph line. Value names are
made unique for printing; values themselves are told apart by identity.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

import numpy as np

from nasc.errors import ParseError
from nasc.ir import dtypes
from nasc.ir.core import Graph, LazyArray, Node, SubGraph, Value
from nasc.ir.types import OpaqueType, QuantParams, TensorType, Type

INLINE_MAX = 8  # constants with at most this many elements are printed inline
#: graph.meta key of the quantization policy (layer -> bits, sensitivity, bytes), printed as ``quant-policy`` lines
POLICY_KEY = "quant_policy"

_NAME_RE = re.compile(r"[A-Za-z0-9_.\-:/]+")


# ---- printing ----------------------------------------------------------------


def type_str(t: Type) -> str:
    if isinstance(t, OpaqueType):
        return f"opaque<{json.dumps(t.desc)}>{t.payload.hex()}"
    return str(t)


def _json_num(x: Any) -> str:
    return json.dumps(x.item() if isinstance(x, np.generic) else x)


def _float_str(x: np.floating) -> str:
    """The shortest text that reads back to the same value in ``x``'s own precision (JSON spelling)."""
    if np.isnan(x):
        return "NaN"
    if np.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x != 0 and not 1e-4 <= abs(float(x)) < 1e16:
        return np.format_float_scientific(x, unique=True, trim="0")
    return np.format_float_positional(x, unique=True, trim="0")


def _array_str(arr: np.ndarray) -> str:
    flat = arr.reshape(-1)
    if flat.dtype.kind == "c":
        return json.dumps([[float(x.real), float(x.imag)] for x in flat])
    if flat.dtype.kind == "f" or flat.dtype.name.startswith(("bfloat", "float")):
        if flat.dtype.kind != "f" or flat.dtype.itemsize < 2:  # ml_dtypes types: print via float32
            flat = flat.astype(np.float32)
        return "[" + ", ".join(_float_str(x) for x in flat) + "]"
    if flat.dtype.kind == "b":
        return json.dumps([bool(x) for x in flat])
    if flat.dtype.kind in "OSU":
        return json.dumps([x.decode() if isinstance(x, bytes) else str(x) for x in flat])
    return "[" + ", ".join(str(int(x)) for x in flat.astype(np.int64)) + "]"


def attr_str(value: Any) -> str:
    if isinstance(value, SubGraph):
        return f"subgraph<{json.dumps(list(value.captured))}>{value.payload.hex()}"
    if isinstance(value, np.ndarray):
        t = TensorType(dtypes.from_numpy(value.dtype), value.shape)
        return f"dense<{t}>{_array_str(value)}"
    if isinstance(value, Type.__args__):  # type: ignore[attr-defined]
        return f"type<{type_str(value)}>"
    if isinstance(value, tuple | list):
        if value and all(isinstance(v, np.ndarray) for v in value):
            return "tensors(" + ", ".join(attr_str(v) for v in value) + ")"
        return "[" + ", ".join(_json_num(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(int(value))
    return _json_num(value)


class _Namer:
    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.taken: set[str] = set()

    def __call__(self, v: Value) -> str:
        got = self.names.get(id(v))
        if got is not None:
            return got
        base = v.name or str(len(self.names))
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}.{k}", k + 1
        self.taken.add(name)
        self.names[id(v)] = name
        return name

    def ref(self, v: Value | None) -> str:
        if v is None:
            return "_"
        name = self(v)
        return "%" + (name if _NAME_RE.fullmatch(name) else json.dumps(name))


def print_graph(graph: Graph, inline_max: int = INLINE_MAX) -> str:
    """The text form of ``graph`` (see the module docstring)."""
    namer = _Namer()
    lines = [f"graph {json.dumps(graph.name)} opsets {json.dumps(graph.opsets, sort_keys=True)}"]
    for layer, entry in graph.meta.get(POLICY_KEY, {}).items():
        lines.append(f"quant-policy {json.dumps(layer)} {json.dumps(entry, sort_keys=True)}")
    for v in graph.inputs:
        lines.append(f"input {namer.ref(v)} : {type_str(v.type)}")
    for v in graph.constants:
        assert v.const is not None
        if int(np.prod(v.const.shape)) <= inline_max:
            body = "dense" + _array_str(v.data)
        else:
            body = json.dumps(namer(v))
        lines.append(f"const {namer.ref(v)} : {type_str(v.type)} = {body}")
    for node in graph.nodes:
        lines.append(node_str(node, namer))
    lines.append("output " + ", ".join(namer.ref(v) for v in graph.outputs))
    return "\n".join(lines) + "\n"


def node_str(node: Node, namer: _Namer | None = None) -> str:
    namer = namer or _Namer()
    outs = ", ".join(f"{namer.ref(o)} : {type_str(o.type)}" for o in node.outputs) or "()"
    args = ", ".join(namer.ref(v) for v in node.inputs)
    text = f"{outs} = {node.qualified_op}({args})"
    if node.attrs:
        text += " {" + ", ".join(f"{k}={attr_str(node.attrs[k])}" for k in sorted(node.attrs)) + "}"
    if node.captures:
        text += " captures(" + ", ".join(namer.ref(v) for v in node.captures) + ")"
    if node.scope:
        text += f" @{json.dumps(node.scope)}"
    if node.name:
        text += f" #{json.dumps(node.name)}"
    return text


# ---- parsing -----------------------------------------------------------------

_DECODER = json.JSONDecoder()
_TYPE_RE = re.compile(r"([a-z0-9]+)\[([^\]]*)\](?:q\(scale=(\[[^\]]*\]),zp=(\[[^\]]*\])(?:,axis=(-?\d+))?\))?")


class _Cursor:
    def __init__(self, text: str, lineno: int) -> None:
        self.text = text
        self.pos = 0
        self.lineno = lineno

    def error(self, msg: str) -> ParseError:
        return ParseError(f"line {self.lineno}: {msg}: {self.text.strip()!r} (at column {self.pos + 1})")

    def ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self, s: str) -> bool:
        self.ws()
        return self.text.startswith(s, self.pos)

    def eat(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str) -> None:
        if not self.eat(s):
            raise self.error(f"expected {s!r}")

    def json(self) -> Any:
        self.ws()
        try:
            val, end = _DECODER.raw_decode(self.text, self.pos)
        except json.JSONDecodeError as e:
            raise self.error(f"bad literal ({e.msg})") from None
        self.pos = end
        return val

    def regex(self, rx: re.Pattern[str], what: str) -> re.Match[str]:
        self.ws()
        m = rx.match(self.text, self.pos)
        if not m:
            raise self.error(f"expected {what}")
        self.pos = m.end()
        return m

    def name(self) -> str:
        self.expect("%")
        if self.peek('"'):
            return str(self.json())
        return self.regex(_NAME_RE, "a value name").group(0)

    def at_end(self) -> bool:
        self.ws()
        return self.pos >= len(self.text)


def _parse_type(cur: _Cursor) -> Type:
    cur.ws()
    if cur.eat("opaque<"):
        desc = cur.json()
        cur.expect(">")
        m = cur.regex(re.compile(r"[0-9a-f]*"), "hex payload")
        return OpaqueType(desc, bytes.fromhex(m.group(0)))
    m = cur.regex(_TYPE_RE, "a tensor type like f32[1,3]")
    dt, dims = m.group(1), m.group(2)
    if not dtypes.is_dtype(dt):
        raise cur.error(f"unknown element type {dt!r}")
    shape: tuple[int | str, ...] | None
    if dims == "*":
        shape = None
    else:
        parts = [p.strip() for p in dims.split(",")] if dims.strip() else []
        shape = tuple(int(p) if p.lstrip("-").isdigit() else (p[1:] or "?") for p in parts)
        if any(isinstance(d, int) and d < 0 for d in shape):
            raise cur.error(f"negative dim in {m.group(0)!r}")
    quant = None
    if m.group(3):
        axis = int(m.group(5)) if m.group(5) else None
        quant = QuantParams(tuple(json.loads(m.group(3))), tuple(json.loads(m.group(4))), axis)
    return TensorType(dt, shape, quant)


def _dense(values: Any, t: TensorType) -> np.ndarray:
    npdt = dtypes.to_numpy(t.dtype)
    if t.dtype in ("c64", "c128"):
        arr = np.array([complex(a, b) for a, b in values], dtype=npdt)
    elif t.dtype == "str":
        arr = np.array(values, dtype=object)
    else:
        arr = np.array(values, dtype=np.float64 if t.dtype in dtypes.FLOAT_DTYPES else None).astype(npdt)
    return arr.reshape(t.static_shape)


def _parse_attr(cur: _Cursor) -> Any:
    cur.ws()
    if cur.eat("dense<"):
        t = _parse_type(cur)
        cur.expect(">")
        assert isinstance(t, TensorType)
        return _dense(cur.json(), t)
    if cur.eat("subgraph<"):
        captured = cur.json()
        cur.expect(">")
        m = cur.regex(re.compile(r"[0-9a-f]*"), "hex payload")
        return SubGraph(bytes.fromhex(m.group(0)), tuple(captured))
    if cur.eat("type<"):
        t = _parse_type(cur)
        cur.expect(">")
        return t
    if cur.eat("tensors("):
        items = []
        while not cur.eat(")"):
            items.append(_parse_attr(cur))
            cur.eat(",")
        return tuple(items)
    start = cur.pos
    val = cur.json()
    if isinstance(val, list):
        raw = cur.text[start : cur.pos]
        if any(isinstance(x, float) for x in val) or (re.search(r"[.eE]|NaN|Infinity", raw) and not any(
            isinstance(x, str) for x in val
        )):
            return tuple(float(x) for x in val)
        return tuple(val)
    return val


def _fill(name: str, t: TensorType) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    shape = t.static_shape
    if t.dtype in dtypes.FLOAT_DTYPES:
        return rng.standard_normal(shape).astype(dtypes.to_numpy(t.dtype))
    if t.dtype == "bool":
        return np.zeros(shape, bool)
    return np.zeros(shape, dtypes.to_numpy(t.dtype))


def parse(text: str, constants: dict[str, np.ndarray] | None = None) -> Graph:
    """Read the text form back into a Graph.

    Constants printed by key are taken from ``constants``; a key that is absent
    is filled from a generator seeded by the key (for tests that only need
    shapes). Raises :class:`nasc.Error` (ParseError) on malformed text.
    """
    constants = constants or {}
    graph: Graph | None = None
    env: dict[str, Value] = {}
    outputs_seen = False

    def lookup(cur: _Cursor) -> Value | None:
        if cur.eat("_"):
            return None
        name = cur.name()
        if name not in env:
            raise cur.error(f"value %{name} is used before it is defined")
        return env[name]

    def define(cur: _Cursor, name: str, v: Value) -> None:
        if name in env:
            raise cur.error(f"value %{name} is defined twice")
        env[name] = v

    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        cur = _Cursor(line, lineno)
        if graph is None:
            cur.expect("graph")
            name = cur.json()
            cur.expect("opsets")
            graph = Graph(name=name, opsets={str(k): int(v) for k, v in cur.json().items()})
            continue
        if outputs_seen:
            raise cur.error("nothing may follow the output line")
        if cur.eat("quant-policy "):
            layer = cur.json()
            graph.meta.setdefault(POLICY_KEY, {})[layer] = cur.json()
        elif cur.eat("input "):
            name = cur.name()
            cur.expect(":")
            define(cur, name, graph.add_input(name, _parse_type(cur)))
        elif cur.eat("const "):
            name = cur.name()
            cur.expect(":")
            t = _parse_type(cur)
            cur.expect("=")
            if not isinstance(t, TensorType) or not t.is_static:
                raise cur.error("a constant needs a static tensor type")
            if cur.eat("dense"):
                arr = _dense(cur.json(), t)
            else:
                key = cur.json()
                arr = constants[key] if key in constants else _fill(key, t)
                if tuple(arr.shape) != t.static_shape:
                    raise cur.error(f"constant {key!r} has shape {tuple(arr.shape)}, the text says {t}")
            lazy = LazyArray(t.static_shape, t.dtype, lambda a=arr: a)  # type: ignore[misc]
            define(cur, name, graph.add_constant(lazy, name, type=t))
        elif cur.eat("output"):
            outs = []
            while not cur.at_end():
                v = lookup(cur)
                if v is None:
                    raise cur.error("an output cannot be omitted")
                outs.append(v)
                cur.eat(",")
            graph.outputs = outs
            outputs_seen = True
        else:
            _parse_node(cur, graph, lookup, define)
        if not cur.at_end():
            raise cur.error("unexpected text at end of line")
    if graph is None:
        raise ParseError("empty text: expected a 'graph' line")
    return graph


def _parse_node(cur: _Cursor, graph: Graph, lookup: Any, define: Any) -> None:
    outs: list[tuple[str, Type]] = []
    if not cur.eat("()"):
        while True:
            name = cur.name()
            cur.expect(":")
            outs.append((name, _parse_type(cur)))
            if not cur.eat(","):
                break
    cur.expect("=")
    qual = cur.regex(re.compile(r"[A-Za-z_][A-Za-z0-9_.]*"), "an op name").group(0)
    domain, _, op = qual.rpartition(".")
    cur.expect("(")
    args: list[Value | None] = []
    while not cur.eat(")"):
        args.append(lookup(cur))
        cur.eat(",")
    attrs: dict[str, Any] = {}
    if cur.eat("{"):
        while not cur.eat("}"):
            key = cur.regex(re.compile(r"[A-Za-z_][A-Za-z0-9_]*"), "an attribute name").group(0)
            cur.expect("=")
            attrs[key] = _parse_attr(cur)
            cur.eat(",")
    captures: list[Value] = []
    if cur.eat("captures("):
        while not cur.eat(")"):
            v = lookup(cur)
            if v is None:
                raise cur.error("a capture cannot be omitted")
            captures.append(v)
            cur.eat(",")
    scope = cur.json() if cur.eat("@") else ""
    name = cur.json() if cur.eat("#") else ""
    node = graph.make_node(
        op, args, [t for _, t in outs], attrs, domain=domain, scope=scope, name=name,
        out_names=[n for n, _ in outs], captures=captures,
    )
    for (n, _), v in zip(outs, node.outputs):
        define(cur, n, v)


# ---- structural comparison and cloning --------------------------------------


def _attrs_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
                return False
            if x.shape != y.shape or x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                return False
        elif isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y):
            continue
        elif x != y:
            return False
    return True


def structural_diff(a: Graph, b: Graph) -> str | None:
    """None when the graphs are structurally equal, else the first difference found.

    Compared: opsets, input/output types, constant types and contents (when
    loaded), node ops, attributes, scopes, names, result types, and which value
    each operand reads. Value names are not compared (they are hints).
    """
    if a.opsets != b.opsets:
        return f"opsets differ: {a.opsets} vs {b.opsets}"
    pos_a: dict[int, str] = {}
    pos_b: dict[int, str] = {}
    for label, xs, ys in (("input", a.inputs, b.inputs), ("const", a.constants, b.constants)):
        if len(xs) != len(ys):
            return f"{label} count differs: {len(xs)} vs {len(ys)}"
        for i, (x, y) in enumerate(zip(xs, ys)):
            if x.type != y.type:
                return f"{label} {i} type differs: {x.type} vs {y.type}"
            if label == "const" and not np.array_equal(x.data, y.data, equal_nan=x.data.dtype.kind == "f"):
                return f"const {i} (%{x.name}) contents differ"
            pos_a[id(x)] = pos_b[id(y)] = f"{label}{i}"
    if len(a.nodes) != len(b.nodes):
        return f"node count differs: {len(a.nodes)} vs {len(b.nodes)}"
    for i, (x, y) in enumerate(zip(a.nodes, b.nodes)):
        where = f"node {i} ({x.qualified_op} {x.name!r})"
        if (x.op, x.domain, x.scope, x.name) != (y.op, y.domain, y.scope, y.name):
            return f"{where}: op/scope/name differ: {y.qualified_op} {y.scope!r} {y.name!r}"
        if not _attrs_equal(x.attrs, y.attrs):
            return f"{where}: attributes differ: {x.attrs} vs {y.attrs}"
        ins_a = [None if v is None else pos_a.get(id(v)) for v in (*x.inputs, *x.captures)]
        ins_b = [None if v is None else pos_b.get(id(v)) for v in (*y.inputs, *y.captures)]
        if ins_a != ins_b:
            return f"{where}: operands differ: {ins_a} vs {ins_b}"
        if [o.type for o in x.outputs] != [o.type for o in y.outputs]:
            return f"{where}: result types differ"
        for j, (ox, oy) in enumerate(zip(x.outputs, y.outputs)):
            pos_a[id(ox)] = pos_b[id(oy)] = f"n{i}.{j}"
    outs_a = [pos_a.get(id(v)) for v in a.outputs]
    outs_b = [pos_b.get(id(v)) for v in b.outputs]
    if outs_a != outs_b:
        return f"outputs differ: {outs_a} vs {outs_b}"
    return None


def clone_graph(graph: Graph) -> Graph:
    """A copy with new values and nodes; constant contents (LazyArray) are shared."""
    new = Graph(name=graph.name, opsets=dict(graph.opsets), meta=dict(graph.meta))
    m: dict[int, Value] = {}
    for v in graph.inputs:
        m[id(v)] = new.add_input(v.name, v.type)
    for v in graph.constants:
        assert v.const is not None
        m[id(v)] = new.add_constant(v.const, v.name, type=v.tensor_type)
    for n in graph.nodes:
        node = new.make_node(
            n.op, [None if v is None else m[id(v)] for v in n.inputs], [o.type for o in n.outputs], dict(n.attrs),
            domain=n.domain, scope=n.scope, name=n.name, out_names=[o.name for o in n.outputs],
            captures=[m[id(v)] for v in n.captures],
        )
        node.meta = dict(n.meta)
        for o, no in zip(n.outputs, node.outputs):
            m[id(o)] = no
    new.outputs = [m[id(v)] for v in graph.outputs]
    return new
