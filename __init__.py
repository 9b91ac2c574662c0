"""nasc: a model compiler for deployment.

    import nasc
    g = nasc.load("model.onnx", input_shapes={"x": (1, 3, 224, 224)})
    print(g.summary()["macs"])
    nasc.export_onnx(g, "out.onnx")
"""

from nasc import ir
from nasc.api import Artifact, compile, export_onnx, from_torch, load, optimize, search, to_torch
from nasc.errors import (
    DeviceError,
    Error,
    ExportError,
    ModelLoadError,
    ParseError,
    ShapeError,
    UnsupportedModelError,
    UsageError,
    VerificationError,
)
from nasc.ir.core import Graph

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "DeviceError",
    "Error",
    "ExportError",
    "Graph",
    "ModelLoadError",
    "ParseError",
    "ShapeError",
    "UnsupportedModelError",
    "UsageError",
    "VerificationError",
    "compile",
    "export_onnx",
    "from_torch",
    "ir",
    "load",
    "optimize",
    "search",
    "to_torch",
]
