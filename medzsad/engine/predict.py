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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from medzsad.data.errors import DataError
from medzsad.data.ids import pseudonymous_id
from medzsad.data.readers import detect_format, iter_image_files, read_frames
from medzsad.data.records import Batch, Sample, collate_samples
from medzsad.data.transforms import ClipImageTransform, map_to_original
from medzsad.data.volumes import predict_volume, read_volume, write_nifti
from medzsad.engine import distributed
from medzsad.engine.evaluate import display_images
from medzsad.engine.skipping import live_tables, pathless
from medzsad.methods.base import ZsadMethod
from medzsad.tracking.render import MapScale, heat_rgb
from medzsad.utils.files import atomic_write_bytes, atomic_write_text
from medzsad.utils.tables import write_csv

VOLUME_FORMATS = {"nifti", "nrrd", "itk", "dicom_series"}
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


class Predictor:
    """Runs a method on batches and writes the outputs of each image.

    Args:
        method: the model.
        output_dir: where ``maps/``, ``overlays/``, ``volumes/`` and the CSVs go.
        device: where to run.
        transform: image transform (size, padding, intensity).
        batch_size: images per forward pass.
        precision: "fp32", "bf16" or "fp16".
    """

    def __init__(
        self,
        method: ZsadMethod,
        output_dir: Path,
        device: torch.device,
        transform: ClipImageTransform,
        batch_size: int = 8,
        precision: str = "fp32",
    ) -> None:
        self.method = method.to(device).eval()
        self.method.backbone.set_precision(precision)
        self.output_dir = Path(output_dir)
        self.device = device
        self.transform = transform
        self.batch_size = batch_size
        self.precision = precision
        self.rows: list[str] = ["sample_id,kind,score,height,width,volume_id,slice_index"]
        self.index_rows: list[str] = ["sample_id,source"]
        self._live = live_tables(self.output_dir, (self.rows[0], self.index_rows[0]))

    def run_model(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [B], maps [B, S, S])`` for a batch."""
        with torch.inference_mode():
            output = self.method.predict(batch.image.to(self.device))
        return output.image_scores.float().cpu().numpy(), output.anomaly_maps.float().cpu().numpy()

    def predict_images(self, samples: list[Sample], source: Path) -> None:
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start : start + self.batch_size]
            batch = collate_samples(chunk)
            scores, maps = self.run_model(batch)
            pixels = display_images(batch.image)
            for sample, score, amap, image in zip(chunk, scores, maps, pixels):
                self._write_image_outputs(sample, float(score), amap, image, source)

    def _write_image_outputs(self, sample: Sample, score: float, amap: np.ndarray, image: np.ndarray, source: Path):
        height, width = sample.original_size
        full = map_to_original(amap, (height, width), pad_to_square=self.transform.pad_to_square)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, anomaly_map=full, score=np.float32(score))
        atomic_write_bytes(self.output_dir / "maps" / f"{sample.sample_id}.npz", buffer.getvalue())
        atomic_write_bytes(self.output_dir / "overlays" / f"{sample.sample_id}.png", overlay_png(image, full))
        self._add(f"{sample.sample_id},image,{score:.8g},{height},{width},,", 0)
        self._add(f"{sample.sample_id},{_quote(str(source))}", 1)

    def predict_volume(self, path: Path) -> None:
        volume = read_volume(path)
        volume_id = pseudonymous_id(volume.identity or str(path.resolve()))
        slice_scores: list[tuple[int, float]] = []

        def map_fn(batch: Batch) -> np.ndarray:
            scores, maps = self.run_model(batch)
            slice_scores.extend(zip((int(i or 0) for i in batch.slice_index), scores.tolist()))
            return maps

        map_volume = predict_volume(volume, map_fn, transform=self.transform, batch_size=self.batch_size)
        write_nifti(map_volume, volume, self.output_dir / "volumes" / f"{volume_id}_map.nii.gz")
        for index, score in slice_scores:
            self._add(f"{volume_id}:{index},slice,{score:.8g},,,{volume_id},{index}", 0)
        self._add(f"{volume_id},{_quote(str(path))}", 1)

    def _add(self, line: str, table: int) -> None:
        """A row of ``scores.csv`` (0) or of the sample index (1), kept and written to disk at once."""
        (self.rows, self.index_rows)[table].append(line)
        self._live[table].append_line(line)

    def finish(self) -> None:
        """Write the CSVs; under torchrun rank 0 writes every process's rows, in rank order."""
        for table in self._live:
            table.close()
        parts = distributed.gather_objects((self.rows[1:], self.index_rows[1:]))
        if parts is None:
            return
        rows = self.rows[:1] + [row for part in parts for row in part[0]]
        index_rows = self.index_rows[:1] + [row for part in parts for row in part[1]]
        atomic_write_text(self.output_dir / "scores.csv", "\n".join(rows) + "\n")
        atomic_write_text(self.output_dir / "sample_index.local.csv", "\n".join(index_rows) + "\n")
        if distributed.world_size() > 1:
            for path in self.output_dir.glob(".*.partial*.csv"):
                path.unlink(missing_ok=True)


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


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


def _write_skipped(output_dir: Path, skipped: list[tuple[str, str]]) -> None:
    """``skipped.csv`` (sample_id, problem) with every process's skipped inputs; none written when none."""
    parts = distributed.gather_objects(skipped)
    rows = [row for part in parts or [] for row in part]
    if rows:
        write_csv(output_dir / "skipped.csv", ("sample_id", "problem"), rows)


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
    stop_on_error: bool = False,
) -> PredictSummary:
    """Score every input; unreadable ones are reported (one line each), skipped and listed in ``skipped.csv``
    (pseudonymous id and problem), or with ``stop_on_error`` the first one stops the run. Rows of
    ``scores.csv`` are on disk as soon as their maps are (:func:`~medzsad.engine.skipping.live_tables`).

    Under torchrun each process scores its block of the inputs and reports its own unreadable ones;
    the returned summary (counts, failures) covers every process's inputs, on every process.
    """
    summary = PredictSummary(Path(output_dir))
    predictor = Predictor(method, Path(output_dir), device, transform, batch_size, precision)
    inputs = list(inputs)
    paths = list(expand_inputs(inputs))
    if not paths:
        raise DataError(Path(*[str(i) for i in inputs][:1] or ["."]), "no images or scans found")
    block = distributed.shard_range(len(paths))
    skipped: list[tuple[str, str]] = []
    show = None if distributed.is_main() else True
    for path in tqdm(paths[block.start : block.stop], desc="predict", disable=show):
        try:
            if _is_volume(path):
                predictor.predict_volume(path)
                summary.volumes += 1
            else:
                samples = samples_from_file(path, transform)
                predictor.predict_images(samples, path)
                summary.images += len(samples)
        except (DataError, MemoryError) as exc:
            error = _as_data_error(exc, path)
            if stop_on_error:
                raise error from None
            summary.failures.append(str(error))
            skipped.append((pseudonymous_id(str(path.resolve())), pathless(error.problem)))
            report(f"skipped: {error}")
    predictor.finish()
    _write_skipped(Path(output_dir), skipped)
    if distributed.world_size() > 1:
        parts = distributed.all_gather_objects((summary.images, summary.volumes, summary.failures))
        summary.images = sum(part[0] for part in parts)
        summary.volumes = sum(part[1] for part in parts)
        summary.failures = [failure for part in parts for failure in part[2]]
    return summary
