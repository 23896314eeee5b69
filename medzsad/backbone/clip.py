"""The shared frozen backbone: a CLIP model seen through the two encoders every method uses."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

from medzsad.backbone.config import BackboneConfig
from medzsad.backbone.loading import LoadedClip, clip_tokenizer, load_clip
from medzsad.backbone.text import PromptableTextEncoder
from medzsad.backbone.visual import DualPathVisionEncoder, VisualFeatures

# OpenAI CLIP normalisation, used by every method of the AnomalyCLIP lineage.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipBackbone(nn.Module):
    """Frozen CLIP with a dual-path image encoder and a promptable text encoder.

    Nothing here is trainable: every parameter has ``requires_grad=False`` and the module stays in eval
    mode (``train()`` is a no-op), so methods only ever optimise their own prompt modules.

    One backbone serves every method: the DPAM range is an argument of :meth:`encode_image`, not a
    property of the model.

    Args:
        loaded: the frozen model and its provenance, from :func:`load_clip`.
    """

    def __init__(self, loaded: LoadedClip) -> None:
        super().__init__()
        self.clip = loaded.model
        self.model_name = loaded.model_name
        self.weights_id = loaded.weights_id
        self.weights_sha256 = loaded.weights_sha256
        self.visual = DualPathVisionEncoder(self.clip.visual)
        self.text = PromptableTextEncoder(self.clip)
        if getattr(self.clip, "text_pool_type", "argmax") != "argmax":
            raise ValueError(
                f"backbone {self.model_name!r}: its text tower pools with {self.clip.text_pool_type!r}; "
                "medzsad reads the end-of-text token (argmax pooling, as CLIP)"
            )
        self.tokenizer = clip_tokenizer(self.model_name)
        self.eval()

    @classmethod
    def from_config(cls, cfg: BackboneConfig) -> ClipBackbone:
        return cls(load_clip(cfg.model_name, cfg.pretrained, cfg.weights_path, cfg.offline, cfg.seed))

    def set_precision(self, precision: str) -> None:
        """``"fp32"`` (the parity reference), ``"bf16"`` or ``"fp16"`` for the transformer blocks of both
        encoders (autocast). Embeddings, projections and everything the methods compute from the
        features stay in fp32."""
        dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        if precision not in dtypes:
            raise ValueError(f"precision must be one of {sorted(dtypes)}, got {precision!r}")
        self.visual.compute_dtype = self.text.compute_dtype = dtypes[precision]

    @contextlib.contextmanager
    def fp32_text(self) -> Iterator[None]:
        """Run the text encoder in fp32 inside the block, whatever :meth:`set_precision` chose.

        Text features that do not depend on the image are computed once per run and cached, so full
        precision costs nothing there; measured on a trained tiny model, the bf16 text encoder caused
        most of bf16's drift in pixel metrics (``scripts/check_precision.py``)."""
        saved = self.text.compute_dtype
        self.text.compute_dtype = None
        try:
            yield
        finally:
            self.text.compute_dtype = saved

    @property
    def precision(self) -> str:
        names = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        return names[self.visual.compute_dtype]

    def train(self, mode: bool = True) -> ClipBackbone:
        # The backbone is frozen; dropout/norm statistics must never switch to training behaviour.
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return self.visual.output_dim

    @property
    def text_width(self) -> int:
        return self.text.width

    @property
    def num_visual_layers(self) -> int:
        return self.visual.num_layers

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``[len(texts), 77]`` (int64) with the model's CLIP BPE tokenizer (:func:`clip_tokenizer`)."""
        return self.tokenizer(texts)

    def encode_image(
        self, images: torch.Tensor, layers: tuple[int, ...] = (-1,), dpam_start_layer: int | None = 6
    ) -> VisualFeatures:
        """Frozen image features; see :meth:`DualPathVisionEncoder.forward`. Runs without autograd."""
        with torch.no_grad():
            return self.visual(images, layers, dpam_start_layer)

    def identity(self) -> dict[str, str]:
        """What a checkpoint records about the backbone it was trained on."""
        return {
            "backbone": self.model_name,
            "backbone_weights": self.weights_id,
            "backbone_sha256": self.weights_sha256 or "",
        }


def default_device() -> torch.device:
    """``cuda`` when available (and not disabled with ``MEDZSAD_DEVICE=cpu``), else ``cpu``."""
    requested = os.environ.get("MEDZSAD_DEVICE")
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
