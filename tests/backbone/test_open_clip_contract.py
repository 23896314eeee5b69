"""What medzsad relies on inside open_clip (pyproject.toml bounds its version; this test says why).

``backbone/visual.py`` runs open_clip's ViT blocks itself (the DPAM V-V stream needs one qkv projection
feeding two attentions), ``backbone/text.py`` runs the text tower from token embeddings, and the tokenizer
must follow the CLIP BPE end-of-text rule. A release that renames or restructures any of this fails here
rather than producing wrong maps.
"""

from __future__ import annotations

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

import medzsad.backbone.loading as loading
from medzsad.backbone import ClipBackbone, load_clip
from medzsad.backbone.visual import dual_path_block


@pytest.fixture(scope="module")
def clip():
    return load_clip("medzsad-tiny-fast", pretrained=None, seed=0).model


def test_vision_transformer_internals_used_by_visual_py(clip):
    visual = clip.visual
    assert isinstance(visual, VisionTransformer)
    for name in ("conv1", "class_embedding", "positional_embedding", "patch_dropout", "ln_pre", "ln_post", "proj"):
        assert hasattr(visual, name), name
    assert len(visual.patch_size) == 2 and visual.attn_pool is None and visual.pool_type == "tok"
    block = visual.transformer.resblocks[0]
    assert isinstance(block, ResidualAttentionBlock)
    for name in ("ln_1", "ln_2", "ls_1", "ls_2", "mlp"):
        assert hasattr(block, name), name
    attn = block.attn
    assert isinstance(attn, nn.MultiheadAttention) and attn.batch_first
    assert attn.in_proj_weight is not None and attn.in_proj_bias is not None and attn.out_proj is not None


def test_replaced_block_reproduces_open_clips_own_block(clip):
    """The original stream of the dual-path block is open_clip's block forward, recomputed by us."""
    block = clip.visual.transformer.resblocks[0]
    x = torch.randn(2, 5, block.ln_1.normalized_shape[0], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = dual_path_block(block, x, x)
        theirs = block(x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_text_tower_internals_used_by_text_py(clip):
    for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask"):
        assert hasattr(clip, name), name
    assert getattr(clip, "text_pool_type", "argmax") == "argmax"


def test_tokenizer_follows_the_model_name(monkeypatch):
    asked = []

    def get_tokenizer(name):
        asked.append(name)
        return SimpleTokenizer()

    monkeypatch.setattr(loading.open_clip, "get_tokenizer", get_tokenizer)
    tokenizer = loading.clip_tokenizer("ViT-B-16")
    assert asked == ["ViT-B-16"] and tokenizer.eot_token_id == tokenizer.vocab_size - 1
    assert isinstance(loading.clip_tokenizer("medzsad-tiny-fast"), SimpleTokenizer)  # tiny configs: CLIP BPE


def test_vocabulary_with_another_eot_rule_is_refused(monkeypatch):
    class OtherTokenizer:  # e.g. a SentencePiece vocabulary whose EOT is not the largest id
        eot_token_id = 1
        vocab_size = 32000

    monkeypatch.setattr(loading.open_clip, "get_tokenizer", lambda name: OtherTokenizer())
    with pytest.raises(ValueError, match=r"'ViT-B-16-SigLIP'.*largest token id"):
        loading.clip_tokenizer("ViT-B-16-SigLIP")

    def unavailable(name):
        raise ImportError("No module named 'transformers'")

    monkeypatch.setattr(loading.open_clip, "get_tokenizer", unavailable)
    with pytest.raises(ValueError, match=r"'xlm-roberta'.*cannot be built"):
        loading.clip_tokenizer("xlm-roberta")


def test_backbone_refuses_a_text_tower_without_argmax_pooling():
    loaded = load_clip("medzsad-tiny-fast", pretrained=None, seed=0)
    loaded.model.text_pool_type = "last"
    with pytest.raises(ValueError, match="argmax"):
        ClipBackbone(loaded)
