"""CPU throughput: explained (augmented ONNX + NumPy heatmaps) vs plain ONNX Runtime vs pytorch-grad-cam.

Interleaved in one run so that all three see the same machine state. Writes
benchmarks/results/cpu_end_to_end.json. Usage: python benchmarks/cpu_end_to_end.py [--rounds 7]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import onnx_gradcam  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from tools.build_demo_model import mnist_cnn  # noqa: E402

CASES = {
    "resnet50": (torchvision.models.resnet50, (3, 224, 224), 8, lambda m: m.layer4[-1], "gradcam"),
    "mnist_cnn": (mnist_cnn, (1, 28, 28), 256, lambda m: m.pool2, "hirescam"),
}


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench(name: str, rounds: int, workdir: Path) -> dict:
    build, shape, batch, layer, method = CASES[name]
    torch.manual_seed(0)
    model = build().eval()
    images = torch.randn(batch, *shape)
    plain_path = workdir / f"{name}.onnx"
    torch.onnx.export(model, (images[:1],), str(plain_path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    plain = ort.InferenceSession(str(plain_path), providers=["CPUExecutionProvider"])
    explainer = onnx_gradcam.Explainer(onnx_gradcam.augment(plain_path), method=method, batch_size=batch)
    peer = GradCAM(model, [layer(model)]) if method == "gradcam" else None
    if peer is None:
        from pytorch_grad_cam import HiResCAM
        peer = HiResCAM(model, [layer(model)])
    array = images.numpy()
    runs = {
        "plain_onnxruntime": lambda: plain.run(None, {"input": array}),
        "onnx_gradcam": lambda: explainer.explain(array),
        "pytorch_grad_cam": lambda: peer(images, [ClassifierOutputTarget(0)] * batch),
    }
    for run in runs.values():  # warm-up
        run()
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            times[key].append(_timed(run))
    median = {key: statistics.median(values) for key, values in times.items()}
    throughput = {key: batch / seconds for key, seconds in median.items()}
    return {"model": name, "batch": batch, "method": method, "rounds": rounds,
            "median_seconds": median, "images_per_second": throughput,
            "explained_vs_plain": throughput["onnx_gradcam"] / throughput["plain_onnxruntime"],
            "explained_vs_pytorch_grad_cam": throughput["onnx_gradcam"] / throughput["pytorch_grad_cam"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "cpu_end_to_end.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        results = [bench(name, args.rounds, Path(workdir)) for name in CASES]
    report = {"machine": machine_info(), "torch_threads": torch.get_num_threads(), "results": results}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    for result in results:
        print(f"{result['model']:<10} batch {result['batch']:>3}: explained/plain {result['explained_vs_plain']:.3f}, "
              f"explained/pytorch-grad-cam {result['explained_vs_pytorch_grad_cam']:.2f}x  "
              f"({', '.join(f'{k} {v:.1f} img/s' for k, v in result['images_per_second'].items())})")


if __name__ == "__main__":
    main()
