"""AUPRO: the exact MVTec variant against a slow reference, the golden toy value, and the compat variant."""

from __future__ import annotations

import json

import numpy as np
import pytest
from metrics_reference import reference_aupro, reference_cflow200
from metrics_synthetic import random_category, realistic_category

from medzsad.metrics import UndefinedMetricError, aupro, aupro_cflow200, image_metrics, pixel_metrics

EXACT = 1e-10  # exact algorithm vs the float64 reference: only summation-order rounding differs


def _single_region(shape=(30, 40)):
    rng = np.random.default_rng(3)
    maps = rng.random((3, *shape))
    masks = np.zeros((3, *shape), dtype=bool)
    masks[1, 10:20, 5:25] = True
    return maps, masks


def _border_regions(shape=(25, 25)):
    rng = np.random.default_rng(4)
    maps = np.round(rng.random((4, *shape)), 2)
    masks = np.zeros((4, *shape), dtype=bool)
    masks[0, 0:5, :] = True  # whole top row band
    masks[1, :, -3:] = True
    masks[2, -1, -1] = True  # single corner pixel
    masks[2, 0:4, 0:4] = True
    return maps, masks


def _many_small_regions(shape=(40, 40)):
    rng = np.random.default_rng(5)
    maps = rng.random((5, *shape)).astype(np.float32)
    masks = np.zeros((5, *shape), dtype=bool)
    masks[:, ::3, ::3] = rng.random((5, 14, 14)) < 0.5  # isolated pixels: one region each
    maps[masks] += 0.2
    return maps, masks


def _diagonal_chain(shape=(12, 12)):
    # Pixels touching only at corners: one region under 8-connectivity, eleven under 4-connectivity.
    rng = np.random.default_rng(6)
    maps = rng.random((2, *shape))
    masks = np.zeros((2, *shape), dtype=bool)
    masks[0, np.arange(11), np.arange(11)] = True
    return maps, masks


CASES = {
    "random": lambda: random_category(6, (32, 48), seed=0),
    "ties-1-decimal": lambda: random_category(6, (32, 48), seed=1, decimals=1),
    "ties-2-decimals": lambda: random_category(6, (32, 48), seed=2, decimals=2),
    "ties-0-decimals": lambda: random_category(6, (20, 20), seed=7, decimals=0),
    "single-region": _single_region,
    "border-regions": _border_regions,
    "many-small-regions": _many_small_regions,
    "diagonal-chain": _diagonal_chain,
    "realistic": lambda: realistic_category(6, 64, seed=8),
}


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_aupro_matches_reference(case, fpr_limit):
    maps, masks = CASES[case]()
    assert masks.any()
    ours = aupro(maps, masks, fpr_limit=fpr_limit)
    assert ours.value == pytest.approx(reference_aupro(maps, masks, fpr_limit), abs=EXACT)


def test_reference_with_float32_fpr_agrees_to_1e6():
    maps, masks = random_category(6, (32, 48), seed=9, decimals=2)
    official_like = reference_aupro(maps, masks, fpr_dtype=np.float32)
    assert aupro(maps, masks).value == pytest.approx(official_like, abs=1e-6)


def test_eight_connectivity_counts_a_diagonal_chain_as_one_region():
    maps, masks = _diagonal_chain()
    assert pixel_metrics(maps, masks).counts["regions"] == 1


def test_invariant_to_image_order_and_monotone_transforms():
    maps, masks = random_category(6, (24, 24), seed=10, decimals=2)
    base = aupro(maps, masks).value
    order = np.random.default_rng(0).permutation(len(maps))
    assert aupro(maps[order], masks[order]).value == base
    assert aupro(np.exp(3 * maps), masks).value == pytest.approx(base, abs=1e-12)


def test_lists_of_different_sizes_match_the_reference():
    maps_a, masks_a = random_category(3, (20, 30), seed=11)
    maps_b, masks_b = random_category(3, (17, 9), seed=12, decimals=1)
    maps, masks = [*maps_a, *maps_b], [*masks_a, *masks_b]
    assert aupro(maps, masks).value == pytest.approx(reference_aupro(maps, masks), abs=EXACT)


def test_curve_ends_at_the_limit_and_is_monotone():
    maps, masks = realistic_category(4, 48, seed=13)
    result = aupro(maps, masks, fpr_limit=0.3)
    assert result.fpr[0] == 0 and result.pro[0] == 0
    assert result.fpr[-1] == pytest.approx(0.3)
    assert np.all(np.diff(result.fpr) >= 0) and np.all(np.diff(result.pro) >= 0)
    assert result.name == "pixel_aupro@0.3[mvtec-exact]"
    area = np.sum(0.5 * (result.pro[1:] + result.pro[:-1]) * np.diff(result.fpr)) / 0.3
    assert area == pytest.approx(result.value, abs=1e-12)


def test_constant_maps_give_the_diagonal():
    maps = np.full((3, 10, 10), 0.5, dtype=np.float32)
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, 2:5, 2:5] = True
    # One tie group: the curve is the straight line (0, 0) -> (1, 1); area to 0.3 is 0.045.
    assert aupro(maps, masks).value == pytest.approx(0.15, abs=1e-12)


def test_perfect_and_inverted_detectors():
    _, masks = random_category(5, (16, 16), seed=14)
    assert aupro(masks.astype(float), masks).value == pytest.approx(1.0)
    assert aupro(-masks.astype(float), masks).value == pytest.approx(0.0)


def test_undefined_without_regions_or_without_normal_pixels():
    maps = np.random.default_rng(0).random((2, 8, 8))
    with pytest.raises(UndefinedMetricError, match="no anomalous pixels"):
        aupro(maps, np.zeros_like(maps, dtype=bool))
    with pytest.raises(UndefinedMetricError, match="no normal pixels"):
        aupro(maps, np.ones_like(maps, dtype=bool))


@pytest.mark.parametrize("bad_limit", [0.0, -0.1, 1.5])
def test_rejects_bad_fpr_limit(bad_limit):
    maps, masks = _single_region()
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=bad_limit)


def test_counts_do_not_saturate_past_2_pow_24_pixels():
    # 17.3 M normal pixels: a float32 running count stalls at 16 777 216 and would shift every FPR.
    height, width = 4160, 4160
    maps = np.zeros((1, height, width), dtype=np.float32)
    masks = np.zeros((1, height, width), dtype=bool)
    masks[0, :2, :50] = True  # one 100-pixel region
    maps[0, :2, :25] = 2.0  # half of the region above everything
    maps[0, :2, 25:50] = 0.5  # the other half between the two normal levels
    maps[0, 2:1042, :] = 1.0  # k normal pixels at 1.0, the rest at 0.0
    normal = height * width - 100
    high = 1040 * width
    assert normal > 2**24
    fpr_step = high / normal  # about 0.25: PRO is 0.5 up to it, then 1
    expected_aupro = (0.5 * fpr_step + 1.0 * (0.3 - fpr_step)) / 0.3
    metrics = pixel_metrics(maps, masks)
    assert metrics["pixel_aupro@0.3[mvtec-exact]"] == pytest.approx(expected_aupro, abs=1e-12)
    assert metrics.counts["normal_pixels"] == normal
    expected_auroc = (50 * normal + 50 * (normal - high)) / (100 * normal)
    assert metrics["pixel_auroc"] == pytest.approx(expected_auroc, abs=1e-12)


@pytest.mark.slow
def test_golden_value_of_the_official_toy_set():
    # MVTec generic_util.generate_toy_dataset: seed 1338, 200 maps drawn in order, GT [0:10, 0:10] = 1.
    np.random.seed(1338)
    maps = np.empty((200, 300, 500))
    for index in range(200):
        maps[index] = np.random.random((300, 500))
    masks = np.zeros(maps.shape, dtype=bool)
    masks[:, 0:10, 0:10] = True
    assert aupro(maps, masks).value == pytest.approx(0.1510193, abs=1e-6)


# --- the AnomalyCLIP / FAPrompt 200-threshold compatibility variant ---------------------------------


@pytest.mark.parametrize("case", ["random", "ties-2-decimals", "single-region", "realistic"])
def test_cflow200_matches_the_literal_algorithm(case):
    maps, masks = CASES[case]()
    maps = maps.astype(np.float32)
    literal = reference_cflow200(maps, masks.astype(np.float32))
    assert aupro_cflow200(maps, masks).value == pytest.approx(literal, abs=1e-12)


OFFICIAL_NAMES = {
    "image-auroc": "image_auroc",
    "image-ap": "image_ap",
    "pixel-auroc": "pixel_auroc",
    "pixel-ap": "pixel_ap",
    "pixel-aupro": "pixel_aupro@0.3[cflow200-compat]",  # what AnomalyCLIP/FAPrompt call AUPRO
}


@pytest.mark.parametrize("method", ["anomalyclip", "faprompt", "cops"])
def test_every_official_number_on_the_parity_fixtures(parity_dir, method):
    official = json.loads((parity_dir / method / "manifest.json").read_text())["metrics_on_these_images"]
    maps = np.load(parity_dir / method / "maps518.npz")["infer/anomaly_map"]
    image_scores = np.load(parity_dir / method / "outputs.npz")["infer/image_score"]
    inputs = np.load(parity_dir / "inputs" / "inputs.npz")
    ours = {
        **image_metrics(image_scores, inputs["labels"]),
        **pixel_metrics(maps, inputs["masks_518"], include_cflow200=True),
    }
    for official_name, value in official.items():
        assert ours[OFFICIAL_NAMES[official_name]] == pytest.approx(value, abs=1e-12), official_name
    # The exact metric is a different number on the same maps.
    assert abs(ours["pixel_aupro@0.3[mvtec-exact]"] - ours["pixel_aupro@0.3[cflow200-compat]"]) > 1e-4


def test_cflow200_undefined_for_constant_maps():
    maps = np.ones((2, 6, 6))
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, 1:3, 1:3] = True
    with pytest.raises(UndefinedMetricError, match="constant maps"):
        aupro_cflow200(maps, masks)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.uint8])
def test_any_real_map_dtype_matches_both_references(dtype):
    maps, masks = random_category(5, (24, 30), seed=15)
    maps = (maps * 100).astype(dtype) if dtype == np.uint8 else maps.astype(dtype)
    assert aupro(maps, masks).value == pytest.approx(reference_aupro(maps, masks), abs=EXACT)
    literal = reference_cflow200(maps, masks.astype(np.float32))
    assert aupro_cflow200(maps, masks).value == pytest.approx(literal, abs=1e-12)
