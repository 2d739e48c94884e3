"""Score-CAM and Ablation-CAM (cam.gradient_free) and the target -> score head they run (graph.head).

Oracles: pytorch-grad-cam's ScoreCAM and AblationCAM on torchvision resnet18 (seeded random weights) and on
a small CNN whose target goes negative; torch.nn.functional.interpolate(align_corners=True) for the
upsampling; ONNX Runtime on the whole model for the head's logits; for channels-last graphs, the same
model built channels-first; for chunking and fixed batches, the same explanation in one run.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
import torchvision
from onnx import TensorProto, helper, numpy_helper
from pytorch_grad_cam import AblationCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import onnx_gradcam
from onnx_gradcam.cam.gradient_free import align_corners_matrix, explain_gradient_free
from onnx_gradcam.cam.methods import Family, get_method
from onnx_gradcam.cli import build_parser
from onnx_gradcam.errors import InputError, TargetNotFoundError
from onnx_gradcam.explainer import Explainer
from onnx_gradcam.graph.augment import ACTIVATION, LOGITS, augmented_metadata
from onnx_gradcam.graph.head import extract_head

PROVIDERS = ["CPUExecutionProvider"]
SIZE = (33, 40)  # resnet18's layer4 is 2x2 here: 2 x 512 masked images stay cheap
LAYER4 = "/layer4/layer4.1/relu_1/Relu_output_0"  # torchvision resnet18's layer4 output, TorchScript names
INSIDE_LAYER4 = "/layer4/layer4.1/conv2/Conv_output_0"  # before the residual Add of layer4.1
SKIP = "/layer4/layer4.0/relu_1/Relu_output_0"  # the identity path around it


@pytest.fixture
def dispatching(monkeypatch):
    """Explainer.explain with the gradient-free runner in its per-family dispatch (Explainer._runner)."""
    original = Explainer._runner

    def runner(self, entry):
        if entry.family == Family.GRADIENT_FREE:
            return partial(explain_gradient_free, self)
        return original(self, entry)

    monkeypatch.setattr(Explainer, "_runner", runner)


def _export(model: nn.Module, images: torch.Tensor, path, dynamic: bool = True) -> None:
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    torch.onnx.export(model, (images,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes=axes)


@pytest.fixture(scope="module")
def resnet18_case(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("resnet18") / "resnet18.onnx"
    _export(model, images, path)
    augmented = onnx_gradcam.augment(path)
    assert augmented_metadata(augmented)["target"] == LAYER4
    return model, images, path, augmented, Explainer(augmented)


def _peer(peer_class, model, images, classes, **options) -> np.ndarray:
    peer = peer_class(model, [model.layer4] if hasattr(model, "layer4") else [model.conv2], **options)
    try:
        return peer(images, [ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        peer.activations_and_grads.release()


# ---------------------------------------------------------------- pytorch-grad-cam on resnet18

def test_scorecam_through_explain_equals_pytorch_grad_cam_scorecam_on_resnet18(resnet18_case, dispatching):
    model, images, _, _, explainer = resnet18_case
    ours = explainer.explain(images.numpy(), target_class=[-1, 7], method="score-cam", keep_tensors=True)
    layer4 = {}
    handle = model.layer4.register_forward_hook(lambda module, inputs, output: layer4.update(output=output))
    with torch.no_grad():
        model(images)
    handle.remove()
    np.testing.assert_allclose(ours.activation, layer4["output"].numpy(), rtol=0, atol=1e-4)
    constant = ours.activation.max(axis=(2, 3)) == ours.activation.min(axis=(2, 3))
    assert constant.any() and not constant.all()  # both the shortcut and the masked runs are exercised
    peer = ScoreCAM(model, [model.layer4])
    peer.batch_size = 64  # ScoreCAM reads batch_size as an attribute (16 when absent)
    try:
        expected = peer(images, [ClassifierOutputTarget(int(c)) for c in ours.classes])
    finally:
        peer.activations_and_grads.release()
    assert ours.method == "scorecam" and ours.heatmaps.shape == expected.shape == (2, *SIZE)
    assert ours.classes[1] == 7
    np.testing.assert_allclose(ours.heatmaps, expected, rtol=0, atol=1e-4)


def test_ablationcam_equals_pytorch_grad_cam_ablationcam_on_resnet18(resnet18_case):
    model, images, _, _, explainer = resnet18_case
    classes = np.array([3, -1], np.int64)
    ours = explain_gradient_free(explainer, images.numpy(), classes, "ablationcam", SIZE, batch_size=64)
    expected = _peer(AblationCAM, model, images, ours.classes, batch_size=64)
    assert ours.method == "ablationcam" and ours.classes[0] == 3
    np.testing.assert_allclose(ours.heatmaps, expected, rtol=0, atol=1e-4)
    # Rows are chunked across images: any batch_size gives the same map.
    chunked = explain_gradient_free(explainer, images.numpy(), classes, "ablationcam", SIZE, batch_size=37)
    np.testing.assert_allclose(chunked.heatmaps, ours.heatmaps, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- the head

def test_resnet18_head_is_pooling_and_classifier_and_its_logits_equal_the_full_model(resnet18_case):
    _, images, path, augmented, _ = resnet18_case
    head = extract_head(augmented, LAYER4, "logits")
    assert [node.op_type for node in head.graph.node] == ["GlobalAveragePool", "Flatten", "Gemm"]
    assert [value.name for value in head.graph.input] == [LAYER4]
    full = onnxruntime.InferenceSession(str(path), providers=PROVIDERS)
    augmented_session = onnxruntime.InferenceSession(augmented.SerializeToString(), providers=PROVIDERS)
    activation, = augmented_session.run([ACTIVATION], {"input": images.numpy(),
                                                       "gradcam_target_class": np.array([-1, -1])})
    head_session = onnxruntime.InferenceSession(head.SerializeToString(), providers=PROVIDERS)
    np.testing.assert_allclose(head_session.run(None, {LAYER4: activation})[0],
                               full.run(None, {"input": images.numpy()})[0], rtol=1e-5, atol=1e-5)


def test_a_head_with_a_skip_connection_around_the_target_is_refused_naming_the_skip(resnet18_case):
    _, images, path, _, _ = resnet18_case
    with pytest.raises(TargetNotFoundError, match=f"also reads '{SKIP}'.*the model input input.*scorecam"):
        extract_head(onnx.load(str(path)), INSIDE_LAYER4, "logits")
    explainer = Explainer(onnx_gradcam.augment(path, target=INSIDE_LAYER4))
    with pytest.raises(TargetNotFoundError, match="skip connection"):
        explain_gradient_free(explainer, images.numpy(), np.array([-1, -1]), "ablationcam", SIZE)


def test_a_score_that_does_not_depend_on_the_target_is_refused(resnet18_case):
    _, _, path, _, _ = resnet18_case
    with pytest.raises(onnx_gradcam.ScoreNotFoundError, match="does not depend on the target"):
        extract_head(onnx.load(str(path)), LAYER4, "/layer4/layer4.0/conv1/Conv_output_0")


# ---------------------------------------------------------------- a target that goes negative

class SmallCNN(nn.Module):
    """conv -> ReLU -> conv (the target, negative values) -> mean -> linear: nothing clamps the ablation value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    images = torch.randn(3, 3, 12, 16, generator=torch.Generator().manual_seed(1))
    folder = tmp_path_factory.mktemp("small")
    _export(model, images, folder / "dynamic.onnx")
    _export(model, images, folder / "static.onnx", dynamic=False)
    target = "/conv2/Conv_output_0"
    return model, images, [Explainer(onnx_gradcam.augment(folder / name, target=target))
                           for name in ("dynamic.onnx", "static.onnx")]


def test_ablationcam_of_a_negative_target_equals_pytorch_grad_cam_at_batch_size_1(small_case):
    """The ablation value is min - 1e7; pytorch-grad-cam subtracts 1e7 once more per row of its batch."""
    model, images, (explainer, _) = small_case
    ours = explain_gradient_free(explainer, images.numpy(), np.array([-1, 2, -1]), "ablationcam", (12, 16),
                                 batch_size=4, keep_tensors=True)
    assert (ours.activation.min(axis=(1, 2, 3)) < 0).all()
    expected = _peer(AblationCAM, model, images, ours.classes, batch_size=1)
    np.testing.assert_allclose(ours.heatmaps, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_fixed_batch_models_and_chunks_give_the_same_maps_through_explain(small_case, dispatching, method):
    model, images, (dynamic, static) = small_case
    whole = dynamic.explain(images.numpy(), target_class=[1, -1, 4], method=method)
    padded = static.explain(images.numpy(), target_class=[1, -1, 4], method=method)  # runs of exactly 3 rows
    np.testing.assert_allclose(padded.heatmaps, whole.heatmaps, rtol=0, atol=1e-5)
    chunked = explain_gradient_free(dynamic, images.numpy(), np.array([1, -1, 4]), method, (12, 16), batch_size=5)
    np.testing.assert_allclose(chunked.heatmaps, whole.heatmaps, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(whole.classes, padded.classes)
    if method == "scorecam":
        np.testing.assert_allclose(whole.heatmaps, _peer(ScoreCAM, model, images, whole.classes), rtol=0, atol=1e-4)


# ---------------------------------------------------------------- layouts

def _graph(input_nhwc: bool, target_nhwc: bool) -> onnx.ModelProto:
    """image -> Conv (8 channels, stride 2) -> Relu ("block") -> mean over h, w -> Gemm, with the image and/or
    the block channels-last (Transposes around the same weights)."""
    rng = np.random.default_rng(5)
    weights = {"conv_w": rng.standard_normal((8, 3, 3, 3)), "conv_b": rng.standard_normal(8),
               "head_w": rng.standard_normal((5, 8)), "head_b": rng.standard_normal(5)}
    nodes, image = [], "image"
    if input_nhwc:
        nodes.append(helper.make_node("Transpose", ["image"], ["image_nchw"], perm=[0, 3, 1, 2]))
        image = "image_nchw"
    nodes.append(helper.make_node("Conv", [image, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2]))
    if target_nhwc:
        nodes.append(helper.make_node("Transpose", ["conv"], ["conv_nhwc"], perm=[0, 2, 3, 1]))
    nodes.append(helper.make_node("Relu", ["conv_nhwc" if target_nhwc else "conv"], ["block"]))
    nodes.append(helper.make_node("ReduceMean", ["block"], ["pooled"], axes=[1, 2] if target_nhwc else [2, 3],
                                  keepdims=0))
    nodes.append(helper.make_node("Gemm", ["pooled", "head_w", "head_b"], ["logits"], transB=1))
    shape = ["N", 12, 16, 3] if input_nhwc else ["N", 3, 12, 16]
    graph = helper.make_graph(nodes, "layouts", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(value.astype(np.float32), name)
                               for name, value in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
@pytest.mark.parametrize("input_nhwc, target_nhwc", [(False, True), (True, False)],
                         ids=["nhwc_target", "nhwc_input"])
def test_channels_last_graphs_give_the_maps_of_the_channels_first_graph(method, input_nhwc, target_nhwc):
    images = np.random.default_rng(6).standard_normal((2, 3, 12, 16)).astype(np.float32)
    expected = explain_gradient_free(Explainer(onnx_gradcam.augment(_graph(False, False))), images,
                                     np.array([-1, 3]), method, (12, 16))
    augmented = onnx_gradcam.augment(_graph(input_nhwc, target_nhwc), target="block")
    metadata = augmented_metadata(augmented)
    assert (metadata["input_layout"], metadata["target_layout"]) == (
        "NHWC" if input_nhwc else "NCHW", "NHWC" if target_nhwc else "NCHW")
    batch = images.transpose(0, 2, 3, 1).copy() if input_nhwc else images
    ours = explain_gradient_free(Explainer(augmented), batch, np.array([-1, 3]), method, (12, 16))
    np.testing.assert_allclose(ours.heatmaps, expected.heatmaps, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- pieces and the registry

@pytest.mark.parametrize("source, size", [(2, 40), (7, 224), (5, 5), (6, 3), (1, 4), (3, 1)])
def test_align_corners_upsampling_equals_torch_interpolate(source, size):
    maps = torch.randn(4, source, source + 1, generator=torch.Generator().manual_seed(source))
    expected = F.interpolate(maps[:, None], size=(size, size + 2), mode="bilinear", align_corners=True)[:, 0]
    ours = align_corners_matrix(source, size) @ maps.numpy() @ align_corners_matrix(source + 1, size + 2).T
    np.testing.assert_allclose(ours, expected.numpy(), rtol=0, atol=1e-6)


def test_gradient_free_entries_reach_the_cli_and_check_their_options(small_case):
    for name, forward in (("scorecam", "model"), ("ablationcam", "head")):
        entry = get_method(name)
        assert entry.family == Family.GRADIENT_FREE and entry.forward == forward
        assert entry.options == {"batch_size": 64} and entry.augment_flags == {} and not entry.uses_gradient
    subcommands = next(action for action in build_parser()._actions if action.dest == "command")
    for command in ("explain", "audit"):
        choices = next(a for a in subcommands.choices[command]._actions if a.dest == "method").choices
        assert {"scorecam", "ablationcam"} <= set(choices)
    _, images, (explainer, _) = small_case
    with pytest.raises(InputError, match="batch_size must be an int >= 1"):
        explain_gradient_free(explainer, images.numpy(), np.array([-1, -1, -1]), "scorecam", (12, 16), batch_size=0)
    with pytest.raises(InputError, match="not of the gradient_free family"):
        explain_gradient_free(explainer, images.numpy(), np.array([-1, -1, -1]), "gradcam", (12, 16))
    assert LOGITS in explainer.output_names


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_one_hot_seeds_give_the_maps_of_their_classes(small_case, tmp_path, method):
    """On a model augmented with seed=True the score of a row is sum(seed * logits): a one-hot seed is a class."""
    model, images, (explainer, _) = small_case
    path = tmp_path / "small.onnx"
    _export(model, images, path)
    seeded = Explainer(onnx_gradcam.augment(path, target="/conv2/Conv_output_0", seed=True))
    classes = np.array([1, 0, 4])
    seeds = np.eye(5, dtype=np.float32)[classes]
    ours = explain_gradient_free(seeded, images.numpy(), seeds, method, (12, 16))
    expected = explain_gradient_free(explainer, images.numpy(), classes, method, (12, 16))
    np.testing.assert_allclose(ours.heatmaps, expected.heatmaps, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.scores, expected.scores, rtol=1e-6)
