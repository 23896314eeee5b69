"""Input checks shared by the metric functions, with errors that say what is wrong and where.

Resizing maps or masks is the caller's decision (it changes the numbers), so size mismatches are errors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

MapBatch = np.ndarray | Sequence[np.ndarray]


def as_score_vector(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    """1-D float64 copy of finite scores."""
    array = np.asarray(scores)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per image); got shape {array.shape}")
    _check_real(array, name)
    array = array.astype(np.float64)
    _check_finite(array, name)
    return array


def as_label_vector(labels: ArrayLike, length: int, name: str = "labels") -> np.ndarray:
    """1-D bool array from labels that are 0/1 or bool."""
    array = np.asarray(labels)
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) to match the scores; got {array.shape}")
    return _as_binary(array, name)


def as_pixel_batches(maps: ArrayLike | MapBatch, masks: ArrayLike | MapBatch) -> tuple:
    """``(N, H, W)`` arrays (a single ``(H, W)`` pair becomes ``N = 1``), or two lists of ``(H, W)`` arrays."""
    if isinstance(maps, list | tuple):
        return maps, list(masks)
    map_array, mask_array = np.asarray(maps), np.asarray(masks)
    if map_array.ndim == 2:
        map_array, mask_array = map_array[None], mask_array[None]
    if map_array.ndim != 3:
        raise ValueError(
            f"maps must be (N, H, W) or a sequence of (H, W) arrays; got shape {map_array.shape}"
            + (" (squeeze the channel axis first)" if map_array.ndim == 4 else "")
        )
    return map_array, mask_array


def check_maps(maps: np.ndarray, where: str) -> None:
    """Maps must hold finite real numbers."""
    _check_real(maps, where)
    _check_finite(maps, where)


def as_binary_masks(masks: np.ndarray, where: str) -> np.ndarray:
    """Bool view/copy of masks that hold only 0 and 1 (or bool)."""
    return _as_binary(np.asarray(masks), where)


def check_same_shape(maps: np.ndarray, masks: np.ndarray, where: str) -> None:
    if maps.shape != masks.shape:
        raise ValueError(
            f"{where}: map shape {maps.shape} != mask shape {masks.shape}; resizing is the caller's "
            "decision (resize the maps to the mask resolution, or the masks to the evaluation size, and "
            "record which)"
        )


def _check_real(array: np.ndarray, name: str) -> None:
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must hold real-valued scores; got dtype {array.dtype}")


def _check_finite(array: np.ndarray, name: str) -> None:
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return
    # min/max propagate NaN and expose inf without allocating a mask as large as the maps.
    if np.isfinite(array.min()) and np.isfinite(array.max()):
        return
    finite = np.isfinite(array)
    bad = finite.size - int(np.count_nonzero(finite))
    first = np.unravel_index(int(np.argmin(finite)), array.shape)
    raise ValueError(
        f"{name} contain {bad} non-finite value(s) (NaN or inf), first at index {tuple(map(int, first))}; "
        "metrics over them are undefined"
    )


def _as_binary(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must be bool or 0/1 numbers; got dtype {array.dtype}")
    nonzero = array != 0
    offending = array[nonzero & (array != 1)]
    if offending.size:
        examples = np.unique(offending[:1000])[:5].tolist()
        raise ValueError(
            f"{name} must be binary (bool or 0/1); found {offending.size} value(s) outside {{0, 1}}, e.g. "
            f"{examples}; binarise first (e.g. mask > 0 for 0/255 masks, > 0.5 for resized soft masks)"
        )
    return nonzero
