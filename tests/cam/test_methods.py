"""The method registry: a registered method reaches every reader, kernel ids equal the CUDA enum, and the
eigen methods equal pytorch-grad-cam's (up to the SVD's sign).

Oracles: a NumPy/OpenCV computation of a throwaway method's heatmap, the enum parsed from
kernels/gradcam_math.cuh, pytorch-grad-cam's EigenCAM/EigenGradCAM with torch.interpolate for the
negated map, and a rank-one activation whose principal component is known.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import EigenCAM, EigenGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

import onnx_gradcam
from onnx_gradcam.cam import fused, raw_cam
from onnx_gradcam.cam.methods import (Family, Method, cam_method, get_method, method_names, normalize_method,
                                      register, registered_methods, unregister)
from onnx_gradcam.cli import build_parser
from onnx_gradcam.demo import demo_model_path, load_digits
from onnx_gradcam.errors import GradCamError, InputError
from onnx_gradcam.graph.augment import ACTIVATION, CLASS, GRADIENT, INPUT_GRADIENT, LOGITS, SCORE

HEADER = Path(__file__).resolve().parents[2] / "kernels" / "gradcam_math.cuh"


@pytest.fixture
def max_gradcam():
    """A throwaway channel-weight method (w_k = max_ij G), removed again after the test."""
    entry = cam_method("max_gradcam", aliases=("maxgradcam-test",))(lambda activation, gradient:
                                                                    gradient.max(axis=(2, 3)))
    try:
        yield entry
    finally:
        unregister(entry.name)


def _method_choices(parser, command: str) -> list[str]:
    subcommands = next(action for action in parser._actions if action.dest == "command")
    return next(action for action in subcommands.choices[command]._actions if action.dest == "method").choices


def _min_max(cam: np.ndarray) -> np.ndarray:
    low, high = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
    return (cam - low) / (high - low + np.float32(1e-7))


def test_a_registered_channel_weight_method_reaches_every_reader(max_gradcam):
    assert normalize_method("Max-GradCAM") == normalize_method("MAXGRADCAM_TEST") == "max_gradcam"
    assert "max_gradcam" in method_names(Family.CAM) and "max_gradcam" not in onnx_gradcam.METHODS  # a snapshot
    parser = build_parser()
    assert "max_gradcam" in _method_choices(parser, "explain") and "max_gradcam" in _method_choices(parser, "audit")
    assert "max_gradcam" not in fused.kernel_ids()  # no kernel case: CUDA computes its map with NumPy

    images = list(load_digits()[0][:6])
    explanation = onnx_gradcam.Explainer(demo_model_path(), method="max-gradcam").explain(images, keep_tensors=True)
    assert explanation.method == "max_gradcam"
    activation, gradient = explanation.activation, explanation.gradient
    cam = np.maximum(np.einsum("nk,nkhw->nhw", gradient.max(axis=(2, 3)), activation), 0)
    resized = np.stack([cv2.resize(image, (28, 28), interpolation=cv2.INTER_LINEAR) for image in _min_max(cam)])
    np.testing.assert_allclose(explanation.heatmaps, _min_max(resized), rtol=0, atol=1e-5)


def test_a_kernel_id_without_a_case_is_refused_in_python_not_by_the_cuda_compiler():
    pytest.importorskip("cupy", reason="cam.fused needs CuPy")
    entry = cam_method("no_such_case", kernel_id=max(fused.kernel_cases().values()) + 1)(
        lambda activation, gradient: gradient.mean(axis=(2, 3)))
    try:
        with pytest.raises(InputError, match="no case for; .*kernel_id=None"):
            fused.heatmaps(None, None, entry.name)
    finally:
        unregister(entry.name)


def test_unregister_removes_the_name_and_its_aliases():
    cam_method("throwaway_map", kind="map", outputs=(ACTIVATION,))(lambda activation, gradient: activation[:, 0])
    assert unregister("Throwaway-Map").name == "throwaway_map"
    for name in ("throwaway_map", "throwawaymap"):
        with pytest.raises(InputError, match="unknown method"):
            get_method(name)


def test_registry_kernel_ids_equal_the_header_enum():
    enum = {name: int(value) for name, value in re.findall(r"GRADCAM_METHOD_(\w+) = (\d+)", HEADER.read_text())}
    assert enum, "no GRADCAM_METHOD_* enum in the header"
    for name, value in enum.items():
        assert get_method(name.replace("_PP", "++")).kernel_id == value, name
    with_kernel = [entry for entry in registered_methods() if entry.kernel_id is not None]
    assert sorted(entry.kernel_id for entry in with_kernel) == sorted(enum.values())
    assert fused.MAP_KERNEL_ID == enum["HIRESCAM"]  # sum_k G_k A_k with K = 1 and G = 1 is the map itself


@pytest.mark.parametrize("method, message", [
    (Method("gradcam", Family.CAM, (ACTIVATION, GRADIENT), channel_weights=np.mean), "clashes"),
    (Method("fresh", Family.CAM, (ACTIVATION, GRADIENT), aliases=("Grad-CAM++",), channel_weights=np.mean),
     "clashes"),
    (Method("fresh", Family.CAM, (ACTIVATION, GRADIENT), kernel_id=0, channel_weights=np.mean), "kernel id 0"),
    (Method("fresh", Family.CAM, (ACTIVATION,), kernel_id=9, cam_map=np.mean), "kernel_id None"),
    (Method("fresh", Family.CAM, (ACTIVATION, GRADIENT)), "exactly one"),
    (Method("fresh", Family.CAM, (ACTIVATION, GRADIENT), options={"k": 1}, channel_weights=np.mean), "options"),
    (Method("fresh", Family.CAM, (GRADIENT,), channel_weights=np.mean), ACTIVATION),
    (Method("fresh", Family.CAM, (ACTIVATION, "logits"), channel_weights=np.mean), "augmented-model outputs"),
    (Method("fresh", Family.INPUT_GRADIENT, (INPUT_GRADIENT,)), "attribute, or sample and combine"),
    (Method("fresh", Family.INPUT_GRADIENT, (ACTIVATION,), attribute=np.mean), f"reads {INPUT_GRADIENT} or"),
    (Method("fresh", Family.GRADIENT_FREE, (ACTIVATION,)), "forward"),
], ids=["name", "alias", "kernel_id_taken", "map_with_kernel", "no_hook", "cam_options", "no_activation",
        "unknown_output", "input_no_hook", "input_no_gradient", "gradient_free_forward"])
def test_register_refuses_an_inconsistent_entry(method, message):
    before = method_names()
    with pytest.raises(GradCamError, match=re.escape(message)):
        register(method)
    assert method_names() == before


def test_a_gradient_free_method_registers_and_runs_through_the_explainer():
    register(Method("zero_cam", Family.GRADIENT_FREE, (ACTIVATION,), options={"batch_size": 32}, forward="head",
                    run=lambda context: context.xp.zeros(context.activation.shape[:2], "float32")))
    try:
        assert "zero_cam" in _method_choices(build_parser(), "explain")
        explanation = onnx_gradcam.Explainer(demo_model_path()).explain(list(load_digits()[0][:1]), method="zero_cam")
        assert explanation.heatmaps.shape == (1, 28, 28) and not explanation.heatmaps.any()  # zeros, never NaN
    finally:
        unregister("zero_cam")


def test_options_default_to_the_registry():
    smoothgrad = get_method("smoothgrad")
    assert smoothgrad.resolve_options(samples=None, noise_level=0.3, steps=7) == {
        "samples": 16, "noise_level": 0.3, "seed": 0}
    assert smoothgrad.augment_flags == {"input_gradient": True}
    assert get_method("guided_gradcam").augment_flags == {"guided": True}
    assert get_method("eigencam").augment_flags == {} and not get_method("eigencam").uses_gradient


# ---------------------------------------------------------------- eigencam, eigengradcam

def test_eigencam_sign_makes_the_mean_activation_project_positively():
    """A rank-one activation A_k = f_k M: its principal component is f, the map M - mean(M), hot where M is."""
    rng = np.random.default_rng(0)
    pattern = rng.random((2, 6, 5), dtype=np.float32)
    factors = rng.random((2, 9), dtype=np.float32) + 0.1
    activation = factors[:, :, None, None] * pattern[:, None]
    expected = (pattern - pattern.mean(axis=(1, 2), keepdims=True)) * np.linalg.norm(factors, axis=1)[:, None, None]
    np.testing.assert_allclose(raw_cam(activation, None, "eigencam"), expected, rtol=0, atol=1e-5)
    # The product -2 A has mean row -2 mean(M) f, so the component turns to -f with it: negating the input
    # leaves the map as it was (only its scale, |-2|, shows).
    gradient = np.full_like(activation, -2.0)
    np.testing.assert_allclose(raw_cam(activation, gradient, "eigengradcam"), 2 * expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_raw_eigen_maps_equal_pytorch_grad_cam_get_2d_projection_up_to_sign(method):
    rng = np.random.default_rng(3)
    activation = np.maximum(rng.standard_normal((4, 12, 6, 5), dtype=np.float32), 0)
    gradient = rng.standard_normal(activation.shape, dtype=np.float32)
    peer = get_2d_projection(activation if method == "eigencam" else activation * gradient)
    ours = raw_cam(activation, gradient, method)
    for image in range(4):
        sign = 1 if np.abs(ours[image] - peer[image]).max() < np.abs(ours[image] + peer[image]).max() else -1
        np.testing.assert_allclose(ours[image], sign * peer[image], rtol=0, atol=1e-5 * np.abs(peer[image]).max())


@pytest.fixture(scope="module")
def resnet18_case(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("resnet18") / "resnet18.onnx"
    torch.onnx.export(model, (images,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return model, images, onnx_gradcam.Explainer(onnx_gradcam.augment(path))


def _torch_contract(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """ReLU, min-max, bilinear resize (half-pixel), min-max: the contract in torch ops."""
    def min_max(values):
        low, high = values.amin(dim=(1, 2), keepdim=True), values.amax(dim=(1, 2), keepdim=True)
        return (values - low) / (high - low + 1e-7)
    resized = F.interpolate(min_max(torch.relu(cam))[:, None], size=size, mode="bilinear", align_corners=False)
    return min_max(resized[:, 0]).numpy()


@pytest.mark.parametrize("method, peer_class", [("eigencam", EigenCAM), ("eigengradcam", EigenGradCAM)])
def test_resnet18_eigen_heatmaps_equal_pytorch_grad_cam_up_to_sign(resnet18_case, method, peer_class):
    model, images, explainer = resnet18_case
    ours = explainer.explain(images.numpy(), target_class=[-1, 7, -1], method=method)
    with peer_class(model, [model.layer4[-1]]) as peer:
        expected = peer(images, [ClassifierOutputTarget(int(c)) for c in ours.classes])
        activation = peer.activations_and_grads.activations[0].numpy()
        gradient = peer.activations_and_grads.gradients[0].numpy()
    negated = _torch_contract(-torch.from_numpy(get_2d_projection(
        activation if method == "eigencam" else activation * gradient)), (224, 224))
    assert ours.heatmaps.shape == expected.shape == (3, 224, 224)
    for image in range(3):
        closest = min(expected[image], negated[image],
                      key=lambda peer_map: np.abs(ours.heatmaps[image] - peer_map).max())
        np.testing.assert_allclose(ours.heatmaps[image], closest, rtol=0, atol=1e-4)


def test_eigencam_runs_without_the_gradient(resnet18_case):
    _, images, explainer = resnet18_case
    explanation = explainer.explain(images.numpy()[:1], method="eigencam", keep_tensors=True)
    assert explanation.gradient is None and explanation.activation.shape == (1, 512, 7, 7)
    assert frozenset([ACTIVATION, CLASS, SCORE, LOGITS]) in explainer._sessions  # pruned: forward pass only
