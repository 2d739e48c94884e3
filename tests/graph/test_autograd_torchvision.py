"""Gradients of augmented torchvision / tutorial models equal PyTorch autograd at the same tensor.

Each model has seeded random weights and is exported with a plain torch.onnx.export call: it knows
nothing of onnx-gradcam. The augmented model picks its target with target="auto" and runs in the
Explainer; the oracle is autograd on the torch model at the tensor that "auto" should find.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import onnx_gradcam
from tools.build_demo_model import cifar_cnn, mnist_cnn


def _densenet_head(model: torch.nn.Module, images: torch.Tensor, keep: dict) -> torch.Tensor:
    # torchvision's DenseNet.forward with the final functional ReLU kept: that ReLU is the target.
    activation = F.relu(model.features(images))
    keep["activation"] = activation
    pooled = torch.flatten(F.adaptive_avg_pool2d(activation, (1, 1)), 1)
    return model.classifier(pooled)


# name -> (builder, input shape, module whose output is the expected target, or a custom forward)
MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(), (3, 224, 224), "layer4"),
    "resnet50": (lambda: torchvision.models.resnet50(), (3, 224, 224), "layer4"),
    "vgg16": (lambda: torchvision.models.vgg16(), (3, 224, 224), "avgpool"),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(), (3, 224, 224), "features"),
    "densenet121": (lambda: torchvision.models.densenet121(), (3, 224, 224), _densenet_head),
    "mnist_cnn": (mnist_cnn, (1, 28, 28), "pool2"),
    "cifar_cnn": (cifar_cnn, (3, 32, 32), "pool3"),
}
CASES = [(name, "torchscript") for name in MODELS] + [
    ("resnet18", "dynamo"), ("mobilenet_v3_small", "dynamo"), ("mnist_cnn", "dynamo")]


def _export(model: torch.nn.Module, images: torch.Tensor, path, exporter: str) -> None:
    common = dict(input_names=["input"], output_names=["logits"])
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=512)
        torch.onnx.export(model, (images,), str(path), dynamo=True,
                          dynamic_shapes=({0: batch},), **common)
    else:
        torch.onnx.export(model, (images,), str(path), dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **common)


def _autograd(model: torch.nn.Module, images: torch.Tensor, where, classes: np.ndarray):
    """Activation and d logit[class] / d activation at `where`, by autograd."""
    keep: dict = {}
    if callable(where):
        logits = where(model, images, keep)
    else:
        hook = dict(model.named_modules())[where].register_forward_hook(
            lambda module, inputs, output: keep.__setitem__("activation", output))
        logits = model(images)
        hook.remove()
    activation = keep["activation"]
    (gradient,) = torch.autograd.grad(logits.gather(1, torch.as_tensor(classes)[:, None]).sum(), activation)
    return activation.detach().numpy(), gradient.numpy(), logits.detach().numpy()


@pytest.mark.slow
@pytest.mark.parametrize("name, exporter", CASES)
def test_gradient_equals_autograd(name, exporter, tmp_path):
    build, shape, where = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    images = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    plain = tmp_path / f"{name}.onnx"
    _export(model, images[:2], plain, exporter)

    explainer = onnx_gradcam.Explainer(onnx_gradcam.augment(plain), batch_size=2)
    explained = explainer.explain(images.numpy(), target_class=[-1, 3, 7], keep_tensors=True)
    activation, gradient, logits = _autograd(model, images, where, explained.classes)

    assert explained.classes[0] == logits[0].argmax() and list(explained.classes[1:]) == [3, 7]
    np.testing.assert_allclose(explained.logits, logits, rtol=0, atol=1e-4 * np.abs(logits).max())
    np.testing.assert_allclose(explained.scores, logits[np.arange(3), explained.classes], rtol=1e-5, atol=1e-5)
    assert explained.activation.shape == activation.shape
    np.testing.assert_allclose(explained.activation, activation, rtol=0, atol=1e-4 * np.abs(activation).max())
    error = np.abs(explained.gradient - gradient).max() / np.abs(gradient).max()
    assert error <= 1e-4, f"max gradient error {error:.2e} of the gradient's max"
    assert explained.heatmaps.shape == (3, *shape[1:])
