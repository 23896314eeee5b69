"""Helpers of the deployment tests: the tiny-backbone overrides and structured test images."""

from __future__ import annotations

import numpy as np
import torch

TINY = [
    "backbone.model_name=medzsad-tiny-fast",
    "backbone.pretrained=null",
    "method_config.image_size=224",
    "tracking.enabled=false",
    "device=cpu",
]


def textures(count: int, size: int = 224, seed: int = 0) -> torch.Tensor:
    """CLIP-normalised-like images ``[count, 3, size, size]`` with structure (stripes and a dark patch)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 1, (count, 3, size, size)).astype(np.float32)
    images += np.sin(np.arange(size) / 5.0)[None, None, None, :].astype(np.float32)
    images[:, :, 40:90, 60:120] -= 2.0
    return torch.from_numpy(images)
