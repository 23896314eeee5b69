"""From scores to decisions: thresholds with a stated guarantee, and scores mapped to probabilities.

Every rule returns a threshold ``t`` used as everywhere in medzsad: **score >= t is anomalous**.

Normal reference scans only (the usual case at a site):

* :func:`conformal_threshold`: split-conformal quantile of normal scores. For a new normal scan
  exchangeable with the ``n`` reference scans, ``P(score >= t) <= alpha``, the probability taken over
  the reference set and the new scan together; for continuous scores it is also ``>= alpha - 1/(n+1)``.
  With ``confidence`` it holds for this reference set itself with that probability (training-conditional).
* :func:`pixel_rate_threshold`: conformal risk control of the fraction of false-positive pixels of a
  normal image (expected fraction ``<= alpha``); :func:`conformal_threshold` on per-image map maxima
  bounds the fraction of normal images with any false-positive region.

Labelled validation scans: :func:`f1max_threshold` (anomalib's adaptive threshold), :func:`youden_threshold`,
:func:`sensitivity_threshold`. They optimise on the validation set and guarantee nothing on new scans.

:func:`fit_probability` maps scores to probabilities (isotonic or Platt, scikit-learn); the fitted
model is a few numbers (:class:`ProbabilityModel`) that go into the calibration file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from medzsad.metrics._validate import as_label_vector, as_score_vector
from medzsad.metrics.ranking import f1_max_from_levels, rank_levels

__all__ = [
    "PIXEL_LEVELS",
    "PixelRateHistogram",
    "ProbabilityModel",
    "conformal_rank",
    "conformal_threshold",
    "f1max_threshold",
    "fit_probability",
    "pixel_rate_threshold",
    "rescale_to_half",
    "sensitivity_threshold",
    "youden_threshold",
]


def _just_above(value: float) -> float:
    """The smallest float64 above ``value``: ``score >= t`` then flags exactly the scores ``> value``."""
    return float(np.nextafter(np.float64(value), np.inf))


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")


def conformal_rank(n: int, alpha: float, confidence: float | None = None) -> int:
    """1-based rank ``k`` of the sorted normal scores whose successor is the threshold.

    Marginal (``confidence=None``): ``k = ceil((n + 1)(1 - alpha))``. A new exchangeable score lands at
    each of the ``n + 1`` ranks with equal probability, so it exceeds the ``k``-th smallest reference
    score with probability ``(n + 1 - k) / (n + 1) <= alpha``.

    Training-conditional (``confidence=c``): the realised false-alarm rate of a fixed reference set is
    ``1 - F(s_(k))`` and ``F(s_(k)) ~ Beta(k, n + 1 - k)`` for continuous scores, so
    ``P(rate > alpha) = P(Binomial(n, 1 - alpha) >= k)``; the smallest ``k`` with that ``<= 1 - c``.

    Raises:
        ValueError: fewer reference scores than the rule needs (it would never flag anything).
    """
    _check_alpha(alpha)
    if confidence is None:
        k = math.ceil((n + 1) * (1 - alpha) - 1e-12)  # 1e-12: (n+1)(1-alpha) is often an integer in theory
    else:
        from scipy.stats import binom

        _check_alpha(confidence, "confidence")
        ranks = np.arange(1, n + 1)
        ok = binom.sf(ranks - 1, n, 1 - alpha) <= 1 - confidence
        k = int(ranks[ok][0]) if ok.any() else n + 1
    if k > n:
        # k = n is the last rank: marginal needs (n + 1)(1 - alpha) <= n, conditional (1 - alpha)^n <= 1 - c.
        need = (
            math.ceil(1 / alpha - 1)
            if confidence is None
            else math.ceil(math.log(1 - confidence) / math.log(1 - alpha))
        )
        raise ValueError(
            f"{n} normal reference scores are too few for alpha={alpha:g}"
            + (f" at confidence {confidence:g}" if confidence is not None else "")
            + f" (need at least {need}): the threshold would never flag anything"
        )
    return max(k, 1)


def conformal_threshold(normal_scores: ArrayLike, alpha: float, confidence: float | None = None) -> float:
    """Split-conformal threshold from scores of normal reference scans (see :func:`conformal_rank`).

    Args:
        normal_scores: ``(n,)`` scores of normal scans only, finite.
        alpha: target false-alarm probability on new normal scans from the same source.
        confidence: ``None`` for the marginal guarantee, or e.g. 0.9 for a guarantee of this reference set.

    Returns:
        ``t`` just above the ``k``-th smallest score, so ``score >= t`` flags exactly scores above it.
    """
    scores = np.sort(as_score_vector(normal_scores, "normal_scores").astype(np.float64))
    k = conformal_rank(scores.size, alpha, confidence)
    return _just_above(scores[k - 1])


PIXEL_LEVELS = 1 << 16


@dataclass
class PixelRateHistogram:
    """Per-image false-positive pixel fractions of normal maps at every level, in constant memory.

    Maps are in [0, 1] (values outside are clipped); level ``b`` is the threshold ``b / PIXEL_LEVELS``.
    ``floor(v * 2**16)`` is exact in float64, so a pixel counts at or above level ``b`` exactly when
    ``v >= b / 2**16``: the fractions are exact at every representable threshold.
    """

    weights: np.ndarray = field(default_factory=lambda: np.zeros(PIXEL_LEVELS, dtype=np.float64))
    images: int = 0

    def update(self, maps: np.ndarray) -> None:
        """Add normal maps ``[B, H, W]`` (each image weighs 1, spread over its pixels)."""
        for one in np.asarray(maps, dtype=np.float64).reshape(len(maps), -1):
            bins = np.clip(np.floor(one * PIXEL_LEVELS), 0, PIXEL_LEVELS - 1).astype(np.int64)
            self.weights += np.bincount(bins, minlength=PIXEL_LEVELS) / one.size
            self.images += 1

    def mean_rate_at_or_above(self) -> np.ndarray:
        """``[PIXEL_LEVELS]``: mean over images of the fraction of pixels ``>= b / PIXEL_LEVELS``."""
        return np.cumsum(self.weights[::-1])[::-1] / max(self.images, 1)


def pixel_rate_threshold(histogram: PixelRateHistogram, alpha: float) -> float:
    """Smallest level ``t`` with ``n/(n+1) * mean_rate(t) + 1/(n+1) <= alpha`` (conformal risk control,
    Angelopoulos et al. 2022, loss bounded by 1): a new exchangeable normal image has expected
    false-positive pixel fraction ``<= alpha`` at ``map >= t``."""
    _check_alpha(alpha)
    n = histogram.images
    target = ((n + 1) * alpha - 1) / n if n else -1.0
    if target < 0:
        need = math.ceil(1 / alpha - 1)
        raise ValueError(
            f"{n} normal reference images are too few for a pixel alpha of {alpha:g} (need at least {need})"
        )
    rates = histogram.mean_rate_at_or_above()
    ok = np.flatnonzero(rates <= target)  # rates fall with the level, so these are the top levels
    # None fits: just above 1, where no map value (clipped to [0, 1]) is flagged.
    return int(ok[0]) / PIXEL_LEVELS if ok.size else _just_above(1.0)


def _scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    vector = as_score_vector(scores).astype(np.float64)
    truth = as_label_vector(labels, vector.size)
    if truth.all() or not truth.any():
        raise ValueError("a labelled threshold needs both normal and anomalous validation scans")
    return vector, truth


def f1max_threshold(scores: ArrayLike, labels: ArrayLike) -> float:
    """The threshold of maximal F1 (anomalib's adaptive threshold); ties go to the highest threshold."""
    vector, truth = _scores_and_labels(scores, labels)
    levels = rank_levels(np.sort(vector[~truth]), np.sort(vector[truth])[::-1])
    return f1_max_from_levels(levels)[1]


def youden_threshold(scores: ArrayLike, labels: ArrayLike) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (first maximum of sklearn's ROC)."""
    from sklearn.metrics import roc_curve

    vector, truth = _scores_and_labels(scores, labels)
    fpr, tpr, thresholds = roc_curve(truth, vector)
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best])


def sensitivity_threshold(scores: ArrayLike, labels: ArrayLike, target: float) -> float:
    """The highest threshold whose sensitivity on the validation scans is at least ``target``."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target!r}")
    vector, truth = _scores_and_labels(scores, labels)
    positives = np.sort(vector[truth])[::-1]
    needed = math.ceil(target * positives.size - 1e-12)
    return float(positives[max(needed, 1) - 1])


def rescale_to_half(scores: ArrayLike, threshold: float) -> np.ndarray:
    """Scores in [0, 1] mapped piecewise linearly so ``threshold`` lands on 0.5 (order kept): ``[0, t]`` to
    ``[0, 0.5]``, ``[t, 1]`` to ``[0.5, 1]``; then ``rescaled >= 0.5`` is the decision."""
    values = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    t = min(max(float(threshold), 1e-12), 1.0 - 1e-12)
    low = 0.5 * values / t
    high = 0.5 + 0.5 * (values - t) / (1.0 - t)
    out = np.where(values >= t, np.maximum(high, 0.5), np.minimum(low, np.nextafter(0.5, 0)))
    return out.astype(np.float32)


@dataclass(frozen=True)
class ProbabilityModel:
    """Scores to probabilities of being anomalous: ``isotonic`` (a step function through ``x``, ``y``,
    linearly interpolated and clipped, as scikit-learn's ``IsotonicRegression.predict``) or ``platt``
    (``1 / (1 + exp(-(a * score + b)))``). Probabilities reflect the validation set's prevalence."""

    kind: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    a: float = 0.0
    b: float = 0.0

    def __call__(self, scores: ArrayLike) -> np.ndarray:
        values = np.asarray(scores, dtype=np.float64)
        if self.kind == "isotonic":
            return np.interp(values, self.x, self.y)
        return 1.0 / (1.0 + np.exp(-(self.a * values + self.b)))

    def to_json(self) -> dict:
        if self.kind == "isotonic":
            return {"kind": "isotonic", "x": list(self.x), "y": list(self.y)}
        return {"kind": "platt", "a": self.a, "b": self.b}

    @classmethod
    def from_json(cls, data: dict) -> ProbabilityModel:
        if data.get("kind") == "isotonic":
            return cls("isotonic", tuple(map(float, data["x"])), tuple(map(float, data["y"])))
        if data.get("kind") == "platt":
            return cls("platt", a=float(data["a"]), b=float(data["b"]))
        raise ValueError(f"probability.kind must be isotonic or platt, got {data.get('kind')!r}")


def fit_probability(scores: ArrayLike, labels: ArrayLike, kind: str) -> ProbabilityModel:
    """Fit ``isotonic`` (scikit-learn ``IsotonicRegression``, increasing, clipped) or ``platt`` (unpenalised
    one-feature logistic regression) on labelled validation scores."""
    vector, truth = _scores_and_labels(scores, labels)
    if kind == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0.0, y_max=1.0)
        model.fit(vector, truth.astype(np.float64))
        x, y = tuple(map(float, model.X_thresholds_)), tuple(map(float, model.y_thresholds_))
        return ProbabilityModel("isotonic", x, y)
    if kind == "platt":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=np.inf).fit(vector[:, None], truth)
        return ProbabilityModel("platt", a=float(model.coef_[0, 0]), b=float(model.intercept_[0]))
    raise ValueError(f"probability calibration must be isotonic or platt, got {kind!r}")
