"""CoPS (Chen et al., CVPR 2026 Findings): conditional prompt synthesis (methods-spec §4).

Each of the two state prompts (normal, abnormal) is ``"[ctx ×14]."`` with 8 × 4 deep prompt tokens at
text blocks 2-9, and its 14 learnable tokens are made image-dependent:

* tokens 0-5: plain learnable context;
* tokens 6-11 (**state tokens**, ESTS): context + 6 visual prototypes. A small cross-attention block
  (the *extractor*) turns learnable queries ``t_n``/``t_a`` and the image's neighbour-averaged patch
  features into 6 normal and 6 abnormal prototypes per image;
* tokens 12-13 (**class tokens**, ICTS): context + a vector decoded by a VAE. In training the VAE
  encodes the global image feature and samples once from the posterior; at test time R samples are
  drawn from the prior N(0, I) and the R text embeddings are averaged.

Patch features come from the V-V stream of a ViT whose every block has DPAM, averaged over a
``k x k`` neighbourhood. The pixel map (SAGA) is the abnormal probability of a 2-way softmax weighted by
``alpha·minmax(d_n) + (1 - alpha)·(1 - minmax(d_a))`` (distances of each patch to its nearest prototype),
upsampled with nearest neighbour and smoothed; the image score mixes the global softmax with the
maximum of that map: ``beta·p_global + (1 - beta)·max(map)``.

Official quirks reproduced by default (parity README §5 #7, #12-#17) are listed in
``docs/methods/cops.md``; every one of them is a config field.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medzsad.backbone.clip import ClipBackbone
from medzsad.backbone.visual import VisualFeatures
from medzsad.methods.base import BatchTerm, ForwardState, LossOutput, MethodConfig, MethodOutput, ZsadMethod
from medzsad.methods.losses import segmentation_loss
from medzsad.methods.postprocess import (
    gaussian_blur,
    minmax_normalise,
    neighbour_average,
    patch_grid_maps,
    upsample,
)
from medzsad.prompts import PromptSlots, init_context, init_deep_prompts, placeholder_prompt

PROTOTYPE_PAIRINGS = ("official", "paper")


@dataclass
class CoPSConfig(MethodConfig):
    """CoPS settings; defaults are the official scripts with the official default auxiliary set (VisA),
    i.e. the configuration behind the released MVTec / BTAD / MPDD / DTD / medical results.

    ``neighbour_kernel``, ``alpha``, ``beta`` and ``recon_weight`` are chosen from data set *names* in
    the official code; here they are plain settings stored with the checkpoint's config and can be
    overridden at test time (``method.config.alpha = 0.35`` or :meth:`CoPSConfig.preset`).

    Attributes:
        n_context_tokens: plain learnable tokens at the start of each prompt (6).
        n_state_tokens: state tokens = prototypes per state (official ``prt_length`` 6).
        n_class_tokens: class tokens receiving the VAE sample (2; one sample is added to both).
        deep_prompt_layers: text blocks receiving deep prompts, from block 2 (official depth 8).
        deep_prompt_tokens: deep prompt tokens per block (official ``t_n_ctx`` 4).
        dpam_start_layer: first visual block with the V-V stream (1: every block, ``--dpam 24``).
        feature_layer: visual block whose V-V tokens are the patch features (1-indexed, negative from
            the end; default -1 = the last block, layer 24 of ViT-L/14 = official ``--features_list 24``).
        extractor_heads: attention heads of the prototype extractor (12, hard-coded officially).
        neighbour_kernel: ``k`` of the ``k x k`` neighbour averaging of patch features, used in training
            and at test (5 for a VisA-trained model, 3 for an MVTec-trained one).
        alpha: weight of the normal-prototype distance in the spatial weight (0.26; 0.35 for the
            MVTec-trained model applied to VisA).
        beta: weight of the global probability in the image score (0.9; 1.0 for the MVTec-trained model).
        test_samples: R, prior samples of the class-token VAE per image at test (10).
        prototype_pairing: ``"official"`` puts the *abnormal* prototypes into the normal prompt's state
            tokens and vice versa, as the released code does (``lib/cops.py`` L203-204); ``"paper"``
            pairs normal with normal as in the paper's figure. Checkpoints trained with one pairing are
            only meaningful with that pairing.
        patch_loss_weight: weight of focal + dice + dice in the training loss (4).
        recon_weight: weight of the VAE reconstruction term (0: the official code switches it off when
            the training set is VisA, the default auxiliary set; 1 when training on MVTec).
        recon_all_pairs: ``True`` reproduces the official broadcasting, the mean squared difference
            between every decoded sample and every global feature of the batch (B x B pairs, mean over
            the feature axis); ``False`` compares each image with its own sample, summed over the
            feature axis and averaged over the batch.
        upsample_mode: patch map to pixel map interpolation, ``"nearest"`` as the official code does at
            test and in training (its helper's default), or ``"bilinear"``.
        sigma: Gaussian smoothing of the maps (4).
    """

    retired_keys = ("seed",)  # the VAE draws are the engine's now, seeded with eval.seed / train.seed

    n_context_tokens: int = 6
    n_state_tokens: int = 6
    n_class_tokens: int = 2
    deep_prompt_layers: int = 8
    deep_prompt_tokens: int = 4
    dpam_start_layer: int = 1
    feature_layer: int = -1
    extractor_heads: int = 12
    neighbour_kernel: int = 5
    alpha: float = 0.26
    beta: float = 0.9
    test_samples: int = 10
    prototype_pairing: str = "official"
    patch_loss_weight: float = 4.0
    recon_weight: float = 0.0
    recon_all_pairs: bool = True
    upsample_mode: str = "nearest"

    @property
    def n_ctx(self) -> int:
        """Learnable tokens per prompt (14)."""
        return self.n_context_tokens + self.n_state_tokens + self.n_class_tokens

    def validate(self) -> None:
        """Raise ``ValueError`` on settings the method cannot run with."""
        super().validate()
        if self.prototype_pairing not in PROTOTYPE_PAIRINGS:
            raise ValueError(f"prototype_pairing must be one of {PROTOTYPE_PAIRINGS}, got {self.prototype_pairing!r}")
        if self.neighbour_kernel < 1 or self.neighbour_kernel % 2 == 0:
            raise ValueError(f"neighbour_kernel must be a positive odd number, got {self.neighbour_kernel}")
        for name in ("alpha", "beta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.test_samples < 1:
            raise ValueError(f"test_samples must be at least 1, got {self.test_samples}")
        if self.upsample_mode not in ("nearest", "bilinear"):
            raise ValueError(f"upsample_mode must be 'nearest' or 'bilinear', got {self.upsample_mode!r}")

    @classmethod
    def preset(cls, auxiliary: str, **overrides) -> CoPSConfig:
        """The official settings for a model trained on ``auxiliary`` (``"visa"`` or ``"mvtec"``).

        The official code derives k, alpha, beta and the reconstruction switch from the training and
        test set names; with its protocol (VisA-trained model for every target but VisA, MVTec-trained
        model for VisA) they follow from the training set alone, which is what this encodes.
        """
        presets = {
            "visa": {"neighbour_kernel": 5, "alpha": 0.26, "beta": 0.9, "recon_weight": 0.0},
            "mvtec": {"neighbour_kernel": 3, "alpha": 0.35, "beta": 1.0, "recon_weight": 1.0},
        }
        if auxiliary not in presets:
            raise ValueError(f"no CoPS preset for {auxiliary!r}; known: {', '.join(presets)}")
        return cls(**{**presets[auxiliary], **overrides})


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class PrototypeExtractor(nn.Module):
    """One pre-norm cross-attention block: learnable queries attend to an image's patch features.

    ``x = q + MHA(LN1(q), LN1(F), LN1(F))``, then ``x = x + MLP(LN2(x))`` with a width-preserving
    Linear-QuickGELU-Linear MLP. Parameter names follow the official checkpoint.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width, width))])
        )

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``queries [M, D]``, ``features [B, N, D]`` -> prototypes ``[B, M, D]``."""
        x = queries.unsqueeze(0).expand(features.shape[0], -1, -1)
        keys = self.ln_1(features)
        x = x + self.attn(self.ln_1(x), keys, keys, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class VaeEncoder(nn.Module):
    """Global image feature -> (mean, log-variance) of the class-token latent (training only)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.mean = nn.Linear(width, width)
        self.log_var = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.net(x)
        return self.mean(hidden), self.log_var(hidden)


class VaeDecoder(nn.Module):
    """Latent -> class-token offset."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _init_linear(module: nn.Module, std: float = 0.02) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)


class CoPSPrompt(nn.Module):
    """Trainable part of CoPS; parameter names follow the official checkpoint."""

    def __init__(self, backbone: ClipBackbone, config: CoPSConfig) -> None:
        super().__init__()
        width, dim = backbone.text_width, backbone.embed_dim
        if width != dim:
            raise ValueError(
                f"CoPS adds image-side vectors (width {dim}) to text tokens (width {width}); they must be equal"
            )
        n_ctx = config.n_ctx
        self.ctx_pos = init_context(1, 1, n_ctx, width)
        self.ctx_neg = init_context(1, 1, n_ctx, width)
        self.t_n = init_context(config.n_state_tokens, dim)
        self.t_a = init_context(config.n_state_tokens, dim)
        self.extractor = PrototypeExtractor(dim, config.extractor_heads)
        self.vae_encoder = VaeEncoder(dim)
        self.vae_decoder = VaeDecoder(dim)
        for module in (self.extractor, self.vae_encoder, self.vae_decoder):
            _init_linear(module)
        self.compound_prompts_text = init_deep_prompts(config.deep_prompt_layers, config.deep_prompt_tokens, width)
        text = placeholder_prompt(n_ctx, ".")
        self.slots = PromptSlots(backbone.text, backbone.tokenize, [text, text], n_ctx)
        self.state_slice = slice(config.n_context_tokens, config.n_context_tokens + config.n_state_tokens)
        self.class_slice = slice(self.state_slice.stop, n_ctx)

    def token_embeddings(self, state_vectors: torch.Tensor, class_vectors: torch.Tensor) -> torch.Tensor:
        """Image-conditioned prompts.

        Args:
            state_vectors: ``[B, 2, S, W]`` added to the state tokens of (normal, abnormal).
            class_vectors: ``[B, R, W]``; sample r is added to every class token of both prompts.

        Returns:
            ``[B, R, 2, T, W]`` token embeddings (R samples x (normal, abnormal) per image).
        """
        batch, samples = class_vectors.shape[:2]
        ctx = torch.cat([self.ctx_pos[0], self.ctx_neg[0]], dim=0)  # [2, n_ctx, W]
        shape = (batch, samples, *ctx.shape)
        context = ctx[:, : self.state_slice.start].expand(*shape[:-2], -1, -1)
        state = (ctx[:, self.state_slice] + state_vectors).unsqueeze(1).expand(*shape[:-2], -1, -1)
        klass = ctx[:, self.class_slice] + class_vectors[:, :, None, None, :]
        return self.slots.assemble(torch.cat([context, state, klass], dim=-2))


@dataclass
class CoPSState(ForwardState):
    """The part of a CoPS forward pass shared by inference and training.

    Attributes:
        features: the backbone pass (raw global feature ``[B, D]``, the feature layer's V-V tokens).
        vae_noise: the VAE draws: ``[B, R, D]`` prior samples at test, ``[B, D]`` posterior epsilon in training.
        vae_decoded: decoded class-token vectors, ``[B, R, D]`` at test, ``[B, D]`` in training.
        patch_features_avg: ``[B, N, D]`` neighbour-averaged patch features.
        prototypes_normal, prototypes_abnormal: ``[B, S, D]``.
        distance_normal, distance_abnormal: ``[B, N]`` distance of each patch to its nearest prototype.
        text_samples: ``[B, 2, R, D]`` normalised per-sample text; ``text_features`` ``[B, 2, D]`` their
            normalised mean.
        image_cos, image_logits: ``[B, 2]``.
        patch_cos, patch_probs: ``[B, N, 2]``.
    """

    features: VisualFeatures
    vae_noise: torch.Tensor
    vae_decoded: torch.Tensor
    patch_features_avg: torch.Tensor
    prototypes_normal: torch.Tensor
    prototypes_abnormal: torch.Tensor
    distance_normal: torch.Tensor
    distance_abnormal: torch.Tensor
    text_samples: torch.Tensor
    text_features: torch.Tensor
    image_cos: torch.Tensor
    image_logits: torch.Tensor
    patch_cos: torch.Tensor
    patch_probs: torch.Tensor


@dataclass
class CoPSPrediction(CoPSState):
    """A CoPS inference pass: :class:`CoPSState` plus the SAGA scoring.

    Attributes:
        spatial_weight: ``[B, N]`` ``alpha·minmax(d_n) + (1 - alpha)·(1 - minmax(d_a))``.
        patch_probs_weighted: ``[B, N, 2]``.
        global_prob, patch_max: ``[B]`` the two parts of the image score.
    """

    spatial_weight: torch.Tensor
    patch_probs_weighted: torch.Tensor
    global_prob: torch.Tensor
    patch_max: torch.Tensor


@dataclass
class CoPSTraining(CoPSState):
    """A CoPS training pass: :class:`CoPSState` plus the VAE posterior and full-size probabilities.

    Attributes:
        vae_mean, vae_log_var, vae_z: ``[B, D]`` posterior and its reparameterised sample.
        full_probs: ``[B, 2, S, S]``.
    """

    vae_mean: torch.Tensor
    vae_log_var: torch.Tensor
    vae_z: torch.Tensor
    full_probs: torch.Tensor

    @property
    def image_features_raw(self) -> torch.Tensor:
        """``[B, D]`` the raw global feature the VAE encodes and reconstructs."""
        return self.features.global_features


class CoPS(ZsadMethod):
    """CoPS on the shared backbone.

    Args:
        backbone: the frozen CLIP.
        config: :class:`CoPSConfig`.

    CoPS samples: ``R`` prior draws ``[R, D]`` per image at test, one posterior epsilon ``[D]`` per image in
    training (:meth:`noise_shape`). The engine passes them as ``noise``, seeded per sample; each image's
    draws are its own, so a batch scores as its images one at a time.
    """

    name = "cops"
    config_class = CoPSConfig
    official_name = "CoPS"
    official_dead_prefixes = ("projector.", "projector_cls.", "extractor_.")
    config: CoPSConfig
    prompt: CoPSPrompt
    prompt_class = CoPSPrompt

    def noise_shape(self, training: bool) -> tuple[int, ...]:
        dim = self.backbone.embed_dim
        return (dim,) if training else (self.config.test_samples, dim)

    def batch_level_terms(self) -> dict[str, BatchTerm]:
        """Gather and scatter are means over the batch's normal and anomalous *patches*."""
        return {
            "gather": BatchTerm(1.0, self._patch_counter(False)),
            "scatter": BatchTerm(1.0, self._patch_counter(True)),
        }

    def _patch_counter(self, anomalous: bool) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], int]:
        def count(images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> int:
            grid = self.backbone.visual.grid_for(tuple(images.shape[-2:]))
            patch_labels = patch_ground_truth(masks.float(), grid) != 0
            return int(patch_labels.sum()) if anomalous else int((~patch_labels).sum())

        return count

    # -- image side --------------------------------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> VisualFeatures:
        """Frozen backbone features of ``images``: the raw global feature and the configured layer's V-V
        tokens (CLS at index 0). They do not depend on the trainable prompts or on k/alpha/beta, so they
        can be computed once and scored with :meth:`predict_features` under several settings."""
        config = self.config
        return self.backbone.encode_image(images, (config.feature_layer,), config.dpam_start_layer)

    def prototypes(self, patches_avg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normal and abnormal prototypes ``[B, S, D]`` of each image (ESTS)."""
        prompt = self.prompt
        return prompt.extractor(prompt.t_n, patches_avg), prompt.extractor(prompt.t_a, patches_avg)

    # -- text side ---------------------------------------------------------------------------------
    def encode_text(
        self, normal_prototypes: torch.Tensor, abnormal_prototypes: torch.Tensor, class_vectors: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample text embeddings ``[B, 2, R, D]``, each L2-normalised; one text-encoder call for all
        ``2·R·B`` prompts.

        Args:
            normal_prototypes, abnormal_prototypes: ``[B, S, D]``.
            class_vectors: ``[B, R, D]`` decoded VAE samples.
        """
        prompt = self.prompt
        # As in the official code the prototypes enter the prompts as constants: the extractor and its
        # queries learn from the gather/scatter terms only.
        normal_prototypes, abnormal_prototypes = normal_prototypes.detach(), abnormal_prototypes.detach()
        if self.config.prototype_pairing == "official":
            state = torch.stack([abnormal_prototypes, normal_prototypes], dim=1)
        else:
            state = torch.stack([normal_prototypes, abnormal_prototypes], dim=1)
        tokens = prompt.token_embeddings(state, class_vectors)  # [B, R, 2, T, W]
        batch, samples, states = tokens.shape[:3]
        token_ids = prompt.slots.token_ids.expand(batch, samples, -1, -1)
        text = self.encode_prompt_tokens(tokens.flatten(0, 2), token_ids.flatten(0, 2), prompt.slots.length)
        text = F.normalize(text, dim=-1).reshape(batch, samples, states, -1)
        return text.transpose(1, 2)

    # -- shared forward ----------------------------------------------------------------------------
    def _shared(self, features: VisualFeatures, noise: torch.Tensor, decoded: torch.Tensor) -> dict[str, Any]:
        """The fields of :class:`CoPSState` for ``decoded`` class vectors ``[B, D]`` or ``[B, R, D]``."""
        config = self.config
        class_vectors = decoded if decoded.ndim == 3 else decoded.unsqueeze(1)
        patches_avg = neighbour_average(features.patch_features[0][:, 1:], features.grid_size, config.neighbour_kernel)
        normal_protos, abnormal_protos = self.prototypes(patches_avg)
        text_samples = self.encode_text(normal_protos, abnormal_protos, class_vectors)
        text = F.normalize(text_samples.mean(dim=2), dim=-1)  # [B, 2, D]
        patch_unit = F.normalize(patches_avg, dim=-1)
        image_cos = torch.einsum("bd,bcd->bc", F.normalize(features.global_features, dim=-1), text)
        patch_cos = torch.einsum("bnd,bcd->bnc", patch_unit, text)
        return {
            "features": features,
            "vae_noise": noise,
            "vae_decoded": decoded,
            "patch_features_avg": patches_avg,
            "prototypes_normal": normal_protos,
            "prototypes_abnormal": abnormal_protos,
            "distance_normal": nearest_prototype_distance(patch_unit, normal_protos),
            "distance_abnormal": nearest_prototype_distance(patch_unit, abnormal_protos),
            "text_samples": text_samples,
            "text_features": text,
            "image_cos": image_cos,
            "image_logits": image_cos / config.temperature,
            "patch_cos": patch_cos,
            "patch_probs": (patch_cos / config.temperature).softmax(dim=-1),
        }

    def _full_size(self, patch_values: torch.Tensor, grid: tuple[int, int], size) -> torch.Tensor:
        """``[B, h*w, C]`` -> ``[B, C, H, W]`` with the configured interpolation."""
        return upsample(patch_grid_maps(patch_values, grid), size, self.config.upsample_mode)

    def predict(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MethodOutput:
        """Scores and maps for ``images [B, 3, S, S]`` (CLIP-normalised).

        Args:
            images: the batch.
            noise: ``[B, R, D]`` prior draws for the class-token VAE (R = ``config.test_samples``); drawn
                from torch's global generator when ``None``.
        """
        return self.predict_features(self.image_features(images), images.shape[-2:], noise)

    def predict_features(
        self, features: VisualFeatures, image_size: tuple[int, int] | torch.Size, noise: torch.Tensor | None = None
    ) -> MethodOutput:
        """:meth:`predict` from precomputed :meth:`image_features`; maps are ``image_size``."""
        config = self.config
        global_raw = features.global_features
        noise = self.check_noise(noise, global_raw.shape[0], False, global_raw)
        shared = self._shared(features, noise, self.prompt.vae_decoder(noise))
        # Min/max over each image's own patches (the official code takes them over the whole batch,
        # which is only per image at its test batch size of 1).
        weight = config.alpha * minmax_normalise(shared["distance_normal"]) + (1 - config.alpha) * (
            1 - minmax_normalise(shared["distance_abnormal"])
        )
        weighted = shared["patch_probs"] * weight.unsqueeze(-1)
        global_prob = shared["image_logits"].softmax(dim=-1)[:, 1]
        patch_max = weighted[..., 1].amax(dim=-1)
        scores = config.beta * global_prob + (1 - config.beta) * patch_max
        raw = self._full_size(weighted[..., 1:], features.grid_size, tuple(image_size))[:, 0]
        maps = gaussian_blur(raw, config.sigma)
        state = CoPSPrediction(
            **shared, spatial_weight=weight, patch_probs_weighted=weighted, global_prob=global_prob, patch_max=patch_max
        )
        return MethodOutput(image_scores=scores, anomaly_maps=maps, raw_maps=raw, state=state)

    def loss(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None = None
    ) -> LossOutput:
        """Training loss ``CE + 4·(focal + dice_abn + dice_norm) + gather + scatter + KL + w·recon``.

        Args:
            images, masks, labels: the batch (``masks [B, H, W]`` float 0/1, ``labels [B]``).
            noise: ``[B, D]`` epsilon of the VAE's reparameterised posterior sample; drawn from torch's
                global generator when ``None``.
        """
        return self.losses_from(self.training_forward(images, noise), masks, labels)

    def training_forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> CoPSTraining:
        """Everything the training loss is made of: VAE posterior sample (one per image), prototypes,
        distances, text and 2-channel patch probabilities; see :meth:`loss`."""
        features = self.image_features(images)
        mean, log_var = self.prompt.vae_encoder(features.global_features)
        noise = self.check_noise(noise, mean.shape[0], True, mean)
        latent = torch.exp(0.5 * log_var) * noise + mean
        shared = self._shared(features, noise, self.prompt.vae_decoder(latent))
        full_probs = self._full_size(shared["patch_probs"], features.grid_size, images.shape[-2:])
        return CoPSTraining(**shared, vae_mean=mean, vae_log_var=log_var, vae_z=latent, full_probs=full_probs)

    def losses_from(self, out: CoPSTraining, masks: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        """The loss terms of :meth:`training_forward`'s output ``out``."""
        config = self.config
        probs = out.full_probs
        terms: dict[str, torch.Tensor] = {"image_ce": F.cross_entropy(out.image_logits, labels.long())}
        terms.update(segmentation_loss(probs, masks))
        terms["patch"] = terms["focal"] + terms["dice_abnormal"] + terms["dice_normal"]

        anomalous = patch_ground_truth(masks.to(probs), out.features.grid_size) != 0
        terms["gather"] = _masked_mean(out.distance_normal, ~anomalous)
        terms["scatter"] = _masked_mean(out.distance_abnormal, anomalous)
        mean, log_var = out.vae_mean, out.vae_log_var
        terms["kl"] = (-0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(dim=1)).mean()
        global_raw, decoded = out.image_features_raw, out.vae_decoded
        if config.recon_all_pairs:
            recon = (global_raw.unsqueeze(0) - decoded.unsqueeze(1)).pow(2).mean()
        else:
            recon = (global_raw - decoded).pow(2).sum(dim=1).mean()
        terms["recon_unweighted"] = recon
        terms["recon"] = config.recon_weight * recon
        total = (
            terms["image_ce"]
            + config.patch_loss_weight * terms["patch"]
            + terms["gather"]
            + terms["scatter"]
            + terms["kl"]
            + terms["recon"]
        )
        return LossOutput(total=total, terms=terms)

    def complete_official_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Released checkpoints drop ``vae_encoder.*`` (only used in training): the current encoder is kept."""
        if not any(key.startswith("vae_encoder.") for key in state):
            state.update({f"vae_encoder.{k}": v for k, v in self.prompt.vae_encoder.state_dict().items()})
        return state


def nearest_prototype_distance(patch_unit: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``min_j (1 - cos(F_p, P_j))`` for ``patch_unit [B, N, D]`` (L2-normalised), ``prototypes [B, M, D]``.

    Returns ``[B, N]``.
    """
    cos = torch.einsum("bnd,bmd->bnm", patch_unit, F.normalize(prototypes, dim=-1))
    return (1 - cos).amin(dim=-1)


def patch_ground_truth(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch-level labels ``[B, h*w]``: the maximum of ``masks [B, H, W]`` over each patch's pixels."""
    kernel = (masks.shape[-2] // grid[0], masks.shape[-1] // grid[1])
    return F.max_pool2d(masks.unsqueeze(1), kernel).flatten(1)


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[keep]``; 0 when nothing is kept (e.g. no anomalous patch in the batch)."""
    selected = values[keep]
    return selected.mean() if selected.numel() else values.new_zeros(())
