"""A tracked run in a real SQLite store: tags, params, metrics, figures, checkpoint, review."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medzsad.tracking import (
    Curve,
    PHIError,
    ReviewSample,
    TrackingConfig,
    load_checkpoint_from_model,
    load_checkpoint_from_run,
    tracked_run,
)

from .helpers import CONFIG_DICT, RUN_KWARGS, all_artifacts, make_samples, make_volume


def test_run_has_tags_allowed_params_and_config_artifact(tracking_config: TrackingConfig, client) -> None:
    with tracked_run(tracking_config, "zero-shot-eval", config_dict=CONFIG_DICT, **RUN_KWARGS) as run:
        run.log_params({"eval.aupro_variant": "mvtec", "eval.fpr_limit": 0.3})
        with pytest.raises(ValueError, match="allow-list"):
            run.log_params({"data.test": "x"})
        with pytest.raises(TypeError):
            run.log_params({"eval.metric": object()})
    assert not run.offline and not run.spool_path.exists(), "the spool is removed after a good run"

    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "medzsad/zero-shot-eval"
    tags = logged.data.tags
    for key, value in RUN_KWARGS.items():
        assert tags[key] == value
    assert len(tags["config_hash"]) == 64 and tags["phi_guard"] == "on"
    assert tags["mlflow.runName"] == f"anomalyclip-brainmri-{tags['config_hash'][:8]}"
    params = logged.data.params
    assert params["method_config.features"] == "[6, 12, 18, 24]" and params["eval.aupro_variant"] == "mvtec"
    assert params["data.ct_window"] == "[40.0, 80.0]"
    assert not any(k in params for k in ("data.test", "backbone.weights_path", "train.optimizer_obj"))
    assert not any(k.startswith("logging") for k in params)

    resolved = yaml.safe_load(Path(client.download_artifacts(run.run_id, "config/resolved.yaml")).read_text())
    assert resolved["data"]["test"] == ["<redacted>"] and resolved["method_config"]["depth"] == 9
    # Artifacts land in the configured local folder, not in ./mlruns.
    assert logged.info.artifact_uri.startswith((tracking_config.artifact_location / "zero-shot-eval").as_uri())


def test_training_curves_eval_metrics_and_curve_figures(tracking_config: TrackingConfig, client) -> None:
    with tracked_run(tracking_config, "aux-train", config_dict=CONFIG_DICT, **RUN_KWARGS) as run:
        for epoch in range(3):
            run.log_epoch(epoch, {"loss": 1.0 / (epoch + 1), "focal": 0.5, "dice": 0.25})
        run.log_eval(
            {
                "brain": {"image_auroc": 0.91, "pixel_aupro": 0.7},
                "head": {"image_auroc": 0.85, "pixel_aupro": float("nan")},
                "mean": {"image_auroc": 0.88, "pixel_aupro": 0.7},
            }
        )
        x = np.linspace(0, 1, 50)
        for kind in ("roc", "pr", "pro"):
            run.log_curves(kind, {"brain": Curve(x, np.sqrt(x), 0.9), "head": (x, x)}, level="pixel")

    history = client.get_metric_history(run.run_id, "train/loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.333)]
    metrics = client.get_run(run.run_id).data.metrics
    assert metrics["brain/image_auroc"] == pytest.approx(0.91)
    assert metrics["head/image_auroc"] == pytest.approx(0.85)
    assert metrics["image_auroc"] == pytest.approx(0.88) and "mean/image_auroc" not in metrics
    assert np.isnan(metrics["head/pixel_aupro"])
    assert {"train/focal", "train/dice"} <= set(metrics)

    artifacts = all_artifacts(client, run.run_id)
    for kind in ("roc", "pr", "pro"):
        assert f"curves/pixel_{kind}.png" in artifacts
    table = json.loads(Path(client.download_artifacts(run.run_id, "eval/metrics.json")).read_text())
    assert table["columns"][:2] == ["category", "step"]
    assert [row[0] for row in table["data"]] == ["brain", "head", "mean"]
    assert table["data"][0][2:] == ["0.9100", "0.7000"], "fixed-point text: sorts right, shows 0"


def test_eval_metrics_are_rounded_and_named_as_in_the_table(tracking_config: TrackingConfig, client) -> None:
    with tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **RUN_KWARGS) as run:
        run.log_eval({"mean": {"image_auroc": 0.912345678901234, "pixel_aupro@0.3[mvtec-exact]": 0.0, "dice@0.5": 0}})
    metrics = client.get_run(run.run_id).data.metrics
    assert metrics["image_auroc"] == 0.9123 and metrics["pixel_aupro_0.3_mvtec-exact"] == 0.0
    table = json.loads(Path(client.download_artifacts(run.run_id, "eval/metrics.json")).read_text())
    assert set(table["columns"][2:]) <= set(metrics), "the table's column names are the metric names"
    assert "0.0000" in table["data"][0]


def test_evaluated_dataset_is_a_dataset_input(tracking_config: TrackingConfig, client) -> None:
    with tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **RUN_KWARGS) as run:
        run.log_dataset("brainmri", "3f1c0e9d2a7b4c55", {"samples": 12, "anomalous": 6, "normal": 6})
        with pytest.raises(PHIError):
            run.log_dataset("brainmri", "3f1c", {"source": "/data/hospital/brain"})
    (found,) = client.get_run(run.run_id).inputs.dataset_inputs
    assert found.dataset.name == "brainmri" and found.dataset.digest == "3f1c0e9d2a7b4c55"
    assert json.loads(found.dataset.profile) == {"samples": 12, "anomalous": 6, "normal": 6}
    assert "/" not in found.dataset.source and found.tags[0].value == "evaluation"


def test_checkpoint_round_trip_through_a_run_id(tracking_config: TrackingConfig, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    weights = tmp_path / "prompt.safetensors"
    save_file({"ctx": np.ones((4, 8), dtype=np.float32)}, weights, metadata={"method": "anomalyclip"})
    metadata = tmp_path / "prompt.json"
    metadata.write_text(json.dumps({"method": "anomalyclip", "backbone": "ViT-L-14-336"}))
    with tracked_run(tracking_config, "aux-train", config_dict={}, **RUN_KWARGS) as run:
        run.log_checkpoint(weights, metadata)

    files = load_checkpoint_from_run(run.run_id, tracking_config, tmp_path / "restored")
    assert files.weights.read_bytes() == weights.read_bytes()
    assert json.loads(files.metadata.read_text())["backbone"] == "ViT-L-14-336"
    # The same checkpoint is an MLflow 3 logged model of the run, loadable by its model id.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_config.tracking_uri)
    model_id = client.get_run(run.run_id).data.tags["checkpoint_model_id"]
    model = client.get_logged_model(model_id)
    assert model.source_run_id == run.run_id and model.name == "anomalyclip" and str(model.status) == "READY"
    by_model = load_checkpoint_from_model(model_id, tracking_config, tmp_path / "by-model")
    assert by_model.weights.read_bytes() == weights.read_bytes()

    # Metadata naming a source path is refused before anything is uploaded.
    metadata.write_text(json.dumps({"trained_on": "/data/hospital/brain"}))
    with (
        tracked_run(tracking_config, "aux-train", config_dict={}, **RUN_KWARGS) as run2,
        pytest.raises(PHIError, match="checkpoint metadata"),
    ):
        run2.log_checkpoint(weights, metadata)


def test_review_panel_worst_cases_overlays_and_index(tracking_config: TrackingConfig, client) -> None:
    samples = make_samples(12)
    # One confident false positive and one missed anomaly.
    samples[0] = ReviewSample(**{**samples[0].__dict__, "score": 0.95})
    samples[1] = ReviewSample(**{**samples[1].__dict__, "score": 0.05})
    with tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **RUN_KWARGS) as run:
        summary = run.log_review(
            iter(samples), "brainmri", image_threshold=0.5, pixel_threshold=0.4, panel_size=6, worst_k=3
        )

    assert summary.n_samples == 12 and len(summary.panel_ids) == 6
    assert summary.false_positive_ids == [samples[0].sample_id]
    assert summary.false_negative_ids == [samples[1].sample_id]
    by_id = {s.sample_id: s for s in samples}
    assert sum(by_id[i].label for i in summary.panel_ids) == 3, "the panel is half anomalous"

    artifacts = all_artifacts(client, run.run_id)
    overlays = [a for a in artifacts if a.startswith("overlays/brainmri/")]
    assert len(overlays) == 12
    images = [a for a in artifacts if a.startswith("images/") and a.endswith(".png") and "compressed" not in a]
    panel = [a for a in images if a.startswith("images/review~brainmri~panel+step+")]
    assert len(panel) == 6
    assert sum("false_positives" in a for a in images) == 1 and sum("false_negatives" in a for a in images) == 1

    index = json.loads(Path(client.download_artifacts(run.run_id, "review/brainmri/index.json")).read_text())
    columns = ["sample_id", "category", "volume_id", "slice", "score", "label", "decision", "outcome", "overlay"]
    assert index["columns"] == columns
    rows = {row[0]: row for row in index["data"]}
    assert rows[samples[0].sample_id][6:8] == [1, "FP"]
    assert rows[samples[1].sample_id][6:8] == [0, "FN"]
    assert all(row[8] in overlays for row in index["data"])
    # The review page: one self-contained file, the false positive first in its worklist.
    assert summary.page_file == "review/brainmri/review.html" and summary.page_file in artifacts
    page = Path(client.download_artifacts(run.run_id, summary.page_file)).read_text()
    assert "<script" in page and "http://" not in page and "https://" not in page, "no external resource"
    assert page.index(samples[0].sample_id) < page.index(samples[1].sample_id) < page.index(samples[2].sample_id)
    logged_tables = json.loads(client.get_run(run.run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "review/brainmri/index.json", "type": "table"} in logged_tables


def test_review_heat_maps_share_one_scale(tracking_config: TrackingConfig, client) -> None:
    """On one shared scale, a normal image with low scores leaves the anatomy grey in its logged tile,
    while the abnormal ones are coloured where they score high (the heat is laid over the anatomy)."""
    samples = make_samples(4)
    with tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **RUN_KWARGS) as run:
        summary = run.log_review(samples, "brainmri", image_threshold=0.5, pixel_threshold=0.4, overlay_side=64)
    assert summary.scale[1] > 0.6

    def coloured_fraction(sample) -> float:  # pixels far from grey: heat, colour bar and coloured labels
        path = client.download_artifacts(run.run_id, f"overlays/brainmri/{sample.category}/{sample.sample_id}.png")
        tile = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
        return float(((tile.max(-1) - tile.min(-1)) > 60).mean())

    normal = [coloured_fraction(s) for s in samples if s.label == 0]
    abnormal = [coloured_fraction(s) for s in samples if s.label == 1]
    assert normal and abnormal
    assert max(normal) < 0.8 * min(abnormal), f"normal tiles {normal} should be far less coloured than {abnormal}"


def test_burned_in_overlays_are_refused_unless_deidentified(tracking_config: TrackingConfig, client) -> None:
    samples = make_samples(4)
    samples[2] = ReviewSample(**{**samples[2].__dict__, "burned_in_text": True})
    with tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **RUN_KWARGS) as run:
        with pytest.raises(PHIError, match="burned-in"):
            run.log_review(samples, "thyroid", image_threshold=0.5, pixel_threshold=0.4)
        with pytest.raises(PHIError, match="burned-in"):
            run.log_volume_figure(
                np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.float32), None, "v1", burned_in_text=True
            )
    assert not any(a.startswith(("overlays/", "images/")) for a in all_artifacts(client, run.run_id))

    tracking_config.deidentified = True
    with tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **RUN_KWARGS) as run:
        summary = run.log_review(samples, "thyroid", image_threshold=0.5, pixel_threshold=0.4)
    assert summary.n_samples == 4
    assert client.get_run(run.run_id).data.tags["deidentified"] == "true"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target_dataset", "/data/hospital/brain"),
        ("aux_data", "1.2.840.113619.2.55.3.604688119"),
        ("code_version", "exported 2021-03-15"),
    ],
)
def test_identifying_tags_stop_the_run_before_it_starts(
    tracking_config: TrackingConfig, client, field: str, value: str
) -> None:
    with (
        pytest.raises(PHIError),
        tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **{**RUN_KWARGS, field: value}),
    ):
        pass
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_identifying_sample_ids_and_metric_names_are_refused(tracking_config: TrackingConfig) -> None:
    samples = make_samples(2)
    with tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **RUN_KWARGS) as run:
        bad = ReviewSample(**{**samples[0].__dict__, "sample_id": "1.2.840.10008.5.1.4.1.1.2"})
        with pytest.raises(PHIError, match="sample_id"):
            run.log_review([bad], "brainmri", image_threshold=0.5, pixel_threshold=0.4)
        with pytest.raises(PHIError, match="metric name"):
            run.log_eval({"20210315": {"image_auroc": 0.5}})
        with pytest.raises(PHIError, match="tag"):
            run.set_tags({"source": "/mnt/pacs/study"})


def test_volume_figure_is_logged(tracking_config: TrackingConfig, client) -> None:
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(6, 32, 32)).astype(np.float32)
    vmap = np.zeros((6, 32, 32), np.float32)
    vmap[3, 8:16, 8:16] = 0.9
    mask = vmap > 0.5
    with tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **RUN_KWARGS) as run:
        path = run.log_volume_figure(volume, vmap, mask, "vol-001", dataset_name="brainmri")
    assert path == "volumes/brainmri/vol-001.png"
    assert path in all_artifacts(client, run.run_id)


def test_volume_slices_give_one_figure_with_every_lesion_slice(tracking_config: TrackingConfig, client) -> None:
    slices = make_volume(depth=30)  # nodule on slices 4-9, more slices than the figure's 24
    with tracked_run(tracking_config, "zero-shot-eval", config_dict={}, **RUN_KWARGS) as run:
        path = run.log_volume_slices(reversed(slices), "vol-7f3a", dataset_name="lungct")
    assert path == "volumes/lungct/vol-7f3a.png" and path in all_artifacts(client, run.run_id)
    from PIL import Image

    figure = np.asarray(Image.open(client.download_artifacts(run.run_id, path)))
    assert figure.shape[0] > 5 * 96 and figure.shape[1] >= 5 * 96, "a 5x5 grid: 24 slices and the extra lesion one"


def test_failed_block_marks_the_run_failed(tracking_config: TrackingConfig, client) -> None:
    with pytest.raises(RuntimeError), tracked_run(tracking_config, "finetune", config_dict={}, **RUN_KWARGS) as run:
        raise RuntimeError("boom")
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_file_store_uris_are_rejected(tmp_path: Path) -> None:
    for uri in (str(tmp_path / "mlruns"), (tmp_path / "mlruns").as_uri()):
        with pytest.raises(ValueError, match="file store"):
            TrackingConfig(tracking_uri=uri)


def test_system_metrics_on_request(tracking_config: TrackingConfig, client) -> None:
    pytest.importorskip("psutil")
    tracking_config.system_metrics = True
    tracking_config.system_metrics_interval_s = 0.2
    with tracked_run(tracking_config, "finetune", config_dict={}, **RUN_KWARGS) as run:
        time.sleep(1.0)
    assert any(key.startswith("system/cpu") for key in client.get_run(run.run_id).data.metrics)


def test_metric_variant_names_become_mlflow_keys():
    from medzsad.tracking.run import mlflow_metric_key

    assert mlflow_metric_key("pixel_aupro@0.3[mvtec-exact]") == "pixel_aupro_0.3_mvtec-exact"
    assert mlflow_metric_key("brain/dice@0.5") == "brain/dice_0.5"


def test_worst_error_copies_never_enter_the_fixed_panel():
    """Samples kept only as worst errors (``errors_only``) go to the false-positive/negative lists, not
    to the panel, so the panel is the same samples whatever the model gets wrong."""
    import dataclasses

    from medzsad.tracking.review import ReviewSelector

    samples = make_samples(8)
    extra = dataclasses.replace(samples[0], sample_id="late-normal", score=0.99, label=0, errors_only=True)
    plain, with_extra = ReviewSelector(4, 2, 0.5), ReviewSelector(4, 2, 0.5)
    for sample in samples:
        plain.offer(sample)
        with_extra.offer(sample)
    with_extra.offer(extra)
    assert [s.sample_id for s in with_extra.panel()] == [s.sample_id for s in plain.panel()]
    assert with_extra.false_positives()[0].sample_id == "late-normal"
