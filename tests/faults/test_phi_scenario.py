"""The reported leak, recreated: a hospital export folder named after the patient, holding a DICOM
series whose headers carry the patient's name and id, prepared with ``medzsad prepare folder`` and
evaluated with ``medzsad test`` into a local MLflow store. Nothing of the patient may reach the store:
no database cell, artifact path, artifact content or spool file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
from fault_helpers import PATIENT, TINY, one_error_line, write_ct_series

from medzsad.data.ids import dicom_identifiers

FOLDER = "LASTNAME_Firstname_PAT731904"


def _export(root: Path) -> tuple[Path, set[str]]:
    export = root / FOLDER
    files = write_ct_series(export / "normal", n=3, seed=1) + write_ct_series(export / "lesion", n=3, seed=2)
    identifiers = {"LASTNAME", "Firstname", PATIENT["id"], FOLDER}
    for path in files:
        identifiers |= dicom_identifiers(pydicom.dcmread(path, stop_before_pixels=True))
    return export, {i.casefold() for i in identifiers}


def _store_text(*roots: Path) -> str:
    """Every cell of every SQLite table, every file path and every file's bytes under ``roots``."""
    parts = []
    for root in (r for r in roots if r.exists()):
        for path in root.rglob("*"):
            parts.append(path.relative_to(root).as_posix())
            if path.is_file() and path.suffix == ".db":
                with sqlite3.connect(path) as db:
                    for (table,) in db.execute("select name from sqlite_master where type='table'"):
                        parts.extend(str(cell) for row in db.execute(f'select * from "{table}"') for cell in row)
            elif path.is_file():
                parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts).casefold()


def _tracking(store: Path) -> list[str]:
    return [
        "tracking.enabled=true",
        f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
        f"tracking.artifact_location={store / 'mlartifacts'}",
    ]


def test_patient_folder_and_headers_never_reach_mlflow(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)  # the spool lives in the working folder
    export, identifiers = _export(tmp_path / "exports")
    code, _out, err = cli("prepare", "folder", export)
    assert code == 0, err
    store = tmp_path / "store"
    overrides = [*TINY[:4], *TINY[5:], *_tracking(store), "eval.output_dir=eval"]
    code, _out, err = cli("test", *overrides, f"data.test=[exports/{FOLDER}/meta.json]")
    assert code == 0, err
    text = _store_text(store, tmp_path / "mlflow-spool")
    assert "image_auroc" in text and "dataset-1" in text and "category-1" in text  # the run really logged
    leaked = sorted(i for i in identifiers if len(i) >= 4 and i in text)
    assert leaked == [], f"identifiers in the MLflow store: {leaked}"
    # The local outputs name the dataset neutrally too.
    assert (tmp_path / "eval" / "scores_dataset-1.csv").is_file()
    for table in (tmp_path / "eval").glob("*.csv"):
        assert not any(i in table.read_text().casefold() for i in identifiers if len(i) >= 4), table


def test_a_dataset_named_after_the_patient_id_is_refused_by_the_headers(tmp_path, monkeypatch, cli):
    """The user names the dataset with the id the headers carry: the run refuses it in one line."""
    monkeypatch.chdir(tmp_path)
    export, _ = _export(tmp_path / "exports")
    assert cli("prepare", "folder", export, "category=head")[0] == 0
    store = tmp_path / "store"
    overrides = [*TINY[:4], *TINY[5:], *_tracking(store), "eval.output_dir=eval"]
    code, _out, err = cli("test", *overrides, f"data.test=[{PATIENT['id']}={export}/meta.json]")
    line = one_error_line(err)
    assert code == 2 and "identifying value" in line and "data.test" in line
    assert PATIENT["id"].casefold() not in line.casefold().replace(f"{PATIENT['id']}=".casefold(), "")
    text = _store_text(store, tmp_path / "mlflow-spool")
    assert PATIENT["id"].casefold() not in text


def test_the_identifiers_of_a_dataset_come_from_its_headers(tmp_path):
    from medzsad.data.dicom import dataset_identifiers

    files = write_ct_series(tmp_path / "s", n=2)
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    found = {v.casefold() for v in dataset_identifiers([*files, tmp_path / "s" / "notes.txt"])}
    assert {"lastname", "firstname", PATIENT["id"].casefold(), "st elsewhere clinic", "acc99817"} <= found


def test_every_string_a_run_sends_is_checked_against_the_values_it_received(tmp_path):
    import pytest

    from medzsad.tracking import PHIError, Purpose, TrackingConfig, tracked_run

    config = TrackingConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=tmp_path / "art",
        spool_dir=tmp_path / "spool",
    )
    kwargs = {
        "method": "clip", "backbone": "tiny", "weight_hash": "0" * 16, "config_dict": {}, "code_version": "t",
        "forbidden": {PATIENT["id"], "LASTNAME"},
    }  # fmt: skip
    with pytest.raises(PHIError, match="target_dataset"):
        tracked_run(config, Purpose.ZERO_SHOT_EVAL, target_dataset=f"x-{PATIENT['id']}", **kwargs).__enter__()
    with tracked_run(config, Purpose.ZERO_SHOT_EVAL, target_dataset="dataset-1", **kwargs) as run:
        for send in (
            lambda: run.log_metrics({f"{PATIENT['id']}/image_auroc": 0.5}),
            lambda: run.set_tags({"note": "lastname"}),
            lambda: run.log_eval({"LASTNAME": {"image_auroc": 0.5}, "mean": {"image_auroc": 0.5}}),
        ):
            with pytest.raises(PHIError):
                send()
        run.log_metrics({"image_auroc": 0.5})  # ordinary names pass
