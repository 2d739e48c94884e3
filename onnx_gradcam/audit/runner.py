"""One audit run: collect inputs, skip what is committed, decode and explain in a pipeline, commit, report."""
from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa

from ..errors import InputError
from .config import AuditConfig, AuditModel, prepare_model
from .decode import Decoded, Decoder, decode_in_order
from .journal import Journal
from .pipeline import BatchExplainer, Explained, build_explainer
from .readers import InputItem, collect_inputs
from .writers import write_bytes

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"


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


def run_audit(config: AuditConfig) -> AuditSummary:
    """Audit config.inputs into config.out_dir (resuming what a previous run committed); return the summary."""
    out_dir = Path(config.out_dir)
    items = collect_inputs(config.inputs, exclude=out_dir)
    if not items:
        raise InputError(f"no input images found in {' '.join(map(str, config.inputs))}")
    model = prepare_model(config)
    journal = Journal(out_dir, save_heatmaps="heatmaps" in config.save, commit_every=config.commit_every)
    try:  # the journal holds the folder's lock until the report is written
        journal.open(model.settings(config))
        pending = [item for item in items if item.path not in journal.committed]
        resumed = len(items) - len(pending)
        if resumed:
            print(f"resuming {out_dir}: {resumed} of {len(items)} inputs already committed", file=sys.stderr)
        timings = Timings()
        if pending:
            with _progress(config, len(items), resumed) as bar:
                if config.ray:
                    from .ray import run_on_ray

                    timings = run_on_ray(config, model, pending, journal, bar.update)
                else:
                    timings = run_local(config, model, pending, journal, bar.update)
        table = journal.finalize(csv=config.csv)
        summary = _summarize(config, model, table, resumed, timings)
        if config.report:
            from .report import write_report

            write_report(out_dir / REPORT_FILE, config, model, table, summary)
            summary.report = str(out_dir / REPORT_FILE)
        write_bytes(out_dir / SUMMARY_FILE, json.dumps(asdict(summary), indent=2).encode())
    finally:
        journal.close()
    return summary


def run_local(config: AuditConfig, model: AuditModel, pending: list[InputItem], journal: Journal,
              progress=lambda count: None) -> Timings:
    """Decode on config.workers threads, explain on this thread, commit on a writer thread: all overlapped."""
    explainer = build_explainer(model.model_bytes, config.device, config.method, config.batch_size, model.preprocess)
    batcher = BatchExplainer(explainer, model.target_class, model.labels, "overlays" in config.save,
                             config.overlay_format)
    decoder = Decoder(model.preprocess, config.max_pixels, thumbnails="overlays" in config.save)
    timings = Timings(images=len(pending))
    start = time.perf_counter()
    ahead = 2 * config.batch_size + 2 * config.workers  # bounded: memory stays flat on any dataset size
    with ThreadPoolExecutor(config.workers, thread_name_prefix="audit-decode") as pool:
        committer = _Committer(journal, batcher, pool, progress, depth=config.workers + 2)
        try:
            batches = _timed(_chunks(decode_in_order(pending, decoder, pool, ahead), config.batch_size), timings)
            for batch in batches:
                explained = batcher.explain(batch)
                timings.explain += explained.seconds
                timings.commit_wait += committer.submit(batch, explained)
        finally:
            committer.close()
    timings.wall = time.perf_counter() - start
    return timings


class _Committer:
    """Records, statistics and overlays are made on the pool, then committed in order by a writer thread,
    all while the next batch runs."""

    def __init__(self, journal: Journal, batcher: BatchExplainer, pool: ThreadPoolExecutor, progress,
                 depth: int = 4) -> None:
        self.journal, self.batcher, self.pool, self.progress = journal, batcher, pool, progress
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._work, name="audit-commit", daemon=True)
        self.thread.start()

    def submit(self, batch: list[Decoded], explained: Explained) -> float:
        """Queue a batch for commit; return the seconds spent waiting for room."""
        start = time.perf_counter()
        job = (self.pool.submit(self.batcher.results, batch, explained), len(batch))
        while True:
            self._raise()
            try:
                self.queue.put(job, timeout=0.1)
                return time.perf_counter() - start
            except queue.Full:
                continue

    def close(self) -> None:
        """Commit what is queued, stop the thread, and re-raise a failure it had."""
        while self.thread.is_alive():
            try:
                self.queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self.thread.join()
        self._raise()
        self.journal.flush()  # also on Ctrl-C: what was explained is kept

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None or self.error is not None:
                return
            try:
                result, count = job
                self.journal.add(result.result())
                self.progress(count)
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                self.error = error
                return


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _timed(batches: Iterator[list], timings: Timings) -> Iterator[list]:
    """Yield from batches, adding the time spent waiting for each one to timings.decode_wait."""
    while True:
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        timings.decode_wait += time.perf_counter() - start
        yield batch


def _progress(config: AuditConfig, total: int, done: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="img", desc="audit", disable=not config.progress,
                dynamic_ncols=True, mininterval=0.5, file=sys.stderr)


def _summarize(config: AuditConfig, model: AuditModel, table: pa.Table, resumed: int,
               timings: Timings) -> AuditSummary:
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
