"""Report galleries: which records to show, and their overlay tiles (re-explained, so no saved files are needed)."""
from __future__ import annotations

import base64
from typing import Optional

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..metrics import Metric
from ..render import overlay
from .config import AuditConfig, AuditModel
from .decode import fit_within
from .readers import InputItem
from .worker import AuditWorker

GALLERY_SIZE = 24
LEAST_FAITHFUL = "least faithful"
TILE_SIDE = 160


def select_galleries(table: pa.Table, size: int = GALLERY_SIZE,
                     metric: Optional[Metric] = None) -> dict[str, list[dict]]:
    """The rows of the galleries: most confident, misclassified (most confident first), least focused, and with
    a metric, least faithful (its worst values first, by its direction)."""
    ok = table.filter(pc.equal(table["status"], "ok"))
    wrong = ok.filter(pc.equal(ok["correct"], False))

    def top(rows: pa.Table, column: str, order: str = "descending") -> list[dict]:
        """The size rows first in column's order (ties by path and method)."""
        keys = [(column, order), ("path", "ascending"), ("method", "ascending")]
        return rows.sort_by(keys).slice(0, size).to_pylist()

    galleries = {"most confident": top(ok, "probability"), "misclassified": top(wrong, "probability"),
                 "least focused": top(ok, "entropy")}
    if metric is not None:
        measured = ok.filter(pc.is_finite(ok[metric.column]))
        galleries[LEAST_FAITHFUL] = top(measured, metric.column,
                                          "ascending" if metric.higher_is_better else "descending")
    return galleries


def render_tiles(rows: list[dict], config: AuditConfig, model: AuditModel) -> dict[tuple[str, str], str]:
    """Data URIs of heatmap overlays for the rows, keyed by (path, method) (an image unreadable now is left out).

    Each image is decoded once and explained with the methods its rows show (a row without one: the run's first).
    """
    wanted = {(row["path"], row.get("method") or config.methods[0]): row for row in rows}
    if not wanted:
        return {}
    worker = AuditWorker(config, model, thumbnails=True)
    paths = list(dict.fromkeys(path for path, _ in wanted))
    decoded = {path: worker.decode(InputItem(path)) for path in paths}
    tiles = {}
    for method in dict.fromkeys(method for _, method in wanted):
        keys = [key for key in wanted if key[1] == method]
        batch = [decoded[path] for path, _ in keys]
        (explained,) = worker.explain(batch, [wanted[key]["explained_class"] for key in keys], [method],
                                      measure=False)
        for position, index in enumerate(explained.positions):
            tiles[keys[index]] = tile_uri(overlay(batch[index].thumbnail, explained.heatmaps[position]))
    return tiles


def tile_uri(image: np.ndarray, side: int = TILE_SIDE) -> Optional[str]:
    """A data: URI of image fitted to side pixels (small images enlarged by whole pixels, so they stay sharp)."""
    height, width = image.shape[:2]
    if max(height, width) < side:
        factor = max(1, side // max(height, width))
        image = cv2.resize(image, (width * factor, height * factor), interpolation=cv2.INTER_NEAREST)
    image = cv2.cvtColor(fit_within(image, side), cv2.COLOR_RGB2BGR)
    small = max(height, width) <= 64  # tiny images compress better and stay exact as PNG
    ok, data = cv2.imencode(".png" if small else ".jpg", image, [] if small else [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return None
    mime = "image/png" if small else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data.tobytes()).decode()}"


# detect and segment: per class, the items ranked by this column (most confident first) ...
TASK_RANK = {"detect": "confidence", "segment": "pixel_share"}
# ... and by the share of heat on the item (least first): the explanations that land off their object.
TASK_COVERAGE = {"detect": "heat_in_box", "segment": "heat_in_mask"}
CLASS_SECTIONS = 12  # classes with galleries in the report, the most frequent first
CLASS_GALLERY_SIZE = 8


def select_task_galleries(table: pa.Table, task: str, classes: int = CLASS_SECTIONS,
                          size: int = CLASS_GALLERY_SIZE) -> dict[str, dict[str, list[dict]]]:
    """Per class (the most frequent first, by label), the rows of its galleries: the most confident boxes
    (detect) or largest masks (segment), and those whose heatmap puts the least heat on them."""
    items = table.filter(pc.and_(pc.equal(table["status"], "ok"), pc.is_valid(table["item"])))
    counts: dict[str, int] = {}
    for label in items["explained_label"].to_pylist():
        counts[label] = counts.get(label, 0) + 1
    ties = [("path", "ascending"), ("method", "ascending"), ("item", "ascending")]
    galleries = {}
    for label in sorted(counts, key=lambda name: (-counts[name], name))[:classes]:
        rows = items.filter(pc.equal(items["explained_label"], label))
        measured = rows.filter(pc.is_finite(rows[TASK_COVERAGE[task]]))
        galleries[label] = {
            "most confident" if task == "detect" else "largest":
                rows.sort_by([(TASK_RANK[task], "descending"), *ties]).slice(0, size).to_pylist(),
            f"least {TASK_COVERAGE[task]}":
                measured.sort_by([(TASK_COVERAGE[task], "ascending"), *ties]).slice(0, size).to_pylist(),
        }
    return galleries


def render_task_tiles(rows: list[dict], config: AuditConfig, model: AuditModel) -> dict[tuple, str]:
    """Data URIs of the rows' overlays (heatmap, box or mask outline), keyed by (path, method, item); only the
    items shown are explained again, by their anchor and class (detect) or class (segment). An image unreadable
    now is left out."""
    wanted = {(row["path"], row["method"], row["item"]): row for row in rows}
    if not wanted:
        return {}
    worker = AuditWorker(config, model, thumbnails=True)
    batcher = worker.batcher
    decoded = {path: worker.decode(InputItem(path)) for path in dict.fromkeys(path for path, _, _ in wanted)}
    tiles = {}
    for method in dict.fromkeys(method for _, method, _ in wanted):
        keys = [key for key in wanted if key[1] == method and decoded[key[0]].ok]
        for start in range(0, len(keys), config.batch_size):
            chunk = keys[start:start + config.batch_size]
            records = [wanted[key] for key in chunk]
            tensors = np.stack([decoded[path].tensor for path, _, _ in chunk])
            heatmaps, masks = batcher.explain_records(tensors, records, method)
            for index, (key, record) in enumerate(zip(chunk, records)):
                picture = batcher.picture(decoded[key[0]].thumbnail, heatmaps[index], record,
                                          None if masks is None else masks[index])
                tiles[key] = tile_uri(picture)
    return tiles
