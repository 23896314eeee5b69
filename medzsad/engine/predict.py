"""``medzsad predict``: anomaly maps, overlays and scores for image files, folders and scan volumes.

The inputs (files, folders, DICOMDIRs) are grouped by the data layer's study grouper, as ``test`` groups
them (:class:`medzsad.data.datasets.FolderDataset`). For every 2-D image (a PNG/JPEG/TIFF, a lone DICOM
file, each frame of a colour multi-frame DICOM) it writes ``maps/<sample_id>.npz`` (float32 map at the
image's own resolution), ``overlays/<sample_id>.png`` (heat map on a fixed [0, 1] colour scale over the
image) and a row of ``scores.csv`` (its ``intensity`` column records the CT window or scaling used,
e.g. ``window -600/1500 lung`` for a chest CT). Each volume (NIfTI, NRRD, every DICOM series and grey
multi-frame file of a study export) is scored slice by slice along ``data.slice_axis`` (``native`` by
default) and its map written back on the scan's own grid as ``volumes/<volume_id>_map.nii.gz`` (voxel
order: see :func:`medzsad.data.volumes.write_nifti`). Localizers, secondary captures and SEG/RT/SR
objects are reported as skipped, with their reasons.

File names and tables carry pseudonymous sample ids only; ``sample_index.local.csv`` maps them back to
the inputs for the user and must not be shared or logged. An unreadable input is reported on one line
and skipped; the other inputs are still processed.

Under ``torchrun`` the list of items (series, multi-frame files and images, in input order) is cut into
one contiguous block per process; each process writes the maps, overlays and volumes of its inputs and
rank 0 writes ``scores.csv`` and ``sample_index.local.csv`` with every process's rows, in input order.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medzsad.data.datasets import FolderDataset
from medzsad.data.errors import DataError
from medzsad.data.ids import pseudonymous_id
from medzsad.data.records import Batch, Sample, SampleResult, collate_samples
from medzsad.data.study import Item
from medzsad.data.transforms import ClipImageTransform, map_to_original
from medzsad.data.volumes import Volume, reassemble, volume_samples, write_nifti
from medzsad.engine import distributed
from medzsad.engine.calibrate import DecisionWriter
from medzsad.engine.inference import KeyedBatch, predict_batches
from medzsad.engine.randomness import NoiseKey
from medzsad.engine.skipping import live_tables, pathless
from medzsad.methods.base import ZsadMethod
from medzsad.utils.files import atomic_write_bytes
from medzsad.utils.progress import progress
from medzsad.utils.tables import write_csv
from medzsad.viz import MapScale, display_images
from medzsad.viz.render import render_overlay

SCORES_HEADER = ("sample_id", "kind", "score", "height", "width", "volume_id", "slice_index", "intensity")
INDEX_HEADER = ("sample_id", "source")
OVERLAY_SCALE = MapScale(0.0, 1.0)  # maps are probabilities: one fixed scale for every image


@dataclass
class PredictSummary:
    """What a prediction run wrote and what it could not read."""

    output_dir: Path
    images: int = 0
    volumes: int = 0
    failures: list[str] = field(default_factory=list)


def scan_predict_inputs(
    inputs: Iterable[str | Path], transform: ClipImageTransform, options: dict | None = None
) -> FolderDataset:
    """The inputs as the data layer's study grouper and sample builder see them (the same as ``test``):
    each DICOM series or multi-frame file a volume, every other image its own samples, skipped objects
    listed with their reasons."""
    return FolderDataset(list(inputs), transform=transform, **{"axis": "native", **(options or {})})


def samples_from_file(path: Path, transform: ClipImageTransform) -> list[Sample]:
    """One unlabelled sample per 2-D image in ``path`` (one per frame of a colour multi-frame DICOM), as
    ``predict`` and ``test`` build them (the data layer's grouper and sample builder)."""
    dataset = scan_predict_inputs([path], transform)
    return [sample for item in dataset.study.items for sample in dataset.item_samples(item)]


@dataclass
class _OpenVolume:
    """A volume whose slice maps are coming back from the model."""

    volume: Volume
    volume_id: str
    source: Path
    slices: int
    axis: int = 0
    maps: dict[int, np.ndarray] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)


@dataclass
class _Pending:
    """What the writer needs to know about a batch it has not received yet: each sample's source file,
    or the volume its slices belong to."""

    sources: list[Path]
    volume: _OpenVolume | None = None


class Predictor:
    """Runs a method over inputs through the engine's inference loop and writes each image's outputs.

    Images of consecutive files share batches; a volume's slices are batched on their own and its map
    volume is written once its last slice is back.

    Args:
        method: the model.
        output_dir: where ``maps/``, ``overlays/``, ``volumes/`` and the CSVs go.
        device: where to run.
        transform: image transform (size, padding, intensity).
        batch_size: images per forward pass.
        precision: "fp32", "bf16" or "fp16".
        seed: run seed of the random draws of sampling methods (per input and frame).
        decisions: writes decisions and masks from a calibration (:class:`~medzsad.engine.calibrate.DecisionWriter`).
        score_fn: ``images [B, 3, S, S] -> (scores [B], maps [B, S, S])`` numpy, run instead of
            ``method`` (an exported model in onnxruntime, :mod:`medzsad.deploy`); ``method`` is then None.
    """

    def __init__(
        self,
        method: ZsadMethod | None,
        output_dir: Path,
        device: torch.device,
        transform: ClipImageTransform,
        batch_size: int = 8,
        precision: str = "fp32",
        seed: int = 0,
        decisions: DecisionWriter | None = None,
        score_fn: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.decisions = decisions
        self.score_fn = score_fn
        if method is not None:
            self.method = method.to(device).eval()
            self.method.backbone.set_precision(precision)
        self.output_dir = Path(output_dir)
        self.device = device
        self.transform = transform
        self.batch_size = batch_size
        self.precision = precision
        self.seed = seed
        self.rows: list[list] = []
        self.index_rows: list[list[str]] = []
        self._live = live_tables(self.output_dir, (SCORES_HEADER, INDEX_HEADER))
        self.stop_on_error = False  # stop at the first unreadable input instead of skipping it
        self.stopped: DataError | None = None  # that input's error, raised once the inputs before it are written
        self.skipped: list[tuple[str, str]] = []  # (pseudonymous id, problem) of each skipped input
        self._pending: deque[_Pending] = deque()

    def run(
        self,
        dataset: FolderDataset,
        items: Sequence[Item],
        first: int,
        summary: PredictSummary,
        report: Callable[[str], None],
    ) -> None:
        """Score ``items`` of ``dataset`` (items ``first, first + 1, ...`` of the run: their noise keys);
        unreadable ones are reported and counted in ``summary.failures``."""
        batches = self._batches(dataset, items, first, summary, report)
        loop = self._scored(batches) if self.score_fn else predict_batches(self.method, batches, self.device, self.seed)
        for batch in loop:
            self._write(batch, self._pending.popleft())
        if self.stopped is not None:
            raise self.stopped

    def _scored(self, batches: Iterable[KeyedBatch]) -> Iterator[Batch]:
        """The batches with ``score_fn``'s predictions set (its own draws: the noise keys are unused)."""
        for batch, _ in batches:
            scores, maps = self.score_fn(batch.image)
            batch.pred_score, batch.anomaly_map = torch.as_tensor(scores), torch.as_tensor(maps)
            yield batch

    # -- reading: keyed batches for the loop -------------------------------------------------------
    def _batches(
        self,
        dataset: FolderDataset,
        items: Sequence[Item],
        first: int,
        summary: PredictSummary,
        report: Callable[[str], None],
    ) -> Iterator[KeyedBatch]:
        images: list[tuple[Sample, NoiseKey, Path]] = []
        for position, item in enumerate(progress(items, "predict", enabled=distributed.is_main()), start=first):
            path = item.source
            try:
                if dataset.is_volume(item):
                    yield from self._flush(images)
                    yield from self._volume_batches(dataset, item, position)
                    summary.volumes += 1
                    continue
                samples = dataset.item_samples(item)
            except (DataError, MemoryError) as exc:
                self._skip(_as_data_error(exc, path), path, summary, report)
                if self.stopped is not None:
                    break  # the images read before it are still scored and written
                continue
            summary.images += len(samples)
            images.extend((sample, (position, frame), path) for frame, sample in enumerate(samples))
            while len(images) >= self.batch_size:
                yield from self._flush(images[: self.batch_size])
                del images[: self.batch_size]
        yield from self._flush(images)

    def _flush(self, images: list[tuple[Sample, NoiseKey, Path]]) -> Iterator[KeyedBatch]:
        if images:
            self._pending.append(_Pending([source for _, _, source in images]))
            yield self._collate([sample for sample, _, _ in images]), [key for _, key, _ in images]
            images.clear()

    def _volume_batches(self, dataset: FolderDataset, item: Item, position: int) -> Iterator[KeyedBatch]:
        volume = dataset.load_volume(item)
        volume_id = pseudonymous_id(volume.identity or str(item.source.resolve()))
        axis = volume.resolve_axis(dataset.axis)
        open_volume = _OpenVolume(volume, volume_id, item.source, volume.n_slices(axis), axis)
        chunk: list[Sample] = []
        for sample in volume_samples(volume, axis=axis, builder=dataset.builder):
            chunk.append(sample)
            if len(chunk) == self.batch_size:
                yield self._volume_chunk(chunk, open_volume, position)
                chunk = []
        if chunk:
            yield self._volume_chunk(chunk, open_volume, position)

    def _volume_chunk(self, chunk: list[Sample], open_volume: _OpenVolume, position: int) -> KeyedBatch:
        self._pending.append(_Pending([open_volume.source] * len(chunk), open_volume))
        return self._collate(chunk), [(position, int(s.slice_index or 0)) for s in chunk]

    def _collate(self, samples: list[Sample]) -> Batch:
        batch = collate_samples(samples)
        return batch.pin_memory() if self.device.type == "cuda" else batch

    # -- writing -----------------------------------------------------------------------------------
    def _write(self, batch: Batch, pending: _Pending) -> None:
        results = batch.results()
        maps = batch.anomaly_map.numpy()
        if pending.volume is not None:
            self._add_slices(pending.volume, results, maps, [meta.get("intensity") for meta in batch.meta])
            return
        pixels = display_images(batch.image)
        for result, amap, image, source, meta in zip(results, maps, pixels, pending.sources, batch.meta):
            self._write_image_outputs(result, amap, image, source, meta.get("intensity"))

    def _write_image_outputs(
        self, result: SampleResult, amap: np.ndarray, image: np.ndarray, source: Path, intensity: str | None
    ) -> None:
        height, width = result.original_size
        full = map_to_original(amap, (height, width), pad_to_square=self.transform.pad_to_square)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, anomaly_map=full, score=np.float32(result.score))
        atomic_write_bytes(self.output_dir / "maps" / f"{result.sample_id}.npz", buffer.getvalue())
        caption = f"{result.sample_id} | score {result.score:.3g} | {intensity or 'as stored'}"
        atomic_write_bytes(self.output_dir / "overlays" / f"{result.sample_id}.png", overlay_png(image, full, caption))
        self._add([result.sample_id, "image", result.score, height, width, None, None, intensity], 0)
        if self.decisions is not None:
            self.decisions.image(result.sample_id, result.score, full)
        self._add([result.sample_id, str(source)], 1)

    def _add_slices(
        self, open_volume: _OpenVolume, results: list[SampleResult], maps: np.ndarray, windows: list[str | None]
    ) -> None:
        pad = self.transform.pad_to_square
        for result, amap, intensity in zip(results, maps, windows):
            index = int(result.slice_index or 0)
            open_volume.maps[index] = map_to_original(amap, result.original_size, pad_to_square=pad)
            volume_id = open_volume.volume_id
            self._add([f"{volume_id}:{index}", "slice", result.score, None, None, volume_id, index, intensity], 0)
            open_volume.scores.append(result.score)
        if len(open_volume.maps) == open_volume.slices:
            indices = sorted(open_volume.maps)
            maps = [open_volume.maps[i] for i in indices]
            map_volume = reassemble(maps, open_volume.volume, open_volume.axis, indices)
            path = self.output_dir / "volumes" / f"{open_volume.volume_id}_map.nii.gz"
            write_nifti(map_volume, open_volume.volume, path)
            if self.decisions is not None:
                self.decisions.volume(open_volume.volume_id, open_volume.volume, map_volume, open_volume.scores)
            self._add([open_volume.volume_id, str(open_volume.source)], 1)
            open_volume.maps.clear()

    def _add(self, row: list, table: int) -> None:
        """A row of ``scores.csv`` (0) or of the sample index (1), kept and written to disk at once."""
        (self.rows, self.index_rows)[table].append(row)
        self._live[table].append(row)

    def _skip(self, error: DataError, path: Path, summary: PredictSummary, report: Callable[[str], None]) -> None:
        """One line for an unreadable input, listed for ``skipped.csv``; or, in stop mode, the error."""
        if self.stop_on_error:
            self.stopped = error
            return
        summary.failures.append(str(error))
        self.skipped.append((pseudonymous_id(str(path.resolve())), pathless(error.problem)))
        report(f"skipped: {error}")

    def finish(self) -> None:
        """Write the CSVs; under torchrun rank 0 writes every process's rows, in rank order."""
        for table in self._live:
            table.close()
        own = self.decisions.rows if self.decisions is not None else []
        parts = distributed.gather_objects((self.rows, self.index_rows, own, self.skipped))
        if parts is None:
            return
        if self.decisions is not None:
            self.decisions.finish([row for part in parts for row in part[2]])
        rows = [row for part in parts for row in part[0]]
        index_rows = [row for part in parts for row in part[1]]
        write_csv(self.output_dir / "scores.csv", SCORES_HEADER, rows)
        write_csv(self.output_dir / "sample_index.local.csv", INDEX_HEADER, index_rows)
        skipped = [row for part in parts for row in part[3]]
        if skipped:
            write_csv(self.output_dir / "skipped.csv", ("sample_id", "problem"), skipped)
        for partial in self.output_dir.glob(".*.partial*.csv"):
            partial.unlink(missing_ok=True)


def overlay_png(image: np.ndarray, anomaly_map: np.ndarray, caption: str = "") -> bytes:
    """PNG bytes: the heat map (fixed [0, 1] scale) over the image at the map's resolution, the
    caption (id, score, display window) above and a colour bar with numbers beneath."""
    buffer = io.BytesIO()
    Image.fromarray(render_overlay(image, anomaly_map, OVERLAY_SCALE, caption)).save(buffer, format="PNG")
    return buffer.getvalue()


def _as_data_error(exc: BaseException, path: Path) -> DataError:
    if isinstance(exc, DataError):
        return exc
    return DataError(path, "not enough memory to decode it")  # a MemoryError from a decoder


def predict_paths(
    method: ZsadMethod | None,
    inputs: Iterable[str | Path],
    output_dir: str | Path,
    device: torch.device,
    transform: ClipImageTransform,
    batch_size: int = 8,
    precision: str = "fp32",
    report: Callable[[str], None] = print,
    seed: int = 0,
    stop_on_error: bool = False,
    options: dict | None = None,
    decisions: DecisionWriter | None = None,
    score_fn: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]] | None = None,
) -> PredictSummary:
    """Score every input; unreadable ones are reported (one line each), skipped and listed in ``skipped.csv``
    (pseudonymous id and problem), or with ``stop_on_error`` the first one stops the run. Rows of
    ``scores.csv`` are on disk as soon as their maps are (:func:`~medzsad.engine.skipping.live_tables`). ``score_fn``
    replaces ``method`` (see :class:`Predictor`).

    Under torchrun each process scores its block of the inputs and reports its own unreadable ones;
    the returned summary (counts, failures) covers every process's inputs, on every process.
    """
    summary = PredictSummary(Path(output_dir))
    predictor = Predictor(method, Path(output_dir), device, transform, batch_size, precision, seed, decisions, score_fn)
    predictor.stop_on_error = stop_on_error
    inputs = list(inputs)
    dataset = scan_predict_inputs(inputs, transform, options)
    if distributed.is_main():
        for skipped in dataset.skipped:
            report(f"skipped: {skipped}")
            # listed in skipped.csv by pseudonymous id; not a failure (localizers, unselected series...)
            predictor.skipped.append((pseudonymous_id(str(skipped.path.resolve())), pathless(skipped.reason)))
    items = dataset.study.items
    if not items:
        raise DataError(Path(*[str(i) for i in inputs][:1] or ["."]), "no images or scans found")
    block = distributed.shard_range(len(items))
    predictor.run(dataset, items[block.start : block.stop], block.start, summary, report)
    predictor.finish()
    if distributed.world_size() > 1:
        parts = distributed.all_gather_objects((summary.images, summary.volumes, summary.failures))
        summary.images = sum(part[0] for part in parts)
        summary.volumes = sum(part[1] for part in parts)
        summary.failures = [failure for part in parts for failure in part[2]]
    return summary
