"""Bad input files of every format, scored together with good ones by ``medzsad predict``: each bad
file gives one line naming it and the problem, the good ones are all scored, the run exits 1.

The size limits are lowered for this run (``MEDZSAD_MAX_*``) so a "bomb" needs a few kilobytes:
what is tested is that each reader asks for its size from the header before it decodes.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from fault_helpers import TINY, write_ct_series, write_pngs
from PIL import Image
from pydicom.data import get_testdata_file

from medzsad.cli.main import main

GOOD = 3


def _nifti_with_header_shape(path: Path, shape: tuple[int, int, int]) -> None:
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), path)
    data = bytearray(path.read_bytes())
    data[40:56] = struct.pack("<8h", 3, *shape, 1, 1, 1, 1)  # dim[] of the header, the voxels stay 8
    path.write_bytes(bytes(data))


def _bad_files(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (file name, words its line must hold)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.dcm").write_bytes(b"")
    (folder / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(3000))
    shutil.copy(get_testdata_file("DICOMDIR"), folder / "DICOMDIR")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(folder / "report.dcm")
    shutil.copy(get_testdata_file("JPEG-lossy.dcm"), folder / "jpeg12.dcm")
    tifffile.imwrite(folder / "bomb.tif", np.zeros((600, 600), np.uint8), compression="zlib")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((600, 600, 3), np.uint16), isVector=True), str(folder / "rgb16.png")
    )
    nan = np.zeros((8, 8, 4), np.float32)
    nan[2, 2, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), folder / "nan.nii.gz")
    _nifti_with_header_shape(folder / "huge.nii", (2000, 2000, 2000))
    (folder / "broken.nrrd").write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 10 10\nencoding: raw\n\n")
    header = "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 3000 3000 3000\nendian: little\nencoding: raw\n\n"
    (folder / "huge.nrrd").write_bytes(header.encode() + bytes(64))
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40), np.uint8)).save(png, format="PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[:600])
    (folder / "notes.png").write_text("not an image")
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb") as handle:
        handle.write(b"\x00" * 400)
    (folder / "cut.nii.gz").write_bytes(gz.getvalue()[:30])
    return {
        "zero-byte dicom": ("zero.dcm", "empty file"),
        "random bytes named .dcm": ("noise.dcm", "not a DICOM file"),
        "DICOMDIR": ("DICOMDIR", "DICOMDIR"),
        "DICOM without pixels": ("report.dcm", "without pixel data"),
        "12-bit JPEG without decoder": ("jpeg12.dcm", "decoder"),
        "deflate TIFF bomb": ("bomb.tif", "over the limit"),
        "16-bit colour PNG bomb": ("rgb16.png", "over the limit"),
        "NaN voxels in NIfTI": ("nan.nii.gz", "NaN or infinite"),
        "NIfTI header claiming 8e9 voxels": ("huge.nii", "over the limit"),
        "NRRD with inconsistent header": ("broken.nrrd", "dimension is 3"),
        "NRRD header claiming 2.7e10 voxels": ("huge.nrrd", "over the limit"),
        "truncated PNG": ("truncated.png", "cannot read image"),
        "text named .png": ("notes.png", "PNG"),
        "truncated NIfTI": ("cut.nii.gz", "NIfTI"),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    write_pngs(root / "in" / "good", GOOD)
    cases = _bad_files(root / "in" / "bad")
    (root / "notes.txt").write_text("a file of no known type")
    # A folder is walked for images and DICOM; volume files are given one by one, as a user would.
    volumes = [f"-i={p}" for p in sorted((root / "in" / "bad").iterdir()) if p.name.endswith((".nii", ".gz", ".nrrd"))]
    out, err = io.StringIO(), io.StringIO()
    limits = {"MEDZSAD_MAX_IMAGE_PIXELS": "300000", "MEDZSAD_MAX_VOLUME_VOXELS": "1000000"}
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for key, value in limits.items():
            patch.setenv(key, value)
        inputs = ["-i", str(root / "in"), "-i", str(root / "notes.txt"), *volumes]
        code = main(["predict", *inputs, "-o", str(root / "out"), *TINY])
    return code, out.getvalue() + err.getvalue(), root, cases


def test_the_good_inputs_are_all_scored_and_the_run_says_how_many_failed(run):
    code, text, root, cases = run
    assert code == 1 and "Traceback" not in text
    rows = (root / "out" / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + GOOD
    assert len(list((root / "out" / "maps").glob("*.npz"))) == GOOD
    skipped = (root / "out" / "skipped.csv").read_text().splitlines()
    assert len(skipped) == 1 + len(cases) + 1 and skipped[0] == "sample_id,problem"
    assert not any(str(root) in row for row in skipped)  # pseudonymous ids and problems, no paths


CASES = [
    "zero-byte dicom",
    "random bytes named .dcm",
    "DICOMDIR",
    "DICOM without pixels",
    "12-bit JPEG without decoder",
    "deflate TIFF bomb",
    "16-bit colour PNG bomb",
    "NaN voxels in NIfTI",
    "NIfTI header claiming 8e9 voxels",
    "NRRD with inconsistent header",
    "NRRD header claiming 2.7e10 voxels",
    "truncated PNG",
    "text named .png",
    "truncated NIfTI",
]


@pytest.mark.parametrize("case", CASES)
def test_each_bad_file_is_one_line_naming_it(case, run):
    _, text, _, cases = run
    name, words = cases[case]
    lines = [line for line in text.splitlines() if line.startswith("skipped:") and f"/{name}:" in line]
    assert len(lines) == 1, text
    assert words in lines[0]
    assert ".cxx" not in lines[0] and "Traceback" not in text


def test_a_file_of_no_known_type(run):
    text = run[1]
    lines = [line for line in text.splitlines() if "notes.txt" in line]
    assert len(lines) == 1 and "unknown file type" in lines[0]


def test_the_12_bit_jpeg_gives_no_pydicom_traceback(run):
    text = run[1]
    assert "pydicom" not in text.replace("site-packages/pydicom/data", "")  # no pydicom log or traceback


def test_a_dicom_series_folder_is_scored_as_a_volume(tmp_path, cli):
    write_ct_series(tmp_path / "series", n=3)
    code, _, err = cli("predict", "-i", tmp_path / "series", "-o", tmp_path / "out", *TINY)
    assert code == 0, err
    assert len(list((tmp_path / "out" / "volumes").glob("*_map.nii.gz"))) == 1
