"""MLflow tracking and review of anomaly maps and masks, with a PHI guard and an offline spool.

Fed by the engine with plain data (numbers, arrays, pseudonymous ids); decides nothing about what
a method computes. See docs/tracking.md.
"""

from medzsad.tracking.config import Purpose, TrackingConfig, sqlite_uri
from medzsad.tracking.params import DEFAULT_PARAM_ALLOW, config_hash, select_params
from medzsad.tracking.phi import PHIError, find_phi, forbidden_values, phi_guard
from medzsad.tracking.render import Curve, MapScale
from medzsad.tracking.review import ReviewSample, ReviewSummary
from medzsad.tracking.run import (
    CheckpointFiles,
    TrackedRun,
    load_checkpoint_from_run,
    tracked_run,
    upload_spool,
)
from medzsad.tracking.ui import UIServer, serve_ui

__all__ = [
    "DEFAULT_PARAM_ALLOW",
    "CheckpointFiles",
    "Curve",
    "MapScale",
    "PHIError",
    "Purpose",
    "ReviewSample",
    "ReviewSummary",
    "TrackedRun",
    "TrackingConfig",
    "UIServer",
    "config_hash",
    "find_phi",
    "forbidden_values",
    "load_checkpoint_from_run",
    "phi_guard",
    "select_params",
    "serve_ui",
    "sqlite_uri",
    "tracked_run",
    "upload_spool",
]
