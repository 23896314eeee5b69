"""Constant-memory pixel statistic for archives whose pixel scores do not fit in memory.

The exact statistic (:mod:`medzsad.metrics.pixels`) keeps every pixel score: 4 bytes per pixel, about
1 MB per 518² map, 300 GB for 300,000 slices. This one quantizes the maps to ``bins`` equally spaced
levels over [0, 1] (``round(score * (bins - 1))``) and keeps, per level, three int64 counters:

* how many pixels have that level,
* how many of them are anomalous,
* their PRO weight ``1 / |region|``, stored in fixed point (units of 2⁻³², each region's shares summing
  to exactly 1), so sums are integers and merging shards is exact in any order.

Memory is ``3 * 8 * bins`` bytes per category (1.5 MiB for 65,536 levels) whatever the number of images.
Every pixel metric is then computed *exactly for the quantized maps* with the same code as the exact
statistic (ties within a level count as ties); the only approximation is the quantization itself,
at most ``0.5 / (bins - 1)`` per score. ``scripts/bench_metrics.py`` measures the difference.

Maps must lie in [0, 1] (every method's maps are probabilities); anything else is refused.
"""

from __future__ import annotations

import numpy as np

from medzsad.metrics.pixels import anomalous_regions, map_batch
from medzsad.metrics.pro import aupro_from_levels, check_fpr_limit
from medzsad.metrics.ranking import RankLevels, metrics_from_levels
from medzsad.metrics.results import AuproResult, aupro_name

FIXED_POINT = 2**32  # PRO weights in units of 2^-32: integer sums, exact and order-free merges
DEFAULT_BINS = 65536


def binned_variant(bins: int) -> str:
    """AU-PRO variant name, e.g. ``mvtec-binned65536`` in ``pixel_aupro@0.3[mvtec-binned65536]``."""
    return f"mvtec-binned{bins}"


def _region_pixels(levels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Levels of the anomalous pixels of one map, their fixed-point PRO weights, and the region count.

    A region of ``n`` pixels shares ``FIXED_POINT`` units: each pixel gets ``FIXED_POINT // n`` and the
    first ``FIXED_POINT % n`` pixels (row-major) one more, so every region sums to exactly 1 and PRO is
    off by at most one unit (2^-32) per region at any threshold.
    """
    region_levels, region, sizes = anomalous_regions(levels, mask)
    share, remainder = FIXED_POINT // np.maximum(sizes, 1), FIXED_POINT % np.maximum(sizes, 1)
    order = np.argsort(region, kind="stable")
    first_of_region = np.concatenate(([0], np.cumsum(sizes[1:])))[region[order] - 1]
    rank = np.empty(region.size, dtype=np.int64)
    rank[order] = np.arange(region.size) - first_of_region
    weights = share[region] + (rank < remainder[region])
    return region_levels, weights.astype(np.float64), sizes.size - 1


class BinnedPixelStatistics:
    """Per-level pixel counts of one category; same ``add``/``merge``/``state_dict`` as the exact one.

    Args:
        bins: number of quantization levels over [0, 1], at least 2.
    """

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if int(bins) < 2:
            raise ValueError(f"pixel bins must be at least 2, got {bins}")
        self.bins = int(bins)
        self.pixels = np.zeros(self.bins, dtype=np.int64)
        self.anomalous = np.zeros(self.bins, dtype=np.int64)
        self.pro_weight = np.zeros(self.bins, dtype=np.int64)
        self.num_regions = 0

    def add(self, maps: np.ndarray, masks: np.ndarray, where: str = "maps") -> np.ndarray:
        """Add ``(N, H, W)`` maps in [0, 1], or one ``(H, W)`` map, with masks of the same shape.

        Returns the masks as bool ``(N, H, W)``. ``where`` names the input in error messages.
        """
        maps, binary = map_batch(maps, masks, where)
        self.check_range(maps, where)
        for one_map, mask in zip(maps, binary):  # one map at a time: temporaries stay a few MB
            levels = self.quantize(one_map)
            self.pixels += np.bincount(levels.ravel(), minlength=self.bins)
            if not mask.any():
                continue
            region_levels, weights, regions = _region_pixels(levels, mask)
            self.anomalous += np.bincount(region_levels, minlength=self.bins)
            # float64 bincount sums whole numbers exactly below 2^53 (< 2^21 regions in one image).
            self.pro_weight += np.rint(np.bincount(region_levels, weights, minlength=self.bins)).astype(np.int64)
            self.num_regions += regions
        return binary

    @staticmethod
    def check_range(maps: np.ndarray, where: str = "maps") -> None:
        low, high = float(maps.min()), float(maps.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{where}: binned pixel metrics need maps in [0, 1], got values in [{low:g}, {high:g}]; "
                "use the exact statistic (no pixel bins) for other ranges"
            )

    def quantize(self, maps: np.ndarray) -> np.ndarray:
        """Level ``round(score * (bins - 1))`` of every score in [0, 1] (int32, float64 arithmetic)."""
        return np.rint(maps.astype(np.float64, copy=False) * (self.bins - 1)).astype(np.int32)

    def merge(self, other: BinnedPixelStatistics) -> None:
        """Add another accumulator's counts (exact: integer sums)."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge pixel statistics with {other.bins} and {self.bins} bins")
        self.pixels += other.pixels
        self.anomalous += other.anomalous
        self.pro_weight += other.pro_weight
        self.num_regions += other.num_regions

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "bins": np.asarray(self.bins, dtype=np.int64),
            "bin_pixels": self.pixels,
            "bin_anomalous": self.anomalous,
            "bin_pro_weight": self.pro_weight,
            "num_regions": np.asarray(self.num_regions, dtype=np.int64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> BinnedPixelStatistics:
        statistics = cls(int(state["bins"]))
        statistics.pixels = np.asarray(state["bin_pixels"], dtype=np.int64).copy()
        statistics.anomalous = np.asarray(state["bin_anomalous"], dtype=np.int64).copy()
        statistics.pro_weight = np.asarray(state["bin_pro_weight"], dtype=np.int64).copy()
        statistics.num_regions = int(state["num_regions"])
        return statistics

    def counts(self) -> dict[str, int]:
        anomalous = int(self.anomalous.sum())
        return {
            "normal_pixels": int(self.pixels.sum()) - anomalous,
            "anomalous_pixels": anomalous,
            "regions": self.num_regions,
        }

    def levels(self) -> tuple[RankLevels | None, np.ndarray]:
        """Counts at each quantization level holding anomalous pixels (descending), and the PRO there;
        ``(None, [])`` when there are no anomalous pixels."""
        normal = self.pixels - self.anomalous
        occupied = np.flatnonzero(self.anomalous)[::-1]
        if occupied.size == 0:
            return None, np.zeros(0)
        normal_at_or_above = np.cumsum(normal[::-1])[::-1]
        positives_at_or_above = np.cumsum(self.anomalous[occupied])
        levels = RankLevels(
            values=occupied / (self.bins - 1),
            group_ends=positives_at_or_above - 1,
            positives_at_or_above=positives_at_or_above,
            negatives_above=normal_at_or_above[occupied] - normal[occupied],
            negatives_at_or_above=normal_at_or_above[occupied],
            num_positives=int(positives_at_or_above[-1]),
            num_negatives=int(normal.sum()),
        )
        pro = np.cumsum(self.pro_weight[occupied]) / FIXED_POINT / max(self.num_regions, 1)
        return levels, pro

    def aupro(self, fpr_limit: float) -> AuproResult | None:
        """AU-PRO of the quantized maps; ``None`` without anomalous or without normal pixels."""
        levels, pro = self.levels()
        if levels is None or levels.num_negatives == 0:
            return None
        return aupro_from_levels(levels, pro, check_fpr_limit(fpr_limit), binned_variant(self.bins))

    def metrics(self, fpr_limit: float) -> tuple[dict[str, float], dict[str, str]]:
        """Pixel AUROC, AP, F1-max and AU-PRO of the quantized maps, with reasons for undefined ones."""
        levels, _ = self.levels()
        counts = self.counts()
        values, undefined = metrics_from_levels(levels, counts["normal_pixels"], "pixel", "pixels")
        name = aupro_name(fpr_limit, binned_variant(self.bins))
        result = self.aupro(fpr_limit)
        if result is not None:
            values[name] = result.value
        elif counts["regions"] == 0:
            undefined[name] = "no anomalous pixels (no ground-truth regions)"
        else:
            undefined[name] = "no normal pixels (FPR undefined)"
        return values, undefined
