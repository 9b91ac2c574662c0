"""The layering of DESIGN.md: ir/, passes/ and report/ never import torch, onnx, onnxruntime or tvm."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"torch", "onnx", "onnxruntime", "tvm", "onnx_graphsurgeon", "onnxscript", "transformers"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    mods: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module.split(".")[0])
    return mods


@pytest.mark.parametrize("package", ["ir", "passes", "report"])
def test_no_forbidden_import_statements(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files or package == "passes"
    offenders = {str(f.relative_to(ROOT)): sorted(imported_modules(f) & FORBIDDEN) for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_importing_ir_loads_none_of_them():
    code = (
        "import sys, nasc.ir, nasc.ir.analysis, nasc.ir.text, nasc.ir.verifier\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_check_itself_catches_an_import(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("import numpy\nfrom onnx import helper\nimport torch.nn as nn\n")
    assert imported_modules(f) & FORBIDDEN == {"onnx", "torch"}


@pytest.mark.parametrize("package", ["ir", "passes", "frontends"])
def test_no_backend_imports(package: str) -> None:
    """Passes learn about the target only through the PassContext (its budgets, estimator and runner); frontends
    read models without any backend (what a backend writes and a frontend reads back is agreed in the frontend)."""
    offenders = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        names = {n.module for n in ast.walk(ast.parse(f.read_text(), str(f)))
                 if isinstance(n, ast.ImportFrom) and n.module} | \
            {a.name for n in ast.walk(ast.parse(f.read_text(), str(f))) if isinstance(n, ast.Import) for a in n.names}
        bad = sorted(m for m in names if m == "nasc.backends" or m.startswith("nasc.backends."))
        if bad:
            offenders[str(f.relative_to(ROOT))] = bad
    assert offenders == {}
