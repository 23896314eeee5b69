"""File formats: suffixes, format detection and the walk over a folder's image files.

The one place that decides what kind of file a path is, so the 2-D readers, the volume readers and the
study grouper (:mod:`medzsad.data.study`) agree. Needs neither pydicom nor any reader.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from medzsad.data.errors import DataError

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "detect_format",
    "is_dicom_file",
    "iter_image_files",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def is_dicom_file(path: str | Path) -> bool:
    """True when the file has the DICOM preamble (``DICM`` at byte 128) or a DICOM suffix."""
    path = Path(path)
    if path.name.lower().endswith(DICOM_SUFFIXES):
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
    name = path.name.lower()
    for fmt, suffixes in _BY_SUFFIX:
        if name.endswith(suffixes):
            return fmt
    if is_dicom_file(path):
        return "dicom"
    raise DataError(path, "unknown file type (expected DICOM, NIfTI, NRRD, PNG, JPEG, TIFF or BMP)")


_BY_SUFFIX: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nifti", (".nii", ".nii.gz")),
    ("nrrd", (".nrrd", ".nhdr")),
    ("itk", (".mha", ".mhd")),
    ("png", (".png",)),
    ("jpeg", (".jpg", ".jpeg")),
    ("tiff", (".tif", ".tiff")),
    ("bmp", (".bmp",)),
    ("image", IMAGE_SUFFIXES),
)


def iter_image_files(root: str | Path, recursive: bool = True) -> Iterable[Path]:
    """Image and DICOM files under ``root`` in sorted order (hidden files skipped)."""
    root = Path(root)
    paths = root.rglob("*") if recursive else root.iterdir()
    for path in sorted(paths):
        if (
            path.is_file()
            and not path.name.startswith(".")
            and (path.name.lower().endswith(IMAGE_SUFFIXES + DICOM_SUFFIXES) or is_dicom_file(path))
        ):
            yield path
