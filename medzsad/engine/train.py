"""Prompt learning on auxiliary data, with a checkpoint every epoch and exact resume.

Determinism: the data order of epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)``, and the global torch generator is re-seeded the same way at the start of every epoch,
so an epoch's result depends only on the state at its start. After each epoch the prompt tensors
(``epoch_<e>.safetensors`` + ``.json``) and the optimiser state (``state.pt``, tensors only) are
written atomically; a resumed run loads ``state.pt`` and continues with epoch ``e + 1``, giving the
same prompts as a run that was never interrupted.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from medzsad.data.records import Batch, collate_samples
from medzsad.engine.checkpoints import save_checkpoint
from medzsad.engine.config import TrainConfig
from medzsad.engine.runtime import autocast
from medzsad.methods.base import ZsadMethod

STATE_FILE = "state.pt"
EpochCallback = Callable[[int, Mapping[str, float]], None]


class TrainingError(RuntimeError):
    """Training cannot start or continue (no data, unlabelled samples, unreadable resume state)."""


@dataclass
class TrainResult:
    """Where the last checkpoint is and the per-epoch mean of every loss term."""

    last_checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``: distinct per epoch, fixed by the run seed."""
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


def epoch_order(num_samples: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(num_samples, generator=generator).tolist()


def checkpoint_stem(output_dir: Path, epoch: int) -> Path:
    return output_dir / f"epoch_{epoch}"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(
            f"{path}: cannot resume from this file ({exc.__class__.__name__}); delete it to restart"
        ) from None


def _check_labels(batch: Batch) -> None:
    if bool((batch.label < 0).any()):
        raise TrainingError("training needs a normal/abnormal label for every image; some samples have none")


def train(
    method: ZsadMethod,
    dataset: Dataset,
    config: TrainConfig,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Learn the prompts of ``method`` on ``dataset`` (samples with image, mask and label).

    Args:
        method: the method with freshly initialised (or fine-tuning) prompts.
        dataset: a map-style dataset of :class:`medzsad.data.records.Sample`.
        config: epochs, batch size, optimiser, seed, output folder, resume flag.
        device: where to run.
        on_epoch: called after every completed epoch with ``(epoch, mean loss terms)``.
        extra_metadata: stored in every checkpoint's ``training`` record (aux data name, ...).

    Returns:
        :class:`TrainResult`.
    """
    if len(dataset) == 0:
        raise TrainingError("the training set is empty")
    output_dir = Path(config.output_dir)
    method.to(device)
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=config.lr, betas=tuple(config.betas))
    result = TrainResult(last_checkpoint=None)
    start_epoch = 1
    state_path = output_dir / STATE_FILE
    if config.resume and state_path.is_file():
        state = _load_state(state_path)
        method.prompt.load_state_dict(state["prompt"])
        optimizer.load_state_dict(state["optimizer"])
        result.history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        result.resumed_from_epoch = int(state["epoch"])
        result.last_checkpoint = checkpoint_stem(output_dir, int(state["epoch"]))
    for epoch in range(start_epoch, config.epochs + 1):
        means = _run_epoch(method, dataset, optimizer, config, device, epoch)
        result.history.append(means)
        training_record = {**dict(extra_metadata or {}), "epoch": epoch, "seed": config.seed, "losses": means}
        save_checkpoint(method, checkpoint_stem(output_dir, epoch), training_record)
        _atomic_torch_save(
            {
                "epoch": epoch,
                "prompt": {k: v.detach().cpu() for k, v in method.prompt.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "history": result.history,
            },
            state_path,
        )
        result.last_checkpoint = checkpoint_stem(output_dir, epoch)
        if on_epoch is not None:
            on_epoch(epoch, means)
    return result


def _run_epoch(
    method: ZsadMethod,
    dataset: Dataset,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
) -> dict[str, float]:
    torch.manual_seed(epoch_seed(config.seed, epoch))
    method.reset_generator(epoch_seed(config.seed, epoch))
    order = epoch_order(len(dataset), config.seed, epoch)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=order,
        collate_fn=collate_samples,
        pin_memory=device.type == "cuda",
    )
    steps = len(loader) if config.max_steps_per_epoch is None else min(len(loader), config.max_steps_per_epoch)
    totals: dict[str, float] = {}
    method.train()
    progress = tqdm(loader, total=steps, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=None)
    for step, batch in enumerate(progress, start=1):
        _check_labels(batch)
        batch = batch.to(device, non_blocking=True)
        with autocast(device, config.precision):
            losses = method.loss(batch.image, batch.mask, batch.label)
        optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        optimizer.step()
        terms = {"total": float(losses.total.detach()), **{k: float(v.detach()) for k, v in losses.terms.items()}}
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value
        progress.set_postfix({k: f"{v:.3f}" for k, v in terms.items() if k in ("total", "image_ce")})
        if step >= steps:
            break
    progress.close()
    return {name: value / steps for name, value in totals.items()}
