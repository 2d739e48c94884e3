"""YOLO head decoding against a torch re-implementation of Ultralytics' NMS (torchvision batched_nms),
stacked seeds against Detection targets, and box drawing against pixels OpenCV must have set."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from onnx_gradcam.detect import Detections, decode, detection_targets, stack_seeds
from onnx_gradcam.errors import InputError
from onnx_gradcam.render import draw_detections
from onnx_gradcam.targets import ANCHORS_OBJ, XYWH_CLASSES, Detection

CLASSES, ANCHORS, SIDE = 4, 400, 96


def _random_head(layout: str, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Crowded boxes (so NMS has work) with sigmoid'ed scores, in the export layout."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, SIDE, (batch, ANCHORS, 2))
    sizes = rng.uniform(8, 48, (batch, ANCHORS, 2))
    logits = rng.normal(-2, 1.5, (batch, ANCHORS, CLASSES))
    if layout == ANCHORS_OBJ:
        logits = np.concatenate([rng.normal(2, 1.5, (batch, ANCHORS, 1)), logits], axis=2)  # objectness
    rows = np.concatenate([centres, sizes, 1 / (1 + np.exp(-logits))], axis=2).astype(np.float32)  # [N, A, 4(+1)+C]
    return rows.transpose(0, 2, 1).copy() if layout == XYWH_CLASSES else rows


def _oracle(head: np.ndarray, layout: str, conf: float, iou: float, max_det: int, classes=None) -> list[dict]:
    """Ultralytics / YOLOv5 non_max_suppression (one label per box, agnostic=False) with torchvision."""
    results = []
    for image in torch.from_numpy(head):
        rows = image.T if layout == XYWH_CLASSES else image
        xywh = rows[:, :4]
        class_scores = rows[:, 4:] if layout == XYWH_CLASSES else rows[:, 5:] * rows[:, 4:5]
        boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], dim=1)
        scores, labels = class_scores.max(1)
        keep = scores > conf
        if classes is not None:
            keep &= torch.isin(labels, torch.tensor(classes))
        anchors = torch.nonzero(keep)[:, 0]
        kept = torchvision.ops.batched_nms(boxes[anchors], scores[anchors], labels[anchors], iou)[:max_det]
        results.append({"anchors": anchors[kept].numpy(), "boxes": boxes[anchors][kept].numpy(),
                        "scores": scores[anchors][kept].numpy(), "classes": labels[anchors][kept].numpy()})
    return results


def _assert_same(ours: list[Detections], oracle: list[dict]):
    assert len(ours) == len(oracle)
    for detections, expected in zip(ours, oracle):
        np.testing.assert_array_equal(detections.anchors, expected["anchors"])
        np.testing.assert_array_equal(detections.classes, expected["classes"])
        np.testing.assert_array_equal(detections.scores, expected["scores"])
        np.testing.assert_allclose(detections.boxes, expected["boxes"], rtol=0, atol=1e-5)
        assert detections.boxes.dtype == detections.scores.dtype == np.float32
        assert detections.anchors.dtype == detections.classes.dtype == np.int64


@pytest.mark.parametrize("layout", [XYWH_CLASSES, ANCHORS_OBJ])
@pytest.mark.parametrize("seed", [0, 1])
def test_decode_equals_torchvision_batched_nms(layout, seed):
    head = _random_head(layout, seed=seed)
    ours = decode(head)  # layout "auto": 8 or 9 channels against 400 anchors
    assert all(d.layout == layout for d in ours)
    _assert_same(ours, _oracle(head, layout, 0.25, 0.45, 300))
    candidates = _oracle(head, layout, 0.25, 1.0, 10**6)  # IoU never above 1: no suppression
    suppressed = sum(len(without_nms["anchors"]) - len(kept) for without_nms, kept in zip(candidates, ours))
    assert suppressed > 20 and all(len(np.unique(d.classes)) > 1 for d in ours)  # NMS and classes both at work


@pytest.mark.parametrize("layout", [XYWH_CLASSES, ANCHORS_OBJ])
def test_decode_options_equal_torchvision_batched_nms(layout):
    head = _random_head(layout, seed=2)
    _assert_same(decode(head, layout, conf=0.4, iou=0.3, max_det=7), _oracle(head, layout, 0.4, 0.3, 7))
    _assert_same(decode(head, conf=0.1, iou=0.6, classes=[1, 3]), _oracle(head, layout, 0.1, 0.6, 300, [1, 3]))
    _assert_same(decode(head[0]), _oracle(head[:1], layout, 0.25, 0.45, 300))  # one image without batch axis


def test_nms_is_per_class_even_for_boxes_beyond_ultralytics_offset():
    # Two identical boxes at x ~ 9000 px, classes 0 and 1: both stay (a fixed 7680 px offset would merge them).
    head = np.zeros((1, 4 + 2, 8), np.float32)
    head[0, :4, :2] = [[9000], [100], [50], [50]]
    head[0, 4, 0], head[0, 5, 1] = 0.9, 0.8
    (detections,) = decode(head)
    np.testing.assert_array_equal(detections.anchors, [0, 1])
    np.testing.assert_array_equal(detections.classes, [0, 1])


def test_decode_with_nothing_above_conf_gives_empty_detections():
    (detections,) = decode(_random_head(XYWH_CLASSES, batch=1), conf=1.0)
    assert len(detections) == 0 and detections.boxes.shape == (0, 4)
    image_index, seeds = stack_seeds([detections], (1, 4 + CLASSES, ANCHORS))
    assert image_index.shape == (0,) and seeds.shape == (0, 4 + CLASSES, ANCHORS)


@pytest.mark.parametrize("layout", [XYWH_CLASSES, ANCHORS_OBJ])
def test_stack_seeds_rows_are_the_detection_targets_seeds(layout):
    head = _random_head(layout, batch=3, seed=3)
    detections = decode(head, conf=0.5)
    image_index, seeds = stack_seeds(detections, head.shape)
    counts = [len(d) for d in detections]
    np.testing.assert_array_equal(image_index, np.repeat(np.arange(3), counts))
    expected = [target.seed(head[i]) for i, d in enumerate(detections) for target in detection_targets(d)]
    np.testing.assert_array_equal(seeds, np.stack(expected))
    # Σ seed ⊙ score is each box's class score: the YOLOv8 box score, the YOLOv5 class probability.
    objective = (seeds * head[image_index]).sum(axis=(1, 2))
    flat = np.concatenate([d.scores for d in detections])
    if layout == XYWH_CLASSES:
        np.testing.assert_array_equal(objective, flat)
    else:
        objectness = np.concatenate([head[i, d.anchors, 4] for i, d in enumerate(detections)])
        np.testing.assert_allclose(objective * objectness, flat, rtol=1e-6)


def test_detection_targets_carry_anchor_class_and_layout():
    (detections,) = decode(_random_head(ANCHORS_OBJ, batch=1), conf=0.6)
    targets = detection_targets(detections)
    assert targets == [Detection(int(a), int(c), ANCHORS_OBJ) for a, c in zip(detections.anchors, detections.classes)]


def test_decode_and_stack_seeds_errors_name_the_way_out():
    with pytest.raises(InputError, match="layout="):
        decode(np.zeros((1, 20, 20), np.float32))
    with pytest.raises(InputError, match="before NMS"):
        decode(np.zeros((1, 2, 8, 100), np.float32))
    with pytest.raises(InputError, match="conf >= 0"):
        decode(_random_head(XYWH_CLASSES), conf=-0.1)
    with pytest.raises(InputError, match="floating point"):
        decode(np.zeros((1, 8, 100), np.int32))
    detections = decode(_random_head(XYWH_CLASSES))
    with pytest.raises(InputError, match="one Detections per image"):
        stack_seeds(detections, (3, 4 + CLASSES, ANCHORS))
    with pytest.raises(InputError, match="layout='xywh_classes'"):
        stack_seeds(detections, (2, ANCHORS, 5 + CLASSES), layout=ANCHORS_OBJ)
    with pytest.raises(InputError, match="do not fit"):
        stack_seeds(detections, (2, 4 + CLASSES, 50))


def test_draw_detections_outlines_boxes_and_captions_them():
    image = np.full((120, 160, 3), 40, np.uint8)
    boxes = np.array([[20.2, 40, 80, 100], [90, 10, 150, 60]], np.float32)
    drawn = draw_detections(image, boxes, ["cat", "dog"], [0.91, 0.5], colors=[(255, 0, 0), (255, 255, 0)],
                            line_width=2)
    assert drawn.dtype == np.uint8 and drawn.shape == image.shape and (image == 40).all()  # a copy
    np.testing.assert_array_equal(drawn[100, 50], [255, 0, 0])  # bottom edge of box 0
    np.testing.assert_array_equal(drawn[35, 150], [255, 255, 0])  # right edge of box 1
    np.testing.assert_array_equal(drawn[70, 50], [40, 40, 40])  # inside box 0: untouched
    assert (drawn[25:40, 20:40] == [255, 0, 0]).all(axis=2).any()  # caption tab above box 0
    assert (drawn[25:40, 20:60] == [255, 255, 255]).all(axis=2).any()  # light text on the dark tab
    assert (drawn[10:25, 90:110] == [0, 0, 0]).all(axis=2).any()  # box 1 at the top: tab inside, dark text
    plain = draw_detections(image, boxes)
    np.testing.assert_array_equal(plain[20:36, 20:40], image[20:36, 20:40])  # no caption without text


def test_draw_detections_rejects_mismatched_arguments():
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(InputError, match="one per box"):
        draw_detections(image, np.zeros((2, 4)), labels=["a"])
    with pytest.raises(InputError, match=r"\[M, 4\]"):
        draw_detections(image, np.zeros((2, 5)))
    with pytest.raises(InputError, match="RGB triple"):
        draw_detections(image, np.zeros((2, 4)), colors=[(1, 2, 3)] * 3)
