"""Turning patch probabilities into full-size anomaly maps, on the device, batched.

The reference code upsamples with ``F.interpolate`` and smooths each map with
``scipy.ndimage.gaussian_filter`` on the CPU; :func:`gaussian_blur` reproduces scipy's kernel
(``truncate=4``) and its ``reflect`` boundary (edge sample repeated) with two 1-D convolutions.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def patch_grid_maps(patch_values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, h*w, C]`` patch values (CLS removed, row-major) -> ``[B, C, h, w]``."""
    batch, count, channels = patch_values.shape
    if count != grid[0] * grid[1]:
        raise ValueError(f"{count} patch values do not fill a {grid[0]}x{grid[1]} grid")
    return patch_values.transpose(1, 2).reshape(batch, channels, grid[0], grid[1])


def upsample(maps: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, C, H, W]``; bilinear uses ``align_corners=False`` like the reference."""
    if mode == "nearest":
        return F.interpolate(maps, size=size, mode="nearest")
    return F.interpolate(maps, size=size, mode=mode, align_corners=False)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy's 1-D Gaussian weights: radius ``int(truncate*sigma + 0.5)``, normalised to sum 1 (float64)."""
    radius = int(truncate * float(sigma) + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / float(sigma)) ** 2)
    return weights / weights.sum()


def _reflect_pad_last(x: torch.Tensor, radius: int) -> torch.Tensor:
    # scipy 'reflect' mirrors about the edge *including* the edge sample: (c b a | a b c | c b a).
    return torch.cat([x[..., :radius].flip(-1), x, x[..., -radius:].flip(-1)], dim=-1)


@functools.lru_cache(maxsize=16)
def _device_kernel(sigma: float, truncate: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Built once per device: a fresh host-to-GPU copy of the weights on every call would make the host
    # wait for all queued GPU work, and the evaluation loop relies on launching batches asynchronously.
    # Never an inference tensor, so a cached kernel also serves calls that need gradients.
    with torch.inference_mode(False):
        return gaussian_kernel1d(sigma, truncate).to(device=device, dtype=dtype).view(1, 1, -1)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Gaussian smoothing of ``[B, H, W]`` maps equal to ``scipy.ndimage.gaussian_filter`` per map.

    ``sigma <= 0`` returns the maps unchanged. The result has the dtype and device of the input.
    """
    if sigma <= 0:
        return maps
    weight = _device_kernel(float(sigma), float(truncate), maps.device, maps.dtype)
    radius = (weight.numel() - 1) // 2
    if radius >= min(maps.shape[-2:]):
        raise ValueError(f"sigma {sigma} is too large for {tuple(maps.shape[-2:])} maps")
    batch, height, width = maps.shape
    # Rows, then columns; scipy applies the axes in order 0, 1, and the separable result is the same.
    cols = _reflect_pad_last(maps.transpose(1, 2).reshape(-1, 1, height), radius)
    out = F.conv1d(cols, weight).reshape(batch, width, height).transpose(1, 2)
    rows = _reflect_pad_last(out.reshape(-1, 1, width), radius)
    return F.conv1d(rows, weight).reshape(batch, height, width)


def minmax_normalise(values: torch.Tensor, dim: int = -1, eps: float = 0.0) -> torch.Tensor:
    """``(v - min) / (max - min)`` along ``dim``."""
    low = values.amin(dim=dim, keepdim=True)
    high = values.amax(dim=dim, keepdim=True)
    return (values - low) / (high - low + eps)


def neighbour_average(patch_values: torch.Tensor, grid: tuple[int, int], kernel: int) -> torch.Tensor:
    """Mean over each patch's ``kernel x kernel`` neighbourhood on the patch grid (CoPS, methods-spec §4.1).

    ``[B, h*w, C]`` -> ``[B, h*w, C]``. Like the reference, this is ``avg_pool2d(kernel, stride 1,
    padding kernel // 2)`` with ``count_include_pad=True``: the zero padding counts at the borders, so
    border patches are pulled towards 0. ``kernel`` must be odd; 1 returns the input unchanged.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"the neighbour kernel must be a positive odd number, got {kernel}")
    if kernel == 1:
        return patch_values
    maps = patch_grid_maps(patch_values, grid)
    pooled = F.avg_pool2d(maps, kernel, stride=1, padding=kernel // 2, count_include_pad=True)
    return pooled.flatten(2).transpose(1, 2)
