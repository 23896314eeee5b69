"""What a reviewer sees of a dataset: the samples, a fixed panel and the worst mistakes.

Selection streams over the samples and keeps only the few it may show, so a generator over a
large dataset is fine as long as the map scale is known in advance.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from medzsad.tracking.phi import phi_guard
from medzsad.utils.topk import TopK
from medzsad.viz.sample import ReviewSample

__all__ = ["ReviewSelector", "ReviewSummary", "checked_id"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def checked_id(sample: ReviewSample) -> str:
    """The sample id after the PHI guard and a file-name check (it names overlay files)."""
    phi_guard(sample.sample_id, "sample_id")
    if not _SAFE_ID.match(sample.sample_id):
        raise ValueError(
            f"sample_id must be 1-128 letters, digits, '_', '.', '-' (it names files), got {sample.sample_id!r}"
        )
    return sample.sample_id


@dataclass
class ReviewSummary:
    """What :meth:`TrackedRun.log_review` logged for one dataset."""

    dataset: str
    n_samples: int = 0
    panel_ids: list[str] = field(default_factory=list)
    false_positive_ids: list[str] = field(default_factory=list)
    false_negative_ids: list[str] = field(default_factory=list)
    overlay_dir: str = ""
    table_file: str = ""
    page_file: str = ""
    scale: tuple[float, float] = (0.0, 1.0)


def _stable_rank(sample_id: str) -> int:
    # Hash order picks the same samples in every run and checkpoint, unlike the order of arrival.
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big")


class ReviewSelector:
    """Streams samples and keeps the fixed panel and the worst false positives / negatives.

    The panel is the ``panel_size`` samples of lowest id hash, half anomalous and half normal when
    both exist; false positives are normals decided anomalous, highest score first; false
    negatives are anomalies decided normal, lowest score first.
    """

    def __init__(self, panel_size: int, worst_k: int, image_threshold: float) -> None:
        self.panel_size = panel_size
        self.image_threshold = image_threshold
        self._panel = {0: TopK(panel_size), 1: TopK(panel_size)}
        self._fp = TopK(worst_k)
        self._fn = TopK(worst_k)

    def decision(self, score: float) -> int:
        """1 (anomalous) when the image score reaches the threshold."""
        return int(score >= self.image_threshold)

    def offer(self, sample: ReviewSample) -> None:
        label = int(sample.label)
        if not sample.errors_only:  # the panel stays the same samples whatever the model gets wrong
            self._panel[label].offer(-_stable_rank(sample.sample_id), sample)
        decided = self.decision(sample.score)
        if label == 0 and decided == 1:
            self._fp.offer(sample.score, sample)
        elif label == 1 and decided == 0:
            self._fn.offer(-sample.score, sample)

    def panel(self) -> list[ReviewSample]:
        """The panel, ordered by id hash so its order is stable too."""
        anomalous, normal = self._panel[1].best_first(), self._panel[0].best_first()
        n_anomalous = min(len(anomalous), max(self.panel_size - len(normal), (self.panel_size + 1) // 2))
        chosen = anomalous[:n_anomalous] + normal[: self.panel_size - n_anomalous]
        return sorted(chosen, key=lambda s: _stable_rank(s.sample_id))

    def false_positives(self) -> list[ReviewSample]:
        return self._fp.best_first()

    def false_negatives(self) -> list[ReviewSample]:
        return self._fn.best_first()
