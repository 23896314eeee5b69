"""The only module that calls MLflow: runs, experiments and the replay of journaled operations.

An operation is a small JSON-able dict (see :mod:`medzsad.tracking.spool`); the same code applies
it live during a run and later when a spooled run is uploaded, so both give the same MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from medzsad.tracking.config import Purpose, TrackingConfig

__all__ = ["EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "MlflowBackend", "quiet_mlflow", "redact_uri"]

# The experiment kind MLflow's UI reads to choose its view: without it, MLflow 3 opens an
# experiment in GenAI mode (traces, tokens, cost) and shows no runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# MLflow's LogBatch limits per request.
_MAX_PARAMS = 100
_MAX_TAGS = 100
_MAX_METRICS = 1000


class _QuietWhileCalling(logging.Filter):
    """Drops MLflow's own error tracebacks while this thread is inside a backend call.

    A locked store makes MLflow log a full traceback before raising; the run already reports
    the failure in one line and carries on, so the traceback is noise there. Other threads and
    other MLflow use are untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "active", False)


_QUIET = _QuietWhileCalling()
_NOISY_LOGGERS = ("mlflow.store.db.utils", "mlflow.utils.rest_utils", "mlflow.tracking._tracking_service.client")
for _name in _NOISY_LOGGERS:
    logging.getLogger(_name).addFilter(_QUIET)


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """Silence MLflow's error logging in this thread for the duration of a call."""
    previous = getattr(_QUIET.local, "active", False)
    _QUIET.local.active = True
    try:
        yield
    finally:
        _QUIET.local.active = previous


def redact_uri(uri: str) -> str:
    """The tracking URI without user or password, for messages."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return parts._replace(netloc=netloc).geturl()
    return uri


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MlflowBackend:
    """Talks to one tracking URI through an ``MlflowClient`` (no global MLflow state is touched)."""

    def __init__(self, config: TrackingConfig) -> None:
        config.apply_telemetry_choice()
        from mlflow import MlflowClient

        self.config = config
        self.client = MlflowClient(tracking_uri=config.tracking_uri)
        self._monitor: Any = None

    def probe(self) -> None:
        """Fail fast when an HTTP server does not accept connections.

        MLflow retries a refused connection for minutes by default; a TCP connect with a short
        timeout tells the same in seconds, so an evaluation is not held up by a dead server.
        """
        if not self.config.is_http:
            return
        parts = urlsplit(self.config.tracking_uri)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=self.config.probe_timeout_s):
            pass

    def experiment_id(self, purpose: Purpose) -> str:
        """The id of the purpose's experiment, created (with our artifact folder) if missing."""
        from mlflow.exceptions import MlflowException

        name = purpose.experiment_name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older medzsad
                self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return experiment.experiment_id
        try:
            return self.client.create_experiment(
                name,
                artifact_location=self.config.experiment_artifact_location(purpose),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except MlflowException:
            # Another process may have created it in between; anything else re-raises below.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def start_run(self, purpose: Purpose, run_name: str, start_time_ms: int | None = None) -> str:
        self.probe()
        experiment_id = self.experiment_id(purpose)
        run = self.client.create_run(experiment_id, start_time=start_time_ms, run_name=run_name)
        return run.info.run_id

    def reopen_run(self, run_id: str) -> bool:
        """Mark an existing run RUNNING again (a resumed training continues it); False when it is gone."""
        self.probe()
        try:
            self.client.get_run(run_id)
        except Exception:  # deleted, or from another store: the caller starts a new run
            return False
        self.client.update_run(run_id, status="RUNNING")
        return True

    def start_system_metrics(self, run_id: str) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            import psutil  # noqa: F401  (MLflow needs it; say so clearly instead of a stack trace)
        except ImportError as exc:
            raise ImportError("system metrics need psutil: pip install psutil") from exc
        self._monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=self.config.system_metrics_interval_s,
            tracking_uri=self.config.tracking_uri,
        )
        self._monitor.start()

    def stop_system_metrics(self) -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            monitor.finish()

    def end_run(self, run_id: str, status: str, end_time_ms: int | None = None) -> None:
        self.stop_system_metrics()
        self.client.set_terminated(run_id, status=status, end_time=end_time_ms)

    def apply(self, run_id: str, op: dict[str, Any], files: Path) -> None:
        """Send one journaled operation; file operands are relative to ``files``."""
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "tags":
            tags = [RunTag(k, str(v)) for k, v in op["tags"].items()]
            for chunk in _chunks(tags, _MAX_TAGS):
                self.client.log_batch(run_id, tags=chunk, synchronous=True)
        elif kind == "params":
            params = [Param(k, str(v)) for k, v in op["params"].items()]
            for chunk in _chunks(params, _MAX_PARAMS):
                self.client.log_batch(run_id, params=chunk, synchronous=True)
        elif kind == "metrics":
            metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, step, ts in op["metrics"]]
            for chunk in _chunks(metrics, _MAX_METRICS):
                self.client.log_batch(run_id, metrics=chunk, synchronous=True)
        elif kind == "artifact":
            self.client.log_artifact(run_id, str(files / op["file"]), op.get("artifact_path"))
        elif kind == "artifacts":
            # One call per folder: the store gets one upload request instead of one per image.
            self.client.log_artifacts(run_id, str(files / op["dir"]), op["artifact_path"])
        elif kind == "image":
            from PIL import Image

            with Image.open(files / op["file"]) as image:
                image.load()
                self.client.log_image(
                    run_id, image, key=op["key"], step=op["step"], timestamp=op["timestamp"], synchronous=True
                )
        elif kind == "table":
            data = json.loads((files / op["file"]).read_text(encoding="utf-8"))
            self.client.log_table(run_id, data=data, artifact_file=op["artifact_file"])
        elif kind == "logged_model":
            self._log_model(run_id, op, files)
        elif kind == "dataset":
            self._log_dataset(run_id, op)
        else:
            raise ValueError(f"unknown spooled operation {kind!r}")

    def _log_model(self, run_id: str, op: dict[str, Any], files: Path) -> None:
        """The checkpoint folder as an MLflow 3 logged model of the run (the Models tab), tagged
        on the run as ``checkpoint_model_id``."""
        from mlflow.entities import LoggedModelOutput

        experiment_id = self.client.get_run(run_id).info.experiment_id
        model = self.client.create_logged_model(
            experiment_id, name=op["name"], source_run_id=run_id, tags=op.get("tags"), model_type="medzsad-prompts"
        )
        self.client.log_model_artifacts(model.model_id, str(files / op["dir"]))
        self.client.finalize_logged_model(model.model_id, "READY")
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=op.get("step", 0))])
        self.client.set_tag(run_id, "checkpoint_model_id", model.model_id, synchronous=True)

    def download_model(self, model_id: str, dst_dir: Path) -> Path:
        from mlflow.artifacts import download_artifacts

        dst_dir.mkdir(parents=True, exist_ok=True)
        # The model's own artifact location: a ``models:/<id>`` URI would be resolved against the
        # process-wide tracking URI, not this config's store.
        location = self.client.get_logged_model(model_id).artifact_location
        return Path(download_artifacts(artifact_uri=location, dst_path=str(dst_dir)))

    def _log_dataset(self, run_id: str, op: dict[str, Any]) -> None:
        """An evaluated dataset as an MLflow dataset input (the runs table's Dataset column): its
        name, content digest and counts; the source is the name, never a path."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=op["name"],
            digest=op["digest"],
            source_type="medzsad",
            source=json.dumps({"dataset": op["name"]}),
            profile=json.dumps(op["profile"]),
        )
        context = InputTag("mlflow.data.context", op.get("context", "evaluation"))
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])

    def download_checkpoint(self, run_id: str, dst_dir: Path) -> Path:
        dst_dir.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, "checkpoint", str(dst_dir)))


def now_ms() -> int:
    return int(time.time() * 1000)
