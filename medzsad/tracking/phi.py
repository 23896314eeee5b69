"""PHI guard: every string that medzsad sends to MLflow is checked here first.

MLflow shows run names, params, tags, metric keys, table cells and artifact paths to anyone who
opens the UI, and keeps them in its database. So each such string is checked against rules for
identifiers that leak from clinical data (absolute source paths, DICOM UIDs, dates, DICOM person
names) and against values that the data layer registers as forbidden (patient names and ids,
accession numbers, institution names read from the headers it loads).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "PHIError",
    "clear_forbidden",
    "find_phi",
    "phi_guard",
    "register_forbidden",
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

# Registered values shorter than this are matched as whole tokens only, so that a two-letter
# patient id does not make every string containing those letters fail.
_SUBSTRING_MIN_LEN = 4
_TOKEN_SPLIT = re.compile(r"[^0-9a-z]+")

_lock = threading.Lock()
_forbidden: set[str] = set()


def register_forbidden(values: Iterable[object]) -> None:
    """Register identifying values (names, ids, institutions...) that must never reach MLflow.

    The data layer calls this with what it reads from headers; matching is case-insensitive.
    """
    cleaned = {str(v).strip().casefold() for v in values if v is not None}
    cleaned.discard("")
    with _lock:
        _forbidden.update(cleaned)


def clear_forbidden() -> None:
    """Forget all registered values (for tests and long-lived processes between datasets)."""
    with _lock:
        _forbidden.clear()


def _match_forbidden(text: str) -> bool:
    folded = text.casefold()
    tokens: set[str] | None = None
    with _lock:
        forbidden = tuple(_forbidden)
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


def find_phi(value: object) -> str | None:
    """Why ``value`` must not go to MLflow, or None when it may.

    Numbers and booleans are only checked against registered values: a float cannot be a path,
    and a seed such as 20240101 should not be taken for a date.
    """
    if isinstance(value, (bool, int, float)) or value is None:
        return "a registered identifying value" if _match_forbidden(str(value)) else None
    text = str(value)
    for reason, pattern in _RULES:
        if pattern.search(text):
            return reason
    if _match_forbidden(text):
        return "a registered identifying value"
    return None


def _redacted(text: str) -> str:
    # Show enough to find the culprit in one's own config without repeating the identifier itself.
    if len(text) <= 6:
        return "*" * len(text)
    return f"{text[:2]}…{text[-2:]} ({len(text)} chars)"


def phi_guard(value: Any, where: str) -> Any:
    """Return ``value`` unchanged if it may go to MLflow, else raise :class:`PHIError`.

    Args:
        value: the string (or primitive) about to be sent.
        where: what it is, for the message, e.g. ``"tag 'target_dataset'"``.
    """
    reason = find_phi(value)
    if reason is not None:
        raise PHIError(
            f"PHI guard: {where} looks like {reason} and must not be sent to MLflow "
            f"(value {_redacted(str(value))}). Use pseudonymous ids and relative names; "
            "see docs/tracking.md#patient-data."
        )
    return value


def guard_mapping(mapping: Mapping[str, Any], kind: str) -> None:
    """Guard every key and value of a mapping (tags, params)."""
    for key, value in mapping.items():
        phi_guard(key, f"{kind} name {key!r}"[:80])
        phi_guard(value, f"{kind} {key!r}")


def scrub_tree(obj: Any) -> tuple[Any, int]:
    """Copy a config tree with every string that fails the guard replaced by ``<redacted>``.

    Used for the resolved config artifact, which always holds data paths: redacting them keeps
    the rest of the config reviewable. Returns the copy and how many values were redacted.
    """
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        count = 0
        for key, value in obj.items():
            safe_key = str(key) if find_phi(str(key)) is None else f"<redacted-key-{len(out)}>"
            count += safe_key != str(key)
            out[safe_key], n = scrub_tree(value)
            count += n
        return out, count
    if isinstance(obj, (list, tuple)):
        items = [scrub_tree(v) for v in obj]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(obj, (bool, int, float)) or obj is None:
        return (obj, 0) if find_phi(obj) is None else ("<redacted>", 1)
    text = str(obj)
    return (text, 0) if find_phi(text) is None else ("<redacted>", 1)
