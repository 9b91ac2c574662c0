"""One fuzz worker per test session: the seeds are built once and every case runs in that child process."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fuzz_core import Case
from fuzz_oracle import Problem, explain, fatal, judge
from fuzz_seeds import build_seeds
from fuzz_worker import Worker


@dataclass
class Fuzz:
    """Runs cases on the session's worker; each case gets a fresh directory, removed when it passes."""

    worker: Worker
    base: Path
    counter: itertools.count = field(default_factory=itertools.count)

    def run(self, case: Case) -> tuple[dict, list[Problem]]:
        workdir = self.base / "cases" / f"case-{next(self.counter)}"
        res = self.worker.run(case, workdir)
        problems = judge(case, res)
        if not fatal(problems):
            shutil.rmtree(workdir, ignore_errors=True)
        return res, problems

    def check(self, case: Case) -> dict:
        """Run ``case`` and fail the test with the case (replayable) and its problems if any is fatal."""
        res, problems = self.run(case)
        bad = fatal(problems)
        assert not bad, explain(case, res, bad)
        return res


@pytest.fixture(scope="session")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    base = tmp_path_factory.mktemp("fuzz")
    worker = Worker(build_seeds(base / "seeds"), base / "worker")
    worker.start()
    yield Fuzz(worker, base)
    worker.stop()
