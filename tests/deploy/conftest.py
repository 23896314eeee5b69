"""Fixtures for the deployment tests: one tiny checkpoint and one export per method and test session.

Exporting traces the whole graph (tens of seconds to minutes per method on a loaded CPU), so every
export is cached for the session and shared by the tests that need it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from medzsad.backbone.clip import BackboneConfig, ClipBackbone
from medzsad.cli.main import main
from medzsad.engine.checkpoints import save_checkpoint
from medzsad.methods.registry import method_class

TINY = [
    "backbone.model_name=medzsad-tiny-fast",
    "backbone.pretrained=null",
    "method_config.image_size=224",
    "tracking.enabled=false",
    "device=cpu",
]


@dataclass
class Deployed:
    """A method's tiny checkpoint and what ``medzsad export`` wrote for it."""

    method: str
    checkpoint: Path
    onnx: Path
    bundle: Path


@pytest.fixture(scope="session")
def tiny_backbone() -> ClipBackbone:
    return ClipBackbone.from_config(BackboneConfig(model_name="medzsad-tiny-fast", pretrained=None))


@pytest.fixture(scope="session")
def deployed(tmp_path_factory, tiny_backbone):
    """``deployed(name)``: checkpoint (seeded random prompts) and export of method ``name``, made once."""
    made: dict[str, Deployed] = {}

    def get(name: str) -> Deployed:
        if name not in made:
            root = tmp_path_factory.mktemp(f"deploy_{name}")
            cls = method_class(name)
            torch.manual_seed(0)
            checkpoint, _ = save_checkpoint(cls(tiny_backbone, cls.config_class(image_size=224)), root / "ckpt")
            overrides = [*TINY, f"method={name}", f"checkpoint={checkpoint}"]
            assert main(["export", "-o", str(root / "export"), *overrides]) == 0
            made[name] = Deployed(name, checkpoint, root / "export" / "model.onnx", root / "export" / "bundle")
        return made[name]

    return get


def textures(count: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """CLIP-normalised-like images ``[count, 3, size, size]`` with structure (stripes and a dark patch)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 1, (count, 3, size, size)).astype(np.float32)
    images += np.sin(np.arange(size) / 5.0)[None, None, None, :].astype(np.float32)
    images[:, :, 40:90, 60:120] -= 2.0
    return torch.from_numpy(images)
