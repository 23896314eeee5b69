"""PromptSlots: assembling learned context into token embeddings."""

from __future__ import annotations

import pytest
import torch

from medzsad.backbone import ClipBackbone, load_clip
from medzsad.prompts import PromptSlots, placeholder_prompt


@pytest.fixture(scope="module")
def slots() -> PromptSlots:
    backbone = ClipBackbone(load_clip("medzsad-tiny-fast", pretrained=None, seed=3))
    texts = [placeholder_prompt(3, "object."), placeholder_prompt(3, "damaged object.")]
    return PromptSlots(backbone.text, backbone.tokenize, texts, 3)


def test_shared_context_is_expanded_to_every_prompt(slots):
    context = torch.randn(1, 3, slots.prefix.shape[-1])
    tokens = slots.assemble(context)
    assert tokens.shape == (2, 77, slots.prefix.shape[-1])
    assert torch.equal(tokens[:, 1:4], context.expand(2, -1, -1))
    assert torch.equal(tokens[:, :1], slots.prefix)
    assert torch.equal(tokens[:, 4:], slots.suffix)


def test_leading_batch_dimensions_give_one_prompt_set_per_item(slots):
    per_item = torch.randn(5, 2, 3, slots.prefix.shape[-1])
    tokens = slots.assemble(per_item)
    assert tokens.shape == (5, 2, 77, slots.prefix.shape[-1])
    for i in range(5):
        assert torch.equal(tokens[i], slots.assemble(per_item[i]))


def test_wrong_context_length_is_refused(slots):
    with pytest.raises(ValueError, match="expected 3 context vectors"):
        slots.assemble(torch.zeros(2, 4, slots.prefix.shape[-1]))
