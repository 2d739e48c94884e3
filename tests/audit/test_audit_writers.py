"""Atomic writes: a failed or interrupted write never leaves a partial file under the final name."""
from __future__ import annotations

import numpy as np
import pytest

from onnx_gradcam.audit.writers import (RECORD_SCHEMA, atomic_write, read_heatmap, read_table, records_table,
                                        remove_temporaries, write_bytes, write_heatmap_shard, write_parquet)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    write_bytes(target, b"old")

    def half_then_fail(handle):
        handle.write(b"new but incomplete")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_temporaries_of_a_killed_run_are_removed_but_finished_files_kept(tmp_path):
    (tmp_path / ".part-00000001.parquet.1a2b3c4d.tmp").write_bytes(b"half")
    (tmp_path / "part-00000000.parquet").write_bytes(b"whole")
    (tmp_path / ".users-own.tmp").write_bytes(b"not ours")
    assert remove_temporaries([tmp_path, tmp_path / "absent"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".users-own.tmp", "part-00000000.parquet"]


def test_records_round_trip_with_the_schema_and_nulls(tmp_path):
    records = [{"path": "/a.png", "status": "ok", "probability": 0.5, "correct": True, "predicted_class": 3},
               {"path": "/b.png", "status": "error", "reason": "no such file"}]
    write_parquet(tmp_path / "r.parquet", records_table(records))
    table = read_table(tmp_path / "r.parquet")
    assert table.schema == RECORD_SCHEMA
    rows = table.to_pylist()
    assert rows[0]["predicted_class"] == 3 and rows[0]["correct"] is True and rows[0]["reason"] is None
    assert rows[1]["reason"] == "no such file" and rows[1]["probability"] is None


def test_heatmap_shard_round_trip(tmp_path):
    heatmaps = [np.random.default_rng(i).random((5, 6)).astype(np.float32) for i in range(3)]
    write_heatmap_shard(tmp_path / "s.npz", ["/a", "/b", "/c"], heatmaps)
    with np.load(tmp_path / "s.npz") as shard:
        assert shard["heatmaps"].dtype == np.float16 and list(shard["paths"]) == ["/a", "/b", "/c"]
    np.testing.assert_allclose(read_heatmap(tmp_path, "s.npz", 2), heatmaps[2], atol=1e-3)
