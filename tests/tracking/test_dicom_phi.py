"""Real DICOM files through tracking: none of their identifiers may end up in the MLflow store.

The data layer's job (pseudonymous ids, registering header identifiers) is stood in for here with
an HMAC of the SOP Instance UID and the header values handed to the run
(``tracked_run(forbidden=...)``), as the engine does.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from medzsad.tracking import PHIError, ReviewSample, TrackingConfig, tracked_run

from .helpers import RUN_KWARGS

pydicom = pytest.importorskip("pydicom")

FILES = ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "US1_UNCR.dcm")
HEADER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "SeriesDate",
    "StudyTime",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)


def _load(name: str):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)  # never the network: it would hang on retries
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return Path(path), pydicom.dcmread(path)


def _identifiers(path: Path, ds) -> set[str]:
    values = {str(path), str(path.parent), path.stem}
    for keyword in HEADER_KEYWORDS:
        value = ds.get(keyword)
        if value:
            values.add(str(value))
            values.update(part for part in str(value).split("^") if part)
    return {v for v in values if v.strip()}


def _display(ds) -> np.ndarray:
    pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    if pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] != 3):
        pixels = pixels[0]
    lo, hi = float(pixels.min()), float(pixels.max())
    grey = ((pixels - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    return grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=2)


def _store_text(store: Path) -> str:
    """Everything MLflow keeps: every cell of every table, artifact paths and text artifacts."""
    chunks: list[str] = []
    with sqlite3.connect(store / "mlflow.db") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                chunks.extend(str(cell) for cell in row if cell is not None)
    for file in (store / "mlartifacts").rglob("*"):
        chunks.append(str(file.relative_to(store)))
        if file.is_file() and file.suffix in (".json", ".yaml", ".txt", ".csv"):
            chunks.append(file.read_text(errors="replace"))
    return "\n".join(chunks).casefold()


def test_no_dicom_identifier_reaches_the_store(tracking_config: TrackingConfig, store_dir: Path) -> None:
    salt = b"per-site secret"
    rng = np.random.default_rng(3)
    samples, identifiers, sources = [], set(), []
    for name in FILES:
        path, ds = _load(name)
        found = _identifiers(path, ds)
        identifiers |= found
        sources.append(str(path))
        image = _display(ds)
        amap = rng.random(image.shape[:2], dtype=np.float32) * 0.3
        label = int(name.startswith("MR"))
        mask = np.zeros(image.shape[:2], dtype=bool)
        if label:
            mask[10:30, 10:30] = True
            amap[10:30, 10:30] = 0.9
        samples.append(
            ReviewSample(
                sample_id=hmac.new(salt, str(ds.SOPInstanceUID).encode(), hashlib.sha256).hexdigest()[:16],
                category=str(ds.Modality).lower(),
                score=float(amap.max()),
                label=label,
                image=image,
                anomaly_map=amap,
                mask=mask,
                burned_in_text=ds.Modality in ("US", "SC"),  # as the data layer flags ultrasound
            )
        )
    config_dict = {"data": {"name": "pydicom-testdata", "files": sources, "root": str(Path(sources[0]).parent)}}

    kwargs = {**RUN_KWARGS, "forbidden": identifiers}  # the header values, as the engine hands them over
    with tracked_run(tracking_config, "zero-shot-eval", config_dict=config_dict, **kwargs) as run:
        with pytest.raises(PHIError, match="burned-in"):
            run.log_review(samples, "dicom", image_threshold=0.5, pixel_threshold=0.5)
        safe = [s for s in samples if not s.burned_in_text]
        summary = run.log_review(safe, "dicom", image_threshold=0.5, pixel_threshold=0.5)
        run.log_eval({"ct": {"image_auroc": 0.5}, "mr": {"image_auroc": 1.0}, "mean": {"image_auroc": 0.75}})
        # A careless caller passing a raw header value is stopped by the guard.
        for leaked in (sources[0], "Lestrade^G", "CompressedSamples^CT1"):
            with pytest.raises(PHIError):
                run.set_tags({"note": leaked})
    assert summary.n_samples == 3 and not run.offline

    corpus = _store_text(store_dir)
    assert "dicom" in corpus and summary.panel_ids[0] in corpus  # sanity: the scan sees our data
    # Long identifiers must appear nowhere; very short ones (e.g. PatientID "ID1") would match
    # unrelated text, so they are checked by the guard above but not scanned for here.
    leaked = sorted(v for v in identifiers if len(v) >= 6 and v.casefold() in corpus)
    assert leaked == [], f"identifiers found in the MLflow store: {leaked}"
