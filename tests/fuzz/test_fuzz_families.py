"""The CI slice of the fuzzer: a fixed, derandomized sample of every fast case family through the real CLI.

Each case must end in exit 0, or exit 2 with one line ``nasc: error: ...``, and leave
nothing behind (tests/fuzz/fuzz_oracle.py). ``tools/fuzz.py`` runs the same families
with a larger budget and writes the counts to docs/reliability.md. Shrinking is off:
a failure prints the case as JSON, which ``tools/fuzz.py --replay`` runs and minimizes.
"""

from __future__ import annotations

import pytest
from fuzz_core import HypothesisDraw
from fuzz_families import FAMILIES
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

CI_FAMILIES = [name for name, fam in FAMILIES.items() if fam.ci_examples]


@pytest.mark.parametrize("family", CI_FAMILIES)
def test_fuzz_family(fuzz, family: str) -> None:
    gen = FAMILIES[family].gen

    @settings(max_examples=FAMILIES[family].ci_examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_case(data: st.DataObject) -> None:
        fuzz.check(gen(HypothesisDraw(data)))

    one_case()
