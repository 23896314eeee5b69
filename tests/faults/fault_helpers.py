"""Helpers of the fault suite: tiny-model overrides, DICOM and PNG writers, an output-tree fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: Tiny random-weight CLIP, a training-free method, CPU, no MLflow: runs take seconds.
TINY = [
    "backbone.model_name=medzsad-tiny-fast",
    "backbone.pretrained=null",
    "method=clip",
    "method_config.image_size=224",
    "tracking.enabled=false",
    "device=cpu",
    "eval.num_workers=0",
]

PATIENT = {"name": "LASTNAME^Firstname", "id": "PAT731904", "institution": "St Elsewhere Clinic"}


def write_ct_series(folder: Path, n: int = 3, size: int = 32, seed: int = 0, **header: str) -> list[Path]:
    """``n`` CT slices of one series (geometry, rescale, identifying header values) as ``slice_<k>.dcm``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName = header.get("name", PATIENT["name"])
        ds.PatientID = header.get("id", PATIENT["id"])
        ds.InstitutionName = header.get("institution", PATIENT["institution"])
        ds.StudyDate = ds.SeriesDate = "20210315"
        ds.AccessionNumber = "ACC99817"
        ds.Modality = "CT"
        ds.BurnedInAnnotation = "NO"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelSpacing = [0.7, 0.7]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, float(k)]
        ds.SliceThickness = 1.0
        ds.InstanceNumber = k + 1
        ds.PixelData = rng.integers(900, 1300, (size, size), dtype=np.uint16).tobytes()
        path = folder / f"slice_{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_pngs(folder: Path, n: int, size: int = 48, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def fingerprint(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder``: equal before and after = nothing lost."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error_line(err: str) -> str:
    """The single ``medzsad: error:`` line of ``err`` (asserts there is exactly one and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("medzsad: error")]
    assert len(lines) == 1, err
    return lines[0]
