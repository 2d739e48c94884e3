"""Finding the score tensor and the target activation in a graph, and the layout of each tensor.

A target is exposed as an NCHW map [N, K, h, w] whatever its layout in the graph, so the layout must
be known, never guessed from sizes: a [N, 7, 7, 768] tensor read as NCHW has 7 channels. Layouts are
propagated from facts of the graph: Conv and pooling outputs are NCHW (the ONNX spec says so), a
Transpose with perm [0, 2, 3, 1] of an NCHW tensor is NHWC, ops that keep every axis's meaning
(elementwise ops, LayerNormalization, Pad, Slice...) keep the layout, and a patch-embedding Conv
flattened and transposed to [N, T, C] gives tokens ("NTC") on a known grid.
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, replace
from typing import ClassVar, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import GradCamError, ScoreNotFoundError, TargetNotFoundError
from .builder import Dim, GraphBuilder
from .rules.registry import is_differentiable, keeps_layout, makes_channels_first

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]

NCHW, NHWC, NTC = "NCHW", "NHWC", "NTC"
UNKNOWN = "?"  # a 4-D tensor whose axes the graph does not establish
LAYOUTS = (NCHW, NHWC, NTC)
HINTS = (NCHW, NHWC)  # layouts a caller may state for a 4-D tensor the graph leaves unknown
# Layouts of intermediate tensors, never targets: an NCHW map with h and w flattened into one axis
# ([N, C, h*w], a patch embedding before its transpose), and a channels-first map whose channel axis
# is split in two or more ([N, g, C/g, H, W], ShuffleNet's channel shuffle).
_FLAT = "NC(HW)"
_SPLIT_CHANNELS = "N(C)HW"

MIN_CHANNELS = 8  # fewer channels than this is an image-like tensor (RGB, a mask), not a feature map
MAX_ASPECT_CHANGE = 2.0  # how far a map's h/w may stray from the input's H/W and still follow it

# Ops that keep every axis's meaning (same rank; elementwise, or normalizing along axes), beyond the
# layout-preserving ops the rule registry declares. Kept here so a layout is known even for ops whose
# differentiation rule lives elsewhere or does not exist (the target only needs its own layout).
_SAME_AXES = frozenset({
    "Identity", "Dropout", "Cast", "Add", "Sub", "Mul", "Div", "Neg", "Sum", "Max", "Min", "Mean", "Where",
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Clip", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Pow", "Sqrt", "Exp", "Log", "Abs",
    "Reciprocal", "LayerNormalization", "SimplifiedLayerNormalization"})
# Ops that keep the axes of a map, resizing or padding h and w: on tokens they would add or drop tokens.
_MAP_AXES = frozenset({"Pad", "Resize", "Upsample"})
# Ops whose map output lies on the grid of their map input, beyond elementwise ops (GraphIndex.grid_reach);
# the _STRIDED ones only when all their strides are 1.
_KEEPS_GRID = frozenset({"BatchNormalization", "InstanceNormalization", "GroupNormalization", "LRN", "Pad",
                         "Transpose", "MatMul"})
_STRIDED = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"})
# Ops through which a tensor's values reach the output one by one: elementwise ops (not the normalizations,
# which mix channels) and ops that move values (a readout, see GraphIndex.readouts).
_READS = (_SAME_AXES - {"LayerNormalization", "SimplifiedLayerNormalization"}) | frozenset({
    "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Expand",
    "Tile", "Pad", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth"})


@dataclass(frozen=True)
class TokenGrid:
    """Where the patch tokens of a token tensor come from: the map they were flattened from."""

    source: str  # the 4-D map (a patch-embedding Conv output); its Shape gives the grid at run time
    axes: tuple[int, int]  # the source's h and w axes
    prefix: Optional[int]  # class / register / distillation tokens before the patch tokens; None: T - h*w


@dataclass(frozen=True)
class TargetInfo:
    """A candidate target tensor: name, shape, producing op, layout, grid, and whether auto picks it.

    layout: "NCHW", "NHWC", "NTC" (tokens [N, T, C] on a patch grid) or "?" (not established by the
    graph). grid: the (h, w) of the exposed map. For tokens, prefix_tokens class/register tokens come
    before the h*w patch tokens (None: T - h*w, computed at run time) and grid_tensor's Shape, axes
    grid_axes, gives the grid at run time. auto: target="auto" picks this tensor; note: why auto
    never would (empty for a usable map that is not the deepest).
    """

    name: str
    shape: tuple[Dim, ...]
    op_type: str
    node: str
    layout: str
    grid: tuple[Dim, Dim] = (None, None)
    prefix_tokens: Optional[int] = 0
    grid_tensor: Optional[str] = None
    grid_axes: Optional[tuple[int, int]] = None
    auto: bool = False
    note: str = ""

    HEADER: ClassVar[str] = f"{'tensor':<48} {'op':<20} {'shape':<20} {'layout':<6} {'grid':<9} auto"

    @property
    def channels(self) -> Dim:
        """K of the exposed [N, K, h, w] map (None for an unknown layout)."""
        axis = {NCHW: 1, NHWC: 3, NTC: 2}.get(self.layout)
        return None if axis is None else self.shape[axis]

    def __str__(self) -> str:
        dims = "[" + "x".join(_dim(d) for d in self.shape) + "]"
        grid = "-" if self.layout == UNKNOWN else f"{_dim(self.grid[0])}x{_dim(self.grid[1])}"
        if self.layout == NTC and self.prefix_tokens != 0:
            grid += f"+{_dim(self.prefix_tokens)}"
        pick = "yes" if self.auto else f"no: {self.note}" if self.note else ""
        return f"{self.name:<48} {self.op_type:<20} {dims:<20} {self.layout:<6} {grid:<9} {pick}".rstrip()


def _dim(value: Dim) -> str:
    return "?" if value is None else str(value)


def _same(a: Dim, b: Dim) -> bool:
    """Two dims known to be equal: the same number, or the same symbolic name."""
    return a is not None and a == b


def _product(dims) -> Optional[int]:
    return int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None


class GraphIndex:
    """Producers, consumers, shapes and layouts of one (shape-inferred) graph."""

    def __init__(self, model: onnx.ModelProto, builder: GraphBuilder) -> None:
        self.model = model
        self.builder = builder
        self.nodes = list(model.graph.node)
        self.producer = {out: node for node in self.nodes for out in node.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name for t in model.graph.initializer}
        self.tokens: dict[str, TokenGrid] = {}  # token grids of NTC (and flattened NCHW) tensors
        self.layouts = self._infer_layouts()

    def is_float(self, tensor: str) -> bool:
        return self.builder.dtypes.get(tensor, TensorProto.FLOAT) in FLOAT_TYPES

    def reaching(self, tensor: str) -> set[str]:
        """Tensors whose values depend on tensor through differentiable edges."""
        reached = {tensor}
        for node in self.nodes:
            if not is_differentiable(node.op_type):
                continue
            if any(name in reached for name in node.input):
                reached.update(out for out in node.output if out and self.is_float(out))
        return reached

    def ancestors(self, tensor: str) -> set[str]:
        """Tensors that tensor depends on (tensor included)."""
        seen, stack = {tensor}, [tensor]
        while stack:
            node = self.producer.get(stack.pop())
            if node is None:
                continue
            for name in node.input:
                if name and name not in seen:
                    seen.add(name)
                    stack.append(name)
        return seen

    def differentiable_ancestors(self, tensor: str) -> set[str]:
        """Float tensors that tensor depends on through differentiable ops (tensor included)."""
        seen, stack = {tensor}, [tensor]
        while stack:
            node = self.producer.get(stack.pop())
            if node is None or not is_differentiable(node.op_type):
                continue
            for name in node.input:
                if name and name not in seen and self.is_float(name):
                    seen.add(name)
                    stack.append(name)
        return seen

    def immediate_dominators(self, source: Optional[str]) -> dict[str, str]:
        """The immediate dominator of each float tensor computed from source through differentiable ops.

        t dominates u when every such path from source to u passes t; source is its own. The nodes are
        in topological order (ONNX requires it), so one pass over them finds all (the intersection of
        Cooper, Harvey and Kennedy's algorithm, on a DAG).
        """
        if source is None:
            return {}
        dominator, depth = {source: source}, {source: 0}

        def common(a: str, b: str) -> str:
            while a != b:
                if depth[a] >= depth[b]:
                    a = dominator[a]
                else:
                    b = dominator[b]
            return a

        for node in self.nodes:
            if not is_differentiable(node.op_type):
                continue
            inputs = [name for name in node.input if name in dominator]
            if not inputs:
                continue
            nearest = functools.reduce(common, inputs)
            for out in node.output:
                if out and self.is_float(out) and out not in dominator:
                    dominator[out], depth[out] = nearest, depth[nearest] + 1
        return dominator

    def readouts(self, score_tensor: str) -> set[str]:
        """Tensors the score reads value by value: reached from them along a path of elementwise ops and
        ops that move values (reshape, transpose, concat, split, slice, gather, pad, resize) only."""
        read = {score_tensor}
        for node in reversed(self.nodes):
            if node.op_type in _READS and any(out in read for out in node.output):
                read.update(name for name in node.input if name and self.is_float(name))
        return read

    def grid_reach(self, tensor: str) -> set[str]:
        """The maps computed from the map tensor on its grid (tensor included).

        They are reached through elementwise ops, normalizations, stride-1 convolutions and pools, Pad,
        concat and split along channels, a Linear over channels-last maps and a layout Transpose;
        strided ops and resizing leave the grid.
        """
        seen, stack = {tensor}, [tensor]
        while stack:
            name = stack.pop()
            for node in self.consumers.get(name, []):
                if not self._keeps_grid(node, name):
                    continue
                for out in node.output:
                    if out not in seen and self.layouts.get(out) in (NCHW, NHWC):
                        seen.add(out)
                        stack.append(out)
        return seen if self.layouts.get(tensor) in (NCHW, NHWC) else set()

    def _keeps_grid(self, node: onnx.NodeProto, tensor: str) -> bool:
        """node's map outputs lie on the grid of its map input tensor."""
        op = node.op_type
        if op in _STRIDED:
            return all(stride == 1 for stride in _attribute(node, "strides", []))
        if op in ("Concat", "Split"):
            rank = self.builder.rank(tensor) or 4
            return _attribute(node, "axis", 0) % rank == (1 if self.layouts[tensor] == NCHW else 3)
        return op in _KEEPS_GRID or op in _SAME_AXES or keeps_layout(op)

    def image_size(self) -> tuple[Dim, Dim]:
        """(H, W) of the image input (None where unknown)."""
        for graph_input in self.model.graph.input:
            if graph_input.name in self.initializers:
                continue
            shape = self.builder.shapes.get(graph_input.name)
            layout = self.layouts.get(graph_input.name)
            if shape and len(shape) == 4 and layout in (NCHW, NHWC):
                return _grid(layout, shape)
            break
        return None, None

    def grid(self, tensor: str) -> tuple[Dim, Dim]:
        """(h, w) of a map or token tensor with a known layout (None where unknown)."""
        if tensor in self.tokens:
            tokens = self.tokens[tensor]
            source = self.builder.shapes.get(tokens.source) or [None] * 4
            return source[tokens.axes[0]], source[tokens.axes[1]]
        layout, shape = self.layouts.get(tensor), self.builder.shapes.get(tensor)
        if layout in (NCHW, NHWC) and shape:
            return _grid(layout, shape)
        return None, None

    def _infer_layouts(self) -> dict[str, str]:
        """Layout of each tensor the graph establishes, in graph order (see the module docstring)."""
        layouts: dict[str, str] = {}
        for graph_input in self.model.graph.input:
            shape = self.builder.shapes.get(graph_input.name)
            if shape and len(shape) == 4 and graph_input.name not in self.initializers:
                # An image input: the one place sizes decide (1, 3 or 4 colour channels last).
                layouts[graph_input.name] = NHWC if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) else NCHW
        for node in self.nodes:
            for out, layout, tokens in self._node_layouts(node, layouts):
                layouts[out] = layout
                if tokens is not None:
                    self.tokens[out] = tokens
        return layouts

    def _node_layouts(self, node: onnx.NodeProto, layouts: dict[str, str]):
        """(output, layout, token grid or None) for each output of node whose layout follows from its inputs."""
        op = node.op_type
        first = next((name for name in node.input if name in layouts), None)
        source = layouts.get(first) if first else None
        outputs = [out for out in node.output if out]
        if source is not None and (op in _SAME_AXES or keeps_layout(op)) and op not in _MAP_AXES:
            return [(out, source, self.tokens.get(first)) for out in outputs if self._rank_fits(out, source)]
        if source in (NCHW, NHWC) and op in _MAP_AXES:
            return [(out, source, None) for out in outputs if self._rank_fits(out, source)]
        if makes_channels_first(op):
            return [(out, NCHW, None) for out in outputs if self.builder.rank(out) == 4]
        if op == "Concat":  # class tokens come first: the data may be any input
            data, source = (first, source) if first else (None, None)
        elif node.input and node.input[0] in layouts:
            data, source = node.input[0], layouts[node.input[0]]
        else:
            return []
        handler = {"Transpose": self._transpose, "Reshape": self._reshape, "MatMul": self._matmul,
                   "Concat": self._concat, "Slice": self._slice, "Split": self._split}.get(op)
        result = None if handler is None or data is None else handler(node, data, source, layouts)
        if result is None:
            return []
        if op == "Split":
            return result
        layout, tokens = result
        return [(node.output[0], layout, tokens)] if self._rank_fits(node.output[0], layout) else []

    def _rank_fits(self, out: str, layout: str) -> bool:
        rank = self.builder.rank(out)
        if layout == _SPLIT_CHANNELS:
            return rank is not None and rank >= 4
        return rank == {NCHW: 4, NHWC: 4, NTC: 3, _FLAT: 3}.get(layout)

    def _transpose(self, node, data, source, layouts):
        perm = tuple(_perm(node))
        if (source, perm) == (NCHW, tuple(TO_NHWC)):
            return NHWC, None
        if (source, perm) == (NHWC, tuple(TO_NCHW)):
            return NCHW, None
        if (source, perm) == (_FLAT, (0, 2, 1)):
            return NTC, self.tokens[data]
        if (source, perm) == (NTC, (0, 2, 1)):
            return _FLAT, self.tokens[data]
        rank = len(perm)
        if source == _SPLIT_CHANNELS and rank >= 4 and perm[0] == 0 and perm[-2:] == (rank - 2, rank - 1):
            return _SPLIT_CHANNELS, None  # channels shuffled among themselves; h and w stay last
        return None

    def _reshape(self, node, data, source, layouts):
        before, after = self.builder.shapes.get(data), self.builder.shapes.get(node.output[0])
        if not before or not after:
            return None
        batch_kept = after[0] is None or before[0] is None or after[0] == before[0] or after[0] == -1
        if not batch_kept:
            return None
        if source == NCHW and len(after) == 3 and _same(after[1], before[1]):
            if _flattens(after[2], before[2:4]):
                return _FLAT, TokenGrid(data, (2, 3), 0)  # [N, C, h*w]: a patch embedding flattened
        if source == NHWC and len(after) == 3 and _same(after[2], before[3]):
            if _flattens(after[1], before[1:3]):
                return NTC, TokenGrid(data, (1, 2), 0)
        if source in (NCHW, _SPLIT_CHANNELS) and len(after) >= 4 and _same(after[0], before[0]) \
                and _same(after[-2], before[-2]) and _same(after[-1], before[-1]):
            # Batch, h and w kept: the axes between hold the channels, split or merged (element count).
            if _flattens(_product(after[1:-2]), before[1:-2]):
                return (NCHW, None) if len(after) == 4 else (_SPLIT_CHANNELS, None)
        tokens = self.tokens.get(data)
        if source in (NTC, _FLAT) and tokens is not None and tokens.prefix == 0 and len(after) == 4:
            grid = self.grid(data)
            channel_axis, grid_axes, layout = (2, (1, 2), NHWC) if source == NTC else (1, (2, 3), NCHW)
            if (_same(after[3 if layout == NHWC else 1], before[channel_axis])
                    and _same(after[grid_axes[0]], grid[0]) and _same(after[grid_axes[1]], grid[1])):
                return layout, None  # patch tokens folded back onto their grid
        return None

    def _matmul(self, node, data, source, layouts):
        # x @ W with a 2-D weight mixes the last axis only: channels for channels-last layouts (a Linear
        # in a ConvNeXt or Swin block, a ViT MLP), so the other axes keep their meaning.
        if source in (NHWC, NTC) and self.builder.rank(node.input[1]) == 2:
            return source, self.tokens.get(data)
        return None

    def _concat(self, node, data, source, layouts):
        rank = self.builder.rank(node.output[0])
        axis = _attribute(node, "axis", 0)
        if rank is None:
            return None
        axis %= rank
        tagged = [layouts.get(name) for name in node.input]
        if source in (NCHW, NHWC) and all(layout in (None, source) for layout in tagged):
            return source, None  # the other axes are the map's, whatever is joined along one of them
        if source != NTC and NTC not in tagged:
            return None
        if axis == 2 and all(layout == NTC for layout in tagged):
            grids = {self.tokens[name] for name in node.input}
            return (NTC, grids.pop()) if len(grids) == 1 else None
        patches = node.input[-1]
        if axis != 1 or tagged[-1] != NTC or any(layout is not None for layout in tagged[:-1]):
            return None  # tokens after the patch tokens, or two token streams: no known grid
        tokens = self.tokens[patches]
        counts = [(self.builder.shapes.get(name) or [None, None])[1] for name in node.input[:-1]]
        prefix = None if tokens.prefix is None or not all(isinstance(c, int) for c in counts) \
            else tokens.prefix + sum(counts)
        return NTC, TokenGrid(tokens.source, tokens.axes, prefix)

    def _slice(self, node, data, source, layouts):
        if source in (NCHW, NHWC, _SPLIT_CHANNELS):
            return source, None
        if source != NTC:
            return None
        tokens = self.tokens[data]
        starts, ends, axes, steps = _slice_arguments(node, self.builder)
        if starts is None:
            return None
        rank = 3
        axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
        steps = [1] * len(axes) if steps is None else [int(s) for s in steps]
        if 0 in axes:
            return None
        if 1 not in axes:
            return NTC, tokens  # a slice of the channels
        i = axes.index(1)
        count = (self.builder.shapes.get(data) or [None, None])[1]
        whole = ends[i] >= 2**31 - 1 or (isinstance(count, int) and ends[i] >= count)
        if tokens.prefix is not None and steps[i] == 1 and starts[i] == tokens.prefix and whole:
            return NTC, TokenGrid(tokens.source, tokens.axes, 0)  # the patch tokens without the class tokens
        return None

    def _split(self, node, data, source, layouts):
        rank = self.builder.rank(data)
        if rank is None:
            return None
        axis = _attribute(node, "axis", 0) % rank
        if source in (NCHW, NHWC) or (source == NTC and axis == 2):
            return [(out, source, self.tokens.get(data)) for out in node.output
                    if out and self.builder.rank(out) == rank]
        return None

    def spatial_reach(self, score_paths: set[str]) -> set[str]:
        """Maps and token tensors whose spatial positions (not only class tokens) reach the score.

        A ViT classifies from its class token: after the last attention block no patch token reaches
        the score, so their gradient is zero and the map blank; a ViT with no token mixing at all has
        no such map anywhere, its patch embedding included. Walking forward from a tensor through ops
        that keep its layout, a path ends either at an op that picks class tokens only (the head's
        Gather of token 0), or at one that leaves the layout (pools, mixes or flattens): only the
        latter carries spatial positions on.
        """
        reached: set[str] = set()
        for node in reversed(self.nodes):
            for out in node.output:
                if out not in self.layouts or out not in score_paths:
                    continue
                if not any(o in score_paths for consumer in self.consumers.get(out, []) for o in consumer.output):
                    reached.add(out)  # the score itself is a map (a segmenter's logits): its positions are scored
                    continue
                for consumer in self.consumers.get(out, []):
                    follow = [o for o in consumer.output if o in score_paths]
                    if not follow or (self.layouts.get(out) == NTC and self._selects_prefix_only(consumer, out)):
                        continue
                    if any(o not in self.layouts or o in reached for o in follow):
                        reached.add(out)
                        break
        return reached

    def projections(self, score_paths: set[str]) -> set[str]:
        """Token tensors made by a Linear (MatMul with a 2-D weight, then its bias) that only feed token mixing.

        Attention projects the tokens to queries, keys and values first (one fused qkv Linear, or
        three); those projections belong to the mixing, and the feature map is the tokens they are
        projected from (the last block's norm1, as pytorch-grad-cam's ViT recipe targets).
        """
        linear: set[str] = set()
        for node in self.nodes:
            out = node.output[0] if node.output else ""
            if self.layouts.get(out) != NTC:
                continue
            if node.op_type == "MatMul" and self.builder.rank(node.input[1]) == 2:
                linear.add(out)
            elif node.op_type in ("Add", "Identity", "Cast") and any(name in linear for name in node.input) \
                    and all(name in linear or name not in self.layouts for name in node.input):
                linear.add(out)  # the Linear's bias (a residual Add joins two token tensors: not a projection)
        projected: set[str] = set()
        for node in reversed(self.nodes):
            out = node.output[0] if node.output else ""
            if out not in linear or out not in score_paths:
                continue
            follows = [o for consumer in self.consumers.get(out, []) for o in consumer.output if o in score_paths]
            if follows and all(self.layouts.get(o) != NTC or o in projected for o in follows):
                projected.add(out)
        return projected

    def _selects_prefix_only(self, node: onnx.NodeProto, tokens: str) -> bool:
        """node takes only class/register tokens (those before the patch tokens) from tokens."""
        if node.input[0] != tokens:
            return False
        prefix = self.tokens[tokens].prefix
        limit = 1 if prefix is None else prefix  # an unknown prefix still holds the class token
        if node.op_type == "Gather" and _attribute(node, "axis", 0) % 3 == 1:
            indices = self.builder.constant_value(node.input[1])
            return indices is not None and indices.size > 0 and bool(((indices >= 0) & (indices < limit)).all())
        if node.op_type == "Slice":
            starts, ends, axes, steps = _slice_arguments(node, self.builder)
            if starts is None:
                return False
            axes = list(range(len(starts))) if axes is None else [int(a) % 3 for a in axes]
            if 1 in axes:
                i = axes.index(1)
                step = 1 if steps is None else int(steps[i])
                return step == 1 and 0 <= starts[i] and ends[i] <= limit
        return False


def _grid(layout: str, shape) -> tuple[Dim, Dim]:
    return (shape[1], shape[2]) if layout == NHWC else (shape[2], shape[3])


def _flattens(merged: Dim, dims) -> bool:
    """merged can be the product of dims: equal when all are known, not contradicted otherwise."""
    total = _product(dims)
    return not (isinstance(merged, int) and total is not None and merged != total)


def _perm(node: onnx.NodeProto):
    for attribute in node.attribute:
        if attribute.name == "perm":
            return attribute.ints
    return ()


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _slice_arguments(node: onnx.NodeProto, builder: GraphBuilder):
    """(starts, ends, axes, steps) of a Slice as int lists (axes, steps None when absent); all None when computed."""
    if builder.opset < 10:
        starts, ends, axes = (_attribute(node, name, None) for name in ("starts", "ends", "axes"))
        if starts is None:
            return None, None, None, None
        return list(starts), list(ends), None if axes is None else list(axes), None
    inputs = list(node.input[1:5])
    inputs += [""] * (4 - len(inputs))
    values = [builder.constant_value(name) if name else None for name in inputs]
    if any(name and value is None for name, value in zip(inputs, values)):
        return None, None, None, None
    return tuple(None if value is None else [int(v) for v in np.asarray(value).ravel()] for value in values)


def find_score(index: GraphIndex, score: str = "auto") -> tuple[str, str]:
    """Return (score tensor, reported output): the pre-softmax logits unless told otherwise."""
    outputs = [o.name for o in index.model.graph.output]
    # A tensor of the graph is taken by its name, even one named like a keyword (an output called "logits").
    if score not in ("auto", "logits", "probability") or score in index.producer:
        if score not in index.producer:
            raise ScoreNotFoundError(f"score tensor {score!r} not found; graph outputs are {outputs}")
        return score, score
    for name in outputs:
        shape = index.builder.shapes.get(name)
        if shape is not None and len(shape) == 2 and index.is_float(name):
            tensor, node = name, index.producer.get(name)
            while score != "probability" and node is not None and node.op_type in ("Softmax", "LogSoftmax", "Identity"):
                tensor, node = node.input[0], index.producer.get(node.input[0])
            return tensor, name
    raise ScoreNotFoundError(f"no 2-D float [batch, classes] output found among {outputs} "
                             "(with shapes from shape inference); pass score=TENSOR_NAME")


def list_candidates(index: GraphIndex, score_tensor: str) -> list[TargetInfo]:
    """Tensors that influence the score and could be targets, in graph order, with the one auto picks marked.

    These are the 4-D float tensors the graph computes (layout "?" where the graph does not establish
    it) and the token tensors [N, T, C] on a patch grid.
    """
    influencing = index.ancestors(score_tensor)
    result = []
    for node in index.nodes:
        for out in node.output:
            shape = index.builder.shapes.get(out)
            if (out not in influencing or shape is None or not index.is_float(out) or out in index.initializers
                    or node.op_type in ("Constant", "Shape")):
                continue
            layout = index.layouts.get(out)
            if len(shape) == 4:
                layout = layout if layout in (NCHW, NHWC) else UNKNOWN
            elif len(shape) != 3 or layout != NTC:
                continue
            result.append(_describe(index, out, tuple(shape), node, layout))
    return _mark_auto(index, score_tensor, result)


def _describe(index: GraphIndex, name: str, shape: tuple, node: onnx.NodeProto, layout: str) -> TargetInfo:
    if layout == NTC:
        tokens = index.tokens[name]
        return TargetInfo(name, shape, node.op_type, node.name, layout, index.grid(name), tokens.prefix,
                          tokens.source, tokens.axes)
    grid = _grid(layout, shape) if layout in (NCHW, NHWC) else (None, None)
    return TargetInfo(name, shape, node.op_type, node.name, layout, grid)


def branch_targets(index: GraphIndex, score_tensor: str) -> list[TargetInfo]:
    """The last map each scale of the score shares, in graph order; a plain chain's deepest map alone.

    The branch ends come first: the usable maps that reach the score through no other usable candidate
    (of tokens, only those that reach none at all: a residual stream reaches the score past the last
    attention through its class token alone). One end is a plain chain's, and it is the target. Several
    are the branches of a detector (box and class, on each scale) or of a segmenter, and then:
    - a map the score reads value by value (through elementwise ops and moves: reshape, concat, slice,
      resize...), such as a branch's last conv of class logits, is no end: its Grad-CAM is the class's
      own logit map, negative where the class is unlikely and so blank after ReLU;
    - each end gives way to the map its scale's branches fork from: the deepest usable map that
      dominates it and another end (every path from the image to either passes there) and reaches both
      on its own grid (see GraphIndex.grid_reach). An end with no such map stays itself.
    """
    usable = [c for c in list_candidates(index, score_tensor) if c.auto or not c.note]
    ends = _branch_ends(index, score_tensor, usable)
    if len(ends) < 2:
        return ends
    readouts = index.readouts(score_tensor)
    usable = [c for c in usable if c.name not in readouts] or usable
    ends = [c.name for c in _branch_ends(index, score_tensor, usable)]
    dominators = index.immediate_dominators(_image_input(index))
    usable_names = {c.name for c in usable}
    grids: dict[str, set[str]] = {}
    picked = {_fork(index, end, ends, dominators, usable_names, grids) for end in ends}
    return [c for c in usable if c.name in picked]


def _branch_ends(index: GraphIndex, score_tensor: str, usable: list[TargetInfo]) -> list[TargetInfo]:
    """The usable candidates that reach the score through no other usable candidate (see branch_targets)."""
    names = {c.name for c in usable}
    reached = {c.name: index.reaching(c.name) for c in usable}
    score_paths = index.differentiable_ancestors(score_tensor)
    unblocked = {score_tensor}  # tensors that reach the score through no usable candidate after them
    for node in reversed(index.nodes):
        if is_differentiable(node.op_type) and any(
                out in unblocked and out not in names and out in score_paths for out in node.output):
            unblocked.update(name for name in node.input if name in score_paths)
    return [c for c in usable
            if not any(o.name != c.name and o.name in reached[c.name] for o in usable)
            or (c.layout in (NCHW, NHWC) and c.name in unblocked)]


def _fork(index: GraphIndex, end: str, ends: list[str], dominators: dict[str, str], usable: set[str],
          grids: dict[str, set[str]]) -> str:
    """The deepest usable map that dominates end and another end and reaches both on its grid; else end."""
    others = [other for other in ends if other != end]
    tensor = end
    while tensor in dominators:
        if tensor in usable:
            shared = [other for other in others if _dominates(dominators, tensor, other)]
            if shared:
                if tensor not in grids:
                    grids[tensor] = index.grid_reach(tensor)
                if end in grids[tensor] and any(other in grids[tensor] for other in shared):
                    return tensor
        if dominators[tensor] == tensor:
            break
        tensor = dominators[tensor]
    return end


def _dominates(dominators: dict[str, str], dominator: str, tensor: str) -> bool:
    """Every path from the root of dominators to tensor passes dominator (tensor dominates itself)."""
    if tensor not in dominators:
        return False
    while tensor != dominator:
        if dominators[tensor] == tensor:
            return False
        tensor = dominators[tensor]
    return True


def _image_input(index: GraphIndex) -> Optional[str]:
    """The image input: the graph's first input that is not an initializer."""
    return next((i.name for i in index.model.graph.input if i.name not in index.initializers), None)


def _mark_auto(index: GraphIndex, score_tensor: str, candidates: list[TargetInfo]) -> list[TargetInfo]:
    """Candidates with note set to why auto skips each one, and auto set on the one it picks."""
    score_paths = index.differentiable_ancestors(score_tensor)
    spatial = index.spatial_reach(score_paths)
    projections = index.projections(score_paths)
    image_size = index.image_size()
    noted = [replace(c, note=_rejection(c, score_paths, spatial, projections, image_size))
             for c in candidates]
    usable = [c for c in noted if not c.note]
    if not usable:
        return noted
    picked = _prefer_channels_first(index, usable[-1], noted)
    return [replace(c, auto=True, note="") if c.name == picked.name else c for c in noted]


def _rejection(info: TargetInfo, score_paths: set[str], spatial: set[str], projections: set[str],
               image_size) -> str:
    """Why target="auto" does not take info ("" when it may)."""
    if info.layout == UNKNOWN:
        return "layout not established by the graph"
    if info.name not in score_paths:
        return "no gradient path to the score"
    channels, (height, width) = info.channels, info.grid
    if isinstance(channels, int) and channels < MIN_CHANNELS:
        return f"{channels} channels"
    if isinstance(height, int) and isinstance(width, int) and (height < 2 or width < 2):
        return f"{height}x{width} map"
    if isinstance(height, int) and isinstance(width, int) and isinstance(image_size[0], int) \
            and isinstance(image_size[1], int) and height > 0 and width > 0:
        change = (height / width) / (image_size[0] / image_size[1])
        if not 1 / MAX_ASPECT_CHANGE <= change <= MAX_ASPECT_CHANGE:
            return f"{height}x{width} does not follow the input's {image_size[0]}x{image_size[1]}"
    if info.name not in spatial:
        return "only class tokens reach the score"
    if info.name in projections:
        return "a projection into token mixing"
    return ""


def choose_target(index: GraphIndex, score_tensor: str, target: str = "auto",
                  layout: Optional[str] = None) -> TargetInfo:
    """Return the named target, or for 'auto' the deepest spatial feature map before the spatial collapse.

    layout: the layout of a named 4-D target ("NCHW" or "NHWC") for graphs that do not establish it;
    it must agree with the graph where the graph does.
    """
    candidates = list_candidates(index, score_tensor)
    if layout is not None and layout not in LAYOUTS:
        raise GradCamError(f"target_layout must be one of {', '.join(HINTS)} (or None), got {layout!r}")
    if target == "auto":
        if layout is not None:
            raise GradCamError(f"target_layout={layout!r} states the layout of a named target; pass target=NAME "
                               "with it, or leave it out for target='auto'")
        for info in candidates:
            if info.auto:
                return info
        if not candidates:
            raise TargetNotFoundError("target='auto' found no spatial feature map: the graph has no 4-D activation "
                                      "or patch-token tensor feeding the score, so there is nothing to localize "
                                      "(is this an image model?)")
        raise TargetNotFoundError(
            "target='auto' found no spatial feature map feeding the score: no 4-D activation or patch-token "
            f"tensor with a layout the graph establishes, >= {MIN_CHANNELS} channels and h, w >= 2 following "
            "the input's aspect. list_targets found these (with why auto skips each); pass target=NAME to "
            "use one anyway, with target_layout='NCHW' or 'NHWC' for one of layout '?':\n" + _listing(candidates))
    for info in candidates:
        if info.name == target:
            return _prefer_channels_first(index, _with_layout(index, info, layout, candidates), candidates)
    if target in index.producer or target in {i.name for i in index.model.graph.input}:
        shape = index.builder.shapes.get(target)
        why = ("it does not influence the score" if target not in index.ancestors(score_tensor)
               else f"it is not a 4-D float activation or a token tensor [N, T, C] on a patch grid (shape {shape}; "
                    "tokens are targets when the graph makes them from a patch-embedding Conv by Reshape and "
                    "Transpose, with class tokens concatenated in front)")
        raise TargetNotFoundError(f"target {target!r} cannot be used: {why}. Candidates:\n" + _listing(candidates))
    close = difflib.get_close_matches(target, [c.name for c in candidates], n=5, cutoff=0.3)
    hint = f" Did you mean {close}?" if close else ""
    raise TargetNotFoundError(f"target {target!r} is not a tensor of this graph.{hint} Candidates:\n"
                              + _listing(candidates))


def _with_layout(index: GraphIndex, info: TargetInfo, layout: Optional[str],
                 candidates: list[TargetInfo]) -> TargetInfo:
    """info with the caller's layout where the graph leaves it unknown; a clear error where neither knows."""
    if layout is None or layout == info.layout:
        if info.layout == UNKNOWN:
            raise TargetNotFoundError(
                f"the graph does not establish the layout of target {info.name!r} (shape "
                f"[{'x'.join(_dim(d) for d in info.shape)}], made by {info.op_type}): reading it as NCHW could "
                "swap channels and space. Pass target_layout='NCHW' or 'NHWC' if you know it, or pick a target "
                "whose layout is known:\n" + _listing(candidates))
        return info
    if info.layout != UNKNOWN:
        raise TargetNotFoundError(f"target {info.name!r} is {info.layout} in the graph, but target_layout={layout!r} "
                                  f"was given; leave target_layout out (the graph decides) or pick another target")
    if layout not in HINTS:
        raise TargetNotFoundError(f"target_layout={layout!r} cannot apply to the 4-D tensor {info.name!r}; "
                                  "use 'NCHW' or 'NHWC'")
    return replace(info, layout=layout, grid=_grid(layout, info.shape))


def _prefer_channels_first(index: GraphIndex, info: TargetInfo, candidates: list[TargetInfo]) -> TargetInfo:
    """Step back over a layout Transpose so the target is the NCHW tensor it was made from."""
    node = index.producer.get(info.name)
    if info.layout == NHWC and node is not None and node.op_type == "Transpose" and list(_perm(node)) == TO_NHWC:
        for candidate in candidates:
            if candidate.name == node.input[0]:
                return candidate
    return info


def _listing(candidates: list[TargetInfo], limit: int = 40) -> str:
    shown = candidates[-limit:]
    more = f"  ... and {len(candidates) - limit} earlier\n" if len(candidates) > limit else ""
    return f"  {TargetInfo.HEADER}\n" + more + "\n".join(f"  {c}" for c in shown)
