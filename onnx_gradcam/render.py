"""Colormap, overlay and image I/O; public images are RGB uint8 [H,W,3], BGR exists only at cv2 calls."""
from __future__ import annotations

import functools
import math
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from onnx_gradcam.errors import ImageReadError, InputError

_CAPTION_HEIGHT = 16
_CAPTION_SCALE = 0.4
_GAP = 2
_BACKGROUND = (32, 32, 32)


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """Return the uint8 RGB OpenCV JET colouring of a [H,W] heatmap in [0, 1]."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise InputError(f"heatmap must be a non-empty [H,W] array, got shape {heatmap.shape}")
    heat = np.rint(np.clip(np.nan_to_num(heatmap), 0, 1) * np.float32(255)).astype(np.uint8)
    return _jet_table()[heat]


@functools.lru_cache(maxsize=1)
def _jet_table() -> np.ndarray:
    """OpenCV's JET colours for the 256 heat levels, RGB (a lookup is ~20x faster than applyColorMap)."""
    levels = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[:, 0]


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Return the uint8 RGB blend (1-alpha)*image + alpha*colorize(heatmap), the heatmap resized to the image."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _rgb_float(image)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim == 2 and heatmap.size and heatmap.shape != rgb.shape[:2]:
        heatmap = cv2.resize(heatmap, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    blend = np.float32(1 - alpha) * rgb + np.float32(alpha) * colorize(heatmap).astype(np.float32)
    return np.rint(blend).astype(np.uint8)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the image file at path as uint8 RGB [H,W,3]; gray is expanded, alpha dropped, 16-bit scaled."""
    try:
        # np.fromfile + imdecode instead of cv2.imread so that non-ASCII paths work on every platform.
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageReadError(f"cannot read image {path}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"cannot read image {path}: it is a directory") from None
    except OSError as error:
        raise ImageReadError(f"cannot read image {path}: {error.strerror or error}") from None
    if data.size == 0:
        raise ImageReadError(f"cannot read image {path}: the file is empty")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as error:
        raise ImageReadError(f"cannot read image {path}: OpenCV failed to decode it ({error})") from None
    if image is None:
        raise ImageReadError(f"cannot read image {path}: it is corrupt, truncated or not an image file")
    try:
        image = to_uint8(image)
    except InputError as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit pixels from 8-bit, 16-bit (rounded x/257) or float [0, 1] ones; channels untouched."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.rint(np.clip(np.nan_to_num(image), 0, 1) * 255).astype(np.uint8)
    raise InputError(f"unsupported pixel type {image.dtype}")


def write_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write a uint8 RGB (or gray) image atomically, encoded by the path's extension (.png, .jpg, ...)."""
    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.size == 0 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))
    ):
        raise InputError(f"image must be uint8 [H,W] or [H,W,3], got {image.dtype} {image.shape}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    try:
        encoded, data = cv2.imencode(path.suffix, image)
    except cv2.error:
        encoded = False
    if not encoded:
        raise InputError(f"cannot write {path}: OpenCV has no encoder for {path.suffix!r}; use .png or .jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary in the same directory makes os.replace an atomic rename: readers never see half a file.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as handle:
            handle.write(data.tobytes())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def contact_sheet(
    images: Sequence[np.ndarray],
    columns: int = 8,
    captions: Sequence[str] | None = None,
    cell: int | None = None,
) -> np.ndarray:
    """Return a uint8 RGB grid of the images, each fitted into a cell x cell tile, captions under the tiles."""
    if len(images) == 0:
        raise InputError("contact_sheet needs at least one image")
    if columns < 1 or (cell is not None and cell < 1):
        raise InputError(f"columns and cell must be positive, got columns={columns}, cell={cell}")
    if captions is not None and len(captions) != len(images):
        raise InputError(f"got {len(captions)} captions for {len(images)} images")
    tiles = [np.rint(_rgb_float(image)).astype(np.uint8) for image in images]
    cell = cell or max(max(tile.shape[:2]) for tile in tiles)
    caption_height = 0 if captions is None else _CAPTION_HEIGHT
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    pitch_x, pitch_y = cell + _GAP, cell + caption_height + _GAP
    sheet = np.empty((rows * pitch_y + _GAP, columns * pitch_x + _GAP, 3), np.uint8)
    sheet[:] = _BACKGROUND
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        top, left = _GAP + row * pitch_y, _GAP + column * pitch_x
        fitted = _fit(tile, cell)
        y, x = top + (cell - fitted.shape[0]) // 2, left + (cell - fitted.shape[1]) // 2
        sheet[y : y + fitted.shape[0], x : x + fitted.shape[1]] = fitted
        if captions is not None:
            _put_caption(sheet, str(captions[index]), left, top + cell, cell)
    return sheet


def _rgb_float(image: np.ndarray) -> np.ndarray:
    """Return image as float32 RGB [H,W,3] on the 0..255 scale; uint8 or float in [0, 1] accepted."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.size == 0:
        raise InputError(f"image must be a non-empty [H,W], [H,W,1], [H,W,3] or [H,W,4] array, got {image.shape}")
    if image.dtype == np.uint8:
        scaled = image[:, :, :3].astype(np.float32)
    elif np.issubdtype(image.dtype, np.floating):
        scaled = np.clip(image[:, :, :3].astype(np.float32), 0, 1) * np.float32(255)
    else:
        raise InputError(f"image must be uint8 or float in [0, 1], got dtype {image.dtype}")
    return np.repeat(scaled, 3, axis=2) if scaled.shape[2] == 1 else scaled


def _fit(tile: np.ndarray, cell: int) -> np.ndarray:
    """Return tile resized to fit inside cell x cell, keeping its aspect ratio."""
    height, width = tile.shape[:2]
    scale = cell / max(height, width)
    if scale == 1:
        return tile
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(tile, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _put_caption(sheet: np.ndarray, text: str, left: int, top: int, width: int) -> None:
    """Draw text (ASCII, shortened with '...' to fit width) in the caption strip at (left, top)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    text = text.encode("ascii", "replace").decode()  # Hershey fonts draw ASCII only
    shown = text
    while shown and cv2.getTextSize(shown, font, _CAPTION_SCALE, 1)[0][0] > width - 2:
        text = text[:-1]
        shown = text + "..." if text else ""
    baseline = top + _CAPTION_HEIGHT - 4
    cv2.putText(sheet, shown, (left + 1, baseline), font, _CAPTION_SCALE, (235, 235, 235), 1, cv2.LINE_AA)


# Ultralytics' 20-colour palette (RGB), so boxes look as users of those detectors expect.
_BOX_PALETTE = (
    (255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49), (72, 249, 10),
    (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (0, 194, 255),
    (52, 69, 147), (100, 115, 255), (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255),
    (255, 149, 200), (255, 55, 199),
)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
    colors: Sequence[int] | Sequence[Sequence[int]] | None = None,
    line_width: int | None = None,
) -> np.ndarray:
    """Return a uint8 RGB copy of image with each x1,y1,x2,y2 box outlined and captioned "label score".

    colors: one RGB colour for all boxes, one per box, or None for a colour per label. Draw over
    ``overlay(image, heatmap)`` to show each box with its label and score over its heatmap.
    """
    canvas = np.rint(_rgb_float(image)).astype(np.uint8)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"boxes must be [M, 4] x1, y1, x2, y2, got shape {list(boxes.shape)}")
    count = len(boxes)
    for name, values in (("labels", labels), ("scores", scores)):
        if values is not None and len(values) != count:
            raise InputError(f"got {len(values)} {name} for {count} boxes; pass one per box or None")
    if not np.all(np.isfinite(boxes)):
        raise InputError("boxes contain NaN or infinity; pass finite x1, y1, x2, y2 pixel coordinates")
    if line_width is not None and line_width < 1:
        raise InputError(f"line_width must be a positive number of pixels, got {line_width}")
    box_colors = _box_colors(colors, labels, count)
    # Ultralytics' sizing: lines about 0.3% of the image's mean side, text scaled with them.
    width = line_width or max(round(sum(canvas.shape[:2]) / 2 * 0.003), 2)
    for index, (box, color) in enumerate(zip(boxes, box_colors)):
        x1, y1, x2, y2 = (int(round(value)) for value in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, width, cv2.LINE_AA)
        caption = " ".join(part for part in (
            None if labels is None else str(labels[index]),
            None if scores is None else f"{float(scores[index]):.2f}") if part)
        if caption:
            _put_box_caption(canvas, caption, (x1, y1), color, width)
    return canvas


def outline_mask(
    image: np.ndarray,
    mask: np.ndarray,
    color: Sequence[int] = (255, 255, 255),
    caption: str | None = None,
    line_width: int | None = None,
) -> np.ndarray:
    """Return a uint8 RGB copy of image with the outline of a bool [H,W] mask (the image's size) drawn in color,
    and caption on a tab at the top-left corner of the mask's bounding box.

    Draw over ``overlay(image, heatmap)`` to show where a class was predicted against where its heatmap is.
    """
    canvas = np.rint(_rgb_float(image)).astype(np.uint8)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != canvas.shape[:2]:
        raise InputError(f"mask must be [H,W] of the image's size {list(canvas.shape[:2])}, got {list(mask.shape)}")
    if line_width is not None and line_width < 1:
        raise InputError(f"line_width must be a positive number of pixels, got {line_width}")
    color = tuple(int(channel) for channel in color)
    width = line_width or max(round(sum(canvas.shape[:2]) / 2 * 0.003), 2)  # as draw_detections
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, color, width, cv2.LINE_AA)
    if caption and mask.any():
        rows, columns = np.nonzero(mask)
        _put_box_caption(canvas, caption, (int(columns.min()), int(rows.min())), color, width)
    return canvas


def _box_colors(colors, labels: Sequence[str] | None, count: int) -> list[tuple[int, int, int]]:
    """One RGB colour per box: given, repeated, or picked from the palette by label."""
    if colors is None:
        if labels is None:
            return [_BOX_PALETTE[0]] * count
        names = {name: index for index, name in enumerate(dict.fromkeys(map(str, labels)))}
        return [_BOX_PALETTE[names[str(label)] % len(_BOX_PALETTE)] for label in labels]
    table = np.asarray(colors)
    if table.shape == (3,):
        table = np.repeat(table[None], count, axis=0)
    if table.shape != (count, 3) or not np.issubdtype(table.dtype, np.number):
        raise InputError(f"colors must be one RGB triple or one per box ({count}), got shape {list(table.shape)}")
    return [tuple(int(channel) for channel in np.clip(row, 0, 255)) for row in table]


def _put_box_caption(canvas: np.ndarray, text: str, corner: tuple[int, int], color, width: int) -> None:
    """Draw text on a filled tab of the box colour above the box's top-left corner (inside if no room above)."""
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, width / 3, max(width - 1, 1)
    text = text.encode("ascii", "replace").decode()  # Hershey fonts draw ASCII only
    (text_width, text_height), baseline = cv2.getTextSize(text, font, scale, thickness)
    x, y = max(min(corner[0], canvas.shape[1] - text_width), 0), corner[1]  # keep the tab inside the image
    outside = y - text_height - baseline >= 0
    top = y - text_height - baseline if outside else y
    bottom = y if outside else y + text_height + baseline
    cv2.rectangle(canvas, (x, top), (x + text_width, bottom), color, cv2.FILLED, cv2.LINE_AA)
    # Dark text on light colours, light text on dark ones (ITU-R BT.601 luma).
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luma > 150 else (255, 255, 255)
    cv2.putText(canvas, text, (x, bottom - baseline), font, scale, ink, thickness, cv2.LINE_AA)
