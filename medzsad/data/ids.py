"""Pseudonymous sample ids and the metadata allow-list.

The rule: a reader may look at names, UIDs, dates and paths to *identify* a source, but only two things
leave it: a keyed hash of that identity (:func:`pseudonymous_id`) and metadata that passes
:func:`clean_meta` (technical facts from :data:`ALLOWED_META_KEYS`, never free text). The mapping from a
sample id back to its file stays in the local manifest, which is not sent to tracking.

The key ("salt") comes, in this order, from the ``salt`` argument (a config value), the environment
variable ``MEDZSAD_ID_SALT``, or a random key stored once per user in ``MEDZSAD_ID_SALT_FILE``
(default ``~/.config/medzsad/id_salt``, mode 0600). The same key gives the same ids across runs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ALLOWED_META_KEYS",
    "PHI_DICOM_KEYWORDS",
    "clean_meta",
    "dicom_identifiers",
    "get_salt",
    "pseudonymous_id",
    "scan_for_identifiers",
]

SALT_ENV = "MEDZSAD_ID_SALT"
SALT_FILE_ENV = "MEDZSAD_ID_SALT_FILE"
_DEFAULT_SALT_FILE = Path("~/.config/medzsad/id_salt")

#: Metadata keys that may travel with a sample (and so reach logs and tracking). Technical facts only.
ALLOWED_META_KEYS: frozenset[str] = frozenset(
    {
        "source_format",  # "dicom", "nifti", "nrrd", "png", "jpeg", "tiff", "bmp", ...
        "modality",  # DICOM Modality code (CT, MR, US, ...) when known
        "photometric",  # PhotometricInterpretation as stored (before our conversion)
        "bits_stored",
        "n_frames",
        "frame_index",
        "rescaled",  # a modality LUT / rescale slope-intercept was applied
        "inverted",  # MONOCHROME1 or INVERSE presentation LUT was inverted
        "converted_to_rgb",  # YBR / palette colour converted to RGB
        "pixel_spacing",  # (row, col) mm
        "spacing",  # voxel spacing of a volume, mm, in array order
        "body_part",  # DICOM BodyPartExamined code (HEAD, CHEST, ...): picks the CT window preset
        "has_geometry",  # False: a volume without patient geometry (written with qform/sform code 0)
        "slice_axis",
        "shape",
        "intensity",  # description of the intensity mapping used, e.g. "window 40/80"
        "burned_in_text",  # the pixels may carry burned-in text (tracking refuses overlays unless de-identified)
    }
)

# String values allowed in metadata: short codes only, so free text (descriptions, names) cannot slip in.
_SAFE_STR = re.compile(r"^[A-Za-z0-9_ ./+-]{0,40}$")

#: DICOM attributes whose values are identifying (PS3.15 Annex E, the parts our readers could touch).
PHI_DICOM_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "StudyID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "DeviceSerialNumber",
    "StationName",
    "StudyDescription",
    "SeriesDescription",
)


def get_salt(salt: str | bytes | None = None) -> bytes:
    """Return the HMAC key for sample ids (see the module docstring for the lookup order)."""
    if salt is not None:
        return salt.encode() if isinstance(salt, str) else bytes(salt)
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode()
    path = Path(os.environ.get(SALT_FILE_ENV) or _DEFAULT_SALT_FILE).expanduser()
    if path.is_file():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    # Create with 0600 from the start, so the key is never readable by others even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def pseudonymous_id(identity: str, *, salt: str | bytes | None = None, length: int = 16) -> str:
    """Keyed hash of a source identity (SOP Instance UID, absolute path, ...) as ``length`` hex chars.

    Args:
        identity: what identifies the source; never stored, only hashed.
        salt: HMAC key override; default from :func:`get_salt`.
        length: number of hex characters kept (16 = 64 bits: collisions are negligible per dataset).
    """
    digest = hmac.new(get_salt(salt), identity.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:length]


def _clean_value(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str):
        return value if _SAFE_STR.match(value) else None
    if isinstance(value, list | tuple):
        items = [_clean_value(v) for v in value]
        if all(isinstance(v, bool | int | float) for v in items):
            return tuple(items)
        return None
    # numpy scalars and the like
    if hasattr(value, "item") and callable(value.item):
        try:
            return _clean_value(value.item())
        except (TypeError, ValueError):
            return None
    return None


def clean_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only allow-listed keys with primitive, short values; drop everything else silently."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if key not in ALLOWED_META_KEYS:
            continue
        cleaned = _clean_value(value)
        if cleaned is not None:
            out[key] = cleaned
    return out


def dicom_identifiers(ds: Any) -> set[str]:
    """Identifying values of a pydicom dataset (for PHI scans of our outputs), as non-trivial strings."""
    found: set[str] = set()
    for keyword in PHI_DICOM_KEYWORDS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd values in real files; we only read them
            value = ds.get(keyword, None)
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
        for v in values:
            text = str(v).strip()
            # Very short values ("1", "0") match everywhere and identify nobody.
            if len(text) >= 4:
                found.add(text)
    return found


def name_parts(value: str) -> set[str]:
    """The components of a DICOM person name (``Doe^John`` -> ``Doe``, ``John``), 4+ characters each."""
    if "^" not in value:
        return set()
    return {part.strip() for part in value.split("^") if len(part.strip()) >= 4}


def scan_for_identifiers(obj: Any, identifiers: Iterable[str]) -> list[str]:
    """Return the identifiers that occur anywhere in ``repr``-like text of ``obj`` (recursively)."""
    text = _flatten_text(obj)
    return sorted({ident for ident in identifiers if ident and ident in text})


def _flatten_text(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, bytes):
        return obj.decode("latin-1")
    if isinstance(obj, Mapping):
        return "\n".join(f"{_flatten_text(k)}={_flatten_text(v)}" for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset):
        return "\n".join(_flatten_text(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return "\n".join(
            f"{name}={_flatten_text(getattr(obj, name))}"
            for name in obj.__dataclass_fields__
            if not _is_array(getattr(obj, name))
        )
    return repr(obj) if not _is_array(obj) else ""


def _is_array(obj: Any) -> bool:
    return hasattr(obj, "shape") and hasattr(obj, "dtype")
