"""Readers for 2-D images: DICOM (single and multi-frame), PNG/JPEG/TIFF/BMP (8/16-bit, grey/colour),
and single-slice NIfTI/NRRD; plus DICOM header scanning for series (volumes live in :mod:`.volumes`).

Output convention (:class:`ImageData`): ``array`` is ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) in the
file's own row/column order (row 0 = top of the image as displayed, as stored in the file; no axis
swaps, unlike MONAI's ``PILReader``). 8-bit sources stay ``uint8`` so they take the official 8-bit
transform; everything else is ``float32`` in physical units after the DICOM pixel pipeline:

1. decode (compressed syntaxes need the ``dicom-codecs`` extra; a missing decoder raises
   :class:`~medzsad.data.errors.MissingDecoderError` naming the packages);
2. colour: YBR is converted to RGB by pydicom, PALETTE COLOR through its lookup table;
3. grey: Modality LUT / Rescale Slope-Intercept (CT -> HU), including Enhanced multi-frame
   functional groups;
4. MONOCHROME1 (and Presentation LUT Shape INVERSE) inverted over the stored value range, so bright
   always means high attenuation / signal.

Nothing identifying leaves a reader: ``meta`` is allow-listed (:func:`~medzsad.data.ids.clean_meta`)
and ``identity`` (SOP Instance UID or path) is only for hashing into a pseudonymous id.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medzsad.data.errors import DataError, MissingDecoderError, NotAnImageError
from medzsad.data.ids import clean_meta
from medzsad.data.limits import check_image_size, check_volume_size, itk_problem, tiff_page_shape, warn_soft_mask

__all__ = [
    "IMAGE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "ImageData",
    "detect_format",
    "dicom_pixels",
    "is_dicom_file",
    "read_dicom",
    "read_frames",
    "read_image",
    "read_mask",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

# Transfer syntax UID -> pip packages that decode it (permissive ones first; pylibjpeg-libjpeg is GPL-3.0).
_DECODERS: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.50": ("pillow", "python-gdcm", "pylibjpeg-libjpeg (GPL-3.0)"),
    "1.2.840.10008.1.2.4.51": ("python-gdcm", "pylibjpeg-libjpeg (GPL-3.0)"),
    "1.2.840.10008.1.2.4.57": ("python-gdcm", "pylibjpeg-libjpeg (GPL-3.0)"),
    "1.2.840.10008.1.2.4.70": ("python-gdcm", "pylibjpeg-libjpeg (GPL-3.0)"),
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "python-gdcm", "pylibjpeg-libjpeg (GPL-3.0)"),
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "python-gdcm", "pylibjpeg-libjpeg (GPL-3.0)"),
    "1.2.840.10008.1.2.4.90": ("pylibjpeg-openjpeg", "python-gdcm", "pillow"),
    "1.2.840.10008.1.2.4.91": ("pylibjpeg-openjpeg", "python-gdcm", "pillow"),
    "1.2.840.10008.1.2.4.201": ("pylibjpeg-openjpeg",),
    "1.2.840.10008.1.2.4.202": ("pylibjpeg-openjpeg",),
    "1.2.840.10008.1.2.4.203": ("pylibjpeg-openjpeg",),
    "1.2.840.10008.1.2.5": ("pylibjpeg-rle",),
}

# DICOM objects that carry pixel data but are not images to score.
_NOT_IMAGES = {
    "SEG": "a DICOM SEG (segmentation); use it as a mask, not as an image",
    "RTDOSE": "an RT dose grid, not an image",
    "RTSTRUCT": "an RT structure set, not an image",
}


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


# --------------------------------------------------------------------------------------------- formats


def _lower_name(path: Path) -> str:
    return path.name.lower()


def is_dicom_file(path: str | Path) -> bool:
    """True when the file has the DICOM preamble (``DICM`` at byte 128) or a DICOM suffix."""
    path = Path(path)
    if _lower_name(path).endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def detect_format(path: str | Path) -> str:
    """One of ``dicom_series`` (a folder), ``dicom``, ``nifti``, ``nrrd``, ``itk``, ``png``, ``jpeg``,
    ``tiff``, ``bmp``, ``image`` (another Pillow format); raises :class:`DataError` otherwise."""
    path = Path(path)
    if path.is_dir():
        return "dicom_series"
    if not path.exists():
        raise DataError(path, "file not found")
    name = _lower_name(path)
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith((".mha", ".mhd")):
        return "itk"
    if name.endswith(".png"):
        return "png"
    if name.endswith((".jpg", ".jpeg")):
        return "jpeg"
    if name.endswith((".tif", ".tiff")):
        return "tiff"
    if name.endswith(".bmp"):
        return "bmp"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if is_dicom_file(path):
        return "dicom"
    raise DataError(path, "unknown file type (expected DICOM, NIfTI, NRRD, PNG, JPEG, TIFF or BMP)")


# ----------------------------------------------------------------------------------------------- DICOM


def _dcmread(path: Path, *, stop_before_pixels: bool = False) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except InvalidDicomError as exc:
        raise DataError(path, f"not a readable DICOM file ({_first_line(exc)})") from None
    except Exception as exc:  # pydicom raises many kinds on corrupt headers
        raise DataError(path, f"corrupt DICOM header ({type(exc).__name__}: {_first_line(exc)})") from None
    _ensure_transfer_syntax(ds)
    return ds


def _ensure_transfer_syntax(ds: Any) -> None:
    """Files without a Transfer Syntax UID still parse; record how they were parsed so pixels decode."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        return
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _has_pixels(ds: Any) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _decode(ds: Any, path: Path) -> np.ndarray:
    """Decoded pixels, ``(frames?, rows, cols, samples?)``; YBR converted to RGB by pydicom."""
    syntax = ds.file_meta.get("TransferSyntaxUID", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except (RuntimeError, NotImplementedError) as exc:
        text = str(exc)
        if "missing dependencies" in text or "No pixel data decoders" in text or "no available" in text:
            name = syntax.name if syntax is not None else "unknown"
            raise MissingDecoderError(path, name, _DECODERS.get(str(syntax), ())) from None
        name = syntax.name if syntax is not None else "unknown"
        if "does not support" in text and str(syntax) in _DECODERS:
            # e.g. Pillow is installed but cannot do 12-bit JPEG: effectively a missing decoder.
            others = tuple(p for p in _DECODERS[str(syntax)] if p != "pillow")
            raise MissingDecoderError(path, name, others) from None
        detail = "; ".join(line.strip() for line in text.splitlines()[1:] if line.strip()) or _first_line(exc)
        raise DataError(path, f"could not decode '{name}' pixel data ({detail[:200]})") from None
    except Exception as exc:
        raise DataError(path, f"invalid pixel data ({type(exc).__name__}: {_first_line(exc)})") from None


_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _no_pixels_reason(ds: Any, path: Path) -> str:
    """Why a parsed file has no pixels: empty, not DICOM at all, a DICOMDIR, or a non-image object."""
    if path.is_file() and path.stat().st_size == 0:
        return "empty file (0 bytes), not a DICOM image"
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    if sop_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        return "is a DICOMDIR (the index of a DICOM disc); give the folder holding the image files instead"
    if not sop_class and "Modality" not in ds and not _has_preamble(path):
        return "not a DICOM file (no DICM header and no DICOM attributes); it is corrupt or of another format"
    name = getattr(getattr(ds, "SOPClassUID", None), "name", "") or sop_class or "unknown"
    return f"DICOM object without pixel data ({name}), e.g. a report or presentation state: not an image"


def _functional_item(ds: Any, sequence: str, frame: int) -> Any | None:
    """The per-frame item if present, else the shared one, for an Enhanced multi-frame attribute."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame) and sequence in per_frame[frame]:
        return per_frame[frame][sequence][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared) and sequence in shared[0]:
        return shared[0][sequence][0]
    return None


def _modality_lut(arr: np.ndarray, ds: Any, frame: int) -> tuple[np.ndarray, bool]:
    """Apply the Modality LUT / rescale of ``frame``; returns float32 and whether anything changed."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
        out = apply_modality_lut(arr, ds)
        return np.asarray(out, dtype=np.float32), True
    item = _functional_item(ds, "PixelValueTransformationSequence", frame)
    if item is not None and ("RescaleSlope" in item or "RescaleIntercept" in item):
        slope = float(item.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(item.get("RescaleIntercept", 0.0) or 0.0)
        return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept), True
    return arr, False


def _stored_range(ds: Any) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


# Ultrasound, secondary captures and "other" images often carry patient text in the pixels.
_TEXT_PRONE_MODALITIES = {"US", "SC", "OT", "XC", "ES", "GM", "SM", "DOC"}
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def may_carry_burned_in_text(ds: Any) -> bool:
    """True unless the header says otherwise: ``BurnedInAnnotation = YES``, or no ``NO`` and a modality or
    SOP class that typically carries text (ultrasound, secondary capture, photographs...)."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").upper()
    if flag in ("YES", "NO"):
        return flag == "YES"
    modality = str(ds.get("Modality", "") or "").upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    return modality in _TEXT_PRONE_MODALITIES or sop_class.startswith(_SECONDARY_CAPTURE_PREFIX)


def dicom_pixels(ds: Any, path: str | Path, frame: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a DICOM dataset into display-ready pixels (see the module docstring).

    Args:
        ds: a pydicom dataset with pixel data.
        path: the file, for error messages.
        frame: keep only this frame of a multi-frame object (``None``: all frames).
    Returns:
        ``(array, meta)``: ``[F, H, W]`` / ``[F, H, W, 3]`` when ``frame`` is None (``F`` >= 1), else
        ``[H, W]`` / ``[H, W, 3]``; uint8 for 8-bit MONOCHROME2/RGB sources, else float32.
    """
    path = Path(path)
    if not _has_pixels(ds):
        raise NotAnImageError(path, _no_pixels_reason(ds, path))
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in _NOT_IMAGES:
        raise NotAnImageError(path, f"this is {_NOT_IMAGES[modality]}")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame is not None and not 0 <= frame < n_frames:
        raise DataError(path, f"frame {frame} out of range (the file has {n_frames} frames)")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()

    frame_shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), samples)
    check_image_size(path, frame_shape)  # pydicom has no decompression-bomb limit of its own
    check_volume_size(path, (n_frames, *frame_shape))
    raw = _decode(ds, path)
    if n_frames == 1:
        raw = raw[None]
    elif raw.shape[0] != n_frames:
        raise DataError(path, f"decoded {raw.shape[0]} frames but the header says {n_frames}")
    if frame is not None:
        raw = raw[frame : frame + 1]
    # Big-endian decoders return '>u2' arrays; make them native for numpy/PIL/torch.
    raw = raw.astype(raw.dtype.newbyteorder("="), copy=False)

    meta: dict[str, Any] = {
        "source_format": "dicom",
        "modality": modality or None,
        "photometric": photometric or None,
        "bits_stored": int(ds.get("BitsStored", 0) or 0) or None,
        "n_frames": n_frames,
    }
    meta["burned_in_text"] = may_carry_burned_in_text(ds)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is not None and len(spacing) == 2:
        meta["pixel_spacing"] = (float(spacing[0]), float(spacing[1]))

    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(raw, ds))
        if rgb.dtype != np.uint8:
            # 16-bit palette entries almost always hold 8-bit colours scaled by 256; keep 8 bits so
            # palette images take the same 8-bit path as other colour images.
            rgb = (rgb if rgb.max() <= 255 else rgb >> 8).astype(np.uint8)
        out = rgb
        meta["converted_to_rgb"] = True
    elif samples == 3:
        out = raw if raw.dtype == np.uint8 else raw.astype(np.float32)
        meta["converted_to_rgb"] = photometric != "RGB"
    elif samples == 1:
        out = _grey_frames(raw, ds, frame, meta)
    else:
        raise DataError(path, f"unsupported SamplesPerPixel={samples}")
    if out.dtype != np.uint8 and not np.all(np.isfinite(out)):
        raise DataError(path, "pixel data contain NaN or infinite values")
    return (out[0] if frame is not None else out), meta


def _grey_frames(raw: np.ndarray, ds: Any, frame: int | None, meta: dict[str, Any]) -> np.ndarray:
    photometric = meta.get("photometric") or ""
    invert = photometric == "MONOCHROME1"
    if str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        invert = not invert
    frames = []
    rescaled = False
    first = 0 if frame is None else frame
    low, high = _stored_range(ds)
    for i in range(raw.shape[0]):
        values, changed = _modality_lut(raw[i], ds, first + i)
        rescaled = rescaled or changed
        if invert:
            # Invert over the full output range of the stored bits, not the image's own min/max,
            # so every image of a series keeps one scale.
            bounds, _ = _modality_lut(np.array([low, high], dtype=np.int64), ds, first + i)
            lo, hi = float(np.min(bounds)), float(np.max(bounds))
            if values.dtype == np.uint8 and lo == 0 and hi == 255:
                values = (255 - values).astype(np.uint8)
            else:
                values = np.float32(lo + hi) - values.astype(np.float32)
        frames.append(values)
    meta["rescaled"] = rescaled
    meta["inverted"] = invert
    stacked = np.stack(frames)
    if stacked.dtype == np.uint8 and not rescaled:
        return stacked
    return stacked.astype(np.float32)


def read_dicom(path: str | Path, frame: int | None = None) -> tuple[np.ndarray, dict[str, Any], str, Any]:
    """Read a DICOM file: ``(pixels, meta, identity, header)``; see :func:`dicom_pixels` for ``pixels``.

    ``header`` is the pydicom dataset without pixel data, for geometry; do not log it.
    """
    path = Path(path)
    ds = _dcmread(path)
    pixels, meta = dicom_pixels(ds, path, frame)
    identity = str(ds.get("SOPInstanceUID", "") or "") or str(path.resolve())
    if "PixelData" in ds:
        del ds.PixelData  # free memory; geometry needs only the header
    return pixels, clean_meta(meta), identity, ds


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
        raise DataError(path, f"cannot read image ({type(exc).__name__}: {_first_line(exc)})") from None


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
        raise DataError(path, f"cannot read TIFF ({type(exc).__name__}: {_first_line(exc)})") from None
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
            raise DataError(path, f"cannot read mask ({type(exc).__name__}: {_first_line(exc)})") from None
        warn_soft_mask(path, values)
        return values > 0
    if fmt == "dicom":
        ds = _dcmread(path)
        raw = _decode(ds, path)
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        if n_frames > 1:
            if frame is None:
                raise DataError(path, f"mask has {n_frames} frames; its manifest record needs a frame_index")
            raw = raw[frame]
        return (raw.max(axis=-1) if raw.ndim == 3 else raw) > 0
    data = read_image(path, frame).array
    return (data.max(axis=-1) if data.ndim == 3 else data) > 0


def iter_image_files(root: str | Path, recursive: bool = True) -> Iterable[Path]:
    """Image and DICOM files under ``root`` in sorted order (hidden files skipped)."""
    root = Path(root)
    paths = root.rglob("*") if recursive else root.iterdir()
    for path in sorted(paths):
        if (
            path.is_file()
            and not path.name.startswith(".")
            and (_lower_name(path).endswith(IMAGE_SUFFIXES + DICOM_SUFFIXES) or is_dicom_file(path))
        ):
            yield path
