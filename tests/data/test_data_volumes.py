"""Volumes: one orientation convention through every reader, slicing, reassembly and NIfTI output."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from datahelpers import oracle_volume_map

from medzsad.data.errors import DataError
from medzsad.data.synthetic import (
    make_phantom,
    write_phantom_dicom_series,
    write_phantom_nifti,
    write_phantom_nrrd,
)
from medzsad.data.volumes import (
    list_dicom_series,
    read_volume,
    reassemble,
    slice_labels,
    volume_samples,
    write_nifti,
)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((12, 40, 32))


@pytest.mark.parametrize("layout", ["RAS", "LPS", "PSL", "SAR", "ILA"])
def test_nifti_layouts_read_to_the_same_canonical_array(tmp_path, phantom, layout):
    image, _ = phantom
    write_phantom_nifti(tmp_path / "p.nii.gz", image, layout=layout)
    volume = read_volume(tmp_path / "p.nii.gz")
    np.testing.assert_array_equal(volume.array, image)
    assert volume.spacing == pytest.approx((3.0, 0.9, 0.8), abs=1e-5)


def test_nrrd_and_dicom_series_match_the_phantom_and_each_other(tmp_path, phantom):
    image, _ = phantom
    write_phantom_nrrd(tmp_path / "p.nrrd", image)
    write_phantom_dicom_series(tmp_path / "series", image)
    nrrd = read_volume(tmp_path / "p.nrrd")
    dicom = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(nrrd.array, image)
    # Stored as integers with intercept -1024: equal to the rounded phantom.
    np.testing.assert_array_equal(dicom.array, np.rint(image - (-1024.0)) + (-1024.0))
    np.testing.assert_allclose(dicom.affine, nrrd.affine, atol=1e-6)
    assert dicom.modality == "CT" and dicom.has_geometry


def test_display_orientation_of_each_axis(phantom):
    image, _ = phantom
    from medzsad.data.volumes import Volume

    volume = Volume(array=image, affine=np.eye(4))
    np.testing.assert_array_equal(volume.slice("axial", 3), image[3])
    np.testing.assert_array_equal(volume.slice("coronal", 5), image[::-1, 5, :])  # superior on top
    np.testing.assert_array_equal(volume.slice("sagittal", 7), image[::-1, :, 7])


def test_series_folder_with_two_series_must_be_chosen(tmp_path, phantom):
    image, _ = phantom
    write_phantom_dicom_series(tmp_path / "mixed" / "a", image, series_seed="a")
    write_phantom_dicom_series(tmp_path / "mixed" / "b", image[:5], series_seed="b")
    infos = list_dicom_series(tmp_path / "mixed")
    assert [i.n_files for i in infos] == [12, 5]
    with pytest.raises(DataError, match="2 DICOM series"):
        read_volume(tmp_path / "mixed")
    assert read_volume(tmp_path / "mixed", series=1).shape == (5, 40, 32)
    assert read_volume(tmp_path / "mixed", series=infos[0].key).shape == (12, 40, 32)


def test_missing_slice_is_refused(tmp_path, phantom):
    image, _ = phantom
    paths = write_phantom_dicom_series(tmp_path / "gap", image)
    paths[5].unlink()
    with pytest.raises(DataError, match="irregular slice spacing"):
        read_volume(tmp_path / "gap")


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_slices_reassemble_exactly(phantom, axis):
    image, _ = phantom
    from medzsad.data.volumes import Volume

    volume = Volume(array=image, affine=np.eye(4))
    slices = [volume.slice(axis, k) for k in range(volume.n_slices(axis))]
    np.testing.assert_array_equal(reassemble(slices, volume, axis), image)


@pytest.mark.parametrize("layout", ["RAS", "PSL"])
def test_written_map_has_the_source_geometry_and_layout(tmp_path, phantom, layout):
    image, label = phantom
    affine = write_phantom_nifti(tmp_path / "img.nii.gz", image, layout=layout)
    volume = read_volume(tmp_path / "img.nii.gz")
    out = write_nifti(label.astype(np.float32), volume, tmp_path / "out" / "map.nii.gz")
    written = nib.load(str(out))
    source = nib.load(str(tmp_path / "img.nii.gz"))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    assert written.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_array_equal(read_volume(out).array, label.astype(np.float32))
    assert not list((tmp_path / "out").glob(".tmp-*"))  # atomic write leaves no temporary file


def test_slice_maps_oracle_round_trip(tmp_path, phantom):
    image, label = phantom
    write_phantom_nifti(tmp_path / "img.nii.gz", image, layout="RAS")
    write_phantom_nifti(tmp_path / "lab.nii.gz", label, layout="RAS")
    volume = read_volume(tmp_path / "img.nii.gz")
    lab = read_volume(tmp_path / "lab.nii.gz", image=False)
    result = oracle_volume_map(volume, lab)
    lesion = lab.array > 0
    assert result[lesion].min() > result[~lesion].max()


def test_volume_samples_labels_and_shared_intensity(phantom):
    image, label = phantom
    from medzsad.data.volumes import Volume

    volume = Volume(array=image, affine=np.eye(4), modality="CT", identity="phantom")
    lab = Volume(array=label, affine=np.eye(4))
    samples = list(volume_samples(volume, label=lab, category="brain"))
    expected = slice_labels(label)
    assert [s.label for s in samples] == expected.astype(int).tolist()
    assert all(s.volume_id == samples[0].volume_id and s.slice_index == i for i, s in enumerate(samples))
    assert all(s.meta["intensity"] == "window 40/80" for s in samples)
    assert all(s.mask is not None and bool(s.mask.any()) == bool(e) for s, e in zip(samples, expected))
    assert isinstance(samples[0].image, torch.Tensor) and samples[0].image.shape == (3, 518, 518)


def test_dicom_seg_output_references_the_right_slices(tmp_path, phantom):
    hd = pytest.importorskip("highdicom")
    import pydicom

    from medzsad.data.volumes import write_dicom_seg

    image, label = phantom
    write_phantom_dicom_series(tmp_path / "series", image)
    volume = read_volume(tmp_path / "series")
    out = write_dicom_seg(label, volume, tmp_path / "seg" / "anomaly.dcm")
    seg = hd.seg.segread(out)
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in volume.source_files]
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], combine_segments=True, skip_overlap_checks=True
    )
    expected = volume.to_source_layout(label > 0).transpose(2, 1, 0)
    np.testing.assert_array_equal(frames.astype(bool), expected)


def test_importing_the_data_layer_imports_no_model():
    import subprocess
    import sys

    models = ("medzsad.backbone", "medzsad.methods", "medzsad.engine")
    code = f"import sys, medzsad.data; print([m for m in sys.modules if m.startswith({models!r})])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
