"""MLflow tracking and review of anomaly maps and masks, with a PHI guard and an offline spool.

Fed by the engine with plain data (numbers, arrays, pseudonymous ids); decides nothing about what
a method computes. See docs/tracking.md.
"""

from medzsad.utils.lazy import lazy_exports

# Imported on first use: `engine.config` reads the settings dataclass (`tracking.config`) without
# loading MLflow, torch or the renderers (`medzsad prepare list` and config errors stay fast).
_EXPORTS = {
    "DEFAULT_PARAM_ALLOW": "params",
    "CheckpointFiles": "run",
    "Curve": "run",
    "MapScale": "run",
    "PHIError": "phi",
    "Purpose": "config",
    "ReviewSample": "review",
    "ReviewSummary": "review",
    "TrackedRun": "run",
    "TrackingConfig": "config",
    "UIServer": "ui",
    "config_hash": "params",
    "find_phi": "phi",
    "forbidden_values": "phi",
    "load_checkpoint_from_model": "run",
    "load_checkpoint_from_run": "run",
    "phi_guard": "phi",
    "select_params": "params",
    "serve_ui": "ui",
    "sqlite_uri": "config",
    "tracked_run": "run",
    "upload_spool": "run",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
