"""Prompt strings whose first word tokens are learnable slots.

A prompt such as ``"X X X X X X X X X X X X damaged object."`` is tokenised once; its SOT embedding
(the prefix) and everything after the ``n_ctx`` placeholder tokens (the suffix: the frozen words, EOT
and padding) are kept as frozen buffers, and :meth:`PromptSlots.assemble` puts learnable vectors in
between. The placeholder word does not matter for the output, only for the token count.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medzsad.backbone.text import PromptableTextEncoder, used_length


class PromptSlots(nn.Module):
    """Frozen token ids and embeddings of ``P`` prompt strings with ``n_ctx`` learnable slots each.

    Args:
        text_encoder: gives the frozen token embedding table.
        tokenizer: maps a list of strings to token ids ``[P, T]``.
        texts: the prompt strings; each must start with ``n_ctx`` single-token placeholder words.
        n_ctx: number of learnable slots right after SOT.

    Buffers (not saved in checkpoints; they follow from the backbone):
        token_ids ``[P, T]``, prefix ``[P, 1, W]``, suffix ``[P, T - 1 - n_ctx, W]``.

    Attributes:
        length: positions the text encoder needs (up to the last EOT), for its ``length`` argument.
    """

    def __init__(
        self,
        text_encoder: PromptableTextEncoder,
        tokenizer: Callable[[list[str]], torch.Tensor],
        texts: list[str],
        n_ctx: int,
    ) -> None:
        super().__init__()
        token_ids = tokenizer(texts).long()
        with torch.no_grad():
            embedding = text_encoder.embed_tokens(token_ids.to(text_encoder.token_embedding.weight.device))
        self.n_ctx = n_ctx
        self.texts = list(texts)
        self.length = used_length(token_ids)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("prefix", embedding[:, :1].clone(), persistent=False)
        self.register_buffer("suffix", embedding[:, 1 + n_ctx :].clone(), persistent=False)

    def assemble(self, context: torch.Tensor) -> torch.Tensor:
        """Insert learned vectors: ``context [..., P, n_ctx, W]`` -> token embeddings ``[..., P, T, W]``.

        ``P`` may be 1 (shared by every prompt). Leading dimensions (e.g. one context per image, for
        image-conditioned prompts) are kept, so per-image prompt sets are built in one call.
        """
        if context.shape[-2] != self.n_ctx:
            raise ValueError(f"expected {self.n_ctx} context vectors per prompt, got {context.shape[-2]}")
        lead = tuple(context.shape[:-3])
        context = context.expand(*lead, self.prefix.shape[0], -1, -1)
        prefix = self.prefix.to(context.dtype).expand(*lead, -1, -1, -1)
        suffix = self.suffix.to(context.dtype).expand(*lead, -1, -1, -1)
        return torch.cat([prefix, context, suffix], dim=-2)


def placeholder_prompt(n_ctx: int, words: str, placeholder: str = "X") -> str:
    """``"X X ... X words"`` with ``n_ctx`` placeholders (the reference prompts, e.g. ``"X ×12 object."``)."""
    return " ".join([placeholder] * n_ctx + [words])


def init_context(*shape: int, std: float = 0.02) -> nn.Parameter:
    """A learnable context tensor drawn from N(0, std²), as every method of this lineage initialises it."""
    tensor = torch.empty(*shape)
    nn.init.normal_(tensor, std=std)
    return nn.Parameter(tensor)


def init_deep_prompts(layers: int, tokens: int, width: int, std: float = 0.02) -> nn.ParameterList:
    """``layers`` learnable tensors ``[tokens, width]`` for text blocks 2 .. 1 + layers (methods-spec §1.3)."""
    return nn.ParameterList([init_context(tokens, width, std=std) for _ in range(layers)])
