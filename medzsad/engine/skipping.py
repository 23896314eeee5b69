"""Skip a sample that cannot be read, instead of losing the whole run: the hook of the inference loops.

:class:`SkippingDataset` wraps a dataset so that a sample whose file is unreadable (a
:class:`~medzsad.data.errors.DataError`, or a decoder running out of memory) comes back as a
:class:`Skipped` marker instead of an exception. The marker is made where the read fails (also in a
``DataLoader`` worker, whose exceptions would otherwise reach the main process as a traceback text),
:func:`collate_or_skip` sets markers aside, and :func:`skipped_aside` hands the loop only real batches,
reporting each marker on one line, or raising it again in ``stop`` mode.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from medzsad.data.errors import DataError
from medzsad.data.ids import pseudonymous_id
from medzsad.data.records import Batch, Sample, collate_samples
from medzsad.utils.tables import AppendingCsv

__all__ = [
    "Collated",
    "Skipped",
    "SkippingDataset",
    "collate_or_skip",
    "live_tables",
    "pathless",
    "skipped_aside",
]

# An absolute path inside a library's message (nibabel, ITK and others quote the file they failed on).
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\\/\"']+){2,}")


def pathless(problem: str) -> str:
    """``problem`` with any absolute path replaced by ``<file>``: the skip lists are tables that get shared."""
    return _PATH.sub("<file>", problem)


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be read.

    Attributes:
        index: its position in the dataset.
        sample_id: a pseudonymous id of its source (keyed hash), for the outputs.
        problem: what went wrong, one line without the path (safe for output tables).
        where: the file concerned, for the console line only (never written to outputs).
        category: the sample's category when the dataset knows it without reading the file.
    """

    index: int
    sample_id: str
    problem: str
    where: str
    category: str = ""

    def error(self) -> DataError:
        """The error again, for ``stop`` mode."""
        return DataError(self.where or None, self.problem)


def _source_of(dataset: Any, index: int) -> tuple[str, str]:
    """``(source key, category)`` of sample ``index`` without reading it (manifest record, folder entry)."""
    records = getattr(dataset, "records", None)
    if records is not None:
        record = records[index]
        return f"{record.cls_name}|{record.img_path}#{index}", record.cls_name
    entries = getattr(dataset, "entries", None)
    if entries is not None:
        entry = entries[index]
        return f"{entry.source}#{entry.index}", getattr(dataset, "category", "")
    return f"sample#{index}", ""


class SkippingDataset(Dataset):
    """``dataset[i]``, or a :class:`Skipped` marker when its file cannot be read."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample | Skipped:
        try:
            return self.dataset[index]
        except DataError as exc:
            return self._skipped(index, exc.problem, exc.path or "")
        except MemoryError:
            return self._skipped(index, "not enough memory to decode this image", "")

    def _skipped(self, index: int, problem: str, where: str) -> Skipped:
        source, category = _source_of(self.dataset, index)
        if not where:
            where = source.split("|", 1)[-1].rsplit("#", 1)[0]
        return Skipped(index, pseudonymous_id(source), pathless(problem), where, category)


@dataclass
class Collated:
    """What :func:`collate_or_skip` makes of a list of samples: a batch of the good ones, and the others."""

    batch: Batch | None
    skipped: list[Skipped]
    size: int  # samples asked for: len(batch) + len(skipped)

    def pin_memory(self) -> Collated:
        if self.batch is not None:
            self.batch.pin_memory()
        return self


def collate_or_skip(items: Sequence[Sample | Skipped]) -> Collated:
    """:func:`~medzsad.data.records.collate_samples` of the samples; :class:`Skipped` markers set aside."""
    samples = [item for item in items if not isinstance(item, Skipped)]
    skipped = [item for item in items if isinstance(item, Skipped)]
    return Collated(collate_samples(samples) if samples else None, skipped, len(items))


def skipped_aside(
    collated: Iterable[Collated], on_skip: Callable[[Skipped], None], stop: bool = False, start: int = 0
) -> Iterator[tuple[Batch, list[tuple[int]]]]:
    """``(batch, keys)`` of the readable samples of consecutive dataset samples from index ``start`` on,
    as :func:`~medzsad.engine.inference.indexed` gives them: each key is the sample's own dataset index,
    so a skipped sample does not change the random draws of the samples after it. Each skipped sample
    goes to ``on_skip`` (or, with ``stop``, is raised)."""
    position = start
    for item in collated:
        for skipped in item.skipped:
            if stop:
                raise skipped.error()
            on_skip(skipped)
        gone = {skipped.index for skipped in item.skipped}
        keys = [(index,) for index in range(position, position + item.size) if index not in gone]
        position += item.size
        if item.batch is not None:
            yield item.batch, keys


def live_tables(output_dir: Path, headers: Sequence[Sequence[str]]) -> list[AppendingCsv]:
    """``scores.csv`` and ``sample_index.local.csv`` written row by row as samples complete, so a run that
    is interrupted keeps the score of every map it wrote. Under torchrun each process writes its own
    ``.scores.partial<rank>.csv`` (and index), which rank 0 merges into the final tables at the end.
    """
    from medzsad.engine import distributed

    names = ("scores.csv", "sample_index.local.csv")
    if distributed.world_size() > 1:
        names = tuple(f".{Path(n).stem}.partial{distributed.rank()}.csv" for n in names)
    tables = []
    for name, header in zip(names, headers):
        (output_dir / name).unlink(missing_ok=True)  # a fresh table: rows of another run never mix in
        tables.append(AppendingCsv(output_dir / name, header))
    return tables
