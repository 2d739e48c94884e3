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


def heat_in_boxes(heatmaps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of each [H,W] heatmap's total heat inside its x1, y1, x2, y2 box (heatmap pixels), an [M] array.

    A pixel is inside when its centre (x + 0.5, y + 0.5) lies within the box, edges included; the box may
    reach past the image. NaN for an all-zero map (no heat to place).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if np.ndim(heatmaps) != 3 or len(heatmaps) != len(boxes):
        raise ValueError(f"need heatmaps [M,H,W] and boxes [M,4], got {np.shape(heatmaps)} and {boxes.shape}")
    height, width = np.shape(heatmaps)[1:]
    # Pixel x is inside when x1 <= x + 0.5 <= x2: the columns ceil(x1 - 0.5) .. floor(x2 - 0.5), clipped.
    first = np.clip(np.ceil(boxes[:, :2] - 0.5), 0, None).astype(np.int64)
    last = np.minimum(np.floor(boxes[:, 2:] - 0.5), [width - 1, height - 1]).astype(np.int64)
    shares = np.empty(len(boxes))
    for index, heatmap in enumerate(heatmaps):  # one map at a time: a detect batch holds hundreds of them
        heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
        (left, top), (right, bottom) = first[index], last[index]
        inner = heat[top:bottom + 1, left:right + 1].sum() if right >= left and bottom >= top else 0.0
        shares[index] = _share(heat.sum(), inner)
    return shares


def heat_in_masks(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each [H,W] heatmap's total heat on the pixels of its bool mask [H,W], an [M] array (NaN for an
    all-zero map)."""
    if np.ndim(heatmaps) != 3 or np.shape(heatmaps) != np.shape(masks):
        raise ValueError(f"need heatmaps and masks of one [M,H,W] shape, got {np.shape(heatmaps)} and "
                         f"{np.shape(masks)}")
    shares = np.empty(len(heatmaps))
    for index, (heatmap, mask) in enumerate(zip(heatmaps, masks)):
        heat = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
        shares[index] = _share(heat.sum(), heat[np.asarray(mask, dtype=bool)].sum())
    return shares


def _share(total: float, inner: float) -> float:
    return inner / total if total > 0 else np.nan
