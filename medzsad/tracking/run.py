"""A tracked run: what the engine calls to log one (method, checkpoint, target dataset) run.

Every call checks its strings with the PHI guard, writes its files into the run's spool folder,
journals the operation and sends it to MLflow. If MLflow fails (server down, SQLite store locked),
the run says so once and carries on locally; :func:`upload_spool` sends it later.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

import medzsad
from medzsad.tracking.backend import MlflowBackend, now_ms, quiet_mlflow, redact_uri
from medzsad.tracking.config import Purpose, TrackingConfig
from medzsad.tracking.params import config_hash, is_allowed_key, param_value, select_params
from medzsad.tracking.phi import Forbidden, PHIError, forbidden_values, guard_mapping, phi_guard, scrub_tree
from medzsad.tracking.review import ReviewSelector, ReviewSummary, checked_id
from medzsad.tracking.spool import Spool, find_spools
from medzsad.viz.render import Curve, CurveKind, MapScale, _resize_float, curve_figure, render_tile, render_volume
from medzsad.viz.review_page import DEFAULT_PAGE_LIMIT, PageDecision, review_page
from medzsad.viz.sample import ReviewSample

__all__ = [
    "CheckpointFiles",
    "TrackedRun",
    "load_checkpoint_from_model",
    "load_checkpoint_from_run",
    "tracked_run",
    "upload_spool",
]

logger = logging.getLogger("medzsad.tracking")

# Names that become parts of artifact paths and image keys.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# MLflow metric keys: letters, digits, _ - . space and /.
_METRIC_KEY = re.compile(r"^[A-Za-z0-9_\-. /]{1,250}$")


@dataclass(frozen=True)
class CheckpointFiles:
    """Local copies of a run's prompt checkpoint."""

    weights: Path
    metadata: Path


def _safe_name(value: str, what: str, forbidden: Forbidden = frozenset()) -> str:
    phi_guard(value, what, forbidden)
    if not _SAFE_NAME.match(value):
        raise ValueError(f"{what} must be 1-64 letters, digits, '_', '.', '-' (it names files), got {value!r}")
    return value


def mlflow_metric_key(name: str) -> str:
    """A medzsad metric name as MLflow accepts it: ``pixel_aupro@0.3[mvtec-exact]`` ->
    ``pixel_aupro_0.3_mvtec-exact`` (MLflow keys allow letters, digits, ``_ - . /`` and spaces)."""
    return name.replace("@", "_").replace("[", "_").replace("]", "")


def _metric_key(key: str, forbidden: Forbidden = frozenset()) -> str:
    key = mlflow_metric_key(key)
    phi_guard(key, f"metric name {key!r}", forbidden)
    if not _METRIC_KEY.match(key):
        raise ValueError(f"metric name {key!r} may only hold letters, digits, '_', '-', '.', ' ' and '/'")
    return key


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, optimize=False, compress_level=4)


class TrackedRun:
    """One MLflow run, or its local spool while MLflow is unavailable. Made by :func:`tracked_run`.

    ``forbidden`` holds the identifying values of the run's data (header names, ids...); every string
    the run sends is checked against them as well as against the general PHI rules.
    """

    def __init__(
        self, config: TrackingConfig, purpose: Purpose, spool: Spool, forbidden: Forbidden = frozenset()
    ) -> None:
        self.config = config
        self.purpose = purpose
        self.spool = spool
        self.forbidden = forbidden
        self.run_id: str | None = None
        self._backend: MlflowBackend | None = None
        self._scales: dict[str, MapScale] = {}
        self._n_tables = 0
        self._n_reviews = 0

    # -- state ----------------------------------------------------------------------------------
    @property
    def offline(self) -> bool:
        """True when results only go to the spool folder (MLflow failed or was never reached)."""
        return self._backend is None

    @property
    def spool_path(self) -> Path:
        """The run's local folder: kept after the run only when it was offline."""
        return self.spool.root

    def _connect(self, run_name: str, resume_run_id: str | None = None) -> None:
        try:
            with quiet_mlflow():
                self._backend = MlflowBackend(self.config)
                start_ms = self.spool.read_meta()["start_ms"]
                if resume_run_id and self._backend.reopen_run(resume_run_id):
                    self.run_id = resume_run_id
                else:
                    self.run_id = self._backend.start_run(self.purpose, run_name, start_ms)
                self.spool.update_meta(online_run_id=self.run_id)
            if self.config.system_metrics:
                self._backend.start_system_metrics(self.run_id)
        except ImportError:
            raise
        except Exception as exc:  # any failure of the store or server: carry on locally
            self._go_offline(exc)

    def _go_offline(self, exc: BaseException) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            # The partial online run is not ended here: that would wait on the failing store
            # again. upload_spool marks it FAILED once the store is back.
            with contextlib.suppress(Exception):
                backend.stop_system_metrics()
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        self.spool.update_meta(offline_reason=f"{type(exc).__name__}: {reason}", partial_run_id=self.run_id)
        # The one line the user sees: where the results are and how to upload them.
        logger.warning(
            "MLflow at %s unavailable (%s: %s); results kept in %s - upload later with `medzsad tracking upload %s`",
            redact_uri(self.config.tracking_uri),
            type(exc).__name__,
            reason,
            self.spool.root,
            self.spool.root,
        )

    def _emit(self, op: dict[str, Any]) -> None:
        self.spool.record(op)
        if self._backend is None or self.run_id is None:
            return
        try:
            with quiet_mlflow():
                self._backend.apply(self.run_id, op, self.spool.files)
        except Exception as exc:
            self._go_offline(exc)

    def close(self, status: str = "FINISHED") -> None:
        """End the run; on success online the spool folder is removed, else it is kept."""
        self.spool.update_meta(status=status, end_ms=now_ms())
        if self._backend is not None and self.run_id is not None:
            try:
                with quiet_mlflow():
                    self._backend.end_run(self.run_id, status)
            except Exception as exc:
                self._go_offline(exc)
        if self._backend is not None:
            self.spool.remove()

    # -- artifacts helpers ------------------------------------------------------------------------
    def _log_file(self, relative: str) -> None:
        """Upload the staged file ``files/<relative>`` to the same artifact path."""
        phi_guard(relative, f"artifact path {relative!r}", self.forbidden)
        parent = str(Path(relative).parent)
        self._emit({"op": "artifact", "file": relative, "artifact_path": None if parent == "." else parent})

    def _log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        for name, values in columns.items():
            phi_guard(name, f"table column {name!r}", self.forbidden)
            for value in values:
                phi_guard(value, f"a cell of column {name!r} in {artifact_file}", self.forbidden)
        # Several tables may go to one artifact (MLflow appends them); number the staged copies.
        self._n_tables += 1
        staged = self.spool.stage(f"_tables/{self._n_tables:04d}.json")
        staged.write_text(json.dumps(dict(columns)), encoding="utf-8")
        relative = staged.relative_to(self.spool.files).as_posix()
        self._emit({"op": "table", "file": relative, "artifact_file": artifact_file})

    def _log_image(self, array: np.ndarray, key: str, step: int) -> None:
        phi_guard(key, f"image key {key!r}", self.forbidden)
        staged = self.spool.stage(f"_images/{key.replace('/', '~')}/{step}.png")
        _save_png(array, staged)
        relative = staged.relative_to(self.spool.files).as_posix()
        self._emit({"op": "image", "file": relative, "key": key, "step": step, "timestamp": now_ms()})

    # -- public logging API -----------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; each key must be allow-listed and each value a stable primitive.

        Raises:
            ValueError: a key outside ``config.param_allow`` (or a path/secret-like key).
            TypeError: a value that is not a bool, int, float, str, None or short list of those.
        """
        out = _checked_params(params, self.config.param_allow)
        guard_mapping(out, "param", self.forbidden)
        if out:
            self._emit({"op": "params", "params": out})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set extra tags (strings; checked by the PHI guard)."""
        out = {str(k): str(v) for k, v in tags.items()}
        guard_mapping(out, "tag", self.forbidden)
        self._emit({"op": "tags", "tags": out})

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log metrics by name at one step."""
        timestamp = now_ms()
        rows = [[_metric_key(k, self.forbidden), float(v), int(step), timestamp] for k, v in metrics.items()]
        if rows:
            self._emit({"op": "metrics", "metrics": rows})

    def log_epoch(self, epoch: int, losses: Mapping[str, float], prefix: str = "train") -> None:
        """Log every loss term of one epoch as ``<prefix>/<name>`` with ``step=epoch``."""
        self.log_metrics({f"{prefix}/{name}": value for name, value in losses.items()}, step=epoch)

    def log_eval(self, metrics: Mapping[str, Mapping[str, float]], step: int = 0) -> None:
        """Log evaluation metrics per category; the ``"mean"`` entry is logged without prefix.

        ``{"brain_mri": {"image_auroc": 0.9}, "mean": {"image_auroc": 0.9}}`` gives the metrics
        ``brain_mri/image_auroc`` and ``image_auroc``, plus a sortable table ``eval/metrics.json``
        with one row per category and step.

        Values are rounded to :data:`METRIC_DIGITS` significant digits (more is noise for a metric
        over a test set). The table's columns carry the same names as the metric list
        (:func:`mlflow_metric_key`), and its cells are fixed-point text (``"0.9120"``, ``"0.0000"``):
        MLflow's table view sorts cells as text and leaves a numeric 0 empty.
        """
        flat: dict[str, float] = {}
        for category, values in metrics.items():
            for name, value in values.items():
                flat[name if category == "mean" else f"{category}/{name}"] = _round(value)
        self.log_metrics(flat, step=step)
        names = sorted({name for values in metrics.values() for name in values})
        columns: dict[str, list[Any]] = {"category": [], "step": []}
        columns.update({mlflow_metric_key(name): [] for name in names})
        for category, values in metrics.items():
            columns["category"].append(category)
            columns["step"].append(int(step))
            for name in names:
                value = values.get(name)
                columns[mlflow_metric_key(name)].append(None if value is None else f"{float(value):.4f}")
        self._log_table(columns, "eval/metrics.json")

    def log_curves(
        self,
        kind: CurveKind,
        curves: Mapping[str, Curve | tuple[np.ndarray, np.ndarray]],
        level: str = "image",
        fpr_limit: float | None = None,
    ) -> str:
        """Log one figure of ROC, PR or PRO curves, one line per category; returns its artifact path.

        Args:
            kind: ``"roc"``, ``"pr"`` or ``"pro"``.
            curves: category -> :class:`Curve` (or an ``(x, y)`` pair); x and y are arrays.
            level: ``"image"`` or ``"pixel"`` (part of the file name).
            fpr_limit: draws the integration limit, e.g. 0.3 for AUPRO.
        """
        _safe_name(level, "curve level", self.forbidden)
        named = {}
        for name, curve in curves.items():
            phi_guard(name, f"curve name {name!r}", self.forbidden)
            named[name] = curve if isinstance(curve, Curve) else Curve(np.asarray(curve[0]), np.asarray(curve[1]))
        relative = f"curves/{level}_{kind}.png"
        figure = curve_figure(kind, named, title=f"{level} {kind.upper()}", fpr_limit=fpr_limit)
        figure.savefig(self.spool.stage(relative), format="png")
        self._log_file(relative)
        return relative

    def log_dataset(self, name: str, digest: str, profile: Mapping[str, int | float], context: str = "evaluation"):
        """Log a dataset as an MLflow dataset input: ``name``, a content ``digest`` (e.g. of the
        sorted pseudonymous sample ids and labels) and ``profile`` counts (samples, anomalous...).
        Nothing here may be a path: every string goes through the PHI guard."""
        _safe_name(name, "dataset name", self.forbidden)
        texts = {"digest": digest, "context": context, **{str(k): str(v) for k, v in profile.items()}}
        guard_mapping(texts, "dataset", self.forbidden)
        self._emit({"op": "dataset", "name": name, "digest": digest[:36], "profile": dict(profile), "context": context})

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> str:
        """Log a small JSON document (e.g. a calibration file) as ``artifact_file``; every key and string
        passes the PHI guard first. Returns the artifact path."""
        _guard_json(data, artifact_file, self.forbidden)
        phi_guard(artifact_file, f"artifact path {artifact_file!r}", self.forbidden)
        self.spool.stage(artifact_file).write_text(json.dumps(data, indent=2, sort_keys=True, default=float))
        self._log_file(artifact_file)
        return artifact_file

    def log_checkpoint(self, weights_path: str | Path, metadata_path: str | Path) -> None:
        """Log the prompt checkpoint as ``checkpoint/weights.safetensors`` + ``checkpoint/metadata.json``.

        The metadata JSON and the safetensors header metadata are checked by the PHI guard, since
        both are plain text in the artifact store. The weights' SHA-256 becomes a tag.
        """
        weights_path, metadata_path = Path(weights_path), Path(metadata_path)
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
        _guard_json(metadata, "checkpoint metadata", self.forbidden)
        _guard_json(_safetensors_metadata(weights_path), "safetensors header metadata", self.forbidden)
        digest = hashlib.sha256()
        with open(weights_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        shutil.copyfile(weights_path, self.spool.stage("checkpoint/weights.safetensors"))
        shutil.copyfile(metadata_path, self.spool.stage("checkpoint/metadata.json"))
        self._emit({"op": "artifacts", "dir": "checkpoint", "artifact_path": "checkpoint"})
        self.set_tags({"checkpoint_sha256": digest.hexdigest()})
        # The same files as an MLflow 3 logged model: listed on the Models tab, loadable by model id.
        name = _safe_name(str(metadata.get("method", "checkpoint")), "model name", self.forbidden)
        tags = {"checkpoint_sha256": digest.hexdigest()}
        self._emit({"op": "logged_model", "dir": "checkpoint", "name": name, "tags": tags})

    def log_memory_bank(self, bank_path: str | Path, tags: Mapping[str, str]) -> None:
        """Log a few-shot memory bank as ``fewshot/bank.safetensors`` and describe it in ``tags``; its
        header metadata (method, digest, pseudonymous reference ids...) is checked by the PHI guard."""
        _guard_json(_safetensors_metadata(Path(bank_path)), "memory bank metadata", self.forbidden)
        shutil.copyfile(bank_path, self.spool.stage("fewshot/bank.safetensors"))
        self._log_file("fewshot/bank.safetensors")
        self.set_tags(tags)

    def log_review(
        self,
        samples: Iterable[ReviewSample],
        dataset_name: str,
        *,
        image_threshold: float,
        pixel_threshold: float,
        scale: MapScale | None = None,
        panel_size: int = 16,
        worst_k: int = 8,
        overlay_side: int = 256,
        threshold_origin: str = "fixed, not calibrated",
        page_limit: int = DEFAULT_PAGE_LIMIT,
        context: Mapping[str, str] | None = None,
    ) -> ReviewSummary:
        """Log the review of one dataset: the review page, a stepped panel, the worst mistakes,
        overlays and an index.

        * ``review/<dataset>/review.html``: the self-contained review page
          (:func:`medzsad.viz.review_page.review_page`): worklist, case view, slice scrolling; it
          holds at most ``page_limit`` slices, worst errors first, and says so;
        * ``review/<dataset>/panel``: ``panel_size`` samples fixed by id hash, one per step;
        * ``review/<dataset>/false_positives`` / ``false_negatives``: the ``worst_k`` worst, one per step;
        * ``overlays/<dataset>/<category>/<sample_id>.png`` for every sample, in one upload;
        * ``review/<dataset>/index.json``: sample_id, category, score, label, decision, outcome, overlay.

        All heat maps share ``scale`` (default: the range of all maps). The samples are held in
        memory (the engine keeps a bounded number of downscaled copies). ``threshold_origin`` says
        how the thresholds were chosen and is shown next to them; ``context`` adds a few
        ``label: value`` pairs (method, checkpoint) to the page's header.

        Raises:
            PHIError: a sample flagged ``burned_in_text`` while ``config.deidentified`` is False,
                or an id/category that fails the PHI guard.
        """
        dataset = _safe_name(dataset_name, "dataset name", self.forbidden)
        samples = list(samples)
        if scale is None:
            scale = MapScale.from_maps(s.anomaly_map for s in samples)
        guard_mapping({"threshold_origin": threshold_origin, **(context or {})}, "review page text", self.forbidden)
        self._scales[dataset] = scale
        selector = ReviewSelector(panel_size, worst_k, image_threshold)
        # Each call stages into its own folder, removed if the call fails (e.g. a refused
        # burned-in sample), so a later call never uploads overlays left over from this one.
        self._n_reviews += 1
        staging = self.spool.stage(f"_reviews/{self._n_reviews:03d}/x").parent
        try:
            columns, n_samples = self._render_overlays(
                samples, dataset, scale, pixel_threshold, selector, overlay_side, staging
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        summary = ReviewSummary(dataset=dataset, n_samples=n_samples, scale=(scale.vmin, scale.vmax))
        if n_samples:
            summary.overlay_dir = f"overlays/{dataset}"
            relative = staging.relative_to(self.spool.files).as_posix()
            self._emit({"op": "artifacts", "dir": relative, "artifact_path": summary.overlay_dir})
            summary.table_file = f"review/{dataset}/index.json"
            self._log_table(columns, summary.table_file)
            decision = PageDecision(image_threshold, pixel_threshold, threshold_origin)
            page = review_page(
                samples, dataset=dataset, scale=scale, decision=decision, limit=page_limit, context=context
            )
            summary.page_file = f"review/{dataset}/review.html"
            self.spool.stage(summary.page_file).write_text(page.html, encoding="utf-8")
            self._log_file(summary.page_file)
        for name, chosen, ids in (
            ("panel", selector.panel(), summary.panel_ids),
            ("false_positives", selector.false_positives(), summary.false_positive_ids),
            ("false_negatives", selector.false_negatives(), summary.false_negative_ids),
        ):
            for step, sample in enumerate(chosen):
                tile = self._tile(sample, scale, pixel_threshold, selector, overlay_side)
                self._log_image(tile, f"review/{dataset}/{name}", step)
                ids.append(sample.sample_id)
        return summary

    def _render_overlays(
        self,
        samples: Iterable[ReviewSample],
        dataset: str,
        scale: MapScale,
        pixel_threshold: float,
        selector: ReviewSelector,
        side: int,
        staging: Path,
    ) -> tuple[dict[str, list[Any]], int]:
        """Render every sample's tile into ``staging/<category>/<id>.png``; return the index table."""
        names = ("sample_id", "category", "volume_id", "slice", "score", "label", "decision", "outcome", "overlay")
        columns: dict[str, list[Any]] = {k: [] for k in names}
        seen: set[str] = set()
        for sample in samples:
            sample_id = self._check_sample(sample, seen)
            category = _safe_name(sample.category, "category", self.forbidden)
            (staging / category).mkdir(exist_ok=True)
            _save_png(
                self._tile(sample, scale, pixel_threshold, selector, side), staging / category / f"{sample_id}.png"
            )
            label, decision = int(sample.label), selector.decision(sample.score)
            row = (sample_id, category, sample.volume_id, sample.slice_index, round(float(sample.score), 4), label,
                   decision, _outcome(label, decision), f"overlays/{dataset}/{category}/{sample_id}.png")  # fmt: skip
            for key, value in zip(columns, row):
                columns[key].append(value)
            selector.offer(sample)
        return columns, len(seen)

    def _check_sample(self, sample: ReviewSample, seen: set[str]) -> str:
        if sample.burned_in_text and not self.config.deidentified:
            raise PHIError(
                f"PHI guard: sample {sample.sample_id!r} may carry burned-in text, so its overlay is "
                "refused; set TrackingConfig(deidentified=True) only if the pixels are de-identified"
            )
        sample_id = checked_id(sample)
        phi_guard(sample_id, "sample_id", self.forbidden)
        phi_guard(sample.volume_id, f"volume_id of sample {sample_id!r}", self.forbidden)
        phi_guard(sample.intensity, f"intensity of sample {sample_id!r}", self.forbidden)
        if int(sample.label) not in (0, 1):
            raise ValueError(f"sample {sample_id!r}: label must be 0 (normal) or 1 (anomalous), got {sample.label!r}")
        if sample_id in seen:
            raise ValueError(f"duplicate sample_id {sample_id!r} in one dataset")
        seen.add(sample_id)
        return sample_id

    @staticmethod
    def _tile(
        sample: ReviewSample, scale: MapScale, pixel_threshold: float, selector: ReviewSelector, side: int
    ) -> np.ndarray:
        decision = selector.decision(sample.score)
        label = "abnormal" if int(sample.label) else "normal"
        caption = (
            f"{sample.sample_id} | {sample.category} | {label} | score {sample.score:.3g} "
            f"(threshold {selector.image_threshold:.3g}) | {_outcome(int(sample.label), decision)}"
        )
        return render_tile(sample.image, sample.anomaly_map, sample.mask, scale, pixel_threshold, caption, side=side)

    def log_volume_figure(
        self,
        volume_image: np.ndarray,
        volume_map: np.ndarray,
        volume_mask: np.ndarray | None,
        sample_id: str,
        *,
        dataset_name: str = "volumes",
        scale: MapScale | None = None,
        burned_in_text: bool = False,
        max_slices: int = 24,
        window: str | None = None,
    ) -> str:
        """Log a figure tiling the slices ([slices, H, W]) of a volume with map and ground truth.

        The colour scale is ``scale``, else the one of the last :meth:`log_review` of the same
        dataset, else the volume's own range. Returns the artifact path
        ``volumes/<dataset>/<sample_id>.png``.
        """
        if burned_in_text and not self.config.deidentified:
            raise PHIError(
                f"PHI guard: volume {sample_id!r} may carry burned-in text; its figure is refused "
                "unless TrackingConfig(deidentified=True)"
            )
        dataset = _safe_name(dataset_name, "dataset name", self.forbidden)
        sample_id = _safe_name(sample_id, "sample_id", self.forbidden)
        scale = scale or self._scales.get(dataset) or MapScale.from_maps([volume_map])
        phi_guard(window, "volume window", self.forbidden)
        figure = render_volume(
            volume_image, np.asarray(volume_map), volume_mask, scale, sample_id, max_slices=max_slices, window=window
        )
        relative = f"volumes/{dataset}/{sample_id}.png"
        _save_png(figure, self.spool.stage(relative))
        self._log_file(relative)
        return relative

    def log_volume_slices(self, slices: Iterable[ReviewSample], volume_id: str, *, dataset_name: str) -> str:
        """:meth:`log_volume_figure` of a volume given as its review slices (same size, one volume):
        stacked in slice order, shown in the display window the data layer used (``intensity``)."""
        ordered = sorted(slices, key=lambda s: s.slice_index or 0)
        if not ordered:
            raise ValueError(f"volume {volume_id!r}: no slices")
        side = ordered[0].image.shape[:2]
        maps = [_resize_float(s.anomaly_map, (side[1], side[0])) for s in ordered]
        masks = None
        if all(s.mask is not None for s in ordered):
            masks = np.stack([np.asarray(s.mask, dtype=bool) for s in ordered])
        gray = np.stack([np.asarray(s.image)[..., 0] if np.asarray(s.image).ndim == 3 else s.image for s in ordered])
        return self.log_volume_figure(
            gray,
            np.stack(maps),
            masks,
            volume_id,
            dataset_name=dataset_name,
            burned_in_text=any(s.burned_in_text for s in ordered),
            window=ordered[0].intensity,
        )


#: Significant digits of logged evaluation metrics.
METRIC_DIGITS = 4


def _round(value: float) -> float:
    value = float(value)
    return float(f"{value:.{METRIC_DIGITS}g}") if math.isfinite(value) else value


def _outcome(label: int, decision: int) -> str:
    return {(1, 1): "TP", (0, 0): "TN", (0, 1): "FP", (1, 0): "FN"}[(label, decision)]


def _guard_json(obj: Any, where: str, forbidden: Forbidden) -> None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            phi_guard(str(key), f"a key of {where}", forbidden)
            _guard_json(value, f"{where} field {key!r}", forbidden)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _guard_json(value, where, forbidden)
    else:
        phi_guard(obj, where, forbidden)


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    """The free-text ``__metadata__`` of a safetensors header (8-byte length, then JSON)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if size <= 0 or size > 100 * 1024 * 1024:
            raise ValueError(f"{path.name} is not a safetensors file")
        header = json.loads(handle.read(size))
    return header.get("__metadata__") or {}


def _run_tags(
    purpose: Purpose,
    method: str,
    backbone: str,
    weight_hash: str,
    target_dataset: str,
    aux_data: str | None,
    cfg_hash: str,
    code_version: str,
    config: TrackingConfig,
) -> dict[str, str]:
    return {
        "purpose": purpose.value,
        "method": method,
        "backbone": backbone,
        "weight_hash": weight_hash,
        "target_dataset": target_dataset,
        "aux_data": aux_data or "none",
        "config_hash": cfg_hash,
        "code_version": code_version,
        "medzsad_version": medzsad.__version__,
        "phi_guard": "on",
        "deidentified": str(config.deidentified).lower(),
    }


@contextmanager
def tracked_run(
    config: TrackingConfig,
    purpose: Purpose | str,
    *,
    method: str,
    backbone: str,
    weight_hash: str,
    target_dataset: str,
    config_dict: Mapping[str, Any],
    code_version: str,
    params: Mapping[str, Any] | None = None,
    aux_data: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    forbidden: Iterable[object] = (),
    resume_run_id: str | None = None,
) -> Iterator[TrackedRun]:
    """Open one run (method, checkpoint, target dataset) in the experiment of ``purpose``.

    Sets the tags (method, backbone, weight hash, aux data, target dataset, config hash, code
    version...), logs ``params`` (the engine generates them from its typed config; each key must
    pass ``config.param_allow``) or, without them, the allow-listed leaves of ``config_dict``, and
    the config itself as ``config/resolved.yaml`` (strings that fail the PHI guard, such as data
    paths, redacted).
    The run ends FINISHED, or FAILED/KILLED when the block raises.

    ``forbidden`` are the identifying values of the data (:func:`medzsad.data.dicom.dataset_identifiers`):
    no name, tag, param, metric key, artifact path or table cell of the run may contain one.
    ``resume_run_id`` continues that run (a resumed training) instead of starting a new one, when the
    store still has it.

    Raises:
        PHIError: before anything is logged, when a tag or the run name fails the guard.
    """
    purpose = Purpose(purpose)
    denied = forbidden_values(forbidden)
    cfg_hash = config_hash(config_dict)
    run_tags = _run_tags(
        purpose, method, backbone, weight_hash, target_dataset, aux_data, cfg_hash, code_version, config
    )
    run_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
    guard_mapping(run_tags, "tag", denied)
    name = run_name or f"{method}-{target_dataset}-{cfg_hash[:8]}"
    phi_guard(name, "run name", denied)
    if params is None:
        selected = select_params(config_dict, config.param_allow)
    else:
        selected = _checked_params(params, config.param_allow)
    guard_mapping(selected, "param", denied)

    spool = Spool.create(
        config.spool_dir,
        {"purpose": purpose.value, "run_name": name, "start_ms": now_ms(), "status": "RUNNING"},
    )
    run = TrackedRun(config, purpose, spool, denied)
    run._connect(name, resume_run_id)
    run.set_tags(run_tags)
    if selected:
        run._emit({"op": "params", "params": selected})
    scrubbed, _ = scrub_tree(config_dict, denied)
    spool.stage("config/resolved.yaml").write_text(yaml.safe_dump(scrubbed, sort_keys=False), encoding="utf-8")
    run._log_file("config/resolved.yaml")
    try:
        yield run
    except KeyboardInterrupt:
        run.close("KILLED")
        raise
    except BaseException:
        run.close("FAILED")
        raise
    run.close("FINISHED")


def _checked_params(params: Mapping[str, Any], allow: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for key, value in params.items():
        if not is_allowed_key(key, allow):
            raise ValueError(f"param {key!r} is not in the allow-list (TrackingConfig.param_allow)")
        out[key] = param_value(value)
    return out


def upload_spool(spool_dir: str | Path, config: TrackingConfig, remove: bool = True) -> list[str]:
    """Upload spooled runs (one run folder, or a folder of them) as new MLflow runs.

    Returns the new run ids. A folder that uploaded is removed (or, with ``remove=False``, marked
    so it is not uploaded twice). Errors are raised: this is the command a user runs on purpose.
    """
    run_ids: list[str] = []
    backend = MlflowBackend(config)
    for spool in find_spools(Path(spool_dir)):
        meta = spool.read_meta()
        if meta.get("online_run_id") and not meta.get("offline_reason"):
            # Every operation already reached the store: the process was killed before it could end the
            # run and remove its journal. Replaying it would duplicate the run as a FAILED copy.
            _end_killed(backend, meta["online_run_id"])
            spool.remove()
            continue
        run_id = backend.start_run(Purpose(meta["purpose"]), meta["run_name"], meta.get("start_ms"))
        try:
            for op in spool.ops():
                backend.apply(run_id, op, spool.files)
            backend.apply(run_id, {"op": "tags", "tags": {"uploaded_from_spool": "true"}}, spool.files)
        except BaseException:
            backend.end_run(run_id, "FAILED")
            raise
        status = meta.get("status", "FINISHED")
        backend.end_run(run_id, "FAILED" if status == "RUNNING" else status, meta.get("end_ms"))
        if meta.get("partial_run_id"):
            _supersede(backend, meta["partial_run_id"], run_id)
        spool.mark_uploaded(run_id)
        if remove:
            spool.remove()
        run_ids.append(run_id)
    return run_ids


def _end_killed(backend: MlflowBackend, run_id: str) -> None:
    """End a run whose process died while it was RUNNING (a finished run is left as it is)."""
    with contextlib.suppress(Exception):  # gone from the store: nothing to end
        if backend.client.get_run(run_id).info.status == "RUNNING":
            backend.end_run(run_id, "KILLED")


def _supersede(backend: MlflowBackend, partial_run_id: str, run_id: str) -> None:
    """Mark the run that was cut off when MLflow failed as FAILED, pointing to its full upload."""
    with contextlib.suppress(Exception):  # it may be gone or in another store: not worth failing for
        backend.apply(partial_run_id, {"op": "tags", "tags": {"superseded_by": run_id}}, Path("."))
        backend.end_run(partial_run_id, "FAILED")


def load_checkpoint_from_model(
    model_id: str, config: TrackingConfig | None = None, dst_dir: str | Path | None = None
) -> CheckpointFiles:
    """Download the prompt checkpoint logged as an MLflow logged model (``m-…``; a run's
    ``checkpoint_model_id`` tag names it); the engine turns the files into a model."""
    backend, target = _download_target(config, dst_dir)
    return _checkpoint_files(backend.download_model(model_id, target), f"logged model {model_id}")


def load_checkpoint_from_run(
    run_id: str, config: TrackingConfig | None = None, dst_dir: str | Path | None = None
) -> CheckpointFiles:
    """Download a run's prompt checkpoint; the engine turns the files into a model.

    Args:
        run_id: the MLflow run that logged the checkpoint with :meth:`TrackedRun.log_checkpoint`.
        config: where the run lives (default: ``TrackingConfig()``).
        dst_dir: where to put the files (default: a new temporary folder).
    """
    backend, target = _download_target(config, dst_dir)
    return _checkpoint_files(backend.download_checkpoint(run_id, target), f"run {run_id}")


def _download_target(config: TrackingConfig | None, dst_dir: str | Path | None) -> tuple[MlflowBackend, Path]:
    """The backend of ``config`` (default ``TrackingConfig()``) and the download folder (default a new
    temporary one)."""
    target = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="medzsad-checkpoint-"))
    return MlflowBackend(config or TrackingConfig()), target


def _checkpoint_files(folder: Path, what: str) -> CheckpointFiles:
    files = CheckpointFiles(folder / "weights.safetensors", folder / "metadata.json")
    if not (files.weights.exists() and files.metadata.exists()):
        raise FileNotFoundError(f"{what} has no checkpoint weights.safetensors + metadata.json")
    return files
