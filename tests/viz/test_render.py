"""Rendering: one shared colour scale, contours, tiles and volume figures."""

from __future__ import annotations

import numpy as np
import pytest

from medzsad.viz import MapScale
from medzsad.viz.render import Curve, curve_figure, heat_rgb, mask_contour, render_tile, render_volume


def _brightness(rgb: np.ndarray) -> float:
    return float(rgb.astype(np.float32).mean())


def test_shared_scale_renders_a_low_scoring_normal_map_dim() -> None:
    normal = np.full((32, 32), 0.05, dtype=np.float32)
    normal[8:12, 8:12] = 0.1  # its own maximum: per-image min-max would paint this at full colour
    anomalous = np.zeros((32, 32), dtype=np.float32)
    anomalous[10:20, 10:20] = 0.9
    scale = MapScale.from_maps([normal, anomalous])
    assert (scale.vmin, scale.vmax) == (0.0, pytest.approx(0.9))

    shared = heat_rgb(normal, scale)
    own = heat_rgb(normal, MapScale.from_maps([normal]))
    hot = heat_rgb(anomalous, scale)
    assert _brightness(shared) < 40, "a normal image with low scores must render dim"
    assert _brightness(own[8:12, 8:12]) > 200, "sanity: per-image scaling would saturate it"
    assert _brightness(hot[10:20, 10:20]) > 200


def test_scale_ignores_nan_and_handles_constant_maps() -> None:
    scale = MapScale.from_maps([np.array([[np.nan, 0.2], [0.2, 0.2]], dtype=np.float32)])
    assert scale.vmin == pytest.approx(0.2) and scale.vmax > scale.vmin
    assert MapScale.from_maps([]) == MapScale(0.0, 1.0)
    with pytest.raises(ValueError):
        MapScale(1.0, 0.0)


def test_mask_contour_is_the_outline() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    contour = mask_contour(mask)
    assert contour.sum() == 12  # 4x4 square: 16 pixels, 4 inside
    assert not contour[3:5, 3:5].any()
    assert not mask_contour(np.zeros((4, 4), dtype=bool)).any()


def test_tile_has_four_panels_caption_and_colour_bar() -> None:
    image = np.full((40, 80, 3), 100, dtype=np.uint8)
    amap = np.zeros((20, 40), dtype=np.float32)
    amap[5:10, 10:20] = 1.0
    mask = np.zeros((40, 80), dtype=bool)
    mask[10:20, 20:40] = True
    strip = render_tile(image, amap, mask, MapScale(0.0, 1.0), 0.5, "s1 | brain", side=128, columns=4)
    assert strip.dtype == np.uint8 and strip.shape == (18 + 66 + 34, 4 * 130 - 2, 3)
    # Prediction panel (4th) has red where the map passes the threshold.
    pred = strip[18 + 20 : 18 + 28, 3 * 130 + 36 : 3 * 130 + 60]
    assert pred[..., 0].mean() > pred[..., 1].mean() + 40

    square = render_tile(image, amap, mask, MapScale(0.0, 1.0), 0.5, "s1 | brain", side=128)
    assert square.shape == (18 + 2 * 66 + 34, 2 * 130 - 2, 3)
    pred = square[18 + 66 + 20 : 18 + 66 + 28, 130 + 36 : 130 + 60]
    assert pred[..., 0].mean() > pred[..., 1].mean() + 40
    bar = square[-32:-20, 10:248].astype(int)
    assert bar[5, -1].sum() > bar[5, 0].sum() + 300, "the colour bar runs dark to bright beneath the tile"
    heat = square[18 + 66 + 20 : 18 + 66 + 28, 36:60].astype(int)  # heat panel (3rd) over the hot region
    calm = square[18 + 66 + 40 : 18 + 66 + 60, 70:120].astype(int)
    assert np.abs(calm - 100).max() <= 1, "low scores leave the anatomy grey"
    assert np.abs(heat - 100).mean() > 40, "high scores are coloured over the anatomy"


def test_tile_accepts_grayscale_and_rejects_float_images() -> None:
    amap = np.zeros((8, 8), dtype=np.float32)
    render_tile(np.zeros((8, 8), dtype=np.uint8), amap, None, MapScale(0, 1), 0.5, "x", side=32)
    with pytest.raises(ValueError, match="uint8"):
        render_tile(np.zeros((8, 8, 3), dtype=np.float32), amap, None, MapScale(0, 1), 0.5, "x", side=32)


def test_volume_figure_tiles_slices_and_keeps_the_lesion_slice() -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, size=(40, 24, 24)).astype(np.float32)
    vmap = np.zeros((40, 24, 24), dtype=np.float32)
    vmap[17, 5:10, 5:10] = 0.8
    mask = np.zeros((40, 24, 24), dtype=bool)
    mask[17, 4:11, 4:11] = True
    figure = render_volume(
        volume, vmap, mask, MapScale(0.0, 1.0), "vol-1", max_slices=9, side=48, window="window 40/80"
    )
    assert figure.shape == (18 + 3 * 50 + 34, 3 * 50, 3), "caption, 3x3 slices, colour bar"
    bar = figure[-34:-22, 10:140].astype(int)
    assert bar[:, -1].sum() > bar[:, 0].sum() + 300, "the colour bar runs dark to bright"

    from medzsad.viz.render import pick_slices

    chosen = pick_slices(vmap, mask, 9)
    assert 17 in chosen and len(chosen) == 9
    # A nodule over slices 31-35 of a long volume: every lesion slice is shown.
    mask[31:36, 10:12, 10:12] = True
    chosen = pick_slices(vmap, mask, 4)
    assert {17, 31, 32, 33, 34, 35} <= set(chosen)


def test_heat_over_leaves_low_scores_grey() -> None:
    from medzsad.viz.render import heat_over

    gray = np.full((8, 8, 3), 120, dtype=np.uint8)
    amap = np.zeros((8, 8), dtype=np.float32)
    amap[:4] = 1.0
    out = heat_over(gray, amap, MapScale(0.0, 1.0))
    assert np.array_equal(out[4:], gray[4:]), "a low score does not tint the anatomy"
    assert not np.array_equal(out[:4], gray[:4])


def test_curve_figure_has_one_line_per_category() -> None:
    x = np.linspace(0, 1, 20)
    fig = curve_figure("pro", {"brain": Curve(x, x**0.3, 0.81), "head": Curve(x, x, None)}, "pixel PRO", 0.3)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["brain (0.810)", "head"]
    with pytest.raises(ValueError):
        curve_figure("det", {}, "x")  # type: ignore[arg-type]


def test_overlay_has_caption_heat_over_anatomy_and_a_numbered_bar() -> None:
    from medzsad.viz.render import render_overlay

    image = np.full((60, 200), 90, dtype=np.uint8)
    amap = np.zeros((60, 200), dtype=np.float32)
    amap[20:40, 20:60] = 0.9
    out = render_overlay(image, amap, MapScale(0.0, 1.0), "abc | score 0.9 | window 40/80")
    assert out.shape == (18 + 60 + 34, 200, 3)
    assert out[:18].max() > 200, "caption text"
    assert np.abs(out[18 + 50, 150].astype(int) - 90).max() <= 1, "a low score leaves the pixel grey"
    assert np.abs(out[18 + 30, 40].astype(int) - 90).max() > 60, "a high score is coloured"
    assert out[-14:].max() > 200, "numbers under the colour bar"
