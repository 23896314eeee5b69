"""FAPrompt behaviour on a tiny random backbone: batching, config overrides, options, training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from medzsad.backbone import ClipBackbone, load_clip
from medzsad.methods.faprompt import FAPrompt, FAPromptConfig, prior_mse_per_normal_image
from medzsad.methods.losses import binary_focal_loss
from medzsad.methods.postprocess import gaussian_blur

SIZE = 224  # medzsad-tiny-fast: patch 16, 14x14 grid, 8 visual layers


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone(load_clip("medzsad-tiny-fast", pretrained=None, seed=3))


def make(backbone: ClipBackbone, **overrides) -> FAPrompt:
    torch.manual_seed(0)
    return FAPrompt(backbone, FAPromptConfig(**overrides))


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, SIZE, SIZE, generator=generator)
    masks = torch.zeros(4, SIZE, SIZE)
    masks[1, 40:90, 60:120] = 1
    masks[3, 150:200, 20:70] = 1
    labels = torch.tensor([0, 1, 0, 1])
    return images, masks, labels


def test_defaults_are_the_official_constants():
    config = FAPromptConfig()
    assert (config.num_abnormality_prompts, config.n_ctx_normal, config.n_ctx_abnormal) == (10, 5, 2)
    assert (config.prior_topk, config.sigma, config.orthogonality_weight) == (10, 10.0, 0.1)
    weights = (config.static_segmentation_weight, config.dynamic_segmentation_weight, config.prior_weight)
    assert weights == (1.0, 0.5, 1.0)
    assert config.prior_token_selection == "first"
    assert config.binary_focal_input == "probability_as_logit"
    assert config.prior_loss_reduction == "sum"
    assert FAPromptConfig(**config.to_dict()) == config


@pytest.mark.parametrize(
    "overrides",
    [
        {"prior_token_selection": "random"},
        {"binary_focal_input": "logits"},
        {"prior_loss_reduction": "max"},
        {"num_abnormality_prompts": 0},
        {"prior_topk": 0},
        {"n_ctx_normal": 3},  # shorter than the 4 deep prompt tokens that overwrite it
    ],
)
def test_invalid_options_are_refused(overrides):
    with pytest.raises(ValueError):
        FAPromptConfig(**overrides)


def test_batch_gives_the_same_per_image_results_as_single_images(backbone, batch):
    model = make(backbone).eval()
    images = batch[0]
    with torch.no_grad():
        together = model.predict(images)
        alone = [model.predict(images[i : i + 1]) for i in range(images.shape[0])]
    for i, single in enumerate(alone):
        torch.testing.assert_close(single.image_scores[0], together.image_scores[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(single.raw_maps[0], together.raw_maps[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(single.anomaly_maps[0], together.anomaly_maps[i], atol=1e-6, rtol=0)
        for key in ("prior_bias", "text_dynamic_features", "patch_probs_dynamic"):
            torch.testing.assert_close(
                getattr(single.state, key)[0], getattr(together.state, key)[i], atol=1e-6, rtol=0
            )


def test_overridden_constants_shape_the_model(backbone, batch):
    overrides = {
        "num_abnormality_prompts": 3,
        "n_ctx_normal": 6,
        "n_ctx_abnormal": 1,
        "prior_topk": 4,
        "prior_hidden_divisor": 8,
        "sigma": 2.0,
    }
    model = make(backbone, **overrides).eval()
    width, dim = backbone.text_width, backbone.embed_dim
    assert model.prompt.ctx_pos.shape == (1, 1, 6, width)
    assert model.prompt.ctx_neg.shape == (1, 3, 1, width)
    assert model.prompt.patch_meta_net.linear1.weight.shape == (4 * dim // 8, 4 * dim)
    assert model.prompt.patch_meta_net.linear2.weight.shape == (width, 4 * dim // 8)
    with torch.no_grad():
        out = model.predict(batch[0][:2])
    assert out.state.text_dynamic_neg_raw.shape == (2, 3, dim)
    assert out.state.selected_tokens.shape == (2, 4, dim)
    assert out.anomaly_maps.shape == (2, SIZE, SIZE)
    torch.testing.assert_close(out.anomaly_maps, gaussian_blur(out.raw_maps, 2.0))


def test_prior_token_selection(backbone, batch):
    images = batch[0][:2]
    with torch.no_grad():
        tokens = F.normalize(backbone.encode_image(images, (-1,), 6).patch_features[0], dim=-1)[:, 1:]
        first = make(backbone).eval().predict(images).state
        topk = make(backbone, prior_token_selection="topk").eval().predict(images).state
    torch.testing.assert_close(first.selected_tokens, tokens[:, :10])
    gathered = torch.stack([tokens[i, topk.topk_indices[i]] for i in range(2)])
    torch.testing.assert_close(topk.selected_tokens, gathered)
    probs = topk.patch_probs_static[..., 1]
    assert torch.equal(topk.topk_indices, probs.topk(10, dim=1).indices)
    assert not torch.allclose(first.prior_bias, topk.prior_bias)


def test_total_loss_uses_the_configured_weights_and_options(backbone, batch):
    images, masks, labels = batch
    overrides = {
        "binary_focal_input": "probability",
        "prior_loss_reduction": "mean",
        "static_segmentation_weight": 0.7,
        "dynamic_segmentation_weight": 0.2,
        "image_ce_weight": 0.3,
        "binary_focal_weight": 2.0,
        "orthogonality_weight": 0.05,
        "prior_weight": 3.0,
    }
    model = make(backbone, **overrides).train()
    losses = model.loss(images, masks, labels)
    terms = {k: v.detach() for k, v in losses.terms.items()}
    state = model.predict(images).state
    static = terms["focal_static"] + terms["dice_static_abnormal"] + terms["dice_static_normal"]
    dynamic = terms["focal_dynamic"] + terms["dice_dynamic_abnormal"] + terms["dice_dynamic_normal"]
    torch.testing.assert_close(terms["segmentation"], 0.7 * static + 0.2 * dynamic)
    expected = (
        terms["segmentation"]
        + 0.3 * terms["image_ce"]
        + 2.0 * terms["image_binary_focal"]
        + 0.05 * terms["orthogonality_sum"]
        + 3.0 * terms["prior"]
    )
    torch.testing.assert_close(losses.total.detach(), expected)
    per_image = prior_mse_per_normal_image(state.prior_bias.detach(), labels)
    torch.testing.assert_close(terms["prior"], per_image.mean())
    scores = 0.5 * (state.global_prob_dynamic + (2 * state.map_max_score_static + state.map_max_score_dynamic) / 3)
    torch.testing.assert_close(terms["image_binary_focal"], binary_focal_loss(scores.detach(), labels))


def test_compat_loss_options(backbone, batch):
    images, masks, labels = batch
    model = make(backbone).train()
    losses = model.loss(images, masks, labels)
    state = model.predict(images).state
    scores = 0.5 * (state.global_prob_dynamic + (2 * state.map_max_score_static + state.map_max_score_dynamic) / 3)
    compat_focal = binary_focal_loss(scores.detach(), labels, logits=True)
    torch.testing.assert_close(losses.terms["image_binary_focal"].detach(), compat_focal)
    per_image = prior_mse_per_normal_image(state.prior_bias.detach(), labels)
    assert per_image.shape == (2,)
    torch.testing.assert_close(losses.terms["prior"].detach(), per_image.sum())


def test_backward_reaches_every_parameter_and_no_normal_image_is_fine(backbone, batch):
    images, masks, labels = batch
    model = make(backbone).train()
    losses = model.loss(images[1::2], masks[1::2], labels[1::2])  # anomalous images only: no prior loss
    assert losses.terms["prior"].item() == 0.0
    losses.total.backward()
    for name, param in model.prompt.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_static_text_is_cached_in_eval_and_refreshed_when_prompts_change(backbone, batch):
    model = make(backbone).eval()
    with torch.no_grad():
        first = model.predict(batch[0][:1]).state.text_static_features
        cached = model._text_cache
        model.predict(batch[0][:1])
        assert model._text_cache is cached
        model.prompt.ctx_pos.add_(0.1)
        changed = model.predict(batch[0][:1]).state.text_static_features
    assert not torch.allclose(first, changed)


def test_cached_text_runs_in_fp32_under_reduced_precision(backbone, batch):
    # Image-independent text is computed once, so it is computed in full precision; the per-image
    # prompts (FAPrompt's DAP text) follow the configured precision.
    model = make(backbone).eval()
    with torch.no_grad():
        full = model.predict(batch[0][:1])
        model._text_cache = None
        try:
            backbone.set_precision("bf16")
            reduced = model.predict(batch[0][:1])
            assert backbone.text.compute_dtype is torch.bfloat16  # restored after the cached computation
        finally:
            backbone.set_precision("fp32")
    torch.testing.assert_close(reduced.state.text_static_features, full.state.text_static_features, rtol=0, atol=0)
    assert not torch.equal(reduced.image_scores, full.image_scores)  # the image encoder did run in bf16


def test_config_round_trips_through_dataclasses_replace():
    config = dataclasses.replace(FAPromptConfig(), sigma=4.0, prior_token_selection="topk")
    assert config.sigma == 4.0 and config.prior_token_selection == "topk"
    with pytest.raises(ValueError):
        dataclasses.replace(config, prior_token_selection="top")


def test_engine_config_overrides_reach_the_method_config():
    from medzsad.engine.config import from_mapping, parse_override

    data: dict = {}
    for text in ("prior_token_selection=topk", "sigma=4", "num_abnormality_prompts=6", "orthogonality_weight=0"):
        path, value = parse_override(text)
        data[path[0]] = value
    config = from_mapping(FAPromptConfig, data, "method_config")
    assert (config.prior_token_selection, config.sigma, config.num_abnormality_prompts) == ("topk", 4, 6)
    assert config.orthogonality_weight == 0
