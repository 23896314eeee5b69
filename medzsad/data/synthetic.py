"""Synthetic data for tests, demos and smoke runs (fast: a few seconds at most).

* :func:`make_mvtec_like`: an MVTec-layout auxiliary set of procedural textures with painted defects
  and their masks (``<cls>/{train,test}/<specie>/NNN.png``, ``<cls>/ground_truth/<specie>/NNN_mask.png``).
* :func:`make_phantom`: a head-CT-like phantom volume in HU with a lesion label map and markers that
  make every axis direction distinguishable (a flip or transpose anywhere changes the array).
* Writers for the phantom as NIfTI, NRRD and a DICOM series, and :func:`write_dicom_image` for single
  2-D DICOM files (MONOCHROME1, colour, ...). DICOM headers carry clearly fake identifiers
  (:data:`FAKE_IDENTIFIERS`), so PHI tests can look for them in everything the pipeline emits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "FAKE_IDENTIFIERS",
    "make_mvtec_like",
    "make_phantom",
    "make_texture",
    "paint_defect",
    "write_dicom_image",
    "write_phantom_dicom_series",
    "write_phantom_nifti",
    "write_phantom_nrrd",
]

#: Fake, clearly synthetic identifiers written into every synthetic DICOM header.
FAKE_IDENTIFIERS: dict[str, str] = {
    "PatientName": "SYNTHETIC^TESTSUBJECT",  # no part of it may name a demo dataset (the PHI guard refuses that)
    "PatientID": "SYNTH-SUBJECT-0001",
    "PatientBirthDate": "19000101",
    "PatientSex": "O",
    "AccessionNumber": "SYNTHACC0001",
    "StudyDate": "19000102",
    "SeriesDate": "19000102",
    "StudyID": "SYNTHSTUDY1",
    "InstitutionName": "SYNTHETIC INSTITUTION FOR TESTS",
    "ReferringPhysicianName": "SYNTHETIC^REFERRER",
}

_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's example root; UIDs below are derived from a seed


# --------------------------------------------------------------------------------------------- textures


def make_texture(size: tuple[int, int], rng: np.random.Generator, kind: str = "weave") -> np.ndarray:
    """Procedural texture, uint8 ``[H, W, 3]``. ``kind``: ``weave`` (oriented stripes) or ``grain``."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "weave":
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(0.15, 0.3)
        u = np.cos(angle) * xx + np.sin(angle) * yy
        v = -np.sin(angle) * xx + np.cos(angle) * yy
        base = 0.5 + 0.25 * np.sin(freq * u) * np.sin(freq * v)
    else:
        base = 0.5 + 0.1 * np.sin(0.05 * xx + rng.uniform(0, 6)) + 0.1 * np.cos(0.07 * yy)
    base = base + 0.08 * rng.standard_normal((h, w)).astype(np.float32)
    colour = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    rgb = np.clip(base[..., None] * colour * 255.0, 0, 255)
    return rgb.astype(np.uint8)


def paint_defect(image: np.ndarray, rng: np.random.Generator, kind: str = "blob") -> tuple[np.ndarray, np.ndarray]:
    """Paint a defect into a copy of ``image``; returns ``(image, mask)`` with mask uint8 0/255 ``[H, W]``.

    ``kind``: ``blob`` (dark ellipse) or ``scratch`` (bright line).
    """
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    if kind == "blob":
        ry, rx = rng.integers(max(3, h // 12), max(4, h // 6)), rng.integers(max(3, w // 12), max(4, w // 6))
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        colour = np.array([30, 25, 20], dtype=np.float32)
    else:
        angle = rng.uniform(0, np.pi)
        dist = np.abs(-np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy))
        along = np.abs(np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy))
        mask = (dist <= 1.5) & (along <= min(h, w) // 4)
        colour = np.array([250, 250, 240], dtype=np.float32)
    out = image.astype(np.float32)
    out[mask] = 0.2 * out[mask] + 0.8 * colour
    return out.astype(np.uint8), mask.astype(np.uint8) * 255


def make_mvtec_like(
    root: str | Path,
    *,
    categories: Sequence[str] = ("weave", "grain"),
    defects: Sequence[str] = ("blob", "scratch"),
    n_train: int = 3,
    n_test_good: int = 2,
    n_test_defect: int = 2,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
) -> Path:
    """Write an MVTec-AD-layout auxiliary set under ``root`` (``size`` is (H, W)); returns ``root``.

    A category's texture kind is ``weave`` if its name contains "weave" else ``grain``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for cls_name in categories:
        kind = "weave" if "weave" in cls_name else "grain"

        def save(rel: str, array: np.ndarray, cls_name: str = cls_name) -> None:
            path = root / cls_name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)

        for i in range(n_train):
            save(f"train/good/{i:03d}.png", make_texture(size, rng, kind))
        for i in range(n_test_good):
            save(f"test/good/{i:03d}.png", make_texture(size, rng, kind))
        for defect in defects:
            for i in range(n_test_defect):
                image, mask = paint_defect(make_texture(size, rng, kind), rng, defect)
                save(f"test/{defect}/{i:03d}.png", image)
                save(f"ground_truth/{defect}/{i:03d}_mask.png", mask)
    return root


# ----------------------------------------------------------------------------------------------- phantom


def make_phantom(shape: tuple[int, int, int] = (12, 40, 32), *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Head-CT-like phantom in the canonical orientation (``[z, y, x]``, x->Left, y->Posterior, z->Superior).

    Returns:
        ``(image, label)``: float32 HU (air -1000, skull 1000, brain 35, lesion 70, plus noise) and uint8
        lesion labels. Markers make every direction distinguishable: a bright bar near the left
        (high x), anterior (low y) corner that grows towards superior (high z), and the lesion in the
        right (low x) posterior (high y) half.
    """
    z, y, x = shape
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, z), np.linspace(-1, 1, y), np.linspace(-1, 1, x), indexing="ij")
    radius = np.sqrt((xx / 0.8) ** 2 + (yy / 0.9) ** 2 + (zz / 1.2) ** 2)
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[radius <= 1.0] = 1000.0  # skull
    image[radius <= 0.85] = 35.0  # brain
    lesion = ((xx + 0.35) / 0.22) ** 2 + ((yy - 0.3) / 0.18) ** 2 + ((zz - 0.1) / 0.5) ** 2 <= 1.0
    image[lesion] = 70.0
    # Marker: left-anterior, its length along x grows with z (breaks every flip and transpose).
    for k in range(z):
        length = 1 + (k * max(1, x // 4)) // max(1, z - 1)
        image[k, 1:3, x - 1 - length : x - 1] = 2000.0
    image += rng.normal(0.0, 2.0, size=shape).astype(np.float32)
    return image.astype(np.float32), lesion.astype(np.uint8)


def _canonical_affine(shape: tuple[int, int, int], spacing_zyx: Sequence[float]) -> np.ndarray:
    """RAS affine of the (x, y, z) index for an LPS-aligned grid with origin at voxel 0."""
    affine = np.diag([-spacing_zyx[2], -spacing_zyx[1], spacing_zyx[0], 1.0])
    affine[:3, 3] = (10.0, -20.0, 30.0)  # an arbitrary, non-zero origin
    return affine


def write_phantom_nifti(
    path: str | Path,
    volume: np.ndarray,
    *,
    spacing_zyx: Sequence[float] = (3.0, 0.9, 0.8),
    layout: str = "RAS",
) -> np.ndarray:
    """Write a canonical ``[z, y, x]`` array as NIfTI stored in another voxel layout; returns the affine.

    ``layout``: axis codes of the stored (i, j, k) voxel axes, e.g. ``"RAS"`` (x and y flipped against
    the canonical LPS), ``"LPS"`` (as canonical) or ``"PSL"`` (axes permuted as well). The geometry is
    exact either way: reading it back must give the canonical array unchanged.
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

    xyz = np.asarray(volume).transpose(2, 1, 0)
    canonical = _canonical_affine(volume.shape, spacing_zyx)
    transform = ornt_transform(axcodes2ornt(("L", "P", "S")), axcodes2ornt(tuple(layout)))
    stored = apply_orientation(xyz, transform)
    affine = canonical @ inv_ornt_aff(transform, xyz.shape)
    img = nib.Nifti1Image(np.ascontiguousarray(stored), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return affine


def write_phantom_nrrd(path: str | Path, volume: np.ndarray, *, spacing_zyx: Sequence[float] = (3.0, 0.9, 0.8)) -> None:
    """Write a canonical ``[z, y, x]`` array as NRRD (identity direction, i.e. LPS) with SimpleITK."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(volume))
    img.SetSpacing((float(spacing_zyx[2]), float(spacing_zyx[1]), float(spacing_zyx[0])))
    img.SetOrigin((-10.0, 20.0, 30.0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)


def _uid(seed: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=_UID_ROOT, entropy_srcs=[seed]))


def _base_dataset(modality: str, series_seed: str, sop_class: str) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    for keyword, value in FAKE_IDENTIFIERS.items():
        setattr(ds, keyword, value)
    ds.Modality = modality
    ds.StudyInstanceUID = _uid(f"study-{series_seed}")
    ds.SeriesInstanceUID = _uid(f"series-{series_seed}")
    ds.FrameOfReferenceUID = _uid(f"for-{series_seed}")
    ds.SeriesDescription = "SYNTHETIC PHANTOM SERIES"
    ds.StudyTime, ds.SeriesNumber = "120000", 1
    return ds


def _save(ds: Any, path: Path) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_phantom_dicom_series(
    folder: str | Path,
    volume: np.ndarray,
    *,
    spacing_zyx: Sequence[float] = (3.0, 0.9, 0.8),
    modality: str = "CT",
    series_seed: str = "phantom",
    intercept: float = -1024.0,
) -> list[Path]:
    """Write a canonical ``[z, y, x]`` HU array as a DICOM series (one file per axial slice).

    File names and InstanceNumbers run opposite to the slice positions, so a reader that orders by
    name or number instead of geometry gets the volume upside down. Stored as uint16 with
    ``RescaleIntercept = intercept``. Returns the written paths.
    """
    from pydicom.uid import CTImageStorage, MRImageStorage

    folder = Path(folder)
    z, y, x = volume.shape
    origin = np.array([-10.0, 20.0, 30.0])
    paths = []
    for k in range(z):
        ds = _base_dataset(modality, series_seed, CTImageStorage if modality == "CT" else MRImageStorage)
        ds.SOPInstanceUID = _uid(f"{series_seed}-sop-{k}")
        ds.InstanceNumber = z - k  # reversed on purpose
        # Rows follow +y (posterior), columns follow +x (left): DICOM's own axial convention.
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [float(v) for v in origin + np.array([0.0, 0.0, k * spacing_zyx[0]])]
        ds.PixelSpacing = [float(spacing_zyx[1]), float(spacing_zyx[2])]
        ds.SliceThickness = float(spacing_zyx[0])
        ds.Rows, ds.Columns = y, x
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, float(intercept)
        stored = np.clip(np.rint(volume[k] - intercept), 0, 65535).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        path = folder / f"IM{z - 1 - k:04d}.dcm"
        _save(ds, path)
        paths.append(path)
    return paths


def write_dicom_image(
    path: str | Path,
    array: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "OT",
    slope: float | None = None,
    intercept: float | None = None,
    seed: str = "image",
) -> Path:
    """Write one 2-D image as DICOM (uncompressed).

    Args:
        array: uint8/uint16 ``[H, W]`` stored values, or uint8 ``[H, W, 3]`` RGB.
        photometric: ``MONOCHROME1``/``MONOCHROME2`` for grey; ``RGB`` or ``YBR_FULL`` for colour
            (RGB input is converted to YBR_FULL when asked).
        slope, intercept: optional Rescale Slope/Intercept.
    """
    from pydicom.pixels import convert_color_space
    from pydicom.uid import SecondaryCaptureImageStorage

    path = Path(path)
    ds = _base_dataset(modality, seed, SecondaryCaptureImageStorage)
    ds.SOPInstanceUID = _uid(f"{seed}-sop")
    ds.Rows, ds.Columns = array.shape[:2]
    if array.ndim == 3:
        values = np.ascontiguousarray(array.astype(np.uint8))
        if photometric == "YBR_FULL":
            values = convert_color_space(values, "RGB", "YBR_FULL")
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        bits = 8
    else:
        values = np.ascontiguousarray(array)
        ds.SamplesPerPixel = 1
        bits = 8 if values.dtype == np.uint8 else 16
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if slope is not None or intercept is not None:
        ds.RescaleSlope = float(1.0 if slope is None else slope)
        ds.RescaleIntercept = float(0.0 if intercept is None else intercept)
    ds.PixelData = values.tobytes()
    _save(ds, path)
    return path
