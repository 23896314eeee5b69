"""Where and how runs are tracked: the tracking URI, artifact folder, experiments and spool."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from medzsad.tracking.params import DEFAULT_PARAM_ALLOW


class Purpose(str, Enum):
    """Why a run exists; each purpose is its own MLflow experiment."""

    AUX_TRAIN = "aux-train"
    FINETUNE = "finetune"
    ZERO_SHOT_EVAL = "zero-shot-eval"
    CALIBRATION = "calibration"

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment that holds runs of this purpose."""
        return f"medzsad/{self.value}"


def _default_tracking_uri() -> str:
    # MLflow users expect MLFLOW_TRACKING_URI to win; otherwise an SQLite store in the working
    # directory (never the ./mlruns file store, which raises since MLflow 3.13).
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri:
        return env_uri
    return sqlite_uri(Path.cwd() / "mlflow.db")


def sqlite_uri(db_path: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URI of an SQLite file, absolute so it does not depend on the cwd."""
    return f"sqlite:///{Path(db_path).resolve()}"


@dataclass
class TrackingConfig:
    """Settings of the MLflow tracking that the engine and CLI hand to :func:`tracked_run`.

    Attributes:
        tracking_uri: any MLflow tracking URI; default ``sqlite:///<cwd>/mlflow.db`` (or
            ``$MLFLOW_TRACKING_URI`` when set). File-store URIs are rejected.
        artifact_location: local folder for artifacts of experiments created in a database store;
            ignored for an HTTP tracking server, which decides where artifacts go.
        system_metrics: sample CPU, memory, disk and GPU use during the run (needs ``psutil``,
            and ``nvidia-ml-py`` for GPUs).
        system_metrics_interval_s: seconds between system metric samples.
        deidentified: the user asserts the input data is de-identified, including pixels; only then
            are overlays of samples flagged as carrying burned-in text logged.
        spool_dir: where a run writes its results when MLflow cannot be reached, and where every run
            stages its files before uploading them.
        param_allow: glob patterns of flattened config keys that may become MLflow params.
        probe_timeout_s: seconds to wait for an HTTP tracking server to accept a connection before
            the run goes straight to the spool.
        telemetry: leave MLflow's usage telemetry on. Off by default: clinical networks rarely
            allow outbound calls; an explicit ``MLFLOW_DISABLE_TELEMETRY`` in the environment wins.
        enabled: the engine's jobs log runs at all (``tracking.enabled=false`` turns MLflow off).
        review_panel_size: examples per dataset in the stepped image-card panel.
        review_limit: most samples per dataset whose downscaled copies the evaluation keeps for
            review, the first in dataset order; the worst errors of the whole dataset are kept besides
            (the review page embeds at most ``page_limit`` of them, worst errors first).
        page_limit: most slices embedded in one review page (bounds its size: up to ~85 kB each).

    It is the ``tracking`` section of :class:`~medzsad.engine.config.RunConfig`, so every field
    can be set from YAML or as ``tracking.<field>=...``.
    """

    tracking_uri: str = field(default_factory=_default_tracking_uri)
    artifact_location: Path = field(default_factory=lambda: Path.cwd() / "mlartifacts")
    system_metrics: bool = False
    system_metrics_interval_s: float = 10.0
    deidentified: bool = False
    spool_dir: Path = field(default_factory=lambda: Path.cwd() / "mlflow-spool")
    param_allow: tuple[str, ...] = DEFAULT_PARAM_ALLOW
    probe_timeout_s: float = 3.0
    telemetry: bool = False
    enabled: bool = True
    review_panel_size: int = 8
    review_limit: int = 512
    page_limit: int = 200

    def __post_init__(self) -> None:
        if self.tracking_uri is None:  # YAML ``tracking_uri: null``: the default store
            self.tracking_uri = _default_tracking_uri()
        self.artifact_location = Path(self.artifact_location).resolve()
        self.spool_dir = Path(self.spool_dir).resolve()
        self.param_allow = tuple(self.param_allow)  # YAML gives a list
        for name in ("review_panel_size", "review_limit", "page_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"tracking.{name} must be >= 0, got {getattr(self, name)}")
        scheme = self.tracking_uri.split(":", 1)[0].lower() if ":" in self.tracking_uri else ""
        if scheme in ("", "file") or len(scheme) == 1:  # a bare path, file:, or a Windows drive
            raise ValueError(
                f"tracking_uri {self.tracking_uri!r} is a file store, which MLflow 3.13+ refuses; "
                "use sqlite:///path/to/mlflow.db or an http(s):// tracking server"
            )

    def apply_telemetry_choice(self) -> None:
        """Turn MLflow's usage telemetry off in this process unless the user chose otherwise."""
        if not self.telemetry:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    @property
    def is_http(self) -> bool:
        """True when the URI names a tracking server rather than a database."""
        return self.tracking_uri.lower().startswith(("http://", "https://"))

    @property
    def is_database(self) -> bool:
        """True when the URI is an SQLAlchemy database (sqlite, postgresql, mysql, mssql)."""
        scheme = self.tracking_uri.split(":", 1)[0].split("+", 1)[0].lower()
        return scheme in ("sqlite", "postgresql", "mysql", "mssql")

    def experiment_artifact_location(self, purpose: Purpose) -> str | None:
        """Artifact root for a new experiment: a local folder for database stores, else the server's."""
        if not self.is_database:
            return None
        return (self.artifact_location / purpose.value).as_uri()

    @classmethod
    def for_store_dir(cls, store_dir: str | os.PathLike[str], **kwargs: object) -> TrackingConfig:
        """A config whose database, artifacts and spool all live in one folder."""
        root = Path(store_dir).resolve()
        return cls(
            tracking_uri=sqlite_uri(root / "mlflow.db"),
            artifact_location=root / "mlartifacts",
            spool_dir=root / "mlflow-spool",
            **kwargs,  # type: ignore[arg-type]
        )
