"""The per-category accumulator: same numbers as one pass, shard merging, macro means, partial datasets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from metrics_synthetic import merged_through_files, random_category, realistic_category

from medzsad.metrics import MetricAccumulator, image_metrics, pixel_metrics, segmentation_at_threshold

THRESHOLDS = (0.55, 0.7)


def _dataset():
    """Three categories; image score = map maximum."""
    data = {
        "brain": realistic_category(9, 40, seed=1),
        "chest": random_category(7, (24, 36), seed=2, decimals=2),
        "liver": realistic_category(6, 32, seed=3),
    }
    return {name: (maps, masks, maps.max(axis=(1, 2))) for name, (maps, masks) in data.items()}


def _accumulator(**kwargs) -> MetricAccumulator:
    return MetricAccumulator(segmentation_thresholds=THRESHOLDS, include_cflow200=True, **kwargs)


def _single_pass(data) -> MetricAccumulator:
    accumulator = _accumulator()
    for name, (maps, masks, scores) in data.items():
        accumulator.update(name, scores=scores, maps=maps, masks=masks)
    return accumulator


def test_per_category_values_equal_the_standalone_functions():
    data = _dataset()
    report = _single_pass(data).compute()
    assert list(report.per_category) == ["brain", "chest", "liver"]
    for name, (maps, masks, scores) in data.items():
        result = report.per_category[name]
        expected = {
            **image_metrics(scores, masks.any(axis=(1, 2))),
            **pixel_metrics(maps, masks, include_cflow200=True),
        }
        for threshold in THRESHOLDS:
            expected |= dict(segmentation_at_threshold(maps, masks, threshold))
        assert dict(result) == expected
        assert result.counts["images"] == len(maps)
    for metric, value in report.macro_mean.items():
        per_class = [report.per_category[c][metric] for c in data]
        assert value == pytest.approx(math.fsum(per_class) / 3, abs=1e-15)
    assert report.variants["pixel_aupro@0.3[cflow200-compat]"].startswith("NOT the MVTec metric")


def _shards(data, rng):
    """Split every category's images over three shards, interleaving categories in mixed batches."""
    shards = [_accumulator() for _ in range(3)]
    for name, (maps, masks, scores) in data.items():
        assignment = rng.integers(0, 3, size=len(maps))
        for shard_index, shard in enumerate(shards):
            chosen = np.flatnonzero(assignment == shard_index)
            if chosen.size:
                shard.update([name] * chosen.size, scores=scores[chosen], maps=maps[chosen], masks=masks[chosen])
    return shards


def test_merged_shards_give_bit_identical_results(tmp_path):
    data = _dataset()
    expected = _single_pass(data).compute().to_dict()
    shards = _shards(data, np.random.default_rng(0))
    for order in ([0, 1, 2], [2, 0, 1]):
        assert merged_through_files(shards, tmp_path, order).compute().to_dict() == expected


def test_mixed_category_batches_and_per_image_lists_give_the_same_numbers():
    data = _dataset()
    expected = _single_pass(data).compute().to_dict()
    accumulator = _accumulator()
    names = [n for n, (maps, _, _) in data.items() for _ in range(len(maps))]
    maps = [m for (ms, _, _) in data.values() for m in ms]
    masks = [m for (_, ks, _) in data.values() for m in ks]
    scores = np.concatenate([s for (_, _, s) in data.values()])
    order = np.random.default_rng(1).permutation(len(names))
    accumulator.update(
        [names[i] for i in order], scores=scores[order], maps=[maps[i] for i in order], masks=[masks[i] for i in order]
    )
    assert accumulator.compute().to_dict() == expected


def test_same_size_batch_of_mixed_categories():
    data = _dataset()
    brain, liver = data["brain"], data["liver"]
    maps = np.concatenate([brain[0][:, :32, :32], liver[0]])
    masks = np.concatenate([brain[1][:, :32, :32], liver[1]])
    names = ["brain"] * 9 + ["liver"] * 6
    order = np.random.default_rng(2).permutation(15)
    together = MetricAccumulator()
    together.update([names[i] for i in order], maps=maps[order], masks=masks[order])
    apart = MetricAccumulator()
    apart.update("brain", maps=maps[:9], masks=masks[:9])
    apart.update("liver", maps=maps[9:], masks=masks[9:])
    assert together.compute().to_dict() == apart.compute().to_dict()


def test_tie_heavy_maps_are_stored_run_length_encoded(tmp_path):
    maps, masks = random_category(6, (30, 30), seed=4, decimals=1)
    accumulator = MetricAccumulator()
    accumulator.update("c", maps=maps.astype(np.float32), masks=masks)
    state = accumulator.state_dict()
    assert "category0/pixels/score_values" in state and "category0/pixels/scores" not in state
    assert state["category0/pixels/score_values"].size <= 21
    accumulator.save(tmp_path / "s.npz")
    assert MetricAccumulator.load(tmp_path / "s.npz").compute().to_dict() == accumulator.compute().to_dict()


def test_shards_of_different_dtypes_merge_exactly():
    maps, masks = realistic_category(6, 32, seed=5)
    one = MetricAccumulator()
    one.update("c", maps=maps.astype(np.float64), masks=masks)
    first, second = MetricAccumulator(), MetricAccumulator()
    first.update("c", maps=maps[:3], masks=masks[:3])  # float32
    second.update("c", maps=maps[3:].astype(np.float64), masks=masks[3:])
    assert first.merge(second).compute().to_dict() == one.compute().to_dict()


def test_only_image_labels_reports_pixel_metrics_as_undefined():
    accumulator = _accumulator()
    accumulator.update("xray", scores=[0.1, 0.8, 0.4, 0.9], labels=[0, 1, 0, 1])
    result = accumulator.compute().per_category["xray"]
    assert result["image_auroc"] == 1.0
    assert result.undefined["pixel_auroc"] == "no masks given"
    assert result.undefined["dice@0.55"] == "no masks given"


def test_only_anomalous_images_and_macro_mean_says_which_category():
    maps, masks = realistic_category(4, 32, seed=6, anomalous_fraction=1.0)
    normal_maps, normal_masks = realistic_category(4, 32, seed=7, anomalous_fraction=0.0)
    accumulator = MetricAccumulator()
    accumulator.update("lesions-only", scores=maps.max(axis=(1, 2)), maps=maps, masks=masks)
    both_maps, both_masks = np.concatenate([maps, normal_maps]), np.concatenate([masks, normal_masks])
    accumulator.update("mixed", scores=both_maps.max(axis=(1, 2)), maps=both_maps, masks=both_masks)
    report = accumulator.compute()
    lesions_only = report.per_category["lesions-only"]
    assert lesions_only.undefined == {"image_auroc": "no normal images"}
    assert "pixel_aupro@0.3[mvtec-exact]" in lesions_only  # normal pixels exist in anomalous images
    assert report.macro_mean.undefined == {"image_auroc": "undefined in lesions-only (no normal images)"}
    assert "n/a image_auroc: undefined in lesions-only" in report.format_table()


def test_partially_missing_inputs_are_reported():
    maps, masks = realistic_category(4, 32, seed=8)
    accumulator = MetricAccumulator()
    accumulator.update("c", scores=maps.max(axis=(1, 2)), maps=maps, masks=masks)
    accumulator.update("c", scores=[0.5], labels=[1])
    report = accumulator.compute()
    result = report.per_category["c"]
    # Pixel metrics over the 4 images with masks, labelled with that count; image metrics over all 5.
    alone = MetricAccumulator()
    alone.update("c", scores=maps.max(axis=(1, 2)), maps=maps, masks=masks)
    assert result["pixel_auroc"] == alone.compute().per_category["c"]["pixel_auroc"]
    assert result.counts["pixel_metric_images"] == 4 and result.counts["images"] == 5
    assert "image_auroc" in result
    assert "c: pixel metrics over the 4 of 5 images that have masks" in report.format_table()


def test_invalid_update_adds_nothing():
    maps, masks = realistic_category(3, 16, seed=9)
    accumulator = MetricAccumulator()
    accumulator.update("c", maps=maps, masks=masks)
    before = accumulator.compute().to_dict()
    bad = maps.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        accumulator.update(["c", "d", "d"], scores=[1.0, 2.0, 3.0], maps=bad, masks=masks)
    assert accumulator.categories == ["c"]
    assert accumulator.compute().to_dict() == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": [0.1, 0.2]}, "labels"),
        ({"maps": np.zeros((2, 4, 4))}, "without masks"),
        ({"masks": np.zeros((2, 4, 4))}, "without maps"),
        ({}, "nothing to add"),
        ({"scores": [0.1], "maps": np.zeros((2, 4, 4)), "masks": np.zeros((2, 4, 4))}, "batch sizes differ"),
    ],
)
def test_update_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetricAccumulator().update("c", **kwargs)


def test_merge_refuses_different_settings():
    with pytest.raises(ValueError, match="different settings"):
        MetricAccumulator(fpr_limit=0.3).merge(MetricAccumulator(fpr_limit=0.05))
    with pytest.raises(ValueError, match="not a medzsad"):
        MetricAccumulator.from_state_dict({"format": np.asarray("something else")})
