"""ROAD combined over 9 percentiles: onnx_gradcam.metrics.road vs pytorch-grad-cam's ROADCombined.

ResNet-18 (seeded random weights) at 224x224, smooth random heatmaps, the class probability score
(ClassifierOutputSoftmaxTarget), each library's default imputation noise of 0.01. Rounds are interleaved
so that both see the same machine state; onnx-gradcam also runs with its solver pool cut to one thread,
to show what the threads add. PyTorch runs on one thread by default: on a shared 2-core machine its
thread pool spins against the other processes (measured: ResNet-18 forward passes 20x slower with 2).
Writes benchmarks/results/metrics-cpu.json.
Usage: python benchmarks/metrics.py [--images 2] [--rounds 3] [--torch-threads 1]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import scipy
import torch
import torchvision
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import machine_info  # noqa: E402
from onnx_gradcam import metrics  # noqa: E402

PERCENTILES = [10, 20, 30, 40, 50, 60, 70, 80, 90]
SIZE = 224


def _heatmaps(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fields = np.stack([cv2.GaussianBlur(rng.random((SIZE, SIZE)).astype(np.float32), (0, 0), SIZE / 10)
                       for _ in range(count)])
    low, high = fields.min(axis=(1, 2), keepdims=True), fields.max(axis=(1, 2), keepdims=True)
    return ((fields - low) / (high - low)).astype(np.float32)


def _timed(function) -> float:
    time.sleep(0.25)  # let the other library's thread pool go idle first (see end_to_end.py)
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench(count: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    images = torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    buffer = io.BytesIO()
    torch.onnx.export(model, (images[:1],), buffer, dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    classifier = metrics.OnnxClassifier(buffer.getvalue())  # session created once, as a user would
    array, heatmaps = images.numpy(), _heatmaps(count, seed=2)
    with torch.no_grad():
        classes = model(images).argmax(dim=1).numpy()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    peer = ROADCombined(percentiles=PERCENTILES)

    def ours():
        return metrics.road(classifier, array, heatmaps, classes, percentiles=PERCENTILES, order="combined")

    def ours_one_thread():
        with mock.patch.object(metrics, "_workers", lambda: 1):
            return ours()

    runs = {"onnx_gradcam": ours, "onnx_gradcam_one_solver_thread": ours_one_thread,
            "pytorch_grad_cam": lambda: peer(images, heatmaps, targets, model)}
    metrics.road(classifier, array[:1], heatmaps[:1], classes[:1], percentiles=[50])  # warm-up
    for run in runs.values():  # one untimed round each
        run()
    times = {key: [] for key in runs}
    load = [os.getloadavg()[0]]
    for _ in range(rounds):
        for key, run in runs.items():
            times[key].append(_timed(run))
        load.append(os.getloadavg()[0])
    median = {key: statistics.median(seconds) for key, seconds in times.items()}
    return {"model": "resnet18", "size": SIZE, "images": count, "percentiles": PERCENTILES, "noise": 0.01,
            "rounds": rounds, "solver_threads": metrics._workers(), "torch_threads": torch.get_num_threads(),
            "load_average_1min": load, "seconds": times, "median_seconds": median,
            "seconds_per_image": {key: value / count for key, value in median.items()},
            "speedup_vs_pytorch_grad_cam": median["pytorch_grad_cam"] / median["onnx_gradcam"],
            "speedup_one_solver_thread": median["pytorch_grad_cam"] / median["onnx_gradcam_one_solver_thread"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "metrics-cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    result = bench(args.images, args.rounds)
    machine = {**machine_info(), "scipy": scipy.__version__}
    Path(args.output).write_text(json.dumps({"machine": machine, "results": [result]}, indent=2) + "\n")
    print(f"ROAD combined, resnet18 {SIZE}x{SIZE}, {args.images} images, 9 percentiles: "
          f"onnx-gradcam {result['seconds_per_image']['onnx_gradcam']:.2f} s/image "
          f"(one solver thread {result['seconds_per_image']['onnx_gradcam_one_solver_thread']:.2f}), "
          f"pytorch-grad-cam {result['seconds_per_image']['pytorch_grad_cam']:.2f} s/image: "
          f"{result['speedup_vs_pytorch_grad_cam']:.2f}x ({result['speedup_one_solver_thread']:.2f}x on one thread)")


if __name__ == "__main__":
    main()
