"""MLflow tracking and review of anomaly maps and masks, with a PHI guard and an offline spool.

Fed by the engine with plain data (numbers, arrays, pseudonymous ids); decides nothing about what
a method computes. See docs/tracking.md.
"""

from medzsad.tracking.config import Purpose, TrackingConfig, sqlite_uri
from medzsad.tracking.params import DEFAULT_PARAM_ALLOW, config_hash, select_params
from medzsad.tracking.phi import PHIError, clear_forbidden, find_phi, phi_guard, register_forbidden
from medzsad.tracking.review import ReviewSummary
from medzsad.tracking.run import (
    CheckpointFiles,
    TrackedRun,
    load_checkpoint_from_model,
    load_checkpoint_from_run,
    tracked_run,
    upload_spool,
)
from medzsad.tracking.ui import UIServer, serve_ui
from medzsad.viz import Curve, MapScale, ReviewSample  # re-exported: the types log_review/log_curves take

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
    "clear_forbidden",
    "config_hash",
    "find_phi",
    "load_checkpoint_from_model",
    "load_checkpoint_from_run",
    "phi_guard",
    "register_forbidden",
    "select_params",
    "serve_ui",
    "sqlite_uri",
    "tracked_run",
    "upload_spool",
]
