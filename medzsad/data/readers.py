"""Readers for 2-D images: DICOM (single and multi-frame), PNG/JPEG/TIFF/BMP (8/16-bit, grey/colour),
and single-slice NIfTI/NRRD (volumes live in :mod:`.volumes`, the DICOM pixel pipeline in :mod:`.dicom`).

Output convention (:class:`ImageData`): ``array`` is ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) in the
file's own row/column order (row 0 = top of the image as displayed, as stored in the file; no axis
swaps, unlike MONAI's ``PILReader``). 8-bit sources stay ``uint8`` so they take the official 8-bit
transform; everything else is ``float32`` in physical units (for DICOM after the pixel pipeline of
:func:`medzsad.data.dicom.dicom_pixels`).

Nothing identifying leaves a reader: ``meta`` is allow-listed (:func:`~medzsad.data.ids.clean_meta`)
and ``identity`` (SOP Instance UID or path) is only for hashing into a pseudonymous id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medzsad.data.dicom import dcmread, decode_pixels, read_dicom
from medzsad.data.errors import DataError, NotAnImageError, first_line
from medzsad.data.formats import detect_format
from medzsad.data.ids import clean_meta
from medzsad.data.limits import check_image_size, itk_problem, tiff_page_shape, warn_soft_mask

__all__ = ["ImageData", "read_frames", "read_image", "read_mask"]


@dataclass
class ImageData:
    """One decoded 2-D image.

    Attributes:
        array: ``[H, W]`` or ``[H, W, 3]``; ``uint8`` for 8-bit sources, else ``float32`` physical units.
        modality: DICOM modality code (``"CT"``, ``"MR"``, ...) or ``None``.
        meta: allow-listed technical metadata.
        identity: what identifies the source (SOP Instance UID + frame, or the resolved path). Only for
            :func:`~medzsad.data.ids.pseudonymous_id`; never log it.
    """

    array: np.ndarray
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    identity: str = field(default="", repr=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.array.shape[0]), int(self.array.shape[1])


# ---------------------------------------------------------------------------------------- raster files


def _png_bit_depth(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from the PNG IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        raise DataError(path, "not a valid PNG file")
    return head[24], head[25]


def _png_size(path: Path) -> tuple[int, int]:
    """(height, width) from the PNG IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


def _read_with_sitk(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    check_image_size(path, _png_size(path))  # ITK has no decompression-bomb limit of its own
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise DataError(path, f"cannot read image ({itk_problem(exc)})") from None


def _read_raster(path: Path, fmt: str) -> tuple[np.ndarray, dict[str, Any]]:
    meta: dict[str, Any] = {"source_format": fmt}
    if fmt == "png":
        depth, colour_type = _png_bit_depth(path)
        if depth == 16 and colour_type in (2, 6):
            # Pillow reduces 16-bit colour PNGs to 8 bits; ITK keeps all 16.
            array = _read_with_sitk(path)
            meta["bits_stored"] = 16
            return np.asarray(array[..., :3], dtype=np.float32), meta
    if fmt == "tiff":
        return _read_tiff(path, meta)
    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_array(image, meta), meta
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"cannot read image ({type(exc).__name__}: {first_line(exc)})") from None


def _pil_to_array(image: Image.Image, meta: dict[str, Any]) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        meta["bits_stored"] = 16
        return np.asarray(image).astype(np.float32)
    if mode in ("I", "F"):
        return np.asarray(image).astype(np.float32)
    if mode in ("L", "1"):
        meta["bits_stored"] = 8
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if mode == "LA":
        return np.asarray(image.convert("L"), dtype=np.uint8)
    meta["bits_stored"] = 8
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _read_tiff(path: Path, meta: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    import tifffile

    check_image_size(path, tiff_page_shape(path))  # tifffile has no decompression-bomb limit of its own
    try:
        array = np.asarray(tifffile.imread(path, key=0))
    except Exception as exc:
        raise DataError(path, f"cannot read TIFF ({type(exc).__name__}: {first_line(exc)})") from None
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar configuration -> interleaved
    if array.ndim == 3 and array.shape[2] in (2, 4):
        array = array[..., :-1]  # drop alpha
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise NotAnImageError(path, f"TIFF holds an array of shape {array.shape}, not a 2-D image")
    meta["bits_stored"] = int(array.dtype.itemsize * 8)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    return (array if array.dtype == np.uint8 else array.astype(np.float32)), meta


# -------------------------------------------------------------------------------------------- public


def read_frames(path: str | Path) -> list[ImageData]:
    """All 2-D images in a file: one for plain images, one per frame for multi-frame DICOM.

    A 3-D NIfTI/NRRD volume is refused with :class:`NotAnImageError` (use :mod:`medzsad.data.volumes`).
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "dicom":
        pixels, meta, identity, _header = read_dicom(path)
        modality = meta.get("modality")
        n = pixels.shape[0]
        return [
            ImageData(
                pixels[i],
                modality,
                clean_meta({**meta, "frame_index": i}) if n > 1 else meta,
                f"{identity}#frame{i}" if n > 1 else identity,
            )
            for i in range(n)
        ]
    return [read_image(path)]


def read_image(path: str | Path, frame: int | None = None) -> ImageData:
    """Read one 2-D image (see the module docstring for the conventions).

    Args:
        path: an image file (DICOM, PNG, JPEG, TIFF, BMP, or a NIfTI/NRRD holding a single slice).
        frame: the frame of a multi-frame DICOM; required when the file has more than one.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "dicom_series":
        raise NotAnImageError(
            path,
            "is a folder (a DICOM series?); score it with `medzsad predict --input FOLDER`, "
            "or list its files with `medzsad prepare folder`",
        )
    if fmt == "dicom":
        pixels, meta, identity, _header = read_dicom(path, frame)
        if frame is None and pixels.shape[0] != 1:
            raise NotAnImageError(
                path,
                f"multi-frame DICOM with {pixels.shape[0]} frames; `medzsad predict` scores every frame "
                "and `medzsad prepare folder` lists one record per frame",
            )
        if frame is None:
            pixels = pixels[0]
        else:
            meta = clean_meta({**meta, "frame_index": frame})
            identity = f"{identity}#frame{frame}"
        return ImageData(pixels, meta.get("modality"), meta, identity)
    if fmt in ("nifti", "nrrd", "itk"):
        return _single_slice_volume(path)
    array, meta = _read_raster(path, fmt)
    return ImageData(array, None, clean_meta(meta), str(path.resolve()))


def _single_slice_volume(path: Path) -> ImageData:
    from medzsad.data.volumes import read_volume

    volume = read_volume(path)
    axes = [i for i, n in enumerate(volume.array.shape) if n == 1]
    if not axes:
        raise NotAnImageError(
            path,
            f"3-D volume of shape {volume.array.shape}; `medzsad predict` scores it slice by slice "
            "and `medzsad prepare volumes` lists its slices",
        )
    axis = {0: "axial", 1: "coronal", 2: "sagittal"}[axes[0]]
    array = volume.slice(axis, 0).astype(np.float32)
    return ImageData(array, volume.modality, dict(volume.meta), volume.identity)


def read_mask(path: str | Path, frame: int | None = None) -> np.ndarray:
    """Read a binary mask as bool ``[H, W]``: nonzero is lesion (8-bit files via PIL ``convert('L')``,
    exactly as the official loaders do)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt in ("png", "jpeg", "bmp", "image"):
        try:
            with Image.open(path) as image:
                values = np.asarray(image) if image.mode in ("I", "I;16", "I;16B", "I;16L", "F") else None
                values = np.asarray(image.convert("L")) if values is None else values
        except Exception as exc:
            raise DataError(path, f"cannot read mask ({type(exc).__name__}: {first_line(exc)})") from None
        warn_soft_mask(path, values)
        return values > 0
    if fmt == "dicom":
        ds = dcmread(path)
        raw = decode_pixels(ds, path)
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        if n_frames > 1:
            if frame is None:
                raise DataError(path, f"mask has {n_frames} frames; its manifest record needs a frame_index")
            raw = raw[frame]
        return (raw.max(axis=-1) if raw.ndim == 3 else raw) > 0
    data = read_image(path, frame).array
    return (data.max(axis=-1) if data.ndim == 3 else data) > 0
