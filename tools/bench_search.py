"""Search (issue 17): sampler efficiency against an exhaustive front, and models searched for microcontrollers.

    python tools/bench_search.py [--cases hv,vit-mcu,f411,minilm-cpu] [--write docs/benchmarks.md] [--plot docs/search-hv.png]
    python tools/bench_search.py --quick        # hv only: a 6-point space, 2 seeds (the test)

hv: NSGA-II, TPE and random search against the exhaustive front of a space small enough to enumerate, as
hypervolume against the number of trials.

Every point of the space (the digits CNN: optional pruning at five MAC ratios, then a mixed int8/int4 policy
under eleven flash budgets, ``quantize``) is built once with the real passes and measured as ``nasc search``
measures a trial for ``mcu:stm32f411`` with ``--estimate-only`` (accuracy on the held-out quarter of
examples/digits_test.npz, the planner's weight and arena bytes). Points the passes refuse (a flash budget no width mix reaches after that
pruning) are failed evaluations. Each sampler, configured as ``nasc search`` configures it
(``hw_search.study.make_sampler``), then runs seeded studies that look the figures up in that table, so the
samplers are compared on identical, deterministic evaluations. Hypervolume: of the feasible points found so far,
objectives as losses (-accuracy, weight bytes, arena bytes), against a reference point 10% beyond the worst of
the whole table; reported as a share of the exhaustive front's.

vit-mcu: ``nasc search`` on examples/fashion_vit.onnx for ``mcu:stm32f746`` (320 KB SRAM, 1 MB flash; MCUFormer's
board) with every trial built (flash with code, arena, instructions under QEMU Cortex-M7), on Fashion-MNIST
training images with labels; the pick (the smallest flash within a point of the float accuracy on the held-out
slice) is compiled and its C project run on QEMU (MPS2 AN500, Cortex-M7) on test images, against the float model
under ONNX Runtime on the same images.

f411: MobileNetV2-0.35 at 96x96 (a 2-class visual-wake-words head, as MLPerf Tiny's person detector) and the
DS-CNN-S keyword spotter, each searched for ``mcu:stm32f411`` (128 KB SRAM, 512 KB flash) with every trial built.
Their weights are seeded (no trained checkpoint exists offline), so the objective is fidelity to the float model
and the pick runs on QEMU Cortex-M4 against the float model's outputs; each head is refitted to its backbone (a
centred projection onto the features' principal directions), or every output would be nearly constant and any
variant would score a cosine of 1.

minilm-cpu: all-MiniLM-L6-v2 searched for ``cpu`` with a latency budget of half its float build's latency (pruning,
dropped sublayers, int8), each trial compiled with TVM and timed; the front's sentence-embedding cosine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

MARKER = "bench_search"
CASES = ("hv", "vit-mcu", "f411", "minilm-cpu")
TARGET = "mcu:stm32f411"
SPACE = ("simplify,fuse,prune?{macs=0.5..0.9/0.1 reconstruct=true},"
         "quant-policy{bits=8,4 flash=4000..9000/500},quantize")
SAMPLERS = ("nsga2", "tpe", "random")
SEEDS = 5
POPULATION = 8
#: the trial counts at which the samplers are compared, as shares of the exhaustive table's size
BUDGETS = (0.1, 0.25, 0.5)
GOAL = (0.95, 0.25)  # >= 95% of the exhaustive hypervolume with <= 25% of its evaluations
QUICK = {"space": "simplify,fuse,prune?{macs=0.8 reconstruct=true},quant-policy{bits=8,4 "
                  "flash=5000..7000/1000},quantize", "seeds": 2, "population": 3}


def table(space: Any, log: Any) -> tuple[dict[str, dict[str, float] | None], Any]:
    """Every pipeline of the space -> its figures (None when the passes refuse it), and the search problem."""
    import nasc
    from nasc.backends import fidelity
    from nasc.backends.targets import parse_target
    from nasc.hw_search.study import Problem, evaluate, limits_for, objectives_for, split

    model = ROOT / "examples" / "digits_cnn.onnx"
    calib = ROOT / "examples" / "digits_test.npz"
    graph = nasc.load(model)
    feeds = fidelity.load_calibration(str(calib), graph)
    with np.load(calib) as d:
        labels = d["label"]
    fit, fit_labels, held, held_labels = split(feeds, labels, 0.25, 0)
    tgt = parse_target(TARGET)
    problem = Problem(model, graph, tgt, space, fit, fit_labels, held, held_labels, fidelity.run_graph(graph, held),
                      0, objectives_for(tgt, True, build=False), limits_for(tgt, None, build=False), build=False)
    out: dict[str, dict[str, float] | None] = {}
    for params in space.grid():
        pipe = space.pipeline(params)
        if pipe in out:
            continue
        try:
            out[pipe] = evaluate(problem, pipe)
        except nasc.Error as e:
            out[pipe] = None
            log(f"  refused: {pipe}: {str(e)[:120]}")
        else:
            log(f"  {pipe}: " + ", ".join(f"{k} {v:.4g}" for k, v in out[pipe].items()))
    return out, problem


def hypervolume(points: list[list[float]], ref: np.ndarray) -> float:
    from optuna._hypervolume import compute_hypervolume

    inside = [p for p in points if all(np.asarray(p) < ref)]
    return float(compute_hypervolume(np.asarray(inside), ref)) if inside else 0.0


def run_sampler(kind: str, seed: int, n_trials: int, space: Any, figures: dict[str, dict[str, float] | None],
                problem: Any, ref: np.ndarray, population: int) -> tuple[list[float], list[float]]:
    """Hypervolume after each trial, and after each distinct evaluation, of one seeded study that reads the figures
    from the table. ``nasc search`` builds a pipeline once per study (a repeat reuses the build), so the second
    curve is the one the evaluation budget is about; the study runs until it has made ``n_trials`` trials and
    ``n_trials`` distinct evaluations, or ``4 * n_trials`` trials, whichever comes first."""
    import optuna

    from nasc.hw_search.study import losses, make_sampler, violations

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(directions=[o.direction for o in problem.objectives],
                                sampler=make_sampler(kind, space, population, seed))
    found: list[list[float]] = []
    curve: list[float] = []
    by_eval: list[float] = []
    seen: set[str] = set()
    while len(curve) < 4 * n_trials and (len(curve) < n_trials or len(by_eval) < n_trials):
        trial = study.ask()
        pipe, _ = space.sample(trial)
        new = pipe not in seen
        seen.add(pipe)
        values = figures[pipe]
        if values is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            viol = violations(values, problem.limits)
            for k, v in viol.items():
                trial.set_constraint(k, v)
            study.tell(trial, [values[o.name] for o in problem.objectives])
            if all(v <= 0 for v in viol.values()):
                found.append(losses([values], problem.objectives)[0])
        curve.append(hypervolume(found, ref))
        if new:
            by_eval.append(curve[-1])
    return curve[:n_trials], by_eval


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--quick", action="store_true", help="hv only, on a 6-point space and 2 seeds")
    p.add_argument("--write", type=Path, default=None, help="write the section between the bench_search markers")
    p.add_argument("--plot", type=Path, default=None, help="save hypervolume against trials as a PNG")
    args = p.parse_args(argv)
    import bench_tie

    cases = ["hv"] if args.quick else [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {','.join(CASES)}")
    log = lambda m: print(m, file=sys.stderr, flush=True)
    started = time.perf_counter()
    lines: list[str] = []
    if "hv" in cases:
        lines += ["## Samplers against the exhaustive front (digits CNN, mcu:stm32f411)", "",
                  *case_hv(args.quick, args.plot, log), ""]
    if "vit-mcu" in cases:
        lines += ["## A vision transformer for an STM32F746 (examples/fashion_vit.onnx)", "", *case_vit_mcu(log), ""]
    if "f411" in cases:
        lines += ["## MobileNetV2-0.35 and the DS-CNN for an STM32F411", "", *case_f411(log), ""]
    if "minilm-cpu" in cases:
        lines += ["## all-MiniLM-L6-v2 for cpu under half its float latency", "", *case_minilm_cpu(log), ""]
    cmd = " ".join(["python tools/bench_search.py", *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join([f"Measured on {bench_tie.machine()} by `{cmd}` ({time.strftime('%Y-%m-%d')}, "
                      f"{time.perf_counter() - started:.0f} s).", "", *lines]).rstrip() + "\n"
    print(text)
    if args.write:
        from doc_tables import write_between_markers

        write_between_markers(args.write, text, MARKER)
    return 0


def case_hv(quick: bool, plot: Path | None, log: Any) -> list[str]:
    from nasc.hw_search.space import Space
    from nasc.hw_search.study import losses, within

    started = time.perf_counter()
    space = Space.parse(QUICK["space"] if quick else SPACE)
    seeds = int(QUICK["seeds"] if quick else SEEDS)
    population = int(QUICK["population"] if quick else POPULATION)
    log(f"exhaustive: {space.size()} points of {space.text}")
    t0 = time.perf_counter()
    figures, problem = table(space, log)
    table_s = time.perf_counter() - t0
    ok = {k: v for k, v in figures.items() if v is not None}
    feasible = list(losses([v for v in ok.values() if within(v, problem.limits)], problem.objectives))
    worst = np.max(losses(list(ok.values()), problem.objectives), axis=0)
    ref = worst + 0.1 * np.abs(worst) + 1e-9
    full = hypervolume(feasible, ref)
    n = len(figures)
    curves: dict[str, list[list[float]]] = {}  # hypervolume after each trial
    evals: dict[str, list[list[float]]] = {}  # ... after each distinct evaluation (a build)
    for kind in SAMPLERS:
        runs = [run_sampler(kind, s, n, space, figures, problem, ref, population) for s in range(seeds)]
        curves[kind] = [c for c, _ in runs]
        evals[kind] = [e + [e[-1]] * (n - len(e)) if e else [0.0] * n for _, e in runs]
        log(f"{kind}: " + ", ".join(f"{b:.0%}: {_at(curves[kind], b, n) / full:.3f} / {_at(evals[kind], b, n) / full:.3f}"
                                    for b in BUDGETS))
    goal_n = max(1, round(GOAL[1] * n))
    lines = [f"{time.perf_counter() - started:.0f} s, of which {table_s:.0f} s building and measuring the {n} "
             "pipelines once.", "",
             f"Space: `{space.text}` for `{TARGET}` — {n} distinct pipelines, {len(ok)} built ({n - len(ok)} refused "
             f"by quant-policy: flash below what any width mix reaches after that pruning), {len(feasible)} within the "
             f"board's budgets; the exhaustive front has hypervolume {full:.4g} (objectives as losses: -accuracy, "
             f"weight bytes, arena bytes; reference point 10% beyond the worst measured). Each sampler: {seeds} seeded "
             f"studies, population / start-up trials {population}, trials looked up in the table (so every sampler "
             "sees the same deterministic figures); the cells are the median share of the exhaustive hypervolume.", "",
             "Two budgets. *Trials* counts every trial, including one that proposes a pipeline already tried. "
             "*Evaluations* counts distinct pipelines built: `nasc search` builds a pipeline once per study and answers "
             "a repeat from that build in milliseconds (`cached` in pareto.json), so the evaluations are what a search "
             "costs. A sampler whose study makes fewer distinct evaluations than the column within "
             f"{4 * n} trials keeps its last value.", "",
             "| sampler | budget | " + " | ".join(f"{max(1, round(b * n))} ({b:.0%})" for b in BUDGETS)
             + " | to reach 95% (median) |",
             "|---|---|" + "---:|" * (len(BUDGETS) + 1)]
    for kind in SAMPLERS:
        for label, cs in (("trials", curves[kind]), ("evaluations", evals[kind])):
            cells = [_at(cs, b, n) / full for b in BUDGETS]
            reach = [next((i + 1 for i, h in enumerate(c) if h >= GOAL[0] * full), None) for c in cs]
            got = [r for r in reach if r is not None]
            med = f"{statistics.median(got):.0f} ({len(got)} of {seeds} seeds)" if got else f"not within {n}"
            lines.append(f"| {kind} | {label} | " + " | ".join(f"{c:.1%}" for c in cells) + f" | {med} |")
    for label, by_kind in (("trials", curves), ("evaluations", evals)):
        best = {k: statistics.median(c[goal_n - 1] for c in by_kind[k]) / full for k in SAMPLERS}
        winner = max(best, key=lambda k: best[k])
        met = best[winner] >= GOAL[0]
        lines += ["", f"Goal: ≥ {GOAL[0]:.0%} of the exhaustive hypervolume with ≤ {GOAL[1]:.0%} of its evaluations "
                      f"({goal_n} {label}): **{'met' if met else 'not met'}** (best: {winner}, {best[winner]:.1%}; "
                      + ", ".join(f"{k} {v:.1%}" for k, v in best.items()) + ")."]
    if plot:
        _plot(plot, evals, full, n)
    return lines


def _at(curves: list[list[float]], share: float, n: int) -> float:
    """Median over seeds of the hypervolume after ``share`` of ``n`` trials or evaluations."""
    return statistics.median(c[max(1, round(share * n)) - 1] for c in curves)


# ---- vit-mcu -------------------------------------------------------------------------------------------------

VIT_TARGET = "mcu:stm32f746"
VIT_SPACE = ("simplify,fuse,tie-layers?{blocks=2 rank=8,16},quant-policy{bits=8,4 flash-share=0.15..0.25/0.025},"
             "quantize,recover?{steps=150}")
VIT_CALIB = 1000  # Fashion-MNIST training images (seeded), with labels: the passes fit on 75%, trials score on 25%
VIT_TRIALS = 16
VIT_TEST = 300  # test images the picked build runs on QEMU
VIT_PICK = "accuracy>={floor} minimize=flash"  # within a point of the float accuracy on the held-out slice


def case_vit_mcu(log: Any) -> list[str]:
    import tempfile

    import nasc
    from nasc.backends import fidelity
    from nasc.examples.datasets import load_fashion_mnist
    from nasc.hw_search.study import split

    model = ROOT / "examples" / "fashion_vit.onnx"
    xtr, ytr, xte, yte = load_fashion_mnist()
    idx = np.sort(np.random.default_rng(0).choice(len(xtr), VIT_CALIB, replace=False))
    g0 = nasc.load(model)
    with tempfile.TemporaryDirectory(prefix="bench_search_") as td:
        tmp = Path(td)
        calib = tmp / "calib.npz"
        np.savez(calib, image=xtr[idx], label=ytr[idx])
        feeds = [{"image": xtr[i:i + 1]} for i in idx]
        _, _, held, held_labels = split(feeds, ytr[idx], 0.25, 0)
        float_held = float(np.mean([np.argmax(o[0]) == y for o, y in
                                    zip(fidelity.run_graph(g0, held), held_labels, strict=True)]))
        floor = round(float_held - 0.01, 4)
        test = [{"image": xte[i:i + 1]} for i in range(VIT_TEST)]
        return [f"Calibration: {VIT_CALIB:,} Fashion-MNIST training images (numpy seed 0, with labels); the float "
                f"model scores {float_held:.2%} on the held-out quarter.", "",
                *_mcu_case(tmp, model, "fashion_vit", VIT_TARGET, VIT_SPACE, calib, VIT_TRIALS,
                           VIT_PICK.format(floor=floor), test, yte[:VIT_TEST], "Fashion-MNIST test images", log)]


# ---- stm32f411: MobileNetV2-0.35 at 96x96 and the DS-CNN ---------------------------------------------------------

F411_TARGET = "mcu:stm32f411"
F411_SPACE = "simplify,fuse,prune?{macs=0.4..0.9/0.1 reconstruct=true},quant-policy?{bits=8,4 flash-share=0.15..0.25/0.05},quantize"
F411_TRIALS = 10
F411_CALIB = 96  # inputs; the passes fit on 75%, trials score on 25%
F411_TEST = 20  # other inputs the picked build runs on QEMU
F411_PICK = "minimize=flash"  # seeded weights: no fidelity floor means anything (see case_f411)


def case_f411(log: Any) -> list[str]:
    """MobileNetV2-0.35 (96x96, a 2-class visual-wake-words head as MLPerf Tiny's) and the DS-CNN-S, each searched
    for an STM32F411 (128 KB SRAM, 512 KB flash) with every trial built. Seeded weights (no trained checkpoint of
    either exists offline), so the objective is fidelity to the float model, not accuracy; each head is fitted
    to its backbone's features (:func:`_fit_head`)."""
    import tempfile

    import torch
    from bench_recover import random_crops

    from nasc.examples import zoo

    lines: list[str] = [
        "Both networks have seeded weights (no trained checkpoint of either is available offline). Their memory, "
        "flash and instruction figures are those of the real architectures; their fidelity figures are not a "
        "quality measure: the input-dependent part of a seeded network's outputs is about as small as int8 "
        "rounding noise, so even `simplify,fuse,quantize` scores a low cosine. The pick is the smallest flash "
        "that fits, and its C build is checked against its own graph under ONNX Runtime.", ""]
    with tempfile.TemporaryDirectory(prefix="bench_search_") as td:
        tmp = Path(td)
        torch.manual_seed(0)
        mnv2 = zoo._mobilenet_classes()[2](num_classes=2, width_mult=0.35).eval()
        zoo._randomize_bn_stats(mnv2, 1)
        dscnn = zoo.ds_cnn()
        crops = random_crops(F411_CALIB + F411_TEST, size=96)
        rng = np.random.default_rng(0)
        mfcc = [rng.standard_normal((1, 1, 49, 10)).astype(np.float32) for _ in range(F411_CALIB + F411_TEST)]
        _fit_head(mnv2, mnv2.classifier[1], crops[:F411_CALIB])
        _fit_head(dscnn, dscnn.fc, mfcc[:F411_CALIB])
        for name, title, module, inputs in (
                ("mobilenet_v2_035", "MobileNetV2-0.35, 96x96, 2-class head", mnv2, crops),
                ("ds_cnn", "DS-CNN-S keyword spotting, 49x10 MFCC, 12 classes", dscnn, mfcc)):
            path = zoo.export_onnx(module, (torch.from_numpy(inputs[0]),), tmp / f"{name}.onnx", dynamo=False,
                                   input_names=["input"])
            calib = tmp / f"{name}.npz"
            np.savez(calib, input=np.concatenate(inputs[:F411_CALIB]))
            test = [{"input": x} for x in inputs[F411_CALIB:]]
            what = ("seeded 96x96 crops of scikit-image pictures" if name.startswith("mobilenet")
                    else "seeded Gaussian 49x10 frames (no speech data offline)")
            lines += [f"### {title} (seeded weights)", "",
                      f"Calibration: {F411_CALIB} {what}; test: {F411_TEST} more. The head is refitted to the seeded "
                      "backbone (`_fit_head`): a seeded head gives nearly the same output for every input.", "",
                      *_mcu_case(tmp, path, name, F411_TARGET, F411_SPACE, calib, F411_TRIALS, F411_PICK, test, None,
                                 "held-back inputs", log), ""]
    return lines


# ---- minilm-cpu: all-MiniLM-L6-v2 under half its float latency ----------------------------------------------

MINILM_SPACE = "simplify,fuse,prune?{macs=0.4..0.8/0.1 reconstruct=true round-to=32},drop-sublayers?{n=1..4},quantize?"
MINILM_CALIB = 240  # stdlib docstring sentences: the passes fit on 75%, trials score on 25%
MINILM_TRIALS = 14
MINILM_PICK = "fidelity>=0.9 minimize=latency"


def case_minilm_cpu(log: Any) -> list[str]:
    """all-MiniLM-L6-v2 (batch 1, 32 tokens) searched for ``cpu`` under half the float build's latency; the front
    points' sentence embeddings (mean-pooled over the mask) scored against the original's."""
    import json
    import tempfile

    import bench_tie

    import nasc
    from nasc.backends import fidelity
    from nasc.backends.targets import parse_target
    from nasc.examples import zoo
    from nasc.examples.datasets import docstring_sentences

    with tempfile.TemporaryDirectory(prefix="bench_search_") as td:
        tmp = Path(td)
        module, inputs = zoo.minilm(max_length=bench_tie.MINILM_TOKENS, sentences=zoo.SENTENCES[:1])
        model = zoo.export_onnx(module, inputs, tmp / "minilm.onnx", dynamo=False)
        sentences = docstring_sentences()
        order = np.random.default_rng(0).permutation(len(sentences))
        feeds = zoo.minilm_feeds([sentences[i] for i in order[:MINILM_CALIB]], bench_tie.MINILM_TOKENS)
        calib = tmp / "calib.npz"
        np.savez(calib, input_ids=np.concatenate([f["input_ids"] for f in feeds]),
                 attention_mask=np.concatenate([f["attention_mask"] for f in feeds]),
                 token_type_ids=np.concatenate([f["token_type_ids"] for f in feeds]))
        g0 = nasc.load(model)
        cpu = parse_target("cpu")
        float_ms = cpu.measure(nasc.optimize(g0, "simplify,fuse"), feeds[0], repeat=50)["latency_ms"]
        budget = round(float_ms / 2, 3)
        log(f"minilm float latency {float_ms:.2f} ms; budget {budget} ms")
        t0 = time.perf_counter()
        r = nasc.search(str(model), "cpu", tmp / "search", space=MINILM_SPACE, calib=str(calib),
                        trials=MINILM_TRIALS, sampler="tpe", population=6, latency_budget_ms=budget, log=log)
        search_s = time.perf_counter() - t0
        data = json.loads((tmp / "search" / "pareto.json").read_text())
        fit = fidelity.load_calibration(str(tmp / "search" / "calib_fit.npz"), g0)
        held = fidelity.load_calibration(str(tmp / "search" / "calib_heldout.npz"), g0)

        def embeddings(g: Any) -> np.ndarray:
            return np.concatenate([zoo.sentence_embedding(o[0], f["attention_mask"])
                                   for o, f in zip(fidelity.run_graph(g, held), held, strict=True)])

        e0 = embeddings(g0)
        every = _all_trials(tmp / "search")
        rows = ["| trial | pipeline | fidelity (outputs) | embedding cosine | latency ms (re-timed) | weights MB | "
                "within budget |", "|---:|---|---:|---:|---:|---:|---|"]
        for pt in sorted(data["points"], key=lambda q: q["values"]["latency_ms"]):
            g = nasc.optimize(g0, pt["pipeline"], fit, "cpu")
            cos = float(np.mean(np.sum(embeddings(g) * e0, axis=1)))
            v = pt["values"]
            rows.append(f"| {pt['trial']} | `{pt['pipeline']}` | {v['fidelity']:.4f} | {cos:.4f} | "
                        f"{v['latency_ms']:.2f} | {v['weights_bytes'] / 1e6:.1f} | {'yes' if pt['feasible'] else 'no'} |")
    every_rows = ["| trial | pipeline | fidelity (outputs) | latency ms (search timing) | within budget |",
                  "|---:|---|---:|---:|---|"]
    every_rows += [f"| {t['trial']} | `{t['pipeline']}` | {t['values']['fidelity']:.4f} | "
                   f"{t['values']['latency_ms']:.2f} | {'yes' if t['feasible'] else 'no'} |"
                   for t in sorted(every, key=lambda t: t["values"]["latency_ms"])]
    chosen = _pick(r.points, MINILM_PICK, "cpu", False)
    picked = (f"`--pick \"{MINILM_PICK}\"` chooses trial {chosen['trial']}: `{chosen['pipeline']}`."
              if chosen is not None else f"No point met `{MINILM_PICK}` within the budget.")
    return [f"all-MiniLM-L6-v2, batch 1, {bench_tie.MINILM_TOKENS} tokens; {MINILM_CALIB} stdlib docstring sentences "
            "(numpy seed 0), the passes fit on 75% and trials score on the held-out 25%. The float build "
            f"(`simplify,fuse`) runs in {float_ms:.2f} ms, so the budget is {budget} ms.", "",
            f"`nasc search minilm.onnx --target cpu --space \"{MINILM_SPACE}\" --trials {MINILM_TRIALS} "
            f"--latency-budget {budget} --pick \"{MINILM_PICK}\"`: {data['trials']} trials ({data['complete']} "
            f"complete, {data['failed']} failed, {data['cached']} reused a build) in {search_s:.0f} s, each compiled "
            "with TVM and timed briefly; the front settled on timings in rounds. The front, with each point's sentence "
            "embeddings (mean-pooled over the mask, L2-normalised) against the original's on the held-out sentences:",
            "", *rows, "", picked, "",
            "Every distinct pipeline the study built, fastest first (the budget keeps the slower ones off the front):",
            "", *every_rows]


def _fit_head(module: Any, linear: Any, inputs: list[np.ndarray]) -> None:
    """Make a seeded network's last Linear a centred projection onto the top principal directions of its input
    features on ``inputs``, scaled to unit variance per output. A seeded head on seeded features gives nearly the
    same logits for every input (the features' mean dominates), so the cosine to the float model would be ~1
    whatever a pass did; centred principal directions make every output vary with the input."""
    import torch

    feats: list[np.ndarray] = []
    hook = linear.register_forward_hook(lambda _m, args, _out: feats.append(args[0].detach().numpy()))
    with torch.no_grad():
        for x in inputs:
            module(torch.from_numpy(x))
    hook.remove()
    f = np.concatenate(feats).astype(np.float64)
    mean = f.mean(axis=0)
    _, sv, vt = np.linalg.svd(f - mean, full_matrices=False)
    k = linear.out_features
    w = vt[:k] / (sv[:k, None] / np.sqrt(len(f)) + 1e-12)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w.astype(np.float32)))
        linear.bias.copy_(torch.from_numpy((-w @ mean).astype(np.float32)))


def _all_trials(search_dir: Path) -> list[dict[str, Any]]:
    """Each distinct pipeline a search's study built, with its figures (from its SQLite storage)."""
    import optuna

    out: dict[str, dict[str, Any]] = {}
    for study in optuna.get_all_study_summaries(f"sqlite:///{search_dir / 'search.db'}"):
        loaded = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{search_dir / 'search.db'}")
        for t in loaded.trials:
            if t.state == optuna.trial.TrialState.COMPLETE and "values" in t.user_attrs and not t.user_attrs.get(
                    "cached"):
                out.setdefault(t.user_attrs["pipeline"], {"trial": t.number, "pipeline": t.user_attrs["pipeline"],
                                                          "values": t.user_attrs["values"],
                                                          "feasible": bool(t.user_attrs.get("feasible", True))})
    return list(out.values())


def _pick(points: list[dict[str, Any]], rule: str, target: str, labelled: bool) -> dict[str, Any] | None:
    """The point ``--pick rule`` would choose from the front, or None when none meets it."""
    from nasc.backends.targets import parse_target
    from nasc.errors import UsageError
    from nasc.hw_search.front import pick
    from nasc.hw_search.study import objectives_for

    try:
        return dict(pick(points, rule, objectives_for(parse_target(target), labelled)))
    except UsageError:
        return None


def _mcu_case(tmp: Path, model: Path, name: str, target: str, space: str, calib: Path, trials: int, pick: str,
              test: list[dict[str, np.ndarray]], test_labels: np.ndarray | None, test_what: str, log: Any) -> list[str]:
    """``nasc search`` for a board with every trial built, then the pick's C project run on QEMU on ``test``
    against the float model under ONNX Runtime on the same inputs."""
    import json

    import nasc
    from nasc.backends import fidelity
    from nasc.backends.mcu.boards import parse_board
    from nasc.backends.mcu.build import build_mcu
    from nasc.backends.mcu.verify import run_project

    g0 = nasc.load(model)
    board = parse_board(target)
    t0 = time.perf_counter()
    r = nasc.search(str(model), target, tmp / f"search_{name}", space=space, calib=str(calib), trials=trials,
                    sampler="tpe", population=max(2, trials // 2), log=log)
    search_s = time.perf_counter() - t0
    data = json.loads((tmp / f"search_{name}" / "pareto.json").read_text())
    table = (tmp / f"search_{name}" / "pareto.md").read_text().strip().splitlines()
    head = [f"`nasc search {model.name} --target {target} --space \"{space}\" --trials {trials} --pick \"{pick}\"`: "
            f"{data['trials']} trials ({data['complete']} complete, {data['failed']} failed, {data['cached']} reused a "
            f"build) in {search_s:.0f} s, every one built for the board and run once on QEMU for its instruction "
            "count. The front:", "", *table, ""]
    chosen = _pick(r.points, pick, target, test_labels is not None)
    if chosen is None:
        return [*head, f"No point met `{pick}` within the board's budgets."]
    fit = tmp / f"search_{name}" / "calib_fit.npz"
    with np.load(fit) as d:
        labels = d["label"] if "label" in d.files else None
    g = nasc.optimize(g0, chosen["pipeline"], fidelity.load_calibration(str(fit), g0), target, labels=labels)
    m = build_mcu(g, board, tmp / f"c_{name}", model=name, pipeline=chosen["pipeline"])
    t1 = time.perf_counter()
    on_qemu = run_project(tmp / f"c_{name}", "qemu", m.inputs, m.outputs, test)
    qemu_s = time.perf_counter() - t1
    ref = fidelity.run_graph(g0, test)
    cos = fidelity.compare(ref, on_qemu)["cosine"]
    agree = float(np.mean([np.argmax(a[0]) == np.argmax(b[0]) for a, b in zip(on_qemu, ref, strict=True)]))
    own = fidelity.compare(fidelity.run_graph(g, test), on_qemu)  # the C build against its own graph's definition
    f = m.facts
    fits = f["sram_bytes"] <= board.sram_bytes and (f["flash_bytes"] or 0) <= board.flash_bytes
    quality = (f"output cosine {cos:.4f} against the float model, top-1 agreement {agree:.2%}; against the picked "
               f"graph under ONNX Runtime (what the C code must compute) cosine {own['cosine']:.6f}, max abs err "
               f"{own['max_abs_err']:.3g}")
    if test_labels is not None:
        acc_qemu = float(np.mean([np.argmax(o[0]) == y for o, y in zip(on_qemu, test_labels, strict=True)]))
        acc_float = float(np.mean([np.argmax(o[0]) == y for o, y in zip(ref, test_labels, strict=True)]))
        quality = (f"accuracy {acc_qemu:.2%} against the float model's {acc_float:.2%} under ONNX Runtime on the same "
                   f"images ({(acc_qemu - acc_float) * 100:+.2f} pt), " + quality)
    return [*head,
            f"Picked trial {chosen['trial']}: `{chosen['pipeline']}`. Its C project: arena "
            f"{f['arena_bytes'] / 1024:.1f} KB (+ {f['stack_bytes_max_kernel']} B kernel stack = "
            f"{f['sram_bytes'] / 1024:.1f} KB of {board.sram_bytes // 1024} KB SRAM), flash "
            f"{(f['flash_bytes'] or 0) / 1024:.1f} KB (weights {f['weights_bytes'] / 1024:.1f} KB) of "
            f"{board.flash_bytes // 1024} KB: **{'fits' if fits else 'does not fit'}**. Run on QEMU "
            f"{board.qemu_machine} on {len(test)} {test_what} ({qemu_s:.0f} s): {quality}. Instructions are QEMU "
            "-icount counts (deterministic, not cycle-accurate)."]


def _plot(path: Path, curves: dict[str, list[list[float]]], full: float, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    xs = np.arange(1, n + 1)
    for kind, cs in curves.items():
        arr = np.asarray(cs) / full
        ax.plot(xs, np.median(arr, axis=0), label=f"{kind} (median)")
        ax.fill_between(xs, arr.min(axis=0), arr.max(axis=0), alpha=0.15)
    ax.axhline(GOAL[0], color="0.5", linestyle=":", label=f"{GOAL[0]:.0%} of exhaustive")
    ax.axvline(GOAL[1] * n, color="tab:red", linestyle="--", label=f"{GOAL[1]:.0%} of the evaluations")
    ax.set_xlabel("evaluations (distinct pipelines built)")
    ax.set_ylabel("hypervolume / exhaustive front's")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Search efficiency on the digits CNN for mcu:stm32f411")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
