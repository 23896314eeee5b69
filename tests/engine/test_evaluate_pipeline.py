"""The evaluation loop launches batch i + 1 before handing over batch i, and changes no output."""

from __future__ import annotations

import torch

from medzsad.data.records import Sample, collate_samples
from medzsad.engine.evaluate import predictions_ahead
from medzsad.methods.base import MethodOutput


def _batch(value: float, size: int = 2):
    samples = [
        Sample(image=torch.full((3, 4, 4), value), mask=None, label=0, category="c", sample_id=f"{value}-{i}")
        for i in range(size)
    ]
    return collate_samples(samples)


def test_next_batch_is_launched_before_the_previous_is_handed_over():
    events: list[str] = []

    def predict(images: torch.Tensor) -> MethodOutput:
        events.append(f"launch {images[0, 0, 0, 0]:.0f}")
        maps = images[:, 0] * 2
        return MethodOutput(image_scores=images.mean(dim=(1, 2, 3)), anomaly_maps=maps, raw_maps=maps)

    batches = [_batch(float(i)) for i in range(3)]
    for batch, scores, maps in predictions_ahead(predict, batches, torch.device("cpu")):
        events.append(f"use {scores[0]:.0f}")
        assert scores.shape == (2,) and maps.shape == (2, 4, 4)
        assert (maps == 2 * batch.image[:, 0].numpy()).all()  # each batch with its own outputs
    assert events == ["launch 0", "launch 1", "use 0", "launch 2", "use 1", "use 2"]


def test_an_empty_loader_yields_nothing():
    assert list(predictions_ahead(lambda images: None, [], torch.device("cpu"))) == []
