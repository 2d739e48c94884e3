"""Rules of normalization ops (per-channel and softmax-style)."""
from __future__ import annotations

import numpy as np

from ...errors import UnsupportedOpError
from .common import attr
from .registry import declare, rule


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


declare("LRN", "InstanceNormalization", channels_first=True)
