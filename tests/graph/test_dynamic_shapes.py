"""Models with dynamic batch, height and width, and specializing them with input_shape.

Oracle: central finite differences in float64 of the plain model's head (test_other_exporters helpers).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_gradcam import augment
from onnx_gradcam.errors import InputError
from onnx_gradcam.graph.augment import ACTIVATION, GRADIENT, TARGET_CLASS

from test_other_exporters import CLASSES, RELATIVE_TOLERANCE, Net, finite_difference_gradient, head_model_float64, \
    run


def paddle_dynamic() -> onnx.ModelProto:
    """PaddlePaddle's export of a small classifier at opset 11 with dynamic batch, height and width.

    Conv -> BN -> HardSwish written out (x * Clip(x + 3, 0, 6) / 6) -> MaxPool -> GlobalAveragePool ->
    Reshape to Concat(Slice(Shape)) -> MatMul -> Add -> Softmax: the flattened size is computed at run
    time and ONNX's shape inference cannot follow it, so the head broadcasts shapes unknown at opset 11.
    """
    net = Net(seed=44)
    x = net.op("Conv", "x", net.random([8, 3, 3, 3], 0.5, "conv_w"), kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x = net.op("BatchNormalization", x, net.weight(np.ones(8, np.float32)), net.random([8], 0.1),
               net.random([8], 0.1), net.weight(np.full(8, 0.9, np.float32)), epsilon=1e-5)
    gate = net.op("Clip", net.op("Add", x, net.weight(np.float32(3))), net.weight(np.float32(0)),
                  net.weight(np.float32(6)))
    x = net.op("Div", net.op("Mul", x, gate), net.weight(np.float32(6)), hint="hardswish")
    target = net.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2], hint="pool")
    pooled = net.op("GlobalAveragePool", target)
    shape = net.op("Shape", pooled)
    batch = net.op("Slice", shape, net.weight(np.array([0], np.int64)), net.weight(np.array([1], np.int64)),
                   net.weight(np.array([0], np.int64)))
    flat = net.op("Reshape", pooled, net.op("Concat", batch, net.weight(np.array([-1], np.int64)), axis=0))
    logits = net.op("Add", net.op("MatMul", flat, net.random([8, CLASSES], 0.5, "fc_w")),
                    net.random([CLASSES], 0.1, "fc_b"), hint="logits")
    net.nodes.append(helper.make_node("Softmax", [logits], ["softmax_0.tmp_0"], axis=1))
    return net.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])],
                     [helper.make_tensor_value_info("softmax_0.tmp_0", TensorProto.FLOAT, [-1, CLASSES])],
                     opset=11, producer="PaddlePaddle")


def _head(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float64 head from the target to the logits (the -1 dims named, for ONNX's shape inference)."""
    named = onnx.ModelProto()
    named.CopyFrom(model)
    for number, dim in enumerate(named.graph.input[0].type.tensor_type.shape.dim):
        if dim.dim_value < 0:
            dim.dim_param = f"d{number}"
    return head_model_float64(named, _target(model), _logits(model))


def _target(model: onnx.ModelProto) -> str:
    return next(node.output[0] for node in model.graph.node if node.output[0].startswith("pool"))


def _logits(model: onnx.ModelProto) -> str:
    return next(node.output[0] for node in model.graph.node if node.output[0].startswith("logits"))


@pytest.mark.parametrize("height, width", [(16, 16), (20, 12)])
def test_paddle_dynamic_gradient_matches_finite_differences_at_any_size(height, width):
    plain = paddle_dynamic()
    augmented = augment(plain)
    assert {p.key: p.value for p in augmented.metadata_props}["gradcam_target"] == _target(plain)
    x = np.random.default_rng(height * width).standard_normal((2, 3, height, width)).astype(np.float32)
    classes = np.array([-1, 3], np.int64)
    outputs = run(augmented, {"x": x, TARGET_CLASS: classes})
    np.testing.assert_array_equal(outputs["softmax_0.tmp_0"], run(plain, {"x": x})["softmax_0.tmp_0"])
    activation, gradient = outputs[ACTIVATION], outputs[GRADIENT]
    assert activation.shape == (2, 8, height // 2, width // 2)
    chosen = outputs["gradcam_class"]
    expected = finite_difference_gradient(_head(plain),
                                          activation, chosen)
    error = np.abs(gradient - expected).max() / np.abs(expected).max()
    assert error < RELATIVE_TOLERANCE


def test_input_shape_specializes_height_and_width_and_keeps_the_batch_dynamic():
    plain = paddle_dynamic()
    augmented = augment(plain, input_shape=(3, 24, 16))
    dims = augmented.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") or dims[0].dim_value <= 0
    assert [d.dim_value for d in dims[1:]] == [3, 24, 16]
    (activation_info,) = [o for o in augmented.graph.output if o.name == ACTIVATION]
    assert [d.dim_value for d in activation_info.type.tensor_type.shape.dim[1:]] == [8, 12, 8]
    x = np.random.default_rng(5).standard_normal((3, 3, 24, 16)).astype(np.float32)
    outputs = run(augmented, {"x": x, TARGET_CLASS: np.full(3, -1, np.int64)})
    expected = finite_difference_gradient(_head(plain),
                                          outputs[ACTIVATION], outputs["gradcam_class"])
    assert np.abs(outputs[GRADIENT] - expected).max() / np.abs(expected).max() < RELATIVE_TOLERANCE


@pytest.mark.parametrize("input_shape", [(3, 24), (3, 0, 16), (4, 24, 16)])
def test_input_shape_that_does_not_fit_is_a_clear_error(input_shape):
    plain = paddle_dynamic()
    if input_shape == (4, 24, 16):  # a fixed channel count differs
        plain.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    with pytest.raises(InputError, match="input_shape"):
        augment(plain, input_shape=input_shape)


def _torch_equivalent(model: onnx.ModelProto):
    """paddle_dynamic as a float64 torch function of the image, from the model's own weights."""
    import torch
    from onnx import numpy_helper

    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float64)) for t in model.graph.initializer}
    nodes = {node.op_type: node for node in model.graph.node}
    conv, norm = nodes["Conv"], nodes["BatchNormalization"]
    fc_weight = nodes["MatMul"].input[1]
    bias = next(node.input[1] for node in model.graph.node if node.op_type == "Add" and node.output[0].startswith("logits"))

    def forward(images):
        x = torch.nn.functional.conv2d(images, weights[conv.input[1]], padding=1)
        scale, shift, mean, variance = (weights[name] for name in norm.input[1:])
        x = torch.nn.functional.batch_norm(x, mean, variance, scale, shift, eps=1e-5)
        x = x * torch.clamp(x + 3, 0, 6) / 6
        x = torch.nn.functional.max_pool2d(x, 2, 2)
        return x.mean((2, 3)) @ weights[fc_weight] + weights[bias]

    return forward


@pytest.mark.parametrize("height, width", [(12, 12), (8, 14)])
def test_paddle_dynamic_input_gradient_equals_float64_autograd_at_any_size(height, width):
    import torch

    plain = paddle_dynamic()
    augmented = augment(plain, input_gradient=True)
    x = np.random.default_rng(height + 7 * width).standard_normal((2, 3, height, width)).astype(np.float32)
    outputs = run(augmented, {"x": x, TARGET_CLASS: np.array([-1, 4], np.int64)})
    chosen = outputs["gradcam_class"]
    images = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    logits = _torch_equivalent(plain)(images)
    logits[torch.arange(2), torch.from_numpy(chosen)].sum().backward()
    expected = images.grad.numpy()
    gradient = outputs["gradcam_input_gradient"]
    assert gradient.shape == x.shape
    assert np.abs(gradient - expected).max() <= 1e-4 * np.abs(expected).max()
    # The torch function is the model: its softmax equals the model's output.
    np.testing.assert_allclose(torch.softmax(logits, 1).detach().numpy(), outputs["softmax_0.tmp_0"], atol=1e-5)
