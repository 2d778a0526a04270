"""edge_al is the line side: importing all of it must not pull in torch, onnx or nncf."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CODE = """
import importlib, pkgutil, sys
import edge_al
for m in pkgutil.walk_packages(edge_al.__path__, "edge_al."):
    if m.name.endswith("__main__"):
        continue
    importlib.import_module(m.name)
import edge_al.cli
edge_al.cli.build_parser()
bad = sorted(k for k in sys.modules if k.split(".")[0] in {"torch", "torchvision", "onnx", "nncf", "onnxscript"})
print(",".join(bad))
"""


def test_edge_al_never_imports_torch_onnx_nncf() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"edge_al imported: {out.stdout.strip()}"


BUILD_SIDE = {"torch", "torchvision", "onnx", "onnxscript", "nncf", "export"}


def _named_modules(tree: ast.AST) -> list[str]:
    """Every module an ``import``/``from`` statement names, and every string passed to
    ``importlib.import_module`` or ``__import__`` (the lazy ways around a banned-import rule)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if fname in {"import_module", "__import__"}:
                names.append(node.args[0].value)
    return names


def test_no_edge_al_file_names_the_build_side() -> None:
    """The torch boundary is a folder rule: no file under edge_al/ imports torch, onnx, nncf or export/,
    not at the top, not lazily, not through importlib (the build side plugs in through entry points)."""
    root = Path(__file__).resolve().parents[1] / "edge_al"
    offenders = {
        str(path.relative_to(root.parent)): bad
        for path in sorted(root.rglob("*.py"))
        if (bad := sorted({n for n in _named_modules(ast.parse(path.read_text())) if n.split(".")[0] in BUILD_SIDE}))
    }
    assert offenders == {}


def test_the_scan_sees_lazy_imports() -> None:
    """The scan above must catch each form it claims to: a plain import, a from-import and importlib."""
    code = "import torch\nfrom export.workflow import x\nimport importlib\nimportlib.import_module('nncf.quantize')\n__import__('onnx')\n"
    assert sorted(_named_modules(ast.parse(code))) == ["export.workflow", "importlib", "nncf.quantize", "onnx", "torch"]
