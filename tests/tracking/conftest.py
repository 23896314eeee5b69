"""Fixtures for tracking tests: a fresh SQLite store per test, copied from a migrated template.

Creating an MLflow SQLite store runs all Alembic migrations (seconds); copying an already
migrated file takes milliseconds, which keeps these tests fast.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from medzsad.tracking import ReviewSample, TrackingConfig, clear_forbidden, sqlite_uri

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
    clear_forbidden()
    yield
    clear_forbidden()


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


RUN_KWARGS = {
    "method": "anomalyclip",
    "backbone": "ViT-L-14-336/openai",
    "weight_hash": "sha256:3f1c0e9d",
    "target_dataset": "brainmri",
    "aux_data": "mvtec",
    "code_version": "git-1a2b3c4",
}

CONFIG_DICT = {
    "seed": 111,
    "method": {"name": "anomalyclip", "prompt_length": 12, "depth": 9, "features": [6, 12, 18, 24]},
    "data": {"root": "/data/hospital/exports/brain", "image_size": 518, "name": "brainmri"},
    "train": {"epochs": 15, "lr": 0.001, "optimizer_obj": "<torch.optim.Adam object at 0x7f3a2b>"},
    "logging": {"verbose": True},
}


def make_samples(n: int = 12, size: int = 48, seed: int = 0) -> list[ReviewSample]:
    """Synthetic review samples: anomalies have a bright square with a matching mask."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        label = i % 2
        image = (rng.random((size, size, 3)) * 80 + 60).astype(np.uint8)
        amap = (rng.random((size // 2, size // 2)) * 0.1).astype(np.float32)
        mask = np.zeros((size, size), dtype=bool)
        if label:
            mask[10:26, 12:30] = True
            amap[5:13, 6:15] = 0.6 + 0.3 * rng.random()
        samples.append(
            ReviewSample(
                sample_id=f"s{i:03d}-{rng.integers(1 << 30):08x}",
                category="brain" if i < n // 2 else "head",
                score=float(amap.max()),
                label=label,
                image=image,
                anomaly_map=amap,
                mask=mask,
            )
        )
    return samples
