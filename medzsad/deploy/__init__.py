"""Deployment: the one-image/one-volume :class:`Detector`, ONNX export, MONAI bundles, onnxruntime.

Names are imported on first use, so ``medzsad.deploy.onnx_runtime`` and ``medzsad.deploy.errors``
load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "Detection": "medzsad.deploy.detector",
    "Detector": "medzsad.deploy.detector",
    "DeployError": "medzsad.deploy.errors",
    "OnnxModel": "medzsad.deploy.onnx_runtime",
    "Thresholds": "medzsad.deploy.detector",
    "export_onnx": "medzsad.deploy.export",
    "write_bundle": "medzsad.deploy.bundle",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    try:  # a submodule, as ``from medzsad.deploy import bundle`` (MONAI bundle configs) asks for it
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'medzsad.deploy' has no attribute {name!r}") from None
