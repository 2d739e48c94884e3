"""Rule cases of elementwise math, activations, normalizations and reductions (checked by test_rules.py)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from rule_harness import case, ints, node, rand, scalar


def _gap(t: torch.Tensor) -> torch.Tensor:
    return t.mean((2, 3), keepdim=True)


GAP = node("GlobalAveragePool", ["t"], ["g"])
SIGMOID = node("Sigmoid", ["t"], ["s"])  # a positive operand in (0, 1)
ONE = {"one": scalar(1.0)}


# ---------------------------------------------------------------- unary math

case("Sqrt", "of_sigmoid", [SIGMOID, node("Sqrt", ["s"], ["y"])], lambda t, w: torch.sigmoid(t).sqrt())
case("Sqrt", "of_square_plus_one", [node("Mul", ["t", "t"], ["sq"]), node("Add", ["sq", "one"], ["p"]),
                                    node("Sqrt", ["p"], ["y"])],
     lambda t, w: (t * t + 1).sqrt(), init=ONE, opset=11)

case("Reciprocal", "of_square_plus_one",
     [node("Mul", ["t", "t"], ["sq"]), node("Add", ["sq", "one"], ["p"]), node("Reciprocal", ["p"], ["y"])],
     lambda t, w: 1 / (t * t + 1), init=ONE)
case("Exp", "plain", [node("Exp", ["t"], ["y"])], lambda t, w: t.exp())
case("Exp", "opset11", [node("Exp", ["t"], ["y"])], lambda t, w: t.exp(), opset=11)
case("Log", "of_sigmoid", [SIGMOID, node("Log", ["s"], ["y"])], lambda t, w: torch.sigmoid(t).log())
case("Abs", "plain", [node("Abs", ["t"], ["y"])], lambda t, w: t.abs())
case("Erf", "plain", [node("Erf", ["t"], ["y"])], lambda t, w: torch.erf(t), scale=1.5)
# nn.GELU as torch exports it before opset 20: x * (erf(x / sqrt 2) + 1) * 0.5
case("Erf", "gelu_decomposed",
     [node("Div", ["t", "sqrt2"], ["d"]), node("Erf", ["d"], ["e"]), node("Add", ["e", "one"], ["p"]),
      node("Mul", ["t", "p"], ["m"]), node("Mul", ["m", "half"], ["y"])],
     lambda t, w: F.gelu(t), init={"sqrt2": scalar(math.sqrt(2)), "one": scalar(1.0), "half": scalar(0.5)},
     scale=2.0, opset=13)

# ---------------------------------------------------------------- Pow

case("Pow", "square", [node("Pow", ["t", "two"], ["y"])], lambda t, w: t ** 2, init={"two": scalar(2.0)})
case("Pow", "cube_opset11", [node("Pow", ["t", "three"], ["y"])], lambda t, w: t ** 3,
     init={"three": scalar(3.0)}, opset=11)
case("Pow", "int64_exponent", [node("Pow", ["t", "three"], ["y"])], lambda t, w: t ** 3,
     init={"three": np.array(3, np.int64)}, opset=15)
case("Pow", "per_channel_exponent", [SIGMOID, node("Pow", ["s", "e"], ["y"])],
     lambda t, w: torch.sigmoid(t) ** w["e"], init={"e": rand(3, 1, 1, low=0.5, high=2.5)})
case("Pow", "exponent_needs_gradient", [node("Pow", ["base", "t"], ["y"])], lambda t, w: w["base"] ** t,
     init={"base": rand(3, 1, 1, low=0.5, high=2.0)})
case("Pow", "base_and_broadcast_exponent_need_gradient", [SIGMOID, GAP, node("Pow", ["s", "g"], ["y"])],
     lambda t, w: torch.sigmoid(t) ** _gap(t))
# exponents known only at run time (rank / 2 = 2.0, rank - 1 = 3 as int64) on bases of both signs
case("Pow", "exponent_computed", [node("Shape", ["t"], ["t_shape"]), node("Size", ["t_shape"], ["rank"]),
                                  node("Cast", ["rank"], ["four"], to=1), node("Div", ["four", "two"], ["e"]),
                                  node("Pow", ["t", "e"], ["y"])],
     lambda t, w: t ** 2, init={"two": scalar(2.0)})
case("Pow", "int64_exponent_computed", [node("Shape", ["t"], ["t_shape"]), node("Size", ["t_shape"], ["rank"]),
                                        node("Sub", ["rank", "one"], ["e"]), node("Pow", ["t", "e"], ["y"])],
     lambda t, w: t ** 3, init={"one": np.array(1, np.int64)})

# The tanh approximation of GELU as exporters decompose it: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
case("Pow", "tanh_gelu_decomposed",
     [node("Pow", ["t", "three"], ["cube"]), node("Mul", ["cube", "c"], ["cc"]), node("Add", ["t", "cc"], ["inner"]),
      node("Mul", ["inner", "k"], ["u"]), node("Tanh", ["u"], ["th"]), node("Add", ["th", "one"], ["p"]),
      node("Mul", ["t", "p"], ["m"]), node("Mul", ["m", "half"], ["y"])],
     lambda t, w: F.gelu(t, approximate="tanh"),
     init={"three": scalar(3.0), "c": scalar(0.044715), "k": scalar(math.sqrt(2 / math.pi)), "one": scalar(1.0),
           "half": scalar(0.5)}, scale=2.0)

# ---------------------------------------------------------------- activations

for _approximate in ("none", "tanh"):
    case("Gelu", _approximate, [node("Gelu", ["t"], ["y"], approximate=_approximate)],
         lambda t, w, a=_approximate: F.gelu(t, approximate=a), scale=2.0, opset=20)
case("Gelu", "default", [node("Gelu", ["t"], ["y"])], lambda t, w: F.gelu(t), scale=2.0, opset=20)

case("Softplus", "plain", [node("Softplus", ["t"], ["y"])], lambda t, w: F.softplus(t), scale=3.0)
for _opset in (18, 22):
    case("Mish", "plain", [node("Mish", ["t"], ["y"])], lambda t, w: F.mish(t), scale=3.0, opset=_opset)

case("Elu", "default_alpha", [node("Elu", ["t"], ["y"])], lambda t, w: F.elu(t), scale=2.0)
case("Elu", "alpha0.5", [node("Elu", ["t"], ["y"], alpha=0.5)], lambda t, w: F.elu(t, 0.5), scale=2.0, opset=11)

SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875  # ONNX's float32 defaults


def _selu(t: torch.Tensor, alpha: float = SELU_ALPHA, gamma: float = SELU_GAMMA) -> torch.Tensor:
    return gamma * torch.where(t > 0, t, alpha * (t.exp() - 1))


case("Selu", "default", [node("Selu", ["t"], ["y"])], lambda t, w: _selu(t), scale=2.0)
case("Selu", "alpha_gamma", [node("Selu", ["t"], ["y"], alpha=1.5, gamma=0.75)],
     lambda t, w: _selu(t, 1.5, 0.75), scale=2.0)


def _prelu(t: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0, t, slope * t)


case("PRelu", "per_channel_slope", [node("PRelu", ["t", "slope"], ["y"])], lambda t, w: _prelu(t, w["slope"]),
     init={"slope": rand(3, 1, 1)})
case("PRelu", "scalar_slope", [node("PRelu", ["t", "slope"], ["y"])], lambda t, w: _prelu(t, w["slope"]),
     init={"slope": rand(1)}, opset=11)
case("PRelu", "last_axis_slope", [node("PRelu", ["t", "slope"], ["y"])], lambda t, w: _prelu(t, w["slope"]),
     init={"slope": rand(6)})
case("PRelu", "slope_needs_gradient", [GAP, node("PRelu", ["t", "g"], ["y"])], lambda t, w: _prelu(t, _gap(t)))

# ---------------------------------------------------------------- Min, Max, Where

for _op, _torch in (("Max", torch.maximum), ("Min", torch.minimum)):
    case(_op, "constant_per_channel", [node(_op, ["t", "c"], ["y"])], lambda t, w, f=_torch: f(t, w["c"]),
         init={"c": rand(3, 1, 1)})
    case(_op, "broadcast_operand_needs_gradient", [GAP, node(_op, ["g", "t"], ["y"])],
         lambda t, w, f=_torch: f(_gap(t), t), opset=11)
    case(_op, "three_inputs", [node("Neg", ["t"], ["n"]), node(_op, ["t", "n", "c"], ["y"])],
         lambda t, w, f=_torch: f(f(t, -t), w["c"]), init={"c": rand(6)})
    case(_op, "single_input", [node(_op, ["t"], ["y"])], lambda t, w: t)
    # Ties: torch.maximum / torch.minimum give half the gradient to each side (a full one would double it).
    case(_op, "ties_everywhere", [node("Identity", ["t"], ["u"]), node(_op, ["t", "u"], ["m"]),
                                  node("Mul", ["m", "c"], ["y"])],
         lambda t, w, f=_torch: f(t, t * 1.0) * w["c"], init={"c": rand(3, 1, 1)})
    case(_op, "ties_on_some_channels", [node("Mul", ["t", "c"], ["tc"]), node(_op, ["t", "tc"], ["y"])],
         lambda t, w, f=_torch: f(t, t * w["c"]), init={"c": np.array([1, 0.5, 1], np.float32).reshape(3, 1, 1)})

case("Where", "condition_from_target", [node("Greater", ["t", "zero"], ["positive"]),
                                        node("Where", ["positive", "t", "c"], ["y"])],
     lambda t, w: torch.where(t > 0, t, w["c"]), init={"zero": scalar(0.0), "c": rand(3, 1, 1)})
case("Where", "both_need_gradient_broadcast", [GAP, node("Where", ["mask", "g", "t"], ["y"])],
     lambda t, w: torch.where(w["mask"], _gap(t), t), init={"mask": rand(1, 6) > 0}, opset=11)
case("Where", "broadcast_condition_and_operands",
     [GAP, node("Mul", ["t", "t"], ["sq"]), node("Where", ["mask", "sq", "g"], ["y"])],
     lambda t, w: torch.where(w["mask"], t * t, _gap(t)), init={"mask": rand(3, 1, 1) > 0})

# ---------------------------------------------------------------- Softmax in attention

ATTENTION = [node("Transpose", ["t"], ["tt"], perm=[0, 1, 3, 2]), node("MatMul", ["t", "tt"], ["scores"]),
             node("Mul", ["scores", "scale"], ["scaled"])]  # [N, heads=3, T=6, d=6] -> scores [N, 3, 6, 6]


def _attention(t: torch.Tensor, function, axis: int) -> torch.Tensor:
    weights = function((t @ t.transpose(2, 3)) / math.sqrt(6), axis)
    return weights @ t


for _op, _function in (("Softmax", F.softmax), ("LogSoftmax", F.log_softmax)):
    case(_op, "attention_axis-1", ATTENTION + [node(_op, ["scaled"], ["weights"], axis=-1),
                                               node("MatMul", ["weights", "t"], ["y"])],
         lambda t, w, f=_function: _attention(t, f, -1), init={"scale": scalar(1 / math.sqrt(6))})
    case(_op, "attention_default_axis", ATTENTION + [node(_op, ["scaled"], ["weights"]),
                                                     node("MatMul", ["weights", "t"], ["y"])],
         lambda t, w, f=_function: _attention(t, f, -1), init={"scale": scalar(1 / math.sqrt(6))}, opset=13)
    case(_op, "axis-2", [node(_op, ["t"], ["y"], axis=-2)], lambda t, w, f=_function: f(t, -2), scale=2.0, opset=18)
    case(_op, "axis-3_rank3_tokens", [node("Reshape", ["t", "shape"], ["r"]), node(_op, ["r"], ["y"], axis=-3)],
         lambda t, w, f=_function: f(t.reshape(t.shape[0], 3, 36), -3).reshape(t.shape[0], 3, 36),
         init={"shape": ints(0, 3, 36)}, scale=2.0)

# ---------------------------------------------------------------- LayerNormalization


def _layer_norm(t: torch.Tensor, w: dict, axis: int, epsilon: float = 1e-5) -> torch.Tensor:
    return F.layer_norm(t, t.shape[axis:], w["scale"].expand(t.shape[axis:]),
                        w["bias"].expand(t.shape[axis:]) if "bias" in w else None, epsilon)


for _axis, _scale_shape, _bias in ((-1, (6,), True), (1, (3, 6, 6), False), (2, (6, 6), True), (-3, (3, 6, 6), True),
                                   (2, (6,), False)):
    _init = {"scale": rand(*_scale_shape)}
    _inputs = ["t", "scale"]
    if _bias:
        _init["bias"] = rand(*_scale_shape)
        _inputs.append("bias")
    case("LayerNormalization", f"axis{_axis}_scale{'x'.join(map(str, _scale_shape))}_{'bias' if _bias else 'no_bias'}",
         [node("LayerNormalization", _inputs, ["y"], axis=_axis)],
         lambda t, w, a=_axis: _layer_norm(t, w, a), init=_init, scale=2.0)
case("LayerNormalization", "epsilon_opset18", [node("LayerNormalization", ["t", "scale", "bias"], ["y"], epsilon=0.1)],
     lambda t, w: _layer_norm(t, w, -1, 0.1), init={"scale": rand(6), "bias": rand(6)}, opset=18)
case("LayerNormalization", "statistics_outputs",
     [node("LayerNormalization", ["t", "scale", "bias"], ["y", "mean", "inv_std"], axis=2)],
     lambda t, w: _layer_norm(t, w, 2), init={"scale": rand(6, 6), "bias": rand(6, 6)})
# Vision-transformer tokens [N, T, C] normalized over channels
case("LayerNormalization", "tokens",
     [node("Reshape", ["t", "shape"], ["r"]), node("Transpose", ["r"], ["tokens"], perm=[0, 2, 1]),
      node("LayerNormalization", ["tokens", "scale", "bias"], ["y"])],
     lambda t, w: F.layer_norm(t.reshape(t.shape[0], 3, 36).transpose(1, 2), (3,), w["scale"], w["bias"]),
     init={"shape": ints(0, 3, -1), "scale": rand(3), "bias": rand(3)})
case("LayerNormalization", "scale_and_bias_need_gradient",
     [node("ReduceMean", ["t"], ["scale"], axes=[0, 1, 2], keepdims=0),
      node("ReduceMax", ["t"], ["bias"], axes=[0, 1, 2], keepdims=0),
      node("LayerNormalization", ["t", "scale", "bias"], ["y"])],
     lambda t, w: F.layer_norm(t, (6,), t.mean((0, 1, 2)), t.amax((0, 1, 2))), scale=2.0)

# LayerNorm as torch exports it before opset 17; the Sqrt rule case shows the primitive rules compose.
for _opset in (13, 18):
    _axes = {"axes": [-1]} if _opset < 18 else {}
    _inputs = [] if _opset < 18 else ["axes"]
    case("Sqrt", "layer_norm_decomposed",
         [node("ReduceMean", ["t"] + _inputs, ["mean"], **_axes), node("Sub", ["t", "mean"], ["centered"]),
          node("Pow", ["centered", "two"], ["square"]), node("ReduceMean", ["square"] + _inputs, ["variance"], **_axes),
          node("Add", ["variance", "epsilon"], ["v"]), node("Sqrt", ["v"], ["std"]),
          node("Div", ["centered", "std"], ["normalized"]), node("Mul", ["normalized", "scale"], ["scaled"]),
          node("Add", ["scaled", "bias"], ["y"])],
         lambda t, w: F.layer_norm(t, (6,), w["scale"], w["bias"]),
         init=dict({"two": scalar(2.0), "epsilon": scalar(1e-5), "scale": rand(6), "bias": rand(6)},
                   **({"axes": ints(-1)} if _opset >= 18 else {})), opset=_opset)

# ---------------------------------------------------------------- InstanceNormalization, GroupNormalization

for _opset in (11, 17, 22):
    case("InstanceNormalization", "plain",
         [node("InstanceNormalization", ["t", "scale", "bias"], ["y"])],
         lambda t, w: F.instance_norm(t, weight=w["scale"], bias=w["bias"]),
         init={"scale": rand(3), "bias": rand(3)}, scale=2.0, opset=_opset)
case("InstanceNormalization", "epsilon_3d", [node("Reshape", ["t", "shape"], ["r"]),
                                             node("InstanceNormalization", ["r", "scale", "bias"], ["y"], epsilon=0.1)],
     lambda t, w: F.instance_norm(t.reshape(t.shape[0], 3, -1), weight=w["scale"], bias=w["bias"], eps=0.1),
     init={"shape": ints(0, 3, -1), "scale": rand(3), "bias": rand(3)})
CHANNEL_STATISTICS = [node("ReduceMean", ["t", "axes"], ["scale"], keepdims=0),  # scale, bias: [C] from t
                      node("ReduceMax", ["t", "axes"], ["bias"], keepdims=0)]
case("InstanceNormalization", "scale_and_bias_need_gradient",
     CHANNEL_STATISTICS + [node("InstanceNormalization", ["t", "scale", "bias"], ["y"])],
     lambda t, w: F.instance_norm(t, weight=t.mean((0, 2, 3)), bias=t.amax((0, 2, 3))), init={"axes": ints(0, 2, 3)},
     opset=18)


def group_norm(t: torch.Tensor, w: dict, groups: int, per_channel: bool, epsilon: float = 1e-5) -> torch.Tensor:
    """GroupNormalization-21 takes scale and bias per channel, GroupNormalization-18 per group."""
    scale, bias = w["scale"], w["bias"]
    if not per_channel:
        repeat = t.shape[1] // groups
        scale, bias = scale.repeat_interleave(repeat), bias.repeat_interleave(repeat)
    return F.group_norm(t, groups, scale, bias, epsilon)


# GroupNormalization-18 (deprecated, refused by onnx.checker) is tested in test_rules_dynamic_math.py.
for _groups in (1, 2, 3, 6):
    case("GroupNormalization", f"groups{_groups}",
         [node("GroupNormalization", ["t", "scale", "bias"], ["y"], num_groups=_groups)],
         lambda t, w, g=_groups: group_norm(t, w, g, True), init={"scale": rand(6), "bias": rand(6)},
         shape=(6, 4, 5), scale=2.0, opset=21)
case("GroupNormalization", "epsilon_3d",
     [node("Reshape", ["t", "shape"], ["r"]),
      node("GroupNormalization", ["r", "scale", "bias"], ["y"], num_groups=3, epsilon=0.1)],
     lambda t, w: group_norm(t.reshape(t.shape[0], 6, -1), w, 3, True, 0.1),
     init={"shape": ints(0, 6, -1), "scale": rand(6), "bias": rand(6)}, shape=(6, 4, 5), opset=21)
case("GroupNormalization", "scale_and_bias_need_gradient",
     CHANNEL_STATISTICS + [node("GroupNormalization", ["t", "scale", "bias"], ["y"], num_groups=2)],
     lambda t, w: F.group_norm(t, 2, t.mean((0, 2, 3)), t.amax((0, 2, 3))), init={"axes": ints(0, 2, 3)},
     shape=(6, 4, 5), opset=21)

# ---------------------------------------------------------------- ReduceMax, ReduceMin, ReduceL2


def _reduce(op: str, opset: int, axes: list[int] | None, keepdims: int, output: str = "r") -> list:
    """Reduce t with axes as attribute (before opset 18) or input."""
    if axes is None:
        return [node(op, ["t"], [output], keepdims=keepdims)]
    if opset >= 18:
        return [node(op, ["t", "axes"], [output], keepdims=keepdims)]
    return [node(op, ["t"], [output], axes=axes, keepdims=keepdims)]


def _torch_reduce(op: str, t: torch.Tensor, axes: list[int] | None, keepdims: int) -> torch.Tensor:
    axes = tuple(axes) if axes is not None else tuple(range(t.dim()))
    if op == "ReduceMax":
        return t.amax(axes, keepdim=bool(keepdims))
    if op == "ReduceMin":
        return t.amin(axes, keepdim=bool(keepdims))
    return torch.linalg.vector_norm(t, 2, axes, keepdim=bool(keepdims))


REDUCE_ALL = [node("Mul", ["t", "r"], ["y"])]  # keeps the batch axis after a full reduction

for _op, _opsets in (("ReduceMax", (11, 18, 20)), ("ReduceMin", (13, 18)), ("ReduceL2", (11, 18))):
    for _opset, (_axes, _keepdims) in itertools.product(_opsets, (([2, 3], 1), ([2, 3], 0), ([1, -1], 0), ([-2], 1))):
        case(_op, f"axes{_axes}_keepdims{_keepdims}", _reduce(_op, _opset, _axes, _keepdims, "y"),
             lambda t, w, o=_op, a=_axes, k=_keepdims: _torch_reduce(o, t, a, k),
             init={"axes": ints(*_axes)} if _opset >= 18 else {}, opset=_opset)
    for _keepdims in (0, 1):
        case(_op, f"all_axes_keepdims{_keepdims}", _reduce(_op, _opsets[-1], None, _keepdims) + REDUCE_ALL,
             lambda t, w, o=_op, k=_keepdims: t * _torch_reduce(o, t, None, k), opset=_opsets[-1])
    # no axes, no reduction: ReduceL2 is then sqrt(x^2) = |x| (as ONNX's reference and ONNX Runtime compute it)
    case(_op, "empty_axes_noop", [node(_op, ["t", "axes"], ["y"], noop_with_empty_axes=1)],
         lambda t, w, o=_op: t.abs() if o == "ReduceL2" else t, init={"axes": np.zeros(0, np.int64)}, opset=18)

# Ties: torch.amax / amin split the gradient evenly among equal elements (a full one to each would double it).
for _op in ("ReduceMax", "ReduceMin"):
    case(_op, "ties_split_evenly", [node("Concat", ["t", "t"], ["c"], axis=3),
                                    node(_op, ["c"], ["y"], axes=[3], keepdims=1)],
         lambda t, w, o=_op: _torch_reduce(o, torch.cat([t, t], 3), [3], 1), opset=13)
    case(_op, "ties_of_clipped_values", [node("Clip", ["t", "low", "high"], ["c"]),
                                         node(_op, ["c"], ["y"], axes=[2], keepdims=0)],
         lambda t, w, o=_op: _torch_reduce(o, t.clamp(-0.5, 0.5), [2], 0),
         init={"low": scalar(-0.5), "high": scalar(0.5)}, opset=13)
case("ReduceL2", "zero_norm", [node("Mul", ["t", "mask"], ["m"]), node("ReduceL2", ["m"], ["y"], axes=[3])],
     lambda t, w: torch.linalg.vector_norm(t * w["mask"], 2, 3, keepdim=True),
     init={"mask": np.array([1, 0, 1], np.float32).reshape(3, 1, 1)}, opset=13)

# ---------------------------------------------------------------- reduction axes computed at run time

# axes = Range(start, rank of t): [2, 3] or [1, 2, 3], known only when the graph runs
RUNTIME_AXES = [node("Shape", ["t"], ["t_shape"]), node("Size", ["t_shape"], ["rank"]),
                node("Range", ["start", "rank", "step"], ["axes"])]
NEGATIVE_RUNTIME_AXES = RUNTIME_AXES[:2] + [node("Neg", ["rank"], ["minus_rank"]),
                                            node("Range", ["start", "minus_rank", "minus_one"], ["axes"])]


def _axes_from(start: int, step: int = 1) -> dict:
    return {"start": np.array(start, np.int64), "step": np.array(step, np.int64),
            "minus_one": np.array(-1, np.int64)}


for _op, _opset in (("ReduceSum", 13), ("ReduceMean", 18), ("ReduceMax", 18), ("ReduceMin", 18), ("ReduceL2", 18)):
    for _keepdims in (0, 1):
        case(_op, f"runtime_axes_keepdims{_keepdims}",
             RUNTIME_AXES + [node(_op, ["t", "axes"], ["y"], keepdims=_keepdims)],
             lambda t, w, o=_op, k=_keepdims: (
                 t.sum((2, 3), keepdim=bool(k)) if o == "ReduceSum" else t.mean((2, 3), keepdim=bool(k))
                 if o == "ReduceMean" else _torch_reduce(o, t, [2, 3], k)),
             init=_axes_from(2), opset=_opset)
    case(_op, "runtime_negative_axes_keepdims0",
         NEGATIVE_RUNTIME_AXES + [node(_op, ["t", "axes"], ["y"], keepdims=0)],  # axes [-1, -2, -3]
         lambda t, w, o=_op: (t.sum((1, 2, 3)) if o == "ReduceSum" else t.mean((1, 2, 3))
                              if o == "ReduceMean" else _torch_reduce(o, t, [1, 2, 3], 0)).reshape(-1, 1),
         init=_axes_from(-1), opset=_opset)
    case(_op, "runtime_empty_axes_reduce_all",
         RUNTIME_AXES + [node(_op, ["t", "axes"], ["r"], keepdims=0)] + REDUCE_ALL,  # Range(4, 4): no axes
         lambda t, w, o=_op: t * (t.sum() if o == "ReduceSum" else t.mean() if o == "ReduceMean"
                                  else _torch_reduce(o, t, None, 0)),
         init=_axes_from(4), opset=_opset)
    case(_op, "runtime_empty_axes_noop",
         RUNTIME_AXES + [node(_op, ["t", "axes"], ["y"], keepdims=0, noop_with_empty_axes=1)],
         lambda t, w, o=_op: t.abs() if o == "ReduceL2" else t, init=_axes_from(4), opset=_opset)
