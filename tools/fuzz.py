"""Fuzz nasc's command line at a larger budget than the CI slice, and write what it found.

The case families, the oracle and the worker live in ``tests/fuzz`` (one place for
the generators; the CI slice, tests/fuzz/test_fuzz_families.py, runs a fixed sample
of the same families). Here cases are drawn from ``random.Random(f"{seed}:{i}")``,
run on ``--workers`` child processes (a hang or a crash costs a restart, not the run),
judged, and bucketed by failure class. For each class the first case is minimized
(ops and argv groups dropped while the class still reproduces) and written to
``--out``/repro/NN-slug/ with its input files, ``cmd.sh``, ``case.json`` and the result.

    python tools/fuzz.py --seconds 600 --write docs/reliability.md
    python tools/fuzz.py --budget 300 --families onnx-structure,cli
    python tools/fuzz.py --replay build/fuzz/repro/01-.../case.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

from doc_tables import write_between_markers  # noqa: E402
from fuzz_core import Case, RandomDraw, materialize  # noqa: E402
from fuzz_families import FAMILIES  # noqa: E402
from fuzz_oracle import Problem, fatal, judge  # noqa: E402
from fuzz_seeds import build_seeds  # noqa: E402
from fuzz_worker import Worker  # noqa: E402


@dataclass
class Bucket:
    key: str
    count: int = 0
    families: Counter[str] = field(default_factory=Counter)
    case: Case | None = None
    detail: str = ""


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    per_family: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    buckets: dict[str, Bucket] = field(default_factory=dict)
    notes: dict[str, Bucket] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, case: Case, res: dict[str, Any], problems: list[Problem]) -> None:
        with self.lock:
            fam = self.per_family[case.family]
            fam["cases"] += 1
            rc = res.get("rc")
            fam["exit 0" if rc == 0 else "exit 2" if rc == 2 else "other"] += 1
            fam["failed" if fatal(problems) else "passed"] += 1
            for p in problems:
                table = self.buckets if p.fatal else self.notes
                b = table.setdefault(p.key, Bucket(p.key))
                b.count += 1
                b.families[case.family] += 1
                if b.case is None:
                    b.case, b.detail = case, p.detail


def draw_case(run_seed: int, i: int, families: list[str]) -> Case:
    rnd = random.Random(f"{run_seed}:{i}")
    fam = rnd.choices(families, weights=[FAMILIES[f].weight for f in families])[0]
    return FAMILIES[fam].gen(RandomDraw(rnd))


def run_one(worker: Worker, case: Case, scratch: Path) -> tuple[dict[str, Any], list[Problem]]:
    workdir = scratch / f"case-{time.monotonic_ns()}"
    res = worker.run(case, workdir)
    problems = judge(case, res)
    shutil.rmtree(workdir, ignore_errors=True)
    return res, problems


def campaign(args: argparse.Namespace, workers: list[Worker], families: list[str], stats: Stats) -> None:
    counter = iter(range(args.budget or 1 << 62))
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds if args.seconds else float("inf")
    t0 = time.monotonic()

    def loop(w: Worker, k: int) -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            case = draw_case(args.seed, i, families)
            res, problems = run_one(w, case, args.out / "cases" / f"w{k}")
            stats.add(case, res, problems)
            bad = fatal(problems)
            if args.verbose or bad:
                mark = "FAIL " + bad[0].key if bad else "ok"
                print(f"[{i}] {case.family} exit {res.get('rc')} {res.get('seconds', 0):.2f}s: {mark}", flush=True)
                if bad and stats.buckets[bad[0].key].count == 1:
                    print(f"    first of its class, replay: {case.to_json()}", flush=True)

    threads = [threading.Thread(target=loop, args=(w, k)) for k, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.seconds = time.monotonic() - t0


def minimize(worker: Worker, case: Case, key: str, scratch: Path, max_runs: int) -> tuple[Case, dict[str, Any]]:
    """Drop ops and argv groups while the failure class ``key`` still reproduces."""
    runs = 0
    best, best_res = case, None

    def reproduces(c: Case) -> dict[str, Any] | None:
        nonlocal runs
        runs += 1
        res, problems = run_one(worker, c, scratch)
        return res if any(p.key == key for p in problems) else None

    if key.startswith("hang"):  # each rerun costs the whole time limit: a few, with a shorter one
        max_runs = min(max_runs, 6)
        best = case = replace(case, timeout=min(case.timeout, 15.0))
    best_res = reproduces(best)
    if best_res is None:
        return case, {}
    changed = True
    while changed and runs < max_runs:
        changed = False
        for attr in ("ops", "argv"):
            items = getattr(best, attr)
            for i in range(len(items)):
                if runs >= max_runs:
                    break
                cand = replace(best, **{attr: items[:i] + items[i + 1:]})
                res = reproduces(cand)
                if res is not None:
                    best, best_res, changed = cand, res, True
                    break
            if changed:
                break
    return best, best_res


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def write_repro(dest: Path, case: Case, res: dict[str, Any], bucket: Bucket, seeds: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    model = materialize(case, seeds, dest)
    argv = case.flat_argv(model)
    import shlex

    (dest / "case.json").write_text(case.to_json() + "\n")
    (dest / "cmd.sh").write_text(f'#!/bin/sh\ncd "$(dirname "$0")" && exec nasc {shlex.join(argv)}\n')
    (dest / "cmd.sh").chmod(0o755)
    err = res.get("error") or {}
    flaky = "" if res else "did not reproduce when rerun (flaky, or fixed while the run went on); the first case:\n"
    (dest / "result.txt").write_text(
        f"class: {bucket.key}\ncases in this run: {bucket.count} ({dict(bucket.families)})\n{flaky}"
        f"case: {case.describe(model)}\nexit: {res.get('rc')}\nstderr:\n{res.get('stderr', '')}\n"
        f"raised: {err.get('exc', '')} {err.get('message', '')}\n{err.get('frames', '')}\n"
        f"detail:\n{bucket.detail}\n")


def report(stats: Stats, families: list[str], args: argparse.Namespace, repro: dict[str, str]) -> str:
    total = sum(c["cases"] for c in stats.per_family.values())
    failed = sum(c["failed"] for c in stats.per_family.values())
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    lines = [
        f"Last run: {datetime.date.today()}, `python tools/fuzz.py {' '.join(args.argv)}`: {total} cases in "
        f"{stats.seconds:.0f} s on {args.workers} workers (seed {args.seed}; nasc at {commit}"
        f"{' with local changes' if dirty else ''}). {failed} cases failed, in {len(stats.buckets)} classes.",
        "",
        "| family | cases | passed | failed | exit 0 | exit 2 | other exit |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fam in families:
        c = stats.per_family.get(fam, Counter())
        lines.append(f"| {fam} | {c['cases']} | {c['passed']} | {c['failed']} | {c['exit 0']} | {c['exit 2']} | "
                     f"{c['other']} |")
    lines += ["", "| failure class | cases | families | reproducer |", "|---|---:|---|---|"]
    for b in sorted(stats.buckets.values(), key=lambda b: -b.count):
        fams = ", ".join(f"{f} {n}" for f, n in b.families.most_common())
        lines.append(f"| {b.key.replace('|', '/')} | {b.count} | {fams} | {repro.get(b.key, '')} |")
    if not stats.buckets:
        lines.append("| (none) | 0 | | |")
    if stats.notes:
        lines += ["", "Notes (not failures: stray output on success):", ""]
        for b in sorted(stats.notes.values(), key=lambda b: -b.count):
            lines.append(f"- {b.key} ({b.count} cases)")
    return "\n".join(lines)


def replay(args: argparse.Namespace, worker: Worker) -> int:
    text = Path(args.replay).read_text() if Path(args.replay).is_file() else args.replay
    case = Case.from_json(text)
    res, problems = run_one(worker, case, args.out / "cases" / "replay")
    print(case.describe(res.get("model", "{model}")))
    print(f"exit {res.get('rc')}\nstdout: {res.get('stdout', '')[-2000:]}\nstderr: {res.get('stderr', '')}")
    for p in problems:
        print(f"{'PROBLEM' if p.fatal else 'note'}: {p.key}\n  {p.detail[-2000:]}")
    bad = fatal(problems)
    if bad and args.minimize:
        small, _ = minimize(worker, case, bad[0].key, args.out / "cases" / "replay", args.max_runs)
        print(f"minimized: {small.to_json()}")
    return 1 if bad else 0


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the finally clauses: the workers are in sessions of their own


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=0, help="number of cases (0: until --seconds)")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (default 300 without --budget)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", default="", help=f"comma-separated subset of {', '.join(FAMILIES)}")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz", help="seeds, scratch and reproducers")
    ap.add_argument("--write", type=Path, default=None, help="update the table between <!-- fuzz:begin/end --> here")
    ap.add_argument("--mem-gb", type=float, default=4.0, help="address-space limit per worker (0: none)")
    ap.add_argument("--max-runs", type=int, default=30, help="reruns allowed to minimize one failure class")
    ap.add_argument("--no-minimize", dest="minimize", action="store_false")
    ap.add_argument("--replay", default=None, help="run one case (case.json or its JSON text) and print the result")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if not args.budget and not args.seconds:
        args.seconds = 300
    families = [f.strip() for f in args.families.split(",") if f.strip()] or list(FAMILIES)
    unknown = set(families) - set(FAMILIES)
    if unknown:
        ap.error(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    seeds = build_seeds(args.out / "seeds")
    workers = [Worker(seeds, args.out / f"worker-{k}", args.mem_gb) for k in range(max(1, args.workers))]
    try:
        if args.replay:
            return replay(args, workers[0])
        for w in workers:
            w.start()
        stats = Stats()
        campaign(args, workers, families, stats)
        repro: dict[str, str] = {}
        if args.minimize and stats.buckets:
            print(f"minimizing {len(stats.buckets)} failure classes ...", flush=True)
            order = sorted(stats.buckets.values(), key=lambda b: -b.count)
            jobs = iter(enumerate(order, 1))
            lock = threading.Lock()

            def mini(w: Worker, k: int) -> None:
                while True:
                    with lock:
                        job = next(jobs, None)
                    if job is None:
                        return
                    n, b = job
                    assert b.case is not None
                    small, res = minimize(w, b.case, b.key, args.out / "cases" / f"m{k}", args.max_runs)
                    dest = args.out / "repro" / f"{n:02d}-{slug(b.key)}"
                    try:
                        write_repro(dest, small, res or {}, b, seeds)
                    except Exception as e:  # a case the fuzzer cannot build: say so where the reproducer would be
                        dest.mkdir(parents=True, exist_ok=True)
                        (dest / "result.txt").write_text(f"class: {b.key}\ncannot build: {type(e).__name__}: {e}\n"
                                                         f"case: {small.to_json()}\n")
                    with lock:
                        repro[b.key] = f"`{dest.relative_to(args.out)}`" + ("" if res else " (did not reproduce)")

            threads = [threading.Thread(target=mini, args=(w, k)) for k, w in enumerate(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        text = report(stats, families, args, repro)
        print(text)
        (args.out / "summary.json").write_text(json.dumps(
            {"families": stats.per_family, "failures": {k: {"count": b.count, "families": b.families,
                                                            "case": b.case.to_json() if b.case else None}
                                                        for k, b in stats.buckets.items()}}, indent=2))
        if args.write:
            write_between_markers(args.write, text, "fuzz")
        return 0
    finally:
        for w in workers:
            w.stop()
        shutil.rmtree(args.out / "cases", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
