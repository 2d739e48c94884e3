"""Explaining detectors, segmenters and embedding models end to end on a model augmented with seed=True.

Each helper turns the model's own outputs into seeds (a box's class score, a class's logits over the
pixels predicted as that class, the similarity to a reference embedding) and explains all of them in
as few runs as the Explainer's batch_size allows: with CAM methods the forward pass runs once per
image and only the reverse pass once per thing explained (Explainer.explain_found).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from onnx_gradcam.detect import Detections, decode, stack_seeds
from onnx_gradcam.errors import InputError
from onnx_gradcam.explainer import Explainer, Explanation, ImageInput
from onnx_gradcam.targets import Segmentation, Similarity, seeds_for

__all__ = ["DetectionExplanation", "SegmentationExplanation", "explain_detections", "explain_segmentation",
           "explain_similarity"]


@dataclass
class DetectionExplanation:
    """One image's kept boxes, each with its own heatmap.

    heatmaps [M,H,W] at the model input's size (box coordinates are in the same pixels); scores [M]
    the explained objective of each box, its pre-NMS class score (for YOLOv5/7 heads the class
    probability, without objectness); activation and gradient [M,K,h,w] with keep_tensors.
    """

    detections: Detections
    heatmaps: Any
    scores: np.ndarray
    activation: Optional[Any] = None
    gradient: Optional[Any] = None

    def __len__(self) -> int:
        return len(self.detections)


@dataclass
class SegmentationExplanation:
    """One image's explained classes, each with its heatmap.

    classes [M] the classes predicted somewhere in the image (and asked for); masks [M,h,w] bool the
    pixels predicted as each, at the score's resolution (the objective sums the class's logits over
    them); heatmaps [M,H,W]; scores [M] those sums; activation and gradient [M,K,h,w] with keep_tensors.
    """

    classes: np.ndarray
    masks: np.ndarray
    heatmaps: Any
    scores: np.ndarray
    activation: Optional[Any] = None
    gradient: Optional[Any] = None

    def __len__(self) -> int:
        return len(self.classes)


def explain_detections(explainer: Explainer, images: ImageInput, conf: float = 0.25, iou: float = 0.45,
                       max_det: int = 300, layout: str = "auto", classes: Optional[Iterable[int]] = None,
                       method: Optional[str] = None, keep_tensors: bool = False,
                       as_numpy: bool = False) -> list[DetectionExplanation]:
    """Return one DetectionExplanation per image: its boxes after NMS (detect.decode) and a heatmap per box.

    The model is augmented with seed=True and score = the raw head output before NMS, [N, 4+C, A]
    (YOLOv8/11) or [N, A, 5+C] (YOLOv5/7); each box's heatmap explains its class score.
    """
    batch = _prepared(explainer, images, "explain_detections")
    detections: list[Detections] = []

    def find(start: int, head: np.ndarray):
        if head.ndim != 3:
            raise InputError(f"explain_detections needs a detection head [N, 4+C, A] or [N, A, 5+C] as the score, "
                             f"got {list(head.shape)}; augment the plain model with seed=True and score=<the raw "
                             "head output>")
        found = decode(head, layout=layout, conf=conf, iou=iou, max_det=max_det, classes=classes)
        detections.extend(found)
        boxes = [(image, box) for image, boxes_found in enumerate(found) for box in range(len(boxes_found))]

        def seeds(rows: slice) -> np.ndarray:
            # stack_seeds on just these rows' boxes: a seed is a whole head (2.8 MB for YOLOv8 at 640), so the
            # seeds of a chunk's boxes are made one run at a time, never all at once.
            wanted = boxes[rows]
            subsets = [_boxes(boxes_found, [box for owner, box in wanted if owner == image])
                       for image, boxes_found in enumerate(found)]
            return stack_seeds(subsets, head.shape, layout)[1]

        return np.array([image for image, _ in boxes], np.int64), seeds

    explained = explainer.explain_found(batch, find, method, keep_tensors, as_numpy)
    counts = [len(found) for found in detections]
    return [DetectionExplanation(found, **part) for found, part in zip(detections, _split(explained, counts))]


def explain_segmentation(explainer: Explainer, images: ImageInput, classes: Optional[Iterable[int]] = None,
                         method: Optional[str] = None, keep_tensors: bool = False,
                         as_numpy: bool = False) -> list[SegmentationExplanation]:
    """Return one SegmentationExplanation per image: a heatmap per class predicted in it (of classes, if given).

    The score is the per-pixel logits [N, C, h, w]; each class's objective is its logits summed over the
    pixels predicted as that class (pytorch-grad-cam's SemanticSegmentationTarget with that mask).
    """
    batch = _prepared(explainer, images, "explain_segmentation")
    found_classes, found_masks = [], []

    def find(start: int, logits: np.ndarray):
        if logits.ndim != 4:
            raise InputError(f"explain_segmentation needs per-pixel logits [N, C, H, W] as the score, got "
                             f"{list(logits.shape)}; augment the plain model with seed=True and score=<the logits>")
        wanted = _wanted_classes(classes, logits.shape[1])
        predicted = np.argmax(logits, axis=1)
        present = [[c for c in np.unique(image) if c in wanted] for image in predicted]
        image_index = np.repeat(np.arange(len(logits), dtype=np.int64), [len(found) for found in present])
        row_classes = np.array([c for found in present for c in found], np.int64)
        found_classes.extend(np.array(found, np.int64) for found in present)
        found_masks.extend(predicted[image][None] == np.array(found, np.int64)[:, None, None]
                           for image, found in enumerate(present))

        def seeds(rows: slice) -> np.ndarray:
            targets = [Segmentation(int(label)) for label in row_classes[rows]]
            return seeds_for(targets, logits[image_index[rows]])

        return image_index, seeds

    explained = explainer.explain_found(batch, find, method, keep_tensors, as_numpy)
    parts = _split(explained, [len(found) for found in found_classes])
    return [SegmentationExplanation(classes=image_classes, masks=masks, **part)
            for image_classes, masks, part in zip(found_classes, found_masks, parts)]


def explain_similarity(explainer: Explainer, images: ImageInput, reference_embedding: np.ndarray,
                       kind: str = "cosine", method: Optional[str] = None, keep_tensors: bool = False,
                       as_numpy: bool = False) -> Explanation:
    """Return the Explanation of each image's similarity ("cosine" or "dot") to a reference embedding [D].

    The score is the embedding [N, D]; ``scores`` holds the similarities themselves (the seeded score
    of cosine similarity is 0: its gradient is orthogonal to the embedding). Compute the reference with
    the same model, e.g. explainer.predict(reference_image)[0].
    """
    target = Similarity(np.asarray(reference_embedding), kind)
    explanation = explainer.explain(images, target=target, method=method, keep_tensors=keep_tensors,
                                    as_numpy=as_numpy)
    explanation.scores = target.similarity(explanation.logits)
    return explanation


def _prepared(explainer: Explainer, images: ImageInput, what: str):
    """The model-input batch, after checking the explainer runs a seeded model."""
    if not explainer.seeded:
        raise InputError(f"{what} needs a model augmented with seed=True: "
                         "prepare_model(model, method, task=...) or `onnx-gradcam augment MODEL -o OUT --seed`")
    batch = explainer.prepare(images)
    if len(batch) == 0:
        raise InputError("no images to explain: the batch is empty")
    return batch


def _wanted_classes(classes: Optional[Iterable[int]], count: int) -> set[int]:
    """The class indices to explain (all when None); InputError for indices the score does not have."""
    if classes is None:
        return set(range(count))
    wanted = {int(c) for c in classes}
    outside = sorted(c for c in wanted if not 0 <= c < count)
    if outside:
        raise InputError(f"classes {outside} are out of range for a score with {count} classes; pick 0..{count - 1}")
    return wanted


def _boxes(detections: Detections, indices: list[int]) -> Detections:
    """The boxes of detections at these indices."""
    rows = np.asarray(indices, np.int64)
    return Detections(boxes=detections.boxes[rows], scores=detections.scores[rows], classes=detections.classes[rows],
                      anchors=detections.anchors[rows], layout=detections.layout)


def _split(explained: dict, counts: Sequence[int]) -> list[dict]:
    """explained's rows split into one dict per image, counts[i] rows each."""
    starts = np.cumsum([0, *counts])
    parts = []
    for start, end in zip(starts[:-1], starts[1:]):
        part = {}
        for name, value in explained.items():
            if isinstance(value, list):
                part[name] = [layer[start:end] for layer in value]
            else:
                part[name] = None if value is None else value[start:end]
        parts.append(part)
    return parts
