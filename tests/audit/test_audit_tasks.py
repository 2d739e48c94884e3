"""Detect and segment audits (--task) on small YOLO-style and segmentation torch models exported to ONNX.

Oracles: tasks.explain_detections and tasks.explain_segmentation run directly on the audit's own decoded
tensors, in the audit's batches; heat_in_box and heat_in_mask recomputed here from the heatmaps and the boxes
or masks; box corners mapped to the image by hand. Resume: SIGKILL mid-run, twice, then rerun: every image's
records exactly once and equal to an uninterrupted run's. The combinations that make no sense are usage errors.
"""
from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit_helpers import (TASK_IMAGE_SIZE, audit_command, committed_parts, run_and_kill, segmenter_model,
                           subprocess_env, write_task_images, yolo_model)
from onnx_gradcam.audit import AuditConfig, run_audit
from onnx_gradcam.audit.config import prepare_model
from onnx_gradcam.audit.decode import Decoder
from onnx_gradcam.audit.gallery import select_task_galleries
from onnx_gradcam.audit.journal import _one_row_per_key
from onnx_gradcam.audit.pipeline import BatchResult
from onnx_gradcam.audit.ray import BatchAssembler, result_from_arrow, result_to_arrow
from onnx_gradcam.audit.readers import InputItem
from onnx_gradcam.audit.stats import heatmap_stats
from onnx_gradcam.audit.worker import AuditWorker
from onnx_gradcam.audit.writers import read_heatmap, records_schema, records_table
from onnx_gradcam.cli import main
from onnx_gradcam.errors import InputError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.tasks import explain_detections, explain_segmentation

pytest.importorskip("torch")

CONF, MAX_DET, BATCH = 0.8, 4, 3  # at CONF, some of the test images have no box
IMAGE_SIZE = TASK_IMAGE_SIZE  # (H, W) of the test images; the models take 64 x 64
# Where a record lives depends on how work was grouped, not on what it says.
PLACEMENT = {"part", "heatmap_file", "heatmap_index"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> dict:
    return yolo_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> dict:
    return segmenter_model(tmp_path_factory.mktemp("models"))


def task_config(model: dict, inputs, out, task: str, **kwargs) -> AuditConfig:
    options = dict(batch_size=BATCH, workers=1, progress=False, report=False, target=model["target"], task=task)
    if task == "detect":
        options.update(conf=CONF, max_det=MAX_DET)
    options.update(kwargs)
    return AuditConfig(model=model["path"], inputs=[str(i) for i in inputs], out_dir=out, **options)


def records(out) -> list[dict]:
    return pq.read_table(out / "records.parquet").to_pylist()


def oracle_batches(config: AuditConfig, paths: list[str]):
    """(paths, tensors, explainer) per batch of the audit: the audit's model and decoder, an Explainer of its own."""
    model = prepare_model(config)
    decoder = Decoder(model.preprocess)
    explainer = Explainer(model.model_bytes, batch_size=config.batch_size)
    for start in range(0, len(paths), config.batch_size):
        chunk = paths[start:start + config.batch_size]
        yield chunk, np.stack([decoder(InputItem(path)).tensor for path in chunk]), explainer


def heat_inside(heatmap: np.ndarray, inside: np.ndarray) -> float:
    return float(heatmap[inside].sum() / heatmap.sum())


def box_pixels(shape: tuple[int, int], box: np.ndarray) -> np.ndarray:
    """The pixels whose centre lies in the box (edges included)."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    return (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])


def assert_close(record: dict, expected: dict) -> None:
    for name, value in expected.items():
        assert record[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


# ---------------------------------------------------------------- records against the tasks oracle

def test_detect_records_equal_explain_detections_on_the_decoded_tensors(detector, tmp_path):
    paths = write_task_images(tmp_path / "images", 8)
    out = tmp_path / "out"
    config = task_config(detector, [tmp_path / "images"], out, "detect", save={"heatmaps", "overlays"},
                         overlay_format="png")
    summary = run_audit(config)
    rows = records(out)
    by_path = {path: [row for row in rows if row["path"] == path] for path in paths}
    found = 0
    for chunk, tensors, explainer in oracle_batches(config, paths):
        results = explain_detections(explainer, tensors, conf=CONF, max_det=MAX_DET, as_numpy=True)
        for path, result in zip(chunk, results):
            mine = by_path[path]
            if not len(result):  # one record, status ok, a null item
                assert [(row["status"], row["item"], row["explained_class"], row["heat_in_box"]) for row in mine] == [
                    ("ok", None, None, None)]
                continue
            found += len(result)
            assert [row["item"] for row in mine] == list(range(len(result)))
            stats = heatmap_stats(result.heatmaps)
            scale = np.array([IMAGE_SIZE[1] / 64, IMAGE_SIZE[0] / 64] * 2)
            for k, row in enumerate(mine):
                assert row["status"] == "ok" and row["reason"] is None
                assert row["explained_class"] == result.detections.classes[k]
                assert row["explained_label"] == str(result.detections.classes[k])
                assert row["anchor"] == result.detections.anchors[k]
                box = result.detections.boxes[k]
                assert_close(row, {"confidence": result.detections.scores[k], "score": result.scores[k],
                                   **dict(zip(("box_x1", "box_y1", "box_x2", "box_y2"), box * scale)),
                                   **{name: values[k] for name, values in stats.items()},
                                   "heat_in_box": heat_inside(result.heatmaps[k], box_pixels((64, 64), box))})
                np.testing.assert_allclose(read_heatmap(out, row["heatmap_file"], row["heatmap_index"]),
                                           result.heatmaps[k], atol=1e-3)  # float16 on disk
                overlay = cv2.imread(str(out / row["overlay_file"]))
                assert row["overlay_file"].endswith(f"-box{k}.png") and overlay.shape == (*IMAGE_SIZE, 3)
    empty = sum(len(mine) == 1 and mine[0]["item"] is None for mine in by_path.values())
    assert found >= 12 and empty >= 2  # the test covers both kinds of image
    assert (summary.inputs, summary.ok, summary.errors, summary.items, summary.empty) == (8, 8, 0, found, empty)
    assert summary.records == len(rows) == found + empty and summary.exit_code == 0
    assert any(row["box_x1"] < 0 for row in rows if row["item"] is not None)  # boxes reaching past the image
    settings = json.loads((out / "run.json").read_text())
    assert {key: settings[key] for key in ("task", "score", "conf", "iou", "max_det")} == {
        "task": "detect", "score": "output0", "conf": CONF, "iou": 0.45, "max_det": MAX_DET}


def test_segment_records_equal_explain_segmentation_on_the_decoded_tensors(segmenter, tmp_path):
    paths = write_task_images(tmp_path / "images", 5)
    out = tmp_path / "out"
    config = task_config(segmenter, [tmp_path / "images"], out, "segment", save={"heatmaps", "overlays"},
                         overlay_format="png")
    summary = run_audit(config)
    rows = records(out)
    count = 0
    for chunk, tensors, explainer in oracle_batches(config, paths):
        for path, result in zip(chunk, explain_segmentation(explainer, tensors, as_numpy=True)):
            mine = [row for row in rows if row["path"] == path]
            assert [row["explained_class"] for row in mine] == list(result.classes) and len(result)
            stats = heatmap_stats(result.heatmaps)
            for k, row in enumerate(mine):
                mask = result.masks[k]
                assert row["item"] == k and row["status"] == "ok"
                assert_close(row, {"score": result.scores[k], "pixel_share": mask.mean(),
                                   **{name: values[k] for name, values in stats.items()},
                                   "heat_in_mask": heat_inside(result.heatmaps[k], mask)})
                np.testing.assert_allclose(read_heatmap(out, row["heatmap_file"], row["heatmap_index"]),
                                           result.heatmaps[k], atol=1e-3)
                assert row["overlay_file"].endswith(f"-class{result.classes[k]}.png")
                assert cv2.imread(str(out / row["overlay_file"])).shape == (*IMAGE_SIZE, 3)
            count += len(result)
    assert count > len(paths)  # some images have several classes
    assert (summary.items, summary.empty, summary.ok) == (count, 0, 5)
    assert {"task": "segment", "score": "output0"}.items() <= json.loads((out / "run.json").read_text()).items()


def test_class_filter_labels_and_bad_inputs_in_a_detect_audit(detector, tmp_path):
    write_task_images(tmp_path / "images", 6)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    labels = tmp_path / "labels.txt"
    labels.write_text("person\ncar\ndog\n")
    out = tmp_path / "out"
    everything = run_audit(task_config(detector, [tmp_path / "images"], tmp_path / "all", "detect"))
    summary = run_audit(task_config(detector, [tmp_path / "images"], out, "detect", target_class="car",
                                    labels_file=str(labels)))
    rows = records(out)
    broken = [row for row in rows if row["path"].endswith("broken.png")]
    assert [(row["status"], row["item"]) for row in broken] == [("error", None)] and broken[0]["reason"]
    kept = [row for row in rows if row["item"] is not None]
    assert kept and {(row["explained_label"], row["explained_class"]) for row in kept} == {("car", 1)}
    unfiltered = records(tmp_path / "all")
    for path in {row["path"] for row in rows}:  # every car box of the unfiltered audit is kept
        cars = {row["anchor"] for row in unfiltered if row["path"] == path and row["explained_class"] == 1}
        assert cars <= {row["anchor"] for row in kept if row["path"] == path}
    assert summary.exit_code == everything.exit_code == 1 and summary.errors == 1


# ---------------------------------------------------------------- report

def test_detect_report_shows_each_class_with_tiles_that_equal_the_saved_heatmaps(detector, tmp_path):
    write_task_images(tmp_path / "images", 5)
    out = tmp_path / "out"
    config = task_config(detector, [tmp_path / "images"], out, "detect", save={"heatmaps"}, report=True)
    run_audit(config)
    html = (out / "report.html").read_text()
    assert "Boxes per class" in html and "Share of heat on the box (heat_in_box)" in html
    assert "Most confident" in html and "Least heat_in_box" in html
    table = pq.read_table(out / "records.parquet")
    galleries = select_task_galleries(table, "detect")
    shown = [row for sections in galleries.values() for rows in sections.values() for row in rows]
    assert html.count("<img") == len(shown) > 0
    # The tiles explain only the boxes shown, by their anchor and class: the same heatmaps as the audit's.
    worker = AuditWorker(config, prepare_model(config))
    decoded = [worker.decode(InputItem(row["path"])) for row in shown]
    heatmaps, _ = worker.batcher.explain_records(np.stack([d.tensor for d in decoded]), shown)
    saved = [read_heatmap(out, row["heatmap_file"], row["heatmap_index"]) for row in shown]
    np.testing.assert_allclose(heatmaps, np.stack(saved), atol=1e-3)


def test_segment_report_has_a_section_per_class(segmenter, tmp_path):
    write_task_images(tmp_path / "images", 4)
    run_audit(task_config(segmenter, [tmp_path / "images"], tmp_path / "out", "segment", report=True))
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Least heat_in_mask" in html and "Largest" in html and "<img" in html
    labels = {row["explained_label"] for row in records(tmp_path / "out")}
    assert all(f"<h2>{label} <span" in html for label in labels)


# ---------------------------------------------------------------- resume

def test_detect_killed_twice_then_rerun_gives_every_image_once_with_all_its_boxes(detector, tmp_path):
    paths = write_task_images(tmp_path / "images", 40)
    out = tmp_path / "out"
    options = ["--task", "detect", "--conf", str(CONF), "--max-det", str(MAX_DET), "--batch", "2", "--workers", "1",
               "--commit-every", "1", "--save", "heatmaps", "--no-report", "--no-progress"]
    command = audit_command() + [detector["augmented"], str(tmp_path / "images"), "--out", str(out), *options]
    first = run_and_kill(command, out, 0, more_parts=2)
    second = run_and_kill(command, out, len(first), more_parts=2)
    assert set(first) <= set(second)  # committed parts are never rewritten or lost
    committed = {int(part.stem.split("-")[1]): pq.read_table(part).to_pylist() for part in second}
    finished = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stderr
    assert not list(out.rglob("*.tmp")) and not committed_parts(out)
    rows = records(out)
    for part, part_rows in committed.items():  # each committed image whole in its part, and not redone
        for path in {row["path"] for row in part_rows}:
            final = [(row["item"], row["part"]) for row in rows if row["path"] == path]
            assert final == [(row["item"], part) for row in part_rows if row["path"] == path]

    # Uninterrupted, in the same batches (every part is one batch of 2, so the resumed runs batch as this one).
    augmented = {"path": detector["augmented"], "target": "auto"}
    run_audit(task_config(augmented, [tmp_path / "images"], tmp_path / "straight", "detect", batch_size=2))
    expected = records(tmp_path / "straight")
    key = lambda row: (row["path"], row["method"], row["item"])  # noqa: E731
    assert [key(row) for row in rows] == [key(row) for row in expected]  # each image's records exactly once
    assert {row["path"] for row in rows} == set(paths)
    for mine, theirs in zip(rows, expected):
        assert {k: v for k, v in mine.items() if k not in PLACEMENT} == pytest.approx(
            {k: v for k, v in theirs.items() if k not in PLACEMENT}, nan_ok=True, abs=1e-6)
    for row in rows:
        if row["heatmap_file"]:
            with np.load(out / row["heatmap_file"]) as shard:
                assert shard["paths"][row["heatmap_index"]] == row["path"]
                assert shard["items"][row["heatmap_index"]] == row["item"]


def test_merged_records_keep_the_latest_part_of_each_image_with_every_item_once():
    def rows(path, part, items):
        return [{"path": path, "method": "gradcam", "item": item, "status": "ok", "part": part,
                 "score": float(part)} for item in items]

    # a.png in records.parquet and again in its part file (same part 0); b.png redone in part 2 with fewer boxes.
    table = records_table(rows("a.png", 0, [0, 1, 2]) + rows("b.png", 1, [0, 1, 2]) + rows("a.png", 0, [0, 1, 2])
                          + rows("b.png", 2, [0]) + rows("c.png", 1, [None]), records_schema((), "detect"))
    merged = _one_row_per_key(table)
    assert [(r["path"], r["item"], r["part"]) for r in merged.to_pylist()] == [
        ("a.png", 0, 0), ("a.png", 1, 0), ("a.png", 2, 0), ("b.png", 0, 2), ("c.png", None, 1)]


def test_batches_split_into_several_blocks_reach_the_journal_whole():
    """Ray Data splits large outputs into blocks and may interleave batches: each batch is joined back."""
    def batch(name, count):
        records = [{"path": f"{name}.png", "method": "gradcam", "item": item} for item in range(count)]
        return result_to_arrow(BatchResult(records, [np.full((2, 2), item, np.float32) for item in range(count)],
                                           [None] * count), seconds=1.0)

    first, second = batch("a", 5), batch("b", 3)
    assembler = BatchAssembler()
    assert assembler.add(first.slice(3, 2)) == []
    assert assembler.add(pa.concat_tables([second.slice(0, 3), first.slice(0, 1)])) == [second]
    (whole,) = assembler.add(first.slice(1, 2))
    result, seconds, _ = result_from_arrow(whole, (2, 2))
    assert [r["item"] for r in result.records] == list(range(5)) and seconds == pytest.approx(1.0)
    assert [float(h[0, 0]) for h in result.heatmaps] == list(range(5)) and not assembler.pending


# ---------------------------------------------------------------- usage errors

def audit(*args) -> int:
    return main(["audit", *map(str, args), "--no-progress", "--no-report", "--workers", "1"])


def test_combinations_that_make_no_sense_are_usage_errors(detector, segmenter, model_path, tmp_path, capsys):
    write_task_images(tmp_path / "images", 1)
    images = tmp_path / "images"
    detect = [detector["path"], images, "--task", "detect", "--target", detector["target"]]
    cases = [
        ([*detect, "--out", tmp_path / "o1", "--metrics", "road"], "do not apply to --task detect"),
        ([model_path, images, "--out", tmp_path / "o2", "--conf", "0.5"], "--conf does not apply to --task classify"),
        ([model_path, images, "--out", tmp_path / "o3", "--score", "logits"], "--score does not apply"),
        ([segmenter["path"], images, "--out", tmp_path / "o4", "--task", "segment", "--max-det", "3",
          "--target", segmenter["target"]], "--max-det does not apply to --task segment"),
        ([detector["path"], images, "--out", tmp_path / "o5", "--task", "segment", "--target", detector["target"]],
         "explains per-pixel logits [N, C, H, W], but the model's score 'output0' has 3 dimensions"),
        ([model_path, images, "--out", tmp_path / "o6", "--task", "detect"], "needs a model augmented with a gradient"),
        ([*detect, "--out", tmp_path / "o7", "--score", "nothing"], "nothing"),
        ([*detect, "--out", tmp_path / "o8", "--iou", "2"], "0 <= --iou <= 1"),
    ]
    for arguments, message in cases:
        assert audit(*arguments) == 2, message
        assert message in capsys.readouterr().err
    with pytest.raises(InputError, match="--score names the output"):
        AuditConfig(model=model_path, inputs=[str(images)], out_dir=tmp_path / "o9", score="output0")
    assert not any((tmp_path / f"o{index}").exists() for index in range(1, 10))  # refused before writing anything


def test_rerun_with_other_detection_settings_is_refused(detector, tmp_path):
    write_task_images(tmp_path / "images", 2)
    run_audit(task_config(detector, [tmp_path / "images"], tmp_path / "out", "detect"))
    with pytest.raises(InputError, match="conf"):
        run_audit(task_config(detector, [tmp_path / "images"], tmp_path / "out", "detect", conf=0.5))
    with pytest.raises(InputError, match="iou, max_det"):
        run_audit(task_config(detector, [tmp_path / "images"], tmp_path / "out", "detect", iou=0.6, max_det=2))
