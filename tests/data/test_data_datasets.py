"""Datasets over manifests and folders: samples, masks, batches, volumes and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medzsad.data.datasets import FolderDataset, ManifestDataset
from medzsad.data.errors import DataError
from medzsad.data.prepare import prepare_brainmri, prepare_mvtec, prepare_volumes
from medzsad.data.records import collate_samples
from medzsad.data.synthetic import (
    make_mvtec_like,
    make_phantom,
    write_dicom_image,
    write_phantom_dicom_series,
    write_phantom_nifti,
)
from medzsad.data.volumes import read_volume, write_nifti


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    root = make_mvtec_like(tmp_path_factory.mktemp("mvtec"), size=(48, 64))
    prepare_mvtec(root)
    return root


def test_manifest_dataset_samples_and_batches(mvtec):
    dataset = ManifestDataset(mvtec / "meta.json", image_size=224)
    assert len(dataset) == 2 * (2 + 2 * 2)
    sample = dataset[0]
    assert sample.image.shape == (3, 224, 224) and sample.image.dtype == torch.float32
    assert sample.original_size == (48, 64) and sample.meta["intensity"] == "8bit"
    assert len(sample.sample_id) == 16 and "/" not in sample.sample_id
    labels = [dataset[i].label for i in range(len(dataset))]
    assert labels.count(1) == 8 and labels.count(0) == 4
    abnormal = [dataset[i] for i in range(len(dataset)) if dataset.records[i].anomaly]
    assert all(s.has_mask and bool(s.mask.any()) for s in abnormal)
    normal = [dataset[i] for i in range(len(dataset)) if not dataset.records[i].anomaly]
    assert all(s.has_mask and not bool(s.mask.any()) for s in normal)
    batch = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_samples)))
    assert batch.image.shape == (4, 3, 224, 224) and batch.mask.shape == (4, 224, 224)
    assert batch.has_mask.all() and batch.label.dtype == torch.int64 and len(batch) == 4
    assert len(set(dataset[i].sample_id for i in range(len(dataset)))) == len(dataset)


def test_sample_ids_are_stable_and_keyed(mvtec, monkeypatch):
    first = ManifestDataset(mvtec / "meta.json", image_size=32)[0].sample_id
    assert ManifestDataset(mvtec / "meta.json", image_size=32)[0].sample_id == first
    monkeypatch.setenv("MEDZSAD_ID_SALT", "another key")
    assert ManifestDataset(mvtec / "meta.json", image_size=32)[0].sample_id != first


def test_classification_only_category_has_no_masks(tmp_path):
    for folder, n in (("no", 2), ("yes", 3)):
        for i in range(n):
            (tmp_path / "brain_tumor_dataset" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 30), 40 * i, np.uint8)).save(
                tmp_path / "brain_tumor_dataset" / folder / f"{i}.jpg"
            )
    prepare_brainmri(tmp_path)
    dataset = ManifestDataset(tmp_path / "meta.json", image_size=32)
    assert not dataset.has_masks("brain")
    assert all(dataset[i].mask is None for i in range(len(dataset)))
    batch = collate_samples([dataset[i] for i in range(len(dataset))])
    assert not batch.has_mask.any() and batch.label.tolist() == [0, 0, 1, 1, 1]


def test_unreadable_image_names_the_file(mvtec, tmp_path):
    dataset = ManifestDataset(mvtec / "meta.json", image_size=32)
    broken = dataset.manifest.resolve(dataset.records[1].img_path)
    original = broken.read_bytes()
    try:
        broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        with pytest.raises(DataError, match="cannot read image") as info:
            dataset[1]
        assert broken.name in str(info.value) and "\n" not in str(info.value)
    finally:
        broken.write_bytes(original)


def test_volume_manifest_slices_carry_aligned_masks(tmp_path):
    image, label = make_phantom((10, 36, 28))
    write_phantom_nifti(tmp_path / "vols" / "case1_image.nii.gz", image, layout="RAS")
    write_phantom_nifti(tmp_path / "vols" / "case1_label.nii.gz", label, layout="RAS")
    manifest = prepare_volumes(tmp_path / "vols", category="brain")
    records = list(manifest.records())
    assert len(records) == 10 and {r.slice_axis for r in records} == {"axial"}
    lesion_slices = [int(label[k].any()) for k in range(10)]
    assert [r.anomaly for r in records] == lesion_slices
    dataset = ManifestDataset(tmp_path / "vols" / "meta.json", image_size=64)
    for index, record in enumerate(records):
        sample = dataset[index]
        assert sample.slice_index == record.slice_index and sample.volume_id is not None
        assert sample.original_size == (36, 28)
        assert bool(sample.mask.any()) == bool(record.anomaly)
    assert len({dataset[i].volume_id for i in range(len(dataset))}) == 1


def test_folder_dataset_over_mixed_scans(tmp_path):
    image, _label = make_phantom((8, 32, 24))
    root = tmp_path / "scans"
    write_phantom_dicom_series(root / "series", image)
    write_phantom_nifti(root / "vol.nii.gz", image, layout="PSL")
    Image.fromarray(np.full((20, 30), 99, np.uint8)).save(root / "photo.png")
    write_dicom_image(root / "xray.dcm", np.full((12, 10), 900, np.uint16), photometric="MONOCHROME1",
                      modality="CR")  # fmt: skip
    dataset = FolderDataset(root, category="brain", image_size=64)
    assert len(dataset) == 8 + 8 + 1 + 1
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(s.label == -1 and s.mask is None and s.category == "brain" for s in samples)
    volume_ids = dataset.volume_sources()
    assert len(volume_ids) == 2
    # The maps of one volume go back into its geometry.
    volume_id = next(iter(volume_ids))
    maps = {s.slice_index: torch.full((64, 64), float(s.slice_index)) for s in samples if s.volume_id == volume_id}
    volume, result = dataset.reassemble(volume_id, maps)
    assert result.shape == volume.shape == (8, 32, 24)
    np.testing.assert_allclose(result[:, 5, 5], np.arange(8), atol=1e-5)
    out = write_nifti(result, volume, tmp_path / "out" / f"{volume_id}.nii.gz")
    np.testing.assert_allclose(read_volume(out).array, result, atol=1e-6)


def test_folder_dataset_reads_a_broken_series_as_single_images(tmp_path):
    image, _ = make_phantom((6, 20, 16))
    paths = write_phantom_dicom_series(tmp_path / "gap", image)
    paths[2].unlink()  # a missing slice: not a clean volume
    with pytest.warns(UserWarning, match="read as 2-D images"):
        dataset = FolderDataset(tmp_path / "gap", image_size=32)
    assert len(dataset) == 5 and all(dataset[i].volume_id is None for i in range(5))
    assert dataset[0].meta["intensity"] == "window 40/80"
