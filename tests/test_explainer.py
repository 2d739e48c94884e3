"""Explainer on a small seeded torch CNN exported with torch.onnx.export (TorchScript exporter).

Oracles: ONNX Runtime on the plain model (classes, scores, logits), PyTorch autograd on the same
weights (activation, gradient), the NumPy reference heatmaps, and the manually preprocessed array
for raw-image inputs.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from onnx_gradcam import (METHODS, Explainer, InputError, ModelLoadError, NotAugmentedError,  # noqa: E402
                          Preprocess, augment)
from onnx_gradcam.cam import get_method, reference  # noqa: E402
from onnx_gradcam.graph.augment import LOGITS  # noqa: E402

SIZE = 32
CLASSES = 10
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


class SmallCNN(nn.Module):
    def __init__(self, head: str = "normal") -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        if head == "dead_relu":  # the score sees the features only through a Relu that is always off
            hidden = nn.Linear(16, 16)
            nn.init.constant_(hidden.bias, -1e3)
            self.head = nn.Sequential(hidden, nn.ReLU(), nn.Linear(16, CLASSES))
        else:
            self.head = nn.Linear(16, CLASSES)
            if head == "zero":
                nn.init.zeros_(self.head.weight)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def export(module: nn.Module, dynamic: bool = True) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(module, torch.randn(1, 3, SIZE, SIZE), buffer, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None)
    return onnx.load_from_string(buffer.getvalue())


def seeded(head: str = "normal", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN(head).eval()


@pytest.fixture(scope="module")
def cnn():
    module = seeded()
    plain = export(module)
    return {"module": module, "plain": plain, "augmented": augment(plain), "fixed": augment(export(module, False))}


@pytest.fixture(scope="module")
def explainer(cnn):
    return Explainer(cnn["augmented"])


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((5, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def raw_images():
    return np.random.default_rng(1).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)


def plain_logits(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": images})[0]


def manual_preprocess(rgb_images) -> np.ndarray:
    batch = np.stack(rgb_images).astype(np.float32) * np.float32(1 / 255)
    batch = (batch - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def assert_same_explanation(actual, expected, atol: float = 0.0) -> None:
    np.testing.assert_array_equal(actual.classes, expected.classes)
    np.testing.assert_allclose(actual.scores, expected.scores, rtol=0, atol=atol)
    np.testing.assert_allclose(actual.logits, expected.logits, rtol=0, atol=atol)
    np.testing.assert_allclose(actual.heatmaps, expected.heatmaps, rtol=0, atol=max(atol, 1e-6))


# ---------------------------------------------------------------- results

def test_heatmaps_are_float32_in_unit_range_and_equal_the_numpy_reference(explainer, images):
    explanation = explainer.explain(images, keep_tensors=True)
    heatmaps = explanation.heatmaps
    assert heatmaps.shape == (5, SIZE, SIZE) and heatmaps.dtype == np.float32
    assert np.isfinite(heatmaps).all() and heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert (heatmaps.max(axis=(1, 2)) > 0.99).all()  # min-max normalized per image
    expected = reference.heatmaps(explanation.activation, explanation.gradient, "gradcam", (SIZE, SIZE))
    np.testing.assert_array_equal(heatmaps, expected)
    assert len(explanation) == 5 and explanation.method == "gradcam"


def test_classes_scores_logits_match_onnxruntime_on_the_plain_model(cnn, explainer, images):
    logits = plain_logits(cnn["plain"], images)
    explanation = explainer.explain(images)
    np.testing.assert_array_equal(explanation.logits, logits)
    np.testing.assert_array_equal(explanation.classes, logits.argmax(axis=1))
    np.testing.assert_array_equal(explanation.scores, logits[np.arange(5), logits.argmax(axis=1)])
    assert explanation.classes.dtype == np.int64
    probabilities = explanation.probabilities
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
    top, top_probabilities = explanation.top_k(5)
    assert top.shape == (5, 5) and (top[:, 0] == explanation.classes).all()
    assert (np.diff(top_probabilities, axis=1) <= 0).all()


def test_activation_and_gradient_match_torch_autograd(cnn, explainer, images):
    module = cnn["module"]
    captured = {}
    hook = module.features[4].register_forward_hook(lambda _m, _i, out: captured.update(activation=out))
    try:
        logits = module(torch.from_numpy(images))
    finally:
        hook.remove()
    classes = torch.tensor([3, 0, 9, 5, 1])
    score = logits.gather(1, classes[:, None]).sum()
    (gradient,) = torch.autograd.grad(score, captured["activation"])
    explanation = explainer.explain(images, target_class=classes.numpy(), keep_tensors=True)
    activation = captured["activation"].detach().numpy()
    np.testing.assert_allclose(explanation.activation, activation, rtol=0, atol=1e-5 * np.abs(activation).max())
    np.testing.assert_allclose(explanation.gradient, gradient.numpy(), rtol=0,
                               atol=1e-5 * np.abs(gradient.numpy()).max())


@pytest.mark.parametrize("target_class", [None, -1, 4, [0, 1, 2, 3, 9], np.array([7, 7, 7, 7, 7], np.int32),
                                          np.int64(2)],
                         ids=["none", "minus_one", "int", "list", "int32_array", "numpy_scalar"])
def test_target_class_forms(cnn, explainer, images, target_class):
    logits = plain_logits(cnn["plain"], images)
    explanation = explainer.explain(images, target_class=target_class)
    if target_class is None or (np.ndim(target_class) == 0 and int(target_class) == -1):
        expected = logits.argmax(axis=1)
    else:
        expected = np.broadcast_to(np.asarray(target_class, np.int64), (5,))
    np.testing.assert_array_equal(explanation.classes, expected)
    np.testing.assert_array_equal(explanation.scores, logits[np.arange(5), expected])


def test_top_class_equals_explaining_the_argmax_explicitly(cnn, explainer, images):
    top = explainer.explain(images)
    explicit = explainer.explain(images, target_class=plain_logits(cnn["plain"], images).argmax(axis=1))
    assert_same_explanation(top, explicit)
    other = explainer.explain(images, target_class=(top.classes + 1) % CLASSES)
    assert not np.allclose(other.heatmaps, top.heatmaps)


def test_mixed_top_class_and_given_classes_in_one_batch(cnn, explainer, images):
    logits = plain_logits(cnn["plain"], images)
    explanation = explainer.explain(images, target_class=[-1, 2, -1, 8, 0])
    expected = np.array([logits[0].argmax(), 2, logits[2].argmax(), 8, 0])
    np.testing.assert_array_equal(explanation.classes, expected)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_smaller_batch_size_gives_the_same_results_as_one_batch(cnn, explainer, images, batch_size):
    whole = explainer.explain(images, target_class=[1, -1, 3, -1, 5], keep_tensors=True)
    chunked = Explainer(cnn["augmented"], batch_size=batch_size).explain(
        images, target_class=[1, -1, 3, -1, 5], keep_tensors=True)
    assert_same_explanation(chunked, whole, atol=1e-5)
    np.testing.assert_allclose(chunked.gradient, whole.gradient, rtol=0, atol=1e-6)


def test_keep_tensors_returns_nchw_activation_and_gradient(explainer, images):
    explanation = explainer.explain(images, keep_tensors=True)
    assert explanation.activation.shape == explanation.gradient.shape == (5, 16, 16, 16)
    assert explanation.activation.dtype == np.float32
    assert (explanation.activation >= 0).all()  # the auto target is the last ReLU
    plain = explainer.explain(images)
    assert plain.activation is None and plain.gradient is None


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_equals_the_reference(explainer, images, method):
    explanation = explainer.explain(images, method=method, keep_tensors=True)
    assert explanation.method == method
    assert explanation.heatmaps.shape == (5, SIZE, SIZE) and explanation.heatmaps.dtype == np.float32
    assert np.isfinite(explanation.heatmaps).all()
    assert explanation.heatmaps.min() >= 0 and explanation.heatmaps.max() <= 1
    expected = reference.heatmaps(explanation.activation, explanation.gradient, method, (SIZE, SIZE))
    np.testing.assert_array_equal(explanation.heatmaps, expected)


def test_method_chosen_at_construction_and_aliases(cnn, images):
    default = Explainer(cnn["augmented"], method="GradCAM++").explain(images)
    assert default.method == "gradcam++"
    assert Explainer(cnn["augmented"]).explain(images, method="layer_cam").method == "layercam"


def test_model_given_as_path_or_bytes(cnn, images, tmp_path, explainer):
    path = tmp_path / "augmented.onnx"
    onnx.save(cnn["augmented"], str(path))
    expected = explainer.explain(images)
    assert_same_explanation(Explainer(path).explain(images), expected)
    assert_same_explanation(Explainer(str(path)).explain(images), expected)
    assert_same_explanation(Explainer(path.read_bytes()).explain(images), expected)


# ---------------------------------------------------------------- raw images

@pytest.fixture(scope="module")
def raw_explainer(cnn):
    return Explainer(cnn["augmented"], preprocess=Preprocess(mean=MEAN, std=STD))


def test_uint8_images_equal_the_manually_preprocessed_array(raw_explainer, raw_images):
    expected = raw_explainer.explain(manual_preprocess(raw_images))
    assert_same_explanation(raw_explainer.explain(raw_images), expected)  # [N,H,W,3] uint8 array
    assert_same_explanation(raw_explainer.explain(list(raw_images)), expected)  # list of images
    single = raw_explainer.explain(raw_images[0])  # one [H,W,3] image
    assert len(single) == 1 and single.heatmaps.shape == (1, SIZE, SIZE)
    np.testing.assert_allclose(single.heatmaps[0], expected.heatmaps[0], rtol=0, atol=1e-6)


def test_preprocess_given_as_dict_equals_the_dataclass(cnn, raw_explainer, raw_images):
    as_dict = Explainer(cnn["augmented"], preprocess={"mean": list(MEAN), "std": list(STD)})
    assert_same_explanation(as_dict.explain(raw_images), raw_explainer.explain(raw_images))


def test_image_files_equal_the_manually_preprocessed_array(raw_explainer, raw_images, tmp_path):
    paths = []
    for index, image in enumerate(raw_images):
        path = tmp_path / f"image_{index}.png"
        assert cv2.imwrite(str(path), image[..., ::-1])  # cv2 writes BGR
        paths.append(path)
    expected = raw_explainer.explain(manual_preprocess(raw_images))
    assert_same_explanation(raw_explainer.explain(paths), expected)
    assert_same_explanation(raw_explainer.explain([str(p) for p in paths]), expected)
    single = raw_explainer.explain(str(paths[2]))
    np.testing.assert_array_equal(single.classes, expected.classes[2:3])


def test_image_of_another_size_is_resized_to_the_model_input(raw_explainer, tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    resized = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    expected = raw_explainer.explain(manual_preprocess([resized]))
    assert_same_explanation(raw_explainer.explain(image), expected)
    path = tmp_path / "large.png"
    cv2.imwrite(str(path), image[..., ::-1])
    explanation = raw_explainer.explain(path)
    assert explanation.heatmaps.shape == (1, SIZE, SIZE)
    assert_same_explanation(explanation, expected)


def test_preprocess_recorded_in_the_model_is_used(cnn, raw_explainer, raw_images):
    recorded = augment(cnn["plain"], preprocess=Preprocess(mean=MEAN, std=STD).to_dict())
    assert_same_explanation(Explainer(recorded).explain(raw_images), raw_explainer.explain(raw_images))


# ---------------------------------------------------------------- errors

def test_plain_model_raises_not_augmented_error(cnn):
    with pytest.raises(NotAugmentedError, match="augment"):
        Explainer(cnn["plain"])


@pytest.mark.parametrize("shape", [(3, SIZE, SIZE), (2, 3, SIZE - 1, SIZE - 1), (2, 1, SIZE, SIZE),
                                   (2, SIZE, SIZE, 3), (2, 3, SIZE, SIZE, 1)])
def test_wrong_input_shape_raises_input_error_naming_the_expected_shape(explainer, shape):
    with pytest.raises(InputError) as info:
        explainer.explain(np.zeros(shape, np.float32))
    message = str(info.value)
    assert f"[N, 3, {SIZE}, {SIZE}]" in message and str(list(shape)) in message
    if len(shape) == 3:
        assert "images[None]" in message


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_])
def test_integer_dtype_raises_input_error(explainer, dtype):
    with pytest.raises(InputError, match="float32"):
        explainer.explain(np.zeros((2, 3, SIZE, SIZE), dtype))


def test_integer_dtype_error_names_the_dtype(explainer):
    with pytest.raises(InputError, match="int32"):
        explainer.explain(np.zeros((2, 3, SIZE, SIZE), np.int32))


def test_empty_batch_raises_input_error(explainer):
    with pytest.raises(InputError, match="empty|no images"):
        explainer.explain(np.zeros((0, 3, SIZE, SIZE), np.float32))


def test_float64_input_is_accepted_and_equals_float32(explainer, images):
    assert_same_explanation(explainer.explain(images.astype(np.float64)), explainer.explain(images))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises_input_error(explainer, images, bad):
    corrupted = images.copy()
    corrupted[1, 2, 3, 4] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        explainer.explain(corrupted)


@pytest.mark.parametrize("target_class", [10, -2, [0, 1, 2, 3, 10], 1000])
def test_target_class_out_of_range_raises_input_error(explainer, images, target_class):
    with pytest.raises(InputError, match=r"\[0, 9\] or -1"):
        explainer.explain(images, target_class=target_class)


@pytest.mark.parametrize("target_class", [[0, 1], 1.5, "3"])
def test_malformed_target_class_raises_input_error(explainer, images, target_class):
    with pytest.raises(InputError, match="target_class"):
        explainer.explain(images, target_class=target_class)


def test_raw_images_without_a_preprocessing_spec_raise_input_error(explainer, raw_images, tmp_path):
    with pytest.raises(InputError, match="preprocess"):
        explainer.explain(raw_images)
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), raw_images[0])
    with pytest.raises(InputError, match="preprocess"):
        explainer.explain(path)


def test_missing_or_corrupt_image_file_raises_input_error(raw_explainer, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="corrupt"):
        raw_explainer.explain(corrupt)
    with pytest.raises(InputError, match="no such file"):
        raw_explainer.explain(tmp_path / "missing.png")


@pytest.mark.parametrize("content", [b"", b"this is not an onnx model\n" * 10, bytes(range(256)) * 4,
                                     None], ids=["empty", "text", "binary", "missing"])
def test_corrupt_or_non_onnx_file_raises_model_load_error(tmp_path, content):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="model"):
        Explainer(path)


def test_truncated_model_file_raises_model_load_error(cnn, tmp_path):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(cnn["augmented"].SerializeToString()[:1000])
    with pytest.raises(ModelLoadError):
        Explainer(path)


def test_unknown_method_raises_input_error(cnn, explainer, images):
    with pytest.raises(InputError, match="gradcam, gradcam\\+\\+, xgradcam, hirescam, layercam"):
        Explainer(cnn["augmented"], method="no_such_cam")
    with pytest.raises(InputError, match="unknown method .no_such_cam."):
        explainer.explain(images, method="no_such_cam")
    with pytest.raises(InputError, match="saliency, guided_backprop, guided_gradcam, smoothgrad, integrated_gradients"):
        explainer.explain(images, method="occlusion")


def test_bad_batch_size_and_device_raise_input_error(cnn):
    with pytest.raises(InputError, match="batch_size"):
        Explainer(cnn["augmented"], batch_size=0)
    with pytest.raises(InputError, match="device"):
        Explainer(cnn["augmented"], device="tpu")


# ---------------------------------------------------------------- degenerate models

@pytest.mark.parametrize("head", ["zero", "dead_relu"])
def test_all_zero_gradients_give_all_zero_heatmaps_never_nan(head, images):
    explainer = Explainer(augment(export(seeded(head))))
    for method in [method for method in METHODS if get_method(method).uses_gradient]:  # EigenCAM reads none
        explanation = explainer.explain(images, method=method, keep_tensors=True)
        assert (explanation.gradient == 0).all()
        assert np.isfinite(explanation.heatmaps).all(), method
        assert (explanation.heatmaps == 0).all(), method


def test_model_exported_with_a_fixed_batch_of_one_explains_three_images(cnn, explainer, images):
    fixed = Explainer(cnn["fixed"])
    assert fixed.static_batch == 1
    for target_class in (None, [4, -1, 6]):
        explanation = fixed.explain(images[:3], target_class=target_class, keep_tensors=True)
        assert explanation.heatmaps.shape == (3, SIZE, SIZE)
        assert explanation.activation.shape == (3, 16, 16, 16)
        assert_same_explanation(explanation, explainer.explain(images[:3], target_class=target_class),
                                atol=1e-5)


class ChannelsLast(nn.Module):
    """The same CNN taking NHWC input, as Keras/TF-style deployments do (a leading Transpose)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.permute(0, 3, 1, 2))


@pytest.fixture(scope="module")
def nhwc_augmented(cnn):
    buffer = io.BytesIO()
    torch.onnx.export(ChannelsLast(cnn["module"]), torch.randn(1, SIZE, SIZE, 3), buffer, dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return augment(onnx.load_from_string(buffer.getvalue()))


def test_nhwc_model_with_nhwc_preprocessing_equals_the_nchw_model(nhwc_augmented, raw_explainer, raw_images):
    nhwc = Explainer(nhwc_augmented, preprocess=Preprocess(mean=MEAN, std=STD, layout="NHWC"))
    assert nhwc.layout == "NHWC"
    assert_same_explanation(nhwc.explain(raw_images), raw_explainer.explain(raw_images), atol=1e-5)
    floats = manual_preprocess(raw_images).transpose(0, 2, 3, 1)
    explanation = nhwc.explain(np.ascontiguousarray(floats), keep_tensors=True)
    assert explanation.heatmaps.shape == (4, SIZE, SIZE) and explanation.activation.shape == (4, 16, 16, 16)


def test_nhwc_model_with_a_layout_free_preprocessing_spec(nhwc_augmented, raw_explainer, raw_images):
    nhwc = Explainer(nhwc_augmented, preprocess=Preprocess(mean=MEAN, std=STD))
    assert_same_explanation(nhwc.explain(raw_images), raw_explainer.explain(raw_images), atol=1e-5)


class _AllocatorLimit:
    """Wraps a Session: chunks larger than `limit` fail the way ONNX Runtime's CUDA arena does."""

    def __init__(self, session, limit: int) -> None:
        self.session, self.limit, self.sizes = session, limit, []

    def run(self, feeds, outputs):
        size = len(next(iter(feeds.values())))
        self.sizes.append(size)
        if size > self.limit:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory "
                               "for requested buffer of size 123456 (out of memory)")
        return self.session.run(feeds, outputs)


def test_a_batch_too_large_for_the_device_is_split_not_crashed(cnn, images):
    explainer = Explainer(cnn["augmented"], batch_size=5)
    expected = explainer.explain(images)
    for key, session in list(explainer._sessions.items()):
        explainer._sessions[key] = _AllocatorLimit(session, limit=2)
    split = explainer.explain(images)
    assert_same_explanation(split, expected)
    assert explainer.batch_size == 2  # later batches start at a size that fits


def test_other_runtime_errors_are_not_retried(cnn, images):
    explainer = Explainer(cnn["augmented"])
    explainer.explain(images)  # creates the session

    class Broken:
        def run(self, feeds, outputs):
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : something else")

    assert explainer._sessions
    for key in list(explainer._sessions):
        explainer._sessions[key] = Broken()
    with pytest.raises(RuntimeError, match="INVALID_ARGUMENT"):
        explainer.explain(images)


def test_gpu_tensors_on_a_cpu_explainer_raise_input_error(explainer):
    class FakeCupyArray:
        __module__ = "cupy._core.core"

    with pytest.raises(InputError, match="device='cuda'"):
        explainer.explain(FakeCupyArray())


def test_sessions_are_created_on_first_use_or_by_warm_up(cnn, images):
    explainer = Explainer(cnn["augmented"])
    assert not explainer._sessions  # constructing holds no ONNX Runtime session yet
    assert explainer.warm_up() is explainer and len(explainer._sessions) == 1
    session = next(iter(explainer._sessions.values()))
    explainer.explain(images)
    assert list(explainer._sessions.values()) == [session]  # the warmed-up session is the one used


def test_warm_up_for_an_input_gradient_method_needs_an_input_gradient_model(cnn):
    with pytest.raises(InputError, match="input_gradient=True"):
        Explainer(cnn["augmented"]).warm_up("saliency")


def test_a_default_method_the_model_cannot_serve_is_refused_at_construction(cnn):
    with pytest.raises(InputError, match="--guided .guided=True."):
        Explainer(cnn["augmented"], method="guided_gradcam")


# ---------------------------------------------------------------- predict

def test_predict_returns_the_plain_models_logits_in_batches(cnn, images):
    explainer = Explainer(cnn["augmented"], batch_size=2)
    logits = explainer.predict(images)
    assert logits.dtype == np.float32 and logits.shape == (5, CLASSES)
    np.testing.assert_array_equal(logits, plain_logits(cnn["plain"], images))
    assert list(explainer._sessions) == [frozenset([LOGITS])]  # a forward-only session, no backward pass


def test_predict_takes_raw_images_and_a_fixed_batch_model(cnn, raw_images):
    expected = plain_logits(cnn["plain"], manual_preprocess(raw_images))
    raw = Explainer(cnn["augmented"], preprocess=Preprocess(mean=MEAN, std=STD))
    np.testing.assert_allclose(raw.predict(list(raw_images)), expected, rtol=0, atol=1e-5)
    fixed = Explainer(cnn["fixed"])
    np.testing.assert_allclose(fixed.predict(manual_preprocess(raw_images[:3])), expected[:3], rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="empty"):
        fixed.predict(np.zeros((0, 3, SIZE, SIZE), np.float32))
