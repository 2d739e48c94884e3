"""Metrics and several methods in an audit, against the oracles: onnx_gradcam.metrics called directly (itself tested
against pytorch-grad-cam) and Explainer.explain, on the same tensors, heatmaps and classes."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from audit_helpers import write_bad_inputs, write_digits
from onnx_gradcam import metrics
from onnx_gradcam.audit import AuditConfig, run_audit
from onnx_gradcam.audit.cli import CommaChoices
from onnx_gradcam.audit.decode import Decoder
from onnx_gradcam.audit.measure import path_seed
from onnx_gradcam.cli import main
from onnx_gradcam.errors import InputError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.audit.readers import InputItem

METHODS = ("hirescam", "gradcam")
# Few perturbation steps keep the tests quick; the options reach the metric functions as given.
OPTIONS = {"road": {"percentiles": (25, 50, 75)}, "deletion": {"steps": 6}, "insertion": {"steps": 6}}
COLUMNS = {name: metric.column for name, metric in metrics.METRICS.items()}


def audit(model_path, inputs, out, **kwargs):
    options = dict(method=",".join(METHODS), metrics=tuple(metrics.METRICS), metric_options=OPTIONS, batch_size=4,
                   workers=2, progress=False, report=False)
    options.update(kwargs)
    return run_audit(AuditConfig(model=model_path, inputs=[str(i) for i in inputs], out_dir=out, **options))


def records(out):
    return pq.read_table(out / "records.parquet").to_pylist()


@pytest.fixture(scope="module")
def audited(model_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics")
    write_digits(folder / "digits", 10)
    bad = write_bad_inputs(folder / "bad")
    summary = audit(model_path, [folder / "digits", bad["corrupt.png"]], folder / "out", report=True)
    return folder, summary


def test_every_image_has_one_record_per_method(audited):
    folder, summary = audited
    rows = records(folder / "out")
    assert len(rows) == 2 * 11 and summary.inputs == 11 and summary.records == 22 and summary.methods == list(METHODS)
    assert sorted((row["path"], row["method"]) for row in rows) == sorted(
        {(row["path"], method) for row in rows for method in METHODS})
    for path in {row["path"] for row in rows}:
        pair = [row for row in rows if row["path"] == path]
        assert {row["predicted_class"] for row in pair} == {pair[0]["predicted_class"]}  # one prediction
    failed = [row for row in rows if row["status"] == "error"]
    assert len(failed) == 2 and all(row[column] is None for row in failed for column in COLUMNS.values())


def test_metric_columns_equal_the_metrics_module_on_the_same_tensors_and_heatmaps(model_path, audited):
    folder, _ = audited
    rows = [row for row in records(folder / "out") if row["status"] == "ok"]
    explainer = Explainer(model_path, method="hirescam")
    decoder = Decoder(explainer.preprocess)
    for method in METHODS:
        mine = [row for row in rows if row["method"] == method]
        tensors = np.stack([decoder(InputItem(row["path"])).tensor for row in mine])
        explained = explainer.explain(tensors, method=method)
        assert explained.classes.tolist() == [row["explained_class"] for row in mine]
        heatmaps, classes = np.asarray(explained.heatmaps), explained.classes
        for name in ("deletion", "insertion", "confidence"):
            expected = metrics.METRICS[name].function(explainer, tensors, heatmaps, classes,
                                                      **OPTIONS.get(name, {}))
            np.testing.assert_allclose([row[COLUMNS[name]] for row in mine], expected, rtol=0, atol=1e-6,
                                       err_msg=f"{name} {method}")
        expected = metrics.road(explainer, tensors, heatmaps, classes, noise=0, **OPTIONS["road"])  # the audit's
        np.testing.assert_allclose([row["road_combined"] for row in mine], expected, rtol=0, atol=1e-6)


def test_road_with_noise_is_seeded_per_image_by_its_path_whatever_the_batch(model_path, tmp_path):
    write_digits(tmp_path / "digits", 5)
    noisy = {"road": {"percentiles": (30, 70), "noise": 0.01}}
    for out, batch in (("a", 2), ("b", 5)):
        audit(model_path, [tmp_path / "digits"], tmp_path / out, method="gradcam", metrics="road",
              metric_options=noisy, batch_size=batch)
    rows, again = records(tmp_path / "a"), records(tmp_path / "b")
    explainer = Explainer(model_path, method="gradcam")
    tensors = np.stack([Decoder(explainer.preprocess)(InputItem(row["path"])).tensor for row in rows])
    explained = explainer.explain(tensors)
    for index, (row, other) in enumerate(zip(rows, again)):
        expected = metrics.road(explainer, tensors[index:index + 1], np.asarray(explained.heatmaps)[index:index + 1],
                                explained.classes[index:index + 1], seed=path_seed(row["path"]), **noisy["road"])
        assert row["road_combined"] == pytest.approx(expected[0], abs=1e-6) == other["road_combined"]
    noiseless = metrics.road(explainer, tensors, np.asarray(explained.heatmaps), explained.classes,
                             percentiles=(30, 70), noise=0)
    assert not np.allclose([row["road_combined"] for row in rows], noiseless, rtol=0, atol=1e-9)  # noise was drawn


def test_metric_values_do_not_depend_on_the_batch(model_path, audited, tmp_path):
    folder, _ = audited
    other = audit(model_path, [folder / "digits"], tmp_path / "other", batch_size=3, method="gradcam")
    assert other.exit_code == 0
    straight = {row["path"]: row for row in records(folder / "out") if row["method"] == "gradcam"}
    for row in records(tmp_path / "other"):
        for column in COLUMNS.values():
            assert row[column] == pytest.approx(straight[row["path"]][column], abs=1e-6), column


def test_summary_and_report_show_the_metrics_per_method(audited):
    folder, summary = audited
    rows = [row for row in records(folder / "out") if row["status"] == "ok"]
    for method in METHODS:
        for column in COLUMNS.values():
            expected = np.mean([row[column] for row in rows if row["method"] == method])
            assert summary.metrics[method][column] == pytest.approx(expected)
    assert json.loads((folder / "out" / "summary.json").read_text())["metrics"] == summary.metrics
    html = (folder / "out" / "report.html").read_text()
    assert "Least faithful" in html and "the worst road_combined first (higher is more faithful)" in html
    for column in COLUMNS.values():
        assert f'aria-label="{column} (' in html  # one chart per metric
    assert html.count("<figure") >= 3 * 10  # the galleries show both methods' tiles
    settings = json.loads((folder / "out" / "run.json").read_text())
    assert settings["method"] == list(METHODS) and settings["metrics"]["road"]["percentiles"] == [25, 50, 75]
    assert settings["metrics"]["road"]["noise"] == 0  # deterministic whatever the batches
    assert settings["metrics"]["deletion"] == {"steps": 6, "baseline": 0.0}


def test_heatmaps_and_overlays_are_saved_per_method(model_path, tmp_path):
    write_digits(tmp_path / "digits", 3)
    out = tmp_path / "out"
    audit(model_path, [tmp_path / "digits"], out, metrics=(), save={"heatmaps", "overlays"}, overlay_format="png")
    rows = records(out)
    assert len({row["overlay_file"] for row in rows}) == 6
    for row in rows:
        assert row["overlay_file"].endswith(f"-{row['method']}.png") and (out / row["overlay_file"]).exists()
        with np.load(out / row["heatmap_file"]) as shard:
            assert shard["paths"][row["heatmap_index"]] == row["path"]
            assert shard["methods"][row["heatmap_index"]] == row["method"]
            heatmap = shard["heatmaps"][row["heatmap_index"]].astype(np.float32)
        oracle = Explainer(model_path, method=row["method"]).explain([row["path"]]).heatmaps[0]
        np.testing.assert_allclose(heatmap, oracle, atol=1e-3)  # float16 on disk


def test_rerun_with_other_metrics_or_methods_is_refused(model_path, audited):
    folder, _ = audited
    with pytest.raises(InputError, match="metrics"):
        audit(model_path, [folder / "digits"], folder / "out", metrics=("road",))
    with pytest.raises(InputError, match="method"):
        audit(model_path, [folder / "digits"], folder / "out", method="hirescam")
    again = audit(model_path, [folder / "digits", folder / "bad" / "corrupt.png"], folder / "out")
    assert again.processed == 0 and again.records == 22


def test_bad_metric_names_are_usage_errors_listing_the_metrics(model_path, tmp_path, capsys):
    listed = "choose from road, deletion, insertion, confidence"
    with pytest.raises(InputError, match=f"unknown metric 'faithful'; {listed}"):
        AuditConfig(model=model_path, inputs=[str(tmp_path)], out_dir=tmp_path / "out", metrics="road,faithful")
    with pytest.raises(InputError, match="takes no option wiggle"):
        AuditConfig(model=model_path, inputs=[], out_dir=tmp_path, metrics="road",
                    metric_options={"road": {"wiggle": 1}})
    with pytest.raises(InputError, match="unknown metric 'nope'"):
        AuditConfig(model=model_path, inputs=[], out_dir=tmp_path, metrics="road", metric_options={"nope": {}})
    assert AuditConfig(model=model_path, inputs=[], out_dir=tmp_path, metrics="road",
                       metric_options={"deletion": {"steps": 4}}).metric_options == {"road": {"noise": 0}}
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", model_path, str(tmp_path), "--out", str(tmp_path / "out"), "--metrics", "road,nope"])
    assert exit_info.value.code == 2
    assert f"unknown metric 'nope'; {listed}" in capsys.readouterr().err


def test_method_lists_are_parsed_deduplicated_and_checked(model_path, tmp_path, capsys):
    config = AuditConfig(model=model_path, inputs=[], out_dir=tmp_path, method="HiResCAM, gradcam,hirescam",
                         metrics="Deletion,road,deletion")
    assert config.methods == ("hirescam", "gradcam") and config.method == "hirescam,gradcam"
    assert config.metrics == ("deletion", "road")
    choices = CommaChoices(["gradcam", "hirescam"])
    assert list(choices) == ["gradcam", "hirescam"] and "gradcam,hirescam" in choices
    assert "gradcam,nope" not in choices and "" not in choices and "," not in choices
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", model_path, str(tmp_path), "--out", str(tmp_path / "out"), "--method", "gradcam,nope"])
    assert exit_info.value.code == 2 and "invalid choice: 'gradcam,nope'" in capsys.readouterr().err


def test_cli_runs_two_methods_with_metrics(model_path, tmp_path, capsys):
    write_digits(tmp_path / "digits", 2)
    assert main(["audit", model_path, str(tmp_path / "digits"), "--out", str(tmp_path / "out"), "--no-progress",
                 "--no-report", "--method", "gradcam,hirescam", "--metrics", "confidence,deletion"]) == 0
    output = capsys.readouterr().out
    assert "audited 2 inputs with 2 methods (4 records)" in output
    assert "mean faithfulness of gradcam: confidence_change" in output and "deletion_auc" in output
    table = pq.read_table(tmp_path / "out" / "records.parquet")
    assert {"method", "confidence_change", "deletion_auc"} <= set(table.column_names)
    assert "road_combined" not in table.column_names  # a metric's column only when it is measured


def test_a_metric_that_fails_on_one_image_leaves_its_column_null_with_a_reason(model_path, tmp_path):
    from onnx_gradcam.audit.measure import Measurer
    from onnx_gradcam.audit.pipeline import BatchExplainer

    digits = write_digits(tmp_path / "digits", 3)
    explainer = Explainer(model_path, method="hirescam")
    decoder = Decoder(explainer.preprocess)
    batch = [decoder(InputItem(str(path))) for path, _ in digits]
    batch[1].tensor[0, 0, 0] = 1e3  # a marked image: the predictor below refuses it

    class Refusing:
        def predict(self, images):
            if (images == 1e3).any():
                raise RuntimeError("refused")
            return explainer.predict(images)

    measurer = Measurer(Refusing(), ["confidence"], layout=explainer.layout)
    result = BatchExplainer(explainer, measurer=measurer)(batch)
    assert [r["status"] for r in result.records] == ["ok"] * 3
    assert result.records[1]["confidence_change"] is None
    assert result.records[1]["reason"] == "confidence failed: RuntimeError: refused"
    tensors = np.stack([decoded.tensor for decoded in batch])
    explained = explainer.explain(tensors)
    expected = metrics.confidence_change(explainer, tensors, np.asarray(explained.heatmaps), explained.classes)
    for index in (0, 2):
        assert result.records[index]["reason"] is None
        assert result.records[index]["confidence_change"] == pytest.approx(expected[index], abs=1e-6)
