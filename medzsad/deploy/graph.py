"""The inference graph of a method as one module: a preprocessed batch in, scores and maps out.

:class:`InferenceGraph` wraps a method for tracing (``torch.export`` -> ONNX) and for the PyTorch side
of the deployment API, so both run exactly the same computation:

* image-independent text features are computed once, before tracing, and handed to the method as a
  constant (:func:`frozen_text`), so they are folded into the exported file as initializers;
* per-image text (FAPrompt's prior pass, CoPS's synthesised prompts) stays in the graph, because the
  methods compute it from the image;
* CoPS's test-time VAE draws are seeded: every image gets the draws the engine gives the first frame
  of the first input of a ``predict`` run (run seed 0, :func:`deployment_noise`), a constant of the
  graph. A deployed model thus gives an image the same score whatever else is in its batch or run.
  ``medzsad test``/``predict`` on the PyTorch engine seed each sample by its position in the run
  instead, so for CoPS they agree with the deployed model on a run's first input only; every other
  method is deterministic.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from medzsad.engine.randomness import sample_noise
from medzsad.methods.base import ZsadMethod


@contextlib.contextmanager
def frozen_text(graph: InferenceGraph) -> Iterator[None]:
    """Inside the block, the graph's ``method.cached_text`` returns the features computed before it,
    without looking at parameter pointers (which the fake tensors of ``torch.export`` do not have).

    The features are computed once with the real tensors (one dummy forward pass fills the cache);
    the override is an instance attribute, removed on exit, so the method is unchanged afterwards.
    """
    method = graph.method
    dummy = torch.zeros(1, 3, method.image_size, method.image_size, device=_device(method))
    with torch.no_grad():
        graph(dummy)
    while isinstance(getattr(method, "method", None), ZsadMethod):  # a few-shot wrapper: its method's text
        method = method.method
    cache = method._text_cache
    value = cache[1] if cache is not None else None
    method.cached_text = lambda compute, *key: value if value is not None else compute()  # type: ignore[method-assign]
    try:
        yield
    finally:
        del method.cached_text


def _device(method: ZsadMethod) -> torch.device:
    return method.backbone.clip.token_embedding.weight.device


def deployment_noise(method: ZsadMethod, seed: int = 0) -> torch.Tensor | None:
    """The draws every image gets in a deployed model, ``noise_shape`` (CoPS: ``[R, D]``): those the
    engine gives the first frame of the first input of a ``predict`` run with run seed ``seed``
    (:mod:`medzsad.engine.randomness`); ``None`` for the methods that draw nothing."""
    shape = method.noise_shape(False)
    return None if shape is None else sample_noise(shape, seed, [(0, 0)])[0]


def _predict(method: ZsadMethod, images: torch.Tensor, noise: torch.Tensor | None = None):
    if noise is None:
        return method.predict(images)
    return method.predict(images, noise.to(images).expand(images.shape[0], *noise.shape))


def exportable_copy(method: ZsadMethod) -> ZsadMethod:
    """``method`` with settings that change memory use but not results made trace-friendly.

    WinCLIP encodes its windows in chunks of ``window_batch_size``, and a few-shot method searches its
    bank in blocks of ``fewshot.block_elements``; a traced chunk count would freeze the batch size, so
    the copy does each in one call. The backbone is shared (``copy.copy`` of the module keeps the same
    parameters)."""
    fewshot = getattr(method, "fewshot", None)
    if fewshot is not None:  # a few-shot wrapper: its nearest-patch search in one block, its method exportable
        clone = copy.copy(method)
        clone._modules = dict(method._modules)  # a shallow copy shares this dict: replace, do not mutate
        clone.fewshot = dataclasses.replace(fewshot, block_elements=ONE_BLOCK)
        clone.method = exportable_copy(method.method)
        return clone
    config = method.config
    if hasattr(config, "window_batch_size"):
        clone = copy.copy(method)
        clone.config = dataclasses.replace(config, window_batch_size=ONE_BLOCK)
        return clone
    return method


#: A chunk size no batch reaches (2**62): "everything in one call".
ONE_BLOCK = 2**62


class InferenceGraph(nn.Module):
    """``images [B, 3, S, S]`` (CLIP-normalised, float32) -> ``(scores [B], maps [B, S, S])``.

    Args:
        method: the method, in eval mode, fp32.
    """

    def __init__(self, method: ZsadMethod) -> None:
        super().__init__()
        self.method = exportable_copy(method).eval()
        noise = deployment_noise(method)
        self.register_buffer("noise", noise if noise is not None else torch.zeros(0), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = self.noise if self.noise.numel() else None
        output = _predict(self.method, images, noise)
        return output.image_scores.float(), output.anomaly_maps.float()
