"""MLflow tracking and review of anomaly maps and masks, with a PHI guard and an offline spool.

Fed by the engine with plain data (numbers, arrays, pseudonymous ids); decides nothing about what
a method computes. See docs/tracking.md.
"""

from medzsad.utils.lazy import lazy_exports

# Imported on first use: `engine.config` reads the settings dataclass (`tracking.config`) without
# loading MLflow, torch or the renderers.
_EXPORTS = {
    "Purpose": "config",
    "TrackingConfig": "config",
    "sqlite_uri": "config",
    "DEFAULT_PARAM_ALLOW": "params",
    "config_hash": "params",
    "select_params": "params",
    "PHIError": "phi",
    "clear_forbidden": "phi",
    "find_phi": "phi",
    "phi_guard": "phi",
    "register_forbidden": "phi",
    "ReviewSummary": "review",
    "CheckpointFiles": "run",
    "TrackedRun": "run",
    "load_checkpoint_from_model": "run",
    "load_checkpoint_from_run": "run",
    "tracked_run": "run",
    "upload_spool": "run",
    "UIServer": "ui",
    "serve_ui": "ui",
    # re-exported: the types log_review/log_curves take
    "Curve": "run",
    "MapScale": "run",
    "ReviewSample": "review",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
