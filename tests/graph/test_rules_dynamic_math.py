"""Math, normalization and reduction rules on models with dynamic batch, height and width, against
PyTorch autograd (float64).

Each model (x [N, C, H, W] with N, H, W symbolic -> t -> op under test -> y [N, C, ...] -> mean over
the trailing axes -> Gemm) is augmented once and run at two input sizes, so every size the reverse
pass needs is computed in the graph.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import onnx_gradcam

from rule_cases_math import group_norm
from rule_harness import (CLASSES, GRADIENT_TOLERANCE, OpCase, count_rule_calls, ints, max_relative_error, node,
                          rand, run, scalar)

augment_module = importlib.import_module("onnx_gradcam.graph.augment")  # the package exports the function
SIZES = [(2, 5, 7), (3, 4, 4)]  # (N, H, W) the same augmented model runs at


@dataclass
class DynamicCase(OpCase):
    """An OpCase on x [N, channels, H, W] with N, H and W symbolic."""

    channels: int = 4
    deprecated: bool = False  # uses an op onnx.checker refuses as deprecated (ONNX Runtime runs it)


def _tokens(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)


def _attention(t: torch.Tensor) -> torch.Tensor:
    tokens = _tokens(t)
    weights = F.softmax(tokens @ tokens.transpose(1, 2) / 2.0, -1)
    return (weights @ tokens).transpose(1, 2)


def _gap(t: torch.Tensor) -> torch.Tensor:
    return t.mean((2, 3), keepdim=True)


TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
TOKENS = [node("Reshape", ["t", "flat_shape"], ["flat"]), node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1])]
GAP = node("GlobalAveragePool", ["t"], ["g"])
# After a per-channel normalization the spatial mean of the head is constant: a Tanh makes it depend on t.
SQUASH = node("Tanh", ["n"], ["y"])
RUNTIME_AXES = [node("Shape", ["t"], ["t_shape"]), node("Size", ["t_shape"], ["rank"]),
                node("Range", ["two", "rank", "one"], ["axes"])]  # [2, 3], known only at run time

CASES = [
    DynamicCase("LayerNormalization", "channels_last",
                [node("Transpose", ["t"], ["nhwc"], perm=TO_NHWC),
                 node("LayerNormalization", ["nhwc", "scale", "bias"], ["n"]),
                 node("Transpose", ["n"], ["y"], perm=TO_NCHW)],
                lambda t, w: F.layer_norm(t.permute(0, 2, 3, 1), (4,), w["scale"], w["bias"]).permute(0, 3, 1, 2),
                init={"scale": rand(4), "bias": rand(4)}),
    DynamicCase("LayerNormalization", "over_channels_and_space",
                [node("LayerNormalization", ["t", "scale", "bias"], ["y"], axis=1)],
                lambda t, w: F.layer_norm(t, t.shape[1:], w["scale"].expand(t.shape[1:]),
                                          w["bias"].expand(t.shape[1:])),
                init={"scale": rand(4, 1, 1), "bias": rand(4, 1, 1)}),
    DynamicCase("GroupNormalization", "groups2", [node("GroupNormalization", ["t", "scale", "bias"], ["n"],
                                                       num_groups=2), SQUASH],
                lambda t, w: group_norm(t, w, 2, True).tanh(), init={"scale": rand(4), "bias": rand(4)}, opset=21),
    *(DynamicCase("GroupNormalization", f"per_group_scale_groups{groups}",
                  [node("GroupNormalization", ["t", "scale", "bias"], ["n"], num_groups=groups), SQUASH],
                  lambda t, w, g=groups: group_norm(t, w, g, False).tanh(),
                  init={"scale": rand(groups), "bias": rand(groups)}, opset=18, deprecated=True)
      for groups in (1, 2, 4)),
    *(DynamicCase("InstanceNormalization", "plain", [node("InstanceNormalization", ["t", "scale", "bias"], ["n"]),
                                                     SQUASH],
                  lambda t, w: F.instance_norm(t, weight=w["scale"], bias=w["bias"]).tanh(),
                  init={"scale": rand(4), "bias": rand(4)}, opset=opset) for opset in (11, 17)),
    DynamicCase("Softmax", "attention_over_tokens",
                TOKENS + [node("Transpose", ["tokens"], ["keys"], perm=[0, 2, 1]),
                          node("MatMul", ["tokens", "keys"], ["scores"]), node("Mul", ["scores", "half"], ["scaled"]),
                          node("Softmax", ["scaled"], ["weights"], axis=-1),
                          node("MatMul", ["weights", "tokens"], ["mixed"]),
                          node("Transpose", ["mixed"], ["y"], perm=[0, 2, 1])],
                lambda t, w: _attention(t), init={"flat_shape": ints(0, 4, -1), "half": scalar(0.5)}, opset=13),
    DynamicCase("Max", "broadcast_operand_needs_gradient", [GAP, node("Max", ["t", "g"], ["y"])],
                lambda t, w: torch.maximum(t, _gap(t))),
    DynamicCase("Where", "broadcast_operands", [GAP, node("Greater", ["t", "zero"], ["positive"]),
                                                node("Where", ["positive", "g", "t"], ["y"])],
                lambda t, w: torch.where(t > 0, _gap(t), t), init={"zero": scalar(0.0)}),
    DynamicCase("PRelu", "per_channel_slope", [node("PRelu", ["t", "slope"], ["y"])],
                lambda t, w: torch.where(t > 0, t, w["slope"] * t), init={"slope": rand(4, 1, 1)}),
    DynamicCase("Gelu", "tanh", [node("Gelu", ["t"], ["y"], approximate="tanh")],
                lambda t, w: F.gelu(t, approximate="tanh"), opset=20),
    DynamicCase("Sqrt", "layer_norm_over_channels_decomposed",
                [node("ReduceMean", ["t"], ["mean"], axes=[1]), node("Sub", ["t", "mean"], ["centered"]),
                 node("Pow", ["centered", "two"], ["square"]), node("ReduceMean", ["square"], ["variance"], axes=[1]),
                 node("Add", ["variance", "epsilon"], ["v"]), node("Sqrt", ["v"], ["std"]),
                 node("Div", ["centered", "std"], ["y"])],
                lambda t, w: (t - t.mean(1, keepdim=True)) / (t.var(1, unbiased=False, keepdim=True) + 1e-6).sqrt(),
                init={"two": scalar(2.0), "epsilon": scalar(1e-6)}, opset=13),
    DynamicCase("ReduceMax", "spatial_keepdims0", [node("ReduceMax", ["t"], ["y"], axes=[2, 3], keepdims=0)],
                lambda t, w: t.amax((2, 3)), opset=13),
    DynamicCase("ReduceL2", "last_axis_keepdims0", [node("ReduceL2", ["t", "axes"], ["y"], keepdims=0)],
                lambda t, w: torch.linalg.vector_norm(t, 2, -1), init={"axes": ints(-1)}, opset=18),
    *(DynamicCase(op, f"runtime_axes_keepdims{keepdims}",
                  RUNTIME_AXES + [node(op, ["t", "axes"], ["y"], keepdims=keepdims)],
                  lambda t, w, o=op, k=keepdims: (t.sum if o == "ReduceSum" else t.mean)((2, 3), keepdim=bool(k)),
                  init={"two": np.array(2, np.int64), "one": np.array(1, np.int64)}, opset=opset)
      for op, opset in (("ReduceSum", 13), ("ReduceMean", 18)) for keepdims in (0, 1)),
    DynamicCase("ReduceMin", "runtime_axes_keepdims0", RUNTIME_AXES + [node("ReduceMin", ["t", "axes"], ["y"],
                                                                            keepdims=0)],
                lambda t, w: t.amin((2, 3)), init={"two": np.array(2, np.int64), "one": np.array(1, np.int64)},
                opset=18),
]


def build_model(test_case: DynamicCase, head_weight: np.ndarray, head_bias: np.ndarray) -> onnx.ModelProto:
    """x [N, C, H, W] (N, H, W symbolic) -> t -> case nodes -> y -> mean over trailing axes -> Gemm."""
    channels = test_case.channels
    head = [node("Reshape", ["y", "head_shape"], ["y3"]), node("GlobalAveragePool", ["y3"], ["pooled"]),
            node("Flatten", ["pooled"], ["features"]), node("Gemm", ["features", "head_w", "head_b"], ["logits"])]
    weights = dict(test_case.init, head_w=head_weight, head_b=head_bias, head_shape=ints(0, channels, -1))
    graph = helper.make_graph(
        [node("Identity", ["x"], ["t"])] + test_case.nodes + head, "dynamic_rule_test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", test_case.opset)])
    if not test_case.deprecated:
        onnx.checker.check_model(model, full_check=True)
    return model


def torch_oracle(test_case: DynamicCase, x: np.ndarray, head_weight: np.ndarray, head_bias: np.ndarray,
                 target_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, d sum_i logits[i, class_i] / d t) by torch autograd in float64."""
    target = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = test_case.torch(target, test_case.torch_weights())
    features = y.reshape(len(x), test_case.channels, -1).mean(2)
    logits = features @ torch.from_numpy(head_weight.astype(np.float64)) \
        + torch.from_numpy(head_bias.astype(np.float64))
    classes = np.where(target_class < 0, logits.detach().numpy().argmax(1), target_class)
    logits[torch.arange(len(x)), torch.from_numpy(classes)].sum().backward()
    return logits.detach().numpy(), target.grad.numpy()


@pytest.mark.parametrize("test_case", [pytest.param(c, id=c.id) for c in CASES])
def test_rule_on_dynamic_shapes_matches_torch_autograd_at_two_sizes(test_case: DynamicCase, monkeypatch):
    rng = np.random.default_rng(sum(map(ord, test_case.id)))
    head_weight = rng.standard_normal((test_case.channels, CLASSES)).astype(np.float32)
    head_bias = rng.standard_normal(CLASSES).astype(np.float32)
    model = build_model(test_case, head_weight, head_bias)
    calls = count_rule_calls(monkeypatch, test_case.op)
    if test_case.deprecated:  # onnx.checker refuses GroupNormalization-18 itself; the rest of augment runs
        monkeypatch.setattr(augment_module, "_check", lambda model: None)
    augmented = onnx_gradcam.augment(model, target="t")
    assert calls, f"the {test_case.op} rule was never applied"

    for batch, height, width in SIZES:
        x = rng.standard_normal((batch, test_case.channels, height, width)).astype(np.float32)
        target_class = np.array([-1, 1, 0][:batch], np.int64)
        logits_expected, gradient_expected = torch_oracle(test_case, x, head_weight, head_bias, target_class)
        (logits_plain,) = run(model, {"x": x}, ["logits"])
        assert max_relative_error(logits_plain, logits_expected) <= 1e-4, \
            "the torch oracle does not compute the same function as the ONNX model"
        (gradient,) = run(augmented, {"x": x, "gradcam_target_class": target_class}, ["gradcam_gradient"])
        assert gradient.shape == x.shape
        error = max_relative_error(gradient, gradient_expected)
        assert error <= GRADIENT_TOLERANCE, f"{(batch, height, width)}: max abs error {error:.3g} of the max abs"


def test_shapes_of_the_target_stay_symbolic():
    """No rule needs a static size: the augmented model keeps its input's symbolic dims."""
    test_case = CASES[0]
    rng = np.random.default_rng(0)
    model = build_model(test_case, rng.standard_normal((4, CLASSES)).astype(np.float32),
                        np.zeros(CLASSES, np.float32))
    augmented = onnx_gradcam.augment(model, target="t")
    dims = [d.dim_param or d.dim_value for d in augmented.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 4, "H", "W"]


@pytest.mark.parametrize("op", ["GroupNormalization", "InstanceNormalization", "LayerNormalization"])
def test_second_reverse_pass_reuses_the_normalization_statistics(op):
    """The guided pass differentiates the same nodes again: their statistics are computed once."""
    test_case = next(c for c in CASES if c.op == op and c.opset >= 17)
    rng = np.random.default_rng(1)
    model = build_model(test_case, rng.standard_normal((4, CLASSES)).astype(np.float32), np.zeros(CLASSES, np.float32))
    augmented = onnx_gradcam.augment(model, target="t", input_gradient=True, guided=True)
    emitted = [n for n in augmented.graph.node if n.name.startswith("gradcam/")]
    assert sum(n.op_type == "LayerNormalization" for n in emitted) == 1
    used = {name for n in augmented.graph.node for name in n.input} | {o.name for o in augmented.graph.output}
    assert not {name for n in emitted for name in n.output[:1]} - used, "a reverse-pass node nobody reads"
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    plain, guided = run(augmented, {"x": x, "gradcam_target_class": np.array([-1, 1], np.int64)},
                        ["gradcam_input_gradient", "gradcam_guided_gradient"])
    np.testing.assert_allclose(guided, plain, rtol=1e-5, atol=1e-6)  # no ReLU: guided = plain
