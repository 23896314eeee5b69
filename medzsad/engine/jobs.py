"""The toolkit's main jobs as library calls: predict, test, train/fine-tune, benchmark tables.

The CLI is a thin layer over these functions; a Python user calls the same names with a
:class:`~medzsad.engine.config.RunConfig`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import medzsad
from medzsad.data.cache import cached
from medzsad.data.datasets import FolderDataset, ManifestDataset
from medzsad.data.transforms import ClipImageTransform, Intensity
from medzsad.engine import calibrate as decisions
from medzsad.engine import distributed
from medzsad.engine.checkpoints import CheckpointError, checkpoint_paths, read_checkpoint_info
from medzsad.engine.config import ConfigError, DataConfig, RunConfig, method_config_for
from medzsad.engine.evaluate import DatasetEvaluation, evaluate, write_scores, write_tables
from medzsad.engine.outputs import mlflow_run_line
from medzsad.engine.predict import PredictSummary, predict_paths
from medzsad.engine.preflight import check_device, check_names, check_output_dir, claim_output_dir
from medzsad.engine.references import bank_tags, with_references, write_references
from medzsad.engine.runtime import build_backbone, build_method
from medzsad.engine.train import TrainResult, saved_run_id, train
from medzsad.methods.base import ZsadMethod
from medzsad.metrics import MVTEC_EXACT, aupro_name, binned_variant
from medzsad.tracking import Purpose, tracked_run
from medzsad.tracking.params import param_value
from medzsad.utils.files import atomic_write_text
from medzsad.viz import Curve


def make_transform(config: RunConfig, image_size: int) -> ClipImageTransform:
    """The image transform the data section describes (official behaviour by default)."""
    data = config.data
    window = tuple(data.ct_window) if isinstance(data.ct_window, list) else data.ct_window
    try:
        intensity = Intensity(mode="auto", window=window, percentiles=tuple(data.mri_percentiles))
    except ValueError as exc:
        raise ConfigError(f"data.ct_window: {exc}") from None
    return ClipImageTransform(image_size, pad_to_square=data.pad_to_square, intensity=intensity)


def data_section(transform: ClipImageTransform, slice_axis: str | int = "native", split: str = "test") -> DataConfig:
    """The data section whose :func:`make_transform` is ``transform`` (for callers that hold a transform,
    as the deployment ``Detector``): references and calibration checks then see the same settings."""
    window = transform.intensity.window
    return DataConfig(
        split=split,
        pad_to_square=bool(transform.pad_to_square),
        ct_window=[float(v) for v in window] if isinstance(window, tuple | list) else window,
        mri_percentiles=[float(v) for v in transform.intensity.percentiles],
        slice_axis=slice_axis,
    )


def folder_options(config: RunConfig) -> dict[str, Any]:
    """What the data section says about folders of scans, the same for ``predict`` and ``test``: slice
    axis, series selection (``data.series``, ``data.modality``) and the user's MONAI transforms."""
    from medzsad.data.samples import user_transforms
    from medzsad.data.study import selection_from_values

    data = config.data
    try:
        selection = selection_from_values(data.series, data.modality)
        return {"axis": data.slice_axis, "selection": selection, "user_transforms": user_transforms(data.transforms)}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _require_trained(method: ZsadMethod, config: RunConfig) -> None:
    if method.trainable_parameters() and not config.checkpoint:
        raise ConfigError(
            f"checkpoint: {config.method} learns its prompts; give a trained checkpoint "
            "(checkpoint=runs/train/epoch_15.safetensors or an official .pth)"
        )


@dataclass
class DatasetSpec:
    """A target dataset named in ``data.test`` as ``PATH`` or ``NAME=PATH``."""

    name: str
    path: Path


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def parse_dataset_spec(text: str, position: int = 1) -> DatasetSpec:
    """``"brainmri=/data/BrainMRI/meta.json"`` -> name ``brainmri``; without a name, ``dataset-<position>``.

    The name goes to tables, file names and MLflow, so it is never taken from the path: hospital exports
    name folders after patients (``LASTNAME_Firstname_ID/``).
    """
    name, sep, path = text.partition("=")
    if not sep:
        path, name = text, ""
    neutral = f"dataset-{position}"
    return DatasetSpec(_SAFE_NAME.sub("_", name).strip("_") or neutral, Path(path))


def open_dataset(
    spec: str | Path, config: RunConfig, image_size: int, root: str | None = None, cache: bool = False
) -> Dataset:
    """Samples from a ``meta.json`` manifest (or a folder holding one), else every image/scan of a folder;
    with ``cache``, kept in ``data.cache_dir`` when it is set (:mod:`medzsad.data.cache`).

    A folder without a manifest gives unlabelled samples (prediction, or metrics that need no labels);
    build a manifest with ``medzsad prepare`` to evaluate with labels and masks.
    """
    location = parse_dataset_spec(str(spec)).path
    if not location.exists():
        raise ConfigError(f"{location}: dataset not found")
    manifest = location / "meta.json" if location.is_dir() else location
    transform = make_transform(config, image_size)
    options = folder_options(config)
    if manifest.is_file() and manifest.suffix == ".json":
        users, split = options["user_transforms"], config.data.split
        dataset = ManifestDataset(manifest, split=split, root=root, transform=transform, user_transforms=users)
    else:
        dataset = FolderDataset(location, transform=transform, **options)
    try:
        return cached(dataset, config.data.cache_dir if cache else None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _few_shot(method: ZsadMethod, config: RunConfig, device: torch.device) -> ZsadMethod:
    """``method`` with the memory bank of ``config.reference`` (read from split ``fewshot.split``), if any."""
    data = dataclasses.replace(config.data, split=config.fewshot.split)
    source = dataclasses.replace(config, data=data)
    return with_references(
        method, config, device, lambda: open_dataset(str(config.reference), source, method.image_size)
    )


# -- predict ---------------------------------------------------------------------------------------


def run_predict(config: RunConfig, inputs: Sequence[str | Path], output_dir: Path) -> PredictSummary:
    """Maps, overlays and scores for every input (see :mod:`medzsad.engine.predict`); under torchrun each
    process scores its block of the inputs and rank 0 writes the merged CSVs."""
    check_device(config.device)
    if config.predict.engine == "onnx":
        return _predict_onnx(config, inputs, output_dir)
    device = distributed.setup(config.device)
    _claim(output_dir, "--output", config)
    method = build_method(config)
    _require_trained(method, config)
    method = _few_shot(method, config, device)
    transform = make_transform(config, method.image_size)
    calibration = decisions.load_for(config, method)
    writer = decisions.DecisionWriter(calibration, output_dir, config.calibrate.rescaled) if calibration else None
    batch_size, precision, seed = config.eval.batch_size, config.eval.precision, config.eval.seed
    options = folder_options(config)
    summary = predict_paths(
        method,
        inputs,
        output_dir,
        device,
        transform,
        batch_size,
        precision,
        seed=seed,
        options=options,
        decisions=writer,
        stop_on_error=config.eval.on_error == "stop",
    )
    write_references(method, output_dir)
    return summary


# -- export ----------------------------------------------------------------------------------------


def _predict_onnx(config: RunConfig, inputs: Sequence[str | Path], output_dir: Path) -> PredictSummary:
    """``predict`` on onnxruntime: the same output folder rules, skips and decisions as the PyTorch engine."""
    from medzsad.deploy.serve import predict_onnx

    if not config.checkpoint or not str(config.checkpoint).endswith(".onnx"):
        raise ConfigError("checkpoint: predict.engine=onnx runs a file of `medzsad export`; give checkpoint=model.onnx")
    if config.reference:
        raise ConfigError(
            "reference: an exported file is zero-shot or carries its bank; export with reference= "
            "(`medzsad export ... reference=...`) and predict without it"
        )
    if distributed.world_size() > 1:
        raise ConfigError("predict.engine=onnx: run it in one process (onnxruntime uses every core already)")
    _claim(output_dir, "--output", config)
    stop = config.eval.on_error == "stop"
    return predict_onnx(
        config.checkpoint,
        inputs,
        output_dir,
        config.eval.batch_size,
        calibration=config.calibration,
        stop_on_error=stop,
        rescaled=config.calibrate.rescaled,
    )


def run_export(config: RunConfig, output_dir: Path, fmt: str = "all"):
    """ONNX file and/or MONAI bundle of ``config``'s method (see :mod:`medzsad.deploy.export`): with
    ``reference`` the few-shot bank is folded into the graph, with ``calibration`` its thresholds go into
    the metadata (checked against the model first, as ``predict`` checks them)."""
    from medzsad.deploy.serve import export_formats

    method = build_method(config)
    _require_trained(method, config)
    method = _few_shot(method, config, torch.device("cpu"))
    calibration = decisions.load_for(config, method)
    transform = make_transform(config, method.image_size)
    return export_formats(method, transform, output_dir, fmt, calibration, config.data.slice_axis)


def _claim(output_dir: Path, key: str, config: RunConfig) -> None:
    """Rank 0 checks the output folder and clears earlier results (``eval.overwrite``); the others wait,
    so no process writes before the folder is ready, and an error stops every process."""
    error = None
    if distributed.is_main():
        try:
            claim_output_dir(output_dir, key, config.eval.overwrite)
        except ConfigError as exc:
            error = str(exc)
    error = distributed.broadcast_object(error)
    if error is not None:
        raise ConfigError(error)


# The image-score threshold the review calls a case abnormal at, until calibration provides one.
REVIEW_IMAGE_THRESHOLD = 0.5

# -- test ------------------------------------------------------------------------------------------


def _run_tags(config: RunConfig, method: ZsadMethod) -> dict[str, str]:
    identity = method.backbone.identity()
    return {
        "method": method.name,
        "backbone": identity["backbone"],
        "weight_hash": identity["backbone_sha256"][:16] or identity["backbone_weights"],
    }


# Data settings that change the pixels a method sees; the rest of ``data`` names files.
_DATA_PARAMS = ("split", "pad_to_square", "ct_window", "mri_percentiles", "slice_axis")
# Settings that change no number (where files go, how many loader processes).
_NOT_PARAMS = {"output_dir", "num_workers", "resume", "save_maps", "weights_path", "offline"}


def run_params(config: RunConfig, purpose: Purpose) -> dict[str, Any]:
    """The settings that decide a run's numbers, from the typed config: the method and every field
    of its validated config (defaults included), the backbone, the data/intensity settings, and the
    ``train`` section for training runs or the ``eval`` section for evaluations."""
    method_config = method_config_for(config)
    params: dict[str, Any] = {"method": config.method}
    params.update({f"method_config.{k}": _param(v) for k, v in dataclasses.asdict(method_config).items()})
    sections = [("backbone", config.backbone), ("data", config.data)]
    sections.append(
        ("train", config.train) if purpose in (Purpose.AUX_TRAIN, Purpose.FINETUNE) else ("eval", config.eval)
    )
    for name, section in sections:
        for key, value in dataclasses.asdict(section).items():
            if key not in _NOT_PARAMS and (name != "data" or key in _DATA_PARAMS):
                params[f"{name}.{key}"] = _param(value)
    return params


def _param(value: Any) -> Any:
    """``value`` if MLflow can show it as a param, else a short digest of it (long prompt lists), so
    every setting has a key and equal settings compare equal in the runs table."""
    try:
        param_value(value)
        return value
    except TypeError:
        text = json.dumps(value, sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


@contextlib.contextmanager
def _maybe_tracked(
    config: RunConfig,
    purpose: Purpose,
    method: ZsadMethod,
    target: str,
    aux: str | None,
    forbidden: frozenset[str],
    resume_run_id: str | None = None,
) -> Iterator:
    """An MLflow run when tracking is on; under torchrun only rank 0 opens one (the others get None).

    The run receives ``forbidden``, the identifying header values of its data (:func:`_identifiers`),
    and refuses any string holding one.
    """
    if not config.tracking.enabled or not distributed.is_main():
        yield None
        return
    tags = _run_tags(config, method)
    config_dict = {key: value for key, value in config.to_dict().items() if key != "tracking"}
    with tracked_run(
        config.tracking,
        purpose,
        method=tags["method"],
        backbone=tags["backbone"],
        weight_hash=tags["weight_hash"],
        target_dataset=target,
        aux_data=aux,
        config_dict=config_dict,
        params=run_params(config, purpose),
        code_version=medzsad.__version__,
        forbidden=forbidden,
        resume_run_id=resume_run_id,
    ) as run:
        yield run
    print(mlflow_run_line(f"{purpose.value} on {target}", run.run_id, run.offline, run.spool_path))


def evaluate_config(
    config: RunConfig, method: ZsadMethod | None = None, quiet: bool = False
) -> dict[str, DatasetEvaluation]:
    """Evaluate ``config``'s method on every dataset of ``data.test``; write tables; log to MLflow.

    Under torchrun every process evaluates its block of each dataset and writes its maps; rank 0 merges
    the metrics, writes the score CSVs and tables, prints and logs to MLflow.
    """
    check_device(config.device)
    output_dir = Path(config.eval.output_dir)
    specs = [parse_dataset_spec(text, position) for position, text in enumerate(config.data.test, start=1)]
    for position, spec in enumerate(specs):  # every dataset exists before the first one is scored
        if not spec.path.exists():
            raise ConfigError(f"data.test[{position}]: {spec.path}: dataset not found")
    device = distributed.setup(config.device)
    _claim(output_dir, "eval.output_dir", config)
    main = distributed.is_main()
    method = method if method is not None else build_method(config)
    _require_trained(method, config)
    method = _few_shot(method, config, device)
    evaluations: dict[str, DatasetEvaluation] = {}
    calibration = decisions.load_for(config, method)
    eval_config = decisions.with_pixel_threshold(config.eval, calibration)
    for position, (text, spec) in enumerate(zip(config.data.test, specs), start=1):
        dataset = open_dataset(text, config, method.image_size, cache=True)
        forbidden = _identifiers(config, dataset)
        check_names([(f"data.test[{position - 1}]", spec.name)], forbidden)
        maps_dir = output_dir / "maps" / spec.name if config.eval.save_maps else None
        review_limit = config.tracking.review_limit if config.tracking.enabled else 0
        collector = decisions.collector_for(config.eval, calibration)
        consumer = decisions.VolumeConsumer(collector)
        result = evaluate(
            method, dataset, eval_config, device, spec.name, review_limit, maps_dir=maps_dir, consumer=consumer
        )
        evaluations[spec.name] = result
        if not main:
            continue
        one = distributed.world_size() == 1
        result.decisions = decisions.decide(result.samples, calibration, config.eval, collector, one)
        write_scores(output_dir / f"scores_{spec.name}.csv", result)
        decisions.write_decisions(output_dir, spec.name, result.decisions)
        if result.skipped:
            print(f"{spec.name}: {len(result.skipped)} sample(s) skipped, listed in skipped_{spec.name}.csv")
        if not quiet:
            print(f"\n{spec.name} ({method.name}; {_pixel_metric_kind(config)})")
            print(result.report.format_table(columns=config.eval.columns))
            print(decisions.format_decisions(result.decisions))
        with _maybe_tracked(config, Purpose.ZERO_SHOT_EVAL, method, spec.name, _aux_data(config), forbidden) as run:
            if run is not None:
                _log_evaluation(run, result, config)
                decisions.log_decisions(run, result.decisions, calibration)
                if getattr(method, "bank_path", None) is not None:
                    run.log_memory_bank(method.bank_path, bank_tags(method))
    if main:
        csv_path, json_path = write_tables(output_dir, evaluations)
        write_references(method, output_dir)
        if not quiet:
            print(f"\ntables: {csv_path}, {json_path}")
    distributed.barrier()  # the tables exist for every process once this returns
    return evaluations


def _identifiers(config: RunConfig, dataset: Dataset) -> frozenset[str]:
    """The identifying header values of ``dataset``'s files, when they can reach MLflow (else none)."""
    if not config.tracking.enabled or not distributed.is_main():
        return frozenset()
    from medzsad.data.dicom import dataset_identifiers

    return dataset_identifiers(getattr(dataset, "source_files", list)())


def run_test(config: RunConfig) -> dict[str, DatasetEvaluation]:
    return evaluate_config(config)


def _aux_data(config: RunConfig) -> str | None:
    if not config.checkpoint:
        return None
    try:
        return str(read_checkpoint_info(config.checkpoint).training.get("aux_data", "")) or None
    except CheckpointError:
        return None


def _log_evaluation(run: Any, result: DatasetEvaluation, config: RunConfig) -> None:
    report = result.report
    metrics = {category: dict(values.values) for category, values in report.per_category.items()}
    metrics["mean"] = dict(report.macro_mean.values)
    run.log_eval(metrics)
    run.log_metrics({"skipped_samples": len(result.skipped)})
    run.log_dataset(result.name, *_dataset_identity(result))
    if result.accumulator is not None:
        _log_curves(run, result.accumulator.curves(), report.per_category, _aupro_name(config))
    review = result.review
    if not config.tracking.deidentified:
        review = [sample for sample in review if not sample.burned_in_text]
        if len(review) < len(result.review):
            print(
                f"{result.name}: {len(result.review) - len(review)} overlay(s) withheld from MLflow: the scans may "
                "carry burned-in text (set tracking.deidentified=true only if the pixels are de-identified)"
            )
    if review:
        run.log_review(
            review,
            result.name,
            image_threshold=result.decisions.image.value if result.decisions else REVIEW_IMAGE_THRESHOLD,
            pixel_threshold=result.decisions.pixel.value if result.decisions else config.eval.dice_threshold,
            panel_size=config.tracking.review_panel_size,
            page_limit=config.tracking.page_limit,
            threshold_origin=_threshold_origin(result, config),
            context={"method": config.method, "backbone": config.backbone.model_name},
        )
        _log_volume_figures(run, review, result.name)


def _threshold_origin(result: DatasetEvaluation, config: RunConfig) -> str:
    """Where the review's thresholds come from: the calibration's rule, alpha and n, or the fixed defaults."""
    if result.decisions is not None:
        pixel = result.decisions.pixel
        return f"image score: {result.decisions.image.origin()}; map: {pixel.origin() if pixel else 'none'}"
    return (
        f"image score {REVIEW_IMAGE_THRESHOLD:g} (fixed, not calibrated); "
        f"map {config.eval.dice_threshold:g} (eval.dice_threshold)"
    )


def _dataset_identity(result: DatasetEvaluation) -> tuple[str, dict[str, int]]:
    """A digest of the evaluated samples (sorted pseudonymous ids and labels: changes when the data
    does, names no file) and their counts."""
    digest = hashlib.sha256()
    for sample_id, label in sorted((s.sample_id, s.label) for s in result.samples):
        digest.update(f"{sample_id}:{label}\n".encode())
    labels = [s.label for s in result.samples]
    volumes = {s.volume_id for s in result.samples if s.volume_id is not None}
    profile = {
        "samples": len(labels),
        "anomalous": sum(1 for label in labels if label == 1),
        "normal": sum(1 for label in labels if label == 0),
        "categories": len({s.category for s in result.samples}),
        "volumes": len(volumes),
    }
    return digest.hexdigest()[:16], profile


def _log_volume_figures(run: Any, review: Sequence[Any], dataset: str) -> None:
    """One slice-mosaic figure per labelled volume among the review copies (every lesion slice)."""
    by_volume: dict[str, list[Any]] = {}
    for sample in review:
        if sample.volume_id is not None and sample.mask is not None:
            by_volume.setdefault(sample.volume_id, []).append(sample)
    for volume_id, slices in by_volume.items():
        run.log_volume_slices(sorted(slices, key=lambda s: s.slice_index or 0), volume_id, dataset_name=dataset)


def _aupro_name(config: RunConfig) -> str:
    """Result key of the AU-PRO this evaluation reports (exact, or over quantized maps)."""
    bins = config.eval.pixel_bins
    return aupro_name(0.3, MVTEC_EXACT if bins is None else binned_variant(bins))


def _pixel_metric_kind(config: RunConfig) -> str:
    if config.eval.pixel_bins is None:
        return "pixel AU-PRO is the exact MVTec AD metric"
    return f"pixel metrics of maps quantized to {config.eval.pixel_bins} levels, constant memory"


def _log_curves(
    run: Any, curves: Mapping[str, Mapping[str, tuple]], per_category: Mapping[str, Any], aupro_key: str
) -> None:
    """One figure per curve kind (ROC, PR at image level; PRO at pixel level), a line per category."""
    kinds = {"image_roc": ("roc", "image", "image_auroc", None), "image_pr": ("pr", "image", "image_ap", None)}
    kinds["pixel_pro"] = ("pro", "pixel", aupro_key, 0.3)
    for key, (kind, level, area_name, limit) in kinds.items():
        lines = {
            category: Curve(*found[key], area=per_category[category].values.get(area_name))
            for category, found in curves.items()
            if key in found
        }
        if lines:
            run.log_curves(kind, lines, level=level, fpr_limit=limit)


# -- calibrate -------------------------------------------------------------------------------------


def run_calibrate(config: RunConfig) -> decisions.Calibration:
    """Thresholds from the reference scans of ``calibrate.reference`` (rules: docs/decisions.md), written to
    ``calibrate.output`` and logged to MLflow; the file is refused later by any other model."""
    if not config.calibrate.reference:
        raise ConfigError("calibrate.reference: give the reference scans, e.g. calibrate.reference=normals/meta.json")
    check_device(config.device)
    device = distributed.setup(config.device)
    if distributed.world_size() > 1:
        raise ConfigError("calibrate: run it in one process (the reference maps' statistics are not merged)")
    method = build_method(config)
    _require_trained(method, config)
    method = _few_shot(method, config, device)  # a few-shot model is calibrated on its own fused scores
    dataset = open_dataset(config.calibrate.reference, config, method.image_size, cache=True)
    reference = decisions.ReferenceConsumer()
    scoring = dataclasses.replace(config.eval, pixel_metrics=False)  # the thresholds need no pixel metrics
    result = evaluate(method, dataset, scoring, device, "reference", consumer=reference)
    calibration, notes = decisions.build_calibration(method, result.samples, reference, config)
    path = decisions.write_calibration(calibration, config.calibrate.output)
    print(decisions.format_calibration(calibration, path, notes))
    forbidden = _identifiers(config, dataset)
    with _maybe_tracked(config, Purpose.CALIBRATION, method, "reference", _aux_data(config), forbidden) as run:
        if run is not None:
            decisions.log_calibration(run, calibration)
    return calibration


# -- train -----------------------------------------------------------------------------------------


def run_train(config: RunConfig, finetune: bool = False) -> TrainResult:
    """Learn prompts on ``data.train`` (fine-tune from ``checkpoint`` when ``finetune``)."""
    if not config.data.train:
        raise ConfigError("data.train: give the auxiliary dataset, e.g. data.train=/data/mvtec/meta.json")
    if finetune and not config.checkpoint:
        raise ConfigError("checkpoint: finetune continues from a trained checkpoint; give checkpoint=...")
    if not finetune and config.checkpoint:
        raise ConfigError("checkpoint: train starts from fresh prompts; use `medzsad finetune` to continue one")
    check_device(config.device)
    if distributed.is_main():
        check_output_dir(config.train.output_dir, "train.output_dir")
    device = distributed.setup(config.device)
    backbone = build_backbone(config)
    torch.manual_seed(config.train.seed)  # prompt initialisation
    method = build_method(config, backbone)
    if not method.trainable_parameters():
        raise ConfigError(f"method: {config.method} is training-free; nothing to train")
    dataset = open_dataset(config.data.train, config, method.image_size, root=config.data.train_root)
    aux = parse_dataset_spec(config.data.train).name
    forbidden = _identifiers(config, dataset)
    check_names([("data.train", aux)], forbidden)
    purpose = Purpose.FINETUNE if finetune else Purpose.AUX_TRAIN
    with _maybe_tracked(config, purpose, method, aux, aux, forbidden, saved_run_id(config.train)) as run:
        on_epoch = (lambda epoch, losses: run.log_epoch(epoch, losses)) if run is not None else None
        state = {"tracking_run_id": run.run_id} if run is not None and run.run_id else None
        metadata = {"aux_data": aux, "finetune": finetune}
        result = train(method, dataset, config.train, device, on_epoch, metadata, extra_state=state)
        if run is not None and result.last_checkpoint is not None:
            tensors, meta = checkpoint_paths(result.last_checkpoint)
            run.log_checkpoint(tensors, meta)
    last = result.last_checkpoint
    if not distributed.is_main():
        return result
    print(f"trained {len(result.history)} epoch(s); last checkpoint: {last}.safetensors" if last else "no epoch run")
    return result


# -- benchmark table -------------------------------------------------------------------------------

TABLE_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro@0.3")


def run_table(base: RunConfig, columns: Mapping[str, RunConfig]) -> str:
    """Several methods x the datasets of ``base.data.test`` into one paper-style table.

    Each column config brings its method and checkpoint; data and evaluation settings come from
    ``base``. Returns the table text (also written as ``table.md`` in ``base.eval.output_dir``).
    """
    results: dict[str, dict[str, DatasetEvaluation]] = {}
    for label, column in columns.items():
        merged = dataclasses.replace(
            base,
            method=column.method,
            method_config=column.method_config,
            checkpoint=column.checkpoint,
            backbone=column.backbone,
            eval=dataclasses.replace(base.eval, output_dir=str(Path(base.eval.output_dir) / label)),
        )
        results[label] = evaluate_config(merged, quiet=True)
    text = format_benchmark_table(results)
    if distributed.is_main():
        print(text)
        atomic_write_text(Path(base.eval.output_dir) / "table.md", text + "\n")
    return text


def format_benchmark_table(results: Mapping[str, Mapping[str, DatasetEvaluation]]) -> str:
    """Markdown: one row per dataset (with its number of images), per method the (image AUROC, AP) and
    (pixel AUROC, AU-PRO) macro means in percent, a mean row over the datasets, and a note for every
    ``–`` saying why the metric is undefined."""
    header = (
        "| dataset | images | "
        + " | ".join(f"{label} img (AUROC, AP) | {label} px (AUROC, AU-PRO@0.3 exact)" for label in results)
        + " |"
    )
    rule = "|---|---:|" + "---|---|" * len(results)
    datasets = sorted({name for per_method in results.values() for name in per_method})
    lines = [header, rule]
    notes: dict[str, list[str]] = {}
    for name in datasets:
        reports = [per_method[name].report for per_method in results.values() if name in per_method]
        images = sum(result.counts.get("images", 0) for result in reports[0].per_category.values())
        cells = []
        for label, per_method in results.items():
            mean = per_method[name].report.macro_mean if name in per_method else None
            values = mean.values if mean is not None else {}
            cells += [_pair(values, "image_auroc", "image_ap"), _pair(values, "pixel_auroc", _aupro_key(values))]
            for reason in sorted(set((mean.undefined if mean is not None else {"all": "not evaluated"}).values())):
                notes.setdefault(reason, []).append(f"{label} on {name}")
        lines.append(f"| {name} | {images} | " + " | ".join(cells) + " |")
    lines.append("| mean | | " + " | ".join(_mean_cells(results, datasets)) + " |")
    lines += [f"\n– {', '.join(where)}: {reason}" for reason, where in notes.items()]
    return "\n".join(lines)


def _mean_cells(results: Mapping[str, Mapping[str, DatasetEvaluation]], datasets: Sequence[str]) -> list[str]:
    """Per method, the mean over datasets of each dataset's macro mean (``–`` unless defined on all)."""
    cells = []
    for per_method in results.values():
        values: dict[str, float] = {}
        per_dataset = [per_method[name].report.macro_mean.values for name in datasets if name in per_method]
        for key in ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro"):
            found = [d.get(_aupro_key(d) if key == "pixel_aupro" else key) for d in per_dataset]
            if len(per_dataset) == len(datasets) and found and None not in found:
                values[key] = sum(found) / len(found)
        cells += [_pair(values, "image_auroc", "image_ap"), _pair(values, "pixel_auroc", "pixel_aupro")]
    return cells


def _aupro_key(values: Mapping[str, float]) -> str:
    return next((k for k in values if k.startswith("pixel_aupro") and "cflow" not in k), "pixel_aupro")


def _pair(values: Mapping[str, float], first: str, second: str) -> str:
    def cell(key: str) -> str:
        return f"{100 * values[key]:.1f}" if key in values else "–"

    return f"({cell(first)}, {cell(second)})"
