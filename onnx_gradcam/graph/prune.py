"""Keeping only the part of a graph that some outputs need."""
from __future__ import annotations

from typing import Iterable, Iterator

import onnx


def keep_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of model that computes only the named outputs (inputs are kept as they are).

    ONNX Runtime runs every node of a graph whatever outputs are fetched, so a Grad-CAM run on a
    model that also holds a full-network backward pass would pay for that pass.
    """
    names = list(names)
    needed = set(names)
    kept = []
    for node in reversed(model.graph.node):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(reads(node))
    pruned = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(pruned, field, getattr(model, field))
    pruned.opset_import.extend(model.opset_import)
    pruned.metadata_props.extend(model.metadata_props)
    pruned.functions.extend(model.functions)
    graph = pruned.graph
    graph.name = model.graph.name
    graph.node.extend(reversed(kept))
    graph.input.extend(model.graph.input)
    graph.output.extend(o for o in model.graph.output if o.name in set(names))
    graph.initializer.extend(t for t in model.graph.initializer if t.name in needed)
    graph.value_info.extend(v for v in model.graph.value_info if v.name in needed)
    return pruned


def reads(node: onnx.NodeProto) -> Iterator[str]:
    """The tensors a node reads, the outer-scope names its subgraphs read included (empty inputs skipped)."""
    yield from (name for name in node.input if name)
    for attribute in node.attribute:
        for subgraph in [attribute.g] + list(attribute.graphs):
            for inner in subgraph.node:
                yield from reads(inner)


def descendants(nodes: Iterable[onnx.NodeProto], sources: Iterable[str]) -> set[str]:
    """Every tensor computed from the sources, the sources included (nodes in topological order)."""
    reached = set(sources)
    for node in nodes:
        if any(name in reached for name in reads(node)):
            reached.update(name for name in node.output if name)
    return reached
