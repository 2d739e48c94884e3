"""What a finished audit says about itself: where this run's time went, and the counts over all its records.

A leaf module: the runner, the Ray backend and the report all read these types, and nothing here imports them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from .measure import metric_columns

if TYPE_CHECKING:
    import pyarrow as pa

    from .config import AuditConfig


@dataclass
class Timings:
    """Where this run's wall time went (seconds); busy share = (explain + metrics time) / (wall time x runtimes)."""

    wall: float = 0.0
    explain: float = 0.0  # inside Explainer.explain: ONNX Runtime plus the heatmap math
    metrics: float = 0.0  # faithfulness metrics: perturbed images through Explainer.predict, ROAD's imputation
    decode_wait: float = 0.0  # the explaining thread waiting for decoded images
    commit_wait: float = 0.0  # the explaining thread waiting for the writer
    images: int = 0
    lanes: int = 1  # runtimes working in parallel (Ray actors)

    @property
    def busy_share(self) -> Optional[float]:
        """Share of wall time the runtimes spent explaining and measuring (None when nothing ran)."""
        return (self.explain + self.metrics) / (self.wall * self.lanes) if self.wall > 0 and self.images else None

    @property
    def images_per_second(self) -> Optional[float]:
        """Images processed per wall-clock second (None when nothing ran)."""
        return self.images / self.wall if self.wall > 0 and self.images else None


@dataclass
class AuditSummary:
    """Counts over all records in the folder (one per input and method; detect and segment: per input, method
    and item), and what this run did; exit_code is 1 when any input failed. ok, errors and duplicates count
    inputs x methods. metrics: per method, the mean of each metric column over its explained records. items:
    the boxes (detect) or classes present (segment) explained, empty: inputs x methods with none (None for
    classify)."""

    out_dir: str
    inputs: int
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
    metrics_seconds: float
    method: str
    methods: list[str]
    metrics: dict[str, dict[str, Optional[float]]]
    model: str
    report: Optional[str]
    task: str = "classify"
    items: Optional[int] = None
    empty: Optional[int] = None

    @property
    def exit_code(self) -> int:
        """0 when every input was explained, 1 when any failed."""
        return 1 if self.errors else 0


def summarize(config: "AuditConfig", table: "pa.Table", resumed: int, timings: Timings) -> AuditSummary:
    """The summary of the merged records in table and of this run's timings (report left unset)."""
    status = np.asarray(table["status"].to_pylist(), dtype=object)
    methods = np.asarray(table["method"].to_pylist(), dtype=object)
    # Each input and method counts once, whatever its number of records (detect, segment).
    first = first_of_each_input(table)
    columns = metric_columns(config.metrics)
    means = {method: {column: _mean(table[column].to_pylist(), (methods == method) & (status == "ok"))
                      for column in columns} for method in config.methods} if columns else {}
    correct, items, empty = [], None, None
    if config.task == "classify":
        # Predictions do not depend on the method: accuracy counts each input once, in the first method's records.
        correct = [c for c, m in zip(table["correct"].to_pylist(), methods)
                   if c is not None and m == config.methods[0]]
    else:
        has_item = np.asarray([item is not None for item in table["item"].to_pylist()], dtype=bool)
        items = int(has_item.sum())
        empty = int(((status == "ok") & ~has_item).sum())
    duplicated = np.asarray([value is not None for value in table["duplicate_of"].to_pylist()], dtype=bool)
    return AuditSummary(
        out_dir=str(config.out_dir), inputs=len(set(table["path"].to_pylist())), records=table.num_rows,
        ok=int((first & (status == "ok")).sum()), errors=int((first & (status == "error")).sum()),
        duplicates=int((first & duplicated).sum()),
        labelled=len(correct), accuracy=float(np.mean(correct)) if correct else None, resumed=resumed,
        processed=timings.images, seconds=round(timings.wall, 3),
        images_per_second=timings.images_per_second, busy_share=timings.busy_share,
        explain_seconds=round(timings.explain, 3), decode_wait_seconds=round(timings.decode_wait, 3),
        commit_wait_seconds=round(timings.commit_wait, 3), metrics_seconds=round(timings.metrics, 3),
        method=config.method, methods=list(config.methods), metrics=means,
        model=os.fspath(config.model), report=None, task=config.task, items=items, empty=empty)


def first_of_each_input(table: "pa.Table") -> np.ndarray:
    """A bool per row: the first row of its (path, method)."""
    seen: set = set()
    first = []
    for key in zip(table["path"].to_pylist(), table["method"].to_pylist()):
        first.append(key not in seen)
        seen.add(key)
    return np.asarray(first, dtype=bool)


def _mean(values: list, rows: np.ndarray) -> Optional[float]:
    """Mean of the finite values at rows (None when there are none)."""
    chosen = np.asarray([v for v, keep in zip(values, rows) if keep and v is not None], np.float64)
    chosen = chosen[np.isfinite(chosen)]
    return float(chosen.mean()) if chosen.size else None
