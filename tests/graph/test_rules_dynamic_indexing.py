"""Shape, indexing, resampling and convolution rules where sizes are known only at run time, against
PyTorch autograd (float64); the refusals of those rules; and a whole torchvision ShuffleNetV2.

Each model (x [N, C, H, W] with N, H, W symbolic -> t -> op under test -> y -> y * y averaged over all
but the first two axes -> Gemm) is augmented once and run at two input sizes, so every size the reverse
pass needs (pads, crops, interpolation matrices, scatter positions) is computed in the graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from onnx import TensorProto, helper, numpy_helper

import onnx_gradcam
from onnx_gradcam.errors import UnsupportedOpError
from onnx_gradcam.graph.builder import GraphBuilder
from onnx_gradcam.graph.rules import differentiate

from rule_harness import (CLASSES, GRADIENT_TOLERANCE, OpCase, count_rule_calls, cpu_session, ints, linear_asymmetric,
                          max_relative_error, node, rand)

SIZES = [(2, 7, 9), (3, 10, 6)]  # (N, H, W) the same augmented model runs at
EVEN_SIZES = [(2, 6, 8), (3, 4, 10)]
TARGET_CLASSES = {2: np.array([-1, 1], np.int64), 3: np.array([-1, 1, 4], np.int64)}


@dataclass
class DynamicCase(OpCase):
    """An OpCase on x [N, channels, H, W] with N, H and W symbolic, run at sizes."""

    features: int  # y's size on axis 1
    channels: int = 4
    sizes: list[tuple[int, int, int]] = field(default_factory=lambda: SIZES)


def _same_pads(size: int, kernel: int, stride: int, upper: bool) -> tuple[int, int]:
    total = max(0, (math.ceil(size / stride) - 1) * stride + kernel - size)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def _conv_same(t: torch.Tensor, w: dict, kernel: int, stride: int, upper: bool, groups: int = 1) -> torch.Tensor:
    (top, bottom), (left, right) = (_same_pads(t.shape[axis], kernel, stride, upper) for axis in (2, 3))
    return F.conv2d(F.pad(t, (left, right, top, bottom)), w["w"], w.get("b"), stride, groups=groups)


def _average_pool_excluding_pads(t: torch.Tensor, kernel: int, stride: int, pads: tuple[int, int, int, int],
                                 ceil_mode: bool = False) -> torch.Tensor:
    """AveragePool with count_include_pad=0 and any (left, right, top, bottom) pads: window sums / counts."""
    ones = torch.ones_like(t[:1, :1])
    window_sums = F.avg_pool2d(F.pad(t, pads), kernel, stride, ceil_mode=ceil_mode, divisor_override=1)
    counts = F.avg_pool2d(F.pad(ones, pads), kernel, stride, ceil_mode=ceil_mode, divisor_override=1)
    return window_sums / counts


def _average_pool_same(t: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    (top, bottom), (left, right) = (_same_pads(t.shape[axis], kernel, stride, True) for axis in (2, 3))
    return _average_pool_excluding_pads(t, kernel, stride, (left, right, top, bottom))


def _pixel_unshuffle_dcr(t: torch.Tensor, block: int) -> torch.Tensor:
    n, c, h, w = t.shape
    blocks = t.reshape(n, c, h // block, block, w // block, block)
    return blocks.permute(0, 3, 5, 1, 2, 4).reshape(n, c * block ** 2, h // block, w // block)


RESIZE_X2 = {"scales": np.array([1, 1, 2, 2], np.float32)}
# t reshaped to a shape shape inference cannot follow (Abs hides the Shape value): every dim unknown.
HIDE_SHAPE = [node("Shape", ["t"], ["shape_of_t"]), node("Abs", ["shape_of_t"], ["hidden_shape"]),
              node("Reshape", ["t", "hidden_shape"], ["hidden"])]
SHAPE = node("Shape", ["t"], ["t_shape"])

CASES = [
    DynamicCase("Conv", "k3_s2_p1", [node("Conv", ["t", "w", "b"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                          pads=[1, 1, 1, 1])],
                lambda t, w: F.conv2d(t, w["w"], w["b"], 2, 1), 5, init={"w": rand(5, 4, 3, 3), "b": rand(5)}),
    DynamicCase("Conv", "k2_s3_rows_no_window_reads", [node("Conv", ["t", "w"], ["y"], kernel_shape=[2, 2],
                                                            strides=[3, 3])],
                lambda t, w: F.conv2d(t, w["w"], stride=3), 3, init={"w": rand(3, 4, 2, 2)}),
    DynamicCase("Conv", "same_upper_k3_s2", [node("Conv", ["t", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                                  auto_pad="SAME_UPPER")],
                lambda t, w: _conv_same(t, w, 3, 2, True), 3, init={"w": rand(3, 4, 3, 3)}),
    DynamicCase("Conv", "same_lower_k4_s3", [node("Conv", ["t", "w"], ["y"], kernel_shape=[4, 4], strides=[3, 3],
                                                  auto_pad="SAME_LOWER")],
                lambda t, w: _conv_same(t, w, 4, 3, False), 3, init={"w": rand(3, 4, 4, 4)}, opset=11),
    DynamicCase("Conv", "depthwise_same_upper_s1", [node("Conv", ["t", "w"], ["y"], kernel_shape=[3, 3], group=4,
                                                         auto_pad="SAME_UPPER")],
                lambda t, w: _conv_same(t, w, 3, 1, True, groups=4), 4, init={"w": rand(4, 1, 3, 3)}),
    DynamicCase("AveragePool", "k3_s2_p1_ceil", [node("AveragePool", ["t"], ["y"], kernel_shape=[3, 3],
                                                      strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)],
                lambda t, w: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False), 4),
    DynamicCase("AveragePool", "k3_s2_p1_count_include_pad", [
        node("AveragePool", ["t"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
             count_include_pad=1)],
        lambda t, w: F.avg_pool2d(t, 3, 2, 1), 4),
    DynamicCase("AveragePool", "same_upper_k3_s2", [node("AveragePool", ["t"], ["y"], kernel_shape=[3, 3],
                                                         strides=[2, 2], auto_pad="SAME_UPPER")],
                lambda t, w: _average_pool_same(t, 3, 2), 4),
    DynamicCase("AveragePool", "channels_unknown", HIDE_SHAPE + [
        node("AveragePool", ["hidden"], ["y"], kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 1])],
        lambda t, w: _average_pool_excluding_pads(t, (2, 3), 2, (1, 1, 0, 1)), 4),
    DynamicCase("MaxPool", "k3_s2_p1", [node("MaxPool", ["t"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 1, 1, 1])],
                lambda t, w: F.max_pool2d(t, 3, 2, 1), 4),
    DynamicCase("ConvTranspose", "k3_s2_p1_output_padding1", [
        node("ConvTranspose", ["t", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
             output_padding=[1, 1])],
        lambda t, w: F.conv_transpose2d(t, w["w"], stride=2, padding=1, output_padding=1), 3,
        init={"w": rand(4, 3, 3, 3)}),
    DynamicCase("Resize", "bilinear_x2", [node("Resize", ["t", "", "scales"], ["y"], mode="linear")],
                lambda t, w: F.interpolate(t, scale_factor=2, mode="bilinear"), 4, init=RESIZE_X2),
    DynamicCase("Resize", "nearest_x2", [node("Resize", ["t", "", "scales"], ["y"], mode="nearest",
                                              coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                lambda t, w: F.interpolate(t, scale_factor=2, mode="nearest"), 4, init=RESIZE_X2),
    DynamicCase("Resize", "bicubic_align_corners_x1.5", [
        node("Resize", ["t", "", "scales"], ["y"], mode="cubic", coordinate_transformation_mode="align_corners")],
        lambda t, w: F.interpolate(t, scale_factor=1.5, mode="bicubic", align_corners=True), 4,
        init={"scales": np.array([1, 1, 1.5, 1.5], np.float32)}),
    DynamicCase("Resize", "sizes_twice_the_input", [
        SHAPE, node("Mul", ["t_shape", "factors"], ["sizes"]),
        node("Resize", ["t", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode="align_corners")],
        lambda t, w: F.interpolate(t, size=(2 * t.shape[2], 2 * t.shape[3]), mode="bilinear", align_corners=True), 4,
        init={"factors": ints(1, 1, 2, 2)}),
    DynamicCase("Slice", "crop_and_step_over_unknown_sizes", [
        node("Slice", ["t", "starts", "ends", "axes", "steps"], ["y"])],
        lambda t, w: t[:, :, 1:-1, ::2], 4,
        init={"starts": ints(1, 0), "ends": ints(-1, 1000), "axes": ints(2, 3), "steps": ints(1, 2)}),
    DynamicCase("Slice", "step1_bounds_from_the_end", [node("Slice", ["t", "starts", "ends", "axes"], ["y"])],
                lambda t, w: t[:, :, 1:-1, -3:], 4,
                init={"starts": ints(1, -3), "ends": ints(-1, np.iinfo(np.int64).max), "axes": ints(2, -1)}),
    DynamicCase("Pad", "static_pads_unknown_sizes", [node("Pad", ["t", "pads"], ["y"])],
                lambda t, w: F.pad(t, (2, -1, 1, 0)), 4, init={"pads": ints(0, 0, 1, 2, 0, 0, 0, -1)}),
    *(DynamicCase("Gather", f"unknown_axis_length_opset{opset}", [node("Gather", ["t", "i"], ["y"], axis=2)],
                  lambda t, w: t[:, :, torch.tensor([[0, -1], [1, 0]])], 4, init={"i": np.array([[0, -1], [1, 0]])},
                  opset=opset) for opset in (13, 17)),
    DynamicCase("GatherElements", "computed_indices", [node("ArgMax", ["t"], ["i"], axis=3, keepdims=1),
                                                       node("GatherElements", ["t", "i"], ["y"], axis=3)],
                lambda t, w: t.gather(3, t.argmax(3, keepdim=True)), 4),
    # Before opset 16 ScatterElements cannot add: augment converts the model to opset 16 for this rule.
    DynamicCase("GatherElements", "computed_indices_before_opset16", [
        node("ArgMax", ["t"], ["i"], axis=2, keepdims=1), node("GatherElements", ["t", "i"], ["y"], axis=2)],
        lambda t, w: t.gather(2, t.argmax(2, keepdim=True)), 4, opset=13),
    DynamicCase("DepthToSpace", "crd", [node("DepthToSpace", ["t"], ["y"], blocksize=2, mode="CRD")],
                lambda t, w: F.pixel_shuffle(t, 2), 1),
    DynamicCase("SpaceToDepth", "block2", [node("SpaceToDepth", ["t"], ["y"], blocksize=2)],
                lambda t, w: _pixel_unshuffle_dcr(t, 2), 16, sizes=EVEN_SIZES),
    DynamicCase("Tile", "spatial", [node("Tile", ["t", "repeats"], ["y"])], lambda t, w: t.repeat(1, 1, 2, 3), 4,
                init={"repeats": ints(1, 1, 2, 3)}),
    DynamicCase("Expand", "pooled_to_the_map", [
        node("GlobalAveragePool", ["t"], ["g"]), SHAPE, node("Expand", ["g", "t_shape"], ["e"]),
        node("Mul", ["e", "t"], ["y"])],
                lambda t, w: t.mean((2, 3), keepdim=True) * t, 4),
    DynamicCase("Einsum", "mask_head_bchw_bkc", [
        node("ReduceMean", ["t"], ["m"], axes=[3], keepdims=0), node("Transpose", ["m"], ["q"], perm=[0, 2, 1]),
        node("Einsum", ["t", "q"], ["e"], equation="bchw,bkc->bkhw"), node("ReduceMean", ["e"], ["y"], axes=[1])],
        lambda t, w: torch.einsum("bchw,bkc->bkhw", t, t.mean(3).transpose(1, 2)).mean(1, keepdim=True), 1),
    DynamicCase("MatMul", "gram_of_rows", [node("Transpose", ["t"], ["tt"], perm=[0, 1, 3, 2]),
                                           node("MatMul", ["t", "tt"], ["y"])],
                lambda t, w: t @ t.transpose(2, 3), 4),
]


def build_model(test_case: DynamicCase, head_weight: np.ndarray, head_bias: np.ndarray) -> onnx.ModelProto:
    """x [N, C, H, W] (N, H, W symbolic) -> t -> case nodes -> y -> mean of y * y per feature -> Gemm."""
    head = [node("Reshape", ["y", "head_shape"], ["y3"]), node("Mul", ["y3", "y3"], ["squares"]),
            node("ReduceMean", ["squares"], ["features"], axes=[2], keepdims=0),
            node("Gemm", ["features", "head_w", "head_b"], ["logits"])]
    weights = dict(test_case.init, head_w=head_weight, head_b=head_bias, head_shape=ints(0, test_case.features, -1))
    graph = helper.make_graph(
        [node("Identity", ["x"], ["t"])] + test_case.nodes + head, "dynamic_rule_test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", test_case.channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", test_case.opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _autograd(test_case: DynamicCase, x: np.ndarray, head_weight, head_bias, classes) -> tuple[np.ndarray, np.ndarray]:
    target = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = test_case.torch(target, test_case.torch_weights())
    features = (y.reshape(len(x), test_case.features, -1) ** 2).mean(2)
    logits = features @ torch.from_numpy(head_weight.astype(np.float64)) + torch.from_numpy(
        head_bias.astype(np.float64))
    chosen = np.where(classes < 0, logits.detach().numpy().argmax(1), classes)
    logits[torch.arange(len(x)), torch.from_numpy(chosen)].sum().backward()
    return chosen, target.grad.numpy()


@pytest.mark.parametrize("test_case", [pytest.param(c, id=c.id) for c in CASES])
def test_one_augmented_model_matches_torch_autograd_at_two_sizes(test_case: DynamicCase, monkeypatch):
    rng = np.random.default_rng(len(test_case.id) * 7919 + test_case.opset)
    head_weight = rng.standard_normal((test_case.features, CLASSES)).astype(np.float32)
    head_bias = rng.standard_normal(CLASSES).astype(np.float32)
    calls = count_rule_calls(monkeypatch, test_case.op)
    augmented = onnx_gradcam.augment(build_model(test_case, head_weight, head_bias), target="t")
    assert calls, f"the {test_case.op} rule was never applied"
    session = cpu_session(augmented)
    for batch, height, width in test_case.sizes:
        x = rng.standard_normal((batch, test_case.channels, height, width)).astype(np.float32)
        classes = TARGET_CLASSES[batch]
        gradient, chosen = session.run(["gradcam_gradient", "gradcam_class"],
                                       {"x": x, "gradcam_target_class": classes})
        expected_classes, expected = _autograd(test_case, x, head_weight, head_bias, classes)
        np.testing.assert_array_equal(chosen, expected_classes)
        assert gradient.shape == x.shape
        error = max_relative_error(gradient, expected)
        assert error <= GRADIENT_TOLERANCE, f"at {(batch, height, width)}: max abs error {error:.3g} of the max"


def test_static_conv_and_pools_need_no_run_time_shapes():
    """With every size known, strided Conv, AveragePool and MaxPool gradients are single ConvTranspose /
    scatter paths with constant geometry: no Pad or size arithmetic is added to the reverse pass."""
    nodes = [node("Conv", ["t", "w"], ["c"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("AveragePool", ["c"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("MaxPool", ["a"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(
        [node("Identity", ["x"], ["t"])] + nodes + [node("Flatten", ["y"], ["f"]),
                                                    node("Gemm", ["f", "head_w"], ["logits"])], "static",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(rand(4, 3, 3, 3), "w"), numpy_helper.from_array(rand(4 * 2 * 2, CLASSES), "head_w")])
    augmented = onnx_gradcam.augment(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                     target="t")
    added = [n.op_type for n in augmented.graph.node if n.name.startswith("gradcam/")]
    assert added.count("ConvTranspose") == 2
    assert "Pad" not in added and added.count("Range") == 1  # the one Range is the seed's class one-hot


# ---------------------------------------------------------------- refusals


def _refusal_model(nodes: list[onnx.NodeProto], init: dict, opset: int = 17, features: int = 4) -> onnx.ModelProto:
    test_case = DynamicCase("", "", nodes, lambda t, w: t, features, init=init, opset=opset)
    rng = np.random.default_rng(0)
    return build_model(test_case, rng.standard_normal((features, CLASSES)).astype(np.float32),
                       np.zeros(CLASSES, np.float32))


REFUSALS = [
    pytest.param([node("Einsum", ["t", "t"], ["y"], equation="bcii,bcjk->bcjk")], {}, 17, "diagonal",
                 id="Einsum-diagonal_of_an_operand_that_needs_a_gradient"),
    pytest.param([node("Resize", ["t", "roi", "scales"], ["y"], mode="linear",
                       coordinate_transformation_mode="tf_crop_and_resize")],
                 {"roi": np.array([0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9], np.float32),
                  "scales": np.array([1, 1, 2, 2], np.float32)}, 13, "tf_crop_and_resize",
                 id="Resize-tf_crop_and_resize"),
    pytest.param([node("Pad", ["t", "pads"], ["y"], mode="edge")], {"pads": ints(0, 0, 1, 1, 0, 0, 1, 1)}, 17,
                 "only constant padding", id="Pad-edge"),
    pytest.param([node("Mul", ["t", "t"], ["w"]),
                  node("ConvTranspose", ["t", "w"], ["y"], kernel_shape=[1, 1])], {}, 17, "weights",
                 id="ConvTranspose-weight_computed_from_the_target"),
]


@pytest.mark.parametrize("nodes, init, opset, match", REFUSALS)
def test_rule_refuses_with_unsupported_op_error(nodes, init, opset, match):
    with pytest.raises(UnsupportedOpError, match=match):
        onnx_gradcam.augment(_refusal_model(nodes, init, opset), target="t")


# ---------------------------------------------------------------- antialiased Resize (no torch equivalent)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_antialiased_resize_gradient_is_the_adjoint_of_onnxruntimes_forward(mode):
    """ONNX Runtime's antialiased downsampling (opset 18) is not torch's, so the oracle is the forward op
    itself: a resize is linear, so <dy, Resize(x)> = <dx, x> for every x."""
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, antialias=1, name="resize")
    graph = helper.make_graph(
        [resize], "antialias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"]),
                                helper.make_tensor_value_info("dy", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 1, 0.4, 0.6], np.float32), "scales")])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    b = GraphBuilder(model)
    (gradient, *_) = differentiate(resize, ["dy"], [True, False, False], b)
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    model.graph.output.append(helper.make_tensor_value_info(gradient, TensorProto.FLOAT, None))
    session = cpu_session(model)
    rng = np.random.default_rng(5)
    for height, width in ((12, 10), (9, 16)):
        x = rng.standard_normal((2, 3, height, width)).astype(np.float32)
        seed = rng.standard_normal((2, 3, int(height * 0.4), int(width * 0.6))).astype(np.float32)
        dx = session.run([gradient], {"x": x, "dy": seed})[0]
        for probe in rng.standard_normal((3,) + x.shape).astype(np.float32):
            resized = session.run(["y"], {"x": probe, "dy": seed})[0]
            assert np.isclose(np.vdot(seed.astype(np.float64), resized), np.vdot(dx.astype(np.float64), probe),
                              rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- Upsample (opset <= 9)


def test_upsample_rule_matches_torch_autograd():
    """The Upsample rule on an opset-9 graph, run directly: augment converts such models to opset 11,
    where the ONNX version converter rewrites Upsample as a half_pixel Resize."""
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    seed = np.random.default_rng(2).standard_normal((2, 3, 8, 7)).astype(np.float32)
    scales = np.array([1, 1, 2, 1.5], np.float32)
    for mode, function in (("nearest", lambda t: F.interpolate(t, scale_factor=(2, 1.5), mode="nearest")),
                           ("linear", lambda t: linear_asymmetric(t, (2, 1.5)))):
        upsample = helper.make_node("Upsample", ["x", "scales"], ["y"], mode=mode, name="up")
        graph = helper.make_graph(
            [upsample], "upsample", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 5]),
                                     helper.make_tensor_value_info("dy", TensorProto.FLOAT, ["N", 3, 8, 7])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(scales, "scales")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
        model = onnx.shape_inference.infer_shapes(model)
        b = GraphBuilder(model)
        (gradient, _) = differentiate(upsample, ["dy"], [True, False], b)
        model.graph.node.extend(b.nodes)
        model.graph.initializer.extend(b.initializers)
        model.graph.output.append(helper.make_tensor_value_info(gradient, TensorProto.FLOAT, None))
        dx = cpu_session(model).run([gradient], {"x": x, "dy": seed})[0]
        target = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        (function(target) * torch.from_numpy(seed.astype(np.float64))).sum().backward()
        assert max_relative_error(dx, target.grad.numpy()) <= GRADIENT_TOLERANCE, mode


# ---------------------------------------------------------------- ShuffleNetV2 with dynamic batch


@pytest.mark.slow
def test_shufflenet_v2_input_gradient_equals_autograd(tmp_path):
    """torchvision's shufflenet_v2_x0_5 (seeded random weights) exported with a dynamic batch: ONNX shape
    inference loses the sizes after its channel-shuffle Reshape, so every later Conv, Slice and
    Concat is differentiated from run-time shapes."""
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5().eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "shufflenet.onnx"
    torch.onnx.export(model, (images,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    augmented = onnx_gradcam.augment(path, input_gradient=True)
    classes = np.array([-1, 7], np.int64)
    gradient, chosen = cpu_session(augmented).run(["gradcam_input_gradient", "gradcam_class"],
                                               {"input": images.numpy(), "gradcam_target_class": classes})
    inputs = images.double().requires_grad_(True)
    logits = model.double()(inputs)
    logits.gather(1, torch.as_tensor(chosen)[:, None]).sum().backward()
    np.testing.assert_array_equal(chosen[1:], classes[1:])
    assert chosen[0] == int(logits[0].argmax())
    assert max_relative_error(gradient, inputs.grad.numpy()) <= 1e-4
