"""A user's MONAI transforms, declared in YAML (bundle style), run in front of the CLIP transform."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medzsad.data.synthetic import make_phantom, write_phantom_dicom_series
from medzsad.engine.config import ConfigError, load_config
from medzsad.engine.jobs import open_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from engine_helpers import TINY_OVERRIDES

USER_MODULE = '''
import torch
from monai.transforms import MapTransform


class BlankLeftHalfd(MapTransform):
    """Sets the left half of the image to a value (e.g. a crude mask of something to ignore)."""

    def __init__(self, keys, value):
        super().__init__(keys)
        self.value = value

    def __call__(self, data):
        out = dict(data)
        for key in self.key_iterator(out):
            image = torch.as_tensor(out[key]).float()  # 8-bit images arrive as uint8
            image[..., : image.shape[-1] // 2] = self.value
            out[key] = image
        return out
'''


@pytest.fixture()
def scans(tmp_path):
    root = tmp_path / "scans"
    write_phantom_dicom_series(root / "ct", make_phantom((4, 24, 20))[0])
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40), dtype=np.uint8)).save(root / "photo.png")
    return root


def _dataset(tmp_path, root, transforms):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": {"transforms": transforms}}))
    return open_dataset(root, load_config(path, TINY_OVERRIDES), 64)


def test_a_monai_transform_and_a_users_own_from_yaml(tmp_path, scans, monkeypatch):
    (tmp_path / "user_code").mkdir()
    (tmp_path / "user_code" / "my_transforms.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "user_code"))
    plain = _dataset(tmp_path, scans, [])
    flipped = _dataset(tmp_path, scans, [{"_target_": "Flipd", "keys": "image", "spatial_axis": 1}])
    blanked = _dataset(tmp_path, scans, [{"_target_": "my_transforms.BlankLeftHalfd", "keys": "image", "value": -1000}])
    assert len(plain) == len(flipped) == len(blanked) == 5
    for i in range(len(plain)):
        a, b, c = plain[i], flipped[i], blanked[i]
        assert a.sample_id == b.sample_id == c.sample_id  # same samples, other pixels
        # MONAI's Flipd on [C, H, W] mirrors the columns: the CLIP input is the mirrored one.
        torch.testing.assert_close(b.image, torch.flip(a.image, dims=[2]), atol=2e-5, rtol=0)
        if a.volume_id is not None:  # CT: -1000 HU is black in the brain window (away from the bicubic support)
            black = (0.0 - torch.tensor([0.48145466])) / 0.26862954
            torch.testing.assert_close(c.image[0, :, :24], black.expand(64, 24), atol=1e-5, rtol=0)
            assert not torch.equal(c.image[:, :, 40:], torch.full_like(c.image[:, :, 40:], float(black)))


def test_a_transform_that_cannot_be_built_names_its_key(tmp_path, scans):
    with pytest.raises(ConfigError, match=r"data.transforms\[0\]: cannot build 'NoSuchTransformd'"):
        _dataset(tmp_path, scans, [{"_target_": "NoSuchTransformd", "keys": "image"}])
    with pytest.raises(ConfigError, match=r"data.transforms\[1\]: expected a mapping"):
        _dataset(tmp_path, scans, [{"_target_": "Flipd", "keys": "image"}, "Flipd"])


def test_a_transform_that_changes_the_image_size_is_refused(tmp_path, scans):
    from medzsad.data.errors import DataError

    cropped = _dataset(tmp_path, scans, [{"_target_": "SpatialPadd", "keys": "image", "spatial_size": [64, 64]}])
    with pytest.raises(DataError, match=r"data.transforms changed the image size \(30, 40\) -> \(64, 64\)"):
        cropped[0]  # the 30x40 photo
