"""FAPrompt against outputs, losses and gradients computed by the official code (../shared/parity/faprompt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity_helpers import (
    ATOL_MAPS,
    OTHER_GRAD_REL,
    PROMPT_GRAD_REL,
    TOL_FEATURES,
    adam_step,
    assert_close,
    fixture_batch,
    load_fixtures,
)

from medzsad.methods.faprompt import FAPrompt, prior_mse_per_normal_image

PROMPT_PARAMS = ("ctx_pos", "ctx_neg", "compound_prompts_text.")


@pytest.fixture(scope="module")
def fixtures(parity_dir):
    return load_fixtures(parity_dir, "faprompt")


def make_model(fixtures) -> FAPrompt:
    model = FAPrompt(fixtures["backbone"])
    model.load_official_state_dict(fixtures["prompt_init"])
    return model


def images_of(fixtures) -> torch.Tensor:
    return torch.from_numpy(fixtures["inputs"]["images_preprocessed"])


@pytest.fixture(scope="module")
def inference(fixtures):
    model = make_model(fixtures).eval()
    images = images_of(fixtures)
    with torch.no_grad():
        features = model.backbone.encode_image(images, (-1,), model.config.dpam_start_layer)
        output = model.predict(images)
        static_normal, static_abnormal = model.encode_static_prompts()
    return {"model": model, "features": features, "output": output, "static": (static_normal, static_abnormal)}


def test_prompt_buffers_match_official_tokenisation(fixtures):
    prompt = make_model(fixtures).prompt
    init = fixtures["prompt_init"]
    assert torch.equal(prompt.normal_slots.token_ids, init["tokenized_prompts_pos"][0].long())
    assert torch.equal(prompt.abnormal_slots.token_ids, init["tokenized_prompts_neg"][0].long())
    assert torch.equal(prompt.normal_slots.prefix, init["token_prefix_pos"][0])
    assert torch.equal(prompt.normal_slots.suffix, init["token_suffix_pos"][0])
    assert torch.equal(prompt.abnormal_slots.prefix, init["token_prefix_neg"][0])
    assert torch.equal(prompt.abnormal_slots.suffix, init["token_suffix_neg"][0])


def test_image_features(fixtures, inference):
    out, features = fixtures["out"], inference["features"]
    pos = fixtures["backbone"].visual.positional_embedding((37, 37), torch.zeros(1))
    assert_close(pos, out["infer/visual_positional_embedding_resized"], atol=1e-7)
    assert_close(features.global_features, out["infer/image_features_raw"], atol=TOL_FEATURES, rtol=TOL_FEATURES)
    assert_close(features.patch_features[0], out["infer/patch_features_raw"], atol=TOL_FEATURES, rtol=TOL_FEATURES)
    assert_close(inference["output"].state.image_features, out["infer/image_features"], atol=TOL_FEATURES)


def test_static_text(fixtures, inference):
    out = fixtures["out"]
    normal, abnormal = inference["static"]
    assert_close(normal, out["infer/text_static_pos_raw"], atol=TOL_FEATURES, rtol=TOL_FEATURES)
    assert_close(abnormal, out["infer/text_static_neg_raw"], atol=TOL_FEATURES, rtol=TOL_FEATURES)
    state = inference["output"].state
    assert_close(state.text_static_features, out["infer/text_static_features"], atol=TOL_FEATURES)


def test_prior_network_inputs_and_output(fixtures, inference):
    out, state = fixtures["out"], inference["output"].state
    assert torch.equal(state.topk_indices, torch.from_numpy(out["infer/topk_indices"]))
    assert_close(state.selected_tokens, out["infer/selected_tokens"], atol=TOL_FEATURES)
    assert_close(state.prior_bias, out["infer/prior_bias"], atol=TOL_FEATURES, rtol=TOL_FEATURES)


def test_dynamic_text(fixtures, inference):
    out, state = fixtures["out"], inference["output"].state
    for key in ("text_dynamic_pos_raw", "text_dynamic_neg_raw"):
        assert_close(getattr(state, key), out[f"infer/{key}"], atol=TOL_FEATURES, rtol=TOL_FEATURES, err_msg=key)
    assert_close(state.text_dynamic_features, out["infer/text_dynamic_features"], atol=TOL_FEATURES)


@pytest.mark.parametrize(
    "key",
    [
        "patch_probs_static",
        "map_max_score_static",
        "patch_probs_dynamic",
        "map_max_score_dynamic",
        "global_prob_dynamic",
    ],
)
def test_probabilities(fixtures, inference, key):
    assert_close(getattr(inference["output"].state, key), fixtures["out"][f"infer/{key}"], atol=ATOL_MAPS)


def test_maps_and_scores(fixtures, inference):
    maps, output = fixtures["maps"], inference["output"]
    assert_close(output.raw_maps, maps["infer/anomaly_map_raw"], atol=ATOL_MAPS)
    assert_close(output.anomaly_maps, maps["infer/anomaly_map"], atol=ATOL_MAPS)
    assert_close(output.image_scores, fixtures["out"]["infer/image_score"], atol=ATOL_MAPS)


def test_batch_of_one_equals_batch(fixtures, inference):
    model, batch = inference["model"], inference["output"]
    with torch.no_grad():
        single = model.predict(images_of(fixtures)[1:2])
    assert_close(single.image_scores[0], batch.image_scores[1].numpy(), atol=1e-6)
    assert_close(single.anomaly_maps[0], batch.anomaly_maps[1].numpy(), atol=1e-6)
    assert_close(single.state.prior_bias[0], batch.state.prior_bias[1].numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def training_step(fixtures):
    model = make_model(fixtures).train()
    images, masks, labels = fixture_batch(fixtures)
    losses = model.loss(images, masks, labels)
    grads, params = adam_step(model, losses.total)
    # The training-mode forward (fresh text, autograd on) with the initial parameters, for the train/* keys.
    model.load_official_state_dict(fixtures["prompt_init"])
    forward = model.predict(images).state
    return {"losses": losses, "grads": grads, "params": params, "forward": forward, "labels": labels}


@pytest.mark.parametrize(
    "key",
    [
        "selected_tokens",
        "prior_bias",
        "text_dynamic_features",
        "patch_probs_dynamic",
        "map_max_score_static",
        "map_max_score_dynamic",
        "image_logits",
        "text_static_neg_raw",
    ],
)
def test_training_forward(fixtures, training_step, key):
    assert_close(
        getattr(training_step["forward"], key), fixtures["out"][f"train/{key}"], atol=TOL_FEATURES, rtol=TOL_FEATURES
    )


def test_training_score_fed_to_the_focal_loss(fixtures, training_step):
    state = training_step["forward"]
    score = 0.5 * (state.global_prob_dynamic + (2 * state.map_max_score_static + state.map_max_score_dynamic) / 3)
    assert_close(score, fixtures["out"]["train/score2"], atol=ATOL_MAPS)


@pytest.mark.parametrize(
    "term",
    [
        "orthogonality_sum",
        "image_ce",
        "image_binary_focal",
        "focal_static",
        "dice_static_abnormal",
        "dice_static_normal",
        "focal_dynamic",
        "dice_dynamic_abnormal",
        "dice_dynamic_normal",
        "prior",
        "segmentation",
    ],
)
def test_loss_terms(fixtures, training_step, term):
    actual = training_step["losses"].terms[term]
    assert_close(actual, fixtures["out"][f"loss/{term}"], atol=TOL_FEATURES, rtol=TOL_FEATURES)


def test_prior_loss_per_normal_image(fixtures, training_step):
    per_image = prior_mse_per_normal_image(training_step["forward"].prior_bias, training_step["labels"])
    assert_close(per_image, fixtures["out"]["loss/prior_mse_per_normal_image"], atol=TOL_FEATURES, rtol=TOL_FEATURES)


def test_total_loss(fixtures, training_step):
    assert_close(training_step["losses"].total, fixtures["out"]["loss/total"], atol=TOL_FEATURES, rtol=TOL_FEATURES)


def test_every_trainable_parameter_has_an_official_gradient(fixtures, training_step):
    official = {k.removeprefix("grad/") for k in fixtures["out"].files if k.startswith("grad/")}
    assert set(training_step["grads"]) == official


def grad_tolerance(name: str, expected: np.ndarray) -> float:
    relative = PROMPT_GRAD_REL if name.startswith(PROMPT_PARAMS) else OTHER_GRAD_REL
    return relative * float(np.abs(expected).max())


def test_gradients(fixtures, training_step):
    for name, grad in training_step["grads"].items():
        expected = fixtures["out"][f"grad/{name}"]
        assert_close(grad, expected, atol=grad_tolerance(name, expected), err_msg=name)


def test_parameters_after_one_adam_step(fixtures, training_step):
    out = fixtures["out"]
    for name, param in training_step["params"].items():
        expected, grad = out[f"param_after_step/{name}"], out[f"grad/{name}"]
        # Adam's first step is lr·sign(g) where |g| >> eps: compare where the gradient's sign is certain
        # given the gradient tolerance above.
        reliable = np.abs(grad) > max(1e-6, grad_tolerance(name, grad))
        assert reliable.any(), name
        assert_close(param.numpy()[reliable], expected[reliable], atol=1e-6, err_msg=name)


def test_official_checkpoint_with_dead_projections_loads(fixtures):
    init = fixtures["prompt_init"]
    state = dict(init)
    width = fixtures["backbone"].text_width
    for i in range(8):  # released checkpoints carry these never-used layers
        state[f"compound_prompt_projections.{i}.weight"] = torch.zeros(896, width)
        state[f"compound_prompt_projections.{i}.bias"] = torch.zeros(896)
    model = FAPrompt(fixtures["backbone"])
    model.load_official_state_dict({"prompt_learner": state})  # the whole checkpoint is accepted too
    loaded = model.prompt.state_dict()
    assert set(loaded) == {k for k in init if not k.startswith(("token_", "tokenized_"))}
    for key, value in loaded.items():
        assert torch.equal(value, init[key]), key


def test_checkpoint_for_another_architecture_is_refused(fixtures):
    state = dict(fixtures["prompt_init"])
    state["patch_meta_net.linear1.weight"] = torch.zeros(480, 7680)
    with pytest.raises(ValueError, match="shape mismatch"):
        FAPrompt(fixtures["backbone"]).load_official_state_dict(state)
    state = {k: v for k, v in fixtures["prompt_init"].items() if k != "ctx_neg"}
    with pytest.raises(ValueError, match="missing"):
        FAPrompt(fixtures["backbone"]).load_official_state_dict(state)
