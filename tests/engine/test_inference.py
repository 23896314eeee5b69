"""The one inference loop: predictions on the Batch, and folder/volume prediction through it."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from engine_helpers import TINY_OVERRIDES
from PIL import Image

from medzsad.data.records import collate_samples
from medzsad.data.synthetic import make_phantom, write_phantom_nifti
from medzsad.data.volumes import read_volume
from medzsad.engine.config import load_config
from medzsad.engine.inference import indexed, predict_batches
from medzsad.engine.jobs import make_transform
from medzsad.engine.predict import predict_paths, samples_from_file
from medzsad.engine.runtime import build_method


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Five PNGs (batches of 3 straddle files) and a 7-slice volume (a short last batch)."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        pixels = rng.integers(0, 256, (40 + 5 * i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
    image, _ = make_phantom((7, 40, 32))
    write_phantom_nifti(root / "scan.nii.gz", image)
    return root


def _method(name: str):
    torch.manual_seed(0)
    config = load_config(None, [*TINY_OVERRIDES, f"method={name}"])
    return build_method(config).eval(), make_transform(config, 224)


def _scores(inputs, folder, batch_size: int, method, transform) -> dict[str, float]:
    sources = [inputs / "images", inputs / "scan.nii.gz"]
    predict_paths(method, sources, folder, torch.device("cpu"), transform, batch_size)
    rows = csv.DictReader((folder / "scores.csv").open())
    return {row["sample_id"]: float(row["score"]) for row in rows}


def test_folder_and_volume_prediction_equal_the_model_on_each_image(inputs, tmp_path):
    method, transform = _method("anomalyclip")
    scores = _scores(inputs, tmp_path / "out", 3, method, transform)
    (written,) = (tmp_path / "out" / "volumes").glob("*_map.nii.gz")
    assert read_volume(written).shape == (7, 40, 32)
    assert sum(1 for key in scores if ":" in key) == 7  # one row per slice
    for index in range(5):
        (sample,) = samples_from_file(inputs / "images" / f"{index}.png", transform)
        with torch.no_grad():
            expected = float(method.predict(sample.image[None]).image_scores[0])
        assert scores[sample.sample_id] == pytest.approx(expected, abs=1e-6)
        saved = np.load(tmp_path / "out" / "maps" / f"{sample.sample_id}.npz")["anomaly_map"]
        assert saved.shape == (40 + 5 * index, 48)


def test_sampling_method_scores_do_not_depend_on_the_batch_size(inputs, tmp_path):
    method, transform = _method("cops")
    one = _scores(inputs, tmp_path / "one", 1, method, transform)
    four = _scores(inputs, tmp_path / "four", 4, method, transform)
    assert one.keys() == four.keys() and len(one) == 12
    for key, value in one.items():
        assert four[key] == pytest.approx(value, abs=1e-5), key


def test_predictions_are_written_onto_the_batch(inputs):
    method, transform = _method("cops")
    samples = [samples_from_file(inputs / "images" / f"{i}.png", transform)[0] for i in range(5)]
    batches = [collate_samples(samples[:2]), collate_samples(samples[2:])]
    out = list(predict_batches(method, indexed(batches), torch.device("cpu"), seed=3))
    assert [len(b) for b in out] == [2, 3] and out[0] is batches[0]
    assert out[1].pred_score.shape == (3,) and out[1].anomaly_map.shape == (3, 224, 224)
    results = out[1].results()
    assert [r.sample_id for r in results] == [s.sample_id for s in samples[2:]]
    assert results[0].score == pytest.approx(float(out[1].pred_score[0]))
    # Sample 2 is index 2 whichever batch it is in: alone, it gets the same draws and score.
    (alone,) = predict_batches(method, [(collate_samples(samples[2:3]), [(2,)])], torch.device("cpu"), seed=3)
    assert float(alone.pred_score[0]) == pytest.approx(float(out[1].pred_score[0]), abs=1e-6)
