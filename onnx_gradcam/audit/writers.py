"""Audit outputs on disk: Parquet records, optional CSV, .npz heatmap shards, overlay images; all atomic."""
from __future__ import annotations

import io
import os
import secrets
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from .stats import STAT_COLUMNS

PathLike = Union[str, os.PathLike]
TEMPORARY_SUFFIX = ".tmp"


# Every record ends with where its input and outputs are.
_FILE_FIELDS = [("width", pa.int64()), ("height", pa.int64()), ("size_bytes", pa.int64()),
                ("content_hash", pa.string()), ("duplicate_of", pa.string()), ("heatmap_file", pa.string()),
                ("heatmap_index", pa.int64()), ("overlay_file", pa.string()), ("part", pa.int64())]

# What a detect or segment record says about its item (a box, or a class present) besides its class and score,
# and the column saying how much of the heatmap's heat falls on it. anchor: the box's index among the head's
# pre-NMS boxes (targets.Detection(anchor, class) explains it again).
TASK_COLUMNS = {
    "detect": ([("anchor", pa.int64())] + [(name, pa.float64()) for name in
                                           ("confidence", "box_x1", "box_y1", "box_x2", "box_y2")], "heat_in_box"),
    "segment": ([("pixel_share", pa.float64())], "heat_in_mask"),
}


def records_schema(metric_columns: Sequence[str] = (), task: str = "classify") -> pa.Schema:
    """The records' schema: for classify a row per (path, method), metric columns only for the metrics a run
    measures; for detect and segment a row per (path, method, item), item null when the image has none."""
    if task != "classify":
        return task_schema(task)
    return pa.schema(
        [("path", pa.string()), ("method", pa.string()), ("label", pa.string()), ("label_index", pa.int64()),
         ("status", pa.string()), ("reason", pa.string()),
         ("predicted_class", pa.int64()), ("predicted_label", pa.string()), ("probability", pa.float64()),
         ("explained_class", pa.int64()), ("explained_label", pa.string()), ("score", pa.float64()),
         ("correct", pa.bool_())]
        + [(name, pa.float64()) for name in (*STAT_COLUMNS, *metric_columns)]
        + _FILE_FIELDS)


def task_schema(task: str) -> pa.Schema:
    """The records of a detect or segment audit: one per box or class present, with its heatmap's statistics."""
    if task not in TASK_COLUMNS:
        raise ValueError(f"no record schema for task {task!r}")
    item_columns, coverage = TASK_COLUMNS[task]
    return pa.schema(
        [("path", pa.string()), ("method", pa.string()), ("item", pa.int64()), ("label", pa.string()),
         ("label_index", pa.int64()), ("status", pa.string()), ("reason", pa.string()),
         ("explained_class", pa.int64()), ("explained_label", pa.string()), ("score", pa.float64())]
        + item_columns + [(name, pa.float64()) for name in (*STAT_COLUMNS, coverage)]
        + _FILE_FIELDS)


RECORD_SCHEMA = records_schema()


def atomic_write(path: PathLike, write: Callable[[io.BufferedWriter], None], durable: bool = True) -> None:
    """Write path through a temporary in the same folder and os.replace: readers see all of it or nothing.

    durable also fsyncs the data before the rename, so a power cut cannot leave an empty file behind either.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "xb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes(path: PathLike, data: bytes, durable: bool = True) -> None:
    """Write data to path atomically."""
    atomic_write(path, lambda handle: handle.write(data), durable)


def records_table(records: Sequence[dict], schema: pa.Schema = RECORD_SCHEMA) -> pa.Table:
    """The records as an Arrow table with the audit schema (missing fields are null)."""
    columns = {name: [record.get(name) for record in records] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def write_parquet(path: PathLike, table: pa.Table) -> None:
    """Write an Arrow table as one Parquet file (zstd), atomically."""
    atomic_write(path, lambda handle: pq.write_table(table, handle, compression="zstd"))


def write_csv(path: PathLike, table: pa.Table) -> None:
    """Write an Arrow table as CSV with a header row, atomically."""
    atomic_write(path, lambda handle: pa_csv.write_csv(table, handle))


def write_heatmap_shard(path: PathLike, paths: Sequence[str], heatmaps: Sequence[np.ndarray],
                        methods: Optional[Sequence[str]] = None, items: Optional[Sequence[int]] = None) -> None:
    """Write heatmaps [n,H,W] (float16, in record order), their input paths (methods, and items of detect and
    segment records) as a compressed .npz."""
    arrays = {"heatmaps": np.stack([np.asarray(h, np.float16) for h in heatmaps]),
              "paths": np.asarray(paths, dtype=str)}
    if methods is not None:
        arrays["methods"] = np.asarray(methods, dtype=str)
    if items is not None:
        arrays["items"] = np.asarray(items, dtype=np.int64)
    atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))


def read_heatmap(out_dir: PathLike, heatmap_file: str, heatmap_index: int) -> np.ndarray:
    """One heatmap [H,W] (float32) back from the shard a record points to."""
    with np.load(Path(out_dir) / heatmap_file) as shard:
        return shard["heatmaps"][heatmap_index].astype(np.float32)


def remove_temporaries(folders: Iterable[PathLike]) -> int:
    """Delete the temporaries an interrupted run left in these folders (never finished files); return how many."""
    removed = 0
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for leftover in folder.glob(f".*.{'[0-9a-f]' * 8}{TEMPORARY_SUFFIX}"):  # the names atomic_write makes
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def read_table(path: PathLike, columns: Optional[list[str]] = None, schema: pa.Schema = RECORD_SCHEMA,
               defaults: Optional[dict] = None) -> pa.Table:
    """Read a Parquet file written by write_parquet: the schema's columns (or those named), cast to it.

    A column the file lacks (one written before the column existed) reads as defaults[name], or null.
    """
    names = columns or schema.names
    present = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[name for name in names if name in present])
    for name in names:
        if name not in present:
            value = (defaults or {}).get(name)
            table = table.append_column(name, pa.array([value] * table.num_rows, schema.field(name).type))
    return table.select(names).cast(pa.schema([schema.field(name) for name in names]))
