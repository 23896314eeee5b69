"""Turning a :class:`RunConfig` into a device, a backbone and a method."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medzsad.backbone.clip import ClipBackbone, default_device
from medzsad.engine.checkpoints import load_checkpoint, load_official_checkpoint
from medzsad.engine.config import RunConfig, method_config_for
from medzsad.methods.base import ZsadMethod
from medzsad.methods.registry import method_class


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; anything else is passed to ``torch.device``."""
    return default_device() if name == "auto" else torch.device(name)


def loader_workers(requested: int | None, device: torch.device) -> int:
    """Data-loading processes: ``requested`` if given; automatically, ``min(8, CPU cores - 1)`` when the
    model runs on a GPU and 0 on a CPU, where workers would take cores from the model itself.

    One core reads and resizes about 22 RGB PNGs of 1024² or 80 CT DICOM slices of 512² per second
    (``scripts/bench_pipeline.py``), so a GPU needs several workers to be kept busy."""
    if requested is not None:
        return requested
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def build_backbone(config: RunConfig) -> ClipBackbone:
    """The frozen CLIP described by ``config.backbone``."""
    return ClipBackbone.from_config(config.backbone)


def is_official_checkpoint(path: str | Path) -> bool:
    """Official releases are ``.pth``/``.pt`` files; medzsad checkpoints are safetensors + JSON."""
    return Path(path).suffix in {".pth", ".pt", ".bin"}


def build_method(config: RunConfig, backbone: ClipBackbone | None = None) -> ZsadMethod:
    """The method of ``config``: from its checkpoint when one is given, freshly initialised otherwise.

    Method options given in ``config.method_config`` override those stored in a medzsad checkpoint
    (e.g. a test-time ``sigma``); the rest of the checkpoint's settings are kept.
    """
    backbone = backbone if backbone is not None else build_backbone(config)
    if config.checkpoint:
        if is_official_checkpoint(config.checkpoint):
            return load_official_checkpoint(config.checkpoint, config.method, backbone, config.method_config)
        return load_checkpoint(config.checkpoint, backbone, config.method, config.method_config)
    return method_class(config.method)(backbone, method_config_for(config))
