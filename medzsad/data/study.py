"""The one series grouper: what a folder, a DICOMDIR or a list of files holds, as items to score.

``predict`` and ``test`` (:class:`~medzsad.data.datasets.FolderDataset`) both call :func:`scan_inputs`,
so one folder gives the same items, hence the same samples, in both commands:

* each DICOM series is one volume item (files grouped by Series UID, matrix size and orientation, at
  least ``min_series_files`` of them, slice positions regular: checked from headers alone);
* each grey multi-frame DICOM file is one volume item (with or without patient geometry);
* every other image (PNG/JPEG/TIFF, a lone DICOM file, a colour multi-frame file, the files of a
  series whose positions are not a clean volume) is an image item, giving one sample per frame;
* NIfTI/NRRD/MHA files are volume-file items;
* localizers, software secondary captures, SEG/RT/SR/KO/PR objects and unreadable files are listed in
  :attr:`Study.skipped`, each with its reason; series left out by a :class:`SeriesSelection` too.

Item keys are pseudonymous (safe to print); descriptions and paths stay on the items for the user's
local listing only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medzsad.data import dicom
from medzsad.data.errors import DataError
from medzsad.data.formats import VOLUME_SUFFIXES, is_dicom_file, iter_image_files
from medzsad.data.ids import pseudonymous_id

__all__ = [
    "Item",
    "SeriesSelection",
    "Skipped",
    "Study",
    "dicom_groups",
    "dicom_headers",
    "scan_inputs",
    "selection_from_values",
]

VOLUME_KINDS = ("series", "multiframe", "volume_file")


@dataclass(frozen=True)
class Skipped:
    """An object that is not scored, and why (for the user's terminal; the path is local)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Item:
    """One thing to score.

    Attributes:
        kind: ``series`` (DICOM files of one volume), ``multiframe`` (one grey multi-frame DICOM file),
            ``volume_file`` (NIfTI/NRRD/MHA) or ``image`` (a 2-D file; one sample per frame).
        files: the source files (one, except for a series).
        key: pseudonymous key (safe to log).
        modality, number: DICOM Modality and SeriesNumber when known.
        description: SeriesDescription (for selection only; may identify, never log it).
        frames: frames of an ``image`` item (1 for plain images).
    """

    kind: str
    files: tuple[Path, ...] = field(repr=False)
    key: str
    modality: str | None = None
    number: int | None = None
    description: str = field(default="", repr=False)
    frames: int = 1

    @property
    def is_volume(self) -> bool:
        return self.kind in VOLUME_KINDS

    @property
    def source(self) -> Path:
        """The file (or the series' folder) for the user's local index."""
        return self.files[0] if len(self.files) == 1 else self.files[0].parent


@dataclass
class Study:
    """Items to score, in input order, and the objects skipped with their reasons."""

    items: list[Item] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@dataclass(frozen=True)
class SeriesSelection:
    """Which series to score: by SeriesNumber, SeriesDescription (case-insensitive shell pattern, e.g.
    ``"*axial*"``) and/or Modality. Empty criteria select everything; given criteria must all match
    (any of the values of one criterion). Non-DICOM files have no series and are left out as soon as a
    criterion is given."""

    numbers: tuple[int, ...] = ()
    descriptions: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.numbers or self.descriptions or self.modalities)

    def matches(self, item: Item) -> bool:
        if self.numbers and item.number not in self.numbers:
            return False
        if self.modalities and (item.modality or "").upper() not in {m.upper() for m in self.modalities}:
            return False
        text = item.description.lower()
        return not self.descriptions or any(fnmatch.fnmatchcase(text, d.lower()) for d in self.descriptions)


# ------------------------------------------------------------------------------------------- walking


def _candidate_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Files of the inputs in order: a folder is walked (sorted), a DICOMDIR gives its referenced files."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(path, "file or folder not found")
        if path.is_dir():
            walked = set(iter_image_files(path))
            walked |= {p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)}
            files += sorted(p for p in walked if not p.name.startswith("."))
        elif path.name.upper() == "DICOMDIR":
            files += dicom.dicomdir_files(path)
        else:
            files.append(path)
    return list(dict.fromkeys(files))  # a DICOMDIR and its folder name the same files once


def _read_header(path: Path, skipped: list[Skipped]) -> Any | None:
    try:
        ds = dicom.dcmread(path, stop_before_pixels=True)
    except DataError as exc:
        skipped.append(Skipped(path, exc.problem))
        return None
    if dicom.is_dicomdir(ds):
        if not dicom.dicomdir_files(path):  # an index of files that are not here: say so, once
            skipped.append(Skipped(path, "a DICOMDIR (the index of a DICOM disc) whose listed files are not here"))
        return None  # an index, its files are walked on their own
    reason = dicom.skip_reason(ds, path)
    if reason is not None:
        skipped.append(Skipped(path, reason))
        return None
    return ds


def dicom_headers(folder: Path) -> list[tuple[Path, Any]]:
    """Readable DICOM image headers under ``folder`` (DICOMDIR indexes and unreadable files left out)."""
    headers = []
    for path in _candidate_files([folder]):
        if is_dicom_file(path):
            with contextlib.suppress(DataError):
                ds = dicom.dcmread(path, stop_before_pixels=True)
                if not dicom.is_dicomdir(ds) and "Rows" in ds and "Columns" in ds:
                    headers.append((path, ds))
    return headers


def dicom_groups(headers: Sequence[tuple[Path, Any]]) -> dict[tuple[Any, ...], list[tuple[Path, Any]]]:
    """Single-frame DICOM files with plane geometry grouped by :func:`~medzsad.data.dicom.series_group_key`,
    in first-seen order."""
    groups: dict[tuple[Any, ...], list[tuple[Path, Any]]] = {}
    for path, ds in headers:
        groups.setdefault(dicom.series_group_key(ds), []).append((path, ds))
    return groups


def scan_inputs(
    inputs: Iterable[str | Path],
    selection: SeriesSelection | None = None,
    *,
    min_series_files: int = 2,
    salt: str | bytes | None = None,
) -> Study:
    """Group the inputs (files, folders, DICOMDIRs) into items; see the module docstring."""
    study = Study()
    stackable: list[tuple[Path, Any]] = []
    for path in _candidate_files(inputs):
        if path.name.lower().endswith(VOLUME_SUFFIXES):
            study.items.append(Item("volume_file", (path,), pseudonymous_id(str(path.resolve()), salt=salt)))
        elif not is_dicom_file(path):
            study.items.append(Item("image", (path,), pseudonymous_id(str(path.resolve()), salt=salt)))
        else:
            ds = _read_header(path, study.skipped)
            if ds is None:
                continue
            if dicom.n_frames(ds) == 1 and not dicom.is_colour(ds) and dicom.has_plane_geometry(ds):
                stackable.append((path, ds))
            else:
                study.items.append(_file_item(path, ds, salt))
    for members in dicom_groups(stackable).values():
        study.items += _series_items(members, min_series_files, salt)
    if selection is not None and selection.active:
        _apply_selection(study, selection)
    return study


def _facts(ds: Any) -> dict[str, Any]:
    facts = dicom.series_facts(ds)
    return {"modality": facts["modality"] or None, "number": facts["number"], "description": facts["description"]}


def _file_item(path: Path, ds: Any, salt: str | bytes | None) -> Item:
    frames = dicom.n_frames(ds)
    identity = str(ds.get("SOPInstanceUID", "") or "") or str(path.resolve())
    kind = "multiframe" if frames > 1 and not dicom.is_colour(ds) else "image"
    return Item(kind, (path,), pseudonymous_id(identity, salt=salt), frames=frames, **_facts(ds))


def _series_items(members: list[tuple[Path, Any]], min_files: int, salt: str | bytes | None) -> list[Item]:
    first = members[0][1]
    identity = "|".join(str(v) for v in dicom.series_group_key(first))
    files = tuple(p for p, _ in members)
    if len(members) >= min_files:
        problem = _position_problem(members)
        if problem is None:
            return [Item("series", files, pseudonymous_id(identity, salt=salt), **_facts(first))]
        warnings.warn(f"a DICOM series of {len(members)} files is read as 2-D images: {problem}", stacklevel=3)
    return [_file_item(p, ds, salt) for p, ds in members]


def _position_problem(members: list[tuple[Path, Any]]) -> str | None:
    """Why the files' slice positions do not make one clean volume (from headers alone), or None."""
    orientation = np.asarray(members[0][1].ImageOrientationPatient, float)
    positions = np.asarray([ds.ImagePositionPatient for _, ds in members], float)
    try:
        dicom.slice_order(members[0][0].parent, orientation, positions)
    except DataError as exc:
        return exc.problem
    return None


def _apply_selection(study: Study, selection: SeriesSelection) -> None:
    kept = []
    for item in study.items:
        if selection.matches(item):
            kept.append(item)
        else:
            study.skipped.append(Skipped(item.source, "not selected (data.series / data.modality)"))
    study.items = kept


def selection_from_values(series: Any = None, modality: Any = None) -> SeriesSelection:
    """A selection from config values (``data.series``, ``data.modality``): one value or a list each;
    integers (or digit strings) are SeriesNumbers, other strings SeriesDescription patterns.

    Raises:
        ValueError: naming the key, for values of another type.
    """
    numbers, descriptions = [], []
    for value in _as_list(series):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"data.series: expected series numbers or description patterns, got {value!r}")
        if isinstance(value, int) or value.strip().isdigit():
            numbers.append(int(value))
        else:
            descriptions.append(value)
    modalities = []
    for value in _as_list(modality):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"data.modality: expected DICOM modality codes such as CT or MR, got {value!r}")
        modalities.append(value.strip().upper())
    return SeriesSelection(tuple(numbers), tuple(descriptions), tuple(modalities))


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]
