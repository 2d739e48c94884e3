"""Fused GPU heatmaps: the heatmap contract in one CUDA launch per batch (kernels/gradcam.cu) on CuPy arrays.

A method runs the kernel case its registry entry names (kernel_id, a GRADCAM_METHOD_* value). A CAM
method without one (EigenCAM) has its map computed by its NumPy implementation on the host; the kernel
then only applies ReLU, min-max, resize and min-max to that map (and the overlay).
"""
from __future__ import annotations

import functools
import importlib.resources
import math
import re
from pathlib import Path
from typing import Any

from onnx_gradcam.cam.methods import Method, registered_methods
from onnx_gradcam.cam.reference import cam_entry, raw_cam
from onnx_gradcam.errors import InputError

# GRADCAM_METHOD_HIRESCAM computes sum_k G_k * A_k, which for K = 1 and G = 1 is the given map itself:
# the case that finishes a map computed elsewhere (a test checks the value against the header).
MAP_KERNEL_ID = 3

KERNEL_NAME = "gradcam_fused"
COMPILE_OPTIONS = ("--std=c++17",)
_CTYPES = {"float32": "float", "float16": "half_bits"}
_THREADS = 256
# Maps of up to this many floats stay in shared memory (32 KiB); larger ones use a global workspace.
_SHARED_CAM_FLOATS = 8192
# Split an image's channels over several blocks only while each block keeps this many channels.
_MIN_CHANNELS_PER_BLOCK = 32
_INT32_MAX = 2**31 - 1


def kernel_source() -> str:
    """Return the CUDA source of kernels/gradcam.cu with gradcam_math.cuh inlined."""
    header = _read_kernel_file("gradcam_math.cuh")
    return _read_kernel_file("gradcam.cu").replace('#include "gradcam_math.cuh"', header)


@functools.lru_cache(maxsize=None)
def kernel_cases() -> dict[str, int]:
    """Return the GRADCAM_METHOD_* enum of kernels/gradcam_math.cuh, e.g. {'GRADCAM': 0, ...}."""
    header = _read_kernel_file("gradcam_math.cuh")
    return {name: int(value) for name, value in re.findall(r"GRADCAM_METHOD_(\w+) = (\d+)", header)}


def kernel_ids() -> dict[str, int]:
    """Return {method name: GRADCAM_METHOD_* id} of every registered method with a kernel case."""
    return {entry.name: entry.kernel_id for entry in registered_methods() if entry.kernel_id is not None}


def kernel_names() -> list[str]:
    """Return the name expressions of every kernel variant (each dtype, kernel id and overlay flag)."""
    ids = sorted(set(kernel_ids().values()) | {MAP_KERNEL_ID})
    return [kernel_name(dtype, kernel_id, overlay)
            for dtype in _CTYPES for kernel_id in ids for overlay in (False, True)]


def kernel_name(dtype: str, kernel_id: int, overlay: bool) -> str:
    """Return the name expression of one kernel variant, e.g. 'gradcam_fused<float, 0, false>'."""
    return f"{KERNEL_NAME}<{_CTYPES[dtype]}, {int(kernel_id)}, {'true' if overlay else 'false'}>"


def heatmaps(
    activation: Any, gradient: Any, method: str = "gradcam", size: tuple[int, int] | None = None, out: Any = None
) -> Any:
    """Return [N,H,W] float32 CuPy heatmaps in [0, 1] for CuPy activation/gradient [N,K,h,w] (fp32 or fp16).

    gradient may be None for a method that does not read it (EigenCAM).
    """
    cupy = _cupy()
    activation, gradient, entry = _check_pair(cupy, activation, gradient, method)
    batch, _, height, width = activation.shape
    size = (height, width) if size is None else _check_size(size)
    out = _check_out(cupy, out, (batch, *size), activation.device)
    _launch(cupy, activation, gradient, entry, out)
    return out


def heatmaps_and_overlays(
    activation: Any, gradient: Any, images: Any, method: str = "gradcam", alpha: float = 0.5
) -> tuple[Any, Any]:
    """Return ([N,H,W] float32 heatmaps, [N,H,W,3] uint8 JET overlays) for uint8 RGB images [N,H,W,3] on the GPU."""
    cupy = _cupy()
    activation, gradient, entry = _check_pair(cupy, activation, gradient, method)
    images = _check_images(cupy, images, activation)
    alpha = _check_alpha(alpha)
    batch, out_height, out_width, _ = images.shape
    with activation.device:
        heatmap = cupy.empty((batch, out_height, out_width), cupy.float32)
        overlay = cupy.empty_like(images)
    _launch(cupy, activation, gradient, entry, heatmap, images, overlay, alpha)
    return heatmap, overlay


def _launch(cupy, activation, gradient, entry: Method, heatmap, images=None, overlay=None, alpha=0.5) -> None:
    if activation.shape[0] == 0:
        return
    kernel_id = entry.kernel_id
    if kernel_id is None:
        activation, gradient = _host_map(cupy, activation, gradient, entry)
        kernel_id = MAP_KERNEL_ID
    batch, channels, height, width = activation.shape
    area = height * width
    with activation.device:
        kernel = _kernel(activation.dtype.name, kernel_id, overlay is not None)
        slices = _slices(batch, channels, _multiprocessors(activation.device.id))
        cam_in_workspace = area > _SHARED_CAM_FLOATS
        workspace = cupy.empty(batch * slices * area, cupy.float32) if slices > 1 or cam_in_workspace else None
        arrivals = cupy.zeros(batch, cupy.int32) if slices > 1 else None
        shared_floats = _THREADS + 64 + (0 if cam_in_workspace else max(_THREADS, area))
        kernel(
            (batch, slices),
            (_THREADS,),
            (
                activation, gradient,
                *(cupy.int32(side) for side in (channels, height, width, *heatmap.shape[1:])),
                heatmap, images, overlay, cupy.float32(alpha),
                workspace, arrivals, cupy.int32(cam_in_workspace),
            ),
            shared_mem=4 * shared_floats,
        )


def _host_map(cupy, activation, gradient, entry: Method):
    """A method with no kernel case: its NumPy map ([N,1,h,w] float32 on the GPU) and a gradient of ones."""
    host_gradient = None if gradient is None else cupy.asnumpy(gradient)
    cam = raw_cam(cupy.asnumpy(activation), host_gradient, entry)
    with activation.device:
        cam = cupy.asarray(cam[:, None])
        return cam, cupy.ones_like(cam)


def _slices(batch: int, channels: int, multiprocessors: int) -> int:
    """Blocks per image: enough for about two blocks per multiprocessor, each with a fair share of channels."""
    wanted = math.ceil(2 * multiprocessors / batch)
    return max(1, min(wanted, channels // _MIN_CHANNELS_PER_BLOCK, 65535))


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_id: int) -> int:
    runtime = _cupy().cuda.runtime
    return runtime.deviceGetAttribute(runtime.cudaDevAttrMultiProcessorCount, device_id)


@functools.lru_cache(maxsize=None)
def _module(dtype: str, kernel_id: int):
    """One module per dtype and kernel id, with and without overlay; CuPy compiles it on first use on each device."""
    names = [kernel_name(dtype, kernel_id, overlay) for overlay in (False, True)]
    return _cupy().RawModule(code=kernel_source(), options=COMPILE_OPTIONS, name_expressions=names)


@functools.lru_cache(maxsize=None)
def _kernel(dtype: str, kernel_id: int, overlay: bool):
    return _module(dtype, kernel_id).get_function(kernel_name(dtype, kernel_id, overlay))


def _read_kernel_file(name: str) -> str:
    checkout = Path(__file__).resolve().parents[2] / "kernels" / name
    if checkout.is_file():
        return checkout.read_text()
    return importlib.resources.files("onnx_gradcam").joinpath("kernels").joinpath(name).read_text()


def _cupy():
    try:
        import cupy
    except ImportError as error:
        raise ImportError(
            "onnx_gradcam.cam.fused needs CuPy (pip install cupy-cuda13x); "
            "on CPU use onnx_gradcam.cam.reference.heatmaps"
        ) from error
    return cupy


def _check_pair(cupy, activation, gradient, method: str):
    entry = cam_entry(method)
    if entry.kernel_id is not None and entry.kernel_id not in kernel_cases().values():
        raise InputError(f"method {entry.name!r} names kernel id {entry.kernel_id}, which kernels/gradcam_math.cuh has "
                         "no case for; add the case there, or register the method with kernel_id=None to have "
                         "NumPy compute its map")
    if gradient is None and entry.uses_gradient:
        raise InputError(f"{entry.name} needs the gradient as well as the activation")
    pairs = (("activation", activation),) + ((("gradient", gradient),) if gradient is not None else ())
    for name, array in pairs:
        if not isinstance(array, cupy.ndarray):
            raise InputError(
                f"{name} must be a CuPy array on the GPU, got {type(array).__module__}.{type(array).__name__}; "
                "wrap device memory with cupy.asarray/cupy.from_dlpack, or use cam.reference.heatmaps for NumPy"
            )
        if array.ndim != 4:
            raise InputError(f"{name} must be 4-D [N,K,h,w], got shape {array.shape}")
        if array.dtype.name not in _CTYPES:
            raise InputError(f"{name} must be float32 or float16, got {array.dtype}; cast it with .astype('float32')")
    if gradient is not None and activation.shape != gradient.shape:
        raise InputError(
            f"activation {activation.shape} and gradient {gradient.shape} must have the same [N,K,h,w] shape"
        )
    if gradient is not None and activation.dtype != gradient.dtype:
        raise InputError(f"activation ({activation.dtype}) and gradient ({gradient.dtype}) must have the same dtype")
    if gradient is not None and activation.device != gradient.device:
        raise InputError(
            f"activation is on {activation.device} and gradient on {gradient.device}; put both on one GPU"
        )
    _, channels, height, width = activation.shape
    if channels == 0 or height == 0 or width == 0:
        raise InputError(f"activation {activation.shape} is empty; K, h and w must be positive")
    if channels * height * width > _INT32_MAX:
        raise InputError(f"activation {activation.shape} has more than 2**31 - 1 elements per image")
    with activation.device:
        gradient = None if gradient is None else cupy.ascontiguousarray(gradient)
        return cupy.ascontiguousarray(activation), gradient, entry


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(side) for side in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be a (height, width) pair of positive integers, got {size!r}") from None
    if height <= 0 or width <= 0 or height * width > _INT32_MAX:
        raise InputError(f"size must be a (height, width) pair of positive integers with H*W < 2**31, got {size!r}")
    return height, width


def _check_out(cupy, out, shape: tuple[int, int, int], device):
    if out is None:
        with device:
            return cupy.empty(shape, cupy.float32)
    if not isinstance(out, cupy.ndarray) or out.dtype != cupy.float32 or out.shape != shape:
        described = f"{out.dtype} {out.shape}" if isinstance(out, cupy.ndarray) else type(out).__name__
        raise InputError(f"out must be a float32 CuPy array of shape {shape}, got {described}")
    if not out.flags.c_contiguous or out.device != device:
        raise InputError(f"out must be C-contiguous and on {device}, like the activation")
    return out


def _check_images(cupy, images, activation):
    if not isinstance(images, cupy.ndarray):
        raise InputError(f"images must be a CuPy uint8 array [N,H,W,3] on the GPU, got {type(images).__name__}")
    if images.dtype != cupy.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise InputError(f"images must be uint8 RGB [N,H,W,3], got {images.dtype} {images.shape}")
    if images.shape[0] != activation.shape[0]:
        raise InputError(f"images has {images.shape[0]} images but activation has {activation.shape[0]}")
    if images.device != activation.device:
        raise InputError(f"images is on {images.device} but activation on {activation.device}; put both on one GPU")
    _check_size(images.shape[1:3])
    with images.device:
        return cupy.ascontiguousarray(images)


def _check_alpha(alpha) -> float:
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return alpha
