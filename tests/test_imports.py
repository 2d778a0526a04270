"""edge_al is the line side: importing all of it must not pull in torch, onnx or nncf."""

from __future__ import annotations

import subprocess
import sys

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
