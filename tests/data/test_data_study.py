"""A real study export end to end: an axial CT series, its localizer, a coronal reformat under the same
study, an enhanced multi-frame file with geometry, one without (pydicom-data's emri_small), a DICOM SEG
and a DICOMDIR. ``predict`` writes one map volume per series on the grid SimpleITK reads for it,
``test`` sees the same samples, and skipped objects are reported with their reasons."""

from __future__ import annotations

import copy
import csv
import shutil
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from medzsad.data.study import SeriesSelection, scan_inputs

pytest.importorskip("data_store", reason="pydicom-data is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_helpers import TINY_OVERRIDES

REAL_STUDY = Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests" / "98892001"


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _coronal_reformat(template: pydicom.Dataset, folder: Path, n: int = 4) -> list[Path]:
    """A coronal reformat (rows run inferior, columns left) in the template's study and frame of reference."""
    series_uid = generate_uid()
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 6, k + 1, "COR REFORMAT"
        ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
        ds.ImagePositionPatient = [-100.0, -50.0 + 3.0 * k, 40.0]
        ds.PixelSpacing = [2.0, 1.5]
        ds.PixelData = rng.integers(0, 2000, (ds.Rows, ds.Columns)).astype(np.uint16).tobytes()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        path = folder / f"reformat_{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _enhanced_multiframe(series: list[pydicom.Dataset], path: Path) -> None:
    """The axial series re-stored as one multi-frame file with per-frame plane positions."""
    ds = copy.deepcopy(series[0])
    ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber, ds.SeriesDescription = 7, "MULTIFRAME"
    ds.NumberOfFrames = len(series)
    shared, orientation, measures = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    orientation.ImageOrientationPatient = series[0].ImageOrientationPatient
    measures.PixelSpacing = series[0].PixelSpacing
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([orientation]), Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for member in series:
        item, position = pydicom.Dataset(), pydicom.Dataset()
        position.ImagePositionPatient = member.ImagePositionPatient
        item.PlanePositionSequence = Sequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
        delattr(ds, keyword)
    ds.PixelData = b"".join(member.PixelData for member in series)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export") / "STUDY"
    _write_dicomdir(root)  # CT5N: 5 axial slices; CT2N: its 2 localizers; under a DICOMDIR
    axial = sorted((REAL_STUDY / "CT5N").iterdir())
    (root / "extra").mkdir()
    _coronal_reformat(_read(axial[0]), root / "extra")
    _enhanced_multiframe([_read(p) for p in axial], root / "extra" / "enhanced.dcm")
    shutil.copy(get_testdata_file("emri_small.dcm", download=False), root / "extra" / "emri_small.dcm")
    shutil.copy(get_testdata_file("liver.dcm", download=False), root / "extra" / "seg.dcm")
    return root


def _write_dicomdir(root: Path) -> None:
    from pydicom.fileset import FileSet

    fileset = FileSet()
    for path in sorted(REAL_STUDY.rglob("*")):
        if path.is_file():
            fileset.add(path)
    fileset.write(root / "indexed")  # copies the files under the DICOMDIR's own layout


def test_the_grouper_finds_each_series_and_skips_what_is_not_an_image(study):
    result = scan_inputs([study])
    kinds = sorted((item.kind, item.number, len(item.files)) for item in result.items)
    assert kinds == [("multiframe", 7, 1), ("multiframe", 301, 1), ("series", 5, 5), ("series", 6, 4)]
    reasons = sorted(s.reason for s in result.skipped)
    assert len(reasons) == 3 and sum("localizer" in r for r in reasons) == 2 and sum("SEG" in r for r in reasons) == 1
    only = scan_inputs([study / "indexed" / "DICOMDIR"])
    assert [(i.kind, len(i.files)) for i in only.items] == [("series", 5)]
    assert sum("localizer" in s.reason for s in only.skipped) == 2


def test_series_selection_by_number_description_and_modality(study):
    pick = scan_inputs([study], SeriesSelection(numbers=(6,)))
    assert [i.number for i in pick.items] == [6]
    assert any("not selected" in s.reason for s in pick.skipped)
    assert [i.number for i in scan_inputs([study], SeriesSelection(descriptions=("cor*",))).items] == [6]
    assert {i.modality for i in scan_inputs([study], SeriesSelection(modalities=("mr",))).items} == {"MR"}


def test_predict_and_test_on_a_study_export(study, tmp_path, capsys):
    from medzsad.cli.main import main
    from medzsad.engine.config import load_config
    from medzsad.engine.jobs import open_dataset

    out = tmp_path / "out"
    code = main(["predict", "-i", str(study), "-o", str(out), *TINY_OVERRIDES, "method=clip"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("a localizer (scout) image") == 2 and "a segmentation" in printed

    maps = sorted((out / "volumes").glob("*_map.nii.gz"))
    assert len(maps) == 4  # axial series, coronal reformat, enhanced multi-frame, emri multi-frame
    index = {row["sample_id"]: Path(row["source"]) for row in _rows(out / "sample_index.local.csv")}
    sources = {index[p.name.removesuffix("_map.nii.gz")]: sitk.ReadImage(str(p)) for p in maps}
    series_folders = [source for source in sources if source.is_dir()]
    assert sorted(f.name for f in series_folders) == ["SE000001", "extra"]  # the axial series, the reformat
    axial = None
    for series_folder in series_folders:
        (files,) = [f for f in _itk_series(series_folder) if len(f) > 1]
        reference = sitk.ReadImage(files)
        _assert_same_geometry(sources[series_folder], reference)
        axial = reference if len(files) == 5 else axial
    # The enhanced multi-frame copy of the axial series lands on the axial series' grid.
    _assert_same_geometry(sources[study / "extra" / "enhanced.dcm"], axial)
    # No patient geometry in emri_small: written with qform/sform code 0.
    emri = next(p for p in maps if index[p.name.removesuffix("_map.nii.gz")].name == "emri_small.dcm")
    header = nib.load(str(emri)).header
    assert int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0

    config = load_config(None, [*TINY_OVERRIDES, "method=clip"])
    dataset = open_dataset(study, config, 224)
    rows = _rows(out / "scores.csv")
    predicted = {(r["volume_id"], int(r["slice_index"])) for r in rows if r["kind"] == "slice"}
    seen = {(s.volume_id, s.slice_index) for s in (dataset[i] for i in range(len(dataset)))}
    assert seen == predicted
    assert len(seen) == 5 + 4 + 5 + 10
    assert len(dataset.skipped) == 3


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def _itk_series(folder: Path) -> list[list[str]]:
    reader = sitk.ImageSeriesReader
    return [list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in reader.GetGDCMSeriesIDs(str(folder))]


def _assert_same_geometry(written: sitk.Image, reference: sitk.Image) -> None:
    assert written.GetSize() == reference.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)


def test_series_chosen_on_the_command_line(study, tmp_path):
    from medzsad.cli.main import main

    out = tmp_path / "out"
    code = main(
        ["predict", "-i", str(study / "extra"), "-o", str(out), *TINY_OVERRIDES, "method=clip", "data.series=6"]
    )
    assert code == 0
    assert len(list((out / "volumes").glob("*_map.nii.gz"))) == 1
    rows = _rows(out / "scores.csv")
    assert len(rows) == 4 and {r["slice_index"] for r in rows} == {"0", "1", "2", "3"}
