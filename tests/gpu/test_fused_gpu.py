"""The fused CuPy kernel (cam.fused) against the NumPy reference and render.overlay, on a real GPU."""
from __future__ import annotations

import numpy as np
import pytest

from onnx_gradcam.cam import reference
from onnx_gradcam.errors import InputError
from onnx_gradcam.render import overlay as reference_overlay

cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
try:
    _GPUS = cupy.cuda.runtime.getDeviceCount()
except cupy.cuda.runtime.CUDARuntimeError:
    _GPUS = 0
if _GPUS == 0:
    pytest.skip("no CUDA GPU", allow_module_level=True)

from onnx_gradcam.cam import fused  # noqa: E402

pytestmark = pytest.mark.gpu

# (N, K, h, w) -> (H, W): ResNet-50, VGG, MNIST sizes, non-integer up and down factors, 1-pixel maps,
# a batch of one with many channels (split over blocks), a map too large for shared memory.
CASES = [
    ((4, 2048, 7, 7), (224, 224)),
    ((3, 512, 14, 14), (224, 224)),
    ((5, 64, 7, 7), (28, 28)),
    ((2, 9, 5, 6), (37, 41)),
    ((2, 16, 12, 10), (6, 4)),
    ((1, 3, 1, 1), (5, 3)),
    ((2, 5, 9, 4), None),
    ((1, 1000, 3, 3), (17, 200)),
    ((300, 32, 7, 7), (20, 20)),
    ((2, 8, 100, 100), (50, 70)),
]


def _pair(shape, dtype=np.float32, seed=0):
    """Post-ReLU activations and small gradients, like a real target layer; the same for the same arguments."""
    rng = np.random.default_rng(seed)
    activation = np.maximum(rng.standard_normal(shape, dtype=np.float32), 0).astype(dtype)
    gradient = (rng.standard_normal(shape, dtype=np.float32) * 0.1).astype(dtype)
    return activation, gradient


@pytest.mark.parametrize("method", reference.METHODS)
@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float32, 1e-5), (np.float16, 1e-5)])
@pytest.mark.parametrize(("shape", "size"), CASES)
def test_fused_heatmaps_match_reference(method, dtype, tolerance, shape, size):
    """fp16 is compared with the reference on the same fp16 values (both compute in fp32)."""
    activation, gradient = _pair(shape, dtype)
    expected = reference.heatmaps(activation, gradient, method, size)
    ours = fused.heatmaps(cupy.asarray(activation), cupy.asarray(gradient), method, size)
    assert ours.dtype == cupy.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(cupy.asnumpy(ours), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("method", reference.METHODS)
def test_fp16_heatmaps_stay_close_to_fp32_inputs(method):
    activation, gradient = _pair((4, 512, 14, 14))
    expected = reference.heatmaps(activation, gradient, method, (224, 224))
    half = [cupy.asarray(array, cupy.float16) for array in (activation, gradient)]
    ours = fused.heatmaps(*half, method, (224, 224))
    np.testing.assert_allclose(cupy.asnumpy(ours), expected, rtol=0, atol=1e-3)  # the reference drifts 5e-4 itself


@pytest.mark.parametrize("method", reference.METHODS)
@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_fused_overlays_match_render_overlay(method, alpha):
    activation, gradient = _pair((3, 256, 7, 7))
    images = np.random.default_rng(1).integers(0, 256, (3, 61, 83, 3), dtype=np.uint8)
    heatmap, overlay = fused.heatmaps_and_overlays(
        cupy.asarray(activation), cupy.asarray(gradient), cupy.asarray(images), method, alpha
    )
    expected_heatmap = reference.heatmaps(activation, gradient, method, (61, 83))
    np.testing.assert_allclose(cupy.asnumpy(heatmap), expected_heatmap, rtol=0, atol=1e-5)
    overlay = cupy.asnumpy(overlay)
    assert overlay.dtype == np.uint8 and overlay.shape == images.shape
    for index in range(3):
        expected = reference_overlay(images[index], expected_heatmap[index], alpha)
        assert np.abs(overlay[index].astype(int) - expected).max() <= 1


def test_resnet50_batch_is_deterministic_across_runs():
    activation, gradient = (cupy.asarray(array) for array in _pair((2, 2048, 7, 7)))
    first = fused.heatmaps(activation, gradient, "gradcam++", (224, 224))
    again = fused.heatmaps(activation, gradient, "gradcam++", (224, 224))
    assert cupy.array_equal(first, again)


def test_out_views_and_empty_batches():
    activation, gradient = _pair((2, 16, 6, 6))
    out = cupy.full((2, 30, 30), -1, cupy.float32)
    transposed = cupy.asarray(activation.transpose(0, 1, 3, 2).copy()).transpose(0, 1, 3, 2)  # not C-contiguous
    result = fused.heatmaps(transposed, cupy.asarray(gradient), "layercam", (30, 30), out=out)
    assert result is out
    expected = reference.heatmaps(activation, gradient, "layercam", (30, 30))
    np.testing.assert_allclose(cupy.asnumpy(out), expected, rtol=0, atol=1e-5)
    empty = cupy.zeros((0, 16, 6, 6), cupy.float32)
    assert fused.heatmaps(empty, empty, size=(30, 30)).shape == (0, 30, 30)


def test_all_equal_map_gives_zeros():
    activation = cupy.ones((2, 4, 7, 7), cupy.float32)
    np.testing.assert_array_equal(cupy.asnumpy(fused.heatmaps(activation, activation, "hirescam", (224, 224))), 0.0)


def _bad_calls():
    good = cupy.zeros((2, 4, 7, 7), cupy.float32)
    images = cupy.zeros((2, 20, 20, 3), cupy.uint8)
    yield "numpy input", lambda: fused.heatmaps(np.zeros((2, 4, 7, 7), np.float32), good)
    yield "3-D input", lambda: fused.heatmaps(good[0], good[0])
    yield "float64", lambda: fused.heatmaps(good.astype(cupy.float64), good.astype(cupy.float64))
    yield "int32", lambda: fused.heatmaps(good.astype(cupy.int32), good.astype(cupy.int32))
    yield "shape mismatch", lambda: fused.heatmaps(good, good[:, :3])
    yield "dtype mismatch", lambda: fused.heatmaps(good, good.astype(cupy.float16))
    yield "empty channels", lambda: fused.heatmaps(good[:, :0], good[:, :0])
    yield "unknown method", lambda: fused.heatmaps(good, good, "scorecam")
    yield "bad size", lambda: fused.heatmaps(good, good, size=(0, 10))
    yield "size not a pair", lambda: fused.heatmaps(good, good, size=224)
    yield "out shape", lambda: fused.heatmaps(good, good, size=(8, 8), out=cupy.empty((2, 7, 7), cupy.float32))
    yield "out dtype", lambda: fused.heatmaps(good, good, out=cupy.empty((2, 7, 7), cupy.float64))
    yield "images dtype", lambda: fused.heatmaps_and_overlays(good, good, images.astype(cupy.float32))
    yield "images channels", lambda: fused.heatmaps_and_overlays(good, good, images[..., :1])
    yield "images count", lambda: fused.heatmaps_and_overlays(good, good, images[:1])
    yield "alpha", lambda: fused.heatmaps_and_overlays(good, good, images, alpha=1.5)


BAD_CALLS = dict(_bad_calls())


@pytest.mark.parametrize("problem", list(BAD_CALLS))
def test_bad_inputs_raise_input_error_before_launch(problem):
    call = BAD_CALLS[problem]
    with pytest.raises(InputError):
        call()
