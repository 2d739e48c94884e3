"""YOLOv8n as Ultralytics builds and exports it (random seeded weights, no download), explained end to end.

Oracles: PyTorch autograd on the same DetectionModel for each box's gradient at the three neck outputs
that feed the Detect head (forward hooks on the C2f modules 15, 18 and 21), the heatmap contract's
multi-layer aggregation (cam.reference.aggregate_layers) on autograd's tensors, and Ultralytics' own
non_max_suppression for the boxes kept. The ONNX files are written by Ultralytics' exporter (TorchScript
torch.onnx.export of the fused model), as users get them: with dynamic batch, height and width, and at a
fixed 160x160 (its default, at a smaller size).

Ultralytics is AGPL: it is a test oracle only, installed by .ci/run without its dependencies (the ones
its import needs are in the dev extra); the tests skip where it is missing.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("ultralytics") is None:
    pytest.skip("ultralytics is not installed (.ci/run installs it with --no-deps)", allow_module_level=True)

from onnx_gradcam import Explainer, Preprocess  # noqa: E402
from onnx_gradcam.cam import reference  # noqa: E402
from onnx_gradcam.cli import main  # noqa: E402
from onnx_gradcam.graph.augment import augmented_metadata  # noqa: E402
from onnx_gradcam.prepare import prepare_model  # noqa: E402
from onnx_gradcam.render import draw_detections, overlay, read_image  # noqa: E402
from onnx_gradcam.tasks import explain_detections  # noqa: E402
from tools.random_yolov8n import NECK, NECK_TENSORS, export_onnx, model_input, offline_environment  # noqa: E402
from tools.random_yolov8n import random_yolov8n  # noqa: E402

EXPORT_SIZE = 160
SIZE = (160, 224)  # explained at another size than exported: height and width are dynamic
TARGETS = NECK_TENSORS  # the outputs of the C2f modules 15, 18 and 21, which feed the Detect head
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def photos(size: tuple[int, int]) -> np.ndarray:
    """scikit-learn's two sample photos as uint8 RGB images [2, H, W, 3]."""
    from sklearn.datasets import load_sample_image

    return np.stack([cv2.resize(load_sample_image(name), size[::-1], interpolation=cv2.INTER_AREA)
                     for name in ("china.jpg", "flower.jpg")])


@pytest.fixture(scope="module")
def yolov8n(tmp_path_factory):
    """Ultralytics' YOLOv8n from its yaml, seeded, calibrated, exported by Ultralytics (dynamic and 160x160)."""
    folder = tmp_path_factory.mktemp("yolov8n")
    # Importing Ultralytics makes OpenCV single-threaded and changes NumPy's print format: restored after.
    opencv_threads, numpy_printing = cv2.getNumThreads(), np.get_printoptions()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in offline_environment(folder / "config").items():
            patch.setenv(name, value)
        try:
            yolo = random_yolov8n(model_input(photos((EXPORT_SIZE, EXPORT_SIZE))))
        finally:
            cv2.setNumThreads(opencv_threads)
            np.set_printoptions(**numpy_printing)
        dynamic = export_onnx(yolo, folder / "yolov8n-dynamic.onnx", EXPORT_SIZE, dynamic=True)
        static = export_onnx(yolo, folder / "yolov8n.onnx", EXPORT_SIZE, dynamic=False)
    return {"module": yolo.model.eval(), "dynamic": dynamic, "static": static}


def test_exported_head_is_the_yolov8_layout_with_the_neck_outputs_named_by_module(yolov8n):
    model = onnx.load(str(yolov8n["dynamic"]), load_external_data=False)
    assert [output.name for output in model.graph.output] == ["output0"]
    produced = {name for node in model.graph.node for name in node.output}
    assert set(TARGETS) <= produced


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| over max |expected|; the absolute error where expected is all zeros."""
    error = float(np.abs(actual - expected).max())
    return error / float(np.abs(expected).max()) if expected.any() else error


def autograd_neck(module: torch.nn.Module, images: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(head output [N, 84, A], the three neck activations), float64, kept for torch.autograd.grad.

    The module stays in float64 until the gradients are taken: the caller turns it back with module.float().
    """
    kept = {}
    hooks = [module.model[index].register_forward_hook(
        lambda _module, _inputs, output, index=index: kept.update({index: output})) for index in NECK]
    try:
        output = module.double()(torch.from_numpy(images).double())[0]
    finally:
        for hook in hooks:
            hook.remove()
    return output, [kept[index] for index in NECK]


def test_each_box_gradient_at_the_three_necks_equals_autograd_and_its_heatmap_the_aggregation(yolov8n):
    images = model_input(photos(SIZE))
    prepared = prepare_model(str(yolov8n["dynamic"]), "gradcam", target=TARGETS, task="detect")
    explainer = Explainer(prepared.model, preprocess=prepared.preprocess, batch_size=4)
    results = explain_detections(explainer, images, conf=0.1, iou=0.45, max_det=3, keep_tensors=True)
    assert [len(result) for result in results] == [3, 3]
    output, activations = autograd_neck(yolov8n["module"], images)
    try:
        check_boxes_and_gradients(results, output, activations)
    finally:
        yolov8n["module"].float()


def check_boxes_and_gradients(results, output: torch.Tensor, activations: list[torch.Tensor]) -> None:
    """The boxes Ultralytics keeps, and each box's tensors and heatmap against autograd and the contract."""
    from ultralytics.utils.nms import non_max_suppression

    kept = non_max_suppression(output.detach().float(), conf_thres=0.1, iou_thres=0.45, max_det=3)
    for result, expected in zip(results, kept):
        expected = expected.detach().numpy()
        np.testing.assert_allclose(result.detections.boxes, expected[:, :4], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(result.detections.scores, expected[:, 4], rtol=1e-4)
        np.testing.assert_array_equal(result.detections.classes, expected[:, 5].astype(np.int64))

    for image, result in enumerate(results):
        assert result.heatmaps.shape == (3, *SIZE)
        for row, (anchor, label) in enumerate(zip(result.detections.anchors, result.detections.classes)):
            score = output[image, 4 + label, anchor]
            gradients = torch.autograd.grad(score, activations, retain_graph=True)
            cams = []
            for layer, (activation, gradient) in enumerate(zip(activations, gradients)):
                wanted_activation, wanted_gradient = activation[image].detach().numpy(), gradient[image].numpy()
                # Module 15 (stride 8) reaches every box; 21 (stride 32) only the boxes of the stride-32 anchors.
                assert layer > 0 or np.abs(wanted_gradient).max() > 0
                assert relative_error(result.gradient[layer][row], wanted_gradient) <= TOLERANCE
                assert relative_error(result.activation[layer][row], wanted_activation) <= TOLERANCE
                cams.append(reference.raw_cam(wanted_activation[None].astype(np.float32),
                                              wanted_gradient[None].astype(np.float32), "gradcam"))
            np.testing.assert_allclose(result.scores[row], score.item(), rtol=1e-5)
            contract = reference.aggregate_layers(cams, SIZE)[0]
            np.testing.assert_allclose(result.heatmaps[row], contract, atol=TOLERANCE)


def street_jpg(folder: Path) -> Path:
    """A 640x427 photo as a JPEG file (scikit-learn's china.jpg)."""
    street = folder / "street.jpg"
    cv2.imwrite(str(street), cv2.cvtColor(photos((427, 640))[0], cv2.COLOR_RGB2BGR))
    return street


def test_explain_task_detect_writes_each_box_over_its_heatmap_as_the_api_draws_it(yolov8n, tmp_path, capsys):
    street, out = street_jpg(tmp_path), tmp_path / "out"

    assert main(["explain", str(yolov8n["static"]), str(street), "--task", "detect", "-o", str(out),
                 "--target", ",".join(TARGETS), "--max-det", "4"]) == 0

    printed = capsys.readouterr().out
    assert "street.jpg: 4 boxes" in printed
    assert sorted(path.name for path in out.iterdir()) == [
        "street_box0.png", "street_box1.png", "street_box2.png", "street_box3.png", "street_detections.png"]
    image = read_image(street)
    prepared = prepare_model(str(yolov8n["static"]), "gradcam", target=TARGETS, task="detect")
    assert prepared.preprocess == Preprocess(size=(EXPORT_SIZE, EXPORT_SIZE))  # the imgsz Ultralytics records
    (result,) = explain_detections(Explainer(prepared.model, preprocess=prepared.preprocess), [image], max_det=4)
    scale = np.array([640 / EXPORT_SIZE, 427 / EXPORT_SIZE] * 2, np.float32)
    for k in range(4):
        heatmap = result.heatmaps[k]
        assert heatmap.max() - heatmap.min() > 0.5  # a map, not a constant
        expected = draw_detections(overlay(image, heatmap), result.detections.boxes[k:k + 1] * scale,
                                   [str(result.detections.classes[k])], result.detections.scores[k:k + 1])
        written = read_image(out / f"street_box{k}.png")
        assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1
    combined = read_image(out / "street_detections.png")
    assert combined.shape == image.shape


def test_explain_task_detect_on_the_plain_export_needs_no_option(yolov8n, tmp_path, capsys):
    street, out = street_jpg(tmp_path), tmp_path / "out"

    assert main(["explain", str(yolov8n["static"]), str(street), "--task", "detect", "-o", str(out)]) == 0

    count = int(capsys.readouterr().out.split("street.jpg: ")[1].split(" boxes")[0])
    assert count > 0
    written = {path.name for path in out.iterdir()}
    assert written == {"street_detections.png", *(f"street_box{k}.png" for k in range(count))}
    assert read_image(out / "street_detections.png").shape == (427, 640, 3)


def test_the_auto_target_of_a_yolov8_head_gives_every_box_a_heatmap(yolov8n):
    # Not the last conv of each of the head's six branches: the class-logit maps of unlikely boxes are
    # negative, so their Grad-CAM is all zero after ReLU. The map each scale's branches fork from.
    prepared = prepare_model(str(yolov8n["static"]), "gradcam", task="detect")
    assert json.loads(augmented_metadata(prepared.model)["targets"]) == TARGETS
    (result,) = explain_detections(Explainer(prepared.model, preprocess=prepared.preprocess),
                                   [photos((427, 640))[0]])
    assert len(result) > 0
    assert all(heatmap.max() - heatmap.min() > 0.5 for heatmap in result.heatmaps)


def test_explain_task_detect_on_the_dynamic_export_takes_the_size_ultralytics_records(yolov8n, tmp_path):
    street, out = street_jpg(tmp_path), tmp_path / "out"
    assert main(["explain", str(yolov8n["dynamic"]), str(street), "--task", "detect", "-o", str(out)]) == 0
