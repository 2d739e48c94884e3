"""Hand-built ONNX classifiers in the style of tf2onnx / keras, paddle2onnx and other exporters.

Oracle: central finite differences, in float64, of the plain model's pre-softmax logit with respect
to the target activation. The plain graph is cut at the target (the target becomes an input), the
head is converted to float64 and run by ONNX Runtime once per perturbed element (batched).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_gradcam import Explainer, augment, list_targets
from onnx_gradcam.cam import reference
from onnx_gradcam.graph.augment import ACTIVATION, CLASS, GRADIENT, HEATMAP, LOGITS, SCORE, TARGET_CLASS
from tests.graph.onnx_net import Net

BATCH = 2
CLASSES = 10
FD_EPSILON = 1e-6
# The augmented model runs in float32; the oracle is float64, so the error is float32 rounding.
RELATIVE_TOLERANCE = 1e-4


# ---------------------------------------------------------------- model building helpers

def tf2onnx_style(product_of_dims: bool = False, value_info: bool = True) -> onnx.ModelProto:
    """NHWC input, leading Transpose, Conv+BN+Relu, NHWC tail, Shape-arithmetic Reshape, MatMul+Add,
    decomposed HardSwish in the dense head, Softmax.

    value_info: record the flattened tensor's shape, as tf2onnx does from the TensorFlow graph (ONNX
    shape inference alone cannot follow Reshape([batch, -1]) when the batch is symbolic).
    """
    net = Net(seed=11)
    x = net.op("Transpose", "input_1", perm=[0, 3, 1, 2], hint="to_nchw")
    x = net.conv_bn_relu(x, 3, 8, bias=False)
    x = net.conv_bn_relu(x, 8, 12, stride=2, bias=False)  # 16x16
    weight = net.random([16, 12, 3, 3], np.sqrt(2.0 / 108), "conv_w")
    x = net.op("Conv", x, weight, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])  # 8x8
    # tf2onnx keeps the bias add and activation after the transpose back, in NHWC.
    x = net.op("Transpose", x, perm=[0, 2, 3, 1], hint="to_nhwc")
    x = net.op("Add", x, net.random([16], 0.1, "bias"))
    target = net.op("Relu", x, hint="relu_nhwc")
    shape = net.op("Shape", target)
    batch = net.op("Unsqueeze", net.op("Gather", shape, net.weight(np.array(0, np.int64)), axis=0),
                   net.weight(np.array([0], np.int64)))
    if product_of_dims:  # the flattened size computed at run time too
        features = net.op("ReduceProd", net.op("Slice", shape, net.weight(np.array([1], np.int64)),
                                               net.weight(np.array([4], np.int64))), keepdims=1)
    else:  # Keras Flatten: reshape(x, (tf.shape(x)[0], -1))
        features = net.weight(np.array([-1], np.int64))
    flat = net.op("Reshape", target, net.op("Concat", batch, features, axis=0), hint="flatten")
    hidden = net.op("Add", net.op("MatMul", flat, net.random([8 * 8 * 16, 32], 1 / 32, "dense_w")),
                    net.random([32], 0.1, "dense_b"))
    # HardSwish the way Keras writes it: x * relu6(x + 3) / 6.
    gate = net.op("Clip", net.op("Add", hidden, net.weight(np.float32(3))),
                  net.weight(np.float32(0)), net.weight(np.float32(6)))
    hidden = net.op("Div", net.op("Mul", hidden, gate), net.weight(np.float32(6)))
    logits = net.op("Add", net.op("MatMul", hidden, net.random([32, CLASSES], 0.3, "logits_w")),
                    net.random([CLASSES], 0.1, "logits_b"), hint="logits")
    net.nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=-1, name="softmax"))
    model = net.model([helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__0", 32, 32, 3])],
                      [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["unk__0", CLASSES])],
                      opset=13, producer="tf2onnx")
    if value_info:
        model.graph.value_info.append(helper.make_tensor_value_info(flat, TensorProto.FLOAT,
                                                                    ["unk__0", 8 * 8 * 16]))
    return model


def paddle2onnx_style() -> onnx.ModelProto:
    """Opset 11: Clip with min/max inputs, ReduceMean head, Squeeze/Unsqueeze with axes attributes,
    Flatten + MatMul + Add, Softmax."""
    net = Net(seed=22)
    x = net.conv_bn_relu("x", 3, 8, stride=2, bias=False)  # 16x16
    weight = net.random([16, 8, 3, 3], 3 * np.sqrt(2.0 / 72), "conv_w")  # large enough to reach 6
    x = net.op("Conv", x, weight, net.random([16], 0.1, "conv_b"), kernel_shape=[3, 3], pads=[1, 1, 1, 1],
               hint="conv_last")
    target = net.op("Clip", x, net.weight(np.float32(0)), net.weight(np.float32(6)), hint="relu6")
    pooled = net.op("ReduceMean", target, axes=[2, 3], keepdims=1)
    pooled = net.op("Unsqueeze", net.op("Squeeze", pooled, axes=[2, 3]), axes=[2, 3])
    flat = net.op("Flatten", pooled, axis=1)
    logits = net.op("Add", net.op("MatMul", flat, net.random([16, CLASSES], 0.5, "fc_w")),
                    net.random([CLASSES], 0.1, "fc_b"), hint="logits")
    net.nodes.append(helper.make_node("Softmax", [logits], ["save_infer_model/scale_0.tmp_0"], axis=1))
    return net.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 32, 32])],
                     [helper.make_tensor_value_info("save_infer_model/scale_0.tmp_0", TensorProto.FLOAT,
                                                    [-1, CLASSES])],
                     opset=11, producer="PaddlePaddle")


def gap_gemm_style() -> onnx.ModelProto:
    """GlobalAveragePool + Reshape([0,-1]) + Gemm(transB=1) + LogSoftmax."""
    net = Net(seed=33)
    x = net.conv_bn_relu("images", 3, 8, bias=False)
    x = net.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2])  # 16x16
    weight = net.random([16, 8, 3, 3], np.sqrt(2.0 / 72), "conv_w")
    target = net.op("Relu", net.op("Conv", x, weight, net.random([16], 0.1, "conv_b"),
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]), hint="last_relu")
    pooled = net.op("GlobalAveragePool", target)
    flat = net.op("Reshape", pooled, net.weight(np.array([0, -1], np.int64)))
    logits = net.op("Gemm", flat, net.random([CLASSES, 16], 0.5, "fc_w"), net.random([CLASSES], 0.1, "fc_b"),
                    transB=1, hint="logits")
    net.nodes.append(helper.make_node("LogSoftmax", [logits], ["log_probabilities"], axis=1))
    return net.model([helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                     [helper.make_tensor_value_info("log_probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
                     opset=17, producer="hand")


# ---------------------------------------------------------------- oracle helpers

def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def logits_name(model: onnx.ModelProto) -> str:
    """The input of the final Softmax / LogSoftmax."""
    return producers(model)[model.graph.output[0].name].input[0]


def float64_equivalent(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The same function with ops ONNX Runtime runs in float64 (it has no double GlobalAveragePool
    and no double Clip-11)."""
    if node.op_type == "GlobalAveragePool":
        return [helper.make_node("ReduceMean", list(node.input), list(node.output), axes=[2, 3], keepdims=1)]
    if node.op_type == "Clip" and len(node.input) == 3:
        x, low, high = node.input
        return [helper.make_node("Max", [x, low], [node.output[0] + "/max"]),
                helper.make_node("Min", [node.output[0] + "/max", high], list(node.output))]
    return [node]


def head_model_float64(model: onnx.ModelProto, target: str, score: str) -> onnx.ModelProto:
    """The plain graph from target (now an input) to score, in float64."""
    producer = producers(model)
    initializers = {t.name: t for t in model.graph.initializer}
    kept, seen, stack = [], {target}, [score]
    while stack:
        node = producer.get(stack.pop())
        if node is None or any(node is k for k in kept):
            continue
        kept.append(node)
        for name in node.input:
            if name and name not in seen and name not in initializers:
                seen.add(name)
                if name not in producer:
                    raise AssertionError(f"head depends on graph input {name!r}, not only on the target")
                stack.append(name)
    order = {id(node): i for i, node in enumerate(model.graph.node)}
    kept.sort(key=lambda node: order[id(node)])
    kept = [node for original in kept for node in float64_equivalent(original)]
    used = {name for node in kept for name in node.input}
    weights = []
    for name in sorted(used & set(initializers)):
        array = numpy_helper.to_array(initializers[name])
        weights.append(numpy_helper.from_array(array.astype(np.float64) if array.dtype == np.float32 else array, name))
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    dims = [d.dim_value if d.HasField("dim_value") else "n" for d in infos[target].type.tensor_type.shape.dim]
    dims[0] = "n"
    graph = helper.make_graph(kept, "head", [helper.make_tensor_value_info(target, TensorProto.DOUBLE, dims)],
                              [helper.make_tensor_value_info(score, TensorProto.DOUBLE, ["n", CLASSES])], weights)
    head = helper.make_model(graph, opset_imports=list(model.opset_import))
    head.ir_version = model.ir_version
    onnx.checker.check_model(head)
    return head


def finite_difference_gradient(head: onnx.ModelProto, activation: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """d logit[c_i] / d activation[i], central differences in float64, all elements of an image at once."""
    session = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    gradient = np.empty(activation.shape, np.float64)
    for i, (image, target_class) in enumerate(zip(activation.astype(np.float64), classes)):
        size = image.size
        perturbed = np.repeat(image.reshape(1, size), 2 * size, axis=0)
        perturbed[np.arange(size), np.arange(size)] += FD_EPSILON
        perturbed[size + np.arange(size), np.arange(size)] -= FD_EPSILON
        scores = session.run(None, {name: perturbed.reshape((2 * size,) + image.shape)})[0][:, target_class]
        gradient[i] = ((scores[:size] - scores[size:]) / (2 * FD_EPSILON)).reshape(image.shape)
    return gradient


def with_output(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    return copy


def run(model: onnx.ModelProto, feeds: dict, outputs=None) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


CASES = {
    # builder, input name, NHWC?, expected target tensor hint, layout of the graph's target tensor
    "tf2onnx_nhwc": (tf2onnx_style, "input_1", True, "relu_nhwc", "NHWC"),
    "paddle2onnx_opset11": (paddle2onnx_style, "x", False, "relu6", "NCHW"),
    "gap_gemm_logsoftmax": (gap_gemm_style, "images", False, "last_relu", "NCHW"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    build, input_name, nhwc, target_hint, layout = CASES[request.param]
    plain = build()
    augmented = augment(plain, target="auto")
    shape = (BATCH, 32, 32, 3) if nhwc else (BATCH, 3, 32, 32)
    images = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    return dict(name=request.param, plain=plain, augmented=augmented, input=input_name, nhwc=nhwc,
                target_hint=target_hint, layout=layout, images=images)


# ---------------------------------------------------------------- tests

def test_auto_target_is_last_activation_before_collapse(case):
    meta = metadata(case["augmented"])
    target = meta["gradcam_target"]
    assert target.startswith(case["target_hint"] + "_"), (target, case["name"])
    assert meta["gradcam_target_layout"] == case["layout"]
    assert meta["gradcam_input_layout"] == ("NHWC" if case["nhwc"] else "NCHW")
    assert meta["gradcam_score"] == logits_name(case["plain"])
    names = [info.name for info in list_targets(case["plain"])]
    assert target in names


def test_augmented_model_passes_checker_and_keeps_original_outputs_bit_identical(case):
    augmented = case["augmented"]
    onnx.checker.check_model(augmented, full_check=True)
    original_output = case["plain"].graph.output[0].name
    assert [o.name for o in augmented.graph.output][0] == original_output
    feeds = {case["input"]: case["images"]}
    plain = run(case["plain"], feeds)[original_output]
    for target_class in (np.full(BATCH, -1, np.int64), np.array([3, 7], np.int64)):
        result = run(augmented, {**feeds, TARGET_CLASS: target_class})
        np.testing.assert_array_equal(result[original_output], plain)


def test_activation_is_nchw_and_equals_the_graph_tensor(case):
    augmented = case["augmented"]
    target = metadata(augmented)["gradcam_target"]
    feeds = {case["input"]: case["images"]}
    tensor = run(with_output(case["plain"], target), feeds)[target]
    result = run(augmented, {**feeds, TARGET_CLASS: np.full(BATCH, -1, np.int64)})
    activation, gradient = result[ACTIVATION], result[GRADIENT]
    expected = tensor.transpose(0, 3, 1, 2) if case["layout"] == "NHWC" else tensor
    assert activation.ndim == 4 and activation.shape == gradient.shape == expected.shape
    assert activation.shape[1] == 16  # K channels on axis 1, whatever the graph's layout
    np.testing.assert_array_equal(activation, expected)
    declared = {o.name: o for o in augmented.graph.output}[ACTIVATION].type.tensor_type.shape.dim
    assert [d.dim_value for d in declared[1:]] == list(expected.shape[1:])


@pytest.mark.parametrize("target_class", [None, [3, 7]], ids=["top_class", "given_class"])
def test_gradient_matches_float64_finite_differences_of_the_logit(case, target_class):
    plain, augmented = case["plain"], case["augmented"]
    target, score = metadata(augmented)["gradcam_target"], logits_name(plain)
    feeds = {case["input"]: case["images"]}
    classes_in = np.full(BATCH, -1, np.int64) if target_class is None else np.array(target_class, np.int64)
    result = run(augmented, {**feeds, TARGET_CLASS: classes_in})
    plain_run = run(with_output(with_output(plain, target), score), feeds)
    logits, tensor = plain_run[score], plain_run[target]

    classes = logits.argmax(axis=1) if target_class is None else classes_in
    np.testing.assert_array_equal(result[CLASS], classes)
    np.testing.assert_array_equal(result[LOGITS], logits)
    np.testing.assert_allclose(result[SCORE], logits[np.arange(BATCH), classes], rtol=0, atol=0)

    expected = finite_difference_gradient(head_model_float64(plain, target, score), tensor, classes)
    if case["layout"] == "NHWC":
        expected = expected.transpose(0, 3, 1, 2)
    gradient = result[GRADIENT].astype(np.float64)
    assert np.abs(expected).max() > 0
    for i in range(BATCH):  # relative max error per image
        error = np.abs(gradient[i] - expected[i]).max() / np.abs(expected[i]).max()
        assert error <= RELATIVE_TOLERANCE, (case["name"], i, error)


def test_explainer_runs_on_the_augmented_model(case, request):
    explainer = Explainer(case["augmented"])
    explanation = explainer.explain(case["images"], keep_tensors=True)
    assert explanation.heatmaps.shape == (BATCH, 32, 32)
    assert explanation.heatmaps.dtype == np.float32
    assert np.isfinite(explanation.heatmaps).all()
    assert explanation.heatmaps.min() >= 0 and explanation.heatmaps.max() <= 1
    assert explanation.activation.shape[1] == 16


@pytest.mark.parametrize("product_of_dims", [False, True], ids=["concat_minus_one", "reduce_prod"])
def test_reshape_from_runtime_shape_without_value_info_matches_finite_differences(product_of_dims):
    plain = tf2onnx_style(product_of_dims=product_of_dims, value_info=False)
    augmented = augment(plain, target="auto")
    target, score = metadata(augmented)["gradcam_target"], logits_name(plain)
    images = np.random.default_rng(6).standard_normal((BATCH, 32, 32, 3)).astype(np.float32)
    result = run(augmented, {"input_1": images, TARGET_CLASS: np.full(BATCH, -1, np.int64)})
    tensor = run(with_output(plain, target), {"input_1": images})[target]
    expected = finite_difference_gradient(head_model_float64(plain, target, score), tensor, result[CLASS])
    expected = expected.transpose(0, 3, 1, 2)
    error = np.abs(result[GRADIENT] - expected).max() / np.abs(expected).max()
    assert error <= RELATIVE_TOLERANCE


def test_paddle_clip_with_min_max_inputs_matches_finite_differences_when_target_is_before_it():
    """Named target before the opset-11 Clip(x, min, max): the gradient passes the Clip rule."""
    plain = paddle2onnx_style()
    clip = next(node for node in plain.graph.node if node.op_type == "Clip")
    target, score = clip.input[0], logits_name(plain)
    augmented = augment(plain, target=target)
    assert metadata(augmented)["gradcam_target"] == target
    images = np.random.default_rng(7).standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    result = run(augmented, {"x": images, TARGET_CLASS: np.array([1, -1], np.int64)})
    tensor = run(with_output(plain, target), {"x": images})[target]
    assert (tensor < 0).any() and (tensor > 6).any()  # both bounds of the Clip are active somewhere
    expected = finite_difference_gradient(head_model_float64(plain, target, score), tensor, result[CLASS])
    assert result[CLASS][0] == 1
    error = np.abs(result[GRADIENT] - expected).max() / np.abs(expected).max()
    assert error <= RELATIVE_TOLERANCE
    assert (result[GRADIENT][tensor > 6] == 0).all() and (result[GRADIENT][tensor < 0] == 0).all()


def test_in_graph_heatmap_equals_the_numpy_reference(case, request):
    augmented = augment(case["plain"], target="auto", heatmap=True)
    result = run(augmented, {case["input"]: case["images"], TARGET_CLASS: np.full(BATCH, -1, np.int64)})
    expected = reference.heatmaps(result[ACTIVATION], result[GRADIENT], "gradcam", (32, 32))
    assert result[HEATMAP].shape == (BATCH, 32, 32) and result[HEATMAP].dtype == np.float32
    np.testing.assert_allclose(result[HEATMAP], expected, rtol=0, atol=1e-5)
