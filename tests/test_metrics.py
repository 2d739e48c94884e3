"""Faithfulness metrics: ROAD, its imputation and confidence change against pytorch-grad-cam; deletion and
insertion AUC against a direct per-image PyTorch loop; and the errors a user can make."""
from __future__ import annotations

import io
from types import SimpleNamespace

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.metrics import road as peer_road  # noqa: E402
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget  # noqa: E402

from onnx_gradcam import metrics  # noqa: E402
from onnx_gradcam.errors import InputError  # noqa: E402
from onnx_gradcam.graph.augment import TARGET_CLASS  # noqa: E402

SIZE = 64  # pytorch-grad-cam's imputation builds its system in Python: small images keep the oracle quick
PERCENTILES = [10, 30, 50, 70, 90]
DIGITS = "onnx_gradcam/data/digits_cnn.onnx"


def smooth_heatmaps(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random fields min-max scaled to [0, 1], float32 like the Explainer's heatmaps."""
    rng = np.random.default_rng(seed)
    fields = np.stack([cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), height / 10)
                       for _ in range(count)])
    low, high = fields.min(axis=(1, 2), keepdims=True), fields.max(axis=(1, 2), keepdims=True)
    return ((fields - low) / (high - low)).astype(np.float32)


@pytest.fixture(scope="module")
def resnet():
    # One torch thread: on a shared 2-core machine torch's thread pool spins against the other processes
    # (measured: the oracle's forward passes 20x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # 10 classes rather than 1000: class probabilities of a few tenths, so a tolerance of 1e-4 means something.
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    buffer = io.BytesIO()
    torch.onnx.export(model, (images,), buffer, dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        classes = model(images).argmax(dim=1).numpy()
    yield SimpleNamespace(model=model, onnx=buffer.getvalue(), images=images, classes=classes,
                          heatmaps=smooth_heatmaps(2, SIZE, SIZE, seed=0),
                          classifier=metrics.OnnxClassifier(buffer.getvalue()))  # one session, reused
    torch.set_num_threads(threads)


@pytest.fixture
def noiseless_peer_imputer(monkeypatch):
    """pytorch-grad-cam's ROAD classes build NoisyLinearImputer() with its default noise: make that 0."""
    class Noiseless(peer_road.NoisyLinearImputer):
        def __init__(self, *args, **kwargs):
            super().__init__(noise=0.0)

    monkeypatch.setattr(peer_road, "NoisyLinearImputer", Noiseless)


def softmax_targets(classes):
    return [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]


# ------------------------------------------------------------------------------------------- imputation

def test_imputation_equals_pytorch_grad_cam_noisy_linear_imputer():
    rng = np.random.default_rng(3)
    image = rng.standard_normal((3, 40, 56)).astype(np.float32)  # not square: rows and columns differ
    heatmap = smooth_heatmaps(1, 40, 56, seed=4)[0]
    known = heatmap < np.percentile(heatmap, 30)
    ours = metrics.impute(image, known)
    expected = peer_road.NoisyLinearImputer(noise=0.0)(torch.from_numpy(image),
                                                       torch.from_numpy(known.astype(np.float32))).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(ours[:, known], image[:, known])


def test_imputation_edge_cases_and_seeded_noise():
    image = np.random.default_rng(5).standard_normal((2, 9, 7)).astype(np.float32)
    everything = np.ones((9, 7), bool)
    np.testing.assert_array_equal(metrics.impute(image, everything), image)
    nothing_known = metrics.impute(image, ~everything)
    np.testing.assert_allclose(nothing_known, np.broadcast_to(image.mean(axis=(1, 2), keepdims=True), image.shape),
                               atol=1e-6)
    known = np.arange(63).reshape(9, 7) % 3 == 0
    first, again = metrics.impute(image, known, noise=0.1, seed=7), metrics.impute(image, known, noise=0.1, seed=7)
    np.testing.assert_array_equal(first, again)
    other = metrics.impute(image, known, noise=0.1, seed=8)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(first[:, known], image[:, known])
    noiseless = metrics.impute(image, known)
    assert 0.03 < np.std(first[:, ~known] - noiseless[:, ~known]) < 0.3


# ------------------------------------------------------------------------------ pytorch-grad-cam metrics

@pytest.mark.parametrize("order, peer", [("morf", peer_road.ROADMostRelevantFirstAverage),
                                         ("lerf", peer_road.ROADLeastRelevantFirstAverage),
                                         ("combined", peer_road.ROADCombined)])
def test_road_equals_pytorch_grad_cam(resnet, noiseless_peer_imputer, order, peer):
    expected = peer(PERCENTILES)(resnet.images, resnet.heatmaps, softmax_targets(resnet.classes), resnet.model)
    ours = metrics.road(resnet.onnx, resnet.images.numpy(), resnet.heatmaps, resnet.classes,
                        percentiles=PERCENTILES, order=order, noise=0.0)
    assert ours.shape == (2,)
    assert np.abs(expected).max() > 1e-2  # a real change of probability, not two zeros agreeing
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


def test_road_noise_is_seeded(resnet):
    arguments = (resnet.classifier, resnet.images.numpy(), resnet.heatmaps, resnet.classes)
    first = metrics.road(*arguments, percentiles=[50], noise=0.05, seed=1)
    np.testing.assert_array_equal(first, metrics.road(*arguments, percentiles=[50], noise=0.05, seed=1))
    assert not np.array_equal(first, metrics.road(*arguments, percentiles=[50], noise=0.05, seed=2))


def test_confidence_change_equals_pytorch_grad_cam(resnet):
    expected = CamMultImageConfidenceChange()(resnet.images, resnet.heatmaps, softmax_targets(resnet.classes),
                                              resnet.model)
    ours = metrics.confidence_change(resnet.onnx, resnet.images.numpy(), resnet.heatmaps, resnet.classes)
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- deletion and insertion AUC

def direct_curve_auc(model, image, heatmap, target, steps, start, end):
    """RISE's curve, one image and one step at a time: the step-k image takes `end` at its k/steps most
    relevant pixels and `start` elsewhere; trapezoid rule over the fraction of pixels."""
    channels, height, width = image.shape
    order = np.argsort(-heatmap.ravel(), kind="stable")
    fractions, probabilities = [], []
    for step in range(steps + 1):
        count = step * height * width // steps
        current = start.clone().reshape(channels, -1)
        current[:, order[:count]] = end.reshape(channels, -1)[:, order[:count]]
        with torch.no_grad():
            logits = model(current.reshape(1, channels, height, width))
        probabilities.append(torch.softmax(logits.double(), dim=1)[0, target].item())
        fractions.append(count / (height * width))
    return sum((fractions[k + 1] - fractions[k]) * (probabilities[k] + probabilities[k + 1]) / 2
               for k in range(steps))


def rise_blur(image):
    """An 11x11 Gaussian of sigma 5 with mirrored borders, as a depthwise convolution."""
    taps = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 5.0 ** 2))
    kernel = torch.outer(taps, taps) / taps.sum() ** 2
    channels = image.shape[0]
    padded = torch.nn.functional.pad(image[None].double(), (5, 5, 5, 5), mode="reflect")
    weight = kernel.expand(channels, 1, 11, 11)
    return torch.nn.functional.conv2d(padded, weight, groups=channels)[0].float()


@pytest.mark.parametrize("metric, baseline", [("deletion", None), ("deletion", "mean"), ("insertion", None)])
def test_curve_auc_equals_direct_loop(resnet, metric, baseline):
    steps = 8
    images = resnet.images.numpy()
    options = {} if baseline is None else {"baseline": baseline}
    function = metrics.deletion_auc if metric == "deletion" else metrics.insertion_auc
    ours = function(resnet.classifier, images, resnet.heatmaps, resnet.classes, steps=steps, **options)
    expected = []
    for image, heatmap, target in zip(resnet.images, resnet.heatmaps, resnet.classes):
        if metric == "insertion":
            start, end = rise_blur(image), image
        else:
            substitute = image.mean(dim=(1, 2), keepdim=True) if baseline == "mean" else torch.zeros(())
            start, end = image, substitute.expand_as(image)
        expected.append(direct_curve_auc(resnet.model, image, heatmap, int(target), steps, start, end))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


class QuadrantModel:
    """Class 0's logit is 8x the mean of the top-left quadrant; class 1's is 0. predict() takes NHWC."""

    def __init__(self):
        self.batches = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(len(batch))
        height, width = batch.shape[1:3]
        evidence = batch[:, : height // 2, : width // 2].mean(axis=(1, 2, 3))
        return np.stack([8 * evidence, np.zeros_like(evidence)], axis=1)


def test_deletion_and_insertion_favour_the_region_that_drives_the_logit():
    rng = np.random.default_rng(6)
    images = (1 + 0.1 * rng.random((2, 16, 16, 3))).astype(np.float32)  # NHWC
    ramp = np.linspace(0, 0.2, 16 * 16, dtype=np.float32).reshape(16, 16)  # no ties inside a region
    focused = ramp.copy()
    focused[:8, :8] += 0.8
    heatmaps = np.stack([focused, focused]), np.stack([1 - focused, 1 - focused])  # the quadrant; the rest
    model, classes = QuadrantModel(), np.zeros(2, np.int64)
    deletion = [metrics.deletion_auc(model, images, h, classes, steps=16, layout="NHWC") for h in heatmaps]
    insertion = [metrics.insertion_auc(model, images, h, classes, steps=16, baseline=0.0, layout="NHWC")
                 for h in heatmaps]
    assert np.all(deletion[0] < deletion[1] - 0.1)
    assert np.all(insertion[0] > insertion[1] + 0.1)
    # All 17 steps of both images run as one batch of 34 (the batch size allows 64), never one at a time.
    assert model.batches == [34] * 4


def test_batch_size_splits_the_work_without_changing_results():
    model = QuadrantModel()
    images = np.random.default_rng(9).random((3, 8, 8, 1)).astype(np.float32)
    heatmaps = smooth_heatmaps(3, 8, 8, seed=10)
    whole = metrics.deletion_auc(model, images, heatmaps, 0, steps=4, layout="NHWC")
    model.batches.clear()
    chunked = metrics.deletion_auc(model, images, heatmaps, 0, steps=4, layout="NHWC", batch_size=4)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-12)
    assert model.batches == [4, 4, 4, 3]


# ------------------------------------------------------------------------------------------ the models

def test_augmented_model_runs_its_logits():
    import onnxruntime as ort

    session = ort.InferenceSession(DIGITS, providers=["CPUExecutionProvider"])

    def reference(batch):  # the augmented model's own logits, with everything it computes
        return session.run(["logits"], {"input": batch, TARGET_CLASS: np.full(len(batch), -1, np.int64)})[0]

    images = np.random.default_rng(11).standard_normal((3, 1, 28, 28)).astype(np.float32)
    heatmaps = smooth_heatmaps(3, 28, 28, seed=12)
    classes = reference(images).argmax(axis=1)
    for model in (DIGITS, onnx.load(DIGITS)):
        np.testing.assert_allclose(metrics.confidence_change(model, images, heatmaps, classes),
                                   metrics.confidence_change(reference, images, heatmaps, classes), atol=1e-6)
    np.testing.assert_allclose(metrics.road(DIGITS, images, heatmaps, classes, percentiles=[20, 60], noise=0),
                               metrics.road(reference, images, heatmaps, classes, percentiles=[20, 60], noise=0),
                               atol=1e-6)


def tiny_classifier(batch: int) -> onnx.ModelProto:
    """x [batch,1,2,2] -> a 1-D output first, then logits [batch,3] = flatten(x) @ W: a fixed batch size."""
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["scores"]),
         helper.make_node("ReduceSum", ["scores"], ["total"], keepdims=0, axes=[1])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 2, 2])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [batch]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3])],
        [onnx.numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_onnx_classifier_finds_the_logits_and_pads_a_fixed_batch():
    proto = tiny_classifier(batch=2)
    images = np.random.default_rng(13).random((3, 1, 2, 2)).astype(np.float32)
    classifier = metrics.OnnxClassifier(proto.SerializeToString())
    assert classifier.output == "scores" and classifier.static_batch == 2
    np.testing.assert_allclose(classifier.predict(images), images.reshape(3, 4) @ (np.arange(12).reshape(4, 3) / 10),
                               rtol=1e-6)


# -------------------------------------------------------------------------------------------- errors

def valid_arguments():
    return [QuadrantModel(), np.ones((2, 4, 4, 1), np.float32), np.full((2, 4, 4), 0.5, np.float32),
            np.zeros(2, np.int64)]


@pytest.mark.parametrize("position, value, message", [
    (1, np.ones((2, 4, 4), np.float32), "4-D"),
    (2, np.full((2, 5, 4), 0.5, np.float32), "do not match"),
    (2, np.full((4, 4), 0.5, np.float32), r"\[N,H,W\]"),
    (2, np.full((2, 4, 4), 1.5, np.float32), r"within \[0, 1\]"),
    (2, np.full((2, 4, 4), np.nan, np.float32), r"within \[0, 1\]"),
    (3, np.array([0, 1, 2]), "one per image"),
    (3, np.array([0.0, 1.0]), "integers"),
    (3, np.array([0, 2]), "out of range"),
    (3, np.array([0, -1]), ">= 0"),
    (0, object(), "predict"),
])
def test_clear_errors_for_bad_inputs(position, value, message):
    arguments = valid_arguments()
    arguments[position] = value
    with pytest.raises(InputError, match=message):
        metrics.deletion_auc(*arguments, steps=2, layout="NHWC")


@pytest.mark.parametrize("options, message", [
    ({"order": "random"}, "order must be one of"),
    ({"percentiles": []}, "empty"),
    ({"percentiles": [50, 120]}, r"\[0, 100\]"),
    ({"noise": -1.0}, "noise"),
    ({"batch_size": 0}, "batch_size"),
    ({"layout": "CHW"}, "layout"),
])
def test_clear_errors_for_bad_road_options(options, message):
    options = {"layout": "NHWC", **options}
    with pytest.raises(InputError, match=message):
        metrics.road(*valid_arguments(), **options)


def test_clear_errors_for_bad_curve_options():
    with pytest.raises(InputError, match="steps"):
        metrics.insertion_auc(*valid_arguments(), steps=0, layout="NHWC")
    with pytest.raises(InputError, match="baseline"):
        metrics.deletion_auc(*valid_arguments(), baseline="noise", layout="NHWC")
    with pytest.raises(InputError, match="broadcast"):
        metrics.deletion_auc(*valid_arguments(), baseline=np.zeros(3), layout="NHWC")


def test_registry_names_columns_and_directions():
    assert list(metrics.METRICS) == ["road", "deletion", "insertion", "confidence"]
    assert {name: (entry.column, entry.higher_is_better) for name, entry in metrics.METRICS.items()} == {
        "road": ("road_combined", True), "deletion": ("deletion_auc", False),
        "insertion": ("insertion_auc", True), "confidence": ("confidence_change", True)}
    assert metrics.get_metric(" Deletion ").function is metrics.deletion_auc
    with pytest.raises(InputError, match="road, deletion, insertion, confidence"):
        metrics.get_metric("sparsity")
