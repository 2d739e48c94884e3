"""Targets in every layout: NCHW maps, channels-last maps and ViT tokens, all exposed as [N, K, h, w].

Hand-built ONNX graphs. Oracles: the plain model's own tensors from ONNX Runtime, rearranged with
NumPy (activations); the head's gradient in closed form or by PyTorch autograd in float64 on the same
weights (gradients).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import onnx_gradcam
from onnx_gradcam.errors import GradCamError, TargetNotFoundError
from onnx_gradcam.graph.builder import GraphBuilder
from onnx_gradcam.graph.layout import nchw_shape, to_nchw
from onnx_gradcam.graph.locate import TargetInfo

PROVIDERS = ["CPUExecutionProvider"]
CLASSES = 10
HEIGHT, WIDTH = 16, 24  # H != W: a swapped grid shows
PATCH = 4
WIDTH_TOKENS = 16  # channels of the token stream
TOLERANCE = 1e-4


class Graph:
    """Nodes and seeded float32 weights of one hand-built model."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: dict[str, np.ndarray] = {}

    def weight(self, name: str, value) -> str:
        self.weights[name] = np.asarray(value)
        return name

    def random(self, name: str, *shape: int, scale: float = 0.3) -> str:
        return self.weight(name, (scale * self.rng.standard_normal(shape)).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def model(self, image_shape: list, output: str = "logits", opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "model", [helper.make_tensor_value_info("image", TensorProto.FLOAT, image_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, [image_shape[0], CLASSES])],
            [numpy_helper.from_array(value, name) for name, value in self.weights.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def plain_run(model: onnx.ModelProto, tensors: list[str], image: np.ndarray) -> list[np.ndarray]:
    """Values of tensors in the plain model, by ONNX Runtime."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in tensors)
    session = onnxruntime.InferenceSession(exposed.SerializeToString(), providers=PROVIDERS)
    return session.run(tensors, {"image": image})


def augmented_run(model: onnx.ModelProto, image: np.ndarray, target_class) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=PROVIDERS)
    names = ["gradcam_activation", "gradcam_gradient", "gradcam_class", "logits"]
    feeds = {"image": image, "gradcam_target_class": np.asarray(target_class, np.int64)}
    return dict(zip(names, session.run(names, feeds)))


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def images(batch: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)


def by_name(targets: list[TargetInfo]) -> dict[str, TargetInfo]:
    return {info.name: info for info in targets}


def auto_pick(model: onnx.ModelProto) -> str:
    (picked,) = [info.name for info in onnx_gradcam.list_targets(model) if info.auto]
    return picked


# ---------------------------------------------------------------- channels-last maps


def nhwc_block(image_shape: list | None = None) -> onnx.ModelProto:
    """Conv (NCHW) -> Transpose to NHWC -> Linear over channels -> Relu ("block", NHWC) -> mean over h, w -> Gemm."""
    g = Graph(seed=3)
    g.op("Conv", ["image", g.random("conv_w", 16, 3, 3, 3), g.random("conv_b", 16)], "conv",
         pads=[1, 1, 1, 1], strides=[2, 2])
    g.op("Transpose", ["conv"], "to_nhwc", perm=[0, 2, 3, 1])
    g.op("MatMul", ["to_nhwc", g.random("linear_w", 16, 16)], "linear")
    g.op("Add", ["linear", g.random("linear_b", 16)], "linear_bias")
    g.op("Relu", ["linear_bias"], "block")
    g.op("ReduceMean", ["block"], "pooled", axes=[1, 2], keepdims=0)
    g.op("Gemm", ["pooled", g.random("head_w", CLASSES, 16), g.random("head_b", CLASSES)], "logits", transB=1)
    return g.model(image_shape or ["N", 3, HEIGHT, WIDTH])


def test_nhwc_block_after_transpose_is_known_from_the_graph_and_auto_picks_it():
    targets = by_name(onnx_gradcam.list_targets(nhwc_block()))
    assert targets["conv"].layout == "NCHW" and targets["conv"].grid == (HEIGHT // 2, WIDTH // 2)
    for name in ("to_nhwc", "linear", "linear_bias", "block"):
        assert targets[name].layout == "NHWC", name
        assert targets[name].grid == (HEIGHT // 2, WIDTH // 2) and targets[name].channels == 16
    assert [name for name, info in targets.items() if info.auto] == ["block"]
    assert "NHWC" in str(targets["block"]) and f"{HEIGHT // 2}x{WIDTH // 2}" in str(targets["block"])
    assert str(targets["block"]).split()[-1] == "yes" and TargetInfo.HEADER.split()[-1] == "auto"
    assert str(targets["conv"]).split()[3:] == ["NCHW", f"{HEIGHT // 2}x{WIDTH // 2}"]


@pytest.mark.parametrize("dynamic, height, width", [(False, HEIGHT, WIDTH), (True, HEIGHT, WIDTH), (True, 24, 12)],
                         ids=["static", "symbolic_hw", "symbolic_hw_other_size"])
def test_nhwc_target_is_exposed_as_nchw_with_gradient_in_closed_form(dynamic, height, width):
    plain = nhwc_block(["N", 3, "H", "W"] if dynamic else None)
    augmented = onnx_gradcam.augment(plain)
    assert metadata(augmented)["gradcam_target"] == "block"
    assert metadata(augmented)["gradcam_target_layout"] == "NHWC"
    x = images(3, height, width)
    result = augmented_run(augmented, x, [-1, 4, 7])
    (block,) = plain_run(plain, ["block"], x)
    np.testing.assert_array_equal(result["gradcam_activation"], block.transpose(0, 3, 1, 2))
    # logits = mean_hw(block) @ head_w.T: d logit_c / d block = head_w[c] / (h w), the same at every pixel.
    head_w = nhwc_block().graph.initializer
    head_w = numpy_helper.to_array(next(t for t in head_w if t.name == "head_w"))
    h, w = block.shape[1:3]
    expected = np.broadcast_to((head_w[result["gradcam_class"]] / (h * w))[:, :, None, None], (3, 16, h, w))
    np.testing.assert_allclose(result["gradcam_gradient"], expected, rtol=1e-5, atol=1e-8)
    declared = next(o for o in augmented.graph.output if o.name == "gradcam_activation").type.tensor_type.shape.dim
    assert [d.dim_value for d in declared[1:2]] == [16]


# ---------------------------------------------------------------- collapsed heads: never a 1x1 map


def convnext_style_head(channels_last: bool) -> onnx.ModelProto:
    """Conv -> Relu ("features", NCHW) -> GlobalAveragePool -> a LayerNorm over the channels -> Flatten -> Gemm.

    channels_last: the norm runs on the pooled map transposed to [N, 1, 1, C] (the head stays
    channels-last); otherwise it is transposed back to [N, C, 1, 1] (ConvNeXt's LayerNorm2d).
    """
    g = Graph(seed=4)
    g.op("Conv", ["image", g.random("conv_w", 16, 3, 3, 3), g.random("conv_b", 16)], "conv", pads=[1, 1, 1, 1])
    g.op("Relu", ["conv"], "features")
    g.op("GlobalAveragePool", ["features"], "pooled")
    g.op("Transpose", ["pooled"], "pooled_nhwc", perm=[0, 2, 3, 1])
    g.op("LayerNormalization", ["pooled_nhwc", g.weight("norm_scale", np.ones(16, np.float32)),
                                g.weight("norm_bias", np.zeros(16, np.float32))], "head_norm", axis=-1)
    last = "head_norm"
    if not channels_last:
        last = g.op("Transpose", ["head_norm"], "head_norm_nchw", perm=[0, 3, 1, 2])
    g.op("Flatten", [last], "flat", axis=1)
    g.op("Gemm", ["flat", g.random("head_w", CLASSES, 16), g.random("head_b", CLASSES)], "logits", transB=1)
    return g.model(["N", 3, HEIGHT, WIDTH])


@pytest.mark.parametrize("channels_last", [True, False], ids=["n11c_head", "nc11_head"])
def test_auto_never_picks_a_1x1_map_of_the_head(channels_last):
    targets = by_name(onnx_gradcam.list_targets(convnext_style_head(channels_last)))
    assert auto_pick(convnext_style_head(channels_last)) == "features"
    assert targets["pooled_nhwc"].layout == targets["head_norm"].layout == "NHWC"
    assert targets["head_norm"].shape[1:] == (1, 1, 16) and targets["head_norm"].channels == 16
    for name in ("pooled", "pooled_nhwc", "head_norm") + (() if channels_last else ("head_norm_nchw",)):
        assert targets[name].grid == (1, 1) and targets[name].note == "1x1 map", name
    augmented = onnx_gradcam.augment(convnext_style_head(channels_last))
    assert metadata(augmented)["gradcam_target"] == "features"


def test_auto_skips_a_map_that_does_not_follow_the_input_aspect():
    # A [N, 16, 2, 24] map from a 16x24 image: squashed 8x in height only, not a spatial map of it.
    g = Graph(seed=5)
    g.op("Conv", ["image", g.random("w1", 8, 3, 3, 3), g.random("b1", 8)], "conv1", pads=[1, 1, 1, 1])
    g.op("Relu", ["conv1"], "relu1")
    g.op("Conv", ["relu1", g.random("w2", 16, 8, 8, 1), g.random("b2", 16)], "squashed", strides=[8, 1])
    g.op("Relu", ["squashed"], "squashed_relu")
    g.op("GlobalAveragePool", ["squashed_relu"], "pooled")
    g.op("Flatten", ["pooled"], "flat", axis=1)
    g.op("Gemm", ["flat", g.random("head_w", CLASSES, 16), g.random("head_b", CLASSES)], "logits", transB=1)
    targets = by_name(onnx_gradcam.list_targets(g.model(["N", 3, HEIGHT, WIDTH])))
    assert targets["squashed_relu"].grid == (2, WIDTH)
    assert "does not follow the input" in targets["squashed_relu"].note
    assert auto_pick(g.model(["N", 3, HEIGHT, WIDTH])) == "relu1"


def test_auto_skips_maps_with_fewer_than_8_channels():
    g = Graph(seed=6)
    g.op("Conv", ["image", g.random("w1", 16, 3, 3, 3), g.random("b1", 16)], "wide", pads=[1, 1, 1, 1])
    g.op("Relu", ["wide"], "wide_relu")
    g.op("Conv", ["wide_relu", g.random("w2", 4, 16, 1, 1), g.random("b2", 4)], "narrow")
    g.op("GlobalAveragePool", ["narrow"], "pooled")
    g.op("Flatten", ["pooled"], "flat", axis=1)
    g.op("Gemm", ["flat", g.random("head_w", CLASSES, 4), g.random("head_b", CLASSES)], "logits", transB=1)
    model = g.model(["N", 3, HEIGHT, WIDTH])
    assert by_name(onnx_gradcam.list_targets(model))["narrow"].note == "4 channels"
    assert auto_pick(model) == "wide_relu"


def test_channel_shuffle_keeps_the_map_channels_first():
    # ShuffleNet: [N, C, h, w] -> [N, g, C/g, h, w] -> swap the two channel axes -> [N, C, h, w].
    g = Graph(seed=11)
    g.op("Conv", ["image", g.random("w1", 16, 3, 3, 3), g.random("b1", 16)], "conv", pads=[1, 1, 1, 1])
    g.op("Reshape", ["conv", g.weight("split", np.array([0, 2, 8, HEIGHT, WIDTH], np.int64))], "groups")
    g.op("Transpose", ["groups"], "swapped", perm=[0, 2, 1, 3, 4])
    g.op("Reshape", ["swapped", g.weight("merge", np.array([0, 16, HEIGHT, WIDTH], np.int64))], "shuffled")
    g.op("Relu", ["shuffled"], "shuffled_relu")
    g.op("GlobalAveragePool", ["shuffled_relu"], "pooled")
    g.op("Flatten", ["pooled"], "flat", axis=1)
    g.op("Gemm", ["flat", g.random("head_w", CLASSES, 16), g.random("head_b", CLASSES)], "logits", transB=1)
    targets = by_name(onnx_gradcam.list_targets(g.model(["N", 3, HEIGHT, WIDTH])))
    assert targets["shuffled"].layout == targets["shuffled_relu"].layout == "NCHW"
    assert targets["shuffled_relu"].auto


# ---------------------------------------------------------------- layouts the graph does not establish


def reinterpreted_map() -> onnx.ModelProto:
    """A Conv map reshaped (not transposed) to [N, 8, 12, 16]: which axis holds channels, the graph cannot say."""
    g = Graph(seed=7)
    g.op("Conv", ["image", g.random("w1", 16, 3, 3, 3), g.random("b1", 16)], "conv", pads=[1, 1, 1, 1],
         strides=[2, 2])
    g.op("Relu", ["conv"], "relu")
    g.op("Reshape", ["relu", g.weight("shape", np.array([0, 8, 12, 16], np.int64))], "reshaped")
    g.op("ReduceMean", ["reshaped"], "pooled", axes=[1, 2], keepdims=0)
    g.op("Gemm", ["pooled", g.random("head_w", CLASSES, 16), g.random("head_b", CLASSES)], "logits", transB=1)
    return g.model(["N", 3, HEIGHT, WIDTH])


def test_a_4d_tensor_of_unknown_layout_is_listed_but_never_read_as_nchw():
    targets = by_name(onnx_gradcam.list_targets(reinterpreted_map()))
    assert targets["reshaped"].layout == "?" and targets["reshaped"].note == "layout not established by the graph"
    assert auto_pick(reinterpreted_map()) == "relu"
    with pytest.raises(TargetNotFoundError) as raised:
        onnx_gradcam.augment(reinterpreted_map(), target="reshaped")
    message = str(raised.value)
    assert "'reshaped'" in message and "does not establish the layout" in message
    assert "target_layout='NCHW' or 'NHWC'" in message


def test_a_stated_layout_makes_an_unknown_tensor_a_target():
    plain = reinterpreted_map()
    augmented = onnx_gradcam.augment(plain, target="reshaped", target_layout="NHWC")
    assert metadata(augmented)["gradcam_target_layout"] == "NHWC"
    x = images(2)
    result = augmented_run(augmented, x, [-1, -1])
    (reshaped,) = plain_run(plain, ["reshaped"], x)
    np.testing.assert_array_equal(result["gradcam_activation"], reshaped.transpose(0, 3, 1, 2))
    assert result["gradcam_gradient"].shape == (2, 16, 8, 12)


def test_a_stated_layout_that_contradicts_the_graph_raises():
    with pytest.raises(TargetNotFoundError, match=r"'block' is NHWC in the graph, but target_layout='NCHW'"):
        onnx_gradcam.augment(nhwc_block(), target="block", target_layout="NCHW")
    with pytest.raises(GradCamError, match="target_layout must be one of NCHW, NHWC"):
        onnx_gradcam.augment(nhwc_block(), target="block", target_layout="NWHC")
    with pytest.raises(GradCamError, match="named target"):
        onnx_gradcam.augment(nhwc_block(), target="auto", target_layout="NHWC")


# ---------------------------------------------------------------- ViT-style tokens


def token_model(mixing: str = "attention", head: str = "slice", image_shape: list | None = None,
                registers: int = 0, position: bool = True) -> onnx.ModelProto:
    """A one-block ViT: Conv patch embedding -> Reshape -> Transpose -> Concat class (and register) tokens ->
    Add position -> LayerNorm ("norm1") -> token mixing -> residual ("mixed") -> MLP -> residual ("block_out")
    -> the class token (head="slice" or "gather") or the mean of all tokens (head="mean") -> Gemm.

    mixing: "attention" (q, k, v projections, Softmax), "mixer" (MLP-Mixer's token-mixing matrix, static
    size only), "none" (no op mixes tokens: no patch token reaches a class-token head).
    """
    g = Graph(seed=8)
    tokens = (HEIGHT // PATCH) * (WIDTH // PATCH) + 1 + registers
    c = WIDTH_TOKENS
    g.op("Conv", ["image", g.random("patch_w", c, 3, PATCH, PATCH), g.random("patch_b", c)], "patch_embed",
         kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    g.op("Reshape", ["patch_embed", g.weight("flat_shape", np.array([0, c, -1], np.int64))], "flat")
    g.op("Transpose", ["flat"], "patch_tokens", perm=[0, 2, 1])
    g.op("Shape", ["image"], "image_shape")
    g.op("Slice", ["image_shape", g.weight("zero", np.array([0], np.int64)),
                   g.weight("one", np.array([1], np.int64))], "batch")
    g.op("Concat", ["batch", g.weight("one_c", np.array([1 + registers, c], np.int64))], "prefix_shape", axis=0)
    g.op("Expand", [g.random("class_token", 1, 1 + registers, c), "prefix_shape"], "prefix")
    g.op("Concat", ["prefix", "patch_tokens"], "tokens", axis=1)
    embedded = "tokens"
    if position:
        embedded = g.op("Add", ["tokens", g.random("position", 1, tokens, c, scale=0.1)], "embedded")
    g.op("LayerNormalization", [embedded, g.random("norm1_scale", c, scale=1.0),
                                g.random("norm1_bias", c, scale=0.1)], "norm1", axis=-1)
    if mixing == "attention":
        for part in ("q", "k", "v"):
            g.op("MatMul", ["norm1", g.random(f"w{part}", c, c)], part)
        g.op("Transpose", ["k"], "k_t", perm=[0, 2, 1])
        g.op("MatMul", ["q", "k_t"], "scores_raw")
        g.op("Mul", ["scores_raw", g.weight("scale", np.float32(c ** -0.5))], "scores")
        g.op("Softmax", ["scores"], "attention", axis=-1)
        g.op("MatMul", ["attention", "v"], "attended")
        g.op("MatMul", ["attended", g.random("wo", c, c)], "mixing_out")
    elif mixing == "mixer":
        g.op("Transpose", ["norm1"], "channels_tokens", perm=[0, 2, 1])
        g.op("MatMul", ["channels_tokens", g.random("token_mixing", tokens, tokens)], "channels_mixed")
        g.op("Transpose", ["channels_mixed"], "mixing_out", perm=[0, 2, 1])
    else:
        g.op("MatMul", ["norm1", g.random("per_token", c, c)], "mixing_out")
    g.op("Add", [embedded, "mixing_out"], "mixed")
    g.op("MatMul", ["mixed", g.random("mlp_w1", c, 2 * c)], "mlp_hidden")
    g.op("Add", ["mlp_hidden", g.random("mlp_b1", 2 * c)], "mlp_hidden_bias")
    g.op("Relu", ["mlp_hidden_bias"], "mlp_act")
    g.op("MatMul", ["mlp_act", g.random("mlp_w2", 2 * c, c)], "mlp_out")
    g.op("Add", ["mixed", "mlp_out"], "block_out")
    if head == "gather":
        g.op("Gather", ["block_out", g.weight("class_index", np.array(0, np.int64))], "pooled", axis=1)
    elif head == "slice":
        g.op("Slice", ["block_out", g.weight("start", np.array([0], np.int64)),
                       g.weight("stop", np.array([1], np.int64)), g.weight("axis", np.array([1], np.int64))],
             "class_out")
        g.op("Flatten", ["class_out"], "pooled", axis=1)
    else:
        g.op("ReduceMean", ["block_out"], "pooled", axes=[1], keepdims=0)
    g.op("Gemm", ["pooled", g.random("head_w", CLASSES, c), g.random("head_b", CLASSES)], "logits", transB=1)
    return g.model(image_shape or ["N", 3, HEIGHT, WIDTH])


def torch_token_oracle(model: onnx.ModelProto, x: np.ndarray, classes: np.ndarray, mixing: str,
                       head: str, prefix: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(norm1, d logit[class] / d norm1) of token_model by autograd in float64 from the same weights."""
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float64)) for t in model.graph.initializer}
    patches = F.conv2d(torch.from_numpy(x.astype(np.float64)), w["patch_w"], w["patch_b"], stride=PATCH)
    tokens = torch.cat([w["class_token"].expand(len(x), -1, -1), patches.flatten(2).transpose(1, 2)], 1)
    embedded = tokens + w["position"] if "position" in w else tokens
    norm1 = F.layer_norm(embedded, (WIDTH_TOKENS,), w["norm1_scale"], w["norm1_bias"]).requires_grad_()
    if mixing == "attention":
        q, k, v = norm1 @ w["wq"], norm1 @ w["wk"], norm1 @ w["wv"]
        mixing_out = torch.softmax(q @ k.transpose(1, 2) * WIDTH_TOKENS ** -0.5, -1) @ v @ w["wo"]
    elif mixing == "mixer":
        mixing_out = (norm1.transpose(1, 2) @ w["token_mixing"]).transpose(1, 2)
    else:
        mixing_out = norm1 @ w["per_token"]
    mixed = embedded + mixing_out
    block_out = mixed + torch.relu(mixed @ w["mlp_w1"] + w["mlp_b1"]) @ w["mlp_w2"]
    pooled = block_out.mean(1) if head == "mean" else block_out[:, 0]
    logits = pooled @ w["head_w"].T + w["head_b"]
    (gradient,) = torch.autograd.grad(logits[torch.arange(len(x)), torch.from_numpy(classes)].sum(), norm1)
    return norm1.detach().numpy(), gradient.numpy()


def on_grid(tokens: np.ndarray, prefix: int, height: int, width: int) -> np.ndarray:
    """[N, T, C] tokens without the first prefix ones as an [N, C, h, w] map (pytorch-grad-cam's reshape)."""
    patches = tokens[:, prefix:, :]
    return patches.reshape(len(tokens), height, width, patches.shape[2]).transpose(0, 3, 1, 2)


def test_token_layouts_grids_and_class_tokens_follow_the_graph():
    targets = by_name(onnx_gradcam.list_targets(token_model()))
    grid = (HEIGHT // PATCH, WIDTH // PATCH)
    assert targets["patch_embed"].layout == "NCHW" and "flat" not in targets
    assert targets["patch_tokens"].layout == "NTC" and targets["patch_tokens"].prefix_tokens == 0
    for name in ("tokens", "embedded", "norm1", "q", "v", "mixed", "mlp_hidden", "mlp_act", "block_out"):
        info = targets[name]
        assert (info.layout, info.grid, info.prefix_tokens) == ("NTC", grid, 1), name
        assert info.grid_tensor == "patch_embed" and info.grid_axes == (2, 3)
    assert targets["mlp_act"].channels == 2 * WIDTH_TOKENS
    assert "k_t" not in targets and "attended" not in targets  # tokens no longer on the grid
    assert "NTC" in str(targets["norm1"]) and f"{grid[0]}x{grid[1]}+1" in str(targets["norm1"])


@pytest.mark.parametrize("head", ["slice", "gather"])
def test_auto_picks_the_last_token_tensor_whose_patch_tokens_reach_the_score(head):
    targets = onnx_gradcam.list_targets(token_model(head=head))
    assert [info.name for info in targets if info.auto] == ["norm1"]
    notes = {info.name: info.note for info in targets}
    # After the last mixing only the class token reaches the head: those maps would be blank.
    for name in ("mixed", "mlp_hidden", "mlp_act", "block_out"):
        assert notes[name] == "only class tokens reach the score", name
    # q, k and v are projections into the attention; the feature map is what they project.
    for name in ("q", "k", "v"):
        assert notes[name] == "a projection into token mixing", name


@pytest.mark.parametrize("mixing, head", [("attention", "slice"), ("mixer", "slice"), ("attention", "gather")])
def test_token_target_is_exposed_on_its_grid_without_the_class_token(mixing, head):
    plain = token_model(mixing=mixing, head=head)
    augmented = onnx_gradcam.augment(plain)
    meta = metadata(augmented)
    assert (meta["gradcam_target"], meta["gradcam_target_layout"]) == ("norm1", "NTC")
    x = images(3)
    result = augmented_run(augmented, x, [-1, 2, 9])
    (norm1,) = plain_run(plain, ["norm1"], x)
    grid = (HEIGHT // PATCH, WIDTH // PATCH)
    np.testing.assert_array_equal(result["gradcam_activation"], on_grid(norm1, 1, *grid))
    expected_activation, expected_gradient = torch_token_oracle(plain, x, result["gradcam_class"], mixing, head)
    np.testing.assert_allclose(result["gradcam_activation"], on_grid(expected_activation, 1, *grid), atol=1e-5)
    gradient = result["gradcam_gradient"]
    assert gradient.shape == (3, WIDTH_TOKENS, *grid)
    assert np.abs(gradient).max() > 0
    error = np.abs(gradient - on_grid(expected_gradient, 1, *grid)).max() / np.abs(expected_gradient).max()
    assert error <= TOLERANCE
    declared = next(o for o in augmented.graph.output if o.name == "gradcam_gradient").type.tensor_type.shape.dim
    assert [d.dim_value for d in declared[1:]] == [WIDTH_TOKENS, *grid]


def test_register_tokens_are_dropped_with_the_class_token():
    plain = token_model(registers=3)
    info = by_name(onnx_gradcam.list_targets(plain))["norm1"]
    assert info.prefix_tokens == 4 and info.auto
    x = images(2)
    result = augmented_run(onnx_gradcam.augment(plain), x, [-1, 5])
    (norm1,) = plain_run(plain, ["norm1"], x)
    np.testing.assert_array_equal(result["gradcam_activation"], on_grid(norm1, 4, HEIGHT // PATCH, WIDTH // PATCH))


def test_token_model_with_dynamic_image_size_finds_the_grid_at_run_time():
    # Mean-pooled head: every token reaches the score, so the deepest token tensor is the target.
    plain = token_model(head="mean", image_shape=["N", 3, "H", "W"], position=False)
    info = by_name(onnx_gradcam.list_targets(plain))["block_out"]
    assert info.auto and info.layout == "NTC" and not all(isinstance(d, int) for d in info.grid)
    augmented = onnx_gradcam.augment(plain)
    for height, width in [(HEIGHT, WIDTH), (24, 8)]:
        x = images(2, height, width, seed=height)
        result = augmented_run(augmented, x, [-1, 3])
        (block_out,) = plain_run(plain, ["block_out"], x)
        grid = (height // PATCH, width // PATCH)
        np.testing.assert_array_equal(result["gradcam_activation"], on_grid(block_out, 1, *grid))
        # mean over T tokens then Gemm: d logit_c / d token = head_w[c] / T for every token.
        head_w = numpy_helper.to_array(next(t for t in plain.graph.initializer if t.name == "head_w"))
        expected = head_w[result["gradcam_class"]] / block_out.shape[1]
        np.testing.assert_allclose(result["gradcam_gradient"],
                                   np.broadcast_to(expected[:, :, None, None], (2, WIDTH_TOKENS, *grid)),
                                   rtol=1e-5, atol=1e-8)


def test_class_token_head_without_token_mixing_has_no_spatial_map():
    # No op mixes tokens: the score sees the class token only, every patch token's gradient is zero.
    model = token_model(mixing="none")
    targets = onnx_gradcam.list_targets(model)
    assert not any(info.auto for info in targets)
    with pytest.raises(TargetNotFoundError) as raised:
        onnx_gradcam.augment(model)
    message = str(raised.value)
    assert "target='auto' found no spatial feature map" in message
    assert "only class tokens reach the score" in message and "norm1" in message and "patch_embed" in message


def test_tokens_fold_back_to_a_grid_by_reshape_are_a_channels_last_map():
    # Segmenter-style: patch tokens (class token sliced off) reshaped to [N, h, w, C] and pooled.
    g = Graph(seed=9)
    c, h, w = WIDTH_TOKENS, HEIGHT // PATCH, WIDTH // PATCH
    g.op("Conv", ["image", g.random("patch_w", c, 3, PATCH, PATCH), g.random("patch_b", c)], "patch_embed",
         kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    g.op("Reshape", ["patch_embed", g.weight("flat_shape", np.array([0, c, -1], np.int64))], "flat")
    g.op("Transpose", ["flat"], "patch_tokens", perm=[0, 2, 1])
    g.op("Concat", [g.random("class_token", 2, 1, c), "patch_tokens"], "tokens", axis=1)
    g.op("Slice", ["tokens", g.weight("start", np.array([1], np.int64)), g.weight("stop", np.array([2**62], np.int64)),
                   g.weight("axis", np.array([1], np.int64))], "patches_only")
    g.op("Reshape", ["patches_only", g.weight("grid_shape", np.array([0, h, w, c], np.int64))], "grid_map")
    g.op("Relu", ["grid_map"], "grid_relu")
    g.op("ReduceMean", ["grid_relu"], "pooled", axes=[1, 2], keepdims=0)
    g.op("Gemm", ["pooled", g.random("head_w", CLASSES, c), g.random("head_b", CLASSES)], "logits", transB=1)
    targets = by_name(onnx_gradcam.list_targets(g.model([2, 3, HEIGHT, WIDTH])))
    assert targets["tokens"].prefix_tokens == 1 and targets["patches_only"].prefix_tokens == 0
    assert targets["grid_map"].layout == targets["grid_relu"].layout == "NHWC"
    assert targets["grid_relu"].grid == (h, w) and targets["grid_relu"].auto


def test_to_nchw_drops_a_prefix_known_only_at_run_time():
    # Tokens [N, T, C] whose prefix count is T - h*w, with h, w from the Shape of the patch map.
    tokens = helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", "T", 5])
    grid_map = helper.make_tensor_value_info("grid_map", TensorProto.FLOAT, ["N", 7, "h", "w"])
    model = helper.make_model(helper.make_graph([], "g", [tokens, grid_map], []),
                              opset_imports=[helper.make_opsetid("", 17)])
    b = GraphBuilder(model)
    info = TargetInfo("tokens", ("N", "T", 5), "Add", "add", "NTC", grid=("h", "w"), prefix_tokens=None,
                      grid_tensor="grid_map", grid_axes=(2, 3))
    exposed = to_nchw(b, info, "tokens")
    assert nchw_shape(info) == ["N", 5, "h", "w"]
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.initializers)
    model.graph.output.append(helper.make_tensor_value_info(exposed, TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=PROVIDERS)
    rng = np.random.default_rng(10)
    for prefix, height, width in [(3, 2, 4), (1, 3, 3)]:
        values = rng.standard_normal((2, prefix + height * width, 5)).astype(np.float32)
        (result,) = session.run([exposed], {"tokens": values,
                                            "grid_map": np.zeros((2, 7, height, width), np.float32)})
        np.testing.assert_array_equal(result, on_grid(values, prefix, height, width))
