"""NumPy reference of the heatmap contract in DESIGN.md; every other backend is tested against it."""
from __future__ import annotations

import cv2
import numpy as np

from onnx_gradcam.errors import InputError

METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")

# Keys are lower-case names with "-", "_" and spaces removed.
_ALIASES = {
    "gradcam": "gradcam",
    "gradcam++": "gradcam++",
    "gradcampp": "gradcam++",
    "gradcamplusplus": "gradcam++",
    "xgradcam": "xgradcam",
    "hirescam": "hirescam",
    "layercam": "layercam",
}

# The contract's epsilon in the min-max and xgradcam denominators.
EPSILON = 1e-7
# The alpha denominator of gradcam++: 1e-6 as in pytorch-grad-cam (1e-7 differs from it by up to 0.4
# on real gradients, which are ~1e-3 so that G^2 is comparable to the epsilon).
GRADCAMPP_EPSILON = 1e-6
# OpenCV 4 resizes at most 512 channels per call and OpenCV 5 at most 128.
_RESIZE_CHANNELS = 128


def normalize_method(name: str) -> str:
    """Return the canonical method name (one of METHODS) for a case-insensitive name or alias."""
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "") if isinstance(name, str) else None
    if key not in _ALIASES:
        raise InputError(f"unknown Grad-CAM method {name!r}; choose one of {', '.join(METHODS)}")
    return _ALIASES[key]


def channel_weights(activation: np.ndarray, gradient: np.ndarray, method: str) -> np.ndarray | None:
    """Return the [N,K] float32 channel weights of gradcam/gradcam++/xgradcam, None for hirescam/layercam."""
    activation, gradient = _check_pair(activation, gradient)
    return _channel_weights(activation, gradient, normalize_method(method))


def raw_cam(activation: np.ndarray, gradient: np.ndarray, method: str = "gradcam") -> np.ndarray:
    """Return the [N,h,w] float32 class activation map before ReLU."""
    activation, gradient = _check_pair(activation, gradient)
    method = normalize_method(method)
    weights = _channel_weights(activation, gradient, method)
    if weights is not None:
        batch, channels, height, width = activation.shape
        flat = activation.reshape(batch, channels, height * width)
        return np.matmul(weights[:, None, :], flat).reshape(batch, height, width)
    if method == "layercam":
        gradient = np.maximum(gradient, 0)
    # einsum sums the products without a [N,K,h,w] temporary (3x faster than multiply-then-sum here)
    return np.einsum("nkhw,nkhw->nhw", gradient, activation)


def heatmaps(
    activation: np.ndarray,
    gradient: np.ndarray,
    method: str = "gradcam",
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Return [N,H,W] float32 heatmaps in [0, 1]: ReLU, min-max, bilinear resize to size=(H,W), min-max."""
    size = None if size is None else _check_size(size)
    cam = normalize(np.maximum(raw_cam(activation, gradient, method), 0))
    if size is not None:
        # Normalizing before the resize as well makes the result independent of the CAM's scale
        # (the epsilon acts on a [0, 1] range) and equal to pytorch-grad-cam's; an all-equal map
        # becomes exact zeros before cv2 can round it into a pattern.
        cam = normalize(_resize_batch(cam, size))
    return cam


def normalize(cam: np.ndarray) -> np.ndarray:
    """Per-image min-max of [N,h,w]: (u - min) / (max - min + 1e-7)."""
    low = cam.min(axis=(1, 2), keepdims=True)
    high = cam.max(axis=(1, 2), keepdims=True)
    return (cam - low) / (high - low + np.float32(EPSILON))


def _channel_weights(activation: np.ndarray, gradient: np.ndarray, method: str) -> np.ndarray | None:
    spatial = (2, 3)
    if method == "gradcam":
        return gradient.mean(axis=spatial)
    if method == "xgradcam":
        total = activation.sum(axis=spatial)
        return (gradient * activation).sum(axis=spatial) / (total + np.float32(EPSILON))
    if method == "gradcam++":
        total = activation.sum(axis=spatial, keepdims=True)
        squared = gradient * gradient
        # 2G^2 + S*G^3 factored; where G == 0 alpha is 0/epsilon = 0, as the contract asks.
        alpha = squared / (squared * (2 + total * gradient) + np.float32(GRADCAMPP_EPSILON))
        return (alpha * np.maximum(gradient, 0)).sum(axis=spatial)
    return None


def _check_pair(activation: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    activation = _as_float32(activation, "activation")
    gradient = _as_float32(gradient, "gradient")
    if activation.shape != gradient.shape:
        raise InputError(
            f"activation {activation.shape} and gradient {gradient.shape} must have the same [N,K,h,w] shape"
        )
    if activation.shape[2] == 0 or activation.shape[3] == 0:
        raise InputError(f"activation {activation.shape} has an empty spatial size; h and w must be positive")
    return activation, gradient


def _as_float32(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 4:
        raise InputError(f"{name} must be 4-D [N,K,h,w], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{name} must be a float16/float32/float64 array, got dtype {array.dtype}")
    return array.astype(np.float32, copy=False)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(side) for side in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be a (height, width) pair of positive integers, got {size!r}") from None
    if height <= 0 or width <= 0:
        raise InputError(f"size must be a (height, width) pair of positive integers, got {size!r}")
    return height, width


def _resize_batch(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize [N,h,w] to [N,H,W], treating images as channels so that cv2 runs once per chunk of the batch."""
    height, width = size
    if cam.shape[1:] == size:
        return cam
    out = np.empty((cam.shape[0], height, width), np.float32)
    for start in range(0, cam.shape[0], _RESIZE_CHANNELS):
        chunk = np.ascontiguousarray(cam[start : start + _RESIZE_CHANNELS].transpose(1, 2, 0))
        resized = cv2.resize(chunk, (width, height), interpolation=cv2.INTER_LINEAR)
        # cv2.transpose is a blocked 2-D transpose, several times faster than NumPy's strided copy here.
        images = cv2.transpose(resized.reshape(height * width, -1))
        out[start : start + chunk.shape[2]] = images.reshape(-1, height, width)
    return out
