"""Building a method from a medzsad checkpoint alone: the backbone comes from what the checkpoint records."""

from __future__ import annotations

import os

from medzsad.backbone.clip import ClipBackbone
from medzsad.backbone.config import BackboneConfig
from medzsad.deploy.errors import DeployError
from medzsad.engine.checkpoints import load_checkpoint, read_checkpoint_info
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


def load_method(path: str | os.PathLike[str], weights_path: str | None = None) -> ZsadMethod:
    """The method of a medzsad checkpoint on the backbone it records (CPU, eval).

    Raises:
        CheckpointError: the metadata JSON is missing or damaged, or the tensors do not fit.
        DeployError: the backbone's weight file is needed but not given.
    """
    info = read_checkpoint_info(path)
    config = backbone_config(info.backbone, weights_path, str(path))
    backbone = ClipBackbone.from_config(config)
    return load_checkpoint(path, backbone).eval()
