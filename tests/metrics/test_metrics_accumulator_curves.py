"""Curves for figures come from the same state as the numbers."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc, roc_auc_score

from medzsad.metrics import MetricAccumulator


def test_curves_match_the_reported_areas():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 32, 32), dtype=bool)
    masks[3:, 8:16, 8:20] = True
    maps = rng.random((6, 32, 32)).astype(np.float32) + masks * 0.4
    scores = maps.reshape(6, -1).max(axis=1)
    accumulator = MetricAccumulator()
    accumulator.update("tile", scores=scores, maps=maps, masks=masks)
    curves = accumulator.curves()["tile"]
    report = accumulator.compute().per_category["tile"]
    fpr, tpr = curves["image_roc"]
    assert auc(fpr, tpr) == report["image_auroc"] == roc_auc_score(masks.any(axis=(1, 2)), scores)
    pro_fpr, pro = curves["pixel_pro"]
    assert pro_fpr[-1] == 0.3
    assert abs(auc(pro_fpr, pro) / 0.3 - report["pixel_aupro@0.3[mvtec-exact]"]) < 1e-12
    assert set(curves) == {"image_roc", "image_pr", "pixel_pro"}


def test_no_curves_where_undefined():
    accumulator = MetricAccumulator()
    accumulator.update("brain", scores=[0.1, 0.2], labels=[0, 0])
    assert accumulator.curves() == {"brain": {}}
