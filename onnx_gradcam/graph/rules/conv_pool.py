"""Rules of convolution and pooling ops (sliding windows over NCHW maps)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ...errors import OpsetTooLowError, UnsupportedOpError
from ..builder import GraphBuilder
from .blocked_layout import into_blocked_layout
from .common import attr
from .registry import rule

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


def _auto_pad(node: onnx.NodeProto) -> str:
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    return auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad


def _known(size) -> bool:
    return isinstance(size, int) and size > 0


def window_geometry(node: onnx.NodeProto, b: GraphBuilder, kernel: list[int], dilations: list[int]):
    """Strides, begin/end pads and input/output spatial sizes of a sliding-window node.

    Sizes unknown at augment time are None. SAME padding of a strided window depends on the input
    size: where that is unknown, both of its pads are None (see same_pads for the run-time values).
    """
    x, y = node.input[0], node.output[0]
    spatial = len(kernel)
    strides = list(attr(node, "strides", [1] * spatial))
    in_size = [d if _known(d) else None for d in (b.shapes.get(x) or [None] * (spatial + 2))[2:]]
    out_size = [d if _known(d) else None for d in (b.shapes.get(y) or [None] * (spatial + 2))[2:]]
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    auto_pad = _auto_pad(node)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for o, s, r, i in zip(out_size, strides, reach, in_size):
            if s == 1:
                total = r - 1  # the output keeps the input's size whatever it is
            elif i is not None and o is not None:
                total = max(0, (o - 1) * s + r - i)
            else:
                begin.append(None)
                end.append(None)
                continue
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
    else:
        pads = list(attr(node, "pads", [0] * 2 * spatial))
        begin, end = pads[:spatial], pads[spatial:]
    return strides, begin, end, in_size, out_size


def same_pads(node: onnx.NodeProto, b: GraphBuilder, strides, reach, begin) -> str:
    """The begin pads of a SAME-padded window, as an int64 tensor computed from run-time sizes where needed."""
    if None not in begin:
        return b.const(begin, np.int64)
    spatial = list(range(2, 2 + len(strides)))
    in_size, out_size = b.dims(node.input[0], spatial), b.dims(node.output[0], spatial)
    # total = max(0, (out - 1) * stride + reach - in); SAME_UPPER puts the odd pixel at the end.
    total = b.op("Sub", b.op("Add", b.op("Mul", b.op("Sub", out_size, b.const(1, np.int64)),
                                         b.const(strides, np.int64)), b.const(reach, np.int64)), in_size)
    total = b.at_least(total, 0)
    half = b.op("Div", total, b.const(2, np.int64))
    return half if _auto_pad(node) == "SAME_UPPER" else b.op("Sub", total, half)


def window_counts(node: onnx.NodeProto, b: GraphBuilder, kernel, strides, begin, end, include_pad: int) -> str:
    """How many elements each window of an AveragePool divides by, [out_h, out_w], from run-time sizes."""
    x, y = node.input[0], node.output[0]
    spatial = len(kernel)
    pads_begin = same_pads(node, b, strides, kernel, begin)
    counts = None
    for index in range(spatial):
        axis = [2 + index]
        size, outputs = b.dims(x, axis), b.dims(y, axis)
        pad_begin = b.op("Slice", pads_begin, b.const([index], np.int64), b.const([index + 1], np.int64))
        if end[index] is not None:
            pad_end = b.const([end[index]], np.int64)
        else:  # SAME: the rest of the total padding
            total = b.at_least(b.op("Sub", b.op("Add", b.op("Mul", b.op("Sub", outputs, b.const(1, np.int64)),
                                                              b.const(strides[index], np.int64)),
                                                   b.const(kernel[index], np.int64)), size), 0)
            pad_end = b.op("Sub", total, pad_begin)
        positions = b.op("Range", b.const(0, np.int64), b.squeeze(outputs, [0]), b.const(1, np.int64))
        start = b.op("Sub", b.op("Mul", positions, b.const(strides[index], np.int64)), pad_begin)
        stop = b.at_most(b.op("Add", start, b.const(kernel[index], np.int64)), b.op("Add", size, pad_end))
        if include_pad:
            count = b.op("Sub", stop, start)
        else:
            count = b.op("Sub", b.at_most(stop, size), b.at_least(start, 0))
        count = b.unsqueeze(count, list(range(1, spatial - index))) if index < spatial - 1 else count
        counts = count if counts is None else b.op("Mul", counts, count)
    return b.cast(counts, b.dtype(x))


@rule("AveragePool", channels_first=True)
def _average_pool(node, grads, needed, b):
    if any(d != 1 for d in attr(node, "dilations", [])):
        raise UnsupportedOpError(f"AveragePool {node.name!r} with dilations is not supported")
    x = node.input[0]
    kernel = list(attr(node, "kernel_shape"))
    strides, begin, end, in_size, out_size = window_geometry(node, b, kernel, [1] * len(kernel))
    include_pad = attr(node, "count_include_pad", 0)
    np_dtype = helper.tensor_dtype_to_np_dtype(b.dtype(x))
    if None in in_size + out_size + begin:
        counts = window_counts(node, b, kernel, strides, begin, end, include_pad)
    else:
        counts = np.ones([1, 1], np.float64)
        for k, s, pb, pe, i, o in zip(kernel, strides, begin, end, in_size, out_size):
            start = np.arange(o) * s - pb
            stop = np.minimum(start + k, i + pe)
            count = stop - start if include_pad else np.minimum(stop, i) - np.maximum(start, 0)
            counts = counts[..., None] * count
        counts = b.const(counts.reshape([1, 1] + out_size).astype(np_dtype))
    scaled = b.op("Div", grads[0], counts)
    channels = (b.shapes.get(x) or [None, None])[1]
    if isinstance(channels, int):
        ones = b.const(np.ones([channels, 1] + kernel, np_dtype))
        spread = transposed_window(b, node, scaled, ones, channels, kernel, strides, [1] * len(kernel), begin,
                                   in_size, out_size)
        return [into_blocked_layout(b, spread, x)]
    # Channels unknown: every channel as an image of its own, [N * C, 1, h, w], spread by one kernel.
    spatial = list(range(2, 2 + len(kernel)))
    single = b.op("Reshape", scaled, b.op("Concat", b.const([-1, 1], np.int64), b.dims(scaled, spatial), axis=0))
    b.note_shape(single, [None, 1] + out_size, b.dtype(x))
    ones = b.const(np.ones([1, 1] + kernel, np_dtype))
    spread = _transposed_window_at_run_time(b, node, single, ones, 1, kernel, strides, [1] * len(kernel), begin)
    return [b.reshape_like(spread, x)]


def transposed_window(b: GraphBuilder, node: onnx.NodeProto, grad: str, weight: str, group: int, kernel, strides,
                      dilations, begin, in_size, out_size) -> str:
    """ConvTranspose that adds each window's gradient back onto the input positions it covered."""
    if None in in_size + out_size + begin:
        return _transposed_window_at_run_time(b, node, grad, weight, group, kernel, strides, dilations, begin)
    end_crop, extra = [], []
    for k, s, d, pb, i, o in zip(kernel, strides, dilations, begin, in_size, out_size):
        crop = s * (o - 1) + (k - 1) * d + 1 - pb - i
        end_crop.append(max(crop, 0))
        extra.append(max(-crop, 0))  # rows no window reached (floor mode) get zero gradient
    return b.op("ConvTranspose", grad, weight, group=group, kernel_shape=kernel, strides=strides,
                dilations=dilations, pads=list(begin) + end_crop,
                output_padding=extra if any(extra) else None)


def _transposed_window_at_run_time(b: GraphBuilder, node: onnx.NodeProto, grad: str, weight: str, group: int,
                                   kernel, strides, dilations, begin) -> str:
    """transposed_window for sizes known only at run time: the ConvTranspose output, cropped or padded
    to the input's size by a Pad of computed (possibly negative) amounts."""
    x = node.input[0]
    spatial = list(range(2, 2 + len(kernel)))
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    static_begin = [0] * len(kernel) if None in begin else list(begin)  # pads the ConvTranspose crops itself
    spread = b.op("ConvTranspose", grad, weight, group=group, kernel_shape=kernel, strides=strides,
                  dilations=dilations, pads=static_begin + [0] * len(kernel))
    zeros = b.const([0, 0], np.int64)
    if None in begin:
        crop = same_pads(node, b, strides, reach, begin)  # begins not cropped by the ConvTranspose
        start = b.op("Neg", crop)
    else:
        crop = start = b.const([0] * len(kernel), np.int64)
    # The input ends where the (cropped) spread is longer or shorter than it: crop or add zeros.
    stop = b.op("Sub", b.op("Add", b.dims(x, spatial), crop), b.dims(spread, spatial))
    return b.pad(spread, b.op("Concat", zeros, start, zeros, stop, axis=0))


def kernel_shape(node: onnx.NodeProto, b: GraphBuilder) -> list[int]:
    """The static kernel size of a Conv or ConvTranspose (attribute, else its weight's shape)."""
    weight_shape = b.shapes.get(node.input[1])
    kernel = list(attr(node, "kernel_shape", weight_shape[2:] if weight_shape else []))
    if not kernel or not all(isinstance(k, int) for k in kernel):
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: kernel shape unknown")
    return kernel


@rule("Conv", channels_first=True)
def _conv(node, grads, needed, b):
    x, weight = node.input[:2]
    if len(needed) > 1 and any(needed[1:]):
        raise UnsupportedOpError(f"Conv {node.name!r}: gradients with respect to weights computed "
                                 "in the graph are not supported (only to the input)")
    weight_shape = b.shapes.get(weight)
    kernel = kernel_shape(node, b)
    dilations = list(attr(node, "dilations", [1] * len(kernel)))
    strides, begin, end, in_size, out_size = window_geometry(node, b, kernel, dilations)
    group = attr(node, "group", 1)
    reach = [(k - 1) * d for k, d in zip(kernel, dilations)]
    depthwise = weight_shape is not None and group == weight_shape[0] and weight_shape[1] == 1
    if all(s == 1 for s in strides) and (group == 1 or depthwise) and all(
            r >= p for r, p in zip(reach + reach, begin + end)):
        # Stride 1: the gradient is a plain Conv with the kernel flipped (and in/out channels swapped),
        # which ONNX Runtime runs much faster than ConvTranspose; the weight transform is folded
        # into a constant when the session loads. It needs no sizes: stride-1 pads are always known.
        spatial = list(range(2, 2 + len(kernel)))
        flipped = b.slice_reversed(weight, spatial)
        if not depthwise:
            flipped = b.op("Transpose", flipped, perm=[1, 0] + spatial)
        pads = [r - p for r, p in zip(reach, begin)] + [r - p for r, p in zip(reach, end)]
        return [b.op("Conv", grads[0], flipped, group=group, kernel_shape=kernel, dilations=dilations,
                     pads=pads)]
    # Conv's weight [M, C/g, k...] is exactly ConvTranspose's [C_in=M, C_out/g, k...].
    spread = transposed_window(b, node, grads[0], weight, group, kernel, strides, dilations, begin, in_size,
                               out_size)
    return [into_blocked_layout(b, spread, x)]


@rule("ConvTranspose", channels_first=True)
def _conv_transpose(node, grads, needed, b):
    # ConvTranspose is the adjoint of Conv: its input gradient is a Conv of dy with the same weights
    # (ConvTranspose's [C_in, C_out/g, k...] is Conv's [M, C/g, k...]). y is the full transposed
    # convolution cropped by pads at the begin and end and extended by output_padding at the end;
    # padding dy back the same way (cropping where output_padding went past the full result) gives
    # the Conv its input, and a Conv over it returns exactly x's size, known or not.
    x, weight = node.input[:2]
    if any(needed[1:]):
        raise UnsupportedOpError(f"ConvTranspose {node.name!r}: gradients with respect to weights or bias "
                                 "computed in the graph are not supported (only to the input)")
    kernel = kernel_shape(node, b)
    spatial = len(kernel)
    strides = list(attr(node, "strides", [1] * spatial))
    dilations = list(attr(node, "dilations", [1] * spatial))
    extra = list(attr(node, "output_padding", [0] * spatial))
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    output_shape = attr(node, "output_shape")
    auto_pad = _auto_pad(node)
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Pads derived from the output size (ONNX's rule, as ONNX Runtime applies it): the total is
        # stride * (in - 1) + output_padding + reach - out; SAME_UPPER puts its odd pixel at the end.
        if output_shape is not None:
            in_size = b.static_dims(x, list(range(2, 2 + spatial)))
            if in_size is None:
                raise UnsupportedOpError(f"ConvTranspose {node.name!r}: output_shape with input sizes unknown "
                                         "at augment time is not supported")
            out_size = list(output_shape)[-spatial:]
            total = [s * (i - 1) + e + r - o for s, i, e, r, o in zip(strides, in_size, extra, reach, out_size)]
        else:  # SAME: out = in * stride
            total = [e + r - s for s, e, r in zip(strides, extra, reach)]
        if min(total) < 0:
            raise UnsupportedOpError(f"ConvTranspose {node.name!r}: an output larger than the full transposed "
                                     "convolution (negative pads) is not supported")
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        end = [t - p for t, p in zip(total, begin)]
    elif auto_pad == "VALID":
        begin = end = [0] * spatial
    else:
        pads = list(attr(node, "pads", [0] * 2 * spatial))
        begin, end = pads[:spatial], pads[spatial:]
    grad = grads[0]
    past_end = [max(e - p, 0) for e, p in zip(extra, end)]  # output_padding rows no input reached
    if any(past_end):
        grad = b.slice(grad, [0] * spatial, [-c if c else np.iinfo(np.int64).max for c in past_end],
                       list(range(2, 2 + spatial)))
    return [b.op("Conv", grad, weight, group=attr(node, "group", 1), kernel_shape=kernel, strides=strides,
                 dilations=dilations, pads=list(begin) + [max(p - e, 0) for e, p in zip(extra, end)])]


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
        raise OpsetTooLowError(f"MaxPool {node.name!r} has overlapping windows; summing their "
                               "gradients needs opset >= 16 (ScatterElements reduction)", needed=16)
    scattered = b.op("ScatterElements", flat, index, update, axis=0,
                     reduction="add" if b.opset >= 16 else None)
    return [b.reshape_like(scattered, x)]


