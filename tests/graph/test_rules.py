"""Every differentiation rule in graph.rules.RULES against PyTorch autograd on the same weights.

Harness: a tiny ONNX model  x -> Identity -> t (the target) -> op under test -> y -> Flatten -> Gemm -> logits,
augmented with target="t" and run on ONNX Runtime (CPU) for a batch of 2 with gradcam_target_class = [-1, 1].
Oracle: torch autograd, in float64, of the equivalent torch computation on the same weights. Its forward
pass is first checked against the plain ONNX model, so the oracle is known to compute the same function.
"""
from __future__ import annotations

import inspect
import itertools
import zlib
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import onnx_gradcam
from onnx_gradcam.errors import UnsupportedOpError
from onnx_gradcam.graph.rules import RULES

from rule_harness import (CASES, CLASSES, FORWARD_TOLERANCE, GRADIENT_TOLERANCE, TARGET_CLASS,  # noqa: E402
                          Case, case, count_rule_calls, ints, max_relative_error, node, rand, run, scalar)

# ---------------------------------------------------------------- pass-through

case("Identity", "plain", [node("Identity", ["t"], ["y"])], lambda t, w: t)

case("Dropout", "ratio_attribute_and_mask", [node("Dropout", ["t"], ["y", "mask"], ratio=0.3)],
     lambda t, w: t, opset=11)
case("Dropout", "ratio_input", [node("Dropout", ["t", "ratio"], ["y"])], lambda t, w: t,
     init={"ratio": scalar(0.25)}, opset=13)
case("Dropout", "mask_output", [node("Dropout", ["t"], ["y", "mask"])], lambda t, w: t, opset=17)

for _opset in (13, 19):
    case("Cast", "float_double_float",
         [node("Cast", ["t"], ["t64"], to=TensorProto.DOUBLE), node("Mul", ["t64", "w"], ["m"]),
          node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)],
         lambda t, w: t * w["w"], init={"w": rand(3, 1, 1).astype(np.float64)}, opset=_opset)
case("Cast", "float_to_float", [node("Cast", ["t"], ["y"], to=TensorProto.FLOAT)], lambda t, w: t)

for _axis, _opset in ((2, 11), (0, 13), (-1, 17)):
    case("Flatten", f"axis{_axis}",
         [node("Flatten", ["t"], ["f"], axis=_axis), node("Reshape", ["f", "shape"], ["y"])],
         lambda t, w: t.reshape(t.shape[0], -1), init={"shape": ints(-1, 3 * 6 * 6)}, opset=_opset)

for _opset in (13, 17):
    case("Reshape", "to_rank3",
         [node("Reshape", ["t", "shape"], ["r"]), node("Mul", ["r", "w"], ["y"])],
         lambda t, w: t.reshape(t.shape[0], 3, -1) * w["w"], init={"shape": ints(0, 3, -1), "w": rand(3, 36)},
         opset=_opset)
case("Reshape", "reinterpret_nhwc",
     [node("Reshape", ["t", "shape"], ["r"]), node("Mul", ["r", "w"], ["y"])],
     lambda t, w: t.reshape(t.shape[0], 6, 6, 3) * w["w"], init={"shape": ints(-1, 6, 6, 3), "w": rand(6, 6, 3)})

case("Squeeze", "axes_attribute", [node("Squeeze", ["t"], ["s"], axes=[2]), node("Mul", ["s", "w"], ["y"])],
     lambda t, w: t.squeeze(2) * w["w"], init={"w": rand(3, 5)}, shape=(3, 1, 5), opset=11)
case("Squeeze", "axes_input", [node("Squeeze", ["t", "axes"], ["s"]), node("Mul", ["s", "w"], ["y"])],
     lambda t, w: t.squeeze(2) * w["w"], init={"axes": ints(2), "w": rand(3, 5)}, shape=(3, 1, 5), opset=13)
case("Squeeze", "negative_axes_input", [node("Squeeze", ["t", "axes"], ["s"]), node("Mul", ["s", "w"], ["y"])],
     lambda t, w: t.squeeze(3).squeeze(2) * w["w"], init={"axes": ints(-1, -2), "w": rand(3)},
     shape=(3, 1, 1), opset=18)

case("Unsqueeze", "axes_attribute", [node("Unsqueeze", ["t"], ["y"], axes=[2])],
     lambda t, w: t.unsqueeze(2), opset=11)
case("Unsqueeze", "axes_input", [node("Unsqueeze", ["t", "axes"], ["u"]), node("Mul", ["u", "w"], ["y"])],
     lambda t, w: t.unsqueeze(2).unsqueeze(-1) * w["w"], init={"axes": ints(2, -1), "w": rand(3, 1, 6, 1, 1)},
     opset=13)

case("Transpose", "to_nhwc", [node("Transpose", ["t"], ["r"], perm=[0, 2, 3, 1]), node("Mul", ["r", "w"], ["y"])],
     lambda t, w: t.permute(0, 2, 3, 1) * w["w"], init={"w": rand(6, 6, 3)})
case("Transpose", "rotate", [node("Transpose", ["t"], ["r"], perm=[0, 3, 1, 2]), node("Mul", ["r", "w"], ["y"])],
     lambda t, w: t.permute(0, 3, 1, 2) * w["w"], init={"w": rand(6, 1, 6)}, shape=(3, 6, 6))
case("Transpose", "default_perm_reverses",
     [node("Transpose", ["t"], ["r"]), node("Mul", ["r", "w"], ["m"]), node("Transpose", ["m"], ["y"])],
     lambda t, w: (t.permute(3, 2, 1, 0) * w["w"]).permute(3, 2, 1, 0), init={"w": rand(6, 6, 3, 1)})


# ---------------------------------------------------------------- elementwise


def _gap(t: torch.Tensor) -> torch.Tensor:
    return t.mean((2, 3), keepdim=True)


GAP = node("GlobalAveragePool", ["t"], ["g"])
# A tensor whose shape shape inference cannot know (Abs hides the Shape value): forces the run-time unbroadcast.
HIDE_SHAPE = [node("GlobalAveragePool", ["t"], ["g"]), node("Shape", ["g"], ["g_shape"]),
              node("Abs", ["g_shape"], ["g_shape_hidden"]), node("Reshape", ["g", "g_shape_hidden"], ["g_unknown"])]

case("Add", "constant_bias", [node("Add", ["t", "b"], ["y"])], lambda t, w: t + w["b"], init={"b": rand(3, 1, 1)})
case("Add", "lower_rank_constant", [node("Add", ["t", "b"], ["y"])], lambda t, w: t + w["b"], init={"b": rand(6)})
case("Add", "lower_rank_operand_needs_gradient",
     [node("ReduceMean", ["t"], ["m"], axes=[0], keepdims=0), node("Add", ["t", "m"], ["y"])],
     lambda t, w: t + t.mean(0))
case("Add", "same_tensor_twice", [node("Add", ["t", "t"], ["y"])], lambda t, w: t + t)
case("Add", "broadcast_operand_needs_gradient", [GAP, node("Add", ["t", "g"], ["y"])],
     lambda t, w: t + _gap(t))
case("Add", "broadcast_operand_first", [GAP, node("Add", ["g", "t"], ["y"])],
     lambda t, w: _gap(t) + t, opset=11)
for _opset in (11, 17):  # opset 11: converted to 13 for ReduceSum's run-time axes
    case("Add", "shapes_unknown_at_build_time", HIDE_SHAPE + [node("Add", ["g_unknown", "t"], ["y"])],
         lambda t, w: _gap(t) + t, opset=_opset)

case("Sum", "three_inputs_broadcast", [GAP, node("Sum", ["t", "g", "b"], ["y"])],
     lambda t, w: t + _gap(t) + w["b"], init={"b": rand(3, 1, 1)})
case("Sum", "single_input", [node("Sum", ["t"], ["y"])], lambda t, w: t)
case("Sum", "same_tensor_thrice", [node("Sum", ["t", "t", "t"], ["y"])], lambda t, w: 3 * t, opset=11)

case("Sub", "broadcast_subtrahend", [GAP, node("Sub", ["t", "g"], ["y"])], lambda t, w: t - _gap(t))
case("Sub", "broadcast_minuend", [GAP, node("Sub", ["g", "t"], ["y"])], lambda t, w: _gap(t) - t, opset=11)
case("Sub", "constant_minus_target", [node("Sub", ["b", "t"], ["y"])], lambda t, w: w["b"] - t,
     init={"b": rand(3, 1, 1)})

case("Neg", "plain", [node("Neg", ["t"], ["y"])], lambda t, w: -t)

case("Mul", "channel_weight", [node("Mul", ["t", "w"], ["y"])], lambda t, w: t * w["w"], init={"w": rand(3, 1, 1)})
case("Mul", "scalar_first", [node("Mul", ["w", "t"], ["y"])], lambda t, w: w["w"] * t, init={"w": scalar(-1.5)})
case("Mul", "square", [node("Mul", ["t", "t"], ["y"])], lambda t, w: t * t)
case("Mul", "broadcast_operand_needs_gradient", [GAP, node("Mul", ["t", "g"], ["y"])],
     lambda t, w: t * _gap(t))
case("Mul", "broadcast_operand_first", [GAP, node("Mul", ["g", "t"], ["y"])], lambda t, w: _gap(t) * t, opset=11)
case("Mul", "shapes_unknown_at_build_time", HIDE_SHAPE + [node("Mul", ["g_unknown", "t"], ["y"])],
     lambda t, w: _gap(t) * t, opset=18)

case("Div", "by_constant", [node("Div", ["t", "w"], ["y"])], lambda t, w: t / w["w"],
     init={"w": rand(3, 1, 1, low=0.5, high=2.0)})
case("Div", "constant_by_target",
     [node("Mul", ["t", "t"], ["sq"]), node("Add", ["sq", "one"], ["d"]), node("Div", ["w", "d"], ["y"])],
     lambda t, w: w["w"] / (t * t + 1), init={"w": rand(3, 1, 1), "one": scalar(1.0)})
case("Div", "both_need_gradient_broadcast_denominator",
     [node("Mul", ["t", "t"], ["sq"]), node("GlobalAveragePool", ["sq"], ["g"]), node("Add", ["g", "one"], ["d"]),
      node("Div", ["t", "d"], ["y"])],
     lambda t, w: t / (_gap(t * t) + 1), init={"one": scalar(1.0)})
case("Div", "self", [node("Mul", ["t", "t"], ["sq"]), node("Add", ["sq", "one"], ["d"]),
                     node("Div", ["d", "d"], ["q"]), node("Mul", ["q", "t"], ["y"])],
     lambda t, w: (t * t + 1) / (t * t + 1) * t, init={"one": scalar(1.0)}, opset=11)

case("Relu", "plain", [node("Relu", ["t"], ["y"])], lambda t, w: F.relu(t))
case("Relu", "opset11", [node("Relu", ["t"], ["y"])], lambda t, w: F.relu(t), opset=11)
# The mask of a 2-D ReLU (a dense head) is computed with Greater, of a 4-D one with a saturated Tanh.
case("Relu", "rank2", [node("Flatten", ["t"], ["f"]), node("Relu", ["f"], ["y"])],
     lambda t, w: F.relu(t.reshape(t.shape[0], -1)))
case("Relu", "double", [node("Cast", ["t"], ["t64"], to=TensorProto.DOUBLE), node("Relu", ["t64"], ["r"]),
                        node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)], lambda t, w: F.relu(t))

case("LeakyRelu", "default_alpha", [node("LeakyRelu", ["t"], ["y"])], lambda t, w: F.leaky_relu(t, 0.01))
case("LeakyRelu", "alpha0.2", [node("LeakyRelu", ["t"], ["y"], alpha=0.2)], lambda t, w: F.leaky_relu(t, 0.2))

CLIP_BOUNDS = {"lo": scalar(-0.5), "hi": scalar(0.75)}  # exact in float32 and float64
for _opset in (11, 13):
    case("Clip", "min_and_max", [node("Clip", ["t", "lo", "hi"], ["y"])], lambda t, w: t.clamp(-0.5, 0.75),
         init=CLIP_BOUNDS, opset=_opset)
case("Clip", "min_only", [node("Clip", ["t", "lo"], ["y"])], lambda t, w: t.clamp(min=-0.5),
     init={"lo": scalar(-0.5)}, opset=13)
case("Clip", "max_only", [node("Clip", ["t", "", "hi"], ["y"])], lambda t, w: t.clamp(max=0.75),
     init={"hi": scalar(0.75)}, opset=13)
case("Clip", "relu6", [node("Clip", ["t", "zero", "six"], ["y"])], lambda t, w: F.relu6(t),
     init={"zero": scalar(0.0), "six": scalar(6.0)}, scale=5.0)
case("Clip", "min_depends_on_target",
     [node("ReduceMean", ["t"], ["m"], keepdims=0), node("Clip", ["t", "m", "hi"], ["y"])],
     lambda t, w: torch.maximum(t, t.mean()).clamp(max=0.75), init={"hi": scalar(0.75)})
case("Clip", "no_bounds", [node("Clip", ["t"], ["y"])], lambda t, w: t, opset=13)
case("Clip", "attributes", [node("Clip", ["t"], ["y"], min=-0.5, max=0.75)], lambda t, w: t.clamp(-0.5, 0.75),
     opset=10)
case("Clip", "max_attribute_only", [node("Clip", ["t"], ["y"], max=0.75)], lambda t, w: t.clamp(max=0.75),
     opset=10)

case("Sigmoid", "plain", [node("Sigmoid", ["t"], ["y"])], lambda t, w: torch.sigmoid(t), scale=2.0)
case("Tanh", "plain", [node("Tanh", ["t"], ["y"])], lambda t, w: torch.tanh(t), scale=2.0)

case("HardSigmoid", "default", [node("HardSigmoid", ["t"], ["y"])], lambda t, w: (0.2 * t + 0.5).clamp(0, 1),
     scale=3.0)
case("HardSigmoid", "alpha_beta", [node("HardSigmoid", ["t"], ["y"], alpha=0.3, beta=0.4)],
     lambda t, w: (0.3 * t + 0.4).clamp(0, 1), scale=3.0)
case("HardSigmoid", "torch_hardsigmoid", [node("HardSigmoid", ["t"], ["y"], alpha=1 / 6)],
     lambda t, w: F.hardsigmoid(t), scale=4.0, opset=11)

for _opset in (14, 17):
    case("HardSwish", "plain", [node("HardSwish", ["t"], ["y"])], lambda t, w: F.hardswish(t), scale=4.0,
         opset=_opset)


def _coerced(function, t: torch.Tensor, axis: int) -> torch.Tensor:
    """Softmax/LogSoftmax before opset 13: the input is flattened to 2-D at axis, normalized over dim 1."""
    rows = int(np.prod(t.shape[:axis]))
    return function(t.reshape(rows, -1), -1).reshape(t.shape)


for _op, _function in (("Softmax", F.softmax), ("LogSoftmax", F.log_softmax)):
    for _axis in (1, 2, -1):
        case(_op, f"axis{_axis}", [node(_op, ["t"], ["y"], axis=_axis)],
             lambda t, w, f=_function, a=_axis: f(t, a), scale=2.0, opset=13)
        case(_op, f"axis{_axis}_coerced_to_2d", [node(_op, ["t"], ["y"], axis=_axis)],
             lambda t, w, f=_function, a=_axis: _coerced(f, t, a % 4), scale=2.0, opset=11)
    case(_op, "default_axis_last", [node(_op, ["t"], ["y"])], lambda t, w, f=_function: f(t, -1), scale=2.0)
    case(_op, "default_axis_1_coerced", [node(_op, ["t"], ["y"])],
         lambda t, w, f=_function: _coerced(f, t, 1), scale=2.0, opset=11)
    case(_op, "on_2d_features", [node("Flatten", ["t"], ["f"]), node(_op, ["f"], ["y"], axis=1)],
         lambda t, w, f=_function: f(t.reshape(t.shape[0], -1), 1), scale=2.0)


def _batch_norm_weights(channels: int) -> dict[str, np.ndarray]:
    return {"scale": rand(channels), "bias": rand(channels), "mean": rand(channels),
            "var": rand(channels, low=0.2, high=2.0)}


for _opset, _epsilon in ((9, 1e-5), (11, 1e-5), (14, 1e-3), (15, 1e-5)):
    case("BatchNormalization", f"eps{_epsilon}",
         [node("BatchNormalization", ["t", "scale", "bias", "mean", "var"], ["y"], epsilon=_epsilon)],
         lambda t, w, e=_epsilon: F.batch_norm(t, w["mean"], w["var"], w["scale"], w["bias"], False, 0.0, e),
         init=_batch_norm_weights(3), opset=_opset)
case("BatchNormalization", "on_3d",
     [node("Reshape", ["t", "shape"], ["r"]), node("BatchNormalization", ["r", "scale", "bias", "mean", "var"], ["y"])],
     lambda t, w: F.batch_norm(t.reshape(t.shape[0], 3, -1), w["mean"], w["var"], w["scale"], w["bias"], False),
     init=dict(_batch_norm_weights(3), shape=ints(0, 3, -1)))
case("BatchNormalization", "on_2d_features",
     [node("Flatten", ["t"], ["f"]), node("BatchNormalization", ["f", "scale", "bias", "mean", "var"], ["y"])],
     lambda t, w: F.batch_norm(t.reshape(t.shape[0], -1), w["mean"], w["var"], w["scale"], w["bias"], False),
     init=_batch_norm_weights(108))


# ---------------------------------------------------------------- linear algebra

case("MatMul", "flat_features", [node("Flatten", ["t"], ["f"]), node("MatMul", ["f", "w"], ["y"])],
     lambda t, w: t.reshape(t.shape[0], -1) @ w["w"], init={"w": rand(108, 7)}, opset=11)
case("MatMul", "4d_times_constant", [node("MatMul", ["t", "w"], ["y"])], lambda t, w: t @ w["w"],
     init={"w": rand(6, 4)}, opset=13)
case("MatMul", "constant_times_4d", [node("MatMul", ["w", "t"], ["y"])], lambda t, w: w["w"] @ t,
     init={"w": rand(5, 6)})
case("MatMul", "batched_constant", [node("MatMul", ["t", "w"], ["y"])], lambda t, w: t @ w["w"],
     init={"w": rand(3, 6, 4)})
case("MatMul", "gram", [node("Transpose", ["t"], ["tt"], perm=[0, 1, 3, 2]), node("MatMul", ["t", "tt"], ["y"])],
     lambda t, w: t @ t.transpose(2, 3))
case("MatMul", "broadcast_operand_needs_gradient",
     [node("ReduceMean", ["t"], ["r"], axes=[1], keepdims=1), node("Transpose", ["t"], ["tt"], perm=[0, 1, 3, 2]),
      node("MatMul", ["r", "tt"], ["y"])],
     lambda t, w: t.mean(1, keepdim=True) @ t.transpose(2, 3))

GEMM_SHAPE = (3, 2, 3)  # 18 features (C=2, W=3 would be guessed NHWC)
GEMM_FEATURES, GEMM_OUT = 18, 4
FLAT = node("Flatten", ["t"], ["f"])
FLAT_T = node("Transpose", ["f"], ["ft"], perm=[1, 0])


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


for _trans_a, _trans_b, _bias in itertools.product((0, 1), (0, 1), ("none", "vector", "row", "scalar")):
    _weight = rand(GEMM_FEATURES, GEMM_OUT)
    _init = {"w": _weight.T.copy() if _trans_b else _weight}
    _inputs = ["ft" if _trans_a else "f", "w"]
    if _bias != "none":
        _init["c"] = {"vector": rand(GEMM_OUT), "row": rand(1, GEMM_OUT), "scalar": scalar(0.3)}[_bias]
        _inputs.append("c")
    _alpha, _beta = (0.7, 1.3) if (_trans_a + _trans_b) % 2 else (1.0, 1.0)
    case("Gemm", f"A_transA{_trans_a}_transB{_trans_b}_bias_{_bias}_alpha{_alpha}",
         [FLAT, FLAT_T, node("Gemm", _inputs, ["y"], transA=_trans_a, transB=_trans_b, alpha=_alpha, beta=_beta)],
         lambda t, w, a=_alpha, b=_beta, tb=_trans_b: (
             a * _flat(t) @ (w["w"].T if tb else w["w"]) + b * w.get("c", torch.zeros(()))),
         init=_init, shape=GEMM_SHAPE, opset=11 if _trans_a else 13)

# The target feeds B: logits^T = Wa' @ f^T (+ bias [M,1]); B = f with transB=1, or f^T with transB=0.
for _trans_a, _trans_b in itertools.product((0, 1), (0, 1)):
    _weight = rand(GEMM_OUT, GEMM_FEATURES)
    case("Gemm", f"B_transA{_trans_a}_transB{_trans_b}",
         [FLAT, FLAT_T, node("Gemm", ["wa", "f" if _trans_b else "ft", "c"], ["yt"], transA=_trans_a,
                             transB=_trans_b, alpha=0.7, beta=1.3),
          node("Transpose", ["yt"], ["y"], perm=[1, 0])],
         lambda t, w, ta=_trans_a: (0.7 * (w["wa"].T if ta else w["wa"]) @ _flat(t).T + 1.3 * w["c"]).T,
         init={"wa": _weight.T.copy() if _trans_a else _weight, "c": rand(GEMM_OUT, 1)}, shape=GEMM_SHAPE)

case("Gemm", "C_broadcast_needs_gradient",
     [FLAT, node("ReduceMean", ["f"], ["m"], axes=[1], keepdims=1),
      node("Gemm", ["f", "w", "m"], ["y"], alpha=0.7, beta=1.3)],
     lambda t, w: 0.7 * _flat(t) @ w["w"] + 1.3 * _flat(t).mean(1, keepdim=True),
     init={"w": rand(GEMM_FEATURES, GEMM_OUT)}, shape=GEMM_SHAPE)
case("Gemm", "A_and_B_need_gradient",
     [FLAT, node("ReduceMean", ["f"], ["m"], axes=[0], keepdims=1),
      node("Gemm", ["f", "m"], ["y"], transB=1, alpha=0.7)],
     lambda t, w: 0.7 * _flat(t) @ _flat(t).mean(0, keepdim=True).T, shape=GEMM_SHAPE)
case("Gemm", "A_and_B_need_gradient_transA",
     [FLAT, FLAT_T, node("ReduceMean", ["f"], ["m"], axes=[0], keepdims=1),
      node("Gemm", ["ft", "m"], ["y"], transA=1, transB=1)],
     lambda t, w: _flat(t) @ _flat(t).mean(0, keepdim=True).T, shape=GEMM_SHAPE)


# ---------------------------------------------------------------- reductions and pooling

# Small maps differentiate as a depthwise Conv (16 channels: ONNX Runtime's blocked layout), large ones with Expand.
for _shape in ((3, 6, 6), (4, 3, 7), (16, 7, 7), (2, 9, 10)):
    case("GlobalAveragePool", f"{_shape[1]}x{_shape[2]}", [node("GlobalAveragePool", ["t"], ["y"])],
         lambda t, w: _gap(t), shape=_shape)
    case("GlobalMaxPool", f"{_shape[1]}x{_shape[2]}", [node("GlobalMaxPool", ["t"], ["y"])],
         lambda t, w: F.adaptive_max_pool2d(t, 1), shape=_shape)

REDUCE_ALL = [node("Mul", ["t", "r"], ["y"])]  # keeps the batch axis after a full reduction


def _reduce(op: str, opset: int, axes: list[int] | None, keepdims: int, noop: int = 0) -> list[onnx.NodeProto]:
    """Reduce t to r, with axes as attribute or input depending on op and opset."""
    attrs = {"keepdims": keepdims}
    if noop:
        attrs["noop_with_empty_axes"] = 1
    inputs = ["t"]
    if axes is not None:
        if opset >= (13 if op == "ReduceSum" else 18):
            inputs.append("axes")
        else:
            attrs["axes"] = axes
    return [node(op, inputs, ["r"], **attrs)]


def _torch_reduce(op: str, t: torch.Tensor, axes: list[int] | None, keepdims: int) -> torch.Tensor:
    function = torch.mean if op == "ReduceMean" else torch.sum
    if axes is None:
        value = function(t)
        return value.reshape([1] * t.dim()) if keepdims else value
    return function(t, tuple(axes), keepdim=bool(keepdims))


for _op, _opsets in (("ReduceMean", (11, 13, 18)), ("ReduceSum", (11, 13, 18))):
    for _opset, (_axes, _keepdims) in itertools.product(_opsets, (([2, 3], 1), ([2, 3], 0), ([1, -1], 0),
                                                                 ([-2], 1))):
        case(_op, f"axes{_axes}_keepdims{_keepdims}",
             _reduce(_op, _opset, _axes, _keepdims) + [node("Identity", ["r"], ["y"])],
             lambda t, w, o=_op, a=_axes, k=_keepdims: _torch_reduce(o, t, a, k),
             init={"axes": ints(*_axes)} if _opset >= (13 if _op == "ReduceSum" else 18) else {}, opset=_opset)
    for _opset, _keepdims in itertools.product(_opsets, (0, 1)):
        case(_op, f"all_axes_keepdims{_keepdims}", _reduce(_op, _opset, None, _keepdims) + REDUCE_ALL,
             lambda t, w, o=_op, k=_keepdims: t * _torch_reduce(o, t, None, k), opset=_opset)
    _axes_input_opset = 13 if _op == "ReduceSum" else 18
    case(_op, "no_axes_noop", _reduce(_op, _axes_input_opset, None, 1, noop=1) + [node("Identity", ["r"], ["y"])],
         lambda t, w: t, opset=_axes_input_opset)
    case(_op, "empty_axes_noop", [node(_op, ["t", "axes"], ["y"], noop_with_empty_axes=1)],
         lambda t, w: t, init={"axes": np.zeros(0, np.int64)}, opset=_axes_input_opset)
    case(_op, "empty_axes_reduce_all", [node(_op, ["t", "axes"], ["r"], keepdims=1)] + REDUCE_ALL,
         lambda t, w, o=_op: t * _torch_reduce(o, t, None, 1), init={"axes": np.zeros(0, np.int64)},
         opset=_axes_input_opset)


for _name, _value in (("value", {"value": numpy_helper.from_array(ints(1, 3))}),
                      ("value_ints", {"value_ints": [1, 3]})):
    case("ReduceSum", f"axes_from_constant_{_name}",
         [node("Constant", [], ["axes"], **_value), node("ReduceSum", ["t", "axes"], ["y"], keepdims=0)],
         lambda t, w: t.sum((1, 3)), opset=13)


@dataclass(frozen=True)
class Pool:
    """One pooling geometry: ONNX pads are [h_begin, w_begin, h_end, w_end]."""

    size: tuple[int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil_mode: int = 0
    auto_pad: str = "NOTSET"
    dilations: tuple[int, int] = (1, 1)

    def attributes(self) -> dict:
        attrs = {"kernel_shape": list(self.kernel), "strides": list(self.strides)}
        if self.auto_pad != "NOTSET":
            attrs["auto_pad"] = self.auto_pad
        else:
            attrs["pads"] = list(self.pads)
        if self.ceil_mode:
            attrs["ceil_mode"] = 1
        if self.dilations != (1, 1):
            attrs["dilations"] = list(self.dilations)
        return attrs

    def begin_end(self) -> tuple[list[int], list[int]]:
        """Explicit (begin, end) pads per spatial axis, resolving SAME_UPPER / SAME_LOWER."""
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = [max(0, (-(-i // s) - 1) * s + k - i) for i, s, k in zip(self.size, self.strides, self.kernel)]
            small, large = [p // 2 for p in total], [p - p // 2 for p in total]
            return (small, large) if self.auto_pad == "SAME_UPPER" else (large, small)
        return list(self.pads[:2]), list(self.pads[2:])

    def name(self) -> str:
        parts = [f"{self.size[0]}x{self.size[1]}", f"k{self.kernel[0]}x{self.kernel[1]}",
                 f"s{self.strides[0]}x{self.strides[1]}"]
        parts.append(self.auto_pad if self.auto_pad != "NOTSET" else "p" + "".join(map(str, self.pads)))
        if self.ceil_mode:
            parts.append("ceil")
        if self.dilations != (1, 1):
            parts.append(f"d{self.dilations[0]}x{self.dilations[1]}")
        return "_".join(parts)


def _torch_pool(t: torch.Tensor, pool: Pool, mode: str, count_include_pad: int = 0) -> torch.Tensor:
    """torch pooling; asymmetric pads are applied with F.pad (zeros for average, -inf for max)."""
    begin, end = pool.begin_end()
    if begin == end:
        padding, padded = tuple(begin), t
    else:
        padding = (0, 0)
        torch_pads = (begin[1], end[1], begin[0], end[0])
        padded = F.pad(t, torch_pads, value=float("-inf") if mode == "max" else 0.0)
    if mode == "max":
        return F.max_pool2d(padded, pool.kernel, pool.strides, padding, pool.dilations, bool(pool.ceil_mode))
    if begin == end:
        return F.avg_pool2d(padded, pool.kernel, pool.strides, padding, bool(pool.ceil_mode),
                            bool(count_include_pad))
    assert not pool.ceil_mode
    window_sum = F.avg_pool2d(padded, pool.kernel, pool.strides) * (pool.kernel[0] * pool.kernel[1])
    if count_include_pad:
        return window_sum / (pool.kernel[0] * pool.kernel[1])
    ones = F.pad(torch.ones_like(t[:1, :1]), torch_pads)
    return window_sum / (F.avg_pool2d(ones, pool.kernel, pool.strides) * (pool.kernel[0] * pool.kernel[1]))


AVERAGE_POOLS = [
    Pool((7, 7), (3, 3), (2, 2), (1, 1, 1, 1)),  # overlapping windows, sizes not divisible
    Pool((6, 6), (2, 2), (2, 2)),  # non-overlapping
    Pool((6, 6), (3, 3), (1, 1), (1, 1, 1, 1)),
    Pool((6, 6), (3, 3), (2, 2), (1, 1, 1, 1), ceil_mode=1),
    Pool((8, 8), (3, 3), (2, 2), (1, 1, 1, 1), ceil_mode=1),
    Pool((7, 7), (3, 3), (2, 2), (1, 1, 1, 1), ceil_mode=1),
    Pool((6, 6), (3, 3), (2, 2), ceil_mode=1),  # last window hangs over the edge, no pads
    Pool((7, 7), (2, 2), (3, 3)),  # strides > kernel: uncovered rows and columns
    Pool((7, 6), (2, 3), (1, 2), (1, 0, 1, 0)),  # rectangular
    Pool((6, 6), (3, 3), (2, 2), (0, 1, 1, 0)),  # asymmetric pads
    Pool((6, 6), (3, 3), (2, 2), auto_pad="SAME_UPPER"),
    Pool((6, 6), (3, 3), (2, 2), auto_pad="SAME_LOWER"),
    Pool((7, 7), (3, 3), (2, 2), auto_pad="VALID"),
]
for _pool in AVERAGE_POOLS:
    for _include in (0, 1):
        case("AveragePool", f"{_pool.name()}_count_include_pad{_include}",
             [node("AveragePool", ["t"], ["y"], count_include_pad=_include, **_pool.attributes())],
             lambda t, w, p=_pool, c=_include: _torch_pool(t, p, "average", c), shape=(2,) + _pool.size)
for _opset in (11, 19):
    _pool = AVERAGE_POOLS[0]
    case("AveragePool", f"{_pool.name()}_count_include_pad1",
         [node("AveragePool", ["t"], ["y"], count_include_pad=1, **_pool.attributes())],
         lambda t, w, p=_pool: _torch_pool(t, p, "average", 1), shape=(2,) + _pool.size, opset=_opset)

MAX_POOLS = [
    (Pool((7, 7), (3, 3), (2, 2), (1, 1, 1, 1)), 17),  # overlapping 3x3 / stride 2 with pads (ResNet stem)
    (Pool((8, 8), (3, 3), (2, 2), (1, 1, 1, 1)), 16),
    (Pool((6, 6), (2, 2), (2, 2)), 11),  # non-overlapping: plain ScatterElements
    (Pool((6, 6), (2, 2), (2, 2)), 13),
    (Pool((6, 6), (2, 2), (2, 2)), 17),
    (Pool((6, 6), (3, 3), (3, 3)), 12),
    (Pool((8, 8), (3, 3), (2, 2), (1, 1, 1, 1), ceil_mode=1), 17),
    (Pool((7, 7), (2, 2), (1, 1), dilations=(2, 2)), 17),
    (Pool((7, 6), (2, 3), (2, 1), (0, 1, 0, 1)), 17),
    (Pool((6, 6), (3, 3), (2, 2), (0, 1, 1, 0)), 17),  # asymmetric pads
    (Pool((6, 6), (3, 3), (2, 2), auto_pad="SAME_UPPER"), 18),
    (Pool((6, 6), (3, 3), (2, 2), auto_pad="SAME_LOWER"), 18),
]
for _pool, _opset in MAX_POOLS:
    case("MaxPool", _pool.name(), [node("MaxPool", ["t"], ["y"], **_pool.attributes())],
         lambda t, w, p=_pool: _torch_pool(t, p, "max"), shape=(2,) + _pool.size, opset=_opset)
# Overlapping windows sum their gradients with ScatterElements(reduction="add") from opset 16: an older
# model is converted to opset 16 first.
for _opset in (11, 13, 15):
    _pool = MAX_POOLS[0][0]
    case("MaxPool", f"{_pool.name()}_converted_to_opset16", [node("MaxPool", ["t"], ["y"], **_pool.attributes())],
         lambda t, w, p=_pool: _torch_pool(t, p, "max"), shape=(2,) + _pool.size, opset=_opset)
TO_1D = node("Reshape", ["t", "shape"], ["t1d"])
case("AveragePool", "1d_k3_s2_p1_count_include_pad0",
     [TO_1D, node("AveragePool", ["t1d"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 1])],
     lambda t, w: F.avg_pool1d(t.reshape(t.shape[0], 3, -1), 3, 2, 1, count_include_pad=False),
     init={"shape": ints(0, 3, -1)}, shape=(3, 3, 5))
case("MaxPool", "1d_k3_s2_p1",
     [TO_1D, node("MaxPool", ["t1d"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 1])],
     lambda t, w: F.max_pool1d(t.reshape(t.shape[0], 3, -1), 3, 2, 1), init={"shape": ints(0, 3, -1)},
     shape=(3, 3, 5))
case("MaxPool", "indices_output_already_present",
     [node("MaxPool", ["t"], ["y", "indices"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
     lambda t, w: F.max_pool2d(t, 3, 2, 1))


# ---------------------------------------------------------------- convolution, padding and slicing


@dataclass(frozen=True)
class Conv:
    """One Conv geometry on the target t [N, C, H, W]; ONNX pads are [h_begin, w_begin, h_end, w_end]."""

    name: str
    weight_shape: tuple[int, int, int, int]  # [M, C / group, kh, kw]
    size: tuple[int, int] = (6, 6)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    auto_pad: str = "NOTSET"
    kernel_attribute: bool = True
    bias: bool = True
    opset: int = 17

    def attributes(self) -> dict:
        attrs = {"strides": list(self.strides), "group": self.group}
        if self.kernel_attribute:
            attrs["kernel_shape"] = list(self.weight_shape[2:])
        if self.dilations != (1, 1):
            attrs["dilations"] = list(self.dilations)
        if self.auto_pad != "NOTSET":
            attrs["auto_pad"] = self.auto_pad
        else:
            attrs["pads"] = list(self.pads)
        return attrs

    def begin_end(self) -> tuple[list[int], list[int]]:
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            reach = [(k - 1) * d + 1 for k, d in zip(self.weight_shape[2:], self.dilations)]
            total = [max(0, (-(-i // s) - 1) * s + r - i) for i, s, r in zip(self.size, self.strides, reach)]
            small, large = [p // 2 for p in total], [p - p // 2 for p in total]
            return (small, large) if self.auto_pad == "SAME_UPPER" else (large, small)
        return list(self.pads[:2]), list(self.pads[2:])


def _torch_conv(t: torch.Tensor, w: dict, conv: Conv) -> torch.Tensor:
    begin, end = conv.begin_end()
    padded = F.pad(t, (begin[1], end[1], begin[0], end[0]))
    return F.conv2d(padded, w["w"], w.get("b"), conv.strides, 0, conv.dilations, conv.group)


CONVS = [
    Conv("k3_p1", (4, 3, 3, 3), pads=(1, 1, 1, 1), opset=11),
    Conv("k3_s2_p1_7x7", (4, 3, 3, 3), size=(7, 7), strides=(2, 2), pads=(1, 1, 1, 1)),
    Conv("k3_s2_8x8_last_rows_unread", (4, 3, 3, 3), size=(8, 8), strides=(2, 2)),
    Conv("k2_s3_7x7_gaps", (4, 3, 2, 2), size=(7, 7), strides=(3, 3), bias=False),
    Conv("pointwise", (5, 3, 1, 1), opset=13),
    Conv("depthwise", (3, 1, 3, 3), pads=(1, 1, 1, 1), group=3),
    Conv("grouped", (4, 2, 3, 3), size=(5, 7), group=2, pads=(1, 0, 1, 0)),
    Conv("dilated", (4, 3, 3, 3), size=(7, 7), dilations=(2, 2), pads=(2, 2, 2, 2)),
    Conv("dilated_strided", (4, 3, 2, 3), size=(8, 9), strides=(2, 1), dilations=(2, 3)),
    Conv("asymmetric_pads", (4, 3, 3, 3), strides=(2, 2), pads=(0, 1, 1, 0)),
    Conv("same_upper_s2", (4, 3, 3, 3), strides=(2, 2), auto_pad="SAME_UPPER"),
    Conv("same_lower_s2", (4, 3, 3, 3), strides=(2, 2), auto_pad="SAME_LOWER"),
    Conv("rectangular_no_kernel_attribute", (4, 3, 2, 3), size=(6, 7), strides=(1, 2), kernel_attribute=False),
]
for _conv in CONVS:
    _channels = _conv.weight_shape[1] * _conv.group
    _init = {"w": rand(*_conv.weight_shape)}
    if _conv.bias:
        _init["b"] = rand(_conv.weight_shape[0])
    case("Conv", _conv.name, [node("Conv", ["t"] + list(_init), ["y"], **_conv.attributes())],
         lambda t, w, c=_conv: _torch_conv(t, w, c), init=_init, shape=(_channels,) + _conv.size, opset=_conv.opset)
case("Conv", "1d", [node("Reshape", ["t", "shape"], ["t1d"]),
                    node("Conv", ["t1d", "w"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 0])],
     lambda t, w: F.conv1d(F.pad(t.reshape(t.shape[0], 3, -1), (1, 0)), w["w"], stride=2),
     init={"shape": ints(0, 3, -1), "w": rand(4, 3, 3)}, shape=(3, 3, 5))

# ONNX pads are [begin of every axis..., end of every axis...]; torch's F.pad goes from the last axis back.
for _opset in (11, 13, 18):
    case("Pad", "constant_zero", [node("Pad", ["t", "pads"], ["p"]), node("Mul", ["p", "w"], ["y"])],
         lambda t, w: F.pad(t, (2, 1, 1, 0)) * w["w"], init={"pads": ints(0, 0, 1, 2, 0, 0, 0, 1), "w": rand(7, 9)},
         opset=_opset)
case("Pad", "constant_value_and_channels", [node("Pad", ["t", "pads", "value"], ["p"]), node("Mul", ["p", "p"], ["y"])],
     lambda t, w: F.pad(t, (0, 0, 0, 0, 1, 2), value=0.5) ** 2,
     init={"pads": ints(0, 1, 0, 0, 0, 2, 0, 0), "value": scalar(0.5)})
case("Pad", "pads_attribute", [node("Pad", ["t"], ["p"], pads=[0, 0, 1, 2, 0, 0, 0, 1]),
                               node("Mul", ["p", "w"], ["y"])],
     lambda t, w: F.pad(t, (2, 1, 1, 0)) * w["w"], init={"w": rand(7, 9)}, opset=10)

INT64_MAX = int(np.iinfo(np.int64).max)
SLICES = [  # (variant, starts, ends, axes, steps, torch indexing of t [N, 3, 6, 6])
    ("spatial", [1, 0], [5, -1], [2, 3], None, (slice(None), slice(None), slice(1, 5), slice(0, -1))),
    ("all_axes_no_axes_input", [0, 1, 1, -4], [INT64_MAX, 3, 6, -1], None, None,
     (slice(None), slice(1, 3), slice(1, 6), slice(2, 5))),
    ("negative_axes_and_clamped_ends", [-2, 2], [100, 1000], [-1, 1], [1, 1],
     (slice(None), slice(2, None), slice(None), slice(4, None))),
    ("empty_on_one_axis", [7], [9], [2], None, (slice(None), slice(None), slice(6, 6))),
]
for _variant, _starts, _ends, _axes, _steps, _index in SLICES:
    _init = {"starts": ints(*_starts), "ends": ints(*_ends)}
    _inputs = ["t", "starts", "ends"]
    if _axes is not None:
        _init["axes"] = ints(*_axes)
        _inputs.append("axes")
    if _steps is not None:
        _init["steps"] = ints(*_steps)
        _inputs.append("steps")
    if _variant == "empty_on_one_axis":  # an empty slice still has to reach the logits: join it to t
        _tail = [node("Concat", ["s", "t"], ["c"], axis=2), node("Mul", ["c", "c"], ["y"])]
        _function = lambda t, w, i=_index: torch.cat([t[i], t], 2) ** 2  # noqa: E731
    else:
        _tail = [node("Mul", ["s", "s"], ["y"])]
        _function = lambda t, w, i=_index: t[i] ** 2  # noqa: E731
    case("Slice", _variant, [node("Slice", _inputs, ["s"])] + _tail, _function, init=_init,
         opset=13 if _steps else 11)
case("Slice", "opset10", [node("Slice", ["t", "starts", "ends", "axes"], ["s"]), node("Mul", ["s", "s"], ["y"])],
     lambda t, w: t[:, :, 1:5] ** 2, init={"starts": ints(1), "ends": ints(5), "axes": ints(2)}, opset=10,
     )


# ---------------------------------------------------------------- joins and splits

for _opset in (11, 17):
    case("Concat", "channels", [node("Relu", ["t"], ["r"]), node("Concat", ["t", "r"], ["y"], axis=1)],
         lambda t, w: torch.cat([t, F.relu(t)], 1), opset=_opset)
case("Concat", "same_tensor_twice", [node("Concat", ["t", "t"], ["c"], axis=3), node("Mul", ["c", "w"], ["y"])],
     lambda t, w: torch.cat([t, t], 3) * w["w"], init={"w": rand(12)})
case("Concat", "negative_axis", [node("Relu", ["t"], ["r"]), node("Concat", ["r", "t"], ["y"], axis=-1)],
     lambda t, w: torch.cat([F.relu(t), t], -1))
case("Concat", "unequal_parts",
     [node("ReduceMean", ["t"], ["m"], axes=[2], keepdims=1), node("Concat", ["m", "t", "m"], ["y"], axis=2)],
     lambda t, w: torch.cat([t.mean(2, keepdim=True), t, t.mean(2, keepdim=True)], 2))
case("Concat", "part_without_gradient", [node("Concat", ["x", "t"], ["c"], axis=1), node("Mul", ["c", "c"], ["y"])],
     lambda t, w: torch.cat([t.detach(), t], 1) ** 2)

case("Split", "split_attribute",
     [node("Split", ["t"], ["a", "b"], axis=1, split=[2, 1]), node("Mul", ["a", "w"], ["aw"]),
      node("Add", ["aw", "b"], ["y"])],
     lambda t, w: t[:, :2] * w["w"] + t[:, 2:], init={"w": rand(2, 1, 1)}, opset=11)
case("Split", "split_input_reordered",
     [node("Split", ["t", "split"], ["a", "b"], axis=2), node("Mul", ["b", "w"], ["bw"]),
      node("Concat", ["bw", "a"], ["y"], axis=2)],
     lambda t, w: torch.cat([t[:, :, 2:] * w["w"], t[:, :, :2]], 2), init={"split": ints(2, 4), "w": rand(1, 6)},
     opset=13)
case("Split", "num_outputs_one_unused",
     [node("Split", ["t"], ["a", "b", "c"], axis=3, num_outputs=3), node("Mul", ["a", "w"], ["aw"]),
      node("Sub", ["aw", "c"], ["y"])],
     lambda t, w: t[..., 0:2] * w["w"] - t[..., 4:6], init={"w": rand(3, 1, 2)}, opset=18)
case("Split", "num_outputs_uneven",
     [node("Split", ["t"], ["a", "b", "c"], axis=3, num_outputs=3), node("Concat", ["c", "a", "b"], ["cab"], axis=3),
      node("Mul", ["cab", "w"], ["y"])],
     lambda t, w: torch.cat([t[..., 6:], t[..., :3], t[..., 3:6]], 3) * w["w"], init={"w": rand(7)},
     shape=(3, 4, 7), opset=18)
case("Split", "equal_halves_default", [node("Split", ["t"], ["a", "b"], axis=-1), node("Mul", ["a", "b"], ["y"])],
     lambda t, w: t[..., :3] * t[..., 3:], opset=13)
case("Split", "unused_middle_opset11",
     [node("Split", ["t"], ["a", "b", "c"], axis=1), node("Concat", ["c", "a"], ["y"], axis=1)],
     lambda t, w: torch.cat([t[:, 2:3], t[:, 0:1]], 1), opset=11)


# ---------------------------------------------------------------- harness

# A scalar index on an axis whose length is known only at run time (the height, through a value no
# shape inference can compute): the gradient is a Pad of one row with pads computed in the graph.
_HIDDEN_HEIGHT = [node("Shape", ["t"], ["t_shape"]), node("Abs", ["t"], ["a"]), node("ReduceMean", ["a"], ["m"]),
                  node("Reshape", ["m", "one"], ["m1"]), node("Neg", ["m1"], ["n"]),
                  node("Concat", ["m1", "n"], ["pair"], axis=0), node("ArgMax", ["pair"], ["zero"], keepdims=1),
                  node("Slice", ["t_shape", "zero_i", "two"], ["lead"]), node("Slice", ["t_shape", "two", "three"], ["h"]),
                  node("Add", ["h", "zero"], ["h_hidden"]), node("Slice", ["t_shape", "three", "four"], ["w"]),
                  node("Concat", ["lead", "h_hidden", "w"], ["hidden_shape"], axis=0),
                  node("Reshape", ["t", "hidden_shape"], ["hidden"])]
for _index in (0, -2):
    case("Gather", f"scalar_index_{_index}_on_an_axis_of_run_time_length",
         _HIDDEN_HEIGHT + [node("Gather", ["hidden", "index"], ["y"], axis=2)],
         lambda t, w, i=_index: t[:, :, i],
         init={"one": ints(1), "zero_i": ints(0), "two": ints(2), "three": ints(3), "four": ints(4),
               "index": np.array(_index, np.int64)})

# Cases of further op families register themselves in CASES when imported.
import rule_cases_math  # noqa: E402,F401
import rule_cases_indexing  # noqa: E402,F401

ALL_CASES = [c for cases in CASES.values() for c in cases]
PARAMS = [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else [])
          for c in ALL_CASES]


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


def build_model(test_case: Case, head_weight: np.ndarray, head_bias: np.ndarray, check: bool = True) -> onnx.ModelProto:
    """x -> Identity -> t -> case nodes -> y -> Flatten -> Gemm -> logits [N, CLASSES]."""
    channels, height, width = test_case.shape
    nodes = ([node("Identity", ["x"], ["t"])] + list(test_case.nodes)
             + [node("Flatten", ["y"], ["features"]), node("Gemm", ["features", "head_w", "head_b"], ["logits"])])
    weights = dict(test_case.init, head_w=head_weight, head_b=head_bias)
    graph = helper.make_graph(
        nodes, "rule_test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", test_case.opset)])
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def torch_oracle(test_case: Case, x: np.ndarray, head_weight: np.ndarray, head_bias: np.ndarray,
                 target_class: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, chosen classes, d sum_i logits[i, class_i] / d t) by torch autograd in float64."""
    target = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    features = test_case.torch(target, test_case.torch_weights())
    logits = features.reshape(len(x), -1) @ torch.from_numpy(head_weight.astype(np.float64)) \
        + torch.from_numpy(head_bias.astype(np.float64))
    classes = np.where(target_class < 0, logits.detach().numpy().argmax(1), target_class)
    logits[torch.arange(len(x)), torch.from_numpy(classes)].sum().backward()
    return logits.detach().numpy(), classes, target.grad.numpy()


def _feature_count(test_case: Case, x: np.ndarray) -> int:
    """Number of features y has per image, which sizes the head's weight."""
    with torch.no_grad():
        features = test_case.torch(torch.tensor(x, dtype=torch.float64), test_case.torch_weights())
    return features.reshape(len(x), -1).shape[1]


@pytest.mark.parametrize("test_case", PARAMS)
def test_rule_gradient_matches_torch_autograd(test_case: Case, monkeypatch):
    assert test_case.op in {n.op_type for n in test_case.nodes}
    rng = np.random.default_rng(_seed(test_case.id))
    x = (test_case.scale * rng.standard_normal((2,) + test_case.shape)).astype(np.float32)
    features = _feature_count(test_case, x)
    head_weight = rng.standard_normal((features, CLASSES)).astype(np.float32)
    head_bias = rng.standard_normal(CLASSES).astype(np.float32)
    model = build_model(test_case, head_weight, head_bias)

    logits_expected, class_expected, gradient_expected = torch_oracle(test_case, x, head_weight, head_bias,
                                                                      TARGET_CLASS)
    (logits_plain,) = run(model, {"x": x}, ["logits"])
    assert max_relative_error(logits_plain, logits_expected) <= FORWARD_TOLERANCE, \
        "the torch oracle does not compute the same function as the ONNX model"
    assert np.abs(gradient_expected).max() > 0

    calls = count_rule_calls(monkeypatch, test_case.op)
    augmented = onnx_gradcam.augment(model, target="t")
    assert calls, f"the {test_case.op} rule was never applied"

    activation, gradient, chosen, score, logits = run(
        augmented, {"x": x, "gradcam_target_class": TARGET_CLASS},
        ["gradcam_activation", "gradcam_gradient", "gradcam_class", "gradcam_score", "gradcam_logits"])
    np.testing.assert_array_equal(activation, x)
    np.testing.assert_array_equal(chosen, class_expected)
    np.testing.assert_array_equal(score, logits[np.arange(2), chosen])
    assert gradient.shape == x.shape and gradient.dtype == np.float32
    error = max_relative_error(gradient, gradient_expected)
    assert error <= GRADIENT_TOLERANCE, f"max abs error {error:.3g} of the gradient's max abs value"


def test_every_rule_has_a_gradient_test():
    untested = sorted(set(RULES) - set(CASES))
    assert not untested, f"differentiation rules without a test in {__file__}: {untested}"
    unknown = sorted(set(CASES) - set(RULES))
    assert not unknown, f"tests for ops that have no rule: {unknown}"


# ---------------------------------------------------------------- rules that must refuse, with a clear error


def _refusal_model(test_case: Case) -> onnx.ModelProto:
    """build_model with a random head sized from the shape inference of y."""
    probe = onnx.shape_inference.infer_shapes(build_model(test_case, np.zeros((1, CLASSES), np.float32),
                                                          np.zeros(CLASSES, np.float32), check=False))
    (y,) = [v for v in probe.graph.value_info if v.name == "y"]
    features = int(np.prod([d.dim_value for d in y.type.tensor_type.shape.dim[1:]]))
    rng = np.random.default_rng(_seed(test_case.id))
    return build_model(test_case, rng.standard_normal((features, CLASSES)).astype(np.float32),
                       rng.standard_normal(CLASSES).astype(np.float32))


def refusal(variant: str, nodes: list[onnx.NodeProto], match: str, **kwargs):
    test_case = Case(nodes[-1].op_type, variant, nodes, lambda t, w: t, **kwargs)
    return pytest.param(test_case, match, id=test_case.id)


REFUSALS = [
    refusal("storage_order", [node("MaxPool", ["t"], ["y"], kernel_shape=[2, 2], strides=[2, 2], storage_order=1)],
            "storage_order"),
    refusal("training_mode", [node("BatchNormalization", ["t", "scale", "bias", "mean", "var"],
                                   ["y", "running_mean", "running_var"], training_mode=1)],
            "training mode", init=_batch_norm_weights(3), opset=15),
    refusal("dilations", [node("AveragePool", ["t"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])], "dilations",
            opset=19),
    refusal("weight_computed_from_target",
            [node("Reshape", ["t", "weight_shape"], ["w"]), node("Conv", ["t", "w"], ["y"], pads=[1, 1, 1, 1])],
            "weights computed in the graph", init={"weight_shape": ints(-1, 3, 3, 3)}, shape=(3, 3, 3)),
    refusal("reflect", [node("Pad", ["t", "pads"], ["y"], mode="reflect")], "only constant padding",
            init={"pads": ints(0, 0, 1, 1, 0, 0, 1, 1)}),
]


@pytest.mark.parametrize("test_case, match", REFUSALS)
def test_rule_refuses_with_unsupported_op_error(test_case: Case, match: str):
    with pytest.raises(UnsupportedOpError, match=match):
        onnx_gradcam.augment(_refusal_model(test_case), target="t")


def test_older_opset_is_converted_when_a_rule_needs_newer_ops_and_outputs_stay_identical():
    """A broadcast of unknown shape at opset 11 needs ReduceSum with run-time axes (opset 13)."""
    test_case = Case("Add", "unknown", HIDE_SHAPE + [node("Add", ["g_unknown", "t"], ["y"])], lambda t, w: t,
                     opset=11)
    rng = np.random.default_rng(_seed(test_case.id))
    model = build_model(test_case, rng.standard_normal((3 * 6 * 6, CLASSES)).astype(np.float32),
                        rng.standard_normal(CLASSES).astype(np.float32))
    augmented = onnx_gradcam.augment(model, target="t")
    assert {p.key: p.value for p in augmented.metadata_props}["gradcam_opset"] == "13"
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    (plain,) = run(model, {"x": x}, ["logits"])
    (logits,) = run(augmented, {"x": x, "gradcam_target_class": TARGET_CLASS}, ["logits"])
    np.testing.assert_array_equal(logits, plain)


def _asymmetric_linear(size: int, scale: int) -> torch.Tensor:
    """[size*scale, size] float64 weights of Upsample's linear sampling at x_in = x_out / scale (edge clamped)."""
    position = np.arange(size * scale) / scale
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, size - 1)
    weights = np.zeros((size * scale, size))
    np.add.at(weights, (np.arange(size * scale), low), 1 - (position - low))
    np.add.at(weights, (np.arange(size * scale), high), position - low)
    return torch.from_numpy(weights)


def test_opset9_upsample_is_converted_to_an_equal_resize_and_differentiated():
    """The version converter writes Resize-11 with half-pixel sampling; augment restores Upsample's."""
    test_case = Case("Upsample", "converted", [node("Upsample", ["t", "scales"], ["y"], mode="linear")],
                     lambda t, w: torch.einsum("oh,nchw,pw->ncop", _asymmetric_linear(6, 2), t,
                                               _asymmetric_linear(6, 3)),
                     init={"scales": np.array([1, 1, 2, 3], np.float32)}, opset=9)
    rng = np.random.default_rng(_seed(test_case.id))
    head_weight = rng.standard_normal((3 * 12 * 18, CLASSES)).astype(np.float32)
    head_bias = rng.standard_normal(CLASSES).astype(np.float32)
    model = build_model(test_case, head_weight, head_bias)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    augmented = onnx_gradcam.augment(model, target="t")
    (plain,) = run(model, {"x": x}, ["logits"])
    logits, gradient = run(augmented, {"x": x, "gradcam_target_class": TARGET_CLASS}, ["logits", "gradcam_gradient"])
    np.testing.assert_array_equal(logits, plain)
    logits_expected, _, expected = torch_oracle(test_case, x, head_weight, head_bias, TARGET_CLASS)
    assert max_relative_error(plain, logits_expected) <= FORWARD_TOLERANCE
    assert max_relative_error(gradient, expected) <= GRADIENT_TOLERANCE


# ---------------------------------------------------------------- guided backpropagation through Relu


class _GuidedRelu(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients at positive inputs (Springenberg et al.)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


GUIDED_CASE = Case("Relu", "guided", [node("Relu", ["t"], ["r"]), node("Mul", ["r", "w"], ["m"]),
                                      node("Relu", ["m"], ["y"])],
                   lambda t, w: F.relu(F.relu(t) * w["w"]), init={"w": rand(3, 1, 1)})


def test_relu_guided_backpropagation_matches_torch_guided_relu():
    if "guided" not in inspect.signature(onnx_gradcam.augment).parameters:
        pytest.skip("augment has no guided option")
    rng = np.random.default_rng(_seed(GUIDED_CASE.id))
    x = rng.standard_normal((2,) + GUIDED_CASE.shape).astype(np.float32)
    head_weight = rng.standard_normal((3 * 6 * 6, CLASSES)).astype(np.float32)
    head_bias = rng.standard_normal(CLASSES).astype(np.float32)
    model = onnx_gradcam.augment(build_model(GUIDED_CASE, head_weight, head_bias), target="t", guided=True)
    gradient, guided, chosen = run(model, {"x": x, "gradcam_target_class": TARGET_CLASS},
                                   ["gradcam_gradient", "gradcam_guided_gradient", "gradcam_class"])

    image = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    weight = torch.from_numpy(GUIDED_CASE.init["w"].astype(np.float64))
    features = _GuidedRelu.apply(_GuidedRelu.apply(image) * weight)
    logits = features.reshape(2, -1) @ torch.from_numpy(head_weight.astype(np.float64)) \
        + torch.from_numpy(head_bias.astype(np.float64))
    logits[torch.arange(2), torch.from_numpy(chosen)].sum().backward()
    expected = image.grad.numpy()
    assert max_relative_error(guided, expected) <= GRADIENT_TOLERANCE
    assert not np.allclose(guided, gradient)  # the plain gradient is unchanged by the guided pass
    _, _, plain_expected = torch_oracle(GUIDED_CASE, x, head_weight, head_bias, TARGET_CLASS)
    assert max_relative_error(gradient, plain_expected) <= GRADIENT_TOLERANCE
