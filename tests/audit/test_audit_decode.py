"""Decoding: every bad input becomes a reason; unusual but valid images decode like render.read_image."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from audit_helpers import fake_png, write_bad_inputs
from onnx_gradcam.audit import decode
from onnx_gradcam.audit.decode import Decoder, image_size_from_header
from onnx_gradcam.audit.readers import InputItem
from onnx_gradcam.preprocess import Preprocess
from onnx_gradcam.render import read_image

DIGITS = Preprocess(size=(28, 28), channel_order="GRAY")

EXPECTED_REASONS = {
    "zero_byte.png": "empty file",
    "corrupt.png": "not a decodable image",
    "truncated.png": "not a decodable image",
    "truncated.jpg": "truncated JPEG",
    "not_an_image.jpg": "not a decodable image",
    "huge.png": "image too large: 20000x10000",
    "missing.png": "no such file",
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return write_bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("name", sorted(EXPECTED_REASONS))
def test_bad_input_gets_a_reason_and_no_tensor(bad, name):
    result = Decoder(DIGITS)(InputItem(str(bad[name])))
    assert not result.ok and result.tensor is None
    assert EXPECTED_REASONS[name] in result.error


@pytest.mark.parametrize("name", ["gray.png", "rgba.png", "sixteen_bit.png", "color.jpg"])
def test_unusual_images_decode_like_read_image(bad, name):
    result = Decoder(DIGITS, thumbnails=True)(InputItem(str(bad[name])))
    assert result.ok, result.error
    expected = DIGITS([read_image(bad[name])])[0]
    np.testing.assert_array_equal(result.tensor, expected)
    assert (result.width, result.height) == (28, 28) and result.thumbnail.shape == (28, 28, 3)


def test_directory_and_unreadable_file_get_reasons(tmp_path, monkeypatch):
    assert Decoder(DIGITS)(InputItem(str(tmp_path))).error == "is a directory, not an image file"
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"\x89PNG")
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the read fail the way it does for other users
        real = np.fromfile

        def refuse(path, *args, **kwargs):
            if str(path) == str(locked):
                raise PermissionError(13, "Permission denied")
            return real(path, *args, **kwargs)

        monkeypatch.setattr(decode.np, "fromfile", refuse)
    assert Decoder(DIGITS)(InputItem(str(locked))).error == "permission denied"


def test_pixel_limit_is_checked_from_the_header_and_after_decoding(tmp_path):
    image = np.zeros((40, 30, 3), np.uint8)
    for suffix in (".png", ".tiff"):  # TIFF sizes are only known after decoding
        path = tmp_path / f"image{suffix}"
        cv2.imwrite(str(path), image)
        result = Decoder(DIGITS, max_pixels=1000)(InputItem(str(path)))
        assert "image too large: 30x40" in result.error
        assert Decoder(DIGITS, max_pixels=1200)(InputItem(str(path))).ok


def test_header_sizes_match_opencv(tmp_path):
    image = np.zeros((37, 53, 3), np.uint8)
    for suffix in (".png", ".jpg", ".bmp"):
        data = cv2.imencode(suffix, image)[1]
        assert image_size_from_header(data) == (53, 37), suffix
    assert image_size_from_header(np.frombuffer(fake_png(7, 9), np.uint8)) == (7, 9)
    assert image_size_from_header(np.frombuffer(b"GIF89a....", np.uint8)) is None


def test_large_images_keep_a_small_thumbnail(tmp_path):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), np.full((900, 1200, 3), 128, np.uint8))
    result = Decoder(DIGITS, thumbnails=True)(InputItem(str(path)))
    assert result.ok and result.thumbnail.shape == (384, 512, 3) and result.tensor.shape == (1, 28, 28)
