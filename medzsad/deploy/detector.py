"""One image or one volume in, score, map, decision and mask out, in the input's own geometry.

>>> from medzsad.deploy import Detector
>>> detector = Detector.from_checkpoint("runs/train/epoch_15.safetensors")  # or Detector.from_onnx("model.onnx")
>>> result = detector("scan.nii.gz")          # a path, a numpy array or a MONAI MetaTensor
>>> result.score, result.decision              # volume: the largest slice score
>>> result.map.shape == result.mask.shape      # the scan's own voxel grid (or the image's pixels)

Inputs:

* a path: a 2-D image (PNG/JPEG/TIFF, single-frame DICOM) or a volume (NIfTI, NRRD, DICOM series
  folder), read by :mod:`medzsad.data` exactly as ``medzsad predict`` reads it;
* a numpy array: ``[H, W]`` or ``[H, W, 3]`` is an image; ``[X, Y, Z]`` (any other 3-D shape, or
  ``volume=True``) is a volume with an identity affine, slices cut along the last axis as for NIfTI;
* a MONAI ``MetaTensor`` as ``LoadImage`` gives it: spatial axes first (``[x, y]`` or ``[x, y, z]``,
  optionally after one leading channel), with its ``affine``; the map and mask come back as
  ``MetaTensor`` with the input's metadata.

Decisions: ``score >= threshold``; mask: ``map >= pixel threshold``. Without a calibration the thresholds
are a fixed, uncalibrated 0.5 (the review panel's and ``eval.dice_threshold``'s defaults). With one
(``calibration=`` a file of ``medzsad calibrate``, or the one an exported file carries) they are the
calibrated ones, exactly as ``medzsad predict calibration=...`` applies them: images against the image
threshold; a volume's score reduced from its slice scores as the calibration says and decided against
its volume threshold (no decision when the calibration has none: a slice threshold says nothing about a
whole scan's false-alarm rate); no mask when it has no pixel threshold.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medzsad.data.readers import read_frames
from medzsad.data.study import scan_inputs
from medzsad.data.transforms import ClipImageTransform, map_to_original

# _canonical: the data layer's own array + affine -> canonical Volume step, reused for in-memory volumes.
from medzsad.data.volumes import Volume, _canonical, read_volume, reassemble, volume_samples
from medzsad.deploy.errors import DeployError
from medzsad.engine.calibrate import Calibration, Threshold, check_calibration, preprocessing, read_calibration
from medzsad.engine.predict import PredictSummary, predict_paths
from medzsad.metrics.volumes import reduce_slice_scores

ScoreFn = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]


@dataclass
class Detection:
    """Result of one image or volume.

    Attributes:
        score: image score; for a volume the largest slice score.
        map: anomaly map in the input's geometry (``[H, W]`` pixels, or the volume's voxel grid in
            the input's layout); a ``MetaTensor`` when the input was one.
        decision: ``score >= image_threshold``.
        mask: ``map >= pixel_threshold`` (bool), same geometry and type as ``map``.
        slice_scores: per-slice scores of a volume (slicing order), ``None`` for an image.
    """

    score: float
    map: Any
    decision: bool | None
    mask: Any
    slice_scores: np.ndarray | None = field(default=None, repr=False)
    probability: float | None = None
    origin: str = ""


@dataclass(frozen=True)
class Thresholds:
    """The decision rules a :class:`Detector` applies (one value object, from a calibration or fixed).

    Attributes:
        image: image score threshold.
        pixel: map threshold for masks; ``None``: no masks.
        volume: volume score threshold; ``None``: no volume decision (a calibration without one).
        volume_score: ``"max"`` or ``"topk_mean"`` of the slice scores, with ``top_k``.
        calibration: the calibration they come from (probabilities, origin), or ``None`` (fixed 0.5).
    """

    image: float = 0.5
    pixel: float | None = 0.5
    volume: float | None = 0.5
    volume_score: str = "max"
    top_k: int = 3
    calibration: Calibration | None = None

    @classmethod
    def of(cls, calibration: Calibration) -> Thresholds:
        spec = calibration.volume_score or {}
        return cls(
            image=calibration.image.value,
            pixel=_value(calibration.pixel),
            volume=_value(calibration.volume),
            volume_score=str(spec.get("score", "max")),
            top_k=int(spec.get("top_k", 3)),
            calibration=calibration,
        )

    def origin(self, threshold: Threshold | None) -> str:
        """``"conformal, alpha=0.05, n=200"``, ``"no volume threshold in the calibration"`` or ``"fixed,
        not calibrated"``: what a reader of a decision needs beside it."""
        if self.calibration is None:
            return "fixed, not calibrated"
        return threshold.origin() if threshold is not None else "no volume threshold in the calibration"

    def probability(self, score: float) -> float | None:
        model = self.calibration.probability if self.calibration else None
        return float(model([score])[0]) if model is not None else None


def _value(threshold: Threshold | None) -> float | None:
    return None if threshold is None else float(threshold.value)


class Detector:
    """Scores images and volumes with a model and a preprocessing.

    Args:
        score_fn: ``images [B, 3, S, S] -> (scores [B], maps [B, S, S])`` (numpy), e.g. a PyTorch
            :class:`~medzsad.deploy.graph.InferenceGraph` or an :class:`~medzsad.deploy.onnx_runtime.OnnxModel`.
        transform: the preprocessing the model was trained/exported with.
        thresholds: decision rules (:class:`Thresholds`); default the fixed, uncalibrated 0.5.
        batch_size: slices per forward pass for volumes.
        slice_axis: how volumes are cut, as ``data.slice_axis`` (``native``: as acquired, the default of
            ``medzsad predict``; ``axial``, ``coronal``, ``sagittal``, 0/1/2).
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        transform: ClipImageTransform,
        thresholds: Thresholds | None = None,
        batch_size: int = 8,
        slice_axis: str | int = "native",
    ) -> None:
        self.score_fn = score_fn
        self.transform = transform
        self.thresholds = thresholds or Thresholds()
        self.batch_size = int(batch_size)
        self.slice_axis = slice_axis

    @property
    def image_threshold(self) -> float:
        return self.thresholds.image

    @property
    def pixel_threshold(self) -> float | None:
        return self.thresholds.pixel

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        calibration: str | os.PathLike[str] | None = None,
        reference: str | os.PathLike[str] | None = None,
        *,
        fewshot: Any = None,
        weights_path: str | None = None,
        method: str | None = None,
        backbone: Any = None,
        transform: ClipImageTransform | None = None,
        batch_size: int = 8,
        slice_axis: str | int = "native",
    ) -> Detector:
        """A PyTorch (CPU, fp32) detector from a medzsad checkpoint (``.safetensors`` + ``.json``) or an
        official release ``.pth``.

        The backbone is rebuilt from what the checkpoint records (open_clip tag or random tiny config);
        a checkpoint trained on a local weight file needs that file as ``weights_path``. An official
        ``.pth`` records neither method nor backbone: give ``method`` (``"anomalyclip"``...) and, unless
        it is the official OpenAI ViT-L-14-336 (hub or ``weights_path``), ``backbone`` (a
        :class:`~medzsad.backbone.config.BackboneConfig` or its dict).
        ``reference`` (few-shot, docs/fewshot.md): a saved memory bank ``.safetensors``, a folder of a
        site's normal images or scans, or a manifest; ``fewshot`` a :class:`FewShotConfig` or its dict.
        ``calibration``: a file of ``medzsad calibrate`` made for this checkpoint (and these references),
        refused in one line otherwise.
        """
        from medzsad.deploy.model import load_method

        model = load_method(path, weights_path, method=method, backbone=backbone)
        transform = transform or ClipImageTransform(model.image_size)
        if reference is not None:
            model = _with_reference(model, reference, fewshot, transform, slice_axis)
        thresholds = None
        if calibration is not None:
            loaded = read_calibration(calibration)
            from medzsad.engine.jobs import data_section

            settings = preprocessing(data_section(transform, slice_axis))
            check_calibration(loaded, model, calibration, settings)
            thresholds = Thresholds.of(loaded)
        return cls(torch_score_fn(model), transform, thresholds, batch_size, slice_axis)

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        calibration: str | os.PathLike[str] | None = None,
        reference: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 8,
        threads: int | None = None,
    ) -> Detector:
        """An onnxruntime (CPU) detector from a file of ``medzsad export``; preprocessing, slicing axis
        and calibration come from the file's metadata; ``calibration`` replaces the file's own (checked
        against the model digest the file records)."""
        from medzsad.deploy.export import calibration_from_metadata, check_onnx_calibration, transform_from_metadata
        from medzsad.deploy.onnx_runtime import OnnxModel

        if reference is not None:
            raise DeployError(
                "reference: an exported file is zero-shot; export with reference= to fold a memory bank into it, "
                "or use Detector.from_checkpoint(..., reference=...)"
            )
        model = OnnxModel(path, threads)
        transform = transform_from_metadata(model.metadata)
        axis = model.metadata.preprocessing.get("slice_axis", "native")
        loaded = calibration_from_metadata(model.metadata)
        if calibration is not None:
            loaded = read_calibration(calibration)
            check_onnx_calibration(loaded, model.metadata, calibration)
        return cls(model, transform, Thresholds.of(loaded) if loaded else None, batch_size, axis)

    # -- scoring -----------------------------------------------------------------------------------
    def __call__(self, image: Any, *, volume: bool | None = None) -> Detection:
        """Score a path, a numpy array or a MetaTensor (see the module docstring)."""
        if isinstance(image, str | os.PathLike):
            return self._path(Path(image))
        if _is_meta_tensor(image):
            return self._meta_tensor(image)
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if volume or (volume is None and array.ndim == 3 and array.shape[-1] not in (3, 4)):
            return self._volume(_canonical(_as_volume_array(array), np.eye(4)))
        return self._image(array)

    def write_predictions(
        self,
        inputs: Iterable[str | os.PathLike[str]],
        output_dir: str | os.PathLike[str],
        report=print,
        stop_on_error: bool = False,
        rescaled: bool = False,
    ) -> PredictSummary:
        """``medzsad predict`` with this detector's model and preprocessing: maps, overlays, volumes and
        ``scores.csv`` for every input (files, folders, DICOM series), unreadable inputs skipped; with a
        calibration also ``decisions.csv`` and masks (and ``rescaled/`` with ``rescaled``)."""
        from medzsad.engine.calibrate import DecisionWriter

        calibration = self.thresholds.calibration
        decisions = DecisionWriter(calibration, Path(output_dir), rescaled) if calibration else None
        return predict_paths(
            None,
            inputs,
            Path(output_dir),
            torch.device("cpu"),
            self.transform,
            self.batch_size,
            report=report,
            stop_on_error=stop_on_error,
            score_fn=self.score_images,
            options={"axis": self.slice_axis},
            decisions=decisions,
        )

    def score_images(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``[B]`` and maps ``[B, S, S]`` at model resolution for preprocessed ``images``."""
        scores, maps = self.score_fn(images)
        return np.asarray(scores, dtype=np.float32), np.asarray(maps, dtype=np.float32)

    def _image(self, array: np.ndarray, modality: str | None = None) -> Detection:
        if array.ndim not in (2, 3):
            raise DeployError(f"expected an image [H, W] or [H, W, 3] or a volume, got shape {list(array.shape)}")
        tensor = self.transform(array, modality=modality)
        scores, maps = self.score_images(tensor.unsqueeze(0))
        full = map_to_original(maps[0], array.shape[:2], pad_to_square=self.transform.pad_to_square)
        calibration = self.thresholds.calibration
        return self._decide(float(scores[0]), full, self.image_threshold, calibration.image if calibration else None)

    def _volume(self, volume: Volume) -> Detection:
        """Slice by slice along ``slice_axis`` as ``medzsad predict`` does, maps reassembled on the grid."""
        axis = volume.resolve_axis(self.slice_axis)
        samples = volume_samples(volume, axis=axis, transform=self.transform)
        scores: list[float] = []
        maps: list[np.ndarray] = []
        indices: list[int] = []
        while chunk := list(itertools.islice(samples, self.batch_size)):
            batch_scores, batch_maps = self.score_images(torch.stack([sample.image for sample in chunk]))
            scores.extend(batch_scores.tolist())
            for sample, amap in zip(chunk, batch_maps):
                maps.append(map_to_original(amap, sample.original_size, pad_to_square=self.transform.pad_to_square))
                indices.append(int(sample.slice_index or 0))
        grid = volume.to_source_layout(reassemble(maps, volume, axis, indices))
        rules = self.thresholds
        score = reduce_slice_scores(scores, rules.volume_score, rules.top_k)
        result = self._decide(score, grid, rules.volume, rules.calibration.volume if rules.calibration else None)
        result.slice_scores = np.asarray(scores, dtype=np.float32)
        return result

    def _path(self, path: Path) -> Detection:
        if not path.exists():
            raise DeployError(f"{path}: not found")
        if _is_volume(path):
            return self._volume(read_volume(path))
        frames = read_frames(path)
        if len(frames) != 1:
            raise DeployError(f"{path}: {len(frames)} frames (a cine or multi-frame image); use detector.frames(path)")
        return self._image(frames[0].array, frames[0].modality)

    def frames(self, path: str | os.PathLike[str]) -> list[Detection]:
        """One detection per frame of a multi-frame 2-D file (an ultrasound cine, a colour multi-frame
        DICOM), each frame scored as its own image in its own pixels; a single image gives one."""
        source = Path(path)
        if not source.is_file():
            raise DeployError(f"{source}: not found")
        return [self._image(frame.array, frame.modality) for frame in read_frames(source)]

    def _meta_tensor(self, image: Any) -> Detection:
        array = np.asarray(image.detach().cpu().numpy())
        spatial, channel_first = _split_channel(array, image.meta)
        if _spatial_dims(array, image.meta) == 3:
            affine = np.asarray(image.affine, dtype=np.float64)
            result = self._volume(_canonical(_as_volume_array(spatial), affine))
        else:
            # MONAI keeps 2-D images as [x, y] (colour last here): image rows are its second axis.
            result = self._image(np.ascontiguousarray(np.swapaxes(spatial, 0, 1)))
            result.map = result.map.T
            result.mask = None if result.mask is None else result.mask.T
        keep_channel = channel_first is True and array.shape[0] == 1
        result.map = _like(image, result.map, keep_channel)
        result.mask = None if result.mask is None else _like(image, result.mask, keep_channel)
        return result

    def _decide(
        self, score: float, full_map: np.ndarray, threshold: float | None, source: Threshold | None
    ) -> Detection:
        full_map = np.asarray(full_map, dtype=np.float32)
        pixel = self.pixel_threshold
        return Detection(
            score,
            full_map,
            None if threshold is None else bool(score >= threshold),
            None if pixel is None else full_map >= pixel,
            probability=self.thresholds.probability(score),
            origin=self.thresholds.origin(source),
        )


def torch_score_fn(method) -> ScoreFn:
    """The PyTorch scoring function of a method: the same :class:`InferenceGraph` that is exported."""
    from medzsad.deploy.graph import InferenceGraph

    graph = InferenceGraph(method.to("cpu").eval()).eval()

    def score(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            scores, maps = graph(images.float())
        return scores.numpy(), maps.numpy()

    return score


def _with_reference(method, reference: Any, fewshot: Any, transform: ClipImageTransform, slice_axis: str | int):
    """``method`` with the memory bank of ``reference``, built and saved (or reused) exactly as
    ``medzsad predict reference=...`` does, with this detector's preprocessing."""
    from medzsad.engine.config import ConfigError, RunConfig
    from medzsad.engine.jobs import data_section, open_dataset
    from medzsad.engine.references import with_references
    from medzsad.methods.fewshot_config import FewShotConfig

    try:
        config_fewshot = fewshot if isinstance(fewshot, FewShotConfig) else FewShotConfig(**dict(fewshot or {}))
    except (TypeError, ValueError) as exc:
        raise DeployError(f"fewshot: {exc}") from None
    data = data_section(transform, slice_axis, split=config_fewshot.split)
    config = RunConfig(method=method.name, data=data, reference=str(reference), fewshot=config_fewshot)

    def open_references():
        return open_dataset(str(reference), config, method.image_size)

    try:
        return with_references(method, config, torch.device("cpu"), open_references, report=lambda _: None)
    except ConfigError as exc:
        raise DeployError(str(exc)) from None


def _is_meta_tensor(value: Any) -> bool:
    try:
        from monai.data import MetaTensor
    except ImportError:  # pragma: no cover - MONAI is a dependency
        return False
    return isinstance(value, MetaTensor)


def _spatial_dims(array: np.ndarray, meta: dict) -> int:
    """Spatial dimensions of a MetaTensor: from MONAI's ``spatial_shape`` metadata, else ``ndim``."""
    shape = meta.get("spatial_shape")
    return len(np.asarray(shape).ravel()) if shape is not None else array.ndim


def _split_channel(array: np.ndarray, meta: dict) -> tuple[np.ndarray, bool | None]:
    """``(data, channel_first)`` of a MetaTensor's array: a single channel dropped, colour moved last.

    ``channel_first`` is True for ``[C, ...]``, False for ``[..., C]`` (a colour PNG loads as
    ``[x, y, 3]``) and None without a channel.
    """
    dims = _spatial_dims(array, meta)
    if array.ndim == dims:
        return array, None
    if array.ndim != dims + 1 or (dims == 3 and 1 not in (array.shape[0], array.shape[-1])):
        raise DeployError(f"expected a MetaTensor image or one-channel volume, got shape {list(array.shape)}")
    spatial_shape = tuple(int(n) for n in np.asarray(meta.get("spatial_shape", ())).ravel())
    channel_first = tuple(array.shape[1:]) == spatial_shape or array.shape[0] == 1
    data = np.moveaxis(array, 0, -1) if channel_first else array
    return (data[..., 0] if data.shape[-1] == 1 else data), channel_first


def _as_volume_array(array: np.ndarray) -> np.ndarray:
    if array.ndim != 3:
        raise DeployError(f"a volume must be 3-D [X, Y, Z], got shape {list(array.shape)}")
    return array.astype(np.float32, copy=False)


def _like(image: Any, array: np.ndarray, add_channel: bool) -> Any:
    """``array`` as a MetaTensor carrying ``image``'s metadata (and its leading channel when it had one)."""
    from monai.data import MetaTensor

    data = torch.from_numpy(np.ascontiguousarray(array))
    if add_channel:
        data = data.unsqueeze(0)
    return MetaTensor(data, meta=dict(image.meta))  # the meta carries the input's affine


def _is_volume(path: Path) -> bool:
    """Whether ``path`` is one volume (a series folder, a NIfTI/NRRD file, a grey multi-frame DICOM), as the
    study grouper of ``predict`` and ``test`` decides it."""
    items = scan_inputs([path]).items
    return len(items) == 1 and items[0].is_volume
