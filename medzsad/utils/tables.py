"""CSV through the standard ``csv`` module: one dialect (RFC 4180 quoting, ``\\n`` line ends) everywhere."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medzsad.utils.files import atomic_write_text

__all__ = ["csv_text", "write_csv"]


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
