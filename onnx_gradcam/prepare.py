"""Making a model ready for a method: augment a plain one for it, check an augmented one serves it, resolve
the preprocessing. The CLI, the audit and the Explainer all go through prepare_model."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

import onnx

from .cam.methods import AUGMENT_FLAGS, Method, get_method
from .errors import InputError, NotAugmentedError
from .graph.augment import augment, augmented_metadata
from .graph.io import ModelLike, load_model
from .preprocess import Preprocess, parse_preprocess

PreprocessLike = Union[None, str, dict, Preprocess]


@dataclass
class PreparedModel:
    """An augmented model that serves the method, its preprocessing (None: none known) and what was done."""

    model: onnx.ModelProto
    preprocess: Optional[Preprocess]
    notes: list[str] = field(default_factory=list)  # one line per thing done on the caller's behalf


def prepare_model(model: ModelLike, method: Union[str, Method], target: str = "auto",
                  preprocess: PreprocessLike = None, *, augment_plain: bool = True,
                  imagenet_fallback: bool = True) -> PreparedModel:
    """Return the augmented model for method, its preprocessing and notes on what was done to get them.

    A plain model is augmented at target with the flags the method needs (augment_plain), or refused with
    NotAugmentedError. Preprocessing: the given spec ('imagenet', 'none', JSON text or file, dict), else the
    one the model records, else ImageNet mean/std (imagenet_fallback) or None.
    """
    entry = get_method(method)
    proto = load_model(model)
    notes = []
    if "target" not in augmented_metadata(proto):
        if not augment_plain:
            raise NotAugmentedError(
                "this is a plain ONNX model without gradcam_* outputs; augment it first: "
                "Explainer(onnx_gradcam.augment(model)) or `onnx-gradcam augment MODEL -o OUT`")
        name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "the model"
        notes.append(f"{name} is a plain model: augmenting it (target {target})")
        proto = augment(proto, target=target, **entry.augment_flags)
    require_outputs(entry, (output.name for output in proto.graph.output))
    resolved = parse_preprocess(preprocess)
    metadata = augmented_metadata(proto)
    if resolved is None and "preprocess" in metadata:
        resolved = Preprocess.from_dict(json.loads(metadata["preprocess"]))
    if resolved is None and imagenet_fallback:
        notes.append("the model records no preprocessing: using ImageNet mean/std (pass --preprocess to change)")
        resolved = Preprocess.imagenet()
    return PreparedModel(proto, resolved, notes)


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
