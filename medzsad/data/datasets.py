"""Torch datasets yielding :class:`~medzsad.data.records.Sample`: over a ``meta.json`` manifest, and over
a folder of images and scans (PNG/JPEG/TIFF, DICOM files and series, NIfTI/NRRD volumes).

Unreadable files raise :class:`~medzsad.data.errors.DataError` naming the file and the problem in one
line. Sample ids are pseudonymous (:func:`~medzsad.data.ids.pseudonymous_id`): a DICOM image is
identified by its SOP Instance UID, other files by their path as written in the manifest (relative to
the dataset root, so moving a dataset keeps its ids).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medzsad.data.errors import DataError
from medzsad.data.ids import clean_meta, pseudonymous_id
from medzsad.data.manifest import Manifest, Record, read_manifest
from medzsad.data.readers import (
    VOLUME_SUFFIXES,
    _dcmread,
    _first_line,
    is_dicom_file,
    iter_image_files,
    read_image,
    read_mask,
)
from medzsad.data.records import LABEL_ABNORMAL, LABEL_NORMAL, LABEL_UNKNOWN, Sample
from medzsad.data.transforms import ClipImageTransform, ClipMaskTransform, Intensity, map_to_original
from medzsad.data.volumes import (
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
        raise DataError(path, f"cannot read ({type(exc).__name__}: {_first_line(exc)})") from None


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


class _SampleMaker:
    """Shared image/mask transform logic of the datasets."""

    def __init__(
        self,
        transform: ClipImageTransform | None,
        image_size: int,
        pad_to_square: bool,
        intensity: Intensity | None,
        salt: str | bytes | None,
    ) -> None:
        self.transform = transform or ClipImageTransform(image_size, pad_to_square=pad_to_square, intensity=intensity)
        self.mask_transform = ClipMaskTransform(self.transform.image_size, pad_to_square=self.transform.pad_to_square)
        self.salt = salt
        self._ranges: dict[str, tuple[float, float] | None] = {}

    def volume_range(self, key: str, volume: Volume) -> tuple[float, float] | None:
        """Intensity range fitted once per volume, so all its slices share one scale."""
        if key not in self._ranges:
            official = self.transform.intensity.is_official_8bit(volume.array)
            self._ranges[key] = None if official else self.transform.intensity.fit(volume.array, volume.modality)
        return self._ranges[key]

    def intensity_meta(self, modality: str | None, dtype: np.dtype) -> str:
        return self.transform.intensity.describe(modality, dtype)


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
    ) -> None:
        if not isinstance(manifest, Manifest):
            manifest = read_manifest(manifest, root)
        elif root is not None:
            manifest.root = Path(root)
        self.manifest = manifest
        self.split = split
        self.records: list[Record] = list(manifest.records(split, categories))
        self._with_masks = {r.cls_name for r in self.records if r.mask_path}
        self._maker = _SampleMaker(transform, image_size, pad_to_square, intensity, salt)
        self._volumes = _VolumeCache()

    @property
    def transform(self) -> ClipImageTransform:
        return self._maker.transform

    def __len__(self) -> int:
        return len(self.records)

    def categories(self) -> list[str]:
        return list(dict.fromkeys(r.cls_name for r in self.records))

    def has_masks(self, category: str) -> bool:
        """Whether ``category`` has pixel ground truth in this split."""
        return category in self._with_masks

    def source_files(self) -> list[Path]:
        """Every image and mask file of the split; :func:`~medzsad.data.ids.dataset_identifiers` reads their headers."""
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
        tensor = self._maker.transform(np.ascontiguousarray(image), modality=modality, value_range=value_range)
        meta = {**meta, "intensity": self._maker.intensity_meta(modality, image.dtype)}
        return Sample(
            image=tensor,
            mask=self._mask(record, size),
            label=LABEL_ABNORMAL if record.anomaly else LABEL_NORMAL,
            category=record.cls_name,
            sample_id=pseudonymous_id(f"{record.cls_name}|{identity}", salt=self._maker.salt),
            specie=record.specie_name,
            original_size=size,
            slice_index=record.slice_index if record.slice_index is not None else record.frame_index,
            volume_id=self._volume_id(record),
            meta=meta,
        )

    def _volume_id(self, record: Record) -> str | None:
        if record.slice_index is None:
            return None
        return pseudonymous_id(f"{record.cls_name}|{record.img_path}", salt=self._maker.salt)

    def _volume_slice(self, record: Record, path: Path) -> tuple[Any, ...]:
        volume = self._volumes.get(path, image=True)
        axis = record.slice_axis or "axial"
        index = int(record.slice_index or 0)
        image = _wrap_errors(path, lambda: volume.slice(axis, index))
        value_range = self._maker.volume_range(str(path), volume)
        meta = clean_meta({**volume.meta, "slice_axis": axis})
        identity = f"{record.img_path}#{axis}{index}"
        return image, volume.modality, meta, identity, value_range, (int(image.shape[0]), int(image.shape[1]))

    def _mask(self, record: Record, size: tuple[int, int]) -> torch.Tensor | None:
        if record.cls_name not in self._with_masks:
            return None
        if record.anomaly == 0 and not record.mask_path:
            return self._maker.mask_transform(np.zeros(size, dtype=bool))
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
        return self._maker.mask_transform(mask)


# -------------------------------------------------------------------------------------- folder dataset


@dataclass(frozen=True)
class _Entry:
    kind: str  # "image" (a 2-D file), "frame" (of a multi-frame DICOM), "slice" (of a volume)
    source: str  # file path, or volume key
    index: int | None = None


class FolderDataset(Dataset):
    """Every image and scan under a folder, for prediction on a user's own data (labels unknown).

    2-D files (PNG, JPEG, TIFF, BMP, single-frame DICOM) give one sample each; multi-frame DICOM one per
    frame; NIfTI/NRRD/MHA volumes and DICOM series (files sharing a Series UID, at least
    ``min_series_slices`` of them) one per slice along ``axis``. Volume slices carry ``volume_id`` and
    ``slice_index``; :meth:`reassemble` puts their maps back into the scan's geometry.

    Args:
        root: the folder (searched recursively) or a single file.
        category: ``cls_name`` given to every sample (used for prompts/metrics grouping).
        label: label given to every sample (default -1, unknown).
        axis: slicing axis for volumes.
    """

    def __init__(
        self,
        root: str | Path,
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
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise DataError(self.root, "folder not found")
        self.category = category
        self.label = label
        self.axis = axis_index(axis)
        self._maker = _SampleMaker(transform, image_size, pad_to_square, intensity, salt)
        self._volumes = _VolumeCache()
        self._series: dict[str, tuple[Path, ...]] = {}
        self._volume_ids: dict[str, str] = {}
        self.entries: list[_Entry] = self._index(min_series_slices)

    @property
    def transform(self) -> ClipImageTransform:
        return self._maker.transform

    def __len__(self) -> int:
        return len(self.entries)

    def _index(self, min_series_slices: int) -> list[_Entry]:
        files = [self.root] if self.root.is_file() else self._files()
        entries: list[_Entry] = []
        dicom: list[Path] = []
        for path in files:
            name = path.name.lower()
            if name.endswith(VOLUME_SUFFIXES):
                depth = _wrap_errors(path, lambda p=path: volume_header(p))[self.axis]
                entries += [_Entry("slice", str(path), k) for k in range(depth)]
            elif is_dicom_file(path):
                dicom.append(path)
            else:
                entries.append(_Entry("image", str(path)))
        entries += self._index_dicom(dicom, min_series_slices)
        return entries

    def _files(self) -> list[Path]:
        files = set(iter_image_files(self.root))
        files |= {
            p
            for p in self.root.rglob("*")
            if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.startswith(".")
        }
        return sorted(files)

    def _index_dicom(self, files: list[Path], min_series_slices: int) -> list[_Entry]:
        groups: dict[tuple[Any, ...], list[tuple[Path, Any]]] = {}
        for path in files:
            ds = _dcmread(path, stop_before_pixels=True)
            geometric = "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            key = (str(ds.get("SeriesInstanceUID", "")), int(ds.get("Rows", 0)), int(ds.get("Columns", 0)))
            if geometric and frames == 1 and key[0]:
                groups.setdefault(key, []).append((path, ds))
            else:
                groups.setdefault(("single", str(path)), []).append((path, ds))
        entries: list[_Entry] = []
        for key, members in groups.items():
            if key[0] != "single" and len(members) >= min_series_slices:
                series_key = f"series:{len(self._series)}"
                self._series[series_key] = tuple(p for p, _ in members)
                try:
                    volume = self._load_volume(series_key)
                except DataError as exc:
                    # Not a clean volume (duplicate positions, gaps, ...): score its files one by one.
                    del self._series[series_key]
                    warnings.warn(
                        f"a DICOM series of {len(members)} files is read as 2-D images: {exc.problem}",
                        stacklevel=2,
                    )
                else:
                    entries += [_Entry("slice", series_key, k) for k in range(volume.array.shape[self.axis])]
                    continue
            for path, ds in members:
                frames = int(ds.get("NumberOfFrames", 1) or 1)
                if frames > 1:
                    entries += [_Entry("frame", str(path), i) for i in range(frames)]
                else:
                    entries.append(_Entry("image", str(path)))
        return entries

    def _load_volume(self, source: str) -> Volume:
        if source in self._series:
            files = self._series[source]
            return self._volumes.get(Path(source), image=True, loader=lambda: read_dicom_files(files))
        return self._volumes.get(Path(source), image=True)

    def volume_id(self, source: str) -> str:
        if source not in self._volume_ids:
            volume = self._load_volume(source)
            self._volume_ids[source] = pseudonymous_id(volume.identity, salt=self._maker.salt)
        return self._volume_ids[source]

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        if entry.kind == "slice":
            return self._slice_sample(entry)
        path = Path(entry.source)
        data = _wrap_errors(path, lambda: read_image(path, entry.index))
        meta = {**data.meta, "intensity": self._maker.intensity_meta(data.modality, data.array.dtype)}
        return Sample(
            image=self._maker.transform(np.ascontiguousarray(data.array), modality=data.modality),
            mask=None,
            label=self.label,
            category=self.category,
            sample_id=pseudonymous_id(data.identity, salt=self._maker.salt),
            specie="",
            original_size=data.size,
            slice_index=entry.index,
            meta=meta,
        )

    def _slice_sample(self, entry: _Entry) -> Sample:
        volume = self._load_volume(entry.source)
        index = int(entry.index or 0)
        image = np.ascontiguousarray(volume.slice(self.axis, index))
        value_range = self._maker.volume_range(entry.source, volume)
        axis_name = ("axial", "coronal", "sagittal")[self.axis]
        meta = {
            **volume.meta,
            "slice_axis": axis_name,
            "intensity": self._maker.intensity_meta(volume.modality, volume.array.dtype),
        }
        return Sample(
            image=self._maker.transform(image, modality=volume.modality, value_range=value_range),
            mask=None,
            label=self.label,
            category=self.category,
            sample_id=pseudonymous_id(f"{volume.identity}#{axis_name}{index}", salt=self._maker.salt),
            specie="",
            original_size=(int(image.shape[0]), int(image.shape[1])),
            slice_index=index,
            volume_id=self.volume_id(entry.source),
            meta=meta,
        )

    def source_files(self) -> list[Path]:
        """Every file the samples are read from; :func:`~medzsad.data.ids.dataset_identifiers` reads their headers."""
        series = [str(p) for files in self._series.values() for p in files]
        return [
            Path(s) for s in dict.fromkeys([e.source for e in self.entries if e.source not in self._series] + series)
        ]

    def volume_sources(self) -> dict[str, str]:
        """``volume_id -> internal source key`` for every volume in the folder."""
        sources = dict.fromkeys(e.source for e in self.entries if e.kind == "slice")
        return {self.volume_id(s): s for s in sources}

    def reassemble(self, volume_id: str, maps: Mapping[int, np.ndarray | torch.Tensor]) -> tuple[Volume, np.ndarray]:
        """Put model-resolution maps of one volume's slices (``slice_index -> [S, S]``) back into the scan.

        Returns:
            ``(volume, map_volume)``: the scan and a float32 ``[z, y, x]`` map on its grid (slices
            without a map are 0); write it with :func:`medzsad.data.volumes.write_nifti`.
        """
        sources = self.volume_sources()
        if volume_id not in sources:
            raise KeyError(f"no volume with id {volume_id!r} in this dataset")
        volume = self._load_volume(sources[volume_id])
        indices = sorted(maps)
        slice_maps = [
            map_to_original(maps[k], volume.slice(self.axis, k).shape, pad_to_square=self.transform.pad_to_square)
            for k in indices
        ]
        return volume, reassemble(slice_maps, volume, self.axis, indices)
