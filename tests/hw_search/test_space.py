"""The search space: ranges, choices, optional passes, and errors for spaces nasc cannot search."""

from __future__ import annotations

import pytest

from nasc.errors import UsageError
from nasc.hw_search.space import Space, default_space
from nasc.passes.manager import Pipeline

SPACE = ("simplify,fuse,prune?{macs=0.3..1.0 reconstruct=true},tie-layers{blocks=1..3 rank=0,8,32},"
         "quant-policy{bits=8|8,4 flash=10KB..20KB},quantize")


def test_dims_and_their_values():
    s = Space.parse(SPACE)
    dims = {d.name: d for d in s.dims()}
    assert list(dims) == ["2.prune", "2.prune.macs", "3.tie-layers.blocks", "3.tie-layers.rank",
                          "4.quant-policy.bits", "4.quant-policy.flash"]
    assert dims["2.prune"].values() == ["on", "off"]
    macs = dims["2.prune.macs"].values()
    assert macs[0] == 0.3 and macs[-1] == 1.0 and len(macs) == 15  # a round step near span/20: 0.05
    assert dims["3.tie-layers.blocks"].values() == [1, 2, 3]
    assert dims["3.tie-layers.rank"].values() == ["0", "8", "32"]  # a scalar option: commas choose
    assert dims["4.quant-policy.bits"].values() == ["8", "8,4"]  # a list option: | chooses among lists
    assert dims["4.quant-policy.flash"].kind == "int"


def test_pipelines_parse_and_an_optional_pass_drops_out():
    s = Space.parse(SPACE)
    lo, hi = s.pipeline(s.corner(0)), s.pipeline(s.corner(-1))
    # the canonical text: options in the pass's order, defaults (rank=0, bits=8,4) left out
    assert lo == ("simplify,fuse,prune{macs=0.3 reconstruct=true},tie-layers{blocks=1},"
                  "quant-policy{bits=8 flash=10KB},quantize")
    assert hi == "simplify,fuse,tie-layers{blocks=3 rank=32},quant-policy{flash=20KB},quantize"
    for text in (lo, hi):
        assert str(Pipeline.parse(text)) == str(Pipeline.parse(str(Pipeline.parse(text))))
    small = Space.parse("prune{macs=0.5..1.0/0.25},quantize?")
    assert small.size() == 6
    assert sorted({small.pipeline(p) for p in small.grid()}) == sorted(
        f"prune{{macs={m}}}{q}" for m in (0.5, 0.75, 1.0) for q in ("", ",quantize"))
    assert Space.parse("quant-policy{bits=8,4|8},quantize").size() == 2
    flash = Space.parse("quant-policy{flash=4KB..6KB/500}").dims()[0]
    assert flash.values() == [4000, 4500, 5000, 5500, 6000] and flash.text(4500) == "4500"


def test_sampling_through_optuna_stays_in_the_space():
    import optuna

    s = Space.parse(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        pipe, params = s.sample(trial)
        assert pipe == s.pipeline(params)
        Pipeline.parse(pipe)
        seen.add(params["2.prune"])
        study.tell(trial, 0.0)
    assert seen == {"on", "off"}


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("simplify,fuse", "nothing to search"),
    ("prune{macs=1.0..0.3}", "lo must be below hi"),
    ("prune{macs=a..b}", "cannot read the range"),
    ("prune{foo=1..2}", "has no option"),
    ("nope{x=1|2}", "unknown pass 'nope'"),
    ("quant-policy{bits=8|x}", "choice 'x' is not a list of int"),
    ("prune{importance=l2..taylor}", "a range needs a numeric option"),
    ("prune{macs=0.5|0.5}", "two or more different values"),
    ("tie-layers{blocks=1..3/0.5}", "cannot read the range"),
    ("tie-layers{blocks=1..3/0}", "must be a whole number >= 1"),
])
def test_malformed_spaces_are_refused_by_name(text, message):
    with pytest.raises(UsageError, match=message):
        Space.parse(text)


def test_the_default_space_parses_for_each_kind():
    for kind in ("mcu", "cpu", "onnx", "gpu"):
        for repeats in (False, True):
            Space.parse(default_space(kind, repeats, has_calib=True))
    # pruned channel counts the cpu and gpu kernels vectorise: multiples of 16 there, any count elsewhere
    assert "round-to=16" in default_space("cpu", False, True) and "round-to" not in default_space("mcu", False, True)
    assert "flash-share=" in default_space("mcu", False, True)
