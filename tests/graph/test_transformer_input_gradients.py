"""Gradients to the input through whole transformers and ConvNeXt, checked against float64 autograd.

Small seeded members of torchvision's ViT, Swin, ConvNeXt and MaxViT families, built from their
classes and exported with a plain torch.onnx.export, TorchScript and dynamo. The reverse pass runs
through patch embeddings, class tokens, position embeddings, LayerNorm, attention (MatMul, Einsum,
Softmax, relative position biases gathered by index), shifted-window rolls and masks, window
partitions (Reshape, Transpose, Pad), GELU, depthwise convolutions, squeeze-excitation and
BatchNorm. Unlike the CNNs of test_input_gradients.py, these models have no max-pooling and the
first four no ReLU, so float32 has no near-tie to decide differently from float64: ONNX Runtime's
float32 gradient matches float64 autograd to at most 1.1e-6 of each image's largest gradient
(measured on image seeds 1-8 for every model here, the ReLU MaxViT included), held to 1e-4.
Guided backpropagation differs from the plain gradient only at ReLUs, so it is checked on a MaxViT
built with ReLU activations, against Captum.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import GuidedBackprop
from torchvision.models.convnext import CNBlock, CNBlockConfig, ConvNeXt
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import SwinTransformer

import onnx_gradcam

TOLERANCE = 1e-4


def _vit() -> torch.nn.Module:
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10)
    # torchvision zero-initializes the head: every logit, hence every gradient, would be 0.
    torch.nn.init.normal_(model.heads.head.weight, std=0.2)
    return model


def _convnext() -> torch.nn.Module:
    model = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)
    # Layer scales of trained size: at their 1e-6 init each block's output equals its input.
    for module in model.modules():
        if isinstance(module, CNBlock):
            torch.nn.init.uniform_(module.layer_scale, 0.2, 1.0)
    return model


def _maxvit(activation=torch.nn.GELU) -> torch.nn.Module:
    # 64x64: the blocks attend over 16x16 and 8x8 maps in 4x4 windows and on a 4x4 grid.
    return MaxVit(input_size=(64, 64), stem_channels=8, partition_size=4, block_channels=[16, 32],
                  block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, activation_layer=activation,
                  num_classes=10)


# name -> (builder, image size)
MODELS = {
    "vit": (_vit, 32),
    # 8x8 tokens in 4x4 windows: the first stage's blocks alternate plain and shifted windows.
    "swin": (lambda: SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                     window_size=[4, 4], num_classes=10), 32),
    "convnext": (_convnext, 32),
    "maxvit": (_maxvit, 64),
}
EXPORTERS = ["torchscript", "dynamo"]


def _case(build, size: int):
    torch.manual_seed(0)
    model = build().eval()
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    return model, images


def _export(model: torch.nn.Module, images: torch.Tensor, path, exporter: str) -> None:
    common = {"input_names": ["input"], "output_names": ["logits"]}
    if exporter == "dynamo":
        torch.onnx.export(model, (images,), str(path), dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=512)},), **common)
    else:
        torch.onnx.export(model, (images,), str(path), dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **common)


def _relative_errors(ours: np.ndarray, expected: np.ndarray) -> list[float]:
    """Per image: the largest difference relative to the largest gradient of that image."""
    return [float(np.abs(a - e).max() / np.abs(e).max()) for a, e in zip(ours, expected)]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_input_gradient_equals_float64_autograd(name, exporter, tmp_path):
    model, images = _case(*MODELS[name])
    _export(model, images, tmp_path / "model.onnx", exporter)
    explainer = onnx_gradcam.Explainer(onnx_gradcam.augment(tmp_path / "model.onnx", input_gradient=True))
    explained = explainer.explain(images.numpy(), target_class=[-1, 3], method="saliency")
    assert explained.classes[1] == 3
    inputs = images.double().requires_grad_(True)
    model.double()(inputs).gather(1, torch.as_tensor(explained.classes)[:, None]).sum().backward()
    expected = inputs.grad.numpy()
    assert explained.attribution.shape == images.shape
    assert np.abs(expected).max(axis=(1, 2, 3)).min() > 0  # a zero gradient would pass vacuously
    assert max(_relative_errors(explained.attribution, expected)) <= TOLERANCE
    summed = np.abs(expected).sum(axis=1)
    low, high = summed.min(axis=(1, 2), keepdims=True), summed.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(explained.heatmaps, (summed - low) / (high - low + 1e-7), atol=TOLERANCE)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_guided_backprop_through_a_relu_maxvit_equals_captum(exporter, tmp_path):
    model, images = _case(lambda: _maxvit(torch.nn.ReLU), 64)
    _export(model, images, tmp_path / "model.onnx", exporter)
    augmented = onnx_gradcam.augment(tmp_path / "model.onnx", input_gradient=True, guided=True)
    explainer = onnx_gradcam.Explainer(augmented)
    guided = explainer.explain(images.numpy(), target_class=[-1, 3], method="guided_backprop")
    plain = explainer.explain(images.numpy(), target_class=guided.classes, method="saliency")
    expected = GuidedBackprop(model.double()).attribute(images.double(),
                                                        target=torch.as_tensor(guided.classes)).numpy()
    assert max(_relative_errors(guided.attribution, expected)) <= TOLERANCE
    # The ReLUs are on the path: guided and plain gradients must differ, or the check above says nothing.
    assert min(_relative_errors(plain.attribution, expected)) > 0.1
