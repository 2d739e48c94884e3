"""Input-gradient methods on CPU: peak memory of the full backward graph, and throughput vs Captum.

Memory: ResNet-50 at batch 32, peak resident memory of a fresh process that loads the model and runs
one batch, plain model vs augmented with input_gradient=True (target: about 2x at most).
Throughput: saliency and guided Grad-CAM on ResNet-50 at batch 8, onnx-gradcam vs Captum, interleaved
(target >= 1.5x). Writes benchmarks/results/input_gradients-cpu.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK_MEMORY_CHILD = """
import resource, sys, numpy as np, onnxruntime as ort
path, batch, output = sys.argv[1], int(sys.argv[2]), sys.argv[3]
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
feeds = {"input": np.random.default_rng(0).standard_normal((batch, 3, 224, 224), np.float32)}
if any(i.name == "gradcam_target_class" for i in session.get_inputs()):
    feeds["gradcam_target_class"] = np.full(batch, -1, np.int64)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
session.run([output], feeds)
print(loaded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_memory_mib(path: Path, batch: int, output: str) -> dict:
    """Peak RSS (MiB) of a fresh process after loading the model and after one run."""
    loaded, peak = map(int, subprocess.run([sys.executable, "-c", PEAK_MEMORY_CHILD, str(path), str(batch), output],
                                           check=True, capture_output=True, text=True).stdout.split())
    return {"after_load_mib": loaded / 1024, "peak_mib": peak / 1024}


def main() -> None:
    import torch
    import torchvision
    from captum.attr import GuidedGradCam, Saliency

    import onnx_gradcam
    from benchmarks.machine import machine_info

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "input_gradients-cpu.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    with tempfile.TemporaryDirectory() as workdir:
        plain = Path(workdir) / "resnet50.onnx"
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(plain), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        augmented = Path(workdir) / "resnet50.gradcam.onnx"
        onnx_gradcam.augment(plain, input_gradient=True, guided=True, output=augmented)
        memory = {"plain": peak_memory_mib(plain, 32, "logits"),
                  "input_gradient": peak_memory_mib(augmented, 32, "gradcam_input_gradient")}
        memory["ratio_peak"] = memory["input_gradient"]["peak_mib"] / memory["plain"]["peak_mib"]

        explainer = onnx_gradcam.Explainer(augmented, batch_size=8)
        images = torch.randn(8, 3, 224, 224)
        array = images.numpy()
        classes = explainer.explain(array, method="gradcam").classes
        target = torch.as_tensor(classes)
        runs = {
            "saliency": {"onnx_gradcam": lambda: explainer.explain(array, target_class=classes, method="saliency"),
                         "captum": lambda: Saliency(model).attribute(images, target=target, abs=True)},
            "guided_gradcam": {
                "onnx_gradcam": lambda: explainer.explain(array, target_class=classes, method="guided_gradcam"),
                "captum": lambda: GuidedGradCam(model, model.layer4).attribute(images, target=target)},
        }
        throughput = {}
        for method, pair in runs.items():
            for run in pair.values():
                run()  # warm-up (and session creation)
            times = {key: [] for key in pair}
            for _ in range(args.rounds):
                for key, run in pair.items():
                    start = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - start)
            images_per_second = {key: 8 / statistics.median(values) for key, values in times.items()}
            throughput[method] = {"images_per_second": images_per_second,
                                  "speedup_vs_captum": images_per_second["onnx_gradcam"] / images_per_second["captum"]}
    report = {"machine": machine_info(), "model": "resnet50 224x224", "memory_batch": 32, "memory": memory,
              "throughput_batch": 8, "throughput": throughput, "rounds": args.rounds}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"peak memory batch 32: plain {memory['plain']['peak_mib']:.0f} MiB, input gradient "
          f"{memory['input_gradient']['peak_mib']:.0f} MiB ({memory['ratio_peak']:.2f}x)")
    for method, result in throughput.items():
        print(f"{method}: {result['speedup_vs_captum']:.2f}x Captum "
              f"({', '.join(f'{k} {v:.2f} img/s' for k, v in result['images_per_second'].items())})")


if __name__ == "__main__":
    main()
