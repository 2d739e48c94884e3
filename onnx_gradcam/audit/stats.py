"""Per-heatmap statistics for the audit records: where the heat peaks, where it sits, how spread it is."""
from __future__ import annotations

import numpy as np

STAT_COLUMNS = ("peak_x", "peak_y", "centroid_x", "centroid_y", "area_above_half", "heat_above_half", "entropy")


def heatmap_stats(heatmaps: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of [N,H,W] heatmaps in [0,1], each an [N] float array; positions are fractions of W and H.

    peak_x/peak_y: centre of the hottest pixel (first one on ties). centroid_x/centroid_y: heat-weighted
    mean position (NaN for an all-zero map). area_above_half: share of pixels with heat > 0.5.
    heat_above_half: share of the total heat that lies in those pixels. entropy: Shannon entropy of the
    heat as a distribution over pixels divided by log(H*W): 0 = all heat in one pixel, 1 = spread evenly
    (an all-zero map counts as 1: nothing stands out).
    """
    heat = np.asarray(heatmaps, dtype=np.float64)
    if heat.ndim != 3:
        raise ValueError(f"heatmaps must be [N,H,W], got shape {heat.shape}")
    count, height, width = heat.shape
    flat = np.clip(heat.reshape(count, -1), 0, None)
    peak = flat.argmax(axis=1) if flat.size else np.zeros(count, np.int64)
    total = flat.sum(axis=1)
    safe_total = np.where(total > 0, total, 1.0)
    xs = (np.arange(width) + 0.5) / width
    ys = (np.arange(height) + 0.5) / height
    clipped = flat.reshape(count, height, width)
    rows, columns = clipped.sum(axis=2), clipped.sum(axis=1)
    centroid_x = np.where(total > 0, (columns * xs).sum(axis=1) / safe_total, np.nan)
    centroid_y = np.where(total > 0, (rows * ys).sum(axis=1) / safe_total, np.nan)
    hot = flat > 0.5
    probability = flat / safe_total[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probability > 0, probability * np.log(probability), 0.0)
    pixels = height * width
    entropy = -plogp.sum(axis=1) / np.log(pixels) if pixels > 1 else np.zeros(count)
    entropy = np.where(total > 0, entropy, 1.0)
    return {
        "peak_x": (peak % width + 0.5) / width,
        "peak_y": (peak // width + 0.5) / height,
        "centroid_x": centroid_x,
        "centroid_y": centroid_y,
        "area_above_half": hot.mean(axis=1),
        "heat_above_half": np.where(total > 0, (flat * hot).sum(axis=1) / safe_total, 0.0),
        "entropy": np.clip(entropy, 0.0, 1.0),
    }
