"""Result containers: metric values, the reasons metrics are undefined, and variant labels.

A metric that cannot be computed (no normal images, no anomalous pixels, ...) is never reported as NaN
or 0: it is absent from the values and present in ``undefined`` with the reason, so a table can say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MVTEC_EXACT = "mvtec-exact"
CFLOW200_COMPAT = "cflow200-compat"


def aupro_name(fpr_limit: float, variant: str = MVTEC_EXACT) -> str:
    """Result key of an AUPRO variant, e.g. ``pixel_aupro@0.3[mvtec-exact]``."""
    return f"pixel_aupro@{fpr_limit:g}[{variant}]"


def threshold_suffix(threshold: float) -> str:
    """``@<threshold>`` with the shortest repr that round-trips, so distinct thresholds never collide."""
    return f"@{float(threshold)!r}"


_FIXED_DESCRIPTIONS = {
    "image_auroc": "area under the ROC curve of the image scores; ties count 1/2 (= sklearn roc_auc_score)",
    "image_ap": "step-wise average precision of the image scores (= sklearn average_precision_score)",
    "image_f1max": "maximum F1 over all thresholds of the image scores (score >= threshold is anomalous)",
    "pixel_auroc": "AUROC over all pixels of all images of the category pooled (= sklearn roc_auc_score)",
    "pixel_ap": "step-wise average precision over all pixels of the category pooled "
    "(= sklearn average_precision_score)",
    "pixel_f1max": "maximum pixel F1 over all thresholds, pixels of the category pooled",
}


def describe_metric(name: str) -> str:
    """One-line description of a result key, including which variant of the metric it is."""
    if name in _FIXED_DESCRIPTIONS:
        return _FIXED_DESCRIPTIONS[name]
    if name.startswith("pixel_aupro@") and name.endswith(f"[{MVTEC_EXACT}]"):
        return (
            "MVTec AD reference AU-PRO: 8-connected regions per image, pooled over the category, every "
            "distinct score a threshold, trapezoid up to the FPR limit with interpolation, divided by the limit"
        )
    if name.startswith("pixel_aupro@") and "[mvtec-binned" in name:
        return (
            "MVTec AD AU-PRO of the maps quantized to the named number of levels over [0, 1] "
            "(constant-memory statistic); differs from mvtec-exact by the quantization only"
        )
    if name.startswith("pixel_aupro@") and name.endswith(f"[{CFLOW200_COMPAT}]"):
        return (
            "NOT the MVTec metric: AnomalyCLIP/FAPrompt/cflow-ad cal_pro_score, 200 equally spaced "
            "thresholds, points with FPR < limit, FPRs min-max rescaled to [0, 1], sklearn auc"
        )
    prefix, _, threshold = name.partition("@")
    segmentation = {
        "dice": "mean per-image Dice at map >= {t}, anomalous images (non-empty mask) only",
        "iou": "mean per-image IoU at map >= {t}, anomalous images (non-empty mask) only",
        "normal_fp_pixel_rate": "fraction of pixels of normal images (empty mask) with map >= {t}",
        "normal_fp_image_rate": "fraction of normal images (empty mask) with any pixel >= {t}",
    }
    if threshold and prefix in segmentation:
        return segmentation[prefix].format(t=threshold)
    raise KeyError(f"unknown metric name {name!r}")


class UndefinedMetricError(KeyError, ValueError):
    """A metric is undefined for these inputs (e.g. AUROC without normal images).

    Subclasses ``KeyError`` so a :class:`MetricSet` behaves as a mapping, and ``ValueError`` so the
    single-metric functions raise the usual error type for bad inputs.
    """

    def __init__(self, metric: str, reason: str) -> None:
        super().__init__(f"{metric} is undefined: {reason}")
        self.metric = metric
        self.reason = reason

    def __str__(self) -> str:
        # KeyError quotes its argument; the message is meant to be read as text.
        return str(self.args[0])


@dataclass(frozen=True, eq=False)
class MetricSet(Mapping[str, float]):
    """Metric values of one category (or of the macro mean), as a read-only mapping.

    ``values`` holds only defined metrics; ``undefined`` maps each metric that could not be computed to
    the reason. Looking up an undefined metric raises :class:`UndefinedMetricError` with that reason.
    ``counts`` records what the numbers were computed from (images, pixels, regions).
    """

    values: dict[str, float]
    undefined: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        if name in self.values:
            return self.values[name]
        if name in self.undefined:
            raise UndefinedMetricError(name, self.undefined[name])
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def names(self) -> list[str]:
        """Every metric asked for, defined or not, in a stable order."""
        return sorted(set(self.values) | set(self.undefined), key=_metric_sort_key)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return {"values": dict(self.values), "undefined": dict(self.undefined), "counts": dict(self.counts)}


_FIXED_ORDER = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max")

#: The terminal table's default metrics: about 113 characters wide with a category name of 17.
COMPACT_COLUMNS = (*_FIXED_ORDER, "pixel_aupro")


def select_columns(names: Sequence[str], columns: Sequence[str] | None) -> list[str]:
    """The metrics of ``names`` that ``columns`` asks for (exact names or prefixes), in paper order;
    ``None`` means :data:`COMPACT_COLUMNS` and ``["all"]`` every metric."""
    wanted = COMPACT_COLUMNS if columns is None else tuple(columns)
    if "all" in wanted:
        return list(names)
    return [name for name in names if any(name == c or name.startswith(c) for c in wanted)]


_PREFIX_ORDER = ("pixel_aupro", "dice", "iou", "normal_fp_pixel_rate", "normal_fp_image_rate")


def _metric_sort_key(name: str) -> tuple[int, str]:
    """Papers' column order: image metrics, pixel metrics, AUPRO variants, then segmentation."""
    if name in _FIXED_ORDER:
        return _FIXED_ORDER.index(name), ""
    prefix = next((p for p in _PREFIX_ORDER if name.startswith(p)), None)
    rank = len(_FIXED_ORDER) + (_PREFIX_ORDER.index(prefix) if prefix else len(_PREFIX_ORDER))
    return rank, name


@dataclass(frozen=True, eq=False)
class AuproResult:
    """Area under the PRO curve up to ``fpr_limit``, normalised to [0, 1], with the curve integrated.

    ``fpr`` and ``pro`` are the vertices of the integrated polyline (1-D float64, same length, ``fpr``
    non-decreasing); for the exact variant the last vertex sits at ``fpr_limit``. ``variant`` names the
    algorithm (``mvtec-exact`` or ``cflow200-compat``).
    """

    value: float
    fpr: np.ndarray
    pro: np.ndarray
    fpr_limit: float
    variant: str

    @property
    def name(self) -> str:
        return aupro_name(self.fpr_limit, self.variant)


@dataclass(frozen=True, eq=False)
class MetricsReport:
    """Per-category results, their macro mean, and a description of every metric variant reported."""

    per_category: dict[str, MetricSet]
    macro_mean: MetricSet
    variants: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return {
            "per_category": {name: result.to_dict() for name, result in self.per_category.items()},
            "macro_mean": self.macro_mean.to_dict(),
            "variants": dict(self.variants),
        }

    def format_table(self, percent: bool = True, digits: int = 1, columns: Sequence[str] | None = None) -> str:
        """Text table, one row per category plus the macro mean; ``n/a`` marks undefined metrics.

        ``columns``: metric names or prefixes (``pixel_aupro``, ``dice``), ``["all"]`` for every metric;
        ``None`` for :data:`COMPACT_COLUMNS`, which fit a 120-column terminal."""
        names = select_columns(self.macro_mean.names(), columns)
        rows = [["category", *names]]
        for category, result in [*self.per_category.items(), ("macro mean", self.macro_mean)]:
            rows.append([category, *(_format_cell(result, name, percent, digits) for name in names)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
        return "\n".join(lines + self.notes())

    def notes(self) -> list[str]:
        """Lines under the table: each reason for ``n/a`` once with the metrics it blanks, and the
        categories whose pixel metrics cover only the images that have masks."""
        by_reason: dict[str, list[str]] = {}
        for name, reason in self.macro_mean.undefined.items():
            by_reason.setdefault(reason, []).append(name)
        notes = [f"n/a {', '.join(names)}: {reason}" for reason, names in by_reason.items()]
        for category, result in self.per_category.items():
            used = result.counts.get("pixel_metric_images")
            if used is not None:
                notes.append(
                    f"{category}: pixel metrics over the {used} of {result.counts['images']} images that have masks"
                )
        return ["", *notes] if notes else []


def _format_cell(result: MetricSet, name: str, percent: bool, digits: int) -> str:
    if name not in result.values:
        return "n/a"
    value = result.values[name] * (100.0 if percent else 1.0)
    return f"{value:.{digits}f}" if percent else f"{value:.{digits + 3}f}"


def macro_mean(per_category: Mapping[str, MetricSet]) -> MetricSet:
    """Unweighted mean over categories, as the papers report it.

    A metric's mean is defined only if the metric is defined in every category that asked for it; a
    mean over a subset of categories would not be comparable to a paper's table.
    """
    names = sorted({n for result in per_category.values() for n in result.names()}, key=_metric_sort_key)
    values: dict[str, float] = {}
    undefined: dict[str, str] = {}
    for name in names:
        missing = {c: r.undefined[name] for c, r in per_category.items() if name in r.undefined}
        if missing:
            undefined[name] = "undefined in " + "; ".join(f"{c} ({why})" for c, why in missing.items())
            continue
        per_class = [r.values[name] for r in per_category.values() if name in r.values]
        values[name] = math.fsum(per_class) / len(per_class)
    return MetricSet(values, undefined, {"categories": len(per_category)})
