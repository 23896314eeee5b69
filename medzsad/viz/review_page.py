"""A self-contained HTML page for reviewing the masks of one evaluated dataset.

MLflow shows an HTML artifact in an ``<iframe sandbox="allow-scripts">`` loaded from a blob URL:
scripts run, but the page has an opaque origin and cannot fetch other artifacts. So every pixel
travels inside the page: per slice one zlib stream of ``image | map | mask`` bytes, inflated in the
browser with ``DecompressionStream`` and painted on a canvas (no ``<img>``, so nothing taints the
canvas and window, opacity and threshold changes are pixel operations). The same file works when
downloaded and opened from disk.

Maps are stored as 8-bit codes on the dataset's shared :class:`~medzsad.viz.render.MapScale`
(code ``c`` is ``vmin + c / 255 * (vmax - vmin)``), so a threshold moved in the page is exact to
1/255 of the scale, and colour means the same score on every case.

The page holds at most ``limit`` slices (worst false positives, then worst false negatives, then
the rest by score; a volume comes whole or not at all), and says so. A 256² slice of the test's
noisy phantoms costs 85 kB (23 kB at 128²; measured in docs/tracking.md), so the default of 200
keeps a page under about 17 MB.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from medzsad.data.transforms import CT_WINDOWS
from medzsad.viz.render import MapScale, _lut, _resize_float, _resize_mask
from medzsad.viz.sample import ReviewSample

__all__ = ["DEFAULT_PAGE_LIMIT", "PageDecision", "ReviewPage", "review_page"]

DEFAULT_PAGE_LIMIT = 200
_WINDOW = re.compile(r"^window\s+(-?[\d.]+)/([\d.]+)$")


@dataclass(frozen=True)
class PageDecision:
    """The thresholds the page shows, and where they come from.

    Attributes:
        image_threshold: image score at or above which a case is called abnormal (the outcome column).
        pixel_threshold: map value at or above which a pixel is predicted abnormal (the initial
            position of the page's threshold control).
        origin: a short sentence saying how the thresholds were chosen, e.g. ``"fixed 0.5, not
            calibrated"`` or ``"calibrated on brainmri-val (Youden)"``; shown next to them.
    """

    image_threshold: float = 0.5
    pixel_threshold: float = 0.5
    origin: str = "fixed defaults, not calibrated"


@dataclass
class ReviewPage:
    """The page's HTML and what went into it."""

    html: str
    n_samples: int
    n_shown: int
    limit: int
    case_ids: list[str] = field(default_factory=list)


def _outcome(label: int, decided: int) -> str:
    return {(1, 1): "TP", (0, 0): "TN", (0, 1): "FP", (1, 0): "FN"}[(label, decided)]


def _gray(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(pixels, is_rgb)``: one channel when all channels agree (every scan), else RGB."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.uint8), False
    image = image[..., :3]
    if image.shape[2] == 1 or (
        np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    ):
        return np.ascontiguousarray(image[..., 0]).astype(np.uint8), False
    return np.ascontiguousarray(image).astype(np.uint8), True


def _slice_payload(sample: ReviewSample, scale: MapScale, pixel_threshold: float) -> dict:
    """One slice as the page stores it: numbers for the worklist plus a base64 zlib pixel blob."""
    pixels, is_rgb = _gray(sample.image)
    shape = pixels.shape[:2]
    amap = np.asarray(sample.anomaly_map, dtype=np.float32)
    amap = amap if amap.shape == shape else _resize_float(amap, (shape[1], shape[0]))
    codes = np.round(scale.normalize(amap) * 255).astype(np.uint8)
    mask = None if sample.mask is None else np.asarray(sample.mask, dtype=bool)
    mask = mask if mask is None or mask.shape == shape else _resize_mask(mask, (shape[1], shape[0]))
    planes = [pixels.tobytes(), codes.tobytes()] + ([] if mask is None else [mask.astype(np.uint8).tobytes()])
    blob = base64.b64encode(zlib.compress(b"".join(planes), 6)).decode("ascii")
    dice: float | None = None
    if mask is not None and mask.any():
        predicted = amap >= pixel_threshold
        dice = round(2.0 * float((predicted & mask).sum()) / float(predicted.sum() + mask.sum()), 3)
    return {
        "h": int(shape[0]),
        "w": int(shape[1]),
        "rgb": is_rgb,
        "mask": mask is not None,
        "lesion": bool(mask is not None and mask.any()),
        "dice": dice,
        "blob": blob,
    }


def _ct_window(intensity: str | None) -> tuple[float, float] | None:
    """The HU range (low, high) that the stored pixels 0..255 span, for CT windowed on the way in."""
    found = _WINDOW.match((intensity or "").strip())
    if not found:
        return None
    level, width = float(found.group(1)), float(found.group(2))
    return level - width / 2.0, level + width / 2.0


def _priority(rows: Sequence[dict]) -> list[int]:
    """Row indices, worst first: false positives by score (high first), false negatives by score
    (low first), then everything else by score (high first)."""
    order = {"FP": 0, "FN": 1}

    def key(i: int) -> tuple[int, float]:
        row = rows[i]
        group = order.get(row["outcome"], 2)
        return group, (row["score"] if group == 1 else -row["score"])

    return sorted(range(len(rows)), key=key)


def _select(rows: list[dict], limit: int) -> list[int]:
    """Indices of rows to embed, by priority; a volume's slices all together (scrolling needs them)."""
    by_volume: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row["vol"] is not None:
            by_volume.setdefault(row["vol"], []).append(i)
    chosen: list[int] = []
    taken: set[int] = set()
    for i in _priority(rows):
        if i in taken:
            continue
        unit = by_volume.get(rows[i]["vol"], [i]) if rows[i]["vol"] is not None else [i]
        if chosen and len(chosen) + len(unit) > limit:
            continue
        chosen.extend(unit)
        taken.update(unit)
    return chosen


def review_page(
    samples: Iterable[ReviewSample],
    *,
    dataset: str,
    scale: MapScale,
    decision: PageDecision | None = None,
    limit: int = DEFAULT_PAGE_LIMIT,
    context: Mapping[str, str] | None = None,
    cmap: str = "inferno",
) -> ReviewPage:
    """Build the review page of one dataset.

    Args:
        samples: scored samples (ids already checked by the caller); slices of a volume carry
            ``volume_id`` and ``slice_index``.
        dataset: dataset name for the title.
        scale: the shared colour scale of every map of the dataset.
        decision: image and pixel thresholds and their origin.
        limit: most slices embedded; the page states the limit and how many samples there were.
        context: a few ``label: value`` lines for the header (method, checkpoint, run).
        cmap: matplotlib colour map of the heat map and colour bar.

    Returns:
        The page; its ``case_ids`` are the embedded sample ids in worklist (priority) order.
    """
    decision = decision or PageDecision()
    samples = list(samples)
    rows = []
    for s in samples:
        decided = int(float(s.score) >= decision.image_threshold)
        rows.append(
            {
                "id": s.sample_id,
                "cat": s.category,
                "score": float(s.score),
                "label": int(s.label),
                "outcome": _outcome(int(s.label), decided) if int(s.label) in (0, 1) else "-",
                "vol": s.volume_id,
                "slice": s.slice_index,
                "ct": _ct_window(s.intensity),
                "intensity": s.intensity or "",
            }
        )
    chosen = _select(rows, max(int(limit), 1)) if rows else []
    order = {i: rank for rank, i in enumerate(_priority(rows))}
    chosen.sort(key=lambda i: order[i])
    cases = []
    for i in chosen:
        row = dict(rows[i], prio=order[i] + 1)
        row.update(_slice_payload(samples[i], scale, decision.pixel_threshold))
        cases.append(row)
    payload = {
        "dataset": dataset,
        "scale": [scale.vmin, scale.vmax],
        "decision": {
            "image": decision.image_threshold,
            "pixel": decision.pixel_threshold,
            "origin": decision.origin,
        },
        "n_samples": len(samples),
        "limit": int(limit),
        "context": dict(context or {}),
        "ct_windows": {name: list(lw) for name, lw in CT_WINDOWS.items()},
        "lut": _lut(cmap).reshape(-1).tolist(),
        "cases": cases,
    }
    text = _template().replace("__TITLE__", html.escape(f"medzsad review: {dataset}"))
    text = text.replace("__DATA__", json.dumps(payload, separators=(",", ":")).replace("</", "<\\/"))
    return ReviewPage(text, len(samples), len(cases), int(limit), [c["id"] for c in cases])


def format_number(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, as the page and the captions print numbers."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.{digits}g}"


def _template() -> str:
    # The page: plain HTML, CSS and JavaScript with no external resource (the sandboxed frame can
    # load none, and a downloaded copy must work offline), kept in its own file next to this one.
    return (resources.files("medzsad.viz") / "review_page.html").read_text(encoding="utf-8")
