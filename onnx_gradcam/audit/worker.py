"""The decode -> explain -> record steps of one model session, built from a run's config and model.

A local run, each Ray actor and the report's galleries get their decoder, Explainer and BatchExplainer
(TaskBatchExplainer for --task detect or segment) here, so all three decode, explain and record an image
the same way.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from .config import AuditConfig, AuditModel
from .decode import Decoded, Decoder
from .measure import Measurer
from .pipeline import BatchExplainer, BatchResult, Explained, build_explainer
from .readers import InputItem
from .task_pipeline import TaskBatchExplainer, TaskExplained


class AuditWorker:
    """The decoder, the Explainer (its sessions loaded here, not in the first batch) and the BatchExplainer of a run.

    Each input is decoded once and explained once per method of the run, all with the one Explainer (methods
    reading the same outputs share its sessions); the metrics run through the same Explainer's predict.
    thumbnails: keep a small RGB copy of each decoded image (default: when overlays are saved).
    intra_op_threads: cap ONNX Runtime's threads (one for each Ray CPU actor).
    """

    def __init__(self, config: AuditConfig, model: AuditModel, thumbnails: Optional[bool] = None,
                 intra_op_threads: Optional[int] = None) -> None:
        overlays = "overlays" in config.save
        self.decoder = Decoder(model.preprocess, config.max_pixels,
                               thumbnails=overlays if thumbnails is None else thumbnails)
        explainer = build_explainer(model.model_bytes, config.device, config.methods, config.batch_size,
                                    model.preprocess, intra_op_threads, spinning=not config.metrics)
        if config.task != "classify":  # a record per box or class present (--class filters them)
            classes = None if model.target_class is None else [model.target_class]
            self.batcher = TaskBatchExplainer(explainer, config.task, model.labels, overlays, config.overlay_format,
                                              methods=config.methods, classes=classes, conf=config.conf,
                                              iou=config.iou, max_det=config.max_det,
                                              heatmaps="heatmaps" in config.save)
            return
        measurer = (Measurer(explainer, config.metrics, config.metric_options, explainer.layout, explainer.batch_size)
                    if config.metrics else None)
        self.batcher = BatchExplainer(explainer, model.target_class, model.labels, overlays, config.overlay_format,
                                      methods=config.methods, measurer=measurer)

    def decode(self, item: InputItem) -> Decoded:
        """item read and decoded; a failure is a reason in the result, never an exception (thread-safe)."""
        return self.decoder(item)

    def explain(self, batch: Sequence[Decoded], classes: Optional[Sequence[int]] = None,
                methods: Optional[Sequence[str]] = None,
                measure: bool = True) -> Union[list[Explained], list[TaskExplained]]:
        """The model run on the batch's decodable inputs, once per method (default: the run's methods), with the
        run's metrics unless measure is False; classes: one per input, default the run's --class (classify)."""
        return self.batcher.explain_all(batch, classes, methods, measure)

    def results(self, batch: Sequence[Decoded],
                explained: Union[Sequence[Explained], Sequence[TaskExplained]]) -> BatchResult:
        """A record per input and method (detect, segment: per input, method and item), with its heatmap and
        overlay bytes (or None); thread-safe."""
        return self.batcher.results(batch, explained)
