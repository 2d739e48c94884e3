"""NumPy reference of the heatmap contract in docs/design.md; every other backend is tested against it.

The work every CAM method shares lives here once, as in pytorch-grad-cam's BaseCAM: the weighted sum
of the activation's channels, ReLU, min-max, resize, min-max. A method supplies only its weights (or
its map) through its registry entry; the five methods of the contract table are registered below.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from onnx_gradcam.cam.methods import Family, Method, cam_method, get_method_of, normalize_method
from onnx_gradcam.errors import InputError

# The contract's epsilon in the min-max and xgradcam denominators.
EPSILON = 1e-7
# The alpha denominator of gradcam++: 1e-6 as in pytorch-grad-cam (1e-7 differs from it by up to 0.4
# on real gradients, which are ~1e-3 so that G^2 is comparable to the epsilon).
GRADCAMPP_EPSILON = 1e-6
# OpenCV 4 resizes at most 512 channels per call and OpenCV 5 at most 128.
_RESIZE_CHANNELS = 128
_SPATIAL = (2, 3)

__all__ = ["METHODS", "EPSILON", "GRADCAMPP_EPSILON", "aggregate_layers", "cam_entry", "channel_weights", "heatmaps",
           "normalize", "normalize_method", "raw_cam"]


# ---------------------------------------------------------------- the contract table (kernel ids: gradcam_math.cuh)

@cam_method("gradcam", kernel_id=0)
def _gradcam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """w_k = mean_ij G"""
    return gradient.mean(axis=_SPATIAL)


@cam_method("gradcam++", aliases=("gradcampp", "gradcamplusplus"), kernel_id=1)
def _gradcam_pp(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """a = G^2 / (2G^2 + (sum_ij A) G^3 + 1e-6), 0 where G = 0; w_k = sum_ij a ReLU(G)"""
    total = activation.sum(axis=_SPATIAL, keepdims=True)
    squared = gradient * gradient
    # 2G^2 + S*G^3 factored; where G == 0 alpha is 0/epsilon = 0, as the contract asks.
    alpha = squared / (squared * (2 + total * gradient) + np.float32(GRADCAMPP_EPSILON))
    return (alpha * np.maximum(gradient, 0)).sum(axis=_SPATIAL)


@cam_method("xgradcam", kernel_id=2)
def _xgradcam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """w_k = sum_ij G A / (sum_ij A + 1e-7)"""
    total = activation.sum(axis=_SPATIAL)
    return (gradient * activation).sum(axis=_SPATIAL) / (total + np.float32(EPSILON))


@cam_method("hirescam", kind="element", kernel_id=3)
def _hirescam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """cam = sum_k G_k * A_k"""
    return gradient


@cam_method("layercam", kind="element", kernel_id=4)
def _layercam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """cam = sum_k ReLU(G_k) * A_k"""
    return np.maximum(gradient, 0)


# The contract table's methods, each with a fused kernel; cam.METHODS lists every CAM method.
METHODS: tuple[str, ...] = tuple(entry.name for entry in (_gradcam, _gradcam_pp, _xgradcam, _hirescam, _layercam))


# ---------------------------------------------------------------- the shared work

def cam_entry(method: "str | Method") -> Method:
    """The registry entry of a CAM method (InputError for unknown names and other families)."""
    return get_method_of(method, Family.CAM)


def channel_weights(activation: np.ndarray, gradient: Optional[np.ndarray], method: str) -> Optional[np.ndarray]:
    """Return the [N,K] float32 channel weights of a channel-weight method, None for other CAM methods."""
    entry = cam_entry(method)
    activation, gradient = _check_pair(activation, gradient, entry)
    return None if entry.channel_weights is None else entry.channel_weights(activation, gradient)


def raw_cam(activation: np.ndarray, gradient: Optional[np.ndarray], method: str = "gradcam") -> np.ndarray:
    """Return the [N,h,w] float32 class activation map before ReLU (gradient may be None if unused)."""
    entry = cam_entry(method)
    activation, gradient = _check_pair(activation, gradient, entry)
    if entry.channel_weights is not None:
        weights = entry.channel_weights(activation, gradient)
        batch, channels, height, width = activation.shape
        flat = activation.reshape(batch, channels, height * width)
        return np.matmul(weights[:, None, :], flat).reshape(batch, height, width)
    if entry.element_weights is not None:
        # einsum sums the products without a [N,K,h,w] temporary (3x faster than multiply-then-sum here)
        return np.einsum("nkhw,nkhw->nhw", entry.element_weights(activation, gradient), activation)
    return entry.cam_map(activation, gradient).astype(np.float32, copy=False)


def heatmaps(
    activation: np.ndarray,
    gradient: Optional[np.ndarray],
    method: str = "gradcam",
    size: Optional[tuple[int, int]] = None,
) -> np.ndarray:
    """Return [N,H,W] float32 heatmaps in [0, 1]: ReLU, min-max, bilinear resize to size=(H,W), min-max."""
    size = None if size is None else _check_size(size)
    return finish(raw_cam(activation, gradient, method), size)


def finish(cam: np.ndarray, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The contract's steps after the map: ReLU, min-max, resize to size=(H,W), min-max ([N,h,w] -> [N,H,W])."""
    cam = normalize(np.maximum(cam, 0))
    if size is not None:
        # Normalizing before the resize as well makes the result independent of the CAM's scale
        # (the epsilon acts on a [0, 1] range) and equal to pytorch-grad-cam's; an all-equal map
        # becomes exact zeros before cv2 can round it into a pattern.
        cam = normalize(_resize_batch(cam, size))
    return cam


def aggregate_layers(cams: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Return [N,H,W] float32 heatmaps from several target layers' maps [N,h_l,w_l] (raw_cam's output).

    Per layer: ReLU, min-max, bilinear resize to size=(H,W); then the mean over layers and min-max:
    pytorch-grad-cam's aggregation for a list of target layers (no min-max after each resize).
    """
    size = _check_size(size)
    if not cams or len({len(cam) for cam in cams}) != 1:
        raise InputError("aggregate_layers needs one or more [N,h,w] maps with the same N, one per target layer")
    total = None
    for cam in cams:  # summed one layer at a time, in np.mean's order, without stacking the layers
        resized = _resize_batch(normalize(np.maximum(np.asarray(cam, np.float32), 0)), size)
        total = resized if total is None else np.add(total, resized, out=total)  # resized is a new array
    return normalize(total / np.float32(len(cams)))


def normalize(cam: np.ndarray) -> np.ndarray:
    """Per-image min-max of [N,h,w]: (u - min) / (max - min + 1e-7)."""
    low = cam.min(axis=(1, 2), keepdims=True)
    high = cam.max(axis=(1, 2), keepdims=True)
    return (cam - low) / (high - low + np.float32(EPSILON))


def _check_pair(activation: np.ndarray, gradient: Optional[np.ndarray],
                entry: Method) -> tuple[np.ndarray, Optional[np.ndarray]]:
    activation = _as_float32(activation, "activation")
    if activation.shape[2] == 0 or activation.shape[3] == 0:
        raise InputError(f"activation {activation.shape} has an empty spatial size; h and w must be positive")
    if gradient is None:
        if entry.uses_gradient:
            raise InputError(f"{entry.name} needs the gradient as well as the activation")
        return activation, None
    gradient = _as_float32(gradient, "gradient")
    if activation.shape != gradient.shape:
        raise InputError(
            f"activation {activation.shape} and gradient {gradient.shape} must have the same [N,K,h,w] shape"
        )
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
