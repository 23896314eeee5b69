"""Which CLIP to build: a plain dataclass, importable without torch (the CLI validates configs with it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BackboneConfig:
    """Which CLIP to build and how to run its image side.

    Attributes:
        model_name: open_clip architecture, default the OpenAI ViT-L/14 at 336 px.
        pretrained: open_clip pretrained tag; ``None`` for random weights (tests, smoke runs).
        weights_path: local weight file, overrides ``pretrained``.
        offline: never use the network; fail fast when weights are not cached.
        seed: seed for random weights.
    """

    model_name: str = "ViT-L-14-336"
    pretrained: str | None = "openai"
    weights_path: str | None = None
    offline: bool = False
    seed: int = 0
