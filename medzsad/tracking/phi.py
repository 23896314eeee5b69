"""PHI guard: every string that medzsad sends to MLflow is checked here first.

MLflow shows run names, params, tags, metric keys, table cells and artifact paths to anyone who
opens the UI, and keeps them in its database. So each such string is checked against rules for
identifiers that leak from clinical data (absolute source paths, DICOM UIDs, dates, DICOM person
names) and against the identifying values of the data the run was fed (patient names and ids,
accession numbers, institution names read from the headers). Those values are not a global: the
engine reads them from the data layer (:func:`medzsad.data.dicom.dataset_identifiers`) and hands them
to the run (``tracked_run(..., forbidden=...)``), which passes them to every check here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "Forbidden",
    "PHIError",
    "find_phi",
    "forbidden_values",
    "phi_guard",
    "scrub_tree",
]


class PHIError(ValueError):
    """A string that would identify a patient was about to reach MLflow."""


_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"

# Each rule: (what it catches, pattern). Order matters only for the reason shown.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        # A token that starts like an absolute path or a URI with a location: /x, ~/x, C:\x, \\host,
        # file:/..., s3://... . Relative artifact paths such as "overlays/brain/x.png" pass.
        "an absolute path or URI",
        re.compile(
            r"(?:^|[\s=,;'\"(\[{<|])(?:/[^\s/]|~[\w.-]*/|[A-Za-z]:[\\/]|\\\\[^\s\\])"
            r"|[A-Za-z][A-Za-z0-9+.-]*://"
        ),
    ),
    ("a DICOM UID", re.compile(r"\d+(?:\.\d+){4,}")),
    (
        "a date",
        re.compile(
            # 2021-03-15, 2021/3/15, 2021.03.15
            r"(?<!\d)(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])(?!\d)"
            # DICOM DA / DT: 20210315, 20210315101500. Not after a letter or digit, so hex hashes pass.
            r"|(?<![0-9A-Za-z])(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
            r"(?:(?:[01]\d|2[0-3])[0-5]\d(?:[0-5]\d)?)?(?!\d)"
            # 15/03/2021, 3-15-2021
            r"|(?<!\d)\d{1,2}[-/.]\d{1,2}[-/.](?:19|20)\d{2}(?!\d)"
            # 15 Mar 2021, 15-March-2021
            rf"|(?<!\d)\d{{1,2}}[ -](?:{_MONTHS})[a-z]*[ -](?:19|20)\d{{2}}(?!\d)",
            re.IGNORECASE,
        ),
    ),
    # DICOM PN values separate name components with '^' (Doe^John).
    ("a DICOM person name", re.compile(r"\w\^\w|\^\^")),
)

# Forbidden values shorter than this are matched as whole tokens only, so that a two-letter
# patient id does not make every string containing those letters fail.
_SUBSTRING_MIN_LEN = 4
_TOKEN_SPLIT = re.compile(r"[^0-9a-z]+")

#: The identifying values of one run's data, case-folded (see :func:`forbidden_values`).
Forbidden = frozenset[str]

# A config string that names a file or folder, also relative (``data/LASTNAME_x/meta.json``,
# ``brain=scans``, ``runs/train/epoch_15.safetensors``): the resolved config redacts these, since a
# relative path says as much about a patient as an absolute one.
_PATH_LIKE = re.compile(
    r"[\\/]|^\.{1,2}$|=|\.(?:json|ya?ml|csv|safetensors|pth?|bin|ckpt|npz|nii(?:\.gz)?|nrrd|nhdr|mh[ad]"
    r"|dcm|dicom|ima|png|jpe?g|tiff?|bmp|zip|tar|gz|db)$",
    re.IGNORECASE,
)


def forbidden_values(values: Iterable[object]) -> Forbidden:
    """Case-folded, non-empty identifying values (names, ids, institutions...) that must never reach MLflow."""
    cleaned = {str(v).strip().casefold() for v in values if v is not None}
    cleaned.discard("")
    return frozenset(cleaned)


def _match_forbidden(text: str, forbidden: Forbidden) -> bool:
    folded = text.casefold()
    tokens: set[str] | None = None
    for value in forbidden:
        if len(value) >= _SUBSTRING_MIN_LEN:
            if value in folded:
                return True
        else:
            if tokens is None:
                tokens = set(_TOKEN_SPLIT.split(folded))
            if value in tokens:
                return True
    return False


def find_phi(value: object, forbidden: Forbidden = frozenset()) -> str | None:
    """Why ``value`` must not go to MLflow, or None when it may.

    Args:
        value: the string or primitive about to be sent.
        forbidden: identifying values of the run's data (:func:`forbidden_values`).

    Numbers and booleans are only checked against ``forbidden``: a float cannot be a path,
    and a seed such as 20240101 should not be taken for a date.
    """
    if isinstance(value, (bool, int, float)) or value is None:
        return "an identifying value of the data" if _match_forbidden(str(value), forbidden) else None
    text = str(value)
    for reason, pattern in _RULES:
        if pattern.search(text):
            return reason
    if _match_forbidden(text, forbidden):
        return "an identifying value of the data"
    return None


def _redacted(text: str) -> str:
    # Show enough to find the culprit in one's own config without repeating the identifier itself.
    if len(text) <= 6:
        return "*" * len(text)
    return f"{text[:2]}…{text[-2:]} ({len(text)} chars)"


def phi_guard(value: Any, where: str, forbidden: Forbidden = frozenset()) -> Any:
    """Return ``value`` unchanged if it may go to MLflow, else raise :class:`PHIError`.

    Args:
        value: the string (or primitive) about to be sent.
        where: what it is, for the message, e.g. ``"tag 'target_dataset'"``.
        forbidden: identifying values of the run's data (:func:`forbidden_values`).
    """
    reason = find_phi(value, forbidden)
    if reason is not None:
        raise PHIError(
            f"PHI guard: {where} looks like {reason} and must not be sent to MLflow "
            f"(value {_redacted(str(value))}). Use pseudonymous ids and relative names; "
            "see docs/tracking.md#patient-data."
        )
    return value


def guard_mapping(mapping: Mapping[str, Any], kind: str, forbidden: Forbidden = frozenset()) -> None:
    """Guard every key and value of a mapping (tags, params)."""
    for key, value in mapping.items():
        phi_guard(key, f"{kind} name {key!r}"[:80], forbidden)
        phi_guard(value, f"{kind} {key!r}", forbidden)


def scrub_tree(obj: Any, forbidden: Forbidden = frozenset()) -> tuple[Any, int]:
    """Copy a config tree with every string that fails the guard, or names a file or folder (also a
    relative one), replaced by ``<redacted>``.

    Used for the resolved config artifact, which always holds data and checkpoint paths: redacting
    them keeps the rest of the config reviewable. Returns the copy and how many values were redacted.
    """
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        count = 0
        for key, value in obj.items():
            safe_key = str(key) if find_phi(str(key), forbidden) is None else f"<redacted-key-{len(out)}>"
            count += safe_key != str(key)
            out[safe_key], n = scrub_tree(value, forbidden)
            count += n
        return out, count
    if isinstance(obj, (list, tuple)):
        items = [scrub_tree(v, forbidden) for v in obj]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(obj, (bool, int, float)) or obj is None:
        return (obj, 0) if find_phi(obj, forbidden) is None else ("<redacted>", 1)
    text = str(obj)
    safe = find_phi(text, forbidden) is None and not _PATH_LIKE.search(text)
    return (text, 0) if safe else ("<redacted>", 1)
