"""Throughput: explained (augmented ONNX + heatmaps) vs plain ONNX Runtime vs pytorch-grad-cam.

Interleaved in one run so that all three see the same machine state. On CPU (default): ResNet-50
batch 8 and the MNIST CNN batch 256, heatmaps by the NumPy reference. With --device cuda: ResNet-50
batch 64 on ONNX Runtime's CUDA provider with IO binding and the fused kernel, pytorch-grad-cam on
the same GPU. Writes benchmarks/results/end_to_end-<device>.json.
Usage: python benchmarks/end_to_end.py [--device cpu|cuda] [--rounds 7]
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
import onnxruntime as ort
import torch
import torchvision
from pytorch_grad_cam import GradCAM, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import onnx_gradcam  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from onnx_gradcam.runtime import providers_for  # noqa: E402
from tools.build_demo_model import mnist_cnn  # noqa: E402

CASES = {
    "cpu": {"resnet50": (torchvision.models.resnet50, (3, 224, 224), 8, lambda m: m.layer4[-1], "gradcam"),
            "mnist_cnn": (mnist_cnn, (1, 28, 28), 256, lambda m: m.pool2, "hirescam")},
    "cuda": {"resnet50": (torchvision.models.resnet50, (3, 224, 224), 64, lambda m: m.layer4[-1], "gradcam")},
}


def _timed(function, device: str) -> float:
    # The runs alternate between two ONNX Runtime sessions and PyTorch, each with its own thread pool
    # that spin-waits a little after a run; a pause lets it go idle so it does not steal the next run's
    # cores (measured: without it the MNIST CNN's explained batch took twice as long as alone).
    time.sleep(0.25)
    start = time.perf_counter()
    function()
    if device == "cuda":
        torch.cuda.synchronize()
        import cupy
        cupy.cuda.Device().synchronize()
    return time.perf_counter() - start


def _plain_run(path: Path, device: str, images: torch.Tensor):
    """A plain-inference closure: host arrays on CPU; on CUDA, device input and output via IO binding."""
    session = ort.InferenceSession(str(path), providers=providers_for(device))
    if device == "cpu":
        array = images.numpy()
        return lambda: session.run(None, {"input": array})
    import cupy
    array = cupy.asarray(images.numpy())
    binding = session.io_binding()
    binding.bind_input("input", "cuda", 0, np.float32, list(array.shape), array.data.ptr)
    binding.bind_output("logits", "cuda", 0)
    return lambda: session.run_with_iobinding(binding)


def bench(name: str, device: str, rounds: int, workdir: Path) -> dict:
    build, shape, batch, layer, method = CASES[device][name]
    torch.manual_seed(0)
    model = build().eval()
    images = torch.randn(batch, *shape)
    plain_path = workdir / f"{name}.onnx"
    torch.onnx.export(model, (images[:1],), str(plain_path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    explainer = onnx_gradcam.Explainer(onnx_gradcam.augment(plain_path), device=device, method=method,
                                       batch_size=batch)
    torch_device = torch.device(device)
    peer_model = model.to(torch_device)
    peer_class = GradCAM if method == "gradcam" else HiResCAM
    peer = peer_class(peer_model, [layer(peer_model)])
    peer_images = images.to(torch_device)
    array = images.numpy()
    if device == "cuda":
        import cupy
        array = cupy.asarray(array)
    runs = {
        "plain_onnxruntime": _plain_run(plain_path, device, images),
        "onnx_gradcam": lambda: explainer.explain(array),
        "pytorch_grad_cam": lambda: peer(peer_images, [ClassifierOutputTarget(0)] * batch),
    }
    for run in runs.values():  # warm-up
        run()
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            times[key].append(_timed(run, device))
    median = {key: statistics.median(values) for key, values in times.items()}
    throughput = {key: batch / seconds for key, seconds in median.items()}
    return {"model": name, "device": device, "batch": batch, "method": method, "rounds": rounds,
            "median_seconds": median, "images_per_second": throughput,
            "explained_vs_plain": throughput["onnx_gradcam"] / throughput["plain_onnxruntime"],
            "explained_vs_pytorch_grad_cam": throughput["onnx_gradcam"] / throughput["pytorch_grad_cam"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=sorted(CASES), default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output")
    args = parser.parse_args()
    output = args.output or str(Path(__file__).parent / "results" / f"end_to_end-{args.device}.json")
    with tempfile.TemporaryDirectory() as workdir:
        results = [bench(name, args.device, args.rounds, Path(workdir)) for name in CASES[args.device]]
    machine = machine_info()
    if args.device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(0)
    report = {"machine": machine, "torch_threads": torch.get_num_threads(), "results": results}
    Path(output).write_text(json.dumps(report, indent=2) + "\n")
    for result in results:
        print(f"{result['model']:<10} batch {result['batch']:>3}: explained/plain {result['explained_vs_plain']:.3f}, "
              f"explained/pytorch-grad-cam {result['explained_vs_pytorch_grad_cam']:.2f}x  "
              f"({', '.join(f'{k} {v:.1f} img/s' for k, v in result['images_per_second'].items())})")


if __name__ == "__main__":
    main()
