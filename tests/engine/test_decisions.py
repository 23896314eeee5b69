"""`medzsad calibrate`, and what `test` and `predict` do with its file; real NRRD volumes through `test`
with volume- and lesion-level tables."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import TINY_OVERRIDES
from PIL import Image
from scipy import ndimage

from medzsad.cli.main import main
from medzsad.data.prepare import prepare_volumes
from medzsad.engine.calibrate import model_digest, read_calibration
from medzsad.engine.checkpoints import save_checkpoint
from medzsad.engine.config import load_config
from medzsad.engine.jobs import evaluate_config, open_dataset
from medzsad.engine.runtime import build_method
from medzsad.metrics.calibration import conformal_threshold


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_checkpoint(build_method(load_config(None, TINY_OVERRIDES)), folder / "prompts")
    return folder / "prompts.safetensors"


def _calibrate(dataset: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    args = [*TINY_OVERRIDES, f"checkpoint={checkpoint}", f"calibrate.reference={dataset}", f"calibrate.output={out}"]
    return main(["calibrate", *args, "calibrate.target_fpr=0.2", *extra])


def test_calibrate_writes_a_conformal_threshold_of_the_normal_scores(tiny_dataset, checkpoint, tmp_path, capsys):
    out = tmp_path / "calibration.json"
    assert _calibrate(tiny_dataset, checkpoint, out) == 0
    printed = capsys.readouterr().out
    assert "image threshold" in printed and "conformal, alpha=0.2, n=8" in printed
    calibration = read_calibration(out)
    text = out.read_text()
    assert str(tiny_dataset.parent) not in text and "wood" not in text  # no paths, no names
    assert calibration.reference_counts == {"samples": 16, "normal": 8, "anomalous": 8, "volumes": 0}
    config = load_config(None, [*TINY_OVERRIDES, f"checkpoint={checkpoint}", f"data.test=[{tiny_dataset}]"])
    config.eval.output_dir = str(tmp_path / "eval")
    (result,) = evaluate_config(config, quiet=True).values()
    normal = [s.score for s in result.samples if s.label == 0]
    assert calibration.image.value == conformal_threshold(normal, 0.2)
    assert calibration.model_digest == model_digest(build_method(config))
    assert calibration.pixel is not None and calibration.pixel.rule == "pixel_rate" and 0 < calibration.pixel.value <= 1


def test_test_uses_the_calibration_and_refuses_one_for_another_checkpoint(tiny_dataset, checkpoint, tmp_path, capsys):
    out, store = tmp_path / "calibration.json", tmp_path / "store"
    tracking = ["tracking.enabled=true", f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}"]
    tracking.append(f"tracking.artifact_location={store / 'mlartifacts'}")
    rules = ["calibrate.rule=f1max", "calibrate.probability=isotonic"]
    assert _calibrate(tiny_dataset, checkpoint, out, *rules, *tracking) == 0
    calibration = read_calibration(out)
    assert calibration.image.rule == "f1max" and calibration.probability.kind == "isotonic"
    args = [*TINY_OVERRIDES, f"checkpoint={checkpoint}", f"data.test=[aux={tiny_dataset}]"]
    assert main(["test", *args, *tracking, f"calibration={out}", f"eval.output_dir={tmp_path / 'eval'}"]) == 0
    printed = capsys.readouterr().out
    assert f"image threshold {calibration.image.value:.6g} (f1max, n=16)" in printed
    report = json.loads((tmp_path / "eval" / "decisions_aux.json").read_text())
    assert report["thresholds"]["image"]["value"] == calibration.image.value
    assert report["thresholds"]["image"]["origin"] == "f1max, n=16"
    _check_mlflow(store, calibration)
    capsys.readouterr()

    # The same file with another model: other prompts, or another test-time option.
    torch.manual_seed(1)
    save_checkpoint(build_method(load_config(None, TINY_OVERRIDES)), tmp_path / "other")
    refusals = {
        f"checkpoint={tmp_path / 'other'}.safetensors": "made for another checkpoint",
        "method_config.sigma=2": "made for another checkpoint",
        "data.ct_window=[0,100]": "was made with data.ct_window=None, this run uses [0.0, 100.0]",
    }
    for extra, message in refusals.items():
        code = main(["test", *args, extra, f"calibration={out}"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err


def _check_mlflow(store: Path, calibration) -> None:
    """Both runs (calibrate, test) carry the threshold, its origin and the calibration file."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = {}
    for experiment in ("medzsad/calibration", "medzsad/zero-shot-eval"):
        (runs[experiment],) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    for run in runs.values():
        assert float(run.data.params["eval.decision.image_threshold"]) == calibration.image.value
        assert run.data.params["eval.decision.image_origin"] == "f1max, n=16"
        artifact = client.download_artifacts(
            run.info.run_id, "calibration/calibration.json", str(store / run.info.run_id)
        )
        assert json.loads(Path(artifact).read_text())["model_digest"] == calibration.model_digest
    tested = runs["medzsad/zero-shot-eval"].data
    assert tested.tags["decision_rule"] == "f1max" and tested.tags["decision_n"] == "16"
    assert {"image_false_alarm_rate", "image_sensitivity", "image_auroc"} <= set(tested.metrics)


def test_a_damaged_calibration_file_is_one_line(tiny_dataset, checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "medzsad-calibration", "version": 99}')
    code = main(
        ["predict", "-i", str(tiny_dataset.parent), *TINY_OVERRIDES, f"checkpoint={checkpoint}", f"calibration={bad}"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "format version 99" in err


def test_predict_writes_decisions_and_masks(tiny_dataset, checkpoint, tmp_path, shared_data_dir, capsys):
    out = tmp_path / "calibration.json"
    assert _calibrate(tiny_dataset, checkpoint, out, "calibrate.pixel_rule=any_region") == 0
    calibration = read_calibration(out)
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(images / "a.png")
    scan = shared_data_dir / "radiomics-samples" / "breast1_image.nrrd"
    pred = tmp_path / "pred"
    args = [*TINY_OVERRIDES, f"checkpoint={checkpoint}", f"calibration={out}", "calibrate.rescaled=true"]
    assert main(["predict", "-i", str(images), "-i", str(scan), "-o", str(pred), *args]) == 0
    rows = {r["kind"]: r for r in csv.DictReader((pred / "decisions.csv").open())}
    image_row = rows["image"]
    assert int(image_row["decision"]) == int(float(image_row["score"]) >= calibration.image.value)
    assert (float(image_row["rescaled_score"]) >= 0.5) == bool(int(image_row["decision"]))
    amap = np.load(pred / "maps" / f"{image_row['sample_id']}.npz")["anomaly_map"]
    mask = np.asarray(Image.open(pred / "masks" / f"{image_row['sample_id']}.png"))
    np.testing.assert_array_equal(mask > 0, amap >= calibration.pixel.value)
    rescaled = np.load(pred / "rescaled" / f"{image_row['sample_id']}.npz")["rescaled_map"]
    np.testing.assert_array_equal(rescaled >= 0.5, amap >= calibration.pixel.value)
    assert rows["volume"]["decision"] == ""  # no normal volumes in the reference set: no volume threshold
    import nibabel as nib

    (volume_mask,) = (pred / "masks").glob("*_mask.nii.gz")
    (volume_map,) = (pred / "volumes").glob("*_map.nii.gz")
    np.testing.assert_array_equal(
        np.asarray(nib.load(volume_mask).dataobj) > 0,
        np.asarray(nib.load(volume_map).dataobj) >= calibration.pixel.value,
    )


def test_real_nrrd_volumes_through_test_give_volume_and_lesion_tables(shared_data_dir, checkpoint, tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    for case in ("breast1", "brain2"):
        for part in ("image", "label"):
            shutil.copy(shared_data_dir / "radiomics-samples" / f"{case}_{part}.nrrd", raw / f"{case}_{part}.nrrd")
    prepare_volumes(raw, raw / "meta.json", category="mri")
    out = tmp_path / "eval"
    args = [
        *TINY_OVERRIDES,
        f"checkpoint={checkpoint}",
        f"data.test=[vol={raw / 'meta.json'}]",
        f"eval.output_dir={out}",
    ]
    assert main(["test", *args, "eval.lesion_thresholds=[0.2,0.5]"]) == 0
    printed = capsys.readouterr().out
    assert "volume level (2 volumes, score = max)" in printed and "lesion level" in printed
    report = json.loads((out / "decisions_vol.json").read_text())
    assert report["volume_score"] == "max"
    assert set(report["volume_level"]["undefined"]) == {"volume_auroc"}  # both volumes have lesions
    lesion = report["lesion_level"]
    assert {"lesion_sensitivity@0.2", "lesion_fp_per_volume@0.5", "volume_dice@0.5"} <= set(lesion["values"])
    rows = list(csv.DictReader((out / "volumes_vol.csv").open()))
    assert len(rows) == 2 and all(r["label"] == "1" for r in rows)

    # Ground-truth lesions, counted directly from the dataset's own slices (model resolution).
    config = load_config(None, [*TINY_OVERRIDES, f"data.test=[{raw / 'meta.json'}]"])
    dataset = open_dataset(raw / "meta.json", config, 224)
    stacks: dict[str, dict[int, np.ndarray]] = {}
    for i in range(len(dataset)):
        sample = dataset[i]
        stacks.setdefault(sample.volume_id, {})[sample.slice_index] = sample.mask.numpy() > 0.5
    for row in rows:
        slices = stacks[row["volume_id"]]
        volume = np.stack([slices[k] for k in sorted(slices)])
        _, expected = ndimage.label(volume, structure=np.ones((3, 3, 3)))
        assert int(row["lesions"]) == expected >= 1
        assert int(row["slices"]) == len(slices)
    slice_scores = list(csv.DictReader((out / "scores_vol.csv").open()))
    for row in rows:
        scores = [float(r["score"]) for r in slice_scores if r["volume_id"] == row["volume_id"]]
        assert float(row["volume_score"]) == pytest.approx(max(scores))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("calibrate.rule=median", "calibrate.rule: expected one of conformal, f1max, youden, sensitivity"),
        ("calibrate.target_fpr=1.5", "calibrate.target_fpr: expected a number between 0 and 1"),
        ("eval.volume_score=mean", "eval.volume_score: expected one of max, topk_mean"),
        ("eval.volume_top_k=0", "eval.volume_top_k: expected at least 1"),
    ],
)
def test_decision_keys_are_checked_up_front(override, message, capsys):
    assert main(["calibrate", *TINY_OVERRIDES, override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def _error_lines(err: str) -> str:
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith("test reference:"))


def test_calibrate_without_reference_or_with_too_few_normals_is_one_line(tiny_dataset, checkpoint, tmp_path, capsys):
    assert main(["calibrate", *TINY_OVERRIDES, f"checkpoint={checkpoint}"]) == 2
    assert "calibrate.reference: give the reference scans" in capsys.readouterr().err
    assert _calibrate(tiny_dataset, checkpoint, tmp_path / "c.json", "calibrate.target_fpr=0.05") == 2
    err = _error_lines(capsys.readouterr().err)  # progress lines of the reference pass come first
    assert err.count("\n") == 1 and "8 normal reference scores are too few for alpha=0.05 (need at least 19)" in err
