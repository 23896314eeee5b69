"""medzsad's DICOM pixel pipeline as a MONAI ``ImageReader``, and the dictionary transforms that turn a
loaded image into the CLIP input, so medzsad's loading runs in any MONAI pipeline and a user's MONAI
transforms run in medzsad's.

Plain MONAI use (docs/data.md)::

    from monai.transforms import LoadImage
    from medzsad.data.monai_io import DicomPixelReader

    ct = LoadImage(reader=DicomPixelReader(), ensure_channel_first=True)("series_folder/")
    # MetaTensor [1, x, y, z] in HU with its RAS affine; ct.meta["modality"] == "CT"

Array convention of the reader (MONAI's, as ``ITKReader``/``NibabelReader``): spatial axes first
``(x, y[, z])`` with x along a row (the column index); volumes carry their RAS affine
(``meta["space"] == "RAS"``), 2-D images a spacing-only affine. Colour images are channel-last.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.transforms import MapTransform
from monai.utils import MetaKeys, SpaceKeys

from medzsad.data import dicom
from medzsad.data.errors import DataError
from medzsad.data.formats import is_dicom_file
from medzsad.data.transforms import ClipImageTransform, ClipMaskTransform

__all__ = ["ClipImaged", "ClipMaskd", "DicomPixelReader", "channel_first", "channel_last"]


class DicomPixelReader(ImageReader):
    """Reads DICOM through :func:`medzsad.data.dicom.dicom_pixels` (decoders, Modality LUT/rescale,
    MONOCHROME1, YBR, PALETTE, enhanced multi-frame functional groups).

    ``read`` accepts one file (a 2-D image, or a grey multi-frame file as a volume), a folder or a
    list of files of one series (a volume ordered by geometry).
    """

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        names = [filename] if isinstance(filename, str | Path) else list(filename)
        return all(Path(n).is_dir() or is_dicom_file(n) for n in names)

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> Any:
        if not isinstance(data, str | Path) and len(data) == 1:
            data = data[0]  # LoadImage passes every filename as a tuple
        if isinstance(data, str | Path):
            path = Path(data)
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.is_file() and is_dicom_file(p))
                if not files:
                    raise DataError(path, "no DICOM files in this folder")
                return dicom.stack_series(files, path)
            header = dicom.dcmread(path, stop_before_pixels=True)
            if dicom.n_frames(header) > 1 and not dicom.is_colour(header):
                return dicom.stack_multiframe(path)
            pixels, meta, _identity, header = dicom.read_dicom(path)
            return pixels[0], meta, header
        return dicom.stack_series([Path(p) for p in data])

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        if isinstance(img, dicom.DicomStack):
            meta = {k: v for k, v in img.meta.items() if v is not None}
            meta.update(has_geometry=img.has_geometry, modality=img.modality)
            return img.array, _spatial_meta(meta, img.affine, img.array.shape, "no_channel")
        pixels, meta, header = img
        spacing = [float(v) for v in (header.get("PixelSpacing") or [1.0, 1.0])]
        array = np.swapaxes(pixels, 0, 1)  # [H, W(, 3)] -> (x, y(, 3)), MONAI's 2-D order
        channel = -1 if array.ndim == 3 else "no_channel"
        meta = {k: v for k, v in meta.items() if v is not None}
        affine = np.diag([spacing[1], spacing[0], 1.0])
        return array, _spatial_meta(meta, affine, array.shape[:2], channel)


def _spatial_meta(meta: dict[str, Any], affine: np.ndarray, shape: Sequence[int], channel: Any) -> dict:
    meta[MetaKeys.AFFINE] = np.asarray(affine, dtype=np.float64)
    meta[MetaKeys.ORIGINAL_AFFINE] = meta[MetaKeys.AFFINE].copy()
    meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(shape[: len(affine) - 1])
    meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = channel
    meta[MetaKeys.SPACE] = SpaceKeys.RAS
    return meta


def channel_first(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` -> ``[1, H, W]``; ``[H, W, 3]`` -> ``[3, H, W]`` (MONAI's channel-first layout)."""
    return image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)


def channel_last(image: Any) -> np.ndarray:
    """Inverse of :func:`channel_first` (tensors come back to numpy with their dtype)."""
    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    return np.ascontiguousarray(array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1))


class ClipImaged(MapTransform):
    """The CLIP image transform as a MONAI dictionary transform.

    Reads ``data[key]`` (channel-first ``[1|3, H, W]`` in physical units, or 8-bit), the optional
    ``modality``, ``body_part`` and ``value_range`` entries (a range fitted on a whole volume), and
    writes the ``[3, S, S]`` CLIP input to ``data[key]``, the pre-resize ``(H, W)`` to
    ``original_size`` and the intensity mapping used to ``intensity``. The pixels go through
    :class:`~medzsad.data.transforms.ClipImageTransform` untouched, so 8-bit input stays bit-exact with
    the official transform.
    """

    def __init__(self, transform: ClipImageTransform, keys: Sequence[Hashable] = ("image",)) -> None:
        super().__init__(keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = channel_last(out[key])
            modality, body_part = out.get("modality"), out.get("body_part")
            value_range = out.get("value_range")
            out[key] = self.transform(image, modality=modality, value_range=value_range, body_part=body_part)
            out["original_size"] = (int(image.shape[0]), int(image.shape[1]))
            out["intensity"] = self.transform.intensity.describe(modality, image.dtype, body_part)
        return out


class ClipMaskd(MapTransform):
    """The official mask transform as a dictionary transform: ``data[key]`` ``[H, W]`` or ``[1, H, W]``
    (nonzero = lesion) -> bool ``[S, S]``; ``None`` stays ``None``."""

    def __init__(self, transform: ClipMaskTransform, keys: Sequence[Hashable] = ("mask",)) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            if out[key] is not None:
                mask = np.asarray(out[key])
                out[key] = self.transform(mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask)
        return out
