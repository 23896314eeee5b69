"""``medzsad calibrate`` and what ``test`` and ``predict`` do with its file: thresholds become decisions.

The calibration file is a small versioned JSON (:class:`Calibration`): the method, a digest of the model
that produced the scores (:func:`model_digest`), a digest and counts of the reference set (over its
pseudonymous sample ids), the rule, alpha and the thresholds. It holds no paths and no ids, so it can be
logged to MLflow and shared. A file made for another model is refused in one line
(:func:`check_calibration`): its thresholds mean nothing for other scores.

The evaluation loop hands each batch to one consumer (:class:`BatchConsumer`): :class:`VolumeConsumer`
rebuilds volumes for lesion-level results, :class:`ReferenceConsumer` collects the normal maps' statistics
a pixel threshold needs. What each rule guarantees is in docs/decisions.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medzsad.data.records import Batch
from medzsad.engine.config import CalibrateConfig, ConfigError, DataConfig, EvalConfig, RunConfig
from medzsad.methods.base import ZsadMethod
from medzsad.metrics import calibration as rules
from medzsad.metrics.results import MetricSet
from medzsad.metrics.volumes import VolumeCollector, VolumeRecord, VolumeReport, reduce_slice_scores, volume_report
from medzsad.utils.files import atomic_write_bytes, atomic_write_text
from medzsad.utils.tables import write_csv

FORMAT = "medzsad-calibration"
FORMAT_VERSION = 1

#: ``(batch, scores [B], maps [B, S, S])`` -> None; called once per batch by the evaluation loop.
BatchConsumer = Callable[[Batch, np.ndarray, np.ndarray], None]


class CalibrationError(ConfigError):
    """A calibration file cannot be used (unreadable, another format version, made for another model)."""


# -- digests -----------------------------------------------------------------------------------------


def model_digest(method: ZsadMethod) -> str:
    """SHA-256 of what decides the scores: method name and resolved config, backbone identity and every
    prompt tensor (name, dtype, shape, bytes), and for a few-shot method its fusion settings and every
    bank tensor (a zero-shot calibration means nothing for fused scores, nor one made with other
    references). Equal for the same checkpoint loaded twice, whatever its file format; different after
    any training step or test-time option change (``sigma``...)."""
    digest = hashlib.sha256()
    header = {"method": method.name, "config": method.config.to_dict(), "backbone": method.backbone.identity()}
    fewshot = getattr(method, "fewshot", None)
    if fewshot is not None:
        settings = dataclasses.asdict(fewshot)
        header["fewshot"] = {k: v for k, v in settings.items() if k not in ("bank_dir", "block_elements")}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    tensors = sorted(method.prompt.state_dict().items())
    bank = getattr(method, "bank", None)
    if bank is not None:
        tensors += [(f"bank.{layer}", rows) for layer, rows in sorted(bank.features.items())]
    for name, tensor in tensors:
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def preprocessing(data: DataConfig) -> dict[str, Any]:
    """The data settings that change scores without changing the model (CT window: ``[level, width]``, a
    preset name or null for the preset by body part; MRI percentiles, padding, slicing axis): a
    calibration holds for the settings it was made with."""
    return {
        "pad_to_square": data.pad_to_square,
        "ct_window": [float(v) for v in data.ct_window] if isinstance(data.ct_window, list) else data.ct_window,
        "mri_percentiles": [float(v) for v in data.mri_percentiles],
        "slice_axis": data.slice_axis,
    }


def reference_digest(sample_ids: Sequence[str]) -> str:
    """SHA-256 of the sorted pseudonymous sample ids: names the reference set without listing it."""
    return hashlib.sha256("\n".join(sorted(sample_ids)).encode()).hexdigest()


# -- the file ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """A threshold (``score >= value`` is anomalous) and where it comes from."""

    value: float
    rule: str
    n: int
    alpha: float | None = None
    confidence: float | None = None
    target_sensitivity: float | None = None

    def origin(self) -> str:
        """``"conformal, alpha=0.05, n=200"`` (``"fixed, not calibrated"`` for a default): what a reviewer
        reads beside a decision."""
        if self.n == 0:  # a default, not fitted on any scan: say so instead of "n=0"
            return f"{self.rule}, not calibrated"
        parts = [self.rule]
        for name in ("alpha", "confidence", "target_sensitivity"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name):g}")
        return ", ".join([*parts, f"n={self.n}"])

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Threshold:
        return cls(**dict(data))


FIXED_IMAGE = Threshold(0.5, "fixed", 0)


@dataclass(frozen=True)
class Calibration:
    """What ``medzsad calibrate`` writes (see the module docstring)."""

    method: str
    model_digest: str
    reference_digest: str
    reference_counts: dict[str, int]
    image: Threshold
    pixel: Threshold | None = None
    volume: Threshold | None = None
    volume_score: dict[str, Any] = field(default_factory=dict)
    probability: rules.ProbabilityModel | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    medzsad_version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "medzsad_version": self.medzsad_version,
            "method": self.method,
            "model_digest": self.model_digest,
            "preprocessing": dict(self.preprocessing),
            "reference": {"digest": self.reference_digest, **self.reference_counts},
            "image": self.image.to_json(),
            "pixel": self.pixel.to_json() if self.pixel else None,
            "volume": {**self.volume.to_json(), **self.volume_score} if self.volume else None,
            "probability": self.probability.to_json() if self.probability else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calibration:
        reference = dict(data["reference"])
        volume = dict(data["volume"]) if data.get("volume") else None
        volume_score = {k: volume.pop(k) for k in ("score", "top_k") if volume and k in volume}
        return cls(
            method=str(data["method"]),
            model_digest=str(data["model_digest"]),
            reference_digest=str(reference.pop("digest")),
            reference_counts={k: int(v) for k, v in reference.items()},
            image=Threshold.from_json(data["image"]),
            pixel=Threshold.from_json(data["pixel"]) if data.get("pixel") else None,
            volume=Threshold.from_json(volume) if volume else None,
            volume_score=volume_score,
            probability=rules.ProbabilityModel.from_json(data["probability"]) if data.get("probability") else None,
            preprocessing=dict(data.get("preprocessing") or {}),
            medzsad_version=str(data.get("medzsad_version", "")),
        )

    def params(self) -> dict[str, Any]:
        """MLflow params (``eval.decision.*``, allow-listed under ``eval.*``): thresholds and their origin."""
        out: dict[str, Any] = {"eval.decision.reference_count": self.reference_counts.get("samples", 0)}
        for level, threshold in (("image", self.image), ("pixel", self.pixel), ("volume", self.volume)):
            if threshold is not None:
                out[f"eval.decision.{level}_threshold"] = threshold.value
                out[f"eval.decision.{level}_origin"] = threshold.origin()
        return out


def write_calibration(calibration: Calibration, path: str | Path) -> Path:
    """Write the calibration file atomically (a reader never sees half a file)."""
    return atomic_write_text(path, json.dumps(calibration.to_json(), indent=2, sort_keys=True) + "\n")


def read_calibration(path: str | Path) -> Calibration:
    """Read a calibration file; any problem is one :class:`CalibrationError` line naming the file."""
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"calibration: {source} not found (write one with `medzsad calibrate`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"calibration: {source} is not a calibration file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationError(f"calibration: {source} is not a medzsad calibration file")
    if data.get("version") != FORMAT_VERSION:
        raise CalibrationError(
            f"calibration: {source} has format version {data.get('version')!r}; this medzsad reads {FORMAT_VERSION}"
        )
    try:
        return Calibration.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(
            f"calibration: {source} is incomplete or damaged ({type(exc).__name__}: {exc})"
        ) from None


def check_calibration(
    calibration: Calibration, method: ZsadMethod, source: str | Path, settings: Mapping[str, Any] | None = None
) -> None:
    """Refuse a calibration made for another method or another model (checkpoint, backbone, options), or,
    given this run's :func:`preprocessing` ``settings``, with other data settings."""
    check_made_for(calibration, method.name, model_digest(method), source, settings)


def check_made_for(
    calibration: Calibration, method: str, digest: str, source: str | Path, settings: Mapping[str, Any] | None = None
) -> None:
    """:func:`check_calibration` against a method name and a :func:`model_digest` (an exported file records
    both instead of holding the model)."""
    if calibration.method != method:
        raise CalibrationError(f"calibration: {source} was made for method {calibration.method}, not {method}")
    if calibration.model_digest != digest:
        raise CalibrationError(
            f"calibration: {source} was made for another checkpoint (model digest {calibration.model_digest[:12]}, "
            f"this model {digest[:12] or 'unknown'}); recalibrate with `medzsad calibrate`"
        )
    for key, value in (settings or {}).items():
        made = calibration.preprocessing.get(key, value)
        if made != value:
            raise CalibrationError(f"calibration: {source} was made with data.{key}={made}, this run uses {value}")


def load_for(config: RunConfig, method: ZsadMethod) -> Calibration | None:
    """The calibration file of ``config.calibration``, checked against ``method`` and the data settings;
    None when the key is not set."""
    if not config.calibration:
        return None
    calibration = read_calibration(config.calibration)
    check_calibration(calibration, method, config.calibration, preprocessing(config.data))
    return calibration


# -- consumers of the evaluation loop --------------------------------------------------------------


def _masks(batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return batch.label.cpu().numpy(), batch.mask.cpu().numpy() > 0.5, batch.has_mask.cpu().numpy().astype(bool)


class VolumeConsumer:
    """Feeds volume slices to a :class:`~medzsad.metrics.volumes.VolumeCollector` (lesion-level results)."""

    def __init__(self, collector: VolumeCollector) -> None:
        self.collector = collector

    def __call__(self, batch: Batch, scores: np.ndarray, maps: np.ndarray) -> None:
        if all(v is None for v in batch.volume_id):
            return
        labels, masks, has_mask = _masks(batch)
        self.collector.update(batch.volume_id, batch.slice_index, scores, labels, maps, masks, has_mask)


class ReferenceConsumer:
    """Statistics of the normal reference maps: pixel-rate histogram and per-image maxima."""

    def __init__(self) -> None:
        self.histogram = rules.PixelRateHistogram()
        self.maxima: list[float] = []

    def __call__(self, batch: Batch, scores: np.ndarray, maps: np.ndarray) -> None:
        labels, masks, has_mask = _masks(batch)
        # A normal reference image: labelled normal, or of unknown label with an empty mask.
        normal = (labels == 0) | ((labels < 0) & has_mask & ~masks.reshape(len(labels), -1).any(axis=1))
        if normal.any():
            self.histogram.update(maps[normal])
            self.maxima.extend(float(m) for m in maps[normal].reshape(int(normal.sum()), -1).max(axis=1))


class Consumers:
    """Several consumers behind the one call of the loop."""

    def __init__(self, *consumers: BatchConsumer) -> None:
        self.consumers = consumers

    def __call__(self, batch: Batch, scores: np.ndarray, maps: np.ndarray) -> None:
        for consumer in self.consumers:
            consumer(batch, scores, maps)


# -- choosing thresholds --------------------------------------------------------------------------------


def volume_scores(samples: Sequence[Any], eval_config: EvalConfig) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(volume ids, scores, labels)`` of the volumes among evaluated samples (``SampleResult``s): a
    volume's score reduces its slice scores (``eval.volume_score``), its label is 1 if any slice is 1,
    -1 if any slice is unknown and none is 1."""
    slices: dict[str, list[float]] = {}
    labels: dict[str, int] = {}
    for sample in samples:
        if sample.volume_id is None:
            continue
        slices.setdefault(sample.volume_id, []).append(sample.score)
        before = labels.get(sample.volume_id, 0)
        labels[sample.volume_id] = 1 if 1 in (before, sample.label) else min(before, sample.label)
    ids = list(slices)
    scores = [reduce_slice_scores(slices[i], eval_config.volume_score, eval_config.volume_top_k) for i in ids]
    return ids, np.asarray(scores, dtype=np.float64), np.asarray([labels[i] for i in ids])


def choose_threshold(scores: np.ndarray, labels: np.ndarray, section: CalibrateConfig, what: str) -> Threshold:
    """The ``calibrate.rule`` threshold of ``scores`` (labels 0/1; -1 unknown is left out)."""
    known = labels >= 0
    scores, labels = scores[known], labels[known].astype(bool)
    if section.rule == "conformal" and labels.all():
        hint = "" if what == "volumes" else (
            ": images of a folder without a manifest have no label; put the normal scans in <folder>/normal/ "
            "and run `medzsad prepare folder <folder>`"
        )  # fmt: skip
        raise CalibrationError(f"calibrate.reference: no {what} known to be normal{hint}")
    try:
        if section.rule == "conformal":
            value = rules.conformal_threshold(scores[~labels], section.target_fpr, section.confidence)
            return Threshold(value, "conformal", int((~labels).sum()), section.target_fpr, section.confidence)
        if section.rule == "sensitivity":
            value = rules.sensitivity_threshold(scores, labels, section.target_sensitivity)
            return Threshold(value, "sensitivity", int(labels.size), target_sensitivity=section.target_sensitivity)
        pick = rules.f1max_threshold if section.rule == "f1max" else rules.youden_threshold
        return Threshold(pick(scores, labels), section.rule, int(labels.size))
    except ValueError as exc:
        raise CalibrationError(f"calibrate.rule={section.rule} ({what}): {exc}") from None


def pixel_threshold(reference: ReferenceConsumer, section: CalibrateConfig) -> Threshold | None:
    """The ``calibrate.pixel_rule`` threshold from the normal reference maps (None for "none")."""
    alpha = section.pixel_target_fpr if section.pixel_target_fpr is not None else section.target_fpr
    n = reference.histogram.images
    try:
        if section.pixel_rule == "pixel_rate":
            return Threshold(rules.pixel_rate_threshold(reference.histogram, alpha), "pixel_rate", n, alpha)
        if section.pixel_rule == "any_region":
            return Threshold(rules.conformal_threshold(reference.maxima, alpha), "any_region", n, alpha)
    except ValueError as exc:
        raise CalibrationError(f"calibrate.pixel_rule={section.pixel_rule}: {exc}") from None
    return None


def build_calibration(
    method: ZsadMethod, samples: Sequence[Any], reference: ReferenceConsumer, config: RunConfig
) -> tuple[Calibration, list[str]]:
    """The calibration from an evaluated reference set (``SampleResult``s and the normal maps' statistics),
    and notes for the user (e.g. too few normal volumes for a volume threshold)."""
    import medzsad

    section, eval_config = config.calibrate, config.eval
    scores = np.asarray([s.score for s in samples], dtype=np.float64)
    labels = np.asarray([s.label for s in samples])
    image = choose_threshold(scores, labels, section, "images")
    notes: list[str] = []
    volume = None
    ids, v_scores, v_labels = volume_scores(samples, eval_config)
    if ids:
        try:
            volume = choose_threshold(v_scores, v_labels, section, "volumes")
        except CalibrationError as exc:
            notes.append(f"no volume threshold: {exc}")
    probability = None
    if section.probability != "none":
        try:
            known = labels >= 0
            probability = rules.fit_probability(scores[known], labels[known], section.probability)
        except ValueError as exc:
            raise CalibrationError(f"calibrate.probability={section.probability}: {exc}") from None
    counts = {
        "samples": len(samples),
        "normal": int(np.sum(labels == 0)),
        "anomalous": int(np.sum(labels == 1)),
        "volumes": len(ids),
    }
    calibration = Calibration(
        method=method.name,
        model_digest=model_digest(method),
        reference_digest=reference_digest([s.sample_id for s in samples]),
        reference_counts=counts,
        image=image,
        pixel=pixel_threshold(reference, section),
        volume=volume,
        volume_score={"score": eval_config.volume_score, "top_k": eval_config.volume_top_k} if volume else {},
        probability=probability,
        preprocessing=preprocessing(config.data),
        medzsad_version=medzsad.__version__,
    )
    return calibration, notes


# -- decisions in `test` ----------------------------------------------------------------------------------


@dataclass
class DecisionReport:
    """What the thresholds decide on an evaluated dataset, and the volume-/lesion-level results.

    ``image`` and ``pixel`` are the thresholds in force with their origin (the calibration file, or the
    fixed defaults); ``at_threshold`` holds the realised rates of the image (slice) decisions.
    """

    image: Threshold
    pixel: Threshold
    volume: Threshold | None
    at_threshold: MetricSet
    volumes: VolumeReport | None = None
    volume_rows: list[list[Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "thresholds": {
                level: {**t.to_json(), "origin": t.origin()}
                for level, t in (("image", self.image), ("pixel", self.pixel), ("volume", self.volume))
                if t is not None
            },
            "image_level_at_threshold": self.at_threshold.to_dict(),
        }
        if self.volumes is not None:
            out.update(self.volumes.to_dict())
        return out


def decision_rates(scores: np.ndarray, labels: np.ndarray, threshold: float, level: str) -> MetricSet:
    """``<level>_false_alarm_rate`` (normal flagged) and ``<level>_sensitivity`` at ``score >= threshold``."""
    flagged = scores >= threshold
    values, undefined = {}, {}
    for name, rows, why in (("false_alarm_rate", labels == 0, "normal"), ("sensitivity", labels == 1, "anomalous")):
        key = f"{level}_{name}"
        if rows.any():
            values[key] = float(np.mean(flagged[rows]))
        else:
            undefined[key] = f"no {why} {level}s"
    return MetricSet(values, undefined, {f"{level}s": int(np.sum(labels >= 0))})


def decide(
    samples: Sequence[Any],
    calibration: Calibration | None,
    eval_config: EvalConfig,
    collector: VolumeCollector,
    lesions_possible: bool = True,
) -> DecisionReport:
    """The :class:`DecisionReport` of an evaluated dataset (``SampleResult``s, the loop's collector; without
    ``lesions_possible`` the lesion table is left undefined with the reason)."""
    image = calibration.image if calibration else FIXED_IMAGE
    pixel = (
        calibration.pixel
        if calibration and calibration.pixel
        else Threshold(eval_config.dice_threshold, "eval.dice_threshold", 0)
    )
    volume = calibration.volume if calibration else None
    scores = np.asarray([s.score for s in samples], dtype=np.float64)
    labels = np.asarray([s.label for s in samples])
    at_threshold = decision_rates(scores, labels, image.value, "image")
    report = DecisionReport(image, pixel, volume, at_threshold)
    ids, v_scores, v_labels = volume_scores(samples, eval_config)
    if not ids:
        return report
    if volume is not None:
        rates = decision_rates(v_scores, v_labels, volume.value, "volume")
        report.at_threshold = MetricSet(
            {**at_threshold.values, **rates.values}, {**at_threshold.undefined, **rates.undefined}
        )
    if not lesions_possible:
        collector.broken = "lesion-level results need one process (torchrun splits volumes)"
    report.volumes, report.volume_rows = _volume_level(ids, v_scores, v_labels, collector, pixel, volume, eval_config)
    return report


def _volume_level(
    ids: list[str],
    scores: np.ndarray,
    labels: np.ndarray,
    collector: VolumeCollector,
    pixel: Threshold,
    volume: Threshold | None,
    eval_config: EvalConfig,
) -> tuple[VolumeReport, list[list[Any]]]:
    """The volume-/lesion-level report and one row per volume (lesion counts at the pixel threshold).

    A volume's label is its slices' (1 if any is 1, -1 if unknown), or 1 when its masks hold a lesion."""
    records = {r.volume_id: r for r in collector.finish()}
    ordered = [records.get(i) or VolumeRecord(i) for i in ids]
    for record, label in zip(ordered, labels):
        record.label = max(int(label), record.label) if record.lesions is not None else int(label)
    thresholds = collector.thresholds
    report = volume_report(ordered, scores, thresholds, pixel.value, eval_config.volume_score, collector.broken)
    rows = []
    for record, score in zip(ordered, report.scores):
        decision = "" if volume is None else int(score >= volume.value)
        counts = record.lesions[thresholds.index(pixel.value)] if record.lesions else None
        lesion_cells = [counts.lesions, counts.detected, counts.false_positives] if counts else [None] * 3
        rows.append(
            [
                record.volume_id,
                len(record.slice_scores) or None,
                score,
                record.label,
                decision,
                *lesion_cells,
                record.dice,
            ]
        )
    return report, rows


def with_pixel_threshold(eval_config: EvalConfig, calibration: Calibration | None) -> EvalConfig:
    """``eval`` with the calibrated pixel threshold as ``dice_threshold``, so the slice-level Dice/IoU and
    normal false-positive rates are those of the threshold in force."""
    if calibration is None or calibration.pixel is None:
        return eval_config
    return dataclasses.replace(eval_config, dice_threshold=calibration.pixel.value)


def collector_for(eval_config: EvalConfig, calibration: Calibration | None) -> VolumeCollector:
    """The lesion collector for a `test` run: FROC thresholds plus the pixel threshold in force."""
    dice = calibration.pixel.value if calibration and calibration.pixel else eval_config.dice_threshold
    return VolumeCollector(eval_config.lesion_thresholds, dice, min_iou=eval_config.lesion_min_iou)


def write_decisions(output_dir: Path, name: str, report: DecisionReport) -> list[Path]:
    """``decisions_<dataset>.json`` (thresholds, origins, each level's table) and, for volumes,
    ``volumes_<dataset>.csv`` (one row per pseudonymous volume id at the pixel threshold in force)."""
    paths = [
        atomic_write_text(output_dir / f"decisions_{name}.json", json.dumps(report.to_dict(), indent=2, default=float))
    ]
    if report.volume_rows:
        header = [
            "volume_id",
            "slices",
            "volume_score",
            "label",
            "decision",
            "lesions",
            "detected",
            "fp_regions",
            "dice",
        ]
        paths.append(write_csv(output_dir / f"volumes_{name}.csv", header, report.volume_rows))
    return paths


def format_decisions(report: DecisionReport) -> str:
    """Terminal text: the thresholds with their origin, realised rates, volume- and lesion-level tables."""
    lines = [f"image threshold {report.image.value:.6g} ({report.image.origin()}); pixel threshold "
             f"{report.pixel.value:.6g} ({report.pixel.origin()})"]  # fmt: skip
    if report.volume is not None:
        lines.append(f"volume threshold {report.volume.value:.6g} ({report.volume.origin()})")
    for key, value in report.at_threshold.values.items():
        lines.append(f"  {key} at threshold: {100 * value:.1f}%")
    if report.volumes is not None:
        lines.append(report.volumes.format_tables())
    return "\n".join(lines)


def mlflow_metrics(report: DecisionReport) -> dict[str, float]:
    """Metric names carry their level: ``image_false_alarm_rate``, ``volume_auroc``, ``lesion_sensitivity@0.5``."""
    out = dict(report.at_threshold.values)
    if report.volumes is not None:
        out.update(report.volumes.volume_level.values)
        out.update(report.volumes.lesion_level.values)
    return {k: v for k, v in out.items() if math.isfinite(v)}


# -- reporting ---------------------------------------------------------------------------------------------


def format_calibration(calibration: Calibration, path: Path, notes: Sequence[str] = ()) -> str:
    """What ``medzsad calibrate`` prints: each threshold with its origin, the file written."""
    counts = calibration.reference_counts
    lines = [
        f"reference: {counts.get('samples', 0)} images ({counts.get('normal', 0)} normal, "
        f"{counts.get('anomalous', 0)} anomalous), {counts.get('volumes', 0)} volumes",
        f"image threshold {calibration.image.value:.6g} ({calibration.image.origin()})",
    ]
    if calibration.pixel is not None:
        lines.append(f"pixel threshold {calibration.pixel.value:.6g} ({calibration.pixel.origin()})")
    if calibration.volume is not None:
        lines.append(f"volume threshold {calibration.volume.value:.6g} ({calibration.volume.origin()})")
    if calibration.probability is not None:
        lines.append(f"probabilities: {calibration.probability.kind}")
    lines += list(notes)
    lines.append(f"wrote {path} (for model {calibration.model_digest[:12]}; use it with calibration={path})")
    return "\n".join(lines)


def log_calibration(run: Any, calibration: Calibration) -> None:
    """Log a calibration to a tracked run: params (thresholds, origin), digests as tags, the file itself."""
    run.log_params(calibration.params())
    run.set_tags(
        {"calibration_model_digest": calibration.model_digest, "calibration_reference": calibration.reference_digest}
    )
    run.log_dict(calibration.to_json(), "calibration/calibration.json")


def log_decisions(run: Any, report: DecisionReport | None, calibration: Calibration | None) -> None:
    """Log a `test` run's decisions: thresholds in force and their origin (params and tags), the level-named
    metrics, the calibration file used."""
    if report is None:
        return
    params = {"eval.decision.image_threshold": report.image.value, "eval.decision.image_origin": report.image.origin()}
    params |= {"eval.decision.pixel_threshold": report.pixel.value, "eval.decision.pixel_origin": report.pixel.origin()}
    if calibration is not None:
        params |= calibration.params()
    run.log_params(params)
    tags = {"decision_rule": report.image.rule, "decision_alpha": report.image.alpha, "decision_n": report.image.n}
    if report.volumes is not None:
        tags |= {"image_metrics_level": "slice", "volume_score": report.volumes.reduction}
    run.set_tags({k: "" if v is None else v for k, v in tags.items()})
    run.log_metrics(mlflow_metrics(report))
    if calibration is not None:
        run.log_dict(calibration.to_json(), "calibration/calibration.json")
    run.log_dict(report.to_dict(), "eval/decisions.json")


# -- decisions in `predict` ------------------------------------------------------------------------------


class DecisionWriter:
    """What ``predict`` decides with a calibration: ``decisions.csv`` (one row per image and per volume),
    binary masks (``masks/<id>.png`` for images; ``masks/<id>_mask.nii.gz`` on the scan's grid for volumes,
    plus ``masks/<id>_seg.dcm``, a DICOM SEG, for DICOM series) and, with ``rescaled``,
    ``rescaled/<id>.npz``: score and map mapped so their thresholds sit at 0.5.

    Masks need a pixel threshold; without one in the calibration only decisions are written.
    """

    HEADER = ("sample_id", "kind", "score", "threshold", "decision", "probability", "rescaled_score")

    def __init__(self, calibration: Calibration, output_dir: Path, rescaled: bool = False) -> None:
        self.calibration = calibration
        self.output_dir = Path(output_dir)
        self.rescaled = rescaled
        self.rows: list[list[Any]] = []

    def _row(self, sample_id: str, kind: str, score: float, threshold: Threshold | None) -> None:
        decision = None if threshold is None else int(score >= threshold.value)
        probability = float(self.calibration.probability([score])[0]) if self.calibration.probability else None
        rescaled = float(rules.rescale_to_half([score], threshold.value)[0]) if threshold and self.rescaled else None
        self.rows.append(
            [sample_id, kind, score, None if threshold is None else threshold.value, decision, probability, rescaled]
        )

    def _pixel_mask(self, anomaly_map: np.ndarray) -> np.ndarray | None:
        pixel = self.calibration.pixel
        return None if pixel is None else np.asarray(anomaly_map) >= pixel.value

    def image(self, sample_id: str, score: float, anomaly_map: np.ndarray) -> None:
        """One 2-D image: its decision row, its mask PNG (0/255) and its rescaled outputs."""
        import io

        from PIL import Image

        self._row(sample_id, "image", score, self.calibration.image)
        mask = self._pixel_mask(anomaly_map)
        if mask is not None:
            buffer = io.BytesIO()
            Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
            atomic_write_bytes(self.output_dir / "masks" / f"{sample_id}.png", buffer.getvalue())
        self._write_rescaled(sample_id, score, anomaly_map, self.calibration.image)

    def volume(self, volume_id: str, volume: Any, map_volume: np.ndarray, slice_scores: Sequence[float]) -> None:
        """One scan: the volume decision (volume threshold, else none), NIfTI mask and, for DICOM, a SEG."""
        from medzsad.data.volumes import write_dicom_seg, write_nifti

        spec = self.calibration.volume_score or {"score": "max", "top_k": 3}
        score = reduce_slice_scores(slice_scores, spec.get("score", "max"), int(spec.get("top_k", 3)))
        self._row(volume_id, "volume", score, self.calibration.volume)
        mask = self._pixel_mask(map_volume)
        if mask is not None:
            write_nifti(
                mask.astype(np.uint8), volume, self.output_dir / "masks" / f"{volume_id}_mask.nii.gz", dtype=np.uint8
            )
            if getattr(volume, "source_files", None):
                write_dicom_seg(mask, volume, self.output_dir / "masks" / f"{volume_id}_seg.dcm")
        self._write_rescaled(volume_id, score, map_volume, self.calibration.volume)

    def _write_rescaled(
        self, sample_id: str, score: float, anomaly_map: np.ndarray, threshold: Threshold | None
    ) -> None:
        if not self.rescaled:
            return
        import io

        arrays = {}
        if threshold is not None:
            arrays["rescaled_score"] = np.float32(rules.rescale_to_half([score], threshold.value)[0])
        if self.calibration.pixel is not None:
            arrays["rescaled_map"] = rules.rescale_to_half(anomaly_map, self.calibration.pixel.value)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(self.output_dir / "rescaled" / f"{sample_id}.npz", buffer.getvalue())

    def finish(self, rows: Sequence[Sequence[Any]] | None = None) -> Path:
        """Write ``decisions.csv`` from ``rows`` (every process's, under torchrun) or this writer's own."""
        return write_csv(self.output_dir / "decisions.csv", self.HEADER, self.rows if rows is None else rows)
