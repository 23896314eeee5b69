"""Zero-shot evaluation: run a method over a dataset, accumulate exact metrics, keep review examples.

Maps and masks are compared at model resolution (518² by default), as the reference evaluation does;
metrics come from :class:`medzsad.metrics.MetricAccumulator` (exact AUROC/AP/F1-max/AU-PRO, or with
``eval.pixel_bins`` the constant-memory statistic). Memory
stays bounded on large archives: per-sample results keep only a score and a label, and review copies
(downscaled image, map and mask) are kept for the first ``review_limit`` labelled samples plus, over the
whole dataset, the ``review_worst`` highest-scoring normals and lowest-scoring anomalies (the worst
errors a reviewer must see, wherever they are in the dataset: :class:`ReviewKeeper`).

Under ``torchrun`` each process evaluates one contiguous block of the dataset's samples (every sample
exactly once, :func:`medzsad.engine.distributed.shard_range`) and writes the maps of its samples; the
accumulator states (:meth:`MetricAccumulator.state_dict`), per-sample scores and review copies are
gathered on rank 0 and merged there exactly (:func:`merge_shards`), so rank 0's report is the one a
single process computes.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from medzsad.data.records import Batch, SampleResult
from medzsad.engine import distributed
from medzsad.engine.config import EvalConfig
from medzsad.engine.inference import predict_batches
from medzsad.engine.runtime import loader_workers
from medzsad.engine.skipping import Skipped, SkippingDataset, collate_or_skip, skipped_aside
from medzsad.methods.base import ZsadMethod
from medzsad.metrics import MetricAccumulator, MetricsReport
from medzsad.utils.files import atomic_write_bytes, atomic_write_text
from medzsad.utils.progress import note, progress
from medzsad.utils.tables import write_csv
from medzsad.utils.topk import TopK
from medzsad.viz import ReviewSample, display_images

#: Worst errors kept per side (normals, anomalies) beyond the first ``review_limit`` samples: the
#: review's worst false positives and negatives (``TrackedRun.log_review(worst_k=8)``).
REVIEW_WORST = 8

__all__ = [
    "DatasetEvaluation",
    "ReviewKeeper",
    "SampleResult",
    "ShardResult",
    "evaluate",
    "evaluate_shard",
    "merge_shards",
]


@dataclass
class DatasetEvaluation:
    """Everything :func:`evaluate` produces for one dataset."""

    name: str
    report: MetricsReport
    samples: list[SampleResult]
    review: list[ReviewSample] = field(default_factory=list)
    accumulator: MetricAccumulator | None = None
    decisions: Any = None  # engine.calibrate.DecisionReport: thresholds, their origin, volume/lesion levels

    @property
    def skipped(self) -> list[SampleResult]:
        """Samples that could not be read (``eval.on_error=skip``); not part of the metrics."""
        return [s for s in self.samples if s.problem]


def _review_samples(
    batch: Batch, scores: np.ndarray, maps: np.ndarray, side: int, rows: list[int]
) -> list[ReviewSample]:
    """Downscaled copies (``side`` pixels) of what the review shows for batch ``rows``, so thousands fit
    in memory."""
    index = torch.as_tensor(rows, dtype=torch.long)
    area = lambda x: torch.nn.functional.interpolate(x, size=(side, side), mode="area")  # noqa: E731
    pixels = dict(zip(rows, display_images(area(batch.image[index].float()))))
    small_maps = dict(zip(rows, area(torch.from_numpy(maps)[index][:, None])[:, 0].numpy()))
    small_masks = dict(zip(rows, (area(batch.mask[index].float()[:, None])[:, 0] > 0.5).numpy()))
    samples = []
    for i in rows:
        samples.append(
            ReviewSample(
                sample_id=batch.sample_id[i],
                category=batch.category[i] or "all",
                score=float(scores[i]),
                label=int(batch.label[i]),
                image=pixels[i],
                anomaly_map=small_maps[i],
                mask=small_masks[i] if bool(batch.has_mask[i]) else None,
                burned_in_text=bool(batch.meta[i].get("burned_in_text", False)),
                volume_id=batch.volume_id[i],
                slice_index=batch.slice_index[i],
                intensity=batch.meta[i].get("intensity"),
            )
        )
    return samples


class ReviewKeeper:
    """The review copies an evaluation keeps: the first ``limit`` labelled samples in dataset order, and
    over every sample the ``worst`` highest-scoring normals and lowest-scoring anomalies (candidates
    for the worst false positives and negatives at any threshold). Copies are made only for samples
    kept, so memory is bounded by ``limit + 2 * worst`` copies."""

    def __init__(self, limit: int, worst: int, side: int) -> None:
        self.limit, self.side = limit, side
        self.first: list[ReviewSample] = []
        self.normals: TopK[ReviewSample] = TopK(worst if limit > 0 else 0)
        self.anomalies: TopK[ReviewSample] = TopK(worst if limit > 0 else 0)

    def update(self, batch: Batch, scores: np.ndarray, maps: np.ndarray) -> None:
        labels = [int(label) for label in batch.label]
        first = [i for i in range(len(batch)) if labels[i] >= 0][: max(0, self.limit - len(self.first))]
        worst = [i for i in range(len(batch)) if labels[i] >= 0 and self._heap(labels[i], scores[i])[1]]
        rows = sorted(set(first) | set(worst))
        if not rows:
            return
        copies = dict(zip(rows, _review_samples(batch, scores, maps, self.side, rows)))
        self.first.extend(copies[i] for i in first)
        for i in worst:  # in batch order, so ties keep the earliest; a row not kept above never is now
            heap, keep = self._heap(labels[i], scores[i])
            if keep:
                heap.offer(self._priority(labels[i], scores[i]), copies[i])

    def offer_extremes(self, copies: Iterable[ReviewSample]) -> None:
        """Merge the extremes kept by another block (blocks offered in dataset order)."""
        for copy in copies:
            self._heap(copy.label, copy.score)[0].offer(self._priority(copy.label, copy.score), copy)

    def extremes(self) -> list[ReviewSample]:
        return self.normals.best_first() + self.anomalies.best_first()

    def review(self) -> list[ReviewSample]:
        """The first samples, then the worst errors not among them (marked ``errors_only``)."""
        seen = {copy.sample_id for copy in self.first}
        extra = [dataclasses.replace(c, errors_only=True) for c in self.extremes() if c.sample_id not in seen]
        return self.first + extra

    def _priority(self, label: int, score: float) -> float:
        return float(score) if label == 0 else -float(score)

    def _heap(self, label: int, score: float) -> tuple[TopK[ReviewSample], bool]:
        heap = self.normals if label == 0 else self.anomalies
        return heap, heap.would_keep(self._priority(label, score))


@dataclass
class ShardResult:
    """What one process's block of a dataset gives: the accumulator state, scores, review copies (the
    block's first samples and its worst errors)."""

    accumulator_state: dict[str, np.ndarray]
    samples: list[SampleResult]
    review: list[ReviewSample]
    extremes: list[ReviewSample] = field(default_factory=list)


def evaluate(
    method: ZsadMethod,
    dataset: Dataset,
    config: EvalConfig,
    device: torch.device,
    name: str = "dataset",
    review_limit: int = 0,
    review_side: int = 256,
    maps_dir: Path | None = None,
    consumer: Callable[[Batch, np.ndarray, np.ndarray], None] | None = None,
    review_worst: int = REVIEW_WORST,
) -> DatasetEvaluation:
    """Evaluate ``method`` on one dataset of :class:`~medzsad.data.records.Sample`.

    Args:
        method: a trained (or training-free) method.
        dataset: samples with images and, where known, labels and masks.
        config: batch size, precision, which metrics.
        device: where to run the model.
        name: dataset name used in tables and file names.
        review_limit: how many samples (downscaled to ``review_side`` px) are kept for the review
            overlays, the first in dataset order; 0 keeps none.
        review_worst: with ``review_limit``, also keep the worst errors of the whole dataset: this many
            highest-scoring normals and lowest-scoring anomalies (:class:`ReviewKeeper`).
        review_side: side of the kept review images in pixels.
        maps_dir: when given, every map is written there as ``<sample_id>.npz`` (float32).
        consumer: called with ``(batch, scores, maps)`` for every batch (volume and calibration statistics,
            :mod:`medzsad.engine.calibrate`); in one process only.

    Returns:
        :class:`DatasetEvaluation` with the metrics report and per-sample scores. Under torchrun every
        process gets the merged report; rank 0 gets every sample, review copy and the merged
        accumulator, the other processes those of their own block.
    """
    processes = distributed.world_size()
    keeper = ReviewKeeper(review_limit, review_worst, review_side)
    if processes == 1:
        every = range(len(dataset))
        state = _evaluate_indices(method, dataset, every, config, device, name, keeper, maps_dir, consumer)
        accumulator, samples = state
        return DatasetEvaluation(name, accumulator.compute(), samples, keeper.review(), accumulator)
    local = evaluate_shard(
        method,
        dataset,
        config,
        device,
        distributed.rank(),
        processes,
        name,
        review_limit,
        review_side,
        maps_dir,
        review_worst,
    )
    # Only the first `review_limit` review copies in dataset order are needed: send no more.
    before = sum(distributed.all_gather_objects(len(local.review))[: distributed.rank()])
    local.review = local.review[: max(0, review_limit - before)]
    shards = distributed.gather_objects(local)
    merged = merge_shards(shards, name, review_limit, review_worst) if shards is not None else None
    report = distributed.broadcast_object(merged.report if merged is not None else None)
    if merged is not None:
        return merged
    return DatasetEvaluation(name, report, local.samples, local.review, None)


def evaluate_shard(
    method: ZsadMethod,
    dataset: Dataset,
    config: EvalConfig,
    device: torch.device,
    shard: int,
    shards: int,
    name: str = "dataset",
    review_limit: int = 0,
    review_side: int = 256,
    maps_dir: Path | None = None,
    review_worst: int = REVIEW_WORST,
) -> ShardResult:
    """Evaluate block ``shard`` of ``shards`` (:func:`~medzsad.engine.distributed.shard_range`) of the
    dataset; :func:`merge_shards` of all blocks equals :func:`evaluate` in one process.

    A method that draws random samples at test time (CoPS) gets each image's draws seeded by its index in
    the dataset (:mod:`medzsad.engine.randomness`), so every image gets the draws it gets in one process
    and a block does no work for the samples before it.
    """
    indices = distributed.shard_range(len(dataset), shard, shards)
    keeper = ReviewKeeper(review_limit, review_worst, review_side)
    accumulator, samples = _evaluate_indices(method, dataset, indices, config, device, name, keeper, maps_dir)
    return ShardResult(accumulator.state_dict(), samples, keeper.first, keeper.extremes())


def merge_shards(
    shards: list[ShardResult], name: str, review_limit: int = 0, review_worst: int = REVIEW_WORST
) -> DatasetEvaluation:
    """The evaluation of the whole dataset from its blocks, given in block order: exact accumulator
    merge (:meth:`MetricAccumulator.merge`), samples and review copies in dataset order, and the worst
    errors of all blocks (the same as one pass keeps)."""
    accumulator = MetricAccumulator.from_state_dict(shards[0].accumulator_state)
    for shard in shards[1:]:
        accumulator.merge(MetricAccumulator.from_state_dict(shard.accumulator_state))
    samples = [sample for shard in shards for sample in shard.samples]
    keeper = ReviewKeeper(review_limit, review_worst, 0)
    keeper.first = [copy for shard in shards for copy in shard.review][:review_limit]
    for shard in shards:  # block order; each block's extremes best first, ties in dataset order
        keeper.offer_extremes(shard.extremes)
    return DatasetEvaluation(name, accumulator.compute(), samples, keeper.review(), accumulator)


def _evaluate_indices(
    method: ZsadMethod,
    dataset: Dataset,
    indices: range,
    config: EvalConfig,
    device: torch.device,
    name: str,
    keeper: ReviewKeeper,
    maps_dir: Path | None,
    consumer: Callable[[Batch, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[MetricAccumulator, list[SampleResult]]:
    method.to(device).eval()
    method.backbone.set_precision(config.precision)
    dataset = SkippingDataset(dataset)
    if len(indices) != len(dataset):
        dataset = Subset(dataset, indices)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        collate_fn=collate_or_skip,
        num_workers=loader_workers(config.num_workers, device),
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    accumulator = MetricAccumulator(
        segmentation_thresholds=(config.dice_threshold,),
        include_cflow200=config.aupro_compat,
        pixel_bins=config.pixel_bins,
    )
    samples: list[SampleResult] = []
    batches = progress(loader, f"test {name}", enabled=distributed.is_main())
    skip = lambda item: samples.append(_skipped_result(item, name))  # noqa: E731
    keyed = skipped_aside(batches, skip, config.on_error == "stop", indices.start)
    for batch in predict_batches(method, keyed, device, config.seed, config.compile):
        scores, maps = batch.pred_score.numpy(), batch.anomaly_map.numpy()
        _update_metrics(accumulator, batch, scores, maps, config.pixel_metrics)
        if consumer is not None:
            consumer(batch, scores, maps)
        keeper.update(batch, scores, maps)
        samples.extend(batch.results())
        if maps_dir is not None:
            _write_maps(maps_dir, batch.sample_id, maps)
    return accumulator, samples


def _skipped_result(skip: Skipped, dataset_name: str) -> SampleResult:
    """Report a skipped sample on one line (the console may name the file) and keep it for the outputs."""
    note(f"medzsad: skipped a sample of {dataset_name}: {skip.where}: {skip.problem}")
    return SampleResult(skip.sample_id, skip.category, float("nan"), -1, problem=skip.problem)


def _update_metrics(
    accumulator: MetricAccumulator, batch: Batch, scores: np.ndarray, maps: np.ndarray, pixel: bool
) -> None:
    labels = batch.label.cpu().numpy()
    masks = batch.mask.cpu().numpy() > 0.5
    has_mask = batch.has_mask.cpu().numpy().astype(bool)
    # An unknown label is read off the mask when there is one (abnormal iff any lesion pixel).
    labels = np.where((labels < 0) & has_mask, masks.reshape(len(labels), -1).any(axis=1), labels)
    known = labels >= 0
    for category in sorted(set(batch.category)):
        rows = np.array([c == category for c in batch.category]) & known
        if not rows.any():
            continue
        with_masks = rows & has_mask
        if pixel and with_masks.any():
            accumulator.update(
                category,
                maps=maps[with_masks],
                masks=masks[with_masks],
                scores=scores[with_masks],
                labels=labels[with_masks],
            )
        without = rows & ~has_mask if pixel else rows
        if without.any():
            accumulator.update(category, scores=scores[without], labels=labels[without])


def _write_maps(folder: Path, sample_ids: Iterable[str], maps: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for sample_id, anomaly_map in zip(sample_ids, maps):
        buffer = io.BytesIO()
        np.savez_compressed(buffer, anomaly_map=anomaly_map.astype(np.float32))
        atomic_write_bytes(folder / f"{sample_id}.npz", buffer.getvalue())


# -- tables ----------------------------------------------------------------------------------------


def report_rows(name: str, report: MetricsReport) -> list[dict[str, Any]]:
    """Per-category rows plus the macro mean, as plain dicts (``dataset``, ``category``, ``images``,
    then each metric in percent under ``<metric> [%]``, the terminal table's unit)."""
    rows = []
    for category, result in [*report.per_category.items(), ("mean", report.macro_mean)]:
        images = result.counts.get("images", sum(r.counts.get("images", 0) for r in report.per_category.values()))
        percent = {f"{metric} [%]": 100.0 * value for metric, value in result.values.items()}
        rows.append({"dataset": name, "category": category, "images": images, **percent})
    return rows


def write_tables(output_dir: Path, evaluations: Mapping[str, DatasetEvaluation]) -> tuple[Path, Path]:
    """``metrics.csv`` (one row per dataset and category, plus means; metrics in percent, in the terminal
    table's order) and ``metrics.json`` (fractions, as computed)."""
    rows = [row for name, ev in evaluations.items() for row in report_rows(name, ev.report)]
    names = [ev.report.macro_mean.names() for ev in evaluations.values()]
    metrics = list(dict.fromkeys(f"{metric} [%]" for per_dataset in names for metric in per_dataset))
    columns = ["dataset", "category", "images", *metrics]
    cells = ([row.get(column, "") for column in columns] for row in rows)
    csv_path, json_path = output_dir / "metrics.csv", output_dir / "metrics.json"
    write_csv(csv_path, columns, cells, float_format=".6f")
    payload = {name: ev.report.to_dict() for name, ev in evaluations.items()}
    atomic_write_text(json_path, json.dumps(payload, indent=2, sort_keys=True, default=float))
    return csv_path, json_path


def write_scores(path: Path, evaluation: DatasetEvaluation) -> None:
    """One CSV row per image: pseudonymous id, category, label, score; the skipped samples (if any) in
    ``skipped_<dataset>.csv`` beside it (pseudonymous id, category, problem)."""
    if evaluation.skipped:
        rows = [(s.sample_id, s.category, s.problem) for s in evaluation.skipped]
        write_csv(path.with_name(path.name.replace("scores", "skipped", 1)), ("sample_id", "category", "problem"), rows)
    header = ["sample_id", "category", "label", "score", "volume_id", "slice_index"]
    scored = (s for s in evaluation.samples if not s.problem)
    rows = ([s.sample_id, s.category, s.label, s.score, s.volume_id, s.slice_index] for s in scored)
    write_csv(path, header, rows)
