"""Turning raw images (paths, uint8 arrays) into the float tensor a model expects."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from .errors import InputError
from .render import to_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNEL_ORDERS = ("RGB", "BGR", "GRAY")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Preprocess:
    """How a uint8 RGB image becomes model input: resize, scale, mean/std, channel order, layout."""

    size: Optional[tuple[int, int]] = None  # (H, W); None: the model's input size
    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)
    scale: float = 1 / 255
    channel_order: str = "RGB"
    layout: str = "NCHW"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise InputError(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        if self.layout not in LAYOUTS:
            raise InputError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if any(s == 0 for s in self.std):
            raise InputError("std must not contain zeros")

    @classmethod
    def imagenet(cls, size: Optional[tuple[int, int]] = None, layout: str = "NCHW") -> "Preprocess":
        """The torchvision ImageNet convention: RGB, /255, ImageNet mean and std."""
        return cls(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, layout=layout)

    @classmethod
    def from_dict(cls, spec: dict) -> "Preprocess":
        """Build from a JSON-style dict (as stored in augmented models' metadata)."""
        known = {"size", "mean", "std", "scale", "channel_order", "layout"}
        size = spec.get("size")
        return cls(size=tuple(size) if size else None, mean=tuple(spec.get("mean", (0.0,))),
                   std=tuple(spec.get("std", (1.0,))), scale=float(spec.get("scale", 1 / 255)),
                   channel_order=spec.get("channel_order", "RGB"), layout=spec.get("layout", "NCHW"),
                   extra={k: v for k, v in spec.items() if k not in known})

    def to_dict(self) -> dict:
        spec = asdict(self)
        spec.update(spec.pop("extra"))
        spec["size"] = list(self.size) if self.size else None
        spec["mean"], spec["std"] = list(self.mean), list(self.std)
        return spec

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "GRAY" else 3

    def resized(self, image: np.ndarray) -> np.ndarray:
        """The uint8 RGB image at the model's input size (what the heatmap aligns with)."""
        if self.size is None:
            raise InputError("Preprocess.size is unknown; the model input has no static size, pass size=(H, W)")
        height, width = self.size
        if image.shape[:2] == (height, width):
            return image
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return a float32 batch in the model's layout from uint8 RGB [H,W,3] images."""
        batch = []
        for image in images:
            image = self.resized(to_rgb(image))
            if self.channel_order == "BGR":
                image = image[..., ::-1]
            elif self.channel_order == "GRAY":
                image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
            batch.append(image)
        array = np.stack(batch).astype(np.float32) * np.float32(self.scale)
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(0, 3, 1, 2) if self.layout == "NCHW" else array)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Return image as uint8 RGB [H,W,3] (from gray [H,W] / [H,W,1], RGBA, or 16-bit)."""
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = to_uint8(image)
    if image.dtype != np.uint8:
        raise InputError(f"raw images must be uint8 (or uint16), got {image.dtype}; "
                         "pass float arrays already preprocessed in the model's layout instead")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(f"an image must be [H,W], [H,W,1], [H,W,3] or [H,W,4]; got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


def parse_preprocess(value: Union[None, str, dict, Preprocess]) -> Optional[Preprocess]:
    """A Preprocess from 'imagenet', 'none' (plain /255), a JSON string or file, a dict, or None."""
    if value is None or isinstance(value, Preprocess):
        return value
    if isinstance(value, dict):
        return Preprocess.from_dict(value)
    if value == "imagenet":
        return Preprocess.imagenet()
    if value == "none":
        return Preprocess()
    try:
        spec = json.loads(Path(value).read_text() if Path(value).is_file() else value)
    except (OSError, ValueError) as error:
        raise InputError(f"--preprocess must be 'imagenet', 'none', or a JSON spec or file; got {value!r} "
                         f"({error})") from error
    if not isinstance(spec, dict):
        raise InputError(f"a preprocessing spec must be a JSON object, got {spec!r}")
    return Preprocess.from_dict(spec)
