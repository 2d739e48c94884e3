"""Batches of decoded inputs -> Explainer -> one record per input (plus heatmaps and overlay bytes)."""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from ..arrays import host
from ..explainer import Explainer
from ..labels import label_name
from ..render import overlay
from .decode import Decoded
from .measure import Measured, Measurer
from .stats import heatmap_stats


@dataclass
class Explained:
    """One method's output for the decodable inputs of a batch; rows follow `positions` (indices into the batch)."""

    positions: list[int]
    heatmaps: np.ndarray  # [M,H,W] float32
    classes: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray  # [M, classes]
    errors: dict[int, str] = field(default_factory=dict)  # batch index -> why the runtime failed on it
    seconds: float = 0.0
    method: str = ""
    measured: Measured = field(default_factory=Measured)  # faithfulness metrics of the rows

    @classmethod
    def empty(cls, errors: Optional[dict[int, str]] = None, seconds: float = 0.0, method: str = "") -> "Explained":
        """No explained rows (nothing decodable, or the runtime failed on every input)."""
        return cls([], np.zeros((0, 0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                   np.zeros((0, 0), np.float32), errors or {}, seconds, method)


@dataclass
class BatchResult:
    """What one batch commits: a record per input and method, and per record its heatmap and overlay bytes (or None)."""

    records: list[dict]
    heatmaps: list[Optional[np.ndarray]]
    overlays: list[Optional[bytes]]


def build_explainer(model_bytes: bytes, device: str, methods: Union[str, Sequence[str]], batch_size: int,
                    preprocess, intra_op_threads: Optional[int] = None, spinning: bool = True) -> Explainer:
    """An Explainer for the audit's methods (the first is its default; sessions load now, once per output set).

    intra_op_threads caps ONNX Runtime's threads (one per Ray CPU actor). spinning=False stops its threads
    from spinning after each run: with metrics, runs alternate with imputation and perturbation on the same
    cores, and the spinning took a quarter of the metrics' CPU time (digits demo, 2 cores) for no speed.
    """
    methods = [methods] if isinstance(methods, str) else list(methods)
    session_options = None
    if intra_op_threads or not spinning:
        import onnxruntime as ort

        session_options = ort.SessionOptions()
        session_options.enable_mem_pattern = False  # as the Explainer's own default
        if intra_op_threads:
            session_options.intra_op_num_threads = intra_op_threads
        if not spinning:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    explainer = Explainer(model_bytes, device=device, method=methods[0], batch_size=batch_size,
                          preprocess=preprocess, session_options=session_options)
    for method in methods:  # the sessions load before the first batch, not inside its timing
        explainer.warm_up(method)
    return explainer


class BatchExplainer:
    """Explains batches of Decoded inputs with one Explainer, once per method, and turns the results into records.

    methods: the methods to run (default: the Explainer's own), each giving one record per input.
    measurer: the faithfulness metrics to add as columns (audit.measure), or None.
    """

    def __init__(self, explainer: Explainer, target_class: Optional[int] = None,
                 labels: Optional[list[str]] = None, overlays: bool = False, overlay_format: str = "jpg",
                 methods: Sequence[str] = (), measurer: Optional[Measurer] = None) -> None:
        self.explainer = explainer
        self.target_class = target_class
        self.labels = labels
        self.label_indices = {name: index for index, name in enumerate(labels or [])}
        self.overlays = overlays
        self.overlay_format = overlay_format
        self.methods = tuple(methods) or (explainer.method,)
        self.measurer = measurer

    def __call__(self, batch: Sequence[Decoded]) -> BatchResult:
        """explain_all() then results(): the whole job for one batch."""
        return self.results(batch, self.explain_all(batch))

    def explain_all(self, batch: Sequence[Decoded], classes: Optional[Sequence[int]] = None,
                    methods: Optional[Sequence[str]] = None, measure: bool = True) -> list[Explained]:
        """explain() with each method (default: all of this BatchExplainer's), on the same decoded batch."""
        return [self.explain(batch, classes, method, measure) for method in (methods or self.methods)]

    def explain(self, batch: Sequence[Decoded], classes: Optional[Sequence[int]] = None,
                method: Optional[str] = None, measure: bool = True) -> Explained:
        """Run the model on the decodable inputs; a batch the runtime rejects is retried image by image.

        classes: the class to explain for each input of the batch (default: target_class, or the top class).
        method: default the first of this BatchExplainer's. measure: add the metrics (when there are any).
        """
        method = method or self.methods[0]
        start = time.perf_counter()
        positions = [index for index, decoded in enumerate(batch) if decoded.ok]
        if not positions:
            return Explained.empty(method=method)
        try:
            parts = [self._run(batch, positions, classes, method)]
            errors: dict[int, str] = {}
        except Exception:  # noqa: BLE001 - isolate the input the runtime cannot take
            parts, errors, kept = [], {}, []
            for index in positions:
                try:
                    parts.append(self._run(batch, [index], classes, method))
                    kept.append(index)
                except Exception as error:  # noqa: BLE001
                    errors[index] = f"the model failed on this image: {type(error).__name__}: {error}"
            positions = kept
            if not parts:
                return Explained.empty(errors, time.perf_counter() - start, method)
        heatmaps, explained_classes, scores, probabilities = (np.concatenate(column) for column in zip(*parts))
        explained = Explained(positions, heatmaps, explained_classes, scores, probabilities, errors,
                              time.perf_counter() - start, method)
        if measure and self.measurer is not None:
            explained.measured = self.measurer(np.stack([batch[index].tensor for index in positions]), heatmaps,
                                               explained_classes, [batch[index].item.path for index in positions])
        return explained

    def _run(self, batch: Sequence[Decoded], positions: list[int], classes: Optional[Sequence[int]],
             method: str) -> tuple[np.ndarray, ...]:
        tensor = np.stack([batch[index].tensor for index in positions])
        target = self.target_class if classes is None else np.asarray([classes[i] for i in positions], np.int64)
        explanation = self.explainer.explain(tensor, target_class=target, method=method)
        return (host(explanation.heatmaps).astype(np.float32, copy=False), host(explanation.classes),
                host(explanation.scores), explanation.probabilities)

    def results(self, batch: Sequence[Decoded], explained: Union[Explained, Sequence[Explained]]) -> BatchResult:
        """Records (with heatmap statistics and metrics), heatmaps and encoded overlays: per input, a record for
        each method explained (in explained's order)."""
        per_method = [explained] if isinstance(explained, Explained) else list(explained)
        named = len(per_method) > 1  # overlay names carry the method when there are several
        parts = [self._method_results(batch, one, named) for one in per_method]
        order = [(part, index) for index in range(len(batch)) for part in parts]  # input-major
        return BatchResult([part.records[i] for part, i in order], [part.heatmaps[i] for part, i in order],
                           [part.overlays[i] for part, i in order])

    def _method_results(self, batch: Sequence[Decoded], explained: Explained, named: bool) -> BatchResult:
        records = [dict(self._base_record(decoded), method=explained.method) for decoded in batch]
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
                if row in explained.measured.errors:  # a metric failed: its column is null, the reason says why
                    record["reason"] = explained.measured.errors[row]
                    record.update((name, None) for name in explained.measured.columns if np.isnan(record[name]))
                heatmaps[index] = explained.heatmaps[row]
                if self.overlays and batch[index].thumbnail is not None:
                    record["overlay_file"] = overlay_name(record["path"], self.overlay_format,
                                                          explained.method if named else None)
                    overlays[index] = encode_overlay(batch[index].thumbnail, heatmaps[index], self.overlay_format)
        return BatchResult(records, heatmaps, overlays)

    def columns(self, explained: Explained) -> dict[str, np.ndarray]:
        """The per-input numeric record columns, each an array over explained's rows: the heatmap statistics,
        then the faithfulness metrics."""
        return {**heatmap_stats(explained.heatmaps), **explained.measured.columns}

    def _base_record(self, decoded: Decoded) -> dict[str, Any]:
        label = decoded.item.label
        index = self.label_indices.get(label) if label in self.label_indices else _int_or_none(label)
        return {"path": decoded.item.path, "label": label, "label_index": index,
                "status": "ok" if decoded.ok else "error", "reason": decoded.error,
                "width": decoded.width, "height": decoded.height, "size_bytes": decoded.size_bytes,
                "content_hash": decoded.content_hash}


def overlay_name(path: str, overlay_format: str, method: Optional[str] = None, item: Optional[str] = None) -> str:
    """overlays/<stem>-<8 hex of the path>[-<method>][-<item>].<format>: unique per input path (method, and item
    of a detect or segment record: box<k>, class<c>), the same on every rerun."""
    stem = os.path.splitext(os.path.basename(path))[0][:80]
    digest = hashlib.sha1(path.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    suffix = "".join("-" + "".join(c if c.isalnum() or c in "_-" else "_" for c in part)
                     for part in (method, item) if part is not None)
    return f"overlays/{stem}-{digest}{suffix}.{overlay_format}"


def encode_overlay(image: np.ndarray, heatmap: np.ndarray, overlay_format: str = "jpg") -> bytes:
    """JPEG (quality 90) or PNG bytes of the heatmap blended over the RGB image."""
    return encode_image(overlay(image, heatmap), overlay_format)


def encode_image(image: np.ndarray, overlay_format: str = "jpg") -> bytes:
    """JPEG (quality 90) or PNG bytes of an RGB image."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if overlay_format == "jpg" else []
    ok, data = cv2.imencode("." + overlay_format, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV cannot encode .{overlay_format}")
    return data.tobytes()


def _int_or_none(label: Optional[str]) -> Optional[int]:
    try:
        return int(label) if label is not None else None
    except ValueError:
        return None
