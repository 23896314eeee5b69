"""MLflow faults: a locked store, a killed run's journal, a resumed training. Results stay local and
whole; nothing is duplicated or left RUNNING."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fault_helpers import TINY, write_pngs
from mlflow import MlflowClient

from medzsad.engine import jobs
from medzsad.tracking import Purpose, TrackingConfig, sqlite_uri, tracked_run, upload_spool


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


@pytest.fixture
def store(tmp_path) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    MlflowClient(tracking_uri=sqlite_uri(store / "mlflow.db")).search_experiments()  # runs the migrations
    return store


def _tracking(store: Path) -> list[str]:
    return [
        "tracking.enabled=true",
        f"tracking.tracking_uri={sqlite_uri(store / 'mlflow.db')}",
        f"tracking.artifact_location={store / 'mlartifacts'}",
    ]


def _config(store: Path) -> TrackingConfig:
    return TrackingConfig(
        tracking_uri=sqlite_uri(store / "mlflow.db"),
        artifact_location=store / "mlartifacts",
        spool_dir=store.parent / "mlflow-spool",
    )


def _dataset(root: Path) -> Path:
    from test_work_kept import _manifest

    return _manifest(root)


def test_a_locked_store_keeps_the_results_local_with_one_line_saying_how_to_upload(
    store, tmp_path, monkeypatch, cli, caplog
):
    monkeypatch.chdir(tmp_path)
    manifest = _dataset(tmp_path / "d")
    lock = sqlite3.connect(store / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the store for the whole run
    try:
        code, _, err = cli(
            "test", *TINY[:4], *TINY[5:], *_tracking(store), f"data.test=[{manifest}]", "eval.output_dir=o"
        )
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if r.name == "medzsad.tracking"]
    assert len(warned) == 1 and "medzsad tracking upload" in warned[0]
    assert (tmp_path / "o" / "metrics.csv").is_file() and (tmp_path / "o" / "scores_dataset-1.csv").is_file()
    code, out, err = cli("tracking", "upload", tmp_path / "mlflow-spool", *_tracking(store))
    assert code == 0 and "uploaded 1 run(s)" in out
    runs = MlflowClient(tracking_uri=sqlite_uri(store / "mlflow.db")).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=sqlite_uri(store / "mlflow.db")).search_experiments()]
    )
    assert [r.info.status for r in runs] == ["FINISHED"] and "image_auroc" in runs[0].data.metrics


def test_the_journal_of_a_killed_online_run_is_not_replayed_as_a_failed_copy(store):
    config = _config(store)
    block = tracked_run(
        config, Purpose.ZERO_SHOT_EVAL, method="clip", backbone="tiny", weight_hash="0" * 16,
        target_dataset="dataset-1", config_dict={}, code_version="t",
    )  # fmt: skip
    run = block.__enter__()  # the process dies inside the block: no __exit__, the journal stays
    run.log_metrics({"image_auroc": 0.75})
    assert run.spool_path.exists() and not run.offline
    assert upload_spool(config.spool_dir, config) == []  # nothing to replay: it all reached the store
    client = MlflowClient(tracking_uri=config.tracking_uri)
    (only,) = client.search_runs([client.get_run(run.run_id).info.experiment_id])
    assert only.info.run_id == run.run_id and only.info.status == "KILLED"
    assert only.data.metrics["image_auroc"] == 0.75
    assert not run.spool_path.exists()


class Crash(Exception):
    pass


def test_a_resumed_training_continues_its_mlflow_run(store, tmp_path, monkeypatch):
    from test_work_kept import _manifest

    from medzsad.engine.config import load_config

    monkeypatch.chdir(tmp_path)
    manifest = _manifest(tmp_path / "aux")
    overrides = [
        *TINY[:2], *TINY[3:], *_tracking(store), "method=anomalyclip", f"data.train={manifest}",
        f"train.output_dir={tmp_path / 'train'}", "train.max_steps_per_epoch=1", "train.batch_size=2",
        "train.epochs=2",
    ]  # fmt: skip
    original = jobs.train

    def crash_after_epoch_1(method, dataset, cfg, device, on_epoch=None, extra=None, **state):
        def on_epoch_then_crash(epoch, losses):
            on_epoch(epoch, losses)
            raise Crash  # the process dies after epoch 1 was checkpointed and logged

        return original(method, dataset, cfg, device, on_epoch_then_crash, extra, **state)

    monkeypatch.setattr(jobs, "train", crash_after_epoch_1)
    with pytest.raises(Crash):
        jobs.run_train(load_config(None, overrides))
    monkeypatch.setattr(jobs, "train", original)
    jobs.run_train(load_config(None, overrides))  # resumes at epoch 2
    client = MlflowClient(tracking_uri=sqlite_uri(store / "mlflow.db"))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train/image_ce")
    assert sorted(m.step for m in history) == [1, 2]


def test_sigterm_ends_a_command_like_ctrl_c(tmp_path, cli, monkeypatch):
    import os
    import signal

    from medzsad.engine import predict as predict_module

    write_pngs(tmp_path / "in", 3)
    original = predict_module.Predictor._write_image_outputs
    calls = []

    def terminated(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # `kill PID` from another shell

    monkeypatch.setattr(predict_module.Predictor, "_write_image_outputs", terminated)
    code, _, err = cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", *TINY, "eval.batch_size=1")
    assert code == 130 and "interrupted" in err
    assert len((tmp_path / "out" / "scores.csv").read_text().splitlines()) == 3
    assert signal.getsignal(signal.SIGTERM) is not None
