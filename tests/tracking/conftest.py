"""Fixtures for tracking tests: a fresh SQLite store per test, copied from a migrated template.

Creating an MLflow SQLite store runs all Alembic migrations (seconds); copying an already
migrated file takes milliseconds, which keeps these tests fast.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from medzsad.tracking import TrackingConfig, sqlite_uri

ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=sqlite_uri(path)).search_experiments()  # runs the migrations
    return path


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # No test may reach a real server or the user's store, nor wait minutes on HTTP retries.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    yield


@pytest.fixture
def store_dir(tmp_path: Path, template_db: Path) -> Path:
    """A folder with a ready ``mlflow.db``: the layout ``serve_ui`` expects."""
    store = tmp_path / "store"
    store.mkdir()
    shutil.copyfile(template_db, store / "mlflow.db")
    return store


@pytest.fixture
def tracking_config(store_dir: Path) -> TrackingConfig:
    return TrackingConfig.for_store_dir(store_dir)


@pytest.fixture
def client(tracking_config: TrackingConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_config.tracking_uri)
