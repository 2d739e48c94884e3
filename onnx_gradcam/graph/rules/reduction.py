"""Rules of Reduce* ops."""
from __future__ import annotations

from typing import Optional

import onnx

from ...errors import UnsupportedOpError
from ..builder import GraphBuilder
from .common import attr
from .registry import rule


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


@rule("ReduceMean", "ReduceSum")
def _reduce_mean(node, grads, needed, b):
    x, y = node.input[0], node.output[0]
    axes = reduce_axes(node, b)
    grad = grads[0]
    if axes == []:
        return [grad]
    if not attr(node, "keepdims", 1) and axes is not None:
        grad = b.unsqueeze(grad, axes)
    spread = b.op("Expand", grad, b.shape(x))
    if node.op_type == "ReduceSum":
        return [spread]
    return [b.op("Div", spread, b.element_count_ratio(x, y, b.dtype(x)))]
