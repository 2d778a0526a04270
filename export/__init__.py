"""The build side of edge-al: PyTorch training, torch -> ONNX -> OpenVINO IR -> NNCF INT8, gates, publish.

The only package that imports torch, onnx or nncf (install ``edge-al[train]``). Submodules:

- ``export.train``     ``train()``, checkpoints, the ``EmbeddingClassifier`` wrapper
- ``export.convert``   ``export_checkpoint()``: ONNX, IR with embedded preprocessing, INT8, gates, publish
- ``export.workflow``  glue to the store: ``val_mask_for()``, ``train_from_store()``, ``export_from_store()``

Names are imported lazily, so ``import export.workflow`` does not pay for nncf until it exports.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

# torch logs "No CUDA runtime is found, using CUDA_HOME=..." at WARNING on every import of
# torch.utils.cpp_extension (reached through torch.onnx and nncf) on a CPU-only box: noise for an export
# that never uses CUDA. Only that module's WARNING records are dropped; its errors still show.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

__all__ = [
    "ExportGateWarning",
    "TrainResult",
    "export_checkpoint",
    "export_from_store",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "train_from_store",
    "training_fingerprint",
    "val_mask_for",
]

_WHERE = {
    "train": "export.train",
    "TrainResult": "export.train",
    "save_checkpoint": "export.train",
    "load_checkpoint": "export.train",
    "export_checkpoint": "export.convert",
    "ExportGateWarning": "export.convert",
    "val_mask_for": "export.workflow",
    "train_from_store": "export.workflow",
    "export_from_store": "export.workflow",
    "training_fingerprint": "export.workflow",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
