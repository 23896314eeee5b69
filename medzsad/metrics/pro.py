"""AUPRO: the exact MVTec AD metric, and a clearly separate 200-threshold compatibility variant.

Exact algorithm ("breakpoints"). The MVTec reference sorts all pixels by score (descending), takes
cumulative sums of ``1`` per normal pixel (FP) and ``1/|region|`` per anomalous pixel (PRO), keeps the
last point of every run of equal scores, prepends (0, 0), appends (1, 1), and integrates with the
trapezoid rule up to the FPR limit, interpolating linearly there, then divides by the limit. FPR only
moves at normal scores and PRO only at anomalous scores, so the polyline is horizontal between two
distinct anomalous scores; its only corners are, per distinct anomalous score ``t`` (descending),
``(FPR(> t), PRO(> t))`` then ``(FPR(>= t), PRO(>= t))`` (a diagonal where normal pixels tie with ``t``,
exactly as the reference joins tie groups). FPR counts come from one binary search per distinct
anomalous score into all pixel scores sorted once (values only), minus the anomalous pixels; PRO from a
cumulative sum over the anomalous pixels only. Same polyline, same area, no argsort of all pixels.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import auc as sklearn_auc

from medzsad.metrics._validate import as_pixel_batches
from medzsad.metrics.pixels import PixelData, pixel_data
from medzsad.metrics.ranking import RankLevels, rank_levels
from medzsad.metrics.results import (
    CFLOW200_COMPAT,
    MVTEC_EXACT,
    AuproResult,
    UndefinedMetricError,
    aupro_name,
)


def aupro(maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3) -> AuproResult:
    """Exact MVTec AD AU-PRO of one category, normalised to [0, 1].

    Args:
        maps: ``(N, H, W)`` anomaly maps (any real dtype, finite), or a sequence of ``(H, W)`` maps.
        masks: ground truth of the same shape(s); bool or 0/1; normal images have an all-zero mask.
        fpr_limit: integrate the PRO curve over FPR in ``[0, fpr_limit]``, ``0 < fpr_limit <= 1``.

    Regions are 8-connected per image; PRO at a threshold is the mean covered fraction over all regions
    of all images; FPR is over all normal pixels of all images (normal and anomalous images).

    Raises:
        UndefinedMetricError: no anomalous pixels or no normal pixels.
        ValueError: shape mismatch, non-binary masks, NaN/inf in the maps, bad ``fpr_limit``.
    """
    return aupro_from_data(pixel_data(*as_pixel_batches(maps, masks)), fpr_limit)


def aupro_cflow200(maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3, num_steps: int = 200) -> AuproResult:
    """Compatibility AUPRO of AnomalyCLIP/FAPrompt (``cal_pro_score``, from cflow-ad). NOT the MVTec metric.

    Use it only to compare with paper tables computed by that code. It evaluates
    ``np.arange(min, max, (max - min) / num_steps)`` thresholds (``map > threshold`` is anomalous),
    keeps the points with FPR < ``fpr_limit``, min-max rescales those FPRs to [0, 1] instead of dividing by
    the limit, does not interpolate at the limit, and integrates with ``sklearn.metrics.auc``. Results
    typically differ from :func:`aupro` by 0.2 to 1 point. Counts here are exact integers; the original
    sums float32 masks, which can differ by ~1e-8 relative beyond 2**24 pixels.

    Args and errors as :func:`aupro`; also :class:`UndefinedMetricError` for constant maps or fewer than
    two thresholds below the FPR limit.
    """
    return aupro_cflow200_from_data(pixel_data(*as_pixel_batches(maps, masks)), fpr_limit, num_steps)


def check_fpr_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1]; got {fpr_limit}")
    return limit


def aupro_undefined_reason(data: PixelData) -> str | None:
    if data.num_regions == 0:
        return "no anomalous pixels (no ground-truth regions)"
    if data.num_normal == 0:
        return "no normal pixels (FPR undefined)"
    return None


def aupro_from_data(data: PixelData, fpr_limit: float = 0.3, levels: RankLevels | None = None) -> AuproResult:
    """Exact AU-PRO from a consolidated statistic; ``levels`` may be passed to reuse the binary searches."""
    limit = check_fpr_limit(fpr_limit)
    reason = aupro_undefined_reason(data)
    if reason:
        raise UndefinedMetricError(aupro_name(limit, MVTEC_EXACT), reason)
    if levels is None:
        levels = rank_levels(data.scores_sorted, data.anomalous_descending, positives_included=True)
    # Sequential float64 cumsum over the canonically ordered pixels, as the reference accumulates.
    pro_mass = np.cumsum(1.0 / data.anomalous_region_sizes)
    pro_at_or_above = pro_mass[levels.group_ends] / data.num_regions
    return aupro_from_levels(levels, pro_at_or_above, limit, MVTEC_EXACT)


def aupro_from_levels(levels: RankLevels, pro_at_or_above: np.ndarray, limit: float, variant: str) -> AuproResult:
    """AU-PRO up to ``limit`` from the counts at each distinct anomalous score and the PRO there
    (``pro_at_or_above[j]``: mean covered fraction of the regions at threshold ``levels.values[j]``)."""
    fpr, pro = _pro_polyline(levels, pro_at_or_above)
    value, fpr_clipped, pro_clipped = _trapezoid_up_to(fpr, pro, limit)
    return AuproResult(float(value / limit), fpr_clipped, pro_clipped, limit, variant)


def _pro_polyline(levels: RankLevels, pro_at_or_above: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Corners of the MVTec PRO polyline, from (0, 0) to (1, 1), FPR non-decreasing."""
    pro_above = np.concatenate(([0.0], pro_at_or_above[:-1]))
    fpr_above = levels.negatives_above / levels.num_negatives
    fpr_at_or_above = levels.negatives_at_or_above / levels.num_negatives
    corners = 2 * levels.values.size
    fpr = np.empty(corners + 3)
    pro = np.empty(corners + 3)
    fpr[0], pro[0] = 0.0, 0.0
    fpr[1:-2:2], fpr[2:-2:2] = fpr_above, fpr_at_or_above
    pro[1:-2:2], pro[2:-2:2] = pro_above, pro_at_or_above
    # The reference ends with every pixel counted (FPR 1, PRO ~1 up to rounding), then (1, 1).
    fpr[-2], pro[-2] = 1.0, pro_at_or_above[-1]
    fpr[-1], pro[-1] = 1.0, 1.0
    np.minimum(pro, 1.0, out=pro)
    return fpr, pro


def _trapezoid_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Trapezoid area of the polyline over ``[x[0], x_max]``, interpolating at ``x_max`` as MVTec does.

    ``x`` is non-decreasing and ``x[-1] >= x_max``. Returns the area and the integrated vertices.
    """
    inside = int(np.searchsorted(x, x_max, side="right"))  # vertices with x <= x_max
    x_in, y_in = x[:inside], y[:inside]
    area = float(np.sum(0.5 * (y_in[1:] + y_in[:-1]) * (x_in[1:] - x_in[:-1])))
    if x_in[-1] == x_max:
        return area, x_in, y_in
    x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
    y_at_limit = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    area += 0.5 * (y_at_limit + y0) * (x_max - x0)
    return area, np.append(x_in, x_max), np.append(y_in, y_at_limit)


def aupro_cflow200_from_data(data: PixelData, fpr_limit: float = 0.3, num_steps: int = 200) -> AuproResult:
    """The compatibility variant (see :func:`aupro_cflow200`) from a consolidated statistic."""
    limit = check_fpr_limit(fpr_limit)
    reason = aupro_undefined_reason(data)
    if reason:
        raise UndefinedMetricError(aupro_name(limit, CFLOW200_COMPAT), reason)
    thresholds = _cflow_thresholds(data, num_steps)
    if thresholds is None:
        raise UndefinedMetricError(aupro_name(limit, CFLOW200_COMPAT), "constant maps (max == min)")
    anomalous_above = _count_greater(data.anomalous_descending[::-1], thresholds)
    false_positives = _count_greater(data.scores_sorted, thresholds) - anomalous_above
    fprs = false_positives / data.num_normal
    pros = _pro_above(data, anomalous_above)
    keep = fprs < limit
    if np.count_nonzero(keep) < 2:
        raise UndefinedMetricError(
            aupro_name(limit, CFLOW200_COMPAT),
            f"fewer than 2 of {thresholds.size} thresholds have FPR < {limit:g}",
        )
    kept_fprs = fprs[keep]
    span = kept_fprs.max() - kept_fprs.min()
    if span == 0:
        raise UndefinedMetricError(aupro_name(limit, CFLOW200_COMPAT), "all kept thresholds have the same FPR")
    rescaled = (kept_fprs - kept_fprs.min()) / span
    return AuproResult(float(sklearn_auc(rescaled, pros[keep])), rescaled, pros[keep], limit, CFLOW200_COMPAT)


def _cflow_thresholds(data: PixelData, num_steps: int) -> np.ndarray | None:
    # Bounds as scalars of the map dtype (the original takes amaps.min() and amaps.max()).
    lowest, highest = data.scores_sorted[0], data.scores_sorted[-1]
    if highest == lowest:
        return None
    return np.arange(lowest, highest, (highest - lowest) / num_steps)


def _pro_above(data: PixelData, anomalous_above: np.ndarray) -> np.ndarray:
    """Mean over regions of the fraction of the region scoring above each threshold.

    ``anomalous_above[i]``: number of anomalous pixels above threshold ``i``, i.e. the leading part of
    the descending anomalous pixels.
    """
    pro_mass = np.concatenate(([0.0], np.cumsum(1.0 / data.anomalous_region_sizes)))
    return pro_mass[anomalous_above] / data.num_regions


def _count_greater(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(sorted_values > t).sum()`` per threshold, comparing exactly as numpy 2 compares mixed dtypes.

    ``np.searchsorted`` with float64 keys on a float32 array converts the whole array; instead each
    threshold is replaced by the largest value of the array's dtype that is <= it, which selects the
    same elements.
    """
    keys = _largest_not_above(thresholds, sorted_values.dtype)
    return sorted_values.size - np.searchsorted(sorted_values, keys, side="right").astype(np.int64)


def _largest_not_above(thresholds: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.can_cast(thresholds.dtype, dtype, casting="safe"):
        return thresholds.astype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.floor(thresholds), info.min, info.max).astype(dtype)
    with np.errstate(over="ignore"):
        keys = thresholds.astype(dtype)
    rounded_up = keys.astype(thresholds.dtype) > thresholds
    keys[rounded_up] = np.nextafter(keys[rounded_up], dtype.type(-np.inf))
    return keys
