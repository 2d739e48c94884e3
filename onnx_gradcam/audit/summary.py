"""What a finished audit says about itself: where this run's time went, and the counts over all its records.

A leaf module: the runner, the Ray backend and the report all read these types, and nothing here imports them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from .config import AuditConfig


@dataclass
class Timings:
    """Where this run's wall time went (seconds); busy share = explain time / (wall time x runtimes)."""

    wall: float = 0.0
    explain: float = 0.0  # inside Explainer.explain: ONNX Runtime plus the heatmap math
    decode_wait: float = 0.0  # the explaining thread waiting for decoded images
    commit_wait: float = 0.0  # the explaining thread waiting for the writer
    images: int = 0
    lanes: int = 1  # runtimes working in parallel (Ray actors)

    @property
    def busy_share(self) -> Optional[float]:
        """Share of wall time the runtimes spent explaining (None when nothing ran)."""
        return self.explain / (self.wall * self.lanes) if self.wall > 0 and self.images else None

    @property
    def images_per_second(self) -> Optional[float]:
        """Images processed per wall-clock second (None when nothing ran)."""
        return self.images / self.wall if self.wall > 0 and self.images else None


@dataclass
class AuditSummary:
    """Counts over all records in the folder, and what this run did; exit_code is 1 when any input failed."""

    out_dir: str
    records: int
    ok: int
    errors: int
    duplicates: int
    labelled: int
    accuracy: Optional[float]
    resumed: int
    processed: int
    seconds: float
    images_per_second: Optional[float]
    busy_share: Optional[float]
    explain_seconds: float
    decode_wait_seconds: float
    commit_wait_seconds: float
    method: str
    model: str
    report: Optional[str]

    @property
    def exit_code(self) -> int:
        """0 when every input was explained, 1 when any failed."""
        return 1 if self.errors else 0


def summarize(config: "AuditConfig", table: "pa.Table", resumed: int, timings: Timings) -> AuditSummary:
    """The summary of the merged records in table and of this run's timings (report left unset)."""
    status = np.asarray(table["status"].to_pylist(), dtype=object)
    correct = [c for c in table["correct"].to_pylist() if c is not None]
    return AuditSummary(
        out_dir=str(config.out_dir), records=table.num_rows, ok=int((status == "ok").sum()),
        errors=int((status == "error").sum()), duplicates=table.num_rows - table["duplicate_of"].null_count,
        labelled=len(correct), accuracy=float(np.mean(correct)) if correct else None, resumed=resumed,
        processed=timings.images, seconds=round(timings.wall, 3),
        images_per_second=timings.images_per_second, busy_share=timings.busy_share,
        explain_seconds=round(timings.explain, 3), decode_wait_seconds=round(timings.decode_wait, 3),
        commit_wait_seconds=round(timings.commit_wait, 3),
        method=config.method, model=os.fspath(config.model), report=None)
