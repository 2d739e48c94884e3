"""Rules of Reduce* ops."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto

from ...errors import UnsupportedOpError
from ..builder import GraphBuilder
from .common import attr
from .registry import rule


def runtime_axes(node: onnx.NodeProto, b: GraphBuilder) -> Optional[str]:
    """The axes input of a Reduce* node when it is computed at run time, else None."""
    if attr(node, "axes") is None and len(node.input) > 1 and node.input[1]:
        return node.input[1] if b.constant_value(node.input[1]) is None else None
    return None


def reduce_axes(node: onnx.NodeProto, b: GraphBuilder) -> Optional[list[int]]:
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


def _kept_shape(node: onnx.NodeProto, b: GraphBuilder, axes: str) -> str:
    """The output shape of node with keepdims=1, from axes computed at run time: 1 on reduced axes."""
    shape = b.shape(node.input[0])
    rank = b.rank(node.input[0])
    if rank is not None:
        size, positions = b.const(rank, np.int64), b.const(np.arange(rank).reshape(-1, 1))
    else:
        size = b.op("Size", shape)
        positions = b.unsqueeze(b.op("Range", b.const(0, np.int64), size, b.const(1, np.int64)), [1])
    axes = b.op("Mod", b.op("Add", axes, size), size)  # negative axes counted from the end
    hits = b.cast(b.op("Equal", positions, b.unsqueeze(axes, [0])), TensorProto.INT64)  # [rank, len(axes)]
    reduced = b.op("Greater", b.reduce("ReduceSum", hits, [1], keepdims=0), b.const(0, np.int64))
    if not attr(node, "noop_with_empty_axes", 0):  # empty axes reduce every axis
        reduced = b.op("Or", reduced, b.op("Equal", b.op("Size", axes), b.const(0, np.int64)))
    return b.op("Where", reduced, b.const(1, np.int64), shape)


def with_kept_dims(node: onnx.NodeProto, b: GraphBuilder, tensors: list[str]) -> list[str]:
    """Tensors shaped like the node's output, given the reduced axes back (as keepdims=1) so they
    broadcast against its input."""
    if attr(node, "keepdims", 1):
        return tensors
    axes_input = runtime_axes(node, b)
    if axes_input is not None:
        kept = _kept_shape(node, b, axes_input)
        return [b.op("Reshape", tensor, kept) for tensor in tensors]
    axes = reduce_axes(node, b)
    if not axes:  # every axis reduced: a scalar broadcasts as it is; none reduced: nothing to restore
        return tensors
    return [b.unsqueeze(tensor, axes) for tensor in tensors]


def sum_as_node(node: onnx.NodeProto, b: GraphBuilder, tensor: str) -> str:
    """tensor (shaped like the node's input) summed over the node's reduction axes, keepdims=1."""
    axes_input = runtime_axes(node, b)
    if axes_input is not None:
        return b.op("ReduceSum", tensor, axes_input, keepdims=1,
                    noop_with_empty_axes=attr(node, "noop_with_empty_axes", 0))
    axes = reduce_axes(node, b)
    if axes == []:
        return tensor
    if axes is None:
        return b.op("ReduceSum", tensor, keepdims=1)
    return b.reduce("ReduceSum", tensor, axes, keepdims=1)


@rule("ReduceMean", "ReduceSum")
def _reduce_mean(node, grads, needed, b):
    x, y = node.input[0], node.output[0]
    if runtime_axes(node, b) is None and reduce_axes(node, b) == []:
        return [grads[0]]
    (grad,) = with_kept_dims(node, b, [grads[0]])
    spread = b.op("Expand", grad, b.shape(x))
    if node.op_type == "ReduceSum":
        return [spread]
    return [b.op("Div", spread, b.element_count_ratio(x, y, b.dtype(x)))]


@rule("ReduceMax", "ReduceMin")
def _reduce_max(node, grads, needed, b):
    """The gradient goes to the elements equal to the result, split evenly among ties (as torch.amax)."""
    x = node.input[0]
    grad, y = with_kept_dims(node, b, [grads[0], node.output[0]])
    hits = b.cast(b.op("Equal", x, y), b.dtype(x))
    return [b.op("Mul", hits, b.op("Div", grad, sum_as_node(node, b, hits)))]


@rule("ReduceL2")
def _reduce_l2(node, grads, needed, b):
    # d/dx sqrt(sum x^2) = x / y; where y = 0 every x is 0, so dividing by 1 there gives torch's 0.
    x = node.input[0]
    grad, y = with_kept_dims(node, b, [grads[0], node.output[0]])
    safe = b.op("Add", y, b.cast(b.op("Equal", y, b.scalar_like(0.0, y)), b.dtype(y)))
    return [b.op("Mul", x, b.op("Div", grad, safe))]
