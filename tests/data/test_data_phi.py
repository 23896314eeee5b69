"""PHI: nothing the data pipeline emits (samples, batches, ids, metadata, output files and their names)
contains an identifier of the real DICOM test files, a synthetic fake identifier, or a source path."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
import torch
from datahelpers import real_dicom_files, with_pixel_data

from medzsad.data.datasets import FolderDataset, ManifestDataset
from medzsad.data.ids import clean_meta, dicom_identifiers, pseudonymous_id, scan_for_identifiers
from medzsad.data.prepare import prepare_folder
from medzsad.data.records import collate_samples
from medzsad.data.synthetic import FAKE_IDENTIFIERS, make_phantom, write_phantom_dicom_series
from medzsad.data.volumes import list_dicom_series, write_nifti

pytest.importorskip("data_store", reason="pydicom-data is not installed")

# Small real files covering CT, MR, CR (MONOCHROME1), US colour, secondary capture and a multi-frame MR.
REAL = ["CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "SC_rgb.dcm", "emri_small.dcm", "JPEG2000.dcm"]


@pytest.fixture(scope="module")
def identifiers() -> set[str]:
    found: set[str] = set()
    for _path, ds in with_pixel_data(real_dicom_files()):
        found |= dicom_identifiers(ds)
    found |= {v for v in FAKE_IDENTIFIERS.values() if len(v) >= 4}
    assert len(found) > 100, "expected many identifiers from the real files"
    return found


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory) -> Path:
    """Real DICOM files (plus a synthetic series with fake identifiers) under identifying-looking names."""
    root = tmp_path_factory.mktemp("phi") / "DOE^JOHN_ACC998877"
    from pydicom.data import get_testdata_file

    for name in REAL:
        source = Path(get_testdata_file(name, download=False))
        ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)
        patient = str(ds.get("PatientID", "") or "nopid").replace("/", "_")
        target = root / "normal" / f"{patient}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    for path in sorted((Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests").rglob("*")):
        if path.is_file() and path.name.isdigit():  # the 16x16 CT/MR/CR instances of a DICOMDIR tree
            target = root / "lesion" / path.relative_to(path.parents[2])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    write_phantom_dicom_series(root / "lesion" / "phantom_series", make_phantom((6, 24, 20))[0])
    return root


def test_pseudonymous_ids_and_meta_allow_list():
    assert pseudonymous_id("1.2.3.4", salt="k") == pseudonymous_id("1.2.3.4", salt="k")
    assert pseudonymous_id("1.2.3.4", salt="k") != pseudonymous_id("1.2.3.4", salt="other")
    assert len(pseudonymous_id("x")) == 16
    meta = clean_meta({"modality": "CT", "PatientName": "DOE^JOHN", "photometric": "a free text, with comma?",
                       "spacing": (1.0, 0.5), "StudyDate": "20200101", "n_frames": 3})  # fmt: skip
    assert meta == {"modality": "CT", "spacing": (1.0, 0.5), "n_frames": 3}


def test_nothing_emitted_carries_identifiers(scan_folder, tmp_path, identifiers):
    forbidden = set(identifiers)
    forbidden |= {"DOE^JOHN", "ACC998877", str(scan_folder), str(scan_folder.parent)}
    forbidden |= {p.stem for p in scan_folder.rglob("*") if p.is_file() and len(p.stem) >= 5}
    emitted: list[object] = []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = FolderDataset(scan_folder, category="mixed", image_size=32)
        samples = [dataset[i] for i in range(len(dataset))]
    assert len(samples) >= len(REAL) + 10
    emitted += samples
    emitted.append(collate_samples(samples))
    emitted.append(repr(list_dicom_series(scan_folder / "lesion")))  # what a log line would show
    emitted.append(list(dataset.volume_sources()))

    for volume_id in dataset.volume_sources():
        maps = {s.slice_index: torch.zeros(32, 32) for s in samples if s.volume_id == volume_id}
        volume, result = dataset.reassemble(volume_id, maps)
        emitted.append(volume.meta)
        out = write_nifti(result, volume, tmp_path / "maps" / f"{volume_id}.nii")
        emitted += [out.name, out.read_bytes()]

    prepare_folder(scan_folder, tmp_path / "manifest" / "meta.json", category="mixed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest_dataset = ManifestDataset(tmp_path / "manifest" / "meta.json", image_size=32)
        emitted += [manifest_dataset[i] for i in range(len(manifest_dataset))]

    leaks = scan_for_identifiers(emitted, forbidden)
    assert leaks == [], leaks
