"""The ``fewshot`` config section: a plain dataclass, importable without torch (the CLI validates
configurations before it loads a model; docs/fewshot.md explains each choice)."""

from __future__ import annotations

from dataclasses import dataclass

STREAMS = ("original", "dpam")
MAP_RULES = ("mean", "sum")
SCORE_RULES = ("mean_max", "add_max", "zero_shot")


@dataclass
class FewShotConfig:
    """The ``fewshot`` config section (the references themselves are the top-level ``reference`` key).

    Attributes:
        k: how many references to use, in the order the reference source lists them (an image, or a
            volume with all its slices, counts as one); ``None`` uses them all.
        layers: visual blocks (1-indexed, negative from the end) whose patch tokens fill the bank;
            ``None`` is every quarter of the depth (6, 12, 18, 24 of ViT-L/14).
        stream: ``"original"`` (q-k tokens, available for every method) or ``"dpam"`` (the V-V stream,
            only where the method runs it at those layers).
        project: compare ``ln_post(token) @ proj`` (the space the zero-shot maps use) instead of the raw
            tokens.
        map_rule: ``"mean"``: ``(zero-shot + few-shot) / 2``; ``"sum"``: ``zero-shot + few-shot``.
        score_rule: ``"mean_max"``: ``(score + max few-shot map) / 2``; ``"add_max"``: ``score + max``;
            ``"zero_shot"``: the zero-shot score unchanged.
        max_bank_size: greedy coreset (PatchCore) down to this many patches per layer when the bank is
            larger; ``None`` keeps every patch.
        block_elements: size of one query x bank similarity block on the device (bounds memory only).
        bank_dir: where banks are saved and looked up for reuse (keyed by everything they depend on).
        split: the manifest split references are read from ("train": the normal training images, never
            the images under test).
    """

    k: int | None = None
    layers: list[int] | None = None
    stream: str = "original"
    project: bool = False
    map_rule: str = "mean"
    score_rule: str = "mean_max"
    max_bank_size: int | None = None
    block_elements: int = 1 << 24
    bank_dir: str = "runs/banks"
    split: str = "train"

    def __post_init__(self) -> None:
        for key, value, allowed in (
            ("stream", self.stream, STREAMS),
            ("map_rule", self.map_rule, MAP_RULES),
            ("score_rule", self.score_rule, SCORE_RULES),
        ):
            if value not in allowed:
                raise ValueError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
        for key, value in (("k", self.k), ("max_bank_size", self.max_bank_size)):
            if value is not None and value < 0:
                raise ValueError(f"{key}: expected a number >= 0 or null, got {value}")
        if self.block_elements < 1:
            raise ValueError(f"block_elements: expected a positive number, got {self.block_elements}")
