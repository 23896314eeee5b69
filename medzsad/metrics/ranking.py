"""Exact ranking metrics (AUROC, step-wise AP, F1-max) from sorted negatives and positive scores.

Every curve of a binary ranking only changes direction at distinct positive scores, so all three metrics
follow from, for each distinct positive score ``t``: how many positives score ``t``, how many
negatives score ``> t`` and ``>= t``. The scores are sorted once (values only, which is far cheaper
than an argsort); each distinct positive score is then one binary search. Counts are int64, so nothing
saturates at 2**24 the way a float32 accumulator does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from medzsad.metrics._validate import as_label_vector, as_score_vector
from medzsad.metrics.results import MetricSet

_INT64_SAFE = 2**62


@dataclass(frozen=True)
class RankLevels:
    """Counts at each distinct positive score, descending.

    ``group_ends[j]`` is the index, in the descending-sorted positives, of the last positive scoring
    ``values[j]``; per-positive quantities (PRO weights) are accumulated up to it.
    """

    values: np.ndarray
    group_ends: np.ndarray
    positives_at_or_above: np.ndarray
    negatives_above: np.ndarray
    negatives_at_or_above: np.ndarray
    num_positives: int
    num_negatives: int

    @property
    def positives_at(self) -> np.ndarray:
        return np.diff(self.positives_at_or_above, prepend=0)


def rank_levels(
    sorted_scores: np.ndarray, positives_descending: np.ndarray, positives_included: bool = False
) -> RankLevels:
    """Counts at each distinct positive score.

    ``sorted_scores`` is ascending and holds the negatives, plus every positive when
    ``positives_included`` (pixels: sorting all pixel values is far cheaper than first separating the
    normal ones, and the positives are then subtracted by count). ``positives_descending`` is descending.
    """
    num_positives = positives_descending.size
    is_last_of_group = np.ones(num_positives, dtype=bool)
    np.not_equal(positives_descending[1:], positives_descending[:-1], out=is_last_of_group[:-1])
    group_ends = np.flatnonzero(is_last_of_group)
    values = positives_descending[group_ends]
    positives_at_or_above = group_ends.astype(np.int64) + 1
    positives_at = np.diff(positives_at_or_above, prepend=0)
    included_at = positives_at if positives_included else np.zeros_like(positives_at)
    below, at_or_below = _counts_below(sorted_scores, values[::-1], included_at[::-1])
    num_negatives = sorted_scores.size - (num_positives if positives_included else 0)
    included_at_or_above = positives_at_or_above if positives_included else 0
    included_above = positives_at_or_above - positives_at if positives_included else 0
    return RankLevels(
        values=values,
        group_ends=group_ends,
        positives_at_or_above=positives_at_or_above,
        negatives_above=sorted_scores.size - at_or_below[::-1] - included_above,
        negatives_at_or_above=sorted_scores.size - below[::-1] - included_at_or_above,
        num_positives=num_positives,
        num_negatives=num_negatives,
    )


def _counts_below(
    sorted_scores: np.ndarray, ascending: np.ndarray, known_ties: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of scores ``< t`` and ``<= t`` for ascending distinct keys ``t`` (int64).

    One binary search per key. ``known_ties[i]`` scores are known to equal key ``i`` (the positives
    themselves when they are in the array), so ``<= t`` is ``< t`` plus those, unless the next score
    also equals ``t``; only then (rare for float maps) is a second search needed.
    """
    below = np.searchsorted(sorted_scores, ascending, side="left").astype(np.int64)
    at_or_below = below + known_ties
    size = sorted_scores.size
    if size:
        next_score = sorted_scores[np.minimum(at_or_below, size - 1)]
        more_ties = (at_or_below < size) & (next_score == ascending)
        at_or_below[more_ties] = np.searchsorted(sorted_scores, ascending[more_ties], side="right")
    return below, at_or_below


def auroc_from_levels(levels: RankLevels) -> float:
    """P(positive > negative) + P(tie) / 2, from exact integer counts."""
    if 2 * levels.num_positives * levels.num_negatives >= _INT64_SAFE:
        raise OverflowError("too many samples for exact int64 AUROC (positives x negatives >= 2**61)")
    negatives_below = levels.num_negatives - levels.negatives_at_or_above
    negatives_tied = levels.negatives_at_or_above - levels.negatives_above
    # Twice the Mann-Whitney U statistic, so ties stay integers.
    twice_u = int(np.sum(levels.positives_at * (2 * negatives_below + negatives_tied)))
    return twice_u / (2 * levels.num_positives * levels.num_negatives)


def average_precision_from_levels(levels: RankLevels) -> float:
    """Step-wise AP = sum over thresholds of (recall increase) x precision, as scikit-learn defines it."""
    true_positives = levels.positives_at_or_above
    precision = true_positives / (true_positives + levels.negatives_at_or_above)
    recall_increase = levels.positives_at / levels.num_positives
    return float(np.sum(recall_increase * precision))


def f1_max_from_levels(levels: RankLevels) -> tuple[float, float]:
    """Maximum F1 over thresholds and the threshold reaching it (``score >= threshold`` is positive).

    F1 = 2 TP / (TP + FP + P); for a fixed TP it is largest with the fewest false positives, so the
    maximum is at a distinct positive score.
    """
    true_positives = levels.positives_at_or_above
    f1 = 2 * true_positives / (true_positives + levels.negatives_at_or_above + levels.num_positives)
    best = int(np.argmax(f1))
    return float(f1[best]), float(levels.values[best])


def ranking_undefined_reason(num_negatives: int, num_positives: int, kind: str) -> dict[str, str]:
    """Reasons, per metric suffix, that ranking metrics are undefined for these counts."""
    reasons: dict[str, str] = {}
    if num_positives == 0:
        for metric in ("auroc", "ap", "f1max"):
            reasons[metric] = f"no anomalous {kind}"
    elif num_negatives == 0:
        reasons["auroc"] = f"no normal {kind}"
    return reasons


def ranking_metrics(
    sorted_scores: np.ndarray,
    positives_descending: np.ndarray,
    prefix: str,
    kind: str,
    positives_included: bool = False,
) -> tuple[dict[str, float], dict[str, str], RankLevels | None]:
    """AUROC, AP and F1-max named ``<prefix>_auroc`` etc., with reasons for the undefined ones.

    Arguments as :func:`rank_levels`; ``kind`` ("images", "pixels") words the reasons.
    """
    num_negatives = sorted_scores.size - (positives_descending.size if positives_included else 0)
    if positives_descending.size == 0:
        return (*metrics_from_levels(None, num_negatives, prefix, kind), None)
    levels = rank_levels(sorted_scores, positives_descending, positives_included)
    return (*metrics_from_levels(levels, num_negatives, prefix, kind), levels)


def metrics_from_levels(
    levels: RankLevels | None, num_negatives: int, prefix: str, kind: str
) -> tuple[dict[str, float], dict[str, str]]:
    """AUROC, AP and F1-max from counts (``None``: there are no positives), with undefined reasons."""
    num_positives = 0 if levels is None else levels.num_positives
    reasons = ranking_undefined_reason(num_negatives, num_positives, kind)
    undefined = {f"{prefix}_{metric}": why for metric, why in reasons.items()}
    if levels is None:
        return {}, undefined
    values = {
        f"{prefix}_ap": average_precision_from_levels(levels),
        f"{prefix}_f1max": f1_max_from_levels(levels)[0],
    }
    if num_negatives:
        values[f"{prefix}_auroc"] = auroc_from_levels(levels)
    return values, undefined


def image_metrics(scores: ArrayLike, labels: ArrayLike) -> MetricSet:
    """Image-level AUROC, step-wise AP and F1-max.

    Args:
        scores: ``(N,)`` anomaly score per image, any real dtype, higher = more anomalous; finite.
        labels: ``(N,)`` 1 (or True) for anomalous images, 0 for normal ones.

    Returns:
        A :class:`MetricSet` with ``image_auroc``, ``image_ap``, ``image_f1max`` in [0, 1]; without normal
        images AUROC is undefined, without anomalous images all three are (see ``.undefined``).
    """
    score_vector = as_score_vector(scores)
    label_vector = as_label_vector(labels, score_vector.size)
    negatives = np.sort(score_vector[~label_vector])
    positives = np.sort(score_vector[label_vector])[::-1]
    values, undefined, _ = ranking_metrics(negatives, positives, "image", "images")
    counts = {"images": int(score_vector.size), "anomalous_images": int(positives.size)}
    return MetricSet(values, undefined, counts)
