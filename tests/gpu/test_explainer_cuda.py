"""device="cuda" end to end: IO binding, CuPy heatmaps, device inputs, flat memory (needs a CUDA GPU).

Each test has a CPU twin: the CPU Explainer on the same model is the oracle.
"""
from __future__ import annotations

import numpy as np
import pytest

onnxruntime = pytest.importorskip("onnxruntime")
cupy = pytest.importorskip("cupy")
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import onnx_gradcam  # noqa: E402
from onnx_gradcam.cam.reference import METHODS  # noqa: E402


def _has_cuda() -> bool:
    try:
        return ("CUDAExecutionProvider" in onnxruntime.get_available_providers()
                and cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _has_cuda(), reason="no CUDA GPU with onnxruntime-gpu")]


@pytest.fixture(scope="module", params=["resnet18", "resnet50", "vgg16", "mobilenet_v3_small", "densenet121"])
def augmented(request, tmp_path_factory):
    torch.manual_seed(0)
    model = getattr(torchvision.models, request.param)().eval()
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return onnx_gradcam.augment(path)


@pytest.mark.parametrize("method", METHODS)
def test_cuda_equals_cpu(augmented, method):
    images = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    cpu = onnx_gradcam.Explainer(augmented, device="cpu").explain(images, method=method, keep_tensors=True)
    gpu = onnx_gradcam.Explainer(augmented, device="cuda").explain(images, method=method, keep_tensors=True)
    assert isinstance(gpu.heatmaps, cupy.ndarray) and isinstance(gpu.gradient, cupy.ndarray)
    np.testing.assert_array_equal(gpu.classes, cpu.classes)
    scale = np.abs(cpu.gradient).max()
    assert np.abs(cupy.asnumpy(gpu.gradient) - cpu.gradient).max() <= 1e-4 * scale
    np.testing.assert_allclose(cupy.asnumpy(gpu.heatmaps), cpu.heatmaps, rtol=0, atol=1e-4)


def test_device_inputs_and_numpy_on_request(augmented):
    images = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    explainer = onnx_gradcam.Explainer(augmented, device="cuda")
    expected = explainer.explain(images, as_numpy=True)
    assert isinstance(expected.heatmaps, np.ndarray)
    for device_images in (cupy.asarray(images), torch.from_numpy(images).cuda()):
        result = explainer.explain(device_images, as_numpy=True)
        np.testing.assert_allclose(result.heatmaps, expected.heatmaps, rtol=0, atol=1e-6)


def test_memory_stays_flat_over_many_batches(augmented):
    explainer = onnx_gradcam.Explainer(augmented, device="cuda", batch_size=8)
    images = cupy.random.standard_normal((8, 3, 224, 224), dtype=cupy.float32)
    pool = cupy.get_default_memory_pool()
    for _ in range(20):
        explainer.explain(images)
    baseline = pool.used_bytes()
    for _ in range(500):
        explainer.explain(images)
    assert pool.used_bytes() <= baseline + 8 * 1024**2


def test_seeded_rows_of_a_split_model_on_cuda_equal_the_cpu(augmented_seeded):
    """The split run (forward once, reverse on gathered rows: found.py) on the GPU; CPU twin: tests/graph/test_split.py."""
    images = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(np.float32)
    index = np.array([0, 2, 2, 1])

    def find(start, score):
        seeds = np.zeros((len(index), score.shape[1]), np.float32)
        seeds[np.arange(len(index)), [3, 5, 7, 9]] = 1
        return index, lambda rows: seeds[rows]

    results = {}
    for device in ("cpu", "cuda"):
        explainer = onnx_gradcam.Explainer(augmented_seeded, device=device, batch_size=3)
        results[device] = explainer.explain_found(images, find, keep_tensors=True)
        assert explainer.split_sessions([name for name in explainer._output_sets(explainer._entry(None))[0]
                                         if name != "gradcam_logits"]) is not None
    gpu, cpu = results["cuda"], results["cpu"]
    assert isinstance(gpu["heatmaps"], cupy.ndarray)
    scale = np.abs(cpu["gradient"]).max()
    assert np.abs(cupy.asnumpy(gpu["gradient"]) - cpu["gradient"]).max() <= 1e-4 * scale
    np.testing.assert_allclose(cupy.asnumpy(gpu["heatmaps"]), cpu["heatmaps"], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def augmented_seeded(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    path = tmp_path_factory.mktemp("seeded") / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return onnx_gradcam.augment(path, seed=True)
