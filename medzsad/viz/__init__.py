"""Rendering in one place: display pixels, heat maps on a shared colour scale, tiles, volume and
curve figures. Used by ``engine.predict`` (overlays) and ``tracking`` (review); knows neither.
"""

from medzsad.viz.display import display_images
from medzsad.viz.render import Curve, CurveKind, MapScale, curve_figure, heat_rgb, mask_contour
from medzsad.viz.sample import ReviewSample

__all__ = [
    "Curve",
    "CurveKind",
    "MapScale",
    "ReviewSample",
    "curve_figure",
    "display_images",
    "heat_rgb",
    "mask_contour",
]
