"""The one sample builder: every :class:`~medzsad.data.records.Sample` of medzsad (manifest images,
folder images and frames, volume slices, ``predict`` inputs) is made by :class:`SampleBuilder`, through
one MONAI ``Compose`` of dictionary transforms:

    {image [C, H, W], modality, body_part, value_range}
      -> the user's MONAI transforms (``data.transforms`` in the config, in physical units)
      -> ClipImaged (intensity: CT window / MRI percentiles, then the official CLIP resize)
      -> ClipMaskd (the official mask transform)

Loading and orientation happen before (:mod:`medzsad.data.readers`, :mod:`medzsad.data.volumes`,
:class:`medzsad.data.monai_io.DicomPixelReader`), so a volume is read and oriented once for all of its
slices and its intensity range is fitted once. Sample ids are keyed hashes of one identity scheme:
``<source identity>`` for an image, ``#frame<i>`` appended for a frame, ``#<axis><k>`` for a slice,
prefixed by ``<category>|`` when the dataset names categories (manifests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medzsad.data.errors import DataError
from medzsad.data.ids import pseudonymous_id
from medzsad.data.monai_io import ClipImaged, ClipMaskd, channel_first
from medzsad.data.records import LABEL_ABNORMAL, LABEL_NORMAL, LABEL_UNKNOWN, Sample
from medzsad.data.transforms import ClipImageTransform, ClipMaskTransform

__all__ = ["SampleBuilder", "slice_identity", "user_transforms"]

_SPECIES = {LABEL_ABNORMAL: "lesion", LABEL_NORMAL: "good"}


def slice_identity(identity: str, axis_name: str, index: int) -> str:
    """The identity of slice ``index`` along ``axis_name`` of a volume (hashed into its sample id)."""
    return f"{identity}#{axis_name}{index}"


class SampleBuilder:
    """Builds samples through one MONAI ``Compose`` (module docstring).

    Args:
        transform: the CLIP image transform (size, padding, intensity).
        user_transforms: MONAI dictionary transforms run before the CLIP transform on ``image``, a
            channel-first ``[C, H, W]`` ``MetaTensor`` in physical units (HU for CT; 8-bit files stay
            ``uint8``, and take the float path if a transform changes that), with ``modality`` and
            ``body_part`` beside it. They must keep the image size, so maps fall on the source pixels.
        salt: HMAC key for sample ids.
    """

    def __init__(
        self,
        transform: ClipImageTransform,
        user_transforms: Sequence[Any] = (),
        salt: str | bytes | None = None,
    ) -> None:
        self.transform = transform
        self.mask_transform = ClipMaskTransform(transform.image_size, pad_to_square=transform.pad_to_square)
        self.user_transforms = list(user_transforms)
        self.pipeline = Compose([*self.user_transforms, ClipImaged(transform), ClipMaskd(self.mask_transform)])
        self.salt = salt

    def volume_range(self, array: np.ndarray, modality: str | None, body_part: str | None = None):
        """Intensity range fitted once on a whole volume (``None`` for 8-bit data on the official path)."""
        if self.transform.intensity.is_official_8bit(array):
            return None
        return self.transform.intensity.fit(array, modality, body_part)

    def sample(
        self,
        image: np.ndarray,
        *,
        identity: str,
        modality: str | None = None,
        meta: dict[str, Any] | None = None,
        value_range: tuple[float, float] | None = None,
        mask: np.ndarray | None = None,
        label: int = LABEL_UNKNOWN,
        category: str = "",
        specie: str | None = None,
        slice_index: int | None = None,
        volume_id: str | None = None,
        id_prefix: str = "",
    ) -> Sample:
        """One sample from a 2-D ``image`` (``[H, W]`` or ``[H, W, 3]``) and its optional ``mask``.

        ``mask`` is ``[H, W]`` bool, or already a ``[S, S]`` tensor; ``specie`` defaults to
        ``lesion``/``good`` by label. ``id_prefix`` (e.g. ``"brain|"``) goes in front of the identity.
        """
        meta = dict(meta or {})
        body_part = meta.get("body_part")
        size = (int(image.shape[0]), int(image.shape[1]))
        pixels = channel_first(np.ascontiguousarray(image))
        if self.user_transforms:  # MONAI transforms expect a (writable) MetaTensor, dtype kept
            pixels = MetaTensor(torch.from_numpy(np.array(pixels)))
        data = {"image": pixels, "modality": modality, "body_part": body_part}
        data["value_range"] = value_range
        data["mask"] = None if isinstance(mask, torch.Tensor) else mask
        out = self.pipeline(data)
        if out["original_size"] != size:
            # Inverting a crop/resample onto the map is not implemented: refuse rather than misplace maps.
            change = f"{size} -> {out['original_size']}"
            raise DataError(None, f"data.transforms changed the image size {change}; use size-keeping transforms")
        return Sample(
            image=out["image"],
            mask=mask if isinstance(mask, torch.Tensor) else out["mask"],
            label=label,
            category=category,
            sample_id=pseudonymous_id(id_prefix + identity, salt=self.salt),
            specie=_SPECIES.get(label, "") if specie is None else specie,
            original_size=size,
            slice_index=slice_index,
            volume_id=volume_id,
            meta={**meta, "intensity": out["intensity"]},
        )


def user_transforms(specs: Sequence[Any], key: str = "data.transforms") -> list[Any]:
    """MONAI transforms from bundle-style specs (``{"_target_": "CropForegroundd", "keys": "image"}``;
    short names are looked up in MONAI, dotted paths anywhere), as ``data.transforms`` in a YAML config.

    Raises:
        ValueError: naming ``data.transforms[i]`` and the problem, for a spec MONAI cannot build.
    """
    from monai.bundle import ConfigParser

    built = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "_target_" not in spec:
            raise ValueError(f"{key}[{i}]: expected a mapping with _target_ (e.g. _target_: CropForegroundd)")
        try:
            transform = ConfigParser({"t": dict(spec)}).get_parsed_content("t", instantiate=True)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            raise ValueError(f"{key}[{i}]: cannot build {spec['_target_']!r} ({text[0] if text else exc!r})") from None
        if not callable(transform):
            raise ValueError(f"{key}[{i}]: {spec['_target_']!r} is not a transform")
        built.append(transform)
    return built
