"""Colormap, overlay and image I/O against OpenCV called directly and hand-computed NumPy blends."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from onnx_gradcam.errors import ImageReadError, InputError
from onnx_gradcam.render import colorize, contact_sheet, overlay, read_image, write_image


def _rgb(height=20, width=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _heatmap(height=20, width=30, seed=1):
    return np.random.default_rng(seed).random((height, width), dtype=np.float32)


def _jet_rgb(heatmap):
    """Oracle: OpenCV JET applied directly to round(255*h), flipped to RGB."""
    heat = np.rint(heatmap.astype(np.float64) * 255).astype(np.uint8)
    return cv2.applyColorMap(heat, cv2.COLORMAP_JET)[:, :, ::-1]


def test_colorize_matches_cv2_apply_color_map():
    heatmap = np.concatenate([_heatmap(), np.linspace(0, 1, 30, dtype=np.float32)[None]])
    colors = colorize(heatmap)
    assert colors.dtype == np.uint8 and colors.shape == (21, 30, 3)
    np.testing.assert_array_equal(colors, _jet_rgb(heatmap))


def test_colorize_clips_out_of_range_and_nan():
    colors = colorize(np.array([[-0.5, 1.5, np.nan]], np.float32))
    np.testing.assert_array_equal(colors, _jet_rgb(np.array([[0.0, 1.0, 0.0]])))


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.0, 1.0])
def test_overlay_matches_hand_computed_blend(alpha):
    image, heatmap = _rgb(), _heatmap()
    expected = np.rint((1 - alpha) * image.astype(np.float32) + alpha * _jet_rgb(heatmap).astype(np.float32))
    result = overlay(image, heatmap, alpha)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, expected.astype(np.uint8))


@pytest.mark.parametrize(
    "convert",
    [
        lambda image: image[:, :, 0],
        lambda image: image[:, :, :1],
        lambda image: np.dstack([image, np.full(image.shape[:2], 7, np.uint8)]),
        lambda image: image.astype(np.float32) / 255,
    ],
    ids=["gray", "gray1", "rgba", "float"],
)
def test_overlay_accepts_gray_rgba_and_float_images(convert):
    image, heatmap = _rgb(), _heatmap()
    converted = convert(image)
    base = np.asarray(converted, np.float64)
    base = base * 255 if converted.dtype != np.uint8 else base
    base = base[:, :, None] if base.ndim == 2 else base
    base = np.broadcast_to(base[:, :, :3], image.shape)
    expected = np.rint(0.5 * base + 0.5 * _jet_rgb(heatmap))
    np.testing.assert_allclose(overlay(converted, heatmap), expected, atol=1)


def test_overlay_resizes_heatmap_bilinearly():
    image, heatmap = _rgb(40, 60), _heatmap(7, 7)
    resized = cv2.resize(heatmap, (60, 40), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(overlay(image, heatmap), overlay(image, resized))


@pytest.mark.parametrize(
    "image, heatmap, alpha",
    [
        (np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4)), 0.5),
        (np.zeros((4, 4, 3), np.int32), np.zeros((4, 4)), 0.5),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3)), 0.5),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), 1.5),
    ],
)
def test_overlay_rejects_bad_inputs(image, heatmap, alpha):
    with pytest.raises(InputError):
        overlay(image, heatmap, alpha)


def test_read_image_png_and_jpg(tmp_path):
    image = _rgb()
    cv2.imwrite(str(tmp_path / "a.png"), image[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "a.jpg"), image[:, :, ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), image)
    decoded = cv2.imread(str(tmp_path / "a.jpg"))[:, :, ::-1]
    np.testing.assert_array_equal(read_image(str(tmp_path / "a.jpg")), decoded)


def test_read_image_gray_rgba_and_16_bit(tmp_path):
    image = _rgb()
    gray = image[:, :, 0]
    rgba = np.dstack([image, np.full(gray.shape, 9, np.uint8)])
    deep = np.random.default_rng(2).integers(0, 65536, gray.shape, dtype=np.uint16)
    deep_rgb = np.random.default_rng(3).integers(0, 65536, image.shape, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    cv2.imwrite(str(tmp_path / "deep_rgb.png"), deep_rgb[:, :, ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.dstack([gray] * 3))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), image)
    scaled = np.rint(deep / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), np.dstack([scaled] * 3))
    deep_rgb_scaled = np.rint(deep_rgb / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "deep_rgb.png"), deep_rgb_scaled)
    for name in ("gray.png", "rgba.png", "deep.png"):
        result = read_image(tmp_path / name)
        assert result.dtype == np.uint8 and result.shape == (20, 30, 3)


def test_read_image_non_ascii_path(tmp_path):
    image = _rgb()
    path = tmp_path / "bilder-ñ-画像" / "ü.png"
    write_image(path, image)
    np.testing.assert_array_equal(read_image(path), image)


def _truncated_png(path):
    data = cv2.imencode(".png", _rgb())[1].tobytes()
    path.write_bytes(data[: len(data) // 2])


def _truncated_jpg(path):
    data = cv2.imencode(".jpg", _rgb())[1].tobytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("missing.png", lambda path: None, "no such file"),
        ("empty.png", lambda path: path.write_bytes(b""), "empty"),
        ("half.png", _truncated_png, "corrupt, truncated or not an image"),
        ("half.jpg", _truncated_jpg, "corrupt, truncated or not an image"),
        ("notes.png", lambda path: path.write_text("not an image\n"), "corrupt, truncated or not an image"),
        ("folder.png", lambda path: path.mkdir(), "directory"),
    ],
)
def test_read_image_errors_name_path_and_reason(tmp_path, name, make, reason):
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    assert str(path) in str(error.value) and reason in str(error.value)


def test_write_image_png_roundtrips_exactly_and_leaves_no_temp_files(tmp_path):
    image = _rgb()
    path = tmp_path / "deep" / "nested" / "out.png"
    write_image(path, image)
    write_image(path, image[::-1].copy())  # replaces an existing file
    assert os.listdir(path.parent) == ["out.png"]
    np.testing.assert_array_equal(cv2.imread(str(path))[:, :, ::-1], image[::-1])
    np.testing.assert_array_equal(read_image(path), image[::-1])


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_write_image_jpeg_by_extension(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[:] = (200, 100, 30)  # distinct channels catch an RGB/BGR swap; flat so JPEG keeps it
    write_image(path, smooth)
    assert path.read_bytes()[:2] == b"\xff\xd8"
    assert np.abs(read_image(path).astype(int) - smooth).max() <= 2


def test_write_image_gray(tmp_path):
    gray = _rgb()[:, :, 0]
    write_image(tmp_path / "gray.png", gray)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "gray.png"), cv2.IMREAD_UNCHANGED), gray)


def test_write_image_failure_leaves_no_temp_files(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_image(tmp_path / "out.png", _rgb())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name, image",
    [
        ("out.xyz", _rgb()),
        ("noext", _rgb()),
        ("out.png", _rgb().astype(np.float32)),
        ("out.png", np.zeros((4, 4, 2), np.uint8)),
    ],
)
def test_write_image_rejects_bad_inputs(tmp_path, name, image):
    with pytest.raises(InputError):
        write_image(tmp_path / name, image)
    assert os.listdir(tmp_path) == []


def test_contact_sheet_shape_and_tiles():
    images = [_rgb(20, 30, seed) for seed in range(5)] + [_heatmap(10, 10)]
    sheet = contact_sheet(images, columns=4, cell=30)
    gap = 2
    assert sheet.dtype == np.uint8
    assert sheet.shape == (2 * (30 + gap) + gap, 4 * (30 + gap) + gap, 3)
    np.testing.assert_array_equal(sheet[gap + 5 : gap + 25, gap : gap + 30], images[0])


def test_contact_sheet_with_captions_and_default_cell():
    images = [_rgb(20, 30), _rgb(40, 10)]
    captions = ["cat 0.93", "a very long caption that cannot fit in one tile ñ"]
    sheet = contact_sheet(images, captions=captions)
    assert sheet.shape == (40 + 16 + 2 * 2, 2 * (40 + 2) + 2, 3)
    caption_strip = sheet[2 + 40 : 2 + 40 + 16]
    assert caption_strip.max() > 200  # text was drawn


@pytest.mark.parametrize(
    "images, kwargs",
    [([], {}), ([_rgb()], {"columns": 0}), ([_rgb()], {"cell": 0}), ([_rgb()], {"captions": ["a", "b"]})],
)
def test_contact_sheet_rejects_bad_inputs(images, kwargs):
    with pytest.raises(InputError):
        contact_sheet(images, **kwargs)
