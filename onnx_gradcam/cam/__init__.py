"""Heatmap math: the NumPy reference of the contract (the CuPy fused path lives in cam.fused)."""
from __future__ import annotations

from onnx_gradcam.cam.reference import METHODS, channel_weights, heatmaps, normalize_method, raw_cam

__all__ = ["METHODS", "channel_weights", "heatmaps", "normalize_method", "raw_cam"]
