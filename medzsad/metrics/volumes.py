"""Volume- and lesion-level results for scans evaluated slice by slice.

* Volume level: one score per volume from its slice scores (:func:`reduce_slice_scores`: ``max`` or
  ``topk_mean``); a volume is anomalous when any of its slices is. AUROC, AP and F1-max of those
  (``volume_auroc``...), by the same exact ranking code as the image metrics.
* Lesion level: ground-truth lesions and predicted regions are 3-D connected components (scipy
  ``ndimage.label``, 26-connectivity by default) of the stacked slice masks and thresholded maps, on the
  slices' model-resolution grid. A lesion is detected when a predicted region overlaps it with IoU >= 0.1
  (``min_iou``); a predicted region matching no lesion so is a false positive. At each threshold: lesion
  sensitivity (detected / all lesions) and false positives per volume (FROC points), plus MONAI's
  FROC score (mean sensitivity at 0.25..8 FP per volume, interpolated between the points).
* Per-volume Dice at one threshold (the calibrated pixel threshold when there is one), mean over volumes
  with lesions.

:class:`VolumeCollector` receives the evaluation loop's batches and keeps one volume at a time: a volume's
slices must come together (a manifest from ``medzsad prepare volumes`` lists them so); a volume whose
slices come back after another volume's leaves the lesion table undefined, with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from medzsad.metrics.ranking import ranking_metrics
from medzsad.metrics.results import MetricSet, threshold_suffix

__all__ = [
    "FROC_FP_RATES",
    "REDUCTIONS",
    "LesionCounts",
    "VolumeCollector",
    "VolumeRecord",
    "VolumeReport",
    "count_lesions",
    "lesion_metrics",
    "reduce_slice_scores",
    "volume_dice",
    "volume_metrics",
    "volume_report",
]

REDUCTIONS = ("max", "topk_mean")
FROC_FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: A region must cover a lesion with IoU >= 0.1 to detect it: without a minimum, a region flooding the
#: whole volume at a low threshold "detects" every lesion with no false positive.
DEFAULT_MIN_IOU = 0.1


def reduce_slice_scores(scores: Sequence[float], reduction: str = "max", top_k: int = 3) -> float:
    """One volume score from its slice scores: the maximum, or the mean of the ``top_k`` highest (all
    slices when there are fewer)."""
    values = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if values.size == 0:
        raise ValueError("a volume needs at least one slice score")
    if reduction == "max":
        return float(values[0])
    if reduction == "topk_mean":
        return math.fsum(values[: max(1, top_k)]) / min(values.size, max(1, top_k))
    raise ValueError(f"volume score reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def volume_metrics(scores: Sequence[float], labels: Sequence[int]) -> MetricSet:
    """``volume_auroc``, ``volume_ap``, ``volume_f1max`` of volume scores (1 = volume with a lesion, 0 without;
    -1, unknown, is left out)."""
    known = np.asarray(labels) >= 0
    vector = np.asarray(scores, dtype=np.float64)[known]
    truth = np.asarray(labels)[known] > 0
    values, undefined, _ = ranking_metrics(np.sort(vector[~truth]), np.sort(vector[truth])[::-1], "volume", "volumes")
    return MetricSet(values, undefined, {"volumes": int(vector.size), "anomalous_volumes": int(truth.sum())})


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1 (6-), 2 (18-) or 3 (26-neighbours), got {connectivity!r}")
    return ndimage.generate_binary_structure(3, connectivity)


@dataclass(frozen=True)
class LesionCounts:
    """One volume at one threshold: ground-truth lesions, those detected, false-positive regions."""

    lesions: int
    detected: int
    false_positives: int


def count_lesions(
    anomaly_map: np.ndarray,
    mask: np.ndarray,
    thresholds: Iterable[float],
    connectivity: int = 3,
    min_iou: float = DEFAULT_MIN_IOU,
) -> list[LesionCounts]:
    """Lesion detection counts of one volume (``[Z, H, W]`` map and bool mask) at each threshold
    (``map >= t`` is predicted anomalous). A lesion and a predicted region match when they overlap with
    IoU ``>= min_iou`` (and by at least one voxel): a lesion with a match is detected, a region without
    one is a false positive. ``min_iou=0`` counts any overlap."""
    structure = _structure(connectivity)
    truth = np.asarray(mask).astype(bool)
    if truth.shape != np.shape(anomaly_map):
        raise ValueError(f"map shape {np.shape(anomaly_map)} differs from mask shape {truth.shape}")
    lesions, n_lesions = ndimage.label(truth, structure=structure)
    lesion_sizes = np.bincount(lesions.ravel(), minlength=n_lesions + 1)
    out = []
    for threshold in thresholds:
        regions, n_regions = ndimage.label(np.asarray(anomaly_map) >= threshold, structure=structure)
        lesion_ids, region_ids = _matches(lesions, lesion_sizes, regions, n_regions, min_iou)
        out.append(LesionCounts(int(n_lesions), lesion_ids.size, int(n_regions - region_ids.size)))
    return out


def _matches(
    lesions: np.ndarray, lesion_sizes: np.ndarray, regions: np.ndarray, n_regions: int, min_iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the lesions and of the regions in at least one pair with IoU ``>= min_iou``."""
    overlap = (regions > 0) & (lesions > 0)
    # One key per (lesion, region) pair; its count is the pair's intersection in voxels.
    keys, intersections = np.unique(
        lesions[overlap].astype(np.int64) * (n_regions + 1) + regions[overlap], return_counts=True
    )
    lesion_of, region_of = keys // (n_regions + 1), keys % (n_regions + 1)
    region_sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)
    iou = intersections / (lesion_sizes[lesion_of] + region_sizes[region_of] - intersections)
    good = iou >= min_iou
    return np.unique(lesion_of[good]), np.unique(region_of[good])


def volume_dice(anomaly_map: np.ndarray, mask: np.ndarray, threshold: float) -> float | None:
    """Dice of ``map >= threshold`` against the volume's mask; ``None`` for a volume without lesions."""
    truth = np.asarray(mask).astype(bool)
    if not truth.any():
        return None
    predicted = np.asarray(anomaly_map) >= threshold
    overlap = int(np.count_nonzero(predicted & truth))
    return 2.0 * overlap / (int(np.count_nonzero(predicted)) + int(np.count_nonzero(truth)))


def lesion_metrics(per_volume: Sequence[Sequence[LesionCounts]], thresholds: Sequence[float]) -> MetricSet:
    """``lesion_sensitivity@t`` and ``lesion_fp_per_volume@t`` at each threshold, pooled over volumes,
    and ``lesion_froc_score`` (MONAI ``compute_froc_score`` over those points)."""
    values: dict[str, float] = {}
    undefined: dict[str, str] = {}
    n = len(per_volume)
    total = sum(v[0].lesions for v in per_volume) if n else 0
    sensitivities, fps = [], []
    for column, threshold in enumerate(thresholds):
        suffix = threshold_suffix(threshold)
        detected = sum(v[column].detected for v in per_volume)
        false_positives = sum(v[column].false_positives for v in per_volume)
        if n:
            values["lesion_fp_per_volume" + suffix] = false_positives / n
            fps.append(false_positives / n)
        else:
            undefined["lesion_fp_per_volume" + suffix] = "no volumes with masks"
        if total:
            values["lesion_sensitivity" + suffix] = detected / total
            sensitivities.append(detected / total)
        else:
            undefined["lesion_sensitivity" + suffix] = "no lesions in the ground truth"
    if total and n:
        from monai.metrics import compute_froc_score

        # MONAI interpolates over points ordered by falling FP rate (rising threshold).
        order = np.argsort(np.asarray(thresholds, dtype=np.float64), kind="stable")
        values["lesion_froc_score"] = float(
            compute_froc_score(np.asarray(fps)[order], np.asarray(sensitivities)[order], FROC_FP_RATES)
        )
    else:
        undefined["lesion_froc_score"] = "no lesions in the ground truth" if n else "no volumes with masks"
    return MetricSet(values, undefined, {"volumes": n, "lesions": int(total)})


@dataclass
class VolumeRecord:
    """What is kept of one volume: its slice scores and label, lesion counts and Dice (with masks)."""

    volume_id: str
    slice_scores: list[float] = field(default_factory=list)
    label: int = 0
    lesions: list[LesionCounts] | None = None
    dice: float | None = None


class VolumeCollector:
    """Consumes evaluation batches; keeps the slices of the current volume only.

    Args:
        lesion_thresholds: thresholds of the FROC points.
        dice_threshold: threshold of the per-volume Dice.
        connectivity: 3-D neighbourhood of connected components (3 = 26 neighbours).
        min_iou: IoU a region needs with a lesion to detect it (:func:`count_lesions`).
    """

    def __init__(
        self,
        lesion_thresholds: Sequence[float],
        dice_threshold: float,
        connectivity: int = 3,
        min_iou: float = DEFAULT_MIN_IOU,
    ) -> None:
        self.thresholds = sorted({float(t) for t in (*lesion_thresholds, dice_threshold)})
        self.dice_threshold = float(dice_threshold)
        self.connectivity = connectivity
        self.min_iou = min_iou
        self.records: dict[str, VolumeRecord] = {}
        self.broken: str | None = None
        self._current: str | None = None
        self._slices: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def update(
        self,
        volume_ids: Sequence[str | None],
        slice_indices: Sequence[int | None],
        scores: np.ndarray,
        labels: Sequence[int],
        maps: np.ndarray,
        masks: Any,
        has_mask: Any,
    ) -> None:
        """One batch: ids, slice indices, scores ``[B]``, labels ``[B]``, maps ``[B, S, S]``, masks
        ``[B, S, S]`` (bool or 0/1, array or CPU tensor) and whether each slice has a mask ``[B]``.
        Samples that are not volume slices (``volume_id`` None) are ignored."""
        masks, has_mask, labels = np.asarray(masks) > 0.5, np.asarray(has_mask).astype(bool), np.asarray(labels)
        for i, volume_id in enumerate(volume_ids):
            if volume_id is None:
                continue
            if volume_id != self._current:
                self._finish()
                if volume_id in self.records and self.broken is None:
                    self.broken = "the slices of a volume are not together in the dataset order"
                self._current = volume_id
            record = self.records.setdefault(volume_id, VolumeRecord(volume_id))
            record.slice_scores.append(float(scores[i]))
            record.label = max(record.label, int(labels[i] > 0))
            self._slices[int(slice_indices[i] or 0)] = (maps[i], masks[i] if has_mask[i] else None)

    def _finish(self) -> None:
        if self._current is None or not self._slices:
            return
        order = sorted(self._slices)
        slices = [self._slices[k] for k in order]
        self._slices = {}
        record = self.records[self._current]
        if self.broken is not None or any(mask is None for _, mask in slices):
            return
        volume_map = np.stack([m for m, _ in slices]).astype(np.float32, copy=False)
        volume_mask = np.stack([mask for _, mask in slices])
        record.label = max(record.label, int(volume_mask.any()))
        record.lesions = count_lesions(volume_map, volume_mask, self.thresholds, self.connectivity, self.min_iou)
        record.dice = volume_dice(volume_map, volume_mask, self.dice_threshold)

    def finish(self) -> list[VolumeRecord]:
        """Close the last volume; every volume's record, in the order first seen."""
        self._finish()
        self._current = None
        return list(self.records.values())


@dataclass(frozen=True)
class VolumeReport:
    """Volume-level and lesion-level results of one dataset, with the per-volume rows behind them."""

    volume_level: MetricSet
    lesion_level: MetricSet
    reduction: str
    records: list[VolumeRecord]
    scores: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "volume_score": self.reduction,
            "volume_level": self.volume_level.to_dict(),
            "lesion_level": self.lesion_level.to_dict(),
        }

    def format_tables(self) -> str:
        """Two labelled text tables (values in percent, FP per volume as numbers)."""
        lines = [f"volume level ({self.volume_level.counts.get('volumes', 0)} volumes, score = {self.reduction})"]
        lines.append(_format_row(self.volume_level, percent=True))
        lines.append(f"lesion level ({self.lesion_level.counts.get('lesions', 0)} lesions, 3-D components)")
        lines.append(_format_row(self.lesion_level, percent=False))
        return "\n".join(lines)


def _format_row(metrics: MetricSet, percent: bool) -> str:
    cells = []
    for name in sorted(set(metrics.values) | set(metrics.undefined)):
        value = metrics.values.get(name)
        if value is None:
            cells.append(f"  {name}: n/a ({metrics.undefined[name]})")
        elif percent or "sensitivity" in name or "dice" in name or "froc" in name:
            cells.append(f"  {name}: {100 * value:.1f}")
        else:
            cells.append(f"  {name}: {value:.3f}")
    return "\n".join(cells)


def volume_report(
    records: Sequence[VolumeRecord],
    scores: Sequence[float],
    thresholds: Sequence[float],
    dice_threshold: float,
    reduction: str = "max",
    broken: str | None = None,
) -> VolumeReport:
    """Volume-level metrics of the volume ``scores`` (one per record, labels from the records); lesion-level
    metrics and mean Dice of the volumes with masks (undefined, with ``broken`` as the reason, when the
    collector could not build whole volumes)."""
    scores = [float(s) for s in scores]
    volume_level = volume_metrics(scores, [r.label for r in records])
    with_masks = [r for r in records if r.lesions is not None]
    if broken is not None or not with_masks:
        reason = broken or "no volumes with masks"
        names = [f"lesion_{k}{threshold_suffix(t)}" for t in thresholds for k in ("sensitivity", "fp_per_volume")]
        names += ["lesion_froc_score", "volume_dice" + threshold_suffix(dice_threshold)]
        lesion_level = MetricSet({}, dict.fromkeys(names, reason), {"volumes": 0, "lesions": 0})
        return VolumeReport(volume_level, lesion_level, reduction, list(records), scores)
    lesion_level = lesion_metrics([r.lesions for r in with_masks], thresholds)
    dices = [r.dice for r in with_masks if r.dice is not None]
    key = "volume_dice" + threshold_suffix(dice_threshold)
    values, undefined = dict(lesion_level.values), dict(lesion_level.undefined)
    if dices:
        values[key] = math.fsum(dices) / len(dices)
    else:
        undefined[key] = "no volumes with lesions"
    return VolumeReport(
        volume_level, MetricSet(values, undefined, lesion_level.counts), reduction, list(records), scores
    )
