"""The report of a detect or segment audit: what was found per class, how much of each heatmap's heat lands on
its box or mask, and per class galleries of the most confident items and of those whose heat lands least on them.
One self-contained HTML file, like the classify report (report.py), whose pieces it shares."""
from __future__ import annotations

import os
from collections import Counter
from html import escape
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import charts
from .config import AuditConfig, AuditModel
from .gallery import TASK_COVERAGE, TASK_RANK, render_task_tiles, select_task_galleries
from .report import IMAGE_CHECK, TOP_CLASSES, _problems, _table, page_head, run_cards
from .summary import AuditSummary, first_of_each_input
from .writers import write_bytes

ITEM_NAMES = {"detect": ("box", "boxes"), "segment": ("class region", "class regions")}


def write_task_report(path: os.PathLike, config: AuditConfig, model: AuditModel, table: pa.Table,
                      summary: AuditSummary) -> None:
    """Write the report of a detect or segment audit's records (gallery tiles re-explained) to path."""
    galleries = select_task_galleries(table, config.task)
    rows = [row for sections in galleries.values() for shown in sections.values() for row in shown]
    tiles = render_task_tiles(rows, config, model)
    write_bytes(path, render_task_html(table, summary, galleries, tiles, config.task).encode("utf-8"))


def render_task_html(table: pa.Table, summary: AuditSummary, galleries: dict[str, dict[str, list[dict]]],
                     tiles: dict[tuple, str], task: str) -> str:
    """The report as one HTML string: galleries per class label, tiles keyed by (path, method, item)."""
    title = f"Grad-CAM audit of {os.path.basename(summary.model)} ({task})"
    methods = summary.methods or [summary.method]
    items = _items(table)
    parts = [
        *page_head(title, summary, methods),
        _cards(summary, items, task), "<h2>Summary</h2><div class='charts'>",
        *_charts(table, items, task, methods), "</div>",
        "<h2>Per class</h2>", _class_table(items, task, methods[0]),
    ]
    singular, plural = ITEM_NAMES[task]
    coverage = TASK_COVERAGE[task]
    first = items.filter(pc.equal(items["method"], methods[0])) if items.num_rows else items
    counts = Counter(first["explained_label"].to_pylist())
    for label, sections in galleries.items():
        parts.append(f"<h2>{escape(str(label))} <span class='meta'>({counts[label]} {plural})</span></h2>")
        for name, rows in sections.items():
            note = f" <span class='meta'>(the {plural} whose heatmap puts the least heat on the {singular})</span>" \
                if name.startswith("least") else ""
            parts.append(f"<h3>{escape(name.capitalize())} ({len(rows)}){note}</h3>")
            parts.append(_gallery(rows, tiles, task, len(methods) > 1) if rows else "<p class='meta'>none</p>")
    if not galleries:
        parts.append(f"<p class='meta'>no {plural} found: nothing to show per class ({coverage})</p>")
    parts.extend([_problems(table.filter(first_of_each_input(table))),
                  f"<script>{IMAGE_CHECK}</script></body></html>"])
    return "\n".join(parts)


def _items(table: pa.Table) -> pa.Table:
    """The explained items: ok records with a box or class."""
    return table.filter(pc.and_(pc.equal(table["status"], "ok"), pc.is_valid(table["item"])))


def _cards(summary: AuditSummary, items: pa.Table, task: str) -> str:
    several = len(summary.methods) > 1
    per = " x method" if several else ""
    plural = ITEM_NAMES[task][1]
    coverage = items[TASK_COVERAGE[task]].to_pylist()
    finite = [value for value in coverage if value is not None and np.isfinite(value)]
    values = [("images", summary.inputs), (f"explained (image{per})", summary.ok), ("failed", summary.errors),
              ("duplicates", summary.duplicates), (f"{plural}{' (all methods)' if several else ''}", summary.items),
              (f"images{per} with none", summary.empty)]
    if finite:
        values.append((f"median {TASK_COVERAGE[task]}", f"{float(np.median(finite)):.2f}"))
    return run_cards(values, summary)


def _charts(table: pa.Table, items: pa.Table, task: str, methods: Sequence[str]) -> list[str]:
    inputs = table.filter(first_of_each_input(table))
    inputs = inputs.filter(pc.equal(inputs["method"], methods[0])) if inputs.num_rows else inputs
    status = Counter(inputs["status"].to_pylist())
    # What was found does not depend on the method: counts use the first method's records.
    found = items.filter(pc.equal(items["method"], methods[0])) if items.num_rows else items
    counts = Counter(found["explained_label"].to_pylist()).most_common(TOP_CLASSES)
    coverage = TASK_COVERAGE[task]
    plural = ITEM_NAMES[task][1]
    result = [charts.bars(["ok", "error", "duplicate"],
                          [status.get("ok", 0), status.get("error", 0),
                           inputs.num_rows - inputs["duplicate_of"].null_count], "Inputs by outcome")]
    if counts:
        result.append(charts.bars([name for name, _ in counts], [count for _, count in counts],
                                  f"{plural.capitalize()} per class (top {TOP_CLASSES})", "class"))
    per_image = Counter(found["path"].to_pylist())
    sizes = [per_image.get(path, 0) for path in inputs.filter(pc.equal(inputs["status"], "ok"))["path"].to_pylist()]
    if sizes:
        top = max(sizes)
        result.append(charts.bars([str(n) for n in range(top + 1)], [sizes.count(n) for n in range(top + 1)],
                                  f"{plural.capitalize()} per image", f"{plural} in the image"))
    title = f"Share of heat on the {'box' if task == 'detect' else 'mask'} ({coverage})"
    if len(methods) > 1:
        by_method = items["method"].to_pylist()
        values = items[coverage].to_pylist()
        series = {method: [v for v, m in zip(values, by_method) if m == method] for method in methods}
        result.append(charts.grouped_histogram(series, title, "0 = all heat outside, 1 = all on it"))
    else:
        result.append(charts.histogram(items[coverage].to_pylist(), title, "0 = all heat outside, 1 = all on it"))
    rank = TASK_RANK[task]
    result.append(charts.histogram(found[rank].to_pylist(), "Box confidence" if task == "detect"
                                   else "Share of the image per class", rank))
    result.append(charts.histogram(items["entropy"].to_pylist(), "Heatmap spread (normalized entropy)",
                                   "0 = one spot, 1 = everywhere"))
    result.append(charts.scatter_density(items["peak_x"].to_pylist(), items["peak_y"].to_pylist(),
                                         "Where the heat peaks (image frame)"))
    return result


def _class_table(items: pa.Table, task: str, method: str) -> str:
    """Per class (most frequent first): how many items, their mean confidence or pixel share, and of the first
    method's heatmaps the mean share of heat on the item and how many put less than half of it there."""
    rows = items.filter(pc.equal(items["method"], method)) if items.num_rows else items
    labels = rows["explained_label"].to_pylist()
    rank = np.asarray(rows[TASK_RANK[task]].to_pylist(), np.float64)
    coverage = np.asarray([np.nan if v is None else v for v in rows[TASK_COVERAGE[task]].to_pylist()], np.float64)
    counts = Counter(labels)
    body = []
    for label, count in sorted(counts.items(), key=lambda pair: (-pair[1], str(pair[0]))):
        chosen = np.asarray([name == label for name in labels])
        measured = coverage[chosen & np.isfinite(coverage)]
        body.append([label, count, f"{rank[chosen].mean():.3f}",
                     f"{measured.mean():.3f}" if measured.size else "n/a",
                     f"{(measured < 0.5).mean():.0%}" if measured.size else "n/a"])
    if not body:
        return "<p class='meta'>none</p>"
    coverage_name = TASK_COVERAGE[task]
    header = ["class", ITEM_NAMES[task][1], f"mean {TASK_RANK[task]}", f"mean {coverage_name}",
              f"{coverage_name} < 0.5"]
    return _table(header, body)


def _gallery(rows: list[dict], tiles: dict[tuple, str], task: str, several: bool) -> str:
    figures = []
    coverage = TASK_COVERAGE[task]
    for row in rows:
        uri = tiles.get((row["path"], row["method"], row["item"]))
        name = escape(os.path.basename(row["path"]))
        image = (f"<img src='{uri}' alt='{name}' width='160' loading='eager'>" if uri
                 else "<div class='missing'>image no longer readable</div>")
        found = (f"box {row['item']} &middot; conf {row['confidence']:.3f}" if task == "detect"
                 else f"{row['pixel_share']:.1%} of the pixels")
        share = "n/a" if row.get(coverage) is None or not np.isfinite(row[coverage]) else f"{row[coverage]:.0%}"
        method = f"<br>{escape(row['method'])}" if several else ""
        figures.append(
            f"<figure title='{escape(row['path'])}'>{image}<figcaption>{name}{method}<br>"
            f"{escape(str(row['explained_label']))} &middot; {found}"
            f"<br>heat on it {share} &middot; spread {row['entropy']:.2f}</figcaption></figure>")
    return f"<div class='grid'>{''.join(figures)}</div>"
