"""End to end through the engine: every method predicts, real scans round-trip, and nothing that
identifies a patient reaches MLflow."""

from __future__ import annotations

import csv
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from engine_helpers import TINY_OVERRIDES
from pydicom.data import get_testdata_file

from medzsad.cli.main import main
from medzsad.data.ids import dicom_identifiers
from medzsad.engine.checkpoints import save_checkpoint
from medzsad.engine.config import load_config
from medzsad.engine.jobs import evaluate_config, run_predict, run_train
from medzsad.engine.runtime import build_method
from medzsad.methods import METHODS


def _checkpoint_for(method: str, folder: Path) -> list[str]:
    """A checkpoint of freshly initialised prompts (learned methods), nothing for training-free ones."""
    config = load_config(None, [*TINY_OVERRIDES, f"method={method}"])
    torch.manual_seed(0)
    model = build_method(config)
    if not model.trainable_parameters():
        return []
    save_checkpoint(model, folder / method)
    return [f"checkpoint={folder / method}.safetensors"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_predict_works_for_every_method(method, tmp_path):
    from PIL import Image

    images = tmp_path / "in"
    images.mkdir()
    for i, (h, w) in enumerate([(50, 70), (90, 60)]):
        pixels = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    config = load_config(None, [*TINY_OVERRIDES, f"method={method}", *_checkpoint_for(method, tmp_path)])
    summary = run_predict(config, [images], tmp_path / "out")
    assert summary.images == 2 and not summary.failures
    rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    assert len(rows) == 2 and all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    shapes = sorted(np.load(p)["anomaly_map"].shape for p in (tmp_path / "out" / "maps").glob("*.npz"))
    assert shapes == [(50, 70), (90, 60)]


def test_real_nrrd_volume_through_the_model_keeps_its_geometry(shared_data_dir, tmp_path):
    source = shared_data_dir / "radiomics-samples" / "brain2_image.nrrd"
    config = load_config(None, [*TINY_OVERRIDES, *_checkpoint_for("anomalyclip", tmp_path)])
    summary = run_predict(config, [source], tmp_path / "out")
    assert summary.volumes == 1
    (written,) = (tmp_path / "out" / "volumes").glob("*_map.nii.gz")
    original, result = sitk.ReadImage(str(source)), sitk.ReadImage(str(written))
    assert result.GetSize() == original.GetSize()
    np.testing.assert_allclose(result.GetSpacing(), original.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(result.GetOrigin(), original.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(result.GetDirection(), original.GetDirection(), atol=1e-6)
    values = sitk.GetArrayFromImage(result)
    assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0
    rows = [r for r in csv.DictReader((tmp_path / "out" / "scores.csv").open()) if r["kind"] == "slice"]
    assert len(rows) == original.GetSize()[2]  # one score per axial slice
    assert "brain2" not in written.name


REAL_DICOM = {"good": ["CT_small.dcm", "MR2_UNCR.dcm"], "lesion": ["MR_small.dcm", "JPEG2000.dcm"]}


def _every_text(root: Path) -> str:
    """Everything MLflow stored: every cell of every table of the SQLite store, every artifact path and
    every artifact that decodes as text."""
    parts = []
    with sqlite3.connect(root / "mlflow.db") as db:
        for (table,) in db.execute("select name from sqlite_master where type='table'"):
            for row in db.execute(f'select * from "{table}"'):
                parts.extend(str(cell) for cell in row)
    for path in (root / "mlartifacts").rglob("*"):
        parts.append(str(path.relative_to(root)))
        if path.is_file() and path.suffix in {".json", ".yaml", ".txt", ".csv", ".md"}:
            parts.append(path.read_text(errors="ignore"))
    return "\n".join(parts)


def test_evaluation_of_real_dicom_files_leaks_no_identifier_to_mlflow(tmp_path, capsys):
    dataset = tmp_path / "export_PACS"
    identifiers: set[str] = set()
    for folder, names in REAL_DICOM.items():
        (dataset / folder).mkdir(parents=True)
        for name in names:
            source = Path(get_testdata_file(name, download=False))
            ds = pydicom.dcmread(source, stop_before_pixels=True)
            # Short all-digit values ("00000") would match any number in a table; dates (8 digits) stay.
            identifiers |= {v for v in dicom_identifiers(ds) if len(v) >= 4 and not (v.isdigit() and len(v) < 8)}
            # PACS exports name files after the patient: the name must not travel either.
            target = dataset / folder / f"{ds.PatientID}_{source.stem}.dcm"
            shutil.copy(source, target)
            identifiers |= {ds.PatientID + "_" + source.stem, str(target)}
    assert len(identifiers) > 10
    assert main(["prepare", "folder", str(dataset)]) == 0
    store = tmp_path / "store"
    config = load_config(
        None,
        [
            *TINY_OVERRIDES[:-2],
            "device=cpu",
            *_checkpoint_for("anomalyclip", tmp_path),
            f"data.test=[{dataset}/meta.json]",
            f"eval.output_dir={tmp_path / 'eval'}",
            "tracking.enabled=true",
            f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
            f"tracking.artifact_location={store / 'mlartifacts'}",
        ],
    )
    results = evaluate_config(config, quiet=True)
    assert sum(len(r.samples) for r in results.values()) == 4
    text = _every_text(store)
    assert "image_auroc" in text and "overlays" in text  # the run really logged metrics and overlays
    leaked = sorted(i for i in identifiers if i in text)
    assert not leaked, f"identifiers found in the MLflow store: {leaked}"
    for csv_file in (tmp_path / "eval").glob("*.csv"):
        body = csv_file.read_text()
        assert not [i for i in identifiers if i in body], csv_file.name


def test_table_mode_puts_methods_side_by_side(tiny_dataset, tmp_path, capsys):
    columns = []
    for method in ("anomalyclip", "clip"):
        path = tmp_path / f"{method}.yaml"
        ckpt = _checkpoint_for(method, tmp_path)
        lines = [f"method: {method}"] + ([f"checkpoint: {ckpt[0].split('=', 1)[1]}"] if ckpt else [])
        lines += ["backbone: {model_name: medzsad-tiny-fast, pretrained: null}", "method_config: {image_size: 224}"]
        path.write_text("\n".join(lines) + "\n")
        columns += ["--run", f"{method}={path}"]
    code = main(
        ["table", *columns, *TINY_OVERRIDES, f"data.test=[aux={tiny_dataset}]", f"eval.output_dir={tmp_path / 'table'}"]
    )
    assert code == 0
    table = (tmp_path / "table" / "table.md").read_text()
    assert "anomalyclip img (AUROC, AP)" in table and "clip px (AUROC, AU-PRO@0.3 exact)" in table
    assert table.count("| aux |") == 1


def test_finetune_continues_a_checkpoint_and_keeps_its_settings(tiny_dataset, tmp_path):
    first = run_train(
        load_config(
            None,
            [
                *TINY_OVERRIDES,
                f"data.train={tiny_dataset}",
                "train.epochs=1",
                "train.max_steps_per_epoch=1",
                "method_config.sigma=2.5",
                f"train.output_dir={tmp_path / 'aux'}",
            ],
        )
    )
    tuned = run_train(
        load_config(
            None,
            [
                *TINY_OVERRIDES,
                f"data.train={tiny_dataset}",
                "train.epochs=1",
                "train.max_steps_per_epoch=1",
                f"checkpoint={first.last_checkpoint}.safetensors",
                f"train.output_dir={tmp_path / 'ft'}",
            ],
        ),
        finetune=True,
    )
    import json

    meta = json.loads((tmp_path / "ft" / "epoch_1.json").read_text())
    assert meta["method_config"]["sigma"] == 2.5  # kept from the auxiliary checkpoint
    assert meta["training"]["finetune"] is True
    from safetensors.torch import load_file

    before = load_file(f"{first.last_checkpoint}.safetensors")
    after = load_file(f"{tuned.last_checkpoint}.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
