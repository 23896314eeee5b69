"""Run configuration: typed dataclasses, read from YAML, overridden by dotted keys, validated up front.

Every key is checked before any work starts: an unknown key, a wrong type or an unknown method fails
with a :class:`ConfigError` that names the key (``train.epochs: expected int, got 'ten'``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from medzsad.backbone.config import BackboneConfig
from medzsad.methods.fewshot_config import FewShotConfig
from medzsad.tracking.config import TrackingConfig


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or inconsistent."""


@dataclass
class DataConfig:
    """Where the data comes from and how scans become model inputs.

    Attributes:
        train: auxiliary training data: a ``meta.json`` manifest (official format) or a folder.
        train_root: root folder the manifest's relative paths start from (default: the manifest's folder).
        test: target datasets for ``medzsad test``: manifests, image folders or scan folders.
        split: which manifest split to read ("test", as every official loader does, or "train").
        pad_to_square: pad to a square before resizing (default off = the official squashing resize).
        ct_window: CT window ``[level, width]`` in HU or a preset name (``brain``, ``lung``, ...);
            ``null`` picks the preset of each scan's BodyPartExamined (docs/data.md), else ``brain``.
        mri_percentiles: ``[low, high]`` percentiles for MRI intensity scaling.
        slice_axis: axis along which 3-D volumes are cut into 2-D slices: ``native`` (as acquired),
            ``axial``, ``coronal``, ``sagittal`` or 0/1/2.
        series: DICOM series to score, by SeriesNumber (``5``) and/or SeriesDescription pattern
            (``"*axial*"``); one value or a list; ``null``: all.
        modality: DICOM modalities to score (``CT`` or ``[CT, MR]``); ``null``: all.
        transforms: MONAI dictionary transforms (bundle style, ``_target_: CropForegroundd`` and its
            arguments; key ``image``, channel-first, physical units) run before the CLIP transform.
        cache_dir: where ``test`` and ``calibrate`` keep built samples (decoded, windowed, resized) for
            later runs over the same scans (:mod:`medzsad.data.cache`); ``null``: no cache. It holds
            patient images: keep it where the scans may be.
    """

    train: str | None = None
    train_root: str | None = None
    test: list[str] = field(default_factory=list)
    split: str = "test"
    pad_to_square: bool = False
    ct_window: list[float] | str | None = None
    mri_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    slice_axis: str | int = "native"
    series: list[int | str] | int | str | None = None
    modality: list[str] | str | None = None
    transforms: list[dict[str, Any]] = field(default_factory=list)
    cache_dir: str | None = None


@dataclass
class TrainConfig:
    """Prompt learning on auxiliary data (defaults: the official AnomalyCLIP settings).

    Attributes:
        epochs: passes over the auxiliary data.
        batch_size: images per optimiser step.
        lr: Adam learning rate.
        betas: Adam betas.
        seed: seeds prompt initialisation, data order and any sampling.
        output_dir: where ``epoch_<n>`` checkpoints and ``state.pt`` (for resuming) are written.
        resume: continue from the last complete epoch in ``output_dir`` if there is one.
        max_steps_per_epoch: cap on steps per epoch (smoke runs); ``None`` for full epochs.
        precision: "fp32", or "bf16"/"fp16" for the transformer blocks of the frozen backbone (GPU).
        num_workers: data-loading worker processes; ``None`` chooses (:func:`medzsad.engine.runtime.loader_workers`).
    """

    epochs: int = 15
    batch_size: int = 8
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    seed: int = 111
    output_dir: str = "runs/train"
    resume: bool = True
    max_steps_per_epoch: int | None = None
    precision: str = "fp32"
    num_workers: int | None = None


@dataclass
class EvalConfig:
    """Zero-shot evaluation and prediction.

    Attributes:
        batch_size: images per forward pass.
        output_dir: where tables, maps and overlays are written.
        save_maps: also write every anomaly map (``.npz``, float32, at model resolution).
        pixel_metrics: compute pixel-level metrics where masks exist.
        aupro_compat: also report the 200-threshold AUPRO of the AnomalyCLIP/FAPrompt code (labelled).
        pixel_bins: ``None`` for exact pixel metrics (every pixel score is kept: 4 bytes per pixel,
            about 1 MB per 518² map); a number of levels (e.g. 65536) for constant memory per
            category on archives that do not fit: maps quantized to that many levels over [0, 1],
            AU-PRO reported as ``[mvtec-binned<N>]`` (docs/metrics.md).
        dice_threshold: threshold on the anomaly map for Dice/IoU and the normal-image FP rate.
        precision: "fp32", or "bf16"/"fp16" for the backbone's transformer blocks (GPU); heads stay fp32.
        seed: seed of any sampling at test time (CoPS draws VAE samples).
        num_workers: data-loading worker processes (reading and resizing scans overlaps the model);
            ``None`` chooses (:func:`medzsad.engine.runtime.loader_workers`).
        compile: ``torch.compile`` the method's forward (worth it for long runs on a GPU).
        on_error: ``"skip"`` a sample that cannot be read (one line, listed in ``skipped*.csv``) or
            ``"stop"`` at the first one.
        overwrite: replace the results already in ``output_dir`` (else a folder with results is refused,
            so old and new maps never mix).
        columns: metrics in the terminal table: names or prefixes (``[image_auroc, pixel_aupro, dice]``),
            ``[all]``; ``None`` for the compact default (image and pixel AUROC/AP/F1-max, AU-PRO).
        volume_score: a volume's score from its slice scores: "max" or "topk_mean" (docs/decisions.md).
        volume_top_k: slices averaged by "topk_mean".
        lesion_thresholds: map thresholds of the lesion-level FROC points (3-D connected components).
        lesion_min_iou: IoU a predicted region needs with a lesion to detect it (0: any overlap).
    """

    batch_size: int = 8
    output_dir: str = "runs/test"
    save_maps: bool = False
    pixel_metrics: bool = True
    aupro_compat: bool = False
    pixel_bins: int | None = None
    dice_threshold: float = 0.5
    precision: str = "fp32"
    seed: int = 0
    num_workers: int | None = None
    compile: bool = False
    on_error: str = "skip"
    overwrite: bool = False
    columns: list[str] | None = None
    volume_score: str = "max"
    volume_top_k: int = 3
    lesion_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7, 0.9])
    lesion_min_iou: float = 0.1


@dataclass
class CalibrateConfig:
    """``medzsad calibrate``: thresholds from reference scans (docs/decisions.md says what each rule guarantees).

    Attributes:
        reference: the reference scans (manifest or folder); normal ones only for ``conformal``.
        rule: "conformal" (normal scans; P(flag a new normal scan) <= target_fpr), or, from labelled
            scans, "f1max", "youden" or "sensitivity".
        target_fpr: alpha, the false-alarm probability bounded by ``conformal``.
        confidence: ``null`` for the guarantee on average over reference sets; e.g. 0.9 for a guarantee of
            this reference set with that probability (a higher threshold).
        target_sensitivity: the sensitivity the "sensitivity" rule keeps on the labelled scans.
        pixel_rule: "pixel_rate" (expected false-positive pixel fraction of a normal image <= pixel_target_fpr),
            "any_region" (fraction of normal images with any false-positive region <= pixel_target_fpr) or "none".
        pixel_target_fpr: alpha of the pixel rule; ``null`` takes ``target_fpr``.
        probability: also map scores to probabilities: "none", "isotonic" or "platt" (labelled scans).
        output: where the calibration file is written.
        rescaled: ``predict`` with a calibration also writes scores and maps rescaled so that their
            thresholds sit at 0.5 (``rescaled/<id>.npz``).
    """

    reference: str | None = None
    rule: str = "conformal"
    target_fpr: float = 0.05
    confidence: float | None = None
    target_sensitivity: float = 0.95
    pixel_rule: str = "pixel_rate"
    pixel_target_fpr: float | None = None
    probability: str = "none"
    output: str = "runs/calibration.json"
    rescaled: bool = False


@dataclass
class PredictSection:
    """``medzsad predict`` options.

    Attributes:
        engine: ``"torch"`` (the method in PyTorch) or ``"onnx"`` (a file of ``medzsad export``, given as
            ``checkpoint``, run with onnxruntime on the CPU; see docs/deploy.md).
    """

    engine: str = "torch"

    def __post_init__(self) -> None:
        if self.engine not in ("torch", "onnx"):
            raise ValueError(f"engine: expected torch or onnx, got {self.engine!r}")


@dataclass
class RunConfig:
    """Everything a ``medzsad`` command needs.

    Attributes:
        method: registered method name (``medzsad.methods.METHODS``).
        method_config: the method's options (validated against its config dataclass).
        checkpoint: a medzsad checkpoint (``.safetensors``/``.json``) or an official ``.pth``.
        backbone: which CLIP to build.
        data, train, eval, predict: the sections above.
        tracking: MLflow settings (:class:`medzsad.tracking.config.TrackingConfig`, a plain settings
            dataclass: composing it here imports no MLflow).
        device: "auto", "cpu", "cuda", "cuda:1"...
        calibrate: how ``medzsad calibrate`` chooses thresholds.
        calibration: a calibration file (``medzsad calibrate``) whose thresholds ``test`` and ``predict`` use.
        reference: few-shot normal references (manifest, folder, DICOM series, or a saved bank
            ``.safetensors``); ``None`` is zero-shot. ``fewshot`` holds how they are used (docs/fewshot.md).
    """

    method: str = "anomalyclip"
    method_config: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictSection = field(default_factory=PredictSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    device: str = "auto"
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    calibration: str | None = None
    reference: str | None = None
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values: paths as strings, tuples as lists (``tracking`` holds both)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value) if isinstance(value, Path) else value


# -- reading and validating ------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if tp is Any:
        return value
    if is_dataclass(tp):
        return from_mapping(tp, value, key)
    if origin in (list, Sequence):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp in (str, float, bool, int) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_mapping(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known keys here: {', '.join(sorted(known))})")
    values = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        values[name] = _coerce(value, hints[name], key)
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:  # a dataclass's own __post_init__ checks
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> ``(["train", "epochs"], 3)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.subkey=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"{source}: config file not found")
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (optional), apply ``key=value`` overrides and validate everything.

    Also checks that the method exists and that ``method_config`` keys and types fit that method.
    """
    data: dict[str, Any] = read_yaml(path) if path else {}
    _expand_presets(data)
    for text in overrides:
        apply_override(data, *parse_override(text))
        _expand_presets(data)  # here, so that keys given after a preset win
    config = from_mapping(RunConfig, data)
    validate_method_config(config)
    from medzsad.engine.preflight import check_ranges

    check_ranges(config)
    return config


def _expand_presets(data: dict[str, Any]) -> None:
    from medzsad.engine.presets import PresetError, expand_presets

    try:
        expand_presets(data)
    except PresetError as exc:
        raise ConfigError(str(exc)) from None


def validate_method_config(config: RunConfig) -> None:
    # Imported here, not at the top: the methods load torch, and the dataclass checks above must answer
    # a mistyped key at once (scripts/bench_startup.py).
    from medzsad.methods.registry import method_class

    try:
        cls = method_class(config.method)
    except ValueError as exc:
        raise ConfigError(f"method: {exc}") from None
    from_mapping(cls.config_class, config.method_config, "method_config")
    for section, value in (("train.precision", config.train.precision), ("eval.precision", config.eval.precision)):
        if value not in {"fp32", "bf16", "fp16"}:
            raise ConfigError(f"{section}: expected fp32, bf16 or fp16, got {value!r}")
    bins = config.eval.pixel_bins
    if bins is not None and bins < 2:
        raise ConfigError(f"eval.pixel_bins: expected at least 2 levels, or null for exact metrics; got {bins}")
    if bins is not None and config.eval.aupro_compat:
        raise ConfigError("eval.pixel_bins: the compatibility AUPRO (eval.aupro_compat) needs exact pixel scores")
    _validate_columns(config.eval.columns)
    validate_decision_keys(config)
    workers_of = {"train.num_workers": config.train.num_workers, "eval.num_workers": config.eval.num_workers}
    for section, workers in workers_of.items():
        if workers is not None and workers < 0:
            raise ConfigError(f"{section}: expected a number of processes >= 0 or null (automatic), got {workers}")


_METRIC_PREFIXES = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max",
                    "pixel_aupro", "dice", "iou", "normal_fp_pixel_rate", "normal_fp_image_rate", "all")  # fmt: skip


def _validate_columns(columns: list[str] | None) -> None:
    for column in columns or ():
        if not any(column.startswith(prefix) for prefix in _METRIC_PREFIXES):
            raise ConfigError(f"eval.columns: unknown metric {column!r}; known: {', '.join(_METRIC_PREFIXES)}")


def validate_decision_keys(config: RunConfig) -> None:
    """The ``calibrate.*`` choices and the volume/lesion keys of ``eval``, each error naming its key."""
    section = config.calibrate
    choices = {
        "calibrate.rule": (section.rule, ("conformal", "f1max", "youden", "sensitivity")),
        "calibrate.pixel_rule": (section.pixel_rule, ("pixel_rate", "any_region", "none")),
        "calibrate.probability": (section.probability, ("none", "isotonic", "platt")),
        "eval.volume_score": (config.eval.volume_score, ("max", "topk_mean")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
    rates = {"calibrate.target_fpr": section.target_fpr, "calibrate.pixel_target_fpr": section.pixel_target_fpr}
    rates |= {"calibrate.confidence": section.confidence}
    for key, value in rates.items():
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"{key}: expected a number between 0 and 1 (exclusive), got {value}")
    if not 0 < section.target_sensitivity <= 1:
        raise ConfigError(
            f"calibrate.target_sensitivity: expected a number in (0, 1], got {section.target_sensitivity}"
        )
    if not 0 <= config.eval.lesion_min_iou <= 1:
        raise ConfigError(f"eval.lesion_min_iou: expected a number in [0, 1], got {config.eval.lesion_min_iou}")
    if config.eval.volume_top_k < 1:
        raise ConfigError(f"eval.volume_top_k: expected at least 1 slice, got {config.eval.volume_top_k}")


def method_config_for(config: RunConfig):
    """The validated method config dataclass of ``config``."""
    from medzsad.methods.registry import method_class  # loads torch; see validate_method_config

    cls = method_class(config.method)
    return from_mapping(cls.config_class, config.method_config, "method_config")
