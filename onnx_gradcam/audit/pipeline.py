"""Batches of decoded inputs -> Explainer -> one record per input (plus heatmaps and overlay bytes)."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from ..explainer import Explainer
from ..labels import label_name
from ..render import overlay
from .decode import Decoded
from .stats import heatmap_stats


@dataclass
class Explained:
    """Explainer output for the decodable inputs of a batch; rows follow `positions` (indices into the batch)."""

    positions: list[int]
    heatmaps: np.ndarray  # [M,H,W] float32
    classes: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray  # [M, classes]
    errors: dict[int, str] = field(default_factory=dict)  # batch index -> why the runtime failed on it
    seconds: float = 0.0

    @classmethod
    def empty(cls, errors: Optional[dict[int, str]] = None, seconds: float = 0.0) -> "Explained":
        """No explained rows (nothing decodable, or the runtime failed on every input)."""
        return cls([], np.zeros((0, 0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                   np.zeros((0, 0), np.float32), errors or {}, seconds)


@dataclass
class BatchResult:
    """What one batch commits: a record per input, and per input its heatmap and overlay bytes (or None)."""

    records: list[dict]
    heatmaps: list[Optional[np.ndarray]]
    overlays: list[Optional[bytes]]


def build_explainer(model_bytes: bytes, device: str, method: str, batch_size: int, preprocess,
                    intra_op_threads: Optional[int] = None) -> Explainer:
    """An Explainer for the audit; intra_op_threads caps ONNX Runtime's threads (one per Ray CPU actor)."""
    session_options = None
    if intra_op_threads:
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = intra_op_threads
    explainer = Explainer(model_bytes, device=device, method=method, batch_size=batch_size, preprocess=preprocess,
                          session_options=session_options)
    return explainer.warm_up()  # the session loads before the first batch, not inside its timing


class BatchExplainer:
    """Explains batches of Decoded inputs with one Explainer and turns the results into records."""

    def __init__(self, explainer: Explainer, target_class: Optional[int] = None,
                 labels: Optional[list[str]] = None, overlays: bool = False, overlay_format: str = "jpg") -> None:
        self.explainer = explainer
        self.target_class = target_class
        self.labels = labels
        self.label_indices = {name: index for index, name in enumerate(labels or [])}
        self.overlays = overlays
        self.overlay_format = overlay_format

    def __call__(self, batch: Sequence[Decoded]) -> BatchResult:
        """explain() then results(): the whole job for one batch."""
        return self.results(batch, self.explain(batch))

    def explain(self, batch: Sequence[Decoded], classes: Optional[Sequence[int]] = None) -> Explained:
        """Run the model on the decodable inputs; a batch the runtime rejects is retried image by image.

        classes: the class to explain for each input of the batch (default: target_class, or the top class).
        """
        start = time.perf_counter()
        positions = [index for index, decoded in enumerate(batch) if decoded.ok]
        if not positions:
            return Explained.empty()
        try:
            parts = [self._run(batch, positions, classes)]
            errors: dict[int, str] = {}
        except Exception:  # noqa: BLE001 - isolate the input the runtime cannot take
            parts, errors, kept = [], {}, []
            for index in positions:
                try:
                    parts.append(self._run(batch, [index], classes))
                    kept.append(index)
                except Exception as error:  # noqa: BLE001
                    errors[index] = f"the model failed on this image: {type(error).__name__}: {error}"
            positions = kept
            if not parts:
                return Explained.empty(errors, time.perf_counter() - start)
        heatmaps, explained_classes, scores, probabilities = (np.concatenate(column) for column in zip(*parts))
        return Explained(positions, heatmaps, explained_classes, scores, probabilities, errors,
                         time.perf_counter() - start)

    def _run(self, batch: Sequence[Decoded], positions: list[int],
             classes: Optional[Sequence[int]]) -> tuple[np.ndarray, ...]:
        tensor = np.stack([batch[index].tensor for index in positions])
        target = self.target_class if classes is None else np.asarray([classes[i] for i in positions], np.int64)
        explanation = self.explainer.explain(tensor, target_class=target)
        return (_host(explanation.heatmaps).astype(np.float32, copy=False), _host(explanation.classes),
                _host(explanation.scores), explanation.probabilities)

    def results(self, batch: Sequence[Decoded], explained: Explained) -> BatchResult:
        """Records (with heatmap statistics), heatmaps and encoded overlays for every input of the batch."""
        records = [self._base_record(decoded) for decoded in batch]
        heatmaps: list[Optional[np.ndarray]] = [None] * len(batch)
        overlays: list[Optional[bytes]] = [None] * len(batch)
        for index, reason in explained.errors.items():
            records[index].update(status="error", reason=reason)
        if explained.positions:
            columns = self.columns(explained)
            predicted = explained.probabilities.argmax(axis=1)
            for row, index in enumerate(explained.positions):
                record = records[index]
                predicted_class, explained_class = int(predicted[row]), int(explained.classes[row])
                record.update(
                    predicted_class=predicted_class, predicted_label=label_name(self.labels, predicted_class),
                    probability=float(explained.probabilities[row, predicted_class]),
                    explained_class=explained_class, explained_label=label_name(self.labels, explained_class),
                    score=float(explained.scores[row]),
                    correct=None if record["label_index"] is None else record["label_index"] == predicted_class,
                    **{name: float(values[row]) for name, values in columns.items()})
                heatmaps[index] = explained.heatmaps[row]
                if self.overlays and batch[index].thumbnail is not None:
                    record["overlay_file"] = overlay_name(record["path"], self.overlay_format)
                    overlays[index] = encode_overlay(batch[index].thumbnail, heatmaps[index], self.overlay_format)
        return BatchResult(records, heatmaps, overlays)

    def columns(self, explained: Explained) -> dict[str, np.ndarray]:
        """The per-input numeric record columns, each an array over explained's rows: the heatmap statistics."""
        return heatmap_stats(explained.heatmaps)

    def _base_record(self, decoded: Decoded) -> dict[str, Any]:
        label = decoded.item.label
        index = self.label_indices.get(label) if label in self.label_indices else _int_or_none(label)
        return {"path": decoded.item.path, "label": label, "label_index": index,
                "status": "ok" if decoded.ok else "error", "reason": decoded.error,
                "width": decoded.width, "height": decoded.height, "size_bytes": decoded.size_bytes,
                "content_hash": decoded.content_hash}


def overlay_name(path: str, overlay_format: str) -> str:
    """overlays/<stem>-<8 hex of the path>.<format>: unique per input path, the same on every rerun."""
    stem = os.path.splitext(os.path.basename(path))[0][:80]
    digest = hashlib.sha1(path.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"overlays/{stem}-{digest}.{overlay_format}"


def encode_overlay(image: np.ndarray, heatmap: np.ndarray, overlay_format: str = "jpg") -> bytes:
    """JPEG (quality 90) or PNG bytes of the heatmap blended over the RGB image."""
    blended = cv2.cvtColor(overlay(image, heatmap), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if overlay_format == "jpg" else []
    ok, data = cv2.imencode("." + overlay_format, blended, params)
    if not ok:
        raise RuntimeError(f"OpenCV cannot encode .{overlay_format}")
    return data.tobytes()


def _int_or_none(label: Optional[str]) -> Optional[int]:
    try:
        return int(label) if label is not None else None
    except ValueError:
        return None


def _host(value) -> np.ndarray:
    return value.get() if hasattr(value, "get") and not isinstance(value, np.ndarray) else np.asarray(value)
