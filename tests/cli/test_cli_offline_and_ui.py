"""Offline: an unreachable weight host fails at once with a whole message. ``medzsad ui``: stopping it
leaves no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from medzsad.backbone.loading import WeightsUnavailableError, load_clip


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_hub_fails_fast_with_the_cause_and_the_cli_syntax(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # what HF_ENDPOINT sets
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as error:
        load_clip("ViT-L-14-336", "openai")
    elapsed = time.monotonic() - started
    # Before: about 49 s of huggingface_hub retries. One refused probe takes milliseconds; the bound
    # only has to tell one probe from a retry loop, so it is loose for a loaded machine.
    assert elapsed < 15, f"{elapsed:.1f} s to report an unreachable hub"
    message = str(error.value)
    assert f"{endpoint} cannot be reached (connection refused)" in message
    assert "backbone.weights_path=" in message and "backbone.offline=true" in message
    assert "--backbone" not in message and message.endswith("backbone=tiny.")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated MLflow SQLite store to copy (creating one runs every migration)."""
    from mlflow import MlflowClient

    from medzsad.tracking import sqlite_uri

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=sqlite_uri(path)).search_experiments()
    return path


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ui_stop_leaves_no_process(tmp_path: Path, template_db: Path, stop_signal: signal.Signals) -> None:
    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(template_db, store / "mlflow.db")
    command = [sys.executable, "-m", "medzsad.cli.main", "ui", "--store", str(store), "--port", str(_closed_port())]
    command += ["--start-timeout", "0"]  # wait for the server as long as it runs: no wall-time limit
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ui = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        first = ui.stdout.readline()  # printed once the server answers /health (or an error)
        assert first.startswith("MLflow UI on http://127.0.0.1:"), first + ui.stdout.read()
        server_tree = _descendants(ui.pid)
        assert server_tree, "the MLflow server runs as a child process"
        ui.send_signal(stop_signal)
        assert ui.wait() == 0
        assert "MLflow UI stopped" in ui.stdout.read()
        # stop() returns only once the group is gone (or killed); nothing may be left running.
        assert _alive(server_tree) == [], [p.cmdline() for p in _alive(server_tree)]
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
