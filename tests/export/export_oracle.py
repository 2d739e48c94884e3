"""Shared helpers of the export tests: run the exported model, compare it with framework autograd."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

GRADIENT_TOLERANCE = 1e-4  # max |onnx - autograd| / max |autograd|
HEATMAP_TOLERANCE = 1e-5  # the heatmap contract: all backends agree to 1e-5


def run_augmented(model, images: np.ndarray, target_class) -> dict[str, np.ndarray]:
    """Run an augmented model with ONNX Runtime (CPU); return its outputs by name."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    image_input = next(i.name for i in session.get_inputs() if i.name != "gradcam_target_class")
    feeds = {image_input: images.astype(np.float32), "gradcam_target_class": np.asarray(target_class, np.int64)}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| relative to max |expected|."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.abs(expected).max())
    assert scale > 0, "the oracle is all zeros: the comparison would prove nothing"
    return float(np.abs(actual - expected).max()) / scale


def chosen_classes(logits: np.ndarray, target_class) -> np.ndarray:
    """The class each image is explained for: the requested one, or the top class for -1."""
    target_class = np.asarray(target_class)
    return np.where(target_class < 0, logits.argmax(axis=1), target_class)


def assert_matches_autograd(outputs: dict, activation: np.ndarray, gradient: np.ndarray, image_size) -> None:
    """Exported A and dScore/dA equal the framework's; the in-graph and NumPy heatmaps agree."""
    from onnx_gradcam.cam.reference import heatmaps

    assert outputs["gradcam_activation"].shape == activation.shape
    assert relative_error(outputs["gradcam_activation"], activation) <= GRADIENT_TOLERANCE
    assert relative_error(outputs["gradcam_gradient"], gradient) <= GRADIENT_TOLERANCE
    reference = heatmaps(outputs["gradcam_activation"], outputs["gradcam_gradient"], size=image_size)
    if "gradcam_heatmap" in outputs:
        np.testing.assert_allclose(outputs["gradcam_heatmap"], reference, rtol=0, atol=HEATMAP_TOLERANCE)
    from_framework = heatmaps(activation, gradient, size=image_size)
    np.testing.assert_allclose(reference, from_framework, rtol=0, atol=1e-3)


def exporter_noise(recwarn, capfd) -> list[str]:
    """What the exporters printed or warned: output, warnings raised inside torch, tracer warnings
    (raised in the traced model's code), the deprecation notice of the TorchScript exporter."""
    printed = [text for text in capfd.readouterr() if text]
    warned = [f"{w.category.__name__}: {w.message}" for w in recwarn if _from_exporter(w)]
    return printed + warned


def _from_exporter(warning) -> bool:
    path = Path(warning.filename).as_posix()
    inside_torch = "/torch/" in path and "/keras/" not in path  # keras' own torch backend is not torch
    return inside_torch or warning.category.__name__ == "TracerWarning" or "ONNX export" in str(warning.message)
