"""The audit's HTML report: one self-contained file (inline SVG charts, base64 images) that works offline."""
from __future__ import annotations

import datetime
import os
from collections import Counter
from html import escape
from typing import Iterable, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from .._version import __version__
from ..metrics import METRICS, Metric
from . import charts
from .config import AuditConfig, AuditModel
from .gallery import LEAST_FAITHFUL, render_tiles, select_galleries
from .summary import AuditSummary
from .writers import write_bytes

MAX_ERROR_ROWS = 200
TOP_CLASSES = 20

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:13px}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:22px}.card span{color:#666;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{background:#fff;border:1px solid #ddd;border-radius:6px}
.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:164px;background:#fff;border:1px solid #ddd;border-radius:4px;padding:2px}
figure img{display:block;margin:auto;max-width:160px;max-height:160px}
figcaption{font-size:11px;line-height:1.3;word-break:break-all;padding:2px}
.missing{height:160px;display:flex;align-items:center;justify-content:center;color:#999;font-size:12px}
.bad{color:#b00}table{border-collapse:collapse;font-size:12px;background:#fff}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
"""

# Sets data-images-loaded on <body> to "all" once every <img> has decoded (naturalWidth > 0), "broken" if
# any failed: a headless browser (and the tests) read it from the DOM.
IMAGE_CHECK = """
(function(){
  function check(){
    var images = Array.prototype.slice.call(document.images);
    var done = images.filter(function(i){return i.complete;}).length;
    var good = images.filter(function(i){return i.complete && i.naturalWidth > 0;}).length;
    var body = document.body;
    body.setAttribute('data-images-total', images.length);
    body.setAttribute('data-images-ok', good);
    var state = done < images.length ? 'pending' : (good === images.length ? 'all' : 'broken');
    body.setAttribute('data-images-loaded', state);
  }
  Array.prototype.forEach.call(document.images, function(i){
    i.addEventListener('load', check); i.addEventListener('error', check);
  });
  window.addEventListener('load', check);
  check();
})();
"""


def write_report(path: os.PathLike, config: AuditConfig, model: AuditModel, table: pa.Table,
                 summary: AuditSummary) -> None:
    """Write the report for the records in table (galleries re-explained from the input files) to path."""
    if config.task != "classify":
        from .task_report import write_task_report

        return write_task_report(path, config, model, table, summary)
    metrics = [METRICS[name] for name in config.metrics]
    galleries = select_galleries(table, metric=metrics[0] if metrics else None)
    tiles = render_tiles([row for rows in galleries.values() for row in rows], config, model)
    write_bytes(path, render_html(table, summary, galleries, tiles, metrics).encode("utf-8"))


def page_head(title: str, summary: AuditSummary, methods: Sequence[str]) -> list[str]:
    """The HTML of a report up to and including its title and the run's method, version, time and folder."""
    return [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta name='viewport' content='width=device-width'><title>{escape(title)}</title>",
        f"<style>{STYLE}</style></head><body data-images-loaded='pending'>",
        f"<h1>{escape(title)}</h1>",
        f"<p class='meta'>method{'s' if len(methods) > 1 else ''} {escape(', '.join(methods))} &middot; "
        f"onnx-gradcam {__version__} &middot; "
        f"{datetime.datetime.now().isoformat(timespec='seconds')} &middot; {escape(summary.out_dir)}</p>",
    ]


def render_html(table: pa.Table, summary: AuditSummary, galleries: dict[str, list[dict]],
                tiles: dict[tuple[str, str], str], metrics: Sequence[Metric] = ()) -> str:
    """The report as one HTML string (metrics: those measured, the first one ranks the least faithful)."""
    title = f"Grad-CAM audit of {os.path.basename(summary.model)}"
    methods = summary.methods or [summary.method]
    parts = [
        *page_head(title, summary, methods),
        _cards(summary), "<h2>Summary</h2><div class='charts'>", *_charts(table), "</div>",
    ]
    if metrics:
        parts.extend(["<h2 id='faithfulness'>Faithfulness</h2>", _metric_table(summary, metrics),
                      "<div class='charts'>", *_metric_charts(table, metrics, methods), "</div>"])
    shown = [metric.column for metric in metrics]
    for name, rows in galleries.items():
        parts.append(f"<h2>{escape(name.capitalize())} ({len(rows)})</h2>")
        if name == LEAST_FAITHFUL and metrics:
            parts.append(f"<p class='meta'>the worst {escape(metrics[0].column)} first "
                         f"({_direction(metrics[0])})</p>")
        parts.append(_gallery(rows, tiles, methods, shown) if rows else "<p class='meta'>none</p>")
    parts.extend([_problems(table), f"<script>{IMAGE_CHECK}</script></body></html>"])
    return "\n".join(parts)


def _cards(summary: AuditSummary) -> str:
    several = len(summary.methods) > 1
    values = [("images", summary.inputs)] + ([("records (image x method)", summary.records)] if several else [])
    values += [("explained", summary.ok), ("failed", summary.errors), ("duplicates", summary.duplicates)]
    if summary.accuracy is not None:
        values.append((f"accuracy ({summary.labelled} labelled)", f"{summary.accuracy:.1%}"))
    return run_cards(values, summary)


def run_cards(values: list[tuple[str, object]], summary: AuditSummary) -> str:
    """Cards of (name, value) pairs, then this run's speed and runtime share."""
    if summary.images_per_second:
        values.append(("images/s this run", f"{summary.images_per_second:.1f}"))
    if summary.busy_share is not None:
        values.append(("runtime busy", f"{summary.busy_share:.0%}"))
    cards = "".join(f"<div class='card'><b>{escape(str(value))}</b><span>{escape(name)}</span></div>"
                    for name, value in values)
    return f"<div class='cards'>{cards}</div>"


def _charts(table: pa.Table) -> list[str]:
    ok = table.filter(pc.equal(table["status"], "ok"))
    # Predictions do not depend on the method: image-level charts count each image once (its first method).
    images = table.filter(pc.equal(table["method"], table["method"][0])) if table.num_rows else table
    images_ok = images.filter(pc.equal(images["status"], "ok"))
    column = lambda name: ok[name].to_pylist()  # noqa: E731
    status = Counter(images["status"].to_pylist())
    result = [
        charts.bars(["ok", "error", "duplicate"],
                    [status.get("ok", 0), status.get("error", 0), images.num_rows - images["duplicate_of"].null_count],
                    "Inputs by outcome"),
        charts.histogram(images_ok["probability"].to_pylist(), "Confidence (top-class probability)", "probability"),
        charts.histogram(column("entropy"), "Heatmap spread (normalized entropy)", "0 = one spot, 1 = everywhere"),
        charts.histogram(column("heat_above_half"), "Share of heat above 0.5", "share of total heat"),
        charts.scatter_density(column("peak_x"), column("peak_y"), "Where the heat peaks (image frame)"),
    ]
    predicted = Counter(images_ok["predicted_label"].to_pylist()).most_common(TOP_CLASSES)
    if predicted:
        result.append(charts.bars([name for name, _ in predicted], [count for _, count in predicted],
                                  f"Predicted classes (top {TOP_CLASSES})", "class"))
    accuracy = _accuracy_by_label(images_ok)
    if accuracy:
        result.append(charts.bars([name for name, _ in accuracy], [value for _, value in accuracy],
                                  "Accuracy by label", "label", y_max=1.0, value_format="{:.2f}"))
    return result


def _metric_table(summary: AuditSummary, metrics: Sequence[Metric]) -> str:
    """Per method, the mean of each metric over its explained records."""
    header = ["method"] + [f"{metric.column} ({_direction(metric)})" for metric in metrics]
    rows = [[method] + ["n/a" if means.get(m.column) is None else f"{means[m.column]:.4f}" for m in metrics]
            for method, means in summary.metrics.items()]
    notes = "".join(f"<li><b>{escape(m.column)}</b>: {escape(m.summary)}</li>" for m in metrics)
    return f"{_table(header, rows)}<ul class='meta'>{notes}</ul>"


def _metric_charts(table: pa.Table, metrics: Sequence[Metric], methods: Sequence[str]) -> list[str]:
    """A histogram per metric over the explained records; with several methods, one series per method."""
    ok = table.filter(pc.equal(table["status"], "ok"))
    result = []
    for metric in metrics:
        values = ok[metric.column].to_pylist()
        span = charts.value_range(values)
        title = f"{metric.column} ({_direction(metric)})"
        if len(methods) > 1:
            by_method = ok["method"].to_pylist()
            series = {method: [v for v, m in zip(values, by_method) if m == method] for method in methods}
            result.append(charts.grouped_histogram(series, title, "per record", value_range=span))
        else:
            result.append(charts.histogram(values, title, "per record", value_range=span))
    return result


def _direction(metric: Metric) -> str:
    return "higher is more faithful" if metric.higher_is_better else "lower is more faithful"


def _accuracy_by_label(ok: pa.Table) -> list[tuple[str, float]]:
    totals: Counter = Counter()
    right: Counter = Counter()
    for label, correct in zip(ok["label"].to_pylist(), ok["correct"].to_pylist()):
        if correct is not None:
            totals[label] += 1
            right[label] += bool(correct)
    worst = sorted(totals, key=lambda name: (right[name] / totals[name], name))[:TOP_CLASSES]
    return [(name, right[name] / totals[name]) for name in worst]


def _gallery(rows: list[dict], tiles: dict[tuple[str, str], str], methods: Sequence[str] = (),
             metric_columns: Sequence[str] = ()) -> str:
    figures = []
    for row in rows:
        method = row.get("method") or (methods[0] if methods else "")
        uri: Optional[str] = tiles.get((row["path"], method))
        name = escape(os.path.basename(row["path"]))
        image = (f"<img src='{uri}' alt='{name}' width='160' loading='eager'>" if uri
                 else "<div class='missing'>image no longer readable</div>")
        truth = ""
        if row.get("label") is not None:
            mark = {None: "", True: " ok", False: " <span class='bad'>wrong</span>"}[row.get("correct")]
            truth = f"<br>label {escape(str(row['label']))}{mark}"
        shown = " &middot; ".join(f"{escape(column)} {row[column]:.3f}" for column in metric_columns
                                  if row.get(column) is not None)
        figures.append(
            f"<figure title='{escape(row['path'])}'>{image}<figcaption>{name}"
            f"{f'<br>{escape(method)}' if len(methods) > 1 else ''}<br>"
            f"{escape(str(row['predicted_label']))} p={row['probability']:.3f}{truth}"
            f"<br>spread {row['entropy']:.2f} &middot; hot {row['heat_above_half']:.0%}"
            f"{f'<br>{shown}' if shown else ''}</figcaption></figure>")
    return f"<div class='grid'>{''.join(figures)}</div>"


def _problems(table: pa.Table) -> str:
    failed = table.filter(pc.equal(table["status"], "error"))
    duplicates = table.filter(pc.is_valid(table["duplicate_of"]))
    parts = [f"<h2>Failed inputs ({failed.num_rows})</h2>"]
    if failed.num_rows:
        kinds = Counter(reason.split(":")[0] for reason in failed["reason"].to_pylist())
        parts.append(_table(["reason", "inputs"], kinds.most_common()) + "<p></p>")
        rows = failed.slice(0, MAX_ERROR_ROWS).to_pylist()
        parts.append(_table(["path", "reason"], [(r["path"], r["reason"] or "") for r in rows]))
        if failed.num_rows > MAX_ERROR_ROWS:
            parts.append(f"<p class='meta'>first {MAX_ERROR_ROWS} shown; all are in records.parquet</p>")
    else:
        parts.append("<p class='meta'>none</p>")
    parts.append(f"<h2>Duplicate content ({duplicates.num_rows})</h2>")
    if duplicates.num_rows:
        rows = duplicates.slice(0, MAX_ERROR_ROWS).to_pylist()
        parts.append(_table(["path", "same bytes as"], [(r["path"], r["duplicate_of"]) for r in rows]))
    else:
        parts.append("<p class='meta'>none</p>")
    return "\n".join(parts)


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """An HTML table: the header row, then one row per item of rows; every cell escaped."""
    def cells(tag: str, values: Sequence) -> str:
        return "".join(f"<{tag}>{escape(str(value))}</{tag}>" for value in values)

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return f"<table><tr>{cells('th', header)}</tr>{body}</table>"
