"""SIGKILL the audit command mid-run, twice, then rerun it: every input exactly once, no truncated file."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import cv2
import numpy as np
import pyarrow.parquet as pq

from audit_helpers import audit_command, subprocess_env, write_digits

IMAGES = 240


def committed_parts(out):
    return sorted((out / "parts").glob("part-*.parquet"))


def run_and_kill(command, out, parts_before, more_parts=4, timeout=90):
    """Start the command, SIGKILL it once more_parts new parts are committed; return the parts committed."""
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while len(committed_parts(out)) < parts_before + more_parts:
            assert process.poll() is None, "the audit ended before it could be killed"
            assert time.monotonic() < deadline, "no parts were committed in time"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return committed_parts(out)


def assert_nothing_truncated(out):
    """Every file under a final name is whole: parts and shards load, overlays decode."""
    for part in committed_parts(out) + ([out / "records.parquet"] if (out / "records.parquet").exists() else []):
        pq.read_table(part)
    for shard in (out / "heatmaps").glob("*.npz"):
        with np.load(shard) as data:
            assert data["heatmaps"].shape[0] == len(data["paths"])
    for overlay in (out / "overlays").glob("*.png"):
        assert cv2.imread(str(overlay)) is not None, overlay


def test_killed_twice_then_rerun_gives_every_input_exactly_once(model_path, tmp_path):
    inputs = {str(path) for path, _ in write_digits(tmp_path / "digits", IMAGES)}
    out = tmp_path / "out"
    command = audit_command() + [model_path, str(tmp_path / "digits"), "--out", str(out), "--batch", "4",
                                 "--workers", "1", "--commit-every", "4", "--method", "hirescam",
                                 "--save", "overlays,heatmaps",
                                 "--overlay-format", "png", "--no-report", "--no-progress"]
    first = run_and_kill(command, out, 0)
    assert_nothing_truncated(out)
    first_paths = {p for part in first for p in pq.read_table(part)["path"].to_pylist()}
    second = run_and_kill(command, out, len(first))
    assert_nothing_truncated(out)
    assert set(first) <= set(second)  # committed parts are never rewritten or lost

    finished = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stderr
    rows = pq.read_table(out / "records.parquet").to_pylist()
    assert sorted(row["path"] for row in rows) == sorted(inputs)  # each input exactly once
    assert all(row["status"] == "ok" for row in rows)
    first_parts = {int(part.stem.split("-")[1]) for part in first}
    assert {row["path"] for row in rows if row["part"] in first_parts} == first_paths  # not recomputed
    assert_nothing_truncated(out)
    assert not list(out.rglob("*.tmp")) and not committed_parts(out)
    for row in rows:
        with np.load(out / row["heatmap_file"]) as shard:
            assert shard["paths"][row["heatmap_index"]] == row["path"]
        assert (out / row["overlay_file"]).exists()
