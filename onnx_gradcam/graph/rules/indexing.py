"""Rules of indexing ops: gathers, whose gradient scatters back, adding up repeated indices."""
from __future__ import annotations

import numpy as np
from onnx import helper

from ...errors import OpsetTooLowError, UnsupportedOpError
from .common import attr
from .registry import rule

# A gathered axis at most this long is scattered back with a one-hot MatMul (one dense product,
# fast for class-token picks and small tables); a longer one with ScatterElements (no J x K matrix).
ONE_HOT_AXIS = 256


def _axis(node, b, tensor: str) -> int:
    """The node's axis attribute, counted from the front."""
    rank = b.rank(tensor)
    axis = attr(node, "axis", 0)
    if rank is None and axis < 0:
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: negative axis on {tensor!r}, whose rank is "
                                 "unknown")
    return axis if rank is None else axis % rank


@rule("Gather")
def _gather(node, grads, needed, b):
    # y[p, k, s] = x[p, I[k], s] (p: axes before `axis`, k: the index axes, s: axes after). So
    # dx[p, j, s] = sum over k with I[k] = j of dy[p, k, s]: repeated indices add up.
    x, indices = node.input
    axis = _axis(node, b, x)
    length = (b.shapes.get(x) or [None] * (axis + 1))[axis]
    length = length if isinstance(length, int) else None
    index_value = b.constant_value(indices)
    rank = b.rank(x)
    if index_value is not None and index_value.ndim == 0 and rank is not None:
        return [_scalar_gather_gradient(b, x, grads[0], axis, rank, int(index_value), length), None]
    index_shape = list(index_value.shape) if index_value is not None else b.static_dims(indices)
    # dy as [p..., K, S]: the index axes flattened into one, the axes after `axis` into another.
    if index_shape is not None:
        grouped = b.const([0] * axis + [int(np.prod(index_shape, dtype=np.int64)), -1], np.int64)
    else:
        count = b.op("Reshape", b.op("Size", indices), b.const([1], np.int64))
        grouped = b.op("Concat", b.const([0] * axis, np.int64), count, b.const([-1], np.int64), axis=0)
    grad = b.op("Reshape", grads[0], grouped)
    np_dtype = helper.tensor_dtype_to_np_dtype(b.dtype(x))
    if (length is not None and length <= ONE_HOT_AXIS) or b.opset < 16:
        # One-hot: dx[p, :, :] = H^T @ dy[p, :, :], H^T[j, k] = (I[k] == j mod J).
        if length is not None and index_value is not None:
            picks = np.asarray(index_value).reshape(-1) % length
            one_hot = b.const((np.arange(length)[:, None] == picks[None, :]).astype(np_dtype))
        else:
            size = b.op("Gather", b.shape(x), b.const(axis, np.int64), axis=0)
            positions = b.unsqueeze(b.op("Range", b.const(0, np.int64), size, b.const(1, np.int64)), [1])
            flat_indices = b.op("Reshape", indices, b.const([-1], np.int64))
            picks = b.unsqueeze(b.op("Mod", flat_indices, size), [0])  # negative indices count from the end
            one_hot = b.cast(b.op("Equal", positions, picks), b.dtype(x))
        spread = b.op("MatMul", one_hot, grad)
    else:
        # ScatterElements adds each dy[p, k, s] into x's row I[k]; its indices are I broadcast to dy.
        index_grid = b.op("Expand", b.op("Reshape", indices, b.const([1] * axis + [-1, 1], np.int64)),
                          b.shape(grad))
        zeros = b.op("Reshape", b.zeros_like(x), b.const([0] * (axis + 1) + [-1], np.int64))  # [p..., J, S]
        spread = b.op("ScatterElements", zeros, index_grid, grad, axis=axis, reduction="add")
    return [b.reshape_like(spread, x), None]


def _scalar_gather_gradient(b, x: str, grad: str, axis: int, rank: int, index: int, length) -> str:
    """dx of y = x.take(index, axis) for one constant index: dy put back at row `index`, zeros around it.

    A Pad of one row writes dx once; the general scatter would also build an index tensor of dx's size
    (ViT's class token x[:, 0], and the q, k, v rows of a packed attention projection, take this path).
    """
    row = b.unsqueeze(grad, [axis])
    if length is not None:
        before = index % length
        pads = [0] * (2 * rank)
        pads[axis], pads[rank + axis] = before, length - before - 1
        return b.pad(row, pads)
    size = b.op("Gather", b.shape(x), b.const([axis], np.int64), axis=0)
    before = b.const([index], np.int64) if index >= 0 else b.op("Add", size, b.const([index], np.int64))
    after = b.op("Sub", b.op("Sub", size, before), b.const([1], np.int64))
    zeros = b.const([0] * axis, np.int64)
    rest = b.const([0] * (rank - axis - 1), np.int64)
    return b.pad(row, b.op("Concat", zeros, before, rest, zeros, after, rest, axis=0))


@rule("GatherElements")
def _gather_elements(node, grads, needed, b):
    # y[..., k, ...] = x[..., I[..., k, ...], ...]: the gradient scatters dy back to where each
    # element came from, adding up elements picked more than once.
    x, indices = node.input
    axis = _axis(node, b, x)
    reduction = "add" if b.opset >= 16 else None
    if reduction is None:
        index_value = b.constant_value(indices)
        length = (b.shapes.get(x) or [None] * (axis + 1))[axis]
        if index_value is None or not isinstance(length, int) or _repeats(index_value % length, axis):
            raise OpsetTooLowError(
                f"GatherElements {node.name!r}: its indices may pick an element twice; adding up their "
                "gradients needs opset >= 16 (ScatterElements reduction)", needed=16)
    spread = b.op("ScatterElements", b.zeros_like(x), indices, grads[0], axis=axis, reduction=reduction)
    return [spread, None]


def _repeats(indices: np.ndarray, axis: int) -> bool:
    """True when two entries of GatherElements indices name the same element of x."""
    grid = np.indices(indices.shape)
    grid[axis] = indices
    flat = grid.reshape(len(indices.shape), -1).T
    return len(np.unique(flat, axis=0)) < len(flat)
