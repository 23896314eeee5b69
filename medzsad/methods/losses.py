"""Losses of the AnomalyCLIP lineage, written to match the reference implementations' arithmetic."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on class *probabilities* (not logits), as the reference ``FocalLoss``.

    Args:
        probs: ``[B, C, H, W]`` probabilities.
        target: ``[B, H, W]`` integer class map (0/1 masks).
        gamma: focusing exponent.
        smooth: the one-hot target is clamped to ``[smooth/(C-1), 1-smooth]`` and ``smooth`` is added to
            ``p_t`` before the log.

    Returns:
        Scalar mean over all pixels (alpha = 1 for every class).
    """
    channels = probs.shape[1]
    flat = probs.permute(0, 2, 3, 1).reshape(-1, channels)
    one_hot = F.one_hot(target.reshape(-1).long(), channels).to(flat.dtype)
    one_hot = one_hot.clamp(smooth / (channels - 1), 1.0 - smooth)
    pt = (one_hot * flat).sum(dim=1) + smooth
    return (-((1 - pt) ** gamma) * pt.log()).mean()


def binary_dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean_b (2 Σ xy + 1) / (Σ x + Σ y + 1)`` over ``[B, ...]`` tensors."""
    batch = target.shape[0]
    pred_flat = pred.reshape(batch, -1)
    target_flat = target.reshape(batch, -1).to(pred_flat.dtype)
    dice = (2 * (pred_flat * target_flat).sum(1) + smooth) / (pred_flat.sum(1) + target_flat.sum(1) + smooth)
    return 1 - dice.sum() / batch


def segmentation_loss(probs: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Focal + Dice(abnormal) + Dice(normal) on 2-channel probabilities ``[B, 2, H, W]`` and ``[B, H, W]`` masks."""
    return {
        "focal": focal_loss(probs, mask),
        "dice_abnormal": binary_dice_loss(probs[:, 1], mask),
        "dice_normal": binary_dice_loss(probs[:, 0], 1 - mask),
    }


def binary_focal_loss(
    inputs: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, gamma: float = 2.0, logits: bool = False
) -> torch.Tensor:
    """Mean binary focal loss of ``inputs`` against 0/1 ``target``.

    Args:
        inputs: probabilities in [0, 1], or logits when ``logits`` is true. (The official FAPrompt code
            passes a probability with ``logits=True``, a quirk reproduced in its compat mode.)
        alpha, gamma: focal weight and focusing exponent.
    """
    target = target.to(inputs.dtype)
    if logits:
        bce = F.binary_cross_entropy_with_logits(inputs, target, reduction="none")
    else:
        bce = F.binary_cross_entropy(inputs, target, reduction="none")
    pt = torch.exp(-bce)
    return (alpha * (1 - pt) ** gamma * bce).mean()
