"""Rules of convolution and pooling ops (sliding windows over NCHW maps)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ...errors import UnsupportedOpError
from ..builder import GraphBuilder
from .blocked_layout import into_blocked_layout
from .common import attr
from .registry import declare, rule

# The gradient of a GlobalAveragePool over at most this many positions is a depthwise Conv.
SMALL_POOL = 64


@rule("GlobalAveragePool", channels_first=True)
def _global_average_pool(node, grads, needed, b):
    x, y = node.input[0], node.output[0]
    shape = b.shapes.get(x)
    if shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]) and (
            shape[2] * shape[3] <= SMALL_POOL):
        # Spreading the gradient evenly over the h x w map is a "full" depthwise convolution with a
        # constant kernel: the same values as Expand / count, and a Conv that ONNX Runtime keeps in its
        # blocked layout for the rest of the reverse pass (the usual 7x7 head map costs 49 MACs a value).
        channels, height, width = shape[1:]
        np_dtype = helper.tensor_dtype_to_np_dtype(b.dtype(x))
        kernel = b.const(np.full((channels, 1, height, width), 1.0 / (height * width), np_dtype))
        return [b.op("Conv", grads[0], kernel, group=channels, kernel_shape=[height, width],
                     pads=[height - 1, width - 1] * 2)]
    count = b.element_count_ratio(x, y, b.dtype(x))
    return [b.op("Div", b.op("Expand", grads[0], b.shape(x)), count)]


@rule("GlobalMaxPool", channels_first=True)
def _global_max_pool(node, grads, needed, b):
    # The gradient goes to the first maximum of each channel, as in PyTorch.
    x = node.input[0]
    flat_shape = b.const([0, 0, -1], np.int64)
    flat = b.op("Reshape", x, flat_shape)
    index = b.op("ArgMax", flat, axis=2, keepdims=1)
    scattered = b.op("ScatterElements", b.zeros_like(flat), index,
                     b.op("Reshape", grads[0], b.const([0, 0, 1], np.int64)), axis=2)
    return [b.reshape_like(scattered, x)]


def window_geometry(node: onnx.NodeProto, b: GraphBuilder, kernel: list[int], dilations: list[int]):
    """Strides, begin/end pads and input/output spatial sizes of a sliding-window node."""
    x, y = node.input[0], node.output[0]
    spatial = len(kernel)
    strides = list(attr(node, "strides", [1] * spatial))
    in_size = (b.shapes.get(x) or [None] * (spatial + 2))[2:]
    out_size = (b.shapes.get(y) or [None] * (spatial + 2))[2:]
    if not all(isinstance(d, int) and d > 0 for d in in_size + out_size):
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: spatial sizes must be static to "
                                 "differentiate it; export the model with a fixed image size")
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, (o - 1) * s + r - i) for o, s, r, i in zip(out_size, strides, reach, in_size)]
        small = [t // 2 for t in total]
        large = [t - t // 2 for t in total]
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    else:
        pads = list(attr(node, "pads", [0] * 2 * spatial))
        begin, end = pads[:spatial], pads[spatial:]
    return strides, begin, end, in_size, out_size


@rule("AveragePool", channels_first=True)
def _average_pool(node, grads, needed, b):
    if any(d != 1 for d in attr(node, "dilations", [])):
        raise UnsupportedOpError(f"AveragePool {node.name!r} with dilations is not supported")
    x = node.input[0]
    kernel = list(attr(node, "kernel_shape"))
    strides, begin, end, in_size, out_size = window_geometry(node, b, kernel, [1] * len(kernel))
    include_pad = attr(node, "count_include_pad", 0)
    counts = np.ones([1, 1], np.float64)
    for k, s, pb, pe, i, o in zip(kernel, strides, begin, end, in_size, out_size):
        start = np.arange(o) * s - pb
        stop = np.minimum(start + k, i + pe)
        count = stop - start if include_pad else np.minimum(stop, i) - np.maximum(start, 0)
        counts = counts[..., None] * count
    np_dtype = helper.tensor_dtype_to_np_dtype(b.dtype(x))
    scaled = b.op("Div", grads[0], b.const(counts.reshape([1, 1] + out_size).astype(np_dtype)))
    channels = (b.shapes.get(x) or [None, None])[1]
    if not isinstance(channels, int):
        raise UnsupportedOpError(f"AveragePool {node.name!r}: channel count must be static")
    ones = b.const(np.ones([channels, 1] + kernel, np_dtype))
    spread = transposed_window(b, scaled, ones, channels, kernel, strides, [1] * len(kernel), begin, in_size,
                               out_size)
    return [into_blocked_layout(b, spread, x)]


def transposed_window(b: GraphBuilder, grad: str, weight: str, group: int, kernel, strides, dilations,
                      begin, in_size, out_size) -> str:
    """ConvTranspose that adds each window's gradient back onto the input positions it covered."""
    end_crop, extra = [], []
    for k, s, d, pb, i, o in zip(kernel, strides, dilations, begin, in_size, out_size):
        crop = s * (o - 1) + (k - 1) * d + 1 - pb - i
        end_crop.append(max(crop, 0))
        extra.append(max(-crop, 0))  # rows no window reached (floor mode) get zero gradient
    return b.op("ConvTranspose", grad, weight, group=group, kernel_shape=kernel, strides=strides,
                dilations=dilations, pads=list(begin) + end_crop,
                output_padding=extra if any(extra) else None)


@rule("Conv", channels_first=True)
def _conv(node, grads, needed, b):
    x, weight = node.input[:2]
    if len(needed) > 1 and any(needed[1:]):
        raise UnsupportedOpError(f"Conv {node.name!r}: gradients with respect to weights computed "
                                 "in the graph are not supported (only to the input)")
    weight_shape = b.shapes.get(weight)
    kernel = list(attr(node, "kernel_shape", weight_shape[2:] if weight_shape else []))
    if not kernel or not all(isinstance(k, int) for k in kernel):
        raise UnsupportedOpError(f"Conv {node.name!r}: kernel shape unknown")
    dilations = list(attr(node, "dilations", [1] * len(kernel)))
    strides, begin, end, in_size, out_size = window_geometry(node, b, kernel, dilations)
    group = attr(node, "group", 1)
    reach = [(k - 1) * d for k, d in zip(kernel, dilations)]
    depthwise = weight_shape is not None and group == weight_shape[0] and weight_shape[1] == 1
    if all(s == 1 for s in strides) and (group == 1 or depthwise) and all(
            r >= p for r, p in zip(reach + reach, begin + end)):
        # Stride 1: the gradient is a plain Conv with the kernel flipped (and in/out channels swapped),
        # which ONNX Runtime runs much faster than ConvTranspose; the weight transform is folded
        # into a constant when the session loads.
        spatial = list(range(2, 2 + len(kernel)))
        flipped = b.slice_reversed(weight, spatial)
        if not depthwise:
            flipped = b.op("Transpose", flipped, perm=[1, 0] + spatial)
        pads = [r - p for r, p in zip(reach, begin)] + [r - p for r, p in zip(reach, end)]
        return [b.op("Conv", grads[0], flipped, group=group, kernel_shape=kernel, dilations=dilations,
                     pads=pads)]
    # Conv's weight [M, C/g, k...] is exactly ConvTranspose's [C_in=M, C_out/g, k...].
    spread = transposed_window(b, grads[0], weight, group, kernel, strides, dilations, begin, in_size, out_size)
    return [into_blocked_layout(b, spread, x)]


@rule("MaxPool", channels_first=True)
def _max_pool(node, grads, needed, b):
    x = node.input[0]
    if attr(node, "storage_order", 0):
        raise UnsupportedOpError(f"MaxPool {node.name!r} with storage_order=1 is not supported")
    if len(node.output) > 1 and node.output[1]:
        indices = node.output[1]
    elif node.output[0] in b.memo:  # a second reverse pass (guided) reuses the indices
        indices = b.memo[node.output[0]]
    else:
        # A second MaxPool returns the argmax indices: an Indices output on the forward node would
        # change how ONNX Runtime runs it (no NCHWc kernel), and the original outputs by a few ulps.
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        _, indices = b.op("MaxPool", x, outputs=2, hint="maxpool_indices", **attributes)
        b.memo[node.output[0]] = indices
    flat = b.op("Reshape", b.zeros_like(x), b.const([-1], np.int64))
    index = b.op("Reshape", indices, b.const([-1], np.int64))
    update = b.op("Reshape", grads[0], b.const([-1], np.int64))
    kernel = list(attr(node, "kernel_shape"))
    strides = list(attr(node, "strides", [1] * len(kernel)))
    dilations = list(attr(node, "dilations", [1] * len(kernel)))
    overlapping = any(s < (k - 1) * d + 1 for k, s, d in zip(kernel, strides, dilations))
    if overlapping and b.opset < 16:
        raise UnsupportedOpError(f"MaxPool {node.name!r} has overlapping windows; summing their "
                                 "gradients needs opset >= 16 (ScatterElements reduction)")
    scattered = b.op("ScatterElements", flat, index, update, axis=0,
                     reduction="add" if b.opset >= 16 else None)
    return [b.reshape_like(scattered, x)]


declare("ConvTranspose", "Resize", channels_first=True)
