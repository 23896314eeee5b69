"""Training-free baselines ("clip", "winclip") on tiny random or hand-built backbones."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medzsad.backbone import ClipBackbone, load_clip
from medzsad.methods.baselines import (
    ClipPromptBaseline,
    ClipPromptConfig,
    WinClipBaseline,
    WinClipConfig,
    harmonic_mean,
    harmonic_spread,
    pool_cls,
    window_indices,
    window_membership,
)

SIZE = 112  # 7x7 patch grid with the 16-px tiny backbone: small and fast


@pytest.fixture(scope="module")
def backbone() -> ClipBackbone:
    return ClipBackbone(load_clip("medzsad-tiny-fast", pretrained=None, seed=3))


@pytest.fixture(scope="module")
def methods(backbone: ClipBackbone) -> dict[str, ClipPromptBaseline | WinClipBaseline]:
    return {
        "clip": ClipPromptBaseline(backbone, ClipPromptConfig(image_size=SIZE, sigma=1.0)),
        "clip-pure": ClipPromptBaseline(backbone, ClipPromptConfig(image_size=SIZE, dpam_start_layer=None)),
        "winclip": WinClipBaseline(backbone, WinClipConfig(image_size=SIZE)),
    }


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, SIZE, SIZE, generator=generator)


@pytest.mark.parametrize("key", ["clip", "clip-pure", "winclip"])
def test_shapes_ranges_and_determinism(methods, key) -> None:
    method = methods[key]
    images = _images(2)
    out = method.predict(images)
    assert out.image_scores.shape == (2,)
    assert out.anomaly_maps.shape == out.raw_maps.shape == (2, SIZE, SIZE)
    for tensor in (out.image_scores, out.anomaly_maps, out.raw_maps):
        assert torch.isfinite(tensor).all()
        assert tensor.min() >= 0 and tensor.max() <= 1
    assert out.state.text_features.shape == (2, method.backbone.embed_dim)
    again = method.predict(images)
    torch.testing.assert_close(again.image_scores, out.image_scores, rtol=0, atol=0)
    torch.testing.assert_close(again.anomaly_maps, out.anomaly_maps, rtol=0, atol=0)


@pytest.mark.parametrize("key", ["clip", "winclip"])
def test_batch_equals_single_images(methods, key) -> None:
    method = methods[key]
    images = _images(3, seed=1)
    batched = method.predict(images)
    for index in range(3):
        single = method.predict(images[index : index + 1])
        torch.testing.assert_close(single.image_scores, batched.image_scores[index : index + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(single.anomaly_maps, batched.anomaly_maps[index : index + 1], atol=1e-5, rtol=0)


def test_image_feature_is_open_clip_image_embedding(methods, backbone) -> None:
    """The image score uses CLIP's own embedding (with ln_post), whatever the V-V setting of the maps."""
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))  # native size
    with torch.no_grad():
        expected = F.normalize(backbone.clip.encode_image(images), dim=-1)
    for method in methods.values():
        torch.testing.assert_close(method.predict(images).state.image_features, expected, atol=1e-5, rtol=1e-5)


def test_training_free_and_empty_checkpoint(methods) -> None:
    for method in methods.values():
        assert method.prompt.state_dict() == {}
        assert method.trainable_parameters() == []
        assert method.training_free
        with pytest.raises(NotImplementedError, match=f"baseline '{method.name}' is training-free"):
            method.loss(_images(1), torch.zeros(1, SIZE, SIZE), torch.zeros(1))
    assert ClipPromptBaseline.name == "clip" and WinClipBaseline.name == "winclip"


def test_text_features_computed_once(backbone, monkeypatch) -> None:
    normal, abnormal = WinClipBaseline(backbone, WinClipConfig(class_name="brain")).prompt_texts()
    assert (len(normal), len(abnormal)) == (7 * 21, 4 * 21)
    assert all("brain" in text for text in normal + abnormal)
    config = WinClipConfig(
        image_size=SIZE, normal_states=["{}", "normal {}"], abnormal_states=["bad {}"], templates=["a {}.", "the {}."]
    )
    method = WinClipBaseline(backbone, config)
    calls = []
    encode = backbone.clip.encode_text
    monkeypatch.setattr(backbone.clip, "encode_text", lambda ids: calls.append(len(ids)) or encode(ids))
    first = method.text_features()
    assert sum(calls) == 2 * 2 + 1 * 2
    assert method.text_features() is first
    method.predict(_images(1))
    assert sum(calls) == 6
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(2))
    method.config.class_name = "liver"  # a changed prompt set is re-encoded
    assert not torch.equal(method.text_features(), first)
    assert sum(calls) == 12


def test_config_validation(backbone) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        ClipPromptBaseline(backbone, ClipPromptConfig(normal_states=["normal"]))
    with pytest.raises(ValueError, match="must not be empty"):
        WinClipBaseline(backbone, WinClipConfig(templates=[]))
    with pytest.raises(ValueError, match="dpam_start_layer"):
        ClipPromptBaseline(backbone, ClipPromptConfig(dpam_start_layer=99))
    with pytest.raises(ValueError, match="does not fit"):
        window_indices((7, 7), 8)


def test_window_indices_cover_grid() -> None:
    indices = window_indices((5, 6), 2)
    assert indices.shape == (4 * 5, 4)
    assert indices[0].tolist() == [0, 1, 6, 7]
    assert indices[-1].tolist() == [22, 23, 28, 29]
    strided = window_indices((7, 7), 3, stride=3)  # starts 0, 3 and the added 4
    assert strided.shape == (9, 9)
    assert torch.bincount(strided.flatten(), minlength=49).min() >= 1


def test_harmonic_spread_matches_loop() -> None:
    grid = (4, 5)
    indices = window_indices(grid, 2)
    scores = torch.rand(2, indices.shape[0], generator=torch.Generator().manual_seed(0)) + 0.05
    fast = harmonic_spread(scores, window_membership(indices, 20))
    for patch in range(20):
        covering = [w for w in range(indices.shape[0]) if patch in indices[w].tolist()]
        expected = len(covering) / (1 / scores[:, covering]).sum(dim=1)
        torch.testing.assert_close(fast[:, patch], expected)
    zero = harmonic_mean(torch.tensor([[0.0, 0.5], [1.0, 0.5]]))
    torch.testing.assert_close(zero, torch.tensor([0.0, 0.5]))


def _masked_window_embeddings(backbone: ClipBackbone, tokens: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """The obvious (slow) window encoding: for every window, the *full* sequence through open_clip's own
    blocks with an additive attention mask under which the window's tokens and the CLS see only each
    other (the other tokens see everything). Returns ``[B, W, D]``."""
    batch, length, width = tokens.shape
    count = windows.shape[0]
    inside = torch.zeros(count, length, dtype=torch.bool)
    inside[:, 0] = True
    inside.scatter_(1, windows + 1, True)
    blocked = inside[:, :, None] & ~inside[:, None, :]  # [W, L, L]
    masks = torch.zeros(count, length, length).masked_fill(blocked, float("-inf"))
    heads = backbone.visual.visual.transformer.resblocks[0].attn.num_heads
    masks = masks.repeat_interleave(batch * heads, dim=0)  # MHA wants [W*B*heads, L, L], windows outermost
    x = tokens.unsqueeze(0).expand(count, -1, -1, -1).reshape(count * batch, length, width)
    for block in backbone.visual.visual.transformer.resblocks:
        x = block(x, attn_mask=masks)
    return pool_cls(backbone.visual, x).reshape(count, batch, -1).transpose(0, 1)


def test_window_encoding_equals_masked_full_sequence(backbone) -> None:
    method = WinClipBaseline(backbone, WinClipConfig(image_size=SIZE, window_batch_size=13))
    with torch.no_grad():
        tokens = backbone.visual.embed(_images(2, seed=2))
        grid = backbone.visual.grid_for((SIZE, SIZE))
        for size in (2, 3):
            indices, _ = method.windows(grid, size, tokens.device)
            fast = method.encode_windows(tokens, indices)
            slow = _masked_window_embeddings(backbone, tokens, indices)
            assert fast.shape == slow.shape == (2, indices.shape[0], backbone.embed_dim)
            torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-5)
        # The unmasked CLS differs from every window's: the mask really isolates the window.
        full = _masked_window_embeddings(backbone, tokens, torch.arange(grid[0] * grid[1])[None])
        assert (fast - full).abs().amax(dim=-1).min() > 1e-3


# -- a hand-built backbone whose answer is known ------------------------------------------------------
def _constructed_backbone() -> tuple[ClipBackbone, torch.Tensor]:
    """A ViT that tags each patch token with ±v (sign of channel 0) and mixes tokens only in block 1
    by uniform attention; every other block is the identity. The abnormal text direction is +v, so a
    bright square must light up the map and raise the image score."""
    backbone = ClipBackbone(load_clip("medzsad-tiny-fast", pretrained=None))
    visual = backbone.visual.visual
    width = visual.conv1.weight.shape[0]
    v = torch.tensor([1.0, -1.0]).repeat(width // 2)  # zero mean, unit variance: a LayerNorm fixed point
    c = torch.tensor([1.0, 1.0, -1.0, -1.0]).repeat(width // 4)  # same, orthogonal to v
    with torch.no_grad():
        visual.conv1.weight.zero_()
        visual.conv1.weight[:, 0] = v[:, None, None] / (16 * 16)
        visual.class_embedding.copy_(c)
        visual.positional_embedding.zero_()
        for norm in [visual.ln_pre, visual.ln_post] + [
            n for b in visual.transformer.resblocks for n in (b.ln_1, b.ln_2)
        ]:
            norm.weight.fill_(1.0)
            norm.bias.zero_()
        for index, block in enumerate(visual.transformer.resblocks):
            attn = block.attn
            attn.in_proj_weight.zero_()
            attn.in_proj_bias.zero_()
            attn.in_proj_weight[2 * width :] = torch.eye(width)  # q = k = 0 (uniform), v = identity
            attn.out_proj.weight.copy_(torch.eye(width) if index == 0 else torch.zeros(width, width))
            attn.out_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
        visual.proj.zero_()
        visual.proj[:, :width] = torch.eye(width)
    abnormal = F.pad(v, (0, backbone.embed_dim - width)) / v.norm()
    return backbone, torch.stack([-abnormal, abnormal])


@pytest.mark.parametrize(
    ("method_class", "config"),
    [
        (ClipPromptBaseline, ClipPromptConfig(dpam_start_layer=None, sigma=0.0)),
        (ClipPromptBaseline, ClipPromptConfig(dpam_start_layer=1, sigma=2.0)),
        # With the image score in the harmonic mean, a confidently normal image score (as here: the
        # square is 9 of 49 patches) flattens the whole map towards 0; that is WinCLIP's design, so the
        # localisation is checked on the window maps alone.
        (WinClipBaseline, WinClipConfig(include_image_score=False)),
    ],
)
def test_map_responds_to_constructed_anomaly(method_class, config, monkeypatch) -> None:
    backbone, text = _constructed_backbone()
    method = method_class(backbone, config)
    monkeypatch.setattr(method, "text_features", lambda: text)
    plain = -torch.ones(1, 3, SIZE, SIZE)
    anomalous = plain.clone()
    anomalous[:, 0, 16:80, 16:80] = 1.0  # patch rows and columns 1-4
    out = method.predict(torch.cat([plain, anomalous]))
    # Scores saturate at these temperatures; compare them as log-odds.
    assert torch.logit(out.image_scores[1].double()) > torch.logit(out.image_scores[0].double()) + 1.0
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[16:80, 16:80] = True
    anomaly_map = out.raw_maps[1]
    assert anomaly_map[region].mean() > anomaly_map[~region].mean() + 0.15
    assert region.flatten()[int(anomaly_map.argmax())]
    assert out.raw_maps[0].max() - out.raw_maps[0].min() < 1e-5  # a uniform image gives a flat map
    for size, value in getattr(out.state, "patch_maps", {}).items():  # per-scale WinCLIP maps peak inside too
        row, col = divmod(int(value[1].argmax()), value.shape[-1])
        assert 1 <= row <= 4 and 1 <= col <= 4, size
