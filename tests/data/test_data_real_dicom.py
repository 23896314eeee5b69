"""Every real DICOM file with pixel data in pydicom(-data) loads to a sane image or fails with a named error."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest
from datahelpers import real_dicom_files, with_pixel_data

from medzsad.data.errors import DataError, MissingDecoderError, NotAnImageError
from medzsad.data.readers import read_frames

pytest.importorskip("data_store", reason="pydicom-data is not installed")


def _sane(array: np.ndarray) -> bool:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        return False
    if array.shape[0] < 1 or array.shape[1] < 1 or array.dtype not in (np.uint8, np.float32):
        return False
    return bool(np.all(np.isfinite(array)))


def test_real_dicom_files_load_or_fail_clearly():
    files = with_pixel_data(real_dicom_files())
    assert len(files) >= 150, "pydicom + pydicom-data should ship about 160 files with pixel data"
    outcome: Counter[str] = Counter()
    for path, _header in files:
        try:
            frames = read_frames(path)
        except DataError as exc:
            message = str(exc)
            assert path.name in message and "\n" not in message
            outcome[type(exc).__name__] += 1
            continue
        assert frames and all(_sane(f.array) for f in frames), path.name
        outcome["loaded"] += 1
    failed = sum(n for k, n in outcome.items() if k != "loaded")
    print(f"pydicom-data: {outcome['loaded']} loaded, {failed} failed {dict(outcome)}")
    assert outcome["loaded"] + failed == len(files)
    assert outcome[NotAnImageError.__name__] == 11  # 4 SEG, 7 RT dose: not images to score
    decoders = {m: importlib.util.find_spec(m) is not None for m in ("gdcm", "pylibjpeg", "jpeg_ls")}
    if decoders == {"gdcm": False, "pylibjpeg": False, "jpeg_ls": True}:
        # The environment of the project's CI: Pillow and pyjpegls, no GDCM, no pylibjpeg.
        assert (outcome["loaded"], failed) == (140, 22)
        assert outcome[MissingDecoderError.__name__] == 6
    else:
        assert outcome["loaded"] >= 140
