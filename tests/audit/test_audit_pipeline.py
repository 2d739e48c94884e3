"""BatchExplainer against the oracle: Explainer.explain on the same images, and heatmap_stats on its maps."""
from __future__ import annotations

import numpy as np
import pytest

from audit_helpers import write_digits
from onnx_gradcam.audit.decode import Decoder
from onnx_gradcam.audit.pipeline import BatchExplainer
from onnx_gradcam.audit.readers import InputItem
from onnx_gradcam.audit.stats import STAT_COLUMNS, heatmap_stats
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.render import read_image

LABELS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("digits"), 12)


@pytest.fixture(scope="module")
def explainer(model_path):
    return Explainer(model_path, method="hirescam", batch_size=8)


def decode_all(explainer, pairs, **kwargs):
    decoder = Decoder(explainer.preprocess, **kwargs)
    return [decoder(InputItem(str(path), str(label))) for path, label in pairs]


def test_records_match_explainer_oracle(explainer, digits):
    batch = decode_all(explainer, digits)
    result = BatchExplainer(explainer, labels=LABELS)(batch)
    oracle = explainer.explain([read_image(path) for path, _ in digits])
    stats = heatmap_stats(oracle.heatmaps)
    classes, probabilities = oracle.top_k(1)
    for index, record in enumerate(result.records):
        assert record["status"] == "ok" and record["reason"] is None
        assert record["predicted_class"] == classes[index, 0] == record["explained_class"]
        assert record["probability"] == pytest.approx(probabilities[index, 0], abs=1e-6)
        assert record["score"] == pytest.approx(oracle.scores[index], abs=1e-5)
        assert record["label_index"] == digits[index][1]
        assert record["correct"] == (classes[index, 0] == digits[index][1])
        for name in STAT_COLUMNS:
            assert record[name] == pytest.approx(stats[name][index], abs=1e-6)
        np.testing.assert_allclose(result.heatmaps[index], oracle.heatmaps[index], atol=1e-6)


def test_fixed_target_class_is_explained_for_every_image(explainer, digits):
    result = BatchExplainer(explainer, target_class=7, labels=LABELS)(decode_all(explainer, digits[:5]))
    oracle = explainer.explain([read_image(path) for path, _ in digits[:5]], target_class=7)
    assert [r["explained_class"] for r in result.records] == [7] * 5
    assert [r["explained_label"] for r in result.records] == ["7"] * 5
    np.testing.assert_allclose(np.stack(result.heatmaps), oracle.heatmaps, atol=1e-6)


def test_an_input_the_runtime_rejects_fails_alone(explainer, digits):
    batch = decode_all(explainer, digits[:4])
    batch[2].tensor = np.full_like(batch[2].tensor, np.nan)  # the Explainer refuses non-finite input
    result = BatchExplainer(explainer)(batch)
    assert [r["status"] for r in result.records] == ["ok", "ok", "error", "ok"]
    assert "the model failed on this image" in result.records[2]["reason"]
    assert result.heatmaps[2] is None and result.heatmaps[3] is not None


def test_undecodable_inputs_ride_along_as_error_records(explainer, digits, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    batch = decode_all(explainer, [digits[0], (tmp_path / "empty.png", 1)], thumbnails=True)
    result = BatchExplainer(explainer, overlays=True, overlay_format="png")(batch)
    assert [r["status"] for r in result.records] == ["ok", "error"]
    assert result.records[1]["reason"] == "empty file (0 bytes)" and result.overlays[1] is None
    assert result.overlays[0].startswith(b"\x89PNG") and result.records[0]["overlay_file"].endswith(".png")


def test_per_input_classes_skip_undecodable_inputs_and_match_explainer_oracle(explainer, digits, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    batch = decode_all(explainer, [digits[0], (tmp_path / "empty.png", 1), digits[1]])
    explained = BatchExplainer(explainer, target_class=7).explain(batch, classes=[2, None, 5])
    oracle = explainer.explain([read_image(path) for path, _ in digits[:2]], target_class=np.array([2, 5]))
    assert explained.positions == [0, 2] and explained.classes.tolist() == [2, 5]
    np.testing.assert_allclose(explained.heatmaps, oracle.heatmaps, atol=1e-6)
