"""Locate the real DICOM files shipped with pydicom and pydicom-data (never the network)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pydicom.data


def real_dicom_files() -> list[Path]:
    """Every file in pydicom's test data and the installed pydicom-data store, sorted."""
    from pydicom.data.data_manager import external_data_sources

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    roots += [Path(source.data_path) for source in external_data_sources().values()]
    return sorted({p for root in roots if root.is_dir() for p in root.rglob("*") if p.is_file()})


def with_pixel_data(paths: list[Path]) -> list[tuple[Path, pydicom.Dataset]]:
    """Files that parse as DICOM and carry pixel data, with their headers (pixels not read)."""
    found = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=False)
        except Exception:
            continue
        if any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            found.append((path, ds))
    return found


# ------------------------------------------------------------------ raw dataset layouts for prepare tests

import itertools  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

_SIZE = (16, 72)  # (H, W)


class Painter:
    """Writes images whose grey level encodes an id, and masks whose width encodes the same id, so a
    test can check from the pixels alone that each image got its own mask."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def image(self, path: Path, *, rgb: bool = True) -> int:
        ident = next(self._ids)
        value = np.full(_SIZE, 8 * ident, dtype=np.uint8)
        array = np.stack([value] * 3, axis=-1) if rgb else value
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, **({"quality": 100} if path.suffix.lower() in (".jpg", ".jpeg") else {}))
        return ident

    @staticmethod
    def mask(path: Path, ident: int) -> None:
        mask = np.zeros(_SIZE, dtype=np.uint8)
        mask[:, : 2 * ident] = 255
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(path, **({"quality": 100} if path.suffix.lower() in (".jpg", ".jpeg") else {}))

    def pair(self, image: Path, mask: Path | None) -> int:
        ident = self.image(image)
        if mask is not None:
            self.mask(mask, ident)
        return ident


def image_id(path: Path) -> int:
    """The id painted into an image by :class:`Painter`."""
    from medzsad.data.readers import read_image

    return round(float(np.mean(read_image(path).array)) / 8.0)


def mask_id(path: Path) -> int:
    """The id painted into a mask (JPEG masks may bleed a few columns; the lower bound is exact)."""
    from medzsad.data.readers import read_mask

    columns = int(read_mask(path).any(axis=0).sum())
    return columns // 2


def oracle_volume_map(volume, label, transform=None) -> np.ndarray:
    """What volume prediction does around a model that returns each slice's own mask: slice the volume,
    bring every map back to its slice's pixels and reassemble them on the scan's grid."""
    from medzsad.data.transforms import ClipImageTransform, map_to_original
    from medzsad.data.volumes import reassemble, volume_samples

    transform = transform or ClipImageTransform()
    samples = list(volume_samples(volume, transform=transform, label=label))
    pad = transform.pad_to_square
    maps = [map_to_original(s.mask.float(), s.original_size, pad_to_square=pad) for s in samples]
    return reassemble(maps, volume, "axial", [s.slice_index for s in samples])
