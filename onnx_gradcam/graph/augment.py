"""Graph surgery: expose the target activation, its gradient, the class and its score."""
from __future__ import annotations

import json
import os
from typing import Optional, Union

import numpy as np
import onnx
from onnx import TensorProto, helper

from .._version import __version__
from ..errors import GradCamError, ScoreNotFoundError
from .builder import GraphBuilder
from .io import ModelLike, load_model, save_model, without_weights
from .locate import TO_NCHW, GraphIndex, TargetInfo, choose_target, find_score, list_candidates
from .rules import GUIDED_RULES, RULES, RuleTable, differentiate

TARGET_CLASS = "gradcam_target_class"
ACTIVATION = "gradcam_activation"
GRADIENT = "gradcam_gradient"
CLASS = "gradcam_class"
SCORE = "gradcam_score"
LOGITS = "gradcam_logits"
HEATMAP = "gradcam_heatmap"
INPUT_GRADIENT = "gradcam_input_gradient"
GUIDED_GRADIENT = "gradcam_guided_gradient"
METADATA_PREFIX = "gradcam_"


def _analyse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphBuilder, GraphIndex]:
    """Shape-infer a weightless copy of model and index it."""
    inferred = without_weights(model)
    for _ in range(8):
        try:
            inferred = onnx.shape_inference.infer_shapes(inferred, data_prop=True)
        except Exception:  # a graph shape inference cannot follow still gets best-effort shapes
            break
        if not _seed_reshape_ranks(inferred):
            break
    builder = GraphBuilder(inferred)
    return inferred, builder, GraphIndex(inferred, builder)


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


def list_targets(model: ModelLike, score: str = "auto") -> list[TargetInfo]:
    """Return the 4-D activations that influence the score, in graph order, with shapes."""
    _, _, index = _analyse(load_model(model))
    score_tensor, _ = find_score(index, score)
    return list_candidates(index, score_tensor)


def augment(model: ModelLike, target: str = "auto", score: str = "auto",
            output: Optional[Union[str, os.PathLike]] = None, heatmap: bool = False,
            preprocess: Optional[dict] = None, input_gradient: bool = False,
            guided: bool = False) -> onnx.ModelProto:
    """Return a copy of model that also outputs the target activation, its gradient, class and score.

    target: tensor name or "auto" (last 4-D activation before the spatial collapse).
    score: "auto" (pre-softmax logits), "probability" (the softmax output) or a tensor name.
    heatmap: also compute gradcam_heatmap [N,H,W] in the graph with standard ONNX ops.
    preprocess: image preprocessing spec recorded in the metadata for raw-image inputs.
    input_gradient: also output gradcam_input_gradient, d score / d image [N,C,H,W], through the
        whole network (saliency, SmoothGrad, integrated gradients).
    guided: also output gradcam_guided_gradient, the same with guided-backpropagation ReLUs.
    """
    original = load_model(model)
    if any(p.key == METADATA_PREFIX + "target" for p in original.metadata_props):
        raise GradCamError("this model is already augmented (it has gradcam_* outputs); "
                           "pass the original model to augment it again")
    opset = next((o.version for o in original.opset_import if o.domain in ("", "ai.onnx")), 1)
    if opset < 11:
        # The reverse pass needs opset-11 ops (Range, GatherElements, ScatterElements, Pad with inputs).
        try:
            original = onnx.version_converter.convert_version(original, 11)
        except Exception as error:
            raise GradCamError(f"the model uses opset {opset}; augmenting needs opset >= 11 and the ONNX "
                               f"version converter failed ({error}); re-export with opset >= 11") from error
    analysed, b, index = _analyse(original)
    score_tensor, score_output = find_score(index, score)
    target_info = choose_target(index, score_tensor, target)
    chosen_class = _class_selection(analysed, b, score_tensor)
    seed = b.cast(b.op("Equal", b.unsqueeze(chosen_class, [1]), b.op(
        "Range", b.const(0, np.int64), b.op("Gather", b.shape(score_tensor), b.const(1, np.int64)),
        b.const(1, np.int64))), b.dtype(score_tensor))
    image = image_input(index.model)
    sources = [target_info.name] + ([image] if input_gradient else [])
    gradients = _backpropagate(index, b, sources, score_tensor, seed)
    gradient = gradients[0]

    activation_out, gradient_out = target_info.name, gradient
    if target_info.layout == "NHWC":
        activation_out = b.op("Transpose", activation_out, perm=TO_NCHW)
        gradient_out = b.op("Transpose", gradient_out, perm=TO_NCHW)
    chosen_score = b.op("GatherElements", score_tensor, b.unsqueeze(chosen_class, [1]), axis=1)
    exposed = {ACTIVATION: activation_out, GRADIENT: gradient_out, CLASS: chosen_class,
               SCORE: b.op("Reshape", chosen_score, b.const([-1], np.int64)), LOGITS: score_tensor}
    if heatmap:
        exposed[HEATMAP] = _in_graph_heatmap(b, index, activation_out, gradient_out)
    image_layout = index.layouts.get(image, "NCHW")
    if input_gradient:
        exposed[INPUT_GRADIENT] = _as_nchw(b, gradients[1], image_layout)
    if guided:
        (guided_gradient,) = _backpropagate(index, b, [image], score_tensor, seed, rules=GUIDED_RULES)
        exposed[GUIDED_GRADIENT] = _as_nchw(b, guided_gradient, image_layout)
    result = onnx.ModelProto()
    result.CopyFrom(original)
    graph = result.graph
    graph.input.append(analysed.graph.input[-1])  # gradcam_target_class
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.initializers)
    graph.value_info.extend(b.value_info.values())
    batch = b.shapes.get(score_tensor, [None])[0]
    nchw = _nchw_shape(list(target_info.shape), target_info.layout)
    for name, source in exposed.items():
        graph.node.append(helper.make_node("Identity", [source], [name], name=f"gradcam/{name}"))
        dtype = {CLASS: TensorProto.INT64, HEATMAP: TensorProto.FLOAT}.get(name, b.dtype(source))
        image_shape = _nchw_shape(b.shapes.get(image) or [batch, None, None, None], image_layout)
        shape = {ACTIVATION: nchw, GRADIENT: nchw, LOGITS: b.shapes.get(score_tensor),
                 HEATMAP: [batch, None, None], INPUT_GRADIENT: image_shape,
                 GUIDED_GRADIENT: image_shape}.get(name, [batch])
        graph.output.append(helper.make_tensor_value_info(name, dtype, shape))
    _record_metadata(result, target_info, score_tensor, score_output, index, preprocess,
                     {"heatmap": heatmap, "input_gradient": input_gradient, "guided": guided})
    if input_gradient or guided:
        kept = kept_bytes_per_image(b, {t.name for t in original.graph.initializer}, batch)
        if kept is not None:
            result.metadata_props.add(key=METADATA_PREFIX + "backward_bytes_per_image", value=str(kept))
    _check(result)
    if output is not None:
        save_model(result, output)
    return result


def _class_selection(model: onnx.ModelProto, b: GraphBuilder, score_tensor: str) -> str:
    """Add the gradcam_target_class input; return the chosen class per image (-1 -> top class)."""
    batch = b.shapes.get(score_tensor, [None])[0]
    model.graph.input.append(helper.make_tensor_value_info(TARGET_CLASS, TensorProto.INT64, [batch]))
    top = b.op("ArgMax", score_tensor, axis=1, keepdims=0)
    return b.op("Where", b.op("Less", TARGET_CLASS, b.const(0, np.int64)), top, TARGET_CLASS)


def _backpropagate(index: GraphIndex, b: GraphBuilder, sources: list[str], score_tensor: str,
                   seed: str, rules: RuleTable = RULES) -> list[str]:
    """Emit the reverse pass from score_tensor back to each source; return d score / d source."""
    for source in sources:
        if score_tensor not in index.reaching(source):
            raise ScoreNotFoundError(f"{source!r} does not reach the score {score_tensor!r}; "
                                     "pick a tensor the score depends on (see list_targets)")
    reached = set().union(*(index.reaching(source) for source in sources))
    live = reached & index.ancestors(score_tensor)
    contributions: dict[str, list[str]] = {score_tensor: [seed]}
    totals: dict[str, Optional[str]] = {}

    def total(tensor: str) -> Optional[str]:
        if tensor not in totals:
            parts = contributions.get(tensor)
            totals[tensor] = (None if not parts else parts[0] if len(parts) == 1
                              else b.op("Sum", *parts, hint="grad_sum"))
            if totals[tensor] is not None:
                b.declare_like(totals[tensor], tensor)
        return totals[tensor]

    for node in reversed(index.nodes):
        if not any(out in live for out in node.output) or not any(i in live for i in node.input if i):
            continue
        output_grads = [total(out) if out in live else None for out in node.output]
        if all(grad is None for grad in output_grads):
            continue
        needed = [bool(name) and name in live for name in node.input]
        for name, grad in zip(node.input, differentiate(node, output_grads, needed, b, rules)):
            if grad is not None and name in live:
                b.declare_like(grad, name)
                contributions.setdefault(name, []).append(grad)
    gradients = [total(source) for source in sources]
    for source, gradient in zip(sources, gradients):
        if gradient is None:
            raise ScoreNotFoundError(f"no gradient reached {source!r} from {score_tensor!r}")
    return gradients


def kept_bytes_per_image(b: GraphBuilder, weights: set[str], batch) -> Optional[int]:
    """Bytes per image of the forward tensors the reverse pass reads (None when a size is dynamic).

    ONNX Runtime keeps each of them from the forward pass until the reverse pass consumes it, so
    this is what a full-network backward costs in memory beyond plain inference.
    """
    produced = {name for node in b.nodes for name in node.output}
    constants = weights | {t.name for t in b.initializers}
    read = {name for node in b.nodes for name in node.input
            if name and name not in produced and name not in constants and name != TARGET_CLASS}
    total = 0
    for name in read:
        shape = b.shapes.get(name)
        if not shape or shape[0] != batch:
            continue  # shapes, scalars and weights computed in the graph: not per image
        if not all(isinstance(d, int) for d in shape[1:]):
            return None
        itemsize = helper.tensor_dtype_to_np_dtype(b.dtype(name)).itemsize
        total += int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    return total


def _in_graph_heatmap(b: GraphBuilder, index: GraphIndex, activation: str, gradient: str) -> str:
    """Grad-CAM heatmap [N,H,W] in [0,1] with standard ONNX ops (resize to the image input size)."""
    image = image_input(index.model)
    weights = b.reduce("ReduceMean", gradient, [2, 3], keepdims=1)
    cam = b.op("Relu", b.reduce("ReduceSum", b.op("Mul", weights, activation), [1], keepdims=1))
    cam = _min_max(b, b.cast(cam, TensorProto.FLOAT))
    layout = index.layouts.get(image, "NCHW")
    start = 1 if layout == "NHWC" else 2
    image_size = b.slice(b.shape(image), [start], [start + 2], [0])
    sizes = b.op("Concat", b.slice(b.shape(cam), [0], [2], [0]), image_size, axis=0)
    # Resize-11/12 require the roi and scales inputs, later opsets accept them empty.
    unused = b.const(np.zeros(0, np.float32)) if b.opset < 13 else ""
    resized = b.op("Resize", cam, unused, unused, sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    return b.squeeze(_min_max(b, resized), [1])


def _min_max(b: GraphBuilder, cam: str) -> str:
    """Per-image (u - min) / (max - min + 1e-7) of a [N,1,h,w] map."""
    low = b.reduce("ReduceMin", cam, [1, 2, 3], keepdims=1)
    high = b.reduce("ReduceMax", cam, [1, 2, 3], keepdims=1)
    span = b.op("Add", b.op("Sub", high, low), b.const(np.float32(1e-7)))
    return b.op("Div", b.op("Sub", cam, low), span)


def _nchw_shape(shape: list, layout: str) -> list:
    return [shape[i] for i in TO_NCHW] if layout == "NHWC" and len(shape) == 4 else list(shape)


def _as_nchw(b: GraphBuilder, tensor: str, layout: str) -> str:
    return b.op("Transpose", tensor, perm=TO_NCHW) if layout == "NHWC" else tensor


def image_input(model: onnx.ModelProto) -> str:
    """Name of the model's image input: its first non-initializer, non-gradcam input."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers and i.name != TARGET_CLASS]
    return inputs[0]


def _record_metadata(model, target_info, score_tensor, score_output, index, preprocess, flags) -> None:
    image = image_input(index.model)
    image_shape = index.builder.shapes.get(image)
    values = {
        "target": target_info.name, "target_layout": target_info.layout,
        "target_shape": json.dumps(list(target_info.shape)),
        "score": score_tensor, "score_output": score_output, "input": image,
        "input_shape": json.dumps(image_shape), "input_layout": index.layouts.get(image, "NCHW"),
        "opset": str(index.builder.opset), "version": __version__,
        **{key: str(bool(value)).lower() for key, value in flags.items()}}
    if preprocess is not None:
        values["preprocess"] = json.dumps(preprocess if isinstance(preprocess, dict) else preprocess.to_dict())
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        prop = existing.get(METADATA_PREFIX + key) or model.metadata_props.add()
        prop.key, prop.value = METADATA_PREFIX + key, value


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(without_weights(model))
    except onnx.checker.ValidationError as error:
        raise GradCamError(f"the augmented model failed onnx.checker: {error}") from error


def augmented_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The gradcam_* metadata of an augmented model (prefix stripped); empty for a plain model."""
    return {p.key[len(METADATA_PREFIX):]: p.value for p in model.metadata_props
            if p.key.startswith(METADATA_PREFIX)}
