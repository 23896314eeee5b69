"""What every method is: a frozen backbone, trainable prompt modules, maps, image scores and losses.

A method is a plain ``nn.Module`` with no knowledge of files, logging or data sets. The engine calls
:meth:`ZsadMethod.predict` for inference and :meth:`ZsadMethod.loss` for training, and saves
``method.prompt.state_dict()`` as the checkpoint: the backbone is never part of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from medzsad.backbone.clip import ClipBackbone
from medzsad.backbone.visual import VisualFeatures

T = TypeVar("T")

#: Token buffers every official prompt learner stores; ours are rebuilt exactly from the tokenizer.
OFFICIAL_TOKEN_BUFFERS = ("token_prefix", "token_suffix", "tokenized_prompts")


@dataclass
class ForwardState:
    """Base of the typed intermediates of one forward pass (each method's subclass adds its fields).

    The learned methods' states hold the backbone pass itself (``features``: the global feature and the
    patch tokens of the method's layers), so other code (a few-shot memory bank, inspection) can reuse
    it instead of running the backbone again.
    """

    def detached(self) -> ForwardState:
        """A copy whose tensors (also inside lists, dicts and :class:`VisualFeatures`) are detached."""
        return dataclasses.replace(
            self, **{f.name: _detach(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}
        )


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, list):
        return [_detach(v) for v in value]
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, VisualFeatures):
        return VisualFeatures(_detach(value.global_features), _detach(value.patch_features), value.grid_size)
    return value


@dataclass
class MethodOutput:
    """Inference result for a batch.

    Attributes:
        image_scores: ``[B]`` anomaly score per image in [0, 1].
        anomaly_maps: ``[B, H, W]`` final pixel maps at model resolution (smoothed).
        raw_maps: ``[B, H, W]`` pixel maps before smoothing.
        state: the method's typed intermediates (patch probabilities, text features...), for parity
            tests and inspection; ``None`` when a method keeps none.
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor
    raw_maps: torch.Tensor
    state: ForwardState | None = None


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
    """Base of the per-method configs: the fields every method has.

    Validation is done one way: :meth:`validate` (subclasses extend it and call ``super()``) runs when a
    config is built and again when a method is built from it; a setting the method cannot run with
    raises ``ValueError`` naming the field.
    """

    #: Keys older checkpoints may store that no longer mean anything (dropped when a checkpoint is read).
    retired_keys: ClassVar[tuple[str, ...]] = ()

    image_size: int = 518
    temperature: float = 0.07
    sigma: float = 4.0
    fp16_deep_prompts: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` on settings the method cannot run with."""
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ZsadMethod(nn.Module):
    """Base class of the methods: construction, validation, the text cache, the deep-prompt text call,
    the random-draw protocol and the official checkpoint format are done here once.

    Subclasses set ``name``, ``config_class`` and ``prompt_class`` (their trainable modules); they
    implement :meth:`predict` and, when they learn, :meth:`loss`.

    Randomness is declared, never hidden: a method that samples (CoPS) says what it draws per image with
    :meth:`noise_shape`, and ``predict``/``loss`` take those draws as ``noise``. The engine supplies
    them, seeded per sample (``medzsad.engine.randomness``), so results depend neither on batching nor
    on which process or shard ran a sample. Called without ``noise``, a sampling method draws from
    torch's global generator, as a dropout layer does.

    Args:
        backbone: the shared frozen CLIP.
        config: the method's config dataclass (default: ``config_class()``).
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    #: The trainable module, built as ``prompt_class(backbone, config)``; ``None``: nothing to learn.
    prompt_class: ClassVar[Callable[[ClipBackbone, Any], nn.Module] | None] = None
    #: Whether the method has nothing to learn (no loss, empty checkpoints).
    training_free: ClassVar[bool] = False
    #: How the official release names this method, in error messages about its checkpoints.
    official_name: ClassVar[str] = ""
    #: Modules of the official ``prompt_learner`` its forward pass never uses (ignored on load, as are
    #: :data:`OFFICIAL_TOKEN_BUFFERS`).
    official_dead_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, backbone: ClipBackbone, config: MethodConfig | None = None) -> None:
        super().__init__()
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name} needs a {self.config_class.__name__}, got {type(config).__name__}")
        config.validate()
        self.backbone = backbone
        self.config = config
        self._text_cache: tuple[tuple, Any] | None = None
        self.prompt: nn.Module = self.build_prompt()

    def build_prompt(self) -> nn.Module:
        """The trainable modules (``self.prompt``): :attr:`prompt_class` of the backbone and config, or an
        empty module. Overridden to refuse (``ValueError``) settings this backbone cannot run."""
        return nn.Module() if self.prompt_class is None else self.prompt_class(self.backbone, self.config)

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

    # -- text ------------------------------------------------------------------------------------------
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

    def encode_prompt_tokens(self, embeddings: torch.Tensor, token_ids: torch.Tensor, length: int) -> torch.Tensor:
        """Un-normalised text embeddings ``[P, D]`` of prompt token embeddings ``[P, T, W]`` (ids
        ``[P, T]``), with the method's deep prompts (``self.prompt.compound_prompts_text``, the official
        name) and its ``fp16_deep_prompts`` setting; encoded up to ``length`` tokens (the last EOT)."""
        return self.backbone.text(
            embeddings,
            token_ids,
            list(self.prompt.compound_prompts_text),
            self.config.fp16_deep_prompts,
            length=length,
        )

    # -- randomness ------------------------------------------------------------------------------------
    def noise_shape(self, training: bool) -> tuple[int, ...] | None:
        """Shape of the random draws one image needs in :meth:`predict` (``training=False``) or
        :meth:`loss` (``True``); ``None`` for a method that draws nothing (the default)."""
        return None

    def check_noise(self, noise: torch.Tensor | None, batch: int, training: bool, like: torch.Tensor):
        """The draws ``[batch, *noise_shape]`` for a batch, on ``like``'s device and dtype: ``noise`` when
        given (its shape checked), else drawn from torch's global CPU generator; ``None`` for a method
        that draws nothing.

        Raises:
            ValueError: ``noise`` has the wrong shape, or is given to a method that draws nothing.
        """
        shape = self.noise_shape(training)
        if shape is None:
            if noise is not None:
                raise ValueError(f"{self.name} draws nothing at random; noise must be None")
            return None
        expected = (batch, *shape)
        if noise is None:
            noise = torch.randn(expected)  # CPU, so CPU and GPU runs draw the same numbers
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must be {list(expected)}, got {list(noise.shape)}")
        return noise.to(like)

    def batch_level_terms(self) -> dict[str, BatchTerm]:
        """Loss terms that are not means over the batch's images (see :class:`BatchTerm`); none by default."""
        return {}

    # -- inference and training --------------------------------------------------------------------
    def predict(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MethodOutput:  # pragma: no cover
        """Scores and maps for ``images [B, 3, S, S]`` (CLIP-normalised); ``noise`` as :meth:`noise_shape`."""
        raise NotImplementedError

    def loss(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None = None
    ) -> LossOutput:
        """Training loss of a batch (``masks [B, S, S]`` float 0/1, ``labels [B]``)."""
        raise NotImplementedError(
            f"baseline {self.name!r} is training-free: it has no loss and no parameters; evaluate it directly"
        )

    # -- official checkpoints ----------------------------------------------------------------------
    def load_official_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load an official release: the whole checkpoint's dict or its ``"prompt_learner"`` entry.

        Keys starting with :attr:`official_dead_prefixes` (modules the official forward pass never
        uses) or :data:`OFFICIAL_TOKEN_BUFFERS` (rebuilt from the backbone's tokenizer) are ignored;
        anything else missing, unexpected or of the wrong shape raises ``ValueError``.
        """
        if self.training_free:
            raise NotImplementedError(f"baseline {self.name!r} is training-free: there is no checkpoint to load")
        inner = state_dict.get("prompt_learner")
        state = dict(inner if isinstance(inner, Mapping) else state_dict)
        state = self.complete_official_state(state)
        ignored = (*self.official_dead_prefixes, *OFFICIAL_TOKEN_BUFFERS)
        load_prompt_state(self.prompt, state, ignored, f"{self.official_name} checkpoint")

    def complete_official_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fill in what official releases leave out (CoPS drops its training-only encoder); as is by default."""
        return state


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
