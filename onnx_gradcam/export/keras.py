"""Keras 3 model (torch backend, no TensorFlow) -> ONNX with the target layer exposed -> augmented model.

As in the Keras Grad-CAM example, a two-output model `Model(inputs, [layer.output, *outputs])` is
built; on the torch backend a Keras model is a torch.nn.Module, so it is exported by torch.onnx
(TorchScript, or the dynamo exporter for models TorchScript cannot trace, such as those with
LayerNormalization; dynamic batch, named outputs), and `augment` differentiates back to the
layer's tensor. Keras's own `model.export(format="onnx")` is not used: it names no outputs and
fixes the batch size for models it hands to the dynamo exporter. Keras knows the layout of every
layer's output (`data_format`, channels-last by default) where the graph may not (a Concatenate or
ZeroPadding2D output is just a 4-D tensor), so it is passed to augment, which exposes NCHW maps.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import onnx

from ..errors import ExportError, TargetNotFoundError
from ..graph.augment import augment
from . import LayerOutput, check_target_output, close_names, finish, first_line, format_shape, listing, preprocess_spec

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
ModelOrPath = Union[Any, str, os.PathLike]


def export_keras(model_or_path: ModelOrPath, target: Union[str, Any] = "auto",
                 path: Optional[Union[str, os.PathLike]] = None, preprocess: Any = None, *,
                 input_shape: Optional[Sequence[int]] = None, opset: Optional[int] = None,
                 dynamic_batch: bool = True, heatmap: bool = False, custom_objects: Optional[dict] = None,
                 safe_mode: bool = True) -> onnx.ModelProto:
    """Return the augmented ONNX model of a Keras classifier explained at target (saved to path when given).

    model_or_path: a functional or Sequential keras.Model, or a `.keras` / `.h5` file.
    target: a layer name ("conv5_block3_out", "max_pooling2d_1"), the layer itself, or "auto" (the last
        4-D layer before the spatial collapse).
    input_shape: the image size to export at, (H, W, C) or (N, H, W, C), for models whose input
        size is not fixed; the batch stays dynamic unless dynamic_batch=False.
    preprocess: dict or Preprocess recorded in the metadata; size and layout are filled in.
    heatmap: also compute gradcam_heatmap in the graph.
    custom_objects, safe_mode: passed to keras.saving.load_model for files.

    The TorchScript exporter is tried first, the dynamo exporter where it fails (LayerNormalization);
    the model's `gradcam_exporter` metadata names the one used.
    """
    keras = _import_keras()
    model = _load(keras, model_or_path, custom_objects, safe_mode)
    image_input, outputs = _graph_ends(model)
    tensors = _graph_tensors(model)
    layers = _layer_outputs(keras, model, tensors)
    layer = _auto_target(layers, model) if _is_auto(target) else _resolve_target(model, target, layers)
    layer_output = tensors.get(id(layer))
    if layer_output is None:
        raise TargetNotFoundError(f"layer {layer.name!r} has no single output tensor on the path to the "
                                  "predictions; pick a layer with one output")
    try:
        two_output = keras.Model(model.inputs, [layer_output, *outputs], name=f"{model.name}_gradcam")
    except Exception as error:
        raise ExportError(f"cannot build the model that returns layer {layer.name!r} beside the predictions: "
                          f"{type(error).__name__}: {first_line(error)}") from error
    sample = _sample_input(model, image_input, input_shape)
    activation, scores = _run(two_output, sample)
    target_info = LayerOutput(layer.name, type(layer).__name__, tuple(activation.shape), _layout(keras, model, layer))
    check_target_output(target_info, "layer", [*_concrete(layers, layer, target_info)])
    if scores.dim() != 2:
        raise ExportError(f"the model's first output has shape {format_shape(scores.shape)}; Grad-CAM needs a "
                          "classifier whose first output is [N, classes] scores")

    input_name = _input_name(image_input)
    output_names = _output_names(model, exclude={input_name, layer.name})
    from .torch import export_onnx  # a Keras model on the torch backend is a torch.nn.Module

    two_output.eval()
    exported, exporter = export_onnx(two_output, sample, input_name, [layer.name, *output_names], dynamic_batch,
                                     opset)
    layout = "NHWC" if _image_data_format(keras, model) == "channels_last" else "NCHW"
    size = tuple(sample.shape[1:3]) if layout == "NHWC" else tuple(sample.shape[2:4])
    channels = int(sample.shape[3] if layout == "NHWC" else sample.shape[1])
    augmented = augment(exported, target=layer.name, target_layout=target_info.layout, heatmap=heatmap,
                        preprocess=preprocess_spec(preprocess, size, channels, layout))
    info = {"framework": "keras", "keras": keras.__version__, "backend": keras.backend.backend(),
            "model": model.name, "target_layer": layer.name, "input_shape": list(sample.shape)}
    return finish(augmented, layer.name, info, exporter, None if path is None else os.fspath(path))


def list_keras_targets(model_or_path: ModelOrPath, *, custom_objects: Optional[dict] = None,
                       safe_mode: bool = True) -> list[LayerOutput]:
    """Return the layers with a 4-D output (symbolic shapes, None where unknown), in graph order."""
    keras = _import_keras()
    model = _load(keras, model_or_path, custom_objects, safe_mode)
    _graph_ends(model)
    return [info for info, _ in _layer_outputs(keras, model, _graph_tensors(model)) if len(info.shape) == 4]


# ---------------------------------------------------------------- keras and the model

def _import_keras():
    """Import Keras 3 on the torch backend (chosen here when the caller has not imported keras yet)."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as error:
        raise ExportError(f"Keras 3 with the torch backend is needed to export Keras models ({error}); "
                          "install it with: pip install 'onnx-gradcam[keras]'") from error
    if not keras.__version__.startswith("3."):
        raise ExportError(f"Keras {keras.__version__} is installed; export_keras needs Keras 3 "
                          "(pip install 'keras>=3.10,<4')")
    if keras.backend.backend() != "torch":
        raise ExportError(f"Keras runs on the {keras.backend.backend()!r} backend; export_keras needs the torch "
                          "backend: set KERAS_BACKEND=torch before keras is first imported")
    return keras


def _load(keras, model_or_path: ModelOrPath, custom_objects: Optional[dict], safe_mode: bool):
    if isinstance(model_or_path, (str, os.PathLike)):
        file = Path(model_or_path)
        if file.is_dir():
            raise ExportError(f"{file} is a folder (a TensorFlow SavedModel?); Keras 3 on the torch backend loads "
                              f"{' / '.join(KERAS_SUFFIXES)} files: re-save the model with model.save('model.keras')")
        if not file.is_file():
            raise ExportError(f"Keras model file not found: {file}")
        if file.suffix.lower() not in KERAS_SUFFIXES:
            raise ExportError(f"{file} is not a Keras model file; expected one of {', '.join(KERAS_SUFFIXES)}")
        try:
            model = keras.saving.load_model(file, custom_objects=custom_objects, compile=False,
                                            safe_mode=safe_mode)
        except Exception as error:
            raise ExportError(f"Keras could not load {file}: {type(error).__name__}: {first_line(error)}"
                              + (" (legacy .h5 files from TensorFlow 2 Keras load only when Keras 3 knows all "
                                 "their layers; pass custom_objects for custom ones)"
                                 if file.suffix.lower() != ".keras" else "")) from error
    else:
        model = model_or_path
    if not isinstance(model, keras.Model):
        raise ExportError(f"export_keras needs a keras.Model or a model file, got {type(model).__name__}")
    return model


def _graph_ends(model) -> tuple[Any, list]:
    """(the single image input, the outputs) of a functional or Sequential model, or a clear error."""
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError) as error:
        raise ExportError(f"model {model.name!r} has no layer graph to take the target output from "
                          f"({first_line(error)}); subclassed models cannot be split by layer: build it with "
                          "the functional API, or keras.Sequential starting with keras.Input") from error
    if not inputs or not outputs:
        raise ExportError(f"model {model.name!r} has no inputs or outputs yet; build it with keras.Input(...) "
                          "as its first layer (or call it once) before exporting")
    if len(inputs) != 1:
        raise ExportError(f"model {model.name!r} has {len(inputs)} inputs "
                          f"({', '.join(str(getattr(i, 'name', '?')) for i in inputs)}); Grad-CAM export takes "
                          "models with one image input: build a model that takes the image only")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        raise ExportError(f"model {model.name!r} takes input of shape {format_shape(shape)}; Grad-CAM explains "
                          "image models whose input is a 4-D batch [N, H, W, C] (non-image models have no "
                          "spatial activation to localize)")
    return inputs[0], outputs


def _layer_outputs(keras, model, tensors: dict[int, Any]) -> list[tuple[LayerOutput, Any]]:
    """(symbolic output info, layer) for each layer of the model graph, in graph order."""
    result = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        output = tensors.get(id(layer))
        shape = tuple(output.shape) if output is not None and hasattr(output, "shape") else ()
        result.append((LayerOutput(layer.name, type(layer).__name__, shape, _layout(keras, model, layer)), layer))
    return result


def _graph_tensors(model) -> dict[int, Any]:
    """id(layer) -> the layer's output tensor in the graph that computes model.outputs.

    Walks back from the outputs rather than reading `layer.output`, which is the layer's first
    call: a loaded Sequential model has been built several times, and only its last build feeds
    model.outputs. A layer called twice maps to its last call; a multi-output layer is left out.
    """
    tensors: dict[int, Any] = {}
    seen: set[int] = set()
    stack = list(model.outputs)
    while stack:
        tensor = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if id(tensor) in seen or not history:
            continue
        seen.add(id(tensor))
        operation, node_index, _ = history
        node = operation._inbound_nodes[node_index]
        if len(node.output_tensors) == 1:
            tensors.setdefault(id(operation), tensor)
        stack.extend(node.input_tensors)
    return tensors


def _layout(keras, model, layer) -> str:
    """How the layer's 4-D output is laid out: its data_format, else the model's.

    Layers without a data_format (Concatenate, Add, Multiply, LayerNormalization, Activation) keep
    the layout of the convolutions around them.
    """
    data_format = getattr(layer, "data_format", None) or _image_data_format(keras, model)
    return "NCHW" if data_format == "channels_first" else "NHWC"


def _image_data_format(keras, model) -> str:
    formats = [getattr(layer, "data_format", None) for layer in model.layers]
    return next((f for f in formats if f in ("channels_first", "channels_last")), keras.config.image_data_format())


def _is_auto(target: Any) -> bool:
    return isinstance(target, str) and target == "auto"


def _resolve_target(model, target: Any, layers: list[tuple[LayerOutput, Any]]):
    candidates = [info for info, _ in layers]
    by_name = {info.name: layer for info, layer in layers}
    if isinstance(target, str):
        if target in by_name:
            return by_name[target]
        nested = _nested_owner(model, target)
        if nested is not None:
            raise TargetNotFoundError(
                f"layer {target!r} is inside the nested model {nested!r}, whose layers are not reachable from "
                f"{model.name!r}'s input; build one functional model whose graph holds that layer, e.g. "
                f"keras.Model(base.input, head(base.output)) with base = the {nested!r} model, and export that")
        close = close_names(target, list(by_name))
        hint = f" Did you mean {close}?" if close else ""
        raise TargetNotFoundError(f"model {model.name!r} has no layer named {target!r}.{hint} "
                                  f"Layers with a 4-D output:\n{listing(candidates)}")
    for info, layer in layers:
        if layer is target:
            return layer
    raise TargetNotFoundError(f"target must be 'auto', a layer name or a layer of model {model.name!r}, "
                              f"got {type(target).__name__} {getattr(target, 'name', '')!r}")


def _auto_target(layers: list[tuple[LayerOutput, Any]], model):
    spatial = [layer for info, layer in layers if info.spatial]
    if not spatial:
        raise TargetNotFoundError(f"model {model.name!r} has no layer with a 4-D output with spatial extent, "
                                  "so there is nothing to localize (is it an image CNN?)")
    return spatial[-1]


def _nested_owner(model, name: str) -> Optional[str]:
    for layer in model.layers:
        inner = getattr(layer, "layers", None)
        if inner and (any(sub.name == name for sub in inner) or _nested_owner(layer, name)):
            return layer.name
    return None


def _concrete(layers: list[tuple[LayerOutput, Any]], target_layer, target_info: LayerOutput) -> list[LayerOutput]:
    """Layer infos for error listings, with the target's concrete shape in place of its symbolic one."""
    return [target_info if layer is target_layer else info for info, layer in layers]


# ---------------------------------------------------------------- running and exporting

def _sample_input(model, image_input, input_shape: Optional[Sequence[int]]):
    import torch

    shape = list(image_input.shape)
    if input_shape is not None:
        given = [int(d) for d in input_shape]
        if len(given) == len(shape) - 1:
            given = [1, *given]
        if len(given) != len(shape) or any(d is not None and d != g for d, g in zip(shape[1:], given[1:])):
            raise ExportError(f"input_shape {given} does not fit model {model.name!r}'s input "
                              f"{format_shape(shape)}")
        shape = given
    shape[0] = shape[0] or 1
    if any(d is None for d in shape):
        raise ExportError(f"model {model.name!r} takes input {format_shape(shape)} with no fixed image size; "
                          "pass input_shape=(H, W, C) to export it at one size")
    dtype = getattr(image_input, "dtype", "float32")
    if "float" not in str(dtype):
        raise ExportError(f"model {model.name!r} takes {dtype} input; Grad-CAM explains image models with a "
                          "float image input")
    generator = np.random.default_rng(0)
    return torch.from_numpy(generator.random(shape, dtype=np.float32))


def _run(two_output, sample) -> tuple:
    """(target activation, first model output) of the two-output model on sample."""
    import torch

    try:
        with torch.no_grad():
            results = two_output(sample, training=False)
    except Exception as error:
        raise ExportError(f"running the model on an input of shape {format_shape(sample.shape)} failed: "
                          f"{type(error).__name__}: {first_line(error)}") from error
    return results[0], results[1]


def _input_name(image_input) -> str:
    name = str(getattr(image_input, "name", "") or "")
    return "input" if not name or name.startswith("keras_tensor") else name


def _output_names(model, exclude: set[str]) -> list[str]:
    """The model's output names (layer names for Sequential models), unique and apart from exclude."""
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(model.outputs):
        history = [getattr(output, "_keras_history", None) for output in model.outputs]
        names = [getattr(h[0], "name", "") if h else "" for h in history]
    result: list[str] = []
    for index, name in enumerate(names):
        result.append(name if name and name not in exclude and name not in result else f"output_{index}")
    return result
