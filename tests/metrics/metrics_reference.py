"""Slow, obviously-correct reference implementations, written from the published algorithm descriptions.

* ``reference_aupro``: the MVTec AD evaluation (``pro_curve_util.compute_pro`` + ``trapezoid``) step by
  step, as described in ``../shared/docs/ecosystem.md`` section 2.1: per-image 8-connected labelling, full
  argsort of all pixels, cumulative sums, keep the last point of each tie run, clip, (0, 0) and (1, 1),
  trapezoid up to the limit with linear interpolation, divided by the limit.
* ``reference_cflow200``: AnomalyCLIP/FAPrompt ``cal_pro_score`` as described in methods-spec.md section 7:
  200 thresholds from ``np.arange``, skimage labelling of every mask at every threshold, FPR < limit,
  min-max rescaled FPRs, ``sklearn.metrics.auc``.
* ``reference_dice``: per-image loop.

Used by the tests and by ``scripts/bench_metrics.py``; not part of the package.
"""

from __future__ import annotations

import bisect

import numpy as np
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc


def reference_aupro(maps, masks, fpr_limit: float = 0.3, fpr_dtype=np.float64) -> float:
    """MVTec AD AU-PRO. ``fpr_dtype=np.float32`` reproduces the official code's float32 FPR array."""
    maps = [np.asarray(m) for m in maps]
    masks = [np.asarray(m) for m in masks]
    num_ok_pixels = 0
    num_gt_regions = 0
    fp_changes = []  # uint32 as in the official script (it asserts the pixel count fits)
    pro_changes = []
    for gt in masks:
        labels, num_regions = ndimage.label(gt, structure=np.ones((3, 3), dtype=int))
        num_gt_regions += num_regions
        ok_mask = labels == 0
        num_ok_pixels += int(ok_mask.sum())
        fp_change = np.zeros(gt.shape, dtype=np.uint32)
        fp_change[ok_mask] = 1
        pro_change = np.zeros(gt.shape, dtype=np.float64)
        for k in range(1, num_regions + 1):
            region = labels == k
            pro_change[region] = 1.0 / region.sum()
        fp_changes.append(fp_change)
        pro_changes.append(pro_change)
    scores = np.concatenate([m.ravel() for m in maps])
    fp_all = np.concatenate([f.ravel() for f in fp_changes])
    pro_all = np.concatenate([p.ravel() for p in pro_changes])
    order = np.argsort(scores, kind="stable")[::-1]
    scores_sorted = scores[order]
    fprs = np.cumsum(fp_all[order]).astype(fpr_dtype) / fpr_dtype(num_ok_pixels)
    pros = np.cumsum(pro_all[order]) / num_gt_regions
    keep = np.append(np.diff(scores_sorted) != 0, True)
    fprs = np.minimum(fprs[keep], 1)
    pros = np.minimum(pros[keep], 1)
    fprs = np.concatenate(([0], fprs, [1]))
    pros = np.concatenate(([0], pros, [1]))
    return mvtec_trapezoid(fprs, pros, x_max=fpr_limit) / fpr_limit


def mvtec_trapezoid(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid rule from x[0] to x_max; if x_max is not a sample, interpolate y there linearly."""
    correction = 0.0
    if x_max not in x:
        ins = bisect.bisect(list(x), x_max)
        assert 0 < ins < len(x)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    inside = x <= x_max
    x, y = x[inside], y[inside]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def reference_cflow200(maps, masks, fpr_limit: float = 0.3, max_step: int = 200) -> float:
    """The 200-threshold AUPRO of cflow-ad / AnomalyCLIP / FAPrompt, literally: relabel at every threshold."""
    amaps = np.asarray(maps)
    masks = np.asarray(masks)
    binary = np.zeros_like(amaps, dtype=bool)
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs = [], []
    inverse_masks = 1 - masks
    for th in np.arange(min_th, max_th, delta):
        binary[amaps <= th] = 0
        binary[amaps > th] = 1
        per_region = []
        for binary_map, mask in zip(binary, masks):
            for region in measure.regionprops(measure.label(mask)):
                covered = binary_map[region.coords[:, 0], region.coords[:, 1]].sum()
                per_region.append(covered / region.area)
        false_positives = np.logical_and(inverse_masks, binary).sum()
        fprs.append(false_positives / inverse_masks.sum())
        pros.append(np.array(per_region).mean())
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < fpr_limit
    kept = fprs[keep]
    kept = (kept - kept.min()) / (kept.max() - kept.min())
    return float(auc(kept, pros[keep]))


def reference_dice(maps, masks, threshold: float) -> dict[str, float]:
    """Per-image Dice/IoU means on images with a non-empty mask; FP rates on images with an empty one."""
    dice, iou, fp_pixels, normal_pixels, normal_with_fp, normal_images = [], [], 0, 0, 0, 0
    for amap, mask in zip(maps, masks):
        predicted = amap >= threshold
        truth = mask.astype(bool)
        if truth.any():
            tp = np.sum(predicted & truth)
            fp = np.sum(predicted & ~truth)
            fn = np.sum(~predicted & truth)
            dice.append(2 * tp / (2 * tp + fp + fn))
            iou.append(tp / (tp + fp + fn))
        else:
            fp_pixels += int(predicted.sum())
            normal_pixels += predicted.size
            normal_with_fp += int(predicted.any())
            normal_images += 1
    result = {}
    if dice:
        result |= {"dice": float(np.mean(dice)), "iou": float(np.mean(iou))}
    if normal_images:
        result |= {"fp_pixel_rate": fp_pixels / normal_pixels, "fp_image_rate": normal_with_fp / normal_images}
    return result
