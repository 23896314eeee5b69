"""Building a method from a medzsad checkpoint alone: the backbone comes from what the checkpoint records."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from medzsad.backbone.clip import ClipBackbone
from medzsad.backbone.config import BackboneConfig
from medzsad.deploy.errors import DeployError
from medzsad.engine.checkpoints import load_checkpoint, load_official_checkpoint, read_checkpoint_info
from medzsad.engine.runtime import is_official_checkpoint
from medzsad.methods.base import ZsadMethod


def backbone_config(identity: dict[str, str], weights_path: str | None, source: str) -> BackboneConfig:
    """The :class:`BackboneConfig` of a checkpoint's backbone identity.

    ``weights_id`` is ``"random:<seed>"`` (tiny test configs), ``"file:<sha256 prefix>"`` (a local file,
    which must be given again as ``weights_path``) or an open_clip pretrained tag.
    """
    weights = identity.get("backbone_weights", "")
    name = identity.get("backbone", "")
    if weights_path:
        return BackboneConfig(model_name=name, pretrained=None, weights_path=weights_path)
    if weights.startswith("random:"):
        return BackboneConfig(model_name=name, pretrained=None, seed=int(weights.split(":", 1)[1]))
    if weights.startswith("file:"):
        raise DeployError(f"{source}: trained on a local weight file ({weights}); pass weights_path= to that file")
    return BackboneConfig(model_name=name, pretrained=weights or None)


def load_method(
    path: str | os.PathLike[str],
    weights_path: str | None = None,
    *,
    method: str | None = None,
    backbone: BackboneConfig | Mapping[str, Any] | None = None,
) -> ZsadMethod:
    """The method of a checkpoint on its backbone (CPU, eval).

    A medzsad checkpoint records its method and backbone. An official release ``.pth`` records neither:
    ``method`` names it, and the backbone is ``backbone`` (a :class:`BackboneConfig` or its dict), by
    default the official one (OpenAI ViT-L-14-336 at 518 px, from open_clip's hub or ``weights_path``).

    Raises:
        CheckpointError: the metadata JSON is missing or damaged, or the tensors do not fit.
        DeployError: the backbone's weight file is needed but not given; an official file without ``method``.
    """
    if is_official_checkpoint(path):
        if not method:
            raise DeployError(
                f"{path}: an official checkpoint does not record its method; pass method='anomalyclip' "
                "(or 'faprompt', 'cops')"
            )
        config = _backbone_config(backbone, weights_path)
        return load_official_checkpoint(path, method, ClipBackbone.from_config(config), None).eval()
    info = read_checkpoint_info(path)
    config = backbone_config(info.backbone, weights_path, str(path))
    return load_checkpoint(path, ClipBackbone.from_config(config)).eval()


def _backbone_config(backbone: BackboneConfig | Mapping[str, Any] | None, weights_path: str | None) -> BackboneConfig:
    if isinstance(backbone, BackboneConfig):
        return backbone
    settings = dict(backbone or {})
    if weights_path:
        settings["weights_path"] = str(weights_path)
    try:
        return BackboneConfig(**settings)
    except (TypeError, ValueError) as exc:
        raise DeployError(f"backbone: {exc}") from None
