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

from medzsad.backbone.clip import BackboneConfig
from medzsad.methods.registry import method_class


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
        ct_window: CT window ``[level, width]`` in HU applied to CT scans.
        mri_percentiles: ``[low, high]`` percentiles for MRI intensity scaling.
        slice_axis: axis along which 3-D volumes are cut into 2-D slices.
    """

    train: str | None = None
    train_root: str | None = None
    test: list[str] = field(default_factory=list)
    split: str = "test"
    pad_to_square: bool = False
    ct_window: list[float] = field(default_factory=lambda: [40.0, 80.0])
    mri_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    slice_axis: int = 2


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


@dataclass
class TrackingSection:
    """MLflow tracking (see ``medzsad.tracking``).

    Attributes:
        enabled: log runs to MLflow.
        tracking_uri: MLflow tracking URI; ``None`` means ``sqlite:///<cwd>/mlflow.db``.
        artifact_location: artifact folder for new experiments; ``None`` means ``<cwd>/mlartifacts``.
        system_metrics: log CPU/GPU/memory usage.
        deidentified: the user asserts the data is de-identified (allows overlays of scans flagged
            with burned-in text).
        review_panel_size: examples per dataset in the review panel.
    """

    enabled: bool = True
    tracking_uri: str | None = None
    artifact_location: str | None = None
    system_metrics: bool = False
    deidentified: bool = False
    review_panel_size: int = 8


@dataclass
class RunConfig:
    """Everything a ``medzsad`` command needs.

    Attributes:
        method: registered method name (``medzsad.methods.METHODS``).
        method_config: the method's options (validated against its config dataclass).
        checkpoint: a medzsad checkpoint (``.safetensors``/``.json``) or an official ``.pth``.
        backbone: which CLIP to build.
        data, train, eval, tracking: the sections above.
        device: "auto", "cpu", "cuda", "cuda:1"...
    """

    method: str = "anomalyclip"
    method_config: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    for text in overrides:
        apply_override(data, *parse_override(text))
    config = from_mapping(RunConfig, data)
    validate_method_config(config)
    from medzsad.engine.preflight import check_ranges

    check_ranges(config)
    return config


def validate_method_config(config: RunConfig) -> None:
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
    workers_of = {"train.num_workers": config.train.num_workers, "eval.num_workers": config.eval.num_workers}
    for section, workers in workers_of.items():
        if workers is not None and workers < 0:
            raise ConfigError(f"{section}: expected a number of processes >= 0 or null (automatic), got {workers}")


def method_config_for(config: RunConfig):
    """The validated method config dataclass of ``config``."""
    cls = method_class(config.method)
    return from_mapping(cls.config_class, config.method_config, "method_config")
