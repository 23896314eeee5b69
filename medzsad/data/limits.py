"""Size limits checked from headers, before any decoder allocates, and small value checks of readers.

Pillow refuses decompression bombs itself (``Image.MAX_IMAGE_PIXELS``); SimpleITK, tifffile, nibabel
and pydicom do not, so a 0.8 MB deflate TIFF of 20000² or a NIfTI header claiming 10⁵ slices
allocates gigabytes before anything fails. Each reader asks here first, with the size its header
gives. The limits follow Pillow's for 2-D images and allow a whole-body CT for volumes; both can be
raised with the environment variables ``MEDZSAD_MAX_IMAGE_PIXELS`` and ``MEDZSAD_MAX_VOLUME_VOXELS``.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medzsad.data.errors import DataError

__all__ = [
    "check_image_size",
    "check_volume_size",
    "itk_problem",
    "max_image_pixels",
    "max_volume_voxels",
    "refuse_non_finite",
    "tiff_page_shape",
    "warn_soft_mask",
]

_DEFAULT_IMAGE_PIXELS = 2 * 89_478_485  # twice Pillow's warning limit: where Pillow itself refuses
_DEFAULT_VOLUME_VOXELS = 1 << 30  # 1 Gi voxels: 4 GiB as float32, above any clinical CT/MR volume


def _limit(variable: str, default: int) -> int:
    text = os.environ.get(variable, "")
    return int(text) if text.strip().isdigit() else default


def max_image_pixels() -> int:
    """The largest 2-D image (pixels, all frames of a file together) a reader decodes."""
    return _limit("MEDZSAD_MAX_IMAGE_PIXELS", _DEFAULT_IMAGE_PIXELS)


def max_volume_voxels() -> int:
    """The largest volume (voxels) a reader decodes."""
    return _limit("MEDZSAD_MAX_VOLUME_VOXELS", _DEFAULT_VOLUME_VOXELS)


def _refuse(path: str | Path, what: str, shape: Sequence[int], limit: int, variable: str) -> None:
    count = math.prod(int(n) for n in shape)
    if count > limit or any(int(n) < 0 for n in shape):
        size = "x".join(str(int(n)) for n in shape)
        raise DataError(
            path,
            f"{what} of {size} ({count:,} values) is over the limit of {limit:,} before decoding "
            f"(a decompression bomb or a corrupt header); if it is genuine, raise {variable}",
        )


def check_image_size(path: str | Path, shape: Sequence[int]) -> None:
    """Refuse a 2-D image (or a stack of frames) whose header size exceeds :func:`max_image_pixels`."""
    _refuse(path, "image", shape, max_image_pixels(), "MEDZSAD_MAX_IMAGE_PIXELS")


def check_volume_size(path: str | Path, shape: Sequence[int]) -> None:
    """Refuse a volume whose header size exceeds :func:`max_volume_voxels`."""
    _refuse(path, "volume", shape, max_volume_voxels(), "MEDZSAD_MAX_VOLUME_VOXELS")


def tiff_page_shape(path: Path) -> tuple[int, ...]:
    """Shape of a TIFF's first page from its tags (nothing decoded)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(int(n) for n in tif.pages[0].shape)
    except Exception as exc:
        raise DataError(path, f"cannot read TIFF header ({type(exc).__name__}: {_line(exc)})") from None


def refuse_non_finite(path: str | Path, array: np.ndarray, what: str = "voxel") -> None:
    """Float data with NaN or infinite values cannot be normalised; say so instead of scoring garbage."""
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise DataError(path, f"{bad:,} {what} value(s) are NaN or infinite; fix or mask them before scoring")


# ITK messages start with the C++ source line ("... sitkImageReaderBase.cxx:97:"); the reason follows.
_ITK_NOISE = re.compile(r"\.(?:cxx|h|hxx|cpp):\d+|^itk::|^Exception thrown in SimpleITK|^sitk::ERROR:?\s*$")


def itk_problem(exc: BaseException) -> str:
    """The reason of a SimpleITK error without its C++ source lines, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if not _ITK_NOISE.search(line)]
    text = reasons[-1] if reasons else (lines[-1] if lines else type(exc).__name__)
    text = re.sub(r"^(?:sitk::ERROR:|Description:|ITK ERROR:|\[\w+\] \w+:)\s*", "", text)
    return text[:200]


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


_warned_mask_folders: set[str] = set()


def warn_soft_mask(path: str | Path, values: np.ndarray) -> None:
    """Warn (once per folder) when a mask holds more than two levels: a soft or JPEG-compressed mask,
    whose every value > 0 then counts as lesion (as in the official loaders), edges and noise included."""
    folder = str(Path(path).parent)
    if folder in _warned_mask_folders or values.size == 0:
        return
    top = values.max()
    if bool(((values > 0) & (values < top)).any()):
        _warned_mask_folders.add(folder)
        warnings.warn(
            f"{path}: mask is not binary (values between 0 and {top}, e.g. a soft or JPEG mask); every "
            "value > 0 counts as lesion. Save masks as 0/255 PNG to be exact (warned once per folder)",
            stacklevel=3,
        )
