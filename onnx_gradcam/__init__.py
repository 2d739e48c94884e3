"""onnx-gradcam: Grad-CAM heatmaps for ONNX vision models (classifiers, detectors, segmenters, embeddings)."""
from ._version import __version__

from .errors import (ExportError, GradCamError, ImageReadError, InputError,  # noqa: E402
                     ModelLoadError, NotAugmentedError, ScoreNotFoundError, TargetNotFoundError,
                     UnsupportedOpError)
from .graph import TargetInfo, augment, list_targets  # noqa: E402
from .preprocess import Preprocess  # noqa: E402
from .render import overlay  # noqa: E402
from .explainer import Explainer, Explanation  # noqa: E402
from .cam import METHODS  # noqa: E402  (every CAM method, from the registry)
from . import detect, targets, tasks  # noqa: E402  (boxes, masks, embeddings: targets -> seeds, end to end)

__all__ = ["augment", "list_targets", "TargetInfo", "Explainer", "Explanation", "Preprocess", "overlay",
           "METHODS", "detect", "targets", "tasks",
           "GradCamError", "ImageReadError", "InputError", "ModelLoadError", "NotAugmentedError",
           "ScoreNotFoundError", "TargetNotFoundError", "UnsupportedOpError", "ExportError", "__version__"]


def __getattr__(name: str):
    # Framework exporters import torch/keras, so they load only when asked for.
    if name == "export_torch":
        from .export.torch import export_torch
        return export_torch
    if name == "export_keras":
        from .export.keras import export_keras
        return export_keras
    raise AttributeError(f"module 'onnx_gradcam' has no attribute {name!r}")
