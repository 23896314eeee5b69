"""An on-disk cache of built samples (decoded, windowed, resized) for repeated runs over one archive.

Evaluating several checkpoints or methods on the same scans decodes the same DICOM series, windows
and resizes the same slices every time. :class:`CachedSamples` keeps each built :class:`Sample` in a
folder through MONAI's ``PersistentDataset`` (atomic writes, corrupt files recomputed) and reads it
back on later runs, bit-identical to building it again.

Each entry is named by a content key (:func:`content_key`): the dataset's description of the sample
(the manifest record, or the folder item and slice), the size and modification time of every file it
reads, everything the sample builder does (transform settings, the user's MONAI transforms, the id
salt's digest), the cache format and the medzsad version. Editing a file, a setting or upgrading
gives a new key, so a stale entry is never read. Entry names are hashes, never paths; their contents
are patient images, so the folder must stay where the scans are allowed to be (as
``sample_index.local.csv`` does).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai.transforms import Transform
from torch.utils.data import Dataset

from medzsad.data.errors import DataError
from medzsad.data.records import Sample

#: Changes whenever what an entry holds changes: older entries are then never read.
CACHE_FORMAT = 1


def file_stamp(path: str | os.PathLike[str]) -> list[Any]:
    """``[path, size, mtime_ns]`` of a file (``[path, None, None]`` when missing: the build will say so)."""
    try:
        stat = os.stat(path)
    except OSError:
        return [str(path), None, None]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def builder_stamp(builder: Any) -> dict[str, Any]:
    """What a :class:`~medzsad.data.samples.SampleBuilder` does to pixels and ids, as JSON-ready values."""
    from medzsad.data.ids import get_salt

    transform = builder.transform
    salt = get_salt(builder.salt)  # the key ids are made with (argument, environment or the user's file)
    return {
        "image_size": transform.image_size,
        "pad_to_square": transform.pad_to_square,
        "intensity": repr(transform.intensity),
        "mean": list(transform.mean),
        "std": list(transform.std),
        "user_transforms": [repr(t) for t in builder.user_transforms],
        "salt": hashlib.sha256(salt).hexdigest(),
    }


def content_key(*parts: Any) -> str:
    """SHA-256 of the cache format, the medzsad version and ``parts`` (JSON)."""
    import medzsad

    text = json.dumps([CACHE_FORMAT, medzsad.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_cacheable(user_transforms: Sequence[Any]) -> None:
    """Refuse random user transforms: a cached sample would repeat one draw forever."""
    from monai.transforms import Randomizable

    for i, transform in enumerate(user_transforms):
        if isinstance(transform, Randomizable):
            raise ValueError(
                f"data.cache_dir: data.transforms[{i}] ({type(transform).__name__}) is random; a cache would "
                "freeze one draw. Remove the cache or the random transform"
            )


def _entry_name(item: dict[str, Any]) -> bytes:
    return item["key"].encode()


def _to_entry(sample: Sample) -> dict[str, Any]:
    """A sample as tensors and plain values (what ``torch.load(weights_only=True)`` reads back)."""
    return {
        "image": sample.image,
        "mask": sample.mask,
        "label": int(sample.label),
        "category": sample.category,
        "sample_id": sample.sample_id,
        "specie": sample.specie,
        "original_size": [int(v) for v in sample.original_size],
        "slice_index": sample.slice_index,
        "volume_id": sample.volume_id,
        "meta": json.dumps(sample.meta, sort_keys=True, default=str),
    }


def _from_entry(entry: dict[str, Any]) -> Sample:
    fields = dict(entry)
    fields["original_size"] = tuple(int(v) for v in fields["original_size"])
    fields["meta"] = json.loads(fields["meta"])
    return Sample(**fields)


class _Build(Transform):
    """The (uncached) build of sample ``item["index"]`` of a dataset, as a cache entry. A MONAI
    ``Transform`` (deterministic): ``PersistentDataset`` caches only up to the first random or foreign
    callable, and would otherwise cache the bare item and rebuild the sample on every read."""

    def __init__(self, build: Callable[[int], Sample]) -> None:
        self.build = build

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return _to_entry(self.build(int(item["index"])))


class CachedSamples(Dataset):
    """``dataset`` with its samples cached in ``cache_dir`` (see the module docstring).

    Args:
        dataset: a dataset with ``cache_parts(index)`` (what a sample is built from, JSON-ready, reading
            no pixels) and ``builder`` (its :class:`~medzsad.data.samples.SampleBuilder`).
        cache_dir: the folder (created if missing).

    Every other attribute is the wrapped dataset's, so code that asks a dataset about its records,
    entries or volumes is unchanged.
    """

    def __init__(self, dataset: Any, cache_dir: str | os.PathLike[str]) -> None:
        from monai.data import PersistentDataset

        check_cacheable(dataset.builder.user_transforms)
        self.dataset = dataset
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        builder = builder_stamp(dataset.builder)  # once: the same for every sample (reads the id key)
        items = [{"index": i, "key": content_key(builder, dataset.cache_parts(i))} for i in range(len(dataset))]
        self.persistent = PersistentDataset(items, _Build(dataset.__getitem__), cache_dir, hash_func=_entry_name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        try:
            return _from_entry(self.persistent[index])
        except RuntimeError as exc:  # MONAI wraps what a transform raises; unreadable files stay one line
            if isinstance(exc.__cause__, DataError | MemoryError):
                raise exc.__cause__ from None
            raise

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "persistent"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def cached(dataset: Any, cache_dir: str | os.PathLike[str] | None) -> Any:
    """``dataset`` itself without a cache folder, else :class:`CachedSamples` around it."""
    return dataset if not cache_dir else CachedSamples(dataset, cache_dir)
