"""Report pieces without a browser: gallery selection, re-explained tiles, tile URIs that decode, SVG charts."""
from __future__ import annotations

import base64
import xml.etree.ElementTree as ElementTree

import cv2
import numpy as np

from audit_helpers import write_digits
from onnx_gradcam.audit import AuditConfig, charts
from onnx_gradcam.audit.config import prepare_model
from onnx_gradcam.audit.gallery import render_tiles, select_galleries, tile_uri
from onnx_gradcam.audit.writers import records_table


def row(path, probability, entropy, correct, status="ok"):
    return {"path": path, "status": status, "probability": probability, "entropy": entropy, "correct": correct}


def test_galleries_pick_confident_misclassified_and_spread_out_rows():
    table = records_table([row("/a", 0.9, 0.2, True), row("/b", 0.6, 0.9, False), row("/c", 0.99, 0.5, None),
                           row("/d", 0.7, 0.95, False), row("/e", None, None, None, status="error")])
    galleries = select_galleries(table, size=2)
    assert [r["path"] for r in galleries["most confident"]] == ["/c", "/a"]
    assert [r["path"] for r in galleries["misclassified"]] == ["/d", "/b"]
    assert [r["path"] for r in galleries["least focused"]] == ["/d", "/b"]


def test_tiles_are_data_uris_that_decode_to_the_tile_size():
    for shape, mime, side in [((28, 28, 3), "image/png", 140), ((300, 600, 3), "image/jpeg", 160)]:
        uri = tile_uri(np.full(shape, 200, np.uint8))
        header, payload = uri.split(",", 1)
        assert header == f"data:{mime};base64"
        image = cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)
        assert max(image.shape[:2]) == side


def test_charts_are_well_formed_svg_with_one_bar_per_bin():
    svg = charts.histogram([0.1, 0.15, 0.5, None, float("nan"), 1.0], "Confidence", "p", bins=10)
    root = ElementTree.fromstring(svg)
    assert root.tag == "svg" and len(root.findall("rect")) == 10
    heights = [float(rect.get("height")) for rect in root.findall("rect")]
    assert heights[1] == max(heights) and heights[2] == 0  # 0.1 and 0.15 share a bin; NaN and None dropped
    ElementTree.fromstring(charts.bars(["a<b", "c"], [3, 0], "Classes & more", "class"))
    ElementTree.fromstring(charts.scatter_density([0.1, 0.9, None], [0.2, 0.8, 0.5], "Peaks"))


def test_tiles_are_made_once_per_readable_path_and_unreadable_ones_left_out(model_path, tmp_path):
    (first, _), (second, _) = write_digits(tmp_path / "digits", 2)
    config = AuditConfig(model=model_path, inputs=[str(tmp_path)], out_dir=tmp_path / "out", method="hirescam")
    rows = [{"path": str(first), "explained_class": 1}, {"path": str(second), "explained_class": 2},
            {"path": str(first), "explained_class": 1}, {"path": str(tmp_path / "gone.png"), "explained_class": 0}]
    tiles = render_tiles(rows, config, prepare_model(config))
    assert sorted(tiles) == sorted([(str(first), "hirescam"), (str(second), "hirescam")])
    assert all(uri.startswith("data:image/png;base64,") for uri in tiles.values())
    assert render_tiles([], config, prepare_model(config)) == {}


def test_tiles_of_several_methods_are_keyed_by_path_and_method_and_match_explainer_oracle(model_path, tmp_path):
    from onnx_gradcam.explainer import Explainer
    from onnx_gradcam.render import overlay, read_image

    (first, _), = write_digits(tmp_path / "digits", 1)
    config = AuditConfig(model=model_path, inputs=[str(tmp_path)], out_dir=tmp_path / "out",
                         method="hirescam,gradcam")
    rows = [{"path": str(first), "method": method, "explained_class": 3} for method in ("gradcam", "hirescam")]
    tiles = render_tiles(rows, config, prepare_model(config))
    assert sorted(tiles) == [(str(first), "gradcam"), (str(first), "hirescam")]
    for method in ("gradcam", "hirescam"):
        image = read_image(first)
        heatmap = Explainer(model_path, method=method).explain([image], target_class=3).heatmaps[0]
        assert tiles[(str(first), method)] == tile_uri(overlay(image, heatmap))


def test_least_faithful_gallery_follows_the_metric_direction():
    from onnx_gradcam.metrics import METRICS
    from onnx_gradcam.audit.writers import records_schema

    schema = records_schema(["road_combined", "deletion_auc"])
    rows = [dict(row(f"/{name}", 0.9, 0.5, True), method="gradcam", road_combined=road, deletion_auc=deletion)
            for name, road, deletion in [("a", 0.3, 0.2), ("b", -0.1, 0.7), ("c", None, 0.9), ("d", 0.1, 0.1)]]
    table = records_table(rows, schema)
    road = select_galleries(table, size=2, metric=METRICS["road"])["least faithful"]
    assert [r["path"] for r in road] == ["/b", "/d"]  # higher is better: the lowest first, nulls left out
    deletion = select_galleries(table, size=2, metric=METRICS["deletion"])["least faithful"]
    assert [r["path"] for r in deletion] == ["/c", "/b"]  # lower is better: the highest first
    assert "least faithful" not in select_galleries(table)


def test_grouped_histogram_is_well_formed_svg_with_a_bar_per_bin_and_series():
    svg = charts.grouped_histogram({"gradcam": [0.1, 0.2, None], "hirescam": [0.9, float("nan")]}, "ROAD",
                                   "per record", bins=5, value_range=charts.value_range([0.1, 0.9]))
    root = ElementTree.fromstring(svg)
    namespace = "{http://www.w3.org/2000/svg}"
    bars = [rect for rect in root.iter() if rect.tag in ("rect", namespace + "rect") and rect.find("title") is not None]
    assert len(bars) == 2 * 5 and "gradcam" in svg and "hirescam" in svg
    assert charts.value_range([None, float("nan")]) == (0.0, 1.0) and charts.value_range([2, 2]) == (1.5, 2.5)
