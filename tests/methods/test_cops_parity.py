"""CoPS against outputs, losses and gradients computed by the official code (../shared/parity/cops).

The official run drew its VAE noise from the CPU generator; the fixtures store those draws
(``infer/vae_noise``, ``train/vae_noise``) and they are injected here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from parity_helpers import (
    ATOL_MAPS,
    OTHER_GRAD_REL,
    PROMPT_GRAD_REL,
    adam_step,
    assert_close,
    fixture_batch,
    load_fixtures,
)
from parity_helpers import TOL_FEATURES as RTOL_FEATURES

from medzsad.engine.randomness import method_noise
from medzsad.methods.cops import CoPS, CoPSConfig, patch_ground_truth
from medzsad.methods.postprocess import neighbour_average

GRID = (37, 37)  # the 518 px input of a patch-14 ViT


@pytest.fixture(scope="module")
def fixtures(parity_dir):
    return load_fixtures(parity_dir, "cops")


def official_release_format(prompt_init: dict) -> dict:
    """What a released checkpoint holds: no ``vae_encoder.*``/``token*``, plus the never-used modules."""
    state = {k: v for k, v in prompt_init.items() if not k.startswith(("vae_encoder.", "token"))}
    state["projector.fc.0.weight"] = torch.zeros(768, 1024)
    state["projector.fc.0.bias"] = torch.zeros(768)
    state["projector_cls.fc.0.weight"] = torch.zeros(768, 768)
    state["projector_cls.fc.0.bias"] = torch.zeros(768)
    for key, value in prompt_init.items():
        if key.startswith("extractor."):
            state["extractor_." + key.removeprefix("extractor.")] = torch.zeros_like(value)
    return state


def make_model(fixtures, **overrides) -> CoPS:
    model = CoPS(fixtures["backbone"], CoPSConfig(**overrides))
    model.load_official_state_dict(fixtures["prompt_init"])
    return model


def images(fixtures) -> torch.Tensor:
    return torch.from_numpy(fixtures["inputs"]["images_preprocessed"])


@pytest.fixture(scope="module")
def inference(fixtures):
    # As the official test.py: the released checkpoint format (vae_encoder and buffers dropped).
    model = CoPS(fixtures["backbone"])
    release = official_release_format(fixtures["prompt_init"])
    model.load_official_state_dict({"prompt_learner": release, "epoch": 10})
    model.eval()
    x = images(fixtures)
    with torch.no_grad():
        features = model.image_features(x)
        output = model.predict_features(
            features, x.shape[-2:], noise=torch.from_numpy(fixtures["out"]["infer/vae_noise"])
        )
    return {"model": model, "features": features, "output": output}


# -- prompts and checkpoints ------------------------------------------------------------------------


def test_prompt_buffers_match_official_tokenisation(fixtures):
    model = make_model(fixtures)
    init, slots = fixtures["prompt_init"], model.prompt.slots
    for index, state in enumerate(("pos", "neg")):
        assert torch.equal(slots.token_ids[index], init[f"tokenized_prompts_{state}"].reshape(-1).long())
        assert torch.equal(slots.prefix[index], init[f"token_prefix_{state}"][0, 0])
        assert torch.equal(slots.suffix[index], init[f"token_suffix_{state}"][0, 0])


def test_own_checkpoint_uses_official_names(fixtures):
    model = make_model(fixtures)
    official = {k for k in fixtures["prompt_init"] if not k.startswith("token")}
    assert set(model.prompt.state_dict()) == official
    fresh = CoPS(fixtures["backbone"])
    fresh.prompt.load_state_dict(model.prompt.state_dict())
    assert torch.equal(fresh.prompt.t_a, fixtures["prompt_init"]["t_a"])


def test_release_checkpoint_without_vae_encoder_loads(fixtures, inference):
    model = inference["model"]
    init = fixtures["prompt_init"]
    for key, value in model.prompt.state_dict().items():
        if not key.startswith("vae_encoder."):
            assert torch.equal(value, init[key]), key


def test_checkpoint_for_another_architecture_is_refused(fixtures):
    state = dict(fixtures["prompt_init"])
    state["t_n"] = torch.zeros(6, 768)
    with pytest.raises(ValueError, match="shape mismatch"):
        CoPS(fixtures["backbone"]).load_official_state_dict(state)
    del state["t_n"]
    with pytest.raises(ValueError, match="missing"):
        CoPS(fixtures["backbone"]).load_official_state_dict(state)


# -- inference --------------------------------------------------------------------------------------


def test_positional_embedding_resized_without_writing_back(fixtures, inference):
    visual = fixtures["backbone"].visual
    resized = visual.positional_embedding(GRID, torch.zeros(1))
    assert_close(resized, fixtures["out"]["infer/visual_positional_embedding_resized"], atol=1e-7)
    assert visual.visual.positional_embedding.shape[0] == 577


def test_image_features_with_dpam_on_every_block(fixtures, inference):
    out, features = fixtures["out"], inference["features"]
    tol = {"atol": RTOL_FEATURES, "rtol": RTOL_FEATURES}
    assert_close(features.global_features, out["infer/image_features_raw"], **tol)
    assert_close(features.patch_features[0][:, 1:], out["infer/patch_features_raw"], **tol)


def test_neighbour_average_counts_padding(fixtures):
    out = fixtures["out"]
    averaged = neighbour_average(torch.from_numpy(out["infer/patch_features_raw"]), GRID, 5)
    assert_close(averaged, out["infer/patch_features_avg"], atol=1e-6)


@pytest.mark.parametrize(
    "key", ["vae_decoded", "prototypes_normal", "prototypes_abnormal", "distance_normal", "distance_abnormal"]
)
def test_vae_samples_prototypes_and_distances(fixtures, inference, key):
    assert_close(
        getattr(inference["output"].state, key), fixtures["out"][f"infer/{key}"], atol=RTOL_FEATURES, rtol=RTOL_FEATURES
    )


def test_text_samples_and_averaged_text(fixtures, inference):
    state, out = inference["output"].state, fixtures["out"]
    assert_close(state.text_samples, out["infer/text_embed_samples"], atol=RTOL_FEATURES, rtol=RTOL_FEATURES)
    assert_close(state.text_features, out["infer/text_features"], atol=RTOL_FEATURES, rtol=RTOL_FEATURES)


@pytest.mark.parametrize(
    "key", ["patch_cos", "image_cos", "spatial_weight", "patch_probs_weighted", "global_prob", "patch_max"]
)
def test_similarities_spatial_weight_and_probabilities(fixtures, inference, key):
    assert_close(getattr(inference["output"].state, key), fixtures["out"][f"infer/{key}"], atol=ATOL_MAPS)


def test_nearest_maps_and_glocal_scores(fixtures, inference):
    output, maps = inference["output"], fixtures["maps"]
    assert_close(output.raw_maps, maps["infer/anomaly_map_raw"], atol=ATOL_MAPS)
    assert_close(output.anomaly_maps, maps["infer/anomaly_map"], atol=ATOL_MAPS)
    assert_close(output.image_scores, fixtures["out"]["infer/image_score"], atol=ATOL_MAPS)


# -- one training step ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_step(fixtures):
    model = make_model(fixtures).train()
    batch_images, masks, labels = fixture_batch(fixtures)
    forward = model.training_forward(batch_images, noise=torch.from_numpy(fixtures["out"]["train/vae_noise"]))
    losses = model.losses_from(forward, masks, labels)
    grads, params = adam_step(model, losses.total)
    return {"model": model, "forward": forward, "losses": losses, "grads": grads, "params": params, "masks": masks}


@pytest.mark.parametrize(
    "key",
    [
        "image_features_raw",
        "vae_mean",
        "vae_log_var",
        "vae_z",
        "vae_decoded",
        "prototypes_normal",
        "prototypes_abnormal",
        "distance_normal",
        "distance_abnormal",
        "text_features",
        "patch_probs",
        "image_logits",
    ],
)
def test_training_intermediates(fixtures, training_step, key):
    assert_close(
        getattr(training_step["forward"], key), fixtures["out"][f"train/{key}"], atol=RTOL_FEATURES, rtol=RTOL_FEATURES
    )


def test_patch_ground_truth(fixtures, training_step):
    assert_close(patch_ground_truth(training_step["masks"], GRID), fixtures["out"]["train/gt_patch"])


@pytest.mark.parametrize(
    ("ours", "official"),
    [
        ("image_ce", "image_ce"),
        ("focal", "focal"),
        ("dice_abnormal", "dice_abnormal"),
        ("dice_normal", "dice_normal"),
        ("patch", "patch"),
        ("gather", "gather"),
        ("scatter", "scatter"),
        ("kl", "kl"),
        ("recon", "recon"),
        ("recon_unweighted", "recon_before_visa_switch"),
    ],
)
def test_loss_terms(fixtures, training_step, ours, official):
    actual = training_step["losses"].terms[ours]
    assert_close(actual, fixtures["out"][f"loss/{official}"], atol=RTOL_FEATURES, rtol=RTOL_FEATURES)


def test_total_loss(fixtures, training_step):
    assert_close(training_step["losses"].total, fixtures["out"]["loss/total"], atol=RTOL_FEATURES, rtol=RTOL_FEATURES)


def test_every_trainable_parameter_has_an_official_gradient(fixtures, training_step):
    official = {k.removeprefix("grad/") for k in fixtures["out"].files if k.startswith("grad/")}
    assert set(training_step["grads"]) == official
    assert set(training_step["params"]) == official


def test_gradients(fixtures, training_step):
    for name, grad in training_step["grads"].items():
        expected = fixtures["out"][f"grad/{name}"]
        relative = PROMPT_GRAD_REL if name.startswith(("ctx_", "compound_prompts_text")) else OTHER_GRAD_REL
        assert_close(grad, expected, atol=relative * np.abs(expected).max()), name


def test_parameters_after_one_adam_step(fixtures, training_step):
    out = fixtures["out"]
    for name, param in training_step["params"].items():
        reliable = np.abs(out[f"grad/{name}"]) > 1e-6  # Adam's first step is lr·sign(g) where |g| >> eps
        assert_close(param.numpy()[reliable], out[f"param_after_step/{name}"][reliable], atol=1e-6), name


def test_recon_weight_and_pairing(training_step):
    model, forward = training_step["model"], training_step["forward"].detached()
    masks, labels = training_step["masks"], torch.tensor([0, 1, 0, 1])
    base = model.losses_from(forward, masks, labels)
    global_raw, decoded = forward.image_features_raw, forward.vae_decoded
    pairs = torch.stack([((global_raw - s) ** 2).mean() for s in decoded]).mean()  # every (sample, image) pair
    assert_close(base.terms["recon_unweighted"], pairs.numpy(), rtol=1e-6)
    config = model.config
    try:
        config.recon_weight = 1.0
        weighted = model.losses_from(forward, masks, labels)
        assert_close(weighted.total - base.total, base.terms["recon_unweighted"].numpy(), rtol=1e-5)
        config.recon_all_pairs = False
        own = model.losses_from(forward, masks, labels).terms["recon_unweighted"]
        assert_close(own, ((global_raw - decoded) ** 2).sum(1).mean().numpy(), rtol=1e-6)
    finally:
        config.recon_weight, config.recon_all_pairs = 0.0, True


def test_batch_without_anomalous_patches_has_zero_scatter(training_step):
    model, forward = training_step["model"], training_step["forward"].detached()
    terms = model.losses_from(forward, torch.zeros_like(training_step["masks"]), torch.zeros(4)).terms
    assert terms["scatter"].item() == 0.0
    assert torch.isfinite(terms["gather"])


# -- settings, batches and randomness ---------------------------------------------------------------


def test_overriding_k_alpha_beta(fixtures, inference):
    model, features = inference["model"], inference["features"]
    noise = torch.from_numpy(fixtures["out"]["infer/vae_noise"][:, :1])  # one sample: the text is not under test
    size = (518, 518)
    base = inference["output"].state
    config = model.config
    try:
        config.alpha, config.beta, config.test_samples = 0.35, 1.0, 1
        with torch.no_grad():
            changed = model.predict_features(features, size, noise=noise)
        dn, da = base.distance_normal, base.distance_abnormal
        mm = lambda v: (v - v.amin(-1, keepdim=True)) / (v.amax(-1, keepdim=True) - v.amin(-1, keepdim=True))  # noqa: E731
        assert_close(changed.state.spatial_weight, (0.35 * mm(dn) + 0.65 * (1 - mm(da))).numpy(), atol=1e-6)
        assert torch.equal(changed.image_scores, changed.state.global_prob)  # beta = 1: global only
        config.neighbour_kernel = 3
        with torch.no_grad():
            k3 = model.predict_features(features, size, noise=noise)
            averaged = neighbour_average(features.patch_features[0][:, 1:], GRID, 3)
            expected = model.prompt.extractor(model.prompt.t_n, averaged)
        assert_close(k3.state.prototypes_normal, expected.numpy(), atol=1e-6)
        assert not torch.allclose(k3.state.prototypes_normal, base.prototypes_normal)
    finally:
        config.alpha, config.beta, config.neighbour_kernel, config.test_samples = 0.26, 0.9, 5, 10


def test_paper_pairing_swaps_which_prototypes_enter_which_prompt(fixtures, inference):
    # Paper pairing with t_n/t_a exchanged puts the same prototypes into each prompt as the official one.
    state = dict(fixtures["prompt_init"])
    state["t_n"], state["t_a"] = state["t_a"], state["t_n"]
    paper = CoPS(fixtures["backbone"], CoPSConfig(prototype_pairing="paper")).eval()
    paper.load_official_state_dict(state)
    noise = torch.from_numpy(fixtures["out"]["infer/vae_noise"])
    with torch.no_grad():
        output = paper.predict_features(inference["features"], (518, 518), noise=noise)
    base = inference["output"].state
    assert_close(output.state.text_features, base.text_features.numpy(), atol=1e-6)
    assert_close(output.state.distance_normal, base.distance_abnormal.numpy(), atol=1e-6)


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="odd"):
        CoPSConfig(neighbour_kernel=4)
    with pytest.raises(ValueError, match="alpha"):
        CoPSConfig(alpha=1.5)
    with pytest.raises(ValueError, match="prototype_pairing"):
        CoPSConfig(prototype_pairing="swapped")
    mvtec = CoPSConfig.preset("mvtec")
    assert (mvtec.neighbour_kernel, mvtec.alpha, mvtec.beta, mvtec.recon_weight) == (3, 0.35, 1.0, 1.0)
    assert dataclasses.asdict(CoPSConfig.preset("visa")) == dataclasses.asdict(CoPSConfig())
    with pytest.raises(ValueError, match="no CoPS preset"):
        CoPSConfig.preset("mvtec-ad")


@pytest.fixture(scope="module")
def small_images(fixtures):
    """Three images at 112 px (8x8 patches): cheap batch and randomness checks (with R = 2 samples)."""
    return F.interpolate(images(fixtures)[:3], size=(112, 112), mode="bilinear", align_corners=False)


def test_batch_equals_one_image_at_a_time(fixtures, small_images):
    model = make_model(fixtures, test_samples=2).eval()
    noise = torch.randn(3, 2, 72, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        batch = model.predict(small_images, noise=noise)
        for i in range(3):
            single = model.predict(small_images[i : i + 1], noise=noise[i : i + 1])
            assert_close(single.anomaly_maps[0], batch.anomaly_maps[i].numpy(), atol=ATOL_MAPS)
            assert_close(single.state.spatial_weight[0], batch.state.spatial_weight[i].numpy(), atol=ATOL_MAPS)
            assert_close(single.image_scores[0], batch.image_scores[i].numpy(), atol=ATOL_MAPS)
        # The engine draws each sample's noise from its own key, so batching does not change the draws.
        keys = [(0,), (1,), (2,)]
        batch = model.predict(small_images, noise=method_noise(model, False, 7, keys))
        singles = [
            model.predict(small_images[i : i + 1], noise=method_noise(model, False, 7, keys[i : i + 1]))
            for i in range(3)
        ]
    assert torch.equal(torch.cat([s.state.vae_noise for s in singles]), batch.state.vae_noise)
    assert_close(torch.cat([s.image_scores for s in singles]), batch.image_scores.numpy(), atol=ATOL_MAPS)


def test_noise_is_declared_and_seeded_per_sample(fixtures, small_images):
    model = make_model(fixtures, test_samples=2).eval()
    assert model.noise_shape(False) == (2, 72) and model.noise_shape(True) == (72,)
    keys = [(0,), (1,), (2,)]
    draws = method_noise(model, False, 0, keys)
    assert draws.shape == (3, 2, 72)
    assert torch.equal(method_noise(model, False, 0, keys), draws)  # a seeded run repeats exactly
    assert torch.equal(method_noise(model, False, 0, keys[1:]), draws[1:])  # a shard draws what it draws in one run
    assert not torch.equal(method_noise(model, False, 1, keys), draws)  # another seed, other draws
    assert not torch.equal(draws[0], draws[1])  # every sample its own
    masks, labels, pair = torch.zeros(2, 112, 112), torch.zeros(2), small_images[:2]
    runs = []
    with torch.no_grad():
        for _ in range(2):  # without noise a method draws from torch's global generator, as dropout does
            torch.manual_seed(3)
            runs.append((model.predict(pair), model.loss(pair, masks, labels)))
        assert torch.equal(runs[0][0].image_scores, runs[1][0].image_scores)
        assert torch.equal(runs[0][1].total, runs[1][1].total)
    torch.manual_seed(3)
    assert torch.equal(runs[0][0].state.vae_noise, torch.randn(2, 2, 72))


def test_wrong_noise_shape_is_refused(fixtures, small_images):
    model = make_model(fixtures).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="noise must be"):
        model.predict(small_images, noise=torch.zeros(3, 5, 72))
    with pytest.raises(ValueError, match="noise must be"):
        model.loss(small_images, torch.zeros(3, 112, 112), torch.zeros(3), noise=torch.zeros(3, 10, 72))
