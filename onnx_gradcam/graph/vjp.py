"""Differentiation rules: one function per ONNX op type, keyed by op type.

Each rule takes the forward node, the gradients of its outputs (None where an
output does not reach the score), which inputs need a gradient, and a
GraphBuilder; it returns one gradient name (or None) per input.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import UnsupportedOpError
from .builder import GraphBuilder

Grads = list[Optional[str]]
Rule = Callable[[onnx.NodeProto, Grads, Sequence[bool], GraphBuilder], Grads]

RULES: dict[str, Rule] = {}

# Ops whose outputs carry no gradient (shape arithmetic, comparisons, indices).
NON_DIFFERENTIABLE = frozenset({
    "Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Greater", "Less",
    "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf",
    "ConstantOfShape", "Range", "EyeLike", "RandomNormalLike", "RandomUniformLike",
    "Floor", "Ceil", "Round", "Sign", "OneHot", "TopK"})


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register a function as the rule for the given op types."""
    def register(function: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = function
        return function
    return register


def differentiate(node: onnx.NodeProto, grads: Grads, needed: Sequence[bool],
                  b: GraphBuilder) -> Grads:
    """Return the input gradients of node, or raise UnsupportedOpError."""
    function = RULES.get(node.op_type)
    if function is None or node.domain not in ("", "ai.onnx"):
        raise UnsupportedOpError(
            f"no differentiation rule for op {node.op_type!r} (node {node.name or node.output[0]!r}, "
            f"domain {node.domain or 'ai.onnx'!r}) on the path from the target to the score; "
            "choose a target closer to the output (see list_targets) or file an issue with this op. "
            f"Supported ops: {', '.join(sorted(RULES))}")
    result = list(function(node, grads, needed, b))
    result += [None] * (len(node.input) - len(result))
    for name, need, grad in zip(node.input, needed, result):
        if need and grad is None:
            raise UnsupportedOpError(
                f"the {node.op_type} rule gives no gradient for input {name!r} of node "
                f"{node.name or node.output[0]!r}, which depends on the target; choose a target "
                "closer to the output (see list_targets)")
    return result


def attr(node: onnx.NodeProto, name: str, default=None):
    """Value of a node attribute, or default."""
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def unbroadcast(b: GraphBuilder, grad: str, operand: str, result: str) -> str:
    """Sum grad over the axes along which operand was broadcast to result's shape."""
    operand_shape, result_shape = b.shapes.get(operand), b.shapes.get(result)
    if operand_shape is not None and operand_shape == result_shape and None not in operand_shape:
        return grad
    if operand_shape is not None and result_shape is not None:
        lead = len(result_shape) - len(operand_shape)
        axes, known = list(range(lead)), True
        for index, dim in enumerate(operand_shape):
            out_dim = result_shape[index + lead]
            if dim == 1 and out_dim != 1:
                axes.append(index + lead)
            elif dim is None or (dim != out_dim and not isinstance(dim, int)):
                known = False
        if known:
            if not axes:
                return grad
            return b.reshape_like(b.reduce("ReduceSum", grad, axes, keepdims=1), operand)
    if b.opset < 13:
        raise UnsupportedOpError(f"cannot tell how {operand!r} was broadcast to {result!r} "
                                 "(shapes unknown at opset < 13); give the model static shapes")
    rank = len(result_shape) if result_shape is not None else b.rank(grad)
    if rank is None:
        raise UnsupportedOpError(f"rank of {result!r} is unknown; run onnx shape inference first")
    padded = b.op("Concat", b.const(np.ones(rank, np.int64)), b.shape(operand), axis=0)
    padded = b.op("Slice", padded, b.op("Sub", b.op("Size", padded), b.const([rank], np.int64)),
                  b.const([np.iinfo(np.int64).max], np.int64))
    broadcast = b.op("Not", b.op("Equal", padded, b.shape(grad)))
    axes = b.op("Reshape", b.op("NonZero", broadcast), b.const([-1], np.int64))
    summed = b.op("ReduceSum", grad, axes, keepdims=1, noop_with_empty_axes=1)
    return b.reshape_like(summed, operand)


# ---------------------------------------------------------------- pass-through

@rule("Identity", "Dropout")
def _identity(node, grads, needed, b):
    return [grads[0]]


@rule("Cast")
def _cast(node, grads, needed, b):
    return [b.cast(grads[0], b.dtype(node.input[0]))]


@rule("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def _reshape(node, grads, needed, b):
    return [b.reshape_like(grads[0], node.input[0])]


@rule("Transpose")
def _transpose(node, grads, needed, b):
    perm = attr(node, "perm")
    if perm is None:
        rank = b.rank(node.input[0])
        if rank is None:
            raise UnsupportedOpError(f"Transpose {node.name!r} has no perm and unknown rank")
        perm = list(reversed(range(rank)))
    return [b.op("Transpose", grads[0], perm=list(np.argsort(perm)))]


# ---------------------------------------------------------------- elementwise

@rule("Add", "Sum")
def _add(node, grads, needed, b):
    return [unbroadcast(b, grads[0], x, node.output[0]) if need else None
            for x, need in zip(node.input, needed)]


@rule("Sub")
def _sub(node, grads, needed, b):
    a, c = node.input
    return [unbroadcast(b, grads[0], a, node.output[0]) if needed[0] else None,
            unbroadcast(b, b.op("Neg", grads[0]), c, node.output[0]) if needed[1] else None]


@rule("Neg")
def _neg(node, grads, needed, b):
    return [b.op("Neg", grads[0])]


@rule("Mul")
def _mul(node, grads, needed, b):
    a, c = node.input
    return [unbroadcast(b, b.op("Mul", grads[0], c), a, node.output[0]) if needed[0] else None,
            unbroadcast(b, b.op("Mul", grads[0], a), c, node.output[0]) if needed[1] else None]


@rule("Div")
def _div(node, grads, needed, b):
    a, c = node.input
    grad_a = grad_c = None
    if needed[0]:
        grad_a = unbroadcast(b, b.op("Div", grads[0], c), a, node.output[0])
    if needed[1]:
        minus = b.op("Neg", b.op("Div", b.op("Mul", grads[0], node.output[0]), c))
        grad_c = unbroadcast(b, minus, c, node.output[0])
    return [grad_a, grad_c]


def _masked(b: GraphBuilder, condition: str, grad: str) -> str:
    """grad where condition holds, 0 elsewhere.

    A Mul by the cast condition: ONNX Runtime's CPU Where is several times slower than Cast and Mul.
    """
    return b.op("Mul", grad, b.cast(condition, b.dtype(grad)))


# BatchNormalization scale of the ReLU mask: the largest float32 power of ten.
_MASK_SCALE = 1e38


def _map_channels(b: GraphBuilder, tensor: str) -> Optional[int]:
    """Static channel count of a float32 4-D tensor, the kind ONNX Runtime's blocked layout holds; else None."""
    shape = b.shapes.get(tensor)
    if b.dtype(tensor) != TensorProto.FLOAT or shape is None or len(shape) != 4 or not isinstance(shape[1], int):
        return None
    return shape[1]


def _relu_mask(b: GraphBuilder, y: str) -> str:
    """1 where the ReLU output y is positive, 0 where it is zero, in y's type.

    On a float32 NCHW tensor with static channels the mask is Tanh(BatchNormalization(y, scale=1e38)):
    ONNX Runtime's CPU provider runs that as one depthwise convolution with a fused Tanh in its
    blocked (NCHWc) layout, so the Conv nodes of the reverse pass stay in that layout instead of
    converting back and forth around every ReLU (measured on ResNet-50: 45% more reverse-pass time).
    tanh(1e38 * y) is exactly 1 for y >= 1e-37 (and 0 at 0): it departs from the step function only
    where y is within float32 rounding of zero, where the sign of y is rounding noise anyway.
    """
    channels = _map_channels(b, y)
    if channels is None:
        return b.cast(b.op("Greater", y, b.scalar_like(0.0, y)), b.dtype(y))
    scale, zeros, ones = (b.const(np.full(channels, value, np.float32)) for value in (_MASK_SCALE, 0.0, 1.0))
    return b.op("Tanh", b.op("BatchNormalization", y, scale, zeros, zeros, ones, epsilon=1e-5))


@rule("Relu")
def _relu(node, grads, needed, b):
    grad = grads[0]
    if b.guided:  # guided backpropagation: only positive gradients pass back through a ReLU
        grad = b.op("Relu", grad)
    return [b.op("Mul", grad, _relu_mask(b, node.output[0]))]


@rule("LeakyRelu")
def _leaky_relu(node, grads, needed, b):
    x = node.input[0]
    alpha = attr(node, "alpha", 0.01)
    positive = b.cast(b.op("Greater", x, b.scalar_like(0.0, x)), b.dtype(x))
    slope = b.op("Add", b.op("Mul", positive, b.scalar_like(1.0 - alpha, x)), b.scalar_like(alpha, x))
    return [b.op("Mul", grads[0], slope)]


@rule("Clip")
def _clip(node, grads, needed, b):
    x = node.input[0]
    low = node.input[1] if len(node.input) > 1 and node.input[1] else None
    high = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if b.opset < 11:
        low, high = b.scalar_like(attr(node, "min", -3.4e38), x), b.scalar_like(attr(node, "max", 3.4e38), x)
    inside = None
    for bound, compare in ((low, "Greater"), (high, "Less")):
        if bound is not None:
            test = b.op(compare, x, bound)
            inside = test if inside is None else b.op("And", inside, test)
    result: Grads = [grads[0] if inside is None else _masked(b, inside, grads[0]), None, None]
    for index, bound, compare in ((1, low, "Less"), (2, high, "Greater")):
        if bound is not None and b.opset >= 11 and len(needed) > index and needed[index]:
            clipped = _masked(b, b.op(compare, x, bound), grads[0])
            result[index] = unbroadcast(b, clipped, bound, node.output[0])
    return result


@rule("Sigmoid")
def _sigmoid(node, grads, needed, b):
    y = node.output[0]
    slope = b.op("Mul", y, b.op("Sub", b.scalar_like(1.0, y), y))
    return [b.op("Mul", grads[0], slope)]


@rule("Tanh")
def _tanh(node, grads, needed, b):
    y = node.output[0]
    return [b.op("Mul", grads[0], b.op("Sub", b.scalar_like(1.0, y), b.op("Mul", y, y)))]


@rule("HardSigmoid")
def _hard_sigmoid(node, grads, needed, b):
    y = node.output[0]
    inside = b.op("And", b.op("Greater", y, b.scalar_like(0.0, y)), b.op("Less", y, b.scalar_like(1.0, y)))
    scaled = b.op("Mul", grads[0], b.scalar_like(attr(node, "alpha", 0.2), y))
    return [_masked(b, inside, scaled)]


@rule("HardSwish")
def _hard_swish(node, grads, needed, b):
    # d/dx x*relu6(x+3)/6 = 0 below -3, x/3 + 1/2 up to 3, 1 above (PyTorch's convention at the kinks).
    x = node.input[0]
    middle = b.op("Add", b.op("Div", x, b.scalar_like(3.0, x)), b.scalar_like(0.5, x))
    above = b.op("Greater", x, b.scalar_like(3.0, x))
    inside = b.op("Not", b.op("Or", b.op("Less", x, b.scalar_like(-3.0, x)), above))
    slope = b.op("Add", _masked(b, inside, middle), b.cast(above, b.dtype(x)))
    return [b.op("Mul", grads[0], slope)]


@rule("Softmax", "LogSoftmax")
def _softmax(node, grads, needed, b):
    y = node.output[0]
    rank = b.rank(y)
    axis = attr(node, "axis", -1 if b.opset >= 13 else 1)
    if rank is None and axis < 0:
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: rank of its input is unknown")
    axis = axis % rank if rank is not None else axis
    # Before opset 13 the op normalizes over all axes from `axis` on (input coerced to 2-D).
    axes = [axis] if b.opset >= 13 else list(range(axis, rank))
    if node.op_type == "Softmax":
        total = b.reduce("ReduceSum", b.op("Mul", grads[0], y), axes)
        return [b.op("Mul", y, b.op("Sub", grads[0], total))]
    total = b.reduce("ReduceSum", grads[0], axes)
    return [b.op("Sub", grads[0], b.op("Mul", b.op("Exp", y), total))]


@rule("BatchNormalization")
def _batch_norm(node, grads, needed, b):
    if len(node.output) > 1 and any(node.output[1:]) or attr(node, "training_mode", 0):
        raise UnsupportedOpError(f"BatchNormalization {node.name!r} is in training mode; "
                                 "export the model in eval/inference mode")
    x, scale, _, _, variance = node.input[:5]
    rank = b.rank(x)
    if rank is None:
        raise UnsupportedOpError(f"BatchNormalization {node.name!r}: rank of {x!r} unknown")
    epsilon = b.scalar_like(attr(node, "epsilon", 1e-5), variance)
    factor = b.op("Div", scale, b.op("Sqrt", b.op("Add", variance, epsilon)))
    factor = b.op("Reshape", factor, b.const([-1] + [1] * (rank - 2), np.int64))
    return [b.op("Mul", grads[0], factor)]


# ---------------------------------------------------------------- linear algebra

def _swap_last_two(b: GraphBuilder, tensor: str) -> str:
    rank = b.rank(tensor)
    if rank is None:
        raise UnsupportedOpError(f"rank of {tensor!r} is unknown; cannot transpose it")
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return b.op("Transpose", tensor, perm=perm)


@rule("MatMul")
def _matmul(node, grads, needed, b):
    a, c = node.input
    if (b.rank(a) or 0) < 2 or (b.rank(c) or 0) < 2:
        raise UnsupportedOpError(f"MatMul {node.name!r}: 1-D or unknown-rank operands are not supported")
    grad_a = grad_c = None
    if needed[0]:
        grad_a = unbroadcast(b, b.op("MatMul", grads[0], _swap_last_two(b, c)), a, node.output[0])
    if needed[1]:
        grad_c = unbroadcast(b, b.op("MatMul", _swap_last_two(b, a), grads[0]), c, node.output[0])
    return [grad_a, grad_c]


@rule("Gemm")
def _gemm(node, grads, needed, b):
    a, c = node.input[:2]
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    trans_a, trans_b = attr(node, "transA", 0), attr(node, "transB", 0)
    grad = grads[0]
    result: Grads = [None] * len(node.input)
    if needed[0]:
        # dA' = alpha * dY @ B'^T, and dA = dA'^T when A was transposed.
        result[0] = (b.op("Gemm", c, grad, alpha=alpha, transA=trans_b, transB=1) if trans_a
                     else b.op("Gemm", grad, c, alpha=alpha, transB=1 - trans_b))
    if needed[1]:
        result[1] = (b.op("Gemm", grad, a, alpha=alpha, transA=1, transB=trans_a) if trans_b
                     else b.op("Gemm", a, grad, alpha=alpha, transA=1 - trans_a))
    if len(node.input) > 2 and node.input[2] and needed[2]:
        scaled = b.op("Mul", grad, b.scalar_like(beta, grad))
        result[2] = unbroadcast(b, scaled, node.input[2], node.output[0])
    return result


# ---------------------------------------------------------------- reductions and pooling

# The gradient of a GlobalAveragePool over at most this many positions is a depthwise Conv.
_SMALL_POOL = 64


@rule("GlobalAveragePool")
def _global_average_pool(node, grads, needed, b):
    x, y = node.input[0], node.output[0]
    shape = b.shapes.get(x)
    if shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]) and (
            shape[2] * shape[3] <= _SMALL_POOL):
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


@rule("GlobalMaxPool")
def _global_max_pool(node, grads, needed, b):
    # The gradient goes to the first maximum of each channel, as in PyTorch.
    x = node.input[0]
    flat_shape = b.const([0, 0, -1], np.int64)
    flat = b.op("Reshape", x, flat_shape)
    index = b.op("ArgMax", flat, axis=2, keepdims=1)
    scattered = b.op("ScatterElements", b.zeros_like(flat), index,
                     b.op("Reshape", grads[0], b.const([0, 0, 1], np.int64)), axis=2)
    return [b.reshape_like(scattered, x)]


def _reduce_axes(node: onnx.NodeProto, b: GraphBuilder) -> Optional[list[int]]:
    """Static reduction axes of a Reduce* node, or None when it reduces every axis."""
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = b.constant_value(node.input[1])
        if axes is None:
            raise UnsupportedOpError(f"{node.op_type} {node.name!r}: axes are computed at run time")
    if axes is None or len(axes) == 0:
        if attr(node, "noop_with_empty_axes", 0):
            return []
        return None
    rank = b.rank(node.input[0])
    if rank is None and any(a < 0 for a in axes):
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: negative axes with unknown rank")
    return sorted(int(a) % rank if rank else int(a) for a in axes)


@rule("ReduceMean", "ReduceSum")
def _reduce_mean(node, grads, needed, b):
    x, y = node.input[0], node.output[0]
    axes = _reduce_axes(node, b)
    grad = grads[0]
    if axes == []:
        return [grad]
    if not attr(node, "keepdims", 1) and axes is not None:
        grad = b.unsqueeze(grad, axes)
    spread = b.op("Expand", grad, b.shape(x))
    if node.op_type == "ReduceSum":
        return [spread]
    return [b.op("Div", spread, b.element_count_ratio(x, y, b.dtype(x)))]


def _window_geometry(node: onnx.NodeProto, b: GraphBuilder, kernel: list[int], dilations: list[int]):
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


@rule("AveragePool")
def _average_pool(node, grads, needed, b):
    if any(d != 1 for d in attr(node, "dilations", [])):
        raise UnsupportedOpError(f"AveragePool {node.name!r} with dilations is not supported")
    x = node.input[0]
    kernel = list(attr(node, "kernel_shape"))
    strides, begin, end, in_size, out_size = _window_geometry(node, b, kernel, [1] * len(kernel))
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
    return [_blocked_layout(b, _transposed_window(b, scaled, ones, channels, kernel, strides, [1] * len(kernel),
                                                  begin, in_size, out_size), x)]


def _transposed_window(b: GraphBuilder, grad: str, weight: str, group: int, kernel, strides, dilations,
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


@rule("Conv")
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
    strides, begin, end, in_size, out_size = _window_geometry(node, b, kernel, dilations)
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
    return [_blocked_layout(b, _transposed_window(b, grads[0], weight, group, kernel, strides, dilations,
                                                  begin, in_size, out_size), x)]


# Channel counts ONNX Runtime's blocked layout takes (its block is 8 or 16 channels wide).
_BLOCK = 16


def _blocked_layout(b: GraphBuilder, tensor: str, like: str) -> str:
    """tensor (shaped like `like`) through a 1x1 MaxPool, an exact identity, when it is a 4-D float32 map.

    ONNX Runtime's CPU provider keeps Conv, Mul and Sum nodes in its blocked NCHWc layout as long as
    their inputs arrive in it; a ConvTranspose output does not, and without this every node after it
    in the reverse pass would convert layouts around each Conv. The pooling node moves the tensor
    into the blocked layout once.
    """
    channels = _map_channels(b, like)
    if channels is None or channels % _BLOCK:
        return tensor
    return b.op("MaxPool", tensor, kernel_shape=[1, 1])


@rule("Pad")
def _pad(node, grads, needed, b):
    mode = attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = attr(node, "pads") if b.opset < 11 else b.constant_value(node.input[1])
    if mode != "constant" or pads is None or (len(node.input) > 3 and node.input[3]):
        raise UnsupportedOpError(f"Pad {node.name!r}: only constant padding with static pads "
                                 "over all axes is supported")
    pads = [int(p) for p in np.asarray(pads).ravel()]
    rank = len(pads) // 2
    if any(p < 0 for p in pads):
        raise UnsupportedOpError(f"Pad {node.name!r}: negative pads (cropping) are not supported")
    stops = [-p if p > 0 else np.iinfo(np.int64).max for p in pads[rank:]]
    return [b.slice(grads[0], pads[:rank], stops, list(range(rank)))]


@rule("Slice")
def _slice(node, grads, needed, b):
    x = node.input[0]
    shape = b.shapes.get(x)
    starts, ends = b.constant_value(node.input[1]), b.constant_value(node.input[2])
    axes = b.constant_value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    steps = b.constant_value(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if starts is None or ends is None or shape is None or (steps is not None and (np.asarray(steps) != 1).any()):
        raise UnsupportedOpError(f"Slice {node.name!r}: only static starts/ends with step 1 on a "
                                 "tensor of known shape are supported")
    axes = list(range(len(starts))) if axes is None else [int(a) % len(shape) for a in axes]
    pads = [0] * (2 * len(shape))
    for axis, start, stop in zip(axes, starts, ends):
        size = shape[axis]
        if not isinstance(size, int):
            if int(start) == 0 and int(stop) >= 2**31 - 1:
                continue  # the whole axis: nothing to pad back
            raise UnsupportedOpError(f"Slice {node.name!r}: axis {axis} has no static size")
        start, stop, _ = slice(int(start), int(stop)).indices(size)
        pads[axis], pads[axis + len(shape)] = start, size - max(stop, start)
    if b.opset < 11:
        return [b.op("Pad", grads[0], pads=pads)]
    return [b.op("Pad", grads[0], b.const(pads, np.int64))]


@rule("MaxPool")
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


# ---------------------------------------------------------------- joins and splits

@rule("Concat")
def _concat(node, grads, needed, b):
    axis = attr(node, "axis")
    rank = b.rank(node.output[0])
    if axis < 0:
        if rank is None:
            raise UnsupportedOpError(f"Concat {node.name!r}: negative axis with unknown rank")
        axis += rank
    axis_index = b.const([axis], np.int64)
    start = b.const([0], np.int64)
    result: Grads = []
    for part, need in zip(node.input, needed):
        stop = b.op("Add", start, b.op("Gather", b.shape(part), axis_index))
        result.append(b.op("Slice", grads[0], start, stop, axis_index) if need else None)
        start = stop
    return result


@rule("Split")
def _split(node, grads, needed, b):
    parts = [grad if grad is not None else b.zeros_like(output) for grad, output in zip(grads, node.output)]
    return [b.op("Concat", *parts, axis=attr(node, "axis", 0))]
