"""The method registry: what each explanation method needs, its options, its NumPy implementation, its kernel.

One entry per method, registered where its math lives (cam/reference.py: the contract table; cam/eigen.py;
cam/attribution.py; cam/gradient_free.py). The CLI, the audit, the Explainer and the fused kernel read
entries; nothing else tests a method's name. An entry's needs are data, checked once when it is registered.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..errors import GradCamError, InputError
from ..graph.augment import ACTIVATION, GRADIENT, GUIDED_GRADIENT, INPUT_GRADIENT


class Family(str, enum.Enum):
    """How a method gets its map, hence which runner of the Explainer runs it."""

    CAM = "cam"  # from the target activation (and its gradient): a weighted sum of channels or a projection
    INPUT_GRADIENT = "input_gradient"  # from d score / d image through the whole network
    GRADIENT_FREE = "gradient_free"  # from extra forward passes only (Score-CAM, Ablation-CAM: cam.gradient_free)


# The augment() flag that adds each optional output; the other outputs every augmented model has.
AUGMENT_FLAGS = {INPUT_GRADIENT: "input_gradient", GUIDED_GRADIENT: "guided"}
_OUTPUTS = (ACTIVATION, GRADIENT, INPUT_GRADIENT, GUIDED_GRADIENT)
_CAM_KINDS = ("channel", "element", "map")
_FORWARD = ("model", "head")  # what a gradient-free method runs: the whole model, or the target -> score head

# Channel weights: (A, G) [N,K,h,w] -> [N,K] float32; cam = sum_k w_k A_k.
ChannelWeights = Callable[[np.ndarray, np.ndarray], np.ndarray]
# Element weights: (A, G) -> [N,K,h,w]; cam = sum_k W_k * A_k.
ElementWeights = Callable[[np.ndarray, np.ndarray], np.ndarray]
# A map that is no weighted sum of channels: (A, G or None) -> [N,h,w].
CamMap = Callable[[np.ndarray, Optional[np.ndarray]], np.ndarray]
# A gradient-free method's channel weights from the forward passes it asks its context for:
# (cam.gradient_free.GradientFreeContext) -> [N,K]; cam = sum_k w_k A_k.
GradientFreeWeights = Callable[[Any], Any]


@dataclass(frozen=True)
class Samples:
    """Inputs a sampling method runs instead of the batch: `repeat` rows per image, plus what combine needs."""

    inputs: np.ndarray
    repeat: int
    context: Any = None


@dataclass(frozen=True)
class Method:
    """One explanation method; which implementation hooks are set depends on its family.

    cam: exactly one of channel_weights, element_weights, cam_map (the shared weighted sum, ReLU, min-max
        and resize live in cam.reference, as in pytorch-grad-cam's BaseCAM).
    input_gradient: attribute((outputs, size) -> [N,C,H,W]) for one run, or sample((batch, layout,
        **options) -> Samples) and combine((gradients, Samples) -> [N,C,H,W]) for methods that run
        noisy or interpolated copies of each image (the explained class is the clean image's).
    gradient_free: run((GradientFreeContext) -> [N,K] channel weights), scoring what it needs through the
        context; forward says which forward passes it runs ("model": masked images through the whole model,
        "head": target activations through the target -> score subgraph). cam.gradient_free does the
        first pass, the weighted sum and the contract's ReLU, min-max and resize.
    kernel_id: the GRADCAM_METHOD_* id of kernels/gradcam_math.cuh, or None: on CUDA the map is then
        computed by NumPy and only normalized and resized by the kernel.
    """

    name: str
    family: Family
    outputs: tuple[str, ...]  # augmented-model outputs it reads, besides class, score and logits
    aliases: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)  # option name -> default
    kernel_id: Optional[int] = None
    channel_weights: Optional[ChannelWeights] = None
    element_weights: Optional[ElementWeights] = None
    cam_map: Optional[CamMap] = None
    attribute: Optional[Callable[[Mapping[str, np.ndarray], tuple[int, int]], np.ndarray]] = None
    sample: Optional[Callable[..., Samples]] = None
    combine: Optional[Callable[[np.ndarray, Samples], np.ndarray]] = None
    run: Optional[GradientFreeWeights] = None
    forward: Optional[str] = None
    summary: str = ""

    @property
    def augment_flags(self) -> dict[str, bool]:
        """The augment() keywords a model needs for this method, e.g. {'input_gradient': True}."""
        return {AUGMENT_FLAGS[output]: True for output in self.outputs if output in AUGMENT_FLAGS}

    @property
    def uses_gradient(self) -> bool:
        """Whether the map reads gradcam_gradient (EigenCAM, for one, does not)."""
        return GRADIENT in self.outputs

    @property
    def gradient_output(self) -> Optional[str]:
        """The input-gradient output an input-gradient method reads, None for other families."""
        return next((output for output in self.outputs if output in AUGMENT_FLAGS), None)

    def resolve_options(self, **given: Any) -> dict[str, Any]:
        """This method's options: the given value where not None, else the registered default."""
        return {name: default if given.get(name) is None else given[name] for name, default in self.options.items()}


_ENTRIES: dict[str, Method] = {}  # canonical name -> entry, in registration order
_KEYS: dict[str, str] = {}  # name or alias as _key() spells it -> canonical name


def register(method: Method) -> Method:
    """Add an entry to the registry after checking its declared needs; return it."""
    _check(method)
    keys = [_key(name) for name in (method.name, *method.aliases)]
    taken = sorted({_KEYS[key] for key in keys if key in _KEYS})
    if taken:
        raise GradCamError(f"method {method.name!r} clashes with the registered {', '.join(taken)}: "
                           "choose another name or alias, or unregister the old entry first")
    used = {entry.kernel_id: entry.name for entry in _ENTRIES.values() if entry.kernel_id is not None}
    if method.kernel_id in used:
        raise GradCamError(f"kernel id {method.kernel_id} of {method.name!r} already runs {used[method.kernel_id]!r}; "
                           "each kernel case computes one method")
    _ENTRIES[method.name] = method
    _KEYS.update(dict.fromkeys(keys, method.name))
    return method


def unregister(name: str) -> Method:
    """Remove a method (by name or alias) from the registry; return its entry."""
    method = get_method(name)
    del _ENTRIES[method.name]
    for key in [key for key, canonical in _KEYS.items() if canonical == method.name]:
        del _KEYS[key]
    return method


def cam_method(name: str, *, kind: str = "channel", aliases: Sequence[str] = (), kernel_id: Optional[int] = None,
               outputs: Sequence[str] = (ACTIVATION, GRADIENT), summary: str = "") -> Callable[[Callable], Method]:
    """Decorator registering a CAM method by its one function; returns the entry.

    kind "channel": the function returns [N,K] channel weights; "element": [N,K,h,w] element weights;
    "map": the [N,h,w] map itself (it may take gradient=None when outputs omit the gradient).
    """
    if kind not in _CAM_KINDS:
        raise GradCamError(f"kind must be one of {', '.join(_CAM_KINDS)}, got {kind!r}")

    def decorate(function: Callable) -> Method:
        hook = {"channel": "channel_weights", "element": "element_weights", "map": "cam_map"}[kind]
        return register(Method(name=name, family=Family.CAM, outputs=tuple(outputs), aliases=tuple(aliases),
                               kernel_id=kernel_id, summary=summary or (function.__doc__ or "").strip(),
                               **{hook: function}))

    return decorate


def get_method(name: "str | Method") -> Method:
    """The entry of a case-insensitive name or alias ('-', '_' and spaces ignored); InputError listing all."""
    if isinstance(name, Method):
        return name
    canonical = _KEYS.get(_key(name)) if isinstance(name, str) else None
    if canonical is None:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(_ENTRIES)}")
    return _ENTRIES[canonical]


def get_method_of(name: "str | Method", family: Family) -> Method:
    """get_method, with an InputError when the method belongs to another family."""
    entry = get_method(name)
    if entry.family != family:
        raise InputError(f"{entry.name!r} is a method of the {entry.family.value} family, not of the "
                         f"{family.value} family; explain with Explainer(model).explain(images, method=...) instead")
    return entry


def normalize_method(name: "str | Method") -> str:
    """The canonical name of a method name or alias (InputError listing every method when unknown)."""
    return get_method(name).name


def registered_methods(family: Optional[Family] = None) -> tuple[Method, ...]:
    """Every registered entry (of one family), in registration order."""
    return tuple(entry for entry in _ENTRIES.values() if family is None or entry.family == family)


def method_names(family: Optional[Family] = None) -> tuple[str, ...]:
    """Canonical names of every registered method (of one family), in registration order."""
    return tuple(entry.name for entry in registered_methods(family))


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


def _check(method: Method) -> None:
    """The declared needs agree with the family and the hooks, once, at registration (not at every call)."""
    problems = []
    unknown = [output for output in method.outputs if output not in _OUTPUTS]
    if unknown:
        problems.append(f"outputs {unknown} are not augmented-model outputs ({', '.join(_OUTPUTS)})")
    hooks = {hook: getattr(method, hook) is not None for hook in
             ("channel_weights", "element_weights", "cam_map", "attribute", "sample", "combine", "run")}
    cam_hooks = sum(hooks[hook] for hook in ("channel_weights", "element_weights", "cam_map"))
    if method.family == Family.CAM:
        if cam_hooks != 1 or hooks["attribute"] or hooks["sample"] or hooks["combine"]:
            problems.append("a CAM method has exactly one of channel_weights, element_weights, cam_map")
        if ACTIVATION not in method.outputs:
            problems.append(f"a CAM method reads {ACTIVATION}")
        if method.options:
            problems.append("CAM hooks take the activation and gradient only; a CAM method has no options")
        if method.kernel_id is not None and method.cam_map is not None:
            problems.append("kernel ids run weighted sums; a cam_map method has kernel_id None")
    elif method.family == Family.INPUT_GRADIENT:
        one_run, sampled = hooks["attribute"], hooks["sample"] and hooks["combine"]
        if cam_hooks or one_run == bool(sampled) or hooks["sample"] != hooks["combine"]:
            problems.append("an input-gradient method has attribute, or sample and combine")
        if method.gradient_output is None:
            problems.append(f"an input-gradient method reads {' or '.join(AUGMENT_FLAGS)}")
    elif method.family == Family.GRADIENT_FREE:
        if method.forward not in _FORWARD:
            problems.append(f"a gradient-free method says what it runs: forward in {_FORWARD}")
        if not hooks["run"] or sum(hooks.values()) != 1:
            problems.append("a gradient-free method has run (its channel weights from forward passes) and no "
                            "other hook")
        if ACTIVATION not in method.outputs:
            problems.append(f"a gradient-free method weights the channels of {ACTIVATION}: it reads it")
    else:
        problems.append(f"family must be a Family, got {method.family!r}")
    if (method.forward is not None or hooks["run"]) and method.family != Family.GRADIENT_FREE:
        problems.append("only gradient-free methods run extra forward passes (forward, run)")
    if method.family != Family.CAM and method.kernel_id is not None:
        problems.append("only CAM methods have a heatmap kernel")
    if method.kernel_id is not None and not method.uses_gradient:
        problems.append(f"the heatmap kernel reads {GRADIENT}; a method without it has kernel_id None")
    if method.kernel_id is not None and (not isinstance(method.kernel_id, int) or method.kernel_id < 0):
        problems.append(f"kernel_id must be a GRADCAM_METHOD_* value (an int >= 0), got {method.kernel_id!r}")
    if problems:
        raise GradCamError(f"cannot register method {method.name!r}: " + "; ".join(problems))
    object.__setattr__(method, "options", MappingProxyType(dict(method.options)))
