"""Augmenting with a gradient seed (any objective linear in one output) and with several targets.

Oracle: PyTorch autograd on the same weights (torch.onnx.export of the same module); pytorch-grad-cam
for the in-graph heatmap of several target layers.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from onnx_gradcam import augment
from onnx_gradcam.errors import TargetNotFoundError
from onnx_gradcam.graph.augment import ACTIVATION, GRADIENT, HEATMAP, SCORE, SEED, TARGET_CLASS
from tests.export_helpers import TwoLayerClassifier, export

TOLERANCE = 1e-4


class Segmenter(nn.Module):
    """conv -> relu -> conv -> relu (the target) -> 1x1 conv: per-pixel logits [N, 4, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(self.stem(x)))


def relu_outputs(model: onnx.ModelProto) -> list[str]:
    return [node.output[0] for node in model.graph.node if node.op_type == "Relu"]


def run(model: onnx.ModelProto, feeds: dict, outputs: list[str]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def autograd(module: nn.Module, layers: list[nn.Module], images: np.ndarray, objective) -> list[np.ndarray]:
    """Activations' gradients of objective(output) by torch autograd, in float64."""
    module = module.double().eval()
    kept = []

    def keep(_module, _inputs, output: torch.Tensor) -> None:
        output.retain_grad()
        kept.append(output)

    hooks = [layer.register_forward_hook(keep) for layer in layers]
    try:
        objective(module(torch.from_numpy(images).double())).backward()
    finally:
        for hook in hooks:
            hook.remove()
        module.float()
    return [tensor.grad.numpy() for tensor in kept]


@pytest.mark.parametrize("height, width", [(16, 16), (12, 20)])
def test_seeded_gradient_equals_autograd_of_the_seeded_sum(height, width):
    torch.manual_seed(0)
    module = Segmenter().eval()
    plain = export(module, (1, 3, 16, 16), dynamic_size=True)
    target = relu_outputs(plain)[-1]
    augmented = augment(plain, target=target, score="output", seed=True)
    inputs = {value.name for value in augmented.graph.input}
    assert SEED in inputs and TARGET_CLASS not in inputs
    rng = np.random.default_rng(height + width)
    images = rng.standard_normal((2, 3, height, width)).astype(np.float32)
    seed = rng.standard_normal((2, 4, height, width)).astype(np.float32)
    activation, gradient, score, output = run(augmented, {"images": images, SEED: seed},
                                              [ACTIVATION, GRADIENT, SCORE, "output"])
    (expected,) = autograd(module, [module.body], images,
                           lambda out: (out * torch.from_numpy(seed).double()).sum())
    assert gradient.shape == activation.shape == (2, 12, height, width)
    assert np.abs(gradient - expected).max() <= TOLERANCE * np.abs(expected).max()
    np.testing.assert_allclose(score, (seed * output).reshape(2, -1).sum(1), rtol=1e-5, atol=1e-5)


def test_seed_with_auto_score_uses_the_only_output():
    torch.manual_seed(1)
    plain = export(Segmenter().eval(), (1, 3, 16, 16))
    augmented = augment(plain, target=relu_outputs(plain)[-1], seed=True)
    metadata = {p.key: p.value for p in augmented.metadata_props}
    assert metadata["gradcam_score"] == "output" and metadata["gradcam_seed"] == "true"


def test_several_targets_expose_each_gradient_and_the_mean_heatmap_of_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(2)
    module = TwoLayerClassifier().eval()
    plain = export(module, (1, 3, 16, 16))
    targets = relu_outputs(plain)
    augmented = augment(plain, target=targets, heatmap=True)
    images = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    classes = np.array([1, 3], np.int64)
    names = [GRADIENT, GRADIENT + "_1", ACTIVATION + "_1", HEATMAP]
    gradient_0, gradient_1, activation_1, heatmap = run(augmented, {"images": images, TARGET_CLASS: classes}, names)
    assert activation_1.shape == (2, 16, 8, 8)
    for image in range(2):
        expected = autograd(module, [module.first, module.second], images[image:image + 1],
                            lambda out: out[0, classes[image]])
        for actual, wanted in zip((gradient_0[image], gradient_1[image]), expected):
            assert np.abs(actual - wanted[0]).max() <= TOLERANCE * np.abs(wanted).max()
    with GradCAM(model=module, target_layers=[module.first, module.second]) as cam:
        oracle = cam(input_tensor=torch.from_numpy(images), targets=[ClassifierOutputTarget(int(c)) for c in classes])
    np.testing.assert_allclose(heatmap, oracle, atol=1e-5)


def test_a_list_of_targets_cannot_contain_auto():
    plain = export(TwoLayerClassifier().eval(), (1, 3, 16, 16))
    with pytest.raises(TargetNotFoundError, match="list of tensor names"):
        augment(plain, target=["auto", relu_outputs(plain)[0]])


def test_a_score_output_named_like_a_keyword_is_taken_by_its_name():
    torch.manual_seed(4)
    module = Segmenter().eval()
    plain = export(module, (1, 3, 16, 16), output="logits")
    augmented = augment(plain, target=relu_outputs(plain)[-1], score="logits", seed=True)
    assert {p.key: p.value for p in augmented.metadata_props}["gradcam_score"] == "logits"


def test_auto_target_of_a_segmenter_is_its_last_feature_map():
    plain = export(Segmenter().eval(), (1, 3, 16, 16), dynamic_size=True)
    augmented = augment(plain, seed=True)
    assert {p.key: p.value for p in augmented.metadata_props}["gradcam_target"] == relu_outputs(plain)[-1]
