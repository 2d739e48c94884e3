"""Finding the score tensor and the target activation in a graph."""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from ..errors import ScoreNotFoundError, TargetNotFoundError
from .builder import Dim, GraphBuilder
from .rules.registry import is_differentiable, keeps_layout, makes_channels_first

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]


@dataclass(frozen=True)
class TargetInfo:
    """A candidate target tensor: name, shape, producing op and layout."""

    name: str
    shape: tuple[Dim, ...]
    op_type: str
    node: str
    layout: str

    def __str__(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name:<48} {self.op_type:<20} [{dims}] {self.layout}"


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

    def _infer_layouts(self) -> dict[str, str]:
        """Tag 4-D tensors NCHW or NHWC by following Conv outputs and layout Transposes."""
        layouts: dict[str, str] = {}
        for graph_input in self.model.graph.input:
            shape = self.builder.shapes.get(graph_input.name)
            if shape and len(shape) == 4 and graph_input.name not in self.initializers:
                layouts[graph_input.name] = "NHWC" if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "NCHW"
        for node in self.nodes:
            if makes_channels_first(node.op_type):
                layout = "NCHW"
            elif node.op_type == "Transpose":
                source = layouts.get(node.input[0])
                perm = list(_perm(node))
                layout = {("NCHW", tuple(TO_NHWC)): "NHWC", ("NHWC", tuple(TO_NCHW)): "NCHW"}.get(
                    (source, tuple(perm)))
                if layout is None and source is None and self.builder.rank(node.output[0]) == 4:
                    layout = {tuple(TO_NHWC): "NHWC", tuple(TO_NCHW): "NCHW"}.get(tuple(perm))
            elif keeps_layout(node.op_type):
                layout = next((layouts[n] for n in node.input if n in layouts), None)
            else:
                layout = None
            if layout is not None:
                for out in node.output:
                    if out and self.builder.rank(out) == 4:
                        layouts[out] = layout
        return layouts


def _perm(node: onnx.NodeProto):
    for attribute in node.attribute:
        if attribute.name == "perm":
            return attribute.ints
    return ()


def find_score(index: GraphIndex, score: str = "auto") -> tuple[str, str]:
    """Return (score tensor, reported output): the pre-softmax logits unless told otherwise."""
    outputs = [o.name for o in index.model.graph.output]
    if score not in ("auto", "logits", "probability"):
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
    """4-D float tensors computed by the graph that influence the score, in graph order."""
    influencing = index.ancestors(score_tensor)
    result = []
    for node in index.nodes:
        for out in node.output:
            shape = index.builder.shapes.get(out)
            if (out in influencing and shape is not None and len(shape) == 4 and index.is_float(out)
                    and out not in index.initializers and node.op_type not in ("Constant", "Shape")):
                result.append(TargetInfo(out, tuple(shape), node.op_type, node.name,
                                         index.layouts.get(out, "NCHW")))
    return result


def _spatial(info: TargetInfo) -> tuple[Dim, Dim]:
    return (info.shape[1], info.shape[2]) if info.layout == "NHWC" else (info.shape[2], info.shape[3])


def choose_target(index: GraphIndex, score_tensor: str, target: str = "auto") -> TargetInfo:
    """Return the named target, or for 'auto' the last 4-D activation before the spatial collapse."""
    candidates = list_candidates(index, score_tensor)
    if target != "auto":
        for info in candidates:
            if info.name == target:
                return _prefer_channels_first(index, info, candidates)
        if target in index.producer or target in {i.name for i in index.model.graph.input}:
            shape = index.builder.shapes.get(target)
            why = ("it does not influence the score" if target not in index.ancestors(score_tensor)
                   else f"it is not a 4-D float activation (shape {shape})")
            raise TargetNotFoundError(f"target {target!r} cannot be used: {why}. Candidates:\n"
                                      + _listing(candidates))
        close = difflib.get_close_matches(target, [c.name for c in candidates], n=5, cutoff=0.3)
        hint = f" Did you mean {close}?" if close else ""
        raise TargetNotFoundError(f"target {target!r} is not a tensor of this graph.{hint} Candidates:\n"
                                  + _listing(candidates))
    spatial = [c for c in candidates if not all(isinstance(d, int) and d == 1 for d in _spatial(c))]
    if not spatial:
        raise TargetNotFoundError("the graph has no 4-D activation with spatial extent feeding the "
                                  "score, so there is nothing to localize (is this an image CNN?)")
    return _prefer_channels_first(index, spatial[-1], candidates)


def _prefer_channels_first(index: GraphIndex, info: TargetInfo, candidates: list[TargetInfo]) -> TargetInfo:
    """Step back over a layout Transpose so the target is the NCHW tensor it was made from."""
    node = index.producer.get(info.name)
    if info.layout == "NHWC" and node is not None and node.op_type == "Transpose" and list(_perm(node)) == TO_NHWC:
        for candidate in candidates:
            if candidate.name == node.input[0]:
                return candidate
    return info


def _listing(candidates: list[TargetInfo], limit: int = 40) -> str:
    shown = candidates[-limit:]
    more = f"  ... and {len(candidates) - limit} earlier\n" if len(candidates) > limit else ""
    return more + "\n".join(f"  {c}" for c in shown)
