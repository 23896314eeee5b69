"""CSV through the standard ``csv`` module: one dialect (RFC 4180 quoting, ``\\n`` line ends) everywhere."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medzsad.utils.files import atomic_write_text

__all__ = ["AppendingCsv", "csv_text", "write_csv"]


def _cell(value: Any, float_format: str) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, float_format)
    return value


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]], float_format: str = ".8g") -> str:
    """The CSV text of ``header`` and ``rows``; ``None`` is an empty cell, floats use ``float_format``.

    Cells with commas, quotes or line breaks are quoted as RFC 4180 says, so any category name survives.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v, float_format) for v in row])
    return buffer.getvalue()


def write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]], float_format: str = ".8g"
) -> Path:
    """Write a CSV table atomically (see :func:`csv_text`); returns the path."""
    return atomic_write_text(path, csv_text(header, rows, float_format))


class AppendingCsv:
    """A CSV file that grows one complete row at a time, so an interrupted run keeps every finished row.

    Each row is written with one ``write`` call and flushed, so a kill leaves at most the row being
    written incomplete, never an earlier one. Starts a new file (header first) when ``path`` is absent.
    """

    def __init__(self, path: str | os.PathLike[str], header: Sequence[str], float_format: str = ".8g") -> None:
        self.path = Path(path)
        self.float_format = float_format
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._handle = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
        if fresh and header:
            self._put(header)

    def _put(self, row: Sequence[Any]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([_cell(v, self.float_format) for v in row])
        self.append_line(buffer.getvalue()[:-1])

    def append(self, row: Sequence[Any]) -> None:
        """Write one row now."""
        self._put(row)

    def append_line(self, line: str) -> None:
        """Write one row already formatted as CSV (no line break), now."""
        try:
            self._handle.write(line + "\n")
            self._handle.flush()
        except OSError as exc:  # a full disk: name the table, as the one line the user reads must
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc

    def close(self) -> None:
        self._handle.close()
