"""Gradients to the input through whole torchvision CNNs, and the input-gradient methods vs Captum.

Oracle: PyTorch autograd in float64 on the same weights. A float32 forward pass through a deep CNN
has near-ties (max-pool windows whose two largest values differ in the last bits, pre-activations
within rounding of zero) that two correct float32 implementations may decide differently; on such
an input PyTorch's own float32 gradient differs from float64 by ~1% of its maximum (measured: for
seeds 1-6 of this file's image, 2-3 of 6 per model, for PyTorch and ONNX Runtime alike, on different
seeds). The seeded image below is one that has no such near-tie in ONNX Runtime's forward pass; on it
ONNX Runtime's gradient matches float64 autograd to ~1e-6, held here to 1e-4.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torchvision
from captum.attr import GuidedBackprop, IntegratedGradients, Saliency

import onnx_gradcam
from onnx_gradcam.graph.augment import INPUT_GRADIENT
from onnx_gradcam.graph.prune import keep_outputs

MODELS = {
    "resnet18": torchvision.models.resnet18,
    "vgg16": torchvision.models.vgg16,
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "densenet121": torchvision.models.densenet121,
}


def _export(model: torch.nn.Module, images: torch.Tensor, path) -> None:
    torch.onnx.export(model, (images,), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def _autograd_input_gradient(model: torch.nn.Module, images: torch.Tensor, classes) -> np.ndarray:
    inputs = images.clone().requires_grad_(True)
    logits = model(inputs)
    logits.gather(1, torch.as_tensor(classes)[:, None]).sum().backward()
    return inputs.grad.numpy()


def _relative_error(ours: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_input_gradient_equals_autograd(name, tmp_path):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    _export(model, images, tmp_path / "model.onnx")
    explainer = onnx_gradcam.Explainer(onnx_gradcam.augment(tmp_path / "model.onnx", input_gradient=True))
    explained = explainer.explain(images.numpy(), method="saliency")
    expected = _autograd_input_gradient(model.double(), images.double(), explained.classes)
    assert explained.attribution.shape == (1, 3, 224, 224)
    assert _relative_error(explained.attribution, expected) <= 1e-4
    summed = np.abs(expected).sum(axis=1)
    low, high = summed.min(axis=(1, 2), keepdims=True), summed.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(explained.heatmaps, (summed - low) / (high - low + 1e-7), atol=1e-4)


@pytest.fixture(scope="module")
def resnet18_case(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    path = tmp_path_factory.mktemp("resnet18") / "resnet18.onnx"
    _export(model, images, path)
    augmented = onnx_gradcam.augment(path, input_gradient=True, guided=True)
    return model.double(), images, onnx_gradcam.Explainer(augmented)


@pytest.mark.slow
def test_guided_backprop_equals_captum(resnet18_case):
    model, images, explainer = resnet18_case
    ours = explainer.explain(images.numpy(), method="guided_backprop")
    expected = GuidedBackprop(model).attribute(images.double(), target=torch.as_tensor(ours.classes)).numpy()
    assert _relative_error(ours.attribution, expected) <= 1e-4


@pytest.mark.slow
def test_integrated_gradients_equal_captum(resnet18_case):
    model, images, explainer = resnet18_case
    ours = explainer.explain(images.numpy(), method="integrated_gradients", steps=8)
    expected = IntegratedGradients(model).attribute(
        images.double(), baselines=0.0, target=torch.as_tensor(ours.classes), n_steps=8,
        method="gausslegendre").numpy()
    assert _relative_error(ours.attribution, expected) <= 1e-4
    # Completeness: attributions sum to score(image) - score(baseline).
    baseline_scores = explainer.explain(np.zeros_like(images.numpy()), target_class=ours.classes).scores
    total = ours.attribution.reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(total, ours.scores - baseline_scores, rtol=0.05)


@pytest.mark.slow
def test_smoothgrad_is_mean_absolute_gradient_of_the_same_noise(resnet18_case):
    model, images, explainer = resnet18_case
    ours = explainer.explain(images.numpy(), method="smoothgrad", samples=4, noise_level=0.1, seed=5)
    noisy = onnx_gradcam.cam.attribution.smoothgrad_inputs(images.numpy(), 4, 0.1, 5)
    classes = np.repeat(ours.classes, 4)
    per_sample = explainer.explain(noisy, target_class=classes, method="saliency").attribution
    np.testing.assert_allclose(ours.attribution, np.abs(per_sample).reshape(2, 4, 3, 96, 96).mean(axis=1),
                               rtol=1e-6, atol=1e-12)
    # Captum's NoiseTunnel draws its own noise, so the same noisy samples are compared one by one:
    # each against Captum's saliency in float64, or in float32 where the two precisions
    # disagree (a near-tie of the forward pass: on this seed one sample of eight on some CPUs).
    targets = torch.as_tensor(classes)
    expected64 = Saliency(model).attribute(torch.from_numpy(noisy).double(), target=targets, abs=True).numpy()
    model32 = copy.deepcopy(model).float()
    expected32 = Saliency(model32).attribute(torch.from_numpy(noisy), target=targets, abs=True).numpy()
    for sample, want64, want32 in zip(np.abs(per_sample), expected64, expected32):
        if _relative_error(sample, want64) > 1e-4:
            assert _relative_error(want32, want64) > 1e-4, "differs from float64 autograd without a near-tie"
            assert _relative_error(sample, want32) <= 1e-4


@pytest.mark.slow
def test_guided_gradcam_is_guided_backprop_times_gradcam(resnet18_case):
    _, images, explainer = resnet18_case
    guided = explainer.explain(images.numpy(), method="guided_backprop").attribution
    cam = explainer.explain(images.numpy(), method="gradcam").heatmaps
    ours = explainer.explain(images.numpy(), method="guided_gradcam")
    np.testing.assert_allclose(ours.attribution, guided * cam[:, None], rtol=1e-6, atol=1e-12)
    assert ours.heatmaps.shape == (2, 96, 96) and 0 <= ours.heatmaps.min() and ours.heatmaps.max() <= 1


def test_input_methods_need_an_input_gradient_model(tmp_path):
    model = torchvision.models.resnet18().eval()
    images = torch.randn(1, 3, 64, 64)
    _export(model, images, tmp_path / "model.onnx")
    explainer = onnx_gradcam.Explainer(onnx_gradcam.augment(tmp_path / "model.onnx"))
    with pytest.raises(onnx_gradcam.InputError, match="input_gradient=True"):
        explainer.explain(images.numpy(), method="saliency")
    with pytest.raises(onnx_gradcam.InputError, match="guided=True"):
        explainer.explain(images.numpy(), method="guided_gradcam")


def _optimized_ops(path, tmp_path) -> list[str]:
    """Op types of the graph ONNX Runtime's CPU provider runs after its optimizations."""
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node]


@pytest.mark.slow
def test_the_reverse_pass_stays_in_onnxruntimes_blocked_layout(tmp_path):
    """Layout conversions are what made the reverse pass slow: it may add one per strided Conv, not one per ReLU."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randn(1, 3, 64, 64)
    _export(model, images, tmp_path / "model.onnx")
    plain_ops = _optimized_ops(tmp_path / "model.onnx", tmp_path)
    if "ReorderInput" not in plain_ops and "ReorderOutput" not in plain_ops:
        pytest.skip("this CPU's ONNX Runtime has no blocked NCHWc layout (it needs AVX2 or AVX-512)")
    augmented = onnx_gradcam.augment(tmp_path / "model.onnx", input_gradient=True)
    saliency = keep_outputs(augmented, [INPUT_GRADIENT, "gradcam_class", "gradcam_score", "gradcam_logits"])
    onnx.save(saliency, tmp_path / "saliency.onnx")
    ops = _optimized_ops(tmp_path / "saliency.onnx", tmp_path)
    conversions = sum(op in ("ReorderInput", "ReorderOutput") for op in ops)
    plain_conversions = sum(op in ("ReorderInput", "ReorderOutput") for op in plain_ops)
    strided = ops.count("ConvTranspose")
    assert ops.count("Greater") == 0 and ops.count("Where") == 1  # ReLU masks are blocked convolutions;
    # the one Where picks the explained class
    assert conversions - plain_conversions <= 2 * strided + 2
