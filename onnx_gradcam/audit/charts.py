"""Small inline-SVG charts for the audit report: no JavaScript, no external files, readable offline."""
from __future__ import annotations

from html import escape
from typing import Optional, Sequence

import numpy as np

WIDTH, HEIGHT = 420, 220
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 44, 40, 26
BAR_COLOR = "#3b6fb6"
SERIES_COLORS = ("#3b6fb6", "#e08a2c", "#3a9a5b", "#c24d4d", "#8a63b8", "#6b6b6b")


def histogram(values: Sequence[float], title: str, x_label: str, bins: int = 20,
              value_range: tuple[float, float] = (0.0, 1.0)) -> str:
    """An SVG histogram of values over value_range (NaNs dropped)."""
    data = np.asarray([v for v in values if v is not None], dtype=np.float64)
    data = data[np.isfinite(data)]
    counts, edges = np.histogram(data, bins=bins, range=value_range)
    labels = [f"{edges[i]:.2g}" if i % max(1, bins // 5) == 0 else "" for i in range(bins)]
    return bars(labels, counts.tolist(), title, x_label, tick_every=1, last_tick=f"{edges[-1]:.2g}")


def grouped_histogram(series: dict[str, Sequence[float]], title: str, x_label: str, bins: int = 12,
                      value_range: tuple[float, float] = (0.0, 1.0)) -> str:
    """An SVG histogram of several series over the same bins, side by side in each bin, with a legend."""
    names = list(series)
    counts = []
    for name in names:
        data = np.asarray([v for v in series[name] if v is not None], dtype=np.float64)
        counts.append(np.histogram(data[np.isfinite(data)], bins=bins, range=value_range)[0])
    edges = np.linspace(*value_range, bins + 1)
    plot_width, plot_height = WIDTH - MARGIN_LEFT - 10, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    top = 1.15 * max([float(c.max()) for c in counts if c.size] + [1.0])  # room for the legend above the bars
    slot = plot_width / bins
    width = max(1.0, (slot - 2) / max(1, len(names)))
    parts = [_open(title), _text(WIDTH / 2, 16, title, size=13, anchor="middle", weight="bold")]
    for fraction in (0, 0.5, 1):
        y = MARGIN_TOP + plot_height * (1 - fraction)
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(_text(MARGIN_LEFT - 4, y + 4, f"{top * fraction:.0f}", anchor="end"))
    for which, (name, values) in enumerate(zip(names, counts)):
        color = SERIES_COLORS[which % len(SERIES_COLORS)]
        for index, count in enumerate(values):
            height = plot_height * count / top
            x = MARGIN_LEFT + index * slot + 1 + which * width
            parts.append(f'<rect x="{x:.1f}" y="{MARGIN_TOP + plot_height - height:.1f}" width="{width:.1f}" '
                         f'height="{height:.1f}" fill="{color}"><title>{escape(name)} '
                         f'[{edges[index]:.3g}, {edges[index + 1]:.3g}): {int(count)}</title></rect>')
        legend_x = MARGIN_LEFT + 6 + which * (plot_width / max(1, len(names)))
        parts.append(f'<rect x="{legend_x:.1f}" y="{MARGIN_TOP + 2:.1f}" width="8" height="8" fill="{color}"/>')
        parts.append(_text(legend_x + 11, MARGIN_TOP + 10, name[:18]))
    for index in range(0, bins + 1, max(1, bins // 4)):
        parts.append(_text(MARGIN_LEFT + index * slot, HEIGHT - MARGIN_BOTTOM + 14, f"{edges[index]:.2g}",
                           anchor="middle"))
    parts.append(_text(MARGIN_LEFT + plot_width / 2, HEIGHT - 8, x_label, anchor="middle"))
    parts.append("</svg>")
    return "".join(parts)


def value_range(values: Sequence[float]) -> tuple[float, float]:
    """A histogram range that holds the finite values (0 to 1 when there are none; widened when all equal)."""
    data = np.asarray([v for v in values if v is not None], dtype=np.float64)
    data = data[np.isfinite(data)]
    if not data.size:
        return 0.0, 1.0
    low, high = float(data.min()), float(data.max())
    if high - low < 1e-9:
        return low - 0.5, high + 0.5
    return low, high


def bars(labels: Sequence[str], counts: Sequence[float], title: str, x_label: str = "",
         tick_every: int = 1, last_tick: Optional[str] = None, y_max: Optional[float] = None,
         value_format: str = "{:g}") -> str:
    """An SVG bar chart: one bar per label, the y axis from 0 to y_max (default: the largest count)."""
    plot_width, plot_height = WIDTH - MARGIN_LEFT - 10, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    top = y_max if y_max is not None else max([float(c) for c in counts] + [1.0])
    slot = plot_width / max(1, len(counts))
    parts = [_open(title), _text(WIDTH / 2, 16, title, size=13, anchor="middle", weight="bold")]
    for fraction in (0, 0.5, 1):
        y = MARGIN_TOP + plot_height * (1 - fraction)
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(_text(MARGIN_LEFT - 4, y + 4, value_format.format(top * fraction), anchor="end"))
    for index, (label, count) in enumerate(zip(labels, counts)):
        height = plot_height * (float(count) / top if top else 0)
        x = MARGIN_LEFT + index * slot
        parts.append(f'<rect x="{x + 1:.1f}" y="{MARGIN_TOP + plot_height - height:.1f}" '
                     f'width="{max(1.0, slot - 2):.1f}" '
                     f'height="{height:.1f}" fill="{BAR_COLOR}"><title>{escape(str(label))}: '
                     f'{escape(value_format.format(count))}</title></rect>')
        if label and index % tick_every == 0:
            parts.append(_text(x + (slot / 2 if last_tick is None else 0), HEIGHT - MARGIN_BOTTOM + 14, str(label)[:12],
                               anchor="middle"))
    if last_tick is not None:
        parts.append(_text(MARGIN_LEFT + plot_width, HEIGHT - MARGIN_BOTTOM + 14, last_tick, anchor="middle"))
    parts.append(_text(MARGIN_LEFT + plot_width / 2, HEIGHT - 8, x_label, anchor="middle"))
    parts.append("</svg>")
    return "".join(parts)


def scatter_density(xs: Sequence[float], ys: Sequence[float], title: str, cells: int = 16) -> str:
    """An SVG grid shading how many points fall in each cell of the unit square (image coordinates)."""
    points = np.asarray([(x, y) for x, y in zip(xs, ys) if x is not None and y is not None], np.float64)
    points = points[np.isfinite(points).all(axis=1)] if len(points) else np.zeros((0, 2))
    counts, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=cells, range=[[0, 1], [0, 1]])
    side = HEIGHT - MARGIN_TOP - 10
    cell = side / cells
    left = (WIDTH - side) / 2
    peak = counts.max() or 1.0
    parts = [_open(title), _text(WIDTH / 2, 16, title, size=13, anchor="middle", weight="bold"),
             f'<rect x="{left:.1f}" y="{MARGIN_TOP}" width="{side:.1f}" height="{side:.1f}" '
             'fill="#f4f4f4" stroke="#999"/>']
    for row in range(cells):
        for column in range(cells):
            if counts[row, column]:
                shade = 0.15 + 0.85 * counts[row, column] / peak
                parts.append(f'<rect x="{left + column * cell:.1f}" y="{MARGIN_TOP + row * cell:.1f}" '
                             f'width="{cell:.1f}" height="{cell:.1f}" fill="{BAR_COLOR}" fill-opacity="{shade:.2f}">'
                             f'<title>{int(counts[row, column])}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def _open(title: str) -> str:
    return (f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
            f'height="{HEIGHT}" role="img" aria-label="{escape(title)}" font-family="sans-serif">')


def _text(x: float, y: float, text: str, size: int = 10, anchor: str = "start", weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="#333">{escape(text)}</text>')
