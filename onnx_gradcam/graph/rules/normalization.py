"""Rules of normalization ops (per-channel, per-group, per-token and softmax-style)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ...errors import UnsupportedOpError
from ..builder import GraphBuilder
from .common import attr, unbroadcast
from .registry import declare, rule


@rule("Softmax", "LogSoftmax")
def _softmax(node, grads, needed, b):
    y = node.output[0]
    rank = b.rank(y)
    axis = attr(node, "axis", -1 if b.opset >= 13 else 1)
    if rank is None and b.opset < 13:
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: rank of its input is unknown")
    axis = axis % rank if rank is not None else axis  # ReduceSum takes a negative axis as it is
    # Before opset 13 the op normalizes over all axes from `axis` on (input coerced to 2-D).
    axes = [axis] if b.opset >= 13 else list(range(axis, rank))
    if node.op_type == "Softmax":
        total = b.reduce("ReduceSum", b.op("Mul", grads[0], y), axes)
        return [b.op("Mul", y, b.op("Sub", grads[0], total))]
    total = b.reduce("ReduceSum", grads[0], axes)
    return [b.op("Sub", grads[0], b.op("Mul", b.op("Exp", y), total))]


@rule("BatchNormalization", channels_first=True)
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


# ---------------------------------------------------------------- statistics over the trailing axes

# Unit scales up to this many elements are stored in the model; larger ones (a group of a large map)
# are made at run time rather than adding a megabyte per normalization to the file.
ONES_KEPT = 4096


def standardized(b: GraphBuilder, x: str, axis: int, epsilon: float) -> tuple[str, str]:
    """(x - mean) * inv_std and inv_std = 1 / sqrt(variance + epsilon) over the axes of x from axis on.

    The normalization ops do not output these statistics (LayerNormalization only when asked), so
    the reverse pass computes them from the forward input once: from opset 17 as one fused
    LayerNormalization with unit scale, before that with reductions.
    """
    rank = b.rank(x)
    if rank is None and axis >= 0:
        raise UnsupportedOpError(f"rank of {x!r} is unknown; cannot normalize it from axis {axis}")
    if b.opset >= 17:
        rest = b.shapes[x][axis:] if rank is not None else None
        dtype = b.dtype(x)
        if rest is not None and all(isinstance(d, int) and d > 0 for d in rest) and np.prod(rest) <= ONES_KEPT:
            ones = b.const(np.ones(rest, helper.tensor_dtype_to_np_dtype(dtype)))
        else:
            trailing = b.op("Slice", b.shape(x), b.const([axis], np.int64),
                            b.const([np.iinfo(np.int64).max], np.int64))
            ones = b.op("ConstantOfShape", trailing,
                        value=helper.make_tensor("one", dtype, [1], [1]))
        xhat, _, inv_std = b.op("LayerNormalization", x, ones, outputs=3, axis=axis, epsilon=epsilon)
        if dtype != TensorProto.FLOAT:  # the statistics are float32 (stash_type 1)
            inv_std = b.cast(inv_std, dtype)
        return xhat, inv_std
    axes = list(range(axis % rank, rank)) if rank is not None else list(range(axis, 0))
    centered = b.op("Sub", x, b.reduce("ReduceMean", x, axes))
    variance = b.reduce("ReduceMean", b.op("Mul", centered, centered), axes)
    inv_std = b.op("Reciprocal", b.op("Sqrt", b.op("Add", variance, b.scalar_like(epsilon, x))))
    return b.op("Mul", centered, inv_std), inv_std


def standardized_grad(b: GraphBuilder, grad: str, xhat: str, inv_std: str, axes: list[int]) -> str:
    """d/dx of xhat = (x - mean) * inv_std over axes, given grad = d/dxhat:

    inv_std * (grad - mean(grad) - xhat * mean(grad * xhat)).
    """
    mean_grad = b.reduce("ReduceMean", grad, axes)
    mean_projection = b.reduce("ReduceMean", b.op("Mul", grad, xhat), axes)
    return b.op("Mul", inv_std, b.op("Sub", b.op("Sub", grad, mean_grad), b.op("Mul", xhat, mean_projection)))


def _statistics(node, b: GraphBuilder, axis: int, groups: int | None = None) -> tuple[str, str]:
    """standardized() of the node's input (grouped to [N, G, -1] when groups are given) from axis on,
    once per forward node: a second reverse pass (guided) reuses it."""
    key = node.output[0] + "#standardized"
    if key + "/xhat" not in b.memo:
        x = node.input[0] if groups is None else _grouped(b, node.input[0], groups)
        b.memo[key + "/xhat"], b.memo[key + "/inv_std"] = standardized(b, x, axis, attr(node, "epsilon", 1e-5))
    return b.memo[key + "/xhat"], b.memo[key + "/inv_std"]


def _optional(node, index: int) -> str | None:
    return node.input[index] if len(node.input) > index and node.input[index] else None


@rule("LayerNormalization", layout_preserving=True)
def _layer_norm(node, grads, needed, b):
    x, scale, bias, y = node.input[0], node.input[1], _optional(node, 2), node.output[0]
    if any(grad is not None for grad in grads[1:]):
        raise UnsupportedOpError(f"LayerNormalization {node.name!r}: its Mean or InvStdDev output "
                                 "reaches the score; only the normalized output is differentiated")
    rank, axis = b.rank(x), attr(node, "axis", -1)
    if rank is None and axis >= 0:
        raise UnsupportedOpError(f"LayerNormalization {node.name!r}: rank of {x!r} unknown with axis {axis}")
    axes = list(range(axis % rank, rank)) if rank is not None else list(range(axis, 0))
    saved = node.output[1:3] if len(node.output) >= 3 else ()
    if len(saved) == 2 and all(saved):  # the forward node already outputs its statistics
        mean, inv_std = saved
        if b.dtype(x) != TensorProto.FLOAT:
            mean, inv_std = b.cast(mean, b.dtype(x)), b.cast(inv_std, b.dtype(x))
        xhat = b.op("Mul", b.op("Sub", x, mean), inv_std)
    else:
        xhat, inv_std = _statistics(node, b, axis)
    grad = grads[0]
    grad_x = standardized_grad(b, b.op("Mul", grad, scale), xhat, inv_std, axes) if needed[0] else None
    grad_scale = unbroadcast(b, b.op("Mul", grad, xhat), scale, y) if needed[1] else None
    grad_bias = unbroadcast(b, grad, bias, y) if bias is not None and needed[2] else None
    return [grad_x, grad_scale, grad_bias]


def _channel_rank(node, b: GraphBuilder) -> int:
    rank = b.rank(node.input[0])
    if rank is None or rank < 3:
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: rank of {node.input[0]!r} unknown "
                                 "or below 3; run onnx shape inference first")
    return rank


@rule("InstanceNormalization", channels_first=True)
def _instance_norm(node, grads, needed, b):
    x, scale = node.input[:2]
    rank = _channel_rank(node, b)
    spatial = list(range(2, rank))
    xhat, inv_std = _statistics(node, b, 2)
    per_channel = b.const([-1] + [1] * (rank - 2), np.int64)
    grad = grads[0]
    grad_x = None
    if needed[0]:
        grad_x = standardized_grad(b, b.op("Mul", grad, b.op("Reshape", scale, per_channel)), xhat, inv_std,
                                   spatial)
    grad_scale = b.reduce("ReduceSum", b.op("Mul", grad, xhat), [0] + spatial, keepdims=0) if needed[1] else None
    grad_bias = b.reduce("ReduceSum", grad, [0] + spatial, keepdims=0) if needed[2] else None
    return [grad_x, grad_scale, grad_bias]


def _grouped(b: GraphBuilder, x: str, groups: int) -> str:
    """x reshaped to [N, G, C/G * spatial], its shape recorded so its statistics can use static sizes."""
    reshaped = b.op("Reshape", x, b.const([0, groups, -1], np.int64))
    dims = b.shapes[x]
    rest = dims[1:]
    size = int(np.prod(rest)) // groups if all(isinstance(d, int) and d > 0 for d in rest) else None
    b.shapes[reshaped], b.dtypes[reshaped] = [dims[0], groups, size], b.dtype(x)
    return reshaped


@rule("GroupNormalization", channels_first=True)
def _group_norm(node, grads, needed, b):
    """Statistics per image and group of channels; scale and bias per group (opset 18), per channel (21)."""
    x, scale = node.input[:2]
    rank = _channel_rank(node, b)
    groups = attr(node, "num_groups")
    grouped = b.const([0, groups, -1], np.int64)  # [N, G, C/G * spatial]
    xhat, inv_std = _statistics(node, b, 2, groups)
    grad = grads[0]
    grad_x = grad_scale = grad_bias = None
    if b.opset >= 21:
        per_channel = b.const([-1] + [1] * (rank - 2), np.int64)
        if needed[0]:
            scaled = b.op("Reshape", b.op("Mul", grad, b.op("Reshape", scale, per_channel)), grouped)
        folded = [0] + list(range(2, rank))
        if needed[1]:
            product = b.op("Mul", grad, b.reshape_like(xhat, x))
            grad_scale = b.reduce("ReduceSum", product, folded, keepdims=0)
        if needed[2]:
            grad_bias = b.reduce("ReduceSum", grad, folded, keepdims=0)
    else:
        grad_grouped = b.op("Reshape", grad, grouped)
        if needed[0]:
            scaled = b.op("Mul", grad_grouped, b.op("Reshape", scale, b.const([-1, 1], np.int64)))
        if needed[1]:
            grad_scale = b.reduce("ReduceSum", b.op("Mul", grad_grouped, xhat), [0, 2], keepdims=0)
        if needed[2]:
            grad_bias = b.reduce("ReduceSum", grad_grouped, [0, 2], keepdims=0)
    if needed[0]:
        grad_x = b.reshape_like(standardized_grad(b, scaled, xhat, inv_std, [2]), x)
    return [grad_x, grad_scale, grad_bias]


declare("LRN", channels_first=True)
