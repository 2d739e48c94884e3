"""augment() and list_targets() on a small seeded CNN: clear errors for bad input, and the augmented-model contract.

Oracles: PyTorch autograd of the same CNN on the same weights (gradients, classes, logits), the plain
model's own outputs (bit-identical originals), and the NumPy heatmap reference (in-graph heatmap).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import onnx_gradcam
from onnx_gradcam.errors import (GradCamError, ModelLoadError, ScoreNotFoundError, TargetNotFoundError,
                                 UnsupportedOpError)

PROVIDERS = ["CPUExecutionProvider"]
CHANNELS, HEIGHT, WIDTH, CLASSES = 3, 16, 20, 10  # H != W catches swapped axes
GRADIENT_TOLERANCE = 1e-4
HEATMAP_TOLERANCE = 1e-5
OUTPUTS = ["gradcam_activation", "gradcam_gradient", "gradcam_class", "gradcam_score", "gradcam_logits"]


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 0.5) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return {"w1": normal(8, CHANNELS, 3, 3), "b1": normal(8, scale=0.1), "w2": normal(16, 8, 3, 3, scale=0.2),
            "b2": normal(16, scale=0.1), "w3": normal(CLASSES, 16), "b3": normal(CLASSES, scale=0.1)}


def _model(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], outputs: list[onnx.ValueInfoProto],
           inputs: list[onnx.ValueInfoProto] | None = None, opset: int = 17,
           extra_opsets: tuple = ()) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", CHANNELS, HEIGHT, WIDTH])]
    graph = helper.make_graph(nodes, "cnn", inputs, outputs,
                              [numpy_helper.from_array(value, name) for name, value in weights.items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(domain, 1) for domain in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


CNN_BODY = [
    helper.make_node("Conv", ["image", "w1", "b1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
    helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
    helper.make_node("Conv", ["pool1", "w2", "b2"], ["conv2"], name="conv2", pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
]
CNN_HEAD = [
    helper.make_node("GlobalAveragePool", ["relu2"], ["gap"], name="gap"),
    helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
    helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], name="fc", transB=1),
    helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
]
PROBABILITIES = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])
# An overlapping MaxPool between relu2 and the GlobalAveragePool: its rule rewrites the forward node.
POOLED_HEAD = [helper.make_node("MaxPool", ["relu2"], ["pool2"], name="pool2", kernel_shape=[3, 3], strides=[2, 2],
                                pads=[1, 1, 1, 1]),
               helper.make_node("GlobalAveragePool", ["pool2"], ["gap"], name="gap")] + CNN_HEAD[1:]


def cnn(extra_nodes: list[onnx.NodeProto] = (), extra_outputs: list[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:
    """image -> Conv -> Relu -> MaxPool -> Conv -> Relu (relu2) -> GlobalAveragePool -> Flatten -> Gemm -> Softmax."""
    return _model(CNN_BODY + list(extra_nodes) + CNN_HEAD, _weights(), [PROBABILITIES] + list(extra_outputs))


def pooled_cnn() -> onnx.ModelProto:
    """cnn() with relu2 -> MaxPool(3x3, stride 2, pads 1) -> pool2 before the GlobalAveragePool."""
    return _model(CNN_BODY + POOLED_HEAD, _weights(), [PROBABILITIES])


def images(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, CHANNELS, HEIGHT, WIDTH)).astype(np.float32)


def session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=PROVIDERS)


def torch_oracle(x: np.ndarray, target_class: np.ndarray,
                 target: str = "relu2") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(target, d logits[i, class_i] / d target, classes, logits) by torch autograd in float64."""
    w = {name: torch.from_numpy(value.astype(np.float64)) for name, value in _weights().items()}
    image = torch.from_numpy(x.astype(np.float64))
    relu1 = F.relu(F.conv2d(image, w["w1"], w["b1"], padding=1))
    if target == "relu1":
        activation = relu1 = relu1.requires_grad_()
    relu2 = F.relu(F.conv2d(F.max_pool2d(relu1, 2), w["w2"], w["b2"], padding=1))
    if target == "relu2":
        activation = relu2 = relu2.requires_grad_()
    logits = relu2.mean((2, 3)) @ w["w3"].T + w["b3"]
    classes = np.where(target_class < 0, logits.detach().numpy().argmax(1), target_class)
    logits[torch.arange(len(x)), torch.from_numpy(classes)].sum().backward()
    return activation.detach().numpy(), activation.grad.numpy(), classes, logits.detach().numpy()


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def augmented() -> onnx.ModelProto:
    return onnx_gradcam.augment(cnn())


@pytest.fixture(scope="module")
def augmented_session(augmented) -> onnxruntime.InferenceSession:
    return session(augmented)


# ---------------------------------------------------------------- errors


def test_unknown_target_raises_target_not_found_listing_candidates_and_close_matches():
    with pytest.raises(TargetNotFoundError) as raised:
        onnx_gradcam.augment(cnn(), target="relu_2")
    message = str(raised.value)
    assert "'relu_2'" in message and "not a tensor of this graph" in message
    assert "Did you mean" in message and "'relu2'" in message.split("Did you mean")[1].split("\n")[0]
    for candidate in ("conv1", "relu1", "pool1", "conv2", "relu2"):
        assert candidate in message


def test_target_on_a_dead_branch_raises_saying_it_does_not_influence_the_score():
    dead_branch = [helper.make_node("Sigmoid", ["relu1"], ["unused_branch"], name="unused")]
    with pytest.raises((TargetNotFoundError, ScoreNotFoundError), match=r"does not (influence|reach) the score"):
        onnx_gradcam.augment(cnn(dead_branch), target="unused_branch")


def test_target_feeding_only_an_auxiliary_output_raises_saying_it_does_not_influence_the_score():
    auxiliary = [helper.make_node("Sigmoid", ["relu1"], ["aux_map"], name="aux"),
                 helper.make_node("GlobalAveragePool", ["aux_map"], ["aux"], name="aux_pool")]
    model = cnn(auxiliary, [helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 8, 1, 1])])
    with pytest.raises((TargetNotFoundError, ScoreNotFoundError), match=r"does not (influence|reach) the score"):
        onnx_gradcam.augment(model, target="aux_map")


def test_target_reaching_the_score_only_through_shape_raises_saying_it_does_not_reach_the_score():
    # side_map decides the Flatten target shape, so the score depends on it, but not differentiably.
    nodes = CNN_BODY + [
        helper.make_node("Sigmoid", ["relu1"], ["side_map"], name="side"),
        helper.make_node("Shape", ["side_map"], ["side_shape"], name="side_shape"),
        helper.make_node("Slice", ["side_shape", "zero", "one"], ["batch"], name="batch"),
        helper.make_node("Concat", ["batch", "minus_one"], ["flat_shape"], name="flat_shape", axis=0),
        helper.make_node("GlobalAveragePool", ["relu2"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flat"),
    ] + CNN_HEAD[2:]
    weights = dict(_weights(), zero=np.array([0], np.int64), one=np.array([1], np.int64),
                   minus_one=np.array([-1], np.int64))
    with pytest.raises((TargetNotFoundError, ScoreNotFoundError), match=r"does not (influence|reach) the score"):
        onnx_gradcam.augment(_model(nodes, weights, [PROBABILITIES]), target="side_map")


def test_target_that_is_not_4d_raises_target_not_found():
    with pytest.raises(TargetNotFoundError, match=r"'flat' cannot be used: it is not a 4-D float activation"):
        onnx_gradcam.augment(cnn(), target="flat")


def test_mlp_without_4d_activation_raises_target_not_found():
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Gemm", ["features", "w1", "b1"], ["hidden"], name="fc1"),
             helper.make_node("Relu", ["hidden"], ["hidden_relu"], name="relu"),
             helper.make_node("Gemm", ["hidden_relu", "w2", "b2"], ["logits"], name="fc2")]
    weights = {"w1": rng.standard_normal((20, 32)).astype(np.float32), "b1": np.zeros(32, np.float32),
               "w2": rng.standard_normal((32, CLASSES)).astype(np.float32), "b2": np.zeros(CLASSES, np.float32)}
    model = _model(nodes, weights, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
                   inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 20])])
    with pytest.raises(TargetNotFoundError, match="no 4-D activation"):
        onnx_gradcam.augment(model)
    assert onnx_gradcam.list_targets(model) == []


def test_image_flattened_straight_into_an_mlp_raises_target_not_found():
    # The only 4-D tensor is the graph input itself, which the graph does not compute.
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], name="fc")]
    weights = {"w": rng.standard_normal((CHANNELS * HEIGHT * WIDTH, CLASSES)).astype(np.float32),
               "b": np.zeros(CLASSES, np.float32)}
    model = _model(nodes, weights, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])])
    with pytest.raises(TargetNotFoundError):
        onnx_gradcam.augment(model)
    with pytest.raises(TargetNotFoundError):
        onnx_gradcam.augment(model, target="image")


@pytest.mark.parametrize("op_type, domain", [("Acosh", ""), ("FancyActivation", "com.example")])
def test_op_without_rule_on_the_path_raises_unsupported_op_naming_op_and_node(op_type, domain):
    nodes = CNN_BODY + [helper.make_node(op_type, ["relu2"], ["activated"], name="the_unruly_node", domain=domain),
                        helper.make_node("GlobalAveragePool", ["activated"], ["gap"], name="gap")] + CNN_HEAD[1:]
    model = _model(nodes, _weights(), [PROBABILITIES], extra_opsets=(domain,) if domain else ())
    with pytest.raises(UnsupportedOpError) as raised:
        onnx_gradcam.augment(model, target="relu2")
    message = str(raised.value)
    assert repr(op_type) in message and "the_unruly_node" in message
    if domain:
        assert domain in message


def test_op_without_rule_off_the_path_is_fine():
    # Acosh on a branch that does not lead from the target to the score needs no rule.
    side = [helper.make_node("Acosh", ["relu1"], ["side"], name="side_acosh")]
    onnx_gradcam.augment(cnn(side), target="relu2")


@pytest.fixture
def model_file(tmp_path) -> Callable[[str, bytes], str]:
    def write(name: str, content: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(content)
        return str(path)
    return write


@pytest.mark.parametrize("content", [
    pytest.param(b"", id="empty"),
    pytest.param(b"this is a text file, not a model\n" * 10, id="text"),
    pytest.param(np.random.default_rng(4).integers(0, 256, 4096, dtype=np.uint8).tobytes(), id="random_bytes"),
    pytest.param("truncated", id="truncated_model"),
])
def test_unreadable_model_file_raises_model_load_error(model_file, content):
    if content == "truncated":
        serialized = cnn().SerializeToString()
        content = serialized[: len(serialized) // 2]
    with pytest.raises(ModelLoadError):
        onnx_gradcam.augment(model_file("model.onnx", content))
    with pytest.raises(ModelLoadError):
        onnx_gradcam.list_targets(model_file("model.onnx", content))


def test_missing_path_raises_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        onnx_gradcam.augment(tmp_path / "no_such_model.onnx")


def test_garbage_bytes_raise_model_load_error():
    with pytest.raises(ModelLoadError):
        onnx_gradcam.augment(b"\x08\x07garbage")


def test_augmenting_an_augmented_model_raises_gradcam_error(augmented, tmp_path):
    with pytest.raises(GradCamError, match="already augmented"):
        onnx_gradcam.augment(augmented)
    path = tmp_path / "augmented.onnx"
    onnx.save(augmented, str(path))
    with pytest.raises(GradCamError, match="already augmented"):
        onnx_gradcam.augment(str(path))


# ---------------------------------------------------------------- the augmented model


def test_augment_does_not_modify_its_input():
    model = pooled_cnn()
    before = model.SerializeToString()
    onnx_gradcam.augment(model, target="relu2")  # MaxPool on the path gains an indices output in the copy
    assert model.SerializeToString() == before


def test_augmented_model_passes_onnx_checker(augmented):
    onnx.checker.check_model(augmented, full_check=True)


def test_augmented_interface_inputs_outputs_and_metadata(augmented):
    inputs = {i.name: i for i in augmented.graph.input}
    assert inputs["gradcam_target_class"].type.tensor_type.elem_type == TensorProto.INT64
    outputs = [o.name for o in augmented.graph.output]
    assert outputs[0] == "probabilities" and set(OUTPUTS) <= set(outputs) and "gradcam_heatmap" not in outputs
    metadata = {p.key: p.value for p in augmented.metadata_props}
    assert metadata["gradcam_target"] == "relu2"  # auto: the activation after the last Conv
    assert metadata["gradcam_score"] == "logits"  # auto: walks back over the final Softmax


@pytest.mark.parametrize("build, target", [(cnn, "relu2"), (cnn, "conv2"),
                                          (cnn, "relu1"),
                                          (pooled_cnn, "relu2"),
                                          (pooled_cnn, "pool2")])
def test_original_outputs_are_bit_identical_to_the_plain_model(build, target):
    x = images(4)
    (plain,) = session(build()).run(["probabilities"], {"image": x})
    model = onnx_gradcam.augment(build(), target=target)
    (probabilities,) = session(model).run(["probabilities"], {"image": x, "gradcam_target_class": np.full(4, -1)})
    assert np.array_equal(probabilities, plain)


def test_gradient_class_score_and_logits_match_torch_autograd(augmented_session):
    x = images(4)
    target_class = np.array([-1, 3, 0, -1], np.int64)
    activation, gradient, chosen, score, logits = augmented_session.run(
        OUTPUTS, {"image": x, "gradcam_target_class": target_class})
    activation_expected, gradient_expected, class_expected, logits_expected = torch_oracle(x, target_class)
    np.testing.assert_array_equal(chosen, class_expected)
    assert chosen[0] == logits[0].argmax() and chosen[3] == logits[3].argmax()  # -1 -> the top class
    assert chosen[1] == 3 and chosen[2] == 0  # explicit classes are honoured
    np.testing.assert_array_equal(score, logits[np.arange(4), chosen])
    assert _relative_error(logits, logits_expected) <= 1e-5
    assert _relative_error(activation, activation_expected) <= 1e-5
    assert gradient.shape == activation.shape == (4, 16, HEIGHT // 2, WIDTH // 2)
    assert _relative_error(gradient, gradient_expected) <= GRADIENT_TOLERANCE


def test_gradient_through_conv_and_max_pool_matches_torch_autograd():
    # relu1 -> MaxPool -> Conv -> Relu -> GlobalAveragePool -> Gemm: the Conv and MaxPool rules end to end.
    x = images(3, seed=5)
    target_class = np.array([-1, 6, 2], np.int64)
    model = onnx_gradcam.augment(cnn(), target="relu1")
    activation, gradient, chosen = session(model).run(OUTPUTS[:3], {"image": x, "gradcam_target_class": target_class})
    activation_expected, gradient_expected, class_expected, _ = torch_oracle(x, target_class, target="relu1")
    np.testing.assert_array_equal(chosen, class_expected)
    assert _relative_error(activation, activation_expected) <= 1e-5
    assert gradient.shape == (3, 8, HEIGHT, WIDTH)
    assert _relative_error(gradient, gradient_expected) <= GRADIENT_TOLERANCE


def test_logits_output_is_the_pre_softmax_score(augmented_session):
    x = images(3)
    probabilities, logits = augmented_session.run(["probabilities", "gradcam_logits"],
                                                  {"image": x, "gradcam_target_class": np.full(3, -1)})
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probabilities, expected / expected.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_dynamic_batch_1_3_5_on_one_session_matches_per_image_runs(augmented_session):
    x = images(5, seed=7)
    target_class = np.array([-1, 2, -1, 9, 5], np.int64)
    single = [augmented_session.run(OUTPUTS, {"image": x[i:i + 1], "gradcam_target_class": target_class[i:i + 1]})
              for i in range(5)]
    for batch in (1, 3, 5):
        results = augmented_session.run(OUTPUTS, {"image": x[:batch], "gradcam_target_class": target_class[:batch]})
        for name, result in zip(OUTPUTS, results):
            assert len(result) == batch
            expected = np.concatenate([s[OUTPUTS.index(name)] for s in single[:batch]])
            np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6, err_msg=name)
    _, gradient_expected, class_expected, _ = torch_oracle(x, target_class)
    _, gradient, chosen, _, _ = augmented_session.run(OUTPUTS, {"image": x, "gradcam_target_class": target_class})
    np.testing.assert_array_equal(chosen, class_expected)
    assert _relative_error(gradient, gradient_expected) <= GRADIENT_TOLERANCE


def test_list_targets_returns_4d_tensors_in_graph_order_with_shapes():
    targets = onnx_gradcam.list_targets(cnn([helper.make_node("Sigmoid", ["relu1"], ["unused"], name="unused")]))
    assert [(t.name, t.op_type, t.layout) for t in targets] == [
        ("conv1", "Conv", "NCHW"), ("relu1", "Relu", "NCHW"), ("pool1", "MaxPool", "NCHW"),
        ("conv2", "Conv", "NCHW"), ("relu2", "Relu", "NCHW"), ("gap", "GlobalAveragePool", "NCHW")]
    assert [t.shape for t in targets] == [
        ("N", 8, HEIGHT, WIDTH), ("N", 8, HEIGHT, WIDTH), ("N", 8, HEIGHT // 2, WIDTH // 2),
        ("N", 16, HEIGHT // 2, WIDTH // 2), ("N", 16, HEIGHT // 2, WIDTH // 2), ("N", 16, 1, 1)]


def test_saved_augmented_model_loads_from_path(tmp_path):
    plain_path, augmented_path = tmp_path / "plain.onnx", tmp_path / "out" / "augmented.onnx"
    onnx.save(cnn(), str(plain_path))
    returned = onnx_gradcam.augment(str(plain_path), output=augmented_path)
    assert onnx.load(str(augmented_path)).SerializeToString() == returned.SerializeToString()
    assert [t.name for t in onnx_gradcam.list_targets(plain_path)][-2:] == ["relu2", "gap"]


def _numpy_heatmaps(activation: np.ndarray, gradient: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The Grad-CAM contract of docs/design.md with cv2 INTER_LINEAR (half-pixel centres) as the resize."""
    cv2 = pytest.importorskip("cv2")
    weights = gradient.mean(axis=(2, 3))
    cams = np.maximum(np.einsum("nk,nkhw->nhw", weights, activation), 0)
    maps = np.stack([cv2.resize(cam, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for cam in cams])
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    return (maps - low) / (high - low + np.float32(1e-7))


def _reference_heatmaps(activation: np.ndarray, gradient: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    try:
        from onnx_gradcam.cam.reference import heatmaps
    except ImportError:
        return _numpy_heatmaps(activation, gradient, size)
    return heatmaps(activation, gradient, "gradcam", size=size)


@pytest.mark.parametrize("build, target", [(cnn, "relu2"), (pooled_cnn, "relu2"), (pooled_cnn, "pool2")])
def test_in_graph_heatmap_matches_numpy_reference(build, target):
    model = onnx_gradcam.augment(build(), target=target, heatmap=True)
    onnx.checker.check_model(model, full_check=True)
    x = images(3, seed=11)
    activation, gradient, heatmap = session(model).run(
        ["gradcam_activation", "gradcam_gradient", "gradcam_heatmap"],
        {"image": x, "gradcam_target_class": np.array([-1, 4, 7], np.int64)})
    assert heatmap.shape == (3, HEIGHT, WIDTH) and heatmap.dtype == np.float32
    expected = _reference_heatmaps(activation, gradient, (HEIGHT, WIDTH))
    np.testing.assert_allclose(heatmap, expected, rtol=0, atol=HEATMAP_TOLERANCE)
    np.testing.assert_allclose(heatmap, _numpy_heatmaps(activation, gradient, (HEIGHT, WIDTH)), rtol=0,
                               atol=HEATMAP_TOLERANCE)
    assert heatmap.min() >= 0 and heatmap.max() <= 1


def test_in_graph_heatmap_of_a_constant_map_is_zero_not_nan():
    # With all-zero conv2 weights and biases, relu2 is 0 everywhere: the cam is flat.
    weights = dict(_weights(), w2=np.zeros((16, 8, 3, 3), np.float32), b2=np.zeros(16, np.float32))
    model = _model(CNN_BODY + CNN_HEAD, weights, [PROBABILITIES])
    (heatmap,) = session(onnx_gradcam.augment(model, heatmap=True)).run(
        ["gradcam_heatmap"], {"image": images(2), "gradcam_target_class": np.full(2, -1)})
    assert np.array_equal(heatmap, np.zeros_like(heatmap))
