"""The official ``meta.json`` manifest (AnomalyCLIP / FAPrompt / CoPS / AdaCLIP / VAND), read and written.

Schema (methods-spec section 6.1)::

    {"train": {cls_name: [record, ...]}, "test": {cls_name: [record, ...]}}
    record = {"img_path": str, "mask_path": str, "cls_name": str, "specie_name": str, "anomaly": 0 | 1}

Paths are relative to the dataset root, the folder holding ``meta.json`` (absolute paths, which some
official generators write, are accepted too). ``mask_path`` is ``""`` for normal images and for
classification-only data. medzsad adds optional keys the official loaders ignore: ``slice_index`` and
``slice_axis`` (a slice of a volume file or DICOM series folder) and ``frame_index`` (a frame of a
multi-frame DICOM). Unknown keys are kept, so an existing manifest round-trips unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medzsad.data.errors import DataError
from medzsad.utils.files import atomic_write_text

__all__ = [
    "SPLITS",
    "Manifest",
    "Record",
    "mask_stem",
    "pair_masks_by_name",
    "read_manifest",
    "write_manifest",
]

SPLITS = ("train", "test")
_REQUIRED = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
_OPTIONAL_INT = ("slice_index", "frame_index")


@dataclass
class Record:
    """One manifest entry (see the module docstring)."""

    img_path: str
    mask_path: str
    cls_name: str
    specie_name: str
    anomaly: int
    slice_index: int | None = None
    slice_axis: str | None = None
    frame_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as written to ``meta.json`` (official key order first, medzsad keys only if set)."""
        out: dict[str, Any] = {
            "img_path": self.img_path,
            "mask_path": self.mask_path,
            "cls_name": self.cls_name,
            "specie_name": self.specie_name,
            "anomaly": int(self.anomaly),
        }
        for key in ("slice_index", "slice_axis", "frame_index"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, item: dict[str, Any], where: str = "") -> Record:
        if not isinstance(item, dict):
            raise ValueError(f"{where}: a record must be an object, got {type(item).__name__}")
        missing = [k for k in ("img_path", "cls_name", "anomaly") if k not in item]
        if missing:
            raise ValueError(f"{where}: record lacks {', '.join(missing)}")
        anomaly = item["anomaly"]
        if anomaly not in (0, 1, True, False):
            raise ValueError(f"{where}: anomaly must be 0 or 1, got {anomaly!r}")
        known = {*_REQUIRED, "slice_index", "slice_axis", "frame_index"}
        return cls(
            img_path=str(item["img_path"]),
            mask_path=str(item.get("mask_path", "") or ""),
            cls_name=str(item["cls_name"]),
            specie_name=str(item.get("specie_name", "") or ""),
            anomaly=int(anomaly),
            slice_index=None if item.get("slice_index") is None else int(item["slice_index"]),
            slice_axis=item.get("slice_axis"),
            frame_index=None if item.get("frame_index") is None else int(item["frame_index"]),
            extra={k: v for k, v in item.items() if k not in known},
        )


@dataclass
class Manifest:
    """``{split: {cls_name: [Record]}}`` plus the dataset root that relative paths refer to."""

    splits: dict[str, dict[str, list[Record]]] = field(default_factory=lambda: {s: {} for s in SPLITS})
    root: Path | None = None

    def add(self, split: str, record: Record) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.splits.setdefault(split, {}).setdefault(record.cls_name, []).append(record)

    def records(self, split: str = "test", categories: Iterable[str] | None = None) -> Iterator[Record]:
        """Records of ``split`` in file order, optionally only the given categories."""
        wanted = None if categories is None else set(categories)
        for cls_name, records in self.splits.get(split, {}).items():
            if wanted is None or cls_name in wanted:
                yield from records

    def categories(self, split: str = "test") -> list[str]:
        return list(self.splits.get(split, {}))

    def counts(self, split: str = "test") -> dict[str, dict[str, int]]:
        """Per category: number of normal and anomalous records and of records with a mask."""
        out = {}
        for cls_name, records in self.splits.get(split, {}).items():
            out[cls_name] = {
                "normal": sum(r.anomaly == 0 for r in records),
                "anomalous": sum(r.anomaly == 1 for r in records),
                "with_mask": sum(bool(r.mask_path) for r in records),
            }
        return out

    def resolve(self, relative: str) -> Path:
        """Absolute path of a manifest path (relative to :attr:`root`)."""
        path = Path(relative)
        if path.is_absolute() or self.root is None:
            return path
        return self.root / path

    def to_json(self) -> dict[str, Any]:
        return {
            split: {cls: [r.to_json() for r in recs] for cls, recs in classes.items()}
            for split, classes in self.splits.items()
        }


def read_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    """Read a ``meta.json``; ``root`` defaults to the folder that holds it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "manifest not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(path, f"not a valid JSON manifest ({exc})") from None
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise DataError(path, "manifest must be an object with 'train' and/or 'test' keys")
    manifest = Manifest(splits={}, root=Path(root) if root is not None else path.parent)
    for split, classes in data.items():
        if split not in SPLITS:
            continue
        if not isinstance(classes, dict):
            raise DataError(path, f"'{split}' must map class names to lists of records")
        manifest.splits[split] = {}
        for cls_name, items in classes.items():
            try:
                records = [Record.from_json(it, f"{split}/{cls_name}[{i}]") for i, it in enumerate(items)]
            except (ValueError, TypeError) as exc:
                raise DataError(path, str(exc)) from None
            manifest.splits[split][cls_name] = records
    for split in SPLITS:
        manifest.splits.setdefault(split, {})
    return manifest


def write_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write ``meta.json`` atomically, formatted as the official generators do (indent 4)."""
    path = Path(path)
    return atomic_write_text(path, json.dumps(manifest.to_json(), indent=4) + "\n")


# ------------------------------------------------------------------------------------ mask pairing

# Suffixes that mask files add to their image's name, across the benchmark datasets
# (MVTec "_mask", ISIC "_Segmentation", others "_gt", "-mask", "_label").
_MASK_SUFFIX = re.compile(r"([_\-. ](mask|masks|segmentation|seg|gt|label|labels|anno|annotation))+$", re.I)


def _stem(name: str) -> str:
    lower = name
    for ext in (".nii.gz",):
        if lower.lower().endswith(ext):
            return lower[: -len(ext)]
    return Path(lower).stem


def mask_stem(name: str) -> str:
    """Key that pairs a mask with its image: the file stem without mask suffixes, case-folded."""
    return _MASK_SUFFIX.sub("", _stem(name)).casefold()


def pair_masks_by_name(
    images: Sequence[Path], masks: Sequence[Path], *, where: str | Path | None = None, strict: bool = True
) -> dict[Path, Path | None]:
    """Pair each image with the mask of the same name (``000.png`` <-> ``000_mask.png``).

    Args:
        images, masks: files to pair.
        where: folder named in errors.
        strict: raise :class:`DataError` when an image has no mask; otherwise map it to ``None``.
    Raises:
        DataError: two masks claim one image, or (``strict``) an image has no mask.
    """
    by_key: dict[str, Path] = {}
    for mask in masks:
        key = mask_stem(mask.name)
        if key in by_key:
            raise DataError(where, f"masks {by_key[key].name} and {mask.name} both match image name {key!r}")
        by_key[key] = mask
    pairs: dict[Path, Path | None] = {}
    missing = []
    for image in images:
        key = _stem(image.name).casefold()
        mask = by_key.get(key) or by_key.get(mask_stem(image.name))
        if mask is None:
            missing.append(image.name)
        pairs[image] = mask
    if strict and missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(where, f"no mask with a matching name for {len(missing)} image(s): {shown}")
    return pairs
