"""3-D volumes: reading (NIfTI, NRRD/MHA, DICOM series and multi-frame), slicing into samples, and
putting per-slice maps back into a volume written as NIfTI in the scan's own geometry.

Orientation convention (one for every reader; see docs/data.md):

* ``Volume.array`` is indexed ``[z, y, x]`` (the numpy order SimpleITK uses) and is reoriented on load,
  by axis permutations and flips only (no resampling), so that **x increases towards the patient's
  Left, y towards Posterior and z towards Superior** (LPS, the DICOM/ITK patient frame). For an
  oblique scan the closest axes are used and the obliquity stays in the affine.
* ``Volume.affine`` maps ``(x, y, z, 1)`` voxel indices (the array index reversed) to **RAS** millimetres,
  i.e. it is the nibabel affine of ``array.transpose(2, 1, 0)``.
* Slices are returned in display orientation: ``axial`` (along z) ``array[k]``: rows anterior -> posterior,
  columns patient right -> left (radiological view, as a DICOM viewer shows an axial image);
  ``coronal`` (along y) and ``sagittal`` (along x): superior at the top (rows flipped), columns
  right -> left and anterior -> posterior respectively.
* Output files are written in the **source file's** voxel layout and affine, so a map overlays its scan
  in any viewer, and voxel (i, j, k) of the map is voxel (i, j, k) of the input.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medzsad.data.dicom import (
    DicomStack,
    lps_to_ras,
    stack_multiframe,
    stack_series,
    write_dicom_seg,
)
from medzsad.data.errors import DataError, NotAnImageError, first_line
from medzsad.data.formats import detect_format
from medzsad.data.ids import clean_meta, pseudonymous_id
from medzsad.data.limits import check_volume_size, itk_problem, refuse_non_finite
from medzsad.data.records import LABEL_ABNORMAL, LABEL_NORMAL, LABEL_UNKNOWN, Sample
from medzsad.data.samples import SampleBuilder, slice_identity
from medzsad.data.transforms import ClipImageTransform
from medzsad.utils.files import atomic_path

__all__ = [
    "AXES",
    "DicomSeriesInfo",
    "Volume",
    "axis_index",
    "check_same_grid",
    "list_dicom_series",
    "read_dicom_files",
    "read_volume",
    "reassemble",
    "slice_labels",
    "volume_header",
    "volume_samples",
    "write_dicom_seg",
    "write_nifti",
]

AXES: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}
_CANONICAL_CODES = ("L", "P", "S")  # direction of increasing x, y, z


def axis_index(axis: str | int) -> int:
    """``"axial"``/``"coronal"``/``"sagittal"`` or 0/1/2 -> array axis of ``Volume.array``."""
    if isinstance(axis, str):
        if axis not in AXES:
            raise ValueError(f"unknown slice axis {axis!r}; use one of {sorted(AXES)} or 0, 1, 2")
        return AXES[axis]
    if axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0, 1 or 2, got {axis!r}")
    return int(axis)


@dataclass
class Volume:
    """A 3-D scan in the canonical orientation (module docstring).

    Attributes:
        array: ``[z, y, x]``; float32 physical units for images (HU for CT), the file's dtype for labels.
        affine: 4x4, ``(x, y, z, 1)`` index -> RAS mm.
        modality: DICOM modality code when known.
        meta: allow-listed metadata (format, modality, spacing, shape).
        has_geometry: False when the source had no patient geometry (e.g. an ultrasound cine loop).
        identity: source identity for pseudonymous ids (Series UID or path); never log it.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    has_geometry: bool = True
    identity: str = field(default="", repr=False)
    source_affine: np.ndarray = field(default_factory=lambda: np.eye(4), repr=False)
    source_shape: tuple[int, ...] = field(default=(), repr=False)
    _from_source: np.ndarray | None = field(default=None, repr=False)
    #: DICOM series only: the files in the order of the source layout's slice axis (for DICOM SEG).
    source_files: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes ``(z, y, x)``."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(norms[2]), float(norms[1]), float(norms[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def native_axis(self) -> int:
        """The array axis along which the source stacks its slices (a DICOM series' slice normal, a
        NIfTI's third axis): slicing along it gives the images as acquired, also for reformats."""
        if self._from_source is None:
            return 0
        return 2 - int(self._from_source[2][0])  # source axis 2 -> canonical (x, y, z) axis -> [z, y, x]

    def resolve_axis(self, axis: str | int) -> int:
        """:func:`axis_index`, plus ``"native"`` (:attr:`native_axis`)."""
        return self.native_axis if axis == "native" else axis_index(axis)

    def n_slices(self, axis: str | int = "axial") -> int:
        return int(self.array.shape[self.resolve_axis(axis)])

    def slice(self, axis: str | int, index: int, array: np.ndarray | None = None) -> np.ndarray:
        """Slice ``index`` along ``axis`` in display orientation (module docstring), ``[rows, cols]``."""
        return to_display(self.array if array is None else array, axis, index)

    def to_source_layout(self, array: np.ndarray) -> np.ndarray:
        """Bring a ``[z, y, x]`` array on this volume's grid back to the source file's voxel layout."""
        from nibabel.orientations import apply_orientation

        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match the volume {self.shape}")
        xyz = np.asarray(array).transpose(2, 1, 0)
        if self._from_source is None:
            return xyz
        inverse = _invert_ornt(self._from_source)
        return np.ascontiguousarray(apply_orientation(xyz, inverse))


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """Inverse of a nibabel orientation transform (axis permutation + flips)."""
    inverse = np.zeros_like(ornt)
    for src_axis, (dst_axis, flip) in enumerate(ornt):
        inverse[int(dst_axis)] = (src_axis, flip)
    return inverse


def to_display(array: np.ndarray, axis: str | int, index: int) -> np.ndarray:
    """Slice of a ``[z, y, x]`` array in display orientation (see the module docstring)."""
    ax = axis_index(axis)
    if not 0 <= index < array.shape[ax]:
        raise IndexError(f"slice {index} out of range for axis {axis} with {array.shape[ax]} slices")
    if ax == 0:
        return array[index]
    out = array[:, index, :] if ax == 1 else array[:, :, index]
    return out[::-1]  # superior at the top


def from_display(slice_2d: np.ndarray, axis: str | int) -> np.ndarray:
    """Inverse of :func:`to_display` for one slice (undo the row flip of coronal/sagittal)."""
    return slice_2d if axis_index(axis) == 0 else slice_2d[::-1]


# ---------------------------------------------------------------------------------------------- reading


def _canonical(data_xyz: np.ndarray, affine_ras: np.ndarray, **kwargs: Any) -> Volume:
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation

    source = io_orientation(affine_ras)
    transform = _ornt_transform(source, axcodes2ornt(_CANONICAL_CODES))
    data = np.ascontiguousarray(apply_orientation(data_xyz, transform))
    affine = affine_ras @ inv_ornt_aff(transform, data_xyz.shape)
    volume = Volume(
        array=np.ascontiguousarray(data.transpose(2, 1, 0)),
        affine=affine,
        source_affine=np.asarray(affine_ras, dtype=np.float64),
        source_shape=tuple(int(n) for n in data_xyz.shape),
        _from_source=transform,
        **kwargs,
    )
    volume.meta = clean_meta(
        {**volume.meta, "spacing": tuple(round(s, 6) for s in volume.spacing), "shape": volume.shape}
    )
    return volume


def _ornt_transform(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    from nibabel.orientations import ornt_transform

    return ornt_transform(start, end)


def read_volume(path: str | Path, *, series: int | str | None = None, image: bool = True) -> Volume:
    """Read a 3-D scan into the canonical orientation.

    Args:
        path: a NIfTI (``.nii``/``.nii.gz``), NRRD/MHA file, a multi-frame DICOM file, or a folder of
            DICOM files (a series; ordered by geometry, not by file name or InstanceNumber).
        series: which series when the folder holds several (index into :func:`list_dicom_series` or
            its ``key``); ``None`` requires exactly one.
        image: True for scans (cast to float32); False for label maps (keep the file's dtype).
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "nifti":
        volume = _read_nifti(path)
    elif fmt in ("nrrd", "itk"):
        volume = _read_itk(path, fmt)
    elif fmt == "dicom_series":
        volume = _read_dicom_series(path, series)
    elif fmt == "dicom":
        volume = _read_dicom_multiframe(path)
    else:
        raise NotAnImageError(path, f"{fmt} files hold 2-D images, not volumes")
    if image and volume.array.dtype != np.float32:
        volume.array = volume.array.astype(np.float32)
    return volume


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        check_volume_size(path, img.shape)  # from the header, before the voxels are read
        data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"cannot read NIfTI ({type(exc).__name__}: {first_line(exc)})") from None
    refuse_non_finite(path, data)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise NotAnImageError(path, f"NIfTI of shape {data.shape} is not a 3-D volume (4-D series are not read)")
    meta = {"source_format": "nifti"}
    return _canonical(
        np.asarray(data), np.asarray(img.affine, dtype=np.float64), meta=meta, identity=str(path.resolve())
    )


def _read_itk(path: Path, fmt: str) -> Volume:
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        check_volume_size(path, reader.GetSize())  # from the header, before the voxels are read
        img = reader.Execute()
    except RuntimeError as exc:
        raise DataError(path, f"cannot read {fmt.upper()} ({itk_problem(exc)})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise NotAnImageError(path, "vector/colour volumes are not supported")
    if img.GetDimension() not in (2, 3):
        raise NotAnImageError(path, f"{img.GetDimension()}-D image is not a 2-D or 3-D scan")
    arr = sitk.GetArrayFromImage(img)
    refuse_non_finite(path, arr)
    if arr.ndim == 2:
        arr = arr[None]
    dim = img.GetDimension()
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.ones(3)
    spacing[:dim] = img.GetSpacing()
    origin = np.zeros(3)
    origin[:dim] = img.GetOrigin()
    return _canonical(
        arr.transpose(2, 1, 0),
        lps_to_ras(direction, spacing, origin),
        meta={"source_format": fmt},
        identity=str(path.resolve()),
    )


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One series found in a folder. ``key`` is a pseudonymous id of the Series UID (safe to log)."""

    key: str
    n_files: int
    modality: str | None
    rows: int
    cols: int
    files: tuple[Path, ...] = field(repr=False)


def list_dicom_series(folder: str | Path) -> list[DicomSeriesInfo]:
    """The image series in a folder (recursively), largest first, as the study grouper
    (:func:`medzsad.data.study.dicom_groups`) groups them: by Series Instance UID and, within a series,
    by image size and orientation, so localisers or reformats stored under one UID come out apart."""
    from medzsad.data.study import dicom_groups, dicom_headers

    infos = []
    for key, members in dicom_groups(dicom_headers(Path(folder))).items():
        uid, rows, cols, orientation = key
        infos.append(
            DicomSeriesInfo(
                key=pseudonymous_id(f"{uid}|{rows}x{cols}|{orientation}", length=12),
                n_files=len(members),
                modality=str(members[0][1].get("Modality", "") or "") or None,
                rows=rows,
                cols=cols,
                files=tuple(p for p, _ in members),
            )
        )
    return sorted(infos, key=lambda s: (-s.n_files, s.key))


def _pick_series(folder: Path, series: int | str | None) -> DicomSeriesInfo:
    infos = list_dicom_series(folder)
    if not infos:
        raise DataError(folder, "no DICOM image files found in this folder")
    if series is None:
        if len(infos) > 1:
            listing = "; ".join(
                f"[{i}] key={s.key} {s.modality or '?'} {s.n_files} files {s.rows}x{s.cols}"
                for i, s in enumerate(infos)
            )
            raise DataError(
                folder,
                f"holds {len(infos)} DICOM series; put each in its own folder "
                f"(medzsad reads one series per folder): {listing}",
            )
        return infos[0]
    if isinstance(series, int):
        if not 0 <= series < len(infos):
            raise DataError(folder, f"series index {series} out of range ({len(infos)} series)")
        return infos[series]
    for info in infos:
        if info.key == series:
            return info
    raise DataError(folder, f"no series with key {series!r}")


def _read_dicom_series(folder: Path, series: int | str | None) -> Volume:
    return read_dicom_files(_pick_series(folder, series).files, folder)


def read_dicom_files(files: Sequence[Path], folder: str | Path | None = None) -> Volume:
    """Read the files of one DICOM series (any order) into a volume ordered by geometry."""
    return _from_stack(stack_series(files, Path(folder) if folder is not None else None))


def _read_dicom_multiframe(path: Path) -> Volume:
    return _from_stack(stack_multiframe(path))


def _from_stack(stack: DicomStack) -> Volume:
    return _canonical(
        stack.array,
        stack.affine,
        modality=stack.modality,
        meta=stack.meta,
        has_geometry=stack.has_geometry,
        identity=stack.identity,
        source_files=stack.files,
    )


def volume_header(path: str | Path, *, native: bool = False) -> Any:
    """Canonical ``(z, y, x)`` shape of a NIfTI/NRRD/MHA volume from its header alone (no pixel read);
    with ``native``, ``(shape, native_axis)`` (see :attr:`Volume.native_axis`)."""
    from nibabel.orientations import axcodes2ornt, io_orientation

    path = Path(path)
    fmt = detect_format(path)
    try:
        if fmt == "nifti":
            import nibabel as nib

            img = nib.load(str(path))
            shape = [int(n) for n in img.shape[:3]] + [1] * max(0, 3 - len(img.shape))
            affine = np.asarray(img.affine, dtype=np.float64)
        elif fmt in ("nrrd", "itk"):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            dim = reader.GetDimension()
            shape = list(reader.GetSize()) + [1] * (3 - dim)
            direction = np.eye(3)
            direction[:dim, :dim] = np.asarray(reader.GetDirection(), float).reshape(dim, dim)
            affine = lps_to_ras(direction, np.ones(3), np.zeros(3))
        else:
            raise NotAnImageError(path, f"{fmt} is not a volume format")
    except DataError:
        raise
    except Exception as exc:
        problem = itk_problem(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {first_line(exc)}"
        kind = "NIfTI" if fmt == "nifti" else "volume"
        raise DataError(path, f"cannot read {kind} header ({problem})") from None
    transform = _ornt_transform(io_orientation(affine), axcodes2ornt(_CANONICAL_CODES))
    xyz = [0, 0, 0]
    for src, (dst, _flip) in enumerate(transform):
        xyz[int(dst)] = shape[src]
    zyx = (xyz[2], xyz[1], xyz[0])
    return (zyx, 2 - int(transform[2][0])) if native else zyx


def check_same_grid(image: Volume, label: Volume, source: str | Path | None = None) -> None:
    """Raise :class:`DataError` unless ``label`` lies on ``image``'s voxel grid (shape and affine)."""
    if image.shape != label.shape or not np.allclose(image.affine, label.affine, atol=1e-3):
        raise DataError(
            source,
            f"label map grid {label.shape} does not match the image grid {image.shape} "
            "(different shape, spacing, origin or orientation)",
        )


# --------------------------------------------------------------------------------------------- slicing


def slice_labels(label: Volume | np.ndarray, axis: str | int = "axial") -> np.ndarray:
    """bool ``[n_slices]``: which slices along ``axis`` contain lesion voxels (label > 0)."""
    array = label.array if isinstance(label, Volume) else label
    ax = axis_index(axis)
    other = tuple(i for i in range(3) if i != ax)
    return np.asarray(array > 0).any(axis=other)


def volume_samples(
    volume: Volume,
    *,
    axis: str | int = "axial",
    transform: ClipImageTransform | None = None,
    label: Volume | None = None,
    category: str = "",
    indices: Sequence[int] | None = None,
    salt: str | bytes | None = None,
    builder: SampleBuilder | None = None,
) -> Iterator[Sample]:
    """Yield one :class:`Sample` per slice along ``axis``.

    The intensity range is fitted once on the whole volume (so all slices share one scale). With a
    ``label`` volume on the same grid, slices with lesion voxels get label 1, specie ``"lesion"`` and
    their mask; the others label 0, specie ``"good"`` and an empty mask. Without one, labels are -1.
    ``axis`` may be ``"native"`` (:attr:`Volume.native_axis`); ``builder`` (with the user's MONAI
    transforms) replaces ``transform``/``salt``.
    """
    builder = builder or SampleBuilder(transform or ClipImageTransform(), salt=salt)
    if label is not None:
        check_same_grid(volume, label)
    body_part = volume.meta.get("body_part")
    value_range = builder.volume_range(volume.array, volume.modality, body_part)
    volume_id = pseudonymous_id(volume.identity or "volume", salt=builder.salt)
    ax = volume.resolve_axis(axis)
    name = next(k for k, v in AXES.items() if v == ax)
    meta = {**volume.meta, "slice_axis": name}
    for index in indices if indices is not None else range(volume.array.shape[ax]):
        image = np.ascontiguousarray(volume.slice(ax, index))
        lesion = None if label is None else volume.slice(ax, index, label.array) > 0
        yield builder.sample(
            image,
            identity=slice_identity(volume.identity, name, int(index)),
            modality=volume.modality,
            meta=meta,
            value_range=value_range,
            mask=lesion,
            label=LABEL_UNKNOWN if lesion is None else (LABEL_ABNORMAL if lesion.any() else LABEL_NORMAL),
            category=category,
            slice_index=int(index),
            volume_id=volume_id,
        )


def reassemble(
    slice_maps: Sequence[np.ndarray],
    volume: Volume,
    axis: str | int = "axial",
    indices: Sequence[int] | None = None,
    fill: float = 0.0,
) -> np.ndarray:
    """Stack per-slice maps (display orientation, each at its slice's own ``[rows, cols]``) into a
    float32 ``[z, y, x]`` array on ``volume``'s grid; slices not in ``indices`` get ``fill``."""
    ax = axis_index(axis)
    indices = list(range(volume.array.shape[ax])) if indices is None else list(indices)
    if len(indices) != len(slice_maps):
        raise ValueError(f"{len(slice_maps)} maps for {len(indices)} slice indices")
    out = np.full(volume.shape, fill, dtype=np.float32)
    for index, slice_map in zip(indices, slice_maps):
        expected = to_display(out, ax, index).shape
        slice_map = np.asarray(slice_map, dtype=np.float32)
        if slice_map.shape != expected:
            raise ValueError(f"map for slice {index} has shape {slice_map.shape}, expected {expected}")
        target = [slice(None)] * 3
        target[ax] = index
        out[tuple(target)] = from_display(slice_map, ax)
    return out


# --------------------------------------------------------------------------------------------- writing


def write_nifti(
    array: np.ndarray,
    volume: Volume,
    path: str | Path,
    *,
    dtype: Any = np.float32,
    reference: str | Path | None = None,
) -> Path:
    """Write a ``[z, y, x]`` array on ``volume``'s grid as NIfTI.

    Voxel order: the **source file's** layout and affine (for a DICOM series: x = column index, y = row
    index, z = slices ordered along the slice normal, the order SimpleITK's series reader uses), so
    voxel (i, j, k) of the map is voxel (i, j, k) of the input. With ``reference`` (a NIfTI of the same
    scan, e.g. a dcm2niix export, which stores DICOM rows flipped) the map is written on the reference's
    voxel order instead: axis permutations and flips only, refused unless the grids coincide.

    A volume without patient geometry (``volume.has_geometry`` false) is written with qform and sform
    code 0 ("unknown"), so no tool takes its spacing-only affine for scanner space. The write is atomic
    and the header carries no description or file names.
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"NIfTI output must end in .nii or .nii.gz, got {path.name!r}")
    data = volume.to_source_layout(np.asarray(array)).astype(dtype)
    affine = volume.source_affine
    if reference is not None:
        data, affine = _onto_reference(data, affine, Path(reference))
    img = nib.Nifti1Image(data, affine)
    code = 1 if volume.has_geometry else 0
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nib.save(img, tmp)
    return path


def _onto_reference(data: np.ndarray, affine: np.ndarray, reference: Path) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (with ``affine``) permuted/flipped onto the voxel order of the NIfTI ``reference``."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    try:
        ref = nib.load(str(reference))
    except Exception as exc:
        raise DataError(
            reference, f"cannot read the reference NIfTI ({type(exc).__name__}: {first_line(exc)})"
        ) from None
    transform = _ornt_transform(io_orientation(affine), io_orientation(ref.affine))
    moved = np.ascontiguousarray(apply_orientation(data, transform))
    moved_affine = affine @ inv_ornt_aff(transform, data.shape)
    if tuple(moved.shape) != tuple(ref.shape[:3]) or not np.allclose(moved_affine, ref.affine, atol=1e-3):
        raise DataError(reference, "the reference NIfTI is not on this scan's grid up to axis order and flips")
    return moved, np.asarray(ref.affine, dtype=np.float64)
