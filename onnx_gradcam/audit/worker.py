"""The decode -> explain -> record steps of one model session, built from a run's config and model.

A local run, each Ray actor and the report's galleries get their decoder, Explainer and BatchExplainer
here, so all three decode, explain and record an image the same way.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .config import AuditConfig, AuditModel
from .decode import Decoded, Decoder
from .pipeline import BatchExplainer, BatchResult, Explained, build_explainer
from .readers import InputItem


class AuditWorker:
    """The decoder, the Explainer (its session loaded here, not in the first batch) and the BatchExplainer of a run.

    thumbnails: keep a small RGB copy of each decoded image (default: when overlays are saved).
    intra_op_threads: cap ONNX Runtime's threads (one for each Ray CPU actor).
    """

    def __init__(self, config: AuditConfig, model: AuditModel, thumbnails: Optional[bool] = None,
                 intra_op_threads: Optional[int] = None) -> None:
        overlays = "overlays" in config.save
        self.decoder = Decoder(model.preprocess, config.max_pixels,
                               thumbnails=overlays if thumbnails is None else thumbnails)
        explainer = build_explainer(model.model_bytes, config.device, config.method, config.batch_size,
                                    model.preprocess, intra_op_threads)
        self.batcher = BatchExplainer(explainer, model.target_class, model.labels, overlays, config.overlay_format)

    def decode(self, item: InputItem) -> Decoded:
        """item read and decoded; a failure is a reason in the result, never an exception (thread-safe)."""
        return self.decoder(item)

    def explain(self, batch: Sequence[Decoded], classes: Optional[Sequence[int]] = None) -> Explained:
        """The model run on the batch's decodable inputs (classes: one per input, default the run's --class)."""
        return self.batcher.explain(batch, classes)

    def results(self, batch: Sequence[Decoded], explained: Explained) -> BatchResult:
        """A record per input of the batch, with its heatmap and overlay bytes (or None); thread-safe."""
        return self.batcher.results(batch, explained)
