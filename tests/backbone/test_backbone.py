"""The frozen backbone: weight sources, clear failures, non-destructive resizing, frozen parameters."""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.ndimage
import torch
from open_clip.model import build_model_from_openai_state_dict
from safetensors.torch import save_file

from medzsad.backbone import ClipBackbone, WeightsUnavailableError, load_clip, resize_positional_embedding
from medzsad.methods.postprocess import gaussian_blur


@pytest.fixture(scope="module")
def tiny() -> ClipBackbone:
    return ClipBackbone(load_clip("medzsad-tiny-fast", pretrained=None, seed=3))


def test_offline_without_cached_weights_fails_fast_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="weights_path"):
        load_clip("ViT-L-14-336", pretrained="openai", offline=True)
    assert time.monotonic() - start < 5


def test_missing_local_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsUnavailableError, match=r"nope\.pt"):
        load_clip(weights_path=missing)


def test_garbage_file_is_refused_clearly(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match=r"bad\.pt"):
        load_clip(weights_path=bad)


def test_unknown_tag_and_model_are_refused():
    with pytest.raises(WeightsUnavailableError, match="no pretrained tag"):
        load_clip("ViT-L-14-336", pretrained="nonexistent-tag")
    with pytest.raises(WeightsUnavailableError, match="unknown backbone"):
        load_clip("not-a-model", pretrained=None)


def test_openai_layout_and_open_clip_layout_files_give_the_same_model(parity_dir, tmp_path):
    openai_file = parity_dir / "clip_tiny_openai_layout.pt"
    from_openai = load_clip(weights_path=openai_file)
    assert from_openai.weights_id.startswith("file:3d96a6f282e2")  # sha256 given in the fixtures' README
    # Re-save in open_clip's own layout (a training checkpoint with "state_dict"), and as safetensors.
    state = {k: v.float() for k, v in torch.load(openai_file, weights_only=True).items()}
    model = build_model_from_openai_state_dict(state)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "oc.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "oc.safetensors")
    images = torch.randn(1, 3, 224, 224)
    reference = ClipBackbone(from_openai).encode_image(images, (-1,), 6)
    for name in ("oc.pt", "oc.safetensors"):
        # open_clip-layout files need the architecture named; here it matches the tiny parity model.
        loaded = load_clip("medzsad-tiny", weights_path=tmp_path / name)
        features = ClipBackbone(loaded).encode_image(images, (-1,), 6)
        torch.testing.assert_close(features.global_features, reference.global_features)
        torch.testing.assert_close(features.patch_features[0], reference.patch_features[0])


def test_open_clip_file_for_another_architecture_is_refused(tmp_path):
    # A file whose keys do not read as a complete OpenAI-layout ViT is loaded into the named architecture.
    state = load_clip("medzsad-tiny", pretrained=None).model.state_dict()
    del state["visual.proj"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(WeightsUnavailableError, match="does not match backbone 'medzsad-tiny-fast'"):
        load_clip("medzsad-tiny-fast", weights_path=tmp_path / "partial.pt")


def test_backbone_is_frozen_and_stays_in_eval(tiny):
    assert not any(p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.training and not tiny.clip.training


def test_any_input_size_without_touching_the_parameter(tiny):
    before = tiny.clip.visual.positional_embedding.detach().clone()
    for size in (224, 320, 160):
        features = tiny.encode_image(torch.randn(2, 3, size, size), (4, -1), 2)
        grid = size // 16
        assert features.grid_size == (grid, grid)
        assert [tuple(p.shape) for p in features.patch_features] == [(2, 1 + grid * grid, 72)] * 2
    assert torch.equal(before, tiny.clip.visual.positional_embedding)


def test_resize_is_identity_at_the_native_grid():
    pos = torch.randn(1 + 14 * 14, 8)
    assert resize_positional_embedding(pos, (14, 14)) is pos


def test_without_dpam_the_last_layer_is_plain_clip(tiny):
    images = torch.randn(1, 3, 224, 224)
    ours = tiny.encode_image(images, (-1,), None).patch_features[0]
    visual = tiny.clip.visual
    # embed() ends with ln_pre; from there open_clip's own transformer must give the same tokens.
    with torch.no_grad():
        x = visual.transformer(tiny.visual.embed(images))
        expected = visual.ln_post(x) @ visual.proj
    torch.testing.assert_close(ours, expected)


def test_dual_path_does_not_change_the_original_stream(tiny):
    images = torch.randn(2, 3, 224, 224)
    with_dpam = tiny.encode_image(images, (-1,), 1).global_features
    without = tiny.encode_image(images, (-1,), None).global_features
    torch.testing.assert_close(with_dpam, without, rtol=1e-5, atol=1e-5)


def test_layer_out_of_range_is_refused(tiny):
    with pytest.raises(ValueError, match="layers must be"):
        tiny.encode_image(torch.randn(1, 3, 224, 224), (9,), 2)


@pytest.mark.parametrize("sigma", [1.0, 4.0, 10.0])
def test_gaussian_blur_equals_scipy(sigma):
    rng = np.random.default_rng(0)
    maps = rng.random((2, 96, 130)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    expected = np.stack([scipy.ndimage.gaussian_filter(m, sigma=sigma) for m in maps])
    np.testing.assert_allclose(ours, expected, atol=2e-6)


def test_cached_blur_kernel_serves_inference_and_gradient_calls():
    from medzsad.methods.postprocess import _device_kernel

    _device_kernel.cache_clear()
    maps = torch.rand(2, 40, 50)
    with torch.inference_mode():
        first = gaussian_blur(maps, 4.0)  # fills the cache inside inference mode
    leaf = maps.clone().requires_grad_(True)
    gaussian_blur(leaf, 4.0).sum().backward()  # the cached kernel must not be an inference tensor
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    torch.testing.assert_close(gaussian_blur(maps, 4.0), first, rtol=0, atol=0)
    assert _device_kernel.cache_info().misses == 1


def test_reduced_precision_runs_the_blocks_only(tiny):
    images = torch.randn(2, 3, 224, 224)
    reference = tiny.encode_image(images, (-1,), 2)
    try:
        tiny.set_precision("bf16")
        assert tiny.precision == "bf16"
        reduced = tiny.encode_image(images, (-1,), 2)
        tokens = tiny.tokenize(["a photo"])
        text = tiny.text(tiny.text.embed_tokens(tokens), tokens)
    finally:
        tiny.set_precision("fp32")
    # The encoders hand fp32 features to the methods; only the blocks ran in bf16.
    assert reduced.global_features.dtype == reduced.patch_features[0].dtype == text.dtype == torch.float32
    scale = reference.patch_features[0].abs().max()
    assert 0 < (reduced.patch_features[0] - reference.patch_features[0]).abs().max() < 0.05 * scale
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny.set_precision("fp8")


def test_text_encoded_up_to_the_last_eot_equals_the_full_context(tiny):
    # Causal attention: the EOT feature never sees the padding after it, so it can be left out.
    from medzsad.backbone.text import used_length

    tokens = tiny.tokenize(["a photo of a damaged object.", "a flawless object"])
    deep = [torch.randn(3, tiny.text_width, generator=torch.Generator().manual_seed(i)) * 0.02 for i in range(2)]
    embeddings = tiny.text.embed_tokens(tokens)
    length = used_length(tokens)
    assert length == 9 and length < tokens.shape[1]  # SOT, 7 words and punctuation, EOT
    with torch.no_grad():
        full = tiny.text(embeddings, tokens, deep)
        short = tiny.text(embeddings, tokens, deep, length=length)
    # Same mathematics; kernels sum in another order for another sequence length (float rounding).
    torch.testing.assert_close(short, full, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no room after 3 deep prompt tokens"):
        tiny.text(embeddings, tokens, deep, length=3)
