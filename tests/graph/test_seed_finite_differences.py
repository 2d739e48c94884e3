"""Seeded gradients (augment(..., seed=True)) of hand-built graphs in the style of other exporters.

The torch-exported models of test_seed.py and test_tasks.py are checked against autograd; these graphs
come from no framework (paddle2onnx and tf2onnx idioms: opset 11 attributes, NHWC tails, batch sizes
read with Shape -> Gather -> Concat -> Reshape, Split, Resize), so the oracle is finite differences.

Oracle: the plain graph's head from the target to the score (onnx_gradcam.graph.head.extract_head),
converted to float64 and run by ONNX Runtime; for f(A) = sum(seed * score) of each image, the
directional derivative <gradcam_gradient, v> must equal the central difference
(f(A + eps v) - f(A - eps v)) / (2 eps) along random directions v and along the gradient itself.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_gradcam import Explainer, augment
from onnx_gradcam.graph.augment import ACTIVATION, GRADIENT, LOGITS, SCORE, SEED
from onnx_gradcam.graph.head import extract_head
from onnx_gradcam.targets import ANCHORS_OBJ, Detection, Segmentation, Similarity, seeds_for
from tests.graph.onnx_net import Net

BATCH = 2  # every graph has a dynamic batch and runs at 2
SIZE = 32
CLASSES = 3  # detector classes; the segmenter has SEGMENT_CLASSES
SEGMENT_CLASSES = 4
EMBEDDING = 8
# Float64 central differences: truncation ~ eps^2 |f'''| / 6 ~ 1e-12 and rounding ~ 2^-53 |f| / eps
# ~ 1e-10 |f|, both far below the float32 error of the gradient. A step of eps * v (v of unit RMS)
# crossing a kink of a MaxPool / Relu in the head would show as an error; none does for these weights.
FD_EPSILON = 1e-6
# The augmented model computes in float32: each gradient element carries a relative rounding error of
# a few dozen ulps at most (2^-24 ~ 6e-8 each), so |<gradient - exact, v>| <= ~1e-6 |gradient| |v|
# (measured: at most 2.3e-7 over these cases, most along v = gradient). A 1% error of the gradient is
# 1e-2 |g| |v| along v = g, and 3e-5 or more along the random directions here (|<g, v>| / (|g| |v|)
# is 0.003 to 0.06 for them): 3x and more above this bound, 40x above what float32 gives.
RELATIVE_TOLERANCE = 1e-5
RANDOM_DIRECTIONS = 3


# ---------------------------------------------------------------- graph building

def yolov5_paddle_style() -> tuple[onnx.ModelProto, str]:
    """paddle2onnx, opset 11, NCHW: a YOLOv5 head [N, A, 5+C] on two scales; returns (model, P3 tensor).

    Each scale: 1x1 Conv -> Reshape [N, na, 5+C, h, w] (batch from Shape) -> Transpose -> Sigmoid ->
    Split(xy, wh, conf) -> xy = (2s - 0.5 + grid) * stride, wh = (2s)^2 * anchor -> Concat ->
    Reshape [N, -1, 5+C]; the scales are concatenated on the anchor axis. P4 = SiLU(1x1 Conv(MaxPool(P3))),
    so the whole output is computed from P3.
    """
    net = Net(seed=51)
    anchors_per_cell, columns = 2, 5 + CLASSES
    x = net.conv_bn_relu("image", 3, 8, stride=2)  # 16x16
    p3 = net.silu(net.conv(x, 8, 16, kernel=3, stride=2), hint="p3")  # 8x8
    p4 = net.silu(net.conv(net.op("MaxPool", p3, kernel_shape=[2, 2], strides=[2, 2]), 16, 16), hint="p4")  # 4x4
    scales = []
    for feature, cells, stride in ((p3, 8, 4), (p4, 4, 8)):
        raw = net.conv(feature, 16, anchors_per_cell * columns, scale=2.0)
        shape = net.op("Concat", net.batch_of(raw, 11), net.ints([anchors_per_cell, columns, cells, cells]), axis=0)
        y = net.op("Sigmoid", net.op("Transpose", net.op("Reshape", raw, shape), perm=[0, 1, 3, 4, 2]))
        xy, wh, conf = net.op("Split", y, axis=-1, split=[2, 2, 1 + CLASSES], outputs=3)
        grid = np.stack(np.meshgrid(np.arange(cells), np.arange(cells)), axis=-1)[None, None] - 0.5
        xy = net.op("Mul", net.op("Add", net.op("Mul", xy, net.scalar(2)), net.weight(grid.astype(np.float32))),
                    net.scalar(stride))
        anchor = (stride * (1 + net.rng.random((1, anchors_per_cell, 1, 1, 2)))).astype(np.float32)
        wh = net.op("Mul", net.op("Pow", net.op("Mul", wh, net.scalar(2)), net.scalar(2)), net.weight(anchor))
        boxes = net.op("Concat", xy, wh, conf, axis=-1)
        flat = net.op("Concat", net.batch_of(boxes, 11), net.ints([-1, columns]), axis=0)
        scales.append(net.op("Reshape", boxes, flat))
    net.nodes.append(helper.make_node("Concat", scales, ["output"], axis=1, name="concat_scales"))
    anchors = anchors_per_cell * (8 * 8 + 4 * 4)
    model = net.model([helper.make_tensor_value_info("image", TensorProto.FLOAT, [-1, 3, SIZE, SIZE])],
                      [helper.make_tensor_value_info("output", TensorProto.FLOAT, [-1, anchors, columns])],
                      opset=11, producer="PaddlePaddle")
    return model, p3


def segmenter_tf2onnx_style() -> onnx.ModelProto:
    """tf2onnx, opset 13, NHWC input; the last features stay NHWC (bias add + Relu after the Transpose
    back); 1x1 classifier, tf.image.resize(bilinear, half_pixel_centers) to the input size as Resize with
    sizes = Concat(Shape[:2], [H, W]); --outputs-as-nchw gives logits [N, C, H, W]."""
    net = Net(seed=52)
    x = net.op("Transpose", "input_1", perm=[0, 3, 1, 2], hint="to_nchw")
    x = net.conv_bn_relu(x, 3, 8, stride=2)  # 16x16
    weight = net.random([12, 8, 3, 3], np.sqrt(2.0 / 72), "conv_w")
    x = net.op("Conv", x, weight, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])  # 8x8
    x = net.op("Add", net.op("Transpose", x, perm=[0, 2, 3, 1], hint="to_nhwc"), net.random([12], 0.1, "bias"))
    features = net.op("Relu", x, hint="relu_nhwc")
    logits = net.conv(net.op("Transpose", features, perm=[0, 3, 1, 2]), 12, SEGMENT_CLASSES, scale=3.0)
    sizes = net.op("Concat", net.op("Slice", net.op("Shape", logits), net.ints([0]), net.ints([2])),
                   net.ints([SIZE, SIZE]), axis=0)
    net.nodes.append(helper.make_node("Resize", [logits, "", "", sizes], ["logits"], name="resize",
                                      mode="linear", coordinate_transformation_mode="half_pixel"))
    return net.model(
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__0", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["unk__0", SEGMENT_CLASSES, SIZE, SIZE])],
        opset=13, producer="tf2onnx")


def embedder_tf2onnx_style() -> tuple[onnx.ModelProto, str]:
    """tf2onnx, opset 13, NHWC: GlobalAveragePooling2D as ReduceMean over axes 1, 2, Keras Flatten as
    Reshape(Concat(Shape[0], [-1])), Dense as MatMul + Add, tf.math.l2_normalize as
    x * 1 / sqrt(max(sum(x^2), eps)); returns (model, the NCHW conv output before the NHWC tail)."""
    net = Net(seed=53)
    x = net.op("Transpose", "input_1", perm=[0, 3, 1, 2], hint="to_nchw")
    x = net.conv_bn_relu(x, 3, 8, stride=2)  # 16x16
    weight = net.random([16, 8, 3, 3], np.sqrt(2.0 / 72), "conv_w")
    conv = net.op("Conv", x, weight, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], hint="conv_last")
    x = net.op("Add", net.op("Transpose", conv, perm=[0, 2, 3, 1], hint="to_nhwc"), net.random([16], 0.1, "bias"))
    features = net.op("Relu", x, hint="relu_nhwc")
    pooled = net.op("ReduceMean", features, axes=[1, 2], keepdims=1)
    flat = net.op("Reshape", pooled, net.op("Concat", net.batch_of(pooled, 13), net.ints([-1]), axis=0))
    dense = net.op("Add", net.op("MatMul", flat, net.random([16, EMBEDDING], 0.5, "dense_w")),
                   net.random([EMBEDDING], 0.1, "dense_b"))
    squared = net.op("ReduceSum", net.op("Mul", dense, dense), net.ints([-1]), keepdims=1)
    inverse_norm = net.op("Reciprocal", net.op("Sqrt", net.op("Max", squared, net.scalar(1e-12))))
    net.nodes.append(helper.make_node("Mul", [dense, inverse_norm], ["embedding"], name="l2_normalize"))
    model = net.model([helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__0", SIZE, SIZE, 3])],
                      [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["unk__0", EMBEDDING])],
                      opset=13, producer="tf2onnx")
    return model, conv


# ---------------------------------------------------------------- the float64 oracle

def float64_head(plain: onnx.ModelProto, target: str, score: str, activation: np.ndarray) -> ort.InferenceSession:
    """The head from target to score in float64, as an ONNX Runtime session.

    ONNX Runtime has no double Conv or Resize: a 1x1 Conv becomes a MatMul, a linear half-pixel
    Resize two MatMuls with its interpolation matrices (sizes as the float32 head computes them at
    activation). Checked against the float32 head by the caller.
    """
    head = extract_head(plain, target, score)
    shapes = _tensor_shapes(head, activation, [name for node in head.graph.node if node.op_type == "Resize"
                                               for name in (node.input[0], node.output[0])])
    nodes, weights = [], []
    for node in head.graph.node:
        if node.op_type == "Conv":
            nodes += _conv_1x1_as_matmul(node, head, weights)
        elif node.op_type == "Resize":
            nodes += _resize_as_matmuls(node, shapes[node.input[0]], shapes[node.output[0]], weights)
        else:
            nodes.append(node)
    for tensor in head.graph.initializer:
        array = numpy_helper.to_array(tensor)
        weights.append(numpy_helper.from_array(array.astype(np.float64) if array.dtype == np.float32 else array,
                                               tensor.name))
    assert head.graph.input[0].name == target
    graph = helper.make_graph(nodes, "head64",
                              [helper.make_tensor_value_info(target, TensorProto.DOUBLE, None)],
                              [helper.make_tensor_value_info(score, TensorProto.DOUBLE, None)], weights)
    model = helper.make_model(graph, opset_imports=list(head.opset_import))
    model.ir_version = head.ir_version
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _tensor_shapes(head: onnx.ModelProto, activation: np.ndarray, names: list[str]) -> dict[str, tuple]:
    """Shapes of the named float tensors of the float32 head run at activation."""
    copy = onnx.ModelProto()
    copy.CopyFrom(head)
    copy.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names)
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {head.graph.input[0].name: activation})
    return {name: value.shape for name, value in zip(names, values)}


def _conv_1x1_as_matmul(node: onnx.NodeProto, head: onnx.ModelProto, weights: list) -> list[onnx.NodeProto]:
    """Conv 1x1 = x [N, h, w, C] @ W^T [C, O] + b, between two Transposes (Einsum needs opset 12)."""
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert list(attributes["kernel_shape"]) == [1, 1] and set(attributes.get("strides", [1])) == {1}, node.name
    assert set(attributes.get("pads", [0])) == {0} and attributes.get("group", 1) == 1, node.name
    initializers = {t.name: numpy_helper.to_array(t) for t in head.graph.initializer}
    kernel = initializers[node.input[1]].astype(np.float64)[:, :, 0, 0]
    bias = initializers[node.input[2]] if len(node.input) > 2 else np.zeros(len(kernel))
    name = node.output[0]
    weights.append(numpy_helper.from_array(kernel.T, name + "/kernel64"))
    weights.append(numpy_helper.from_array(bias.astype(np.float64), name + "/bias64"))
    return [helper.make_node("Transpose", [node.input[0]], [name + "/nhwc"], perm=[0, 2, 3, 1]),
            helper.make_node("MatMul", [name + "/nhwc", name + "/kernel64"], [name + "/linear"]),
            helper.make_node("Add", [name + "/linear", name + "/bias64"], [name + "/biased"]),
            helper.make_node("Transpose", [name + "/biased"], [name], perm=[0, 3, 1, 2])]


def _resize_as_matmuls(node: onnx.NodeProto, in_shape: tuple, out_shape: tuple,
                       weights: list) -> list[onnx.NodeProto]:
    """Resize of the last two axes = M_H x M_W^T (resizing is separable and linear)."""
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attributes.get("mode") == b"linear", node.name
    assert attributes.get("coordinate_transformation_mode") == b"half_pixel", node.name
    assert tuple(in_shape[:2]) == tuple(out_shape[:2]) and len(in_shape) == 4, (in_shape, out_shape)
    rows = _linear_half_pixel_matrix(in_shape[2], out_shape[2])  # [H, h]
    columns = _linear_half_pixel_matrix(in_shape[3], out_shape[3]).T  # [w, W]
    name = node.output[0]
    weights += [numpy_helper.from_array(rows, name + "/rows64"), numpy_helper.from_array(columns, name + "/cols64")]
    return [helper.make_node("MatMul", [name + "/rows64", node.input[0]], [name + "/rows"]),
            helper.make_node("MatMul", [name + "/rows", name + "/cols64"], [name])]


def _linear_half_pixel_matrix(size_in: int, size_out: int) -> np.ndarray:
    """M [out, in] of ONNX Resize(mode=linear, half_pixel) along one axis (edge samples clamped)."""
    source = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    fraction = source - low
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), low), 1 - fraction)
    np.add.at(matrix, (np.arange(size_out), high), fraction)
    return matrix


def seeded_sums(head: ort.InferenceSession, tensors: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """f = sum(seed * score) of each row of tensors [M, N, ...] (M copies of the batch), float64 [M, N]."""
    copies, batch = tensors.shape[:2]
    score = head.run(None, {head.get_inputs()[0].name: tensors.reshape(copies * batch, *tensors.shape[2:])})[0]
    weighted = score.reshape(copies, batch, -1) * seed.astype(np.float64).reshape(1, batch, -1)
    return weighted.sum(axis=2)


def assert_directional_derivatives_match(head: ort.InferenceSession, tensor: np.ndarray, gradient: np.ndarray,
                                         seed: np.ndarray, layout: str, rng: np.random.Generator) -> None:
    """<gradient, v> per image equals the float64 central difference of f along v.

    tensor: the target in the graph's own layout; gradient: gradcam_gradient, NCHW; v: random
    directions and the gradient itself, each of unit RMS per image.
    """
    gradient = gradient.astype(np.float64)
    directions = np.concatenate([rng.standard_normal((RANDOM_DIRECTIONS, *gradient.shape)), gradient[None]])
    rms = np.sqrt((directions ** 2).reshape(len(directions), BATCH, -1).mean(axis=2))
    directions /= rms.reshape(len(directions), BATCH, 1, 1, 1)
    along = directions if layout == "NCHW" else directions.transpose(0, 1, 3, 4, 2)  # to the graph's NHWC
    base = tensor.astype(np.float64)[None]
    sums = seeded_sums(head, np.concatenate([base + FD_EPSILON * along, base - FD_EPSILON * along]), seed)
    finite_difference = (sums[:len(directions)] - sums[len(directions):]) / (2 * FD_EPSILON)
    analytic = (gradient[None] * directions).reshape(len(directions), BATCH, -1).sum(axis=2)
    scale = (np.linalg.norm(gradient.reshape(1, BATCH, -1), axis=2)
             * np.linalg.norm(directions.reshape(len(directions), BATCH, -1), axis=2))
    assert (scale > 0).all(), "the seeded objective does not depend on the target in some image"
    error = np.abs(analytic - finite_difference) / scale
    assert error.max() <= RELATIVE_TOLERANCE, (error, analytic, finite_difference)


# ---------------------------------------------------------------- cases

def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def run(model: onnx.ModelProto, feeds: dict, outputs: list[str]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(outputs, session.run(outputs, feeds)))


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names
                             if name not in {o.name for o in copy.graph.output})
    return copy


def prepare(plain: onnx.ModelProto, target: str, layout: str, nhwc_input: bool, image_seed: int) -> dict:
    """Augments plain with a seed at target and runs the plain graph: the case every test checks."""
    augmented = augment(plain, target=target, seed=True)
    meta = metadata(augmented)
    target_tensor, score = meta["gradcam_target"], plain.graph.output[0].name
    assert meta["gradcam_seed"] == "true" and meta["gradcam_score"] == score
    assert meta["gradcam_target_layout"] == layout
    input_name = plain.graph.input[0].name
    shape = (BATCH, SIZE, SIZE, 3) if nhwc_input else (BATCH, 3, SIZE, SIZE)
    images = np.random.default_rng(image_seed).standard_normal(shape).astype(np.float32)
    forward = run(with_outputs(plain, [target_tensor]), {input_name: images}, [score, target_tensor])
    tensor = forward[target_tensor]
    head = float64_head(plain, target_tensor, score, tensor)
    # The converted head computes the plain graph's score from the target (to float32 rounding).
    score_64 = head.run(None, {target_tensor: tensor.astype(np.float64)})[0]
    np.testing.assert_allclose(score_64, forward[score], rtol=0, atol=1e-5 * np.abs(forward[score]).max())
    return {"plain": plain, "augmented": augmented, "input": input_name, "images": images, "tensor": tensor,
            "score": forward[score], "head": head, "layout": layout, "target": target_tensor}


def gradient_for_seed(case: dict, seed: np.ndarray) -> dict[str, np.ndarray]:
    """gradcam_* tensors of the augmented model fed the seed; checks the exposed activation's layout."""
    result = run(case["augmented"], {case["input"]: case["images"], SEED: seed.astype(np.float32)},
                 [ACTIVATION, GRADIENT, SCORE, LOGITS])
    expected = case["tensor"] if case["layout"] == "NCHW" else case["tensor"].transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(result[ACTIVATION], expected)  # exposed NCHW, whatever the graph's layout
    assert result[GRADIENT].shape == expected.shape
    # Not bit-identical for the embedder (9e-8): ONNX Runtime's graph optimizations treat the plain tail
    # differently once the backward pass also reads its tensors; with them off the two are equal.
    np.testing.assert_allclose(result[LOGITS], case["score"], rtol=0, atol=1e-6 * np.abs(case["score"]).max())
    terms = (seed * case["score"]).reshape(BATCH, -1)  # Y sums them: its float32 error scales with sum |terms|
    np.testing.assert_allclose(result[SCORE], terms.sum(axis=1), rtol=0, atol=1e-6 * np.abs(terms).sum(axis=1).max())
    return result


def check_seed(case: dict, seed: np.ndarray, rng: np.random.Generator) -> None:
    result = gradient_for_seed(case, seed)
    assert_directional_derivatives_match(case["head"], case["tensor"], result[GRADIENT], seed, case["layout"], rng)


def check_targets(case: dict, targets, rng: np.random.Generator) -> np.ndarray:
    """Explainer.explain(target=...) gradients against finite differences of the targets' seeds."""
    seed = seeds_for(targets, case["score"])
    explanation = Explainer(case["augmented"]).explain(case["images"], target=targets, keep_tensors=True)
    terms = (seed * case["score"]).reshape(BATCH, -1)
    np.testing.assert_allclose(explanation.scores, terms.sum(axis=1), rtol=0,
                               atol=1e-6 * np.abs(terms).sum(axis=1).max())
    direct = gradient_for_seed(case, seed)[GRADIENT]
    np.testing.assert_allclose(explanation.gradient, direct, rtol=0, atol=1e-6 * np.abs(direct).max())
    assert_directional_derivatives_match(case["head"], case["tensor"], explanation.gradient, seed, case["layout"],
                                         rng)
    return seed


@pytest.fixture(scope="module")
def detector():
    plain, p3 = yolov5_paddle_style()
    return prepare(plain, p3, "NCHW", nhwc_input=False, image_seed=61)


@pytest.fixture(scope="module", params=["auto", "nhwc_relu"])
def segmenter(request):
    plain = segmenter_tf2onnx_style()
    if request.param == "auto":
        # The deepest map with >= 8 channels: the NHWC features transposed back for the classifier.
        case = prepare(plain, "auto", "NCHW", nhwc_input=True, image_seed=62)
        (node,) = [node for node in plain.graph.node if node.output[0] == case["target"]]
        assert node.op_type == "Transpose" and node.input[0].startswith("relu_nhwc_")
        return case
    relu = next(node.output[0] for node in plain.graph.node if node.output[0].startswith("relu_nhwc_"))
    return prepare(plain, relu, "NHWC", nhwc_input=True, image_seed=62)


@pytest.fixture(scope="module", params=["auto", "nchw_conv_before_the_nhwc_tail"])
def embedder(request):
    plain, conv = embedder_tf2onnx_style()
    if request.param == "auto":
        case = prepare(plain, "auto", "NHWC", nhwc_input=True, image_seed=63)
        assert case["target"].startswith("relu_nhwc_")
        return case
    return prepare(plain, conv, "NCHW", nhwc_input=True, image_seed=63)


# ---------------------------------------------------------------- tests

def test_yolov5_head_detection_targets_match_finite_differences(detector):
    score = detector["score"]
    assert score.shape == (BATCH, 160, 5 + CLASSES)
    # One box per image, one on each scale (P3's 2 x 8 x 8 anchors come first, then P4's).
    p3_anchors = 2 * 8 * 8
    anchors = [int(np.argmax(score[0, :p3_anchors, 4])), p3_anchors + int(np.argmax(score[1, p3_anchors:, 4]))]
    targets = [Detection(anchor, class_index=1, layout=ANCHORS_OBJ) for anchor in anchors]
    seed = check_targets(detector, targets, np.random.default_rng(0))
    assert [tuple(np.argwhere(image)[0]) for image in seed] == [(anchor, 6) for anchor in anchors]


def test_yolov5_head_dense_random_seed_matches_finite_differences(detector):
    rng = np.random.default_rng(1)
    check_seed(detector, rng.standard_normal(detector["score"].shape), rng)


def test_segmentation_head_class_targets_match_finite_differences(segmenter):
    score = segmenter["score"]
    assert score.shape == (BATCH, SEGMENT_CLASSES, SIZE, SIZE)
    counts = np.bincount(score.argmax(axis=1).ravel(), minlength=SEGMENT_CLASSES)
    label = int(np.argmax(counts))
    seed = check_targets(segmenter, Segmentation(label), np.random.default_rng(2))
    assert (seed.reshape(BATCH, -1).sum(axis=1) > 0).all()  # the class covers pixels in both images
    assert 0 < seed.sum() < BATCH * SIZE * SIZE  # a mask, not the whole map


def test_segmentation_head_dense_random_seed_matches_finite_differences(segmenter):
    rng = np.random.default_rng(3)
    check_seed(segmenter, rng.standard_normal(segmenter["score"].shape), rng)


@pytest.mark.parametrize("kind", ["cosine", "dot"])
def test_embedding_head_similarity_targets_match_finite_differences(embedder, kind):
    reference_images = np.random.default_rng(64).standard_normal(embedder["images"].shape).astype(np.float32)
    reference = run(embedder["plain"], {embedder["input"]: reference_images}, ["embedding"])["embedding"][0]
    check_targets(embedder, Similarity(reference, kind), np.random.default_rng(4))


def test_embedding_head_dense_random_seed_matches_finite_differences(embedder):
    rng = np.random.default_rng(5)
    check_seed(embedder, rng.standard_normal(embedder["score"].shape), rng)
