"""The evaluation loop launches batch i + 1 before handing over batch i, and changes no output."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from medzsad.data.records import Sample, collate_samples
from medzsad.engine.inference import indexed, predict_batches
from medzsad.methods.base import MethodOutput


def _batch(value: float, size: int = 2):
    samples = [
        Sample(image=torch.full((3, 4, 4), value), mask=None, label=0, category="c", sample_id=f"{value}-{i}")
        for i in range(size)
    ]
    return collate_samples(samples)


def test_next_batch_is_launched_before_the_previous_is_handed_over():
    events: list[str] = []

    def predict(images: torch.Tensor, noise=None) -> MethodOutput:
        events.append(f"launch {images[0, 0, 0, 0]:.0f}")
        maps = images[:, 0] * 2
        return MethodOutput(image_scores=images.mean(dim=(1, 2, 3)), anomaly_maps=maps, raw_maps=maps)

    method = SimpleNamespace(predict=predict, noise_shape=lambda training: None)
    batches = [_batch(float(i)) for i in range(3)]
    for batch in predict_batches(method, indexed(batches), torch.device("cpu")):
        scores, maps = batch.pred_score.numpy(), batch.anomaly_map.numpy()
        events.append(f"use {scores[0]:.0f}")
        assert scores.shape == (2,) and maps.shape == (2, 4, 4)
        assert (maps == 2 * batch.image[:, 0].numpy()).all()  # each batch with its own outputs
    assert events == ["launch 0", "launch 1", "use 0", "launch 2", "use 1", "use 2"]


def test_an_empty_loader_yields_nothing():
    method = SimpleNamespace(predict=lambda images, noise: None, noise_shape=lambda training: None)
    assert list(predict_batches(method, [], torch.device("cpu"))) == []


def test_samples_are_keyed_by_their_index():
    assert [keys for _, keys in indexed([_batch(0.0, 2), _batch(1.0, 3)], start=5)] == [
        [(5,), (6,)],
        [(7,), (8,), (9,)],
    ]
