"""Pixel-level metrics of one category: AUROC, AP, F1-max and AUPRO from one sorted statistic."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from medzsad.metrics._validate import as_pixel_batches
from medzsad.metrics.pixels import PixelData, pixel_data
from medzsad.metrics.pro import (
    aupro_cflow200_from_data,
    aupro_from_data,
    aupro_undefined_reason,
    check_fpr_limit,
)
from medzsad.metrics.ranking import ranking_metrics
from medzsad.metrics.results import CFLOW200_COMPAT, MVTEC_EXACT, MetricSet, UndefinedMetricError, aupro_name

PIXEL_RANKING_NAMES = ("pixel_auroc", "pixel_ap", "pixel_f1max")


def pixel_metric_names(fpr_limit: float, include_cflow200: bool, aupro_variant: str = MVTEC_EXACT) -> list[str]:
    names = [*PIXEL_RANKING_NAMES, aupro_name(fpr_limit, aupro_variant)]
    return [*names, aupro_name(fpr_limit, CFLOW200_COMPAT)] if include_cflow200 else names


def pixel_metrics_from_data(
    data: PixelData, fpr_limit: float = 0.3, include_cflow200: bool = False
) -> tuple[dict[str, float], dict[str, str]]:
    """Pixel metrics from a consolidated statistic; one set of binary searches serves all of them."""
    values, undefined, levels = ranking_metrics(
        data.scores_sorted, data.anomalous_descending, "pixel", "pixels", positives_included=True
    )
    exact_name = aupro_name(fpr_limit, MVTEC_EXACT)
    reason = aupro_undefined_reason(data)
    if reason:
        undefined[exact_name] = reason
    else:
        values[exact_name] = float(aupro_from_data(data, fpr_limit, levels).value)
    if include_cflow200:
        compat_name = aupro_name(fpr_limit, CFLOW200_COMPAT)
        try:
            values[compat_name] = aupro_cflow200_from_data(data, fpr_limit).value
        except UndefinedMetricError as error:
            undefined[compat_name] = error.reason
    return values, undefined


def pixel_counts(data: PixelData) -> dict[str, int]:
    return {
        "normal_pixels": data.num_normal,
        "anomalous_pixels": data.num_anomalous,
        "regions": data.num_regions,
    }


def pixel_metrics(
    maps: ArrayLike | Sequence[np.ndarray],
    masks: ArrayLike | Sequence[np.ndarray],
    *,
    fpr_limit: float = 0.3,
    include_cflow200: bool = False,
) -> MetricSet:
    """Pixel AUROC, AP, F1-max and exact AU-PRO of one category (all pixels of all images pooled).

    Args:
        maps: ``(N, H, W)`` anomaly maps (any real dtype, finite) or a sequence of ``(H, W)`` maps.
        masks: ground truth of the same shape(s), bool or 0/1; normal images have all-zero masks.
        fpr_limit: FPR limit of the AU-PRO (result key ``pixel_aupro@<limit>[mvtec-exact]``).
        include_cflow200: also report the AnomalyCLIP/FAPrompt compatibility AUPRO
            (``pixel_aupro@<limit>[cflow200-compat]``), which is not the MVTec metric.

    Returns:
        A :class:`MetricSet` of values in [0, 1]; metrics that the data cannot define (no anomalous
        pixels, no normal pixels) are listed in ``.undefined`` with the reason.
    """
    check_fpr_limit(fpr_limit)
    data = pixel_data(*as_pixel_batches(maps, masks))
    values, undefined = pixel_metrics_from_data(data, fpr_limit, include_cflow200)
    return MetricSet(values, undefined, pixel_counts(data))
