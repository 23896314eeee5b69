"""The newcomer's first command runs end to end and leaves every promised output."""

from __future__ import annotations

import csv

import mlflow
from mlflow.tracking import MlflowClient

from medzsad.engine.demo import run_demo


def test_demo_runs_and_logs(tmp_path, capsys):
    run_demo(tmp_path / "demo", steps=2)
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "medzsad ui --store" in out
    workdir = tmp_path / "demo"
    assert (workdir / "runs" / "train" / "epoch_2.safetensors").is_file()
    rows = list(csv.DictReader((workdir / "runs" / "test" / "metrics.csv").open()))
    datasets = {row["dataset"] for row in rows}
    assert {"phantom_nifti", "phantom_dicom"} <= datasets
    assert any(row["category"] == "mean" and row.get("pixel_auroc [%]") for row in rows)
    assert list((workdir / "predictions" / "volumes").glob("*_map.nii.gz"))

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiments = {e.name for e in client.search_experiments()}
    assert {"medzsad/aux-train", "medzsad/zero-shot-eval"} <= experiments
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert any("train/total" in r.data.metrics or any(k.startswith("train") for k in r.data.metrics) for r in runs)
    mlflow.set_tracking_uri(None)
