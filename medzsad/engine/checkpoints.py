"""Prompt checkpoints: safetensors for the tensors, a small JSON for what they belong to.

A medzsad checkpoint is a pair ``<name>.safetensors`` + ``<name>.json``. The JSON records the method,
its resolved config, the backbone (architecture, weight id and sha256), the image size and the
versions that wrote it, so a checkpoint is refused when it is loaded into another method or onto
another backbone. Official release checkpoints (``.pth`` with ``{"prompt_learner": state_dict}``) load
through ``torch.load(weights_only=True)``: nothing is ever unpickled.

Writes are atomic: tensors and metadata go to temporary files in the target folder and are renamed
into place, so an interrupted run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import medzsad
from medzsad.backbone.clip import ClipBackbone
from medzsad.engine.config import ConfigError, from_mapping
from medzsad.methods.base import ZsadMethod
from medzsad.methods.registry import method_class
from medzsad.utils.files import atomic_path, atomic_write_text

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used here (wrong method, other backbone, unreadable file)."""


@dataclass
class CheckpointInfo:
    """Metadata stored beside the tensors."""

    method: str
    method_config: dict[str, Any]
    backbone: dict[str, str]
    image_size: int
    training: dict[str, Any]
    versions: dict[str, str]
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _versions() -> dict[str, str]:
    import open_clip

    return {
        "medzsad": medzsad.__version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
    }


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(tensors, metadata)`` paths for a checkpoint given with or without its suffix."""
    base = Path(path)
    if base.suffix in {".safetensors", ".json"}:
        base = base.with_suffix("")
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def save_checkpoint(
    method: ZsadMethod, path: str | os.PathLike[str], training: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Save ``method.prompt`` tensors and metadata atomically; returns the two paths written."""
    tensor_path, meta_path = checkpoint_paths(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in method.prompt.state_dict().items()}
    info = CheckpointInfo(
        method=method.name,
        method_config=method.config.to_dict(),
        backbone=method.backbone.identity(),
        image_size=method.image_size,
        training=dict(training or {}),
        versions=_versions(),
    )
    with atomic_path(tensor_path, fsync=True) as tmp:
        save_file(tensors, tmp, metadata={"medzsad_method": method.name})
    atomic_write_text(meta_path, json.dumps(info.to_json(), indent=2, sort_keys=True))
    return tensor_path, meta_path


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read the JSON metadata of a medzsad checkpoint."""
    _, meta_path = checkpoint_paths(path)
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: checkpoint metadata not found (expected beside the .safetensors)")
    try:
        data = json.loads(meta_path.read_text())
        return CheckpointInfo(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{meta_path}: not a medzsad checkpoint description ({exc})") from None


def check_compatible(info: CheckpointInfo, method_name: str, backbone: ClipBackbone, source: str) -> None:
    """Refuse a checkpoint trained for another method or on another backbone."""
    if info.method != method_name:
        raise CheckpointError(f"{source}: checkpoint is for method {info.method!r}, not {method_name!r}")
    ours = backbone.identity()
    theirs = info.backbone
    if theirs.get("backbone") != ours["backbone"]:
        raise CheckpointError(
            f"{source}: trained on backbone {theirs.get('backbone')!r}, this model uses {ours['backbone']!r}"
        )
    their_sha, our_sha = theirs.get("backbone_sha256"), ours["backbone_sha256"]
    if their_sha and our_sha and their_sha != our_sha:
        raise CheckpointError(
            f"{source}: trained on other backbone weights (sha256 {theirs['backbone_sha256'][:12]}…, "
            f"loaded {ours['backbone_sha256'][:12]}…)"
        )
    if not theirs.get("backbone_sha256") and theirs.get("backbone_weights") != ours["backbone_weights"]:
        raise CheckpointError(
            f"{source}: trained on backbone weights {theirs.get('backbone_weights')!r}, "
            f"loaded {ours['backbone_weights']!r}"
        )


def load_checkpoint(
    path: str | os.PathLike[str],
    backbone: ClipBackbone,
    expected_method: str | None = None,
    config_overrides: Mapping[str, Any] | None = None,
) -> ZsadMethod:
    """Build the method a medzsad checkpoint describes, on ``backbone``, with its trained prompts.

    Args:
        path: the checkpoint (``.safetensors``, ``.json`` or the common stem).
        backbone: the frozen CLIP; must be the one the checkpoint was trained on.
        expected_method: refuse the checkpoint if it is for another method.
        config_overrides: method config keys to change (e.g. a test-time ``sigma``); training-time
            settings stored in the checkpoint are kept otherwise.
    """
    tensor_path, meta_path = checkpoint_paths(path)
    info = read_checkpoint_info(path)
    check_compatible(info, expected_method or info.method, backbone, str(meta_path))
    cls = method_class(info.method)
    stored = {k: v for k, v in info.method_config.items() if k not in cls.config_class.retired_keys}
    config = build_method_config(cls, {**stored, **dict(config_overrides or {})}, str(meta_path))
    method = cls(backbone, config)
    if not tensor_path.is_file():
        raise CheckpointError(f"{tensor_path}: checkpoint tensors not found")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # safetensors raises its own error type for truncated or corrupt files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"{tensor_path}: not a readable .safetensors file, truncated or corrupt ({reason})"
        ) from None
    try:
        method.prompt.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{tensor_path}: tensors do not fit {info.method} ({str(exc)[:300]})") from None
    return method


def build_method_config(cls: type[ZsadMethod], values: Mapping[str, Any], source: str):
    """The method's config dataclass from plain values; unknown keys or wrong types name the key."""
    try:
        return from_mapping(cls.config_class, dict(values), "method_config")
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from None


def load_official_checkpoint(
    path: str | os.PathLike[str], method_name: str, backbone: ClipBackbone, config_overrides: Mapping[str, Any] | None
) -> ZsadMethod:
    """Load an official release ``.pth`` (``{"prompt_learner": state_dict}``) without unpickling objects."""
    source = Path(path)
    try:
        blob = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{source}: not a readable official checkpoint ({exc.__class__.__name__})") from None
    state = blob.get("prompt_learner", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: expected {{'prompt_learner': state_dict}}")
    cls = method_class(method_name)
    method = cls(backbone, build_method_config(cls, dict(config_overrides or {}), str(source)))
    try:
        method.load_official_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return method
