"""Making a model ready for a method and a task: augment a plain one for them, check an augmented one serves
them, resolve the preprocessing. The CLI, the audit and the Explainer all go through prepare_model."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

import onnx

from .cam.methods import AUGMENT_FLAGS, Method, get_method
from .errors import InputError, NotAugmentedError
from .graph.augment import augment, augmented_metadata, image_input
from .graph.builder import GraphBuilder
from .graph.io import ModelLike, load_model
from .graph.locate import GraphIndex
from .preprocess import Preprocess, parse_preprocess

PreprocessLike = Union[None, str, dict, Preprocess]
Targets = Union[str, Sequence[str]]
# What a model does, hence what it is augmented to explain: classes (gradcam_target_class), or any
# output through a gradient seed (boxes, masks, embeddings; onnx_gradcam.tasks).
TASKS = ("classify", "detect", "segment", "embed")
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class PreparedModel:
    """An augmented model that serves the method, its preprocessing (None: none known) and what was done."""

    model: onnx.ModelProto
    preprocess: Optional[Preprocess]
    notes: list[str] = field(default_factory=list)  # one line per thing done on the caller's behalf


def prepare_model(model: ModelLike, method: Union[str, Method], target: Targets = "auto",
                  preprocess: PreprocessLike = None, *, augment_plain: bool = True,
                  imagenet_fallback: bool = True, task: str = "classify", score: str = "auto",
                  input_size: Optional[Sequence[int]] = None) -> PreparedModel:
    """Return the augmented model for method and task, its preprocessing and notes on what was done to get them.

    A plain model is augmented at target (a name, "auto" or a list of names) with the flags the method
    needs (augment_plain), or refused with NotAugmentedError. task "classify" explains classes; "detect",
    "segment" and "embed" augment with seed=True at score ("auto": the model's only float output).
    input_size=(H, W) specializes a model with dynamic height and width when it is augmented.
    Preprocessing: the given spec ('imagenet', 'none', JSON text or file, dict), else the one the model
    records, else (imagenet_fallback) /255 for detect (YOLO's convention) and ImageNet mean/std otherwise.
    """
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    entry = get_method(method)
    proto = load_model(model)
    notes = []
    metadata = augmented_metadata(proto)
    if "target" not in metadata:
        if not augment_plain:
            raise NotAugmentedError(
                "this is a plain ONNX model without gradcam_* outputs; augment it first: "
                "Explainer(onnx_gradcam.augment(model)) or `onnx-gradcam augment MODEL -o OUT`")
        proto = _augment_for_task(proto, entry, target, task, score, input_size, notes,
                                  os.fspath(model) if isinstance(model, (str, os.PathLike)) else "the model")
    elif task != "classify" and metadata.get("seed") != "true":
        raise InputError(f"task {task!r} needs a model augmented with a gradient seed; this one explains classes: "
                         "give the plain model, or augment it with `onnx-gradcam augment MODEL -o OUT --seed` "
                         "(onnx_gradcam.augment(model, seed=True))")
    require_outputs(entry, (output.name for output in proto.graph.output))
    resolved = parse_preprocess(preprocess)
    metadata = augmented_metadata(proto)
    if resolved is None and "preprocess" in metadata:
        resolved = Preprocess.from_dict(json.loads(metadata["preprocess"]))
    if resolved is None and imagenet_fallback:
        resolved = _fallback_preprocess(task, notes)
    recorded = _recorded_image_size(proto)
    if resolved is not None and resolved.size is None and recorded is not None:
        resolved = Preprocess.from_dict({**resolved.to_dict(), "size": list(recorded)})
        notes.append(f"images are resized to {recorded[0]}x{recorded[1]}, the size the model records (imgsz)")
    return PreparedModel(proto, resolved, notes)


def _recorded_image_size(proto: onnx.ModelProto) -> Optional[tuple[int, int]]:
    """(H, W) an exporter recorded in the metadata (Ultralytics' imgsz: "[640, 640]" or "640"), else None."""
    value = next((p.value for p in proto.metadata_props if p.key == "imgsz"), None)
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    sizes = [parsed, parsed] if isinstance(parsed, int) else parsed
    if not isinstance(sizes, list) or len(sizes) != 2 or not all(isinstance(v, int) and v > 0 for v in sizes):
        return None
    return int(sizes[0]), int(sizes[1])


def _augment_for_task(proto: onnx.ModelProto, entry: Method, target: Targets, task: str, score: str,
                      input_size: Optional[Sequence[int]], notes: list[str], name: str) -> onnx.ModelProto:
    """proto augmented for the method and the task, with a note saying so."""
    seed = task != "classify"
    if seed:
        score = task_score(proto, score)
    input_shape = None if input_size is None else input_shape_for(proto, *input_size)
    shown = target if isinstance(target, str) else ", ".join(target)
    notes.append(f"{name} is a plain model: augmenting it (target {shown}"
                 + (f", score {score}, seed" if seed else "") + ")")
    return augment(proto, target=target, score=score, seed=seed, input_shape=input_shape, **entry.augment_flags)


def _fallback_preprocess(task: str, notes: list[str]) -> Preprocess:
    """The preprocessing used when neither the caller nor the model gives one."""
    if task == "detect":
        notes.append("the model records no preprocessing: using RGB / 255 as YOLO detectors expect "
                     "(pass --preprocess to change)")
        return Preprocess()
    notes.append("the model records no preprocessing: using ImageNet mean/std (pass --preprocess to change)")
    return Preprocess.imagenet()


def task_score(model: ModelLike, score: str = "auto") -> str:
    """The score tensor for a seeded task: score itself, or for "auto" the model's only float output."""
    if score != "auto":
        return score
    proto = load_model(model)
    floats = [output.name for output in proto.graph.output if output.type.tensor_type.elem_type in _FLOAT_TYPES]
    if len(floats) != 1:
        raise InputError(f"the model has {len(floats)} float outputs ({', '.join(floats) or 'none'}); name the one to "
                         "explain with --score NAME (score=NAME), e.g. the raw detection head before NMS")
    return floats[0]


def input_shape_for(model: ModelLike, height: int, width: int) -> tuple[int, int, int]:
    """The per-image input shape for an H x W image in the model's own layout: (C, H, W) or (H, W, C)."""
    proto = load_model(model)
    name = image_input(proto)
    index = GraphIndex(proto, GraphBuilder(proto))
    dims = index.builder.shapes.get(name) or []
    if len(dims) != 4:
        raise InputError(f"--input-size needs a 4-D image input; {name!r} has shape {dims or 'unknown'}")
    layout = index.layouts.get(name, "NCHW")
    channels = dims[3] if layout == "NHWC" else dims[1]
    if not isinstance(channels, int) or channels <= 0:
        raise InputError(f"the input {name!r} {dims} has no fixed channel count; pass the full per-image shape "
                         "to onnx_gradcam.augment(model, input_shape=...) instead")
    if int(height) <= 0 or int(width) <= 0:
        raise InputError(f"input size must be positive, got {height}x{width}")
    return (int(height), int(width), channels) if layout == "NHWC" else (channels, int(height), int(width))


def require_outputs(method: Union[str, Method], outputs: Iterable[str]) -> None:
    """Raise InputError naming the augment flags when an augmented model lacks outputs the method reads."""
    entry, available = get_method(method), set(outputs)
    missing = [output for output in entry.outputs if output not in available]
    if not missing:
        return
    flags = [AUGMENT_FLAGS[output] for output in missing if output in AUGMENT_FLAGS]
    if len(flags) < len(missing):
        raise NotAugmentedError(f"method {entry.name!r} reads {', '.join(missing)}, which this model lacks; "
                                "augment the original model again with onnx_gradcam.augment")
    options = " ".join("--" + flag.replace("_", "-") for flag in flags)
    keywords = ", ".join(f"{flag}=True" for flag in flags)
    raise InputError(f"method {entry.name!r} needs a model augmented with {options} ({keywords}): run "
                     f"`onnx-gradcam augment PLAIN_MODEL -o OUT {options}`, call onnx_gradcam.augment(model, "
                     f"{keywords}), or give the explain and audit commands the plain model")
