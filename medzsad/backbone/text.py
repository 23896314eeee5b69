"""The text side: open_clip's text transformer fed with token embeddings and deep prompt tokens.

Learned prompts enter in two places (methods-spec §1.3):

* the input token embeddings themselves (learnable context vectors assembled by ``medzsad.prompts``);
* deep prompts: before text block ``i`` (``i = 2 .. 1 + len(deep_prompts)``, 1-indexed), the hidden
  states at sequence positions ``1 .. n`` (right after SOT) are *overwritten* by that layer's ``n``
  learnable vectors, the same for every prompt of the batch.

The reference code casts the deep vectors to fp16 before writing them into the fp32 stream; that
rounding moves outputs by ~1e-4 and gradients by up to 1e-3 relative, so it is reproduced when
``fp16_deep_prompts=True`` (the default of every method config, "compat") and can be switched off.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from open_clip.model import CLIP
from torch import nn

from medzsad.backbone.visual import blocks_precision


class PromptableTextEncoder(nn.Module):
    """Text encoder over precomputed token embeddings, with optional deep prompts.

    Args:
        clip: the open_clip ``CLIP`` model whose text tower is used (parameters shared, not copied).
    """

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.compute_dtype: torch.dtype | None = None  # set by ClipBackbone.set_precision

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    @property
    def output_dim(self) -> int:
        proj = self.text_projection
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[P, T]`` -> embeddings ``[P, T, width]`` (no positional embedding)."""
        return self.token_embedding(token_ids)

    def forward(
        self,
        token_embeddings: torch.Tensor,
        token_ids: torch.Tensor,
        deep_prompts: Sequence[torch.Tensor] = (),
        fp16_deep_prompts: bool = True,
        length: int | None = None,
    ) -> torch.Tensor:
        """Encode prompts.

        Args:
            token_embeddings: ``[P, T, width]`` input embeddings (learned context already inserted).
            token_ids: ``[P, T]`` token ids; the EOT position is their argmax.
            deep_prompts: vectors ``[n, width]`` for text blocks 2, 3, ...; each overwrites positions
                ``1..n`` before its block.
            fp16_deep_prompts: round the deep vectors through fp16 as the reference code does.
            length: encode only the first ``length`` positions (at least every prompt's EOT position
                + 1, see :func:`used_length`). The attention is causal, so the EOT feature never sees
                the padding after it: the result is the same, for a fraction of the work (prompts of
                about 20 tokens in a 77-token context).

        Returns:
            ``[P, D]`` projected EOT features, not normalised.
        """
        blocks = self.transformer.resblocks
        if len(deep_prompts) >= len(blocks):
            raise ValueError(f"{len(deep_prompts)} deep prompt layers for a {len(blocks)}-block text encoder")
        if length is not None:
            if deep_prompts and length <= deep_prompts[0].shape[0]:
                raise ValueError(f"length {length} leaves no room after {deep_prompts[0].shape[0]} deep prompt tokens")
            token_embeddings, token_ids = token_embeddings[:, :length], token_ids[:, :length]
        tokens = token_embeddings.shape[1]
        x = token_embeddings + self.positional_embedding[:tokens].to(token_embeddings.dtype)
        mask = self.attn_mask[:tokens, :tokens].to(x.dtype)
        with blocks_precision(x.device, self.compute_dtype):
            for index, block in enumerate(blocks):
                if 1 <= index <= len(deep_prompts):
                    x = overwrite_after_sot(x, deep_prompts[index - 1], fp16_deep_prompts)
                x = block(x, attn_mask=mask)
        x = self.ln_final(x.float())
        eot = x[torch.arange(x.shape[0], device=x.device), token_ids.argmax(dim=-1)]
        proj = self.text_projection
        return proj(eot) if isinstance(proj, nn.Linear) else eot @ proj


def overwrite_after_sot(x: torch.Tensor, vectors: torch.Tensor, fp16_round: bool) -> torch.Tensor:
    """Replace positions ``1 .. n`` of ``x [P, T, C]`` by ``vectors [n, C]`` (broadcast over prompts)."""
    count = vectors.shape[0]
    inserted = vectors.unsqueeze(0).expand(x.shape[0], -1, -1)
    if fp16_round:
        # Reference quirk: .half() before concatenation with the fp32 stream; values and the gradient
        # flowing back through the cast are both rounded to fp16.
        inserted = inserted.half()
    return torch.cat([x[:, :1], inserted.to(x.dtype), x[:, 1 + count :]], dim=1)


def used_length(token_ids: torch.Tensor) -> int:
    """Positions up to and including the last EOT of ``token_ids [P, T]`` (EOT is the largest id): the
    ``length`` that :meth:`PromptableTextEncoder.forward` needs. Call it where the ids are built (on
    the CPU): on a GPU tensor it would make the host wait."""
    return int(token_ids.argmax(dim=-1).max()) + 1
