"""Ultralytics' YOLOv8n with seeded random weights, built from its yaml (no download), made to give boxes.

Used by tests/test_ultralytics.py, benchmarks/detection.py and tools/make_docs_pictures.py. Ultralytics
(AGPL) is a test and benchmark oracle only, never imported by the package; import this module after
setting offline_environment() in os.environ.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

NECK = (15, 18, 21)  # the C2f modules whose outputs feed the Detect head (strides 8, 16, 32)
NECK_TENSORS = [f"/model.{index}/cv2/act/Mul_output_0" for index in NECK]  # their outputs in the ONNX export


def offline_environment(config_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Environment variables for Ultralytics without network, package installs or a settings file at home."""
    return {"YOLO_OFFLINE": "1",  # no update checks, hub calls or font downloads
            "YOLO_AUTOINSTALL": "false",  # never pip-install a missing requirement
            "YOLO_CONFIG_DIR": str(config_dir),  # settings.json is written here at import
            "YOLO_VERBOSE": "false"}


def model_input(images: np.ndarray) -> np.ndarray:
    """YOLO's preprocessing of uint8 RGB images [N, H, W, 3]: RGB / 255, NCHW float32."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32) / 255


def calibrate(model: torch.nn.Module, images: np.ndarray, class_bias: float = -3.5) -> None:
    """Give an untrained DetectionModel batch-norm statistics from images [N, 3, H, W] and spread class scores.

    At their initial statistics (mean 0, variance 1) the untrained network's activations shrink layer
    by layer until every box has the same score, 1.6e-4. Calibrated, the class logits spread over +-25
    (std 2); scaled by 1/4 with class_bias, the scores spread over (0, 1) without reaching 1.0 in
    float32, where boxes would tie.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: this batch's statistics
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(images))
        for branch in model.model[-1].cv3:
            branch[-1].weight.mul_(0.25)
            branch[-1].bias.fill_(class_bias)
    model.eval()


def random_yolov8n(calibration_images: np.ndarray, seed: int = 0, class_bias: float = -3.5):
    """Ultralytics' YOLO("yolov8n.yaml") with weights drawn from seed, calibrated on images [N, 3, H, W]."""
    from ultralytics import YOLO

    torch.manual_seed(seed)
    yolo = YOLO("yolov8n.yaml")
    calibrate(yolo.model, calibration_images, class_bias)
    return yolo


def export_onnx(yolo, path: str | os.PathLike[str], size: int, dynamic: bool) -> Path:
    """Export with Ultralytics' own exporter (TorchScript torch.onnx.export of the fused model) to path.

    The exporter writes <model name>.onnx in the working folder; it runs in path's folder and the file
    is renamed to path.
    """
    path = Path(path).resolve()
    before = Path.cwd()
    os.chdir(path.parent)
    try:
        written = Path(yolo.export(format="onnx", dynamic=dynamic, imgsz=size, simplify=False)).resolve()
    finally:
        os.chdir(before)
    return written.rename(path)
