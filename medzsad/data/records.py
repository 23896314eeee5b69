"""The typed records that travel from the data layer to methods, metrics and tracking.

A :class:`Sample` is one 2-D image ready for the model; a :class:`Batch` stacks samples. Metadata is
allow-listed (:func:`medzsad.data.ids.clean_meta`): no paths, names, UIDs or dates ever live here, so
everything in a record may be logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from medzsad.data.ids import clean_meta

__all__ = [
    "LABEL_ABNORMAL",
    "LABEL_NORMAL",
    "LABEL_UNKNOWN",
    "Batch",
    "Sample",
    "SampleResult",
    "collate_samples",
]

LABEL_NORMAL = 0
LABEL_ABNORMAL = 1
LABEL_UNKNOWN = -1


@dataclass
class Sample:
    """One image at model resolution.

    Attributes:
        image: float32 ``[3, S, S]``, CLIP-normalised (S = model input size, 518 by default).
        mask: bool ``[S, S]`` ground truth at model resolution, or ``None`` when unknown.
            Normal images of a dataset with masks get an all-false mask (as the official loaders do).
        label: 0 normal, 1 abnormal, -1 unknown.
        category: the class name (``cls_name`` of the manifest), e.g. ``"brain"``.
        sample_id: pseudonymous id (keyed hash of the source identity); never a path or UID.
        specie: defect type / folder (``specie_name``), ``""`` when none.
        original_size: ``(H, W)`` of the source image (or slice) before resizing, in pixels.
        slice_index: index along the slicing axis when the sample is a volume slice (or a frame).
        volume_id: pseudonymous id of the volume the slice comes from.
        meta: allow-listed technical metadata (modality, spacing, ...); cleaned on construction.
    """

    image: torch.Tensor
    mask: torch.Tensor | None
    label: int
    category: str
    sample_id: str
    specie: str = ""
    original_size: tuple[int, int] = (0, 0)
    slice_index: int | None = None
    volume_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[0] != 3:
            raise ValueError(f"Sample.image must be [3, H, W], got {tuple(self.image.shape)}")
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.image.shape[1:]):
            raise ValueError(
                f"Sample.mask must be [H, W] = {tuple(self.image.shape[1:])}, got {tuple(self.mask.shape)}"
            )
        if self.label not in (LABEL_NORMAL, LABEL_ABNORMAL, LABEL_UNKNOWN):
            raise ValueError(f"Sample.label must be 0, 1 or -1, got {self.label!r}")
        self.original_size = (int(self.original_size[0]), int(self.original_size[1]))
        self.meta = clean_meta(self.meta)

    @property
    def has_mask(self) -> bool:
        """Whether a pixel ground truth is known for this sample."""
        return self.mask is not None


@dataclass(frozen=True)
class SampleResult:
    """One image's outcome, as every table and writer reads it (pseudonymous ids only).

    Attributes:
        sample_id, category, volume_id, slice_index, original_size: as in :class:`Sample`.
        label: 0, 1 or -1 (unknown).
        score: the method's image score.
        problem: for a sample that could not be read and was skipped, what went wrong (no path).
    """

    sample_id: str
    category: str
    score: float
    label: int
    volume_id: str | None = None
    slice_index: int | None = None
    original_size: tuple[int, int] = (0, 0)
    problem: str = ""  # why the sample was skipped unread (no path); empty for a scored sample


@dataclass
class Batch:
    """A stack of samples, and the model's predictions once the engine has run it.

    Attributes:
        image: float32 ``[B, 3, S, S]``.
        mask: float32 ``[B, S, S]`` with 0/1 values; all zero where ``has_mask`` is false.
        has_mask: bool ``[B]``.
        label: int64 ``[B]`` (0, 1 or -1).
        category, sample_id, specie: per-sample strings.
        original_size: per-sample ``(H, W)``.
        slice_index, volume_id: per-sample, ``None`` for plain 2-D images.
        meta: per-sample allow-listed metadata.
        pred_score: float32 ``[B]`` image scores, set by the engine's inference loop (host memory).
        anomaly_map: float32 ``[B, S, S]`` maps at model resolution, set with ``pred_score``.
    """

    image: torch.Tensor
    mask: torch.Tensor
    has_mask: torch.Tensor
    label: torch.Tensor
    category: list[str]
    sample_id: list[str]
    specie: list[str]
    original_size: list[tuple[int, int]]
    slice_index: list[int | None]
    volume_id: list[str | None]
    meta: list[dict[str, Any]]
    pred_score: torch.Tensor | None = None
    anomaly_map: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move the tensors to ``device`` (strings and metadata stay as they are)."""
        return Batch(
            image=self.image.to(device, non_blocking=non_blocking),
            mask=self.mask.to(device, non_blocking=non_blocking),
            has_mask=self.has_mask.to(device, non_blocking=non_blocking),
            label=self.label.to(device, non_blocking=non_blocking),
            category=self.category,
            sample_id=self.sample_id,
            specie=self.specie,
            original_size=self.original_size,
            slice_index=self.slice_index,
            volume_id=self.volume_id,
            meta=self.meta,
            pred_score=self.pred_score,
            anomaly_map=self.anomaly_map,
        )

    def results(self) -> list[SampleResult]:
        """One :class:`SampleResult` per sample, from the predictions set by the engine."""
        if self.pred_score is None:
            raise ValueError("this batch has no predictions yet (pred_score is None)")
        scores, labels = self.pred_score.tolist(), self.label.tolist()
        fields = zip(
            self.sample_id, self.category, scores, labels, self.volume_id, self.slice_index, self.original_size
        )
        return [SampleResult(*values) for values in fields]

    def pin_memory(self) -> Batch:
        """Pinned-memory copy; lets ``DataLoader(pin_memory=True)`` handle this custom batch type."""
        self.image = self.image.pin_memory()
        self.mask = self.mask.pin_memory()
        return self


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a :class:`Batch` (use as ``DataLoader(collate_fn=collate_samples)``)."""
    if not samples:
        raise ValueError("collate_samples needs at least one sample")
    size = tuple(samples[0].image.shape[1:])
    for s in samples:
        if tuple(s.image.shape[1:]) != size:
            raise ValueError(f"all samples must share one size, got {size} and {tuple(s.image.shape[1:])}")
    masks = [
        s.mask.to(torch.float32) if s.mask is not None else torch.zeros(size, dtype=torch.float32) for s in samples
    ]
    return Batch(
        image=torch.stack([s.image for s in samples]),
        mask=torch.stack(masks),
        has_mask=torch.tensor([s.has_mask for s in samples], dtype=torch.bool),
        label=torch.tensor([s.label for s in samples], dtype=torch.int64),
        category=[s.category for s in samples],
        sample_id=[s.sample_id for s in samples],
        specie=[s.specie for s in samples],
        original_size=[s.original_size for s in samples],
        slice_index=[s.slice_index for s in samples],
        volume_id=[s.volume_id for s in samples],
        meta=[dict(s.meta) for s in samples],
    )
