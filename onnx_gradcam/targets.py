"""What to explain: target objects that turn a model output (the score tensor) into a seed.

An augmented model built with ``seed=True`` takes ``gradcam_seed``, shaped like its score tensor,
and returns the gradient of Y = Σ seed ⊙ score. A target is an objective on one image's score;
its seed is d objective / d score at that score. For an objective linear in the score (a class,
a box's class score, a masked sum, a dot product) the seed is constant and Y *is* the objective;
for cosine similarity the seed is the exact gradient at the image's embedding, so the gradient
the model returns is exactly the gradient of the objective.

Each target knows the rank of one image's score (``Class``: [C], ``Detection``: [4+C, A] or
[A, 5+C], ``Segmentation``: [C, H, W], ``Similarity``: [D]); one more leading axis is the batch.
Definitions follow pytorch-grad-cam's targets (``ClassifierOutputTarget``,
``SemanticSegmentationTarget``, the embeddings tutorial's ``SimilarityToConceptTarget``) so that
explanations compare one to one.
"""
from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from onnx_gradcam.errors import InputError

__all__ = ["Target", "Class", "Detection", "Segmentation", "Similarity", "seeds_for", "resolve_layout",
           "XYWH_CLASSES", "ANCHORS_OBJ", "LAYOUTS"]

XYWH_CLASSES = "xywh_classes"  # YOLOv8/11 export: [N, 4+C, A], class scores already sigmoid'ed
ANCHORS_OBJ = "anchors_obj"  # YOLOv5/7 export: [N, A, 5+C], objectness then class probabilities
LAYOUTS = (XYWH_CLASSES, ANCHORS_OBJ)

_COSINE_EPS = 1e-8  # torch.nn.CosineSimilarity's default, so a zero embedding gives 0, not NaN


class Target(ABC):
    """An objective on one image's score tensor; ``seed`` gives d objective / d score."""

    image_ndim: ClassVar[int]  # rank of one image's score; one more axis is the batch
    output: str | None  # name of the score output this target reads; None: the only one

    def check(self, score_shape: Sequence[int]) -> None:
        """Raise InputError unless this target fits a score of this shape (one image or a batch)."""
        shape = tuple(int(size) for size in score_shape)
        if len(shape) not in (self.image_ndim, self.image_ndim + 1):
            raise InputError(
                f"{self._name()} needs a score of rank {self.image_ndim} (one image, {self._shape_text()}) "
                f"or {self.image_ndim + 1} (a batch), got shape {list(shape)}; {self._way_out()}")
        self._check_image(shape[-self.image_ndim:])

    def seed(self, score: np.ndarray) -> np.ndarray:
        """Return the float32 seed d objective / d score, shaped like score (one image or a batch)."""
        score = np.asarray(score)
        self.check(score.shape)
        if score.ndim == self.image_ndim:
            return self._seed_image(score)
        if len(score) == 0:
            return np.zeros(score.shape, np.float32)
        return np.stack([self._seed_image(image) for image in score])

    def explained_class(self, seed: np.ndarray) -> int:
        """The class this target explains in one image, given that image's seed; -1 when it names none."""
        return -1

    @abstractmethod
    def _check_image(self, shape: tuple[int, ...]) -> None:
        """InputError unless one image's score shape fits."""

    @abstractmethod
    def _seed_image(self, score: np.ndarray) -> np.ndarray:
        """The seed of one image's score."""

    def _name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def _shape_text(self) -> str:
        """One image's score shape, for messages."""

    @abstractmethod
    def _way_out(self) -> str:
        """What this kind explains, for messages."""


@dataclass(frozen=True)
class Class(Target):
    """The logit of one class on [N, C] scores; ``class_index=None`` takes each image's top class.

    Equals pytorch-grad-cam's ``ClassifierOutputTarget``: the seed is one-hot.
    """

    class_index: int | None
    output: str | None = field(default=None, kw_only=True)
    image_ndim: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.class_index is not None:
            object.__setattr__(self, "class_index", _index(self.class_index, "class_index"))

    def _check_image(self, shape: tuple[int, ...]) -> None:
        _check_class(self.class_index, shape[0], f"a score with {shape[0]} classes")

    def _seed_image(self, score: np.ndarray) -> np.ndarray:
        seed = np.zeros(score.shape, np.float32)
        seed[_top(score) if self.class_index is None else self.class_index] = 1
        return seed

    def explained_class(self, seed: np.ndarray) -> int:
        return _top(seed)

    def _shape_text(self) -> str:
        return "[C] logits"

    def _way_out(self) -> str:
        return "Class explains [N, C] classifier logits; use Detection, Segmentation or Similarity for other heads"


@dataclass(frozen=True)
class Detection(Target):
    """The class score of one pre-NMS box (anchor) of a YOLO-style head.

    ``box_index`` indexes the anchors (``Detections.anchors`` from ``detect.decode``);
    ``class_index=None`` takes the box's best class. The seed is 1 at [4+c, a] for
    ``xywh_classes`` (YOLOv8/11) and at [a, 5+c] for ``anchors_obj`` (YOLOv5/7). For YOLOv5 the
    objective is the class probability alone, not objectness x class: it explains why the box is
    this class, the same quantity YOLOv8 scores, while objectness (is there any object here) would
    mix in evidence shared by every class. ``layout="auto"`` follows ``resolve_layout``.
    """

    box_index: int
    class_index: int | None = None
    layout: str = "auto"
    output: str | None = field(default=None, kw_only=True)
    image_ndim: ClassVar[int] = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "box_index", _index(self.box_index, "box_index"))
        if self.class_index is not None:
            object.__setattr__(self, "class_index", _index(self.class_index, "class_index"))
        if self.layout != "auto" and self.layout not in LAYOUTS:
            raise InputError(f"unknown detection layout {self.layout!r}; use 'auto', {LAYOUTS[0]!r} or {LAYOUTS[1]!r}")

    def _check_image(self, shape: tuple[int, ...]) -> None:
        layout = resolve_layout(shape, self.layout)
        anchors, classes = _anchors_classes(shape, layout)
        if self.box_index >= anchors:
            raise InputError(f"box_index {self.box_index} is out of range for a {layout} head with {anchors} "
                             f"boxes (score shape {list(shape)}); pick 0..{anchors - 1}, e.g. Detections.anchors")
        _check_class(self.class_index, classes, f"a {layout} head with {classes} classes")

    def _seed_image(self, score: np.ndarray) -> np.ndarray:
        layout = resolve_layout(score.shape, self.layout)
        offset = _class_offset(layout)
        seed = np.zeros(score.shape, np.float32)
        if layout == XYWH_CLASSES:
            column = self.class_index if self.class_index is not None else _top(score[offset:, self.box_index])
            seed[offset + column, self.box_index] = 1
        else:
            column = self.class_index if self.class_index is not None else _top(score[self.box_index, offset:])
            seed[self.box_index, offset + column] = 1
        return seed

    def explained_class(self, seed: np.ndarray) -> int:
        layout = resolve_layout(seed.shape, self.layout)
        column = self.box_index if layout == XYWH_CLASSES else slice(None)
        row = slice(None) if layout == XYWH_CLASSES else self.box_index
        return _top(np.asarray(seed)[row, column]) - _class_offset(layout)

    def _shape_text(self) -> str:
        return "[4+C, A] or [A, 5+C] boxes"

    def _way_out(self) -> str:
        return "Detection explains YOLO-style heads [N, 4+C, A] (YOLOv8/11) or [N, A, 5+C] (YOLOv5/7)"


@dataclass(frozen=True, eq=False)
class Segmentation(Target):
    """A class's logits summed over a mask [H, W] of [N, C, H, W] scores.

    ``mask=None`` takes the pixels whose argmax over classes is ``class_index`` (in each image; no
    such pixel gives a zero seed). A float mask weighs the pixels. Equals pytorch-grad-cam's
    ``SemanticSegmentationTarget``: the seed is the mask in the class's channel, zero elsewhere.
    """

    class_index: int
    mask: np.ndarray | None = None
    output: str | None = field(default=None, kw_only=True)
    image_ndim: ClassVar[int] = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_index", _index(self.class_index, "class_index"))
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.ndim != 2 or not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.number)):
                raise InputError(f"mask must be a bool or numeric [H, W] array, got {mask.dtype} {list(mask.shape)}")
            object.__setattr__(self, "mask", mask.astype(np.float32))

    def _check_image(self, shape: tuple[int, ...]) -> None:
        _check_class(self.class_index, shape[0], f"a score with {shape[0]} classes")
        if self.mask is not None and self.mask.shape != shape[1:]:
            raise InputError(f"mask is {list(self.mask.shape)} but the score's maps are {list(shape[1:])}; "
                             "resize the mask to the output's H x W (nearest neighbour) or pass mask=None")

    def _seed_image(self, score: np.ndarray) -> np.ndarray:
        seed = np.zeros(score.shape, np.float32)
        seed[self.class_index] = (np.argmax(score, axis=0) == self.class_index) if self.mask is None else self.mask
        return seed

    def explained_class(self, seed: np.ndarray) -> int:
        return self.class_index

    def _shape_text(self) -> str:
        return "[C, H, W] logits"

    def _way_out(self) -> str:
        return "Segmentation explains [N, C, H, W] per-pixel class scores"


@dataclass(frozen=True, eq=False)
class Similarity(Target):
    """Similarity of [N, D] embeddings to a reference embedding: ``kind`` "dot" or "cosine".

    dot: the seed is the reference r. cosine: the seed is the exact gradient of cos(e, r) at the
    image's embedding e, (r/|r| - cos(e, r) e/|e|) / |e|, so the gradient the model returns is
    that of cosine similarity itself; this equals pytorch-grad-cam's ``SimilarityToConceptTarget``
    (``torch.nn.CosineSimilarity``, whose eps 1e-8 guards a zero norm here too).
    """

    embedding: np.ndarray
    kind: str = "cosine"
    output: str | None = field(default=None, kw_only=True)
    image_ndim: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.kind not in ("dot", "cosine"):
            raise InputError(f"unknown similarity kind {self.kind!r}; use 'dot' or 'cosine'")
        embedding = np.asarray(self.embedding)
        if embedding.ndim != 1 or embedding.size == 0 or not np.issubdtype(embedding.dtype, np.number):
            raise InputError(f"embedding must be a non-empty numeric [D] vector, got {embedding.dtype} "
                             f"{list(embedding.shape)}; pass one reference embedding, e.g. reference[0]")
        if not np.all(np.isfinite(embedding)):
            raise InputError("embedding contains NaN or infinity; pass a finite reference embedding")
        object.__setattr__(self, "embedding", embedding.astype(np.float64))

    def _check_image(self, shape: tuple[int, ...]) -> None:
        if shape[0] != self.embedding.size:
            raise InputError(f"the reference embedding has {self.embedding.size} values but the score has "
                             f"{shape[0]}; compute the reference with the same model and output")

    def _seed_image(self, score: np.ndarray) -> np.ndarray:
        reference = self.embedding
        if self.kind == "dot":
            return reference.astype(np.float32)
        embedding = score.astype(np.float64)
        embedding_norm = max(float(np.linalg.norm(embedding)), _COSINE_EPS)
        reference_norm = max(float(np.linalg.norm(reference)), _COSINE_EPS)
        cosine = float(embedding @ reference) / (embedding_norm * reference_norm)
        gradient = (reference / reference_norm - cosine * embedding / embedding_norm) / embedding_norm
        return gradient.astype(np.float32)

    def similarity(self, embeddings: np.ndarray) -> np.ndarray:
        """Return the float32 similarity [N] of embeddings [N, D] (or one [D]) to the reference."""
        embeddings = np.asarray(embeddings, np.float64)
        self.check(embeddings.shape)
        values = embeddings @ self.embedding
        if self.kind == "cosine":
            norms = np.maximum(np.linalg.norm(embeddings, axis=-1), _COSINE_EPS)
            values = values / (norms * max(float(np.linalg.norm(self.embedding)), _COSINE_EPS))
        return np.asarray(values, np.float32)

    def _shape_text(self) -> str:
        return "[D] embedding"

    def _way_out(self) -> str:
        return "Similarity explains [N, D] embeddings"


def seeds_for(targets: Target | Sequence[Target], outputs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
    """Return the float32 seeds [N, ...] for a batch: one target for every image, or one per image.

    ``outputs`` is the score tensor [N, ...] or the model's outputs by name; with names, the
    targets' ``output`` picks the score (it may be left None when there is one output only).
    """
    single = isinstance(targets, Target)
    target_list = [targets] if single else list(targets)
    if not target_list or not all(isinstance(target, Target) for target in target_list):
        raise InputError("targets must be a Target or a non-empty list of them, e.g. [Class(3), Class(7)]")
    score = np.asarray(_score(target_list, outputs))
    if score.ndim != target_list[0].image_ndim + 1:
        raise InputError(f"seeds_for needs a batched score [N, ...] of rank {target_list[0].image_ndim + 1} for "
                         f"{target_list[0]._name()}, got shape {list(score.shape)}; add the batch axis")
    if single:
        return targets.seed(score)
    if len(target_list) != len(score):
        raise InputError(f"got {len(target_list)} targets for a batch of {len(score)} images; "
                         "pass one target per image, or a single target for all of them")
    for target in target_list:
        target.check(score.shape)
    return np.stack([target._seed_image(image) for target, image in zip(target_list, score)])


def resolve_layout(score_shape: Sequence[int], layout: str = "auto") -> str:
    """Return the detection layout of a score [N?, P, Q]: ``xywh_classes`` or ``anchors_obj``.

    "auto" reads the last two axes: fewer channels than anchors is how every real export looks
    (84 x 8400 for YOLOv8 at 640, 25200 x 85 for YOLOv5), so P < Q means [4+C, A] (YOLOv8/11) and
    P > Q means [A, 5+C] (YOLOv5/7); P == Q is ambiguous. Heads with fewer anchors than channels
    need ``layout=`` explicitly.
    """
    shape = tuple(int(size) for size in score_shape)
    if len(shape) not in (2, 3):
        raise InputError(f"a detection head is [N, 4+C, A] (YOLOv8/11) or [N, A, 5+C] (YOLOv5/7), got shape "
                         f"{list(shape)}; pass the raw head output, before NMS")
    rows, columns = shape[-2:]
    if layout == "auto":
        if rows == columns:
            raise InputError(f"cannot tell the layout of a {list(shape)} head: both axes are {rows}; pass "
                             f"layout={XYWH_CLASSES!r} ([N, 4+C, A]) or layout={ANCHORS_OBJ!r} ([N, A, 5+C])")
        layout = XYWH_CLASSES if rows < columns else ANCHORS_OBJ
    elif layout not in LAYOUTS:
        raise InputError(f"unknown detection layout {layout!r}; use 'auto', {XYWH_CLASSES!r} or {ANCHORS_OBJ!r}")
    channels = rows if layout == XYWH_CLASSES else columns
    if channels <= _class_offset(layout):
        axis = "axis -2" if layout == XYWH_CLASSES else "axis -1"
        raise InputError(f"a {layout} head needs more than {_class_offset(layout)} channels on {axis}, got shape "
                         f"{list(shape)}; pass the other layout= if the axes are the other way round")
    return layout


def _anchors_classes(shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    """Number of anchors (boxes) and classes of one image's head [P, Q] in this layout."""
    rows, columns = shape[-2:]
    if layout == XYWH_CLASSES:
        return columns, rows - _class_offset(layout)
    return rows, columns - _class_offset(layout)


def _class_offset(layout: str) -> int:
    """Channel of the first class score: after cx, cy, w, h (and objectness for YOLOv5/7)."""
    return 4 if layout == XYWH_CLASSES else 5


def _score(targets: list[Target], outputs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
    """The score tensor the targets read: outputs itself, or the output they name."""
    if not isinstance(outputs, Mapping):
        return outputs
    names = {target.output for target in targets}
    if len(names) > 1:
        raise InputError(f"the targets read different outputs {sorted(map(str, names))}; one seed explains one "
                         "output, so explain each output in its own run")
    name = names.pop()
    if name is None:
        if len(outputs) != 1:
            raise InputError(f"the model has outputs {sorted(outputs)}; name the score, e.g. "
                             f"{targets[0]._name()}(..., output={next(iter(outputs))!r})")
        name = next(iter(outputs))
    if name not in outputs:
        raise InputError(f"no output named {name!r}; the outputs are {sorted(outputs)}")
    return outputs[name]


def _index(value: object, name: str) -> int:
    """A non-negative integer index, or InputError."""
    try:
        index = operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or index < 0:
        raise InputError(f"{name} must be a non-negative integer, got {value!r}")
    return index


def _check_class(class_index: int | None, classes: int, what: str) -> None:
    if classes < 1:
        raise InputError(f"there is no class to explain in {what}; check which output is the score")
    if class_index is not None and class_index >= classes:
        raise InputError(f"class_index {class_index} is out of range for {what}; pick 0..{classes - 1}")


def _top(scores: np.ndarray) -> int:
    """Index of the largest score (the first on ties, as NumPy and torch argmax do)."""
    return int(np.argmax(scores))
