"""Everything pydicom: reading headers and pixels, the DICOM pixel pipeline, slice geometry, DICOMDIR,
object classification (what is an image to score, what is skipped and why) and DICOM SEG output.

No other module of :mod:`medzsad.data` imports pydicom; they use the public names here.

Pixel pipeline (:func:`dicom_pixels`), in order:

1. decode (compressed syntaxes need the ``dicom-codecs`` extra; a missing decoder raises
   :class:`~medzsad.data.errors.MissingDecoderError` naming the packages);
2. colour: YBR is converted to RGB by pydicom, PALETTE COLOR through its lookup table;
3. grey: Modality LUT / Rescale Slope-Intercept (CT -> HU), including Enhanced multi-frame
   functional groups;
4. MONOCHROME1 (and Presentation LUT Shape INVERSE) inverted over the stored value range, so bright
   always means high attenuation / signal.

Geometry (:func:`stack_series`, :func:`stack_multiframe`): slices are ordered along the slice normal
(not by file name or InstanceNumber) and the result is an ``(x, y, z)`` array (x along a row, i.e. the
column index; y down the columns; z along the normal) with its RAS affine, as nibabel and MONAI expect.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medzsad.data.errors import DataError, MissingDecoderError, NotAnImageError, first_line
from medzsad.data.formats import is_dicom_file
from medzsad.data.ids import PHI_DICOM_KEYWORDS, clean_meta, dicom_identifiers, name_parts
from medzsad.data.limits import check_image_size, check_volume_size

if TYPE_CHECKING:  # only for annotations: volumes imports this module
    from medzsad.data.volumes import Volume

__all__ = [
    "LPS_TO_RAS",
    "DicomStack",
    "dataset_identifiers",
    "dcmread",
    "decode_pixels",
    "dicom_pixels",
    "dicomdir_files",
    "functional_item",
    "geometry_stack",
    "has_pixels",
    "has_plane_geometry",
    "is_colour",
    "is_dicomdir",
    "lps_to_ras",
    "may_carry_burned_in_text",
    "n_frames",
    "read_dicom",
    "series_facts",
    "series_group_key",
    "skip_reason",
    "slice_order",
    "stack_multiframe",
    "stack_series",
    "write_dicom_seg",
]

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


def dataset_identifiers(paths: Iterable[str | Path]) -> frozenset[str]:
    """The identifying header values (:data:`PHI_DICOM_KEYWORDS`) of the DICOM files among ``paths``.

    The engine hands them to the tracked run, which refuses any name, tag, key, path or table cell
    holding one: so a patient id that also names a folder cannot reach MLflow through a dataset or
    category name. Only those attributes are parsed (no pixels), so a header pass over an archive
    costs a fraction of reading it; unreadable files are skipped here (reading them reports them).
    """
    import pydicom

    found: set[str] = set()
    for path in dict.fromkeys(Path(p) for p in paths):
        if not path.is_file() or not is_dicom_file(path):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(PHI_DICOM_KEYWORDS))
        except Exception:  # a corrupt file is reported when it is read as an image
            continue
        found |= dicom_identifiers(ds)
    return frozenset(found | {part for value in found for part in name_parts(value)})


def dcmread(path: Path, *, stop_before_pixels: bool = False) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except InvalidDicomError as exc:
        raise DataError(path, f"not a readable DICOM file ({first_line(exc)})") from None
    except Exception as exc:  # pydicom raises many kinds on corrupt headers
        raise DataError(path, f"corrupt DICOM header ({type(exc).__name__}: {first_line(exc)})") from None
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


def has_pixels(ds: Any) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def decode_pixels(ds: Any, path: Path) -> np.ndarray:
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
        detail = "; ".join(line.strip() for line in text.splitlines()[1:] if line.strip()) or first_line(exc)
        raise DataError(path, f"could not decode '{name}' pixel data ({detail[:200]})") from None
    except Exception as exc:
        raise DataError(path, f"invalid pixel data ({type(exc).__name__}: {first_line(exc)})") from None


def functional_item(ds: Any, sequence: str, frame: int) -> Any | None:
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
    item = functional_item(ds, "PixelValueTransformationSequence", frame)
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
    if is_dicomdir(ds):
        return "is a DICOMDIR (the index of a DICOM disc); give the folder holding the image files instead"
    if not sop_class and "Modality" not in ds and not _has_preamble(path):
        return "not a DICOM file (no DICM header and no DICOM attributes); it is corrupt or of another format"
    name = getattr(getattr(ds, "SOPClassUID", None), "name", "") or sop_class or "unknown"
    return f"DICOM object without pixel data ({name}), e.g. a report or presentation state: not an image"


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
    if not has_pixels(ds):
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
    raw = decode_pixels(ds, path)
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
    ds = dcmread(path)
    pixels, meta = dicom_pixels(ds, path, frame)
    identity = str(ds.get("SOPInstanceUID", "") or "") or str(path.resolve())
    if "PixelData" in ds:
        del ds.PixelData  # free memory; geometry needs only the header
    return pixels, clean_meta(meta), identity, ds


# -------------------------------------------------------------------------------------- classification

_SOP_SKIPS: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.66", "a segmentation or registration object (SEG/REG), not an image to score"),
    ("1.2.840.10008.5.1.4.1.1.481", "a radiotherapy object (RT structure set, plan or dose), not an image to score"),
    ("1.2.840.10008.5.1.4.1.1.88", "a structured report (SR/KO), not an image"),
    ("1.2.840.10008.5.1.4.1.1.11", "a presentation state, not an image"),
    ("1.2.840.10008.5.1.4.1.1.104", "an encapsulated document, not an image"),
)
_MODALITY_SKIPS = {
    "SEG": "a DICOM SEG (segmentation), not an image to score",
    "RTSTRUCT": "an RT structure set, not an image to score",
    "RTDOSE": "an RT dose grid, not an image to score",
    "RTPLAN": "an RT plan, not an image",
    "SR": "a structured report, not an image",
    "KO": "a key object selection, not an image",
    "PR": "a presentation state, not an image",
    "REG": "a registration object, not an image",
    "DOC": "an encapsulated document, not an image",
}
# Secondary captures made by software (screenshots, dose reports, 3-D renderings) carry one of these
# modalities; a digitised film stored as a secondary capture keeps its acquisition modality (CR, NM...).
_SOFTWARE_CAPTURE_MODALITIES = {"", "OT", "SC"}


def skip_reason(ds: Any, path: Path | None = None) -> str | None:
    """Why a DICOM object (header only is enough) is not scored, or ``None`` when it is an image to score.

    Skipped: objects without an image matrix, SEG/RT/SR/KO/PR/documents, localizers (scouts,
    ``ImageType`` value 3 ``LOCALIZER``), and software secondary captures (SC SOP class with modality
    OT/SC: screenshots, dose pages). A digitised film stored as SC with modality CR/DX/NM is kept.
    """
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").upper()
    for prefix, reason in _SOP_SKIPS:
        if sop_class.startswith(prefix):
            return reason
    if modality in _MODALITY_SKIPS:
        return _MODALITY_SKIPS[modality]
    if "Rows" not in ds or "Columns" not in ds:
        # An empty or random file parses (force=True) as a header without a matrix: say which it is.
        return _no_pixels_reason(ds, path) if path is not None else "no image matrix (no Rows/Columns)"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type[2:] or "SCOUT" in image_type[2:]:
        return "a localizer (scout) image"
    if sop_class.startswith(_SECONDARY_CAPTURE_PREFIX) and modality in _SOFTWARE_CAPTURE_MODALITIES:
        return "a secondary capture (screenshot or report page), not an acquired image"
    return None


def n_frames(ds: Any) -> int:
    """NumberOfFrames, 1 when absent."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def is_colour(ds: Any) -> bool:
    """Colour pixels (RGB, YBR, PALETTE COLOR): never stacked into a volume."""
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    return int(ds.get("SamplesPerPixel", 1) or 1) != 1 or photometric == "PALETTE COLOR"


def has_plane_geometry(ds: Any) -> bool:
    """Whether a single-frame object has patient geometry (position and orientation)."""
    return "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds


def series_group_key(ds: Any) -> tuple[Any, ...]:
    """What makes files one volume: Series UID, matrix size and orientation (rounded), so a localizer or
    reformat stored under one Series UID comes out on its own."""
    orientation = tuple(np.round(np.asarray(ds.get("ImageOrientationPatient", [0] * 6), float), 3))
    return (str(ds.get("SeriesInstanceUID", "") or ""), int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), orientation)


def series_facts(ds: Any) -> dict[str, Any]:
    """Series number, description and modality of a header, for series selection (never logged)."""
    number = ds.get("SeriesNumber", None)
    return {
        "number": None if number in (None, "") else int(number),
        "description": str(ds.get("SeriesDescription", "") or ""),
        "modality": str(ds.get("Modality", "") or "").upper(),
    }


def dicomdir_files(path: Path) -> list[Path]:
    """The image files a DICOMDIR references (existing ones, in record order)."""
    from pydicom.fileset import FileSet

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fileset = FileSet(dcmread(path))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"not a readable DICOMDIR ({type(exc).__name__}: {first_line(exc)})") from None
    files = []
    for instance in fileset:
        target = Path(instance.path)
        if target.is_file():
            files.append(target)
    return files


def is_dicomdir(ds: Any) -> bool:
    """Whether a parsed file is a DICOMDIR (Media Storage Directory)."""
    meta = getattr(ds, "file_meta", None)
    sop = str(meta.get("MediaStorageSOPClassUID", "") if meta is not None else "")
    return sop == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in ds


# ------------------------------------------------------------------------------------------- geometry

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(direction: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """ITK/DICOM geometry (LPS direction columns, spacing, origin) -> RAS affine of the index."""
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    return LPS_TO_RAS @ affine


@dataclass
class DicomStack:
    """Frames of one series or multi-frame file, stacked.

    Attributes:
        array: float32 ``(x, y, z)``: x along a row (column index), y down the columns, z the frames
            ordered along the slice normal.
        affine: 4x4 RAS affine of ``(x, y, z)`` (nibabel/MONAI convention); a spacing-only diagonal
            when ``has_geometry`` is false.
        has_geometry: False when the source lacks position/orientation (e.g. an ultrasound loop or an
            enhanced MR without plane geometry): the affine is then not in patient space.
        files: the source files in slice order (single-frame series only; for DICOM SEG).
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str | None
    meta: dict[str, Any]
    identity: str = field(repr=False)
    has_geometry: bool = True
    files: tuple[Path, ...] = field(default=(), repr=False)


def _frame_affine(spacing_rc: Sequence[float]) -> np.ndarray:
    """The affine of a stack without patient geometry: spacing only, axes taken as LPS (ITK's default),
    so the canonical orientation keeps the stored row/column/frame order."""
    return lps_to_ras(np.eye(3), np.array([spacing_rc[1], spacing_rc[0], 1.0]), np.zeros(3))


def _stack_meta(ds: Any, pixel_meta: dict[str, Any]) -> dict[str, Any]:
    body_part = str(ds.get("BodyPartExamined", "") or "").upper() or None
    return {
        "source_format": "dicom",
        "modality": pixel_meta.get("modality"),
        "photometric": pixel_meta.get("photometric"),
        "body_part": body_part,
        "burned_in_text": pixel_meta.get("burned_in_text"),
    }


def stack_series(files: Sequence[Path], source: Path | None = None) -> DicomStack:
    """Read the files of one DICOM series (any order) into a stack ordered by geometry."""
    source = Path(source) if source is not None else Path(files[0]).parent
    slices: list[tuple[Any, np.ndarray]] = []
    owners: list[Path] = []
    meta: dict[str, Any] = {}
    for path in files:
        ds = dcmread(path)
        pixels, meta = dicom_pixels(ds, path)
        if pixels.ndim != 3:
            raise NotAnImageError(path, "colour DICOM series are not supported as volumes")
        for frame in range(pixels.shape[0]):
            slices.append((ds, pixels[frame]))
            owners.append(path)
    first = slices[0][0]
    spacing_rc = [float(v) for v in (first.get("PixelSpacing") or [1.0, 1.0])]
    orientation = first.get("ImageOrientationPatient")
    positions = [ds.get("ImagePositionPatient") for ds, _ in slices]
    identity = str(first.get("SeriesInstanceUID", "") or "") or str(source.resolve())
    modality = meta.get("modality")
    if orientation is None or any(p is None for p in positions):
        order = sorted(range(len(slices)), key=lambda i: int(slices[i][0].get("InstanceNumber", i) or i))
        stack = np.stack([slices[i][1] for i in order]).astype(np.float32)
        affine = _frame_affine(spacing_rc)
        return DicomStack(stack.transpose(2, 1, 0), affine, modality, _stack_meta(first, meta), identity, False)
    stack, affine, order = geometry_stack(
        source,
        [s[1] for s in slices],
        np.asarray(orientation, float),
        np.asarray(positions, float),
        spacing_rc,
        float(first.get("SliceThickness", 0) or 0),
    )
    ordered = tuple(owners[i] for i in order)
    single_frame = len(set(ordered)) == len(ordered)
    return DicomStack(
        stack.transpose(2, 1, 0),
        affine,
        modality,
        _stack_meta(first, meta),
        identity,
        True,
        ordered if single_frame else (),
    )


def slice_order(source: Path, orientation: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Indices that sort slices along the normal of ``orientation`` (6 direction cosines); raises
    :class:`DataError` on duplicate positions or irregular spacing (missing slices)."""
    normal = np.cross(orientation[:3], orientation[3:])
    order = np.argsort(positions @ normal, kind="stable")
    steps = np.diff((positions @ normal)[order])
    if steps.size and np.min(steps) < 1e-3:
        raise DataError(source, "two slices share one position (several acquisitions, echoes or phases in one series?)")
    if steps.size > 1 and (np.max(steps) - np.min(steps)) > 0.01 * np.median(steps) + 1e-3:
        raise DataError(
            source,
            f"irregular slice spacing ({np.min(steps):.3f} to {np.max(steps):.3f} mm): missing slices?",
        )
    return order


def geometry_stack(
    source: Path,
    images: Sequence[np.ndarray],
    orientation: np.ndarray,
    positions: np.ndarray,
    spacing_rc: Sequence[float],
    thickness: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order slices along the slice normal and build the RAS affine; refuse gaps and duplicates.

    Returns ``(stack [n, rows, cols], affine of (col, row, n), order)`` with ``order`` the input index of
    each stacked slice.
    """
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    order = slice_order(source, orientation, positions)
    stack = np.stack([images[i] for i in order]).astype(np.float32)
    if len(order) > 1:
        step = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    else:
        step = normal * (thickness or 1.0)
    lps = np.eye(4)
    # x follows the row direction (along a row = column index), spacing = PixelSpacing[1].
    lps[:3, 0] = row_dir * spacing_rc[1]
    lps[:3, 1] = col_dir * spacing_rc[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[order[0]]
    return stack, LPS_TO_RAS @ lps, order


def stack_multiframe(path: Path) -> DicomStack:
    """A multi-frame file as one stack: ordered by its functional-group geometry when every frame has a
    position and the file an orientation, else in frame order without patient geometry."""
    ds = dcmread(path)
    pixels, meta = dicom_pixels(ds, path)
    if pixels.ndim != 3:
        raise NotAnImageError(path, "colour multi-frame DICOM is not supported as a volume")
    identity = str(ds.get("SOPInstanceUID", "") or "") or str(path.resolve())
    positions, orientation, spacing = [], None, None
    for i in range(pixels.shape[0]):
        pos = functional_item(ds, "PlanePositionSequence", i)
        ori = functional_item(ds, "PlaneOrientationSequence", i)
        meas = functional_item(ds, "PixelMeasuresSequence", i)
        positions.append(None if pos is None else pos.get("ImagePositionPatient"))
        orientation = orientation if ori is None else ori.get("ImageOrientationPatient")
        spacing = spacing if meas is None else meas.get("PixelSpacing")
    spacing_rc = [float(v) for v in (spacing or ds.get("PixelSpacing") or [1.0, 1.0])]
    base = _stack_meta(ds, meta)
    modality = meta.get("modality")
    if orientation is None or any(p is None for p in positions) or pixels.shape[0] < 2:
        affine = _frame_affine(spacing_rc)
        return DicomStack(pixels.astype(np.float32).transpose(2, 1, 0), affine, modality, base, identity, False)
    stack, affine, _order = geometry_stack(
        path, list(pixels), np.asarray(orientation, float), np.asarray(positions, float), spacing_rc, 0.0
    )
    return DicomStack(stack.transpose(2, 1, 0), affine, modality, base, identity, True)


# ------------------------------------------------------------------------------------------ DICOM SEG

_SEG_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def write_dicom_seg(
    mask: np.ndarray,
    volume: Volume,
    path: str | Path,
    *,
    segment_label: str = "anomaly",
    software_version: str = "medzsad",
) -> Path:
    """Write a binary ``[z, y, x]`` mask on a DICOM series' grid as a DICOM SEG (highdicom), atomically.

    The SEG references its source images, so it carries their patient and study attributes (that is what
    lets a PACS or viewer attach it to the study): it is patient data, keep it local. Empty slices are
    omitted, as DICOM SEG allows.

    Args:
        mask: bool (or 0/1) array of ``volume.shape``; threshold a continuous map before calling.
        volume: a volume read from a DICOM series (it knows its source files).
        path: output file.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medzsad.utils.files import atomic_path

    if not volume.source_files:
        raise DataError(path, "DICOM SEG needs a volume read from a DICOM series of single-frame files")
    binary = volume.to_source_layout(np.asarray(mask) > 0)  # (cols, rows, slices) in source order
    frames = np.ascontiguousarray(binary.transpose(2, 1, 0)).astype(np.uint8)
    sources = [dcmread(p, stop_before_pixels=True) for p in volume.source_files]
    for ds in sources:
        # Type 2 attributes highdicom copies; exports often drop them. Empty is a valid value.
        for keyword in _SEG_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medzsad", version=software_version, family=codes.cid7162.ArtificialIntelligence
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(),
            series_number=900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medzsad",
            manufacturer_model_name="medzsad",
            software_versions=software_version,
            device_serial_number="none",
        )
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path
