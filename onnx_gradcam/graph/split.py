"""Splitting a seed=True model into its forward pass and its seeded reverse pass.

A seed is usually made from the model's own outputs (a box found by the forward pass, the pixels
predicted as a class), so a one-graph run would compute the forward pass twice: once to find what to
explain, once seeded. Split, the forward part runs once per image and hands the reverse part the
forward values it reads ("saved" tensors); the reverse part then runs once per seed, on those values,
gathered by image when an image has several things to explain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from .augment import SEED
from .batch_probe import PROBE_BATCH, probe_batch_shapes
from .builder import GraphBuilder
from .prune import descendants, keep_outputs, reads

FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
GUESSED_DIM = 32  # the size taken for a dim left symbolic when comparing tensors' sizes
# Ops cheap enough to compute again in the reverse part when that saves bytes between the parts.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh",
               "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "Erf", "Where", "Not", "Equal", "Less", "LessOrEqual",
               "Greater", "GreaterOrEqual", "And", "Or", "Sign", "Clip", "Max", "Min", "Cast", "Identity",
               "HardSwish", "Softplus", "Elu", "Selu"}
ROWS = "gradcam_rows"  # the rows of the values passed between the parts, a named dim


@dataclass(frozen=True)
class SeededSplit:
    """The two graphs of a split seeded model.

    forward computes forward_outputs (the wanted outputs that need no seed) and the saved tensors;
    reverse reads the saved tensors and gradcam_seed and computes reverse_outputs. Every saved tensor
    has the images' batch as its first axis: the reverse part runs on any rows of them, an image
    repeated once per thing explained in it.
    """

    forward: onnx.ModelProto
    reverse: onnx.ModelProto
    saved: tuple[str, ...]
    forward_outputs: tuple[str, ...]
    reverse_outputs: tuple[str, ...]


def split_seeded(model: onnx.ModelProto, outputs: Sequence[str]) -> SeededSplit:
    """Split a seed=True augmented model computing outputs into a forward graph and a seeded reverse graph.

    ValueError when the model has no seed input, no output depends on it, or a value the parts would pass
    has no known type.
    """
    pruned = keep_outputs(model, outputs)
    graph = pruned.graph
    if SEED not in {value.name for value in graph.input}:
        raise ValueError(f"the model has no {SEED} input, or none of {list(outputs)} depends on it")
    seeded = descendants(graph.node, {SEED})
    reverse_outputs = tuple(name for name in outputs if name in seeded)
    forward_outputs = tuple(name for name in outputs if name not in seeded)
    if not reverse_outputs:
        raise ValueError(f"none of {list(outputs)} depends on {SEED}: there is no reverse part to split off")
    shapes = probe_batch_shapes(pruned)
    reverse_nodes, saved = _reverse_part(pruned, shapes, seeded, set(forward_outputs))
    forward = keep_outputs(pruned, [*forward_outputs, *saved])
    _drop_inputs(forward, {SEED})
    _set_outputs(forward, [*forward_outputs, *saved], shapes, list(forward.graph.output))
    reverse = _subgraph(pruned, reverse_nodes, saved, reverse_outputs, shapes)
    return SeededSplit(forward=forward, reverse=reverse, saved=tuple(saved), forward_outputs=forward_outputs,
                       reverse_outputs=reverse_outputs)


def _reverse_part(model: onnx.ModelProto, shapes: GraphBuilder, seeded: set[str],
                  forward_outputs: set[str]) -> tuple[list[onnx.NodeProto], list[str]]:
    """The reverse part's nodes (graph order) and the forward tensors it reads (the saved ones).

    It holds every node that reads the seed, and, computed again from their own inputs, the forward
    tensors it needs that do not lead with the batch (a shape holding the batch size, a bound computed
    from constants: taking rows of them would not be taking images). Then cheap elementwise nodes
    move in too while that keeps fewer bytes saved: a SiLU's derivative s * (1 + x * (1 - s)) is saved
    as x and s = Sigmoid(x) rather than as four tensors, and the reverse part recomputes the rest.
    """
    graph = model.graph
    batch_leading = {name for name, shape in shapes.shapes.items()
                     if shape and shape[0] == PROBE_BATCH and shapes.dtypes.get(name) in FLOATS}
    producers = {out: node for node in graph.node for out in node.output if out}
    position = {id(node): index for index, node in enumerate(graph.node)}
    constant = {tensor.name for tensor in graph.initializer} | {SEED}
    image_dependent = descendants(graph.node, [value.name for value in graph.input
                                               if value.name not in constant])
    in_reverse = {id(node) for node in graph.node if any(out in seeded for out in node.output)}
    produced: set[str] = set()
    saved: dict[str, None] = {}  # ordered

    def move_in(node: onnx.NodeProto) -> None:
        in_reverse.add(id(node))
        produced.update(out for out in node.output if out)
        for out in node.output:
            saved.pop(out, None)
        for name in reads(node):
            if name not in produced and name not in constant:
                saved.setdefault(name)

    for node in graph.node:
        if id(node) in in_reverse:
            move_in(node)

    def bytes_saved(name: str) -> float:
        if name in forward_outputs:  # fetched anyway
            return 0.0
        shape = shapes.shapes.get(name)
        if shape is None:
            return float("inf")
        return float(np.prod([dim if isinstance(dim, int) else GUESSED_DIM for dim in shape[1:]]))

    def cone(name: str, depth: int) -> tuple[list[onnx.NodeProto], float]:
        """The elementwise nodes that compute name from values up to depth steps back, and the bytes saved in
        their place (infinite when one of those values cannot be saved)."""
        nodes, cost, seen = [], 0.0, set()
        pending = [(name, 0)]
        while pending:
            tensor, steps = pending.pop()
            if tensor in seen or tensor in constant or tensor in produced:
                continue
            seen.add(tensor)
            node = producers.get(tensor)
            if tensor != name and (tensor in saved or tensor not in image_dependent):
                continue  # already passed on, or recomputed from constants
            if tensor != name and (node is None or node.op_type not in ELEMENTWISE or steps == depth
                                   or tensor in forward_outputs):
                cost += bytes_saved(tensor) if tensor in batch_leading else float("inf")
                continue
            nodes.append(node)
            pending.extend((read, steps + 1) for read in reads(node))
        return nodes, cost

    def cheaper_recomputed(name: str) -> list[onnx.NodeProto]:
        """The nodes whose move into the reverse part saves name for no more bytes ([] when none does)."""
        node = producers.get(name)
        if node is None or node.op_type not in ELEMENTWISE or name in forward_outputs:
            return []
        for depth in (len(graph.node), 1):  # every elementwise step back, or just the producer's inputs
            nodes, cost = cone(name, depth)
            if cost <= bytes_saved(name):
                return nodes
        return []

    while True:
        recompute = [producers[name] for name in saved if name not in batch_leading and name in producers]
        if not recompute:
            recompute = next((nodes for nodes in map(cheaper_recomputed, saved) if nodes), [])
        if not recompute:
            break
        for node in sorted(recompute, key=lambda node: position[id(node)]):
            if id(node) not in in_reverse:
                move_in(node)
    return [node for node in graph.node if id(node) in in_reverse], list(saved)


def _drop_inputs(model: onnx.ModelProto, names: set[str]) -> None:
    for value in [value for value in model.graph.input if value.name in names]:
        model.graph.input.remove(value)


def _value_info(name: str, builder: GraphBuilder) -> onnx.ValueInfoProto:
    # Rows as a named dim: a declared size would let ONNX Runtime fold Shape nodes to it.
    shape = builder.shapes.get(name)
    dims = None if shape is None else [ROWS if index == 0 else dim if isinstance(dim, (int, str)) else None
                                       for index, dim in enumerate(shape)]
    if name not in builder.dtypes:
        raise ValueError(f"the type of {name!r} is unknown: the model cannot be split at it")
    return onnx.helper.make_tensor_value_info(name, builder.dtypes[name], dims)


def _set_outputs(model: onnx.ModelProto, names: Sequence[str], builder: GraphBuilder,
                 declared: Sequence[onnx.ValueInfoProto]) -> None:
    """model's outputs: names, with their declarations where declared has them."""
    known = {value.name: value for value in declared}
    del model.graph.output[:]
    model.graph.output.extend(known.get(name) or _value_info(name, builder) for name in names)


def _subgraph(model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: Sequence[str],
              outputs: Sequence[str], builder: GraphBuilder) -> onnx.ModelProto:
    """A model of these nodes reading inputs (and the seed) and computing outputs."""
    sub = keep_outputs(model, [])
    graph = sub.graph
    graph.node.extend(nodes)
    read = {name for node in nodes for name in reads(node)}
    graph.initializer.extend(tensor for tensor in model.graph.initializer if tensor.name in read)
    del graph.input[:]
    seed = [value for value in model.graph.input if value.name == SEED]
    graph.input.extend([*seed, *(_value_info(name, builder) for name in inputs)])
    _set_outputs(sub, outputs, builder, model.graph.output)
    graph.value_info.extend(v for v in model.graph.value_info if v.name in read)
    return sub
