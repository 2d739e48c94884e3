"""Detection throughput on CPU: Ultralytics' YOLOv8n at 640x640 (seeded random weights), batch of 8 images.

(a) Every kept box explained (the 5 best boxes of each image: 40 heatmaps, Grad-CAM over the three neck
    outputs feeding the Detect head): onnx-gradcam's tasks.explain_detections on ONNX Runtime vs
    pytorch-grad-cam on the same (fused) torch model, a GradCAM call per box whose target is that box's
    class score, target_layers the same three C2f modules. Both times include finding the boxes (a
    forward pass of the batch and NMS: detect.decode, Ultralytics' non_max_suppression). Also recorded:
    pytorch-grad-cam with the 40 rows in calls of 8 (each image repeated once per box, one backward a call).
(b) One explained box per image vs plain ONNX Runtime detection (forward pass and detect.decode's NMS).

onnx-gradcam runs the seeded model split (graph/split.py): the forward pass once per image, the reverse
pass once per box on the values the forward pass saved.

Rounds are interleaved so that every contender sees the same machine state; ONNX Runtime and torch use
the same number of threads. Writes benchmarks/results/detection-cpu.json with the machine's details.
Usage: python benchmarks/detection.py [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import machine_info  # noqa: E402
from onnx_gradcam import Explainer, Preprocess, augment  # noqa: E402
from onnx_gradcam.detect import decode  # noqa: E402
from onnx_gradcam.tasks import explain_detections  # noqa: E402
from tools.random_yolov8n import NECK, NECK_TENSORS, export_onnx, model_input, offline_environment  # noqa: E402

SIZE = 640
BATCH = 8
BOXES_PER_IMAGE = 5
CONF, IOU = 0.25, 0.45
CLASS_BIAS = -2.0  # tools.random_yolov8n.calibrate: 10 to 186 boxes per image above CONF after NMS
PEER_CHUNK = 8  # rows per pytorch-grad-cam call in the batched variant


def images() -> np.ndarray:
    """8 uint8 RGB 640x640 images: scikit-learn's two sample photos, whole, mirrored, their top-left and
    central two thirds."""
    from sklearn.datasets import load_sample_image

    pictures = []
    for name in ("china.jpg", "flower.jpg"):
        photo = load_sample_image(name)
        height, width = photo.shape[:2]
        views = (photo, photo[:, ::-1], photo[: height * 2 // 3, : width * 2 // 3],
                 photo[height // 6: height * 5 // 6, width // 6: width * 5 // 6])
        pictures += [cv2.resize(np.ascontiguousarray(view), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                     for view in views]
    return np.stack(pictures)


class HeadOutput(torch.nn.Module):
    """DetectionModel in eval mode returns (output0, raw head dict); pytorch-grad-cam needs the tensor."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


class BoxScore:
    """pytorch-grad-cam target: one box's class score output0[4 + class, anchor] (pre-NMS), as tasks explains.

    pytorch-grad-cam needs a gradient at every target layer, and module 21 (stride 32) does not reach the
    boxes of the stride-8 and stride-16 anchors: its gradient hook would never run (GradCAM fails on None).
    Adding 0 x the output's sum makes every layer's gradient exist, zero where the box does not depend on it.
    """

    def __init__(self, anchor: int, label: int) -> None:
        self.anchor, self.label = anchor, label

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return model_output[4 + self.label, self.anchor] + 0 * model_output.sum()


def _timed(function) -> tuple[float, object]:
    # ONNX Runtime's and torch's thread pools spin-wait a little after a run; a pause lets them go idle
    # so that they do not steal the next contender's cores (see benchmarks/end_to_end.py).
    time.sleep(0.25)
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _round_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """The median over rounds of one round's time ratio: steadier than the ratio of medians when the
    machine's load drifts between rounds."""
    return statistics.median(top / bottom for top, bottom in zip(times[numerator], times[denominator]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op and torch threads")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "detection-cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as workdir:
        os.environ.update(offline_environment(Path(workdir) / "config"))
        report = bench(Path(workdir), args.rounds, args.threads)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    every_box, one_box = report["every_box"], report["one_box_per_image"]
    print(f"every box ({report['boxes_explained']} boxes): onnx-gradcam "
          f"{every_box['boxes_per_second']['onnx_gradcam_every_box']:.1f} boxes/s, "
          f"{every_box['onnx_gradcam_vs_pytorch_grad_cam_per_box']:.2f}x pytorch-grad-cam per box, "
          f"{every_box['onnx_gradcam_vs_pytorch_grad_cam_batched']:.2f}x batched; heatmaps agree to "
          f"{report['heatmaps_max_abs_difference_vs_pytorch_grad_cam']:.1e}")
    print(f"one box per image: explained/plain {one_box['explained_vs_plain']:.2f} "
          f"({', '.join(f'{k} {v:.1f} img/s' for k, v in one_box['images_per_second'].items())})")


def bench(workdir: Path, rounds: int, threads: int) -> dict:
    """Build, export and augment the model in workdir, run the interleaved rounds; the report."""
    from pytorch_grad_cam import GradCAM
    from ultralytics.utils.nms import non_max_suppression

    from tools.random_yolov8n import random_yolov8n

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    batch = model_input(images())
    yolo = random_yolov8n(batch, class_bias=CLASS_BIAS)
    plain_path = export_onnx(yolo, workdir / "yolov8n.onnx", SIZE, dynamic=True)
    plain = ort.InferenceSession(str(plain_path), options, providers=["CPUExecutionProvider"])
    augmented = augment(str(plain_path), target=NECK_TENSORS, score="output0", seed=True, input_shape=(3, SIZE, SIZE))
    explainer = Explainer(augmented, preprocess=Preprocess(), batch_size=BATCH, session_options=options)

    # The peer runs the fused model, as Ultralytics' predictor does; fusing freezes the fused convolutions,
    # whose outputs then have no gradient for pytorch-grad-cam to hook: unfrozen, as a trained model is.
    peer_model = copy.deepcopy(yolo.model).fuse().eval().requires_grad_(True)
    peer_layers = [peer_model.model[index] for index in NECK]
    peer = GradCAM(model=HeadOutput(peer_model), target_layers=peer_layers)
    tensor = torch.from_numpy(batch)

    def peer_boxes() -> list[tuple[int, int, int]]:
        """(image, anchor, class) of each kept box: a forward pass of the batch and Ultralytics' NMS."""
        with torch.no_grad():
            output = peer_model(tensor)[0]
        _, kept = non_max_suppression(output, conf_thres=CONF, iou_thres=IOU, max_det=BOXES_PER_IMAGE,
                                      return_idxs=True)
        labels = output[:, 4:].argmax(1)
        return [(image, int(anchor), int(labels[image, anchor])) for image, anchors in enumerate(kept)
                for anchor in anchors]

    def peer_per_box() -> np.ndarray:
        return np.concatenate([peer(input_tensor=tensor[image:image + 1], targets=[BoxScore(anchor, label)])
                               for image, anchor, label in peer_boxes()])

    def peer_batched() -> np.ndarray:
        boxes = peer_boxes()
        rows = torch.from_numpy(batch[[image for image, _, _ in boxes]])
        targets = [BoxScore(anchor, label) for _, anchor, label in boxes]
        return np.concatenate([peer(input_tensor=rows[start:start + PEER_CHUNK],
                                    targets=targets[start:start + PEER_CHUNK])
                               for start in range(0, len(boxes), PEER_CHUNK)])

    def ours(max_det: int):
        return lambda: explain_detections(explainer, batch, conf=CONF, iou=IOU, max_det=max_det)

    def plain_detection():
        return decode(plain.run(None, {"images": batch})[0], conf=CONF, iou=IOU)

    runs = {"onnx_gradcam_every_box": ours(BOXES_PER_IMAGE), "pytorch_grad_cam_per_box": peer_per_box,
            "pytorch_grad_cam_batched": peer_batched, "onnx_gradcam_one_box": ours(1),
            "plain_onnxruntime_detection": plain_detection}
    outputs = {key: run() for key, run in runs.items()}  # warm-up, and the outputs compared below
    found = outputs["onnx_gradcam_every_box"]
    boxes = sum(len(result) for result in found)
    ours_maps = np.concatenate([result.heatmaps for result in found])
    peer_maps = outputs["pytorch_grad_cam_per_box"]
    if len(peer_maps) != boxes:
        raise SystemExit(f"the contenders found different boxes: {boxes} and {len(peer_maps)}")
    agreement = float(np.abs(ours_maps - peer_maps).max())

    load_before = os.getloadavg()
    times = {key: [] for key in runs}
    for round_index in range(rounds):
        for key, run in runs.items():
            times[key].append(_timed(run)[0])
        print(f"round {round_index + 1}/{rounds}: " + ", ".join(f"{key} {times[key][-1]:.2f}s" for key in runs),
              flush=True)
    median = {key: statistics.median(values) for key, values in times.items()}
    every_box = median["onnx_gradcam_every_box"]
    report = {
        "machine": machine_info(), "threads": threads, "rounds": rounds,
        "model": "yolov8n (Ultralytics yaml, seeded random weights, batch norm calibrated)",
        "input": [BATCH, 3, SIZE, SIZE], "conf": CONF, "iou": IOU, "target_layers": NECK_TENSORS,
        "graph_split": bool(explainer._splits) and all(split is not None for split in explainer._splits.values()),
        "boxes_explained": boxes, "boxes_per_image": [len(result) for result in found],
        "plain_detection_boxes_per_image": [len(d) for d in outputs["plain_onnxruntime_detection"]],
        "heatmaps_max_abs_difference_vs_pytorch_grad_cam": agreement,
        # Other processes' load on the machine (1, 5 and 15 minute averages, runnable processes; the
        # machine has `cores` cores): the medians are only comparable between runs with similar load.
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "median_seconds": median, "seconds": times,
        "every_box": {
            "boxes_per_second": {key: boxes / median[key] for key in
                                 ("onnx_gradcam_every_box", "pytorch_grad_cam_per_box", "pytorch_grad_cam_batched")},
            "onnx_gradcam_vs_pytorch_grad_cam_per_box": median["pytorch_grad_cam_per_box"] / every_box,
            "onnx_gradcam_vs_pytorch_grad_cam_batched": median["pytorch_grad_cam_batched"] / every_box,
            "median_of_round_ratios_vs_per_box": _round_ratio(times, "pytorch_grad_cam_per_box",
                                                              "onnx_gradcam_every_box")},
        "one_box_per_image": {
            "images_per_second": {key: BATCH / median[key] for key in
                                  ("onnx_gradcam_one_box", "plain_onnxruntime_detection")},
            "explained_vs_plain": median["plain_onnxruntime_detection"] / median["onnx_gradcam_one_box"],
            "median_of_round_ratios": _round_ratio(times, "plain_onnxruntime_detection", "onnx_gradcam_one_box")},
    }
    return report

if __name__ == "__main__":
    main()
