"""Error types a user can catch; each message names the problem and the way out."""
from __future__ import annotations


class GradCamError(Exception):
    """Base class of every error onnx-gradcam raises on purpose."""


class ModelLoadError(GradCamError):
    """The file is missing, corrupt, or not an ONNX model."""


class TargetNotFoundError(GradCamError):
    """The requested target tensor does not exist or cannot be used."""


class ScoreNotFoundError(GradCamError):
    """No class-score tensor could be located, or the target does not reach it."""


class UnsupportedOpError(GradCamError):
    """An op on the path from target to score has no differentiation rule."""


class NotAugmentedError(GradCamError):
    """A plain model was given where an augmented one is needed."""


class InputError(GradCamError, ValueError):
    """Images or arrays given to the explainer have the wrong shape, dtype or content."""


class ImageReadError(InputError):
    """An image file cannot be read or decoded."""


class ExportError(GradCamError):
    """A framework model cannot be exported with its target exposed."""


class OpsetTooLowError(UnsupportedOpError):
    """A rule needs ops of a newer opset than the model's; augment converts the model and retries."""

    def __init__(self, message: str, needed: int) -> None:
        super().__init__(message)
        self.needed = needed
