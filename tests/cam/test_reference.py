"""The NumPy heatmap reference against pytorch-grad-cam, torch.interpolate and the contract's edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from onnx_gradcam.cam import METHODS, channel_weights, get_method, heatmaps, normalize_method, raw_cam
from onnx_gradcam.cam import reference
from onnx_gradcam.errors import InputError

PEER_CLASSES = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
}
PEER_GRADCAMPP_EPSILON = 1e-6  # pytorch_grad_cam/grad_cam_plusplus.py
TARGET_CLASSES = [0, 3, 7]
# (input H, W) -> (target layer h, w): an integer and a non-integer upsampling factor.
SHAPES = [((32, 32), (8, 8)), ((30, 45), (7, 7))]


def _classifier(layer_size: tuple[int, int], activation_gain: float) -> torch.nn.Sequential:
    """A seeded CNN whose target layer (index 4, the ReLU after the second conv) feeds a non-linear head."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(layer_size),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 12, 1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 10),
    ).eval()
    with torch.no_grad():
        model[3].weight.mul_(activation_gain)
        model[3].bias.mul_(activation_gain)
    return model


def _peer_run(method: str, image_size, layer_size, activation_gain: float):
    """Return (activation, gradient, heatmap) as pytorch-grad-cam computes them for a batch of 3."""
    model = _classifier(layer_size, activation_gain)
    torch.manual_seed(1)
    images = torch.randn(3, 3, *image_size)
    cam = PEER_CLASSES[method](model, [model[4]])
    peer_heatmap = cam(images, [ClassifierOutputTarget(c) for c in TARGET_CLASSES])
    activation = cam.activations_and_grads.activations[0].numpy()
    gradient = cam.activations_and_grads.gradients[0].numpy()
    cam.activations_and_grads.release()
    return activation, gradient, peer_heatmap


def _random_pair(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    activation = np.maximum(rng.standard_normal(shape), 0).astype(dtype)
    gradient = (rng.standard_normal(shape) * 1e-2).astype(dtype)
    return activation, gradient


# The contract normalizes before and after the resize, as pytorch-grad-cam does, so agreement does not
# depend on the CAM's scale: checked on the untouched model (raw ranges ~5e-4) and with activations
# boosted 3000x (ranges 0.02..3, gradients O(1e-3), like a trained classifier). The eigen methods, whose
# sign pytorch-grad-cam leaves to LAPACK, are compared in test_methods.py.
@pytest.mark.parametrize("gain", [1.0, 3000.0])
@pytest.mark.parametrize("image_size, layer_size", SHAPES)
@pytest.mark.parametrize("method", list(PEER_CLASSES))
def test_heatmaps_match_pytorch_grad_cam(method, image_size, layer_size, gain):
    activation, gradient, peer_heatmap = _peer_run(method, image_size, layer_size, activation_gain=gain)
    ours = heatmaps(activation, gradient, method, size=image_size)
    assert ours.shape == peer_heatmap.shape == (3, *image_size)
    np.testing.assert_allclose(ours, peer_heatmap, rtol=0, atol=1e-5)


def test_gradcampp_epsilon_is_the_peers():
    assert reference.GRADCAMPP_EPSILON == PEER_GRADCAMPP_EPSILON


def test_the_contract_table_is_the_peer_compared_methods_with_kernels():
    assert reference.METHODS == tuple(PEER_CLASSES)
    assert all(get_method(method).kernel_id is not None for method in PEER_CLASSES)


@pytest.mark.parametrize("method", list(PEER_CLASSES))
def test_raw_cam_and_weights_match_pytorch_grad_cam_get_cam_image(method):
    activation, gradient = _random_pair((2, 5, 6, 4))
    peer = PEER_CLASSES[method](_classifier((8, 8), 1.0), [])
    peer_cam = peer.get_cam_image(None, None, None, activation, gradient, eigen_smooth=False)
    np.testing.assert_allclose(raw_cam(activation, gradient, method), peer_cam, rtol=1e-5, atol=1e-9)
    weights = channel_weights(activation, gradient, method)
    if get_method(method).channel_weights is None:  # element-weight methods
        assert weights is None
    else:
        peer_weights = peer.get_cam_weights(None, None, None, activation, gradient)
        assert weights.shape == (2, 5) and weights.dtype == np.float32
        np.testing.assert_allclose(weights, peer_weights, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(
    "batch, layer_size, size",
    [(3, (7, 7), (30, 45)), (2, (8, 8), (32, 32)), (2, (16, 12), (5, 7)), (300, (4, 6), (13, 9))],
)
@pytest.mark.parametrize("method", METHODS)
def test_heatmaps_match_torch_interpolate_oracle(method, batch, layer_size, size):
    activation, gradient = _random_pair((batch, 6, *layer_size), seed=batch)
    cam = _torch_min_max(torch.relu(torch.from_numpy(raw_cam(activation, gradient, method))))
    resized = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    expected = _torch_min_max(resized).numpy()
    ours = heatmaps(activation, gradient, method, size=size)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert ours.min() >= 0 and ours.max() <= 1
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def _torch_min_max(cam: torch.Tensor) -> torch.Tensor:
    low = cam.amin(dim=(1, 2), keepdim=True)
    high = cam.amax(dim=(1, 2), keepdim=True)
    return (cam - low) / (high - low + 1e-7)


# Found by search: cv2.resize alone turns these all-equal maps into values a few ulp apart, which min-max
# would stretch into a [0, 1] pattern (torch.interpolate does the same to a 1x1 map).
@pytest.mark.parametrize(
    "batch, layer_size, size, value",
    [
        (3, (1, 7), (64, 11), 139.03249),
        (2, (17, 6), (23, 71), 2.6191232),
        (2, (16, 5), (48, 33), 164.39217),
        (2, (10, 14), (89, 8), 0.049819916),
        (1, (1, 1), (4, 4), 0.11),
    ],
)
def test_all_equal_map_gives_zeros(batch, layer_size, size, value):
    activation = np.full((batch, 1, *layer_size), value, np.float32)
    assert (heatmaps(activation, np.ones_like(activation), "hirescam", size=size) == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_size_none_keeps_layer_size(method):
    activation, gradient = _random_pair((2, 4, 5, 3))
    cam = np.maximum(raw_cam(activation, gradient, method), 0)
    low, high = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
    expected = (cam - low) / (high - low + 1e-7)
    np.testing.assert_allclose(heatmaps(activation, gradient, method), expected, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_float16_agrees_with_float32(method):
    activation, gradient = _random_pair((3, 16, 7, 7))
    half = heatmaps(activation.astype(np.float16), gradient.astype(np.float16), method, size=(30, 45))
    full = heatmaps(activation, gradient, method, size=(30, 45))
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, rtol=0, atol=1e-3)


def test_float64_is_cast_to_float32():
    activation, gradient = _random_pair((2, 3, 4, 4), dtype=np.float64)
    ours = heatmaps(activation, gradient, "gradcam++", size=(9, 9))
    expected = heatmaps(activation.astype(np.float32), gradient.astype(np.float32), "gradcam++", size=(9, 9))
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("method", [method for method in METHODS if get_method(method).uses_gradient])
def test_zero_gradient_gives_zero_heatmaps(method):
    activation, _ = _random_pair((2, 4, 5, 5))
    result = heatmaps(activation, np.zeros_like(activation), method, size=(11, 13))
    assert result.shape == (2, 11, 13)
    assert not np.isnan(result).any()
    assert (result == 0).all()


@pytest.mark.parametrize(
    "name, canonical",
    [
        ("GradCAM", "gradcam"),
        ("grad-cam", "gradcam"),
        ("GradCAM++", "gradcam++"),
        ("gradcampp", "gradcam++"),
        ("grad-cam++", "gradcam++"),
        ("Grad_CAM_PlusPlus", "gradcam++"),
        ("XGrad-CAM", "xgradcam"),
        ("HiResCAM", "hirescam"),
        ("layer_cam", "layercam"),
    ],
)
def test_normalize_method_accepts_case_and_aliases(name, canonical):
    assert normalize_method(name) == canonical
    activation, gradient = _random_pair((1, 3, 4, 4))
    np.testing.assert_array_equal(heatmaps(activation, gradient, name), heatmaps(activation, gradient, canonical))


def test_input_gradient_method_is_refused_with_the_way_out():
    activation, gradient = _random_pair((1, 3, 4, 4))
    with pytest.raises(InputError, match="not of the cam family.*Explainer"):
        heatmaps(activation, gradient, "saliency")


def test_gradient_is_required_only_by_methods_that_read_it():
    activation, gradient = _random_pair((2, 3, 4, 4))
    np.testing.assert_array_equal(heatmaps(activation, None, "eigencam"), heatmaps(activation, gradient, "eigencam"))
    with pytest.raises(InputError, match="gradient"):
        heatmaps(activation, None, "gradcam")


def test_unknown_method_lists_methods():
    activation, gradient = _random_pair((1, 3, 4, 4))
    with pytest.raises(InputError) as error:
        heatmaps(activation, gradient, "nosuchcam")
    assert "nosuchcam" in str(error.value)
    assert all(method in str(error.value) for method in METHODS)


@pytest.mark.parametrize(
    "activation_shape, gradient_shape, kwargs, message",
    [
        ((2, 3, 4, 4), (2, 3, 4, 5), {}, "same"),
        ((3, 4, 4), (3, 4, 4), {}, "4-D"),
        ((1, 2, 3, 4, 4), (1, 2, 3, 4, 4), {}, "4-D"),
        ((2, 3, 0, 4), (2, 3, 0, 4), {}, "spatial"),
        ((2, 3, 4, 4), (2, 3, 4, 4), {"size": (0, 5)}, "size"),
        ((2, 3, 4, 4), (2, 3, 4, 4), {"size": (5, -1)}, "size"),
        ((2, 3, 4, 4), (2, 3, 4, 4), {"size": (5,)}, "size"),
        ((2, 3, 4, 4), (2, 3, 4, 4), {"size": "big"}, "size"),
    ],
)
def test_bad_inputs_raise_input_error(activation_shape, gradient_shape, kwargs, message):
    activation = np.ones(activation_shape, np.float32)
    gradient = np.ones(gradient_shape, np.float32)
    with pytest.raises(InputError, match=message):
        heatmaps(activation, gradient, **kwargs)


def test_integer_arrays_raise_input_error():
    with pytest.raises(InputError, match="dtype"):
        raw_cam(np.ones((1, 2, 3, 3), np.int64), np.ones((1, 2, 3, 3), np.int64))
