"""Exact, mergeable per-category accumulator: the path every evaluation goes through.

Update it batch by batch, in as many processes or machines as you like; save each shard's
``state_dict()`` (plain numpy arrays, ``np.savez``-able); load and ``merge`` them; ``compute()`` gives the
same numbers as one pass over all the data (to the last bit: every array is put in a canonical order
before anything is summed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from medzsad.metrics._validate import as_label_vector, as_pixel_batches, as_score_vector
from medzsad.metrics.binned import BinnedPixelStatistics, binned_variant
from medzsad.metrics.category import pixel_counts, pixel_metric_names, pixel_metrics_from_data
from medzsad.metrics.pixels import PixelStatistics
from medzsad.metrics.pro import aupro_from_data, aupro_undefined_reason, check_fpr_limit
from medzsad.metrics.ranking import ranking_metrics
from medzsad.metrics.results import (
    MVTEC_EXACT,
    AuproResult,
    MetricSet,
    MetricsReport,
    describe_metric,
    macro_mean,
    threshold_suffix,
)
from medzsad.metrics.segmentation import segmentation_counts, summarise_segmentation

STATE_FORMAT = "medzsad.metrics.MetricAccumulator/1"
IMAGE_NAMES = ("image_auroc", "image_ap", "image_f1max")
SEGMENTATION_PREFIXES = ("dice", "iou", "normal_fp_pixel_rate", "normal_fp_image_rate")


class _CategoryState:
    """Everything one category needs: image scores/labels, the pixel statistic, per-image seg counts."""

    def __init__(self, num_thresholds: int, pixel_bins: int | None = None) -> None:
        self.image_scores: list[np.ndarray] = []
        self.image_labels: list[np.ndarray] = []
        self.images = 0
        self.images_without_scores = 0
        self.images_without_masks = 0
        self.pixels = new_pixel_statistics(pixel_bins)
        self.segmentation: list[np.ndarray] = [np.zeros((0, num_thresholds, 3), dtype=np.int64)]
        self.pixels_per_image: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]

    def merge(self, other: _CategoryState) -> None:
        self.image_scores.extend(other.image_scores)
        self.image_labels.extend(other.image_labels)
        self.images += other.images
        self.images_without_scores += other.images_without_scores
        self.images_without_masks += other.images_without_masks
        self.pixels.merge(other.pixels)
        self.segmentation.extend(other.segmentation)
        self.pixels_per_image.extend(other.pixels_per_image)

    def scores_and_labels(self) -> tuple[np.ndarray, np.ndarray]:
        scores = np.concatenate(self.image_scores) if self.image_scores else np.zeros(0)
        labels = np.concatenate(self.image_labels) if self.image_labels else np.zeros(0, dtype=bool)
        return scores, labels

    def state_dict(self) -> dict[str, np.ndarray]:
        scores, labels = self.scores_and_labels()
        state = {
            "image_scores": scores,
            "image_labels": labels,
            "image_counts": np.asarray(
                [self.images, self.images_without_scores, self.images_without_masks], dtype=np.int64
            ),
            "segmentation_counts": np.concatenate(self.segmentation),
            "pixels_per_image": np.concatenate(self.pixels_per_image),
        }
        state.update({f"pixels/{key}": value for key, value in self.pixels.state_dict().items()})
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray], pixel_bins: int | None = None) -> _CategoryState:
        segmentation = np.asarray(state["segmentation_counts"], dtype=np.int64)
        category = cls(segmentation.shape[1], pixel_bins)
        category.image_scores = [np.asarray(state["image_scores"], dtype=np.float64)]
        category.image_labels = [np.asarray(state["image_labels"], dtype=bool)]
        category.images, category.images_without_scores, category.images_without_masks = (
            int(v) for v in state["image_counts"]
        )
        category.segmentation = [segmentation]
        category.pixels_per_image = [np.asarray(state["pixels_per_image"], dtype=np.int64)]
        pixel_state = {k.removeprefix("pixels/"): v for k, v in state.items() if k.startswith("pixels/")}
        kind = PixelStatistics if pixel_bins is None else BinnedPixelStatistics
        category.pixels = kind.from_state_dict(pixel_state)
        return category


def new_pixel_statistics(pixel_bins: int | None) -> PixelStatistics | BinnedPixelStatistics:
    """The exact statistic, or the constant-memory one with ``pixel_bins`` levels."""
    return PixelStatistics() if pixel_bins is None else BinnedPixelStatistics(pixel_bins)


class MetricAccumulator:
    """Exact image and pixel metrics per category, accumulated over batches and mergeable across shards.

    Args:
        fpr_limit: FPR limit of the AU-PRO, ``0 < fpr_limit <= 1`` (papers: 0.3).
        segmentation_thresholds: thresholds at which to report Dice/IoU on anomalous images and the
            false-positive rates on normal images (``map >= t`` is anomalous); they must be fixed before
            the data is seen because the per-image counts are taken on update.
        include_cflow200: also report the AnomalyCLIP/FAPrompt 200-threshold compatibility AUPRO.
        pixel_bins: ``None`` (default) for exact pixel metrics; a number of levels (e.g. 65536) for the
            constant-memory statistic of :mod:`medzsad.metrics.binned`: maps in [0, 1] quantized to
            that many levels, AU-PRO named ``[mvtec-binned<bins>]``. Not combinable with the
            compatibility AUPRO, which needs the raw scores.

    Memory: exact, the normal-pixel scores are kept (itemsize bytes per pixel, e.g. 4 for float32
    maps), the anomalous pixels with an int64 region size each, and two floats per image; binned,
    ``24 * pixel_bins`` bytes per category plus the two floats per image.
    """

    def __init__(
        self,
        *,
        fpr_limit: float = 0.3,
        segmentation_thresholds: Sequence[float] = (),
        include_cflow200: bool = False,
        pixel_bins: int | None = None,
    ) -> None:
        self.fpr_limit = check_fpr_limit(fpr_limit)
        self.segmentation_thresholds = tuple(float(t) for t in segmentation_thresholds)
        self.include_cflow200 = bool(include_cflow200)
        self.pixel_bins = None if pixel_bins is None else int(pixel_bins)
        if self.pixel_bins is not None and self.include_cflow200:
            raise ValueError("the compatibility AUPRO needs the raw pixel scores; it cannot use pixel_bins")
        new_pixel_statistics(self.pixel_bins)  # validates the number of bins now, not at the first batch
        self._categories: dict[str, _CategoryState] = {}

    @property
    def categories(self) -> list[str]:
        return sorted(self._categories)

    def update(
        self,
        category: str | Sequence[str],
        *,
        scores: ArrayLike | None = None,
        labels: ArrayLike | None = None,
        maps: ArrayLike | Sequence[np.ndarray] | None = None,
        masks: ArrayLike | Sequence[np.ndarray] | None = None,
    ) -> None:
        """Add a batch of ``N`` images. Nothing is added if any input is invalid.

        Args:
            category: one category name for the whole batch, or ``N`` names (one per image).
            scores: ``(N,)`` image anomaly scores (higher = more anomalous), or None.
            labels: ``(N,)`` image labels, 1/True = anomalous; if None they are taken from the masks
                (an image is anomalous when its mask has any anomalous pixel).
            maps: ``(N, H, W)`` anomaly maps or a sequence of ``N`` ``(H, W)`` maps, finite; or None.
            masks: ground truth with exactly the maps' shapes, bool or 0/1; required with ``maps``.
        """
        if maps is not None and masks is not None:
            maps, masks = as_pixel_batches(maps, masks)
        num_images = self._batch_size(scores, maps, masks)
        names = _category_names(category, num_images)
        pixel_parts = self._pixel_parts(names, maps, masks) if maps is not None else {}
        score_vector = as_score_vector(scores) if scores is not None else None
        label_vector = self._labels(labels, num_images, pixel_parts, names)
        self._commit(names, score_vector, label_vector, pixel_parts)

    def _batch_size(self, scores, maps, masks) -> int:
        if maps is None and masks is not None:
            raise ValueError("masks were given without maps")
        if maps is not None and masks is None:
            raise ValueError("maps were given without masks; pixel metrics need ground-truth masks")
        if scores is None and maps is None:
            raise ValueError("nothing to add: give scores and/or maps with masks")
        sizes = {}
        if scores is not None:
            sizes["scores"] = len(np.atleast_1d(np.asarray(scores)))
        if maps is not None:
            sizes["maps"], sizes["masks"] = len(maps), len(masks)
        if len(set(sizes.values())) != 1:
            raise ValueError(f"batch sizes differ: {sizes}")
        return next(iter(sizes.values()))

    def _pixel_parts(self, names: list[str], map_batch, mask_batch) -> dict[str, tuple]:
        """Per category: a fresh PixelStatistics, per-image anomaly flags, seg counts, pixels per image."""
        parts = {}
        for name, indices in _group_indices(names).items():
            statistics, has_anomaly, seg, pixels = new_pixel_statistics(self.pixel_bins), [], [], []
            for sub_maps, sub_masks, where in _sub_batches(map_batch, mask_batch, indices, len(names)):
                binary = statistics.add(sub_maps, sub_masks, where)
                sub_maps = sub_maps.reshape(binary.shape)  # one (H, W) sample -> (1, H, W)
                has_anomaly.append(binary.reshape(binary.shape[0], -1).any(axis=1))
                seg.append(segmentation_counts(sub_maps, binary, self.segmentation_thresholds))
                pixels.append(np.full(binary.shape[0], binary[0].size, dtype=np.int64))
            parts[name] = (statistics, np.concatenate(has_anomaly), seg, pixels)
        return parts

    @staticmethod
    def _labels(labels, num_images: int, pixel_parts: dict, names: list[str]) -> np.ndarray | None:
        if labels is not None:
            return as_label_vector(labels, num_images)
        if not pixel_parts:
            return None
        derived = np.zeros(num_images, dtype=bool)
        for name, indices in _group_indices(names).items():
            derived[indices] = pixel_parts[name][1]
        return derived

    def _commit(self, names, score_vector, label_vector, pixel_parts) -> None:
        if score_vector is not None and label_vector is None:
            raise ValueError("scores need labels, or masks to take the labels from")
        for name, indices in _group_indices(names).items():
            state = self._categories.setdefault(name, self._new_category())
            state.images += indices.size
            if score_vector is None:
                state.images_without_scores += indices.size
            else:
                state.image_scores.append(score_vector[indices])
                state.image_labels.append(label_vector[indices])
            if name not in pixel_parts:
                state.images_without_masks += indices.size
                continue
            statistics, _, seg, pixels = pixel_parts[name]
            state.pixels.merge(statistics)
            state.segmentation.extend(seg)
            state.pixels_per_image.extend(pixels)

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Add another accumulator's data (e.g. a shard loaded from disk); returns self."""
        mine = (self.fpr_limit, self.segmentation_thresholds, self.include_cflow200, self.pixel_bins)
        theirs = (other.fpr_limit, other.segmentation_thresholds, other.include_cflow200, other.pixel_bins)
        if mine != theirs:
            raise ValueError(
                f"cannot merge accumulators with different settings (fpr_limit, segmentation_thresholds, "
                f"include_cflow200, pixel_bins): {mine} vs {theirs}"
            )
        for name, state in other._categories.items():
            self._categories.setdefault(name, self._new_category()).merge(state)
        return self

    def _new_category(self) -> _CategoryState:
        return _CategoryState(len(self.segmentation_thresholds), self.pixel_bins)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (``np.savez(path, **state)``); arrays may share memory with the accumulator."""
        names = self.categories
        state = {
            "format": np.asarray(STATE_FORMAT),
            "fpr_limit": np.asarray(self.fpr_limit),
            "segmentation_thresholds": np.asarray(self.segmentation_thresholds, dtype=np.float64),
            "include_cflow200": np.asarray(self.include_cflow200),
            "pixel_bins": np.asarray(self.pixel_bins or 0, dtype=np.int64),  # 0: exact
            "categories": np.asarray(names, dtype=str),
        }
        for index, name in enumerate(names):
            for key, value in self._categories[name].state_dict().items():
                state[f"category{index}/{key}"] = value
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> MetricAccumulator:
        found = str(state.get("format", "<missing>"))
        if found != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} state (format: {found})")
        accumulator = cls(
            fpr_limit=float(state["fpr_limit"]),
            segmentation_thresholds=[float(t) for t in np.atleast_1d(state["segmentation_thresholds"])],
            include_cflow200=bool(state["include_cflow200"]),
            pixel_bins=int(state.get("pixel_bins", 0)) or None,
        )
        for index, name in enumerate(np.atleast_1d(state["categories"]).tolist()):
            prefix = f"category{index}/"
            category = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            accumulator._categories[name] = _CategoryState.from_state_dict(category, accumulator.pixel_bins)
        return accumulator

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to an ``.npz`` file."""
        np.savez(path, **self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> MetricAccumulator:
        with np.load(path, allow_pickle=False) as archive:
            return cls.from_state_dict({key: archive[key] for key in archive.files})

    def compute(self) -> MetricsReport:
        """Per-category metrics, their macro mean, and a description of every metric variant."""
        per_category = {name: self._compute_category(self._categories[name]) for name in self.categories}
        mean = macro_mean(per_category)
        return MetricsReport(per_category, mean, {name: describe_metric(name) for name in mean.names()})

    def curves(self) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Curves for figures, per category, where defined: ``image_roc`` (FPR, TPR), ``image_pr``
        (recall, precision) and ``pixel_pro`` (FPR, PRO up to ``fpr_limit``, the exact MVTec curve)."""
        from sklearn.metrics import precision_recall_curve, roc_curve

        out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for name in self.categories:
            state = self._categories[name]
            curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            if state.images_without_scores == 0 and state.images:
                scores, labels = state.scores_and_labels()
                if 0 < labels.sum() < labels.size:
                    fpr, tpr, _ = roc_curve(labels, scores)
                    precision, recall, _ = precision_recall_curve(labels, scores)
                    curves["image_roc"] = (fpr, tpr)
                    curves["image_pr"] = (recall, precision)
            if state.images_without_masks < state.images:
                result = self._aupro(state.pixels)
                if result is not None:
                    curves["pixel_pro"] = (result.fpr, result.pro)
            out[name] = curves
        return out

    def _compute_category(self, state: _CategoryState) -> MetricSet:
        values: dict[str, float] = {}
        undefined: dict[str, str] = {}
        counts = {"images": state.images}
        self._image_part(state, values, undefined, counts)
        self._pixel_part(state, values, undefined, counts)
        return MetricSet(values, undefined, counts)

    def _image_part(self, state, values, undefined, counts) -> None:
        missing = _missing_reason(state.images_without_scores, state.images, "image scores")
        if missing:
            undefined.update(dict.fromkeys(IMAGE_NAMES, missing))
            return
        scores, labels = state.scores_and_labels()
        negatives, positives = np.sort(scores[~labels]), np.sort(scores[labels])[::-1]
        image_values, image_undefined, _ = ranking_metrics(negatives, positives, "image", "images")
        values.update(image_values)
        undefined.update(image_undefined)
        counts["anomalous_images"] = int(positives.size)

    def _pixel_part(self, state, values, undefined, counts) -> None:
        variant = MVTEC_EXACT if self.pixel_bins is None else binned_variant(self.pixel_bins)
        names = pixel_metric_names(self.fpr_limit, self.include_cflow200, variant)
        names += [p + threshold_suffix(t) for t in self.segmentation_thresholds for p in SEGMENTATION_PREFIXES]
        if state.images_without_masks == state.images:
            undefined.update(dict.fromkeys(names, "no masks given"))
            return
        if state.images_without_masks:
            # Over the images that have masks, with the count in the report: one anomalous image without
            # a mask must not blank its whole category's pixel metrics.
            counts["pixel_metric_images"] = state.images - state.images_without_masks
        if isinstance(state.pixels, BinnedPixelStatistics):
            pixel_values, pixel_undefined = state.pixels.metrics(self.fpr_limit)
            counts.update(state.pixels.counts())
        else:
            data = state.pixels.consolidate()
            pixel_values, pixel_undefined = pixel_metrics_from_data(data, self.fpr_limit, self.include_cflow200)
            counts.update(pixel_counts(data))
        seg_values, seg_undefined = summarise_segmentation(
            np.concatenate(state.segmentation),
            np.concatenate(state.pixels_per_image),
            self.segmentation_thresholds,
        )
        values.update(pixel_values | seg_values)
        undefined.update(pixel_undefined | seg_undefined)

    def _aupro(self, pixels: PixelStatistics | BinnedPixelStatistics) -> AuproResult | None:
        if isinstance(pixels, BinnedPixelStatistics):
            return pixels.aupro(self.fpr_limit)
        data = pixels.consolidate()
        return None if aupro_undefined_reason(data) else aupro_from_data(data, self.fpr_limit)


def _missing_reason(without: int, total: int, what: str) -> str | None:
    if without == total:
        return f"no {what} given"
    if without:
        return f"{what} missing for {without} of {total} images"
    return None


def _category_names(category: str | Sequence[str], num_images: int) -> list[str]:
    if isinstance(category, str):
        return [category] * num_images
    names = [str(name) for name in category]
    if len(names) != num_images:
        raise ValueError(f"got {len(names)} category names for {num_images} images")
    return names


def _group_indices(names: list[str]) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name, []).append(index)
    return {name: np.asarray(indices, dtype=np.int64) for name, indices in groups.items()}


def _sub_batches(map_batch, mask_batch, indices: np.ndarray, num_images: int):
    """(maps, masks, where) batches of one category: the whole array when it is all one category."""
    if isinstance(map_batch, np.ndarray):
        if indices.size == num_images:
            yield map_batch, mask_batch, "maps"
        else:
            yield map_batch[indices], mask_batch[indices], f"maps of images {indices.tolist()[:5]}..."
        return
    for index in indices.tolist():
        yield np.asarray(map_batch[index]), np.asarray(mask_batch[index]), f"maps[{index}]"
