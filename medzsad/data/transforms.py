"""Image and mask transforms into the CLIP input space, and map transforms back out of it.

The default image transform reproduces the official AnomalyCLIP/FAPrompt/CoPS one exactly for 8-bit
files: PIL ``resize((S, S), BICUBIC)`` on the PIL image (aspect ratio squashed), RGB, ``/255``, then
``Normalize`` with the OpenAI CLIP mean/std. Medical data takes a float path instead: intensities are
mapped to [0, 1] (CT window in HU, MRI percentiles, ...), grey is repeated to three channels and the
resize runs on 32-bit float PIL images, so 12/16-bit data is never quantised to 8 bits first.

The mask transform is the official one: ``(L > 0) * 255`` -> PIL bilinear resize -> ``/255`` -> ``> 0.5``.

``pad_to_square`` (off by default, as in the official code) pads the image with black (after intensity
scaling, i.e. 0 in [0, 1]) to a centred square before resizing, so anatomy keeps its aspect ratio;
:func:`map_to_original` undoes either geometry for anomaly maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CT_PRESETS",
    "CT_WINDOWS",
    "ClipImageTransform",
    "ClipMaskTransform",
    "Intensity",
    "clip_image_transform",
    "clip_mask_transform",
    "map_to_original",
    "resize_float",
]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: CT windows as (level, width) in HU (Radiopaedia presets). ``brain`` is the default for CT.
CT_WINDOWS: Mapping[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "stroke": (32.0, 8.0),
    "bone": (600.0, 2800.0),
    "lung": (-600.0, 1500.0),
    "soft_tissue": (50.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "liver": (60.0, 150.0),
}

#: CT window preset by DICOM BodyPartExamined (used when no window is configured). Chest CT shows the
#: lungs (parenchyma is where most chest findings are); configure ``mediastinum`` for the soft tissue.
#: Any other or missing body part takes ``brain``, the window of the head-CT benchmarks.
CT_PRESETS: Mapping[str, str] = {
    "HEAD": "brain",
    "BRAIN": "brain",
    "SKULL": "bone",
    "NECK": "soft_tissue",
    "CHEST": "lung",
    "LUNG": "lung",
    "THORAX": "lung",
    "ABDOMEN": "soft_tissue",
    "PELVIS": "soft_tissue",
    "ABDOMENPELVIS": "soft_tissue",
    "LIVER": "liver",
    "CHESTABDOMEN": "soft_tissue",
    "CHEST_ABDOMEN_PELVIS": "soft_tissue",
    "WHOLEBODY": "soft_tissue",
    "WHOLE BODY": "soft_tissue",
    "SPINE": "bone",
    "CSPINE": "bone",
    "TSPINE": "bone",
    "LSPINE": "bone",
    "EXTREMITY": "bone",
}

IntensityMode = Literal["auto", "none", "window", "percentile", "range"]
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class Intensity:
    """How raw pixel values become [0, 1] before the CLIP normalisation.

    Modes:
        ``auto``: 8-bit data as is (/255, the official path); CT (modality ``CT``) through ``window``
            (default ``brain`` 40/80); anything else (MRI, 16-bit PNG, float volumes) through percentiles.
        ``none``: divide by the dtype's full range (uint8 /255, uint16 /65535; floats taken as [0, 1]).
        ``window``: a CT window, ``window=(level, width)`` in HU or a name from :data:`CT_WINDOWS`.
        ``percentile``: ``percentiles=(low, high)`` of the data (per image, or per volume when the
            caller passes ``value_range`` fitted on the whole volume) map to 0 and 1.
        ``range``: fixed ``value_range=(low, high)``.
    Values outside the range are clipped.
    """

    mode: IntensityMode = "auto"
    window: str | tuple[float, float] | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "none", "window", "percentile", "range"):
            raise ValueError(f"unknown intensity mode {self.mode!r}")
        if isinstance(self.window, str) and self.window not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {self.window!r}; known: {sorted(CT_WINDOWS)}")
        if self.mode == "range" and self.value_range is None:
            raise ValueError("intensity mode 'range' needs value_range=(low, high)")

    def window_for(self, body_part: str | None = None) -> str | tuple[float, float]:
        """The configured window, else the preset of ``body_part`` (:data:`CT_PRESETS`), else ``brain``."""
        if self.window is not None:
            return self.window
        return CT_PRESETS.get((body_part or "").upper().strip(), "brain")

    def window_range(self, body_part: str | None = None) -> tuple[float, float]:
        """The window as (low, high) HU (see :meth:`window_for`)."""
        window = self.window_for(body_part)
        level, width = CT_WINDOWS[window] if isinstance(window, str) else window
        return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0

    def is_official_8bit(self, array: np.ndarray) -> bool:
        """Whether this array takes the official uint8 PIL path (bit-exact with the reference code)."""
        return array.dtype == np.uint8 and self.mode in ("auto", "none")

    def fit(self, array: np.ndarray, modality: str | None = None, body_part: str | None = None) -> tuple[float, float]:
        """The (low, high) input values that map to 0 and 1 for this array (or volume); ``body_part``
        (DICOM BodyPartExamined) picks the CT window preset when no window is configured."""
        mode = self.mode
        if mode == "auto":
            if array.dtype == np.uint8:
                return 0.0, 255.0
            mode = "window" if (modality or "").upper() == "CT" else "percentile"
        if mode == "range":
            assert self.value_range is not None
            return float(self.value_range[0]), float(self.value_range[1])
        if mode == "window":
            return self.window_range(body_part)
        if mode == "none":
            if np.issubdtype(array.dtype, np.integer):
                info = np.iinfo(array.dtype)
                return float(max(info.min, 0)), float(info.max)
            return 0.0, 1.0
        finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
        if finite.size == 0:
            return 0.0, 1.0
        low, high = np.percentile(finite, self.percentiles)
        return float(low), float(high)

    def describe(self, modality: str | None = None, dtype: np.dtype | None = None, body_part: str | None = None) -> str:
        """A short, loggable description of the mapping (goes into ``Sample.meta['intensity']``), e.g.
        ``"window 40/80"`` or, for a preset chosen by body part, ``"window -600/1500 lung"``."""
        if self.mode == "auto":
            if dtype == np.uint8:
                return "8bit"
            if (modality or "").upper() == "CT":
                return self._describe_window(body_part)
            return "percentile {:g}-{:g}".format(*self.percentiles)
        if self.mode == "window":
            return self._describe_window(body_part)
        if self.mode == "percentile":
            return "percentile {:g}-{:g}".format(*self.percentiles)
        return self.mode

    def _describe_window(self, body_part: str | None) -> str:
        low, high = self.window_range(body_part)
        text = f"window {(low + high) / 2.0:g}/{high - low:g}"
        preset = (body_part or "").upper().strip()
        if self.window is None and preset in CT_PRESETS:
            text += f" {CT_PRESETS[preset]}"
        return text


def scale_to_unit(array: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map ``value_range`` linearly to [0, 1] and clip; float32 out, same shape."""
    low, high = float(value_range[0]), float(value_range[1])
    scale = 1.0 / (high - low) if high > low else 0.0
    out = (array.astype(np.float32) - np.float32(low)) * np.float32(scale)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0, out=out)


def resize_float(array: np.ndarray, size_hw: tuple[int, int], resample: str = "bilinear", box=None) -> np.ndarray:
    """Resize a 2-D float map with Pillow's 32-bit float filters (antialiased when shrinking).

    Args:
        array: ``[H, W]`` numeric.
        size_hw: output ``(H', W')``.
        resample: ``bilinear``, ``bicubic`` or ``nearest``.
        box: optional source crop ``(x0, y0, x1, y1)`` in (fractional) pixels, as in ``PIL.Image.resize``.
    Returns:
        float32 ``[H', W']``.
    """
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F")
    out = image.resize((int(size_hw[1]), int(size_hw[0])), _RESAMPLE[resample], box=box)
    return np.asarray(out, dtype=np.float32)


def _square_offsets(height: int, width: int) -> tuple[int, int, int]:
    side = max(height, width)
    return side, (side - height) // 2, (side - width) // 2


def _pad_array(array: np.ndarray) -> np.ndarray:
    """Centre ``[H, W(, C)]`` in a zero square ``[L, L(, C)]``, ``L = max(H, W)``."""
    h, w = array.shape[:2]
    side, top, left = _square_offsets(h, w)
    out = np.zeros((side, side, *array.shape[2:]), dtype=array.dtype)
    out[top : top + h, left : left + w] = array
    return out


def _pad_pil(image: Image.Image) -> Image.Image:
    side, top, left = _square_offsets(image.height, image.width)
    if side == image.height == image.width:
        return image
    canvas = Image.new(image.mode, (side, side))
    if image.mode == "P":
        canvas.putpalette(image.getpalette() or [])
    canvas.paste(image, (left, top))
    return canvas


class ClipImageTransform:
    """Image -> CLIP input ``[3, S, S]`` float32 (see the module docstring).

    Args:
        image_size: S, the square model input size (518 for the methods here).
        pad_to_square: pad to a centred square before resizing instead of squashing the aspect ratio.
        intensity: the intensity mapping for non-8-bit data (:class:`Intensity`).
        mean, std: normalisation constants (OpenAI CLIP by default).
    """

    def __init__(
        self,
        image_size: int = 518,
        *,
        pad_to_square: bool = False,
        intensity: Intensity | None = None,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
    ) -> None:
        self.image_size = int(image_size)
        self.pad_to_square = pad_to_square
        self.intensity = intensity or Intensity()
        self.mean = list(mean)
        self.std = list(std)

    def __call__(
        self,
        image: Image.Image | np.ndarray,
        *,
        modality: str | None = None,
        value_range: tuple[float, float] | None = None,
        body_part: str | None = None,
    ) -> torch.Tensor:
        """Transform one image.

        Args:
            image: a PIL image, or an array ``[H, W]`` (grey) / ``[H, W, 3]`` (RGB) in physical units.
            modality: DICOM modality code when known (chooses the ``auto`` intensity mapping).
            value_range: precomputed (low, high) for the intensity mapping, e.g. fitted on a whole
                volume so all its slices share one scale; overrides :meth:`Intensity.fit`.
            body_part: DICOM BodyPartExamined, picks the CT window preset (:data:`CT_PRESETS`).
        Returns:
            float32 ``[3, S, S]``.
        """
        if isinstance(image, Image.Image):
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                image = np.asarray(image)
            elif value_range is None and self.intensity.mode in ("auto", "none"):
                return self._official(image)
            else:
                image = np.asarray(image.convert("RGB"))
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[2] == 4:  # drop alpha, as PIL's convert("RGB") does
            array = array[..., :3]
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
            raise ValueError(f"expected an image [H, W] or [H, W, 3], got shape {array.shape}")
        if value_range is None and self.intensity.is_official_8bit(array):
            return self._official(Image.fromarray(array))
        value_range = value_range or self.intensity.fit(array, modality, body_part)
        return self._float(scale_to_unit(array, value_range))

    def _official(self, image: Image.Image) -> torch.Tensor:
        # Resize in the image's own mode, then RGB: the order of the reference transform.
        if self.pad_to_square:
            image = _pad_pil(image)
        size = (self.image_size, self.image_size)
        image = image.resize(size, Image.BICUBIC).convert("RGB")
        return self._normalise(TF.to_tensor(image))

    def _float(self, unit: np.ndarray) -> torch.Tensor:
        if self.pad_to_square:
            unit = _pad_array(unit)
        size = (self.image_size, self.image_size)
        # Bicubic overshoots; clip to [0, 1] like the 8-bit path's uint8 saturation does.
        if unit.ndim == 2:  # grey: resize once, then repeat to three channels
            grey = np.clip(resize_float(unit, size, "bicubic"), 0.0, 1.0)
            resized = np.broadcast_to(grey, (3, *grey.shape))
        else:
            resized = np.stack([np.clip(resize_float(unit[..., c], size, "bicubic"), 0.0, 1.0) for c in range(3)])
        return self._normalise(torch.from_numpy(np.ascontiguousarray(resized)))

    def _normalise(self, tensor: torch.Tensor) -> torch.Tensor:
        return TF.normalize(tensor, self.mean, self.std)


class ClipMaskTransform:
    """Binary mask -> bool ``[S, S]`` exactly as the official target transform (see module docstring).

    Args:
        image_size: S.
        pad_to_square: must match the image transform.
    """

    def __init__(self, image_size: int = 518, *, pad_to_square: bool = False) -> None:
        self.image_size = int(image_size)
        self.pad_to_square = pad_to_square

    def __call__(self, mask: Image.Image | np.ndarray) -> torch.Tensor:
        """``mask``: PIL image (converted to L as the official loader does) or an array; nonzero = lesion."""
        if isinstance(mask, Image.Image):
            binary = np.asarray(mask.convert("L")) > 0 if mask.mode not in ("I", "I;16", "F") else None
            if binary is None:
                binary = np.asarray(mask) > 0
        else:
            binary = np.asarray(mask)
            binary = (binary.max(axis=-1) if binary.ndim == 3 else binary) > 0
        if self.pad_to_square:
            binary = _pad_array(binary)
        image = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
        image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        soft = TF.to_tensor(image)[0]
        return soft > 0.5


def clip_image_transform(
    image_size: int = 518, *, pad_to_square: bool = False, intensity: Intensity | None = None
) -> ClipImageTransform:
    """The image transform (official behaviour with the defaults); see :class:`ClipImageTransform`."""
    return ClipImageTransform(image_size, pad_to_square=pad_to_square, intensity=intensity)


def clip_mask_transform(image_size: int = 518, *, pad_to_square: bool = False) -> ClipMaskTransform:
    """The mask transform (official behaviour with the defaults); see :class:`ClipMaskTransform`."""
    return ClipMaskTransform(image_size, pad_to_square=pad_to_square)


def map_to_original(
    anomaly_map: np.ndarray | torch.Tensor,
    original_size: tuple[int, int],
    *,
    pad_to_square: bool = False,
    resample: str = "bilinear",
) -> np.ndarray:
    """Bring an ``[S, S]`` map at model resolution back to the source image's ``(H, W)`` pixels.

    Undoes the geometry of :class:`ClipImageTransform`: with ``pad_to_square`` only the part of the
    map that covers the image (not the padding) is resampled. Pillow's float bilinear filter
    antialiases when shrinking, so a map equal to the resized mask keeps lesion pixels above the rest.

    Returns:
        float32 ``[H, W]``.
    """
    if isinstance(anomaly_map, torch.Tensor):
        anomaly_map = anomaly_map.detach().float().cpu().numpy()
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {anomaly_map.shape}")
    height, width = int(original_size[0]), int(original_size[1])
    box = None
    if pad_to_square:
        side, top, left = _square_offsets(height, width)
        scale = anomaly_map.shape[0] / side
        box = (left * scale, top * scale, (left + width) * scale, (top + height) * scale)
    return resize_float(anomaly_map, (height, width), resample, box=box)
