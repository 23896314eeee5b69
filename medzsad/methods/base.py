"""What every method is: a frozen backbone, trainable prompt modules, maps, image scores and losses.

A method is a plain ``nn.Module`` with no knowledge of files, logging or data sets. The engine calls
:meth:`ZsadMethod.predict` for inference and :meth:`ZsadMethod.loss` for training, and saves
``method.prompt.state_dict()`` as the checkpoint: the backbone is never part of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from medzsad.backbone.clip import ClipBackbone
from medzsad.backbone.visual import TokenTap

T = TypeVar("T")


@dataclass
class MethodOutput:
    """Inference result for a batch.

    Attributes:
        image_scores: ``[B]`` anomaly score per image in [0, 1].
        anomaly_maps: ``[B, H, W]`` final pixel maps at model resolution (smoothed).
        raw_maps: ``[B, H, W]`` pixel maps before smoothing.
        extras: method-specific intermediates (patch probabilities, text features...), for parity
            tests and inspection.
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor
    raw_maps: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LossOutput:
    """Training loss for a batch: the tensor to back-propagate and every named term (detached copies
    are the caller's business)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


@dataclass(frozen=True)
class BatchTerm:
    """A loss term that is *not* a mean of a per-image value over the batch's images.

    Data-parallel training needs to know such terms to weigh each process's share correctly.

    Attributes:
        weight: the term's coefficient in ``LossOutput.total``.
        count: ``None`` when the term is a sum over the batch's images; otherwise the term is a mean over
            ``count(images, masks, labels)`` items of the batch (normal images, anomalous patches...).
    """

    weight: float
    count: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], int] | None = None


@dataclass
class MethodConfig:
    """Base of the per-method configs: the fields every method has."""

    image_size: int = 518
    temperature: float = 0.07
    sigma: float = 4.0
    fp16_deep_prompts: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ZsadMethod(nn.Module):
    """Base class of the methods. Subclasses set ``name`` and ``config_class`` and build ``self.prompt``.

    Args:
        backbone: the shared frozen CLIP.
        config: the method's config dataclass.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, backbone: ClipBackbone, config: MethodConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.prompt: nn.Module = nn.Module()
        self._text_cache: tuple[tuple, Any] | None = None

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters given to the optimiser: the prompt modules, never the backbone."""
        return [p for p in self.prompt.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> ZsadMethod:
        super().train(mode)
        self.backbone.train(False)
        return self

    def cached_text(self, compute: Callable[[], T], *extra_key: object) -> T:
        """``compute()`` for text features that do not depend on the image, cached while the prompt
        tensors, the device and ``extra_key`` are unchanged. Computed once, so always with the text
        encoder in fp32 (:meth:`ClipBackbone.fp32_text`). In training with gradients it is always
        recomputed at the training precision, so the prompts receive their gradient."""
        if torch.is_grad_enabled() and self.training and self.trainable_parameters():
            return compute()
        device = self.backbone.clip.token_embedding.weight.device
        params = tuple((p.data_ptr(), p._version) for p in self.prompt.parameters())
        key = (device, params, extra_key)
        if self._text_cache is None or self._text_cache[0] != key:
            with torch.no_grad(), self.backbone.fp32_text():
                self._text_cache = (key, compute())
        return self._text_cache[1]

    def batch_level_terms(self) -> dict[str, BatchTerm]:
        """Loss terms that are not means over the batch's images (see :class:`BatchTerm`); none by default."""
        return {}

    def draw_training_noise(self, batch_size: int) -> torch.Tensor | None:
        """The random draws of one training batch (``loss(..., noise=...)``), for methods that sample per
        image in training; ``None`` for deterministic methods. Data-parallel training draws the whole
        global batch on every process and gives each its rows, so results match one process."""
        return None

    def skip_test_draws(self, images: int) -> None:
        """Advance the test-time random stream past the draws of ``images`` images, so a shard of a
        dataset gets the draws it gets in one process; a no-op for deterministic methods."""

    def reset_generator(self, seed: int | None = None) -> None:
        """Restart the random stream the method samples from (CoPS draws VAE samples); a no-op for
        deterministic methods. Training calls it at every epoch start and evaluation at every dataset,
        so results do not depend on what ran before."""

    def predict(self, images: torch.Tensor) -> MethodOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_with_tokens(
        self, images: torch.Tensor, layers: tuple[int, ...], *args: Any, **kwargs: Any
    ) -> tuple[MethodOutput, TokenTap]:
        """:meth:`predict` (given ``args``/``kwargs`` as they are), plus the tokens its own full-image
        backbone pass computed after ``layers`` (both streams, before ``ln_post``). The output is
        :meth:`predict`'s: the tap only keeps references. Few-shot memory banks use it
        (:mod:`medzsad.methods.memory`)."""
        with self.backbone.visual.tapped(layers) as tap:
            output = self.predict(images, *args, **kwargs)
        if not tap.done:
            raise RuntimeError(f"{self.name} ran no full-image pass of the backbone to take patch tokens from")
        return output, tap

    def loss(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        raise NotImplementedError(f"{self.name} has no training loss")  # pragma: no cover

    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the prompt learner of an official release checkpoint (``ckpt["prompt_learner"]``)."""
        raise NotImplementedError(f"{self.name} has no official checkpoint format")  # pragma: no cover


def load_prompt_state(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], ignored_prefixes: tuple[str, ...], source: str
) -> None:
    """Strictly load ``state_dict`` into ``module`` after dropping keys with ``ignored_prefixes``.

    Raises:
        ValueError: naming missing keys, unexpected keys or shape mismatches, with ``source`` in the text.
    """
    kept = {k: v for k, v in state_dict.items() if not k.startswith(ignored_prefixes)}
    own = module.state_dict()
    missing = sorted(set(own) - set(kept))
    unexpected = sorted(set(kept) - set(own))
    mismatched = [k for k in set(own) & set(kept) if tuple(own[k].shape) != tuple(kept[k].shape)]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"missing {missing[:4]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:4]}")
        if mismatched:
            shapes = [f"{k}: {tuple(kept[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(mismatched)[:3]]
            details.append("shape mismatch " + "; ".join(shapes))
        raise ValueError(f"{source} does not fit this model ({', '.join(details)})")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in kept.items()}, strict=True)
