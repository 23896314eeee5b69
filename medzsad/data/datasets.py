"""Torch datasets yielding :class:`~medzsad.data.records.Sample`: over a ``meta.json`` manifest, and over
a folder of images and scans (PNG/JPEG/TIFF, DICOM files and series, NIfTI/NRRD volumes).

Unreadable files raise :class:`~medzsad.data.errors.DataError` naming the file and the problem in one
line. Sample ids are pseudonymous (:func:`~medzsad.data.ids.pseudonymous_id`): a DICOM image is
identified by its SOP Instance UID, other files by their path as written in the manifest (relative to
the dataset root, so moving a dataset keeps its ids).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medzsad.data.cache import file_stamp
from medzsad.data.errors import DataError, first_line
from medzsad.data.ids import clean_meta, pseudonymous_id
from medzsad.data.manifest import Manifest, Record, read_manifest
from medzsad.data.readers import read_image, read_mask
from medzsad.data.records import LABEL_ABNORMAL, LABEL_NORMAL, LABEL_UNKNOWN, Sample
from medzsad.data.samples import SampleBuilder, slice_identity
from medzsad.data.study import Item, SeriesSelection, Skipped, Study, scan_inputs
from medzsad.data.transforms import ClipImageTransform, Intensity, map_to_original
from medzsad.data.volumes import (
    AXES,
    Volume,
    axis_index,
    check_same_grid,
    read_dicom_files,
    read_volume,
    reassemble,
    volume_header,
)

__all__ = ["FolderDataset", "ManifestDataset"]


def _wrap_errors(path: Path, action: Callable[[], Any]) -> Any:
    """Run ``action``; turn any failure into a one-line :class:`DataError` naming ``path``."""
    try:
        return action()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"cannot read ({type(exc).__name__}: {first_line(exc)})") from None


class _VolumeCache:
    """A few recently used volumes per worker: consecutive slices of one scan are read once."""

    def __init__(self, size: int = 2) -> None:
        self.size = max(1, size)
        self._items: OrderedDict[tuple[str, bool], Volume] = OrderedDict()

    def get(self, path: Path, *, image: bool, loader: Callable[[], Volume] | None = None) -> Volume:
        key = (str(path), image)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        volume = _wrap_errors(path, loader or (lambda: read_volume(path, image=image)))
        self._items[key] = volume
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return volume


def _builder(
    transform: ClipImageTransform | None,
    image_size: int,
    pad_to_square: bool,
    intensity: Intensity | None,
    salt: str | bytes | None,
    user_transforms: Sequence[Any],
) -> SampleBuilder:
    transform = transform or ClipImageTransform(image_size, pad_to_square=pad_to_square, intensity=intensity)
    return SampleBuilder(transform, user_transforms, salt)


class _Ranges:
    """Intensity range fitted once per volume, so all its slices share one scale."""

    def __init__(self, builder: SampleBuilder) -> None:
        self.builder = builder
        self._ranges: dict[str, tuple[float, float] | None] = {}

    def get(self, key: str, volume: Volume) -> tuple[float, float] | None:
        if key not in self._ranges:
            body_part = volume.meta.get("body_part")
            self._ranges[key] = self.builder.volume_range(volume.array, volume.modality, body_part)
        return self._ranges[key]


class ManifestDataset(Dataset):
    """Samples of one split of a ``meta.json`` manifest, in manifest order.

    Args:
        manifest: path to ``meta.json`` or a :class:`Manifest`.
        split: ``"test"`` (what every official loader reads, also for training) or ``"train"``.
        root: dataset root for relative paths (default: the manifest's folder).
        categories: keep only these ``cls_name`` values.
        transform: image transform (default: official, built from ``image_size``/``pad_to_square``/
            ``intensity``).
        salt: HMAC key for sample ids (default from the environment, see :mod:`medzsad.data.ids`).

    Masks: a category with at least one ``mask_path`` has pixel ground truth; its normal images get an
    all-false mask and anomalous images without a mask get ``None``. Categories without any mask path
    (BrainMRI, HeadCT, Br35H) give ``mask=None`` throughout.
    """

    def __init__(
        self,
        manifest: str | Path | Manifest,
        *,
        split: str = "test",
        root: str | Path | None = None,
        categories: Iterable[str] | None = None,
        transform: ClipImageTransform | None = None,
        image_size: int = 518,
        pad_to_square: bool = False,
        intensity: Intensity | None = None,
        salt: str | bytes | None = None,
        user_transforms: Sequence[Any] = (),
    ) -> None:
        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest, root)
        elif root is not None:
            manifest.root = Path(root)
        self.manifest = manifest
        self.split = split
        self.records: list[Record] = list(manifest.records(split, categories))
        self._with_masks = {r.cls_name for r in self.records if r.mask_path}
        self.builder = _builder(transform, image_size, pad_to_square, intensity, salt, user_transforms)
        self._ranges = _Ranges(self.builder)
        self._volumes = _VolumeCache()

    @property
    def transform(self) -> ClipImageTransform:
        return self.builder.transform

    def __len__(self) -> int:
        return len(self.records)

    def categories(self) -> list[str]:
        return list(dict.fromkeys(r.cls_name for r in self.records))

    def has_masks(self, category: str) -> bool:
        """Whether ``category`` has pixel ground truth in this split."""
        return category in self._with_masks

    def source_files(self) -> list[Path]:
        """Every image and mask file of the split (for :func:`~medzsad.data.dicom.dataset_identifiers`)."""
        rels = dict.fromkeys(rel for r in self.records for rel in (r.img_path, r.mask_path) if rel)
        return [self.manifest.resolve(rel) for rel in rels]

    def missing_files(self) -> list[str]:
        """Manifest paths (images and masks) that do not exist; empty when all are present."""
        missing = []
        for record in self.records:
            for rel in (record.img_path, record.mask_path):
                if rel and not self.manifest.resolve(rel).exists():
                    missing.append(rel)
        return missing

    def cache_parts(self, index: int) -> list[Any]:
        """What sample ``index`` is built from, for :mod:`medzsad.data.cache` (record, files; no pixels)."""
        record = self.records[index]
        files = [file_stamp(self.manifest.resolve(rel)) for rel in (record.img_path, record.mask_path) if rel]
        has_masks = record.cls_name in self._with_masks  # decides a normal image's all-false mask
        return ["manifest", dataclasses.asdict(record), files, has_masks]

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        path = self.manifest.resolve(record.img_path)
        if not path.exists():
            raise DataError(path, f"image listed in the manifest does not exist (record {index})")
        if record.slice_index is not None:
            image, modality, meta, identity, value_range, size = self._volume_slice(record, path)
        else:
            data = _wrap_errors(path, lambda: read_image(path, record.frame_index))
            image, modality, meta, value_range = data.array, data.modality, data.meta, None
            identity = data.identity if meta.get("source_format") == "dicom" else record.img_path
            if record.frame_index is not None and meta.get("source_format") != "dicom":
                identity += f"#frame{record.frame_index}"
            size = data.size
        return self.builder.sample(
            np.ascontiguousarray(image),
            identity=identity,
            id_prefix=f"{record.cls_name}|",
            modality=modality,
            meta=meta,
            value_range=value_range,
            mask=self._mask(record, size),
            label=LABEL_ABNORMAL if record.anomaly else LABEL_NORMAL,
            category=record.cls_name,
            specie=record.specie_name,
            slice_index=record.slice_index if record.slice_index is not None else record.frame_index,
            volume_id=self._volume_id(record),
        )

    def _volume_id(self, record: Record) -> str | None:
        if record.slice_index is None:
            return None
        return pseudonymous_id(f"{record.cls_name}|{record.img_path}", salt=self.builder.salt)

    def _volume_slice(self, record: Record, path: Path) -> tuple[Any, ...]:
        volume = self._volumes.get(path, image=True)
        axis = record.slice_axis or "axial"
        index = int(record.slice_index or 0)
        image = _wrap_errors(path, lambda: volume.slice(axis, index))
        value_range = self._ranges.get(str(path), volume)
        meta = clean_meta({**volume.meta, "slice_axis": axis})
        identity = slice_identity(record.img_path, axis, index)
        return image, volume.modality, meta, identity, value_range, (int(image.shape[0]), int(image.shape[1]))

    def _mask(self, record: Record, size: tuple[int, int]) -> torch.Tensor | None:
        if record.cls_name not in self._with_masks:
            return None
        if record.anomaly == 0 and not record.mask_path:
            return self.builder.mask_transform(np.zeros(size, dtype=bool))
        if not record.mask_path:
            return None
        path = self.manifest.resolve(record.mask_path)
        if not path.exists():
            raise DataError(path, "mask listed in the manifest does not exist")
        if record.slice_index is not None:
            image = self._volumes.get(self.manifest.resolve(record.img_path), image=True)
            label = self._volumes.get(path, image=False)
            check_same_grid(image, label, path)
            mask = label.slice(record.slice_axis or "axial", int(record.slice_index)) > 0
        else:
            mask = _wrap_errors(path, lambda: read_mask(path, record.frame_index))
        if mask.shape != tuple(size):
            raise DataError(path, f"mask size {mask.shape} differs from the image size {tuple(size)}")
        return self.builder.mask_transform(mask)


# -------------------------------------------------------------------------------------- folder dataset


@dataclass(frozen=True)
class _Entry:
    item: int  # index into study.items
    index: int | None = None  # frame of an image item, slice of a volume item


class FolderDataset(Dataset):
    """Every image and scan under folders, files or DICOMDIRs, for prediction on a user's own data
    (labels unknown). ``predict`` uses the same class, so both commands see the same samples.

    Items come from the study grouper (:func:`medzsad.data.study.scan_inputs`): each DICOM series and
    grey multi-frame file is a volume, NIfTI/NRRD/MHA files too; volumes give one sample per slice
    along ``axis`` (``"native"``: as acquired), carrying ``volume_id`` and ``slice_index``;
    :meth:`reassemble` puts their maps back into the scan's geometry. Other images give one sample
    per frame. Skipped objects (localizers, SEG/RT/SR, secondary captures, unselected series) are in
    :attr:`skipped` with their reasons.

    Args:
        root: a folder (searched recursively), a file, a DICOMDIR, or a list of them.
        category: ``cls_name`` given to every sample (used for prompts/metrics grouping).
        label: label given to every sample (default -1, unknown).
        axis: slicing axis for volumes: ``"native"``, ``"axial"``, ``"coronal"``, ``"sagittal"`` or 0-2.
        selection: which DICOM series to keep (:class:`~medzsad.data.study.SeriesSelection`).
        user_transforms: MONAI dictionary transforms run before the CLIP transform.
    """

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        *,
        category: str = "",
        label: int = LABEL_UNKNOWN,
        axis: str | int = "axial",
        transform: ClipImageTransform | None = None,
        image_size: int = 518,
        pad_to_square: bool = False,
        intensity: Intensity | None = None,
        salt: str | bytes | None = None,
        min_series_slices: int = 2,
        selection: SeriesSelection | None = None,
        user_transforms: Sequence[Any] = (),
    ) -> None:
        roots = [Path(root)] if isinstance(root, str | Path) else [Path(r) for r in root]
        for path in roots:
            if not path.exists():
                raise DataError(path, "folder not found")
        self.root = roots[0]
        self.category = category
        self.label = label
        self.axis = axis if axis == "native" else AXES_BY_INDEX[_axis(axis)]
        self.builder = _builder(transform, image_size, pad_to_square, intensity, salt, user_transforms)
        self._ranges = _Ranges(self.builder)
        self._volumes = _VolumeCache()
        self._stamps: dict[int, list[Any]] = {}
        self._flat: set[int] = set()
        self._failed: set[int] = set()
        self.study: Study = scan_inputs(roots, selection, min_series_files=min_series_slices, salt=salt)
        self.entries: list[_Entry] = []
        for position, item in enumerate(self.study.items):
            try:
                self.entries += self._entries(position, item)
            except DataError as exc:  # an unreadable scan is reported, the others are still scored
                self.study.skipped.append(Skipped(item.source, exc.problem))
                self._failed.add(position)
        self.study.items = [item for i, item in enumerate(self.study.items) if i not in self._failed]
        self._reindex()

    @property
    def transform(self) -> ClipImageTransform:
        return self.builder.transform

    @property
    def skipped(self) -> list:
        """Objects not scored, each with its reason (:class:`~medzsad.data.study.Skipped`)."""
        return self.study.skipped

    def __len__(self) -> int:
        return len(self.entries)

    def _entries(self, position: int, item: Item) -> list[_Entry]:
        if item.kind == "image":
            return [_Entry(position, i if item.frames > 1 else None) for i in range(item.frames)]
        if item.kind == "volume_file":
            path = item.files[0]
            shape, native = _wrap_errors(path, lambda: volume_header(path, native=True))
            if min(shape) == 1:  # a single slice stored as a volume: one 2-D image
                self._flat.add(position)
                return [_Entry(position, None)]
            depth = shape[native if self.axis == "native" else _axis(self.axis)]
        else:
            volume = self.load_volume(item)
            depth = volume.array.shape[volume.resolve_axis(self.axis)]
        return [_Entry(position, k) for k in range(depth)]

    def _reindex(self) -> None:
        """Renumber entries after failed items were dropped from the study."""
        if not self._failed:
            return
        self._stamps.clear()
        kept = [i for i in range(len(self.study.items) + len(self._failed)) if i not in self._failed]
        new = {old: n for n, old in enumerate(kept)}
        self.entries = [_Entry(new[e.item], e.index) for e in self.entries]
        self._flat = {new[i] for i in self._flat if i in new}

    def is_volume(self, item: Item) -> bool:
        """Whether ``item`` is scored slice by slice (a single-slice NIfTI is a 2-D image)."""
        return item.is_volume and self.study.items.index(item) not in self._flat

    def _entries_of(self, item: Item) -> list[_Entry]:
        position = self.study.items.index(item)
        return [e for e in self.entries if e.item == position]

    def load_volume(self, item: Item) -> Volume:
        """The volume of a ``series``/``multiframe``/``volume_file`` item (a few are cached)."""
        if item.kind == "series":
            key = item.files[0].parent / item.key
            return self._volumes.get(key, image=True, loader=lambda: read_dicom_files(item.files))
        return self._volumes.get(item.files[0], image=True)

    def volume_id(self, item: Item) -> str:
        return pseudonymous_id(self.load_volume(item).identity, salt=self.builder.salt)

    def item_samples(self, item: Item) -> list[Sample]:
        """Every sample of one item, in order."""
        return [self._sample(entry) for entry in self._entries_of(item)]

    def cache_parts(self, index: int) -> list[Any]:
        """What sample ``index`` is built from, for :mod:`medzsad.data.cache` (item files, frame or slice,
        axis, label; no pixels). A series' files are stamped once per item."""
        entry = self.entries[index]
        if entry.item not in self._stamps:
            item = self.study.items[entry.item]
            self._stamps[entry.item] = [item.kind, [file_stamp(path) for path in item.files]]
        return ["folder", self._stamps[entry.item], entry.index, self.axis, self.label, self.category]

    def __getitem__(self, index: int) -> Sample:
        return self._sample(self.entries[index])

    def _sample(self, entry: _Entry) -> Sample:
        item = self.study.items[entry.item]
        if self.is_volume(item):
            return self._slice_sample(item, entry.index)
        path = item.files[0]
        data = _wrap_errors(path, lambda: read_image(path, entry.index))
        return self.builder.sample(
            data.array,
            identity=data.identity,
            modality=data.modality,
            meta=data.meta,
            label=self.label,
            category=self.category,
            specie="",
            slice_index=entry.index,
        )

    def _slice_sample(self, item: Item, index: int) -> Sample:
        volume = self.load_volume(item)
        axis = volume.resolve_axis(self.axis)
        name = AXES_BY_INDEX[axis]
        return self.builder.sample(
            np.ascontiguousarray(volume.slice(axis, index)),
            identity=slice_identity(volume.identity, name, index),
            modality=volume.modality,
            meta={**volume.meta, "slice_axis": name},
            value_range=self._ranges.get(item.key, volume),
            label=self.label,
            category=self.category,
            specie="",
            slice_index=index,
            volume_id=self.volume_id(item),
        )

    def source_files(self) -> list[Path]:
        """Every file the samples are read from; :func:`~medzsad.data.dicom.dataset_identifiers` reads their headers."""
        return list(dict.fromkeys(path for item in self.study.items for path in item.files))

    def volume_sources(self) -> dict[str, Item]:
        """``volume_id -> item`` for every volume in the dataset."""
        items = [self.study.items[i] for i in dict.fromkeys(e.item for e in self.entries)]
        return {self.volume_id(item): item for item in items if self.is_volume(item)}

    def reassemble(self, volume_id: str, maps: Mapping[int, np.ndarray | torch.Tensor]) -> tuple[Volume, np.ndarray]:
        """Put model-resolution maps of one volume's slices (``slice_index -> [S, S]``) back into the scan.

        Returns:
            ``(volume, map_volume)``: the scan and a float32 ``[z, y, x]`` map on its grid (slices
            without a map are 0); write it with :func:`medzsad.data.volumes.write_nifti`.
        """
        sources = self.volume_sources()
        if volume_id not in sources:
            raise KeyError(f"no volume with id {volume_id!r} in this dataset")
        volume = self.load_volume(sources[volume_id])
        axis = volume.resolve_axis(self.axis)
        indices = sorted(maps)
        slice_maps = [
            map_to_original(maps[k], volume.slice(axis, k).shape, pad_to_square=self.transform.pad_to_square)
            for k in indices
        ]
        return volume, reassemble(slice_maps, volume, axis, indices)


AXES_BY_INDEX = {v: k for k, v in AXES.items()}


def _axis(axis: str | int) -> int:
    return axis_index(axis)
