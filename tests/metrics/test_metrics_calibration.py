"""Thresholds with a guarantee (conformal, checked by simulation) and labelled rules (checked by brute force)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from medzsad.metrics.calibration import (
    PIXEL_LEVELS,
    PixelRateHistogram,
    conformal_rank,
    conformal_threshold,
    f1max_threshold,
    fit_probability,
    pixel_rate_threshold,
    rescale_to_half,
    sensitivity_threshold,
    youden_threshold,
)


def _normal_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    """Generated 'normal image' scores: a skewed distribution in [0, 1], as image scores are."""
    return rng.beta(2.0, 5.0, size=n)


def test_conformal_false_alarm_rate_over_many_splits_is_at_most_alpha_and_not_trivial():
    alpha, n_cal, n_new, splits = 0.1, 50, 2000, 400
    rng = np.random.default_rng(7)
    realised = []
    for _ in range(splits):
        pool = _normal_scores(rng, n_cal + n_new)
        rng.shuffle(pool)
        threshold = conformal_threshold(pool[:n_cal], alpha)
        realised.append(np.mean(pool[n_cal:] >= threshold))
    realised = np.asarray(realised)
    mean, standard_error = realised.mean(), realised.std(ddof=1) / math.sqrt(splits)
    # Exact expectation for continuous scores: (n + 1 - k) / (n + 1) with k = ceil(0.9 * 51) = 46.
    assert conformal_rank(n_cal, alpha) == 46
    assert mean <= alpha + 3 * standard_error
    assert mean > alpha - 0.05
    assert mean == pytest.approx(5 / 51, abs=4 * standard_error)


def test_training_conditional_threshold_holds_for_the_reference_set_with_the_stated_confidence():
    alpha, confidence, n_cal, splits = 0.1, 0.9, 100, 300
    rng = np.random.default_rng(3)
    above = 0
    for _ in range(splits):
        threshold = conformal_threshold(_normal_scores(rng, n_cal), alpha, confidence=confidence)
        # The true false-alarm rate of this threshold from the known distribution (beta(2, 5)).
        from scipy.stats import beta

        above += beta.sf(threshold, 2.0, 5.0) > alpha
    assert above / splits <= 1 - confidence + 3 * math.sqrt(0.1 * 0.9 / splits)


def test_conformal_refuses_too_few_reference_scans_in_one_line():
    with pytest.raises(ValueError, match=r"too few for alpha=0\.05.*need at least 19"):
        conformal_threshold(np.linspace(0, 1, 10), 0.05)
    assert conformal_rank(19, 0.05) == 19


def test_conformal_threshold_flags_exactly_the_scores_above_the_kth():
    scores = np.array([0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    t = conformal_threshold(scores, 0.2)  # k = ceil(11 * 0.8) = 9 -> above the 9th smallest (0.8)
    assert 0.8 < t < 0.8 + 1e-12
    assert np.count_nonzero(scores >= t) == 1


def _brute_force_f1(scores: np.ndarray, labels: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        best = max(best, 2 * tp / (predicted.sum() + labels.sum()))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_f1max_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    labels = rng.random(n) < 0.4
    labels[:2] = [True, False]
    scores = np.round(rng.random(n) + 0.4 * labels, 2)  # rounding makes ties
    t = f1max_threshold(scores, labels)
    predicted = scores >= t
    f1 = 2 * np.sum(predicted & labels) / (predicted.sum() + labels.sum())
    assert f1 == pytest.approx(_brute_force_f1(scores, labels), abs=1e-12)
    assert t in scores


def test_youden_and_sensitivity_thresholds_by_brute_force():
    rng = np.random.default_rng(1)
    labels = rng.random(80) < 0.5
    scores = rng.random(80) + 0.5 * labels
    j = {t: np.mean(scores[labels] >= t) - np.mean(scores[~labels] >= t) for t in np.unique(scores)}
    t = youden_threshold(scores, labels)
    assert j[t] == pytest.approx(max(j.values()))
    s = sensitivity_threshold(scores, labels, 0.9)
    assert np.mean(scores[labels] >= s) >= 0.9
    assert all(np.mean(scores[labels] >= u) < 0.9 for u in np.unique(scores) if u > s)


def test_labelled_rules_need_both_classes():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        f1max_threshold([0.1, 0.2], [0, 0])


def test_pixel_rate_threshold_bounds_the_expected_fp_pixel_fraction_on_new_normal_maps():
    alpha, rng = 0.05, np.random.default_rng(5)
    realised = []
    for _ in range(40):
        histogram = PixelRateHistogram()
        histogram.update(rng.beta(2, 8, size=(60, 16, 16)) * rng.uniform(0.5, 1.0, size=(60, 1, 1)))
        t = pixel_rate_threshold(histogram, alpha)
        assert t * PIXEL_LEVELS == int(t * PIXEL_LEVELS)
        fresh = rng.beta(2, 8, size=(200, 16, 16)) * rng.uniform(0.5, 1.0, size=(200, 1, 1))
        realised.append(np.mean(fresh >= t))
    # Conformal risk control with a loss bound of 1 targets (61 * 0.05 - 1) / 60 = 0.034 on the reference maps.
    assert np.mean(realised) <= alpha
    assert np.mean(realised) > 0.025


def test_pixel_histogram_rates_are_exact_at_levels():
    maps = np.array([[[0.0, 0.25], [0.5, 1.0]], [[0.75, 0.75], [0.2, 0.9]]])
    histogram = PixelRateHistogram()
    histogram.update(maps)
    rates = histogram.mean_rate_at_or_above()
    for t in (0.0, 0.2, 0.25, 0.5, 0.75, 0.9):
        expected = np.mean([np.mean(m >= t) for m in maps])
        assert rates[int(t * PIXEL_LEVELS)] == pytest.approx(expected)


def test_probability_models_match_sklearn_and_are_monotone():
    rng = np.random.default_rng(2)
    labels = rng.random(200) < 0.3
    scores = rng.random(200) * 0.6 + 0.4 * labels
    iso = fit_probability(scores, labels, "isotonic")
    grid = np.linspace(-0.2, 1.2, 57)
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(scores, labels.astype(float))
    np.testing.assert_allclose(iso(grid), reference.predict(grid), atol=1e-12)
    platt = fit_probability(scores, labels, "platt")
    assert np.all(np.diff(platt(grid)) > 0)
    assert platt.from_json(platt.to_json()) == platt
    assert iso.from_json(iso.to_json()) == iso


def test_rescaled_scores_put_the_threshold_at_one_half_and_keep_order():
    scores = np.array([0.0, 0.1, 0.29999, 0.3, 0.5, 1.0])
    rescaled = rescale_to_half(scores, 0.3)
    assert np.all(np.diff(rescaled) >= 0)
    np.testing.assert_array_equal(rescaled >= 0.5, scores >= 0.3)
    assert rescaled[3] == 0.5 and rescaled[-1] == 1.0 and rescaled[0] == 0.0
