"""2-D readers: axis order, bit depth, DICOM pixel semantics and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from medzsad.data.errors import DataError, NotAnImageError
from medzsad.data.readers import read_frames, read_image, read_mask
from medzsad.data.synthetic import write_dicom_image


def asymmetric(height: int = 24, width: int = 40, dtype=np.uint8, scale: int = 1) -> np.ndarray:
    """An image whose every flip or transpose differs: a ramp plus a marker in the top-left corner."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = (xx * 3 + yy) % 200 + 20
    image[0:3, 0:5] = 250
    return (image * scale).astype(dtype)


@pytest.mark.parametrize("suffix", ["png", "bmp", "tif"])
def test_grey_8bit_files_keep_axis_order(tmp_path, suffix):
    image = asymmetric()
    path = tmp_path / f"a.{suffix}"
    Image.fromarray(image).save(path)
    data = read_image(path)
    assert data.array.dtype == np.uint8
    np.testing.assert_array_equal(data.array, image)
    assert data.size == (24, 40)


def test_rgb_png_and_jpeg(tmp_path):
    rgb = np.stack([asymmetric(), asymmetric()[:, ::-1], np.full((24, 40), 77, np.uint8)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_image(tmp_path / "c.png").array, rgb)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=98)
    jpeg = read_image(tmp_path / "c.jpg").array
    assert jpeg.shape == (24, 40, 3) and np.abs(jpeg.astype(int) - rgb).mean() < 6


def test_16bit_grey_png_and_tiff_are_not_quantised(tmp_path):
    image = asymmetric(dtype=np.uint16, scale=250)
    Image.fromarray(image).save(tmp_path / "g16.png")
    tifffile.imwrite(tmp_path / "g16.tif", image)
    for name in ("g16.png", "g16.tif"):
        data = read_image(tmp_path / name)
        assert data.array.dtype == np.float32
        np.testing.assert_array_equal(data.array, image.astype(np.float32))


def test_16bit_colour_png_keeps_16_bits(tmp_path):
    rgb = np.stack([asymmetric(dtype=np.uint16, scale=250)] * 3, axis=-1)
    rgb[..., 1] += 1
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c16.png"))
    data = read_image(tmp_path / "c16.png")
    np.testing.assert_array_equal(data.array, rgb.astype(np.float32))


def test_dicom_monochrome2_with_rescale_gives_physical_units(tmp_path):
    stored = asymmetric(dtype=np.uint16, scale=10)
    path = write_dicom_image(tmp_path / "ct.dcm", stored, modality="CT", slope=1.0, intercept=-1024.0)
    data = read_image(path)
    np.testing.assert_array_equal(data.array, stored.astype(np.float32) - 1024.0)
    assert data.modality == "CT" and data.meta["rescaled"] is True and data.meta["inverted"] is False


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = asymmetric(dtype=np.uint8)
    data = read_image(write_dicom_image(tmp_path / "cr.dcm", stored, photometric="MONOCHROME1", modality="CR"))
    np.testing.assert_array_equal(data.array, 255 - stored)
    assert data.meta["inverted"] is True


def test_dicom_ybr_is_converted_to_rgb(tmp_path):
    rgb = np.stack([asymmetric(), asymmetric()[::-1], np.full((24, 40), 90, np.uint8)], axis=-1)
    data = read_image(write_dicom_image(tmp_path / "us.dcm", rgb, photometric="YBR_FULL", modality="US"))
    assert data.array.shape == (24, 40, 3) and data.meta["converted_to_rgb"] is True
    assert np.abs(data.array.astype(int) - rgb).max() <= 2  # YBR round trip rounding


def test_multiframe_needs_a_frame_index():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("SC_rgb_2frame.dcm", download=False)
    with pytest.raises(NotAnImageError, match="2 frames"):
        read_image(path)
    frames = read_frames(path)
    assert len(frames) == 2 and frames[0].identity != frames[1].identity
    np.testing.assert_array_equal(read_image(path, frame=1).array, frames[1].array)


def test_masks_follow_official_rule(tmp_path):
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:5, 3:9] = 1  # nonzero, not 255: still lesion
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask > 0)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.png", None, "file not found"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "cannot read image"),
        ("notes.xyz", b"hello", "unknown file type"),
        ("fake.dcm", b"not dicom at all", "DICOM"),
    ],
)
def test_unreadable_files_give_one_line_named_errors(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_image(path)
    message = str(info.value)
    assert name in message and "\n" not in message
    # No chained traceback: the message alone explains the problem.
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_missing_decoder_names_the_packages():
    import importlib.util

    from pydicom.data import get_testdata_file

    from medzsad.data.errors import MissingDecoderError

    if importlib.util.find_spec("gdcm") or importlib.util.find_spec("libjpeg"):
        pytest.skip("a JPEG lossless decoder is installed")
    path = get_testdata_file("JPEG-LL.dcm", download=False)
    with pytest.raises(MissingDecoderError, match="python-gdcm") as info:
        read_image(path)
    assert "JPEG Lossless" in info.value.transfer_syntax and "dicom-codecs" in str(info.value)
