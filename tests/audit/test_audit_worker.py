"""AuditWorker, built from a run's config and model, against the oracle: a BatchExplainer built by hand."""
from __future__ import annotations

import numpy as np
import pytest

from audit_helpers import write_digits
from onnx_gradcam.audit import AuditConfig
from onnx_gradcam.audit.config import prepare_model
from onnx_gradcam.audit.pipeline import BatchExplainer
from onnx_gradcam.audit.readers import InputItem
from onnx_gradcam.audit.stats import STAT_COLUMNS
from onnx_gradcam.audit.worker import AuditWorker
from onnx_gradcam.demo import data_path
from onnx_gradcam.explainer import Explainer


def run_config(model_path, tmp_path, **kwargs) -> AuditConfig:
    return AuditConfig(model=model_path, inputs=[str(tmp_path)], out_dir=tmp_path / "out", method="hirescam",
                       batch_size=4, labels_file=data_path("digits_labels.txt"), progress=False, **kwargs)


def test_worker_records_equal_a_hand_built_batch_explainer(model_path, tmp_path):
    digits = write_digits(tmp_path / "digits", 5)
    config = run_config(model_path, tmp_path, save={"overlays"}, overlay_format="png", target_class="3")
    model = prepare_model(config)
    worker = AuditWorker(config, model)
    batch = [worker.decode(InputItem(str(path), str(label))) for path, label in digits]
    assert all(decoded.ok and decoded.thumbnail is not None for decoded in batch)  # overlays saved: thumbnails
    result = worker.results(batch, worker.explain(batch))
    oracle = BatchExplainer(Explainer(model_path, method="hirescam"), target_class=3, labels=model.labels,
                            overlays=True, overlay_format="png")(batch)
    for record, expected in zip(result.records, oracle.records):
        for key in ("path", "label_index", "status", "predicted_class", "explained_class", "correct", "overlay_file"):
            assert record[key] == expected[key], key
        for key in ("probability", "score", *STAT_COLUMNS):
            assert record[key] == pytest.approx(expected[key], abs=1e-6), key
    assert [r["explained_class"] for r in result.records] == [3] * 5
    np.testing.assert_allclose(np.stack(result.heatmaps), np.stack(oracle.heatmaps), atol=1e-6)


def test_thumbnails_follow_the_overlays_setting_unless_asked_for(model_path, tmp_path):
    (path, _), = write_digits(tmp_path / "digits", 1)
    config = run_config(model_path, tmp_path)
    model = prepare_model(config)
    assert AuditWorker(config, model).decode(InputItem(str(path))).thumbnail is None
    assert AuditWorker(config, model, thumbnails=True).decode(InputItem(str(path))).thumbnail is not None
