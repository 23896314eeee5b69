"""The random draws of sampling methods (CoPS's VAE samples), owned by the engine and seeded per sample.

A method declares what it draws per image (:meth:`ZsadMethod.noise_shape`); the engine draws it here and
passes it as ``predict(..., noise=...)`` / ``loss(..., noise=...)``. Every sample's draws come from a
generator of their own, seeded with the run seed and the sample's key (its index in the dataset; the
epoch too in training; the input and frame for ``predict``). A sample therefore gets the same draws
whatever the batch size, whichever shard or process runs it and whatever ran before: a shard costs no
work for the samples before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medzsad.methods.base import ZsadMethod

#: A sample's key: non-negative integers (dataset index; epoch and index; input and frame...).
NoiseKey = tuple[int, ...]


def sample_seed(seed: int, key: NoiseKey) -> int:
    """A 63-bit seed for one sample, mixed from the run ``seed`` and the sample's ``key``
    (``numpy.random.SeedSequence``: nearby keys give unrelated streams)."""
    state = np.random.SeedSequence([int(seed), *map(int, key)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def sample_noise(shape: Sequence[int], seed: int, keys: Sequence[NoiseKey]) -> torch.Tensor:
    """Standard normal draws ``[len(keys), *shape]`` (float32, CPU), row ``i`` from ``keys[i]`` alone."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(sample_seed(seed, k))) for k in keys]
    return torch.stack(rows) if rows else torch.empty(0, *shape)


def method_noise(method: ZsadMethod, training: bool, seed: int, keys: Sequence[NoiseKey]) -> torch.Tensor | None:
    """The draws ``method`` needs for samples ``keys`` (``None`` for a method that draws nothing)."""
    shape = method.noise_shape(training)
    return None if shape is None else sample_noise(shape, seed, keys)
