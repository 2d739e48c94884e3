"""Helpers shared by rules of several op families."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import OpsetTooLowError, UnsupportedOpError
from ..builder import GraphBuilder


def attr(node: onnx.NodeProto, name: str, default=None):
    """Value of a node attribute, or default."""
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def masked(b: GraphBuilder, condition: str, grad: str) -> str:
    """grad where condition holds, 0 elsewhere.

    A Mul by the cast condition: ONNX Runtime's CPU Where is several times slower than Cast and Mul.
    """
    return b.op("Mul", grad, b.cast(condition, b.dtype(grad)))


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
        raise OpsetTooLowError(f"cannot tell how {operand!r} was broadcast to {result!r}: shapes unknown "
                               "and ReduceSum takes run-time axes only from opset 13", needed=13)
    rank = len(result_shape) if result_shape is not None else b.rank(grad)
    if rank is not None:
        ones, rank_vector = b.const(np.ones(rank, np.int64)), b.const([rank], np.int64)
    else:  # the rank too is known only at run time
        rank_vector = b.op("Shape", b.shape(grad))
        ones = b.op("ConstantOfShape", rank_vector, value=numpy_helper.from_array(np.ones(1, np.int64)))
    padded = b.op("Concat", ones, b.shape(operand), axis=0)
    padded = b.op("Slice", padded, b.op("Sub", b.op("Size", padded), rank_vector),
                  b.const([np.iinfo(np.int64).max], np.int64))
    broadcast = b.op("Not", b.op("Equal", padded, b.shape(grad)))
    axes = b.op("Reshape", b.op("NonZero", broadcast), b.const([-1], np.int64))
    summed = b.op("ReduceSum", grad, axes, keepdims=1, noop_with_empty_axes=1)
    return b.reshape_like(summed, operand)


def swap_last_two(b: GraphBuilder, tensor: str) -> str:
    """tensor with its last two axes exchanged."""
    rank = b.rank(tensor)
    if rank is None:
        raise UnsupportedOpError(f"rank of {tensor!r} is unknown; cannot transpose it")
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return b.op("Transpose", tensor, perm=perm)
