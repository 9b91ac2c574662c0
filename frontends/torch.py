"""PyTorch frontend: an nn.Module (through torch.export) or a saved ExportedProgram -> ir.Graph.

Steps: ``torch.export.export`` (non-strict by default), decomposition to the
core ATen op set, then one converter per ATen op (``frontends/torch_ops.py``)
turns each FX node into IR nodes with ONNX semantics. What survives: module
scopes from ``nn_module_stack``, constant names from the state-dict keys, and
parameter identity (a tensor shared by two modules is one constant value).
Every converted value is checked against the shape and dtype torch recorded for
it. Ops without a converter are listed together in one error, which suggests
``via="onnx"`` (torch.onnx's dynamo exporter, then the ONNX frontend).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from nasc.errors import ModelLoadError, UnsupportedModelError, UsageError
from nasc.frontends.torch_ops import CONVERTERS, Ctx, dtype_from_torch, target_name
from nasc.ir import verify
from nasc.ir.core import Graph, LazyArray, Value
from nasc.ir.types import TensorType

#: torch loggers that report, as ERROR lines with a traceback, failures that nasc turns into one error of its own
#: (fake-tensor propagation of a malformed program, torch.export's own attempts) or chatter at WARNING
_QUIET_LOGGERS = ("torch.export", "torch._export", "torch._subclasses.fake_tensor", "torch._subclasses",
                  "torch.fx.experimental.symbolic_shapes", "torch.fx.experimental.recording", "torch._dynamo",
                  "torch._functorch")
#: warnings torch raises about itself (not about the user's model) while nasc calls into it
_QUIET_WARNINGS = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)

_F = TypeVar("_F", bound=Callable[..., Any])


@contextlib.contextmanager
def torch_quiet() -> Iterator[None]:
    """Silence torch's log lines and its self-deprecation warnings while nasc calls into torch.

    torch logs a traceback (``failed while attempting to run meta``) for an op that
    then raises; nasc reports that exception as one error line, so the log adds only
    noise before it. Other warnings, and other loggers, are left as they are.
    """
    saved = []
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            for category, message in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _quiet(fn: _F) -> _F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch_quiet():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@_quiet
def from_torch(
    module: torch.nn.Module,
    example_inputs: Sequence[Any] | Mapping[str, Any],
    dynamic_shapes: Any = None,
    *,
    via: str = "export",
    strict: bool = False,
    output_names: Sequence[str] | None = None,
) -> Graph:
    """Import an ``nn.Module`` as an IR graph, specialised to the example inputs' shapes.

    ``example_inputs``: a tuple of positional inputs or a dict of keyword inputs.
    ``dynamic_shapes`` is passed to ``torch.export.export``; the IR is still
    static, at the example shapes. ``via="onnx"`` goes through
    ``torch.onnx.export(dynamo=True)`` and the ONNX frontend instead, which
    covers any op torch.onnx can export.
    """
    args, kwargs = _split_inputs(example_inputs)
    module = module.eval()
    if via == "onnx":
        return _via_onnx(module, args, kwargs, dynamic_shapes, output_names)
    if via != "export":
        raise UsageError(f"via={via!r}: expected 'export' (torch.export) or 'onnx' (torch.onnx, then the ONNX frontend)")
    try:
        ep = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=strict)
    except Exception as e:  # torch.export's own errors are many types; report them as one
        raise UnsupportedModelError(
            f"torch.export.export failed on {type(module).__name__}: {_first_line(e)}. "
            "Fix the model for torch.export, or try via='onnx'"
        ) from e
    return from_exported_program(ep, output_names=output_names, name=type(module).__name__)


def read_pt2(path: str | os.PathLike[str]) -> Any:
    """The ExportedProgram in a ``torch.export.save`` file, read without running code from it.

    Nothing but tensors and plain containers is unpickled: members that would
    need more are refused by name (``frontends/pt2_archive.py`` says how, and
    why that holds for members it does not know).
    """
    return read_pt2_with_extras(path)[0]


@_quiet
def read_pt2_with_extras(path: str | os.PathLike[str]) -> tuple[Any, dict[str, str]]:
    """As :func:`read_pt2`, with the archive's ``extra/`` text members (name -> text)."""
    import zipfile

    from nasc.frontends import pt2_archive

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"'{p}': no such file")
    if not zipfile.is_zipfile(p):
        raise ModelLoadError(f"'{p}' is not a readable torch.export program (.pt2): not a zip archive")
    try:  # torch logs a traceback for files it then rejects anyway: @_quiet keeps it off stderr
        return pt2_archive.load_with_extras(p)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"'{p}' is not a readable torch.export program (.pt2): {_first_line(e)}") from None


@_quiet
def load_pt2(path: str | os.PathLike[str], input_shapes: Mapping[str, Sequence[int]] | None = None, *,
             max_tensor_bytes: int | None = None) -> Graph:
    """Import a ``.pt2`` file; dynamic dims take their example values unless ``input_shapes`` sets them.

    ``max_tensor_bytes`` bounds each input that ``input_shapes`` sets, as in the ONNX
    frontend (default $NASC_MAX_TENSOR_BYTES, else 16 GiB). The program is specialised
    on fake tensors, so no input is allocated.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from nasc.frontends import check_input_shape
    from nasc.frontends.onnx_check import check_tensor_size
    from nasc.frontends.onnx_check import max_tensor_bytes as tensor_limit

    limit = tensor_limit(max_tensor_bytes)
    for name, shape in (input_shapes or {}).items():
        check_input_shape(name, shape)
    ep, extras = read_pt2_with_extras(path)
    from nasc.frontends.nasc_pt2 import graph_from_pt2, has_nasc_graph

    if has_nasc_graph(extras):  # written by nasc's torch target: its own graph, not the ATen ops re-imported
        graph = graph_from_pt2(ep, extras, str(path))
        static = {v.name: [int(d) for d in v.shape] for v in graph.inputs}
        if any(static.get(n) != [int(d) for d in s] for n, s in (input_shapes or {}).items()):
            raise UsageError(f"'{path}' is a nasc build whose inputs have the static shapes {static}; "
                             "input_shapes cannot change them")
        return graph
    if input_shapes:
        names = list(ep.graph_signature.user_inputs)
        unknown = set(input_shapes) - set(names)
        if unknown:
            raise UsageError(f"'{path}': input_shapes names {sorted(unknown)}, which are not inputs; inputs: {names}")
        feed = {}
        mode = FakeTensorMode()
        for n, s in input_shapes.items():
            dtype = _input_dtype(ep, n)
            shape = tuple(int(d) for d in s)
            check_tensor_size(f"'{path}'", f"input '{n}' as given ({n}={'x'.join(map(str, shape))})",
                              TensorType(dtype_from_torch(dtype), shape), limit)
            with mode:
                feed[n] = torch.empty(shape, dtype=dtype)
        args, kwargs = pt2_inputs(ep, feed)
        try:
            ep = torch.export.export(ep.module(), args, kwargs, strict=False)
        except Exception as e:
            raise UnsupportedModelError(f"'{path}' cannot be specialised to {dict(input_shapes)}: {_first_line(e)}") from e
    return from_exported_program(ep)



def _input_dtype(ep: Any, name: str) -> torch.dtype:
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name == name:
            return node.meta["val"].dtype
    raise UsageError(f"no input named {name!r}")


def pt2_inputs(ep: Any, feed: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) for ``ep.module()``: the example inputs, with the named user inputs replaced from ``feed``."""
    from torch.utils._pytree import tree_flatten, tree_unflatten

    if ep.example_inputs is None:
        raise UnsupportedModelError("the .pt2 file has no example inputs; save it with a recent torch.export")
    leaves, spec = tree_flatten(ep.example_inputs)
    names = list(ep.graph_signature.user_inputs)
    if len(leaves) != len(names):
        raise UnsupportedModelError(f"cannot match the program's {len(names)} inputs to its example inputs")
    new = [torch.as_tensor(feed[n]) if n in feed else leaf for n, leaf in zip(names, leaves)]
    args, kwargs = tree_unflatten(new, spec)
    return tuple(args), dict(kwargs)


@_quiet
def pt2_reference(path: str | os.PathLike[str]) -> Any:
    """A function feed -> list of numpy outputs that runs the original program in torch (for fidelity)."""
    from torch.utils._pytree import tree_flatten

    ep = read_pt2(path)
    mod = ep.module()

    def run(feed: Mapping[str, Any]) -> list[np.ndarray]:
        args, kwargs = pt2_inputs(ep, feed)
        with torch.no_grad(), torch_quiet():
            out = mod(*args, **kwargs)
        return [t.detach().numpy() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]

    return run


def _first_line(e: BaseException, most: int = 300) -> str:
    """The first line of torch's message, cut at ``most`` characters (some print whole nodes or programs)."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= most else line[:most] + " ..."


def _split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    return tuple(example_inputs), {}


def _via_onnx(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], dynamic_shapes: Any,
              output_names: Sequence[str] | None) -> Graph:
    import tempfile

    from nasc.frontends.onnx import load_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # torch.onnx prints its progress
                prog = torch.onnx.export(module, args, kwargs=kwargs or None, dynamo=True, verbose=False,
                                         dynamic_shapes=dynamic_shapes,
                                         output_names=list(output_names) if output_names else None)
            assert prog is not None
            prog.save(str(path), external_data=False)
        except Exception as e:
            raise UnsupportedModelError(f"torch.onnx.export failed on {type(module).__name__}: {_first_line(e)}") from e
        names = _input_names(module, args, kwargs)
        tensors = [*args, *kwargs.values()]
        shapes = {n: tuple(t.shape) for n, t in zip(names, tensors) if isinstance(t, torch.Tensor)}
        import onnx

        proto = onnx.load(str(path))
        present = {i.name for i in proto.graph.input}
        return load_onnx(proto, {k: v for k, v in shapes.items() if k in present})


def _input_names(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    import inspect

    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [p.name for p in params[: len(args)]] + list(kwargs)


# ---- ExportedProgram -> Graph -------------------------------------------------------

_INDEX = re.compile(r"\[(\d+)\]")
_KEY = re.compile(r"\[['\"]([^'\"]+)['\"]\]")


def module_path(stack: Mapping[str, Any] | None) -> str:
    """The innermost module path of an ``nn_module_stack`` entry, as a dotted state-dict style path."""
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    path = re.sub(r"^L\['self'\]\.?|^L__self___?", "", path)
    path = _KEY.sub(r".\1", _INDEX.sub(r".\1", path))
    return path.strip(".")


#: ops the core-ATen decomposition would split but that have one IR op of their own
KEEP_WHOLE = ("hardswish", "hardsigmoid", "_prelu_kernel")


def _decompositions() -> Any:
    table = torch.export.default_decompositions()
    for name in KEEP_WHOLE:
        table.pop(getattr(torch.ops.aten, name).default, None)
    return table


@_quiet
def from_exported_program(ep: Any, output_names: Sequence[str] | None = None, name: str = "main") -> Graph:
    """Convert a torch.export ExportedProgram (decomposed to core ATen here) into a verified IR graph."""
    try:
        ep = ep.run_decompositions(_decompositions())
    except Exception as e:
        raise UnsupportedModelError(f"decomposing to core ATen failed: {_first_line(e)}") from e
    fx = ep.graph
    _check_coverage(fx)

    graph = Graph(name=name, opsets={"": 21})
    sig = ep.graph_signature
    named: dict[str, str] = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                             **sig.inputs_to_lifted_tensor_constants}
    by_tensor: dict[tuple[int, tuple[int, ...], tuple[int, ...], int], Value] = {}
    env: dict[str, Any] = {}
    for node in fx.nodes:
        if node.op == "placeholder":
            if node.name in named:
                key = named[node.name]
                tensor = ep.state_dict[key] if key in ep.state_dict else ep.constants[key]
                env[node.name] = _constant(graph, tensor, key, by_tensor)
            else:
                val = node.meta.get("val")
                if isinstance(val, torch.Tensor):
                    shape = tuple(_concrete(d) for d in val.shape)
                    env[node.name] = graph.add_input(node.name, TensorType(dtype_from_torch(val.dtype), shape))
                else:  # a Python scalar input: specialised to its example value
                    env[node.name] = val
        elif node.op == "call_function":
            _convert(graph, node, env)
        elif node.op == "get_attr":
            tensor = getattr(ep.graph_module, str(node.target))
            env[node.name] = _constant(graph, tensor, str(node.target), by_tensor)
        elif node.op == "output":
            outs = list(_flatten(node.args[0]))
            values = [env[o.name] if hasattr(o, "name") else o for o in outs]
            graph.outputs = [v for v in values if isinstance(v, Value)]
    _name_outputs(graph, output_names)
    graph.remove_dead()
    verify(graph)
    return graph


def _name_outputs(graph: Graph, names: Sequence[str] | None) -> None:
    if names is not None and len(names) != len(graph.outputs):
        raise UsageError(f"output_names has {len(names)} names for {len(graph.outputs)} outputs")
    default = ["output"] if len(graph.outputs) == 1 else [f"output_{i}" for i in range(len(graph.outputs))]
    seen: set[int] = set()
    for v, name in zip(graph.outputs, names or default):
        if v.producer is None or id(v) in seen:  # an input, constant or repeated value: keep it, export adds Identity
            continue
        seen.add(id(v))
        v.name = name


def _flatten(x: Any) -> Any:
    if isinstance(x, list | tuple):
        for item in x:
            yield from _flatten(item)
    elif x is not None:
        yield x


def _concrete(d: Any) -> int:
    """An int dim; symbolic dims (dynamic_shapes) are specialised to their example value."""
    if isinstance(d, int):
        return d
    hint = getattr(getattr(d, "node", None), "hint", None)
    if hint is None:
        raise UnsupportedModelError(f"dimension {d} has no example value; give concrete example inputs")
    return int(hint)


def _constant(graph: Graph, tensor: torch.Tensor, key: str, by_tensor: dict[Any, Value]) -> Value:
    """One constant per distinct tensor: parameters shared by several modules stay one value."""
    t = tensor.detach()
    ident = (t.untyped_storage().data_ptr(), tuple(t.shape), tuple(t.stride()), t.storage_offset()) if t.numel() else None
    if ident is not None and ident in by_tensor:
        return by_tensor[ident]
    dtype = dtype_from_torch(t.dtype)
    v = graph.add_constant(LazyArray(tuple(t.shape), dtype, lambda t=t: _to_numpy(t)), key)
    if ident is not None:
        by_tensor[ident] = v
    return v


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy().copy()


def _check_coverage(fx: Any) -> None:
    missing: dict[str, list[str]] = {}
    for node in fx.nodes:
        if node.op == "call_function":
            name = target_name(node.target)
            if name not in CONVERTERS:
                missing.setdefault(name, []).append(module_path(node.meta.get("nn_module_stack")) or "<root>")
    if missing:
        parts = [f"{op} (in {', '.join(sorted(set(paths))[:3])}{', ...' if len(set(paths)) > 3 else ''})"
                 for op, paths in sorted(missing.items())]
        raise UnsupportedModelError(
            f"{len(missing)} ATen op(s) have no nasc converter: {'; '.join(parts)}. "
            "Use via='onnx' (nasc.from_torch(..., via='onnx')) to go through torch.onnx and the ONNX frontend"
        )


def _convert(graph: Graph, node: Any, env: dict[str, Any]) -> None:
    val = node.meta.get("val")
    if isinstance(val, torch.SymInt | torch.SymFloat | torch.SymBool | int | float | bool):
        env[node.name] = _concrete(val) if isinstance(val, torch.SymInt) else val
        return
    conv = CONVERTERS[target_name(node.target)]
    ctx = Ctx(graph, node, module_path(node.meta.get("nn_module_stack")))
    args = [_lookup(a, env) for a in node.args]
    kwargs = {k: _lookup(a, env) for k, a in node.kwargs.items()}
    try:
        result = conv(ctx, *args, **kwargs)
    except (UnsupportedModelError, UsageError):
        raise
    except Exception as e:  # a converter bug: say where, keep the cause
        raise RuntimeError(f"converting {target_name(node.target)} at node '{node.name}' "
                           f"(scope '{ctx.scope}') failed: {type(e).__name__}: {e}") from e
    env[node.name] = result
    ctx.check(result)


def _lookup(a: Any, env: dict[str, Any]) -> Any:
    if isinstance(a, torch.fx.Node):
        return env[a.name]
    if isinstance(a, list | tuple):
        return type(a)(_lookup(x, env) for x in a)
    return a
