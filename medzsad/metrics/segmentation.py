"""Segmentation quality at a fixed threshold: Dice/IoU on anomalous images, false positives on normal ones.

MONAI's ``DiceMetric`` (``ignore_empty=True``) drops images with an empty mask, so false positives on
normal scans never count. Here they are reported separately instead of being hidden or folded into a
Dice of 0/0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from medzsad.metrics._validate import as_binary_masks, check_maps, check_same_shape
from medzsad.metrics.results import MetricSet, threshold_suffix

# Last axis of the per-image count array.
TP, FP, FN = 0, 1, 2


def segmentation_counts(maps: np.ndarray, masks: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Per image and threshold: true-positive, false-positive and false-negative pixel counts.

    ``maps`` ``(N, H, W)``, ``masks`` bool ``(N, H, W)``; a pixel is predicted anomalous when
    ``map >= threshold`` (compared in the maps' dtype). Returns int64 ``(N, len(thresholds), 3)``.
    """
    counts = np.zeros((maps.shape[0], len(thresholds), 3), dtype=np.int64)
    anomalous_pixels = np.count_nonzero(masks, axis=(1, 2))
    for column, threshold in enumerate(thresholds):
        predicted = maps >= _threshold_in_dtype(threshold, maps.dtype)
        predicted_pixels = np.count_nonzero(predicted, axis=(1, 2))
        np.logical_and(predicted, masks, out=predicted)
        true_positives = np.count_nonzero(predicted, axis=(1, 2))
        counts[:, column, TP] = true_positives
        counts[:, column, FP] = predicted_pixels - true_positives
        counts[:, column, FN] = anomalous_pixels - true_positives
    return counts


def _threshold_in_dtype(threshold: float, dtype: np.dtype) -> np.generic:
    # Integer maps: map >= 0.5 means map >= 1, not map >= int(0.5).
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return dtype.type(np.clip(np.ceil(threshold), info.min, info.max))
    return dtype.type(threshold)


def summarise_segmentation(
    counts: np.ndarray, pixels_per_image: np.ndarray, thresholds: Sequence[float]
) -> tuple[dict[str, float], dict[str, str]]:
    """Dice/IoU means over anomalous images and normal-image FP rates, per threshold."""
    values: dict[str, float] = {}
    undefined: dict[str, str] = {}
    is_anomalous = (counts[:, 0, TP] + counts[:, 0, FN]) > 0 if counts.shape[1] else np.zeros(0, bool)
    for column, threshold in enumerate(thresholds):
        suffix = threshold_suffix(threshold)
        tp, fp, fn = (counts[is_anomalous, column, k].astype(np.float64) for k in (TP, FP, FN))
        if tp.size:
            # fsum: correctly rounded, so the mean does not depend on image (or shard) order.
            values["dice" + suffix] = math.fsum(2 * tp / (2 * tp + fp + fn)) / tp.size
            values["iou" + suffix] = math.fsum(tp / (tp + fp + fn)) / tp.size
        else:
            undefined["dice" + suffix] = undefined["iou" + suffix] = "no anomalous images (non-empty masks)"
        normal_fp = counts[~is_anomalous, column, FP]
        if normal_fp.size:
            values["normal_fp_pixel_rate" + suffix] = int(normal_fp.sum()) / int(pixels_per_image[~is_anomalous].sum())
            values["normal_fp_image_rate" + suffix] = int(np.count_nonzero(normal_fp)) / normal_fp.size
        else:
            for name in ("normal_fp_pixel_rate", "normal_fp_image_rate"):
                undefined[name + suffix] = "no normal images (empty masks)"
    return values, undefined


def segmentation_at_threshold(
    maps: ArrayLike | Sequence[np.ndarray], masks: ArrayLike | Sequence[np.ndarray], threshold: float
) -> MetricSet:
    """Dice and IoU on anomalous images and false-positive rates on normal images at one threshold.

    Args:
        maps: ``(N, H, W)`` anomaly maps or a sequence of ``(H, W)`` maps (finite, real).
        masks: ground truth of the same shape(s), bool or 0/1.
        threshold: a pixel is predicted anomalous when ``map >= threshold`` (in the maps' dtype).

    Returns:
        ``dice@t`` and ``iou@t``: mean per-image Dice/IoU over images with a non-empty mask;
        ``normal_fp_pixel_rate@t``: predicted-anomalous pixels / all pixels over images with an empty mask;
        ``normal_fp_image_rate@t``: fraction of those images with any predicted-anomalous pixel.
    """
    samples = list(zip(*_as_sample_pairs(maps, masks), strict=True))
    counts, pixels = [], []
    for index, (one_map, one_mask) in enumerate(samples):
        where = f"maps[{index}]"
        check_maps(one_map, where)
        check_same_shape(one_map, np.asarray(one_mask), where)
        binary = as_binary_masks(one_mask, f"masks[{index}]")
        counts.append(segmentation_counts(one_map[None], binary[None], [threshold]))
        pixels.append(one_map.size)
    all_counts = np.concatenate(counts) if counts else np.zeros((0, 1, 3), dtype=np.int64)
    values, undefined = summarise_segmentation(all_counts, np.asarray(pixels, dtype=np.int64), [threshold])
    return MetricSet(values, undefined, {"images": len(samples)})


def _as_sample_pairs(maps, masks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    map_list = list(maps) if not isinstance(maps, np.ndarray) or maps.ndim == 3 else [maps]
    mask_list = list(masks) if not isinstance(masks, np.ndarray) or masks.ndim == 3 else [masks]
    if len(map_list) != len(mask_list):
        raise ValueError(f"got {len(map_list)} maps but {len(mask_list)} masks")
    return [np.asarray(m) for m in map_list], [np.asarray(m) for m in mask_list]
