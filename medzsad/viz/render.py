"""Rendering of review tiles, volume figures and curve figures (numpy, Pillow, matplotlib).

Nothing here talks to MLflow or the engine. All heat maps of a dataset go through one :class:`MapScale`, so
colour means the same score on every image: a normal image with low scores stays dark instead of
being stretched to full colour, as per-image min-max scaling would do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Curve",
    "MapScale",
    "curve_figure",
    "heat_over",
    "heat_rgb",
    "labelled_colour_bar",
    "mask_contour",
    "pick_slices",
    "render_overlay",
    "render_tile",
    "render_volume",
]

CurveKind = Literal["roc", "pr", "pro"]

_GT_COLOUR = np.array([0, 230, 64], dtype=np.float32)
_PRED_COLOUR = np.array([255, 40, 40], dtype=np.float32)
_CAPTION_H = 18
_BAR_H = 10


@dataclass(frozen=True)
class MapScale:
    """One colour scale for all anomaly maps of a dataset: ``vmin`` is dark, ``vmax`` full colour."""

    vmin: float
    vmax: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.vmin) and math.isfinite(self.vmax)) or self.vmax < self.vmin:
            raise ValueError(f"invalid map scale [{self.vmin}, {self.vmax}]")

    @classmethod
    def from_maps(cls, maps: Iterable[np.ndarray]) -> MapScale:
        """The range of all finite values over every map of the dataset."""
        lo, hi = math.inf, -math.inf
        for amap in maps:
            finite = np.asarray(amap, dtype=np.float32)
            finite = finite[np.isfinite(finite)]
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        if lo > hi:  # no finite value at all
            return cls(0.0, 1.0)
        return cls(lo, hi if hi > lo else lo + 1e-6)

    def normalize(self, amap: np.ndarray) -> np.ndarray:
        """Values mapped to [0, 1] on this scale (clipped; NaN becomes 0)."""
        span = max(self.vmax - self.vmin, 1e-12)
        norm = (np.asarray(amap, dtype=np.float32) - self.vmin) / span
        return np.nan_to_num(np.clip(norm, 0.0, 1.0), nan=0.0)


@dataclass(frozen=True)
class Curve:
    """One curve of a figure: ``x`` and ``y`` arrays and, if known, the area reported for it."""

    x: np.ndarray
    y: np.ndarray
    area: float | None = None


@lru_cache(maxsize=4)
def _lut(name: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


@lru_cache(maxsize=2)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: bitmap font of fixed size
        return ImageFont.load_default()


def heat_rgb(amap: np.ndarray, scale: MapScale, cmap: str = "inferno") -> np.ndarray:
    """An anomaly map as RGB uint8 on the shared scale (inferno: low is near black)."""
    index = np.round(scale.normalize(amap) * 255).astype(np.uint8)
    return _lut(cmap)[index]


def mask_contour(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boolean outline of a mask: mask pixels with a 4-neighbour outside it, grown inward."""
    mask = np.asarray(mask, dtype=bool)
    inner = mask.copy()
    for _ in range(max(thickness, 1)):
        padded = np.pad(inner, 1, constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be [H,W], [H,W,1], [H,W,3] or [H,W,4], got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[..., :3]
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (display pixels), got {image.dtype}")
    return image


def _panel_size(shape: Sequence[int], side: int) -> tuple[int, int]:
    h, w = int(shape[0]), int(shape[1])
    factor = side / max(h, w)
    return max(1, round(w * factor)), max(1, round(h * factor))  # PIL order: (width, height)


def _resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def _resize_float(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(np.asarray(amap, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.BILINEAR))


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(img.resize(size, Image.NEAREST)) > 127


def _paint(base: np.ndarray, where: np.ndarray, colour: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """``base`` with ``colour`` (RGB or per-pixel RGB) blended in at ``alpha`` where ``where``."""
    out = base.astype(np.float32)
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    blended = out * (1 - a) + np.asarray(colour, dtype=np.float32) * a
    out[where] = blended[where]
    return out.clip(0, 255).astype(np.uint8)


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    img = Image.fromarray(panel)
    draw = ImageDraw.Draw(img)
    font = _font(11)
    box = draw.textbbox((3, 2), text, font=font)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def _colour_bar(width: int, scale: MapScale, threshold: float | None, cmap: str) -> np.ndarray:
    """A horizontal bar of the shared scale with a white tick at the pixel threshold."""
    ramp = np.linspace(scale.vmin, scale.vmax, width, dtype=np.float32)
    bar = np.repeat(heat_rgb(ramp, scale, cmap)[None], _BAR_H, axis=0)
    if threshold is not None and scale.vmin <= threshold <= scale.vmax:
        x = round(float(scale.normalize(np.float32(threshold))) * (width - 1))
        bar[:, max(x - 1, 0) : x + 1] = 255
    return bar


def render_tile(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None,
    scale: MapScale,
    pixel_threshold: float,
    caption: str,
    side: int = 256,
    cmap: str = "inferno",
    columns: int = 2,
) -> np.ndarray:
    """Four captioned panels: image, ground-truth contour, heat map over the anatomy, prediction.

    With the default two columns the tile is about square, which the MLflow image chart shows
    larger than a wide strip; ``columns=4`` puts the panels side by side.

    The heat map is laid over the image (:func:`heat_over`) on the dataset's shared ``scale``,
    whose colour bar, with numbers and a tick at ``pixel_threshold``, runs beneath the tile; the
    prediction panel fills ``map >= pixel_threshold`` in red and outlines the ground truth in green.
    """
    rgb = _as_rgb(image)
    size = _panel_size(rgb.shape, side)
    img = _resize_rgb(rgb, size)
    amap = _resize_float(anomaly_map, size)
    gt = _resize_mask(mask, size) if mask is not None else None
    contour = mask_contour(gt, thickness=2) if gt is not None else None

    gt_panel = img if contour is None else _paint(img, contour, _GT_COLOUR, 1.0)
    gt_text = "no mask" if gt is None else "ground truth" if gt.any() else "ground truth: empty"
    gt_panel = _label(gt_panel, gt_text)
    heat = heat_over(img, amap, scale, cmap=cmap)
    if contour is not None:
        heat = _paint(heat, contour, _GT_COLOUR, 1.0)
    heat = _label(heat, "heat map")
    pred = _paint(img, amap >= pixel_threshold, _PRED_COLOUR, 0.45)
    if contour is not None:
        pred = _paint(pred, contour, _GT_COLOUR, 1.0)
    pred = _label(pred, f"map >= {pixel_threshold:.3g}")
    panels = [_label(img, "image"), gt_panel, heat, pred]

    width, height = size
    rows = -(-len(panels) // columns)
    full = columns * (width + 2) - 2
    bar = labelled_colour_bar(full, scale, pixel_threshold, cmap)
    canvas = np.zeros((_CAPTION_H + rows * (height + 2) + bar.shape[0], full, 3), dtype=np.uint8)
    for i, panel in enumerate(panels):
        row, col = divmod(i, columns)
        y, x = _CAPTION_H + row * (height + 2), col * (width + 2)
        canvas[y : y + height, x : x + width] = panel
    canvas[-bar.shape[0] :] = bar
    out = Image.fromarray(canvas)
    ImageDraw.Draw(out).text((4, 3), caption, fill=(255, 255, 255), font=_font(12))
    return np.asarray(out)


def render_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, scale: MapScale, caption: str, cmap: str = "inferno"
) -> np.ndarray:
    """One image with its heat map laid over it (:func:`heat_over`) at the map's resolution
    ([H, W] float32 map, uint8 image of any size), a caption strip above (score, window) and a
    colour bar with numbers beneath: RGB uint8 [caption + H + bar, W, 3]."""
    height, width = anomaly_map.shape
    base = _resize_rgb(_as_rgb(image), (width, height))
    body = heat_over(base, np.asarray(anomaly_map, dtype=np.float32), scale, cmap=cmap)
    bar = labelled_colour_bar(max(width, 160), scale, None, cmap)
    canvas = np.zeros((_CAPTION_H + height + bar.shape[0], max(width, bar.shape[1]), 3), dtype=np.uint8)
    canvas[_CAPTION_H : _CAPTION_H + height, :width] = body
    canvas[-bar.shape[0] :, : bar.shape[1]] = bar
    out = Image.fromarray(canvas)
    ImageDraw.Draw(out).text((4, 3), caption, fill=(255, 255, 255), font=_font(12))
    return np.asarray(out)


def _display_volume(volume: np.ndarray) -> np.ndarray:
    """A volume as uint8 for display: as is if uint8, else its 1st-99th percentile window."""
    volume = np.asarray(volume)
    if volume.dtype == np.uint8:
        return volume
    finite = volume[np.isfinite(volume)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    return (np.clip((volume - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def pick_slices(volume_map: np.ndarray, volume_mask: np.ndarray | None, max_slices: int) -> list[int]:
    """Slice indices for a volume figure: every slice with ground truth (a lesion slice is never
    dropped, even past ``max_slices``), the slice of the highest map value, then evenly spaced
    slices up to ``max_slices``."""
    depth = volume_map.shape[0]
    if depth <= max_slices:
        return list(range(depth))
    must = {int(np.nanargmax(volume_map.reshape(depth, -1).max(axis=1)))}
    if volume_mask is not None:
        must.update(int(z) for z in np.flatnonzero(volume_mask.reshape(depth, -1).any(axis=1)))
    chosen = set(must)
    spare = max_slices - len(chosen)
    if spare > 0:
        for index in np.linspace(0, depth - 1, max_slices).round().astype(int):
            if len(chosen) >= max_slices:
                break
            chosen.add(int(index))
    return sorted(chosen)


def heat_over(image: np.ndarray, amap: np.ndarray, scale: MapScale, opacity: float = 0.6, cmap: str = "inferno"):
    """The heat map laid over the anatomy: RGB uint8 [H, W, 3] from display pixels and a map of the
    same size. Opacity grows from 0 at the lower quarter of the scale to ``opacity`` at its top, so
    low scores leave the anatomy grey instead of tinting it with the dark end of the colour map."""
    norm = scale.normalize(amap)
    alpha = opacity * np.clip((norm - 0.25) / 0.75, 0.0, 1.0)
    heat = heat_rgb(norm, MapScale(0.0, 1.0), cmap)
    return _paint(_as_rgb(image), np.ones(norm.shape, dtype=bool), heat, alpha)


def labelled_colour_bar(
    width: int, scale: MapScale, threshold: float | None = None, cmap: str = "inferno"
) -> np.ndarray:
    """A colour bar of the shared scale with numbers (ends, quarters) and the threshold marked:
    RGB uint8 [34, width, 3]."""
    inner = max(width - 16, 8)
    bar = np.zeros((34, width, 3), dtype=np.uint8)
    bar[2:14, 8 : 8 + inner] = _colour_bar(inner, scale, threshold, cmap)[:1].repeat(12, axis=0)
    out = Image.fromarray(bar)
    draw = ImageDraw.Draw(out)
    font = _font(10)
    for t in range(5):
        x = 8 + round(t / 4 * (inner - 1))
        draw.line((x, 14, x, 17), fill=(220, 220, 220))
        text = f"{scale.vmin + t / 4 * (scale.vmax - scale.vmin):.3g}"
        length = draw.textlength(text, font=font)
        left = min(max(x - length / 2, 0), width - length)
        draw.text((left, 19), text, fill=(230, 230, 230), font=font)
    return np.asarray(out)


def render_volume(
    volume_image: np.ndarray,
    volume_map: np.ndarray,
    volume_mask: np.ndarray | None,
    scale: MapScale,
    caption: str,
    max_slices: int = 24,
    side: int = 160,
    cmap: str = "inferno",
    window: str | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """Slices of a volume in a grid, each with the heat map laid over the anatomy on the shared
    scale (:func:`heat_over`) and the ground truth outlined in green; every lesion slice is shown
    (:func:`pick_slices`). Beneath: a colour bar with numbers; the caption names the display
    ``window`` (e.g. ``"window -600/1500"``: how scan values became grey levels)."""
    if volume_map.ndim != 3:
        raise ValueError(f"volume_map must be [slices, H, W], got {volume_map.shape}")
    display = _display_volume(volume_image)
    indices = pick_slices(volume_map, volume_mask, max_slices)
    cols = math.ceil(math.sqrt(len(indices)))
    rows = math.ceil(len(indices) / cols)
    size = _panel_size(volume_map.shape[1:], side)
    width, height = size
    bar = labelled_colour_bar(min(cols * (width + 2), 480), scale, threshold, cmap)
    canvas = np.zeros((_CAPTION_H + rows * (height + 2) + bar.shape[0], cols * (width + 2), 3), dtype=np.uint8)
    for n, z in enumerate(indices):
        img = _resize_rgb(_as_rgb(display[z]), size)
        tile = heat_over(img, _resize_float(volume_map[z], size), scale, cmap=cmap)
        lesion = volume_mask is not None and bool(volume_mask[z].any())
        if lesion:
            tile = _paint(tile, mask_contour(_resize_mask(volume_mask[z], size), 1), _GT_COLOUR, 1.0)
        r, c = divmod(n, cols)
        y, x = _CAPTION_H + r * (height + 2), c * (width + 2)
        canvas[y : y + height, x : x + width] = _label(tile, f"z={z}" + (" lesion" if lesion else ""))
    canvas[-bar.shape[0] :, : bar.shape[1]] = bar
    out = Image.fromarray(canvas)
    text = caption + (f" | {window}" if window else "") + " | green: ground truth"
    ImageDraw.Draw(out).text((4, 3), text, fill=(255, 255, 255), font=_font(12))
    return np.asarray(out)


_AXES: dict[str, tuple[str, str]] = {
    "roc": ("false positive rate", "true positive rate"),
    "pr": ("recall", "precision"),
    "pro": ("false positive rate", "per-region overlap"),
}


def curve_figure(kind: CurveKind, curves: Mapping[str, Curve], title: str, fpr_limit: float | None = None) -> Figure:
    """One figure with a line per category; the legend gives each curve's area when known."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    if kind not in _AXES:
        raise ValueError(f"curve kind must be one of {sorted(_AXES)}, got {kind!r}")
    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        label = name if curve.area is None else f"{name} ({curve.area:.3f})"
        ax.plot(np.asarray(curve.x), np.asarray(curve.y), label=label, linewidth=1.4)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    if fpr_limit is not None and kind in ("roc", "pro"):
        ax.axvline(fpr_limit, color="0.4", linestyle="--", linewidth=1, label=f"FPR limit {fpr_limit:g}")
    ax.set_xlabel(_AXES[kind][0])
    ax.set_ylabel(_AXES[kind][1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if kind != "pr" else "lower left", fontsize=8)
    fig.tight_layout()
    return fig
