"""Rules of shape ops: reshapes, transposes, slices, pads, broadcasts, tiles, joins and splits."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...errors import UnsupportedOpError
from .common import attr, unbroadcast
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


def _mode(node) -> str:
    mode = attr(node, "mode", b"constant")
    return mode.decode() if isinstance(mode, bytes) else mode


@rule("Pad")
def _pad(node, grads, needed, b):
    # Constant padding adds zeros around x (negative pads crop): its gradient pads the other way.
    if _mode(node) != "constant":
        raise UnsupportedOpError(f"Pad {node.name!r}: only constant padding is supported, not "
                                 f"{_mode(node)!r} (its gradient folds the border back onto x)")
    grad = grads[0]
    pads = attr(node, "pads") if b.opset < 11 else b.constant_value(node.input[1])
    axes = node.input[3] if b.opset >= 18 and len(node.input) > 3 and node.input[3] else ""
    if pads is not None:
        pads = [int(p) for p in np.asarray(pads).ravel()]
    if pads is not None and not axes and min(pads, default=0) >= 0:
        rank = len(pads) // 2  # a Slice of the padded gradient: the common case, no run-time shapes
        stops = [-p if p > 0 else np.iinfo(np.int64).max for p in pads[rank:]]
        grad_x = b.slice(grad, pads[:rank], stops, list(range(rank)))
    elif pads is not None:
        grad_x = b.pad(grad, [-p for p in pads], axes)
    else:
        grad_x = b.pad(grad, b.op("Neg", node.input[1]), axes)
    result = [grad_x, None, None, None][:len(node.input)]
    if len(node.input) > 2 and node.input[2] and needed[2]:
        # The fill value lands on every padded element: the sum of the gradient outside x.
        result[2] = b.op("Sub", b.op("ReduceSum", grad, keepdims=0), b.op("ReduceSum", grad_x, keepdims=0))
    return result


def _static_slice_pads(node, b) -> list[int] | None:
    """Pads that undo a Slice with constant starts/ends/axes and step 1 over axes of known size, else None."""
    x = node.input[0]
    shape = b.shapes.get(x)
    inputs = list(node.input) + [""] * (5 - len(node.input))
    if shape is None or any(name and b.constant_value(name) is None for name in inputs[1:]):
        return None
    if b.opset < 10:
        starts, ends, axes, steps = attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    else:
        starts, ends, axes, steps = (b.constant_value(name) if name else None for name in inputs[1:])
    if steps is not None and (np.asarray(steps) != 1).any():
        return None
    axes = list(range(len(starts))) if axes is None else [int(a) % len(shape) for a in axes]
    pads = [0] * (2 * len(shape))
    for axis, start, stop in zip(axes, starts, ends):
        size = shape[axis]
        if not isinstance(size, int):
            if int(start) == 0 and int(stop) >= 2**31 - 1:
                continue  # the whole axis: nothing to pad back
            return None
        start, stop, _ = slice(int(start), int(stop)).indices(size)
        pads[axis], pads[axis + len(shape)] = start, size - max(stop, start)
    return pads


def _run_time_slice_pads(node, b) -> str | None:
    """Pads (a tensor computed at run time) that undo a Slice with step 1 on constant axes, else None.

    Slice's rules for step 1: a negative bound counts from the end, then both are clamped to
    [0, size] and an end before the start leaves the slice empty.
    """
    x = node.input[0]
    rank = b.rank(x)
    inputs = list(node.input) + [""] * (5 - len(node.input))
    axes = b.constant_value(inputs[3]) if inputs[3] else None
    steps = b.constant_value(inputs[4]) if inputs[4] else None
    count = (b.static_dims(inputs[1]) or [None])[0]
    if rank is None or b.opset < 10 or (inputs[3] and axes is None) or (inputs[4] and steps is None) or (
            steps is not None and (np.asarray(steps) != 1).any()) or (axes is None and count is None):
        return None
    axes = list(range(count)) if axes is None else [int(a) % rank for a in np.asarray(axes).ravel()]
    sizes = b.dims(x, axes)

    def bound(value: str) -> str:
        value = value if b.dtypes.get(value) == TensorProto.INT64 else b.cast(value, TensorProto.INT64)
        value = b.at_most(value, sizes)  # first, so that adding the size cannot overflow
        value = b.op("Where", b.op("Less", value, b.const(0, np.int64)), b.op("Add", value, sizes), value)
        return b.at_least(value, 0)

    start, stop = bound(inputs[1]), bound(inputs[2])
    stop = b.op("Where", b.op("Less", stop, start), start, stop)
    positions = b.const(axes + [axis + rank for axis in axes], np.int64)
    amounts = b.op("Concat", start, b.op("Sub", sizes, stop), axis=0)
    return b.op("ScatterElements", b.const(np.zeros(2 * rank, np.int64)), positions, amounts, axis=0)


@rule("Slice")
def _slice(node, grads, needed, b):
    x = node.input[0]
    pads = _static_slice_pads(node, b)
    if pads is None:
        pads = _run_time_slice_pads(node, b)
    if pads is not None:
        return [b.pad(grads[0], pads)]
    if b.opset < 10:
        raise UnsupportedOpError(f"Slice {node.name!r}: slicing axes of unknown size needs opset >= 10")
    # Any other slice (steps other than 1, or axes computed at run time):
    # slicing a running index of x with the node's own inputs gives the position in x of every
    # element of the slice, by Slice's own rules for negative and out-of-range values; the gradient
    # is scattered there. Positions are distinct, so no reduction is needed.
    positions = b.op("Reshape", b.op("Range", b.const(0, np.int64), b.op("Size", x), b.const(1, np.int64)),
                     b.shape(x))
    positions = b.op("Slice", positions, *node.input[1:])
    flat = b.op("Reshape", b.zeros_like(x), b.const([-1], np.int64))
    scattered = b.op("ScatterElements", flat, b.op("Reshape", positions, b.const([-1], np.int64)),
                     b.op("Reshape", grads[0], b.const([-1], np.int64)), axis=0)
    return [b.reshape_like(scattered, x)]


@rule("Expand")
def _expand(node, grads, needed, b):
    # Expand broadcasts x to the output shape: the gradient sums over the broadcast axes.
    return [unbroadcast(b, grads[0], node.input[0], node.output[0])]


@rule("Tile")
def _tile(node, grads, needed, b):
    # y on axis i is r_i copies of x: viewed as [r_0, d_0, r_1, d_1, ...], the gradient sums the copies.
    x, repeats = node.input[:2]
    rank = b.rank(x)
    if rank is None:
        raise UnsupportedOpError(f"Tile {node.name!r}: the rank of {x!r} is unknown")
    repeat_values = b.constant_value(repeats)
    dims = b.shapes.get(x) or [None] * rank
    if repeat_values is not None and sum(not isinstance(d, int) for d in dims) <= 1:
        split = []
        for repeat, dim in zip(np.asarray(repeat_values).ravel(), dims):
            split += [int(repeat), dim if isinstance(dim, int) else -1]
        split = b.const(split, np.int64)
    else:
        split = b.op("Concat", b.unsqueeze(repeats, [1]), b.unsqueeze(b.shape(x), [1]), axis=1)
        split = b.op("Reshape", split, b.const([-1], np.int64))
    copies = b.op("Reshape", grads[0], split)
    return [b.reduce("ReduceSum", copies, list(range(0, 2 * rank, 2)), keepdims=0)]


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
