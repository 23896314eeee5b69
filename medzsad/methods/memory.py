"""Few-shot mode: a memory bank of normal patches, nearest-neighbour maps, fusion with the zero-shot output.

A site's normal scans (k references) give a bank of patch features taken from the backbone pass the
method already runs (:meth:`ZsadMethod.predict_with_tokens`: no second forward). At test time each
patch's anomaly is its cosine distance to the nearest bank patch, averaged over the bank's layers,
upsampled and smoothed exactly as the method's zero-shot map (:mod:`medzsad.methods.postprocess`), and
fused with the untouched zero-shot map and score by a configurable rule (:class:`FewShotConfig`).

Literature defaults (documented in ``docs/fewshot.md``):

* layers: intermediate blocks at each quarter of the depth, 6, 12, 18, 24 of ViT-L/14, as the few-shot
  tracks of APRIL-GAN and MVFA-AD (WinCLIP+ uses the penultimate tokens);
* stream: the original (q-k) stream's tokens before ``ln_post`` and the projection, the tokens
  APRIL-GAN's few-shot memory stores; the V-V (DPAM) stream and the projected features are options;
* fusion: the few-shot map added to the zero-shot map, and the image score plus the few-shot map's
  maximum (APRIL-GAN, MVFA-AD); ``mean`` halves both sums (WinCLIP+ averages), keeping maps in [0, 1].

This module reads no files and logs nothing: the engine builds, saves and reuses banks
(:mod:`medzsad.engine.references`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from medzsad.backbone.visual import DualPathVisionEncoder, TokenTap
from medzsad.methods.base import ForwardState, MethodOutput, ZsadMethod
from medzsad.methods.fewshot_config import FewShotConfig
from medzsad.methods.postprocess import gaussian_blur, patch_grid_maps, upsample


def default_layers(depth: int) -> list[int]:
    """Every quarter of a ViT's depth, 1-indexed: ``[6, 12, 18, 24]`` for 24 blocks, ``[2, 4, 6, 8]`` for 8."""
    return sorted({max(1, round(depth * quarter / 4)) for quarter in range(1, 5)})


def resolve_layers(config: FewShotConfig, depth: int) -> tuple[int, ...]:
    """The configured layers as positive 1-indexed block numbers, sorted, checked against ``depth``."""
    layers = config.layers if config.layers is not None else default_layers(depth)
    wanted = sorted({layer if layer > 0 else depth + 1 + layer for layer in layers})
    if not wanted or any(not 1 <= layer <= depth for layer in wanted):
        raise ValueError(f"fewshot.layers: expected blocks in 1..{depth} (or negative), got {layers}")
    return tuple(wanted)


def patch_features(tap: TokenTap, layer: int, config: FewShotConfig, encoder: DualPathVisionEncoder) -> torch.Tensor:
    """L2-normalised patch features ``[B, h*w, C]`` of one tapped layer, in the configured stream and space."""
    streams = tap.original if config.stream == "original" else tap.value_value
    if layer not in streams:
        raise ValueError(
            f"fewshot.stream: the method runs no {config.stream} stream at block {layer}; use stream=original"
        )
    tokens = streams[layer][:, 1:]
    if config.project:
        tokens = encoder.visual.ln_post(tokens) @ encoder.visual.proj
    return F.normalize(tokens.float(), dim=-1)


def nearest_similarity(
    queries: torch.Tensor, bank: torch.Tensor, block_elements: int = 1 << 24
) -> tuple[torch.Tensor, torch.Tensor]:
    """Highest cosine similarity of each query to the bank, and the bank row that gives it.

    ``queries [Q, C]`` and ``bank [N, C]``, both L2-normalised, on one device. The bank is scanned in
    row blocks so one ``[Q, rows]`` similarity block holds at most ``block_elements`` values; ties keep
    the lowest row. Returns ``(values [Q], rows [Q])`` (int64).
    """
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    if queries.shape[0] * bank.shape[0] <= block_elements:  # one block: no loop (and traceable for export)
        values, rows = (queries @ bank.t()).max(dim=1)
        return values, rows
    rows = max(1, block_elements // max(1, queries.shape[0]))
    best = torch.full((queries.shape[0],), -float("inf"), device=queries.device, dtype=queries.dtype)
    where = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    for start in range(0, bank.shape[0], rows):
        values, index = (queries @ bank[start : start + rows].t()).max(dim=1)
        better = values > best
        best = torch.where(better, values, best)
        where = torch.where(better, index + start, where)
    return best, where


def greedy_coreset(features: torch.Tensor, size: int, block_elements: int = 1 << 24) -> torch.Tensor:
    """Indices of a greedy k-centre coreset of ``size`` rows of ``features [N, C]`` (L2-normalised).

    PatchCore's selection: start from row 0 (PatchCore starts from a random row; a fixed start keeps
    banks reproducible), then repeatedly add the row farthest from everything chosen so far. Distances
    are cosine distances, a monotone function of the Euclidean distance between unit vectors, so the
    choice is PatchCore's on normalised features (without its optional random projection).
    """
    count = features.shape[0]
    if size >= count:
        return torch.arange(count, device=features.device)
    chosen = torch.empty(size, dtype=torch.long, device=features.device)
    chosen[0] = 0
    nearest = 1 - features @ features[0]
    for step in range(1, size):
        chosen[step] = torch.argmax(nearest)
        nearest = torch.minimum(nearest, 1 - features @ features[chosen[step]])
    return chosen


@dataclass
class MemoryBank:
    """Normal patch features per layer and what they were built from.

    Attributes:
        features: ``layer -> [N, C]`` L2-normalised float32 patch features.
        meta: string metadata saved with the bank (method, checkpoint digest, reference ids, k,
            layers, stream...); never paths or identifiers of patients.
    """

    features: dict[int, torch.Tensor]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.features))

    @property
    def reference_ids(self) -> list[str]:
        return [i for i in self.meta.get("reference_ids", "").split(",") if i]

    def __len__(self) -> int:
        return min((t.shape[0] for t in self.features.values()), default=0)


def collect_bank(
    method: ZsadMethod, batches: Iterable[torch.Tensor], config: FewShotConfig, meta: Mapping[str, str]
) -> MemoryBank:
    """Run ``method`` over reference image batches ``[B, 3, S, S]`` (on the method's device) and keep
    the patch features of the configured layers; reduce with the greedy coreset when configured."""
    layers = resolve_layers(config, method.backbone.num_visual_layers)
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for images in batches:
        with torch.no_grad():  # not inference mode: the bank must stay usable where autograd is on
            _, tap = method.predict_with_tokens(images, layers)
            for layer in layers:
                parts[layer].append(patch_features(tap, layer, config, method.backbone.visual).flatten(0, 1))
    features = {layer: torch.cat(chunks) for layer, chunks in parts.items() if chunks}
    if config.max_bank_size is not None:
        for layer, rows in features.items():
            if rows.shape[0] > config.max_bank_size:
                features[layer] = rows[greedy_coreset(rows, config.max_bank_size, config.block_elements)]
    return MemoryBank({layer: rows.float().cpu().contiguous() for layer, rows in features.items()}, dict(meta))


def fuse_maps(zero_shot: torch.Tensor, few_shot: torch.Tensor, rule: str) -> torch.Tensor:
    """The fused map: ``(zero_shot + few_shot) / 2`` (``mean``) or ``zero_shot + few_shot`` (``sum``)."""
    return (zero_shot + few_shot) / 2 if rule == "mean" else zero_shot + few_shot


def fuse_scores(scores: torch.Tensor, few_shot_maps: torch.Tensor, rule: str) -> torch.Tensor:
    """Image scores ``[B]`` with the few-shot maps' maxima ``[B, H, W] -> [B]`` by ``rule``."""
    peak = few_shot_maps.flatten(1).amax(dim=1)
    if rule == "mean_max":
        return (scores + peak) / 2
    if rule == "add_max":
        return scores + peak
    return scores


@dataclass
class FewShotState(ForwardState):
    """What a few-shot prediction adds to the wrapped method's own state.

    Attributes:
        zero_shot: the wrapped method's output, unchanged (its ``state`` included).
        few_shot_maps: ``[B, H, W]`` smoothed nearest-neighbour maps.
        few_shot_raw: ``[B, H, W]`` the same before smoothing.
        nearest_bank_rows: ``[L, B, h*w]`` per layer and patch, the bank row of the nearest normal patch.
    """

    zero_shot: MethodOutput
    few_shot_maps: torch.Tensor
    few_shot_raw: torch.Tensor
    nearest_bank_rows: torch.Tensor


class FewShotMethod(ZsadMethod):
    """A method with a memory bank of normal patches; its zero-shot computation is the wrapped method's.

    With an empty bank (k = 0) :meth:`predict` returns the wrapped method's output as it is.

    Args:
        method: the zero-shot method (trained or training-free).
        bank: the references' patch features (its layers must be the configured ones).
        config: :class:`FewShotConfig`.
    """

    def __init__(self, method: ZsadMethod, bank: MemoryBank, config: FewShotConfig) -> None:
        super().__init__(method.backbone, method.config)
        self.name = method.name
        self.training_free = method.training_free
        self.method = method
        self.prompt = method.prompt
        self.fewshot = config
        self.bank = bank
        self.bank_path: Path | None = None  # where the engine saved or found the bank
        self._layers = resolve_layers(config, method.backbone.num_visual_layers)
        if len(bank) and bank.layers != self._layers:
            raise ValueError(
                f"fewshot.layers: the memory bank holds layers {list(bank.layers)}, not {list(self._layers)}"
            )
        for layer, rows in bank.features.items():
            self.register_buffer(f"bank_{layer}", rows, persistent=False)

    def noise_shape(self, training: bool) -> tuple[int, ...] | None:
        """The wrapped method's draws: the engine seeds them per sample as for the method itself."""
        return self.method.noise_shape(training)

    def few_shot_raw(self, tap: TokenTap, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(raw map [B, H, W], nearest bank rows [L, B, h*w])``: per patch, the cosine distance to the
        nearest bank patch, averaged over layers, upsampled bilinearly like the zero-shot maps."""
        encoder = self.backbone.visual
        grid = encoder.grid_for(image_size)
        distances, rows = [], []
        for layer in self._layers:
            queries = patch_features(tap, layer, self.fewshot, encoder)
            similarity, nearest = nearest_similarity(
                queries.flatten(0, 1), getattr(self, f"bank_{layer}"), self.fewshot.block_elements
            )
            distances.append(1 - similarity.view(queries.shape[:2]))
            rows.append(nearest.view(queries.shape[:2]))
        mean = torch.stack(distances).mean(dim=0)
        raw = upsample(patch_grid_maps(mean.unsqueeze(-1), grid), image_size, "bilinear")[:, 0]
        return raw, torch.stack(rows)

    def predict(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MethodOutput:
        """The zero-shot output fused with the nearest-neighbour map (see :class:`FewShotConfig`);
        ``noise`` (a sampling method's draws) goes to the wrapped method unchanged."""
        if not len(self.bank):
            return self.method.predict(images, noise)
        out, tap = self.method.predict_with_tokens(images, self._layers, noise)
        raw, nearest = self.few_shot_raw(tap, (images.shape[-2], images.shape[-1]))
        smooth = gaussian_blur(raw, self.method.config.sigma)
        rule = self.fewshot.map_rule
        return MethodOutput(
            image_scores=fuse_scores(out.image_scores, smooth, self.fewshot.score_rule),
            anomaly_maps=fuse_maps(out.anomaly_maps, smooth, rule),
            raw_maps=fuse_maps(out.raw_maps, raw, rule),
            state=FewShotState(out, smooth, raw, nearest),
        )
