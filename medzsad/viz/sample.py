"""The plain record of one scored sample that the engine hands to review and rendering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ReviewSample"]


@dataclass(frozen=True)
class ReviewSample:
    """One scored sample as the engine hands it over for review.

    Attributes:
        sample_id: pseudonymous id from the data layer (letters, digits, ``_ . -``), never a
            file name, UID or patient id.
        category: dataset category, e.g. ``brain_mri``.
        score: image-level anomaly score.
        label: 1 anomalous, 0 normal.
        image: display pixels, uint8 [H, W, 3] (or [H, W]).
        anomaly_map: float32 [h, w] pixel scores; resized to the image for display.
        mask: ground truth, bool [H, W], or None where the dataset has no masks.
        burned_in_text: the source may carry burned-in text (e.g. ultrasound, secondary capture).
        volume_id: pseudonymous id of the volume a slice comes from, None for 2-D images.
        slice_index: the slice's index in that volume, None for 2-D images.
        intensity: how scan values became the display pixels (``Sample.meta["intensity"]``, e.g.
            ``"window 40/80"`` for CT in HU, ``"percentile 0.5-99.5"`` for MR); the review page
            re-windows CT within that range and shows it.
        errors_only: kept beyond the first ``review_limit`` samples because it is among the worst
            errors of the whole dataset (highest-scoring normal, lowest-scoring anomaly): shown on the
            page and in the worst-error lists, never in the fixed panel.
    """

    sample_id: str
    category: str
    score: float
    label: int
    image: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray | None = None
    burned_in_text: bool = False
    volume_id: str | None = None
    slice_index: int | None = None
    intensity: str | None = None
    errors_only: bool = False
