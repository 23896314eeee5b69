"""What every parity test needs: the fixtures of one method, the README's tolerances, comparisons and
one official optimiser step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medzsad.backbone import ClipBackbone, load_clip

# Tolerances suggested by the fixtures' README §6.
ATOL_MAPS = 1e-5  # probabilities, maps, scores
TOL_FEATURES = 1e-5  # rtol and atol on raw features, text embeddings and losses
PROMPT_GRAD_REL = 2e-3  # ctx / deep-prompt gradients, relative to the tensor's max |grad|
OTHER_GRAD_REL = 1e-4  # every other gradient, relative to the tensor's max |grad|


def load_fixtures(parity_dir: Path, method: str) -> dict:
    """Inputs, official outputs and maps, the initial prompt state and the tiny CLIP of ``method``."""
    folder = parity_dir / method
    return {
        "inputs": np.load(parity_dir / "inputs" / "inputs.npz"),
        "out": np.load(folder / "outputs.npz"),
        "maps": np.load(folder / "maps518.npz"),
        "prompt_init": torch.load(folder / "prompt_init.pt", weights_only=True),
        "backbone": ClipBackbone(load_clip(weights_path=parity_dir / "clip_tiny_openai_layout.pt")),
    }


def fixture_batch(fixtures: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official preprocessed images, 518² masks and labels of the four fixture images."""
    inputs = fixtures["inputs"]
    images = torch.from_numpy(inputs["images_preprocessed"])
    return images, torch.from_numpy(inputs["masks_518"]).float(), torch.from_numpy(inputs["labels"])


def assert_close(actual, expected, atol=0.0, rtol=0.0, err_msg=""):
    actual = actual.detach() if isinstance(actual, torch.Tensor) else actual
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, atol=atol, rtol=rtol, err_msg=err_msg)


def adam_step(model, loss: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Back-propagate ``loss`` and take the official optimiser's first step (Adam 1e-3, betas (0.5,
    0.999)); returns the gradients read at the step and the parameters after it."""
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3, betas=(0.5, 0.999))
    optimizer.zero_grad()
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.prompt.named_parameters() if p.grad is not None}
    optimizer.step()
    params = {name: p.detach().clone() for name, p in model.prompt.named_parameters()}
    return grads, params
