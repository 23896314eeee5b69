"""Checks that run before any work: value ranges, output locations, the device, results already there.

A job that fails after hours of scoring because its output folder is a file, is read-only, or holds
another run's results loses that work; these checks turn each of those into one line naming the key
before the first image is read. Importing this module does not import torch (config errors answer fast).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medzsad.engine.config import ConfigError, RunConfig

__all__ = [
    "RESULT_NAMES",
    "check_device",
    "check_output_dir",
    "check_ranges",
    "claim_output_dir",
]

#: What ``predict`` and ``test`` write into their output folder (globs). A folder holding any of these
#: holds results: a new run refuses it, or with ``eval.overwrite=true`` removes exactly these first.
RESULT_NAMES = (
    "scores.csv",
    "scores_*.csv",
    "skipped*.csv",
    "sample_index.local.csv",
    "metrics.csv",
    "metrics.json",
    "table.md",
    "maps",
    "overlays",
    "volumes",
    ".scores.partial*.csv",
)


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def check_ranges(config: RunConfig) -> None:
    """Numeric ranges and list lengths the type check cannot see (``eval.batch_size=0``, a one-value window)."""
    _require(config.eval.batch_size >= 1, "eval.batch_size", "a number of images >= 1", config.eval.batch_size)
    _require(config.train.batch_size >= 1, "train.batch_size", "a number of images >= 1", config.train.batch_size)
    _require(config.train.epochs >= 1, "train.epochs", "a number of epochs >= 1", config.train.epochs)
    _require(config.train.lr > 0, "train.lr", "a learning rate > 0", config.train.lr)
    steps = config.train.max_steps_per_epoch
    _require(steps is None or steps >= 1, "train.max_steps_per_epoch", "a number >= 1 or null", steps)
    window = config.data.ct_window
    if isinstance(window, list):  # None (preset by body part) and preset names are checked by the data layer
        _require(len(window) == 2, "data.ct_window", "two values [level, width] in HU, e.g. [40, 80]", window)
        _require(window[1] > 0, "data.ct_window", "a width > 0 as second value", window)
    low_high = config.data.mri_percentiles
    _require(len(low_high) == 2, "data.mri_percentiles", "two values [low, high], e.g. [0.5, 99.5]", low_high)
    _require(0 <= low_high[0] < low_high[1] <= 100, "data.mri_percentiles", "0 <= low < high <= 100", low_high)
    _require(
        0 <= config.eval.dice_threshold <= 1, "eval.dice_threshold", "a value in [0, 1]", config.eval.dice_threshold
    )
    _require(config.data.split in ("test", "train"), "data.split", "test or train", config.data.split)
    _require(config.eval.on_error in ("skip", "stop"), "eval.on_error", "skip or stop", config.eval.on_error)
    panel = config.tracking.review_panel_size
    _require(panel >= 0, "tracking.review_panel_size", "a number >= 0", panel)


def check_device(name: str) -> None:
    """Refuse a device this machine does not have (``cuda:3`` with one GPU or none) before any work."""
    if name == "auto":
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device: {name!r} is not a device (use auto, cpu, cuda or cuda:<index>)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device: {name} requested but no CUDA GPU is visible; use device=cpu or device=auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device: {name} requested but this machine has {count} GPU(s) (cuda:0..{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device: mps requested but it is not available here; use device=cpu or device=auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device: {name!r} is not supported (use auto, cpu, cuda or cuda:<index>)")


def check_output_dir(path: str | Path, key: str) -> Path:
    """The folder ``path`` exists or can be created, and a file can be written in it; else one line naming ``key``.

    Writing is tried for real (a temporary file) because permission bits do not tell the whole story:
    a read-only mount refuses root too, and root ignores the bits.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{key}: {folder} is a file, not a folder; give a folder for the outputs")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: cannot create {folder}: {existing} is a file")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".medzsad-write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot write in {existing} ({exc.strerror or exc}); choose another folder") from None
    return folder


def existing_results(folder: Path) -> list[Path]:
    """The result files and folders of an earlier run in ``folder`` (see :data:`RESULT_NAMES`)."""
    if not folder.is_dir():
        return []
    return sorted({p for pattern in RESULT_NAMES for p in folder.glob(pattern)})


def claim_output_dir(path: str | Path, key: str, overwrite: bool, *, flag: str = "eval.overwrite=true") -> Path:
    """Check ``path`` (:func:`check_output_dir`) and make sure no earlier results can mix with new ones.

    A folder with results is refused, naming ``flag``; with ``overwrite`` exactly those results are
    removed first (never other files), so the folder then holds this run's results only.
    """
    folder = check_output_dir(path, key)
    found = existing_results(folder)
    if found and not overwrite:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise ConfigError(
            f"{key}: {folder} already holds results ({names}); choose a new folder, or add {flag} to replace them"
        )
    for item in found:
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            with contextlib.suppress(FileNotFoundError):
                item.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_names(names: Iterable[tuple[str, str]], forbidden: Iterable[str]) -> None:
    """Dataset names (``(key, name)`` pairs) against the identifying values of the data, before any work."""
    from medzsad.tracking.phi import PHIError, forbidden_values, phi_guard

    denied = forbidden_values(forbidden)
    for key, name in names:
        try:
            phi_guard(name, f"{key} (dataset name)", denied)
        except PHIError as exc:
            raise ConfigError(str(exc)) from None
