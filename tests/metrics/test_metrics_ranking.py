"""Image- and pixel-level AUROC, AP and F1-max against scikit-learn, and their undefined cases."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_synthetic import random_category, realistic_category
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from medzsad.metrics import MetricSet, UndefinedMetricError, image_metrics, pixel_metrics


def _sklearn_f1_max(labels, scores) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.max(f1[np.isfinite(f1)]))


def _image_case(seed: int, decimals: int | None, n: int = 80):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.35
    scores = rng.normal(size=n) + 0.8 * labels
    return (np.round(scores, decimals) if decimals is not None else scores), labels


@pytest.mark.parametrize("decimals", [None, 2, 1, 0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_match_sklearn(seed, decimals):
    scores, labels = _image_case(seed, decimals)
    ours = image_metrics(scores, labels.astype(int))
    assert ours["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert ours["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert ours["image_f1max"] == pytest.approx(_sklearn_f1_max(labels, scores), abs=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda: random_category(5, (24, 30), seed=3),
        lambda: random_category(5, (24, 30), seed=4, decimals=1),
        lambda: random_category(5, (24, 30), seed=5, decimals=2),
        lambda: realistic_category(5, 48, seed=6),
    ],
)
def test_pixel_metrics_match_sklearn(make):
    maps, masks = make()
    ours = pixel_metrics(maps, masks)
    labels, scores = masks.ravel(), maps.ravel()
    assert ours["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert ours["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert ours["pixel_f1max"] == pytest.approx(_sklearn_f1_max(labels, scores), abs=1e-12)
    assert ours.counts == {
        "normal_pixels": int((~masks).sum()),
        "anomalous_pixels": int(masks.sum()),
        "regions": ours.counts["regions"],
    }


def test_constant_scores():
    labels = np.array([0, 0, 0, 1])
    result = image_metrics(np.ones(4), labels)
    assert result["image_auroc"] == 0.5
    assert result["image_ap"] == pytest.approx(0.25)  # the prevalence
    assert result["image_f1max"] == pytest.approx(2 * 0.25 / 1.25)


def test_only_anomalous_images_reports_what_is_defined():
    result = image_metrics([0.2, 0.9, 0.5], [1, 1, 1])
    assert result.undefined == {"image_auroc": "no normal images"}
    assert result["image_ap"] == 1.0
    with pytest.raises(UndefinedMetricError, match="image_auroc is undefined: no normal images"):
        result["image_auroc"]
    assert "image_auroc" not in result
    assert result.get("image_auroc") is None


def test_no_anomalous_images_leaves_everything_undefined():
    result = image_metrics([0.2, 0.9], [0, 0])
    assert len(result) == 0
    assert set(result.undefined) == {"image_auroc", "image_ap", "image_f1max"}
    assert result.names() == ["image_auroc", "image_ap", "image_f1max"]


def test_pixel_metrics_without_anomalous_pixels_are_undefined_with_reason():
    maps = np.random.default_rng(0).random((2, 8, 8))
    result = pixel_metrics(maps, np.zeros((2, 8, 8)))
    assert isinstance(result, MetricSet)
    assert len(result) == 0
    assert result.undefined["pixel_auroc"] == "no anomalous pixels"
    assert "no anomalous pixels" in result.undefined["pixel_aupro@0.3[mvtec-exact]"]


def test_pixel_metrics_with_only_anomalous_pixels():
    maps = np.random.default_rng(0).random((2, 8, 8))
    result = pixel_metrics(maps, np.ones((2, 8, 8), dtype=np.uint8))
    assert result["pixel_ap"] == 1.0
    assert set(result.undefined) == {"pixel_auroc", "pixel_aupro@0.3[mvtec-exact]"}


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, np.nan, 0.3], [0, 1, 0], "1 non-finite"),
        ([0.1, np.inf, -np.inf], [0, 1, 0], "2 non-finite"),
        ([0.1, 0.2], [0, 1, 1], "shape"),
        ([0.1, 0.2], [0, 2], "binary"),
        ([[0.1, 0.2]], [0, 1], "1-D"),
        ([True, False], [0, 1], "real-valued"),
    ],
)
def test_image_input_errors(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        image_metrics(scores, labels)


def test_map_input_errors_name_the_problem():
    maps = np.random.default_rng(0).random((3, 8, 8))
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[1, 2:4, 2:4] = True
    bad = maps.copy()
    bad[2, 1, 1], bad[2, 5, 5] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"2 non-finite value\(s\).*\(2, 1, 1\)"):
        pixel_metrics(bad, masks)
    with pytest.raises(ValueError, match=r"map shape \(3, 8, 8\) != mask shape \(3, 8, 9\)"):
        pixel_metrics(maps, np.zeros((3, 8, 9)))
    with pytest.raises(ValueError, match=r"maps\[1\]: map shape \(8, 8\) != mask shape \(4, 4\)"):
        pixel_metrics(list(maps), [masks[0], masks[1][:4, :4], masks[2]])
    with pytest.raises(ValueError, match=r"binary.*e\.g\. \[255\]"):
        pixel_metrics(maps, masks.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="squeeze the channel axis"):
        pixel_metrics(maps[:, None], masks[:, None])
