"""AnomalyCLIP against outputs, losses and gradients computed by the official code (../shared/parity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity_helpers import ATOL_MAPS, PROMPT_GRAD_REL, adam_step, assert_close, fixture_batch, load_fixtures
from parity_helpers import TOL_FEATURES as RTOL_FEATURES

from medzsad.methods import AnomalyCLIP


@pytest.fixture(scope="module")
def fixtures(parity_dir):
    return load_fixtures(parity_dir, "anomalyclip")


def make_model(fixtures) -> AnomalyCLIP:
    model = AnomalyCLIP(fixtures["backbone"])
    model.load_official_state_dict(fixtures["prompt_init"])
    return model


@pytest.fixture(scope="module")
def inference(fixtures):
    model = make_model(fixtures).eval()
    images = torch.from_numpy(fixtures["inputs"]["images_preprocessed"])
    with torch.no_grad():
        features = model.backbone.encode_image(images, (24,), 6)
        output = model.predict(images)
        text_raw = model.encode_prompts()
    return {"model": model, "features": features, "output": output, "text_raw": text_raw}


def test_prompt_buffers_match_official_tokenisation(fixtures):
    model = make_model(fixtures)
    init = fixtures["prompt_init"]
    slots = model.prompt.slots
    assert torch.equal(slots.token_ids[0], init["tokenized_prompts_pos"].reshape(-1).long())
    assert torch.equal(slots.token_ids[1], init["tokenized_prompts_neg"].reshape(-1).long())
    assert torch.equal(slots.prefix[0], init["token_prefix_pos"][0, 0])
    assert torch.equal(slots.suffix[1], init["token_suffix_neg"][0, 0])


def test_positional_embedding_resized_without_writing_back(fixtures, inference):
    visual = fixtures["backbone"].visual
    resized = visual.positional_embedding((37, 37), torch.zeros(1))
    assert_close(resized, fixtures["out"]["infer/visual_positional_embedding_resized"], atol=1e-7)
    assert visual.visual.positional_embedding.shape[0] == 577  # the parameter keeps its 24x24 grid


def test_image_features(fixtures, inference):
    out = fixtures["out"]
    features = inference["features"]
    assert_close(features.global_features, out["infer/image_features_raw"], atol=RTOL_FEATURES, rtol=RTOL_FEATURES)
    assert_close(features.patch_features[0], out["infer/patch_features_raw"], atol=RTOL_FEATURES, rtol=RTOL_FEATURES)
    assert_close(inference["output"].state.image_features, out["infer/image_features"], atol=RTOL_FEATURES)


def test_text_features(fixtures, inference):
    out = fixtures["out"]
    assert_close(inference["text_raw"], out["infer/text_embed_raw"], atol=RTOL_FEATURES, rtol=RTOL_FEATURES)
    assert_close(inference["output"].state.text_features, out["infer/text_features"], atol=RTOL_FEATURES)


def test_patch_probabilities_maps_and_scores(fixtures, inference):
    out, maps, output = fixtures["out"], fixtures["maps"], inference["output"]
    assert_close(output.state.patch_probs[-1], out["infer/patch_probs"], atol=ATOL_MAPS)
    assert_close(output.raw_maps, maps["infer/anomaly_map_raw"], atol=ATOL_MAPS)
    assert_close(output.anomaly_maps, maps["infer/anomaly_map"], atol=ATOL_MAPS)
    assert_close(output.image_scores, out["infer/image_score"], atol=ATOL_MAPS)


@pytest.fixture(scope="module")
def training_step(fixtures):
    model = make_model(fixtures).train()
    losses = model.loss(*fixture_batch(fixtures))
    grads, params = adam_step(model, losses.total)
    return {"losses": losses, "grads": grads, "params": params}


@pytest.mark.parametrize("term", ["image_ce", "focal", "dice_abnormal", "dice_normal", "local_weighted"])
def test_loss_terms(fixtures, training_step, term):
    actual = training_step["losses"].terms[term].detach()
    assert_close(actual, fixtures["out"][f"loss/{term}"], atol=RTOL_FEATURES, rtol=RTOL_FEATURES)


def test_total_loss(fixtures, training_step):
    assert_close(training_step["losses"].total.detach(), fixtures["out"]["loss/total"], atol=1e-5, rtol=1e-5)


def test_every_trainable_parameter_has_an_official_gradient(fixtures, training_step):
    out = fixtures["out"]
    official = {k.removeprefix("grad/") for k in out.files if k.startswith("grad/")}
    assert set(training_step["grads"]) == official


def test_gradients(fixtures, training_step):
    out = fixtures["out"]
    for name, grad in training_step["grads"].items():
        expected = out[f"grad/{name}"]
        scale = np.abs(expected).max()
        assert_close(grad, expected, atol=PROMPT_GRAD_REL * scale), name


def test_parameters_after_one_adam_step(fixtures, training_step):
    out = fixtures["out"]
    for name, param in training_step["params"].items():
        expected = out[f"param_after_step/{name}"]
        reliable = np.abs(out[f"grad/{name}"]) > 1e-6  # Adam's first step is lr·sign(g) where |g| >> eps
        assert_close(param.numpy()[reliable], expected[reliable], atol=1e-6), name


def test_official_checkpoint_with_dead_projections_loads(fixtures):
    state = dict(fixtures["prompt_init"])
    width = fixtures["backbone"].text_width
    for i in range(8):  # the released checkpoints carry these never-used layers
        state[f"compound_prompt_projections.{i}.weight"] = torch.zeros(896, width)
        state[f"compound_prompt_projections.{i}.bias"] = torch.zeros(896)
    model = AnomalyCLIP(fixtures["backbone"])
    model.load_official_state_dict(state)
    assert torch.equal(model.prompt.ctx_pos, fixtures["prompt_init"]["ctx_pos"])


def test_checkpoint_for_another_architecture_is_refused(fixtures):
    state = dict(fixtures["prompt_init"])
    state["ctx_pos"] = torch.zeros(1, 1, 12, 768)
    model = AnomalyCLIP(fixtures["backbone"])
    with pytest.raises(ValueError, match="shape mismatch"):
        model.load_official_state_dict(state)


def test_batch_of_one_equals_batch(fixtures, inference):
    model = inference["model"]
    images = torch.from_numpy(fixtures["inputs"]["images_preprocessed"][2:3])
    with torch.no_grad():
        single = model.predict(images)
    assert_close(single.anomaly_maps[0], inference["output"].anomaly_maps[2].numpy(), atol=1e-6)
    assert_close(single.image_scores[0], inference["output"].image_scores[2].numpy(), atol=1e-6)
