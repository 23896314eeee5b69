"""AnomalyCLIP (Zhou et al., ICLR 2024): object-agnostic learnable prompts (methods-spec §2).

Two prompts, ``"[ctx_pos ×12] object."`` and ``"[ctx_neg ×12] damaged object."``, plus 8 × 4 deep
prompt tokens at text blocks 2-9. Patch features come from the last V-V (DPAM) layer of blocks 6-24;
the pixel map is the abnormal probability of a 2-way softmax at patch level, upsampled bilinearly and
smoothed with a Gaussian (σ = 4); the image score is the softmax of the global feature alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from medzsad.backbone.clip import ClipBackbone
from medzsad.backbone.visual import VisualFeatures
from medzsad.methods.base import ForwardState, LossOutput, MethodConfig, MethodOutput, ZsadMethod
from medzsad.methods.losses import segmentation_loss
from medzsad.methods.postprocess import gaussian_blur, patch_grid_maps, upsample
from medzsad.prompts import PromptSlots, init_context, init_deep_prompts, placeholder_prompt


@dataclass
class AnomalyCLIPConfig(MethodConfig):
    """AnomalyCLIP settings; defaults are the official ``train.sh``/``test.sh`` values.

    Attributes:
        n_ctx: learnable context tokens per prompt (12).
        deep_prompt_layers: text blocks receiving deep prompts, from block 2 (8 = official depth 9).
        deep_prompt_tokens: deep prompt tokens per block (4).
        class_word: the object-agnostic class word ("object").
        abnormal_word: state word of the abnormal prompt ("damaged").
        dpam_start_layer: first visual block with the V-V stream (6: blocks 6-24 of ViT-L/14).
        feature_layers: visual blocks whose V-V tokens make maps (1-indexed, negative from the end).
            Default ``[-1]``, the last block: layer 24 of ViT-L/14, the official setting (methods-spec §2.1).
        local_loss_weight: λ on focal + dice terms (4, kept from the four-copies era, §2.1).
        sigma: Gaussian smoothing of the maps (4).
    """

    n_ctx: int = 12
    deep_prompt_layers: int = 8
    deep_prompt_tokens: int = 4
    class_word: str = "object"
    abnormal_word: str = "damaged"
    dpam_start_layer: int = 6
    feature_layers: list[int] = field(default_factory=lambda: [-1])
    local_loss_weight: float = 4.0


class AnomalyCLIPPrompt(nn.Module):
    """Trainable part of AnomalyCLIP; parameter names follow the official checkpoint."""

    def __init__(self, backbone: ClipBackbone, config: AnomalyCLIPConfig) -> None:
        super().__init__()
        width = backbone.text_width
        self.ctx_pos = init_context(1, 1, config.n_ctx, width)
        self.ctx_neg = init_context(1, 1, config.n_ctx, width)
        self.compound_prompts_text = init_deep_prompts(config.deep_prompt_layers, config.deep_prompt_tokens, width)
        texts = [
            placeholder_prompt(config.n_ctx, f"{config.class_word}."),
            placeholder_prompt(config.n_ctx, f"{config.abnormal_word} {config.class_word}."),
        ]
        self.slots = PromptSlots(backbone.text, backbone.tokenize, texts, config.n_ctx)

    def token_embeddings(self) -> torch.Tensor:
        """``[2, T, W]``: normal prompt, abnormal prompt."""
        context = torch.cat([self.ctx_pos[0], self.ctx_neg[0]], dim=0)
        return self.slots.assemble(context)


@dataclass
class AnomalyCLIPState(ForwardState):
    """One forward pass of AnomalyCLIP.

    Attributes:
        features: the backbone pass (global feature, V-V patch tokens of ``feature_layers``).
        text_features: ``[2, D]`` L2-normalised (normal, abnormal).
        image_features: ``[B, D]`` L2-normalised global features.
        image_logits: ``[B, 2]``.
        patch_probs: per feature layer, ``[B, N, 2]`` patch probabilities (CLS removed).
        full_probs: per feature layer, ``[B, 2, S, S]`` upsampled bilinearly.
    """

    features: VisualFeatures
    text_features: torch.Tensor
    image_features: torch.Tensor
    image_logits: torch.Tensor
    patch_probs: list[torch.Tensor]
    full_probs: list[torch.Tensor]


class AnomalyCLIP(ZsadMethod):
    """AnomalyCLIP on the shared backbone.

    Args:
        backbone: the frozen CLIP.
        config: :class:`AnomalyCLIPConfig`.
    """

    name = "anomalyclip"
    config_class = AnomalyCLIPConfig
    official_name = "AnomalyCLIP"
    official_dead_prefixes = ("compound_prompt_projections.",)
    config: AnomalyCLIPConfig
    prompt: AnomalyCLIPPrompt
    prompt_class = AnomalyCLIPPrompt

    # -- text side ---------------------------------------------------------------------------------
    def encode_prompts(self) -> torch.Tensor:
        """Un-normalised text embeddings ``[2, D]`` (normal, abnormal)."""
        slots = self.prompt.slots
        return self.encode_prompt_tokens(self.prompt.token_embeddings(), slots.token_ids, slots.length)

    def text_features(self) -> torch.Tensor:
        """L2-normalised ``[2, D]``; cached while the prompts are unchanged (the text does not depend
        on the image)."""
        return self.cached_text(lambda: F.normalize(self.encode_prompts(), dim=-1))

    # -- image side --------------------------------------------------------------------------------
    def forward_state(self, images: torch.Tensor) -> AnomalyCLIPState:
        """Everything maps, scores and the loss are made of, for ``images [B, 3, S, S]``."""
        config = self.config
        features = self.backbone.encode_image(images, tuple(config.feature_layers), config.dpam_start_layer)
        text = self.text_features()
        image_features = F.normalize(features.global_features, dim=-1)
        image_logits = image_features @ text.t() / config.temperature
        patch_probs = []
        for tokens in features.patch_features:
            logits = F.normalize(tokens, dim=-1) @ text.t() / config.temperature
            patch_probs.append(logits.softmax(dim=-1)[:, 1:])
        full_probs = [
            upsample(patch_grid_maps(p, features.grid_size), images.shape[-2:], "bilinear") for p in patch_probs
        ]
        return AnomalyCLIPState(features, text, image_features, image_logits, patch_probs, full_probs)

    def predict(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MethodOutput:
        """Scores and maps for ``images [B, 3, S, S]`` (CLIP-normalised)."""
        self.check_noise(noise, images.shape[0], False, images)
        state = self.forward_state(images)
        scores = state.image_logits.softmax(dim=-1)[:, 1]
        # (p_abn + 1 - p_norm) / 2 is the reference formula; it equals p_abn up to one ulp.
        raw = sum((p[:, 1] + 1 - p[:, 0]) / 2 for p in state.full_probs)
        maps = gaussian_blur(raw, self.config.sigma)
        return MethodOutput(image_scores=scores, anomaly_maps=maps, raw_maps=raw, state=state)

    def loss(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None = None
    ) -> LossOutput:
        """Training loss: image CE + λ·Σ_layers (focal + dice_abn + dice_norm) (methods-spec §2.4)."""
        self.check_noise(noise, images.shape[0], True, images)
        state = self.forward_state(images)
        terms: dict[str, torch.Tensor] = {"image_ce": F.cross_entropy(state.image_logits, labels.long())}
        local = torch.zeros((), device=images.device)
        for probs in state.full_probs:
            for name, value in segmentation_loss(probs, masks).items():
                terms[name] = terms.get(name, 0) + value
                local = local + value
        terms["local_weighted"] = self.config.local_loss_weight * local
        total = terms["image_ce"] + terms["local_weighted"]
        return LossOutput(total=total, terms=terms)
