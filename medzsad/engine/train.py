"""Prompt learning on auxiliary data, with a checkpoint every epoch and exact resume.

Determinism: the data order of epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)``, and the global torch generator is re-seeded the same way at the start of every epoch,
so an epoch's result depends only on the state at its start. After each epoch the prompt tensors
(``epoch_<e>.safetensors`` + ``.json``) and the optimiser state (``state.pt``, tensors only) are
written atomically; a resumed run loads ``state.pt`` and continues with epoch ``e + 1``, giving the
same prompts as a run that was never interrupted.

Under ``torchrun`` (see :mod:`medzsad.engine.distributed` and ``docs/distributed.md``) every process
follows the same epoch order and takes its contiguous slice of every global batch of
``train.batch_size`` images; only the prompt modules are wrapped in ``DistributedDataParallel``. Each
process scales its loss so that the averaged gradient is the gradient of the loss of the whole global
batch, including the terms that are not means over the batch's images (see :func:`batch_level_terms`);
rank 0 writes checkpoints and ``state.pt`` and every process resumes from rank 0's state.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medzsad.data.records import Batch, collate_samples
from medzsad.engine import distributed
from medzsad.engine.checkpoints import save_checkpoint
from medzsad.engine.config import TrainConfig
from medzsad.engine.randomness import method_noise
from medzsad.engine.runtime import loader_workers
from medzsad.methods.base import BatchTerm, ZsadMethod
from medzsad.utils.files import atomic_path
from medzsad.utils.progress import progress

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
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(
            f"{path}: cannot resume from this file ({exc.__class__.__name__}); delete it to restart"
        ) from None


def saved_run_id(config: TrainConfig) -> str | None:
    """The MLflow run id stored in the resume state of ``config.output_dir`` (None when there is none),
    so a resumed training logs its remaining epochs into the run that holds its first ones."""
    path = Path(config.output_dir) / STATE_FILE
    if not (config.resume and path.is_file()):
        return None
    value = _load_state(path).get("tracking_run_id")
    return str(value) if value else None


def _check_labels(batch: Batch) -> None:
    if bool((batch.label < 0).any()):
        raise TrainingError("training needs a normal/abnormal label for every image; some samples have none")


# -- sharing global batches between processes ------------------------------------------------------


@dataclass(frozen=True)
class StepShare:
    """One process's part of one global batch.

    Attributes:
        indices: dataset indices this process runs; a process whose part is empty (the last, short
            global batch has fewer images than processes) runs the batch's first image as a placeholder
            whose loss is multiplied by 0, so that it still takes part in the gradient reduction.
        size: how many images of the global batch are this process's (0 for a placeholder).
        offset: position of the first of them in the global batch.
        global_size: images in the global batch.
    """

    indices: list[int]
    size: int
    offset: int
    global_size: int


def step_shares(order: Sequence[int], batch_size: int, steps: int, shard: int = 0, shards: int = 1) -> list[StepShare]:
    """Process ``shard``'s contiguous slice of each of the first ``steps`` global batches of ``order``.

    The slices of a full batch are ``batch_size // shards`` images each; a short last batch is split
    as evenly as possible. With one process every share is the whole global batch.
    """
    shares = []
    for step in range(steps):
        batch = list(order[step * batch_size : (step + 1) * batch_size])
        if not batch:
            break
        part = distributed.shard_range(len(batch), shard, shards)
        indices = batch[part.start : part.stop]
        shares.append(StepShare(indices or batch[:1], len(indices), part.start, len(batch)))
    return shares


def check_batch_size(batch_size: int, processes: int) -> None:
    """The global batch must split evenly over the processes."""
    if batch_size % processes:
        lower = max(processes, batch_size - batch_size % processes)
        raise TrainingError(
            f"train.batch_size={batch_size} cannot be split evenly over {processes} processes; "
            f"use a multiple of {processes} (e.g. train.batch_size={lower} or {lower + processes}) "
            "or launch another number of processes"
        )


def batch_level_terms(method: ZsadMethod) -> dict[str, BatchTerm]:
    """The loss terms of ``method`` that are not means over the batch's images.

    Every other term (cross-entropy, focal, per-image Dice, KL...) is a mean over the images of the
    batch, or does not depend on the batch at all (FAPrompt's orthogonality term), and a process's
    share of it is weighted by its share of the images. The method declares the others
    (:meth:`ZsadMethod.batch_level_terms`), e.g.:

    - FAPrompt's prior loss, ``prior_loss_reduction="sum"`` (official): a *sum* over the batch's normal
      images. Each process keeps its whole local sum, so the averaged gradient equals one process's on
      the global batch; left as it is, DDP would average the local sums and weaken the prior term by
      the number of processes.
    - FAPrompt's prior loss, ``"mean"``: a mean over the global batch's normal images (their number is
      summed over the processes at every step).
    - CoPS's gather and scatter terms: means over the batch's normal and anomalous *patches*.

    Not covered: CoPS's reconstruction term with ``recon_all_pairs=True`` compares every image with every
    other image's sample; under DDP only pairs within a process are compared. It is off by default
    (``recon_weight=0``).
    """
    return method.batch_level_terms()


class PromptLoss(nn.Module):
    """What ``DistributedDataParallel`` wraps: the prompt modules (its only parameters) and, as its
    forward, the method's training loss. The frozen backbone is not a submodule, so it is neither
    broadcast nor reduced."""

    def __init__(self, method: ZsadMethod) -> None:
        super().__init__()
        self.prompt = method.prompt
        self._method = [method]  # a list: not registered as a submodule

    def forward(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = self._method[0].loss(images, masks, labels, noise)
        return losses.total, losses.terms


def wrap_ddp(method: ZsadMethod, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` over :class:`PromptLoss`: gradients of the prompt modules only.

    Buffers (token ids, frozen prompt pieces) are identical on every process and are not re-broadcast
    at every forward. A method with a term that is a mean over counted items (CoPS's scatter term over
    anomalous patches) has no graph for that term on a process without such items, so the parameters
    only it reaches (CoPS's ``t_a``) can be unused there: DDP then looks for unused parameters, and a
    parameter unused on every process keeps no gradient, as in one process.
    """
    from torch.nn.parallel import DistributedDataParallel

    options: dict[str, Any] = {
        "device_ids": [device] if device.type == "cuda" else None,
        "find_unused_parameters": any(term.count is not None for term in batch_level_terms(method).values()),
    }
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        options["forward_sync_buffers"] = False
    else:  # older torch
        options["broadcast_buffers"] = False
    return DistributedDataParallel(PromptLoss(method), **options)


def share_noise(method: ZsadMethod, share: StepShare, seed: int, epoch: int) -> torch.Tensor | None:
    """The random draws of this process's images (``None`` for a method that draws nothing), seeded per
    ``(epoch, dataset index)`` (:mod:`medzsad.engine.randomness`): every image gets the draws it gets in
    one process, whatever process or batch it lands in. A placeholder share draws for its stand-in."""
    return method_noise(method, True, seed, [(epoch, index) for index in share.indices])


def batch_counts(
    method: ZsadMethod, batch: Batch, share: StepShare, special: Mapping[str, BatchTerm]
) -> dict[str, int]:
    """This process's ``count`` of every counted batch-level term (0 for a placeholder share)."""
    return {
        name: (term.count(batch.image, batch.mask, batch.label) if share.size else 0)
        for name, term in special.items()
        if term.count is not None
    }


def process_loss(
    total: torch.Tensor,
    terms: Mapping[str, torch.Tensor],
    share: StepShare,
    special: Mapping[str, BatchTerm],
    counts: Mapping[str, int],
    global_counts: Mapping[str, float],
    processes: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss one process back-propagates, and the share of every term's global-batch value its term
    stands for.

    DDP averages the processes' gradients, so the loss is scaled such that the sum over processes,
    divided by their number, is the loss of the whole global batch: a mean term is weighted by the
    process's share of the images, a summed term (:class:`BatchTerm` without ``count``) is kept whole,
    a term that is a mean over counted items by the process's share of those items.

    Args:
        total, terms: the method's loss on this process's images.
        share: which images of the global batch they are.
        special: :func:`batch_level_terms` of the method.
        counts, global_counts: :func:`batch_counts` here and summed over the processes.
        processes: the world size.
    """
    fraction = share.size / share.global_size
    share_of = dict.fromkeys(terms, fraction)
    for name, term in special.items():
        if term.count is None:
            share_of[name] = 1.0
        else:
            share_of[name] = counts[name] / global_counts[name] if global_counts[name] else 0.0
    if not share.size:
        share_of = dict.fromkeys(share_of, 0.0)
    loss = total if processes * fraction == 1.0 else total * (processes * fraction)
    for name, term in special.items():
        correction = processes * term.weight * (share_of[name] - fraction)
        if correction:
            loss = loss + correction * terms[name]
    return loss, share_of


def _distributed_step(
    model: nn.Module,
    method: ZsadMethod,
    batch: Batch,
    share: StepShare,
    special: Mapping[str, BatchTerm],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    noise: torch.Tensor | None,
) -> dict[str, float]:
    """Forward, backward and step of one process; returns the loss terms of the whole global batch."""
    processes = distributed.world_size()
    total, terms = model(batch.image, batch.mask, batch.label, noise)
    counts = batch_counts(method, batch, share, special)
    global_counts = dict(counts)
    if counts:
        summed = distributed.all_reduce_sum(torch.tensor(list(counts.values()), dtype=torch.float64, device=device))
        global_counts = dict(zip(counts, summed.tolist()))
    loss, share_of = process_loss(total, terms, share, special, counts, global_counts, processes)
    optimizer_step(loss, optimizer, scaler)
    names = list(terms)
    values = [loss.detach().double() / processes]
    values += [terms[name].detach().double() * share_of[name] for name in names]
    reduced = distributed.all_reduce_sum(torch.stack(values)).tolist()
    return {"total": reduced[0], **dict(zip(names, reduced[1:]))}


def gradient_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 training (gradients of fp16 activations underflow without it); for fp32
    and bf16 a disabled scaler whose ``scale``/``step``/``update`` are plain pass-throughs.

    It starts at 2^10 rather than PyTorch's 2^16: prompt gradients here are of order 1-100 and the
    deep text prompts pass their gradient through an fp16 cast (the reference quirk), so 2^16 overflowed
    and skipped every step of a short epoch on the tiny test model; the scale still grows by itself
    after 2000 clean steps."""
    return torch.amp.GradScaler(device.type, init_scale=2.0**10, enabled=precision == "fp16")


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and one optimizer step; with fp16 a step whose gradients overflowed is skipped and the
    scale lowered (``torch.amp.GradScaler``)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _resume_state(state_path: Path, resume: bool) -> dict[str, Any] | None:
    """``state.pt`` read by rank 0 and sent to every process (other nodes need not see rank 0's disk)."""
    outcome: tuple[str, Any] = ("none", None)
    if distributed.is_main() and resume and state_path.is_file():
        try:
            outcome = ("state", _load_state(state_path))
        except TrainingError as exc:
            outcome = ("error", str(exc))
    outcome = distributed.broadcast_object(outcome)
    if outcome[0] == "error":
        raise TrainingError(outcome[1])
    return outcome[1]


def train(
    method: ZsadMethod,
    dataset: Dataset,
    config: TrainConfig,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    extra_state: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Learn the prompts of ``method`` on ``dataset`` (samples with image, mask and label).

    Args:
        method: the method with freshly initialised (or fine-tuning) prompts.
        dataset: a map-style dataset of :class:`medzsad.data.records.Sample`.
        config: epochs, batch size, optimiser, seed, output folder, resume flag.
        device: where to run.
        on_epoch: called after every completed epoch with ``(epoch, mean loss terms)``, by rank 0 only
            under torchrun.
        extra_metadata: stored in every checkpoint's ``training`` record (aux data name, ...).
        extra_state: stored in ``state.pt`` (strings and numbers), e.g. the MLflow run that a resumed
            training continues (:func:`saved_run_id`).

    Returns:
        :class:`TrainResult` (the same on every process under torchrun).

    Raises:
        TrainingError: empty data, unlabelled samples, an unreadable ``state.pt``, or a batch size that
            does not split evenly over the torchrun processes.
    """
    if len(dataset) == 0:
        raise TrainingError("the training set is empty")
    processes = distributed.world_size()
    check_batch_size(config.batch_size, processes)
    main = distributed.is_main()
    output_dir = Path(config.output_dir)
    method.to(device)
    method.backbone.set_precision(config.precision)
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=config.lr, betas=tuple(config.betas))
    scaler = gradient_scaler(config.precision, device)
    result = TrainResult(last_checkpoint=None)
    start_epoch = 1
    state_path = output_dir / STATE_FILE
    state = _resume_state(state_path, config.resume)
    if state is not None:
        method.prompt.load_state_dict(state["prompt"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        result.history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        result.resumed_from_epoch = int(state["epoch"])
        result.last_checkpoint = checkpoint_stem(output_dir, int(state["epoch"]))
    model = wrap_ddp(method, device) if processes > 1 else None
    for epoch in range(start_epoch, config.epochs + 1):
        means = _run_epoch(method, dataset, optimizer, scaler, config, device, epoch, model)
        result.history.append(means)
        if main:
            training_record = {
                **dict(extra_metadata or {}),
                "epoch": epoch,
                "seed": config.seed,
                "losses": means,
                **({"processes": processes} if processes > 1 else {}),
            }
            save_checkpoint(method, checkpoint_stem(output_dir, epoch), training_record)
            _atomic_torch_save(
                {
                    "epoch": epoch,
                    "prompt": {k: v.detach().cpu() for k, v in method.prompt.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "history": result.history,
                    **dict(extra_state or {}),
                },
                state_path,
            )
        result.last_checkpoint = checkpoint_stem(output_dir, epoch)
        if on_epoch is not None and main:
            on_epoch(epoch, means)
    distributed.barrier()  # the last checkpoint exists for every process once train returns
    return result


def _run_epoch(
    method: ZsadMethod,
    dataset: Dataset,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    device: torch.device,
    epoch: int,
    model: nn.Module | None = None,
) -> dict[str, float]:
    torch.manual_seed(epoch_seed(config.seed, epoch))
    order = epoch_order(len(dataset), config.seed, epoch)
    batches = -(-len(order) // config.batch_size)
    steps = batches if config.max_steps_per_epoch is None else min(batches, config.max_steps_per_epoch)
    shares = step_shares(order, config.batch_size, steps, distributed.rank(), distributed.world_size())
    loader = DataLoader(
        dataset,
        batch_sampler=[share.indices for share in shares],
        collate_fn=collate_samples,
        num_workers=loader_workers(config.num_workers, device),
        pin_memory=device.type == "cuda",
    )
    special = batch_level_terms(method)
    totals: dict[str, float] = {}
    method.train()
    bar = progress(loader, f"epoch {epoch}/{config.epochs}", total=steps, enabled=distributed.is_main())
    for batch, share in zip(bar, shares):  # bar first: it counts the last step before zip stops
        _check_labels(batch)
        batch = batch.to(device, non_blocking=True)
        noise = share_noise(method, share, config.seed, epoch)
        if model is None:
            losses = method.loss(batch.image, batch.mask, batch.label, noise)
            optimizer_step(losses.total, optimizer, scaler)
            terms = {"total": float(losses.total.detach()), **{k: float(v.detach()) for k, v in losses.terms.items()}}
        else:
            terms = _distributed_step(model, method, batch, share, special, optimizer, scaler, device, noise)
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value
        bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items() if k in ("total", "image_ce")})
    bar.close()
    return {name: value / steps for name, value in totals.items()}
