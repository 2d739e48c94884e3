"""Rules of resampling ops: Resize / Upsample, DepthToSpace and SpaceToDepth."""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...errors import UnsupportedOpError
from ..builder import GraphBuilder
from .common import attr
from .registry import rule

Factor = Union[float, int, str]  # a static scale or size, or a 1-element tensor holding it


def _text(node: onnx.NodeProto, name: str, default: str) -> str:
    value = attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else value


def _resize_factors(node: onnx.NodeProto, b: GraphBuilder, rank: int) -> tuple[str, list[Optional[Factor]]]:
    """("scales" or "sizes", the scale or output size of each axis; None for axes the node keeps)."""
    inputs = list(node.input) + [""] * 4
    if node.op_type == "Upsample" and b.opset < 9:
        source, kind = None, "scales"
        value = np.asarray(attr(node, "scales"), np.float32)
    else:
        if node.op_type == "Upsample" or b.opset < 11:
            source, kind = inputs[1], "scales"
        elif inputs[3]:
            source, kind = inputs[3], "sizes"
        else:
            source, kind = inputs[2], "scales"
        value = b.constant_value(source)
    if value is not None and value.size == 0:
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: neither scales nor sizes are given")
    axes = [int(a) % rank for a in attr(node, "axes", range(rank))]
    x, y = node.input[0], node.output[0]
    in_shape, out_shape = b.shapes.get(x) or [None] * rank, b.shapes.get(y) or [None] * rank
    factors: list[Optional[Factor]] = []
    for axis in range(rank):
        if axis not in axes:
            factors.append(None)
            continue
        position = axes.index(axis)
        if value is not None:
            factor = value.reshape(-1)[position].item()
            kept = factor == 1 if kind == "scales" else factor == in_shape[axis]
            factors.append(None if kept else factor)
            continue
        # Computed at run time. Exporters resize spatial axes only (sizes = Concat(Shape(x)[:2], ...)),
        # so the batch and channel axes of a map count as kept unless the shapes say otherwise.
        known = isinstance(in_shape[axis], int) and isinstance(out_shape[axis], int)
        if known:
            kept = in_shape[axis] == out_shape[axis] and (kind == "sizes" or axis < 2)
        else:
            kept = axis < 2 and rank >= 3
        if kept:
            factors.append(None)
        else:
            factors.append(b.op("Slice", source, *(b.const([v], np.int64) for v in (position, position + 1))))
    return kind, factors


def _nearest_block_factor(node: onnx.NodeProto, kind: str, factor: Factor, size: Optional[int]) -> Optional[int]:
    """The integer factor s when this nearest resize copies input i to outputs s*i .. s*i + s - 1, else None."""
    if isinstance(factor, str):
        return None
    if kind == "sizes":
        if size is None or factor % size:
            return None
        factor = factor // size
    if factor != int(factor) or factor < 1:
        return None
    scale = int(factor)
    coordinate = _text(node, "coordinate_transformation_mode", "half_pixel")
    rounding = _text(node, "nearest_mode", "round_prefer_floor")
    outputs = np.arange(4 * scale, dtype=np.float64)
    source = {"half_pixel": (outputs + 0.5) / scale - 0.5, "pytorch_half_pixel": (outputs + 0.5) / scale - 0.5,
              "asymmetric": outputs / scale, "tf_half_pixel_for_nn": (outputs + 0.5) / scale}.get(coordinate)
    rounded = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
               "floor": np.floor, "ceil": np.ceil}.get(rounding)
    if source is None or rounded is None:
        return None
    picked = np.clip(rounded(source), 0, 3)
    return scale if np.array_equal(picked, outputs // scale) else None


def _interpolation(node: onnx.NodeProto, b: GraphBuilder, kind: str, factor: Factor, axis: int, rank: int) -> str:
    """M^T [in, out] of the resize along axis (y = M x along it), made by the node's own op.

    Resizing is separable: along one axis, y = M x. Resizing an identity (unit impulses stacked on
    another axis, every other scale 1) with the node's own op and attributes gives M's columns, exactly
    as the forward pass computes them, for any mode, coordinate transform or scale, static or not.
    """
    x = node.input[0]
    stack = 1 if axis == 0 else 0
    # The identity is made in the graph (a constant when the size is: folded when the session loads),
    # so a large map adds no large initializer to the model.
    count = b.dims(x, [axis])
    dtype = b.dtype(x)
    eye_dtype = dtype if dtype in (TensorProto.FLOAT, TensorProto.DOUBLE) else TensorProto.FLOAT  # EyeLike's types
    zeros = b.op("ConstantOfShape", b.op("Concat", count, count, axis=0),
                 value=helper.make_tensor("zero", eye_dtype, [1], [0]))
    identity = b.op("EyeLike", zeros)
    identity = identity if eye_dtype == dtype else b.cast(identity, dtype)
    shape = [b.const([1], np.int64)] * rank
    shape[stack] = shape[axis] = count
    impulses = b.op("Reshape", identity, b.op("Concat", *shape, axis=0))
    pieces = [b.const([1.0 if kind == "scales" else 1], np.float32 if kind == "scales" else np.int64)] * rank
    if kind == "sizes":
        pieces[stack] = b.dims(x, [axis])
    pieces[axis] = factor if isinstance(factor, str) else b.const(
        [factor], np.float32 if kind == "scales" else np.int64)
    factors = pieces[0] if rank == 1 else b.op("Concat", *pieces, axis=0)
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute
                  if a.name not in ("axes", "keep_aspect_ratio_policy", "scales")}
    if node.op_type == "Upsample" and b.opset < 9:
        scales = [1.0] * rank
        scales[axis] = float(factor)
        response = b.op("Upsample", impulses, scales=scales, **attributes)
    elif node.op_type == "Upsample" or b.opset < 11:
        response = b.op(node.op_type, impulses, factors, **attributes)
    else:
        empty = "" if b.opset >= 13 else b.const(np.zeros(0, np.float32))
        if kind == "scales":
            response = b.op("Resize", impulses, empty, factors, **attributes)
        else:
            response = b.op("Resize", impulses, empty, empty, factors, **attributes)
    unit_axes = [a for a in range(rank) if a not in (stack, axis)]
    matrix = b.squeeze(response, unit_axes) if unit_axes else response
    return matrix if stack < axis else b.op("Transpose", matrix, perm=[1, 0])


def _contract(b: GraphBuilder, grad: str, transposed: str, axis: int, rank: int) -> str:
    """grad with axis mapped through M^T (given as transposed = M^T [in, out])."""
    if axis == rank - 2:
        return b.op("MatMul", transposed, grad)
    matrix = b.op("Transpose", transposed, perm=[1, 0])
    if axis == rank - 1:
        return b.op("MatMul", grad, matrix)
    perm = [a for a in range(rank) if a != axis] + [axis]
    moved = b.op("MatMul", b.op("Transpose", grad, perm=perm), matrix)
    return b.op("Transpose", moved, perm=[int(p) for p in np.argsort(perm)])


@rule("Resize", "Upsample", channels_first=True)
def _resize(node, grads, needed, b):
    # A resize is linear and separable: y = M_H x M_W^T on a map, so dx = M_H^T dy M_W.
    x = node.input[0]
    rank = b.rank(x)
    if rank is None:
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: the rank of {x!r} is unknown")
    coordinate = _text(node, "coordinate_transformation_mode", "half_pixel")
    if coordinate == "tf_crop_and_resize":
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: coordinate_transformation_mode "
                                 "'tf_crop_and_resize' (a crop by roi) is not supported")
    if _text(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedOpError(f"{node.op_type} {node.name!r}: keep_aspect_ratio_policy other than "
                                 "'stretch' is not supported")
    kind, factors = _resize_factors(node, b, rank)
    resized = [axis for axis, factor in enumerate(factors) if factor is not None]
    grad = grads[0]
    if not resized:
        return [grad]
    if (_text(node, "mode", "nearest") == "nearest" and node.op_type == "Resize" and b.opset >= 11
            and min(resized) >= 2):
        in_shape = b.shapes.get(x) or [None] * rank
        kernel = [1 if factors[axis] is None else _nearest_block_factor(
            node, kind, factors[axis], in_shape[axis] if isinstance(in_shape[axis], int) else None)
            for axis in range(2, rank)]
        if None not in kernel:
            # Nearest upsampling by whole factors copies each pixel into an s_h x s_w block: the
            # gradient is the sum over each block, dy viewed as [N, C, h, s_h, w, s_w] (measured on
            # ONNX Runtime CPU: 1.5x faster than an AveragePool times the block size).
            shape, split_axes = [b.const([0, 0], np.int64)], []
            for axis, block in enumerate(kernel, 2):
                shape.append(b.const([-1], np.int64) if axis == 2 else b.dims(x, [axis]))
                if block > 1:
                    split_axes.append(len(shape) + 1)  # the first piece holds two axes
                    shape.append(b.const([block], np.int64))
            blocks = b.op("Reshape", grad, b.op("Concat", *shape, axis=0))
            return [b.reduce("ReduceSum", blocks, split_axes, keepdims=0)]
    for axis in reversed(resized):
        grad = _contract(b, grad, _interpolation(node, b, kind, factors[axis], axis, rank), axis, rank)
    return [grad]


@rule("DepthToSpace", channels_first=True)
def _depth_to_space(node, grads, needed, b):
    # DepthToSpace only moves elements: its gradient moves them back. SpaceToDepth inverts the DCR
    # order; CRD (torch's pixel_shuffle) orders channels as c * s^2 + (i * s + j) instead of
    # (i * s + j) * C + c, a channel transpose away.
    block = attr(node, "blocksize")
    grad = b.op("SpaceToDepth", grads[0], blocksize=block)
    if _text(node, "mode", "DCR") == "CRD":
        x = node.input[0]
        grouped = b.op("Reshape", grad, b.op("Concat", b.const([0, block * block, -1], np.int64), b.dims(x, [2, 3]),
                                             axis=0))
        grad = b.reshape_like(b.op("Transpose", grouped, perm=[0, 2, 1, 3, 4]), x)
    return [grad]


@rule("SpaceToDepth", channels_first=True)
def _space_to_depth(node, grads, needed, b):
    # SpaceToDepth is the inverse of DepthToSpace in DCR order.
    return [b.op("DepthToSpace", grads[0], blocksize=attr(node, "blocksize"))]  # DCR: the default

