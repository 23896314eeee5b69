"""A run's local folder: every operation is journaled there, and files are staged there.

Each run writes ``meta.json`` (experiment, run name, status), ``journal.jsonl`` (one JSON line per
operation: tags, params, metrics, artifacts, images, tables) and ``files/`` (what the artifacts
are uploaded from). When MLflow is reachable the folder is removed once the run ends; when it is
not, the folder stays and :func:`upload_spool` replays it into a new run later.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medzsad.utils.files import atomic_write_text

__all__ = ["SPOOL_FORMAT", "Spool"]

SPOOL_FORMAT = 1
_META = "meta.json"
_JOURNAL = "journal.jsonl"
_UPLOADED = "uploaded.json"


class Spool:
    """The local folder of one run (see the module docstring for its layout)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files = self.root / "files"

    @classmethod
    def create(cls, spool_dir: Path, meta: dict[str, Any]) -> Spool:
        """A new, empty run folder under ``spool_dir``; its name holds no run data."""
        name = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        spool = cls(Path(spool_dir) / name)
        spool.files.mkdir(parents=True)
        spool.write_meta({"format": SPOOL_FORMAT, **meta})
        return spool

    # meta.json -------------------------------------------------------------------------------
    def read_meta(self) -> dict[str, Any]:
        return json.loads((self.root / _META).read_text(encoding="utf-8"))

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_text(self.root / _META, json.dumps(meta, indent=2))  # a crash never leaves half a meta.json

    def update_meta(self, **changes: Any) -> None:
        self.write_meta({**self.read_meta(), **changes})

    # journal.jsonl ---------------------------------------------------------------------------
    def record(self, op: dict[str, Any]) -> None:
        """Append one operation; appending keeps a crash from losing what came before."""
        with open(self.root / _JOURNAL, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(op) + "\n")

    def ops(self) -> Iterator[dict[str, Any]]:
        path = self.root / _JOURNAL
        if not path.exists():
            return
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)

    # files/ ----------------------------------------------------------------------------------
    def stage(self, relative: str) -> Path:
        """A path under ``files/`` for a file to be written, with its folders created."""
        path = self.files / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # state -----------------------------------------------------------------------------------
    @property
    def uploaded(self) -> bool:
        return (self.root / _UPLOADED).exists()

    def mark_uploaded(self, run_id: str) -> None:
        (self.root / _UPLOADED).write_text(json.dumps({"run_id": run_id}), encoding="utf-8")

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def find_spools(spool_dir: Path) -> list[Spool]:
    """Run folders not yet uploaded: ``spool_dir`` itself if it is one, else its sub-folders."""
    spool_dir = Path(spool_dir)
    if (spool_dir / _META).exists():
        candidates = [spool_dir]
    elif spool_dir.is_dir():
        candidates = sorted(p for p in spool_dir.iterdir() if (p / _META).exists())
    else:
        raise FileNotFoundError(f"no spool folder at {spool_dir}")
    return [Spool(p) for p in candidates if not Spool(p).uploaded]
