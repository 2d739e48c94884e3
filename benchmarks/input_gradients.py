"""Input-gradient methods on CPU: peak memory of the full backward pass, and throughput vs Captum.

Memory (ResNet-50, batch 32, each in a fresh process, peak resident size): the plain model; the
augmented model's saliency graph run directly at batch 32; and `Explainer.explain(method="saliency")`
on 32 images, which runs the reverse pass in chunks sized by `backward_memory_mb` (target: about 2x
the plain model).
Throughput (ResNet-50, batches of 8 and 32): saliency and guided Grad-CAM, onnx-gradcam's default
Explainer vs Captum, interleaved; the speedup is the median of the per-round ratios (target >= 1.5x).
Writes benchmarks/results/input_gradients-cpu.json.
Usage: python benchmarks/input_gradients.py [--rounds 9] [--batches 8 32]
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

# Children read VmHWM, the peak resident size of their own address space: getrusage's ru_maxrss
# would also count the parent's resident size at fork (Linux carries it across exec).
PEAK_KIB = """
def peak_kib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
"""
SESSION_CHILD = PEAK_KIB + """
import sys, numpy as np, onnxruntime as ort
path, batch, output = sys.argv[1], int(sys.argv[2]), sys.argv[3]
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
feeds = {"input": np.random.default_rng(0).standard_normal((batch, 3, 224, 224), np.float32)}
if any(i.name == "gradcam_target_class" for i in session.get_inputs()):
    feeds["gradcam_target_class"] = np.full(batch, -1, np.int64)
loaded = peak_kib()
session.run([output], feeds)
print(loaded, peak_kib())
"""
EXPLAINER_CHILD = PEAK_KIB + """
import sys, numpy as np, onnx_gradcam
path, batch = sys.argv[1], int(sys.argv[2])
explainer = onnx_gradcam.Explainer(path, batch_size=batch).warm_up("saliency")  # loaded before the baseline
images = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), np.float32)
loaded = peak_kib()
explainer.explain(images, method="saliency")
print(loaded, peak_kib(), explainer.backward_batch_size)
"""


def _child(script: str, *args) -> list[int]:
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], check=True, capture_output=True,
                            text=True, cwd=ROOT)
    return [int(value) for value in result.stdout.split()]


def peak_memory(script: str, *args) -> dict:
    """Peak resident memory (MiB) of a fresh process after loading and after one batch."""
    loaded, peak, *rest = _child(script, *args)
    result = {"after_load_mib": loaded / 1024, "peak_mib": peak / 1024}
    if rest:
        result["chunk"] = rest[0]
    return result


def _timed(function) -> float:
    time.sleep(0.25)  # let the other library's spinning thread pool go idle first
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure_throughput(model, augmented, batch: int, rounds: int) -> dict:
    """Saliency and guided Grad-CAM, onnx-gradcam (default Explainer) vs Captum, interleaved rounds."""
    import torch
    from captum.attr import GuidedGradCam, Saliency

    import onnx_gradcam

    explainer = onnx_gradcam.Explainer(augmented, batch_size=batch)
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
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
        for _ in range(rounds):
            for key, run in pair.items():
                times[key].append(_timed(run))
        ratios = [captum / ours for ours, captum in zip(times["onnx_gradcam"], times["captum"])]
        throughput[method] = {
            "images_per_second": {key: batch / statistics.median(values) for key, values in times.items()},
            "speedup_vs_captum": statistics.median(ratios), "speedup_per_round": ratios,
            "chunk": explainer.backward_batch_size}
    return throughput


def main() -> None:
    import onnx
    import torch
    import torchvision

    import onnx_gradcam
    from benchmarks.machine import machine_info
    from onnx_gradcam.explainer import SUMMARY
    from onnx_gradcam.graph.augment import INPUT_GRADIENT
    from onnx_gradcam.graph.prune import keep_outputs

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "input_gradients-cpu.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    with tempfile.TemporaryDirectory() as workdir:
        plain = Path(workdir) / "resnet50.onnx"
        torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(plain), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        augmented_path = Path(workdir) / "resnet50.gradcam.onnx"
        augmented = onnx_gradcam.augment(plain, input_gradient=True, guided=True, output=augmented_path)
        saliency_graph = Path(workdir) / "resnet50.saliency.onnx"
        onnx.save(keep_outputs(augmented, [INPUT_GRADIENT] + SUMMARY), saliency_graph)
        memory = {"plain": peak_memory(SESSION_CHILD, plain, 32, "logits"),
                  "saliency_graph": peak_memory(SESSION_CHILD, saliency_graph, 32, INPUT_GRADIENT),
                  "explainer_saliency": peak_memory(EXPLAINER_CHILD, augmented_path, 32)}
        for key in ("saliency_graph", "explainer_saliency"):
            memory[f"ratio_{key}"] = memory[key]["peak_mib"] / memory["plain"]["peak_mib"]

        throughput = {str(batch): measure_throughput(model, augmented, batch, args.rounds)
                      for batch in args.batches}
    report = {"machine": machine_info(), "model": "resnet50 224x224", "memory_batch": 32, "memory": memory,
              "throughput_by_batch": throughput, "rounds": args.rounds}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"peak memory, batch 32: plain {memory['plain']['peak_mib']:.0f} MiB; saliency graph "
          f"{memory['saliency_graph']['peak_mib']:.0f} MiB ({memory['ratio_saliency_graph']:.2f}x); Explainer "
          f"saliency {memory['explainer_saliency']['peak_mib']:.0f} MiB "
          f"({memory['ratio_explainer_saliency']:.2f}x, chunks of {memory['explainer_saliency']['chunk']})")
    for batch, methods in throughput.items():
        for method, result in methods.items():
            print(f"batch {batch}, {method}: {result['speedup_vs_captum']:.2f}x Captum "
                  f"({', '.join(f'{k} {v:.2f} img/s' for k, v in result['images_per_second'].items())})")


if __name__ == "__main__":
    main()
