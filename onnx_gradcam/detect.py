"""Decode YOLO-style detection heads (pre-NMS) into boxes, and build the seeds that explain them.

Two export layouts (``targets.resolve_layout`` tells them apart):

- ``xywh_classes`` — YOLOv8/11 (Ultralytics ONNX export): [N, 4+C, A], cx, cy, w, h in input
  pixels then C class scores already passed through the sigmoid; a box's score is its best class.
- ``anchors_obj`` — YOLOv5/7: [N, A, 5+C], cx, cy, w, h, objectness, C class probabilities; a
  box's score is objectness x its best class probability.

Selection follows Ultralytics' ``non_max_suppression`` with its defaults (one label per box,
agnostic=False): keep boxes whose score exceeds ``conf``, then class-aware NMS at ``iou``, then
the ``max_det`` best.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from onnx_gradcam.errors import InputError
from onnx_gradcam.targets import (ANCHORS_OBJ, LAYOUTS, XYWH_CLASSES, Detection, _anchors_classes,
                                  _class_offset, resolve_layout)

__all__ = ["Detections", "decode", "detection_targets", "scale_boxes", "stack_seeds", "resolve_layout",
           "XYWH_CLASSES", "ANCHORS_OBJ", "LAYOUTS"]


@dataclass(frozen=True, eq=False)
class Detections:
    """The boxes kept in one image, best first."""

    boxes: np.ndarray  # float32 [M, 4]: x1, y1, x2, y2 in input pixels
    scores: np.ndarray  # float32 [M]: class score (YOLOv8/11) or objectness x class probability (YOLOv5/7)
    classes: np.ndarray  # int64 [M]
    anchors: np.ndarray  # int64 [M]: index of each box among the head's pre-NMS boxes, for Detection targets
    layout: str  # the head layout they were decoded from

    def __len__(self) -> int:
        return len(self.scores)


def decode(
    output: np.ndarray,
    layout: str = "auto",
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    classes: Iterable[int] | None = None,
) -> list[Detections]:
    """Return the kept boxes of each image of a YOLO head output [N, 4+C, A] or [N, A, 5+C].

    ``classes`` keeps only boxes whose best class is listed (as Ultralytics filters after taking
    each box's best class). A 2-D output is one image.
    """
    output = np.asarray(output)
    if output.ndim == 2:
        output = output[None]
    layout = resolve_layout(output.shape, layout)
    if not np.issubdtype(output.dtype, np.floating):
        raise InputError(f"a detection head output is floating point, got {output.dtype}")
    if not (np.isfinite(conf) and conf >= 0) or not 0 <= iou <= 1 or max_det < 1:
        raise InputError(f"need conf >= 0, 0 <= iou <= 1 and max_det >= 1, got conf={conf}, iou={iou}, "
                         f"max_det={max_det}")
    wanted = None if classes is None else np.asarray(list(classes), dtype=np.int64)
    return [_decode_image(image, layout, conf, iou, max_det, wanted) for image in output]


def detection_targets(detections: Detections) -> list[Detection]:
    """Return one Detection target per kept box (its anchor and class), best first."""
    return [Detection(int(anchor), int(label), layout=detections.layout)
            for anchor, label in zip(detections.anchors, detections.classes)]


def stack_seeds(
    detections_per_image: Sequence[Detections],
    score_shape: Sequence[int],
    layout: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Return (image_index int64 [B], seeds float32 [B, ...]) with one row per kept box of the batch.

    Feeding ``images[image_index]`` with these seeds explains every box in one run, one heatmap
    per box. Each seed is that box's Detection seed (1 at its class score, pre-NMS), so a seed
    row costs a whole head's size (84 x 8400 floats, 2.8 MB, for YOLOv8 at 640): split the boxes
    into several runs when there are many. "auto" takes the layout the boxes were decoded with.
    """
    shape = tuple(int(size) for size in score_shape)
    if len(shape) == 3 and shape[0] != len(detections_per_image):
        raise InputError(f"score shape {list(shape)} is a batch of {shape[0]} but got detections for "
                         f"{len(detections_per_image)} images; pass one Detections per image")
    if layout == "auto":
        layout = _decoded_layout(detections_per_image) or layout
    layout = resolve_layout(shape, layout)
    image_shape = shape[-2:]
    anchors, classes = _anchors_classes(image_shape, layout)
    for detections in detections_per_image:
        _check_fits(detections, layout, anchors, classes)
    counts = [len(detections) for detections in detections_per_image]
    image_index = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    none = np.zeros(0, np.int64)
    box_anchors = np.concatenate([none, *(np.asarray(d.anchors, np.int64) for d in detections_per_image)])
    box_classes = np.concatenate([none, *(np.asarray(d.classes, np.int64) for d in detections_per_image)])
    seeds = np.zeros((len(image_index), *image_shape), np.float32)
    rows = np.arange(len(image_index))
    if layout == XYWH_CLASSES:
        seeds[rows, _class_offset(layout) + box_classes, box_anchors] = 1
    else:
        seeds[rows, box_anchors, _class_offset(layout) + box_classes] = 1
    return image_index, seeds


def scale_boxes(boxes: np.ndarray, from_size: Sequence[int], to_size: Sequence[int]) -> np.ndarray:
    """Return float32 x1, y1, x2, y2 boxes [M, 4] in from_size=(H, W) pixels mapped to to_size=(H, W) pixels.

    Preprocess resizes an image to the model input by stretching it, so a box on the model input maps
    back to the original image by the two axes' ratios.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    from_height, from_width = (int(side) for side in from_size)
    to_height, to_width = (int(side) for side in to_size)
    if min(from_height, from_width, to_height, to_width) <= 0:
        raise InputError(f"sizes must be positive (H, W) pairs, got {tuple(from_size)} and {tuple(to_size)}")
    factors = np.array([to_width / from_width, to_height / from_height] * 2, np.float32)
    return boxes * factors


def _decode_image(
    head: np.ndarray, layout: str, conf: float, iou: float, max_det: int, wanted: np.ndarray | None
) -> Detections:
    """Threshold, NMS and cap the boxes of one image's head [4+C, A] or [A, 5+C]."""
    xywh, class_scores = _boxes_and_class_scores(head, layout)
    labels = np.argmax(class_scores, axis=1)
    scores = np.take_along_axis(class_scores, labels[:, None], axis=1)[:, 0]
    keep = scores > conf
    if wanted is not None:
        keep &= np.isin(labels, wanted)
    anchors = np.flatnonzero(keep)
    boxes = _xyxy(xywh[anchors])
    kept = _nms(boxes, scores[anchors], labels[anchors], iou)[:max_det]
    return Detections(boxes=boxes[kept].astype(np.float32), scores=scores[anchors][kept].astype(np.float32),
                      classes=labels[anchors][kept].astype(np.int64), anchors=anchors[kept].astype(np.int64),
                      layout=layout)


def _boxes_and_class_scores(head: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """cx, cy, w, h [A, 4] and per-class box scores [A, C] of one image's head."""
    if layout == XYWH_CLASSES:
        rows = head.T
        return rows[:, :4], rows[:, 4:]
    # Objectness x class probability, in the head's precision as YOLOv5 multiplies in place.
    return head[:, :4], head[:, 5:] * head[:, 4:5]


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    """Corners x1, y1, x2, y2 from centre and size."""
    half = xywh[:, 2:] / 2
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)


def _nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes class-aware NMS keeps, best first (OpenCV's NMSBoxes).

    Class-aware by the offset trick Ultralytics uses: each class's boxes move by class x span,
    span larger than all boxes' extent, so boxes of different classes never overlap and one
    NMSBoxes call does every class. Ultralytics' fixed 7680 px offset would let classes collide
    on larger inputs; the span is taken from the boxes instead. Coordinates go in as float64
    (cv2.Rect2d), where the offset costs no precision.
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    corners = boxes.astype(np.float64)
    span = float(corners.max() - min(corners.min(), 0.0)) + 1.0
    shifted = corners[:, :2] + labels[:, None].astype(np.float64) * span
    rects = np.concatenate([shifted, corners[:, 2:] - corners[:, :2]], axis=1)
    # score_threshold 0: the boxes are already above conf >= 0, and OpenCV asserts a threshold >= 0.
    kept = cv2.dnn.NMSBoxes(rects, scores.astype(np.float32), 0.0, float(iou))
    return np.asarray(kept, np.int64).reshape(-1)


def _decoded_layout(detections_per_image: Sequence[Detections]) -> str | None:
    """The layout the detections were decoded with, or None when they carry none."""
    layouts = {detections.layout for detections in detections_per_image}
    if len(layouts) > 1:
        raise InputError(f"the detections come from different layouts {sorted(layouts)}; decode one head at a time")
    return layouts.pop() if layouts else None


def _check_fits(detections: Detections, layout: str, anchors: int, classes: int) -> None:
    """InputError unless every box's anchor and class exist in a head of this size."""
    if detections.layout != layout:
        raise InputError(f"the boxes were decoded as {detections.layout} but the score is {layout}; "
                         f"pass layout={detections.layout!r}")
    if len(detections) and (np.max(detections.anchors) >= anchors or np.max(detections.classes) >= classes):
        raise InputError(f"the boxes do not fit a head with {anchors} boxes and {classes} classes; pass the "
                         "shape of the output they were decoded from")
