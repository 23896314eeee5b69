"""When MLflow is down or its store is locked, the run finishes locally and uploads later."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from medzsad.tracking import Curve, TrackingConfig, tracked_run, upload_spool

from .helpers import CONFIG_DICT, RUN_KWARGS, all_artifacts, make_samples

# Nothing listens on the discard port of loopback: connections are refused at once.
DEAD_SERVER = "http://127.0.0.1:9"


def _evaluate(run) -> None:
    """What an evaluation logs: training curve, metrics, a curve figure and the review."""
    run.log_epoch(0, {"loss": 0.7})
    run.log_eval({"brain": {"image_auroc": 0.9}, "mean": {"image_auroc": 0.9}})
    x = np.linspace(0, 1, 10)
    run.log_curves("roc", {"brain": Curve(x, x)})
    run.log_review(make_samples(6), "brainmri", image_threshold=0.5, pixel_threshold=0.4, panel_size=4)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("medzsad") and r.levelno >= logging.WARNING]


def _count_connections_to(port: int, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every socket connect to ``port`` (any library's) from now on."""
    attempts: list[object] = []
    connect = socket.socket.connect

    def counting_connect(sock: socket.socket, address: object) -> object:
        if isinstance(address, tuple) and len(address) >= 2 and address[1] == port:
            attempts.append(address)
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", counting_connect)
    return attempts


def test_dead_server_spools_once_then_uploads(
    tmp_path: Path,
    tracking_config: TrackingConfig,
    client,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offline_config = TrackingConfig(tracking_uri=DEAD_SERVER, spool_dir=tmp_path / "spool", probe_timeout_s=1)
    attempts = _count_connections_to(9, monkeypatch)
    with (
        caplog.at_level(logging.WARNING),
        tracked_run(offline_config, "zero-shot-eval", config_dict=CONFIG_DICT, **RUN_KWARGS) as run,
    ):
        _evaluate(run)
    # A dead server must not hold the evaluation up: one refused probe, then no retries at all (a
    # condition on what happened, not a wall-time limit that a loaded machine can exceed).
    assert len(attempts) == 1, attempts
    assert run.offline and run.run_id is None

    lines = _warnings(caplog)
    assert len(lines) == 1, lines
    assert "127.0.0.1:9" in lines[0] and str(run.spool_path) in lines[0] and "medzsad tracking upload" in lines[0]

    # The spool holds everything: a JSON journal plus the files.
    meta = json.loads((run.spool_path / "meta.json").read_text())
    assert meta["status"] == "FINISHED" and meta["purpose"] == "zero-shot-eval"
    ops = [json.loads(line) for line in (run.spool_path / "journal.jsonl").read_text().splitlines()]
    assert {op["op"] for op in ops} == {"tags", "params", "artifact", "artifacts", "metrics", "table", "image"}
    assert len(list((run.spool_path / "files").rglob("*.png"))) >= 6 + 4 + 1  # overlays, panel, curve

    run_ids = upload_spool(tmp_path / "spool", tracking_config)
    assert len(run_ids) == 1 and not run.spool_path.exists()
    assert upload_spool(tmp_path / "spool", tracking_config) == [], "nothing is uploaded twice"

    uploaded = client.get_run(run_ids[0])
    assert uploaded.info.status == "FINISHED"
    assert uploaded.data.tags["method"] == "anomalyclip" and uploaded.data.tags["uploaded_from_spool"] == "true"
    assert uploaded.data.metrics["brain/image_auroc"] == pytest.approx(0.9)
    assert uploaded.data.params["method_config.prompt_length"] == "12"
    artifacts = all_artifacts(client, run_ids[0])
    assert "config/resolved.yaml" in artifacts and "curves/image_roc.png" in artifacts
    assert sum(a.startswith("overlays/brainmri/") for a in artifacts) == 6
    assert sum(a.startswith("images/review~brainmri~panel") and a.endswith(".png") for a in artifacts) == 4
    assert "review/brainmri/index.json" in artifacts


@pytest.mark.slow
def test_locked_store_mid_run_spools_and_upload_supersedes_the_partial_run(
    tracking_config: TrackingConfig, store_dir: Path, client, caplog: pytest.LogCaptureFixture
) -> None:
    """MLflow waits 20 s on a locked SQLite store (its busy timeout) before the run goes local."""
    lock = sqlite3.connect(store_dir / "mlflow.db", isolation_level=None)
    with (
        caplog.at_level(logging.WARNING),
        tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **RUN_KWARGS) as run,
    ):
        partial_id = run.run_id
        assert not run.offline
        lock.execute("BEGIN EXCLUSIVE")  # another writer holds the store
        try:
            _evaluate(run)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    assert run.offline and len(_warnings(caplog)) == 1
    assert "database is locked" in _warnings(caplog)[0]

    (new_id,) = upload_spool(tracking_config.spool_dir, tracking_config)
    assert client.get_run(new_id).data.metrics["image_auroc"] == pytest.approx(0.9)
    partial = client.get_run(partial_id)
    assert partial.info.status == "FAILED" and partial.data.tags["superseded_by"] == new_id
