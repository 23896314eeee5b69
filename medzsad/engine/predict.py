"""``medzsad predict``: anomaly maps, overlays and scores for image files, folders and scan volumes.

For every 2-D image (a PNG/JPEG/TIFF, a DICOM file, each frame of a multi-frame DICOM) it writes
``maps/<sample_id>.npz`` (float32 map at the image's own resolution), ``overlays/<sample_id>.png``
(heat map on a fixed [0, 1] colour scale over the image) and a row of ``scores.csv``. A 3-D volume
(NIfTI, NRRD, a DICOM series folder) is scored slice by slice and its map written back on the scan's
own grid as ``volumes/<volume_id>_map.nii.gz``.

File names and tables carry pseudonymous sample ids only; ``sample_index.local.csv`` maps them back to
the inputs for the user and must not be shared or logged. An unreadable input is reported on one line
and skipped; the other inputs are still processed.

Under ``torchrun`` the expanded list of inputs (files and series folders, in sorted order) is cut into
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
from tqdm.auto import tqdm

from medzsad.data.errors import DataError
from medzsad.data.ids import pseudonymous_id
from medzsad.data.readers import detect_format, iter_image_files, read_frames
from medzsad.data.records import Batch, Sample, SampleResult, collate_samples
from medzsad.data.transforms import ClipImageTransform, map_to_original
from medzsad.data.volumes import Volume, read_volume, reassemble, volume_samples, write_nifti
from medzsad.engine import distributed
from medzsad.engine.evaluate import display_images
from medzsad.engine.inference import KeyedBatch, predict_batches
from medzsad.engine.randomness import NoiseKey
from medzsad.engine.skipping import live_tables, pathless
from medzsad.methods.base import ZsadMethod
from medzsad.tracking.render import MapScale, heat_rgb
from medzsad.utils.files import atomic_write_bytes
from medzsad.utils.tables import write_csv

VOLUME_FORMATS = {"nifti", "nrrd", "itk", "dicom_series"}
SCORES_HEADER = ("sample_id", "kind", "score", "height", "width", "volume_id", "slice_index")
INDEX_HEADER = ("sample_id", "source")
OVERLAY_SCALE = MapScale(0.0, 1.0)  # maps are probabilities: one fixed scale for every image


@dataclass
class PredictSummary:
    """What a prediction run wrote and what it could not read."""

    output_dir: Path
    images: int = 0
    volumes: int = 0
    failures: list[str] = field(default_factory=list)


def _is_volume(path: Path) -> bool:
    fmt = detect_format(path)
    if fmt not in VOLUME_FORMATS:
        return False
    if fmt == "dicom_series":
        return True
    return min(read_volume(path).shape) > 1


def expand_inputs(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Files and volume folders to score: folders of images are walked, DICOM series folders kept whole."""
    for item in inputs:
        path = Path(item)
        if path.is_dir() and not any(p.is_dir() for p in path.iterdir()) and _holds_only_dicom(path):
            yield path
        elif path.is_dir():
            yield from iter_image_files(path)
        else:
            yield path


def _holds_only_dicom(folder: Path) -> bool:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not files:
        return False
    try:
        return all(detect_format(p) == "dicom" for p in files)
    except DataError:
        return False


@dataclass
class _OpenVolume:
    """A volume whose slice maps are coming back from the model."""

    volume: Volume
    volume_id: str
    source: Path
    slices: int
    maps: dict[int, np.ndarray] = field(default_factory=dict)


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
    """

    def __init__(
        self,
        method: ZsadMethod,
        output_dir: Path,
        device: torch.device,
        transform: ClipImageTransform,
        batch_size: int = 8,
        precision: str = "fp32",
        seed: int = 0,
    ) -> None:
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

    def run(self, paths: Sequence[Path], first: int, summary: PredictSummary, report: Callable[[str], None]) -> None:
        """Score ``paths`` (inputs ``first, first + 1, ...`` of the run: their noise keys); unreadable
        inputs are reported and counted in ``summary.failures``."""
        batches = self._batches(paths, first, summary, report)
        for batch in predict_batches(self.method, batches, self.device, self.seed):
            self._write(batch, self._pending.popleft())
        if self.stopped is not None:
            raise self.stopped

    # -- reading: keyed batches for the loop -------------------------------------------------------
    def _batches(
        self, paths: Sequence[Path], first: int, summary: PredictSummary, report: Callable[[str], None]
    ) -> Iterator[KeyedBatch]:
        images: list[tuple[Sample, NoiseKey, Path]] = []
        quiet = None if distributed.is_main() else True  # tqdm: None hides the bar only off a terminal
        for position, path in enumerate(tqdm(paths, desc="predict", disable=quiet), start=first):
            try:
                if _is_volume(path):
                    yield from self._flush(images)
                    yield from self._volume_batches(path, position)
                    summary.volumes += 1
                    continue
                samples = samples_from_file(path, self.transform)
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

    def _volume_batches(self, path: Path, position: int) -> Iterator[KeyedBatch]:
        volume = read_volume(path)
        volume_id = pseudonymous_id(volume.identity or str(path.resolve()))
        open_volume = _OpenVolume(volume, volume_id, path, volume.n_slices())
        chunk: list[Sample] = []
        for sample in volume_samples(volume, transform=self.transform):
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
            self._add_slices(pending.volume, results, maps)
            return
        pixels = display_images(batch.image)
        for result, amap, image, source in zip(results, maps, pixels, pending.sources):
            self._write_image_outputs(result, amap, image, source)

    def _write_image_outputs(self, result: SampleResult, amap: np.ndarray, image: np.ndarray, source: Path) -> None:
        height, width = result.original_size
        full = map_to_original(amap, (height, width), pad_to_square=self.transform.pad_to_square)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, anomaly_map=full, score=np.float32(result.score))
        atomic_write_bytes(self.output_dir / "maps" / f"{result.sample_id}.npz", buffer.getvalue())
        atomic_write_bytes(self.output_dir / "overlays" / f"{result.sample_id}.png", overlay_png(image, full))
        self._add([result.sample_id, "image", result.score, height, width, None, None], 0)
        self._add([result.sample_id, str(source)], 1)

    def _add_slices(self, open_volume: _OpenVolume, results: list[SampleResult], maps: np.ndarray) -> None:
        pad = self.transform.pad_to_square
        for result, amap in zip(results, maps):
            index = int(result.slice_index or 0)
            open_volume.maps[index] = map_to_original(amap, result.original_size, pad_to_square=pad)
            volume_id = open_volume.volume_id
            self._add([f"{volume_id}:{index}", "slice", result.score, None, None, volume_id, index], 0)
        if len(open_volume.maps) == open_volume.slices:
            indices = sorted(open_volume.maps)
            map_volume = reassemble([open_volume.maps[i] for i in indices], open_volume.volume, "axial", indices)
            path = self.output_dir / "volumes" / f"{open_volume.volume_id}_map.nii.gz"
            write_nifti(map_volume, open_volume.volume, path)
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
        parts = distributed.gather_objects((self.rows, self.index_rows, self.skipped))
        if parts is None:
            return
        rows = [row for part in parts for row in part[0]]
        index_rows = [row for part in parts for row in part[1]]
        write_csv(self.output_dir / "scores.csv", SCORES_HEADER, rows)
        write_csv(self.output_dir / "sample_index.local.csv", INDEX_HEADER, index_rows)
        skipped = [row for part in parts for row in part[2]]
        if skipped:
            write_csv(self.output_dir / "skipped.csv", ("sample_id", "problem"), skipped)
        for partial in self.output_dir.glob(".*.partial*.csv"):
            partial.unlink(missing_ok=True)


def overlay_png(image: np.ndarray, anomaly_map: np.ndarray, alpha: float = 0.5) -> bytes:
    """PNG bytes: the heat map (fixed [0, 1] scale) blended over the image, at the map's resolution."""
    height, width = anomaly_map.shape
    base = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), dtype=np.float32)
    heat = heat_rgb(anomaly_map, OVERLAY_SCALE).astype(np.float32)
    blended = ((1 - alpha) * base + alpha * heat).round().clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG")
    return buffer.getvalue()


def _as_data_error(exc: BaseException, path: Path) -> DataError:
    if isinstance(exc, DataError):
        return exc
    return DataError(path, "not enough memory to decode it")  # a MemoryError from a decoder


def samples_from_file(path: Path, transform: ClipImageTransform) -> list[Sample]:
    """One sample per 2-D image in ``path`` (one per frame for multi-frame DICOM), without labels."""
    samples = []
    for frame in read_frames(path):
        samples.append(
            Sample(
                image=transform(frame.array, modality=frame.modality),
                mask=None,
                label=-1,
                category="",
                sample_id=pseudonymous_id(frame.identity),
                original_size=frame.size,
                meta=frame.meta,
            )
        )
    return samples


def predict_paths(
    method: ZsadMethod,
    inputs: Iterable[str | Path],
    output_dir: str | Path,
    device: torch.device,
    transform: ClipImageTransform,
    batch_size: int = 8,
    precision: str = "fp32",
    report: Callable[[str], None] = print,
    seed: int = 0,
    stop_on_error: bool = False,
) -> PredictSummary:
    """Score every input; unreadable ones are reported (one line each), skipped and listed in ``skipped.csv``
    (pseudonymous id and problem), or with ``stop_on_error`` the first one stops the run. Rows of
    ``scores.csv`` are on disk as soon as their maps are (:func:`~medzsad.engine.skipping.live_tables`).

    Under torchrun each process scores its block of the inputs and reports its own unreadable ones;
    the returned summary (counts, failures) covers every process's inputs, on every process.
    """
    summary = PredictSummary(Path(output_dir))
    predictor = Predictor(method, Path(output_dir), device, transform, batch_size, precision, seed)
    predictor.stop_on_error = stop_on_error
    inputs = list(inputs)
    paths = list(expand_inputs(inputs))
    if not paths:
        raise DataError(Path(*[str(i) for i in inputs][:1] or ["."]), "no images or scans found")
    block = distributed.shard_range(len(paths))
    predictor.run(paths[block.start : block.stop], block.start, summary, report)
    predictor.finish()
    if distributed.world_size() > 1:
        parts = distributed.all_gather_objects((summary.images, summary.volumes, summary.failures))
        summary.images = sum(part[0] for part in parts)
        summary.volumes = sum(part[1] for part in parts)
        summary.failures = [failure for part in parts for failure in part[2]]
    return summary
