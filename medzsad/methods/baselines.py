"""Training-free baselines: CLIP with two-state prompts (CLIP-AC style) and WinCLIP-style window maps.

Neither method has anything to learn: ``self.prompt`` is an empty module (checkpoints are empty), the
text features are fixed prompt ensembles encoded once by the frozen CLIP text tower and cached, and
:meth:`loss` raises. Both run on the shared backbone at the configured image size, so their numbers
sit next to the learned methods in the same tables.

* :class:`ClipPromptBaseline` (``"clip"``): image score from the standard CLIP image embedding
  (``ln_post(CLS) @ proj``) against the averaged normal / abnormal prompt embeddings; pixel map from
  the patch tokens of the last block, by default taken from the V-V (DPAM) stream, because plain q-k
  patch tokens of CLIP carry almost no local semantics.
* :class:`WinClipBaseline` (``"winclip"``): WinCLIP's zero-shot recipe (methods-spec §5.3): every
  k×k window of patches (k = 2, 3) is encoded on its own by the unchanged ViT and pooled at the CLS;
  each window's abnormal probability is spread to its patches by a harmonic mean over the windows
  covering the patch, and the patch map is the harmonic mean of the image score and the per-scale maps.

The prompt lists below are ours, written for this project in the spirit of the published ensembles
(state words x templates, class name inserted); they are not the lists of the WinCLIP paper, its
anomalib port, or AnomalyCLIP's unused handcrafted ensemble (methods-spec §2.2).

Window encoding. A window is encoded by *gathering* its patch tokens (after patch embedding, positional
embedding and ``ln_pre``) together with the CLS token into a short sequence and running the unchanged
transformer on it, all windows of a scale batched into one sequence batch. For a ViT this equals running
the full sequence with an attention mask that lets the window's tokens (and the CLS) attend only to each
other: attention is the only operation that mixes tokens, every other operation (LayerNorm, MLP,
residuals) is per token, and the positional information was added before the gathering. The window's
CLS therefore sees exactly what it would see under the mask, with no leakage from other windows, at a
cost of ``1 + k²`` tokens per window instead of the full sequence. ``tests/methods/test_baselines.py``
checks this against the masked full-sequence computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medzsad.backbone.visual import DualPathVisionEncoder
from medzsad.methods.base import ForwardState, MethodConfig, MethodOutput, ZsadMethod
from medzsad.methods.postprocess import gaussian_blur, patch_grid_maps, upsample

# -- prompt lists (ours; see the module docstring) ---------------------------------------------------

#: Small CLIP-AC-style ensemble: two wordings per state, three templates.
CLIP_NORMAL_STATES: tuple[str, ...] = ("normal {}", "intact {}")
CLIP_ABNORMAL_STATES: tuple[str, ...] = ("damaged {}", "defective {}")
CLIP_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a photo of the {}.", "a close-up photo of the {}.")

#: WinCLIP-style compositional ensemble: 7 normal states, 4 abnormal states, 21 templates.
WINCLIP_NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "normal {}",
    "intact {}",
    "healthy {}",
    "{} in good condition",
    "{} with no anomaly",
    "{} without any abnormality",
)
WINCLIP_ABNORMAL_STATES: tuple[str, ...] = (
    "damaged {}",
    "abnormal {}",
    "defective {}",
    "{} with an anomaly",
)
WINCLIP_TEMPLATES: tuple[str, ...] = (
    "a photo of the {}.",
    "a picture of the {}.",
    "an image of the {}.",
    "a close-up photo of the {}.",
    "a zoomed-in image of the {}.",
    "a cropped photo of the {}.",
    "a centred photo of the {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a blurry photo of the {}.",
    "a sharp photo of the {}.",
    "a low-resolution image of the {}.",
    "a high-resolution image of the {}.",
    "a grayscale image of the {}.",
    "a scan of the {}.",
    "an inspection image of the {}.",
    "a top-down photo of the {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "the {} in the image.",
    "this is the {}.",
)

# Harmonic means divide by probabilities; this floor keeps 1/p finite (a score this small is zero for
# every purpose) without overflowing float32 when a few reciprocals are summed.
_PROB_FLOOR = 1e-30


# -- configs -----------------------------------------------------------------------------------------
@dataclass
class PromptEnsembleConfig(MethodConfig):
    """Fields shared by the training-free baselines.

    Attributes:
        class_name: the object word put into every state ("object"; a data set's class name, e.g.
            "brain", gives WinCLIP-style class-aware prompts).
        normal_states: state phrases with one ``{}`` for the class name, normal side.
        abnormal_states: same, abnormal side.
        templates: sentence templates with one ``{}`` for the state phrase. Every state is combined with
            every template; the L2-normalised embeddings of one side are averaged and re-normalised.
    """

    class_name: str = "object"
    normal_states: list[str] = field(default_factory=lambda: list(CLIP_NORMAL_STATES))
    abnormal_states: list[str] = field(default_factory=lambda: list(CLIP_ABNORMAL_STATES))
    templates: list[str] = field(default_factory=lambda: list(CLIP_TEMPLATES))

    def validate(self) -> None:
        super().validate()
        for kind in ("normal_states", "abnormal_states", "templates"):
            _check_placeholders(kind, getattr(self, kind))


@dataclass
class ClipPromptConfig(PromptEnsembleConfig):
    """Plain CLIP with two-state prompts (CLIP-AC style).

    Attributes:
        temperature: logits are ``cos / temperature``; 0.01, i.e. ``100·cos``, CLIP's own zero-shot
            scale (OpenAI's learned ``logit_scale``), used for both the image score and the maps.
        sigma: Gaussian smoothing of the upsampled map (4, as the AnomalyCLIP lineage; 0 disables).
        dpam_start_layer: first visual block (1-indexed) of the V-V stream whose patch tokens make the
            map (6, AnomalyCLIP's setting for ViT-L/14). ``None`` is pure CLIP: q-k patch tokens, which
            localise poorly. The image score always uses the unchanged (q-k) CLS.
        feature_layers: visual blocks whose patch tokens make maps (1-indexed, negative from the end);
            the per-layer probability maps are averaged.
    """

    temperature: float = 0.01
    sigma: float = 4.0
    dpam_start_layer: int | None = 6
    feature_layers: list[int] = field(default_factory=lambda: [-1])


@dataclass
class WinClipConfig(PromptEnsembleConfig):
    """WinCLIP-style zero-shot maps from window embeddings (methods-spec §5.3).

    Attributes:
        temperature: 0.07, as WinCLIP.
        sigma: Gaussian smoothing of the upsampled map; 0 (none), as WinCLIP.
        window_sizes: window sides in patches (2 and 3, as WinCLIP).
        window_stride: step between windows in patches (1, as WinCLIP); with a larger stride the last
            row and column of windows are still placed so that every patch is covered.
        include_image_score: put the image score into the harmonic mean of the patch map (WinCLIP does).
        window_batch_size: windows encoded per transformer call (bounds memory, not results).
        normal_states, abnormal_states, templates: the 7 x 4 x 21 compositional ensemble (ours).
    """

    temperature: float = 0.07
    sigma: float = 0.0
    normal_states: list[str] = field(default_factory=lambda: list(WINCLIP_NORMAL_STATES))
    abnormal_states: list[str] = field(default_factory=lambda: list(WINCLIP_ABNORMAL_STATES))
    templates: list[str] = field(default_factory=lambda: list(WINCLIP_TEMPLATES))
    window_sizes: list[int] = field(default_factory=lambda: [2, 3])
    window_stride: int = 1
    include_image_score: bool = True
    window_batch_size: int = 4096

    def validate(self) -> None:
        super().validate()
        if not self.window_sizes:
            raise ValueError("window_sizes must not be empty")
        if self.window_batch_size < 1:
            raise ValueError(f"window_batch_size must be >= 1, got {self.window_batch_size}")


# -- helpers -----------------------------------------------------------------------------------------
def ensemble_prompts(states: Sequence[str], templates: Sequence[str], class_name: str) -> list[str]:
    """Every state (class name filled in) put into every template, states outermost."""
    return [template.format(state.format(class_name)) for state in states for template in templates]


def _check_placeholders(kind: str, texts: Sequence[str]) -> None:
    if not texts:
        raise ValueError(f"{kind} must not be empty")
    bad = [text for text in texts if text.count("{}") != 1]
    if bad:
        raise ValueError(f"every entry of {kind} needs exactly one '{{}}' placeholder, got {bad[:3]}")


def _resolve_layers(layers: Sequence[int], num_layers: int) -> list[int]:
    wanted = [layer if layer > 0 else num_layers + 1 + layer for layer in layers]
    if not wanted or any(not 1 <= layer <= num_layers for layer in wanted):
        raise ValueError(f"feature layers must be in 1..{num_layers} (or negative), got {list(layers)}")
    return wanted


def _check_cls_pooling(encoder: DualPathVisionEncoder) -> None:
    visual = encoder.visual
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError("the training-free baselines need a CLS-pooled ViT (open_clip pool_type 'tok')")


def pool_cls(encoder: DualPathVisionEncoder, tokens: torch.Tensor) -> torch.Tensor:
    """Standard CLIP image embedding of token sequences ``[..., N, C]``: ``ln_post(CLS) @ proj``."""
    visual = encoder.visual
    return visual.ln_post(tokens[..., 0, :]) @ visual.proj


def window_indices(grid: tuple[int, int], size: int, stride: int = 1) -> torch.Tensor:
    """Row-major patch indices ``[n_windows, size*size]`` of the ``size x size`` windows of a grid.

    Windows start every ``stride`` patches; a last start is added where needed so that the windows
    touch the bottom and right edges (every patch is covered at least once).
    """
    rows, cols = grid
    if not 1 <= size <= min(rows, cols):
        raise ValueError(f"window size {size} does not fit a {rows}x{cols} patch grid")
    if stride < 1:
        raise ValueError(f"window stride must be >= 1, got {stride}")

    def starts(extent: int) -> list[int]:
        values = list(range(0, extent - size + 1, stride))
        if values[-1] != extent - size:
            values.append(extent - size)
        return values

    offsets = torch.arange(size)
    local = (offsets[:, None] * cols + offsets[None, :]).reshape(-1)
    corners = torch.tensor([r * cols + c for r in starts(rows) for c in starts(cols)])
    return corners[:, None] + local[None, :]


def window_membership(indices: torch.Tensor, num_patches: int) -> torch.Tensor:
    """``[n_windows, num_patches]`` float 0/1 matrix: does window w cover patch p."""
    membership = torch.zeros(indices.shape[0], num_patches)
    membership.scatter_(1, indices, 1.0)
    return membership


def harmonic_spread(window_scores: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """Patch scores ``[B, P]`` from window scores ``[B, W]``: per patch, the harmonic mean of the scores
    of the windows covering it, ``n_p / Σ_{w ∋ p} 1/s_w`` (a dense product, deterministic on GPU)."""
    reciprocal = 1.0 / window_scores.float().clamp_min(_PROB_FLOOR)
    return membership.sum(dim=0) / (reciprocal @ membership)


def harmonic_mean(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Harmonic mean along ``dim`` of non-negative values (zeros give zero)."""
    return values.shape[dim] / (1.0 / values.float().clamp_min(_PROB_FLOOR)).sum(dim=dim)


# -- methods -----------------------------------------------------------------------------------------
@dataclass
class ClipPromptState(ForwardState):
    """Intermediates of the CLIP baseline: ``text_features [2, D]``, normalised ``image_features [B, D]``,
    ``patch_probs [B, N]`` (abnormal probability per patch, averaged over the feature layers)."""

    text_features: torch.Tensor
    image_features: torch.Tensor
    patch_probs: torch.Tensor


@dataclass
class WinClipState(ForwardState):
    """Intermediates of the WinCLIP baseline.

    Attributes:
        text_features: ``[2, D]``.
        image_features: ``[B, D]`` normalised.
        window_scores: per window size, ``[B, n_windows]`` abnormal probabilities.
        patch_maps: per window size, ``[B, h, w]`` harmonic spread of the window scores.
        patch_map: ``[B, h, w]`` harmonic mean over the scales (and the image score).
    """

    text_features: torch.Tensor
    image_features: torch.Tensor
    window_scores: dict[int, torch.Tensor]
    patch_maps: dict[int, torch.Tensor]
    patch_map: torch.Tensor


class _TrainingFreeBaseline(ZsadMethod):
    """Common part: fixed prompt ensemble, cached text features, no loss, empty prompt module."""

    training_free: ClassVar[bool] = True
    config: PromptEnsembleConfig

    def build_prompt(self) -> nn.Module:
        _check_cls_pooling(self.backbone.visual)
        return nn.Module()  # nothing to learn: checkpoints are empty

    # -- text side ---------------------------------------------------------------------------------
    def prompt_texts(self) -> tuple[list[str], list[str]]:
        """The normal and the abnormal prompt sentences of the ensemble."""
        config = self.config
        return (
            ensemble_prompts(config.normal_states, config.templates, config.class_name),
            ensemble_prompts(config.abnormal_states, config.templates, config.class_name),
        )

    def _encode_side(self, texts: list[str], device: torch.device, chunk: int = 128) -> torch.Tensor:
        token_ids = self.backbone.tokenize(texts).to(device)
        parts = [self.backbone.clip.encode_text(ids) for ids in token_ids.split(chunk)]
        embeddings = F.normalize(torch.cat(parts).float(), dim=-1)
        return F.normalize(embeddings.mean(dim=0), dim=-1)

    def text_features(self) -> torch.Tensor:
        """L2-normalised ``[2, D]`` float32 (normal, abnormal), computed once per device and prompt set."""
        normal, abnormal = self.prompt_texts()

        def encode() -> torch.Tensor:
            device = self.backbone.clip.token_embedding.weight.device
            return torch.stack([self._encode_side(normal, device), self._encode_side(abnormal, device)])

        return self.cached_text(encode, tuple(normal), tuple(abnormal))

    def _start(self, images: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, tuple[int, int]]:
        """The text features ``[2, D]`` and the patch grid of ``images``; no draws are accepted."""
        self.check_noise(noise, images.shape[0], False, images)
        return self.text_features(), self.backbone.visual.grid_for((images.shape[-2], images.shape[-1]))

    def _probabilities(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Abnormal probability of a 2-way softmax over ``cos / temperature``, float32, shape ``[...]``."""
        logits = F.normalize(features.float(), dim=-1) @ text.t() / self.config.temperature
        return logits.softmax(dim=-1)[..., 1]


class ClipPromptBaseline(_TrainingFreeBaseline):
    """Plain CLIP with two-state prompt ensembles (CLIP-AC style); see :class:`ClipPromptConfig`.

    Args:
        backbone: the frozen CLIP.
        config: :class:`ClipPromptConfig`.
    """

    name = "clip"
    config_class = ClipPromptConfig

    config: ClipPromptConfig

    def build_prompt(self) -> nn.Module:
        encoder = self.backbone.visual
        self._layers = _resolve_layers(self.config.feature_layers, encoder.num_layers)
        start = self.config.dpam_start_layer
        if start is not None and not 1 <= start <= encoder.num_layers:
            raise ValueError(f"dpam_start_layer must be in 1..{encoder.num_layers} or None, got {start}")
        return super().build_prompt()

    @torch.no_grad()
    def predict(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MethodOutput:
        """Scores and maps for ``images [B, 3, S, S]`` (CLIP-normalised)."""
        config, encoder = self.config, self.backbone.visual
        text, grid = self._start(images, noise)
        final, collected = encoder.run_blocks(encoder.embed(images), config.dpam_start_layer, self._layers)
        image_features = pool_cls(encoder, final)
        scores = self._probabilities(image_features, text)
        patch_probs = []
        for layer in self._layers:
            patch_features = encoder.visual.ln_post(collected[layer][:, 1:]) @ encoder.visual.proj
            patch_probs.append(self._probabilities(patch_features, text))
        patch_mean = torch.stack(patch_probs).mean(dim=0)
        raw = upsample(patch_grid_maps(patch_mean.unsqueeze(-1), grid), images.shape[-2:], "bilinear")[:, 0]
        maps = gaussian_blur(raw, config.sigma)
        state = ClipPromptState(text, F.normalize(image_features.float(), dim=-1), patch_mean)
        return MethodOutput(image_scores=scores, anomaly_maps=maps, raw_maps=raw, state=state)


class WinClipBaseline(_TrainingFreeBaseline):
    """WinCLIP-style zero-shot window maps with a compositional prompt ensemble; see :class:`WinClipConfig`.

    Args:
        backbone: the frozen CLIP (run without the V-V stream: windows need the CLS of plain CLIP).
        config: :class:`WinClipConfig`.
    """

    name = "winclip"
    config_class = WinClipConfig

    config: WinClipConfig

    def build_prompt(self) -> nn.Module:
        self._windows: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        return super().build_prompt()

    def windows(self, grid: tuple[int, int], size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached ``(indices [W, size²], membership [W, P])`` for a grid, window size and device."""
        key = (grid, size, self.config.window_stride, device)
        if key not in self._windows:
            indices = window_indices(grid, size, self.config.window_stride)
            membership = window_membership(indices, grid[0] * grid[1])
            self._windows[key] = (indices.to(device), membership.to(device))
        return self._windows[key]

    def encode_windows(self, tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Window embeddings ``[B, W, D]`` (not normalised) from embedded tokens ``[B, 1+P, C]``.

        Each window's patch tokens are gathered behind the CLS token and the plain ViT runs on these
        short sequences, batched over images x windows in chunks of ``window_batch_size``.
        """
        batch, _, width = tokens.shape
        count, area = indices.shape
        cls = tokens[:, :1].unsqueeze(1).expand(batch, count, 1, width)
        patches = tokens[:, 1:][:, indices]  # [B, W, area, C]
        sequences = torch.cat([cls, patches], dim=2).reshape(batch * count, 1 + area, width)
        encoder = self.backbone.visual
        pooled = [
            pool_cls(encoder, encoder.run_blocks(chunk)[0]) for chunk in sequences.split(self.config.window_batch_size)
        ]
        return torch.cat(pooled).reshape(batch, count, -1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MethodOutput:
        """Scores and maps for ``images [B, 3, S, S]`` (CLIP-normalised)."""
        config, encoder = self.config, self.backbone.visual
        text, grid = self._start(images, noise)
        tokens = encoder.embed(images)
        image_features = pool_cls(encoder, encoder.run_blocks(tokens)[0])
        scores = self._probabilities(image_features, text)
        scale_maps = []
        window_scores_by_size, patch_maps = {}, {}
        for size in config.window_sizes:
            indices, membership = self.windows(grid, size, images.device)
            window_scores = self._probabilities(self.encode_windows(tokens, indices), text)
            patch_scores = harmonic_spread(window_scores, membership).reshape(-1, *grid)
            scale_maps.append(patch_scores)
            window_scores_by_size[size], patch_maps[size] = window_scores, patch_scores
        if config.include_image_score:
            scale_maps.insert(0, scores[:, None, None].expand(-1, *grid))
        patch_map = harmonic_mean(torch.stack(scale_maps), dim=0)
        raw = upsample(patch_map.unsqueeze(1), images.shape[-2:], "bilinear")[:, 0]
        maps = gaussian_blur(raw, config.sigma)
        features = F.normalize(image_features.float(), dim=-1)
        state = WinClipState(text, features, window_scores_by_size, patch_maps, patch_map)
        return MethodOutput(image_scores=scores, anomaly_maps=maps, raw_maps=raw, state=state)
