"""The image side: open_clip's ViT run with a second, V-V attention residual stream (DPAM).

The module wraps an open_clip ``VisionTransformer`` and reuses its parameters as they are (no copy, no
fork of CLIP code, nothing written back): the positional embedding is resized on the fly for any input
size, and the replaced blocks compute one qkv projection that feeds both streams (methods-spec §1.2):

* original stream  ``o = o + Attn_qk(LN1(o)); o = o + MLP(LN2(o))`` (unchanged CLIP);
* V-V stream       ``v = v + Attn_vv(LN1(o))`` with ``softmax(v vᵀ/√d) v``, the same out-proj, no MLP.

The V-V stream starts as the input of the first replaced block. Patch features of a layer are
``ln_post(stream) @ proj`` (V-V stream at or after the DPAM start, original stream before it); the
global feature is ``o_L[CLS] @ proj`` without ``ln_post``, as the reference code computes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn


@dataclass
class VisualFeatures:
    """Output of :class:`DualPathVisionEncoder`.

    Attributes:
        global_features: ``[B, D]`` CLS of the original stream after the last block, projected, not
            normalised, without ``ln_post``.
        patch_features: one ``[B, 1 + H*W, D]`` tensor per requested layer (index 0 is the CLS token),
            projected, not normalised, in the order of ``layers``.
        grid_size: ``(H, W)`` of the patch grid.
    """

    global_features: torch.Tensor
    patch_features: list[torch.Tensor]
    grid_size: tuple[int, int]


@dataclass
class TokenTap:
    """Tokens of a method's own full-image pass, recorded for few-shot memory banks.

    Armed with :meth:`DualPathVisionEncoder.tapped`; the first :meth:`DualPathVisionEncoder.run_blocks`
    call over the tokens of the last :meth:`DualPathVisionEncoder.embed` (the full image, not WinCLIP's
    window sequences) records, after each block in ``layers`` (1-indexed), both streams as they are:
    nothing is recomputed and the method's outputs are unchanged.

    Attributes:
        layers: blocks to record.
        original: ``layer -> [B, 1 + h*w, C]`` original (q-k) stream tokens, before ``ln_post``.
        value_value: the same for the V-V (DPAM) stream, for the layers the pass ran it at.
    """

    layers: tuple[int, ...]
    original: dict[int, torch.Tensor] = field(default_factory=dict)
    value_value: dict[int, torch.Tensor] = field(default_factory=dict)
    expected_tokens: int | None = None
    done: bool = False


def resize_positional_embedding(pos_embed: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a ViT positional embedding ``[1 + g*g, C]`` to a new patch grid.

    The CLS row is kept; the square grid is resized with ``align_corners=False`` as the reference code
    does. Returns a new tensor; the input is never modified.
    """
    cls_row, grid_rows = pos_embed[:1], pos_embed[1:]
    side = round(grid_rows.shape[0] ** 0.5)
    if (side, side) == tuple(grid_size):
        return pos_embed
    grid = grid_rows.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=grid_size, mode="bilinear")
    grid = grid[0].reshape(grid_rows.shape[-1], -1).transpose(0, 1)
    return torch.cat([cls_row, grid], dim=0)


def blocks_precision(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast for the transformer blocks when a reduced ``dtype`` is set; fp32 (``None``) is a no-op.

    Only the blocks run in reduced precision: the encoders return fp32 tokens, so projections,
    similarities, softmax and maps stay in fp32 whatever the precision of the heavy part."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, N, C]`` -> ``[B, heads, N, C / heads]``."""
    batch, tokens, width = x.shape
    return x.reshape(batch, tokens, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, heads, N, c]`` -> ``[B, N, heads * c]``."""
    batch, heads, tokens, head_width = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_width)


class DualPathVisionEncoder(nn.Module):
    """An open_clip ViT with the DPAM V-V stream on blocks ``dpam_start_layer .. L``.

    Args:
        visual: the open_clip ``VisionTransformer`` (its parameters are shared, not copied).
    """

    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        self.visual = visual
        self.num_layers = len(visual.transformer.resblocks)
        self.patch_size = tuple(visual.patch_size)
        self.compute_dtype: torch.dtype | None = None  # set by ClipBackbone.set_precision
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self.tap: TokenTap | None = None

    @property
    def output_dim(self) -> int:
        return int(self.visual.proj.shape[1])

    def grid_for(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return image_size[0] // self.patch_size[0], image_size[1] // self.patch_size[1]

    def positional_embedding(self, grid_size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """Resized positional embedding for ``grid_size``, cached per grid, device and dtype."""
        pos = self.visual.positional_embedding
        key = (grid_size, like.device, like.dtype, pos._version)
        if key not in self._pos_cache:
            self._pos_cache = {key: resize_positional_embedding(pos.detach(), grid_size).to(like)}
        return self._pos_cache[key]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + CLS embedding with positions and ``ln_pre``: ``[B,3,H,W]`` -> ``[B, 1+h*w, C]``."""
        visual = self.visual
        x = visual.conv1(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding(grid, x)
        x = visual.patch_dropout(x)
        if self.tap is not None and self.tap.expected_tokens is None:
            self.tap.expected_tokens = x.shape[1]
        return visual.ln_pre(x)

    @contextlib.contextmanager
    def tapped(self, layers: Sequence[int]) -> Iterator[TokenTap]:
        """Record the tokens of the next full-image pass at ``layers`` (1-indexed, negative from the end)."""
        wanted = tuple(layer if layer > 0 else self.num_layers + 1 + layer for layer in layers)
        if not wanted or any(not 1 <= layer <= self.num_layers for layer in wanted):
            raise ValueError(f"layers must be in 1..{self.num_layers} (or negative), got {list(layers)}")
        self.tap = TokenTap(wanted)
        try:
            yield self.tap
        finally:
            self.tap = None

    def run_blocks(
        self, tokens: torch.Tensor, dpam_start_layer: int | None = None, collect: Sequence[int] = ()
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run the blocks over embedded tokens ``[B, N, C]`` (from :meth:`embed`, or a subset of them).

        Returns the original stream after the last block and, for each block in ``collect``
        (1-indexed), the tokens after it: the V-V stream from ``dpam_start_layer`` on, the original
        stream before it.
        """
        x = tokens
        vv: torch.Tensor | None = None
        collected: dict[int, torch.Tensor] = {}
        tap = self.tap if self.tap is not None and not self.tap.done else None
        tap = tap if tap is not None and tokens.shape[1] == tap.expected_tokens else None
        with blocks_precision(tokens.device, self.compute_dtype):
            for index, block in enumerate(self.visual.transformer.resblocks, start=1):
                if dpam_start_layer is not None and index >= dpam_start_layer:
                    vv = x if vv is None else vv
                    x, vv = dual_path_block(block, x, vv)
                else:
                    x = block(x)
                if index in collect:
                    collected[index] = vv if vv is not None else x
                if tap is not None and index in tap.layers:
                    tap.original[index] = x.float()
                    if vv is not None:
                        tap.value_value[index] = vv.float()
        if tap is not None:
            tap.done = True
        return x.float(), {index: tokens.float() for index, tokens in collected.items()}

    def forward(
        self, images: torch.Tensor, layers: Sequence[int] = (-1,), dpam_start_layer: int | None = 6
    ) -> VisualFeatures:
        """Encode images.

        Args:
            images: ``[B, 3, H, W]`` normalised with the CLIP mean/std; H and W multiples of the patch.
            layers: 1-indexed blocks whose tokens become patch features (negative counts from the end).
            dpam_start_layer: first block (1-indexed) with the V-V stream; AnomalyCLIP and FAPrompt use 6
                (blocks 6-24 of ViT-L/14), CoPS 1. ``None`` disables the V-V stream (plain CLIP).

        Returns:
            :class:`VisualFeatures`.
        """
        wanted = [layer if layer > 0 else self.num_layers + 1 + layer for layer in layers]
        if any(not 1 <= layer <= self.num_layers for layer in wanted):
            raise ValueError(f"layers must be in 1..{self.num_layers}, got {list(layers)}")
        if dpam_start_layer is not None and not 1 <= dpam_start_layer <= self.num_layers:
            raise ValueError(f"dpam_start_layer must be in 1..{self.num_layers}, got {dpam_start_layer}")
        x = self.embed(images)
        grid = self.grid_for((images.shape[-2], images.shape[-1]))
        x, collected = self.run_blocks(x, dpam_start_layer, wanted)
        visual = self.visual
        global_features = x[:, 0] @ visual.proj
        patch_features = [visual.ln_post(collected[layer]) @ visual.proj for layer in wanted]
        return VisualFeatures(global_features, patch_features, grid)


def dual_path_block(
    block: ResidualAttentionBlock, x: torch.Tensor, vv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One replaced block: both attentions from a single qkv projection of ``ln_1(x)``.

    Args:
        block: an open_clip ``ResidualAttentionBlock`` whose ``attn`` is ``nn.MultiheadAttention``.
        x: original stream ``[B, N, C]``.
        vv: V-V stream ``[B, N, C]``.

    Returns:
        The updated ``(x, vv)``; new tensors, the inputs are not modified in place.
    """
    attn: nn.MultiheadAttention = block.attn
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (split_heads(t, heads) for t in qkv.chunk(3, dim=-1))
    original = merge_heads(F.scaled_dot_product_attention(q, k, v))
    value_value = merge_heads(F.scaled_dot_product_attention(v, v, v))
    original = F.linear(original, attn.out_proj.weight, attn.out_proj.bias)
    value_value = F.linear(value_value, attn.out_proj.weight, attn.out_proj.bias)
    x = x + block.ls_1(original)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    vv = vv + block.ls_1(value_value)
    return x, vv
