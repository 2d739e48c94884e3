"""Detectors, segmenters, embedding models and several target layers, end to end (onnx_gradcam.tasks,
Explainer with targets and seeds), on small seeded torch models exported by a plain torch.onnx.export.

Oracles: PyTorch autograd on the same weights for each box's gradient, and the heatmap contract
(cam.reference) on autograd's activation and gradient; the plain model's output decoded by
detect.decode for the boxes; pytorch-grad-cam's GradCAM with SemanticSegmentationTarget, with its
embeddings tutorial's SimilarityToConceptTarget, and with a list of target layers; the classifier's
own explanation for Class targets on a seeded model; cv2.resize for the device path's resize.
"""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torch import nn  # noqa: E402

from onnx_gradcam import Explainer, InputError, Preprocess, UnsupportedOpError, augment  # noqa: E402
from onnx_gradcam.cam import reference  # noqa: E402
from onnx_gradcam.detect import decode  # noqa: E402
from onnx_gradcam.explainer import _aggregate_normalized, _resize_bilinear  # noqa: E402
from onnx_gradcam.graph.augment import LOGITS, augmented_metadata  # noqa: E402
from onnx_gradcam.prepare import input_shape_for, prepare_model, task_score  # noqa: E402
from onnx_gradcam.targets import Class, Detection, Segmentation, Similarity, seeds_for  # noqa: E402
from onnx_gradcam.tasks import explain_detections, explain_segmentation, explain_similarity  # noqa: E402
from tests import export_helpers  # noqa: E402
from tests.export_helpers import TwoLayerClassifier  # noqa: E402

CLASSES = 3
SIZE = 64
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# ---------------------------------------------------------------- models

def conv(inputs: int, outputs: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, 1), nn.SiLU())


class YoloV8Like(nn.Module):
    """[N, 4+C, A]: two scales of box distances and class logits, decoded on anchors built from the map sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv(3, 8, 2), conv(8, 16, 2))
        self.neck = conv(16, 16, 2)  # stride 8: the explained layer
        self.down = conv(16, 16, 2)  # stride 16
        self.box = nn.ModuleList(nn.Conv2d(16, 4, 1) for _ in range(2))
        self.cls = nn.ModuleList(nn.Conv2d(16, CLASSES, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.neck(self.stem(x))
        heads, anchors, strides = [], [], []
        for level, (feature, stride) in enumerate(((p3, 8), (self.down(p3), 16))):
            heads.append(torch.cat([self.box[level](feature), self.cls[level](feature)], 1).flatten(2))
            height, width = feature.shape[2], feature.shape[3]
            rows, columns = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                                           torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
            anchors.append(torch.stack([columns, rows], 0).reshape(2, -1))
            strides.append(torch.full((1, height * width), float(stride)))
        distance, logits = torch.cat(heads, 2).split((4, CLASSES), 1)
        left_top, right_bottom = (torch.sigmoid(distance) * 4).chunk(2, 1)
        anchor = torch.cat(anchors, 1)
        first, second = anchor - left_top, anchor + right_bottom
        box = torch.cat([(first + second) / 2, second - first], 1) * torch.cat(strides, 1)
        return torch.cat([box, torch.sigmoid(logits)], 1)


class YoloV5Like(nn.Module):
    """[N, A, 5+C]: three anchors per cell on two scales, sigmoid, then YOLOv5's grid decode."""

    ANCHORS = ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0))

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv(3, 8, 2), conv(8, 16, 2))
        self.neck = conv(16, 16, 2)
        self.down = conv(16, 16, 2)
        self.heads = nn.ModuleList(nn.Conv2d(16, 3 * (5 + CLASSES), 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.neck(self.stem(x))
        anchor = torch.tensor(self.ANCHORS).view(1, 3, 1, 1, 2)
        outputs = []
        for level, (feature, stride) in enumerate(((p3, 8), (self.down(p3), 16))):
            batch, _, height, width = feature.shape
            y = self.heads[level](feature).view(batch, 3, 5 + CLASSES, height, width).permute(0, 1, 3, 4, 2).sigmoid()
            rows, columns = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                                           torch.arange(width, dtype=torch.float32), indexing="ij")
            xy, wh, rest = y.split((2, 2, 1 + CLASSES), 4)
            xy = (xy * 2 - 0.5 + torch.stack([columns, rows], 2).view(1, 1, height, width, 2)) * stride
            wh = (wh * 2) * (wh * 2) * anchor * (stride / 8)
            outputs.append(torch.cat([xy, wh, rest], 4).view(batch, -1, 5 + CLASSES))
        return torch.cat(outputs, 1)


class SmallSegmenter(nn.Module):
    """Per-pixel logits [N, C, H, W] at the input size: two strided convs, a 1x1 classifier, bilinear upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(3, 8, 2), conv(8, 16, 2))
        self.classifier = nn.Conv2d(16, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.body(x))
        return nn.functional.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


class OutputOnly(nn.Module):
    """torchvision segmentation models return a dict: keep out['out']."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def export(module: nn.Module, size: tuple[int, int] = (SIZE, SIZE), dynamic_size: bool = False) -> onnx.ModelProto:
    """The module exported from one 3-channel image of size, its output named as Ultralytics names it."""
    return export_helpers.export(module, (1, 3, *size), dynamic_size, output="output0")


def output_of(model: onnx.ModelProto, prefix: str) -> str:
    """The tensor a torch module writes: the output of the last node exported under its name."""
    return [node.output[0] for node in model.graph.node if node.name.startswith(prefix)][-1]


def detector(kind: str) -> dict:
    """The seeded module, its plain export and its augmentation at the neck (dynamic H/W for YOLOv8-style)."""
    torch.manual_seed(0)
    module = (YoloV8Like if kind == "v8" else YoloV5Like)().eval()
    dynamic = kind == "v8"
    plain = export(module, dynamic_size=dynamic)
    try:
        augmented = augment(plain, target=output_of(plain, "/neck/"), seed=True)
    except UnsupportedOpError as error:  # rules that need static spatial sizes: explain at a fixed size
        if "static" not in str(error):
            raise
        dynamic, plain = False, export(module)
        augmented = augment(plain, target=output_of(plain, "/neck/"), seed=True)
    return {"module": module, "plain": plain, "augmented": augmented, "dynamic": dynamic}


@pytest.fixture(scope="module", params=["v8", "v5"])
def yolo(request):
    return {"kind": request.param, **detector(request.param)}


@pytest.fixture(scope="module")
def v8():
    return detector("v8")


def run_plain(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def autograd(module: nn.Module, layer: nn.Module, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, activation of layer) in float64, the activation kept for torch.autograd.grad."""
    kept = {}
    hook = layer.register_forward_hook(lambda _module, _inputs, output: kept.update(activation=output))
    try:
        output = module.double()(torch.from_numpy(images).double())
    finally:
        hook.remove()
    return output, kept["activation"]


def images_for(count: int, size: tuple[int, int] = (SIZE, SIZE), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, *size)).astype(np.float32)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


class Recorder:
    """Wraps a session: records the rows of each run."""

    def __init__(self, session) -> None:
        self.session, self.sizes = session, []

    def run(self, feeds, outputs):
        self.sizes.append(len(next(iter(feeds.values()))))
        return self.session.run(feeds, outputs)


# ---------------------------------------------------------------- detection

def test_each_box_gradient_equals_autograd_of_its_class_score_and_its_heatmap_the_contract(yolo):
    module, kind = yolo["module"], yolo["kind"]
    size = (SIZE, 96) if yolo["dynamic"] else (SIZE, SIZE)  # a dynamic model explains another size than exported
    images = images_for(2, size)
    explainer = Explainer(yolo["augmented"], batch_size=3)
    conf = 0.5 if kind == "v8" else 0.2  # YOLOv5's box score is objectness x class probability
    results = explain_detections(explainer, images, conf=conf, max_det=4, keep_tensors=True)
    expected = decode(run_plain(yolo["plain"], images), conf=conf, max_det=4)
    assert [len(result) for result in results] == [len(found) for found in expected] == [4, 4]
    output, activation = autograd(module, module.neck, images)
    try:
        for image, (result, found) in enumerate(zip(results, expected)):
            np.testing.assert_array_equal(result.detections.anchors, found.anchors)
            np.testing.assert_array_equal(result.detections.classes, found.classes)
            assert result.heatmaps.shape == (4, *size) and result.gradient.shape == (4, 16, size[0] // 8, size[1] // 8)
            for box, (anchor, label) in enumerate(zip(found.anchors, found.classes)):
                score = output[image, 4 + label, anchor] if kind == "v8" else output[image, anchor, 5 + label]
                (gradient,) = torch.autograd.grad(score, activation, retain_graph=True)
                wanted_activation, wanted_gradient = activation[image].detach().numpy(), gradient[image].numpy()
                assert relative_error(result.gradient[box], wanted_gradient) <= TOLERANCE
                assert relative_error(result.activation[box], wanted_activation) <= TOLERANCE
                np.testing.assert_allclose(result.scores[box], float(score), rtol=1e-5)
                contract = reference.heatmaps(wanted_activation[None], wanted_gradient[None], "gradcam", size)[0]
                np.testing.assert_allclose(result.heatmaps[box], contract, atol=TOLERANCE)
    finally:
        module.float()


def test_the_forward_pass_runs_once_per_image_and_the_reverse_pass_once_per_box(v8):
    images = images_for(2)
    explainer = Explainer(v8["augmented"], batch_size=3)
    explain_detections(explainer, images[:1], conf=0.5, max_det=4)  # creates the sessions
    (split,) = explainer._splits.values()
    assert split is not None, "the YOLO-style graph should split into a forward and a reverse part"
    split.forward, split.reverse = Recorder(split.forward), Recorder(split.reverse)
    whole = {key: Recorder(session) for key, session in explainer._sessions.items()}
    explainer._sessions.update(whole)
    results = explain_detections(explainer, images, conf=0.5, max_det=4)
    assert sum(len(result) for result in results) == 8
    assert split.forward.sizes == [2]  # the forward pass of the batch, once
    assert split.reverse.sizes == [3, 3, 2]  # 8 boxes: one reverse row per box, batch_size rows a run
    assert all(recorder.sizes == [] for recorder in whole.values())  # the whole graph never runs


def test_a_graph_that_cannot_be_split_runs_whole_with_the_same_heatmaps(v8, monkeypatch):
    images = images_for(2)
    split = explain_detections(Explainer(v8["augmented"], batch_size=3), images, conf=0.5, max_det=4)
    explainer = Explainer(v8["augmented"], batch_size=3)
    explainer.drop_split()
    whole = explain_detections(explainer, images, conf=0.5, max_det=4)
    assert not explainer._splits
    for ours, theirs in zip(split, whole):
        np.testing.assert_array_equal(ours.detections.anchors, theirs.detections.anchors)
        np.testing.assert_allclose(ours.heatmaps, theirs.heatmaps, atol=1e-6)
        np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-6)


def test_no_box_above_conf_gives_empty_explanations(v8):
    results = explain_detections(Explainer(v8["augmented"]), images_for(2), conf=1.0)
    assert [len(result) for result in results] == [0, 0]
    assert all(result.heatmaps.shape == (0, SIZE, SIZE) for result in results)


def test_detection_targets_and_raw_seeds_give_the_explain_detections_heatmaps(v8):
    images = images_for(1)
    explainer = Explainer(v8["augmented"])
    (result,) = explain_detections(explainer, images, conf=0.5, max_det=2)
    targets = [Detection(int(anchor), int(label)) for anchor, label in zip(result.detections.anchors,
                                                                          result.detections.classes)]
    by_target = explainer.explain(np.repeat(images, 2, axis=0), target=targets)
    np.testing.assert_allclose(by_target.heatmaps, result.heatmaps, atol=1e-6)
    np.testing.assert_array_equal(by_target.classes, result.detections.classes)
    seeds = seeds_for(targets, explainer.predict(np.repeat(images, 2, axis=0)))
    by_seed = explainer.explain(np.repeat(images, 2, axis=0), seed=seeds)
    np.testing.assert_allclose(by_seed.heatmaps, result.heatmaps, atol=1e-6)
    np.testing.assert_allclose(by_seed.scores, result.scores, rtol=1e-6)
    assert (by_seed.classes == -1).all()  # a raw seed names no class


# ---------------------------------------------------------------- segmentation and embeddings

@pytest.fixture(scope="module")
def lraspp():
    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                       num_classes=CLASSES).eval()
    with torch.no_grad():  # sharper logits, so that random images show more than one class
        for layer in (model.classifier.low_classifier, model.classifier.high_classifier):
            layer.weight.mul_(10)
    module = OutputOnly(model).eval()
    plain = export(module)
    target = output_of(plain, "/model/backbone/backbone.16/")
    return {"module": module, "layer": model.backbone["16"], "augmented": augment(plain, target=target, seed=True)}


def test_segmentation_heatmaps_equal_pytorch_grad_cam_semantic_segmentation_target(lraspp):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    images = images_for(2)
    results = explain_segmentation(Explainer(lraspp["augmented"]), images)
    with GradCAM(model=lraspp["module"], target_layers=[lraspp["layer"]]) as cam:
        with torch.no_grad():
            predicted = lraspp["module"](torch.from_numpy(images)).argmax(1).numpy()
        assert [list(result.classes) for result in results] == [list(np.unique(image)) for image in predicted]
        assert sum(len(result) for result in results) >= 3
        for image, result in enumerate(results):
            masks = [(predicted[image] == label).astype(np.float32) for label in result.classes]
            np.testing.assert_array_equal(result.masks, np.array(masks, bool))
            oracle = cam(input_tensor=torch.from_numpy(np.repeat(images[image:image + 1], len(masks), axis=0)),
                         targets=[SemanticSegmentationTarget(int(label), mask)
                                  for label, mask in zip(result.classes, masks)])
            np.testing.assert_allclose(result.heatmaps, oracle, atol=TOLERANCE)


class SimilarityToConceptTarget:
    """pytorch-grad-cam's embeddings tutorial target: cosine similarity to a concept's embedding."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.nn.CosineSimilarity(dim=0)(model_output, self.features)


def test_similarity_heatmaps_equal_pytorch_grad_cam_similarity_to_concept_target():
    from pytorch_grad_cam import GradCAM

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    model.fc = nn.Identity()
    plain = export(model)
    explainer = Explainer(augment(plain, target=output_of(plain, "/layer4/layer4.1/relu_1/"), seed=True))
    images, concept = images_for(3), images_for(1, seed=1)
    reference_embedding = explainer.predict(concept)[0]
    explanation = explain_similarity(explainer, images, reference_embedding)
    with torch.no_grad():
        concept_features = model(torch.from_numpy(concept))[0]
        embeddings = model(torch.from_numpy(images))
    np.testing.assert_allclose(explanation.scores, nn.functional.cosine_similarity(embeddings, concept_features[None]),
                               atol=1e-5)
    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        oracle = cam(input_tensor=torch.from_numpy(images), targets=[SimilarityToConceptTarget(concept_features)] * 3)
    np.testing.assert_allclose(explanation.heatmaps, oracle, atol=TOLERANCE)


# ---------------------------------------------------------------- classes on seeded models, several layers

@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(2)
    module = TwoLayerClassifier().eval()
    plain = export(module, (16, 16))
    return {"module": module, "plain": plain, "relus": [n.output[0] for n in plain.graph.node if n.op_type == "Relu"]}


def test_several_target_layers_equal_pytorch_grad_cam_with_a_list_of_layers(classifier):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = classifier["module"]
    explainer = Explainer(augment(classifier["plain"], target=classifier["relus"]))
    images, classes = images_for(3, (16, 16)), np.array([1, 3, 0])
    explanation = explainer.explain(images, target_class=classes, keep_tensors=True)
    with GradCAM(model=module, target_layers=[module.first, module.second]) as cam:
        oracle = cam(input_tensor=torch.from_numpy(images), targets=[ClassifierOutputTarget(int(c)) for c in classes])
    np.testing.assert_allclose(explanation.heatmaps, oracle, atol=1e-5)
    assert [a.shape for a in explanation.activation] == [(3, 8, 16, 16), (3, 16, 8, 8)]
    assert [g.shape for g in explanation.gradient] == [(3, 8, 16, 16), (3, 16, 8, 8)]


def test_the_device_aggregation_equals_the_reference_on_numpy():
    rng = np.random.default_rng(5)
    cams = [rng.standard_normal((2, 8, 8)).astype(np.float32), rng.standard_normal((2, 3, 5)).astype(np.float32)]
    normalized = [reference.finish(cam) for cam in cams]  # what the kernel returns at each layer's own size
    np.testing.assert_allclose(_aggregate_normalized(normalized, (21, 30)), reference.aggregate_layers(cams, (21, 30)),
                               atol=1e-6)


@pytest.mark.parametrize("source, target", [((8, 8), (64, 64)), ((3, 5), (21, 30)), ((20, 16), (7, 9)),
                                            ((1, 4), (5, 5))])
def test_the_device_resize_equals_cv2_inter_linear(source, target):
    maps = np.random.default_rng(6).random((3, *source)).astype(np.float32)
    expected = np.stack([cv2.resize(m, target[::-1], interpolation=cv2.INTER_LINEAR) for m in maps])
    np.testing.assert_allclose(_resize_bilinear(maps, target), expected, atol=1e-6)


def test_class_targets_on_a_seeded_classifier_equal_the_classifier_explanation(classifier):
    classic = Explainer(augment(classifier["plain"], target=classifier["relus"][-1]))
    seeded = Explainer(augment(classifier["plain"], target=classifier["relus"][-1], seed=True))
    images = images_for(3, (16, 16))
    for given in ({"target_class": [1, -1, 4]}, {"target": [Class(1), Class(None), Class(4)]}, {}):
        expected, actual = classic.explain(images, **given), seeded.explain(images, **given)
        np.testing.assert_array_equal(actual.classes, expected.classes)
        np.testing.assert_allclose(actual.scores, expected.scores, rtol=1e-6)
        np.testing.assert_allclose(actual.heatmaps, expected.heatmaps, atol=1e-6)
    by_class = classic.explain(images, target=Class(2))
    np.testing.assert_array_equal(by_class.heatmaps, classic.explain(images, target_class=2).heatmaps)


@pytest.mark.parametrize("method", ["saliency", "smoothgrad"])
def test_input_gradient_methods_on_a_seeded_classifier_equal_the_classifier(classifier, method):
    target = classifier["relus"][-1]
    classic = Explainer(augment(classifier["plain"], target=target, input_gradient=True))
    seeded = Explainer(augment(classifier["plain"], target=target, input_gradient=True, seed=True))
    images = images_for(3, (16, 16))
    expected = classic.explain(images, target_class=[1, -1, 4], method=method, samples=4)
    actual = seeded.explain(images, target_class=[1, -1, 4], method=method, samples=4)
    np.testing.assert_array_equal(actual.classes, expected.classes)
    np.testing.assert_allclose(actual.attribution, expected.attribution, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- preparing models for a task

def test_prepare_model_for_detect_seeds_the_only_output_with_yolo_preprocessing(v8):
    prepared = prepare_model(v8["plain"], "gradcam", target=output_of(v8["plain"], "/neck/"), task="detect",
                             input_size=(32, 48))
    metadata = augmented_metadata(prepared.model)
    assert metadata["seed"] == "true" and metadata["score"] == "output0"
    assert metadata["input_shape"] == "[\"batch\", 3, 32, 48]"
    assert prepared.preprocess == Preprocess() and any("seed" in note for note in prepared.notes)
    with pytest.raises(InputError, match="--seed"):
        prepare_model(augment(v8["plain"], target=output_of(v8["plain"], "/neck/"), score="output0"), "gradcam",
                      task="segment")
    with pytest.raises(InputError, match="task must be one of"):
        prepare_model(v8["plain"], "gradcam", task="track")


def test_task_score_and_input_shape_name_the_way_out(v8):
    two_outputs = onnx.ModelProto()
    two_outputs.CopyFrom(v8["plain"])
    two_outputs.graph.output.append(onnx.helper.make_tensor_value_info(
        output_of(v8["plain"], "/neck/"), onnx.TensorProto.FLOAT, None))
    with pytest.raises(InputError, match="--score NAME"):
        task_score(two_outputs)
    assert task_score(two_outputs, "output0") == "output0"
    assert input_shape_for(v8["plain"], 32, 48) == (3, 32, 48)


# ---------------------------------------------------------------- bad input

def test_a_seed_of_the_wrong_shape_or_dtype_raises_input_error(v8):
    explainer = Explainer(v8["augmented"])
    images = images_for(2)
    score = explainer.predict(images)
    with pytest.raises(InputError, match="seed has shape"):  # the anchors axis is dynamic in the graph
        explainer.explain(images, seed=np.zeros((2, 4 + CLASSES, score.shape[2] + 1), np.float32))
    with pytest.raises(InputError, match="seed has shape"):
        explainer.explain(images, seed=np.zeros((1, *score.shape[1:]), np.float32))
    with pytest.raises(InputError, match="float array"):
        explainer.explain(images, seed=np.zeros(score.shape, np.int64))
    with pytest.raises(InputError, match="NaN"):
        explainer.explain(images, seed=np.full(score.shape, np.nan, np.float32))


def test_targets_that_do_not_fit_the_score_raise_input_error(v8):
    explainer = Explainer(v8["augmented"])
    images = images_for(2)
    with pytest.raises(InputError, match="box_index 100000 is out of range"):
        explainer.explain(images, target=Detection(100_000))
    with pytest.raises(InputError, match="Segmentation"):
        explainer.explain(images, target=Segmentation(0))
    with pytest.raises(InputError, match="Class"):
        explainer.explain(images, target=Class(0))
    with pytest.raises(InputError, match="target="):  # no objective: a detection head has no top class
        explainer.explain(images)
    with pytest.raises(InputError, match="pass one of target_class, target and seed"):
        explainer.explain(images, target=Detection(0), seed=np.zeros(explainer.predict(images).shape, np.float32))
    with pytest.raises(InputError, match="N, C, H, W"):
        explain_segmentation(explainer, images)
    with pytest.raises(InputError, match="probabilities need"):
        explainer.explain(images, target=Detection(0)).probabilities


def test_seeds_and_non_class_targets_on_a_classifier_raise_input_error(classifier):
    explainer = Explainer(augment(classifier["plain"], target=classifier["relus"][-1]))
    images = images_for(2, (16, 16))
    with pytest.raises(InputError, match="seed=True"):
        explainer.explain(images, target=Similarity(np.ones(5)))
    with pytest.raises(InputError, match="no gradcam_seed"):
        explainer.explain(images, seed=np.ones((2, 5), np.float32))
    with pytest.raises(InputError, match="pass one of"):
        explainer.explain(images, target_class=1, target=Class(1))
    with pytest.raises(InputError, match="seed=True"):
        explain_detections(explainer, images)
