"""Rules of shape and indexing ops: reshapes, transposes, slices, pads, joins and splits."""
from __future__ import annotations

import numpy as np

from ...errors import UnsupportedOpError
from .common import attr
from .registry import rule


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
    result = []
    for part, need in zip(node.input, needed):
        stop = b.op("Add", start, b.op("Gather", b.shape(part), axis_index))
        result.append(b.op("Slice", grads[0], start, stop, axis_index) if need else None)
        start = stop
    return result


@rule("Split")
def _split(node, grads, needed, b):
    parts = [grad if grad is not None else b.zeros_like(output) for grad, output in zip(grads, node.output)]
    return [b.op("Concat", *parts, axis=attr(node, "axis", 0))]
