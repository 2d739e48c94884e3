"""Detection and segmentation audits: batches of decoded inputs -> tasks.explain_detections or
explain_segmentation -> a record per box (detect) or per class present (segment), each with its own heatmap.

An image gives any number of records: one per item (box or class) it explains, or one with a null item when
it has none. All of them come out of one batch, so the journal commits them in one part with the rest of the
batch (journal.py): an image is committed whole or not at all, and resume stays exactly-once per image.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from ..detect import scale_boxes
from ..errors import InputError
from ..explainer import Explainer
from ..labels import label_name
from ..render import draw_detections, outline_mask, overlay
from ..targets import Detection, Segmentation
from ..tasks import explain_detections, explain_segmentation
from .decode import Decoded
from .measure import Measured
from .pipeline import BatchResult, _int_or_none, encode_image, overlay_name
from .stats import heat_in_boxes, heat_in_masks, heatmap_stats

# The rank of the score each task explains: a YOLO head [N, 4+C, A] or [N, A, 5+C]; per-pixel logits [N, C, H, W].
SCORE_RANKS = {"detect": 3, "segment": 4}
# Heatmaps per heatmap_stats call: its float64 copies of 300 boxes' 640 x 640 maps would take 1 GB at once.
STATS_CHUNK = 16


@dataclass
class Found:
    """One image's explained items for one method: boxes best first (detect) or classes present, ascending
    (segment). Coordinates are model-input pixels, where the heatmaps [M,H,W] live."""

    classes: np.ndarray  # [M] int64
    scores: np.ndarray  # [M] the explained objective: a box's pre-NMS class score, a class's summed logits
    heatmaps: np.ndarray  # [M,H,W] float32
    boxes: Optional[np.ndarray] = None  # detect: [M,4] x1, y1, x2, y2
    confidences: Optional[np.ndarray] = None  # detect: [M] the box's score after NMS
    anchors: Optional[np.ndarray] = None  # detect: [M] each box's index among the head's pre-NMS boxes
    masks: Optional[np.ndarray] = None  # segment: [M,H,W] bool, the pixels predicted as each class
    shares: Optional[np.ndarray] = None  # segment: [M] each class's share of the pixels, at the score's resolution

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class TaskExplained:
    """One method's output for the decodable inputs of a batch: found[row] is the input at positions[row]."""

    positions: list[int]
    found: list[Found]
    errors: dict[int, str] = field(default_factory=dict)  # batch index -> why the runtime failed on it
    seconds: float = 0.0
    method: str = ""
    measured: Measured = field(default_factory=Measured)  # always empty: the metrics score classifications


class TaskBatchExplainer:
    """Explains batches of Decoded inputs for a detect or segment audit, once per method, and makes the records.

    The same interface as pipeline.BatchExplainer, so the local runner and Ray actors drive either. classes:
    explain only these classes' boxes or masks (None: all). conf, iou, max_det: box selection (detect.decode).
    heatmaps: hand each record's heatmap on in results() (False: None, as when none are saved; an image can
    have hundreds of boxes, and batches wait in the commit queue).
    """

    def __init__(self, explainer: Explainer, task: str, labels: Optional[list[str]] = None, overlays: bool = False,
                 overlay_format: str = "jpg", methods: Sequence[str] = (), classes: Optional[Sequence[int]] = None,
                 conf: float = 0.25, iou: float = 0.45, max_det: int = 300, heatmaps: bool = True) -> None:
        check_task_model(explainer, task)
        self.explainer, self.task, self.labels = explainer, task, labels
        self.overlays, self.overlay_format, self.heatmaps = overlays, overlay_format, heatmaps
        self.methods = tuple(methods) or (explainer.method,)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.conf, self.iou, self.max_det = conf, iou, max_det

    def __call__(self, batch: Sequence[Decoded]) -> BatchResult:
        """explain_all() then results(): the whole job for one batch."""
        return self.results(batch, self.explain_all(batch))

    def explain_all(self, batch: Sequence[Decoded], classes: Optional[Sequence[int]] = None,
                    methods: Optional[Sequence[str]] = None, measure: bool = True) -> list[TaskExplained]:
        """explain() with each method (default: all of this explainer's). classes and measure are
        BatchExplainer's: a task explains what it finds (classes must be None) and has no metrics."""
        if classes is not None:
            raise InputError("a detect or segment audit explains every box or class it finds; filter them with "
                             "--class (TaskBatchExplainer(classes=...)) instead of per-input classes")
        return [self.explain(batch, method) for method in (methods or self.methods)]

    def explain(self, batch: Sequence[Decoded], method: Optional[str] = None) -> TaskExplained:
        """Find and explain the items of the decodable inputs; a batch the runtime rejects is retried image by
        image, so one bad input fails alone."""
        method = method or self.methods[0]
        start = time.perf_counter()
        positions = [index for index, decoded in enumerate(batch) if decoded.ok]
        if not positions:
            return TaskExplained([], [], method=method)
        try:
            found = self._run(batch, positions, method)
            errors: dict[int, str] = {}
        except Exception:  # noqa: BLE001 - isolate the input the runtime cannot take
            found, errors, kept = [], {}, []
            for index in positions:
                try:
                    found.extend(self._run(batch, [index], method))
                    kept.append(index)
                except Exception as error:  # noqa: BLE001
                    errors[index] = f"the model failed on this image: {type(error).__name__}: {error}"
            positions = kept
        return TaskExplained(positions, found, errors, time.perf_counter() - start, method)

    def _run(self, batch: Sequence[Decoded], positions: list[int], method: str) -> list[Found]:
        tensor = np.stack([batch[index].tensor for index in positions])
        if self.task == "detect":
            results = explain_detections(self.explainer, tensor, conf=self.conf, iou=self.iou, max_det=self.max_det,
                                         classes=self.classes, method=method, as_numpy=True)
            return [Found(result.detections.classes, np.asarray(result.scores, np.float32), result.heatmaps,
                          boxes=result.detections.boxes, confidences=result.detections.scores,
                          anchors=result.detections.anchors) for result in results]
        results = explain_segmentation(self.explainer, tensor, classes=self.classes, method=method, as_numpy=True)
        return [Found(result.classes, np.asarray(result.scores, np.float32), result.heatmaps,
                      masks=masks_at(result.masks, result.heatmaps.shape[1:]),
                      shares=result.masks.mean(axis=(1, 2)) if len(result) else np.zeros(0))
                for result in results]

    def results(self, batch: Sequence[Decoded],
                explained: Union[TaskExplained, Sequence[TaskExplained]]) -> BatchResult:
        """Per input, for each method explained (in explained's order), a record per item found (or one with a
        null item when none was), with its heatmap and encoded overlay (or None)."""
        per_method = [explained] if isinstance(explained, TaskExplained) else list(explained)
        named = len(per_method) > 1  # overlay names carry the method when there are several
        rows = [{index: row for row, index in enumerate(one.positions)} for one in per_method]
        result = BatchResult([], [], [])
        for index, decoded in enumerate(batch):
            for one, row_of in zip(per_method, rows):
                base = dict(self._base_record(decoded), method=one.method)
                if index in one.errors:
                    base.update(status="error", reason=one.errors[index])
                if index not in row_of:  # undecodable or failed: one record says why
                    result.records.append(base)
                    result.heatmaps.append(None)
                    result.overlays.append(None)
                    continue
                self._item_results(decoded, one.found[row_of[index]], base, one.method if named else None, result)
        return result

    def _item_results(self, decoded: Decoded, found: Found, base: dict, method: Optional[str],
                      result: BatchResult) -> None:
        """Append a record (with heatmap and overlay) per item of found, or one record with a null item."""
        if not len(found):
            result.records.append(base)
            result.heatmaps.append(None)
            result.overlays.append(None)
            return
        columns = self.columns(found, (decoded.height, decoded.width))
        for item in range(len(found)):
            explained_class = int(found.classes[item])
            record = dict(base, item=item, explained_class=explained_class,
                          explained_label=label_name(self.labels, explained_class), score=float(found.scores[item]),
                          **{name: values[item].item() for name, values in columns.items()})
            data = None
            if self.overlays and decoded.thumbnail is not None:
                record["overlay_file"] = overlay_name(record["path"], self.overlay_format, method,
                                                      self.item_suffix(found, item))
                data = encode_image(self.picture(decoded.thumbnail, found.heatmaps[item], record,
                                                 None if found.masks is None else found.masks[item]),
                                    self.overlay_format)
            result.records.append(record)
            result.heatmaps.append(found.heatmaps[item] if self.heatmaps else None)
            result.overlays.append(data)

    def columns(self, found: Found, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
        """The numeric record columns of found's items, each an [M] array: detect the box confidence and corners
        in the image's own pixels (image_size (H, W)), segment the class's share of the pixels; then the heatmap
        statistics and the share of heat on the item."""
        size = found.heatmaps.shape[1:]
        if self.task == "detect":
            boxes = scale_boxes(found.boxes, size, image_size)
            item = {"anchor": found.anchors, "confidence": found.confidences, "box_x1": boxes[:, 0],
                    "box_y1": boxes[:, 1], "box_x2": boxes[:, 2], "box_y2": boxes[:, 3]}
            coverage = {"heat_in_box": heat_in_boxes(found.heatmaps, found.boxes)}
        else:
            item = {"pixel_share": found.shares}
            coverage = {"heat_in_mask": heat_in_masks(found.heatmaps, found.masks)}
        chunks = [heatmap_stats(found.heatmaps[start:start + STATS_CHUNK])
                  for start in range(0, len(found), STATS_CHUNK)]
        stats = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
        return {**item, **stats, **coverage}

    def item_suffix(self, found: Found, item: int) -> str:
        """What an item's overlay name ends with: box<k> (detect) or class<c> (segment)."""
        return f"box{item}" if self.task == "detect" else f"class{int(found.classes[item])}"

    def picture(self, image: np.ndarray, heatmap: np.ndarray, record: dict, mask: Optional[np.ndarray] = None) -> \
            np.ndarray:
        """RGB image (any size: a thumbnail) with a record's heatmap over it, and its box (the record's corners,
        in its image's pixels) captioned with label and confidence, or the outline of its class's mask (bool,
        any resolution) captioned with the label."""
        picture = overlay(image, heatmap)
        name = record["explained_label"]
        if self.task == "detect":
            corners = [[record[f"box_{corner}"] for corner in ("x1", "y1", "x2", "y2")]]
            box = scale_boxes(corners, (record["height"], record["width"]), image.shape[:2])
            return draw_detections(picture, box, [name], [record["confidence"]])
        return outline_mask(picture, masks_at(mask[None], image.shape[:2])[0], caption=name)

    def explain_records(self, tensors: np.ndarray, records: Sequence[dict],
                        method: Optional[str] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The heatmaps [R,H,W] of records' items explained again, tensors [R,...] each record's input (for the
        report: only the items shown, not every box of their images), and for segment their masks [R,h,w].

        detect: targets.Detection(anchor, class), the same seed as explain_detections gives the box;
        segment: targets.Segmentation(class) over the pixels predicted as the class.
        """
        classes = [int(record["explained_class"]) for record in records]
        if self.task == "detect":
            targets = [Detection(int(record["anchor"]), label) for record, label in zip(records, classes)]
            masks = None
        else:
            targets = [Segmentation(label) for label in classes]
            masks = np.argmax(self.explainer.predict(tensors), axis=1) == np.asarray(classes)[:, None, None]
        explanation = self.explainer.explain(tensors, target=targets, method=method, as_numpy=True)
        return np.asarray(explanation.heatmaps, np.float32), masks

    def _base_record(self, decoded: Decoded) -> dict[str, Any]:
        label = decoded.item.label
        label_index = self.labels.index(label) if self.labels and label in self.labels else _int_or_none(label)
        return {"path": decoded.item.path, "item": None, "label": label, "label_index": label_index,
                "status": "ok" if decoded.ok else "error", "reason": decoded.error,
                "width": decoded.width, "height": decoded.height, "size_bytes": decoded.size_bytes,
                "content_hash": decoded.content_hash}


def masks_at(masks: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bool masks [M,h,w] at size (H, W): as they are when it matches, else resized nearest-neighbour."""
    masks = np.asarray(masks, bool)
    height, width = (int(side) for side in size)
    if masks.shape[1:] == (height, width):
        return masks
    return np.stack([cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
                     for mask in masks]).astype(bool) if len(masks) else np.zeros((0, height, width), bool)


def check_task_model(explainer: Explainer, task: str) -> None:
    """InputError unless the explainer runs a seeded model whose score a task of this kind explains."""
    check_task_score(task, explainer.seeded, explainer.metadata.get("score"),
                     len(explainer.seed_shape) if explainer.seeded else None)


def check_task_score(task: str, seeded: bool, score: Optional[str], rank: Optional[int]) -> None:
    """InputError unless a model seeded (or not) at a score tensor of this rank (None: unknown) fits the task."""
    if task not in SCORE_RANKS:
        raise InputError(f"an audit task is one of classify, {', '.join(SCORE_RANKS)}; got {task!r}")
    if not seeded:
        raise InputError(f"--task {task} needs a model augmented with a gradient seed: give the plain model, or "
                         "augment it with `onnx-gradcam augment MODEL -o OUT --seed --score NAME`")
    if rank is not None and rank != SCORE_RANKS[task]:
        wanted = ("a YOLO detection head [N, 4+C, A] or [N, A, 5+C]" if task == "detect"
                  else "per-pixel logits [N, C, H, W]")
        raise InputError(f"--task {task} explains {wanted}, but the model's score {score!r} has {rank} "
                         "dimensions; name the right output with --score (on the plain model) or choose the task "
                         "that fits it")
