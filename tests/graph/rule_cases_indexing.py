"""Rule cases of indexing, shape, resampling, linear-algebra and convolution ops (checked by test_rules.py)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto

from rule_harness import case, ints, linear_asymmetric, node, rand, scalar  # noqa: F401

INT64_MAX = int(np.iinfo(np.int64).max)
INT64_MIN = int(np.iinfo(np.int64).min)
# A tensor computed at run time from t's shape: shape inference sees its type but not its value.
SHAPE = node("Shape", ["t"], ["t_shape"])


def _gap(t: torch.Tensor) -> torch.Tensor:
    return t.mean((2, 3), keepdim=True)


# ---------------------------------------------------------------- MatMul: vectors and batches

case("MatMul", "1d_right_vector", [node("MatMul", ["t", "v"], ["y"])], lambda t, w: t @ w["v"],
     init={"v": rand(6)})
case("MatMul", "1d_left_vector", [node("MatMul", ["v", "t"], ["y"])], lambda t, w: w["v"] @ t,
     init={"v": rand(6)}, opset=11)
case("MatMul", "1d_vector_needs_gradient",
     [node("ReduceMean", ["t"], ["v"], axes=[0, 1, 2], keepdims=0), node("MatMul", ["t", "v"], ["y"])],
     lambda t, w: t @ t.mean((0, 1, 2)), opset=13)
case("MatMul", "1d_both_operands",
     [node("Reshape", ["t", "flat"], ["v"]), node("MatMul", ["v", "v"], ["dot"]), node("Mul", ["t", "dot"], ["y"])],
     lambda t, w: t * (t.reshape(-1) @ t.reshape(-1)), init={"flat": ints(-1)}, scale=0.3)
case("MatMul", "attention_scores_nhtd_nhdt",
     [node("Mul", ["t", "w"], ["k"]), node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
      node("MatMul", ["t", "kt"], ["y"])],
     lambda t, w: t @ (t * w["w"]).transpose(2, 3), init={"w": rand(1, 6)}, shape=(2, 5, 6))
case("MatMul", "tokens_times_weights_ntc_cd",
     [node("Reshape", ["t", "tokens"], ["r"]), node("MatMul", ["r", "w"], ["y"])],
     lambda t, w: t.reshape(t.shape[0], -1, 6) @ w["w"], init={"tokens": ints(0, -1, 6), "w": rand(6, 4)})
case("MatMul", "weights_need_gradient_summed_over_batch",
     [node("Reshape", ["t", "tokens"], ["r"]), node("ReduceMean", ["r"], ["m"], axes=[0], keepdims=0),
      node("MatMul", ["r", "m"], ["y"])],
     lambda t, w: t.reshape(t.shape[0], -1, 6) @ t.reshape(t.shape[0], -1, 6).mean(0),
     init={"tokens": ints(0, -1, 6)}, shape=(1, 6, 6))

# ---------------------------------------------------------------- Einsum

case("Einsum", "attention_scores_bhid_bhjd",
     [node("Mul", ["t", "w"], ["k"]), node("Einsum", ["t", "k"], ["y"], equation="bhid,bhjd->bhij")],
     lambda t, w: torch.einsum("bhid,bhjd->bhij", t, t * w["w"]), init={"w": rand(1, 1, 6)}, shape=(2, 5, 6))
case("Einsum", "attention_values_bhij_bhjd",
     [node("Softmax", ["t"], ["p"], axis=-1), node("Mul", ["t", "w"], ["v"]),
      node("Einsum", ["p", "v"], ["y"], equation="bhij,bhjd->bhid")],
     lambda t, w: torch.einsum("bhij,bhjd->bhid", torch.softmax(t, -1), t * w["w"]), init={"w": rand(1, 6, 1)},
     opset=13)
for _opset in (12, 17):
    case("Einsum", "ellipsis_linear", [node("Einsum", ["t", "w"], ["y"], equation="...ij,jk->...ik")],
         lambda t, w: torch.einsum("...ij,jk->...ik", t, w["w"]), init={"w": rand(6, 4)}, opset=_opset)
case("Einsum", "ellipsis_broadcast_operand_needs_gradient",
     [node("ReduceMean", ["t"], ["m"], axes=[0], keepdims=1),
      node("Einsum", ["t", "m"], ["y"], equation="...ij,...jk->...ik")],
     lambda t, w: torch.einsum("...ij,...jk->...ik", t, t.mean(0, keepdim=True)), opset=17)
case("Einsum", "mask_head_bchw_bkc",
     [node("ReduceMean", ["t"], ["m"], axes=[3], keepdims=0), node("Transpose", ["m"], ["q"], perm=[0, 2, 1]),
      node("Einsum", ["t", "q"], ["y"], equation="bchw,bkc->bkhw")],
     lambda t, w: torch.einsum("bchw,bkc->bkhw", t, t.mean(3).transpose(1, 2)))
case("Einsum", "implicit_output", [node("Einsum", ["t", "w"], ["y"], equation="bchw,c")],
     lambda t, w: torch.einsum("bchw,c->bhw", t, w["w"]), init={"w": rand(3)})
case("Einsum", "index_summed_from_one_operand", [node("Einsum", ["t"], ["y"], equation="bchw -> bhc")],
     lambda t, w: torch.einsum("bchw->bhc", t))
case("Einsum", "diagonal_of_the_other_operand",
     [node("Einsum", ["t", "w"], ["y"], equation="bcij,kk->bcik")],
     lambda t, w: torch.einsum("bcij,kk->bcik", t, w["w"]), init={"w": rand(6, 6)})

# ---------------------------------------------------------------- Gather and GatherElements

case("Gather", "scalar_index_class_token",
     [node("Reshape", ["t", "tokens"], ["r"]), node("Transpose", ["r"], ["tokens_ntc"], perm=[0, 2, 1]),
      node("Gather", ["tokens_ntc", "zero"], ["y"], axis=1)],
     lambda t, w: t.reshape(t.shape[0], 3, -1).transpose(1, 2)[:, 0],
     init={"tokens": ints(0, 3, -1), "zero": np.array(0, np.int64)})
case("Gather", "duplicate_indices_axis1", [node("Gather", ["t", "i"], ["y"], axis=1)],
     lambda t, w: t[:, torch.tensor([[0, 2], [2, 2]])], init={"i": np.array([[0, 2], [2, 2]], np.int64)},
     opset=11)
case("Gather", "negative_indices_last_axis", [node("Gather", ["t", "i"], ["y"], axis=-1)],
     lambda t, w: t[..., torch.tensor([5, 0, 5])], init={"i": ints(-1, 0, -1)}, opset=13)
case("Gather", "int32_indices_batch_axis", [node("Gather", ["t", "i"], ["y"], axis=0)],
     lambda t, w: t[torch.tensor([1, 0])], init={"i": np.array([1, 0], np.int32)})
case("Gather", "computed_indices",
     [node("ReduceMean", ["t"], ["m"], axes=[2, 3], keepdims=0), node("ArgMax", ["m"], ["i"], axis=1, keepdims=0),
      node("Gather", ["t", "i"], ["y"], axis=1)],
     lambda t, w: t[:, t.mean((2, 3)).argmax(1)])
# torchvision's MultiheadAttention export picks q, k, v (proj[0], ...) from a tensor of unknown rank.
case("Gather", "input_of_unknown_rank",
     [node("Abs", ["t"], ["a"]), node("ReduceMean", ["a"], ["m"]), node("Reshape", ["m", "one"], ["m1"]),
      node("Neg", ["m1"], ["n"]), node("Concat", ["m1", "n"], ["pair"], axis=0),
      node("ArgMax", ["pair"], ["zero"], keepdims=1), node("Add", ["zero", "four"], ["length"]),  # [4], unseen
      SHAPE, node("Slice", ["t_shape", "zero", "length"], ["same_shape"]),
      node("Reshape", ["t", "same_shape"], ["unknown_rank"]), node("Gather", ["unknown_rank", "i"], ["y"], axis=1)],
     lambda t, w: t[:, torch.tensor([2, 0])], init={"one": ints(1), "four": ints(4), "i": ints(2, 0)}, opset=13)
_PICKS = np.random.default_rng(7).integers(-400, 400, size=(5, 12))  # repeats, both signs
for _opset in (13, 17):  # a 400-long axis: one-hot MatMul before opset 16, ScatterElements with add after
    case("Gather", "long_axis_repeated_indices",
         [node("Reshape", ["t", "flat"], ["f"]), node("Gather", ["f", "i"], ["y"], axis=1)],
         lambda t, w: t.reshape(t.shape[0], -1)[:, torch.from_numpy(_PICKS % 400)],
         init={"flat": ints(0, -1), "i": _PICKS}, shape=(1, 20, 20), opset=_opset)

_ELEMENT_PICKS = np.random.default_rng(8).integers(-6, 6, size=(2, 3, 6, 4))  # repeats along the last axis
case("GatherElements", "repeated_indices", [node("GatherElements", ["t", "i"], ["y"], axis=3)],
     lambda t, w: t.gather(3, torch.from_numpy(_ELEMENT_PICKS % 6)), init={"i": _ELEMENT_PICKS}, opset=16)
_PERMUTATION = np.stack([np.random.default_rng(9).permutation(3) for _ in range(2 * 6 * 6)]).reshape(
    2, 6, 6, 3).transpose(0, 3, 1, 2)
case("GatherElements", "permutation_before_opset16", [node("GatherElements", ["t", "i"], ["y"], axis=1)],
     lambda t, w: t.gather(1, torch.from_numpy(_PERMUTATION)), init={"i": _PERMUTATION.copy()}, opset=13)
case("GatherElements", "computed_indices_max",
     [node("ArgMax", ["t"], ["i"], axis=2, keepdims=1), node("GatherElements", ["t", "i"], ["y"], axis=-2)],
     lambda t, w: t.gather(2, t.argmax(2, keepdim=True)), opset=18)

# ---------------------------------------------------------------- Expand and Tile

case("Expand", "channel_weights_over_the_map",
     [node("GlobalAveragePool", ["t"], ["g"]), node("Expand", ["g", "shape"], ["e"]), node("Mul", ["e", "w"], ["y"])],
     lambda t, w: _gap(t).expand(-1, -1, 6, 6) * w["w"], init={"shape": ints(1, 1, 6, 6), "w": rand(6, 6)})
case("Expand", "rank_grows",
     [node("ReduceMean", ["t"], ["m"], axes=[0], keepdims=0), node("Expand", ["m", "shape"], ["e"]),
      node("Mul", ["e", "t"], ["y"])],
     lambda t, w: t.mean(0).expand(2, 3, 6, 6) * t, init={"shape": ints(2, 1, 1, 1)}, opset=13)
case("Expand", "to_computed_shape",
     [node("GlobalAveragePool", ["t"], ["g"]), SHAPE, node("Expand", ["g", "t_shape"], ["e"]),
      node("Mul", ["e", "t"], ["y"])],
     lambda t, w: _gap(t).expand_as(t) * t)

case("Tile", "spatial", [node("Tile", ["t", "repeats"], ["r"]), node("Mul", ["r", "w"], ["y"])],
     lambda t, w: t.repeat(1, 1, 2, 3) * w["w"], init={"repeats": ints(1, 1, 2, 3), "w": rand(12, 18)})
case("Tile", "channels_opset11", [node("Tile", ["t", "repeats"], ["r"]), node("Mul", ["r", "w"], ["y"])],
     lambda t, w: t.repeat(1, 2, 1, 1) * w["w"], init={"repeats": ints(1, 2, 1, 1), "w": rand(6, 1, 1)},
     opset=11)
case("Tile", "computed_repeats",
     [SHAPE, node("Div", ["t_shape", "t_shape"], ["ones"]), node("Mul", ["ones", "counts"], ["repeats"]),
      node("Tile", ["t", "repeats"], ["r"]), node("Mul", ["r", "w"], ["y"])],
     lambda t, w: t.repeat(1, 2, 1, 2) * w["w"], init={"counts": ints(1, 2, 1, 2), "w": rand(12)})

# ---------------------------------------------------------------- Slice: steps, negative steps, computed bounds

case("Slice", "step2_spatial", [node("Slice", ["t", "starts", "ends", "axes", "steps"], ["s"]),
                                 node("Mul", ["s", "s"], ["y"])],
     lambda t, w: t[:, :, 0:6:2, 1:6:2] ** 2,
     init={"starts": ints(0, 1), "ends": ints(6, 6), "axes": ints(2, 3), "steps": ints(2, 2)})
case("Slice", "reversed_axis", [node("Slice", ["t", "starts", "ends", "axes", "steps"], ["s"]),
                                node("Mul", ["s", "w"], ["y"])],
     lambda t, w: t.flip(3) * w["w"],
     init={"starts": ints(-1), "ends": ints(INT64_MIN), "axes": ints(3), "steps": ints(-1), "w": rand(6)})
case("Slice", "negative_step2_and_channels", [node("Slice", ["t", "starts", "ends", "axes", "steps"], ["s"]),
                                              node("Mul", ["s", "w"], ["y"])],
     lambda t, w: t[:, 1:][..., torch.tensor([4, 2])] * w["w"],
     init={"starts": ints(4, 1), "ends": ints(0, 100), "axes": ints(-1, 1), "steps": ints(-2, 1), "w": rand(2)},
     opset=13)
case("Slice", "computed_starts",
     [SHAPE, node("Slice", ["t_shape", "three", "four"], ["width"]), node("Sub", ["width", "four"], ["starts"]),
      node("Slice", ["t", "starts", "end", "three"], ["s"]), node("Mul", ["s", "s"], ["y"])],
     lambda t, w: t[..., 2:] ** 2, init={"three": ints(3), "four": ints(4), "end": ints(INT64_MAX)})
case("Slice", "computed_ends_step3",
     [SHAPE, node("Slice", ["t_shape", "two", "three"], ["height"]), node("Sub", ["height", "one"], ["ends"]),
      node("Slice", ["t", "zero", "ends", "two", "step"], ["s"]), node("Mul", ["s", "s"], ["y"])],
     lambda t, w: t[:, :, 0:5:3] ** 2,
     init={"zero": ints(0), "one": ints(1), "two": ints(2), "three": ints(3), "step": ints(3)}, opset=17)

# ---------------------------------------------------------------- Pad: cropping, computed pads, axes, fill value

case("Pad", "negative_pads_crop", [node("Pad", ["t", "pads"], ["p"]), node("Mul", ["p", "w"], ["y"])],
     lambda t, w: F.pad(t, (-1, 1, 1, -2)) * w["w"], init={"pads": ints(0, 0, 1, -1, 0, 0, -2, 1), "w": rand(5, 6)})
case("Pad", "computed_pads",
     [SHAPE, node("Slice", ["t_shape", "three", "four"], ["width"]), node("Sub", ["width", "five"], ["one"]),
      node("Mul", ["one", "pattern"], ["pads"]), node("Pad", ["t", "pads"], ["p"]), node("Mul", ["p", "w"], ["y"])],
     lambda t, w: F.pad(t, (2, 0, 0, 1)) * w["w"],
     init={"three": ints(3), "four": ints(4), "five": ints(5), "pattern": ints(0, 0, 0, 2, 0, 0, 1, 0),
           "w": rand(7, 8)}, opset=13)
case("Pad", "axes_input", [node("Pad", ["t", "pads", "", "axes"], ["p"]), node("Mul", ["p", "w"], ["y"])],
     lambda t, w: F.pad(t, (2, -1, 1, 0)) * w["w"], init={"pads": ints(1, 2, 0, -1), "axes": ints(-2, 3),
                                                         "w": rand(7, 7)}, opset=18)
case("Pad", "fill_value_needs_gradient",
     [node("ReduceMean", ["t"], ["m"], keepdims=0), node("Pad", ["t", "pads", "m"], ["p"]),
      node("Mul", ["p", "w"], ["y"])],
     lambda t, w: (F.pad(t - t.mean(), (1, 2, 0, 1)) + t.mean()) * w["w"],
     init={"pads": ints(0, 0, 0, 1, 0, 0, 1, 2), "w": rand(7, 9)})

# ---------------------------------------------------------------- Resize: modes, coordinate transforms, factors


def _resize(mode: str, coordinate: str, scales=None, sizes=None, opset: int = 13, **extra) -> list:
    """Resize t -> y (with roi, scales and sizes inputs laid out for the opset)."""
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinate, **extra}
    empty = "" if opset >= 13 else "empty"
    if sizes is not None:
        return [node("Resize", ["t", empty, empty, "sizes"], ["y"], **attrs)]
    return [node("Resize", ["t", empty, "scales"], ["y"], **attrs)]


def _resize_init(scales=None, sizes=None, opset: int = 13) -> dict:
    init = {} if opset >= 13 else {"empty": np.zeros(0, np.float32)}
    if scales is not None:
        init["scales"] = np.array(scales, np.float32)
    if sizes is not None:
        init["sizes"] = ints(*sizes)
    return init


RESIZES = [  # (variant, attributes, scales, sizes, torch function)
    ("nearest_x2_floor", dict(mode="nearest", coordinate="asymmetric", nearest_mode="floor"),
     [1, 1, 2, 2], None, lambda t: F.interpolate(t, scale_factor=2, mode="nearest")),
    ("nearest_x1.5_x2.5_floor", dict(mode="nearest", coordinate="asymmetric", nearest_mode="floor"),
     [1, 1, 1.5, 2.5], None, lambda t: F.interpolate(t, scale_factor=(1.5, 2.5), mode="nearest")),
    ("nearest_sizes_floor", dict(mode="nearest", coordinate="asymmetric", nearest_mode="floor"),
     None, [2, 3, 9, 4], lambda t: F.interpolate(t, size=(9, 4), mode="nearest")),
    ("nearest_exact_x3", dict(mode="nearest", coordinate="half_pixel", nearest_mode="round_prefer_ceil"),
     [1, 1, 3, 3], None, lambda t: F.interpolate(t, scale_factor=3, mode="nearest-exact")),
    ("nearest_exact_x1.5", dict(mode="nearest", coordinate="half_pixel", nearest_mode="round_prefer_ceil"),
     [1, 1, 1.5, 1.5], None, lambda t: F.interpolate(t, scale_factor=1.5, mode="nearest-exact")),
    ("bilinear_half_pixel_x2", dict(mode="linear", coordinate="half_pixel"),
     [1, 1, 2, 2], None, lambda t: F.interpolate(t, scale_factor=2, mode="bilinear")),
    ("bilinear_half_pixel_x1.5_x0.5", dict(mode="linear", coordinate="half_pixel"),
     [1, 1, 1.5, 0.5], None, lambda t: F.interpolate(t, scale_factor=(1.5, 0.5), mode="bilinear")),
    ("bilinear_pytorch_half_pixel_sizes", dict(mode="linear", coordinate="pytorch_half_pixel"),
     None, [2, 3, 4, 9], lambda t: F.interpolate(t, size=(4, 9), mode="bilinear")),
    ("bilinear_align_corners_x2", dict(mode="linear", coordinate="align_corners"),
     [1, 1, 2, 2], None, lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)),
    ("bilinear_align_corners_sizes", dict(mode="linear", coordinate="align_corners"),
     None, [2, 3, 9, 4], lambda t: F.interpolate(t, size=(9, 4), mode="bilinear", align_corners=True)),
    ("bilinear_asymmetric_x2_x1.5", dict(mode="linear", coordinate="asymmetric"),
     [1, 1, 2, 1.5], None, lambda t: linear_asymmetric(t, (2, 1.5))),
    ("bicubic_half_pixel_x2", dict(mode="cubic", coordinate="half_pixel"),
     [1, 1, 2, 2], None, lambda t: F.interpolate(t, scale_factor=2, mode="bicubic")),
    ("bicubic_half_pixel_x1.5", dict(mode="cubic", coordinate="half_pixel"),
     [1, 1, 1.5, 1.5], None, lambda t: F.interpolate(t, scale_factor=1.5, mode="bicubic")),
    ("bicubic_align_corners_sizes", dict(mode="cubic", coordinate="align_corners"),
     None, [2, 3, 9, 11], lambda t: F.interpolate(t, size=(9, 11), mode="bicubic", align_corners=True)),
]
for _variant, _attrs, _scales, _sizes, _function in RESIZES:
    _attrs = dict(_attrs)
    case("Resize", _variant, _resize(_attrs.pop("mode"), _attrs.pop("coordinate"), _scales, _sizes, **_attrs),
         lambda t, w, f=_function: f(t), init=_resize_init(_scales, _sizes))
for _opset in (11, 19):
    case("Resize", "bilinear_half_pixel_x2", _resize("linear", "half_pixel", [1, 1, 2, 2], opset=_opset),
         lambda t, w: F.interpolate(t, scale_factor=2, mode="bilinear"),
         init=_resize_init([1, 1, 2, 2], opset=_opset), opset=_opset)
for _variant, _mode, _coordinate, _sizes, _function in (
        ("nearest_sizes_x2", "nearest", "asymmetric", [2, 3, 12, 12],
         lambda t: F.interpolate(t, size=(12, 12), mode="nearest")),
        ("bilinear_sizes", "linear", "half_pixel", [2, 3, 9, 4],
         lambda t: F.interpolate(t, size=(9, 4), mode="bilinear"))):
    case("Resize", _variant, _resize(_mode, _coordinate, sizes=_sizes, opset=11, nearest_mode="floor"),
         lambda t, w, f=_function: f(t), init=_resize_init(sizes=_sizes, opset=11), opset=11)
case("Resize", "axes_attribute", [node("Resize", ["t", "", "scales"], ["y"], mode="linear", axes=[3, 2])],
     lambda t, w: F.interpolate(t, scale_factor=(1.5, 2), mode="bilinear"),
     init={"scales": np.array([2, 1.5], np.float32)}, opset=18)
case("Resize", "computed_sizes",
     [SHAPE, node("Slice", ["t_shape", "zero", "two"], ["batch_channels"]),
      node("Concat", ["batch_channels", "hw"], ["sizes"], axis=0),
      node("Resize", ["t", "", "", "sizes"], ["y"], mode="linear")],
     lambda t, w: F.interpolate(t, size=(9, 4), mode="bilinear"),
     init={"zero": ints(0), "two": ints(2), "hw": ints(9, 4)})
case("Resize", "computed_scales_nearest",
     [SHAPE, node("Cast", ["t_shape"], ["shape_float"], to=TensorProto.FLOAT),
      node("Div", ["shape_float", "shape_float"], ["ones"]), node("Mul", ["ones", "factors"], ["scales"]),
      node("Resize", ["t", "", "scales"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric",
           nearest_mode="floor")],
     lambda t, w: F.interpolate(t, scale_factor=(2, 1.5), mode="nearest"),
     init={"factors": np.array([1, 1, 2, 1.5], np.float32)})
# Models below opset 11 are converted to opset 11 before augmenting (Upsample becomes an asymmetric
# Resize, see test_rules.py), so augment never reaches the Upsample rule.
case("Upsample", "nearest_x2_opset9", [node("Upsample", ["t", "scales"], ["y"], mode="nearest")],
     lambda t, w: F.interpolate(t, scale_factor=2, mode="nearest"),
     init={"scales": np.array([1, 1, 2, 2], np.float32)}, opset=9,
     xfail="augment converts opset-9 models to opset 11, where Upsample is a Resize")

# ---------------------------------------------------------------- ConvTranspose


def _conv_transpose_cropped(t: torch.Tensor, w: dict, stride: int, begin: tuple[int, int], size: tuple[int, int],
                            **kwargs) -> torch.Tensor:
    """The full transposed convolution cropped to size from begin (SAME and output_shape pads)."""
    full = F.conv_transpose2d(t, w["w"], w.get("b"), stride=stride, **kwargs)
    return full[:, :, begin[0]:begin[0] + size[0], begin[1]:begin[1] + size[1]]


case("ConvTranspose", "k3_s2_p1_output_padding1",
     [node("ConvTranspose", ["t", "w", "b"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
           output_padding=[1, 1])],
     lambda t, w: F.conv_transpose2d(t, w["w"], w["b"], stride=2, padding=1, output_padding=1),
     init={"w": rand(3, 4, 3, 3), "b": rand(4)})
case("ConvTranspose", "k4_s2_p1_no_kernel_attribute",
     [node("ConvTranspose", ["t", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
     lambda t, w: F.conv_transpose2d(t, w["w"], stride=2, padding=1), init={"w": rand(3, 2, 4, 4)}, opset=11)
case("ConvTranspose", "grouped_dilated",
     [node("ConvTranspose", ["t", "w"], ["y"], kernel_shape=[3, 3], dilations=[2, 2], group=3, pads=[2, 1, 2, 1])],
     lambda t, w: F.conv_transpose2d(t, w["w"], groups=3, dilation=2, padding=(2, 1)), init={"w": rand(3, 2, 3, 3)})
case("ConvTranspose", "output_padding_past_the_pads",
     [node("ConvTranspose", ["t", "w"], ["y"], kernel_shape=[2, 3], strides=[3, 2], output_padding=[2, 1])],
     lambda t, w: F.conv_transpose2d(t, w["w"], stride=(3, 2), output_padding=(2, 1)), init={"w": rand(3, 2, 2, 3)})
case("ConvTranspose", "asymmetric_pads",
     [node("ConvTranspose", ["t", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 2, 0])],
     lambda t, w: _conv_transpose_cropped(t, w, 2, (0, 1), (11, 12)), init={"w": rand(3, 2, 3, 3)})
for _auto_pad, _begin in (("SAME_UPPER", (0, 0)), ("SAME_LOWER", (1, 1))):
    case("ConvTranspose", _auto_pad.lower(),
         [node("ConvTranspose", ["t", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad=_auto_pad)],
         lambda t, w, begin=_begin: _conv_transpose_cropped(t, w, 2, begin, (12, 12)), init={"w": rand(3, 2, 3, 3)})
case("ConvTranspose", "output_shape",
     [node("ConvTranspose", ["t", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], output_shape=[10, 9])],
     lambda t, w: _conv_transpose_cropped(t, w, 2, (2, 2), (10, 9)), init={"w": rand(3, 2, 3, 3)})
case("ConvTranspose", "1d",
     [node("Reshape", ["t", "shape"], ["t1d"]),
      node("ConvTranspose", ["t1d", "w"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 0], output_padding=[1])],
     lambda t, w: F.conv_transpose1d(t.reshape(t.shape[0], 3, -1), w["w"], stride=2, output_padding=1)[..., 1:],
     init={"shape": ints(0, 3, -1), "w": rand(3, 4, 3)}, shape=(3, 3, 5))

# ---------------------------------------------------------------- DepthToSpace and SpaceToDepth


def _depth_to_space_dcr(t: torch.Tensor, block: int) -> torch.Tensor:
    n, c, h, w = t.shape
    grouped = t.reshape(n, block, block, c // block ** 2, h, w)
    return grouped.permute(0, 3, 4, 1, 5, 2).reshape(n, c // block ** 2, h * block, w * block)


def _space_to_depth(t: torch.Tensor, block: int) -> torch.Tensor:
    n, c, h, w = t.shape
    blocks = t.reshape(n, c, h // block, block, w // block, block)
    return blocks.permute(0, 3, 5, 1, 2, 4).reshape(n, c * block ** 2, h // block, w // block)


case("DepthToSpace", "dcr", [node("DepthToSpace", ["t"], ["d"], blocksize=2), node("Mul", ["d", "w"], ["y"])],
     lambda t, w: _depth_to_space_dcr(t, 2) * w["w"], init={"w": rand(2, 4, 10)}, shape=(8, 2, 5))
case("DepthToSpace", "dcr_opset11_default", [node("DepthToSpace", ["t"], ["d"], blocksize=3),
                                             node("Mul", ["d", "w"], ["y"])],
     lambda t, w: _depth_to_space_dcr(t, 3) * w["w"], init={"w": rand(1, 6, 6)}, shape=(9, 2, 2), opset=11)
case("DepthToSpace", "crd_pixel_shuffle", [node("DepthToSpace", ["t"], ["d"], blocksize=2, mode="CRD"),
                                           node("Mul", ["d", "w"], ["y"])],
     lambda t, w: F.pixel_shuffle(t, 2) * w["w"], init={"w": rand(2, 4, 10)}, shape=(8, 2, 5))
case("SpaceToDepth", "block2", [node("SpaceToDepth", ["t"], ["s"], blocksize=2), node("Mul", ["s", "w"], ["y"])],
     lambda t, w: _space_to_depth(t, 2) * w["w"], init={"w": rand(8, 1, 1)}, shape=(2, 6, 6))
case("SpaceToDepth", "block3_opset11", [node("SpaceToDepth", ["t"], ["s"], blocksize=3),
                                        node("Mul", ["s", "w"], ["y"])],
     lambda t, w: _space_to_depth(t, 3) * w["w"], init={"w": rand(9, 1, 1)}, shape=(1, 6, 3), opset=11)
