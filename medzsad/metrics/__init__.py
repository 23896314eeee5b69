"""Exact, fast image- and pixel-level anomaly-detection metrics (numpy/scipy/scikit-learn only).

Single category, whole arrays in memory::

    image_metrics(scores, labels)                 # image_auroc, image_ap, image_f1max
    pixel_metrics(maps, masks)                    # pixel_auroc, pixel_ap, pixel_f1max, AU-PRO (exact)
    aupro(maps, masks, fpr_limit=0.3)             # AuproResult(value, fpr, pro, ...), MVTec AD exact
    aupro_cflow200(maps, masks)                   # AnomalyCLIP/FAPrompt compat variant, NOT MVTec
    segmentation_at_threshold(maps, masks, t)     # Dice/IoU (anomalous images), FP rates (normal images)

Many categories, batches or shards: :class:`MetricAccumulator` (``update``, ``merge``, ``state_dict``,
``compute`` -> :class:`MetricsReport` with per-category results, macro mean and variant labels).
``MetricAccumulator(pixel_bins=65536)`` keeps constant memory per category for archives whose pixel
scores do not fit in memory (maps in [0, 1] quantized to that many levels; :mod:`medzsad.metrics.binned`).
"""

from medzsad.metrics.accumulator import MetricAccumulator
from medzsad.metrics.binned import BinnedPixelStatistics, binned_variant
from medzsad.metrics.category import pixel_metrics
from medzsad.metrics.pro import aupro, aupro_cflow200
from medzsad.metrics.ranking import image_metrics
from medzsad.metrics.results import (
    CFLOW200_COMPAT,
    MVTEC_EXACT,
    AuproResult,
    MetricSet,
    MetricsReport,
    UndefinedMetricError,
    aupro_name,
    describe_metric,
)
from medzsad.metrics.segmentation import segmentation_at_threshold

__all__ = [
    "CFLOW200_COMPAT",
    "MVTEC_EXACT",
    "AuproResult",
    "BinnedPixelStatistics",
    "MetricAccumulator",
    "MetricSet",
    "MetricsReport",
    "UndefinedMetricError",
    "aupro",
    "aupro_cflow200",
    "aupro_name",
    "binned_variant",
    "describe_metric",
    "image_metrics",
    "pixel_metrics",
    "segmentation_at_threshold",
]
