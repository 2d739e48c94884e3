"""Target tensors of any layout exposed as NCHW maps: the activation and gradient outputs' shape."""
from __future__ import annotations

import numpy as np

from .builder import GraphBuilder
from .locate import NHWC, NTC, TO_NCHW, TargetInfo

LAST = np.iinfo(np.int64).max  # a Slice end meaning "to the end of the axis"


def to_nchw(b: GraphBuilder, info: TargetInfo, tensor: str) -> str:
    """tensor (the target, or its gradient, in the target's layout) as an [N, K, h, w] map."""
    if info.layout == NHWC:
        return b.op("Transpose", tensor, perm=TO_NCHW)
    if info.layout == NTC:
        return b.op("Transpose", _tokens_on_grid(b, info, tensor), perm=TO_NCHW)
    return tensor


def nchw_shape(info: TargetInfo) -> list:
    """The [N, K, h, w] shape of the exposed map (None where unknown)."""
    shape = list(info.shape)
    if info.layout == NHWC and len(shape) == 4:
        return [shape[i] for i in TO_NCHW]
    if info.layout == NTC:
        return [shape[0], shape[2], *info.grid]
    return shape


def _tokens_on_grid(b: GraphBuilder, info: TargetInfo, tokens: str) -> str:
    """Patch tokens of tokens [N, T, C] (class and register tokens dropped) as an NHWC map [N, h, w, C].

    The grid comes from the patch-embedding map when its size is dynamic (images of any size), so
    the same graph serves every input size the model accepts.
    """
    height, width = info.grid
    static = isinstance(height, int) and isinstance(width, int)
    grid = b.const([height, width], np.int64) if static else b.op(
        "Gather", b.shape(info.grid_tensor), b.const(list(info.grid_axes), np.int64), axis=0)
    prefix = info.prefix_tokens
    if prefix is None:  # the tokens in front are what the grid leaves over: T - h*w
        count = b.slice(b.shape(tokens), [1], [2], [0])
        area = b.op("Mul", b.slice(grid, [0], [1], [0]), b.slice(grid, [1], [2], [0]))
        patches = b.op("Slice", tokens, b.op("Sub", count, area), b.const([LAST], np.int64),
                       b.const([1], np.int64))
    elif prefix:
        patches = b.slice(tokens, [prefix], [LAST], [1])
    else:
        patches = tokens
    # 0 keeps the batch of the tokens, -1 takes the channels.
    shape = b.const([0, height, width, -1], np.int64) if static else b.op(
        "Concat", b.const([0], np.int64), grid, b.const([-1], np.int64), axis=0)
    return b.op("Reshape", patches, shape)
