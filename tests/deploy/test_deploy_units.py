"""Fast checks of the deployment pieces that need no export: metadata, backbone identity, config keys."""

from __future__ import annotations

import pytest

from medzsad.data.transforms import ClipImageTransform, Intensity
from medzsad.deploy.errors import DeployError
from medzsad.deploy.export import describe_transform, transform_from_metadata
from medzsad.deploy.model import backbone_config
from medzsad.deploy.onnx_runtime import EXPORT_FORMAT, ExportMetadata, OnnxModel
from medzsad.engine.config import ConfigError, load_config


def _metadata(transform: ClipImageTransform) -> ExportMetadata:
    return ExportMetadata(
        method="cops",
        image_size=transform.image_size,
        preprocessing=describe_transform(transform),
        thresholds={"image": 0.4, "pixel": 0.6, "source": "test"},
        medzsad_version="0.1.0",
        extra={"opset": "18"},
    )


def test_metadata_round_trip_rebuilds_the_transform():
    transform = ClipImageTransform(336, pad_to_square=True, intensity=Intensity("window", window=(50.0, 400.0)))
    props = _metadata(transform).to_props()
    assert props["medzsad_export_format"] == str(EXPORT_FORMAT) and all(isinstance(v, str) for v in props.values())
    back = ExportMetadata.from_props(props, "model.onnx")
    assert back.thresholds["pixel"] == 0.6 and back.extra == {"opset": "18"}
    rebuilt = transform_from_metadata(back)
    assert rebuilt.image_size == 336 and rebuilt.pad_to_square
    assert rebuilt.intensity == transform.intensity and rebuilt.mean == transform.mean


def test_metadata_of_another_format_or_none_is_refused():
    props = _metadata(ClipImageTransform(224)).to_props()
    with pytest.raises(DeployError, match=r"model.onnx: written by medzsad 0.1.0 in export format 7"):
        ExportMetadata.from_props({**props, "medzsad_export_format": "7"}, "model.onnx")
    with pytest.raises(DeployError, match="not a medzsad export"):
        ExportMetadata.from_props({}, "model.onnx")
    with pytest.raises(DeployError, match="damaged medzsad metadata"):
        ExportMetadata.from_props({**props, "thresholds": "{"}, "model.onnx")


def test_missing_onnx_file(tmp_path):
    with pytest.raises(DeployError, match="ONNX file not found"):
        OnnxModel(tmp_path / "none.onnx")


def test_backbone_from_checkpoint_identity():
    random = backbone_config({"backbone": "medzsad-tiny", "backbone_weights": "random:3"}, None, "c.json")
    assert random.pretrained is None and random.seed == 3 and random.model_name == "medzsad-tiny"
    tagged = backbone_config({"backbone": "ViT-L-14-336", "backbone_weights": "openai"}, None, "c.json")
    assert tagged.pretrained == "openai"
    with pytest.raises(DeployError, match=r"c\.json: trained on a local weight file.*weights_path"):
        backbone_config({"backbone": "ViT-L-14-336", "backbone_weights": "file:abc"}, None, "c.json")
    local = backbone_config({"backbone": "ViT-L-14-336", "backbone_weights": "file:abc"}, "/w.pt", "c.json")
    assert local.weights_path == "/w.pt"


def test_predict_engine_key_is_validated():
    assert load_config(overrides=["predict.engine=onnx"]).predict.engine == "onnx"
    with pytest.raises(ConfigError, match="predict: engine: expected torch or onnx, got 'tensorrt'"):
        load_config(overrides=["predict.engine=tensorrt"])


def test_detector_runs_an_official_checkpoint_as_the_official_code(parity_dir, tmp_path):
    """An official release ``.pth`` (``{"prompt_learner": ...}``) on its backbone file scores the parity
    fixtures as the official code did (the parity suite's tolerance on maps and scores)."""
    import numpy as np
    import torch

    from medzsad.deploy import Detector

    torch.save({"prompt_learner": torch.load(parity_dir / "anomalyclip" / "prompt_init.pt")}, tmp_path / "e15.pth")
    weights = str(parity_dir / "clip_tiny_openai_layout.pt")
    with pytest.raises(DeployError, match="does not record its method"):
        Detector.from_checkpoint(tmp_path / "e15.pth", weights_path=weights)
    detector = Detector.from_checkpoint(tmp_path / "e15.pth", method="anomalyclip", weights_path=weights)
    images = torch.from_numpy(np.load(parity_dir / "inputs" / "inputs.npz")["images_preprocessed"])
    scores, maps = detector.score_images(images)
    expected_maps = np.load(parity_dir / "anomalyclip" / "maps518.npz")["infer/anomaly_map"]
    expected_scores = np.load(parity_dir / "anomalyclip" / "outputs.npz")["infer/image_score"]
    np.testing.assert_allclose(maps, expected_maps.reshape(maps.shape), atol=1e-5)
    np.testing.assert_allclose(scores, expected_scores.reshape(scores.shape), atol=1e-5)


def test_the_runnable_example_of_docs_deploy_prints_what_it_says(tmp_path):
    """docs/deploy.md's end-to-end example runs as written and prints the line its last comment shows."""
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    example = text.split("Runnable end to end", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    expected = example.rstrip().splitlines()[-1].lstrip("# ")
    done = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == expected


def test_a_multi_frame_colour_file_is_scored_frame_by_frame(tmp_path):
    """A two-frame RGB DICOM (pydicom's test file) is not one image: ``detector(path)`` says to use
    ``frames``, which gives one detection per frame, each the detection of that frame alone."""
    import numpy as np
    import torch
    from pydicom.data import get_testdata_file

    from medzsad.backbone.clip import BackboneConfig, ClipBackbone
    from medzsad.data.readers import read_frames
    from medzsad.deploy import Detector
    from medzsad.engine.checkpoints import save_checkpoint
    from medzsad.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig

    path = get_testdata_file("SC_rgb_2frame.dcm", download=False)
    torch.manual_seed(0)
    backbone = ClipBackbone.from_config(BackboneConfig(model_name="medzsad-tiny-fast", pretrained=None))
    save_checkpoint(AnomalyCLIP(backbone, AnomalyCLIPConfig(image_size=224)), tmp_path / "ck")
    detector = Detector.from_checkpoint(tmp_path / "ck.safetensors")
    with pytest.raises(DeployError, match=r"2 frames .*detector\.frames"):
        detector(path)
    results = detector.frames(path)
    frames = read_frames(path)
    assert len(results) == 2 and all(r.map.shape == (100, 100) for r in results)
    for result, frame in zip(results, frames):
        alone = detector(frame.array)
        assert result.score == alone.score and np.array_equal(result.map, alone.map)
