"""Locate the real DICOM files shipped with pydicom and pydicom-data (never the network)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pydicom.data


def real_dicom_files() -> list[Path]:
    """Every file in pydicom's test data and the installed pydicom-data store, sorted."""
    from pydicom.data.data_manager import external_data_sources

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    roots += [Path(source.data_path) for source in external_data_sources().values()]
    return sorted({p for root in roots if root.is_dir() for p in root.rglob("*") if p.is_file()})


def with_pixel_data(paths: list[Path]) -> list[tuple[Path, pydicom.Dataset]]:
    """Files that parse as DICOM and carry pixel data, with their headers (pixels not read)."""
    found = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=False)
        except Exception:
            continue
        if any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            found.append((path, ds))
    return found
