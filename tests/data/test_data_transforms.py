"""The CLIP image/mask transforms: parity with the official preprocessing and the medical float path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medzsad.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    ClipImageTransform,
    Intensity,
    clip_image_transform,
    clip_mask_transform,
    map_to_original,
)


def _unnormalise(tensor: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return (tensor * std + mean).numpy()


def test_parity_with_official_preprocessing(parity_dir):
    """Our transform of the parity PNGs equals inputs.npz (official AnomalyCLIP/FAPrompt/CoPS loaders)."""
    inputs = parity_dir / "inputs"
    reference = np.load(inputs / "inputs.npz")
    info = json.loads((inputs / "manifest.json").read_text())
    image_tf, mask_tf = clip_image_transform(518), clip_mask_transform(518)
    worst_image, mask_mismatches = 0.0, 0
    for i, item in enumerate(info["images"]):
        ours = image_tf(Image.open(inputs / item["img"])).numpy()
        worst_image = max(worst_image, float(np.abs(ours - reference["images_preprocessed"][i]).max()))
        if item["mask"]:
            mask = mask_tf(Image.open(inputs / item["mask"])).numpy()
        else:
            mask = mask_tf(np.zeros((400, 600), dtype=bool)).numpy()
        mask_mismatches += int((mask != reference["masks_518"][i].astype(bool)).sum())
    assert worst_image <= 1e-6, f"max abs diff {worst_image}"
    assert mask_mismatches == 0


def test_array_path_equals_pil_path_for_8bit(parity_dir):
    image = Image.open(parity_dir / "inputs" / "defect_000.png")
    tf = clip_image_transform()
    assert torch.equal(tf(image), tf(np.asarray(image.convert("RGB"))))


def test_grey_8bit_is_repeated_to_three_channels():
    grey = (np.arange(40 * 30) % 251).astype(np.uint8).reshape(40, 30)
    out = clip_image_transform(64)(grey)
    rgb = _unnormalise(out)
    assert out.shape == (3, 64, 64)
    np.testing.assert_allclose(rgb[0], rgb[1], atol=1e-6)
    np.testing.assert_allclose(rgb[1], rgb[2], atol=1e-6)


def test_16bit_keeps_precision_below_one_8bit_step():
    # Two images differing by far less than one 8-bit step must give different inputs.
    base = np.full((32, 32), 30000.0, dtype=np.float32)
    other = base.copy()
    other[8:24, 8:24] += 40.0  # 40/65535 << 1/255
    tf = ClipImageTransform(32, intensity=Intensity("range", value_range=(0.0, 65535.0)))
    difference = (tf(other) - tf(base)).abs().max().item()
    assert difference > 1e-4


def test_ct_window_defaults_to_brain_for_ct():
    hu = np.array([[-1000.0, 0.0, 40.0, 80.0, 1000.0]], dtype=np.float32).repeat(5, axis=0)
    intensity = Intensity()
    assert intensity.fit(hu, "CT") == (0.0, 80.0)
    assert intensity.describe("CT", hu.dtype) == "window 40/80"
    assert Intensity("window", window="bone").window_range() == (-800.0, 2000.0)
    with pytest.raises(ValueError, match="unknown CT window"):
        Intensity("window", window="nonsense")


def test_mri_percentiles_and_fixed_range():
    values = np.linspace(0, 1000, 10000, dtype=np.float32).reshape(100, 100)
    low, high = Intensity().fit(values, "MR")
    assert low == pytest.approx(5.0, abs=0.2) and high == pytest.approx(995.0, abs=0.2)
    out = _unnormalise(ClipImageTransform(16, intensity=Intensity("range", value_range=(0, 1000)))(values))
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_pad_to_square_keeps_aspect_and_map_to_original_inverts_it():
    image = np.zeros((20, 60), dtype=np.uint8)
    image[:, 50:] = 255  # a bright band at the right edge
    out = _unnormalise(clip_image_transform(60, pad_to_square=True)(image))[0]
    # 20 rows of content centred in 60: rows 0-19 and 40-59 are padding.
    assert out[:15].max() < 0.05 and out[45:].max() < 0.05
    assert out[30, 55] > 0.9 and out[30, 10] < 0.05
    mask = np.zeros((20, 60), dtype=bool)
    mask[5:15, 10:30] = True
    mask_518 = clip_mask_transform(518, pad_to_square=True)(mask)
    back = map_to_original(mask_518.float(), (20, 60), pad_to_square=True)
    assert back.shape == (20, 60)
    assert back[mask].min() > back[~mask].max()


def test_map_to_original_without_padding_recovers_mask():
    mask = np.zeros((37, 81), dtype=bool)
    mask[10:20, 30:50] = True
    back = map_to_original(clip_mask_transform(518)(mask).float(), (37, 81))
    assert back[mask].min() > 0.5 > back[~mask].max()
