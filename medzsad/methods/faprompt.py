"""FAPrompt (Zhu et al., ICCV 2025): fine-grained abnormality prompts (methods-spec §3).

CAP, compound abnormality prompts: one normal prompt ``"[ctx_pos ×5] object."`` and ``K = 10``
abnormality prompts ``"[ctx_pos ×5] [ctx_neg_k ×2] damaged object."`` that share the normal tokens.
The abnormal text embedding is the mean of the ``K`` un-normalised embeddings; an orthogonality loss
keeps the ``K`` embeddings apart. Deep prompts (8 × 4 tokens at text blocks 2-9) as in AnomalyCLIP.

DAP, data-dependent abnormality prior: the static text pair scores every patch; ``k = 10`` normalised
patch tokens go through a small prior network whose output is added to every abnormal context token,
and the text encoder runs again per image (batched here: one pass for all images) to give a dynamic
text pair. Maps and image scores combine the static and the dynamic pass.

Compat behaviours of the official code (parity README §5 #8-#11), each switchable in the config:
the prior network receives the *first* ``k`` patch tokens, not the top-k (``prior_token_selection``);
the image focal loss treats a probability as a logit (``binary_focal_input``); the prior MSE is summed
over the normal images of the batch (``prior_loss_reduction``); the test map is smoothed with σ = 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medzsad.backbone.clip import ClipBackbone
from medzsad.backbone.visual import VisualFeatures
from medzsad.methods.base import BatchTerm, ForwardState, LossOutput, MethodConfig, MethodOutput, ZsadMethod
from medzsad.methods.losses import binary_focal_loss, segmentation_loss
from medzsad.methods.postprocess import gaussian_blur, patch_grid_maps, upsample
from medzsad.prompts import PromptSlots, init_context, init_deep_prompts, placeholder_prompt

PRIOR_TOKEN_SELECTIONS = ("first", "topk")
BINARY_FOCAL_INPUTS = ("probability_as_logit", "probability")
PRIOR_LOSS_REDUCTIONS = ("sum", "mean")


@dataclass
class FAPromptConfig(MethodConfig):
    """FAPrompt settings; defaults are the official ``train.sh``/``test.sh`` values and hard-coded constants.

    Attributes:
        sigma: Gaussian smoothing of the test maps (10, the official ``test.py`` default; AC uses 4).
        num_abnormality_prompts: K, the number of compound abnormality prompts (10).
        n_ctx_normal: learnable normal tokens, shared by the normal and every abnormality prompt (5).
        n_ctx_abnormal: learnable tokens of each abnormality prompt after the shared ones (2).
        deep_prompt_layers: text blocks receiving deep prompts, from block 2 (8 = official depth 9).
        deep_prompt_tokens: deep prompt tokens per block (4).
        class_word: the object-agnostic class word ("object").
        abnormal_word: state word of the abnormality prompts ("damaged").
        dpam_start_layer: first visual block with the V-V stream (6: blocks 6-24 of ViT-L/14). Patch
            features are the final V-V stream only (the official ``features_list`` is ignored).
        prior_topk: k, the number of patch tokens fed to the prior network (10).
        prior_hidden_divisor: the prior network is ``Linear(k·D, k·D // divisor) -> ReLU -> Linear(·, W)`` (16).
        prior_token_selection: ``"first"`` (compat): patches 0..k-1, what the official code does since its
            gathering loop indexes with the loop counter; ``"topk"``: the k patches with the highest static
            abnormal probability, in descending order (the paper's intent).
        binary_focal_input: ``"probability_as_logit"`` (compat): the image focal loss is
            ``BinaryFocalLoss(logits=True)`` applied to the score, which is already a probability;
            ``"probability"``: binary focal loss on the probability (corrected).
        binary_focal_alpha: α of the image focal loss (1).
        binary_focal_gamma: γ of the image focal loss (2).
        prior_loss_reduction: ``"sum"`` (compat): per-image MSE(bias, 0) summed over the normal images of
            the batch; ``"mean"``: averaged over them (independent of how many normal images a batch has).
        static_segmentation_weight: weight of focal + dice + dice on the static maps (1).
        dynamic_segmentation_weight: weight of focal + dice + dice on the dynamic maps (0.5).
        image_ce_weight: weight of the cross-entropy of the dynamic global logits (1).
        binary_focal_weight: weight of the image focal loss (1).
        orthogonality_weight: weight of Σ_{k<m} |cos(t_k, t_m)| over the static abnormality embeddings (0.1).
        prior_weight: weight of the prior loss (1).
    """

    sigma: float = 10.0
    num_abnormality_prompts: int = 10
    n_ctx_normal: int = 5
    n_ctx_abnormal: int = 2
    deep_prompt_layers: int = 8
    deep_prompt_tokens: int = 4
    class_word: str = "object"
    abnormal_word: str = "damaged"
    dpam_start_layer: int = 6
    prior_topk: int = 10
    prior_hidden_divisor: int = 16
    prior_token_selection: str = "first"
    binary_focal_input: str = "probability_as_logit"
    binary_focal_alpha: float = 1.0
    binary_focal_gamma: float = 2.0
    prior_loss_reduction: str = "sum"
    static_segmentation_weight: float = 1.0
    dynamic_segmentation_weight: float = 0.5
    image_ce_weight: float = 1.0
    binary_focal_weight: float = 1.0
    orthogonality_weight: float = 0.1
    prior_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        choices = {
            "prior_token_selection": PRIOR_TOKEN_SELECTIONS,
            "binary_focal_input": BINARY_FOCAL_INPUTS,
            "prior_loss_reduction": PRIOR_LOSS_REDUCTIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        positive = ("num_abnormality_prompts", "n_ctx_normal", "n_ctx_abnormal", "prior_topk", "prior_hidden_divisor")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.deep_prompt_layers > 0 and self.deep_prompt_tokens > self.n_ctx_normal:
            # Deep prompts overwrite positions 1..n, which must stay inside the shared normal tokens.
            raise ValueError("deep_prompt_tokens must not exceed n_ctx_normal")


class PriorNetwork(nn.Module):
    """The DAP prior network (official name ``patch_meta_net``): ``k·D -> k·D // divisor -> ReLU -> W``."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(in_features, hidden)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden, out_features)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, k, D]`` (normalised patch tokens) -> prior bias ``[B, W]``."""
        return self.linear2(self.relu(self.linear1(tokens.flatten(1))))


class FAPromptPrompt(nn.Module):
    """Trainable part of FAPrompt; parameter names follow the official checkpoint."""

    def __init__(self, backbone: ClipBackbone, config: FAPromptConfig) -> None:
        super().__init__()
        width = backbone.text_width
        count = config.num_abnormality_prompts
        self.ctx_pos = init_context(1, 1, config.n_ctx_normal, width)
        self.ctx_neg = init_context(1, count, config.n_ctx_abnormal, width)
        prior_in = config.prior_topk * backbone.embed_dim
        self.patch_meta_net = PriorNetwork(prior_in, prior_in // config.prior_hidden_divisor, width)
        self.compound_prompts_text = init_deep_prompts(config.deep_prompt_layers, config.deep_prompt_tokens, width)
        normal = placeholder_prompt(config.n_ctx_normal, f"{config.class_word}.", placeholder="N")
        abnormal = " ".join(
            ["N"] * config.n_ctx_normal
            + ["A"] * config.n_ctx_abnormal
            + [f"{config.abnormal_word} {config.class_word}."]
        )
        self.normal_slots = PromptSlots(backbone.text, backbone.tokenize, [normal], config.n_ctx_normal)
        self.abnormal_slots = PromptSlots(
            backbone.text, backbone.tokenize, [abnormal] * count, config.n_ctx_normal + config.n_ctx_abnormal
        )

    def abnormal_context(self, prior_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Context of the abnormality prompts: ``[K, n_pos + n_neg, W]``, or ``[B, K, n_pos + n_neg, W]``
        with ``prior_bias [B, W]`` added to every abnormal (``ctx_neg``) token."""
        shared = self.ctx_pos[0].expand(self.ctx_neg.shape[1], -1, -1)
        own = self.ctx_neg[0]
        if prior_bias is None:
            return torch.cat([shared, own], dim=1)
        own = own.unsqueeze(0) + prior_bias[:, None, None, :]
        shared = shared.unsqueeze(0).expand(prior_bias.shape[0], -1, -1, -1)
        return torch.cat([shared, own], dim=2)

    def static_token_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings ``[1 + K, T, W]`` (normal prompt first) and their ids ``[1 + K, T]``."""
        embeddings = torch.cat(
            [self.normal_slots.assemble(self.ctx_pos[0]), self.abnormal_slots.assemble(self.abnormal_context())]
        )
        ids = torch.cat([self.normal_slots.token_ids, self.abnormal_slots.token_ids])
        return embeddings, ids

    def dynamic_token_embeddings(self, prior_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt set of every image (normal prompt first, then the K abnormality prompts with that
        image's bias): embeddings ``[B·(1 + K), T, W]`` and ids ``[B·(1 + K), T]``, image-major."""
        batch = prior_bias.shape[0]
        normal = self.normal_slots.assemble(self.ctx_pos[0]).unsqueeze(0).expand(batch, -1, -1, -1)
        abnormal = self.abnormal_slots.assemble(self.abnormal_context(prior_bias))
        ids = torch.cat([self.normal_slots.token_ids, self.abnormal_slots.token_ids]).repeat(batch, 1)
        return torch.cat([normal, abnormal], dim=1).flatten(0, 1), ids


def _count_normal_images(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> int:
    return int((labels == 0).sum())


def text_pair(normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
    """``[..., 1, D]`` normal and ``[..., K, D]`` abnormality embeddings (un-normalised) -> the L2-normalised
    pair ``[..., 2, D]`` of (normal, mean of the abnormality embeddings)."""
    return F.normalize(torch.cat([normal, abnormal.mean(dim=-2, keepdim=True)], dim=-2), dim=-1)


def orthogonality_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """Σ_{k<m} |cos(t_k, t_m)| over ``[K, D]`` embeddings (a plain sum over the K(K-1)/2 pairs)."""
    unit = F.normalize(embeddings, dim=-1)
    cosines = (unit @ unit.t()).abs()
    return torch.triu(cosines, diagonal=1).sum()


def prior_mse_per_normal_image(prior_bias: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``MSE(bias_i, 0)`` (mean over the width) for each image with label 0, in batch order: ``[n_normal]``."""
    return prior_bias[labels == 0].pow(2).mean(dim=-1)


def select_prior_tokens(patch_tokens: torch.Tensor, abnormal_probs: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """The ``k`` tokens ``[B, k, D]`` fed to the prior network.

    Args:
        patch_tokens: ``[B, N, D]`` normalised patch tokens (CLS removed).
        abnormal_probs: ``[B, N]`` static abnormal probabilities.
        k: token count.
        mode: ``"first"`` (patches 0..k-1, official behaviour) or ``"topk"`` (highest probabilities first).
    """
    if mode == "first":
        return patch_tokens[:, :k]
    indices = abnormal_probs.topk(k, dim=1).indices
    return torch.gather(patch_tokens, 1, indices.unsqueeze(-1).expand(-1, -1, patch_tokens.shape[-1]))


@dataclass
class FAPromptState(ForwardState):
    """One forward pass of FAPrompt (static pass, prior, dynamic pass).

    Attributes:
        features: the backbone pass (global feature, final V-V patch tokens with the CLS first).
        text_static_features: ``[2, D]`` normalised static pair (normal, mean abnormality).
        text_static_neg_raw: ``[K, D]`` un-normalised static abnormality embeddings.
        text_dynamic_pos_raw, text_dynamic_neg_raw: ``[B, 1, D]`` and ``[B, K, D]`` per-image embeddings.
        text_dynamic_features: ``[B, 2, D]`` normalised per-image pairs.
        image_features: ``[B, D]`` normalised global features.
        patch_probs_static, patch_probs_dynamic: ``[B, N, 2]``.
        topk_indices: ``[B, k]`` patches of highest static abnormal probability.
        selected_tokens: ``[B, k, D]`` tokens fed to the prior network.
        prior_bias: ``[B, W]``.
        image_logits: ``[B, 2]`` dynamic global logits.
        global_prob_dynamic, map_max_score_static, map_max_score_dynamic: ``[B]``.
        image_scores: ``[B]`` the combined score.
        full_static, full_dynamic: ``[B, 2, S, S]`` upsampled probabilities.
    """

    features: VisualFeatures
    text_static_features: torch.Tensor
    text_static_neg_raw: torch.Tensor
    text_dynamic_pos_raw: torch.Tensor
    text_dynamic_neg_raw: torch.Tensor
    text_dynamic_features: torch.Tensor
    image_features: torch.Tensor
    patch_probs_static: torch.Tensor
    patch_probs_dynamic: torch.Tensor
    topk_indices: torch.Tensor
    selected_tokens: torch.Tensor
    prior_bias: torch.Tensor
    image_logits: torch.Tensor
    global_prob_dynamic: torch.Tensor
    map_max_score_static: torch.Tensor
    map_max_score_dynamic: torch.Tensor
    image_scores: torch.Tensor
    full_static: torch.Tensor
    full_dynamic: torch.Tensor


class FAPrompt(ZsadMethod):
    """FAPrompt on the shared backbone.

    Args:
        backbone: the frozen CLIP.
        config: :class:`FAPromptConfig`.
    """

    name = "faprompt"
    config_class = FAPromptConfig
    official_name = "FAPrompt"
    official_dead_prefixes = ("compound_prompt_projections.",)
    config: FAPromptConfig
    prompt: FAPromptPrompt
    prompt_class = FAPromptPrompt

    # -- text side ---------------------------------------------------------------------------------
    def _encode(self, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        length = max(s.length for s in (self.prompt.normal_slots, self.prompt.abnormal_slots))
        return self.encode_prompt_tokens(embeddings, token_ids, length)

    def encode_static_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised static embeddings: normal ``[1, D]`` and abnormality prompts ``[K, D]`` (one pass)."""
        raw = self._encode(*self.prompt.static_token_embeddings())
        return raw[:1], raw[1:]

    def encode_dynamic_prompts(self, prior_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised per-image embeddings with each image's prior bias ``[B, W]``: normal ``[B, 1, D]``
        and abnormality prompts ``[B, K, D]``, every image's prompt set in one batched text pass.

        The normal prompt carries no bias, so its embedding equals the static one; it is encoded again per
        image anyway, as the official per-image pass does: with ``fp16_deep_prompts`` each prompt's
        deep-prompt gradient is rounded to fp16 on its own, and sharing one normal pass moves deep-prompt
        gradients by ~1.6e-3 of their maximum instead of ~3e-4 (cost: B extra prompts of B·(1 + K)).
        """
        raw = self._encode(*self.prompt.dynamic_token_embeddings(prior_bias))
        raw = raw.reshape(prior_bias.shape[0], 1 + self.config.num_abnormality_prompts, -1)
        return raw[:, :1], raw[:, 1:]

    def batch_level_terms(self) -> dict[str, BatchTerm]:
        """The prior loss sums (official) or averages over the batch's *normal* images."""
        count = None if self.config.prior_loss_reduction == "sum" else _count_normal_images
        return {"prior": BatchTerm(self.config.prior_weight, count)}

    def static_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_static_prompts`, cached while the prompts are unchanged and no gradient is needed."""
        return self.cached_text(self.encode_static_prompts)

    # -- image side --------------------------------------------------------------------------------
    def forward_state(self, images: torch.Tensor) -> FAPromptState:
        """Everything maps, scores and the loss are made of, for ``images [B, 3, S, S]``."""
        config = self.config
        features = self.backbone.encode_image(images, (-1,), config.dpam_start_layer)
        image_features = F.normalize(features.global_features, dim=-1)
        patch_tokens = F.normalize(features.patch_features[0], dim=-1)[:, 1:]
        normal_raw, abnormal_raw = self.static_prompts()

        # Static pass: one text pair for every image.
        static_text = text_pair(normal_raw, abnormal_raw)
        static_probs = (patch_tokens @ static_text.t() / config.temperature).softmax(dim=-1)
        topk_indices = static_probs[..., 1].topk(config.prior_topk, dim=1).indices

        # Prior and dynamic pass: one text pair per image.
        selected = select_prior_tokens(
            patch_tokens, static_probs[..., 1], config.prior_topk, config.prior_token_selection
        )
        prior_bias = self.prompt.patch_meta_net(selected)
        dynamic_normal_raw, dynamic_abnormal_raw = self.encode_dynamic_prompts(prior_bias)
        dynamic_text = text_pair(dynamic_normal_raw, dynamic_abnormal_raw)
        image_logits = torch.einsum("bd,bcd->bc", image_features, dynamic_text) / config.temperature
        dynamic_probs = (torch.einsum("bnd,bcd->bnc", patch_tokens, dynamic_text) / config.temperature).softmax(-1)

        max_static = static_probs[..., 1].amax(dim=1)
        max_dynamic = dynamic_probs[..., 1].amax(dim=1)
        global_prob = image_logits.softmax(dim=-1)[:, 1]
        scores = 0.5 * (global_prob + (2 * max_static + max_dynamic) / 3)
        size = images.shape[-2:]
        return FAPromptState(
            features=features,
            text_static_features=static_text,
            text_static_neg_raw=abnormal_raw,
            text_dynamic_pos_raw=dynamic_normal_raw,
            text_dynamic_neg_raw=dynamic_abnormal_raw,
            text_dynamic_features=dynamic_text,
            image_features=image_features,
            patch_probs_static=static_probs,
            patch_probs_dynamic=dynamic_probs,
            topk_indices=topk_indices,
            selected_tokens=selected,
            prior_bias=prior_bias,
            image_logits=image_logits,
            global_prob_dynamic=global_prob,
            map_max_score_static=max_static,
            map_max_score_dynamic=max_dynamic,
            image_scores=scores,
            full_static=upsample(patch_grid_maps(static_probs, features.grid_size), size, "bilinear"),
            full_dynamic=upsample(patch_grid_maps(dynamic_probs, features.grid_size), size, "bilinear"),
        )

    def predict(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MethodOutput:
        """Scores and maps for ``images [B, 3, S, S]`` (CLIP-normalised); every image is independent."""
        self.check_noise(noise, images.shape[0], False, images)
        state = self.forward_state(images)
        static, dynamic = state.full_static, state.full_dynamic
        raw = (static[:, 1] + 1 - static[:, 0] + dynamic[:, 1] + 1 - dynamic[:, 0]) / 4
        maps = gaussian_blur(raw, self.config.sigma)
        return MethodOutput(image_scores=state.image_scores, anomaly_maps=maps, raw_maps=raw, state=state)

    def loss(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None = None
    ) -> LossOutput:
        """Training loss (methods-spec §3.5): static + 0.5·dynamic segmentation, image CE, image focal,
        0.1·orthogonality and the prior loss. Every term (unweighted) is in ``terms``."""
        config = self.config
        self.check_noise(noise, images.shape[0], True, images)
        state = self.forward_state(images)
        labels = labels.long()
        terms: dict[str, torch.Tensor] = {}
        segmentation = torch.zeros((), device=images.device)
        for stage, probs, weight in (
            ("static", state.full_static, config.static_segmentation_weight),
            ("dynamic", state.full_dynamic, config.dynamic_segmentation_weight),
        ):
            seg = segmentation_loss(probs, masks)
            terms[f"focal_{stage}"] = seg["focal"]
            terms[f"dice_{stage}_abnormal"] = seg["dice_abnormal"]
            terms[f"dice_{stage}_normal"] = seg["dice_normal"]
            segmentation = segmentation + weight * (seg["focal"] + seg["dice_abnormal"] + seg["dice_normal"])
        terms["segmentation"] = segmentation
        terms["image_ce"] = F.cross_entropy(state.image_logits, labels)
        terms["image_binary_focal"] = binary_focal_loss(
            state.image_scores,
            labels,
            alpha=config.binary_focal_alpha,
            gamma=config.binary_focal_gamma,
            logits=config.binary_focal_input == "probability_as_logit",
        )
        terms["orthogonality_sum"] = orthogonality_loss(state.text_static_neg_raw)
        per_image = prior_mse_per_normal_image(state.prior_bias, labels)
        if config.prior_loss_reduction == "sum" or per_image.numel() == 0:
            terms["prior"] = per_image.sum()
        else:
            terms["prior"] = per_image.mean()
        total = (
            segmentation
            + config.image_ce_weight * terms["image_ce"]
            + config.binary_focal_weight * terms["image_binary_focal"]
            + config.orthogonality_weight * terms["orthogonality_sum"]
            + config.prior_weight * terms["prior"]
        )
        return LossOutput(total=total, terms=terms)
