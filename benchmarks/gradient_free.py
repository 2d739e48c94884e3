"""Throughput of Score-CAM and Ablation-CAM: onnx-gradcam (ONNX Runtime) vs pytorch-grad-cam.

ResNet-18 at 224x224 (seeded random weights), target layer4 (512 channels, 7x7): every channel of every
image is scored by both (pytorch-grad-cam's ratio_channels_to_ablate=1), with the same rows per forward
pass. Score-CAM runs 512 masked images per image through the whole model; Ablation-CAM 512 ablated
activations, through the head alone here and through the whole network (its layers before the target
included) in pytorch-grad-cam. Rounds are interleaved so that both see the same machine state.
Writes benchmarks/results/gradient_free-<device>.json.
Usage: python benchmarks/gradient_free.py [--images 2] [--rounds 1] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from pytorch_grad_cam import AblationCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import onnx_gradcam  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from onnx_gradcam.cam.gradient_free import explain_gradient_free, head_for  # noqa: E402

METHODS = {"scorecam": ScoreCAM, "ablationcam": AblationCAM}


def _timed(function) -> tuple[float, object]:
    # ONNX Runtime's and PyTorch's thread pools spin a little after a run: a pause lets them go idle
    # so that one does not steal the next one's cores (see end_to_end.py).
    time.sleep(0.25)
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def _peer(method: str, model: torch.nn.Module, batch_size: int):
    if method == "scorecam":
        peer = ScoreCAM(model, [model.layer4])
        peer.batch_size = batch_size  # ScoreCAM reads it as an attribute (16 when absent)
        return peer
    return AblationCAM(model, [model.layer4], batch_size=batch_size)


def bench(images: int, rounds: int, batch_size: int, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    batch = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    path = workdir / "resnet18.onnx"
    torch.onnx.export(model, (batch[:1],), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    explainer = onnx_gradcam.Explainer(onnx_gradcam.augment(path))
    array = batch.numpy()
    # Sessions are made now, not timed: the logits-only one, the head, the activation one.
    explainer.predict(array[:1])
    head_for(explainer)
    first = explainer.explain(array, method="eigencam", keep_tensors=True)
    classes = [int(c) for c in first.classes]
    activation = first.activation
    constant = int((activation.max(axis=(2, 3)) == activation.min(axis=(2, 3))).sum())
    with torch.no_grad():
        model(batch[:1])
    targets = [ClassifierOutputTarget(c) for c in classes]
    runs = {}
    for method in METHODS:
        peer = _peer(method, model, batch_size)
        runs[method] = {
            "onnx_gradcam": lambda method=method: _explain(explainer, array, classes, method, batch_size),
            "pytorch_grad_cam": lambda peer=peer: peer(batch, targets)}
    times = {method: {name: [] for name in pair} for method, pair in runs.items()}
    heatmaps: dict = {}
    for _ in range(rounds):
        for method, pair in runs.items():
            for name, run in pair.items():
                seconds, heatmaps[method, name] = _timed(run)
                times[method][name].append(seconds)
    results = {}
    for method in runs:
        median = {name: statistics.median(values) for name, values in times[method].items()}
        results[method] = {
            "median_seconds": median, "seconds": times[method],
            "images_per_second": {name: images / seconds for name, seconds in median.items()},
            "onnx_gradcam_vs_pytorch_grad_cam": median["pytorch_grad_cam"] / median["onnx_gradcam"],
            "max_abs_heatmap_difference": float(np.abs(heatmaps[method, "onnx_gradcam"]
                                                       - heatmaps[method, "pytorch_grad_cam"]).max())}
    channels = activation.shape[1]
    return {"model": "resnet18", "input": [3, 224, 224], "target": "layer4", "images": images, "rounds": rounds,
            "batch_size": batch_size, "channels": channels, "rows_scored": images * channels,
            "constant_channels": constant, "results": results}


def _explain(explainer, array: np.ndarray, classes: list[int], method: str, batch_size: int) -> np.ndarray:
    size = array.shape[2:4]
    return explain_gradient_free(explainer, array, np.array(classes, np.int64), method, size,
                                 batch_size=batch_size).heatmaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output")
    args = parser.parse_args()
    output = args.output or str(Path(__file__).parent / "results" / "gradient_free-cpu.json")
    with tempfile.TemporaryDirectory() as workdir:
        result = bench(args.images, args.rounds, args.batch_size, Path(workdir))
    report = {"machine": machine_info(), "torch_threads": torch.get_num_threads(), **result}
    Path(output).write_text(json.dumps(report, indent=2) + "\n")
    for method, values in result["results"].items():
        print(f"{method:<12} {args.images} images: onnx-gradcam/pytorch-grad-cam "
              f"{values['onnx_gradcam_vs_pytorch_grad_cam']:.2f}x  "
              f"({', '.join(f'{k} {v:.3f} img/s' for k, v in values['images_per_second'].items())}; "
              f"max |difference| {values['max_abs_heatmap_difference']:.1e})")


if __name__ == "__main__":
    main()
