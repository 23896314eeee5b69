"""Which config values become MLflow params, and the config hash.

MLflow params are immutable and shown as plain text, so only stable primitive values from an
allow-list go there: numbers, booleans, short strings and short lists of those. Object reprs
(``<Foo object at 0x...>``) change between runs and say nothing; paths identify people.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_PARAM_ALLOW",
    "DEFAULT_PARAM_DENY",
    "ParamValue",
    "config_hash",
    "flatten_config",
    "is_allowed_key",
    "param_value",
    "select_params",
]

ParamValue = bool | int | float | str | None | list | tuple

#: Glob patterns of flattened (dotted) config keys that may become params: the shape of the
#: engine's ``RunConfig`` (``engine.jobs.run_params``). Data keys are listed one by one because
#: the rest of ``data`` names files.
DEFAULT_PARAM_ALLOW: tuple[str, ...] = (
    "method",
    "method_config.*",
    "backbone.*",
    "train.*",
    "eval.*",
    "data.split",
    "data.pad_to_square",
    "data.ct_window",
    "data.mri_percentiles",
    "data.slice_axis",
)

#: Glob patterns of key leaves that never become params even under an allowed section: these
#: are where paths, URIs and secrets live.
DEFAULT_PARAM_DENY: tuple[str, ...] = (
    "*path*",
    "*root*",
    "*dir*",
    "*file*",
    "*uri*",
    "*url*",
    "*salt*",
    "*secret*",
    "token",
    "*_token",
    "*api_token*",
    "*password*",
    "*_key",
    "*host*",
)

_MAX_STR_LEN = 250
_MAX_LIST_LEN = 32
_OBJECT_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>|<[a-zA-Z_][\w.]*(?: object)?>$")


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def is_allowed_key(key: str, allow: Iterable[str] = DEFAULT_PARAM_ALLOW) -> bool:
    """True when a dotted key matches an allow pattern and its last part no deny pattern."""
    leaf = key.rsplit(".", 1)[-1].lower()
    if any(fnmatch.fnmatchcase(leaf, pattern) for pattern in DEFAULT_PARAM_DENY):
        return False
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in allow)


def _is_primitive(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str)) or value is None


def _check_string(value: str, max_len: int) -> None:
    if len(value) > max_len or _OBJECT_REPR.search(value):
        raise TypeError(f"string param values must be at most {max_len} chars and not object reprs")


def param_value(value: Any) -> str:
    """The string MLflow stores for an allowed value; raises TypeError for anything else."""
    if isinstance(value, (list, tuple)):
        if len(value) > _MAX_LIST_LEN or not all(_is_primitive(v) for v in value):
            raise TypeError(f"list param values must be at most {_MAX_LIST_LEN} primitives")
        for item in value:
            if isinstance(item, str):
                _check_string(item, 64)
        return json.dumps(list(value))
    if not _is_primitive(value):
        raise TypeError(f"param values must be bool, int, float, str or None, not {type(value).__name__}")
    if isinstance(value, str):
        _check_string(value, _MAX_STR_LEN)
    return "None" if value is None else str(value)


def select_params(config: Mapping[str, Any], allow: Iterable[str] = DEFAULT_PARAM_ALLOW) -> dict[str, str]:
    """The allow-listed primitive leaves of a (nested) config as MLflow param strings.

    Leaves that are allowed by key but are not stable primitives are skipped, not stringified.
    """
    allow = tuple(allow)
    params: dict[str, str] = {}
    for key, value in flatten_config(config).items():
        if not is_allowed_key(key, allow):
            continue
        try:
            params[key] = param_value(value)
        except TypeError:
            continue
    return params


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the config's canonical JSON: equal configs give equal hashes across runs."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
