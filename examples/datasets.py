"""Real labelled data sets that work offline, as numpy arrays (needs only numpy).

* Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (``make test`` installs it) puts the four idx files
  under ``/usr/share/datasets/fashion-mnist/``: 60,000 training and 10,000 test images, 28x28 grayscale,
  10 classes (T-shirt/top, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot).
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import os
import random
import re
from pathlib import Path

import numpy as np

__all__ = ["FASHION_CLASSES", "FASHION_MNIST_DIR", "load_fashion_mnist"]

FASHION_MNIST_DIR = Path(os.environ.get("NASC_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """One gzipped idx file (big-endian header: magic, then one uint32 per dimension; uint8 data)."""
    raw = gzip.decompress(path.read_bytes())
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError(f"{path}: magic {int(header[0]):#x}, expected {magic:#x} (not an idx file of this kind)")
    dims = tuple(int(d) for d in header[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {data.size} bytes of data for dimensions {dims}")
    return data.reshape(dims)


def load_fashion_mnist(directory: str | os.PathLike[str] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST as ``(x_train, y_train, x_test, y_test)``, in the files' order.

    Images are float32 ``[N, 1, 28, 28]`` scaled to [-1, 1] (``pixel / 255 * 2 - 1``, like the digits example);
    labels are int64 in 0..9 (names in ``FASHION_CLASSES``). ``directory`` defaults to the Debian package's
    ``/usr/share/datasets/fashion-mnist`` (or ``$NASC_FASHION_MNIST_DIR``); a missing file raises
    ``FileNotFoundError`` that names the package to install.
    """
    d = Path(directory) if directory is not None else FASHION_MNIST_DIR
    out: list[np.ndarray] = []
    for split in ("train", "t10k"):
        images, labels = d / f"{split}-images-idx3-ubyte.gz", d / f"{split}-labels-idx1-ubyte.gz"
        for p in (images, labels):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: install the Debian package dataset-fashion-mnist")
        x = _read_idx(images, 0x803, 3).astype(np.float32)
        y = _read_idx(labels, 0x801, 1).astype(np.int64)
        if len(x) != len(y):
            raise ValueError(f"{images.name} has {len(x)} images but {labels.name} has {len(y)} labels")
        out += [(x[:, None, :, :] / 255.0 * 2.0 - 1.0).astype(np.float32), y]
    return out[0], out[1], out[2], out[3]


#: modules whose docstrings give English sentences for text models (offline, see DATA.md)
STDLIB_MODULES = ("argparse", "bisect", "collections", "csv", "datetime", "decimal", "difflib", "fractions",
                  "functools", "heapq", "itertools", "json", "logging", "pathlib", "random", "shutil", "statistics",
                  "string", "tempfile", "textwrap")


#: ~100 modules whose docstrings, methods' included, give about 5,000 sentences: text to train on (recover)
STDLIB_MODULES_WIDE = (*STDLIB_MODULES, "abc", "ast", "asyncio", "base64", "calendar", "cmd", "codecs",
                       "concurrent.futures", "configparser", "contextlib", "copy", "dataclasses", "dis", "email",
                       "enum", "filecmp", "fnmatch", "ftplib", "getopt", "gettext", "glob", "gzip", "hashlib", "hmac",
                       "html", "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress", "locale", "lzma",
                       "mailbox", "mimetypes", "numbers", "operator", "optparse", "os", "pickle", "pickletools",
                       "pkgutil", "platform", "plistlib", "poplib", "pprint", "queue", "quopri", "reprlib", "sched",
                       "secrets", "selectors", "shelve", "shlex", "smtplib", "socket", "socketserver", "sqlite3", "ssl",
                       "stat", "struct", "subprocess", "symtable", "tarfile", "threading", "timeit", "tokenize", "trace",
                       "traceback", "types", "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings",
                       "wave", "weakref", "xml.dom.minidom", "zipfile", "zipimport")


def docstring_sentences(modules: tuple[str, ...] = STDLIB_MODULES, methods: bool = False) -> list[str]:
    """English sentences (40-200 characters) from the docstrings of stdlib modules, deduplicated, in a fixed
    seeded order: calibration and held-out sets are fixed slices of it (e.g. the first 16 calibrate, the next
    16 are held out). The default 20 modules give about 650; ``STDLIB_MODULES_WIDE`` with ``methods`` (the
    docstrings of the modules' classes' methods too) about 5,000."""
    seen: dict[str, None] = {}

    def add(doc: str | None) -> None:
        for s in re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split())):
            if 40 <= len(s) <= 200 and s[0].isupper() and s.endswith("."):
                seen.setdefault(s, None)

    for name in modules:
        module = importlib.import_module(name)
        for _, member in sorted(vars(module).items()):
            add(inspect.getdoc(member) if callable(member) else None)
            if methods and inspect.isclass(member) and member.__module__ == module.__name__:
                for _, meth in sorted(vars(member).items()):
                    add(inspect.getdoc(meth) if callable(meth) else None)
    sentences = sorted(seen)
    random.Random(0).shuffle(sentences)
    return sentences
