"""Which tensors of a graph hold one row per image: shape inference with a batch of PROBE_BATCH images.

A symbolic batch is lost on the way (ONNX Runtime's inference turns it into floor(1.0*batch) at a
Resize; ONNX's drops it at Shape arithmetic), a concrete one is carried through: the graph's shape
arithmetic (Shape -> Gather -> Div -> Concat -> Reshape, as TorchScript exports view(n, -1, c)) is
computed for the probe's sizes and the shapes inferred again. Only a tensor computed row by row from
the images has PROBE_BATCH rows: no layer size is a multiple of it by chance.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .builder import GraphBuilder
from .inference import inferred_skeleton

PROBE_BATCH = 7919  # a prime
# Integer ops the shape arithmetic of exported graphs uses, computed on small int64 tensors only.
SHAPE_ARITHMETIC = {"Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Div", "Mul", "Add", "Sub", "Cast",
                    "Floor", "Ceil", "Equal", "Where", "Identity", "Reshape", "Mod", "Max", "Min", "Neg", "Constant"}
SMALL = 64  # elements of the largest tensor taken for shape arithmetic


def probe_batch_shapes(model: onnx.ModelProto) -> GraphBuilder:
    """Shapes and dtypes of model's tensors inferred for a batch of PROBE_BATCH images."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    initializers = {tensor.name for tensor in probe.graph.initializer}
    for value in probe.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and len(dims):
            dims[0].Clear()
            dims[0].dim_value = PROBE_BATCH
    inferred = inferred_skeleton(probe)
    for _ in range(4):  # each round computes what the shapes found by the last one allow
        values = _shape_arithmetic(inferred)
        if not values:
            break
        folded = [node for node in probe.graph.node if not any(out in values for out in node.output)]
        del probe.graph.node[:]
        probe.graph.node.extend(folded)
        probe.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in values.items())
        del probe.graph.value_info[:]
        inferred = inferred_skeleton(probe)
    return GraphBuilder(inferred)


def _shape_arithmetic(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The integer tensors computed from known shapes and constants (Shape, then SHAPE_ARITHMETIC ops)."""
    from onnx.reference import ReferenceEvaluator

    builder = GraphBuilder(model)
    known = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer
             if tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
             and int(np.prod(tensor.dims)) <= SMALL}
    computed: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type == "Shape":
            shape = builder.shapes.get(node.input[0])
            if not shape or not all(isinstance(dim, int) for dim in shape):
                continue
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            outputs = [np.array(shape, np.int64)[attributes.get("start", 0):attributes.get("end", None)]]
        elif node.op_type in SHAPE_ARITHMETIC and all(name in known for name in node.input if name):
            inputs = [name for name in node.input if name]
            graph = helper.make_graph(
                [node], "shape_arithmetic",
                [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(known[name].dtype), None)
                 for name in inputs],
                [helper.make_tensor_value_info(out, onnx.TensorProto.UNDEFINED, None) for out in node.output])
            try:
                outputs = ReferenceEvaluator(helper.make_model(graph, opset_imports=model.opset_import)).run(
                    None, {name: known[name] for name in inputs})
            except Exception:  # an op version the reference lacks: leave it to inference
                continue
        else:
            continue
        if all(isinstance(out, np.ndarray) and out.dtype.kind in "iu" and out.size <= SMALL for out in outputs):
            for name, value in zip(node.output, outputs):
                known[name] = computed[name] = value
    return computed
