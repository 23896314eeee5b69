"""Dice/IoU on anomalous images and false-positive rates on normal images at a fixed threshold."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_reference import reference_dice
from metrics_synthetic import random_category, realistic_category

from medzsad.metrics import segmentation_at_threshold


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.95])
def test_matches_per_image_loop(threshold):
    maps, masks = random_category(8, (20, 25), seed=1, decimals=2)
    ours = segmentation_at_threshold(maps, masks, threshold)
    expected = reference_dice(maps, masks, threshold)
    suffix = f"@{threshold!r}"
    assert ours["dice" + suffix] == pytest.approx(expected["dice"], abs=1e-12)
    assert ours["iou" + suffix] == pytest.approx(expected["iou"], abs=1e-12)
    assert ours["normal_fp_pixel_rate" + suffix] == pytest.approx(expected["fp_pixel_rate"], abs=1e-12)
    assert ours["normal_fp_image_rate" + suffix] == pytest.approx(expected["fp_image_rate"], abs=1e-12)


def test_false_positives_on_normal_images_are_not_hidden():
    # MONAI's DiceMetric(ignore_empty=True) would report a perfect 1.0 here.
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2, :2] = True
    maps = masks.astype(np.float32)
    maps[1] = 1.0  # the normal image lights up everywhere
    result = segmentation_at_threshold(maps, masks, 0.5)
    assert result["dice@0.5"] == 1.0
    assert result["normal_fp_pixel_rate@0.5"] == 1.0
    assert result["normal_fp_image_rate@0.5"] == 1.0


def test_undefined_parts_are_named():
    maps, masks = realistic_category(3, 32, seed=2, anomalous_fraction=0.0)
    result = segmentation_at_threshold(maps, masks, 0.5)
    assert set(result.undefined) == {"dice@0.5", "iou@0.5"}
    assert "normal_fp_pixel_rate@0.5" in result
    only_anomalous = segmentation_at_threshold(maps, np.ones_like(masks), 0.5)
    assert set(only_anomalous.undefined) == {"normal_fp_pixel_rate@0.5", "normal_fp_image_rate@0.5"}


def test_integer_maps_use_the_mathematical_threshold():
    maps = np.array([[[0, 1], [2, 3]]], dtype=np.uint8)
    masks = np.array([[[0, 1], [1, 1]]], dtype=bool)
    # map >= 0.5 selects 1, 2, 3 (not everything, as int(0.5) == 0 would).
    assert segmentation_at_threshold(maps, masks, 0.5)["dice@0.5"] == 1.0


def test_threshold_and_size_errors():
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="map shape"):
        segmentation_at_threshold(maps, np.zeros((2, 4, 5)), 0.5)
    with pytest.raises(ValueError, match="2 maps but 1 masks"):
        segmentation_at_threshold(maps, [np.zeros((4, 4))], 0.5)
