"""One audit run: collect inputs, skip what is committed, decode and explain in a pipeline, commit, report."""
from __future__ import annotations

import json
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ..errors import InputError
from .config import AuditConfig, AuditModel, prepare_model
from .decode import Decoded, decode_in_order
from .journal import Journal
from .measure import metric_columns
from .pipeline import Explained
from .readers import InputItem, collect_inputs
from .summary import AuditSummary, Timings, summarize
from .worker import AuditWorker
from .writers import records_schema, write_bytes

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"


def run_audit(config: AuditConfig) -> AuditSummary:
    """Audit config.inputs into config.out_dir (resuming what a previous run committed); return the summary."""
    out_dir = Path(config.out_dir)
    items = collect_inputs(config.inputs, exclude=out_dir)
    if not items:
        raise InputError(f"no input images found in {' '.join(map(str, config.inputs))}")
    model = prepare_model(config)
    journal = Journal(out_dir, save_heatmaps="heatmaps" in config.save, commit_every=config.commit_every,
                      schema=records_schema(metric_columns(config.metrics), config.task))
    try:  # the journal holds the folder's lock until the report is written
        journal.open(model.settings(config))
        pending = [item for item in items if not journal.is_done(item.path, config.methods)]
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
        summary = summarize(config, table, resumed, timings)
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
    worker = AuditWorker(config, model)
    timings = Timings(images=len(pending))
    start = time.perf_counter()
    ahead = 2 * config.batch_size + 2 * config.workers  # bounded: memory stays flat on any dataset size
    with ThreadPoolExecutor(config.workers, thread_name_prefix="audit-decode") as pool:
        committer = _Committer(journal, worker, pool, progress, depth=config.workers + 2)
        try:
            batches = _timed(_chunks(decode_in_order(pending, worker.decode, pool, ahead), config.batch_size), timings)
            for batch in batches:
                explained = worker.explain(batch)
                timings.explain += sum(one.seconds for one in explained)
                timings.metrics += sum(one.measured.seconds for one in explained)
                timings.commit_wait += committer.submit(batch, explained)
        finally:
            committer.close()
    timings.wall = time.perf_counter() - start
    return timings


class _Committer:
    """Records, statistics and overlays are made on the pool, then committed in order by a writer thread,
    all while the next batch runs."""

    def __init__(self, journal: Journal, worker: AuditWorker, pool: ThreadPoolExecutor, progress,
                 depth: int = 4) -> None:
        self.journal, self.worker, self.pool, self.progress = journal, worker, pool, progress
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._work, name="audit-commit", daemon=True)
        self.thread.start()

    def submit(self, batch: list[Decoded], explained: list[Explained]) -> float:
        """Queue a batch for commit; return the seconds spent waiting for room."""
        start = time.perf_counter()
        job = (self.pool.submit(self.worker.results, batch, explained), len(batch))
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
