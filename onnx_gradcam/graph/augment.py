"""Graph surgery: expose the target activation, its gradient, the class and its score."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, helper

from .._version import __version__
from ..errors import GradCamError, InputError, OpsetTooLowError, ScoreNotFoundError, TargetNotFoundError
from .builder import GraphBuilder
from .batch_probe import PROBE_BATCH, probe_batch_shapes
from .inference import inferred_skeleton
from .io import ModelLike, load_model, save_model, without_weights
from .layout import nchw_shape, to_nchw
from .locate import TO_NCHW, GraphIndex, TargetInfo, branch_targets, choose_target, find_score, list_candidates
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
SEED = "gradcam_seed"
METADATA_PREFIX = "gradcam_"


def _analyse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, GraphBuilder, GraphIndex]:
    """Shape-infer a weightless copy of model and index it."""
    inferred = inferred_skeleton(model)
    builder = GraphBuilder(inferred)
    return inferred, builder, GraphIndex(inferred, builder)


def list_targets(model: ModelLike, score: str = "auto") -> list[TargetInfo]:
    """Return the candidate targets (4-D maps of any layout and ViT token tensors [N,T,C]) that influence the
    score, in graph order, with layout, grid and the one target='auto' picks."""
    _, _, index = _analyse(load_model(model))
    score_tensor, _ = _find_score(index, score, seed=True)  # any model: a detector's only output too
    return list_candidates(index, score_tensor)


Targets = Union[str, Sequence[str]]


def augment(model: ModelLike, target: Targets = "auto", score: str = "auto",
            output: Optional[Union[str, os.PathLike]] = None, heatmap: bool = False,
            preprocess: Optional[dict] = None, input_gradient: bool = False,
            guided: bool = False, seed: bool = False, input_shape: Optional[Sequence[int]] = None,
            target_layout: Optional[str] = None) -> onnx.ModelProto:
    """Return a copy of model that also outputs the target activation, its gradient, class and score.

    target: tensor name, "auto" (the deepest spatial feature map before the spatial collapse), or a
        list of tensor names (multi-layer maps: gradcam_activation, gradcam_activation_1, ...).
    score: "auto" (pre-softmax logits), "probability" (the softmax output) or any tensor name.
    heatmap: also compute gradcam_heatmap [N,H,W] in the graph with standard ONNX ops.
    preprocess: image preprocessing spec recorded in the metadata for raw-image inputs.
    input_gradient: also output gradcam_input_gradient, d score / d image [N,C,H,W], through the
        whole network (saliency, SmoothGrad, integrated gradients).
    guided: also output gradcam_guided_gradient, the same with guided-backpropagation ReLUs.
    seed: differentiate sum(gradcam_seed * score) for a float input gradcam_seed shaped like the
        score tensor (any objective linear in that output: a box, a mask, an embedding) instead of
        one class's logit; the model then has no gradcam_target_class input.
    input_shape: the image input's per-image shape in its own layout, e.g. (3, 224, 224) for NCHW,
        to specialize a model with dynamic height and width (the batch stays dynamic).
    target_layout: "NCHW" or "NHWC" when the target's layout cannot be read from the graph.
    """
    original = load_model(model)
    if any(p.key == METADATA_PREFIX + "target" for p in original.metadata_props):
        raise GradCamError("this model is already augmented (it has gradcam_* outputs); "
                           "pass the original model to augment it again")
    # The reverse pass needs opset-11 ops (Range, GatherElements, ScatterElements, Pad with inputs).
    original = _at_least_opset(original, 11)
    if input_shape is not None:
        original = specialize_input(original, input_shape)
    analysis = _analyse(original)
    # The score is found on the graph as exported: a conversion below may wrap the Softmax in reshapes.
    score_tensor, score_output = _find_score(analysis[2], score, seed)
    options = dict(target=target, score=(score_tensor, score_output), heatmap=heatmap, preprocess=preprocess,
                   input_gradient=input_gradient, guided=guided, seed=seed, target_layout=target_layout)
    try:
        result = _augment(original, analysis, **options)
    except OpsetTooLowError as error:
        # A rule needs newer ops: the same graph converted up computes bit-identical outputs.
        converted = _at_least_opset(original, error.needed, str(error))
        result = _augment(converted, _analyse(converted), **options)
    _check(result)
    if output is not None:
        save_model(result, output)
    return result


def _at_least_opset(model: onnx.ModelProto, version: int, why: str = "") -> onnx.ModelProto:
    """model converted to opset `version` when it is older (onnx.version_converter)."""
    opset = _opset(model)
    if opset >= version:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, version)
    except Exception as error:
        reason = f" ({why})" if why else ""
        raise GradCamError(f"the model uses opset {opset}; augmenting it needs opset >= {version}{reason} and the "
                           f"ONNX version converter failed ({error}); re-export with opset >= {version}") from error
    # The converter records shapes it inferred, from input dims such as -1 where they are unknown.
    del converted.graph.value_info[:]
    if opset < 11:
        _keep_asymmetric_resize(converted)
    return converted


def _keep_asymmetric_resize(model: onnx.ModelProto) -> None:
    """Give Resize nodes converted from Upsample / Resize-10 their original sampling back.

    Before opset 11 both sample asymmetrically (x_in = x_out / scale, nearest rounds down); the version
    converter writes Resize-11 with its default half-pixel coordinates, a different function.
    """
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        kept = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend([helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                               helper.make_attribute("nearest_mode", "floor")])


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def specialize_input(model: onnx.ModelProto, input_shape: Sequence[int]) -> onnx.ModelProto:
    """A copy of model whose image input has this fixed per-image shape (the batch stays as it was)."""
    image = image_input(model)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    (value,) = [v for v in result.graph.input if v.name == image]
    dims = value.type.tensor_type.shape.dim
    wanted = [int(d) for d in input_shape]
    if len(dims) != len(wanted) + 1 or any(d <= 0 for d in wanted):
        raise InputError(f"input_shape {tuple(input_shape)} does not fit the input {image!r} of rank {len(dims)}: "
                         f"give the {len(dims) - 1} dims after the batch axis, in the model's own layout")
    for dim, size in zip(list(dims)[1:], wanted):
        if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
            raise InputError(f"input_shape {tuple(input_shape)} conflicts with the fixed input shape of {image!r}")
        dim.Clear()
        dim.dim_value = size
    # Shapes recorded for the dynamic model would contradict the specialized ones.
    del result.graph.value_info[:]
    return result


def _augment(original: onnx.ModelProto, analysis: tuple, target: Targets, score: tuple[str, str], heatmap: bool,
             preprocess, input_gradient: bool, guided: bool, seed: bool, target_layout: Optional[str]) -> onnx.ModelProto:
    _, b, index = analysis
    score_tensor, score_output = score
    names = [target] if isinstance(target, str) else list(target)
    if not names or (len(names) > 1 and "auto" in names):
        raise TargetNotFoundError("target must be a tensor name, 'auto', or a non-empty list of tensor names")
    layout_hint = {"layout": target_layout} if target_layout else {}
    targets = [choose_target(index, score_tensor, name, **layout_hint) for name in names]
    if seed and names == ["auto"]:
        # Any objective of the score: each branch that feeds it (a detector's scales) gets its own map.
        targets = branch_targets(index, score_tensor) or targets
    new_inputs, exposed = [], {}
    if seed:
        seed_tensor = SEED
        new_inputs.append(helper.make_tensor_value_info(SEED, b.dtype(score_tensor), b.shapes.get(score_tensor)))
        weighted = b.op("Flatten", b.op("Mul", SEED, score_tensor), axis=1)
        exposed[SCORE] = b.reduce("ReduceSum", weighted, [1], keepdims=0)
    else:
        chosen_class = _class_selection(new_inputs, b, score_tensor)
        seed_tensor = b.cast(b.op("Equal", b.unsqueeze(chosen_class, [1]), b.op(
            "Range", b.const(0, np.int64), b.op("Gather", b.shape(score_tensor), b.const(1, np.int64)),
            b.const(1, np.int64))), b.dtype(score_tensor))
        chosen_score = b.op("GatherElements", score_tensor, b.unsqueeze(chosen_class, [1]), axis=1)
        exposed[CLASS] = chosen_class
        exposed[SCORE] = b.op("Reshape", chosen_score, b.const([-1], np.int64))
    exposed[LOGITS] = score_tensor
    image = image_input(index.model)
    sources = [info.name for info in targets] + ([image] if input_gradient else [])
    gradients = _backpropagate(index, b, sources, score_tensor, seed_tensor)
    maps = []
    for number, (info, gradient) in enumerate(zip(targets, gradients)):
        activation_out, gradient_out = to_nchw(b, info, info.name), to_nchw(b, info, gradient)
        exposed[numbered(ACTIVATION, number)] = activation_out
        exposed[numbered(GRADIENT, number)] = gradient_out
        maps.append((activation_out, gradient_out))
    if heatmap:
        exposed[HEATMAP] = _in_graph_heatmap(b, index, maps)
    image_layout = index.layouts.get(image, "NCHW")
    if input_gradient:
        exposed[INPUT_GRADIENT] = _as_nchw(b, gradients[-1], image_layout)
    if guided:
        (guided_gradient,) = _backpropagate(index, b, [image], score_tensor, seed_tensor, rules=GUIDED_RULES)
        exposed[GUIDED_GRADIENT] = _as_nchw(b, guided_gradient, image_layout)
    result = onnx.ModelProto()
    result.CopyFrom(original)
    graph = result.graph
    graph.input.extend(new_inputs)
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.initializers)
    graph.value_info.extend(b.value_info.values())
    batch = b.shapes.get(score_tensor, [None])[0]
    image_shape = _nchw_shape(b.shapes.get(image) or [batch, None, None, None], image_layout)
    shapes = {LOGITS: b.shapes.get(score_tensor), HEATMAP: [batch, None, None], INPUT_GRADIENT: image_shape,
              GUIDED_GRADIENT: image_shape}
    for number, info in enumerate(targets):
        shapes[numbered(ACTIVATION, number)] = shapes[numbered(GRADIENT, number)] = nchw_shape(info)
    for name, source in exposed.items():
        graph.node.append(helper.make_node("Identity", [source], [name], name=f"gradcam/{name}"))
        dtype = {CLASS: TensorProto.INT64, HEATMAP: TensorProto.FLOAT}.get(name, b.dtype(source))
        graph.output.append(helper.make_tensor_value_info(name, dtype, shapes.get(name, [batch])))
    _record_metadata(result, targets, score_tensor, score_output, index, preprocess,
                     {"heatmap": heatmap, "input_gradient": input_gradient, "guided": guided, "seed": seed})
    if input_gradient or guided:
        kept = kept_bytes_per_image(b, {t.name for t in original.graph.initializer}, probe_batch_shapes(original))
        if kept is not None:
            result.metadata_props.add(key=METADATA_PREFIX + "backward_bytes_per_image", value=str(kept))
    return result


def numbered(name: str, number: int) -> str:
    """The output name of the number-th target: gradcam_activation, gradcam_activation_1, ..."""
    return name if number == 0 else f"{name}_{number}"


def _find_score(index: GraphIndex, score: str, seed: bool) -> tuple[str, str]:
    """find_score; with a seed, a model without [batch, classes] output scores its only float output."""
    try:
        return find_score(index, score)
    except ScoreNotFoundError:
        floats = [o.name for o in index.model.graph.output if index.is_float(o.name)]
        if not seed or score != "auto" or len(floats) != 1:
            raise
        return floats[0], floats[0]


def _class_selection(new_inputs: list, b: GraphBuilder, score_tensor: str) -> str:
    """Add the gradcam_target_class input; return the chosen class per image (-1 -> top class)."""
    batch = b.shapes.get(score_tensor, [None])[0]
    new_inputs.append(helper.make_tensor_value_info(TARGET_CLASS, TensorProto.INT64, [batch]))
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


def kept_bytes_per_image(b: GraphBuilder, weights: set[str], probe: GraphBuilder) -> Optional[int]:
    """Bytes per image of the forward tensors the reverse pass reads (None when a size is dynamic or unknown).

    ONNX Runtime keeps each of them from the forward pass until the reverse pass consumes it, so this is
    what a full-network backward costs in memory beyond plain inference. probe: the shapes for a batch of
    PROBE_BATCH images (batch_probe), which tell the tensors with a row per image from shapes and scalars.
    """
    produced = {name for node in b.nodes for name in node.output}
    constants = weights | {t.name for t in b.initializers}
    read = {name for node in b.nodes for name in node.input
            if name and name not in produced and name not in constants and name not in (TARGET_CLASS, SEED)}
    total = 0
    for name in read:
        shape = probe.shapes.get(name)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        if not any(d % PROBE_BATCH == 0 for d in shape if d):
            continue  # shapes, scalars and weights computed in the graph: not per image
        # The batch is not always the first axis (torch's MultiheadAttention works on [T, N, C]) and may be
        # merged with another (N * heads): the images' share is the elements over PROBE_BATCH.
        itemsize = helper.tensor_dtype_to_np_dtype(probe.dtypes.get(name) or b.dtype(name)).itemsize
        total += int(np.prod(shape, dtype=np.int64)) // PROBE_BATCH * itemsize
    return total


def _in_graph_heatmap(b: GraphBuilder, index: GraphIndex, maps: list[tuple[str, str]]) -> str:
    """Grad-CAM heatmap [N,H,W] in [0,1] with standard ONNX ops (resize to the image input size).

    Several targets: the mean of their maps, each normalized and resized, then normalized (as
    pytorch-grad-cam does for a list of target layers).
    """
    image = image_input(index.model)
    layout = index.layouts.get(image, "NCHW")
    start = 1 if layout == "NHWC" else 2
    image_size = b.slice(b.shape(image), [start], [start + 2], [0])
    # Resize-11/12 require the roi and scales inputs, later opsets accept them empty.
    unused = b.const(np.zeros(0, np.float32)) if b.opset < 13 else ""
    resized_maps = []
    for activation, gradient in maps:
        weights = b.reduce("ReduceMean", gradient, [2, 3], keepdims=1)
        cam = b.op("Relu", b.reduce("ReduceSum", b.op("Mul", weights, activation), [1], keepdims=1))
        cam = _min_max(b, b.cast(cam, TensorProto.FLOAT))
        sizes = b.op("Concat", b.slice(b.shape(cam), [0], [2], [0]), image_size, axis=0)
        resized = b.op("Resize", cam, unused, unused, sizes, mode="linear",
                       coordinate_transformation_mode="half_pixel")
        resized_maps.append(resized)
    if len(resized_maps) > 1:
        resized_maps = [b.op("Div", b.op("Sum", *resized_maps), b.const(np.float32(len(resized_maps))))]
    return b.squeeze(_min_max(b, resized_maps[0]), [1])


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
    inputs = [i.name for i in model.graph.input if i.name not in initializers and i.name not in (TARGET_CLASS, SEED)]
    return inputs[0]


def _record_metadata(model, targets, score_tensor, score_output, index, preprocess, flags) -> None:
    image = image_input(index.model)
    image_shape = index.builder.shapes.get(image)
    target_info = targets[0]
    values = {
        "target": target_info.name, "target_layout": target_info.layout,
        "target_shape": json.dumps(list(target_info.shape)),
        "targets": json.dumps([info.name for info in targets]),
        "score_shape": json.dumps(index.builder.shapes.get(score_tensor)),
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
        if "deprecated" in str(error):  # e.g. GroupNormalization-18, which exporters still emit
            return
        raise GradCamError(f"the augmented model failed onnx.checker: {error}") from error


def augmented_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The gradcam_* metadata of an augmented model (prefix stripped); empty for a plain model."""
    return {p.key[len(METADATA_PREFIX):]: p.value for p in model.metadata_props
            if p.key.startswith(METADATA_PREFIX)}
