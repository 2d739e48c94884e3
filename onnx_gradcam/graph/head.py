"""The head of a model: the subgraph that computes the score from the target tensor alone.

Ablation-CAM scores thousands of ablated copies of one activation; running only the layers after the
target (for a ResNet: pooling and the classifier) costs a tiny fraction of the whole network.
"""
from __future__ import annotations

from typing import Iterable, Optional

import onnx
from onnx import helper

from ..errors import ScoreNotFoundError, TargetNotFoundError
from .io import without_weights
from .prune import descendants, reads

__all__ = ["extract_head"]


def extract_head(model: onnx.ModelProto, target: str, score: str) -> onnx.ModelProto:
    """A model whose only input is the target tensor and whose only output is the score tensor.

    TargetNotFoundError when the score reads anything computed from the model's inputs other than
    through the target (a skip connection around it, a shape taken from the image); the message
    names those tensors.
    """
    graph = model.graph
    producers = {name: position for position, node in enumerate(graph.node) for name in node.output if name}
    if target not in producers and target not in {value.name for value in graph.input}:
        raise TargetNotFoundError(f"target {target!r} is no tensor of the graph; see onnx_gradcam.list_targets")
    if score not in producers:
        raise ScoreNotFoundError(f"score {score!r} is not computed by any node of the graph")
    kept, foreign = _walk_back(graph, producers, target, score)
    nodes = [node for position, node in enumerate(graph.node) if position in kept]
    if score not in descendants(nodes, {target}):
        raise ScoreNotFoundError(f"the score {score!r} does not depend on the target {target!r}; "
                                 "pick a target the score is computed from (see onnx_gradcam.list_targets)")
    if foreign:
        raise TargetNotFoundError(_foreign_message(graph, kept, target, score, foreign))
    return _head_model(model, nodes, target, score)


def _walk_back(graph: onnx.GraphProto, producers: dict, target: str, score: str) -> tuple[set[int], set[str]]:
    """Positions of the nodes score needs when target is given, and the graph inputs it needs besides target."""
    constants = {tensor.name for tensor in graph.initializer}
    inputs = {value.name for value in graph.input} - constants
    kept, foreign, seen, stack = set(), set(), set(), [score]
    while stack:
        name = stack.pop()
        if not name or name in seen or name == target or name in constants:
            continue
        seen.add(name)
        if name in inputs:
            foreign.add(name)
        elif name in producers and producers[name] not in kept:
            kept.add(producers[name])
            stack.extend(reads(graph.node[producers[name]]))
    return kept, foreign


def _foreign_message(graph: onnx.GraphProto, kept: set[int], target: str, score: str, foreign: set[str]) -> str:
    """Names the tensors the head reads from before the target: where the other path joins it."""
    nodes = list(graph.node)
    from_target = descendants(nodes, {target})
    from_inputs = descendants(nodes, foreign)
    joins = sorted({name for position, node in enumerate(nodes)
                    if position in kept and any(read in from_target for read in reads(node))
                    for name in reads(node) if name in from_inputs and name not in from_target})
    where = f"reads {', '.join(repr(name) for name in joins)}" if joins else "needs"
    return (f"the head from the target {target!r} to the score {score!r} also {where}, computed from the "
            f"model input{'s' if len(foreign) > 1 else ''} {', '.join(sorted(foreign))} without passing through "
            "the target (a skip connection around it, or a shape taken from the image), so it cannot run on "
            "the target alone: augment with a target the score reads only through itself (the output of a "
            "whole block, e.g. 'layer4' rather than a tensor inside it), or use a method that runs the whole "
            "model (scorecam)")


def _head_model(model: onnx.ModelProto, nodes: list[onnx.NodeProto], target: str, score: str) -> onnx.ModelProto:
    graph = model.graph
    read = {name for node in nodes for name in reads(node)}
    head = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(head, field, getattr(model, field))
    head.opset_import.extend(model.opset_import)
    head.functions.extend(model.functions)
    head.graph.name = (graph.name or "graph") + "_head"
    head.graph.node.extend(nodes)
    head.graph.initializer.extend(tensor for tensor in graph.initializer if tensor.name in read)
    head.graph.sparse_initializer.extend(tensor for tensor in graph.sparse_initializer
                                         if tensor.values.name in read)
    declared = _declared_types(model, (target, score))
    head.graph.input.append(declared[target])
    head.graph.output.append(declared[score])
    head.graph.value_info.extend(value for value in graph.value_info
                                 if value.name in read and value.name not in (target, score))
    return head


def _declared_types(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, onnx.ValueInfoProto]:
    """The type and shape of each named tensor, from the graph's declarations or shape inference."""
    names = list(names)
    graph = model.graph
    known = {value.name: value for field in (graph.input, graph.output, graph.value_info) for value in field}
    if any(_elem_type(known.get(name)) is None for name in names):
        inferred = onnx.shape_inference.infer_shapes(without_weights(model)).graph
        for field in (inferred.input, inferred.output, inferred.value_info):
            known.update({value.name: value for value in field if _elem_type(known.get(value.name)) is None})
    result = {}
    for name in names:
        value = known.get(name)
        if _elem_type(value) is None:
            raise TargetNotFoundError(f"the type of {name!r} is unknown (shape inference failed on the graph); "
                                      "declare it in graph.value_info")
        copy = helper.make_empty_tensor_value_info(name)
        copy.type.CopyFrom(value.type)
        result[name] = copy
    return result


def _elem_type(value: Optional[onnx.ValueInfoProto]) -> Optional[int]:
    if value is None or not value.type.HasField("tensor_type") or not value.type.tensor_type.elem_type:
        return None
    return value.type.tensor_type.elem_type
