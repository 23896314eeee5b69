"""Calibrated decisions and few-shot references in the deployment paths: ``Detector`` (PyTorch and
onnxruntime), ``predict --engine onnx`` and ``medzsad export`` decide exactly as ``medzsad predict`` does
with the same calibration and references, and refuse files made for another model in one line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_helpers import TINY
from PIL import Image

from medzsad.cli.main import main
from medzsad.data.transforms import ClipImageTransform
from medzsad.deploy import DeployError, Detector, Thresholds
from medzsad.deploy.export import calibration_from_metadata, export_metadata
from medzsad.deploy.onnx_runtime import ExportMetadata, OnnxModel
from medzsad.engine.calibrate import CalibrationError, read_calibration
from medzsad.engine.checkpoints import save_checkpoint
from medzsad.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig

TOLERANCE = 1e-4
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ac(deployed):
    return deployed("anomalyclip")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Three few-shot reference PNGs (``refs/``), six normal calibration PNGs with their manifest
    (``calib/good/``, ``calib/meta.json``) and a test PNG with a bright square: textures of one kind."""
    root = tmp_path_factory.mktemp("decisions")
    rng = np.random.default_rng(3)
    for folder, count in (("refs", 3), ("calib/good", 6)):
        (root / folder).mkdir(parents=True)
        for index in range(count):
            texture = rng.normal(120, 20, (64, 72, 3)) + 30 * np.sin(np.arange(72) / 4.0)[None, :, None]
            Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8)).save(root / folder / f"n{index}.png")
    assert main(["prepare", "folder", str(root / "calib")]) == 0
    test = np.clip(rng.normal(120, 20, (64, 72, 3)), 0, 255).astype(np.uint8)
    test[20:40, 30:50] = 250
    (root / "test").mkdir()
    Image.fromarray(test).save(root / "test" / "case.png")
    return {
        "refs": root / "refs",
        "calib": root / "calib" / "meta.json",
        "test": root / "test" / "case.png",
        "root": root,
    }


@pytest.fixture(scope="module")
def calibration(ac, data) -> Path:
    out = data["root"] / "calibration.json"
    args = ["calibrate", *TINY, f"checkpoint={ac.checkpoint}", f"calibrate.reference={data['calib']}"]
    assert main([*args, f"calibrate.output={out}", "calibrate.target_fpr=0.2"]) == 0
    return out


def _decisions(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "decisions.csv", newline="") as handle:
        return {row["kind"]: row for row in csv.DictReader(handle)}


def _image_map(folder: Path) -> tuple[np.ndarray, float]:
    (path,) = sorted((folder / "maps").glob("*.npz"))
    stored = np.load(path)
    return stored["anomaly_map"], float(stored["score"])


def test_calibrated_detector_decides_as_predict_on_both_engines(ac, data, calibration, tmp_path):
    rules = read_calibration(calibration)
    assert rules.pixel is not None and rules.volume is None  # 2-D references: no volume threshold
    on_torch = Detector.from_checkpoint(ac.checkpoint, calibration=calibration)(data["test"])
    assert on_torch.decision == (on_torch.score >= rules.image.value)
    assert on_torch.origin == rules.image.origin() and "conformal" in on_torch.origin
    assert np.array_equal(on_torch.mask, on_torch.map >= rules.pixel.value)

    # The ONNX file was exported before the calibration existed: its model digest still matches.
    on_onnx = Detector.from_onnx(ac.onnx, calibration=calibration)(data["test"])
    assert abs(on_onnx.score - on_torch.score) <= TOLERANCE and on_onnx.decision == on_torch.decision
    assert on_onnx.origin == on_torch.origin

    for engine in ("torch", "onnx"):
        out = tmp_path / engine
        model = ac.onnx if engine == "onnx" else ac.checkpoint
        args = ["predict", "-i", str(data["test"]), "-o", str(out), *TINY, f"checkpoint={model}"]
        assert main([*args, f"calibration={calibration}", f"predict.engine={engine}"]) == 0
        row = _decisions(out)["image"]
        assert float(row["threshold"]) == pytest.approx(rules.image.value)
        assert int(row["decision"]) == int(on_torch.decision)
        assert float(row["score"]) == pytest.approx(on_torch.score, abs=TOLERANCE)
        (mask_file,) = (out / "masks").glob("*.png")
        assert np.array_equal(np.asarray(Image.open(mask_file)) > 0, on_torch.mask)


def test_volume_without_a_volume_threshold_gets_no_decision(ac, calibration):
    volume = np.random.default_rng(0).normal(100, 30, (40, 36, 5)).astype(np.float32)
    result = Detector.from_checkpoint(ac.checkpoint, calibration=calibration)(volume)
    assert result.decision is None and result.origin == "no volume threshold in the calibration"
    assert result.mask is not None and result.mask.shape == volume.shape  # the pixel threshold still applies
    detector = Detector.from_checkpoint(ac.checkpoint)
    uncalibrated = detector(volume)
    assert uncalibrated.decision == (uncalibrated.score >= 0.5) and uncalibrated.origin == "fixed, not calibrated"
    detector.thresholds = Thresholds(image=1.0, pixel=0.9, volume=0.0)  # fixed thresholds of one's own
    own = detector(volume)
    assert own.decision is True and np.array_equal(own.mask, own.map >= 0.9)
    assert detector(volume[..., 0]).decision is False  # a 2-D image: the image threshold


def test_exported_metadata_carries_the_calibration(ac, calibration, tiny_backbone):
    from medzsad.deploy.model import load_method

    method = load_method(ac.checkpoint)
    rules = read_calibration(calibration)
    props = export_metadata(method, ClipImageTransform(224), rules).to_props()
    restored = ExportMetadata.from_props(props, "model.onnx")
    assert calibration_from_metadata(restored) == rules
    assert restored.thresholds["image"] == rules.image.value and "conformal" in restored.thresholds["source"]
    assert str(calibration.parent) not in "".join(props.values())  # no paths in the file


def test_calibration_for_another_model_is_refused(ac, calibration, tiny_backbone, tmp_path):
    torch.manual_seed(7)
    save_checkpoint(AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(image_size=224)), tmp_path / "other")
    with pytest.raises(CalibrationError, match="another checkpoint") as info:
        Detector.from_checkpoint(tmp_path / "other.safetensors", calibration=calibration)
    assert "\n" not in str(info.value) and "recalibrate" in str(info.value)
    padded = ClipImageTransform(224, pad_to_square=True)
    with pytest.raises(CalibrationError, match=r"data\.pad_to_square"):
        Detector.from_checkpoint(ac.checkpoint, calibration=calibration, transform=padded)


def test_fewshot_detector_matches_predict_with_references(ac, data, calibration, tmp_path):
    fewshot = {"k": 3, "bank_dir": str(tmp_path / "banks")}
    detector = Detector.from_checkpoint(ac.checkpoint, reference=data["refs"], fewshot=fewshot)
    result = detector(data["test"])
    args = ["predict", "-i", str(data["test"]), "-o", str(tmp_path / "pred"), *TINY, f"checkpoint={ac.checkpoint}"]
    assert main([*args, f"reference={data['refs']}", "fewshot.k=3", f"fewshot.bank_dir={tmp_path / 'banks'}"]) == 0
    expected_map, expected_score = _image_map(tmp_path / "pred")
    assert np.abs(result.map - expected_map).max() <= 1e-5 and result.score == pytest.approx(expected_score, abs=1e-5)
    zero_shot = Detector.from_checkpoint(ac.checkpoint)(data["test"])
    assert np.abs(zero_shot.map - result.map).max() > 1e-3  # the bank changes the map
    (bank,) = (tmp_path / "banks").glob("*.safetensors")  # built once, reused by predict
    again = Detector.from_checkpoint(ac.checkpoint, reference=bank)(data["test"])
    assert np.abs(again.map - result.map).max() <= 1e-6
    # A zero-shot calibration means nothing for fused scores: refused.
    with pytest.raises(CalibrationError, match="another checkpoint"):
        Detector.from_checkpoint(ac.checkpoint, calibration=calibration, reference=bank)
    with pytest.raises(DeployError, match=r"fewshot: .*map_rule"):
        Detector.from_checkpoint(ac.checkpoint, reference=bank, fewshot={"map_rule": "median"})
    with pytest.raises(DeployError, match="reference: an exported file is zero-shot"):
        Detector.from_onnx(ac.onnx, reference=bank)


def test_fewshot_calibrated_export_matches_pytorch(ac, data, tmp_path, capsys):
    """``medzsad export reference=... calibration=...``: the bank is folded into the graph and the
    thresholds into the metadata; the file scores as the PyTorch few-shot detector does."""
    banks, cal = tmp_path / "banks", tmp_path / "fewshot_calibration.json"
    refs = [f"reference={data['refs']}", "fewshot.k=2", f"fewshot.bank_dir={banks}"]
    common = [*TINY, f"checkpoint={ac.checkpoint}", *refs]
    args = ["calibrate", *common, f"calibrate.reference={data['calib']}", f"calibrate.output={cal}"]
    assert main([*args, "calibrate.target_fpr=0.2"]) == 0
    capsys.readouterr()
    assert main(["export", "-o", str(tmp_path / "export"), "--format", "onnx", *common, f"calibration={cal}"]) == 0
    printed = capsys.readouterr().out  # what went into the file, said at once
    assert "decisions: image " in printed and "(calibrated (conformal, alpha=0.2, n=6))" in printed
    assert "few-shot bank: k=2, layers 2,4,6,8" in printed
    model = OnnxModel(tmp_path / "export" / "model.onnx")
    assert calibration_from_metadata(model.metadata) == read_calibration(cal)
    assert '"k": "2"' in model.metadata.extra["fewshot"]

    on_torch = Detector.from_checkpoint(ac.checkpoint, cal, data["refs"], fewshot={"k": 2, "bank_dir": str(banks)})
    on_onnx = Detector.from_onnx(tmp_path / "export" / "model.onnx")
    for image in (data["test"], *sorted(data["refs"].glob("*.png"))[:2]):
        a, b = on_torch(image), on_onnx(image)
        assert abs(a.score - b.score) <= TOLERANCE and np.abs(a.map - b.map).max() <= TOLERANCE
        assert a.decision == b.decision and a.origin == b.origin
