"""report.html from report.json: one self-contained page (styles, script and SVG plots inline; nothing fetched).

Every section is built from the report's data and appears only when the build has that data: the summary and
fidelity certificate, the passes, the per-layer table, MCU memory (live bytes, the arena over time, flash),
kernel latency (cpu/gpu), quantization, pruning, tying, recovery, and the search front a ``--pick`` came from.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nasc.report import plots

Row = Sequence[Any]

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:0 0 10px}h3{font-size:14px;margin:14px 0 6px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 18px;margin:14px 0}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;background:#f0f2f5;padding:1px 4px;
border-radius:3px;word-break:break-all}
.sub{color:#5a6272;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #e3e6eb;border-radius:6px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:18px}.card span{font-size:12px;color:#5a6272}
.warn{background:#fff6e0;border:1px solid #f0c36d;border-radius:6px;padding:8px 12px;margin:6px 0;font-size:13px}
.bad{color:#b3261e;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:12px;margin:6px 0}
th,td{border-bottom:1px solid #e6e8ec;padding:4px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap;overflow-wrap:normal}
th{white-space:nowrap}
table.sortable th{cursor:pointer;user-select:none;background:#f3f5f8}
table.sortable th:after{content:" \\2195";color:#9aa1ad}
.scroll{max-height:480px;overflow:auto}
figure{margin:8px 0}figure svg{max-width:100%;height:auto}figcaption{font-size:12px;color:#5a6272}
"""

_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows),asc=th.dataset.dir!=='asc';
      th.dataset.dir=asc?'asc':'desc';
      rows.sort(function(a,b){
        var x=a.cells[i].dataset.v!==undefined?a.cells[i].dataset.v:a.cells[i].textContent,
            y=b.cells[i].dataset.v!==undefined?b.cells[i].dataset.v:b.cells[i].textContent,
            nx=parseFloat(x),ny=parseFloat(y),c;
        if(!isNaN(nx)&&!isNaN(ny)){c=nx-ny;}else{c=String(x).localeCompare(String(y));}
        return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""


def write(out_dir: str | os.PathLike[str], report: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/report.html`` from ``report`` (default: ``out_dir/report.json``) and return its path."""
    d = Path(out_dir)
    data = report if report is not None else json.loads((d / "report.json").read_text())
    path = d / "report.html"
    tmp = d / ".report.html.tmp"
    tmp.write_text(render(data), encoding="utf-8")
    tmp.replace(path)
    return path


def render(report: Mapping[str, Any]) -> str:
    """The page for one build's report.json."""
    sections = [s for s in (build(report) for build in _SECTIONS) if s]
    title = f"nasc build: {Path(str(report.get('model', 'model'))).name} for {report.get('target', '?')}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body><main>{''.join(sections)}</main>"
            f"<script>{_SCRIPT}</script></body></html>\n")


# ---- helpers ---------------------------------------------------------------------------------------------------

def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _section(key: str, title: str, *parts: str) -> str:
    return f"<section id=\"{key}\" data-section=\"{key}\"><h2>{_e(title)}</h2>{''.join(p for p in parts if p)}</section>"


def _figure(svg: str | None, caption: str, key: str) -> str:
    if not svg:
        return ""
    return f"<figure data-plot=\"{key}\">{svg}<figcaption>{_e(caption)}</figcaption></figure>"


def _table(head: Sequence[str], rows: Iterable[Row], numeric: Sequence[int] = (), sortable: bool = False,
           key: str = "") -> str:
    num = set(numeric)
    cls = " class=\"sortable\"" if sortable else ""
    th = "".join(f"<th{' class=n' if i in num else ''}>{_e(h)}</th>" for i, h in enumerate(head))
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            if isinstance(c, tuple):  # (shown html, sort value)
                shown, value = c
                cells.append(f"<td{' class=n' if i in num else ''} data-v=\"{_e(value)}\">{shown}</td>")
            else:
                cells.append(f"<td{' class=n' if i in num else ''}>{_e('' if c is None else c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    wrap = " class=\"scroll\"" if len(body) > 25 else ""
    return (f"<div{wrap}><table{cls} data-table=\"{key}\"><thead><tr>{th}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= k:
            return f"{n / k:.1f} {unit}"
    return f"{int(n)} B"


def _count(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, k in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= k:
            return f"{n / k:.2f}{unit}"
    return f"{int(n)}"


def _num(n: float | None, fmt: str = ",") -> tuple[str, float] | str:
    return ("", float("nan")) if n is None else (_e(format(n, fmt)), float(n))


def _card(value: str, label: str) -> str:
    return f"<div class=\"card\"><b>{value}</b><span>{_e(label)}</span></div>"


def _passes(report: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    return [p for p in report.get("passes", []) if str(p.get("pass", "")).split("{")[0] == name]


# ---- sections --------------------------------------------------------------------------------------------------

def _summary(r: Mapping[str, Any]) -> str:
    s = r.get("summary", {})
    pb = r.get("param_bytes", {})
    cards = [_card(_count(s.get("nodes")), "nodes"), _card(_count(s.get("params")), "parameters"),
             _card(_count(s.get("macs")), "MACs per inference"),
             _card(f"{_bytes(pb.get('before'))} → {_bytes(pb.get('after'))}", "weights before → after")]
    if "arena_bytes" in r:
        cards.append(_card(_bytes(r["sram_bytes"]) if "sram_bytes" in r else _bytes(r["arena_bytes"]),
                           "SRAM (arena + kernel stack)"))
        cards.append(_card(_bytes(r.get("flash_bytes")), "flash (code + weights)"))
    lat = r.get("latency_ms")
    if lat:
        cards.append(_card(f"{lat['nasc']:.3f} ms", f"latency (ONNX Runtime {lat['onnxruntime']:.3f} ms)"))
    head = (f"<h1>{_e(Path(str(r.get('model', ''))).name or 'model')} → {_e(r.get('target', '?'))}</h1>"
            f"<p class=\"sub\">pipeline <code>{_e(r.get('pipeline') or '(none)')}</code>"
            + (f" · compiled in {r['compile_time_s']:.1f} s" if "compile_time_s" in r else "") + "</p>")
    warnings = "".join(f"<div class=\"warn\" data-warning>{_e(w)}</div>" for w in r.get("warnings", []))
    return _section("summary", "Summary", head, f"<div class=\"cards\">{''.join(cards)}</div>", warnings,
                    _certificate(r))


def _certificate(r: Mapping[str, Any]) -> str:
    rows: list[Row] = []
    checks = dict(r.get("verify") or {}) or ({"": r["fidelity"]} if r.get("fidelity") else {})
    for mode, f in checks.items():
        where = f.get("ran_on", mode) or "this build"
        for label, fig in ((f"{where} vs {f.get('reference', 'the original model')}", f),
                           (f"{where} vs the quantized (QDQ) graph", f.get("vs_quantized_graph"))):
            if not fig:
                continue
            cos = f"{fig['cosine']:.6f}"
            if fig.get("uninformative"):
                cos = f"<span class=\"bad\" title=\"{_e(fig['uninformative'])}\">{cos} (uninformative)</span>"
            rows.append((label, f.get("inputs", ""), _num(fig["max_abs_err"], ".3g"), (cos, fig["cosine"]),
                         _num(fig.get("top1_agreement"), ".3f")))
    if not rows:
        return "<p class=\"sub\">No fidelity check ran for this build (see the warnings).</p>"
    out = "<h3>Fidelity certificate</h3>" + _table(["comparison", "inputs", "max abs err", "cosine",
                                                    "top-1 agreement"], rows, numeric=(2, 3, 4), key="fidelity")
    acc = r.get("accuracy") or next((f.get("accuracy") for f in checks.values() if f.get("accuracy")), None)
    if acc:
        out += (f"<p>Accuracy on {acc['samples']} labelled samples: <b>{acc['nasc']:.2%}</b> "
                f"(original model {acc['reference']:.2%}, {100 * (acc['nasc'] - acc['reference']):+.2f} pt)</p>")
    return out


def _pass_table(r: Mapping[str, Any]) -> str:
    rows = []
    for p in r.get("passes", []):
        b, a = p.get("before", {}), p.get("after", {})
        notes = "<br>".join(_e(n) for n in p.get("notes", []))
        rows.append((p.get("pass"), (_e(p.get("summary", "")) + (f"<br><span class=sub>{notes}</span>" if notes
                                                                 else ""), 0),
                     f"{_count(b.get('params'))} → {_count(a.get('params'))}",
                     f"{_count(b.get('macs'))} → {_count(a.get('macs'))}", _num(p.get("time_s"), ".2f")))
    if not rows:
        return ""
    return _section("passes", "Passes", _table(["pass", "what it did", "params", "MACs", "seconds"], rows,
                                                numeric=(2, 3, 4), key="passes"))


def _layers(r: Mapping[str, Any]) -> str:
    layers = r.get("layers") or []
    if not layers:
        return ""
    total = sum(x["macs"] for x in layers) or 1
    mcu = any("step" in x for x in layers)
    rows = []
    for x in layers:
        row: list[Any] = [x["name"], x["op"], x.get("scope", ""),
                          "×".join(map(str, x["shape"])) if x.get("shape") else "", _num(x["macs"]),
                          _num(100 * x["macs"] / total, ".1f"), _num(x["params"]), _num(x.get("bits"), "d")]
        if mcu:
            off = x.get("arena_offset")
            row += [_num(x.get("step"), "d"), off if isinstance(off, str) else _num(off), _num(x.get("arena_bytes"))]
        rows.append(row)
    head = ["node", "op", "scope", "output shape", "MACs", "MAC share %", "params", "weight bits"]
    note = ("Every compute node of the built graph (quantize / dequantize nodes folded into the layer they feed). "
            "Click a column to sort.")
    if mcu:
        head += ["step", "arena offset", "output bytes"]
        note += (" On the MCU, the step of the call sequence that computes a layer (found through its weights; "
                 "activations fused into it have none) and where its output sits in the arena.")
    return _section("layers", "Layers", f"<p class=\"sub\">{_e(note)}</p>",
                    _table(head, rows, numeric=tuple(range(4, len(head))), sortable=True, key="layers"))


def _mcu(r: Mapping[str, Any]) -> str:
    if "arena_bytes" not in r:
        return ""
    steps = r.get("steps", [])
    board = r.get("board", {})
    live = plots.mcu_live(steps, r["arena_bytes"], board.get("sram_bytes"))
    arena = plots.mcu_buffers(r.get("buffers", []), r["arena_bytes"], len(steps))
    flash = plots.flash_split(r.get("weights_bytes", 0), r.get("code_bytes"), board.get("flash_bytes"))
    rows = [(s["step"], s["kernel"], s.get("layer", ""), _num(s["live_bytes"]), _num(s.get("workspace_bytes", 0)),
             ", ".join(f"{k} @ {v}" for k, v in s.get("outputs", {}).items())) for s in steps]
    bufs = [(b["name"], b.get("written_by", ""), _num(b["offset"]), _num(b["bytes"]), b["first"], b["last"])
            for b in r.get("buffers", [])]
    text = (f"<p>Board <b>{_e(board.get('name', '?'))}</b> ({_e(board.get('core', ''))}): arena "
            f"{_bytes(r['arena_bytes'])} (the planner's lower bound for its order: "
            f"{_bytes(r.get('arena_lower_bound_bytes'))}; every tensor in its own buffer: "
            f"{_bytes(r.get('naive_bytes'))}) + kernel stack {_bytes(r.get('stack_bytes_max_kernel', 0))} of "
            f"{_bytes(board.get('sram_bytes'))} SRAM; flash {_bytes(r.get('flash_bytes'))} of "
            f"{_bytes(board.get('flash_bytes'))}.</p>")
    return _section("mcu", "Microcontroller memory", text,
                    _figure(live, "Live arena bytes at each step of the call sequence.", "mcu-live"),
                    _figure(arena, "The arena over time: each tensor at its offset, from the step that writes it to "
                                   "the last that reads it.", "mcu-arena"),
                    _figure(flash, "Flash: weights and code (arm-none-eabi-size) against the board's.", "mcu-flash"),
                    "<h3>Call sequence</h3>",
                    _table(["step", "kernel", "layer", "live bytes", "workspace bytes", "outputs"], rows,
                           numeric=(0, 3, 4), sortable=True, key="steps"),
                    "<h3>Arena buffers</h3>" if bufs else "",
                    _table(["buffer", "written by", "offset", "bytes", "first step", "last step"], bufs,
                           numeric=(2, 3, 4, 5), sortable=True, key="buffers") if bufs else "")


def _latency(r: Mapping[str, Any]) -> str:
    kernels = r.get("kernel_ms") or []
    if not kernels:
        return ""
    total = sum(k["ms"] for k in kernels) or 1.0
    rows = [(k["kernel"], k["calls"], _num(k["ms"], ".4f"), _num(100 * k["ms"] / total, ".1f"))
            for k in sorted(kernels, key=lambda k: -k["ms"])]
    return _section("latency", "Latency per kernel",
                    "<p class=\"sub\">Median time of each compiled kernel per inference, measured with the VM's "
                    "instrumentation (host timer around each call, so calls of a few microseconds carry its "
                    "overhead).</p>",
                    _figure(plots.kernel_latency(kernels), "The slowest kernels.", "kernel-latency"),
                    _table(["kernel", "calls", "ms per inference", "share %"], rows, numeric=(1, 2, 3),
                           sortable=True, key="kernels"))


def _quant(r: Mapping[str, Any]) -> str:
    policy = r.get("quant_policy") or {}
    q = r.get("quantization")
    if not policy and not q:
        return ""
    notes = [n for p in _passes(r, "quant-policy") for n in p.get("notes", [])]
    rows = [(k, v.get("op", ""), _num(v.get("bits"), "d"), _num(v.get("sensitivity"), ".3g"), _num(v.get("bytes")))
            for k, v in policy.items()]
    text = ""
    if q:
        text = (f"<p>Weights {_bytes(q.get('weights_bytes_before'))} → {_bytes(q.get('weights_bytes_after'))}; "
                f"activation ranges from {q.get('samples', '?')} calibration samples ({_e(q.get('calib', ''))}).</p>")
    text += "".join(f"<p class=\"sub\">{_e(n)}</p>" for n in notes)
    return _section("quantization", "Quantization", text,
                    _figure(plots.quant_policy(policy), "Each layer's sensitivity at each width; the square is the "
                                                        "width the policy chose.", "quant-policy"),
                    _table(["layer", "op", "bits", "sensitivity", "weight bytes"], rows, numeric=(2, 3, 4),
                           sortable=True, key="quant") if rows else "")


def _prune(r: Mapping[str, Any]) -> str:
    parts = []
    for p in _passes(r, "prune"):
        groups = p.get("details", {}).get("groups", [])
        if not groups:
            continue
        rows = [(g.get("name", g.get("id")), g.get("scope", ""), g["units"], g["kept"], g["removed"])
                for g in groups]
        parts += [f"<h3><code>{_e(p['pass'])}</code></h3>",
                  _figure(plots.prune_groups(groups), "Channels (or heads, FFN units) kept per group.",
                          "prune-groups"),
                  _table(["group", "scope", "units", "kept", "removed"], rows, numeric=(2, 3, 4), sortable=True,
                         key="prune")]
    return _section("pruning", "Pruning", *parts) if parts else ""


def _tie(r: Mapping[str, Any]) -> str:
    parts = []
    for p in _passes(r, "tie-layers"):
        d = p.get("details", {})
        rows = [(b.get("block"), ", ".join(map(str, b.get("layers", []))), b.get("weights"), b.get("rank"),
                 _num(b.get("shared_params")), _num(b.get("correction_params")), _num(b.get("energy_mean"), ".4f"))
                for b in d.get("blocks", [])]
        enc = d.get("encoder_params")
        parts += [f"<h3><code>{_e(p['pass'])}</code></h3>",
                  f"<p>Parameters of the repeated region {_count(enc[0])} → {_count(enc[1])}.</p>" if enc else "",
                  _table(["block", "layers sharing it", "weights", "correction rank", "shared params",
                          "correction params", "energy kept (mean)"], rows, numeric=(4, 5, 6), key="tie")]
    return _section("tying", "Layer tying", *parts) if parts else ""


def _recover(r: Mapping[str, Any]) -> str:
    parts = []
    for p in _passes(r, "recover"):
        d = p.get("details", {})
        before, after = d.get("before", {}), d.get("after", {})
        line = ", ".join(f"{k} {before[k]:.4g} → {after[k]:.4g}" for k in before if k in after
                         and isinstance(before[k], int | float))
        parts += [f"<h3><code>{_e(p['pass'])}</code></h3>",
                  f"<p>{d.get('steps', '?')} steps, best at step {d.get('best_step', '?')}, "
                  f"{d.get('time_s', '?')} s; held-out {_e(line)}.</p>",
                  _figure(plots.recover_history(d.get("history", [])), "Distillation loss against training steps.",
                          "recover-history")]
    return _section("recovery", "Accuracy recovery", *parts) if parts else ""


def _search(r: Mapping[str, Any]) -> str:
    s = r.get("search")
    if not s:
        return ""
    points = s.get("points", [])
    quality = s.get("quality", "fidelity")
    costs = [k for k in ("flash_bytes", "latency_ms", "weights_bytes", "arena_bytes")
             if points and k in points[0].get("values", {})]
    fig = plots.pareto(points, quality, costs[0], s.get("chosen")) if costs else None
    names = sorted({k for p in points for k in p.get("values", {})})
    rows = [(p.get("trial"), *(_num(p["values"].get(k), ".4g") for k in names), "yes" if p.get("feasible") else "no",
             (f"<code>{_e(p.get('pipeline', ''))}</code>", p.get("pipeline", ""))) for p in points]
    return _section("search", "Search front",
                    f"<p>{s.get('trials', '?')} trials; this build is trial {s.get('chosen')} "
                    f"(<code>{_e(s.get('rule', ''))}</code>).</p>",
                    _figure(fig, f"The Pareto front: {quality} against {costs[0] if costs else ''}.", "search-front"),
                    _table(["trial", *names, "feasible", "pipeline"], rows, numeric=tuple(range(1, len(names) + 1)),
                           sortable=True, key="search"))


_SECTIONS: tuple[Callable[[Mapping[str, Any]], str], ...] = (
    _summary, _pass_table, _layers, _mcu, _latency, _quant, _prune, _tie, _recover, _search)
