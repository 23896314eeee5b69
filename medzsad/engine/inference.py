"""The one batch-inference loop: ``test``, ``predict`` and volume prediction all run the model through it.

:func:`predict_batches` runs a method over batches and writes the predictions back onto each
:class:`~medzsad.data.records.Batch` (``pred_score``, ``anomaly_map``, host memory), as anomalib's
engine does. On a GPU it keeps one batch in flight: batch ``i + 1`` is launched before batch ``i`` is
handed over, and the outputs are copied into pinned memory right behind their kernels, so the caller's
host work (metrics, files) overlaps the GPU. Sampling methods get their draws here, seeded per sample
(:mod:`medzsad.engine.randomness`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from medzsad.data.records import Batch
from medzsad.engine.randomness import NoiseKey, method_noise
from medzsad.methods.base import MethodOutput, ZsadMethod

#: A batch and the noise key of each of its samples (see :mod:`medzsad.engine.randomness`).
KeyedBatch = tuple[Batch, Sequence[NoiseKey]]


def indexed(batches: Iterable[Batch], start: int = 0) -> Iterator[KeyedBatch]:
    """Batches of consecutive dataset samples from index ``start`` on, keyed by their indices."""
    position = start
    for batch in batches:
        yield batch, [(index,) for index in range(position, position + len(batch))]
        position += len(batch)


@dataclass
class _Launched:
    """A batch whose outputs are being computed and copied to host memory."""

    batch: Batch
    scores: torch.Tensor
    maps: torch.Tensor
    copied: torch.cuda.Event | None  # recorded after the copies; None on CPU (already done)


def _to_device(noise: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """The draws on ``device``; through pinned memory on a GPU, so the copy does not stall the host."""
    if noise is None or device.type != "cuda":
        return noise
    return noise.pin_memory().to(device, non_blocking=True)


def _launch(predict: Callable[..., MethodOutput], batch: Batch, noise, device: torch.device) -> _Launched:
    with torch.inference_mode():
        output = predict(batch.image.to(device, non_blocking=True), _to_device(noise, device))
        scores, maps = output.image_scores.float(), output.anomaly_maps.float()
        if device.type != "cuda":
            return _Launched(batch, scores.cpu(), maps.cpu(), None)
        # Queue the copies right behind this batch's kernels, into pinned memory, so waiting for them
        # later does not also wait for the batch launched after this one.
        host_scores = torch.empty(scores.shape, dtype=scores.dtype, pin_memory=True)
        host_maps = torch.empty(maps.shape, dtype=maps.dtype, pin_memory=True)
        host_scores.copy_(scores, non_blocking=True)
        host_maps.copy_(maps, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
    return _Launched(batch, host_scores, host_maps, copied)


def _landed(launched: _Launched) -> Batch:
    if launched.copied is not None:
        launched.copied.synchronize()
    batch = launched.batch
    batch.pred_score, batch.anomaly_map = launched.scores, launched.maps
    return batch


def predict_batches(
    method: ZsadMethod,
    batches: Iterable[KeyedBatch],
    device: torch.device,
    seed: int = 0,
    compile: bool = False,
) -> Iterator[Batch]:
    """Each batch, in order, with ``pred_score [B]`` and ``anomaly_map [B, S, S]`` (float32, CPU) set.

    The method runs as it is (its device, precision and mode are the caller's). On a GPU batch ``i + 1``
    is launched before batch ``i`` is handed over; the outputs are the same as a plain loop's (the same
    calls in the same order). On a CPU it is the plain loop. Host work per 518² image is 1 to 2 ms on one
    core (``scripts/bench_pipeline.py``): a third to a half of the time per image at 300 images/s, which
    the overlap hides.

    Args:
        method: the model.
        batches: ``(batch, keys)`` pairs, ``keys[i]`` the noise key of sample ``i`` (:func:`indexed`).
        device: where the model runs.
        seed: run seed of the random draws of sampling methods.
        compile: run ``torch.compile(method.predict)``.
    """
    predict = torch.compile(method.predict) if compile else method.predict
    pending: _Launched | None = None
    for batch, keys in batches:
        if len(keys) != len(batch):
            raise ValueError(f"{len(keys)} noise keys for a batch of {len(batch)}")
        launched = _launch(predict, batch, method_noise(method, False, seed, keys), device)
        if pending is not None:
            yield _landed(pending)
        pending = launched
    if pending is not None:
        yield _landed(pending)
