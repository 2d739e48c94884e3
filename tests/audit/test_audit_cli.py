"""The audit command line: arguments, exit codes 0 / 1 / 2, and the demo audit."""
from __future__ import annotations

import argparse

import pyarrow.parquet as pq
import pytest

from audit_helpers import write_digits
from onnx_gradcam.audit.cli import add_audit_parser
from onnx_gradcam.cli import main
from onnx_gradcam.audit.demo import run_demo_audit


def audit(*args):
    return main(["audit", *map(str, args), "--no-progress", "--no-report", "--workers", "1"])


def test_exit_code_is_0_when_every_input_is_explained(model_path, tmp_path, capsys):
    write_digits(tmp_path / "digits", 4)
    assert audit(model_path, tmp_path / "digits", "--out", tmp_path / "out", "--batch", "3", "--csv") == 0
    assert "4 explained, 0 failed" in capsys.readouterr().out
    assert (tmp_path / "out" / "records.csv").exists()


def test_exit_code_is_1_when_an_input_fails_and_the_records_say_why(model_path, tmp_path, capsys):
    write_digits(tmp_path / "digits", 2)
    (tmp_path / "digits" / "broken.png").write_bytes(b"not a png")
    assert audit(model_path, tmp_path / "digits", "--out", tmp_path / "out") == 1
    rows = pq.read_table(tmp_path / "out" / "records.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["ok", "ok", "error"]
    assert "not a decodable image" in rows[2]["reason"]
    assert "some inputs failed" in capsys.readouterr().out


@pytest.mark.parametrize("extra", [["--save", "thumbnails"], ["--batch", "0"], ["--method", "nope"]])
def test_bad_arguments_exit_with_2(model_path, tmp_path, extra):
    with pytest.raises(SystemExit) as exit_info:
        audit(model_path, tmp_path, "--out", tmp_path / "out", *extra)
    assert exit_info.value.code == 2


def test_usage_errors_found_later_exit_with_2(model_path, tmp_path, capsys):
    write_digits(tmp_path / "digits", 1)
    (tmp_path / "empty").mkdir()
    assert audit(model_path, tmp_path / "empty", "--out", tmp_path / "o1") == 2
    assert audit(model_path, str(tmp_path / "nothing" / "*.png"), "--out", tmp_path / "o2") == 2
    assert audit(model_path, tmp_path / "digits", "--out", tmp_path / "o3", "--class", "cat") == 2
    assert audit(tmp_path / "missing.onnx", tmp_path / "digits", "--out", tmp_path / "o4") == 2
    errors = capsys.readouterr().err
    assert "no input images found" in errors and "matches no file" in errors and "not a class index" in errors


def test_add_audit_parser_fills_a_parent_parser():
    parser = argparse.ArgumentParser()
    add_audit_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["audit", "m.onnx", "a", "b", "--out", "o", "--save", "overlays,heatmaps",
                              "--class", "cat", "--ray-address", "ray://head:10001", "--max-pixels", "5e7"])
    assert args.inputs == ["a", "b"] and args.save == {"overlays", "heatmaps"} and args.target_class == "cat"
    assert args.max_pixels == 50_000_000 and args.func.__name__ == "run_audit_command"


def test_demo_audit_writes_inputs_manifest_records_and_report(tmp_path):
    assert run_demo_audit(tmp_path, count=30, progress=False) == 0
    rows = pq.read_table(tmp_path / "records.parquet").to_pylist()
    assert len(rows) == 30 and all(row["status"] == "ok" for row in rows)
    assert sum(row["correct"] for row in rows) >= 27
    assert (tmp_path / "inputs" / "labels.csv").read_text().startswith("path,label\n")
    assert all((tmp_path / row["overlay_file"]).exists() for row in rows)
    assert all(row[column] is not None for row in rows for column in ("road_combined", "deletion_auc",
                                                                      "insertion_auc"))
    html = (tmp_path / "report.html").read_text()
    assert "<img" in html and "Least faithful" in html and 'aria-label="insertion_auc (' in html


def test_progress_bar_shows_images_per_second(model_path, tmp_path, capsys):
    write_digits(tmp_path / "digits", 3)
    assert main(["audit", model_path, str(tmp_path / "digits"), "--out", str(tmp_path / "out"), "--no-report"]) == 0
    assert "img/s" in capsys.readouterr().err


def test_plain_model_is_augmented_for_an_input_gradient_method(tmp_path, capsys):
    from audit_helpers import tiny_plain_model

    write_digits(tmp_path / "digits", 3)
    model = tiny_plain_model(tmp_path / "plain.onnx")
    assert audit(model, tmp_path / "digits", "--out", tmp_path / "out", "--method", "saliency",
                 "--preprocess", '{"channel_order": "GRAY"}') == 0
    rows = pq.read_table(tmp_path / "out" / "records.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["ok"] * 3 and all(0 <= row["entropy"] <= 1 for row in rows)
    assert "plain model: augmenting it" in capsys.readouterr().err


def test_input_gradient_method_on_a_model_without_that_output_is_a_usage_error(model_path, tmp_path, capsys):
    write_digits(tmp_path / "digits", 1)
    assert audit(model_path, tmp_path / "digits", "--out", tmp_path / "out", "--method", "saliency") == 2
    assert "needs a model augmented with --input-gradient" in capsys.readouterr().err


def test_a_plain_model_is_augmented_once_for_what_any_of_the_methods_reads(tmp_path, capsys):
    from audit_helpers import tiny_plain_model

    write_digits(tmp_path / "digits", 2)
    model = tiny_plain_model(tmp_path / "plain.onnx")
    assert audit(model, tmp_path / "digits", "--out", tmp_path / "out", "--method", "hirescam,saliency",
                 "--preprocess", '{"channel_order": "GRAY"}') == 0
    rows = pq.read_table(tmp_path / "out" / "records.parquet").to_pylist()
    assert sorted(row["method"] for row in rows) == ["hirescam", "hirescam", "saliency", "saliency"]
    assert all(row["status"] == "ok" for row in rows)
    assert capsys.readouterr().err.count("plain model: augmenting it") == 1


def test_a_method_the_augmented_model_cannot_serve_is_a_usage_error_naming_it(model_path, tmp_path, capsys):
    write_digits(tmp_path / "digits", 1)
    assert audit(model_path, tmp_path / "digits", "--out", tmp_path / "out", "--method", "hirescam,saliency") == 2
    assert "needs a model augmented with --input-gradient" in capsys.readouterr().err
