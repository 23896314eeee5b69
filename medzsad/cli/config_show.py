"""``medzsad config show``: the resolved configuration, one key per line, with its source.

Sources: ``default`` (the dataclass default), ``file`` (``--config``) or ``override KEY=VALUE`` (the
command-line text that set it, so ``backbone=tiny`` shows which keys the preset set). The method's
options are shown in full, with the method's defaults, because that is what a run uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from medzsad.engine.config import apply_override, load_config, method_config_for, parse_override, read_yaml

__all__ = ["config_sources", "show_config"]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}``; lists are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def config_sources(path: str | None, overrides: Sequence[str]) -> dict[str, str]:
    """Dotted key -> ``"file"`` or ``"override TEXT"`` for every key the file or an override sets."""
    from medzsad.engine.config import _expand_presets

    sources: dict[str, str] = {}
    if path:
        data = read_yaml(path)
        _expand_presets(data)
        sources.update(dict.fromkeys(flatten(data), "file"))
    for text in overrides:
        single: dict[str, Any] = {}
        apply_override(single, *parse_override(text))
        _expand_presets(single)
        sources.update(dict.fromkeys(flatten(single), f"override {text}"))
    return sources


def show_config(path: str | None, overrides: Sequence[str]) -> str:
    """The resolved configuration as ``key: value  # source`` lines (YAML values)."""
    config = load_config(path, overrides)
    resolved = config.to_dict()
    resolved["method_config"] = method_config_for(config).to_dict()
    sources = config_sources(path, overrides)
    flat = flatten(resolved)
    width = max(len(key) + len(_value(value)) for key, value in flat.items()) + 2
    lines = [f"# resolved configuration ({path or 'no config file'}; {len(overrides)} override(s))"]
    for key, value in flat.items():
        text = f"{key}: {_value(value)}"
        lines.append(f"{text:{width + 2}s}# {sources.get(key, 'default')}")
    return "\n".join(lines)


def _value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
