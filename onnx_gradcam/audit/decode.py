"""Reading and decoding audit images in worker threads; every failure becomes a reason, never an exception."""
from __future__ import annotations

import hashlib
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import cv2
import numpy as np

from ..preprocess import Preprocess
from ..render import to_uint8
from .readers import InputItem

DEFAULT_MAX_PIXELS = 100_000_000
THUMBNAIL_SIDE = 512


@dataclass
class Decoded:
    """One input after decoding: the model-input tensor [C,H,W] (None on failure) and what the records need."""

    item: InputItem
    tensor: Optional[np.ndarray] = None
    thumbnail: Optional[np.ndarray] = None  # uint8 RGB, longest side <= THUMBNAIL_SIDE, for overlays
    width: Optional[int] = None
    height: Optional[int] = None
    size_bytes: Optional[int] = None
    content_hash: Optional[str] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """True when the image decoded (tensor is set)."""
        return self.error is None


class Decoder:
    """Callable that turns an InputItem into a Decoded; OpenCV and hashlib release the GIL, so threads scale."""

    def __init__(self, preprocess: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS,
                 thumbnails: bool = False) -> None:
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.thumbnails = thumbnails

    def __call__(self, item: InputItem) -> Decoded:
        result = Decoded(item)
        try:
            self._decode(result)
        except Exception as error:  # a bad input must never stop the run; the record says why
            result.error = f"{type(error).__name__}: {error}"
        if result.error is not None:
            result.tensor = result.thumbnail = None
        return result

    def _decode(self, result: Decoded) -> None:
        data = _read_bytes(result)
        if data is None:
            return
        result.size_bytes = int(data.size)
        result.content_hash = hashlib.blake2b(data, digest_size=16).hexdigest()
        if data.size == 0:
            result.error = "empty file (0 bytes)"
            return
        header_size = image_size_from_header(data)
        if header_size is not None and not self._size_allowed(result, *header_size):
            return
        if _is_truncated_jpeg(data):
            result.error = "truncated JPEG: the end-of-image marker is missing"
            return
        image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
        if image is None:
            result.error = "not a decodable image: the file is corrupt, truncated or not an image"
            return
        if not self._size_allowed(result, image.shape[1], image.shape[0]):
            return
        rgb = cv2.cvtColor(to_uint8(image), cv2.COLOR_BGR2RGB)
        result.tensor = self.preprocess([rgb])[0]
        if self.thumbnails:
            result.thumbnail = fit_within(rgb, THUMBNAIL_SIDE)

    def _size_allowed(self, result: Decoded, width: int, height: int) -> bool:
        result.width, result.height = int(width), int(height)
        if width <= 0 or height <= 0:
            result.error = f"invalid image size {width}x{height}"
            return False
        if width * height > self.max_pixels:
            result.error = (f"image too large: {width}x{height} = {width * height / 1e6:.1f} MP, above the "
                            f"{self.max_pixels / 1e6:g} MP limit (raise it with --max-pixels)")
            return False
        return True


def _read_bytes(result: Decoded) -> Optional[np.ndarray]:
    try:
        return np.fromfile(result.item.path, dtype=np.uint8)
    except FileNotFoundError:
        result.error = "no such file"
    except IsADirectoryError:
        result.error = "is a directory, not an image file"
    except PermissionError:
        result.error = "permission denied"
    except OSError as error:
        result.error = f"cannot read the file: {error.strerror or error}"
    return None


def _is_truncated_jpeg(data: np.ndarray) -> bool:
    # libjpeg decodes a cut-off JPEG with a grey bottom and only a warning; the missing EOI marker tells.
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    tail = data[-64:].tobytes().rstrip(b"\x00\r\n ")
    return not tail.endswith(b"\xff\xd9")


def image_size_from_header(data: np.ndarray) -> Optional[tuple[int, int]]:
    """(width, height) read from a PNG, JPEG or BMP header without decoding; None for other formats."""
    head = data[:64].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"BM") and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _jpeg_size(data: np.ndarray) -> Optional[tuple[int, int]]:
    raw = memoryview(data)
    position = 2
    while position + 9 < len(raw):
        if raw[position] != 0xFF:
            return None
        marker = raw[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = (raw[position + 2] << 8) | raw[position + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height = (raw[position + 5] << 8) | raw[position + 6]
            width = (raw[position + 7] << 8) | raw[position + 8]
            return width, height
        position += 2 + length
    return None


def fit_within(image: np.ndarray, side: int) -> np.ndarray:
    """image scaled down (never up) so that its longest side is at most side pixels."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def decode_in_order(items: Iterable[InputItem], decode: Callable[[InputItem], Decoded], pool: ThreadPoolExecutor,
                    ahead: int) -> Iterator[Decoded]:
    """Decode items on the pool, at most `ahead` in flight, yielding results in input order."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(decode, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
