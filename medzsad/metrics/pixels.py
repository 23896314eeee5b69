"""The exact, mergeable sufficient statistic behind every pixel-level metric of one category.

What any threshold-based pixel metric (AUROC, AP, F1-max, AUPRO, the 200-threshold compat AUPRO)
needs from a category is:

* the multiset of all pixel scores, kept as one array sorted ascending (normal-pixel counts are these
  minus the anomalous ones, so the normal pixels never have to be separated out: a boolean compress
  of every pixel costs several times a plain copy);
* per anomalous pixel: its score and the size of the 8-connected ground-truth region it belongs to
  (its PRO weight is 1 / size); regions are labelled per image when the image is added;
* the number of regions.

Why a sorted array rather than (distinct value, count) pairs: float maps have almost only distinct
values, so pairs would cost 3x the bytes of the values themselves; the sorted multiset is the same
information at 1x, and merging shards is concatenation. Tie-heavy maps are stored run-length encoded
in :meth:`PixelStatistics.state_dict` when that is smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medzsad.metrics._validate import as_binary_masks, check_maps, check_same_shape

# The MVTec reference labels ground truth with a full 3x3 structure: 8-connected regions.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def anomalous_regions(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of the anomalous pixels of one 2-D map, the label (1, 2, ...) of each one's 8-connected
    region, and the region sizes indexed by label (index 0 unused); pixels in row-major order."""
    # Work on the bounding box of the anomalous pixels only; row-major order inside it is the same.
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    mask = mask[box]
    labels, num_regions = ndimage.label(mask, structure=EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel(), minlength=num_regions + 1)
    sizes[0] = 0
    return scores[box][mask], labels[mask], sizes


def anomalous_pixels(scores: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of the anomalous pixels of one 2-D map, the size of each one's 8-connected region, and
    the number of regions (pixels in row-major order)."""
    values, region, sizes = anomalous_regions(scores, mask)
    return values, sizes[region].astype(np.int64), sizes.size - 1


def map_batch(maps: np.ndarray, masks: np.ndarray, where: str = "maps") -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(N, H, W)`` maps and bool masks from a batch or one ``(H, W)`` map and its mask.

    Raises ValueError naming ``where`` for a wrong shape, NaN/inf, or non-binary masks."""
    masks = np.asarray(masks)
    if maps.ndim not in (2, 3):
        raise ValueError(f"{where}: expected (H, W) or (N, H, W) maps; got shape {maps.shape}")
    check_same_shape(maps, masks, where)
    check_maps(maps, where)
    binary = as_binary_masks(masks, where.replace("maps", "masks"))
    if maps.ndim == 2:
        maps, binary = maps[None], binary[None]
    return maps, binary


@dataclass(frozen=True)
class PixelData:
    """Consolidated statistic: ready to compute metrics from.

    ``scores_sorted``: ascending scores of all pixels (normal and anomalous). ``anomalous_descending``:
    anomalous scores in descending order, ties ordered by region size so the order (and every float sum
    over it) does not depend on the order in which images or shards arrived.
    ``anomalous_region_sizes``: aligned with it.
    """

    scores_sorted: np.ndarray
    anomalous_descending: np.ndarray
    anomalous_region_sizes: np.ndarray
    num_regions: int

    @property
    def num_anomalous(self) -> int:
        return int(self.anomalous_descending.size)

    @property
    def num_normal(self) -> int:
        return int(self.scores_sorted.size) - self.num_anomalous


class PixelStatistics:
    """Accumulates the pixel statistic of one category over batches, shards and processes."""

    def __init__(self) -> None:
        self._score_chunks: list[np.ndarray] = []
        self._scores_are_sorted = True
        self._anomalous_chunks: list[np.ndarray] = []
        self._size_chunks: list[np.ndarray] = []
        self.num_regions = 0
        self._consolidated: PixelData | None = None

    def add(self, maps: np.ndarray, masks: np.ndarray, where: str = "maps") -> np.ndarray:
        """Add ``(N, H, W)`` maps, or one ``(H, W)`` map, with masks of the same shape (bool or 0/1).

        Returns the masks as bool ``(N, H, W)``. ``where`` names the input in error messages.
        """
        maps, binary = map_batch(maps, masks, where)
        self._score_chunks.append(np.copy(maps, order="C").reshape(-1))  # owned: sorted in place later
        self._scores_are_sorted = False
        for index in np.flatnonzero(binary.reshape(binary.shape[0], -1).any(axis=1)):
            scores, sizes, regions = anomalous_pixels(maps[index], binary[index])
            self._anomalous_chunks.append(scores)
            self._size_chunks.append(sizes)
            self.num_regions += regions
        self._consolidated = None
        return binary

    def merge(self, other: PixelStatistics) -> None:
        """Add another accumulator's pixels (it is left unchanged; arrays are shared, not copied)."""
        self._score_chunks.extend(other._score_chunks)
        self._scores_are_sorted = len(self._score_chunks) <= 1 and other._scores_are_sorted
        self._anomalous_chunks.extend(other._anomalous_chunks)
        self._size_chunks.extend(other._size_chunks)
        self.num_regions += other.num_regions
        self._consolidated = None

    def consolidate(self) -> PixelData:
        """Sort everything once and keep only the sorted arrays.

        Peak memory: 2x the scores when there are several chunks (they are concatenated), 1x with one.
        float32 scores sort in place without extra memory (float64 ones need a 1x temporary in numpy).
        """
        if self._consolidated is not None:
            return self._consolidated
        dtype = _common_dtype(self._score_chunks)
        scores = _concatenate(self._score_chunks, dtype)
        if not self._scores_are_sorted:
            scores.sort()  # in place, values only: far cheaper than an argsort
        anomalous = _concatenate(self._anomalous_chunks, dtype)
        sizes = _concatenate(self._size_chunks, np.dtype(np.int64))
        # Canonical order: score descending, then region size descending, so shard order is irrelevant.
        order = np.lexsort((sizes, anomalous))[::-1]
        anomalous, sizes = anomalous[order], sizes[order]
        self._score_chunks, self._scores_are_sorted = [scores], True
        self._anomalous_chunks, self._size_chunks = [anomalous], [sizes]
        self._consolidated = PixelData(scores, anomalous, sizes, self.num_regions)
        return self._consolidated

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays (for ``np.savez``); scores run-length encoded when that halves their size."""
        data = self.consolidate()
        state = {
            "anomalous_scores": data.anomalous_descending,
            "anomalous_region_sizes": data.anomalous_region_sizes,
            "num_regions": np.asarray(data.num_regions, dtype=np.int64),
        }
        run_length = _run_length_if_smaller(data.scores_sorted)
        if run_length is None:
            state["scores"] = data.scores_sorted
        else:
            state["score_values"], state["score_counts"] = run_length
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> PixelStatistics:
        statistics = cls()
        if "scores" in state:
            scores = np.asarray(state["scores"])
        else:
            scores = np.repeat(np.asarray(state["score_values"]), np.asarray(state["score_counts"]))
        if scores.size > 1 and not np.all(scores[1:] >= scores[:-1]):
            scores = np.sort(scores)  # a copy: never reorder the caller's arrays
        statistics._score_chunks = [scores]
        statistics._anomalous_chunks = [np.asarray(state["anomalous_scores"])]
        statistics._size_chunks = [np.asarray(state["anomalous_region_sizes"], dtype=np.int64)]
        statistics.num_regions = int(state["num_regions"])
        return statistics


def pixel_data(maps: np.ndarray | list[np.ndarray], masks: np.ndarray | list[np.ndarray]) -> PixelData:
    """Statistic of one category from ``(N, H, W)`` arrays or equal-length lists of ``(H, W)`` arrays."""
    statistics = PixelStatistics()
    if isinstance(maps, np.ndarray) and isinstance(masks, np.ndarray):
        statistics.add(maps, masks)
    else:
        if len(maps) != len(masks):
            raise ValueError(f"got {len(maps)} maps but {len(masks)} masks")
        for index, (one_map, one_mask) in enumerate(zip(maps, masks, strict=True)):
            statistics.add(np.asarray(one_map), one_mask, where=f"maps[{index}]")
    return statistics.consolidate()


def _common_dtype(chunks: list[np.ndarray]) -> np.dtype:
    # Empty chunks (e.g. from an empty shard) must not promote float32 data to float64.
    non_empty = [chunk.dtype for chunk in chunks if chunk.size]
    if non_empty:
        return np.result_type(*non_empty)
    return chunks[0].dtype if chunks else np.dtype(np.float64)


def _concatenate(chunks: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    if len(chunks) == 1 and chunks[0].dtype == dtype:
        return chunks[0]  # no copy for the common single-batch case
    return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype=dtype)


def _run_length_if_smaller(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    if sorted_values.size < 2:
        return None
    is_start = np.empty(sorted_values.size, dtype=bool)
    is_start[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=is_start[1:])
    num_distinct = int(np.count_nonzero(is_start))
    # (value, int64 count) pairs must take at most half the bytes of the plain values.
    if num_distinct * (sorted_values.itemsize + 8) * 2 > sorted_values.nbytes:
        return None
    starts = np.flatnonzero(is_start)
    counts = np.diff(starts, append=sorted_values.size).astype(np.int64)
    return sorted_values[starts], counts
