"""Volume scores, volume-level metrics and 3-D lesion counting against hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medzsad.metrics.volumes import (
    LesionCounts,
    VolumeCollector,
    count_lesions,
    lesion_metrics,
    reduce_slice_scores,
    volume_dice,
    volume_metrics,
    volume_report,
)


def _box(volume: np.ndarray, z: slice, y: slice, x: slice, value: float = 1.0) -> None:
    volume[z, y, x] = value


def test_reductions():
    assert reduce_slice_scores([0.1, 0.9, 0.5]) == 0.9
    assert reduce_slice_scores([0.1, 0.9, 0.5, 0.7], "topk_mean", 2) == pytest.approx(0.8)
    assert reduce_slice_scores([0.4], "topk_mean", 3) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="max, topk_mean"):
        reduce_slice_scores([0.1], "median")


def test_volume_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.random(30) < 0.5
    scores = rng.random(30) + 0.3 * labels
    result = volume_metrics(scores, labels)
    assert result["volume_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["volume_ap"] == pytest.approx(average_precision_score(labels, scores))


def test_touching_lesions_are_one_lesion():
    mask = np.zeros((4, 10, 10), bool)
    _box(mask, slice(1, 3), slice(1, 4), slice(1, 4))
    _box(mask, slice(1, 3), slice(4, 7), slice(1, 4))  # shares a face with the first box
    amap = np.zeros(mask.shape)
    _box(amap, slice(1, 2), slice(5, 6), slice(2, 3), 0.9)  # hits the second part only
    (counts,) = count_lesions(amap, mask, [0.5], min_iou=0)
    assert counts == LesionCounts(lesions=1, detected=1, false_positives=0)
    # Only diagonal contact: one lesion with 26-connectivity, two with 6-connectivity.
    diagonal = np.zeros((3, 6, 6), bool)
    diagonal[1, 1, 1] = diagonal[1, 2, 2] = True
    assert count_lesions(np.zeros(diagonal.shape), diagonal, [0.5])[0].lesions == 1
    assert count_lesions(np.zeros(diagonal.shape), diagonal, [0.5], connectivity=1)[0].lesions == 2


def test_a_lesion_split_across_slices_is_one_lesion_and_a_gap_makes_two():
    mask = np.zeros((6, 8, 8), bool)
    _box(mask, slice(0, 3), slice(2, 5), slice(2, 5))  # slices 0, 1, 2
    amap = np.zeros(mask.shape)
    amap[2, 3, 3] = 0.8  # detected on its last slice only
    assert count_lesions(amap, mask, [0.5], min_iou=0)[0] == LesionCounts(1, 1, 0)
    mask[4, 3, 3] = True  # slice 3 is empty: a second lesion
    assert count_lesions(amap, mask, [0.5], min_iou=0)[0] == LesionCounts(2, 1, 0)


def test_false_positive_regions_and_several_thresholds():
    mask = np.zeros((5, 12, 12), bool)
    _box(mask, slice(1, 3), slice(1, 4), slice(1, 4))
    _box(mask, slice(1, 3), slice(8, 11), slice(8, 11))
    amap = np.zeros(mask.shape)
    _box(amap, slice(1, 2), slice(1, 3), slice(1, 3), 0.9)  # hits lesion 1 at both thresholds
    _box(amap, slice(2, 3), slice(9, 10), slice(9, 10), 0.6)  # hits lesion 2 at 0.5 only
    _box(amap, slice(4, 5), slice(6, 7), slice(0, 2), 0.7)  # a false positive at 0.5
    _box(amap, slice(0, 1), slice(10, 12), slice(0, 2), 0.95)  # a false positive at both
    low, high = count_lesions(amap, mask, [0.5, 0.8], min_iou=0)
    assert low == LesionCounts(2, 2, 2)
    assert high == LesionCounts(2, 1, 1)


def test_a_region_flooding_the_volume_detects_nothing_under_the_iou_rule():
    mask = np.zeros((4, 10, 10), bool)
    _box(mask, slice(1, 3), slice(1, 4), slice(1, 4))  # 18 voxels
    _box(mask, slice(1, 3), slice(6, 9), slice(6, 9))
    flood = np.ones(mask.shape)
    assert count_lesions(flood, mask, [0.5], min_iou=0)[0] == LesionCounts(2, 2, 0)
    assert count_lesions(flood, mask, [0.5])[0] == LesionCounts(2, 0, 1)  # IoU 18/400 < 0.1
    close = np.zeros(mask.shape)
    _box(close, slice(1, 3), slice(1, 5), slice(1, 4))  # lesion 1 plus a row: IoU 18/24
    _box(close, slice(1, 2), slice(6, 7), slice(6, 7))  # 1 voxel of lesion 2: IoU 1/18
    assert count_lesions(close, mask, [0.5])[0] == LesionCounts(2, 1, 1)
    # The threshold of the IoU rule: 1/18 = 0.0556 passes at 0.05, not at 0.06.
    assert count_lesions(close, mask, [0.5], min_iou=0.05)[0] == LesionCounts(2, 2, 0)
    assert count_lesions(close, mask, [0.5], min_iou=0.06)[0] == LesionCounts(2, 1, 1)


def test_empty_volume_counts_false_positives_and_no_lesions():
    mask = np.zeros((3, 6, 6), bool)
    amap = np.zeros(mask.shape)
    amap[0, 0, 0] = amap[2, 5, 5] = 0.9
    assert count_lesions(amap, mask, [0.5])[0] == LesionCounts(0, 0, 2)
    assert volume_dice(amap, mask, 0.5) is None


def test_lesion_metrics_pool_over_volumes():
    per_volume = [
        [LesionCounts(2, 2, 1), LesionCounts(2, 1, 0)],
        [LesionCounts(0, 0, 3), LesionCounts(0, 0, 1)],
    ]
    result = lesion_metrics(per_volume, [0.3, 0.7])
    assert result["lesion_sensitivity@0.3"] == 1.0
    assert result["lesion_sensitivity@0.7"] == 0.5
    assert result["lesion_fp_per_volume@0.3"] == 2.0
    assert result["lesion_fp_per_volume@0.7"] == 0.5
    # MONAI FROC score: sensitivity interpolated at 0.25..8 FP/volume over points (0.5, 0.5) and (2, 1).
    expected = np.mean(np.interp([0.25, 0.5, 1, 2, 4, 8], [0.5, 2.0], [0.5, 1.0]))
    assert result["lesion_froc_score"] == pytest.approx(expected)
    empty = lesion_metrics([[LesionCounts(0, 0, 1)]], [0.5])
    assert "lesion_sensitivity@0.5" in empty.undefined


def test_collector_rebuilds_volumes_from_batches_in_any_slice_order():
    rng = np.random.default_rng(4)
    mask = np.zeros((4, 8, 8), bool)
    _box(mask, slice(1, 3), slice(2, 5), slice(2, 5))
    amap = rng.random(mask.shape) * 0.4
    amap[mask] = 0.9
    collector = VolumeCollector([0.5], dice_threshold=0.5)
    order = [2, 0, 3, 1]  # slices of volume "a" in a shuffled order, then volume "b" (no lesions)
    collector.update(
        ["a"] * 4, order, np.arange(4.0), [int(mask[k].any()) for k in order], amap[order], mask[order], [1] * 4
    )
    collector.update(
        ["b", "b", None], [0, 1, None], np.zeros(3), [0, 0, 0], np.zeros((3, 8, 8)), np.zeros((3, 8, 8)), [1] * 3
    )
    records = collector.finish()
    assert [r.volume_id for r in records] == ["a", "b"]
    assert records[0].lesions == [LesionCounts(1, 1, 0)] and records[0].dice == 1.0 and records[0].label == 1
    assert records[1].lesions == [LesionCounts(0, 0, 0)] and records[1].label == 0
    report = volume_report(records, [reduce_slice_scores(r.slice_scores) for r in records], [0.5], 0.5)
    assert report.volume_level["volume_auroc"] == 1.0
    assert report.lesion_level["volume_dice@0.5"] == 1.0
    assert "volume level" in report.format_tables() and "lesion level" in report.format_tables()


def test_collector_marks_interleaved_volumes():
    collector = VolumeCollector([0.5], 0.5)
    zeros = np.zeros((1, 4, 4))
    for volume_id in ("a", "b", "a"):
        collector.update([volume_id], [0], np.zeros(1), [0], zeros, zeros, [1])
    records = collector.finish()
    report = volume_report(records, [0.0, 0.0], [0.5], 0.5, broken=collector.broken)
    assert "not together" in report.lesion_level.undefined["lesion_froc_score"]
