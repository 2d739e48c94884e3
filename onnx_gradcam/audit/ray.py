"""The same audit on Ray Data: actors each hold one model session (map_batches with a callable class).

Actors decode, explain and compute statistics and overlays; the driver commits what comes back through
the same Journal as a local run, so records, resume and the report do not depend on where the work ran.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import GradCamError
from .config import AuditConfig, AuditModel
from .journal import Journal
from .pipeline import BatchResult
from .readers import InputItem
from .summary import Timings
from .worker import AuditWorker

DECODE_THREADS_PER_ACTOR = 2


class AuditActor:
    """Ray Data callable class: built once per actor (one InferenceSession), then called per batch."""

    def __init__(self, config: AuditConfig, model: AuditModel, intra_op_threads: Optional[int]) -> None:
        self.worker = AuditWorker(config, model, intra_op_threads=intra_op_threads)
        self.pool = ThreadPoolExecutor(DECODE_THREADS_PER_ACTOR)
        self.heatmaps = "heatmaps" in config.save

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [InputItem(path, label or None) for path, label in zip(batch["path"].to_pylist(),
                                                                       batch["label"].to_pylist())]
        decoded = list(self.pool.map(self.worker.decode, items))
        explained = self.worker.explain(decoded)
        result = self.worker.results(decoded, explained)
        if not self.heatmaps:  # nothing to save: keep them out of the object store
            result.heatmaps = [None] * len(result.heatmaps)
        return result_to_arrow(result, sum(one.seconds for one in explained),
                               sum(one.measured.seconds for one in explained))


def result_to_arrow(result: BatchResult, seconds: float, metric_seconds: float = 0.0) -> pa.Table:
    """A BatchResult as Arrow columns (JSON records, float16 heatmap bytes, overlay bytes) for Ray's object store,
    each row marked with the batch it belongs to (an id, its row count and the row's place in it)."""
    count = max(1, len(result.records))
    return pa.table({
        "batch": pa.array([uuid.uuid4().hex] * len(result.records), pa.string()),
        "batch_rows": pa.array([len(result.records)] * len(result.records), pa.int64()),
        "row": pa.array(range(len(result.records)), pa.int64()),
        "record": pa.array([json.dumps(record) for record in result.records], pa.string()),
        "heatmap": pa.array([None if h is None else np.asarray(h, np.float16).tobytes() for h in result.heatmaps],
                            pa.binary()),
        "overlay": pa.array(result.overlays, pa.binary()),
        "seconds": pa.array([seconds / count] * len(result.records), pa.float64()),
        "metric_seconds": pa.array([metric_seconds / count] * len(result.records), pa.float64()),
    })


class BatchAssembler:
    """Joins the pieces of each batch that comes back from the actors.

    Ray Data splits a large output (detect records with heatmaps, say) into several blocks and may deliver
    them among other batches' blocks; the journal must get every record of an input at once, so that the
    input commits whole or not at all.
    """

    def __init__(self) -> None:
        self.pending: dict[str, list[pa.Table]] = {}

    def add(self, block: pa.Table) -> list[pa.Table]:
        """The batches this block completes, each a whole result_to_arrow table with its rows in order."""
        done = []
        for batch_id in dict.fromkeys(block["batch"].to_pylist()):
            piece = block.filter(pc.equal(block["batch"], batch_id))
            pieces = self.pending.setdefault(batch_id, [])
            pieces.append(piece)
            if sum(part.num_rows for part in pieces) == piece["batch_rows"][0].as_py():
                done.append(pa.concat_tables(self.pending.pop(batch_id)).sort_by("row"))
        return done


def result_from_arrow(table: pa.Table, size: tuple[int, int]) -> tuple[BatchResult, float, float]:
    """Back from result_to_arrow: the BatchResult, and the explain and metric seconds it took."""
    heatmaps = [None if data is None else np.frombuffer(data, np.float16).reshape(size).astype(np.float32)
                for data in table["heatmap"].to_pylist()]
    records = [json.loads(text) for text in table["record"].to_pylist()]
    return (BatchResult(records, heatmaps, table["overlay"].to_pylist()), float(sum(table["seconds"].to_pylist())),
            float(sum(table["metric_seconds"].to_pylist())))


def run_on_ray(config: AuditConfig, model: AuditModel, pending: list[InputItem], journal: Journal,
               progress: Callable[[int], None] = lambda count: None) -> Timings:
    """Explain pending on Ray actors (config.workers of them) and commit each returned block on the driver."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise GradCamError("--ray needs Ray Data: pip install 'onnx-gradcam[ray]'") from error
    started = _connect(ray, config.ray_address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the audit has its own progress bar
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        gpu = config.device.startswith("cuda")
        dataset = ray.data.from_items([{"path": item.path, "label": item.label or ""} for item in pending])
        dataset = dataset.map_batches(
            AuditActor, batch_size=config.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=config.workers),
            num_cpus=1, num_gpus=1 if gpu else 0,
            fn_constructor_kwargs=dict(config=config, model=model, intra_op_threads=None if gpu else 1))
        timings = Timings(images=len(pending), lanes=config.workers)
        start = time.perf_counter()
        assembler = BatchAssembler()
        for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for whole in assembler.add(block):
                result, seconds, metric_seconds = result_from_arrow(whole, tuple(model.preprocess.size))
                journal.add(result)
                timings.explain += seconds
                timings.metrics += metric_seconds
                progress(len({record["path"] for record in result.records}))  # inputs, however many records
        timings.wall = time.perf_counter() - start
        return timings
    finally:
        if started:
            ray.shutdown()


def _connect(ray, address: Optional[str]) -> bool:
    """Join the running Ray instance (or the one at address); start a local one if none. True if started here."""
    if ray.is_initialized():
        return False
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # Workers of a local instance import onnx_gradcam from the same tree as the driver.
    pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env=None if address else {"env_vars": {"PYTHONPATH": pythonpath}})
    return True
