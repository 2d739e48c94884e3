"""Heatmap statistics on maps whose answers are known by hand."""
from __future__ import annotations

import numpy as np
import pytest

from onnx_gradcam.audit.stats import STAT_COLUMNS, heatmap_stats


def test_single_hot_pixel():
    heat = np.zeros((1, 4, 8), np.float32)
    heat[0, 1, 6] = 1.0
    stats = heatmap_stats(heat)
    assert stats["peak_x"][0] == pytest.approx(6.5 / 8) and stats["peak_y"][0] == pytest.approx(1.5 / 4)
    assert stats["centroid_x"][0] == pytest.approx(6.5 / 8) and stats["centroid_y"][0] == pytest.approx(1.5 / 4)
    assert stats["area_above_half"][0] == pytest.approx(1 / 32)
    assert stats["heat_above_half"][0] == pytest.approx(1.0)
    assert stats["entropy"][0] == pytest.approx(0.0)


def test_uniform_map_is_fully_spread_and_centred():
    stats = heatmap_stats(np.full((1, 6, 6), 0.4, np.float32))
    assert stats["entropy"][0] == pytest.approx(1.0)
    assert stats["centroid_x"][0] == pytest.approx(0.5) and stats["centroid_y"][0] == pytest.approx(0.5)
    assert stats["area_above_half"][0] == 0 and stats["heat_above_half"][0] == 0


def test_two_levels_split_area_and_heat():
    heat = np.zeros((1, 2, 2), np.float32)
    heat[0, 0, :] = [1.0, 0.6]
    heat[0, 1, :] = [0.2, 0.2]
    stats = heatmap_stats(heat)
    assert stats["area_above_half"][0] == pytest.approx(0.5)
    assert stats["heat_above_half"][0] == pytest.approx(1.6 / 2.0)
    p = np.array([1.0, 0.6, 0.2, 0.2]) / 2.0
    assert stats["entropy"][0] == pytest.approx(-(p * np.log(p)).sum() / np.log(4))
    assert stats["centroid_y"][0] == pytest.approx((1.6 * 0.25 + 0.4 * 0.75) / 2.0)


def test_all_zero_map_has_no_centroid_and_counts_as_unfocused():
    stats = heatmap_stats(np.zeros((1, 3, 3), np.float32))
    assert np.isnan(stats["centroid_x"][0]) and np.isnan(stats["centroid_y"][0])
    assert stats["entropy"][0] == 1.0 and stats["heat_above_half"][0] == 0.0


def test_batch_rows_are_independent():
    rng = np.random.default_rng(0)
    heat = rng.random((5, 7, 9)).astype(np.float32)
    together = heatmap_stats(heat)
    for index in range(5):
        alone = heatmap_stats(heat[index:index + 1])
        for name in STAT_COLUMNS:
            assert together[name][index] == pytest.approx(alone[name][0])
