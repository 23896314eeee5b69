"""The Detector API, ``predict --engine onnx``, the MONAI bundle and the one-line refusals (AnomalyCLIP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from deploy_helpers import TINY
from PIL import Image

from medzsad.cli.main import main
from medzsad.deploy import DeployError, Detector
from medzsad.deploy.export import export_onnx
from medzsad.deploy.onnx_runtime import OnnxModel
from medzsad.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig

TOLERANCE = 1e-4
pytestmark = pytest.mark.slow  # each method is exported once per session (minutes on 2 shared cores)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    """A small NIfTI volume (anisotropic, 5 slices) and an RGB PNG."""
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 30, (40, 36, 5)).astype(np.float32)
    volume[10:20, 12:22, 2] += 150
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.9, 3.0, 1.0])), root / "scan.nii.gz")
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / "img.png")
    return {"nifti": root / "scan.nii.gz", "png": root / "img.png"}


@pytest.fixture(scope="module")
def ac(deployed):
    return deployed("anomalyclip")


@pytest.fixture(scope="module")
def torch_predictions(ac, scans, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pred_torch")
    args = ["predict", "-i", str(scans["nifti"]), "-i", str(scans["png"]), "-o", str(out), *TINY]
    assert main([*args, f"checkpoint={ac.checkpoint}"]) == 0
    return out


def _volume_map(folder: Path) -> np.ndarray:
    (path,) = sorted((folder / "volumes").glob("*_map.nii.gz"))
    return np.asarray(nib.load(path).dataobj, dtype=np.float32)


def _image_map(folder: Path) -> tuple[np.ndarray, float]:
    (path,) = sorted((folder / "maps").glob("*.npz"))
    data = np.load(path)
    return data["anomaly_map"], float(data["score"])


def test_predict_engine_onnx_matches_torch(ac, scans, torch_predictions, tmp_path):
    args = ["predict", "--engine", "onnx", "-i", str(scans["nifti"]), "-i", str(scans["png"]), "-o", str(tmp_path)]
    assert main([*args, *TINY, f"checkpoint={ac.onnx}"]) == 0
    assert np.abs(_volume_map(tmp_path) - _volume_map(torch_predictions)).max() <= TOLERANCE
    onnx_map, onnx_score = _image_map(tmp_path)
    torch_map, torch_score = _image_map(torch_predictions)
    assert onnx_map.shape == torch_map.shape == (60, 80)
    assert np.abs(onnx_map - torch_map).max() <= TOLERANCE and abs(onnx_score - torch_score) <= TOLERANCE
    assert (tmp_path / "scores.csv").read_text().count("\n") == (torch_predictions / "scores.csv").read_text().count(
        "\n"
    )


def test_monai_bundle_run_matches_predict(ac, scans, torch_predictions, tmp_path):
    for name in ("configs/inference.json", "configs/metadata.json", "models/model.onnx", "docs/README.md"):
        assert (ac.bundle / name).is_file(), name
    assert json.loads((ac.bundle / "configs/metadata.json").read_text())["network_data_format"]["inputs"]
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--bundle_root", ".", "--dataset_dir", str(scans["nifti"]), "--output_dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(command, cwd=ac.bundle, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.abs(_volume_map(tmp_path) - _volume_map(torch_predictions)).max() <= TOLERANCE


def test_detector_on_path_array_and_metatensor(ac, scans, torch_predictions):
    from monai.data import MetaTensor
    from monai.transforms import LoadImage

    detector = Detector.from_checkpoint(ac.checkpoint)
    on_file = detector(scans["nifti"])
    expected = _volume_map(torch_predictions)
    assert on_file.map.shape == expected.shape == (40, 36, 5)
    assert np.abs(on_file.map - expected).max() <= TOLERANCE
    assert on_file.mask.dtype == bool and on_file.mask.shape == on_file.map.shape
    assert on_file.decision == (on_file.score >= 0.5) and len(on_file.slice_scores) == 5
    assert on_file.score == pytest.approx(float(on_file.slice_scores.max()))

    array = np.asarray(nib.load(scans["nifti"]).dataobj, dtype=np.float32)
    on_array_volume = detector(array)  # identity affine: same axis order and directions as the file's
    assert np.abs(on_array_volume.map - expected).max() <= TOLERANCE

    loaded = LoadImage(image_only=True)(str(scans["nifti"]))
    on_meta = detector(loaded)
    assert isinstance(on_meta.map, MetaTensor) and tuple(on_meta.map.shape) == tuple(loaded.shape)
    assert torch.equal(on_meta.map.affine, loaded.affine)
    assert np.abs(on_meta.map.numpy() - expected).max() <= TOLERANCE

    png = np.asarray(Image.open(scans["png"]))
    on_array = detector(png)
    torch_map, torch_score = _image_map(torch_predictions)
    assert on_array.map.shape == (60, 80) and np.abs(on_array.map - torch_map).max() <= TOLERANCE
    assert on_array.score == pytest.approx(torch_score, abs=TOLERANCE)
    on_png_meta = detector(LoadImage(image_only=True, dtype=np.uint8)(str(scans["png"])))  # 8-bit path
    assert tuple(on_png_meta.map.shape) == (80, 60)  # MONAI's [x, y] order kept
    assert np.abs(on_png_meta.map.numpy().T - torch_map).max() <= TOLERANCE


def test_onnx_detector_matches_torch_detector(ac, scans):
    on_onnx = Detector.from_onnx(ac.onnx)(scans["png"])
    on_torch = Detector.from_checkpoint(ac.checkpoint)(scans["png"])
    assert abs(on_onnx.score - on_torch.score) <= TOLERANCE
    assert np.abs(on_onnx.map - on_torch.map).max() <= TOLERANCE
    assert on_onnx.decision == on_torch.decision


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_checkpoint_without_metadata(ac, tmp_path, capsys):
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(ac.checkpoint.read_bytes())
    err = _one_line_error(capsys, ["export", "-o", str(tmp_path / "x"), *TINY, f"checkpoint={lonely}"])
    assert "lonely.json" in err and "metadata not found" in err
    with pytest.raises(Exception, match="metadata not found"):
        Detector.from_checkpoint(lonely)


def test_onnx_file_from_another_version(ac, tmp_path, capsys):
    model = onnx.load(str(ac.onnx))
    for prop in model.metadata_props:
        if prop.key == "medzsad_export_format":
            prop.value = "0"
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    args = ["predict", "--engine", "onnx", "-i", str(tmp_path), "-o", str(tmp_path / "out"), *TINY]
    err = _one_line_error(capsys, [*args, f"checkpoint={old}"])
    assert "old.onnx" in err and "export format 0" in err and "export the checkpoint again" in err
    del model.metadata_props[:]
    onnx.save(model, str(old))
    with pytest.raises(DeployError, match="not a medzsad export"):
        OnnxModel(old)


class _ThresholdsOnPixels(AnomalyCLIP):
    """A method whose predict takes a Python decision on pixel values (not traceable)."""

    def predict(self, images):
        if float(images.mean()) > 10:  # a Python branch on data: tracing cannot follow it
            images = images * 0
        return super().predict(images)


def test_untraceable_method_is_refused_with_the_reason(tiny_backbone, tmp_path):
    method = _ThresholdsOnPixels(tiny_backbone, AnomalyCLIPConfig(image_size=224))
    with pytest.raises(DeployError) as info:
        export_onnx(method, tmp_path / "bad.onnx")
    text = str(info.value)
    assert "cannot be traced" in text and "anomalyclip" in text and "tensor operations" in text
    assert "at test_deploy_api.py:" in text and "data-dependent" in text  # where, and why
    assert "\n" not in text and not (tmp_path / "bad.onnx").exists()


def test_detector_on_a_real_dicom_series_matches_predict(ac, tmp_path):
    """A real CT series folder (pydicom's CT5N, 5 slices): both detectors give predict's map volume."""
    from pydicom.data import get_testdata_file

    series = Path(get_testdata_file("CT_small.dcm", download=False)).parent / "dicomdirtests" / "98892001" / "CT5N"
    assert main(["predict", "-i", str(series), "-o", str(tmp_path), *TINY, f"checkpoint={ac.checkpoint}"]) == 0
    expected = _volume_map(tmp_path)
    for detector in (Detector.from_checkpoint(ac.checkpoint), Detector.from_onnx(ac.onnx)):
        result = detector(series)
        assert result.map.shape == expected.shape == (16, 16, 5) and len(result.slice_scores) == 5
        assert np.abs(result.map - expected).max() <= TOLERANCE
