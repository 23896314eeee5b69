"""Named presets: one word in a config or on the command line for a group of settings.

``backbone=tiny`` is the quick path without weights: the small random-weight ``medzsad-tiny-fast``
CLIP (224 px, 8 layers, no download), for trying every command on one's own files. Its scores mean
nothing. A preset is expanded where it appears, so keys given after it win:
``backbone=tiny method_config.image_size=336``.
"""

from __future__ import annotations

import copy
from typing import Any

# name -> (the backbone section, other keys it sets as dotted paths)
BACKBONE_PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny": (
        {"model_name": "medzsad-tiny-fast", "pretrained": None},
        {"method_config.image_size": 224},  # the tiny model's input size (patch 16, 14 x 14 grid)
    ),
}


class PresetError(ValueError):
    """An unknown preset name (the config module turns it into a ConfigError)."""


def expand_presets(data: dict[str, Any]) -> None:
    """Replace ``data["backbone"]`` given as a preset name by the preset's settings, in place."""
    name = data.get("backbone")
    if not isinstance(name, str):
        return
    if name not in BACKBONE_PRESETS:
        raise PresetError(
            f"backbone: unknown preset {name!r}; presets: {', '.join(sorted(BACKBONE_PRESETS))} "
            "(or give the section's keys: backbone.model_name=..., backbone.weights_path=...)"
        )
    section, others = BACKBONE_PRESETS[name]
    data["backbone"] = copy.deepcopy(section)
    for dotted, value in others.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
