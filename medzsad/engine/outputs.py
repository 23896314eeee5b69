"""Announcing what a command wrote: folders and files that exist now, MLflow runs, the next command.

A user should never have to discover ``./mlflow.db`` or ``./mlartifacts/`` by listing the folder. The
jobs print one line per MLflow run as it closes; the commands end with the folders they created or
changed and the ``medzsad ui --store ...`` line that opens the store. Plain strings only: this module
knows neither MLflow nor torch.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from pathlib import Path

__all__ = ["changed_since", "mlflow_run_line", "store_lines", "ui_command"]


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of an ``sqlite:///...`` URI, else ``None``."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix) :]) if tracking_uri.startswith(prefix) else None


def ui_command(tracking_uri: str) -> str:
    """The command that opens the store in a browser: ``medzsad ui --store DIR`` for a ``DIR/mlflow.db``
    store, the server's address for an HTTP one, else MLflow's own ``mlflow ui``."""
    db = sqlite_path(tracking_uri)
    if db is not None and db.name == "mlflow.db":
        return f"medzsad ui --store {shlex.quote(str(db.parent))}"
    if tracking_uri.lower().startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"


def mlflow_run_line(what: str, run_id: str | None, offline: bool, spool: Path | None) -> str:
    """One line per closed run: its id, or where its results wait for ``medzsad tracking upload``."""
    if offline or run_id is None:
        return f"MLflow: {what} kept offline in {spool}; upload with `medzsad tracking upload {spool}`"
    return f"MLflow: {what} logged as run {run_id}"


def store_lines(tracking_uri: str, artifact_location: str | Path | None) -> list[str]:
    """Where the MLflow store is and how to open it (the last lines of ``test``/``train``/``table``)."""
    db = sqlite_path(tracking_uri)
    where = f"{db}" if db is not None else tracking_uri
    lines = [f"  MLflow store: {where}" + (f" (artifacts {artifact_location})" if db is not None else "")]
    lines.append(f"next: {ui_command(tracking_uri)}")
    return lines


def changed_since(folder: Path, start: float, names: Iterable[str] | None = None) -> list[str]:
    """Entries of ``folder`` created or modified since ``start`` (a ``time.time()``), as ``name`` or
    ``name/`` for folders, sorted; only ``names`` when given. Empty when ``folder`` does not exist.

    A folder counts when anything inside it changed, so re-running into an old output folder names only
    what this run wrote."""
    if not folder.is_dir():
        return []
    wanted = set(names) if names is not None else None
    found = []
    for entry in sorted(folder.iterdir()):
        if wanted is not None and entry.name not in wanted:
            continue
        if _changed(entry, start - 1.0):  # 1 s: coarse file-system timestamps
            found.append(entry.name + ("/" if entry.is_dir() else ""))
    return found


def _changed(path: Path, since: float) -> bool:
    """Whether ``path`` or anything under it was modified at or after ``since`` (stops at the first)."""
    if path.stat().st_mtime >= since:
        return True
    if not path.is_dir():
        return False
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                if os.stat(os.path.join(root, name)).st_mtime >= since:
                    return True
            except OSError:
                continue
    return False
