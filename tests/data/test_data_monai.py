"""medzsad's DICOM reader in plain MONAI code, CT window presets by body part, and map volumes written on
the voxel order of a reference NIfTI (a dcm2niix-style export, rows flipped)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from monai.transforms import Compose, LoadImage, LoadImaged, Orientationd

from medzsad.data.datasets import FolderDataset
from medzsad.data.errors import DataError
from medzsad.data.monai_io import DicomPixelReader
from medzsad.data.readers import read_image
from medzsad.data.synthetic import make_phantom, write_phantom_dicom_series
from medzsad.data.transforms import Intensity
from medzsad.data.volumes import read_volume, write_nifti

pytest.importorskip("data_store", reason="pydicom-data is not installed")


def _real(name: str) -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name, download=False))


CT5N = _real("CT_small.dcm").parent / "dicomdirtests" / "98892001" / "CT5N"


def test_load_image_with_the_reader_gives_sitk_geometry_and_hu():
    image = LoadImage(reader=DicomPixelReader(), ensure_channel_first=True)(str(CT5N))
    reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(CT5N)))
    assert tuple(image.shape) == (1, *reference.GetSize())
    # MONAI's affine is RAS; SimpleITK's geometry LPS: flip the first two rows to compare.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(image.affine, dtype=np.float64)
    np.testing.assert_allclose(lps[:3, 3], reference.GetOrigin(), atol=1e-4)
    direction = np.asarray(reference.GetDirection()).reshape(3, 3) @ np.diag(reference.GetSpacing())
    np.testing.assert_allclose(lps[:3, :3], direction, atol=1e-5)
    # Voxel values are HU, voxel for voxel as SimpleITK reads them ([z, y, x] there).
    np.testing.assert_allclose(image[0].numpy(), sitk.GetArrayFromImage(reference).transpose(2, 1, 0), atol=1e-3)
    assert image.meta["modality"] == "CT"


def test_reader_in_a_dictionary_pipeline_with_orientation():
    pipeline = Compose(
        [LoadImaged("image", reader=DicomPixelReader(), ensure_channel_first=True), Orientationd("image", "LPS")]
    )
    image = pipeline({"image": str(CT5N)})["image"]
    # medzsad's canonical volume is [z, y, x] in the same LPS orientation.
    np.testing.assert_allclose(image[0].numpy().transpose(2, 1, 0), read_volume(CT5N).array, atol=1e-3)


def test_reader_on_single_images_matches_the_2d_reader():
    for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm"):
        loaded = LoadImage(reader=DicomPixelReader(), image_only=True)(str(_real(name)))
        expected = read_image(_real(name)).array
        np.testing.assert_array_equal(np.swapaxes(loaded.numpy(), 0, 1), expected)  # MONAI's (x, y) order


@pytest.mark.parametrize(
    ("body_part", "description", "window"),
    [("HEAD", "window 40/80 brain", (0.0, 80.0)), ("CHEST", "window -600/1500 lung", (-1350.0, 150.0)),
     ("ABDOMEN", "window 50/400 soft_tissue", (-150.0, 250.0)), (None, "window 40/80", (0.0, 80.0))],
)  # fmt: skip
def test_ct_window_preset_by_body_part(tmp_path, body_part, description, window):
    assert Intensity().fit(np.zeros((4, 4), np.float32), "CT", body_part) == window
    paths = write_phantom_dicom_series(tmp_path / "ct", make_phantom((3, 16, 12))[0])
    for path in paths if body_part else ():
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = body_part
        ds.save_as(path)
    dataset = FolderDataset(tmp_path / "ct", image_size=32, axis="native")
    assert {dataset[i].meta["intensity"] for i in range(len(dataset))} == {description}
    # A configured window wins over the preset.
    fixed = FolderDataset(tmp_path / "ct", image_size=32, intensity=Intensity(window="bone"))
    assert fixed[0].meta["intensity"] == "window 600/2800"


def test_map_written_on_a_reference_nifti_grid(tmp_path):
    volume = read_volume(CT5N)
    values = np.arange(volume.array.size, dtype=np.float32).reshape(volume.shape)
    native = nib.load(write_nifti(values, volume, tmp_path / "native.nii.gz"))
    # A dcm2niix-style export of the same series: DICOM rows flipped (j runs anterior), same world grid.
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, native.shape[1] - 1
    reference = nib.Nifti1Image(np.flip(np.asanyarray(native.dataobj), 1).copy(), native.affine @ flip)
    nib.save(reference, tmp_path / "dcm2niix.nii.gz")
    onto = nib.load(write_nifti(values, volume, tmp_path / "onto.nii.gz", reference=tmp_path / "dcm2niix.nii.gz"))
    np.testing.assert_allclose(onto.affine, reference.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(onto.dataobj), np.asanyarray(reference.dataobj))
    # Not the same grid up to axis order and flips: refused with one line naming the reference.
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "other.nii.gz")
    with pytest.raises(DataError, match=r"other\.nii\.gz: the reference NIfTI is not on this scan's grid"):
        write_nifti(values, volume, tmp_path / "bad.nii.gz", reference=tmp_path / "other.nii.gz")


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed")
def test_reference_grid_against_dcm2niix(tmp_path):
    subprocess.run(
        ["dcm2niix", "-z", "n", "-f", "ct5n", "-o", str(tmp_path), str(CT5N)], check=True, capture_output=True
    )
    volume = read_volume(CT5N)
    out = nib.load(write_nifti(volume.array, volume, tmp_path / "m.nii", reference=tmp_path / "ct5n.nii"))
    np.testing.assert_allclose(np.asanyarray(out.dataobj), nib.load(tmp_path / "ct5n.nii").get_fdata(), atol=1e-3)


def _data_imports(path: Path) -> set[str]:
    """Modules of medzsad.data imported anywhere in a file (also inside functions), except under
    ``if TYPE_CHECKING:`` (annotations only)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medzsad.data"):
            names = [node.module] if node.module != "medzsad.data" else [f"medzsad.data.{a.name}" for a in node.names]
            found.update(n.split(".")[2] for n in names if n.count(".") >= 2)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {path.stem}


def test_data_has_no_import_cycle_and_one_pydicom_module():
    root = Path(__file__).resolve().parents[2] / "medzsad" / "data"
    modules = {p.stem: p for p in root.glob("*.py") if p.stem != "__init__"}
    graph = {name: _data_imports(path) & set(modules) for name, path in modules.items()}
    order: list[str] = []
    done: set[str] = set()

    def place(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, f"import cycle: {' -> '.join((*stack, name))}"
        if name not in done:
            for dep in sorted(graph[name]):
                place(dep, (*stack, name))
            done.add(name)
            order.append(name)

    for name in sorted(graph):
        place(name, ())
    assert order.index("dicom") < order.index("volumes") < order.index("readers")
    importers = [n for n, p in modules.items() if "import pydicom" in p.read_text() or "from pydicom" in p.read_text()]
    assert sorted(importers) == ["dicom", "synthetic"]  # synthetic writes test files only
    private = re.compile(r"from medzsad\.data\.\w+ import [^\n]*\b_\w+")
    assert not [n for n, p in modules.items() if private.search(p.read_text())]
