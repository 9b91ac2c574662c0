"""The learned cost model against the MACs baseline: leave one model family out, and seen families.

    python tools/bench_predictor.py [--target cpu|mcu:BOARD] [--dataset FILE.jsonl | --profile] [--write docs/benchmarks.md]

``--profile`` first runs ``nasc profile --corpus`` into a fresh dataset (about 10-15 minutes on two cores);
without it the host target's dataset in the user cache (or ``--dataset``) is read. For each family, a model is
trained on the other families and predicts every model of the held-out one (whole-model latency: the sum of its
kernels' predictions plus the call overhead); the MACs baseline is latency = c x MACs with c fitted on the same
training families. "Seen families": five folds over the models, each model predicted by a model trained on the
other four folds (its family's other variants among them). Under the tables: the seen share over training seeds
and fold draws, the measurement against itself, and where the seen-family error is (:func:`error_sources`).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_tables import write_between_markers

from nasc.hw_search import corpus, perfdata, predictor
from nasc.hw_search.study import SCREEN_MARGIN


def _fmt(sc: Mapping[str, float]) -> str:
    return f"{sc['spearman']:.3f} | {sc['kendall']:.3f} | {sc['mape']:.1%} | {sc['within_10pct']:.0%}"


Fit = Callable[[Sequence[dict[str, Any]], int], predictor.CostModel]

#: lightgbm's version this comparison was run with (installed for the bench only: pip install lightgbm==4.7.0)
LIGHTGBM = "4.7.0"


class _LightGbmModel(predictor.CostModel):
    """The same per-kernel target, features and overhead as nasc's xgboost model, fitted by lightgbm."""

    def log_efficiency(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x))


def fit_lightgbm(samples: Sequence[dict[str, Any]], seed: int) -> predictor.CostModel:
    """lightgbm in the place of xgboost: the same rows, rounds and learning rate; leaves instead of depth 6."""
    try:
        import lightgbm as lgb
    except ImportError:
        raise SystemExit(f"--learners lightgbm: pip install lightgbm=={LIGHTGBM} (a bench-only comparison; nasc "
                         "itself uses xgboost)") from None
    samples = predictor.steady(samples) or list(samples)
    names = predictor.feature_names(samples)
    x, y = predictor.training_set(samples, names)
    params = {"objective": "regression", "learning_rate": 0.08, "num_leaves": 63, "max_depth": 6,
              "min_data_in_leaf": 2, "feature_fraction": 0.85, "bagging_fraction": 0.85, "bagging_freq": 1,
              "seed": seed, "num_threads": 1, "deterministic": True, "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=[n.replace(" ", "_") for n in names]),
                        num_boost_round=predictor.ROUNDS)
    return _LightGbmModel(booster, names, {"overhead": list(predictor.fit_overhead(samples))})


def fit_xgboost(samples: Sequence[dict[str, Any]], seed: int) -> predictor.CostModel:
    return predictor.train(samples, seed=seed)


LEARNERS: dict[str, Fit] = {"xgboost": fit_xgboost, "lightgbm": fit_lightgbm}


def evaluate(samples: Sequence[dict[str, Any]], seed: int, fit: Fit) -> dict[str, Any]:
    """One learner through both evaluations: their table lines and scores, and the seconds its fits took."""
    t0 = time.perf_counter()
    lofo_lines, lofo = leave_one_family_out(samples, seed, fit)
    seen_lines, seen = seen_families(samples, seed, fit=fit)
    return {"lofo_lines": lofo_lines, "lofo": lofo, "seen_lines": seen_lines, "seen": seen,
            "seconds": time.perf_counter() - t0}


def learners_table(evaluations: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The learners' :func:`evaluate` results side by side."""
    lines = ["| learner | held-out families: Spearman, pooled | mean over families | MAPE, pooled | seen "
             "families: within ±10% | MAPE | fits (s) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, ev in evaluations.items():
        lofo, seen = ev["lofo"], ev["seen"]
        mean = float(np.nanmean([v["model"]["spearman"] for v in lofo["families"].values()]))
        lines.append(f"| {name} | {lofo['pooled']['spearman']:.3f} | {mean:.3f} | {lofo['pooled']['mape']:.1%} | "
                     f"{seen['model']['within_10pct']:.0%} | {seen['model']['mape']:.1%} | {ev['seconds']:.0f} |")
    return lines


def _scored(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The whole models: the corpus's single-layer kernel samples (corpus.KERNELS) are training data only."""
    return [s for s in samples if s["family"] != corpus.KERNELS]


def leave_one_family_out(samples: Sequence[dict[str, Any]], seed: int, fit: Fit = fit_xgboost
                         ) -> tuple[list[str], dict[str, Any]]:
    fams = sorted({s["family"] for s in _scored(samples)})
    lines = ["| held-out family | models | cost model: Spearman | Kendall τ | MAPE | within ±10% | MACs: Spearman | "
             "Kendall τ | MAPE | within ±10% |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pooled: dict[str, list[float]] = {"pred": [], "macs": [], "meas": []}
    per: dict[str, Any] = {}
    for fam in fams:
        train = [s for s in samples if s["family"] != fam]
        test = [s for s in samples if s["family"] == fam]
        model = fit(train, seed)
        pred = [model.predict(s["kernels"])["latency"] for s in test]
        macs = predictor.macs_baseline(_scored(train), test)
        meas = [s["latency"] for s in test]
        pooled["pred"] += pred
        pooled["macs"] += macs
        pooled["meas"] += meas
        sc, mb = predictor.scores(pred, meas), predictor.scores(macs, meas)
        per[fam] = {"model": sc, "macs": mb}
        lines.append(f"| {fam} | {len(test)} | {_fmt(sc)} | {_fmt(mb)} |")
    sc, mb = predictor.scores(pooled["pred"], pooled["meas"]), predictor.scores(pooled["macs"], pooled["meas"])
    lines.append(f"| **all, pooled** | {len(pooled['meas'])} | {_fmt(sc)} | {_fmt(mb)} |")
    mean_rho = float(np.nanmean([v["model"]["spearman"] for v in per.values()]))
    mean_rho_macs = float(np.nanmean([v["macs"]["spearman"] for v in per.values()]))
    lines.append(f"| mean over families | | {mean_rho:.3f} | | | | {mean_rho_macs:.3f} | | | |")
    return lines, {"pooled": sc, "pooled_macs": mb, "families": per}


def _fold_models(all_samples: Sequence[dict[str, Any]], seed: int, fit: Fit, folds: int = 5,
                 fold_seed: int | None = None) -> Iterator[tuple[predictor.CostModel, list[dict[str, Any]], Any]]:
    """The seen-family folds: for each, the model trained (with ``seed``) on the other folds' models and every
    kernel sample, those models, and the indices (into ``_scored(all_samples)``) of the fold's own;
    ``fold_seed`` (default ``seed``) draws the folds."""
    samples = _scored(all_samples)
    kernels = [s for s in all_samples if s["family"] == corpus.KERNELS]  # in every fold's training set
    order = np.random.default_rng(seed if fold_seed is None else fold_seed).permutation(len(samples))
    for f in range(folds):
        test_idx = order[f::folds]
        train = [samples[i] for i in order if i not in set(test_idx)]
        yield fit(train + kernels, seed), train, test_idx


def seen_families(all_samples: Sequence[dict[str, Any]], seed: int, folds: int = 5, fit: Fit = fit_xgboost,
                  fold_seed: int | None = None) -> tuple[list[str], dict[str, Any]]:
    """Each model predicted by a model trained (with ``seed``) on the other folds; ``fold_seed`` (default
    ``seed``) draws the folds."""
    samples = _scored(all_samples)
    pred = np.zeros(len(samples))
    macs = np.zeros(len(samples))
    for model, train, test_idx in _fold_models(all_samples, seed, fit, folds, fold_seed):
        base = predictor.macs_baseline(train, [samples[i] for i in test_idx])
        for j, i in enumerate(test_idx):
            pred[i] = model.predict(samples[i]["kernels"])["latency"]
            macs[i] = base[j]
    meas = [s["latency"] for s in samples]
    sc, mb = predictor.scores(pred, meas), predictor.scores(macs, meas)
    lines = ["| seen families (5 folds over models) | models | Spearman | Kendall τ | MAPE | within ±10% |",
             "|---|---:|---:|---:|---:|---:|",
             f"| cost model | {len(meas)} | {_fmt(sc)} |", f"| MACs baseline | {len(meas)} | {_fmt(mb)} |"]
    return lines, {"model": sc, "macs": mb}


def seed_spread(samples: Sequence[dict[str, Any]], table_seed: int, fit: Fit = fit_xgboost, train_seeds: int = 5,
                fold_seeds: int = 3) -> str:
    """The seen-family share within ±10% over training seeds (the trees subsample rows and features) and fold
    draws: one seed's figure is one draw of these."""
    got = np.array([[seen_families(samples, t, fit=fit, fold_seed=f)[1]["model"]["within_10pct"]
                     for f in range(fold_seeds)] for t in range(train_seeds)])
    return (f"Over training seeds 0-{train_seeds - 1} and fold draws 0-{fold_seeds - 1} ({got.size} runs of the "
            f"five folds), the cost model puts {got.mean():.0%} of the seen models within ±10% on average (runs "
            f"{got.min():.0%}-{got.max():.0%}; the table's run is seed {table_seed} for both).")


#: Op words of the kernels that compute (convolutions, matmuls, float or integer): the rest move memory
COMPUTE_OPS = ("op_conv2d", "op_matmul", "op_qconv2d", "op_qmatmul")


def _computes(kernel: Mapping[str, Any]) -> bool:
    return any(kernel["features"].get(op) for op in COMPUTE_OPS)


def error_sources(samples: Sequence[dict[str, Any]], seed: int, folds: int = 5) -> str:
    """Where the seen-family error comes from. (1) A kernel measured in several builds (the same features in
    different models): how far its per-call costs spread, and how many models stay within ±10% when each of their
    kernels takes the median of its measurements in the other builds (what a model that knew every measured shape
    could at best do). (2) With the table's folds, the share within ±10% when the compute kernels (convolutions,
    matmuls) take their measured cost and the rest their prediction, and the other way round."""
    import json

    def shape(k: Mapping[str, Any]) -> str:  # what the trees read of a kernel: equal for the same kernel
        return json.dumps(predictor.inputs(k), sort_keys=True)

    a, b = predictor.fit_overhead(predictor.steady(samples) or list(samples))
    seen: dict[str, list[tuple[int, float]]] = {}
    for i, s in enumerate(samples):
        for k in s["kernels"]:
            if k.get("cost") and k["calls"] > 0:
                seen.setdefault(shape(k), []).append((i, k["cost"] / k["calls"]))
    spread = [max(c for _, c in v) / min(c for _, c in v) - 1 for v in seen.values() if len(v) > 1]
    models = _scored(samples)
    twin_ok = []
    for i, s in enumerate(samples):
        if s["family"] == corpus.KERNELS:
            continue
        total, calls = a, 0
        for k in s["kernels"]:
            if k.get("cost") is None:
                continue
            others = [c for j, c in seen.get(shape(k), []) if j != i]
            total += float(np.median(others)) * k["calls"] if others else k["cost"]
            calls += k["calls"]
        twin_ok.append(abs((total + b * calls) / s["latency"] - 1) <= 0.10)
    ok: dict[str, list[bool]] = {"compute": [], "memory": []}
    for model, _, test_idx in _fold_models(samples, seed, fit_xgboost, folds):
        ma, mb = model.overhead
        for i in test_idx:
            ks = models[i]["kernels"]
            per = model.kernel_costs(ks)
            calls = sum(int(k["calls"]) for k in ks)
            for exact in ok:  # the kernels of that kind measured, the others predicted
                total = sum(k["cost"] if k.get("cost") is not None and _computes(k) == (exact == "compute") else p
                            for k, p in zip(ks, per))
                ok[exact].append(abs((total + ma + mb * calls) / models[i]["latency"] - 1) <= 0.10)
    twins = (f"{len(spread)} kernels were measured in more than one build (the same features in different models): "
             f"their per-call costs spread by a median {np.median(spread):.0%} (slowest over fastest), and each "
             f"model's kernels replaced, where they can be, by their measurements in the other builds leave "
             f"{np.mean(twin_ok):.0%} of the models within ±10%: a kernel's cost carries over from build to build; "
             f"what is missed are the shapes not measured." if spread else
             "No kernel was measured in more than one build.")
    return (f"Where the seen-family error is. {twins} With the table's folds, the compute kernels (convolutions, "
            f"matmuls) taking their measured cost and the rest predicted put {np.mean(ok['compute']):.0%} of the "
            f"models within ±10%, the memory-bound ones measured and the compute ones predicted "
            f"{np.mean(ok['memory']):.0%}.")


def repeatability(samples: Sequence[Mapping[str, Any]]) -> str | None:
    """The measurement against itself, from the profile's timing rounds of each build (minutes apart): each round
    scored like a prediction against the lowest of the other rounds (the figure a sample keeps). No prediction of
    the kept figure can be expected to do better."""
    rounds = [list(s["latency_rounds"]) for s in samples if len(s.get("latency_rounds", ())) > 2]
    if not rounds:
        return None
    off = np.array([abs(r[i] / min(r[:i] + r[i + 1:]) - 1) for r in rounds for i in range(len(r))])
    spread = np.array([max(r) / min(r) - 1 for r in rounds])
    return (f"The measurement against itself: each of the {len(rounds)} models' {len(rounds[0])} timing rounds "
            f"(minutes apart) against the lowest of its other rounds is within ±10% in {np.mean(off <= 0.10):.0%} "
            f"of cases (median {np.median(off):.1%}); the slowest round is within 10% of the fastest for "
            f"{np.mean(spread <= 0.10):.0%} of the models.")


def transfer(base_samples: Sequence[dict[str, Any]], samples: Sequence[dict[str, Any]], base_key: str, key: str,
             seed: int, sizes: Sequence[int] = (5, 10)) -> list[str]:
    """A new target from a few samples (the HELP idea, simply): the related target's model as it is, a model
    trained on the new target's few samples alone, and the related model refitted on them (``nasc predict --train``
    does that below MIN_OWN_MODELS samples), each scored on the new target's other models."""
    base = predictor.train(base_samples, seed=seed, meta={"target": base_key})
    lines = [f"A new target from a few samples: `{key}` predicted with `{base_key}`'s model ({len(base_samples)} "
             f"models) as it is, with a model trained on n of `{key}`'s models alone, and with `{base_key}`'s model "
             f"refitted on those n (what `nasc predict --train` does below {predictor.MIN_OWN_MODELS} models); "
             f"scored on `{key}`'s other models (n drawn with numpy seed {seed}).", "",
             "| n | model | Spearman | Kendall τ | MAPE | within ±10% |", "|---:|---|---:|---:|---:|---:|"]
    order = np.random.default_rng(seed).permutation(len(samples))
    for n in sizes:
        few = [samples[i] for i in order[:n]]
        rest = [samples[i] for i in order[n:]]
        meas = [s["latency"] for s in rest]
        for name, model in ((f"`{base_key}` as it is", base), ("trained on the n alone", predictor.train(few, seed=seed)),
                            (f"`{base_key}` refitted on the n", predictor.train(few, seed=seed, base=base))):
            sc = predictor.scores([model.predict(s["kernels"])["latency"] for s in rest], meas)
            lines.append(f"| {n} | {name} | {_fmt(sc)} |")
    return lines


SEARCH_MODEL = "fashion_cnn"
SEARCH_SPACE = "simplify,fuse,prune?{macs=0.3..0.9/0.1 round-to=1|8},quantize?"


def search_screening(root: Path, trials: int, seed: int, sampler: str, budget: float | None, log: Any
                     ) -> tuple[list[str], dict[str, Any]]:
    """``nasc search`` on the bundled Fashion-MNIST CNN for ``cpu`` twice with the same seeded sampler: every trial
    built, then with the cost model (trained on the dataset under ``root``) screening. Compares the builds and the
    fronts (hypervolume of the built points' (-accuracy, latency, weight bytes), the same reference point)."""
    import json

    import bench_search

    import nasc
    from nasc.hw_search.costmodel import train_target

    examples = Path(nasc.__file__).resolve().parent / "examples"
    os.environ[perfdata.DIR_ENV] = str(root)  # the searches' own builds go to this dataset, not the user's
    train_target("cpu", seed=seed)
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_predictor_") as td:
        for name, screen in (("every trial built", False), ("cost model screening", True)):
            t0 = time.perf_counter()
            r = nasc.search(str(examples / f"{SEARCH_MODEL}.onnx"), "cpu", Path(td) / name.replace(" ", "_"),
                            space=SEARCH_SPACE, calib=str(examples / "fashion_test.npz"), trials=trials,
                            sampler=sampler, seed=seed, screen=screen, log=log, progress=False,
                            latency_budget_ms=budget)
            data = json.loads((r.out / "pareto.json").read_text())
            built = [m for m in data["measured"] if not m["values"].get("predicted")]
            runs[name] = {"seconds": time.perf_counter() - t0, "trials": data["trials"],
                          "screened": data.get("screened", 0), "cached": data["cached"],
                          "builds": len({json.dumps(m["values"], sort_keys=True) for m in built}),
                          "built": {m["pipeline"] for m in built},
                          "front": {p["pipeline"] for p in data["points"]}, "points": data["points"], "data": data}
    allpts = [p["values"] for run in runs.values() for p in run["points"]]
    ref = np.array([max(-v["accuracy"] for v in allpts) + 0.01, 1.1 * max(v["latency_ms"] for v in allpts),
                    1.1 * max(v["weights_bytes"] for v in allpts)])
    lines = [f"`nasc search examples/{SEARCH_MODEL}.onnx --target cpu --space \"{SEARCH_SPACE}\" --calib "
             f"examples/fashion_test.npz --trials {trials} --sampler {sampler} --seed {seed}"
             + (f" --latency-budget {budget}" if budget else "") + "`, without and with "
             f"`--screen` (the cost model trained on the dataset above; margin {SCREEN_MARGIN}). Builds: trials whose pipeline "
             "was compiled and timed (not screened out, not a repeat of an earlier pipeline); the front's points "
             "and the built trials close to it are timed again in rounds at the end of both runs, and the front is "
             "decided on those timings. *Reference front built*: the reference run's front pipelines that the run "
             "built (not screened out), whatever its own timings then made of them.", "",
             "| run | trials | builds | screened out | front points | hypervolume (accuracy, latency, weights) | "
             "front pipelines shared | reference front built | time |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = runs["every trial built"]["front"]
    for name, run in runs.items():
        hv = bench_search.hypervolume([[-p["values"]["accuracy"], p["values"]["latency_ms"],
                                        p["values"]["weights_bytes"]] for p in run["points"]], ref)
        run["hv"] = hv
        lines.append(f"| {name} | {run['trials']} | {run['builds']} | {run['screened']} | {len(run['front'])} | "
                     f"{hv:.4g} | {len(run['front'] & base)} of {len(base)} | {len(run['built'] & base)} of "
                     f"{len(base)} | {run['seconds']:.0f} s |")
    return lines, runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="cpu", help="cpu (this host) or mcu:BOARD (default cpu)")
    p.add_argument("--dataset", type=Path, default=None, help="a samples.jsonl (default: the target's dataset)")
    p.add_argument("--profile", action="store_true", help="profile the corpus into a fresh dataset first")
    p.add_argument("--budget", type=float, default=None, help="--profile: the corpus time budget in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", type=Path, default=None)
    p.add_argument("--transfer-from", type=Path, default=None, metavar="FILE.jsonl",
                   help="also score a related target's dataset refitted on a few of this target's samples")
    p.add_argument("--search-trials", type=int, default=30, help="trials of the screening comparison (0: skip it)")
    p.add_argument("--latency-budgets", default="none,1.0", metavar="MS,MS",
                   help="the screening comparison once per latency budget (none: no budget; a point predicted over "
                        "the budget is not built); default none,1.0")
    p.add_argument("--learners", default="xgboost,lightgbm", metavar="A,B",
                   help="learners compared on the same rows (lightgbm: pip install lightgbm==" + LIGHTGBM + ")")
    p.add_argument("--sampler", default="random", help="the screening comparison's sampler (random: both runs "
                   "draw the same pipelines, so the fronts compare point for point)")
    args = p.parse_args()
    from nasc.backends.tvm.kernels import FEATURES_VERSION
    from nasc.hw_search import kernel_tables

    tgt = kernel_tables.resolve(args.target)
    key = kernel_tables.key(tgt)
    t_profile = None
    if args.profile:
        from nasc.hw_search.profile import profile_corpus

        root = Path(tempfile.mkdtemp(prefix="nasc-bench-predictor-"))
        t0 = time.perf_counter()
        profile_corpus(args.target, budget_s=args.budget, root=root, log=print)
        t_profile = time.perf_counter() - t0
        path = root / key / perfdata.SAMPLES
    else:
        path = args.dataset or perfdata.target_dir(key) / perfdata.SAMPLES
    samples = perfdata.read_samples(path, FEATURES_VERSION)
    evaluations = {"xgboost": evaluate(samples, args.seed, fit_xgboost)}  # nasc's own: the tables below
    t_eval = evaluations["xgboost"]["seconds"]
    learners = args.learners.split(",")
    for name in learners:
        if name not in evaluations:
            evaluations[name] = evaluate(samples, args.seed, LEARNERS[name])
    models = _scored(samples)
    fams = sorted({s["family"] for s in models})
    what = (f"LLVM target `{key}`, {platform.machine()}" if tgt.kind == "cpu" else
            f"`{args.target}`: instructions under QEMU `-icount`, deterministic")
    head = (f"Produced by `python tools/bench_predictor.py --target {args.target}"
            f"{' --profile' if args.profile else ''}"
            f"{' --transfer-from <' + args.transfer_from.parent.name + ' dataset>' if args.transfer_from else ''}` on "
            f"{perfdata.host()} ({what}): {len(models)} models of "
            f"{len(fams)} families ({', '.join(fams)})"
            + (f" and {len(samples) - len(models)} single-layer kernel samples (training data only)"
               if len(samples) > len(models) else "")
            + f", {sum(len(s['kernels']) for s in samples)} kernels"
            + (f"; profiling the corpus took {t_profile:.0f} s" if t_profile else "")
            + f"; the {len(fams) + 5} trainings and predictions {t_eval:.0f} s.")
    parts = [head, "", *evaluations["xgboost"]["lofo_lines"], "", *evaluations["xgboost"]["seen_lines"], "",
             seed_spread(samples, args.seed)]
    again = repeatability(models)
    if again:
        parts += ["", again]
    parts += ["", error_sources(samples, args.seed)]
    if len(learners) > 1:
        parts += ["", *learners_table({name: evaluations[name] for name in learners})]
    if args.transfer_from:
        base_samples = perfdata.read_samples(args.transfer_from, FEATURES_VERSION)
        parts += ["", *transfer(base_samples, samples, str(base_samples[0]["target"]), key, args.seed)]
    if args.search_trials and tgt.kind == "cpu":
        root = Path(tempfile.mkdtemp(prefix="nasc-bench-predictor-search-"))
        (root / key).mkdir(parents=True)
        (root / key / perfdata.SAMPLES).write_text(path.read_text())
        for text in args.latency_budgets.split(","):
            budget = None if text.strip() == "none" else float(text)
            lines, _ = search_screening(root, args.search_trials, args.seed, args.sampler, budget, print)
            parts += ["", *lines]
    body = "\n".join(parts)
    print(body)
    if args.write:
        write_between_markers(args.write, body, "bench_predictor" if tgt.kind == "cpu" else f"bench_predictor_{key}")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    os.environ.setdefault("TVM_LOG_LEVEL", "1")
    main()
