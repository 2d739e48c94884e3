"""Heatmap math: the method registry (cam.methods), the NumPy reference of the contract (cam.reference),
EigenCAM (cam.eigen), input-gradient methods (cam.attribution), Score-CAM and Ablation-CAM
(cam.gradient_free); the CuPy fused path lives in cam.fused."""
from __future__ import annotations

# Importing each module registers its methods; this order is the order the CLI and errors list them in.
from onnx_gradcam.cam.methods import Family, Method, get_method, method_names, normalize_method
from onnx_gradcam.cam.reference import channel_weights, heatmaps, raw_cam
from onnx_gradcam.cam import eigen, attribution  # noqa: F401  (registers eigencam, eigengradcam, input methods)
from onnx_gradcam.cam import gradient_free  # noqa: F401  (registers scorecam, ablationcam)

# Every CAM method (a map from the target activation), read from the registry once all built-ins are in.
METHODS: tuple[str, ...] = method_names(Family.CAM)

__all__ = ["METHODS", "Family", "Method", "channel_weights", "get_method", "heatmaps", "method_names",
           "normalize_method", "raw_cam"]
