"""Tampered torch.export archives (.pt2): member edits inside a valid zip, and pickle payloads.

A payload, if anything unpickles it, creates ``MARKER`` in the directory the
command runs in; the oracle fails the case if that file appears. The payloads
use different gadgets (exec, os.system, pathlib through getattr, torch.save's
zip format) so that a block list of one callable does not pass.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

from fuzz_core import IDX, MARKER, Ctx, at, op


class _Reduce:
    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


def _torch_zip(payload: bytes) -> bytes:
    """A file in torch.save's zip layout whose data.pkl is ``payload``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def payload(kind: str) -> bytes:
    """Pickle bytes that create MARKER when unpickled."""
    if kind == "exec":
        return pickle.dumps(_Reduce(exec, (f"open({MARKER!r}, 'w').close()",)), protocol=2)
    if kind == "os_system":
        return pickle.dumps(_Reduce(os.system, (f"touch {MARKER}",)), protocol=2)
    if kind == "eval":
        return pickle.dumps(_Reduce(eval, (f"__import__('pathlib').Path({MARKER!r}).touch()",)), protocol=4)
    if kind == "path_touch":  # no exec/eval/system: pathlib.PosixPath(MARKER).touch() through builtins.getattr
        return (b"cbuiltins\ngetattr\n(cpathlib\nPosixPath\n(S'" + MARKER.encode() + b"'\ntRS'touch'\ntR)R.")
    if kind == "torch_zip":
        return _torch_zip(payload("exec"))
    raise ValueError(kind)


PAYLOADS = ["exec", "os_system", "eval", "path_touch", "torch_zip"]


@dataclass
class Archive:
    """A zip's members in order; names are kept relative to the archive's root folder (``model/``)."""

    root: str
    members: list[tuple[str, bytes]] = field(default_factory=list)
    compress: set[str] = field(default_factory=set)

    @staticmethod
    def read(data: bytes) -> Archive:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
            root = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
            return Archive(root, [(n[len(root):] if n.startswith(root) else n, z.read(n)) for n in names])

    def write(self) -> bytes:
        buf = io.BytesIO()
        with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            warnings.simplefilter("ignore")  # duplicate member names are one of the mutations
            for name, data in self.members:
                method = zipfile.ZIP_DEFLATED if name in self.compress else zipfile.ZIP_STORED
                z.writestr(zipfile.ZipInfo(self.root + name, (1980, 1, 1, 0, 0, 0)), data, compress_type=method)
        return buf.getvalue()

    def get(self, name: str) -> bytes | None:
        return next((d for n, d in self.members if n == name), None)

    def set(self, name: str, data: bytes) -> None:
        for i, (n, _) in enumerate(self.members):
            if n == name:
                self.members[i] = (name, data)
                return
        self.members.append((name, data))

    def json(self, name: str) -> Any:
        """The member parsed as JSON; None when it is missing or (after another op) not JSON."""
        data = self.get(name)
        try:
            return None if data is None else json.loads(data)
        except ValueError:
            return None

    def set_json(self, name: str, value: Any) -> None:
        self.set(name, json.dumps(value).encode())


MODEL_JSON = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"


# ---- member edits ------------------------------------------------------------------------


@op("zip", member=IDX)
def zip_drop_member(a: Archive, ctx: Ctx, member: int) -> None:
    if a.members:
        del a.members[member % len(a.members)]


@op("zip", member=IDX, offset=IDX, value=("int", 0, 255))
def zip_member_bytes(a: Archive, ctx: Ctx, member: int, offset: int, value: int) -> None:
    """Corrupt one byte inside a member; the zip itself stays valid (CRCs are recomputed)."""
    m = at(a.members, member)
    if m is None or not m[1]:
        return
    data = bytearray(m[1])
    data[offset % len(data)] = value
    a.set(m[0], bytes(data))


@op("zip", member=IDX, keep=("int", 0, 999))
def zip_truncate_member(a: Archive, ctx: Ctx, member: int, keep: int) -> None:
    m = at(a.members, member)
    if m is not None:
        a.set(m[0], m[1][: len(m[1]) * keep // 1000])


@op("zip", member=IDX, how=["same_content", "other_content", "empty"])
def zip_duplicate_member(a: Archive, ctx: Ctx, member: int, how: str) -> None:
    m = at(a.members, member)
    if m is not None:
        a.members.append((m[0], {"same_content": m[1], "other_content": b"\x00garbage", "empty": b""}[how]))


@op("zip", name=["../../escape.txt", "/abs/path", "x" * 250, "data/weights/weight_99", "models/extra.json",
                 "data/constants/custom_obj_0", "extra/module_info.json"])
def zip_extra_member(a: Archive, ctx: Ctx, name: str) -> None:
    a.members.append((name, b'{"fuzz": 1}'))


@op("zip", member=["archive_format", "archive_version", "byteorder", ".data/version"],
    value=["", "pt3", "999", "-1", "big", "\xff\xfe", "0\n0"])
def zip_text_member(a: Archive, ctx: Ctx, member: str, value: str) -> None:
    a.set(member, value.encode("utf-8", "surrogateescape"))


_JSON_VALUES: list[Any] = [None, -1, 1 << 62, -(1 << 62), "", "fuzz", [], {}, 1e308, True, "../../../etc/passwd", 0,
                           "DELETE", [0] * 64]


def _json_slots(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value inside a JSON tree (containers too), in document order."""
    out = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _json_slots(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _json_slots(v, (*path, i))
    return out


@op("zip", member=[MODEL_JSON, MODEL_JSON, WEIGHTS_CONFIG, CONSTANTS_CONFIG], slot=IDX, value=("int", 0, 13))
def zip_json_edit(a: Archive, ctx: Ctx, member: str, slot: int, value: int) -> None:
    """Replace (or delete) one value anywhere in the program's JSON: the deserializer's robustness."""
    doc = a.json(member)
    if doc is None:
        return
    slots = _json_slots(doc)
    path = at(slots, slot)
    if path is None:
        return
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    new = _JSON_VALUES[value]
    if new == "DELETE":
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    a.set_json(member, doc)


@op("zip", weight=IDX, field=["sizes", "strides", "storage_offset", "dtype", "device", "layout", "path_name"],
    value=["huge", "negative", "zero", "bogus"])
def zip_weight_meta(a: Archive, ctx: Ctx, weight: int, field: str, value: str) -> None:
    """Targeted edits of a weight's tensor metadata: out-of-bounds views, unknown dtypes, paths."""
    cfg = a.json(WEIGHTS_CONFIG)
    if not cfg or not cfg.get("config"):
        return
    entry = at(list(cfg["config"].values()), weight)
    meta = entry.get("tensor_meta") or {}
    num = {"huge": 1 << 40, "negative": -3, "zero": 0, "bogus": 99}[value]
    if field in ("sizes", "strides"):
        meta[field] = [{"as_int": num} for _ in meta.get(field, [0])]
    elif field == "storage_offset":
        meta[field] = {"as_int": num}
    elif field == "dtype" or field == "layout":
        meta[field] = num
    elif field == "device":
        meta[field] = {"type": {"huge": "cuda", "negative": "meta", "zero": "", "bogus": "fuzz"}[value], "index": 0}
    elif field == "path_name":
        entry["path_name"] = {"huge": "../../../etc/passwd", "negative": "weight_99", "zero": "", "bogus": "/etc/hostname"}[value]
    a.set_json(WEIGHTS_CONFIG, cfg)


@op("zip", member=IDX, megabytes=[32, 256])
def zip_bomb(a: Archive, ctx: Ctx, member: int, megabytes: int) -> None:
    """A member that inflates to hundreds of MB from a few hundred KB."""
    m = at([x for x in a.members if x[0].startswith("data/") and not x[0].endswith(".json")], member)
    if m is not None:
        a.set(m[0], b"\0" * (megabytes << 20))
        a.compress.add(m[0])


# ---- pickle payloads -------------------------------------------------------------------------


@op("zip", gadget=PAYLOADS)
def pickle_sample_inputs(a: Archive, ctx: Ctx, gadget: str) -> None:
    """torch reads sample inputs with weights_only=True, then falls back to a full unpickle."""
    a.set(SAMPLE_INPUTS, payload(gadget))


@op("zip", weight=IDX, gadget=PAYLOADS)
def pickle_weight(a: Archive, ctx: Ctx, weight: int, gadget: str) -> None:
    """A weight marked ``use_pickle``: torch.load(weights_only=False) on its bytes."""
    cfg = a.json(WEIGHTS_CONFIG)
    if not cfg or not cfg.get("config"):
        return
    entry = at(list(cfg["config"].values()), weight)
    entry["use_pickle"] = True
    a.set(f"data/weights/{entry['path_name']}", payload(gadget))
    a.set_json(WEIGHTS_CONFIG, cfg)


@op("zip", kind=["tensor_", "opaque_obj_", "custom_obj_"], gadget=PAYLOADS)
def pickle_constant(a: Archive, ctx: Ctx, kind: str, gadget: str) -> None:
    """A constant whose file name prefix selects torch.load, pickle.loads or the TorchScript unpickler."""
    cfg = a.json(CONSTANTS_CONFIG) or {"config": {}}
    cfg.setdefault("config", {})["fuzz_const"] = {"path_name": f"{kind}0", "is_param": False, "use_pickle": True,
                                                  "tensor_meta": None}
    a.set(f"data/constants/{kind}0", payload(gadget))
    a.set_json(CONSTANTS_CONFIG, cfg)


@op("zip", which=["weights", "constants"], gadget=PAYLOADS)
def pickle_legacy(a: Archive, ctx: Ctx, which: str, gadget: str) -> None:
    """The legacy single-file layout (``data/weights/model.pt``), which torch hands to torch.load."""
    a.set(f"data/{which}/model.pt", payload(gadget))


@op("file", gadget=PAYLOADS)
def pickle_calibration(ctx: Ctx, gadget: str) -> None:
    """A calibration .npz whose arrays are pickled objects (np.load must refuse, not run them)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for inp in ctx.seed.get("inputs", [{"name": "x"}]):
            header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
            header = header + " " * (63 - len(header)) + "\n"
            raw = pickle.dumps(_Reduce(exec, (f"open({MARKER!r}, 'w').close()",)), protocol=2)
            if gadget == "path_touch":
                raw = payload("path_touch")
            z.writestr(f"{inp['name']}.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little")
                       + header.encode() + raw)
    ctx.files["calib_pickle.npz"] = buf.getvalue()
