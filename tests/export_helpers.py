"""Small torch models and their plain torch.onnx.export (TorchScript), shared by tests of several packages."""
from __future__ import annotations

import io

import onnx
import torch
from torch import nn


class TwoLayerClassifier(nn.Module):
    """Conv -> ReLU -> strided Conv -> ReLU -> spatial mean -> Linear: 5 logits, two layers to explain."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.second = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.second(self.first(x)).mean((2, 3)))


def export(module: nn.Module, shape: tuple[int, ...], dynamic_size: bool = False,
           output: str = "output") -> onnx.ModelProto:
    """The module exported at opset 17 from zeros of shape: input "images" with a dynamic batch (and height and
    width with dynamic_size), one output named output with a dynamic batch."""
    buffer = io.BytesIO()
    image_axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    torch.onnx.export(module, torch.zeros(shape), buffer, input_names=["images"], output_names=[output],
                      dynamic_axes={"images": image_axes, output: {0: "batch"}}, opset_version=17, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())
