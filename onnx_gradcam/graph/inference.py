"""Shape inference for graph analysis: ONNX's, then ONNX Runtime's symbolic inference where ONNX's gives up."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .builder import GraphBuilder
from .io import without_weights


def inferred_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A weightless copy of model with every shape ONNX's and ONNX Runtime's inference can find."""
    inferred = without_weights(model)
    _unknown_negative_dims(inferred)
    for _ in range(8):
        try:
            inferred = onnx.shape_inference.infer_shapes(inferred, data_prop=True)
        except Exception:  # a graph shape inference cannot follow still gets best-effort shapes
            break
        if not _seed_reshape_ranks(inferred):
            break
    _add_symbolic_shapes(inferred)
    return inferred


def _unknown_negative_dims(model: onnx.ModelProto) -> None:
    """Make input dims written as -1 or 0 (Paddle, some converters) symbolic: shape inference would do
    arithmetic on them and infer sizes such as 0 for every map downstream."""
    for value in model.graph.input:
        for number, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.Clear()
                dim.dim_param = f"{value.name}_dim{number}"


def _add_symbolic_shapes(model: onnx.ModelProto) -> None:
    """Fill in shapes ONNX's inference left unknown with ONNX Runtime's symbolic shape inference.

    It follows Shape -> Slice -> Concat -> Reshape chains (the heads paddle2onnx and tf2onnx emit)
    with symbolic batch, height and width, where ONNX's data propagation gives up.
    """
    known = GraphBuilder(model).shapes
    outputs = [out for node in model.graph.node for out in node.output if out]
    if all(out in known and all(isinstance(d, int) for d in known[out][1:]) for out in outputs):
        return
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        # SymbolicShapeInference.infer_shapes without its last step, which writes the partial result to
        # the working directory and raises when some shape stays unknown: the partial result is wanted.
        # No auto_merge: it would take two unknown dims to be equal wherever they meet (a guess).
        inference = SymbolicShapeInference(2**31 - 1, False, False, 0)
        inference._preprocess(model)
        while inference.run_:
            inference._infer_impl()
        symbolic = inference.out_mp_
    except Exception:  # an op it does not know: keep what ONNX inferred
        return
    found = {info.name: info for info in symbolic.graph.value_info}
    kept = []
    for info in model.graph.value_info:
        better = found.get(info.name)
        if better is not None and _known_dims(better) > _known_dims(info):
            continue
        kept.append(info)
    names = {info.name for info in kept}
    kept += [info for name, info in found.items()
             if name not in names and name in set(outputs) and info.type.tensor_type.HasField("shape")]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def _known_dims(info: onnx.ValueInfoProto) -> int:
    """How much of a tensor's shape is known: -1 without a shape, else the count of sized dims."""
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return -1
    return sum(1 for d in tensor_type.shape.dim if d.HasField("dim_value") and d.dim_value > 0)


def _seed_reshape_ranks(model: onnx.ModelProto) -> bool:
    """Give shapeless Reshape outputs their rank (the length of the shape input); True if any was added.

    Reshape(x, Concat(Shape(x)[0], [-1])) (Keras' Flatten, torch's x.view(x.size(0), -1)) has a rank
    known from the shape input's length even where inference cannot compute the dims.
    """
    builder = GraphBuilder(model)
    added = False
    for node in model.graph.node:
        if node.op_type != "Reshape" or node.output[0] in builder.shapes:
            continue
        shape_input = builder.shapes.get(node.input[1])
        if shape_input and len(shape_input) == 1 and isinstance(shape_input[0], int):
            model.graph.value_info.append(helper.make_tensor_value_info(
                node.output[0], builder.dtypes.get(node.input[0], TensorProto.FLOAT), [None] * shape_input[0]))
            added = True
    return added
