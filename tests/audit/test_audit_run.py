"""Whole audits in-process: one record per input, bad inputs recorded, outputs complete, resume exact."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from audit_helpers import write_bad_inputs, write_digits
from onnx_gradcam.audit import AuditConfig, run_audit
from onnx_gradcam.audit.journal import Journal
from onnx_gradcam.audit.pipeline import BatchExplainer
from onnx_gradcam.audit.writers import read_heatmap, records_table, write_parquet
from onnx_gradcam.demo import data_path
from onnx_gradcam.errors import InputError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.render import read_image

LABELS_FILE = str(data_path("digits_labels.txt"))


def config(model_path, inputs, out, **kwargs):
    options = dict(method="hirescam", batch_size=4, workers=2, progress=False, report=False,
                   labels_file=LABELS_FILE)
    options.update(kwargs)
    return AuditConfig(model=model_path, inputs=[str(i) for i in inputs], out_dir=out, **options)


def records(out):
    return pq.read_table(out / "records.parquet").to_pylist()


def no_leftovers(out):
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    assert not list((out / "parts").glob("*.parquet")), "parts should be merged into records.parquet"


def test_every_input_gets_one_record_and_bad_inputs_a_reason(model_path, tmp_path):
    digits = write_digits(tmp_path / "digits", 10)
    bad = write_bad_inputs(tmp_path / "bad")
    listed_twice = str(digits[0][0])
    summary = run_audit(config(model_path, [tmp_path / "digits", tmp_path / "bad", listed_twice,
                                            bad["missing.png"]], tmp_path / "out"))
    rows = {row["path"]: row for row in records(tmp_path / "out")}
    assert len(rows) == len(records(tmp_path / "out")) == 10 + len(bad)
    failed = {"zero_byte.png", "corrupt.png", "truncated.png", "truncated.jpg", "not_an_image.jpg", "huge.png",
              "missing.png"}
    for name, path in bad.items():
        row = rows[str(path)]
        assert row["status"] == ("error" if name in failed else "ok"), (name, row["reason"])
        if name in failed:
            assert row["reason"] and row["predicted_class"] is None
        else:
            assert row["explained_class"] is not None and 0 <= row["entropy"] <= 1
    assert rows[str(bad["gray.png"])]["predicted_class"] == rows[str(bad["copy_of_gray.png"])]["predicted_class"]
    duplicate = rows[str(bad["gray.png"])]  # sorted by path, copy_of_gray.png comes first
    assert duplicate["duplicate_of"] == str(bad["copy_of_gray.png"]) and "duplicate" in duplicate["reason"]
    assert summary.errors == len(failed) and summary.duplicates == 1 and summary.exit_code == 1
    no_leftovers(tmp_path / "out")


def test_saved_heatmaps_overlays_and_csv_match_the_records(model_path, tmp_path):
    write_digits(tmp_path / "digits", 9, scale=2)
    out = tmp_path / "out"
    summary = run_audit(config(model_path, [tmp_path / "digits"], out, save={"overlays", "heatmaps"}, csv=True,
                               report=True))
    assert summary.exit_code == 0 and summary.ok == 9
    rows = records(out)
    oracle = Explainer(model_path, method="hirescam").explain([read_image(row["path"]) for row in rows])
    for index, row in enumerate(rows):
        heatmap = read_heatmap(out, row["heatmap_file"], row["heatmap_index"])
        np.testing.assert_allclose(heatmap, oracle.heatmaps[index], atol=1e-3)  # float16 on disk
        with np.load(out / row["heatmap_file"]) as shard:
            assert shard["paths"][row["heatmap_index"]] == row["path"]
        overlay = cv2.imread(str(out / row["overlay_file"]))
        assert overlay.shape == (56, 56, 3)
    with open(out / "records.csv", newline="") as handle:
        assert [r["path"] for r in csv.DictReader(handle)] == [r["path"] for r in rows]
    assert json.loads((out / "summary.json").read_text())["ok"] == 9
    assert (out / "report.html").stat().st_size > 0
    no_leftovers(out)


def test_class_by_label_name_and_bad_class_is_a_usage_error(model_path, tmp_path):
    write_digits(tmp_path / "digits", 3)
    run_audit(config(model_path, [tmp_path / "digits"], tmp_path / "out", target_class="4"))
    assert {row["explained_class"] for row in records(tmp_path / "out")} == {4}
    with pytest.raises(InputError, match="not a class index"):
        run_audit(config(model_path, [tmp_path / "digits"], tmp_path / "out2", target_class="cat"))


class Crash(Exception):
    pass


def test_crash_then_rerun_gives_every_input_once_and_recomputes_nothing_committed(model_path, tmp_path,
                                                                                monkeypatch):
    write_digits(tmp_path / "digits", 30)
    out = tmp_path / "out"
    real_commit = Journal.commit

    def commit_three_then_crash(self, result):
        if self.next_part == 3:
            raise Crash()
        return real_commit(self, result)

    monkeypatch.setattr(Journal, "commit", commit_three_then_crash)
    with pytest.raises(Crash):
        run_audit(config(model_path, [tmp_path / "digits"], out, commit_every=4))
    parts = sorted((out / "parts").glob("*.parquet"))
    committed = {path for part in parts for path in pq.read_table(part)["path"].to_pylist()}
    assert len(committed) == 12  # three batches of four

    monkeypatch.setattr(Journal, "commit", real_commit)
    explained = []
    real_explain = BatchExplainer.explain
    monkeypatch.setattr(BatchExplainer, "explain", lambda self, batch, *rest: explained.extend(
        d.item.path for d in batch) or real_explain(self, batch, *rest))
    summary = run_audit(config(model_path, [tmp_path / "digits"], out, commit_every=4))
    rows = records(out)
    assert len(rows) == len({row["path"] for row in rows}) == 30
    assert not committed & set(explained) and len(explained) == 18
    assert {row["path"] for row in rows if row["part"] < 3} == committed
    assert summary.resumed == 12 and summary.processed == 18
    no_leftovers(out)


def test_rerun_of_a_finished_audit_does_nothing_and_new_inputs_are_added(model_path, tmp_path):
    write_digits(tmp_path / "digits", 6)
    out = tmp_path / "out"
    run_audit(config(model_path, [tmp_path / "digits"], out))
    before = records(out)
    again = run_audit(config(model_path, [tmp_path / "digits"], out))
    assert again.processed == 0 and records(out) == before
    write_digits(tmp_path / "digits", 2, start=100)
    more = run_audit(config(model_path, [tmp_path / "digits"], out))
    assert more.processed == 2 and more.records == 8
    assert [r for r in records(out) if r["path"] in {b["path"] for b in before}] == before


def test_resuming_with_other_settings_is_refused(model_path, tmp_path):
    write_digits(tmp_path / "digits", 2)
    run_audit(config(model_path, [tmp_path / "digits"], tmp_path / "out"))
    with pytest.raises(InputError, match="method"):
        run_audit(config(model_path, [tmp_path / "digits"], tmp_path / "out", method="gradcam"))


def test_output_folder_inside_the_input_folder_is_not_audited(model_path, tmp_path):
    write_digits(tmp_path / "data", 3)
    out = tmp_path / "data" / "audit"
    run_audit(config(model_path, [tmp_path / "data"], out, save={"overlays"}, overlay_format="png"))
    summary = run_audit(config(model_path, [tmp_path / "data"], out, save={"overlays"}, overlay_format="png"))
    assert summary.records == 3 and summary.processed == 0


def test_kill_while_parts_are_removed_after_the_merge_changes_nothing(model_path, tmp_path):
    write_digits(tmp_path / "digits", 10)
    out = tmp_path / "out"
    journal = Journal(out, commit_every=4)
    run_audit(config(model_path, [tmp_path / "digits"], out, commit_every=4))
    merged = records(out)
    # Put back parts as if the run died after writing records.parquet but before deleting them all.
    for part in sorted({row["part"] for row in merged})[:2]:
        rows = [row for row in merged if row["part"] == part]
        write_parquet(out / "parts" / f"part-{part:08d}.parquet", records_table(rows))
    journal.open(json.loads((out / "run.json").read_text()))
    assert len(journal.committed) == 10 and journal.next_part == max(row["part"] for row in merged) + 1
    journal.close()
    summary = run_audit(config(model_path, [tmp_path / "digits"], out, commit_every=4))
    assert summary.processed == 0 and records(out) == merged
    no_leftovers(out)


def test_an_audit_written_before_the_method_column_resumes_without_redoing_anything(model_path, tmp_path):
    write_digits(tmp_path / "digits", 6)
    out = tmp_path / "out"
    run_audit(config(model_path, [tmp_path / "digits"], out))
    table = pq.read_table(out / "records.parquet")
    pq.write_table(table.drop_columns(["method"]), out / "records.parquet")  # as older versions wrote it
    summary = run_audit(config(model_path, [tmp_path / "digits"], out))
    assert summary.processed == 0 and summary.records == 6
    assert records(out) == table.to_pylist()  # the method column is filled in with the run's one method
