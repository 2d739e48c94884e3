"""The audit on a local Ray instance with 2 CPU actors gives the same records as the local pipeline (two methods,
two metrics)."""
from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from audit_helpers import write_bad_inputs, write_digits
from onnx_gradcam.audit import AuditConfig, run_audit
from onnx_gradcam.audit.writers import read_heatmap

ray = pytest.importorskip("ray", reason="the --ray path needs Ray Data: pip install 'onnx-gradcam[ray]'")
pytest.importorskip("ray.data")

# Where a record lives depends on how work was grouped, not on what it says.
PLACEMENT = {"part", "heatmap_file", "heatmap_index"}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_records_equal_local_records(local_ray, model_path, tmp_path):
    write_digits(tmp_path / "digits", 40)
    bad = write_bad_inputs(tmp_path / "bad")
    inputs = [str(tmp_path / "digits"), str(tmp_path / "bad"), str(bad["missing.png"])]

    def audit(out, **kwargs):
        return run_audit(AuditConfig(model=model_path, inputs=inputs, out_dir=tmp_path / out,
                                     method="hirescam,gradcam", metrics="confidence,deletion",
                                     metric_options={"deletion": {"steps": 4}}, batch_size=8, workers=2,
                                     save={"heatmaps", "overlays"}, progress=False, report=False, **kwargs))

    local, distributed = audit("local"), audit("ray", ray=True)
    assert distributed.exit_code == local.exit_code == 1
    local_rows = pq.read_table(tmp_path / "local" / "records.parquet").to_pylist()
    ray_rows = pq.read_table(tmp_path / "ray" / "records.parquet").to_pylist()
    assert [(r["path"], r["method"]) for r in ray_rows] == [(r["path"], r["method"]) for r in local_rows]
    assert len(local_rows) == 2 * (40 + len(bad)) and {"confidence_change", "deletion_auc"} <= set(local_rows[0])
    for mine, theirs in zip(ray_rows, local_rows):
        for key, value in mine.items():
            if key in PLACEMENT:
                continue
            if isinstance(value, float):
                assert math.isclose(value, theirs[key], rel_tol=1e-5, abs_tol=1e-5) or (
                    math.isnan(value) and math.isnan(theirs[key])), (key, mine["path"])
            else:
                assert value == theirs[key], (key, mine["path"])
        if mine["heatmap_file"]:
            ours = read_heatmap(tmp_path / "ray", mine["heatmap_file"], mine["heatmap_index"])
            expected = read_heatmap(tmp_path / "local", theirs["heatmap_file"], theirs["heatmap_index"])
            np.testing.assert_allclose(ours, expected, atol=1e-3)
    overlays = sorted(p.name for p in (tmp_path / "ray" / "overlays").iterdir())
    assert overlays == sorted(p.name for p in (tmp_path / "local" / "overlays").iterdir())


def test_ray_detect_records_equal_local_records(local_ray, tmp_path):
    """--task detect on Ray: an image's records (one per box) come back and commit together, as locally."""
    pytest.importorskip("torch")
    from audit_helpers import write_task_images, yolo_model

    (tmp_path / "models").mkdir()
    model = yolo_model(tmp_path / "models")
    write_task_images(tmp_path / "images", 12)

    def audit(out, **kwargs):
        return run_audit(AuditConfig(model=model["augmented"], inputs=[str(tmp_path / "images")],
                                     out_dir=tmp_path / out, task="detect", conf=0.8, max_det=4, batch_size=3,
                                     workers=2, save={"heatmaps", "overlays"}, progress=False, report=False,
                                     **kwargs))

    local, distributed = audit("local"), audit("ray", ray=True)
    assert (distributed.items, distributed.empty) == (local.items, local.empty) and local.items > 0
    local_rows = pq.read_table(tmp_path / "local" / "records.parquet").to_pylist()
    ray_rows = pq.read_table(tmp_path / "ray" / "records.parquet").to_pylist()
    assert [(r["path"], r["item"]) for r in ray_rows] == [(r["path"], r["item"]) for r in local_rows]
    for mine, theirs in zip(ray_rows, local_rows):
        assert {k: v for k, v in mine.items() if k not in PLACEMENT} == pytest.approx(
            {k: v for k, v in theirs.items() if k not in PLACEMENT}, nan_ok=True, abs=1e-5)
        parts = {row["part"] for row in ray_rows if row["path"] == mine["path"]}
        assert len(parts) == 1  # all of an image's boxes in one part
    overlays = sorted(p.name for p in (tmp_path / "ray" / "overlays").iterdir())
    assert overlays == sorted(p.name for p in (tmp_path / "local" / "overlays").iterdir())
