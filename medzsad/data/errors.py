"""Errors raised by the data layer.

Every error names the file (or folder) and the problem in one line, so a user reading a log can act on
it without a traceback. Messages may contain the local path of the offending file: they are meant for
the person running the tool, never for tracking metadata (see :mod:`medzsad.data.ids`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError", "MissingDecoderError", "NotAnImageError", "first_line"]


class DataError(Exception):
    """A file or folder could not be turned into images, masks or a manifest.

    Args:
        path: the file or folder concerned (``None`` when the problem is not tied to one).
        problem: what is wrong, in one sentence, lower case, no trailing full stop.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())  # keep it on one line
        super().__init__(self.problem if self.path is None else f"{self.path}: {self.problem}")


class MissingDecoderError(DataError):
    """Compressed DICOM pixel data whose decoder package is not installed.

    Args:
        path: the DICOM file.
        transfer_syntax: the transfer syntax name (e.g. ``"JPEG Lossless, Non-Hierarchical ..."``).
        packages: pip package names, any one of which would decode it.
    """

    def __init__(self, path: str | Path, transfer_syntax: str, packages: tuple[str, ...]) -> None:
        self.transfer_syntax = transfer_syntax
        self.packages = packages
        options = " or ".join(packages) if packages else "a decoder plugin for pydicom"
        super().__init__(
            path,
            f"pixel data is compressed as '{transfer_syntax}' and no installed decoder handles it; "
            f"install {options} (e.g. pip install 'medzsad[dicom-codecs]', see docs/data.md)",
        )


class NotAnImageError(DataError):
    """The file is valid but holds no image to score (e.g. DICOM SEG, RT dose, a 3-D volume for a 2-D reader)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
