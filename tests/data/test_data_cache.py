"""The sample cache (``data.cache_dir``): cached samples are bit-identical to built ones, a second run
reads no pixels, an edited file is rebuilt, unreadable files stay one line, random transforms are
refused, and ``medzsad test`` gives the same tables with and without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import medzsad.data.datasets as datasets_module
from medzsad.data.cache import CachedSamples
from medzsad.data.datasets import FolderDataset, ManifestDataset
from medzsad.data.errors import DataError
from medzsad.data.prepare import prepare_mvtec
from medzsad.data.synthetic import make_mvtec_like, make_phantom, write_phantom_dicom_series


@pytest.fixture()
def mvtec(tmp_path) -> Path:
    root = make_mvtec_like(tmp_path / "mvtec", categories=("weave",), n_train=1, n_test_good=2, n_test_defect=1)
    prepare_mvtec(root)
    return root / "meta.json"


def _same(a, b) -> None:
    assert torch.equal(a.image, b.image)
    assert (a.mask is None and b.mask is None) or torch.equal(a.mask, b.mask)
    fields = ("label", "category", "sample_id", "specie", "original_size", "slice_index", "volume_id", "meta")
    for name in fields:
        assert getattr(a, name) == getattr(b, name), name


def test_cached_manifest_samples_equal_built_ones_and_are_read_back_without_decoding(mvtec, tmp_path, monkeypatch):
    plain = ManifestDataset(mvtec, image_size=224)
    first = CachedSamples(ManifestDataset(mvtec, image_size=224), tmp_path / "cache")
    for index in range(len(plain)):
        _same(first[index], plain[index])
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == len(plain) and all(len(name) == len("0" * 64 + ".pt") for name in entries)

    def refuse(*_args, **_kwargs):
        raise AssertionError("a cached sample was decoded again")

    monkeypatch.setattr(datasets_module, "read_image", refuse)
    monkeypatch.setattr(datasets_module, "read_mask", refuse)
    again = CachedSamples(ManifestDataset(mvtec, image_size=224), tmp_path / "cache")
    for index in range(len(plain)):
        _same(again[index], first[index])
    with pytest.raises(DataError, match="decoded again"):  # the patch is live: without a cache, it decodes
        ManifestDataset(mvtec, image_size=224)[0]


def test_an_edited_file_is_rebuilt_and_another_setting_is_another_entry(mvtec, tmp_path):
    cache = tmp_path / "cache"
    dataset = ManifestDataset(mvtec, image_size=224)
    path = dataset.manifest.resolve(dataset.records[0].img_path)
    before = CachedSamples(dataset, cache)[0]
    Image.fromarray(np.full((96, 128, 3), 200, np.uint8)).save(path)  # the scan changed on disk
    after = CachedSamples(ManifestDataset(mvtec, image_size=224), cache)[0]
    _same(after, ManifestDataset(mvtec, image_size=224)[0])
    assert not torch.equal(after.image, before.image)
    padded = CachedSamples(ManifestDataset(mvtec, image_size=224, pad_to_square=True), cache)[0]
    _same(padded, ManifestDataset(mvtec, image_size=224, pad_to_square=True)[0])


def test_unreadable_files_stay_one_line_and_random_transforms_are_refused(mvtec, tmp_path):
    dataset = ManifestDataset(mvtec, image_size=224)
    dataset.manifest.resolve(dataset.records[1].img_path).write_bytes(b"not a png")
    cached = CachedSamples(dataset, tmp_path / "cache")
    with pytest.raises(DataError) as info:
        cached[1]
    assert "\n" not in str(info.value)
    from monai.transforms import RandFlipd

    noisy = ManifestDataset(mvtec, image_size=224, user_transforms=[RandFlipd(keys="image", prob=0.5)])
    with pytest.raises(ValueError, match=r"data\.cache_dir: data\.transforms\[0\] \(RandFlipd\) is random"):
        CachedSamples(noisy, tmp_path / "cache")


def test_cached_volume_slices_of_a_dicom_series_equal_built_ones(tmp_path, monkeypatch):
    volume, _ = make_phantom((6, 40, 32))
    write_phantom_dicom_series(tmp_path / "series", volume)
    plain = FolderDataset(tmp_path / "series", image_size=224)
    assert len(plain) == 6 and plain[0].volume_id is not None
    first = CachedSamples(FolderDataset(tmp_path / "series", image_size=224), tmp_path / "cache")
    built = [first[i] for i in range(len(first))]
    folder = FolderDataset(tmp_path / "series", image_size=224)  # (grouping reads the series' slice count)
    folder._volumes = type(folder._volumes)()  # forget what grouping read: samples must come from the cache
    again = CachedSamples(folder, tmp_path / "cache")
    with monkeypatch.context() as patch:
        patch.setattr(FolderDataset, "load_volume", lambda *_: (_ for _ in ()).throw(AssertionError("decoded")))
        for index in range(len(plain)):
            _same(again[index], built[index])
    for index in range(len(plain)):
        _same(built[index], plain[index])
    assert again.volume_sources() == plain.volume_sources()  # the dataset's own methods still answer
    monkeypatch.setenv("MEDZSAD_ID_SALT", "another key")  # other ids: other entries, never stale ids
    rekeyed = CachedSamples(FolderDataset(tmp_path / "series", image_size=224), tmp_path / "cache")
    assert rekeyed[0].sample_id == FolderDataset(tmp_path / "series", image_size=224)[0].sample_id != built[0].sample_id


def test_medzsad_test_gives_the_same_tables_with_the_cache(mvtec, tmp_path):
    from medzsad.cli.main import main

    common = ["test", "backbone=tiny", "method=clip", "tracking.enabled=false", "device=cpu"]
    common += ["method_config.image_size=224", f"data.test=[tex={mvtec}]"]
    outputs = []
    for run in ("plain", "cold", "warm"):
        cache = [f"data.cache_dir={tmp_path / 'cache'}"] if run != "plain" else []
        assert main([*common, *cache, f"eval.output_dir={tmp_path / run}"]) == 0
        outputs.append(json.loads((tmp_path / run / "metrics.json").read_text()))
    assert outputs[0] == outputs[1] == outputs[2]
    assert any((tmp_path / "cache").iterdir())
