"""The same audit on Ray Data: actors each hold one model session (map_batches with a callable class).

Actors decode, explain and compute statistics and overlays; the driver commits what comes back through
the same Journal as a local run, so records, resume and the report do not depend on where the work ran.
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np
import pyarrow as pa

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
    """A BatchResult as Arrow columns (JSON records, float16 heatmap bytes, overlay bytes) for Ray's object store."""
    count = max(1, len(result.records))
    return pa.table({
        "record": pa.array([json.dumps(record) for record in result.records], pa.string()),
        "heatmap": pa.array([None if h is None else np.asarray(h, np.float16).tobytes() for h in result.heatmaps],
                            pa.binary()),
        "overlay": pa.array(result.overlays, pa.binary()),
        "seconds": pa.array([seconds / count] * len(result.records), pa.float64()),
        "metric_seconds": pa.array([metric_seconds / count] * len(result.records), pa.float64()),
    })


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
        for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            if block.num_rows == 0:
                continue
            result, seconds, metric_seconds = result_from_arrow(block, tuple(model.preprocess.size))
            journal.add(result)
            timings.explain += seconds
            timings.metrics += metric_seconds
            progress(block.num_rows // len(config.methods))  # a record per input and method
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
