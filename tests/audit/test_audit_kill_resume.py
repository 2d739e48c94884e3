"""SIGKILL the audit command mid-run, twice, then rerun it: every input exactly once, no truncated file."""
from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from audit_helpers import audit_command, committed_parts, run_and_kill, subprocess_env, write_digits

IMAGES = 240


def assert_nothing_truncated(out):
    """Every file under a final name is whole: parts and shards load, overlays decode."""
    for part in committed_parts(out) + ([out / "records.parquet"] if (out / "records.parquet").exists() else []):
        pq.read_table(part)
    for shard in (out / "heatmaps").glob("*.npz"):
        with np.load(shard) as data:
            assert data["heatmaps"].shape[0] == len(data["paths"])
    for overlay in (out / "overlays").glob("*.png"):
        assert cv2.imread(str(overlay)) is not None, overlay


# Plain: many images, quick batches. Metrics: two methods and three metrics, so every batch is slow and the
# kills land in the middle of metric work; the resumed records must equal an uninterrupted run's.
CASES = {
    "plain": (IMAGES, ["--method", "hirescam"]),
    "metrics": (48, ["--method", "hirescam,gradcam", "--metrics", "road,deletion,confidence"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_twice_then_rerun_gives_every_input_exactly_once(model_path, tmp_path, case):
    count, options = CASES[case]
    methods = options[1].split(",")
    inputs = {str(path) for path, _ in write_digits(tmp_path / "digits", count)}
    out = tmp_path / "out"
    command = audit_command() + [model_path, str(tmp_path / "digits"), "--out", str(out), "--batch", "4",
                                 "--workers", "1", "--commit-every", "4", *options,
                                 "--save", "overlays,heatmaps",
                                 "--overlay-format", "png", "--no-report", "--no-progress"]
    first = run_and_kill(command, out, 0, more_parts=4)
    assert_nothing_truncated(out)
    first_keys = {key for part in first for key in keys(pq.read_table(part))}
    second = run_and_kill(command, out, len(first), more_parts=4)
    assert_nothing_truncated(out)
    assert set(first) <= set(second)  # committed parts are never rewritten or lost

    finished = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stderr
    rows = pq.read_table(out / "records.parquet").to_pylist()
    assert sorted((row["path"], row["method"]) for row in rows) == sorted(
        (path, method) for path in inputs for method in methods)  # each input and method exactly once
    assert all(row["status"] == "ok" for row in rows)
    first_parts = {int(part.stem.split("-")[1]) for part in first}
    assert {(row["path"], row["method"]) for row in rows if row["part"] in first_parts} == first_keys  # not redone
    assert_nothing_truncated(out)
    assert not list(out.rglob("*.tmp")) and not committed_parts(out)
    for row in rows:
        with np.load(out / row["heatmap_file"]) as shard:
            assert shard["paths"][row["heatmap_index"]] == row["path"]
            assert shard["methods"][row["heatmap_index"]] == row["method"]
        assert (out / row["overlay_file"]).exists()
    if case == "metrics":  # the same values as a run that was never killed (other batches, same seeds)
        at = command.index("--out") + 1
        straight = command[:at] + [str(tmp_path / "straight")] + command[at + 1:]
        subprocess.run(straight, env=subprocess_env(), capture_output=True, timeout=300, check=True)
        expected = {(r["path"], r["method"]): r
                    for r in pq.read_table(tmp_path / "straight" / "records.parquet").to_pylist()}
        for row in rows:
            for column in ("road_combined", "deletion_auc", "confidence_change", "probability", "entropy"):
                assert row[column] == pytest.approx(expected[row["path"], row["method"]][column], abs=1e-6), column


def keys(table) -> set[tuple[str, str]]:
    return set(zip(table["path"].to_pylist(), table["method"].to_pylist()))
