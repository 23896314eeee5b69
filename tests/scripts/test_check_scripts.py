"""The GPU/precision check scripts run (on the CPU here) and measure what they claim to measure."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check_cuda():
    return load_script("check_cuda")


def test_check_cuda_on_cpu_compares_precisions_and_trains(check_cuda):
    cpu = torch.device("cpu")
    method = check_cuda.build("anomalyclip", "medzsad-tiny-fast", 224, cpu)
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    fp32 = check_cuda.predict(method, images)
    again = check_cuda.predict(check_cuda.build("anomalyclip", "medzsad-tiny-fast", 224, cpu), images)
    assert check_cuda.max_diff(fp32, again) == "0.0e+00/0.0e+00"  # same seed, same weights
    drift = {p: float((check_cuda.predict(method, images, p)[1] - fp32[1]).abs().max()) for p in ("bf16", "fp16")}
    assert 0 < drift["fp16"] < drift["bf16"] < 0.05  # fp16 keeps 3 more mantissa bits than bf16
    assert method.backbone.precision == "fp32"  # restored after each reduced-precision call
    plain, ahead = check_cuda.loop_rates(method, images, batch=2, device=cpu)
    assert plain > 0 and ahead > 0
    before = [p.detach().clone() for p in method.trainable_parameters()]
    report = check_cuda.training_step(method, images[:2], "fp16", cpu)
    assert report.startswith("fp16 loss") and "skipped" not in report
    assert all(torch.equal(a, b) for a, b in zip(before, method.trainable_parameters()))  # restored


def test_check_precision_trains_until_scores_spread_then_compares(tmp_path):
    check_precision = load_script("check_precision")
    drift = check_precision.precision_drift(
        "anomalyclip", "bf16", tmp_path, aux_images=8, test_images=16, epochs=1, overrides=["device=cpu"]
    )
    assert drift.pairs == 16 * 16  # 8 normal and 8 anomalous images in each of two categories, pooled
    assert 0 <= drift.swapped_pairs < drift.pairs
    assert drift.score_std > 1e-2  # trained prompts: scores are not tied
    assert 0 < drift.max_score_diff < 0.05
    assert {"image_auroc", "pixel_auroc"} <= set(drift.metric_diffs)


def test_swapped_pairs_counts_order_changes_between_normal_and_anomalous():
    check_precision = load_script("check_precision")
    labels = np.array([0, 0, 1, 1])
    reference = np.array([0.1, 0.4, 0.3, 0.9])
    other = np.array([0.1, 0.2, 0.3, 0.9])  # normal 0.4 -> 0.2 now ranks below anomalous 0.3
    assert check_precision.swapped_pairs(labels, reference, other) == (1, 4)
