"""Constant-memory pixel statistic: exact metrics of the quantized maps, exact merges, bounded state."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_synthetic import merged_through_files, random_category, realistic_category

from medzsad.metrics import MetricAccumulator, binned_variant

PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max")


def _unit(maps: np.ndarray) -> np.ndarray:
    """Maps rescaled into [0, 1] (binned statistics refuse other ranges)."""
    return (maps - maps.min()) / (maps.max() - maps.min())


def _dataset():
    brain = realistic_category(9, 40, seed=1)
    chest = random_category(7, (24, 36), seed=2, decimals=2)
    return {"brain": (_unit(brain[0]), brain[1]), "chest": (_unit(chest[0]), chest[1])}


def _report(data, **kwargs):
    accumulator = MetricAccumulator(segmentation_thresholds=(0.5,), **kwargs)
    for name, (maps, masks) in data.items():
        accumulator.update(name, maps=maps, masks=masks)
    return accumulator


def _quantized(maps: np.ndarray, bins: int) -> np.ndarray:
    return np.rint(maps * (bins - 1)) / (bins - 1)


@pytest.mark.parametrize("bins", [17, 257, 65536])
def test_binned_metrics_are_the_exact_metrics_of_the_quantized_maps(bins):
    data = _dataset()
    binned = _report(data, pixel_bins=bins).compute()
    exact = _report({k: (_quantized(m, bins), g) for k, (m, g) in data.items()}).compute()
    for name in data:
        got, expected = binned.per_category[name], exact.per_category[name]
        for key in PIXEL_KEYS:
            assert got[key] == pytest.approx(expected[key], abs=1e-12), key
        # PRO weights are fixed-point integers (2^-32 units): equal to float sums within ~1e-9.
        assert got[f"pixel_aupro@0.3[{binned_variant(bins)}]"] == pytest.approx(
            expected["pixel_aupro@0.3[mvtec-exact]"], abs=1e-9
        )
        assert got.counts == expected.counts
    assert "quantized" in binned.variants[f"pixel_aupro@0.3[{binned_variant(bins)}]"]


def test_65536_levels_stay_close_to_the_unquantized_metrics():
    data = _dataset()
    binned = _report(data, pixel_bins=65536).compute().per_category
    exact = _report(data).compute().per_category
    for name in data:
        for key in PIXEL_KEYS:
            assert abs(binned[name][key] - exact[name][key]) < 1e-4, (name, key)
        drift = abs(binned[name]["pixel_aupro@0.3[mvtec-binned65536]"] - exact[name]["pixel_aupro@0.3[mvtec-exact]"])
        assert drift < 1e-4, name


def test_shards_merge_exactly_in_any_order_through_files(tmp_path):
    data = _dataset()
    expected = _report(data, pixel_bins=1024).compute().to_dict()
    rng = np.random.default_rng(0)
    shards = [MetricAccumulator(segmentation_thresholds=(0.5,), pixel_bins=1024) for _ in range(3)]
    for name, (maps, masks) in data.items():
        assignment = rng.integers(0, 3, size=len(maps))  # every image in exactly one shard
        for index, shard in enumerate(shards):
            chosen = np.flatnonzero(assignment == index)
            if chosen.size:
                shard.update(name, maps=maps[chosen], masks=masks[chosen])
    for order in ([0, 1, 2], [2, 0, 1]):
        merged = merged_through_files(shards, tmp_path, order)
        assert merged.pixel_bins == 1024
        assert merged.compute().to_dict() == expected


def test_one_pass_equals_merged_halves_bit_for_bit():
    data = _dataset()
    whole = _report(data, pixel_bins=4096).compute().to_dict()
    first = _report({k: (m[::2], g[::2]) for k, (m, g) in data.items()}, pixel_bins=4096)
    second = _report({k: (m[1::2], g[1::2]) for k, (m, g) in data.items()}, pixel_bins=4096)
    assert second.merge(first).compute().to_dict() == whole


def test_state_size_does_not_grow_with_the_number_of_images():
    maps, masks = realistic_category(4, 32, seed=5)
    maps = _unit(maps)
    sizes = []
    for repeats in (1, 10):
        accumulator = MetricAccumulator(pixel_bins=512)
        for _ in range(repeats):
            accumulator.update("c", maps=maps, masks=masks)
        pixel_arrays = {k: v for k, v in accumulator.state_dict().items() if "/pixels/" in k}
        sizes.append(sum(v.nbytes for v in pixel_arrays.values()))
    assert sizes[0] == sizes[1] == 3 * 8 * 512 + 2 * 8


def test_curves_and_undefined_metrics_use_the_binned_variant():
    maps, masks = realistic_category(6, 32, seed=7)
    accumulator = MetricAccumulator(pixel_bins=256)
    accumulator.update("c", maps=_unit(maps), masks=masks)
    accumulator.update("normal_only", maps=np.full((2, 8, 8), 0.5), masks=np.zeros((2, 8, 8), dtype=bool))
    fpr, pro = accumulator.curves()["c"]["pixel_pro"]
    assert fpr[-1] == pytest.approx(0.3) and 0 <= pro.min() <= pro.max() <= 1
    report = accumulator.compute()
    assert "regions" in report.per_category["normal_only"].undefined["pixel_aupro@0.3[mvtec-binned256]"]


def test_refusals_name_the_problem():
    accumulator = MetricAccumulator(pixel_bins=256)
    with pytest.raises(ValueError, match=r"need maps in \[0, 1\], got values in \[-0.5, 2\]"):
        accumulator.update("c", maps=np.array([[[-0.5, 2.0]]]), masks=np.array([[[0, 1]]]))
    assert accumulator.categories == []  # nothing added
    with pytest.raises(ValueError, match="compatibility AUPRO needs the raw pixel scores"):
        MetricAccumulator(pixel_bins=256, include_cflow200=True)
    with pytest.raises(ValueError, match="at least 2"):
        MetricAccumulator(pixel_bins=1)
    with pytest.raises(ValueError, match="different settings"):
        MetricAccumulator(pixel_bins=256).merge(MetricAccumulator())
