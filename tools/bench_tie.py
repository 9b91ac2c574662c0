"""Layer tying: what ``tie-layers`` costs and saves on all-MiniLM-L6-v2 and on the shipped Fashion-MNIST ViT.

    python tools/bench_tie.py [--models minilm,vit] [--no-latency] [--no-mcu] [--write docs/benchmarks.md]
    python tools/bench_tie.py --quick        # the ViT only, two settings, no CPU or MCU builds (the test)

MiniLM (6 layers, exported by the TorchScript exporter, ``simplify,fuse``; sentences are stdlib docstrings,
``examples/datasets.docstring_sentences``, 32 tokens): the six projection matrices of every layer tied to
3, 2 or 1 unique blocks (cycle mapping, shared = mean of the tied layers) with correction ranks 0, 16, 64 and
full, each fitted by truncated SVD and by least squares on the layer's activations (the first 128 of 192
calibration sentences; ``tie-layers`` measures its error on the last 64). Columns: the encoder's unique
params, the ONNX file, the CPU latency of nasc's ``cpu`` build (default schedules; the fastest of 3 rounds
interleaved over all builds, each the median of 20 runs), and on 200 held-out sentences the mean cosine of the sentence embeddings to the
original's and how often each sentence's nearest neighbour among the others stays the same.

ViT (``examples/fashion_vit.onnx``: 6 blocks, dim 64): the same grid (ranks 0, 8, 16, full) with calibration
on 192 training images, accuracy on the full 10,000-image test set with ONNX Runtime; then MCU builds for
``mcu:stm32f746`` in float and in int8 (``quantize``), untied and tied, with the flash the weights and the code
take (arm-none-eabi-gcc object sizes: ``weights_bytes`` are the arrays, ``code_bytes`` every other object),
and each build's cosine and top-1 agreement with the original on its calibration images (training images).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEED = 0
MINILM_TOKENS = 32
CALIB, HELD = 192, 200
BLOCKS = (3, 2, 1)
RANKS = {"minilm": ("0", "16", "64", "full"), "vit": ("0", "8", "16", "full")}
LATENCY_ROUNDS, LATENCY_REPEAT = 3, 20


@dataclass
class Row:
    blocks: int
    rank: str
    fit: str
    encoder_params: int
    onnx_bytes: int = 0
    latency_ms: float | None = None
    cosine: float | None = None
    nn_agreement: float | None = None
    accuracy: float | None = None
    max_abs_err: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), cpu)
        flags = next((ln for ln in out.splitlines() if ln.startswith("Flags")), "")
        isa = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    except OSError:
        isa = "?"
    return f"{cpu} ({isa}), {os.cpu_count()} cores"


# ---- the models -----------------------------------------------------------------------------------------


def minilm_case(tmp: Path) -> tuple[Any, list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    import nasc
    from nasc.examples import zoo
    from nasc.examples.datasets import docstring_sentences

    module, inputs = zoo.minilm(max_length=MINILM_TOKENS, sentences=zoo.SENTENCES[:1])
    g = nasc.optimize(nasc.load(zoo.export_onnx(module, inputs, tmp / "minilm.onnx", dynamo=False)), "simplify,fuse")
    sentences = docstring_sentences()
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(sentences))
    calib = zoo.minilm_feeds([sentences[i] for i in order[:CALIB]], MINILM_TOKENS)
    held = zoo.minilm_feeds([sentences[i] for i in order[-HELD:]], MINILM_TOKENS)
    return g, calib, held


def vit_case(quick: bool) -> tuple[Any, list[dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    import nasc
    from nasc.examples.datasets import load_fashion_mnist

    g = nasc.optimize(nasc.load(ROOT / "examples" / "fashion_vit.onnx"), "simplify,fuse")
    x_train, _, x_test, y_test = load_fashion_mnist()
    idx = np.random.default_rng(SEED).permutation(len(x_train))[:CALIB]
    calib = [{"image": x_train[i:i + 1]} for i in idx]
    n = 1000 if quick else len(x_test)
    return g, calib, x_test[:n], y_test[:n]


# ---- measuring ------------------------------------------------------------------------------------------


def embeddings(graph: Any, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    from nasc.backends.fidelity import run_graph
    from nasc.examples import zoo

    outs = run_graph(graph, feeds)
    return np.concatenate([zoo.sentence_embedding(o[0], f["attention_mask"]) for o, f in zip(outs, feeds)])


def nearest(e: np.ndarray) -> np.ndarray:
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return np.argmax(sim, axis=1)


def vit_accuracy(graph: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy under ONNX Runtime (one session, one image per run: the export fixes batch 1)."""
    from nasc.backends.fidelity import run_graph

    logits = np.concatenate([o[0] for o in run_graph(graph, [{"image": x[i:i + 1]} for i in range(len(x))])])
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def cpu_build(graph: Any, out: Path) -> Path:
    import nasc

    nasc.compile(graph, "cpu", out, measure_latency=False, fidelity_batches=1)
    return out


def time_builds(builds: dict[Any, Path], feed: dict[str, np.ndarray]) -> dict[Any, float]:
    """The fastest of LATENCY_ROUNDS interleaved rounds over all builds, each the median of LATENCY_REPEAT runs
    (interleaved so that a busy moment of a shared machine does not land on one build only)."""
    from nasc.runtime import load

    models = {k: load(d) for k, d in builds.items()}
    best: dict[Any, float] = {}
    for _ in range(LATENCY_ROUNDS):
        for k, m in models.items():
            ms = m.latency_ms(feed, repeat=LATENCY_REPEAT, warmup=2, min_seconds=0.1)
            best[k] = min(best.get(k, ms), ms)
    return best


def tie(graph: Any, calib: list[dict[str, np.ndarray]], blocks: int, rank: str, fit: str, more: str = ""
        ) -> tuple[Any, dict]:
    import nasc

    g = nasc.optimize(graph, f"tie-layers{{blocks={blocks} rank={rank} fit={fit}{' ' + more if more else ''}}}",
                      calib=calib)
    return g, g.meta["passes"][-1]["details"]


#: one change at a time from K=2, rank 64, activation fit, cycle, mean, all six matrices (MiniLM)
ABLATION = ["", "mapping=sequence", "init=fit", "init=0", "weights=attention", "weights=^(intermediate|output)\\."]


def grid(name: str, quick: bool) -> list[tuple[int, str, str]]:
    if quick:
        return [(2, "0", "svd"), (2, "8", "activation")]
    return [(k, r, f) for k in BLOCKS for r in RANKS[name] for f in ("svd", "activation")
            if not (r == "full" and f == "activation")]  # full rank is exact whatever the fit


def run_minilm(tmp: Path, latency: bool, log: Any) -> tuple[Row, list[Row]]:
    from nasc.backends.onnx import export_onnx

    g0, calib, held = minilm_case(tmp)
    ref = embeddings(g0, held)
    ref_nn = nearest(ref)
    export_onnx(g0, tmp / "base.onnx")
    from nasc.passes.tie_find import find_repeats

    rep = find_repeats(g0).repeats[0]
    base = Row(6, "-", "untied", _encoder_params(rep), (tmp / "base.onnx").stat().st_size, cosine=1.0,
               nn_agreement=1.0, max_abs_err=0.0)
    builds: dict[Any, Path] = {}
    if latency:
        builds["base"] = cpu_build(g0, tmp / "cpu_base")
    rows = []
    for blocks, rank, fit in grid("minilm", False):
        t0 = time.perf_counter()
        g, d = tie(g0, calib, blocks, rank, fit)
        row = Row(blocks, rank, fit, d["encoder_params"][1], seconds=time.perf_counter() - t0,
                  max_abs_err=d["error"]["max_abs_err"])
        export_onnx(g, tmp / "t.onnx")
        row.onnx_bytes = (tmp / "t.onnx").stat().st_size
        e = embeddings(g, held)
        row.cosine = float(np.mean(np.sum(e * ref, axis=1)))
        row.nn_agreement = float(np.mean(nearest(e) == ref_nn))
        if latency and fit == "svd":  # the activation fit's graph has the same shapes
            builds[(blocks, rank)] = cpu_build(g, tmp / f"cpu_{blocks}_{rank}")
        rows.append(row)
        log(f"minilm K={blocks} rank={rank} fit={fit}: cos {row.cosine:.4f} nn {row.nn_agreement:.3f} "
            f"params {row.encoder_params:,} ({row.seconds:.0f}s)")
    if latency:
        ms = time_builds(builds, held[0])
        base.latency_ms = ms["base"]
        for r in rows:
            r.latency_ms = ms.get((r.blocks, r.rank)) if r.fit == "svd" else None
    ablation = []
    for more in ABLATION:
        g, d = tie(g0, calib, 2, "64", "activation", more)
        e = embeddings(g, held)
        ablation.append(Row(2, "64", more or "(as in the grid)", d["encoder_params"][1],
                            cosine=float(np.mean(np.sum(e * ref, axis=1))),
                            nn_agreement=float(np.mean(nearest(e) == ref_nn)), max_abs_err=d["error"]["max_abs_err"]))
        log(f"minilm ablation {more}: cos {ablation[-1].cosine:.4f}")
    base.extra["ablation"] = ablation
    return base, rows


def _encoder_params(rep: Any) -> int:
    from nasc.passes.tie import _params_of

    return _params_of(rep)


def run_vit(quick: bool, log: Any) -> tuple[Row, list[Row]]:
    from nasc.passes.tie_find import find_repeats

    g0, calib, x, y = vit_case(quick)
    base = Row(6, "-", "untied", _encoder_params(find_repeats(g0).repeats[0]), accuracy=vit_accuracy(g0, x, y))
    rows = []
    for blocks, rank, fit in grid("vit", quick):
        t0 = time.perf_counter()
        g, d = tie(g0, calib, blocks, rank, fit)
        row = Row(blocks, rank, fit, d["encoder_params"][1], accuracy=vit_accuracy(g, x, y),
                  max_abs_err=d["error"]["max_abs_err"], seconds=time.perf_counter() - t0)
        rows.append(row)
        log(f"vit K={blocks} rank={rank} fit={fit}: accuracy {row.accuracy:.4f} params {row.encoder_params:,}")
    return base, rows


MCU_BUILDS = [("untied", ""), ("K=2, rank 0", "tie-layers{blocks=2}"), ("K=1, rank 0", "tie-layers{blocks=1}"),
              ("K=2, rank 0, norms+biases shared", "tie-layers{blocks=2 share-norms=true share-biases=true}"),
              ("K=1, rank 0, norms+biases shared", "tie-layers{blocks=1 share-norms=true share-biases=true}"),
              ("K=2, rank 8, activation fit", "tie-layers{blocks=2 rank=8 fit=activation}")]


def run_mcu(tmp: Path, log: Any) -> list[dict[str, Any]]:
    import nasc

    _, calib, _, _ = vit_case(True)
    out = []
    for precision in ("float", "int8"):
        for label, tie_pass in MCU_BUILDS:
            passes = ",".join(p for p in ("simplify,fuse", tie_pass, "quantize" if precision == "int8" else "") if p)
            d = tmp / f"mcu_{precision}_{len(out)}"
            art = nasc.compile(ROOT / "examples" / "fashion_vit.onnx", "mcu:stm32f746", d, passes=passes,
                               calib=calib)
            r = art.report
            out.append({"build": label, "precision": precision, "passes": passes, "weights": r["weights_bytes"],
                        "code": r.get("code_bytes"), "flash": r.get("flash_bytes"), "arena": r["arena_bytes"],
                        "cosine": r["fidelity"].get("cosine"), "top1": r["fidelity"].get("top1_agreement")})
            log(f"mcu {precision} {label}: weights {r['weights_bytes']:,} code {r.get('code_bytes')}")
    return out


# ---- tables ---------------------------------------------------------------------------------------------


def _m(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def minilm_table(base: Row, rows: list[Row], latency: bool) -> list[str]:
    head = "| unique blocks | rank | fit | encoder params | × fewer | model.onnx | " + \
        ("CPU latency | " if latency else "") + "cosine (held-out) | NN agreement | max abs err (calib) |"
    out = [head, "|" + "---|" * (head.count("|") - 1)]

    def line(r: Row) -> str:
        lat = (f"{r.latency_ms:.2f} ms | " if r.latency_ms is not None else "(same as svd) | ") if latency else ""
        return (f"| {r.blocks} | {r.rank} | {r.fit} | {_m(r.encoder_params)} | "
                f"{base.encoder_params / r.encoder_params:.2f} | {r.onnx_bytes / 1e6:.1f} MB | {lat}"
                f"{r.cosine:.4f} | {r.nn_agreement:.1%} | {r.max_abs_err:.3g} |")
    out.append(line(base).replace("| 6 | - | untied |", "| 6 (original) | - | - |"))
    out += [line(r) for r in rows]
    return out


def ablation_table(base: Row, rows: list[Row]) -> list[str]:
    out = ["| change (K=2, rank 64, activation fit) | encoder params | cosine (held-out) | NN agreement | max abs err |",
           "|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.fit.replace('|', chr(92) + '|')} | {_m(r.encoder_params)} | {r.cosine:.4f} | "
                   f"{r.nn_agreement:.1%} | {r.max_abs_err:.3g} |")
    return out


def vit_table(base: Row, rows: list[Row]) -> list[str]:
    out = ["| unique blocks | rank | fit | encoder params | × fewer | accuracy | change |", "|---|---|---|---|---|---|---|"]
    out.append(f"| 6 (original) | - | - | {_m(base.encoder_params)} | 1.00 | {base.accuracy:.2%} | |")
    for r in rows:
        assert r.accuracy is not None and base.accuracy is not None
        out.append(f"| {r.blocks} | {r.rank} | {r.fit} | {_m(r.encoder_params)} | "
                   f"{base.encoder_params / r.encoder_params:.2f} | {r.accuracy:.2%} | "
                   f"{(r.accuracy - base.accuracy) * 100:+.2f} pt |")
    return out


def mcu_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| build | precision | weight flash | × less | code flash | total flash | arena | cosine | top-1 agreement |",
           "|---|---|---|---|---|---|---|---|---|"]
    base = {r["precision"]: r for r in rows if r["build"] == "untied"}
    for r in rows:
        b = base[r["precision"]]
        code = f"{r['code']:,} B" if r["code"] is not None else "n/a"
        flash = f"{r['flash']:,} B" if r["flash"] is not None else "n/a"
        out.append(f"| {r['build']} | {r['precision']} | {r['weights']:,} B | {b['weights'] / r['weights']:.2f} | "
                   f"{code} | {flash} | {r['arena']:,} B | {r['cosine']:.5f} | {r['top1']:.1%} |")
    return out


def goals(minilm: tuple[Row, list[Row]] | None, mcu: list[dict[str, Any]] | None) -> list[str]:
    out = []
    if minilm is not None:
        base, rows = minilm
        full = [r for r in rows if r.rank == "full"]
        out.append(f"- full rank reproduces the original: max abs error {max(r.max_abs_err or 0 for r in full):.2g} "
                   "on the calibration sentences (goal ≤ 1e-4)")
        pairs = [(s, a) for s in rows for a in rows if s.fit == "svd" and a.fit == "activation"
                 and (s.blocks, s.rank) == (a.blocks, a.rank) and s.rank not in ("0", "full")
                 and base.encoder_params / a.encoder_params >= 2]
        wins = sum(a.cosine > s.cosine for s, a in pairs)  # type: ignore[operator]
        out.append(f"- at ≥ 2× fewer encoder params, the activation fit beats the SVD fit in {wins} of {len(pairs)} "
                   "settings (held-out cosine)")
    if mcu is not None:
        for prec in ("float", "int8"):
            b = next(r for r in mcu if r["precision"] == prec and r["build"] == "untied")
            for r in mcu:
                if r["precision"] != prec or "rank 0" not in r["build"]:
                    continue
                k = int(r["build"].split(",")[0].split("=")[1])
                want = 0.8 * 6 / k
                code = "n/a" if r["code"] is None or b["code"] is None else f"{b['code']:,} → {r['code']:,} B"
                out.append(f"- MCU {prec}, {r['build']}: weight flash falls {b['weights'] / r['weights']:.2f}× "
                           f"(goal ≥ 0.8 × N/K = {want:.1f}×; the patch embedding, position embedding and head "
                           f"are not tied); code flash {code}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="minilm,vit", help="comma-separated subset of minilm,vit")
    p.add_argument("--no-latency", action="store_true", help="skip the CPU builds (latency column)")
    p.add_argument("--no-mcu", action="store_true", help="skip the MCU builds of the ViT")
    p.add_argument("--quick", action="store_true", help="the ViT only, two settings on 1,000 test images")
    p.add_argument("--write", type=Path, default=None, help="write the tables between the bench_tie markers")
    args = p.parse_args(argv)
    models = ["vit"] if args.quick else args.models.split(",")
    latency = not (args.no_latency or args.quick)
    log = (lambda m: print(m, file=sys.stderr, flush=True))
    started = time.perf_counter()
    lines = [f"Measured on {machine()} by `python tools/bench_tie.py {' '.join(argv or sys.argv[1:])}`"
             f" ({time.strftime('%Y-%m-%d')}).", ""]
    minilm = None
    mcu = None
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if "minilm" in models:
            minilm = run_minilm(tmp, latency, log)
            lines += ["## all-MiniLM-L6-v2: six projection matrices per layer tied", "",
                      *minilm_table(*minilm, latency), "",
                      "What else was tried, one change at a time:", "",
                      *ablation_table(minilm[0], minilm[0].extra["ablation"]), ""]
        if "vit" in models:
            base, rows = run_vit(args.quick, log)
            lines += ["## Fashion-MNIST ViT (6 blocks): accuracy after tying", "", *vit_table(base, rows), ""]
            if not (args.no_mcu or args.quick):
                mcu = run_mcu(tmp, log)
                lines += ["## Fashion-MNIST ViT on `mcu:stm32f746`", "", *mcu_table(mcu), ""]
    lines += ["## Goals", "", *goals(minilm, mcu), "",
              f"Total time {time.perf_counter() - started:.0f} s."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from doc_tables import write_between_markers

        write_between_markers(args.write, text, "bench_tie")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
