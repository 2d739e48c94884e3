"""Resumable, loss-free commits: batches are grouped into numbered Parquet parts, each written atomically.

A part file is the commit point: its heatmap shard and overlays are written before it, so a committed
record never points at a missing file. Records are keyed by (path, method); a batch commits every method of
its inputs in the same part. A detect or segment audit makes any number of records per (path, method), one
per item (box or class present) or one with a null item: they are made from one batch and so always commit
in one part, all or none, and an input counts as done when any of its records is committed. A rerun with the
same command reads the parts (and the merged records.parquet of earlier runs), skips those keys, and
continues numbering after the highest part. finalize() merges everything into records.parquet (the rows of
the latest part holding each key, one per item) and only then removes the parts.
Batches are committed in groups (every commit_every images or commit_seconds, whichever comes first) so
that small batches do not pay a Parquet file and an fsync each; a kill loses at most one group's work.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import pyarrow as pa

from ..errors import InputError
from .pipeline import BatchResult
from .writers import (RECORD_SCHEMA, read_table, records_table, remove_temporaries, write_bytes, write_csv,
                      write_heatmap_shard, write_parquet)

RUN_FILE = "run.json"
RECORDS_FILE = "records.parquet"
CSV_FILE = "records.csv"
PARTS_DIR = "parts"
HEATMAPS_DIR = "heatmaps"
OVERLAYS_DIR = "overlays"
LOCK_FILE = ".lock"
DUPLICATE_REASON = "duplicate: same content as "


class Journal:
    """The commit log of one output folder: what is done, and how to add a batch to it."""

    def __init__(self, out_dir: os.PathLike, save_heatmaps: bool = False, commit_every: int = 256,
                 commit_seconds: float = 10.0, schema: pa.Schema = RECORD_SCHEMA) -> None:
        self.out_dir = Path(out_dir)
        self.parts_dir = self.out_dir / PARTS_DIR
        self.save_heatmaps = save_heatmaps
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        self.schema = schema  # the records' columns (with the run's metric columns)
        self.committed: dict[tuple[str, str], int] = {}  # (path, method) -> part
        self._defaults: dict = {}
        self.next_part = 0
        self._lock = None
        self._waiting: list[BatchResult] = []
        self._waiting_since = time.monotonic()

    def open(self, settings: dict) -> None:
        """Lock the folder, check it holds no audit with other settings, and load what is committed."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.out_dir / LOCK_FILE)
        run_file = self.out_dir / RUN_FILE
        if run_file.exists():
            previous = json.loads(run_file.read_text())
            changed = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
            if changed:
                raise InputError(f"{self.out_dir} holds an audit with other settings ({', '.join(changed)} "
                                 "differ); rerun with the same options to resume it, or choose another --out")
        else:
            write_bytes(run_file, json.dumps(settings, indent=2, sort_keys=True).encode())
        # Records made before the method column existed are of the run's one method.
        self._defaults = {"method": settings["method"]} if isinstance(settings.get("method"), str) else {}
        remove_temporaries([self.out_dir, self.parts_dir, self.out_dir / HEATMAPS_DIR, self.out_dir / OVERLAYS_DIR])
        for table in self._committed_tables(["path", "method", "part"]):
            keys = zip(table["path"].to_pylist(), table["method"].to_pylist())
            self.committed.update(zip(keys, table["part"].to_pylist()))
        self.next_part = max(self.committed.values(), default=-1) + 1

    def is_done(self, path: str, methods: Sequence[str]) -> bool:
        """Whether every method's record of path is committed."""
        return all((path, method) in self.committed for method in methods)

    def close(self) -> None:
        """Release the folder's lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def add(self, result: BatchResult) -> None:
        """Queue a batch for commit; commit the queue once it is big or old enough."""
        if not self._waiting:
            self._waiting_since = time.monotonic()
        self._waiting.append(result)
        if (sum(len(r.records) for r in self._waiting) >= self.commit_every
                or time.monotonic() - self._waiting_since >= self.commit_seconds):
            self.flush()

    def flush(self) -> None:
        """Commit the queued batches as one part."""
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            self.commit(BatchResult([r for b in waiting for r in b.records], [h for b in waiting for h in b.heatmaps],
                                    [o for b in waiting for o in b.overlays]))

    def commit(self, result: BatchResult) -> int:
        """Write a batch's heatmaps, overlays and then its records part; return the part number."""
        part = self.next_part
        records = [dict(record, part=part) for record in result.records]
        kept = [(record, heatmap) for record, heatmap in zip(records, result.heatmaps) if heatmap is not None]
        if self.save_heatmaps and kept:
            shard = f"{HEATMAPS_DIR}/shard-{part:08d}.npz"
            items = [record["item"] for record, _ in kept] if "item" in self.schema.names else None
            write_heatmap_shard(self.out_dir / shard, [r["path"] for r, _ in kept], [h for _, h in kept],
                                [r.get("method") or "" for r, _ in kept], items)
            for index, (record, _) in enumerate(kept):
                record.update(heatmap_file=shard, heatmap_index=index)
        for record, data in zip(records, result.overlays):
            if data is not None:
                write_bytes(self.out_dir / record["overlay_file"], data, durable=False)
        write_parquet(self.parts_dir / f"part-{part:08d}.parquet", records_table(records, self.schema))
        self.next_part = part + 1
        self.committed.update(((record["path"], record.get("method")), part) for record in records)
        return part

    def finalize(self, csv: bool = False) -> pa.Table:
        """Merge the parts into records.parquet (one row per path and method, or per path, method and item;
        sorted), flag duplicate content, drop the parts."""
        self.flush()
        tables = self._committed_tables()
        table = pa.concat_tables(tables) if tables else records_table([], self.schema)
        table = flag_duplicates(_one_row_per_key(table))
        write_parquet(self.out_dir / RECORDS_FILE, table)
        if csv:
            write_csv(self.out_dir / CSV_FILE, table)
        for part in sorted(self.parts_dir.glob("part-*.parquet")):
            part.unlink()
        if self.parts_dir.is_dir() and not any(self.parts_dir.iterdir()):
            self.parts_dir.rmdir()
        return table

    def _committed_tables(self, columns: Optional[list[str]] = None) -> list[pa.Table]:
        files = [self.out_dir / RECORDS_FILE] + sorted(self.parts_dir.glob("part-*.parquet"))
        tables = []
        for path in files:
            if not path.exists():
                continue
            try:
                tables.append(read_table(path, columns, self.schema, self._defaults))
            except Exception as error:  # noqa: BLE001 - only a file damaged outside this tool gets here
                damaged = path.with_name(path.name + ".damaged")
                os.replace(path, damaged)
                print(f"warning: {path} is unreadable ({error}); moved to {damaged.name}, its inputs will be redone",
                      file=sys.stderr)
        return tables


def _one_row_per_key(table: pa.Table) -> pa.Table:
    """The rows of the latest part holding each (path, method), one per item (when the records have items),
    sorted by path, method, then item.

    A key's records all commit in one part; the same part can be read twice (from a part file and from the
    records.parquet it was merged into, when a run died before deleting the part), and a redone input gets a
    later part, whose records replace all of the earlier ones: never a mix of two runs' items.
    """
    if table.num_rows == 0:
        return table
    items = "item" in table.schema.names
    table = table.sort_by([("path", "ascending"), ("method", "ascending"), ("part", "descending")]
                          + ([("item", "ascending")] if items else []))
    keys = list(zip(table["path"].to_pylist(), table["method"].to_pylist()))
    parts = table["part"].to_pylist()
    item_of = table["item"].to_pylist() if items else [None] * table.num_rows
    kept, latest, seen = [], None, set()
    for key, part, item in zip(keys, parts, item_of):
        if latest is None or key != latest[0]:
            latest, seen = (key, part), set()
        kept.append(part == latest[1] and item not in seen)  # classify: item is None, the first row only
        seen.add(item)
    return table.filter(pa.array(kept))


def flag_duplicates(table: pa.Table) -> pa.Table:
    """Set duplicate_of (and the reason of readable duplicates) for files whose bytes equal an earlier path's."""
    hashes = table["content_hash"].to_pylist()
    sizes = table["size_bytes"].to_pylist()
    paths = table["path"].to_pylist()
    # Earlier finalizes flagged with the inputs of their day; flag afresh.
    reasons = [None if r and r.startswith(DUPLICATE_REASON) else r for r in table["reason"].to_pylist()]
    first_path: dict[str, str] = {}
    duplicate_of: list[Optional[str]] = []
    for index, (digest, size, path) in enumerate(zip(hashes, sizes, paths)):
        original = first_path.setdefault(digest, path) if digest and size else path
        duplicate_of.append(None if original == path else original)
        if original != path and reasons[index] is None:
            reasons[index] = f"{DUPLICATE_REASON}{original}"
    table = table.set_column(table.schema.get_field_index("duplicate_of"), "duplicate_of",
                             pa.array(duplicate_of, pa.string()))
    return table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))


def _lock(path: Path):
    """Hold an exclusive lock on path while the run lives (the kernel drops it when the process dies)."""
    handle = open(path, "a+b")
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one run per folder is then the user's job
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise InputError(f"another audit is writing to {path.parent}; wait for it or choose another --out") from None
    return handle

