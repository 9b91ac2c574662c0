"""IR -> Relax -> fused TIR kernels, scheduled for memory and printed as plain C with a pointer ABI.

TVM 0.27 has no C runtime, AOT executor or unpacked calling convention any more
(../shared/TVM-NOTES.md, "Plain C kernels"). This module keeps TVM for what it is
good at (legalization, fusion, TIR lowering, C printing) and does the rest:

- every fused kernel is scheduled so that its intermediates stay in scalars or
  small buffers (spatial blocks inlined, each reduction computed under its
  elementwise epilogue), which keeps kernel workspaces out of the arena;
- each kernel gets a plain-pointer signature ``int32_t k(float* a, ...)``;
- the Relax ``main`` becomes a :class:`~nasc.backends.mcu.plan.Program`
  (kernel calls over named buffers, reshapes as aliases, constants as weights).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import ir, relax, s_tir, tirx

from nasc.backends.mcu.plan import Buffer, Program, Step
from nasc.backends.tvm.kernels import kernel_features

# the block helpers the CPU templates use: one place for how a fused kernel's blocks are read and inlined
from nasc.backends.tvm.schedules import _blocks, _get_sblock_realize, _inline_spatial, _is_reduction
from nasc.errors import UnsupportedModelError

KERNEL_PREFIX = "nasc_k_"


def _c_math(name: str) -> Any:
    def lower(call: Any) -> Any:
        dtype = str(call.ty)
        if dtype not in ("float32", "float64"):
            return call  # left unresolved: the C build reports it
        return tirx.call_pure_extern(dtype, name + ("f" if dtype == "float32" else ""), *call.args)

    return lower


# Math intrinsics TVM lowers only for LLVM: plain libm calls in C (fabs comes from Abs, integer Div, ReduceL1).
for _op, _fn in (("tirx.fabs", "fabs"), ("tirx.exp2", "exp2"), ("tirx.fma", "fma")):
    tirx.register_intrin_lowering(_op, "c", f=_c_math(_fn), level=99)


@dataclass
class Weight:
    name: str
    array: np.ndarray
    users: list[str] = field(default_factory=list)  # steps reading it


@dataclass
class Kernels:
    """The C source of all kernels and the call sequence that uses them."""

    source: str
    program: Program
    weights: dict[str, Weight]
    calls: dict[str, list[str]]  # step name -> argument buffers, in the kernel's parameter order
    dtypes: dict[str, str]  # buffer -> TVM dtype
    shapes: dict[str, list[int]]
    inputs: list[str]
    outputs: list[str]
    stack_bytes: dict[str, int]  # kernel -> bytes of local arrays (on the stack)
    # kernel -> its features for the cost model (backends/tvm/kernels.py), from the fused kernel before scheduling
    features: dict[str, dict[str, float]] = field(default_factory=dict)


def fuse(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Relax legalization and fusion, with reshapes left as Relax reshapes (aliases, not copies)."""
    seq = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(), relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(), relax.transform.RewriteDataflowReshape(),
        relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination(),
    ])
    with target:
        return seq(mod)


# ----------------------------------------------------------------------------------------------
# Scheduling for memory
# ----------------------------------------------------------------------------------------------


def _loop_for_consumer(sch: s_tir.Schedule, red: Any, consumer: Any) -> Any | None:
    """The innermost loop of ``consumer`` that indexes ``red``'s output, if computing ``red`` there
    recomputes nothing (every enclosing loop indexes that output too, or has extent 1)."""
    out_buf = sch.get(red).writes[0].source
    block = sch.get(consumer)
    used: set[Any] = set()
    for region in block.reads:
        if region.source.same_as(out_buf):
            for r in region.region:
                used.update(v for v in tirx.analysis.undefined_vars(r.min))
    iter_vars = [iv.var for iv in block.iter_vars]
    values = list(_get_sblock_realize(sch, consumer).iter_values)
    loops = sch.get_loops(consumer)
    loop_vars = [sch.get(lp).loop_var for lp in loops]
    used_loops: set[int] = set()
    for iv, val in zip(iter_vars, values):
        if any(iv.same_as(u) for u in used):
            for v in tirx.analysis.undefined_vars(val):
                for li, lv in enumerate(loop_vars):
                    if lv.same_as(v):
                        used_loops.add(li)
    if not used_loops:
        return None
    deepest = max(used_loops)
    for li in range(deepest):
        ext = sch.get(loops[li]).extent
        if li not in used_loops and not (isinstance(ext, tirx.IntImm) and int(ext) == 1):
            return None
    return loops[deepest]


def schedule_for_memory(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Inline spatial blocks and compute each reduction where its consumer needs it, so that a fused
    kernel keeps its intermediates in scalars or small buffers instead of whole tensors."""
    sch = s_tir.Schedule(func)
    _inline_spatial(sch)
    for block in reversed(_blocks(sch)):
        if not _is_reduction(sch, block):
            continue
        consumers = list(sch.get_consumers(block))
        if len(consumers) == 1:
            loop = _loop_for_consumer(sch, block, consumers[0])
            if loop is not None:
                try:
                    sch.compute_at(block, loop, preserve_unit_loops=True)
                except Exception:
                    pass
        loops = sch.get_loops(block)
        ivs = sch.get(block).iter_vars
        red_loops = [lp for lp in loops[len(loops) - len(ivs):]
                     if _drives_reduction(sch, block, lp)] if len(loops) >= len(ivs) else []
        if red_loops:
            try:
                sch.decompose_reduction(block, red_loops[0])
            except Exception:
                pass
    return sch.mod["main"]


def _drives_reduction(sch: s_tir.Schedule, block: Any, loop: Any) -> bool:
    lv = sch.get(loop).loop_var
    values = list(_get_sblock_realize(sch, block).iter_values)
    for iv, val in zip(sch.get(block).iter_vars, values):
        if iv.iter_type == tirx.IterVar.CommReduce and any(v.same_as(lv) for v in tirx.analysis.undefined_vars(val)):
            return True
    return False


# ----------------------------------------------------------------------------------------------
# Lowering to a plain-pointer C function
# ----------------------------------------------------------------------------------------------


def _lower_seq(target: tvm.target.Target) -> tvm.transform.Pass:
    return tvm.transform.Sequential([
        tirx.transform.BindTarget(target), s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(), s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(), s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer(), tirx.transform.NarrowDataType(32),
        s_tir.transform.LoopPartition(), tirx.transform.VectorizeLoop(False), tirx.transform.StorageRewrite(),
        tirx.transform.UnrollLoop(), tirx.transform.StmtSimplify(), tirx.transform.RemoveNoOp(),
        tirx.transform.CommonSubexprElim(),
    ])


def _unpacked(func: tirx.PrimFunc, symbol: str) -> tirx.PrimFunc:
    """Each buffer parameter becomes a plain data pointer with a DeclBuffer over it; the body sits in the
    device attributes that LowerTVMBuiltin reads when it turns large allocations into workspace calls."""
    ptrs = [tirx.Var(p.name, ir.PointerType(ir.PrimType(str(p.dtype)))) for p in func.params]
    decls = [tirx.DeclBuffer(p, data=q) for p, q in zip(func.params, ptrs)]
    body = tirx.AttrStmt(ir.StringImm("default"), "device_id", tirx.IntImm("int32", 0),
                         tirx.AttrStmt(ir.StringImm("default"), "device_type", tirx.IntImm("int32", 1), func.body))
    out = tirx.PrimFunc(ptrs, tirx.SeqStmt([*decls, body]), ret_type=ir.PrimType("int32"), attrs=func.attrs)
    return out.with_attr("global_symbol", symbol)


def lower_kernels(funcs: dict[str, tirx.PrimFunc], target: tvm.target.Target) -> str:
    """C source for ``funcs`` (name -> scheduled PrimFunc), each ``int32_t name(T* ...)`` returning 0."""
    mod = _lower_seq(target)(tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in funcs.items()}))
    mod = tvm.IRModule({n: _unpacked(mod[n], n) for n in funcs})
    mod = tirx.transform.LowerTVMBuiltin()(mod)
    # A plain `return 0` after the workspace frees that LowerTVMBuiltin placed (the shim defines the macro).
    ok = tirx.Evaluate(tirx.call_extern("int32", "NASC_KERNEL_OK"))
    mod = tvm.IRModule({n: mod[n].with_body(tirx.SeqStmt([mod[n].body, ok])) for n in funcs})
    mod = tirx.transform.LowerIntrin()(mod)
    src = str(tvm.get_global_func("target.build.c")(mod, target).inspect_source())
    return _strip_runtime(src)


_RUNTIME_INCLUDE = re.compile(r'#include "tvm/[^"]+"\n')


_OK_PROTOTYPE = re.compile(r'(#ifdef __cplusplus\nextern "C"\n#endif\n)?TVM_DLL int32_t NASC_KERNEL_OK\(\);\n')


# TVM's C printer spells float infinities and NaNs as the identifiers inff / inf / nanf / nan
_SPECIAL_FLOATS = re.compile(r"(?<![\w.])(inff|inf|nanf|nan)(?![\w.(])")
_C_SPECIAL = {"inff": "INFINITY", "inf": "((double)INFINITY)", "nanf": "NAN", "nan": "((double)NAN)"}


_SCALAR_ARRAY = re.compile(r"^(\s+(?:float|double|u?int(?:8|16|32|64)_t|bool) \w+)\[1\];", re.M)


def _strip_runtime(src: str) -> str:
    src = _OK_PROTOTYPE.sub("", _RUNTIME_INCLUDE.sub("", src))
    src = _SPECIAL_FLOATS.sub(lambda m: _C_SPECIAL[m.group(1)], src)
    # a one-element accumulator set and read under the same condition: gcc -Wall cannot always tell
    src = _SCALAR_ARRAY.sub(r"\1[1] = {0};", src)
    src = src.replace("void* __tvm_ffi__library_ctx = NULL;\n", "")
    return '#include "nasc_shim.h"\n' + src


_WORKSPACE = re.compile(r"TVMBackendAllocWorkspace\(\s*\d+,\s*[^,]+,\s*\(uint64_t\)(\d+)")
_FUNC = re.compile(r"^TVM_DLL int32_t (\w+)\(", re.M)
_STACK_ARRAY = re.compile(r"^\s+(float|double|int8_t|uint8_t|int16_t|int32_t|int64_t|bool)\s+\w+\[(\d+)\];", re.M)
_CSIZE = {"float": 4, "double": 8, "int8_t": 1, "uint8_t": 1, "int16_t": 2, "int32_t": 4, "int64_t": 8, "bool": 1}


def workspace_bytes(src: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per kernel: bytes requested from the workspace allocator (all live at once at worst, LIFO), and
    bytes of local arrays on the stack, read off the generated C."""
    from nasc.backends.mcu.plan import align

    ws: dict[str, int] = {}
    stack: dict[str, int] = {}
    starts = [(m.start(), m.group(1)) for m in _FUNC.finditer(src)]
    for k, (pos, name) in enumerate(starts):
        body = src[pos: starts[k + 1][0] if k + 1 < len(starts) else len(src)]
        ws[name] = sum(align(int(m.group(1))) for m in _WORKSPACE.finditer(body))
        stack[name] = sum(_CSIZE[m.group(1)] * int(m.group(2)) for m in _STACK_ARRAY.finditer(body))
    return ws, stack


# ----------------------------------------------------------------------------------------------
# The call sequence
# ----------------------------------------------------------------------------------------------


def _c_ident(text: str) -> str:
    return re.sub(r"\W", "_", text)


def build_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> Kernels:
    """Fuse, schedule and print the kernels of Relax module ``mod`` and read its call sequence."""
    fused = fuse(mod, target)
    main = fused["main"]
    buffers: dict[str, Buffer] = {}
    dtypes: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    weights: dict[str, Weight] = {}
    const_names: dict[Any, str] = {}
    by_content: dict[tuple[Any, ...], str] = {}  # (shape, dtype, sha1 of the bytes) -> weight
    steps: list[Step] = []
    calls: dict[str, list[str]] = {}
    names: dict[Any, str] = {}
    kernel_funcs: dict[str, tirx.PrimFunc] = {}
    features: dict[str, dict[str, float]] = {}
    inplace: dict[str, list[int]] = {}
    tuples: dict[Any, list[str]] = {}

    def add_buffer(name: str, ty: Any, kind: str, alias_of: str | None = None) -> None:
        shape = [int(d) for d in ty.shape]
        dtype = str(ty.dtype)
        buffers[name] = Buffer(name, int(np.prod(shape, dtype=np.int64)) * _itemsize(dtype), kind, alias_of)
        dtypes[name] = dtype
        shapes[name] = shape

    inputs = []
    for p in main.params:
        name = f"in{len(inputs)}"
        names[p] = name
        add_buffer(name, p.ty, "input")
        inputs.append(name)

    def operand(e: Any) -> str:
        if isinstance(e, ir.GenericConst):
            key = e
            for c, n in const_names.items():
                if c.same_as(e):
                    return n
            arr = e.value.numpy()
            # one array per content: Relax folds a per-use transform of a shared constant (a Gemm's transB,
            # for one) into a new constant at each use, so a tied weight comes back as equal copies
            data = np.ascontiguousarray(arr).tobytes()
            ckey = (arr.shape, str(arr.dtype), hashlib.sha1(data).hexdigest())
            same = by_content.get(ckey)
            if same is not None and np.ascontiguousarray(weights[same].array).tobytes() == data:
                const_names[key] = same
                return same
            name = f"w{len(weights)}"
            const_names[key] = name
            by_content[ckey] = name
            weights[name] = Weight(name, arr)
            buffers[name] = Buffer(name, arr.nbytes, "weight")
            dtypes[name] = str(arr.dtype)
            shapes[name] = list(arr.shape)
            return name
        if isinstance(e, relax.Var) and e in names:
            return names[e]
        raise UnsupportedModelError(f"the MCU backend cannot pass {type(e).__name__} {e} to a kernel")

    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            if isinstance(value, relax.Call) and value.op.same_as(ir.Op.get("relax.call_tir")):
                gv = value.args[0]
                kname = KERNEL_PREFIX + _c_ident(gv.name_hint)
                args = [operand(a) for a in value.args[1].fields]
                if kname not in kernel_funcs:
                    func = fused[gv]
                    features[kname] = kernel_features(gv.name_hint, func, "none",
                                                      {i for i, a in enumerate(args) if buffers[a].kind == "weight"})
                    kernel_funcs[kname] = schedule_for_memory(func)
                    inplace[kname] = inplace_params(kernel_funcs[kname])
                sname = f"s{len(steps)}"
                out_ty = var.ty
                outs: list[str] = []
                for ty in (out_ty.fields if isinstance(out_ty, relax.TupleType) else [out_ty]):
                    oname = f"t{len(buffers)}"
                    add_buffer(oname, ty, "arena")
                    outs.append(oname)
                if isinstance(out_ty, relax.TupleType):
                    tuples[var] = outs
                else:
                    names[var] = outs[0]
                steps.append(Step(sname, kname, list(args), outs, inplace=[args[i] for i in inplace[kname]],
                                  label=gv.name_hint))
                calls[sname] = args + outs
            elif isinstance(value, relax.Call) and value.op.same_as(ir.Op.get("relax.reshape")):
                src = operand(value.args[0])
                oname = f"t{len(buffers)}"
                add_buffer(oname, var.ty, buffers[src].kind if buffers[src].kind != "weight" else "weight", src)
                names[var] = oname
            elif isinstance(value, relax.Call) and value.op.same_as(ir.Op.get("relax.builtin.alloc_tensor")):
                oname = f"t{len(buffers)}"  # a zero-size result (lower.to_relax): a buffer no kernel writes
                add_buffer(oname, var.ty, "arena")
                names[var] = oname
            elif isinstance(value, relax.Var) and value in names:
                names[var] = names[value]
            elif isinstance(value, relax.Tuple):
                tuples[var] = [operand(f) for f in value.fields]
            elif isinstance(value, relax.TupleGetItem) and value.tuple_value in tuples:
                names[var] = tuples[value.tuple_value][value.index]
            else:
                raise UnsupportedModelError(f"the MCU backend cannot lower Relax binding {var.name} = {value}")
    result = body.body
    if isinstance(result, relax.Var) and result in tuples:
        outputs = list(tuples[result])
    else:
        outputs = [operand(f) for f in (result.fields if isinstance(result, relax.Tuple) else [result])]
    prog = Program(buffers, [])
    for o in outputs:  # a kernel writing a model output writes into the caller's buffer
        root = prog.root(o)
        if buffers[root].kind == "arena":
            buffers[root].kind = "output"
    src = lower_kernels(kernel_funcs, target)
    ws, stack = workspace_bytes(src)
    for s in steps:
        s.workspace = ws.get(s.kernel, 0)
    for w in weights.values():
        w.users = [s.name for s in steps if w.name in s.reads]
    prog.steps = steps
    return Kernels(src, prog, weights, calls, dtypes, shapes, inputs, outputs, stack, features)


def inplace_params(func: tirx.PrimFunc) -> list[int]:
    """Parameters (by position) that the kernel's output may overwrite: the kernel is one spatial block after
    scheduling, and reads that parameter, of the output's shape, only at the index it writes."""
    sch = s_tir.Schedule(func)
    blocks = _blocks(sch)
    if len(blocks) != 1 or _is_reduction(sch, blocks[0]):
        return []
    b = sch.get(blocks[0])
    if len(b.writes) != 1:
        return []
    out = b.writes[0]
    out_shape = [int(x) for x in out.source.shape]
    ok = []
    for pos, param in enumerate(func.params[:-1]):
        regions = [r for r in b.reads if r.source.same_as(param)]
        if len(regions) != 1 or [int(x) for x in param.shape] != out_shape:
            continue
        r = regions[0]
        if all(tvm_ffi.structural_equal(x.min, y.min) and tvm_ffi.structural_equal(x.extent, y.extent)
               for x, y in zip(r.region, out.region, strict=True)):
            ok.append(pos)
    return ok


def _itemsize(dtype: str) -> int:
    if dtype == "bool":
        return 1
    return int(np.dtype(dtype).itemsize)


def tvm_static_plan_bytes(mod: tvm.IRModule, target: tvm.target.Target) -> int:
    """Bytes of storage that TVM's own planner (StaticPlanBlockMemory) allocates for the same fused module,
    outputs excluded as in nasc's arena (for comparison in tools/bench_mcu.py; kernel workspaces not counted)."""
    fused = fuse(mod, target)
    seq = tvm.transform.Sequential([relax.transform.ToNonDataflow(), relax.transform.RemovePurityChecking(),
                                    relax.transform.CallTIRRewrite(), relax.transform.StaticPlanBlockMemory()])
    with target:
        planned = seq(fused)
    alloc = ir.Op.get("relax.memory.alloc_storage")
    total = 0
    for block in planned["main"].body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call) and b.value.op.same_as(alloc):
                total += int(np.prod([int(v) for v in b.value.args[0].values]))
    return total
