"""Pass infrastructure: pipeline text round trip, errors that list what is valid, verifier between passes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nasc
from nasc.errors import UsageError, VerificationError
from nasc.ir import Graph, TensorType, parse
from nasc.passes.manager import (
    ByteSize,
    Duration,
    Pass,
    PassContext,
    Pipeline,
    register_pass,
    registered_passes,
)
from nasc.passes.simplify import Simplify

TEXT = '''graph "g" opsets {"": 21}
input %x : f32[1,4]
%a : f32[1,4] = Identity(%x) #"id"
%y : f32[1,4] = Relu(%a) #"relu"
output %y
'''


@register_pass
@dataclass(frozen=True)
class _Knobs(Pass):
    """A test pass with one option of each type."""

    name = "test-knobs"
    ratio: float = 0.3
    min_channels: int = 8
    flag: bool = False
    mode: str = "fast"
    bits: tuple[int, ...] = (8, 4)
    flash: ByteSize = ByteSize(1_000_000)  # noqa: RUF009  (an immutable int)
    latency: Duration | None = None

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return False


@register_pass
@dataclass(frozen=True)
class _Breaker(Pass):
    """A broken pass: it leaves a stale use list behind."""

    name = "test-breaker"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        graph.inputs[0].uses.clear()
        return True


@pytest.mark.parametrize("text", [
    "simplify,fuse",
    "simplify{fold=false},fuse{transformer=false}",
    "test-knobs{ratio=0.5 min-channels=16}",
    "test-knobs{flag=true mode=slow bits=8,4,2 flash=512KB latency=5ms}",
    "fuse,simplify,fuse",
    "",
])
def test_pipeline_text_prints_back_the_same(text):
    assert str(Pipeline.parse(text)) == text


def test_python_and_text_pipelines_are_equal():
    from nasc.passes.fuse import Fuse

    assert Pipeline([Simplify(), Fuse(transformer=False)]) == Pipeline.parse("simplify,fuse{transformer=false}")
    assert str(Pipeline([Simplify(), Fuse(transformer=False)])) == "simplify,fuse{transformer=false}"


knob_values = st.fixed_dictionaries({}, optional={
    "ratio": st.floats(0, 1, allow_nan=False).map(lambda f: round(f, 6)),
    "min_channels": st.integers(0, 4096),
    "flag": st.booleans(),
    "mode": st.sampled_from(["fast", "slow", "exact"]),
    "bits": st.lists(st.sampled_from([2, 4, 8, 16]), min_size=1, max_size=4).map(tuple),
    "flash": st.integers(1, 10**9).map(ByteSize),
    "latency": st.one_of(st.none(), st.sampled_from([1e-3, 5e-3, 2.5e-4, 1.0]).map(Duration)),
})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.just("simplify"), st.just("fuse"), knob_values), max_size=5))
def test_any_pipeline_round_trips(items):
    passes = []
    for it in items:
        passes.append(registered_passes()[it]() if isinstance(it, str) else _Knobs(**it))
    pipe = Pipeline(passes)
    text = str(pipe)
    assert Pipeline.parse(text) == pipe
    assert str(Pipeline.parse(text)) == text


@pytest.mark.parametrize(("text", "match"), [
    ("simplfy", r"unknown pass 'simplfy' \(did you mean 'simplify'\?\); passes: .*fuse.*simplify"),
    ("simplify{folds=true}", r"pass 'simplify' has no option 'folds'; options: fold \(bool, default true\), "
                             r"cse \(bool, default true\), max-iterations \(int, default 4\)"),
    ("test-knobs{ratio=lots}", r"option 'ratio' must be a float, got 'lots'"),
    ("test-knobs{min-channels=2.5}", r"option 'min-channels' must be a int, got '2.5'"),
    ("test-knobs{flash=12parsecs}", r"option 'flash' must be a size"),
    ("test-knobs{ratio}", r"option 'ratio' needs a value"),
    ("test-knobs{ratio=0.1 ratio=0.2}", r"option 'ratio' is given twice"),
    ("simplify{fold=true", r"'\{' is never closed"),
    ("simplify}", r"'\}' without '\{'"),
    ("simplify,,fuse", r"cannot read pass ''"),
])
def test_bad_pipelines_are_errors_that_list_what_is_valid(text, match):
    with pytest.raises(UsageError, match=match):
        Pipeline.parse(text)


@pytest.mark.parametrize(("text", "match"), [
    ("quant-policy{bits=3}", r"pass 'quant-policy': option bits=3 is not valid; expected one or more of the weight "
                             r"widths 8 and 4"),
    ("quant-policy{bits=8,2}", r"option bits=8,2 is not valid"),
    ("quant-policy{act-bits=4}", r"option act-bits=4 is not valid; expected 8"),
    ("quant-policy{metric=l1}", r"option metric='l1' is not valid; expected mse, cosine or top1"),
    ("quant-policy{flash=0}", r"option flash=0 is not valid; expected a positive size"),
    ("quant-policy{flash=-1KB}", r"option 'flash' must be a size or none, got '-1KB'"),
    ("quant-policy{latency=0}", r"option latency=0us is not valid; expected a positive duration"),
    ("quant-policy{keep-float=[}", r"option keep-float='\[' is not valid; expected a Python regular expression"),
    ("quantize{bits=3}", r"pass 'quantize': option bits=3 is not valid; expected 8 or 4"),
    ("quantize{act-bits=16}", r"pass 'quantize': option act-bits=16 is not valid"),
    ("quantize{calib=foo}", r"pass 'quantize': option calib='foo' is not valid; expected minmax, percentile or mse"),
    ("quantize{percentile=nan}", r"option percentile=nan is not valid; expected a number in \(0, 100\]"),
    ("quantize{percentile=-5}", r"option percentile=-5.0 is not valid"),
    ("quantize{percentile=100.5}", r"option percentile=100.5 is not valid"),
    ("simplify{max-iterations=-1}", r"pass 'simplify': option max-iterations=-1 is not valid; expected an int >= 1"),
])
def test_bad_option_values_are_refused_when_the_pipeline_is_read(text, match):
    """A value of the right type but outside what the pass can do: a usage error before anything runs."""
    with pytest.raises(UsageError, match=match):
        Pipeline.parse(text)


def test_bad_option_values_are_refused_from_python_too():
    from nasc.passes.quantize import Quantize, QuantPolicy

    with pytest.raises(UsageError, match="pass 'quantize': option bits=3"):
        Quantize(bits=3)
    with pytest.raises(UsageError, match="pass 'quant-policy': option bits= is not valid"):
        QuantPolicy(bits=())
    assert str(Pipeline.parse("quantize{bits=4 percentile=100 calib=percentile},quant-policy{bits=8 flash=1KB}")) == (
        "quantize{bits=4 calib=percentile percentile=100.0},quant-policy{bits=8 flash=1KB}")


def test_sizes_and_durations():
    assert ByteSize.parse("512KB") == 512_000 and ByteSize.parse("1MiB") == 1 << 20 and ByteSize.parse("100") == 100
    assert str(ByteSize(2_000_000)) == "2MB"
    assert Duration.parse("5ms") == pytest.approx(0.005) and str(Duration(0.005)) == "5ms"


def test_run_reports_each_pass_and_verifies_after_it():
    g = parse(TEXT)
    lines: list[str] = []
    ctx = PassContext(log=lines.append, print_ir_after_all=True)
    Pipeline.parse("simplify,test-knobs").run(g, ctx)
    simplify, knobs = ctx.report.passes
    assert simplify.changed and simplify.rewrites == {"remove-identity": 1}
    assert simplify.before["nodes"] == 2 and simplify.after["nodes"] == 1 and simplify.time_s >= 0
    assert lines[0].startswith("simplify: remove-identity ×1; nodes 2 → 1")
    assert "// ----- IR after simplify -----" in lines[1] and "Identity" not in lines[1]
    assert not knobs.changed and "no change" in knobs.line()


def test_a_pass_that_breaks_the_graph_is_named():
    with pytest.raises(VerificationError, match=r"after pass 'test-breaker': .*use list of %x is stale"):
        Pipeline.parse("test-breaker").run(parse(TEXT))
    Pipeline.parse("test-breaker").run(parse(TEXT), PassContext(verify=False))  # switched off: no check


def test_optimize_works_on_a_copy_and_records_the_pipeline():
    g = parse(TEXT)
    out = nasc.optimize(g, "simplify")
    assert len(g.nodes) == 2 and len(out.nodes) == 1
    assert out.meta["pipeline"] == "simplify" and out.meta["passes"][0]["rewrites"] == {"remove-identity": 1}


def test_graph_outputs_keep_working_when_a_noop_feeds_them():
    g = parse('''graph "g" opsets {"": 21}
input %x : f32[2]
%y : f32[2] = Identity(%x)
output %y
''')
    out = nasc.optimize(g, "simplify")
    assert out.outputs == [out.inputs[0]]
    from nasc.backends.onnx import to_onnx

    m = to_onnx(out)
    assert [o.name for o in m.graph.output] == ["x"] or [o.name for o in m.graph.output] == ["y"]


def test_unknown_option_types_are_rejected_at_registration():
    with pytest.raises(ValueError, match="kebab-case"):
        @register_pass
        @dataclass(frozen=True)
        class _Bad(Pass):
            name = "Bad_Name"


def test_typed_defaults_are_listed():
    from nasc.passes.manager import describe_pass

    rows = dict((r[0], r[1:]) for r in describe_pass(_Knobs))
    assert rows["ratio"] == ("float", "0.3") and rows["bits"] == ("list of int", "8,4")
    assert rows["flash"] == ("size", "1MB") and rows["latency"] == ("duration or none", "none")
    assert TensorType("f32", (1,))  # keeps the import honest
