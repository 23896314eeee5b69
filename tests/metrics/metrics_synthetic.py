"""Synthetic anomaly maps and masks for the metric tests and the benchmark.

Maps look like CLIP patch maps: a coarse 37x37 grid upsampled bilinearly and smoothed, plus a weak
smooth signal over 1-3 irregular ground-truth regions in about half of the images.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def realistic_category(
    num_images: int, size: int, seed: int, anomalous_fraction: float = 0.5, signal: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """``(maps float32 (N, size, size), masks bool (N, size, size))``."""
    rng = np.random.default_rng(seed)
    maps = np.empty((num_images, size, size), dtype=np.float32)
    masks = np.zeros((num_images, size, size), dtype=bool)
    for index in range(num_images):
        if rng.random() < anomalous_fraction:
            for _ in range(rng.integers(1, 4)):
                masks[index] |= _irregular_region(rng, size)
        maps[index] = _patch_like_noise(rng, size)
        if masks[index].any():
            bump = ndimage.gaussian_filter(masks[index].astype(np.float32), sigma=max(size / 80, 1.0))
            maps[index] += signal * bump / max(float(bump.max()), 1e-6)
    return maps, masks


def _patch_like_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    grid = max(size // 14, 2)
    coarse = rng.random((grid, grid)).astype(np.float32)
    fine = ndimage.zoom(coarse, size / grid, order=1)[:size, :size]
    return ndimage.gaussian_filter(fine, sigma=max(size / 130, 0.5))


def _irregular_region(rng: np.random.Generator, size: int) -> np.ndarray:
    """A blob with a wavy border (random low harmonics of the radius); sometimes touching the border."""
    rows, cols = np.ogrid[0:size, 0:size]
    center = rng.uniform(-0.05, 1.05, size=2) * size
    radius = rng.uniform(0.02, 0.1) * size
    dr, dc = rows - center[0], cols - center[1]
    angle = np.arctan2(dr, dc)
    wobble = sum(rng.uniform(0.0, 0.25) / k * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(1, 6))
    stretch = rng.uniform(0.5, 1.5)
    return (dr / stretch) ** 2 + (dc * stretch) ** 2 < (radius * (1 + wobble)) ** 2


def random_category(num_images: int, shape: tuple[int, int], seed: int, decimals: int | None = None):
    """Uniform random maps (optionally rounded: tie-heavy) with random rectangles as regions."""
    rng = np.random.default_rng(seed)
    maps = rng.random((num_images, *shape))
    masks = np.zeros((num_images, *shape), dtype=bool)
    for index in range(num_images):
        for _ in range(rng.integers(0, 3)):
            r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            h, w = rng.integers(1, shape[0] // 2 + 1), rng.integers(1, shape[1] // 2 + 1)
            masks[index, r : r + h, c : c + w] = True
    maps[masks] += rng.uniform(0, 0.5)
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps, masks


def merged_through_files(shards, folder, order):
    """Save every shard accumulator to ``folder``, load them back and merge them in ``order``."""
    from medzsad.metrics import MetricAccumulator

    paths = []
    for index, shard in enumerate(shards):
        paths.append(folder / f"shard{index}.npz")
        shard.save(paths[-1])
    merged = MetricAccumulator.load(paths[order[0]])
    for index in order[1:]:
        merged.merge(MetricAccumulator.load(paths[index]))
    return merged
