"""Fidelity: how far a built model's outputs are from the original model's, both under ONNX Runtime."""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from nasc.errors import ModelLoadError
from nasc.ir import dtypes
from nasc.passes.lossy import random_inputs  # noqa: F401  (re-exported: api, bench and tests use it)
from nasc.passes.metrics import compare  # noqa: F401  (re-exported: api and tests use fidelity.compare)


def ort_session(model: onnx.ModelProto | str | bytes, *, exact: bool = False, log_level: int = 3) -> Any:
    """An ONNX Runtime CPU session. ``exact``: basic graph optimizations only, so that QDQ pairs keep their
    ONNX semantics (ORT's fused int8 kernels round and, on x86 without VNNI, saturate differently).
    ``log_level``: ONNX Runtime's own logging to stderr (3: errors, 4: fatal only)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = log_level
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def reference_session(model: onnx.ModelProto | str | bytes, *, exact: bool = False) -> Any:
    """An ONNX Runtime session on the user's own model, whose failures are nasc errors.

    ONNX Runtime refusing the model (at load) or failing on it (in ``run``) is about
    the model, not about nasc: both become a ModelLoadError naming the node (read
    from ONNX Runtime's message), its op and scope, and what to do. Sessions on
    graphs nasc built stay plain (:func:`ort_session`): a failure there is a bug.
    """
    try:
        sess = ort_session(model, exact=exact, log_level=4)  # its errors are reported as nasc errors instead
    except Exception as e:
        if not _is_ort_error(e):
            raise
        raise ModelLoadError(_ort_message(e, model, "cannot load the model")) from None
    return _ReferenceSession(sess, model)


class _ReferenceSession:
    """An InferenceSession whose ``run`` turns ONNX Runtime's errors into nasc errors (see reference_session)."""

    def __init__(self, sess: Any, model: onnx.ModelProto | str | bytes) -> None:
        self._sess = sess
        self._model = model

    def run(self, output_names: Any, feed: Mapping[str, np.ndarray], *args: Any, **kwargs: Any) -> Any:
        return run_watched(self._sess, self._model, output_names, feed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sess, name)


#: environment variable: the longest one ONNX Runtime run of the user's model may take, in seconds
RUN_TIMEOUT_ENV = "NASC_RUN_TIMEOUT_S"
DEFAULT_RUN_TIMEOUT_S = 300.0


def run_timeout_s() -> float:
    """$NASC_RUN_TIMEOUT_S, else 300 s (0 or less: no limit)."""
    import os

    from nasc.errors import UsageError

    text = os.environ.get(RUN_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_RUN_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"${RUN_TIMEOUT_ENV}={text!r}: expected a number of seconds, e.g. 300") from None
    if value != value:  # NaN
        raise UsageError(f"${RUN_TIMEOUT_ENV}={text!r}: expected a number of seconds, e.g. 300")
    return value


def run_watched(sess: Any, model: onnx.ModelProto | str | bytes, output_names: Any,
                feed: Mapping[str, np.ndarray], label: str | None = None) -> Any:
    """``sess.run`` on the user's model (or nasc's graph of it) under a watchdog, its failures as nasc errors.

    A run longer than $NASC_RUN_TIMEOUT_S (default 300 s) is stopped (ONNX Runtime's
    ``RunOptions.terminate``) and reported as a ModelLoadError; ONNX Runtime failing
    on the model at run time is a ModelLoadError naming the node. ``label``: how messages
    name the model (default: its path, else "the model").
    """
    import threading

    import onnxruntime as ort

    limit = run_timeout_s()
    opts = ort.RunOptions()
    opts.log_severity_level = 4  # its errors are reported as nasc errors instead
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        opts.terminate = True

    timer = threading.Timer(limit, stop) if limit > 0 and limit != float("inf") else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        return sess.run(output_names, feed, opts)
    except Exception as e:
        if not _is_ort_error(e):
            raise
        if fired.is_set():
            label = label or (f"'{model}'" if isinstance(model, str) else "the model")
            raise ModelLoadError(
                f"{label}: the model did not finish in {limit:g} s in ONNX Runtime on these inputs "
                f"(nasc runs it to check the build and to calibrate): a Loop with a huge trip count, or one whose condition never "
                f"turns false, is the likely cause. Fix the model, or raise the limit with ${RUN_TIMEOUT_ENV}."
            ) from None
        raise ModelLoadError(_ort_message(e, model, "failed running the model", label)
                             + " If the inputs were random (no --calib), give real ones with --calib.") from None
    finally:
        if timer is not None:
            timer.cancel()


def _is_ort_error(e: BaseException) -> bool:
    """ONNX Runtime's own exceptions (Fail, InvalidGraph, InvalidArgument, ...), all from its pybind module."""
    return type(e).__module__.startswith("onnxruntime.")


# where ONNX Runtime names a node: "Node (conv) Op (Conv)", "of node (relu)", "in node (conv)",
# "running Conv node. Name:'conv'", "node name: conv"
_ORT_NODE = [
    re.compile(r"[Nn]ode \(([^)]*)\) Op \((\w+)\)"),
    re.compile(r"running (\w+) node\. Name:'([^']*)'"),
    re.compile(r"(?:of|in|for) node \(([^)]*)\)"),
    re.compile(r"node name: ([^),]+)"),
]


def _ort_message(e: BaseException, model: onnx.ModelProto | str | bytes, what: str, label: str | None = None) -> str:
    """One line: which model, which node (op, scope), ONNX Runtime's own reason, what to do."""
    text = " ".join(str(e).split())
    text = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^Load model from .*? failed:\s*", "", text)
    kernel = re.search(r"onnxruntime::(\w+)(?:<[^>]*>)?::\1\(", text)  # a kernel's constructor: the op's name
    text = re.sub(r"\S*onnxruntime_src/\S+:\d+ ", "", text)  # source locations
    text = re.sub(r"onnxruntime::[\w:<>]+\([^)]*\)(?: \[with [^\]]*\])? ", "", text)  # C++ signatures
    name: str | None = None
    op = ""
    for i, pat in enumerate(_ORT_NODE):
        m = pat.search(text)
        if m is None:
            continue
        if i == 1:
            op, name = m.group(1), m.group(2)
        else:
            name = m.group(1).strip()
            op = m.group(2) if i == 0 else ""
        break
    node = None
    if name is not None:
        node = _find_node(model, name, op or None)
    elif kernel is not None:
        node = _find_node(model, None, kernel.group(1))
    if node is not None:
        from nasc.frontends.onnx import scope_of

        name, op, scope = node.name, node.op_type, scope_of(node)
        where = f" at node '{name or '?'}' ({op}" + (f", scope '{scope}'" if scope else "") + ")"
    elif name is not None:
        where = f" at node '{name or '?'}'" + (f" ({op})" if op else "")
    else:
        where = ""
    label = label or (f"'{model}'" if isinstance(model, str) else "the model")
    return (f"{label}: ONNX Runtime {what}{where}: {text[:600].rstrip('. ')}. nasc checks every build against "
            "ONNX Runtime on the original model: fix the model (or re-export it) so that ONNX Runtime runs it.")


def _find_node(model: onnx.ModelProto | str | bytes, name: str | None, op: str | None = None) -> onnx.NodeProto | None:
    """The node of that name (or the only node of ``op``) in the model or its subgraphs, if it can be read again."""
    try:
        if isinstance(model, onnx.ModelProto):
            proto = model
        elif isinstance(model, bytes | bytearray):
            proto = onnx.load_from_string(bytes(model))
        else:
            proto = onnx.load(model, load_external_data=False)
    except Exception:  # only for a nicer message: the error being reported is ONNX Runtime's
        return None
    from nasc.frontends.onnx_check import find_node

    return find_node(proto.graph, name, op)


def ort_latency_ms(model: onnx.ModelProto | str | bytes, feed: Mapping[str, np.ndarray], repeat: int = 50,
                   warmup: int = 5, min_seconds: float = 0.5) -> float:
    """Median ms of one ONNX Runtime run (all graph optimizations, one thread per core), warm-up excluded."""
    from nasc.runtime import median_ms

    return median_ms(ort_runner(model, feed), repeat, warmup, min_seconds)


def ort_runner(model: onnx.ModelProto | str | bytes, feed: Mapping[str, np.ndarray]) -> Any:
    """One ONNX Runtime run of ``feed`` (all graph optimizations, one thread per core), for timing loops."""
    import os

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = os.cpu_count() or 1
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    f = {k: v for k, v in feed.items() if k in names}
    return lambda: sess.run(None, f)


def run_ort(session: Any, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return [np.asarray(o) for o in session.run(None, {k: v for k, v in feed.items() if k in names})]


def nonfinite_warning(fid: Mapping[str, Any], what: str = "the outputs") -> str | None:
    """A report warning for NaN or infinite outputs (see :func:`compare`), else None."""
    n = int(fid.get("nonfinite", 0))
    if not n:
        return None
    m = int(fid.get("nonfinite_mismatch", 0))
    return (f"{n} element(s) of {what} are NaN or infinite on these inputs (the fidelity figures are over the "
            f"finite ones only)" + (f"; in {m} of them the build and the reference disagree" if m else
                                     "; the build and the reference agree on them")
            + ". If the inputs were random (no --calib), real ones may avoid it.")


def uninformative_warning(fid: Mapping[str, Any] | None) -> str | None:
    """A report warning when the fidelity figures certify nothing (see :func:`nasc.passes.metrics.uninformative`),
    else None."""
    why = (fid or {}).get("uninformative")
    if not why:
        return None
    return (f"the fidelity figures certify nothing: {why}, so any build that outputs the same scores as well. "
            "Give real inputs with --calib (an .npz of samples), on which the model's outputs vary")


def run_graph(graph: Any, feeds: Sequence[Mapping[str, np.ndarray]], values: Sequence[Any] | None = None
              ) -> list[list[np.ndarray]]:
    """Run an IR graph under ONNX Runtime: the graph's outputs, or the given values (read as extra outputs).

    This is the reference runtime passes use (through PassContext.runner) to read
    intermediate activations: the graph is exported with those values as outputs. It runs with basic
    graph optimizations only (``ort_session(exact=True)``): a quantized graph is evaluated by the ONNX
    semantics of its QDQ pairs, not by whatever int8 kernels ORT picks on this CPU.
    """
    from nasc.backends.onnx import to_onnx

    g = graph
    if values is not None:
        g = graph.clone()
        # the clone keeps values in order: map the requested ones by position
        pos = {id(v): i for i, v in enumerate(graph.values())}
        clone_vals = list(g.values())
        g.outputs = [clone_vals[pos[id(v)]] for v in values]
        for i, v in enumerate(g.outputs):
            if not v.name:
                v.name = f"probe_{i}"
        names = [v.name for v in g.outputs]
        if len(set(names)) != len(names):
            for i, v in enumerate(g.outputs):
                v.name = f"{v.name}__probe{i}"
    proto = to_onnx(g)
    sess = ort_session(proto, exact=True, log_level=4)  # a failure to load nasc's graph is a bug: it raises as is
    names = {i.name for i in sess.get_inputs()}
    # a failure at run time is the model's (a shape read from an input, an index out of range): a nasc error
    label = f"model '{graph.name}' (nasc's graph of it, run to measure activations)"
    return [[np.asarray(o) for o in run_watched(sess, proto, None, {k: v for k, v in f.items() if k in names}, label)]
            for f in feeds]


def npz_array(data: Any, key: str, path: Any) -> np.ndarray:
    """Array ``key`` of an open ``.npz`` (loaded with ``allow_pickle=False``); a ``UsageError`` if it cannot be read."""
    from nasc.errors import UsageError

    try:
        arr = data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # truncated, corrupt, or pickled
        raise UsageError(f"array '{key}' in '{path}' cannot be read: {e}; save numeric arrays with np.savez") from None
    if not isinstance(arr, np.ndarray):
        raise UsageError(f"member '{key}' of '{path}' is not a .npy array; save numeric arrays with np.savez")
    return arr


def load_calibration(path: str, graph: Any, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Calibration feeds from an .npz: one array per model input, first axis = samples.

    Each sample has the input's shape; for an input whose batch dim is 1 the
    samples may also leave it out (``[N, 1, 8, 8]`` for an input ``[1, 1, 8, 8]``).
    """
    from nasc.errors import UsageError

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"calibration file '{path}' is not a readable .npz: {e}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UsageError(f"calibration file '{path}' is one .npy array; save one array per model input with np.savez")
    names = [v.name for v in graph.inputs]
    missing = [n for n in names if n not in data.files]
    if missing:
        raise UsageError(f"calibration file '{path}' has no array for input(s) {missing}; it has {data.files}, "
                         f"the model's inputs are {names}")
    extra = [k for k in data.files if k not in names and k not in ("label", "labels")]
    if extra:
        raise UsageError(f"calibration file '{path}' has array(s) {extra} that are not model inputs; the model's "
                         f"inputs are {names} ('label' may hold one class label per sample)")
    per_input: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for v in graph.inputs:
        arr = npz_array(data, v.name, path)
        shape = v.tensor_type.static_shape
        if arr.shape[1:] == shape:
            samples = arr
        elif shape and shape[0] == 1 and arr.shape[1:] == shape[1:]:
            samples = arr[:, None]
        else:
            raise UsageError(f"calibration array '{v.name}' has shape {arr.shape}; expected [samples, "
                             f"{', '.join(map(str, shape))}] for input '{v.name}' {v.type}")
        want = dtypes.to_numpy(v.tensor_type.dtype)
        if samples.dtype != want:
            if samples.dtype.kind != np.dtype(want).kind:
                raise UsageError(f"calibration array '{v.name}' is {samples.dtype}, input '{v.name}' is {v.type}: "
                                 f"save it as {np.dtype(want).name} (e.g. arr.astype(np.{np.dtype(want).name}))")
            samples = samples.astype(want)
        if samples.dtype.kind == "f" and not np.isfinite(samples).all():
            bad = int(np.flatnonzero(~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1))[0])
            raise UsageError(f"calibration array '{v.name}' has NaN or inf values (first in sample {bad}): "
                             "calibration data must be finite; drop or fix those samples")
        per_input[v.name] = samples
        counts[v.name] = len(samples)
    if len(set(counts.values())) > 1:
        raise UsageError(f"calibration arrays in '{path}' have different sample counts ("
                         f"{', '.join(f'{k!r} has {c}' for k, c in counts.items())}): each input needs one entry per "
                         "sample")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise UsageError(f"calibration file '{path}' has no samples (its arrays' first axis is 0); give at least "
                         "one, or leave --calib out for seeded random inputs")
    if limit is not None:
        n = min(n, limit)
    return [{k: a[i] for k, a in per_input.items()} for i in range(n)]
