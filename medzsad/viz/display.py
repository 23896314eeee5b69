"""Display pixels from model inputs: the inverse of the CLIP normalisation of the data transforms."""

from __future__ import annotations

import numpy as np
import torch

from medzsad.data.transforms import CLIP_MEAN, CLIP_STD

__all__ = ["display_images"]


def display_images(images: torch.Tensor) -> np.ndarray:
    """Undo the CLIP normalisation: ``[B, 3, H, W]`` float -> ``[B, H, W, 3]`` uint8 on the host.

    The constants are the ones :class:`~medzsad.data.transforms.ClipImageTransform` applied, so the
    pixels are the windowed/scaled image the model saw (not the raw scan values).
    """
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    pixels = ((images.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()
