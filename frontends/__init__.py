"""Model frontends: ONNX (``onnx.py``) and PyTorch (``torch.py``), each -> a verified ``ir.Graph``."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from nasc.errors import UsageError

#: the largest dim accepted in ``input_shapes`` and ``--input-shape`` (TVM and torch index with 32-bit ints in places)
MAX_DIM = 2**31 - 1


def check_input_shape(name: str, shape: Sequence[Any], what: str = "input shape") -> None:
    """Refuse an ``input_shapes`` entry whose dims are not integers in 1..MAX_DIM, naming the entry and the dim."""
    bad = [d for d in shape if isinstance(d, bool) or not isinstance(d, numbers.Integral) or not 1 <= int(d) <= MAX_DIM]
    if bad:
        raise UsageError(f"{what} {name}={'x'.join(map(str, shape))}: dims must be integers >= 1 and <= {MAX_DIM}, "
                         f"got {bad[0]!r}")
